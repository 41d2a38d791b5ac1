"""Write the demo's sample clip (samples/demo.mp4) and its ground truth with the synthetic generator.

    python scripts/make_sample.py
    python scripts/make_sample.py --out /tmp/sample --frames 10   # elsewhere, shorter
"""

from __future__ import annotations

import argparse
from pathlib import Path

from segstream.connectors.synthetic import write_clip

ROOT = Path(__file__).resolve().parents[1]
# Seed 7 is below the training seeds (pipeline/training.py), so the demo shows unseen scenes.
SEED, WIDTH, HEIGHT, FRAMES, FPS = 7, 640, 480, 150, 25.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "samples", help="folder for demo.mp4 and demo_truth.npz")
    parser.add_argument("--frames", type=int, default=FRAMES, help="clip length (default %(default)s: the demo's)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    write_clip(args.out / "demo.mp4", args.out / "demo_truth.npz", WIDTH, HEIGHT, args.frames, SEED, fps=FPS, crf=23)
    print(f"wrote {args.out / 'demo.mp4'} ({args.frames} frames, {WIDTH}x{HEIGHT} at {FPS:g} fps) and its ground truth")


if __name__ == "__main__":
    main()
