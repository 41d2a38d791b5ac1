"""Interlaced video's frames made whole before the model sees them.

An interlaced frame weaves two fields a field apart in time (1080i: 1/50 s): anything that
moves comes out combed, every other row from the other instant. FFmpeg's ``bwdif`` (yadif's
successor: its motion-adaptive interpolation with a better spatial filter) makes one frame of
each frame (``mode=send_frame``), so frame counts, indexes and timestamps stay the input's.
It holds one frame back (it looks at the next), so an interlaced live source is a frame later.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from fractions import Fraction
from typing import Literal

import av
import av.filter

logger = logging.getLogger("segstream.sources")

Deinterlace = Literal["auto"] | bool  # auto: the frames flagged interlaced; True: every frame; False: none

# AVFieldOrder by the field a player shows first: the codec's field order is how the stream
# describes itself (PyAV 18 does not read a frame's top-field-first flag)
_FIELD_ORDERS = {2: "tff", 5: "tff", 3: "bff", 4: "bff"}  # TT, BT: top first; BB, TB: bottom first


def field_order(codec_context) -> str:
    """``tff`` or ``bff`` where the stream says which field comes first, else ``unknown``."""
    return _FIELD_ORDERS.get(int(codec_context.field_order or 0), "unknown")


class Deinterlacer:
    """A source's deinterlacing: ``mode`` auto deinterlaces the frames flagged interlaced, from
    the first such frame on (progressive frames pass through unchanged), True every frame (an
    interlaced source whose frames are not flagged), False none. ``interlaced`` says whether
    frames flagged interlaced came, ``deinterlaced`` whether they were made whole. One is kept
    across the inputs a source opens, so what it tells is told once; each input filters its
    frames with a ``FieldFilter`` of its own (``for_input``: never two threads on one filter, as
    an abandoned session's thread may still be decoding)."""

    FILTER = "bwdif"

    def __init__(self, mode: Deinterlace = "auto"):
        self.mode = mode
        self.interlaced = False
        self.deinterlaced = False
        self.failed = False  # the filter failed: frames pass woven from then on

    def for_input(self, shown: str, log_extra: dict | None = None) -> FieldFilter:
        return FieldFilter(self, shown, log_extra or {})


class FieldFilter:
    """One input's frames in, the frames for the model out, in the same order and number; call
    ``flush`` at the input's end for the frame the filter holds back."""

    def __init__(self, source: Deinterlacer, shown: str, log_extra: dict):
        self.source = source
        self.shown = shown
        self.log_extra = log_extra
        self._graph: av.filter.Graph | None = None
        self._shape: tuple | None = None  # (width, height, format, time base, matrix, range) the graph was made for
        self._times: deque[tuple[int | None, int | None, Fraction | None]] = deque()  # pushed frames' (pts, dts)

    def frames(self, frame: av.VideoFrame) -> Iterator[av.VideoFrame]:
        source = self.source
        if not source.interlaced and frame.interlaced_frame:
            source.interlaced = True
            if source.mode is False:
                logger.info("'%s' is interlaced: its frames reach the model woven, as decoded (deinterlace: false)",
                            self.shown, extra=self.log_extra)
        if source.failed or source.mode is False or (
                self._graph is None and source.mode == "auto" and not source.interlaced):
            yield frame
            return
        shape = (frame.width, frame.height, frame.format.name, frame.time_base, frame.colorspace, frame.color_range)
        if shape != self._shape:
            yield from self.flush()
            if not self._start(frame, shape):
                yield frame
                return
        self._times.append((frame.pts, frame.dts, frame.time_base))
        try:
            self._graph.vpush(frame)
            pulled = list(self._pulled())
        except av.FFmpegError as error:
            self._give_up(error)
            yield frame
            return
        yield from pulled

    def flush(self) -> Iterator[av.VideoFrame]:
        """The frames the filter still holds (the last one), and the filter let go."""
        if self._graph is None:
            return
        try:
            self._graph.vpush(None)
            pulled = list(self._pulled())
        except av.FFmpegError as error:
            self._give_up(error)
            return
        self._graph, self._shape = None, None
        self._times.clear()
        yield from pulled

    def _start(self, frame: av.VideoFrame, shape: tuple) -> bool:
        source = self.source
        every = "all" if source.mode is True else "interlaced"
        graph = av.filter.Graph()
        try:
            # the frame's matrix and range given to the filter: a format bwdif does not take (yuyv422,
            # nv12) is converted on the way in, and without them its frames came out untagged (BT.601)
            time_base = frame.time_base or Fraction(1, 90_000)
            buffer = graph.add("buffer", f"video_size={frame.width}x{frame.height}:pix_fmt={frame.format.name}:"
                                         f"time_base={time_base.numerator}/{time_base.denominator}:"
                                         f"colorspace={int(frame.colorspace)}:range={int(frame.color_range)}")
            bwdif = graph.add(Deinterlacer.FILTER, f"mode=send_frame:parity=auto:deint={every}")
            sink = graph.add("buffersink")
            buffer.link_to(bwdif)
            bwdif.link_to(sink)
            graph.configure()
        except av.FFmpegError as error:  # a frame too small for the filter (under 4 rows)
            source.failed = True
            logger.warning("'%s': cannot deinterlace %dx%d %s frames (%s); they reach the model woven", self.shown,
                           frame.width, frame.height, frame.format.name, error, extra=self.log_extra)
            return False
        if not source.deinterlaced:
            said = "is interlaced" if source.interlaced else "is taken for interlaced"
            logger.info("'%s' %s: its frames are deinterlaced with %s (deinterlace: %s)", self.shown, said,
                        Deinterlacer.FILTER, "auto" if source.mode == "auto" else "true", extra=self.log_extra)
        self._graph, self._shape, source.deinterlaced = graph, shape, True
        return True

    def _pulled(self) -> Iterator[av.VideoFrame]:
        while True:
            try:
                out = self._graph.vpull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return
            # one frame out per frame in, in order: each takes its input's timestamps back (the
            # filter counts time in fields)
            out.pts, out.dts, out.time_base = self._times.popleft()
            yield out

    def _give_up(self, error: Exception) -> None:
        """After the filter failed mid-stream: frames from here on pass woven (the one it held is lost)."""
        logger.warning("'%s': deinterlacing failed (%s); frames from here on reach the model woven", self.shown,
                       error, extra=self.log_extra)
        self.source.failed = True
        self._graph, self._shape = None, None
        self._times.clear()
