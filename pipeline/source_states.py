"""Each source's state, made visible in one place: logged with its reason, counted in
``RunMetrics``, and published as a ``state`` event on the source's events stream.

States and their meaning: ``segstream.connectors.source.SOURCE_STATES``; the event's data keys:
docs/SCHEMA.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
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
    the events (None: log and count only)."""

    def __init__(self, metrics: RunMetrics, emit: Callable[[Event], None] | None):
        self.metrics = metrics
        self.emit = emit

    def enter(
        self, source: str, state: str, reason: str = "", data: dict[str, Any] | None = None, quiet: bool = False
    ) -> bool:
        """Record the transition; False when it was ignored. ``quiet`` logs it at debug level
        (the runtime's own states of a file or a generator: starting, first frame and end of
        input are no news; a batch's videos, whose end the batch reports itself)."""
        again = bool(data and data.get("restarted"))  # streaming anew: a new sender, a new epoch
        previous = self.metrics.source_state(source, state, reason, time.monotonic(), again)
        if previous is None:
            return False
        details = dict(data or {})
        if "epoch" in details:
            self.metrics.source(source).epoch = int(details["epoch"])
        counts = self.metrics.source(source)
        level = logging.DEBUG if quiet else _LEVELS.get(state, logging.INFO)
        logger.log(level, "source %s %s: %s", source, state, reason or previous, extra={"source": source, "state": state})
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

    def listener(self, source: str) -> Callable[..., None]:
        """The ``on_state(state, reason, data, quiet=False)`` callback for a source that reports
        its own states."""

        def on_state(state: str, reason: str, data: dict[str, Any], quiet: bool = False) -> None:
            self.enter(source, state, reason, data, quiet)

        return on_state
