"""Train the small EoMT that segstream ships (models/weights/synthetic_eomt_tiny_256.safetensors),
or one of its size on pictures of your own.

    python scripts/train_synthetic.py                      # into runs/train/
    python scripts/train_synthetic.py --out models/weights/synthetic_eomt_tiny_256.safetensors
    python scripts/train_synthetic.py --data labelled/panoptic.json --val held_out/panoptic.json \\
        --out runs/warehouse/model.safetensors             # your classes: model.labels.json beside it

The defaults are the shipped model's recipe (models/weights/MODEL_CARD.md); the weights go to
runs/train/ unless --out says otherwise (the second line replaces the shipped ones). It runs on the CPU
(2 cores: the 44-minute budget) or on a GPU when one is available (--device cuda). Ctrl-C or
SIGTERM stops it after the step under way and keeps the work: the same command with --resume
goes on (also after a kill, from the state kept every --save-every minutes).

--data trains from random weights, or with --init shipped from the shipped model's (fine-tuning; a
class head of another class count starts fresh). There is no backbone pretrained on real pictures
here: classes unlike the synthetic scenes' need many labelled pictures and a GPU's hours.
"""

from __future__ import annotations

import argparse
import platform
import sys
from dataclasses import replace
from pathlib import Path

import torch

from segstream.models.eomt import EoMT
from segstream.models.presets import SYNTHETIC_TINY
from segstream.pipeline.train_cli import (
    add_common_arguments, check_device, check_out, finish, held_out_summary, initial_model, main_guard, open_data,
    settings_summary, stop_on_signals, training_run,
)
from segstream.pipeline.training import TrainSettings, save_model, train


def held_out_pq(model, labels, val) -> dict:
    from segstream.models.segmenter import EoMTSegmenter
    from segstream.pipeline.evaluation import evaluate_segmenter

    segmenter = EoMTSegmenter(model.to("cpu"), "panoptic", labels, SYNTHETIC_TINY.name, precision="fp32")
    result = evaluate_segmenter(segmenter.segment, (), 0, 0, 0, labels, frames=val.scored_frames(),
                                truth_labels=val.labels, progress=False)
    return held_out_summary(result)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, Path("runs/train") / SYNTHETIC_TINY.weights, lr=8e-4)
    parser.add_argument(
        "--patch-class-weight", type=float, default=2.0, help="weight of the auxiliary patch-class loss; 0 turns it off"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    check_device(args.device)
    check_out(args)  # before the pictures are read: a mistake here is said at once
    data, val = open_data(args)
    config = SYNTHETIC_TINY.config
    if data is not None:
        config = replace(config, num_classes=data.labels.num_classes)
    settings = TrainSettings(
        config=config,
        minutes=args.minutes,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        patch_class_weight=args.patch_class_weight,
    )
    run = training_run(args, "eomt", settings, data)
    start = initial_model(args, run, lambda: EoMT(config), SYNTHETIC_TINY)  # fine-tuning: --init's weights
    with stop_on_signals(run) as signals:
        model, report = train(settings, model=start, run=run)
    recent = report.losses[-50:]
    facts = {
        "preset": SYNTHETIC_TINY.name,
        "data": str(args.data) if data is not None else "synthetic scenes",
        "steps": report.steps,
        "images": report.images,
        "train_seconds": round(report.seconds, 1),
        # the mean of the last 50 steps' losses (the bar shows the last 10's)
        "final_loss": round(sum(recent) / len(recent), 4) if recent else None,
        "device": args.device,
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "init": run.init,
        "settings": settings_summary(settings),
    }
    held_out = (lambda: held_out_pq(model, data.labels, val)) if val is not None else None
    return finish(args, report, signals, lambda path, meta: save_model(model, path, meta), facts, data,
                  {"preset": SYNTHETIC_TINY.name}, held_out)


if __name__ == "__main__":
    sys.exit(main_guard(main))
