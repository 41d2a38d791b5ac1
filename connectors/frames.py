"""The frame that flows from a source to the model stage."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

# The key of a frame's ``times`` that keeps the wall clock's offset from the monotonic one when
# the frame was made (when its ``capture_wall`` was taken): a step of the wall clock after it
# (NTP setting it) is told from the frame's latency with it (``pipeline.metrics.wall_clock_step``).
WALL_OFFSET = "wall_offset"


def _times_of_a_new_frame() -> dict[str, float]:
    return {WALL_OFFSET: time.time() - time.monotonic()}


def times_at(wall: float, monotonic: float) -> dict[str, float]:
    """A new frame's ``times`` when its ``capture_wall`` (``wall``) was taken earlier, at the
    monotonic time ``monotonic`` (0: unknown, then now): a step of the wall clock since is told."""
    return {WALL_OFFSET: wall - monotonic} if monotonic > 0 else _times_of_a_new_frame()


@dataclass(slots=True)
class Frame:
    """One decoded video frame.

    ``image`` is H x W x 3 uint8 RGB. ``pts`` is in units of ``time_base`` (stream time);
    ``pts_seconds`` is the same instant in seconds. ``capture_wall`` is the Unix time (seconds)
    at which the frame left the decoder (of an image folder timed by its images: the image's own
    time). ``times`` collects when the frame passed each stage of
    the pipeline (``time.monotonic()`` seconds by stage name; and ``WALL_OFFSET``, the wall
    clock's offset from the monotonic one when the frame was made). ``epoch`` counts the times the
    source's timeline restarted (a reconnect, a file starting over); ``sender_wall`` is the Unix
    time at which the sender captured the frame, when the stream says (RTCP sender reports).
    ``size`` is the decoded frame's (height, width) when ``image`` is a smaller copy scaled in
    the decoder to what the model sees (``engine.resize_in_decoder``); None when ``image`` is the
    frame itself. ``height`` and ``width`` are the frame's either way. ``file`` is the file the
    frame was read from, for sources that read one file a frame (an image folder); else None.
    ``sample_aspect`` is the width:height of one of the frame's pixels as displayed (the video's
    sample aspect ratio, turned with the frame) when they are not square; None when they are.

    A source's frames carry its name as ``source`` and indices that increase, each above the last
    (gaps allowed); a source of one's own gives ``capture_wall`` in Unix seconds (1973 to 5138,
    ``capture_time_problem``). The runtime fails a source whose frame breaks these.
    """

    source: str
    index: int
    image: np.ndarray
    pts: int | None
    time_base: Fraction | None
    pts_seconds: float | None
    capture_wall: float
    times: dict[str, float] = field(default_factory=_times_of_a_new_frame)
    epoch: int = 0
    sender_wall: float | None = None
    size: tuple[int, int] | None = None
    file: str | None = None
    sample_aspect: Fraction | None = None

    @property
    def height(self) -> int:
        return self.size[0] if self.size is not None else int(self.image.shape[0])

    @property
    def width(self) -> int:
        return self.size[1] if self.size is not None else int(self.image.shape[1])


def frame_problem(frame: object) -> str | None:
    """What makes ``frame`` unfit for the model stage (not a ``Frame``, an index that is not an
    int, an image that is not H x W x 3 uint8), in a few words; None when it is fit."""
    if not isinstance(frame, Frame):
        return f"is a {type(frame).__name__}, not a segstream.Frame"
    if not isinstance(frame.index, (int, np.integer)) or isinstance(frame.index, bool):
        return f"has index {frame.index!r}, not an int"
    image = frame.image
    if not isinstance(image, np.ndarray):
        return f"has an image of type {type(image).__name__}, not a numpy array"
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        return f"has a {image.dtype} image of shape {image.shape}, not H x W x 3 uint8 RGB"
    return None


def capture_time_problem(frame: Frame) -> str | None:
    """What is wrong with a frame's ``capture_wall`` (a source of one's own: found probing, 0 and
    milliseconds went out as ``capture_ts``, latencies of 1.8e12 ms), in a few words; None when it
    is Unix seconds (1973 to 5138)."""
    wall = frame.capture_wall
    if isinstance(wall, (int, float, np.floating, np.integer)) and CAPTURE_WALL_RANGE[0] < wall < CAPTURE_WALL_RANGE[1]:
        return None
    return (f"has capture_wall {wall!r}, not the Unix time in seconds it was captured (time.time() where it came, "
            "or the camera's own clock)")


def out_of_line(frame: Frame, name: str, last_index: int | None = None, own: bool = True) -> str | None:
    """What is wrong with where a source's frame stands, in a few words (None when nothing is): of
    another source than ``name``, its index not above ``last_index`` (the source's last frame's),
    and for a source of one's own (``own``: a config's or a program's, not a shipped one) a
    capture time outside Unix seconds. A shipped image folder's frame may carry its picture's own
    time, from a camera whose clock was never set (1970)."""
    if frame.source != name:
        return f"is of source {frame.source!r}, not {name!r} (Frame.source is the source's name)"
    if last_index is not None and frame.index <= last_index:
        return f"follows frame {last_index}: a source's frame indices increase, each above the last (Frame.index)"
    if own and (problem := capture_time_problem(frame)) is not None:
        return problem
    return None


# The Unix times a frame's capture_wall may be (1973 to 5138): 0, seconds since a start, and
# milliseconds lie outside.
CAPTURE_WALL_RANGE = (1e8, 1e11)
