"""The consumer SDK for asyncio: ``segstream.client``'s reads, awaited (``redis.asyncio``).

    from segstream.client import aio

    async def main():
        async with await aio.connect("redis://localhost:6379/0") as client:   # same options as connect()
            async for entry in client.frames("cam0"):     # or ["cam0", "cam1"], "lobby-*"; start="0"
                print(entry.frame, entry.segments.labels)
            newest = await client.newest("cam0")
            async for entry in client.follow_newest("cam*"): ...
            async for event in client.events("cam0"): ...
            async for item in client.frames_and_events("cam0"): ...   # each event after its frame
            async for entry in client.frames("cam0", group="analytics", consumer="w1"):
                await entry.ack()

Entries are ``segstream.client.Entry`` / ``EventEntry`` (typed ``AsyncEntry`` / ``AsyncEventEntry``:
their ``ack()`` is awaited); start positions, trimmed / lost /
malformed counts and outage handling are the sync reader's. Cancelling the iterating task ends
the iteration; ``close()`` or leaving ``async with`` closes the connections.
"""

from segstream.connectors.redis_reader_aio import (
    AsyncEntry, AsyncEventEntry, Client, FanIn, InOrder, Subscription, connect,
)

__all__ = ["AsyncEntry", "AsyncEventEntry", "Client", "FanIn", "InOrder", "Subscription", "connect"]
