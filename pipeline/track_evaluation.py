"""Tracking quality on held-out synthetic scenes, or on videos with their tracks' ground truth
(MOTS text, ``connectors.mots``): IDF1, HOTA and ID switches (``segstream evaluate --tracking``).

The scenes' ground truth gives every thing its lifetime track id (a MOTS file: its object id). Three trackings are scored on
things, against the ground-truth masks, with TrackEval's HOTA, Identity (IDF1) and CLEAR (ID
switches, MOTA) metrics over per-frame mask IoU:

- ``noisy_truth``: the tracker on the ground-truth masks made imperfect: each mask eroded or
  dilated by a few pixels, 10% of them dropped at random, on top of the scenes' own occlusions.
  No embeddings: this measures matching on masks, motion and class alone. It is scored against
  the things the tracker was given (a dropped mask cannot get an id, so against every thing
  IDF1 could not pass about 0.947), and also against every thing (``noisy_truth_all``).
- ``model``: the tracker on the shipped model's segments (masks, classes, query embeddings).
- ``oracle``: the same model segments, each ground-truth thing's identity given to the predicted
  thing that overlaps it most (a split thing's other parts get ids of their own). The gap
  between ``model`` and ``oracle`` is what the tracker itself loses.

TrackEval's metrics are called directly, without its loaders, so their input checks are made
here: a track id given to two things in one frame is refused (``TrackedScene.add``).

TrackEval is an optional dependency (``pip install -e ".[eval]"`` in the checkout): its metrics are the
reference implementations of HOTA and IDF1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from pydantic import Field
from tqdm import tqdm

from segstream.connectors.errors import ConfigError
from segstream.connectors.synthetic import synthetic_clip
from segstream.connectors.terminal import bar_shape, bars_off
from segstream.models.processing import frame_label_map
from segstream.models.results import NO_TRACK, FrameResult
from segstream.models.tracking import SegmentTracker, TrackerSettings
from segstream.pipeline.config import Strict, TrackingConfig, apply_override, config_data, validate_config
from segstream.pipeline.evaluation import FRAMES_PER_SEED
from segstream.pipeline.tracking import tracker_settings

DROP_SHARE = 0.1
SCENE_FPS = 25.0  # the scenes' frame rate: their frames' times, which tracking.max_lost_s measures


def noisy_detections(truth: FrameResult, rng: np.random.Generator, drop: float = DROP_SHARE) -> FrameResult:
    """The ground truth as an imperfect detector would give it: each thing's mask eroded or
    dilated by 1 to ``height / 160`` pixels (at least 1) or left alone, ``drop`` of the things
    left out, track ids removed. Stuff is kept as it is; painting in random order settles where
    dilated masks meet."""
    label_map = truth.label_map
    segments = truth.segments
    out = np.where(np.isin(label_map, segments.ids[~segments.isthing]), label_map, -1).astype(np.int32)
    reach = max(1, round(truth.height / 160))
    keep = []
    rows = [i for i in range(len(segments)) if segments.isthing[i]]
    for i in rng.permutation(rows) if rows else []:
        if rng.random() < drop:
            continue
        mask = (label_map == segments.ids[i]).astype(np.uint8)
        radius = int(rng.integers(1, reach + 1))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        change = rng.integers(0, 3)
        if change == 1:
            mask = cv2.erode(mask, kernel)
        elif change == 2:
            mask = cv2.dilate(mask, kernel)
        if mask.any():
            out[mask.astype(bool)] = segments.ids[i]
            keep.append(i)
    present = [i for i in range(len(segments)) if not segments.isthing[i] or i in keep]
    present = [i for i in present if (out == segments.ids[i]).any()]
    chosen = segments[np.array(present, np.int64)]
    chosen.track_ids = np.full(len(chosen), NO_TRACK, np.int64)
    chosen.track_ages = np.zeros(len(chosen), np.int32)
    # Areas, boxes and centroids of the masks as changed (ground-truth ids are 0..S-1).
    _, areas, boxes, centroids = frame_label_map(out, len(segments), out.shape)
    chosen.areas, chosen.boxes, chosen.centroids = areas[chosen.ids], boxes[chosen.ids], centroids[chosen.ids]
    return FrameResult(truth.source, truth.index, truth.width, truth.height, out, chosen)


def oracle_identities(prediction: FrameResult, truth: FrameResult, fresh: Iterable[int]) -> np.ndarray:
    """The oracle's track id of each predicted segment. Each predicted thing is assigned to the
    ground-truth thing it shares most pixels with; of those assigned to one, the one sharing most
    takes its track id (a split thing's other parts are false positives). Every other segment,
    stuff too, gets the next id from ``fresh``: no id is given twice in a frame."""
    inter = _intersections(truth, prediction)
    inter[~truth.segments.isthing] = 0
    inter[:, ~prediction.segments.isthing] = 0
    owner = np.full(len(prediction.segments), -1)  # the ground-truth row whose id each segment takes
    if inter.size:
        nearest, overlaps = inter.argmax(0), inter.max(0) > 0
        for row in np.unique(nearest[overlaps]):
            claims = np.flatnonzero(overlaps & (nearest == row))
            owner[claims[int(inter[row, claims].argmax())]] = row
    return np.array([truth.segments.track_ids[row] if row >= 0 else next(fresh) for row in owner], np.int64)


def _intersections(truth: FrameResult, prediction: FrameResult) -> np.ndarray:
    """Pixels shared by each ground-truth segment (rows) and predicted segment (columns)."""
    g, p = len(truth.segments), len(prediction.segments)
    gt_code = _codes(truth.label_map, truth.segments.ids)
    pred_code = _codes(prediction.label_map, prediction.segments.ids)
    table = np.bincount((gt_code * (p + 1) + pred_code).ravel(), minlength=(g + 1) * (p + 1))
    return table.reshape(g + 1, p + 1)[:g, :p].astype(np.float64)


def _codes(label_map: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Each pixel's row in ``ids`` (len(ids) for none)."""
    top = max(int(ids.max(initial=-1)), int(label_map.max(initial=-1))) + 2
    lookup = np.full(top, len(ids), np.int64)
    lookup[ids.astype(np.int64) + 1] = np.arange(len(ids))
    return lookup[label_map.astype(np.int64) + 1]


@dataclass
class TrackedScene:
    """One scene's things, frame by frame, in the form TrackEval's metrics take."""

    gt_ids: list[np.ndarray] = field(default_factory=list)
    tracker_ids: list[np.ndarray] = field(default_factory=list)
    similarity: list[np.ndarray] = field(default_factory=list)

    def add(self, truth: FrameResult, prediction: FrameResult, track_ids: np.ndarray, given_only: bool = False,
            ignore: np.ndarray | None = None) -> None:
        """One frame: ground-truth things against the predicted segments that carry an id.
        ``given_only`` scores only the things the tracker was given (prediction segment ids are
        ground-truth ids, as in ``noisy_detections``). A predicted thing more than half on
        ``ignore`` (a MOTS file's ignore regions) is not scored, as TrackEval's MOTS loaders do."""
        inter = _intersections(truth, prediction)
        things = truth.segments.isthing
        if given_only:
            things = things & np.isin(truth.segments.ids, prediction.segments.ids)
        gt_rows = np.flatnonzero(things)
        codes = _codes(prediction.label_map, prediction.segments.ids)
        all_area = np.bincount(codes.ravel(), minlength=len(prediction.segments) + 1)
        scored = prediction.segments.isthing & (track_ids != NO_TRACK)
        if ignore is not None:
            on_ignore = np.bincount(codes[ignore], minlength=len(prediction.segments) + 1)
            scored &= ~(2 * on_ignore[:-1] > all_area[:-1])
        pred_rows = np.flatnonzero(scored)
        inter = inter[np.ix_(gt_rows, pred_rows)]
        gt_area = truth.segments.areas[gt_rows].astype(np.float64)
        pred_area = all_area[pred_rows].astype(np.float64)
        union = gt_area[:, None] + pred_area[None, :] - inter
        gt_ids, tracker_ids = truth.segments.track_ids[gt_rows].astype(np.int64), track_ids[pred_rows].astype(np.int64)
        # TrackEval's loaders refuse these; its metrics, called directly, would count such an id once
        for what, ids in (("ground-truth", gt_ids), ("tracker", tracker_ids)):
            values, counts = np.unique(ids, return_counts=True)
            if (counts > 1).any():
                raise ValueError(f"frame {truth.index}: {what} track ids {values[counts > 1].tolist()} are given to "
                                 "more than one thing")
        self.gt_ids.append(gt_ids)
        self.tracker_ids.append(tracker_ids)
        self.similarity.append(np.where(union > 0, inter / np.maximum(union, 1), 0.0))

    def trackeval_data(self) -> dict:
        """TrackEval's per-sequence dict: ids renumbered 0..N-1 within the sequence."""
        gt_map = {v: i for i, v in enumerate(sorted({int(x) for ids in self.gt_ids for x in ids}))}
        tr_map = {v: i for i, v in enumerate(sorted({int(x) for ids in self.tracker_ids for x in ids}))}
        return {
            "num_timesteps": len(self.gt_ids),
            "num_gt_ids": len(gt_map),
            "num_tracker_ids": len(tr_map),
            "num_gt_dets": int(sum(len(ids) for ids in self.gt_ids)),
            "num_tracker_dets": int(sum(len(ids) for ids in self.tracker_ids)),
            "gt_ids": [np.array([gt_map[int(x)] for x in ids], np.int64) for ids in self.gt_ids],
            "tracker_ids": [np.array([tr_map[int(x)] for x in ids], np.int64) for ids in self.tracker_ids],
            "similarity_scores": self.similarity,
        }


def require_trackeval() -> None:
    """TrackEval is installed, or a ConfigError saying how to install it."""
    try:
        import trackeval.metrics  # noqa: F401
    except ImportError:
        raise ConfigError(
            "tracking metrics need TrackEval, which is not installed here — pip install trackeval (segstream's eval extra)"
        ) from None


def tracking_definitions() -> dict:
    """What the tracking metrics are, said in ``evaluate --tracking --json`` (README: "What evaluate counts")."""
    require_trackeval()
    import trackeval

    return {
        "scored": "things only, any class against any class",
        "similarity": "mask IoU per frame; IDF1 and MOTA match at IoU >= 0.5",
        "hota": "HOTA, DetA and AssA averaged over alpha 0.05 to 0.95",
        "trackeval": trackeval.__version__,
        "oracle": "a ground-truth thing's id on the predicted thing overlapping it most, fresh ids on the others",
    }


def tracking_metrics(sequences: Sequence[TrackedScene]) -> dict:
    """HOTA (with DetA, AssA), IDF1 (with IDP, IDR), ID switches, MOTA over all sequences,
    combined as TrackEval combines sequences."""
    require_trackeval()
    from trackeval.metrics import CLEAR, HOTA, Identity

    metrics = [HOTA(), Identity({"PRINT_CONFIG": False}), CLEAR({"PRINT_CONFIG": False})]
    per_metric = {}
    for metric in metrics:
        results = {str(i): metric.eval_sequence(seq.trackeval_data()) for i, seq in enumerate(sequences)}
        per_metric[metric.get_name()] = metric.combine_sequences(results)
    hota, identity, clear = per_metric["HOTA"], per_metric["Identity"], per_metric["CLEAR"]
    return {
        "hota": float(np.mean(hota["HOTA"])),
        "deta": float(np.mean(hota["DetA"])),
        "assa": float(np.mean(hota["AssA"])),
        "idf1": float(identity["IDF1"]),
        "idp": float(identity["IDP"]),
        "idr": float(identity["IDR"]),
        "id_switches": int(clear["IDSW"]),
        "mota": float(clear["MOTA"]),
        "gt_tracks": int(sum(len({int(x) for ids in s.gt_ids for x in ids}) for s in sequences)),
        "frames": int(sum(len(s.gt_ids) for s in sequences)),
    }


def _track(tracker: SegmentTracker, result: FrameResult, time_s: float) -> np.ndarray:
    """A frame's track ids, ``time_s`` its time (``max_lost_s`` measures it)."""
    seg = result.segments
    update = tracker.update(result.index, result.segment_map, seg.ids, seg.class_ids, seg.isthing, seg.embeddings,
                            seg.boxes, time_s)
    return update.track_ids


# One sequence's frames for evaluate_tracking: (RGB image, ground truth, time in seconds, ignore regions or None)
TrackedFrame = tuple[np.ndarray, FrameResult, float, "np.ndarray | None"]


def scene_sequences(seeds: Sequence[int], width: int, height: int, num_frames: int) -> list[Iterator[TrackedFrame]]:
    """The synthetic scenes of ``seeds`` as evaluate_tracking's sequences (frame times at SCENE_FPS)."""
    return [((image, truth, truth.index / SCENE_FPS, None)
             for image, truth in synthetic_clip(width, height, num_frames, seed, SCENE_FPS)) for seed in seeds]


def clip_sequences(videos: Sequence[Path], per_clip: int | None = None, first_frame: int = 0
                   ) -> list[Iterator[TrackedFrame]]:
    """Encoded videos as evaluate_tracking's sequences, each frame's ground truth from the
    video's ``<stem>_truth.npz`` (a synthetic clip's) or ``<stem>_truth.txt`` (MOTS), its time
    the decoded frame's."""
    return [_clip_sequence(Path(video), per_clip, first_frame) for video in videos]


def _clip_sequence(video: Path, per_clip: int | None, first_frame: int) -> Iterator[TrackedFrame]:
    """The video's frames with their ground truth, read (and its mistakes said) at once, before
    any model work; the frames are decoded as they are taken."""
    from segstream.connectors.mots import read_mots
    from segstream.connectors.synthetic import load_truth
    from segstream.pipeline.evaluation import clip_truth

    truth = clip_truth(video, tracking=True)
    if truth.suffix == ".npz":
        return _clip_frames(video, per_clip, truth, load_truth(truth), None)
    return _clip_frames(video, per_clip, truth, None, read_mots(truth, first_frame), first_frame)


def _clip_frames(video: Path, per_clip: int | None, truth_file: Path, truths: list[FrameResult] | None,
                 objects: dict | None, first_frame: int = 0) -> Iterator[TrackedFrame]:
    from segstream.connectors.file_source import FileSource
    from segstream.connectors.mots import mots_truth

    source = FileSource(video.stem, str(video), max_frames=per_clip)
    decoded = 0
    try:
        for frame in source.frames():
            decoded = frame.index + 1
            height, width = frame.image.shape[:2]
            if truths is not None:
                if frame.index >= len(truths):
                    raise ConfigError(f"{video} has more frames than its ground truth {truth_file}")
                truth, ignore = truths[frame.index], None
            else:
                truth, ignore = mots_truth(truth_file, objects.get(frame.index, ()), frame.index, height, width)
            # the frame's time (tracking.max_lost_s measures it); a file without timestamps: its index at 25 fps
            time_s = frame.pts_seconds if frame.pts_seconds is not None else frame.index / SCENE_FPS
            yield frame.image, truth, time_s, ignore
    finally:
        source.close()
    past = sorted(k for k in objects or () if k >= decoded)
    if past and per_clip is None:  # found reviewing: a file numbered from 1 was read one frame off, silently
        raise ConfigError(f"{truth_file}: its frame {past[-1] + first_frame} is past the video's last "
                          f"({decoded - 1 + first_frame}, {decoded} decoded) — "
                          + ("numbered from 1 (MOTSChallenge's)? give --truth-first-frame 1" if first_frame == 0
                             else "is it this video's?"))


def evaluate_tracking(
    seeds: Sequence[int],
    width: int,
    height: int,
    num_frames: int,
    settings: TrackerSettings = TrackerSettings(),
    segment_fn: Callable[[list[np.ndarray]], list[FrameResult]] | None = None,
    batch_size: int = 4,
    progress: bool = True,
    sequences: Sequence[Iterator[TrackedFrame]] | None = None,
) -> dict:
    """Tracking metrics on the first ``num_frames`` frames of each scene in ``seeds`` (or on
    ``sequences``, when given: ``clip_sequences``'), each a ``tracking_metrics`` dict:
    ``noisy_truth`` scores the tracker on the noisy ground truth against the things it was given
    (a dropped mask is the detector's miss, not the tracker's), ``noisy_truth_all`` the same
    against every thing; ``model`` and ``oracle`` come when ``segment_fn`` (RGB frames in,
    segmentations with embeddings out) is given."""
    noisy: list[TrackedScene] = []
    noisy_full: list[TrackedScene] = []
    model: list[TrackedScene] = []
    oracle: list[TrackedScene] = []
    total = None if sequences is not None else len(seeds) * num_frames
    if sequences is None:
        sequences = scene_sequences(seeds, width, height, num_frames)
    # disable=None: a bar on a terminal only (a log file or pipe gets no carriage-return lines)
    with tqdm(total=total, desc="evaluate tracking", unit="frame", file=sys.stderr,
              disable=bars_off() if progress else True, **bar_shape()) as bar:
        for number, clip in enumerate(sequences):
            rng = np.random.default_rng([seeds[number] if number < len(seeds) else number, 0x7EAC])
            noisy_tracker, model_tracker = SegmentTracker(settings), SegmentTracker(settings)
            noisy.append(TrackedScene())
            noisy_full.append(TrackedScene())
            model.append(TrackedScene())
            oracle.append(TrackedScene())
            fresh = iter(range(10**9, 2 * 10**9))
            while batch := [item for _, item in zip(range(batch_size), clip)]:
                for _, truth, time_s, ignore in batch:
                    detections = noisy_detections(truth, rng)
                    track_ids = _track(noisy_tracker, detections, time_s)
                    noisy[-1].add(truth, detections, track_ids, given_only=True, ignore=ignore)
                    noisy_full[-1].add(truth, detections, track_ids, ignore=ignore)
                if segment_fn is not None:
                    predictions = segment_fn([image for image, *_ in batch])
                    for prediction, (_, truth, time_s, ignore) in zip(predictions, batch):
                        prediction.index = truth.index
                        model[-1].add(truth, prediction, _track(model_tracker, prediction, time_s), ignore=ignore)
                        oracle[-1].add(truth, prediction, oracle_identities(prediction, truth, fresh), ignore=ignore)
                bar.update(len(batch))
    results = {"noisy_truth": tracking_metrics(noisy), "noisy_truth_all": tracking_metrics(noisy_full)}
    if segment_fn is not None:
        results["model"] = tracking_metrics(model)
        results["oracle"] = tracking_metrics(oracle)
    return results


class _TrackingSection(Strict):
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)


def evaluated_settings(config: Path | None, overrides: Sequence[str]) -> TrackerSettings:
    """The tracker settings ``evaluate --tracking`` scores: the ``tracking:`` section of
    ``config`` (the rest of it is not used), then ``--set tracking.KEY=VALUE`` overrides."""
    for override in overrides:
        if not override.strip().startswith("tracking."):
            raise ConfigError(f"--set {override}: evaluate --tracking takes tracker settings only "
                              "(tracking.KEY=VALUE, e.g. tracking.max_lost=60); the model is --preset/--checkpoint")
        if override.strip().partition("=")[0].strip() == "tracking.enabled":
            raise ConfigError(f"--set {override}: tracking.enabled turns a run's tracker on or off; evaluate "
                              "--tracking scores the tracker whatever it says — drop it")
    data: dict = {"tracking": {}}
    if config is not None:
        data = {"tracking": config_data(config).get("tracking") or {}}
    for override in overrides:
        apply_override(data, override)
    return tracker_settings(validate_config(data, schema=_TrackingSection).tracking)


def main_evaluate_tracking(args) -> int:
    """``segstream evaluate --tracking``: a table and one JSON line, or (``--json``) one JSON object alone."""
    import json

    from segstream.pipeline.evaluation import evaluation_model_config
    from segstream.pipeline.model_factory import build_segmenter

    settings = evaluated_settings(args.config, args.overrides)
    require_trackeval()  # before minutes of work, not after
    from segstream.pipeline.evaluation import DEFAULT_SEEDS, DEFAULT_SIZE

    clips = getattr(args, "clips", None)
    if clips:
        for option, given in (("--seeds", args.seeds), ("--size", args.size)):
            if given is not None:
                raise ConfigError(f"{option} is for rendered synthetic scenes; with --clips the frames are those given")
    # the clips' ground truth read before the model loads: its mistakes are said at once
    sequences = clip_sequences(clips, args.frames, getattr(args, "truth_first_frame", None) or 0) if clips else None
    segment_fn = None
    name = None
    if not args.no_model:
        segmenter = build_segmenter(evaluation_model_config(args))
        segment_fn, name = segmenter.segment, segmenter.name
    args.seeds = args.seeds if args.seeds is not None else list(DEFAULT_SEEDS)
    width, height = args.size if args.size is not None else DEFAULT_SIZE
    results = evaluate_tracking([] if clips else args.seeds, width, height, args.frames or FRAMES_PER_SEED,
                                settings=settings, segment_fn=segment_fn, sequences=sequences)
    changed = {k: v for k, v in asdict(settings).items() if v != getattr(TrackerSettings(), k)}
    if "model" in results and results["oracle"]["idf1"] > 0:
        results["model_vs_oracle_idf1"] = results["model"]["idf1"] / results["oracle"]["idf1"]
    if getattr(args, "json", False):  # "model" names the metrics on the model's segments, as in the JSON line
        where = ({"clips": [str(c) for c in clips]} if clips else {"size": [width, height], "seeds": list(args.seeds)})
        print(json.dumps({**results, "model_name": name, **where,
                          "tracker": asdict(settings), "definitions": tracking_definitions()}))
        return 0
    scenes = (f"clips {' '.join(str(c) for c in clips)}" if clips
              else f"{width}x{height}, seeds {' '.join(map(str, args.seeds))}")
    print(
        f"tracking: {results['noisy_truth']['frames']} frames, {scenes}"
        + (f", model {name}" if name else "")
        + (", tracker " + " ".join(f"{k}={v}" for k, v in changed.items()) if changed else ", default tracker")
    )
    print(f"{'':28}{'IDF1':>7}{'HOTA':>7}{'DetA':>7}{'AssA':>7}{'IDSW':>6}{'MOTA':>7}")
    rows = {"noisy_truth": "tracker, noisy ground truth", "noisy_truth_all": "  same, against all things",
            "model": "tracker, model segments", "oracle": "oracle, model segments"}
    for key, title in rows.items():
        if key in results:
            r = results[key]
            print(f"{title:28}" + "".join(f"{100 * r[m]:7.1f}" for m in ("idf1", "hota", "deta", "assa"))
                  + f"{r['id_switches']:6d}{100 * r['mota']:7.1f}")
    if "model_vs_oracle_idf1" in results:
        print(f"tracker / oracle IDF1 on the model's segments: {results['model_vs_oracle_idf1']:.3f}")
    print(json.dumps(results))
    return 0


def write_mots(jsonl: str | Path, out: str | Path, first_frame: int = 0, class_id: int | None = None,
               run: str | None = None) -> tuple[int, int]:
    """``segstream mots``: the tracked things of a JSONL file of entries (``FilesSink``'s, a
    batch's ``frames.jsonl``) as MOTS lines (``connectors.mots.mots_lines``) in ``out`` ("-":
    standard output), each frame numbered by its index plus ``first_frame``; of a file several
    runs appended to (each numbers its frames from 0), the run ``run`` names, as ``segstream
    render --run`` takes it (the latest by default, said). Returns (lines, frames). A file that
    is no JSONL of entries, or a class written as 10 (MOTS's ignore region), is a ConfigError,
    and nothing is written."""
    import contextlib
    import os
    import tempfile
    from collections import Counter

    from segstream.connectors.errors import WireFormatError
    from segstream.connectors.mots import IGNORE_CLASS, mots_lines
    from segstream.connectors.redis_wire import from_wire, read_entries
    from segstream.pipeline.render import StreamRun, pick_run

    jsonl = Path(jsonl)
    if not jsonl.is_file():
        raise ConfigError(f"{jsonl}: no such file — give a files sink's <source>.jsonl or a batch's frames.jsonl")
    try:
        entries = Counter(str(fields.get("run_id") or "") for fields in read_entries(jsonl))  # in order of first entry
        if not entries:
            raise ConfigError(f"{jsonl} holds no entries")
        chosen = pick_run([StreamRun(run_id, count, "", "") for run_id, count in entries.items()], str(jsonl), run,
                          "writing").run_id
        lines = frames = 0
        with contextlib.ExitStack() as stack:
            if str(out) == "-":
                target = sys.stdout
            else:  # written whole or not at all
                try:
                    handle, temporary = tempfile.mkstemp(prefix=f".{Path(out).name}.", dir=Path(out).parent)
                except OSError as error:
                    raise ConfigError(f"cannot write {out}: {error.strerror or error}") from None
                stack.callback(lambda: os.path.exists(temporary) and os.unlink(temporary))
                target = stack.enter_context(open(handle, "w", encoding="ascii"))
            for fields in read_entries(jsonl):
                if str(fields.get("run_id") or "") != chosen:
                    continue
                result = from_wire(fields)
                frames += 1
                seg = result.segments
                if class_id is None and (ignored := [str(label) for c, label, thing in
                                                     zip(seg.class_ids, seg.labels, seg.isthing)
                                                     if c == IGNORE_CLASS and thing]):
                    raise ConfigError(f"{ignored[0]} has the model's class id {IGNORE_CLASS}, which MOTS reads as an "
                                      "ignore region — give --class-id N to write every mask as class N")
                for line in mots_lines(result, result.index + first_frame, class_id):
                    target.write(line + "\n")
                    lines += 1
            if target is not sys.stdout:
                target.close()
                os.replace(temporary, out)
    except WireFormatError as error:
        raise ConfigError(f"{error} — segstream mots reads the frames' entries, not events") from None
    return lines, frames
