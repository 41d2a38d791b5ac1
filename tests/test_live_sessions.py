"""How a live source joins one session of its input to the next, driven by scripted sessions.

Each session is the pictures an input delivers between an open and its end, with the length and
format FFmpeg reported: these tests choose timestamps and pixels exactly (a reopened playlist's
repeats, a restarted publisher on the same clock, a timestamp going back, a video missing a part),
which real servers give only by chance. The servers' side of the same behaviour is tested in
test_stream_source.py against ffmpeg publishing over HTTP.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from fractions import Fraction

import numpy as np
import pytest

from segstream.connectors.av_input import InputChanged, InputInfo, Picture
from segstream.connectors.errors import SourceError
from segstream.connectors.live_source import LiveSource
from tests.test_stream_source import QUICK, StateLog

TIME_BASE = Fraction(1, 90_000)
STEP = 3600  # 25 fps


class Session:
    """One opened input: its pictures, then the end of the stream (as FFmpeg reports an end)."""

    def __init__(self, pictures: list[Picture], duration_s: float | None = None, format_name: str = "hls",
                 size_bytes: int | None = None):
        self._pictures = pictures
        self.duration_s = duration_s
        self.format_name = format_name
        self.size_bytes = size_bytes
        self.video_duration = True  # the length is the video's own (an mp4's, a playlist's)
        self.decode_errors = 0
        self.pending_rejected = 0
        self.frames_lost = 0
        self.lost_are_errors = True  # a stream's
        self.last_read = time.monotonic()
        self.info = InputInfo(32, 24, "h264", "yuv420p", 25.0)
        self.closed = False

    def pictures(self):
        for picture in self._pictures:
            self.last_read = time.monotonic()
            yield picture

    def close(self) -> None:
        self.closed = True


def frames(numbers, shade=0) -> list[Picture]:
    """Pictures at the given frame numbers (times 40 ms); the pixels tell the frame and ``shade``."""
    return [
        Picture(np.full((24, 32, 3), (n * 7 + shade) % 256, np.uint8), n * STEP, TIME_BASE, STEP, time.time(), None)
        for n in numbers
    ]


def play(*sessions: Session, **policy) -> tuple[list, StateLog, BaseException | None]:
    """What a live source delivers over these sessions, opened one after the other; after the
    last one it is closed. Returns its frames, its state log and the error it raised, if any."""
    source = LiveSource("cam", "http://cams.example/live.m3u8", policy=dataclasses.replace(QUICK, delay_s=0.01, **policy))
    pending = list(sessions)

    def open_next():
        if not pending:
            source.close()
            raise SourceError("no more sessions")
        return pending.pop(0)

    source._open = open_next
    source.on_state = log = StateLog()
    delivered, error = [], None
    timer = threading.Timer(30, source.close)
    timer.start()
    try:
        for frame in source.frames():
            delivered.append(frame)
    except SourceError as raised:
        error = raised
    finally:
        timer.cancel()
    # every input the source opened, it closed (its capture thread does, once let go)
    opened = [session for session in sessions if session not in pending]
    deadline = time.monotonic() + 5
    while not all(session.closed for session in opened) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(session.closed for session in opened)
    return delivered, log, error


def shades(delivered) -> list[int]:
    return [int(f.image[0, 0, 0]) for f in delivered]


def shade_of(numbers, shade=0) -> list[int]:
    return [(n * 7 + shade) % 256 for n in numbers]


def test_a_playlist_opened_again_skips_the_frames_it_had_delivered_and_counts_them():
    delivered, log, _ = play(Session(frames(range(30))), Session(frames(range(20, 40))))
    assert shades(delivered) == shade_of(range(40))
    streaming = [e for e in log.entries if e[1] == "streaming"]
    assert streaming[1][3]["repeats_skipped"] == 10 and "after skipping 10 frames" in streaming[1][2]
    assert [f.epoch for f in delivered] == [0] * 30 + [1] * 10


def test_a_restarted_publisher_on_the_same_clock_is_not_taken_for_a_replay():
    """A publisher restarted within a minute stamps its frames with the times the old one used;
    its pixels differ, so every frame is new (found reviewing: up to a minute of them skipped)."""
    delivered, log, _ = play(Session(frames(range(30))), Session(frames(range(5, 25), shade=100)))
    assert shades(delivered) == shade_of(range(30)) + shade_of(range(5, 25), shade=100)
    assert all("repeats_skipped" not in e[3] for e in log.entries)


def test_a_timestamp_going_back_within_a_session_skips_nothing():
    """An encoder restarted inside the playlist (a discontinuity) starts its clock again: no frame
    of a session is skipped for its time alone."""
    delivered, _, _ = play(Session(frames(range(20)) + frames(range(10, 30), shade=50)))
    assert shades(delivered) == shade_of(range(20)) + shade_of(range(10, 30), shade=50)


def test_a_session_of_only_repeats_says_so_when_it_ends():
    delivered, log, _ = play(Session(frames(range(30))), Session(frames(range(24, 30))))
    assert len(delivered) == 30
    reconnecting = [e for e in log.entries if e[1] == "reconnecting"]
    assert reconnecting[0][3].get("repeats_skipped") is None  # the first session ended with new frames
    assert reconnecting[1][3]["repeats_skipped"] == 6


class ChangedSession(Session):
    """A live stream's session whose decoder, after its pictures, made nothing of ``rejected``
    packets: another sender took over with another codec (``InputChanged``)."""

    def __init__(self, pictures: list[Picture], rejected: int):
        super().__init__(pictures, format_name="mpegts")
        self.rejected = rejected

    def pictures(self):
        yield from super().pictures()
        self.decode_errors += self.rejected
        raise InputChanged(f"the h264 decoder that read it made nothing of the last {self.rejected} packets "
                           f"({self.rejected} rejected): another codec or stream parameters", self.rejected)


def test_a_sender_the_decoder_cannot_read_is_opened_again_at_once_as_a_new_epoch():
    delivered, log, _ = play(ChangedSession(frames(range(20)), 12),
                             Session(frames(range(5, 25), shade=100), format_name="mpegts"))
    assert log.states[:4] == ["connecting", "streaming", "streaming", "reconnecting"], log.entries  # then the end
    renewed = log.entries[2]
    assert renewed[3]["restarted"] is True and renewed[3]["epoch"] == 1 and renewed[3]["reconnects"] == 0
    assert "its stream started anew: the h264 decoder that read it made nothing of the last 12 packets" in renewed[2]
    assert shades(delivered) == shade_of(range(20)) + shade_of(range(5, 25), shade=100)
    assert [f.epoch for f in delivered] == [0] * 20 + [1] * 20
    assert [f.index for f in delivered] == list(range(20)) + list(range(32, 52))  # the 12 leave their gap
    pts = [f.pts for f in delivered]
    assert all(b > a for a, b in zip(pts, pts[1:]))


def test_a_session_whose_decoder_never_read_it_is_lost_and_retried_as_any_other():
    delivered, log, _ = play(ChangedSession([], 12), Session(frames(range(10)), format_name="mpegts"))
    assert log.states[:3] == ["connecting", "reconnecting", "streaming"], log.entries
    assert "restarted" not in log.first("streaming")[3]
    assert [f.index for f in delivered] == list(range(10))


def test_a_finite_video_missing_a_part_in_the_middle_fails_though_it_reaches_its_end():
    """FFmpeg passes over a segment it cannot fetch and goes on: the span from first to last frame
    is the whole video, what was played is not (found reviewing: a normal end)."""
    video = frames(range(25)) + frames(range(100, 125))  # 0-1 s and 4-5 s of a 5 s video
    delivered, log, error = play(Session(video, duration_s=5.0, format_name="mp4"))
    assert len(delivered) == 50
    assert error is not None and "lost part-way" in str(error) and "after 2.0 s of its 5.0 s" in str(error)
    assert log.states[-1] == "failed"


def test_a_segment_missing_in_the_middle_fails_the_video_though_its_end_came():
    """One second of a playlist gone, its end reached (found probing: exit 0, nothing counted)."""
    video = frames(range(25)) + frames(range(50, 75))  # 1-2 s of 3 s missing
    delivered, _, error = play(Session(video, duration_s=3.0, format_name="hls"))
    assert len(delivered) == 50
    assert error is not None and "after 2.0 s of its 3.0 s, 1.0 s of it skipped" in str(error)


def test_a_jump_in_timestamps_of_a_video_played_whole_is_a_normal_end():
    """A playlist's discontinuity jumps, and skips nothing: what matters is what was played."""
    video = frames(range(13)) + frames(range(37, 50))  # two halves of a one-second video, a second apart
    delivered, log, error = play(Session(video, duration_s=1.04, format_name="hls"))
    assert error is None and len(delivered) == 26 and log.states[-1] == "ended"


def test_a_file_of_known_size_without_a_duration_plays_once_and_ends():
    """An MPEG-TS over HTTP tells no duration, only its size: it was read as live and replayed
    forever, as fast as it decoded (found probing: 70 passes in 40 s)."""
    clip = Session(frames(range(20)), format_name="mpegts", size_bytes=171_456)
    started = time.monotonic()
    delivered, log, error = play(clip, Session(frames(range(20)), format_name="mpegts", size_bytes=171_456))
    assert error is None and len(delivered) == 20 and log.states.count("reconnecting") == 0
    assert time.monotonic() - started > 0.6  # at its own rate: 20 frames at 25 fps
    assert log.states[-1] == "ended" and "finite video and has ended" in log.entries[-1][2]


def test_a_finite_video_that_ends_within_the_slack_of_its_length_ends_normally():
    delivered, log, error = play(Session(frames(range(90)), duration_s=3.8, format_name="mp4"))  # 3.6 s
    assert error is None and len(delivered) == 90
    assert log.states[-1] == "ended" and "finite video and has ended" in log.entries[-1][2]


def test_a_live_stream_that_reconnects_to_something_with_a_length_keeps_streaming():
    """Once live, a source stays live whatever its input plays next (an RTMP server's placeholder
    clip): only an HLS playlist finished by its publisher ends it (found reviewing: it ended)."""
    delivered, log, _ = play(Session(frames(range(10)), format_name="flv"),
                             Session(frames(range(10, 20)), duration_s=0.4, format_name="flv"),
                             Session(frames(range(20, 30)), format_name="flv"))
    assert len(delivered) == 30 and log.states.count("reconnecting") == 3
    assert "finite" not in " ".join(e[2] for e in log.entries)


@pytest.mark.parametrize("wait", [False, True])
def test_a_finished_live_playlist_ends_the_source_or_is_waited_on(wait):
    """#EXT-X-ENDLIST ends a live playlist for good unless ``wait_for_input`` waits for its
    publisher to start it again (found reviewing: a 24/7 source ended by a graceful restart)."""
    live, finished = Session(frames(range(10))), Session(frames(range(5, 10)), duration_s=0.4)
    restarted = Session(frames(range(10), shade=100))
    delivered, log, error = play(live, finished, restarted, wait_for_input=wait)
    assert error is None
    if wait:
        assert len(delivered) == 20 and [f.epoch for f in delivered].count(1) == 10
        assert any("waiting for it to go live again" in e[2] for e in log.entries if e[1] == "reconnecting")
    else:
        assert len(delivered) == 10
        assert log.states[-1] == "ended" and "publisher finished" in log.entries[-1][2]


def test_a_containers_length_which_its_audio_may_outlast_allows_more_slack():
    """A Matroska file over HTTP gives only the container's length (found reviewing: a complete
    video whose audio ran past it by over half a second failed)."""
    clip = Session(frames(range(75)), duration_s=4.0, format_name="matroska,webm")  # 3 s of video
    clip.video_duration = False
    delivered, log, error = play(clip)
    assert error is None and len(delivered) == 75 and log.states[-1] == "ended"


def test_a_new_senders_clock_gone_back_is_said_so_through_the_mpeg_ts_wrap():
    """Found by the SRE probe: a camera restarted with its clock 816 s back was logged as 'its
    timestamps jumped +94627.9 s' (FFmpeg's wrap correction adds 2^33 ticks to a clock gone back)."""
    from segstream.connectors.live_source import MPEG_TS_WRAP, _Sender

    image = np.zeros((2, 2, 3), np.uint8)

    def picture(pts: int) -> Picture:
        return Picture(image, pts, Fraction(1, 90000), 3600, time.time(), None)

    sender = _Sender("udp://127.0.0.1:5000")
    assert sender.check(picture(1000 * 90000)) is None
    assert sender.check(picture(184 * 90000 + MPEG_TS_WRAP)).startswith("its timestamps jumped -816.0 s in ")
    crossing = _Sender("udp://127.0.0.1:5000")  # a clock that runs across the wrap goes on
    assert crossing.check(picture(MPEG_TS_WRAP - 3600)) is None and crossing.check(picture(MPEG_TS_WRAP)) is None
    ahead = _Sender("udp://127.0.0.1:5000")  # a clock a day ahead, no wrap: said as it is
    assert ahead.check(picture(90000)) is None
    assert ahead.check(picture(90000 + 90000 * 90000)).startswith("its timestamps jumped +90000.0 s")


def test_a_new_senders_jump_after_a_silence_says_the_silence_not_the_time_since_the_old_senders_last_frame():
    """Found probing a drone link: a sender killed and started again 2 s later, 7.6 s back in its
    file, was 'its timestamps jumped -7.6 s in 0.0 s': the old sender's last frame, held back in the
    demuxer through the silence, came out just before the new sender's first."""
    from segstream.connectors.live_source import _Sender

    image, now = np.zeros((2, 2, 3), np.uint8), 100.0

    def picture(pts_s: float, decoded_at: float) -> Picture:
        return Picture(image, round(pts_s * 90000), Fraction(1, 90000), 3600, time.time(), None, decoded_at=decoded_at)

    sender = _Sender("udp://127.0.0.1:5000")
    assert sender.check(picture(20.0, now)) is None
    assert sender.check(picture(20.04, now + 2.0)) is None  # the old sender's last, out after the silence
    reason = sender.check(picture(12.44, now + 2.0))
    assert reason == "its timestamps jumped -7.6 s in 2.0 s", reason


def test_a_stall_counts_its_silence_as_down_time_once():
    """Found probing HLS cameras: a stale playlist opened again while reconnecting, bringing
    nothing new until its read timeout, had that silence counted twice (in the reconnecting
    state's time and as a gap): 87 s down for 67 s without frames."""
    from segstream.connectors.live_source import _Lost

    source = LiveSource("cam", "udp://127.0.0.1:9", policy=QUICK)
    for state, counted in (("reconnecting", 0.0), ("streaming", 5.0)):
        source.state = state
        before = source.gap_s
        with pytest.raises(_Lost):
            source._stall("no data for 5 s (read timeout)", "read", 5.0, time.monotonic() - 5.0)
        assert source.gap_s - before == pytest.approx(counted, abs=0.2), state
    source.close()
