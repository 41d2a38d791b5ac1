"""The camera source. This VM has no V4L2 device (no /dev/video*, no v4l2loopback module), so the
capture code runs on a file: the same CameraSource, with FFmpeg probing the input instead of
forcing its v4l2 demuxer."""

from __future__ import annotations

import glob
import logging
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from segstream.connectors.camera_source import CameraSource
from segstream.connectors.errors import SourceError
from segstream.connectors.live_source import ReconnectPolicy
from tests.live_servers import FFMPEG


def _states(source):
    log = []
    source.on_state = lambda state, reason, data: log.append((state, reason, data))
    return log


def _take(source, count):
    timer = threading.Timer(30, source.close)
    timer.start()
    frames = []
    try:
        for frame in source.frames():
            frames.append(frame)
            if len(frames) == count:
                break
    finally:
        timer.cancel()
        source.close()
    return frames


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_camera_source_on_a_file_because_this_vm_has_no_video_device_reports_what_was_granted(clip):
    source = CameraSource("usb", str(clip), width=320, height=240, fps=30, pixel_format="MJPG", driver=None)
    log = _states(source)
    warnings = _Lines()
    logging.getLogger("segstream.sources").addHandler(warnings)  # the CLI may have stopped propagation
    try:
        frames = _take(source, 12)
    finally:
        logging.getLogger("segstream.sources").removeHandler(warnings)
    assert [f.index for f in frames] == list(range(12)) and frames[0].image.shape == (120, 160, 3)
    streaming = next(data for state, _, data in log if state == "streaming")
    assert streaming["requested"] == {"width": 320, "height": 240, "fps": 30, "pixel_format": "MJPG"}
    assert streaming["negotiated"] == {"width": 160, "height": 120, "fps": 10.0, "pixel_format": "yuv420p"}
    assert source.negotiated == streaming["negotiated"]
    assert any("granted width 160 instead of 320, height 120 instead of 240, fps 10.0 instead of 30" in line
               for line in warnings.lines)


def test_camera_requests_go_to_ffmpegs_v4l2_input():
    source = CameraSource("usb", 2, width=1280, height=720, fps=30, pixel_format="YUYV")
    assert (source.target, source.format) == ("/dev/video2", "v4l2")
    assert source.options == {"video_size": "1280x720", "framerate": "30", "input_format": "yuyv422"}
    assert CameraSource("usb", "/dev/v4l/by-id/cam", pixel_format="MJPG").options == {"input_format": "mjpeg"}


def test_a_camera_that_is_not_plugged_in_at_the_start_fails_at_once():
    source = CameraSource("usb", "/dev/video97", policy=ReconnectPolicy(delay_s=0.05, max_delay_s=0.1))
    log = _states(source)
    with pytest.raises(SourceError, match="'/dev/video97' does not exist .*wait_for_input: true"):
        list(source.frames())
    assert [state for state, _, _ in log] == ["connecting", "failed"] and source.reconnects == 0


def test_a_camera_waited_for_is_retried_then_reported():
    policy = ReconnectPolicy(max_reconnects=2, delay_s=0.05, max_delay_s=0.1, wait_for_input=True)
    source = CameraSource("usb", "/dev/video97", policy=policy)
    log = _states(source)
    with pytest.raises(SourceError, match="/dev/video97"):
        list(source.frames())
    assert [state for state, _, _ in log] == ["connecting", "reconnecting", "reconnecting", "failed"]
    assert "gave up after 2 reconnect attempts" in log[-1][1]


def _loopback_device() -> str | None:
    for name_file in glob.glob("/sys/class/video4linux/video*/name"):
        if "loopback" in Path(name_file).read_text().lower() or "dummy" in Path(name_file).read_text().lower():
            return "/dev/" + Path(name_file).parent.name
    return None


@pytest.mark.skipif(_loopback_device() is None or not shutil.which("ffmpeg"),
                    reason="no v4l2loopback device here (this VM has no /dev/video*); the file test above runs "
                           "the same capture code")
@pytest.mark.parametrize("backend", ["ffmpeg", "opencv"])
def test_camera_source_on_a_v4l2_loopback_device(backend):
    device = _loopback_device()
    feeder = subprocess.Popen([FFMPEG, "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=15",
                               "-pix_fmt", "yuyv422", "-f", "v4l2", device])
    try:
        source = CameraSource("usb", device, width=320, height=240, pixel_format="YUYV", backend=backend)
        log = _states(source)
        frames = _take(source, 10)
    finally:
        feeder.kill()
    assert len(frames) == 10 and frames[0].image.shape == (240, 320, 3)
    streaming = next(data for state, _, data in log if state == "streaming")
    assert streaming["negotiated"]["pixel_format"] == "YUYV"


def test_the_opencv_backend_on_a_file_because_this_vm_has_no_video_device_reads_and_reports_what_was_granted(clip):
    source = CameraSource("usb", str(clip), width=320, height=240, fps=30, backend="opencv")
    log = _states(source)
    frames = _take(source, 12)
    assert [f.index for f in frames] == list(range(12)) and frames[0].image.shape == (120, 160, 3)
    pts = [f.pts_seconds for f in frames]
    # the file's own clock, 10 fps (found in review: a first position of 0 mixed in the arrival clock)
    assert [round(b - a, 3) for a, b in zip(pts, pts[1:])] == [0.1] * 11, pts
    streaming = next(data for state, _, data in log if state == "streaming")
    assert streaming["requested"] == {"width": 320, "height": 240, "fps": 30, "pixel_format": None}
    assert (streaming["negotiated"]["width"], streaming["negotiated"]["height"]) == (160, 120)
    assert streaming["negotiated"]["fps"] == 10.0
    # the same pixels as FFmpeg's reading of the file (both RGB, both the same decoder underneath)
    ffmpeg_frames = _take(CameraSource("usb", str(clip), driver=None), 3)
    for mine, theirs in zip(frames, ffmpeg_frames):
        assert np.abs(mine.image.astype(int) - theirs.image.astype(int)).mean() < 3


def test_an_opencv_session_that_ends_reconnects_with_indices_and_timestamps_going_on(clip):
    # the file's end stands in for an unplugged camera: the read fails, the session ends
    source = CameraSource("usb", str(clip), backend="opencv", policy=ReconnectPolicy(delay_s=0.05, max_delay_s=0.1))
    log = _states(source)
    frames = _take(source, 50)  # the clip has 40
    assert [f.index for f in frames] == list(range(50))
    assert {f.epoch for f in frames[:40]} == {0} and {f.epoch for f in frames[40:]} == {1}
    pts = [f.pts_seconds for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert [state for state, _, _ in log][:4] == ["connecting", "streaming", "reconnecting", "streaming"]


def test_the_opencv_backend_says_when_a_camera_is_not_there():
    source = CameraSource("usb", "/dev/video97", backend="opencv", policy=ReconnectPolicy(delay_s=0.05))
    log = _states(source)
    with pytest.raises(SourceError, match="'/dev/video97' does not exist"):
        list(source.frames())
    assert [state for state, _, _ in log] == ["connecting", "failed"]


def test_a_camera_backend_is_checked_in_the_config():
    from segstream.connectors.errors import ConfigError
    from segstream.pipeline.config import validate_config

    with pytest.raises(ConfigError, match=r"sources\[0\].backend: Input should be 'ffmpeg' or 'opencv'"):
        validate_config({"sources": [{"name": "c", "type": "camera", "backend": "gstreamer"}],
                         "model": {"preset": "synthetic_eomt_tiny_256"}})


def test_a_video_file_given_as_a_camera_device_points_to_a_realtime_file(clip):
    # found probing: played through OpenCV as a camera, a file ran unpaced, ended and "reconnected"
    # every second or two
    from segstream.connectors.errors import ConfigError
    from segstream.pipeline.config import validate_config

    with pytest.raises(ConfigError, match="is a file, not a camera — .*type: file with realtime: true"):
        validate_config({"sources": [{"name": "rear", "type": "camera", "device": str(clip), "backend": "opencv"}],
                         "model": {"preset": "synthetic_eomt_tiny_256"}})
