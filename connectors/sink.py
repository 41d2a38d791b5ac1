"""What every sink offers the runtime."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from segstream.models.results import Event, FrameResult

# Called by a sink with the results it has just written, each with ``publish_ts`` set.
WrittenCallback = Callable[[Sequence[FrameResult]], None]

# Called by a sink with results it was given and drops, and why (one of the reasons below).
DroppedCallback = Callable[[Sequence[FrameResult], str], None]

# Why a sink drops a frame it was given (``on_dropped``):
DROPPED_BACKLOG = "sink_backlog"  # its backlog was full while its server was unreachable: oldest first
DROPPED_UNREACHABLE = "sink_unreachable"  # still waiting when the run ended and its server stayed away
DROPPED_WRITE_FAILED = "sink_write_failed"  # its write failed (a file sink's disk full, its folder gone)
DROPPED_REFUSED = "sink_refused"  # its server refused the write (Redis out of memory, a read-only replica, no permission)
SINK_DROPS = (DROPPED_BACKLOG, DROPPED_UNREACHABLE, DROPPED_WRITE_FAILED, DROPPED_REFUSED)  # output lost, not load shed: the run's exit says so


SINK_METHODS = ("publish", "publish_event", "poll", "flush", "close")  # what the runtime calls


class Sink(Protocol):
    """Where results go (Redis, files).

    ``publish`` is called from one thread, in order per source, and may buffer; ``poll`` sends
    what has waited long enough and returns the seconds until it next needs a call (None when
    nothing waits), so an entry leaves within the sink's own delay even when no further frame
    comes. ``flush`` writes everything; ``close`` may be called twice (the second time from
    another thread when a run is aborted, unless the first has not returned). All other calls
    come from one thread, not the one that built the sink.
    ``publish_event`` takes an event of a source (its state, a track's start or end), published
    in order with that source's results.

    A result reaches ``publish`` with ``publish_ts`` (and so ``latency_s``) set when no sink of the
    run has ``on_written``: the runtime stamps it as it hands the result to the sinks. Where one
    has, that sink sets it as it writes, and another sink's ``publish`` may see None.
    ``wants_images = True`` (an attribute) has the runtime attach each decoded frame as
    ``result.image`` (H x W x 3 uint8 RGB); the runtime sets ``result.image`` to None once every
    sink's ``publish`` has returned, so a sink that keeps the frame keeps its own reference.

    Optional: a sink without ``on_written`` has written a result when ``publish`` returns. A sink
    that writes later has the attribute ``on_written`` (set by the runtime before the first
    publish) and calls it with the results it has written, or with stand-ins that carry their
    source, index, capture time and the same ``times`` dict (a sink that buffers keeps no label
    maps), each with ``publish_ts`` set to when it was written. A sink with ``on_dropped`` calls
    it with results it gave up on and why (``DroppedCallback``). A sink with
    ``frame_dropped(source, index, reason)`` hears of each frame dropped after the model, in its
    source's order (``model_nonfinite``: the network's outputs for it were not finite), a sink
    that accounts for every frame of a source among them. A sink with ``source_ended(name)``
    hears that a source's last result and events were published to it; with
    ``source_removed(name)``, just after, that the source was removed from the run (a reload,
    ``Runtime.remove_source``): what the sink wrote of it is no longer the run's to watch. A
    sink that writes on a thread of its own has ``settle()``, which returns once what it was
    handed is written or dropped: the runtime calls it before it counts an ended source's frames.
    """

    @property  # read-only: the runtime only reads it, so a sink's own may be a property or Final
    def name(self) -> str: ...

    def publish(self, result: FrameResult) -> None: ...

    def publish_event(self, event: Event) -> None: ...

    def poll(self) -> float | None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...
