"""Segmentation measures beside PQ: semantic mIoU, and how well unlabelled segments (superpixels,
token groups) follow ground-truth segments (achievable segmentation accuracy, boundary recall).

All work on integer label maps of one frame (numpy); ``-1`` in a ground-truth map is void.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


class MeanIoU:
    """Semantic IoU per class accumulated over frames (a confusion matrix of pixel counts).

    ``add`` takes per-pixel class maps (-1: none; in the truth, void and ignored); ``summary``
    returns ``miou`` over the classes that occur in the truth or the prediction, and ``per_class``.
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.confusion = np.zeros((num_classes, num_classes + 1), np.int64)  # truth x (pred, none)

    def add(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        if predicted.shape != truth.shape:
            raise ValueError(f"prediction map is {predicted.shape}, ground truth {truth.shape}")
        valid = truth >= 0
        pred = np.where(predicted[valid] >= 0, predicted[valid], self.num_classes)
        index = truth[valid].astype(np.int64) * (self.num_classes + 1) + pred
        self.confusion += np.bincount(index, minlength=self.confusion.size).reshape(self.confusion.shape)

    def summary(self) -> dict:
        tp = np.diag(self.confusion[:, : self.num_classes]).astype(float)
        truth = self.confusion.sum(1)
        predicted = self.confusion[:, : self.num_classes].sum(0)
        union = truth + predicted - tp
        present = union > 0
        iou = np.where(present, tp / np.maximum(union, 1), np.nan)
        return {
            "miou": float(np.nanmean(iou)) if present.any() else float("nan"),
            "pixel_accuracy": float(tp.sum() / max(truth.sum(), 1)),
            "per_class": {c: float(iou[c]) for c in range(self.num_classes) if present[c]},
        }


def class_map(label_map: np.ndarray, ids: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    """Per pixel the class of its segment (-1 where no listed segment is)."""
    ids = np.asarray(ids, np.int64)
    top = int(max(ids.max(initial=-1), label_map.max(initial=-1)))
    lookup = np.full(top + 2, -1, np.int64)
    lookup[ids] = class_ids
    return lookup[np.clip(label_map, -1, top)]


def achievable_segmentation_accuracy(segments: np.ndarray, truth: np.ndarray) -> float:
    """ASA: the share of (non-void) pixels labelled correctly when every segment takes the
    ground-truth segment it overlaps most. 1.0 means no segment straddles a truth boundary."""
    valid = truth >= 0
    seg = np.unique(segments[valid], return_inverse=True)[1]
    gt = np.unique(truth[valid], return_inverse=True)[1]
    overlap = np.zeros((seg.max() + 1, gt.max() + 1), np.int64)
    np.add.at(overlap, (seg, gt), 1)
    return float(overlap.max(1).sum() / max(valid.sum(), 1))


def boundary_pixels(label_map: np.ndarray) -> np.ndarray:
    """Bool map of pixels whose right or lower neighbour has another label (and those neighbours)."""
    edge = np.zeros(label_map.shape, bool)
    horizontal = label_map[:, 1:] != label_map[:, :-1]
    vertical = label_map[1:] != label_map[:-1]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:] |= vertical
    edge[:-1] |= vertical
    return edge


def boundary_recall(segments: np.ndarray, truth: np.ndarray, tolerance: int = 2) -> float:
    """BR: the share of ground-truth boundary pixels with a segment boundary within ``tolerance``
    pixels (Chebyshev distance), the usual superpixel measure. Boundaries with void are skipped."""
    truth_edges = boundary_pixels(truth)
    void = truth < 0
    truth_edges &= ~ndimage.binary_dilation(void, iterations=1) if void.any() else True
    found = boundary_pixels(segments)
    if tolerance > 0:  # (scipy reads iterations=0 as "until nothing changes")
        found = ndimage.binary_dilation(found, np.ones((3, 3), bool), iterations=tolerance)
    total = int(truth_edges.sum())
    return float((truth_edges & found).sum() / total) if total else float("nan")


def boundary_precision(segments: np.ndarray, truth: np.ndarray, tolerance: int = 2) -> float:
    """The converse of ``boundary_recall``: the share of segment boundary pixels with a
    ground-truth boundary within ``tolerance`` pixels. Ragged or needlessly split segments have many
    boundary pixels far from any truth boundary, so a high recall bought that way shows here."""
    return boundary_recall(truth, segments, tolerance) if boundary_pixels(segments).any() else float("nan")


def grid_segments(height: int, width: int, rows: int, cols: int) -> np.ndarray:
    """A ``rows`` x ``cols`` grid of (nearly) equal cells over a height x width frame: the segments of
    uniform downsampling at that token count."""
    y = np.minimum(np.arange(height) * rows // height, rows - 1)
    x = np.minimum(np.arange(width) * cols // width, cols - 1)
    return (y[:, None] * cols + x[None, :]).astype(np.int32)


def evaluate_semantic(segment_fn, seeds, width: int, height: int, num_frames: int, num_classes: int,
                      batch_size: int = 4) -> dict:
    """mIoU of ``segment_fn`` (frames -> FrameResults) on the first ``num_frames`` frames of each
    synthetic scene in ``seeds``: the class of each pixel's predicted segment against the truth's."""
    from segstream.connectors.synthetic import synthetic_clip

    tally = MeanIoU(num_classes)
    for seed in seeds:
        frames = list(synthetic_clip(width, height, num_frames, seed))
        for first in range(0, len(frames), batch_size):
            chunk = frames[first : first + batch_size]
            for prediction, (_, truth) in zip(segment_fn([image for image, _ in chunk]), chunk, strict=True):
                predicted = class_map(prediction.label_map, prediction.segments.ids, prediction.segments.class_ids)
                tally.add(predicted, class_map(truth.label_map, truth.segments.ids, truth.segments.class_ids))
    return tally.summary()
