"""Memory over a long run: host RSS (and GPU memory on CUDA) sampled while a pipeline runs.

    python benchmarks/soak.py configs/demo.yaml --minutes 10 --set sources.0.realtime=true --set sources.0.loop=true

Prints one line per sample and, at the end, the growth between the first and the last third of
the run (after warm-up), which is what "memory stays flat" means: a leak grows linearly, a
bounded buffer levels off. Not a test: record the output in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import threading
import time

import torch

from segstream.pipeline.cli import build_runtime
from segstream.pipeline.config import load_config


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    samples: list[tuple[float, float, float, float]] = []
    done = threading.Event()
    runtime = build_runtime(cfg, progress=False)

    def sample() -> None:
        start = time.monotonic()
        while not done.wait(args.every):
            cuda = torch.cuda.is_available()
            gpu = torch.cuda.memory_allocated() / 2**20 if cuda else float("nan")
            # the caching allocator's pool: growth there is growth too, even with tensors freed
            reserved = torch.cuda.memory_reserved() / 2**20 if cuda else float("nan")
            samples.append((time.monotonic() - start, rss_mib(), gpu, reserved))
            print(f"{samples[-1][0]:7.0f} s  RSS {samples[-1][1]:8.1f} MiB  GPU {gpu:8.1f} MiB "
                  f"(reserved {reserved:8.1f} MiB)", flush=True)
            if samples[-1][0] >= args.minutes * 60:
                runtime.stop()
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    report = runtime.run()
    done.set()
    print(report.summary())
    third = max(1, len(samples) // 3)
    first = sum(s[1] for s in samples[:third]) / third
    last = sum(s[1] for s in samples[-third:]) / third
    print(f"RSS first third {first:.1f} MiB, last third {last:.1f} MiB, growth {last - first:+.1f} MiB "
          f"over {samples[-1][0] / 60 if samples else 0:.1f} min")
    if samples and torch.cuda.is_available():
        for name, column in (("GPU allocated", 2), ("GPU reserved", 3)):
            first = sum(s[column] for s in samples[:third]) / third
            last = sum(s[column] for s in samples[-third:]) / third
            print(f"{name} first third {first:.1f} MiB, last third {last:.1f} MiB, growth {last - first:+.1f} MiB")


if __name__ == "__main__":
    main()
