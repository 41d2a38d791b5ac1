"""The runtime and its engine: order, batching, back-pressure, overlap, failures, shutdown."""

import logging
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from segstream.connectors.errors import ConfigError, SinkError, SourceError
from segstream.connectors.file_source import FileSource
from segstream.connectors.files_sink import FilesSink, read_entries
from segstream.connectors.frames import Frame
from segstream.connectors.redis_wire import from_wire
from segstream.pipeline.engine import Batcher
from segstream.pipeline.metrics import STAGES, RunMetrics
from segstream.pipeline.runtime import Runtime
from tests.conftest import CollectingSink, ColourSegmenter


class FailingSink(CollectingSink):
    def publish(self, result):
        if result.index == 5:
            raise SinkError("disk full")
        super().publish(result)


def test_offline_sources_process_every_frame_in_order(clip, segmenter):
    sink = CollectingSink()
    sources = [FileSource("a", str(clip)), FileSource("b", str(clip))]
    report = Runtime(sources, segmenter, [sink], batch_size=4, queue_size=2, progress=None).run()
    assert sink.indices("a") == list(range(40)) and sink.indices("b") == list(range(40))
    assert report.dropped == 0 and report.decoded == report.published == 80
    assert report.model_frames == 80 and report.balanced and not report.stopped
    assert sink.flushed and sink.closed
    result = sink.results[0]
    assert result.label_map.shape == (result.height, result.width) and result.segments.labels[0] == "square"
    assert result.model == "colour-threshold" and result.pts is not None and result.capture_ts > 0


class _UnevenSegmenter(ColourSegmenter):
    """Batches take 0 to 30 ms at random, so with several workers later batches finish first."""

    def __init__(self):
        super().__init__()
        self.rng = np.random.default_rng(0)
        self.lock = threading.Lock()
        self.running = self.most_running = 0

    def forward(self, prepared):
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
            delay = float(self.rng.uniform(0, 0.03))
        time.sleep(delay)
        with self.lock:
            self.running -= 1
        return super().forward(prepared)


@pytest.mark.parametrize("workers", [1, 2])
def test_each_source_keeps_its_order_when_many_interleave(clip, workers):
    # Small queues make batches of frames from several sources interleave; with two workers,
    # batches also finish out of order.
    sink = CollectingSink()
    segmenter = _UnevenSegmenter()
    sources = [FileSource(f"s{i}", str(clip), max_frames=15) for i in range(5)]
    Runtime(sources, segmenter, [sink], batch_size=3, queue_size=2, max_inflight=3, model_workers=workers,
            progress=None).run()
    assert segmenter.most_running == workers
    sources_seen = [r.source for r in sink.results]
    assert len(set(sources_seen[:10])) > 1, "results of the sources must interleave for the test to mean anything"
    for i in range(5):
        assert sink.indices(f"s{i}") == list(range(15))


def test_stage_timestamps_are_monotone_per_frame(clip, segmenter):
    sink = CollectingSink()
    Runtime([FileSource("a", str(clip), max_frames=10)], segmenter, [sink], progress=None).run()
    for result in sink.results:
        stamps = [result.times[name] for name in STAGES[:-1]]  # "published" is the sink's to set
        assert stamps == sorted(stamps), result.times


def test_live_source_drops_oldest_when_the_model_is_slow(fast_clip):
    sink = CollectingSink()
    source = FileSource("cam", str(fast_clip), realtime=True)
    report = Runtime([source], ColourSegmenter(delay_s=0.15), [sink], batch_size=2, queue_size=2, progress=None).run()
    assert report.sources["cam"].decoded == 30
    assert report.dropped_frames["cam"] > 0
    assert report.sources["cam"].dropped_by == {"queue_full": report.dropped_frames["cam"]}
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
    assert report.published == len(sink.results) > 0
    assert sink.indices("loop") == list(range(len(sink.indices("loop"))))
    assert sink.flushed and sink.closed


def test_batches_mix_frames_of_two_sources(clip):
    segmenter = ColourSegmenter(delay_s=0.05)
    sink = CollectingSink()
    sources = [FileSource("a", str(clip), max_frames=12), FileSource("b", str(clip), max_frames=12)]
    Runtime(sources, segmenter, [sink], batch_size=4, max_wait_ms=200, queue_size=8, progress=None).run()
    batches: dict[float, set[str]] = {}
    for result in sink.results:
        batches.setdefault(result.times["model_start"], set()).add(result.source)
    assert any(sources == {"a", "b"} for sources in batches.values())
    assert all(len(b) <= 4 for b in segmenter.batches)


def _frame(source: str, index: int) -> Frame:
    return Frame(source, index, np.zeros((4, 4, 3), np.uint8), None, None, None, time.time())


def test_a_batch_waits_no_longer_than_max_wait_after_its_first_frame():
    batcher = Batcher(["a"], [8], RunMetrics(["a"]))
    batcher.put(0, _frame("a", 0), live=False)
    start = time.monotonic()
    seq, batch = batcher.take_batch(size=4, max_wait_s=0.2)
    waited = time.monotonic() - start
    assert [f.index for f in batch] == [0] and seq == 0
    assert 0.15 <= waited < 2.0  # it waited for more frames, and gave up at the deadline


def test_a_full_batch_leaves_without_waiting_and_sources_take_turns():
    batcher = Batcher(["a", "b"], [8, 8], RunMetrics(["a", "b"]))
    for i in range(4):
        batcher.put(0, _frame("a", i), live=False)
    batcher.put(1, _frame("b", 0), live=False)
    start = time.monotonic()
    seq, batch = batcher.take_batch(size=4, max_wait_s=10.0)
    assert time.monotonic() - start < 5.0
    assert [(f.source, f.index) for f in batch] == [("a", 0), ("b", 0), ("a", 1), ("a", 2)]
    assert seq == 0 and batcher.take_batch(size=4, max_wait_s=0.0)[0] == 1


def test_cameras_whose_frames_come_at_the_same_instants_share_the_drops_of_a_slightly_slow_model(monkeypatch):
    """Found probing 64 cameras at max_fps 1: their frames came at the same instants each second,
    a model 5% slower than them all found the rotation at the same place each time, and the same
    few sources lost 85% of their frames to staleness while the others lost none. On a simulated
    clock: 24 cameras a frame a second each, within 0.3 s of each other, batches of 4 at 95% of
    the rate needed, 2 minutes (before: 12 sources lost nothing, 8 lost 83-95 frames)."""
    import types

    from segstream.pipeline import engine
    from segstream.pipeline.engine import BufferPolicy

    clock = [0.0]
    monkeypatch.setattr(engine, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    names = [f"cam{k}" for k in range(24)]
    metrics = RunMetrics(names)
    batcher = Batcher(names, [2] * 24, metrics, [BufferPolicy("newest", 0.5)] * 24)
    arrivals = [(second + 0.3 * k / 24, "frame", k) for second in range(120) for k in range(24)]
    every = 4 / (24 * 0.95)
    takes = [(n * every, "take", -1) for n in range(int(120 / every))]
    for at, what, k in sorted(arrivals + takes):
        clock[0] = at
        if what == "frame":
            frame = _frame(names[k], int(at))
            frame.times["decoded"] = at
            batcher.put(k, frame)
        elif any(q and at - q[-1].times["decoded"] <= 0.5 for q in batcher.queues):  # (else take_batch waits)
            batcher.take_batch(4, 0.0)
    dropped = [metrics.sources[name].dropped for name in names]
    assert sum(dropped) > 400, "the model kept up: this test would mean nothing"
    assert max(dropped) <= 1.5 * sum(dropped) / len(dropped), f"drops by source {dropped}"


def test_batches_taken_by_concurrent_workers_keep_each_sources_order():
    batcher = Batcher(["a", "b"], [64, 64], RunMetrics(["a", "b"]))
    taken: list[tuple[int, list[Frame]]] = []
    lock = threading.Lock()

    def worker():
        while (got := batcher.take_batch(size=3, max_wait_s=0.02)) is not None:
            with lock:
                taken.append(got)

    workers = [threading.Thread(target=worker) for _ in range(3)]
    for w in workers:
        w.start()
    for i in range(60):  # frames trickle in, so workers wait inside take_batch for more
        batcher.put(i % 2, _frame("ab"[i % 2], i // 2), live=False)
        time.sleep(0.002)
    batcher.finish(0)
    batcher.finish(1)
    for w in workers:
        w.join(10)
    ordered = [f for _, frames in sorted(taken, key=lambda t: t[0]) for f in frames]
    assert sorted(seq for seq, _ in taken) == list(range(len(taken)))
    for source in "ab":
        assert [f.index for f in ordered if f.source == source] == list(range(30))


class _CountingSegmenter(ColourSegmenter):
    """Counts batches between the start of their network and the end of their post-processing."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        self.inflight = self.most = 0

    def forward(self, prepared):
        with self.lock:
            self.inflight += 1
            self.most = max(self.most, self.inflight)
        return super().forward(prepared)

    def decide(self, outputs, prepared):
        time.sleep(0.03)  # slow post-processing: the model thread runs ahead if it may
        decisions = super().decide(outputs, prepared)
        with self.lock:
            self.inflight -= 1
        return decisions


@pytest.mark.parametrize("max_inflight", [1, 3])
def test_batches_in_flight_are_bounded(clip, max_inflight):
    segmenter = _CountingSegmenter()
    sink = CollectingSink()
    Runtime([FileSource("a", str(clip), max_frames=30)], segmenter, [sink], batch_size=2, max_inflight=max_inflight,
            progress=None).run()
    assert segmenter.most == max_inflight  # reached (the network ran ahead) and never exceeded
    assert sink.indices("a") == list(range(30))


def test_a_worker_paused_after_taking_a_batch_does_not_deadlock_the_others(clip, segmenter):
    # The worker that takes batch 0 is descheduled right after taking it. The other worker must
    # not fill every in-flight slot with later batches, which post-processing could not collect
    # before batch 0.
    runtime = Runtime([FileSource("a", str(clip), max_frames=20)], segmenter, [CollectingSink()], batch_size=1,
                      max_inflight=2, model_workers=2, progress=None)
    take = runtime._batcher.take_batch

    def paused_once(*args):
        taken = take(*args)
        if taken is not None and taken[0] == 0:
            time.sleep(0.5)
        return taken

    runtime._batcher.take_batch = paused_once
    done = []
    thread = threading.Thread(target=lambda: done.append(runtime.run()), daemon=True)
    thread.start()
    thread.join(30)
    if not done:
        runtime.stop()
    assert done and done[0].published == 20


def test_max_frames_caps_each_source(clip, segmenter):
    sink = CollectingSink()
    report = Runtime([FileSource("a", str(clip))], segmenter, [sink], max_frames=9, progress=None).run()
    assert report.published == 9 and sink.indices("a") == list(range(9))


def test_sink_error_stops_the_run_and_is_raised_after_the_runs_counts(clip, segmenter):
    import io

    sink = FailingSink()
    source = FileSource("a", str(clip), loop=True)
    status = io.StringIO()
    with pytest.raises(SinkError, match="disk full"):
        Runtime([source], segmenter, [sink], progress=status).run()
    assert sink.closed
    # found probing: a run a full disk stopped printed its error alone, none of its counts
    (last,) = status.getvalue().splitlines()[-1:]
    assert last.startswith("segstream: failed: ") and " frames published in " in last and "a " in last


def test_source_error_drains_the_others_and_is_raised(clip, segmenter):
    sink = CollectingSink()

    class DisconnectingSource:
        """Three frames of the clip, then the camera goes away (once the other source's frames
        reach the sink: under CI's load it went before the other had decoded one)."""

        name, live = "flaky", False

        def frames(self):
            for frame in FileSource(self.name, str(clip), max_frames=3).frames():
                yield frame
            deadline = time.monotonic() + 30
            while not sink.indices("ok") and time.monotonic() < deadline:
                time.sleep(0.01)
            raise SourceError("camera flaky disconnected")

        def close(self):
            pass

    runtime = Runtime([DisconnectingSource(), FileSource("ok", str(clip), loop=True)], segmenter, [sink], progress=None)
    with pytest.raises(SourceError, match="disconnected"):
        runtime.run()
    assert sink.indices("flaky") == [0, 1, 2]
    ok = runtime.metrics.source("ok")
    assert ok.published == ok.decoded > 0
    assert sink.flushed and sink.closed


class _Explodes(Exception):
    pass


def _broken(where):
    class Broken(ColourSegmenter):
        def prepare(self, frames, sizes=None):
            if where == "pre-processing":
                raise _Explodes("pre-processing exploded")
            return super().prepare(frames, sizes)

        def forward(self, prepared):
            if where == "network":
                raise _Explodes("network exploded")
            return super().forward(prepared)

        def decide(self, outputs, prepared):
            if where == "post-processing":
                raise _Explodes("post-processing exploded")
            return super().decide(outputs, prepared)

    return Broken()


@pytest.mark.parametrize("where", ["pre-processing", "network", "post-processing"])
def test_model_stage_errors_stop_the_run_and_are_raised(clip, where):
    sink = CollectingSink()
    with pytest.raises(_Explodes, match=f"{where} exploded"):
        Runtime([FileSource("a", str(clip), loop=True)], _broken(where), [sink], progress=None).run()
    assert sink.closed


def test_per_source_stage_error_stops_the_run_and_is_raised(clip, segmenter):
    class Stage:
        def process(self, result):
            if result.index == 3:
                raise _Explodes("tracker exploded")
            return result

    sink = CollectingSink()
    with pytest.raises(_Explodes, match="tracker exploded"):
        Runtime([FileSource("a", str(clip), loop=True)], segmenter, [sink], stages=[lambda source: Stage()],
                progress=None).run()
    assert sink.indices("a") == [0, 1, 2] and sink.closed


def test_per_source_stages_see_their_own_source_in_order(clip, segmenter):
    seen: dict[str, list[int]] = {}

    class Recorder:
        def __init__(self, source):
            self.source = source

        def process(self, result):
            assert result.source == self.source
            seen.setdefault(self.source, []).append(result.index)
            result.segments.track_ids[:] = 7  # what a tracker does: fill the track column
            return result

    sink = CollectingSink()
    sources = [FileSource("a", str(clip), max_frames=10), FileSource("b", str(clip), max_frames=10)]
    Runtime(sources, segmenter, [sink], stages=[Recorder], progress=None).run()
    assert seen == {"a": list(range(10)), "b": list(range(10))}
    assert all((r.segments.track_ids == 7).all() for r in sink.results)


def test_a_failed_source_s_tracks_end_saying_so_and_its_failed_state_comes_last(clip, segmenter):
    # A tracker's finish() ends its tracks: with reason "end" a failed camera would look like one
    # that ended normally, and without any end its tracks stayed active for consumers for ever.
    from segstream.models.results import Event

    class Finishing:
        def __init__(self, source):
            self.source = source

        def process(self, result):
            return result

        def finish(self, reason="end"):
            return [Event(self.source, "track_ended", 0.0, {"reason": reason})]

    class Failing:
        name, live = "cam", False

        def frames(self):
            yield from FileSource(self.name, str(clip), max_frames=3).frames()
            raise SourceError("camera cam disconnected")

        def close(self):
            pass

    class InOrder(CollectingSink):
        def __init__(self):
            super().__init__()
            self.log = []

        def publish(self, result):
            self.log.append((result.source, "frame"))

        def publish_event(self, event):
            self.log.append((event.source, event.kind, event.data["state" if event.kind == "state" else "reason"]))

    sink = InOrder()
    runtime = Runtime([Failing(), FileSource("ok", str(clip), max_frames=5)], segmenter, [sink],
                      stages=[Finishing], required=[], progress=None, publish_states=True)
    report = runtime.run()
    assert "cam" in report.failed
    cam = [entry for entry in sink.log if entry[0] == "cam" and entry[1] != "state" or entry[1:] == ("state", "failed")]
    assert cam == [("cam", "frame")] * 3 + [("cam", "track_ended", "failed"), ("cam", "state", "failed")]
    assert [e for e in sink.log if e[0] == "ok"][-2:] == [("ok", "track_ended", "end"), ("ok", "state", "ended")]


def test_a_second_run_appends_to_the_files_and_a_torn_last_line_is_left_out_with_a_warning(clip, segmenter,
                                                                                         tmp_path, caplog):
    # Found probing: a crash-restarted pipeline wiped the last run's files; a line a full disk cut
    # short made read_entries fail with a bare JSONDecodeError
    from segstream.connectors.errors import WireFormatError

    for run in ("first", "second"):
        sink = FilesSink(tmp_path / "out")
        Runtime([FileSource("a", str(clip), max_frames=2)], segmenter, [sink], progress=None, run_id=run).run()
    path = tmp_path / "out" / "a.jsonl"
    assert [e["run_id"] for e in read_entries(path)] == ["first", "first", "second", "second"]
    whole = path.read_text()
    path.write_text(whole + whole.splitlines()[0][:50])  # the disk filled in the middle of a line
    logger = logging.getLogger("segstream.sinks")
    logger.addHandler(caplog.handler)  # the CLI's logging setup, run by other tests, may stop propagation
    try:
        assert len(list(read_entries(path))) == 4
    finally:
        logger.removeHandler(caplog.handler)
    assert "line 5 is cut short" in caplog.text
    sink = FilesSink(tmp_path / "out")  # a third run goes on after the cut line, on a line of its own
    Runtime([FileSource("a", str(clip), max_frames=1)], segmenter, [sink], progress=None, run_id="third").run()
    logger.addHandler(caplog.handler)
    try:
        assert [e["run_id"] for e in read_entries(path)] == ["first", "first", "second", "second", "third"]
    finally:
        logger.removeHandler(caplog.handler)
    assert "line 5 is cut short" in caplog.text
    path.write_text("not json\n" + whole)
    with pytest.raises(WireFormatError, match=r"a.jsonl, line 1: not an entry"):
        list(read_entries(path))


@pytest.fixture
def full_disk(tmp_path):
    """A folder on a real 1 MiB file system (tmpfs) that a filler file has filled; deleting the
    filler frees the space. The sink opens no links (no /dev/full behind a symlink): mounting
    needs root with CAP_SYS_ADMIN, as in CI's container and on this machine."""
    out = tmp_path / "out"
    out.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=755", "segstream-test", str(out)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill ({mounted.stderr.strip()}): run as root to test a full disk")
    try:
        with open(out / "filler", "wb") as filler:
            with pytest.raises(OSError, match="No space left"):
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
        yield out
    finally:
        subprocess.run(["umount", "-l", str(out)], check=True)


def test_a_full_disk_costs_the_files_sink_only_the_entries_it_could_not_write(clip, segmenter, full_disk):
    # Found probing: a full disk under the files sink stopped the whole run, Redis included
    out = full_disk
    path = out / "a.jsonl"
    files, other = FilesSink(out), CollectingSink()
    warnings = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())
    logger = logging.getLogger("segstream.sinks")
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.WARNING  # whatever level the CLI's tests left on "segstream"
    try:
        report = Runtime([FileSource("a", str(clip), max_frames=6)], segmenter, [files, other], progress=None).run()
        failing = files.status()["line"]
        # space again, after a line that a failed write cut short
        (out / "filler").unlink()
        path.write_text('{"half an entry')
        written, dropped = [], []
        files.on_written = lambda results: written.extend(r.index for r in results)
        files.on_dropped = lambda results, reason: dropped.append(reason)
        for result in other.results[:3]:
            files.publish(result)
        files.close()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert other.indices("a") == list(range(6))  # the other sink went on
    assert report.undelivered == {"sink_write_failed": 6} and report.balanced  # the run's exit says so
    assert files.status()["dropped"] == {"sink_write_failed": 6}
    assert failing == "files dropped 6 entries (writes failing: No space left on device)"
    assert files.status()["line"] == "files dropped 6 entries"  # writing again: no failure to speak of
    assert warnings == [  # once per outage, not once per entry
        f"cannot write to '{path}': No space left on device; its entries are dropped (counted as sink_write_failed) "
        "until writes succeed again",
        f"writing to '{path}' again after 6 dropped entries",
    ]
    assert written == [0, 1, 2] and dropped == []
    assert [from_wire(entry).index for entry in read_entries(path)] == [0, 1, 2]  # each on a line of its own


def test_a_file_that_can_never_be_written_stops_the_run_saying_why(clip, segmenter, tmp_path):
    # found in review: dropping and retrying every error hid a folder where the file goes until the end
    (tmp_path / "out" / "a.jsonl").mkdir(parents=True)
    with pytest.raises(SinkError, match=r"cannot write to '.*a.jsonl': Is a directory"):
        Runtime([FileSource("a", str(clip), max_frames=3)], segmenter, [FilesSink(tmp_path / "out")], progress=None).run()


def test_files_sink_writes_wire_entries_per_source(clip, segmenter, tmp_path):
    sink = FilesSink(tmp_path / "out", mask_encoding="idmap")
    sources = [FileSource("a", str(clip), max_frames=5), FileSource("b", str(clip), max_frames=3)]
    report = Runtime(sources, segmenter, [sink], progress=None).run()
    entries = [from_wire(e) for e in read_entries(tmp_path / "out" / "a.jsonl")]
    assert [e.index for e in entries] == list(range(5))
    assert len(list(read_entries(tmp_path / "out" / "b.jsonl"))) == 3
    expected = ColourSegmenter.decision(next(FileSource("a", str(clip)).frames()).image)
    np.testing.assert_array_equal(entries[0].label_map, expected.label_map.numpy())
    assert entries[0].model == "colour-threshold" and entries[0].segments.labels[0] == "square"
    # The sink reports its writes: the run's latency is measured when lines were written.
    assert report.latency_ms_p50 >= 0 and entries[0].publish_ts >= entries[0].capture_ts


def test_events_of_stages_and_of_the_runtime_reach_the_sinks_in_order(clip, segmenter, tmp_path):
    from segstream.connectors.redis_wire import event_from_wire
    from segstream.models.results import Event

    class Announcer:
        def __init__(self, source):
            self.source = source

        def process(self, result):
            if result.index == 3:
                result.events.append(Event(self.source, "track_started", 1.5, {"track_id": 7, "frame": 3}))
            return result

    collect = CollectingSink()
    files = FilesSink(tmp_path / "out")
    runtime = Runtime([FileSource("a", str(clip), max_frames=6)], segmenter, [collect, files], stages=[Announcer],
                      progress=None)
    runtime.emit(Event("a", "state", 1.0, {"state": "streaming"}))
    runtime.run()
    assert [(e.kind, e.data) for e in collect.events] == [
        ("state", {"state": "streaming"}), ("track_started", {"track_id": 7, "frame": 3})
    ]
    written = [event_from_wire(e) for e in read_entries(tmp_path / "out" / "a.events.jsonl")]
    assert [(e.source, e.kind, e.ts, e.data) for e in written] == [(e.source, e.kind, e.ts, e.data) for e in collect.events]


_HEAP_PROBE = """
import ctypes, sys
import numpy as np
from segstream.pipeline.runtime import fixed_heap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    assert fixed_heap_threshold()
big = np.ones(16 << 20, np.uint8)
del big
before = libc.mallinfo2().hblkhd
frame = np.ones(8 << 20, np.uint8)
print(libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.parametrize("threshold", ["fixed", "glibc's"])
def test_frame_sized_blocks_stay_out_of_the_heap_after_one_is_freed(threshold):
    # glibc raises its mmap threshold when the 16 MB block is freed and serves the next
    # frame-sized block from the heap, where freed frames leave holes that RSS keeps; the fixed
    # threshold keeps it a mapping of its own. A fresh process: in a long-lived one the block may
    # fit in free heap space, which no threshold governs.
    probe = subprocess.run([sys.executable, "-c", _HEAP_PROBE, threshold], capture_output=True, text=True,
                           check=True)
    mapped = int(probe.stdout)
    assert mapped >= 8 << 20 if threshold == "fixed" else mapped == 0


def test_a_stage_whose_finish_fails_stops_the_run_and_is_raised(clip, segmenter):
    class Stage:
        def process(self, result):
            return result

        def finish(self, reason):
            raise _Explodes("finish exploded")

    sink = CollectingSink()
    runtime = Runtime([FileSource("a", str(clip), max_frames=3)], segmenter, [sink],
                      stages=[lambda source: Stage()], progress=None)
    outcome: dict = {}

    def run():
        try:
            runtime.run()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)  # generous: the run itself takes about a second
    assert not thread.is_alive(), "the run hung after a stage's finish() failed"
    assert isinstance(outcome.get("error"), _Explodes) and sink.indices("a") == [0, 1, 2] and sink.closed


def _big_frame(source: str, index: int, side: int = 100) -> Frame:
    return Frame(source, index, np.zeros((side, side, 3), np.uint8), None, None, None, time.time())


def test_a_byte_budget_caps_queues_and_batches_of_large_frames():
    # 30 kB frames, a 70 kB budget: two frames a queue, whatever queue_size says
    from segstream.pipeline.engine import BufferPolicy

    metrics = RunMetrics()
    batcher = Batcher(["big", "live"], [8, 8], metrics, [BufferPolicy("every_frame"), BufferPolicy("newest")],
                      max_bytes=70_000)
    for index in range(5):
        batcher.put(1, _big_frame("live", index))
    assert [f.index for f in batcher.queues[1]] == [3, 4] and metrics.source("live").dropped_by == {"queue_full": 3}
    batcher.put(0, _big_frame("big", 0))
    batcher.put(0, _big_frame("big", 1))
    third = threading.Thread(target=batcher.put, args=(0, _big_frame("big", 2)), daemon=True)
    third.start()
    third.join(0.3)
    assert third.is_alive(), "back-pressure: the third frame waits for room"
    # a batch holds the two sources' budgets together: four frames, though eight were asked for
    _, batch = batcher.take_batch(8, 0.0)
    assert len(batch) == 4
    third.join(5)
    assert not third.is_alive()
    assert [f.index for f in batcher.take_batch(8, 0.0)[1]] == [2]
    # a frame larger than the budget still goes through, alone
    batcher.put(0, _big_frame("big", 3, side=300))
    assert [f.index for f in batcher.take_batch(8, 0.0)[1]] == [3]


def test_without_a_byte_budget_queue_size_alone_bounds_the_queue():
    metrics = RunMetrics()
    batcher = Batcher(["live"], [8], metrics, [None], max_bytes=None)
    for index in range(8):
        batcher.put(0, _big_frame("live", index), live=True)
    assert len(batcher.queues[0]) == 8 and not metrics.source("live").dropped_by


def test_a_file_sources_streaming_state_carries_its_frame_size_epoch_codec_and_rate(clip):
    """SCHEMA lists width, height, epoch, codec, pixel format and fps for ``streaming`` (found
    probing: only for live sources; then a file's lacked codec and rate)."""
    sink = CollectingSink()
    Runtime([FileSource("cam0", str(clip))], ColourSegmenter(), [sink], publish_states=True, progress=None).run()
    streaming = [e.data for e in sink.events if e.kind == "state" and e.data["state"] == "streaming"]
    assert len(streaming) == 1
    assert (streaming[0]["width"], streaming[0]["height"], streaming[0]["epoch"]) == (160, 120, 0)
    assert (streaming[0]["codec"], streaming[0]["pixel_format"], streaming[0]["fps"]) == ("h264", "yuv420p", 10)
    assert [e.data["reason"] for e in sink.events if e.data.get("state") == "streaming"] == ["first frame 160x120 h264 at 10 fps"]


def test_a_program_embeds_a_pipeline_and_stops_it_from_another_thread(tmp_path):
    # Found probing: run_pipeline on a thread could not be stopped (signals reach the main thread only).
    import segstream
    from segstream.pipeline.config import validate_config

    cfg = validate_config({
        "sources": [{"name": "cam", "type": "synthetic", "width": 64, "height": 48, "fps": 20, "realtime": True,
                     "num_frames": 100000}],
        "model": {"device": "cpu"}, "ops": {"http": None},
        "sinks": {"redis": {"enabled": False}, "files": {"enabled": True, "dir": str(tmp_path)}},
    })
    runtime = segstream.build_runtime(cfg, progress=False)
    reports = []
    worker = threading.Thread(target=lambda: reports.append(runtime.run()))
    worker.start()
    deadline = time.monotonic() + 60
    while runtime.metrics.source("cam").published < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    runtime.stop()
    worker.join(timeout=30)
    assert not worker.is_alive()
    (report,) = reports
    assert report.stopped and report.sources["cam"].published >= 3 and report.balanced


def test_with_many_sources_the_summary_gives_each_its_line_and_latency_and_the_status_sums_queues():
    # found probing 16 cameras: a 1,100-character summary line, per-camera latency nowhere
    from segstream.pipeline.runtime import RunReport, SourceReport

    sources = {f"cam{i}": SourceReport(10, 9, 1, 0, {"queue_full": 1}, "streaming", "", 0, {"streaming": 1})
               for i in range(6)}
    sources["cam5"] = SourceReport(0, 0, 0, 0, {}, "ended", "stopped", 7, {"reconnecting": 7}, 41.0)
    latency = {f"cam{i}": {"p50_ms": 90.0 + i, "p99_ms": 150.0, "max_ms": 200.0} for i in range(5)}
    report = RunReport(sources, 3, 45, 5.0, True, 100.0, 200.0, 300.0, source_latency=latency)
    report.sinks = {"redis": {"line": "redis connected, backlog 0/1000 (0.0 MB)"}}
    head, *lines = report.summary().splitlines()
    assert head.endswith("; redis connected, backlog 0/1000 (0.0 MB); 6 sources:") and len(lines) == 6
    assert lines[2] == "  cam2 9/10 dropped 1 (queue_full 1), latency p50 92 ms p99 150 ms"
    assert lines[5] == "  cam5 0/0 reconnects 7 NEVER STREAMED"
    few = RunReport(dict(list(sources.items())[:2]), 1, 18, 5.0, True, 100.0, 200.0, 300.0, source_latency=latency)
    assert len(few.summary().splitlines()) == 1
    metrics = RunMetrics()
    batcher = Batcher([f"cam{i}" for i in range(6)], [2] * 6, metrics)
    for _ in range(2):
        batcher.put(3, Frame("cam3", 0, np.zeros((2, 2, 3), np.uint8), None, None, None, 0.0), live=True)
    assert batcher.depths(total=True) == "2/12 (fullest cam3 2/2)"
    # found probing 48 cameras: with every queue full it named the first one, "fullest cam0 2/2"
    for i in range(6):
        while batcher.depths().split()[i] != f"cam{i}=2/2":
            batcher.put(i, Frame(f"cam{i}", 0, np.zeros((2, 2, 3), np.uint8), None, None, None, 0.0), live=True)
    assert batcher.depths(total=True) == "12/12 (all 6 full)"


def test_the_summary_tells_a_camera_s_first_connect_from_its_outages():
    # found at stop 28: a camera that took 3 s to connect and was later down 5 s showed "down 8 s"
    from segstream.pipeline.runtime import RunReport, SourceReport

    metrics = RunMetrics()
    for state, at in (("connecting", 100.0), ("streaming", 103.0), ("reconnecting", 110.0), ("streaming", 115.0),
                      ("reconnecting", 120.0), ("streaming", 120.5)):
        metrics.source_state("cam", state, "", at)
    counts = metrics.snapshot()["cam"]
    assert counts.connect_s == 3.0 and counts.downtime(130.0) == 8.5  # segstream_source_down_seconds: all of it
    report = SourceReport(10, 10, 0, 0, {}, "streaming", "", 2, dict(counts.transitions), counts.downtime(130.0),
                          connect_s=counts.connect_s)
    line = RunReport({"cam": report}, 1, 10, 5.0, True, 100.0, 200.0, 300.0).summary()
    assert " reconnects 2 connect 3 s down 6 s" in line, line
    quick = SourceReport(10, 10, 0, 0, {}, "streaming", "", 0, {"streaming": 1}, 0.4, connect_s=0.4)
    assert " down" not in RunReport({"cam": quick}, 1, 10, 5.0, True, 100.0, 200.0, 300.0).summary()
    # release QA: a camera that needed retries before its first frames read "down 9 s", no connect
    retried = RunMetrics()
    for state, at in (("connecting", 0.0), ("reconnecting", 5.0), ("streaming", 9.0)):
        retried.source_state("cam", state, "", at)
    assert retried.snapshot()["cam"].connect_s == 9.0
    late = SourceReport(28, 28, 0, 0, {}, "streaming", "", 1, {"reconnecting": 1, "streaming": 1}, 9.0, connect_s=9.0)
    line = RunReport({"cam": late}, 1, 28, 5.0, True, 100.0, 200.0, 300.0).summary()
    assert " reconnects 1 connect 9 s" in line and " down" not in line, line
    # and one stopped during its first attempt, no frame yet, still connecting (not NEVER STREAMED: it never gave up)
    waiting = SourceReport(0, 0, 0, 0, {}, "ended", "stopped", 0, {"connecting": 1}, 6.0)
    line = RunReport({"cam": waiting}, 1, 0, 5.0, True, 100.0, 200.0, 300.0).summary()
    assert " connecting 6 s" in line and " down" not in line and "NEVER" not in line, line


def test_a_source_of_ones_own_says_the_queue_and_buffer_that_suit_it():
    # Found probing (frames pushed by a service's own code): a source given to build_runtime got
    # a queue of 8 and no staleness limit; 376 ms p50 from push to sink, with no public way to change it
    from segstream.pipeline.engine import BufferPolicy

    class Burst:
        live = True
        queue_size = 1
        buffer_policy = BufferPolicy("newest", max_staleness_s=0.05)

        def __init__(self, name):
            self.name = name

        def frames(self):
            for index in range(12):
                yield Frame(self.name, index, np.zeros((32, 32, 3), np.uint8), index, None, None, time.time())
                time.sleep(0.01)

        def close(self):
            pass

    class Slow(ColourSegmenter):
        def forward(self, prepared):
            time.sleep(0.1)
            return super().forward(prepared)

    metrics = RunMetrics()
    report = Runtime([Burst("pushed")], Slow(), [CollectingSink()], batch_size=1, metrics=metrics,
                     progress=None).run()
    assert metrics.gauges["queue_capacity"].read()[("pushed",)] == 1
    pushed = report.sources["pushed"]
    assert pushed.dropped_by.get("queue_full", 0) > 0 and pushed.published + pushed.dropped == 12, pushed

    class Wrong(Burst):
        buffer_policy = "newest"

    with pytest.raises(ConfigError, match="buffer_policy must be a segstream.BufferPolicy"):
        Runtime([Wrong("w")], ColourSegmenter(), [], progress=None)


def test_a_run_sets_torch_s_threads_while_it_lasts_and_gives_the_caller_s_back(clip):
    # found probing from a notebook: a run left torch on the engine's thread count for good
    import torch

    from segstream.pipeline.config import validate_config

    seen = []

    class Looking(CollectingSink):
        def publish(self, result):
            seen.append(torch.get_num_threads())
            super().publish(result)

    cfg = validate_config({"sources": [{"name": "cam", "type": "file", "path": str(clip)}],
                           "engine": {"threads": 1}, "sinks": {"redis": {"enabled": False}}, "ops": {"http": None}})
    callers = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        runtime = Runtime.from_config(cfg, [FileSource("cam", str(clip), max_frames=3)], ColourSegmenter(), [Looking()],
                                      progress=None)
        assert torch.get_num_threads() == 3  # built, not running: untouched
        runtime.run()
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 3
        # review: two runs at once, the first ending first, gave back the count the second found
        from segstream.pipeline.runtime import _torch_threads_given_back, _torch_threads_taken

        _torch_threads_taken(2)
        _torch_threads_taken(1)
        _torch_threads_given_back()
        assert torch.get_num_threads() == 1  # the other run goes on
        _torch_threads_given_back()
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(callers)


def test_results_a_sink_drops_for_a_reason_of_its_own_make_the_output_incomplete(clip):
    # Found by release QA: a custom sink reporting on_dropped(results, "kafka_down") had the run
    # exit 0 ("done"), as only the shipped sinks' reasons counted as output lost
    class Kafka(CollectingSink):
        on_dropped = None

        def publish(self, result):
            if result.index % 2:
                self.on_dropped([result], "kafka_down")
            else:
                super().publish(result)

    report = Runtime([FileSource("cam", str(clip), max_frames=10)], ColourSegmenter(), [Kafka()], progress=None).run()
    assert report.undelivered == {"kafka_down": 5} and report.sources["cam"].published == 5

    class Clashing(Kafka):  # found in review: a sink's "queue_full" made the engine's own shedding lost output
        def publish(self, result):
            if result.index % 2:
                self.on_dropped([result], "queue_full")
            else:
                CollectingSink.publish(self, result)

    report = Runtime([FileSource("cam", str(clip), max_frames=10)], ColourSegmenter(), [Clashing()],
                     progress=None).run()
    assert report.undelivered == {"sink_queue_full": 5}


def test_a_live_source_held_back_by_a_slower_model_shows_how_far_it_is_behind_live():
    from segstream.pipeline.engine import BufferPolicy
    from tests.test_dynamic_sources import SquareCamera

    def lag_after(buffer: BufferPolicy) -> float:
        camera = SquareCamera("cam", fps=50)
        runtime = Runtime([camera], ColourSegmenter(delay_s=0.06), [CollectingSink()], batch_size=1,
                          queue_size=1, buffers={"cam": buffer}, progress=None)
        lags = []
        gauge = runtime.metrics.gauges

        def watch():
            time.sleep(1.5)
            lags.append(gauge["source_lag_seconds"].read())
            runtime.stop()

        watcher = threading.Thread(target=watch)
        watcher.start()
        runtime.run()
        watcher.join()
        (read,) = lags
        return read[("cam",)]

    # every frame of a 50 fps camera through a model of 16 fps: about 2/3 of the time is lag
    held_back = lag_after(BufferPolicy("every_frame"))
    assert held_back > 0.5
    assert lag_after(BufferPolicy("newest")) < held_back / 3  # the decoder never waits (a loaded CPU's jitter aside)


def test_a_live_source_behind_live_is_warned_once_and_again_only_after_it_caught_up(caplog):
    from fractions import Fraction

    from segstream.pipeline.engine import BufferPolicy
    from segstream.pipeline.runtime import BEHIND_WARN_S, _LiveLag

    lag = _LiveLag("cam", BufferPolicy("newest"))

    def frame(pts_s: float, decoded_at: float, epoch: int = 0) -> Frame:
        return Frame("cam", 0, np.zeros((2, 2, 3), np.uint8), round(pts_s * 25), Fraction(1, 25), pts_s,
                     capture_wall=1e9 + decoded_at, epoch=epoch)

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    with caplog.at_level("INFO", logger="segstream.runtime"):
        # a late start and jitter are no lag: the earliest frame (decoded 0.2 s after its time) counts as live
        assert lag.behind(frame(0.0, 0.5)) == 0 and lag.behind(frame(1.0, 1.2)) == 0
        assert lag.behind(frame(2.0, 2.8)) == pytest.approx(0.6, abs=0.01)
        assert lag.behind(frame(3.0, 3.2 + BEHIND_WARN_S)) == pytest.approx(BEHIND_WARN_S, abs=0.01)
        assert warnings() == []
        lag.behind(frame(4.0, 4.2 + BEHIND_WARN_S + 0.3))
        lag.behind(frame(5.0, 5.2 + BEHIND_WARN_S + 2.0))  # still behind: not said again
        (said,) = warnings()
        assert said.startswith("source cam is 2.3 s behind live:") and "max_fps does not make decoding cheaper" in said
        lag.behind(frame(6.0, 6.2 + BEHIND_WARN_S))  # better, not caught up
        assert "keeps up with live again" not in caplog.text
        lag.behind(frame(7.0, 7.6))
        assert "source cam keeps up with live again (0.4 s behind)" in caplog.text
        lag.behind(frame(8.0, 8.2 + BEHIND_WARN_S / 2))
        lag.behind(frame(9.0, 9.2 + BEHIND_WARN_S + 0.6))
        assert len(warnings()) == 2
        # a sender that paused for 10 s, its timestamps going on from where they stopped: no lag
        assert lag.behind(frame(10.0, 20.2 + BEHIND_WARN_S + 0.6)) == 0
        # a new epoch (a reconnect) starts from its own first frame
        assert lag.behind(frame(20.0, 30.0, epoch=1)) == 0
        # a camera whose clock runs 0.05% slower than ours: 10 s apart after a day, and no lag
        slow = _LiveLag("cam", BufferPolicy("newest"))
        assert max(slow.behind(frame(t, t * 1.0005, epoch=2)) for t in range(0, 86400, 60)) < 0.1
        assert len(warnings()) == 2
        # a source that waits for a slow model (every_frame) falls behind in steps of its wait
        waiting = _LiveLag("cam", BufferPolicy("every_frame"))
        assert [round(waiting.behind(frame(t, t * 3.5, epoch=3)), 1) for t in range(3)] == [0, 2.5, 5.0]
        assert len(warnings()) == 3 and warnings()[-1].endswith("(max_fps, a smaller model, a GPU)")
        # its advice is the engine's, as the overload line's (found in review: a GPU's said "a GPU")
        on_gpu = _LiveLag("cam", BufferPolicy("every_frame"), less_work="engine.resize_in_decoder: true, a smaller model")
        for t in range(3):
            on_gpu.behind(frame(t, t * 3.5, epoch=4))
        assert warnings()[-1].endswith("(max_fps, engine.resize_in_decoder: true, a smaller model)")


def test_the_summary_rate_is_over_the_streaming_time_not_the_warm_up():
    from segstream.pipeline.runtime import RunReport, SourceReport

    # found probing CPU compiles: a run at 40 fps said "(2.9 fps)", its compile's minute counted in
    report = RunReport({"cam": SourceReport(decoded=400, published=400)}, 100, 400, 72.0, False, 100.0, 200.0, 300.0,
                       streaming_s=10.0, warm_up_s=58.5)
    assert report.fps == 40.0
    assert "400 frames published in 72.0 s (40.0 fps over 10.0 s of streaming, after 58.5 s of warm-up)" in report.summary()
    # found probing the docs: a camera that came late read "8 frames published in 8.8 s (18.5 fps)"
    late = RunReport({"cam": SourceReport(decoded=8, published=8)}, 2, 8, 8.8, False, 100.0, 200.0, 300.0,
                     streaming_s=8 / 18.5)
    assert "8 frames published in 8.8 s (18.5 fps over 0.4 s of streaming), " in late.summary()
    steady = RunReport({"cam": SourceReport(decoded=8, published=8)}, 2, 8, 4.3, False, 100.0, 200.0, 300.0,
                       streaming_s=4.0, warm_up_s=0.2)
    assert "8 frames published in 4.3 s (2.0 fps), " in steady.summary()
    summary = report.as_dict()
    assert (summary["streaming_s"], summary["warm_up_s"], summary["fps"]) == (10.0, 58.5, 40.0)
    quick = RunReport({"cam": SourceReport(decoded=1, published=1)}, 1, 1, 2.0, False, 1.0, 1.0, 1.0, streaming_s=0.05)
    assert quick.fps == 0.5 and "warm-up" not in quick.summary()  # one frame: no rate of its own


def test_a_run_reports_its_streaming_time_and_advises_as_its_decision_is_made():
    from segstream.connectors.synthetic import SyntheticSource
    from segstream.pipeline.config import validate_config
    from tests.conftest import CollectingSink, ColourSegmenter

    class Exact(ColourSegmenter):
        postprocess = "exact"

    cfg = validate_config({"sources": [{"name": "cam", "type": "synthetic", "width": 64, "height": 48, "num_frames": 8}],
                           "model": {"device": "cpu"}, "sinks": {"redis": {"enabled": False}}})
    runtime = Runtime.from_config(cfg, [SyntheticSource("cam", 64, 48, 25, 0, 8, realtime=True)], Exact(),
                                  [CollectingSink()], progress=False)
    assert runtime.overload.less_work == "model.postprocess: fast, a smaller model, a GPU"
    report = runtime.run()
    assert 0.2 < report.streaming_s <= report.elapsed_s  # 8 frames at 25 fps: 0.28 s from the first to the last
    assert report.fps == pytest.approx(8 / report.streaming_s)
    assert {"streaming_s", "warm_up_s"} <= set(report.as_dict())


def test_a_camera_whose_clock_is_far_off_is_said_once_and_again_when_it_is_set(clip, segmenter, caplog):
    """Found probing a port's cameras: a camera's sender_ts 26-58 s off this machine's was said
    nowhere but a gauge, while SCHEMA pairs cameras' frames by it."""
    class SkewedCamera:
        name, live = "quay4", False

        def frames(self):
            for frame in FileSource(self.name, str(clip), max_frames=6).frames():
                # 30 s behind for four frames, then its NTP set: a tenth of a second
                frame.sender_wall = frame.capture_wall - (30.0 if frame.index < 4 else 0.1)
                yield frame

        def close(self):
            pass

    logger = logging.getLogger("segstream.runtime")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="segstream.runtime"):
            Runtime([SkewedCamera()], segmenter, [CollectingSink()], progress=None).run()
    finally:
        logger.removeHandler(caplog.handler)
    # (each once: the handler added and propagation may both bring a record)
    said = list(dict.fromkeys(r.getMessage() for r in caplog.records if "camera's clock" in r.getMessage()))
    assert said == ["source quay4: its camera's clock (its RTCP sender reports' time, sender_ts) is 30 s behind this "
                    "machine's: frames paired across cameras by sender_ts are that far off — set the camera's NTP "
                    "server (segstream_source_sender_delay_seconds follows it)",
                    "source quay4: its camera's clock is within 0.1 s of this machine's again"]


def test_build_runtime_is_quiet_by_default_as_a_library_s_function_should_be(capfd):
    # found probing a service that embeds segstream: its status lines and summary reached the service's stderr
    import segstream
    from segstream.pipeline.config import validate_config

    cfg = validate_config({"sources": [{"name": "cam", "type": "synthetic", "width": 64, "height": 48}],
                           "model": {"device": "cpu"}, "ops": {"http": None}, "sinks": {"redis": {"enabled": False}}})
    segstream.build_runtime(cfg, max_frames=5, adapter=ColourSegmenter()).run()
    assert capfd.readouterr().err == ""
    segstream.build_runtime(cfg, max_frames=5, adapter=ColourSegmenter(), progress=True).run()
    assert "segstream: done: 5 frames published" in capfd.readouterr().err


@pytest.mark.parametrize("step_s", [-3600.0, 90.0])
def test_a_wall_clock_step_mid_run_is_no_latency_of_the_step(clip, monkeypatch, step_s):
    """Found probing clock steps: frames decoded before NTP set the clock back an hour and written
    after had a latency of -3600 s (Prometheus' histogram sum went negative, which rate() reads
    as a counter reset); a step forward gave a 90 s latency and a 90 s max in the summary."""
    real = time.time
    shift = [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + shift[0])

    class StepsTheClock(ColourSegmenter):
        def forward(self, prepared):
            if len(self.batches) == 5:  # frames decoded on the old clock are in flight
                shift[0] = step_s
            return super().forward(prepared)

    sink = CollectingSink()
    runtime = Runtime([FileSource("cam", str(clip))], StepsTheClock(delay_s=0.01), [sink], progress=None)
    report = runtime.run()
    assert report.published == 40 and shift[0] == step_s
    stepped = [r for r in sink.results if abs(r.publish_ts - r.capture_ts) > 30]
    assert stepped, "no frame was in flight across the step: this test would mean nothing"
    latencies = runtime.metrics.capture_to_publish.values()
    assert 0 <= latencies.min() and latencies.max() < 10 and report.latency_ms_max < 10_000
    for window in runtime.metrics.source_latencies().values():
        assert 0 <= window.histogram()[2] < 10 * window.count  # the histogram's sum
