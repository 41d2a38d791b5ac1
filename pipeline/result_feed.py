"""A pipeline's results in the caller's own loop: ``segstream.results(cfg)``.

The run goes on a thread of its own (``build_runtime`` + ``Runtime.run``); a sink of this module
hands each result to the loop through a bounded queue, so a loop slower than the pipeline holds the
pipeline back as a slow sink would.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from segstream.connectors.threads import NamedThread
from segstream.models.results import Event, FrameResult
from segstream.pipeline.config import PipelineConfig
from segstream.pipeline.runtime import EXIT_FIRST, THREAD_PREFIX, RunReport, Runtime, stopped_at_exit

RESULTS_WAITING = 8  # results the pipeline may be ahead of the loop, by default
_WAIT_S = 0.1  # how often a hand-off waiting for room looks whether the feed was closed
# A stopping run's drain waits this long for a loop that takes nothing (it left without closing
# the feed: a plain `for` loop's `break` with the feed still referenced); then the results not
# handed over are counted as dropped (results_loop_gone) and the drain goes on.
LOOP_GONE_S = 10.0
_END = object()
log = logging.getLogger(__name__)


class _Handoff:
    """The sink that hands results to a ``ResultFeed``'s loop (after the config's sinks): it waits
    for room while the loop goes on, a stopping run's drain included, and hands over nothing once
    the feed is closed (the loop has gone)."""

    name = "results"

    def __init__(self, waiting: int, images: bool, events: bool = False):
        self.queue: queue.Queue = queue.Queue(waiting)
        self.wants_images = images  # the runtime then attaches each decoded frame to its result
        self.events = events  # the sources' own events (states) go to the loop too
        self._carried: list[Event] = []  # the events of the result just handed over (it carries them)
        self.closed = threading.Event()
        self.runtime: Runtime | None = None  # set once built
        self.on_dropped: Callable[[Sequence[FrameResult], str], None] | None = None  # set by the runtime
        self._gone = False  # a stopping run's loop took nothing for LOOP_GONE_S: the rest is dropped

    def publish(self, result: FrameResult) -> None:
        if result.publish_ts is None:  # a sink that writes later (Redis) stamps its own copy, later
            result.publish_ts = time.time()
        self._carried = result.events
        if self.wants_images:  # the runtime takes the frame off its result once every sink has it
            result = dataclasses.replace(result)
        self.put(result)

    def put(self, item: Any) -> None:
        said = False
        full_since = None
        while not self.closed.is_set() and not (self._gone and item is not _END):
            try:
                self.queue.put(item, timeout=_WAIT_S)
                return
            except queue.Full:
                runtime = self.runtime
                if runtime is not None and not said:  # /healthz: waiting, not stalled
                    runtime.metrics.beat("publish", idle="back-pressure (the results loop)")
                    said = True
                if runtime is not None and runtime.stopping and item is not _END:
                    full_since = full_since or time.monotonic()
                    if time.monotonic() - full_since >= LOOP_GONE_S:
                        # found reviewing: stop(), then a `break` with the feed referenced held the run for ever
                        log.warning("the results loop took nothing for %g s of the run's drain: it has gone without "
                                    "closing its feed; the results left are counted as dropped (results_loop_gone)",
                                    LOOP_GONE_S)
                        self._gone = True
        if self._gone and isinstance(item, FrameResult) and self.on_dropped is not None:  # (an event: not counted)
            self.on_dropped([item], "results_loop_gone")

    def publish_event(self, event: Event) -> None:
        """With ``events``, a source's own events (its states: connecting, streaming,
        reconnecting, failed, ended) go to the loop in their place among its results; a
        result's (tracks started and ended) are its ``events``."""
        if self.events and not any(event is carried for carried in self._carried):
            self.put(event)

    def poll(self) -> float | None:
        return None

    def flush(self) -> None:
        """Nothing waits here: each result is handed over in ``publish``."""

    def close(self) -> None:
        """The feed ends the hand-off (``closed``), not the run."""


class ResultFeed:
    """The results of one run as they reach the sinks, in each source's frame order (sources
    interleave as they come). Iterate it; ``close()`` (also at ``break`` out of a ``with`` block,
    at an exception there, or when the feed is garbage collected) stops the run, waits for its
    threads to end and releases what it held (ports, an embedded Redis). An error of the run is
    raised from the iteration; ``report`` is the ``RunReport`` once the run has ended, ``error``
    what ended it when it failed (``close()`` raises neither). ``runtime`` is the ``Runtime``
    that runs: its ``metrics``, ``add_source`` and ``remove_source`` work while the loop goes on.
    Its ``stop()`` ends the run too: every result then drained reaches the loop (at most
    ``waiting`` ahead of it, the drain waiting for the loop as the run did), and the loop ends
    after the last; one that stops iterating without closing the feed holds the drain for
    ``LOOP_GONE_S``, then the results it did not take are counted as dropped
    (``results_loop_gone``)."""

    def __init__(self, runtime: Runtime, handoff: _Handoff):
        self.report: RunReport | None = None
        self.error: BaseException | None = None
        self.runtime, self._handoff = runtime, handoff
        self._outcome: list = []  # the run thread's report or error; it holds no reference to the feed
        self._thread = NamedThread(target=_run, args=(runtime, handoff, self._outcome),
                                   name=f"{THREAD_PREFIX}results", daemon=True)
        self._done = False
        _OPEN.add(self)
        stopped_at_exit(runtime)  # the exit hook is in before the run's thread starts (it closes this feed first)
        self._thread.start()

    def __iter__(self) -> Iterator[FrameResult]:
        return self

    def __next__(self) -> FrameResult:  # (an Event too, for results(events=True))
        if self._done:
            raise StopIteration
        try:
            while True:
                try:
                    item = self._handoff.queue.get(timeout=_WAIT_S)
                    break
                except queue.Empty:
                    if not self._thread.is_alive() and self._handoff.queue.empty():
                        item = _END  # (a thread never ends without its end marker; this keeps a bug from hanging)
                        break
        except BaseException:  # Ctrl-C while waiting for a result
            self.close()
            raise
        if item is not _END:
            return item
        self._finish()
        if self.error is not None:
            raise self.error
        raise StopIteration

    def close(self) -> None:
        """Stop the run (what is in flight drains into the config's sinks, not into this feed),
        wait for its threads and release its resources. Does nothing the second time."""
        if self._done:
            return
        self._done = True
        _OPEN.discard(self)
        self.runtime.stop()
        self._handoff.closed.set()
        self._finish()

    def _finish(self) -> None:
        self._done = True
        _OPEN.discard(self)
        self._thread.join()
        outcome = self._outcome[0] if self._outcome else None
        if isinstance(outcome, BaseException):
            self.error = outcome
        else:
            self.report = outcome

    def __enter__(self) -> ResultFeed:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_done", True):
            return
        # A collection may run on any thread: on one of this run's (which the wait would wait for)
        # the run is stopped, not waited for; it ends by itself.
        if threading.current_thread() is self._thread or getattr(
                threading.current_thread(), "segstream_run_id", None) == self.runtime.run_id:
            self.runtime.stop()
            self._handoff.closed.set()
        else:
            self.close()


# feeds not closed yet: closed when the program exits, before the runtime's own exit hook waits
# for their runs (a loop that will never come back must not hold them)
_OPEN: weakref.WeakSet[ResultFeed] = weakref.WeakSet()


def _close_open_feeds() -> None:
    for feed in list(_OPEN):
        feed.runtime.stop()
        feed._handoff.closed.set()


EXIT_FIRST.append(_close_open_feeds)  # called by the runtime's exit hook before it waits for the runs


def _run(runtime: Runtime, handoff: _Handoff, outcome: list) -> None:
    try:
        outcome.append(runtime.run())
    except BaseException as error:
        outcome.append(error)
    finally:
        handoff.put(_END)


def results(
    cfg: PipelineConfig, max_frames: int | None = None, *, images: bool = False, waiting: int = RESULTS_WAITING,
    progress: bool = False, ops: bool = False, sources: Sequence = (), sinks: Sequence = (),
    stages: Iterable = (), events: bool = False, adapter: Any = None,
) -> ResultFeed:
    """Run ``cfg`` on a thread of its own and hand its results (``FrameResult``) to the caller's
    loop as they reach the sinks, in each source's frame order::

        for result in segstream.results(cfg, max_frames=100):
            print(result)

    The config's sinks (Redis, files, ...) still get every result, before the loop does.
    ``max_frames`` caps the frames taken from each source; the run ends when its sources do.

    At most ``waiting`` results wait for the loop: a loop slower than the pipeline holds it back
    (back-pressure), and then a file is read more slowly while a live source (a camera, a
    stream) drops frames, counted as the run counts them (``report``, the summary).

    ``break`` stops the run: what it has in flight drains into the config's sinks, its threads
    end and its ports (``ops=True``'s endpoints, an embedded Redis) are free once the feed is
    closed, which a ``with`` block (``with segstream.results(cfg) as feed:``) or ``close()``
    does at once, and garbage collection otherwise (a plain ``for`` loop's feed, as soon as the
    loop is left). An error of the run (a source, a stage, a sink) is raised from the loop;
    Ctrl-C while the loop waits for a result stops the run and is raised. ``feed.runtime.stop()``
    ends the run without leaving the loop: the results drained then still come to it, with the
    same back-pressure, and the loop ends after the last.

    Each result carries ``publish_ts`` and ``latency_s``: as the runtime handed it to the sinks,
    or as the config's first sink that reports its writes (files, preview) wrote it; where that
    sink writes later (Redis, in batches), as the feed took it.

    ``images=True`` attaches each decoded frame (``result.image``, H x W x 3 uint8 RGB) for
    ``segstream.draw_overlay``; it is None otherwise (and not allowed with
    ``engine.resize_in_decoder``). ``events=True`` has the loop get each source's own events
    too (``segstream.Event``, ``kind`` ``state``: connecting, streaming, reconnecting, failed,
    ended, with the reason in ``data``), in their place among its results, and the tracks ended
    by a source's end; a result's own track events are its ``events`` either way. ``adapter`` runs a model already built
    (``segstream.build_segmenter(cfg.model)``) instead of building the config's: runs one after
    another (a folder of videos) load it once. ``progress`` prints the status line and summary
    as ``segstream run`` does; ``ops``, ``sources``, ``sinks`` and ``stages`` are
    ``build_runtime``'s."""
    from segstream.pipeline.cli import build_runtime

    if waiting < 1:
        raise ValueError(f"waiting must be at least 1 (results ahead of the loop), got {waiting}")
    handoff = _Handoff(waiting, images, events)
    runtime = build_runtime(cfg, max_frames=max_frames, progress=progress, ops=ops, sources=sources,
                            sinks=[*sinks, handoff], stages=stages, adapter=adapter)
    handoff.runtime = runtime
    return ResultFeed(runtime, handoff)
