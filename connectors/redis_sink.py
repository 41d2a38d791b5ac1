"""Publishes each processed frame as one entry of its source's Redis stream (docs/SCHEMA.md)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import redis

from segstream.connectors.embedded_redis import EmbeddedRedis
from segstream.connectors.errors import ConfigError, SinkError
from segstream.connectors.redis_reader import StreamReader, connect_redis, error_summary, redis_address, summary_line
from segstream.connectors.redis_wire import (
    DEFAULT_EVENTS_PATTERN,
    DEFAULT_STREAM_PATTERN,
    MASK_ENCODINGS,
    event_to_wire,
    stream_name,
    to_wire,
)
from segstream.connectors.sink import WrittenCallback
from segstream.models.results import Event, FrameResult

_FIRST_BACKOFF_S = 0.2
log = logging.getLogger(__name__)


class RedisPublisher:
    """The Redis sink: ``XADD <stream> MAXLEN ~ maxlen * <fields>`` per frame, pipelined.

    Entries wait in a buffer until ``pipeline_size`` of them are there, the oldest has waited
    ``max_batch_delay_s`` (checked by ``publish`` and ``poll``, which the runtime calls when that
    delay runs out even if no frame follows), or ``flush()`` is called; a batch goes out as one
    MULTI/EXEC round trip. ``publish_ts`` is stamped when the batch is sent, and the written
    results go to ``on_written``. A batch that cannot be written after ``retries`` reconnect
    attempts (backoff 0.2 s, doubling) is counted in ``failed`` and raises ``SinkError``. One
    thread publishes.
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
        retries: int = 4,
        events_pattern: str = DEFAULT_EVENTS_PATTERN,
    ) -> None:
        if mask_encoding not in MASK_ENCODINGS:
            raise ConfigError(
                f"sinks.redis.mask_encoding is {mask_encoding!r} — use one of {', '.join(MASK_ENCODINGS)}"
            )
        if "{source}" not in stream_pattern:
            raise ConfigError(
                f"sinks.redis.stream is {stream_pattern!r} — it must contain {{source}} "
                "(one stream per source), e.g. segstream:{source}:frames"
            )
        try:
            stream_name(stream_pattern, "source")
        except (KeyError, IndexError, ValueError):
            raise ConfigError(
                f"sinks.redis.stream {stream_pattern!r} may use only the {{source}} placeholder"
            ) from None
        if maxlen < 1 or pipeline_size < 1:
            raise ConfigError("sinks.redis.maxlen and sinks.redis.pipeline_size must be at least 1")
        self.client = client
        self.stream_pattern = stream_pattern
        self.events_pattern = events_pattern
        self.maxlen = maxlen
        self.mask_encoding = mask_encoding
        self.pipeline_size = pipeline_size
        self.max_batch_delay_s = max_batch_delay_s
        self.retries = retries
        self.published = 0
        self.failed = 0
        self.batches_sent = 0
        self.per_stream: Counter[str] = Counter()
        self.on_written: WrittenCallback | None = None
        # (stream, fields, the result it carries or None for an event)
        self._buffer: list[tuple[str, dict[str, bytes | str], FrameResult | None]] = []
        self._oldest_buffered = 0.0
        self._embedded: EmbeddedRedis | None = None
        self._closed = False
        self.connected = True  # False from a failed write until one succeeds again

    @property
    def backlog(self) -> int:
        """Entries buffered and not yet written."""
        return len(self._buffer)

    @classmethod
    def from_config(
        cls,
        url: str | None,
        password: str | None,
        *,
        stream_pattern: str = DEFAULT_STREAM_PATTERN,
        maxlen: int = 10000,
        mask_encoding: str = "rle",
        pipeline_size: int = 32,
        max_batch_delay_s: float = 0.02,
        events_pattern: str = DEFAULT_EVENTS_PATTERN,
        embedded_dir: Path | None = None,
    ) -> RedisPublisher:
        """Connect to the Redis at ``url``, or with no url start an embedded one for this run.

        The embedded Redis listens on 127.0.0.1 only and ignores ``password``; it stops on
        ``close()``, keeping its data only when ``embedded_dir`` is given.
        """
        embedded = None
        if url is None:
            embedded = EmbeddedRedis(embedded_dir)
            url, password = embedded.url, None
        try:
            # Our own retries (with backoff, counted) replace redis-py's per-command ones.
            client = connect_redis(url, password, socket_timeout=5.0, client_name="segstream-publisher")
            publisher = cls(
                client, stream_pattern, maxlen, mask_encoding, pipeline_size,
                max_batch_delay_s=max_batch_delay_s, events_pattern=events_pattern,
            )
        except BaseException:
            if embedded is not None:
                embedded.close()
            raise
        if embedded is not None:
            publisher._embedded = embedded
            example = stream_name(stream_pattern, "<source>")
            log.info(
                "no sinks.redis.url set, so an embedded Redis runs until this run ends\n"
                f"  connect: redis-cli -p {embedded.port}   or   redis-cli -s {embedded.socket_path}\n"
                f"  watch:   segstream tail {example} --url {embedded.url}"
            )
        return publisher

    def publish(self, result: FrameResult) -> None:
        """Queue the entry for ``result``; sends the batch once it is full or old enough."""
        if self._closed:
            raise SinkError("the Redis publisher is closed — publish before close()")
        fields = to_wire(result, self.mask_encoding)
        if not self._buffer:
            self._oldest_buffered = time.monotonic()
        self._buffer.append((stream_name(self.stream_pattern, result.source), fields, result))
        if len(self._buffer) >= self.pipeline_size:
            self._send()
        else:
            self.poll()

    def publish_event(self, event: Event) -> None:
        """Queue an entry for the source's events stream; it leaves with the next batch."""
        if self._closed:
            raise SinkError("the Redis publisher is closed — publish before close()")
        if not self._buffer:
            self._oldest_buffered = time.monotonic()
        self._buffer.append((stream_name(self.events_pattern, event.source), event_to_wire(event), None))
        if len(self._buffer) >= self.pipeline_size:
            self._send()

    def poll(self) -> float | None:
        """Send the buffer if its oldest entry has waited ``max_batch_delay_s``; the seconds
        until that is due otherwise, None with nothing buffered."""
        if not self._buffer:
            return None
        left = self._oldest_buffered + self.max_batch_delay_s - time.monotonic()
        if left > 0:
            return left
        self._send()
        return None

    def flush(self) -> None:
        """Send whatever is buffered."""
        if self._buffer:
            self._send()

    def close(self) -> None:
        """Flush, then release the connection (and stop the embedded Redis if this run started it)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.flush()
            self._report()
        finally:
            self.client.close()
            if self._embedded is not None:
                self._embedded.close()

    def _report(self) -> None:
        """What this run published, per stream, with the newest entry as a reader decodes it."""
        for stream, count in sorted(self.per_stream.items()):
            try:
                length = self.client.xlen(stream)
                newest = StreamReader(self.client, stream, decode_masks=False).latest()
            except redis.RedisError:
                continue
            line = f"published {count} entries to {stream} (XLEN {length}, MAXLEN ~{self.maxlen})"
            if newest is not None:
                line += f"; newest: {summary_line(*newest)}"
            log.info(line)

    def _send(self) -> None:
        batch, self._buffer = self._buffer, []
        last_error: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(_FIRST_BACKOFF_S * 2 ** (attempt - 1))
            now = time.time()
            stamp = repr(now)
            pipe = self.client.pipeline(transaction=True)
            for stream, fields, result in batch:
                if result is not None:
                    fields["publish_ts"] = stamp
                pipe.xadd(stream, fields, maxlen=self.maxlen, approximate=True)
            try:
                results = pipe.execute(raise_on_error=False)
            except (redis.ConnectionError, redis.TimeoutError) as error:
                last_error = error
                self.connected = False
                continue
            except redis.RedisError as error:
                self.failed += len(batch)
                raise SinkError(
                    f"Redis at {redis_address(self.client)} refused a batch of {len(batch)} entries: "
                    f"{error_summary(error)} — {_advice(error)}"
                ) from None
            finally:
                pipe.reset()
            self.batches_sent += 1
            self.connected = True
            refused = [(stream, r) for (stream, _, _), r in zip(batch, results) if isinstance(r, Exception)]
            written = [
                result for (_, _, result), r in zip(batch, results) if result is not None and not isinstance(r, Exception)
            ]
            self.published += len(batch) - len(refused)
            self.per_stream.update(
                stream for (stream, _, result), r in zip(batch, results) if result is not None and not isinstance(r, Exception)
            )
            for result in written:
                result.publish_ts = now
            if self.on_written is not None and written:
                self.on_written(written)
            if refused:
                self.failed += len(refused)
                stream, error = refused[0]
                raise SinkError(
                    f"Redis refused {len(refused)} of {len(batch)} entries (first, on {stream!r}: "
                    f"{error_summary(error)}) — {_advice(error)}"
                )
            return
        self.failed += len(batch)
        raise SinkError(
            f"cannot write to Redis at {redis_address(self.client)} after {self.retries + 1} attempts: "
            f"{error_summary(last_error)}; {len(batch)} entries lost ({self.failed} in this run) — "
            "check that Redis is running and reachable"
        )


def _advice(error: Exception) -> str:
    text = str(error)
    if text.startswith("WRONGTYPE"):
        return "that key is not a stream: delete it or change sinks.redis.stream"
    if text.startswith("OOM"):
        return "Redis is out of memory: lower sinks.redis.maxlen or raise its maxmemory"
    if text.startswith(("NOAUTH", "NOPERM")):
        return "set the password (REDIS_PASSWORD) or grant this user XADD"
    return "check the Redis server log"

