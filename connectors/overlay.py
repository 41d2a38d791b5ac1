"""Pictures of a segmentation: masks, outlines and labels drawn over the frame, and the MP4 and
PNG files they go into.

A segment's colour comes from its track id, or from its segment id while it has no track
(``NO_TRACK``), through a fixed formula (golden-ratio hue steps), so the same id has the same
colour in every frame, run and process. Masks are blended with integer arithmetic, so the same
frame and result always give the same pixels. Outline width and text size follow the frame
height, so a 1080p frame and a 320x240 one are both readable.

A level of a frame's segment hierarchy (``FrameResult.levels``) is drawn the same way: its
segments have no class, score or track, so each is coloured by its id as an untracked segment
and labelled with the level and its id (``L0 s12``).
"""

from __future__ import annotations

import colorsys
import errno
import logging
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorRange, ColorTrc, Colorspace, VideoReformatter

from segstream.connectors.colour import SWSCALE_THREADS
from segstream.connectors.errors import FrameError, SinkError
from segstream.connectors.output_files import open_output
from segstream.models.results import NO_TRACK, FrameResult, Segments

log = logging.getLogger(__name__)

_GOLDEN = 0.618033988749895
_TEXT = (255, 255, 255)
_TEXT_BACKGROUND = (0, 0, 0)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def id_colour(identity: int, tracked: bool = True) -> tuple[int, int, int]:
    """The RGB colour of a track id (``tracked``) or of a segment id: hues a golden-ratio step
    apart for consecutive ids; segment ids use a paler, shifted palette so the two never read as
    the same identity."""
    hue = (identity * _GOLDEN + (0.0 if tracked else 0.5)) % 1.0
    saturation, value = (0.9, 1.0) if tracked else (0.7, 0.95)
    r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def segment_colours(result: FrameResult | Segments) -> np.ndarray:
    """S x 3 uint8: the colour of each segment of ``result`` (by track id where it has one)."""
    segments = result.segments if isinstance(result, FrameResult) else result
    colours = [
        id_colour(int(track), True) if int(track) != NO_TRACK else id_colour(int(segment), False)
        for segment, track in zip(segments.ids, segments.track_ids)
    ]
    return np.asarray(colours, np.uint8).reshape(-1, 3)


def scale_for(height: int) -> tuple[float, int, int]:
    """Font scale, text thickness and outline width for frames ``height`` pixels tall."""
    font_scale = max(0.35, height / 900)
    return font_scale, max(1, round(font_scale * 1.6)), max(1, round(height / 400))


def level_segments(result: FrameResult, level: int) -> Segments:
    """Level ``level`` of ``result``'s hierarchy (0 the finest) as segments to draw: no class
    (-1), no score (NaN), no track, labelled with the level (``L<level>``)."""
    if not 0 <= level < len(result.levels):
        raise ValueError(f"frame {result.index} of {result.source} has {len(result.levels)} hierarchy levels, "
                         f"no level {level}")
    drawn = result.levels[level]
    count = len(drawn.ids)
    return Segments.build(ids=drawn.ids, class_ids=np.full(count, -1), labels=[f"L{level}"] * count,
                          isthing=np.zeros(count, bool), scores=np.full(count, np.nan), areas=drawn.areas)


def draw_overlay(image: np.ndarray | None, result: FrameResult, opacity: float = 0.45, labels: bool = True,
                 level: int | None = None) -> np.ndarray:
    """A copy of ``image`` (H x W x 3 uint8 RGB) with each segment of ``result`` blended in its
    colour (``opacity`` of the way from the pixel to the colour), outlined in its colour, and
    (``labels``) named with its label, id (``#track`` or ``s<segment>``) and score. ``level``:
    level ``level`` of the result's hierarchy (0 the finest) is drawn instead of its segments."""
    # label maps read once: a scaled map is brought to frame size on each read
    if level is None:
        segments, label_map = result.segments, result.label_map
    else:
        segments = level_segments(result, level)  # ValueError when the result has no such level
        label_map = result.levels[level].label_map
    if label_map is None:
        raise ValueError("the result carries no label map to draw; read it with masks")
    if image is None:
        raise FrameError(f"no frame to draw {result.source} frame {result.index} on (image is None) — pass the decoded "
                         "frame, or ask segstream.results(..., images=True) for it")
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        got = (f"a {'x'.join(map(str, image.shape))} {image.dtype} array" if isinstance(image, np.ndarray)
               else f"a {type(image).__name__}")
        raise FrameError(f"draw_overlay draws on an H x W x 3 uint8 RGB frame, got {got} "
                         "(a float frame in 0..1: (image * 255).astype(np.uint8))")
    if image.shape[:2] != label_map.shape:
        raise FrameError(f"frame is {image.shape[1]}x{image.shape[0]} but the segmentation is "
                         f"{label_map.shape[1]}x{label_map.shape[0]}")
    out = np.array(image, np.uint8, copy=True)
    if not len(segments):
        return out
    # each pixel's row in `segments` + 1 (0: no segment); palette row 0 is unused black
    top = int(segments.ids.max())
    lookup = np.zeros(top + 2, np.int32)
    lookup[segments.ids.astype(np.int64) + 1] = np.arange(1, len(segments) + 1, dtype=np.int32)
    rows = lookup[np.clip(label_map, -1, top) + 1]
    palette = np.concatenate([np.zeros((1, 3), np.uint8), segment_colours(segments)])
    if len(palette) <= 256:  # OpenCV's table lookup: 10x faster than numpy's gather at 1080p
        table = np.zeros((256, 1, 3), np.uint8)
        table[: len(palette), 0] = palette
        painted = cv2.LUT(cv2.merge([rows.astype(np.uint8)] * 3), table)
    else:
        painted = palette[rows]
    inside = (rows > 0).astype(np.uint8)
    blended = cv2.addWeighted(image, 1.0 - opacity, painted, opacity, 0.0)
    cv2.copyTo(blended, inside, out)

    font_scale, thickness, outline = scale_for(image.shape[0])
    across = rows[:, 1:] != rows[:, :-1]
    down = rows[1:, :] != rows[:-1, :]
    edge = np.zeros(rows.shape, np.uint8)
    edge[:, 1:] |= across
    edge[:, :-1] |= across
    edge[1:, :] |= down
    edge[:-1, :] |= down
    if outline > 1:
        edge = cv2.dilate(edge, np.ones((outline, outline), np.uint8))
    cv2.copyTo(painted, edge & inside, out)
    if labels:
        # a level's segments are many and small (hundreds at the finest): labels would hide the picture
        _draw_labels(out, segments, rows, font_scale, thickness, fitting_only=level is not None)
    return out


def _draw_labels(out: np.ndarray, segments: Segments, rows: np.ndarray, font_scale: float, thickness: int,
                 fitting_only: bool = False) -> None:
    """Each segment's label at its most interior point (farthest from its border), found on a
    coarse grid so it stays cheap at 1080p; a segment without a score (NaN) is labelled without
    one. ``fitting_only``: only segments that hold their label's box (nine tenths of it) are labelled."""
    height, width = rows.shape
    step = max(1, min(height, width) // 120)
    coarse = np.ascontiguousarray(rows[::step, ::step])
    for row in range(len(segments)):
        mask = (coarse == row + 1).astype(np.uint8)
        if not mask.any():
            continue
        depth = cv2.distanceTransform(np.pad(mask, 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
        cy, cx = np.unravel_index(int(np.argmax(depth)), depth.shape)
        cx, cy = int(cx) * step, int(cy) * step
        track = int(segments.track_ids[row])
        identity = f"#{track}" if track != NO_TRACK else f"s{int(segments.ids[row])}"
        score = float(segments.scores[row])
        text = f"{segments.labels[row]} {identity}" + ("" if np.isnan(score) else f" {score:.2f}")
        (tw, th), baseline = cv2.getTextSize(text, _FONT, font_scale, thickness)
        x = min(max(0, cx - tw // 2), max(0, width - tw - 2))
        y = min(max(th + 2, cy + th // 2), height - baseline - 1)
        if fitting_only and (rows[y - th - 2 : y + baseline, x : x + tw + 2] != row + 1).mean() > 0.1:
            continue
        cv2.rectangle(out, (x, y - th - 2), (x + tw + 2, y + baseline), _TEXT_BACKGROUND, cv2.FILLED)
        cv2.putText(out, text, (x + 1, y), _FONT, font_scale, _TEXT, thickness, cv2.LINE_AA)


class OutputWriteError(SinkError):
    """A picture or video could not be written or finished; ``errno`` is the file's own error
    (ENOSPC for a full disk) where the file refused a write, else None (the encoder or muxer
    failed); ``reason`` is what went wrong, without the file's name; ``verb`` what was tried."""

    def __init__(self, path: str | Path, reason: str, errno: int | None = None, verb: str = "write"):
        super().__init__(f"cannot {verb} {path}: {reason}")
        self.reason = reason
        self.errno = errno
        self.verb = verb


class _RecordingFile:
    """The MP4 file as PyAV writes to it, keeping the first error of a failed write: PyAV reports
    it as a callback error whose text names neither the errno nor its meaning. A KeyboardInterrupt
    (Ctrl-C's handler ran inside a write) is kept in ``interrupted`` and every call after it fails:
    PyAV swallows one raised in its callback, printing a traceback, and went on writing the file
    without those bytes."""

    def __init__(self, f):
        self._f = f
        self.error: OSError | None = None
        self.interrupted: BaseException | None = None
        self.written = 0  # bytes the file took

    def _call(self, method, *args):
        if self.interrupted is not None:
            raise OSError(errno.EINTR, "interrupted")
        try:
            return method(*args)
        except OSError as error:
            self.error = self.error or error
            raise
        except BaseException as error:
            self.interrupted = error
            raise OSError(errno.EINTR, "interrupted") from None

    def write(self, data):
        taken = self._call(self._f.write, data)
        self.written += len(data)
        return taken

    def seek(self, *args):
        return self._call(self._f.seek, *args)

    def tell(self):
        return self._call(self._f.tell)

    def flush(self):
        return self._call(self._f.flush)

    def close(self):
        if self.interrupted is not None:
            self._f.close()  # the descriptor is ours to give back all the same
            return None
        return self._call(self._f.close)


# The colours of the videos segstream writes (previews, overlays, renders): BT.709, limited range,
# what players take HD video to be
OUTPUT_TAGS = {"colorspace": Colorspace.ITU709, "color_range": ColorRange.MPEG, "color_trc": ColorTrc.BT709,
               "color_primaries": ColorPrimaries.BT709}


class VideoColours:
    """RGB pictures as the BT.709 limited-range YUV a video encoder takes, each frame tagged so
    (PyAV's own conversion uses BT.601 and tags nothing: players take HD for BT.709, and the
    colours shifted by 12 levels on average)."""

    def __init__(self, pix_fmt: str = "yuv420p"):
        self.pix_fmt = pix_fmt
        self._reformatter = VideoReformatter()

    @staticmethod
    def tag(codec_context) -> None:
        """Have the encoder write the tags into the stream (H.264's VUI, MP4's colr box)."""
        for name, value in OUTPUT_TAGS.items():
            setattr(codec_context, name, value)

    def frame(self, image: np.ndarray, pts: int | None = None, time_base: Fraction | None = None) -> av.VideoFrame:
        rgb = av.VideoFrame.from_ndarray(image, format="rgb24")
        yuv = self._reformatter.reformat(rgb, format=self.pix_fmt, dst_colorspace=Colorspace.ITU709,
                                         dst_color_range=ColorRange.MPEG, threads=SWSCALE_THREADS)
        for name, value in OUTPUT_TAGS.items():
            setattr(yuv, name, value)
        yuv.pts, yuv.time_base = pts, time_base
        return yuv


class OverlayVideo:
    """An H.264 MP4 of frames with the timestamps they came with (``pts`` in ``time_base``), so
    gaps (dropped frames) keep their duration and each frame its time in the source, exactly (the
    MP4's clocks tick in the first frame's ``time_base`` or finer). A first timestamp before 0 (an MPEG-TS
    whose clock wrapped) moves them all to start at 0: an MP4 shows nothing before 0. The pictures are the same from run to run; the
    file's bytes may not be (x264 in a busy process made different choices for an occasional
    frame, even single-threaded). One file holds one size: frames of another size (a stream that
    changed resolution) are scaled to fit the first, letterboxed, with a warning; odd sizes are
    padded by a pixel (H.264 in yuv420p needs even ones). Its colours are BT.709, limited range,
    tagged so (``VideoColours``). The first frame's ``sample_aspect`` (a pixel's width:height,
    None when square) is the file's, so a player shows it as the source."""

    def __init__(self, path: str | Path, crf: int = 20, fps_hint: float = 25.0):
        self.path = Path(path)
        self.crf = crf
        self.fps_hint = fps_hint
        self.frames = 0
        self._container: av.container.OutputContainer | None = None
        self._file = None  # the MP4 file, opened by us: no link is followed
        self._stream = None
        self._time_base: Fraction | None = None
        self._last_pts: int | None = None
        self._shift: int | None = None  # added to every timestamp: a negative first one is moved to 0
        self._size: tuple[int, int] | None = None
        self._resized: set[tuple[int, int]] = set()  # the other sizes met, warned of once each
        self._colours = VideoColours("yuv420p")

    def write(self, image: np.ndarray, pts: int | None = None, time_base: Fraction | None = None,
              sample_aspect: Fraction | None = None) -> None:
        height, width = image.shape[:2]
        if self._container is None:
            self._open(width, height, time_base, sample_aspect)
        elif (width, height) != self._size:
            image = self._fit(image)
            height, width = image.shape[:2]
        if pts is None or time_base is None:
            pts = 0 if self._last_pts is None else self._last_pts + 1
        else:
            if time_base != self._time_base:
                pts = int(round(pts * time_base / self._time_base))
            if self._shift is None:
                # an MP4 shows nothing before 0 (its edit list starts there): a first frame before
                # it (a TS whose clock wrapped) is moved to 0 and the others with it; a later start
                # is kept, as FFmpeg keeps it (an empty edit before the first frame)
                self._shift = max(0, -pts)
            pts += self._shift
        if self._last_pts is not None and pts <= self._last_pts:
            pts = self._last_pts + 1  # the muxer refuses timestamps that do not increase
        self._last_pts = pts
        padded = np.pad(image, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
        frame = self._colours.frame(np.ascontiguousarray(padded), pts, self._time_base)
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except (OSError, av.FFmpegError) as error:
            raise self._failure(error) from None
        self._raise_interrupt()
        self.frames += 1

    def _raise_interrupt(self) -> None:
        """Raise the KeyboardInterrupt that came while PyAV wrote the file (where PyAV took it)."""
        if self._file is not None and self._file.interrupted is not None:
            raise self._file.interrupted

    def _failure(self, error: Exception) -> Exception:
        """The one-line error for a failed write, naming the file's own error where it had one (or
        the KeyboardInterrupt that failed it)."""
        if self._file is not None and self._file.interrupted is not None:
            return self._file.interrupted
        cause = self._file.error if self._file is not None and self._file.error is not None else error
        return OutputWriteError(self.path, getattr(cause, "strerror", None) or str(cause), getattr(cause, "errno", None))

    def _fit(self, image: np.ndarray) -> np.ndarray:
        """``image`` scaled to fit the file's size, keeping its aspect, centred on black."""
        width, height = self._size
        rows, columns = image.shape[:2]
        if (columns, rows) not in self._resized:
            self._resized.add((columns, rows))
            log.warning("%s: frames changed size from %dx%d to %dx%d; they are scaled to fit the video's first size",
                        self.path, width, height, columns, rows)
        scale = min(width / columns, height / rows)
        w, h = max(1, round(columns * scale)), max(1, round(rows * scale))
        fitted = np.zeros((height, width, 3), np.uint8)
        top, left = (height - h) // 2, (width - w) // 2
        fitted[top : top + h, left : left + w] = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        return fitted

    def _open(self, width: int, height: int, time_base: Fraction | None, sample_aspect: Fraction | None) -> None:
        self._time_base = time_base or 1 / Fraction(self.fps_hint).limit_denominator(1001)
        self._size = (width, height)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = _RecordingFile(open_output(self.path, "wb"))
            # the movie's clock ticks as the frames' (FFmpeg's ticks 1/1000 s): the empty edit before
            # a later first frame is then exact (a TS's first frame at 3.423222 s was shown at 3.423 s)
            options = {"fflags": "+bitexact", "movie_timescale": str(self._time_base.denominator)}
            self._container = av.open(self._file, "w", format="mp4", options=options)
            self._stream = self._container.add_stream(
                "libx264", rate=Fraction(self.fps_hint).limit_denominator(1001),
                options={"crf": str(self.crf), "preset": "veryfast", "flags": "+bitexact"},
            )
        except (OSError, av.FFmpegError) as error:
            self._raise_interrupt()
            raise OutputWriteError(self.path, getattr(error, "strerror", None) or str(error),
                                   getattr(error, "errno", None), "create") from None
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt = self._colours.pix_fmt
        self._colours.tag(self._stream.codec_context)
        self._stream.codec_context.time_base = self._time_base
        if sample_aspect is not None:
            self._stream.codec_context.sample_aspect_ratio = sample_aspect

    def close(self) -> None:
        """Finish the file (an MP4 cannot be read before this)."""
        container, self._container = self._container, None
        if container is None:
            return
        failed: Exception | None = None
        broken = self._file is not None and (self._file.error is not None or self._file.interrupted is not None)
        try:
            if not broken:  # muxing on after the file refused a write (the header's) crashed PyAV (SIGSEGV)
                for packet in self._stream.encode() if self._stream is not None else ():  # (stopped while opening)
                    container.mux(packet)
        except (OSError, av.FFmpegError) as error:
            failed = error
        try:  # writes the index (moov): without it the file cannot be played
            container.close()
        except (OSError, av.FFmpegError) as error:
            failed = failed or error
        try:
            self._file.close()
        except OSError as error:
            failed = failed or error
        if failed is not None:
            raise self._failure(failed) from None
        self._raise_interrupt()

    @property
    def written(self) -> int:
        """Bytes the file has taken so far (the encoder holds the latest frames a while)."""
        return self._file.written if self._file is not None else 0

    def abandon(self) -> None:
        """Close the file without finishing it (its writes failed: it cannot be played anyway)."""
        try:
            self.close()
        except SinkError:
            pass  # the file is thrown away: its own error would hide the one that stopped the writer
        except KeyboardInterrupt as error:
            if self._file is None or error is not self._file.interrupted:
                raise  # a new one; the one that failed the file is the caller's already


def write_png(path: str | Path, image: np.ndarray) -> None:
    """An RGB image as PNG (fast compression: previews are many and short-lived)."""
    path = Path(path)
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise SinkError(f"cannot encode {path}")
    try:
        with open_output(path, "wb") as f:  # not cv2.imwrite: it follows a link put where the file goes
            f.write(png.tobytes())
    except OSError as error:
        raise OutputWriteError(path, error.strerror or str(error), error.errno) from None
