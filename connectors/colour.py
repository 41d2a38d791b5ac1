"""How a decoded frame's colours become the model's RGB.

A decoded frame says (or leaves unsaid) its colour matrix, range, transfer and primaries; swscale
converts it to RGB by what it says. Three cases need more than that:

- HDR (a PQ or HLG transfer, BT.2020 primaries): its code values are not SDR's, so it is tone-
  and gamut-mapped to SDR BT.709 (FFmpeg 8's swscale does both when asked for a BT.709
  transfer and primaries). Taken as they are, a PQ frame came out 57 levels off its SDR copy and
  the model agreed with its SDR copy's classes on 29% of pixels.
- A frame that names no matrix is read as BT.709 when it is HD (1280 wide or 720 high or more),
  as players do; swscale's own default is BT.601 (7.5 levels off for an untagged BT.709 clip).
- Over 8 bits a component, swscale's conversion to packed RGB comes out about 2 levels dark; to
  planar RGB it gives the exact levels (5 ms more CPU a 1080p frame, measured; full chroma
  interpolation, also exact, costs a little more), and numpy interleaves them.

An 8-bit frame that says its matrix, as most are, is converted by swscale's defaults.
"""

from __future__ import annotations

import logging
import threading

import av
import numpy as np
from av.video.reformatter import (
    ColorPrimaries,
    Colorspace,
    ColorTrc,
    Interpolation,
    VideoReformatter,
)

# A context each input keeps holds its threads while it lives (swscale's default: one a core, idle
# between frames): 30 sources on a 64-core host held 1,900 threads, near a container's pids limit
SWSCALE_THREADS = 2

logger = logging.getLogger("segstream.sources")

# FFmpeg's AVColorTransferCharacteristic values of the HDR transfers, and the names segstream says
HDR_TRANSFERS = {int(ColorTrc.SMPTE2084): "pq", int(ColorTrc.ARIB_STD_B67): "hlg"}
_UNSPECIFIED_MATRIX = 2  # AVCOL_SPC_UNSPECIFIED
_UNSPECIFIED_PRIMARIES = int(ColorPrimaries.UNSPECIFIED)
_HD_WIDTH, _HD_HEIGHT = 1280, 720  # players take an untagged frame this wide or high for BT.709


class ColourConversion:
    """The RGB of a source's decoded frames (``rgb``), converted by the rules above. The
    conversion is worked out once per kind of frame (format, colour tags, size) and kept, and
    what a source's frames are (``hdr``) is told once in the log: one is kept across the
    inputs a source opens (each loop of a file, each session of a stream).

    Each input converts with a swscale context of its own (``lend``; never two threads on one:
    an abandoned session's thread may still convert its last frame), given back when the input
    closes: tone mapping's tables take seconds to build (2.7 s of CPU), once per context, and a
    context a frame made for itself (PyAV's ``to_ndarray``) built them for every frame."""

    def __init__(self) -> None:
        # kind of frame -> reformat's arguments (None: the plain conversion), whether to assume
        # BT.2020 primaries, its HDR transfer
        self._known: dict[tuple, tuple[dict | None, bool, str | None]] = {}
        self.hdr: str | None = None  # "pq" or "hlg": the last frame converted was HDR, tone-mapped to SDR
        self._told: set[str] = set()
        self._spare: list[VideoReformatter] = []
        self._lock = threading.Lock()

    def lend(self) -> VideoReformatter:
        with self._lock:
            return self._spare.pop() if self._spare else VideoReformatter()

    def give_back(self, reformatter: VideoReformatter) -> None:
        with self._lock:
            self._spare.append(reformatter)

    def rgb(self, frame: av.VideoFrame, size: tuple[int, int] | None, reformatter: VideoReformatter, shown: str,
            log_extra: dict | None = None) -> np.ndarray:
        """``frame`` as an RGB array, at ``size`` (width, height; None: its own, else shrunk
        with swscale's bilinear)."""
        key = (frame.format.name, frame.colorspace, frame.color_range, frame.color_trc, frame.color_primaries,
               frame.width, frame.height, size)
        known = self._known.get(key)
        if known is None:
            known = self._known[key] = self._conversion(frame, size, shown, log_extra)
        how, bt2020, self.hdr = known
        if how is None:  # an 8-bit SDR frame at its own size that says its matrix: swscale's defaults
            # (PyAV's to_ndarray gives the same bytes, but through a context made for each frame: on a
            # 16-core GPU host, 16 slice threads started and joined a frame, in every source's thread)
            return reformatter.reformat(frame, format="rgb24", threads=SWSCALE_THREADS).to_ndarray()
        if bt2020:  # an HDR frame that names no primaries: BT.2020's, as HDR10's and HLG's are
            frame.color_primaries = ColorPrimaries.BT2020
        return reformatter.reformat(frame, **how, threads=SWSCALE_THREADS).to_ndarray()

    def _conversion(self, frame: av.VideoFrame, size: tuple[int, int] | None, shown: str,
                    log_extra: dict | None) -> tuple[dict | None, bool, str | None]:
        how: dict = {"format": "rgb24"}
        if size is not None:
            how.update(width=size[0], height=size[1], interpolation=Interpolation.BILINEAR)
        form = frame.format
        if form.is_rgb or len(form.components) < 3:  # RGB, grey: no matrix to choose
            return how, False, None
        hdr = HDR_TRANSFERS.get(int(frame.color_trc))
        unsaid = frame.colorspace == _UNSPECIFIED_MATRIX
        if hdr is not None:  # (swscale's tone mapping takes no legacy flags: with them it maps no tones)
            how.update(dst_colorspace=Colorspace.ITU709, dst_color_trc=ColorTrc.BT709,
                       dst_color_primaries=ColorPrimaries.BT709)
            if unsaid:
                how["src_colorspace"] = Colorspace.BT2020
            self._tell(hdr, log_extra, "'%s' is HDR (%s): its frames are tone-mapped to SDR BT.709 for the model",
                       shown, hdr.upper())
            return how, frame.color_primaries == _UNSPECIFIED_PRIMARIES, hdr
        if form.components[0].bits > 8:  # planar RGB: swscale's exact path (packed rgb24's: 1.8 levels dark)
            how["format"] = "gbrp"
        if unsaid and (frame.width >= _HD_WIDTH or frame.height >= _HD_HEIGHT):
            how["src_colorspace"] = Colorspace.ITU709
            self._tell("untagged", log_extra, "'%s' does not say its colour matrix: read as BT.709, as players read "
                       "HD video", shown)
        return (None if how == {"format": "rgb24"} else how), False, None

    def _tell(self, what: str, log_extra: dict | None, message: str, *args) -> None:
        if what not in self._told:
            self._told.add(what)
            logger.info(message, *args, extra=log_extra or {})
