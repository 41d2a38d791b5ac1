"""The model stage: batches formed across sources, the network of one batch overlapping the
post-processing of the one before.

``Batcher`` holds one bounded FIFO per source and hands out batches (the sources in turn, the one
served least recently first, at most ``size`` frames, waiting at most ``max_wait_s`` after the first). ``ModelStage`` turns a
batch into results in two calls that the runtime makes from two threads: ``submit`` (upload,
pre-processing, network) and ``collect`` (post-processing, results to the host). On CUDA,
``submit`` copies frames through reused pinned buffers on a copy stream and runs the network on
a compute stream without waiting for it; ``collect`` post-processes on a stream of its own once
that batch's network is done, so the GPU runs the next batch's network meanwhile. On the CPU the
same split lets torch (which releases the GIL) run the network of one batch while another thread
post-processes the previous one.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from segstream.connectors.frames import Frame
from segstream.models.results import FrameResult
from segstream.models.segmenter import FamilyAdapter, Prepared, nonfinite_frames, results
from segstream.pipeline.metrics import QUEUE_FULL, STALE, RunMetrics


BUFFER_POLICIES = ("every_frame", "newest")


@dataclass(frozen=True, slots=True)
class BufferPolicy:
    """What a source's queue does when the model falls behind.

    ``every_frame``: the source waits for room (back-pressure); nothing is dropped.
    ``newest``: the queue keeps the newest frames, dropping the oldest (``queue_full``), and a
    frame older than ``max_staleness_s`` when the model would take it is dropped (``stale``).
    """

    kind: str = "every_frame"
    max_staleness_s: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in BUFFER_POLICIES:
            raise ValueError(f"buffer policy must be one of {', '.join(BUFFER_POLICIES)}, got {self.kind!r}")


_NO_QUEUE: deque = deque(maxlen=0)  # a removed source's, once its end reached the sinks: nothing comes


class Batcher:
    """One bounded FIFO per source behind one condition, so the model stage can wait on all.

    Each source's ``BufferPolicy`` decides what a full queue does: ``every_frame`` sources block
    (back-pressure, nothing lost); ``newest`` sources drop their oldest queued frame, counted as
    ``queue_full``, and frames that waited longer than their ``max_staleness_s`` are dropped on
    their way to the model, counted as ``stale``. Without policies, ``put``'s ``live`` decides
    (live: newest, else every_frame). With ``max_bytes``, each source's queue holds no more decoded
    frames than fit in that many bytes, and a batch no more than fit in the budgets of all sources
    together (always at least one frame): 8 frames of 3840x2160 are 200 MB.

    ``oldest_first`` (a batch's videos) takes the frames queued first instead of a frame of each
    source in turn: fairness keeps live cameras' latencies alike, while a batch's videos, one after
    the other, are each done before the next (their frames round-robin, 64 short clips decoded ahead
    of the model were all done together at the end of it, each listed as long as all of them).
    """

    def __init__(
        self,
        names: Sequence[str],
        sizes: Sequence[int],
        metrics: RunMetrics,
        policies: Sequence[BufferPolicy] | None = None,
        max_bytes: int | None = None,
        oldest_first: bool = False,
    ):
        self.names = list(names)
        self.oldest_first = oldest_first
        self.max_bytes = max_bytes
        self.sizes = list(sizes)
        self.capacities = list(sizes)  # each queue's room now: its size, or fewer frames of this size in max_bytes
        self.metrics = metrics
        self.policies = list(policies) if policies is not None else [None] * len(self.names)
        self.queues: list[deque[Frame]] = [deque() for _ in names]
        self.open = [True] * len(names)
        self._open_count = len(names)  # queues not finished (added ones before they are active too)
        self.batched = [0] * len(names)  # each source's frames handed to the model
        self.cond = threading.Condition()
        self.aborted = False
        # the active queues, the one whose frame was taken longest ago first (in turn when all are full)
        self._turns: OrderedDict[int, None] = OrderedDict.fromkeys(range(len(self.names)))
        self._taken = 0  # batches handed out: each gets the next sequence number
        self._forming = threading.Lock()
        self.retired: set[int] = set()  # queues of sources removed from the run whose end reached the sinks
        # the queues the model stage walks: a removed source's leaves once its end reached the sinks,
        # so that cameras coming and going do not lengthen every batch's round-robin for good
        self.active: list[int] = list(range(len(self.names)))

    def put(self, i: int, frame: Frame, live: bool | None = None) -> None:
        policy = self.policies[i]
        newest = policy.kind == "newest" if policy is not None else bool(live)
        capacity = self.sizes[i]
        if self.max_bytes is not None:
            capacity = min(capacity, max(1, self.max_bytes // max(1, frame.image.nbytes)))
        self.capacities[i] = capacity
        with self.cond:
            q = self.queues[i]
            while not newest and len(q) >= capacity and not self.aborted and self.open[i]:
                self.cond.wait()
            if not self.open[i]:  # finished meanwhile (the run left the source behind): nowhere to go
                return
            while newest and len(q) >= capacity:  # frames may have grown (a reconnect at a larger size)
                q.popleft()
                self.metrics.dropped(self.names[i], QUEUE_FULL)
            frame.times["queued"] = time.monotonic()
            q.append(frame)
            self.cond.notify_all()

    def add(self, name: str, size: int, policy: BufferPolicy | None) -> int | None:
        """A queue for a source added to a run under way; its index, or None when every source
        has finished (the model stage is ending: nothing would take its frames) or the run aborted."""
        with self.cond:
            if self.aborted or not self._any_open():
                return None
            self.names.append(name)
            self.sizes.append(size)
            self.capacities.append(size)
            self.policies.append(policy)
            self.queues.append(deque())
            self.batched.append(0)
            self.open.append(True)  # last: a reader that sees it open finds the rest
            self._open_count += 1  # the model stage waits for it from now, active or not yet
            return len(self.open) - 1

    def hold(self) -> bool:
        """Keep the model stage from ending while no source is open (a reload replacing every
        source removes them before it adds the new ones); False when it has ended already."""
        with self.cond:
            if self.aborted or not self._any_open():
                return False
            self._open_count += 1
            return True

    def release(self) -> None:
        """``hold``'s end: with no source open now, the model stage ends."""
        with self.cond:
            self._open_count -= 1
            self.cond.notify_all()

    def activate(self, i: int) -> None:
        """Queue ``i`` (``add``'s) joins the round-robin and ``newest()``: once the caller's own
        lists have the source (a thread walking them by these indices finds it)."""
        with self.cond:
            self.active = [*self.active, i]
            self._turns[i] = None
            self._turns.move_to_end(i, last=False)  # never served: first
            self.cond.notify_all()

    def retire(self, i: int) -> None:
        """Source ``i`` was removed and its end has reached the sinks: its (empty) queue leaves
        the round-robin, ``newest()`` and the byte budget; its index stays taken."""
        with self.cond:
            self.retired.add(i)
            self.active = [k for k in self.active if k != i]
            self._turns.pop(i, None)
            self.queues[i] = _NO_QUEUE  # an empty deque holds 600 bytes

    def finish(self, i: int) -> None:
        with self.cond:
            if self.open[i]:
                self._open_count -= 1
            self.open[i] = False
            self.cond.notify_all()

    def settled(self, i: int) -> int | None:
        """How many of source ``i``'s frames went to the model, once it has ended and none of its
        frames waits here any more; None before."""
        if self.open[i]:  # the common case, seen without the lock (a source never opens again)
            return None
        with self.cond:
            return None if self.open[i] or self.queues[i] else self.batched[i]

    def abort(self) -> None:
        with self.cond:
            self.aborted = True
            self.cond.notify_all()

    def take_batch(self, size: int, max_wait_s: float) -> tuple[int, list[Frame]] | None:
        """Up to ``size`` frames, a frame of the source served least recently at a time (or oldest first), waiting at most ``max_wait_s`` after
        the first, with the batch's sequence number (0, 1, ... in the order batches were taken,
        also when several model workers take them); None once every source has finished and
        every queue is empty."""
        batch: list[Frame] = []
        # One batch forms at a time: a worker waiting for more frames must not let another
        # take the frames in between, or a source's frames would end up out of order.
        with self._forming, self.cond:
            while not batch:  # stale frames may empty a batch before it leaves
                while not self.aborted and not self._waiting() and self._any_open():
                    self.cond.wait()
                if self.aborted or not self._waiting():
                    return None
                deadline = time.monotonic() + max_wait_s
                while True:
                    self._take_in_turn(batch, size)
                    left = deadline - time.monotonic()
                    if len(batch) >= size or left <= 0 or not self._any_open() or self.aborted:
                        break
                    self.cond.wait(left)
            seq = self._taken
            self._taken += 1
            self.cond.notify_all()
        now = time.monotonic()
        for frame in batch:
            frame.times["batched"] = now
        return seq, batch

    def _waiting(self) -> bool:
        """Whether a frame waits in some queue (under ``cond``)."""
        return any(self.queues[i] for i in self.active)

    def _any_open(self) -> bool:
        return self._open_count > 0

    def _take_in_turn(self, batch: list[Frame], size: int) -> None:
        """Fill ``batch`` with a frame of the source served least recently (``oldest_first``: the
        frame queued first, whichever source's): a frame of each source in turn (evenly spaced
        when every queue is full), and a source whose frames went stale before its turn goes first
        at its next. Found probing 64 cameras: their frames came at the same instants (``max_fps``
        on whole seconds), a model 5% slower than them all found a plain rotation at the same
        place each second, and the same few sources lost 85% of their frames to staleness while
        the others lost none."""
        n = len(self.active)
        taken = sum(f.image.nbytes for f in batch)
        while len(batch) < size:
            now = time.monotonic()
            if self.oldest_first:
                position = self._oldest()
                if position is None:
                    return
                i = self.active[position]
                self._drop_stale(i, now)
                if not self.queues[i]:
                    continue
            elif (i := self._least_recently_served(now)) is None:
                return
            q = self.queues[i]
            # the budgets of the run's sources (not of removed ones)
            if self.max_bytes is not None and batch and taken + q[0].image.nbytes > self.max_bytes * max(1, n):
                return  # the batch is full by its bytes
            frame = q.popleft()
            batch.append(frame)
            self.batched[i] += 1
            taken += frame.image.nbytes
            if i in self._turns:
                self._turns.move_to_end(i)

    def _least_recently_served(self, now: float) -> int | None:
        """The active queue with a frame (its stale ones dropped) whose last frame was taken
        longest ago; None when none holds a frame."""
        for i in self._turns:
            q = self.queues[i]
            if q:
                self._drop_stale(i, now)
                if q:
                    return i
        return None

    def _oldest(self) -> int | None:
        """The place in ``active`` of the queue whose head frame was queued first; None when all are empty."""
        heads = [(self.queues[i][0].times["queued"], p) for p, i in enumerate(self.active) if self.queues[i]]
        return min(heads)[1] if heads else None

    def _drop_stale(self, i: int, now: float) -> None:
        """Drop the frames at the head of source ``i``'s queue that waited longer than its
        ``newest`` policy's ``max_staleness_s`` (counted as ``stale``)."""
        policy = self.policies[i]
        limit = policy.max_staleness_s if policy is not None and policy.kind == "newest" else None
        q = self.queues[i]
        while limit is not None and q and now - q[0].times.get("decoded", q[0].times["queued"]) > limit:
            q.popleft()
            self.metrics.dropped(self.names[i], STALE)

    def depths(self, total: bool = False) -> str:
        """Each source's queue, ``cam0=1/2 cam1=0/2``; with ``total``, their sum and the fullest (or
        that all are full)."""
        shown = self.newest()
        if not total:
            return " ".join(f"{self.names[i]}={len(self.queues[i])}/{self.sizes[i]}" for i in shown)
        if not shown:
            return "0/0"
        lengths = {i: len(self.queues[i]) for i in shown}
        if len(shown) > 1 and all(lengths[i] >= self.sizes[i] for i in shown):  # naming one would single it out
            return f"{sum(lengths.values())}/{sum(self.sizes[i] for i in shown)} (all {len(shown)} full)"
        fullest = max(shown, key=lambda i: lengths[i] / max(1, self.sizes[i]))
        return (f"{sum(lengths.values())}/{sum(self.sizes[i] for i in shown)} (fullest {self.names[fullest]} "
                f"{lengths[fullest]}/{self.sizes[fullest]})")

    def newest(self) -> list[int]:
        """Each source name's newest queue (a source removed and added again has two), in order;
        none of a source removed (and not added again)."""
        return sorted({self.names[i]: i for i in self.active}.values())


@dataclass(frozen=True, slots=True)
class EngineLayout:
    """How the model stage uses the machine: ``workers`` model threads of ``threads`` intra-op
    threads each, at most ``max_inflight`` batches in flight."""

    workers: int
    threads: int
    max_inflight: int


def usable_cores(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int:
    """The cores this process may use: its CPU affinity (taskset, a container's cpuset), at most
    its cgroup's CPU quota rounded up (docker --cpus, a Kubernetes CPU limit). os.cpu_count()
    counts the machine's: pinned to one core of two, the engine ran two workers on it (40%
    slower, latency tripled)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def cgroup_cpu_quota(cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """CPUs' worth of time this process's cgroups allow (the smallest quota of its cgroup and
    their parents), cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``);
    None when no quota is set or none can be read."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: the unified hierarchy
            base, reader = cgroup_root, _quota_v2
        elif "cpu" in controllers.split(","):
            base, reader = os.path.join(cgroup_root, controllers), _quota_v1
            if not os.path.isdir(base):  # mounted as cpu,cpuacct under another name
                base = os.path.join(cgroup_root, "cpu")
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):  # the cgroup itself, then each parent
            quota = reader(os.path.join(base, *parts[:depth]))
            if quota is not None:
                quotas.append(quota)
    return min(quotas) if quotas else None


def _quota_v2(directory: str) -> float | None:
    try:
        with open(os.path.join(directory, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _quota_v1(directory: str) -> float | None:
    try:
        with open(os.path.join(directory, "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(directory, "cpu.cfs_period_us")) as f:
            period = int(f.read())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None


def engine_layout(
    device: torch.device,
    cores: int,
    compiled: bool = False,
    workers: int | None = None,
    threads: int | None = None,
    max_inflight: int | None = None,
) -> EngineLayout:
    """Fill in what the config left open.

    GPU: one worker (one compute stream keeps the GPU busy), torch's thread count. CPU: two
    workers of one thread each up to two cores (whole batches in parallel: no intra-op
    barriers for post-processing and decoding to stall), the other cores but one shared between
    them; one worker when compiled (a compiled graph is warmed up in its own thread).
    ``max_inflight`` defaults to one more than the workers, so post-processing always has a
    batch to work on.
    """
    if workers is None:
        workers = 1 if device.type == "cuda" or compiled else min(2, max(1, cores))
    if threads is None:
        threads = torch.get_num_threads() if device.type == "cuda" else max(1, (cores - 1) // workers)
    if max_inflight is None:
        max_inflight = workers + 1
    return EngineLayout(workers, threads, max(max_inflight, workers))


@dataclass(slots=True)
class InFlight:
    """A batch whose network has been started: its frames, prepared input and outputs, and on
    CUDA the event that marks the end of its network."""

    seq: int
    frames: list[Frame]
    prepared: Prepared
    outputs: Any
    started: float
    begin: Any = None
    done: Any = None
    nonfinite: list[int] = field(default_factory=list)  # its frames whose outputs hold NaN or infinity


class _PinnedStaging:
    """Reused page-locked host buffers and the stream that uploads frames from them.

    ``slots`` buffers are used in turn; a buffer is refilled only after its previous upload has
    finished (its event), so at most ``slots`` uploads are in flight.
    """

    def __init__(self, device: torch.device, slots: int):
        self.device = device
        self.stream = torch.cuda.Stream(device)
        self.buffers: list[torch.Tensor | None] = [None] * slots
        self.events: list[Any] = [None] * slots
        self.next = 0

    def upload(self, images: list[np.ndarray], compute: Any) -> list[torch.Tensor]:
        slot = self.next
        self.next = (slot + 1) % len(self.buffers)
        if self.events[slot] is not None:
            self.events[slot].synchronize()
        total = sum(image.nbytes for image in images)
        buffer = self.buffers[slot]
        if buffer is None or buffer.numel() < total:
            buffer = self.buffers[slot] = torch.empty(max(total, 1), dtype=torch.uint8, pin_memory=True)
        host = buffer.numpy()
        offsets = []
        offset = 0
        for image in images:
            host[offset : offset + image.nbytes] = np.ascontiguousarray(image).reshape(-1)
            offsets.append(offset)
            offset += image.nbytes
        with torch.cuda.stream(self.stream):
            on_device = buffer[:total].to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.events[slot] = event
        compute.wait_event(event)
        on_device.record_stream(compute)  # freed by this thread while the compute stream reads it
        return [on_device[o : o + image.nbytes].view(image.shape) for o, image in zip(offsets, images)]


class ModelStage:
    """Runs a family adapter on batches of frames: ``submit`` then ``collect`` per batch.

    ``submit`` is called from the model thread(s) (several on the CPU, each running whole
    batches with its own share of the cores), ``collect`` from one other thread, in sequence
    order. ``warm_up`` runs every batch bucket once (compiling and capturing what the
    adapter compiles) and must be called from the model thread before the first ``submit``.
    """

    def __init__(self, adapter: FamilyAdapter, max_inflight: int = 2, keep_images: bool = False):
        self.adapter = adapter
        self.device = adapter.device
        self.keep_images = keep_images  # whether frames keep their pixels after pre-processing (previews)
        self.cuda = self.device.type == "cuda"
        if self.cuda:
            self.compute_stream = torch.cuda.Stream(self.device)
            self.post_stream = torch.cuda.Stream(self.device)
            self.staging = _PinnedStaging(self.device, max_inflight + 1)

    def warm_up(self, height: int, width: int) -> float:
        """Run each batch bucket of the adapter once on blank frames; returns the seconds taken."""
        start = time.monotonic()
        for bucket in self.adapter.batch_buckets or (1,):
            frames = [
                Frame("warm-up", i, np.zeros((height, width, 3), np.uint8), None, None, None, 0.0)
                for i in range(bucket)
            ]
            self.collect(self.submit(frames))
        return time.monotonic() - start

    @torch.inference_mode()
    def submit(self, frames: list[Frame], seq: int = 0) -> InFlight:
        started = time.monotonic()
        for frame in frames:
            frame.times["model_start"] = started
        begin = done = None
        with torch.cuda.stream(self.compute_stream) if self.cuda else nullcontext():
            if self.cuda:
                begin = torch.cuda.Event(enable_timing=True)
                begin.record(self.compute_stream)
                tensors = self.staging.upload([f.image for f in frames], self.compute_stream)
            else:
                tensors = [torch.from_numpy(np.ascontiguousarray(f.image)) for f in frames]
            # each frame's own size: its image may be a copy scaled in the decoder
            prepared = self.adapter.prepare(tensors, [(frame.height, frame.width) for frame in frames])
            if not self.keep_images:
                for frame in frames:
                    frame.image = None  # pre-processed: a 4K frame's 25 MB need not wait for the results
            outputs = self.adapter.forward(prepared)
            if self.cuda:
                done = torch.cuda.Event(enable_timing=True)
                done.record(self.compute_stream)
        if not self.cuda:
            ended = time.monotonic()
            for frame in frames:
                frame.times["model_end"] = ended
        return InFlight(seq, frames, prepared, outputs, started, begin, done)

    @torch.inference_mode()
    def collect(self, batch: InFlight) -> list[FrameResult]:
        if self.cuda:
            # Post-processing is issued once the network is done, so the post stream needs no
            # stream dependency; only this thread waits, the model thread keeps the GPU busy.
            batch.done.synchronize()
            ended = time.monotonic()
            for frame in batch.frames:
                frame.times["model_end"] = ended
        with torch.cuda.stream(self.post_stream) if self.cuda else nullcontext():
            decisions = self.adapter.decide(batch.outputs, batch.prepared)
            out = results(self.adapter, batch.outputs, batch.prepared, decisions)
            batch.nonfinite = nonfinite_frames(self.adapter, batch.outputs, batch.prepared)
        finished = time.monotonic()
        for frame, result in zip(batch.frames, out):
            result.source = frame.source
            result.index = frame.index
            result.pts = frame.pts
            result.time_base = frame.time_base
            result.pts_seconds = frame.pts_seconds
            result.capture_ts = frame.capture_wall
            result.epoch = frame.epoch
            result.sender_ts = frame.sender_wall
            result.file = frame.file
            result.times = frame.times
            result.times["post_end"] = finished
        return out

    def network_seconds(self, batch: InFlight) -> float:
        """How long the batch's upload, pre-processing and network took (GPU time on CUDA);
        valid once the batch was collected."""
        if self.cuda:
            return batch.begin.elapsed_time(batch.done) / 1000
        return batch.frames[0].times["model_end"] - batch.started
