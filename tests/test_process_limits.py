"""A process/thread limit (a container's pids limit, ``ulimit -u``) is said in one line naming it,
and the run stops cleanly: no traceback, and no decoder's failure blamed on the video.

The limit is real: a pids cgroup the test creates (cgroup v1's pids hierarchy, or v2's root with
the pids controller) and removes. Python's and BLAS's thread pools are pinned to one thread so
the count the pipeline needs does not depend on the machine's cores."""

from __future__ import annotations

import os
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


def _pids_parent() -> Path | None:
    if (V1_PIDS / "cgroup.procs").exists():
        return V1_PIDS
    controls = V2_ROOT / "cgroup.subtree_control"
    if controls.exists() and "pids" in controls.read_text().split():
        return V2_ROOT
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
