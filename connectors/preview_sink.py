"""The preview sink: what the model sees, drawn over each source's frames, as MP4 or PNG files."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from segstream.connectors.errors import SinkError
from segstream.connectors.output_files import check_output_dir
from segstream.connectors.overlay import OverlayVideo, draw_overlay, write_png
from segstream.connectors.sink import WrittenCallback
from segstream.models.results import Event, FrameResult

log = logging.getLogger(__name__)


class PreviewSink:
    """``<dir>/<source>.mp4`` (``format="mp4"``) or ``<dir>/<source>/<frame>.png`` per source,
    each frame with its segments drawn (``segstream.connectors.overlay``). MP4 frames keep
    their source timestamps, so dropped frames show as held frames, not as a faster video.

    It asks the runtime for the decoded frames (``wants_images``); the runtime attaches each
    frame's image to its result until the sinks have published it, so memory stays bounded by
    the runtime's queues. Each run rewrites the files.
    """

    name = "preview"
    wants_images = True

    def __init__(self, directory: str | Path, format: str = "mp4", opacity: float = 0.45):
        if format not in ("mp4", "png"):
            raise SinkError(f"preview format {format!r} is not one of mp4, png")
        self.directory = Path(directory)
        self.format = format
        self.opacity = opacity
        self.on_written: WrittenCallback | None = None
        self.frames = 0
        self._videos: dict[str, OverlayVideo] = {}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SinkError(f"cannot create preview directory '{self.directory}': {error.strerror}") from None
        check_output_dir(self.directory, "preview directory")

    def path(self, source: str) -> Path:
        """Where ``source``'s preview goes: its MP4, or its folder of PNGs."""
        return self.directory / (f"{source}.mp4" if self.format == "mp4" else source)

    def publish(self, result: FrameResult) -> None:
        if result.image is None:
            raise SinkError("the preview sink got a result without its frame — run it inside the runtime, "
                            "which attaches frames for sinks that set wants_images")
        picture = draw_overlay(result.image, result, self.opacity)
        if self.format == "mp4":
            video = self._videos.get(result.source)
            if video is None:
                video = self._videos[result.source] = OverlayVideo(self.path(result.source))
            video.write(picture, result.pts, result.time_base)
        else:
            folder = self.path(result.source)
            folder.mkdir(parents=True, exist_ok=True)
            write_png(folder / f"{result.index:08d}.png", picture)
        self.frames += 1
        result.publish_ts = time.time()
        if self.on_written is not None:
            self.on_written([result])

    def publish_event(self, event: Event) -> None:
        pass

    def poll(self) -> float | None:
        return None

    def flush(self) -> None:
        pass

    def close(self) -> None:
        videos, self._videos = self._videos, {}
        for source, video in videos.items():
            video.close()
            log.info("preview of %s: %d frames in %s", source, video.frames, video.path)
