"""Tracks of masks in the MOTS text format (KITTI MOTS, MOTSChallenge; what TrackEval's MOTS
loaders read): one object's mask per line, ``time_frame object_id class_id height width rle``,
the RLE COCO's compressed string (pycocotools encodes and decodes it).

Frame 0 is a video's first decoded frame (KITTI MOTS numbers so; MOTSChallenge's files count
from 1: ``first_frame=1``). Class 10 marks an ignore region (both datasets'): no object to track,
and a prediction mostly on it is not counted against the tracker. Masks of one frame must not
overlap (the format's rule, which TrackEval's loaders enforce too).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask

from segstream.connectors.errors import ConfigError
from segstream.models.processing import frame_label_map
from segstream.models.results import NO_TRACK, FrameResult, Segments

IGNORE_CLASS = 10


@dataclass(frozen=True)
class MotsLine:
    """One object's mask in one frame, as the file gives it (the RLE still encoded)."""

    track_id: int
    class_id: int
    height: int
    width: int
    rle: str
    line: int


def read_mots(path: str | Path, first_frame: int = 0) -> dict[int, list[MotsLine]]:
    """The file's lines by frame index (0: the first decoded frame). A malformed line, an object
    twice in a frame or frames of different sizes is a ConfigError naming the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the MOTS ground truth {path}: {error}") from None
    frames: dict[int, list[MotsLine]] = {}
    size = None
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        fields = raw.split()
        where = f"{path}, line {number}"
        if len(fields) != 6:
            raise ConfigError(f"{where}: {len(fields)} fields where MOTS has 6 (time_frame object_id class_id "
                              "height width rle)")
        try:
            frame, track_id, class_id, height, width = (int(v) for v in fields[:5])
        except ValueError:
            raise ConfigError(f"{where}: time_frame, object_id, class_id, height and width must be whole numbers, "
                              f"got {' '.join(fields[:5])}") from None
        if frame < first_frame:
            raise ConfigError(f"{where}: frame {frame} comes before the first ({first_frame}); MOTSChallenge's files "
                              "count frames from 1, KITTI MOTS's from 0 — say which with --truth-first-frame")
        if height <= 0 or width <= 0:
            raise ConfigError(f"{where}: a {width}x{height} mask")
        if size is not None and size != (height, width):
            raise ConfigError(f"{where}: a {width}x{height} mask where the lines before are {size[1]}x{size[0]}")
        size = (height, width)
        objects = frames.setdefault(frame - first_frame, [])
        if class_id != IGNORE_CLASS and any(o.track_id == track_id for o in objects):
            raise ConfigError(f"{where}: object {track_id} is in frame {frame} twice")
        objects.append(MotsLine(track_id, class_id, height, width, fields[5], number))
    return frames


def _decode(path: Path, line: MotsLine) -> np.ndarray:
    try:
        mask = coco_mask.decode({"size": [line.height, line.width], "counts": line.rle.encode("ascii")})
        if mask.max(initial=0) > 1:  # pycocotools decodes runs that do not add up to the mask into garbage
            raise ValueError("its runs do not cover the mask")
    except (ValueError, UnicodeEncodeError) as error:
        raise ConfigError(f"{path}, line {line.line}: its RLE is not COCO's compressed RLE ({error})") from None
    return mask.astype(bool)


def mots_truth(path: str | Path, lines: Iterable[MotsLine], index: int, height: int, width: int
               ) -> tuple[FrameResult, np.ndarray | None]:
    """One frame's ground truth: every object a thing segment whose track id is its object id,
    and the frame's ignore regions (None: none)."""
    path = Path(path)
    label_map = np.full((height, width), -1, np.int32)
    ignore = None
    rows: list[MotsLine] = []
    for line in lines:
        if (line.height, line.width) != (height, width):
            raise ConfigError(f"{path}, line {line.line}: a {line.width}x{line.height} mask for a video of "
                              f"{width}x{height} pictures")
        mask = _decode(path, line)
        if line.class_id == IGNORE_CLASS:
            ignore = mask if ignore is None else ignore | mask
            continue
        if (label_map[mask] >= 0).any():
            raise ConfigError(f"{path}, line {line.line}: object {line.track_id}'s mask overlaps another's in "
                              "its frame (MOTS masks may not overlap)")
        label_map[mask] = len(rows)
        rows.append(line)
    areas, boxes = frame_label_map(label_map, len(rows), (height, width))[1:3]
    segments = Segments.build(
        ids=range(len(rows)), class_ids=[r.class_id for r in rows], labels=[f"class {r.class_id}" for r in rows],
        isthing=[True] * len(rows), areas=areas, boxes=boxes, track_ids=[r.track_id for r in rows],
    )
    return FrameResult(source="", index=index, width=width, height=height, segment_map=label_map,
                       segments=segments), ignore


def mots_lines(result: FrameResult, frame: int | None = None, class_id: int | None = None) -> list[str]:
    """A result's tracked things as MOTS lines (frame: ``result.index`` unless given; each its
    class's id unless ``class_id`` is given); segments without a track id (not yet confirmed)
    are left out, as a MOTS file holds tracks only."""
    seg = result.segments
    label_map = np.asarray(result.label_map)
    lines = []
    for row in np.flatnonzero(seg.isthing & (seg.track_ids != NO_TRACK)):
        mask = np.asfortranarray(label_map == seg.ids[row], dtype=np.uint8)
        counts = coco_mask.encode(mask)["counts"].decode("ascii")
        written_class = int(seg.class_ids[row]) if class_id is None else class_id
        lines.append(f"{result.index if frame is None else frame} {int(seg.track_ids[row])} {written_class} "
                     f"{result.height} {result.width} {counts}")
    return lines

