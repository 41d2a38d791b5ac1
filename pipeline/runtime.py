"""Threads, bounded queues, back-pressure, batching and shutdown for one pipeline run.

    source threads ─► Batcher ─► model thread(s) ─► post thread ─► stage thread ─► sink thread
    (decode, one      (FIFO per   (upload, pre,      (post-process,  (per-source     (publish to
     per source)       source)     network)           to the host,    stages, in      every sink,
                                                      batch order)    frame order)    poll, flush)

At most ``max_inflight`` batches are between the model threads and the end of post-processing;
batches are post-processed in the order they were taken, whichever worker ran them.
Each source's buffer policy decides what its full queue does: ``every_frame`` sources block
(nothing is lost), ``newest`` sources drop their oldest queued frame and frames gone stale.
Each source's results reach its segment filter (``filters:``), the per-source stages (the
tracker's slot) and the sinks in frame order. Each source's state (connecting, streaming, ...,
ended, failed) is logged, counted and published as a ``state`` event; a source that fails ends
the run only when it is required. Stages know nothing of this: a source yields frames, the
model stage maps batches to results, a per-source stage maps one result to one result, a sink
publishes one result at a time.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import functools
import logging
import math
import queue
import sys
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Protocol, TextIO

from segstream.connectors.catch_up import CLOCK_DRIFT
from segstream.connectors.errors import (
    THREAD_LIMIT_HINT,
    ConfigError,
    ResourceLimit,
    SegstreamError,
    SinkError,
    SourceError,
    thread_start_failed,
)
from segstream.connectors.frames import WALL_OFFSET, Frame, frame_problem, out_of_line
from segstream.connectors.sink import SINK_DROPS, SINK_METHODS, Sink
from segstream.connectors.source import SOURCE_STATES, VideoSource
from segstream.connectors.threads import NamedThread, waiting_for_input
from segstream.models.results import Event, FrameResult
from segstream.models.segment_filter import FILTER_REASONS, SegmentFilter
from segstream.models.segmenter import FamilyAdapter, nonfinite_advice
from segstream.pipeline.engine import (
    Batcher, BufferPolicy, InFlight, ModelStage, cgroup_cpu_quota, engine_layout, usable_cores,
)
from segstream.pipeline.logs import journal_prefix, new_run_id
from segstream.pipeline.own_parts import NamedStage, OwnSource, build_stages
from segstream.pipeline.metrics import (
    DECODE_ERROR, MODEL_NONFINITE, SHED_REASONS, OverloadWatch, RunMetrics, Said, SourceCounts, decode_thread,
    less_work_for, wall_clock_step,
)
from segstream.pipeline.source_states import SourceStates, first_frame

THREAD_PREFIX = "segstream-"
_END = object()
_POLL_IDLE_S = 0.5
# Past this many sources, the summary gives each its own line (and the status line sums queues).
MANY_SOURCES = 4
ENGINE_DROPS = (*SHED_REASONS, DECODE_ERROR, MODEL_NONFINITE)  # frames the engine itself leaves out: not a sink's output lost
# sources named per state in the status line; more are counted (the final report names each)
STATE_NAMES_SHOWN = 8
# How long a stopped run waits for a source's frames() to return after close() before it ends
# without that source (a source of one's own blocked in a read that ignores close()).
SOURCE_CLOSE_GRACE_S = 5.0
SINK_CLOSE_SAY_S = 15.0  # a sink's close() longer than this is said (a Redis backlog's drain takes drain_timeout_s)
log = logging.getLogger("segstream.runtime")
QUEUE_SIZE = 8  # frames queued per source, where nothing says otherwise
BEHIND_WARN_S = 2.0  # a live source this far behind its stream's clock is named in a warning
BEHIND_SHOWN_S = 1.0  # and this far, on the status line
# A camera whose sender_ts is this far from when its frame was decoded: its clock is off (a network
# and decoder delay is well under it), and frames paired across cameras by sender_ts are off by as much.
SENDER_SKEW_WARN_S = 5.0
OVERLOAD_CHECK_S = 1.0  # how often the sources' share of dropped frames is looked at
STATE_ORDER_WAIT_S = 10.0  # the longest a state event waits for the source's frames decoded before it


@functools.cache
def fixed_heap_threshold(threshold: int = 4 << 20) -> bool:
    """Have glibc serve every allocation of ``threshold`` bytes or more (decoded frames, label
    maps) with its own mmap, returned to the system when freed. glibc otherwise raises that
    threshold each time such a block is freed, so frame-sized blocks move into the heap, where
    blocks freed by one thread and allocated by another leave holes: a 4K run grew from 1.8 to
    2.6 GB in 120 frames. Once per process; False where the C library is not glibc."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, threshold))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


class FrameStage(Protocol):
    """A stage after the model that sees one source's results in frame order (a tracker).

    It may also have ``finish(reason="end") -> list[Event]``, called once when its source's last
    result has passed (with ``"failed"`` when the source failed); the events it returns are
    published after that result.
    """

    def process(self, result: FrameResult) -> FrameResult: ...


StageFactory = Callable[[str], "FrameStage | None"]  # source name -> that source's stage (None: none there)


@dataclass(frozen=True, slots=True)
class _Removed:
    """What the run keeps of a source removed from it once its end has reached the sinks."""

    name: str
    live: bool


@dataclass(slots=True)
class SourceEnd:
    """What follows a source's last result to the sinks: its stages' ``finish()`` events, then
    its ``ended`` state. A sink with ``source_ended(name)`` hears of it once these are published."""

    source: str
    events: list[Event]
    index: int = -1  # the source's index in the run


def skipped_why(skipped: int, caught_up: int, unchanged: int = 0, out_of_order: int = 0) -> str:
    """Why frames were left out: ``max_fps``, ``behind live`` (catch-up), ``unchanged`` (a
    snapshot camera's picture of before), ``out of order`` (a watched folder's late images), or
    several with their counts."""
    reasons = [(why, n) for why, n in (("max_fps", skipped - caught_up - unchanged - out_of_order),
                                       ("behind live", caught_up), ("unchanged", unchanged),
                                       ("out of order", out_of_order)) if n]
    if len(reasons) <= 1:
        return reasons[0][0] if reasons else "max_fps"
    return ", ".join(f"{why} {n}" for why, n in reasons)


@dataclass(slots=True)
class SourceReport:
    """One source's run: frames decoded, published and dropped (by reason: ``queue_full``,
    ``stale``, ``decode_error``), its final state and why it entered it, how often it entered
    each state and how often it reconnected."""

    decoded: int = 0
    published: int = 0
    dropped: int = 0
    decode_errors: int = 0
    dropped_by: dict[str, int] = field(default_factory=dict)
    state: str = ""
    reason: str = ""
    reconnects: int = 0
    transitions: dict[str, int] = field(default_factory=dict)
    down_s: float = 0.0  # seconds spent connecting, stalled or reconnecting
    missing: int = 0  # about how many frames its input lacked (a damaged or truncated file: never decoded)
    damage: str = ""  # and why
    skipped: int = 0  # frames left out on purpose (max_fps, catch-up): not decoded as far as these counts go
    handed: int = 0  # frames handed to the sinks: published, and those a sink dropped after all
    connect_s: float = 0.0  # of down_s, the start-up's seconds up to its first frames, retries included (not an outage)
    caught_up: int = 0  # of skipped, frames left undecoded to catch up with live (max_behind_s)
    unchanged: int = 0  # of skipped, a snapshot camera's polls that brought the picture of its last frame
    out_of_order: int = 0  # of skipped, a watched folder's images that came after later ones were read

    @property
    def streamed(self) -> bool:
        """Whether it delivered frames at some point (a live source's ``streaming``, or any frame)."""
        return bool(self.decoded or self.transitions.get("streaming"))

    @property
    def never_streamed(self) -> bool:
        """Whether it tried and never delivered a frame (a camera down for the whole run; not a
        source stopped before its first attempt had ended)."""
        return self.decoded == 0 and not self.transitions.get("streaming") and self.reconnects > 0

    @property
    def balanced(self) -> bool:
        """Every frame decoded (or rejected) is published or dropped."""
        return self.decoded + self.decode_errors == self.published + self.dropped

    @property
    def abandoned(self) -> int:
        """Frames decoded but neither published nor dropped: those still in the engine when an
        abort (a second signal) cut the run short. 0 for a run that ended or stopped."""
        return max(0, self.decoded + self.decode_errors - self.published - self.dropped)


@dataclass
class RunReport:
    """Counts and latencies of one run. ``decoded + decode_errors == published + dropped`` for
    every source when the run ends without error (a rejected packet is a frame dropped as
    ``decode_error``); ``stopped`` tells a run ended by ``stop()`` from one whose sources ran out,
    ``failed`` which sources failed and why. Latencies are capture to publish (as the first sink
    with ``on_written`` wrote each entry; with no such sink, once every sink had it), in ms."""

    sources: dict[str, SourceReport]
    batches: int
    model_frames: int
    elapsed_s: float
    stopped: bool
    latency_ms_p50: float
    latency_ms_p99: float
    latency_ms_max: float
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    run_id: str = ""
    sinks: dict[str, dict] = field(default_factory=dict)  # each sink's ``status()``, where it has one
    model: str = ""  # the model's name, as entries' ``model``
    checkpoint_id: str = ""  # the weights' short SHA-256, as entries' ``checkpoint_id`` ("" unknown)
    # capture to publish per source (its recent 4096 entries): p50_ms, p99_ms, max_ms
    source_latency: dict[str, dict[str, float]] = field(default_factory=dict)
    # reasons a sink gave for results it never wrote (its on_dropped): its own reasons too
    sink_drop_reasons: frozenset[str] = frozenset()
    # events not handed to every sink: publishing ended first (a sink refused for good, an abort)
    events_abandoned: int = 0
    # from the first frame decoded to the last published (0: none yet), and the model's warm-up
    # (compiling, CUDA graphs) before the first frame: the rate is over the streaming time, so a
    # compile's minute does not read as a slow pipeline (found probing CPU compiles: "2.9 fps")
    streaming_s: float = 0.0
    warm_up_s: float = 0.0

    @property
    def decoded(self) -> int:
        return sum(s.decoded for s in self.sources.values())

    @property
    def published(self) -> int:
        return sum(s.published for s in self.sources.values())

    @property
    def handed(self) -> int:
        """Frames handed to the sinks: a count that never goes down while the run goes on."""
        return sum(s.handed for s in self.sources.values())

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.sources.values())

    @property
    def caught_up(self) -> int:
        return sum(s.caught_up for s in self.sources.values())

    @property
    def unchanged(self) -> int:
        return sum(s.unchanged for s in self.sources.values())

    @property
    def out_of_order(self) -> int:
        return sum(s.out_of_order for s in self.sources.values())

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self.sources.values())

    @property
    def dropped_frames(self) -> dict[str, int]:
        return {name: s.dropped for name, s in self.sources.items()}

    @property
    def fps(self) -> float:
        """Frames published a second from the first frame decoded to the last published (the whole
        run's time when that is unknown, or for one frame)."""
        span = self.streaming_s if self.streaming_s > 0 and self.published > 1 else self.elapsed_s
        return self.published / span if span > 0 else 0.0

    @property
    def abandoned(self) -> int:
        return sum(s.abandoned for s in self.sources.values())

    @property
    def balanced(self) -> bool:
        return all(s.balanced for s in self.sources.values())

    @property
    def failed(self) -> dict[str, str]:
        """Source name -> why it failed, for every source that failed."""
        return {name: s.reason for name, s in self.sources.items() if s.state == "failed"}

    @property
    def undelivered(self) -> dict[str, int]:
        """Reason -> results a sink had taken but never wrote (its server stayed away), over all
        sources: what makes the run's output incomplete, unlike the engine's own shedding."""
        lost: Counter[str] = Counter()
        for s in self.sources.values():
            lost.update({reason: n for reason, n in s.dropped_by.items()
                         if (reason in SINK_DROPS or reason in self.sink_drop_reasons) and n})
        return dict(lost)

    @property
    def nonfinite(self) -> int:
        """Frames dropped because the network's outputs for them held NaN or infinity (an fp16
        overflow): the output lacks them, unlike the engine's shedding of load."""
        return sum(s.dropped_by.get(MODEL_NONFINITE, 0) for s in self.sources.values())

    @property
    def data_losses(self) -> dict[str, int]:
        """Sink name -> times its store lost entries the sink had written (Redis back from an
        outage without them, a stream evicted or deleted under the run): the run's output is
        incomplete there too, though every result was written once."""
        return {name: status["data_losses"] for name, status in self.sinks.items() if status.get("data_losses")}

    def summary(self, outcome: str | None = None) -> str:
        """The run's outcome (``done``, ``stopped``, ``failed``; or ``outcome``), counts, latency,
        and each source and sink: one line, or with more than ``MANY_SOURCES`` sources a line
        and then one per source, with that source's latency."""
        mean_batch = self.model_frames / self.batches if self.batches else 0.0
        removed = [name for name, s in self.sources.items() if s.state == "ended" and s.reason.startswith("removed")]
        if len(removed) <= MANY_SOURCES:  # each said; more (cameras coming and going) in one line
            removed = []
        listed = {name: s for name, s in self.sources.items() if name not in set(removed)} if removed else self.sources
        many = len(listed) + bool(removed) > MANY_SOURCES
        sources = [
            f"{name} {s.published}/{s.decoded}"
            + (f" dropped {s.dropped} ({', '.join(f'{k} {v}' for k, v in sorted(s.dropped_by.items()))})" if s.dropped else "")
            + (f" decode errors {s.decode_errors}" if s.decode_errors else "")
            + (f" skipped {s.skipped} ({skipped_why(s.skipped, s.caught_up, s.unchanged, s.out_of_order)})"
               if s.skipped else "")
            + (f" reconnects {s.reconnects}" if s.reconnects else "")
            + (f" connect {s.connect_s:.0f} s" if s.connect_s >= 1 and s.streamed else "")
            + (f" down {s.down_s - s.connect_s:.0f} s" if s.down_s - s.connect_s >= 1 and s.streamed else "")
            + (f" connecting {s.down_s:.0f} s" if s.down_s >= 1 and not s.streamed and not s.never_streamed else "")
            + (" NEVER STREAMED" if s.never_streamed and s.state != "failed" else "")
            + (f" abandoned {s.abandoned}" if s.abandoned else "")
            + (f" DAMAGED, about {s.missing} frames missing" if s.missing else "")
            + (" FAILED" if s.state == "failed" else "")  # the reason is in ``failed``, printed on its own line
            + (" (removed)" if s.state == "ended" and s.reason.startswith("removed") else "")
            + (self._source_latency(name) if many else "")
            for name, s in listed.items()
        ]
        if removed:
            gone = [self.sources[name] for name in removed]
            dropped = sum(s.dropped for s in gone)
            sources.append(f"{len(removed)} sources removed during the run {sum(s.published for s in gone)}/"
                           f"{sum(s.decoded for s in gone)}" + (f" dropped {dropped}" if dropped else ""))
        latency = (
            f"latency p50 {self.latency_ms_p50:.0f} ms p99 {self.latency_ms_p99:.0f} ms max {self.latency_ms_max:.0f} ms"
            if not math.isnan(self.latency_ms_p50) else "latency n/a"
        )
        outcome = outcome or ("failed" if self.failed else "stopped" if self.stopped else "done")
        sinks = "".join(f"; {status['line']}" for status in self.sinks.values() if status.get("line"))
        abandoned = f", {self.abandoned} abandoned in flight" if self.abandoned else ""
        if self.events_abandoned:
            abandoned += (f", {self.events_abandoned} event{'s' if self.events_abandoned != 1 else ''} abandoned "
                          "(not handed to every sink)")
        if many:  # the sinks on the first line, each source on its own after it
            tail = f"{latency}{sinks}; {len(self.sources)} sources:" + "".join(f"\n  {line}" for line in sources)
        else:
            tail = f"{latency}; {', '.join(sources)}{sinks}"
        # the rate is over the streaming time: said where the run's time is plainly longer (a live source
        # that waited for its camera; found probing the docs: "8 frames published in 8.8 s (18.5 fps)")
        rest, warmed = self.elapsed_s - self.warm_up_s, self.warm_up_s >= 1
        rate = f"{self.fps:.1f} fps"
        if rest - self.streaming_s >= 1 and self.streaming_s < 0.9 * rest:
            rate += f" over {self.streaming_s:.1f} s of streaming" + ("," if warmed else "")
        if warmed:
            rate += f" after {self.warm_up_s:.1f} s of warm-up"
        return (
            f"{outcome}: {self.published} frames published in {self.elapsed_s:.1f} s ({rate}), "
            f"{self.dropped} dropped{abandoned}, {self.batches} batches (mean {mean_batch:.1f}), "
            f"{tail}"
        )

    def as_dict(self, outcome: str | None = None) -> dict[str, Any]:
        """The summary's figures as JSON values (the summary line's ``summary`` field in JSON logs):
        a log pipeline reads them without parsing the line."""

        def ms(value: float) -> float | None:
            return None if math.isnan(value) else round(value, 1)

        return {
            "outcome": outcome or ("failed" if self.failed else "stopped" if self.stopped else "done"),
            "run_id": self.run_id, "model": self.model, "checkpoint_id": self.checkpoint_id or None,
            "elapsed_s": round(self.elapsed_s, 3), "streaming_s": round(self.streaming_s, 3),
            "warm_up_s": round(self.warm_up_s, 3), "fps": round(self.fps, 2),
            "decoded": self.decoded, "published": self.published, "dropped": self.dropped, "skipped": self.skipped,
            "events_abandoned": self.events_abandoned,
            "batches": self.batches,
            "latency_ms": {"p50": ms(self.latency_ms_p50), "p99": ms(self.latency_ms_p99), "max": ms(self.latency_ms_max)},
            "sources": {
                name: {"state": s.state, "reason": s.reason, "decoded": s.decoded, "published": s.published,
                       "dropped": s.dropped, "dropped_by": dict(s.dropped_by), "decode_errors": s.decode_errors,
                       "skipped": s.skipped, "caught_up": s.caught_up, "unchanged": s.unchanged,
                       "out_of_order": s.out_of_order,
                       "reconnects": s.reconnects,
                       "down_s": round(s.down_s, 1), "missing": s.missing}
                for name, s in self.sources.items()
            },
            # each sink's counts (what it dropped, what its store lost), as its part of the line says them
            "sinks": {name: {key: value for key, value in status.items() if key != "line"}
                      for name, status in self.sinks.items()},
        }

    def _source_latency(self, name: str) -> str:
        latency = self.source_latency.get(name)
        return f", latency p50 {latency['p50_ms']:.0f} ms p99 {latency['p99_ms']:.0f} ms" if latency else ""


class _Channel:
    """A bounded FIFO between two runtime threads whose ``put`` gives up once the run aborts."""

    def __init__(self, size: int, aborted: threading.Event):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._aborted = aborted

    def put(self, item: object) -> bool:
        while True:
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                if self._aborted.is_set():
                    return False

    def end(self) -> None:
        """Put the end marker even when the consumer is gone (it is never waited for)."""
        while True:
            try:
                self._queue.put(_END, timeout=0.1)
                return
            except queue.Full:
                if self._aborted.is_set():
                    try:
                        self._queue.get_nowait()
                    except queue.Empty:
                        pass

    def get(self, timeout: float | None = None) -> object:
        """The next item, or None after ``timeout`` seconds with nothing there."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def wake(self) -> None:
        """Make a waiting ``get`` return None now (when there is room; else it wakes anyway)."""
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass

    def drain(self, each: Callable[[object], None] = lambda item: None) -> None:
        """Consume up to the end marker (after a failure, so producers are never stuck), each item
        to ``each``."""
        while (item := self._queue.get()) is not _END:
            each(item)

    def qsize(self) -> int:
        return self._queue.qsize()


# torch's intra-op thread count is the process's: runs at once in one process share it. The
# caller's count is kept when the first of them starts and given back when the last one ends.
_TORCH_THREADS_LOCK = threading.Lock()
_torch_threads_users = 0
_callers_torch_threads = 0


def _torch_threads_taken(threads: int) -> None:
    global _torch_threads_users, _callers_torch_threads
    import torch

    with _TORCH_THREADS_LOCK:
        if not _torch_threads_users:
            _callers_torch_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        _torch_threads_users += 1


def _torch_threads_given_back() -> None:
    global _torch_threads_users
    import torch

    with _TORCH_THREADS_LOCK:
        _torch_threads_users -= 1
        if not _torch_threads_users:
            torch.set_num_threads(_callers_torch_threads)


def _rate(fps: float) -> str:
    """A rate for the status line: a tenth, or two digits below 1 fps (a camera sending a frame
    every 3 s showed "0.0 in / 0.0 out fps")."""
    return f"{fps:.2g}" if 0 < fps < 1 else f"{fps:.1f}"


class Runtime:
    """Runs sources -> model stage -> per-source stages -> sinks until the sources end or
    ``stop()`` is called.

    ``stop()`` may be called from any thread or a signal handler (it only sets a flag): sources are
    closed, frames already decoded drain through the model and the sinks, sinks are flushed and
    closed, and ``run()`` returns. A source whose ``frames()`` has not returned
    ``SOURCE_CLOSE_GRACE_S`` after its ``close()`` is left behind, with a warning. A
    KeyboardInterrupt inside ``run()`` (Ctrl-C when it runs on the main thread) aborts: nothing
    more is drained, the summary counts what was abandoned, and the interrupt is raised; to drain
    on Ctrl-C, call ``stop()`` from a SIGINT handler (as ``segstream run`` does) or run ``run()``
    on another thread. An exception in any stage stops everything, drains what still
    can be drained and is raised from ``run()``. A source that yields something other than a
    ``Frame`` with an H x W x 3 uint8 image fails, naming the frame; sinks and stage factories
    of the wrong shape are refused here. ``max_frames`` caps the frames taken from each
    source. ``queue_size`` (all sources, or by name) and ``buffers`` (by name) give each source's
    queue and ``BufferPolicy``; a source not named there gets the ``queue_size`` and
    ``buffer_policy`` attributes it has (a source of one's own says what suits it), else
    ``QUEUE_SIZE`` frames and ``newest`` when live, ``every_frame`` otherwise. A source that fails (its ``frames()`` raises) ends the run
    when it is ``required`` (None: every source is), else the others carry on and the report
    lists it in ``failed``. Source states are logged and counted; ``publish_states`` also publishes
    each transition as a ``state`` event (``segstream run`` turns it on), ``publish_settings`` a
    ``settings`` event with each source's first frame and the first after its filters changed
    (``made_by``: the model, its weights and the versions; ``segstream run`` and ``results``).
    ``progress`` gets a status line every ``progress_interval_s`` and the summary.
    ``warm_up`` (height, width) runs the model on blank frames of that size before the first
    frame is taken, so compilation does not count as latency. ``resize_in_decoder`` has sources
    that decode with FFmpeg convert frames at the adapter's ``geometry.scale`` (no sink may draw on
    frames then). ``filters`` (source name -> ``SegmentFilter``) drop and clip each source's
    segments before its stages, counted in ``filtered`` ((source, reason) -> segments).
    """

    def __init__(
        self,
        sources: Sequence[VideoSource],
        adapter: FamilyAdapter,
        sinks: Sequence[Sink],
        *,
        stages: Sequence[StageFactory] = (),
        filters: Mapping[str, SegmentFilter] | None = None,
        batch_size: int = 4,
        max_wait_ms: float = 20.0,
        max_inflight: int = 2,
        model_workers: int = 1,
        queue_size: int | Mapping[str, int] | None = None,
        frame_budget_mb: float | None = None,
        buffers: Mapping[str, BufferPolicy] | None = None,
        required: Collection[str] | None = None,
        publish_states: bool = False,
        publish_settings: bool = False,
        max_frames: int | None = None,
        metrics: RunMetrics | None = None,
        warm_up: tuple[int, int] | None = None,
        progress: TextIO | None | bool = True,
        progress_interval_s: float = 2.0,
        run_id: str | None = None,
        resize_in_decoder: bool = False,
        threads: int | None = None,
        stall_after_s: float = 60.0,
        oldest_first: bool = False,
    ):
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        if max_inflight < model_workers or model_workers < 1:
            raise ValueError("model_workers must be at least 1 and max_inflight at least model_workers")
        self.sources = list(sources)
        self._source_names = set(names)  # every source the run has had (events may name one removed since)
        # sources whose frames carry a capture time from before segstream read them (an image
        # folder timed by its images' names): latency is measured from the read
        self._captured_before_read = {s.name for s in self.sources if getattr(s, "captures_before_read", False)}
        self.adapter = adapter
        self.sinks = list(sinks)
        for sink in self.sinks:
            if missing := [m for m in SINK_METHODS if not callable(getattr(sink, m, None))]:
                raise TypeError(f"sink {getattr(sink, 'name', type(sink).__name__)!r} lacks {', '.join(missing)}: a sink "
                                f"has {', '.join(SINK_METHODS)} (segstream.Sink)")
        for factory in stages:
            if not callable(factory) or (not isinstance(factory, type) and hasattr(factory, "process")):
                raise TypeError(f"stages takes factories, called with a source's name, that return a stage; got "
                                f"{type(factory).__name__!r} (pass lambda source: {type(factory).__name__}(...))")
        # decoded images ride along with results only while some sink draws on them
        self._wants_images = any(getattr(sink, "wants_images", False) for sink in self.sinks)
        self.model_stage = ModelStage(adapter, max_inflight, keep_images=self._wants_images)
        self._decode_size = None  # what sources that decode with FFmpeg scale frames to (resize_in_decoder)
        if resize_in_decoder:
            if self._wants_images:
                raise ConfigError("engine.resize_in_decoder: a sink needs full-size frames (a preview, overlay or "
                                  "COCO images) — turn one of them off")
            self._decode_size = adapter.geometry.scale
            for source in self.sources:
                if hasattr(source, "decode_size"):  # decodes with FFmpeg
                    source.decode_size = self._decode_size
        self.stage_factories = list(stages)
        self.filters = {name: f for name, f in (filters or {}).items() if name in self._source_names}
        # What made this run's results, in each source's `settings` event (SCHEMA): the model and the
        # software; from_config adds the weights file and its digest.
        self.made_by: dict[str, Any] = {} if not publish_settings else {
            "model": adapter.name, **_labels_made_by(adapter), "precision": getattr(adapter, "precision", None),
            "postprocess": getattr(adapter, "postprocess", None), "device": str(getattr(adapter, "device", "")),
            **software_versions()}
        # the weights that make its results (from_config: ``_weights_made_by``), and their SHA-256's first 12
        # hex digits, which every entry carries (``checkpoint_id``): a trimmed stream's frames still say them
        self.weights: dict[str, Any] = {}
        self.checkpoint_id = ""
        self._announced: dict[str, SegmentFilter | None] = {}  # by source: the filter its last settings event said
        self._filtered_by: dict[str, SegmentFilter | None] = {}  # by source: the filter its last result had
        self._publish_settings = publish_settings
        # segments each source's filter dropped, by reason: every series there from the start
        self.filtered: dict[tuple[str, str], int] = {
            (name, reason): 0 for name in self.filters for reason in FILTER_REASONS}
        self.model_workers = model_workers
        # torch's intra-op threads while the run lasts (a process-wide setting: the caller's is
        # given back when run() returns); None leaves it as it is
        self.threads = threads
        self.batch_size = batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_frames = max_frames
        self.warm_up_size = warm_up
        # True means whatever sys.stderr is when the run starts (it may be redirected later).
        self.progress = progress
        self.progress_interval_s = progress_interval_s
        self._unsayable = False  # its stream failed (a terminal gone): no more status lines
        self.overload = OverloadWatch()
        self.overload.less_work = less_work_for(getattr(getattr(adapter, "device", None), "type", "cpu"),
                                                getattr(adapter, "postprocess", None),
                                                resizable=not resize_in_decoder and not self._wants_images)
        self._last_line: tuple[float, int, int] | None = None  # elapsed s, frames in, frames out at the last status line
        self.metrics = metrics or RunMetrics()
        self.overload.load = self.metrics.load
        for name in names:
            self.metrics.source(name)
        for sink in self.sinks:  # a sink saying whether the run lives (the Redis status keys) says what /healthz says
            if hasattr(sink, "healthy"):
                sink.healthy = functools.partial(_healthy, self.metrics, stall_after_s)
            if hasattr(sink, "frames_of"):
                sink.frames_of = self.metrics.outcome_of
        # a source of one's own may say what suits it (``queue_size``, ``buffer_policy``); what the
        # caller gives for its name comes first
        if isinstance(queue_size, int):
            sizes = [queue_size] * len(self.sources)
        else:
            given = queue_size or {}
            sizes = [given[s.name] if s.name in given else _declared_queue(s) for s in self.sources]
        buffers = buffers or {}
        self.buffers = [
            buffers.get(s.name) or _declared_buffer(s) or BufferPolicy("newest" if s.live else "every_frame")
            for s in self.sources
        ]
        self.required = set(names if required is None else required)
        max_bytes = None if frame_budget_mb is None else int(frame_budget_mb * 2**20)
        self._batcher = Batcher(names, sizes, self.metrics, self.buffers, max_bytes, oldest_first=oldest_first)
        self.states = SourceStates(self.metrics, self._state_event if publish_states else None)
        for i, source in enumerate(self.sources):
            if hasattr(source, "on_state"):  # it reports its own states
                source.on_state = self._listener(i, source.name)
            if hasattr(source, "on_event"):  # and events of its own (an image folder's skipped files)
                source.on_event = self._source_event(source.name)
        self._aborted = threading.Event()
        # a second signal (KeyboardInterrupt in run()): even results ready for the sinks are abandoned
        self._interrupted = False
        self._inflight = threading.Semaphore(max_inflight)
        self._to_post = _Channel(max_inflight, self._aborted)
        # One batch of results between stages keeps each stage busy; more only adds latency.
        self._to_stage = _Channel(batch_size, self._aborted)
        self._to_sinks = _Channel(batch_size, self._aborted)
        self._stages: dict[str, list[FrameStage]] = {}
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._handing: list[Event] = []  # events taken for the sinks and not yet handed to every one
        self._handed = 0  # of those, how many the sink being handed them has been given
        self._handing_to: Sink | None = None  # that sink
        self._in_event = False  # inside its publish_event
        self._dropped_before: object = None  # its events_dropped before that call
        self._closing: tuple[Sink, float] | None = None  # the sink being closed, since when
        self._close_said: Sink | None = None
        self._events_abandoned = 0  # events taken for the sinks that never reached them (publishing failed)
        self._sinks_ended = False  # the publishing thread is done: events still waiting never go out
        self._tick = threading.Event()  # never set: the run loop's wait between its looks
        self._ended_states: dict[str, Event] = {}  # held until the source's last result is published
        # other state events, each with the source's frames decoded before it and when it goes anyway
        self._held_states: dict[str, deque[tuple[int, float, Event]]] = {}
        self._ended_lock = threading.Lock()
        self._stage_done = False  # the stage thread has ended: nothing holds ended states any more
        self._stop_requested = False
        self._left_behind: dict[int, threading.Thread] = {}  # sources whose frames() ignored close()
        # Sources added and removed while the run goes on: ``sources`` and the batcher's queues share
        # their indices; a source added again under a name it had keeps one timeline (``_timeline``).
        self._sources_lock = threading.Lock()
        self._decoders: dict[int, threading.Thread] = {}
        self._decoders_started = False
        self._removed: set[int] = set()
        self._closed_at: dict[int, float] = {}  # when each source was closed (removed, or the run stopping)
        self._settled: set[int] = set()  # sources whose end has passed the stages
        self._published_ends: set[int] = set()  # and the sinks
        self._settled_cond = threading.Condition()
        self._staged_before: dict[int, int] = {}  # results of the same name's earlier sources, staged before it
        self._timeline: dict[str, tuple[int, int, float | None, float]] = {}  # name -> last index, epoch, pts s, wall
        self.lags: dict[str, float] = {}  # live source -> seconds its newest frame is behind its stream's clock
        self.sender_delays: dict[str, float] = {}  # source -> its newest frame's capture_ts - sender_ts
        self._skew_said: set[str] = set()  # sources whose camera's clock was said to be off (again once back)
        self._in_frames: dict[int, float] = {}  # source -> since when its decode thread waits inside frames()
        self._sizes_taken: set[tuple[int, int]] = set()  # frame sizes the model's geometry takes
        self._errors: list[BaseException] = []
        self._started = False
        self._reporting = False  # some sink reports its writes (else publishing is the hand-off)
        self._sink_drop_reasons: set[str] = set()  # what sinks said of results they never wrote
        self._unusable_said: set[str] = set()  # sources warned of a frame the model gave no usable result for
        self._unknown_states: set[tuple[str, str]] = set()  # (source, state) a source reported that is none
        self._decoding = threading.Event()  # the model is warm: sources may start
        self._workers_lock = threading.Lock()
        self._workers_left = model_workers
        self.warm_up_s = 0.0
        self.run_id = new_run_id() if run_id is None else run_id
        self._finished = threading.Event()  # run() returned (or raised)
        self.at_end: list[Callable[[], None]] = []  # called, last first, when run() returns or raises
        self.ops_address: tuple[str, int] | None = None  # where build_runtime(ops=True) serves the endpoints

    @classmethod
    def from_config(cls, cfg, sources, adapter, sinks, **kwargs) -> Runtime:
        """A runtime with the engine settings, queue sizes, buffer policies, required sources and
        per-source stages (the tracker of the ``tracking:`` section, then ``stages:``) and segment filters
        (``filters:``, class names checked against the adapter's labels: a ConfigError) of a ``PipelineConfig``;
        torch's intra-op thread count as the engine's layout says while it runs (``threads``).
        ``sources`` may include sources of one's own that the config does not name: they get the constructor's defaults (the
        ``queue_size`` and ``buffer_policy`` they declare, else a queue of ``QUEUE_SIZE`` frames,
        ``newest`` when live, else ``every_frame``) and are required (their failure ends the run),
        unless ``queue_size``, ``buffers`` or ``required`` say otherwise."""
        from segstream.pipeline.filtering import segment_filters
        from segstream.pipeline.tracking import tracking_stages

        if "stages" not in kwargs:
            kwargs["stages"] = tracking_stages(cfg.tracking)
            if cfg.stages:
                kwargs["stages"] += build_stages(cfg.stages, [s.name for s in sources])
        names = dict.fromkeys([*(c.name for c in cfg.sources), *(s.name for s in sources)])
        kwargs.setdefault("filters", segment_filters(cfg, adapter.labels, names))
        configured = {c.name for c in cfg.sources}
        own = [s.name for s in sources if s.name not in configured]  # sources of one's own: required
        engine = cfg.engine
        cores = usable_cores()
        layout = engine_layout(
            adapter.device, cores, compiled=bool(adapter.batch_buckets),
            workers=engine.model_workers, threads=engine.threads, max_inflight=engine.max_inflight,
        )
        from segstream.pipeline.model_factory import how_it_ran

        # what the engine chose, said once: an operator sizing a box reads it here, not in bench only
        # the weights file named too: a checkpoint of one's own runs under its preset's name
        weights = _weights_made_by(cfg)  # hashed once a process (a batch's runtimes hash it once)
        checkpoint_id = (weights.get("checkpoint_sha256") or "")[:12]
        named = ", ".join(x for x in (cfg.model.checkpoint, checkpoint_id and f"sha256 {checkpoint_id}") if x)
        # said by a batch for its first group of videos only (each group is a runtime of the same warm model)
        say = kwargs.pop("say_model", True)
        log.log(logging.INFO if say else logging.DEBUG,
                "model %s%s on %s%s, batch %d, %d model worker(s) x %d thread(s), %d usable core(s)%s",
                adapter.name, f" ({named})" if named else "", adapter.device,
                how_it_ran(getattr(adapter, "precision", None), getattr(adapter, "postprocess", None)),
                engine.batch_size, layout.workers, layout.threads, cores, _quota_said(cores),
                extra={"model": adapter.name, **weights})
        built = {s.name: s for s in sources}
        live = [c.name for c in cfg.sources if c.type in ("stream", "camera", "snapshot")
                or c.type == "custom" and getattr(built.get(c.name), "live", False)]
        if live and getattr(adapter.labels, "name", "") == "synthetic":
            # found probing as a home-lab NVR user: four cameras' yards came out as sky, sand and stars
            log.log(logging.WARNING if say else logging.DEBUG,
                    "model %s knows only the synthetic demo scenes (%s): on the pictures of %s its segments "
                    "mean nothing — for real scenes set model.preset and model.checkpoint to published weights "
                    "(README, \"Published EoMT weights\") or train a model on your pictures (\"Your own model\")",
                    adapter.name, ", ".join(adapter.labels.names), f"source {live[0]}" if len(live) == 1
                    else f"{len(live)} live sources")
        if adapter.device.type == "cpu" and layout.workers * layout.threads > cores:
            # found probing an edge box: threads=8 on 2 cores ran 16 threads, said only in the numbers above
            log.log(logging.WARNING if say else logging.DEBUG,"engine: %d model worker(s) x %d thread(s) are %d threads on %d usable core(s); they wait on "
                        "each other and on decoding — leave engine.model_workers and engine.threads unset, or keep "
                        "their product at most the cores", layout.workers, layout.threads,
                        layout.workers * layout.threads, cores)
        runtime = cls(
            sources,
            adapter,
            sinks,
            batch_size=engine.batch_size,
            max_wait_ms=engine.max_wait_ms,
            max_inflight=layout.max_inflight,
            model_workers=layout.workers,
            # (a source of one's own that the config leaves them to: what it declares, else by its live)
            queue_size=kwargs.pop("queue_size", {s.name: s.queue_size for s in cfg.sources if s.queue_size}),
            frame_budget_mb=kwargs.pop("frame_budget_mb", engine.frame_budget_mb),
            buffers=kwargs.pop("buffers", {
                s.name: BufferPolicy(s.buffer_kind, None if s.max_staleness_ms is None else s.max_staleness_ms / 1000)
                for s in cfg.sources if s.buffer_kind
            }),
            required=kwargs.pop("required", [s.name for s in cfg.sources if s.required] + own),
            resize_in_decoder=kwargs.pop("resize_in_decoder", engine.resize_in_decoder),
            progress_interval_s=kwargs.pop("progress_interval_s", cfg.ops.status_interval_s),
            threads=kwargs.pop("threads", layout.threads),
            stall_after_s=kwargs.pop("stall_after_s", cfg.ops.stall_after_s),
            **kwargs,
        )
        runtime.weights, runtime.checkpoint_id = weights, checkpoint_id
        if runtime._publish_settings:  # (a batch's manifest says them)
            runtime.made_by |= weights
        return runtime

    def _say_skew(self, name: str, delay: float) -> None:
        """Warn once when a camera's sender_ts is far from its frames' decoding (its clock off;
        found probing a port's cameras: 26-58 s, said nowhere but a gauge), again after it came back."""
        if abs(delay) > SENDER_SKEW_WARN_S and name not in self._skew_said:
            self._skew_said.add(name)
            log.warning("source %s: its camera's clock (its RTCP sender reports' time, sender_ts) is %.0f s %s this "
                        "machine's: frames paired across cameras by sender_ts are that far off — set the camera's "
                        "NTP server (segstream_source_sender_delay_seconds follows it)", name, abs(delay),
                        "behind" if delay > 0 else "ahead of", extra={"source": name})
        elif abs(delay) < SENDER_SKEW_WARN_S / 2 and name in self._skew_said:
            self._skew_said.discard(name)
            log.info("source %s: its camera's clock is within %.1f s of this machine's again", name, abs(delay),
                     extra={"source": name})

    def stop(self) -> None:
        """Ask for a graceful end; returns at once (safe in a signal handler)."""
        self._stop_requested = True

    @property
    def stopping(self) -> bool:
        """``stop()`` has been called: the run drains and ends."""
        return self._stop_requested

    def add_source(
        self, source: VideoSource, *, queue_size: int | None = None, buffer: BufferPolicy | None = None,
        required: bool = False, segment_filter: SegmentFilter | None = None,
    ) -> None:
        """Add a source to the run, before it starts or while it runs (from any thread): it decodes
        at once, its frames batch with the others', it gets the per-source stages of the run (a
        tracker of its own) and its results go to the same sinks. ``queue_size`` and ``buffer``
        default as in the constructor; ``required``: its failure ends the run. A name may be used
        again once ``remove_source`` has ended the source that had it: the new one goes on from
        its timeline (frame numbers, ``epoch`` one more, timestamps after its last frame's, as
        after a reconnect), counts and stages (which heard ``finish()`` when the other ended: a
        tracker's ids go on). A ``ValueError`` for a name that runs or is still ending,
        a ``RuntimeError`` once the run is ending (stopped, or every source has ended)."""
        name = source.name
        with self._sources_lock:
            if self._stop_requested or self._errors or self._aborted.is_set() or self._finished.is_set():
                raise RuntimeError(f"source {name} cannot be added: the run is ending")
            earlier = [i for i, s in enumerate(self.sources) if s.name == name]
            # its end must have reached the sinks: its final state event counts its frames (SCHEMA, frames)
            if any(i not in self._published_ends for i in earlier):
                state = "is still ending (wait for remove_source)" if earlier[-1] in self._removed | self._settled \
                    else "runs already"
                raise ValueError(f"source {name} {state}: names must be unique")
            size = _declared_queue(source) if queue_size is None else queue_size
            policy = buffer or _declared_buffer(source) or BufferPolicy("newest" if source.live else "every_frame")
            i = self._batcher.add(name, size, policy)
            if i is None:
                raise RuntimeError(f"source {name} cannot be added: every source of the run has ended, the run is "
                                   "ending")
            self._staged_before[i] = sum(self._batcher.batched[k] for k in earlier)
            epoch = 0
            if earlier:
                self.metrics.source_again(name)
                epoch = self._timeline[name][1] + 1 if name in self._timeline else 0
            self.metrics.source(name)
            if self._decode_size is not None and hasattr(source, "decode_size"):
                source.decode_size = self._decode_size
            if hasattr(source, "on_state"):
                source.on_state = self._listener(i, name, epoch)
            if hasattr(source, "on_event"):
                source.on_event = self._source_event(name)
            self.set_filter(name, segment_filter)
            self._announced.pop(name, None)  # added (again): its first frame says its settings
            self._filtered_by.pop(name, None)
            (self.required.add if required else self.required.discard)(name)
            self.buffers.append(policy)
            self._source_names.add(name)
            if getattr(source, "captures_before_read", False):
                self._captured_before_read.add(name)
            self.sources.append(source)
            self._batcher.activate(i)  # now: the stage and /metrics walk the active queues' sources
            log.info("source %s added%s", name, f" (epoch {epoch}: it goes on from the source that had its name)"
                     if earlier else "")
            if self._decoders_started:
                _start(self._decoder(i, source))

    @contextlib.contextmanager
    def held_open(self) -> Iterator[None]:
        """Within it the run does not end for having no source left (sources removed to be added
        again, all of them: a reload that changes every camera); after it, a run with none ends."""
        held = self._batcher.hold()
        try:
            yield
        finally:
            if held:
                self._batcher.release()

    def remove_source(self, name: str, wait_s: float | None = None) -> bool:
        """Close the running source ``name`` (any thread): frames it decoded drain through the model,
        its stages and the sinks, its tracks end, and it ends with the reason ``removed`` (not a
        failure, even when it was required). With ``wait_s``, waits that long for its end to reach
        the sinks (after which the name may be added again); True when it has (``wait_removed``
        waits later). A ``ValueError`` when no source of that name runs."""
        with self._sources_lock:
            running = [i for i, s in enumerate(self.sources)
                       if s.name == name and i not in self._removed and self._batcher.open[i]]
            if not running:
                raise ValueError(f"no source {name} runs (running: {', '.join(self.running_sources()) or 'none'})")
            i = running[0]
            self._removed.add(i)
            self.required.discard(name)  # its end is no failure of the run
            self._closed_at.setdefault(i, time.monotonic())
            source = self.sources[i]
        log.info("source %s removed: closing it, draining its frames", name)
        try:
            source.close()
        except Exception as error:  # its frames() still ends (the removal is marked)
            log.warning("source %s: close() failed while removing it: %s: %s", name, type(error).__name__, error)
        return self.wait_removed(name, wait_s)

    def wait_removed(self, name: str, wait_s: float | None) -> bool:
        """Whether the end of every source ``name`` removed from the run has reached the sinks,
        waiting up to ``wait_s`` for it."""
        with self._sources_lock:
            indices = {i for i, s in enumerate(self.sources) if s.name == name and i in self._removed}
        deadline = time.monotonic() + (wait_s or 0.0)
        with self._settled_cond:
            while not indices <= self._published_ends and not self._finished.is_set():
                if (left := deadline - time.monotonic()) <= 0:
                    break
                self._settled_cond.wait(min(left, 0.1))
            return indices <= self._published_ends

    def _listener(self, i: int, name: str, epoch: int = 0) -> Callable[..., None]:
        """The ``on_state`` of source ``i``, which reports its own states: a removed one's end
        (``stopped``, to the source: it was closed) is said to be ``removed``."""
        listener = self.states.listener(name, epoch)

        def on_state(state: str, reason: str, data: dict[str, Any], quiet: bool = False) -> None:
            if state not in SOURCE_STATES:  # a source of one's own (found probing: "warming_up" went out as a state)
                if (name, state) not in self._unknown_states:  # (said in its thread, maybe an SDK's: not raised)
                    self._unknown_states.add((name, state))
                    log.warning("source %s reported the state %r, which is none of %s: left out (its reason: %s)",
                                name, state, ", ".join(SOURCE_STATES), reason, extra={"source": name})
                return
            if state == "ended" and i in self._removed and not reason.startswith("removed"):
                # (a source of one's own says its own words: "camera closed", found probing)
                reason = "removed" + (reason.removeprefix("stopped") if reason.startswith("stopped") else
                                      f" ({reason})" if reason else "")
            listener(state, reason, data, quiet)

        return on_state

    def _source_event(self, name: str) -> Callable[[str, dict[str, Any]], None]:
        """The ``on_event`` of source ``name``: its own events (``image_skipped``) on its events stream."""
        return lambda kind, data: self.emit(Event(name, kind, time.time(), data))

    def set_filter(self, name: str, segment_filter: SegmentFilter | None) -> None:
        """Filter source ``name``'s segments with ``segment_filter`` (None: not at all) from its
        next result on (any thread)."""
        if segment_filter is None:
            self.filters.pop(name, None)
            return
        for reason in FILTER_REASONS:
            self.filtered.setdefault((name, reason), 0)
        self.filters[name] = segment_filter

    def _settings_event(self, result: FrameResult, segment_filter: SegmentFilter | None) -> Event:
        """A source's ``settings`` event: what made its results from ``result`` on."""
        names = self.adapter.labels.names
        kept = segment_filter.settings if segment_filter is not None else None
        filters = None if kept is None or not kept.active else {
            "classes": None if kept.keep_class_ids is None else [names[i] for i in sorted(kept.keep_class_ids)],
            "exclude_classes": [names[i] for i in sorted(kept.drop_class_ids)],
            "min_score": kept.min_score, "min_area": kept.min_area,
            "roi": None if kept.roi is None else [list(vertex) for vertex in kept.roi]}
        return Event(result.source, "settings", result.capture_ts or time.time(),
                     {"frame": result.index, **self.made_by, "filters": filters})

    def running_sources(self) -> list[str]:
        """The names of the sources that have not ended (nor been removed)."""
        return [s.name for i, s in enumerate(self.sources)
                if i not in self._removed and i < len(self._batcher.open) and self._batcher.open[i]]

    def run(self) -> RunReport:
        if self._started:
            raise RuntimeError("a Runtime runs once; build a new one")
        self._started = True
        stopped_at_exit(self)
        caller = threading.current_thread()  # its records, and the threads it starts (NamedThread), name this run
        outer = getattr(caller, "segstream_run_id", None)
        caller.segstream_run_id = self.run_id
        taken = False
        try:
            if self.threads is not None:
                _torch_threads_taken(self.threads)
                taken = True
            return self._run()
        finally:
            if taken:  # a notebook's own torch work after the run gets its threads back
                _torch_threads_given_back()
            caller.segstream_run_id = outer
            with _RUNNING_LOCK:
                _RUNNING.discard(self)
            self._finished.set()
            while self.at_end:  # what lives as long as the run (build_runtime's ops endpoints)
                try:
                    self.at_end.pop()()
                except Exception:  # the others still run; the run's own outcome stands
                    log.warning("an end-of-run callback failed", exc_info=True)

    def _run(self) -> RunReport:
        fixed_heap_threshold()
        for sink in self.sinks:
            self._attach(sink)
        self._register_gauges()
        start = time.monotonic()
        threads = [
            NamedThread(target=self._model, args=(w,), name=f"{THREAD_PREFIX}model{w or ''}", daemon=True)
            for w in range(self.model_workers)
        ]
        threads += [
            NamedThread(target=self._post, name=f"{THREAD_PREFIX}post", daemon=True),
            NamedThread(target=self._stage, name=f"{THREAD_PREFIX}stage", daemon=True),
            NamedThread(target=self._publish, name=f"{THREAD_PREFIX}publish", daemon=True),
        ]
        sources_closed = False
        try:
            _start(threads[0])
            if self.warm_up_size is not None:
                while not self._decoding.wait(0.05):  # sources start once the model is warm
                    if self._stop_requested or self._errors or not threads[0].is_alive():
                        break
            for t in threads[1:]:
                _start(t)
            with self._sources_lock:  # sources added from now on start at once
                for i in range(len(self.sources)):  # (a loop variable would hold a source for the whole run)
                    _start(self._decoder(i, self.sources[i]))
                self._decoders_started = True
            last_progress = last_watch = start
            while any(t.is_alive() and t not in self._left_behind.values()
                      for t in [*threads, *list(self._decoders.values())]):
                # not alive[-1].join(0.05): a stop signal's KeyboardInterrupt inside join() leaves a
                # thread still running marked ended (CPython's bpo-45274 handling releases the lock the
                # thread holds), and the abort below then left the sinks unclosed: the Redis backlog
                # abandoned uncounted, the summary saying it published (found probing as a platform engineer)
                self._tick.wait(0.05)
                if (self._stop_requested or self._errors) and not sources_closed:
                    self._close_sources()
                    sources_closed = True
                now = time.monotonic()
                for i, decoder in list(self._decoders.items()):
                    if i in self._batcher.retired and not decoder.is_alive():  # removed and gone
                        del self._decoders[i]
                        continue
                    # closed (removed, or the run stopping) and still inside frames() since before the
                    # close: one waiting for queue room (a slow model) is not the source's doing, and drains
                    closed_at, since = self._closed_at.get(i), self._in_frames.get(i)
                    if closed_at is not None and since is not None and now - max(since, closed_at) > SOURCE_CLOSE_GRACE_S \
                            and decoder.is_alive() and i not in self._left_behind:
                        self._leave_behind(i, decoder)
                if now - last_watch >= OVERLOAD_CHECK_S:
                    last_watch = now
                    self._say_overload(self.overload.observe(now, self.metrics.exposed()))
                    self._say_slow_close(now)
                if self.progress and now - last_progress >= self.progress_interval_s:
                    last_progress = now
                    self._say(self._progress_line(now - start) + "\n")
        except BaseException as error:
            # second Ctrl-C, a thread the system refused: no draining; sinks are closed because some
            # own a process (an embedded Redis)
            self._interrupted = True
            self._abort()
            self._close_sources()
            publisher = threads[-1]  # the sink thread
            if publisher.is_alive():
                publisher.join(1.0)  # aborted, it closes the sinks itself; closing them under it races its writes
            if publisher.ident is None or publisher.is_alive():
                self._close_sinks_within(SOURCE_CLOSE_GRACE_S)
            if isinstance(error, ResourceLimit):  # the pipeline's threads, inside torch or FFmpeg, end before Python does
                deadline = time.monotonic() + SOURCE_CLOSE_GRACE_S
                for t in [*threads, *self._decoders.values()]:
                    if t.ident is not None:
                        t.join(max(0.0, deadline - time.monotonic()))
            if self.progress:  # what the abort cut short: frames still in the engine are abandoned
                outcome = "failed" if isinstance(error, ResourceLimit) else "aborted"
                self._print_summary(self.report(time.monotonic() - start), outcome)
            raise
        if not sources_closed:
            self._close_sources()
        self._say_overload(self.overload.flush())
        report = self.report(time.monotonic() - start)
        if self._errors:
            if self.progress:  # what the run did before it failed: the error's own line follows
                self._print_summary(report, "failed")
            raise self._errors[0]
        left_behind = {self.sources[i].name for i in self._left_behind}  # they may still count
        unbalanced = {name: s for name, s in report.sources.items() if not s.balanced and name not in left_behind}
        if unbalanced:
            raise RuntimeError(f"bug: frames lost between stages: {unbalanced}")
        if self.progress:
            self._print_summary(report)
        return report

    @staticmethod
    def _say_overload(lines: list[Said]) -> None:
        for level, message, names, fields in lines:  # one source's line carries it as a field, a group's the list
            # (and what held it back: cause, part, ms_per_frame, ran_for, for a log store to group by)
            log.log(level, message, extra={**fields, **({"source": names[0]} if len(names) == 1
                                                      else {"sources": list(names)})})

    # --- the threads -----------------------------------------------------------------------

    def _decoder(self, i: int, source: VideoSource) -> threading.Thread:
        """Source ``i``'s decode thread, not started yet (under ``_sources_lock``); it works for this run."""
        thread = NamedThread(target=self._decode, args=(i, source), name=f"{THREAD_PREFIX}decode-{source.name}",
                             daemon=True)
        thread.segstream_run_id = self.run_id  # added from another thread (an HTTP request's) it still names the run
        self._decoders[i] = thread
        return thread

    def _decode(self, i: int, source: VideoSource) -> None:
        name = source.name
        counts = self.metrics.source(name)
        generic = not hasattr(source, "on_state")  # else the source reports its own states
        beat = decode_thread(name)
        frames = None
        failed = False
        # a source added again under a name that ran before: its counts and timeline go on
        again = any(s.name == name for s in self.sources[:i])
        before = self._timeline.get(name) if again else None
        own = _OwnCounts(self.metrics, name, source, counts.copy() if again else None)
        shift: _Shift | None = None
        lag = (_LiveLag(name, self.buffers[i], getattr(source, "catches_up", False), self.overload.less_work)
               if source.live else None)
        taken = 0
        last_index: int | None = None  # this source's last frame's (the run's own numbering may go on from another's)
        shipped = type(source).__module__.startswith("segstream.connectors.")
        try:
            self.metrics.beat(beat)
            if generic:
                self.states.enter(name, "connecting", "starting", quiet=True)
            if getattr(source, "resumes", False):
                self._resume(i, source)
            # stopped before it began (a signal while the model loaded): never opened, never dialled
            with self._inside_source(i):  # a frames() that connects before it returns its iterator
                frames = iter(()) if self._stop_requested or i in self._removed else iter(source.frames())
            while True:
                try:
                    with self._inside_source(i):
                        frame = next(frames)
                except StopIteration:
                    break
                if i in self._left_behind:  # the run ended without this source: what it yields now goes nowhere
                    return
                if (problem := frame_problem(frame) or self._model_refuses(frame)
                        or out_of_line(frame, name, last_index, own=not shipped)) is not None:
                    # a source of one's own, a frame the model cannot take: said here, of this source only
                    number = frame.index if isinstance(frame, Frame) else counts.decoded
                    raise SourceError(f"source {name}: frame {number} {problem}")
                last_index = frame.index
                frame.times["decoded"] = now = time.monotonic()
                frame.times.setdefault(WALL_OFFSET, time.time() - now)  # (a frame made with times of its own)
                if before is not None:
                    shift = shift or _Shift(before, frame)
                    shift.apply(frame)
                # (one of one's own that said nothing, or only connecting, before its first frame: found probing)
                if taken == 0 and (generic or not shipped and counts.state in (None, "connecting")):
                    self.states.enter(name, "streaming", *first_frame(source, frame), quiet=True)
                taken += 1
                self._timeline[name] = (frame.index, frame.epoch, frame.pts_seconds, frame.capture_wall)
                if lag is not None:
                    self.lags[name] = lag.behind(frame)
                if frame.sender_wall is not None:
                    self.sender_delays[name] = delay = frame.capture_wall - frame.sender_wall
                    self._say_skew(name, delay)
                else:
                    self.sender_delays.pop(name, None)
                self.metrics.decoded(name, now)
                own.count()
                self.metrics.beat(beat, idle="back-pressure")
                self._batcher.put(i, frame)
                self.metrics.beat(beat)
                if self._stop_requested or self._aborted.is_set() or i in self._removed:
                    break
                if self.max_frames is not None and taken >= self.max_frames:
                    self.states.enter(name, "ended", f"max_frames ({self.max_frames}) reached",
                                      quiet=generic and not self._others_going(i))
                    break
        except BaseException as error:
            failed = True
            self.states.enter(name, "failed", _reason(error, name))
            if name in self.required:
                if isinstance(error, Exception) and not isinstance(error, SegstreamError) and _configured_own(source):
                    # a config's source of one's own raised: its line, not a traceback (found probing: 33
                    # lines); a program's own source's error is raised as it is, a shipped one's bug too
                    log.debug("source %s raised", name, exc_info=True)
                    error = SourceError(f"source {name} failed: {_reason(error, name)}")
                # a broken required source ends the run, but what the others decoded still drains
                self._fail(error, drain=True)
                self.stop()
        finally:
            try:
                if hasattr(frames, "close"):
                    with self._inside_source(i):
                        frames.close()  # runs the source's own cleanup now, in this thread
            finally:
                if i not in self._left_behind:  # else its end was told when it was left behind
                    own.count()
                    missing, damage = getattr(source, "frames_missing", 0), getattr(source, "damage", "")
                    if not failed:
                        stopped = self._stop_requested or self._aborted.is_set()
                        reason = "removed" if i in self._removed else "stopped" if stopped else "end of input"
                        # a damaged file's end is no normal one (its frames end before the file says)
                        reason += f", damaged: about {missing} frames missing ({damage})" if missing else ""
                        # a file's end is news while the run goes on; at a stop, or as the last, the summary tells it
                        told = missing or i in self._removed or not stopped and self._others_going(i)
                        self.states.enter(name, "ended", reason, {"frames_missing": missing} if missing else None,
                                          quiet=generic and not told)
                    self._batcher.finish(i)
                    self._to_stage.wake()  # its end may follow its last result at once
                if i not in self._left_behind:  # else a source added since under its name beats on that key
                    self.metrics.beat(beat, idle="ended")

    def _others_going(self, i: int) -> bool:
        """Whether a source of the run other than source ``i`` has not ended (the run goes on after it)."""
        sources, removed = list(self.sources), set(self._removed)  # copies: a source added meanwhile may wait
        others = {s.name for j, s in enumerate(sources) if j != i and j not in removed} - {sources[i].name}
        return any(self.metrics.source(name).state not in ("ended", "failed") for name in others)

    def _model_refuses(self, frame: Frame) -> str | None:
        """Why the model cannot take a frame of this size (a semantic model's windows of a
        line-scan frame), once per size; None when it can."""
        size = (frame.height, frame.width)
        geometry = getattr(self.adapter, "geometry", None)
        if geometry is None or size in self._sizes_taken:
            return None
        try:
            geometry.scale(*size)
        except ValueError as error:
            return f"cannot be segmented: {error}"
        self._sizes_taken.add(size)
        return None

    def _resume(self, i: int, source: VideoSource) -> None:
        """Tells a source that goes on where the last run left off (a watched folder's
        ``watch_from: last``) the newest entry its stream holds, asking the first sink that can
        say; while Redis does not answer it waits (said once), until it does or the run stops."""
        asked = next((sink for sink in self.sinks if hasattr(sink, "last_written")), None)
        if asked is None:
            log.warning("source %s goes on where the last run left off, and no sink of this run can say where that "
                        "was (sinks.redis can): reading it from the start", source.name, extra={"source": source.name})
            return
        from segstream.connectors.redis_connection import Backoff  # (the sink that can say is Redis's)

        waited, backoff = None, Backoff(0.5, 5.0)
        try:
            while not (self._stop_requested or i in self._removed):
                try:
                    source.resume_after(*asked.last_written(source.name))  # type: ignore[attr-defined]
                except SinkError as error:
                    if waited is None:
                        waited = time.monotonic()
                        log.warning("source %s waits to learn where the last run left off: %s", source.name, error,
                                    extra={"source": source.name})
                        # a wait on Redis, not a stuck thread (ops.stall_after_s, /healthz)
                        waiting_for_input("waiting for Redis to say where the last run left off")
                    until = time.monotonic() + backoff.next()
                    while time.monotonic() < until and not (self._stop_requested or i in self._removed):
                        time.sleep(0.1)
                    continue
                if waited is not None:
                    log.warning("source %s learnt where the last run left off after %.1f s", source.name,
                                time.monotonic() - waited, extra={"source": source.name})
                return
        finally:
            waiting_for_input(None)

    @contextlib.contextmanager
    def _inside_source(self, i: int) -> Iterator[None]:
        """While the decode thread runs the source's own code (where a stop may have to leave it
        behind), as opposed to waiting for queue room."""
        self._in_frames[i] = time.monotonic()
        try:
            yield
        finally:
            self._in_frames.pop(i, None)

    def _leave_behind(self, i: int, thread: threading.Thread) -> None:
        """A source whose ``frames()`` went on blocking after ``close()``: the run ends without it
        (its thread is a daemon; what it yields later goes nowhere), saying so."""
        name = self.sources[i].name
        self._left_behind[i] = thread
        log.warning("source %s did not end within %g s of close() (its frames() is still blocked); the run ends "
                    "without it", name, SOURCE_CLOSE_GRACE_S)
        self.states.enter(name, "ended", f"stopped; its frames() did not return within {SOURCE_CLOSE_GRACE_S:g} s "
                          "of close() and was left behind")
        self._batcher.finish(i)
        self._to_stage.wake()
        self.metrics.beat(decode_thread(name), idle="ended")  # whatever its thread does now is not the run's

    def _model(self, worker: int) -> None:
        name = f"model{worker or ''}"
        beat = self.metrics.beat
        try:
            if worker == 0:
                if self.warm_up_size is not None:
                    beat(name, idle="warming up")
                    self.warm_up_s = self.model_stage.warm_up(*self.warm_up_size)
                self.metrics.model_ready = True
                self._decoding.set()
            while True:
                # the slot comes before the batch: a batch's sequence number is given when it is
                # taken, and post-processing collects in that order, so a later batch holding the
                # last slot while an earlier one waits for a slot would deadlock
                beat(name, idle="back-pressure")
                while not self._inflight.acquire(timeout=0.1):
                    if self._aborted.is_set():
                        return
                beat(name, idle="waiting for frames")
                if (taken := self._batcher.take_batch(self.batch_size, self.max_wait_s)) is None:
                    self._inflight.release()
                    break
                seq, batch = taken
                beat(name)
                submitted = self.model_stage.submit(batch, seq)
                beat(name, idle="back-pressure")
                if not self._to_post.put(submitted):
                    return
        except BaseException as error:
            self._fail(error, drain=False)
        finally:
            if worker == 0:
                self._decoding.set()
            with self._workers_lock:
                self._workers_left -= 1
                last = self._workers_left == 0
            if last:
                self._to_post.end()
            beat(name, idle="ended")

    def _post(self) -> None:
        beat = self.metrics.beat
        waiting: dict[int, InFlight] = {}  # batches that finished before an earlier one
        next_seq = 0
        try:
            while True:
                beat("post", idle="waiting for the model")
                if (batch := self._to_post.get()) is _END:
                    break
                waiting[batch.seq] = batch
                while next_seq in waiting:
                    if not self._collect(waiting.pop(next_seq)):
                        return
                    next_seq += 1
        except BaseException as error:
            self._fail(error, drain=False)
            self._to_post.drain()
        finally:
            self._to_stage.end()
            beat("post", idle="ended")

    def _collect(self, batch: InFlight) -> bool:
        self.metrics.beat("post")
        results = self.model_stage.collect(batch)
        self._inflight.release()
        if len(results) != len(batch.frames):
            raise RuntimeError(
                f"model {self.adapter.name} returned {len(results)} results for {len(batch.frames)} frames"
            )
        self.metrics.batch(len(results), self.model_stage.network_seconds(batch))
        if self._wants_images:
            for frame, result in zip(batch.frames, results):
                result.image, result.sample_aspect = frame.image, frame.sample_aspect
        self.metrics.beat("post", idle="back-pressure")
        for i in batch.nonfinite:  # dropped after the model, in order with the rest (the stage counts it)
            results[i] = _Unusable(results[i], MODEL_NONFINITE)
        return all(self._to_stage.put(result) for result in results)

    def _stage(self) -> None:
        beat = self.metrics.beat
        ended = False
        staged: Counter[str] = Counter()  # each source name's results that passed the stages
        settled = self._settled  # sources whose end went to the sinks
        try:
            while True:
                beat("stage", idle="waiting for results")
                # a timeout: a source's end may come with no result after it (its last frames dropped)
                if (result := self._to_stage.get(timeout=_POLL_IDLE_S)) is _END:
                    ended = True
                    break
                if isinstance(result, _Unusable):
                    self._drop_unusable(result)
                    staged[result.result.source] += 1
                    if not self._to_sinks.put(result):  # (a sink that accounts for each frame is told)
                        return
                elif result is not None:
                    beat("stage")
                    if (segment_filter := self.filters.get(result.source)) is not None:
                        for reason, count in segment_filter.apply(result).items():
                            self.filtered[result.source, reason] += count
                    if (before := self._filtered_by.get(result.source, _UNSAID)) is not segment_filter:
                        self._filtered_by[result.source] = segment_filter
                        if before is not _UNSAID:  # a reload changed them: tracks of classes now dropped end
                            result.events[:0] = [event for stage in self._source_stages(result.source)
                                                 if hasattr(stage, "filters_changed")
                                                 for event in stage.filters_changed(segment_filter, result)]
                    if self._publish_settings and self._announced.get(result.source, _UNSAID) is not segment_filter:
                        # the settings this frame was made with, written after it: a source's first, and the
                        # first after a reload changed its filters (found probing reproducibility: no trace)
                        self._announced[result.source] = segment_filter
                        result.events.insert(0, self._settings_event(result, segment_filter))
                    for stage in self._source_stages(result.source):
                        began = time.monotonic()
                        given, result = result, stage.process(result)
                        self.metrics.spent(_stage_name(stage), time.monotonic() - began, given.source)
                        if not isinstance(result, FrameResult):
                            raise TypeError(f"{type(stage).__name__}.process returned {type(result).__name__} for frame "
                                            f"{given.index} of {given.source}: a per-source stage returns the result "
                                            "it was given")
                    result.run_id = self.run_id
                    result.checkpoint_id = self.checkpoint_id
                    for event in result.events:
                        event.run_id = self.run_id
                    result.times["staged"] = time.monotonic()
                    staged[result.source] += 1
                    beat("stage", idle="back-pressure")
                    if not self._to_sinks.put(result):
                        return
                if not self._end_sources(staged, settled):
                    return
            self._end_sources(staged, settled, all_ended=True)
        except BaseException as error:
            self._fail(error, drain=False)
            if not ended:  # after the end marker (a stage's finish() failed) nothing more comes
                self._to_stage.drain()
        finally:
            with self._ended_lock:  # a run that failed first: its sources still say they ended
                # (with the states held before them: the publisher releases the others' in order)
                held = [event for name in self._ended_states for *_, event in self._held_states.pop(name, ())]
                held += self._ended_states.values()
                self._ended_states = {}
                self._stage_done = True  # any later state goes out at once, after these
                for event in held:
                    self.emit(event)
            self._to_sinks.end()
            beat("stage", idle="ended")

    def _drop_unusable(self, unusable: _Unusable) -> None:
        """A frame the model gave no usable result for: counted as dropped, said once a source
        (its count is in the summary and in segstream_frames_dropped_total)."""
        result = unusable.result
        self.metrics.dropped(result.source, unusable.reason)
        if result.source not in self._unusable_said:
            self._unusable_said.add(result.source)
            log.warning("source %s frame %d dropped: %s (said once for this source; every such frame is counted as "
                        "dropped, %s)", result.source, result.index, nonfinite_advice(self.adapter), unusable.reason,
                        extra={"source": result.source})

    def _end_sources(self, staged: Counter[str], settled: set[int], all_ended: bool = False) -> bool:
        """Send each source whose last result has passed the stages (``all_ended``: every source)
        its ``SourceEnd``; False when the run aborted meanwhile."""
        for i in self._batcher.active:  # a source no longer there (removed, its end out) has settled
            source = self.sources[i]
            if i in settled:
                continue
            if not all_ended and (
                    (batched := self._batcher.settled(i)) is None
                    or batched + self._staged_before.get(i, 0) != staged[source.name]):
                continue
            events: list[Event] = []
            failed = self.metrics.source(source.name).state == "failed"
            for stage in self._stages.get(source.name, ()):  # its tracks end, saying whether it failed
                if hasattr(stage, "finish"):
                    events += stage.finish("failed" if failed else "end")
            with self._ended_lock:
                state = self._ended_states.pop(source.name, None)
            events += [state] if state is not None else []
            for event in events:
                event.run_id = event.run_id or self.run_id
            with self._sources_lock:  # add_source looks at settled under it
                settled.add(i)
            if not self._to_sinks.put(SourceEnd(source.name, events, i)):
                return False
        return True

    def _state_event(self, event: Event) -> None:
        """A source's final state (``ended``, ``failed``) waits for its last result
        (``SourceEnd``); another waits for the frames the source decoded before it (published or
        dropped), so that it follows them in the sinks as it did at the source (a camera's
        ``reconnecting`` after the session's last frames), for at most ``STATE_ORDER_WAIT_S``."""
        with self._ended_lock:
            if event.data["state"] in ("ended", "failed") and not self._stage_done:
                self._ended_states[event.source] = event
                return
            if not self._stage_done:
                before = self.metrics.source(event.source).decoded
                held = self._held_states.setdefault(event.source, deque())
                held.append((before, time.monotonic() + STATE_ORDER_WAIT_S, event))
                return
        self.emit(event)

    def _release_states(self, source: str | None = None, everything: bool = False) -> None:
        """Emit the held state events whose source's earlier frames have all reached the sinks (or
        been dropped), or that waited long enough; all of ``source``'s (its end is here), or all."""
        if not self._held_states:  # the common case, at every result published: nothing held
            return
        now = time.monotonic()
        with self._ended_lock:
            for name, held in list(self._held_states.items()):
                counts = self.metrics.source(name)
                done = counts.handed + sum(counts.dropped_by[reason] for reason in (*SHED_REASONS, MODEL_NONFINITE))
                while held and (everything or name == source or held[0][0] <= done or held[0][1] <= now):
                    self.emit(held.popleft()[2])
                if not held:  # (cameras coming and going leave no names here)
                    del self._held_states[name]

    def _publish(self) -> None:
        beat = self.metrics.beat
        ended = False
        try:
            wait: float | None = _POLL_IDLE_S
            while True:
                beat("publish", idle="waiting for results")
                if (item := self._to_sinks.get(timeout=wait)) is _END:
                    break
                if self._interrupted:  # no draining: what is still queued is abandoned, and counted so
                    return
                beat("publish")
                self._publish_events()
                if isinstance(item, SourceEnd):
                    self._publish_events(item.source)  # the states held before its end, too
                    for sink in self.sinks:  # a sink writing on a thread of its own (the preview) has
                        if hasattr(sink, "settle"):  # written or dropped the source's frames before they are counted
                            sink.settle()
                    self._count_end(item)
                    self._handing = list(item.events)
                    for sink in self.sinks:
                        self._hand(sink, item.events)
                        if hasattr(sink, "source_ended"):
                            sink.source_ended(item.source)
                        if item.index in self._removed and hasattr(sink, "source_removed"):
                            sink.source_removed(item.source)
                    self._handing = []
                    self._ended_out(item)
                elif isinstance(item, _Unusable):
                    for sink in self.sinks:
                        if hasattr(sink, "frame_dropped"):
                            sink.frame_dropped(item.result.source, item.result.index, item.reason)
                elif item is not None:
                    # Counted before the hand-off: a sink that drops it later takes it back (on_dropped).
                    self.metrics.published(item.source)
                    if not self._reporting:  # stamped before the sinks, so that they (and a results loop) see it
                        item.publish_ts = time.time()
                    self._handing = list(item.events)
                    for sink in self.sinks:
                        self._handed, self._handing_to = 0, sink
                        began = time.monotonic()
                        sink.publish(item)
                        self._hand(sink, item.events)
                        self.metrics.spent(_sink_name(sink), time.monotonic() - began)
                    self._handing = []
                    item.image = None  # drawn by now; results kept downstream must not hold frames
                    if not self._reporting:
                        self._written_at_handoff(item)
                due = [d for d in map(self._polled, self.sinks) if d is not None]
                wait = max(0.0, min(due)) if due else _POLL_IDLE_S
            ended = True
            self._publish_events(everything=True)
            for sink in self.sinks:
                sink.flush()
        except BaseException as error:
            self._fail(error, drain=False)
            # the events the failing sink was not handed (a sink refused for good): counted, as the frames are
            self._events_abandoned += self._unhanded()
            if not ended:
                self._to_sinks.drain(self._abandon_events)
        finally:
            self._close_sinks()
            self._sinks_ended = True
            beat("publish", idle="ended")

    def _polled(self, sink: Sink) -> float | None:
        """``sink.poll()``, its time counted as the sink's (a Redis sink's writes by age, its
        status keys: found probing, 24 of a slowed Redis's 36 s were counted without them)."""
        began = time.monotonic()
        try:
            return sink.poll()
        finally:
            self.metrics.spent(_sink_name(sink), time.monotonic() - began, calls=0)

    def _hand(self, sink: Sink, events: list[Event]) -> None:
        """``events`` to ``sink``, keeping count of those it was given and whether it is inside
        ``publish_event`` (should it fail there, that event is abandoned unless it counted it)."""
        self._handed, self._handing_to = 0, sink
        for event in events:
            self._dropped_before = getattr(sink, "events_dropped", None)
            self._handed += 1
            self._in_event = True
            sink.publish_event(event)
            self._in_event = False

    def _unhanded(self) -> int:
        """Of the events being handed when a sink failed, those it will not account for: the ones
        not given to it, and the one it failed on unless its ``events_dropped`` counted it (the
        Redis publisher counts the batch a refusal struck; a sink of one's own counts nothing)."""
        if not self._handing:
            return 0
        struck = 0
        if self._in_event:
            after = getattr(self._handing_to, "events_dropped", None)
            counted = isinstance(after, int) and isinstance(self._dropped_before, int) and after > self._dropped_before
            struck = 0 if counted else 1
        return len(self._handing) - self._handed + struck

    def _abandon_events(self, item: object) -> None:
        """A result or source end that never reached the sinks: its events are counted abandoned
        (its frame is, as decoded and neither published nor dropped)."""
        self._events_abandoned += len(getattr(item, "events", None) or ())

    @property
    def events_abandoned(self) -> int:
        """Events taken for the sinks that never reached them, and once publishing has ended, those
        still waiting (states held, emitted since): a sink that refused for good ends it early."""
        if not self._sinks_ended:
            return self._events_abandoned
        with self._ended_lock:
            held = sum(len(states) for states in self._held_states.values()) + len(self._ended_states)
        return self._events_abandoned + held + self._events.qsize()

    # --- helpers -----------------------------------------------------------------------------

    def _count_end(self, end: SourceEnd) -> None:
        """A source's final state event says what became of its frames, so that a reader of its
        events alone can tell that nothing went missing unsaid (SCHEMA, ``frames``)."""
        outcome = self.metrics.source(end.source).copy().outcome()
        for event in end.events:
            if event.kind == "state" and event.data.get("state") in ("ended", "failed"):
                event.data["frames"] = outcome

    def _ended_out(self, end: SourceEnd) -> None:
        """A source's end has reached the sinks: ``remove_source`` may return; a removed source
        (not added again meanwhile) leaves the status line, the queues and /metrics."""
        with self._sources_lock:
            if end.index in self._removed:
                self._batcher.retire(end.index)
                if not any(s.name == end.source for s in self.sources[end.index + 1:]):
                    self.metrics.retire(end.source)
                # what the run keeps of it is its name, not its decoder's memory (a synthetic scene, a
                # container), which cameras coming and going would pile up
                source = self.sources[end.index]
                self.sources[end.index] = _Removed(source.name, source.live)
                self._staged_before.pop(end.index, None)
        with self._settled_cond:
            self._published_ends.add(end.index)
            self._settled_cond.notify_all()

    def emit(self, event: Event) -> None:
        """Publish an event on its source's events stream (any thread; never blocks)."""
        if event.source not in self._source_names:
            raise ValueError(f"event {event.kind!r} names source {event.source!r}, which this run does not have "
                             f"(its sources: {', '.join(self._source_names)})")
        event.run_id = event.run_id or self.run_id
        self._events.put(event)
        self._to_sinks.wake()

    def _publish_events(self, source: str | None = None, everything: bool = False) -> None:
        self._release_states(source, everything)
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return
            self._handing = [event]
            for sink in self.sinks:
                self._hand(sink, self._handing)
            self._handing = []

    def _register_gauges(self) -> None:
        """What only the runtime can see, read when the metrics are scraped."""
        batcher, sinks = self._batcher, self.sinks
        gauge, counter = self.metrics.gauge, self.metrics.counter
        gauge("queue_depth", "Frames waiting for the model, per source.", ("source",),
              lambda: {(batcher.names[i],): len(batcher.queues[i]) for i in batcher.newest()})
        gauge("queue_capacity", "Frames a source's queue holds at most (its queue_size, or fewer of this frame "
              "size in engine.frame_budget_mb).", ("source",),
              lambda: {(batcher.names[i],): batcher.capacities[i] for i in batcher.newest()})
        gauge("results_waiting", "Results waiting for the per-source stages and for the sinks.", ("queue",),
              lambda: {("stages",): self._to_stage.qsize(), ("sinks",): self._to_sinks.qsize()})
        gauge("batches_waiting_post", "Batches whose network started and whose post-processing has not.", (),
              lambda: {(): self._to_post.qsize()})
        def of_sinks(attribute: str) -> Callable[[], dict]:
            """Reads ``attribute`` of each sink that has one, by sink name."""
            return lambda: {(sink.name,): getattr(sink, attribute) for sink in sinks if hasattr(sink, attribute)}

        gauge("publisher_backlog", "Entries a sink holds that are not written yet.", ("sink",), of_sinks("backlog"))
        gauge("sink_backlog_limit", "Entries a sink's backlog holds at most (max_backlog); one more drops the "
              "oldest frame (sink_backlog).", ("sink",), of_sinks("max_backlog"))
        counter("events_dropped", "Events (track starts and ends, source states) a sink never wrote.", ("sink",),
                of_sinks("events_dropped"))
        counter("events_abandoned", "Events not handed to every sink: publishing ended first (a sink refused writes "
                "for good, an abort).", (), lambda: {(): self.events_abandoned})
        counter("sink_reconnects", "Times a sink's store took writes again after an outage.", ("sink",),
                of_sinks("reconnects"))
        metrics = self.metrics
        counter("thread_busy_seconds", "Seconds each pipeline thread after the decoders worked (model workers, "
                "post-processing, the per-source stages, publishing): one near the run's time holds it back.",
                ("thread",), lambda: {(thread,): seconds for thread, seconds in metrics.load().busy.items()})
        counter("stage_seconds", "Seconds each per-source stage (the tracker, a stage of one's own) took on each "
                "source's results.", ("stage", "source"),
                lambda: {(part[6:], source): seconds for (part, source), seconds in metrics.load().part_s.items()
                         if part.startswith("stage ")})
        counter("sink_seconds", "Seconds the publishing thread spent in each sink (results, events, its polls).",
                ("sink",), lambda: {(part[5:],): seconds for (part, _), seconds in metrics.load().part_s.items()
                                    if part.startswith("sink ")})
        counter("sink_bytes_written", "Bytes of entries a sink wrote, as sent (Redis: field names and values; files: lines).", ("sink",), of_sinks("bytes_written"))
        counter("sink_down_seconds", "Seconds a sink could not write (its store unreachable or refusing writes).",
                ("sink",), of_sinks("down_seconds"))
        gauge("sink_connected", "1 while a sink can write (0 while it is reconnecting).", ("sink",),
              lambda: {(sink.name,): float(getattr(sink, "connected", True)) for sink in sinks})
        gauge("redis_streams_unexpired", "Streams the Redis sink wrote without a time to live, its user refused "
              "PEXPIRE: with max_age_s, they keep their last entries once no run writes them (grant +pexpire).", ("sink",),
              of_sinks("expiry_refused"))
        gauge("redis_other_writers", "Other runs seen writing to the Redis streams this run writes (same source names) "
              "within the last 2 min.", ("sink",),
              lambda: {(sink.name,): sink.writing_now for sink in sinks if hasattr(sink, "writing_now")})
        gauge("redis_clock_offset_seconds", "The Redis server's clock minus this machine's (from the IDs of the "
              "entries it writes): entries' capture_ts and their IDs disagree by that much.", ("sink",),
              lambda: {(sink.name,): offset for sink in sinks if (offset := getattr(sink, "clock_offset_s", None))
                       is not None})
        gauge("run_info", "Always 1; the label is this run's run_id, which every entry it publishes carries.", ("run_id",),
              lambda: {(self.run_id,): 1})
        labels = getattr(self.adapter, "labels", None)
        gauge("model_info", "Always 1; the labels say the model, its weights file and their SHA-256 (entries carry its "
              "first 12 hex digits as checkpoint_id), and its label set.", ("model", "checkpoint", "sha256", "labels"),
              lambda: {(getattr(self.adapter, "name", ""), self.weights.get("checkpoint") or "",
                        self.weights.get("checkpoint_sha256", ""), getattr(labels, "name", "")): 1})
        counter("track_capacity_refused", "Segments left without a track id: the tracker held tracking.max_tracks.",
                ("source",), lambda: {(name,): sum(getattr(stage, "capacity_refused", 0)
                                                   for stage in self._stages.get(name, ()))
                                      for name in list(self._source_names) if name not in self.metrics.retired})
        counter("segments_filtered", "Segments a source's filters dropped before the tracker and the sinks, by reason "
                "(class, score, roi, min_area).", ("source", "reason"),
                lambda: {key: n for key, n in list(self.filtered.items()) if key[0] not in self.metrics.retired})
        gauge("source_info", "1 for the format each source streams now (as decoded); a new series when it changes.",
              ("source", "codec", "width", "height"), lambda: {
                  (source.name, info.codec, str(info.width), str(info.height)): 1
                  for source, info in self._source_infos()})
        gauge("source_lag_seconds", "How far a live source's newest decoded frame is behind its stream's own clock: "
              "the wall time since its timestamps began (this epoch) minus the stream time since; back-pressure "
              "(buffer every_frame behind a slower model) or a decoder slower than the stream makes it grow.",
              ("source",),
              lambda: {(name,): lag for name, lag in list(self.lags.items()) if name not in self.metrics.retired})
        gauge("source_sender_delay_seconds", "A camera's newest frame's capture_ts minus its sender_ts (cameras that "
              "send RTCP sender reports): the network's and the decoder's delay plus the camera's clock's offset from "
              "this machine's; cameras compared by it show their skew. Absent while a source's frames carry no "
              "sender_ts.", ("source",),
              lambda: {(name,): delay for name, delay in list(self.sender_delays.items())
                       if name not in self.metrics.retired})
        gauge("source_nominal_fps", "The frame rate each source's stream says it has (where it says one).",
              ("source",), lambda: {(source.name,): info.fps for source, info in self._source_infos()
                                    if info.fps})
        device = self.model_stage.device
        if device.type == "cuda":
            import torch

            gauge("gpu_memory_allocated_bytes", "GPU memory held by tensors.", ("device",),
                  lambda: {(str(device),): torch.cuda.memory_allocated(device)})
            gauge("gpu_memory_reserved_bytes", "GPU memory held by the caching allocator.", ("device",),
                  lambda: {(str(device),): torch.cuda.memory_reserved(device)})

    def _source_infos(self) -> list[tuple[VideoSource, Any]]:
        """The sources that know what they stream (``info``: codec, size, frame rate), with it."""
        return [(self.sources[i], info) for i in self._batcher.newest()
                if (info := getattr(self.sources[i], "info", None)) is not None]

    def _source_stages(self, source: str) -> list[FrameStage]:
        stages = self._stages.get(source)
        if stages is None:
            # a factory's None: no stage of it for this source (a config stage limited to some sources)
            stages = self._stages[source] = [stage for factory in self.stage_factories
                                             if (stage := factory(source)) is not None]
        return stages

    def _attach(self, sink: Sink) -> None:
        """Have the sink report what it writes (the first such sink's writes make the latency)
        and what it drops."""
        name = getattr(sink, "name", type(sink).__name__)
        if hasattr(sink, "on_dropped"):
            sink.on_dropped = self._dropped_by_sink
        if hasattr(sink, "on_data_lost"):
            self.metrics.data_losses[name] += 0  # a series from the start, as for every counter
            self.metrics.entries_lost[name, "frames"] += 0
            self.metrics.entries_lost[name, "events"] += 0
            sink.on_data_lost = lambda frames, events: self.metrics.data_lost(name, frames, events)
        if not hasattr(sink, "on_written"):
            return
        primary = not self._reporting
        self._reporting = True

        def written(results: Sequence[FrameResult]) -> None:
            now = time.monotonic()
            for result in results:
                capture_ts = result.capture_ts
                if result.source in self._captured_before_read and "decoded" in result.times:
                    # an image's own time: segstream's latency runs from when it read the image
                    capture_ts = result.publish_ts - (now - result.times["decoded"])
                else:
                    capture_ts += wall_clock_step(result.times)
                self.metrics.wrote(name, result.source, capture_ts, result.publish_ts, primary)
                if primary:
                    result.times["published"] = now
                    self.metrics.stages(result.times)

        sink.on_written = written

    def _dropped_by_sink(self, results: Sequence[FrameResult], reason: str) -> None:
        """A sink gave up on results it was handed: they count as dropped, not published (once,
        whichever sinks drop them). Whatever the reason, the output is incomplete: the run says so.
        A sink's reason named as one of the engine's own (``queue_full``: load shed before the
        model) is counted as ``sink_<reason>``, so that the engine's shedding is not taken for
        lost output."""
        if reason in ENGINE_DROPS:
            reason = f"sink_{reason}"
        self._sink_drop_reasons.add(reason)
        for result in results:
            if "dropped" not in result.times:
                result.times["dropped"] = time.monotonic()
                self.metrics.unpublished(result.source, reason)

    def _written_at_handoff(self, result: FrameResult) -> None:
        """No sink reports its writes: a result is published once every sink has it (its
        ``publish_ts``, which the sinks and a results loop read, was stamped as they got it; the
        run's latencies end here, the sinks' own time, a slow results loop's included)."""
        result.times["published"] = time.monotonic()
        self.metrics.wrote("handoff", result.source, result.capture_ts + wall_clock_step(result.times), time.time(),
                           primary=True)
        self.metrics.stages(result.times)

    def _fail(self, error: BaseException, drain: bool) -> None:
        self._errors.append(error)
        if not drain:
            self._abort()

    def _abort(self) -> None:
        self._aborted.set()
        self._batcher.abort()

    def _close_sources(self) -> None:
        with self._sources_lock:  # a source added after this is refused (the run is ending)
            now = time.monotonic()
            closing = [(i, source) for i, source in enumerate(self.sources) if i not in self._removed]
            for i, _ in closing:
                self._closed_at.setdefault(i, now)
        for _, source in closing:
            try:
                source.close()
            except Exception as error:  # a failing close must not hide the run's outcome
                self._errors.append(error)

    def _say_slow_close(self, now: float) -> None:
        """A sink whose close() has taken long: said once (the run waits for it, and why it does not
        end would be otherwise unsaid)."""
        closing = self._closing
        if closing is None or now - closing[1] < SINK_CLOSE_SAY_S or closing[0] is self._close_said:
            return
        self._close_said = closing[0]
        log.warning("waiting for sink %s to close (%.0f s so far; its close() has not returned) — a second stop signal "
                    "(Ctrl-C twice) ends the run without it", getattr(closing[0], "name", type(closing[0]).__name__),
                    now - closing[1])

    def _close_sinks(self, skip: object = None) -> None:
        for sink in self.sinks:
            if sink is skip:
                continue
            self._closing = (sink, time.monotonic())
            try:
                sink.close()
            except Exception as error:
                self._errors.append(error)
        self._closing = None

    def _close_sinks_within(self, grace_s: float) -> None:
        """An abort's closing of the sinks, on a thread of its own waited for at most ``grace_s``:
        a sink whose ``close()`` hangs (found probing as a plugin author: the run outlived a second
        Ctrl-C) is left, said; the one the publishing thread is stuck closing is not closed again."""
        busy = self._closing  # (read once: the publishing thread may end its closing meanwhile)
        stuck = busy[0] if busy is not None else None
        closing = threading.Thread(target=self._close_sinks, args=(stuck,), name=f"{THREAD_PREFIX}close", daemon=True)
        closing.start()
        closing.join(grace_s)
        left = [stuck] if stuck is not None else []
        if closing.is_alive() and (also := self._closing) is not None and also[0] is not stuck:
            left.append(also[0])
        for sink in left:
            log.warning("sink %s did not close (its close() has not returned); the run ends without it",
                        getattr(sink, "name", type(sink).__name__))

    def report(self, elapsed_s: float) -> RunReport:
        counts = self.metrics.snapshot()
        now = time.monotonic()
        p50, p99 = self.metrics.capture_to_publish.percentiles(50, 99)
        return RunReport(
            sources={
                name: SourceReport(
                    c.decoded, c.published, c.dropped, c.decode_errors, dict(c.dropped_by), c.state, c.reason,
                    c.reconnects, dict(c.transitions), c.downtime(now), c.missing, c.damage, c.skipped, c.handed,
                    c.connect_s, c.caught_up, c.unchanged, c.out_of_order,
                )
                for name, c in counts.items()
            },
            batches=self.metrics.batches,
            model_frames=self.metrics.model_frames,
            elapsed_s=elapsed_s,
            streaming_s=self.metrics.streaming_s,
            warm_up_s=self.warm_up_s,
            stopped=self._stop_requested,
            latency_ms_p50=1000 * p50,
            latency_ms_p99=1000 * p99,
            latency_ms_max=1000 * self.metrics.capture_to_publish.max(),
            stages=self.metrics.stage_table(),
            source_latency={
                name: dict(zip(("p50_ms", "p99_ms"), (1000 * v for v in window.percentiles(50, 99))),
                           max_ms=1000 * window.max())
                for name, window in self.metrics.source_latencies().items() if window.count
            },
            run_id=self.run_id,
            model=getattr(self.adapter, "name", ""),
            checkpoint_id=self.checkpoint_id,
            sinks=self._sink_status(),
            sink_drop_reasons=frozenset(self._sink_drop_reasons),
            events_abandoned=self.events_abandoned,
        )

    def _sink_status(self) -> dict[str, dict]:
        status = {}
        for sink in self.sinks:
            if hasattr(sink, "status"):
                status[getattr(sink, "name", type(sink).__name__)] = sink.status()
        return status

    def _progress_stream(self) -> TextIO:
        return sys.stderr if self.progress is True else self.progress

    def _print_summary(self, report: RunReport, outcome: str | None = None) -> None:
        summary = report.summary(outcome)
        stream = self._progress_stream()
        if hasattr(stream, "record") and not self._unsayable:  # JSON logs: the figures as a field too
            stream.record(summary, summary=report.as_dict(outcome))
            return
        # each line as the status lines and the CLI's own: ``segstream: ...`` (JSON logs drop the prefix)
        self._say("".join(f"segstream: {line}\n" for line in summary.splitlines()),
                  logging.ERROR if summary.startswith("failed") else logging.INFO)

    def _say(self, text: str, levelno: int = logging.INFO) -> None:
        """``text``'s lines on the progress stream; on standard error read by journald, each with
        the syslog priority of ``levelno`` as the log's lines (the status lines and the summary
        had none, so journald stored them at its default, found probing)."""
        if self._unsayable:
            return
        stream = self._progress_stream()
        if stream is sys.stderr and (prefix := journal_prefix(levelno)):
            text = "".join(prefix + line for line in text.splitlines(keepends=True))
        try:
            print(text, end="", file=stream, flush=True)
        except OSError:  # a terminal that went away (SIGHUP): the run goes on, its lines unsaid
            self._unsayable = True

    def _progress_line(self, elapsed_s: float) -> str:
        report = self.report(elapsed_s)
        # the last minute's, not the summary's: latency back to normal after an outage shows within it
        p50, p99 = self.metrics.recent_capture_to_publish.percentiles(time.monotonic(), 50, 99)
        latency = "" if math.isnan(p50) else f", latency p50 {1000 * p50:.0f} ms p99 {1000 * p99:.0f} ms"
        sinks = "".join(f", {status['line']}" for status in report.sinks.values() if status.get("line"))
        # the rates since the last line: an overload shows as more in than out now, not averaged away
        frames_in = report.decoded + sum(s.decode_errors for s in report.sources.values())
        since, in_before, out_before = self._last_line or (0.0, 0, 0)
        self._last_line = (elapsed_s, frames_in, report.handed)
        span = elapsed_s - since
        skipped = (f", {report.skipped} skipped "
                   f"({skipped_why(report.skipped, report.caught_up, report.unchanged, report.out_of_order)})"
                   if report.skipped else "")
        rates = (f"{_rate((frames_in - in_before) / span)} in / {_rate((report.handed - out_before) / span)} out fps"
                 if span > 0 else "0.0 in / 0.0 out fps")
        return (
            f"segstream: {report.handed} frames, {rates}, {report.dropped} dropped{skipped}{latency}, "
            f"queues {self._batcher.depths(len(self.sources) > MANY_SOURCES)} in flight {self._to_post.qsize()}, "
            f"sources {self._states_line(report, self.metrics.retired)}"
            f"{self._behind_line(self.lags, self._not_streaming(report))}{sinks}"
        )

    def _not_streaming(self, report: RunReport) -> set[str]:
        """The sources removed from the run or in another state than streaming: their last lag is
        no longer theirs to show."""
        return set(self.metrics.retired) | {name for name, s in report.sources.items() if s.state != "streaming"}

    @staticmethod
    def _behind_line(lags: dict[str, float], removed: Collection[str] = ()) -> str:
        """``, behind live cam4k 3.2 s cam2 1.4 s``: the live sources more than ``BEHIND_SHOWN_S``
        behind their streams' clocks, the furthest first (a source 3 s behind read as healthy
        beside a latency of 300 ms, which counts from decoding)."""
        behind = sorted(((lag, name) for name, lag in list(lags.items())
                         if lag > BEHIND_SHOWN_S and name not in removed), reverse=True)
        if not behind:
            return ""
        shown = behind if len(behind) <= STATE_NAMES_SHOWN else behind[:STATE_NAMES_SHOWN - 1]
        more = f" +{len(behind) - len(shown)} more" if len(shown) < len(behind) else ""
        return ", behind live " + " ".join(f"{name} {lag:.1f} s" for lag, name in shown) + more

    @staticmethod
    def _states_line(report: RunReport, removed: Collection[str] = ()) -> str:
        """``streaming 7, reconnecting 1 (cam3)``: sources per state, named unless streaming;
        sources ``removed`` from the run left out."""
        by_state: dict[str, list[str]] = {}
        for name, source in report.sources.items():
            if name not in removed:
                by_state.setdefault(source.state, []).append(name)

        def named(names: list[str]) -> str:  # 50 cameras down are not 50 names every status interval
            shown = names if len(names) <= STATE_NAMES_SHOWN else names[:STATE_NAMES_SHOWN - 1]
            more = f" +{len(names) - len(shown)} more" if len(shown) < len(names) else ""
            return f" ({' '.join(shown)}{more})"

        return ", ".join(
            f"{state} {len(names)}" + ("" if state == "streaming" else named(names))
            for state, names in by_state.items()
        )


# Runs under way in this process, stopped (drained) when the program exits while they run.
_RUNNING: weakref.WeakSet[Runtime] = weakref.WeakSet()
_RUNNING_LOCK = threading.Lock()
_EXIT_HOOKED = False
EXIT_DRAIN_S = 20.0  # how long an exiting program waits for its runs to drain (a Redis away: its drain_timeout_s)


def stopped_at_exit(runtime: Runtime) -> None:
    """Have ``runtime`` stopped if the program exits while it runs. A program that returns from
    its main thread with a run on a thread of its own was killed (SIGABRT, "terminate called
    without an active exception": torch's threads torn down under it), or hung forever (an
    executor's thread, which the exit joins). The hook runs where the interpreter's exit starts,
    before it joins threads (as ``concurrent.futures`` registers its own), so it is added at the
    first run: after an executor's, and so called before it."""
    global _EXIT_HOOKED
    with _RUNNING_LOCK:
        _RUNNING.add(runtime)
        if _EXIT_HOOKED:
            return
        _EXIT_HOOKED = True
    register = getattr(threading, "_register_atexit", None)
    try:
        (register or atexit.register)(_stop_running)
    except RuntimeError:  # the interpreter is exiting already
        pass


# Called at the program's exit before its runs are stopped and waited for: segstream.results
# closes the feeds still open there (a loop that is gone must not hold its run's drain).
EXIT_FIRST: list[Callable[[], None]] = []


def _stop_running() -> None:
    for hook in EXIT_FIRST:
        hook()
    with _RUNNING_LOCK:
        running = [runtime for runtime in _RUNNING if not runtime._finished.is_set()]
    if not running:
        return
    log.warning("the program is exiting while %d pipeline run(s) still run: stopping them, draining for up to %g s",
                len(running), EXIT_DRAIN_S)
    deadline = time.monotonic() + EXIT_DRAIN_S
    for runtime in running:
        runtime.stop()
    for runtime in running:
        if not runtime._finished.wait(max(0.0, deadline - time.monotonic())):
            log.warning("a pipeline run did not finish draining within %g s of the program's exit", EXIT_DRAIN_S)


_UNSAID = object()  # a source whose settings event is still to be written


def software_versions() -> dict[str, str]:
    """The versions of what computes and decodes: segstream, torch, PyAV, its libavcodec, Python."""
    import platform

    import av
    import torch  # (engine imports it before this module)

    from segstream import __version__

    return {"segstream": __version__, "torch": torch.__version__, "av": av.__version__,
            "libavcodec": ".".join(map(str, av.library_versions.get("libavcodec", ()))),
            "python": platform.python_version()}


def _labels_made_by(adapter) -> dict[str, Any]:
    """The classes the model names (its label set's name, and the names in class id order), for a
    source's ``settings`` event: a consumer maps ``class_id`` to them, and a change of classes shows."""
    labels = getattr(adapter, "labels", None)
    if labels is None:
        return {}
    return {"labels": getattr(labels, "name", None), "classes": list(getattr(labels, "names", ()))}


def _healthy(metrics: RunMetrics, stall_after_s: float) -> bool:
    """/healthz's verdict now: no runtime thread stuck working for ``stall_after_s``."""
    from segstream.pipeline.monitoring import liveness  # (prometheus_client's import, for a run that serves none)

    return liveness(metrics, stall_after_s).ok


def _quota_said(cores: int) -> str:
    """The cgroup's CPU quota where it is a fraction the usable cores round up (a Kubernetes limit
    of 1500m reads as 2 cores; found probing an edge box)."""
    quota = cgroup_cpu_quota()
    return f" (a CPU quota of {quota:g})" if quota is not None and quota < cores else ""


def _weights_made_by(cfg) -> dict[str, Any]:
    """The weights file a config's model reads and its SHA-256 (hashed once, at the run's start),
    or the hub reference; for a source's ``settings`` event."""
    from segstream.connectors.checkpoints import file_sha256
    from segstream.connectors.redaction import mask_userinfo
    from segstream.pipeline.model_factory import check_preset, weights_read

    weights = weights_read(cfg.model)
    if weights is None:  # a hub reference (a plugin's URL: its credentials masked), random
        return {"checkpoint": mask_userinfo(cfg.model.checkpoint or check_preset(cfg.model).weights or "") or None}
    return {"checkpoint": str(weights), "checkpoint_sha256": file_sha256(weights)}


class _OwnCounts:
    """What a source counts itself (decode errors, gaps, frames skipped or missing), into the
    run's metrics; added to what sources of the same name counted before it (``base``)."""

    def __init__(self, metrics: RunMetrics, name: str, source: VideoSource, base: SourceCounts | None):
        self.metrics, self.name, self.source = metrics, name, source
        self.base = base or SourceCounts()

    def count(self) -> None:
        source, base = self.source, self.base
        self.metrics.decode_errors(self.name, base.decode_errors + getattr(source, "decode_errors", 0))
        self.metrics.gaps(self.name, base.gap_s + getattr(source, "gap_s", 0.0))
        missing = getattr(source, "frames_missing", 0)
        self.metrics.missing(self.name, base.missing + missing, getattr(source, "damage", "") if missing else base.damage)
        self.metrics.skipped(self.name, base.skipped + getattr(source, "frames_skipped", 0),
                             base.caught_up + getattr(source, "frames_caught_up", 0),
                             base.unchanged + getattr(source, "frames_unchanged", 0),
                             base.out_of_order + getattr(source, "frames_out_of_order", 0))


class _LiveLag:
    """How far a live source's frames are behind its stream's own clock: how much later than its
    timestamps say each frame is decoded, against the earliest of its epoch (a frame that came as
    soon as it could: a late start and a network's jitter are not lag). Grows while the decoder is
    held back, by a slower model (``every_frame``) or by its own work (a stream too large to decode
    in real time, whose packets wait in FFmpeg's input buffer), a little at each frame. A
    ``newest`` source's frame later than the one before it by more than ``BEHIND_WARN_S`` beyond
    what their timestamps say is a pause of the sender (a publisher that paused, its timestamps
    going on from where they stopped), not lag: the mark starts again there (an ``every_frame``
    source waits that long for a slow model). Past ``BEHIND_WARN_S`` the source is
    named in a warning, once, and again only after it caught up (under half of it); not so a
    source that ``catches_up`` itself (``max_behind_s``), which says so."""

    def __init__(self, name: str, policy: BufferPolicy, catches_up: bool = False,
                 less_work: str = "a smaller model, a GPU") -> None:
        self.name, self.policy, self.catches_up = name, policy, catches_up
        self.less_work = less_work  # the engine's ways to do less per frame, as the overload line says them
        self.epoch: int | None = None
        self.earliest = 0.0  # the offset of a frame that came as soon as it could
        self.earliest_at = 0.0  # as of this capture_wall
        self.last_offset = 0.0  # the frame before's
        self.warned = False

    def behind(self, frame: Frame) -> float:
        if frame.pts_seconds is None:
            return 0.0
        offset = frame.capture_wall - frame.pts_seconds
        # a camera's clock that runs slower than ours is no lag either: the mark follows it up to CLOCK_DRIFT
        earliest = self.earliest + CLOCK_DRIFT * (frame.capture_wall - self.earliest_at)
        paused = self.policy.kind != "every_frame" and offset - self.last_offset > BEHIND_WARN_S
        if frame.epoch != self.epoch or offset < earliest or paused:
            self.epoch, earliest = frame.epoch, offset
        self.last_offset = offset
        self.earliest, self.earliest_at = earliest, frame.capture_wall
        behind = offset - earliest
        if behind > BEHIND_WARN_S and not self.warned and not self.catches_up:
            self.warned = True
            log.warning("source %s is %.1f s behind live: %s", self.name, behind, self._why(),
                        extra={"source": self.name})
        elif behind < BEHIND_WARN_S / 2 and self.warned:
            self.warned = False
            log.info("source %s keeps up with live again (%.1f s behind)", self.name, behind,
                     extra={"source": self.name})
        return behind

    def _why(self) -> str:
        if self.policy.kind == "every_frame":
            return ("with buffer every_frame it waits for the model, and the stream waits meanwhile — use buffer "
                    f"newest to stay live, or give the engine less to do per frame (max_fps, {self.less_work})")
        return ("its frames are decoded slower than they come, and the stream waits in the input's buffer (frames "
                "lost there, once it is full) — max_fps does not make decoding cheaper: have the camera or encoder "
                "send a smaller stream (resolution, frame rate), give the source more CPU (fewer sources or a "
                "lighter model on this machine), or let it skip to a keyframe near live (max_behind_s, null here)")


class _Shift:
    """The frames of a source added again under a name that ran before go on from its last frame
    (``last``: index, epoch, pts in seconds, Unix time decoded): numbers after it, the epoch one
    more, timestamps after it by the time that passed (as a reconnect's)."""

    def __init__(self, last: tuple[int, int, float | None, float], first: Frame):
        index, epoch, pts_s, wall = last
        self.index = index + 1 - first.index
        self.epoch = epoch + 1
        self.seconds = None
        if pts_s is not None and first.pts_seconds is not None:
            self.seconds = pts_s + max(first.capture_wall - wall, 1e-3) - first.pts_seconds

    def apply(self, frame: Frame) -> None:
        frame.index += self.index
        frame.epoch += self.epoch
        if self.seconds is not None and frame.pts_seconds is not None:
            frame.pts_seconds += self.seconds
            if frame.pts is not None and frame.time_base:
                frame.pts += round(Fraction(self.seconds) / frame.time_base)


def _declared_queue(source: VideoSource) -> int:
    """The queue a source asks for (its ``queue_size``), else ``QUEUE_SIZE``."""
    size = getattr(source, "queue_size", None)
    if size is None:
        return QUEUE_SIZE
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"source {source.name}: queue_size must be a whole number of frames, 1 or more, got {size!r}")
    return size


def _declared_buffer(source: VideoSource) -> BufferPolicy | None:
    """The buffer policy a source asks for (its ``buffer_policy``), if any."""
    policy = getattr(source, "buffer_policy", None)
    if policy is not None and not isinstance(policy, BufferPolicy):
        raise ConfigError(f"source {source.name}: buffer_policy must be a segstream.BufferPolicy "
                          f"(e.g. BufferPolicy('newest', max_staleness_s=0.2)), got {policy!r}")
    return policy


def _start(thread: threading.Thread) -> None:
    try:
        thread.start()
    except RuntimeError as error:
        if not thread_start_failed(error):
            raise
        name = thread.name.removeprefix(THREAD_PREFIX)
        raise ResourceLimit(f"the system refused to start the pipeline's {name} thread ({THREAD_LIMIT_HINT})") from None


def _configured_own(source: VideoSource) -> bool:
    """Whether ``source`` is a config's source of one's own (``type: custom``)."""
    return isinstance(source, OwnSource)


@dataclass(frozen=True, slots=True)
class _Unusable:
    """A result the model gave in name only (its outputs not finite), on its way to be counted as
    dropped in its source's order."""

    result: FrameResult
    reason: str


def _sink_name(sink: Sink) -> str:
    return f"sink {getattr(sink, 'name', type(sink).__name__)}"


def _stage_name(stage: FrameStage) -> str:
    """``stage NAME`` for the time a per-source stage takes: a config-named one's ``use``, the
    tracker, else its class."""
    if isinstance(stage, NamedStage):
        return f"stage {stage.use}"
    return "stage tracker" if type(stage).__name__ == "TrackingStage" else f"stage {type(stage).__name__}"


def _reason(error: BaseException, source: str) -> str:
    """One line on why a source failed: the message of a user-facing error (without the
    ``source <name>:`` it starts with), else the exception's type and message."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if not isinstance(error, SegstreamError):
        return f"{type(error).__name__}: {text}" if text else type(error).__name__
    for prefix in (f"source {source} failed: ", f"source {source}: "):
        text = text.removeprefix(prefix)
    return text
