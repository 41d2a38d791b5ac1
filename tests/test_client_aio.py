"""The asyncio SDK (segstream.client.aio) reads what the sync one reads, in the same order, and
rides out outages, cancellation and malformed entries the same way, against a real Redis."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
import warnings

import pytest

from segstream.client import WireFormatError, aio, connect
from segstream.connectors.redis_sink import RedisPublisher
from tests.redis_servers import RedisProcess, free_port
from tests.test_redis_sink import tiny_scene


@pytest.fixture
def server(tmp_path):
    # Append-only, fsync always: what was written before a restart is there after it.
    with RedisProcess(tmp_path / "redis", ["--appendonly", "yes", "--appendfsync", "always"],
                      port=free_port(27700, 27799)) as process:
        yield process


def publish(server, *entries: tuple[str, int]) -> None:
    connection = server.client()
    publisher = RedisPublisher(connection, max_batch_delay_s=0)
    for source, index in entries:
        publisher.publish(tiny_scene(source, index))
        publisher.flush()
        time.sleep(0.003)  # arrival order is Redis's clock's
    publisher.close()
    connection.close()


async def take(iterable, wanted: int, timeout_s: float = 15.0) -> list:
    got = []

    async def collect():
        async for item in iterable:
            got.append(item)
            if len(got) == wanted:
                return

    await asyncio.wait_for(collect(), timeout_s)
    return got


def sync_read(server, source, wanted: int) -> list:
    client = connect(server.url)
    reader, got = client.frames(source, start="0"), []
    deadline = time.monotonic() + 10
    while len(got) < wanted and time.monotonic() < deadline:
        got += reader.read(block_ms=200)
    client.close()
    return got


def test_frames_are_the_sync_readers_entries_in_the_same_order(server):
    publish(server, *[("cam0", i) for i in range(6)])

    async def main():
        async with await aio.connect(server.url) as client:
            return await take(client.frames("cam0", start="0"), 6)

    got, expected = asyncio.run(main()), sync_read(server, "cam0", 6)
    assert len(expected) == 6
    assert [(e.id, e.frame, e.seq) for e in got] == [(e.id, e.frame, e.seq) for e in expected]
    assert [e.frame for e in got] == list(range(6))
    assert all((a.label_map == b.label_map).all() and list(a.segments.labels) == list(b.segments.labels)
               for a, b in zip(got, expected))


def test_many_sources_and_a_glob_come_in_arrival_order(server):
    order = [("cam0", 0), ("cam1", 0), ("cam1", 1), ("cam2", 0), ("cam0", 1), ("cam2", 1)]
    publish(server, *order)

    async def main():
        async with await aio.connect(server.url) as client:
            listed = await take(client.frames(["cam0", "cam1", "cam2"], start="0"), 6)
            globbed = await take(client.frames("cam*", start="0"), 6)
            return listed, globbed

    listed, globbed = asyncio.run(main())
    assert [(e.source, e.frame) for e in listed] == order
    assert [(e.source, e.frame) for e in globbed] == order
    assert [e.id for e in listed] == [e.id for e in sync_read(server, ["cam0", "cam1", "cam2"], 6)]


def test_newest_and_follow_newest_give_only_the_newest_entry(server):
    publish(server, *[("cam0", i) for i in range(5)])

    async def main():
        async with await aio.connect(server.url) as client:
            newest = await client.newest("cam0")
            follower = client.follow_newest("cam0", block_ms=200)
            first = await asyncio.wait_for(anext(follower), 10)
            await asyncio.to_thread(publish, server, ("cam0", 5), ("cam0", 6), ("cam0", 7))
            second = await asyncio.wait_for(anext(follower), 10)
            await follower.aclose()
            return newest, first, second

    newest, first, second = asyncio.run(main())
    assert (newest.frame, first.frame) == (4, 4)
    assert second.frame == 7, "the entries between were skipped"


def test_a_redis_restart_mid_iteration_is_ridden_out_with_one_warning(server, caplog):
    publish(server, ("cam0", 0), ("cam0", 1))

    def restart_and_publish():
        server.kill()
        time.sleep(1.5)
        server.start()
        publish(server, ("cam0", 2), ("cam0", 3))

    async def main():
        async with await aio.connect(server.url, max_block_ms=500) as client:
            reader = client.frames("cam0", start="0", block_ms=200)
            got = await take(reader, 2)
            restarting = threading.Thread(target=restart_and_publish)
            restarting.start()
            got += await take(reader, 2, timeout_s=30)
            restarting.join()
            return got, client.reconnects

    with caplog.at_level(logging.WARNING, logger="segstream.client"):
        got, reconnects = asyncio.run(main())
    assert [e.frame for e in got] == [0, 1, 2, 3]
    assert reconnects >= 1
    lost = [r for r in caplog.records if r.getMessage().startswith("lost Redis")]
    assert len(lost) == 1, [r.getMessage() for r in caplog.records]


def test_cancelling_the_reading_task_ends_cleanly_and_close_closes_the_connections(server):
    publish(server, ("cam0", 0))
    observer = server.client()

    def readers() -> int:
        return sum(1 for c in observer.client_list() if c.get("name") == "segstream-reader")

    async def main():
        client = await aio.connect(server.url)
        got = []

        async def read():
            async for entry in client.frames("cam0", start="0", block_ms=5000):
                got.append(entry)

        task = asyncio.create_task(read())
        while not got:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # in the blocking XREAD now
        during = await asyncio.to_thread(readers)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await client.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return got, during, others

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        got, during, others = asyncio.run(main())
        gc.collect()
    assert [e.frame for e in got] == [0]
    assert during >= 1, "the check would pass trivially without a reader connected"
    assert others == []
    assert readers() == 0
    assert [str(w.message) for w in said] == []
    observer.close()


def test_a_malformed_entry_is_raised_named_counted_and_costs_only_itself(server):
    publish(server, ("cam0", 0))
    bad = server.client().xadd("segstream:cam0:frames", {b"v": b"999", b"junk": b"1"}).decode()
    publish(server, ("cam0", 1))

    async def main():
        async with await aio.connect(server.url) as client:
            reader = client.frames("cam0", start="0")
            first = await reader.read(block_ms=1000)
            with pytest.raises(WireFormatError) as raised:
                await reader.read(block_ms=1000)
            rest = await reader.read(block_ms=1000)
            return first, raised.value, rest, reader.malformed

    first, error, rest, malformed = asyncio.run(main())
    assert [e.frame for e in first] == [0] and [e.frame for e in rest] == [1]
    assert error.entry_id == bad and bad in str(error)
    assert malformed == 1


def test_a_consumer_group_shares_entries_and_ack_is_awaited(server):
    publish(server, *[("cam0", i) for i in range(4)])

    async def main():
        async with await aio.connect(server.url) as client:
            reader = client.frames("cam0", group="g", consumer="w1", start="0")
            got = await take(reader, 4)
            before = await reader.pending()
            for entry in got:
                await entry.ack()
            return got, before, await reader.pending()

    got, before, after = asyncio.run(main())
    assert [e.frame for e in got] == [0, 1, 2, 3]
    assert (before, after) == (4, 0)


def test_the_follow_newest_watchdog_keeps_saying_none_while_redis_is_away(server, caplog):
    # found probing: with Redis away, follow_newest(idle_s=...) yielded nothing at all (sync and
    # asyncio alike), so a robot's watchdog never fired exactly when the feed was gone
    publish(server, ("cam0", 0))

    def sync_follow() -> list:
        client = connect(server.url, max_block_ms=500)
        got, started = [], time.monotonic()
        for item in client.follow_newest("cam0", block_ms=200, idle_s=0.5):
            got.append((round(time.monotonic() - started, 1), item))
            if len(got) == 1:
                server.kill()
            if time.monotonic() - started > 3.5:
                break
        client.close()
        return got

    async def async_follow() -> list:
        async with await aio.connect(server.url, max_block_ms=500) as client:
            got, started = [], time.monotonic()
            async for item in client.follow_newest("cam0", block_ms=200, idle_s=0.5):
                got.append(item)
                if len(got) == 1:
                    server.kill()
                if time.monotonic() - started > 3.0:
                    return got

    with caplog.at_level(logging.WARNING, logger="segstream.client"):
        got = sync_follow()
    assert got[0][1] is not None and got[0][1].frame == 0
    nones = [t for t, item in got[1:] if item is None]
    assert len(nones) >= 4, got  # one every idle_s of the outage, not silence
    assert len([r for r in caplog.records if r.getMessage().startswith("lost Redis")]) == 1  # said once
    server.start()
    got = asyncio.run(async_follow())
    assert got[0] is not None and got.count(None) >= 4, got


def test_at_finds_the_entry_captured_nearest_a_time_whatever_redis_s_clock(server, capsys):
    # Found probing as a timing engineer: no way to find the entry of a given moment but reading
    # the whole stream. Capture times here are of 2023 (tiny_scene), Redis's IDs of today.
    from segstream.pipeline.cli import main

    connection = server.client()
    publisher = RedisPublisher(connection, max_batch_delay_s=0)
    for index in range(300):
        publisher.publish(tiny_scene("cam0", index))
    publisher.flush()
    publisher.close()
    captured = [1_700_000_000.25 + index / 30 for index in range(300)]  # tiny_scene's
    client = connect(server.url)
    assert client.at(captured[123] + 0.01, "cam0").frame == 123
    assert client.at(captured[123] + 0.02, "cam0").frame == 124  # nearer the next
    assert client.at(captured[0] - 60, "cam0").frame == 0 and client.at(captured[-1] + 60, "cam0").frame == 299
    assert client.at(captured[-1] + 60, "cam0", within_s=1) is None
    assert client.at(captured[5], "nocam") is None
    with pytest.raises(ValueError, match=r"at\(\) reads one source"):
        client.at(captured[5], "cam*")
    for bad in ({"ts": float("nan")}, {"ts": captured[5], "within_s": -1}):  # found probing (release QA)
        with pytest.raises(ValueError, match="a finite time and a within_s of 0 or more"):
            client.at(source="cam0", **bad)
    client.close()

    async def main_aio():
        async with await aio.connect(server.url) as client:
            return await client.at(captured[200] - 0.01, "cam0")

    assert asyncio.run(main_aio()).frame == 200
    assert main(["tail", "segstream:cam0:frames", "--url", server.url, "--at", "2023-11-14T22:13:24.35Z",
                 "--count", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == ["frame=121", "frame=122", "frame=123"]  # 123 at 20.25 + 123/30 s
    assert main(["tail", "segstream:cam0:frames", "--url", server.url, "--at", "2023-11-14T22:13:24"]) == 2
    assert "has no time zone" in capsys.readouterr().err
    from segstream.pipeline.cli import wall_time

    assert wall_time("2023-11-14T22:13:24.35Z") == wall_time("2023-11-14T23:13:24.35+01:00") == captured[123]
    assert main(["tail", "segstream:cam0:frames", "--url", server.url, "--at", "nan"]) == 2
    assert "'nan' is no time" in capsys.readouterr().err
    # found probing (release QA): a time far from every entry printed the newest, unsaid
    assert main(["tail", "segstream:cam0:frames", "--url", server.url, "--at", "2030-01-01T00:00:00Z",
                 "--count", "1"]) == 0
    assert "the entry captured nearest the time asked was captured" in capsys.readouterr().err


def test_at_by_sender_ts_finds_the_frame_a_camera_took_at_another_camera_s_moment(server):
    # found probing four cameras for fusion: at() found entries by capture_ts only, which each
    # camera's own network and decoding delay puts hundreds of ms late (and differently)
    connection = server.client()
    publisher = RedisPublisher(connection, max_batch_delay_s=0)
    taken = [1_700_000_000.0 + index / 30 for index in range(300)]
    for index in range(300):
        scene = tiny_scene("cam1", index)
        scene.capture_ts = taken[index] + 0.45 + 0.1 * (index % 7) / 7  # late by 0.45-0.55 s
        scene.sender_ts = taken[index] if index >= 10 else None  # none before the first sender report
        publisher.publish(scene)
    publisher.flush()
    publisher.close()
    client = connect(server.url)
    assert client.at(taken[150] + 0.01, "cam1").frame < 140  # by capture time: frames taken 0.5 s earlier
    assert client.at(taken[150] + 0.01, "cam1", by="sender_ts").frame == 150
    assert client.at(taken[150] + 0.02, "cam1", by="sender_ts").frame == 151
    assert client.at(taken[299] + 5, "cam1", by="sender_ts", within_s=1) is None
    assert client.at(taken[2], "cam1", by="sender_ts").frame == 10  # the first frame with a sender_ts
    with pytest.raises(ValueError, match="by capture_ts or sender_ts"):
        client.at(taken[2], "cam1", by="pts_s")
    client.close()

    async def main_aio():
        async with await aio.connect(server.url) as client:
            return await client.at(taken[200], "cam1", by="sender_ts")

    assert asyncio.run(main_aio()).frame == 200


def test_newest_reads_one_source_and_names_a_malformed_entry(server):
    publish(server, ("cam0", 0))
    client = connect(server.url)
    with pytest.raises(ValueError, match=r"newest\(\) reads one source; for the newest entry of each of several"):
        client.newest("*")
    with pytest.raises(ValueError, match="reads one source"):
        asyncio.run(_newest_of(server, ["cam0", "cam1"]))
    entry_id = server.client().xadd("segstream:cam0:frames", {"v": "1", "source": "cam0"}).decode()
    with pytest.raises(WireFormatError, match=f"^entry {entry_id} of segstream:cam0:frames: ") as raised:
        client.newest("cam0")
    assert raised.value.entry_id == entry_id
    client.close()


async def _newest_of(server, source):
    async with await aio.connect(server.url) as client:
        return await client.newest(source)


@pytest.fixture
def tenant_server(tmp_path):
    """A Redis with cam0's entries and two readers it refuses: one without XREAD, one whose key
    patterns are another tenant's."""
    with RedisProcess(tmp_path / "redis", port=free_port(16500, 16599)) as process:
        with process.client() as admin:
            admin.acl_setuser("noxread", enabled=True, passwords=["+pw"], keys=["segstream:*"],
                              commands=["+@all", "-xread"])
            admin.acl_setuser("other", enabled=True, passwords=["+pw"], keys=["other:*"], commands=["+@all"])
        publish(process, ("cam0", 0))
        yield process


REFUSALS = [
    ("noxread", "+xread", r"no permissions to run the 'xread' command — grant the user XREAD on segstream:cam0:frames "
                          r"\(ACL: \+xread; "),
    ("other", "~segstream:*:frames ~segstream:*:events",
     r"refused this user the key segstream:cam0:frames \(.*\): its ACL key patterns exclude it — grant it "
     r"~segstream:\*:frames ~segstream:\*:events \(ACL SETUSER <user> "),
]


@pytest.mark.parametrize("user,permission,line", REFUSALS)
def test_a_reader_refused_by_redis_gets_a_reader_error_naming_the_missing_permission(tenant_server, user,
                                                                                      permission, line):
    """Found probing: the SDK raised SinkError, a writer's error, with advice for writers."""
    from segstream.client import ReaderError

    client = connect(tenant_server.url, username=user, password="pw")
    with pytest.raises(ReaderError, match=line) as raised:
        client.frames("cam0", start="0").read(block_ms=100)
    client.close()
    assert raised.value.permission == permission and type(raised.value).__name__ == "ReaderError"

    async def read_async():
        reader = await aio.connect(tenant_server.url, username=user, password="pw")
        try:
            await take(reader.frames("cam0", start="0"), 1)
        finally:
            await reader.close()

    with pytest.raises(ReaderError, match=line) as raised:
        asyncio.run(read_async())
    assert raised.value.permission == permission
