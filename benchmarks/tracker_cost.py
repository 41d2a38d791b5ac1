"""What the tracker costs per frame at 1080p, with 10 and 50 segments.

    python benchmarks/tracker_cost.py [--frames 60]

Moving ellipses (things, with 256-dim embeddings) over two stuff bands in 1920x1080 label maps,
through ``SegmentTracker.update`` as the pipeline's stage calls it. Prints the median and p90
milliseconds per frame for the default overlap resolution (long side 480), for overlaps at full
resolution (``mask_side`` 1920), and, as the naive baseline, one full-frame IoU per
(track, segment) pair. Not a test: record results in docs/BENCHMARKS.md with the command and the
machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import cv2
import numpy as np

from segstream.models.processing import frame_label_map
from segstream.models.tracking import SegmentTracker, TrackerSettings

HEIGHT, WIDTH = 1080, 1920


def frames(things: int, count: int, seed: int = 0):
    """``count`` label maps of ``things`` ellipses moving over sky and grass, with the tracker's
    inputs: (label map, ids, classes, isthing, embeddings, boxes)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform((0, 0), (WIDTH, HEIGHT), (things, 2))
    velocity = rng.uniform(-12, 12, (things, 2))
    axes = rng.integers(30, 160, (things, 2))
    embeddings = rng.normal(size=(things, 256)).astype(np.float32)
    for _ in range(count):
        label_map = np.zeros((HEIGHT, WIDTH), np.int32)
        label_map[HEIGHT // 2 :] = 1
        for i in range(things):
            cv2.ellipse(label_map, (int(centres[i, 0]), int(centres[i, 1])), (int(axes[i, 0]), int(axes[i, 1])),
                        0, 0, 360, i + 2, -1)
        total = things + 2
        _, areas, boxes, _ = frame_label_map(label_map, total, label_map.shape)
        present = np.flatnonzero(areas > 0)
        classes = np.where(present < 2, present, 2 + present % 4)
        noisy = embeddings[np.clip(present - 2, 0, None)] + rng.normal(0, 0.2, (len(present), 256)).astype(np.float32)
        yield label_map, present, classes, present >= 2, noisy, boxes[present]
        centres = (centres + velocity) % (WIDTH, HEIGHT)


def time_tracker(settings: TrackerSettings, data) -> list[float]:
    tracker = SegmentTracker(settings)
    samples = []
    for index, (label_map, ids, classes, isthing, embeddings, boxes) in enumerate(data):
        start = time.perf_counter()
        tracker.update(index, label_map, ids, classes, isthing, embeddings, boxes)
        samples.append(time.perf_counter() - start)
    return samples[2:]  # the first frames create tracks only


def time_naive(data) -> list[float]:
    """One full-resolution IoU per (previous segment, current segment) pair."""
    samples = []
    previous = None
    for label_map, ids, _, isthing, _, _ in data:
        start = time.perf_counter()
        masks = [label_map == i for i in ids[isthing]]
        if previous is not None:
            for a in previous:
                for b in masks:
                    inter = np.count_nonzero(a & b)
                    _ = inter / max(1, np.count_nonzero(a | b))
        previous = masks
        samples.append(time.perf_counter() - start)
    return samples[2:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    args = parser.parse_args()
    print(f"{'segments':>8} {'variant':32} {'median ms':>10} {'p90 ms':>8} {'vs default':>10}")
    for things in (10, 50):
        data = list(frames(things - 2, args.frames))
        rows = {
            "default (long side 480)": time_tracker(TrackerSettings(), data),
            "overlaps at full resolution": time_tracker(TrackerSettings(mask_side=max(HEIGHT, WIDTH)), data),
            "naive: full-frame IoU per pair": time_naive(data[: min(len(data), 12)]),
        }
        base = statistics.median(rows["default (long side 480)"])
        for name, samples in rows.items():
            median = statistics.median(samples)
            p90 = sorted(samples)[int(0.9 * (len(samples) - 1))]
            print(f"{things:>8} {name:32} {1000 * median:10.2f} {1000 * p90:8.2f} {median / base:9.1f}x")


if __name__ == "__main__":
    main()
