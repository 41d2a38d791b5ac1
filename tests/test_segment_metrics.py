"""ASA, boundary recall and mIoU on label maps small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from segstream.pipeline.segment_metrics import (
    MeanIoU,
    achievable_segmentation_accuracy,
    boundary_recall,
    grid_segments,
)

# Truth: a 6 x 8 frame, left 3 columns one segment, the rest another; one void pixel.
TRUTH = np.zeros((6, 8), np.int32)
TRUTH[:, 3:] = 1
TRUTH[0, 7] = -1


def test_asa_is_one_for_segments_that_follow_the_truth_and_counts_straddling_pixels():
    over = TRUTH.copy()
    over[3:, :3] = 5  # a finer split of segment 0 is still exact
    assert achievable_segmentation_accuracy(over, TRUTH) == 1.0
    grid = grid_segments(6, 8, 1, 2)  # columns 0-3 | 4-7: column 3 straddles
    assert achievable_segmentation_accuracy(grid, TRUTH) == pytest.approx(1 - 6 / 47)


def test_boundary_recall_finds_truth_edges_within_the_tolerance():
    assert boundary_recall(TRUTH, TRUTH) == 1.0
    shifted = np.zeros_like(TRUTH)
    shifted[:, 5:] = 1  # two pixels off
    assert boundary_recall(shifted, TRUTH, tolerance=2) == 1.0
    assert boundary_recall(shifted, TRUTH, tolerance=0) == 0.0
    assert boundary_recall(np.zeros_like(TRUTH), TRUTH) == 0.0


def test_grid_segments_have_equal_cells():
    grid = grid_segments(6, 8, 3, 2)
    assert np.bincount(grid.ravel()).tolist() == [8] * 6
    assert grid[0, 0] == 0 and grid[5, 7] == 5


def test_mean_iou_over_classes_present_and_void_ignored():
    tally = MeanIoU(num_classes=3)
    predicted = np.zeros((6, 8), np.int64)
    predicted[:, 4:] = 1  # column 3 wrong
    tally.add(predicted, TRUTH)
    result = tally.summary()
    assert result["per_class"][0] == pytest.approx(18 / 24)
    assert result["per_class"][1] == pytest.approx(23 / 29)
    assert 2 not in result["per_class"]
    assert result["miou"] == pytest.approx((18 / 24 + 23 / 29) / 2)
