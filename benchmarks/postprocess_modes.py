"""Exact vs fast post-processing: pixel agreement of their label maps and their cost per frame.

    python benchmarks/postprocess_modes.py                 # shipped model + S/640 random weights
    python benchmarks/postprocess_modes.py --sizes 480x640 2160x3840

Exact mode decides every pixel at frame resolution (the official algorithm); fast mode decides at
the model's input resolution and resizes the final label map. Both run on the same network
outputs, so the agreement isolates post-processing. Two models: the shipped synthetic-scene
model on synthetic frames, and the published COCO panoptic S/640 architecture (200 queries, 133
classes) with random weights whose class head is sharpened so that queries clear the 0.8 score
threshold (as tests/eomt_reference.py does for transformers). Not a test: record the output in
docs/BENCHMARKS.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from segstream.connectors.checkpoints import load_eomt, random_eomt
from segstream.connectors.synthetic import synthetic_clip
from segstream.models.eomt import EoMT
from segstream.models.label_sets import load_label_set
from segstream.models.presets import SYNTHETIC_TINY, get_preset
from segstream.models.segmenter import EoMTSegmenter, results, upload


def random_published(seed: int = 0) -> EoMT:
    """COCO panoptic S/640 with random weights that still produce confident, separate segments."""
    return random_eomt(get_preset("coco_panoptic_eomt_small_640_2x").config, seed)


def measure(model: EoMT, label_set: str, frames: list[np.ndarray], repeat: int) -> dict:
    labels = load_label_set(label_set)
    exact = EoMTSegmenter(model, "panoptic", labels, "exact", postprocess="exact")
    fast = EoMTSegmenter(model, "panoptic", labels, "fast", postprocess="fast")
    with torch.inference_mode():
        prepared = exact.prepare([upload(f, exact.device) for f in frames])
        start = time.perf_counter()
        outputs = exact.forward(prepared)
        network_s = (time.perf_counter() - start) / len(frames)
        timings, maps = {}, {}
        for name, segmenter in (("exact", exact), ("fast", fast)):
            best = float("inf")
            for _ in range(repeat):
                start = time.perf_counter()
                out = results(segmenter, outputs, prepared, segmenter.decide(outputs, prepared))
                best = min(best, (time.perf_counter() - start) / len(frames))
            timings[name], maps[name] = best, out
    agreement = [float((a.label_map == b.label_map).mean()) for a, b in zip(maps["exact"], maps["fast"])]
    same_segments = np.mean([
        list(a.segments.class_ids) == list(b.segments.class_ids) for a, b in zip(maps["exact"], maps["fast"])
    ])
    return {
        "network_ms": 1000 * network_s,
        "exact_ms": 1000 * timings["exact"],
        "fast_ms": 1000 * timings["fast"],
        "agreement_mean": float(np.mean(agreement)),
        "agreement_min": float(np.min(agreement)),
        "same_segment_classes": float(same_segments),
        "segments_per_frame": float(np.mean([len(r.segments) for r in maps["exact"]])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["480x640", "1080x1920"], help="frame sizes HxW")
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    models = [("shipped synthetic_eomt_tiny_256", load_eomt(SYNTHETIC_TINY), "synthetic"),
              ("S/640 random weights (200 queries)", random_published(), "coco_panoptic")]
    print(f"{'model':36}{'frame':>11}{'segs':>6}{'network ms':>12}{'exact ms':>10}{'fast ms':>9}{'agree mean':>12}{'agree min':>11}{'same classes':>14}")
    for name, model, label_set in models:
        for size in args.sizes:
            h, w = (int(v) for v in size.split("x"))
            frames = [image for image, _ in synthetic_clip(w, h, args.frames, seed=7)]
            row = measure(model, label_set, frames, args.repeat)
            print(
                f"{name:36}{size:>11}{row['segments_per_frame']:6.1f}{row['network_ms']:12.1f}{row['exact_ms']:10.1f}"
                f"{row['fast_ms']:9.1f}{100 * row['agreement_mean']:11.2f}%{100 * row['agreement_min']:10.2f}%"
                f"{100 * row['same_segment_classes']:13.0f}%"
            )


if __name__ == "__main__":
    main()
