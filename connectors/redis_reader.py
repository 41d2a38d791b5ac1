"""The reader we ship for consumers of segstream streams, and ``segstream tail``."""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections import Counter
from typing import Iterator, TextIO

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from segstream.connectors.errors import SinkError
from segstream.connectors.redis_wire import from_wire
from segstream.models.results import FrameResult

_TAIL_BLOCK_MS = 2000


def connect_redis(
    url: str,
    password: str | None = None,
    *,
    socket_timeout: float | None = 5.0,
    client_name: str | None = None,
    retries: int = 0,
    hint: str = "start Redis or fix sinks.redis.url",
) -> redis.Redis:
    """A client for ``url`` that has answered PING; failures become one-line ``SinkError``s.

    The client returns bytes (the ``idmap`` field is binary). ``retries`` are redis-py's own
    reconnect attempts per command, with a short backoff.
    """
    options = dict(
        socket_connect_timeout=5.0,
        socket_timeout=socket_timeout,
        health_check_interval=30,
        client_name=client_name,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), retries),
    )
    if not url.startswith("unix:"):
        options["socket_keepalive"] = True  # TCP only; unix socket connections refuse the option
    if password is not None:
        options["password"] = password
    try:
        client = redis.Redis.from_url(url, **options)
    except ValueError as error:
        raise SinkError(f"invalid Redis URL {url!r}: {error} — use redis://host:port/db") from None
    where = redis_address(client)
    try:
        client.ping()
    except redis.AuthenticationError as error:
        client.close()
        raise SinkError(
            f"Redis at {where} refused the credentials: {error_summary(error)} — "
            "set the password (REDIS_PASSWORD) or fix the URL"
        ) from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
        client.close()
        raise SinkError(f"cannot reach Redis at {where}: {error_summary(error)} — {hint}") from None
    return client


def redis_address(client: redis.Redis) -> str:
    """Where ``client`` connects, without credentials: redis://host:port or unix://path."""
    options = client.get_connection_kwargs()
    if options.get("path"):
        return f"unix://{options['path']}"
    return f"redis://{options.get('host', 'localhost')}:{options.get('port', 6379)}"


class StreamReader:
    """Reads decoded entries from one stream, plainly (XREAD) or as part of a consumer group.

    ``start`` is where a plain reader begins, and where a new group begins: "0" for the oldest
    entry still kept, "$" for entries added from now on, or an entry id. With a group, entries
    this consumer was given but never acked (say, before a crash) come again first; acknowledge
    handled entries with ``ack``. Use a client with ``decode_responses=False``.
    """

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        group: str | None = None,
        consumer: str | None = None,
        *,
        start: str = "0",
        decode_masks: bool = True,
    ) -> None:
        options = client.get_connection_kwargs()
        if options.get("decode_responses"):
            raise SinkError(
                "the Redis client decodes responses to text, but entries carry binary fields — "
                "create it with decode_responses=False"
            )
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.decode_masks = decode_masks
        self._socket_timeout = options.get("socket_timeout")
        self._pending_cursor: str | None = None
        if group is None:
            # Resolve "$" now so that entries added between two reads are not skipped.
            self._position = self._newest_id() if start == "$" else start
        else:
            self._pending_cursor = "0"
            try:
                client.xgroup_create(stream, group, id=start, mkstream=True)
            except redis.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    @classmethod
    def from_url(
        cls,
        url: str,
        stream: str,
        group: str | None = None,
        consumer: str | None = None,
        *,
        password: str | None = None,
        max_block_ms: int = 5000,
        start: str = "0",
        decode_masks: bool = True,
    ) -> StreamReader:
        """Connect to ``url`` with a socket timeout that outlasts reads blocking up to ``max_block_ms``."""
        # redis-py's default 5 s socket timeout would cut a longer blocking XREAD short with an error.
        client = connect_redis(
            url, password, socket_timeout=max_block_ms / 1000 + 5.0, client_name="segstream-reader",
            retries=3, hint="start Redis or fix the URL",
        )
        return cls(client, stream, group, consumer, start=start, decode_masks=decode_masks)

    def read(self, count: int = 100, block_ms: int | None = None) -> list[tuple[str, FrameResult]]:
        """Up to ``count`` entries in stream order; waits up to ``block_ms`` when none are there.

        ``block_ms`` None returns at once; the wait is shortened to fit the client's socket timeout.
        """
        if self.group is not None and self._pending_cursor is not None:
            reply = self.client.xreadgroup(
                self.group, self.consumer, {self.stream: self._pending_cursor}, count=count
            )
            entries = self._entries(reply)
            if entries:
                self._pending_cursor = entries[-1][0]
                return self._decoded(entries)
            self._pending_cursor = None
        block = self._fitted_block(block_ms)
        if self.group is None:
            reply = self.client.xread({self.stream: self._position}, count=count, block=block)
            entries = self._entries(reply)
            if entries:
                self._position = entries[-1][0]
        else:
            reply = self.client.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=count, block=block
            )
            entries = self._entries(reply)
        return self._decoded(entries)

    def ack(self, ids: list[str]) -> int:
        """Mark entries of this group as handled; returns how many were pending."""
        if self.group is None:
            raise ValueError("ack needs a reader created with a consumer group")
        if not ids:
            return 0
        return int(self.client.xack(self.stream, self.group, *ids))

    def latest(self) -> tuple[str, FrameResult] | None:
        """The newest entry (XREVRANGE + - COUNT 1), or None for an empty stream."""
        newest = self.client.xrevrange(self.stream, "+", "-", count=1)
        if not newest:
            return None
        entry_id, fields = newest[0]
        return _text_id(entry_id), from_wire(fields, decode_masks=self.decode_masks)

    def follow(
        self, block_ms: int = 1000, count: int = 100, stop: threading.Event | None = None
    ) -> Iterator[tuple[str, FrameResult]]:
        """Yield entries as they arrive, until ``stop`` is set (checked at least every ``block_ms``)."""
        while stop is None or not stop.is_set():
            yield from self.read(count=count, block_ms=block_ms)

    def _newest_id(self) -> str:
        newest = self.client.xrevrange(self.stream, "+", "-", count=1)
        return _text_id(newest[0][0]) if newest else "0-0"

    def _fitted_block(self, block_ms: int | None) -> int | None:
        if block_ms is None or self._socket_timeout is None:
            return block_ms
        # Leave a fifth of the socket timeout for the reply to arrive after the server stops waiting.
        longest = max(1, int(self._socket_timeout * 1000 * 0.8))
        return longest if block_ms == 0 else min(block_ms, longest)

    def _entries(self, reply) -> list[tuple[str, dict]]:
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3: {stream: [[entries]]}; RESP2: [[stream, entries]]
            batches = [entries for nested in reply.values() for entries in nested]
        else:
            batches = [entries for _, entries in reply]
        return [(_text_id(entry_id), fields) for batch in batches for entry_id, fields in batch]

    def _decoded(self, entries: list[tuple[str, dict]]) -> list[tuple[str, FrameResult]]:
        decoded = []
        trimmed = []
        for entry_id, fields in entries:
            if not fields:
                trimmed.append(entry_id)  # a pending entry that MAXLEN trimmed away meanwhile
                continue
            decoded.append((entry_id, from_wire(fields, decode_masks=self.decode_masks)))
        if trimmed and self.group is not None:
            self.ack(trimmed)
        return decoded


def tail(stream: str, url: str, count: int | None, follow: bool, out: TextIO = sys.stdout) -> int:
    """Print one line per entry of ``stream``: the last ``count`` (all when None), then new ones
    while ``follow``; returns the number of entries printed. Ctrl-C ends following quietly."""
    client = connect_redis(
        url, socket_timeout=_TAIL_BLOCK_MS / 1000 + 5.0, client_name="segstream-tail",
        hint="start Redis or fix --url",
    )
    printed = 0
    try:
        if not follow and not client.exists(stream):
            raise SinkError(_missing_stream_message(client, stream))
        if count is None:
            start = "0"
        else:
            newest = client.xrevrange(stream, "+", "-", count=count) if count > 0 else []
            for entry_id, fields in reversed(newest):
                _print_entry(out, _text_id(entry_id), from_wire(fields, decode_masks=False))
                printed += 1
            start = _text_id(newest[0][0]) if newest else "$"
        reader = StreamReader(client, stream, start=start, decode_masks=False)
        if count is None:
            while batch := reader.read(count=500):
                for entry_id, entry in batch:
                    _print_entry(out, entry_id, entry)
                    printed += 1
        if follow:
            for entry_id, entry in reader.follow(block_ms=_TAIL_BLOCK_MS):
                _print_entry(out, entry_id, entry)
                printed += 1
    except KeyboardInterrupt:
        pass
    except (redis.ConnectionError, redis.TimeoutError) as error:
        raise SinkError(
            f"lost Redis at {redis_address(client)}: {error_summary(error)} — check that it still runs"
        ) from None
    finally:
        client.close()
    return printed


def summary_line(entry_id: str, entry: FrameResult) -> str:
    """``<id> <source> frame=<i> pts_s=<s> segs=<n> [label:count, ...] latency=<ms>ms``."""
    labels = Counter(str(label) for label in entry.segments.labels)
    pts = "-" if entry.pts_seconds is None else f"{entry.pts_seconds:.3f}"
    latency_ms = (entry.publish_ts - entry.capture_ts) * 1000
    listed = ", ".join(f"{label}:{n}" for label, n in labels.most_common())
    return (
        f"{entry_id} {entry.source} frame={entry.index} pts_s={pts} "
        f"segs={len(entry.segments)} [{listed}] latency={latency_ms:.1f}ms"
    )


def _print_entry(out: TextIO, entry_id: str, entry: FrameResult) -> None:
    out.write(summary_line(entry_id, entry) + "\n")
    out.flush()


def _missing_stream_message(client: redis.Redis, stream: str) -> str:
    found = sorted(_text_id(key) for key in client.scan_iter(match="*", count=1000, _type="stream"))
    known = ", ".join(found[:10]) + (" ..." if len(found) > 10 else "") if found else "none"
    return (
        f"no stream {stream!r} at {redis_address(client)} (streams there: {known}) — "
        "check the name, or follow it to wait for entries"
    )


def _text_id(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def error_summary(error: BaseException | None) -> str:
    """The first line of an exception's message, for one-line user errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
