"""Mask encoding for the wire: segstream's one-pass COCO RLE against pycocotools per segment.

    python benchmarks/mask_encoding.py

A 1920x1080 label map with 10 segments (ellipses over a background). Prints median milliseconds
per frame for encoding and decoding both ways, checks the RLE strings are identical, and the
ratios. Not a test: record results in docs/BENCHMARKS.md with the command and the machine.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as coco_mask

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segstream.connectors.redis_wire import _coco_rle_counts, _paint_rles  # noqa: E402


def label_map(height: int = 1080, width: int = 1920, segments: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros((height, width), np.int32)  # segment 0 is the background
    for i in range(1, segments):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(40, 300)), int(rng.integers(40, 300)))
        cv2.ellipse(out, centre, axes, float(rng.uniform(0, 180)), 0, 360, i, -1)
    return out


def median_ms(fn, repeat: int = 15) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return 1000 * statistics.median(samples)


def main() -> None:
    labels = label_map()
    ids = [int(i) for i in np.unique(labels)]
    h, w = labels.shape

    def pycocotools_encode():
        return [coco_mask.encode(np.asfortranarray(labels == i, dtype=np.uint8))["counts"].decode() for i in ids]

    ours = _coco_rle_counts(labels, ids)
    assert ours == pycocotools_encode(), "RLE strings differ from pycocotools"
    rles = [{"size": [h, w], "counts": c} for c in ours]

    def pycocotools_decode():
        out = np.full((h, w), -1, np.int32)
        for i, rle in zip(ids, rles, strict=True):
            out[coco_mask.decode({"size": [h, w], "counts": rle["counts"].encode()}).astype(bool)] = i
        return out

    assert np.array_equal(_paint_rles(rles, ids, h, w), pycocotools_decode())
    rows = [
        ("encode", median_ms(lambda: _coco_rle_counts(labels, ids)), median_ms(pycocotools_encode)),
        ("decode", median_ms(lambda: _paint_rles(rles, ids, h, w)), median_ms(pycocotools_decode)),
    ]
    print(f"# {w}x{h}, {len(ids)} segments, identical RLE strings")
    print("| step | segstream ms | pycocotools per segment ms | ratio |")
    print("|---|---|---|---|")
    for step, mine, theirs in rows:
        print(f"| {step} | {mine:.1f} | {theirs:.1f} | {theirs / mine:.1f}x |")


if __name__ == "__main__":
    main()
