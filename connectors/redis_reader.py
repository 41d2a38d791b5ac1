"""Reading segstream streams: the consumer SDK (``segstream.client``) and ``segstream tail``.

    from segstream.client import connect

    client = connect("redis://localhost:6379/0")
    for entry in client.frames("cam0"):                 # every new entry, in order
        print(entry.frame, entry.segments.track_ids, entry.mask(int(entry.segments.ids[0])).sum())

``Client.frames`` / ``Client.events`` subscribe to a source's frames or events stream, plainly
(XREAD) or in a consumer group (XREADGROUP, XACK, and XAUTOCLAIM of entries another consumer left
pending for ``claim_idle_ms``); ``Client.newest`` and ``Client.follow_newest`` read only the
newest entry (XREVRANGE COUNT 1). Given several sources or a glob (``"lobby-*"``), they read
them all in one blocking XREAD (``FanIn``), finding streams that appear later. Entries are typed (``Entry``, ``EventEntry``) and decode their
masks to numpy only when asked. Reads reconnect by themselves with backoff and jitter; blocking
reads never outlast the socket timeout (redis-py 8 defaults to 5 s). Needs redis-py, numpy and
zstandard only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import logging
import math
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TextIO

import numpy as np
import redis

from segstream.connectors.errors import IdleTimeout, ReaderError, SinkError, SourceError, WireFormatError
from segstream.connectors.redis_connection import (
    COMMAND_LINE, Backoff, SentinelAuth, SettingNames, TlsFiles, connect_redis, error_summary, key_refused,
    redis_address,
)
from segstream.connectors.redis_wire import (
    DEFAULT_STATUS_PATTERN,
    DEFAULT_STREAM_PATTERN,
    EncodedMasks,
    SourceStatus,
    acl_key_patterns,
    event_from_wire,
    events_beside,
    from_wire,
    parse_json,
    read_entries,
    read_entry,
    result_record,
    status_beside,
    status_from_wire,
    stream_name,
)
from segstream.connectors.terminal import span, terminal_safe
from segstream.models.results import NO_TRACK, Event, FrameResult, Level, Segments

if TYPE_CHECKING:  # a TypeVar's default is for type checkers only (typing's has none before Python 3.13)
    from typing_extensions import TypeVar

    # What an entry's ack() returns: the count of the sync reader, or an awaitable of it for
    # segstream.client.aio's entries (a bare ``Entry`` is the sync reader's).
    _Acked = TypeVar("_Acked", default=int)
else:
    from typing import TypeVar

    _Acked = TypeVar("_Acked")
_Item = TypeVar("_Item")  # what a reader hands over: Entry or EventEntry
_Frames = TypeVar("_Frames")  # what a client's frames() returns (the sync or the asyncio readers)
_Events = TypeVar("_Events")
_InOrder = TypeVar("_InOrder")  # what a client's frames_and_events() returns

log = logging.getLogger("segstream.client")

_TAIL_BLOCK_MS = 2000
_TAIL_READ = 500  # entries of each stream one XREAD of tail --follow takes at most
_MAX_BLOCK_MS = 5000
_TAIL_DISCOVER_S = 2.0  # how often `segstream tail --follow` looks for new streams matching a glob
_AT_FAR_S = 1.0  # `tail --at`: an entry this far from the time asked is said to be
_NEAREST_CHUNK = 16  # entries read at once where ``at``'s bisection is down to a millisecond (a batch's)
_STATE_LOOKBACK = 100  # `tail --until-ended`: newest events entries read for the source's last state
_FINAL_STATES = ("ended", "failed")  # docs/SCHEMA.md: a source writes nothing after these (but a new start)


class Entry(Generic[_Acked]):
    """One frame's entry: its metadata and segments at once, its masks decoded on first use.

    ``segments`` has numpy columns (``ids``, ``class_ids``, ``labels``, ``isthing``, ``scores``,
    ``areas``, ``boxes``, ``track_ids``, ``track_ages``). ``mask(segment_id)`` decodes one
    segment (with ``rle``, only that one), ``label_map`` the whole frame (once). ``levels`` is
    the segment hierarchy of models that have one (SeNaTra), finest level first, its label maps
    decoded on first use.
    """

    __slots__ = ("id", "stream", "result", "seq", "_masks", "_subscription")
    id: str
    stream: str
    result: FrameResult
    seq: int | None

    def __init__(self, entry_id: str, stream: str, result: FrameResult, masks: EncodedMasks, subscription=None,
                 seq: int | None = None):
        self.id = entry_id
        self.stream = stream
        self.result = result
        self.seq = seq  # the entry's number in its stream (a gap: entries trimmed away), None if unnumbered
        self._masks = masks
        self._subscription = subscription

    @property
    def source(self) -> str:
        return self.result.source

    @property
    def frame(self) -> int:
        """frame index within the source"""
        return self.result.index

    @property
    def run_id(self) -> str:
        return self.result.run_id

    @property
    def file(self) -> str | None:
        """the image file of the frame (image folder sources), else None"""
        return self.result.file

    @property
    def width(self) -> int:
        return self.result.width

    @property
    def height(self) -> int:
        return self.result.height

    @property
    def pts(self) -> int | None:
        return self.result.pts

    @property
    def pts_seconds(self) -> float | None:
        return self.result.pts_seconds

    @property
    def capture_ts(self) -> float:
        return self.result.capture_ts

    @property
    def sender_ts(self) -> float | None:
        """when the camera captured the frame, by its own clock (RTCP), else None: align cameras on it"""
        return self.result.sender_ts

    @property
    def epoch(self) -> int:
        """how often the source's timeline restarted before this frame"""
        return self.result.epoch

    @property
    def publish_ts(self) -> float | None:
        return self.result.publish_ts

    @property
    def model(self) -> str:
        return self.result.model

    @property
    def checkpoint_id(self) -> str:
        """the weights that made the entry: their file's SHA-256, first 12 hex digits ("" unknown)"""
        return self.result.checkpoint_id

    @property
    def latency_s(self) -> float | None:
        return self.result.latency_s

    @property
    def segments(self) -> Segments:
        return self.result.segments

    @property
    def label_map(self) -> np.ndarray:
        """height x width int32: each pixel's segment id, -1 where none is."""
        label_map = self.result.label_map
        if label_map is None:
            with self._naming_entry():
                label_map = self._masks.label_map()
            self.result.label_map = label_map
        return label_map

    @contextlib.contextmanager
    def _naming_entry(self) -> Iterator[None]:
        """Masks are decoded on first use, after the entry was read: a damaged one names its entry."""
        try:
            yield
        except WireFormatError as error:
            raise WireFormatError(f"entry {self.id} of {self.stream}: {error}") from None

    @property
    def levels(self) -> list[Level]:
        """The segment hierarchy, finest level first (columns ``ids``, ``parents``, ``areas`` and a
        ``label_map`` each); [] for entries of models without one."""
        levels = self.result.levels
        if levels and levels[0].label_map is None:
            with self._naming_entry():
                for level, label_map in zip(levels, self._masks.level_maps()):
                    level.label_map = label_map
        return levels

    def mask(self, segment_id: int) -> np.ndarray:
        """height x width bool mask of one segment; a ``WireFormatError`` naming the entry when its
        mask is damaged."""
        with self._naming_entry():
            return self._masks.mask(int(segment_id))

    def track_mask(self, track_id: int) -> np.ndarray:
        """The mask of the segment that carries ``track_id``; KeyError if none does (and for
        ``NO_TRACK``, which no segment carries: it marks segments not tracked yet)."""
        rows = np.flatnonzero(self.segments.track_ids == track_id) if track_id != NO_TRACK else np.empty(0)
        if rows.size == 0:
            raise KeyError(f"no segment with track id {track_id} in {self.source} frame {self.frame}")
        return self.mask(int(self.segments.ids[rows[0]]))

    def masks(self) -> dict[int, np.ndarray]:
        """Segment id -> mask, for every segment."""
        return {int(i): self.label_map == i for i in self.segments.ids}

    def ack(self) -> _Acked:
        """Acknowledge this entry to the consumer group it was read in (by the process that read it)."""
        if self._subscription is None or self._subscription.group is None:
            raise ValueError("only entries read in a consumer group can be acknowledged, by the process that read them")
        return self._subscription.ack(self)

    def __getstate__(self):  # to hand entries to worker processes: all but the subscription (a connection)
        return self.id, self.stream, self.result, self.seq, self._masks

    def __setstate__(self, state) -> None:
        self.id, self.stream, self.result, self.seq, self._masks = state
        self._subscription = None

    def __repr__(self) -> str:
        return f"Entry({self.id}, {self.source} frame {self.frame}, {len(self.segments)} segments)"


class EventEntry(Generic[_Acked]):
    """One entry of a source's events stream: ``kind`` (``track_started``, ``track_ended``,
    ``state``, ...), ``ts`` (Unix seconds), ``data`` (its details), ``run_id``."""

    __slots__ = ("id", "stream", "event", "seq", "_subscription")
    id: str
    stream: str
    event: Event
    seq: int | None

    def __init__(self, entry_id: str, stream: str, event: Event, subscription=None, seq: int | None = None):
        self.id = entry_id
        self.stream = stream
        self.event = event
        self.seq = seq  # the entry's number in its stream, None if unnumbered
        self._subscription = subscription

    @property
    def source(self) -> str:
        return self.event.source

    @property
    def kind(self) -> str:
        return self.event.kind

    @property
    def ts(self) -> float:
        return self.event.ts

    @property
    def data(self) -> dict[str, Any]:
        return self.event.data

    @property
    def run_id(self) -> str:
        return self.event.run_id

    def ack(self) -> _Acked:
        if self._subscription is None or self._subscription.group is None:
            raise ValueError("only entries read in a consumer group can be acknowledged, by the process that read them")
        return self._subscription.ack(self)

    def __getstate__(self):  # to hand events to worker processes: all but the subscription (a connection)
        return self.id, self.stream, self.event, self.seq

    def __setstate__(self, state) -> None:
        self.id, self.stream, self.event, self.seq = state
        self._subscription = None

    def __repr__(self) -> str:
        return f"EventEntry({self.id}, {self.source} {self.kind} {self.data})"


class _Command(NamedTuple):
    """One Redis command a reader's steps ask for (``name`` is the redis-py method): the reading
    logic yields these and gets their replies back, so the same steps run on a ``redis.Redis``
    (``Client``) and on a ``redis.asyncio.Redis`` (``segstream.client.aio``)."""

    name: str
    args: tuple = ()
    kwargs: dict = {}


class _Pause(NamedTuple):
    """A wait of ``seconds`` the steps ask for, ended early by ``stop()``."""

    seconds: float


class _StillDown(Exception):
    """Redis is still away after the patience a caller gave ``call`` (``follow_newest``'s
    ``idle_s``: its watchdog's None is due); the outage goes on, counted once."""


class _Outage:
    """Where an outage stands across ``call``s that hand it on (warned once, recovered once)."""

    since: float | None = None
    last: float | None = None  # its latest failed command


class _Emit(NamedTuple):
    """A value that ``follow_newest``'s steps hand to whoever iterates."""

    value: Any


def _patience(idle_s: float | None, yielded: float) -> float | None:
    """How long an outage may last before ``follow_newest``'s watchdog None is due."""
    return None if idle_s is None else max(0.0, yielded + idle_s - time.monotonic())


# How long past a call's patience (a blocking read's end) a reply may take to arrive
REPLY_GRACE_S = 0.5


def _answered_within(command: Callable, args: tuple, kwargs: dict, seconds: float) -> Any:
    """``command`` on a thread of its own, waited for at most ``seconds``; past that a
    ``redis.TimeoutError``, the thread left to its socket's timeout (it holds a connection of
    the pool until then). Found probing as a robot's integrator: against a Redis stopped (as in a
    network partition), ``status(patience_s=0.5)`` and ``follow_newest``'s watchdog None waited 10 s."""
    outcome: list = []
    done = threading.Event()

    def call() -> None:
        try:
            outcome.append((True, command(*args, **kwargs)))
        except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
            outcome.append((False, error))
        finally:
            done.set()

    threading.Thread(target=call, name="segstream-reader-call", daemon=True).start()
    if not done.wait(seconds):
        raise redis.TimeoutError(f"no answer within {seconds:.1f} s")
    answered, value = outcome[0]
    if answered:
        return value
    raise value


def _wait_within(backoff_s: float, deadline: float | None) -> float:
    """A reconnect's wait, cut short where a deadline comes first."""
    return backoff_s if deadline is None else max(0.0, min(backoff_s, deadline - time.monotonic()))


def _one_stream(pattern: str, source, stream, what: str = "newest") -> str:
    """The one stream ``newest`` (or ``at``) reads; a list or a glob is refused, saying what reads many."""
    given = _stream_names(pattern, source, stream)
    if not isinstance(given, str) or _is_glob(given):
        more = ("for the newest entry of each of several (a list or a glob), iterate follow_newest(...)"
                if what == "newest" else "call it for each")
        raise ValueError(f"{what}() reads one source; {more}")
    return given


def _nearest_steps(name: str, ts: float, within_s: float | None) -> Iterator:
    """The steps of ``at``: the entry of stream ``name`` whose ``capture_ts`` is nearest ``ts``
    (None for an empty stream, or one further than ``within_s`` from it). A stream's entries are
    in the order of their capture times, and of their IDs: a bisection over the IDs' milliseconds
    (XRANGE start + COUNT 1 at each step, about 30 for a day's stream), then the entries of the last
    millisecond or two (a batch's share one) ``_NEAREST_CHUNK`` at a time, finds the two entries
    around ``ts`` whatever the Redis server's clock."""
    if not math.isfinite(ts) or (within_s is not None and not within_s >= 0):
        raise ValueError(f"at() takes a finite time and a within_s of 0 or more, got {ts!r} and {within_s!r}")
    first = yield _command("xrange", name, "-", "+", count=1)
    last = yield _command("xrevrange", name, "+", "-", count=1)
    if not first or not last:
        return None
    before, after = _named_entry(first[0], name), _named_entry(last[0], name)
    if ts <= _when(before) or ts >= _when(after):
        return _within(before if ts <= _when(before) else after, ts, within_s)
    low, high = _id_ms(before.id), _id_ms(after.id)
    while True:  # before is captured before ts, after at or after it
        middle = (low + high) // 2
        if middle <= low:  # within a millisecond or two (a batch's entries): those between, a few at a time
            found = yield _command("xrange", name, f"({before.id}", f"({after.id}", count=_NEAREST_CHUNK)
            between = [_named_entry(item, name) for item in found]
            if not between:
                break
            at = next((k for k, entry in enumerate(between) if _when(entry) >= ts), None)
            if at is not None:
                before, after = between[at - 1] if at else before, between[at]
                break
            before = between[-1]
            continue
        found = yield _command("xrange", name, str(middle), "+", count=1)
        entry = _named_entry(found[0], name) if found else None
        if entry is None or entry.id == after.id:
            high = middle  # nothing from middle on before after
        elif _when(entry) >= ts:
            after, high = entry, _id_ms(entry.id)
        else:
            before, low = entry, _id_ms(entry.id)
    return _within(before if ts - _when(before) <= _when(after) - ts else after, ts, within_s)


_SENDER_SPAN = 32  # entries each side of the guess that ``at(by="sender_ts")`` compares


def _nearest_sender_steps(name: str, ts: float, within_s: float | None) -> Iterator:
    """The steps of ``at(by="sender_ts")``: the entry whose ``sender_ts`` (the camera's clock) is
    nearest ``ts``. The camera's delay (``capture_ts - sender_ts``) read off the entry captured
    nearest ``ts`` says where by capture time to look (twice, the second time with the delay
    there); the entries around that one are compared by ``sender_ts``. None for an empty stream,
    one whose entries there carry no ``sender_ts``, or when the nearest is further than
    ``within_s``."""
    if not math.isfinite(ts) or (within_s is not None and not within_s >= 0):
        raise ValueError(f"at() takes a finite time and a within_s of 0 or more, got {ts!r} and {within_s!r}")
    guess = yield from _nearest_steps(name, ts, None)
    for _ in range(2):
        if guess is None or guess.sender_ts is None:
            break
        found = yield from _nearest_steps(name, ts + guess.capture_ts - guess.sender_ts, None)
        if found is None or found.id == guess.id:
            break
        guess = found
    if guess is None:
        return None
    after = yield _command("xrange", name, guess.id, "+", count=_SENDER_SPAN)
    before = yield _command("xrevrange", name, f"({guess.id}", "-", count=_SENDER_SPAN)
    around = [_named_entry(item, name) for item in [*before, *after]]
    timed = [entry for entry in around if entry.sender_ts is not None]
    if not timed:
        return None
    nearest = min(timed, key=lambda entry: abs(entry.sender_ts - ts))
    return nearest if within_s is None or abs(nearest.sender_ts - ts) <= within_s else None


def _at_steps(name: str, ts: float, within_s: float | None, by: str) -> Iterator:
    """``at``'s steps by ``by``: ``capture_ts`` or ``sender_ts``."""
    if by == "capture_ts":
        return _nearest_steps(name, ts, within_s)
    if by == "sender_ts":
        return _nearest_sender_steps(name, ts, within_s)
    raise ValueError(f"at() finds an entry by capture_ts or sender_ts, not by {by!r}")


def _within(entry: Entry, ts: float, within_s: float | None) -> Entry | None:
    return entry if within_s is None or abs(_when(entry) - ts) <= within_s else None


def _when(entry: Entry) -> float:
    return entry.capture_ts or entry.publish_ts


def _id_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def _named_entry(item, stream: str) -> Entry:
    """An entry read by ``newest``: a malformed one names its id and stream, as a subscription's do."""
    entry_id = _text(item[0])
    try:
        return _frame_entry(entry_id, stream, item[1], None)
    except WireFormatError as error:
        raise WireFormatError(f"entry {entry_id} of {stream}: {error}", entry_id) from None


def _command(name: str, *args, **kwargs) -> _Command:
    return _Command(name, args, kwargs)


def _run(steps: Iterator, redis_client: redis.Redis, pause: Callable[[float], bool] | None = None) -> Any:
    """Run ``steps`` on ``redis_client``: each command's reply is sent back, each error thrown in
    (the steps catch what they expect); ``pause`` waits and says whether ``stop()`` ended the wait
    (the steps then end). Returns what the steps return."""
    reply, error = None, None
    while True:
        try:
            step = steps.send(reply) if error is None else steps.throw(error)
        except StopIteration as done:
            return done.value
        reply, error = None, None
        if isinstance(step, _Pause):
            if pause is not None and pause(step.seconds):
                steps.close()
                raise _Stopped()
            continue
        try:
            reply = getattr(redis_client, step.name)(*step.args, **step.kwargs)
        except Exception as failed:  # noqa: BLE001 - handed to the steps, which raise what they do not expect
            error = failed


class _ClientBase(Generic[_Frames, _Events, _InOrder]):
    """What ``Client`` and ``segstream.client.aio.Client`` share: the streams' names, what a
    subscription's arguments mean, and how an outage is ridden out (when to warn, wait, give up)."""

    def __init__(self, redis_client, *, stream_pattern: str, events_pattern: str | None, reconnect_max_s: float,
                 give_up_after_s: float | None, status_pattern: str | None = None):
        options = redis_client.get_connection_kwargs()
        if options.get("decode_responses"):
            raise SinkError(
                "the Redis client decodes responses to text, but entries carry binary fields — "
                "create it with decode_responses=False"
            )
        self.redis = redis_client
        self.stream_pattern = stream_pattern
        # beside the frames streams, as the run puts them (a tenant's prefix kept)
        self.events_pattern = events_pattern or events_beside(stream_pattern)
        self.status_pattern = status_pattern or status_beside(stream_pattern)
        self.give_up_after_s = give_up_after_s
        self.reconnects = 0
        self._socket_timeout = options.get("socket_timeout")
        self._backoff = Backoff(0.1, reconnect_max_s)
        # the outage calls without one of their own share: a watchdog asking status() twice a second
        # through an outage warned at each call (found probing as a robot's integrator)
        self._outage = _Outage()
        self._clock = _RedisClock()

    _subscription_class: type
    _fan_in_class: type
    _in_order_class: type

    def _subscribe(self, name_pattern: str, parse, source, stream, *, start: str, group: str | None,
                   consumer: str | None, claim_idle_ms: int | None, count: int, block_ms: int,
                   discover_s: float) -> Any:
        """A subscription of one stream, or a fan-in of several or of a glob."""
        given = _stream_names(name_pattern, source, stream)
        if isinstance(given, str) and not _is_glob(given):
            return self._subscription_class(self, given, parse, start=start, group=group, consumer=consumer,
                                            claim_idle_ms=claim_idle_ms, count=count, block_ms=block_ms)
        if group is not None:
            raise ValueError("a consumer group reads one stream — subscribe to each source with group=..., "
                             "or read them all without a group")
        if isinstance(given, str):
            return self._fan_in_class(self, parse, pattern=given, start=start, count=count, block_ms=block_ms,
                                      discover_s=discover_s)
        if not given:
            raise ValueError("name at least one source (or stream)")
        return self._fan_in_class(self, parse, streams=list(dict.fromkeys(given)), start=start, count=count,
                                  block_ms=block_ms, discover_s=discover_s)

    def frames(self, source: str | list[str] | None = None, *, stream: str | list[str] | None = None,
               start: str = "$", group: str | None = None, consumer: str | None = None,
               claim_idle_ms: int | None = 60_000, count: int = 100, block_ms: int = 1000,
               discover_s: float = 2.0) -> _Frames:
        """The frames of ``source`` (or of ``stream``): see ``Subscription``. A list of sources
        (streams), or a glob (``"*"``, ``"lobby-*"``; ``stream="segstream:*:frames"``), reads them
        all in one: see ``FanIn``. With ``segstream.client.aio``, iterate with ``async for``; the
        reader takes its start position ("$": the newest entry) when it first reads."""
        return self._subscribe(self.stream_pattern, _frame_entry, source, stream, start=start, group=group,
                               consumer=consumer, claim_idle_ms=claim_idle_ms, count=count, block_ms=block_ms,
                               discover_s=discover_s)

    def events(self, source: str | list[str] | None = None, *, stream: str | list[str] | None = None,
               start: str = "$", group: str | None = None, consumer: str | None = None,
               claim_idle_ms: int | None = 60_000, count: int = 100, block_ms: int = 1000,
               discover_s: float = 2.0) -> _Events:
        """The events of ``source`` (or of ``stream``): see ``Subscription``; of several sources,
        or of a glob of them, as ``frames`` reads their frames."""
        return self._subscribe(self.events_pattern, _event_entry, source, stream, start=start, group=group,
                               consumer=consumer, claim_idle_ms=claim_idle_ms, count=count, block_ms=block_ms,
                               discover_s=discover_s)

    def frames_and_events(self, source: str, *, start: str | tuple[str, str] | list[str] = "$", count: int = 100,
                          block_ms: int = 1000) -> _InOrder:
        """The frames and events of one ``source`` together, each event after the frame entry it
        was written at: see ``InOrder``. ``start`` as for ``frames`` (an entry id: both streams'
        entries after it), or the pair ``(frame_id, event_id)``: each stream's entries after its
        own, to go on where a reader left off without a duplicate (save the ``id`` of the last
        frame entry and of the last event entry it handed over). ``count`` is per stream: a read
        hands over up to that many frames with the events that go among them."""
        if not isinstance(source, str) or _is_glob(source):
            raise ValueError("frames_and_events reads one source: name it (no list, no glob)")
        return self._in_order_class(self, stream_name(self.stream_pattern, source),
                                    stream_name(self.events_pattern, source), start=start, count=count,
                                    block_ms=block_ms)

    def _newest_targets(self, source, stream, idle_s: float | None) -> tuple[list[str], str | None]:
        """The streams (or the glob) ``follow_newest`` watches."""
        if idle_s is not None and idle_s <= 0:
            raise ValueError(f"idle_s must be above 0 (seconds without a fresh entry), got {idle_s}")
        given = _stream_names(self.stream_pattern, source, stream)
        pattern = given if isinstance(given, str) and _is_glob(given) else None
        names = [] if pattern is not None else [given] if isinstance(given, str) else list(dict.fromkeys(given))
        if pattern is None and not names:
            raise ValueError("name at least one source (or stream)")
        return names, pattern

    def _follow_newest_steps(self, names: list[str], pattern: str | None, block_ms: int,
                             max_age_s: float | None, idle_s: float | None, discover_s: float,
                             begun: float) -> Iterator:
        """``follow_newest`` as steps: commands (each ridden through outages by the driver),
        pauses, and the entries (None when idle, ``idle_s`` after ``begun`` at first) to hand
        over as ``_Emit``."""
        last: dict[str, str | None] = dict.fromkeys(names)  # each stream's last entry seen
        woken = set(last)  # streams to take the newest entry of: at first, all
        next_discovery = time.monotonic()
        since = begun  # the last yield
        while True:
            if pattern is not None and time.monotonic() >= next_discovery:
                found = [n for n in (yield from _matching_steps(pattern)) if n not in last]
                last.update(dict.fromkeys(found))
                woken.update(found)
                next_discovery = time.monotonic() + discover_s
            if idle_s is not None and time.monotonic() - since >= idle_s:
                since = time.monotonic()
                yield _Emit(None)
            wait_ms = block_ms
            if idle_s is not None:  # wake for the next None; block_ms 0 (for ever) waits as long as that
                until_idle_ms = max(1, int(1000 * (since + idle_s - time.monotonic())))
                wait_ms = min(block_ms, until_idle_ms) if block_ms else until_idle_ms
            if pattern is not None:  # and for the next look for new streams
                until_discovery_ms = max(1, int(1000 * (next_discovery - time.monotonic())))
                wait_ms = min(wait_ms, until_discovery_ms) if wait_ms else until_discovery_ms
            if not woken and any(position is not None for position in last.values()):
                # Wake when anything newer than a stream's last entry arrives, then take its newest.
                positions = {name: position or "0-0" for name, position in last.items()}
                reply = yield _command("xread", positions, count=1, block=self._fitted_block(wait_ms))
                woken = {name for name, _ in _batches(reply)}
            elif not woken:  # none has an entry yet: look again in a while
                woken = set(last)
                yield _Pause(min(wait_ms, 1000) / 1000)
            fresh = []
            if max_age_s is not None and self._clock.due():
                sent = _boot_time()
                reply = yield _command("time")  # (a ReaderError: refused, the drivers say)
                self._clock.took(reply, sent, reply if isinstance(reply, ReaderError) else None)
            for name in sorted(woken):
                reply = yield _command("xrevrange", name, "+", "-", count=1)
                if reply and _text(reply[0][0]) != last[name]:
                    last[name] = _text(reply[0][0])
                    entry = _named_entry(reply[0], name)
                    if _fresh(entry, max_age_s, self._clock):
                        fresh.append(entry)
            woken = set()
            for entry in sorted(fresh, key=lambda e: _id_key(e.id)):
                since = time.monotonic()
                yield _Emit(entry)

    def _failed(self, error: BaseException, outage: _Outage) -> None:
        """A command of ``outage`` failed to reach Redis. Failures further apart than the longest
        wait between attempts belong to outages of their own (found reviewing: an outage a
        ``patience_s`` call gave up on, then none for minutes, made the next one give up at once)."""
        now = time.monotonic()
        if outage.last is not None and now - outage.last > 2 * self._backoff.max_s + 1.0:
            outage.since = None
        outage.since, outage.last = self._lost(error, outage.since), now

    def _lost(self, error: BaseException, down_since: float | None) -> float:
        """A command failed to reach Redis: warns at the first failure of an outage, raises a
        ``SinkError`` past ``give_up_after_s``; returns when the outage began."""
        now = time.monotonic()
        if down_since is None:
            down_since = now
            log.warning("lost Redis at %s (%s); reconnecting", redis_address(self.redis), error_summary(error))
        if self.give_up_after_s is not None and now - down_since > self.give_up_after_s:
            raise SinkError(
                f"lost Redis at {redis_address(self.redis)} for {now - down_since:.0f} s: "
                f"{error_summary(error)} — check that it still runs"
            ) from None
        return down_since

    def _recovered(self, down_since: float) -> None:
        self.reconnects += 1
        self._backoff.reset()
        log.warning("reconnected to Redis at %s after %.1f s", redis_address(self.redis), time.monotonic() - down_since)

    def _credentials_refused(self, error: BaseException) -> SinkError:
        return SinkError(f"Redis at {redis_address(self.redis)} refused the credentials: {error_summary(error)} "
                         f"— set them with {SDK_ARGUMENTS.password} and {SDK_ARGUMENTS.username}")

    def _refused(self, error: redis.ResponseError, key: str) -> ReaderError:
        # a status key's refusal names the status keys' pattern (found probing: it named the streams')
        status = key is not None and fnmatch.fnmatchcase(key, stream_name(self.status_pattern, "*"))
        acl_keys = (acl_key_patterns(self.status_pattern) if status else
                    acl_key_patterns(self.stream_pattern, self.events_pattern))
        return _refusal(error, key, redis_address(self.redis), acl_keys)

    def _status_key(self, source: str) -> str:
        """The status key of ``source`` (a name, or a glob of names), its pattern's own text without
        globs: a glob there would be taken for part of the names (found probing: ':cam1')."""
        if glob_outside_source(self.status_pattern):
            raise ValueError(f"the status pattern {self.status_pattern!r} has glob characters outside {{source}} — "
                             "put the glob in the source names instead: status_pattern='{source}:status' and "
                             "statuses('store*:*')")
        return stream_name(self.status_pattern, source)

    def _status_unknown(self, source: str, patience_s: float | None) -> SinkError:
        """What ``status(patience_s=)`` raises once Redis has been away longer than that."""
        return SinkError(f"Redis at {redis_address(self.redis)} did not answer for {patience_s:g} s: the status of "
                         f"{source} is not known — it is reconnecting")

    def _status_read(self, key: str, value: bytes | str) -> SourceStatus:
        try:
            return status_from_wire(value)
        except WireFormatError as error:
            raise WireFormatError(f"{key}: {error}") from None

    def _statuses_steps(self, sources: str | list[str]) -> Iterator:
        """``statuses``' commands, each with the key a refusal names: (command, key); returns the
        sources' names and their keys' values."""
        if isinstance(sources, str) and _is_glob(sources):
            match, cursor, keys = self._status_key(sources), 0, set()
            while True:
                cursor, found = yield _command("scan", cursor, match=match, count=1000), match
                keys.update(_text(key) for key in found)
                if not cursor:
                    break
            names = sorted(source_of(self.status_pattern, key) for key in keys)
        else:
            names = [sources] if isinstance(sources, str) else list(sources)
        if not names:
            return [], []
        values = yield (_command("mget", [stream_name(self.status_pattern, name) for name in names]),
                        stream_name(self.status_pattern, names[0]))
        return names, values

    def _statuses_read(self, names: list[str], values: list,
                       malformed: Callable[[str, WireFormatError], None] | None) -> dict[str, SourceStatus | None]:
        found: dict[str, SourceStatus | None] = {}
        for name, value in zip(names, values):
            try:
                found[name] = None if value is None else self._status_read(self._status_key(name), value)
            except WireFormatError as error:
                if malformed is None:
                    raise
                malformed(name, error)
        return found

    def _fitted_block(self, block_ms: int | None) -> int | None:
        if block_ms is None or self._socket_timeout is None:
            return block_ms
        # Leave a fifth of the socket timeout for the reply to arrive after the server stops waiting.
        longest = max(1, int(self._socket_timeout * 1000 * 0.8))
        return longest if block_ms == 0 else min(block_ms, longest)


# What reaching Redis can fail with (redis.asyncio raises the same classes); the credentials
# errors among them are refusals, not outages.
_REFUSED_LOGIN = (redis.AuthenticationError, redis.exceptions.AuthorizationError)
_UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, OSError)


class Client(_ClientBase["Subscription[Entry] | FanIn[Entry]", "Subscription[EventEntry] | FanIn[EventEntry]",
                         "InOrder"]):
    """A connection to the Redis that segstream publishes to, and the streams of its sources.

    Every read retries through connection losses, waiting with backoff and jitter (up to
    ``reconnect_max_s``), for at most ``give_up_after_s`` in a row (None: forever); ``reconnects``
    counts the recoveries. ``stop()`` (any thread) ends waits and iterations.
    """

    def __init__(
        self,
        redis_client: redis.Redis,
        *,
        stream_pattern: str = DEFAULT_STREAM_PATTERN,
        events_pattern: str | None = None,
        reconnect_max_s: float = 5.0,
        give_up_after_s: float | None = None,
        status_pattern: str | None = None,
    ):
        super().__init__(redis_client, stream_pattern=stream_pattern, events_pattern=events_pattern,
                         reconnect_max_s=reconnect_max_s, give_up_after_s=give_up_after_s,
                         status_pattern=status_pattern)
        self._stop = threading.Event()

    # --- subscriptions ---------------------------------------------------------------------

    def newest(self, source: str | None = None, *, stream: str | None = None,
               max_age_s: float | None = None) -> Entry | None:
        """The newest frame entry (XREVRANGE + - COUNT 1) of one source; None for an empty stream,
        or when the newest entry's scene was captured more than ``max_age_s`` ago (a stopped
        pipeline's last scene, or one a pipeline under overload took long over, is not the present)."""
        name = _one_stream(self.stream_pattern, source, stream)
        if self._stop.is_set():  # stopped: no more reads (nor reconnect attempts)
            return None
        try:
            reply = self.call(self.redis.xrevrange, name, "+", "-", count=1)
            if reply and max_age_s is not None and self._clock.due():
                sent = _boot_time()
                try:
                    self._clock.took(self.call(self.redis.time), sent)
                except ReaderError as error:  # refused (an ACL without +time), or busy
                    self._clock.took(None, sent, error)
        except _Stopped:  # stop() while Redis was away: nothing newer to give
            return None
        entry = _named_entry(reply[0], name) if reply else None
        return entry if entry is not None and _fresh(entry, max_age_s, self._clock) else None

    def status(self, source: str, *, patience_s: float | None = None) -> SourceStatus | None:
        """What the run publishing ``source`` says of it now (its status key, docs/SCHEMA.md): its
        state (``streaming``, ``reconnecting``, ...; ``ended`` or ``failed`` once final) and last
        frame. None when no run publishes it and none ended it: a pipeline killed (or stuck) more
        than ``sinks.redis.status_ttl_s`` ago, one that never ran, or one older than 0.3.8 —
        a silence of its streams with a live status is a quiet camera, without one a dead run.
        Rides out a Redis outage as every read does; with ``patience_s``, one longer than that
        raises ``SinkError`` (a watchdog that must say something meanwhile)."""
        key = self._status_key(source)
        if self._stop.is_set():
            return None
        try:
            value = self.call(self.redis.get, key, key=key, patience_s=patience_s)
        except _Stopped:
            return None
        except _StillDown:
            raise self._status_unknown(source, patience_s) from None
        return None if value is None else self._status_read(key, value)

    def statuses(self, sources: str | list[str] = "*", *,
                 malformed: Callable[[str, WireFormatError], None] | None = None) -> dict[str, SourceStatus | None]:
        """``status`` of many sources by name: of a list (None for one without a key), or of every
        source whose status key a glob of names matches (SCAN; ``"*"``: every source there; a
        source whose run is gone has no key, and only a list names it). A key that cannot be read
        raises ``WireFormatError`` naming it; with ``malformed``, it goes there (source, error) and
        the others come back (a dashboard of many sites, one of them on another schema)."""
        if self._stop.is_set():
            return {}
        try:
            names, values = self._driven(self._statuses_steps(sources))
        except _Stopped:
            return {}
        return self._statuses_read(names, values, malformed)

    def _driven(self, steps: Iterator, key: str | None = None) -> Any:
        """What ``steps`` return, each command they ask for run through ``call`` (a refusal
        naming ``key``, or the key a step gives with its command) and its reply sent back."""
        reply = None
        while True:
            try:
                step = steps.send(reply)
            except StopIteration as done:
                return done.value
            step, named = (step, key) if isinstance(step, _Command) else step
            reply = self.call(getattr(self.redis, step.name), *step.args, key=named, **step.kwargs)

    def at(self, ts: float, source: str | None = None, *, stream: str | None = None,
           within_s: float | None = None, by: str = "capture_ts") -> Entry | None:
        """The frame entry of one source captured nearest the wall-clock time ``ts`` (seconds, as
        ``capture_ts``); None for an empty stream, or when the nearest was captured more than
        ``within_s`` from ``ts`` (the camera was down then, or the entries were trimmed). Found by
        bisection (about 30 reads for a day's stream), by the entries' own capture times: the
        Redis server's clock and write delays do not matter. A stream written by two runs at
        once (SCHEMA) has its capture times out of order: the answer is then one near ``ts``.

        ``by="sender_ts"``: nearest by the camera's own clock instead (cameras whose RTCP sender
        reports give it): to pair another camera's frame, pass that frame's ``sender_ts``; None
        where the entries there carry none."""
        name = _one_stream(self.stream_pattern, source, stream, "at")
        try:
            return self._driven(_at_steps(name, ts, within_s, by), name)
        except _Stopped:
            return None

    def follow_newest(self, source: str | list[str] | None = None, *, stream: str | list[str] | None = None,
                      block_ms: int = 1000, max_age_s: float | None = None, idle_s: float | None = None,
                      discover_s: float = 2.0) -> Iterator[Entry | None]:
        """Newest-only mode, for consumers that act on the present (a robot): yields the newest
        entry each time there is a newer one than the last yielded, skipping what came between;
        waits in a blocking XREAD (no polling). Entries whose scene was captured more than
        ``max_age_s`` ago are skipped (by Redis's clock, whose time the entries' ids are, and the
        pipeline's own capture-to-write time: this machine's clock may be off; by this machine's
        clock where the Redis user may not run TIME: keep it on NTP then; the limit above the
        pipeline's own latency); with ``idle_s``, None is yielded after that long without
        a fresh entry, so a watchdog can tell "no frames" from "waiting". Ends on ``stop()``.

        Of several sources (a list, or a glob as ``frames`` takes): the newest entry of each
        source that has a newer one, in the order they arrived, waiting on all in one XREAD;
        with a glob, sources that appear are looked for every ``discover_s``."""
        names, pattern = self._newest_targets(source, stream, idle_s)
        begun = time.monotonic()
        for name in names:
            if idle_s is None:
                self.warn_if_missing(name)
                continue
            # a check only: with a watchdog, it may take half of idle_s (a Redis that hangs answers nothing)
            if (left := begun + idle_s / 2 - time.monotonic()) <= 0:
                break
            try:
                _answered_within(self.warn_if_missing, (name,), {}, left)
            except redis.TimeoutError:
                log.debug("could not check that %s exists within %g s", name, idle_s / 2)
        steps = self._follow_newest_steps(names, pattern, block_ms, max_age_s, idle_s, discover_s, begun)
        reply, outage, yielded = None, _Outage(), begun
        try:
            while not self._stop.is_set():
                step = steps.send(reply)
                reply = None
                if isinstance(step, _Emit):
                    yielded = time.monotonic()
                    yield step.value
                elif isinstance(step, _Pause):
                    if self._stop.wait(step.seconds):
                        return
                else:
                    while True:  # Redis away: the watchdog's None still comes every idle_s
                        try:
                            reply = self.call(getattr(self.redis, step.name), *step.args, key=step.kwargs.get("match"),
                                              outage=outage, patience_s=_patience(idle_s, yielded), **step.kwargs)
                            break
                        except ReaderError as error:
                            if step.name != "time":
                                raise
                            reply = error  # refused TIME (or busy): this machine's clock judges meanwhile
                            break
                        except _StillDown:
                            yielded = time.monotonic()
                            yield None
        except _Stopped:  # stop() while Redis was away: the iteration ends, as it does otherwise
            return
        finally:
            steps.close()

    def stop(self) -> None:
        self._stop.set()

    def warn_if_missing(self, stream: str) -> None:
        """Say so when ``stream`` is not there (a mistyped source name would wait in silence).
        Only a warning: a user the server does not let look (no EXISTS or SCAN) reads on."""
        _run(_warn_if_missing_steps(stream, redis_address(self.redis)), self.redis)

    def close(self) -> None:
        self.stop()
        self.redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------

    def call(self, command: Callable, *args, on_reconnect: Callable[[], None] | None = None,
             key: str | None = None, outage: _Outage | None = None, patience_s: float | None = None,
             **kwargs) -> Any:
        """Run one Redis command, riding out connection losses (see the class doc); a refusal is
        a ``ReaderError`` naming ``key`` (the stream it is about) and the missing permission. With
        ``patience_s``, an outage longer than that raises ``_StillDown`` (``outage`` carries it on
        to the next call)."""
        outage = outage or self._outage  # one outage, warned once, whichever calls meet it
        deadline = None if patience_s is None else time.monotonic() + patience_s
        while True:
            try:
                if deadline is None:
                    reply = command(*args, **kwargs)
                else:  # a Redis that hangs answers nothing until the socket's timeout (10 s by default)
                    reply = _answered_within(command, args, kwargs, max(0.0, deadline - time.monotonic()) + REPLY_GRACE_S)
            except _REFUSED_LOGIN as error:  # ConnectionErrors too
                raise self._credentials_refused(error) from None
            except _UNREACHABLE as error:
                self._failed(error, outage)
                if self._stop.wait(_wait_within(self._backoff.next(), deadline)):
                    raise _Stopped() from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise _StillDown() from None
                continue
            except redis.ResponseError as error:  # NoPermissionError too: the server refused the command
                raise self._refused(error, key or _key_in(args)) from None
            if outage.since is not None:
                self._recovered(outage.since)
                outage.since = None
                if on_reconnect is not None:
                    on_reconnect()
            return reply


# Where an SDK user sets each connection setting: connect()'s arguments, not the pipeline's YAML.
SDK_ARGUMENTS = SettingNames("connect(url, password=...)", "connect(url, username=...)",
                             "connect(url, tls=TlsFiles(ca_file, cert_file, key_file))",
                             "connect(url, sentinel=SentinelAuth(username, password))", "connect()'s url")


def reader_options(max_block_ms: int) -> dict:
    """What ``connect`` (and the asyncio SDK's) asks of ``connect_redis`` beyond the user's settings:
    a socket timeout longer than reads blocking up to ``max_block_ms``, the reader's name."""
    return dict(socket_timeout=max_block_ms / 1000 + 5.0, client_name="segstream-reader",
                hint="start Redis or fix the URL", names=SDK_ARGUMENTS)


def connect(
    url: str,
    password: str | None = None,
    *,
    username: str | None = None,
    tls: TlsFiles | None = None,
    sentinel: SentinelAuth | None = None,
    protocol: int | None = None,
    max_block_ms: int = _MAX_BLOCK_MS,
    stream_pattern: str = DEFAULT_STREAM_PATTERN,
    events_pattern: str | None = None,
    reconnect_max_s: float = 5.0,
    give_up_after_s: float | None = None,
    status_pattern: str | None = None,
) -> Client:
    """A ``Client`` for ``url`` (redis://, rediss:// with ``tls``, unix://, or
    ``redis+sentinel://host1:26379,host2:26379/<master-name>[/db]`` with the sentinels' own login in
    ``sentinel``: it follows a failover), with a socket timeout longer than reads blocking up to
    ``max_block_ms``. Unreachable or wrong credentials now: one-line ``SinkError``."""
    client = connect_redis(url, password, username=username, tls=tls, sentinel=sentinel, protocol=protocol,
                           **reader_options(max_block_ms))
    return Client(client, stream_pattern=stream_pattern, events_pattern=events_pattern,
                  reconnect_max_s=reconnect_max_s, give_up_after_s=give_up_after_s, status_pattern=status_pattern)


class _FeedSteps(Generic[_Item]):
    """What a one-stream reader and a many-stream one know and do, without I/O: their reads are
    steps (``_command`` ... replies) that ``Client`` runs on redis-py and the asyncio SDK on
    ``redis.asyncio``; read entries are handed over in order, a malformed one costing only itself."""

    group: str | None = None

    def __init__(self, client: _ClientBase[Any, Any], parse: Callable[..., _Item], *, count: int, block_ms: int,
                 about: str):
        self.client = client
        self.count = count
        self.block_ms = block_ms
        self.malformed = 0  # times an entry could not be decoded (each time WireFormatError was raised)
        self._held: deque[tuple[str, str, dict]] = deque()  # (stream, id, fields) read, not yet handed over
        self._parse = parse
        self._about = about  # the stream(s) a refusal names
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def _start_steps(self) -> Iterator:
        """What the reader does before its first read (finds its position, creates its group)."""
        return
        yield

    def _read_steps(self, count: int, block_ms: int | None) -> Iterator:
        raise NotImplementedError

    def _reconnected(self) -> None:
        """What a reconnect changes for this reader (nothing, unless it reads in a group)."""

    def _take_held(self, count: int | None = None) -> list[_Item]:
        """The entries read and not yet handed over, decoded, up to the first one that cannot be:
        that one is raised by the next call (``WireFormatError`` with its ``entry_id``), and the
        ones after it come with the call after that, so a malformed entry costs only itself."""
        decoded: list[_Item] = []
        while self._held and (count is None or len(decoded) < count):
            stream, entry_id, fields = self._held[0]
            try:
                parsed = self._parse(entry_id, stream, fields, self)
            except WireFormatError as error:
                if decoded:
                    return decoded
                self._held.popleft()
                self.malformed += 1
                raise WireFormatError(f"entry {entry_id} of {stream}: {error}", entry_id) from None
            self._held.popleft()
            decoded.append(parsed)
        return decoded


class _Feed(_FeedSteps[_Item]):
    """A reader on redis-py: reads ride out Redis outages through ``Client.call`` and end on
    ``stop()`` (of the reader or its client)."""

    client: Client

    def read(self, count: int | None = None, block_ms: int | None = None) -> list[_Item]:
        """Up to ``count`` entries in stream order; waits up to ``block_ms`` when none are there
        (None: returns at once)."""
        count = count or self.count
        if self._stopped():  # stopped: iteration ends, reads give nothing
            return []
        if self._held:  # what an earlier read got after a malformed entry
            return self._take_held(count)
        try:
            return self.client.call(self._run, self._read_steps, count, block_ms, on_reconnect=self._reconnected,
                                    key=self._about)
        except _Stopped:
            return []

    def __iter__(self) -> Iterator[_Item]:
        while not self._stopped():
            yield from self.read(self.count, self.block_ms)

    follow = __iter__

    def _begin(self) -> None:
        self.client.call(self._run, self._start_steps, key=self._about)

    def _run(self, make_steps: Callable[..., Iterator], *args) -> Any:
        return _run(make_steps(*args), self.client.redis, self._pause)

    def _pause(self, seconds: float) -> bool:
        return self._stop.wait(seconds) or self._stopped()

    def _stopped(self) -> bool:
        return self._stop.is_set() or self.client._stop.is_set()


class _SubscriptionSteps(_FeedSteps[_Item]):
    """A ``Subscription``'s bookkeeping and reads, without I/O (see ``Subscription``)."""

    def __init__(self, client: _ClientBase, stream: str, parse, *, start: str, group: str | None,
                 consumer: str | None, claim_idle_ms: int | None, count: int, block_ms: int):
        super().__init__(client, parse, count=count, block_ms=block_ms, about=stream)
        self.stream = stream
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.claim_idle_ms = claim_idle_ms
        self.claimed = 0  # entries taken over from other consumers
        self.trimmed = 0  # pending entries MAXLEN trimmed away before they were processed
        self.lost = 0  # entries Redis lost (restarted empty, flushed) before this reader got them
        self._group_lost = False  # the group was gone and created again: a gap after it is Redis's loss
        self._start = start
        self._position = start  # where a reader without a group reads on from ("$" resolved at the start)
        self._pending_cursor: str | None = None
        # (seq, (run id, frame)) of the last entry read
        self._last_numbers: tuple[int | None, tuple[bytes | None, int] | None] | None = None
        self._group_last: str | None = None  # id of the last new entry the group gave this consumer
        self._claim_cursor = "0-0"
        self._next_claim = 0.0

    def _start_steps(self) -> Iterator:
        yield from _warn_if_missing_steps(self.stream, redis_address(self.client.redis))
        if self.group is None:
            # Resolve "$" now so that entries added between two reads are not skipped.
            self._position = (yield from _newest_steps(self.stream)) if self._start == "$" else self._start
        else:
            yield from self._create_group_steps()
            self._pending_cursor = "0"

    def _read_steps(self, count: int, block_ms: int | None) -> Iterator:
        if self.group is None:
            reply = yield _command("xread", {self.stream: self._position}, count=count,
                                   block=self.client._fitted_block(block_ms))
            entries = _entries(reply)
            yield from self._advance_steps(entries)
            return (yield from self._decoded_steps(entries))
        try:
            return (yield from self._read_group_steps(count, block_ms))
        except redis.ResponseError as error:
            if "NOGROUP" not in str(error):
                raise
            log.warning("consumer group %s of %s is gone with its stream: the stream expired (a pipeline "
                        "with sinks.redis.max_age_s stopped writing it for that long, or ended), or Redis lost it "
                        "(restarted without its data, or was flushed or replaced) — creating it again; entries it "
                        "lost with it are counted as lost when the next ones come", self.group, self.stream)
            self._group_lost = True
            yield from self._create_group_steps(start="0")
            self._pending_cursor = "0"
            return []

    def _read_group_steps(self, count: int, block_ms: int | None) -> Iterator:
        if self._pending_cursor is not None:
            reply = yield _command("xreadgroup", self.group, self.consumer, {self.stream: self._pending_cursor},
                                   count=count)
            entries = _entries(reply)
            if entries:
                self._pending_cursor = entries[-1][0]
                return (yield from self._decoded_steps(entries))
            self._pending_cursor = None
        now = time.monotonic()
        if self.claim_idle_ms is not None and now >= self._next_claim:
            cursor, claimed, *deleted = yield _command("xautoclaim", self.stream, self.group, self.consumer,
                                                       self.claim_idle_ms, self._claim_cursor, count=count)
            self._claim_cursor = _text(cursor)
            if deleted and deleted[0]:  # Redis 7 takes trimmed entries out of the pending list itself
                self._lost_to_trimming(len(deleted[0]))
            if self._claim_cursor == "0-0":  # scanned the whole pending list: rest a while
                self._next_claim = now + self.claim_idle_ms / 2000
            if any(i is None for i, _ in claimed):  # Redis 6.2: nil for a trimmed entry, its id unsaid
                yield from self._ack_trimmed_steps()
            entries = [(_text(i), fields) for i, fields in claimed if i is not None]
            if entries:
                self.claimed += len(entries)
                return (yield from self._decoded_steps(entries))
        if block_ms is not None and self.claim_idle_ms is not None:
            # Wake in time for the next claim round even when no new entry comes.
            block_ms = max(1, min(block_ms, int(1000 * (self._next_claim - time.monotonic())) + 1))
        reply = yield _command("xreadgroup", self.group, self.consumer, {self.stream: ">"}, count=count,
                               block=self.client._fitted_block(block_ms))
        entries = _entries(reply)
        if entries:
            yield from self._overtaken_steps(entries, self._group_last or "0")
            self._group_last = entries[-1][0]
        return (yield from self._decoded_steps(entries))

    def _advance_steps(self, entries: list[tuple[str, dict]]) -> Iterator:
        """Move this plain reader's position past ``entries`` (read by XREAD), counting what
        trimming took between them and the last entry read."""
        if entries:
            yield from self._overtaken_steps(entries, self._position)
            self._position = entries[-1][0]

    def _decoded_steps(self, entries: list[tuple[str, dict]]) -> Iterator:
        trimmed = [entry_id for entry_id, fields in entries if not fields]  # pending entries MAXLEN trimmed meanwhile
        if trimmed and self.group is not None:
            yield _command("xack", self.stream, self.group, *trimmed)
            self._lost_to_trimming(len(trimmed))
        self._held.extend((self.stream, entry_id, fields) for entry_id, fields in entries if fields)
        return self._take_held()

    def _overtaken_steps(self, entries: list[tuple[str, dict]], position: str) -> Iterator:
        """Count the entries trimmed away between the last entry read (at ``position``) and these,
        when the stream's trimming overtook this reader. The entries' ``seq`` tells how many
        exactly, across a pipeline's restart too; entries of older pipelines without it, their
        frame numbers, within one run (a gap the pipeline's own drops left counts too: "about").
        In a group, only as its one consumer: the others take entries of the gap too. The last
        numbers move on once the gap is told: Redis lost while it is looked into, the call that
        read these entries comes again and looks again (found reviewing: the gap went uncounted)."""
        yield from self._gap_steps(entries, position, self._last_numbers, self._group_lost)
        self._last_numbers = (_seq_of(entries[-1][1]), _frame_of(entries[-1][1]))
        self._group_lost = False  # said of the first entries after it only

    def _gap_steps(self, entries: list[tuple[str, dict]], position: str,
                   previous: tuple[int | None, tuple[bytes | None, int] | None] | None, group_lost: bool) -> Iterator:
        first = (_seq_of(entries[0][1]), _frame_of(entries[0][1]))
        if previous is None:
            return
        if previous[0] is not None and first[0] is not None:
            missed, about = first[0] - previous[0] - 1, ""  # negative: numbered afresh (a stream deleted)
        elif previous[1] is not None and first[1] is not None and previous[1][0] == first[1][0]:
            missed, about = first[1][1] - previous[1][1] - 1, "about "
        else:
            return
        if missed <= 0:
            return
        oldest = yield _command("xrange", self.stream, count=1)
        if not oldest or _id_key(_text(oldest[0][0])) <= _id_key(position):  # where it stood is still there
            return
        if self.group is not None and not (yield from self._only_consumer_steps()):
            return
        evidence = yield from self._not_trimming_steps(group_lost)
        if evidence is not None:
            self.lost += missed
            log.warning("%s: %s%d entries written after the last one this reader got are gone, and not by trimming "
                        "(%s): Redis lost them (%d so far) — it restarted without its data, failed over to a replica "
                        "behind it, or was flushed; check its persistence (appendonly) and failover", self.stream,
                        about, missed, evidence, self.lost)
            return
        self.trimmed += missed
        log.warning("%s: %s%d entries were trimmed away by the stream's MAXLEN or max_age_s before this reader got "
                    "them (%d so far) — read faster, or raise sinks.redis.maxlen (and max_age_s)", self.stream, about,
                    missed, self.trimmed)

    def _not_trimming_steps(self, group_lost: bool) -> Iterator:
        """What shows that a gap is no trimming (None: nothing does): the group was lost with
        Redis's data, or the stream holds every entry ever added to it (Redis 7's entries-added)."""
        if group_lost:
            return "the consumer group was gone and had to be created again"
        try:
            info = yield _command("xinfo_stream", self.stream)
        except redis.ResponseError:  # a user without XINFO: trimming is the likelier story
            return None
        added, length = info.get("entries-added", info.get(b"entries-added")), info.get("length", info.get(b"length"))
        if added is not None and length is not None and int(added) <= int(length):
            return f"the stream holds all {int(added)} entries ever added to it since it was created"
        return None

    def _only_consumer_steps(self) -> Iterator:
        """No other consumer of the group read lately (Redis keeps a dead one's name for ever: a
        restarted consumer has a new one)."""
        lately_ms = self.claim_idle_ms if self.claim_idle_ms is not None else 60_000
        consumers = yield _command("xinfo_consumers", self.stream, self.group)
        others = [c for c in consumers if _text(c.get("name", c.get(b"name", b""))) != self.consumer
                  and int(c.get("idle", c.get(b"idle", 0))) < lately_ms]
        return not others

    def _ack_trimmed_steps(self) -> Iterator:
        """Acknowledge the group's pending entries older than the stream's oldest one (trimmed)."""
        oldest = yield _command("xrange", self.stream, count=1)
        first = _id_key(_text(oldest[0][0])) if oldest else None
        pending = yield _command("xpending_range", self.stream, self.group, min="-", max="+", count=1000)
        gone = [_text(p["message_id"]) for p in pending if first is None or _id_key(_text(p["message_id"])) < first]
        acknowledged = int((yield _command("xack", self.stream, self.group, *gone))) if gone else 0
        if acknowledged:  # another consumer may have acknowledged some of them first
            self._lost_to_trimming(acknowledged)

    def _lost_to_trimming(self, count: int) -> None:
        self.trimmed += count
        log.warning("%d pending entries of %s (group %s) were trimmed away by the stream's MAXLEN or max_age_s "
                    "before they were processed (%d so far) — raise sinks.redis.maxlen (and max_age_s), or add "
                    "consumers", count, self.stream, self.group, self.trimmed)

    def _reconnected(self) -> None:
        if self.group is not None:
            self._pending_cursor = "0"  # what this consumer held may not have been processed

    def _create_group_steps(self, start: str | None = None) -> Iterator:
        try:
            yield _command("xgroup_create", self.stream, self.group, id=start or self._start, mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):  # the group is there already: fine
                raise

    def _ids(self, entries) -> list[str]:
        if self.group is None:
            raise ValueError("ack needs a subscription with a consumer group")
        return [e if isinstance(e, str) else e.id for e in entries]


class Subscription(_Feed[_Item], _SubscriptionSteps[_Item]):
    """Entries of one stream as they come, from ``start`` ("0": the oldest still kept, "$": from
    now on, or an entry id), read ``count`` at a time, blocking up to ``block_ms`` when none wait.

    With ``group``, the entries are shared by the group's consumers (``consumer`` names this one;
    hostname-pid by default): each is delivered to one of them and stays pending until acked
    (``ack(entry)`` or ``entry.ack()``). This consumer first re-reads what it was given but never
    acked (after a crash or a reconnect), and every ``claim_idle_ms / 2`` takes over entries that
    any consumer of the group has left pending for ``claim_idle_ms`` (XAUTOCLAIM; None: never):
    what a crashed consumer held is processed by the others. Delivery is at least once. If the
    server lost the group (restarted empty), it is created again.

    Entries trimmed away (the stream's MAXLEN) while pending for the group, before a consumer
    processed them, are acknowledged (nothing can read them any more), counted in ``trimmed`` and
    logged as a warning: a consumer that falls that far behind loses them, and says so. A reader
    the stream's trimming overtook before it got them (its position is older than the
    stream's oldest entry), without a group or as its only consumer, counts the entries it missed
    (by their ``seq``; entries of older pipelines by frame numbers) in ``trimmed`` too; in ``lost``
    instead, with a warning that says Redis lost them, when trimming cannot explain the gap: the
    group had to be created again, or (Redis 7) the stream holds every entry ever added to it.

    An entry that cannot be decoded (another schema version, a malformed field) raises
    ``WireFormatError`` naming it (``entry_id``) and is counted in ``malformed``; the entries
    read with it come with the next ``read()`` or iteration, so one bad entry costs only itself.
    In a group it stays pending, and is raised again when re-read, until ``ack(error.entry_id)``.

    Iterating follows the stream until ``stop()`` (of the subscription or its client).
    """

    def __init__(self, client: Client, stream: str, parse, *, start: str, group: str | None, consumer: str | None,
                 claim_idle_ms: int | None, count: int, block_ms: int):
        super().__init__(client, stream, parse, start=start, group=group, consumer=consumer,
                         claim_idle_ms=claim_idle_ms, count=count, block_ms=block_ms)
        self._begin()

    def ack(self, *entries) -> int:
        """Acknowledge entries (or entry ids) of this group; returns how many were pending."""
        ids = self._ids(entries)
        if not ids:
            return 0
        return int(self.client.call(self.client.redis.xack, self.stream, self.group, *ids))

    def pending(self) -> int:
        """Entries of the group delivered but not acknowledged, all consumers together."""
        info = self.client.call(self.client.redis.xpending, self.stream, self.group)
        return int(info["pending"])


class _FanInSteps(_FeedSteps[_Item]):
    """A ``FanIn``'s bookkeeping and reads, without I/O (see ``FanIn``)."""

    def __init__(self, client: _ClientBase, parse, *, streams: list[str] | None = None, pattern: str | None = None,
                 start: str | dict[str, str], count: int, block_ms: int, discover_s: float = 2.0):
        if discover_s <= 0:
            raise ValueError(f"discover_s must be above 0 (seconds between looks for new streams), got {discover_s}")
        super().__init__(client, parse, count=count, block_ms=block_ms,
                         about=pattern if pattern is not None else ", ".join(streams or []))
        self.pattern = pattern
        self.discover_s = discover_s
        self.members: dict[str, _SubscriptionSteps[_Item]] = {}
        self._named = list(streams or [])
        self._start = start  # one ID for every stream, or each named stream's own ("$" for others)
        self._next_discovery = time.monotonic() + discover_s
        self._arrived: list[tuple[str, str, dict]] = []  # entries read, their streams' positions moved past them

    streams = property(lambda self: list(self.members), doc="the streams read, in the order they were found")
    trimmed = property(lambda self: sum(m.trimmed for m in self.members.values()))
    lost = property(lambda self: sum(m.lost for m in self.members.values()))

    def _start_steps(self) -> Iterator:
        names = self._named if self.pattern is None else (yield from _matching_steps(self.pattern))
        for name in names:
            yield from self._add_steps(name, self._start.get(name, "$") if isinstance(self._start, dict) else self._start)
        if self.pattern is not None and not self.members:
            message = yield from _missing_message_steps(self.pattern, redis_address(self.client.redis),
                                                        "waiting for a stream that matches")
            log.warning("%s", message)
        self._next_discovery = time.monotonic() + self.discover_s

    def _read_steps(self, count: int, block_ms: int | None) -> Iterator:
        if self.pattern is not None:
            until_discovery_ms = yield from self._discover_steps()
            # Wake for the next look; block_ms 0 (for ever) waits as long as that.
            block_ms = block_ms if block_ms is None else min(block_ms or until_discovery_ms, until_discovery_ms)
        if not self.members:
            if block_ms:
                yield _Pause(block_ms / 1000)
            return []
        positions = {name: member._position for name, member in self.members.items()}
        block = None if self._arrived else self.client._fitted_block(block_ms)  # entries in hand: no waiting
        batches = _batches((yield _command("xread", positions, count=count, block=block)))
        # A stream that filled its count may hold more entries older than another's last: hand over
        # only those up to the earliest such end, the rest come with the next read, in order.
        horizon = min((_id_key(entries[-1][0]) for _, entries in batches if len(entries) >= count), default=None)
        for name, entries in batches:
            kept = [e for e in entries if horizon is None or _id_key(e[0]) <= horizon]
            yield from self.members[name]._advance_steps(kept)
            # kept beyond this call: a command after this one failing (Redis lost) repeats the read from
            # the positions already moved past these entries
            self._arrived += [(name, entry_id, fields) for entry_id, fields in kept]
        arrived, self._arrived = self._arrived, []
        arrived.sort(key=lambda item: _millis(item[1]))  # Redis's clock; one millisecond's entries by stream
        self._held.extend(arrived)
        return self._take_held()

    def _discover_steps(self) -> Iterator:
        """Add the streams that match the pattern since the last look, when one is due; the ms
        until the next."""
        now = time.monotonic()
        if now >= self._next_discovery:
            for name in (yield from _matching_steps(self.pattern)):
                if name not in self.members:
                    log.info("found %s (matches %s): reading it from its first entry", name, self.pattern)
                    yield from self._add_steps(name, "0")
            self._next_discovery = now + self.discover_s
        return max(1, int(1000 * (self._next_discovery - now)))

    def _add_steps(self, name: str, start: str) -> Iterator:
        member = _SubscriptionSteps(self.client, name, self._parse, start=start, group=None, consumer=None,
                                    claim_idle_ms=None, count=self.count, block_ms=self.block_ms)
        yield from member._start_steps()
        self.members[name] = member


class FanIn(_Feed[_Item], _FanInSteps[_Item]):
    """Entries of many streams (the ``streams`` named, or every stream matching the glob
    ``pattern``) in one blocking XREAD over all of them, in the order they arrived (by entry id:
    Redis's clock), each naming its stream and source. Streams there at the start begin at
    ``start`` as a ``Subscription`` does ("$" resolved per stream; a named stream not there yet
    is waited for, from its first entry). With a pattern, the streams are looked for again
    (SCAN) every ``discover_s``: one that appeared meanwhile (a camera added to a running
    pipeline) is read from its first entry, so nothing it published is missed.

    Each stream keeps a ``Subscription``'s bookkeeping (``members``: its position, ``trimmed``
    and ``lost``); outages, a malformed entry and ``stop()`` behave as for one stream. No
    consumer groups: a group reads one stream (``Client.frames(source, group=...)``)."""

    def __init__(self, client: Client, parse, *, streams: list[str] | None = None, pattern: str | None = None,
                 start: str, count: int, block_ms: int, discover_s: float = 2.0):
        super().__init__(client, parse, streams=streams, pattern=pattern, start=start, count=count,
                         block_ms=block_ms, discover_s=discover_s)
        self._begin()


class _Waiting(NamedTuple):
    """An event read and not yet handed over: where it goes among the frames."""

    entry_id: str
    fields: dict
    run: bytes | None  # its run_id
    frame: int | None  # the frame it was written at (data.frame); None for a source's states
    millis: int  # Redis's clock when it was written
    ts: float  # when it happened (Unix seconds)


class _InOrderSteps(_FanInSteps[Any]):
    """An ``InOrder``'s reads and ordering, without I/O (see ``InOrder``)."""

    def __init__(self, client: _ClientBase, frames: str, events: str, *, start: str | tuple[str, str] | list[str],
                 count: int, block_ms: int):
        def parse(entry_id: str, stream: str, fields, subscription) -> Entry | EventEntry:
            return (_event_entry if stream == events else _frame_entry)(entry_id, stream, fields, subscription)

        if isinstance(start, (tuple, list)):  # (frames', events') IDs: where a reader left off (a list from JSON too)
            if len(start) != 2 or not all(isinstance(s, str) for s in start):
                raise ValueError(f"start must be an entry ID or a pair of them (the last frame's and event's "
                                 f"handed over; \"0\" for a stream none was handed over of), got {start!r}")
            start = {frames: start[0], events: start[1]}
        elif not isinstance(start, str):
            raise ValueError(f"start must be an entry ID (\"$\": from now on, \"0\": from the first) or a pair of "
                             f"them, got {start!r}")
        super().__init__(client, parse, streams=[frames, events], start=start, count=count, block_ms=block_ms)
        self.frames_stream, self.events_stream = frames, events
        self._waiting: deque[_Waiting] = deque()  # events read, in their stream's order
        self._runs_passed: set[bytes | None] = set()  # runs whose frames were handed over before another run's
        self._frames_run: bytes | None = None  # the run of the last frame handed over
        self._frames_read: list[tuple[str, dict]] = []  # read and not yet ordered (see _read_steps)

    def _read_steps(self, count: int, block_ms: int | None) -> Iterator:
        frames_member, events_member = self.members[self.frames_stream], self.members[self.events_stream]
        block = None if self._frames_read else self.client._fitted_block(block_ms)  # frames in hand: no waiting
        # Frames read, the frames stream's position moved past them, kept beyond this call: found by a
        # bridge's probe, a Redis shut down between this call's reads lost the first read's frames
        # (the call is repeated after the outage, from the moved position), and nothing counted them.
        frames = self._frames_read
        while True:
            reply = yield _command("xread", {name: member._position for name, member in self.members.items()},
                                   count=count, block=block)
            batches = dict(_batches(reply))
            read, events = batches.get(self.frames_stream, []), batches.get(self.events_stream, [])
            yield from frames_member._advance_steps(read)
            frames += read
            yield from self._wait_steps(events)
            if block is None or not (read or events):
                break
            # A blocked XREAD wakes with the stream written first only: look at both again at once.
            block = None
        # This last read saw both streams at one moment, and every event written before its frames
        # was read (on to the events stream's end, where it filled its count).
        complete = len(events) < count
        while len(events) >= count:
            events = _entries((yield _command("xread", {self.events_stream: events_member._position}, count=count)))
            yield from self._wait_steps(events)
        ordered: list[tuple[str, str, dict]] = []
        for entry_id, fields in frames:
            frame = _frame_of(fields)
            ordered += self._released(lambda e: _before(e, entry_id, fields, frame, self._runs_passed))
            ordered.append((self.frames_stream, entry_id, fields))
            if frame is not None:
                if frame[0] != self._frames_run and self._frames_run is not None:
                    self._runs_passed.add(self._frames_run)
                self._frames_run = frame[0]
                ordered += self._released(lambda e: e.frame is not None and e.run == frame[0] and e.frame <= frame[1])
        if len(read) < count and complete:
            # That read found the frames stream's end, and every event written by then: their frames
            # are all handed over.
            ordered += self._released(lambda e: True)
        self._frames_read = []
        self._held.extend(ordered)
        return self._take_held()

    def _wait_steps(self, events: list[tuple[str, dict]]) -> Iterator:
        yield from self.members[self.events_stream]._advance_steps(events)
        self._waiting.extend(_waiting(entry_id, fields) for entry_id, fields in events if fields)

    def _released(self, goes: Callable[[_Waiting], bool]) -> list[tuple[str, str, dict]]:
        """The waiting events from the oldest on, while ``goes`` says each may go now."""
        out = []
        while self._waiting and goes(self._waiting[0]):
            event = self._waiting.popleft()
            out.append((self.events_stream, event.entry_id, event.fields))
        return out


def _waiting(entry_id: str, fields: dict) -> _Waiting:
    return _Waiting(entry_id, fields, fields.get(b"run_id"), _event_frame(fields), _millis(entry_id),
                    _seconds(fields, b"ts"))


def _seconds(fields: dict, name: bytes) -> float:
    """A time field of an entry; NaN where it has none, or not a number."""
    try:
        return float(fields[name])
    except (KeyError, TypeError, ValueError):
        return math.nan


def _before(event: _Waiting, frame_id: str, fields: dict, frame: tuple[bytes | None, int] | None,
            runs_passed: set[bytes | None]) -> bool:
    """Whether ``event`` goes before the frame entry ``frame_id`` (its ``fields``, run and number,
    if it has them): an event of the frame's run by its frame number; else one of a run whose
    frames are over; else (a state, another run's event) by Redis's clock, and within one
    millisecond (a batch's) by the time it happened against the frame's capture."""
    if frame is not None and event.frame is not None and event.run == frame[0]:
        return event.frame < frame[1]
    if frame is not None and event.run != frame[0] and event.run in runs_passed:
        return True
    millis = _millis(frame_id)
    return event.millis < millis or (event.millis == millis and event.ts < _seconds(fields, b"capture_ts"))


class InOrder(_Feed[Any], _InOrderSteps):
    """A source's frames and events in one order: each event right after the entry of the frame
    it was written at (its ``data.frame``), as the pipeline wrote them. Redis entry ids order
    entries within one stream only (a frame and its events often share a millisecond), so an
    event waits until the frames read have reached its frame; events without a frame (a source's
    ``state``) keep their place behind the events before them and go before the first frame
    written after them (by Redis's clock). An event whose frame never comes (a frame the pipeline
    dropped, the end of a source) goes once the frames stream has been read to its end after it.

    One blocking XREAD reads both streams; iterate, or ``read()``, as a ``Subscription``: items
    are ``Entry`` (a frame) and ``EventEntry`` (an event; ``isinstance`` or ``hasattr(item, "kind")``
    tells them apart). ``members`` keeps each stream's position, ``trimmed`` and ``lost``; no
    consumer groups."""

    def __init__(self, client: Client, frames: str, events: str, *, start: str, count: int, block_ms: int):
        super().__init__(client, frames, events, start=start, count=count, block_ms=block_ms)
        self._begin()


Client._subscription_class = Subscription
Client._fan_in_class = FanIn
Client._in_order_class = InOrder


class StreamReader:
    """Reads ``(entry id, FrameResult)`` pairs from one frames stream, plainly or in a consumer
    group (the reader segstream shipped first; ``Client`` is the consumer SDK). Masks are
    decoded unless ``decode_masks`` is False."""

    def __init__(self, client: redis.Redis, stream: str, group: str | None = None, consumer: str | None = None, *,
                 start: str = "0", decode_masks: bool = True, claim_idle_ms: int | None = None) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.decode_masks = decode_masks
        self._sdk = Client(client, give_up_after_s=0)
        # now, not at the first read: start="$" means from the reader's creation on
        self._subscription = self._sdk.frames(stream=stream, start=start, group=group, consumer=consumer,
                                              claim_idle_ms=claim_idle_ms)

    @classmethod
    def from_url(cls, url: str, stream: str, group: str | None = None, consumer: str | None = None, *,
                 password: str | None = None, max_block_ms: int = _MAX_BLOCK_MS, start: str = "0",
                 decode_masks: bool = True) -> StreamReader:
        """Connect to ``url`` with a socket timeout that outlasts reads blocking up to ``max_block_ms``."""
        client = connect_redis(url, password, socket_timeout=max_block_ms / 1000 + 5.0, client_name="segstream-reader",
                               retries=3, hint="start Redis or fix the URL",
                               names=SDK_ARGUMENTS)
        return cls(client, stream, group, consumer, start=start, decode_masks=decode_masks)

    def read(self, count: int = 100, block_ms: int | None = None) -> list[tuple[str, FrameResult]]:
        return [(e.id, self._result(e)) for e in self._subscription.read(count, block_ms)]

    def ack(self, ids: list[str]) -> int:
        if self.group is None:
            raise ValueError("ack needs a reader created with a consumer group")
        return self._subscription.ack(*ids)

    def latest(self) -> tuple[str, FrameResult] | None:
        entry = self._sdk.newest(stream=self.stream)
        return None if entry is None else (entry.id, self._result(entry))

    def follow(self, block_ms: int = 1000, count: int = 100,
               stop: threading.Event | None = None) -> Iterator[tuple[str, FrameResult]]:
        """Yield entries as they arrive, until ``stop`` is set (checked at least every ``block_ms``)."""
        while stop is None or not stop.is_set():
            yield from self.read(count=count, block_ms=block_ms)

    def _result(self, entry: Entry) -> FrameResult:
        if self.decode_masks:
            _ = entry.label_map, entry.levels
        return entry.result


class _SourcesEnded(Exception):
    """``tail(until_ended=True)``: every source followed has ended; the tail is done."""


class _Stopped(SinkError):
    """A wait for Redis ended by stop(): ``newest``, ``follow_newest`` and reads end quietly;
    another call (``ack``, ``pending``) raises it, a ``SinkError`` saying so."""

    def __init__(self) -> None:
        super().__init__("stopped while waiting for Redis to come back (the client or subscription was stopped)")


def _frame_entry(entry_id: str, stream: str, fields, subscription) -> Entry:
    result, masks = read_entry(fields)
    return Entry(entry_id, stream, result, masks, subscription, _seq_of(fields))


def _event_entry(entry_id: str, stream: str, fields, subscription) -> EventEntry:
    if b"frame" in fields and b"event" not in fields:
        raise SinkError(f"'{stream}' holds frame entries, not events — read it with client.frames(), or name the "
                        "events stream (segstream:<source>:events)")
    return EventEntry(entry_id, stream, event_from_wire(fields), subscription, _seq_of(fields))


def read_file(path: str | Path) -> Iterator[Entry | EventEntry]:
    """The entries of a files sink's (or ``segstream batch``'s) JSONL file as the SDK's: frame
    entries, their masks and levels decoded on first use, and event entries; each one's ``id`` is
    its number in the file, from 1, and its ``stream`` the file's path."""
    name = str(path)
    for number, fields in enumerate(read_entries(path), 1):
        yield _event_entry(str(number), name, fields, None) if "event" in fields else \
            _frame_entry(str(number), name, fields, None)


_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)  # (Linux; elsewhere the monotonic clock, which a suspend stops)


def _boot_time() -> float:
    """Seconds on a clock no step of the wall clock moves and which counts a suspend, as
    ``connectors.pauses`` reads it (that module is not in the client's distribution)."""
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


class _RedisClock:
    """Redis's clock, by which ``max_age_s`` judges an entry's age: an entry's id is Redis's time
    when it was written, so a reader whose own clock is off (a robot without NTP) still tells a
    present scene from a stale one (found probing clock skew: a reader 30 s ahead called every
    entry stale, one 30 s behind a killed pipeline's last scene fresh). TIME is asked at the first
    judgement and again every ``REMEASURE_S``, or at once when an age comes out below zero; the
    reading is kept on the boot-time clock, which no step of this machine's clock moves and which
    counts a suspend (the monotonic one does not: a reader woken from one judged a killed
    pipeline's last scene fresh, found reviewing). A Redis user refused TIME (NOPERM) leaves the
    ages to this machine's clock, said once; another error to TIME is tried again later."""

    REMEASURE_S = 60.0

    def __init__(self) -> None:
        self.base: float | None = None  # Redis's time minus the boot-time clock's
        self.measured: float | None = None
        self.refused = False

    def due(self) -> bool:
        return not self.refused and (self.measured is None or _boot_time() - self.measured > self.REMEASURE_S)

    def took(self, reply, sent: float, error: BaseException | None = None) -> None:
        """TIME's ``reply`` to a call made at boot time ``sent``, or the ``error`` it met."""
        back = _boot_time()
        if error is not None:
            self.measured, self.base = back, None  # this machine's clock until the next try
            if "NOPERM" in str(error) or "no permissions" in str(error):
                self.refused = True
                log.warning("this reader's Redis user may not run TIME: max_age_s judges entries' ages by this "
                            "machine's clock, which must then agree with the pipeline's (NTP) — grant it +time")
            return
        self.base = int(reply[0]) + int(reply[1]) / 1e6 - (sent + back) / 2
        self.measured = back

    def age(self, entry: Entry) -> float:
        """How long ago the entry's scene was captured: by Redis's clock, the time since its write
        plus the pipeline's own capture-to-write time; by this machine's without a reading."""
        if self.base is None:
            return time.time() - (entry.capture_ts or entry.publish_ts)
        written = _id_key(entry.id)[0] / 1000
        held = max(0.0, entry.publish_ts - entry.capture_ts) if entry.capture_ts and entry.publish_ts else 0.0
        age = _boot_time() + self.base - written + held
        if age < -1.0:  # Redis's clock moved back, or the reading is off: asked again before the next judgement
            self.measured = None
        return age


def _fresh(entry: Entry, max_age_s: float | None, clock: _RedisClock) -> bool:
    """A scene no more than ``max_age_s`` old: captured that recently, by ``clock`` (``_RedisClock.age``)."""
    return max_age_s is None or clock.age(entry) <= max_age_s


def _batches(reply) -> list[tuple[str, list[tuple[str, dict]]]]:
    """XREAD's (XREADGROUP's) reply as (stream, [(entry id, fields), ...]) per stream."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3: {stream: [[entries]]}; RESP2: [[stream, entries]]
        pairs = [(name, batch) for name, nested in reply.items() for batch in nested]
    else:
        pairs = list(reply)
    return [(_text(name), [(_text(entry_id), fields) for entry_id, fields in batch]) for name, batch in pairs]


def _entries(reply) -> list[tuple[str, dict]]:
    return [entry for _, batch in _batches(reply) for entry in batch]


def _matching_streams(client: redis.Redis, pattern: str) -> list[str]:
    """The streams whose names match the glob ``pattern`` (SCAN), sorted."""
    return _run(_matching_steps(pattern), client)


def _matching_steps(pattern: str, most: int | None = None) -> Iterator:
    """Steps of a SCAN for the streams whose names match the glob ``pattern``: their names,
    sorted (the first ``most`` found, when given)."""
    found: set[str] = set()
    cursor = 0
    while True:
        cursor, names = yield _command("scan", cursor, match=pattern, count=1000, _type="stream")
        found.update(_text(name) for name in names)
        if int(cursor) == 0 or (most is not None and len(found) >= most):
            return sorted(found)[:most]


def _newest_steps(stream: str) -> Iterator:
    """Steps that find the id of ``stream``'s newest entry ("0-0" when it has none)."""
    newest = yield _command("xrevrange", stream, "+", "-", count=1)
    return _text(newest[0][0]) if newest else "0-0"


def _warn_if_missing_steps(stream: str, where: str) -> Iterator:
    """Steps of ``Client.warn_if_missing``: a warning when ``stream`` is not there, a debug line
    when the server does not let this user look."""
    try:
        if not (yield _command("exists", stream)):
            message = yield from _missing_message_steps(stream, where, "check the source name; waiting for it")
            log.warning("%s", message)
    except redis.RedisError:
        log.debug("could not check that %s exists", stream, exc_info=True)


def _missing_message_steps(stream: str, where: str,
                           advice: str = "check the name, or follow it to wait for entries") -> Iterator:
    found = yield from _matching_steps("*", most=50)
    known = ", ".join(found[:10]) + (" ..." if len(found) > 10 else "") if found else "none"
    return f"no stream {stream!r} at {where} (streams there: {known}) — {advice}"


def _is_glob(name: str) -> bool:
    """A name with glob characters: a pattern of streams (source names have none)."""
    return any(c in name for c in "*?[")


def _stream_names(name_pattern: str, source: str | list[str] | None,
                  stream: str | list[str] | None) -> str | list[str]:
    """The stream (or streams, or glob of them) that ``source`` or ``stream`` names."""
    if stream:
        return stream
    sources = _required(source)
    return stream_name(name_pattern, sources) if isinstance(sources, str) else [
        stream_name(name_pattern, s) for s in sources]


def _required(source: str | list[str] | None) -> str | list[str]:
    if source is None:
        raise ValueError("name a source (or a stream)")
    return source


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def glob_outside_source(pattern: str) -> bool:
    """A key pattern with glob characters outside ``{source}``: a SCAN would take them for part of
    the names it finds (found probing: ``store*:{source}:status`` listed ``:cam1``)."""
    return _is_glob(pattern.replace("{source}", ""))


def source_of(pattern: str, key: str) -> str:
    """The source name in ``key``, a name ``pattern`` (``segstream:{source}:status``) made."""
    prefix, suffix = pattern.split("{source}", 1)
    return key[len(prefix):len(key) - len(suffix)]


# --- segstream status ------------------------------------------------------------------------

NAGIOS_OK, NAGIOS_WARNING, NAGIOS_CRITICAL, NAGIOS_UNKNOWN = 0, 1, 2, 3
_WARNING_STATES = ("connecting", "reconnecting", "stalled")  # down for now, being retried


def status_report(sources: list[str], url: str, out: TextIO | None = None, *, pattern: str = DEFAULT_STATUS_PATTERN,
                  json_lines: bool = False, password: str | None = None, username: str | None = None,
                  tls: TlsFiles | None = None, sentinel: SentinelAuth | None = None, nagios: bool = False) -> int:
    """Print a line per source (``sources``: names or globs of them) saying what its status key
    says now; 0 when every source printed is streaming, 1 otherwise (a source without a key, one
    reconnecting, ended or failed; no key matching a glob). ``nagios``: a monitoring plugin's
    output and exit status instead (``_nagios_report``; ``nagios_unknown`` says what it could not
    tell)."""
    out = sys.stdout if out is None else out
    client = Client(connect_redis(url, password, username=username, tls=tls, sentinel=sentinel, socket_timeout=5.0,
                                  client_name="segstream-status", names=COMMAND_LINE,
                                  hint="start Redis or fix --url"), status_pattern=pattern)
    unreadable: dict[str, WireFormatError] = {}
    try:
        found: dict[str, SourceStatus | None] = {}
        for name in dict.fromkeys(sources):
            some = client.statuses(name, malformed=unreadable.__setitem__)
            if not some and not unreadable:
                raise ReaderError(f"no status key at {redis_address(client.redis)} matches "
                                  f"{stream_name(pattern, name)} — no run publishes such a source now (one killed or "
                                  "stuck leaves none after its status_ttl_s: name the sources to see each), or its "
                                  "keys have another name (--key, as sinks.redis.status_key)")
            found.update(some)
    finally:
        client.close()
    names = [*found, *unreadable]
    if any(_is_glob(name) for name in sources):
        names.sort()
    now = time.time()
    if nagios:
        return _nagios_report(names, found, unreadable, now, out)
    for name in names:
        if name in unreadable:  # the others are said all the same (found probing: one bad key hid them all)
            out.write(json.dumps({"source": name, "state": None, "error": str(unreadable[name])}) + "\n" if json_lines
                      else f"{terminal_safe(name)}  unreadable: {terminal_safe(str(unreadable[name]))}\n")
            continue
        status = found[name]
        if json_lines:
            record = {"source": name, "state": None} if status is None else dataclasses.asdict(status)
            out.write(json.dumps(record) + "\n")
        else:
            out.write(f"{terminal_safe(name)}  {_status_said(status, now)}\n")
    out.flush()
    return 0 if not unreadable and all(status is not None and status.state == "streaming"
                                      for status in found.values()) else 1


def nagios_unknown(problem: str, out: TextIO | None = None) -> int:
    """A monitoring plugin's UNKNOWN: the check could not tell (Redis unreachable, no key, a
    mistake in its arguments)."""
    out = sys.stdout if out is None else out
    out.write(f"SEGSTREAM UNKNOWN - {terminal_safe(problem).replace('|', '/')}\n")
    out.flush()
    return NAGIOS_UNKNOWN


def _nagios_report(names: list[str], found: dict[str, SourceStatus | None], unreadable: dict[str, WireFormatError],
                   now: float, out: TextIO) -> int:
    """A monitoring plugin's output (Nagios, Icinga, Zabbix's and Sensu's checks): a first line
    ``SEGSTREAM <OK|WARNING|CRITICAL> - <summary> | <perfdata>``, a line a source after it, and
    the plugin's exit status: OK when every source streams, WARNING when one is down but retried
    (connecting, reconnecting, stalled), CRITICAL when one failed or ended, has no key (no run
    publishes it) or an unreadable one."""
    def level(name: str) -> int:
        status = found.get(name)
        if name in unreadable or status is None or status.final or status.state not in ("streaming", *_WARNING_STATES):
            return NAGIOS_CRITICAL
        return NAGIOS_OK if status.state == "streaming" else NAGIOS_WARNING

    levels = {name: level(name) for name in names}
    worst = max(levels.values(), default=NAGIOS_OK)
    down = [name for name in names if levels[name] != NAGIOS_OK]
    said = {name: (f"unreadable: {unreadable[name]}" if name in unreadable else _status_said(found[name], now))
            for name in names}
    summary = (f"{len(names)} source{'s' if len(names) != 1 else ''} streaming" if not down else
               f"{len(down)} of {len(names)} sources not streaming: "
               + "; ".join(f"{name} {said[name]}" for name in down[:3]) + (" ..." if len(down) > 3 else ""))
    streaming = len(names) - len(down)
    perf = f"streaming={streaming};;;0;{len(names)} down={len(down)};;;0;{len(names)}"
    word = {NAGIOS_OK: "OK", NAGIOS_WARNING: "WARNING", NAGIOS_CRITICAL: "CRITICAL"}[worst]
    out.write(f"SEGSTREAM {word} - {terminal_safe(summary).replace('|', '/')} | {perf}\n")
    for name in names:
        out.write(f"{terminal_safe(name)}  {terminal_safe(said[name]).replace('|', '/')}\n")
    out.flush()
    return worst


def _status_said(status: SourceStatus | None, now: float) -> str:
    """A line for people. A live key's times are told against its own ``ts`` (the run's clock, a
    third of its time to live old at most: this machine's clock need not agree, found probing);
    a final key's against this machine's clock, as the key may be days old."""
    if status is None:
        return ("no status key: no run publishes it (its pipeline killed, or stuck, longer than its status_ttl_s ago; "
                "never run; or older than 0.3.8)")
    run = f"run {terminal_safe(status.run_id)}"
    at = now if status.final else status.ts
    frame = ("no frame yet" if status.frame is None else
             f"frame {status.frame}" + (f" captured {span(at - status.capture_ts)} ago" if status.capture_ts else ""))
    why = f" ({terminal_safe(status.reason)})" if status.reason and status.state != "streaming" else ""
    frames = status.frames or {}
    dropped = frames.get("dropped") or {}
    if sum(dropped.values()):  # what a reader of the streams cannot tell from max_fps
        read = frames.get("decoded", 0) + frames.get("decode_errors", 0)  # (decode errors are drops too)
        frame += (f", {sum(dropped.values())} of {read} frames dropped ("
                  + ", ".join(f"{terminal_safe(str(k))} {v}" for k, v in sorted(dropped.items())) + ")")
    if status.final:
        return f"{status.state} {span(now - status.since)} ago{why}, {frame}, {run} (final)"
    if status.state == "streaming":
        return f"streaming for {span(at - status.since)}, {frame}, {run}"
    down = status.down_since if status.down_since is not None else status.since
    return f"{status.state}, down for {span(at - down)}{why}, {frame}, {run}"


# --- segstream tail --------------------------------------------------------------------------


def tail(stream: str | list[str], url: str, count: int | None, follow: bool, out: TextIO | None = None, *,
         events: bool = False, password: str | None = None, username: str | None = None,
         tls: TlsFiles | None = None, sentinel: SentinelAuth | None = None, at: float | None = None,
         json_lines: bool = False, idle_timeout_s: float | None = None, until_ended: bool = False) -> int:
    """Print one line per entry of ``stream`` (a frames stream, or with ``events`` the matching
    events stream as well, interleaved in time order): the last ``count`` (all when None), then
    new ones while ``follow``; returns the number of entries printed. With ``at`` (wall-clock
    seconds), the last ``count`` up to each frames stream's entry captured nearest that time
    (``Client.at``), and its events up to that entry. Ctrl-C ends quietly. The
    first entry's line ends with ``run=<run_id>``, and so does each line whose run_id differs from
    the line's before it.

    What it prints comes from whoever can write the stream: control characters (a label's
    terminal escape sequences) are printed escaped (``\x1b``). An entry that is no segstream
    entry is skipped with a warning naming its id, counted, and the count said at the end.

    ``stream`` may be several streams, or globs of them (``segstream:*:frames``): their entries
    interleaved in time order; while following, streams that come to match a glob are looked
    for every few seconds and printed from their first entry.

    ``json_lines``: each entry as one JSON object (``entry_record``) instead of a line for people.
    While following, ``idle_timeout_s`` gives up after that long without an entry printed
    (``IdleTimeout``); ``until_ended`` returns once the source of every stream followed has
    reached its final state (``ended``, or ``failed``: a ``SourceError`` naming it), as its
    events stream says, already when it starts."""
    out = sys.stdout if out is None else out
    client = connect_redis(url, password, username=username, tls=tls, sentinel=sentinel,
                           socket_timeout=_TAIL_BLOCK_MS / 1000 + 5.0,
                           client_name="segstream-tail", names=COMMAND_LINE,
                           hint="start Redis or fix --url")
    named = [stream] if isinstance(stream, str) else list(stream)
    globs = [name for name in named if _is_glob(name)]
    said = " ".join(named)  # what the user asked for, in messages

    watched_events = events or until_ended  # until_ended reads the source's states, printed or not

    def with_events(found: list[str]) -> list[str]:
        return [s for name in found for s in ([name, events_beside(name)] if watched_events else [name])]

    streams = with_events([name for name in named if not _is_glob(name)])
    frames_of: dict[str, str] = {}  # events stream -> its frames stream, for the events streams read
    printed = skipped = 0
    shown_run = None  # the run_id of the last entry printed: said again only when it changes
    final_states: dict[str, Event | None] = {}  # frames stream -> its source's final state event, if it has one

    def shown(name: str) -> bool:
        return events or name not in frames_of

    def show(entry_id: str, name: str, fields) -> None:
        nonlocal printed, skipped, shown_run
        try:
            line = json.dumps(entry_record(entry_id, name, fields)) if json_lines else _entry_line(entry_id, name, fields)
        except WireFormatError as error:
            skipped += 1
            log.warning("entry %s of %s skipped: %s", terminal_safe(entry_id), terminal_safe(name),
                        terminal_safe(str(error)))
            return
        run = _text(fields.get(b"run_id", b""))
        if run and run != shown_run and not json_lines:  # which run wrote it: a restart, or a second publisher
            line += f" run={terminal_safe(run)}"
        shown_run = run or shown_run
        out.write(line + "\n")
        out.flush()  # a follower piped into another program sees each entry as it comes
        printed += 1

    def note_state(name: str, fields) -> None:
        """Keep what a source's entry says of its end: a final state ends it; another state after
        it (a source added again), or a frame of another run (a run started again), begins it
        anew. A frame of the ended run is one written before its end (a burst read in parts)."""
        frames_name = frames_of.get(name, name)
        if name not in frames_of:  # a frame entry
            end = final_states.get(frames_name)
            if end is None or not end.run_id or end.run_id != _text(fields.get(b"run_id", b"")):
                final_states[frames_name] = None
            return
        with contextlib.suppress(WireFormatError):
            event = event_from_wire(fields)
            if event.kind == "state":
                final_states[frames_name] = event if event.data.get("state") in _FINAL_STATES else None

    def check_ended() -> None:
        """With until_ended, return (``_SourcesEnded``) once every frames stream followed has ended."""
        followed = [name for name in positions if name not in frames_of]
        if not followed or any(final_states.get(name) is None for name in followed):
            return
        ends = [final_states[name] for name in followed]
        for event in ends:
            if event.data.get("state") == "ended":
                log.info("source %s ended (%s)", terminal_safe(event.source), terminal_safe(_reason(event)))
        failed = [event for event in ends if event.data.get("state") == "failed"]
        if failed:
            raise SourceError("; ".join(f"source {terminal_safe(e.source)} failed: {terminal_safe(_reason(e))}"
                                        for e in failed) + " — its run's log says more")
        raise _SourcesEnded

    try:
        streams += with_events([n for glob in globs for n in _matching_streams(client, glob) if n not in streams])
        if watched_events:
            frames_of.update({events_beside(name): name for name in streams})
        if not follow and not any(client.exists(s) for s in streams):
            raise SinkError(_missing_stream_message(client, said))
        positions = {}
        backlog = []
        until = {}  # with at: the ID of each frames stream's entry nearest it ("+": the newest)
        for name in streams:
            if at is not None and name not in frames_of:
                nearest = _run(_nearest_steps(name, at, None), client)
                until[name] = nearest.id if nearest is not None else "+"
                if nearest is not None and abs(off := _when(nearest) - at) > _AT_FAR_S:  # down then, or trimmed
                    log.warning("%s: the entry captured nearest the time asked was captured %.1f s %s it",
                                terminal_safe(name), abs(off), "after" if off > 0 else "before")
            last = until.get(frames_of.get(name, name), "+")
            if until_ended and name in frames_of:  # its newest state says whether its source has ended
                for _, fields in reversed(client.xrevrange(name, "+", "-", count=_STATE_LOOKBACK)):
                    note_state(name, fields)
            if not shown(name):  # read for its states only
                found = []
            elif count is None:
                found = client.xrange(name, "-", last)
            else:
                found = list(reversed(client.xrevrange(name, last, "-", count=count))) if count > 0 else []
            backlog += [(_text(i), name, f) for i, f in found]
            positions[name] = _text(found[-1][0]) if found else _newest(client, name)
        backlog.sort(key=_time_order)
        if count is not None and count >= 0:
            backlog = backlog[-count:] if count else []
        for entry_id, name, fields in backlog:
            show(entry_id, name, fields)
        sdk = Client(client)  # following is a long watch: it rides out a Redis restart as the SDK does
        next_discovery = time.monotonic() + _TAIL_DISCOVER_S
        quiet_since = time.monotonic()  # the last entry printed while following
        # the last read filled its count for some stream: entries before an end may wait still (and
        # before the first read: frames written between the backlog's read and the states' are)
        more_waiting = True
        held = []  # entries read, not yet printed: an earlier one of another stream may wait still
        while follow:
            if until_ended and not more_waiting:
                check_ended()
            if globs and time.monotonic() >= next_discovery:  # a camera added meanwhile: from its first entry
                found = [n for glob in globs for n in sdk.call(_matching_streams, client, glob) if n not in positions]
                found = with_events(list(dict.fromkeys(found)))
                if watched_events:
                    frames_of.update({events_beside(name): name for name in found})
                positions.update(dict.fromkeys(found, "0-0"))
                next_discovery = time.monotonic() + _TAIL_DISCOVER_S
            block_ms = _TAIL_BLOCK_MS if not globs else min(_TAIL_BLOCK_MS, _TAIL_DISCOVER_S * 1000)
            if idle_timeout_s is not None:
                left_s = quiet_since + idle_timeout_s - time.monotonic()
                if left_s <= 0:
                    raise IdleTimeout(f"no new entry of {terminal_safe(said)} for {idle_timeout_s:g} s "
                                      "(--idle-timeout) — check that its pipeline runs, or wait longer")
                block_ms = min(block_ms, max(1, left_s * 1000))
            if not positions:
                time.sleep(block_ms / 1000)
                continue
            # entries waiting: taken at once; else a wait for new ones
            waited = not more_waiting
            reply = sdk.call(client.xread, positions, count=_TAIL_READ, block=int(block_ms) if waited else None)
            horizons = []  # the order key of the last entry read of each stream that filled its count
            for name, entries in _batches(reply):
                for entry_id, fields in entries:
                    held.append((entry_id, name, fields))
                    positions[name] = entry_id
                if len(entries) >= _TAIL_READ:
                    horizons.append(_time_order(held[-1]))
            # A read that waited returns the stream woken only: others may hold entries of the same
            # time, so a read that does not wait follows it. That one reads every stream at once:
            # entries up to the last of each stream that filled its count are all in hand (one after
            # them waits still), and all of them when none did.
            if waited:
                more_waiting = bool(reply)
                continue
            more_waiting = bool(horizons)
            held.sort(key=_time_order)
            upto = len(held)
            if horizons:
                horizon = min(horizons)
                upto = next((i for i, item in enumerate(held) if _time_order(item) >= horizon), len(held)) or 1
            before = printed
            for entry_id, name, fields in held[:upto]:
                if until_ended:
                    note_state(name, fields)
                if shown(name):
                    show(entry_id, name, fields)
            del held[:upto]
            if printed > before:
                quiet_since = time.monotonic()
    except (KeyboardInterrupt, _SourcesEnded):
        pass
    except (redis.ConnectionError, redis.TimeoutError) as error:
        raise SinkError(
            f"lost Redis at {redis_address(client)}: {error_summary(error)} — check that it still runs"
        ) from None
    except redis.exceptions.NoPermissionError as error:  # an ACL user without XREAD/EXISTS, or without these keys
        names = streams or named
        acl_keys = " ".join(f"~{name}" for name in names)  # a glob given is a key pattern as it is
        raise _refusal(error, " and ".join(names), redis_address(client), acl_keys) from None
    except redis.ResponseError as error:
        if "WRONGTYPE" not in str(error):  # another refusal: said in one line
            raise SinkError(f"Redis at {redis_address(client)} refused: {error_summary(error)} — check that the URL "
                            "names the Redis that keeps the streams") from None
        kinds = {name: _text(client.type(name)) for name in streams}
        wrong = next((name for name, kind in kinds.items() if kind not in ("stream", "none")), streams[0])
        raise SinkError(
            f"'{wrong}' is not a stream (it holds a {kinds[wrong]}) — name a frames stream, as "
            "segstream:<source>:frames"
        ) from None
    finally:
        client.close()
        if skipped:
            log.warning("%d entr%s could not be read as segstream entries (skipped, each named above)", skipped,
                        "y" if skipped == 1 else "ies")
    return printed


def entry_record(entry_id: str, stream: str, fields) -> dict[str, Any]:
    """What ``segstream tail --json`` prints of an entry: a frame's metadata and segments, their
    keys as the wire names them, without masks (``Client.at`` or ``Entry.mask`` decode those); an
    event's kind, time and data. ``type`` says which; ``id`` and ``stream`` where it was read."""
    if b"event" in fields or "event" in fields:
        event = event_from_wire(fields)
        return {"type": "event", "id": entry_id, "stream": stream, "seq": _seq_of(fields), "run_id": event.run_id,
                "source": event.source, "kind": event.kind, "ts": event.ts, "data": event.data}
    return {"type": "frame", "id": entry_id, "stream": stream, "seq": _seq_of(fields),
            **result_record(from_wire(fields, decode_masks=False))}


def _reason(event: Event) -> str:
    return str(event.data.get("reason") or "no reason given")


def summary_line(entry_id: str, entry: FrameResult) -> str:
    """``<id> <source> frame=<i> pts_s=<s> segs=<n> [label#track, ...] latency=<ms>ms``: each
    segment's label with its track id (``#-`` while untracked), things first; then
    ``levels=<n>/<n>/...`` (segments per hierarchy level, finest first) when the entry has them."""
    pts = "-" if entry.pts_seconds is None else f"{entry.pts_seconds:.3f}"
    latency_ms = (entry.publish_ts - entry.capture_ts) * 1000
    segments = entry.segments
    order = sorted(range(len(segments)), key=lambda i: (not segments.isthing[i], str(segments.labels[i]),
                                                        int(segments.track_ids[i])))
    listed = ", ".join(
        f"{segments.labels[i]}#{segments.track_ids[i] if segments.track_ids[i] >= 0 else '-'}" for i in order
    )
    return (
        f"{entry_id} {entry.source} frame={entry.index} pts_s={pts} "
        f"segs={len(segments)} [{listed}] latency={latency_ms:.1f}ms"
    ) + (f" levels={'/'.join(str(len(level.ids)) for level in entry.levels)}" if entry.levels else "")


def event_line(entry_id: str, event: Event) -> str:
    """``<id> <source> <kind> key=value ...``: a mapping's keys as ``frames.decoded=50``, a list's
    items joined by commas (Python's reprs of them, braces and quotes, read badly aloud, found
    probing with a screen reader)."""
    return f"{entry_id} {event.source} {event.kind} {' '.join(_pairs(event.data))}".rstrip()


def _pairs(data: dict, within: str = "") -> list[str]:
    said = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            said += _pairs(value, f"{within}{key}.")
        elif isinstance(value, (list, tuple)):
            said.append(f"{within}{key}=" + ",".join(str(item) for item in value))
        else:
            said.append(f"{within}{key}={value}")
    return said


def _entry_line(entry_id: str, stream: str, fields) -> str:
    keys = {_text(k) for k in fields}
    if "event" in keys:
        return terminal_safe(event_line(entry_id, event_from_wire(fields)))
    return terminal_safe(summary_line(entry_id, from_wire(fields, decode_masks=False)))


def _newest(client: redis.Redis, stream: str) -> str:
    return _run(_newest_steps(stream), client)


def _millis(entry_id: str) -> int:
    """An entry's time (Redis's clock, in ms): the order across streams. The sequence number after
    it counts within one stream only, so entries of one millisecond keep the order they were read
    in (a stable sort): the frames stream's first, then the events stream's."""
    return int(entry_id.partition("-")[0])


def _time_order(item: tuple[str, str, dict]) -> tuple[int, float, int]:
    """The order of (entry id, stream, fields) of a source's two streams: by Redis's clock (ms);
    within one millisecond, an event after the entry of the frame it was written at (its
    ``data.frame``), events without one after the frames."""
    entry_id, _, fields = item
    frame = _frame_of(fields)
    if frame is not None and b"event" not in fields:
        return _millis(entry_id), frame[1], 0
    written_at = _event_frame(fields)
    return _millis(entry_id), math.inf if written_at is None else float(written_at), 1


def _event_frame(fields: dict) -> int | None:
    """The frame an events entry was written at (its ``data.frame``); None for events without one
    (a source's states) and entries that do not say."""
    try:
        written_at = parse_json(fields[b"data"]).get("frame")
        return None if written_at is None else int(written_at)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _frame_of(fields: dict) -> tuple[bytes | None, int] | None:
    """(run id, frame number) of a frame entry's fields; None for other entries."""
    try:
        return fields.get(b"run_id"), int(fields.get(b"frame"))
    except (TypeError, ValueError):
        return None


def _seq_of(fields: dict) -> int | None:
    """An entry's ``seq`` (its number in the stream); None for entries written without one."""
    try:
        return int(fields[b"seq"])
    except (KeyError, TypeError, ValueError):
        return None


def _id_key(entry_id: str) -> tuple[int, int]:
    """An entry id's order within its stream."""
    millis, _, sequence = entry_id.partition("-")
    return int(millis), int(sequence or 0)


def _key_in(args: tuple) -> str:
    """The first key a command's arguments name (a stream, or the first of XREAD's streams)."""
    keys = [k for arg in args for k in (arg if isinstance(arg, dict) else [arg]) if isinstance(k, (str, bytes))]
    return _text(keys[0]) if keys else "the stream"


_READER_GRANT = "reading takes +@read +@stream; consumer groups also +xgroup +xreadgroup +xack +xautoclaim +xpending"


def _refusal(error: redis.ResponseError, key: str, where: str, acl_keys: str) -> ReaderError:
    """The one-line error for a command Redis refused about ``key``, naming the permission to
    grant; ``acl_keys``: the ACL key patterns of the streams read."""
    text = error_summary(error)
    if key_refused(error):  # (or, another tenant's key: a glob or a key pattern of one's own prefix reads one's own)
        return ReaderError(f"Redis at {where} refused this user the key {key} ({text}): its ACL key patterns exclude "
                           f"it — grant it {acl_keys} (ACL SETUSER <user> {acl_keys}), or, where the key is another "
                           "run's, name your own (your prefix in the glob or the key pattern)", permission=acl_keys)
    if isinstance(error, redis.exceptions.NoPermissionError):
        command = re.search(r"'([\w|]+)' command", text)
        if command is None:
            return ReaderError(f"Redis at {where} refused: {text} — grant the user that command on {key} "
                               f"({_READER_GRANT})")
        name = command.group(1).lower()
        if name == "scan":  # a glob of names; a tenant's user may not look (docs/OPERATIONS.md advises -scan)
            return ReaderError(f"Redis at {where} refused: {text} — name the sources instead of a glob, or grant the "
                               "user SCAN (ACL: +scan)", permission="+scan")
        if not name.startswith("x"):  # not a stream command (a script's EVALSHA, SCRIPT LOAD): no key to name
            return ReaderError(f"Redis at {where} refused: {text} — grant the user {name.upper()} (ACL: +{name})",
                               permission=f"+{name}")
        return ReaderError(f"Redis at {where} refused: {text} — grant the user {name.upper()} on {key} "
                           f"(ACL: +{name}; {_READER_GRANT})", permission=f"+{name}")
    if text.startswith("WRONGTYPE"):
        return ReaderError(f"'{key}' is not a stream — name a segstream stream, as segstream:<source>:frames")
    if "Invalid stream ID" in text:
        return ReaderError(f"Redis at {where} refused a stream position: {text} — start at \"0\", \"$\" or an "
                           "entry id (1700000000000-0)")
    return ReaderError(f"Redis at {where} refused a command on {key}: {text}")


def _missing_stream_message(client: redis.Redis, stream: str,
                            advice: str = "check the name, or follow it to wait for entries") -> str:
    return _run(_missing_message_steps(stream, redis_address(client), advice), client)
