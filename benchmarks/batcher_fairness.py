"""How the engine's batcher shares a model too slow for all its cameras: frames dropped per camera.

    python benchmarks/batcher_fairness.py                       # 48 cameras, batches of 8, 95%
    python benchmarks/batcher_fairness.py --cameras 24 --batch 4 --capacity 0.95 --spread 0.3

The real ``Batcher`` on a simulated clock (deterministic: no model runs, no thread waits). Each
camera gives a frame a second, ``--spread`` seconds being the span of their arrival times within
each second (cameras capped by ``max_fps: 1`` give theirs at nearly the same instants); the model
takes a batch of ``--batch`` at regular times, at ``--capacity`` of the rate all cameras need;
frames older than 0.5 s when their turn comes are dropped as stale (a ``newest`` source's default).
Prints the frames dropped in all and per camera. Not a test: record the output in
docs/BENCHMARKS.md with the command and the code it ran.
"""

from __future__ import annotations

import argparse
import statistics
import time
import types

import numpy as np

from segstream.connectors.frames import Frame
from segstream.pipeline import engine
from segstream.pipeline.engine import Batcher, BufferPolicy
from segstream.pipeline.metrics import RunMetrics


def simulate(cameras: int, batch: int, capacity: float, spread: float, seconds: int) -> list[int]:
    """The frames each camera lost."""
    clock = [0.0]
    real_time = engine.time
    engine.time = types.SimpleNamespace(monotonic=lambda: clock[0])
    try:
        names = [f"cam{k:02d}" for k in range(cameras)]
        metrics = RunMetrics(names)
        batcher = Batcher(names, [2] * cameras, metrics, [BufferPolicy("newest", 0.5)] * cameras)
        arrivals = [(second + spread * k / cameras, 0, k) for second in range(seconds) for k in range(cameras)]
        every = batch / (cameras * capacity)
        takes = [(n * every, 1, -1) for n in range(int(seconds / every))]
        image = np.zeros((4, 4, 3), np.uint8)
        for at, kind, k in sorted(arrivals + takes):
            clock[0] = at
            if kind == 0:
                frame = Frame(names[k], int(at), image, None, None, None, time.time())
                frame.times["decoded"] = at
                batcher.put(k, frame)
            elif any(q and at - q[-1].times["decoded"] <= 0.5 for q in batcher.queues):  # (else take_batch waits)
                batcher.take_batch(batch, 0.0)
        return [metrics.sources[name].dropped for name in names]
    finally:
        engine.time = real_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--capacity", type=float, default=0.95, help="the model's rate over the cameras' (0-1)")
    parser.add_argument("--spread", type=float, default=0.2, help="seconds over which each second's frames come")
    parser.add_argument("--seconds", type=int, default=120)
    args = parser.parse_args()
    dropped = simulate(args.cameras, args.batch, args.capacity, args.spread, args.seconds)
    offered = args.cameras * args.seconds
    print(f"{args.cameras} cameras, batches of {args.batch}, capacity {args.capacity:.0%}, spread {args.spread} s, "
          f"{args.seconds} s: {sum(dropped)} of {offered} frames dropped ({sum(dropped) / offered:.1%})")
    print(f"per camera: min {min(dropped)}, median {statistics.median(dropped):g}, max {max(dropped)} "
          f"(cameras that lost none: {dropped.count(0)})")
    print("by camera:", " ".join(map(str, dropped)))


if __name__ == "__main__":
    main()
