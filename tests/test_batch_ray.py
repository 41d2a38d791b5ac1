"""segstream batch --engine ray on a local Ray: the local engine's outputs, and a video whose
worker is killed mid-video is done again and recorded once."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray

from segstream.pipeline.batch import MANIFEST, REDIS_MARKS, run_batch
from segstream.pipeline.config import BatchPipelineConfig, validate_config
from tests.conftest import encode_clip


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One small Ray for the module (starting one takes seconds). Its workers at the driver's
    priority: Ray starts them at nice 15, and beside the suite's other workers they got a few
    per cent of a core (the first test took 217 s beside two busy loops, 14 s alone)."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=150 * 1024**2, log_to_driver=False,
             _system_config={"worker_niceness": 0})
    yield
    ray.shutdown()


def config(out: Path, resize_in_decoder: bool = False, **batch) -> BatchPipelineConfig:
    return validate_config(
        {"model": {"device": "cpu"}, "engine": {"batch_size": 2, "resize_in_decoder": resize_in_decoder},
         "ops": {"http": None}, "batch": {"output": str(out), **batch}},
        schema=BatchPipelineConfig,
    )


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in (MANIFEST, ".lock", REDIS_MARKS)}


def test_ray_outputs_and_published_events_equal_the_local_engines(tmp_path):
    """Both engines with the decoder converting frames at the model's size (resize_in_decoder; one
    batch for both, for CI's time): the same files and the same events, describing full frames."""
    from segstream.connectors.redis_wire import event_from_wire
    from segstream.connectors.synthetic import write_clip
    from tests.redis_servers import RedisProcess

    videos = [encode_clip(tmp_path / "a.mp4", frames=10), encode_clip(tmp_path / "b.mp4", frames=7)]
    write_clip(tmp_path / "vga.mp4", tmp_path / "vga.npz", 640, 480, 6, seed=4)  # larger than the model's input
    (tmp_path / "broken.mp4").write_bytes(b"not a video" * 50)
    inputs = [str(v) for v in videos] + [str(tmp_path / "vga.mp4"), str(tmp_path / "broken.mp4")]
    outcomes, published = {}, {}
    for engine in ("local", "ray"):
        cfg = config(tmp_path / engine, resize_in_decoder=True)
        with RedisProcess(tmp_path / f"redis-{engine}") as server:
            cfg.sinks.redis.url = server.url
            outcomes[engine], _, _ = run_batch(cfg, inputs, engine=engine, progress=False)
            client = server.client()
            published[engine] = {  # each video's events, states with their data keys (and what became of its frames)
                vid: [(e.kind, e.data.get("state"), e.data.get("track_id"), sorted(e.data), e.data.get("frames"))
                      for _, f in client.xrange(f"segstream:{vid}:events") for e in [event_from_wire(f)]]
                for vid in ("a", "broken")
            }
    local, on_ray = outcomes["local"], outcomes["ray"]
    assert sorted((o.job.id, o.status, o.frames) for o in on_ray) == sorted((o.job.id, o.status, o.frames) for o in local)
    assert ("broken", "failed", 0) in [(o.job.id, o.status, o.frames) for o in on_ray]
    outputs = tree(tmp_path / "ray")
    assert outputs and outputs == tree(tmp_path / "local")
    assert published["ray"] == published["local"]
    assert [s for kind, s, _, _, _ in published["ray"]["a"] if kind == "state"] == ["connecting", "streaming", "ended"]
    assert {"width", "codec", "fps"} <= set([keys for kind, s, _, keys, _ in published["ray"]["a"] if s == "streaming"][0])
    assert published["ray"]["a"][-1][-1] == {"decoded": 10, "decode_errors": 0, "published": 10, "dropped": {}}
    assert published["ray"]["a"][-1][1] == "ended" and published["ray"]["broken"][-1][1] == "failed"
    # (that the local engine's decoder resizes at all is tests/test_decoder_resize.py's to show)
    entries = [json.loads(line) for line in outputs["vga/frames.jsonl"].decode().splitlines()]
    assert len(entries) == 6 and all((e["width"], e["height"]) == ("640", "480") for e in entries)


def _video_task_pids() -> list[int]:
    """Processes of Ray workers running a video task (Ray names them after the task)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(b"ray::process_video"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_killed_worker_is_retried_and_the_manifest_and_redis_show_the_video_once(tmp_path):
    from tests.redis_servers import RedisProcess

    video = encode_clip(tmp_path / "long.mp4", frames=80)
    out = tmp_path / "out"
    result = {}
    with RedisProcess(tmp_path / "redis") as server:
        cfg = config(out)
        cfg.sinks.redis.url = server.url
        thread = threading.Thread(
            target=lambda: result.update(outcomes=run_batch(cfg, [str(video)], engine="ray", progress=False)[0])
        )
        thread.start()
        killed = None
        deadline = time.monotonic() + 120
        while killed is None:
            assert time.monotonic() < deadline and thread.is_alive(), "the video task never got going"
            written = list((out / ".partial").glob("long.*/panoptic/*.png")) if (out / ".partial").exists() else []
            pids = _video_task_pids()
            if len(written) >= 10 and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed = pids[0]
            time.sleep(0.05)
        thread.join(180)
        assert not thread.is_alive()

        [outcome] = result["outcomes"]
        assert outcome.status == "done" and outcome.frames == 80
        records = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
        assert [(r["id"], r["status"], r["frames"]) for r in records] == [("long", "done", 80)]
        lines = (out / "long" / "frames.jsonl").read_text().splitlines()
        assert [json.loads(line)["frame"] for line in lines] == [str(i) for i in range(80)], "whole, each frame once"
        assert len(list((out / "long" / "panoptic").glob("*.png"))) == 80
        assert not (out / ".partial").exists(), "the killed attempt's half-written folder is gone"
        # what the killed attempt published went with it (found reviewing: its frames were in the stream twice)
        published = [int(f[b"frame"]) for _, f in server.client().xrange("segstream:long:frames")]
        assert published == list(range(80))


def test_an_address_that_does_not_answer_and_an_unreachable_redis_fail_before_any_video():
    # Found probing: host:port of no cluster retried for minutes; an unreachable Redis failed every
    # video of the archive one by one (the local engine refuses it at once)
    import socket

    from segstream.connectors.errors import ConfigError, SinkError
    from segstream.pipeline.batch_ray import _check_reachable, _check_redis

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: nothing answers
        with pytest.raises(ConfigError, match=f"batch.ray.address: nothing answers at 127.0.0.1:{port}"):
            _check_reachable(f"127.0.0.1:{port}")
        cfg = validate_config({"model": {"device": "cpu"},
                               "sinks": {"redis": {"url": f"redis://127.0.0.1:{port}/0"}}},
                              schema=BatchPipelineConfig)
        with pytest.raises(SinkError, match=f"127.0.0.1:{port}"):
            _check_redis(cfg)
    for resolved_by_ray in (None, "auto", "ray://head:10001"):
        _check_reachable(resolved_by_ray)


def test_a_batch_killed_midway_and_resumed_on_ray_leaves_each_frame_once_in_redis(tmp_path):
    import subprocess
    import sys

    from tests.redis_servers import RedisProcess
    from tests.test_batch import _KILLED_MIDWAY, REPO

    video = encode_clip(tmp_path / "long.mp4", frames=40)
    out = tmp_path / "out"
    with RedisProcess(tmp_path / "redis") as server:
        killed = subprocess.run([sys.executable, "-c", _KILLED_MIDWAY, str(out), str(video), server.url],
                                env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        client = server.client()
        assert 5 <= client.xlen("segstream:long:frames") < 40

        cfg = config(out)
        cfg.sinks.redis.url = server.url
        outcomes, _, _ = run_batch(cfg, [str(video)], engine="ray", progress=False)
        assert [o.status for o in outcomes] == ["done"]
        assert [int(f[b"frame"]) for _, f in client.xrange("segstream:long:frames")] == list(range(40))


def _out_of_space():
    raise OSError(28, "No space left on device")


class _Full:
    def segment(self):
        _out_of_space()


def _waits_on(actor):
    return ray.get(actor.segment.remote())


def test_a_failed_ray_task_is_told_by_the_error_inside_it_without_colour_codes():
    # Found probing: with /dev/shm and /tmp tiny the manifest said only "its Ray task failed:
    # \x1b[36mray::process_video()\x1b[39m (pid=12085, ip=192.0.2.2)", the cause in raylet logs.
    from segstream.pipeline.batch_ray import ray_failure

    own = ray.remote(max_retries=0)(_out_of_space)
    nested = ray.remote(max_retries=0)(_waits_on)  # process_video's ray.get of the model actor's results
    crashed = ray.remote(max_retries=0)(lambda: os._exit(1))
    reasons = []
    for ref in (own.remote(), nested.remote(ray.remote(_Full).remote()), crashed.remote()):
        with pytest.raises(ray.exceptions.RayError) as failed:
            ray.get(ref)
        assert "\x1b[" in str(failed.value) or "WorkerCrashed" in type(failed.value).__name__, "Ray's own text"
        reasons.append(ray_failure(failed.value))
    assert reasons[0] == reasons[1] == "OSError: [Errno 28] No space left on device"
    assert reasons[2].startswith("WorkerCrashedError: ") and "\n" not in reasons[2] and "\x1b" not in reasons[2]


def test_presigned_urls_on_ray_are_read_whole_and_recorded_without_their_query(tmp_path):
    """The workers get the whole URL (the server refuses one without its signature) and the
    manifest, the outputs and the reasons only its identity."""
    from tests.object_store import SIGNATURE, ObjectStore
    from tests.test_batch_urls import written

    encode_clip(tmp_path / "clip.mp4", frames=3)
    out = tmp_path / "out"
    with ObjectStore(tmp_path) as store:
        outcomes, _, _ = run_batch(config(out), [store.url("clip.mp4"), store.url("gone.mp4")], engine="ray",
                                   progress=False)
    assert sorted((o.job.id, o.status, o.frames) for o in outcomes) == [("clip", "done", 3), ("gone", "failed", 0)]
    records = {json.loads(line)["id"]: json.loads(line) for line in (out / MANIFEST).read_text().splitlines()}
    assert records["clip"]["video"] == f"{store.base}/clip.mp4" and records["clip"]["etag"]
    assert records["gone"]["reason"].startswith(f"source gone: cannot open '{store.base}/gone.mp4': 404 Not Found")
    assert SIGNATURE not in written(out)


def test_either_engine_skips_what_the_other_did_its_settings_being_the_same(tmp_path):
    # found probing as a CLI reviewer: Ray recorded model.precision auto where the local engine recorded
    # what auto is here (bf16 or fp32), so switching engines did every video again
    import torch

    from segstream.models.segmenter import default_precision

    here = default_precision(torch.device("cpu"))  # auto, as the local engine resolves it and Ray's actors do
    video = str(encode_clip(tmp_path / "a.mp4", frames=4))
    for first, then in (("local", "ray"), ("ray", "local")):
        out = tmp_path / first
        outcomes, skipped, _ = run_batch(config(out), [video], engine=first, progress=False)
        assert [o.status for o in outcomes] == ["done"] and skipped == 0
        outcomes, skipped, _ = run_batch(config(out), [video], engine=then, progress=False)
        assert outcomes == [] and skipped == 1, f"{then} after {first}: done again"
        record = json.loads((out / MANIFEST).read_text().splitlines()[-1])
        assert record["settings"]["model"]["precision"] == here


_SAYING_SINK = """
import logging
import os


class SayingSink:
    name = "saying"

    def __init__(self):
        logging.getLogger("segstream.saying").warning("a sink built in a Ray worker")
        os.write(2, b"[2026-12-05 04:10:00,001 E 4242 4242] native.cc:7: a native library's own line\\n")

    def publish(self, result): pass
    def publish_event(self, event): pass
    def poll(self): pass
    def flush(self): pass
    def close(self): pass
"""


def test_ray_s_lines_under_json_logs_are_json_and_without_colour_in_text(tmp_path):
    # found probing as a CLI reviewer: Ray's WARNING lines and its workers' lines, prefixed "(process_video
    # pid=...)" in colour codes, broke --log-format json and ignored NO_COLOR; each task warned of
    # sinks.files.dir and sinks.preview.dir, which the user had not set (its config written out whole)
    import subprocess
    import sys

    from tests.test_batch import REPO

    video = str(encode_clip(tmp_path / "a.mp4", frames=4))
    (tmp_path / "saying_sink.py").write_text(_SAYING_SINK)  # its line comes from the worker
    config_file = tmp_path / "batch.yaml"
    # (a precision given: no task to resolve auto, whose worker costs CI seconds of a core)
    config_file.write_text("model: {device: cpu, precision: fp32}\nengine: {batch_size: 2}\nops: {http: null}\n"
                           "sinks: {custom: [{use: 'saying_sink:SayingSink'}]}\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("RAY_", "NO_COLOR"))}
    env["RAY_worker_niceness"] = "0"  # as local_ray's: at nice 15 the suite's other workers starved them

    def batch(out: str, *options: str, joined: bool = False) -> subprocess.CompletedProcess:
        # joined: the module's Ray, by its address (a Ray started for each run costs CI seconds of a core)
        where = ["--set", f"batch.ray.address={ray.get_runtime_context().gcs_address}"] if joined else []
        auth = {"RAY_AUTH_MODE": os.environ["RAY_AUTH_MODE"]} if joined and "RAY_AUTH_MODE" in os.environ else {}
        return subprocess.run([sys.executable, "-m", "segstream", *options[:2], "batch", "--engine", "ray", video,
                               "--config", str(config_file), "--out", str(tmp_path / out), *options[2:], *where],
                              env={**env, **auth, "PYTHONPATH": f"{REPO}:{tmp_path}"}, cwd=tmp_path,
                              capture_output=True, text=True, timeout=240)

    plain = batch("plain", "--log-level", "info", joined=True)
    assert plain.returncode == 0, plain.stderr
    [worker] = [line for line in plain.stderr.splitlines() if "a sink built in a Ray worker" in line]
    assert worker.endswith("segstream: warning: a sink built in a Ray worker"), "logged as the driver logs"
    assert "\x1b" not in plain.stderr, "no colour codes where standard error is no terminal"
    assert " is set but " not in plain.stderr, "a setting the user left alone"

    logged = batch("json", "--log-format", "json")  # a Ray of its own: its start's lines are JSON too
    assert logged.returncode == 0, logged.stderr
    records = [json.loads(line) for line in logged.stderr.splitlines()]  # every line one object
    assert any(r["message"] == "a sink built in a Ray worker" and r["logger"] == "segstream.saying" for r in records)
    # found as a CI run's disk filled: a line Ray's processes write themselves (its raylet's "over 95% full")
    # came through as written; now a record, with its severity
    [native] = [r for r in records if "a native library's own line" in r["message"]]
    assert native["logger"] == "ray" and native["level"] == "ERROR", native
    assert any(r["message"].startswith("a: done") for r in records)


def test_a_cluster_that_refuses_the_token_is_one_line_saying_how_to_give_it(tmp_path):
    # Found shortening the suite: Ray (2.59 on) starts local clusters with token authentication;
    # joining one without the token printed a C++ warning a second for 20 s and then "cannot join
    # the Ray cluster at ...: Failed to connect to Ray cluster", the token named in none of it
    import subprocess
    import sys

    from tests.test_batch import REPO

    if os.environ.get("RAY_AUTH_MODE") != "token":
        pytest.fail("this Ray started its local cluster without token authentication (Ray before 2.59?)")
    video = str(encode_clip(tmp_path / "a.mp4", frames=2))
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env["RAY_gcs_server_port_wait_time_s"] = "2"  # Ray's tries to connect, a second each (20 by default)
    joined = subprocess.run([sys.executable, "-m", "segstream", "batch", "--engine", "ray", video, "--out",
                             str(tmp_path / "out"), "--set", "sinks.redis.enabled=false", "--set",
                             f"batch.ray.address={ray.get_runtime_context().gcs_address}"],
                            env={**env, "PYTHONPATH": str(REPO)}, cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert joined.returncode == 2
    assert joined.stderr.startswith("segstream: error: batch.ray.address: the Ray cluster at ")
    assert "refused segstream's token" in joined.stderr and "RAY_AUTH_TOKEN" in joined.stderr
    assert "RAY_AUTH_MODE is not set, so none was sent" in joined.stderr  # which case it is (found probing)
    assert len(joined.stderr.splitlines()) == 1, joined.stderr  # Ray's C++ lines kept aside
    # a token file named and not there: Ray's AuthenticationError was a 37-line traceback, exit 1
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp_path / "no-such-token"))
    missing = subprocess.run(joined.args, env={**env, "PYTHONPATH": str(REPO)}, cwd=tmp_path, capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1, missing.stderr
    assert missing.stderr.startswith(f"segstream: error: RAY_AUTH_TOKEN_PATH names '{tmp_path / 'no-such-token'}'")


def test_while_joining_only_ray_s_retry_lines_are_kept_aside_and_the_rest_of_standard_error_goes_on(capfd):
    # found reviewing: keeping all of standard error aside hid a crash's last words (a C++ check
    # failing, then abort) and other threads' lines
    from segstream.pipeline.batch_ray import _native_lines_kept

    retry = (b"[2026-12-04 22:20:34,341 W 25039 25039] gcs_client.cc:210: Failed to get cluster ID from GCS server: "
             b"Unauthenticated: RPC error: InvalidAuthToken: Authentication token is missing or incorrect\n")
    with _native_lines_kept(True) as kept:
        os.write(2, retry * 3)
        os.write(2, b"[2026-12-04 22:20:35 C 25039 25039] core_worker.cc:1: Check failed: something\n")
    assert len(kept) == 3 and all("Failed to get cluster ID" in line for line in kept)
    err = capfd.readouterr().err
    assert "Check failed: something" in err and "gcs_client" not in err
    with _native_lines_kept(False) as kept:  # starting a local Ray: standard error as it is
        os.write(2, retry)
    assert kept == [] and "gcs_client" in capfd.readouterr().err


@pytest.mark.parametrize("actor_cpus", [64, 2])
def test_a_cluster_too_small_for_the_batch_says_so_at_once_and_a_first_ctrl_c_ends_it(tmp_path, caplog, actor_cpus):
    """Found probing two machines: a model actor asking more CPUs than any node has (64), or one
    leaving a video's task none beside it (2 of 2: Ray holds the task back), left the batch silent for
    ever, and a first Ctrl-C ("the ones in progress finish") waited on videos that would never begin."""
    import logging

    from segstream.pipeline.batch_ray import _STALL_S, _StallWatch

    caplog.set_level(logging.INFO, logger="segstream")
    video = encode_clip(tmp_path / "a.mp4", frames=2)
    cfg = config(tmp_path / "out", ray={"actor_cpus": actor_cpus})
    cfg.model.precision = "fp32"  # (auto asks a task on the actor's resources: it waits the same, Ctrl-C ends it)

    def interrupt_once_said() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("cannot run this batch" in r.getMessage() for r in caplog.records):
            time.sleep(0.05)
        while actor_cpus == 2 and time.monotonic() < deadline and ray.available_resources().get("CPU", 0) > 0:
            time.sleep(0.05)  # the actor placed, holding both CPUs: the video's task is held back
        time.sleep(2.0 if actor_cpus == 2 else 0)  # (its model loaded: the task submitted)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_said, daemon=True).start()
    outcomes, _, stopped_by = run_batch(cfg, [str(video)], engine="ray", progress=False)
    assert [o.status for o in outcomes] == ["stopped"] and stopped_by == signal.SIGINT
    [said] = [r.getMessage() for r in caplog.records if "cannot run this batch" in r.getMessage()]
    assert "node(s) have 2 CPU(s)" in said and f"batch.ray.actor_cpus {actor_cpus}" in said and "lower batch.ray" in said
    assert not (tmp_path / "out" / "manifest.jsonl").read_text().strip(), "a stopped video is not recorded"
    if actor_cpus != 64:
        return

    # in flight, a batch that stops moving (its node lost) is said once, and its moving again
    watch = _StallWatch(ray, cfg.batch.ray)
    caplog.clear()
    watch.moved -= _STALL_S + 1
    watch.waiting(ended=False, in_flight=3)
    watch.waiting(ended=False, in_flight=3)
    [said] = [r.getMessage() for r in caplog.records]
    assert said.startswith("no frame and no video's end for 61 s with 3 video(s) in flight: its 1 node(s) have 2 CPU(s)")
    watch.waiting(ended=True, in_flight=2)
    assert caplog.records[-1].getMessage() == "the batch moves again"


def test_a_first_ctrl_c_lets_the_video_begun_finish_and_stops_those_waiting_for_a_cpu(tmp_path):
    """Found reviewing: the videos submitted to Ray but not begun (waiting for a CPU) ran to their end
    after a first Ctrl-C, or were cancelled by a race with their start; each asks the batch first."""
    videos = [encode_clip(tmp_path / f"{name}.mp4", frames=frames) for name, frames in (("a", 24), ("b", 4), ("c", 4))]
    cfg = config(tmp_path / "out", ray={"videos_in_flight": 3})  # 2 CPUs: the model actor's, and one video's
    cfg.model.precision = "fp32"

    def interrupt_once_begun() -> None:  # a's task has made its outputs' folder: it has begun
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list((tmp_path / "out" / ".partial").glob("a.*")):
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_begun, daemon=True).start()
    outcomes, _, stopped_by = run_batch(cfg, [str(v) for v in videos], engine="ray", progress=False)
    assert stopped_by == signal.SIGINT
    assert sorted((o.job.id, o.status) for o in outcomes) == [("a", "done"), ("b", "stopped"), ("c", "stopped")]
    assert [json.loads(line)["id"] for line in (tmp_path / "out" / MANIFEST).read_text().splitlines()] == ["a"]


def test_a_video_done_on_a_node_that_does_not_share_the_output_folder_is_failed_not_done(tmp_path):
    """Found probing two machines: with --out on a worker's own disk, every video was "done", exit 0,
    and the driver's folder held only the manifest; an input only the driver had "did not exist"."""
    from segstream.pipeline.batch import VideoJob, VideoOutcome
    from segstream.pipeline.batch_ray import _seen_from_here

    video = encode_clip(tmp_path / "a.mp4", frames=2)
    job = VideoJob(video, "a")
    (tmp_path / "out" / "b").mkdir(parents=True)
    (tmp_path / "out" / "b" / "frames.jsonl").write_text("{}\n")
    done_there = _seen_from_here(VideoOutcome(job, "done", 2, outputs=["a/frames.jsonl"]), tmp_path / "out", "10.0.0.2")
    assert done_there.status == "failed" and done_there.reason.startswith(
        f"its outputs were written on Ray node 10.0.0.2, and are not in {tmp_path / 'out'} here — the output folder "
        "must be one folder shared at the same path by every node")
    done_here = VideoOutcome(VideoJob(video, "b"), "done", 2, outputs=["b/frames.jsonl"])
    assert _seen_from_here(done_here, tmp_path / "out", "10.0.0.2") is done_here
    missing_there = VideoOutcome(job, "failed", reason=f"source a: '{video}' does not exist")
    assert _seen_from_here(missing_there, tmp_path / "out", "10.0.0.2").reason == (
        f"source a: '{video}' does not exist on Ray node 10.0.0.2, where its task ran, but it does here — the inputs "
        "must be at the same path on every node")


def test_ray_s_version_mismatch_is_one_line_with_what_to_do():
    """Found probing two machines: Ray's five-line message was five `segstream: error:` lines."""
    from segstream.pipeline.batch_ray import _one_line

    said = _one_line(RuntimeError("Version mismatch: The cluster was started with:\n    Ray: 2.54.0\n    Python: 3.11.7\n"
                                  "This process on node 192.0.2.2 was started with:\n    Ray: 2.60.0\n    Python: 3.11.7\n"))
    assert "\n" not in said and said.startswith("Version mismatch: The cluster was started with Ray: 2.54.0; Python: "
                                                "3.11.7; This process on node 192.0.2.2 was started with Ray: 2.60.0")
    assert said.endswith("— install the cluster's Ray and Python versions here (pip install ray==<its version>), or "
                         "start the cluster with this machine's")


def test_a_task_failed_by_its_lost_model_actor_is_told_from_one_failed_by_its_video():
    """Found probing two machines: a node lost with the model actor failed the videos in flight (the
    same command then skipped them); such a video is now done again, a video's own error still fails it."""
    from segstream.pipeline.batch_ray import _actor_lost

    unavailable = ray.exceptions.ActorUnavailableError("the actor's node is gone", None)
    assert _actor_lost(ray, unavailable) and _actor_lost(ray, ray.exceptions.ActorDiedError())
    assert _actor_lost(ray, ray.exceptions.RayTaskError("process_video", "Traceback ...", unavailable))
    assert not _actor_lost(ray, ray.exceptions.RayTaskError("process_video", "Traceback ...", ValueError("bad")))
    assert not _actor_lost(ray, ray.exceptions.WorkerCrashedError())
