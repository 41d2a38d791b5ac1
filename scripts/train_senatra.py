"""Train the small SeNaTra that segstream ships (models/weights/synthetic_senatra_tiny_192.safetensors).

    python scripts/train_senatra.py                        # into runs/train/
    python scripts/train_senatra.py --out models/weights/synthetic_senatra_tiny_192.safetensors

The defaults are the shipped model's recipe (models/weights/SENATRA_MODEL_CARD.md): 44 minutes on
one CPU thread; the weights go to runs/train/ unless --out says otherwise. ``--downsampling uniform`` trains the paper's ablation (strided-conv downsampling
instead of grouping, everything else equal). After training, the model is evaluated on held-out
scenes (PQ and mIoU, seeds 0 and 1, 20 frames of 320x240 each) through the pipeline's adapter.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
from dataclasses import replace
from pathlib import Path

import torch

from segstream.models.label_sets import load_label_set
from segstream.models.presets import SYNTHETIC_SENATRA
from segstream.models.senatra import SeNaTra
from segstream.models.senatra_adapter import SeNaTraSegmenter
from segstream.pipeline.evaluation import evaluate_segmenter
from segstream.pipeline.segment_metrics import evaluate_semantic
from segstream.pipeline.senatra_training import SeNaTraTrainSettings, save_senatra, train_senatra

HELD_OUT = (0, 1)


def held_out_quality(model: SeNaTra, name: str) -> dict:
    labels = load_label_set(SYNTHETIC_SENATRA.label_set)
    segmenter = SeNaTraSegmenter(model, "panoptic", labels, name)
    pq = evaluate_segmenter(segmenter.segment, HELD_OUT, 320, 240, 20, labels, progress=False)
    semantic = evaluate_semantic(segmenter.segment, HELD_OUT, 320, 240, 20, labels.num_classes)
    return {"pq": pq["pq"], "pq_things": pq["pq_things"], "pq_stuff": pq["pq_stuff"], "miou": semantic["miou"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=44.0, help="time budget; sets the schedule length")
    parser.add_argument("--steps", type=int, default=None, help="fixed step count instead of a time budget")
    parser.add_argument("--downsampling", choices=("grouping", "uniform"), default="grouping")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: two runs share 2 cores fairly)")
    # not the shipped file: a short trial run must not replace the model the demo and tests use
    parser.add_argument("--out", type=Path, default=Path("runs/train") / SYNTHETIC_SENATRA.weights,
                        help="where the weights go (the shipped ones are in models/weights/)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    config = replace(SYNTHETIC_SENATRA.config, downsampling=args.downsampling)
    settings = SeNaTraTrainSettings(
        config=config, minutes=args.minutes, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, threads=args.threads,
    )
    model, report = train_senatra(settings)
    facts = {
        "preset": SYNTHETIC_SENATRA.name,
        "downsampling": args.downsampling,
        "steps": report.steps,
        "images": report.images,
        "skipped_steps": report.skipped,
        "train_seconds": round(report.seconds, 1),
        "final_losses": json.dumps({k: round(v, 4) for k, v in report.parts.items()}),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "settings": json.dumps(
            {"batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
             "minutes": None if args.steps else args.minutes,
             "steps": args.steps, "threads": args.threads}
        ),
    }
    save_senatra(model, args.out, facts)
    facts["held_out"] = held_out_quality(model, SYNTHETIC_SENATRA.name)
    print(json.dumps(facts, indent=1), flush=True)


if __name__ == "__main__":
    main()
