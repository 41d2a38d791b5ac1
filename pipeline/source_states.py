"""Each source's state, made visible in one place: logged with its reason, counted in
``RunMetrics``, and published as a ``state`` event on the source's events stream.

States and their meaning: ``segstream.connectors.source.SOURCE_STATES``; the event's data keys:
docs/SCHEMA.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from segstream.models.results import Event
from segstream.pipeline.metrics import RunMetrics

logger = logging.getLogger("segstream.sources")

_LEVELS = {
    "connecting": logging.INFO,
    "streaming": logging.INFO,
    "stalled": logging.WARNING,
    "reconnecting": logging.WARNING,
    "ended": logging.INFO,
    "failed": logging.ERROR,
}

# A source that stays down says so at warning level this often, not at every reconnect attempt.
OUTAGE_SUMMARY_S = 300.0


@dataclass(slots=True)
class _Outage:
    """A source's time without frames, from its first ``stalled`` or ``reconnecting`` on."""

    since: float
    attempts: int = 0  # reconnect attempts so far
    reason: str = ""  # of the last attempt
    warned: float = 0.0  # when it was last said at warning level


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"


def first_frame(source: object, frame: Any) -> tuple[str, dict[str, Any]]:
    """The reason and data of the ``streaming`` state a source without states of its own enters
    at its first frame: the frame's size, and what the opened input delivers (codec, pixel
    format, frame rate) where the source knows it (``info``, as a file's)."""
    data: dict[str, Any] = {"width": frame.width, "height": frame.height, "epoch": frame.epoch}
    reason = f"first frame {frame.width}x{frame.height}"
    info = getattr(source, "info", None)
    if info is not None:
        data.update({key: value for key, value in info.as_dict().items() if key not in ("width", "height")})
        reason += f" {info.codec}" + (f" at {info.fps:g} fps" if info.fps else "")
    return reason, data


class SourceStates:
    """Takes state transitions from the runtime and from sources that report their own; a
    transition to the current state, or out of ended or failed, is ignored. ``emit`` publishes
    the events (None: log and count only); ``clock`` is monotonic time.

    A source that stays down does not flood the log: its first reconnect attempt is a warning,
    further ones for the same reason are logged at debug level, with a warning summing them up
    every ``OUTAGE_SUMMARY_S`` of the outage; an attempt for another reason is a warning again,
    and ``streaming`` after an outage says how long it lasted and how many attempts it took. Each
    attempt is still counted and published as an event."""

    def __init__(self, metrics: RunMetrics, emit: Callable[[Event], None] | None,
                 clock: Callable[[], float] = time.monotonic):
        self.metrics = metrics
        self.emit = emit
        self.clock = clock
        self._outages: dict[str, _Outage] = {}  # per source down now (each source's states come from one thread)

    def enter(
        self, source: str, state: str, reason: str = "", data: dict[str, Any] | None = None, quiet: bool = False
    ) -> bool:
        """Record the transition; False when it was ignored. ``quiet`` logs it at debug level
        (the runtime's own states of a file or a generator: starting, first frame and end of
        input are no news; a batch's videos, whose end the batch reports itself)."""
        again = bool(data and data.get("restarted"))  # streaming anew: a new sender, a new epoch
        now = self.clock()
        counts = self.metrics.source(source)
        down_since = counts.state_since if counts.state == "connecting" else now
        if state == "stalled" and counts.state == "streaming" and data and "timeout_s" in data:
            # silent since its last frame, a timeout before the stall could be told: an outage of
            # 12 s was said to be 8 s when it ended (found probing a drone link)
            down_since = now - float(data["timeout_s"])
        previous = self.metrics.source_state(source, state, reason, now, again)
        if previous is None:
            return False
        details = dict(data or {})
        if "epoch" in details:
            self.metrics.source(source).epoch = int(details["epoch"])
        # a source that never came up has been down since it began connecting
        self._log(source, state, reason or previous, now, down_since, quiet)
        if self.emit is None:
            return True
        self.emit(
            Event(
                source,
                "state",
                time.time(),
                {"state": state, "previous": previous, "reason": reason, "reconnects": counts.reconnects, **details},
            )
        )
        return True

    def _log(self, source: str, state: str, reason: str, now: float, down_since: float, quiet: bool) -> None:
        level = logging.DEBUG if quiet else _LEVELS.get(state, logging.INFO)
        extra = {"source": source, "state": state}
        outage = self._outages.get(source)
        if state in ("stalled", "reconnecting"):
            if outage is None:
                outage = self._outages[source] = _Outage(down_since, warned=now)
            elif state == "reconnecting" and outage.attempts and reason == outage.reason and not quiet:
                outage.attempts += 1
                logger.debug("source %s %s: %s", source, state, reason, extra=extra)
                if now - outage.warned >= OUTAGE_SUMMARY_S:
                    outage.warned = now
                    logger.log(level, "source %s still reconnecting: %d attempts in %s, last: %s", source,
                               outage.attempts, _duration(now - outage.since), reason, extra=extra)
                return
            else:
                outage.warned = now
            outage.attempts += state == "reconnecting"
            outage.reason = reason
        elif outage is not None:
            del self._outages[source]
            if state == "streaming":
                attempts = f"{outage.attempts} reconnect attempt{'' if outage.attempts == 1 else 's'}"
                reason = f"{reason} (after {_duration(now - outage.since)} down, {attempts})"
        logger.log(level, "source %s %s: %s", source, state, reason, extra=extra)

    def listener(self, source: str, epoch: int = 0) -> Callable[..., None]:
        """The ``on_state(state, reason, data, quiet=False)`` callback for a source that reports
        its own states; ``epoch`` is added to the epochs it reports (a source added again under a
        name that ran before goes on from that one's epochs)."""

        def on_state(state: str, reason: str, data: dict[str, Any], quiet: bool = False) -> None:
            if epoch and data and "epoch" in data:
                data = {**data, "epoch": data["epoch"] + epoch}
            self.enter(source, state, reason, data, quiet)

        return on_state
