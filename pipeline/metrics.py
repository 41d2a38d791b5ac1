"""What a run counts and times, in one object every stage of the runtime writes to.

Counters are per source (decoded, published, dropped by reason, decode errors); latencies are
kept per stage as the most recent ``window`` samples (bounded memory however long the run), so
percentiles describe the last ``window`` frames of a long run (55 min of one 20 fps source) and
the whole of a short one (the summary's), and as cumulative histogram buckets over the whole run
(what Prometheus scrapes); capture to publish also over the last ``recent_s`` seconds alone (the
status line's: latency back to normal after an outage shows within that long, not an hour later).
Each runtime thread leaves a heartbeat (when it last made progress, and why it waits if it does),
and the owners of queues and connections register gauges (and counters they keep) that are read
when someone asks (``/metrics``).
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segstream.connectors.frames import WALL_OFFSET
from segstream.connectors.pauses import pauses
from segstream.connectors.sink import DROPPED_BACKLOG, DROPPED_REFUSED, DROPPED_UNREACHABLE, DROPPED_WRITE_FAILED
from segstream.connectors.source import DOWN_STATES

# The timestamps a frame collects on its way, in order; a stage's latency is the time from the
# previous one to its own.
# Why frames are dropped: the batcher's (a newest-kept queue full, a frame older than its
# staleness limit), the decoder's, the model's (outputs holding NaN or infinity: an fp16
# overflow), and the sinks' (connectors/sink.py).
QUEUE_FULL, STALE, DECODE_ERROR, MODEL_NONFINITE = "queue_full", "stale", "decode_error", "model_nonfinite"
DROP_REASONS = (QUEUE_FULL, STALE, DECODE_ERROR, MODEL_NONFINITE, DROPPED_BACKLOG, DROPPED_UNREACHABLE,
                DROPPED_WRITE_FAILED, DROPPED_REFUSED)

STAGES = ("decoded", "queued", "batched", "model_start", "model_end", "post_end", "staged", "published")
MIN_CLOCK_STEP_S = 0.5  # smaller changes of that offset (NTP slewing, a timer's jitter) are no step


def wall_clock_step(times: dict[str, float]) -> float:
    """How far the wall clock stepped (NTP setting it, an operator, a VM's clock) since a frame
    was made (its ``WALL_OFFSET``): its capture time is on the clock before, its write's on the clock after, so
    their difference, the capture-to-publish latency, would be off by the step (+90 s, or -1 h:
    a negative latency that turned Prometheus' histogram sum negative, found probing clock steps).
    0 when it did not step (or the frame's offset is unknown)."""
    offset = times.get(WALL_OFFSET)
    if offset is None:
        return 0.0
    step = (time.time() - time.monotonic()) - offset
    return step if abs(step) >= MIN_CLOCK_STEP_S else 0.0
# Upper bounds (seconds) of the latency histograms: Prometheus' defaults, plus the millisecond
# range where a healthy stage lives and the minute a stalled one reaches.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0
)


class RecentLatency:
    """The latencies (seconds) of the samples added in the last ``span_s`` seconds (monotonic
    time), at most ``limit`` of them (past that rate the span is shorter); thread-safe."""

    def __init__(self, span_s: float = 60.0, limit: int = 65536):
        self.span_s = span_s
        self._lock = threading.Lock()
        self._samples: deque[tuple[float, float]] = deque(maxlen=limit)  # (monotonic time, seconds)

    def add(self, seconds: float, at: float) -> None:
        with self._lock:
            self._samples.append((at, seconds))
            while self._samples[0][0] < at - self.span_s:
                self._samples.popleft()

    def values(self, now: float) -> np.ndarray:
        """The latencies of the samples added from ``now - span_s`` on."""
        with self._lock:
            recent = [seconds for at, seconds in self._samples if at >= now - self.span_s]
        return np.array(recent, np.float64)

    def percentiles(self, now: float, *qs: float) -> list[float]:
        """NaN for each of ``qs`` when nothing was added in the span before ``now``."""
        values = self.values(now)
        if values.size == 0:
            return [float("nan")] * len(qs)
        return [float(v) for v in np.percentile(values, qs)]


class LatencyWindow:
    """The last ``size`` samples of one latency, in seconds, and a histogram of every sample
    (``buckets`` are upper bounds); thread-safe for one writer."""

    def __init__(self, size: int = 65536, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.size = size
        # grows (doubling) to ``size`` as samples come: a camera that came and went after a few
        # frames (sources added and removed while a run goes on) keeps a few, not ``size``
        self._samples = np.zeros(min(size, 64), np.float64)
        self._count = 0
        self.buckets = tuple(buckets)
        self._in_bucket = [0] * (len(self.buckets) + 1)  # the last one: above every bound
        self._sum = 0.0

    def add(self, seconds: float) -> None:
        if self._count == len(self._samples) < self.size:
            self._samples = np.concatenate([self._samples, np.zeros(min(len(self._samples), self.size - self._count))])
        self._samples[self._count % len(self._samples)] = seconds
        self._in_bucket[bisect.bisect_left(self.buckets, seconds)] += 1
        self._sum += seconds
        self._count += 1

    def histogram(self) -> tuple[list[tuple[float, int]], int, float]:
        """Cumulative (upper bound, samples <= it) pairs ending with +inf, the number of samples
        and their sum, over the whole run."""
        counts = list(self._in_bucket)
        cumulative, total = [], 0
        for bound, count in zip([*self.buckets, float("inf")], counts):
            total += count
            cumulative.append((bound, total))
        return cumulative, total, self._sum

    @property
    def count(self) -> int:
        return self._count

    def values(self) -> np.ndarray:
        return self._samples[: min(self._count, len(self._samples))].copy()

    def percentiles(self, *qs: float) -> list[float]:
        values = self.values()
        if values.size == 0:
            return [float("nan")] * len(qs)
        return [float(v) for v in np.percentile(values, qs)]

    def max(self) -> float:
        values = self.values()
        return float(values.max()) if values.size else float("nan")

    def mean(self) -> float:
        values = self.values()
        return float(values.mean()) if values.size else float("nan")


@dataclass(slots=True)
class SourceCounts:
    """One source's counters. Packets the decoder rejected count both in ``decode_errors`` and as
    drops by reason ``decode_error``, so ``decoded + decode_errors == published + dropped`` at the
    end of a run. ``state`` is the source's current state (``SOURCE_STATES``), ``reason`` why
    it entered it, ``transitions`` how often it entered each state, ``reconnects`` how often
    it went reconnecting, ``epoch`` the timeline restarts of its newest frame. ``handed`` counts
    the frames handed to the sinks and never goes down (``published`` does, when a sink drops a
    frame after all): it is what a Prometheus counter and the status line may show. ``skipped``
    counts the frames the source left out on purpose: over its ``max_fps``, (``caught_up``)
    undecoded to catch up with live (``max_behind_s``), and (``unchanged``) a snapshot camera's
    picture unchanged since its last frame, and (``out_of_order``) a watched folder's images that
    came after later ones were read (never read: a loss); never decoded as far as these counts go."""

    decoded: int = 0
    published: int = 0
    decode_errors: int = 0
    dropped_by: Counter = field(default_factory=Counter)
    state: str | None = None  # None until the source's first state
    reason: str = ""
    state_since: float = 0.0  # time.monotonic() when it entered the state
    reconnects: int = 0
    transitions: Counter = field(default_factory=Counter)
    epoch: int = 0
    handed: int = 0
    down_s: float = 0.0  # seconds spent connecting, stalled or reconnecting, up to its last transition
    gap_s: float = 0.0  # a stream's gaps of more than a second within sessions (the source's own count)
    missing: int = 0  # about how many frames a damaged file lacked (never decoded: the source's own count)
    damage: str = ""  # and why, for people
    skipped: int = 0  # frames left out on purpose (not in decoded: the source's own count)
    connect_s: float = 0.0  # seconds from its first state to its first streaming, retries included (in down_s too)
    first_at: float | None = None  # time.monotonic() of its first state
    caught_up: int = 0  # of skipped, those left undecoded to catch up with live (max_behind_s)
    unchanged: int = 0  # of skipped, a snapshot camera's polls that brought the picture of its last frame
    out_of_order: int = 0  # of skipped, a watched folder's images that came after later ones were read

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by.values())

    def downtime(self, now: float) -> float:
        """Seconds it has spent connecting, stalled or reconnecting, up to ``now``."""
        return self.down_s + self.gap_s + (max(0.0, now - self.state_since) if self.state in DOWN_STATES else 0.0)

    def outcome(self) -> dict[str, object]:
        """What became of the source's frames, as its final state event says (SCHEMA, ``frames``):
        ``skipped`` where it left frames out on purpose, and of them ``caught_up`` those left
        undecoded to catch up with live (a reader can then tell frames with no entry from frames
        the input never had)."""
        outcome: dict[str, object] = {"decoded": self.decoded, "decode_errors": self.decode_errors,
                                      "published": self.published, "dropped": dict(sorted(self.dropped_by.items()))}
        if self.skipped:
            outcome["skipped"] = self.skipped
        if self.caught_up:
            outcome["caught_up"] = self.caught_up
        if self.unchanged:
            outcome["unchanged"] = self.unchanged
        if self.out_of_order:
            outcome["out_of_order"] = self.out_of_order
        return outcome

    def copy(self) -> SourceCounts:
        return SourceCounts(
            self.decoded, self.published, self.decode_errors, Counter(self.dropped_by), self.state, self.reason,
            self.state_since, self.reconnects, Counter(self.transitions), self.epoch, self.handed, self.down_s,
            self.gap_s, self.missing, self.damage, self.skipped, self.connect_s, self.first_at, self.caught_up,
            self.unchanged, self.out_of_order,
        )


_DECODE = "decode:"


def decode_thread(source: str) -> str:
    """The heartbeat name of ``source``'s decode thread."""
    return f"{_DECODE}{source}"


@dataclass(frozen=True, slots=True)
class Gauge:
    """A value some component owns (a queue's depth, a sink's backlog), read when asked:
    ``read()`` maps label values (in ``labels`` order) to the current value. ``kind`` is
    ``counter`` for a running count the component keeps (its reconnects), exported as one."""

    name: str
    help: str
    labels: tuple[str, ...]
    read: Callable[[], Mapping[tuple[str, ...], float]]
    kind: str = "gauge"


class RunMetrics:
    """Counters and latency windows of one run. Writers: the runtime's threads and the sinks
    (``written``); readers: the progress line, the final report, benchmarks, ``/metrics`` and
    the health checks."""

    def __init__(self, sources: list[str] | tuple[str, ...] = (), window: int = 65536, recent_s: float = 60.0):
        self._lock = threading.Lock()
        self.sources: dict[str, SourceCounts] = {name: SourceCounts() for name in sources}
        self.batches = 0
        self.model_frames = 0
        self.batch_sizes: Counter = Counter()
        self.stage = {name: LatencyWindow(window) for name in STAGES[1:]}
        self.model_batch = LatencyWindow(window)  # seconds of network per batch
        self.capture_to_publish = LatencyWindow(window)  # the summary's and the benchmark's
        self.recent_capture_to_publish = RecentLatency(recent_s)  # the status line's
        self.source_latency: dict[str, LatencyWindow] = {}  # capture to publish per source, recent 4096
        self.written: Counter = Counter()  # entries each sink has written
        self.data_losses: Counter = Counter()  # per sink, times its store came back without entries it had taken
        self.entries_lost: Counter = Counter()  # per (sink, kind: frames or events), the entries those losses took
        self.first_decoded: float | None = None  # monotonic time of the run's first frame
        self.last_published: float | None = None  # and of its last write
        # thread name -> (monotonic time of its last progress, why it waits now or None if working)
        self.heartbeats: dict[str, tuple[float, str | None]] = {}
        self.beat_idents: dict[str, int] = {}  # each beating thread's threading.get_ident()
        self.retired: set[str] = set()  # sources removed from the run: not on /metrics (see retire)
        self.gauges: dict[str, Gauge] = {}
        self.model_ready = False  # the model is loaded and warmed up: frames may come
        # seconds each pipeline thread after the decoders worked (beat with no idle reason until its next beat), and
        # seconds and calls of each part a thread runs (a per-source stage, a sink): where the time goes
        # (part, source): a stage's per source ("" for a sink, which takes every source's)
        self.busy_s: Counter[str] = Counter()
        self.part_s: Counter[tuple[str, str]] = Counter()
        self.part_calls: Counter[tuple[str, str]] = Counter()
        self._load_lock = threading.Lock()  # a beat's two updates seen together (a counter never goes down)

    def beat(self, thread: str, idle: str | None = None) -> None:
        """``thread`` made progress now; ``idle`` says why it waits from here on (None: it works,
        and should come back within the stall bound)."""
        with self._load_lock:  # (the time read under it: a load() between never counts a stretch twice)
            now = time.monotonic()
            last = self.heartbeats.get(thread)
            # it worked since its last beat (each thread its own key); a decoder's work includes its waits for
            # the camera inside the source, so not counted (a live camera's would read as always at work)
            if last is not None and last[1] is None and not thread.startswith(_DECODE):
                self.busy_s[thread] += now - last[0]
            self.heartbeats[thread] = (now, idle)
        if idle is None:  # the thread that works, whose waits on its input are no stall (``thread_waits``)
            self.beat_idents[thread] = threading.get_ident()

    def spent(self, part: str, seconds: float, source: str = "", calls: int = 1) -> None:
        """``calls`` of ``part`` (``stage NAME`` on ``source``'s results, ``sink NAME``) took
        ``seconds``; called by the one thread that runs it."""
        with self._load_lock:
            self.part_s[part, source] += seconds
            self.part_calls[part, source] += calls

    def load(self) -> Load:
        """Where the time went so far: each thread's working seconds (its current stretch of work
        included) and each part's seconds and calls by source."""
        with self._load_lock:
            now = time.monotonic()
            busy = Counter(self.busy_s)
            for thread, (at, idle) in list(self.heartbeats.items()):
                if idle is None and not thread.startswith(_DECODE):
                    busy[thread] += now - at
            return Load(now, busy, Counter(self.part_s), Counter(self.part_calls))

    def gauge(self, name: str, help: str, labels: tuple[str, ...], read: Callable[[], Mapping]) -> None:
        """Register (or replace) a value read when the metrics are scraped."""
        self.gauges[name] = Gauge(name, help, labels, read)

    def counter(self, name: str, help: str, labels: tuple[str, ...], read: Callable[[], Mapping]) -> None:
        """Register (or replace) a running count a component keeps, read when the metrics are
        scraped (``name`` without ``_total``: Prometheus adds it)."""
        self.gauges[name] = Gauge(name, help, labels, read, "counter")

    def source(self, name: str) -> SourceCounts:
        with self._lock:
            return self.sources.setdefault(name, SourceCounts())

    def outcome_of(self, name: str) -> dict[str, object] | None:
        """What became of the source's frames so far (``SourceCounts.outcome``), None for a source
        it has not counted."""
        with self._lock:
            counts = self.sources.get(name)
            return None if counts is None else counts.outcome()

    def decoded(self, name: str, at: float) -> None:
        if self.first_decoded is None:
            self.first_decoded = at
        self.source(name).decoded += 1

    def dropped(self, name: str, reason: str, count: int = 1) -> None:
        counts = self.source(name)
        with self._lock:  # several threads drop frames of one source (queue full, stale)
            counts.dropped_by[reason] += count

    def decode_errors(self, name: str, total: int) -> None:
        """The source's decoder has rejected ``total`` packets so far: count the new ones as drops."""
        counts = self.source(name)
        with self._lock:
            new = total - counts.decode_errors
            if new > 0:
                counts.decode_errors = total
                counts.dropped_by[DECODE_ERROR] += new

    def source_again(self, name: str) -> None:
        """A source added to the run under the name of one that ended: its states begin again
        (ended and failed are final for one source), its counts go on (the new one's own totals,
        decode errors, gaps, skipped and missing frames, are added to them: ``_OwnCounts``)."""
        counts = self.source(name)
        with self._lock:
            counts.state, counts.reason = None, ""
            self.retired.discard(name)

    def retire(self, name: str) -> None:
        """A source removed from the run has ended: its series leave /metrics (the run's report
        keeps its counts), so that cameras coming and going do not grow the page for good."""
        with self._lock:
            self.retired.add(name)
            self.heartbeats.pop(decode_thread(name), None)
            self.beat_idents.pop(decode_thread(name), None)
        with self._load_lock:  # its stages' seconds: series of its own
            for key in [key for key in self.part_s if key[1] == name]:
                del self.part_s[key], self.part_calls[key]

    def exposed(self) -> dict[str, SourceCounts]:
        """``snapshot()`` of the sources whose series /metrics shows (all but the retired)."""
        with self._lock:
            return {name: counts.copy() for name, counts in self.sources.items() if name not in self.retired}

    def gaps(self, name: str, seconds: float) -> None:
        """A source's own total of gaps in its stream (``gap_s``), in seconds."""
        self.source(name).gap_s = seconds

    def skipped(self, name: str, frames: int, caught_up: int = 0, unchanged: int = 0, out_of_order: int = 0) -> None:
        """A source's own totals of frames it left out on purpose, and of them those left
        undecoded to catch up with live, a snapshot camera's unchanged pictures, and a watched
        folder's images that came out of order."""
        counts = self.source(name)
        counts.skipped, counts.caught_up, counts.unchanged = frames, caught_up, unchanged
        counts.out_of_order = out_of_order

    def missing(self, name: str, frames: int, why: str) -> None:
        """A source's own total of frames its input lacked (a damaged or truncated file), and why."""
        counts = self.source(name)
        if frames != counts.missing:
            with self._lock:
                counts.missing, counts.damage = frames, why

    def source_state(self, name: str, state: str, reason: str, at: float, again: bool = False) -> str | None:
        """Record that the source entered ``state``; returns the state it left, or None when it
        was in that state already (each reconnect attempt counts, though, and ``again`` enters it
        anew: a stream's new sender) or had ended or failed (both final)."""
        counts = self.source(name)
        with self._lock:
            previous = counts.state
            if (previous == state and state != "reconnecting" and not again) or previous in ("ended", "failed"):
                return None
            if counts.first_at is None:
                counts.first_at = at
            if previous in DOWN_STATES:
                counts.down_s += max(0.0, at - counts.state_since)
            if state == "streaming" and not counts.transitions["streaming"]:  # its start-up, retries included
                counts.connect_s = min(counts.down_s, max(0.0, at - counts.first_at))
            counts.state, counts.reason, counts.state_since = state, reason, at
            counts.transitions[state] += 1
            if state == "reconnecting":
                counts.reconnects += 1
            return previous or "new"

    def published(self, name: str) -> None:
        counts = self.source(name)
        with self._lock:  # sinks may take it back (unpublished) from their own threads
            counts.published += 1
            counts.handed += 1

    def unpublished(self, name: str, reason: str) -> None:
        """A frame counted as published was dropped by a sink after all (its backlog overflowed)."""
        counts = self.source(name)
        with self._lock:
            counts.published -= 1
            counts.dropped_by[reason] += 1

    def batch(self, size: int, network_s: float) -> None:
        self.batches += 1
        self.model_frames += size
        self.batch_sizes[size] += 1
        self.model_batch.add(network_s)

    def stages(self, times: dict[str, float]) -> None:
        """Record the time between each pair of consecutive stamps a frame collected."""
        if "published" in times:
            self.last_published = times["published"]
        previous = None
        for name in STAGES:
            if name in times:
                if previous is not None:
                    self.stage[name].add(times[name] - previous)
                previous = times[name]

    def data_lost(self, sink: str, frames: int = 0, events: int = 0) -> None:
        """``sink``'s store came back from an outage without entries the sink had written: that
        many frames and events (at least)."""
        self.data_losses[sink] += 1
        self.entries_lost[sink, "frames"] += frames
        self.entries_lost[sink, "events"] += events

    def wrote(self, sink: str, source: str, capture_ts: float, publish_ts: float, primary: bool) -> None:
        """A sink wrote one entry of ``source`` at ``publish_ts`` (Unix seconds); the primary
        sink's writes make the capture-to-publish latency, the run's and the source's."""
        self.written[sink] += 1
        if primary:
            latency = publish_ts - capture_ts
            self.capture_to_publish.add(latency)
            self.recent_capture_to_publish.add(latency, time.monotonic())
            window = self.source_latency.get(source)
            if window is None:
                with self._lock:  # read by /metrics from another thread
                    window = self.source_latency.setdefault(source, LatencyWindow(4096))
            window.add(latency)

    def source_latencies(self) -> dict[str, LatencyWindow]:
        """Each source's capture-to-publish window (an empty one for a source with no write yet)."""
        with self._lock:
            names = [*self.sources, *self.source_latency]
            return {name: self.source_latency.get(name) or LatencyWindow(1) for name in dict.fromkeys(names)}

    @property
    def streaming_s(self) -> float:
        """Seconds from the first frame decoded to the last one published (0 before that)."""
        if self.first_decoded is None or self.last_published is None:
            return 0.0
        return max(0.0, self.last_published - self.first_decoded)

    def snapshot(self) -> dict[str, SourceCounts]:
        with self._lock:
            return {name: counts.copy() for name, counts in self.sources.items()}

    def stage_table(self) -> dict[str, dict[str, float]]:
        """p50/p99/max in milliseconds of every stage that saw a frame, and capture to publish."""
        table = {}
        for name, window in [*self.stage.items(), ("capture_to_publish", self.capture_to_publish)]:
            if window.count:
                p50, p99 = window.percentiles(50, 99)
                table[name] = {"p50_ms": 1000 * p50, "p99_ms": 1000 * p99, "max_ms": 1000 * window.max()}
        return table


# The drops that say the engine cannot keep up with a source (not a sink's, not the decoder's).
SHED_REASONS = (QUEUE_FULL, STALE)


def less_work_for(device_type: str, postprocess: str | None, resizable: bool = True) -> str:
    """What the overload line offers to do less per frame, for the engine's device and decision:
    exact post-processing decides every frame pixel (88x fast's cost for a 1080p frame on the
    CPU); on a GPU the work after the network limits first (docs/BENCHMARKS.md, "GPU"), and
    frames resized in the decoder were 2.4x the 16-source rate there (``resizable``: not on
    already, and no sink wants full-size frames)."""
    ways = ["model.postprocess: fast"] if postprocess == "exact" else []
    if device_type == "cuda":
        ways += ["engine.resize_in_decoder: true"] if resizable else []
        ways += ["a smaller model"]
    else:
        ways += ["a smaller model", "a GPU"]
    return ", ".join(ways)


@dataclass(frozen=True)
class HeldBack:
    """What held a run back (``Load.holds_back``): the line's words, and the same as fields for a
    JSON log's record (``cause``: ``stages`` or ``sinks``; the slowest ``part``, its ``ms_per_frame``
    and the sources it ran for)."""

    text: str
    cause: str
    part: str | None = None
    ms_per_frame: float | None = None
    ran_for: tuple[str, ...] = ()

    def fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"cause": self.cause}
        if self.part is not None:
            fields.update(part=self.part, ms_per_frame=round(self.ms_per_frame or 0.0, 1))
        if self.ran_for:
            fields["ran_for"] = list(self.ran_for)
        return fields


@dataclass(frozen=True)
class Load:
    """``RunMetrics.load()``: at ``at`` (monotonic), the seconds each thread worked, and the
    seconds and calls of each part (``stage NAME``, ``sink NAME``) by source."""

    at: float
    busy: Mapping[str, float]
    part_s: Mapping[tuple[str, str], float]
    part_calls: Mapping[tuple[str, str], int]

    def holds_back(self, earlier: Load) -> HeldBack | None:
        """What held the run back between ``earlier`` and this load, when it is a thread after
        the model: the per-source stages' or the sinks' thread, working more than any model worker
        and most of that time (or half of it, the model's workers working less than half: a
        sink's stalls), with its slowest part named and the sources it ran for; an overload
        line's cause and remedy (None: the engine, or not known)."""
        span = self.at - earlier.at
        if span <= 0:
            return None

        def share(thread: str) -> float:
            return (self.busy.get(thread, 0.0) - earlier.busy.get(thread, 0.0)) / span

        model = max((share(t) for t in self.busy if t.startswith("model")), default=0.0)
        for thread, kind, what, cause in (("stage", "stage", "the per-source stages", "stages"),
                                          ("publish", "sink", "the sinks", "sinks")):
            busy = share(thread)
            if busy <= model or busy < (HOLDS_BACK_SHARE if model >= IDLE_MODEL_SHARE else IDLE_MODEL_SHARE):
                continue
            took: Counter[str] = Counter()
            calls: Counter[str] = Counter()
            ran_for: dict[str, list[str]] = {}
            for (part, source), seconds in self.part_s.items():
                n = self.part_calls[part, source] - earlier.part_calls.get((part, source), 0)
                spent = seconds - earlier.part_s.get((part, source), 0.0)
                # (a source removed and added again since: its counts began anew, the earlier load's are larger)
                if part.startswith(kind + " ") and n > 0 and spent >= 0:
                    took[part] += spent
                    calls[part] += n
                    ran_for.setdefault(part, []).append(source)
            said = f"{what} hold the run back, not the model (their thread worked {busy:.0%} of the time"
            if not took:
                return HeldBack(f"{said}): make them faster", cause)
            slowest = max(took, key=took.__getitem__)
            sources = tuple(s for s in ran_for[slowest] if s)
            on = f" on {_some(sources)}'s results" if kind == "stage" and sources else ""
            ms = 1000 * took[slowest] / calls[slowest]
            # one thread runs every source's stages (sinks): a stage on one camera holds back the others
            return HeldBack(f"{said}; {slowest} took {ms:.0f} ms a frame{on}): make that {kind} faster", cause, slowest,
                            ms, sources)
        return None


# A thread after the model that works this share of the time or more holds the run back; so does
# one that works more than the model's workers when they work less than the second share.
HOLDS_BACK_SHARE = 0.8
IDLE_MODEL_SHARE = 0.5


# What an overload watch says: (logging level, message, the sources it names, its record's fields).
Said = tuple[int, str, tuple[str, ...], dict[str, Any]]


class OverloadWatch:
    """Tells when a source loses more than ``share`` of its frames to the engine's shedding
    (``queue_full``, ``stale``) over the last ``window_s`` seconds: once, and again only after it
    kept up (under half that share over a window) and fell behind anew. A window tells nothing
    when it has fewer than ``least`` frames decoded (a source that barely delivers), when the
    source was not streaming all along it (connecting, stalled, reconnecting, a gap in its
    stream, a new sender: the burst after one is not an overload), when segstream itself was
    paused in it (``paused_since``: seconds paused after a moment, SIGSTOP or suspend), or when
    it is much longer than ``window_s`` (the run loop stood still). An overload also takes at
    least ``least_dropped`` frames shed and at least one second's worth of the source's frames:
    a handful of drops is no overload, whatever share of a slow source it is. An overloaded
    source keeps up again once its windows stayed under half the share for ``calm_s`` more (a
    source hovering about the share is one overload, not a warning and a recovery a minute)."""

    def __init__(self, window_s: float = 10.0, share: float = 0.2, least: int = 10, least_dropped: int = 10,
                 paused_since: Callable[[float], float] = pauses.since, group_s: float = 30.0,
                 calm_s: float | None = None):
        self.window_s = window_s
        self.share = share
        self.least = least
        self.least_dropped = least_dropped
        self.paused_since = paused_since
        # after a warning (or a "keeps up again"), the sources that follow within group_s are said together, in
        # one line when it has passed: 44 cameras falling behind one model are one line, not 44 with the same advice
        self.group_s = group_s
        # found probing as a home-lab NVR user: 11 overloaded / keeps-up lines in 6 min at a steady 20%
        self.calm_s = window_s if calm_s is None else calm_s
        self._calm_since: dict[str, float] = {}  # overloaded source -> since when its windows were under share / 2
        self.overloaded: set[str] = set()
        # (monotonic time, {source: _Sample}), oldest first, back to one window ago
        self._samples: deque[tuple[float, dict[str, _Sample]]] = deque()
        self._said_at: dict[bool, float] = {}  # overloaded (True) or keeping up again: when last said
        self._said_of: dict[bool, set[str]] = {True: set(), False: set()}  # and of which sources
        self._held: dict[bool, dict[str, _Window]] = {True: {}, False: {}}  # to be said once group_s has passed
        # how the engine could do less per frame, as the overload line advises (``less_work_for``)
        self.less_work = "a smaller model, a GPU"
        # where the run's time goes (``RunMetrics.load``): a thread after the model that holds the
        # run back is named instead of the engine (found probing: a slow stage of one's own was
        # blamed on the model, "a smaller model, a GPU")
        self.load: Callable[[], Load] | None = None

    def observe(self, now: float, counts: Mapping[str, SourceCounts]) -> list[Said]:
        """Take the counts at ``now``; returns the (logging level, message, sources it names, the
        record's fields beside them) to log."""
        self._samples.append((now, {name: _Sample.of(c) for name, c in counts.items()},
                              self.load() if self.load is not None else None))
        while len(self._samples) > 1 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        since, before, loaded = self._samples[0]
        span = now - since
        if span < self.window_s or span > 1.5 * self.window_s or self.paused_since(since) > 0:
            if span >= self.window_s:  # a window that tells nothing breaks a calm spell (found reviewing)
                self._calm_since.clear()
            return self._due(now)
        turned: dict[bool, dict[str, _Window]] = {True: {}, False: {}}
        for name, after in self._samples[-1][1].items():
            earlier = before.get(name)
            if earlier is None or not after.streaming_since(earlier):
                self._calm_since.pop(name, None)
                continue
            frames = after.decoded - earlier.decoded
            lost = {reason: n - earlier.shed.get(reason, 0) for reason, n in after.shed.items()}
            lost = {reason: n for reason, n in lost.items() if n > 0}
            if frames < self.least:
                self._calm_since.pop(name, None)
                continue
            dropped = sum(lost.values())
            # of the frames whose fate the window settled: frames decoded before it may be dropped in
            # it (found probing 64 cameras: "100-110% of their frames dropped")
            fraction = dropped / max(frames, dropped + after.published - earlier.published)
            enough = dropped >= max(self.least_dropped, frames / span)
            if fraction > self.share and enough and name not in self.overloaded:
                self.overloaded.add(name)
                last = self._samples[-1][2]
                cause = last.holds_back(loaded) if last is not None and loaded is not None else None
                turned[True][name] = _Window(frames, fraction, lost, now, cause)
            elif name in self.overloaded and fraction < self.share / 2:
                calm_since = self._calm_since.setdefault(name, now)
                if now - calm_since >= self.calm_s:
                    self.overloaded.discard(name)
                    del self._calm_since[name]
                    turned[False][name] = _Window(frames, fraction, lost, now)
            else:
                self._calm_since.pop(name, None)
        said = []
        for overloaded, sources in turned.items():
            for name in list(sources):  # held and turned back before it was said: nothing to say of either
                if self._held[not overloaded].pop(name, None) is not None:
                    del sources[name]
            if not sources:
                continue
            # a source of the last line that turned back and again is a new episode of its own: said at once
            if now - self._said_at.get(overloaded, -math.inf) >= self.group_s \
                    or sources.keys() <= self._said_of[overloaded]:
                said.append(self._say(overloaded, sources, now))
            else:
                self._held[overloaded].update(sources)
        return said + self._due(now)

    def flush(self) -> list[Said]:
        """What is held back to be said together, said now (the run ends)."""
        now = self._samples[-1][0] if self._samples else 0.0
        said = [self._line(overloaded, sources, now) for overloaded, sources in self._held.items() if sources]
        self._held = {True: {}, False: {}}
        return said

    def _due(self, now: float) -> list[Said]:
        said = []
        for overloaded, sources in self._held.items():
            if sources and now - self._said_at.get(overloaded, -math.inf) >= self.group_s:
                said.append(self._say(overloaded, sources, now))
                self._held[overloaded] = {}
        return said

    def _say(self, overloaded: bool, sources: dict[str, _Window], now: float) -> Said:
        self._said_at[overloaded] = now
        self._said_of[overloaded] = set(sources)
        return self._line(overloaded, sources, now)

    def _line(self, overloaded: bool, sources: dict[str, _Window], now: float) -> Said:
        names = tuple(sources)
        shares = sorted(round(100 * w.fraction) for w in sources.values())
        share = f"{shares[0]}%" if shares[0] == shares[-1] else f"{shares[0]}-{shares[-1]}%"
        # a line held back to be said with others tells of windows that ended a while ago
        # (found probing: "in the last 10 s" of a source reconnecting, with no drop in them)
        ago = now - min(w.at for w in sources.values())
        if ago < 1:
            when = f"in the last {self.window_s:g} s"
        elif len(names) == 1:
            when = f"in {self.window_s:g} s that ended {ago:.0f} s ago"
        else:
            when = f"in {self.window_s:g} s windows of the last {ago + self.window_s:.0f} s"
        if overloaded:
            lost: Counter[str] = Counter()
            for window in sources.values():
                lost.update(window.lost)
            reasons = ", ".join(f"{reason} {n}" for reason, n in lost.items())
            causes = {window.cause for window in sources.values()}
            its = "its" if len(names) == 1 else "their"
            fields: dict[str, Any] = {"cause": "engine"}
            if len(causes) == 1 and (cause := causes.pop()) is not None:
                whose = "the source's" if len(names) == 1 else "the sources'"
                advice, fields = f"{cause.text}, or set or lower {whose} max_fps", cause.fields()
            else:
                advice = (f"set or lower {its} max_fps (frames {'it leaves' if its == 'its' else 'they leave'} out are "
                          f"never converted), or give the engine less to do per frame ({self.less_work})")
            if len(names) == 1:
                return logging.WARNING, (f"source {names[0]} is overloaded: {share} of its frames dropped {when} "
                                         f"({reasons}) — {advice}"), names, fields
            return logging.WARNING, (
                f"sources {_some(names)} ({len(names)} sources) are overloaded: {share} of their frames dropped "
                f"{when} ({reasons}) — {advice}"), names, fields
        frames = sum(w.frames for w in sources.values())
        if len(names) == 1:
            return logging.INFO, f"source {names[0]} keeps up again: {share} of its {frames} frames dropped {when}", \
                names, {}
        return logging.INFO, (f"sources {_some(names)} ({len(names)} sources) keep up again: {share} of their "
                              f"{frames} frames dropped {when}"), names, {}


# A line names at most this many sources (a JSON log line's `sources` has them all).
NAMED_AT_MOST = 12


def _some(names: tuple[str, ...]) -> str:
    """``cam01, cam02, ...`` and how many more, for a line that stays readable with 400 sources."""
    if len(names) <= NAMED_AT_MOST:
        return ", ".join(names)
    return f"{', '.join(names[:NAMED_AT_MOST])} and {len(names) - NAMED_AT_MOST} more"


@dataclass(frozen=True)
class _Window:
    """A source's last window, as the overload line tells it."""

    frames: int
    fraction: float
    lost: dict[str, int]
    at: float  # when the window ended (monotonic)
    cause: HeldBack | None = None  # a thread after the model that held the run back (``Load.holds_back``)


@dataclass(frozen=True)
class _Sample:
    """What ``OverloadWatch`` keeps of a source's counts at one moment."""

    decoded: int
    shed: dict[str, int]
    state: str | None
    transitions: int
    gap_s: float
    published: int = 0

    @classmethod
    def of(cls, counts: SourceCounts) -> _Sample:
        return cls(counts.decoded, {reason: counts.dropped_by.get(reason, 0) for reason in SHED_REASONS},
                   counts.state, sum(counts.transitions.values()), counts.gap_s, counts.published)

    def streaming_since(self, earlier: _Sample) -> bool:
        """Whether the source streamed all along from ``earlier`` to this sample (a source
        without states, None, counts as streaming)."""
        return (self.state in (None, "streaming") and self.transitions == earlier.transitions
                and self.gap_s == earlier.gap_s)
