"""Threads, bounded queues, back-pressure, batching and shutdown for one pipeline run.

One decoding thread per source feeds that source's bounded queue; one model thread takes batches
across all queues (round-robin) and runs the segmenter; one publishing thread hands each
(frame, prediction) to every sink. Offline sources block when their queue is full (nothing is
lost); live sources drop their oldest queued frame instead (counted per source). Stages know
nothing of this: a source yields frames, the segmenter maps images to predictions, a sink
publishes one pair at a time.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol, Sequence, TextIO

import numpy as np

from segstream.connectors.frames import Frame
from segstream.connectors.source import VideoSource
from segstream.models.prediction import FramePrediction
from segstream.pipeline.config import FileSourceConfig, PipelineConfig, SourceConfig


class Segmenter(Protocol):
    """The model stage: H x W x 3 uint8 RGB images in, one prediction per image out, in order."""

    name: str

    def segment(self, images: list[np.ndarray]) -> list[FramePrediction]: ...


class Sink(Protocol):
    """Where results go. ``publish`` is called from one thread, in order per source; ``close``
    may be called twice (the second time from another thread when a run is aborted)."""

    def publish(self, frame: Frame, prediction: FramePrediction) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@dataclass(slots=True)
class SourceReport:
    decoded: int = 0
    published: int = 0
    dropped: int = 0
    decode_errors: int = 0


@dataclass
class RunReport:
    """Counts of one run. ``decoded == published + dropped`` for every source when the run ends
    without error; ``stopped`` tells a run ended by ``stop()`` from one whose sources ran out."""

    sources: dict[str, SourceReport]
    batches: int
    model_frames: int
    elapsed_s: float
    stopped: bool
    latency_ms_mean: float
    latency_ms_max: float

    @property
    def decoded(self) -> int:
        return sum(s.decoded for s in self.sources.values())

    @property
    def published(self) -> int:
        return sum(s.published for s in self.sources.values())

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self.sources.values())

    @property
    def dropped_frames(self) -> dict[str, int]:
        return {name: s.dropped for name, s in self.sources.items()}

    @property
    def fps(self) -> float:
        return self.published / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def balanced(self) -> bool:
        return all(s.decoded == s.published + s.dropped for s in self.sources.values())

    def summary(self) -> str:
        mean_batch = self.model_frames / self.batches if self.batches else 0.0
        per_source = ", ".join(
            f"{name} {s.published}/{s.decoded}" + (f" dropped {s.dropped}" if s.dropped else "")
            + (f" decode errors {s.decode_errors}" if s.decode_errors else "")
            for name, s in self.sources.items()
        )
        return (
            f"{'stopped' if self.stopped else 'done'}: {self.published} frames published in {self.elapsed_s:.1f} s "
            f"({self.fps:.1f} fps), {self.dropped} dropped, {self.batches} batches (mean {mean_batch:.1f}), "
            f"latency mean {self.latency_ms_mean:.0f} ms max {self.latency_ms_max:.0f} ms; {per_source}"
        )


class _SourceQueues:
    """One bounded FIFO per source behind one condition, so the model stage can wait on all."""

    def __init__(self, names: Sequence[str], sizes: Sequence[int], reports: Sequence[SourceReport]):
        self.names = list(names)
        self.sizes = list(sizes)
        self.reports = list(reports)
        self.queues: list[deque[Frame]] = [deque() for _ in names]
        self.open = [True] * len(names)
        self.cond = threading.Condition()
        self.aborted = False
        self._next = 0  # where the next round-robin pass starts

    def put(self, i: int, frame: Frame, live: bool) -> None:
        with self.cond:
            q = self.queues[i]
            while not live and len(q) >= self.sizes[i] and not self.aborted:
                self.cond.wait()
            if live and len(q) >= self.sizes[i]:
                q.popleft()
                self.reports[i].dropped += 1
            q.append(frame)
            self.cond.notify_all()

    def finish(self, i: int) -> None:
        with self.cond:
            self.open[i] = False
            self.cond.notify_all()

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify_all()

    def take_batch(self, size: int, max_wait_s: float) -> list[Frame] | None:
        """Up to ``size`` frames, round-robin over sources, waiting at most ``max_wait_s`` after
        the first; None once every source has finished and every queue is empty."""
        batch: list[Frame] = []
        with self.cond:
            while not self.aborted and not any(self.queues) and any(self.open):
                self.cond.wait()
            if self.aborted or not any(self.queues):
                return None
            deadline = time.monotonic() + max_wait_s
            while True:
                self._take_round_robin(batch, size)
                left = deadline - time.monotonic()
                if len(batch) >= size or left <= 0 or not any(self.open) or self.aborted:
                    break
                self.cond.wait(left)
            self.cond.notify_all()
        return batch

    def _take_round_robin(self, batch: list[Frame], size: int) -> None:
        n = len(self.queues)
        while len(batch) < size and any(self.queues):
            for k in range(n):
                q = self.queues[(self._next + k) % n]
                if q and len(batch) < size:
                    batch.append(q.popleft())
            self._next = (self._next + 1) % n

    def depths(self) -> str:
        return " ".join(f"{n}={len(q)}/{s}" for n, q, s in zip(self.names, self.queues, self.sizes))


_END = object()
THREAD_PREFIX = "segstream-"


class Runtime:
    """Runs sources -> segmenter -> sinks until the sources end or ``stop()`` is called.

    ``stop()`` may be called from any thread or a signal handler (it only sets a flag): sources are
    closed, frames already decoded drain through the model and the sinks, sinks are flushed and
    closed, and ``run()`` returns. An exception in any stage stops everything, drains what still
    can be drained and is raised from ``run()``. ``max_frames`` caps the frames taken from each
    source. ``progress`` gets a status line every ``progress_interval_s`` and the summary.
    """

    def __init__(
        self,
        sources: Sequence[VideoSource],
        segmenter: Segmenter,
        sinks: Sequence[Sink],
        *,
        batch_size: int = 4,
        max_wait_ms: float = 20.0,
        queue_size: int | Mapping[str, int] = 8,
        max_frames: int | None = None,
        progress: TextIO | None | bool = True,
        progress_interval_s: float = 2.0,
    ):
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique, got {names}")
        self.sources = list(sources)
        self.segmenter = segmenter
        self.sinks = list(sinks)
        self.batch_size = batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_frames = max_frames
        # True means whatever sys.stderr is when the run starts (it may be redirected later).
        self.progress = progress
        self.progress_interval_s = progress_interval_s
        self.reports = {name: SourceReport() for name in names}
        sizes = [queue_size[n] if isinstance(queue_size, Mapping) else queue_size for n in names]
        self._inputs = _SourceQueues(names, sizes, [self.reports[n] for n in names])
        self._outputs: queue.Queue = queue.Queue(maxsize=2 * batch_size)
        self._stop_requested = False
        self._aborted = threading.Event()
        self._errors: list[BaseException] = []
        self._batches = 0
        self._model_frames = 0
        self._latency_sum = 0.0
        self._latency_max = 0.0
        self._started = False

    @classmethod
    def from_config(
        cls,
        cfg: PipelineConfig,
        sources: Sequence[VideoSource],
        segmenter: Segmenter,
        sinks: Sequence[Sink],
        **kwargs,
    ) -> Runtime:
        return cls(
            sources,
            segmenter,
            sinks,
            batch_size=cfg.engine.batch_size,
            max_wait_ms=cfg.engine.max_wait_ms,
            queue_size={s.name: s.queue_size for s in cfg.sources},
            **kwargs,
        )

    def stop(self) -> None:
        """Ask for a graceful end; returns at once (safe in a signal handler)."""
        self._stop_requested = True

    def run(self) -> RunReport:
        if self._started:
            raise RuntimeError("a Runtime runs once; build a new one")
        self._started = True
        start = time.monotonic()
        threads = [
            threading.Thread(target=self._decode, args=(i, s), name=f"{THREAD_PREFIX}decode-{s.name}", daemon=True)
            for i, s in enumerate(self.sources)
        ]
        threads.append(threading.Thread(target=self._model, name=f"{THREAD_PREFIX}model", daemon=True))
        threads.append(threading.Thread(target=self._publish, name=f"{THREAD_PREFIX}publish", daemon=True))
        sources_closed = False
        try:
            for t in threads:
                t.start()
            last_progress = start
            while alive := [t for t in threads if t.is_alive()]:
                alive[-1].join(0.05)
                if (self._stop_requested or self._errors) and not sources_closed:
                    self._close_sources()
                    sources_closed = True
                now = time.monotonic()
                if self.progress and now - last_progress >= self.progress_interval_s:
                    last_progress = now
                    print(self._progress_line(now - start), file=self._progress_stream(), flush=True)
        except BaseException:
            # second Ctrl-C: no draining; sinks are closed because some own a process (an embedded Redis)
            self._abort()
            self._close_sources()
            self._close_sinks()
            raise
        if not sources_closed:
            self._close_sources()
        report = self._report(time.monotonic() - start)
        if self._errors:
            raise self._errors[0]
        if not report.balanced:
            raise RuntimeError(f"bug: frames lost between stages: {report.sources}")
        if self.progress:
            print(report.summary(), file=self._progress_stream(), flush=True)
        return report

    def _fail(self, error: BaseException, drain: bool) -> None:
        self._errors.append(error)
        if not drain:
            self._abort()

    def _abort(self) -> None:
        self._aborted.set()
        self._inputs.abort()

    def _close_sources(self) -> None:
        for source in self.sources:
            try:
                source.close()
            except Exception as error:  # a failing close must not hide the run's outcome
                self._errors.append(error)

    def _decode(self, i: int, source: VideoSource) -> None:
        report = self.reports[source.name]
        frames = None
        try:
            frames = iter(source.frames())
            for frame in frames:
                report.decoded += 1
                self._inputs.put(i, frame, source.live)
                if self._stop_requested or self._aborted.is_set():
                    break
                if self.max_frames is not None and report.decoded >= self.max_frames:
                    break
        except BaseException as error:
            # a broken source ends the run, but what the others decoded still drains
            self._fail(error, drain=True)
            self.stop()
        finally:
            try:
                if hasattr(frames, "close"):
                    frames.close()  # runs the source's own cleanup now, in this thread
            finally:
                report.decode_errors = getattr(source, "decode_errors", 0)
                self._inputs.finish(i)

    def _model(self) -> None:
        try:
            while (batch := self._inputs.take_batch(self.batch_size, self.max_wait_s)) is not None:
                predictions = self.segmenter.segment([f.image for f in batch])
                if len(predictions) != len(batch):
                    raise RuntimeError(
                        f"segmenter {self.segmenter.name} returned {len(predictions)} predictions for {len(batch)} frames"
                    )
                self._batches += 1
                self._model_frames += len(batch)
                for pair in zip(batch, predictions):
                    self._outputs.put(pair)
        except BaseException as error:
            self._fail(error, drain=False)
        finally:
            # the publishing thread consumes until it sees this, even after a sink failed
            self._outputs.put(_END)

    def _publish(self) -> None:
        ended = False
        try:
            while (item := self._outputs.get()) is not _END:
                frame, prediction = item
                for sink in self.sinks:
                    sink.publish(frame, prediction)
                self.reports[frame.source].published += 1
                latency = time.time() - frame.capture_wall
                self._latency_sum += latency
                self._latency_max = max(self._latency_max, latency)
            ended = True
            for sink in self.sinks:
                sink.flush()
        except BaseException as error:
            self._fail(error, drain=False)
            while not ended and self._outputs.get() is not _END:
                pass
        finally:
            self._close_sinks()

    def _close_sinks(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as error:
                self._errors.append(error)

    def _report(self, elapsed_s: float) -> RunReport:
        published = sum(r.published for r in self.reports.values())
        return RunReport(
            sources={n: SourceReport(r.decoded, r.published, r.dropped, r.decode_errors) for n, r in self.reports.items()},
            batches=self._batches,
            model_frames=self._model_frames,
            elapsed_s=elapsed_s,
            stopped=self._stop_requested,
            latency_ms_mean=1000 * self._latency_sum / published if published else 0.0,
            latency_ms_max=1000 * self._latency_max,
        )

    def _progress_stream(self) -> TextIO:
        return sys.stderr if self.progress is True else self.progress

    def _progress_line(self, elapsed_s: float) -> str:
        report = self._report(elapsed_s)
        return (
            f"segstream: {report.published} frames, {report.fps:.1f} fps, {report.dropped} dropped, "
            f"queues {self._inputs.depths()} out={self._outputs.qsize()}/{self._outputs.maxsize}"
        )


def build_sources(configs: Iterable[SourceConfig]) -> list[VideoSource]:
    """Open every configured source; on failure the ones already open are closed again."""
    sources: list[VideoSource] = []
    try:
        for cfg in configs:
            sources.append(_build_source(cfg))
    except BaseException:
        for source in sources:
            source.close()
        raise
    return sources


def _build_source(cfg: SourceConfig) -> VideoSource:
    if isinstance(cfg, FileSourceConfig):
        from segstream.connectors.file_source import FileSource

        return FileSource(
            cfg.name,
            cfg.path,
            realtime=cfg.realtime,
            loop=cfg.loop,
            max_frames=cfg.max_frames,
            open_timeout_s=cfg.open_timeout_s,
            read_timeout_s=cfg.read_timeout_s,
        )
    from segstream.connectors.synthetic import SyntheticSource

    return SyntheticSource(cfg.name, cfg.width, cfg.height, cfg.fps, cfg.seed, cfg.num_frames, cfg.realtime)

