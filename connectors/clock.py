"""Time for sources: one monotone PTS timeline per source, and wall-clock pacing that survives
jumps in the timestamps.

``Timeline`` keeps a source's PTS strictly increasing across everything that restarts or breaks
them: a reconnect (a new session starts its clock anywhere), a file that loops, a camera or a
splice whose timestamps step backwards. ``Pacer`` plays frames at their PTS pace on the wall
clock, and re-anchors instead of sleeping through a forward jump (a camera reboot, an hour-long
gap in a spliced file) or bursting after a backward one.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from typing import Any

from segstream.connectors.threads import waiting_for_input


class Timeline:
    """Maps the PTS of a source's successive sessions onto one strictly increasing timeline.

    The first session's time base is the source's; PTS in other time bases are rescaled to it.
    Within a session, PTS pass through unchanged (offset by where the session was placed) as long
    as they increase; a PTS at or before the last one is placed one frame after it (a live frame
    given its arrival: as long after the last as it arrived after it, at least a frame, so that a
    camera whose clock steps back or repeats itself at a varying rate does not fall behind the
    real time by a frame's lack each time). After ``restart(gap_s)`` the next PTS is placed
    ``gap_s`` (at least one frame) after the last.

    A frame that was only a little early (one glitched timestamp) shifts no others: once a PTS
    with the offset from before a correction within the session is after the last placed one
    again, that offset is back. A real step back (a splice, a wrap) never gets there, and keeps
    its offset; so does a restart.
    """

    _KEPT = 16  # offsets from before corrections a session may still return to

    def __init__(self) -> None:
        self.time_base: Fraction | None = None
        self.last: int | None = None
        self._offset = 0
        self._restart_gap: float | None = None
        self._earlier: list[int] = []  # the offsets from before this session's corrections, oldest first
        self._arrived: float | None = None  # the monotonic time the last live frame placed arrived

    def restart(self, gap_s: float = 0.0) -> None:
        """The next PTS belongs to a new session, ``gap_s`` seconds of real time after the last."""
        self._restart_gap = max(0.0, gap_s)

    def place(self, pts: int | None, time_base: Fraction, step: int, arrived: float | None = None,
              held_s: float = 0.0) -> int:
        """The source-timeline PTS for a frame with session PTS ``pts`` (None: unknown) in
        ``time_base``, one frame lasting ``step`` of those units; a live frame's ``arrived`` (its
        monotonic time out of the decoder) and ``held_s`` (how long reads stood still before it:
        back-pressure, not the sender's time) time a correction."""
        if self.time_base is None:
            self.time_base = time_base
        scale = time_base / self.time_base
        step_here = max(1, round(step * scale))
        since, self._arrived = (None if arrived is None or self._arrived is None else arrived - self._arrived - held_s,
                                arrived)
        if self.last is None:
            placed = 0 if pts is None else round(pts * scale)
            if pts is None:
                # the first known PTS is placed a frame after (it may be anywhere: a live session's
                # first frames, before its clock, had it jump 3.6 s between frames 0.05 s apart)
                self.last, self._restart_gap = placed, 0.0
                return placed
        elif self._restart_gap is not None:
            gap = max(step_here, round(Fraction(self._restart_gap) / self.time_base))
            placed = self.last + gap
            if pts is None:
                # a session's first frame without a PTS still comes after the outage; the first
                # known PTS is placed after it (a gap of 0: one frame)
                self.last = placed
                self._restart_gap = 0.0
                return placed
            self._earlier.clear()
            self._offset = placed - round(pts * scale)
        elif pts is None:
            placed = self.last + step_here
        else:
            here = round(pts * scale)
            for n, offset in enumerate(self._earlier):
                if here + offset > self.last:  # past the glitch: back on the timeline it left
                    self._offset = offset
                    del self._earlier[n:]
                    break
            placed = here + self._offset
            if placed <= self.last:
                ahead = step_here if since is None else max(step_here, round(Fraction(since) / self.time_base))
                self._earlier = [*self._earlier, self._offset][-self._KEPT:]
                self._offset += self.last + ahead - placed
                placed = self.last + ahead
        self._restart_gap = None
        self.last = placed
        return placed

    def seconds(self, pts: int) -> float:
        return float(pts * self.time_base) if self.time_base is not None else 0.0


LONE_JUMP_S = 1.0  # a PTS this far ahead of the last one (and two frames) may be one corrupt timestamp


def out_of_line_mended(pictures: Iterable[Any], mended: Callable[[Any, int, int], None]) -> Iterator[Any]:
    """A file's pictures (``av_input.Picture``), each whose PTS alone is out of line with the
    pictures around it given a PTS halfway between theirs, so that a ``Timeline`` keeps the later
    ones where they are (``mended(picture, its PTS, the one given)`` says so):

    - one far ahead of the pictures on either side (a corrupt timestamp: a flipped bit in a TS
      packet's header moved one 39 s ahead, found probing an archive; every later picture was
      placed after it, 39 s late, to the file's end);
    - one at or a little before the last, where the next comes less than two frames after the last
      (two files joined with an overlap of 20 ms, a repeated timestamp): placed a frame after the
      last, it took the next one's place, and every later picture stayed 0.12 s late.

    Such a picture is held until the next one comes; one the next follows (a recorder's pause, a
    splice, a step back to the start) passes as it came, one picture later."""
    held = None
    last: int | None = None  # the highest PTS passed on, in the pictures' time base
    for picture in pictures:
        if held is not None:
            mid = _between(held, last, picture)
            if mid is not None:
                mended(held, held.pts, mid)
                held = dataclasses.replace(held, pts=mid)
            else:
                last = max(last, held.pts)
            yield held
            held = None
        if picture.pts is not None and last is not None and (picture.pts <= last or (
                picture.pts - last) * picture.time_base > max(LONE_JUMP_S, 2 * picture.step * picture.time_base)):
            held = picture
            continue
        if picture.pts is not None:
            last = picture.pts if last is None else max(last, picture.pts)
        yield picture
    if held is not None:
        yield held


def _between(held: Any, last: int, after: Any) -> int | None:
    """The PTS halfway between ``last`` and ``after``'s for ``held``, the picture between them,
    when its own is out of line with theirs alone (``out_of_line_mended``); else None."""
    if after.pts is None or after.pts - last < 2:
        return None
    ahead = held.pts > last
    if ahead and after.pts < held.pts or not ahead and after.pts - last < 2 * held.step:
        return (last + after.pts) // 2
    return None


class Pacer:
    """When each frame of a real-time source is due on the monotonic clock.

    Frames are due at their PTS distance from the first one. A frame whose PTS is more than
    ``max_jump_s`` (or two frames) ahead of the previous one's, or not after it, is due one frame
    after the previous one instead, and the timeline re-anchors there: a discontinuity never
    makes the source sleep or burst. A frame due more than ``max_jump_s`` in the past (the
    consumer held the source up) re-anchors at now, so the source resumes at its rate rather than
    catching up in a burst.
    """

    def __init__(self, max_jump_s: float = 1.0):
        self.max_jump_s = max_jump_s
        self.reanchored = 0  # how many discontinuities were smoothed over
        self._anchor: float | None = None  # monotonic time at which PTS second 0 is due
        self._last_due: float | None = None

    def due(self, pts_seconds: float, step_s: float, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        if self._anchor is None:
            self._anchor = now - pts_seconds
        due = self._anchor + pts_seconds
        if self._last_due is not None:
            ahead = due - self._last_due
            if ahead <= 0 or ahead > max(self.max_jump_s, 2 * step_s):
                due = self._last_due + step_s
                self._anchor = due - pts_seconds
                self.reanchored += 1
        if now - due > max(self.max_jump_s, 2 * step_s):
            due = now
            self._anchor = due - pts_seconds
        self._last_due = due
        return due

    def wait(self, pts_seconds: float, step_s: float, stop: threading.Event) -> bool:
        """Sleep until the frame is due; False when ``stop`` was set first."""
        delay = self.due(pts_seconds, step_s) - time.monotonic()
        if delay <= 0:
            return True
        waiting_for_input("pacing: the next frame is not due yet")  # (a still of a folder at 0.01 fps: 100 s)
        try:
            return not stop.wait(delay)
        finally:
            waiting_for_input(None)
