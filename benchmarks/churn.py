"""What cameras that come and go cost a long run: memory and the batcher's work per batch.

    python benchmarks/churn.py [--cycles 1000] [--checkpoints 4] [--same-name] [--fps 50]

Runs two steady live synthetic cameras (64x48) through the synthetic-tiny preset on the CPU, and
``--cycles`` times adds a camera, waits for its first result to reach the sink and removes it
(``Runtime.add_source`` / ``remove_source``, what a reload does): each a new name
(``churn-K``), or with ``--same-name`` one name again and again. At ``--checkpoints`` points it
prints the memory Python holds (tracemalloc, after a garbage collection) and the batcher's
CPU time per batch taken (its round-robin over the queues) since the last checkpoint, so growth
per cycle shows as the difference between checkpoints. Not a test: record results in
docs/BENCHMARKS.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import gc
import threading
import time
import tracemalloc

from segstream.models.presets import SYNTHETIC_TINY
from segstream.pipeline import engine
from segstream.pipeline.builders import build_source
from segstream.pipeline.cli import build_runtime
from segstream.pipeline.config import load_config

from reload import Arrivals  # benchmarks/, beside this script


class Firsts(Arrivals):
    """A sink that notes only which sources' results reached it (memory here is what is measured)."""

    def __init__(self):
        super().__init__()
        self.seen: dict[str, None] = {}

    def publish(self, result):
        self.seen[result.source] = None


class Timed:
    """Wraps ``Batcher._take_in_turn``: its CPU time and calls."""

    def __init__(self):
        self.seconds = 0.0
        self.calls = 0
        original = engine.Batcher._take_in_turn

        def timed(batcher, batch, size):
            started = time.thread_time()
            try:
                return original(batcher, batch, size)
            finally:
                self.seconds += time.thread_time() - started
                self.calls += 1

        engine.Batcher._take_in_turn = timed


def camera(name: str, fps: float) -> dict:
    return {"name": name, "type": "synthetic", "width": 64, "height": 48, "fps": fps, "num_frames": None,
            "realtime": True, "buffer": "newest"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--checkpoints", type=int, default=4)
    parser.add_argument("--same-name", action="store_true")
    parser.add_argument("--fps", type=float, default=50.0)
    args = parser.parse_args()
    cfg = load_config({"sources": [camera("cam0", args.fps), camera("cam1", args.fps)],
                       "model": {"preset": SYNTHETIC_TINY.name, "device": "cpu"},
                       "sinks": {"redis": {"enabled": False}}, "ops": {"http": None}})
    sink = Firsts()
    timed = Timed()
    runtime = build_runtime(cfg, progress=False, sinks=[sink])
    thread = threading.Thread(target=runtime.run)
    thread.start()
    while "cam1" not in sink.seen:
        time.sleep(0.05)
    tracemalloc.start()
    every = max(1, args.cycles // args.checkpoints)
    mark = (timed.seconds, timed.calls, time.monotonic())
    print(f"2 steady cameras, 64x48 at {args.fps:g} fps, {SYNTHETIC_TINY.name} on the CPU; a camera added "
          f"and removed {args.cycles} times ({'one name' if args.same_name else 'a new name each time'})")
    for k in range(1, args.cycles + 1):
        name = "churn" if args.same_name else f"churn-{k}"
        sink.seen.pop(name, None)
        runtime.add_source(build_source(load_config({"sources": [camera(name, args.fps)]}).sources[0]))
        deadline = time.monotonic() + 10
        while name not in sink.seen and time.monotonic() < deadline:
            time.sleep(0.002)
        assert runtime.remove_source(name, wait_s=10), name
        if k % every == 0 or k == args.cycles:
            gc.collect()
            held = tracemalloc.get_traced_memory()[0]
            seconds, calls, since = timed.seconds - mark[0], timed.calls - mark[1], time.monotonic() - mark[2]
            print(f"after {k:5d} cycles: Python holds {held / 1e6:7.2f} MB; batcher round-robin "
                  f"{1e6 * seconds / max(1, calls):7.1f} us per call ({calls} calls); "
                  f"{1000 * since / every:.0f} ms per cycle")
            mark = (timed.seconds, timed.calls, time.monotonic())
    runtime.stop()
    thread.join()


if __name__ == "__main__":
    main()
