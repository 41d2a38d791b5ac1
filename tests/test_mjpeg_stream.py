"""MJPEG IP cameras over HTTP (``multipart/x-mixed-replace``): a format without timestamps, whose
frames FFmpeg would time at a made-up 25 fps, and whose frames cut short by a dropped link the
decoder would fill in with the last frame's pixels."""

import pytest

from segstream.connectors.live_source import ReconnectPolicy
from segstream.connectors.stream_source import StreamSource
from tests.live_servers import MjpegCamera


def _take(source: StreamSource, count: int) -> list:
    frames = []
    for frame in source.frames():
        frames.append(frame)
        if len(frames) == count:
            break
    source.close()
    return frames


def test_a_10_fps_mjpeg_camera_is_timed_by_its_frames_arrival_and_stays_live():
    # Found probing: timed at FFmpeg's made-up 25 fps, a 10 fps camera read 0.6 s further behind
    # live each second (a lag warning telling to fix a camera that was fine; catch-up skipping its
    # frames until the stall watchdog reconnected), and its max_fps kept one frame in 12.
    with MjpegCamera(fps=10) as camera:
        source = StreamSource("lobby", camera.url, policy=ReconnectPolicy(read_timeout_s=5), max_behind_s=1.0)
        frames = _take(source, 40)
    seconds = [f.pts_seconds for f in frames]
    span = seconds[-1] - seconds[10]  # after the start's burst (frames read while probing)
    assert 2.5 < span < 3.5, seconds
    offsets = [f.capture_wall - f.pts_seconds for f in frames[10:]]
    assert max(offsets) - min(offsets) < 0.3, "its timestamps keep pace with the clock"
    assert source.info.fps is None and source.frames_skipped == 0
    assert [f.index for f in frames] == list(range(40))


def test_a_slow_mjpeg_camera_opens_at_its_first_frame_and_is_not_silent_between_its_frames(caplog):
    """Found probing timelapse cameras: FFmpeg held the open of an MJPEG camera for 6 frames to
    probe a rate that is never used (a 0.33 fps camera never opened in its 10 s; at 1 fps each
    session began 6 s late, in a burst), and a steady 0.33 fps camera was 'no frames for 3.0 s' at
    every frame, its whole run counted as down time."""
    import time

    with MjpegCamera(fps=0.8, size=(320, 240)) as camera:  # 320x240: the first frame fills FFmpeg's first probe
        policy = ReconnectPolicy(open_timeout_s=3, read_timeout_s=3, max_reconnects=0)
        source = StreamSource("crane", camera.url, policy=policy)
        opened = time.time()
        frames = _take(source, 3)
    assert frames[0].capture_wall - opened < 1.0, "its first frame as it came, not 5 frames later"
    intervals = [b.pts_seconds - a.pts_seconds for a, b in zip(frames, frames[1:])]
    assert all(abs(i - 1.25) < 0.3 for i in intervals), intervals
    assert source.gap_s == 0 and "no frames for" not in caplog.text


def test_an_mjpeg_frame_cut_short_is_counted_as_a_decode_error_not_published_as_whole():
    # (padded after their end, as some cameras send them: found reviewing, every frame was rejected)
    with MjpegCamera(fps=20, cut_every=4, pad=100) as camera:
        source = StreamSource("lobby", camera.url, policy=ReconnectPolicy(read_timeout_s=5))
        frames = _take(source, 30)
    assert source.decode_errors >= 9, (source.decode_errors, camera.cut)
    indices = [f.index for f in frames]
    assert len(set(b - a for a, b in zip(indices, indices[1:])) - {1, 2}) == 0, indices
    # each cut frame leaves its place in the index (one cut after the last frame taken may be counted too)
    assert 0 <= len(frames) + source.decode_errors - (indices[-1] + 1) <= 1, (indices, source.decode_errors)


@pytest.mark.parametrize("name, noise", [("snapshot.jpg", False), ("snap.jpg", True), ("snapshot.cgi", True)])
def test_a_snapshot_url_read_as_a_stream_fails_saying_it_is_one_picture(tmp_path, caplog, name, noise):
    """Found probing: a camera's /snapshot.jpg as a stream gave one frame and ended the source as a
    finite video that had ended (exit 0); a stream source does not poll pictures, a snapshot source does.
    Then (timelapse probe) a JPEG of more than 2 KB at a URL ending in .jpg still did: FFmpeg reads it
    with ``image2`` (named by the suffix), not ``jpeg_pipe``; and each picture was first called a finite
    video to use type: file for."""
    import cv2
    import numpy as np

    from segstream.connectors.errors import SegstreamError, SourceError
    from segstream.pipeline.config import ConfigError, validate_config
    from segstream.pipeline.preflight import source_check
    from tests.live_servers import StaticHttpServer

    picture = np.zeros((120, 160, 3), np.uint8)
    if noise:
        picture = np.random.default_rng(1).integers(0, 256, picture.shape, np.uint8)
    data = cv2.imencode(".jpg", picture)[1].tobytes()
    # FFmpeg probes 2 KB first: a whole JPEG in them is named by its bytes (jpeg_pipe), a larger one
    # by its URL's suffix if it has one (image2)
    assert (len(data) > 2048) == noise
    (tmp_path / name).write_bytes(data)
    with StaticHttpServer(tmp_path) as server:
        url = f"http://127.0.0.1:{server.port}/{name}"
        source = StreamSource("gate", url, policy=ReconnectPolicy())
        with pytest.raises(SourceError, match=r"is a single picture \(a camera's snapshot URL\?\), not a video "
                                              r"stream — poll it with type: snapshot .* the camera's MJPEG \(multipart\) "
                                              r"or RTSP URL"):
            list(source.frames())
        assert source.state == "failed"
        assert "finite video" not in caplog.text, "no advice to read a picture with type: file"
        # validate --connect says it as the run does (it said ok)
        config = validate_config({"sources": [{"name": "gate", "type": "stream", "url": url}]}).sources[0]
        with pytest.raises(SegstreamError, match=r"is a single picture \(a camera's snapshot URL\?\)"):
            source_check(config)
    # nor does an images source take a URL (it was looked for as a local path)
    with pytest.raises(ConfigError, match=r"'http://\*\*\*@127.0.0.1/snapshot.jpg' is a URL — type: images reads a local"):
        validate_config({"sources": [{"name": "gate", "type": "images", "path": "http://admin:pw@127.0.0.1/snapshot.jpg"}]})


def test_a_camera_answering_its_login_page_is_said_to_answer_a_web_page(tmp_path):
    """Found probing: a camera that answered 200 with an HTML login page was said as a connection
    lost before an MP4's index arrived."""
    import pytest

    from segstream.connectors.errors import SourceError
    from tests.live_servers import StaticHttpServer

    (tmp_path / "login.html").write_text("<html><body><form>user <input name=u></form></body></html>" * 20)
    with StaticHttpServer(tmp_path) as server:
        source = StreamSource("gate", f"http://127.0.0.1:{server.port}/login.html", policy=ReconnectPolicy())
        with pytest.raises(SourceError, match=r"answered a web page \(text/html\), not video — a camera's login"):
            list(source.frames())


def test_a_raw_h264_file_over_http_read_as_a_stream_plays_at_its_own_rate(tmp_path):
    """Found reviewing: a raw H.264 file served over HTTP (a format without timestamps, but with a
    size: a file, not a live stream) was timed by arrival and played at decoding speed."""
    import subprocess

    from tests.live_servers import FFMPEG, StaticHttpServer

    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-t", "2",
                    "-c:v", "libx264", "-bf", "0", "-f", "h264", str(tmp_path / "clip.h264")], check=True)
    with StaticHttpServer(tmp_path) as server:
        source = StreamSource("raw", f"http://127.0.0.1:{server.port}/clip.h264", policy=ReconnectPolicy())
        frames = list(source.frames())
    assert len(frames) == 50
    assert abs(frames[-1].pts_seconds - frames[0].pts_seconds - 49 / 25) < 0.01
    assert frames[-1].capture_wall - frames[0].capture_wall > 1.5, "played at its own rate, as a live stream"
