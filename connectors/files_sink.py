"""JSONL files of stream entries, one file per source: the same records Redis would hold."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import BinaryIO, Iterable

from segstream.connectors.errors import SinkError
from segstream.connectors.output_files import absolute, check_output_dir, open_output
from segstream.connectors.redis_wire import entry_line, event_to_wire, read_entries, to_wire
from segstream.connectors.sink import DROPPED_WRITE_FAILED, DroppedCallback, WrittenCallback
from segstream.models.results import Event, FrameResult

__all__ = ["FilesSink", "entry_line", "read_entries"]  # the JSONL form lives with the wire format

log = logging.getLogger("segstream.sinks")


# Write errors that pass (space comes back, a disk recovers): the entry is dropped and counted.
# Any other error before the sink wrote its first line (a folder in its place, no permission, a
# read-only disk) stops the run, as it would not pass; after it, it is dropped and counted too.
_PASSING = (errno.ENOSPC, errno.EDQUOT, errno.EIO)


class FilesSink:
    """One JSONL file per source, ``<dir>/<source>.jsonl``, and one of its events,
    ``<dir>/<source>.events.jsonl``; each run appends to them (its entries carry its
    ``run_id``): a restarted pipeline never wipes what the last one wrote.

    Each line is one Redis stream entry (``segstream.connectors.redis_wire`` schema) as a JSON
    object of the same fields; the binary fields (``idmap``, ``levels_idmap``) are base64 text.
    ``read_entries`` turns a line back into the field map ``redis_wire.from_wire`` reads. Each
    line goes to the file (unbuffered) as its result arrives, and ``publish_ts`` is that moment,
    so a result reported written is in the file.

    A file deleted, moved or replaced while the run writes to it (its folder removed) is noticed
    at the next write: the lines written to it are said lost (a warning, ``status()``), and a new
    file (and folder) is made at the path. A new file that cannot be had (another process holds
    it, its folder is now one every user can write) is a failed write, as below: each later
    write tries again. A write that fails for a while (the disk full; or any
    error once the sink has written a line) costs only its own entry: it is dropped, counted as
    ``sink_write_failed`` (``on_dropped``, ``status()``), and said once per file in a warning;
    the next entry tries again, on a line of its own after whatever the failed one left, and a
    line says when writing resumed. Other sinks (Redis) go on meanwhile; while a file's writes
    fail, ``connected`` is False (``segstream_sink_connected``, ``/readyz``), ``down_seconds`` counts
    (from the first failed write until every file writes again) and each recovery counts in
    ``reconnects`` (``segstream_sink_down_seconds_total``, ``segstream_sink_reconnects_total``). A sink that cannot write
    its first line (a folder in its place, no permission, a read-only disk) raises
    ``SinkError``: the run stops, saying why.

    One writer per file: a file another process holds (a second run with the same folder) is
    refused (``SinkError``) rather than written between its lines. The sink never writes through a symbolic link, into anything but a regular file, or into a
    file another user owns in a folder every user can write (``connectors.output_files``): such
    a file is refused as a file that cannot be written is (above). A folder every user can write
    without the sticky bit is refused at once. New files get the mode the umask leaves of 0666
    (0644 under the usual umask 022; ``umask 077`` keeps them to their user).

    ``sources``: the names whose files are opened (and locked: one writer per file) at once, made
    where missing, so that files another run writes, or one starting at the same moment, are
    refused before anything is published anywhere; a file made so that is still empty when its
    source ends or the sink closes is removed (no empty files of a run that never began). Other
    names' files are made and opened at their first line.
    """

    name = "files"

    def __init__(self, directory: str | Path, mask_encoding: str = "rle", sources: Iterable[str] = (),
                 levels: bool = True):
        self.directory = Path(directory)
        self.mask_encoding = mask_encoding
        self.levels = levels  # a model's segment hierarchy written (SeNaTra's levels)
        self.on_written: WrittenCallback | None = None
        self.on_dropped: DroppedCallback | None = None
        self.dropped: Counter[str] = Counter()
        self.events_dropped = 0
        self._files: dict[str, BinaryIO] = {}
        self._lines: dict[str, int] = {}  # path -> lines this run wrote to the file now open there
        self.lost_with_files = 0  # lines written to files deleted or replaced under us since
        self._failing: dict[str, int] = {}  # path -> entries dropped since its writes began failing
        self._wrote = False  # whether any line went to a file: after that, errors are dropped and counted
        self._opened: set[str] = set()  # paths this run has had open: reopening one never stops the run
        self._made: set[str] = set()  # paths made empty at start, removed at the end if still empty
        self._last_error = ""
        self.reconnects = 0  # times every file wrote again after writes had failed
        self.bytes_written = 0  # bytes of the lines written (entries and events)
        self._down_since: float | None = None  # monotonic time of the first failed write of a failing spell
        self._down_s = 0.0  # seconds of failing spells that ended
        self._down_lock = threading.Lock()  # _down_s and _down_since change together for down_seconds
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SinkError(f"cannot create output directory '{self.directory}'{absolute(self.directory)}: "
                            f"{error.strerror}") from None
        check_output_dir(self.directory)
        try:
            for source in sources:
                for path in (self.path(source), self.events_path(source)):
                    if not os.path.lexists(path):
                        self._made.add(str(path))
                    try:
                        self._file(path)
                    except OSError as error:
                        raise SinkError(f"cannot write to '{path}': {error.strerror or error}") from None
        except BaseException:
            self.close()
            raise

    def publish(self, result: FrameResult) -> None:
        now = time.time()
        entry = to_wire(result, self.mask_encoding, publish_ts=now, levels=self.levels)
        if not self._write(self.path(result.source), entry):
            self.dropped[DROPPED_WRITE_FAILED] += 1
            if self.on_dropped is not None:
                self.on_dropped([result], DROPPED_WRITE_FAILED)
            return
        result.publish_ts = now
        if self.on_written is not None:
            self.on_written([result])

    def publish_event(self, event: Event) -> None:
        if not self._write(self.events_path(event.source), event_to_wire(event)):
            self.events_dropped += 1

    def source_ended(self, source: str) -> None:
        """Its last lines are written: its files are closed (a file deleted now frees its space at
        once; a name added again opens them anew)."""
        for path in (self.path(source), self.events_path(source)):
            self._lines.pop(str(path), None)
            if (f := self._files.pop(str(path), None)) is not None:
                self._release(str(path), f)

    def poll(self) -> float | None:
        return None

    def path(self, source: str) -> Path:
        return self.directory / f"{source}.jsonl"

    def events_path(self, source: str) -> Path:
        return self.directory / f"{source}.events.jsonl"

    @property
    def connected(self) -> bool:
        """False from a failed write until the file writes again: the ``sink_connected`` gauge
        and ``/readyz`` show a disk that takes nothing (entries are being dropped)."""
        return not self._failing

    @property
    def down_seconds(self) -> float:
        """Seconds the sink could not write (some file's writes failing), up to now; any thread."""
        with self._down_lock:
            since, down_s = self._down_since, self._down_s
        return down_s + (max(0.0, time.monotonic() - since) if since is not None else 0.0)

    def status(self) -> dict:
        """What the sink dropped, with a ``line`` for status lines while it has dropped any."""
        dropped = dict(self.dropped)
        line = ""
        if dropped or self.events_dropped:
            entries, events = sum(dropped.values()), self.events_dropped
            parts = ([f"{entries} entr{'ies' if entries != 1 else 'y'}"] if entries else []) + \
                    ([f"{events} event{'s' if events != 1 else ''}"] if events else [])
            line = "files dropped " + " + ".join(parts)
            if self._failing:  # said only while writes fail: once they succeed again, no failure is current
                line += f" (writes failing: {self._last_error})"
        if self.lost_with_files:
            line += ("; " if line else "") + f"files: {self.lost_with_files} lines lost with files deleted under us"
        return {"dropped": dropped, "events_dropped": self.events_dropped, "failing": sorted(self._failing),
                "lost_with_files": self.lost_with_files, "line": line}

    def _write(self, path: Path, entry: dict) -> bool:
        """Append one entry's line; False (logged, the file closed) when the write fails."""
        key = str(path)
        try:
            data = entry_line(entry).encode("utf-8")
            f = self._file(path)
            written = 0
            while written < len(data):  # a raw file may take part of it (a nearly full disk)
                taken = f.write(memoryview(data)[written:])
                if not taken:
                    raise OSError(errno.EIO, "the file took none of the line")
                written += taken
        except OSError as error:
            if error.errno not in _PASSING and not self._wrote and key not in self._opened:
                # a sink that never wrote a line and will not (a folder where the file goes, no
                # permission, a read-only disk): the run cannot write what it is for
                raise SinkError(f"cannot write to '{path}': {error.strerror or error}") from None
            self._last_error = error.strerror or str(error)
            if key not in self._failing:
                log.warning("cannot write to '%s': %s; its entries are dropped (counted as %s) until writes "
                            "succeed again", path, self._last_error, DROPPED_WRITE_FAILED)
            self._failing[key] = self._failing.get(key, 0) + 1
            if self._down_since is None:
                with self._down_lock:
                    self._down_since = time.monotonic()
            stale = self._files.pop(key, None)
            if stale is not None:  # reopened for the next entry, which starts on a line of its own
                with contextlib.suppress(OSError):
                    stale.close()
            return False
        self._wrote = True
        self.bytes_written += len(data)
        self._lines[key] = self._lines.get(key, 0) + 1
        if key in self._failing:
            log.warning("writing to '%s' again after %d dropped entries", path, self._failing.pop(key))
            if not self._failing and self._down_since is not None:
                self.reconnects += 1
                with self._down_lock:
                    self._down_s += time.monotonic() - self._down_since
                    self._down_since = None
        return True

    def _file(self, path: Path) -> BinaryIO:
        key = str(path)
        if key in self._files and not self._still_there(path, self._files[key]):
            written = self._lines.pop(key, 0)
            if os.fstat(self._files[key].fileno()).st_nlink == 0:  # deleted: its lines are nowhere now
                log.warning("'%s' was deleted while this run wrote to it: the %d entries this run had written to "
                            "it went with it; writing to a new '%s'", path, written, path)
                self.lost_with_files += written
            else:  # moved (a log rotation): its lines are where it went
                log.warning("'%s' was moved or replaced while this run wrote to it (its %d entries of this run "
                            "went with the moved file); writing to a new '%s'", path, written, path)
            with contextlib.suppress(OSError):
                self._files.pop(key).close()
        if key not in self._files:
            reopening = key in self._opened
            if reopening:  # a refusal now costs entries, counted, not the run: the next write tries again
                path.parent.mkdir(parents=True, exist_ok=True)  # its folder, if that went too
                try:
                    check_output_dir(path.parent)
                except SinkError as unsafe:
                    raise OSError(errno.EPERM, str(unsafe)) from None
            f = open_output(path, "ab", buffering=0)
            try:  # one writer per file: a second run with the same folder would interleave its lines
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                if not self._still_there(path, f):  # locked once its holder removed it (an empty file of
                    f.close()  # a run that never wrote): the file now at the path is the one to lock
                    f = open_output(path, "ab", buffering=0)
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                if reopening:
                    raise OSError(errno.EWOULDBLOCK, "another process writes it now (a second run with the same "
                                  "sinks.files.dir?) — stop it, or give each run a folder of its own") from None
                raise SinkError(f"'{path}' is being written by another process (a second run with the same "
                                "sinks.files.dir?) — stop it, or give this run a folder of its own") from None
            try:
                if _ends_torn(path):  # a run or a write stopped in the middle of a line: ours start on a new one
                    f.write(b"\n")
            except OSError:
                f.close()
                raise
            self._files[key] = f
            self._opened.add(key)
            self._lines[key] = 0
        return self._files[key]

    @staticmethod
    def _still_there(path: Path, f: BinaryIO) -> bool:
        """Whether ``path`` still names the open file ``f`` (not deleted, moved or replaced)."""
        try:
            named = os.stat(path, follow_symlinks=False)
        except OSError:
            return False
        opened = os.fstat(f.fileno())
        return (named.st_ino, named.st_dev) == (opened.st_ino, opened.st_dev)

    def flush(self) -> None:
        """Nothing waits: every line went to the file as it was published."""

    def close(self) -> None:
        files, self._files = self._files, {}
        for path, f in files.items():
            self._release(path, f)

    def _release(self, path: str, f: BinaryIO) -> None:
        """Close one file; one made at start and never written is removed first (still locked:
        no other run writes it meanwhile), unless something else now stands at its path."""
        if path in self._made:
            self._made.discard(path)
            with contextlib.suppress(OSError):
                mine, there = os.fstat(f.fileno()), os.lstat(path)
                if mine.st_size == 0 and (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
                    os.unlink(path)
        with contextlib.suppress(OSError):  # a file whose last write failed
            f.close()


def _ends_torn(path: Path) -> bool:
    """Whether the file's last line has no newline (its writer stopped in the middle of it)."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as f:
            f.seek(0, 2)
            if f.tell() == 0:
                return False
            f.seek(-1, 2)
            return f.read(1) != b"\n"
    except OSError:
        return False
