"""Segment filters: which of a frame's segments go on, decided before the tracker and the sinks.

A segment is dropped for its class (``class``), its score (``score``), for lying wholly outside
the region of interest (``roi``) or for covering fewer than ``min_area`` frame pixels
(``min_area``; inside the region of interest, when there is one), each counted under the first of
those reasons that holds. A dropped segment leaves no trace: its row goes from the segments, its
pixels become no segment (-1) in the label map and in every hierarchy level's map. The region of
interest clips every segment: pixels outside it become no segment, and a segment partly outside
keeps its inside pixels, with its area, box and centroid measured again on them.

Everything works on the map as the result keeps it: the decided map of a ``ScaledLabelMap`` (the
model's input resolution, each line weighted by how many frame lines copy it, so areas stay
frame pixels) or the frame-size array. The region of interest is a polygon in fractions of the
frame's width and height, so one setting fits a camera whose resolution changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from segstream.models.results import FrameResult, Level, ScaledLabelMap, segment_moments

FILTER_REASONS = ("class", "score", "roi", "min_area")
_CACHED_GRIDS = 8  # ROI masks kept: one per frame size a source has streamed lately


@dataclass(frozen=True, slots=True)
class FilterSettings:
    """What a source keeps. ``keep_class_ids``: only these classes (None: every class);
    ``drop_class_ids``: never these; ``min_score``: scores below it go; ``min_area``: frame pixels
    (after clipping to the region of interest); ``roi``: the region of interest's vertices as
    (x, y) fractions of width and height (None: the whole frame)."""

    keep_class_ids: frozenset[int] | None = None
    drop_class_ids: frozenset[int] = frozenset()
    min_score: float = 0.0
    min_area: int = 0
    roi: tuple[tuple[float, float], ...] | None = None

    def dropped_classes(self, class_ids: np.ndarray) -> np.ndarray:
        """Which of ``class_ids`` these settings drop for their class alone."""
        dropped = np.isin(class_ids, list(self.drop_class_ids))
        if self.keep_class_ids is not None:
            dropped |= ~np.isin(class_ids, list(self.keep_class_ids))
        return dropped

    @property
    def active(self) -> bool:
        """Whether these settings can drop or clip anything."""
        return (self.keep_class_ids is not None or bool(self.drop_class_ids) or self.min_score > 0
                or self.min_area > 0 or self.roi is not None)


def polygon_inside(vertices: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """len(ys) x len(xs) bool: which points (xs[j], ys[i]) lie inside the polygon (V x 2, x y;
    even-odd rule). ``xs`` must not decrease. Each edge toggles, row by row, the points left of
    where it crosses that row: one cumulative sum over the grid instead of a test per point."""
    toggles = np.zeros((len(ys), len(xs) + 1), np.int32)
    for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0)):
        if y0 == y1:
            continue
        rows = np.flatnonzero((ys >= min(y0, y1)) & (ys < max(y0, y1)))
        crossing = x0 + (ys[rows] - y0) * (x1 - x0) / (y1 - y0)
        toggles[rows, 0] += 1
        toggles[rows, np.searchsorted(xs, crossing, side="left")] -= 1
    return (np.cumsum(toggles[:, :-1], axis=1) & 1).astype(bool)


def _line_centres(repeat: np.ndarray) -> np.ndarray:
    """The frame coordinate (pixels, centre of the frame lines copying it) of each decided line;
    -1 for a line the frame does not copy."""
    end = np.cumsum(repeat)
    centre = end - repeat / 2
    return np.where(repeat > 0, centre, -1.0)


class SegmentFilter:
    """Applies ``FilterSettings`` to one source's results (``apply``), in place."""

    def __init__(self, settings: FilterSettings):
        self.settings = settings
        self._roi_masks: dict[tuple, tuple[np.ndarray, np.ndarray] | None] = {}  # grid -> inside, outside

    def apply(self, result: FrameResult) -> dict[str, int]:
        """Drop and clip ``result``'s segments (segments, label map, hierarchy levels); returns
        how many segments went for each reason of ``FILTER_REASONS``."""
        s = self.settings
        segments = result.segments
        reason = np.zeros(len(segments), np.int8)  # 0: kept, k: FILTER_REASONS[k - 1]

        def drop(mask: np.ndarray, code: int) -> None:
            reason[mask & (reason == 0)] = code

        drop(s.dropped_classes(segments.class_ids), 1)
        if s.min_score > 0:
            drop(segments.scores < s.min_score, 2)
        stored = result.segment_map
        if stored is None:  # a result without masks: only what the columns say
            if s.min_area > 0:
                drop(segments.areas < s.min_area, 4)
            return self._keep(result, reason, None)
        decided = stored.decided if isinstance(stored, ScaledLabelMap) else stored
        if isinstance(stored, ScaledLabelMap):
            row_repeat = np.bincount(stored.rows, minlength=decided.shape[0])
            col_repeat = np.bincount(stored.cols, minlength=decided.shape[1])
        else:
            row_repeat = np.ones(decided.shape[0], np.int64)
            col_repeat = np.ones(decided.shape[1], np.int64)
        region = self._roi_mask(decided.shape, (result.height, result.width), row_repeat, col_repeat)
        inside = None if region is None else region[0]
        areas = segments.areas
        if inside is not None:
            scaled = isinstance(stored, ScaledLabelMap)
            areas = _areas(decided, inside, row_repeat, col_repeat, scaled, int(segments.ids.max(initial=-1)) + 1)
            areas = areas[segments.ids]
            drop(areas == 0, 3)
        if s.min_area > 0:
            drop(areas < s.min_area, 4)
        return self._keep(result, reason, (decided, region, row_repeat, col_repeat, areas))

    def _keep(self, result: FrameResult, reason: np.ndarray, grid: tuple | None) -> dict[str, int]:
        counts = {name: int(np.count_nonzero(reason == k)) for k, name in enumerate(FILTER_REASONS, 1)}
        kept = reason == 0
        region = None if grid is None else grid[1]
        if kept.all() and region is None:
            return counts
        segments = result.segments[kept]
        result.segments = segments
        if grid is None:
            return counts
        decided, region, row_repeat, col_repeat, areas = grid
        stored = result.segment_map
        if kept.all():
            new = decided.copy()
        else:
            top = int(max(decided.max(initial=-1), result.segments.ids.max(initial=-1), 0)) + 2
            lookup = np.full(top, -1, np.int32)  # value + 1 -> value kept, or -1
            lookup[segments.ids + 1] = segments.ids
            new = lookup[decided + 1]
        if region is not None:
            outside = region[1]
            new[outside] = -1
            clipped = np.flatnonzero(areas[kept] < segments.areas)
            segments.areas = areas[kept]
            segments.boxes, segments.centroids = segments.boxes.copy(), segments.centroids.copy()
            for i in clipped:  # only a segment that lost pixels has a new box and centroid, found within its old box
                segments.boxes[i], segments.centroids[i] = _measured_within(
                    new, int(segments.ids[i]), segments.boxes[i], stored, row_repeat, col_repeat)
        scaled = isinstance(stored, ScaledLabelMap)
        result.segment_map = ScaledLabelMap(new, stored.rows, stored.cols) if scaled else new
        if result.levels:
            cleared = (decided >= 0) & (new < 0)  # pixels of dropped segments, and outside the region
            if region is not None:
                cleared |= outside
            result.levels = _clear_levels(result.levels, stored, cleared)
        return counts

    def _roi_mask(self, shape: tuple[int, int], frame: tuple[int, int], row_repeat: np.ndarray,
                  col_repeat: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Which decided pixels lie inside the region of interest (their frame lines' centres), and
        which outside; None where there is no region of interest or it holds the whole frame."""
        if self.settings.roi is None:
            return None
        key = (shape, frame)
        if key not in self._roi_masks:
            if len(self._roi_masks) >= _CACHED_GRIDS:
                self._roi_masks.clear()
            height, width = frame
            vertices = np.asarray(self.settings.roi, np.float64) * (width, height)
            mask = polygon_inside(vertices, _line_centres(row_repeat), _line_centres(col_repeat))
            whole = mask[row_repeat > 0][:, col_repeat > 0].all()
            self._roi_masks[key] = None if whole else (mask, ~mask)
        return self._roi_masks[key]


def _clear_levels(levels: Sequence[Level], stored: np.ndarray | ScaledLabelMap, cleared: np.ndarray) -> list[Level]:
    """The hierarchy with ``cleared`` (pixels of the decided map ``stored`` holds) set to no
    segment at every level; segments left without pixels go, and so do parents that went."""
    out = []
    for level in levels:
        own = level.segment_map
        if own is None:
            out.append(level)
            continue
        if _same_grid(own, stored):
            decided, mask = (own.decided if isinstance(own, ScaledLabelMap) else own), cleared
        else:  # another grid: at frame size (no shipped model does this)
            decided = level.label_map
            mask = cleared[stored.rows][:, stored.cols] if isinstance(stored, ScaledLabelMap) else cleared
            own = decided
        new = np.where(mask, -1, decided).astype(np.int32)
        present = np.zeros(int(max(new.max(initial=-1), level.ids.max(initial=-1), 0)) + 1, bool)
        present[new[new >= 0]] = True
        keep = present[level.ids]
        segment_map = ScaledLabelMap(new, own.rows, own.cols) if isinstance(own, ScaledLabelMap) else new
        if isinstance(own, ScaledLabelMap):
            row_repeat = np.bincount(own.rows, minlength=new.shape[0])
            col_repeat = np.bincount(own.cols, minlength=new.shape[1])
        else:
            row_repeat, col_repeat = np.ones(new.shape[0], np.int64), np.ones(new.shape[1], np.int64)
        areas = _areas(new, None, row_repeat, col_repeat, isinstance(own, ScaledLabelMap), len(present))
        out.append(Level(ids=level.ids[keep], parents=level.parents[keep], areas=areas[level.ids[keep]],
                         segment_map=segment_map))
    for finer, coarser in zip(out, out[1:]):  # a parent that went: the segment has none left
        finer.parents = np.where(np.isin(finer.parents, coarser.ids), finer.parents, -1).astype(finer.parents.dtype)
    return out


def _areas(decided: np.ndarray, inside: np.ndarray | None, row_repeat: np.ndarray, col_repeat: np.ndarray,
           scaled: bool, count: int) -> np.ndarray:
    """Frame pixels of each id 0..count-1 in ``decided`` (only where ``inside``, when given)."""
    picked = decided if inside is None else decided[inside]
    known = (picked >= 0) & (picked < count)
    weights = None  # a frame-size map: one pixel each
    if scaled:
        weights = row_repeat[:, None] * col_repeat[None, :]
        weights = (weights if inside is None else weights[inside])[known]
    return np.bincount(picked[known], weights=weights, minlength=count).round().astype(np.int64)


def _measured_within(new: np.ndarray, segment_id: int, box: np.ndarray, stored: np.ndarray | ScaledLabelMap,
                     row_repeat: np.ndarray, col_repeat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The frame-pixel box (x0, y0, x1, y1) and centroid (x, y) of ``segment_id``'s pixels in the
    decided map ``new``, searched within its box before clipping (frame pixels) only."""
    width, height = int(col_repeat.sum()), int(row_repeat.sum())
    x0, y0, x1, y1 = max(0, int(box[0])), max(0, int(box[1])), min(width, int(box[2])), min(height, int(box[3]))
    if x1 <= x0 or y1 <= y0:  # a family that gave no box (or one off the frame): the whole frame
        x0, y0, x1, y1 = 0, 0, width, height
    if isinstance(stored, ScaledLabelMap):  # the decided lines the frame's box copies
        r0, r1, c0, c1 = stored.rows[y0], stored.rows[y1 - 1] + 1, stored.cols[x0], stored.cols[x1 - 1] + 1
    else:
        r0, r1, c0, c1 = y0, y1, x0, x1
    held = new[r0:r1, c0:c1] == segment_id
    rows = np.flatnonzero(held.any(axis=1) & (row_repeat[r0:r1] > 0)) + r0
    cols = np.flatnonzero(held.any(axis=0) & (col_repeat[c0:c1] > 0)) + c0
    if not len(rows) or not len(cols):  # its pixels lie outside the box it came with (a family's loose box)
        held = new == segment_id
        rows = np.flatnonzero(held.any(axis=1) & (row_repeat > 0))
        cols = np.flatnonzero(held.any(axis=0) & (col_repeat > 0))
    row_end, col_end = np.cumsum(row_repeat), np.cumsum(col_repeat)
    x0, y0 = col_end[cols[0]] - col_repeat[cols[0]], row_end[rows[0]] - row_repeat[rows[0]]
    lines, columns = slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    _, _, centroid = segment_moments(np.where(new[lines, columns] == segment_id, 0, 1), 1, row_repeat[lines],
                                     col_repeat[columns])
    return np.array([x0, y0, col_end[cols[-1]], row_end[rows[-1]]], np.int32), centroid[0] + (x0, y0)


def _same_grid(a: np.ndarray | ScaledLabelMap, b: np.ndarray | ScaledLabelMap) -> bool:
    if isinstance(a, ScaledLabelMap) and isinstance(b, ScaledLabelMap):
        return (a.decided.shape == b.decided.shape and np.array_equal(a.rows, b.rows)
                and np.array_equal(a.cols, b.cols))
    return not isinstance(a, ScaledLabelMap) and not isinstance(b, ScaledLabelMap) and a.shape == b.shape
