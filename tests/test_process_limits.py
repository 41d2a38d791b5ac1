"""A process/thread limit (a container's pids limit, ``ulimit -u``) is said in one line naming it,
and the run stops cleanly: no traceback, and no decoder's failure blamed on the video.

The limit is real: a pids cgroup the test creates (cgroup v1's pids hierarchy, or v2's root with
the pids controller) and removes. Python's and BLAS's thread pools are pinned to one thread so
the count the pipeline needs does not depend on the machine's cores."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from segstream.connectors.errors import THREAD_LIMIT_HINT

V1_PIDS = Path("/sys/fs/cgroup/pids")
V2_ROOT = Path("/sys/fs/cgroup")


def _own_cgroup(controller: str) -> str:
    """This process's cgroup path for ``controller`` ("" for v2's unified one), from /proc/self/cgroup."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers.split(",") == [controller] or (controller == "" and controllers == ""):
            return path.lstrip("/")
    return ""


def _pids_parent() -> Path | None:
    """Our own pids cgroup (the test's group goes under it: the child stays within the job's limits)."""
    if (V1_PIDS / "cgroup.procs").exists():
        return V1_PIDS / _own_cgroup("pids")
    own = V2_ROOT / _own_cgroup("")
    controls = own / "cgroup.subtree_control"
    if controls.exists() and "pids" in controls.read_text().split():
        return own
    return None


@pytest.fixture
def pids_cgroup():
    """A child pids cgroup of our own: ``(path, preexec)`` where ``preexec`` moves a child process into it."""
    parent = _pids_parent()
    if parent is None:
        pytest.skip("no pids cgroup controller here (neither /sys/fs/cgroup/pids nor cgroup v2's pids)")
    group = parent / f"segstream-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
    except OSError as error:
        pytest.skip(f"cannot create a pids cgroup under {parent}: {error}")
    try:
        yield group, lambda: (group / "cgroup.procs").write_text(str(os.getpid()))
    finally:
        for _ in range(50):  # its processes have exited; the kernel frees the group a moment later
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def _one_thread_pools() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_a_pids_limit_on_a_run_is_one_line_naming_it_and_a_clean_exit_1(tmp_path, clip, pids_cgroup):
    # Found probing: pids.max=20 and 6 file sources gave `RuntimeError: can't start new thread`
    # with a traceback from the runtime's thread start.
    group, enter = pids_cgroup
    (group / "pids.max").write_text("20")
    sources = "".join(f"  - {{name: s{i}, type: file, path: '{clip}'}}\n" for i in range(6))
    config = tmp_path / "run.yaml"
    config.write_text(
        "sources:\n" + sources
        + "model: {device: cpu, precision: fp32}\nengine: {threads: 1}\nops: {http: null}\n"
        f"sinks: {{redis: {{enabled: false}}, files: {{enabled: true, dir: '{tmp_path / 'out'}'}}}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "segstream.pipeline.cli", "run", str(config)],
        capture_output=True, text=True, timeout=120, env=_one_thread_pools(), preexec_fn=enter,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "can't start new thread" not in done.stderr, done.stderr
    assert "Resource temporarily unavailable" not in done.stderr, "the limit, not the video, is to blame"
    errors = [line for line in done.stderr.splitlines() if line.startswith("segstream: error: ")]
    assert errors and all(THREAD_LIMIT_HINT in line for line in errors), done.stderr


def test_a_decoder_that_cannot_start_its_threads_names_the_limit_not_the_file(clip, pids_cgroup):
    # Found probing: with pids.max=40, 4 of 6 sources said "reading '.../v1.mp4' failed: Resource
    # temporarily unavailable" of a good file: FFmpeg could not start its slice threads.
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: FFmpeg's decoder starts no threads of its own")
    group, enter = pids_cgroup
    (group / "pids.max").write_text("64")
    # every thread slot the limit leaves is taken first, so the decoder's open is what is refused
    script = textwrap.dedent(f"""
        import threading
        from segstream.connectors.av_input import AVInput
        from segstream.connectors.errors import ResourceLimit
        release = threading.Event()
        while True:
            try:
                threading.Thread(target=release.wait, daemon=True).start()
            except RuntimeError:
                break
        try:
            for _ in AVInput({str(clip)!r}).pictures():
                pass
            print("DECODED")
        except ResourceLimit as error:
            print("LIMIT", error)
        release.set()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env=_one_thread_pools(), preexec_fn=enter)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("LIMIT could not start the decoder's threads for "), done.stdout
    assert str(clip) in done.stdout and THREAD_LIMIT_HINT in done.stdout



def test_a_camera_refused_its_capture_thread_waits_for_room_and_streams_when_there_is(clip, pids_cgroup):
    # Found reviewing: a live source whose capture thread the limit refused at a reconnect failed
    # the whole run, though the limit is shared and has room again once another process exits.
    group, enter = pids_cgroup
    (group / "pids.max").write_text("64")
    script = textwrap.dedent(f"""
        import threading
        from segstream.connectors.live_source import ReconnectPolicy
        from segstream.connectors.pauses import pauses
        from segstream.connectors.stream_source import StreamSource
        pauses.start()  # the process's pause watch, started with its first source
        release = threading.Event()
        while True:  # every thread slot the limit leaves is taken: the capture thread is refused
            try:
                threading.Thread(target=release.wait, daemon=True).start()
            except RuntimeError:
                break
        states = []

        def on_state(state, reason, data):
            states.append((state, reason))
            if state == "reconnecting":
                release.set()  # the slots come free, as when another process ends

        source = StreamSource("dock", {str(clip)!r}, policy=ReconnectPolicy(delay_s=0.2, max_delay_s=0.5))
        source.on_state = on_state
        frame = next(source.frames())
        source.close()
        for state, reason in states:
            print(state, reason)
        print("FRAME", frame.index)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env=_one_thread_pools(), preexec_fn=enter)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("connecting") and lines[-1] == "FRAME 0", done.stdout
    assert any(line.startswith("reconnecting ") and THREAD_LIMIT_HINT in line for line in lines), done.stdout
    assert any(line.startswith("streaming ") for line in lines), done.stdout

def _run(config: Path, cwd: Path | None = None, prefix: tuple[str, ...] = (), preexec=None, **env: str):
    return subprocess.run(
        [*prefix, sys.executable, "-m", "segstream.pipeline.cli", "run", str(config)],
        capture_output=True, text=True, timeout=120, env={**_one_thread_pools(), **env}, cwd=cwd, preexec_fn=preexec,
    )


def _one_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    return done.stderr.strip().splitlines()[-1]


def test_torch_that_cannot_be_mapped_within_ulimit_v_is_one_line_naming_it(tmp_path, clip):
    # Found probing: `ulimit -v` of 3 GB or less gave `ImportError: libtorch_cuda.so: failed to map
    # segment from shared object` with a traceback.
    config = tmp_path / "run.yaml"
    config.write_text(f"sources: [{{name: s, type: file, path: '{clip}'}}]\nmodel: {{device: cpu}}\nops: {{http: null}}\n"
                      f"sinks: {{redis: {{enabled: false}}, files: {{enabled: true, dir: '{tmp_path / 'out'}'}}}}\n")

    def address_space_of_2_gib():
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))

    line = _one_line(_run(config, preexec=address_space_of_2_gib))
    assert line.startswith("segstream: error: could not load lib"), line
    assert "address-space limit (`ulimit -v`: 2048 MiB)" in line and "raise or lift `ulimit -v`" in line


def test_file_descriptors_running_out_is_one_line_naming_ulimit_n(tmp_path, clip):
    # Found probing: `ulimit -n 16`, 6 sources and the files sink gave `OSError: [Errno 24] Too many
    # open files: '.../pycocotools/__init__.py'` with a traceback.
    sources = "".join(f"  - {{name: s{i}, type: file, path: '{clip}'}}\n" for i in range(6))
    config = tmp_path / "run.yaml"
    config.write_text("sources:\n" + sources + "model: {device: cpu, precision: fp32}\nops: {http: null}\n"
                      f"sinks: {{redis: {{enabled: false}}, files: {{enabled: true, dir: '{tmp_path / 'out'}'}}}}\n")

    named = 0
    for limit in (10, 14):  # where the descriptors run out (an import, a file, a write) varies: each is said
        done = _run(config, preexec=lambda limit=limit: resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit)))
        assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr
        named += "too many open files" in done.stderr and "`ulimit -n`" in done.stderr
    assert named, "some of these limits are too low for the run"


def test_no_usable_temporary_directory_is_one_line_saying_what_to_do(tmp_path):
    # Found probing: /tmp full, TMPDIR unwritable and the working directory read-only gave
    # `FileNotFoundError: No usable temporary directory found in [...]` from the embedded Redis.
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here to mount read-only temporary directories in a namespace of the test's own")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here (unshare -m: {probe.stderr.strip()})")
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    mounts = " ".join(f"mount -t tmpfs -o ro,size=64k none {d};" for d in ("/tmp", "/var/tmp", "/usr/tmp", read_only)
                      if Path(d).is_dir())
    config = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"  # an embedded Redis: a temporary directory
    done = _run(config, cwd=read_only, prefix=("unshare", "-m", "sh", "-c", mounts + ' exec "$@"', "sh"),
                TMPDIR=str(read_only / "missing"), SEGSTREAM_REDIS_URL="")
    line = _one_line(done)
    # found probing (a read-only container root): the line now says what needed one, and the way around it
    assert line.startswith("segstream: error: no sinks.redis.url set, and the embedded Redis that stands in needs a "
                           "writable temporary directory"), line
    assert "set sinks.redis.url to your Redis, or TMPDIR to a writable directory" in line
