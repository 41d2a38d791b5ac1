"""What every video source offers the runtime."""

from __future__ import annotations

from typing import Iterator, Protocol

from segstream.connectors.frames import Frame


class VideoSource(Protocol):
    """A stream of frames from one camera, file or generator.

    ``live`` sources produce frames at their own pace whether or not anyone keeps up (cameras,
    network streams, files with ``realtime: true``); the runtime keeps only their newest frames and
    counts what it drops. Offline sources get back-pressure and lose nothing.
    """

    name: str
    live: bool

    def frames(self) -> Iterator[Frame]:
        """Yield frames in order until the source ends or ``close()`` is called."""
        ...

    def close(self) -> None:
        """Stop producing; ``frames()`` returns soon after. Safe to call twice, from any thread."""
        ...
