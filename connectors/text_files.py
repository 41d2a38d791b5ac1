"""Text files a person saved by hand (list files, label sets), read in the encodings Windows
editors write: UTF-8 with or without a byte-order mark (Notepad, PowerShell 5.1's Out-File
-Encoding utf8), and UTF-16 with its mark (Notepad's "Unicode", PowerShell 5.1's ``>``)."""

from __future__ import annotations

import codecs
import os
import stat
import sys
from pathlib import Path

__all__ = ["read_saved_text", "standard_input", "streamed"]

STDIN = "-"  # the name that reads standard input
# The most a text file (a config, a list of videos: a million paths) may hold: /dev/zero, or `yes |`,
# as a config was read until memory ran out (found probing bad input)
MAX_TEXT_BYTES = 256 * 2**20
_read_once: dict[str, bytes] = {}  # what a stream held: read again, it would be empty


def streamed(path: str | Path) -> bool:
    """Whether ``path`` is standard input (``-``) or a file that can be read once only: a pipe,
    ``/dev/stdin``, a shell's ``<(...)``. Its relative paths start from the working directory."""
    if str(path) == STDIN:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def standard_input(path: str | Path) -> bool:
    """Whether ``path`` reads this process' standard input (``-``, ``/dev/stdin``, ``/dev/fd/0``)."""
    if str(path) == STDIN:
        return True
    try:
        return streamed(path) and os.path.samestat(os.stat(path), os.fstat(0))
    except OSError:
        return False


def _bounded(path: str | Path, read) -> bytes:
    """What ``read(n)`` gives, a MiB at a time (no 256 MiB asked of a small file's memory), up to
    ``MAX_TEXT_BYTES``; ValueError past them."""
    chunks, size = [], 0
    while size <= MAX_TEXT_BYTES and (chunk := read(2**20)):
        chunks.append(chunk)
        size += len(chunk)
    data = chunks[0][:0].join(chunks) if chunks else b""
    if len(data) > MAX_TEXT_BYTES:
        name = "'-' (standard input)" if str(path) == STDIN else f"'{path}'"
        raise ValueError(f"{name} holds more than {MAX_TEXT_BYTES // 2**20} MiB: no text file of settings or paths "
                         "is that long — name the file you meant")
    return data


def _bytes(path: str | Path) -> bytes:
    """The bytes of ``path``; of a stream, those it held the first time it was read."""
    if not streamed(path):
        with open(path, "rb") as file:
            return _bounded(path, file.read)
    if str(path) not in _read_once:
        stdin = getattr(sys.stdin, "buffer", None)
        if str(path) != STDIN:
            with open(path, "rb") as file:
                data = _bounded(path, file.read)
        elif stdin is not None:
            data = _bounded(path, stdin.read)
        else:  # a stream put in its place (a test's, a notebook's)
            data = _bounded(path, sys.stdin.read)
            data = data.encode() if isinstance(data, str) else data
        _read_once[str(path)] = data
    return _read_once[str(path)]


def read_saved_text(path: str | Path) -> str:
    """The text of ``path`` (``-``: standard input; a stream read once, however often asked),
    decoded by its byte-order mark (none: UTF-8), the mark left out.
    Raises OSError when the file cannot be read, and ValueError (one line naming the file and
    saying to save it as UTF-8) when its bytes are not text in that encoding."""
    data = _bytes(path)
    if data.startswith(codecs.BOM_UTF8):
        encoding, name = "utf-8-sig", "UTF-8"
    elif data.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):  # before UTF-16's: FF FE 00 00 starts with FF FE
        encoding, name = "utf-32", "UTF-32, as its byte-order mark says,"
    elif data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding, name = "utf-16", "UTF-16, as its byte-order mark says,"
    else:
        encoding, name = "utf-8", "UTF-8"
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        raise ValueError(f"'{path}' is not {name} text (byte {error.object[error.start]:#04x} at offset "
                         f"{error.start}) — save it as UTF-8") from None
    if "\0" in text:  # UTF-16 without its mark reads as UTF-8 full of NULs
        raise ValueError(f"'{path}' holds NUL characters (UTF-16 without a byte-order mark?) — save it as UTF-8")
    return text
