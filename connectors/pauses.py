"""Whether segstream itself stood still: the process stopped (SIGSTOP, Ctrl-Z), the machine
suspended, or the VM paused. A live source's watchdog then sees no data for as long, and without
this it blames the camera.

A watch thread samples the clocks every ``TICK_S``; so does any thread that asks (``since``), so
that the first one to run after the pause sees it. A pause is a step that took more than
``MIN_PAUSE_S`` longer than it should: on the monotonic clock with the process' CPU time barely
moving (stopped, or hardly scheduled at all; a thread holding the GIL moves it, and so does a busy
process on a crowded machine), or on the boot-time clock with the monotonic one standing still (a
suspend, which CLOCK_MONOTONIC does not count).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from segstream.connectors.threads import NamedThread

logger = logging.getLogger("segstream.sources")

TICK_S = 0.1
MIN_PAUSE_S = 1.0
# Of a late step's time, the most the process' CPU time may have moved for it to count as stopped
STOPPED_CPU_SHARE = 0.2
# CLOCK_BOOTTIME counts a suspend, CLOCK_MONOTONIC does not (Linux); elsewhere suspends go unseen
_BOOTTIME = getattr(time, "CLOCK_BOOTTIME", None)


def _boot_time() -> float:
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


class PauseWatch:
    """The process' pauses, each ``(ended_at, seconds)`` with ``ended_at`` on the monotonic clock."""

    def __init__(self, keep: int = 64):
        self._lock = threading.Lock()
        self._pauses: deque[tuple[float, float]] = deque(maxlen=keep)
        self._last = self._sample()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        return time.monotonic(), _boot_time(), time.process_time()

    def start(self) -> None:
        """Sample every ``TICK_S`` on a daemon thread (once; later calls do nothing)."""
        with self._lock:
            if self._thread is None:
                self._last = self._sample()
                # not named as the runtime's threads (THREAD_PREFIX): an abort need not wait for it
                self._thread = NamedThread(target=self._watch, name="pause-watch", daemon=True)
                self._thread.start()

    def _watch(self) -> None:
        while True:
            time.sleep(TICK_S)
            self.check()

    def check(self) -> None:
        """Sample the clocks now, noting (and logging) a pause since the last sample."""
        with self._lock:
            now = self._sample()
            (mono, boot, cpu), self._last = self._last, now
            ran_s, booted_s, cpu_s = now[0] - mono, now[1] - boot, now[2] - cpu
            # CPU time the threads may have used in the step's running part, before the stop
            idle = cpu_s < STOPPED_CPU_SHARE * ran_s + TICK_S * 2
            stopped_s = ran_s - TICK_S if ran_s - TICK_S >= MIN_PAUSE_S and idle else 0.0
            suspended_s = booted_s - ran_s if booted_s - ran_s >= MIN_PAUSE_S else 0.0
            paused_s = stopped_s + suspended_s
            if paused_s < MIN_PAUSE_S or self._thread is None:
                return
            self._pauses.append((now[0], paused_s))
        logger.warning("segstream was paused for %.1f s (SIGSTOP, suspend, VM pause, or a machine too busy to run it): "
                       "live sources got nothing meanwhile, through no fault of theirs", paused_s)

    def last(self) -> tuple[float, float] | None:
        """The latest pause as ``(ended_at, seconds)``, a pause just ended included; None if none."""
        self.check()
        with self._lock:
            return self._pauses[-1] if self._pauses else None

    def last_before(self, moment: float) -> tuple[float, float] | None:
        """The last pause that ended at or before ``moment`` (monotonic), as ``(ended_at, seconds)``; None if none."""
        self.check()
        with self._lock:
            return next(((ended_at, seconds) for ended_at, seconds in reversed(self._pauses) if ended_at <= moment), None)

    def first_after(self, moment: float) -> tuple[float, float] | None:
        """The first pause that ended after ``moment`` (monotonic), as ``(ended_at, seconds)``; None if none."""
        self.check()
        with self._lock:
            return next(((ended_at, seconds) for ended_at, seconds in self._pauses if ended_at > moment), None)

    def within(self, moment: float) -> float:
        """Seconds of ``moment``'s wait (from it until now, monotonic) that segstream stood still:
        of each pause that ended after it, at most the part after ``moment``."""
        self.check()
        with self._lock:
            return sum(min(seconds, ended_at - moment) for ended_at, seconds in self._pauses if ended_at > moment)

    def since(self, moment: float) -> float:
        """Seconds segstream was paused after ``moment`` (monotonic), a pause just ended included."""
        self.check()
        with self._lock:
            return sum(seconds for ended_at, seconds in self._pauses if ended_at > moment)


pauses = PauseWatch()
