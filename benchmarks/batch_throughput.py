"""Batch throughput: `segstream batch` (local engine, and Ray on this machine) against
`segstream run` over the same files, with the same model, engine settings and JSONL output.

    python benchmarks/batch_throughput.py [--videos 4] [--frames 60] [--size 320 240] [--no-ray]

Each row is frames per second of wall time for the whole command (model load and warm-up
included, the same for all), the best of ``--rounds`` alternating rounds (a shared machine is
noisy); Ray's row leaves out starting Ray itself, printed apart. Prints the ratios batch/run and
ray/local.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from segstream.connectors.synthetic import write_clip
from segstream.pipeline.batch import run_batch
from segstream.pipeline.cli import run_pipeline
from segstream.pipeline.config import BatchPipelineConfig, validate_config


def clips(folder: Path, videos: int, frames: int, width: int, height: int) -> list[Path]:
    paths = []
    for i in range(videos):
        path = folder / f"clip{i}.mp4"
        write_clip(path, folder / f"clip{i}_truth.npz", width, height, frames, seed=100 + i)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", type=int, nargs=2, default=[320, 240], metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        videos = clips(folder, args.videos, args.frames, *args.size)
        total = args.videos * args.frames
        common = {
            "model": {"device": args.device}, "engine": {"batch_size": args.batch_size}, "ops": {"http": None},
        }
        run_cfg = validate_config({
            **common,
            "sources": [{"name": v.stem, "type": "file", "path": str(v)} for v in videos],
            "sinks": {"redis": {"enabled": False}, "files": {"enabled": True, "dir": str(folder / "run")}},
        })

        def run() -> float:
            start = time.monotonic()
            report = run_pipeline(run_cfg, progress=None)
            assert report.published == total
            return total / (time.monotonic() - start)

        def batch(engine: str, out: str) -> float:
            cfg = validate_config({
                **common, "sinks": {"redis": {"enabled": False}},
                "batch": {"output": str(folder / out), "coco_panoptic": False, "concurrency": args.videos},
            }, schema=BatchPipelineConfig)
            start = time.monotonic()
            outcomes, _, _ = run_batch(cfg, [str(v) for v in videos], engine=engine, progress=False)
            assert sum(o.frames for o in outcomes) == total
            return total / (time.monotonic() - start)

        rounds: dict[str, list[float]] = {"run": [], "batch_local": []}
        for i in range(args.rounds):
            rounds["run"].append(run())
            rounds["batch_local"].append(batch("local", f"local{i}"))
        ray_start_s = None
        if not args.no_ray:
            import ray

            start = time.monotonic()
            ray.init(include_dashboard=False, log_to_driver=False)
            ray_start_s = time.monotonic() - start
            try:
                rounds["batch_ray"] = [batch("ray", f"ray{i}") for i in range(args.rounds)]
            finally:
                ray.shutdown()
        fps = {name: max(values) for name, values in rounds.items()}

    print(f"{args.videos} videos x {args.frames} frames, {args.size[0]}x{args.size[1]}, {args.device}, "
          f"batch size {args.batch_size}")
    for name, value in fps.items():
        print(f"  {name:12} {value:7.1f} fps")
    ratios = {"batch_vs_run": fps["batch_local"] / fps["run"]}
    print(f"  batch (local) / run: {ratios['batch_vs_run']:.2f}x")
    if "batch_ray" in fps:
        ratios["ray_vs_local"] = fps["batch_ray"] / fps["batch_local"]
        print(f"  ray / local:         {ratios['ray_vs_local']:.2f}x   (starting Ray: {ray_start_s:.1f} s, not counted)")
    print(json.dumps({"fps": fps, "rounds": rounds, "ratios": ratios, "ray_start_s": ray_start_s}))


if __name__ == "__main__":
    main()
