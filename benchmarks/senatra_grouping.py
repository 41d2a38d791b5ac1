"""The SeNaTra paper's claim, measured on held-out synthetic scenes.

    python benchmarks/senatra_grouping.py --uniform-checkpoint runs/synthetic_senatra_uniform_192.safetensors

1. Boundaries at an equal number of tokens: for each grouping level of the shipped SeNaTra, its
   hard segments (the published hierarchy, at frame size) against the uniform grid with the same
   token count (what strided downsampling gives at that level): achievable segmentation accuracy
   (ASA), boundary recall (BR, 2-pixel tolerance) and its converse, boundary precision (BP: ragged
   segments buy recall with boundaries where the truth has none), against the ground-truth
   panoptic segments.
2. Segmentation: mIoU (native semantic output: carried class logits) and PQ of the shipped model
   against the same backbone with strided-conv downsampling trained by the same recipe and
   budget (``scripts/train_senatra.py --downsampling uniform``); the uniform model is also scored
   with bilinear upsampling of its final class logits, a stronger baseline than its own hard grid.
3. Things from final tokens: PQ of things when each final token is given its true class, for each
   rule that turns touching same-class tokens into instances (alone, merged, or merged when their
   instance embeddings are close): the panoptic step measured apart from classification.
4. Forward cost: backbone (and whole-model) latency with grouping against uniform downsampling,
   same widths and depths, random weights, runs interleaved (the paper: grouping adds 20-40%
   backbone latency).

Not a test: prints tables to paste into docs/BENCHMARKS.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from segstream.connectors.checkpoints import load_senatra, read_state_dict
from segstream.connectors.synthetic import synthetic_clip
from segstream.models.label_sets import load_label_set
from segstream.models.presets import SYNTHETIC_SENATRA
from segstream.models.results import FrameResult, Segments
from segstream.models.senatra import SeNaTra, config_for_size, hierarchy, panoptic_segments
from segstream.models.senatra_adapter import SeNaTraSegmenter, stem_to_scaled
from segstream.pipeline.evaluation import PanopticTally
from segstream.pipeline.segment_metrics import (
    MeanIoU,
    achievable_segmentation_accuracy,
    boundary_precision,
    boundary_recall,
    class_map,
    grid_segments,
)

LABELS = load_label_set(SYNTHETIC_SENATRA.label_set)


def held_out(seeds, frames, width, height):
    for seed in seeds:
        yield from synthetic_clip(width, height, frames, seed)


def boundary_table(segmenter: SeNaTraSegmenter, data: list, tolerance: int) -> None:
    """ASA and BR of each level against the uniform grid with the same token count."""
    model = segmenter.model
    rows: dict[int, dict[str, list[float]]] = {}
    for first in range(0, len(data), 4):
        chunk = data[first : first + 4]
        results = segmenter.segment([image for image, _ in chunk])
        # Token grid of every level for this input size (the same for every frame of the chunk).
        pixels = segmenter.prepare([torch.from_numpy(image) for image, _ in chunk[:1]]).pixels
        with torch.no_grad():
            grids = [a.out_grid for a in model(pixels).assignments]
        for result, (_, truth) in zip(results, chunk):
            truth_map = truth.label_map
            h, w = truth_map.shape
            for k, (level, grid) in enumerate(zip(result.levels, grids)):
                keys = ("asa", "br", "bp", "grid_asa", "grid_br", "grid_bp", "used", "tokens")
                row = rows.setdefault(k, {key: [] for key in keys})
                cells = grid_segments(h, w, *grid)
                level_map = level.label_map  # frame size, built once
                row["asa"].append(achievable_segmentation_accuracy(level_map, truth_map))
                row["br"].append(boundary_recall(level_map, truth_map, tolerance))
                row["grid_asa"].append(achievable_segmentation_accuracy(cells, truth_map))
                row["grid_br"].append(boundary_recall(cells, truth_map, tolerance))
                row["bp"].append(boundary_precision(level_map, truth_map, tolerance))
                row["grid_bp"].append(boundary_precision(cells, truth_map, tolerance))
                row["used"].append(len(level.ids))
                row["tokens"].append(grid[0] * grid[1])
    print(f"\n## Boundaries at equal token count ({len(data)} frames, BR tolerance {tolerance} px)\n")
    print("| level | tokens | segments used (mean) | ASA grouping | ASA uniform grid | BR grouping | BR uniform grid "
          "| BP grouping | BP uniform grid |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k, row in rows.items():
        mean = {key: float(np.mean(v)) for key, v in row.items()}
        print(f"| {k + 1} (stride {8 * 2**k}) | {mean['tokens']:.0f} | {mean['used']:.0f} | "
              f"{100 * mean['asa']:.1f} | {100 * mean['grid_asa']:.1f} | {100 * mean['br']:.1f} | "
              f"{100 * mean['grid_br']:.1f} | {100 * mean['bp']:.1f} | {100 * mean['grid_bp']:.1f} |", flush=True)


def bilinear_semantic(segmenter: SeNaTraSegmenter, images) -> list[np.ndarray]:
    """Per-pixel classes from the final class logits upsampled bilinearly (not through assignments)."""
    prepared = segmenter.prepare([torch.from_numpy(i) for i in images])
    with torch.no_grad():
        out = segmenter.model(prepared.pixels)
    grid = out.assignments[-1].out_grid
    logits = out.class_logits.transpose(1, 2).reshape(len(images), -1, *grid)
    h0, w0 = out.assignments[0].in_grid
    stem = F.interpolate(logits, (h0, w0), mode="bilinear", align_corners=False).argmax(1)
    maps = []
    for i, ((height, width), (h, w)) in enumerate(zip(prepared.frames, prepared.layouts)):
        scaled = stem_to_scaled(stem[i], h, w)[None, None].float()
        maps.append(F.interpolate(scaled, (height, width), mode="nearest")[0, 0].long().numpy())
    return maps


def quality_table(models: dict[str, tuple[SeNaTra, float]], data: list) -> None:
    """mIoU and PQ per (model, margin): ``margin`` is the embedding distance under which touching
    final tokens of one thing class are one instance (inf: every touching pair; 0: none)."""
    print(f"\n## Segmentation quality ({len(data)} frames)\n")
    print("| model | things from final tokens | mIoU (carried logits) | mIoU (bilinear final logits) | PQ | PQ things "
          "| PQ stuff |")
    print("|---|---|---|---|---|---|---|")
    semantic_scores: dict[int, tuple[dict, dict]] = {}  # per model: mIoU carried, bilinear
    for name, (model, margin) in models.items():
        panoptic = SeNaTraSegmenter(model, "panoptic", LABELS, name, margin=margin, hierarchy_levels=False)
        if id(model) not in semantic_scores:
            semantic_scores[id(model)] = semantic_quality(model, data)
        c, b = semantic_scores[id(model)]
        pq = PanopticTally(LABELS.thing_ids, LABELS.stuff_ids)
        for first in range(0, len(data), 4):
            chunk = data[first : first + 4]
            for prediction, (_, truth) in zip(panoptic.segment([image for image, _ in chunk]), chunk):
                pq.add(prediction, truth)
        p = pq.summary()
        # Bilinear upsampling assumes final tokens on a grid: meaningless for grouped tokens.
        up = f"{100 * b['miou']:.1f}" if model.cfg.downsampling == "uniform" else "-"
        rules = {0.0: "each token alone", float("inf"): "touching tokens merge"}
        rule = rules.get(margin, f"touching, embeddings within {margin:g}")
        print(f"| {name} | {rule} | {100 * c['miou']:.1f} | {up} | {100 * p['pq']:.1f} | "
              f"{100 * p['pq_things']:.1f} | {100 * p['pq_stuff']:.1f} |", flush=True)


def semantic_quality(model: SeNaTra, data: list) -> tuple[dict, dict]:
    """mIoU of the native semantic output (carried logits) and of bilinear final logits."""
    semantic = SeNaTraSegmenter(model, "semantic", LABELS, "semantic", hierarchy_levels=False)
    carried, bilinear = MeanIoU(LABELS.num_classes), MeanIoU(LABELS.num_classes)
    for first in range(0, len(data), 4):
        chunk = data[first : first + 4]
        images = [image for image, _ in chunk]
        truths: list[FrameResult] = [truth for _, truth in chunk]
        for prediction, up, truth in zip(semantic.segment(images), bilinear_semantic(semantic, images), truths):
            truth_classes = class_map(truth.label_map, truth.segments.ids, truth.segments.class_ids)
            carried.add(class_map(prediction.label_map, prediction.segments.ids, prediction.segments.class_ids),
                        truth_classes)
            bilinear.add(up, truth_classes)
    return carried.summary(), bilinear.summary()


def cost_table(configs: dict, size: tuple[int, int], batch: int, warmup: int, repeat: int) -> None:
    """Median seconds per forward; the two variants alternate run by run, so a machine whose load
    changes during the measurement slows both alike."""
    print(f"\n## Forward cost, grouping vs uniform downsampling (batch {batch}, input {size[1]}x{size[0]}, "
          f"median of {repeat}, interleaved)\n")
    print("| model | part | uniform s | grouping s | grouping / uniform |")
    print("|---|---|---|---|---|")
    pixels = torch.randn(batch, 3, *size)
    for name, cfg in configs.items():
        models = {}
        for downsampling in ("uniform", "grouping"):
            torch.manual_seed(0)
            models[downsampling] = SeNaTra(replace(cfg, downsampling=downsampling)).eval()
        for part, call in (("backbone (features)", lambda m: m.features(pixels)),
                           ("whole model (+ head, carried logits)", lambda m: m(pixels))):
            samples: dict[str, list[float]] = {"uniform": [], "grouping": []}
            with torch.inference_mode():
                for model in models.values():
                    for _ in range(warmup):
                        call(model)
                for _ in range(repeat):
                    for key, model in models.items():
                        start = time.perf_counter()
                        call(model)
                        samples[key].append(time.perf_counter() - start)
            u, g = statistics.median(samples["uniform"]), statistics.median(samples["grouping"])
            print(f"| {name} | {part} | {u:.4f} | {g:.4f} | {g / u:.2f}x |", flush=True)


def oracle_things_table(model: SeNaTra, data: list) -> None:
    """PQ of things when every final token gets its true class (the majority class of its pixels):
    how well each rule for turning final tokens into instances works, apart from classification."""
    segmenter = SeNaTraSegmenter(model, "panoptic", LABELS, "oracle", hierarchy_levels=False)
    isthing = torch.tensor(LABELS.isthing)
    rules = {"each token alone": 0.0, "touching tokens merge": float("inf")}
    rules |= {f"touching, embeddings within {m:g}": m for m in (1.5, 3.0, 6.0)}
    tallies = {rule: PanopticTally(LABELS.thing_ids, LABELS.stuff_ids) for rule in rules}
    for first in range(0, len(data), 4):
        chunk = data[first : first + 4]
        prepared = segmenter.prepare([torch.from_numpy(image) for image, _ in chunk])
        outputs = segmenter.forward(prepared)
        finals = hierarchy(outputs.assignments).maps[-1]
        for i, ((_, truth), (h, w)) in enumerate(zip(chunk, prepared.layouts)):
            truth_classes = torch.from_numpy(class_map(truth.label_map, truth.segments.ids, truth.segments.class_ids))
            scaled = F.interpolate(truth_classes[None, None].float(), (h, w), mode="nearest")[0, 0].long()
            tokens = stem_to_scaled(finals[i], h, w)
            votes = torch.zeros(finals[i].max() + 1, LABELS.num_classes)
            votes.index_put_((tokens.flatten(), scaled.flatten()), torch.ones(h * w), accumulate=True)
            classes = votes.argmax(1)
            for rule, margin in rules.items():
                seg = panoptic_segments(finals[i], classes, isthing, outputs.embeddings[i], margin)
                small = stem_to_scaled(seg.label_map, h, w)[None, None].float()
                label_map = F.interpolate(small, truth.label_map.shape, mode="nearest")[0, 0].int().numpy()
                prediction = FrameResult("", 0, truth.width, truth.height, label_map, Segments.build(
                    ids=range(len(seg.classes)), class_ids=seg.classes.tolist(),
                    labels=[LABELS.names[c] for c in seg.classes], isthing=seg.isthing.tolist()))
                tallies[rule].add(prediction, truth)
    print(f"\n## Things from final tokens, with true token classes ({len(data)} frames)\n")
    print("| rule for instances | PQ things | SQ things | RQ things |")
    print("|---|---|---|---|")
    for rule, tally in tallies.items():
        r = tally.summary()
        print(f"| {rule} | {100 * r['pq_things']:.1f} | {100 * r['sq_things']:.1f} | {100 * r['rq_things']:.1f} |",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="grouping model (default: the shipped one)")
    parser.add_argument("--uniform-checkpoint", default=None,
                        help="the ablation (scripts/train_senatra.py --downsampling uniform)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(8)))
    parser.add_argument("--frames", type=int, default=10, help="frames per held-out scene")
    parser.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--tolerance", type=int, default=2, help="boundary recall tolerance, pixels")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], choices=("boundaries", "quality", "things", "cost"))
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: steadier timings on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"# machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; seeds {args.seeds[0]}-{args.seeds[-1]}, {args.frames} frames each, "
          f"{args.size[0]}x{args.size[1]}")
    grouping = load_senatra(SYNTHETIC_SENATRA, args.checkpoint)
    data = list(held_out(args.seeds, args.frames, *args.size))
    if "boundaries" not in args.skip:
        boundary_table(SeNaTraSegmenter(grouping, "panoptic", LABELS, "grouping"), data, args.tolerance)
    if "quality" not in args.skip:
        models = {
            "SeNaTra (grouping)": (grouping, float("inf")),
            "SeNaTra, embeddings": (grouping, 1.5),
            "SeNaTra, no merging": (grouping, 0.0),
        }
        if args.uniform_checkpoint:
            uniform = SeNaTra(replace(SYNTHETIC_SENATRA.config, downsampling="uniform"))
            uniform.load_state_dict(read_state_dict(Path(args.uniform_checkpoint)))
            models["uniform downsampling (ablation)"] = (uniform.eval(), float("inf"))
        quality_table(models, data)
    if "things" not in args.skip:
        oracle_things_table(grouping, data)
    if "cost" not in args.skip:
        w, h = args.size
        shipped = SYNTHETIC_SENATRA.config
        scaled = (round(h * shipped.input_size / max(w, h)), round(w * shipped.input_size / max(w, h)))
        cost_table({SYNTHETIC_SENATRA.name: shipped}, scaled, 1, 2, 4 * args.repeat)
        cost_table({SYNTHETIC_SENATRA.name: shipped}, scaled, 8, 1, args.repeat)
        cost_table({"SeNaTra-T (paper size)": config_for_size("tiny", num_classes=150)}, (256, 256), 1, 1, args.repeat)


if __name__ == "__main__":
    main()
