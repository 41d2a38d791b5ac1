import re
import threading
import time

import numpy as np
import pytest

from segstream.connectors.errors import SourceError
from segstream.connectors.file_source import FileSource
from tests.conftest import SQUARE_COLOUR, encode_clip


def test_decodes_every_frame_in_order_with_rgb_images(clip):
    source = FileSource("cam0", str(clip))
    frames = list(source.frames())
    assert [f.index for f in frames] == list(range(40))
    assert all(f.source == "cam0" and f.image.shape == (120, 160, 3) and f.image.dtype == np.uint8 for f in frames)
    # the square is red in RGB order (channel 0 high)
    first = frames[0].image[30:60, 0:30].reshape(-1, 3).mean(axis=0)
    assert abs(first[0] - SQUARE_COLOUR[0]) < 20 and first[1] < 80
    assert source.live is False and source.decode_errors == 0


def test_pts_follow_the_encoded_rate(clip):
    frames = list(FileSource("cam0", str(clip)).frames())
    seconds = np.array([f.pts_seconds for f in frames])
    assert np.all(np.diff([f.pts for f in frames]) > 0)
    np.testing.assert_allclose(np.diff(seconds), 0.1, atol=1e-6)
    assert all(f.pts_seconds == pytest.approx(float(f.pts * f.time_base)) for f in frames)
    walls = [f.capture_wall for f in frames]
    assert walls == sorted(walls) and abs(walls[0] - time.time()) < 60


def test_max_frames_stops_early(clip):
    assert len(list(FileSource("cam0", str(clip), max_frames=7).frames())) == 7


def test_loop_repeats_with_increasing_pts(clip):
    frames = list(FileSource("cam0", str(clip), loop=True, max_frames=100).frames())
    assert [f.index for f in frames] == list(range(100))
    seconds = np.array([f.pts_seconds for f in frames])
    np.testing.assert_allclose(np.diff(seconds), 0.1, atol=1e-6)
    np.testing.assert_array_equal(frames[45].image, frames[5].image)


def test_realtime_paces_at_the_file_rate(fast_clip):
    source = FileSource("cam0", str(fast_clip), realtime=True)
    assert source.live is True
    start = time.monotonic()
    frames = list(source.frames())
    # 30 frames at 30 fps: the last is due 29/30 s after the first
    assert len(frames) == 30
    assert time.monotonic() - start >= 0.9


def test_missing_file_is_a_source_error(tmp_path):
    with pytest.raises(SourceError) as error:
        FileSource("cam0", str(tmp_path / "nope.mp4"))
    assert "nope.mp4" in str(error.value) and "\n" not in str(error.value)


def test_garbage_file_is_a_source_error(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(SourceError) as error:
        FileSource("cam0", str(garbage))
    assert "garbage.mp4" in str(error.value) and "\n" not in str(error.value)


def test_corrupt_packets_are_counted_and_skipped(tmp_path):
    data = bytearray(encode_clip(tmp_path / "clip.mp4", frames=40).read_bytes())
    rng = np.random.default_rng(1)
    middle = len(data) // 3
    data[middle : middle + 400] = rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
    (tmp_path / "corrupt.mp4").write_bytes(bytes(data))
    source = FileSource("cam0", str(tmp_path / "corrupt.mp4"))
    frames = list(source.frames())
    assert source.decode_errors > 0
    assert 0 < len(frames) < 40
    indices = [f.index for f in frames]
    assert indices == sorted(set(indices)), "in order, each once"


def test_a_rejected_frame_leaves_a_gap_so_each_index_is_the_frame_s_place_in_the_file(tmp_path):
    # Found re-checking stop 18: after a rejected frame every later index was one too small, so
    # entries no longer matched the file's frames (evaluate --clips compared the wrong ones).
    import av

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:  # B-frames: pictures leave the decoder reordered
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.options = {"preset": "veryfast", "bf": "2", "g": "10"}
        for i in range(60):
            image = np.full((120, 160, 3), (i * 4) % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        packets = [(p.pts, p.pos, p.size) for p in container.demux(video) if p.size]
        step = int(1 / (video.average_rate * video.time_base))
    data = bytearray(path.read_bytes())
    hit = [packets[23], packets[41]]  # in decode order, neither a keyframe
    for _, pos, size in hit:
        data[pos + 4 : pos + size] = b"\xff" * (size - 4)
    (tmp_path / "damaged.mp4").write_bytes(bytes(data))

    source = FileSource("cam0", str(tmp_path / "damaged.mp4"))
    frames = list(source.frames())
    assert source.decode_errors == 2 and len(frames) == 58
    assert [f.index for f in frames] == [f.pts // step for f in frames], "index = place in the file"
    assert sorted(set(range(60)) - {f.index for f in frames}) == sorted(pts // step for pts, _, _ in hit)


def test_close_from_another_thread_stops_frames(clip):
    source = FileSource("cam0", str(clip), realtime=True, loop=True)
    frames = []
    for frame in source.frames():
        frames.append(frame)
        if len(frames) == 1:  # timed from the first frame: opening may take long on a busy machine
            threading.Timer(0.3, source.close).start()
    # 0.3 s of a 10 fps clip played in real time, far from its 40 frames
    assert 2 <= len(frames) < 40
    source.close()  # twice is fine


def test_close_before_reading_releases_the_file(clip):
    source = FileSource("cam0", str(clip))
    source.close()
    assert list(source.frames()) == []


def _encode(path, frames: int, times=None, options=None, fmt=None):
    """An intra-only H.264 file (every frame decodes alone) at 25 fps, or at ``times`` (seconds)."""
    import av
    from fractions import Fraction

    with av.open(str(path), "w", format=fmt, options=options or {}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": "1"}
        stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 3 % 256, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round((times[i] if times else i / 25) * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_frames_lost_in_a_steady_stream_and_a_truncated_file_are_counted_as_missing(tmp_path):
    # Found probing: a TS that lost 13 of 50 frames to corruption, and a file cut in half, were
    # read as whole ones: no decode error, no note, the loss visible only in the timestamps.
    import av

    whole = _encode(tmp_path / "whole.ts", 60, fmt="mpegts")
    with av.open(str(whole)) as source, av.open(str(tmp_path / "holed.ts"), "w", format="mpegts") as out:
        video = source.streams.video[0]
        copy = out.add_stream_from_template(video)
        for n, packet in enumerate(p for p in source.demux(video) if p.size):
            # frames lost early (3), once the rate is known (5), and in a burst of gaps back to back
            # (3 + 6 + 1: found probing, a TS that lost 10 of 100 frames so was read as a whole one)
            if not (5 <= n < 8 or 20 <= n < 25 or n in (38, 39, 40, 42, 43, 44, 45, 46, 47, 49)):
                packet.stream = copy
                out.mux(packet)
    holed = FileSource("cam", str(tmp_path / "holed.ts"))
    frames = list(holed.frames())
    assert len(frames) == 42 and holed.decode_errors == 0
    # the early gap counts once the steady rate showed after it
    assert holed.frames_missing == 18 and "18 frames missing in gaps" in holed.damage

    data = _encode(tmp_path / "full.mp4", 100, options={"movflags": "+faststart"}).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # its index still lists 100 frames
    cut = FileSource("cam", str(tmp_path / "cut.mp4"))
    delivered = len(list(cut.frames()))
    assert 0 < delivered < 90
    assert abs(delivered + cut.decode_errors + cut.frames_missing - 100) <= 2 and "of the 4.00 s it lists" in cut.damage

    # a file's tail zeroed as a copy cut short leaves it: its frames rejected are not missing too
    tail = bytearray(data)
    tail[len(data) * 6 // 10:] = bytes(len(data) - len(data) * 6 // 10)
    (tmp_path / "zeroed.mp4").write_bytes(bytes(tail))
    zeroed = FileSource("cam", str(tmp_path / "zeroed.mp4"))
    delivered = len(list(zeroed.frames()))
    assert 0 < delivered < 90 and zeroed.decode_errors > 0
    assert abs(delivered + zeroed.decode_errors + zeroed.frames_missing - 100) <= 2, \
        (delivered, zeroed.decode_errors, zeroed.frames_missing)

    # a phone's clip skipping every 7th frame of a steady 25 fps: in an MP4 or MKV (an index of
    # every sample) the recorder's rate, in a TS (a stream's recording) frames lost on the way
    skipping = [k / 25 for k in range(80) if k % 7 != 6][:60]
    for name in ("phone.mp4", "phone.mkv"):
        phone = FileSource("cam", str(_encode(tmp_path / name, 60, times=skipping)))
        assert len(list(phone.frames())) == 60 and phone.frames_missing == 0 and phone.damage == "", name
    recorded = FileSource("cam", str(_encode(tmp_path / "recorded.ts", 60, times=skipping, fmt="mpegts")))
    assert len(list(recorded.frames())) == 60 and recorded.frames_missing >= 8

    # variable rates: jittery intervals, and 25 fps slowed to 12.5 for 2 s (a phone in the dark)
    slowed = [i / 25 for i in range(20)] + [0.8 + i / 12.5 for i in range(25)] + [2.8 + i / 25 for i in range(15)]
    for healthy in (whole, _encode(tmp_path / "vfr.mkv", 40, times=[i * 0.1 - (i % 3) * 0.03 for i in range(40)]),
                    _encode(tmp_path / "slowed.ts", 60, times=slowed, fmt="mpegts")):
        source = FileSource("cam", str(healthy))
        assert len(list(source.frames())) in (40, 60)
        assert source.frames_missing == 0 and source.damage == "", "a whole file, variable rate or not"


def test_steady_gaps_count_short_gaps_of_a_steady_rate_only():
    from segstream.connectors.av_input import SteadyGaps

    def lost(times, fps=25):
        gaps = SteadyGaps(step=40, fps=fps)  # 25 fps in milliseconds
        return [gaps.lost_before(t, 0) for t in times]

    steady = list(range(0, 40 * 30, 40))
    assert sum(lost(steady + [steady[-1] + 40 * 4, steady[-1] + 40 * 5])) == 3, "three frames that never came"
    assert lost(steady + [steady[-1] + 40 * 4, steady[-1] + 40 * 5])[-1] == 3, "told at the picture after the gap"
    assert sum(lost(steady + [steady[-1] + 40 * 100])) == 0, "a 4 s pause (a camera sending on motion) loses nothing"
    assert sum(lost(steady[:8] + [steady[7] + 40 * 4])) == 0, "too early to call the rate steady"
    burst = [steady[-1] + 40 * n for n in (4, 11, 13, 14)]  # 3 + 6 + 1 frames lost back to back
    assert lost(steady + burst) == [0] * 33 + [10], "a burst of gaps, told at the picture after it"
    slower = [steady[-1] + 80 * n for n in range(1, 14)]  # 13 intervals of two frames: 26 > a second's 25
    assert sum(lost(steady + slower + [slower[-1] + 40])) == 0, "a rate halved for over a second loses nothing"
    uneven = [round(i * 40 + (i % 3) * 13) for i in range(30)]
    assert sum(lost(uneven + [uneven[-1] + 40 * 4])) == 0, "a variable rate's gaps are its own"
    # found in review: a camera that halves its rate after minutes had every interval counted lost;
    # then (camera-interop probe) its first interval still was: 30 fps to 5 fps counted 5 decode errors
    halved = steady + [steady[-1] + 80 * (i + 1) for i in range(3000)]
    assert sum(lost(halved)) == 0, "a change of rate loses nothing"
    sixth = steady + [steady[-1] + 240 * (i + 1) for i in range(20)]
    assert sum(lost(sixth, fps=30)) == 0, "30 fps to 5 fps"
    wrapped = steady + [i * 40 for i in range(30)] + [29 * 40 + 40 * 3, 29 * 40 + 40 * 4]
    assert sum(lost(wrapped)) == 2, "timestamps that went back start afresh, and gaps count again"
    # found probing: a file that lost frames just after its first was read as a whole one; a file's
    # gaps before the rate showed count once it showed
    early = [0, 40 * 4, 40 * 5, 40 * 7] + [40 * (7 + n) for n in range(1, 11)]  # 3 and 1 lost
    for hindsight, told in ((True, 4), (False, 0)):
        gaps = SteadyGaps(step=40, fps=25, hindsight=hindsight)
        assert [gaps.lost_before(t, 0) for t in early][-1] == told, "told at the tenth one-frame interval"
    unsure = SteadyGaps(step=40, fps=25, hindsight=True)
    assert sum(unsure.lost_before(t, 0) for t in early[:-1]) == 0, "nine intervals do not show the rate"
    # found in review: variable-rate files read as damaged: a slow intro (nine intervals of ten
    # frames, a 3 fps title before the file's 30), and half the rate for half a second mid-file
    intro = SteadyGaps(step=40, fps=30, hindsight=True)
    assert sum(intro.lost_before(t, 0) for t in [400 * n for n in range(10)] + [3600 + 40 * n for n in range(60)]) == 0
    dip = steady + [steady[-1] + 120] + [steady[-1] + 120 + 80 * n for n in range(1, 7)]  # gaps 3, then six of 2
    assert sum(lost(dip + [dip[-1] + 40 * n for n in range(1, 5)], fps=30)) == 0, "a lower rate for a while"
    # found probing 16 cameras: a stream's 3 s blip was told nowhere; it is told in seconds (lost or
    # paused: not guessed as frames), up to the read timeout (a longer jump is a new sender's)
    for gap_ms, frames, seconds in ((3000, 0, 2.96), (600, 14, 0.0), (6000, 0, 0.0)):
        stream = SteadyGaps(step=40, fps=25, unit_s=0.001, max_silence_s=5)
        after = [steady[-1] + gap_ms, steady[-1] + gap_ms + 40]
        assert sum(stream.lost_before(t, 0) for t in steady + after) == frames
        assert stream.gap_s == pytest.approx(seconds), gap_ms
    stream = SteadyGaps(step=40, fps=25, unit_s=0.001, max_silence_s=5)  # 30 frames rejected: they came
    stream.lost_before(steady[-1], 0)
    assert stream.lost_before(steady[-1] + 40 * 31, 30) == 0 and stream.gap_s == 0


def test_a_stream_is_silent_only_past_its_own_pace():
    """Found probing timelapse cameras: a camera sending a frame every 3 s, every one on time, was
    said to have 'no frames for 3.0 s' at each frame, and each interval counted as down time."""
    from segstream.connectors.av_input import SteadyGaps

    every_3s = [i * 3_000_000 + (i % 3) * 40_000 for i in range(12)]  # an MJPEG camera's: microseconds, rate unknown
    camera = SteadyGaps(step=40_000, fps=None, unit_s=1e-6, max_silence_s=10)
    assert sum(camera.lost_before(t, 0) for t in every_3s) == 0 and camera.gap_s == 0
    camera.lost_before(every_3s[-1] + 9_000_000, 0)  # then 9 s without a frame: 6 s more than its pace
    assert camera.gap_s == pytest.approx(6.0, abs=0.1)
    # a 25 fps stream slowed to a frame every 2 s (night mode): silent until its pace shows
    slowed = [40 * i for i in range(30)] + [1160 + 2000 * i for i in range(1, 21)]
    stream = SteadyGaps(step=40, fps=25, unit_s=0.001, max_silence_s=5)
    silences = []
    for t in slowed:
        before = stream.gap_s
        stream.lost_before(t, 0)
        silences.append(round(stream.gap_s - before, 2))
    assert silences[30:] == [1.96] * 5 + [0.0] * 15, silences


def test_a_run_over_a_truncated_file_reports_it_damaged_in_its_summary_event_and_metrics(tmp_path):
    """Found probing: a file cut in half ended as 'end of input' with 0 dropped and exit 0; the
    missing frames were in one warning line only, nowhere in the report, events or metrics."""
    from segstream.pipeline.monitoring import RunMetricsCollector
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import CollectingSink, ColourSegmenter

    data = _encode(tmp_path / "full.mp4", 100, options={"movflags": "+faststart"}).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    sink = CollectingSink()
    runtime = Runtime([FileSource("cut", str(tmp_path / "cut.mp4")), FileSource("whole", str(tmp_path / "full.mp4"))],
                      ColourSegmenter(), [sink], progress=False, publish_states=True)
    report = runtime.run()
    cut, whole = report.sources["cut"], report.sources["whole"]
    assert cut.missing > 10 and "of the 4.00 s it lists" in cut.damage and cut.published + cut.missing >= 98
    assert whole.missing == 0 and whole.damage == ""
    assert re.search(rf"cut {cut.published}/{cut.decoded} .*DAMAGED, about {cut.missing} frames missing, whole "
                     r"100/100$", report.summary()), report.summary()
    ended = {e.source: e.data for e in sink.events if e.kind == "state" and e.data["state"] == "ended"}
    assert ended["cut"]["frames_missing"] == cut.missing and ended["cut"]["reason"].startswith(
        f"end of input, damaged: about {cut.missing} frames missing (its frames end after ")
    assert "frames_missing" not in ended["whole"] and ended["whole"]["reason"] == "end of input"
    exposition = {(s.name, s.labels.get("source")): s.value for m in RunMetricsCollector(runtime.metrics).collect()
                  for s in m.samples}
    assert exposition[("segstream_source_frames_missing_total", "cut")] == cut.missing
    assert exposition[("segstream_source_frames_missing_total", "whole")] == 0
