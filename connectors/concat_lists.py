"""FFmpeg's concat lists (``ffconcat version 1.0``, a ``file`` line a part: a drone's or a
dashcam's chapters joined into one video): which part of one is at fault. FFmpeg's errors name the
list alone (found probing an archive: "reading 'trip.ffconcat' failed: No such file or directory",
its third part gone), and it reads a part without video, or cut short, as a shorter one."""

from __future__ import annotations

import os
from dataclasses import dataclass

import av

from segstream.connectors.av_input import describe_error

HEADER = b"ffconcat version"


@dataclass(frozen=True, slots=True)
class PartFault:
    """A part of a list at fault: its name as the list gives it, why, and how many frames it
    lacks where its index says (else 0)."""

    part: str
    why: str
    lacking: int = 0

    def __str__(self) -> str:
        return f"its part '{self.part}' {self.why}"


def concat_list(path: str) -> bool:
    """Whether ``path`` is a local concat list."""
    try:
        with open(path, "rb") as listing:
            return listing.read(len(HEADER)) == HEADER
    except OSError:
        return False


def concat_parts(path: str) -> list[tuple[str, str]]:
    """The list's parts, each as (its name in the list, its path), read as FFmpeg reads them: a
    ``file`` directive's one token, quoted with single quotes or escaped with backslashes, a
    relative name from the list's folder; names in the file system's bytes."""
    try:
        with open(path, "rb") as listing:
            lines = listing.read(1 << 20).splitlines()
    except OSError:
        return []
    folder = os.path.dirname(os.path.abspath(path))
    parts = []
    for raw in lines:
        line = os.fsdecode(raw).strip()
        keyword, _, rest = line.partition(" ")
        if keyword != "file" or not rest.strip():
            continue
        name = _token(rest.strip())
        parts.append((name, os.path.join(folder, name)))
    return parts


def _token(text: str) -> str:
    """FFmpeg's ``av_get_token``: single quotes keep what they hold, a backslash the character
    after it, unquoted white space ends the token."""
    out: list[str] = []
    quoted, i = False, 0
    while i < len(text):
        c = text[i]
        if c == "'":
            quoted = not quoted
        elif c == "\\" and not quoted and i + 1 < len(text):
            i += 1
            out.append(text[i])
        elif c.isspace() and not quoted:
            break
        else:
            out.append(c)
        i += 1
    return "".join(out)


def concat_fault(path: str, seen: int | None = None) -> PartFault | None:
    """The first part of the list at ``path`` that is missing, cannot be opened, or holds no
    video; then, read to their ends, the first that cannot be read, decodes no picture or holds
    fewer frames than its index lists. ``seen``: after a whole pass that ended normally, the
    frames it gave (decode errors included): the parts are read to their ends only where their
    indexes list more than that (a whole list is not read twice: a drone's ten chapters are 40 GB).
    None when no part is found at fault."""
    parts = concat_parts(path)
    listed = []
    for name, part in parts:
        if not os.path.exists(part):
            return PartFault(name, "does not exist")
        try:
            with av.open(part, timeout=(5.0, 5.0)) as container:
                if not container.streams.video:
                    return PartFault(name, "holds no video")
                listed.append(container.streams.video[0].frames)
        except (av.error.FFmpegError, OSError) as error:
            return PartFault(name, f"cannot be read: {describe_error(error)}")
    if seen is not None and not (all(listed) and sum(listed) > seen):
        return None
    for name, part in parts:
        if (fault := _read_through(name, part)) is not None:
            return fault
    return None


def _read_through(name: str, part: str) -> PartFault | None:
    """A part opened, its first picture decoded and its packets read to its end."""
    try:
        with av.open(part, timeout=(5.0, 5.0)) as container:
            stream = container.streams.video[0]
            packets = pictures = 0
            for packet in container.demux(stream):
                packets += bool(packet.size)
                if not pictures:
                    pictures = len(packet.decode())
            listed = stream.frames
    except (av.error.FFmpegError, OSError) as error:
        return PartFault(name, f"cannot be read: {describe_error(error)}")
    if not pictures:
        return PartFault(name, "has no picture its decoder could decode")
    if listed and packets < listed:  # an MP4 cut short: its index lists frames its data no longer holds
        return PartFault(name, f"is cut short: {packets} of the {listed} frames it lists", listed - packets)
    return None
