"""A source's frame-rate cap (``max_fps``): which frames to keep, by their stream timestamps."""

from __future__ import annotations

# timestamps converted to seconds may land a hair before their due time
_ROUNDING_S = 1e-6


class FrameRateCap:
    """Keeps a frame when at least ``1 / max_fps`` seconds of stream time passed since the
    previous kept one was due, so jitter in the timestamps does not change the kept rate. A frame
    more than a period past its due time (a gap in the stream) starts the schedule anew on itself;
    timestamps that go back (a file played again) carry the schedule over, as if the frame came one
    frame after the last. ``skipped`` counts the frames it turned away."""

    def __init__(self, max_fps: float):
        if not max_fps > 0:
            raise ValueError(f"max_fps must be above 0, not {max_fps}")
        self.period_s = 1.0 / max_fps
        self.skipped = 0
        self._due: float | None = None
        self._last: float | None = None  # the last frame's timestamp
        self._frame_s = 0.0  # the time between the last two frames

    def keep(self, seconds: float | None) -> bool:
        """Whether the frame at ``seconds`` of stream time is kept (one without a timestamp is)."""
        if seconds is None:
            return True
        last, self._last = self._last, seconds
        if last is not None and seconds > last:
            self._frame_s = seconds - last
        elif last is not None and self._due is not None and seconds < last:  # went back; a repeat moves nothing
            self._due += seconds - (last + self._frame_s)
        due = self._due
        if due is None or seconds >= due + self.period_s:
            self._due = seconds + self.period_s
            return True
        if seconds >= due - _ROUNDING_S:
            self._due = due + self.period_s
            return True
        self.skipped += 1
        return False
