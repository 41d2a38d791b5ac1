"""Write the demo's sample clip (samples/demo.mp4) and its ground truth with the synthetic generator.

    python scripts/make_sample.py
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segstream.connectors.synthetic import write_clip  # noqa: E402

# Seed 7 is below the training seeds (pipeline/training.py), so the demo shows unseen scenes.
SEED, WIDTH, HEIGHT, FRAMES, FPS = 7, 640, 480, 150, 25.0


def main() -> None:
    out = ROOT / "samples"
    out.mkdir(exist_ok=True)
    write_clip(out / "demo.mp4", out / "demo_truth.npz", WIDTH, HEIGHT, FRAMES, SEED, fps=FPS, crf=23)
    print(f"wrote {out / 'demo.mp4'} ({FRAMES} frames, {WIDTH}x{HEIGHT} at {FPS:g} fps) and its ground truth")


if __name__ == "__main__":
    main()
