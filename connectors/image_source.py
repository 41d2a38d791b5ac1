"""A folder, a glob or a single file of still images played as video, in natural sort order."""

from __future__ import annotations

import glob
import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from segstream.connectors.clock import Pacer
from segstream.connectors.errors import SourceError
from segstream.connectors.frame_rate import FrameRateCap
from segstream.connectors.frames import Frame

logger = logging.getLogger("segstream.sources")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm", ".pnm", ".gif")
_DIGITS = re.compile(r"(\d+)")


def natural_key(path: str) -> tuple:
    """Sort key under which ``frame2.png`` comes before ``frame10.png``: digit runs compare as
    numbers, the rest case-insensitively; ties fall back to the plain name."""
    parts = _DIGITS.split(path)
    return tuple((0, int(p), "") if i % 2 else (1, 0, p.casefold()) for i, p in enumerate(parts)), path


def list_images(pattern: str) -> list[str]:
    """The images a folder holds (by suffix, not recursing), the files a glob matches, or the one
    file named, in natural order."""
    path = Path(pattern).expanduser()
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        names = [str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        names = [p for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
    return sorted(names, key=natural_key)


def gif_images(data: bytes) -> tuple[list[bytes], bool]:
    """A GIF file's bytes cut into one piece per image, as FFmpeg's GIF decoder takes them (the
    first with the header and global palette, each with the extensions before it), and whether
    its blocks were whole. FFmpeg's demuxer cuts a GIF at its frames' delays: one without them
    (GIF87a, PIL's ``save_all`` without ``duration``) came as one packet, of which the decoder
    made the first image only. The bytes after the last whole image, if any, are one more piece."""
    if len(data) < 13 or data[:6] not in (b"GIF87a", b"GIF89a"):
        return [data], False
    palette = data[10]
    at = 13 + (3 << ((palette & 7) + 1) if palette & 0x80 else 0)
    images, start, whole = [], 0, False
    while at < len(data):
        if data[at] == 0x3B:  # the trailer
            whole = True
            break
        if data[at] == 0x21:  # an extension: its label, then data sub-blocks
            at = _past_sub_blocks(data, at + 2)
        elif data[at] == 0x2C and at + 10 <= len(data):  # an image: descriptor, local palette, LZW data
            packed = data[at + 9]
            at = _past_sub_blocks(data, at + 11 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0))
            if at <= len(data):
                images.append(data[start:at])
                start = at
        else:
            break
    whole = whole or (at == len(data) and start == at)
    if start < len(data) and not whole:
        images.append(data[start:])
    return images, whole


def _past_sub_blocks(data: bytes, at: int) -> int:
    """Where a run of GIF data sub-blocks starting at ``at`` ends (past its empty block); past
    the end of ``data`` when it is cut short."""
    while at < len(data) and data[at]:
        at += data[at] + 1
    return at + 1


class ImageFolderSource:
    """Images of a folder (or a glob such as ``shots/**/*.png``, or one image file) as frames,
    one per image, and one per frame of an animated GIF.

    ``fps`` gives the timestamps: image k of the listing has PTS k in time base ``1/fps``, and
    ``Frame.index`` k: an image that cannot be decoded leaves a gap in both (as a video's
    rejected frame does) and is counted in ``decode_errors``; a pass in which no image at all
    could be read fails the source. ``realtime`` plays them at ``fps`` and makes the source live.
    ``loop`` lists the images again and starts over (new images included), indices and PTS
    counting on; each pass is an ``epoch``. Orientation follows the images' EXIF tags.
    """

    def __init__(
        self,
        name: str,
        path: str,
        fps: float = 25.0,
        loop: bool = False,
        realtime: bool = False,
        max_frames: int | None = None,
        max_fps: float | None = None,
    ):
        if not fps > 0:
            raise SourceError(f"source {name}: fps must be positive, got {fps}")
        self.name = name
        self.path = str(path)
        self.fps = fps
        self.cap = FrameRateCap(max_fps) if max_fps is not None else None
        self.loop = loop
        self.live = realtime
        self.max_frames = max_frames
        self.decode_errors = 0
        self.time_base = 1 / Fraction(fps).limit_denominator(1001)
        self._closed = threading.Event()
        self._first = list_images(self.path)
        if not self._first:
            raise SourceError(
                f"source {name}: no images in '{self.path}' — give a folder of "
                f"{'/'.join(s[1:] for s in IMAGE_SUFFIXES[:4])}... files or a glob such as 'frames/*.png'"
            )

    def frames(self) -> Iterator[Frame]:
        pacer = Pacer() if self.live else None
        # kept frames over max_fps are a period apart: no discontinuity for the pacer
        step_s = max(float(self.time_base), self.cap.period_s if self.cap is not None else 0.0)
        delivered = 0
        position = 0  # index and PTS: the place in the listing (a GIF's frames each one), counted on across passes
        epoch = 0
        names = self._first
        while not self._closed.is_set():
            read = 0
            for name in names:
                if self.cap is not None and not name.lower().endswith(".gif") \
                        and not self.cap.keep(float(position * self.time_base)):
                    position += 1  # over max_fps: its place counted, the image never read
                    read += 1
                    continue
                with closing(self._read(name)) as images:
                    for image in images:
                        if self._closed.is_set():
                            return
                        pts = position
                        position += 1
                        if image is None:
                            continue
                        pts_seconds = float(pts * self.time_base)
                        if self.cap is not None and name.lower().endswith(".gif") and not self.cap.keep(pts_seconds):
                            read += 1
                            continue
                        if pacer is not None and not pacer.wait(pts_seconds, step_s, self._closed):
                            return
                        yield Frame(self.name, pts, image, pts, self.time_base, pts_seconds, time.time(),
                                    epoch=epoch, file=name)
                        read += 1
                        delivered += 1
                        if self.max_frames is not None and delivered >= self.max_frames:
                            return
            if self._closed.is_set():
                return
            if read == 0:  # not a folder that ended: nothing of it could be read
                if len(names) == 1:
                    raise SourceError(f"source {self.name}: '{names[0]}' has no decodable image")
                raise SourceError(f"source {self.name}: none of the {len(names)} images in '{self.path}' could be "
                                  "decoded")
            if not self.loop:
                return
            names = list_images(self.path)
            if not names:
                raise SourceError(f"source {self.name}: the images in '{self.path}' are gone")
            epoch += 1

    @property
    def frames_skipped(self) -> int:
        """Images left out on purpose, over ``max_fps``."""
        return self.cap.skipped if self.cap is not None else 0

    def _read(self, name: str) -> Iterator[np.ndarray | None]:
        """The file's images (an animated GIF's frames), or one None when it cannot be read."""
        try:
            data = np.fromfile(name, np.uint8)
        except OSError as error:
            logger.warning("source %s: cannot read %s (%s); skipped", self.name, name, error.strerror)
            self.decode_errors += 1
            yield None
            return
        if name.lower().endswith(".gif") and data[:4].tobytes() == b"GIF8":
            yield from self._gif_frames(name, data.tobytes())
            return
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
        if image is None:
            why = "is not an image OpenCV can decode" if data.size else "is empty (0 bytes)"
            logger.warning("source %s: %s %s; skipped", self.name, name, why)
            self.decode_errors += 1
            yield None
            return
        yield cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def _gif_frames(self, name: str, data: bytes) -> Iterator[np.ndarray | None]:
        """Every frame of a GIF, composed as FFmpeg's decoder shows it (as ``type: file`` reads
        it), one image of the file at a time; a None for each that cannot be decoded."""
        images, whole = gif_images(data)
        context = av.CodecContext.create("gif", "r")
        failed, why = 0, "" if whole else "its blocks break off"
        for image in images:
            try:
                frames = context.decode(av.Packet(image))
            except av.error.FFmpegError as error:
                frames, why = [], error.strerror or type(error).__name__
            if frames:
                yield frames[0].to_ndarray(format="rgb24")
                continue
            failed += 1
            yield None
        if not images:
            failed += 1
            yield None
        if failed:
            logger.warning("source %s: %d image%s of %s could not be decoded (%s); skipped", self.name, failed,
                           "s" * (failed > 1), name, why or "no picture")
            self.decode_errors += failed

    def close(self) -> None:
        self._closed.set()
