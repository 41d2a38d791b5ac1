"""The sources' status keys (docs/SCHEMA.md, Status keys): a reader tells a run that publishes a
quiet source from one killed or stuck, with a real Redis and the shipped readers."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time

import pytest
import redis
import redis.asyncio

from segstream.connectors.errors import WireFormatError
from segstream.connectors.redis_reader import Client
from segstream.connectors.redis_reader_aio import Client as AsyncClient
from segstream.connectors.redis_sink import RedisPublisher
from segstream.models.results import Event
from segstream.pipeline.config import RedisSinkConfig
from tests.redis_servers import RedisProcess
from tests.test_preflight import DEMO, connect, line_of
from tests.test_redis_sink import tiny_scene
from tests.test_run_identity import acl_publisher, readme_publisher_acl

KEY = "segstream:cam0:status"


@pytest.fixture
def server(tmp_path):
    with RedisProcess(tmp_path / "redis") as process:
        yield process


@pytest.fixture
def caplog(caplog):
    """The publisher's warnings, however other tests left the loggers above it."""
    logger = logging.getLogger("segstream.connectors.redis_sink")
    logger.addHandler(caplog.handler)
    logger.propagate = False
    yield caplog
    logger.propagate = True
    logger.removeHandler(caplog.handler)


def state(name: str, source: str = "cam0") -> Event:
    return Event(source, "state", time.time(), {"state": name, "previous": "new", "reason": "test"}, "run-1")


def publisher(url: str, **options) -> RedisPublisher:
    return RedisPublisher.from_config(url, None, max_batch_delay_s=0, run_id="run-1", **options)


def poll_until(sink: RedisPublisher, reader: Client, wanted, timeout_s: float = 10.0):
    """Poll the publisher as the runtime's publishing thread does, until the status meets ``wanted``."""
    deadline = time.monotonic() + timeout_s
    while not wanted(status := reader.status("cam0")) and time.monotonic() < deadline:
        sink.poll()
        time.sleep(0.02)
    return status


def test_the_key_follows_the_source_and_goes_when_the_run_stops_refreshing_it(server):
    sink = publisher(server.url, status_ttl_s=0.6)
    reader = Client(server.client())
    assert reader.status("cam0") is None  # no state written yet: nothing said
    sink.publish_event(state("connecting"))
    sink.poll()
    first = reader.status("cam0")
    assert (first.state, first.run_id, first.frame, first.final, first.ttl_s) == ("connecting", "run-1", None, False, 0.6)
    sink.publish_event(state("streaming"))
    for index in range(3):
        sink.publish(tiny_scene("cam0", index))
    sink.poll()  # a state change is written at once
    assert reader.status("cam0").state == "streaming"
    # refreshed every third of its time to live, with the last frame written: alive past 0.6 s
    refreshed = poll_until(sink, reader, lambda status: status.frame == 2)
    assert refreshed.seq == 3 and refreshed.capture_ts == pytest.approx(tiny_scene("cam0", 2).capture_ts, abs=60)
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        sink.poll()
        assert reader.status("cam0") is not None
        time.sleep(0.05)
    assert 0 < server.client().pttl(KEY) <= 600
    # A run that polls no more (killed, frozen): the key is gone within its time to live.
    time.sleep(0.7)
    assert reader.status("cam0") is None
    assert server.client().exists("segstream:cam0:frames")  # while the stream, quiet, is still there
    sink.close()


def test_a_stuck_run_leaves_its_key_to_expire_and_a_final_state_stays(server):
    sink = publisher(server.url, status_ttl_s=0.6)
    healthy = [True]
    sink.healthy = lambda: healthy[0]
    reader = Client(server.client())
    sink.publish_event(state("streaming"))
    sink.poll()
    assert reader.status("cam0").state == "streaming"
    healthy[0] = False  # what /healthz says of a stage stuck working: the publishing thread still polls
    assert poll_until(sink, reader, lambda status: status is None, timeout_s=3) is None
    healthy[0] = True
    assert poll_until(sink, reader, lambda status: status is not None).state == "streaming"
    sink.publish_event(state("failed"))
    sink.close()
    final = reader.status("cam0")
    assert final.state == "failed" and final.final and final.ttl_s is None
    assert server.client().pttl(KEY) == -1  # no expiry: the run's last word stays
    time.sleep(0.8)
    assert reader.status("cam0").state == "failed"


def test_with_max_age_s_a_final_state_goes_with_the_streams(server):
    sink = publisher(server.url, max_age_s=30)
    sink.publish_event(state("ended"))
    sink.close()
    assert 25_000 < server.client().pttl(KEY) <= 30_000


def test_a_live_source_s_key_flushed_away_is_back_within_a_refresh(server):
    sink = publisher(server.url, status_ttl_s=0.6)
    reader = Client(server.client())
    sink.publish_event(state("reconnecting"))
    sink.poll()
    server.client().flushall()
    assert poll_until(sink, reader, lambda status: status is not None).state == "reconnecting"
    sink.close()


def test_a_user_without_set_is_warned_once_the_run_publishes_on_and_a_grant_takes_effect(server, caplog,
                                                                                           monkeypatch):
    from segstream.connectors import redis_sink

    monkeypatch.setattr(redis_sink, "_STATUS_RETRY_S", 0.3)  # each minute, in a run
    admin = server.client()
    admin.execute_command("ACL", "SETUSER", "cams", "on", ">pw", "~segstream:*", "+@all", "-set")
    url = server.url.replace("redis://", "redis://cams:pw@")
    sink = publisher(url, status_ttl_s=0.6)
    sink.publish_event(state("streaming"))
    sink.publish(tiny_scene("cam0", 0))
    for _ in range(5):
        sink.poll()
        time.sleep(0.25)
    sink.publish(tiny_scene("cam0", 1))
    said = [r.getMessage() for r in caplog.records if "status key" in r.getMessage()]
    assert said == [f"Redis at {sink._where} refused the status key {KEY} (SET: this user has no permissions to run "
                    "the 'set' command): readers cannot tell from it whether this run still publishes the source — "
                    "grant this user SET on them (ACL: +set ~segstream:*:status) (tried again each minute), or set "
                    "sinks.redis.status_key to null"], said
    assert admin.xlen("segstream:cam0:frames") == 2 and not admin.exists(KEY)
    # found probing: a grant given to the running run's user never took effect
    admin.execute_command("ACL", "SETUSER", "cams", "+set")
    with caplog.at_level(logging.INFO, logger="segstream.connectors.redis_sink"):
        assert poll_until(sink, Client(admin), lambda status: status is not None).state == "streaming"
    assert f"Redis at {sink._where} takes the status keys again" in caplog.text
    sink.close()


def test_status_key_null_writes_none(server):
    sink = publisher(server.url, status_pattern=None)
    sink.publish_event(state("streaming"))
    sink.close()
    assert server.client().keys("*status*") == []


def test_the_readers_say_none_without_a_key_and_refuse_a_malformed_one(server):
    client = server.client()
    reader, other = Client(client), Client(client, status_pattern="site:{source}:alive")
    sink = publisher(server.url, status_pattern="site:{source}:alive")
    sink.publish_event(state("stalled"))
    sink.poll()
    assert reader.status("cam0") is None and other.status("cam0").state == "stalled"

    async def read():
        async_reader = AsyncClient(redis.asyncio.Redis.from_url(server.url), status_pattern="site:{source}:alive")
        try:
            return await async_reader.status("cam0"), await async_reader.status("cam9")
        finally:
            await async_reader.redis.aclose()

    found, missing = asyncio.run(read())
    assert found == other.status("cam0") and missing is None
    client.set(KEY, json.dumps({"v": 2, "state": "streaming"}))
    with pytest.raises(WireFormatError, match="not schema v1"):
        reader.status("cam0")
    client.set(KEY, "hello")
    with pytest.raises(WireFormatError, match="not JSON"):
        reader.status("cam0")
    sink.close()


def test_statuses_by_glob_or_list_are_the_same_from_both_clients_and_a_bad_key_goes_aside(server):
    # found probing as a robot's asyncio integrator: statuses() was the sync client's alone
    sink = publisher(server.url)
    for source, word in (("cam0", "streaming"), ("cam1", "reconnecting"), ("lobby", "streaming")):
        sink.publish_event(state(word, source=source))
    sink.poll()
    client = server.client()
    client.set("segstream:cam7:status", "not json")
    reader, bad = Client(client), {}
    by_glob = reader.statuses("cam*", malformed=bad.__setitem__)
    assert {name: s.state for name, s in by_glob.items()} == {"cam0": "streaming", "cam1": "reconnecting"}
    assert list(bad) == ["cam7"] and "segstream:cam7:status" in str(bad["cam7"])
    with pytest.raises(WireFormatError, match="segstream:cam7:status"):
        reader.statuses("cam*")
    by_list = reader.statuses(["lobby", "cam9"])
    assert by_list["lobby"].state == "streaming" and by_list["cam9"] is None

    async def read():
        async_reader = AsyncClient(redis.asyncio.Redis.from_url(server.url))
        aside: dict = {}
        try:
            return (await async_reader.statuses("cam*", malformed=aside.__setitem__), aside,
                    await async_reader.statuses(["lobby", "cam9"]), await async_reader.statuses("nothing-*"),
                    await async_reader.status("cam0", patience_s=1.0))
        finally:
            await async_reader.redis.aclose()

    async_glob, async_bad, async_list, none_there, one = asyncio.run(read())
    assert async_glob == by_glob and list(async_bad) == ["cam7"] and async_list == by_list and none_there == {}
    assert one == by_glob["cam0"]
    sink.close()


def test_an_asyncio_status_with_patience_says_when_redis_stays_away(tmp_path):
    from segstream.connectors.errors import SinkError

    with RedisProcess(tmp_path / "redis") as server:
        url = server.url

    async def read():  # (Redis stopped: connections refused)
        async_reader = AsyncClient(redis.asyncio.Redis.from_url(url))
        try:
            return await async_reader.status("cam0", patience_s=0.5)
        finally:
            await async_reader.redis.aclose()

    with pytest.raises(SinkError, match="did not answer for 0.5 s: the status of cam0 is not known"):
        asyncio.run(read())


def test_the_config_names_the_key_or_none():
    assert RedisSinkConfig(status_key="").status_key is None  # `${STATUS_KEY:-}`
    with pytest.raises(ValueError, match="the name of a stream"):
        RedisSinkConfig(status_key="segstream:{source}:frames")
    with pytest.raises(ValueError, match="must contain {source}"):
        RedisSinkConfig(status_key="segstream:status")


def test_the_readme_s_publisher_acl_writes_the_key_and_validate_says_what_a_user_without_set_leaves_out(
        server, tmp_path, capsys):
    rules = readme_publisher_acl()
    assert "+set" in rules
    sink = acl_publisher(server, rules, "20261205T100000Z-aaaaaaaa")
    sink.publish_event(state("streaming"))
    sink.poll()
    assert Client(server.client()).status("cam0").state == "streaming"
    sink.close()

    for name, granted in (("readme", rules), ("noset", [rule for rule in rules if rule != "+set"])):
        with server.client() as admin:
            admin.acl_setuser(name, enabled=True, passwords=["+pw"], keys=[r[1:] for r in granted if r.startswith("~")],
                              commands=[r for r in granted if not r.startswith("~")])
        config = tmp_path / f"{name}.yaml"
        config.write_text(f"sources:\n  - {{name: cam0, type: file, path: '{DEMO}'}}\n"
                          "model: {preset: synthetic_eomt_tiny_256, device: cpu}\n"
                          f"sinks:\n  redis: {{url: '{server.url}', username: {name}, password: pw}}\n")
        code, lines = connect(config, capsys)
        said = line_of(lines, "redis")
        assert code == 0 and said.startswith("ok"), lines
        if name == "readme":
            assert "status key" not in said, said
        else:
            assert said.endswith(", but not SET its status key segstream:cam0:status (this user has no permissions "
                                 "to run the 'set' command): readers cannot tell from it whether a run still "
                                 "publishes the source — grant this user SET on them (ACL: +set "
                                 "~segstream:*:status), or set sinks.redis.status_key to null"), said
    assert server.client().keys("segstream:cam0:frames") == []  # the check wrote nothing
    # a batch writes no status keys: its check asks for no SET (found reviewing)
    batch = tmp_path / "batch.yaml"
    batch.write_text("model: {preset: synthetic_eomt_tiny_256, device: cpu}\n"
                     f"sinks:\n  redis: {{url: '{server.url}', username: noset, password: pw}}\n")
    code, lines = connect(batch, capsys)
    said = line_of(lines, "redis")
    assert code == 0 and said.startswith("ok") and "status key" not in said, lines


def test_the_runtime_gives_the_publisher_its_healthz_verdict(server):
    """What makes a stuck run's keys expire: the publisher asks what /healthz answers."""
    from segstream.connectors.synthetic import SyntheticSource
    from segstream.pipeline.config import validate_config
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import ColourSegmenter

    cfg = validate_config({"sources": [{"name": "cam0", "type": "synthetic", "width": 64, "height": 48}],
                           "model": {"device": "cpu"}, "ops": {"http": None, "stall_after_s": 2.0}})
    sink = publisher(server.url)
    runtime = Runtime.from_config(cfg, [SyntheticSource("cam0", 64, 48, 25, 0, 4)], ColourSegmenter(), [sink],
                                  progress=False, publish_states=True)
    assert sink.healthy()
    runtime.metrics.beat("model-0")
    runtime.metrics.heartbeats["model-0"] = (time.monotonic() - 3.0, None)  # working, no progress for 3 s
    assert not sink.healthy()
    runtime.run()
    assert Client(server.client()).status("cam0").state == "ended"


def test_the_key_says_what_became_of_the_source_s_frames_so_far_drops_by_reason_included(server):
    # Found probing an overloaded edge box: a reader of Redis alone saw drops only in the final state
    # event, and gaps in `frame` mixed frames dropped with frames left out over max_fps.
    from segstream.connectors.synthetic import SyntheticSource
    from segstream.pipeline.config import validate_config
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import ColourSegmenter

    cfg = validate_config({"sources": [{"name": "cam0", "type": "synthetic", "width": 64, "height": 48,
                                        "buffer": "newest"}],
                           "model": {"device": "cpu"}, "engine": {"batch_size": 1}, "ops": {"http": None}})
    sink = publisher(server.url, status_ttl_s=0.6)
    source = SyntheticSource("cam0", 64, 48, 50, 0, 100, realtime=True)  # live: newest kept, the others dropped
    runtime = Runtime.from_config(cfg, [source], ColourSegmenter(delay_s=0.1), [sink], progress=False,
                                  publish_states=True, queue_size=1)
    reader = Client(server.client())
    seen: list = []

    def watch() -> None:
        while runtime_thread.is_alive():
            if (status := reader.status("cam0")) is not None and status.frames is not None:
                seen.append(status.frames)
            time.sleep(0.05)

    runtime_thread = threading.Thread(target=runtime.run)
    runtime_thread.start()
    watch()
    runtime_thread.join()
    live = [frames for frames in seen if frames["dropped"]]
    assert live, seen  # said while the run went on
    assert set(live[-1]["dropped"]) <= {"queue_full", "stale"} and live[-1]["published"] < 100
    final = reader.status("cam0")
    assert final.state == "ended" and final.frames["published"] + sum(final.frames["dropped"].values()) == \
        final.frames["decoded"]
    from segstream.connectors.redis_reader import _status_said

    dropped = sum(final.frames["dropped"].values())
    assert f", {dropped} of {final.frames['decoded']} frames dropped (" in _status_said(final, time.time())


def test_segstream_status_says_each_source_s_word_and_exits_1_unless_all_stream(server, capsys):
    from segstream.pipeline.cli import main

    sink = publisher(server.url)
    sink.publish_event(state("streaming"))
    sink.publish_event(state("reconnecting", source="cam1"))
    for index in range(3):
        sink.publish(tiny_scene("cam0", index))
    time.sleep(2.0)  # a refresh: the key has the last frame
    sink.poll()

    assert main(["status", "cam0", "--url", server.url]) == 0
    line = capsys.readouterr().out
    assert re.fullmatch(r"cam0  streaming for \d+\.\d s, frame 2 captured [^,]+ ago, run run-1\n", line), line
    assert main(["status", "--url", server.url]) == 1  # every source there: cam1 is reconnecting
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[:2] for line in lines] == [["cam0", lines[0].split("  ")[1]],
                                                         ["cam1", lines[1].split("  ")[1]]]
    assert re.fullmatch(r"cam1  reconnecting, down for \d+\.\d s \(test\), no frame yet, run run-1", lines[1])
    assert main(["status", "cam0", "cam9", "--url", server.url, "--json"]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[0]["state"] == "streaming" and records[0]["frame"] == 2 and records[0]["ttl_s"] == 5.0
    assert records[1] == {"source": "cam9", "state": None}
    sink.publish_event(state("ended"))
    sink.close()
    assert main(["status", "cam0", "--url", server.url]) == 1
    assert re.fullmatch(r"cam0  ended \d+\.\d s ago \(test\), frame 2 captured [^,]+ ago, run run-1 \(final\)\n",
                        capsys.readouterr().out)
    assert main(["status", "lobby-*", "--url", server.url]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        f"segstream: error: no status key at {server.url.removesuffix('/0')} matches segstream:lobby-*:status — no "
        "run publishes such a source now (one killed or stuck leaves none after its status_ttl_s: name the sources "
        "to see each), or its keys have another name (--key, as sinks.redis.status_key)\n")
    assert main(["status", "--key", "site:status", "--url", server.url]) == 2
    # found probing a chain's stores: a glob in --key was read as part of the names (':cam1')
    assert main(["status", "--key", "store*:{source}:status", "--url", server.url]) == 2
    assert "a glob goes in SOURCE, not in --key — e.g. --key '{source}:status' 'store*:*'" in capsys.readouterr().err
    client = server.client()
    for store in ("store17", "store18"):
        client.set(f"{store}:cam1:status", client.get(KEY))
    client.set("store21:junk:status", "not json")  # one bad key: the others are said, and it is named
    assert main(["status", "--key", "{source}:status", "store*:*", "--url", server.url]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in lines] == ["store17:cam1", "store18:cam1", "store21:junk"]
    assert lines[2].startswith("store21:junk  unreadable: store21:junk:status: status value is not JSON: ")


def test_segstream_status_as_a_monitoring_plugin_says_ok_warning_critical_or_unknown(server, capsys):
    # Nagios/Icinga (and Zabbix's and Sensu's checks) read the first line and 0-3: a WARNING is a camera
    # being retried, a CRITICAL one that failed, ended or has no run; UNKNOWN, a check that cannot tell
    from segstream.pipeline.cli import main

    sink = publisher(server.url)
    sink.publish_event(state("streaming"))
    sink.poll()
    assert main(["status", "cam0", "--url", server.url, "--nagios"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "SEGSTREAM OK - 1 source streaming | streaming=1;;;0;1 down=0;;;0;1"
    assert lines[1].startswith("cam0  streaming for ")
    sink.publish_event(state("reconnecting", source="cam1"))
    sink.poll()
    assert main(["status", "--url", server.url, "--nagios"]) == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("SEGSTREAM WARNING - 1 of 2 sources not streaming: cam1 reconnecting, down for ")
    assert first.endswith(" | streaming=1;;;0;2 down=1;;;0;2")
    assert main(["status", "cam0", "cam1", "cam9", "--url", server.url, "--nagios"]) == 2  # cam9: no run has it
    assert "2 of 3 sources not streaming" in capsys.readouterr().out.splitlines()[0]
    sink.publish_event(state("failed", source="cam1"))
    sink.close()
    assert main(["status", "cam1", "--url", server.url, "--nagios"]) == 2
    assert capsys.readouterr().out.startswith("SEGSTREAM CRITICAL - 1 of 1 sources not streaming: cam1 failed ")
    for argv in (["lobby-*", "--url", server.url], ["cam0", "--url", "redis://127.0.0.1:1/0"],
                 ["cam0", "--url", "http://x"], ["--bogus"]):  # (an unknown option: argparse's, found probing)
        assert main(["status", *argv, "--nagios"]) == 3
        captured = capsys.readouterr()
        assert captured.out.startswith("SEGSTREAM UNKNOWN - ") and len(captured.out.splitlines()) == 1, captured


def test_a_redis_restarted_without_its_data_gets_every_source_s_key_again_a_final_one_too(server, caplog):
    """Found probing a port's cameras: after Redis restarted empty, a camera that had failed had no
    state anywhere a reader could see (its events stream gone with its failed state)."""
    sink = publisher(server.url, status_ttl_s=0.6, reconnect_max_s=0.2)
    reader = Client(server.client())
    sink.publish_event(state("streaming", source="cam5"))
    sink.publish_event(state("failed"))
    sink.publish(tiny_scene("cam5", 0))
    sink.poll()
    assert reader.status("cam0").state == "failed"
    server.kill()  # no persistence: it comes back empty
    server.start()
    deadline = time.monotonic() + 20
    index = 1
    while time.monotonic() < deadline and not server.client().exists(KEY):
        sink.publish(tiny_scene("cam5", index))  # a camera still streaming finds the outage, then the loss
        sink.poll()
        index += 1
        time.sleep(0.1)
    assert reader.status("cam0").state == "failed" and reader.status("cam5").state == "streaming"
    assert sink.data_losses == 1
    sink.close()


def test_a_status_write_redis_refuses_for_now_waits_a_refresh_instead_of_spinning(server):
    """Found reviewing: a SET refused for now (maxmemory) left the state change due at once, and
    the publishing thread polled in a loop (6,836 refused SETs a second)."""
    sink = publisher(server.url, status_ttl_s=0.6)
    sink.publish_event(state("stalled"))  # written now (no batching delay): its status key is due
    server.client().config_set("maxmemory", "1")  # full from here: SET refused, for now
    waits = [sink.poll() for _ in range(3)]
    assert all(wait is not None and wait >= 0.15 for wait in waits), waits
    server.client().config_set("maxmemory", "0")
    time.sleep(0.25)
    assert poll_until(sink, Client(server.client()), lambda status: status is not None).state == "stalled"
    sink.close()


def test_status_keys_sent_on_the_sink_s_own_thread_keep_their_rules(server, monkeypatch):
    """A run's sink (``background``) sends the keys on its own thread: a refresh on a Redis 0.5 s
    away held the publishing thread (found probing a remote site). Written, written again after a
    flush, waiting a refresh when refused for now, the final state at the close."""
    from segstream.connectors import redis_sink

    senders = []
    fly = redis_sink._StatusFlight.fly
    monkeypatch.setattr(redis_sink._StatusFlight, "fly",
                        lambda flight: (senders.append(threading.current_thread().name), fly(flight))[1])
    sink = publisher(server.url, status_ttl_s=0.6, background=True)
    reader, admin = Client(server.client()), server.client()
    sink.publish_event(state("streaming"))
    assert poll_until(sink, reader, lambda status: status is not None).state == "streaming"
    assert senders and set(senders) == {"segstream-redis-send"}, senders
    admin.flushall()
    assert poll_until(sink, reader, lambda status: status is not None).state == "streaming"
    admin.config_set("maxmemory", "1")  # full: each refresh's SET refused, for now
    admin.config_resetstat()
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        time.sleep(min(sink.poll() or 0.02, 0.05))
    stats = admin.info("commandstats").get("cmdstat_set", {})
    assert 2 <= stats.get("calls", 0) + stats.get("rejected_calls", 0) <= 8, stats  # one each 0.2 s, no spin
    admin.config_set("maxmemory", "0")
    sink.publish_event(state("stalled"))
    assert poll_until(sink, reader, lambda status: status is not None and status.state == "stalled").state == "stalled"
    sink.publish_event(state("ended"))
    sink.close()
    final = reader.status("cam0")
    assert final.state == "ended" and final.final


def test_a_status_write_sent_before_a_state_change_leaves_the_change_to_write():
    """Found by the test above: a refresh on its way when a source ended, landing after, unmarked
    the end, and the key said streaming after the close."""
    from segstream.connectors.redis_sink import _Outgoing, _StatusKeys

    def written(keys: _StatusKeys, name: str) -> None:
        event = state(name)
        fields = {"event": "state", "source": "cam0", "ts": str(event.ts), "run_id": "run-1",
                  "data": json.dumps(event.data)}
        keys.written(_Outgoing("segstream:cam0:events", fields, 0, None, 0.0), 1)

    keys = _StatusKeys("segstream:{source}:status", 0.6, None)
    written(keys, "streaming")
    on_its_way = keys.writes(time.monotonic())
    written(keys, "ended")
    keys.sent(on_its_way)
    assert keys.due(time.monotonic()) == 0  # the end is still to write
    keys.sent(keys.writes(time.monotonic()))
    assert keys.due(time.monotonic()) is None


def test_a_source_removed_and_added_again_before_its_end_was_written_keeps_its_key(server):
    """Found reviewing: with its ended key still to write (Redis away, or refusing), a camera a
    reload took out and put back was forgotten once that key went: its key expired while it streamed."""
    sink = publisher(server.url, status_ttl_s=0.6)
    reader = Client(server.client())
    sink.publish_event(state("streaming"))
    sink.poll()
    sink.publish_event(state("ended"))
    sink.source_removed("cam0")
    sink.publish_event(state("connecting"))
    sink.publish_event(state("streaming"))
    end = time.monotonic() + 1.5  # past its time to live: refreshed all along
    index = 0
    while time.monotonic() < end:
        sink.publish(tiny_scene("cam0", index))
        sink.poll()
        assert (status := reader.status("cam0")) is not None and status.state == "streaming"
        index += 1
        time.sleep(0.05)
    assert status.frame is not None
    sink.close()


def test_a_status_key_given_is_the_one_written_whatever_the_streams_are_named(server):
    """Found reviewing: a status_key written out as the default's text, beside streams of a
    tenant's prefix, was replaced by the derived one (the check at start asked for another key)."""
    assert RedisSinkConfig(stream="tenantA:{source}:frames").status_key == "tenantA:{source}:status"
    given = RedisSinkConfig(stream="tenantA:{source}:frames", status_key="segstream:{source}:status")
    assert given.status_key == "segstream:{source}:status"
    sink = publisher(server.url, stream_pattern="tenantA:{source}:frames", status_pattern=given.status_key)
    sink.publish_event(state("streaming"))
    sink.poll()
    assert server.client().keys("*:status") == [KEY.encode()]
    sink.close()


def test_a_publisher_made_in_python_names_its_events_and_status_after_its_frames_stream(server):
    """As a config's are and the readers expect: ``RedisPublisher(client, "tenantB:{source}:frames")``
    wrote its events and status keys under ``segstream:``, outside the tenant's prefix (and its ACL)."""
    for sink in (publisher(server.url, stream_pattern="tenantB:{source}:frames"),
                 RedisPublisher(server.client(), "tenantB:{source}:frames", max_batch_delay_s=0, run_id="run-1")):
        sink.publish(tiny_scene("cam0", 0))
        sink.publish_event(state("streaming"))
        sink.poll()
        assert sorted(server.client().keys("*cam0*")) == [b"tenantB:cam0:events", b"tenantB:cam0:frames",
                                                          b"tenantB:cam0:status"]
        reader = Client(server.client(), stream_pattern="tenantB:{source}:frames")
        assert reader.status("cam0").state == "streaming"
        sink.close()
        server.client().flushall()
    sink = publisher(server.url, stream_pattern="tenantB:{source}:frames", status_pattern=None)
    sink.publish_event(state("streaming"))
    sink.close()
    assert server.client().keys("*cam0*") == [b"tenantB:cam0:events"]  # None: no status keys, as before
    server.client().flushall()


def test_a_camera_down_reads_as_down_since_its_spell_began_not_its_last_attempt(server):
    """Found probing a chain's stores: each reconnect attempt (an event) began "reconnecting for"
    again, so a camera down for hours read as down for seconds."""
    sink = publisher(server.url)
    reader = Client(server.client())

    def enter(name: str, at: float) -> None:
        sink.publish_event(Event("cam0", "state", at, {"state": name, "reason": f"{name} at {at:g}"}, "run-1"))
        sink.poll()

    enter("streaming", 100.0)
    assert reader.status("cam0").down_since is None
    enter("stalled", 200.0)
    for attempt in range(3):
        enter("reconnecting", 210.0 + attempt * 30)
    down = reader.status("cam0")
    assert (down.state, down.since, down.down_since, down.reason) == ("reconnecting", 210.0, 200.0, "reconnecting at 270")
    enter("streaming", 400.0)
    back = reader.status("cam0")
    assert (back.since, back.down_since) == (400.0, None)
    sink.close()


def test_a_watchdog_asking_through_an_outage_is_told_of_it_once(tmp_path, caplog):
    # found probing as a robot's integrator: status(patience_s=) twice a second through a 10 s outage
    # warned "lost Redis ... reconnecting" 21 times, and "reconnected" once
    from segstream.client import aio, connect
    from segstream.connectors.errors import SinkError

    caplog.set_level(logging.WARNING)
    server = RedisProcess(tmp_path / "redis")
    try:
        reader = connect(server.url)
        server.kill()
        for _ in range(3):
            with pytest.raises(SinkError, match="did not answer for 0.2 s"):
                reader.status("cam0", patience_s=0.2)
        server.start()
        assert reader.status("cam0") is None

        async def through_an_outage():
            async with await aio.connect(server.url) as async_reader:
                server.kill()
                for _ in range(3):
                    with pytest.raises(SinkError):
                        await async_reader.status("cam0", patience_s=0.2)
                server.start()
                return await async_reader.status("cam0")

        assert asyncio.run(through_an_outage()) is None
    finally:
        server.close()
    lost = [m for m in caplog.messages if m.startswith("lost Redis at")]
    back = [m for m in caplog.messages if m.startswith("reconnected to Redis at")]
    assert len(lost) == 2 and len(back) == 2, caplog.messages  # once each, for each client


def test_a_reader_of_a_redis_that_hangs_keeps_its_patience_and_its_watchdog_s_none(tmp_path):
    # found probing as a robot's integrator: a Redis stopped (SIGSTOP: as a network partition) answers
    # nothing, and status(patience_s=0.5) raised after the socket's 10 s, follow_newest(idle_s=1)'s None
    # came every 10 s: a robot held a 10 s old scene untold
    import os
    import signal

    from segstream.client import aio
    from segstream.connectors.errors import SinkError

    server = RedisProcess(tmp_path / "redis")

    async def through_a_hang():
        async with await aio.connect(server.url) as reader:
            os.kill(server.process.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(SinkError, match="did not answer for 0.5 s"):
                    await reader.status("cam0", patience_s=0.5)
                patience = time.monotonic() - started
                nones, started = [], time.monotonic()
                async for item in reader.follow_newest("cam0", idle_s=1.0):
                    assert item is None
                    nones.append(time.monotonic() - started)
                    break
            finally:
                os.kill(server.process.pid, signal.SIGCONT)
            return patience, nones

    def through_a_hang_sync():
        from segstream.client import connect

        reader = connect(server.url)
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(SinkError, match="did not answer for 0.5 s"):
                reader.status("cam0", patience_s=0.5)
            patience = time.monotonic() - started
            nones, started = [], time.monotonic()
            for item in reader.follow_newest("cam0", idle_s=1.0):
                assert item is None
                nones.append(time.monotonic() - started)
                break
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        return patience, nones

    try:
        patience, nones = asyncio.run(through_a_hang())
        sync_patience, sync_nones = through_a_hang_sync()
    finally:
        server.close()
    assert patience < 3.0 and sync_patience < 3.0, (patience, sync_patience)
    # about a second (and a reply's grace), not the socket's 10 s
    assert nones[-1] < 4.0 and sync_nones[-1] < 4.0, (nones, sync_nones)


@pytest.mark.parametrize("says_anew", [False, True])
def test_a_flush_found_by_a_batch_gets_the_settings_event_after_it_unless_it_says_one(server, says_anew):
    # found reviewing: the loss is also found by the batch that meets the emptied streams (XLEN in its
    # MULTI); the copy goes after that batch, and a batch that says the settings anew needs none
    from tests.test_run_identity import frame

    sink = RedisPublisher.from_config(server.url, None, pipeline_size=16, max_batch_delay_s=3600,
                                      run_id="20261202T100000Z-aaaaaaaa", status_pattern=None)
    client = server.client()
    try:
        sink.publish(frame(0, sink.run_id))
        sink.publish_event(Event("cam0", "settings", time.time(), {"frame": 0, "classes": ["person"]}))
        sink.publish(frame(1, sink.run_id))
        sink.flush()
        client.flushall()
        sink.publish(frame(2, sink.run_id))
        if says_anew:
            sink.publish_event(Event("cam0", "settings", time.time(), {"frame": 2, "classes": ["person"]}))
        sink.publish_event(Event("cam0", "state", time.time(), {"state": "streaming"}))
        sink.flush()
        assert sink.data_losses == 1
        events = [(f[b"event"], json.loads(f[b"data"]).get("frame")) for _, f in client.xrange("segstream:cam0:events")]
        assert events == ([(b"settings", 2), (b"state", None)] if says_anew else
                          [(b"state", None), (b"settings", 0)]), events
        assert [int(f[b"frame"]) for _, f in client.xrange("segstream:cam0:frames")] == [2]
    finally:
        sink.close()


def test_a_redis_restarted_empty_gets_each_source_s_settings_event_again(server):
    # found probing as a robot's integrator: after Redis restarted without its data, no settings event (the
    # only place a source's classes are said) was left, and a consumer starting later could not check names
    from segstream.connectors.synthetic import SyntheticSource
    from segstream.pipeline.metrics import RunMetrics
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import ColourSegmenter

    sink = publisher(server.url, reconnect_max_s=0.2)
    runtime = Runtime([SyntheticSource("cam0", 64, 48, 25.0, 0, 2000, realtime=True)], ColourSegmenter(), [sink],
                      batch_size=1, metrics=RunMetrics(), progress=None, publish_settings=True)
    thread = threading.Thread(target=runtime.run, daemon=True)
    thread.start()
    client = server.client()

    def settings() -> int:
        try:
            return sum(f[b"event"] == b"settings" for _, f in client.xrange("segstream:cam0:events"))
        except redis.ConnectionError:
            return 0

    try:
        deadline = time.monotonic() + 20
        while settings() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert settings() == 1
        server.kill()  # no persistence: it comes back empty
        server.start()
        deadline = time.monotonic() + 20
        while not (sink.data_losses and settings()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink.data_losses == 1 and settings() == 1, "said again once, after the loss"
        [(_, event)] = [(i, f) for i, f in client.xrange("segstream:cam0:events") if f[b"event"] == b"settings"]
        assert b"classes" in event[b"data"]
        # as it was, so that it covers every frame Redis holds, the backlog sent after the restart among them
        # (found by a reader written from docs/SCHEMA.md: said at the next frame, the backlog had none)
        held = [int(f[b"frame"]) for _, f in client.xrange("segstream:cam0:frames")]
        assert json.loads(event[b"data"])["frame"] == 0 and held and min(held) > 0
    finally:
        runtime.stop()
        thread.join(20)


def test_an_outage_a_patient_call_gave_up_on_is_not_the_next_one(tmp_path, caplog):
    # found reviewing: status(patience_s=) gave up on an outage, Redis came back, no call came for a while,
    # and at the next outage the client gave up at once ("lost Redis ... for 6 s"), warning nothing
    from segstream.client import connect
    from segstream.connectors.errors import SinkError

    caplog.set_level(logging.WARNING)
    server = RedisProcess(tmp_path / "redis")
    try:
        reader = connect(server.url, give_up_after_s=1.5, reconnect_max_s=0.2)
        server.kill()
        with pytest.raises(SinkError, match="did not answer for 0.3 s"):
            reader.status("cam0", patience_s=0.3)
        server.start()
        time.sleep(2.0)  # back, and no call meanwhile
        server.kill()
        with pytest.raises(SinkError, match="did not answer for 0.3 s"):  # not "lost Redis ... for 2 s"
            reader.status("cam0", patience_s=0.3)
    finally:
        server.close()
    assert len([m for m in caplog.messages if m.startswith("lost Redis at")]) == 2, caplog.messages


def test_a_tenant_without_scan_is_told_to_name_its_sources_which_works(server):
    # Found probing two teams on one Redis: OPERATIONS advises a tenant's user -scan, and a glob's
    # refusal said only "grant the user SCAN" (the way out: name the sources).
    from segstream.connectors.errors import ReaderError

    admin = server.client()
    admin.execute_command("ACL", "SETUSER", "teamA", "on", ">passA", "~teamA:*", "+@all", "-scan", "-keys")
    admin.set("teamA:gate:status", json.dumps({"v": 1, "source": "gate", "run_id": "r", "state": "streaming",
                                               "since": 1.0, "ts": 1.0, "ttl_s": 5.0}))
    user = redis.Redis.from_url(server.url, username="teamA", password="passA")
    reader = Client(user, status_pattern="teamA:{source}:status")
    with pytest.raises(ReaderError, match=r"name the sources instead of a glob, or grant the user SCAN"):
        reader.statuses("*")
    assert reader.statuses(["gate"])["gate"].state == "streaming"


def test_a_status_key_whose_frames_are_no_counts_is_malformed_not_a_traceback():
    # found in review: a key of another writer with "frames": "x" raised AttributeError in segstream status
    from segstream.connectors.redis_wire import status_from_wire

    base = {"v": 1, "source": "cam0", "run_id": "r", "state": "streaming", "since": 1.0, "ts": 1.0, "ttl_s": 5.0}
    assert status_from_wire(json.dumps({**base, "frames": {"decoded": 3, "dropped": {"stale": 1}}})).frames["decoded"] == 3
    assert status_from_wire(json.dumps(base)).frames is None  # a run older than 0.3.14
    for frames in ("x", [1], {"decoded": "3"}, {"dropped": {"stale": "1"}}):
        with pytest.raises(WireFormatError, match="frames is .*, not counts"):
            status_from_wire(json.dumps({**base, "frames": frames}))
