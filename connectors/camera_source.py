"""USB and other V4L2 cameras, read with FFmpeg's v4l2 input through PyAV (or with OpenCV's
``VideoCapture``) as a ``LiveSource``."""

from __future__ import annotations

import logging
from typing import Any

from segstream.connectors.av_input import InputInfo, Picture
from segstream.connectors.deinterlace import Deinterlace
from segstream.connectors.live_source import LiveSource, ReconnectPolicy

logger = logging.getLogger("segstream.sources")

# The config's pixel formats and FFmpeg's v4l2 `input_format` names for them.
PIXEL_FORMATS = {"MJPG": "mjpeg", "YUYV": "yuyv422"}


def camera_device(device: int | str) -> str:
    """``/dev/videoN`` for an index, the path itself otherwise."""
    return f"/dev/video{device}" if isinstance(device, int) else str(device)


class CameraSource(LiveSource):
    """A camera by index (``/dev/video<index>``) or device path, asked for ``width`` x
    ``height`` at ``fps`` in ``pixel_format`` (MJPG or YUYV); each left None takes the driver's
    choice. A camera may grant something else: what it granted is logged and reported in the
    ``streaming`` state (``requested`` and ``negotiated``), and ``negotiated`` holds it.

    ``driver`` is FFmpeg's input format (``v4l2``); None lets FFmpeg probe the device, which is
    how the tests read a file through the very same capture code where no camera exists.
    ``backend="opencv"`` reads the camera with OpenCV instead (``OpenCVInput``: V4L2 on Linux,
    the platform's own camera API elsewhere), with the same reconnects, watchdog and states.
    """

    def __init__(
        self,
        name: str,
        device: int | str,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        pixel_format: str | None = None,
        policy: ReconnectPolicy = ReconnectPolicy(),
        driver: str | None = "v4l2",
        backend: str = "ffmpeg",
        seed: int | None = None,
        max_fps: float | None = None,
        deinterlace: Deinterlace = "auto",
    ):
        if backend not in ("ffmpeg", "opencv"):
            raise ValueError(f"unknown camera backend {backend!r} (ffmpeg or opencv)")
        self.backend = backend
        self.device = device
        self.requested: dict[str, Any] = {"width": width, "height": height, "fps": fps, "pixel_format": pixel_format}
        self.negotiated: dict[str, Any] | None = None
        options: dict[str, str] = {}
        if width is not None and height is not None:
            options["video_size"] = f"{width}x{height}"
        if fps is not None:
            options["framerate"] = f"{fps:g}"
        if pixel_format is not None:
            options["input_format"] = PIXEL_FORMATS[pixel_format]
        path = camera_device(device)
        super().__init__(
            name, path, policy=policy, format=driver, options=options, low_latency=True, shown=path,
            describe=self._negotiated, seed=seed, max_fps=max_fps, deinterlace=deinterlace,
        )

    def _open(self):
        if self.backend == "ffmpeg":
            return super()._open()
        from segstream.connectors.opencv_input import OpenCVInput

        return OpenCVInput(self.device, self.shown, self.requested, scale=self.decode_size)

    def _negotiated(self, info: InputInfo, picture: Picture) -> dict[str, Any]:
        pixel_format = next((k for k, v in PIXEL_FORMATS.items() if v in (info.codec, info.pixel_format)), None)
        granted = {
            "width": info.width,
            "height": info.height,
            "fps": None if info.fps is None else round(info.fps, 3),
            "pixel_format": pixel_format or info.pixel_format,
        }
        self.negotiated = granted
        differs = [
            f"{key} {granted[key]} instead of {wanted}"
            for key, wanted in self.requested.items()
            if wanted is not None and granted[key] != wanted
        ]
        if differs:
            logger.warning("source %s: camera %s granted %s", self.name, self.shown, ", ".join(differs))
        return {"requested": self.requested, "negotiated": granted}
