"""Panoptic quality: perfect predictions score 1, a hand-made example scores what hand counting says."""

from __future__ import annotations

import numpy as np
import pytest

from segstream.connectors.errors import ConfigError
from segstream.connectors.synthetic import CLASSES, synthetic_clip, truth_result
from segstream.models.label_sets import load_label_set
from segstream.models.results import FrameResult, Segments
from segstream.pipeline.evaluation import PanopticTally, evaluate_segmenter, panoptic_quality

THINGS, STUFF = (0, 1, 2, 3), (4, 5, 6, 7)
DISC, BOX, SKY, GRASS, SAND, WATER = 0, 1, 4, 5, 6, 7


def _result(label_map: np.ndarray, ids: list[int], class_ids: list[int]) -> FrameResult:
    """A prediction: segments ``ids`` of classes ``class_ids``, scored 1."""
    segments = Segments.build(
        ids=ids, class_ids=class_ids, labels=[CLASSES[c].name for c in class_ids],
        isthing=[CLASSES[c].isthing for c in class_ids],
    )
    height, width = label_map.shape
    return FrameResult("", 0, width, height, label_map, segments)


def _as_prediction(truth: FrameResult) -> FrameResult:
    return _result(truth.label_map.copy(), list(truth.segments.ids), list(truth.segments.class_ids))


def _truth(grid: list[str], legend: dict[str, tuple[int, int]]) -> FrameResult:
    """A ground-truth frame drawn as text: each letter maps to (segment id, class id); segment ids
    must be 0..S-1; '.' is a pixel of no segment (void, or crowd)."""
    label_map = np.array([[legend[c][0] if c != "." else -1 for c in row] for row in grid], dtype=np.int32)
    rows = [
        (cid, CLASSES[cid].isthing, sid if CLASSES[cid].isthing else -1, int((label_map == sid).sum()))
        for sid, cid in sorted(legend.values())
    ]
    assert [sid for sid, _ in sorted(legend.values())] == list(range(len(rows)))
    return truth_result(label_map, rows)


def _prediction(grid: list[str], legend: dict[str, tuple[int, int]]) -> FrameResult:
    """A predicted frame drawn as text; '.' is a pixel left without a segment (-1)."""
    label_map = np.array([[legend[c][0] if c != "." else -1 for c in row] for row in grid], dtype=np.int32)
    ids, class_ids = zip(*sorted(legend.values()))
    return _result(label_map, list(ids), list(class_ids))


def test_perfect_prediction_scores_one_everywhere():
    truths = [truth for _, truth in synthetic_clip(96, 72, 3, seed=5)]
    assert any(t.segments.isthing.any() for t in truths)
    preds = [_as_prediction(t) for t in truths]
    result = panoptic_quality(preds, truths, THINGS, STUFF)
    for key in ("pq", "sq", "rq", "pq_things", "sq_things", "rq_things", "pq_stuff", "sq_stuff", "rq_stuff"):
        assert result[key] == pytest.approx(1.0), key
    assert result["frames"] == 3


def test_hand_counted_example_with_a_dropped_thing_and_a_mislabelled_stuff_region():
    legend = {"S": (0, SKY), "G": (1, GRASS), "A": (2, DISC), "B": (3, BOX)}
    truth_0 = _truth(["SSSSSS", "SAASSS", "GAAGBB", "GGGGBB"], legend)
    # Frame 0: box B dropped (left unlabelled); a spurious 2-pixel disc D sits on the sky.
    pred_0 = _prediction(
        ["SSSSDD", "SAASSS", "GAAG..", "GGGG.."],
        {"S": (0, SKY), "G": (1, GRASS), "A": (2, DISC), "D": (5, DISC)},
    )
    legend = {"S": (0, SKY), "W": (1, WATER), "A": (2, DISC)}
    truth_1 = _truth(["SSSSSS", "SSSSSS", "WWWWAA", "WWWWAA"], legend)
    # Frame 1: the water is called sand; the disc spills two pixels into the sky.
    pred_1 = _prediction(
        ["SSSSSS", "SSSSAA", "NNNNAA", "NNNNAA"],
        {"S": (0, SKY), "N": (1, SAND), "A": (2, DISC)},
    )
    result = panoptic_quality([pred_0, pred_1], [truth_0, truth_1], THINGS, STUFF)
    # By hand, per class (IoU = intersection / union of pixel counts):
    #   disc:  frame 0 A=A, IoU 4/4 = 1; D unmatched: FP. Frame 1 IoU 4/6.
    #          TP 2, FP 1: SQ = (1 + 2/3)/2 = 5/6, RQ = 2/(2 + 0.5) = 4/5, PQ = 2/3.
    #   box:   FN 1 (its pixels are unlabelled, which is no excuse): PQ = SQ = RQ = 0.
    #   sky:   frame 0 IoU 8/10, frame 1 IoU 10/12: SQ = (4/5 + 5/6)/2 = 49/60, RQ 1, PQ 49/60.
    #   grass: IoU 1 once: PQ = SQ = RQ = 1.
    #   sand:  FP 1; water: FN 1: both 0.
    # Averages over the classes that occur (disc, box | sky, grass, sand, water):
    #   things: PQ (2/3 + 0)/2 = 1/3, SQ (5/6 + 0)/2 = 5/12, RQ (4/5 + 0)/2 = 2/5.
    #   stuff:  PQ = SQ = (49/60 + 1 + 0 + 0)/4 = 109/240, RQ (1 + 1 + 0 + 0)/4 = 1/2.
    #   all:    PQ (2/3 + 49/60 + 1)/6 = 149/360, SQ (5/6 + 49/60 + 1)/6 = 53/120,
    #           RQ (4/5 + 1 + 1)/6 = 7/15.
    expected = {
        "pq": 149 / 360, "sq": 53 / 120, "rq": 7 / 15,
        "pq_things": 1 / 3, "sq_things": 5 / 12, "rq_things": 2 / 5,
        "pq_stuff": 109 / 240, "sq_stuff": 109 / 240, "rq_stuff": 1 / 2,
    }
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=1e-6), key  # IoUs are float32 inside
    per_class = result["per_class"]
    assert (per_class[DISC]["tp"], per_class[DISC]["fp"], per_class[DISC]["fn"]) == (2, 1, 0)
    assert (per_class[BOX]["tp"], per_class[BOX]["fn"]) == (0, 1)
    assert per_class[SAND]["fp"] == 1 and per_class[WATER]["fn"] == 1
    assert per_class[2]["tp"] + per_class[2]["fp"] + per_class[2]["fn"] == 0  # triangle never occurs


def test_a_frame_left_entirely_unlabelled_scores_zero():
    truth = _truth(["SSAA", "GGAA"], {"S": (0, SKY), "G": (1, GRASS), "A": (2, DISC)})
    empty = FrameResult("", 0, 4, 2, np.full((2, 4), -1, dtype=np.int32))
    result = panoptic_quality([empty], [truth], THINGS, STUFF)
    assert result["pq"] == 0.0 and result["per_class"][DISC]["fn"] == 1


def test_evaluate_segmenter_with_an_oracle_scores_one_in_batches():
    seeds, width, height, frames = [3, 9], 64, 48, 3
    truth_of = {
        image.tobytes(): truth for seed in seeds for image, truth in synthetic_clip(width, height, frames, seed)
    }
    calls = []

    def oracle(images):
        calls.append(len(images))
        return [_as_prediction(truth_of[image.tobytes()]) for image in images]

    result = evaluate_segmenter(oracle, seeds, width, height, frames, load_label_set("synthetic"), progress=False)
    assert result["pq"] == pytest.approx(1.0) and result["frames"] == 6
    assert calls == [4, 2]


def test_evaluate_gives_semantic_miou_beside_pq_void_left_out_and_crowd_of_its_class():
    """Found probing as an ML engineer: evaluate gave PQ alone (no mIoU), so a semantic model's
    quality, or a SeNaTra card's mIoU, could not be measured on one's own data. Hand-counted."""
    truth = _truth(["SAA..S.", "SAA..S."], {"S": (0, SKY), "A": (1, DISC)})
    crowd = np.full(truth.label_map.shape, -1)
    crowd[:, 3:5] = DISC  # columns 3-4 a crowd of discs; column 6 void
    prediction = _prediction(["SSAA..S", "GSAAASA"], {"S": (0, SKY), "A": (1, DISC), "G": (2, GRASS)})
    image = np.zeros((2, 7, 3), np.uint8)
    result = evaluate_segmenter(lambda images: [prediction] * len(images), [], 7, 2, 1, load_label_set("synthetic"),
                                frames=[(image, truth, crowd)], progress=False)
    # sky: 2 of 4 + 4 - 2; discs (the crowd's too): 5 of 8 + 5 - 5; grass: 0 of 1; the void column counts nowhere
    iou = {SKY: 2 / 6, DISC: 5 / 8, GRASS: 0.0}
    assert result["miou"] == pytest.approx(sum(iou.values()) / 3)
    assert result["pixel_accuracy"] == pytest.approx(7 / 12)
    assert {c: row["iou"] for c, row in result["per_class"].items() if row["iou"] is not None} == pytest.approx(iou)


def test_a_prediction_of_a_class_the_ground_truth_does_not_list_is_unlabelled():
    """Ground truth labelled with two of the model's classes (in its own order): a segment the
    model calls grass is no false positive of a class the pictures never label, and the disc under
    it is missed."""
    from segstream.models.label_sets import LabelSet

    two = LabelSet("mine", ("disc", "sky"), (True, False))
    truth = _result(np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.int32), [0, 1], [0, 1])  # ids in `two`
    truth.segments.isthing[:] = [True, False]
    prediction = _prediction(["GGSS", "GGSS"], {"S": (0, SKY), "G": (1, GRASS)})
    result = evaluate_segmenter(lambda images: [prediction], [], 4, 2, 1, load_label_set("synthetic"),
                                frames=[(np.zeros((2, 4, 3), np.uint8), truth)], truth_labels=two, progress=False)
    assert _counts(result, DISC) == (0, 0, 1) and _counts(result, SKY) == (1, 0, 0)
    assert _counts(result, GRASS) == (0, 0, 0) and result["per_class"][GRASS]["iou"] is None


def test_evaluate_segmenter_refuses_a_model_of_another_label_set():
    with pytest.raises(ConfigError):
        evaluate_segmenter(lambda images: [], [0], 64, 48, 1, load_label_set("cityscapes"), progress=False)


def test_evaluate_names_a_missing_checkpoint_in_one_line_without_traceback(capsys):
    from segstream.pipeline.cli import main

    for tracking in ([], ["--tracking"]):
        assert main(["evaluate", *tracking, "--seeds", "0", "--frames", "1", "--checkpoint", "/nonexistent.safetensors"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("segstream: error: --checkpoint /nonexistent.safetensors:") and "Traceback" not in err
        # the command's words, not the config's ("use null for the preset's weights": found probing)
        assert "null" not in err and (tracking or "leave --checkpoint out for the preset's own weights" in err), err


def test_evaluate_takes_the_preset_a_trained_checkpoint_names_and_says_which_weights_it_measured(tmp_path, capsys):
    """Found probing as a model trainer: a SeNaTra checkpoint of one's own needed --preset (the error
    said 'set model.family: senatra', a config's words), and the output named no weights."""
    import json

    from segstream.models.presets import SYNTHETIC_SENATRA
    from segstream.models.senatra import SeNaTra
    from segstream.pipeline.cli import main
    from segstream.pipeline.senatra_training import save_senatra

    weights = tmp_path / "mine.safetensors"
    save_senatra(SeNaTra(SYNTHETIC_SENATRA.config), weights, {"preset": SYNTHETIC_SENATRA.name})
    assert main(["evaluate", "--seeds", "0", "--frames", "1", "--size", "64", "48", "--device", "cpu",
                 "--checkpoint", str(weights), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == SYNTHETIC_SENATRA.name and result["checkpoint"] == str(weights)


def test_evaluate_refuses_a_preset_of_another_label_set_before_fetching_weights(capsys):
    from segstream.pipeline.cli import main

    # a published COCO preset: its weights are on the hub, which must not even be asked
    assert main(["evaluate", "--seeds", "0", "--frames", "1", "--preset", "coco_panoptic_eomt_large_640"]) == 2
    err = capsys.readouterr().err
    assert "--preset coco_panoptic_eomt_large_640" in err and "synthetic_eomt_tiny_256" in err
    assert err.count("\n") == 1


def test_evaluate_refuses_zero_frames_instead_of_printing_nan(capsys):
    from segstream.pipeline.cli import main

    assert main(["evaluate", "--seeds", "0", "--frames", "0"]) == 2
    captured = capsys.readouterr()
    assert "--frames: must be at least 1, got 0" in captured.err and "nan" not in captured.out.lower()
    # release QA: a scene too small to draw exited 1, as if evaluating had failed
    assert main(["evaluate", "--seeds", "0", "--size", "0", "120"]) == 2
    assert "--size: must be at least 16 pixels, got 0" in capsys.readouterr().err


def test_evaluate_says_which_classes_the_scenes_lack_and_draws_no_bar_into_a_log(capsys):
    """A class neither in the scenes nor predicted read "PQ 0.0 (tp 0, fp 0, fn 0)", and a log
    file got the progress bar's carriage-return lines (found probing)."""
    from segstream.pipeline.cli import main

    assert main(["evaluate", "--seeds", "0", "--frames", "2", "--size", "160", "120"]) == 0
    captured = capsys.readouterr()
    absent = [line for line in captured.out.splitlines() if "not in these scenes, nor predicted" in line]
    assert absent and "(tp 0, fp 0, fn 0)" not in captured.out
    assert "frame/s" not in captured.err and "\r" not in captured.err


def test_evaluate_says_what_it_evaluates_before_the_model_loads(capsys):
    """Found probing: `segstream evaluate` printed nothing until it finished (the bar shows on a
    terminal only; the model loads first)."""
    from segstream.pipeline.cli import main

    assert main(["evaluate", "--seeds", "4", "--frames", "2", "--size", "160", "120", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("segstream: evaluating synthetic_eomt_tiny_256 on 2 frames of 1 synthetic scenes at 160x120")


def _counts(result: dict, class_id: int) -> tuple[int, int, int]:
    row = result["per_class"][class_id]
    return row["tp"], row["fp"], row["fn"]


def _scored(prediction: FrameResult, truth: FrameResult, crowd: np.ndarray) -> dict:
    tally = PanopticTally(THINGS, STUFF)
    tally.add(prediction, truth, crowd)
    return tally.summary()


def test_crowd_regions_count_as_coco_counts_them():
    """COCO's PQ (panopticapi pq_compute): a crowd region is matched by nothing and missed by
    nobody, but its pixels stay in the IoU's union, and only a crowd of a prediction's own class
    excuses it. Found auditing: evaluate --data made crowd void, which let any crowd excuse any
    prediction and took crowd pixels out of the union."""
    # A disc of 4 pixels and, beside it, 4 pixels of a crowd of discs.
    truth = _truth(["SAA..S", "SAA..S"], {"S": (0, SKY), "A": (1, DISC)})
    discs = np.where(truth.label_map < 0, DISC, -1)
    # A prediction over both: IoU 4 / 8 is no match (void would make it 4 / 4), half on crowd no excuse.
    covering = _prediction(["SAAAAS", "SAAAAS"], {"S": (0, SKY), "A": (1, DISC)})
    assert _counts(_scored(covering, truth, discs), DISC) == (0, 1, 1)
    # One pixel onto the crowd: a match of IoU 4 / 5.
    spilling = _prediction(["SAAA.S", "SAA..S"], {"S": (0, SKY), "A": (1, DISC)})
    result = _scored(spilling, truth, discs)
    assert _counts(result, DISC) == (1, 0, 0) and result["per_class"][DISC]["sq"] == pytest.approx(0.8)

    # A crowd of boxes: a disc predicted on it is a false positive (void would excuse it) ...
    truth = _truth(["SS..", "SS.."], {"S": (0, SKY)})
    boxes = np.where(truth.label_map < 0, BOX, -1)
    on_boxes = _prediction(["SSAA", "SSAA"], {"S": (0, SKY), "A": (1, DISC)})
    assert _counts(_scored(on_boxes, truth, boxes), DISC) == (0, 1, 0)
    # ... a box predicted mostly on it (3 of its 4 pixels) is excused, and the crowd is missed by nobody.
    on_crowd = _prediction(["SBBB", "SSSB"], {"S": (0, SKY), "B": (1, BOX)})
    assert _counts(_scored(on_crowd, truth, boxes), BOX) == (0, 0, 0)


def test_without_crowd_the_counts_are_torchmetrics_panoptic_quality():
    """Our own matching (it handles crowd regions) counts as torchmetrics' PanopticQuality does,
    given unlabelled predicted pixels as a class of their own (which no ground truth has): on
    eroded, dilated, dropped, split, relabelled and partly unlabelled predictions, with void."""
    import torch
    from torchmetrics.detection import PanopticQuality  # the test extra's

    from segstream.pipeline.track_evaluation import noisy_detections

    unlabelled = len(CLASSES)
    reference = PanopticQuality(things=set(THINGS), stuffs=set(STUFF) | {unlabelled}, return_sq_and_rq=True,
                                return_per_class=True)
    ours = PanopticTally(THINGS, STUFF)
    rng = np.random.default_rng(7)

    def as_pairs(result: FrameResult, no_class: int) -> torch.Tensor:
        lookup = {int(i): int(c) for i, c in zip(result.segments.ids, result.segments.class_ids)}
        category = np.vectorize(lambda v: lookup.get(int(v), no_class))(result.label_map)
        instance = np.where(category == no_class, 0, result.label_map)
        return torch.from_numpy(np.stack([category, instance], -1).astype(np.int64))[None]

    for seed in (1, 2):
        for _, truth in synthetic_clip(96, 72, 6, seed):
            prediction = noisy_detections(truth, rng, drop=0.2)
            label_map, segments = prediction.label_map.copy(), prediction.segments
            y, x = rng.integers(0, 60), rng.integers(0, 80)
            label_map[y : y + 12, x : x + 16] = -1  # left unlabelled
            split = int(rng.integers(len(segments)))  # a thing or stuff segment split in two
            half = (label_map == segments.ids[split]) & (np.arange(96) < rng.integers(20, 76))[None, :]
            label_map[half] = 99
            class_ids = segments.class_ids.copy()
            relabel = rng.random(len(class_ids)) < 0.15
            class_ids[relabel] = rng.integers(0, len(CLASSES), int(relabel.sum()))
            prediction = _result(label_map, [*segments.ids.tolist(), 99], [*class_ids.tolist(), class_ids[split]])
            truth_map = truth.label_map.copy()
            truth_map[rng.integers(0, 60) :][:10, rng.integers(0, 80) :][:, :14] = -1  # void
            truth = FrameResult("", 0, 96, 72, truth_map, truth.segments)
            ours.add(prediction, truth)
            reference.update(as_pairs(prediction, unlabelled), as_pairs(truth, -1))

    result = ours.summary()
    expected = reference.compute()  # per class (pq, sq, rq): things, then stuff, then unlabelled
    counts = (reference.true_positives.tolist(), reference.false_positives.tolist(),
              reference.false_negatives.tolist())
    for i, class_id in enumerate([*THINGS, *STUFF]):
        assert _counts(result, class_id) == tuple(c[i] for c in counts), CLASSES[class_id].name
        for k, key in enumerate(("pq", "sq", "rq")):  # torchmetrics' IoUs and RQ are float32
            assert result["per_class"][class_id][key] == pytest.approx(float(expected[i, k]), abs=1e-6)
    totals = [sum(c[: len(THINGS) + len(STUFF)]) for c in counts]
    assert min(totals) > 5, f"tp, fp, fn {totals}: too few of one to compare"
    assert 0.3 < result["pq"] < 0.9
