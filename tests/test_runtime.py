import threading

import numpy as np
import pytest

from segstream.connectors.errors import SinkError, SourceError
from segstream.connectors.file_source import FileSource
from segstream.connectors.redis_wire import decode_entry
from segstream.pipeline.runtime import Runtime
from segstream.pipeline.sinks import FilesSink, read_entries
from tests.conftest import ColourSegmenter


class CollectingSink:
    """Keeps every published pair; records flush and close."""

    def __init__(self):
        self.pairs = []
        self.flushed = self.closed = False

    def publish(self, frame, prediction):
        self.pairs.append((frame, prediction))

    def flush(self):
        self.flushed = True

    def close(self):
        self.closed = True

    def indices(self, source):
        return [f.index for f, _ in self.pairs if f.source == source]


class FailingSink(CollectingSink):
    def publish(self, frame, prediction):
        if frame.index == 5:
            raise SinkError("disk full")
        super().publish(frame, prediction)


def test_offline_sources_process_every_frame_in_order(clip, segmenter):
    sink = CollectingSink()
    sources = [FileSource("a", str(clip)), FileSource("b", str(clip))]
    report = Runtime(sources, segmenter, [sink], batch_size=4, queue_size=2, progress=None).run()
    assert sink.indices("a") == list(range(40)) and sink.indices("b") == list(range(40))
    assert report.dropped == 0 and report.decoded == report.published == 80
    assert report.model_frames == 80 and report.balanced and not report.stopped
    assert sink.flushed and sink.closed
    frame, prediction = sink.pairs[0]
    assert prediction.label_map.shape == (frame.height, frame.width) and prediction.segments[0].label == "square"


def test_live_source_drops_oldest_when_the_model_is_slow(fast_clip):
    sink = CollectingSink()
    source = FileSource("cam", str(fast_clip), realtime=True)
    report = Runtime([source], ColourSegmenter(delay_s=0.15), [sink], batch_size=2, queue_size=2, progress=None).run()
    assert report.sources["cam"].decoded == 30
    assert report.dropped_frames["cam"] > 0
    assert report.decoded == report.published + report.dropped
    indices = sink.indices("cam")
    assert indices == sorted(indices) and indices[-1] == 29  # the newest frame survives


def test_stop_mid_run_drains_and_balances(clip):
    sink = CollectingSink()
    sources = [FileSource("loop", str(clip), loop=True), FileSource("live", str(clip), realtime=True, loop=True)]
    runtime = Runtime(sources, ColourSegmenter(delay_s=0.02), [sink], batch_size=4, queue_size=4, progress=None)
    threading.Timer(0.5, runtime.stop).start()
    report = runtime.run()
    assert report.stopped and report.balanced
    assert report.published == len(sink.pairs) > 0
    assert sink.indices("loop") == list(range(len(sink.indices("loop"))))
    assert sink.flushed and sink.closed


def test_batches_mix_frames_of_two_sources(clip):
    segmenter = ColourSegmenter(delay_s=0.05)
    sink = CollectingSink()
    sources = [FileSource("a", str(clip), max_frames=12), FileSource("b", str(clip), max_frames=12)]
    Runtime(sources, segmenter, [sink], batch_size=4, max_wait_ms=200, queue_size=8, progress=None).run()
    source_of = {id(f.image): f.source for f, _ in sink.pairs}
    mixed = [b for b in segmenter.batches if {source_of[id(image)] for image in b} == {"a", "b"}]
    assert len(mixed) >= 1
    assert all(len(b) <= 4 for b in segmenter.batches)


def test_max_frames_caps_each_source(clip, segmenter):
    sink = CollectingSink()
    report = Runtime([FileSource("a", str(clip))], segmenter, [sink], max_frames=9, progress=None).run()
    assert report.published == 9 and sink.indices("a") == list(range(9))


def test_sink_error_stops_the_run_and_is_raised(clip, segmenter):
    sink = FailingSink()
    source = FileSource("a", str(clip), loop=True)
    with pytest.raises(SinkError, match="disk full"):
        Runtime([source], segmenter, [sink], progress=None).run()
    assert sink.closed


def test_source_error_drains_the_others_and_is_raised(clip, segmenter):
    class DisconnectingSource:
        """Three frames of the clip, then the camera goes away."""

        name, live = "flaky", False

        def frames(self):
            for frame in FileSource(self.name, str(clip), max_frames=3).frames():
                yield frame
            raise SourceError("camera flaky disconnected")

        def close(self):
            pass

    sink = CollectingSink()
    runtime = Runtime([DisconnectingSource(), FileSource("ok", str(clip), loop=True)], segmenter, [sink], progress=None)
    with pytest.raises(SourceError, match="disconnected"):
        runtime.run()
    assert sink.indices("flaky") == [0, 1, 2]
    assert runtime.reports["ok"].published == runtime.reports["ok"].decoded > 0
    assert sink.flushed and sink.closed


def test_segmenter_error_is_raised(clip):
    class Broken(ColourSegmenter):
        def segment(self, images):
            raise ValueError("model exploded")

    sink = CollectingSink()
    with pytest.raises(ValueError, match="model exploded"):
        Runtime([FileSource("a", str(clip), loop=True)], Broken(), [sink], progress=None).run()
    assert sink.closed


def test_files_sink_writes_wire_entries_per_source(clip, segmenter, tmp_path):
    sink = FilesSink(tmp_path / "out", model_name=segmenter.name, mask_encoding="idmap")
    sources = [FileSource("a", str(clip), max_frames=5), FileSource("b", str(clip), max_frames=3)]
    Runtime(sources, segmenter, [sink], progress=None).run()
    entries = [decode_entry(e) for e in read_entries(tmp_path / "out" / "a.jsonl")]
    assert [e.frame_index for e in entries] == list(range(5))
    assert len(list(read_entries(tmp_path / "out" / "b.jsonl"))) == 3
    expected = ColourSegmenter._one(next(FileSource("a", str(clip)).frames()).image)
    np.testing.assert_array_equal(entries[0].label_map, expected.label_map)
    assert entries[0].model == "colour-threshold" and entries[0].segments[0].label == "square"
