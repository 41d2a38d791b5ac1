"""What an operator watches: Prometheus metrics, liveness and readiness, on one HTTP port.

Everything is read from the run's one ``RunMetrics`` when asked, never counted twice: a custom
collector turns its counters, latency histograms, heartbeats and registered gauges into
Prometheus families at scrape time.

    GET /metrics   Prometheus text format
    GET /healthz   200 while every runtime thread made progress within ``stall_after_s`` or
                   waits for a known reason (input, a slower stage, an ended source); else 503
    GET /readyz    200 once the model is warm, every sink can write and some source streams

Both health answers carry a JSON body saying why, for people reading ``curl`` output.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from segstream import __version__
from segstream.connectors.errors import ConfigError
from segstream.connectors.source import SOURCE_STATES
from segstream.connectors.threads import NamedThread, input_wait
from segstream.pipeline.metrics import DROP_REASONS, STAGES, LatencyWindow, RunMetrics, decode_thread

log = logging.getLogger(__name__)

PREFIX = "segstream"
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# A source in one of these states is not expected to decode (the live-source states, where a
# source reports them); its decode thread waiting is no stall.
SOURCE_WAITING_STATES = {"connecting", "reconnecting", "stalled", "ended", "failed"}
# A client whose request is not all in this long after it connected is cut off; no more than this
# many are served at once (one thread each): half-sent requests cannot pile up threads in the
# pipeline's process; and no more than a quarter of them from one address (its kubelet's probes and
# its Prometheus are served while one other client holds its share).
CONNECTION_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 32


@dataclass(slots=True)
class Verdict:
    """A health answer: ``ok``, and per checked part what was found."""

    ok: bool
    parts: dict[str, dict] = field(default_factory=dict)

    def body(self) -> bytes:
        return json.dumps({"ok": self.ok, **self.parts}, indent=1, sort_keys=True).encode() + b"\n"


def thread_waits(metrics: RunMetrics) -> dict[str, tuple[float, str | None]]:
    """Each runtime thread's last progress (monotonic time) and why it waits now, None while it
    works: its own reason, or for a decode thread working inside its source, the source's state
    where that is one without frames (connecting, reconnecting, ...), or what its source waits
    for while it streams (the next frame's time, a stream's next packets: bounded by the source's
    own timeouts). ``/healthz`` and
    ``segstream_thread_waiting`` both decide by this."""
    source_state = {decode_thread(name): state for name, state in _source_states(metrics).items()}
    waits = {}
    for thread, (since, idle) in sorted(metrics.heartbeats.items()):
        if idle is None and source_state.get(thread) in SOURCE_WAITING_STATES:
            idle = source_state[thread]
        if idle is None:  # a source streaming slowly: a real-time still's pacing, a 0.1 fps camera
            idle = input_wait(metrics.beat_idents.get(thread))
        waits[thread] = (since, idle)
    return waits


def liveness(metrics: RunMetrics, stall_after_s: float, now: float | None = None) -> Verdict:
    """Alive unless some runtime thread has been working without progress for ``stall_after_s``."""
    now = time.monotonic() if now is None else now
    threads = {}
    ok = True
    for thread, (since, idle) in thread_waits(metrics).items():
        age = now - since
        stalled = idle is None and age > stall_after_s
        ok &= not stalled
        threads[thread] = {
            "state": "stalled" if stalled else ("working" if idle is None else f"idle: {idle}"),
            "since_s": round(age, 3),
        }
    return Verdict(ok, {"threads": threads, "stall_after_s": stall_after_s})


def readiness(metrics: RunMetrics) -> Verdict:
    """Ready once the model is warm, every sink is connected and at least one source streams."""
    sinks = _read_gauge(metrics, "sink_connected")
    connected = {labels[0]: bool(value) for labels, value in sinks.items()}
    streaming = [name for name, state in _source_states(metrics).items() if state == "streaming"]
    ok = metrics.model_ready and all(connected.values()) and bool(streaming)
    return Verdict(ok, {"model_ready": metrics.model_ready, "sinks_connected": connected, "streaming": streaming})


def _source_states(metrics: RunMetrics) -> dict[str, str]:
    """Each source's state: the one the source reports where it does (``SourceCounts.state``),
    else streaming from its first decoded frame until its decode thread ends."""
    states = {}
    for name, counts in metrics.exposed().items():
        reported = getattr(counts, "state", None)
        if reported is not None:
            states[name] = str(reported)
            continue
        beat = metrics.heartbeats.get(decode_thread(name))
        if beat is not None and beat[1] == "ended":
            states[name] = "ended"
        elif counts.decoded:
            states[name] = "streaming"
        else:
            states[name] = "starting"
    return states


def _read_gauge(metrics: RunMetrics, name: str) -> dict:
    gauge = metrics.gauges.get(name)
    if gauge is None:
        return {}
    try:
        return dict(gauge.read())
    except Exception:  # a gauge of a component that is going away: no value this time
        log.debug("gauge %s could not be read", name, exc_info=True)
        return {}


def privileged_port(error: int | None, port: int) -> str | None:
    """What to do when binding ``port`` was refused for want of privilege (a port below 1024, a
    user's: found probing a service on port 80), else None."""
    if error != errno.EACCES or not 0 < port < 1024:
        return None
    return (f"ports below 1024 take root or CAP_NET_BIND_SERVICE (a systemd unit's AmbientCapabilities=) — use a port "
            f"from 1024 up (e.g. {port + 9000 if port + 9000 < 65536 else 9108}), or give the user that capability")


class RunMetricsCollector(Collector):
    """Prometheus families read from a ``RunMetrics`` at each scrape. ``metrics`` may be replaced
    between runs (``segstream batch`` starts a fresh one per group of videos)."""

    def __init__(self, metrics: RunMetrics, stall_after_s: float = 60.0):
        self.metrics = metrics
        self.stall_after_s = stall_after_s
        self.extra: list[Collector] = []  # further collectors that share this registry

    def collect(self) -> Iterator:
        m = self.metrics
        counts = m.exposed()
        decoded = CounterMetricFamily(f"{PREFIX}_frames_decoded", "Frames decoded, per source.", labels=["source"])
        published = CounterMetricFamily(
            f"{PREFIX}_frames_published",
            "Frames handed to the sinks, per source (one a sink drops later also counts in frames_dropped).",
            labels=["source"])
        skipped = CounterMetricFamily(
            f"{PREFIX}_frames_skipped",
            "Frames a source left out on purpose, per source: over its max_fps, undecoded to catch up with live "
            "(frames_caught_up), a snapshot camera's pictures unchanged since its last frame (not a loss), and "
            "a watched folder's images that came after later ones were read (never read: a loss); not in "
            "frames_decoded.",
            labels=["source"])
        caught_up = CounterMetricFamily(
            f"{PREFIX}_frames_caught_up",
            "Frames a live source left undecoded to catch up with live (max_behind_s), per source; in frames_skipped too.",
            labels=["source"])
        dropped = CounterMetricFamily(f"{PREFIX}_frames_dropped", "Frames dropped, per source and reason.",
                                      labels=["source", "reason"])
        errors = CounterMetricFamily(f"{PREFIX}_decode_errors", "Frames the decoder rejected, or a stream lost before it "
                                     "(a gap of up to a second in its steady frame rate), per source.",
                                     labels=["source"])
        reconnects = CounterMetricFamily(f"{PREFIX}_source_reconnects", "Reconnects, per source.", labels=["source"])
        state = GaugeMetricFamily(f"{PREFIX}_source_state", "1 for the state each source is in.",
                                  labels=["source", "state"])
        down = CounterMetricFamily(f"{PREFIX}_source_down_seconds",
                                   "Seconds each source spent connecting, stalled or reconnecting, "
                                   "and a stream's silences of over a second past its own pace.", labels=["source"])
        missing = CounterMetricFamily(f"{PREFIX}_source_frames_missing",
                                      "Frames a damaged or truncated input lacked (never decoded), per source.",
                                      labels=["source"])
        now = time.monotonic()
        for source, c in counts.items():
            down.add_metric([source], c.downtime(now))
            missing.add_metric([source], c.missing)
            decoded.add_metric([source], c.decoded)
            published.add_metric([source], c.handed)
            skipped.add_metric([source], c.skipped)
            caught_up.add_metric([source], c.caught_up)
            errors.add_metric([source], c.decode_errors)
            # the frame-level reasons from 0, so a panel reads 0 rather than "no data" until a drop
            for reason, n in sorted({**dict.fromkeys(DROP_REASONS, 0), **c.dropped_by}.items()):
                dropped.add_metric([source, reason], n)
            if getattr(c, "reconnects", None) is not None:
                reconnects.add_metric([source], c.reconnects)
        for source, current in _source_states(m).items():  # every state, 0 but the current one
            for name in dict.fromkeys(("starting", *SOURCE_STATES, current)):
                state.add_metric([source, name], float(name == current))
        yield from (decoded, published, skipped, caught_up, dropped, errors, reconnects, state, down, missing)

        yield CounterMetricFamily(f"{PREFIX}_batches", "Batches the model ran.", value=m.batches)
        yield CounterMetricFamily(f"{PREFIX}_model_frames", "Frames the model ran on.", value=m.model_frames)
        written = CounterMetricFamily(f"{PREFIX}_sink_entries_written", "Entries each sink wrote.", labels=["sink"])
        for sink, n in sorted(m.written.items()):
            written.add_metric([sink], n)
        yield written
        losses = CounterMetricFamily(f"{PREFIX}_sink_data_loss",
                                     "Times a sink's store lost entries it had written (back from an outage without "
                                     "them, or a stream evicted or deleted).",
                                     labels=["sink"])
        for sink, n in sorted(m.data_losses.items()):
            losses.add_metric([sink], n)
        yield losses
        entries_lost = CounterMetricFamily(f"{PREFIX}_sink_entries_lost",
                                           "Entries a sink had written that its store lost since, by kind (frames, "
                                           "events): at least that many where the warning says 'at least'.",
                                           labels=["sink", "kind"])
        for (sink, kind), n in sorted(m.entries_lost.items()):
            entries_lost.add_metric([sink, kind], n)
        yield entries_lost

        sizes = HistogramMetricFamily(f"{PREFIX}_batch_size", "Frames per model batch.")
        batch_sizes = dict(m.batch_sizes)
        cumulative = [
            (_bound(bound), sum(n for size, n in batch_sizes.items() if size <= bound))
            for bound in (*BATCH_SIZE_BUCKETS, float("inf"))
        ]
        sizes.add_metric([], cumulative, sum_value=sum(size * n for size, n in batch_sizes.items()))
        yield sizes

        stages = HistogramMetricFamily(
            f"{PREFIX}_stage_latency_seconds",
            "Time a frame spent reaching each stage from the one before "
            f"({' -> '.join(STAGES)}).",
            labels=["stage"],
        )
        for stage, window in m.stage.items():
            _add_histogram(stages, [stage], window)
        yield stages
        capture = HistogramMetricFamily(
            f"{PREFIX}_capture_to_publish_seconds", "From a frame's capture to its entry being written, per source.",
            labels=["source"])
        for source, window in sorted(m.source_latencies().items()):
            if source not in m.retired:
                _add_histogram(capture, [source], window)
        yield capture
        model = HistogramMetricFamily(f"{PREFIX}_model_batch_seconds",
                                      "Upload, pre-processing and network time of each batch.")
        _add_histogram(model, [], m.model_batch)
        yield model

        for gauge in list(m.gauges.values()):
            kind = CounterMetricFamily if gauge.kind == "counter" else GaugeMetricFamily
            family = kind(f"{PREFIX}_{gauge.name}", gauge.help, labels=list(gauge.labels))
            for labels, value in sorted(_read_gauge(m, gauge.name).items()):
                family.add_metric(list(labels), float(value))
            yield family

        now = time.monotonic()
        beats = GaugeMetricFamily(f"{PREFIX}_thread_progress_age_seconds",
                                  "Seconds since each runtime thread last made progress.", labels=["thread"])
        waiting = GaugeMetricFamily(f"{PREFIX}_thread_waiting",
                                    "1 while a runtime thread waits for a known reason (/healthz says which).",
                                    labels=["thread"])
        for thread, (since, idle) in thread_waits(m).items():
            beats.add_metric([thread], now - since)
            waiting.add_metric([thread], float(idle is not None))
        yield beats
        yield waiting
        yield GaugeMetricFamily(f"{PREFIX}_healthy", "1 while /healthz answers 200.",
                                value=float(liveness(m, self.stall_after_s, now).ok))
        yield GaugeMetricFamily(f"{PREFIX}_ready", "1 while /readyz answers 200.", value=float(readiness(m).ok))
        info = GaugeMetricFamily(f"{PREFIX}_build_info", "The running segstream's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        for collector in self.extra:
            yield from collector.collect()


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


def _add_histogram(family: HistogramMetricFamily, labels: list[str], window: LatencyWindow) -> None:
    cumulative, _, total = window.histogram()
    family.add_metric(labels, [(_bound(b), n) for b, n in cumulative], sum_value=total)


class OpsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` for one ``RunMetrics``, served from a daemon
    thread until ``close()``. ``address`` is where it listens (port 0 is resolved).

    Each connection has a thread of its own, for at most ``max_connections`` at once, a quarter of
    them from any one address; one more is answered 503 and closed at once, counted in
    ``segstream_ops_http_refused_connections_total`` and said in one warning. A client whose
    request (its line and headers) is not all in ``timeout_s`` after it connected is cut off,
    however slowly it goes on sending (found probing as an attacker: 32 connections sending a
    header line each 5 s kept the port from answering ``/healthz`` for as long as they went on)."""

    def __init__(self, metrics: RunMetrics, host: str = "127.0.0.1", port: int = 9108, stall_after_s: float = 60.0,
                 *, timeout_s: float = CONNECTION_TIMEOUT_S, max_connections: int = MAX_CONNECTIONS):
        self.collector = RunMetricsCollector(metrics, stall_after_s)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        # the process's CPU, memory and open files (process_*), as every exporter has them
        ProcessCollector(registry=self.registry)
        self.refused = Counter(f"{PREFIX}_ops_http_refused_connections",
                               f"Connections to the metrics and health port answered 503 and closed: {max_connections} "
                               f"were open already, or {max(1, max_connections // 4)} from its address",
                               registry=self.registry)
        handler = _handler(self, timeout_s)
        # an IPv6 address listens on IPv6 ([::]: every interface, IPv4 too where the system allows)
        server_class = _BoundedHTTPServer6 if ":" in host else _BoundedHTTPServer
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self._server = server_class((host, port), handler, max_connections, self.refused)
        except OSError as error:
            raise ConfigError(f"ops.http: cannot listen on {shown} ({error.strerror}) — {listen_advice(error, port)}"
                              ) from None
        self._server.daemon_threads = True
        # ``POST /reload``: None while no run takes reloads (``ops.reload`` off, or the run not started)
        self.reload: Callable[[str | None], tuple[bool, str]] | None = None  # (the file asked for)
        self.reloads = False  # ops.reload is on: a POST before the run starts is answered "not yet"
        self._thread = NamedThread(target=self._server.serve_forever, name="segstream-ops-http", daemon=True)
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.address = (host, port)
        log.info("metrics and health on %s (/metrics /healthz /readyz)", self.url)

    @property
    def metrics(self) -> RunMetrics:
        return self.collector.metrics

    @metrics.setter
    def metrics(self, metrics: RunMetrics) -> None:
        self.collector.metrics = metrics

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def close(self) -> None:
        """Stop serving and free the port, also when a KeyboardInterrupt (a second Ctrl-C) cuts
        the wait for the serving thread short: the port is closed all the same."""
        try:
            self._server.shutdown()
        finally:
            self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> OpsServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# The answer of a connection beyond the limits, before it is closed (unread: what it asked is not known)
_BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Length: 40\r\nConnection: close\r\n\r\ntoo many connections at once: try again\n")


def listen_advice(error: OSError, port: int) -> str:
    """What to do when the ops port cannot be listened on (the run's and ``validate --connect``'s words)."""
    if isinstance(error, socket.gaierror):
        return ("no address of this machine is called so: give one of its own, its name, 0.0.0.0 for every "
                "interface or 127.0.0.1 for this machine only")
    if error.errno == errno.EAFNOSUPPORT:
        return "this machine has no IPv6: give an IPv4 address, 0.0.0.0 for every interface"
    if error.errno == errno.EADDRNOTAVAIL:
        return ("it is no address of this machine: give one of its own, 0.0.0.0 for every interface or 127.0.0.1 "
                "for this machine only")
    return privileged_port(error.errno, port) or (
        "another segstream may hold the port: set ops.http to a free one (e.g. --set ops.http=127.0.0.1:9109), or to "
        "null to turn it off")


class _BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, for ``limit`` connections at once, a quarter of them from one
    address; the ones beyond are answered 503 and closed."""

    block_on_close = False  # close() does not wait for clients (each is cut off after its timeout anyway)
    request_queue_size = 128  # a burst is accepted (and the ones beyond the limit closed) at once, not over seconds

    def __init__(self, address, handler, limit: int, refused: Counter):
        super().__init__(address, handler)
        self.limit = limit
        self.per_address = max(1, limit // 4)
        self._slots = threading.BoundedSemaphore(limit)
        self._held: collections.Counter[str] = collections.Counter()  # connections open, by client address
        self._held_lock = threading.Lock()
        self._refused = refused
        self._warned: set[str] = set()  # "all": the limit was said; an address: its share was

    def process_request(self, request, client_address) -> None:
        address = client_address[0]
        with self._held_lock:
            full = self._held[address] >= self.per_address
            if not full:
                self._held[address] += 1
        if full or not self._slots.acquire(blocking=False):
            if not full:
                self._free(address)
            self._refused.inc()
            said = address if full else "all"
            if said not in self._warned:
                self._warned.add(said)
                log.warning("metrics and health port: %s; more are answered 503 and closed (counted in "
                            "%s_ops_http_refused_connections_total)",
                            f"{self.per_address} connections from {address} are open already" if full else
                            f"{self.limit} connections are open already", PREFIX)
            with contextlib.suppress(OSError):  # said, not a bare close (found probing: curl's "000")
                request.send(_BUSY, socket.MSG_DONTWAIT)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: its slot is free again
            self._slots.release()
            self._free(address)
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
            self._free(client_address[0])

    def _free(self, address: str) -> None:
        with self._held_lock:
            self._held[address] -= 1
            if self._held[address] <= 0:
                del self._held[address]

    def handle_error(self, request, client_address) -> None:
        """A client that hung up mid-answer (a scrape that timed out) is routine: nothing printed
        (socketserver prints a traceback); anything else is one warning line."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("metrics and health port: %s went away: %s", client_address[0], error)
            return
        log.warning("metrics and health port: answering %s failed: %s: %s", client_address[0],
                    type(error).__name__, error)


class _BoundedHTTPServer6(_BoundedHTTPServer):
    """The same on an IPv6 address; ``::`` takes IPv4 clients too where the system lets it."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        if self.server_address[0] == "::":
            with contextlib.suppress(OSError, AttributeError):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _handler(server: OpsServer, timeout_s: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = timeout_s  # the socket's: a request sent half (or never) ends the connection
        server_version = "segstream"
        sys_version = ""  # no Python version in the Server header
        _was_cut = False  # the whole-request deadline passed (``_cut_off``)

        def handle(self) -> None:
            # the whole request in timeout_s, however slowly it comes (the socket's timeout is per read)
            self._cut = threading.Timer(timeout_s, self._cut_off)
            self._cut.daemon = True
            self._cut.start()
            try:
                super().handle()  # (HTTP/1.0: one request, then the connection closes)
            finally:
                self._cut.cancel()

        def parse_request(self) -> bool:
            parsed = super().parse_request()  # the request line and headers are in: its answer takes what it takes
            self._cut.cancel()
            if self._was_cut:  # (the closed socket ended its headers: what it asked is not done; found reviewing)
                self.close_connection = True
                return False
            return parsed

        def _cut_off(self) -> None:
            self._was_cut = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

        def version_string(self) -> str:
            return self.server_version

        def do_HEAD(self) -> None:  # noqa: N802 (a load balancer's health check)
            self.do_GET()

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                verdict = liveness(server.metrics, server.collector.stall_after_s)
                self._answer(200 if verdict.ok else 503, verdict.body(), "application/json")
            elif path == "/readyz":
                verdict = readiness(server.metrics)
                self._answer(200 if verdict.ok else 503, verdict.body(), "application/json")
            elif path == "/":
                self._answer(200, b"segstream: /metrics /healthz /readyz\n", "text/plain; charset=utf-8")
            elif path == "/reload":
                self._answer(405, b"POST /reload reloads the config's sources\n", "text/plain; charset=utf-8",
                             {"Allow": "POST"})
            else:
                self._answer(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.split("?", 1)[0] != "/reload":
                self._answer(404, b"not found: POST /reload is the one request that changes anything\n",
                             "text/plain; charset=utf-8")
                return
            reload = server.reload
            if reload is None:
                status, line = (503, "the run has not started yet (or has ended): try again") if server.reloads else \
                    (403, "reloading is off: set ops.reload: true in the config (it takes a restart)")
            else:
                from urllib.parse import parse_qs, urlsplit

                asked_for = parse_qs(urlsplit(self.path).query).get("config", [None])[0]  # segstream reload's file
                applied, line = reload(asked_for)
                status = 200 if applied else 409
            self._answer(status, f"{line}\n".encode(), "text/plain; charset=utf-8")

        def _answer(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # scrapes every few seconds: debug only
            # the request line is the client's: its control characters are escaped, as http.server does
            log.debug("%s %s", self.address_string(), (format % args).translate(self._control_char_table))

    return Handler


@contextlib.contextmanager
def serve_ops(ops, metrics: RunMetrics) -> Iterator[OpsServer | None]:
    """The server an ``ops:`` config section asks for while the block runs (None when
    ``ops.http`` is null). A port given in the config that is taken is an error; the default
    port being taken (a second pipeline on this machine) only costs that run its endpoints."""
    if ops.address is None:
        yield None
        return
    host, port = ops.address
    try:
        server = OpsServer(metrics, host, port, ops.stall_after_s)
        server.reloads = ops.reload
    except ConfigError as error:
        if "http" in ops.model_fields_set:
            raise
        log.warning("%s; running without metrics and health endpoints", str(error).removeprefix("ops.http: "))
        yield None
        return
    try:
        yield server
    finally:
        server.close()
