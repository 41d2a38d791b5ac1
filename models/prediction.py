"""What the model stage hands to post-processing consumers: plain typed containers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class Segment:
    """One segment of a frame.

    ``id`` is the value this segment has in the frame's ``label_map``; ``box`` is
    (x0, y0, x1, y1) in pixels of the original frame, x1/y1 exclusive; ``area`` in pixels;
    ``query`` is the index of the EoMT query that produced it.
    """

    id: int
    class_id: int
    label: str
    isthing: bool
    score: float
    area: int
    box: tuple[int, int, int, int]
    query: int


@dataclass(slots=True)
class FramePrediction:
    """Segmentation of one frame at the frame's resolution.

    ``label_map`` is H x W int32: the ``Segment.id`` of each pixel, -1 where no segment is.
    ``embeddings`` is S x D float32, row i the final-normed query token of ``segments[i]``.
    """

    label_map: np.ndarray
    segments: list[Segment] = field(default_factory=list)
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
