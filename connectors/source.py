"""What every video source offers the runtime."""

from __future__ import annotations

import logging
import os
import stat
from typing import Any, Iterator, Protocol

from segstream.connectors.frames import Frame


class VideoSource(Protocol):
    """A stream of frames from one camera, file or generator.

    ``live`` sources produce frames at their own pace whether or not anyone keeps up (cameras,
    network streams, files with ``realtime: true``); the runtime keeps only their newest frames and
    counts what it drops. Offline sources get back-pressure and lose nothing. Its frames are
    ``Frame``s of its name, their indices increasing (``Frame`` says what else the runtime checks).
    """

    # read-only (the runtime only reads them): a source's own may be properties or Final
    @property
    def name(self) -> str: ...

    @property
    def live(self) -> bool: ...

    def frames(self) -> Iterator[Frame]:
        """Yield frames in order until the source ends or ``close()`` is called."""
        ...

    def close(self) -> None:
        """Stop producing; ``frames()`` returns soon after. Safe to call twice, from any thread."""
        ...


# What a source is doing. A source starts connecting; streaming once frames flow; stalled when
# they stop coming while its input is open; reconnecting while it waits to try again and tries;
# ended when it finished or was closed, failed when it gave up. Ended and failed are final.
SOURCE_STATES = ("connecting", "streaming", "stalled", "reconnecting", "ended", "failed")
# The states in which a source delivers no frames although it should (its down time).
DOWN_STATES = ("connecting", "stalled", "reconnecting")


class StateListener(Protocol):
    """Told each state a source enters, why (one line for people, credentials redacted) and the
    details (JSON-ready: timeouts, attempt, negotiated frame size, ...)."""

    def __call__(self, state: str, reason: str, data: dict[str, Any]) -> None: ...


class ReportsState(Protocol):
    """A source that reports its own states: the runtime sets ``on_state`` before ``frames()``.
    Sources without it get the runtime's generic connecting -> streaming -> ended / failed."""

    on_state: StateListener | None


def tell_state(name: str, listener: StateListener | None, state: str, reason: str, data: dict[str, Any],
               logger: logging.Logger) -> None:
    """A source that reports its own states entered ``state``: told to its listener (the
    runtime's), else logged by the source's ``logger``, as a source used on its own."""
    if listener is not None:
        listener(state, reason, data)
    else:
        logger.info("source %s %s: %s", name, state, reason, extra={"source": name, "state": state})


def special_file(path: str | os.PathLike) -> str | None:
    """What ``path`` is when it exists and is no regular file or folder (``a named pipe (FIFO)``,
    a device, a socket); else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    for test, kind in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return None


def not_a_video_file(shown: str, kind: str) -> str:
    """The line for a file input that is ``kind`` (``special_file``) instead of a video file."""
    return (f"'{shown}' is {kind}, not a video file — a file source (and segstream batch) reads files it can seek "
            "in: record the stream to a file, or send it to a stream source (udp://, tcp://, srt://)")
