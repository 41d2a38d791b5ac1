"""``segstream validate CONFIG --connect``: what a run needs at its start, checked against real
things — a file, redis-server with a password and an ACL user, an RTSP camera (ffmpeg), UDP
ports, the model hub's cache — one line each, exit 1 when any fails, never a traceback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from segstream.pipeline.cli import main
from tests.live_servers import RtspCamera, free_port
from tests.test_run_identity import readme_publisher_acl
from tests.redis_servers import RedisProcess

PASSWORD = "pre-fl1ght-pw"
DEMO = Path(__file__).resolve().parents[1] / "samples" / "demo.mp4"
TINY = Path(__file__).resolve().parents[1] / "models" / "weights" / "synthetic_eomt_tiny_256.safetensors"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    # bob may log in and use transactions on segstream's keys, but not XADD: a publisher's ACL half done;
    # pub has exactly the README's publisher ACL
    args = ["--requirepass", PASSWORD, "--user", "bob", "on", ">bob-pw", "~segstream:*", "+@connection",
            "+multi", "+exec", "+xrevrange", "--user", "pub", "on", ">pub-pw", *readme_publisher_acl()]
    with RedisProcess(tmp_path_factory.mktemp("redis"), args) as server:
        yield server


def write_config(tmp_path: Path, sources: str, redis: str = "{enabled: false}", ops: str = "null",
                 model: str = "{preset: synthetic_eomt_tiny_256, device: cpu}") -> Path:
    config = tmp_path / "site.yaml"
    config.write_text(f"sources:\n{sources}\nmodel: {model}\nops: {{http: {ops}}}\nsinks:\n  redis: {redis}\n")
    return config


FILE_SOURCE = f"  - {{name: cam0, type: file, path: '{DEMO}'}}"


def connect(config: Path, capsys, *extra: str) -> tuple[int, list[str]]:
    code = main(["validate", str(config), "--connect", *extra])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out.splitlines()


def line_of(lines: list[str], what: str) -> str:
    found = [line for line in lines if line.split(maxsplit=1)[1].startswith(f"{what}:")]
    assert len(found) == 1, lines
    return found[0]


def test_everything_reachable_passes_each_check_in_its_own_line(tmp_path, redis_server, capsys):
    redis = f"{{url: '{redis_server.url}', password: '{PASSWORD}'}}"
    port = free_port()
    code, lines = connect(write_config(tmp_path, FILE_SOURCE, redis, ops=f"'127.0.0.1:{port}'"), capsys)
    assert code == 0, lines
    assert line_of(lines, "model").startswith("ok")
    assert "answers PING; this user may XADD to segstream:cam0:frames, segstream:cam0:events" in line_of(lines, "redis")
    assert "decodes, first frame 640x480" in line_of(lines, "source cam0")
    assert f"127.0.0.1:{port} can be bound" in line_of(lines, "ops.http")
    assert lines[-1].startswith("ok: all 5 checks passed")


def test_a_gpu_asked_for_where_none_is_fails_the_model_check_as_the_run_would(tmp_path, capsys, monkeypatch):
    # found probing bad input: on a machine without a GPU, device cuda (or fp16) passed every check and the run exited 2
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = write_config(tmp_path, FILE_SOURCE, model="{preset: synthetic_eomt_tiny_256, device: cuda}")
    code, lines = connect(config, capsys)
    assert code == 1 and line_of(lines, "model").startswith(
        "FAIL  model: model.device: 'cuda' asked for, but no CUDA GPU is visible"), lines
    # fp16 on a device the config says is the CPU: the config's own mistake, whatever the machine
    config = write_config(tmp_path, FILE_SOURCE, model="{preset: synthetic_eomt_tiny_256, device: cpu, precision: fp16}")
    assert main(["validate", str(config), "--connect"]) == 2
    assert "model.precision: fp16 needs a GPU" in capsys.readouterr().err
    # a batch's: its Ray workers may hold the GPU this machine has not (found reviewing)
    from segstream.models.presets import SYNTHETIC_TINY
    from segstream.pipeline.config import ModelConfig
    from segstream.pipeline.preflight import model_check

    assert "fits it" in model_check(ModelConfig(device="cuda"), SYNTHETIC_TINY, here=False)


def test_a_wrong_redis_password_fails_in_the_runs_words_without_showing_it(tmp_path, redis_server, capsys):
    redis = f"{{url: '{redis_server.url}', password: 'not-the-password'}}"
    config = write_config(tmp_path, FILE_SOURCE, redis)
    assert main(["validate", str(config)]) == 0  # plain validate never connects
    capsys.readouterr()
    code, lines = connect(config, capsys)
    assert code == 1
    redis_line = line_of(lines, "redis")
    assert redis_line.startswith("FAIL") and "refused the credentials of the default user" in redis_line
    assert "not-the-password" not in "\n".join(lines)
    assert lines[-1].startswith("FAIL: 1 of 4 checks failed (redis)")


def test_an_acl_user_without_xadd_fails_naming_the_grant_and_nothing_is_written(tmp_path, redis_server, capsys):
    redis = f"{{url: '{redis_server.url}', username: bob, password: bob-pw}}"
    code, lines = connect(write_config(tmp_path, FILE_SOURCE, redis), capsys)
    assert code == 1
    redis_line = line_of(lines, "redis")
    assert redis_line.startswith("FAIL")
    assert "refuses XADD on segstream:cam0:frames, segstream:cam0:events" in redis_line
    assert "+xadd +multi +exec +xrevrange +xrange +xlen +set +@connection ~segstream:*" in redis_line
    assert redis_server.client(password=PASSWORD).exists("segstream:cam0:frames", "segstream:cam0:events") == 0


def test_the_readme_s_publisher_acl_passes_and_nothing_is_written(tmp_path, redis_server, capsys):
    """Found by QA: the check's DISCARD, which the README's ACL does not grant, failed the very
    user the run works with ('no permissions to run the discard command')."""
    redis = f"{{url: '{redis_server.url}', username: pub, password: pub-pw}}"
    code, lines = connect(write_config(tmp_path, FILE_SOURCE, redis), capsys)
    assert line_of(lines, "redis").startswith("ok") and code == 0, lines
    assert redis_server.client(password=PASSWORD).exists("segstream:cam0:frames", "segstream:cam0:events") == 0


def test_an_unreachable_redis_fails_with_the_runs_line(tmp_path, capsys):
    redis = f"{{url: 'redis://127.0.0.1:{free_port()}/0'}}"
    code, lines = connect(write_config(tmp_path, FILE_SOURCE, redis), capsys)
    assert code == 1
    assert line_of(lines, "redis").startswith("FAIL") and "cannot reach Redis at redis://127.0.0.1:" in line_of(lines, "redis")


def test_a_file_that_does_not_decode_fails_its_source(tmp_path, capsys):
    bogus = tmp_path / "clip.mp4"
    bogus.write_bytes(b"\x00not a video at all" * 200)
    config = write_config(tmp_path, f"  - {{name: cam0, type: file, path: '{bogus}'}}")
    assert main(["validate", str(config)]) == 0  # the file exists: the offline check passes
    capsys.readouterr()
    code, lines = connect(config, capsys)
    assert code == 1
    assert "source cam0: source cam0:" not in line_of(lines, "source cam0")
    assert line_of(lines, "source cam0").startswith("FAIL") and "clip.mp4" in line_of(lines, "source cam0")


def test_a_file_over_http_is_named_once_whether_served_missing_or_the_server_down(tmp_path, capsys):
    from tests.conftest import encode_clip
    from tests.live_servers import StaticHttpServer

    (tmp_path / "www").mkdir()
    encode_clip(tmp_path / "www" / "x.mp4", frames=3)
    with StaticHttpServer(tmp_path / "www") as server:
        url = f"http://viewer:VodPw_3@127.0.0.1:{server.port}"
        for clip, said in (("x.mp4", "decodes"), ("missing.mp4", "404 Not Found")):
            config = write_config(tmp_path, f"  - {{name: vod, type: file, path: '{url}/{clip}'}}")
            code, lines = connect(config, capsys)
            line = line_of(lines, "source vod")
            assert line.count("source vod") == 1 and said in line and "VodPw_3" not in line, line
            assert code == (0 if clip == "x.mp4" else 1)
    code, lines = connect(write_config(tmp_path, f"  - {{name: vod, type: file, path: '{url}/x.mp4'}}"), capsys)
    line = line_of(lines, "source vod")  # found probing: "source vod: source vod: source vod: connection refused"
    assert code == 1 and line.count("source vod") == 1 and "connection refused" in line and "VodPw_3" not in line, line


def test_an_rtsp_camera_gives_a_first_frame_and_a_dead_one_fails(tmp_path, capsys):
    with RtspCamera(tmp_path) as camera:
        dead = f"rtsp://127.0.0.1:{free_port()}/cam"
        sources = (f"  - {{name: lobby, type: stream, url: '{camera.url()}', open_timeout_s: 8}}\n"
                   f"  - {{name: gone, type: stream, url: '{dead}', open_timeout_s: 3}}")
        code, lines = connect(write_config(tmp_path, sources), capsys)
    assert code == 1
    assert line_of(lines, "source lobby").startswith("ok") and "gave a first frame, 160x120" in line_of(lines, "source lobby")
    assert line_of(lines, "source gone").startswith("FAIL")
    assert lines[-1].startswith("FAIL: 1 of 4 checks failed (source gone)")


def test_a_watched_folder_that_is_empty_is_ok_and_the_check_ends(tmp_path, capsys):
    # found probing the watched folders: an empty one (a new FTP camera's) held --connect for ever
    import time

    from PIL import Image

    empty = tmp_path / "uploads"
    empty.mkdir()
    watched = (f"  - {{name: site, type: images, path: '{empty}', timestamps: name, timestamp_zone: UTC, "
               "watch: true, poll_s: 0.2}")
    started = time.monotonic()
    code, lines = connect(write_config(tmp_path, watched), capsys)
    assert code == 0 and time.monotonic() - started < 15, lines
    assert line_of(lines, "source site").endswith(f"source site: '{empty}' is watched, no image in it yet: new images are read as they come")
    Image.new("RGB", (32, 24)).save(empty / "site_20261204_130501.png")
    code, lines = connect(write_config(tmp_path, watched), capsys)
    assert code == 0 and line_of(lines, "source site").endswith("is watched and decodes, first frame 32x24"), lines


def test_a_camera_that_takes_the_connection_then_closes_it_is_one_the_run_retries(tmp_path, capsys):
    # found probing a site's cameras: one at its session limit (or booting) took the connection and
    # closed it; validate said "would not start cleanly — fix the lines above", the run just retried it
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))

    def hang_up() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            connection.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        busy = (f"  - {{name: busy, type: stream, url: 'rtsp://127.0.0.1:{listener.getsockname()[1]}/cam', "
                "open_timeout_s: 3}")
        code, lines = connect(write_config(tmp_path, busy), capsys)
    finally:
        listener.close()
    assert code == 1
    line = line_of(lines, "source busy")
    assert line.startswith("FAIL") and "answered nothing usable" in line, line
    assert line.endswith("`segstream run` starts all the same and keeps retrying it; its frames come once it answers")


def test_a_camera_that_is_down_fails_saying_the_run_would_start_and_retry_it(tmp_path, capsys):
    # found probing: a camera merely down read "`segstream run` would not start cleanly", though run starts and retries
    dead = f"  - {{name: gone, type: stream, url: 'rtsp://127.0.0.1:{free_port()}/cam', open_timeout_s: 3}}"
    code, lines = connect(write_config(tmp_path, dead), capsys)
    assert code == 1
    assert line_of(lines, "source gone").startswith("FAIL") and line_of(lines, "source gone").endswith(
        "`segstream run` starts all the same and keeps retrying it; its frames come once it answers")
    assert lines[-1] == ("FAIL: 1 of 3 checks failed (source gone): `segstream run` would start, and retry source gone "
                         "until it answers: no frames from it till then — check that it is on and reachable")
    # with something the run cannot start without, it is still "would not start cleanly"
    redis = f"{{url: 'redis://127.0.0.1:{free_port()}/0'}}"
    code, lines = connect(write_config(tmp_path, dead, redis), capsys)
    assert code == 1 and lines[-1].startswith("FAIL: 2 of 4 checks failed (redis, source gone): `segstream run` "
                                              "would not start cleanly"), lines
    # found reviewing: with max_reconnects 0 the run gives the camera up at once, it retries nothing
    code, lines = connect(write_config(tmp_path, dead.replace("open_timeout_s: 3", "open_timeout_s: 3, max_reconnects: 0")),
                          capsys)
    assert code == 1 and "retries" not in line_of(lines, "source gone") and "would not start cleanly" in lines[-1], lines


def test_a_udp_listener_reports_its_port_free_and_fails_when_something_holds_it(tmp_path, capsys):
    port = free_port(socket.SOCK_DGRAM)
    config = write_config(tmp_path, f"  - {{name: encoder, type: stream, url: 'udp://0.0.0.0:{port}'}}")
    code, lines = connect(config, capsys)
    assert code == 0, lines
    assert f"listens on UDP *:{port}, the port is free" in line_of(lines, "source encoder")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("0.0.0.0", port))
        code, lines = connect(config, capsys)
    assert code == 1
    assert line_of(lines, "source encoder").startswith("FAIL") and "Address already in use" in line_of(lines, "source encoder")
    # found probing: a UDP input on 127.0.0.1 was said to listen on *: FFmpeg binds the URL's host
    local = write_config(tmp_path, f"  - {{name: encoder, type: stream, url: 'udp://127.0.0.1:{port}'}}")
    code, lines = connect(local, capsys)
    assert code == 0 and f"listens on UDP 127.0.0.1:{port}, the port is free" in line_of(lines, "source encoder")
    elsewhere = write_config(tmp_path, f"  - {{name: encoder, type: stream, url: 'udp://192.0.2.7:{port}'}}")
    code, lines = connect(elsewhere, capsys)  # not an address of this machine: the run could not bind it either
    assert code == 1 and "use an address of this machine, or 0.0.0.0" in line_of(lines, "source encoder")


def test_a_configured_ops_port_that_is_taken_fails(tmp_path, capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, lines = connect(write_config(tmp_path, FILE_SOURCE, ops=f"'127.0.0.1:{port}'"), capsys)
    assert code == 1
    assert line_of(lines, "ops.http").startswith("FAIL") and "--set ops.http=" in line_of(lines, "ops.http")


def test_the_folders_the_run_writes_are_checked_and_named_absolute(tmp_path, capsys, monkeypatch):
    """Found probing a systemd deployment: validate --connect passed a config whose run failed at
    once, its working folder read-only for the service's user (a relative output folder is the
    working folder's). Here a file stands where a folder's parent should be (root may write anywhere)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").write_text("not a folder")
    config = write_config(tmp_path, FILE_SOURCE)
    code, lines = connect(config, capsys, "--set", "sinks.files.enabled=true", "--set", "sinks.preview.enabled=true",
                          "--set", f"sinks.preview.dir={tmp_path / 'previews'}")
    assert code == 1
    assert line_of(lines, "sinks.files.dir") == (f"FAIL  sinks.files.dir: {tmp_path}/runs/out: {tmp_path}/runs is a file, "
                                                 "not a folder — choose another path")
    assert line_of(lines, "sinks.preview.dir") == f"ok    sinks.preview.dir: {tmp_path}/previews can be made (in {tmp_path})"
    code, lines = connect(config, capsys)  # the files sink off: no folder of its to check
    assert code == 0 and not [line for line in lines if "sinks.files.dir" in line]
    # the run's own refusal names the folder absolute too
    from segstream.connectors.errors import SinkError
    from segstream.connectors.files_sink import FilesSink

    with pytest.raises(SinkError, match=f"cannot create output directory 'runs/out' \\({tmp_path}/runs/out\\): "):
        FilesSink("runs/out")


def test_a_folder_the_run_would_refuse_fails_the_check_too(tmp_path, capsys):
    """Found probing the docs as written: a folder every user may write (no sticky bit) passed
    validate --connect, and the run refused it; root's os.access said /proc/nope could be made."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    config = write_config(tmp_path, FILE_SOURCE)
    code, lines = connect(config, capsys, "--set", "sinks.files.enabled=true", "--set", f"sinks.files.dir={shared}")
    assert code == 1 and line_of(lines, "sinks.files.dir") == (
        f"FAIL  sinks.files.dir: output directory '{shared}' can be written by every user and has no sticky bit: "
        "others could replace the files written there — choose a folder of your own, or `chmod o-w` (or `chmod +t`) it")
    shared.chmod(0o1777)  # a /tmp-like folder: what the run takes
    code, lines = connect(config, capsys, "--set", "sinks.files.enabled=true", "--set", f"sinks.files.dir={shared}")
    assert code == 0 and line_of(lines, "sinks.files.dir") == f"ok    sinks.files.dir: {shared} can be written"
    assert list(shared.iterdir()) == []  # the check's trial folder is gone
    code, lines = connect(config, capsys, "--set", "sinks.files.enabled=true", "--set", "sinks.files.dir=/proc/nope")
    assert code == 1 and line_of(lines, "sinks.files.dir").startswith(
        "FAIL  sinks.files.dir: /proc/nope cannot be written by this user (it would be made in /proc")


def hub_subprocess(config: Path, hf_home: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "segstream", "validate", str(config), "--connect", *extra],
                          capture_output=True, text=True, env=env, timeout=120)


def test_a_published_presets_weights_not_cached_fail_offline_where_plain_validate_said_ok(tmp_path):
    # the SRE probe: validate said ok, and the run then could not fetch the preset's weights
    config = write_config(tmp_path, FILE_SOURCE)
    preset = "model.preset=coco_panoptic_eomt_small_640_2x"
    (tmp_path / "hf").mkdir()
    plain = subprocess.run([sys.executable, "-m", "segstream", "validate", str(config), "--set", preset],
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert plain.returncode == 0, plain.stderr
    done = hub_subprocess(config, tmp_path / "hf", "--set", preset)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    model_line = line_of(done.stdout.splitlines(), "model")
    assert model_line.startswith("FAIL  model: tue-mps/coco_panoptic_eomt_small_640_2x is not in the local Hugging "
                                 "Face cache"), model_line
    assert "set model.checkpoint to the local file" in model_line


def test_plain_validate_fails_a_hub_model_where_huggingface_hub_is_not_installed(tmp_path):
    # the air-gapped install probe: validate said ok, and the run then failed for want of the hub extra
    config = write_config(tmp_path, FILE_SOURCE)
    without_hub = ("import sys; sys.modules['huggingface_hub'] = None; from segstream.pipeline.entry import main; "
                   "sys.argv[0] = 'segstream'; sys.exit(main())")
    done = subprocess.run([sys.executable, "-c", without_hub, "validate", str(config),
                           "--set", "model.preset=coco_panoptic_eomt_small_640_2x"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "hf://tue-mps/coco_panoptic_eomt_small_640_2x' needs huggingface_hub, which is not installed here" in done.stderr
    assert "pip install huggingface_hub" in done.stderr and "set model.checkpoint to the local file" in done.stderr


def test_a_hub_checkpoint_fails_when_offline_and_not_cached_and_passes_once_in_the_cache(tmp_path):
    model = "{preset: synthetic_eomt_tiny_256, device: cpu, checkpoint: 'hf://acme/tiny-site/model.safetensors'}"
    config = write_config(tmp_path, FILE_SOURCE, model=model)
    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    done = hub_subprocess(config, hf_home)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    model_line = line_of(done.stdout.splitlines(), "model")
    assert model_line.startswith("FAIL") and "acme/tiny-site is not in the local Hugging Face cache" in model_line
    assert "HF_HUB_OFFLINE is set" in model_line
    # the hub cache's own layout, as a download leaves it
    repo = hf_home / "hub" / "models--acme--tiny-site"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    shutil.copy(TINY, repo / "snapshots" / commit / "model.safetensors")
    done = hub_subprocess(config, hf_home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is in the local Hugging Face cache" in line_of(done.stdout.splitlines(), "model")


def test_a_camera_that_is_not_plugged_in_fails_its_source(tmp_path, capsys):
    missing = next(f"/dev/video{n}" for n in range(63, 0, -1) if not Path(f"/dev/video{n}").exists())
    config = write_config(tmp_path, f"  - {{name: usb, type: camera, device: {missing}, open_timeout_s: 3}}")
    code, lines = connect(config, capsys)
    assert code == 1
    assert line_of(lines, "source usb") == f"FAIL  source usb: '{missing}' does not exist"


def test_tls_asked_of_a_redis_without_it_fails_saying_so(tmp_path, redis_server, capsys):
    redis = f"{{url: '{redis_server.url.replace('redis://', 'rediss://')}', password: '{PASSWORD}'}}"
    code, lines = connect(write_config(tmp_path, FILE_SOURCE, redis), capsys)
    assert code == 1
    redis_line = line_of(lines, "redis")
    assert redis_line.startswith("FAIL") and "if it has none, use redis://" in redis_line


def test_an_unreachable_redis_the_run_would_wait_for_says_so(tmp_path, capsys):
    """Found by QA: with start_wait_s the line read as if the run would fail at once."""
    redis = f"{{url: 'redis://127.0.0.1:{free_port()}/0', start_wait_s: 30}}"
    code, lines = connect(write_config(tmp_path, FILE_SOURCE, redis), capsys)
    assert code == 1
    assert line_of(lines, "redis").endswith("(the run would wait up to 30 s for it: sinks.redis.start_wait_s)")


TENANT_STREAMS = "stream: 'tenant1:{source}:frames', events_stream: 'tenant1:{source}:events'"
TENANT_KEYS = "~tenant1:*:frames ~tenant1:*:events ~tenant1:*:status"


@pytest.fixture
def other_tenant(redis_server) -> str:
    """A user with every command, on another tenant's keys only."""
    redis_server.client(password=PASSWORD).acl_setuser("t1", enabled=True, passwords=["+t1-pw"], keys=["other:*"],
                                                       commands=["+@all"])
    return f"{{url: '{redis_server.url}', username: t1, password: t1-pw, {TENANT_STREAMS}}}"


def test_a_user_whose_key_patterns_exclude_the_streams_is_told_the_keys_before_the_model_loads(
        tmp_path, other_tenant, capsys):
    """Found probing: the line advised commands the user had and named ~segstream:* whatever the
    streams were, and came only once the model had loaded. Here the model cannot load (no CUDA
    GPU): the Redis line comes first, or not at all."""
    import torch

    device = "cpu" if torch.cuda.is_available() else "cuda"
    config = write_config(tmp_path, "  - {name: cam0, type: synthetic, width: 96, height: 64, num_frames: 3}",
                          other_tenant, model=f"{{preset: synthetic_eomt_tiny_256, device: {device}}}")
    assert main(["run", str(config)]) == 1
    captured = capsys.readouterr()
    [line] = captured.err.strip().splitlines()
    assert "refuses this user the keys tenant1:cam0:frames, tenant1:cam0:events (its ACL key patterns)" in line
    assert f"grant it {TENANT_KEYS} (ACL SETUSER <user> {TENANT_KEYS})" in line
    assert "+xadd" not in line and "segstream:*" not in line and "Traceback" not in captured.err


def test_build_runtime_tells_a_refused_user_before_its_model_loads_with_its_own_sources_names(
        tmp_path, other_tenant):
    """Found at stop 28: an embedding program's build_runtime loaded the model and started the run;
    the refusal came with the first write. The model here cannot load (no CUDA GPU): the Redis
    error comes first, naming the keys of the program's own source too."""
    import torch

    from segstream.connectors.errors import SegstreamError
    from segstream.connectors.synthetic import SyntheticSource
    from segstream.pipeline.cli import build_runtime
    from segstream.pipeline.config import load_config

    device = "cpu" if torch.cuda.is_available() else "cuda"
    config = write_config(tmp_path, "  - {name: cam0, type: synthetic, width: 96, height: 64, num_frames: 3}",
                          other_tenant, model=f"{{preset: synthetic_eomt_tiny_256, device: {device}}}")
    own = SyntheticSource("mine", width=96, height=64, fps=10, seed=0, num_frames=3)
    with pytest.raises(SegstreamError, match="refuses this user the keys") as refused:
        build_runtime(load_config(config), progress=False, sources=[own])
    assert "tenant1:mine:frames" in str(refused.value)


def test_validate_connect_names_the_key_patterns_a_user_lacks(tmp_path, other_tenant, capsys):
    code, lines = connect(write_config(tmp_path, FILE_SOURCE, other_tenant), capsys)
    redis_line = line_of(lines, "redis")
    assert code == 1 and redis_line.startswith("FAIL")
    assert f"this user's ACL key patterns exclude the stream keys: grant it {TENANT_KEYS}" in redis_line
    assert "+xadd" not in redis_line


def test_the_publisher_says_a_refused_key_is_its_key_pattern_not_its_commands(redis_server, other_tenant, caplog):
    from segstream.connectors.errors import SinkError
    from segstream.connectors.redis_connection import connect_redis
    from segstream.connectors.redis_sink import RedisPublisher
    from tests.test_redis_sink import tiny_scene

    client = connect_redis(redis_server.url, password="t1-pw", username="t1", socket_timeout=2.0)
    publisher = RedisPublisher(client, "tenant1:{source}:frames", events_pattern="tenant1:{source}:events",
                               status_pattern="tenant1:{source}:status", max_batch_delay_s=0)
    with pytest.raises(SinkError, match=r"key patterns exclude the stream keys: grant it ~tenant1:\*:frames "):
        publisher.publish(tiny_scene("cam0", 0))
        publisher.flush()
    [warning] = [r.getMessage() for r in caplog.records if "XREVRANGE" in r.getMessage()]
    assert f"key patterns exclude the stream keys: grant it {TENANT_KEYS}" in warning and "+xrevrange" not in warning
    publisher.close()


def test_a_port_alone_and_a_privileged_port_are_said_with_what_to_write(capsys, tmp_path):
    """Found probing a systemd deployment: --set ops.http=9108 said "Input should be a valid
    string", and a user's port 80 "Permission denied — set ops.http to a free one"."""
    import errno as errnos

    from segstream.pipeline.monitoring import privileged_port

    config = write_config(tmp_path, FILE_SOURCE)
    assert main(["validate", str(config), "--set", "ops.http=9108"]) == 2
    assert capsys.readouterr().err == (
        "segstream: error: ops.http (from --set): 9108 is a port alone — write host:port: 127.0.0.1:9108 (this "
        "machine only) or 0.0.0.0:9108 (every interface)\n")
    # found probing as an attacker: '*:9108' passed validate, and the run blamed another segstream for the port
    assert main(["validate", str(config), "--set", "ops.http=*:9108"]) == 2
    assert capsys.readouterr().err == (
        "segstream: error: ops.http (from --set): '*:9108': * names no address here — write 0.0.0.0:9108 for every "
        "interface (or [::]:9108 for IPv6 too)\n")
    from segstream.connectors.errors import ConfigError
    from segstream.pipeline.metrics import RunMetrics
    from segstream.pipeline.monitoring import OpsServer

    with pytest.raises(ConfigError, match="cannot listen on no-such-host.invalid:9108 .*— no address of this machine "
                                          "is called so: give one of its own, its name, 0.0.0.0 for every interface"):
        OpsServer(RunMetrics(), "no-such-host.invalid", 9108)
    with pytest.raises(ConfigError, match=r"cannot listen on 192.0.2.7:9108 .*— it is no address of this machine: "
                                          "give one of its own, 0.0.0.0 for every interface"):  # (TEST-NET-1)
        OpsServer(RunMetrics(), "192.0.2.7", 9108)
    # validate --connect says it in the run's words (found probing an upgrade: "set ops.http to a free one")
    from segstream.connectors.errors import SegstreamError
    from segstream.pipeline.preflight import port_check

    with pytest.raises(SegstreamError, match="cannot listen on 192.0.2.7:9108 .*— it is no address of this machine"):
        port_check(("192.0.2.7", 9108), configured=True)
    # the [::]:9108 the advice gives listens, on IPv6 and (dual stack) IPv4: it failed, "no address of this machine"
    import urllib.request

    every = OpsServer(RunMetrics(), "::", 0)
    try:
        for url in (f"http://[::1]:{every.address[1]}/healthz", f"http://127.0.0.1:{every.address[1]}/healthz"):
            assert urllib.request.urlopen(url, timeout=5).status == 200
    finally:
        every.close()
    said = privileged_port(errnos.EACCES, 80)
    assert said.startswith("ports below 1024 take root or CAP_NET_BIND_SERVICE") and "9080" in said
    assert privileged_port(errnos.EACCES, 8080) is None and privileged_port(errnos.EADDRINUSE, 80) is None


def cannot_save(server: RedisProcess) -> None:
    """Make ``server`` (started with ``--save``) fail its snapshots: it answers MISCONF to writes."""
    import time

    admin = server.client()
    shutil.rmtree(server.directory)  # where it saves is gone, as on a full disk
    admin.bgsave()
    deadline = time.monotonic() + 15
    while admin.info("persistence")["rdb_bgsave_in_progress"] or admin.info("persistence")["rdb_last_bgsave_status"] != "err":
        assert time.monotonic() < deadline, "the snapshot did not fail"
        time.sleep(0.05)


REFUSING_FOR_NOW = {  # what makes a Redis refuse writes for now, and the advice the running publisher gives then
    "full": (["--maxmemory-policy", "noeviction"], lambda server: server.client().config_set("maxmemory", "1"),
             "Redis is out of memory (maxmemory), and refuses XADD before its MAXLEN trims anything: trim the stream "
             "by hand (XTRIM <stream> MAXLEN <n>) or raise maxmemory"),
    "cannot save": (["--save", "3600 1", "--enable-protected-configs", "yes"], cannot_save,
                    "Redis cannot save its RDB snapshots (its disk full, or its dir not writable"),
    "too few replicas": (["--min-replicas-to-write", "1"], lambda server: None,
                         "the master has fewer replicas in sync than its min-replicas-to-write asks"),
}


@pytest.mark.parametrize("state", sorted(REFUSING_FOR_NOW))
def test_a_redis_refusing_writes_for_now_is_a_warning_and_the_run_starts_all_the_same(tmp_path, capsys, state):
    """Found by a Redis operator: a Redis already full failed `validate --connect` and kept `run`
    from starting ("refused MULTI/EXEC: command not allowed when used memory > 'maxmemory'"), though
    a run already going rides the same state out with its backlog. So do MISCONF and NOREPLICAS."""
    from segstream.pipeline.config import load_config
    from segstream.pipeline.preflight import check_sink_permissions

    args, refuse, advice = REFUSING_FOR_NOW[state]
    with RedisProcess(tmp_path / "redis", args) as server:
        refuse(server)
        config = write_config(tmp_path, FILE_SOURCE, f"{{url: '{server.url}'}}")
        code, lines = connect(config, capsys)
        redis_line = line_of(lines, "redis")
        assert code == 0 and redis_line.startswith(f"ok    redis: {server.url} answers"), lines
        assert "this user may XADD to segstream:cam0:frames, segstream:cam0:events; but Redis refuses writes for now: " \
               f"{advice}" in redis_line, redis_line
        assert redis_line.endswith("— `segstream run` starts all the same, and keeps its results in its backlog "
                                   "(sinks.redis.max_backlog) until Redis takes them")
        assert lines[-1].startswith("ok: all 4 checks passed")
        check_sink_permissions(load_config(config))  # the run's own look before its model loads: no refusal
        assert server.client().keys("*") == []  # nothing written


def cluster_node(directory: Path) -> RedisProcess:
    """A Redis Cluster of one node serving every slot (cluster_state ok)."""
    import time

    # its cluster bus listens 10000 above its port: both free, the bus at most 65535 (the system's pick,
    # up to 60999, made the node exit after it opened its port: a CI run's "Connection refused")
    from tests.redis_servers import free_port as port_in

    for _ in range(50):
        port = port_in(20000, 55535)
        try:
            port_in(port + 10000, port + 10000)
            break
        except RuntimeError:  # its bus port taken: another
            continue
    node = RedisProcess(directory, ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"], port=port)
    try:
        admin = node.client()
        admin.execute_command("CLUSTER", "ADDSLOTS", *range(16384))
        deadline = time.monotonic() + 20
        while admin.cluster("info")["cluster_state"] != "ok":
            assert time.monotonic() < deadline, "the one-node cluster did not come up"
            time.sleep(0.05)
    except BaseException:
        node.close()
        raise
    return node


def run_before_the_model(config: Path, capsys) -> tuple[int, str]:
    """``segstream run`` of ``config`` with a model that cannot load here (CUDA asked on a machine
    without it, or the CPU where there is one): its exit status and stderr's one line, which must
    come from before the model loads."""
    import torch

    text = config.read_text().replace("device: cpu", f"device: {'cpu' if torch.cuda.is_available() else 'cuda'}")
    config.write_text(text)
    code = main(["run", str(config)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return code, lines[0]


QUEUED_REFUSALS = {  # a Redis that refuses the check's XADD as it is queued, for another reason than the ACL's
    "a cluster node": (cluster_node, "is a node of a Redis Cluster (Keys in request don't hash to the same slot) — "
                       "Redis Cluster is not supported: point sinks.redis.url at a standalone Redis, or at Sentinel "
                       "(redis+sentinel://)"),
    "XADD renamed away": (lambda directory: RedisProcess(directory, ["--rename-command", "XADD", ""]),
                          "refuses XADD on segstream:cam0:frames, segstream:cam0:events: unknown command 'XADD' — this "
                          "Redis has renamed or disabled it (rename-command in its config), or is too old for it: the "
                          "publisher needs it under its own name"),
}


@pytest.mark.parametrize("refusing", sorted(QUEUED_REFUSALS))
def test_a_refusal_as_the_check_queues_its_commands_is_one_line_not_a_traceback(tmp_path, capsys, refusing):
    """Found by a Redis operator: `run` pointed at a Redis Cluster node ended in a 26-line
    traceback (ClusterCrossSlotError), and validate --connect said "FAIL redis:
    ClusterCrossSlotError: ...": a refusal at queue time other than the ACL's escaped."""
    start, refused = QUEUED_REFUSALS[refusing]
    with start(tmp_path / "redis") as server:
        config = write_config(tmp_path, "  - {name: cam0, type: synthetic, width: 96, height: 64, num_frames: 3}",
                              f"{{url: '{server.url}'}}")
        code, lines = connect(config, capsys)
        said = f"Redis at {server.url} {refused}"
        assert code == 1 and line_of(lines, "redis") == f"FAIL  redis: {said}", lines
        assert run_before_the_model(config, capsys) == (1, f"segstream: error: {said}")
        assert server.client().dbsize() == 0


def test_a_stream_key_that_holds_another_type_fails_before_the_model_loads(tmp_path, capsys):
    """Found by a Redis operator: with `SET segstream:cam:frames hello`, validate --connect said ok
    and `run` failed only after its model loaded ("that key is not a stream")."""
    with RedisProcess(tmp_path / "redis") as server:
        server.client().set("segstream:cam0:frames", "hello")
        config = write_config(tmp_path, "  - {name: cam0, type: synthetic, width: 96, height: 64, num_frames: 3}",
                              f"{{url: '{server.url}'}}")
        code, lines = connect(config, capsys)
        said = (f"Redis at {server.url} holds segstream:cam0:frames (a string), which the run would write as a stream "
                "— delete it (DEL segstream:cam0:frames) if nothing needs it, or set sinks.redis.stream to other keys")
        assert code == 1 and line_of(lines, "redis") == f"FAIL  redis: {said}", lines
        assert run_before_the_model(config, capsys) == (1, f"segstream: error: {said}")
        server.client().hset("segstream:cam0:events", "a", "b")  # both: each key named, and the setting of each
        code, lines = connect(config, capsys)
        assert code == 1 and line_of(lines, "redis").endswith(
            "holds segstream:cam0:frames (a string) and segstream:cam0:events (a hash), which the run would write as "
            "streams — delete them (DEL segstream:cam0:frames segstream:cam0:events) if nothing needs them, or set "
            "sinks.redis.stream and sinks.redis.events_stream to other keys"), lines
        assert server.client().get("segstream:cam0:frames") == b"hello"


def test_a_redis_slower_to_answer_than_the_run_s_timeout_fails_the_check_as_it_would_fail_the_run(tmp_path, capsys):
    # found probing a remote site: a Redis 1.5 s away passed `validate --connect` (its check waited 5 s) and
    # `segstream run` (timeout_s 1 s) could not connect, told only of TLS
    import threading
    import time

    with RedisProcess(tmp_path / "redis", ["--enable-debug-command", "yes"]) as server:
        config = write_config(tmp_path, FILE_SOURCE, f"{{url: '{server.url}', timeout_s: 0.5}}")
        # (busy for longer than the checks before Redis's take on a loaded machine: 2 s was once not)
        busy = threading.Thread(target=server.client(socket_timeout=10).execute_command, args=("DEBUG", "SLEEP", 5.0))
        busy.start()
        time.sleep(0.1)
        try:
            code, lines = connect(config, capsys)
        finally:
            busy.join()
        assert code == 1 and "or it answers more slowly than the 0.5 s allowed (a far link: raise " \
            "sinks.redis.timeout_s)" in line_of(lines, "redis"), lines


def test_writes_paused_during_the_check_are_a_warning_not_a_failure(tmp_path, capsys):
    # CLIENT PAUSE WRITE (what a FAILOVER does for its while) holds the check's queued XADD
    with RedisProcess(tmp_path / "redis") as server:
        config = write_config(tmp_path, FILE_SOURCE, f"{{url: '{server.url}'}}")
        # paused longer than the check can take on a loaded machine (it waits 5 s for the write)
        server.client().execute_command("CLIENT", "PAUSE", "30000", "WRITE")
        try:
            code, lines = connect(config, capsys)
        finally:
            server.client().execute_command("CLIENT", "UNPAUSE")
        assert code == 0 and line_of(lines, "redis") == (
            f"ok    redis: {server.url} answers PING, but held a write of this check for 5 s: its writes are paused "
            "(CLIENT PAUSE WRITE, a FAILOVER under way), or it hangs — `segstream run` starts all the same, and keeps "
            "its results in its backlog (sinks.redis.max_backlog) until Redis takes them; check again once it takes "
            "writes, to know this user's permissions"), lines
        assert server.client().keys("*") == []


def test_a_camera_answering_rtsp_503_is_said_to_be_starting_or_out_of_sessions(tmp_path, capsys):
    # found probing as a home-lab NVR user: a booting camera's 503 read "the server or object
    # store is overloaded"
    import threading

    server = socket.create_server(("127.0.0.1", 0))

    def answer():
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            with client:
                request = client.recv(4096).decode("latin-1")
                cseq = next((line.split(":", 1)[1].strip() for line in request.split("\r\n")
                             if line.lower().startswith("cseq:")), "1")
                client.sendall(f"RTSP/1.0 503 Service Unavailable\r\nCSeq: {cseq}\r\n\r\n".encode())

    threading.Thread(target=answer, daemon=True).start()
    url = f"rtsp://127.0.0.1:{server.getsockname()[1]}/live"
    try:
        code, lines = connect(write_config(tmp_path, f"  - {{name: gate, type: stream, url: '{url}', open_timeout_s: 3}}"),
                              capsys)
    finally:
        server.close()
    assert code == 1
    said = line_of(lines, "source gate")
    assert "answered an RTSP server error" in said and "503 is a camera still starting or out of sessions" in said, said
    assert "object store" not in said
