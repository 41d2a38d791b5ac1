"""Segment tracking across the frames of one source: stable identities from per-frame segments.

``SegmentTracker.update`` takes one frame's segments (label map, classes, thing/stuff flags and
the model's query embeddings) and returns each segment's track id and age. Things are matched to
the live tracks by Hungarian assignment (``scipy.optimize.linear_sum_assignment``) on a score
that combines

- mask overlap, computed on the label map downscaled so its long side is at most ``mask_side``
  pixels, at the track's predicted position (constant velocity), and only inside the track's
  box: one ``bincount`` per track over its own box, never a mask per pair;
- the cosine similarity of the query embeddings (MinVIS-style matching: the query tokens of an
  image-trained EoMT already tell objects apart, no video training needed);
- class agreement.

Gates refuse implausible pairs before the assignment: too little overlap without a similar
embedding close by (a *lost* thing is found anywhere by a strong match, ``reid_similarity``:
it may have turned while hidden), or another class without strong overlap. "Close by" for a thing
unseen a while is anywhere from where it was last seen to where its velocity would have carried
it (it may have slowed or stopped while hidden). Last, a lost thing that nothing claimed takes
the nearest unclaimed thing of its class within ``max_shift`` box diagonals of that stretch,
whatever its overlap and looks (SORT-style recovery by position), unless it left the frame
(``_gone_out``). A new thing is *tentative* until it
has been seen ``min_hits`` times and gets its id only when *confirmed*; a confirmed track that is
not seen is *lost* and keeps its id for up to ``max_lost`` frames (an occlusion), then *ends*;
with ``max_lost_s`` set, for up to that many seconds of stream time between two sightings instead
(frames given a time; a frame without one falls back to ``max_lost``).
While a thing is partly hidden (behind another thing, something unlabelled, or the frame border)
its remembered shape and size are kept and moved with it, so it can be found again when it
reappears: its motion is read from the box edges that are its own (not at the border, not against
another thing, not lagging where the prediction says the edge should be), never from the centre of
a shrinking visible part, which would give a false speed. Stuff gets one id per class for the life of the tracker. Ids
start at 1 and are never reused. State is bounded: at most ``max_tracks`` tracks, each holding
one mask crop at the reduced resolution, one embedding and a few numbers.

Pure numpy and scipy; no I/O. Frame numbers are the source's frame indices, so frames a live
source dropped count as frames a track was not seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from segstream.models.results import ScaledLabelMap, map_every

NO_TRACK = -1
TENTATIVE, CONFIRMED, LOST = "tentative", "confirmed", "lost"
_REFUSED = 1e6  # cost of a pair a gate refused; such pairs are dropped after the assignment
_WHOLE = 0.9  # a detection with less of a thing's remembered area shows it partly hidden
_BORDER, _CUT, _CONTACT, _OPEN = 0, 1, 2, 3  # how far a box edge is the thing's own (see _edges)
_JUMP = 0.25  # a move of more than this share of a thing's size (+ 2 px) in a frame is not believed


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    """How the tracker matches and how long tracks live (frames are source frame indices).

    The pipeline's ``tracking:`` config section holds the same keys with the same defaults.
    """

    min_hits: int = 2
    max_lost: int = 30
    max_lost_s: float | None = None  # seconds of stream time; replaces max_lost where frames have a time
    iou_weight: float = 0.5
    embedding_weight: float = 0.4
    class_weight: float = 0.1
    min_overlap: float = 0.1
    min_similarity: float = 0.6
    max_shift: float = 1.0
    reid_similarity: float = 0.9
    class_change_overlap: float = 0.3
    embedding_momentum: float = 0.7
    partial_area: float = 0.5
    mask_side: int = 480
    max_tracks: int = 1000

    def __post_init__(self) -> None:
        if self.min_hits < 1 or self.max_lost < 0 or self.max_tracks < 1 or self.mask_side < 8:
            raise ValueError("min_hits and max_tracks must be >= 1, max_lost >= 0, mask_side >= 8")
        if self.max_lost_s is not None and not self.max_lost_s > 0:
            raise ValueError("max_lost_s must be > 0 seconds (or None: max_lost frames)")
        if min(self.iou_weight, self.embedding_weight, self.class_weight) < 0 or not (
            self.iou_weight + self.class_weight > 0
        ):
            raise ValueError("tracking weights must be >= 0, and iou_weight + class_weight > 0")


@dataclass(slots=True)
class TrackEvent:
    """A track was confirmed (``started``) or removed (``ended``); frames are source indices."""

    kind: str  # "started" or "ended"
    track_id: int
    class_id: int
    isthing: bool
    first_frame: int
    last_frame: int
    frames_seen: int
    reason: str = ""  # why it ended: lost, end (of the source), capacity, frame_size
    first: Sighting | None = None  # the segment that began it, at first_frame


@dataclass(frozen=True, slots=True)
class Sighting:
    """Which segment of a frame a track began as: its id in that frame's label map, its box (x0,
    y0, x1, y1, frame pixels, None where the caller gave no boxes) and centroid (x, y; None where
    not given or unknown). A tentative track has no id yet: this names its segment at first sight."""

    segment_id: int
    box: tuple[int, int, int, int] | None
    centroid: tuple[float, float] | None


@dataclass(slots=True)
class TrackUpdate:
    """What ``update`` decided for one frame: per segment row, its track id (``NO_TRACK`` while
    tentative) and how many frames its track has been seen; the tracks that started or ended; and
    how many segments got no track because the tracker was full (``max_tracks``)."""

    track_ids: np.ndarray
    track_ages: np.ndarray
    events: list[TrackEvent] = field(default_factory=list)
    capacity_refused: int = 0  # segments of this frame left without a track: max_tracks were kept


@dataclass(slots=True, eq=False)
class _Track:
    key: int  # internal, unique; the public id is given on confirmation
    track_id: int
    isthing: bool
    state: str
    first_frame: int
    last_frame: int
    hits: int
    votes: dict[int, int]  # class id -> frames seen as that class (bounded by the label set)
    last_time: float | None = None  # stream time (seconds) of the last sighting, when frames have one
    first: Sighting | None = None  # its segment at first_frame
    # Shape and motion at the reduced resolution (things only):
    crop: np.ndarray | None = None  # bool mask of the remembered shape
    x0: float = 0.0  # where the crop's top-left pixel was at `placed_frame`
    y0: float = 0.0
    placed_frame: int = 0
    vx: float = 0.0  # pixels per frame
    vy: float = 0.0
    full_area: float = 0.0  # running area of the thing when fully visible
    embedding: np.ndarray | None = None  # unit vector, or None when the model gives none

    @property
    def class_id(self) -> int:
        return max(self.votes.items(), key=lambda kv: (kv[1], -kv[0]))[0]

    def predicted_origin(self, frame: int) -> tuple[int, int]:
        gap = frame - self.placed_frame
        return round(self.x0 + self.vx * gap), round(self.y0 + self.vy * gap)

    def event(self, kind: str, reason: str = "") -> TrackEvent:
        return TrackEvent(kind, self.track_id, self.class_id, self.isthing, self.first_frame, self.last_frame,
                          self.hits, reason, self.first)


class SegmentTracker:
    """Stable ids for the segments of one source's frames, given in frame order (see module doc)."""

    def __init__(self, settings: TrackerSettings = TrackerSettings()):
        self.settings = settings
        self.tracks: list[_Track] = []  # things: tentative, confirmed and lost
        self.stuff: dict[int, _Track] = {}  # class id -> its one stuff track
        self.next_id = 1
        self._next_key = 0
        self._shape: tuple[int, int] | None = None
        self._last_frame: int | None = None
        self._time: float | None = None  # the current frame's stream time (seconds), when given

    # --- the one entry point ---------------------------------------------------------------

    def update(
        self,
        frame: int,
        label_map: np.ndarray | ScaledLabelMap,
        segment_ids: np.ndarray,
        class_ids: np.ndarray,
        isthing: np.ndarray,
        embeddings: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        time_s: float | None = None,
        centroids: np.ndarray | None = None,
    ) -> TrackUpdate:
        """Track the segments of frame ``frame``: row i is the segment whose pixels hold
        ``segment_ids[i]`` in ``label_map`` (H x W int, -1 for none; a ``ScaledLabelMap`` is
        sampled without building the frame-size map). ``embeddings`` is S x D
        (D may be 0); ``boxes`` the segments' (x0, y0, x1, y1) in pixels, x1/y1 exclusive (measured
        here when not given). ``time_s`` is the frame's stream time in seconds (its pts), which
        ``max_lost_s`` measures; None where unknown. ``centroids`` (S x 2, x y in pixels, NaN where
        unknown) and ``boxes`` only describe, in ``started`` events, which segment a track began as
        (``TrackEvent.first``). Frames must come in increasing order."""
        count = len(segment_ids)
        track_ids = np.full(count, NO_TRACK, np.int64)
        ages = np.zeros(count, np.int32)
        events: list[TrackEvent] = []
        if self._last_frame is not None and frame <= self._last_frame:
            raise ValueError(f"frame {frame} comes after frame {self._last_frame}; frames must increase")
        self._last_frame = frame
        self._time = time_s
        if self._shape is not None and self._shape != label_map.shape:
            # Remembered shapes mean nothing in a frame of another size (a camera reconnected).
            events += [t.event("ended", "frame_size") for t in self.tracks if t.track_id != NO_TRACK]
            self.tracks = []
        self._shape = label_map.shape

        isthing = np.asarray(isthing, bool)
        class_ids = np.asarray(class_ids, np.int64)

        def sighting(row: int) -> Sighting:
            box = None if boxes is None else tuple(int(v) for v in np.asarray(boxes).reshape(-1, 4)[row])
            point = None if centroids is None else np.asarray(centroids, np.float64).reshape(-1, 2)[row]
            known = point is not None and not np.isnan(point).any()
            return Sighting(int(segment_ids[row]), box, (float(point[0]), float(point[1])) if known else None)

        for row in np.flatnonzero(~isthing):
            track = self._stuff_track(int(class_ids[row]), frame, events, lambda row=row: sighting(row))
            track_ids[row], ages[row] = track.track_id, track.hits

        things = np.flatnonzero(isthing)
        if time_s is not None and self.settings.max_lost_s is not None:
            # Before matching: a thing unseen longer than that (a pause of the stream, too) must
            # not take back its id now.
            expired = [t for t in self.tracks if self._expired(t, frame)]
            events += [t.event("ended", "lost") for t in expired if t.track_id != NO_TRACK]
            gone = {t.key for t in expired}
            self.tracks = [t for t in self.tracks if t.key not in gone]
        refused = 0
        if len(things) or self.tracks:
            refused = self._update_things(frame, label_map, np.asarray(segment_ids)[things], class_ids[things],
                                None if embeddings is None else np.asarray(embeddings, np.float32)[things],
                                None if boxes is None else np.asarray(boxes, np.int64).reshape(-1, 4)[things],
                                things, track_ids, ages, events, sighting)
        return TrackUpdate(track_ids, ages, events, refused)

    def finish(self, reason: str = "end") -> list[TrackEvent]:
        """End every track (the source ended, or ``reason="failed"``: it failed); returns their
        ``ended`` events."""
        ended = [t.event("ended", reason) for t in self.tracks if t.track_id != NO_TRACK]
        ended += [t.event("ended", reason) for t in self.stuff.values()]
        self.tracks = []
        self.stuff = {}
        return ended

    def lose_things(self) -> list[TrackEvent]:
        """End every thing's track as ``lost`` (its source was away longer than ``max_lost``
        frames' time, or ``max_lost_s``); stuff keeps its one id per class. Returns the ``ended`` events."""
        ended = [t.event("ended", "lost") for t in self.tracks if t.track_id != NO_TRACK]
        self.tracks = []
        return ended

    def end_classes(self, dropped, reason: str = "filtered") -> list[TrackEvent]:
        """End the tracks of the things whose class ``dropped`` (class ids -> bools, an array of
        each) says is dropped from here on (a source's filters changed: they will not be seen
        again), with ``reason``; the others go on. Stuff keeps its one id per class. Returns the
        ``ended`` events."""
        if not self.tracks:
            return []
        gone = dropped(np.array([t.class_id for t in self.tracks], np.int64))
        ended = [t.event("ended", reason) for t, out in zip(self.tracks, gone) if out and t.track_id != NO_TRACK]
        self.tracks = [t for t, out in zip(self.tracks, gone) if not out]
        return ended

    def _expired(self, track: _Track, frame: int) -> bool:
        """Unseen too long: by stream time where ``max_lost_s`` is set and both frames have one,
        else by ``max_lost`` frames."""
        limit_s = self.settings.max_lost_s
        if limit_s is not None and self._time is not None and track.last_time is not None:
            return self._time - track.last_time > limit_s
        return frame - track.last_frame > self.settings.max_lost

    # --- stuff -----------------------------------------------------------------------------

    def _stuff_track(self, class_id: int, frame: int, events: list[TrackEvent], sighting) -> _Track:
        track = self.stuff.get(class_id)
        if track is None:
            track = _Track(self._key(), self._new_id(), False, CONFIRMED, frame, frame, 1, {class_id: 1},
                           first=sighting())
            self.stuff[class_id] = track
            events.append(track.event("started"))
            return track
        if track.last_frame != frame:
            track.hits += 1
            track.votes[class_id] += 1
            track.last_frame = frame
        return track

    # --- things ----------------------------------------------------------------------------

    def _update_things(self, frame, label_map, seg_ids, classes, embeddings, full_boxes, rows, track_ids, ages,
                       events, sighting) -> int:
        """Match, start, keep and end the things' tracks; returns how many of this frame's things
        were left without a track because ``max_tracks`` were kept."""
        s = self.settings
        stride = max(1, math.ceil(max(label_map.shape) / s.mask_side))
        small = map_every(label_map, stride)
        count = len(seg_ids)
        # One pass over the small map: each pixel's detection index (count = none of them).
        lookup_size = int(max(seg_ids.max(initial=-1), small.max(initial=-1))) + 2
        lookup = np.full(lookup_size, count, np.int32)
        lookup[seg_ids.astype(np.int64) + 1] = np.arange(count, dtype=np.int32)
        codes = lookup[np.clip(small, -1, lookup_size - 2) + 1]
        areas = np.bincount(codes.ravel(), minlength=count + 1)[:count].astype(np.float64)
        boxes = None
        if full_boxes is not None:
            # Pixel j of the small map is pixel j * stride of the frame; tightened inside that box.
            boxes = _tightened(codes, np.clip(-(-full_boxes // stride), 0, [codes.shape[1], codes.shape[0]] * 2))
            if np.any((areas > 0) & ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))):
                boxes = None  # boxes that miss their segments (left at zero): measure them here
        if boxes is None:
            boxes = _boxes(codes, count)
        present = areas > 0
        if embeddings is not None and embeddings.ndim == 2 and embeddings.shape[1] > 0:
            norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
            unit = embeddings / np.maximum(norms, 1e-12)
        else:
            unit = None

        matched_det: dict[int, _Track] = {}
        confirmed = [t for t in self.tracks if t.state != TENTATIVE]
        tentative = [t for t in self.tracks if t.state == TENTATIVE]
        free = [d for d in range(count) if present[d]]
        for group in (confirmed, tentative):
            if not group or not free:
                continue
            pairs = self._assign(group, free, frame, codes, areas, boxes, classes, unit)
            for track, det in pairs:
                matched_det[det] = track
            free = [d for d in free if d not in matched_det]
        # Last, a lost thing that nothing else claimed may take a thing of its class that no track
        # claimed either, wherever it could be now: it may have slowed or stopped while hidden.
        taken = {t.key for t in matched_det.values()}
        lost = [t for t in confirmed if t.state == LOST and t.key not in taken and not _gone_out(t, frame, codes.shape)]
        if lost and free:
            for track, det in self._recover(lost, free, frame, boxes, classes, unit):
                matched_det[det] = track
            free = [d for d in free if d not in matched_det]

        seen: set[int] = set()
        for det, track in matched_det.items():
            seen.add(track.key)
            self._observe(track, frame, det, codes, areas, boxes, classes, unit)
            if track.state == TENTATIVE and track.hits >= s.min_hits:
                track.state = CONFIRMED
                track.track_id = self._new_id()
                events.append(track.event("started"))
            elif track.state == LOST:
                track.state = CONFIRMED
        for det in free:
            track = _Track(self._key(), NO_TRACK, True, TENTATIVE, frame, frame, 0, {}, first=sighting(rows[det]))
            self._observe(track, frame, det, codes, areas, boxes, classes, unit)
            if s.min_hits <= 1:
                track.state = CONFIRMED
                track.track_id = self._new_id()
                events.append(track.event("started"))
            self.tracks.append(track)
            matched_det[det] = track
            seen.add(track.key)

        alive = []
        for track in self.tracks:
            if track.key in seen:
                alive.append(track)
            elif track.state == TENTATIVE:
                continue  # a tentative thing must be seen in consecutive frames; it never had an id
            elif self._expired(track, frame):
                events.append(track.event("ended", "lost"))
            else:
                track.state = LOST
                alive.append(track)
        refused = 0
        if len(alive) > s.max_tracks:
            # Drop the tracks unseen longest first, then new things (tentative ones have no id to
            # lose): a thing in view keeps its id rather than give it to a newcomer.
            alive.sort(key=lambda t: (t.key in seen, t.last_frame, t.state != TENTATIVE))
            for track in alive[: len(alive) - s.max_tracks]:
                refused += track.key in seen
                if track.track_id != NO_TRACK:
                    events.append(track.event("ended", "capacity"))
            alive = alive[len(alive) - s.max_tracks:]
            alive.sort(key=lambda t: t.key)
        self.tracks = alive

        kept = {t.key for t in alive}
        for det, track in matched_det.items():
            if track.key in kept and track.state == CONFIRMED:
                track_ids[rows[det]], ages[rows[det]] = track.track_id, track.hits
        return refused

    def _assign(self, group, dets, frame, codes, areas, boxes, classes, unit) -> list[tuple[_Track, int]]:
        s = self.settings
        det_index = np.asarray(dets)
        overlap, iou = self._overlaps(group, det_index, frame, codes, areas, boxes)
        same = np.array([t.class_id for t in group])[:, None] == classes[det_index][None, :]
        allowed = overlap >= s.min_overlap
        weight = np.full(overlap.shape, s.iou_weight + s.class_weight)
        score = s.iou_weight * overlap + s.class_weight * same
        if unit is not None and s.embedding_weight > 0:
            has = np.array([t.embedding is not None and t.embedding.shape[0] == unit.shape[1] for t in group])
            if has.any():
                memory = np.stack([t.embedding if h else np.zeros(unit.shape[1], np.float32)
                                   for t, h in zip(group, has)])
                # einsum, not BLAS: for matrices this small, waking BLAS threads costs 100x the product.
                cosine = np.einsum("td,sd->ts", memory, unit[det_index])
                cosine[~has] = 0.0
                score += s.embedding_weight * np.clip(cosine, 0, 1)
                weight[has] += s.embedding_weight
                # A similar embedding close to where the track should be may stand in for overlap.
                near = self._near(group, det_index, frame, boxes)
                allowed |= (cosine >= s.min_similarity) & near & has[:, None]
                # A lost thing may come back anywhere (it moved while hidden) if it looks the same.
                lost = np.array([t.state == LOST for t in group])
                allowed |= (cosine >= s.reid_similarity) & (lost & has)[:, None]
        allowed &= same | (iou >= s.class_change_overlap)
        cost = np.where(allowed, 1.0 - score / weight, _REFUSED)
        rows, cols = linear_sum_assignment(cost)
        return [(group[r], dets[c]) for r, c in zip(rows, cols) if allowed[r, c]]

    def _overlaps(self, group, dets, frame, codes, areas, boxes) -> tuple[np.ndarray, np.ndarray]:
        """Per (track, detection): the matching overlap and the plain IoU, both against the
        track's remembered shape at its predicted position.

        The matching overlap is the IoU, or for a detection much smaller than the thing (partly
        hidden, or reappearing) half the share of the detection that lies inside that shape.
        """
        height, width = codes.shape
        count = len(areas)
        overlap = np.zeros((len(group), len(dets)))
        iou = np.zeros((len(group), len(dets)))
        det_boxes = boxes[dets]
        for i, track in enumerate(group):
            x0, y0 = track.predicted_origin(frame)
            ch, cw = track.crop.shape
            x1, y1 = x0 + cw, y0 + ch
            # Boxes first: only detections whose box meets the predicted box are measured.
            meets = (det_boxes[:, 0] < x1) & (det_boxes[:, 2] > x0) & (det_boxes[:, 1] < y1) & (det_boxes[:, 3] > y0)
            if not meets.any():
                continue
            cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
            if cx0 >= cx1 or cy0 >= cy1:
                continue
            shape = track.crop[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            inside = codes[cy0:cy1, cx0:cx1][shape]
            track_area = float(inside.size)
            if track_area == 0:
                continue
            inter = np.bincount(inside, minlength=count + 1)[dets].astype(np.float64)
            det_area = areas[dets]
            union = track_area + det_area - inter
            row_iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
            cover = inter / np.maximum(det_area, 1)
            small = det_area < self.settings.partial_area * max(track.full_area, track_area)
            overlap[i] = np.where(small, np.maximum(row_iou, 0.5 * cover), row_iou)
            iou[i] = row_iou
        return overlap, iou

    def _near(self, group, dets, frame, boxes) -> np.ndarray:
        """Per (track, detection): the detection's centre lies within ``max_shift`` box diagonals
        of where the track may be (see ``_reach``)."""
        return self._reach(group, dets, frame, boxes) <= 1.0

    def _reach(self, group, dets, frame, boxes) -> np.ndarray:
        """Per (track, detection): how far the detection's centre lies from where the track may be
        now, in ``max_shift`` box diagonals. That is anywhere between where it was last seen and
        where its last velocity carries it: a thing unseen for a while may have slowed, stopped
        or waited (a car behind a bus at a red light), so its velocity alone is not trusted. The
        stretch grows with the time unseen at the speed it last had, until the track ends
        (``max_lost``); across it, the reach stays ``max_shift`` diagonals."""
        centres = np.stack([(boxes[dets, 0] + boxes[dets, 2]) / 2, (boxes[dets, 1] + boxes[dets, 3]) / 2], axis=1)
        reach = np.zeros((len(group), len(dets)))
        for i, track in enumerate(group):
            ch, cw = track.crop.shape
            x0, y0 = track.predicted_origin(frame)
            ahead = np.array([x0 + cw / 2, y0 + ch / 2])
            last = np.array([track.x0 + cw / 2, track.y0 + ch / 2])
            reach[i] = _to_segment(centres, last, ahead) / (self.settings.max_shift * math.hypot(cw, ch))
        return reach

    def _recover(self, group, dets, frame, boxes, classes, unit) -> list[tuple[_Track, int]]:
        """Lost tracks against detections no track claimed: a thing of the same class within
        ``max_shift`` diagonals of where the track may be (``_reach``), the nearest first. Overlap
        is not asked, and of looks only that they are not another thing's (``RECOVER_SIMILARITY``):
        a thing that waited hidden comes back turned, and its query embedding with it (the shipped
        model's fell from 0.96 to 0.5 for one triangle)."""
        det_index = np.asarray(dets)
        reach = self._reach(group, det_index, frame, boxes)
        same = np.array([t.class_id for t in group])[:, None] == classes[det_index][None, :]
        allowed = (reach <= 1.0) & same
        if unit is not None:
            for i, track in enumerate(group):
                if track.embedding is not None and track.embedding.shape[0] == unit.shape[1]:
                    allowed[i] &= unit[det_index] @ track.embedding >= RECOVER_SIMILARITY
        if not allowed.any():
            return []
        rows, cols = linear_sum_assignment(np.where(allowed, reach, _REFUSED))
        return [(group[r], dets[c]) for r, c in zip(rows, cols) if allowed[r, c]]

    def _observe(self, track: _Track, frame, det, codes, areas, boxes, classes, unit) -> None:
        """Fold detection ``det`` of ``frame`` into ``track``."""
        s = self.settings
        x0, y0, x1, y1 = (int(v) for v in boxes[det])
        area = float(areas[det])
        class_id = int(classes[det])
        track.votes[class_id] = track.votes.get(class_id, 0) + 1
        track.hits += 1
        track.last_frame = frame
        track.last_time = self._time
        if unit is not None:
            vector = unit[det]
            if track.embedding is None or track.embedding.shape != vector.shape:
                track.embedding = vector.copy()
            else:
                mixed = s.embedding_momentum * track.embedding + (1 - s.embedding_momentum) * vector
                track.embedding = mixed / max(float(np.linalg.norm(mixed)), 1e-12)
        crop = codes[y0:y1, x0:x1] == det
        if track.crop is None:
            track.crop, track.x0, track.y0, track.placed_frame, track.full_area = crop, x0, y0, frame, area
            return
        gap = max(1, frame - track.placed_frame)
        ch, cw = track.crop.shape
        # Where the remembered shape is now, from the edges of the box that nothing cuts: an edge
        # at the frame border or against another thing may be where that covers this one, so it
        # says nothing of the motion (a shrinking visible part's centre would give a false speed).
        px, py = track.x0 + track.vx * gap, track.y0 + track.vy * gap
        edges = _edges(codes, det, len(areas), crop, x0, y0, x1, y1)
        if track.hits > 3:  # with a trusted velocity: the edge that stayed behind was cut by something unseen
            edges[0], edges[2] = _uncut(x0, x1, cw, px, edges[0], edges[2])
            edges[1], edges[3] = _uncut(y0, y1, ch, py, edges[1], edges[3])
        # A thing cut at the border or behind something is whole only if no smaller than remembered.
        whole = area >= (_WHOLE if min(edges) >= _CONTACT else 1.0) * track.full_area
        # What is seen reaches well past the remembered extent: the thing turned or grew while
        # partly hidden, and the remembered shape no longer says where its parts are.
        whole |= _outgrown(x1 - x0, cw) or _outgrown(y1 - y0, ch)
        # Unseen a while: it may have slowed or stopped, anywhere from where it was to the prediction.
        # Over a few frames its velocity still holds (trusting the stretch after a 2-frame miss kept a
        # wrong match longer at a frame border: docs/BENCHMARKS.md, "A thing that stopped while hidden").
        since = (track.x0, track.y0) if gap > _VELOCITY_HOLDS else (None, None)
        nx = _anchor(x0, x1, cw, px, edges[0], edges[2], since[0])
        ny = _anchor(y0, y1, ch, py, edges[1], edges[3], since[1])
        # Cut by a side of the frame, a rounded thing shows a chord: its other two ends are not
        # its own either, so the prediction stands, only kept where the visible part fits.
        if _BORDER in (edges[0], edges[2]) and y1 - y0 < ch:
            ny = min(max(py, y1 - ch), y0)
        if _BORDER in (edges[1], edges[3]) and x1 - x0 < cw:
            nx = min(max(px, x1 - cw), x0)
        vx, vy = (nx - track.x0) / gap, (ny - track.y0) / gap
        first = track.hits <= 2
        # Smoothed, so one bad frame does not fling the prediction.
        track.vx = vx if first else 0.5 * track.vx + 0.5 * vx
        track.vy = vy if first else 0.5 * track.vy + 0.5 * vy
        track.placed_frame = frame
        # Wherever it is put, the remembered extent holds the part that was seen. Where no edge
        # placed it (both at the border, or every start implausibly far) the prediction stands,
        # and the velocity measures itself (nx - x0 = vx * gap): unchecked, the shape would be
        # carried off at that speed, frame after frame, from a thing in plain view.
        nx, ny = _holding(nx, x0, x1, cw), _holding(ny, y0, y1, ch)
        if not whole:
            # Partly hidden (or partly outside the frame): the remembered shape and size stay,
            # moved to where the visible part says the thing is; what is seen replaces what was
            # remembered there (a turning thing leaving the frame shows its current outline).
            track.x0, track.y0 = nx, ny
            left, top = x0 - round(nx), y0 - round(ny)
            sx0, sy0, sx1, sy1 = max(left, 0), max(top, 0), min(left + crop.shape[1], cw), min(top + crop.shape[0], ch)
            if sx0 < sx1 and sy0 < sy1:
                track.crop = track.crop.copy()
                track.crop[sy0:sy1, sx0:sx1] = crop[sy0 - top:sy1 - top, sx0 - left:sx1 - left]
            track.full_area *= 0.995  # forget, slowly, a size the thing may have lost for good
            return
        track.crop, track.x0, track.y0 = crop, x0, y0
        track.full_area = area if area > track.full_area else 0.8 * track.full_area + 0.2 * area

    # --- ids ---------------------------------------------------------------------------------

    def _new_id(self) -> int:
        track_id = self.next_id
        self.next_id += 1
        return track_id

    def _key(self) -> int:
        self._next_key += 1
        return self._next_key


def _gone_out(track: _Track, frame: int, shape: tuple[int, int]) -> bool:
    """Whether a lost thing left the frame: last seen at its border, its motion carries it wholly
    out by ``frame``. Such a thing is not found again by position (a newcomer entering nearby took
    its id: found probing a robot's tracks), only by its looks (``reid_similarity``). One still
    partly inside by its motion is (a thing leaving, missed in a frame: ``evaluate --tracking``'s
    scene 12 gave one three new ids with "less than half inside")."""
    height, width = shape
    ch, cw = track.crop.shape
    at_border = track.x0 <= 0 or track.y0 <= 0 or track.x0 + cw >= width or track.y0 + ch >= height
    if not at_border:
        return False
    x0, y0 = track.predicted_origin(frame)
    return min(x0 + cw, width) <= max(x0, 0) or min(y0 + ch, height) <= max(y0, 0)


def _boxes(codes: np.ndarray, count: int) -> np.ndarray:
    """(x0, y0, x1, y1) of each detection index 0..count-1 in ``codes`` (x1, y1 exclusive), from
    one bincount per axis of which indices each line holds."""
    boxes = np.zeros((count, 4), np.int64)
    if count == 0:
        return boxes
    for axis, (low, high) in ((0, (1, 3)), (1, (0, 2))):
        lines = codes if axis == 0 else codes.T
        n = lines.shape[0]
        offsets = (np.arange(n, dtype=np.int64) * (count + 1))[:, None]
        present = np.bincount((lines + offsets).ravel(), minlength=n * (count + 1)).reshape(n, count + 1)[:, :count] > 0
        has = present.any(0)
        boxes[has, low] = present[:, has].argmax(0)
        boxes[has, high] = n - present[::-1, has].argmax(0)
    return boxes


def _tightened(codes: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The tight box of each detection index inside a box that holds it (empty where it is not)."""
    tight = np.zeros_like(boxes)
    for d, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        inside = codes[y0:y1, x0:x1] == d
        rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
        if rows.size:
            tight[d] = (x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1)
    return tight


def _edges(codes: np.ndarray, det: int, none: int, crop: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> list[int]:
    """How far the left, top, right and bottom edges of detection ``det``'s box can be trusted to
    be the thing's own: ``_BORDER`` at the frame border, ``_CONTACT`` against another thing
    (which may be in front: half or more of the mask's pixels on that edge lie within two pixels
    of another detection), else ``_OPEN``. ``codes`` holds each pixel's detection index, ``none``
    where there is none."""
    height, width = codes.shape
    sides = (
        (x0 > 0, crop[:, 0], codes[y0:y1, max(x0 - 2, 0):x0]),
        (y0 > 0, crop[0, :], codes[max(y0 - 2, 0):y0, x0:x1].T),
        (x1 < width, crop[:, -1], codes[y0:y1, x1:x1 + 2]),
        (y1 < height, crop[-1, :], codes[y1:y1 + 2, x0:x1].T),
    )
    result = []
    for inside, edge, strip in sides:
        if not inside:
            result.append(_BORDER)
            continue
        other = ((strip != det) & (strip < none)).any(1)[edge]
        result.append(_CONTACT if other.size and other.mean() >= 0.5 else _OPEN)
    return result


# Frames unseen over which a thing's last velocity still says where it is (``_observe``).
_VELOCITY_HOLDS = 3
# The least cosine similarity of query embeddings at which a lost thing may take a thing of its
# class by position alone (``_recover``): a turned thing came back at 0.5, another star of the same
# model's, which took a lost star's id on its way, was at 0.35 (tracker/oracle IDF1 0.895 with no
# floor, docs/BENCHMARKS.md).
RECOVER_SIMILARITY = 0.42


def _to_segment(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of each of ``points`` (N x 2) from the segment from ``a`` to ``b``."""
    along = b - a
    length = float(along @ along)
    t = np.clip((points - a) @ along / length, 0.0, 1.0) if length > 0 else np.zeros(len(points))
    return np.hypot(*(points - a - t[:, None] * along).T)


def _uncut(low: int, high: int, size: int, predicted: float, low_edge: int, high_edge: int) -> tuple[int, int]:
    """The two edges along one axis, one of them marked ``_CUT`` where something (maybe unseen:
    stuff, unlabelled pixels) cuts it: the extent shrank, and one edge is where the prediction put
    it but the other lags."""
    if min(low_edge, high_edge) >= _CONTACT and high - low < size:
        low_off, high_off = abs(low - predicted), abs(high - predicted - size)
        if low_off <= 1 and high_off >= low_off + 1:
            return low_edge, _CUT
        if high_off <= 1 and low_off >= high_off + 1:
            return _CUT, high_edge
    return low_edge, high_edge


def _holding(start: float, low: int, high: int, size: int) -> float:
    """``start`` moved the least so that ``size`` pixels from it hold ``low``..``high`` (as is
    where they cannot: a seen extent larger than the remembered one)."""
    return min(max(start, high - size), low) if high - low <= size else start


def _outgrown(seen: int, remembered: int) -> bool:
    """An extent seen this much beyond the remembered one is no mask noise or stray pixel."""
    return seen > remembered + 2 + _JUMP * remembered


def _anchor(low: int, high: int, size: int, predicted: float, low_edge: int, high_edge: int,
            since: float | None = None) -> float:
    """Where a remembered extent of ``size`` pixels starts along one axis, given the observed box
    edges ``low``..``high``: of the starts the most trusted edges give (see ``_edges``; both
    edges: their middle too), the one nearest the prediction; the prediction itself where both
    edges are at the border or every start is implausibly far from it (a stray blob of pixels
    stretched the box). With ``since`` (where it started when last seen, frames ago) the
    prediction is anywhere from there to ``predicted`` (ties go to the start nearest ``predicted``),
    and of a thing seen much shorter than remembered only its front, the end it moved towards,
    is trusted: the rest of it may still be behind what hid it."""
    first, last = sorted((predicted, predicted if since is None else since))

    def off(c: float) -> float:
        return max(first - c, c - last, 0.0)

    best = max(low_edge, high_edge)
    candidates = []
    if best >= _CONTACT:
        if low_edge == best:
            candidates.append(float(low))
        if high_edge == best:
            candidates.append(float(high - size))
        if low_edge == high_edge:
            candidates.append((low + high - size) / 2)
    if not candidates:
        return predicted
    if since is not None and since != predicted and _outgrown(size, high - low):
        # Coming back into view, much of it still hidden: its front shows first, its back is cut.
        front, front_edge = (float(high - size), high_edge) if predicted > since else (float(low), low_edge)
        if front_edge == best:
            candidates = [front]
    start = min(candidates, key=lambda c: (off(c), abs(c - predicted)))
    return start if off(start) <= 2 + _JUMP * size else min(max((low + high - size) / 2, first), last)
