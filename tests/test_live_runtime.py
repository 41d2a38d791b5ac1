"""Live sources in the runtime: many cameras with one failing, a model slower than the camera,
required sources, buffer policies, states in the report and the status line."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest

from segstream.connectors.errors import SourceError
from segstream.connectors.file_source import FileSource
from segstream.connectors.frames import Frame
from segstream.connectors.live_source import ReconnectPolicy
from segstream.connectors.stream_source import StreamSource
from segstream.pipeline.engine import Batcher, BufferPolicy
from segstream.pipeline.metrics import RunMetrics
from segstream.pipeline.runtime import Runtime
from tests.conftest import ColourSegmenter
from tests.live_servers import RecordingSink, RtspCamera, free_port, run_in_thread, wait_for


def test_eight_sources_one_failing_the_other_seven_publish_every_frame_their_policy_keeps(tmp_path):
    with RtspCamera(tmp_path) as camera:
        good = [
            StreamSource(f"cam{i}", camera.url(), policy=ReconnectPolicy(open_timeout_s=8)) for i in range(7)
        ]
        dead = StreamSource(
            "dead", f"rtsp://127.0.0.1:{free_port()}/cam",
            # about 10 s of retrying: longer than seven RTSP sessions take to start on a busy machine
            policy=ReconnectPolicy(open_timeout_s=2, max_reconnects=4, delay_s=2.5, max_delay_s=2.5),
        )
        record = RecordingSink()
        runtime = Runtime([*good, dead], ColourSegmenter(), [record], batch_size=8, publish_states=True,
                          required=[], progress=None)
        thread, outcome = run_in_thread(runtime)
        wait_for(lambda: runtime.metrics.source("dead").state == "failed", 30, "the dead camera to fail")
        failed_at = {name: len(record.of(name)) for name in (s.name for s in good)}
        wait_for(lambda: all(len(record.of(n)) >= failed_at[n] + 50 for n in failed_at), 30, "frames after it failed")
        runtime.stop()
        thread.join(20)
    report = outcome["report"]
    assert report.failed == {"dead": report.sources["dead"].reason}
    assert "gave up after 4 reconnect attempts" in report.failed["dead"]
    assert report.sources["dead"].reconnects == 4
    assert report.balanced
    for source in good:
        counts = report.sources[source.name]
        assert counts.state == "ended" and counts.reconnects == 0, (source.name, counts)
        assert set(counts.dropped_by) <= {"queue_full", "stale"}  # only what the policy drops
        assert counts.published == counts.decoded - counts.dropped + counts.decode_errors
        indices = [r.index for r in record.of(source.name)]
        assert indices == sorted(indices) and len(indices) == counts.published
        states = record.states(source.name)
        assert states == ["connecting", "streaming", "ended"], (source.name, states)
    # nobody waited for the failing camera: while it was reconnecting each good one published at
    # about the rate it kept after the dead one gave up (rates compared within the run, so a
    # slow machine slows both alike)
    dead_events = [e for e in record.events if e.source == "dead"]
    trying = next(e.ts for e in dead_events if e.data["state"] == "reconnecting")
    gave_up = next(e.ts for e in dead_events if e.data["state"] == "failed")
    for source in good:
        results = record.of(source.name)
        start = max(trying, results[0].capture_ts) + 1.0  # past the burst FFmpeg buffered while probing
        end = results[-1].capture_ts
        assert gave_up - start > 1.0, "the dead camera must still be retrying while the others stream"
        during = sum(start < r.capture_ts < gave_up for r in results) / (gave_up - start)
        after = sum(gave_up < r.capture_ts <= end for r in results) / (end - gave_up)
        assert during >= 0.7 * after, (source.name, during, after)
        span = end - results[0].capture_ts
        assert report.sources[source.name].decoded >= 0.5 * 25 * span, report.summary()


def test_a_model_slower_than_the_camera_keeps_latency_bounded_and_counts_its_drops(tmp_path):
    """25 fps camera, a model that manages about 12: the newest frames are processed, the rest
    dropped and counted; the latency at the end is no worse than at the start (the full two-minute
    run is benchmarks/sources.py --overload, recorded in docs/BENCHMARKS.md)."""
    with RtspCamera(tmp_path, fps=25) as camera:
        source = StreamSource("cam", camera.url(), policy=ReconnectPolicy(open_timeout_s=8))
        record = RecordingSink()
        runtime = Runtime([source], ColourSegmenter(delay_s=0.08), [record], batch_size=1, queue_size=2,
                          buffers={"cam": BufferPolicy("newest", 0.3)}, publish_states=True, progress=None)
        thread, outcome = run_in_thread(runtime)
        wait_for(lambda: len(record.of("cam")) >= 1, 30, "the first frame")
        time.sleep(6)  # a queue that kept everything would be 78 frames (3 s) behind by then
        runtime.stop()
        thread.join(20)
    report = outcome["report"]
    counts = report.sources["cam"]
    assert counts.dropped > 0 and set(counts.dropped_by) <= {"queue_full", "stale"}
    assert report.balanced
    results = record.of("cam")
    latency = np.array([r.publish_ts - r.capture_ts for r in results])
    third = len(latency) // 3
    first, last = np.percentile(latency[:third], 99), np.percentile(latency[-third:], 99)
    assert last <= first + 0.15, (first, last)
    assert last < 1.0  # a queue that kept everything would be seconds behind by now
    indices = [r.index for r in results]
    assert indices == sorted(indices)


def test_a_required_source_that_fails_ends_the_run(clip):
    dead = StreamSource("dead", f"rtsp://127.0.0.1:{free_port()}/cam",
                        policy=ReconnectPolicy(max_reconnects=0))
    other = FileSource("file", str(clip), realtime=True, loop=True)
    record = RecordingSink()
    runtime = Runtime([dead, other], ColourSegmenter(), [record], required=["dead"], publish_states=True,
                      progress=None)
    start = time.monotonic()
    with pytest.raises(SourceError, match="source dead failed: connection refused"):
        runtime.run()
    assert time.monotonic() - start < 10
    assert runtime.metrics.source("file").state == "ended"
    assert record.states("dead") == ["connecting", "failed"]


def test_a_source_that_is_not_required_fails_alone(clip):
    class Breaks:
        name, live = "flaky", False

        def frames(self):
            yield from FileSource(self.name, str(clip), max_frames=3).frames()
            raise SourceError("source flaky: camera unplugged")

        def close(self):
            pass

    record = RecordingSink()
    runtime = Runtime([Breaks(), FileSource("ok", str(clip))], ColourSegmenter(), [record], required=[],
                      publish_states=True, progress=None)
    report = runtime.run()
    assert report.failed == {"flaky": "camera unplugged"}
    assert report.sources["ok"].published == 40 and report.sources["ok"].state == "ended"
    assert report.summary().startswith("failed:") and "flaky 3/3 FAILED" in report.summary()
    assert report.failed["flaky"].endswith("camera unplugged") and "camera unplugged" not in report.summary()
    assert record.states("flaky") == ["connecting", "streaming", "failed"]


def test_the_status_line_shows_each_sources_state(clip):
    progress = io.StringIO()
    dead = StreamSource("dead", f"rtsp://127.0.0.1:{free_port()}/cam",
                        policy=ReconnectPolicy(delay_s=5, max_delay_s=5))
    runtime = Runtime([FileSource("a", str(clip), realtime=True, loop=True), dead], ColourSegmenter(), [],
                      required=[], progress=progress, progress_interval_s=0.2)
    threading.Timer(1.5, runtime.stop).start()
    runtime.run()
    lines = [line for line in progress.getvalue().splitlines() if line.startswith("segstream:")]
    assert any("sources streaming 1, reconnecting 1 (dead)" in line for line in lines), lines


def test_the_status_line_names_at_most_a_few_sources_per_state():
    # Found probing (50 cameras): every camera not streaming was named, ~500 characters every 2 s
    from segstream.pipeline.runtime import STATE_NAMES_SHOWN, RunReport, SourceReport

    sources = {f"c{i:02d}": SourceReport(state="reconnecting") for i in range(49)}
    sources["live"] = SourceReport(state="streaming")
    sources["gone"] = SourceReport(state="failed")
    report = RunReport(sources=sources, batches=0, model_frames=0, elapsed_s=1.0, stopped=False,
                       latency_ms_p50=0, latency_ms_p99=0, latency_ms_max=0)
    shown = " ".join(f"c{i:02d}" for i in range(STATE_NAMES_SHOWN - 1))
    assert Runtime._states_line(report) == (
        f"reconnecting 49 ({shown} +{49 - STATE_NAMES_SHOWN + 1} more), streaming 1, failed 1 (gone)")
    few = RunReport(sources={f"c{i}": SourceReport(state="reconnecting") for i in range(STATE_NAMES_SHOWN)},
                    batches=0, model_frames=0, elapsed_s=1.0, stopped=False,
                    latency_ms_p50=0, latency_ms_p99=0, latency_ms_max=0)
    assert Runtime._states_line(few).endswith(f"c{STATE_NAMES_SHOWN - 1})"), "as many as fit are all named"


def test_the_status_line_names_the_live_sources_behind_live_furthest_first():
    """A source 3 s behind live read as healthy on the status line beside a latency of 300 ms
    (which counts from decoding); only /metrics and a warning said it."""
    from segstream.pipeline.runtime import STATE_NAMES_SHOWN, RunReport, SourceReport

    assert Runtime._behind_line({"a": 0.3, "b": 1.4, "c": 3.24}) == ", behind live c 3.2 s b 1.4 s"
    assert Runtime._behind_line({"a": 0.3}) == "" and Runtime._behind_line({"c": 3.0}, removed={"c"}) == ""
    # a source that ended, stalled or reconnects keeps its last lag in the gauge; not on the line
    runtime = Runtime([], ColourSegmenter(), [], progress=None)
    report = RunReport(sources={"up": SourceReport(state="streaming"), "down": SourceReport(state="reconnecting")},
                       batches=0, model_frames=0, elapsed_s=1.0, stopped=False, latency_ms_p50=0, latency_ms_p99=0,
                       latency_ms_max=0)
    assert runtime._not_streaming(report) == {"down"}
    many = Runtime._behind_line({f"c{i:02d}": 2.0 + i / 100 for i in range(20)})
    assert many.startswith(", behind live c19 2.2 s c18 2.2 s") and many.endswith(
        f" +{20 - STATE_NAMES_SHOWN + 1} more")


def _frame(index: int, age_s: float = 0.0) -> Frame:
    frame = Frame("cam", index, np.zeros((2, 2, 3), np.uint8), index, None, None, time.time())
    frame.times["decoded"] = time.monotonic() - age_s
    return frame


def test_newest_drops_frames_gone_stale_before_the_model_and_counts_them():
    metrics = RunMetrics(["cam"])
    batcher = Batcher(["cam"], [4], metrics, [BufferPolicy("newest", max_staleness_s=0.2)])
    batcher.put(0, _frame(0, age_s=0.5))
    batcher.put(0, _frame(1, age_s=0.3))
    batcher.put(0, _frame(2))
    _, batch = batcher.take_batch(4, 0.0)
    assert [f.index for f in batch] == [2]
    assert metrics.source("cam").dropped_by == {"stale": 2}


def test_a_source_whose_oldest_frame_went_stale_still_gets_its_turn_with_a_fresh_one():
    # found at stop 30 (48 sources on 2 cores): sources that deliver in bursts (MPEG-TS over UDP,
    # HTTP, SRT) often had a stale oldest frame at their turn, lost the turn to the next source,
    # and published a third of what steady RTSP cameras of the same rate did
    metrics = RunMetrics(["burst", "steady"])
    policy = BufferPolicy("newest", max_staleness_s=0.2)
    batcher = Batcher(["burst", "steady"], [2, 2], metrics, [policy, policy])
    batcher.put(0, _frame(0, age_s=0.5))
    batcher.put(0, _frame(1))
    batcher.put(1, _frame(10))
    batcher.put(1, _frame(11))
    _, batch = batcher.take_batch(2, 0.0)
    assert [f.index for f in batch] == [1, 10]
    assert metrics.source("burst").dropped_by == {"stale": 1}


def test_sources_with_full_queues_each_get_one_frame_a_rotation():
    # found at stop 30: a pass began one source further on, so with 44 sources and batches of 4
    # each source was taken in 4 batches running and then waited 40 (results came in bursts)
    names = [f"cam{i}" for i in range(6)]
    batcher = Batcher(names, [8] * 6, RunMetrics(names), [BufferPolicy("newest")] * 6)
    for i in range(6):
        for index in range(6):
            batcher.put(i, _frame(100 * i + index))
    taken = [sorted(f.index // 100 for f in batcher.take_batch(2, 0.0)[1]) for _ in range(3)]
    assert taken == [[0, 1], [2, 3], [4, 5]]


def test_newest_keeps_the_newest_frames_when_its_queue_is_full():
    metrics = RunMetrics(["cam"])
    batcher = Batcher(["cam"], [2], metrics, [BufferPolicy("newest")])
    for i in range(5):
        batcher.put(0, _frame(i))
    assert [f.index for f in batcher.take_batch(4, 0.0)[1]] == [3, 4]
    assert metrics.source("cam").dropped_by == {"queue_full": 3}


def test_every_frame_makes_the_source_wait_and_drops_nothing():
    metrics = RunMetrics(["cam"])
    batcher = Batcher(["cam"], [1], metrics, [BufferPolicy("every_frame", max_staleness_s=0.01)])
    batcher.put(0, _frame(0, age_s=5))
    put_second = threading.Thread(target=batcher.put, args=(0, _frame(1)))
    put_second.start()
    put_second.join(0.3)
    assert put_second.is_alive(), "a full every_frame queue must hold its source back"
    assert [f.index for f in batcher.take_batch(1, 0.0)[1]] == [0]  # old, but every_frame never drops
    put_second.join(2)
    assert [f.index for f in batcher.take_batch(1, 0.0)[1]] == [1]
    assert metrics.source("cam").dropped_by == {}


def test_decode_errors_are_counted_as_drops_and_the_run_balances(tmp_path, clip):
    data = bytearray(clip.read_bytes())
    middle = len(data) // 3
    data[middle: middle + 400] = np.random.default_rng(1).integers(0, 256, 400, dtype=np.uint8).tobytes()
    (tmp_path / "corrupt.mp4").write_bytes(bytes(data))
    report = Runtime([FileSource("a", str(tmp_path / "corrupt.mp4"))], ColourSegmenter(), [RecordingSink()],
                     progress=None).run()
    counts = report.sources["a"]
    assert counts.decode_errors > 0 and counts.dropped_by["decode_error"] == counts.decode_errors
    assert report.balanced and counts.published == counts.decoded
    assert f"decode_error {counts.decode_errors}" in report.summary()
