"""What a Redis that answers but refuses writes does to a run: out of memory and a read-only
replica are ridden out like an outage; a refusal for good (no permission) ends publishing; either
way a refused entry is counted dropped (``sink_refused``), never written. And a Redis back from an
outage without its data is said so."""

from __future__ import annotations

import logging
import re
import shutil
import time

import pytest

from segstream.connectors.errors import SinkError
from segstream.connectors.redis_connection import connect_redis
from segstream.connectors.redis_sink import RedisPublisher
from tests.redis_servers import RedisProcess, free_port
from tests.test_redis_outage import _summary, camera_run_config, cli_run, frames_in, publisher_for, wait_until
from tests.test_redis_sink import tiny_scene

OUT_OF_MEMORY = ("Redis is out of memory (maxmemory), and refuses XADD before its MAXLEN trims anything: trim the "
                 "stream by hand (XTRIM <stream> MAXLEN <n>) or raise maxmemory (a lower sinks.redis.maxlen or "
                 "max_age_s takes effect only once writes go through again)")
READ_ONLY = "the server is a read-only replica: point sinks.redis.url at the primary"


@pytest.fixture
def server(tmp_path):
    with RedisProcess(tmp_path / "redis", ["--maxmemory-policy", "noeviction"]) as process:
        yield process


@pytest.fixture
def caplog(caplog):
    """The publisher's warnings, even after the CLI's logging setup (run by other tests) stopped
    their propagation."""
    logger = logging.getLogger("segstream.connectors.redis_sink")
    logger.addHandler(caplog.handler)
    logger.propagate = False  # each record once, however the CLI's setup left the loggers above
    yield caplog
    logger.propagate = True
    logger.removeHandler(caplog.handler)


def warnings_of(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


@pytest.mark.parametrize("filled", ["while publishing", "before the start"])
def test_a_redis_out_of_memory_keeps_the_entries_and_sends_them_once_it_takes_writes(server, caplog, filled):
    """Before the start too: found by a Redis operator, a Redis already full (maxmemory, noeviction)
    failed the start ("refused MULTI/EXEC: command not allowed when used memory > 'maxmemory'"),
    while a run already going rode the same state out with its backlog."""
    if filled == "before the start":
        server.client().config_set("maxmemory", "1")
        publisher = RedisPublisher.from_config(server.url, None, reconnect_max_s=0.2, max_batch_delay_s=0)
        written, dropped = [], []
        publisher.on_written = written.extend
        publisher.on_dropped = lambda results, reason: dropped.extend((r.index, reason) for r in results)
    else:
        publisher, written, dropped = publisher_for(server, reconnect_max_s=0.2)
    publisher.publish(tiny_scene("cam0", 0))
    server.client().config_set("maxmemory", "1")
    for index in range(1, 4):
        publisher.publish(tiny_scene("cam0", index))  # never raises
        publisher.poll()
    assert "refusing writes" in publisher.status()["line"] and publisher.backlog == 3 + (filled == "before the start")
    assert warnings_of(caplog, "refuses writes") == [
        f"Redis at {server.url} refuses writes: {OUT_OF_MEMORY} — publishing continues into a backlog of up to "
        "1000 entries, sent when Redis takes them again"
    ]  # once, however often it is retried
    server.client().config_set("maxmemory", "0")
    wait_until(lambda: publisher.backlog == 0, step=publisher.poll)
    assert frames_in(server) == [0, 1, 2, 3] and [r.index for r in written] == [0, 1, 2, 3] and dropped == []
    assert len(warnings_of(caplog, "takes writes again")) == 1 and publisher.status()["connected"]
    assert publisher.reconnects == 0  # a refusal is no lost connection
    publisher.close()


def test_a_read_only_replica_at_the_end_drops_what_waits_as_refused(server, caplog):
    publisher, written, dropped = publisher_for(server, reconnect_max_s=0.2, drain_timeout_s=0.5)
    server.client().execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    for index in range(2):
        publisher.publish(tiny_scene("cam0", index))
    publisher.flush()
    assert written == [] and dropped == [(0, "sink_refused"), (1, "sink_refused")]
    assert publisher.status()["dropped"] == {"sink_refused": 2}
    assert warnings_of(caplog, READ_ONLY) and warnings_of(caplog, "still refused writes: 2 waiting entries dropped")
    publisher.close()


def test_entries_refused_for_good_are_dropped_not_written_and_the_error_quotes_no_fields(server):
    publisher, written, dropped = publisher_for(server)
    publisher.publish(tiny_scene("cam0", 0))
    server.client().execute_command("ACL", "SETUSER", "default", "-xadd")
    with pytest.raises(SinkError) as refused:
        publisher.publish(tiny_scene("cam0", 1))
    assert [r.index for r in written] == [0] and dropped == [(1, "sink_refused")]
    assert "no permissions to run the 'xadd' command" in str(refused.value)
    assert "Command #" not in str(refused.value) and "label" not in str(refused.value)
    publisher.close()  # nothing is sent again, nothing raised again


def test_too_few_replicas_at_start_are_ridden_out_and_the_streams_still_expire_by_age(server, caplog):
    """NOREPLICAS (min-replicas-to-write unmet) at start: the run starts, and the PEXPIRE it asks
    first, refused for now as the writes are, does not turn expiry off for the whole run."""
    admin = server.client()
    admin.config_set("min-replicas-to-write", "1")
    publisher = RedisPublisher.from_config(server.url, None, reconnect_max_s=0.2, max_batch_delay_s=0, max_age_s=60)
    publisher.publish(tiny_scene("cam0", 0))
    publisher.poll()
    assert publisher.backlog == 1 and "fewer replicas in sync" in warnings_of(caplog, "refuses writes")[0]
    admin.config_set("min-replicas-to-write", "0")
    wait_until(lambda: publisher.backlog == 0, step=publisher.poll)
    assert frames_in(server) == [0] and 0 < admin.pttl("segstream:cam0:frames") <= 60_000
    assert not warnings_of(caplog, "PEXPIRE") and publisher.expiry_refused == 0
    publisher.close()


def test_a_run_started_on_a_full_redis_starts_and_sends_its_backlog_once_redis_takes_writes(server, tmp_path):
    """Found by a Redis operator: `segstream run` on a Redis already full said "refused MULTI/EXEC"
    and exited 1 (sinks.redis.start_wait_s did not help). It starts, warns once with what to do,
    and writes every result once Redis has room."""
    admin = server.client()
    admin.config_set("maxmemory", "1")
    config = camera_run_config(tmp_path, f"{{url: '{server.url}', pipeline_size: 4, reconnect_max_s: 0.2, "
                                         "drain_timeout_s: 30}", 20, 40)
    process = cli_run(config)
    said = []
    try:
        for line in process.stderr:  # the run's lines, until it says Redis refuses its writes
            said.append(line)
            if "refuses writes" in line:
                admin.config_set("maxmemory", "0")
                break
        _, rest = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    err = "".join(said) + rest
    assert process.returncode == 0 and "Traceback" not in err, err
    assert [line for line in said if "refuses writes" in line][0].rstrip().endswith(
        f"Redis at {server.url} refuses writes: {OUT_OF_MEMORY} — publishing continues into a backlog of up to 1000 "
        "entries, sent when Redis takes them again"), err
    published, decoded, dropped, reasons = _summary(err)
    # what the sink took it wrote; a loaded machine may drop frames before the model (queue_full)
    assert published == admin.xlen("segstream:cam0:frames") and published + dropped == decoded == 40, err
    assert set(reasons) <= {"queue_full"} and "takes writes again" in err, err


def test_redis_back_without_its_data_is_warned_and_counted_at_each_loss(server, caplog):
    # Found probing: a second loss in one run was not warned (once per stream for the whole run) nor counted.
    publisher, _, _ = publisher_for(server)
    losses = []
    publisher.on_data_lost = lambda frames, events: losses.append((frames, events))
    for source in ("cam0", "cam1"):
        publisher.publish(tiny_scene(source, 0))
    server.kill()
    publisher.publish(tiny_scene("cam0", 1))
    server.start()  # without its data: it keeps none
    wait_until(lambda: publisher.backlog == 0, step=publisher.poll)
    lost = warnings_of(caplog, "lost entries while it was away")
    assert len(lost) == 2 and {"segstream:cam0:frames", "segstream:cam1:frames"} == {
        stream for stream in ("segstream:cam0:frames", "segstream:cam1:frames") for line in lost if stream in line}
    assert publisher.data_losses == 1 and losses == [(2, 0)]  # cam0:0 and cam1:0
    server.kill()  # cam0:1, written after the first loss, is lost too; cam1 has nothing new to lose
    publisher.publish(tiny_scene("cam0", 2))
    server.start()
    wait_until(lambda: publisher.backlog == 0, step=publisher.poll)
    lost = warnings_of(caplog, "lost entries while it was away")
    assert len(lost) == 3 and "segstream:cam0:frames" in lost[2]
    assert publisher.data_losses == 2 and losses == [(2, 0), (1, 0)]
    assert "lost 3 written entries (3 frames, 0 events) in 2 losses" in publisher.status()["line"]
    publisher.close()


def run_and_meddle(server: RedisProcess, tmp_path, redis_options: str, meddle) -> tuple[int, str]:
    """``segstream run`` of 40 realtime synthetic frames into ``server``; once 5 entries are in,
    ``meddle(client)``. The run's exit status and stderr."""
    config = camera_run_config(tmp_path, f"{{url: '{server.url}', pipeline_size: 4, {redis_options}}}", 20, 40)
    process = cli_run(config)
    try:
        client = server.client()
        wait_until(lambda: client.xlen("segstream:cam0:frames") >= 5, timeout_s=120)
        meddle(client)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, err


def test_a_run_counts_redis_data_losses_in_its_metrics_and_summary(server):
    import threading

    from segstream.connectors.synthetic import SyntheticSource
    from segstream.pipeline.metrics import RunMetrics
    from segstream.pipeline.monitoring import OpsServer
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import ColourSegmenter
    from tests.test_monitoring import get, samples

    publisher = RedisPublisher.from_config(server.url, None, reconnect_max_s=0.2, drain_timeout_s=20)
    metrics = RunMetrics()
    runtime = Runtime([SyntheticSource("cam0", 96, 64, 20.0, 0, 80, realtime=True)], ColourSegmenter(), [publisher],
                      batch_size=2, metrics=metrics, progress=None)
    reports = []
    running = threading.Thread(target=lambda: reports.append(runtime.run()))
    running.start()
    wait_until(lambda: server.client().xlen("segstream:cam0:frames") >= 10, timeout_s=60)
    server.kill()
    time.sleep(1)  # the run sees the outage
    server.start()  # empty
    running.join(120)
    ops = OpsServer(metrics, "127.0.0.1", 0, stall_after_s=5)
    try:
        status, page = get(ops.url + "/metrics")
    finally:
        ops.close()
    lost = reports[0].sinks["redis"]["entries_lost"]
    assert status == 200 and samples(page)[("segstream_sink_data_loss_total", (("sink", "redis"),))] == 1
    assert lost["frames"] >= 10 and not reports[0].sinks["redis"]["entries_lost_at_least"]
    for kind in ("frames", "events"):
        assert samples(page)[("segstream_sink_entries_lost_total", (("kind", kind), ("sink", "redis")))] == lost[kind]
    assert (f"lost {lost['frames'] + lost['events']} written entries ({lost['frames']} frames, {lost['events']} "
            "event") in reports[0].summary() and reports[0].data_losses == {"redis": 1}


def test_a_run_whose_redis_lost_what_it_wrote_exits_saying_its_output_is_incomplete(server, tmp_path):
    # Found reviewing: every result was written once, so the run exited 0 while the entries were
    # gone from Redis; a job runner or an archive's script reads only the exit status.
    def restart_without_data(client):
        server.kill()
        server.start()

    returncode, err = run_and_meddle(server, tmp_path, "drain_timeout_s: 20, reconnect_max_s: 0.2",
                                     restart_without_data)
    assert returncode == 1 and "Traceback" not in err, err
    told = re.search(r"lost \d+ written entries \((\d+) frames, (\d+) events?\) in 1 loss", err)
    assert told and int(told[1]) >= 5, err
    assert err.strip().splitlines()[-1].endswith(
        f"the output is incomplete: entries this run had written were lost from the store (redis {told[1]} frames and "
        f"{told[2]} event{'s' if told[2] != '1' else ''} in 1 loss: restarted without persistence, failed over to a "
        "replica that lacked them, flushed, evicted or deleted); the warnings "
        "above name the streams"), err


def test_redis_back_with_its_data_warns_of_no_loss(tmp_path, caplog):
    with RedisProcess(tmp_path / "redis", ["--appendonly", "yes", "--appendfsync", "always"]) as server:
        publisher, _, _ = publisher_for(server)
        publisher.publish(tiny_scene("cam0", 0))
        server.kill()
        publisher.publish(tiny_scene("cam0", 1))
        server.start()
        wait_until(lambda: publisher.backlog == 0, step=publisher.poll)
        assert frames_in(server) == [0, 1] and warnings_of(caplog, "is back after")
        assert not warnings_of(caplog, "lost entries")
        publisher.close()


def test_a_run_whose_redis_fills_up_counts_what_it_refused_and_exits_incomplete(server, tmp_path):
    # Found by chaos testing: the run said "77 frames published" with 75 in the stream.
    returncode, err = run_and_meddle(server, tmp_path, "drain_timeout_s: 1, reconnect_max_s: 0.5",
                                     lambda client: client.config_set("maxmemory", "1"))
    assert returncode == 1 and "Traceback" not in err, err
    client = server.client()
    published, decoded, dropped, reasons = _summary(err)
    assert published == client.xlen("segstream:cam0:frames") and published + dropped == decoded == 40
    assert reasons["sink_refused"] > 0 and OUT_OF_MEMORY in err
    # the line counts what the sink took and never wrote; a loaded machine may also drop frames
    # before the model (queue_full), which the sink never had (CI once dropped 12 so)
    never_written = sum(n for reason, n in reasons.items() if reason.startswith("sink_"))
    taken = decoded - (dropped - never_written)
    assert err.strip().splitlines()[-1].startswith(
        f"segstream: error: the output is incomplete: {never_written} of {taken} results were never written by a sink "
        f"(sink_refused {reasons['sink_refused']}")


def test_a_backlog_longer_than_maxlen_trimmed_by_our_own_maxlen_is_not_reported_lost(tmp_path, caplog):
    """Found reviewing: after a refusal spell the check for lost entries ran after the first batch
    of the backlog, whose MAXLEN ~ had trimmed the entry the check looks for."""
    with RedisProcess(tmp_path / "redis", ["--maxmemory-policy", "noeviction", "--stream-node-max-entries", "4"]) as server:
        publisher, written, dropped = publisher_for(server, maxlen=5, pipeline_size=50, reconnect_max_s=0.2)
        publisher.publish(tiny_scene("cam0", 0))
        server.client().config_set("maxmemory", "1")
        for index in range(1, 31):
            publisher.publish(tiny_scene("cam0", index))
            publisher.poll()
        assert publisher.backlog == 30
        server.client().config_set("maxmemory", "0")
        wait_until(lambda: publisher.backlog == 0, step=publisher.poll)
        kept = frames_in(server)
        assert len(written) == 31 and dropped == [] and 0 not in kept and kept[-1] == 30  # trimmed, by us
        assert warnings_of(caplog, "takes writes again") and not warnings_of(caplog, "lost entries")
        publisher.close()


def test_a_redis_restarted_without_its_data_during_a_refusal_is_still_reported_lost(server, caplog):
    publisher, _, _ = publisher_for(server, maxlen=5, pipeline_size=50, reconnect_max_s=0.2)
    publisher.publish(tiny_scene("cam0", 0))
    server.client().config_set("maxmemory", "1")
    for index in range(1, 11):
        publisher.publish(tiny_scene("cam0", index))
        publisher.poll()
    assert publisher.backlog == 10
    server.kill()
    server.start()  # without its data, and without the maxmemory set at run time
    wait_until(lambda: publisher.backlog == 0, step=publisher.poll)
    assert len(warnings_of(caplog, "lost entries while it was away")) == 1
    publisher.close()


def test_a_redis_restarted_with_a_password_is_said_so_as_at_start(server, caplog):
    # Found probing: the reconnect attempts said "HELLO must be called with the client already authenticated".
    publisher, _, _ = publisher_for(server, reconnect_max_s=0.2)
    publisher.publish(tiny_scene("cam0", 0))
    server.kill()
    publisher.publish(tiny_scene("cam0", 1))
    server.args = ["--requirepass", "s3cret"]
    server.start()
    wanted = (f"Redis at {server.url} wants a password and none was given: ")
    wait_until(lambda: warnings_of(caplog, wanted), step=publisher.poll)
    line = warnings_of(caplog, wanted)[0]
    assert line.endswith("— set sinks.redis.password (REDIS_PASSWORD) (and the user, sinks.redis.username); "
                         "publishing continues into the backlog, retrying"), line
    assert "HELLO" not in line and wanted in publisher.status()["line"]
    time.sleep(1)  # more attempts, refused alike: said once
    assert len(warnings_of(caplog, wanted)) == 1
    publisher.close()


def test_a_redis_restarted_with_another_password_is_said_so_as_at_start(server, caplog):
    client = connect_redis(server.url, connect_timeout=1.0, socket_timeout=2.0)
    client.config_set("requirepass", "old")
    publisher = RedisPublisher(connect_redis(server.url, "old", socket_timeout=2.0), max_batch_delay_s=0,
                               reconnect_max_s=0.2)
    publisher.publish(tiny_scene("cam0", 0))
    server.kill()
    publisher.publish(tiny_scene("cam0", 1))
    server.args = ["--requirepass", "new"]
    server.start()
    wanted = f"Redis at {server.url} refused the credentials of the default user: "
    wait_until(lambda: warnings_of(caplog, wanted), step=publisher.poll)
    assert warnings_of(caplog, wanted)[0].endswith(
        "— set the right password, sinks.redis.password (REDIS_PASSWORD), and user, sinks.redis.username; "
        "publishing continues into the backlog, retrying")
    publisher.close()


def test_a_full_backlog_is_warned_once_per_outage_and_its_drops_told_when_redis_is_back(server, caplog):
    # Found probing: the sink_backlog drops showed only in INFO status lines.
    publisher, _, dropped = publisher_for(server, max_backlog=20, reconnect_max_s=0.2)
    for outage in range(2):
        server.kill()
        for index in range(50):
            publisher.publish(tiny_scene("cam0", 100 * outage + index))
        full = warnings_of(caplog, "the backlog is full")
        assert len(full) == outage + 1 and full[-1] == (
            f"Redis at {server.url}: the backlog is full (max_backlog 20 entries, max_backlog_mb 256): dropping the "
            "oldest results (events last) until Redis takes writes again, counted as sink_backlog")
        server.start()
        wait_until(lambda: publisher.backlog == 0, step=publisher.poll)
        assert warnings_of(caplog, "is back after")[-1].endswith(
            "sending a backlog of 20 entries (30 older ones were dropped, the backlog being full)")
    assert len(dropped) == 60
    publisher.close()


def test_redis_restarted_empty_between_two_writes_is_a_loss_too(server, caplog):
    # Found fixing the above: redis-py reconnects by itself when Redis restarted between two writes, so no
    # outage was seen and the loss went unsaid.
    publisher, written, _ = publisher_for(server)
    publisher.publish(tiny_scene("cam0", 0))
    publisher.publish(tiny_scene("cam1", 0))
    server.kill()
    server.start()  # empty, and back before the next write
    publisher.publish(tiny_scene("cam0", 1))
    assert publisher.reconnects == 0 and [r.index for r in written] == [0, 0, 1], "no outage was seen"
    lost = warnings_of(caplog, "lost entries while it was away")
    assert len(lost) == 2 and publisher.data_losses == 1
    publisher.publish(tiny_scene("cam0", 2))  # the same session: nothing more to say
    assert len(warnings_of(caplog, "lost entries")) == 2 and publisher.data_losses == 1
    publisher.close()


def test_a_redis_that_evicts_keys_is_warned_at_start_and_its_evicted_streams_counted_lost(tmp_path, caplog):
    # Found probing: with maxmemory-policy allkeys-lru Redis evicted the streams mid-run and the run said "0 dropped".
    with RedisProcess(tmp_path / "redis", ["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru",
                                              "--maxmemory-samples", "64"]) as server:
        publisher, written, _ = publisher_for(server)
        losses = []
        publisher.on_data_lost = lambda frames, events: losses.append((frames, events))
        assert len(warnings_of(caplog, "maxmemory-policy allkeys-lru: once full it evicts whole keys")) == 1
        for index in range(3):
            publisher.publish(tiny_scene("cam0", index))
        publisher.publish(tiny_scene("cam1", 0))
        admin = server.client()
        # Filled up by other keys: the least recently used keys (all sampled), the streams idle for 2 s, go first.
        admin.config_set("maxmemory", str(admin.info("memory")["used_memory"] + 64 * 1024))
        time.sleep(2)  # Redis's LRU clock counts whole seconds
        for index in range(200):
            admin.set(f"filler{index}", b"x" * 4096)
            if admin.info("stats")["evicted_keys"] >= 2:
                break
        assert admin.keys("segstream:*") == []  # KEYS, unlike EXISTS, leaves the keys' LRU clocks alone
        publisher.publish(tiny_scene("cam0", 3))
        lost = warnings_of(caplog, "lost entries")
        assert len(lost) == 1 and "segstream:cam0:frames was found empty" in lost[0]
        assert "Redis evicted it (maxmemory-policy allkeys-lru; evicted_keys went from 0 when this run connected" in lost[0]
        assert "noeviction" in lost[0]
        assert publisher.data_losses == 1 and losses == [(3, 0)] and [r.index for r in written] == [0, 1, 2, 0, 3]
        assert "lost 3 written entries (3 frames, 0 events) in 1 loss" in publisher.status()["line"]
        publisher.publish(tiny_scene("cam0", 4))  # kept: nothing more to say
        assert publisher.data_losses == 1
        publisher.publish(tiny_scene("cam1", 1))  # the same eviction, found at this stream's next write
        lost = warnings_of(caplog, "lost entries")
        assert len(lost) == 2 and "segstream:cam1:frames was found empty" in lost[1] and "Redis evicted it" in lost[1]
        publisher.close()


def test_a_stream_evicted_after_the_last_write_is_counted_lost_at_close(tmp_path, caplog):
    with RedisProcess(tmp_path / "redis", ["--maxmemory-policy", "allkeys-lru"]) as server:
        publisher, _, _ = publisher_for(server)
        assert not warnings_of(caplog, "evicts whole keys")  # no maxmemory: nothing is evicted
        publisher.publish(tiny_scene("cam0", 0))
        server.client().delete("segstream:cam0:frames")
        publisher.close()
        lost = warnings_of(caplog, "lost entries")
        assert len(lost) == 1 and "it was deleted or emptied" in lost[0] and publisher.data_losses == 1


def test_a_redis_that_evicts_only_keys_with_a_ttl_is_not_warned(tmp_path, caplog):
    with RedisProcess(tmp_path / "redis", ["--maxmemory", "100mb", "--maxmemory-policy", "volatile-lru"]) as server:
        publisher, _, _ = publisher_for(server)
        publisher.publish(tiny_scene("cam0", 0))
        publisher.close()
        assert not warnings_of(caplog, "evicts whole keys") and not warnings_of(caplog, "lost entries")


def test_a_redis_that_cannot_save_its_snapshots_is_ridden_out_and_takes_the_backlog_once_it_saves(tmp_path, caplog):
    # Found probing: a Redis whose disk was full answered MISCONF and the run ended with an error.
    with RedisProcess(tmp_path / "redis", ["--save", "3600 1", "--enable-protected-configs", "yes"]) as server:
        publisher, written, dropped = publisher_for(server, reconnect_max_s=0.2)
        publisher.publish(tiny_scene("cam0", 0))
        admin = server.client()
        shutil.rmtree(server.directory)  # where it saves is gone: its snapshot fails, as on a full disk
        admin.bgsave()
        wait_until(lambda: admin.info("persistence")["rdb_bgsave_in_progress"] == 0
                   and admin.info("persistence")["rdb_last_bgsave_status"] == "err")
        for index in range(1, 4):
            publisher.publish(tiny_scene("cam0", index))  # never raises
            publisher.poll()
        assert "refusing writes" in publisher.status()["line"] and publisher.backlog == 3
        refusal = warnings_of(caplog, "refuses writes")
        assert len(refusal) == 1 and "cannot save its RDB snapshots (its disk full" in refusal[0]
        saves = tmp_path / "redis-saves"
        saves.mkdir()
        admin.config_set("dir", str(saves))  # space again
        admin.bgsave()
        wait_until(lambda: publisher.backlog == 0, step=publisher.poll)
        assert frames_in(server) == [0, 1, 2, 3] and [r.index for r in written] == [0, 1, 2, 3] and dropped == []
        assert len(warnings_of(caplog, "takes writes again")) == 1
        publisher.close()


def test_a_removed_camera_s_streams_may_be_erased_without_counting_as_a_loss(server, tmp_path):
    # Found probing as a data-protection officer: deleting the streams of a camera already
    # removed by a reload (an erasure request) made the run count a loss and exit 1
    import os
    import threading

    from segstream.connectors.files_sink import FilesSink
    from segstream.connectors.synthetic import SyntheticSource
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import ColourSegmenter

    publisher = RedisPublisher.from_config(server.url, None)
    files = FilesSink(tmp_path / "out")
    runtime = Runtime([SyntheticSource(name, 96, 64, 20.0, 0, None, realtime=True) for name in ("stays", "gone")],
                      ColourSegmenter(), [publisher, files], batch_size=2, progress=None, publish_states=True)
    reports = []
    running = threading.Thread(target=lambda: reports.append(runtime.run()))
    running.start()
    client = server.client()
    wait_until(lambda: client.xlen("segstream:gone:frames") >= 5, timeout_s=60)
    assert runtime.remove_source("gone", wait_s=20)
    open_files = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
    assert str(tmp_path / "out" / "gone.jsonl") not in open_files, "a removed camera's files are closed"
    assert client.delete("segstream:gone:frames", "segstream:gone:events") == 2
    (tmp_path / "out" / "gone.jsonl").unlink()
    wait_until(lambda: client.xlen("segstream:stays:frames") >= 40, timeout_s=60)
    client.delete("segstream:stays:events")  # a camera still running: its loss counts as before
    wait_until(lambda: client.xlen("segstream:stays:frames") >= 60, timeout_s=60)
    runtime.stop()
    running.join(60)
    assert publisher.data_losses == 1 and reports[0].data_losses == {"redis": 1}
    assert files.lost_with_files == 0


def test_a_camera_removed_while_redis_is_away_may_be_erased_once_its_backlog_is_in(server):
    # Found in review: its backlog, written after the outage, had the run watch its streams again
    publisher = RedisPublisher.from_config(server.url, None, reconnect_max_s=0.2, drain_timeout_s=20)
    publisher.publish(tiny_scene("gone", 0))
    publisher.flush()
    server.kill()
    publisher.publish(tiny_scene("gone", 1))
    publisher.poll()
    publisher.source_removed("gone")  # its last entry waits in the backlog
    server.start()
    wait_until(lambda: publisher.backlog == 0, step=publisher.poll)
    client = server.client()
    assert client.xlen("segstream:gone:frames") == 1
    client.delete("segstream:gone:frames")
    publisher.close()
    assert publisher.data_losses == 0


def test_a_refused_script_command_is_named_without_a_stream_to_grant_it_on():
    # release QA: track_counter's refused EVALSHA read "grant the user EVALSHA on the stream"
    import redis

    from segstream.connectors.redis_reader import _refusal

    error = redis.exceptions.NoPermissionError(
        "this user has no permissions to run the 'evalsha' command")
    said = str(_refusal(error, "tenant1:cam:events", "redis://127.0.0.1:6379", "~tenant1:*"))
    assert "grant the user EVALSHA (ACL: +evalsha)" in said and " on tenant1:cam:events" not in said


def test_a_loss_counts_the_entries_it_took_frames_and_events_apart(server, caplog):
    # Found by an operator: the loss was counted as a time ("lost written entries 1 time"), not as
    # the entries gone.
    from segstream.models.results import Event

    publisher, _, _ = publisher_for(server)
    losses = []
    publisher.on_data_lost = lambda frames, events: losses.append((frames, events))
    for index in range(7):
        publisher.publish(tiny_scene("cam0", index))
    for track in range(3):
        publisher.publish_event(Event("cam0", "track_started", 1.0, {"track_id": track}))
    publisher.flush()
    server.kill()
    server.start()  # without its data
    publisher.publish(tiny_scene("cam0", 7))
    wait_until(lambda: publisher.backlog == 0, step=publisher.poll)
    assert losses == [(7, 3)] and publisher.entries_lost == {"frames": 7, "events": 3}
    assert "lost 10 written entries (7 frames, 3 events) in 1 loss" in publisher.status()["line"]
    lost = warnings_of(caplog, "lost entries while it was away")
    assert any("segstream:cam0:frames" in line and "so 7 entries counted as written are gone" in line for line in lost)
    assert any("segstream:cam0:events" in line and "so 3 entries counted as written are gone" in line for line in lost)
    publisher.close()


def test_a_redis_back_with_an_older_snapshot_counts_only_the_entries_after_it(server, caplog):
    # Redis restarted from its last RDB snapshot: the entries before it are still there, not lost.
    from segstream.models.results import Event

    publisher, _, _ = publisher_for(server)
    for index in range(5):
        publisher.publish(tiny_scene("cam0", index))
    publisher.publish_event(Event("cam0", "track_started", 1.0, {"track_id": 1}))
    publisher.flush()
    server.client().save()
    for index in range(5, 9):
        publisher.publish(tiny_scene("cam0", index))
    publisher.publish_event(Event("cam0", "track_ended", 2.0, {"track_id": 1}))
    publisher.publish_event(Event("cam0", "track_started", 2.0, {"track_id": 2}))
    publisher.flush()
    server.kill()
    server.start()  # loads the snapshot: frames 0-4 and the first event
    assert frames_in(server) == [0, 1, 2, 3, 4]
    publisher.publish(tiny_scene("cam0", 9))
    wait_until(lambda: publisher.backlog == 0, step=publisher.poll)
    assert publisher.entries_lost == {"frames": 4, "events": 2} and not publisher.entries_lost_at_least
    assert "lost 6 written entries (4 frames, 2 events) in 1 loss" in publisher.status()["line"]
    publisher.close()


def test_a_loss_of_more_than_maxlen_entries_is_counted_as_at_least_maxlen(server, caplog):
    # MAXLEN ~ keeps at least maxlen entries, and more at Redis's choice: those beyond it are no loss
    # to count, and how many Redis still held is unknown.
    publisher, _, _ = publisher_for(server, maxlen=5)
    for index in range(12):
        publisher.publish(tiny_scene("cam0", index))
    publisher.flush()
    server.kill()
    server.start()
    publisher.publish(tiny_scene("cam0", 12))
    wait_until(lambda: publisher.backlog == 0, step=publisher.poll)
    assert publisher.entries_lost == {"frames": 5, "events": 0} and publisher.entries_lost_at_least
    assert "lost at least 5 written entries (5 frames, 0 events) in 1 loss" in publisher.status()["line"]
    assert any("so at least 5 entries counted as written" in line for line in warnings_of(caplog, "lost entries"))
    publisher.close()


class _Announces:
    """A per-source stage that attaches one event to each result: events the sinks must account for."""

    def __init__(self, made: list):
        self.made = made

    def process(self, result):
        from segstream.models.results import Event

        result.events.append(Event(result.source, "note", result.capture_ts, {"frame": result.index}))
        self.made.append(result.index)
        return result


def test_events_never_handed_to_a_sink_that_refused_for_good_are_counted(server):
    # Found by an operator: after Redis refused writes for good (an ACL without XADD) the events still
    # on their way to the sinks were counted nowhere.
    import threading

    from segstream.connectors.synthetic import SyntheticSource
    from segstream.pipeline.metrics import RunMetrics
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import ColourSegmenter

    made: list[int] = []
    publisher = RedisPublisher.from_config(server.url, None, pipeline_size=4, drain_timeout_s=1)
    runtime = Runtime([SyntheticSource("cam0", 96, 64, 40.0, 0, 400, realtime=True)], ColourSegmenter(), [publisher],
                      batch_size=2, metrics=RunMetrics(), progress=None, stages=[lambda source: _Announces(made)])
    outcome = []
    running = threading.Thread(target=lambda: outcome.append(_outcome(runtime.run)))
    running.start()
    admin = server.client()
    wait_until(lambda: admin.xlen("segstream:cam0:events") >= 10, timeout_s=60)
    admin.execute_command("ACL", "SETUSER", "default", "-xadd")
    running.join(60)
    assert isinstance(outcome[0], SinkError), outcome
    report = runtime.report(1.0)
    status = report.sinks["redis"]
    written = sum(fields[b"event"] == b"note" for _, fields in admin.xrange("segstream:cam0:events"))
    # the states the run emits (none from this source) would be counted too: every note is accounted for
    assert written + status["events_dropped"] + report.events_abandoned == len(made) > written, (
        written, status, report.events_abandoned, len(made))
    abandoned = report.events_abandoned
    assert not abandoned or f"{abandoned} event{'s' if abandoned != 1 else ''} abandoned" in report.summary()
    assert report.as_dict()["events_abandoned"] == report.events_abandoned


def _outcome(call):
    try:
        return call()
    except Exception as error:
        return error


def test_the_event_a_refusal_struck_is_counted_once_dropped_not_also_abandoned(server):
    # Found flaking above: the refusal came while the publisher took a note (the note filled its batch,
    # which it sent at once and which Redis refused): the publisher counted the note dropped and the
    # runtime counted it abandoned too.
    from segstream.connectors.synthetic import SyntheticSource
    from segstream.pipeline.metrics import RunMetrics
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import ColourSegmenter

    made: list[int] = []
    publisher = RedisPublisher.from_config(server.url, None, pipeline_size=2, drain_timeout_s=1)
    server.client().execute_command("ACL", "SETUSER", "default", "-xadd")  # the frame waits; its note sends both
    runtime = Runtime([SyntheticSource("cam0", 96, 64, 40.0, 0, 3)], ColourSegmenter(), [publisher],
                      batch_size=1, metrics=RunMetrics(), progress=None, stages=[lambda source: _Announces(made)])
    with pytest.raises(SinkError, match="refused a batch of 2 entries"):
        runtime.run()
    report = runtime.report(1.0)
    # the first note is the publisher's (dropped), the others the stage made ahead never reached it
    assert report.sinks["redis"]["events_dropped"] == 1
    assert 1 + report.events_abandoned == len(made), (report.sinks["redis"], report.events_abandoned, made)


def test_an_event_a_sink_of_one_s_own_failed_on_is_counted_abandoned(server):
    # found reviewing the fix above: the event a sink failed on was taken to be the sink's to count, and a
    # sink of one's own counts nothing: it was counted nowhere
    from segstream.connectors.synthetic import SyntheticSource
    from segstream.pipeline.metrics import RunMetrics
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import ColourSegmenter

    class FailsOnTheSecondEvent:
        name = "webhook"

        def __init__(self):
            self.got = 0

        def publish(self, result): pass

        def publish_event(self, event):
            if event.kind == "note" and self.got:
                raise SinkError("the webhook refused it")
            self.got += event.kind == "note"

        def poll(self): return None
        def flush(self): pass
        def close(self): pass

    made: list[int] = []
    sink = FailsOnTheSecondEvent()
    runtime = Runtime([SyntheticSource("cam0", 96, 64, 40.0, 0, 6)], ColourSegmenter(), [sink], batch_size=1,
                      metrics=RunMetrics(), progress=None, stages=[lambda source: _Announces(made)])
    with pytest.raises(SinkError, match="the webhook refused it"):
        runtime.run()
    assert sink.got == 1 and sink.got + runtime.report(1.0).events_abandoned == len(made), (
        sink.got, runtime.report(1.0).events_abandoned, made)


def test_a_refusal_told_at_a_later_hand_off_counts_that_entry_with_it(server):
    # found reviewing the sink's own sending thread: the refusal of a batch sent in the background is told
    # at the next hand-off; the event handed then was queued uncounted, the runtime counted it abandoned
    # (the sink's count did not move during that call) and the sink counted it again at close
    from tests.test_redis_status import state

    server.client().set("segstream:cam0:frames", "not a stream")  # XADD there: WRONGTYPE, refused for good
    publisher = RedisPublisher(connect_redis(server.url), max_batch_delay_s=0, background=True, status_pattern=None)
    dropped = []
    publisher.on_dropped = lambda results, reason: dropped.extend((r.index, reason) for r in results)
    publisher.publish_event(state("streaming"))
    publisher.flush()
    publisher.publish(tiny_scene("cam0", 0))  # its batch goes out on the sink's thread, and is refused
    wait_until(lambda: publisher._flight.done.is_set())
    before = publisher.events_dropped
    with pytest.raises(SinkError, match="refused 1 of 1 entries"):
        publisher.publish_event(state("reconnecting"))
    assert publisher.events_dropped == before + 1 and publisher.backlog == 0, "counted in that call, not queued"
    publisher.close()
    assert publisher.events_dropped == before + 1 and dropped == [(0, "sink_refused")]
