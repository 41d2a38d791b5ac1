"""JSONL files of stream entries, one file per source: the same records Redis would hold."""

from __future__ import annotations

import base64
import json
import logging
import time
from pathlib import Path
from typing import IO, Iterator

from segstream.connectors.errors import SinkError, WireFormatError
from segstream.connectors.redis_wire import event_to_wire, to_wire
from segstream.connectors.sink import WrittenCallback
from segstream.models.results import Event, FrameResult

log = logging.getLogger("segstream.sinks")


class FilesSink:
    """One JSONL file per source, ``<dir>/<source>.jsonl``, and one of its events,
    ``<dir>/<source>.events.jsonl``; each run appends to them (its entries carry its
    ``run_id``): a restarted pipeline never wipes what the last one wrote.

    Each line is one Redis stream entry (``segstream.connectors.redis_wire`` schema) as a JSON
    object of the same fields; the binary fields (``idmap``, ``levels_idmap``) are base64 text.
    ``read_entries`` turns a line back into the field map ``redis_wire.from_wire`` reads. Lines are written as
    results arrive (``publish_ts`` is that moment) and reach the disk on ``flush``.
    """

    name = "files"

    def __init__(self, directory: str | Path, mask_encoding: str = "rle"):
        self.directory = Path(directory)
        self.mask_encoding = mask_encoding
        self.on_written: WrittenCallback | None = None
        self._files: dict[str, IO[str]] = {}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SinkError(f"cannot create output directory '{self.directory}': {error.strerror}") from None

    def publish(self, result: FrameResult) -> None:
        now = time.time()
        entry = to_wire(result, self.mask_encoding, publish_ts=now)
        self._write(self.path(result.source), entry)
        result.publish_ts = now
        if self.on_written is not None:
            self.on_written([result])

    def publish_event(self, event: Event) -> None:
        self._write(self.events_path(event.source), event_to_wire(event))

    def poll(self) -> float | None:
        return None

    def path(self, source: str) -> Path:
        return self.directory / f"{source}.jsonl"

    def events_path(self, source: str) -> Path:
        return self.directory / f"{source}.events.jsonl"

    def _write(self, path: Path, entry: dict) -> None:
        try:
            self._file(path).write(entry_line(entry))
        except OSError as error:
            raise SinkError(f"cannot write to '{path}': {error.strerror}") from None

    def _file(self, path: Path) -> IO[str]:
        key = str(path)
        if key not in self._files:
            try:
                self._files[key] = path.open("a", encoding="utf-8")
                if _ends_torn(path):  # a run stopped in the middle of a line: ours start on a line of their own
                    self._files[key].write("\n")
            except OSError as error:
                raise SinkError(f"cannot open '{path}' for writing: {error.strerror}") from None
        return self._files[key]

    def flush(self) -> None:
        for f in self._files.values():
            f.flush()

    def close(self) -> None:
        files, self._files = self._files, {}
        for f in files.values():
            f.close()


def entry_line(entry: dict[str, bytes | str]) -> str:
    """One stream entry as a JSONL line (binary fields as base64 text), newline included."""
    return json.dumps(
        {k: base64.b64encode(v).decode("ascii") if isinstance(v, bytes) else v for k, v in entry.items()},
        separators=(",", ":"),
        ensure_ascii=False,
    ) + "\n"


def _ends_torn(path: Path) -> bool:
    """Whether the file's last line has no newline (its writer stopped in the middle of it)."""
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            if f.tell() == 0:
                return False
            f.seek(-1, 2)
            return f.read(1) != b"\n"
    except OSError:
        return False


def read_entries(path: str | Path) -> Iterator[dict[str, bytes | str]]:
    """The entries of a ``FilesSink`` file, as field maps for ``redis_wire.from_wire``. A line cut
    short (its writer stopped in the middle of it: killed, or the disk full; a restarted run goes
    on after it) is left out with a warning; any other line that is not an entry raises
    ``WireFormatError`` naming the file and line."""
    with Path(path).open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict):
                    raise ValueError("not a JSON object")
            except ValueError as error:
                if line.startswith("{"):  # the start of an entry: a run stopped in the middle of writing it
                    log.warning("%s: line %d is cut short, left out: the run writing it stopped in the middle of "
                                "it", path, number)
                    continue
                raise WireFormatError(f"{path}, line {number}: not an entry ({error}) — is this a segstream "
                                      "files output?") from None
            for binary in ("idmap", "levels_idmap"):
                if binary in entry:
                    entry[binary] = base64.b64decode(entry[binary])
            yield entry
