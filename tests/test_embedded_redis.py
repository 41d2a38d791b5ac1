"""The embedded Redis of a run that died without stopping it (SIGKILL, the OOM killer) is stopped
by the next embedded start, its files with it; and one that cannot start says why in the error."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from segstream.connectors.embedded_redis import EmbeddedRedis, reap_orphans

REPO = Path(__file__).resolve().parents[1]


def _running(pid: int) -> bool:
    """Alive and not a zombie (the daemonised server's parent, init, reaps it when it likes)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def temp_dir(monkeypatch):
    """Where embedded servers keep their files, for this test alone (and its subprocesses); short,
    as a unix socket's path must be."""
    temp = Path(tempfile.mkdtemp(prefix="embedded-"))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("TMPDIR", str(temp))
    yield temp
    reap_orphans()  # a test that failed after its SIGKILL leaves no redis-server running
    shutil.rmtree(temp, ignore_errors=True)


def test_a_killed_runs_embedded_redis_is_stopped_and_removed_by_the_next_start(tmp_path, temp_dir, caplog):
    # Found probing: each SIGKILLed run left its redis-server running (PPID 1) with its two directories.
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "sources:\n  - {name: cam0, type: synthetic, width: 96, height: 64, fps: 10, num_frames: 100000, realtime: true}\n"
        "model: {device: cpu, precision: fp32}\n"
        "engine: {batch_size: 1, max_wait_ms: 5}\n"
        "ops: {http: null}\n"
    )
    run = subprocess.Popen([sys.executable, "-m", "segstream.pipeline.cli", "run", str(config)],
                           env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
    try:
        for line in run.stderr:
            found = re.search(r"redis-cli -s (\S+)", line)
            if found:
                break
        assert found, f"the run announced no embedded Redis: {line}"
        socket_path = Path(found.group(1))
        pid = int((socket_path.parent / "redis.pid").read_text())
        data_dirs = list(temp_dir.glob("segstream-redis-*"))
        run.send_signal(signal.SIGKILL)
        run.wait()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert _running(pid) and socket_path.exists() and len(data_dirs) == 1, "the killed run's server outlives it"
    caplog.set_level(logging.WARNING, logger="segstream.connectors.embedded_redis")
    with EmbeddedRedis() as fresh:
        assert fresh.client().ping()
        assert not _running(pid) and not socket_path.parent.exists() and not data_dirs[0].exists()
        stopped = [r.getMessage() for r in caplog.records if "left running by a segstream run" in r.getMessage()]
        assert len(stopped) == 1 and f"(pid {pid})" in stopped[0] and f"(pid {run.pid})" in stopped[0]
    assert list(temp_dir.iterdir()) == []


def test_an_embedded_redis_of_a_live_process_is_left_alone(temp_dir):
    with EmbeddedRedis() as first, EmbeddedRedis() as second:
        assert first.client().ping() and second.client().ping() and _running(first.pid)


def test_an_embedded_redis_that_cannot_start_says_why_from_its_log(temp_dir):
    # Found probing: at `ulimit -n 32` the error said only "the redis-server process failed to start".
    limited = ("import resource\n"
               "resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))\n"
               "from segstream.connectors.embedded_redis import EmbeddedRedis\n"
               "from segstream.connectors.errors import SinkError\n"
               "try:\n    EmbeddedRedis()\nexcept SinkError as error:\n    print(error)\n")
    said = subprocess.run([sys.executable, "-c", limited], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert said.stdout.startswith("cannot start the embedded Redis in "), said.stdout + said.stderr
    assert "(its log: Your current 'ulimit -n' of 32 is not enough for the server to start." in said.stdout
    assert said.stdout.rstrip().endswith("— set sinks.redis.url to an external Redis")
    assert list(temp_dir.iterdir()) == []  # neither its directory nor ours is left behind


def test_no_temporary_directory_for_the_embedded_redis_is_one_line_naming_what_needs_it(monkeypatch, tmp_path):
    # Found probing (a read-only container root): the error named no usable temporary directory but
    # not that the embedded Redis, standing in for an unset sinks.redis.url, was what needed one
    from segstream.connectors.errors import SinkError
    from segstream.connectors.redis_sink import RedisPublisher

    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setattr(tempfile, "_candidate_tempdir_list", lambda: [str(tmp_path / "gone")])
    with pytest.raises(SinkError, match=r"^no sinks\.redis\.url set, and the embedded Redis that stands in needs a "
                                        r"writable temporary directory.* set sinks\.redis\.url to your Redis"):
        RedisPublisher.from_config(None, None)
