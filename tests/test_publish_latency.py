"""An entry leaves for Redis within the publisher's batching delay even when no frame follows,
and the latency a run reports is measured when entries are written."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from segstream.connectors.embedded_redis import EmbeddedRedis
from segstream.connectors.frames import Frame
from segstream.connectors.redis_reader import StreamReader
from segstream.connectors.redis_sink import RedisPublisher
from segstream.pipeline.runtime import Runtime
from tests.conftest import ColourSegmenter


class OneFrameThenQuiet:
    """A live camera that sends one frame, then nothing until ``release`` is set."""

    name, live = "cam", True

    def __init__(self):
        self.release = threading.Event()
        self.sent_at = None

    def frames(self):
        image = np.zeros((48, 64, 3), np.uint8)
        image[10:20, 10:20] = (255, 0, 0)
        self.sent_at = time.time()
        yield Frame("cam", 0, image, 0, None, 0.0, self.sent_at)
        self.release.wait(30)

    def close(self):
        self.release.set()


@pytest.fixture
def redis_server(tmp_path):
    with EmbeddedRedis(tmp_path / "redis") as server:
        yield server


def test_a_lone_frame_is_in_redis_within_the_batching_delay(redis_server):
    delay_s = 0.05
    client = redis_server.client()
    publisher = RedisPublisher(client, pipeline_size=32, max_batch_delay_s=delay_s)
    source = OneFrameThenQuiet()
    runtime = Runtime([source], ColourSegmenter(), [publisher], batch_size=4, max_wait_ms=5, progress=None)
    runner = threading.Thread(target=runtime.run)
    runner.start()
    try:
        reader = StreamReader(redis_server.client(), "segstream:cam:frames")
        deadline = time.monotonic() + 20
        entries = []
        while not entries and time.monotonic() < deadline:
            entries = reader.read(count=1, block_ms=100)
        # Still quiet: no second frame pushed the first one out.
        assert entries and not source.release.is_set()
        (_, entry), = entries
        waited = entry.publish_ts - entry.capture_ts
        # Decoding to publishing of one tiny frame plus at most one batching delay; the slack
        # covers a loaded machine, the old behaviour held the entry until the run ended.
        assert waited < delay_s + 2.0
    finally:
        source.release.set()
        runner.join(30)
    report = runtime.report(1.0)
    assert report.published == 1
    # The run's latency is the written entry's, not the hand-off to the publisher.
    assert report.latency_ms_max == pytest.approx(1000 * waited, abs=1.0)


def test_the_publisher_says_when_it_next_needs_a_poll(redis_server):
    from segstream.models.results import FrameResult

    publisher = RedisPublisher(redis_server.client(), pipeline_size=32, max_batch_delay_s=10.0)
    written = []
    publisher.on_written = written.extend
    assert publisher.poll() is None  # nothing buffered
    result = FrameResult("cam", 0, 4, 4, np.full((4, 4), -1, np.int32), capture_ts=time.time())
    publisher.publish(result)
    left = publisher.poll()
    assert left is not None and 9.0 < left <= 10.0 and not written
    publisher.max_batch_delay_s = 0.0
    assert publisher.poll() is None and written[0].publish_ts is not None
    assert redis_server.client().xlen("segstream:cam:frames") == 1
    publisher.close()


def test_events_go_to_the_sources_events_stream(redis_server):
    from segstream.connectors.redis_wire import event_from_wire
    from segstream.models.results import Event

    client = redis_server.client()
    publisher = RedisPublisher(client, pipeline_size=32, max_batch_delay_s=0.0)
    publisher.publish_event(Event("cam", "state", 12.5, {"state": "reconnecting", "attempt": np.int64(2)}))
    # due at once: sent; the next call wanted is the source's status key's refresh (docs/SCHEMA.md)
    assert publisher.poll() == pytest.approx(5.0 / 3, abs=0.2) and publisher.backlog == 0
    (entry_id, fields), = client.xrange("segstream:cam:events")
    event = event_from_wire(fields)
    assert (event.source, event.kind, event.ts, event.data) == ("cam", "state", 12.5, {"state": "reconnecting", "attempt": 2})
    assert client.xlen("segstream:cam:frames") == 0
    publisher.close()
