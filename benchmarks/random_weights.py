"""Segments that random weights give per preset: the work post-processing has to do when a
published architecture runs without its checkpoint (``model.checkpoint: random``).

    python benchmarks/random_weights.py synthetic_eomt_tiny_256 coco_panoptic_eomt_small_640_2x \
        coco_panoptic_eomt_base_640_2x coco_panoptic_eomt_large_640

Two frames (a synthetic scene at 480x640 and its mirror image, not the scenes the weights were
calibrated on) through each preset's adapter on the CPU in fp32; prints the segments of each
frame and the seconds it took to build the model (calibration included) and segment them. Not a
test: record the output in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from segstream.connectors.synthetic import SyntheticSource
from segstream.models.presets import get_preset
from segstream.pipeline.config import ModelConfig
from segstream.pipeline.model_factory import build_segmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(2)
    scene = next(iter(SyntheticSource("bench", 640, 480, 25, 7, 1).frames())).image
    for name in args.presets:
        start = time.perf_counter()
        config = ModelConfig(preset=name, checkpoint="random", device="cpu", precision="fp32", task=get_preset(name).task)
        segmenter = build_segmenter(config, batch_size=1)
        results = segmenter.segment([scene, scene[:, ::-1].copy()])
        print(f"{name}: segments {[len(r.segments) for r in results]}, {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
