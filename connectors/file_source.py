"""Video files and streams decoded with PyAV (FFmpeg): any container and codec FFmpeg reads."""

from __future__ import annotations

import threading
import time
from contextlib import closing
from fractions import Fraction
from typing import Iterator

import av

from segstream.connectors.errors import SourceError
from segstream.connectors.frames import Frame


class FileSource:
    """Frames of one video file or stream URL, in presentation order.

    ``realtime`` paces frames at the file's own rate (by PTS), standing in for a camera, and makes
    the source ``live``. ``loop`` starts over at the end; PTS keep increasing across loops (each
    loop is offset by the previous loops' duration) and ``Frame.index`` counts on. Packets the
    decoder rejects are skipped and counted in ``decode_errors``. The file is opened in the
    constructor so that a bad path fails before the pipeline starts.
    """

    def __init__(
        self,
        name: str,
        path: str,
        realtime: bool = False,
        loop: bool = False,
        max_frames: int | None = None,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 10.0,
    ):
        self.name = name
        self.path = str(path)
        self.live = realtime
        self.loop = loop
        self.max_frames = max_frames
        self.timeout = (open_timeout_s, read_timeout_s)
        self.decode_errors = 0
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._reading = False
        self._container: av.container.InputContainer | None = self._open()

    def _open(self) -> av.container.InputContainer:
        try:
            container = av.open(self.path, timeout=self.timeout)
        except FileNotFoundError:
            raise SourceError(f"source {self.name}: '{self.path}' does not exist") from None
        except av.error.FFmpegError as error:
            reason = error.strerror or str(error)
            raise SourceError(f"source {self.name}: cannot open '{self.path}' as video ({reason})") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"source {self.name}: '{self.path}' has no video stream")
        return container

    def frames(self) -> Iterator[Frame]:
        with self._lock:
            if self._closed.is_set():
                return
            self._reading = True
        index = 0
        pts_offset = 0  # added to PTS from the second loop on, in stream time base
        clock_start: float | None = None  # monotonic time at which PTS 0 of the first loop is due
        try:
            while not self._closed.is_set():
                container = self._container or self._open()
                self._container = container
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                time_base = stream.time_base or Fraction(1, 1_000_000)
                rate = stream.average_rate or stream.guessed_rate or 25
                step = max(1, round(1 / (rate * time_base)))  # one frame's duration in time base
                first_pts = last_pts = None
                with closing(self._decode(container, stream)) as decoded_frames:
                    for decoded in decoded_frames:
                        pts = decoded.pts
                        if pts is None:  # some raw streams carry no timestamps: count frames instead
                            pts = 0 if last_pts is None else last_pts + step
                        if first_pts is None:
                            first_pts = pts
                        last_pts = pts
                        pts += pts_offset
                        pts_seconds = float(pts * time_base)
                        if self.live:
                            if clock_start is None:
                                clock_start = time.monotonic() - pts_seconds
                            delay = clock_start + pts_seconds - time.monotonic()
                            if delay > 0 and self._closed.wait(delay):
                                return
                        yield Frame(
                            source=self.name,
                            index=index,
                            image=decoded.to_ndarray(format="rgb24"),
                            pts=pts,
                            time_base=time_base,
                            pts_seconds=pts_seconds,
                            capture_wall=time.time(),
                        )
                        index += 1
                        if (self.max_frames is not None and index >= self.max_frames) or self._closed.is_set():
                            return
                self._close_container()
                if not self.loop or self._closed.is_set():
                    return
                if first_pts is None:
                    raise SourceError(f"source {self.name}: '{self.path}' has no decodable frames to loop over")
                pts_offset += last_pts + step - first_pts
        finally:
            with self._lock:
                self._reading = False
                self._close_container()

    def _decode(self, container: av.container.InputContainer, stream: av.VideoStream) -> Iterator[av.VideoFrame]:
        try:
            for packet in container.demux(stream):
                try:
                    yield from packet.decode()
                except av.error.InvalidDataError:
                    self.decode_errors += 1
                if self._closed.is_set():
                    return
        except av.error.ExitError:
            raise SourceError(
                f"source {self.name}: no data from '{self.path}' for {self.timeout[1]:g} s — "
                "check the stream or raise read_timeout_s"
            ) from None
        except av.error.FFmpegError as error:
            raise SourceError(f"source {self.name}: reading '{self.path}' failed ({error.strerror or error})") from None

    def _close_container(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            # while frames() runs, the container belongs to its thread, which closes it on the way out
            if not self._reading:
                self._close_container()
