"""A typed consumer of segstream.client, sync and asyncio: checked by tests/test_type_checking.py (never run)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from typing_extensions import assert_type  # what a test asks of the checker: this type, not Any

from segstream.client import Entry, EventEntry, FrameResult, SegstreamError, connect
from segstream.client import aio


def read_sync(url: str) -> float:
    client = connect(url)
    total = 0.0
    for entry in client.frames("cam0", group="g", consumer="c"):
        frame = assert_type(entry.frame, int)
        source = assert_type(entry.source, str)
        capture = assert_type(entry.capture_ts, float)
        latency = assert_type(entry.latency_s, float | None)
        labels: np.ndarray = entry.segments.labels
        label_map = assert_type(entry.label_map, np.ndarray)
        result = assert_type(entry.result, FrameResult)
        assert_type(result.label_map, np.ndarray | None)
        acked = assert_type(entry.ack(), int)
        total += capture + frame + acked + len(source) + labels.size + label_map.size + result.width
        if latency is not None:
            total += latency
    for event in client.events(["cam0", "cam1"]):
        kind = assert_type(event.kind, str)
        details = assert_type(event.data, dict[str, Any])
        total += len(kind) + len(details)
    newest: Entry | None = client.newest("cam0")
    batch = assert_type(client.frames("cam0").read(), list[Entry])
    first: EventEntry | None = next(iter(client.events("cam0")), None)
    client.close()
    return total + len(batch) + (newest is None) + (first is None)


async def read_async(url: str) -> int:
    count = 0
    async with await aio.connect(url) as client:
        async for entry in client.frames("cam0", group="g", consumer="c"):
            count += assert_type(entry.frame, int) + assert_type(await entry.ack(), int)
        async for event in client.events("cam*"):
            count += len(assert_type(event.kind, str)) + assert_type(await event.ack(), int)
        entries: list[aio.AsyncEntry] = await client.frames("cam0").read()
        count += len(entries)
        # found probing as a robot's integrator: these were typed as the sync client's entries
        newest: aio.AsyncEntry | None = await client.newest("cam0", max_age_s=1.0)
        async for fresh in client.follow_newest("cam0", idle_s=1.0):
            newest = assert_type(fresh, "aio.AsyncEntry | None")
            break
        count += newest is None
        count += len(await client.statuses("cam*"))
    return count


def main() -> None:
    try:
        print(read_sync("redis://localhost:6379/0"), asyncio.run(read_async("redis://localhost:6379/0")))
    except SegstreamError as error:
        raise SystemExit(error.exit_code) from None
