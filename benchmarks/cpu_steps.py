"""Two CPU steps of the model workers, before and after this project's changes, in one process.

    python benchmarks/cpu_steps.py --repeat 40

On one torch thread, the shipped model (bf16), a batch of 4 at its 256-pixel input:
- normalisation: ``(x.float() - mean) / std`` against ``normalize`` (one float copy, in place);
- the network: float32 linear and convolution weights cast by autocast on every call, against
  the same weights stored in bf16 (``store_autocast_weights``); outputs compared bit for bit.
Before and after are timed in alternating rounds. Prints milliseconds per frame. Not a test: record the output in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from segstream.models.processing import IMAGENET_MEAN, IMAGENET_STD, normalize
from segstream.models.segmenter import Prepared, store_autocast_weights
from segstream.pipeline.config import ModelConfig
from segstream.pipeline.model_factory import build_segmenter


def per_frame_ms(steps: dict, frames: int, repeat: int, rounds: int = 5) -> dict:
    """Milliseconds per frame of each step, the median of ``rounds`` rounds taken in turn (one
    step's rounds never all fall in one quiet or busy spell of a shared machine)."""
    for step in steps.values():
        for _ in range(3):
            step()
    times: dict = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for _ in range(max(1, repeat // rounds)):
                step()
            times[name].append((time.perf_counter() - start) / max(1, repeat // rounds) / frames * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pixels = torch.randint(0, 256, (4, 3, 256, 256), dtype=torch.uint8)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    ms = per_frame_ms({"before": lambda: (pixels.float() - mean) / std, "after": lambda: normalize(pixels)},
                      4, args.repeat * 5)
    same = torch.equal((pixels.float() - mean) / std, normalize(pixels))
    print(f"normalisation  {ms['before']:6.2f} ms/frame -> {ms['after']:6.2f} ms/frame  (same values: {same})")

    # built at fp32 so that their weights start as float32; both run under bf16 autocast
    adapters = {}
    for name in ("cast each call", "stored"):
        adapter = adapters[name] = build_segmenter(ModelConfig(device="cpu", precision="fp32"), batch_size=4)
        adapter.precision, adapter.dtype = "bf16", torch.bfloat16
    store_autocast_weights(adapters["stored"].model, torch.bfloat16)
    prepared = Prepared(normalize(pixels), [(256, 256)] * 4, [(256, 256)] * 4)
    ms = per_frame_ms({name: (lambda a=adapter: a.forward(prepared)) for name, adapter in adapters.items()},
                      4, args.repeat)
    outputs = [adapter.forward(prepared) for adapter in adapters.values()]
    equal = all(torch.equal(a, b) for a, b in zip(*outputs))
    print(f"network (bf16) {ms['cast each call']:6.2f} ms/frame -> {ms['stored']:6.2f} ms/frame  (bit-equal: {equal})")


if __name__ == "__main__":
    main()
