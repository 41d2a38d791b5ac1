"""What segment filters (``filters:``) cost per frame on the demo config, against the model.

    python benchmarks/segment_filters.py [--frames 40]

The demo config (configs/demo.yaml: samples/demo.mp4, 640x480, the shipped model on the CPU)
segments ``--frames`` frames once, with fast post-processing (label maps kept at the model's
256-pixel input as a ``ScaledLabelMap``) and with exact post-processing (frame-size maps); then
each filter setting runs over copies of those results as the runtime's stage thread runs it.
Prints the median and p90 milliseconds per frame, the share of the model's own time per frame
(network and post-processing, batches of 4) and the segments dropped per frame. Not a test:
record results in docs/BENCHMARKS.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import av

from segstream.models.segment_filter import FilterSettings, SegmentFilter
from segstream.pipeline.config import load_config
from segstream.pipeline.model_factory import build_segmenter

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
SETTINGS = {
    "classes (things only)": FilterSettings(keep_class_ids=frozenset({0, 1, 2, 3})),
    "min_score 0.97 + min_area 3000": FilterSettings(min_score=0.97, min_area=3000),
    "roi (hexagon)": FilterSettings(roi=((0.1, 0.2), (0.5, 0.05), (0.9, 0.2), (0.9, 0.8), (0.5, 0.95), (0.1, 0.8))),
    "all of them": FilterSettings(keep_class_ids=frozenset({0, 1, 2, 3, 4, 5}), min_score=0.97, min_area=3000,
                                  roi=((0.1, 0.2), (0.5, 0.05), (0.9, 0.2), (0.9, 0.8), (0.5, 0.95), (0.1, 0.8))),
}


def demo_frames(path: str, count: int) -> list:
    with av.open(path) as container:
        return [frame.to_ndarray(format="rgb24") for frame, _ in zip(container.decode(video=0), range(count))]


def segmented(postprocess: str, frames: list) -> tuple[list, float]:
    """The results of ``frames`` and the model's seconds per frame (after one warm-up batch)."""
    cfg = load_config(DEMO)
    model = cfg.model.model_copy(update={"device": "cpu", "postprocess": postprocess})
    segmenter = build_segmenter(model, batch_size=4)
    segmenter.segment(frames[:4])
    start = time.perf_counter()
    results = [r for i in range(0, len(frames), 4) for r in segmenter.segment(frames[i : i + 4])]
    return results, (time.perf_counter() - start) / len(frames)


def time_filter(settings: FilterSettings, results: list) -> tuple[list[float], float]:
    """Seconds per frame (the first frame rasterises the ROI for the frame size, once: left out)
    and segments dropped per frame."""
    segment_filter = SegmentFilter(settings)
    copies = [copy.deepcopy(r) for r in results]
    samples, dropped = [], 0
    for result in copies:
        start = time.perf_counter()
        dropped += sum(segment_filter.apply(result).values())
        samples.append(time.perf_counter() - start)
    return samples[1:], dropped / len(copies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    args = parser.parse_args()
    frames = demo_frames(load_config(DEMO).sources[0].path, args.frames)
    print(f"{'post-processing':15} {'filters':30} {'median ms':>10} {'p90 ms':>8} {'of model':>9} {'dropped':>8}")
    for postprocess in ("fast", "exact"):
        results, model_s = segmented(postprocess, frames)
        print(f"{postprocess:15} {'(the model: network + post)':30} {1000 * model_s:10.2f} {'':8} {'100%':>9}")
        for name, settings in SETTINGS.items():
            samples, dropped = time_filter(settings, results)
            median = statistics.median(samples)
            p90 = sorted(samples)[int(0.9 * (len(samples) - 1))]
            print(f"{postprocess:15} {name:30} {1000 * median:10.3f} {1000 * p90:8.3f} {median / model_s:8.1%} "
                  f"{dropped:8.1f}")


if __name__ == "__main__":
    main()
