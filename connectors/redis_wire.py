"""The Redis stream entry format, version 1: the one place that writes and reads it.

docs/SCHEMA.md describes the same format for consumers in any language. An entry is a flat map of
field name to bytes; everything but the binary ``idmap`` and ``levels_idmap`` fields is UTF-8 text.

Reading needs numpy and zstandard only (the consumer SDK, ``segstream.client``, ships this
module without torch); writing ``rle`` masks also needs pycocotools.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np
import zstandard

from segstream.connectors.errors import WireFormatError
from segstream.models.results import (
    NO_TRACK, Event, FrameResult, Level, ScaledLabelMap, Segments, centroid_value, map_centroids,
)

log = logging.getLogger("segstream.sinks")

SCHEMA_VERSION = 1
DEFAULT_STREAM_PATTERN = "segstream:{source}:frames"
DEFAULT_STATUS_PATTERN = "segstream:{source}:status"
FINAL_STATES = ("ended", "failed")
MASK_ENCODINGS = ("rle", "idmap")

_REQUIRED_FIELDS = (
    "source", "frame", "pts", "time_base", "pts_s", "capture_ts", "publish_ts",
    "width", "height", "model", "mask_encoding", "segments",
)
_SEGMENT_KEYS = ("id", "class_id", "label", "isthing", "score", "area", "box")
# Written by every writer since tracking; a reader takes their absence as "not tracked".
_TRACK_KEYS = ("track_id", "track_age")
# Written by writers since centroids ([x, y]; null: no pixels); absent: unknown (NaN).
_CENTROID_KEY = "centroid"
SEGMENT_KEYS = _SEGMENT_KEYS + _TRACK_KEYS + (_CENTROID_KEY,)  # a segment object's keys, its mask (``rle``) aside
# Largest frame an entry may claim: bounds the memory a malformed entry can make us allocate.
_MAX_PIXELS = 16384 * 16384
# Most hierarchy levels an entry may hold (SeNaTra has 3); bounds the same memory.
_MAX_LEVELS = 8


def stream_name(pattern: str, source: str) -> str:
    """The stream that holds ``source``'s entries, e.g. ``segstream:cam1:frames``."""
    return pattern.format(source=source)


def events_beside(stream_pattern: str) -> str:
    """The events stream's name (or pattern) that goes with a frames stream's: ``:frames`` at its
    end becomes ``:events``, else ``:events`` is added (a tenant's prefix kept)."""
    return stream_pattern.removesuffix(":frames") + ":events"


def status_beside(stream_pattern: str) -> str:
    """The status key's pattern that goes with a frames stream's (docs/SCHEMA.md, Status keys):
    ``:frames`` at its end becomes ``:status``, else ``:status`` is added (a tenant's prefix kept)."""
    return stream_pattern.removesuffix(":frames") + ":status"


def acl_key_patterns(*patterns: str) -> str:
    """The Redis ACL key patterns that match every stream of ``patterns`` (``segstream:{source}:frames``
    gives ``~segstream:*:frames``), for advice on what to grant a user."""
    def glob(pattern: str) -> str:
        literal = [part.translate({ord(c): "\\" + c for c in "*?[]\\"}) for part in pattern.split("{source}")]
        return "~" + "*".join(literal)

    return " ".join(dict.fromkeys(glob(pattern) for pattern in patterns))


def to_wire(result: FrameResult, mask_encoding: str = "rle", publish_ts: float | None = None,
            levels: bool = True) -> dict[str, bytes | str]:
    """The stream entry for one processed frame; ``mask_encoding`` is ``rle`` (COCO RLE per
    segment) or ``idmap`` (one zstd-compressed label map); ``publish_ts`` defaults to now; without
    ``levels``, no segment hierarchy (a model's levels are left out)."""
    if mask_encoding not in MASK_ENCODINGS:
        raise WireFormatError(
            f"unknown mask encoding {mask_encoding!r} — use one of {', '.join(MASK_ENCODINGS)}"
        )
    label_map = result.segment_map
    if label_map is None or label_map.shape != (result.height, result.width):
        shape = "none" if label_map is None else f"{label_map.shape[0]}x{label_map.shape[1]}"
        raise WireFormatError(
            f"label map of {result.source} frame {result.index} is {shape} but the frame is "
            f"{result.height}x{result.width} — resize predictions to the frame before publishing"
        )
    segments = result.segments
    ids = [int(i) for i in segments.ids]
    if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
        raise WireFormatError(
            f"segment ids of {result.source} frame {result.index} must be distinct and >= 0, got {ids}"
        )

    records = _segment_records(result)
    fields: dict[str, bytes | str] = {
        "v": str(SCHEMA_VERSION),
        "run_id": result.run_id,
        "source": result.source,
        "frame": str(int(result.index)),
        "pts": "" if result.pts is None else str(int(result.pts)),
        "time_base": "" if result.time_base is None
        else f"{result.time_base.numerator}/{result.time_base.denominator}",
        "pts_s": "" if result.pts_seconds is None else repr(float(result.pts_seconds)),
        "capture_ts": repr(float(result.capture_ts)),
        "publish_ts": repr(float(time.time() if publish_ts is None else publish_ts)),
        "width": str(result.width),
        "height": str(result.height),
        "model": result.model,
        "mask_encoding": mask_encoding,
        "epoch": str(int(result.epoch)),
        "sender_ts": "" if result.sender_ts is None else repr(float(result.sender_ts)),
    }
    if result.file is not None:
        fields["file"] = result.file
    if result.checkpoint_id:
        fields["checkpoint_id"] = result.checkpoint_id
    if mask_encoding == "rle":
        for record, counts in zip(records, _coco_rle_counts(label_map, ids)):
            record["rle"] = {"size": [result.height, result.width], "counts": counts}
    else:
        fields["idmap"] = zstandard.ZstdCompressor().compress(
            np.ascontiguousarray(result.label_map, dtype="<i4").tobytes()
        )
    try:  # (JSON has no NaN: a reader in another language would fail on the whole entry)
        fields["segments"] = json.dumps(records, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise WireFormatError(f"segment scores of {result.source} frame {result.index} must be finite, got "
                              f"{[float(x) for x in result.segments.scores]}") from None
    if result.levels and levels:
        _levels_to_wire(result, mask_encoding, fields)
    return fields


RECORD_MASKS = ("rle", "polygons")


def result_record(result: FrameResult, masks: str | None = None) -> dict:
    """``result`` as plain JSON-ready values: the keys of ``segstream tail --json``'s frame object
    (docs/SCHEMA.md's names) but those of the stream it was read from, each segment's with its
    mask where ``masks`` says: ``"rle"``, COCO's compressed RLE as entries carry it (``{"size":
    [height, width], "counts": "..."}``); ``"polygons"``, the outlines as COCO polygons (a list
    of ``[x0, y0, x1, y1, ...]`` in pixels, one per outer boundary; holes are not kept; needs
    OpenCV); None, no masks."""
    if masks is not None and masks not in RECORD_MASKS:
        raise ValueError(f"masks={masks!r}: use 'rle', 'polygons' or None")
    segments = _segment_records(result)
    if masks is not None:
        label_map = result.segment_map
        if label_map is None:
            raise ValueError(f"{result.source} frame {result.index} carries no label map for its masks — read it "
                             "with masks, or ask for masks=None")
        ids = [int(i) for i in result.segments.ids]
        if masks == "rle":
            for record, counts in zip(segments, _coco_rle_counts(label_map, ids)):
                record["rle"] = {"size": [result.height, result.width], "counts": counts}
        else:
            for record, outline in zip(segments, _polygons(result.label_map, ids)):
                record["polygons"] = outline
    record = {
        "run_id": result.run_id, "source": result.source, "frame": result.index, "epoch": result.epoch,
        "pts": result.pts, "time_base": None if result.time_base is None
        else f"{result.time_base.numerator}/{result.time_base.denominator}", "pts_s": result.pts_seconds,
        "capture_ts": result.capture_ts, "sender_ts": result.sender_ts, "publish_ts": result.publish_ts,
        "latency_s": result.latency_s, "width": result.width, "height": result.height, "model": result.model,
        "checkpoint_id": result.checkpoint_id or None, "file": result.file, "segments": segments,
    }
    if result.levels:
        record["levels"] = [
            {"segments": [{"id": int(i), "parent": int(p), "area": int(a)}
                          for i, p, a in zip(level.ids, level.parents, level.areas)]}
            for level in result.levels
        ]
    return record


def _segment_records(result: FrameResult) -> list[dict]:
    """Each segment's object (``SEGMENT_KEYS``), its centroid measured on the label map where the
    segments came without one (built by hand, or read from an entry written before centroids)."""
    segments = result.segments
    records = [{key: segment[key] for key in SEGMENT_KEYS} for segment in segments]
    unknown = np.flatnonzero(np.isnan(segments.centroids).any(axis=1))
    if len(unknown) and result.segment_map is not None:  # the result's own column stays as it is
        for row, point in zip(unknown, map_centroids(result.segment_map, np.asarray(segments.ids)[unknown])):
            records[row][_CENTROID_KEY] = centroid_value(point)
    return records


def _polygons(label_map: np.ndarray, ids: list[int]) -> Iterator[list[list[int]]]:
    """Each id's outer outlines as COCO polygons (flat x, y lists of at least three points) along
    its pixels' edges, in COCO's coordinates (pixel x spans x to x + 1): drawn back by COCO's tools
    (pycocotools' ``frPyObjects``) they give the mask's pixels exactly. OpenCV's contours run
    through the outline pixels' centres, half a pixel inside: traced on the mask scaled 2x, each
    point is a sub-pixel at the left or top (even) or right or bottom (odd) of its pixel, whose
    edge is then ``ceil(point / 2)``."""
    try:
        import cv2
    except ImportError:
        raise ValueError("masks='polygons' needs OpenCV (pip install opencv-python-headless)") from None
    for segment_id in ids:
        rows, cols = np.nonzero(label_map == segment_id)
        if not len(rows):
            yield []
            continue
        top, left = rows.min(), cols.min()
        crop = (label_map[top : rows.max() + 1, left : cols.max() + 1] == segment_id).astype(np.uint8)
        contours, _ = cv2.findContours(crop.repeat(2, 0).repeat(2, 1), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        outlines = []
        for contour in contours:
            points = (contour.reshape(-1, 2) + 1) // 2 + (left, top)
            points = points[np.r_[True, np.any(points[1:] != points[:-1], axis=1)]]  # two sub-pixels, one edge
            if len(points) >= 3:
                outlines.append(points.reshape(-1).tolist())
        yield outlines


def _levels_to_wire(result: FrameResult, mask_encoding: str, fields: dict[str, bytes | str]) -> None:
    """The optional hierarchy: ``levels`` (JSON, finest level first, each ``{"segments": [{id,
    parent, area[, rle]}]}``) and, with idmap encoding, ``levels_idmap`` (all level maps stacked)."""
    where = f"{result.source} frame {result.index}"
    if len(result.levels) > _MAX_LEVELS:
        raise WireFormatError(f"{where} has {len(result.levels)} hierarchy levels; schema v1 allows {_MAX_LEVELS}")
    levels = []
    for k, level in enumerate(result.levels):
        if level.segment_map is None or level.segment_map.shape != (result.height, result.width):
            raise WireFormatError(f"hierarchy level {k} of {where} has no {result.height}x{result.width} label map")
        ids = [int(i) for i in level.ids]
        if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
            raise WireFormatError(f"hierarchy level {k} of {where}: segment ids must be distinct and >= 0")
        records = [
            {"id": i, "parent": int(p), "area": int(a)} for i, p, a in zip(ids, level.parents, level.areas, strict=True)
        ]
        if mask_encoding == "rle":
            for record, counts in zip(records, _coco_rle_counts(level.segment_map, ids)):
                record["rle"] = {"size": [result.height, result.width], "counts": counts}
        levels.append({"segments": records})
    fields["levels"] = json.dumps(levels, separators=(",", ":"), ensure_ascii=False)
    if mask_encoding == "idmap":
        stacked = np.stack([np.asarray(level.label_map, dtype="<i4") for level in result.levels])
        fields["levels_idmap"] = zstandard.ZstdCompressor().compress(np.ascontiguousarray(stacked).tobytes())


def from_wire(fields: Mapping[bytes | str, bytes | str], *, decode_masks: bool = True) -> FrameResult:
    """Read an entry as redis-py returns it (bytes or str keys); rejects versions other than 1.

    ``decode_masks=False`` skips rebuilding the label map (``label_map`` is then None), for
    readers that need only metadata.
    """
    result, masks = read_entry(fields)
    if decode_masks:
        result.label_map = masks.label_map()
        for level, label_map in zip(result.levels, masks.level_maps()):
            level.label_map = label_map
    return result


def read_entry(fields: Mapping[bytes | str, bytes | str]) -> tuple[FrameResult, EncodedMasks]:
    """An entry's metadata and segments, checked, with its masks left encoded: the result's
    ``label_map`` is None and the ``EncodedMasks`` decode it, or one segment's mask, on demand."""
    entry = {_text(key): value for key, value in fields.items()}
    if "v" not in entry:
        raise WireFormatError(
            f"stream entry has no 'v' field (fields: {', '.join(sorted(entry)) or 'none'}) — "
            f"it was not written by segstream schema v{SCHEMA_VERSION}"
        )
    version = _text(entry["v"])
    if version != str(SCHEMA_VERSION):
        raise WireFormatError(
            f"stream entry is schema v{version} but this reader understands v{SCHEMA_VERSION} only "
            "— upgrade the reader to the segstream version that wrote the stream"
        )
    missing = [name for name in _REQUIRED_FIELDS if name not in entry]
    if missing and "event" in entry and "data" in entry:
        raise WireFormatError(
            f"this is an events-stream entry ({_text(entry['event'])}), not a frame — read the source's frames stream"
        )
    if missing:
        raise WireFormatError(f"schema v1 entry lacks field(s) {', '.join(missing)} — the writer is broken")
    text = {name: _text(entry[name]) for name in _REQUIRED_FIELDS}

    width, height = _integer(text, "width"), _integer(text, "height")
    if width <= 0 or height <= 0 or width * height > _MAX_PIXELS:
        raise WireFormatError(f"entry frame size {width}x{height} is not a valid frame size")
    mask_encoding = text["mask_encoding"]
    if mask_encoding not in MASK_ENCODINGS:
        raise WireFormatError(
            f"entry has mask_encoding {_shown(mask_encoding)}; schema v1 knows {', '.join(MASK_ENCODINGS)}"
        )
    segments, rles = _parse_segments(text["segments"], mask_encoding)
    idmap = None
    if mask_encoding == "idmap":
        if "idmap" not in entry:
            raise WireFormatError("entry has mask_encoding 'idmap' but no 'idmap' field")
        idmap = entry["idmap"]
        if not isinstance(idmap, bytes):
            raise WireFormatError(
                "idmap field arrived as text — read the stream with a client that returns bytes "
                "(redis-py: decode_responses=False)"
            )

    levels, level_masks = _parse_levels(entry, mask_encoding) if "levels" in entry else ([], None)
    # optional fields added within v1: absent in entries of older writers
    optional = {name: _text(entry[name]) for name in ("epoch", "sender_ts") if name in entry}
    result = FrameResult(
        source=text["source"],
        index=_integer(text, "frame"),
        width=width,
        height=height,
        segment_map=None,
        segments=segments,
        pts=None if text["pts"] == "" else _integer(text, "pts"),
        time_base=_time_base(text["time_base"]),
        pts_seconds=None if text["pts_s"] == "" else _number(text, "pts_s"),
        capture_ts=_number(text, "capture_ts"),
        publish_ts=_number(text, "publish_ts"),
        model=text["model"],
        epoch=_integer(optional, "epoch") if optional.get("epoch") else 0,
        sender_ts=_number(optional, "sender_ts") if optional.get("sender_ts") else None,
        file=_text(entry["file"]) if "file" in entry else None,
        run_id=_text(entry.get("run_id", b"")),
        levels=levels,
        checkpoint_id=_text(entry.get("checkpoint_id", b"")),
    )
    ids = [int(i) for i in segments.ids]
    return result, EncodedMasks(height, width, ids, rles, idmap, level_masks)


class EncodedMasks:
    """The masks of one entry as they travelled; each decode is done when asked for (and the
    label map only once)."""

    def __init__(self, height: int, width: int, ids: list[int], rles: list[dict], idmap: bytes | None,
                 levels: EncodedLevels | None = None):
        self.height, self.width = height, width
        self.ids = ids
        self._rles = rles
        self._idmap = idmap
        self._label_map: np.ndarray | None = None
        self._levels = levels

    def level_maps(self) -> list[np.ndarray]:
        """The hierarchy's label maps (height x width int32 each), finest level first; [] without one."""
        if self._levels is None:
            return []
        levels = self._levels
        if levels.idmap is not None:
            stacked = _decompress_idmap(levels.idmap, self.height * len(levels.ids), self.width, "levels_idmap")
            return list(stacked.reshape(len(levels.ids), self.height, self.width))
        return [_paint_rles(rles, ids, self.height, self.width) for ids, rles in zip(levels.ids, levels.rles)]

    def label_map(self) -> np.ndarray:
        """height x width int32: each pixel's segment id, -1 where none is."""
        if self._label_map is None:
            if self._idmap is not None:
                self._label_map = _decompress_idmap(self._idmap, self.height, self.width)
            else:
                self._label_map = _paint_rles(self._rles, self.ids, self.height, self.width)
        return self._label_map

    def mask(self, segment_id: int) -> np.ndarray:
        """height x width bool mask of one segment; with ``rle`` only that segment is decoded."""
        if segment_id not in self.ids:
            raise KeyError(f"no segment with id {segment_id}")
        if self._idmap is not None or self._label_map is not None:
            return self.label_map() == segment_id
        rle = self._rles[self.ids.index(segment_id)]
        counts = _checked_counts(rle, segment_id, self.height, self.width)
        values = np.zeros(counts.size, bool)
        values[1::2] = True
        return np.repeat(values, counts).reshape(self.width, self.height).T.copy()


class EncodedLevels(NamedTuple):
    """A hierarchy's masks as they travelled: per level the segment ids and their RLEs, or the
    one ``levels_idmap`` blob of all level maps."""

    ids: list[list[int]]
    rles: list[list[dict]]
    idmap: bytes | None


def _parse_levels(entry: dict, mask_encoding: str) -> tuple[list[Level], EncodedLevels]:
    """The ``levels`` field checked (ids, parents pointing into the next level, areas), its masks
    left encoded: each ``Level.label_map`` is None until ``EncodedMasks.level_maps``."""
    try:
        items = parse_json(_text(entry["levels"]))
    except ValueError as error:
        raise WireFormatError(f"levels field is not valid JSON: {error}") from None
    if not isinstance(items, list) or len(items) > _MAX_LEVELS:
        raise WireFormatError(f"levels field must be a JSON array of at most {_MAX_LEVELS} levels")
    columns = []
    for k, item in enumerate(items):
        segments = item.get("segments") if isinstance(item, dict) else None
        if not isinstance(segments, list):
            raise WireFormatError(f"hierarchy level {k} must be an object with a 'segments' array")
        try:
            rows = [(int(s["id"]), int(s["parent"]), int(s["area"])) for s in segments]
        except (TypeError, KeyError, ValueError) as error:
            raise WireFormatError(
                f"hierarchy level {k} has a malformed segment ({error!r}): keys id, parent, area"
            ) from None
        ids = [r[0] for r in rows]
        if len(set(ids)) != len(ids) or any(i < 0 or i >= 2**31 for i in ids):
            raise WireFormatError(f"hierarchy level {k}: segment ids must be distinct, >= 0 and 32-bit")
        if any(not 0 <= r[2] < 2**63 for r in rows):
            raise WireFormatError(f"hierarchy level {k}: segment areas must be >= 0 and fit 64 bits")
        rles = []
        if mask_encoding == "rle":
            rles = [s.get("rle") for s in segments]
            if not all(isinstance(r, dict) and isinstance(r.get("counts"), str) and "size" in r for r in rles):
                raise WireFormatError(f"hierarchy level {k} lacks 'rle' {{size, counts}} on a segment")
        columns.append((rows, rles))
    for k, (rows, _) in enumerate(columns):
        coarser = {r[0] for r in columns[k + 1][0]} if k + 1 < len(columns) else set()
        strays = sorted({r[1] for r in rows} - coarser - ({-1} if k + 1 == len(columns) else set()))
        if strays:
            raise WireFormatError(f"hierarchy level {k} names parent(s) {strays[:5]} that level {k + 1} does not have")
    idmap = None
    if mask_encoding == "idmap" and columns:
        idmap = entry.get("levels_idmap")
        if idmap is None:
            raise WireFormatError("entry has levels and mask_encoding 'idmap' but no 'levels_idmap' field")
        if not isinstance(idmap, bytes):
            raise WireFormatError(
                "levels_idmap field arrived as text — read the stream with a client that returns bytes "
                "(redis-py: decode_responses=False)"
            )
    levels = [
        Level(
            ids=np.array([r[0] for r in rows], np.int32).reshape(-1),
            parents=np.array([r[1] for r in rows], np.int32).reshape(-1),
            areas=np.array([r[2] for r in rows], np.int64).reshape(-1),
            segment_map=None,
        )
        for rows, _ in columns
    ]
    return levels, EncodedLevels([[r[0] for r in rows] for rows, _ in columns], [r for _, r in columns], idmap)


def event_to_wire(event: Event) -> dict[str, str]:
    """The events-stream entry for one event: ``v``, ``source``, ``event`` (its kind), ``ts``
    (Unix seconds) and ``data`` (a JSON object of its details)."""
    return {
        "v": str(SCHEMA_VERSION),
        "run_id": event.run_id,
        "source": event.source,
        "event": event.kind,
        "ts": repr(float(event.ts)),
        "data": event_data_json(event),
    }


def event_data_json(event: Event) -> str:
    """An event's ``data`` as the JSON object its entry carries; a ``TypeError`` saying why when
    it is none (a value JSON has no word for: an object, NaN, infinity)."""
    try:
        return json.dumps(event.data, separators=(",", ":"), ensure_ascii=False, default=_plain, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"event {event.kind!r} of source {event.source!r}: its data is not JSON ({error}) — "
                        "use numbers, strings, lists and dicts") from None


def event_from_wire(fields: Mapping[bytes | str, bytes | str]) -> Event:
    """Read an events-stream entry; rejects versions other than 1 and malformed entries."""
    entry = {_text(key): _text(value) for key, value in fields.items()}
    if "v" not in entry:
        raise WireFormatError(
            f"events entry has no 'v' field (fields: {', '.join(sorted(entry)) or 'none'}) — it was not written by "
            f"segstream schema v{SCHEMA_VERSION}"
        )
    if entry["v"] != str(SCHEMA_VERSION):
        raise WireFormatError(
            f"events entry is schema v{entry['v']} but this reader understands v{SCHEMA_VERSION} only"
        )
    missing = [name for name in ("source", "event", "ts", "data") if name not in entry]
    if missing:
        raise WireFormatError(f"events entry lacks field(s) {', '.join(missing)} — the writer is broken")
    try:
        data = parse_json(entry["data"])
    except ValueError as error:
        raise WireFormatError(f"events entry's data is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise WireFormatError("events entry's data must be a JSON object")
    return Event(entry["source"], entry["event"], _number(entry, "ts"), data, entry.get("run_id", ""))


@dataclass(frozen=True)
class SourceStatus:
    """A source's status key (docs/SCHEMA.md, Status keys): what the run publishing it says of it
    now. ``state``: its last state event's (``connecting``, ``streaming``, ``stalled``,
    ``reconnecting``; ``ended`` or ``failed`` once final); ``since``: that event's time; ``frame``,
    ``seq`` and ``capture_ts``: of its last frame entry written (None before the first); ``ts``:
    when the run wrote this (its clock); ``ttl_s``: seconds the key lives unless written again
    (a final state's: None, it stays; or the streams' ``max_age_s``); ``down_since``: when it last stopped streaming (the
    first state of this spell of ``connecting``, ``stalled``, ``reconnecting``, ...), None while
    it streams; ``reason``: its last state event's, for people; ``frames``: what became of its
    frames so far, as a final state event's ``frames`` says (decoded, published, dropped by
    reason, skipped), None from a run older than 0.3.14."""

    source: str
    run_id: str
    state: str
    since: float
    ts: float
    ttl_s: float | None
    frame: int | None = None
    seq: int | None = None
    capture_ts: float | None = None
    down_since: float | None = None
    reason: str = ""
    frames: dict[str, Any] | None = None

    @property
    def final(self) -> bool:
        """The run ended (or gave up on) the source: nothing more comes from that run."""
        return self.state in FINAL_STATES


def status_to_wire(status: SourceStatus) -> str:
    """The status key's value: one JSON object, ``v`` first."""
    return json.dumps({"v": SCHEMA_VERSION, **asdict(status)}, separators=(",", ":"), ensure_ascii=False)


def status_from_wire(value: bytes | str) -> SourceStatus:
    """Read a status key's value; rejects other schema versions and malformed values."""
    try:
        data = parse_json(_text(value))
    except ValueError as error:
        raise WireFormatError(f"status value is not JSON: {error}") from None
    if not isinstance(data, dict) or "v" not in data:
        raise WireFormatError("status value is no JSON object with 'v' — it was not written by segstream")
    if data.pop("v") != SCHEMA_VERSION:
        raise WireFormatError(f"status value is not schema v{SCHEMA_VERSION}, which is all this reader understands")
    fields = SourceStatus.__dataclass_fields__
    missing = [name for name, field in fields.items() if name not in data
               and field.default is MISSING]
    if missing:  # (said as the schema names them: was Python's "__init__() missing 5 required positional arguments")
        raise WireFormatError(f"status value lacks field(s) {', '.join(missing)} — it was not written by segstream")
    frames = data.get("frames")
    if frames is not None and not (isinstance(frames, dict) and all(
            isinstance(v, int) or isinstance(v, dict) and all(isinstance(n, int) for n in v.values())
            for v in frames.values())):
        raise WireFormatError(f"status value's frames is {_shown(str(frames))}, not counts — it was not written by segstream")
    return SourceStatus(**{name: data[name] for name in fields if name in data})


def _plain(value):
    """JSON for numpy scalars and arrays in event details."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _coco_rle_counts(label_map: np.ndarray | ScaledLabelMap, ids: list[int]) -> list[str]:
    """Compressed COCO RLE counts of each id's full-frame mask, one pass over the frame.

    Byte for byte what ``pycocotools.mask.encode`` gives for ``label_map == id``; finding every
    run once costs one frame scan instead of one per segment (10x faster at 1080p, 10 segments).
    A ``ScaledLabelMap`` is encoded from its decided map, never built at frame size.
    """
    from pycocotools import mask as coco_mask  # writing only: readers need no COCO library

    height, width = label_map.shape
    total = height * width
    values, lengths = _column_runs(label_map)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    out = []
    for segment_id in ids:
        chosen = values == segment_id
        run_starts, run_ends = starts[chosen], ends[chosen]
        counts = np.empty(2 * len(run_starts) + 1, np.int64)
        counts[0:-1:2] = run_starts - np.concatenate(([0], run_ends[:-1]))
        counts[1::2] = run_ends - run_starts
        counts[-1] = total - (run_ends[-1] if len(run_ends) else 0)
        if counts[-1] == 0 and len(counts) > 1:
            counts = counts[:-1]  # a mask that ends on the last pixel has no closing 0-run in COCO RLE
        rle = coco_mask.frPyObjects({"size": [height, width], "counts": counts.tolist()}, height, width)
        out.append(rle["counts"].decode("ascii"))
    return out


def _column_runs(label_map: np.ndarray | ScaledLabelMap) -> tuple[np.ndarray, np.ndarray]:
    """The frame's pixels in COCO order (down each column, columns left to right) as runs:
    each run's value and length, neighbouring runs differing in value.

    A scaled map's runs are its decided map's, each lengthened by how many frame rows copy its
    rows and repeated for each frame column that copies its column.
    """
    if not isinstance(label_map, ScaledLabelMap):
        flat = np.ascontiguousarray(label_map.T).ravel()
        starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
        return flat[starts], np.diff(np.append(starts, flat.size))
    h, w = label_map.decided.shape
    flat = np.ascontiguousarray(label_map.decided.T).ravel()
    change = np.empty(flat.size, bool)
    change[0] = True
    np.not_equal(flat[1:], flat[:-1], out=change[1:])
    change[::h] = True  # runs break at each decided column here, and join again below where they can
    starts = np.flatnonzero(change)
    values = flat[starts]
    column = starts // h
    first_row = starts - column * h
    end_row = np.append(starts[1:], flat.size) - column * h
    line_end = np.concatenate(([0], np.cumsum(np.bincount(label_map.rows, minlength=h))))
    lengths = line_end[end_row] - line_end[first_row]
    # frame column x copies decided column cols[x]: that column's runs again, in order
    per_column = np.bincount(column, minlength=w)
    first_run = np.cumsum(per_column) - per_column
    copies = per_column[label_map.cols]
    offset = np.cumsum(copies) - copies
    picked = np.repeat(first_run[label_map.cols] - offset, copies) + np.arange(copies.sum())
    values, lengths = values[picked], lengths[picked]
    kept = lengths > 0  # decided rows no frame row copies (a frame smaller than the map)
    values, lengths = values[kept], lengths[kept]
    group = np.concatenate(([0], np.flatnonzero(values[1:] != values[:-1]) + 1))
    return values[group], np.add.reduceat(lengths, group)


def _rle_counts_from_string(counts: str) -> np.ndarray:
    """Run lengths of a compressed COCO RLE string, decoded for all numbers at once.

    Each number is 5-bit groups, least significant first, offset by 48 into printable ASCII; bit
    0x20 says another group follows, bit 0x10 of the last group is the sign. From the third
    number on, each is stored as the difference to the number two places before it.
    """
    try:
        codes = np.frombuffer(counts.encode("ascii"), np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        raise WireFormatError("segment rle counts holds non-ASCII characters") from None
    if codes.size == 0:
        return codes
    if codes.min() < 0 or codes.max() > 63:
        raise WireFormatError("segment rle counts holds characters outside the COCO RLE alphabet")
    last = (codes & 0x20) == 0
    if not last[-1]:
        raise WireFormatError("segment rle counts ends inside a number")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 12:
        raise WireFormatError("segment rle counts holds a number too long for 64 bits")
    offsets = np.arange(codes.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((codes & 0x1F) << (5 * offsets), starts)
    negative = (codes[ends] & 0x10) != 0
    values[negative] |= np.left_shift(np.int64(-1), 5 * lengths[negative])
    values[1::2] = np.cumsum(values[1::2])
    values[2::2] = np.cumsum(values[2::2])
    return values


def _checked_counts(rle: dict, segment_id: int, height: int, width: int) -> np.ndarray:
    """The run lengths of one segment's rle, checked to cover the frame exactly."""
    if list(rle["size"]) != [height, width]:
        raise WireFormatError(
            f"segment {segment_id} rle size {rle['size']} differs from the frame {height}x{width}"
        )
    counts = _rle_counts_from_string(rle["counts"])
    if counts.size == 0 or counts.min() < 0 or counts.sum() != height * width:
        raise WireFormatError(f"segment {segment_id} rle does not cover the {height}x{width} frame")
    return counts


def _paint_rles(rles: list[dict], ids: list[int], height: int, width: int) -> np.ndarray:
    """The label map with each segment's RLE mask painted with its id; masks must not overlap."""
    total = height * width
    run_starts, run_lengths, run_ids = [], [], []
    for segment_id, rle in zip(ids, rles):
        counts = _checked_counts(rle, segment_id, height, width)
        ends = np.cumsum(counts)
        run_starts.append((ends - counts)[1::2])
        run_lengths.append(counts[1::2])
        run_ids.append(np.full(counts.size // 2, segment_id, np.int32))
    if not run_starts:
        return np.full((height, width), -1, np.int32)
    starts = np.concatenate(run_starts)
    lengths = np.concatenate(run_lengths)
    values = np.concatenate(run_ids)
    order = np.argsort(starts, kind="stable")
    starts, lengths, values = starts[order], lengths[order], values[order]
    gaps = starts - np.concatenate(([0], (starts + lengths)[:-1]))
    if gaps.size and gaps.min() < 0:
        raise WireFormatError("segment rle masks overlap; a v1 entry's segments must be disjoint")
    # Alternate background gaps and segment runs, then expand in one pass (column-major order).
    # int16 when the ids allow: the transposing copy below is then 4x faster than in int32.
    narrow = values.max(initial=-1) <= np.iinfo(np.int16).max
    run_values = np.full(2 * len(starts) + 1, -1, np.int16 if narrow else np.int32)
    run_values[1::2] = values
    run_sizes = np.empty(2 * len(starts) + 1, np.int64)
    run_sizes[0:-1:2] = gaps
    run_sizes[1::2] = lengths
    run_sizes[-1] = total - (starts[-1] + lengths[-1]) if len(starts) else total
    return np.repeat(run_values, run_sizes).reshape(width, height).T.astype(np.int32, order="C")


def _decompress_idmap(blob: bytes, height: int, width: int, name: str = "idmap") -> np.ndarray:
    expected = height * width * 4
    try:
        # the size its header states, checked first: the decompressor takes it over max_output_size (found
        # probing: a 30 KB entry stating 1e9 bytes had a reader allocate 1 GB before the size was refused)
        declared = zstandard.frame_content_size(blob)
        if declared not in (-1, expected):  # (-1: not stated; then max_output_size bounds it)
            raise WireFormatError(f"{name} holds {declared} bytes but a {height}x{width} int32 map needs {expected}")
        # into the map itself, a writable array: bytes and then their copy held the map twice (found probing
        # as an attacker: 32 KB stating 16384x16384 took a reader to 2 GiB)
        label_map = np.empty(height * width, "<i4")
        into, got = memoryview(label_map).cast("B"), 0
        with zstandard.ZstdDecompressor().stream_reader(blob) as reader:
            while got < expected and (n := reader.readinto(into[got:])):
                got += n
            beyond = reader.read(1)
    except zstandard.ZstdError as error:
        raise WireFormatError(f"{name} field is not a zstd frame: {error}") from None
    if got != expected or beyond:
        if declared == expected and not beyond:  # (it said "holds 0 bytes" of a frame cut short: found reviewing)
            raise WireFormatError(f"{name} is cut short: {got} of the {expected} bytes its zstd frame states")
        raise WireFormatError(
            f"{name} holds {'more than ' if beyond else ''}{got} bytes but a {height}x{width} int32 map needs {expected}"
        )
    return label_map.reshape(height, width).astype(np.int32, copy=False)


def _parse_segments(blob: str, mask_encoding: str) -> tuple[Segments, list[dict]]:
    try:
        items = parse_json(blob)
    except ValueError as error:
        raise WireFormatError(f"segments field is not valid JSON: {error}") from None
    if not isinstance(items, list):
        raise WireFormatError("segments field must be a JSON array")
    rows: list[tuple] = []
    rles: list[dict] = []
    seen: set[int] = set()
    for position, item in enumerate(items):
        if not isinstance(item, dict) or any(key not in item for key in _SEGMENT_KEYS):
            raise WireFormatError(
                f"segment {position} must be an object with keys {', '.join(_SEGMENT_KEYS)}"
            )
        try:
            box = tuple(int(v) for v in item["box"])
            if len(box) != 4:
                raise ValueError("box needs 4 numbers")
            row = (int(item["id"]), int(item["class_id"]), str(item["label"]), bool(item["isthing"]),
                   float(item["score"]), int(item["area"]), box,
                   int(item.get("track_id", NO_TRACK)), int(item.get("track_age", 0)),
                   _centroid(item.get(_CENTROID_KEY)))
            # Ids, classes, boxes and ages are int32 columns, areas and track ids int64: beyond,
            # numbers would not fit.
            if not all(-(2**31) <= v < 2**31 for v in (row[0], row[1], *box, row[8])) or not all(
                -(2**63) <= v < 2**63 for v in (row[5], row[7])
            ):
                raise ValueError("a number is out of the 32-bit range (area and track_id: 64-bit)")
        except (TypeError, ValueError) as error:
            raise WireFormatError(f"segment {position} has a malformed value: {error}") from None
        if row[0] < 0 or row[0] in seen:
            raise WireFormatError(f"segment {position} has id {row[0]}; ids must be distinct and >= 0")
        seen.add(row[0])
        rows.append(row)
        if mask_encoding == "rle":
            rle = item.get("rle")
            if not isinstance(rle, dict) or not isinstance(rle.get("counts"), str) or "size" not in rle:
                raise WireFormatError(
                    f"segment {position} lacks 'rle' {{size, counts}} required by mask_encoding 'rle'"
                )
            rles.append(rle)
    columns = list(zip(*rows)) if rows else [[]] * 10
    segments = Segments.build(
        ids=columns[0], class_ids=columns[1], labels=columns[2], isthing=columns[3],
        scores=columns[4], areas=columns[5], boxes=np.array(columns[6], dtype=np.int64).reshape(-1, 4),
        track_ids=columns[7], track_ages=columns[8], centroids=np.array(columns[9], np.float64).reshape(-1, 2),
    )
    return segments, rles


def _centroid(value) -> tuple[float, float]:
    """A segment object's ``centroid``: ``[x, y]``; NaN for null (no pixels) or absent (older writers)."""
    if value is None:
        return math.nan, math.nan
    if isinstance(value, (str, bytes, dict)) or len(value) != 2:
        raise ValueError("centroid needs 2 numbers")
    return float(value[0]), float(value[1])


def parse_json(text: str | bytes | bytearray) -> Any:
    """``json.loads``, where JSON nested deeper than Python's recursion limit is a ``ValueError``
    as any other malformed JSON: found probing as an attacker, one entry of 100,000 ``[`` gave a
    ``RecursionError`` traceback out of a run (its events read back at start) and every reader."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


def _text(value: bytes | str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise WireFormatError(f"entry field {value[:20]!r}... is not UTF-8 text") from None
    return str(value)


def _shown(value: str, most: int = 60) -> str:
    """A field's value as an error quotes it: its first ``most`` characters (found probing as an
    attacker: a 5,000-character frame field was repeated whole in tail's warning)."""
    return repr(value) if len(value) <= most else f"{value[:most]!r}... ({len(value)} characters)"


def _integer(text: dict[str, str], name: str) -> int:
    try:
        return int(text[name])
    except ValueError:
        raise WireFormatError(f"field {name!r} is {_shown(text[name])}, expected an integer") from None


def _number(text: dict[str, str], name: str) -> float:
    try:
        return float(text[name])
    except ValueError:
        raise WireFormatError(f"field {name!r} is {_shown(text[name])}, expected a number") from None


def _time_base(value: str) -> Fraction | None:
    if value == "":
        return None
    numerator, slash, denominator = value.partition("/")
    try:
        if not slash:
            raise ValueError
        return Fraction(int(numerator), int(denominator))
    except (ValueError, ZeroDivisionError):
        raise WireFormatError(f"field 'time_base' is {_shown(value)}, expected 'num/den'") from None


# --- the JSONL form (the files sink's, segstream batch's) ------------------------------------

def entry_line(entry: dict[str, bytes | str]) -> str:
    """One stream entry as a JSONL line (binary fields as base64 text), newline included."""
    return json.dumps(
        {k: base64.b64encode(v).decode("ascii") if isinstance(v, bytes) else v for k, v in entry.items()},
        separators=(",", ":"),
        ensure_ascii=False,
    ) + "\n"


def read_entries(path: str | Path) -> Iterator[dict[str, bytes | str]]:
    """The entries of a ``FilesSink`` file (or a batch's JSONL), as field maps for ``from_wire``. A line cut
    short (its writer stopped in the middle of it: killed, or the disk full; a restarted run goes
    on after it) is left out with a warning; any other line that is not an entry raises
    ``WireFormatError`` naming the file and line."""
    with Path(path).open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            try:
                entry = parse_json(line)
                if not isinstance(entry, dict):
                    raise ValueError("not a JSON object")
            except ValueError as error:
                if line.startswith("{"):  # the start of an entry: its write stopped in the middle
                    log.warning("%s: line %d is cut short, left out: its write stopped in the middle (the run "
                                "was killed, or the disk filled)", path, number)
                    continue
                raise WireFormatError(f"{path}, line {number}: not an entry ({error}) — is this a segstream "
                                      "files output?") from None
            for binary in ("idmap", "levels_idmap"):
                if binary in entry:
                    entry[binary] = base64.b64decode(entry[binary])
            yield entry
