"""The published presets' network alone on this machine, one 640x360 frame at a time, in each
precision: what a camera on a CPU can be given before weights are downloaded (random weights:
speed does not depend on them).

    python benchmarks/preset_speed.py
    python benchmarks/preset_speed.py --device cuda --presets coco_panoptic_eomt_large_640 --repeat 20

Each forward uses all the intra-op threads torch has (the CPU pipeline runs its workers with
fewer each, so a run's frames a second may differ); on two CPU cores the three presets in both
precisions take about five minutes. Not a test: record the output in docs/BENCHMARKS.md with the
command and the machine.
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time

import torch

from segstream.connectors.synthetic import synthetic_clip
from segstream.models.segmenter import upload
from segstream.pipeline.config import ModelConfig
from segstream.pipeline.model_factory import build_segmenter

PRESETS = ("coco_panoptic_eomt_small_640_2x", "coco_panoptic_eomt_base_640_2x", "coco_panoptic_eomt_large_640")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--precisions", nargs="+", default=("bf16", "fp32"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3, help="timed forwards after one untimed (the median is given)")
    args = parser.parse_args()
    logging.getLogger("segstream").setLevel(logging.ERROR)  # random weights' warning, once a preset: known here
    frame = next(iter(synthetic_clip(640, 360, 1, seed=1)))[0]
    print(f"{platform.processor() or platform.machine()}, {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} intra-op threads, one 640x360 frame a forward, median of {args.repeat}")
    for preset in args.presets:
        for precision in args.precisions:
            segmenter = build_segmenter(ModelConfig(preset=preset, checkpoint="random", device=args.device,
                                                    precision=precision))
            times = []
            with torch.inference_mode():
                prepared = segmenter.prepare([upload(frame, segmenter.device)])
                for i in range(args.repeat + 1):
                    start = time.perf_counter()
                    segmenter.forward(prepared)
                    if segmenter.device.type == "cuda":
                        torch.cuda.synchronize()
                    if i:
                        times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            print(f"  {preset:34s} {precision}: {seconds:6.2f} s a frame, {1 / seconds:6.2f} fps", flush=True)


if __name__ == "__main__":
    main()
