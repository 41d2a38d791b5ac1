"""SIGTERM / Ctrl-C on the real CLI running the real model: drain and exit 0, or abort on a second."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from safetensors.torch import save_file

from segstream.models.eomt import EoMT
from segstream.models.presets import SYNTHETIC_TINY

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """Untrained weights of the shipped preset: shutdown does not care what the model predicts."""
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in EoMT(SYNTHETIC_TINY.config).state_dict().items()}, str(path))
    return path


def start_pipeline(tmp_path: Path, clip: Path, checkpoint: Path, source: str,
                   options: tuple[str, ...] = ()) -> tuple[subprocess.Popen, Path]:
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"sources:\n  - {{name: cam0, type: file, path: '{clip}', loop: true, {source}}}\n"
        f"model: {{preset: {SYNTHETIC_TINY.name}, checkpoint: '{checkpoint}', device: cpu}}\n"
        "engine: {batch_size: 1}\n"
        "ops: {http: '127.0.0.1:0'}\n"  # endpoints on a free port: other test files run beside this one
        "sinks:\n  redis: {enabled: false}\n  files: {enabled: true, dir: out}\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "segstream.pipeline.cli", "run", str(config), *options],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    output = tmp_path / "out" / "cam0.jsonl"
    deadline = time.monotonic() + 120
    while not (output.exists() and len(output.read_text().splitlines()) >= 3):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"pipeline did not start publishing: {process.communicate()[1]}")
        time.sleep(0.2)
    return process, output


def test_sigterm_drains_and_exits_zero(tmp_path, clip, checkpoint):
    process, output = start_pipeline(tmp_path, clip, checkpoint, "realtime: true")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "Traceback" not in err
    # found reviewing: the summary alone had no "segstream: " (the status lines and the signal's line had)
    assert all(line.startswith("segstream: ") for line in err.splitlines()), err
    # the runtime refuses to report unless decoded == published + dropped
    published = int(re.search(r"segstream: stopped: (\d+) frames published", err).group(1))
    assert published == len(output.read_text().splitlines()) >= 3



def test_one_stop_sent_twice_at_once_drains_as_one(tmp_path, clip, checkpoint):
    # Found probing: under `timeout 60 segstream run ...` the run aborted instead of draining: GNU
    # timeout sends its signal to the command and then to its own process group, the command too.
    # Sent back to back the kernel merges the two; timeout's second comes as the first is handled.
    process, output = start_pipeline(tmp_path, clip, checkpoint, "realtime: true")
    os.kill(process.pid, signal.SIGTERM)
    said = []
    while not (said and "SIGTERM: stopping" in said[-1]):
        said.append(process.stderr.readline())
        assert said[-1], "".join(said)
    os.kill(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    err = "".join(said) + err
    assert process.returncode == 0 and "aborted" not in err, err
    assert "segstream: stopped: " in err


def test_second_interrupt_aborts_with_130_and_counts_the_frames_it_abandoned(tmp_path, clip, checkpoint):
    # an offline source with a deep queue leaves seconds of frames to drain after the first Ctrl-C
    process, output = start_pipeline(tmp_path, clip, checkpoint, "queue_size: 256")
    time.sleep(1)  # the decoder fills the queue (a loaded machine once had 16 frames in it at 0.3 s)
    process.send_signal(signal.SIGINT)
    time.sleep(0.3)  # the first one handled (and SAME_SIGNAL_S past), the drain of up to 256 frames under way, not over
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "segstream: aborted" in err
    # nothing lost silently, an abort included: every decoded frame is published, dropped or
    # said to be abandoned (found probing: the frames an abort left in the engine were counted nowhere)
    line = re.search(r"segstream: aborted: (\d+) frames published .*?, (\d+) dropped(?:, (\d+) abandoned in flight)?.*"
                     r"cam0 (\d+)/(\d+)", err)
    assert line, err
    published, dropped, abandoned, _, decoded = (int(n or 0) for n in line.groups())
    assert abandoned > 0 and published + dropped + abandoned == decoded, line.group(0)
    assert len(output.read_text().splitlines()) == published


def test_with_json_logs_the_lines_signals_bring_are_json_too(tmp_path, clip, checkpoint):
    """Log shippers read every stderr line as JSON (found probing: the signal lines were text)."""
    # as the test above: a deep queue, the second signal 0.3 s after the first, while the drain runs
    # (CI once drained 64 frames in 0.36 s, and a SIGTERM during the interpreter's exit is SIG_DFL's)
    process, _ = start_pipeline(tmp_path, clip, checkpoint, "queue_size: 256", ("--log-format", "json"))
    time.sleep(1)  # the decoder fills the queue
    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err  # found probing: a second SIGTERM exited 130, Ctrl-C's status
    lines = [json.loads(line) for line in err.strip().splitlines()]  # each one JSON
    messages = [line["message"] for line in lines]
    assert "SIGTERM: stopping, draining queued frames (SIGTERM again aborts)" in messages and "aborted" in messages
    # found probing: the signal lines and the first (the endpoints') had no run_id to filter a log by
    assert len({line.get("run_id") for line in lines}) == 1 and lines[0]["run_id"], lines


def test_sighup_drains_and_exits_zero(tmp_path, clip, checkpoint):
    """A closed terminal or SSH session sends SIGHUP (found probing: it killed a run on the spot,
    undrained, no line, no `ended` events)."""
    process, output = start_pipeline(tmp_path, clip, checkpoint, "realtime: true")
    process.send_signal(signal.SIGHUP)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "segstream: SIGHUP: stopping, draining queued frames (SIGHUP again aborts)" in err
    published = int(re.search(r"stopped: (\d+) frames published", err).group(1))
    assert published == len(output.read_text().splitlines()) >= 3


def test_under_nohup_a_sighup_is_ignored_as_nohup_means(tmp_path, clip, checkpoint):
    """Found in review: the SIGHUP handler replaced nohup's SIG_IGN, so `nohup segstream run` ended at logout."""
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"sources:\n  - {{name: cam0, type: file, path: '{clip}', loop: true, realtime: true}}\n"
        f"model: {{preset: {SYNTHETIC_TINY.name}, checkpoint: '{checkpoint}', device: cpu}}\n"
        "engine: {batch_size: 1}\nops: {http: null}\n"
        "sinks:\n  redis: {enabled: false}\n  files: {enabled: true, dir: out}\n"
    )
    process = subprocess.Popen(["nohup", sys.executable, "-m", "segstream.pipeline.cli", "run", str(config)],
                               cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    output = tmp_path / "out" / "cam0.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not (output.exists() and len(output.read_text().splitlines()) >= 3):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1]
            time.sleep(0.2)
        process.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert process.poll() is None  # still running
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0 and "SIGHUP" not in err, err


def test_sighup_with_its_terminal_gone_still_drains(tmp_path, clip, checkpoint):
    """Its terminal gone, every write to stderr fails (EIO): found probing, the first status
    line or the summary raised, and the run ended with 1, undrained."""
    import pty

    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"sources:\n  - {{name: cam0, type: file, path: '{clip}', loop: true, realtime: true}}\n"
        f"model: {{preset: {SYNTHETIC_TINY.name}, checkpoint: '{checkpoint}', device: cpu}}\n"
        "engine: {batch_size: 1}\nops: {http: null, status_interval_s: 0.2}\n"
        "sinks:\n  redis: {enabled: false}\n  files: {enabled: true, dir: out}\n"
    )
    terminal, its_end = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "segstream.pipeline.cli", "run", str(config)], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=its_end, stdout=its_end, stderr=its_end,
        start_new_session=True,
    )
    os.close(its_end)
    output = tmp_path / "out" / "cam0.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not (output.exists() and len(output.read_text().splitlines()) >= 3):
            assert process.poll() is None and time.monotonic() < deadline, "the run did not start publishing"
            try:
                os.read(terminal, 65536)  # the terminal reads what the run says, until it goes
            except OSError:
                pass
            time.sleep(0.1)
    finally:
        os.close(terminal)  # the terminal goes away
    process.send_signal(signal.SIGHUP)
    assert process.wait(timeout=60) == 0
    frames = [json.loads(line)["frame"] for line in output.read_text().splitlines()]
    assert len(frames) >= 3 and frames == [str(i) for i in range(len(frames))]  # in order, none missing


def wait_for_stop_handlers(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """Until the console command has put its stop handlers in (first thing it does: /proc says
    SIGTERM is caught, which Python does not do by itself). Before that the interpreter is still
    starting, where a KeyboardInterrupt's traceback is Python's (a busy CI machine took more than
    the 0.1 s these tests waited to get there)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        status = Path(f"/proc/{process.pid}/status").read_text()
        caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.M).group(1), 16)
        if caught & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.005)
    raise AssertionError("the command never put its stop handlers in")


# after Python's own start-up: while the CLI loads, while it parses, while `validate` loads torch
@pytest.mark.parametrize("delay_s", [0.0, 0.15, 0.6])
def test_ctrl_c_while_the_command_starts_up_ends_without_a_traceback(delay_s):
    """An interrupt while modules load ends the command quietly with 130 (found probing: a
    KeyboardInterrupt traceback in the first 0.2 s; then, in CI, one while argparse built the
    parser; probing further, numpy's "cannot load module more than once" after an interrupted
    import, and an abort inside torch's C++ start-up)."""
    command = Path(sys.executable).with_name("segstream")
    process = subprocess.Popen([str(command), "validate", str(Path(__file__).parents[1] / "configs" / "demo.yaml")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_stop_handlers(process)
    time.sleep(delay_s)
    assert process.poll() is None, "validate ended before the interrupt: the test tests nothing"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert "Traceback" not in err, err
    if process.returncode == 0:  # the signal came as the interpreter finished its work
        assert out.startswith("ok:"), (out, err)
    else:
        assert process.returncode == 130 and "segstream: aborted" in err, (process.returncode, err)


# while the CLI loads, while torch loads, and (2.5 s) the run's own handler before the run begins; and
# with segstream's own options before the command (found by a CLI fix: `segstream --log-format json run`
# was not taken for a run, and the stop aborted it)
@pytest.mark.parametrize(("signum", "delay_s", "before"), [(signal.SIGINT, 0.0, ()), (signal.SIGTERM, 1.0, ()),
                                                          (signal.SIGINT, 2.5, ()),
                                                          (signal.SIGTERM, 1.0, ("--log-format", "json"))])
def test_a_stop_while_run_starts_up_is_a_clean_stop_not_an_abort(tmp_path, signum, delay_s, before):
    """Found probing 48 sources: a supervisor's SIGTERM 1.5 s after `segstream run` started exited
    143 (Ctrl-C 130, "aborted while loading its modules"), though nothing had run; the same stop at 4 s
    exited 0. README: a run's first stop signal drains and exits 0."""
    config = tmp_path / "pipeline.yaml"
    config.write_text("sources:\n  - {name: cam0, type: synthetic, num_frames: 400, fps: 20, realtime: true}\n"
                      "model: {device: cpu}\nsinks:\n  redis: {enabled: false}\n  files: {enabled: true, dir: out}\n"
                      "ops: {http: null}\n")
    command = Path(sys.executable).with_name("segstream")
    process = subprocess.Popen([str(command), *before, "run", str(config)], cwd=tmp_path, stderr=subprocess.PIPE,
                               text=True)
    wait_for_stop_handlers(process)
    time.sleep(delay_s)
    assert process.poll() is None, "the run ended before the signal: the test tests nothing"
    process.send_signal(signum)
    time.sleep(0.02)  # found reviewing: the same signal again at once (GNU timeout: its command, then its group)
    process.send_signal(signum)
    err = process.communicate(timeout=60)[1]
    assert process.returncode == 0, err
    assert "Traceback" not in err and "aborted" not in err, err
    assert "stopped before the run began" in err or "stopped" in err.splitlines()[-1], err


def test_a_stop_that_torch_turned_into_an_error_of_its_own_while_the_model_loads_is_a_clean_stop(tmp_path):
    """Found by CI: SIGINT while the checkpoint was being read raised inside torch's C code, which
    made its own error of it ("could not determine the shape of object type ..."): the run said the
    shipped checkpoint could not be read and exited 1. Here a build catches the stop as torch did."""
    program = textwrap.dedent("""
        import os, signal, time
        from segstream.connectors.errors import CheckpointError
        from segstream.pipeline import model_factory
        from segstream.pipeline.cli import run_pipeline
        from segstream.pipeline.config import validate_config

        def build_segmenter(*args, **kwargs):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
            except BaseException as error:
                raise CheckpointError(f"checkpoint cannot be read ({error!r})") from None

        model_factory.build_segmenter = build_segmenter
        cfg = validate_config({"sources": [{"name": "cam0", "type": "synthetic", "num_frames": 5}],
                               "sinks": {"redis": {"enabled": False}}, "ops": {"http": None}})
        print("report:", run_pipeline(cfg, progress=False))
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "report: None", (done.stdout, done.stderr)


def test_a_program_s_interrupt_inside_an_import_of_the_model_s_build_waits_for_it_and_stops(tmp_path):
    """Found probing from a notebook: an interrupt while the model's modules loaded ended the
    kernel (os._exit(130), the console command's way); a program calling segstream lives on, so the
    stop waits for the import to finish and the build then stops as before the run."""
    (tmp_path / "slow_module.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(0.3)\nloaded = True\n")
    program = textwrap.dedent("""
        import sys, time
        from segstream.pipeline.cli import _DrainOnSignal, _StoppedBeforeRun
        with _DrainOnSignal() as signals:
            try:
                with signals.at_once():
                    import slow_module
                    started = time.monotonic()
                    while time.monotonic() - started < 5:  # the rest of the build (weights, compile): not waited for
                        sum(range(1000))
                    print("built")
                print("not stopped")
            except _StoppedBeforeRun:
                print("stopped after the import:", sys.modules["slow_module"].loaded)
        print("lives on")
    """)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": f"{REPO}:{tmp_path}"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["stopped after the import: True", "lives on"]
    assert time.monotonic() - started < 4.5  # stopped at the import's end, not the build's (review)
    assert "SIGINT: stopping once the modules being loaded are" in done.stderr


def test_a_program_s_interrupt_during_torch_s_first_import_comes_once_the_import_is_whole(tmp_path):
    """Found probing from a notebook: a Ctrl-C during the first run's import of torch left torch
    half-loaded, and every later run failed until the kernel restarted."""
    (tmp_path / "slow_module.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(0.3)\nloaded = True\n")
    program = textwrap.dedent("""
        import signal, sys
        # a notebook kernel's Ctrl-C handler: a test run in the background inherits SIGINT ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from segstream.pipeline.cli import whole_imports
        try:
            with whole_imports():
                import slow_module
        except KeyboardInterrupt:
            print("interrupted after the import:", sys.modules["slow_module"].loaded)
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": f"{REPO}:{tmp_path}"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["interrupted after the import: True"]


def test_a_stop_while_the_model_loads_says_the_run_never_began(tmp_path):
    """Found probing: SIGINT while the model was being built ended with exit 0 and not a word, as if
    the run had finished with nothing to do, and only once the model was built (a published
    architecture's weights take minutes): the build now stops where it is."""
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "sources:\n  - {name: cam0, type: synthetic, num_frames: 10}\n"
        # a published architecture's random weights take seconds to make: the window for the signal
        "model: {preset: coco_panoptic_eomt_small_640_2x, checkpoint: random, device: cpu}\n"
        "sinks:\n  redis: {enabled: false}\n  files: {enabled: true, dir: out}\nops: {http: null}\n"
    )
    process = subprocess.Popen([sys.executable, "-m", "segstream.pipeline.cli", "run", str(config)], cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
    first = process.stderr.readline()
    assert "runs with random weights" in first, first  # said as the model starts being built
    process.send_signal(signal.SIGINT)
    err = first + process.stderr.read()
    assert process.wait(timeout=60) == 0, err
    assert "Traceback" not in err
    lines = err.splitlines()
    # stopped in the build ("draining queued frames" is said when the stop waits for the build's end)
    assert lines[-2:] == ["segstream: SIGINT: stopping",
                          "segstream: stopped before the run began: no frame was read, nothing was published"], err
    assert not (tmp_path / "out" / "cam0.jsonl").exists()


def test_sigterm_to_bench_aborts_it_and_stops_its_embedded_redis():
    """Found probing: SIGTERM killed `segstream bench` on the spot, silently, and its embedded Redis
    ran on (its parent gone) with its folder left behind; Ctrl-C cleaned up."""
    command = Path(sys.executable).with_name("segstream")
    process = subprocess.Popen([str(command), "bench", str(REPO / "configs" / "demo.yaml"), "--frames", "5000",
                                "--set", "model.device=cpu", "--set", "ops.http=null"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    while not any("redis-cli -s " in line for line in lines):
        line = process.stderr.readline()
        assert line, "".join(lines)
        lines.append(line)
    socket_path = next(line for line in lines if "redis-cli -s " in line).split("redis-cli -s ")[1].split()[0]
    assert subprocess.run(["pgrep", "-f", socket_path], capture_output=True).returncode == 0, "its Redis runs"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "segstream: aborted" in err and "Traceback" not in err
    assert subprocess.run(["pgrep", "-f", socket_path], capture_output=True).returncode == 1, "its Redis stopped"
    assert not Path(socket_path).parent.exists()


def test_a_finished_command_leaves_the_interpreter_no_last_garbage_collection_to_walk():
    # Measured: 1.4-1.7 s between a run's summary line and its exit, the interpreter's last
    # collection walking every object torch's import made (docs/BENCHMARKS.md, "Exit").
    script = ("import gc, sys\n"
              "sys.argv = ['segstream', 'validate', sys.argv[1]]\n"
              "from segstream.pipeline.entry import main\n"
              "code = main()\n"
              "print(code, 'torch' in sys.modules, gc.get_freeze_count())\n")
    done = subprocess.run([sys.executable, "-c", script, str(REPO / "configs" / "demo.yaml")], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    code, torch_loaded, frozen = done.stdout.split()[-3:]
    assert code == "0" and torch_loaded == "True" and int(frozen) > 100_000, done


def test_after_a_drained_stop_another_stop_signal_is_no_abort():
    # Found by release QA: a second Ctrl-C 0.15 s after the first, as the drain ended, made a whole
    # run's exit "aborted" (130): the handlers were back to Python's once the run returned.
    from segstream.pipeline import entry
    from segstream.pipeline.cli import _DrainOnSignal

    before = {signum: signal.getsignal(signum) for signum in entry.stop_signals()}
    try:
        entry.console = True  # as entry.main sets it
        with _DrainOnSignal() as drain:
            os.kill(os.getpid(), signal.SIGTERM)  # the stop: the run drains and returns
            time.sleep(0.05)
        assert drain.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # the rest of the exit is not cut short
        with _DrainOnSignal():
            pass
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # no stop: the handlers as they were
    finally:
        entry.console = False
        for signum, handler in before.items():  # all of them: SIGINT left ignored broke a later test's Ctrl-C
            signal.signal(signum, handler)


def test_a_program_whose_run_a_signal_stopped_gets_its_own_handlers_back():
    # Found probing (a service embedding segstream): after run_pipeline drained on a SIGTERM, the
    # process ignored SIGINT, SIGTERM and SIGHUP for good; the service could no longer be stopped.
    from segstream.pipeline.cli import _DrainOnSignal

    def mine(signum, frame):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        with _DrainOnSignal() as drain:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert drain.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("thread", ["daemon", "executor"])
def test_a_program_that_exits_while_its_run_goes_on_drains_it(tmp_path, thread):
    # Found probing (a service embedding segstream): leaving the program with a run on a thread of
    # its own was killed with SIGABRT ("terminate called without an active exception"); on an
    # executor's thread the exit hung for good.
    script = tmp_path / "leave.py"
    script.write_text(textwrap.dedent(f"""
        import threading, time
        from concurrent.futures import ThreadPoolExecutor
        import segstream
        cfg = segstream.load_config({{
            "sources": [{{"name": "cam", "type": "synthetic", "width": 64, "height": 48, "fps": 20,
                          "num_frames": 100000, "realtime": True}}],
            "model": {{"device": "cpu", "precision": "fp32"}},
            "sinks": {{"redis": {{"enabled": False}}, "files": {{"enabled": True, "dir": {str(tmp_path / "out")!r}}}}},
            "ops": {{"http": None}},
        }})
        runtime = segstream.build_runtime(cfg, progress=False)
        if {thread!r} == "daemon":
            threading.Thread(target=runtime.run, daemon=True).start()
        else:
            ThreadPoolExecutor(1).submit(runtime.run)
        time.sleep(2)
        print("leaving", flush=True)
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and done.stdout == "leaving\n", (done.returncode, done.stderr[-2000:])
    assert "still run: stopping them" in done.stderr and "terminate called" not in done.stderr
    events = [json.loads(line) for line in (tmp_path / "out" / "cam.events.jsonl").read_text().splitlines()]
    states = [json.loads(e["data"])["state"] for e in events if e["event"] == "state"]
    assert states[-1] == "ended", "drained: the source's end was written"


@pytest.mark.parametrize(("argv", "env"), [(["segstream", "--log-format", "JSON", "run", "x.yaml"], None),
                                           (["segstream", "run", "x.yaml"], "json"),
                                           (["segstream", "--log-format", "text", "--log-format=json", "run"], "text")])
def test_a_line_said_before_the_logs_module_is_loaded_is_json_where_json_logs_are_asked_for(monkeypatch, argv, env):
    # found probing as a platform engineer: a SIGTERM 0.7 s into a pod's start wrote
    # "segstream: SIGTERM: stopping once the command has started" among JSON lines
    import json

    from segstream.pipeline import entry

    monkeypatch.delitem(sys.modules, "segstream.pipeline.logs")
    monkeypatch.setattr(sys, "argv", argv)
    if env is None:
        monkeypatch.delenv("SEGSTREAM_LOG_FORMAT", raising=False)
    else:
        monkeypatch.setenv("SEGSTREAM_LOG_FORMAT", env)
    record = json.loads(entry._line('SIGTERM: stopping "now" \\ (é)', "WARNING"))
    assert record["message"] == 'SIGTERM: stopping "now" \\ (é)' and record["level"] == "WARNING"
    assert record["logger"] == "segstream.cli" and record["time"].endswith("+00:00")
    # as the command line's parser reads it: the last --log-format wins over the environment
    monkeypatch.setattr(sys, "argv", ["segstream", "--log-format", "text", "run", "x.yaml", "--", "--log-format=json"])
    monkeypatch.setenv("SEGSTREAM_LOG_FORMAT", "json")
    assert entry._line("stopping", "WARNING") == b"segstream: stopping\n"


class _HangsOnClose:
    """A sink whose close() does not return (a webhook's last request with no timeout)."""

    name = "hanger"

    def __init__(self):
        import threading

        self.closing, self.release = threading.Event(), threading.Event()
        self.closes = 0

    def publish(self, result): pass
    def publish_event(self, event): pass
    def poll(self): return None
    def flush(self): pass

    def close(self):
        self.closes += 1
        self.closing.set()
        self.release.wait(60)


def test_a_sink_whose_close_hangs_is_said_and_a_second_interrupt_ends_the_run_without_it(monkeypatch, caplog):
    # found probing as a plugin author: the run outlived a second Ctrl-C (the abort closed the sinks
    # again on the main thread, and that close hung too), its status line repeating, nothing said
    import _thread
    import logging
    import threading

    from segstream.connectors.synthetic import SyntheticSource
    from segstream.pipeline import runtime as runtime_module
    from segstream.pipeline.metrics import RunMetrics
    from tests.conftest import ColourSegmenter

    monkeypatch.setattr(runtime_module, "SINK_CLOSE_SAY_S", 0.5)
    monkeypatch.setattr(runtime_module, "SOURCE_CLOSE_GRACE_S", 1.0)
    caplog.set_level(logging.WARNING, logger="segstream.runtime")
    sink = _HangsOnClose()
    runtime = runtime_module.Runtime([SyntheticSource("cam0", 64, 48, 25.0, 0, 3)], ColourSegmenter(), [sink],
                                     batch_size=1, metrics=RunMetrics(), progress=None)

    def second_interrupt() -> None:  # once the wait for the sink has been said
        deadline = time.monotonic() + 30
        while not any("waiting for sink hanger to close" in r.getMessage() for r in caplog.records):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        _thread.interrupt_main()

    # Python's own Ctrl-C handler (a test before this one in the worker, Ray's, may have left another,
    # and interrupt_main then brings no KeyboardInterrupt: tests/test_result_feed.py saw it too)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=second_interrupt, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            runtime.run()
        ended = time.monotonic()
        said = [r.getMessage() for r in caplog.records]
        assert any("waiting for sink hanger to close" in m and "a second stop signal (Ctrl-C twice) ends the run" in m for m in said)
        assert any("sink hanger did not close (its close() has not returned); the run ends without it" in m
                   for m in said), said
        assert sink.closes == 1, "not closed again under the thread stuck in it"
        assert time.monotonic() - ended < 1.0
    finally:
        sink.release.set()
        signal.signal(signal.SIGINT, previous)
