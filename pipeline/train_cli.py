"""What the two training scripts (``scripts/train_synthetic.py``, ``scripts/train_senatra.py``)
share: their common options, pictures of one's own (``--data``, COCO panoptic), a stop that
keeps the work (the first Ctrl-C, SIGTERM or SIGHUP ends the run after the step under way, keeps its
state for ``--resume`` and the weights so far; a second aborts), a state kept every few minutes
(a killed run goes on from there), and one line for a mistake instead of a traceback.

Files beside ``--out`` (``model.safetensors``): ``model.labels.json`` (``--data``'s classes,
for ``model.labels``), ``model.state.pt`` (while a run is unfinished: what ``--resume`` reads)
and ``model.partial.safetensors`` with ``model.partial.labels.json`` (a stopped run's, to try out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any
from pathlib import Path

from segstream.connectors.errors import ConfigError, ResourceLimit, SegstreamError

# The second stop signal, which aborted the run (its exit status is 128 + it).
_aborted_by: int | None = None

# torch and the training loop are imported where they are used: segstream evaluate's parser takes
# add_data_arguments from here


def positive(kind: type) -> Callable[[str], float | int]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
        return value

    return parse


DATA_LAYOUT = ("a COCO panoptic JSON, its PNGs in the folder named like it or panoptic/ beside it, its pictures "
               "in images/ beside it")


def add_data_arguments(parser: argparse.ArgumentParser, option: str, what: str, masks: str = "--masks",
                       images: str = "--images") -> None:
    """``option`` JSON and the options that name its two folders (training's and evaluate's)."""
    parser.add_argument(option, type=Path, default=None, metavar="JSON", help=what)
    parser.add_argument(masks, type=Path, default=None, metavar="DIR", help=f"with {option}: the folder of its PNGs")
    parser.add_argument(images, type=Path, default=None, metavar="DIR", help=f"with {option}: the folder of its pictures")


def add_common_arguments(parser: argparse.ArgumentParser, out: Path, lr: float) -> None:
    parser.add_argument("--minutes", type=positive(float), default=44.0, help="time budget; sets the schedule length")
    parser.add_argument("--steps", type=positive(int), default=None, help="fixed step count instead of a time budget")
    parser.add_argument("--batch-size", type=positive(int), default=8)
    parser.add_argument("--lr", type=positive(float), default=lr)
    parser.add_argument("--seed", type=int, default=0)
    # not the shipped file: a short trial run must not replace the model the demo and tests use
    parser.add_argument("--out", type=Path, default=out,
                        help="where the weights go (the shipped ones are in models/weights/); "
                             "its .labels.json, .state.pt and .partial.safetensors beside it")
    add_data_arguments(parser, "--data", "train on pictures of your own: " + DATA_LAYOUT + " (what `segstream "
                       "batch` writes with batch.coco_images: true); classes from its categories")
    add_data_arguments(parser, "--val", "with --data: held-out pictures (the same layout) whose PQ is measured at "
                       "the end", "--val-masks", "--val-images")
    parser.add_argument("--name", default=None,
                        help="with --data: the name of its classes' set, which entries add to the model's name "
                             "(<preset>:<name>; default: the data's, its JSON's or folder's name)")
    parser.add_argument("--init", default=None, metavar="WEIGHTS",
                        help="fine-tune: start from these weights of the same architecture (a file, a model folder, "
                             "or 'shipped' for the shipped model's) instead of random ones; a class head of another "
                             "class count (--data's) starts fresh")
    parser.add_argument("--resume", action="store_true",
                        help="go on from the state a stopped or killed run kept beside --out (same options)")
    parser.add_argument("--save-every", type=positive(float), default=5.0, metavar="MIN",
                        help="keep the run's state every MIN minutes (default 5), for --resume after a kill")


def beside(out: Path, kind: str) -> Path:
    """``model.safetensors`` -> ``model.<kind>`` (labels.json, state.pt, partial.safetensors)."""
    return out.with_name(f"{out.name.removesuffix('.safetensors')}.{kind}")


def _check_data_options(args: argparse.Namespace) -> None:
    """The data options that go with others (no file is looked at)."""
    if args.data is None:
        for option in ("masks", "images", "val", "val_masks", "val_images", "name"):
            if getattr(args, option) is not None:
                raise ConfigError(f"--{option.replace('_', '-')} goes with --data (pictures of your own); without it "
                                  "the run trains on synthetic scenes")
    if args.val is None and (args.val_masks is not None or args.val_images is not None):
        raise ConfigError("--val-masks and --val-images go with --val (held-out pictures)")


def open_data(args: argparse.Namespace):
    """``--data`` (and ``--val``) as ``CocoPanopticDataset``s, or None without ``--data``."""
    from segstream.connectors.coco_panoptic import CocoPanopticDataset

    _check_data_options(args)
    if args.data is None:
        return None, None
    data = CocoPanopticDataset(args.data, args.masks, args.images)
    val = None
    if args.val is not None:
        val = CocoPanopticDataset(args.val, args.val_masks, args.val_images, options=("--val-masks", "--val-images"))
        if (val.labels.names, val.labels.isthing) != (data.labels.names, data.labels.isthing):
            raise ConfigError(f"--val {args.val}: its categories ({', '.join(val.labels.names)}) are not --data's "
                              f"({', '.join(data.labels.names)})")
    print(f"checking the {len(data)} pictures of {args.data}" + (f" and the {len(val)} of {args.val}" if val else ""),
          file=sys.stderr, flush=True)
    labelled = data.check()  # a bad picture is found now, not hours into the run
    if not labelled:
        raise ConfigError(f"--data {args.data}: none of its {len(data)} pictures has a labelled segment — nothing "
                          "to train on")
    if len(labelled) < len(data):
        print(f"{len(data) - len(labelled)} of the {len(data)} pictures have no labelled segment (all void or "
              "crowd): left out of training", file=sys.stderr, flush=True)
    if val is not None:
        val.check()
    return data, val


def check_device(device: str) -> None:
    import torch

    try:
        torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device}: not a device torch knows — use cpu, cuda or cuda:N") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this torch sees no CUDA GPU — use --device cpu")


def check_out(args: argparse.Namespace) -> None:
    """What ``--out`` (and ``--resume``) can be told before anything is read or trained: a file
    in a folder this process may write, and a kept state there exactly when resuming."""
    _check_data_options(args)  # a plain mistake makes no --out folder
    state_path = beside(args.out, "state.pt")
    if args.out.is_dir():
        raise ConfigError(f"--out {args.out}: a folder — give the weights file's path, e.g. {args.out / 'model.safetensors'}")
    import tempfile

    try:  # found now, not when the first state or the weights are written
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=args.out.parent, prefix=".segstream-"):
            pass
    except OSError as error:
        raise ConfigError(f"--out {args.out}: cannot write in its folder ({error.strerror}) — give one you can "
                          "write to") from None
    if args.init not in (None, "shipped") and not Path(args.init).exists():
        raise ConfigError(f"--init {args.init}: no such file — give the weights to start from (or 'shipped')")
    if args.resume and not state_path.exists():
        raise ConfigError(f"--resume: {state_path}: no saved state to resume from (a run keeps it there while it "
                          "trains, and removes it when it ends)")
    if not args.resume and state_path.exists():
        raise ConfigError(f"{state_path} holds an unfinished run of --out {args.out}: go on with --resume, or delete "
                          "it to start again")


def initial_model(args: argparse.Namespace, run, build: Callable[[], Any], preset) -> Any:
    """With ``--init`` (and not resuming: the state has its own weights), ``build()``'s model with
    those weights loaded (the file read is ``run.init``); else None, for the training's own start.
    Weights of another architecture are one line."""
    import torch

    from segstream.connectors.errors import CheckpointError
    from segstream.pipeline.training import start_from

    if args.init is None or args.resume:
        return None
    torch.manual_seed(args.seed)  # a fresh class head's
    model = build()
    try:
        path, fresh = start_from(model, _init_file(args, preset.family), preset.family)
    except (CheckpointError, ValueError) as error:
        raise ConfigError(f"--init {args.init}: {error}") from None
    print(f"starting from {path}" + (f" (its class head, of other classes, starts fresh: {', '.join(fresh)})"
                                     if fresh else ""), file=sys.stderr, flush=True)
    run.init = str(path)
    return model


def _init_file(args: argparse.Namespace, family: str) -> str:
    """The weights file ``--init`` names (``shipped``: the shipped model's of the script's family;
    a model folder: its weights file)."""
    from segstream.connectors.checkpoints import checkpoint_path
    from segstream.models.presets import SYNTHETIC_SENATRA, SYNTHETIC_TINY

    shipped = {"eomt": SYNTHETIC_TINY, "senatra": SYNTHETIC_SENATRA}[family].weights
    return str(checkpoint_path(shipped if args.init == "shipped" else str(Path(args.init).resolve())))


def training_run(args: argparse.Namespace, kind: str, settings, data):
    """The run's control: its state file beside ``--out``, read back with ``--resume``."""
    from segstream.pipeline.training import TrainingRun, load_state

    state_path = beside(args.out, "state.pt")
    run = TrainingRun(state_path=state_path, every_s=args.save_every * 60, data=data)
    if args.resume:
        try:
            run.resume = load_state(state_path, kind, settings, data)
        except ValueError as error:
            raise ConfigError(f"--resume: {error}") from None
        run.init = run.resume.get("init")
        if args.init is not None and _init_file(args, kind) != run.init:
            # found reviewing: --init was ignored on --resume, a random start kept while fine-tuning was asked for
            raise ConfigError(f"--resume with --init {args.init}: the kept state started from "
                              f"{run.init or 'random weights'} — resume as it began, or delete {state_path} to "
                              "start again")
        print(f"resuming at step {run.resume['step']} ({run.resume['elapsed_s'] / 60:.1f} min trained) from "
              f"{state_path}", file=sys.stderr, flush=True)
    return run


@contextlib.contextmanager
def stop_on_signals(run) -> Iterator[list[int]]:
    """The first SIGINT/SIGTERM/SIGHUP sets ``run.stop`` (the loop ends after its step; the signal
    is appended to the yielded list); a second raises KeyboardInterrupt (abort, exit 128 + it)."""
    global _aborted_by
    _aborted_by = None
    got: list[int] = []

    def handle(signum, frame) -> None:
        global _aborted_by
        if got:
            _aborted_by = signum
            raise KeyboardInterrupt
        got.append(signum)
        run.stop.set()
        name = signal.Signals(signum).name
        # os.write: print may be interrupted holding stderr's lock (the progress bar's, a log line's)
        line = f"\n{name}: stopping after this step, keeping the work for --resume ({name} again aborts)\n"
        with contextlib.suppress(OSError):
            os.write(2, line.encode())

    stops = [signal.SIGINT, signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # a closed terminal stops it too (nohup: not)
        stops.append(signal.SIGHUP)
    before = {s: signal.signal(s, handle) for s in stops}
    try:
        yield got
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def finish(args: argparse.Namespace, report, signals: list[int], save: Callable[[Path, dict], None], facts: dict,
           data, run_hint: dict | str, held_out: Callable[[], dict] | None = None) -> int:
    """Write the outcome and say where it is: a finished run's weights at ``--out`` (its
    ``--data`` classes beside them; the kept state removed), then ``held_out()``'s measures, or a
    stopped run's weights so far beside it (with its classes: ``partial.labels.json``; a finished
    model at ``--out`` keeps its own); the facts as JSON on stdout; ``run_hint``: the ``model:``
    section that runs the weights (their checkpoint added), or what reads them where none does.
    Returns the exit status."""
    metadata = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in facts.items() if v is not None}
    from segstream.connectors.checkpoints import LABELS_KEY

    # the classes go with the weights: a copy of the weights alone still says which they are (the loader checks)
    if (names := _class_names(data, facts.get("preset"))) is not None:
        metadata[LABELS_KEY] = json.dumps(list(names), ensure_ascii=False)
    if report.stopped:
        partial, partial_labels = beside(args.out, "partial.safetensors"), beside(args.out, "partial.labels.json")
        with written(partial):
            save(partial, metadata | {"finished": "false", "schedule_done": f"{report.done:.4f}"})
        _write_labels(partial_labels, data, args.name)
        _say(json.dumps(facts | {"finished": False, "schedule_done": round(report.done, 4)}, indent=1), sys.stdout)
        _say(f"stopped at step {report.steps} ({100 * report.done:.0f}% of the schedule): go on with the same "
             f"command and --resume ({beside(args.out, 'state.pt')}); the weights so far, unfinished, are in "
             f"{partial}" + (f" (their classes: {partial_labels})" if data is not None else ""), sys.stderr)
        return 128 + (signals[0] if signals else signal.SIGINT)
    with written(args.out):
        save(args.out, metadata)
    labels = beside(args.out, "labels.json")
    _write_labels(labels, data, args.name)  # after the weights: the two change together
    if isinstance(run_hint, dict):
        hint = dict(run_hint, checkpoint=str(args.out.resolve()))
        if data is not None:
            hint["labels"] = str(labels.resolve())
    for leftover in ("state.pt", "partial.safetensors", "partial.labels.json"):
        beside(args.out, leftover).unlink(missing_ok=True)
    facts = facts | {"out": str(args.out)}
    if held_out is not None:  # after the weights are safe: a failure here loses no training
        facts["held_out"] = held_out()
    _say(json.dumps(facts, indent=1), sys.stdout)
    _say(f"weights in {args.out}; " + (f"run them with  model: {json.dumps(hint)}" if isinstance(run_hint, dict)
                                        else run_hint), sys.stderr)
    return 0


def _class_names(data, preset: str | None) -> tuple[str, ...] | None:
    """The names of the classes a run trained: ``--data``'s, else its preset's (synthetic scenes)."""
    from segstream.models.label_sets import LabelSet, load_label_set
    from segstream.models.presets import get_preset

    if data is not None:
        return data.labels.names
    if preset is None:
        return None
    labels = get_preset(preset).label_set
    return (labels if isinstance(labels, LabelSet) else load_label_set(labels)).names


def _write_labels(path: Path, data, name: str | None) -> None:
    """``data``'s classes as a labels file at ``path``; without data (synthetic scenes) none: an
    earlier --data run's there would name other classes than these weights'."""
    if data is None:
        path.unlink(missing_ok=True)
        return
    with written(path):
        path.write_text(json.dumps(data.label_file_data(name), indent=1) + "\n", encoding="utf-8")


def _say(text: str, stream) -> None:
    """A line of the outcome; a terminal that went away (SIGHUP) takes nothing from what was written."""
    with contextlib.suppress(OSError):
        print(text, file=stream, flush=True)


@contextlib.contextmanager
def written(path: Path) -> Iterator[None]:
    """A file that cannot be written (a full disk, a folder made read-only) is one line, exit 1."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ResourceLimit(f"cannot write {path}: {reason} — free space, or give another --out") from None


def main_guard(main: Callable[[], int]) -> int:
    """A mistake (a bad option, file or state) is one line and its exit status, not a traceback."""
    try:
        return main()
    except SegstreamError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:  # the second stop signal
        print("aborted: nothing more was written", file=sys.stderr)
        return 128 + (_aborted_by or signal.SIGINT)


def held_out_summary(result: dict) -> dict:
    """PQ, SQ, RQ (and of things, of stuff) as fractions, null where no segment of the kind was."""
    from segstream.pipeline.evaluation import json_safe

    kept = json_safe({k: v for k, v in result.items() if k in ("pq", "sq", "rq", "pq_things", "pq_stuff", "frames")})
    return {k: v if v is None else round(v, 4) for k, v in kept.items()}


def settings_summary(settings) -> dict:
    """The settings for the printed facts (plain JSON, not strings within strings)."""
    from segstream.pipeline.training import settings_record

    record = settings_record(settings)
    record.pop("config")
    record.pop("data")  # the facts say it
    return record
