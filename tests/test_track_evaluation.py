"""Tracking metrics on synthetic scenes (``segstream evaluate --tracking``): the noise model, the
oracle, the metrics themselves, the command."""

from __future__ import annotations

import json

import numpy as np

from segstream.connectors.synthetic import synthetic_clip
from segstream.models.results import NO_TRACK
from segstream.pipeline.cli import main
from segstream.pipeline.track_evaluation import TrackedScene, noisy_detections, oracle_identities, tracking_metrics


def truths(frames=40, seed=3, size=(160, 120)):
    return [truth for _, truth in synthetic_clip(*size, frames, seed)]


def test_noisy_detections_drop_about_a_tenth_and_keep_the_masks_close():
    rng = np.random.default_rng(0)
    kept = total = 0
    ious = []
    for truth in truths(60):
        noisy = noisy_detections(truth, rng)
        things = truth.segments[truth.segments.isthing]
        total += len(things)
        for segment_id in things.ids:
            if segment_id in noisy.segments.ids:
                kept += 1
                a, b = truth.label_map == segment_id, noisy.label_map == segment_id
                ious.append((a & b).sum() / (a | b).sum())
        assert set(noisy.segments.track_ids.tolist()) <= {NO_TRACK}
        row = noisy.segments.index_of(int(noisy.segments.ids[0]))
        assert noisy.segments.areas[row] == (noisy.label_map == noisy.segments.ids[0]).sum()
    assert 0.8 < kept / total < 0.97
    assert np.median(ious) > 0.8 and min(ious) > 0  # a few pixels off, never somewhere else


def test_the_oracle_gives_each_segment_the_truth_it_overlaps():
    truth = truths(1)[0]
    fresh = iter(range(1000, 2000))
    ids = oracle_identities(truth, truth, fresh)
    things = truth.segments.isthing
    np.testing.assert_array_equal(ids[things], truth.segments.track_ids[things])
    assert (ids[~things] >= 1000).all()  # stuff overlaps no thing: a false positive of its own


def test_perfect_identities_score_one_and_a_swap_is_counted():
    clip = truths(30)
    perfect, swapped = TrackedScene(), TrackedScene()
    for truth in clip:
        perfect.add(truth, truth, truth.segments.track_ids)
        ids = truth.segments.track_ids.copy()
        things = np.flatnonzero(truth.segments.isthing)
        if truth.index >= 15 and len(things) >= 2:
            ids[things[0]], ids[things[1]] = ids[things[1]], ids[things[0]]
        swapped.add(truth, truth, ids)
    best = tracking_metrics([perfect])
    assert best["idf1"] == best["hota"] == 1.0 and best["id_switches"] == 0
    worse = tracking_metrics([swapped])
    assert worse["id_switches"] >= 2 and worse["idf1"] < 0.9


def test_evaluate_tracking_prints_the_table_and_one_json_line(capsys):
    assert main(["evaluate", "--tracking", "--seeds", "0", "--frames", "12", "--size", "160", "120",
                 "--device", "cpu", "--precision", "fp32"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tracking: 12 frames, 160x120, seeds 0, model synthetic_eomt_tiny_256")
    assert any(line.startswith("tracker, noisy ground truth") for line in out)
    result = json.loads(out[-1])
    assert set(result) == {"noisy_truth", "noisy_truth_all", "model", "oracle", "model_vs_oracle_idf1"}
    assert result["noisy_truth"]["idf1"] > 0.8 and result["oracle"]["frames"] == 12
    assert 0 < result["model"]["idf1"] <= 1 and result["model"]["gt_tracks"] > 0
