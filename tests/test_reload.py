"""``ops.reload``: a running ``segstream run`` takes its config file's sources again (``segstream
reload CONFIG``, ``POST /reload``): sources added, removed, restarted, filters changed, mistakes
refused with the run going on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from segstream.models.presets import SYNTHETIC_TINY
from segstream.pipeline.config import PipelineConfig
from segstream.pipeline.reload import plan
from tests.live_servers import free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _config(path: Path, port: int, sources: list[str], extra: str = "", reload: bool = True,
            out: Path | None = None) -> None:
    """Sources as ``name [more keys]``: a synthetic camera unless the keys give a type."""
    # 8 fps: enough frames to see each change within a second, at little CPU (CI's two cores)
    synthetic = "type: synthetic, width: 64, height: 48, fps: 8, num_frames: null, realtime: true"
    lines = "".join(f"  - {{name: {name}, {opts if 'type:' in opts else synthetic + (', ' + opts if opts else '')}}}\n"
                    for name, _, opts in (s.partition(" ") for s in sources))
    path.write_text(
        f"sources:\n{lines}"
        f"model: {{preset: {SYNTHETIC_TINY.name}, device: cpu}}\n"
        f"ops: {{http: '127.0.0.1:{port}', reload: {str(reload).lower()}}}\n"
        f"sinks:\n  redis: {{enabled: false}}\n  files: {{enabled: true, dir: '{out or path.parent / 'out'}'}}\n"
        f"{extra}"
    )


def _entries(path: Path, source: str) -> list[dict]:
    file = path.parent / "out" / f"{source}.jsonl"
    if not file.exists():
        return []
    return [json.loads(line) for line in file.read_text().splitlines() if line.endswith("}")]


def _reload(path: Path, *more: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segstream.pipeline.cli", "reload", str(path), *more],
                          env=ENV if env is None else env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def run(tmp_path):
    """Starts ``segstream run`` on a config; SIGTERM at the end gives (returncode, stderr)."""
    processes = []

    def start(path: Path, env: dict | None = None, *more: str) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-m", "segstream.pipeline.cli", "run", str(path), *more],
                                   env={**ENV, **(env or {})},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _stop(process: subprocess.Popen) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    return process.returncode, err


def test_a_reload_adds_removes_and_refilters_sources_while_the_others_run_on(tmp_path, run):
    port = free_port()
    path = tmp_path / "pipeline.yaml"
    _config(path, port, ["a", "b"])
    process = run(path)
    wait_for(lambda: len(_entries(path, "b")) >= 5 or process.poll() is not None, 120, "b's first entries")
    assert process.poll() is None, process.communicate()

    # a removed, c added, b's filters changed (no segment is that big), the engine changed: not applied,
    # so the reload is partly done: exit 1, saying what was and what takes a restart
    _config(path, port, ["b filters: {min_area: 100000}", "c"], extra="engine: {batch_size: 2}\n")
    done = _reload(path)
    assert done.returncode == 1, done.stderr
    assert done.stdout.strip() == ("reloaded: added c; removed a; new filters for b (0 unchanged); not applied, "
                                   "they take a restart: engine")
    a_at_reload = len(_entries(path, "a"))
    b_at_reload = len(_entries(path, "b"))
    wait_for(lambda: len(_entries(path, "c")) >= 5, 60, "c's first entries")
    wait_for(lambda: len(_entries(path, "b")) >= b_at_reload + 5, 60, "b's entries after the reload")
    assert len(_entries(path, "a")) == a_at_reload, "nothing of a after its removal was written"
    # from its own first frame on (a live camera's frame may be dropped on a loaded machine: counted, not here)
    frames = [int(e["frame"]) for e in _entries(path, "c")]
    assert frames[0] == 0 and frames == sorted(set(frames)), frames
    assert all(json.loads(e["segments"]) == [] for e in _entries(path, "b")[b_at_reload + 2:])

    # a mistake: nothing changes, the run goes on
    _config(path, port, ["b", "c", "d filters: {classes: [no_such_class]}"])
    refused = _reload(path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("segstream: error: reload refused, the run goes on unchanged: ")
    assert "no_such_class" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1

    # a back, under its old name: its frames go on from where they stopped, in a new epoch
    _config(path, port, ["a", "b filters: {min_area: 100000}", "c"])
    again = _reload(path)
    assert again.returncode == 0 and again.stdout.strip() == "reloaded: added a (2 unchanged)", again
    wait_for(lambda: len(_entries(path, "a")) >= a_at_reload + 5, 60, "a's entries after it came back")
    code, err = _stop(process)
    entries = _entries(path, "a")
    frames = [int(e["frame"]) for e in entries]  # a frame dropped under load leaves its gap
    assert frames == sorted(set(frames)) and frames[a_at_reload] > frames[a_at_reload - 1]
    assert {e.get("epoch", "0") for e in entries[:a_at_reload]} == {"0"}
    assert {e.get("epoch", "0") for e in entries[a_at_reload:]} == {"1"}
    assert code == 0, err
    assert "source a ended: removed" in err and "reloaded: added c; removed a" in err
    assert "reload refused, the run goes on unchanged" in err
    assert "a " in err.split("stopped: ")[1] and "(removed)" not in err.split("stopped: ")[1]  # a came back


def test_a_reload_that_changes_or_renames_every_source_keeps_the_run_going(tmp_path, run):
    """Found probing a systemd deployment: a one-camera site's changed setting (or an anchor all
    cameras share) removed every source before adding them again, so the run ended, with exit 0:
    Restart=on-failure left the site down after a routine rollout."""
    port = free_port()
    path = tmp_path / "pipeline.yaml"
    _config(path, port, ["gate"])
    process = run(path)
    wait_for(lambda: len(_entries(path, "gate")) >= 5 or process.poll() is not None, 120, "gate's first entries")
    assert process.poll() is None, process.communicate()
    _config(path, port, ["gate max_fps: 4"])
    done = _reload(path)
    assert (done.returncode, done.stdout.strip()) == (0, "reloaded: restarted gate (0 unchanged)"), done
    at_reload = len(_entries(path, "gate"))
    wait_for(lambda: len(_entries(path, "gate")) >= at_reload + 3 or process.poll() is not None, 60,
             "gate's entries after the reload")
    _config(path, port, ["yard"])
    renamed = _reload(path)
    assert (renamed.returncode, renamed.stdout.strip()) == (0, "reloaded: added yard; removed gate (0 unchanged)")
    wait_for(lambda: len(_entries(path, "yard")) >= 3 or process.poll() is not None, 60, "yard's entries")
    assert process.poll() is None, process.communicate()
    code, err = _stop(process)
    assert code == 0 and "every source of the run has ended" not in err, err


def test_a_sighup_to_a_run_without_a_terminal_reloads_it_as_a_service_s_reload_does(tmp_path):
    """Found probing a systemd deployment: ExecReload=/bin/kill -HUP $MAINPID stopped the site (exit
    0, which Restart=on-failure leaves stopped). A run with no controlling terminal (started in a
    session of its own, as a service is) and reloading on reads its file again on SIGHUP."""
    port = free_port()
    path = tmp_path / "pipeline.yaml"
    _config(path, port, ["a"])
    process = subprocess.Popen([sys.executable, "-m", "segstream", "run", str(path)], env=ENV, text=True,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    try:
        wait_for(lambda: len(_entries(path, "a")) >= 3 or process.poll() is not None, 120, "a's first entries")
        assert process.poll() is None, process.communicate()
        _config(path, port, ["a", "b"])
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: len(_entries(path, "b")) >= 3 or process.poll() is not None, 60, "b's entries")
        assert process.poll() is None, process.communicate()
        code, err = _stop(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert code == 0, err
    assert "SIGHUP: reloading the config" in err and "reloaded: added b (1 unchanged)" in err, err


def test_the_run_checks_a_reloaded_file_with_its_own_environment_and_a_configmap_s_links(tmp_path, run):
    # found probing: segstream reload checked the file with the shell's environment (a camera's
    # password in the service's only); a ConfigMap (files linked into a folder each update
    # replaces) restarted every file source at each reload, and failed it once the old folder went
    port = free_port()
    clip = tmp_path / "clip.mp4"
    from tests.conftest import encode_clip

    encode_clip(clip, frames=40)
    mounted = tmp_path / "cm"
    mounted.mkdir()

    def publish(version: int, sources: list[str]) -> None:  # as the kubelet does: a new folder, ..data swapped
        folder = mounted / f"..v{version}"
        folder.mkdir()
        _config(folder / "pipeline.yaml", port, sources, out=mounted / "out")
        (folder / "clip.mp4").symlink_to(clip)
        (mounted / "..tmp").symlink_to(folder.name)
        (mounted / "..tmp").rename(mounted / "..data")
        for name in ("pipeline.yaml", "clip.mp4"):
            if not (mounted / name).is_symlink():
                (mounted / name).symlink_to(f"..data/{name}")

    video = "vid type: file, path: clip.mp4, loop: true, realtime: true"
    publish(1, [video])
    path = mounted / "pipeline.yaml"
    # found probing a fleet's configs: a --set of sources.N went, at a reload, to whichever source
    # the file then had at N; it is the source that was there at the start's (vid's), by its name
    process = run(path, {"CAMERA_NAME": "lobby"}, "--set", "sources.0.filters.min_area=100000")
    wait_for(lambda: len(_entries(path, "vid")) >= 3 or process.poll() is not None, 120, "vid's first entries")
    assert process.poll() is None, process.communicate()

    # found probing: `segstream reload OTHER.yaml` said "no source changed", the run reading its own
    other = tmp_path / "other.yaml"
    _config(other, port, ["x"])
    refused = _reload(other)
    assert refused.returncode == 1 and f"this run reads {path}, not {other}" in refused.stderr, refused
    # another file here, and a path not here whose name is not the run's file's: one answer (found probing as an
    # attacker: /etc/shadow was refused and a missing path reloaded, telling which paths exist on the run's machine)
    import urllib.error
    import urllib.request

    for asked in ("/etc/passwd", "/no/such/place.yaml"):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/reload?config={asked}", method="POST", data=b"")
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=60)
        said = answer.value.read().decode()
        assert answer.value.code == 409 and f"this run reads {path}, not {asked}" in said, said

    publish(2, ["'${CAMERA_NAME}'", video])  # a variable only the run has; vid second now
    import shutil

    shutil.rmtree(mounted / "..v1")
    done = _reload(path, env={k: v for k, v in ENV.items() if k != "CAMERA_NAME"})
    assert done.returncode == 0 and done.stdout.strip() == "reloaded: added lobby (1 unchanged)", done
    wait_for(lambda: len(_entries(path, "lobby")) >= 3, 60, "lobby's first entries")
    before = len(_entries(path, "vid"))
    wait_for(lambda: len(_entries(path, "vid")) >= before + 5, 60, "vid going on after the old folder went")
    code, err = _stop(process)
    assert code == 0 and "failed" not in err, err


def test_reloading_is_off_unless_the_config_turns_it_on_and_says_so(tmp_path, run):
    port = free_port()
    path = tmp_path / "pipeline.yaml"
    _config(path, port, ["a"], reload=False)
    process = run(path)
    wait_for(lambda: len(_entries(path, "a")) >= 2 or process.poll() is not None, 120, "a's first entries")
    done = _reload(path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "reloading is off: set ops.reload: true in the config" in done.stderr
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/reload", timeout=10)  # a GET
    assert answer.value.code == 405
    code, err = _stop(process)
    assert code == 0, err


def test_reload_with_no_run_listening_says_so(tmp_path):
    path = tmp_path / "pipeline.yaml"
    _config(path, free_port(), ["a"])
    done = _reload(path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "no segstream run answers at http://127.0.0.1:" in done.stderr and "is it running" in done.stderr
    bad = _reload(path, "--ops", "nowhere")
    assert bad.returncode == 2 and "--ops: 'nowhere' is not host:port" in bad.stderr


def test_reload_told_another_server_s_address_says_it_is_no_run_in_one_line(tmp_path):
    # found probing bad input: a web server's 501 page was printed, one 'segstream: error:' per line of its HTML
    import http.server
    import threading

    path = tmp_path / "pipeline.yaml"
    _config(path, free_port(), ["a"])
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler) as web:
        threading.Thread(target=web.serve_forever, daemon=True).start()
        done = _reload(path, "--ops", f"127.0.0.1:{web.server_address[1]}")
        web.shutdown()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"segstream: error: what answers at http://127.0.0.1:{web.server_address[1]}/reload is "
                           "no segstream run (HTTP 501, text/html, ") and line.endswith("with --ops HOST:PORT"), line


def test_reload_gives_up_after_its_timeout_and_says_the_reload_may_go_on(tmp_path):
    # a script's reload waited the run's whole 90 s: a listener that takes the request and never answers
    import socket
    import time

    path = tmp_path / "pipeline.yaml"
    with socket.create_server(("127.0.0.1", 0)) as silent:
        _config(path, silent.getsockname()[1], ["a"])
        started = time.monotonic()
        done = _reload(path, "--timeout", "1.5")
        took = time.monotonic() - started
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "did not answer within 1.5 s: a run there may be applying the reload still" in done.stderr
    assert took < 30  # not the default 90 s
    bad = _reload(path, "--timeout", "0")
    assert bad.returncode == 2 and "--timeout: must be a number of seconds above 0, got 0" in bad.stderr
    endless = _reload(path, "--timeout", "1e10")  # found reviewing: the socket's timeout raised OverflowError
    assert endless.returncode == 2 and "1e10 s is longer than any wait segstream can keep" in endless.stderr


def test_a_plan_names_what_changes(tmp_path):
    def cfg(sources, **more):
        return PipelineConfig.model_validate({"sources": [
            {"name": name, "type": "synthetic", **opts} for name, opts in sources], **more})

    running = cfg([("a", {}), ("b", {"seed": 1}), ("c", {}), ("d", {})])
    new = cfg([("b", {"seed": 2}), ("c", {"filters": {"min_score": 0.9}}), ("d", {}), ("e", {})],
              sinks={"files": {"enabled": True}})
    changes = plan(running, new)
    assert [s.name for s in changes.added] == ["e"] and changes.removed == ["a"]
    assert [s.name for s in changes.restarted] == ["b"] and changes.refiltered == ["c"]
    assert changes.not_applied == ["sinks"]
    # the top-level filters change every source's that has none of its own
    assert plan(running, cfg([("a", {}), ("b", {"seed": 1}), ("c", {}), ("d", {})],
                             filters={"min_area": 5})).refiltered == ["a", "b", "c", "d"]


def test_a_reload_checks_new_weights_as_validate_does_and_sees_a_checkpoint_replaced_on_disk(tmp_path):
    """Found probing: a corrupt checkpoint, one of another architecture or class count passed a
    reload ("not applied, they take a restart: model") and then the restart failed; a checkpoint
    replaced in place was "reloaded: no source changed", nothing said of the model."""
    import shutil

    from safetensors.torch import save_file

    from segstream.connectors.checkpoints import read_state_dict, shipped_weights
    from segstream.pipeline.cli import build_runtime
    from segstream.pipeline.config import load_config
    from segstream.pipeline.reload import Reloader
    from tests.conftest import ColourSegmenter

    weights = tmp_path / "model.safetensors"
    shutil.copy(shipped_weights(SYNTHETIC_TINY.weights), weights)
    config = tmp_path / "site.yaml"

    def write(checkpoint: Path) -> None:
        config.write_text("sources: [{name: cam, type: synthetic, width: 64, height: 48, num_frames: 1}]\n"
                          f"model: {{preset: {SYNTHETIC_TINY.name}, checkpoint: '{checkpoint}', device: cpu}}\n"
                          "sinks: {redis: {enabled: false}}\nops: {http: null}\n")

    write(weights)
    cfg = load_config(config)
    runtime = build_runtime(cfg, progress=False, adapter=ColourSegmenter())
    reload = Reloader(runtime, cfg, lambda: load_config(config), config)
    assert reload() == (True, "reloaded: no source changed (1 unchanged)")

    state = read_state_dict(weights)
    other_classes = {**state, "class_head.weight": state["class_head.weight"][:4].clone(),
                     "class_head.bias": state["class_head.bias"][:4].clone()}
    save_file(other_classes, str(tmp_path / "three.safetensors"))
    (tmp_path / "cut.safetensors").write_bytes(weights.read_bytes()[:100_000])
    for broken, said in (("three.safetensors", "does not fit preset synthetic_eomt_tiny_256"),
                         ("cut.safetensors", "is truncated")):
        write(tmp_path / broken)
        applied, line = reload()
        assert not applied and line.startswith("reload refused, the run goes on unchanged: model.checkpoint: "), line
        assert said in line and "\n" not in line, line

    write(weights)
    retrained = {**state, "q.weight": state["q.weight"] + 0.01}
    save_file(retrained, str(weights))  # in place, under the same name
    applied, line = reload()
    assert not applied and line == (f"reloaded: no source changed (1 unchanged); not applied, they take a restart: "
                                    f"model (its checkpoint {weights} changed on disk since the run read it)")
    retrained["q.weight"][0, 0] = float("nan")
    save_file(retrained, str(weights))
    applied, line = reload()
    assert not applied and "changed on disk, and checkpoint" in line and "NaN or infinite" in line, line
