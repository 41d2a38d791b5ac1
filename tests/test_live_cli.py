"""The real CLI with live sources, as separate processes: SIGTERM while a camera is still being
opened, a run in which a camera fails, and credentials that must never show anywhere."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segstream.connectors.embedded_redis import EmbeddedRedis
from segstream.models.presets import SYNTHETIC_TINY
from tests.live_servers import RtspCamera, SilentServer, wait_for

REPO = Path(__file__).resolve().parents[1]


def _start(config: Path, cwd: Path, tmpdir: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "segstream.pipeline.cli", "run", str(config)],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmpdir), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _processes_in(folder: Path) -> list[str]:
    """Commands of the processes that run in ``folder`` or name it (the embedded redis-server
    runs in its temporary directory)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            where = os.readlink(proc / "cwd")
        except OSError:
            continue
        if str(folder) in command or where.startswith(str(folder)):
            found.append(command)
    return found


def test_sigterm_while_a_camera_is_still_opening_exits_long_before_the_open_timeout_and_leaves_nothing_behind(tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    with SilentServer() as camera:
        config = tmp_path / "pipeline.yaml"
        config.write_text(
            f"sources:\n  - {{name: gate, type: stream, url: 'rtsp://127.0.0.1:{camera.port}/cam', open_timeout_s: 60}}\n"
            f"model: {{preset: {SYNTHETIC_TINY.name}, device: cpu}}\n"
            "ops: {http: null}\n"  # not the default port: other test files run beside this one
            "sinks:\n  redis: {url: null}\n"  # an embedded redis-server, in TMPDIR
        )
        process = _start(config, tmp_path, tmpdir)
        try:
            wait_for(lambda: camera.connections or process.poll() is not None, 120, "the camera to be dialled")
            assert process.poll() is None, process.communicate()
            assert _processes_in(tmpdir), "the embedded redis-server must be running for this test"
            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            out, err = process.communicate(timeout=30)
            took = time.monotonic() - signalled
        finally:
            if process.poll() is None:
                process.kill()
    assert took < 10.0, took  # the open timeout is 60 s; a stop that waited for it would take that long
    assert process.returncode == 0, err
    assert "Traceback" not in err and "segstream: stopped: 0 frames published" in err
    assert "source gate connecting" in err and "source gate ended: stopped" in err
    assert _processes_in(tmpdir) == []  # no redis-server left
    assert list(tmpdir.iterdir()) == []  # no temporary directory left


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


def test_a_password_never_appears_in_output_logs_entries_or_events(tmp_path, redis_server):
    user, password, wrong, token = "camuser7", "Sup3rS3cretPw", "Wr0ngPa55word", "T0kenValue9"
    with RtspCamera(tmp_path, user=user, password=password) as camera:
        config = tmp_path / "pipeline.yaml"
        good = camera.url(user, "${CAM_PASSWORD}", path=f"cam?token={token}")
        bad = camera.url(user, wrong)
        config.write_text(
            "sources:\n"
            f"  - {{name: good, type: stream, url: '{good}', open_timeout_s: 10}}\n"
            f"  - {{name: bad, type: stream, url: '{bad}', max_reconnects: 1, reconnect_delay_s: 0.2}}\n"
            f"model: {{preset: {SYNTHETIC_TINY.name}, device: cpu}}\n"
            "engine: {batch_size: 2}\n"
            "ops: {http: null}\n"  # not the default port: other test files run beside this one
            f"sinks:\n  redis: {{url: '{redis_server.url}'}}\n  files: {{enabled: true, dir: out}}\n"
        )
        process = subprocess.run(
            [sys.executable, "-m", "segstream.pipeline.cli", "run", str(config), "--max-frames", "75"],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "CAM_PASSWORD": password},
            capture_output=True, text=True, timeout=180,
        )
    # a camera that failed: exit 1, and the run says which and why
    assert process.returncode == 1, process.stderr
    assert "segstream: error: source bad failed: " in process.stderr and "401 Unauthorized" in process.stderr
    assert re.search(r"segstream: failed: \d+ frames published", process.stderr)
    assert re.search(r"segstream: \d+ frames, .*sources ", process.stderr), "a status line was printed"
    client = redis_server.client()
    stored = []
    for key in client.keys("segstream:*"):
        if client.type(key) == b"string":  # a status key (SCHEMA): its value too
            stored.append(client.get(key))
            continue
        stored += [b"%s %s" % (k, v) for _, fields in client.xrange(key) for k, v in fields.items()]
    files = [p.read_bytes() for p in (tmp_path / "out").iterdir()]
    everything = "\n".join([process.stdout, process.stderr]).encode() + b"\n".join(stored + files)
    assert b"good" in everything and b"rtsp://***@127.0.0.1" in everything  # what was shown instead
    for secret in (password, wrong, token, user):
        assert secret.encode() not in everything, secret
    events = [fields for fields in stored if fields.startswith(b"data ")]
    assert any(b'"state":"streaming"' in e for e in events) and any(b'"state":"failed"' in e for e in events)


def test_a_stopped_and_continued_segstream_says_it_was_paused_instead_of_blaming_the_camera(tmp_path):
    """SIGSTOP for longer than the read timeout, then SIGCONT: the camera streamed all along (found
    reviewing: the stall and the reconnect said "no data from '<camera>' for 5 s")."""
    from segstream.connectors.files_sink import read_entries
    from segstream.connectors.redis_wire import event_from_wire

    with RtspCamera(tmp_path) as camera:
        config = tmp_path / "pipeline.yaml"
        config.write_text(
            f"sources:\n  - {{name: cam, type: stream, url: '{camera.url()}', read_timeout_s: 2}}\n"
            f"model: {{preset: {SYNTHETIC_TINY.name}, device: cpu}}\n"
            "ops: {http: null}\n"  # not the default port: other test files run beside this one
            "sinks:\n  redis: {enabled: false}\n  files: {enabled: true, dir: out}\n"
        )
        process = _start(config, tmp_path, tmp_path)
        output = tmp_path / "out" / "cam.jsonl"
        try:
            wait_for(lambda: (output.exists() and len(output.read_text().splitlines()) >= 10) or process.poll() is not None,
                     120, "the first frames")
            assert process.poll() is None, process.communicate()
            os.kill(process.pid, signal.SIGSTOP)
            time.sleep(5)
            os.kill(process.pid, signal.SIGCONT)
            published = len(output.read_text().splitlines())
            wait_for(lambda: len(output.read_text().splitlines()) >= published + 25, 60, "frames after the pause")
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, err
    paused = re.search(r"segstream: warning: segstream was paused for ([\d.]+) s \(SIGSTOP, suspend, VM pause, or a machine too busy to run it\)", err)
    assert paused and 4 <= float(paused.group(1)) <= 30, err
    assert "no data from" not in err and "no frame from" not in err, err
    events = [event_from_wire(e) for e in read_entries(tmp_path / "out" / "cam.events.jsonl")]
    lost = [e.data for e in events if e.data.get("state") in ("stalled", "reconnecting")]
    # the time segstream stood still is no wait of the read (found probing a suspend: the camera's
    # data sat in the socket, and a stall, a reconnect and the pause as down time were counted)
    assert not lost, lost
    # frames the camera sent meanwhile are counted as before: decoded + decode errors = published + dropped
    summary = re.search(r"segstream: stopped: (\d+) frames published .*?(\d+) dropped.*cam (\d+)/(\d+)"
                        r"(?: dropped \d+ \([^)]*\))?(?: decode errors (\d+))?", err)
    assert summary, err
    published, dropped, cam_published, decoded, decode_errors = (int(n or 0) for n in summary.groups())
    assert published == cam_published and published + dropped == decoded + decode_errors, summary.group(0)
