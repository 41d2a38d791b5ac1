"""A camera read through OpenCV's ``VideoCapture`` instead of FFmpeg: the input a ``CameraSource``
with ``backend: opencv`` opens for each session (the same reconnects, watchdog and states).

OpenCV drives V4L2 on Linux itself, and AVFoundation or Media Foundation elsewhere, where FFmpeg's
v4l2 input does not exist; some UVC cameras also negotiate better through it. It reports less
than FFmpeg does: no decode errors (a frame it cannot read ends the session, which reconnects)
and no frames lost before the driver.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any

import numpy as np

from segstream.connectors.av_input import InputInfo, InputRefused, Picture
from segstream.connectors.errors import SourceError
from segstream.connectors.frame_rate import FrameRateCap

_MICROSECONDS = Fraction(1, 1_000_000)
# The config's pixel formats, as V4L2 FOURCCs, and the names InputInfo uses for them (FFmpeg's).
_FOURCC_NAMES = {"MJPG": "mjpeg", "YUYV": "yuyv422"}


def _fourcc(value: float) -> str:
    code = int(value)
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    return text if text.isprintable() and text.strip() else ""


class OpenCVInput:
    """One OpenCV capture session of ``device`` (an index, a device path, or, where no camera
    exists, a video file: the tests), asking for ``requested`` (width, height, fps, pixel_format;
    None: the driver's choice). Duck-types ``AVInput`` for ``CaptureThread`` and ``LiveSource``."""

    format_name = "opencv"
    duration_s: float | None = None  # a camera has no length
    video_duration = False
    size_bytes: int | None = None
    lost_are_errors = True
    decode_errors = 0  # OpenCV does not tell; a failed read ends the session
    pending_rejected = 0  # nor holds any back (AVInput counts a live stream's when a picture follows)
    frames_lost = 0

    def __init__(
        self,
        device: int | str,
        shown: str,
        requested: dict[str, Any],
        scale: Callable[[int, int], tuple[int, int]] | None = None,
    ):
        import cv2

        self._cv2 = cv2
        self.shown = shown
        self.scale = scale
        self.cap: FrameRateCap | None = None  # set: frames over its rate are never resized or converted
        self.last_read = time.monotonic()
        linux = sys.platform.startswith("linux")
        path = f"/dev/video{device}" if isinstance(device, int) and linux else device
        if isinstance(path, str) and not os.path.exists(path):
            raise InputRefused(f"'{shown}' does not exist", missing=True)
        if isinstance(path, str) and not os.access(path, os.R_OK):
            raise InputRefused(f"'{shown}' may not be read by this user (permission denied) — for a camera, add "
                               "the user to the video group")
        camera = isinstance(device, int) or device.startswith("/dev/")
        api = (cv2.CAP_V4L2 if linux else cv2.CAP_ANY) if camera else cv2.CAP_FFMPEG
        self.capture = cv2.VideoCapture(device, api)
        if not self.capture.isOpened():
            self.capture.release()
            raise SourceError(f"OpenCV cannot open '{shown}' — check that it is a camera (v4l2-ctl --list-devices) "
                              "and that no other program is reading it")
        # V4L2 applies the pixel format first: it decides which sizes and rates exist
        if requested.get("pixel_format"):
            self.capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*requested["pixel_format"]))
        if requested.get("width") and requested.get("height"):
            self.capture.set(cv2.CAP_PROP_FRAME_WIDTH, requested["width"])
            self.capture.set(cv2.CAP_PROP_FRAME_HEIGHT, requested["height"])
        if requested.get("fps"):
            self.capture.set(cv2.CAP_PROP_FPS, requested["fps"])
        if camera:
            self.capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not the driver's backlog
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 else None
        self.time_base = _MICROSECONDS
        self.step = round(1_000_000 / (self.fps or 25))
        fourcc = _fourcc(self.capture.get(cv2.CAP_PROP_FOURCC))
        named = _FOURCC_NAMES.get(fourcc.upper())
        self.info = InputInfo(
            int(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            named or fourcc.strip().lower() or "unknown",
            named,
            self.fps,
        )
        self._last_pts: int | None = None
        self._last_arrival = 0.0
        self._driver_clock = True  # until the driver's timestamps stop moving on

    def pictures(self) -> Iterator[Picture]:
        """Frames until a read fails (a camera unplugged, a file's end): the session ends there."""
        cv2 = self._cv2
        while True:
            ok, bgr = self.capture.read()
            if not ok or bgr is None:
                return
            self.last_read = time.monotonic()
            yield self._picture(cv2, bgr)

    def _picture(self, cv2, bgr: np.ndarray) -> Picture:
        # The driver's clock (V4L2's capture time, a file's position) while it moves on; once it
        # does not (a backend that does not tell), the time frames arrive, for the rest of the
        # session, going on from the last timestamp: one clock at a time, never mixed.
        now = time.monotonic()
        position_ms = self.capture.get(cv2.CAP_PROP_POS_MSEC)
        driver = round(position_ms * 1000) if position_ms is not None and position_ms >= 0 else None
        if self._driver_clock and driver is not None and (self._last_pts is None or driver > self._last_pts):
            pts = driver
        elif self._last_pts is None:
            self._driver_clock, pts = False, 0
        else:
            self._driver_clock = False
            pts = self._last_pts + max(1, round((now - self._last_arrival) * 1e6))
        self._last_pts, self._last_arrival = pts, now
        arrived = time.time()
        if self.cap is not None and not self.cap.keep(float(pts * self.time_base), wall=arrived):
            return Picture(None, pts, self.time_base, self.step, arrived, None)
        height, width = bgr.shape[:2]
        size = None
        if self.scale is not None:
            h, w = self.scale(height, width)
            if h < height and w < width:
                size = (height, width)
                bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return Picture(image, pts, self.time_base, self.step, arrived, None, size)

    def close(self) -> None:
        self.capture.release()

