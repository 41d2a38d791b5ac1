"""The one result that flows after the model: a frame's segmentation, with columnar segments.

Post-processing produces it, the per-source stages (the tracker) fill its track columns, every
sink and the wire format read it, the wire decoder and the synthetic ground truth produce it.
Everything is numpy; conversions to other formats live at the edges
(``segstream.connectors.redis_wire.to_wire`` / ``from_wire``).

Units: pixels of the original frame for ``label_map``, ``areas``, ``boxes`` (x0, y0, x1, y1,
x1/y1 exclusive) and ``centroids`` (x, y in the boxes' coordinates: pixel (x, y) spans x to
x + 1, so its centre is x + 0.5); ``pts`` in units of ``time_base`` (stream time), ``pts_seconds`` and
``capture_ts`` / ``publish_ts`` in seconds (the last two Unix time).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from fractions import Fraction
from typing import Any

import numpy as np

NO_TRACK = -1


def _column(values: Any, dtype: Any, width: int | None = None) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    if width is not None:
        return array.reshape(-1, width)
    return array.reshape(-1)


@dataclass(slots=True, eq=False)
class Segments:
    """S segments of one frame, one array per attribute (row i describes segment i).

    ``ids`` are the segments' values in the frame's label map (distinct, >= 0); ``queries`` the
    model query that produced each (-1 when none did); ``embeddings`` S x D (D may be 0);
    ``track_ids`` the identity a tracker gave each segment across frames (``NO_TRACK`` until
    one does), ``track_ages`` how many frames that track has been seen; ``centroids`` S x 2, the
    mean (x, y) of each mask's pixel centres, to 0.1 pixel (NaN where unknown: not measured, or
    read from an entry written before centroids).
    """

    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    class_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, object))
    isthing: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    areas: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int32))
    queries: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    track_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    track_ages: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    centroids: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float64))

    @classmethod
    def build(
        cls,
        ids: Sequence[int] | np.ndarray,
        class_ids: Sequence[int] | np.ndarray,
        labels: Sequence[str],
        isthing: Sequence[bool] | np.ndarray,
        scores: Sequence[float] | np.ndarray | None = None,
        areas: Sequence[int] | np.ndarray | None = None,
        boxes: Sequence[Sequence[int]] | np.ndarray | None = None,
        queries: Sequence[int] | np.ndarray | None = None,
        embeddings: np.ndarray | None = None,
        track_ids: Sequence[int] | np.ndarray | None = None,
        track_ages: Sequence[int] | np.ndarray | None = None,
        centroids: Sequence[Sequence[float]] | np.ndarray | None = None,
    ) -> Segments:
        """Columns from sequences; a column left out gets its neutral value for every segment
        (score 1, area 0, empty box, no query, no embedding, no track, unknown centroid)."""
        n = len(ids)
        label_column = np.empty(n, object)
        label_column[:] = [str(label) for label in labels]
        segments = cls(
            ids=_column(ids, np.int32),
            class_ids=_column(class_ids, np.int32),
            labels=label_column,
            isthing=_column(isthing, bool),
            scores=_column(np.ones(n) if scores is None else scores, np.float32),
            areas=_column(np.zeros(n) if areas is None else areas, np.int64),
            boxes=_column(np.zeros((n, 4)) if boxes is None else boxes, np.int32, 4),
            queries=_column(np.full(n, -1) if queries is None else queries, np.int32),
            embeddings=np.zeros((n, 0), np.float32) if embeddings is None
            else np.asarray(embeddings, np.float32).reshape(n, -1),
            track_ids=_column(np.full(n, NO_TRACK) if track_ids is None else track_ids, np.int64),
            track_ages=_column(np.zeros(n) if track_ages is None else track_ages, np.int32),
            centroids=_column(np.full((n, 2), np.nan) if centroids is None else centroids, np.float64, 2),
        )
        segments.check()
        return segments

    def check(self) -> None:
        """Raise ValueError unless every column has one row per segment."""
        n = len(self.ids)
        for column in fields(self):
            value = getattr(self, column.name)
            if len(value) != n:
                raise ValueError(f"segment column {column.name} has {len(value)} rows, ids has {n}")

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        embeddings = f"; embeddings {self.embeddings.shape[0]}x{self.embeddings.shape[1]}" if self.embeddings.size else ""
        return f"Segments({len(self)}{': ' + label_summary(self.labels) if len(self) else ''}{embeddings})"

    def __getitem__(self, index: Any) -> Segments:
        """The segments selected by a boolean mask, an index array or a slice, as new columns."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Segments(**{c.name: getattr(self, c.name)[index] for c in fields(self)})

    def __iter__(self) -> Iterator[dict]:
        """Each segment as a dict of plain Python values (for JSON and printing)."""
        for i in range(len(self)):
            yield {
                "id": int(self.ids[i]),
                "class_id": int(self.class_ids[i]),
                "label": str(self.labels[i]),
                "isthing": bool(self.isthing[i]),
                "score": float(self.scores[i]),
                "area": int(self.areas[i]),
                "box": [int(v) for v in self.boxes[i]],
                "query": int(self.queries[i]),
                "track_id": int(self.track_ids[i]),
                "track_age": int(self.track_ages[i]),
                "centroid": centroid_value(self.centroids[i]),
            }

    def index_of(self, segment_id: int) -> int:
        """Row of the segment whose label-map value is ``segment_id``; KeyError if none."""
        rows = np.flatnonzero(self.ids == segment_id)
        if rows.size == 0:
            raise KeyError(f"no segment with id {segment_id}")
        return int(rows[0])


@dataclass(frozen=True, slots=True, eq=False)
class ScaledLabelMap:
    """A label map decided at another size than its frame (the model's input), with the
    nearest-neighbour lines that bring it to the frame: pixel (y, x) of the frame holds
    ``decided[rows[y], cols[x]]``. ``rows`` and ``cols`` never decrease (a resize keeps the order
    of lines; the RLE encoder relies on it) and index ``decided``'s rows and columns.

    Results keep this instead of the frame-size map while they wait in queues: at 3840x2160 the
    frame-size map is 33 MB, the map decided at the model's 256-pixel input 150 kB.
    """

    decided: np.ndarray
    rows: np.ndarray
    cols: np.ndarray

    def __post_init__(self) -> None:
        if self.decided.ndim != 2:
            raise ValueError(f"a scaled label map's decided map must be 2-D, got shape {self.decided.shape}")
        for name, lines, size in (("rows", self.rows, self.decided.shape[0]), ("cols", self.cols, self.decided.shape[1])):
            if lines.ndim != 1 or lines.dtype.kind not in "iu" or len(lines) == 0:
                raise ValueError(f"a scaled label map's {name} must be a non-empty 1-D integer array")
            if lines[0] < 0 or lines[-1] >= size or (len(lines) > 1 and (np.diff(lines) < 0).any()):
                raise ValueError(f"a scaled label map's {name} must not decrease and must lie in 0..{size - 1}")

    def __repr__(self) -> str:
        (h, w), (dh, dw) = self.shape, self.decided.shape
        return f"ScaledLabelMap({w}x{h} frame from {dw}x{dh} decided)"

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the frame."""
        return len(self.rows), len(self.cols)

    def full(self) -> np.ndarray:
        """The frame-size label map (a new array each call)."""
        # lines in order: each decided line repeated as often as the frame copies it, which is
        # ten times faster at 4K than gathering the frame's lines by index
        h, w = self.decided.shape
        wide = np.repeat(self.decided, np.bincount(self.cols, minlength=w), axis=1)
        return np.repeat(wide, np.bincount(self.rows, minlength=h), axis=0)

    def every(self, stride: int) -> np.ndarray:
        """``full()[::stride, ::stride]`` without building the frame-size map."""
        return self.decided[self.rows[::stride]][:, self.cols[::stride]]


def centroid_value(xy: np.ndarray) -> list[float] | None:
    """A centroid as JSON takes it: ``[x, y]`` to 0.1 pixel, None when unknown."""
    return None if np.isnan(xy).any() else [round(float(xy[0]), 1), round(float(xy[1]), 1)]


def segment_moments(codes: np.ndarray, count: int, row_repeat: np.ndarray | None = None,
                    col_repeat: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The areas (int64), boxes (x0, y0, x1, y1, int32, x1/y1 exclusive) and centroids (x, y,
    float64, to 0.1 pixel; NaN for a segment without pixels) of segments 0..count-1 in frame
    pixels, from ``codes``: a map holding each pixel's segment, ``count`` where none.

    ``codes`` may be a map decided at another size: frame line i copies its line ``row_repeat[i]``
    (``col_repeat``) times (None: once each). Two tables, lines x segments, each from one bincount
    (each line's pixels of each segment, weighted by how many frame lines copy the other axis),
    give all three: an area is a table's weighted sum, a box its first and last line with a
    pixel, a centroid the mean of those lines' centres.
    """
    h, w = codes.shape
    row_repeat = np.ones(h, np.int64) if row_repeat is None else np.asarray(row_repeat, np.int64)
    col_repeat = np.ones(w, np.int64) if col_repeat is None else np.asarray(col_repeat, np.int64)
    areas = np.zeros(count, np.int64)
    boxes = np.zeros((count, 4), np.int32)
    centroids = np.full((count, 2), np.nan)
    if count == 0:
        return areas, boxes, centroids
    # Lines the frame does not copy (a frame smaller than the decided map) count in neither direction.
    shown_rows, shown_cols = row_repeat > 0, col_repeat > 0
    if not (shown_rows.all() and shown_cols.all()):
        codes = codes[shown_rows][:, shown_cols]
        row_repeat, col_repeat = row_repeat[shown_rows], col_repeat[shown_cols]
        h, w = codes.shape
    per_row = _line_table(codes, np.arange(h)[:, None] * (count + 1), count, col_repeat, (h, w))
    per_col = _line_table(codes, np.arange(w)[None, :] * (count + 1), count, row_repeat, (h, w), across=True)
    areas[:] = (row_repeat @ per_row).round()
    present = areas > 0
    (y0, y1), (x0, x1) = _extent(per_row, row_repeat), _extent(per_col, col_repeat)
    boxes[present] = np.stack((x0, y0, x1, y1), axis=1)[present]
    # frame lines start..end-1 copy a line: their centres (y + 0.5) sum to repeat * (start + end) / 2
    row_end, col_end = np.cumsum(row_repeat), np.cumsum(col_repeat)
    row_centres = row_repeat * (2 * row_end - row_repeat) / 2
    col_centres = col_repeat * (2 * col_end - col_repeat) / 2
    centroids[present] = np.stack((col_centres @ per_col, row_centres @ per_row), axis=1)[present]
    centroids[present] = (centroids[present] / areas[present, None]).round(1)
    return areas, boxes, centroids


def _line_table(codes: np.ndarray, offsets: np.ndarray, count: int, repeat: np.ndarray, shape: tuple[int, int],
                across: bool = False) -> np.ndarray:
    """lines x count: each line's pixels of each segment (rows, or with ``across`` columns), each
    weighted by how many frame lines copy the line it lies on in the other direction."""
    lines = shape[1] if across else shape[0]
    weights = None
    if (repeat != 1).any():  # a frame-size map's pixels count once: unweighted, which bincount counts faster
        weights = np.broadcast_to(repeat[:, None] if across else repeat[None, :], shape).ravel()
    table = np.bincount((codes + offsets).ravel(), weights=weights, minlength=lines * (count + 1))
    return table.reshape(lines, count + 1)[:, :count]


def _extent(table: np.ndarray, repeat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last frame line holding each segment, from a lines x segments table."""
    present = table > 0
    end = np.cumsum(repeat)
    start = end - repeat
    first = np.where(present, start[:, None], end[-1]).min(0)
    last = np.where(present, end[:, None], 0).max(0)
    return first, last


def map_centroids(label_map: np.ndarray | ScaledLabelMap, ids: np.ndarray) -> np.ndarray:
    """S x 2: ``segment_moments``' centroids of the segments ``ids`` of a frame's label map (a
    ``ScaledLabelMap`` measured on its decided map)."""
    ids = np.asarray(ids, np.int64)
    decided = label_map.decided if isinstance(label_map, ScaledLabelMap) else label_map
    row_repeat = col_repeat = None
    if isinstance(label_map, ScaledLabelMap):
        row_repeat = np.bincount(label_map.rows, minlength=decided.shape[0])
        col_repeat = np.bincount(label_map.cols, minlength=decided.shape[1])
    top = int(max(decided.max(initial=-1), ids.max(initial=-1), 0)) + 2
    lookup = np.full(top, len(ids), np.int64)  # value + 1 -> its row in ids, or len(ids): none
    lookup[ids + 1] = np.arange(len(ids))
    codes = lookup[np.clip(decided, -1, top - 2) + 1]
    return segment_moments(codes, len(ids), row_repeat, col_repeat)[2]


# labels named in one-line reprs; the rest are counted
LABELS_SHOWN = 4


def label_summary(labels: Sequence[str]) -> str:
    """``person x2, car, road, sky, +3 more``: each label once, with its count, in order of first
    appearance."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[str(label)] = counts.get(str(label), 0) + 1
    named = [label if n == 1 else f"{label} x{n}" for label, n in list(counts.items())[:LABELS_SHOWN]]
    more = len(counts) - LABELS_SHOWN
    return ", ".join(named + ([f"+{more} more"] if more > 0 else []))


class _FrameSizeMap:
    """``label_map`` of a Level and a FrameResult: their ``segment_map`` at frame size."""

    __slots__ = ()
    segment_map: np.ndarray | ScaledLabelMap | None

    @property
    def label_map(self) -> np.ndarray | None:
        """The frame-size label map, or None; a new array each read where ``segment_map`` is scaled."""
        stored = self.segment_map
        return stored.full() if isinstance(stored, ScaledLabelMap) else stored

    @label_map.setter
    def label_map(self, value: np.ndarray | None) -> None:
        self.segment_map = value


def map_every(label_map: np.ndarray | ScaledLabelMap, stride: int) -> np.ndarray:
    """Every ``stride``-th row and column of a frame-size or scaled label map."""
    if isinstance(label_map, ScaledLabelMap):
        return label_map.every(stride)
    return label_map[::stride, ::stride]


@dataclass(slots=True, eq=False)
class Level(_FrameSizeMap):
    """One level of a frame's segment hierarchy (SeNaTra: the hard segments of one grouping
    stage). Segment i has id ``ids[i]`` (its value in ``label_map``), covers ``areas[i]`` pixels and
    lies inside segment ``parents[i]`` of the next coarser level (-1 at the coarsest).
    ``label_map`` is height x width int32 like the frame's (None for a reader that skipped masks),
    built from ``segment_map`` as ``FrameResult.label_map`` is.
    """

    ids: np.ndarray
    parents: np.ndarray
    areas: np.ndarray
    segment_map: np.ndarray | ScaledLabelMap | None

    def __repr__(self) -> str:
        # (its arrays whole, a 240x320 map among them, were 5 KB of text: found probing as a researcher)
        stored = self.segment_map
        mask = ("no masks" if stored is None else repr(stored) if isinstance(stored, ScaledLabelMap)
                else f"{stored.shape[1]}x{stored.shape[0]} label map")
        return f"Level({len(self.ids)} segments in {len(np.unique(self.parents[self.parents >= 0]))} parents, {mask})" \
            if (self.parents >= 0).any() else f"Level({len(self.ids)} segments, the coarsest, {mask})"


@dataclass(slots=True, eq=False)
class FrameResult(_FrameSizeMap):
    """The segmentation of one frame of one source.

    ``label_map`` is height x width int32: the ``Segments.ids`` value of each pixel, -1 where no
    segment is (None for a reader that skipped decoding masks). It is built from ``segment_map``,
    which holds either that array or, for maps decided at the model's size (fast post-processing
    of frames of another size), a ``ScaledLabelMap``; then each read of ``label_map`` builds a
    new frame-size array, so read it once per use and prefer ``segment_map`` where the decided
    map will do. ``times`` holds when the frame passed each stage (``time.monotonic()`` seconds, keys in pipeline order: decoded, queued,
    batched, model_start, model_end, post_end, staged, published), and ``wall_offset``, the wall
    clock's offset from the monotonic one when the frame was made (no time: leave it out of spans). ``events`` are what the
    per-source stages noticed at this frame (a track started or ended); sinks publish them after
    the frame's own entry. ``image`` is the decoded frame (H x W x 3 uint8 RGB), attached by the
    runtime only while a sink that draws on frames needs it (a preview), else None, with its
    ``sample_aspect`` (``Frame.sample_aspect``: a pixel's width:height, None when square). ``epoch``
    counts the restarts of the source's timeline before this frame (reconnects, loops);
    ``sender_ts`` is the Unix time at which the sender captured the frame when the stream says so
    (RTCP sender reports), else None. ``file`` is the image file the frame was read from (image
    folder sources), else None. ``run_id`` names the pipeline run that produced it (track
    ids restart with each run); ``checkpoint_id`` the weights that made it (the first 12 hex digits of
    their file's SHA-256; "" when unknown: a hub reference, random weights). ``levels`` is the segment hierarchy of models that have one
    (SeNaTra), finest level first; ``segments``/``label_map`` stay the frame's panoptic or
    semantic output.
    """

    source: str
    index: int
    width: int
    height: int
    segment_map: np.ndarray | ScaledLabelMap | None
    segments: Segments = field(default_factory=Segments)
    pts: int | None = None
    time_base: Fraction | None = None
    pts_seconds: float | None = None
    capture_ts: float = 0.0
    publish_ts: float | None = None
    model: str = ""
    times: dict[str, float] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    image: np.ndarray | None = None
    sample_aspect: Fraction | None = None
    epoch: int = 0
    sender_ts: float | None = None
    file: str | None = None
    run_id: str = ""
    levels: list[Level] = field(default_factory=list)
    checkpoint_id: str = ""

    def __repr__(self) -> str:
        frame = f"{self.source} frame {self.index}" if self.source else f"frame {self.index}"  # segment()'s: no source
        parts = [frame, f"{self.width}x{self.height}", f"{len(self.segments)} segments"]
        if len(self.segments):
            parts[-1] += f" ({label_summary(self.segments.labels)})"
        if (tracked := int((self.segments.track_ids != NO_TRACK).sum())) > 0:
            parts.append(f"{tracked} tracked")
        if self.levels:
            parts.append(f"{len(self.levels)} levels")
        if self.events:
            parts.append(f"{len(self.events)} events")
        if self.image is not None:
            parts.append("image")
        return f"FrameResult({', '.join(parts)})"

    def masks(self) -> dict[int, np.ndarray]:
        """Segment id -> height x width bool mask."""
        label_map = self.label_map
        if label_map is None:
            raise ValueError("this result carries no label map; read it again with masks")
        return {int(segment_id): label_map == segment_id for segment_id in self.segments.ids}

    def mask_array(self) -> np.ndarray:
        """S x height x width bool: segment i's mask in row i, as ``segments``' other arrays
        (``boxes``, ``class_ids``, ``track_ids``) are ordered; what detection libraries take
        (supervision's ``Detections(mask=...)``)."""
        label_map = self.label_map
        if label_map is None:
            raise ValueError("this result carries no label map; read it again with masks")
        return label_map[None] == np.asarray(self.segments.ids).reshape(-1, 1, 1)

    def to_dict(self, masks: str | None = None) -> dict[str, Any]:
        """The result as plain JSON-ready values (``json.dumps(result.to_dict("rle"))``): the keys
        of ``segstream tail --json``'s frame object (docs/SCHEMA.md), each segment's mask where
        ``masks`` says: ``"rle"``, COCO's compressed RLE as stream entries carry it; ``"polygons"``,
        COCO polygons of its outer outlines (``[[x0, y0, x1, y1, ...], ...]``); None, none."""
        from segstream.connectors.redis_wire import result_record

        return result_record(self, masks)

    @property
    def latency_s(self) -> float | None:
        """Capture to publish, in seconds, once published."""
        return None if self.publish_ts is None else self.publish_ts - self.capture_ts

    def stand_in(self, publish_ts: float | None = None) -> FrameResult:
        """What the runtime needs of a result a sink wrote later (``Sink.on_written``): its source,
        index, capture time and stage times (the same dict), without label map or segments, with
        ``publish_ts`` when given (the result itself is left as the other sinks see it)."""
        return FrameResult(self.source, self.index, self.width, self.height, None, capture_ts=self.capture_ts,
                           model=self.model, times=self.times, run_id=self.run_id, publish_ts=publish_ts)


@dataclass(slots=True)
class Event:
    """Something that happened to a source or its segments, published on the source's events
    stream: ``kind`` names it (``state``, ``track_started``, ...), ``ts`` is Unix seconds, and
    ``data`` holds its JSON-ready details; ``run_id`` names the run that published it."""

    source: str
    kind: str
    ts: float
    data: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
