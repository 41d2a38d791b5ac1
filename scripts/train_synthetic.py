"""Train the small EoMT that segstream ships (models/weights/synthetic_eomt_tiny_256.safetensors).

    python scripts/train_synthetic.py                      # into runs/train/
    python scripts/train_synthetic.py --out models/weights/synthetic_eomt_tiny_256.safetensors

The defaults are the shipped model's recipe (models/weights/MODEL_CARD.md); the weights go to
runs/train/ unless --out says otherwise (the second line replaces the shipped ones). It runs on the CPU
(2 cores: the 44-minute budget) or on a GPU when one is available (--device cuda).
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from segstream.models.presets import SYNTHETIC_TINY
from segstream.pipeline.training import TrainSettings, save_model, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=44.0, help="time budget; sets the schedule length")
    parser.add_argument("--steps", type=int, default=None, help="fixed step count instead of a time budget")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=8e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--patch-class-weight", type=float, default=2.0, help="weight of the auxiliary patch-class loss; 0 turns it off"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    # not the shipped file: a short trial run must not replace the model the demo and tests use
    parser.add_argument("--out", type=Path, default=Path("runs/train") / SYNTHETIC_TINY.weights,
                        help="where the weights go (the shipped ones are in models/weights/)")
    args = parser.parse_args()

    settings = TrainSettings(
        config=SYNTHETIC_TINY.config,
        minutes=args.minutes,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        patch_class_weight=args.patch_class_weight,
    )
    model, report = train(settings)
    facts = {
        "preset": SYNTHETIC_TINY.name,
        "steps": report.steps,
        "images": report.images,
        "train_seconds": round(report.seconds, 1),
        "final_loss": round(sum(report.losses[-50:]) / len(report.losses[-50:]), 4),
        "device": args.device,
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "settings": json.dumps(
            {
                "batch_size": args.batch_size,
                "lr": args.lr,
                "seed": args.seed,
                "minutes": None if args.steps else args.minutes,
                "steps": args.steps,
                "patch_class_weight": args.patch_class_weight,
            }
        ),
    }
    save_model(model, args.out, facts)
    print(json.dumps(facts, indent=1))


if __name__ == "__main__":
    main()
