"""A source's frame-rate cap (``max_fps``): which frames to keep, by their stream timestamps."""

from __future__ import annotations

import math

# timestamps converted to seconds may land a hair before their due time
_ROUNDING_S = 1e-6


class FrameRateCap:
    """Keeps a frame when at least ``1 / max_fps`` seconds of stream time passed since the
    previous kept one was due, so jitter in the timestamps does not change the kept rate. A frame
    more than a period past its due time (a gap in the stream) starts the schedule anew on itself;
    timestamps that go back (a file played again) carry the schedule over, as if the frame came one
    frame after the last. ``skipped`` counts the frames it turned away.

    A live source's cap (``on_clock``) is given each frame's Unix time as well (``keep``'s
    ``wall``): after the first frame kept, the schedule falls on whole multiples of the period of
    that clock, so that cameras capped alike keep frames of the same instants (each its first
    frame at or after each multiple; at 5 fps their kept frames were up to 200 ms apart, each
    camera's schedule starting from its own first frame). The sender's clock (``exact``) is
    followed through its steps; an arrival time is read where the schedule starts only (its
    jitter would move the schedule)."""

    def __init__(self, max_fps: float, on_clock: bool = False):
        if not max_fps > 0:
            raise ValueError(f"max_fps must be above 0, not {max_fps}")
        self.period_s = 1.0 / max_fps
        self.skipped = 0
        self._due: float | None = None
        self._last: float | None = None  # the last frame's timestamp
        self._frame_s = 0.0  # the time between the last two frames
        self._offset: float | None = None  # Unix time minus stream time, where the grid was set
        self._exact = False  # whether that was the sender's clock
        self._kept: float | None = None  # the last kept frame's timestamp
        self.on_clock = on_clock

    def keep(self, seconds: float | None, wall: float | None = None, exact: bool = False) -> bool:
        """Whether the frame at ``seconds`` of stream time is kept (one without a timestamp is);
        ``wall``: its Unix time, by the sender's clock when ``exact``, else when it arrived."""
        if seconds is None:
            return True
        if self.on_clock and wall is not None and (self._offset is None or exact and (
                not self._exact or abs(wall - seconds - self._offset) > self.period_s / 4)):
            self._offset, self._exact = wall - seconds, exact  # the first, or the sender's clock stepped
            # the new grid's first multiple a period after the last frame kept (a session's first
            # sender report re-grids it: the frame after it was kept 120 ms after the last, found in review)
            self._due = None if self._kept is None else self._next(self._kept)
        return self._keep(seconds)

    def _next(self, seconds: float) -> float:
        """When the frame after one kept at ``seconds`` is due: a period later, or at the grid's
        first multiple from then (never sooner: kept frames are a period apart at least; so after
        a frame kept off the grid, the next may be up to two periods later)."""
        if self._offset is None:
            return seconds + self.period_s
        periods = math.ceil((seconds + self._offset) / self.period_s - _ROUNDING_S) + 1
        return periods * self.period_s - self._offset

    def _keep(self, seconds: float) -> bool:
        last, self._last = self._last, seconds
        if last is not None and seconds > last:
            self._frame_s = seconds - last
        elif last is not None and self._due is not None and seconds < last:  # went back; a repeat moves nothing
            shift = seconds - (last + self._frame_s)
            self._due += shift
            self._kept = None if self._kept is None else self._kept + shift
            if self._offset is not None:  # the same Unix time is now earlier stream time: the grid stays put
                self._offset -= shift
        due = self._due
        if due is None or seconds >= due + self.period_s:
            self._due, self._kept = self._next(seconds), seconds
            return True
        if seconds >= due - _ROUNDING_S:
            self._due, self._kept = due + self.period_s, seconds
            return True
        self.skipped += 1
        return False
