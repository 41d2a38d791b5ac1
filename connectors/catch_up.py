"""A live stream's catch-up (``max_behind_s``): when decoding falls behind the stream, the packets
waiting in the input's buffer are read and left undecoded up to a keyframe near live, instead of
decoded one by one late (a stream too large to decode in real time fell further behind until
FFmpeg's buffer overflowed and lost packets mid-frame)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

logger = logging.getLogger("segstream.connectors")

# how much slower than this machine's clock a stream's may run (1 ms a second) and show no lag
CLOCK_DRIFT = 1e-3
# caught up with no keyframe for this long (a stream refreshed by intra slices has none after its
# first): decoding goes on from any frame, the decoder's errors counted as they come
KEYFRAME_WAIT_S = 10.0
# skipped packets read at least this much faster than their timestamps run are a backlog; judged
# once this much of the stream's time was skipped
BACKLOG_SPEED = 2.0
PROBE_S = 0.5
# Reads that found no packet waiting, so that no backlog is behind them (the live edge): one that
# waited HOLD_S (a network that held packets back), or EDGE_READS in a row that each waited
# EDGE_WAIT_S (a quarter of a frame where that is more). A busy machine's scheduling alone made
# single reads of a backlog wait up to 15 ms (4K60 over UDP on two cores, the model running:
# 1 read in 1,000 over 10 ms, never two in a row), and one such read taken for the edge let the
# stream fall twice as far behind before catching up.
HOLD_S = 0.1
EDGE_WAIT_S = 0.01
EDGE_READS = 3


@dataclass(slots=True)
class CatchUpTally:
    """What a source's sessions' catch-ups did, over all its sessions: packets (frames) left
    undecoded, catch-ups, whether the first catch-up and the first give-up were said, and when
    the last packet was skipped (monotonic: a stall watchdog's sign of life)."""

    skipped: int = 0
    times: int = 0
    told: bool = False
    told_off: bool = False
    last_skip: float = 0.0
    log_extra: dict = field(default_factory=dict)


class CatchUp:
    """Decides, packet by packet in the order one session reads them, which a behind-live stream
    leaves undecoded. A packet is behind by how much later it is read than its timestamp says,
    against the earliest such offset (a packet that came as soon as it could: a late start is not
    lag; a clock up to ``CLOCK_DRIFT`` slower than ours neither). Reads that had to wait for their
    packets (``waited_s``: one past ``HOLD_S``, or ``EDGE_READS`` in a row) are at the live edge,
    whatever their offset (not so a playlist's: ``edge_from_waits``): the mark starts again there, so a network that holds packets back (jitter, a burst
    after a stall) is no lag, nor a clock that drifts; so does an offset more than
    ``max_behind_s`` above the packet before's (a sender's pause, a jump of its timestamps). Past
    ``max_behind_s`` it skips packets until a keyframe read less than half of it behind, which is
    decoded (``resumed`` then says so: a decoder that held frames is drained and started afresh);
    a reference frame skipped would leave the frames after it undecodable (or, past
    ``KEYFRAME_WAIT_S`` of the stream's time without one, until any packet). Skipped packets that
    come no faster than ``BACKLOG_SPEED`` times their timestamps' pace are no backlog (a server
    slower than real time): catch-up is off for the session from the next keyframe. The first
    catch-up and the first give-up of a source are warnings; the rest is counted in ``tally``."""

    def __init__(self, max_behind_s: float, time_base: float, frame_s: float, tally: CatchUpTally,
                 name: str = "", edge_from_waits: bool = True):
        self.max_behind_s, self.time_base, self.name, self.tally = max_behind_s, time_base, name, tally
        # a playlist's read that waits fetches its next segment, there already however far behind:
        # no sign of the live edge (found reviewing: such a stream fell behind by a fetch a segment)
        self.edge_from_waits = edge_from_waits
        self.edge_wait_s = max(EDGE_WAIT_S, frame_s / 4)
        self._waiting_reads = 0  # reads in a row that waited edge_wait_s
        self.skipping = self.off = self.resumed = self._giving_up = False
        self._from = (0.0, 0.0)  # the Unix time and stream time (s) a catch-up began at
        self._earliest: float | None = None
        self._earliest_at = 0.0
        self._last = 0.0  # the offset of the packet before
        self._since = 0  # packets skipped in this catch-up
        self._near_since: float | None = None  # the stream time it got within half of max_behind_s
        self._behind_at_start = 0.0

    def behind(self, pts: int, now: float, waited_s: float = 0.0) -> float:
        """How far behind live the packet at ``pts`` read at ``now`` (Unix time), after waiting
        ``waited_s`` for it, is."""
        offset = now - pts * self.time_base
        earliest = self._earliest
        if earliest is not None:
            earliest += CLOCK_DRIFT * (now - self._earliest_at)
        waited_s = waited_s if self.edge_from_waits else 0.0
        self._waiting_reads = self._waiting_reads + 1 if waited_s >= self.edge_wait_s else 0
        at_edge = waited_s >= HOLD_S or self._waiting_reads >= EDGE_READS
        if earliest is None or offset < earliest or offset - self._last > self.max_behind_s or at_edge:
            earliest = offset
        self._last, self._earliest, self._earliest_at = offset, earliest, now
        return offset - earliest

    def skip(self, pts: int | None, keyframe: bool, now: float | None = None, waited_s: float = 0.0) -> bool:
        """Whether to leave the packet at ``pts`` undecoded (one without a timestamp: as the one before)."""
        self.resumed = False
        if pts is None:
            if self.skipping:
                self._count()
            return self.skipping
        now = time.time() if now is None else now
        behind = self.behind(pts, now, waited_s)
        if self.off:
            return False
        seconds = pts * self.time_base
        if not self.skipping:
            if behind <= self.max_behind_s:
                return False
            self.skipping, self._since, self._behind_at_start = True, 0, behind
            self.tally.times += 1
            self._near_since, self._giving_up, self._from = None, False, (now, seconds)
        elif not self._giving_up:  # (giving up waits for a keyframe, below)
            if behind < self.max_behind_s / 2:
                if self._near_since is None or seconds < self._near_since:
                    self._near_since = seconds
                if keyframe or seconds - self._near_since > KEYFRAME_WAIT_S:
                    self.skipping, self.resumed = False, True
                    self._caught_up(behind, keyframe)
                    return False
            elif (seconds - self._from[1] >= PROBE_S and waited_s < HOLD_S
                  and (now - self._from[0]) * BACKLOG_SPEED > seconds - self._from[1]):
                # the packets skipped came about as fast as their timestamps run: nothing waits to be
                # skipped (a server slower than real time)
                self._giving_up = True
        if self._giving_up and keyframe:
            self.skipping, self.off, self.resumed = False, True, True
            self._gave_up(behind)
            return False
        self._count()
        return True

    def _count(self) -> None:
        tally = self.tally
        tally.skipped, tally.last_skip, self._since = tally.skipped + 1, time.monotonic(), self._since + 1

    def _gave_up(self, behind: float) -> None:
        if not self.tally.told_off:
            self.tally.told_off = True
            logger.warning(
                "source %s is %.1f s behind live and its packets come no faster than their timestamps run (a server "
                "slower than real time?): nothing waits to be skipped — catch-up is off for it until it reconnects "
                "(%d frames were left out finding that)", self.name, behind, self._since, extra=self.tally.log_extra)
        else:
            logger.debug("source %s: catch-up off until it reconnects", self.name, extra=self.tally.log_extra)

    def _caught_up(self, behind: float, keyframe: bool) -> None:
        at = "a keyframe" if keyframe else f"a frame that is no keyframe (none for {KEYFRAME_WAIT_S:g} s)"
        if not self.tally.told:
            self.tally.told = True
            logger.warning(
                "source %s fell %.1f s behind live (its frames are decoded slower than they come): %d frames were "
                "left undecoded up to %s %.1f s behind — later catch-ups are counted (frames_skipped), not logged; "
                "have the camera send a smaller stream, give the source more CPU, or set max_behind_s: null to "
                "decode every frame, late", self.name, self._behind_at_start, self._since, at, behind,
                extra=self.tally.log_extra)
        else:
            logger.debug("source %s caught up with live: %d frames left undecoded", self.name, self._since,
                         extra=self.tally.log_extra)
