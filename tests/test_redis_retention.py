"""``sinks.redis.max_age_s`` as a retention officer reads it: no entry older than that (plus the
documented slack) stays in a stream a run writes while it lives — whether its camera streams, stops
or is removed — and a stream no run writes goes whole max_age_s after its last write; against a
real redis-server with real ACL users."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest
import redis

from segstream.connectors.redis_sink import RedisPublisher
from segstream.models.results import Event
from tests.redis_servers import RedisProcess, free_port
from tests.test_preflight import FILE_SOURCE, connect, line_of, write_config
from tests.test_redis_sink import tiny_scene
from tests.test_run_identity import readme_publisher_acl

PORTS = (16800, 16899)
SLACK_S = 1.0  # docs/OPERATIONS.md: a stream no batch writes is trimmed once a second


def readme_max_age_acl() -> list[str]:
    """The README's publishing ACL rules for a run with max_age_s."""
    text = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8").replace("\n", " ")
    return re.search(r"\(`(\+xadd [^`]*\+pexpire[^`]*)`", text).group(1).split()


@pytest.fixture
def server(tmp_path):
    with RedisProcess(tmp_path / "redis", port=free_port(*PORTS)) as process:
        yield process


def acl_user(server: RedisProcess, name: str, rules: list[str]) -> redis.Redis:
    """A client logged in as a new ACL user with exactly ``rules`` (commands and ~key patterns)."""
    with server.client() as admin:
        admin.acl_setuser(name, enabled=True, passwords=["+pw"], keys=[r[1:] for r in rules if r.startswith("~")],
                          commands=[r for r in rules if not r.startswith("~")])
    return server.client(username=name, password="pw")


def oldest_age_s(client: redis.Redis, stream: str) -> float | None:
    """The age of the stream's oldest entry by Redis's own clock; None when it holds none."""
    oldest = client.xrange(stream, count=1)
    if not oldest:
        return None
    seconds, micros = client.time()
    return seconds + micros / 1e6 - int(oldest[0][0].split(b"-")[0]) / 1000


def test_a_stream_no_one_writes_is_trimmed_while_the_run_lives_and_gone_max_age_s_after_it_ends(server):
    # cam0 writes at 0 s and 1.8 s, then stops (a camera down); cam1 goes on. Trimmed only when
    # written, cam0 kept its first entry until its key expired (3.8 s): 3.5 s old at the look.
    client = server.client()
    publisher = RedisPublisher(client, maxlen=1000, pipeline_size=1, max_batch_delay_s=0, max_age_s=2.0)
    started = time.monotonic()
    publisher.publish(tiny_scene("cam0", 0))
    publisher.publish_event(Event("cam0", "track_started", 0.0, {"track_id": 1, "frame": 0}))
    index = 0
    while time.monotonic() - started < 3.5:
        index += 1
        if index == 36:  # about 1.8 s in
            publisher.publish(tiny_scene("cam0", 1))
        publisher.publish(tiny_scene("cam1", index))
        publisher.poll()
        time.sleep(0.05)
    for stream in ("segstream:cam0:frames", "segstream:cam0:events", "segstream:cam1:frames"):
        age = oldest_age_s(client, stream)
        assert age is None or age <= 2.0 + SLACK_S, (stream, age)
    assert client.xlen("segstream:cam1:frames") > 5  # the live stream keeps its last 2 s

    publisher.close()
    # the run's last entries stay readable (a restart finds them) until their time to live ends
    assert client.xrevrange("segstream:cam1:frames", count=1)[0][1][b"frame"] == str(index).encode()
    ttls = {stream: client.pttl(stream) for stream in client.keys("segstream:cam1:*")}
    assert ttls and all(0 < ttl <= 2000 for ttl in ttls.values()), ttls
    time.sleep(2.2)  # max_age_s after their last write: gone whole
    assert client.keys("segstream:*") == []


def test_a_camera_down_longer_than_max_age_s_keeps_its_empty_stream_and_groups_until_its_source_ends(server):
    # cam0 writes once, a reader's group on it, then its camera stays down while cam1 streams: its
    # stream is emptied by age but kept with its group while cam0 is in the run; once cam0 ends it
    # goes max_age_s after its last write
    client = server.client()
    publisher = RedisPublisher(client, pipeline_size=1, max_batch_delay_s=0, max_age_s=1.0)
    publisher.publish(tiny_scene("cam0", 0))
    publisher.flush()
    client.xgroup_create("segstream:cam0:frames", "readers", id="0")

    def stream_for(seconds: float) -> None:
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            publisher.publish(tiny_scene("cam1", 0))
            publisher.poll()
            time.sleep(0.05)

    stream_for(3.0)
    assert client.xlen("segstream:cam0:frames") == 0  # trimmed by age
    assert [group["name"] for group in client.xinfo_groups("segstream:cam0:frames")] == [b"readers"]
    assert 0 < client.pttl("segstream:cam0:frames") <= 1000

    publisher.source_ended("cam0")
    stream_for(1.0 + 2 * SLACK_S + 0.5)
    assert client.exists("segstream:cam0:frames") == 0
    assert client.xlen("segstream:cam1:frames") > 0
    publisher.close()


def test_a_short_max_age_s_keeps_a_down_camera_s_streams_when_polled_as_the_run_polls(server):
    # release QA: with max_age_s 0.8 the streams went within 1.5 s of the camera going down; the
    # run wakes its sinks when poll() says, else every half second (runtime._POLL_IDLE_S)
    from segstream.pipeline.runtime import _POLL_IDLE_S

    client = server.client()
    publisher = RedisPublisher(client, pipeline_size=1, max_batch_delay_s=0, max_age_s=0.4)
    publisher.publish(tiny_scene("cam0", 0))
    publisher.flush()
    client.xgroup_create("segstream:cam0:frames", "readers", id="0")
    started = time.monotonic()
    while time.monotonic() - started < 3.0:
        due = publisher.poll()
        time.sleep(_POLL_IDLE_S if due is None else min(due, _POLL_IDLE_S))
    assert client.exists("segstream:cam0:frames") == 1
    assert [group["name"] for group in client.xinfo_groups("segstream:cam0:frames")] == [b"readers"]
    publisher.close()


def test_with_max_age_s_poll_never_asks_to_be_called_at_once_over_and_over(tmp_path, server):
    # review: before the first write, and while Redis was away, poll() said "now" at every call
    # and the run's publishing thread spun (17,475 polls in 2 s)
    client = server.client()
    publisher = RedisPublisher(client, pipeline_size=1, max_batch_delay_s=0, max_age_s=0.4)

    def spins() -> int:
        calls, started = 0, time.monotonic()
        while time.monotonic() - started < 0.5:
            due = publisher.poll()
            calls += 1
            time.sleep(0.1 if due is None else min(due, 0.1))
        return calls

    assert spins() <= 10  # nothing written yet: a sweep's time apart (0.1 s), not at once
    publisher.publish(tiny_scene("cam0", 0))
    publisher.flush()
    server.kill()  # Redis away
    assert spins() <= 10
    publisher.close()


def test_an_events_stream_holds_nothing_older_than_max_age_s_after_a_write(server):
    # events are small: a hundred share one stream node, which `MINID ~` keeps whole
    client = server.client()
    publisher = RedisPublisher(client, pipeline_size=1, max_batch_delay_s=0, max_age_s=1.0)
    publisher.publish_event(Event("cam0", "track_started", 1.0, {"track_id": 1, "frame": 0}))
    publisher.flush()
    time.sleep(1.2)
    publisher.publish_event(Event("cam0", "track_ended", 2.2, {"track_id": 1}))
    publisher.flush()
    assert [fields[b"event"] for _, fields in client.xrange("segstream:cam0:events")] == [b"track_ended"]
    publisher.close()


def test_a_user_without_pexpire_is_warned_once_counted_and_the_run_goes_on(server, caplog):
    client = acl_user(server, "older", [rule for rule in readme_max_age_acl() if rule != "+pexpire"])
    publisher = RedisPublisher(client, maxlen=1000, pipeline_size=1, max_batch_delay_s=0, max_age_s=1.0)
    with caplog.at_level(logging.WARNING):
        for index in range(5):
            for source in ("cam0", "cam1"):
                publisher.publish(tiny_scene(source, index))
                publisher.publish_event(Event(source, "track_started", 1.0, {"track_id": index, "frame": index}))
        publisher.flush()
        status = publisher.status()
        publisher.close()
    refusals = [r.getMessage() for r in caplog.records if "PEXPIRE" in r.getMessage()]
    assert len(refusals) == 1 and "grant this user +pexpire" in refusals[0], refusals
    assert publisher.published == 20 and not publisher.dropped
    assert publisher.expiry_refused == 4
    assert "4 streams kept past max_age_s once unwritten (no +pexpire)" in status["line"]
    assert server.client().pttl("segstream:cam0:frames") == -1  # what the warning says is not done


def test_validate_connect_fails_a_user_without_xtrim_when_max_age_s_is_set(tmp_path, server, capsys):
    acl_user(server, "notrim", readme_publisher_acl()).close()
    redis_section = f"{{url: '{server.url}', username: notrim, password: pw, max_age_s: 600}}"
    code, lines = connect(write_config(tmp_path, FILE_SOURCE, redis_section), capsys)
    redis_line = line_of(lines, "redis")
    assert code == 1 and redis_line.startswith("FAIL"), lines
    assert "refuses XTRIM, with which sinks.redis.max_age_s trims the streams" in redis_line
    assert "+xtrim +pexpire" in redis_line

    without_max_age = f"{{url: '{server.url}', username: notrim, password: pw}}"
    code, lines = connect(write_config(tmp_path, FILE_SOURCE, without_max_age), capsys)
    assert code == 0 and line_of(lines, "redis").startswith("ok"), lines

    acl_user(server, "aged", readme_max_age_acl()).close()  # what the README says to grant
    readme_user = f"{{url: '{server.url}', username: aged, password: pw, max_age_s: 600}}"
    code, lines = connect(write_config(tmp_path, FILE_SOURCE, readme_user), capsys)
    assert code == 0 and line_of(lines, "redis").endswith("and trim and expire them by age"), lines


def test_validate_connect_says_what_a_user_without_pexpire_leaves_undone_and_passes(tmp_path, server, capsys):
    acl_user(server, "noexpire", [rule for rule in readme_max_age_acl() if rule != "+pexpire"]).close()
    redis_section = f"{{url: '{server.url}', username: noexpire, password: pw, max_age_s: 600}}"
    code, lines = connect(write_config(tmp_path, FILE_SOURCE, redis_section), capsys)
    redis_line = line_of(lines, "redis")
    assert code == 0 and redis_line.startswith("ok"), lines
    assert "but not PEXPIRE" in redis_line and "grant +pexpire" in redis_line
    assert server.client().keys("segstream:*") == []  # nothing written, nothing expired


def test_the_readme_s_publisher_acl_with_max_age_s_ends_a_run_without_a_refused_command(server, caplog):
    # found probing: the end-of-run report read the stream through a reader, whose start asks EXISTS
    client = acl_user(server, "pub", readme_max_age_acl())
    publisher = RedisPublisher(client, maxlen=1000, pipeline_size=1, max_batch_delay_s=0, max_age_s=5.0)
    with caplog.at_level(logging.DEBUG, logger="segstream"):
        for index in range(3):
            publisher.publish(tiny_scene("gate", index))
        publisher.close()
    assert "newest: " in caplog.text and "gate frame=2" in caplog.text
    assert "permission" not in caplog.text.lower() and "could not check" not in caplog.text
    assert 0 < server.client().pttl("segstream:gate:frames") <= 5000
