"""A watched folder restarted (a deploy, a crash) goes on where the last run left off
(``watch_from: last``): after the newest image its Redis stream holds, through a real
redis-server, neither publishing again what was published nor leaving out what came meanwhile."""

from __future__ import annotations

import logging
import os
import threading
import time

import pytest

from segstream.connectors.errors import ConfigError, SourceError
from segstream.connectors.image_source import ImageFolderSource
from segstream.connectors.redis_sink import RedisPublisher
from segstream.connectors.threads import input_wait
from segstream.pipeline.config import validate_config
from segstream.pipeline.metrics import RunMetrics
from segstream.pipeline.runtime import Runtime
from tests.conftest import ColourSegmenter
from tests.redis_servers import RedisProcess
from tests.test_image_source import NIGHT, _arrive, _square

STREAM = "segstream:site:frames"


def _published(server: RedisProcess) -> list[str]:
    return [os.path.basename(f[b"file"].decode()) for _, f in server.client().xrange(STREAM)]


def _started(folder, server: RedisProcess, watch_from: str = "last", redis_gone: bool = False,
             ) -> tuple[Runtime, threading.Thread]:
    """A run of the folder into ``server``, started (``redis_gone``: Redis killed once the
    publisher has connected, before the source asks where to go on)."""
    source = ImageFolderSource("site", str(folder), timestamps="name", timestamp_zone="UTC", watch=True,
                               watch_from=watch_from, poll_s=0.05, settle_s=0.0)
    publisher = RedisPublisher.from_config(server.url, None, max_batch_delay_s=0.0, drain_timeout_s=0.5)
    if redis_gone:
        server.kill()
    runtime = Runtime([source], ColourSegmenter(), [publisher], batch_size=1, metrics=RunMetrics(), progress=None)
    thread = threading.Thread(target=runtime.run, daemon=True)
    thread.start()
    return runtime, thread


def _run_until(folder, server: RedisProcess, count: int, watch_from: str = "last") -> Runtime:
    """One run of the folder into ``server`` until its stream holds ``count`` entries, then stopped."""
    runtime, thread = _started(folder, server, watch_from)
    deadline = time.monotonic() + 30
    while server.client().xlen(STREAM) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # several more looks at the folder: anything read again would be published by now
    runtime.stop()
    thread.join(20)
    assert not thread.is_alive()
    return runtime


def test_a_watched_folder_restarted_goes_on_after_the_newest_image_its_stream_holds(tmp_path):
    folder = tmp_path / "ftp"
    folder.mkdir()
    for name, _ in NIGHT[:2]:
        _square(folder / name)
    with RedisProcess(tmp_path / "redis") as server:
        _run_until(folder, server, 2)
        assert _published(server) == [NIGHT[0][0], NIGHT[1][0]]
        for name, _ in NIGHT[2:]:  # while no run watched
            _arrive(folder / name)
        _run_until(folder, server, 4)
        assert _published(server) == [name for name, _ in NIGHT], "each once, in order"
        # what the default does (the reason for last): the folder's images published again
        _run_until(folder, server, 8, watch_from="start")
        assert _published(server)[4:] == [name for name, _ in NIGHT]


def test_while_redis_cannot_say_where_it_left_off_the_source_waits_and_says_so(tmp_path, caplog):
    folder = tmp_path / "ftp"
    folder.mkdir()
    _square(folder / NIGHT[0][0])
    caplog.set_level(logging.WARNING, logger="segstream.runtime")
    with RedisProcess(tmp_path / "redis", ["--appendonly", "yes", "--appendfsync", "always"]) as server:
        _run_until(folder, server, 1)
        _arrive(folder / NIGHT[1][0])
        runtime, thread = _started(folder, server, redis_gone=True)
        deadline = time.monotonic() + 10
        while not any("waits to learn where the last run left off" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no word of the wait"
            time.sleep(0.02)
        assert runtime.metrics.source("site").decoded == 0, "nothing read before it knows where to begin"
        # a wait on its input, not a stuck thread (/healthz, ops.stall_after_s)
        assert input_wait(runtime._decoders[0].ident) == "waiting for Redis to say where the last run left off"
        server.start()
        deadline = time.monotonic() + 20
        while server.client().xlen(STREAM) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        runtime.stop()
        thread.join(20)
        assert _published(server) == [NIGHT[0][0], NIGHT[1][0]]
        assert any("learnt where the last run left off after" in r.getMessage() for r in caplog.records)


def test_a_stop_while_waiting_for_redis_ends_the_run_promptly(tmp_path):
    folder = tmp_path / "ftp"
    folder.mkdir()
    _square(folder / NIGHT[0][0])
    with RedisProcess(tmp_path / "redis") as server:
        runtime, thread = _started(folder, server, redis_gone=True)
        time.sleep(1.0)
        started = time.monotonic()
        runtime.stop()
        thread.join(20)
        assert not thread.is_alive() and time.monotonic() - started < 5
        assert runtime.metrics.source("site").decoded == 0


def test_an_image_moved_away_once_read_still_marks_the_place_by_its_time(tmp_path):
    # timestamps: mtime, and the processed images moved away (as OPERATIONS advises where thousands pile up)
    folder = tmp_path / "ftp"
    folder.mkdir()
    for i, name in enumerate(("a.png", "b.png")):
        _square(folder / name)
        os.utime(folder / name, ns=(1_700_000_000_000_000_000 + i * 10**9,) * 2)
    source = ImageFolderSource("site", str(folder), timestamps="mtime", watch=True, watch_from="last", poll_s=0.02,
                               settle_s=0.0)
    gone = str(folder / "gone-since.png")  # read and moved away: its name sorts before, its time between
    source.resume_after(gone, 1_700_000_000.5)
    frames = []
    reader = threading.Thread(target=lambda: frames.extend(source.frames()), daemon=True)
    reader.start()
    deadline = time.monotonic() + 5
    while not frames and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    source.close()
    reader.join(5)
    assert [os.path.basename(f.file) for f in frames] == ["b.png"]


def test_watch_from_last_needs_the_redis_sink():
    with pytest.raises(ConfigError, match=r"sources\[0\]\.watch_from: last goes on after the newest image the "
                                         "source's Redis stream holds, and sinks.redis is off"):
        validate_config({"sources": [{"name": "site", "type": "images", "path": "/tmp", "watch": True,
                                      "watch_from": "last"}],
                         "sinks": {"redis": {"enabled": False}}})


def test_the_folder_spelled_otherwise_than_the_last_run_did_is_the_same_folder(tmp_path, monkeypatch):
    # found reviewing: by name order (timestamps: fps), "ftp" one run and "/abs/ftp" the next put every
    # image before the place, and the source read none of the new ones, for good
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "ftp"
    folder.mkdir()
    for name in ("img_0001.png", "img_0002.png"):
        _square(folder / name)

    def run(path: str, count: int) -> None:
        source = ImageFolderSource("site", path, watch=True, watch_from="last", poll_s=0.05, settle_s=0.0)
        runtime = Runtime([source], ColourSegmenter(), [RedisPublisher.from_config(server.url, None)], batch_size=1,
                          metrics=RunMetrics(), progress=None)
        thread = threading.Thread(target=runtime.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while server.client().xlen(STREAM) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        runtime.stop()
        thread.join(20)

    with RedisProcess(tmp_path / "redis") as server:
        run("ftp", 2)
        for name in ("img_0003.png", "img_0004.png"):
            _arrive(folder / name)
        run(str(folder), 4)
        assert _published(server) == ["img_0001.png", "img_0002.png", "img_0003.png", "img_0004.png"]
        # a place outside the folder watched (another folder altogether): said, and the folder read from the start
        source = ImageFolderSource("site", str(folder), watch=True, watch_from="last")
        source.resume_after("/elsewhere/img_0009.png", None)
        assert source._resume is None


def test_a_redis_that_refuses_to_say_where_it_left_off_fails_the_source_at_once(tmp_path):
    # found reviewing: WRONGTYPE or an ACL without XREVRANGE was waited on for good, as if Redis were down
    folder = tmp_path / "ftp"
    folder.mkdir()
    _square(folder / NIGHT[0][0])
    with RedisProcess(tmp_path / "redis") as server:
        server.client().set(STREAM, "not a stream")
        source = ImageFolderSource("site", str(folder), watch=True, watch_from="last", poll_s=0.05, settle_s=0.0)
        runtime = Runtime([source], ColourSegmenter(), [RedisPublisher.from_config(server.url, None)], batch_size=1,
                          metrics=RunMetrics(), progress=None)
        with pytest.raises(SourceError, match="refused to say what segstream:site:frames holds last"):
            runtime.run()
        report = runtime.report(1.0)
    assert report.sources["site"].state == "failed"
    assert "refused to say what segstream:site:frames holds last (WRONGTYPE" in report.sources["site"].reason
    assert "set watch_from to start or new" in report.sources["site"].reason
