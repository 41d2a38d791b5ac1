"""Panoptic quality (PQ, SQ, RQ) of a segmenter on held-out synthetic scenes or pictures of one's own.

The counting is COCO's panoptic quality (Kirillov et al. 2019, as COCO's ``panopticapi``
``pq_compute`` counts it), frame by frame:

- a predicted and a ground-truth segment of one class match when their IoU is above 0.5, IoU
  being intersection / (union - the prediction's pixels on void): a true positive each;
- an unmatched ground-truth segment is a false negative, an unmatched prediction a false
  positive unless more than half of it lies on void and on crowd regions of its own class;
- void is ground-truth pixels of no segment; crowd regions (``iscrowd: 1``, ``add``'s ``crowd``)
  are never matched nor false negatives, and their pixels stay in the union;
- predicted pixels of no segment are no class: a ground-truth segment the model left unlabelled
  is a false negative (torchmetrics reads such pixels as void and forgives a segment mostly under them);
- a frame's segments of one stuff class count as one segment (COCO's format has one per class).

SQ is a class's mean IoU over its true positives, RQ tp / (tp + fp/2 + fn/2), PQ = SQ x RQ; the
averages are over the classes with tp + fp + fn > 0. Without crowd regions the counts are those
of torchmetrics' ``PanopticQuality`` given unlabelled pixels as a class of their own (the tests
compare them), in float64.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segstream.connectors.errors import ConfigError
from segstream.connectors.synthetic import CLASSES, LABEL_SET, synthetic_clip
from segstream.connectors.terminal import bar_shape, bars_off
from segstream.models.label_sets import LabelSet
from segstream.models.results import FrameResult, Segments
from segstream.pipeline.segment_metrics import MeanIoU, class_map


# What the counts mean, said in evaluate --json and in README's "What evaluate counts"
PQ_DEFINITIONS = {
    "pq": "COCO panoptic quality (Kirillov et al. 2019; panopticapi pq_compute), frame by frame",
    "match": "same class and IoU > 0.5, IoU = intersection / (union - prediction on void)",
    "void": "ground truth of no segment: out of the IoU; a prediction more than half on void and on crowd of its "
            "class is no false positive",
    "crowd": "iscrowd regions: never matched, no false negative, in the IoU's union",
    "unlabelled": "predicted pixels of no segment: no class (a ground-truth segment left unlabelled is missed)",
    "classes": "the ground truth's matched to the model's by name (case aside), thing with thing; a predicted segment "
               "of a class the ground truth does not list is unlabelled",
    "stuff": "a frame's segments of one stuff class are one segment",
    "averages": "over the classes with tp + fp + fn > 0",
    "miou": "semantic mean IoU of the segments' classes per pixel, over the classes in the ground truth or the "
            "prediction; void pixels out, crowd pixels of their class",
}


class PanopticTally:
    """PQ accumulated over frames: ``add`` one frame at a time, ``summary`` at any point.

    Class ids are the label set's; ``thing_ids`` and ``stuff_ids`` must not overlap.
    """

    def __init__(self, thing_ids: Iterable[int], stuff_ids: Iterable[int]):
        self.thing_ids = sorted(int(c) for c in thing_ids)
        self.stuff_ids = sorted(int(c) for c in stuff_ids)
        self._stuff = set(self.stuff_ids)
        self._known = set(self.thing_ids) | self._stuff
        size = max(self._known, default=-1) + 1
        self.frames = 0
        self._tp, self._fp, self._fn = (np.zeros(size, np.int64) for _ in range(3))
        self._iou = np.zeros(size, np.float64)

    def add(self, prediction: FrameResult, truth: FrameResult, crowd: np.ndarray | None = None) -> None:
        """Count one frame. Label maps hold segment ids (-1 or any unlisted id: no segment).
        ``crowd`` (H x W) holds the class id of each pixel of a crowd region, -1 elsewhere; those
        pixels are of no segment in ``truth``."""
        pred_map, gt_map = prediction.label_map, truth.label_map
        if pred_map.shape != gt_map.shape:
            raise ValueError(f"prediction map is {pred_map.shape}, ground truth {gt_map.shape}")
        if crowd is not None and crowd.shape != gt_map.shape:
            raise ValueError(f"crowd map is {crowd.shape}, ground truth {gt_map.shape}")
        for what, segments in (("predicted", prediction.segments), ("ground-truth", truth.segments)):
            strange = sorted({int(c) for c in segments.class_ids} - self._known)
            if strange:
                raise ValueError(f"{what} class ids {strange} are not in the label set")
        gt_unit, gt_class = self._units(gt_map, truth.segments)
        pred_unit, pred_class = self._units(pred_map, prediction.segments)
        g, p = len(gt_class), len(pred_class)
        # Ground-truth rows: its segments, then one crowd region per class, then void.
        unlisted = gt_unit == g
        crowd_class = np.zeros(0, np.int64)
        if crowd is not None:
            on_crowd = unlisted & (crowd >= 0)
            crowd_class, region = np.unique(crowd[on_crowd], return_inverse=True)
            gt_unit[on_crowd] = g + region
            unlisted &= ~on_crowd
        void = g + len(crowd_class)
        gt_unit[unlisted] = void
        inter = np.bincount((gt_unit * (p + 1) + pred_unit).ravel(), minlength=(void + 1) * (p + 1))
        inter = inter.reshape(void + 1, p + 1)
        gt_area, pred_area, on_void = inter[:g].sum(1), inter[:, :p].sum(0), inter[void, :p]
        pairs = inter[:g, :p]
        union = gt_area[:, None] + pred_area[None, :] - pairs - on_void[None, :]
        iou = np.divide(pairs, union, out=np.zeros(pairs.shape), where=pairs > 0)
        # IoU > 0.5 leaves at most one match in each row and column
        matched = (iou > 0.5) & (gt_class[:, None] == pred_class[None, :])
        rows, cols = np.nonzero(matched)
        np.add.at(self._tp, gt_class[rows], 1)
        np.add.at(self._iou, gt_class[rows], iou[rows, cols])
        np.add.at(self._fn, gt_class[(gt_area > 0) & ~matched.any(1)], 1)
        ignored = on_void.copy()
        for k, class_id in enumerate(crowd_class):
            ignored += np.where(pred_class == class_id, inter[g + k, :p], 0)
        np.add.at(self._fp, pred_class[(pred_area > 0) & ~matched.any(0) & (2 * ignored <= pred_area)], 1)
        self.frames += 1

    def _units(self, label_map: np.ndarray, segments: Segments) -> tuple[np.ndarray, np.ndarray]:
        """The segments as counted: each pixel's (U where no segment is) and the U classes. A
        thing segment is one; a class's stuff segments are one together."""
        ids = segments.ids.astype(np.int64)
        if len(ids) and ids.min() < 0:
            raise ValueError(f"segment ids must be >= 0, got {int(ids.min())}")
        classes: list[int] = []
        stuff_unit: dict[int, int] = {}
        row_unit = np.zeros(len(ids), np.int64)
        for row, class_id in enumerate(segments.class_ids.tolist()):
            unit = stuff_unit.get(class_id)
            if unit is None:
                unit = len(classes)
                classes.append(class_id)
                if class_id in self._stuff:
                    stuff_unit[class_id] = unit
            row_unit[row] = unit
        top = int(ids.max()) if len(ids) else 0
        # index id + 1 for listed ids, 0 for -1 and for anything unlisted or out of range
        lookup = np.full(top + 3, len(classes), np.int64)
        lookup[ids + 1] = row_unit
        return lookup[np.clip(label_map.astype(np.int64), -1, top + 1) + 1], np.array(classes, np.int64)

    def summary(self) -> dict:
        """PQ/SQ/RQ over all classes, things and stuff, plus ``per_class`` and ``frames``.

        Each average is over the classes that occurred (a true positive, false positive or false
        negative somewhere); a group with no such class reads NaN. ``per_class`` maps class id to
        its pq, sq, rq, tp, fp, fn.
        """
        rows = {}
        for class_id in self.thing_ids + self.stuff_ids:
            tp, fp, fn = int(self._tp[class_id]), int(self._fp[class_id]), int(self._fn[class_id])
            sq = float(self._iou[class_id] / tp) if tp else 0.0
            rq = tp / (tp + 0.5 * fp + 0.5 * fn) if tp + fp + fn else 0.0
            rows[class_id] = {"pq": sq * rq, "sq": sq, "rq": rq, "tp": tp, "fp": fp, "fn": fn}
        result: dict = {}
        groups = {"": self.thing_ids + self.stuff_ids, "_things": self.thing_ids, "_stuff": self.stuff_ids}
        for group, ids in groups.items():
            seen = [rows[c] for c in ids if rows[c]["tp"] + rows[c]["fp"] + rows[c]["fn"] > 0]
            for key in ("pq", "sq", "rq"):
                result[key + group] = float(np.mean([r[key] for r in seen])) if seen else float("nan")
        result["per_class"] = rows
        result["frames"] = self.frames
        return result


def panoptic_quality(
    predictions: Sequence[FrameResult],
    truths: Sequence[FrameResult],
    thing_ids: Iterable[int],
    stuff_ids: Iterable[int],
) -> dict:
    """PQ of predicted against ground-truth frames, matched frame by frame; see ``PanopticTally``."""
    if len(predictions) != len(truths):
        raise ValueError("predictions and ground truth must list the same number of frames")
    tally = PanopticTally(thing_ids, stuff_ids)
    for prediction, truth in zip(predictions, truths):
        tally.add(prediction, truth)
    return tally.summary()


def evaluate_segmenter(
    segment_fn: Callable[[list[np.ndarray]], list[FrameResult]],
    seeds: Sequence[int],
    width: int,
    height: int,
    num_frames: int,
    label_set: LabelSet,
    batch_size: int = 4,
    progress: bool = True,
    frames: Iterable[tuple[np.ndarray, FrameResult] | tuple[np.ndarray, FrameResult, np.ndarray]] | None = None,
    truth_labels: LabelSet | None = None,
) -> dict:
    """PQ of ``segment_fn`` over the first ``num_frames`` frames of each synthetic scene in ``seeds``
    (or over ``frames``, when given: pairs of an image and its ground truth, or triples adding its
    crowd regions as ``PanopticTally.add`` takes them, ``CocoPanopticDataset.scored_frames``').

    ``segment_fn`` takes a list of RGB uint8 frames and returns one prediction per frame; it is
    called with up to ``batch_size`` frames at a time. ``label_set`` is the one the segmenter
    predicts in; it must be the classes of the ground truth: ``truth_labels`` (``frames`` of
    one's own), else the synthetic scenes'. Returns pq, sq, rq and their ``_things`` /
    ``_stuff`` variants, ``per_class`` and ``frames``.
    """
    to_model = None  # the ground truth's class ids as the model's, where the two lists differ
    if truth_labels is not None:
        if (label_set.names, label_set.isthing) != (truth_labels.names, truth_labels.isthing):
            to_model = truth_classes_as_model(label_set, truth_labels)
            listed = np.isin(np.arange(len(label_set.names)), to_model)  # the model's classes the truth has
    elif not _synthetic_classes(label_set):
        raise ConfigError(
            f"the model predicts the {label_set.name!r} classes but synthetic scenes are labelled with "
            f"the {LABEL_SET!r} ones; evaluate a model trained on synthetic scenes"
        )
    tally = PanopticTally(label_set.thing_ids, label_set.stuff_ids)
    semantic = MeanIoU(len(label_set.names))
    total = None if frames is not None else len(seeds) * num_frames
    frames = iter(frames) if frames is not None else _frames(seeds, width, height, num_frames)
    # disable=None: a bar on a terminal only (a log file gets no carriage-return lines)
    with tqdm(total=total, desc="evaluate", unit="frame", file=sys.stderr, disable=bars_off() if progress else True,
              **bar_shape()) as bar:
        while batch := [item for _, item in zip(range(batch_size), frames)]:
            predictions = segment_fn([image for image, *_ in batch])
            if len(predictions) != len(batch):
                raise ValueError(f"segment_fn returned {len(predictions)} predictions for {len(batch)} frames")
            if to_model is not None:
                batch = [_in_model_classes(to_model, *item) for item in batch]
                predictions = [_listed_only(prediction, listed) for prediction in predictions]
            for prediction, (_, truth, *crowd) in zip(predictions, batch):
                tally.add(prediction, truth, *crowd)
                semantic.add(*class_maps(prediction, truth, *crowd))
            bar.update(len(batch))
    result = tally.summary()
    ious = semantic.summary()
    result["miou"], result["pixel_accuracy"] = ious["miou"], ious["pixel_accuracy"]
    for class_id, row in result["per_class"].items():
        row["iou"] = ious["per_class"].get(class_id)  # None: the class in neither map
    return result


NAMED_CLASSES = 12  # a refusal names at most this many of the model's classes (COCO's has 133)


def truth_classes_as_model(model: LabelSet, truth: LabelSet) -> np.ndarray:
    """Each ground-truth class's id among the model's, matched by name (case and surrounding
    spaces aside), thing with thing and stuff with stuff: the ground truth may list its classes
    in another order, or only some of the model's (a COCO model scored on pictures labelled with
    three of its classes). A class the model lacks, or one of another kind, is a ConfigError."""
    known = {}
    for class_id, name in enumerate(model.names):
        known.setdefault(name.strip().casefold(), class_id)
    mapped, missing, other_kind = [], [], []
    for name, isthing in zip(truth.names, truth.isthing):
        class_id = known.get(name.strip().casefold())
        if class_id is None:
            missing.append(name)
        elif bool(model.isthing[class_id]) != bool(isthing):
            other_kind.append(f"{name} ({'thing' if isthing else 'stuff'} in the ground truth)")
        mapped.append(-1 if class_id is None else class_id)
    if missing or other_kind:
        said = []
        if missing:
            import difflib

            near = {name: difflib.get_close_matches(name.strip().casefold(), list(known), n=1) for name in missing}
            hints = [f"{name} (the model's {match[0]}?)" if match else name for name, match in near.items()]
            shown = ", ".join(model.names[:NAMED_CLASSES]) + (f" and {len(model.names) - NAMED_CLASSES} more"
                                                               if len(model.names) > NAMED_CLASSES else "")
            said.append(f"the ground truth's classes {', '.join(hints)} are not among the model's ({shown})")
        if other_kind:
            said.append(f"{', '.join(other_kind)} the model has as the other kind")
        raise ConfigError("; ".join(said) + " — evaluate the model trained on it, with the labels file its training "
                          "wrote, or name the ground truth's categories as the model's classes")
    return np.array(mapped, np.int64)


def _in_model_classes(to_model: np.ndarray, image: np.ndarray, truth: FrameResult, crowd: np.ndarray | None = None):
    """A frame of ground truth with its classes (and its crowd regions') as the model's ids."""
    segments = truth.segments[np.arange(len(truth.segments))]
    segments.class_ids = to_model[segments.class_ids].astype(segments.class_ids.dtype)
    truth = FrameResult(truth.source, truth.index, truth.width, truth.height, truth.label_map, segments)
    if crowd is None:
        return image, truth
    return image, truth, np.where(crowd >= 0, to_model[np.maximum(crowd, 0)], -1)


def _listed_only(prediction: FrameResult, listed: np.ndarray) -> FrameResult:
    """A prediction whose segments of a class the ground truth does not list are unlabelled."""
    keep = listed[prediction.segments.class_ids]
    if keep.all():
        return prediction
    label_map = np.where(np.isin(prediction.label_map, prediction.segments.ids[~keep]), -1, prediction.label_map)
    return FrameResult(prediction.source, prediction.index, prediction.width, prediction.height, label_map,
                       prediction.segments[keep])


def class_maps(prediction: FrameResult, truth: FrameResult, crowd: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's class in the prediction and in the ground truth (-1: no segment; in the truth,
    void), a crowd region's pixels of its class: what semantic mIoU compares."""
    predicted = class_map(prediction.label_map, prediction.segments.ids, prediction.segments.class_ids)
    true = class_map(truth.label_map, truth.segments.ids, truth.segments.class_ids)
    if crowd is not None:
        true = np.where(crowd >= 0, crowd, true)
    return predicted, true


def _frames(seeds: Sequence[int], width: int, height: int, num_frames: int) -> Iterator[tuple[np.ndarray, FrameResult]]:
    for seed in seeds:
        yield from synthetic_clip(width, height, num_frames, seed)


def clip_truth(video: Path, tracking: bool = False) -> Path:
    """The ground truth beside a clip: ``<stem>_truth.npz`` (a synthetic clip's, as
    ``connectors.synthetic.write_clip`` writes it), or with ``tracking`` ``<stem>_truth.txt``
    (MOTS: tracks, without the model's classes or stuff). Anything else is a ConfigError."""
    npz, mots = truth_path(video), video.with_name(f"{video.stem}_truth.txt")
    if not video.is_file():
        raise ConfigError(f"--clips {video}: no such file")
    if npz.exists():
        return npz
    if mots.exists():
        if tracking:
            return mots
        raise ConfigError(f"{video}: its ground truth {mots.name} is MOTS (tracks, without the model's classes or "
                          "stuff), which scores tracking — add --tracking")
    raise ConfigError(f"{video}: no ground truth beside it — {npz.name} (a synthetic clip's)"
                      + (f" or {mots.name} (MOTS: one object's mask a line)" if tracking else ""))


def truth_path(video: Path) -> Path:
    """Where the ground truth of a clip written by ``connectors.synthetic.write_clip`` is kept by
    convention: ``<stem>_truth.npz`` beside it."""
    return video.with_name(f"{video.stem}_truth.npz")


FRAMES_PER_SEED = 50  # evaluate's --frames when it renders scenes
DEFAULT_SEEDS, DEFAULT_SIZE = (0, 1, 2), (640, 480)  # its --seeds and --size


def clip_frames(videos: Sequence[Path], per_clip: int | None = None) -> Iterator[tuple[np.ndarray, FrameResult]]:
    """The decoded frames of encoded synthetic clips with their ground truth: what a pipeline
    reading those files sees, compression included (the first ``per_clip`` of each; None: all)."""
    from segstream.connectors.file_source import FileSource
    from segstream.connectors.synthetic import load_truth

    for video in videos:
        truths = load_truth(truth_path(Path(video)))
        source = FileSource(Path(video).stem, str(video), max_frames=per_clip)
        try:
            for frame in source.frames():
                if frame.index >= len(truths):
                    raise ConfigError(f"{video} has more frames than its ground truth {truth_path(Path(video))}")
                yield frame.image, truths[frame.index]
        finally:
            source.close()


def _synthetic_classes(label_set) -> bool:
    """Whether a preset's label set (a shipped one's name, or a ``LabelSet``) is the synthetic scenes' classes."""
    if isinstance(label_set, str):
        return label_set == LABEL_SET
    return (label_set.names, label_set.isthing) == (tuple(c.name for c in CLASSES), tuple(c.isthing for c in CLASSES))


def evaluation_model_config(args):
    """The ``ModelConfig`` of ``segstream evaluate``'s options. Bad options (a missing checkpoint,
    an unknown device, a preset of another label set) are a ConfigError naming the option, raised
    before any weights are read or downloaded."""
    from pydantic import ValidationError

    from segstream.models.presets import PRESETS, SYNTHETIC_TINY
    from segstream.pipeline.config import ModelConfig, preset_of_checkpoint, weights_file

    from segstream.pipeline.plugins import load_plugins

    # a checkpoint segstream's training wrote says its preset (a SeNaTra one needs no --preset)
    weights = weights_file(str(args.checkpoint)) if args.checkpoint is not None else None
    preset = args.preset or (weights and preset_of_checkpoint(weights)) or SYNTHETIC_TINY.name
    if preset not in PRESETS and not args.preset:
        preset = SYNTHETIC_TINY.name
    if preset not in PRESETS:  # a plugin's, maybe
        load_plugins()
    own_data = getattr(args, "data", None) is not None
    if not own_data and preset in PRESETS and not _synthetic_classes(PRESETS[preset].label_set) \
            and getattr(args, "labels", None) is None:
        synthetic = ", ".join(name for name, p in PRESETS.items() if _synthetic_classes(p.label_set))
        raise ConfigError(
            f"--preset {preset}: it predicts the {PRESETS[preset].label_set!r} classes but synthetic scenes "
            f"are labelled with the {LABEL_SET!r} ones — use a preset trained on synthetic scenes ({synthetic})"
        )
    values = {"preset": preset, "checkpoint": args.checkpoint, "device": args.device,
              "precision": args.precision, "postprocess": args.postprocess}
    if getattr(args, "labels", None) is not None:
        values["labels"] = str(args.labels)
    try:
        model_cfg = ModelConfig(**values)
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            field = str(problem["loc"][0]) if problem["loc"] else ""
            message = problem["msg"].removeprefix("Value error, ")
            if field == "checkpoint":  # the config's words for leaving it out
                message = message.replace("use null for the preset's weights", "leave --checkpoint out for the "
                                          "preset's own weights")
            lines.append(f"--{field} {values.get(field)}: {message}" if field in values else message)
        raise ConfigError("\n".join(lines)) from None
    from segstream.pipeline.model_factory import check_model_config

    try:
        check_model_config(model_cfg)
    except ConfigError as error:  # said in the command's words (found probing: "remove model.postprocess")
        said = str(error)
        for field in values:
            said = re.sub(rf"\bmodel\.{field}\b", f"--{field}", said)
        raise ConfigError(said) from None
    return model_cfg


def json_safe(averages: dict) -> dict:
    """PQ's averages for JSON: an average over no class (NaN, which is no JSON) is null."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in averages.items()}


def main_evaluate(args) -> int:
    """``segstream evaluate``: PQ of a synthetic-scene model on held-out seeds, printed as a
    table and one JSON line of its averages, or (``--json``) as one JSON object alone."""
    import json

    from segstream.pipeline.model_factory import build_segmenter, how_it_ran

    from segstream.connectors.coco_panoptic import CocoPanopticDataset

    data = getattr(args, "data", None)
    clips = getattr(args, "clips", None)
    if data is not None and clips:
        raise ConfigError("--data and --clips: give one (pictures of your own, or encoded synthetic clips)")
    for option in ("masks", "images"):
        if getattr(args, option, None) is not None and data is None:
            raise ConfigError(f"--{option} goes with --data (pictures of your own)")
    for option, given in (("--seeds", args.seeds), ("--size", args.size)):
        if given is not None and (data is not None or clips):
            # found reviewing: they were ignored without a word
            raise ConfigError(f"{option} is for rendered synthetic scenes; with {'--data' if data else '--clips'} the "
                              "frames are those given")
    args.seeds = args.seeds if args.seeds is not None else list(DEFAULT_SEEDS)
    args.size = args.size if args.size is not None else list(DEFAULT_SIZE)
    dataset = CocoPanopticDataset(data, args.masks, args.images) if data is not None else None
    for video in clips or ():  # said before the model loads
        clip_truth(Path(video))
    model_cfg = evaluation_model_config(args)
    width, height = args.size
    per_seed = args.frames or FRAMES_PER_SEED
    if dataset is not None:
        what = f"{len(dataset)} pictures of {data}"
    elif clips:
        what = f"clips {' '.join(str(c) for c in clips)}"
    else:
        what = f"{len(args.seeds) * per_seed} frames of {len(args.seeds)} synthetic scenes at {width}x{height}"
    # said at once: the model takes seconds to load, and the progress bar shows on a terminal only
    print(f"segstream: evaluating {model_cfg.preset} on {what}", file=sys.stderr, flush=True)
    segmenter = build_segmenter(model_cfg)
    frames: Iterable | None = None  # the synthetic scenes, rendered
    if clips:
        frames = clip_frames(clips, args.frames)
    elif dataset is not None:
        frames = dataset.scored_frames(args.frames)  # with crowd regions, which COCO's PQ counts its own way
    result = evaluate_segmenter(segmenter.segment, args.seeds, width, height, per_seed, segmenter.labels,
                                frames=frames, truth_labels=dataset.labels if dataset is not None else None)
    if dataset is not None:
        scenes = f"{data}"
    else:
        scenes = f"clips {' '.join(str(c) for c in clips)}" if clips else (
            f"{width}x{height}, seeds {' '.join(map(str, args.seeds))}")
    precision, postprocess = getattr(segmenter, "precision", None), getattr(segmenter, "postprocess", None)
    names = segmenter.labels.names
    # which weights were measured: the preset's own, or a file (two runs of one preset told apart)
    checkpoint = str(Path(model_cfg.checkpoint).resolve()) if model_cfg.checkpoint not in (None, "random") and \
        "://" not in str(model_cfg.checkpoint) else model_cfg.checkpoint
    if getattr(args, "json", False):
        where = ({"data": str(data)} if dataset is not None else {"clips": [str(c) for c in clips]} if clips
                 else {"size": [width, height], "seeds": list(args.seeds)})
        print(json.dumps({
            "model": segmenter.name, "checkpoint": checkpoint, "precision": precision, "postprocess": postprocess,
            **where,
            # an average of no class (no stuff in the scenes) is null: NaN is no JSON
            **json_safe({k: v for k, v in result.items() if k != "per_class"}),
            # a class neither in the scenes nor predicted is left out, as it is of the averages
            "per_class": {names[class_id]: stats for class_id, stats in sorted(result["per_class"].items())
                          if stats["tp"] + stats["fp"] + stats["fn"]},
            "definitions": PQ_DEFINITIONS,
        }))
        return 0
    how = how_it_ran(precision, postprocess)
    weights = f" ({checkpoint})" if checkpoint is not None else ""
    print(f"model {segmenter.name}{weights}{how}: {result['frames']} frames, {scenes}")
    print(f"{'':8}{'PQ':>8}{'SQ':>8}{'RQ':>8}")
    for group, suffix in (("all", ""), ("things", "_things"), ("stuff", "_stuff")):
        row = [result[f"{m}{suffix}"] for m in ("pq", "sq", "rq")]
        print(f"{group:8}" + "".join(f"{100 * v:8.1f}" for v in row))
    print(f"semantic mIoU {100 * result['miou']:.1f}, pixel accuracy {100 * result['pixel_accuracy']:.1f}")
    # ground truth listing some of the model's classes: the others are none of its business (found
    # reviewing: 130 lines of COCO's classes "not in these scenes" for pictures labelled with 3)
    listed = ({name.strip().casefold() for name in dataset.labels.names} if dataset is not None else None)
    for class_id, stats in sorted(result["per_class"].items()):
        if listed is not None and names[class_id].strip().casefold() not in listed:
            continue
        if stats["tp"] + stats["fp"] + stats["fn"] == 0:
            print(f"  {names[class_id]:10} not in these scenes, nor predicted (left out of the averages)")
            continue
        print(f"  {names[class_id]:10} PQ {100 * stats['pq']:5.1f}  (tp {stats['tp']}, fp {stats['fp']}, fn {stats['fn']})"
              + (f"  IoU {100 * stats['iou']:5.1f}" if stats["iou"] is not None else ""))
    # NaN is no JSON: an average of no class is null, as with --json (found probing: the line said NaN)
    print(json.dumps(json_safe({k: v for k, v in result.items() if k != "per_class"})))
    return 0
