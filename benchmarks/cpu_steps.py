"""Two CPU steps of the model workers, before and after this project's changes, in one process.

    python benchmarks/cpu_steps.py --repeat 40

On one torch thread, the shipped model (bf16), a batch of 4 at its 256-pixel input:
- normalisation: ``(x.float() - mean) / std`` against ``normalize`` (one float copy, in place);
- the network: float32 linear and convolution weights cast by autocast on every call, against
  the same weights stored in bf16 (``store_autocast_weights``); outputs compared bit for bit.
Prints milliseconds per frame. Not a test: record the output in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from segstream.models.processing import IMAGENET_MEAN, IMAGENET_STD, normalize
from segstream.models.segmenter import Prepared, store_autocast_weights
from segstream.pipeline.config import ModelConfig
from segstream.pipeline.model_factory import build_segmenter


def per_frame_ms(step, frames: int, repeat: int) -> float:
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(repeat):
        step()
    return (time.perf_counter() - start) / repeat / frames * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pixels = torch.randint(0, 256, (4, 3, 256, 256), dtype=torch.uint8)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    before = per_frame_ms(lambda: (pixels.float() - mean) / std, 4, args.repeat * 5)
    after = per_frame_ms(lambda: normalize(pixels), 4, args.repeat * 5)
    same = torch.equal((pixels.float() - mean) / std, normalize(pixels))
    print(f"normalisation  {before:6.2f} ms/frame -> {after:6.2f} ms/frame  (same values: {same})")

    # built at fp32 so that its weights start as float32; run under bf16 autocast either way
    adapter = build_segmenter(ModelConfig(device="cpu", precision="fp32"), batch_size=4)
    adapter.precision, adapter.dtype = "bf16", torch.bfloat16
    prepared = Prepared(normalize(pixels), [(256, 256)] * 4, [(256, 256)] * 4)
    cast_each_call = per_frame_ms(lambda: adapter.forward(prepared), 4, args.repeat)
    reference = adapter.forward(prepared)
    store_autocast_weights(adapter.model, torch.bfloat16)
    stored = per_frame_ms(lambda: adapter.forward(prepared), 4, args.repeat)
    equal = all(torch.equal(a, b) for a, b in zip(reference, adapter.forward(prepared)))
    print(f"network (bf16) {cast_each_call:6.2f} ms/frame -> {stored:6.2f} ms/frame  (bit-equal: {equal})")


if __name__ == "__main__":
    main()
