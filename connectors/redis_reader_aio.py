"""The consumer SDK for asyncio (``segstream.client.aio``), on ``redis.asyncio``.

    from segstream.client import aio

    async with await aio.connect("redis://localhost:6379/0") as client:
        async for entry in client.frames("cam0"):          # or ["cam0", "cam1"], "lobby-*"
            print(entry.frame, entry.segments.labels)

The same reads as ``segstream.client``'s, run by the same steps (``redis_reader``'s
``_SubscriptionSteps``, ``_FanInSteps``, ``follow_newest``'s): the same entries (``Entry``,
``EventEntry``), start positions, ``trimmed`` / ``lost`` / ``malformed`` counts, outages ridden
out with a warning and backoff. Only the driver differs: each command is awaited. Cancelling the
task that iterates ends the iteration; ``close()`` (or leaving ``async with``) closes the
connections.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Generic

import redis
import redis.asyncio

from segstream.connectors.errors import ReaderError, SinkError, WireFormatError
from segstream.connectors.redis_connection import SentinelAuth, TlsFiles, connect_redis_async, redis_address
from segstream.connectors.redis_reader import (
    _MAX_BLOCK_MS, _REFUSED_LOGIN, _UNREACHABLE, Entry, EventEntry, _boot_time, _ClientBase, _Command, _Emit,
    REPLY_GRACE_S, _FanInSteps, _fresh, _InOrderSteps, _key_in, _named_entry, _at_steps, _one_stream, _Outage, _patience, _Pause, _StillDown,
    _Stopped, _SubscriptionSteps, _wait_within, _Item,
    _warn_if_missing_steps, reader_options,
)
from segstream.connectors.redis_wire import (
    DEFAULT_STREAM_PATTERN, SourceStatus,
)

log = logging.getLogger("segstream.client")

__all__ = ["AsyncEntry", "AsyncEventEntry", "Client", "FanIn", "InOrder", "Subscription", "connect"]

# This reader's entries: their ack() is awaited (``await entry.ack()``).
AsyncEntry = Entry[Awaitable[int]]
AsyncEventEntry = EventEntry[Awaitable[int]]


async def connect(
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
    """``segstream.client.connect`` for asyncio: the same URLs, credentials, TLS and Sentinel
    settings, and the same one-line ``SinkError`` when Redis is unreachable or refuses now."""
    client = await connect_redis_async(url, password, username=username, tls=tls, sentinel=sentinel,
                                       protocol=protocol, **reader_options(max_block_ms))
    return Client(client, stream_pattern=stream_pattern, events_pattern=events_pattern,
                  reconnect_max_s=reconnect_max_s, give_up_after_s=give_up_after_s, status_pattern=status_pattern)


class Client(_ClientBase["Subscription[AsyncEntry] | FanIn[AsyncEntry]",
                         "Subscription[AsyncEventEntry] | FanIn[AsyncEventEntry]", "InOrder"]):
    """``segstream.client.Client`` on a ``redis.asyncio.Redis``: every read awaited, riding out
    connection losses the same way; ``stop()`` ends iterations, ``close()`` also the connections."""

    redis: redis.asyncio.Redis

    def __init__(self, redis_client: redis.asyncio.Redis, *, stream_pattern: str = DEFAULT_STREAM_PATTERN,
                 events_pattern: str | None = None, reconnect_max_s: float = 5.0,
                 give_up_after_s: float | None = None, status_pattern: str | None = None):
        super().__init__(redis_client, stream_pattern=stream_pattern, events_pattern=events_pattern,
                         reconnect_max_s=reconnect_max_s, give_up_after_s=give_up_after_s,
                         status_pattern=status_pattern)
        self._stopped = asyncio.Event()

    async def newest(self, source: str | None = None, *, stream: str | None = None,
                     max_age_s: float | None = None) -> AsyncEntry | None:
        """As ``segstream.client.Client.newest``."""
        name = _one_stream(self.stream_pattern, source, stream)
        if self._stopped.is_set():
            return None
        try:
            reply = await self.call(self.redis.xrevrange, name, "+", "-", count=1)
            if reply and max_age_s is not None and self._clock.due():
                sent = _boot_time()
                try:
                    self._clock.took(await self.call(self.redis.time), sent)
                except ReaderError as error:  # refused (an ACL without +time), or busy
                    self._clock.took(None, sent, error)
        except _Stopped:
            return None
        entry = _named_entry(reply[0], name) if reply else None
        return entry if entry is not None and _fresh(entry, max_age_s, self._clock) else None

    async def status(self, source: str, *, patience_s: float | None = None) -> SourceStatus | None:
        """As ``segstream.client.Client.status``: the source's status key, None without one; with
        ``patience_s``, a Redis outage longer than that raises ``SinkError``."""
        key = self._status_key(source)
        if self._stopped.is_set():
            return None
        try:
            value = await self.call(self.redis.get, key, key=key, patience_s=patience_s)
        except _Stopped:
            return None
        except _StillDown:
            raise self._status_unknown(source, patience_s) from None
        return None if value is None else self._status_read(key, value)

    async def statuses(self, sources: str | list[str] = "*", *,
                       malformed: Callable[[str, WireFormatError], None] | None = None,
                       ) -> dict[str, SourceStatus | None]:
        """As ``segstream.client.Client.statuses``: the status of each source of a list, or of
        every source whose status key a glob of names matches."""
        if self._stopped.is_set():
            return {}
        try:
            names, values = await self._driven(self._statuses_steps(sources))
        except _Stopped:
            return {}
        return self._statuses_read(names, values, malformed)

    async def _driven(self, steps: Iterator, key: str | None = None) -> Any:
        """As ``segstream.client.Client._driven``, each command awaited."""
        reply = None
        while True:
            try:
                step = steps.send(reply)
            except StopIteration as done:
                return done.value
            step, named = (step, key) if isinstance(step, _Command) else step
            reply = await self.call(getattr(self.redis, step.name), *step.args, key=named, **step.kwargs)

    async def at(self, ts: float, source: str | None = None, *, stream: str | None = None,
                 within_s: float | None = None, by: str = "capture_ts") -> AsyncEntry | None:
        """As ``segstream.client.Client.at``: the frame entry captured nearest ``ts`` (``by``
        ``capture_ts``, or the camera's ``sender_ts``)."""
        name = _one_stream(self.stream_pattern, source, stream, "at")
        try:
            return await self._driven(_at_steps(name, ts, within_s, by), name)
        except _Stopped:
            return None

    async def follow_newest(self, source: str | list[str] | None = None, *, stream: str | list[str] | None = None,
                            block_ms: int = 1000, max_age_s: float | None = None, idle_s: float | None = None,
                            discover_s: float = 2.0) -> AsyncIterator[AsyncEntry | None]:
        """As ``segstream.client.Client.follow_newest``: only the newest entry each time there is
        a newer one (None after ``idle_s`` without one), until ``stop()`` or cancellation."""
        names, pattern = self._newest_targets(source, stream, idle_s)
        begun = time.monotonic()
        for name in names:
            if idle_s is None:
                await self.warn_if_missing(name)
                continue
            # a check only: with a watchdog, it may take half of idle_s (a Redis that hangs answers nothing)
            if (left := begun + idle_s / 2 - time.monotonic()) <= 0:
                break
            try:
                await asyncio.wait_for(self.warn_if_missing(name), left)
            except asyncio.TimeoutError:
                log.debug("could not check that %s exists within %g s", name, idle_s / 2)
        steps = self._follow_newest_steps(names, pattern, block_ms, max_age_s, idle_s, discover_s, begun)
        reply, outage, yielded = None, _Outage(), begun
        try:
            while not self._stopped.is_set():
                step = steps.send(reply)
                reply = None
                if isinstance(step, _Emit):
                    yielded = time.monotonic()
                    yield step.value
                elif isinstance(step, _Pause):
                    if await self._pause(step.seconds):
                        return
                else:
                    while True:  # Redis away: the watchdog's None still comes every idle_s
                        try:
                            reply = await self.call(getattr(self.redis, step.name), *step.args,
                                                    key=step.kwargs.get("match"), outage=outage,
                                                    patience_s=_patience(idle_s, yielded), **step.kwargs)
                            break
                        except ReaderError as error:
                            if step.name != "time":
                                raise
                            reply = error  # refused TIME (or busy): this machine's clock judges meanwhile
                            break
                        except _StillDown:
                            yielded = time.monotonic()
                            yield None
        except _Stopped:
            return
        finally:
            steps.close()

    async def warn_if_missing(self, stream: str) -> None:
        await _run(_warn_if_missing_steps(stream, redis_address(self.redis)), self.redis)

    def stop(self) -> None:
        """End iterations and waits for Redis (from the event loop's thread)."""
        self._stopped.set()

    async def close(self) -> None:
        self.stop()
        await self.redis.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def call(self, command: Callable, *args, on_reconnect: Callable[[], None] | None = None,
                   key: str | None = None, outage: _Outage | None = None, patience_s: float | None = None,
                   **kwargs) -> Any:
        """Await one Redis command, riding out connection losses as ``segstream.client.Client.call``."""
        outage = outage or self._outage  # one outage, warned once, whichever calls meet it
        deadline = None if patience_s is None else time.monotonic() + patience_s
        while True:
            try:
                if deadline is None:
                    reply = await command(*args, **kwargs)
                else:  # a Redis that hangs (stopped, partitioned) answers nothing: no socket timeout's 10 s
                    # wait (found probing as a robot's integrator: status(patience_s=0.5) took 10 s)
                    within = max(0.0, deadline - time.monotonic()) + REPLY_GRACE_S
                    try:
                        reply = await asyncio.wait_for(command(*args, **kwargs), within)
                    except asyncio.TimeoutError:  # (not OSError before Python 3.11)
                        raise redis.TimeoutError(f"no answer within {within:.1f} s") from None
            except _REFUSED_LOGIN as error:
                raise self._credentials_refused(error) from None
            except _UNREACHABLE as error:
                self._failed(error, outage)
                if await self._pause(_wait_within(self._backoff.next(), deadline)):
                    raise _Stopped() from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise _StillDown() from None
                continue
            except redis.ResponseError as error:
                raise self._refused(error, key or _key_in(args)) from None
            if outage.since is not None:
                self._recovered(outage.since)
                outage.since = None
                if on_reconnect is not None:
                    on_reconnect()
            return reply

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``; True when ``stop()`` ended the wait."""
        try:
            await asyncio.wait_for(self._stopped.wait(), seconds)
        except TimeoutError:
            return False
        return True


async def _run(steps: Iterator, redis_client: redis.asyncio.Redis,
               pause: Callable[[float], Any] | None = None) -> Any:
    """``redis_reader._run`` with each command awaited."""
    reply, error = None, None
    try:
        while True:
            try:
                step = steps.send(reply) if error is None else steps.throw(error)
            except StopIteration as done:
                return done.value
            reply, error = None, None
            if isinstance(step, _Pause):
                if pause is not None and await pause(step.seconds):
                    raise _Stopped()
                continue
            try:
                reply = await getattr(redis_client, step.name)(*step.args, **step.kwargs)
            except Exception as failed:  # noqa: BLE001 - handed to the steps, which raise what they do not expect
                error = failed
    finally:
        steps.close()


class _Feed(Generic[_Item]):
    """Reading on ``redis.asyncio``: what ``Subscription`` and ``FanIn`` add to their steps."""

    client: Client
    _started = False

    async def read(self, count: int | None = None, block_ms: int | None = None) -> list[_Item]:
        """Up to ``count`` entries in stream order; waits up to ``block_ms`` when none are there
        (None: returns at once). A malformed entry raises ``WireFormatError`` as the sync reader's."""
        count = count or self.count
        if self._is_stopped():
            return []
        try:
            if not self._started:
                await self.client.call(self._run, self._start_steps, key=self._about)
                self._started = True
            if self._held:
                return self._take_held(count)
            return await self.client.call(self._run, self._read_steps, count, block_ms,
                                          on_reconnect=self._reconnected, key=self._about)
        except _Stopped:
            return []

    async def __aiter__(self) -> AsyncIterator[_Item]:
        while not self._is_stopped():
            for entry in await self.read(self.count, self.block_ms):
                yield entry

    def _run(self, make_steps: Callable[..., Iterator], *args):
        return _run(make_steps(*args), self.client.redis, self._pause)

    async def _pause(self, seconds: float) -> bool:
        return await self.client._pause(seconds) or self._is_stopped()

    def _is_stopped(self) -> bool:
        return self._stop.is_set() or self.client._stopped.is_set()


class Subscription(_Feed[_Item], _SubscriptionSteps[_Item]):
    """``segstream.client.Subscription`` for ``async for``: one stream, plainly or in a consumer
    group (``await entry.ack()``), the same bookkeeping (``trimmed``, ``lost``, ``malformed``,
    ``claimed``)."""

    async def ack(self, *entries: Entry[Any] | EventEntry[Any] | str) -> int:
        """Acknowledge entries (or entry ids) of this group; returns how many were pending."""
        ids = self._ids(entries)
        if not ids:
            return 0
        return int(await self.client.call(self.client.redis.xack, self.stream, self.group, *ids))

    async def pending(self) -> int:
        """Entries of the group delivered but not acknowledged, all consumers together."""
        if self.group is None:
            raise SinkError("pending() needs a subscription with a consumer group")
        info = await self.client.call(self.client.redis.xpending, self.stream, self.group)
        return int(info["pending"])


class FanIn(_Feed[_Item], _FanInSteps[_Item]):
    """``segstream.client.FanIn`` for ``async for``: many streams, or a glob, in one XREAD."""


class InOrder(_Feed[Any], _InOrderSteps):
    """``segstream.client.InOrder`` for ``async for``: a source's frames and events in one order."""


Client._subscription_class = Subscription
Client._fan_in_class = FanIn
Client._in_order_class = InOrder
