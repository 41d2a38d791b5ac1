"""Where a pipeline run spends CPU time: core-milliseconds per published frame, per thread.

    python benchmarks/thread_cpu.py configs/demo.yaml --frames 600

Samples each thread's user + system time (``/proc/self/task/*/stat``, Linux) while the run goes,
keeps each thread's last sample, and groups threads by name (model workers, post-processing,
per-source stage, publisher, decoders; torch's intra-op pool and others as "other"). On a machine
with C cores, a pipeline cannot publish faster than C x 1000 / (total core-ms per frame) frames a
second, whatever overlaps. Not a test: record the output in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections import defaultdict

from segstream.pipeline.bench import replicate
from segstream.pipeline.cli import build_runtime
from segstream.pipeline.config import load_config

_TICK = os.sysconf("SC_CLK_TCK")


def thread_times() -> dict[int, tuple[str, float]]:
    """tid -> (thread name, CPU seconds so far) for every thread of this process: Python's name
    for Python threads, the kernel's for the others (torch's pool, FFmpeg's)."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as stat:
                text = stat.read()
        except OSError:
            continue  # ended between listing and reading
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        out[int(tid)] = (names.get(int(tid), name), (int(fields[11]) + int(fields[12])) / _TICK)  # utime, stime
    return out


def group(name: str) -> str:
    if name.startswith("segstream-model"):
        return "model workers (pre-process, network)"
    if name.startswith("segstream-post"):
        return "post-processing"
    if name.startswith("segstream-stage"):
        return "per-source stage (tracker)"
    if name.startswith("segstream-publ"):
        return "publisher (encode, Redis)"
    if name.startswith("segstream-"):
        return "decoders and other segstream threads"
    return "other (main, torch pool, FFmpeg threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--frames", type=int, default=600, help="frames per source (files loop)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = replicate(load_config(args.config, args.overrides), 1, args.frames)  # files loop to last that long
    runtime = build_runtime(cfg, progress=False, max_frames=args.frames)
    before = thread_times()
    last: dict[int, tuple[str, float]] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            last.update(thread_times())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.monotonic()
    report = runtime.run()
    wall = time.monotonic() - start
    done.set()
    sampler.join()
    last.update(thread_times())
    spent: dict[str, float] = defaultdict(float)
    for tid, (name, seconds) in last.items():
        spent[group(name)] += seconds - before.get(tid, (name, 0.0))[1]
    frames = report.published
    total = sum(spent.values())
    print(f"{frames} frames in {wall:.1f} s ({frames / wall:.1f} fps) on {os.cpu_count()} cores")
    for name, seconds in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"  {name:44s} {1000 * seconds / frames:6.2f} core-ms/frame")
    print(f"  {'total':44s} {1000 * total / frames:6.2f} core-ms/frame "
          f"-> at most {os.cpu_count() * frames / total:.0f} fps on these cores")


if __name__ == "__main__":
    main()
