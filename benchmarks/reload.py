"""What a config reload costs the cameras it does not touch.

    python benchmarks/reload.py [--cameras 3] [--fps 10] [--size 320x240] [--reloads 10] [--every 3]

Runs ``--cameras`` live synthetic cameras (``--size`` at ``--fps``, real time) through the synthetic-tiny
preset on the CPU (random weights: speed does not depend on them) into a sink that notes when
each result reaches it. After a quiet stretch, ``--reloads`` reloads follow ``--every`` seconds
apart, through the same ``Reloader`` that ``POST /reload`` calls: each adds a camera, removes the
one added before, and changes the filters of the first camera (its source untouched). Prints,
for the untouched cameras, the largest gap between two of their results reaching the sink and the
p99 of capture-to-sink latency, in the quiet stretch and in the seconds after each reload, with
how long the reloads took (p50/max). Not a test: record results in docs/BENCHMARKS.md with the
command and the machine.
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np

from segstream.models.presets import SYNTHETIC_TINY
from segstream.pipeline.cli import build_runtime
from segstream.pipeline.config import load_config
from segstream.pipeline.reload import Reloader


class Arrivals:
    """A sink that notes (wall time reached, capture time) of each result, by source."""

    name = "arrivals"

    def __init__(self):
        self.seen: dict[str, list[tuple[float, float]]] = {}

    def publish(self, result):
        self.seen.setdefault(result.source, []).append((time.time(), result.capture_ts))

    def publish_event(self, event):
        pass

    def poll(self):
        return None

    def flush(self):
        pass

    def close(self):
        pass


def config(cameras: list[str], filtered: bool, width: int, height: int, fps: float) -> dict:
    source = {"type": "synthetic", "width": width, "height": height, "fps": fps, "num_frames": None,
              "realtime": True, "buffer": "newest"}
    sources = [{"name": name, **source} for name in cameras]
    if filtered:
        sources[0]["filters"] = {"min_area": 500}
    return {"sources": sources, "model": {"preset": SYNTHETIC_TINY.name, "device": "cpu"},
            "sinks": {"redis": {"enabled": False}}, "ops": {"http": None, "reload": True}}


def window(arrivals: dict[str, list[tuple[float, float]]], names: list[str], start: float, end: float):
    """The largest gap between results of one camera (ms) and the p99 latency (ms) in [start, end)."""
    gaps, latencies = [], []
    for name in names:
        times = [(at, captured) for at, captured in arrivals.get(name, []) if start <= at < end]
        gaps += list(np.diff([at for at, _ in times]))
        latencies += [at - captured for at, captured in times]
    return 1000 * max(gaps, default=float("nan")), 1000 * float(np.percentile(latencies, 99))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--size", default="320x240", help="WIDTHxHEIGHT")
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--every", type=float, default=3.0)
    args = parser.parse_args()
    names = [f"cam{i}" for i in range(args.cameras)]
    width, height = (int(v) for v in args.size.split("x"))
    state = {"extra": None, "filtered": False}

    def load():
        cameras = names + ([state["extra"]] if state["extra"] else [])
        return load_config(config(cameras, state["filtered"], width, height, args.fps))

    sink = Arrivals()
    runtime = build_runtime(load(), progress=False, sinks=[sink])
    reloader = Reloader(runtime, load(), load)
    thread = threading.Thread(target=runtime.run)
    thread.start()
    time.sleep(8)  # warm-up and the first frames
    quiet = (time.time(), time.time() + args.reloads * args.every)
    time.sleep(args.reloads * args.every)
    took, after = [], []
    for k in range(args.reloads):
        state["extra"], state["filtered"] = f"extra{k}", not state["filtered"]
        started = time.time()
        applied, line = reloader()
        took.append(time.time() - started)
        assert applied, line
        after.append((started, started + args.every))
        time.sleep(args.every)
    runtime.stop()
    thread.join()
    untouched = names[1:]
    quiet_gap, quiet_p99 = window(sink.seen, untouched, *quiet)
    during = [window(sink.seen, untouched, *span) for span in after]
    print(f"{args.cameras} cameras of {args.size} at {args.fps:g} fps, {SYNTHETIC_TINY.name} on the CPU; "
          f"{args.reloads} reloads {args.every:g} s apart (each: a camera added, one removed, cam0's filters)")
    print(f"reload took: p50 {1000 * float(np.median(took)):.0f} ms, max {1000 * max(took):.0f} ms")
    print(f"untouched cameras, quiet {quiet[1] - quiet[0]:.0f} s: largest gap {quiet_gap:.0f} ms, "
          f"latency p99 {quiet_p99:.0f} ms")
    print(f"untouched cameras, the {args.every:g} s after each reload: largest gap "
          f"{max(g for g, _ in during):.0f} ms, latency p99 (worst reload) {max(p for _, p in during):.0f} ms")


if __name__ == "__main__":
    main()
