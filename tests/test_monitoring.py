"""/metrics, /healthz and /readyz of a real run, served over HTTP on loopback; JSON logs."""

import io
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from segstream.connectors.errors import ConfigError
from segstream.connectors.file_source import FileSource
from segstream.connectors.files_sink import FilesSink
from segstream.connectors.synthetic import SyntheticSource
from segstream.pipeline.config import OpsConfig
from segstream.pipeline.metrics import RunMetrics
from segstream.pipeline.monitoring import OpsServer, serve_ops
from segstream.pipeline.runtime import Runtime
from tests.conftest import ColourSegmenter
from tests.live_servers import free_port


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(text: str) -> dict[tuple, float]:
    """(sample name, sorted label items) -> value of every sample on a /metrics page."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def served():
    metrics = RunMetrics()
    server = OpsServer(metrics, "127.0.0.1", 0, stall_after_s=0.5)
    yield metrics, server
    server.close()


def test_every_metrics_counter_equals_the_run_report(served, clip, tmp_path):
    metrics, server = served
    # A live source faster than the model drops frames; an offline file loses none.
    sources = [SyntheticSource("cam", 160, 120, 60.0, 0, 50, realtime=True), FileSource("file", str(clip), max_frames=20)]
    report = Runtime(sources, ColourSegmenter(delay_s=0.03), [FilesSink(tmp_path)], batch_size=2, queue_size=2,
                     metrics=metrics, progress=None).run()
    assert report.sources["cam"].dropped > 0, "the live source must drop frames for the test to mean anything"

    status, page = get(server.url + "/metrics")
    assert status == 200
    values = samples(page)
    for name, source in report.sources.items():
        assert values[("segstream_frames_decoded_total", (("source", name),))] == source.decoded
        assert values[("segstream_frames_published_total", (("source", name),))] == source.published
        assert values[("segstream_decode_errors_total", (("source", name),))] == source.decode_errors
        for reason, count in source.dropped_by.items():
            assert values[("segstream_frames_dropped_total", (("reason", reason), ("source", name)))] == count
    dropped = {k: v for k, v in values.items() if k[0] == "segstream_frames_dropped_total"}
    assert sum(dropped.values()) == report.dropped
    assert values[("segstream_batches_total", ())] == report.batches
    assert values[("segstream_model_frames_total", ())] == report.model_frames
    assert values[("segstream_batch_size_count", ())] == report.batches
    assert values[("segstream_batch_size_sum", ())] == report.model_frames
    # capture to publish per source: a camera's latency is not hidden in the mixture
    for name, source in report.sources.items():
        assert values[("segstream_capture_to_publish_seconds_count", (("source", name),))] == source.published
    assert sum(v for k, v in values.items() if k[0] == "segstream_capture_to_publish_seconds_count") == report.published
    assert set(report.source_latency) == {"cam", "file"}
    for row in report.source_latency.values():
        assert 0 <= row["p50_ms"] <= row["p99_ms"] <= row["max_ms"] <= report.latency_ms_max
    assert values[("segstream_sink_entries_written_total", (("sink", "files"),))] == report.published
    for stage in ("batched", "model_end", "published"):
        assert values[("segstream_stage_latency_seconds_count", (("stage", stage),))] == report.published
    assert ("segstream_queue_depth", (("source", "cam"),)) in values


def test_healthz_turns_unhealthy_while_a_stage_hangs(served, clip):
    metrics, server = served
    release = threading.Event()

    class HangingStage:
        def process(self, result):
            if result.index == 3:
                release.wait(30)
            return result

    runtime = Runtime([FileSource("cam", str(clip))], ColourSegmenter(), [], stages=[lambda source: HangingStage()],
                      metrics=metrics, progress=None)
    thread = threading.Thread(target=runtime.run)
    thread.start()
    try:
        wait_for(lambda: get(server.url + "/healthz")[0] == 503)
        body = json.loads(get(server.url + "/healthz")[1])
        assert body["ok"] is False and body["threads"]["stage"]["state"] == "stalled"
        # the stages around it wait for a known reason and are not blamed
        assert body["threads"]["publish"]["state"].startswith("idle")
        assert samples(get(server.url + "/metrics")[1])[("segstream_healthy", ())] == 0
    finally:
        release.set()
        thread.join(30)
    status, body = get(server.url + "/healthz")
    assert status == 200 and json.loads(body)["ok"] is True


def test_waiting_for_a_slow_camera_is_not_a_stall(served):
    metrics, server = served
    # a 1.5 fps camera: every thread after it waits 0.67 s between frames, past the 0.5 s bound
    source = SyntheticSource("cam", 160, 120, 1.5, 0, 4, realtime=True)
    runtime = Runtime([source], ColourSegmenter(), [], metrics=metrics, progress=None, max_wait_ms=0)
    thread = threading.Thread(target=runtime.run)
    thread.start()
    try:
        wait_for(lambda: metrics.sources["cam"].published >= 1)
        time.sleep(0.8)  # past the stall bound with the model, post, stage and sink threads all waiting
        status, body = get(server.url + "/healthz")
        assert status == 200, body
        assert json.loads(body)["threads"]["model"]["state"] == "idle: waiting for frames"
    finally:
        runtime.stop()
        thread.join(30)


def test_a_decode_thread_waiting_for_its_camera_to_connect_is_waiting_in_the_metric_too(served):
    """Found probing: /healthz said the decode thread of a camera that never answered was
    "idle: reconnecting" while segstream_thread_waiting said 0 (working) for it."""
    from segstream.connectors.live_source import ReconnectPolicy
    from segstream.connectors.stream_source import StreamSource

    metrics, server = served
    dead = StreamSource("dead", f"rtsp://127.0.0.1:{free_port()}/cam",
                        policy=ReconnectPolicy(wait_for_input=True, delay_s=0.1, max_delay_s=0.2))
    runtime = Runtime([dead], ColourSegmenter(), [], required=[], metrics=metrics, progress=None)
    thread = threading.Thread(target=runtime.run)
    thread.start()
    try:
        wait_for(lambda: metrics.source("dead").reconnects >= 1)
        time.sleep(0.6)  # past the stall bound, the decode thread still inside the source's frames()
        status, body = get(server.url + "/healthz")
        state = json.loads(body)["threads"]["decode:dead"]["state"]
        assert status == 200 and state in ("idle: connecting", "idle: reconnecting"), body
        values = samples(get(server.url + "/metrics")[1])
        assert values[("segstream_thread_waiting", (("thread", "decode:dead"),))] == 1
        assert values[("segstream_healthy", ())] == 1
    finally:
        runtime.stop()
        thread.join(30)


class SlowWarmUp(ColourSegmenter):
    """Its first forward (the warm-up) waits until released."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def forward(self, prepared):
        if not self.batches:
            self.release.wait(30)
        return super().forward(prepared)


def test_readyz_is_false_until_warm_up_ends(served):
    metrics, server = served
    adapter = SlowWarmUp()
    source = SyntheticSource("cam", 160, 120, 25.0, 0, None, realtime=True)
    runtime = Runtime([source], adapter, [], metrics=metrics, warm_up=(120, 160), progress=None)
    thread = threading.Thread(target=runtime.run)
    thread.start()
    try:
        time.sleep(0.3)
        status, body = get(server.url + "/readyz")
        assert status == 503 and json.loads(body)["model_ready"] is False
        assert get(server.url + "/healthz")[0] == 200, "warming up is a known reason to wait"
        adapter.release.set()
        wait_for(lambda: get(server.url + "/readyz")[0] == 200)
        assert json.loads(get(server.url + "/readyz")[1])["streaming"] == ["cam"]
    finally:
        adapter.release.set()
        runtime.stop()
        thread.join(30)


def test_a_taken_port_is_an_error_when_configured_and_a_warning_when_default():
    from segstream.pipeline.logs import configure_logging

    logged = io.StringIO()
    configure_logging("text", stream=logged)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"ops.http: cannot listen on 127.0.0.1:{port}"):
            with serve_ops(OpsConfig(http=f"127.0.0.1:{port}"), RunMetrics()):
                pass
        # the same address as if it were the default (not set in the config)
        default = OpsConfig.model_construct(_fields_set=set(), http=f"127.0.0.1:{port}", stall_after_s=60.0)
        with serve_ops(default, RunMetrics()) as server:
            assert server is None
    configure_logging("text")
    assert f"warning: cannot listen on 127.0.0.1:{port}" in logged.getvalue()
    assert "running without metrics" in logged.getvalue()


def test_ops_http_null_serves_nothing():
    with serve_ops(OpsConfig(http=None), RunMetrics()) as server:
        assert server is None


def test_json_log_format_writes_one_object_per_line(capsys, tmp_path):
    from segstream.pipeline.cli import main

    code = main(["--log-format", "json", "validate", str(tmp_path / "missing.yaml")])
    assert code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    record = json.loads(line)
    assert record["level"] == "ERROR" and "does not exist" in record["message"] and "time" in record


def test_under_journald_the_status_lines_and_the_summary_carry_their_priority(clip, capfd, monkeypatch):
    # Found probing: the log's lines began <6> or <4> for journald, the status lines and the summary
    # (a failed run's too) with nothing, so journald stored them at its default priority.
    stat = os.fstat(2)  # pytest's file for this test's standard error, standing in for journald's stream
    monkeypatch.setenv("JOURNAL_STREAM", f"{stat.st_dev}:{stat.st_ino}")
    Runtime([FileSource("cam", str(clip), max_frames=10)], ColourSegmenter(delay_s=0.02), [], progress=True,
            progress_interval_s=0.05).run()
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) > 2 and all(line.startswith("<6>segstream: ") for line in lines), lines
    assert any(line.startswith("<6>segstream: done: 10 frames published") for line in lines)


def test_status_line_goes_to_the_json_log(tmp_path, clip):
    import logging

    from segstream.pipeline.logs import LogLines, configure_logging

    stream = io.StringIO()
    configure_logging("json", "info", stream=stream)
    try:
        runtime = Runtime([FileSource("cam", str(clip), max_frames=10)], ColourSegmenter(), [],
                          progress=LogLines(logging.getLogger("segstream.status")), progress_interval_s=0.05)
        runtime.run()
    finally:
        configure_logging("text")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert records and all(r["logger"] == "segstream.status" for r in records)
    [done] = [r for r in records if r["message"].startswith("done: 10 frames published")]
    # found probing as a CLI reviewer: the summary's figures were only in its text
    summary = done["summary"]
    assert (summary["outcome"], summary["published"], summary["decoded"], summary["dropped"]) == ("done", 10, 10, 0)
    assert summary["sources"]["cam"]["published"] == 10 and summary["latency_ms"]["p50"] >= 0


def test_the_status_line_s_latency_recovers_after_an_outage_while_the_summary_keeps_the_run_s(clip):
    # Found soaking: after a 6 s Redis outage the status line's p99 stayed near 1.8 s for 16 min
    metrics = RunMetrics(["cam"], recent_s=0.3)  # the last minute, shortened
    runtime = Runtime([FileSource("cam", str(clip))], ColourSegmenter(), [], metrics=metrics, progress=None)
    for _ in range(200):  # the backlog written when Redis came back: 1.8 s after capture
        metrics.wrote("redis", "cam", 100.0, 101.8, primary=True)
    assert ", latency p50 1800 ms p99 1800 ms," in runtime._progress_line(2.0)
    time.sleep(0.4)
    for _ in range(20):  # then frames written at once again
        metrics.wrote("redis", "cam", 200.0, 200.1, primary=True)
    line = runtime._progress_line(4.0)
    assert ", latency p50 100 ms p99 100 ms," in line, line
    report = runtime.report(4.0)  # the summary's and the benchmark's: the run's
    assert round(report.latency_ms_p99) == 1800 and round(report.source_latency["cam"]["p99_ms"]) == 1800
    assert "p99 1800 ms" in report.summary()
    time.sleep(0.4)  # nothing written in the last minute: no figure rather than an old one
    assert "latency" not in runtime._progress_line(6.0)


def test_segstream_run_serves_its_endpoints_while_it_runs(tmp_path):
    from segstream.pipeline.cli import run_pipeline
    from segstream.pipeline.config import validate_config

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = validate_config({
        "sources": [{"name": "cam", "type": "synthetic", "width": 160, "height": 120, "fps": 10, "num_frames": 30,
                     "realtime": True}],
        "model": {"device": "cpu"},
        "sinks": {"redis": {"enabled": False}, "files": {"enabled": True, "dir": str(tmp_path)}},
        "ops": {"http": f"127.0.0.1:{port}"},
    })
    url = f"http://127.0.0.1:{port}"
    result = {}
    thread = threading.Thread(target=lambda: result.update(report=run_pipeline(cfg, progress=None)))
    thread.start()
    try:
        wait_for(lambda: _answers(url + "/readyz") == 200, timeout=60)
        assert get(url + "/healthz")[0] == 200
        assert "segstream_frames_decoded_total" in get(url + "/metrics")[1]
    finally:
        thread.join(60)
    assert result["report"].published == 30
    assert _answers(url + "/healthz") is None, "the endpoints end with the run"


def _answers(url: str) -> int | None:
    try:
        return get(url)[0]
    except urllib.error.URLError:
        return None


def test_the_published_counter_never_goes_down_when_a_sink_drops_frames_after_all(served):
    """A Redis outage overflowing the publisher's backlog takes frames back from ``published``;
    a Prometheus counter that went down would read as a reset (found probing: 89 -> 80)."""
    metrics, server = served
    for _ in range(5):
        metrics.published("cam")
    before = samples(get(server.url + "/metrics")[1])
    metrics.unpublished("cam", "sink_backlog")
    metrics.unpublished("cam", "sink_backlog")
    after = samples(get(server.url + "/metrics")[1])
    key = ("segstream_frames_published_total", (("source", "cam"),))
    assert before[key] == after[key] == 5
    assert after[("segstream_frames_dropped_total", (("reason", "sink_backlog"), ("source", "cam")))] == 2
    assert metrics.source("cam").published == 3  # the run's own accounting: decoded == published + dropped


def test_a_head_request_and_the_process_metrics_are_answered(served):
    """Load balancers check health with HEAD (it was 501); dashboards expect process_* (found probing)."""
    _, server = served
    request = urllib.request.Request(server.url + "/healthz", method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:  # 503 while unhealthy
        status, body = error.code, error.read()
    assert status in (200, 503) and body == b""
    values = samples(get(server.url + "/metrics")[1])
    assert any(name == "process_resident_memory_bytes" for name, _ in values)


def test_drop_reasons_and_source_states_have_a_series_from_the_start(served):
    """A panel of drops read "no data" until the first drop, and a source's old state's series
    vanished instead of going to 0 (found probing)."""
    metrics, server = served
    metrics.decoded("cam", time.monotonic())
    metrics.source_state("cam", "streaming", "", time.monotonic())
    values = samples(get(server.url + "/metrics")[1])
    assert values[("segstream_frames_dropped_total", (("reason", "queue_full"), ("source", "cam")))] == 0
    states = {dict(labels)["state"]: v for (name, labels), v in values.items() if name == "segstream_source_state"}
    assert states["streaming"] == 1 and states["reconnecting"] == 0 and sum(states.values()) == 1
    assert values[("segstream_capture_to_publish_seconds_count", (("source", "cam"),))] == 0


def _server_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.startswith("Thread-"))


def _answered_busy(connection: socket.socket) -> bool:
    """Whether the server answered a connection 503 (too many at once) and closed it; False while it holds it."""
    connection.settimeout(0.05)
    said = b""
    try:
        while chunk := connection.recv(4096):
            said += chunk
    except TimeoutError:
        return False
    except ConnectionResetError:
        pass
    # (said, not a bare close: found probing, curl's "000")
    return said.startswith(b"HTTP/1.0 503 Service Unavailable\r\n") and said.endswith(b"try again\n")


def test_slow_connections_hold_a_bounded_number_of_threads_and_are_cut_off():
    """600 half-sent requests grew the process to 321 threads until the client closed them (found
    by a security review): connections beyond the limit are closed at once and counted, a client
    that sends nothing more is cut off after the timeout, and /metrics answers again."""
    server = OpsServer(RunMetrics(), "127.0.0.1", 0, timeout_s=1.0, max_connections=8)
    before = _server_threads()
    slow = []
    try:
        for _ in range(60):
            connection = socket.create_connection(server.address, timeout=5)
            connection.sendall(b"GET /metr")  # never finished
            slow.append(connection)
        time.sleep(0.3)
        assert _server_threads() - before <= 8
        refused = 0
        for connection in slow:  # the ones beyond the limit were answered 503 and closed at once
            refused += _answered_busy(connection)
        assert refused >= 60 - 8
        wait_for(lambda: _server_threads() - before == 0, timeout=5)  # the held ones were cut off
        status, text = get(server.url + "/metrics")
        assert status == 200
        assert samples(text)[("segstream_ops_http_refused_connections_total", ())] >= 60 - 8
    finally:
        for connection in slow:
            connection.close()
        server.close()


def test_a_request_trickled_in_is_cut_off_and_one_address_cannot_take_every_connection():
    """Found probing as an attacker: 32 connections sending a header line every 5 s kept /healthz
    unanswered for as long as they went on (the timeout was per read). Now the request must be all in
    within the timeout, and one address holds a quarter of the connections at most."""
    server = OpsServer(RunMetrics(), "127.0.0.1", 0, timeout_s=1.0, max_connections=8)
    reloads = []
    server.reload = lambda asked_for: (reloads.append(asked_for), (True, "reloaded"))[1]
    slow = []
    try:
        trickled = socket.create_connection(server.address, timeout=5)
        trickled.sendall(b"POST /reload HTTP/1.0\r\n")
        sent = 0
        started = time.monotonic()
        try:
            while time.monotonic() - started < 4:  # a header line each 0.2 s, four times the timeout
                trickled.sendall(b"X-Slow: %d\r\n" % sent)
                sent += 1
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass
        trickled.settimeout(1)
        try:
            cut = trickled.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            cut = True
        assert cut and sent < 15, f"the connection still read its {sent}th header line"  # cut at about 5
        trickled.close()
        assert reloads == [], "a request cut off is not carried out (the closed socket ended its headers)"
        for _ in range(4):  # a quarter of the 8 from 127.0.0.1 are held; the 3rd and 4th are closed at once
            connection = socket.create_connection(server.address, timeout=5)
            connection.sendall(b"GET /metr")
            slow.append(connection)
        time.sleep(0.3)
        assert [_answered_busy(connection) for connection in slow] == [False, False, True, True]
        other = socket.create_connection(server.address, timeout=5, source_address=("127.0.0.2", 0))
        with other:  # another address (a kubelet's probe) is answered meanwhile
            other.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            answer = b""
            while chunk := other.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.0 200")
    finally:
        for connection in slow:
            connection.close()
        server.close()


def test_the_request_line_reaches_the_log_escaped_and_the_server_header_names_no_python(served):
    """A request line's raw escape sequences went to the debug log as they came; the Server header
    said which Python runs (found by a security review)."""
    _, server = served
    lines = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("segstream.pipeline.monitoring")
    logger.addHandler(handler)  # the CLI's logging setup, run by other tests, may stop propagation
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        with socket.create_connection(server.address, timeout=5) as connection:
            connection.sendall(b"GET /\x1b[2J\x1b[31mFAKE HTTP/1.0\r\n\r\n")
            answer = b""
            while chunk := connection.recv(4096):
                answer += chunk
        wait_for(lambda: any("FAKE" in line for line in lines))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    (line,) = [line for line in lines if "FAKE" in line]
    assert "\x1b" not in line and '"GET /\\x1b[2J\\x1b[31mFAKE HTTP/1.0" 404' in line
    headers = answer.split(b"\r\n\r\n", 1)[0].decode()
    assert "\r\nServer: segstream\r\n" in headers and "Python" not in headers


def test_a_scraper_hanging_up_mid_answer_prints_no_traceback(capfd):
    """Found probing: a client that reset the connection after GET /metrics (a scrape timing out)
    printed a ConnectionResetError traceback each time; with JSON logs those lines were not JSON."""
    import struct

    server = OpsServer(RunMetrics(), "127.0.0.1", 0)
    try:
        for _ in range(10):
            connection = socket.create_connection(server.address, timeout=5)
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
            connection.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            connection.close()
        time.sleep(0.5)
        status, _ = get(server.url + "/metrics")
        assert status == 200
    finally:
        server.close()
    assert "Traceback" not in capfd.readouterr().err


@pytest.fixture(scope="module")
def finished_run_page(tmp_path_factory, clip) -> str:
    """/metrics after a real run: a file source through a segment filter and the tracker into Redis
    and the files sink, and a live source."""
    from segstream.connectors.redis_connection import connect_redis
    from segstream.connectors.redis_sink import RedisPublisher
    from segstream.models.segment_filter import FilterSettings, SegmentFilter
    from segstream.pipeline.tracking import TrackingStage
    from tests.redis_servers import RedisProcess

    folder = tmp_path_factory.mktemp("finished_run")
    with RedisProcess(folder / "redis") as redis_server:
        publisher = RedisPublisher(connect_redis(redis_server.url), max_backlog=50, max_batch_delay_s=0)
        metrics = RunMetrics()
        with OpsServer(metrics, "127.0.0.1", 0) as server:
            sources = [FileSource("file", str(clip)), SyntheticSource("live", 64, 48, 25, 0, 10, realtime=True)]
            Runtime(sources, ColourSegmenter(), [publisher, FilesSink(folder / "out")],
                    stages=[TrackingStage], queue_size=3, filters={"file": SegmentFilter(FilterSettings(min_area=1))},
                    metrics=metrics, progress=None).run()
            return get(server.url + "/metrics")[1]


def test_sinks_queues_and_sources_say_their_limits_formats_and_losses_from_the_start(finished_run_page):
    """What alerting needed and could not get (found probing): backlog and queue limits to make
    fullness a ratio, dropped events, Redis reconnects and outage seconds, and each source's format
    and frame rate ("a camera delivering 5 of its 25 fps"); every count a series from 0."""
    values = samples(finished_run_page)
    assert values[("segstream_sink_backlog_limit", (("sink", "redis"),))] == 50
    assert values[("segstream_queue_capacity", (("source", "file"),))] == 3
    assert values[("segstream_segments_filtered_total", (("reason", "roi"), ("source", "file")))] == 0
    assert values[("segstream_queue_depth", (("source", "file"),))] == 0
    assert values[("segstream_events_dropped_total", (("sink", "files"),))] == 0
    assert values[("segstream_events_dropped_total", (("sink", "redis"),))] == 0
    assert values[("segstream_sink_reconnects_total", (("sink", "redis"),))] == 0
    assert values[("segstream_sink_down_seconds_total", (("sink", "redis"),))] == 0
    assert values[("segstream_track_capacity_refused_total", (("source", "file"),))] == 0
    info = {labels: v for (name, labels), v in values.items() if name == "segstream_source_info"}
    assert info == {(("codec", "h264"), ("height", "120"), ("source", "file"), ("width", "160")): 1}
    assert values[("segstream_source_nominal_fps", (("source", "file"),))] == 10
    families = {family.name: family.type for family in text_string_to_metric_families(finished_run_page)}
    assert families["segstream_track_capacity_refused"] == "counter"  # a running count, no longer a gauge


def test_every_metric_the_alert_rules_use_is_exposed(finished_run_page):
    """deploy/prometheus-rules.yml may only name metrics a run exposes: a renamed metric fails here."""
    import re
    from pathlib import Path

    import yaml

    rules = yaml.safe_load((Path(__file__).resolve().parents[1] / "deploy" / "prometheus-rules.yml").read_text())
    used = {name for group in rules["groups"] for rule in group["rules"]
            for name in re.findall(r"\bsegstream_[a-z0-9_]+", rule["expr"])}
    assert len(used) >= 15, used  # the rules are read, not an empty file
    exposed = {s.name for family in text_string_to_metric_families(finished_run_page) for s in family.samples}
    assert sorted(used - exposed) == []


def test_every_metric_a_run_exposes_is_in_the_operations_table(finished_run_page):
    from pathlib import Path

    table = (Path(__file__).resolve().parents[1] / "docs" / "OPERATIONS.md").read_text()
    names = {family.name + ("_total" if family.type == "counter" else "")
             for family in text_string_to_metric_families(finished_run_page)
             if family.name.startswith("segstream_") and not family.name.endswith("_created")}  # a counter's start
    assert len(names) > 30
    assert sorted(name for name in names if f"`{name}`" not in table) == []


def test_an_interrupt_while_the_endpoints_close_still_frees_their_port():
    """Found probing from a notebook: a second Ctrl-C during close() (its wait for the serving
    thread, up to half a second) left the port held, so running the cell again was refused."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    port = free_port()
    server = OpsServer(RunMetrics(), "127.0.0.1", port)
    time.sleep(0.05)  # serving: its next look at shutdown comes up to 0.5 s later
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.01)
        with pytest.raises(KeyboardInterrupt):
            server.close()
            time.sleep(1)  # were close() quick, the interrupt lands here
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    deadline = time.monotonic() + 2  # free once the serving thread's select (up to 0.5 s) lets the socket go
    while True:
        with socket.socket() as again:
            try:
                again.bind(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.05)



def test_healthz_stays_healthy_while_a_slow_source_waits_for_its_next_frame(served, tmp_path):
    # found probing a site camera's stills: a folder played at 0.02 fps sleeps 50 s between images;
    # /healthz said "decode stalled" after stall_after_s and a liveness probe restarted the pod
    from PIL import Image

    from segstream.connectors.image_source import ImageFolderSource

    metrics, server = served  # stall_after_s 0.5
    for index in range(2):
        Image.new("RGB", (32, 24), (index * 100, 0, 0)).save(tmp_path / f"still{index}.png")
    source = ImageFolderSource("site", str(tmp_path), fps=0.5, realtime=True)  # 2 s between the stills
    runtime = Runtime([source], ColourSegmenter(), [], metrics=metrics, progress=None)
    thread = threading.Thread(target=runtime.run)
    thread.start()
    try:
        wait_for(lambda: metrics.source("site").decoded >= 1)
        time.sleep(1.0)  # twice stall_after_s into the wait for the second still
        status, body = get(server.url + "/healthz")
        assert status == 200, body
        assert json.loads(body)["threads"]["decode:site"]["state"].startswith("idle: pacing")
        assert samples(get(server.url + "/metrics")[1])[("segstream_thread_waiting", (("thread", "decode:site"),))] == 1
    finally:
        runtime.stop()
        thread.join(30)


def test_healthz_stays_healthy_while_a_camera_is_silent_within_its_read_timeout(served):
    # a camera whose read timeout was raised for its slow rate: the decode thread waits on the
    # stream, bounded by that timeout, and is not stuck
    import os
    import signal
    import socket

    from segstream.connectors.live_source import ReconnectPolicy
    from segstream.connectors.stream_source import StreamSource
    from tests.live_servers import FfmpegStream, free_port

    metrics, server = served  # stall_after_s 0.5
    port = free_port(socket.SOCK_DGRAM)
    with FfmpegStream(["-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"], fps=25) as camera:
        source = StreamSource("cam", f"udp://127.0.0.1:{port}", policy=ReconnectPolicy(open_timeout_s=10,
                                                                                    read_timeout_s=30))
        runtime = Runtime([source], ColourSegmenter(), [], metrics=metrics, progress=None)
        thread = threading.Thread(target=runtime.run)
        thread.start()
        try:
            wait_for(lambda: metrics.source("cam").decoded >= 5, 30)
            os.killpg(camera.process.pid, signal.SIGSTOP)  # silent, not gone
            time.sleep(1.5)
            status, body = get(server.url + "/healthz")
            assert status == 200, body
            assert json.loads(body)["threads"]["decode:cam"]["state"].startswith("idle: waiting for the stream")
        finally:
            os.killpg(camera.process.pid, signal.SIGCONT)
            runtime.stop()
            thread.join(30)


def test_json_logs_silence_opencv_s_own_lines_and_text_logs_put_them_back(capfd):
    # found probing an inspection line: corrupt images left OpenCV's "[ WARN:0@2.1] global grfmt_png.cpp" lines,
    # not JSON, among the JSON records (the image source says each failure in a record of its own)
    import cv2
    import numpy as np

    from segstream.pipeline.logs import configure_logging

    ok, png = cv2.imencode(".png", np.zeros((40, 40, 3), np.uint8))
    cut = np.frombuffer(png, np.uint8)[:60]
    before = cv2.utils.logging.getLogLevel()
    configure_logging("json", "info", stream=io.StringIO())
    try:
        assert cv2.imdecode(cut, cv2.IMREAD_COLOR) is None
        assert "grfmt_png" not in capfd.readouterr().err
    finally:
        configure_logging("text")
    assert cv2.utils.logging.getLogLevel() == before


def test_an_exception_nothing_caught_is_one_json_record_under_json_logs_and_the_hook_is_put_back():
    # found probing as a platform engineer: a run thread's error, raised again in the main thread
    # as the run ended, was a plain traceback of 27 lines among the JSON records
    import json
    import sys

    from segstream.pipeline.logs import configure_logging

    before, out = sys.excepthook, io.StringIO()
    configure_logging("json", "info", stream=out)
    try:
        try:
            raise TypeError("injected fault in warm_up")
        except TypeError:
            sys.excepthook(*sys.exc_info())
    finally:
        configure_logging("text")
    [line] = out.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "ERROR" and record["message"] == "uncaught exception: TypeError"
    assert "injected fault in warm_up" in record["exc_info"]
    assert sys.excepthook is before


def test_lines_a_library_prints_itself_become_records_and_json_lines_pass_as_they_are():
    # what Ray's driver prints for its processes under JSON logs (tests/test_batch_ray.py runs it for real)
    import json

    from segstream.pipeline.logs import JsonLines

    out = io.StringIO()
    lines = JsonLines(out, "ray")
    lines.write('{"level": "INFO", "logger": "segstream.saying", "message": "json already"}')
    lines.write("\n")  # print() writes the line, then its end
    lines.write('<4>{"level": "WARNING", "message": "after a journald priority"}\n')
    lines.write("[2026-12-05 04:10:00,001 W 25039 25039] file_system_monitor.cc:116: /tmp is over 95% full\n")
    lines.write("a worker's plain print\n[1, 2]\n{not json}\n\npartial")
    lines.flush()
    written = out.getvalue().splitlines()
    assert written[0] == '{"level": "INFO", "logger": "segstream.saying", "message": "json already"}'
    assert written[1].startswith("<4>{") and json.loads(written[1][3:])["message"] == "after a journald priority"
    records = [json.loads(line) for line in written[2:]]
    assert [(r["logger"], r["level"]) for r in records] == [("ray", "WARNING")] * 5
    assert [r["message"] for r in records] == [
        "[2026-12-05 04:10:00,001 W 25039 25039] file_system_monitor.cc:116: /tmp is over 95% full",
        "a worker's plain print", "[1, 2]", "{not json}", "partial"]
    lines.write("[2026-12-05 04:10:00,001 E 1 1] core.cc:1: failed\n")
    assert json.loads(out.getvalue().splitlines()[-1])["level"] == "ERROR"
