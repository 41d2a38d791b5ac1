"""The consumer SDK: read what segstream publishes, with redis-py, numpy and zstandard only.

    from segstream.client import connect

    client = connect("redis://localhost:6379/0")          # rediss://, password=, username=, tls=
    # behind Sentinel: connect("redis+sentinel://s1:26379,s2:26379/mymaster", sentinel=SentinelAuth(password=...))
    for entry in client.frames("cam0"):                   # every new frame entry, in order
        things = entry.segments[entry.segments.isthing]   # columns: ids, labels, track_ids, boxes, centroids...
        print(entry.frame, things.labels, things.track_ids)   # -1 (NO_TRACK): not tracked yet
        tracked = things.track_ids[things.track_ids >= 0]
        mask = entry.track_mask(int(tracked[0])) if len(tracked) else None

    # Many cameras, one reader: one blocking XREAD, entries in arrival order, entry.source says
    # whose; a glob finds cameras added later (looked for every discover_s) from their first entry.
    for entry in client.frames(["cam0", "cam1"]): ...    # or client.frames("lobby-*"), frames("*")

    newest = client.newest("cam0")                        # only the newest entry (XREVRANGE COUNT 1)
    status = client.status("cam0")                        # its run's word on it now: state, last frame;
                                                          # None: no run publishes it (killed, stuck)
    for entry in client.follow_newest("cam0"): ...        # newest-only mode: never a backlog (also "cam*")
    for event in client.events("cam0", start="0"): ...    # track_started, track_ended, state, ...
    for item in client.frames_and_events("cam0"): ...     # both in one order: each event after its frame
    for entry in read_file("runs/out/cam0.jsonl"): ...    # the files sink's (or a batch's) entries, the same

    # Consumer groups: each entry to one consumer, acked once handled; entries a crashed
    # consumer left pending for claim_idle_ms are taken over by the others.
    for entry in client.frames("cam0", group="analytics", consumer="worker-1", claim_idle_ms=30_000):
        ...
        entry.ack()

Installed by the full ``segstream`` distribution and, without torch, by ``segstream-client``
(``pip install ./clients/python``). docs/SCHEMA.md describes the wire format.
"""

from segstream.connectors.errors import ReaderError, SegstreamError, SinkError, WireFormatError
from segstream.connectors.redis_connection import SentinelAuth, TlsFiles
from segstream.connectors.redis_reader import (
    Client, Entry, EventEntry, FanIn, InOrder, StreamReader, Subscription, connect, read_file, tail,
)
from segstream.connectors.redis_wire import SCHEMA_VERSION, EncodedMasks, SourceStatus, from_wire, read_entry
from segstream.models.results import NO_TRACK, Event, FrameResult, Level, Segments

__all__ = [
    "Client", "EncodedMasks", "Entry", "Event", "EventEntry", "FanIn", "FrameResult", "InOrder", "Level", "NO_TRACK",
    "ReaderError",
    "SCHEMA_VERSION", "SegstreamError",
    "Segments", "SentinelAuth", "SinkError", "SourceStatus", "StreamReader", "Subscription", "TlsFiles", "WireFormatError", "connect", "from_wire",
    "read_entry", "read_file", "tail",
]
