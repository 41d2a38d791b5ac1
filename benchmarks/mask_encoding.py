"""Mask encoding for the wire: segstream's one-pass COCO RLE against pycocotools per segment.

    python benchmarks/mask_encoding.py

A 1920x1080 label map with 10 segments (ellipses over a background), and the same map decided at
360x640 as fast post-processing hands it to the publisher. Prints median milliseconds per frame
for encoding and decoding both ways, checks the RLE strings are identical, and the ratios; then what a whole entry costs (``to_wire`` / ``from_wire`` of a ``FrameResult``) in each
mask encoding, and its size. Not a test: record results in docs/BENCHMARKS.md with the command
and the machine.
"""

from __future__ import annotations

import statistics
import time

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from segstream.connectors.redis_wire import MASK_ENCODINGS, _coco_rle_counts, _paint_rles, from_wire, to_wire
from segstream.models.processing import frame_label_map
from segstream.models.results import FrameResult, Segments


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
    # What fast post-processing publishes: a map decided at the model's size (here 360x640, a
    # 640 input), encoded without building the frame-size map; pycocotools encodes that map.
    decided = cv2.resize(labels, (640, 360), interpolation=cv2.INTER_NEAREST_EXACT)
    scaled, _, _, _ = frame_label_map(decided, max(ids) + 1, (h, w))
    scaled_ids = [int(i) for i in np.unique(decided)]
    frame_map = scaled.full()

    def pycocotools_encode_scaled():
        return [coco_mask.encode(np.asfortranarray(frame_map == i, dtype=np.uint8))["counts"].decode()
                for i in scaled_ids]

    assert _coco_rle_counts(scaled, scaled_ids) == pycocotools_encode_scaled(), "scaled RLE differs"
    rows = [
        ("encode", median_ms(lambda: _coco_rle_counts(labels, ids)), median_ms(pycocotools_encode)),
        ("encode, map decided at 360x640", median_ms(lambda: _coco_rle_counts(scaled, scaled_ids)),
         median_ms(pycocotools_encode_scaled)),
        ("decode", median_ms(lambda: _paint_rles(rles, ids, h, w)), median_ms(pycocotools_decode)),
    ]
    print(f"# {w}x{h}, {len(ids)} segments, identical RLE strings")
    print("| step | segstream ms | pycocotools per segment ms | ratio |")
    print("|---|---|---|---|")
    for step, mine, theirs in rows:
        print(f"| {step} | {mine:.1f} | {theirs:.1f} | {theirs / mine:.1f}x |")
    entries(labels, ids)


def entries(labels: np.ndarray, ids: list[int]) -> None:
    """Whole stream entries of the label map, in each mask encoding."""
    h, w = labels.shape
    _, areas, boxes, _ = frame_label_map(labels, max(ids) + 1, (h, w))
    segments = Segments.build(
        ids=ids, class_ids=ids, labels=[f"class{i}" for i in ids], isthing=[i > 0 for i in ids],
        areas=areas[ids], boxes=boxes[ids],
    )
    result = FrameResult("cam0", 0, w, h, labels, segments, capture_ts=time.time(), model="benchmark")
    costs = {}
    for encoding in MASK_ENCODINGS:
        fields = to_wire(result, encoding)
        assert np.array_equal(from_wire(fields).label_map, labels)
        size = sum(len(v.encode() if isinstance(v, str) else v) for v in fields.values())
        costs[encoding] = (
            median_ms(lambda: to_wire(result, encoding)), median_ms(lambda: from_wire(fields)), size
        )
    print("| whole entry | to_wire ms | from_wire ms | bytes |")
    print("|---|---|---|---|")
    for encoding, (encode_ms, decode_ms, size) in costs.items():
        print(f"| {encoding} | {encode_ms:.1f} | {decode_ms:.1f} | {size} |")
    (encode_a, decode_a, size_a), (encode_b, decode_b, size_b) = costs["rle"], costs["idmap"]
    print(f"rle / idmap: to_wire {encode_a / encode_b:.2f}x, from_wire {decode_a / decode_b:.2f}x, "
          f"bytes {size_a / size_b:.2f}x")


if __name__ == "__main__":
    main()
