"""Odd media a new user fed segstream: an AVI whose H.264 PTS come in decode order, a single
glitched timestamp, audio that outlasts the video, files with nothing decodable, cover pictures,
image folders with unreadable or animated files. Each file is made here with ffmpeg or PyAV."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from segstream.connectors.av_input import BestEffortTimestamp, tagged_duration
from segstream.connectors.clock import Timeline
from segstream.connectors.errors import SourceError
from segstream.connectors.file_source import FileSource
from tests.live_servers import FFMPEG

MS = Fraction(1, 1000)


def _ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-v", "error", "-y", *args], check=True)


def test_an_avi_with_b_frames_keeps_its_length_and_frame_rate(tmp_path):
    # Found probing: PyAV hands an AVI's H.264 frames PTS in decode order (1, 4, 3, 5, 2, ...);
    # each one stepping back was moved a frame on, and a 2 s clip ran to 4.56 s.
    clip = tmp_path / "bframes.avi"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25", "-t", "2", "-c:v", "libx264", "-bf", "3",
            "-preset", "ultrafast", str(clip))
    with av.open(str(clip)) as container:
        raw = [f.pts for p in container.demux(container.streams.video[0]) for f in p.decode()]
    assert any(b < a for a, b in zip(raw, raw[1:])), "the file must carry PTS out of order to mean anything"
    frames = list(FileSource("avi", str(clip)).frames())
    seconds = np.array([f.pts_seconds for f in frames])
    assert len(frames) == 50 and seconds[-1] - seconds[0] < 2.1
    assert np.count_nonzero(np.isclose(np.diff(seconds), 0.04)) >= 47, "one frame apart, as the file plays"


def test_best_effort_timestamps_take_the_dts_only_when_the_pts_fail_more_often():
    def chosen(pairs):
        rule = BestEffortTimestamp()
        return [rule.choose(pts, dts) for pts, dts in pairs]

    decode_order = [(1, 2), (4, 3), (3, 4), (5, 5), (2, 6), (8, 7), (6, None), (9, None)]
    assert chosen(decode_order) == [1, 4, 4, 5, 6, 7, None, None], "the flushed last frames: no time, not a wrong one"
    vfr = [(0, -80), (40, -40), (70, 0), (140, 40), (150, 80)]  # an MP4's with B-frames, out of the decoder
    assert chosen(vfr) == [0, 40, 70, 140, 150]
    wrapped = [(8589934590, 8589934590), (10, 10), (20, 20)]  # a TS wrap sets both back alike
    assert chosen(wrapped) == [8589934590, 10, 20]
    assert chosen([(None, 5), (None, 6), (7, None)]) == [5, 6, 7]
    joined = [(180, 180), (190, 184), (188, 188), (192, 192), (196, None), (200, None)]  # an overlap: one fault
    assert chosen(joined) == [180, 190, 188, 192, 196, 200], "the flushed frames keep their PTS"


def test_one_early_timestamp_shifts_no_later_frame():
    # Found probing: a frame 0.12 s early was placed a frame after the last, and every later frame
    # kept that offset for ever.
    timeline = Timeline()
    pts = [0, 40, 80, 120, 160, 200, 80, 280, 320, 360]
    assert [timeline.place(p, MS, 40) for p in pts] == [0, 40, 80, 120, 160, 200, 240, 280, 320, 360]
    timeline = Timeline()  # two early in a row, the second earlier still: back once past both
    pts = [0, 40, 80, 120, 160, 120, 40, 280, 320]
    assert [timeline.place(p, MS, 40) for p in pts] == [0, 40, 80, 120, 160, 200, 240, 280, 320]


def test_a_live_camera_whose_clock_steps_back_at_a_varying_rate_keeps_to_the_real_time():
    # Found probing a port's cameras: a cheap camera sending 5 fps with frames left out (a varying
    # rate) whose clock now and then repeated itself or stepped back 2 s read further "behind live"
    # each minute (3.7 s in 2.5 min, 33 s after 14): each such frame was placed one nominal frame
    # (0.2 s) after the last, however long after it the frame came.
    arrivals = [0.0, 0.2, 0.6, 0.8, 1.4, 1.6, 2.2, 2.4]  # seconds, some frames not sent
    pts = [0, 200, 600, 600, 1200, 1400, -600, -400]  # the 4th repeats the 3rd's, the 7th steps back 2 s
    timeline = Timeline()
    placed = [timeline.place(p, MS, 200, at) for p, at in zip(pts, arrivals)]
    # the repeat a frame on (0.2 s after it came), the camera's own clock back at 1200; the step back
    # as long after 1400 as it came (0.6 s), not a nominal frame
    assert placed == [0, 200, 600, 800, 1200, 1400, 2000, 2200]
    timeline = Timeline()  # a frame held back by a slow consumer is not late by the wait
    held = [timeline.place(p, MS, 200, at, held_s=hold) for p, at, hold in
            zip([0, 200, 200, 400], [0.0, 0.2, 1.4, 1.6], [0.0, 0.0, 1.0, 0.0])]
    assert held == [0, 200, 400, 600]
    timeline = Timeline()  # a file's (no arrival): a frame after the last, as before
    assert [timeline.place(p, MS, 200) for p in pts] == [0, 200, 600, 800, 1200, 1400, 1600, 1800]


def test_a_first_frame_without_a_timestamp_puts_the_first_known_one_a_frame_after_it():
    # found probing an RTSP camera: frame 0 without a PTS at 0, frame 1 at the session's 3.6 s
    timeline = Timeline()
    assert [timeline.place(p, MS, 40) for p in (None, None, 3606, 3646, None, 3726)] == [0, 40, 80, 120, 160, 200]


def test_a_real_step_back_and_a_restart_keep_their_offset():
    timeline = Timeline()
    spliced = [0, 40, 80, 120, 0, 40, 80, 120, 160, 200]  # a splice back to the start
    assert [timeline.place(p, MS, 40) for p in spliced] == [0, 40, 80, 120, 160, 200, 240, 280, 320, 360]
    timeline.place(120, MS, 40)  # an early frame after the splice recovers to the splice's offset
    assert timeline.place(280, MS, 40) == 440
    timeline = Timeline()
    for p in (0, 40, 80, 120):
        timeline.place(p, MS, 40)
    timeline.restart()
    assert [timeline.place(p, MS, 40) for p in (0, 40, 200)] == [160, 200, 360], "a new session keeps its place"



def test_a_reconnect_whose_first_frame_has_no_timestamp_still_comes_after_the_outage():
    # Found by a soak: an RTSP camera's first frame after a 23.5 s outage had no PTS and was placed
    # one frame after the last, so pts_s lost the outage and its tracks went on across it.
    timeline = Timeline()
    for p in (0, 40, 80, 120):
        timeline.place(p, MS, 40)
    timeline.restart(23.5)
    assert timeline.place(None, MS, 40) == 120 + 23_500
    assert [timeline.place(p, MS, 40) for p in (5000, 5040)] == [23_660, 23_700]  # the session's clock, after it

def test_a_file_with_one_early_frame_keeps_the_rest_of_its_timestamps(tmp_path):
    whole = tmp_path / "whole.mkv"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25", "-t", "1.2", "-c:v", "libx264", "-g", "1",
            "-preset", "ultrafast", str(whole))
    glitched = tmp_path / "glitch.mkv"
    with av.open(str(whole)) as source, av.open(str(glitched), "w") as out:
        video = source.streams.video[0]
        copy = out.add_stream_from_template(video)
        for n, packet in enumerate(p for p in source.demux(video) if p.size):
            packet.dts = packet.pts - 200  # leaves room for a PTS before the last (the muxer wants PTS >= DTS)
            packet.pts -= 120 if n == 10 else 0  # frame 10 stamped 0.12 s early
            packet.stream = copy
            out.mux(packet)
    frames = list(FileSource("glitch", str(glitched)).frames())
    assert [round(f.pts_seconds, 3) for f in frames] == [round(n * 0.04, 3) for n in range(30)]


def _ffprobe_times(path: Path) -> list[float]:
    done = subprocess.run([FFMPEG.replace("ffmpeg", "ffprobe"), "-v", "error", "-select_streams", "v",
                           "-show_entries", "frame=pts_time", "-of", "csv=p=0", str(path)],
                          capture_output=True, text=True, check=True)
    return [round(float(line.strip(",")), 3) for line in done.stdout.split()]


def test_one_timestamp_far_ahead_in_a_ts_shifts_no_later_frame_and_does_not_make_it_look_truncated(tmp_path, caplog):
    # Found probing an archive: a TS packet whose PTS a flipped bit moved 39 s ahead had every later
    # frame placed after it (43.0, 43.1, ... to the file's end), and the length FFmpeg estimates from
    # a TS's timestamps (41.5 s) made the whole file read "truncated?", hundreds of frames missing.
    whole = tmp_path / "whole.ts"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-t", "5", "-c:v", "libx264", "-bf", "0", "-g", "10",
            "-preset", "ultrafast", "-f", "mpegts", str(whole))
    glitched = tmp_path / "glitch.ts"
    with av.open(str(whole)) as source, av.open(str(glitched), "w", format="mpegts") as out:
        video = source.streams.video[0]
        copy = out.add_stream_from_template(video)
        for n, packet in enumerate(p for p in source.demux(video) if p.size):
            packet.pts += 39 * 90000 if n == 25 else 0  # its PTS alone, as a corrupt PES header's
            packet.stream = copy
            out.mux(packet)
    with av.open(str(glitched)) as container:
        assert container.duration / 1e6 > 40, "FFmpeg must list the glitch's length to mean anything"
    expected = _ffprobe_times(whole)
    assert _ffprobe_times(glitched)[25] == expected[25] + 39
    source = FileSource("glitch", str(glitched))
    with caplog.at_level("WARNING"):
        frames = list(source.frames())
    assert [round(f.pts_seconds, 3) for f in frames] == expected, "the glitched frame between its neighbours"
    assert (source.frames_missing, source.damage, source.timestamps_mended) == (0, "", 1)
    assert f"({expected[25] + 39:.3f} s) is out of line" in caplog.text and "a corrupt timestamp" in caplog.text


def test_two_files_joined_with_an_overlap_keep_ffmpeg_s_times_after_the_join(tmp_path):
    # Found probing: 10 fps then 25 fps joined (-c copy) with the second part starting 20 ms before
    # the first one's last frame: the join's frame was placed a frame after the last, every later
    # one stayed 0.12 s late, and the last two (flushed without a DTS) were placed at 10 fps.
    parts = []
    for rate in (10, 25):
        parts.append(tmp_path / f"p{rate}.ts")
        _ffmpeg("-f", "lavfi", "-i", f"testsrc=size=64x48:rate={rate}:duration=2", "-c:v", "libx264",  # B-frames
                "-f", "mpegts", str(parts[-1]))
    joined = tmp_path / "joined.mp4"
    _ffmpeg("-i", f"concat:{parts[0]}|{parts[1]}", "-c", "copy", str(joined))
    expected = _ffprobe_times(joined)
    step_back = next(n for n in range(1, len(expected)) if expected[n] <= expected[n - 1])
    source = FileSource("joined", str(joined))
    seconds = [round(f.pts_seconds, 3) for f in source.frames()]
    assert len(seconds) == len(expected) == 70
    assert seconds[:step_back] == expected[:step_back] and seconds[step_back + 1:] == expected[step_back + 1:]
    assert seconds[step_back - 1] < seconds[step_back] < seconds[step_back + 1], "still strictly increasing"
    assert (source.frames_missing, source.damage) == (0, "")


def test_a_concat_list_that_fails_names_its_part_at_fault(tmp_path, monkeypatch):
    # Found probing an archive: a drone's chapters joined in an .ffconcat list, one of them gone or cut
    # short, failed as "reading 'trip.ffconcat' failed: No such file or directory", naming the list alone.
    for n in (1, 2):
        _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-t", "2", "-c:v", "libx264", "-preset", "ultrafast",
                "-movflags", "+faststart", str(tmp_path / f"DJI_000{n}.MP4"))
    whole = (tmp_path / "DJI_0002.MP4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(whole[: len(whole) * 6 // 10])
    (tmp_path / "gone.ffconcat").write_text("ffconcat version 1.0\nfile 'DJI_0001.MP4'\nfile 'MISSING.MP4'\n"
                                            "file 'DJI_0002.MP4'\n")
    (tmp_path / "cut.ffconcat").write_text("ffconcat version 1.0\nfile 'cut.mp4'\nfile 'DJI_0001.MP4'\n")
    with pytest.raises(SourceError, match=r"failed: .*\(its part 'MISSING.MP4' does not exist\)$"):
        list(FileSource("trip", str(tmp_path / "gone.ffconcat")).frames())
    with pytest.raises(SourceError, match=r"\(its part 'cut.mp4' is cut short: \d+ of the 20 frames it lists\)$"):
        list(FileSource("trip", str(tmp_path / "cut.ffconcat")).frames())
    # a part FFmpeg reads as a shorter one, or as none at all, ends the list normally: said as damage
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-t", "2", "-c:v", "libx264",
            str(tmp_path / "recording.mp4"))  # its index at the end
    (tmp_path / "no_index.mp4").write_bytes((tmp_path / "recording.mp4").read_bytes()[:3000])  # never reached it
    (tmp_path / "first.ffconcat").write_text("ffconcat version 1.0\nfile 'no_index.mp4'\nfile 'DJI_0001.MP4'\n")
    (tmp_path / "last.ffconcat").write_text("ffconcat version 1.0\nfile 'DJI_0001.MP4'\nfile 'no_index.mp4'\n")
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-t", "2", "-c:v", "libx264", "-preset", "ultrafast",
            str(tmp_path / "fast.mp4"))
    (tmp_path / "unopened.mp4").write_bytes((tmp_path / "fast.mp4").read_bytes()[:3000])  # one FFmpeg cannot open
    (tmp_path / "unopened.ffconcat").write_text("ffconcat version 1.0\nfile 'unopened.mp4'\nfile 'DJI_0001.MP4'\n")
    with pytest.raises(SourceError, match=r"cannot open .*unopened.ffconcat' \(.*\): its part 'unopened.mp4' cannot be"):
        FileSource("trip", str(tmp_path / "unopened.ffconcat"))
    for listed in ("first", "last"):
        source = FileSource("trip", str(tmp_path / f"{listed}.ffconcat"))
        assert len(list(source.frames())) == 20, listed
        assert source.damage == "a part of the list is damaged (its part 'no_index.mp4' holds no video)"
        assert source.frames_missing >= 1
    # a whole list, its parts named with a space, quoted and escaped, and by absolute path (FFmpeg's safe
    # mode refused them), is read once: its parts are not read through again after the pass
    (tmp_path / "DJI_0001.MP4").rename(tmp_path / "DJI 0001.MP4")
    (tmp_path / "whole.ffconcat").write_text(f"ffconcat version 1.0\nfile 'DJI 0001.MP4'\nfile DJI\\ 0001.MP4\n"
                                             f"file '{tmp_path / 'DJI_0002.MP4'}'\n")
    # a file named otherwise that merely begins as a list (an upload's .mp4) keeps FFmpeg's safe mode (found
    # in review: it read a video of another folder, by absolute path)
    (tmp_path / "upload.mp4").write_text(f"ffconcat version 1.0\nfile '{tmp_path / 'DJI_0002.MP4'}'\n")
    with pytest.raises(SourceError):
        list(FileSource("upload", str(tmp_path / "upload.mp4")).frames())
    import segstream.connectors.concat_lists as concat_lists

    monkeypatch.setattr(concat_lists, "_read_through", lambda *_: pytest.fail("a whole list read through again"))
    whole_list = FileSource("trip", str(tmp_path / "whole.ffconcat"))
    assert len(list(whole_list.frames())) == 60 and (whole_list.frames_missing, whole_list.damage) == (0, "")


def _with_audio(path: Path, video_s: float, audio_s: float, *codecs: str) -> Path:
    _ffmpeg("-t", str(video_s), "-f", "lavfi", "-i", "testsrc=size=64x48:rate=25", "-t", str(audio_s), "-f", "lavfi",
            "-i", "sine", *codecs, str(path))
    return path


H264_OPUS = ("-c:v", "libx264", "-preset", "ultrafast", "-c:a", "libopus")


@pytest.mark.parametrize("suffix,codecs", [
    ("mkv", H264_OPUS), ("webm", ("-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-c:a", "libopus")),
])
def test_an_intact_matroska_file_whose_audio_outlasts_its_video_is_not_called_damaged(tmp_path, suffix, codecs):
    # Found probing: 2 s of video beside 10 s of audio "looked damaged (truncated?)": Matroska has no
    # stream duration, so the container's (the audio's) was taken for the video's.
    source = FileSource("clip", str(_with_audio(tmp_path / f"clip.{suffix}", 1, 4, *codecs)))
    assert len(list(source.frames())) == 25
    assert (source.frames_missing, source.damage) == (0, "")


def test_a_truncated_matroska_file_with_audio_is_still_told_by_its_video_s_duration_tag(tmp_path):
    data = _with_audio(tmp_path / "whole.mkv", 3, 3, *H264_OPUS).read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: len(data) // 3])
    cut = FileSource("cut", str(tmp_path / "cut.mkv"))
    delivered = len(list(cut.frames()))
    assert delivered < 60 and cut.frames_missing > 0 and "of the 3.0" in cut.damage


def test_without_the_video_s_own_duration_a_container_with_audio_is_not_judged_by_its_length(tmp_path):
    data = _with_audio(tmp_path / "tagged.mkv", 1, 4, *H264_OPUS).read_bytes()
    assert data.count(b"DURATION") == 2, "the muxer's per-stream tags, to hide"
    (tmp_path / "untagged.mkv").write_bytes(data.replace(b"DURATION", b"DURATIOX"))  # as a muxer without them
    with av.open(str(tmp_path / "untagged.mkv")) as container:
        assert container.duration > 3_900_000 and "DURATION" not in container.streams.video[0].metadata
    source = FileSource("clip", str(tmp_path / "untagged.mkv"))
    assert len(list(source.frames())) == 25 and (source.frames_missing, source.damage) == (0, "")


def test_an_intact_matroska_file_whose_video_starts_late_is_not_called_damaged_and_a_cut_one_still_is(tmp_path):
    # Found probing: FFmpeg's Matroska muxer lists where a stream ends (its DURATION tag, the
    # segment's duration), which was taken for its length: a remux starting at 100 s "looked
    # damaged: its frames end after 10.00 s of the 110.00 s it lists", 2,500 frames missing; a
    # video from 2 s beside audio from 0, 51 missing.
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25", "-t", "2", "-c:v", "libx264", "-preset", "ultrafast",
            str(tmp_path / "src.mp4"))
    _ffmpeg("-i", str(tmp_path / "src.mp4"), "-c", "copy", "-output_ts_offset", "100", str(tmp_path / "late.mkv"))
    _ffmpeg("-itsoffset", "2", "-i", str(tmp_path / "src.mp4"), "-f", "lavfi", "-i", "sine=d=4", "-map", "0:v",
            "-map", "1:a", "-c:v", "copy", "-c:a", "libopus", str(tmp_path / "lead.mkv"))
    late = (tmp_path / "late.mkv").read_bytes()
    assert late.count(b"DURATION") == 1
    (tmp_path / "untagged.mkv").write_bytes(late.replace(b"DURATION", b"DURATIOX"))  # the segment's duration alone
    for name, starts_s, lists_s in (("late", 100, 102), ("lead", 2, 4), ("untagged", 100, 102)):
        with av.open(str(tmp_path / f"{name}.mkv")) as container:
            video = container.streams.video[0]
            listed = tagged_duration(video.metadata) or container.duration / 1e6
            assert (round(float(video.start_time * video.time_base), 1), round(listed, 1)) == (starts_s, lists_s), (
                f"{name}.mkv must list its end to mean anything")
        source = FileSource(name, str(tmp_path / f"{name}.mkv"))
        assert len(list(source.frames())) == 50 and (source.frames_missing, source.damage) == (0, ""), name
    for name in ("late", "untagged"):  # cut to a third: still told, by the length from its first frame
        data = (tmp_path / f"{name}.mkv").read_bytes()
        (tmp_path / f"cut_{name}.mkv").write_bytes(data[: len(data) // 3])
        cut = FileSource("cut", str(tmp_path / f"cut_{name}.mkv"))
        delivered = len(list(cut.frames()))
        assert delivered < 30 and abs(delivered + cut.frames_missing - 50) <= 2 and "of the 2.00 s" in cut.damage


def _garbage_mdat(path: Path) -> Path:
    """An MP4 whose index (moov) is whole and whose frame data (mdat) is random bytes."""
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25", "-t", "1", "-c:v", "libx264", "-preset", "ultrafast",
            "-movflags", "+faststart", str(path))
    data = bytearray(path.read_bytes())
    start = data.index(b"mdat") + 4
    data[start:] = np.random.default_rng(0).bytes(len(data) - start)
    path.write_bytes(bytes(data))
    return path


def test_a_file_without_a_decodable_frame_fails_its_run_instead_of_ending_normally(tmp_path, capsys):
    # Found probing: a valid index over random data published 0 frames, dropped 25 as decode errors
    # and "ended (end of input)" with exit 0.
    from segstream.pipeline.cli import main

    bad = _garbage_mdat(tmp_path / "garbage.mp4")
    with pytest.raises(SourceError, match=r"source bad: '.*garbage\.mp4' has no decodable video frames \(the decoder "
                                          r"rejected all 25 of its frames\)$"):
        list(FileSource("bad", str(bad)).frames())
    config = tmp_path / "run.yaml"
    config.write_text(
        f"sources: [{{name: bad, type: file, path: '{bad}'}}]\n"
        "model: {device: cpu, precision: fp32}\n"
        "ops: {http: null}\n"
        f"sinks: {{redis: {{enabled: false}}, files: {{enabled: true, dir: '{tmp_path / 'out'}'}}}}\n"
    )
    assert main(["run", str(config)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("segstream: error: source bad failed: ")
    assert "has no decodable video frames" in err.strip().splitlines()[-1]


def test_an_empty_file_and_an_unfinished_mp4_say_so_when_they_cannot_be_opened(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(SourceError, match=r"^source cam: cannot open '.*empty\.mp4': the file is empty \(0 bytes\)$"):
        FileSource("cam", str(tmp_path / "empty.mp4"))
    # moov written at the end, as a recorder does when it closes the file: cut before it
    whole = tmp_path / "whole.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25", "-t", "1", "-c:v", "libx264", "-preset", "ultrafast",
            str(whole))
    data = whole.read_bytes()
    (tmp_path / "unfinished.mp4").write_bytes(data[: data.index(b"moov") - 4])
    with pytest.raises(SourceError) as error:
        FileSource("cam", str(tmp_path / "unfinished.mp4"))
    line = str(error.value)
    assert "unfinished.mp4" in line and "moov atom not found" in line and "unfinished recording" in line
    assert "\n" not in line


def test_a_cover_picture_before_the_video_is_passed_over_for_the_video(tmp_path):
    # Found probing: an MKV whose first video track was its PNG cover was read as one frame.
    cover = tmp_path / "cover.png"
    _ffmpeg("-f", "lavfi", "-i", "color=red:size=64x48", "-frames:v", "1", str(cover))
    clip = tmp_path / "coverfirst.mkv"
    _ffmpeg("-i", str(cover), "-f", "lavfi", "-i", "testsrc=size=64x48:rate=25", "-t", "1", "-map", "0", "-map", "1",
            "-c:v:0", "png", "-c:v:1", "libx264", "-preset", "ultrafast", "-disposition:v:0", "0",
            "-disposition:v:1", "default", str(clip))
    with av.open(str(clip)) as container:
        assert container.streams.video[0].codec_context.name == "png", "the cover must come first to mean anything"
    source = FileSource("clip", str(clip))
    assert len(list(source.frames())) == 25 and source.info.codec == "h264"
    # sound with a cover picture (attached_pic) and nothing else: no video, said so
    song = tmp_path / "song.m4a"
    _ffmpeg("-t", "1", "-f", "lavfi", "-i", "sine", "-i", str(cover), "-map", "0", "-map", "1", "-c:a", "aac",
            "-c:v", "png", "-disposition:v", "attached_pic", str(song))
    with pytest.raises(SourceError, match=r"has no video stream \(only a cover picture\)$"):
        FileSource("song", str(song))


def test_a_file_with_two_video_streams_says_which_it_reads(tmp_path, caplog):
    # found probing camera interop: the other stream was passed over without a word
    import logging

    path = tmp_path / "two.ts"
    _ffmpeg("-f", "lavfi", "-i", "mandelbrot=size=160x120:rate=10", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=10",
            "-t", "1", "-map", "0:v", "-map", "1:v", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path))
    with caplog.at_level(logging.INFO, logger="segstream.sources"):
        source = FileSource("two", str(path))
        frames = list(source.frames())
    [said] = [r.getMessage() for r in caplog.records if "video streams" in r.getMessage()]
    read, other = ("160x120", "320x240") if "reading #0 160x120" in said else ("320x240", "160x120")
    said_read = (0, 1) if read == "160x120" else (1, 0)
    assert f"has 2 video streams: reading #{0 if read == '160x120' else 1} {read} h264 (FFmpeg's best), not " \
           f"#{1 if read == '160x120' else 0} {other} h264" in said, said
    width, height = (int(n) for n in read.split("x"))
    assert frames and {frame.image.shape[:2] for frame in frames} == {(height, width)}  # the one it says
    # and where a user looks besides the log: the streaming event, validate --connect's line
    from segstream.pipeline.config import FileSourceConfig
    from segstream.pipeline.preflight import source_check

    said = source.info.as_dict()
    assert (said["video_stream"], said["other_video_streams"]) == (f"#{said_read[0]} {read} h264",
                                                                   [f"#{said_read[1]} {other} h264"])
    assert source_check(FileSourceConfig(name="two", type="file", path=str(path))).endswith(
        f"(video stream #{said_read[0]} {read} h264 of 2; not read: #{said_read[1]} {other} h264)")


def _h264(path: Path, *args: str, seconds: float = 2, rate: int = 25) -> Path:
    """A 320x240 H.264 clip of a moving test pattern (single-threaded x264: the same bytes each time)."""
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={rate}", "-t", str(seconds), "-c:v", "libx264",
            "-preset", "veryfast", "-pix_fmt", "yuv420p", "-threads", "1", *args, str(path))
    return path


def _corrupt_pts(path: Path, **flags: bool) -> list[int]:
    """The PTS of the frames plain PyAV decodes from ``path`` that FFmpeg marks corrupt."""
    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        if flags.get("output_corrupt"):
            context.flags |= av.codec.context.Flags.output_corrupt
        return [f.pts for p in container.demux(container.streams.video[0]) for f in context.decode(p) if f.is_corrupt]


def test_a_frame_ffmpeg_decodes_corrupt_is_left_out_and_counted_as_a_decode_error_in_its_place(tmp_path):
    # Found probing phone footage: a frame decoded from a damaged packet (its blocks concealed with
    # the last frame's) was published as an ordinary frame, and nothing counted it.
    clip = _h264(tmp_path / "clip.mp4", "-bf", "0", "-g", "50")
    with av.open(str(clip)) as container:
        video = container.streams.video[0]
        packets = [p for p in container.demux(video) if p.size]
        step = round(1 / (video.average_rate * video.time_base))
        hit = packets[20]
        assert not hit.is_keyframe
        pts, pos, size = hit.pts, hit.pos, hit.size
    data = bytearray(clip.read_bytes())
    data[pos + size // 3: pos + size] = bytes(size - size // 3)  # its last two thirds lost
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    assert _corrupt_pts(damaged) == [pts], "FFmpeg must decode that frame, marked corrupt, to mean anything"

    source = FileSource("cam", str(damaged))
    frames = list(source.frames())
    assert (len(frames), source.decode_errors) == (49, 1)
    assert 20 not in {f.index for f in frames} and [f.index for f in frames] == [f.pts // step for f in frames]
    assert (source.frames_missing, source.damage) == (0, "")

    # a recording cut mid-GOP: the frames before its first keyframe lack their references (made
    # up from grey where the decoder is asked to output them; kept back and never counted before)
    whole = _h264(tmp_path / "whole.ts", "-bf", "0", "-g", "25", "-f", "mpegts")
    with av.open(str(whole)) as source_file, av.open(str(tmp_path / "cut.ts"), "w", format="mpegts") as out:
        video = source_file.streams.video[0]
        copy = out.add_stream_from_template(video)
        for n, packet in enumerate(p for p in source_file.demux(video) if p.size):
            if n >= 5:
                packet.stream = copy
                out.mux(packet)
    assert len(_corrupt_pts(tmp_path / "cut.ts", output_corrupt=True)) == 20 and not _corrupt_pts(tmp_path / "cut.ts")
    cut = FileSource("cut", str(tmp_path / "cut.ts"))
    frames = list(cut.frames())
    assert (len(frames), cut.decode_errors, cut.leading_errors, cut.frames_missing) == (25, 20, 20, 0)
    assert [f.index for f in frames] == list(range(25)), "numbered from the first decodable frame, as FFmpeg does"


def _ffprobe_pts(path: Path) -> list[int]:
    """The PTS of the frames ffprobe decodes from ``path``, in the order it numbers them."""
    shown = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts",
                            "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    return [int(line.strip(",")) for line in shown.split()]


def test_a_file_cut_mid_gop_numbers_its_frames_as_ffmpeg_does_and_counts_the_ones_it_cannot_decode(tmp_path):
    # Found probing: a TS cut with ffmpeg -ss from an open-GOP recording starts with a B-frame whose
    # references were cut off; FFmpeg numbers the frame after it 0, segstream numbered it 1 (9 for
    # a cut at a byte offset), so every mask was one frame off FFmpeg's select=eq(n,N).
    from segstream.pipeline.render import _frames_after

    whole = tmp_path / "opengop.ts"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25", "-t", "6", "-c:v", "libx264", "-preset", "ultrafast",
            "-bf", "3", "-x264-params", "open-gop=1:keyint=50:scenecut=0", "-threads", "1", str(whole))
    cut = tmp_path / "cut.ts"
    _ffmpeg("-ss", "2.5", "-i", str(whole), "-c", "copy", str(cut))
    leading = _corrupt_pts(cut, output_corrupt=True)
    shown = _ffprobe_pts(cut)
    assert leading and max(leading) < shown[0], "frames before the first decodable one, to mean anything"

    source = FileSource("cut", str(cut))
    frames = list(source.frames())
    assert [f.pts for f in frames] == shown and [f.index for f in frames] == list(range(len(shown)))
    assert (source.decode_errors, source.leading_errors, source.frames_missing) == (len(leading), len(leading), 0)
    # render's count of a video's frames after a run's last entry leaves them out too
    assert _frames_after(cut, frames[20], source.leading_errors) == len(frames) - 21


def test_a_truncated_ts_counts_the_frames_its_cut_left_out_before_its_last_one(tmp_path):
    # Found probing: a TS with B-frames cut mid-file ended in a gap (its last P-frame decoded, the
    # B-frames shown before it cut off): those frames were neither delivered nor counted.
    whole = _h264(tmp_path / "whole.ts", "-bf", "2", "-g", "25", "-f", "mpegts", seconds=4)
    with av.open(str(whole)) as container:
        video = container.streams.video[0]
        packets = [(p.pts, p.pos) for p in container.demux(video) if p.size]
        step = round(1 / (video.average_rate * video.time_base))
    # cut where the next packets are the B-frames of the P-frame before: past the middle, ahead of it
    at = next(n for n in range(len(packets) // 2, len(packets) - 2)
              if packets[n + 1][0] < packets[n][0] and packets[n + 2][0] < packets[n][0])
    (tmp_path / "cut.ts").write_bytes(whole.read_bytes()[: packets[at + 1][1]])
    last = packets[at][0]
    shown_before = sorted(pts for pts, _ in packets[: at + 1])
    gap = (last - shown_before[-2]) // step - 1
    assert gap >= 1, "the file must end in a gap to mean anything"

    source = FileSource("cut", str(tmp_path / "cut.ts"))
    frames = list(source.frames())
    assert (len(frames), source.decode_errors) == (at + 1, 0), "every frame whose packet came is delivered"
    assert source.frames_missing == gap and f"{gap} frame" in source.damage and "never came" in source.damage
    assert frames[-1].index + 1 + source.frames_missing == (last - packets[0][0]) // step + 1
    # the whole file ends without one
    intact = FileSource("whole", str(whole))
    assert len(list(intact.frames())) == 100 and (intact.frames_missing, intact.damage) == (0, "")


def _cut_mjpeg_avi(tmp_path: Path, frames: int = 32) -> tuple[Path, Path, int]:
    """A camera trap's MJPEG AVI (8 fps, with PCM audio) and a copy of it cut in the middle of
    its packet ``frames // 3``, as a half-finished copy off an SD card is; and that packet's number."""
    whole = tmp_path / "whole.avi"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=8", "-f", "lavfi", "-i", "sine=r=8000",
            "-frames:v", str(frames), "-t", str(frames / 8), "-c:v", "mjpeg", "-c:a", "pcm_s16le", str(whole))
    with av.open(str(whole)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    at = frames // 3
    (tmp_path / "cut.avi").write_bytes(whole.read_bytes()[: packets[at][0] + packets[at][1] // 2])
    return whole, tmp_path / "cut.avi", at


def test_an_avi_cut_short_is_judged_by_the_frames_its_header_says_were_recorded(tmp_path):
    # Found probing: a 10 s MJPEG AVI cut at 30% was recorded done, 25 frames, no damage: FFmpeg's
    # duration of it is what a scan found where the index at its end was cut off (3 s), while
    # its header still says 80 frames were recorded.
    whole, cut, at = _cut_mjpeg_avi(tmp_path)
    with av.open(str(cut)) as container:
        video = container.streams.video[0]
        assert video.frames == 32 and float(video.duration * video.time_base) < 2, (
            "its header must say 32 frames and its duration only what is left, to mean anything")
    source = FileSource("cut", str(cut))
    delivered = len(list(source.frames()))
    assert delivered <= at + 1 and "of the 4.00 s it lists" in source.damage
    assert delivered + source.decode_errors + source.frames_missing == 32
    # whole files, of the formats whose count PyAV gives (AVI, MP4, MOV) or not (Matroska, TS)
    for name, codec in (("whole.avi", ()), ("h264.avi", ("-c:v", "libx264", "-bf", "2")), ("clip.mp4", ()),
                        ("clip.mov", ()), ("clip.mkv", ()), ("clip.ts", ())):
        if name != "whole.avi":
            _ffmpeg("-i", str(whole), *codec, str(tmp_path / name))
        intact = FileSource("whole", str(tmp_path / name))
        assert len(list(intact.frames())) == 32 and (intact.frames_missing, intact.damage) == (0, ""), name


def test_the_half_frame_a_file_ends_in_is_left_out_as_a_decode_error_though_ffmpeg_does_not_mark_it(tmp_path):
    # Found probing: the last JPEG of a half-copied camera AVI, its second half missing, was kept as
    # a good frame ("EOI missing, emulating"): the demuxer flags its packet damaged, not the decoder its frame
    _, cut, at = _cut_mjpeg_avi(tmp_path)
    with av.open(str(cut)) as container:
        video = container.streams.video[0]
        packets = [p for p in container.demux(video) if p.size]
        assert len(packets) == at + 1 and packets[-1].is_corrupt, "the file must end in a packet cut short"
        assert not any(frame.is_corrupt for p in packets for frame in video.codec_context.decode(p)), \
            "FFmpeg must not mark the frame to mean anything"
    source = FileSource("cut", str(cut))
    frames = list(source.frames())
    assert [f.index for f in frames] == list(range(at)) and source.decode_errors == 1
