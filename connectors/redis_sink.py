"""Publishes each processed frame as one entry of its source's Redis stream (docs/SCHEMA.md), and
rides out Redis outages without stopping the pipeline."""

from __future__ import annotations

import json
import logging
import shlex
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import redis
from redis.sentinel import SentinelConnectionPool

from segstream.connectors.embedded_redis import EmbeddedRedis
from segstream.connectors.errors import ConfigError, SegstreamError, SinkError, SourceError
from segstream.connectors.redis_connection import (
    Backoff,
    RedisUnreachable,
    SentinelAuth,
    TlsFiles,
    connect_redis,
    credentials_problem,
    error_summary,
    is_credentials_refusal,
    key_refused,
    redis_address,
)
from segstream.connectors.redis_reader import source_of, summary_line
from segstream.connectors.redis_wire import (
    DEFAULT_STREAM_PATTERN,
    FINAL_STATES,
    MASK_ENCODINGS,
    SourceStatus,
    acl_key_patterns,
    event_to_wire,
    events_beside,
    from_wire,
    parse_json,
    status_beside,
    status_to_wire,
    stream_name,
    to_wire,
)
from segstream.connectors.sink import (
    DROPPED_BACKLOG,
    DROPPED_REFUSED,
    DROPPED_UNREACHABLE,
    DroppedCallback,
    WrittenCallback,
)
from segstream.connectors.threads import NamedThread
from segstream.models.results import Event, FrameResult

log = logging.getLogger(__name__)

REPORTED_STREAMS = 12  # past that many streams, the end of a run says them in one line

# Why a frame the publisher was handed never reached Redis (RunMetrics' dropped reasons).
_RECHECK_S = 0.25  # while disconnected, how often poll() wants to be called
_STATUS_RETRY_S = 60.0  # how often status keys a user may not SET are tried again (a grant takes effect)
# Refusals that a failover, a consumer's trimming or disk space freed can end: ridden out like an outage.
_PASSING_REFUSALS = (redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)
# MISCONF (its snapshots fail) and NOREPLICAS (min-replicas-to-write unmet) have no class of their own in redis-py
_PASSING_PREFIXES = ("OOM", "READONLY", "MISCONF", "NOREPLICAS")
# How often a stream this run writes is checked for entries of another run (one XREVRANGE COUNT 1).
_WRITER_CHECK_S = 2.0
# A Redis that answers is given at least this long at the end to take what waits, whatever
# drain_timeout_s says (0: do not wait for an unreachable one; a healthy one takes thousands a second)
_DRAIN_SENDING_MIN_S = 1.0
# how soon poll() asks again while a batch is on its way (``background``): soon, then less often
# for a batch out long (a far Redis: a poll every 5 ms was 190 a second, found reviewing)
_FLIGHT_POLL_S = 0.005
_FLIGHT_POLL_MAX_S = 0.05
_WRITER_WINDOW = 10  # entries read after this run's last at the previous check
# another run whose entries have not been seen to grow for this long no longer counts
# (segstream_redis_other_writers; the alert waits 3 min): checked every _WRITER_CHECK_S, a copy of
# the run writing as often is seen again within a check or two; a much slower one, whose entries the
# checks' window of _WRITER_WINDOW may miss, still within this most of the time
_WRITER_FORGET_S = 120.0
# At start, another run's last entry counts as "still writing" when this recent (Redis's clock), or
# more recent than three of its gaps between entries.
_RECENT_MAX_S = 5.0
_RECENT_MIN_S = 0.5
_CLOCK_SKEW_S = 2.0  # this machine's clock this far from Redis's is warned (segstream_redis_clock_offset_seconds)
_CLOCK_READINGS = 20  # the batches whose least reading of Redis's clock is taken
# The fields that tell an entry of this run from any other: what an unanswered batch is looked for by.
_TELLING = ("run_id", "seq", "publish_ts")
# With max_age_s: how often the streams this run wrote and no batch wrote meanwhile (a camera down
# or removed) are trimmed by age; what the age limit may be exceeded by, with Redis's clock as
# estimated from the replies (one round trip behind).
_SWEEP_S = 1.0
# The newest entries of a source's events stream looked through for the end of the run that wrote
# its frames stream last (this run's own first events may have come after it).
_ENDED_LOOKBACK = 8
# After a loss, the entries before the last one this run wrote looked through for its newest that
# Redis still holds (another run's may lie between); none of them this run's: the loss is bounded.
_SURVIVOR_LOOKBACK = 32
# With max_age_s, per stream, where this run's entries stood in time (an ID's milliseconds and its
# seq), one mark per 1/_MARKS_PER_AGE of max_age_s: what a loss took of what the age limit keeps.
_MARKS_PER_AGE = 32


@dataclass(slots=True)
class _Outgoing:
    stream: str
    fields: dict[str, bytes | str]
    nbytes: int
    result: FrameResult | None  # None for an event
    queued: float  # monotonic time it was queued


@dataclass(eq=False)
class _Flight:
    """A batch on its way: the other-writer check's reads (``reads``: a pipeline, or None) and the
    batch's MULTI/EXEC (``pipe``), sent by ``fly`` (on the publishing thread, or on the sink's own
    with ``background``), their answers taken in by ``RedisPublisher._land`` on the publishing
    thread. ``wrote``: the MULTI/EXEC went out (an error after it may still have been applied)."""

    batch: list[_Outgoing]
    attempt: float  # monotonic time it was sent: a hung write fails only at its timeout
    now: float  # Unix time stamped on its entries (publish_ts)
    pipe: Any
    checked: list[str]  # the streams whose XLEN lead the MULTI/EXEC
    aged: list[str]  # the streams it trims by age
    gone: list  # what a refusal that ended took (asked before it went)
    reads: Any = None
    due: list = field(default_factory=list)  # the reads' streams: (stream, since, written)
    replies: list | None = None
    results: list | None = None
    error: BaseException | None = None
    wrote: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    def fly(self) -> None:
        try:
            if self.reads is not None:
                self.replies = self.reads.execute(raise_on_error=False)
            self.wrote = True
            self.results = self.pipe.execute(raise_on_error=False)
        except BaseException as error:  # (taken in, and raised where it belongs, by _land)
            self.error = error
        finally:
            self.done.set()


@dataclass
class _StatusFlight:
    """Status keys' writes on their way (``background``): sent by ``fly`` on the sink's own thread,
    after any batch before them, their answers taken in by ``RedisPublisher._write_status``."""

    writes: list
    pipe: Any
    attempt: float
    replies: list | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def fly(self) -> None:
        try:
            self.replies = self.pipe.execute(raise_on_error=False)
        except BaseException as error:  # (taken in by _write_status)
            self.error = error
        finally:
            self.pipe.reset()
            self.done.set()


def _flight_wait(attempt: float) -> float:
    """How soon to ask again for the answers of what was sent at ``attempt`` (monotonic): soon, then
    less often for one out long."""
    return min(_FLIGHT_POLL_MAX_S, max(_FLIGHT_POLL_S, (time.monotonic() - attempt) / 4))


def _flying(flights: SimpleQueue) -> None:
    """A publisher's sending thread: its batches, one after another, until None (no reference to
    the publisher, which a program may drop without closing)."""
    while (flight := flights.get()) is not None:
        flight.fly()


def _is_settings(item: _Outgoing) -> bool:
    return item.result is None and _text(item.fields.get("event", "")) == "settings"


class _StatusKeys:
    """The sources' status keys (docs/SCHEMA.md, Status keys): a source's is written once the events
    stream has its state, again at each state change and every third of ``ttl_s``, and expires
    ``ttl_s`` after its last write, so that a run killed (or stuck: ``healthy``) leaves none behind
    for long; a final state's stays (with ``keep_s``, the streams' ``max_age_s``, that long)."""

    def __init__(self, pattern: str, ttl_s: float, keep_s: float | None):
        self.pattern = pattern
        self.ttl_s = ttl_s
        self.keep_s = keep_s
        self.refused = False  # SET refused (an ACL without +set or the keys): said once, tried again each minute
        self._sources: dict[str, dict] = {}  # per source: what its value says (state, since, frame, seq, capture_ts)
        self._changed: set[str] = set()  # sources whose state changed since their key was last written
        # per source, its changes so far: a write sent in the background before a change does not unmark it
        self._changes: Counter[str] = Counter()
        self._forgotten: set[str] = set()  # sources removed from the run, forgotten once their last state is written
        self._refreshed = 0.0  # monotonic time of the last refresh
        self._retry_at = 0.0  # after Redis refused a write for now (full, read-only): not before this

    def written(self, item: _Outgoing, seq: int) -> None:
        """An entry Redis took: a frame's numbers, or a state event's state, go into its source's value."""
        if item.result is not None:
            known = self._sources.get(item.result.source)
            if known is not None:  # (frames come after their source's first state)
                known.update(frame=item.result.index, seq=seq, capture_ts=item.result.capture_ts)
            return
        if _text(item.fields.get("event", "")) != "state":
            return
        source = _text(item.fields["source"])
        data = json.loads(_text(item.fields["data"]))
        state, at = data.get("state", ""), float(_text(item.fields["ts"]))
        if state not in FINAL_STATES:  # removed, then added again (a reload) before its final key was written
            self._forgotten.discard(source)
        known = self._sources.setdefault(source, {"frame": None, "seq": None, "capture_ts": None, "state": None,
                                                  "down_since": None})
        if state != known["state"]:  # a reconnect's attempts, each an event, keep the state's first time
            known["since"] = at
        # not streaming since: the spell's first state's time (found probing: "reconnecting for" began
        # again at each attempt, and a camera down for hours read as down for seconds)
        known["down_since"] = None if state == "streaming" else known["down_since"] or at
        known.update(state=state, reason=str(data.get("reason", "")), run_id=_text(item.fields.get("run_id", "")))
        self._changed.add(source)
        self._changes[source] += 1

    def due(self, now: float) -> float | None:
        """Seconds until a refresh is due (0: now); None with nothing to write."""
        if not self._sources:
            return None
        if self._changed:
            return max(0.0, self._retry_at - now)
        if all(value["state"] in FINAL_STATES for value in self._sources.values()):
            return None
        return max(0.0, self._refreshed + self.ttl_s / 3 - now, self._retry_at - now)

    def writes(self, now: float, final_only: bool = False,
               frames_of: Callable[[str], dict | None] | None = None) -> list[tuple[str, str, str, float | None, int]]:
        """(source, key, value, seconds to live or None, the source's changes so far) of each source
        whose key is due: changed, or (at a refresh) not final; ``final_only``: of those, the final
        states. ``frames_of``: what became of a source's frames so far (the run's counts)."""
        refresh = now >= self._refreshed + self.ttl_s / 3
        due = [source for source, value in self._sources.items()
               if source in self._changed or (refresh and value["state"] not in FINAL_STATES)]
        if final_only:
            due = [source for source in due if self._sources[source]["state"] in FINAL_STATES]
        if refresh:
            self._refreshed = now
        stamp = time.time()
        writes = []
        for source in due:
            value = self._sources[source]
            final = value["state"] in FINAL_STATES
            status = SourceStatus(source=source, run_id=value["run_id"], state=value["state"], since=value["since"],
                                  ts=stamp, ttl_s=self.keep_s if final else self.ttl_s, frame=value["frame"],
                                  seq=value["seq"], capture_ts=value["capture_ts"], down_since=value["down_since"],
                                  reason=value["reason"], frames=frames_of(source) if frames_of is not None else None)
            writes.append((source, stream_name(self.pattern, source), status_to_wire(status),
                           self.keep_s if final else self.ttl_s, self._changes[source]))
        return writes

    def sent(self, writes: Sequence[tuple]) -> None:
        """Redis took ``writes`` (as ``writes`` gave them): their sources' keys are as they are now,
        unless a state changed after (while they were on their way)."""
        sources = {write[0] for write in writes if write[4] == self._changes[write[0]]}
        self._changed -= sources
        for source in self._forgotten & sources:  # a removed source's last word is written: not again
            del self._sources[source]
            self._forgotten.discard(source)

    def lost(self, sources: set[str]) -> None:
        """Redis lost entries of these sources' streams (restarted without its data, flushed): their
        keys went too, final ones as well, which no refresh would write again."""
        self._changed |= sources & self._sources.keys()
        self._changes.update(sources & self._sources.keys())

    def refused_for_now(self, now: float) -> float:
        """Redis refused a write for now (full, read-only): the keys wait a refresh, not a moment
        (the batches' own refusal is said by them). The seconds to wait."""
        self._retry_at = now + self.ttl_s / 3
        return self.ttl_s / 3

    def refused_for_good(self, now: float) -> bool:
        """This user may not SET the keys (its ACL): tried again each minute, so that a grant takes
        effect. True the first time, to be said."""
        self._retry_at, first = now + _STATUS_RETRY_S, not self.refused
        self.refused = True
        return first

    def taken(self, writes: Sequence[tuple]) -> bool:
        """Redis took ``writes``; True when it had refused the keys before (to be said)."""
        again, self.refused = self.refused, False
        self.sent(writes)
        return again

    def removed(self, source: str) -> None:
        """The source left the run: once its final state is written, its key is the operator's (an
        erasure deletes it), never written again by a loss of other streams."""
        self._forgotten.add(source)


@dataclass(slots=True)
class _Unanswered:
    """A batch whose MULTI/EXEC got no reply (the write timed out, the connection broke): Redis may
    have run it all the same (a stopped server runs what waits in its socket once resumed)."""

    items: list[_Outgoing]
    sent: list[dict[str, str]]  # per item, the fields that tell its entry: run_id, seq (publish_ts)
    stamp: float  # its publish_ts


class Beside(Enum):
    """The default of ``RedisPublisher``'s ``status_pattern`` (``None`` there is no status keys):
    the pattern named after ``stream_pattern``'s, as the events stream's is (``status_beside``)."""

    FRAMES = "beside the frames stream"


def _beside(stream_pattern: str, events_pattern: str | None,
            status_pattern: str | None | Beside) -> tuple[str, str | None]:
    """The events and status patterns a publisher uses: those not given are named after the frames
    stream's, a tenant's prefix kept (``tenant:{source}:frames`` gives ``tenant:{source}:events``
    and ``tenant:{source}:status``), as a config's are and as the readers' defaults expect."""
    return (events_beside(stream_pattern) if events_pattern is None else events_pattern,
            status_beside(stream_pattern) if status_pattern is Beside.FRAMES else status_pattern)


class RedisPublisher:
    """The Redis sink: ``XADD <stream> MAXLEN ~ maxlen * <fields>`` per frame, pipelined.

    With ``max_age_s`` no stream this run writes keeps an entry older than that, by Redis's clock
    (docs/OPERATIONS.md, Retention): each batch trims the streams it writes exactly (``XTRIM
    <stream> MINID <id>``; Redis 6.2 or newer, checked at start) and sets each one's time to live to
    ``max_age_s`` (``PEXPIRE``), in the same MULTI/EXEC; every ``_SWEEP_S`` the streams no batch
    wrote meanwhile (a camera down, a source ended or removed) are trimmed the same way, and those
    of sources still in the run get their time to live again (a camera down keeps its consumer
    groups); once no run writes a stream, it goes whole ``max_age_s`` after its last write (or the
    last sweep), holding entries up to twice ``max_age_s`` old until then. A user without
    +pexpire is warned once and counted (``expiry_refused``): trimming still holds while the run lives.

    Entries wait in an outgoing queue until ``pipeline_size`` of them are there, the oldest has
    waited ``max_batch_delay_s`` (checked by ``publish`` and ``poll``, which the runtime calls
    when that delay runs out even if no frame follows), or ``flush()`` is called; a batch goes out
    as one MULTI/EXEC round trip. ``publish_ts`` is stamped when the batch is sent, and the
    written results go to ``on_written``. With ``background`` (a run's: ``pipeline.builders``) a
    batch goes out on a thread of the sink's own, one at a time, and ``publish`` and ``poll``
    return at once, taking its answers in (``on_written`` and the rest, on the caller's thread)
    once they have come: a far Redis's round trips do not hold the caller up, and what comes
    meanwhile waits in the queue for the next batch. ``flush``, ``close`` and ``source_removed``
    wait for it. The status keys' writes go on that thread too (``_StatusFlight``).

    When Redis cannot be reached, nothing blocks and nothing stops: the batch goes back to the
    queue, which becomes a backlog of at most ``max_backlog`` entries and ``max_backlog_bytes``
    bytes (beyond that the oldest frames are dropped, events only when no frame is left; frames
    are reported to ``on_dropped`` with the reason ``sink_backlog``); a background thread tries to reconnect, backing off with jitter up to
    ``reconnect_max_s``; a write Redis does not answer within the client's socket timeout (``timeout_s``
    in ``from_config``: a stopped or partitioned Redis, writes paused) fails the same way; once Redis
    answers a write, the backlog goes out in order, oldest first, and publishing goes on by itself. ``flush()`` gives Redis up to ``drain_timeout_s``
    (at least a second to one that answers) to take what waits, reachable or not, then drops what is
    left (``sink_unreachable``). A Redis that refuses writes for now (out
    of memory, a read-only replica), from the start or later, is ridden out the same way, with one warning; what it still
    refuses at the end is dropped as ``sink_refused``. Entries Redis refuses for good (a key that is
    not a stream, no permission) are dropped as ``sink_refused`` and raise ``SinkError``. After an
    outage, each stream whose last written entry is gone (Redis restarted without its data, or was
    flushed) gets a warning, at each such loss; so does a stream found empty before a write to it
    (Redis evicted it: a maxmemory with an ``allkeys-*`` policy, warned at start; or it was
    deleted); ``data_losses`` counts each such loss, ``entries_lost`` the entries it took, frames
    and events apart (reported to ``on_data_lost``): those of this run's entries that its own
    retention (``maxlen``, ``max_age_s``) still kept, found by their ``seq`` before the newest of
    them Redis still holds; where that cannot be told exactly (more than ``maxlen`` written since,
    an age limit, another run writing the stream, entries this user may not read) the count is a
    lower bound, and said "at least" (``entries_lost_at_least``). One thread publishes;
    ``status()`` may be read from any thread.
    """

    name = "redis"

    def __init__(
        self,
        client: redis.Redis,
        stream_pattern: str = DEFAULT_STREAM_PATTERN,
        maxlen: int = 10000,
        mask_encoding: str = "rle",
        pipeline_size: int = 32,
        *,
        max_batch_delay_s: float = 0.02,
        events_pattern: str | None = None,
        max_backlog: int = 1000,
        max_backlog_bytes: int = 256 * 2**20,
        reconnect_max_s: float = 5.0,
        drain_timeout_s: float = 10.0,
        run_id: str = "",
        max_age_s: float | None = None,
        levels: bool = True,
        status_pattern: str | None | Beside = Beside.FRAMES,
        status_ttl_s: float = 5.0,
        background: bool = False,
    ) -> None:
        if mask_encoding not in MASK_ENCODINGS:
            raise ConfigError(
                f"sinks.redis.mask_encoding is {mask_encoding!r} — use one of {', '.join(MASK_ENCODINGS)}"
            )
        events_pattern, status_pattern = _beside(stream_pattern, events_pattern, status_pattern)
        patterns = [("stream", stream_pattern), ("events_stream", events_pattern)]
        for key, pattern in patterns + ([("status_key", status_pattern)] if status_pattern is not None else []):
            if "{source}" not in pattern:
                raise ConfigError(
                    f"sinks.redis.{key} is {pattern!r} — it must contain {{source}} "
                    "(one stream per source), e.g. segstream:{source}:frames"
                )
            try:
                stream_name(pattern, "source")
            except (KeyError, IndexError, ValueError):
                raise ConfigError(f"sinks.redis.{key} {pattern!r} may use only the {{source}} placeholder") from None
        if maxlen < 1 or pipeline_size < 1 or max_backlog < 1 or max_backlog_bytes < 1:
            raise ConfigError("sinks.redis.maxlen, pipeline_size and max_backlog must be at least 1")
        if not status_ttl_s > 0:
            raise ConfigError(f"sinks.redis.status_ttl_s is {status_ttl_s} — give a number of seconds above 0")
        if max_age_s is not None and not max_age_s > 0:
            raise ConfigError(f"sinks.redis.max_age_s is {max_age_s} — give a number of seconds above 0, or null "
                              "to keep entries by sinks.redis.maxlen alone")
        self.client = client
        self.stream_pattern = stream_pattern
        self.events_pattern = events_pattern
        self._acl_keys = publisher_key_patterns(stream_pattern, events_pattern, status_pattern)  # what to grant, in advice
        self._status = None if status_pattern is None else _StatusKeys(status_pattern, status_ttl_s, max_age_s)
        # whether the run makes progress (the runtime's /healthz verdict): while not, the status keys are
        # left to expire, as a killed run's are
        self.healthy: Callable[[], bool] | None = None
        # what became of a source's frames so far (the runtime's counts), in its status key: a reader of
        # Redis alone saw drops only in the final state event (found probing an overloaded edge box)
        self.frames_of: Callable[[str], dict | None] | None = None
        self.maxlen = maxlen
        self.max_age_s = max_age_s
        self._trim_refused = False  # an XTRIM MINID refused (an ACL without +xtrim): said once
        self._may_expire: bool | None = None  # whether this user may PEXPIRE (ACL), once asked
        self._unexpired: set[str] = set()
        self._written_at: dict[str, float] = {}  # per stream, when (monotonic) a batch last wrote it
        # an entry ID's milliseconds (Redis's clock), and when (monotonic) its reply came back
        self._redis_clock: tuple[int, float] | None = None
        self._swept = time.monotonic()
        self.mask_encoding = mask_encoding
        self.levels = levels  # a model's segment hierarchy published (SeNaTra's levels)
        self.pipeline_size = pipeline_size
        self.max_batch_delay_s = max_batch_delay_s
        self.max_backlog = max_backlog
        self.max_backlog_bytes = max_backlog_bytes
        self.drain_timeout_s = drain_timeout_s
        self.published = 0  # entries written (frames and events)
        self.bytes_written = 0  # bytes of those entries' field names and values, as sent
        self.failed = 0  # entries Redis refused
        self.batches_sent = 0
        self.reconnects = 0
        self.dropped: Counter[str] = Counter()  # frames never written, by reason
        self.events_dropped = 0
        self._events_dropped_by: Counter[str] = Counter()  # the same events, by reason
        self.peak_backlog = 0
        self.peak_backlog_bytes = 0
        self.per_stream: Counter[str] = Counter()
        self.on_written: WrittenCallback | None = None
        self.on_dropped: DroppedCallback | None = None
        self.data_losses = 0  # times Redis lost entries this run wrote (outage, restart, eviction, deletion)
        self.entries_lost: Counter[str] = Counter(frames=0, events=0)  # the entries those losses took
        self.frames_lost_of: Counter[str] = Counter()  # of those, each source's frame entries (a batch fails its video)
        self.entries_lost_at_least = False  # some loss could only be bounded from below
        self.on_data_lost: Callable[[int, int], None] | None = None  # (frames, events) at each loss
        self._settings: dict[str, _Outgoing] = {}  # per source, the newest settings event written (said again at a loss)
        self._sending = 0  # entries at the queue's front that a batch is writing now
        self._flight: _Flight | None = None  # the batch on its way, its answers not yet taken in
        self._status_flight: _StatusFlight | None = None  # status keys' writes on their way, the same
        # background: batches go out on a thread of the sink's own, the caller's going on meanwhile
        # (the run's publishing thread: found probing a remote site, its waits on a Redis 0.5 s away
        # let the cameras' queues overflow)
        self.background = background
        self._flier: threading.Thread | None = None
        self._flights: SimpleQueue | None = None
        self._landing = threading.Lock()
        self._final = False  # closed and drained: nothing more is sent
        # per stream, this run's entries written since its last loss was counted (or since it was first written)
        self._span: Counter[str] = Counter()
        self._event_streams: set[str] = set()
        self._marks: dict[str, deque[tuple[int, int]]] = {}  # with max_age_s: (ID milliseconds, seq) per stream
        self._queue: deque[_Outgoing] = deque()
        self._queued_bytes = 0
        # per stream, the `seq` of the last entry written (docs/SCHEMA.md): read from the stream's
        # last entry before the first write, so that it goes on across runs
        self._seq: dict[str, int] = {}
        self.run_id = run_id  # this run's; when not given, the run_id of the first entry written
        # runs other than this one seen writing to this run's streams: run_id -> the stream
        self.other_writers: dict[str, str] = {}
        # other run -> its newest entry seen, and when (monotonic) that entry was first seen: by this
        # host's clock alone (Redis's may be another machine's)
        self._writer_seen: dict[str, tuple[tuple[int, int], float]] = {}
        self._ended: set[tuple[str, str]] = set()  # (run_id, source) whose end a state event said
        self._writer_checked: dict[str, float] = {}  # per stream, when it was last checked for other writers
        self._writer_since: dict[str, bytes] = {}  # per stream, this run's last entry at that check
        self._unreadable = False  # the last entry of a stream cannot be read (ACL): warned once
        self._where = redis_address(client)
        self._sentinel = isinstance(client.connection_pool, SentinelConnectionPool)  # a failover may change _where
        self._connected = True
        self._down_since: float | None = None
        self._down_s = 0.0  # seconds unable to write, up to the last time Redis took writes again
        self._down_lock = threading.Lock()  # _down_s and _down_since change together for down_seconds
        self._last_error = ""
        self._refusal: str | None = None  # while Redis refuses writes for now: what to do about it
        self._refused_since: float | None = None
        self._refused_for_good = False  # a refusal ended publishing: nothing more is sent
        self._last_id: dict[str, bytes] = {}  # per stream, the ID of the last entry written
        self._unanswered: _Unanswered | None = None  # looked for in Redis before anything is sent again
        # A connection redis-py opens again by itself (Redis restarted between two writes, unseen as an
        # outage) is a new server session: what was written before it is checked as after an outage.
        self._new_session = False
        pool = client.connection_pool
        pool.connection_kwargs["redis_connect_func"] = self._session_started
        pool.disconnect()  # connections made before the hook would reconnect without it
        pool.reset()
        self._outage_dropped = 0  # entries the full backlog shed during this outage (or refusal spell)
        self._backlog_full_warned = False
        self._reachable = threading.Event()
        self._stopping = threading.Event()
        self._backoff = Backoff(0.1, reconnect_max_s)
        self._probe: threading.Thread | None = None
        self._embedded: EmbeddedRedis | None = None
        self._closed = False
        self._evicted_keys: int | None = None  # INFO stats evicted_keys at connect; None: not readable
        self._lengths_readable: bool | None = None  # whether this user may run XLEN (ACL), once known
        # Redis's clock minus this machine's, seconds: the least of the recent readings (INFO at
        # connect, each batch's IDs), each high by the time the reading took to reach Redis
        self.clock_offset_s: float | None = None
        self._unwatched: set[str] = set()  # streams of removed sources whose last entries wait for Redis
        # With max_age_s: streams of sources that ended (or were removed), which the sweep lets expire;
        # those of the run's other sources, however long idle, it keeps (their consumer groups too)
        self._ended_streams: set[str] = set()
        self._clock_readings: deque[float] = deque(maxlen=_CLOCK_READINGS)
        self._clock_warned = False
        self._check_eviction_policy()
        if max_age_s is not None:
            self._check_minid()

    @classmethod
    def from_config(
        cls,
        url: str | None,
        password: str | None,
        *,
        username: str | None = None,
        tls: TlsFiles | None = None,
        sentinel: SentinelAuth | None = None,
        stream_pattern: str = DEFAULT_STREAM_PATTERN,
        maxlen: int = 10000,
        mask_encoding: str = "rle",
        pipeline_size: int = 32,
        max_batch_delay_s: float = 0.02,
        events_pattern: str | None = None,
        max_backlog: int = 1000,
        max_backlog_bytes: int = 256 * 2**20,
        reconnect_max_s: float = 5.0,
        drain_timeout_s: float = 10.0,
        timeout_s: float = 1.0,
        start_wait_s: float = 0.0,
        stopping: Callable[[], bool] = lambda: False,
        embedded_dir: Path | None = None,
        files_kept: bool = False,
        run_id: str = "",
        max_age_s: float | None = None,
        levels: bool = True,
        sources: Sequence[str] = (),
        status_pattern: str | None | Beside = Beside.FRAMES,
        status_ttl_s: float = 5.0,
        background: bool = False,
    ) -> RedisPublisher:
        """Connect to the Redis at ``url``, or with no url start an embedded one for this run.

        A Redis that refuses the credentials fails now with one line, and so does one that
        cannot be reached once ``start_wait_s`` has passed (a Redis started beside the pipeline,
        as orchestrators do, with no start order); once running, outages are ridden out. The embedded Redis listens on a unix socket that only this
        user can reach (``EmbeddedRedis``) and ignores the credentials; it stops on ``close()``,
        keeping its data only when ``embedded_dir`` is given; its log line names the streams of
        ``sources`` (the run's source names) to watch.
        """
        events_pattern, status_pattern = _beside(stream_pattern, events_pattern, status_pattern)
        embedded = None
        if url is None:
            try:
                embedded = EmbeddedRedis(embedded_dir)
            except FileNotFoundError as error:  # tempfile's "No usable temporary directory found in [...]"
                if not str(error.strerror).startswith("No usable temporary directory"):
                    raise
                raise SinkError("no sinks.redis.url set, and the embedded Redis that stands in needs a writable "
                                "temporary directory, which this process has none of (a read-only root?) — set "
                                "sinks.redis.url to your Redis, or TMPDIR to a writable directory") from None
            url, password, username, tls = embedded.url, None, None, None
        try:
            # Our own reconnects (backlog, backoff, counted) replace redis-py's per-command retries;
            # short timeouts keep a hung Redis (stopped, partitioned) from holding the publishing thread:
            # after timeout_s its write counts as failed and the results go to the backlog.
            client = _connect_waiting(
                start_wait_s, stopping, url, password, username=username, tls=tls, sentinel=sentinel,
                socket_timeout=timeout_s, connect_timeout=max(2.0, timeout_s), client_name=_client_name(run_id))
            _check_transactions(client, publisher_key_patterns(stream_pattern, events_pattern, status_pattern),
                                status=status_pattern is not None)
            publisher = cls(
                client, stream_pattern, maxlen, mask_encoding, pipeline_size,
                max_batch_delay_s=max_batch_delay_s, events_pattern=events_pattern, max_backlog=max_backlog,
                max_backlog_bytes=max_backlog_bytes, reconnect_max_s=reconnect_max_s,
                drain_timeout_s=drain_timeout_s, run_id=run_id, max_age_s=max_age_s, levels=levels,
                status_pattern=status_pattern, status_ttl_s=status_ttl_s, background=background,
            )
        except BaseException:
            if embedded is not None:
                embedded.close()
            raise
        if embedded is not None:
            publisher._embedded = embedded
            # the run's own streams, quoted for a shell (`<source>` pasted into bash was a redirection)
            names = list(sources)
            example = (" ".join(shlex.quote(stream_name(stream_pattern, name)) for name in names) if 0 < len(names) <= 3
                       else shlex.quote(stream_name(stream_pattern, "*")))
            log.info(
                "no sinks.redis.url set, so an embedded Redis runs until this run ends, and its entries with it\n"
                f"  while it runs, connect: redis-cli -s {embedded.socket_path}\n"
                f"  while it runs, watch:   segstream tail {example} --url {embedded.url}\n"
                + ("  the files sink keeps them; for files alone: --set sinks.redis.enabled=false" if files_kept else
                   "  to keep the entries: set sinks.redis.url to a Redis of your own, or --set sinks.files.enabled=true")
            )
        return publisher

    @property
    def connected(self) -> bool:
        """False from a failed write until Redis answers again."""
        return self._connected

    @property
    def backlog(self) -> int:
        """Entries queued and not yet written."""
        return len(self._queue)

    # --- what the runtime calls ------------------------------------------------------------

    def publish(self, result: FrameResult) -> None:
        """Queue the entry for ``result``; sends the batch once it is full or old enough."""
        if self._closed:
            raise SinkError("the Redis publisher is closed — publish before close()")
        fields = to_wire(result, self.mask_encoding, levels=self.levels)
        # Once encoded, only a stand-in waits for the batch: a 4K label map (33 MB) must not stay
        # in memory for every buffered entry.
        stream = stream_name(self.stream_pattern, result.source)
        self._unwatched.discard(stream)  # a source of that name added again
        self._ended_streams.discard(stream)
        self._queue_up(_Outgoing(stream, fields, _size(fields), result.stand_in(), time.monotonic()))

    def publish_event(self, event: Event) -> None:
        """Queue an entry for the source's events stream; it leaves with the next batch."""
        if self._closed:
            raise SinkError("the Redis publisher is closed — publish before close()")
        fields = event_to_wire(event)
        stream = stream_name(self.events_pattern, event.source)
        self._unwatched.discard(stream)
        self._ended_streams.discard(stream)
        self._queue_up(_Outgoing(stream, fields, _size(fields), None, time.monotonic()))

    def _queue_up(self, item: _Outgoing) -> None:
        """``item`` queued, and what is due sent. A batch refused for good that was on its way is
        told first, with ``item`` counted as refused with it (found reviewing: the caller, told of the
        refusal at its entry's hand-off, counted an event the sink counted again at close)."""
        try:
            self._landed(False)
        except SinkError:
            self._refused([item])
            raise
        self._enqueue(item)
        self._pump()

    def source_ended(self, source: str) -> None:
        """The source ended and all it sent is queued: with ``max_age_s`` its streams are left to
        expire once no one writes them, as at the run's end."""
        if self.max_age_s is not None:
            self._ended_streams |= {stream_name(self.stream_pattern, source), stream_name(self.events_pattern, source)}

    def last_written(self, source: str) -> tuple[str | None, float | None]:
        """The ``file`` and ``capture_ts`` of the newest entry of ``source``'s frames stream in
        Redis ((None, None): none there): where a watched folder goes on (``watch_from: last``).
        Raises ``SinkError`` while Redis does not answer (the caller waits and asks again), ``SourceError``
        when it refuses (a user without XREVRANGE, a key that is no stream)."""
        stream = stream_name(self.stream_pattern, source)
        try:
            reply = self.client.xrevrange(stream, "+", "-", count=1)
        except redis.ResponseError as error:  # refused: no waiting makes it say (found reviewing: it waited for good)
            raise SourceError(f"source {source}: Redis at {self._where} refused to say what {stream} holds last "
                              f"({error_summary(error)}), which watch_from: last goes on after — allow XREVRANGE "
                              "on it, or set watch_from to start or new") from None
        except redis.RedisError as error:
            raise SinkError(f"Redis at {self._where} did not say what {stream} holds last: {error_summary(error)}"
                            ) from None
        if not reply:
            return None, None
        fields = {_text(key): value for key, value in reply[0][1].items()}
        capture = _text(fields["capture_ts"]) if "capture_ts" in fields else ""
        return (_text(fields["file"]) if "file" in fields else None), (float(capture) if capture else None)

    def source_removed(self, source: str) -> None:
        """The source was removed from the run and all it sent is queued: once written, its streams
        are no longer this run's to watch (an operator erasing them is no loss of this run's output)."""
        streams = {stream_name(self.stream_pattern, source), stream_name(self.events_pattern, source)}
        self._pump(everything=True)  # what is still queued for it, written now where Redis answers
        if self._status is not None:
            self._status.removed(source)
        self._unwatched |= streams & {item.stream for item in self._queue}  # what waits (Redis away), once written
        for stream in streams:
            self._last_id.pop(stream, None)
        self._settings.pop(source, None)

    def poll(self) -> float | None:
        """Send what is due; the seconds until the next call is needed (with ``max_age_s`` at most
        until the next sweep), None with nothing queued and no ``max_age_s``."""
        self._pump()
        sweep = None
        if self.max_age_s is not None:  # the next sweep's time: a short max_age_s needs it sooner than an idle wake
            self._sweep()
            sweep = max(0.0, self._swept + self._sweep_s - time.monotonic())
        if (status := self._write_status()) is not None:  # the next status refresh: as the sweep's
            sweep = status if sweep is None else min(status, sweep)
        if not self._queue:
            return sweep
        if (flight := self._flight) is not None:  # its answers taken in soon after they come
            wait_s = _flight_wait(flight.attempt)
            return wait_s if sweep is None else min(wait_s, sweep)
        if not self._connected:
            return _RECHECK_S if sweep is None else min(_RECHECK_S, sweep)
        due = max(0.0, self._queue[0].queued + self.max_batch_delay_s - time.monotonic())
        return due if sweep is None else min(due, sweep)

    def flush(self) -> None:
        """Send everything queued within ``drain_timeout_s``, waiting for an unreachable Redis as
        long; then drop (and count) what is left. A Redis that answers but slowly (a far link: found
        probing a remote site, a backlog of 262 entries took 54 s with a drain_timeout_s of 10) is
        bound by it too, to about one batch's write more, and one that answers is given at least
        ``_DRAIN_SENDING_MIN_S`` (``drain_timeout_s: 0`` waits for no unreachable Redis, but a
        healthy one still takes everything)."""
        deadline = time.monotonic() + self.drain_timeout_s
        sending = time.monotonic() + max(self.drain_timeout_s, _DRAIN_SENDING_MIN_S)
        self._pump(everything=True, until=sending)
        if self._queue and not self._connected:
            log.warning("waiting up to %.0f s for Redis at %s to take %d waiting entries",
                        self.drain_timeout_s, self._where, len(self._queue))
        while self._queue and not self._connected:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._reachable.wait(left)
            self._pump(everything=True, until=max(deadline, sending))
        if self._queue:
            self._drop_all()

    def close(self) -> None:
        """Flush (without waiting for an unreachable Redis), then release the connection (and
        stop the embedded Redis if this run started it)."""
        if self._closed:
            return
        self._closed = True
        try:
            try:
                if not self._refused_for_good:
                    self._pump(everything=True, until=time.monotonic() + max(self.drain_timeout_s, _DRAIN_SENDING_MIN_S))
                    self._write_status(closing=True)
            finally:
                if self._queue:
                    self._drop_all()
            self._final = True  # nothing is sent from here on
            self._check_vanished_at_end()
            self._report()
        finally:
            self._stopping.set()
            if self._flier is not None:
                self._flights.put(None)
                self._flier.join(timeout=5)
            if self._probe is not None:
                self._probe.join(timeout=5)
            self.client.close()
            if self._embedded is not None:
                self._embedded.close()

    def _write_status(self, closing: bool = False) -> float | None:
        """Write the status keys that are due (at ``closing``, the changed ones: final states);
        the seconds until the next are due. A write that fails for a lost connection is an outage
        as a batch's is; one refused for now (full) waits a refresh; one refused for good (ACL) is
        said once and tried again each minute (a grant takes effect). With ``background`` they go
        on the sink's own thread (after the batch on its way, if any) and are taken in at a later
        call; at ``closing``, that one is waited for and the final states written here."""
        keys = self._status
        # (background) one on its way, taken in once answered, once: a run's abort may close the sink
        # from another thread meanwhile, which takes it (and waits for it) before the final states
        with self._landing:
            flight = self._status_flight
            if flight is not None and not (flight.done.is_set() or closing):
                return _flight_wait(flight.attempt)
            self._status_flight = None
        if flight is not None:
            flight.done.wait()
            landed = self._status_landed(flight.writes, flight.replies, flight.error, flight.attempt, closing)
            if not closing:
                return landed
        if keys is None or not self._connected or self._refused_for_good:
            return None
        now = time.monotonic()
        due = keys.due(now)
        if due is None or (due > 0 and not closing):
            return due
        if not closing and self.healthy is not None and not self.healthy():
            return keys.ttl_s / 3  # stuck somewhere: the keys go as a killed run's do, until it moves again
        writes = keys.writes(now, final_only=closing, frames_of=self.frames_of)
        pipe = self.client.pipeline(transaction=False)
        for _, key, value, ttl_s, _ in writes:
            pipe.set(key, value, px=None if ttl_s is None else max(1, int(ttl_s * 1000)))
        attempt = time.monotonic()
        if not closing and self.background:  # a far Redis's round trip is not the publishing thread's
            flight = _StatusFlight(writes, pipe, attempt)
            with self._landing:  # not after a close (another thread's) took the flights and wrote the final states
                if self._closed:
                    pipe.reset()
                    return None
                if self._fly(flight):
                    self._status_flight = flight
                    return _FLIGHT_POLL_S
        replies, error = None, None
        try:
            replies = pipe.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as failed:
            error = failed
        finally:
            pipe.reset()
        return self._status_landed(writes, replies, error, attempt, closing)

    def _status_landed(self, writes: list, replies: list | None, error: BaseException | None, attempt: float,
                       closing: bool) -> float | None:
        """Status keys' writes answered (``replies``) or failed (``error``): the seconds until the
        next are due, None where the connection was lost."""
        keys = self._status
        if error is not None:
            if not isinstance(error, (redis.ConnectionError, redis.TimeoutError, OSError)):
                raise error
            if not closing:
                self._last_error = self._connection_error(error)
                self._disconnected(attempt)
            return None
        errors = [(write[1], reply) for write, reply in zip(writes, replies) if isinstance(reply, Exception)]
        if errors and refused_for_now(errors[0][1]):
            return keys.refused_for_now(time.monotonic())
        if errors:
            if keys.refused_for_good(time.monotonic()):
                key, error = errors[0]
                log.warning("Redis at %s refused the status key %s (SET: %s): readers cannot tell from it whether this "
                            "run still publishes the source — %s (tried again each minute), or set "
                            "sinks.redis.status_key to null", self._where, key, error_summary(error),
                            status_grant(keys.pattern))
            return _STATUS_RETRY_S
        if keys.taken(writes):
            log.info("Redis at %s takes the status keys again: readers can tell from them whether this run "
                     "publishes its sources", self._where)
        return keys.due(time.monotonic())

    def status(self) -> dict:
        """Connection, backlog and drops now, with a one-line ``line`` for status lines."""
        backlog, nbytes = len(self._queue), self._queued_bytes
        dropped = dict(self.dropped)
        state = "connected" if self._connected else f"unreachable for {time.monotonic() - (self._down_since or 0):.0f} s"
        if self._refusal is not None:
            state = f"refusing writes for {time.monotonic() - (self._refused_since or 0):.0f} s"
        parts = [f"redis {state}", f"backlog {backlog}/{self.max_backlog} ({nbytes / 2**20:.1f} MB)"]
        if self.peak_backlog:
            parts.append(f"peak {self.peak_backlog}")
        if self.reconnects:
            parts.append(f"{self.reconnects} reconnect{'s' if self.reconnects != 1 else ''}")
        if self.data_losses:
            parts.append(self._lost_words())
        if dropped or self.events_dropped:
            lost = [", ".join(f"{v} ({k})" for k, v in sorted(dropped.items()))] if dropped else []
            if self.events_dropped:  # with their reasons, as frames have theirs (a refused key of events)
                reasons = ", ".join(f"{v} {k}" if len(self._events_dropped_by) > 1 else k
                                    for k, v in sorted(self._events_dropped_by.items()))
                lost.append(f"{self.events_dropped} event{'s' if self.events_dropped != 1 else ''} ({reasons})")
            parts.append("dropped " + " + ".join(lost))
        if self.expiry_refused:
            parts.append(f"{self.expiry_refused} stream{'s' if self.expiry_refused != 1 else ''} kept past max_age_s "
                         "once unwritten (no +pexpire)")
        if not self._connected and self._last_error:
            parts.append(f"last error: {self._last_error}")
        return {
            "connected": self._connected,
            "backlog": backlog,
            "backlog_bytes": nbytes,
            "peak_backlog": self.peak_backlog,
            "peak_backlog_bytes": self.peak_backlog_bytes,
            "reconnects": self.reconnects,
            "dropped": dropped,
            "events_dropped": self.events_dropped,
            "data_losses": self.data_losses,
            "entries_lost": {"frames": self.entries_lost["frames"], "events": self.entries_lost["events"]},
            "entries_lost_at_least": self.entries_lost_at_least,
            "expiry_refused": self.expiry_refused,
            "published": self.published,
            "line": ", ".join(parts),
        }

    def _lost_words(self) -> str:
        """``lost 37 written entries (30 frames, 7 events) in 2 losses``, for the status line."""
        frames, events = self.entries_lost["frames"], self.entries_lost["events"]
        bound = "at least " if self.entries_lost_at_least else ""
        return (f"lost {bound}{frames + events} written entr{'y' if frames + events == 1 else 'ies'} "
                f"({frames} frame{'s' if frames != 1 else ''}, {events} event{'s' if events != 1 else ''}) "
                f"in {self.data_losses} loss{'es' if self.data_losses != 1 else ''}")

    # --- the queue ------------------------------------------------------------------------

    def _enqueue(self, item: _Outgoing) -> None:
        self._queue.append(item)
        self._queued_bytes += item.nbytes
        while len(self._queue) > self._sending and (len(self._queue) > self.max_backlog
                                                     or self._queued_bytes > self.max_backlog_bytes):
            # The oldest frame goes first; events (a track's start or end) only when no frame is left;
            # never one of the batch on its way.
            oldest = self._oldest_to_shed()
            dropped = self._queue[oldest]
            del self._queue[oldest]
            self._outage_dropped += 1
            if not self._backlog_full_warned:
                self._backlog_full_warned = True
                log.warning("Redis at %s: the backlog is full (max_backlog %d entries, max_backlog_mb %.0f): dropping "
                            "the oldest results (events last) until Redis takes writes again, counted as %s",
                            self._where, self.max_backlog, self.max_backlog_bytes / 2**20, DROPPED_BACKLOG)
            self._drop(dropped, DROPPED_BACKLOG)
        self.peak_backlog = max(self.peak_backlog, len(self._queue))
        self.peak_backlog_bytes = max(self.peak_backlog_bytes, self._queued_bytes)

    def _oldest_to_shed(self) -> int:
        """Where in the queue the entry a full backlog drops is: the oldest frame, events (a
        track's start or end) only when no frame is left, and an unanswered batch's frames last
        (Redis may hold them, and a frame dropped is never looked for)."""
        unsure = {id(item) for item in self._unanswered.items} if self._unanswered is not None else set()
        frames = (i for i in range(self._sending, len(self._queue)) if self._queue[i].result is not None)
        first = None
        for i in frames:
            if id(self._queue[i]) not in unsure:
                return i
            first = i if first is None else first
        return self._sending if first is None else first

    def _drop(self, item: _Outgoing, reason: str) -> None:
        self._queued_bytes -= item.nbytes
        if item.result is None:
            self.events_dropped += 1
            self._events_dropped_by[reason] += 1
            return
        self.dropped[reason] += 1
        if self.on_dropped is not None:
            self.on_dropped([item.result], reason)

    def _drop_all(self) -> None:
        """Drop what still waits at the end, counted by why it was never written."""
        count = len(self._queue)
        reason = DROPPED_REFUSED if self._refusal is not None or self._refused_for_good else DROPPED_UNREACHABLE
        while self._queue:
            self._drop(self._queue.popleft(), reason)
        why = ("still refused writes" if self._refusal is not None else "had refused this run's writes"
               if self._refused_for_good else "stayed unreachable" if not self._connected else
               f"took writes too slowly to take them all within drain_timeout_s ({self.drain_timeout_s:g} s: a far or "
               "loaded Redis; raise it, and the stop timeout of what stops the run with it)")
        log.warning("Redis at %s %s: %d waiting entries dropped (%s)", self._where, why, count, reason)

    def _pump(self, everything: bool = False, until: float | None = None) -> None:
        """Send full or overdue batches (every batch with ``everything``) while Redis takes them
        (and, given ``until``, a monotonic time, until then). A batch on its way (``background``) is
        taken in first, whatever became of the connection meanwhile (a status key's write found it
        lost: the outage began with the batch, which was sent first)."""
        if not self._landed(everything):
            return
        if not self._connected:
            if not self._reachable.is_set():
                return
            self._reconnected()
        if self._unanswered is not None:
            attempt = time.monotonic()
            try:
                self._settle_unanswered()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                self._last_error = self._connection_error(error)
                self._disconnected(attempt)
                return
        while True:
            if not self._landed(everything) or not self._connected:
                return
            if not self._queue or (until is not None and time.monotonic() >= until):
                return
            due = self._queue[0].queued + self.max_batch_delay_s <= time.monotonic()
            if not (everything or due or len(self._queue) >= self.pipeline_size):
                return
            batch = [self._queue[i] for i in range(min(self.pipeline_size, len(self._queue)))]
            attempt = time.monotonic()  # a hung write fails only at its timeout: Redis was away since now
            self._sending = len(batch)
            try:
                flight = self._prepare(batch, attempt)
            except BaseException:
                self._sending = 0
                raise
            if flight is None:
                self._sending = 0
                self._disconnected(attempt)
                return
            if not (self.background and self._fly(flight)):  # else the caller goes on; poll() takes the answers in
                flight.fly()
            self._flight = flight

    def _landed(self, wait: bool) -> bool:
        """Whether no batch is on its way any more: the one that was taken in (``wait``: waited
        for), its entries forgotten once written, or a lost connection told."""
        if (flight := self._flight) is None:
            return True
        if not flight.done.is_set() and not (wait and flight.done.wait()):
            return False
        with self._landing:  # once: a run's abort may close the sink from another thread meanwhile
            if self._flight is not flight:
                return True
            self._flight = None
            try:
                sent = self._land(flight)
            except SinkError:
                self._forget(len(flight.batch))  # refused is final: never sent again
                self._refused_for_good = True
                raise
            finally:
                self._sending = 0
            if sent:
                self._forget(len(flight.batch))
            else:
                self._disconnected(flight.attempt)
        return True

    def _fly(self, flight: _Flight) -> bool:
        """Send ``flight`` on the sink's own thread (started at the first); False where there is
        none (closing, or the system refused a thread): the caller sends it."""
        if self._stopping.is_set():
            return False
        if self._flier is None:
            flights: SimpleQueue = SimpleQueue()
            flier = NamedThread(target=_flying, args=(flights,), name="segstream-redis-send", daemon=True)
            try:
                flier.start()
            except RuntimeError:  # (can't start new thread)
                return False
            self._flights, self._flier = flights, flier
        self._flights.put(flight)
        return True

    def _forget(self, count: int) -> None:
        for _ in range(count):
            self._queued_bytes -= self._queue.popleft().nbytes

    def _prepare(self, batch: list[_Outgoing], attempt: float) -> _Flight | None:
        """The batch's MULTI/EXEC (and the other-writer check's reads), ready to send; None when
        the connection failed asking what it needs (the batch stays queued)."""
        if not self.run_id:
            self.run_id = _text(batch[0].fields.get("run_id", ""))
        self._forget_aged()
        try:
            self._first_reads(batch)
            reads, due = self._writer_reads({item.stream for item in batch})
            written_before = sorted({item.stream for item in batch} & self._last_id.keys())
            if written_before and self._lengths_readable is None:  # a refused XLEN would abort the MULTI
                self._lengths_readable = self._may_read_length(written_before[0])
            if self.max_age_s is not None and self._may_expire is None:  # as would a refused PEXPIRE
                self._may_expire = self._may_set_expiry(batch[0].stream)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._last_error = error_summary(error)
            return None
        now = time.time()
        stamp = repr(now)
        pipe = self.client.pipeline(transaction=True)
        # Streams written before: their length before this batch, 0 when Redis evicted (or someone deleted) them.
        checked = sorted({item.stream for item in batch} & self._last_id.keys()) if self._lengths_readable else []
        for stream in checked:
            pipe.xlen(stream)
        numbered = dict(self._seq)
        for item in batch:
            if item.result is not None:
                item.fields["publish_ts"] = stamp
            numbered[item.stream] += 1
            item.fields["seq"] = str(numbered[item.stream])
            pipe.xadd(item.stream, item.fields, maxlen=self.maxlen, approximate=True)
        # XADD takes MAXLEN or MINID, not both: the age limit is one exact XTRIM per stream and batch
        # (`~` keeps whole nodes of up to 100 small entries: hours of a low-rate events stream), on
        # Redis's clock as its last reply showed it, so never this batch's entries; and a time to
        # live, which any later write pushes forward, for when no one writes the stream any more.
        streams = sorted({item.stream for item in batch})
        min_id = self._oldest_kept()
        aged = streams if min_id is not None else []
        for stream in aged:
            pipe.xtrim(stream, minid=min_id, approximate=False)
        if self._may_expire:
            for stream in streams:
                pipe.pexpire(stream, int(self.max_age_s * 1000))
        # Asked before the backlog goes out: its MAXLEN ~ may trim the entry asked about.
        gone = self._entries_gone() if self._refusal is not None else []
        return _Flight(batch, attempt, now, pipe, checked, aged, gone, reads, due)

    def _land(self, flight: _Flight) -> bool:
        """A flight's answers, taken in: the batch written (its results to ``on_written``), or
        False when the connection failed (the batch stays queued), or ``SinkError`` for a refusal
        for good."""
        batch, pipe, checked, aged, gone, now = (flight.batch, flight.pipe, flight.checked, flight.aged,
                                                 flight.gone, flight.now)
        if flight.reads is not None:
            flight.reads.reset()
        if flight.replies is not None:
            self._writer_replies(flight.due, flight.replies)
        if flight.error is not None and not flight.wrote:  # the check's reads failed: nothing was sent
            pipe.reset()
            if not isinstance(flight.error, (redis.ConnectionError, redis.TimeoutError, OSError)):
                raise flight.error
            self._last_error = error_summary(flight.error)
            return False
        try:
            if flight.error is not None:
                raise flight.error
            results = flight.results
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            # Not written, or written with its reply lost: looked for before anything is sent again
            # (_settle_unanswered); what is not found is numbered afresh when sent again, so that
            # entries dropped from the backlog meanwhile leave no gap a reader would count as trimmed.
            self._last_error = self._connection_error(error)
            if not _never_sent(error):
                self._unanswered = _Unanswered(
                    list(batch), [{key: _text(item.fields[key]) for key in _TELLING if key in item.fields}
                                  for item in batch], now)
            return False
        except redis.RedisError as error:
            if refused_for_now(error):  # the whole batch, at MULTI or EXEC: kept, and sent again
                self._last_error = error_summary(error)
                self._refusal = refusal_advice(error, self._acl_keys, status=self._status is not None)
                return False
            self.failed += len(batch)
            self._refused(batch)
            raise SinkError(
                f"Redis at {self._where} refused a batch of {len(batch)} entries: "
                f"{error_summary(error)} — {refusal_advice(error, self._acl_keys, status=self._status is not None)}"
            ) from None
        finally:
            pipe.reset()
        self.batches_sent += 1
        lengths, results, trims = (results[:len(checked)], results[len(checked):len(checked) + len(batch)],
                                   results[len(checked) + len(batch):len(checked) + len(batch) + len(aged)])
        if self._refusal is not None:
            log.warning("Redis at %s takes writes again after %.1f s: sending a backlog of %d entries%s",
                        self._where, time.monotonic() - (self._refused_since or time.monotonic()), len(self._queue),
                        self._shed_meanwhile())
            self._refusal = self._refused_since = None
            self._warn_lost(gone)
        elif self._new_session:
            self._new_session = False
            before, self._where = self._where, redis_address(self.client)
            if before != self._where:  # redis-py reconnected by itself, to the master Sentinel now names
                log.warning("Sentinel failed over: the master is now %s (was %s)", self._where, before)
            crowded = {stream for stream, n in Counter(item.stream for item in batch).items() if n >= self.maxlen}
            self._warn_lost(self._entries_gone(skip=crowded))  # the last entries before this batch
        # what the checks above did not already report (they forget the streams they report)
        self._warn_vanished([(stream, self._last_id[stream]) for stream, length in zip(checked, lengths)
                             if length == 0 and stream in self._last_id])
        trim_errors = [r for r in trims if isinstance(r, Exception)]
        if trim_errors and not self._trim_refused:  # max_age_s would do nothing, said once
            self._trim_refused = True
            log.warning("Redis at %s refused to trim by age (XTRIM MINID: %s): sinks.redis.max_age_s has no effect "
                        "— allow +xtrim to the user, or use Redis 6.2 or newer", self._where,
                        error_summary(trim_errors[0]))
        if written := next((r for r in results if not isinstance(r, Exception)), None):
            self._clock(_id_key(written)[0] / 1000, now)  # stamped just before the batch went: a round trip early
        refused = [(item.stream, r) for item, r in zip(batch, results) if isinstance(r, Exception)]
        # only what Redis took advances a stream's numbers
        self._written([(item, r) for item, r in zip(batch, results) if not isinstance(r, Exception)], now)
        if refused:
            self.failed += len(refused)
            items = [item for item, r in zip(batch, results) if isinstance(r, Exception)]
            self._refused(items)
            (stream, error), events = refused[0], sum(item.result is None for item in items)
            frames, kinds = len(items) - events, []
            kinds += [f"{frames} frame{'s' if frames != 1 else ''}"] if frames else []
            kinds += [f"{events} event{'s' if events != 1 else ''}"] if events else []
            others = len(batch) - len(items)
            written = f"; {others} other{'s' if others != 1 else ''} written" if others else ""
            setting = "events_stream" if items[0].result is None else "stream"
            raise SinkError(
                f"Redis at {self._where} refused {len(refused)} of {len(batch)} entries ({' and '.join(kinds)}"
                f"{written}; first, on {stream!r}: {error_summary(error)}) — "
                f"{refusal_advice(error, self._acl_keys, setting, status=self._status is not None)}"
            )
        return True

    def _settle_unanswered(self) -> None:
        """Before anything is sent again: the entries of the unanswered batch Redis wrote after all,
        found among each stream's newest entries by this run's id and their ``seq`` (and
        ``publish_ts``), are written, not sent twice; the rest stay in the backlog."""
        unanswered = self._unanswered  # kept until the look is done: a connection lost meanwhile looks again
        waiting = {id(item) for item in self._queue}
        wanted: dict[str, list[tuple[_Outgoing, dict[str, str]]]] = {}
        for item, sent in zip(unanswered.items, unanswered.sent):
            if id(item) in waiting:
                wanted.setdefault(item.stream, []).append((item, sent))
        found: dict[int, bytes] = {}  # id(item) -> its entry's ID
        for stream, items in wanted.items():
            try:
                # a few more than the batch wrote to it: another writer's entries may have come after
                newest = self.client.xrevrange(stream, count=len(items) + 16)
            except redis.ResponseError as error:  # a user without XREVRANGE: sent again, maybe twice
                log.warning("Redis at %s: cannot look for the %d entries whose write got no reply in %s (%s): they are "
                            "sent again, and may be in the stream twice (readers deduplicate on run_id and seq) — "
                            "grant the user XREVRANGE (ACL: +xrevrange) to avoid it", self._where,
                            len(items), stream, error_summary(error))
                continue
            for entry_id, fields in newest:
                stored = {_text(key): _text(value) for key, value in fields.items() if _text(key) in _TELLING}
                for item, sent in items:
                    if stored == sent and id(item) not in found:
                        found[id(item)] = entry_id
        self._unanswered = None
        if not found:
            return
        written = [item for item in self._queue if id(item) in found]
        self._queue = deque(item for item in self._queue if id(item) not in found)
        self._queued_bytes -= sum(item.nbytes for item in written)
        log.info("Redis at %s had written %d entr%s of the batch whose reply never came: not sent again",
                 self._where, len(written), "y" if len(written) == 1 else "ies")
        self._written([(item, found[id(item)]) for item in written], unanswered.stamp)

    def _written(self, entries: list[tuple[_Outgoing, bytes]], stamp: float) -> None:
        """Entries Redis took (each with its ID, in the order written), their batch sent at
        ``stamp``: the streams' numbers and last IDs advance, they are counted, and their results
        go to ``on_written``."""
        for item, entry_id in entries:
            seq = int(item.fields["seq"])
            self._seq[item.stream] = max(self._seq.get(item.stream, 0), seq)
            if item.stream not in self._unwatched:
                self._account(item, entry_id, seq)
                if _is_settings(item):
                    self._settings[_text(item.fields.get("source", ""))] = item
            if self._status is not None:
                self._status.written(item, seq)
        if self._unwatched:  # a removed source's last waiting entries written: nothing of it is left to skip
            self._unwatched &= {item.stream for item in self._queue}
        if entries and self.max_age_s is not None:
            answered = time.monotonic()
            self._redis_clock = (max(_id_key(entry_id)[0] for _, entry_id in entries), answered)
            for item, _ in entries:
                self._written_at[item.stream] = answered
                if self._may_expire is False:
                    self._unexpired.add(item.stream)
        self.published += len(entries)
        self.bytes_written += sum(_wire_size(item.fields) for item, _ in entries)
        self.per_stream.update(item.stream for item, _ in entries if item.result is not None)
        frames = [item.result for item, _ in entries if item.result is not None]
        for result in frames:
            result.publish_ts = stamp
        if self.on_written is not None and frames:
            self.on_written(frames)

    def _account(self, item: _Outgoing, entry_id: bytes, seq: int) -> None:
        """An entry written to a stream this run watches: what a loss of it would take is counted
        from here (its last ID, the entries since the last loss, with max_age_s where they stand in time)."""
        stream = item.stream
        if stream not in self._last_id:  # first written, or its last loss told, or forgotten: counted afresh
            self._span[stream] = 0
            self._marks.pop(stream, None)
        self._last_id[stream] = entry_id
        self._span[stream] += 1
        if item.result is None:
            self._event_streams.add(stream)
        if self.max_age_s is not None:
            marks = self._marks.setdefault(stream, deque(maxlen=_MARKS_PER_AGE + 8))  # more than max_age_s apart
            millis = _id_key(entry_id)[0]
            if not marks or millis - marks[-1][0] >= self.max_age_s * 1000 / _MARKS_PER_AGE:
                marks.append((millis, seq))

    def _loss(self, stream: str, entry_id: bytes, emptied: bool = False) -> tuple[str, bytes, int, bool]:
        """What a loss took of this run's entries in ``stream``, whose last one written, ``entry_id``,
        is gone: (stream, entry_id, entries, exact). The entries after the newest of this run's that
        Redis still holds (by ``seq``, contiguous per stream and run), else those this run wrote since
        its last loss that ``maxlen`` and ``max_age_s`` keep; not ``exact`` where only bounded from
        below. ``emptied``: the stream was found empty, nothing to look through."""
        span, last_seq = self._span[stream], self._seq.get(stream, 0)
        exact = True
        if not emptied:
            older = []
            try:  # Redis's entries at or before the lost one: its restart kept an older snapshot, or AOF lost a second
                older = self.client.xrevrange(stream, max=entry_id, count=_SURVIVOR_LOOKBACK)
            except redis.RedisError as error:
                log.debug("cannot read what %s still holds (%s)", stream, error_summary(error))
                exact = False
            kept = next((fields for _, fields in older if _text(fields.get(b"run_id", b"")) == self.run_id), None)
            if kept is not None:
                try:
                    after = last_seq - int(kept.get(b"seq", b""))
                except ValueError:
                    after, exact = span, False
                if 0 < after < span:  # Redis trims oldest first: all after the one kept were kept too
                    return stream, entry_id, after, exact
            elif len(older) == _SURVIVOR_LOOKBACK:  # another run's entries all the way back: this run's unseen
                exact = False
        lost = span
        if stream in self.other_writers.values():  # its entries trimmed this run's too: only the last is sure
            return stream, entry_id, 1, False
        if lost > self.maxlen:  # MAXLEN ~ keeps at least maxlen, whole nodes more at Redis's choice
            lost, exact = self.maxlen, False
        if self.max_age_s is not None and self._redis_clock is not None:
            millis, seen = self._redis_clock
            cutoff = millis + (time.monotonic() - seen) * 1000 - self.max_age_s * 1000
            marks = self._marks.get(stream, ())
            young = next(((i, seq) for i, (at, seq) in enumerate(marks) if at >= cutoff), None)
            if young is None:  # older than max_age_s but its last: the age limit may have taken them anyway
                lost, exact = min(lost, int(_id_key(entry_id)[0] >= cutoff)), False
            elif not (young[0] == 0 and young[1] == last_seq - span + 1):  # not all of them young
                lost, exact = min(lost, last_seq - young[1] + 1), False
        return stream, entry_id, lost, exact

    def _oldest_kept(self) -> str | None:
        """The oldest entry ID ``max_age_s`` keeps now (a MINID), by Redis's clock as the last
        written entry's ID showed it (so up to a round trip behind); None before any is known."""
        if self.max_age_s is None or self._redis_clock is None:
            return None
        millis, seen = self._redis_clock
        now_ms = millis + int((time.monotonic() - seen) * 1000)
        return f"{max(0, now_ms - int(self.max_age_s * 1000))}-0"

    def _forget_aged(self) -> None:
        """With ``max_age_s``: a stream no batch wrote for about that long is empty, or gone, by design:
        its last entry is no longer looked for (an outage, eviction or deletion is not told from it)."""
        if self.max_age_s is None:
            return
        aged = time.monotonic() - (self.max_age_s - min(_SWEEP_S, self.max_age_s / 2))
        for stream, at in self._written_at.items():
            if at < aged:
                self._last_id.pop(stream, None)

    def _may_set_expiry(self, stream: str) -> bool | None:
        """Whether this user may PEXPIRE (asked on a stream the batch is about to write, whose time to
        live the batch sets again); warned once when not: ``max_age_s`` then holds only while the run
        lives. None while Redis refuses writes for now (MISCONF, NOREPLICAS): asked at the next batch."""
        try:
            self.client.pexpire(stream, int(self.max_age_s * 1000))
        except redis.exceptions.NoPermissionError as error:
            if key_refused(error):  # the XADD says so, with advice
                return True
            log.warning("Redis at %s refuses PEXPIRE (%s): sinks.redis.max_age_s holds while this run lives, but the "
                        "streams it stops writing keep their last entries for good once it ends — grant this user "
                        "+pexpire (README, Redis ACL)", self._where, error_summary(error))
            return False
        except redis.ResponseError as error:  # a proxy without it: likewise
            if refused_for_now(error):  # the batch meets the refusal too, and rides it out
                return None
            log.warning("Redis at %s refused PEXPIRE (%s): the streams this run stops writing keep their last entries "
                        "for good once it ends, whatever sinks.redis.max_age_s", self._where, error_summary(error))
            return False
        return True

    @property
    def expiry_refused(self) -> int:
        """Streams this run wrote that got no time to live (PEXPIRE refused): they keep their last
        entries past ``max_age_s`` once no one writes them."""
        return len(self._unexpired)

    def _sweep(self) -> None:
        """Every ``_SWEEP_S`` (a quarter of ``max_age_s`` when shorter): the streams this run wrote and no batch wrote since the last sweep (a
        camera down, or a source ended or removed) trimmed by age as a batch would, in one pipeline.
        Those of sources still in the run also get their time to live again: a camera down for
        longer than ``max_age_s`` keeps its (empty) streams and their consumer groups while the run
        lives. An ended source's stream idle for longer than ``max_age_s`` is expired by then, and no
        longer swept."""
        now = time.monotonic()
        if now - self._swept < self._sweep_s:
            return
        self._swept = now  # also when nothing can be swept yet: poll() then says the next sweep is a sweep away
        min_id = self._oldest_kept()
        if min_id is None or not self._connected or self._refusal is not None:
            return
        # not written for a sweep's time: its time to live, set at its last write, is renewed well before it runs out
        idle = [stream for stream, at in self._written_at.items() if at < now - self._sweep_s]
        if not idle:
            return
        pipe = self.client.pipeline(transaction=False)
        for stream in idle:
            pipe.xtrim(stream, minid=min_id, approximate=False)
            if stream not in self._ended_streams:
                if self._may_expire:
                    pipe.pexpire(stream, int(self.max_age_s * 1000))
            elif now - self._written_at[stream] > self.max_age_s + 2 * _SWEEP_S:
                del self._written_at[stream]
                self._last_id.pop(stream, None)
                self._ended_streams.discard(stream)
        try:
            pipe.execute(raise_on_error=False)  # a refusal was said at the batches
        except redis.RedisError as error:  # an outage: the next batch finds it
            log.debug("cannot trim the idle streams by age (%s)", error_summary(error))

    @property
    def _sweep_s(self) -> float:
        """How often idle streams are swept: every ``_SWEEP_S``, or a quarter of ``max_age_s`` when shorter."""
        return min(_SWEEP_S, self.max_age_s / 4)

    def _check_minid(self) -> None:
        """Trimming by age needs XTRIM MINID (Redis 6.2): an older Redis fails the start, in one line."""
        version = str(self._info("server").get("redis_version", ""))
        try:
            too_old = tuple(int(part) for part in version.split(".")[:2]) < (6, 2)
        except ValueError:  # INFO refused (ACL), or a server that names no version: the first XTRIM tells
            return
        if too_old:
            self.client.close()
            raise SinkError(f"Redis at {self._where} is version {version}, which cannot trim streams by age (XTRIM "
                            "MINID needs Redis 6.2 or newer) — upgrade Redis, or remove sinks.redis.max_age_s to keep "
                            "entries by sinks.redis.maxlen alone")

    def _refused(self, items: list[_Outgoing]) -> None:
        """Entries Redis refused were never written: dropped, and counted so."""
        for item in items:
            if item.result is not None:
                self.dropped[DROPPED_REFUSED] += 1
                if self.on_dropped is not None:
                    self.on_dropped([item.result], DROPPED_REFUSED)
            else:
                self.events_dropped += 1
                self._events_dropped_by[DROPPED_REFUSED] += 1

    def _first_reads(self, batch: list[_Outgoing]) -> None:
        """What the batch's streams that this run has not written yet hold, in one round trip (found
        reviewing: two round trips a stream, one after another, held the first batch of 20 cameras
        16 s on a Redis 0.4 s away): each one's last ``seq`` (0: none, or written without one; a
        producer allowed to write but not to read the stream starts at 0, warned once: readers then
        see the numbers go back, as after a stream deleted, and start counting afresh), and whether
        another run writes it (``_recent_writer``; a run writing events only still looks at the
        frames stream beside them)."""
        new = sorted({item.stream for item in batch} - self._seq.keys())
        beside = sorted({stream_name(self.stream_pattern, _text(item.fields.get("source", "")))
                         for item in batch if item.result is None} - self._writer_checked.keys() - set(new))
        if not new and not beside:
            return
        replies: list = [[] for _ in new + beside]
        if not self._unreadable:
            pipe = self.client.pipeline(transaction=False)
            for stream in new + beside:
                pipe.xrevrange(stream, count=2)
            try:
                replies = pipe.execute(raise_on_error=False)
            finally:
                pipe.reset()
        for stream, reply in zip(new + beside, replies):
            last = self._recent_writer(stream, self._entries_read(stream, reply))
            if stream in new:
                try:
                    self._seq[stream] = int(last[0][1].get(b"seq", 0)) if last else 0
                except (TypeError, ValueError):
                    self._seq[stream] = 0

    def _recent_writer(self, stream: str, last: list) -> list:
        """The stream's last two entries, ``last``; warns when the last is another run's, so recent
        that the run still writes (and is not its end)."""
        self._writer_checked[stream] = time.monotonic()
        if not last:
            return last
        entry_id, fields = last[0]
        other, source = _text(fields.get(b"run_id", b"")), _text(fields.get(b"source", b""))
        if _finished(fields):
            self._ended.add((other, source))
        elif other and other != self.run_id and (other, source) not in self._ended:
            age = time.time() + (self.clock_offset_s or 0.0) - _entry_time(entry_id)  # on Redis's clock
            gap = _entry_time(entry_id) - _entry_time(last[1][0]) if len(last) > 1 else _RECENT_MAX_S
            if age < min(_RECENT_MAX_S, max(_RECENT_MIN_S, 3 * gap)) and not self._said_ended(other, source):
                self._other_writer(stream, other, entry_id, f"its last entry {_text(entry_id)} is {max(age, 0):.1f} s old")
        return last

    def _said_ended(self, run_id: str, source: str) -> bool:
        """Whether ``run_id``'s ``ended`` (or ``failed``) state of ``source`` is among the newest
        entries of its events stream: a run that ended just before this one began (a restart, a
        notebook's cell run again) is no other writer, however recent its last frame."""
        for _, fields in self._last_entries(stream_name(self.events_pattern, source), _ENDED_LOOKBACK):
            if _text(fields.get(b"run_id", b"")) == run_id and _finished(fields):
                self._ended.add((run_id, source))
                return True
        return False

    def _writer_reads(self, streams: set[str]) -> tuple[Any, list]:
        """Every ``_WRITER_CHECK_S`` per stream: the reads that tell whether another publisher
        writes the same streams (``_writer_replies``), one pipeline for all of them (found probing
        a remote site: two reads a stream, one after another, took four of a batch's six round
        trips to a Redis 1.5 s away), with the streams they are for; (None, []) when none is due."""
        now = time.monotonic()
        due = []
        for stream in sorted(streams):
            written = self._last_id.get(stream)
            if written is None or now - self._writer_checked.get(stream, 0.0) < _WRITER_CHECK_S:
                continue
            self._writer_checked[stream] = now
            since, self._writer_since[stream] = self._writer_since.get(stream), written
            due.append((stream, since, written))
        if not due or self._unreadable:
            return None, []
        pipe = self.client.pipeline(transaction=False)
        for stream, since, _ in due:
            pipe.xrevrange(stream, count=1)
            if since is not None:
                pipe.xrange(stream, min=b"(" + since, count=_WRITER_WINDOW)
        return pipe, due

    def _writer_replies(self, due: list, replies: list) -> None:
        """An entry of another run among the first ``_WRITER_WINDOW`` after the one this run wrote
        last at the previous check, or as the stream's last entry, means another publisher writes
        the same stream. (The last entry alone missed a run writing as often as this one: at the
        check, the last was often ours.)"""
        answers = iter(replies)
        for stream, since, written in due:
            entries = self._entries_read(stream, next(answers))
            if since is not None:
                after = next(answers)
                if isinstance(after, Exception):  # a user without XRANGE: the last entry is checked still
                    log.debug("cannot read the entries of %s after %s (%s)", stream, _text(since), error_summary(after))
                else:
                    entries += after
            for entry_id, fields in entries:
                other = _text(fields.get(b"run_id", b""))
                if other and other != self.run_id and _id_key(entry_id) > _id_key(since or written):
                    self._other_writer(stream, other, entry_id, f"its entry {_text(entry_id)} came after this run's "
                                                      f"{_text(since or written)}")
                    break

    def _last_entries(self, stream: str, count: int) -> list:
        """The stream's newest ``count`` entries, newest first; [] when this user may not read them."""
        if self._unreadable:
            return []
        try:
            return self.client.xrevrange(stream, count=count)
        except redis.ResponseError as error:
            return self._entries_read(stream, error)

    def _entries_read(self, stream: str, reply: list | Exception) -> list:
        """An XREVRANGE's entries, or [] for its error: refused by the ACL (said once: nothing is
        read from then on), or not a stream (WRONGTYPE: the XADD says so, with advice)."""
        if isinstance(reply, redis.exceptions.NoPermissionError):
            if not self._unreadable:
                self._unreadable = True
                grant = (keys_grant(self._acl_keys) if key_refused(reply)
                         else "grant this user +xrevrange +xrange +xlen (README, Redis ACL)")
                log.warning("Redis at %s refuses XREVRANGE on %s (%s): seq starts at 1 on every run, and neither "
                            "entries lost in an outage nor another run writing the same streams can be detected — %s",
                            self._where, stream, error_summary(reply), grant)
            return []
        if isinstance(reply, redis.ResponseError):
            log.debug("cannot read the last entries of %s (%s)", stream, error_summary(reply))
            return []
        if isinstance(reply, Exception):  # (a connection error is raised by the pipeline, not returned)
            raise reply
        return reply

    def _other_writer(self, stream: str, other: str, entry_id: bytes, evidence: str) -> None:
        """Another run writes a stream this run writes (its entry ``entry_id``): warned once per
        other run."""
        newest = self._writer_seen.get(other)
        if newest is None or _id_key(entry_id) > newest[0]:  # it wrote since: seen writing now
            self._writer_seen[other] = (_id_key(entry_id), time.monotonic())
        if other in self.other_writers:
            return
        self.other_writers[other] = stream
        log.warning("another segstream run (%s) writes to %s, as this run (%s) does: %s — two pipelines publish the "
                    "same source names, so seq numbers collide and readers misread them; stop one of them, or give "
                    "each its own source names or sinks.redis.stream", other, stream, self.run_id or "?", evidence)

    @property
    def writing_now(self) -> int:
        """The other runs seen writing this run's streams within the last ``_WRITER_FORGET_S``: one
        that stopped (the old run of a rolling deploy) is no longer counted. Seen writing means an
        entry newer than the newest seen of it: a check may still find entries it wrote before it
        stopped."""
        now = time.monotonic()
        return sum(now - seen < _WRITER_FORGET_S for _, seen in list(self._writer_seen.values()))

    # --- outages ----------------------------------------------------------------------------

    def _disconnected(self, since: float) -> None:
        if not self._connected:  # told already (a status key's write, while a batch was on its way)
            self._down_since = since if self._down_since is None else min(self._down_since, since)
            if self._refusal is not None and self._refused_since is None:  # the batch was refused, though
                self._refusing()
            return
        self._connected = False
        self._down_since = since
        self._reachable.clear()
        # What waits from now on may wait long: keep stand-ins, not label maps.
        for item in self._queue:
            if item.result is not None:
                item.result = item.result.stand_in()
        if self._refusal is None:
            self._outage_dropped, self._backlog_full_warned = 0, False
            log.warning("lost Redis at %s (%s): publishing continues into a backlog of up to %d entries",
                        self._where, self._last_error, self.max_backlog)
            self._backoff.reset()
        elif self._refused_since is None:  # warned once; each retry after that goes on backing off
            self._refusing()
        # a key the batches write, which the user's ACL lets it XADD to
        key = self._queue[0].stream if self._queue else stream_name(self.stream_pattern, "probe")
        self._probe = NamedThread(target=self._reconnect, args=(key,), name="segstream-redis-reconnect", daemon=True)
        self._probe.start()

    def _refusing(self) -> None:
        """A refusal for now begins: said once."""
        self._outage_dropped, self._backlog_full_warned = 0, False
        self._refused_since = time.monotonic()
        log.warning("Redis at %s refuses writes: %s — publishing continues into a backlog of up to %d entries, "
                    "sent when Redis takes them again", self._where, self._refusal, self.max_backlog)
        self._backoff.reset()

    def _reconnect(self, key: str) -> None:
        """Background, with backoff and jitter until Redis answers a write or the publisher closes:
        ``XADD key 0-0``, which Redis refuses for its ID (writing nothing, making no key) — but only
        once it takes writes. A PING is answered while writes are paused (CLIENT PAUSE WRITE, and a
        FAILOVER's pause), so the backlog sent then hung again: one pause read as many outages."""
        warned = self._last_error  # the outage's warning said it already
        while not self._stopping.wait(self._backoff.next()):
            try:
                self.client.execute_command("XADD", key, "0-0", "probe", "1")
            except (redis.RedisError, OSError) as error:
                if isinstance(error, redis.ResponseError) and not _still_away(error):
                    break  # answered as a write is: its ID refused, or writes for now (the batch tells)
                # e.g. a Redis restarted with requirepass: said once as at start, not as redis-py's HELLO error
                self._last_error = self._connection_error(error)
                if is_credentials_refusal(error) and self._last_error != warned:
                    warned = self._last_error
                    log.warning("%s; publishing continues into the backlog, retrying", self._last_error)
            else:
                break  # (no Redis writes an entry 0-0)
        else:
            return
        self._reachable.set()

    def _connection_error(self, error: BaseException) -> str:
        """A failed write's or reconnect's error, in the start-up wording when it is the login."""
        return credentials_problem(self.client, error) if is_credentials_refusal(error) else error_summary(error)

    @property
    def down_seconds(self) -> float:
        """Seconds this run could not write (Redis unreachable or refusing writes), up to now."""
        with self._down_lock:
            since, down_s = self._down_since, self._down_s
        return down_s + (max(0.0, time.monotonic() - since) if since is not None else 0.0)

    def _reconnected(self) -> None:
        down = time.monotonic() - (self._down_since or time.monotonic())
        self._connected = True
        with self._down_lock:
            self._down_s += down
            self._down_since = None
        if self._probe is not None:
            self._probe.join()
            self._probe = None
        if self._refusal is not None:  # answering, but maybe still refusing: the next batch tells
            return
        self.reconnects += 1
        self._new_session = False  # checked here
        before, self._where = self._where, redis_address(self.client)
        if before != self._where:  # Sentinel named another master: a failover
            log.warning("Sentinel failed over after %.1f s: the master is now %s (was %s): sending a backlog of %d "
                        "entries%s", down, self._where, before, len(self._queue), self._shed_meanwhile())
        else:
            log.warning("Redis at %s is back after %.1f s: sending a backlog of %d entries%s",
                        self._where, down, len(self._queue), self._shed_meanwhile())
        self._warn_lost(self._entries_gone())

    def _shed_meanwhile(self) -> str:
        """For the line that ends an outage: what the full backlog dropped during it."""
        shed, self._outage_dropped, self._backlog_full_warned = self._outage_dropped, 0, False
        return f" ({shed} older ones were dropped, the backlog being full)" if shed else ""

    def _session_started(self, connection: redis.connection.AbstractConnection) -> None:
        """redis-py's hook for each connection it opens: log in as usual, and note the new session."""
        connection.on_connect()
        self._new_session = True

    def _entries_gone(self, skip: set[str] = frozenset()) -> list[tuple[str, bytes, int, bool]]:
        """After an outage, before the backlog is sent (its MAXLEN ~ may trim what is looked for):
        the streams that no longer hold the last entry this run wrote to them (XRANGE id id, one
        per stream), with what the loss took (``_loss``)."""
        self._forget_aged()
        asked = [(stream, entry_id) for stream, entry_id in self._last_id.items() if stream not in skip]
        if not asked:  # (skipped: this batch alone reaches MAXLEN, and its trimming may have taken the entry)
            return []
        pipe = self.client.pipeline(transaction=False)  # one round trip for them all: a far Redis's cost
        for stream, entry_id in asked:
            pipe.xrange(stream, entry_id, entry_id)
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.RedisError as error:  # gone again: nothing to tell
            log.debug("cannot check the entries kept (%s)", error_summary(error))
            return []
        finally:
            pipe.reset()
        gone = []
        for (stream, entry_id), kept in zip(asked, replies):
            if isinstance(kept, Exception):  # a user without XRANGE: nothing to tell
                log.debug("cannot check the entries kept in %s (%s)", stream, error_summary(kept))
                break
            if not kept:
                gone.append(self._loss(stream, entry_id))
        return gone

    def _check_eviction_policy(self) -> None:
        """Warn once when this Redis, full, deletes whole keys: a maxmemory with an allkeys-* policy
        (volatile-* ones evict only keys with a TTL, which these streams have with ``max_age_s`` alone)."""
        memory = self._info("memory")
        self._evicted_keys = self._info("stats").get("evicted_keys")
        if (server_us := self._info("server").get("server_time_usec")) is not None:
            self._clock(int(server_us) / 1e6, time.time())
        self._new_session = False  # the first connection: nothing written yet to check
        policy, limit = str(memory.get("maxmemory_policy", "")), int(memory.get("maxmemory", 0) or 0)
        evicts_streams = policy.startswith("allkeys-") or (self.max_age_s is not None and policy.startswith("volatile-"))
        if limit and evicts_streams:
            log.warning("Redis at %s has maxmemory %d MB with maxmemory-policy %s: once full it evicts whole keys, "
                        "these streams and every entry in them included, counted as data loss when seen — "
                        "set maxmemory-policy noeviction (then a full Redis refuses writes, and the backlog rides "
                        "it out; docs/OPERATIONS.md)", self._where, max(1, limit // 2**20), policy)

    def _clock(self, redis_s: float, local_s: float) -> None:
        """Note Redis's clock against this machine's (``redis_s`` read at ``local_s``): the least of
        the recent readings (a batch that waited, Redis busy, reads high); warned once when they are
        more than ``_CLOCK_SKEW_S`` apart."""
        self._clock_readings.append(redis_s - local_s)
        self.clock_offset_s = offset = min(self._clock_readings)
        if abs(offset) > _CLOCK_SKEW_S and not self._clock_warned:
            self._clock_warned = True
            log.warning("this machine's clock is %.1f s %s that of Redis at %s: entries' capture_ts and publish_ts "
                        "(this machine's) and their IDs (Redis's) disagree by that much (a reader's max_age_s judges "
                        "by Redis's clock where its user may run TIME, else by its own against capture_ts) — keep "
                        "the machines on NTP", abs(offset),
                        "behind" if offset > 0 else "ahead of", self._where)

    def _info(self, section: str) -> dict:
        """INFO <section>, or {} when this user may not run INFO (ACL) or Redis does not answer."""
        try:
            return self.client.info(section)
        except redis.RedisError as error:
            log.debug("cannot read INFO %s of Redis at %s (%s)", section, self._where, error_summary(error))
            return {}

    def _may_read_length(self, stream: str) -> bool:
        """Whether this user may run XLEN; warned once when not (ACL)."""
        try:
            self.client.xlen(stream)
        except redis.exceptions.NoPermissionError as error:
            log.warning("Redis at %s refuses XLEN on %s (%s): a stream Redis evicts (maxmemory-policy allkeys-*) or "
                        "someone deletes cannot be detected — grant this user +xlen (README, Redis ACL)",
                        self._where, stream, error_summary(error))
            return False
        except redis.ResponseError:  # not a stream (WRONGTYPE): the XADD says so, with advice
            pass
        return True

    def _warn_vanished(self, gone: list[tuple[str, bytes]]) -> None:
        """Streams this run wrote found empty: evicted when Redis evicted keys since this run connected
        (INFO's evicted_keys; one eviction may take several streams, found at different writes), else deleted."""
        if not gone:
            return
        before, evicted = self._evicted_keys, self._info("stats").get("evicted_keys")
        if before is not None and evicted is not None and evicted > before:
            policy = self._info("memory").get("maxmemory_policy", "?")
            cause = (f"Redis evicted it (maxmemory-policy {policy}; evicted_keys went from {before} when this run "
                     f"connected to {evicted}) — set maxmemory-policy noeviction on that Redis (docs/OPERATIONS.md)")
        else:
            cause = "it was deleted or emptied (DEL, XTRIM, FLUSHALL, or an eviction INFO does not show)"
        self._warn_lost([self._loss(stream, entry_id, emptied=True) for stream, entry_id in gone], cause)

    def _check_vanished_at_end(self) -> None:
        """At close: the streams this run wrote that Redis evicted after their last write (one XLEN each)."""
        self._forget_aged()
        streams = sorted(self._last_id)
        if not streams or not self._connected or self._refused_for_good:
            return
        pipe = self.client.pipeline(transaction=False)
        for stream in streams:
            pipe.xlen(stream)
        try:
            lengths = pipe.execute(raise_on_error=False)
        except redis.RedisError as error:
            log.debug("cannot check the streams' lengths at the end (%s)", error_summary(error))
            return
        self._warn_vanished([(stream, self._last_id[stream]) for stream, length in zip(streams, lengths)
                             if length == 0])

    def _warn_lost(self, gone: list[tuple[str, bytes, int, bool]], cause: str | None = None) -> None:
        """Redis lost entries this run counted as written (per stream: the last one's ID, how many,
        whether exactly): warn per stream, and count the loss and its entries."""
        if not gone:
            return
        taken: Counter[str] = Counter()
        for stream, entry_id, count, exact in gone:
            del self._last_id[stream]  # told once per loss: the next one is of entries written after it
            taken["events" if stream in self._event_streams else "frames"] += count
            if stream not in self._event_streams:
                self.frames_lost_of[source_of(self.stream_pattern, stream)] += count
            self.entries_lost_at_least |= not exact
            entries = f"{'' if exact else 'at least '}{count} entr{'y' if count == 1 else 'ies'}"
            if cause is not None:
                log.warning("Redis at %s lost entries: %s was found empty, so %s this run wrote to it up to %s, "
                            "counted as written, are gone: %s", self._where, stream, entries, _text(entry_id), cause)
                continue
            why = ("it restarted without its data (no persistence) or was flushed" if not self._sentinel else
                   "the master Sentinel promoted had not received them (replication is asynchronous), or it was "
                   "flushed")
            log.warning("Redis at %s lost entries while it was away: %s no longer holds the last entry this run "
                        "wrote to it (%s), so %s counted as written are gone — %s",
                        self._where, stream, _text(entry_id), entries, why)
        sources = {source_of(self.events_pattern if stream in self._event_streams else self.stream_pattern, stream)
                   for stream, *_ in gone}
        if self._status is not None:  # their status keys went with them: written again, final ones too
            self._status.lost(sources)
        self.data_losses += 1
        self.entries_lost.update(taken)
        if self.on_data_lost is not None:
            self.on_data_lost(taken["frames"], taken["events"])
        self._say_settings_again({stream for stream, *_ in gone})

    def _say_settings_again(self, emptied: set[str]) -> None:
        """The settings events a loss took (the only place a source's classes and model are said):
        written again as they were, ``frame`` and all, ahead of the entries still waiting (after the
        batch being written, when that found the loss), so that every entry Redis holds has a
        settings event at or before its frame (one that batch says anew is left)."""
        if self._final:
            return
        sending = [self._queue[i] for i in range(self._sending)]
        for source, said in sorted(self._settings.items()):
            if said.stream not in emptied or any(_is_settings(item) and item.stream == said.stream for item in sending):
                continue
            again = _Outgoing(said.stream, {k: v for k, v in said.fields.items() if k != "seq"}, said.nbytes, None,
                              time.monotonic())
            self._queue.insert(self._sending, again)
            self._queued_bytes += again.nbytes

    def _report(self) -> None:
        """What this run published, per stream, with the newest entry as a reader decodes it; of
        more than ``REPORTED_STREAMS`` streams, one line of them all (each stream's at debug level:
        found probing 64 cameras, a stop printed 64 lines of about 300 characters before the summary)."""
        if not self._connected:
            return
        many = len(self.per_stream) > REPORTED_STREAMS
        level = logging.DEBUG if many else logging.INFO
        age = f", max age {self.max_age_s:g} s" if self.max_age_s is not None else ""
        lengths = []
        for stream, count in sorted(self.per_stream.items()):
            try:  # XLEN and XREVRANGE alone: a reader's start would ask EXISTS, which a publisher need not have
                lengths.append(length := self.client.xlen(stream))
                if not log.isEnabledFor(level):
                    continue
                newest = [(_text(entry_id), from_wire(fields, decode_masks=False))
                          for entry_id, fields in self.client.xrevrange(stream, count=1)]
            except (redis.RedisError, SegstreamError):  # a user without XREVRANGE: the report is shorter
                continue
            line = f"published {count} entries to {stream} (XLEN {length}, MAXLEN ~{self.maxlen}{age})"
            if newest:
                line += f"; newest: {summary_line(*newest[0])}"
            log.log(level, line)
        if many:
            names = sorted(self.per_stream)
            spread = (f"XLEN {min(lengths)}, " if lengths and min(lengths) == max(lengths)
                      else f"XLEN {min(lengths)}-{max(lengths)}, " if lengths else "")
            log.info("published %d entries to %d streams (%s ... %s; %sMAXLEN ~%d%s); each stream's line, with its "
                     "newest entry, at --log-level debug", sum(self.per_stream.values()), len(names), names[0],
                     names[-1], spread, self.maxlen, age)


def _connect_waiting(wait_s: float, stopping: Callable[[], bool], url: str, password: str | None,
                     **options) -> redis.Redis:
    """``connect_redis``, tried again each second for up to ``wait_s`` while nothing answers
    (said once) and ``stopping()`` is false; wrong credentials, a bad URL or TLS settings fail at once."""
    deadline, said = time.monotonic() + wait_s, False
    while True:
        try:
            client = connect_redis(url, password, **options)
            if said:
                log.warning("Redis at %s answers after %.1f s", redis_address(client), wait_s - (deadline - time.monotonic()))
            return client
        except RedisUnreachable as error:
            left = deadline - time.monotonic()
            if stopping():
                raise
            if left <= 0:
                if not wait_s:
                    raise
                raise RedisUnreachable(str(error).replace(" — ", f" (waited {wait_s:g} s: sinks.redis.start_wait_s) — ", 1)) from None
            if not said:
                said = True
                log.warning("%s; waiting up to %g s for it (sinks.redis.start_wait_s)", str(error).split(" — ")[0], wait_s)
            for _ in range(10):  # a stop is seen within 0.1 s
                if stopping():
                    break
                time.sleep(min(0.1, max(left / 10, 0.0)))


def _client_name(run_id: str) -> str:
    """The connection's name (CLIENT LIST): which run of which program it is."""
    return f"segstream-publisher:{run_id}" if run_id else "segstream-publisher"


def _entry_time(entry_id: bytes | str) -> float:
    """When Redis added an entry (its id's milliseconds), in Unix seconds."""
    return int(_text(entry_id).partition("-")[0]) / 1000


def _id_key(entry_id: bytes | str) -> tuple[int, int]:
    millis, _, sequence = _text(entry_id).partition("-")
    return int(millis), int(sequence or 0)


def _finished(fields: dict) -> bool:
    """An entry that says its run is over: the state event ``ended`` or ``failed``."""
    if fields.get(b"event") != b"state":
        return False
    try:
        return parse_json(fields.get(b"data", b"{}")).get("state") in ("ended", "failed")
    except (ValueError, AttributeError):
        return False


def _still_away(error: redis.ResponseError) -> bool:
    """A reply that says Redis does not serve commands yet: a script or function runs too long
    (BUSY), a replica that lost its master (MASTERDOWN), or the login (a Redis back with a password)."""
    return (isinstance(error, redis.exceptions.MasterDownError) or str(error).startswith("BUSY ")
            or is_credentials_refusal(error))


def _never_sent(error: BaseException) -> bool:
    """Whether a failed write failed while connecting, before a byte of it went out: redis-py says
    "Error 111 connecting to ..." or "Timeout connecting to server" then (and nothing else)."""
    return "connecting to" in str(error)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _size(fields: dict[str, bytes | str]) -> int:
    return sum(len(k) + len(v) for k, v in fields.items())


def _wire_size(fields: dict[str, bytes | str]) -> int:
    """The bytes of an entry's field names and values as Redis receives them (text as UTF-8)."""
    return sum(len(k.encode() if isinstance(k, str) else k) + len(v.encode() if isinstance(v, str) else v)
               for k, v in fields.items())


def _check_transactions(client: redis.Redis, acl_keys: str, status: bool = False) -> None:
    """Batches go out as MULTI/EXEC: an ACL user without them is refused now, not at the first
    batch (found probing: the run died then, without its report). A Redis that refuses writes for
    now (full, cannot persist: it refuses even a PING queued in MULTI) is no reason not to start:
    the first batch finds the refusal and the run rides it out, as it would a minute later."""
    check = client.pipeline(transaction=True)
    check.ping()
    try:
        check.execute()
    except redis.RedisError as error:  # no permission, or a proxy without transactions
        if refused_for_now(error):
            return
        where = redis_address(client)
        client.close()
        raise SinkError(f"Redis at {where} refused MULTI/EXEC: {error_summary(error)} — "
                        f"{refusal_advice(error, acl_keys, status=status)}") from None


def publisher_grant(acl_keys: str, aged: bool = False, status: bool = False) -> str:
    """What to grant a publishing user, its keys given as ACL key patterns (``acl_key_patterns``);
    ``aged``: with sinks.redis.max_age_s, which trims (XTRIM) and expires (PEXPIRE) them too;
    ``status``: with the status keys (sinks.redis.status_key), which it SETs."""
    names, rules = (("XRANGE, XLEN, XTRIM and PEXPIRE", "+xlen +xtrim +pexpire") if aged else
                    ("XRANGE and XLEN", "+xlen"))
    if status:
        names, rules = names.replace(" and ", ", ") + " on the stream keys, and SET on the status keys", rules + " +set"
    else:
        names += " on the stream keys"
    return (f"grant this user XADD, MULTI, EXEC, XREVRANGE, {names}, and the connection "
            f"commands (ACL: +xadd +multi +exec +xrevrange +xrange {rules} +@connection {acl_keys})")


def publisher_key_patterns(stream: str, events: str, status: str | None) -> str:
    """The ACL key patterns of every key a publisher writes: its streams, and its status keys."""
    return acl_key_patterns(stream, events, *([status] if status is not None else []))


def status_grant(pattern: str) -> str:
    """What to grant a publishing user for the status keys of ``pattern``."""
    return f"grant this user SET on them (ACL: +set {acl_key_patterns(pattern)})"


def keys_grant(acl_keys: str) -> str:
    """The advice for a user whose ACL key patterns exclude the streams (its commands are not the problem)."""
    return (f"this user's ACL key patterns exclude the stream keys: grant it {acl_keys} (ACL SETUSER <user> "
            f"{acl_keys}), or set sinks.redis.stream and events_stream to keys it may write")


def refused_for_now(error: Exception) -> bool:
    """A refusal for now (full, read-only, cannot persist), not for good."""
    return isinstance(error, _PASSING_REFUSALS) or error_summary(error).startswith(_PASSING_PREFIXES)


def cluster_refusal(error: Exception) -> bool:
    """A reply only a Redis Cluster node gives (CROSSSLOT, MOVED, ASK, TRYAGAIN, CLUSTERDOWN): a
    batch's keys hash to many slots, which one MULTI/EXEC of a cluster cannot write."""
    return (isinstance(error, (redis.exceptions.ClusterCrossSlotError, redis.exceptions.AskError,
                               redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError))
            and not isinstance(error, redis.exceptions.MasterDownError))  # a replica's, which redis-py files there


CLUSTER_ADVICE = ("Redis Cluster is not supported: point sinks.redis.url at a standalone Redis, or at Sentinel "
                  "(redis+sentinel://)")


def refusal_advice(error: Exception, acl_keys: str, setting: str = "stream", status: bool = False) -> str:
    """What to do about ``error``; ``acl_keys``: the publisher's keys' ACL key patterns; ``setting``:
    the sinks.redis key that names the stream refused (stream, or events_stream); ``status``: the
    publisher writes status keys too."""
    text = str(error)
    if cluster_refusal(error):
        return CLUSTER_ADVICE
    if key_refused(error):
        return keys_grant(acl_keys)
    if isinstance(error, redis.exceptions.NoPermissionError):  # redis-py keeps NOPERM's text, not the word
        if "'xtrim'" in text.lower():
            return "grant this user XTRIM too (ACL: +xtrim), with which sinks.redis.max_age_s trims streams by age"
        return publisher_grant(acl_keys, status=status)
    if text.startswith("WRONGTYPE"):
        return f"that key is not a stream: delete it or change sinks.redis.{setting}"
    if isinstance(error, redis.exceptions.OutOfMemoryError) or text.startswith("OOM"):
        return ("Redis is out of memory (maxmemory), and refuses XADD before its MAXLEN trims anything: trim the "
                "stream by hand (XTRIM <stream> MAXLEN <n>) or raise maxmemory (a lower sinks.redis.maxlen or "
                "max_age_s takes effect only once writes go through again)")
    if isinstance(error, redis.exceptions.ReadOnlyError) or text.startswith("READONLY"):
        return ("the server is a read-only replica: point sinks.redis.url at the primary, or at its sentinels "
                "(redis+sentinel://, which follow a failover)")
    if error_summary(error).startswith("MISCONF"):
        return ("Redis cannot save its RDB snapshots (its disk full, or its dir not writable: see the Redis log) and "
                "refuses writes until a save succeeds: free space where it saves; its next save (BGSAVE) ends the "
                "refusal")
    if error_summary(error).startswith("NOREPLICAS"):
        return ("the master has fewer replicas in sync than its min-replicas-to-write asks: start or reconnect its "
                "replicas; it takes writes again once they catch up")
    if text.startswith("NOAUTH"):
        return "set the password (REDIS_PASSWORD)"
    if text.lower().startswith("unknown command"):
        return ("this Redis has renamed or disabled it (rename-command in its config), or is too old for it: the "
                "publisher needs it under its own name")
    return "check the Redis server log"
