"""Fan-in: one reader over many sources' streams (a list of sources, or a glob), in one
blocking XREAD, in the order the entries arrived; streams that appear later are found."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from segstream.client import Subscription, connect
from segstream.connectors.embedded_redis import EmbeddedRedis
from segstream.connectors.redis_reader import tail
from segstream.connectors.redis_sink import RedisPublisher
from tests.redis_servers import RedisProcess, free_port
from tests.test_redis_sink import tiny_scene

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server():
    with EmbeddedRedis() as embedded:
        yield embedded


@pytest.fixture
def publisher(server):
    connection = server.client()
    connection.flushall()
    publisher = RedisPublisher(connection, max_batch_delay_s=0)
    yield publisher
    publisher.close()
    connection.close()


def publish(publisher: RedisPublisher, source: str, index: int) -> None:
    """One entry, written now, a few ms after the one before: arrival order is Redis's clock's."""
    publisher.publish(tiny_scene(source, index))
    publisher.flush()
    time.sleep(0.003)


def read_until(reader, wanted: int, timeout_s: float = 10.0) -> list:
    got, deadline = [], time.monotonic() + timeout_s
    while len(got) < wanted and time.monotonic() < deadline:
        got += reader.read(block_ms=200)
    return got


def test_interleaved_sources_come_in_arrival_order_with_their_source_names(server, publisher):
    order = [("cam0", 0), ("cam1", 0), ("cam1", 1), ("cam2", 0), ("cam0", 1), ("cam2", 1), ("cam1", 2)]
    publish(publisher, "cam0", -1), publish(publisher, "cam1", -1), publish(publisher, "cam2", -1)
    reader = connect(server.url).frames(["cam0", "cam1", "cam2"])  # "$": what comes from now on
    for source, index in order:
        publish(publisher, source, index)

    got = read_until(reader, len(order))

    assert [(e.source, e.frame) for e in got] == order
    assert [e.stream for e in got] == [f"segstream:{source}:frames" for source, _ in order]
    assert reader.streams == ["segstream:cam0:frames", "segstream:cam1:frames", "segstream:cam2:frames"]
    one = connect(server.url).frames("cam1", start="0")  # one source: its own stream alone, as before
    assert isinstance(one, Subscription) and [e.frame for e in one.read()] == [-1, 0, 1, 2]


def test_a_read_that_fills_its_count_keeps_arrival_order_across_reads(server, publisher):
    # XREAD's COUNT is per stream: a busy camera's batch must not jump ahead of a quiet one's entries.
    for index in range(6):
        publish(publisher, "busy", index)
    publish(publisher, "quiet", 0)
    for index in range(6, 9):
        publish(publisher, "busy", index)
    reader = connect(server.url).frames(["busy", "quiet"], start="0", count=4)

    got = read_until(reader, 10)

    assert [(e.source, e.frame) for e in got] == [*(("busy", i) for i in range(6)), ("quiet", 0),
                                                  *(("busy", i) for i in range(6, 9))]


def test_a_glob_finds_a_stream_created_after_the_reader_started_and_reads_it_from_its_first_entry(server, publisher):
    publish(publisher, "lobby-a", 0)
    publish(publisher, "garage", 0)  # matches no glob below
    reader = connect(server.url).frames("lobby-*", start="0", discover_s=0.2)
    assert [(e.source, e.frame) for e in read_until(reader, 1)] == [("lobby-a", 0)]

    for index in range(3):  # a camera added to the running pipeline, before the reader looks again
        publish(publisher, "lobby-b", index)
    publish(publisher, "garage", 1)
    got = read_until(reader, 3)

    assert [(e.source, e.frame) for e in got] == [("lobby-b", 0), ("lobby-b", 1), ("lobby-b", 2)]
    assert reader.streams == ["segstream:lobby-a:frames", "segstream:lobby-b:frames"]


def test_a_listed_source_not_there_yet_is_waited_for_and_read_from_its_first_entry(server, publisher, caplog):
    publish(publisher, "cam0", 0)
    with caplog.at_level(logging.WARNING, logger="segstream.client"):
        reader = connect(server.url).frames(["cam0", "late"])
    assert "no stream 'segstream:late:frames'" in caplog.text and "waiting for it" in caplog.text

    publish(publisher, "late", 0)
    publish(publisher, "late", 1)
    publish(publisher, "cam0", 1)

    assert [(e.source, e.frame) for e in read_until(reader, 3)] == [("late", 0), ("late", 1), ("cam0", 1)]


def test_events_of_several_sources_come_in_one_reader(server, publisher):
    from segstream.models.results import Event

    reader = connect(server.url).events("*", start="0", discover_s=0.2)
    publisher.publish_event(Event("cam0", "state", time.time(), {"state": "live"}))
    publisher.flush()
    time.sleep(0.003)
    publisher.publish_event(Event("cam1", "state", time.time(), {"state": "retrying"}))
    publisher.flush()

    got = read_until(reader, 2)

    assert [(e.source, e.kind, e.data["state"]) for e in got] == [("cam0", "state", "live"),
                                                                   ("cam1", "state", "retrying")]


def test_a_consumer_group_over_several_sources_is_refused_with_advice(server, publisher):
    with pytest.raises(ValueError, match="a consumer group reads one stream"):
        connect(server.url).frames(["cam0", "cam1"], group="analytics")


def test_follow_newest_of_a_glob_gives_each_source_s_newest_and_finds_new_ones(server, publisher):
    for index in range(3):
        publish(publisher, "cam0", index)
        publish(publisher, "cam1", index)
    client = connect(server.url)
    newest = client.follow_newest("cam*", block_ms=200, discover_s=0.2)

    assert sorted((e.source, e.frame) for e in [next(newest), next(newest)]) == [("cam0", 2), ("cam1", 2)]
    for index in range(4):  # a new camera's backlog: only its newest is given
        publish(publisher, "cam2", index)
    publish(publisher, "cam0", 3)
    got = [next(newest), next(newest)]
    client.stop()

    assert sorted((e.source, e.frame) for e in got) == [("cam0", 3), ("cam2", 3)]


def test_a_fan_in_rides_out_a_redis_restart(tmp_path):
    server = RedisProcess(tmp_path / "redis", ["--appendonly", "yes", "--appendfsync", "always"],
                          port=free_port(27200, 27299))
    try:
        publisher = RedisPublisher(server.client(), max_batch_delay_s=0)
        publish(publisher, "cam0", 0)
        client = connect(server.url, reconnect_max_s=0.2)
        reader = client.frames("*", start="0", discover_s=0.2)
        assert [(e.source, e.frame) for e in read_until(reader, 1)] == [("cam0", 0)]

        server.kill()
        outage = threading.Thread(target=lambda: reader.read(block_ms=200))  # a read while Redis is away
        outage.start()
        time.sleep(1.0)
        server.start()
        outage.join(20)
        publisher = RedisPublisher(server.client(), max_batch_delay_s=0)
        publish(publisher, "cam1", 0)
        publish(publisher, "cam0", 1)

        assert [(e.source, e.frame) for e in read_until(reader, 2)] == [("cam1", 0), ("cam0", 1)]
        assert client.reconnects >= 1
    finally:
        server.close()


def test_tail_of_a_glob_prints_the_entries_of_every_matching_stream_in_time_order(server, publisher):
    for source, index in [("cam0", 0), ("cam1", 0), ("cam0", 1)]:
        publish(publisher, source, index)
    out = io.StringIO()

    printed = tail("segstream:*:frames", server.url, count=None, follow=False, out=out)

    lines = out.getvalue().splitlines()
    assert printed == 3
    assert [line.split()[1:3] for line in lines] == [["cam0", "frame=0"], ["cam1", "frame=0"], ["cam0", "frame=1"]]


def test_tail_follow_of_a_glob_finds_a_stream_that_appears(server, publisher):
    publish(publisher, "cam0", 0)
    tailing = subprocess.Popen(
        [sys.executable, "-m", "segstream.pipeline.cli", "tail", "segstream:*:frames", "--url", server.url,
         "--follow"],
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    guard = threading.Timer(60, tailing.kill)  # a readline that never returns must not hang the suite
    guard.start()
    try:
        assert "cam0 frame=0" in tailing.stdout.readline()
        publish(publisher, "cam9", 0)
        publish(publisher, "cam9", 1)
        assert "cam9 frame=0" in tailing.stdout.readline(), "the new stream, from its first entry"
        assert "cam9 frame=1" in tailing.stdout.readline()
        tailing.send_signal(signal.SIGINT)
        _, err = tailing.communicate(timeout=30)
    finally:
        guard.cancel()
        if tailing.poll() is None:
            tailing.kill()
    assert tailing.returncode == 0, err
