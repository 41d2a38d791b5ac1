"""Redis behind Sentinel (``redis+sentinel://``), with real servers: a master, its replica and a
sentinel that fails over within about a second. The publisher follows a failover as an outage that
ends on the promoted replica; what the replica never received is counted lost; the readers and the
CLI connect through the sentinels; what is wrong is said in one line, without the password."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segstream.client import SentinelAuth, SinkError, connect
from segstream.connectors.redis_connection import (
    RedisUnreachable,
    connect_redis,
    parse_sentinel_url,
    redis_address,
    redis_url_shown,
)
from segstream.connectors.redis_sink import RedisPublisher
from tests.redis_servers import SentinelGroup, free_port
from tests.test_redis_outage import _summary, camera_run_config
from tests.test_redis_sink import tiny_scene

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def group(tmp_path):
    with SentinelGroup(tmp_path / "ha") as servers:
        yield servers


def publisher_for(url: str, **options) -> RedisPublisher:
    client = connect_redis(url, connect_timeout=1.0, socket_timeout=2.0)
    return RedisPublisher(client, max_batch_delay_s=0, reconnect_max_s=0.2, **options)


def frames_on(process, source="cam0", password=None) -> list[int]:
    return [int(fields[b"frame"]) for _, fields in process.client(password=password).xrange(f"segstream:{source}:frames")]


def until(condition, timeout_s=20.0, step=None):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        if step is not None:
            step()
        time.sleep(0.05)


def cli(*args: str, env: dict | None = None, **options) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segstream.pipeline.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=60, **options)


def test_the_url_names_the_sentinels_the_master_and_its_database():
    parsed = parse_sentinel_url("rediss+sentinel://alice:p%40ss@s1:26380,[::1],s3/segmaster/2")
    assert parsed.sentinels == (("s1", 26380), ("::1", 26379), ("s3", 26379))
    assert (parsed.master, parsed.db, parsed.username, parsed.password, parsed.tls) == ("segmaster", 2, "alice",
                                                                                        "p@ss", True)
    assert redis_url_shown("redis+sentinel://alice:s3cret@s1:26379,s2:26379/m") == (
        "redis+sentinel://alice:***@s1:26379,s2:26379/m")


def test_publishing_through_sentinel_writes_to_the_master_and_the_sdk_reads_it(group):
    publisher = publisher_for(group.url())
    assert publisher._where == f"redis://127.0.0.1:{group.master.port} (Sentinel master 'segmaster')"
    for index in range(3):
        publisher.publish(tiny_scene("cam0", index))
    publisher.close()
    assert frames_on(group.master) == [0, 1, 2]
    reader = connect(group.url())
    assert reader.newest("cam0").frame == 2


def test_a_failover_mid_run_ends_the_outage_on_the_promoted_replica(group, caplog):
    publisher = publisher_for(group.url(), max_backlog=500)
    for index in range(5):
        publisher.publish(tiny_scene("cam0", index))
    until(lambda: len(frames_on(group.replica)) == 5)  # replicated: nothing is lost at this failover
    group.master.kill()
    index = 5
    with caplog.at_level(logging.WARNING, logger="segstream.connectors.redis_sink"):
        while publisher.reconnects == 0:
            publisher.publish(tiny_scene("cam0", index))  # never blocks, never raises
            index += 1
            time.sleep(0.05)
            assert index < 1000, "no failover"
        until(lambda: publisher.backlog == 0, step=publisher.poll)
    assert group.master_port() == group.replica.port
    assert frames_on(group.replica) == list(range(index)), "every entry, before and after the failover, in order"
    assert publisher.data_losses == 0 and publisher.status()["connected"] and publisher.status()["dropped"] == {}
    assert publisher.down_seconds > 0.5  # at least down-after-milliseconds: counted as down time
    said = caplog.text
    assert f"lost Redis at redis://127.0.0.1:{group.master.port} (Sentinel master 'segmaster')" in said
    assert ("Sentinel failed over after" in said
            and f"the master is now redis://127.0.0.1:{group.replica.port} (Sentinel master 'segmaster') "
                f"(was redis://127.0.0.1:{group.master.port}" in said)
    publisher.close()


def test_entries_the_replica_never_received_are_counted_lost_not_hidden(tmp_path, caplog):
    with SentinelGroup(tmp_path / "ha", master_password="pw") as group:
        publisher = publisher_for(group.url(login=":pw@"), max_backlog=500)
        publisher.publish(tiny_scene("cam0", 0))
        until(lambda: frames_on(group.replica, password="pw") == [0])
        # Replication cut (the replica can no longer log in): the master takes entries the replica never gets.
        master = group.master.client(password="pw")
        master.config_set("requirepass", "changed")
        master.client_kill_filter(_type="replica")
        for index in range(1, 4):
            publisher.publish(tiny_scene("cam0", index))
        assert frames_on(group.master, password="changed") == [0, 1, 2, 3]
        group.master.kill()
        with caplog.at_level(logging.WARNING, logger="segstream.connectors.redis_sink"):
            publisher.publish(tiny_scene("cam0", 4))
            until(lambda: publisher.reconnects == 1 and publisher.backlog == 0, step=publisher.poll)
        assert frames_on(group.replica, password="pw") == [0, 4]
        assert publisher.data_losses == 1  # what makes the run exit 1: "lost written entries"
        assert ("no longer holds the last entry this run wrote to it" in caplog.text
                and "the master Sentinel promoted had not received them (replication is asynchronous)" in caplog.text)
        publisher.close()


def test_a_master_demoted_to_a_replica_answers_readonly_and_the_master_is_found_again(group, caplog):
    publisher = publisher_for(group.url(), max_backlog=500)
    publisher.publish(tiny_scene("cam0", 0))
    until(lambda: frames_on(group.replica) == [0])
    group.ask("SENTINEL", "FAILOVER", group.name)  # a planned failover: the old master stays up
    until(lambda: group.master_port() == group.replica.port)
    # demoted as Sentinel later does it, but without closing the publisher's connection: its next write reads READONLY
    group.master.client().replicaof("127.0.0.1", group.replica.port)
    with caplog.at_level(logging.WARNING, logger="segstream.connectors.redis_sink"):
        publisher.publish(tiny_scene("cam0", 1))
        until(lambda: publisher.backlog == 0, step=publisher.poll)
    assert frames_on(group.replica) == [0, 1] and publisher.data_losses == 0 and publisher.status()["connected"]
    assert "previous master is now a slave" in caplog.text  # redis-py's word for READONLY from a master
    assert f"the master is now redis://127.0.0.1:{group.replica.port}" in caplog.text
    publisher.close()


def test_a_master_name_the_sentinels_do_not_know_is_one_line_and_a_failed_command(group):
    done = cli("tail", "segstream:cam0:frames", "--url", group.url("segmastr"))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"segstream: error: the sentinels at 127.0.0.1:{group.sentinels[0].port} know no master named 'segmastr' "
        "(they know 'segmaster') — fix the master name at the end of --url (/<master-name>, as in their "
        "'sentinel monitor' line)"]


def test_a_sentinels_port_given_as_a_plain_redis_url_is_one_line_naming_the_sentinel_form(group):
    # Found by release QA: `segstream tail --url redis://sentinel:26379` ended in a traceback
    # ("unknown command 'EXISTS'"), run and validate in "refused MULTI/EXEC" cut short
    port = group.sentinels[0].port
    done = cli("tail", "segstream:cam0:frames", "--url", f"redis://127.0.0.1:{port}")
    assert done.returncode != 0 and done.stderr.strip().splitlines() == [
        f"segstream: error: the server at redis://127.0.0.1:{port} is a Redis Sentinel, which keeps no streams — "
        "name the master through it: redis+sentinel://host:26379/<master-name> (rediss+sentinel:// with TLS)"]


def test_tls_to_sentinels_without_it_hints_at_the_plain_form(group):
    # found by release QA: plain rediss:// had this hint, the sentinel form only "start the sentinels"
    url = group.url().replace("redis+sentinel://", "rediss+sentinel://")
    with pytest.raises(RedisUnreachable, match=r"a sentinel without TLS never answers TLS's hello: if they have none, "
                                               r"use redis\+sentinel://$"):
        connect_redis(url, connect_timeout=1.0)


def test_no_sentinel_answering_is_said_naming_each():
    port = free_port(27000, 27999)
    with pytest.raises(RedisUnreachable, match=rf"^no sentinel answers \(127.0.0.1:{port}: .*refused.*\) — start "
                                               "the sentinels or fix the hosts in sinks.redis.url"):
        connect_redis(f"redis+sentinel://127.0.0.1:{port}/segmaster", connect_timeout=1.0)


def test_the_sentinels_own_password_is_set_apart_from_the_masters(tmp_path):
    with SentinelGroup(tmp_path / "ha", master_password="master-pw", sentinel_password="sentinel-pw") as group:
        url = group.url(login=":master-pw@")
        for auth in (None, SentinelAuth(password="master-pw")):
            with pytest.raises(SinkError) as refused:
                connect_redis(url, sentinel=auth)
            assert str(refused.value).startswith(f"the sentinel at 127.0.0.1:{group.sentinels[0].port} refused the "
                                                 "login")
            assert "set the sentinels' own password, sinks.redis.sentinel.password" in str(refused.value)
            assert "master-pw" not in str(refused.value)
            # found by release QA: with no password, Redis's whole HELLO explanation sat in the middle
            assert auth is not None or "refused the login (no password given) — " in str(refused.value)
        client = connect_redis(url, sentinel=SentinelAuth(password="sentinel-pw"))
        assert client.set("k", "v") and redis_address(client).startswith(f"redis://127.0.0.1:{group.master.port}")
        client.close()

        group.master.client(password="master-pw").xadd("segstream:cam0:frames", _wire(0))
        shown = cli("tail", "segstream:cam0:frames", "--url", url, "--count", "1",
                    env={"REDIS_SENTINEL_PASSWORD": "sentinel-pw"})
        assert shown.returncode == 0, shown.stderr
        assert "frame=0" in shown.stdout


def _wire(index: int) -> dict:
    from segstream.connectors.redis_wire import to_wire

    return to_wire(tiny_scene("cam0", index), "rle")


def test_a_run_publishing_through_sentinel_rides_out_the_masters_death(tmp_path):
    with SentinelGroup(tmp_path / "ha") as group:
        config = camera_run_config(
            tmp_path, f"{{url: '{group.url()}', max_backlog: 200, pipeline_size: 4, reconnect_max_s: 0.2}}", 20, 120)
        checked = cli("validate", str(config), "--connect")
        assert checked.returncode == 0, checked.stderr
        assert f"127.0.0.1:{group.master.port} (Sentinel master 'segmaster')" in checked.stdout + checked.stderr
        run = subprocess.Popen([sys.executable, "-m", "segstream.pipeline.cli", "run", str(config)],
                               env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
        try:
            until(lambda: group.replica.client().xlen("segstream:cam0:frames") >= 20, timeout_s=120)
            group.master.kill()
            _, err = run.communicate(timeout=120)
        finally:
            if run.poll() is None:
                run.kill()
        assert "Traceback" not in err
        assert run.returncode == 0, err  # every entry written reached the promoted replica: nothing lost
        assert f"the master is now redis://127.0.0.1:{group.replica.port}" in err
        assert re.search(r"redis connected, backlog 0/200 \(0.0 MB\), peak \d+, 1 reconnect", err), "the outage counted"
        published, decoded, dropped, _ = _summary(err)
        frames = frames_on(group.replica)
        assert decoded == 120 and published + dropped == decoded
        assert len(set(frames)) == published and len(set(range(decoded)) - set(frames)) == dropped, \
            "every frame on the master Sentinel promoted, but those the run counted dropped (a slow CPU: queue_full)"


def test_a_master_without_a_replica_in_sync_refuses_writes_for_now_and_the_backlog_rides_it_out(group, caplog):
    # min-replicas-to-write: what bounds the loss at a failover; its NOREPLICAS must not end the run
    group.master.client().config_set("min-replicas-max-lag", 1)
    group.master.client().config_set("min-replicas-to-write", 1)
    publisher = publisher_for(group.url(), max_backlog=500)
    publisher.publish(tiny_scene("cam0", 0))
    group.replica.kill()
    with caplog.at_level(logging.WARNING, logger="segstream.connectors.redis_sink"):
        until(lambda: "refusing writes" in publisher.status()["line"],
              step=lambda: publisher.publish(tiny_scene("cam0", 1)))
        assert "fewer replicas in sync than its min-replicas-to-write" in caplog.text
        group.replica.start()
        until(lambda: publisher.backlog == 0 and "refusing" not in publisher.status()["line"], step=publisher.poll)
    assert frames_on(group.master)[0] == 0 and set(frames_on(group.master)[1:]) == {1}
    assert publisher.status()["dropped"] == {} and publisher.data_losses == 0
    publisher.close()


def test_tls_reaches_the_sentinels_and_the_master_and_a_failover_keeps_it(tmp_path):
    from segstream.connectors.redis_connection import TlsFiles
    from tests.redis_servers import make_certificates

    certs = make_certificates(tmp_path / "certs")
    with SentinelGroup(tmp_path / "ha", certs=certs) as group:
        url = group.url()
        assert url.startswith("rediss+sentinel://")
        tls = TlsFiles(str(certs["ca"]))
        with pytest.raises(SinkError, match="not a rediss\\+sentinel:// URL"):
            connect_redis(url.replace("rediss+", "redis+"), tls=tls)
        client = connect_redis(url, tls=tls, connect_timeout=1.0, socket_timeout=2.0)
        assert redis_address(client) == f"rediss://127.0.0.1:{group.master.port} (Sentinel master 'segmaster')"
        publisher = RedisPublisher(client, max_batch_delay_s=0, reconnect_max_s=0.2)
        publisher.publish(tiny_scene("cam0", 0))
        group.master.kill()
        until(lambda: publisher.reconnects == 1 and publisher.backlog == 0,
              step=lambda: (publisher.publish(tiny_scene("cam0", 1)), publisher.poll()))
        assert redis_address(client).startswith(f"rediss://127.0.0.1:{group.replica.port} ")
        publisher.close()


def test_a_consumer_following_a_stream_goes_on_reading_from_the_promoted_replica(group, caplog):
    import threading

    group.master.client().xadd("segstream:cam0:frames", _wire(0))
    until(lambda: group.replica.client().xlen("segstream:cam0:frames") == 1)
    subscription = connect(group.url(), max_block_ms=500, reconnect_max_s=0.3).frames("cam0", start="0")
    read = []

    def follow():
        for entry in subscription:
            read.append(entry.frame)
            if entry.frame == 1:
                return

    with caplog.at_level(logging.WARNING, logger="segstream.connectors.redis_reader"):
        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        until(lambda: read == [0])
        group.master.kill()
        until(lambda: group.master_port() == group.replica.port)
        group.replica.client().xadd("segstream:cam0:frames", _wire(1))
        follower.join(timeout=20)
    assert read == [0, 1]
    assert f"reconnected to Redis at redis://127.0.0.1:{group.replica.port} (Sentinel master 'segmaster')" in caplog.text
