"""The sinks a pipeline publishes to, built from the ``sinks`` section of the config.

Every sink follows ``pipeline.runtime.Sink``: ``publish(frame, prediction)``, ``flush()``,
``close()``, called from the runtime's one publishing thread.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import IO, Iterator

from segstream.connectors.errors import SinkError
from segstream.connectors.frames import Frame
from segstream.connectors.redis_wire import encode_entry
from segstream.models.prediction import FramePrediction
from segstream.pipeline.config import SinksConfig
from segstream.pipeline.runtime import Sink


class FilesSink:
    """One JSONL file per source, ``<dir>/<source>.jsonl``, rewritten by each run.

    Each line is one Redis stream entry (``connectors.redis_wire`` schema) as a JSON object of the
    same fields; the one binary field, ``idmap``, is base64 text. ``read_entries`` turns a line
    back into the field map ``redis_wire.decode_entry`` reads.
    """

    def __init__(self, directory: str | Path, model_name: str, mask_encoding: str = "rle"):
        self.directory = Path(directory)
        self.model_name = model_name
        self.mask_encoding = mask_encoding
        self._files: dict[str, IO[str]] = {}
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SinkError(f"cannot create output directory '{self.directory}': {error.strerror}") from None

    def publish(self, frame: Frame, prediction: FramePrediction) -> None:
        entry = encode_entry(frame, prediction, self.model_name, self.mask_encoding)
        line = json.dumps(
            {k: base64.b64encode(v).decode("ascii") if isinstance(v, bytes) else v for k, v in entry.items()},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        try:
            self._file(frame.source).write(line + "\n")
        except OSError as error:
            raise SinkError(f"cannot write to '{self.path(frame.source)}': {error.strerror}") from None

    def path(self, source: str) -> Path:
        return self.directory / f"{source}.jsonl"

    def _file(self, source: str) -> IO[str]:
        if source not in self._files:
            try:
                self._files[source] = self.path(source).open("w", encoding="utf-8")
            except OSError as error:
                raise SinkError(f"cannot open '{self.path(source)}' for writing: {error.strerror}") from None
        return self._files[source]

    def flush(self) -> None:
        for f in self._files.values():
            f.flush()

    def close(self) -> None:
        files, self._files = self._files, {}
        for f in files.values():
            f.close()


def read_entries(path: str | Path) -> Iterator[dict[str, bytes | str]]:
    """The entries of a ``FilesSink`` file, as field maps for ``redis_wire.decode_entry``."""
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            entry = json.loads(line)
            if "idmap" in entry:
                entry["idmap"] = base64.b64decode(entry["idmap"])
            yield entry


def build_sinks(cfg: SinksConfig, model_name: str, embedded_dir: Path | None = None) -> list[Sink]:
    """The enabled sinks; Redis first. ``embedded_dir`` holds the data of an embedded Redis
    (``url: null``); None means a temporary directory."""
    sinks: list[Sink] = []
    try:
        if cfg.redis.enabled:
            from segstream.connectors.redis_sink import RedisPublisher

            redis = cfg.redis
            sinks.append(
                RedisPublisher.from_config(
                    redis.url,
                    redis.password,
                    model_name=model_name,
                    stream_pattern=redis.stream,
                    maxlen=redis.maxlen,
                    mask_encoding=redis.mask_encoding,
                    pipeline_size=redis.pipeline_size,
                    embedded_dir=embedded_dir,
                )
            )
        if cfg.files.enabled:
            sinks.append(FilesSink(cfg.files.dir, model_name, cfg.redis.mask_encoding))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks
