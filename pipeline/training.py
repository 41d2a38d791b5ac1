"""Training a small EoMT from scratch on synthetic scenes (connectors/synthetic.py).

The recipe is the paper's: Hungarian-matched mask classification loss on every query block's
prediction and the final one, AdamW with warm-up and polynomial decay, and masked attention that
each query block starts with and loses on a staggered schedule, so the finished model runs
without it like the published ones. One addition stands in for the pretrained backbone the paper
starts from: an auxiliary patch-class loss on the encoder (``PatchClassifier``), dropped after
training. The schedule follows a time budget: learning rate and annealing are functions of the
share of the budget spent, so the run ends on time however fast or loaded the machine is.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from segstream.connectors.errors import TrainingDiverged
from segstream.connectors.output_files import replace_synced
from segstream.connectors.synthetic import SyntheticScene
from segstream.connectors.terminal import bar_shape, bars_off
from segstream.models.criterion import LossWeights, Target, mask_classification_loss
from segstream.models.eomt import EoMT, EoMTConfig
from segstream.models.processing import letterbox, letterbox_size, scale_label_map
from segstream.models.results import FrameResult

# Seeds below this are held out for evaluation; training scenes never use them.
FIRST_TRAINING_SEED = 1_000_000


@dataclass(slots=True)
class TrainSettings:
    config: EoMTConfig
    minutes: float = 44.0
    steps: int | None = None  # overrides the time budget when set
    batch_size: int = 8
    lr: float = 8e-4
    weight_decay: float = 0.05
    warmup: float = 0.05  # share of training spent warming up the learning rate
    poly_power: float = 0.9
    clip_norm: float = 1.0
    frame_size: tuple[int, int] = (320, 240)  # width, height of rendered training frames
    scenes: int = 24  # scenes kept alive at once; frames are drawn from random ones
    scene_life: int = 120  # frames a scene serves before a fresh seed replaces it
    seed: int = 0
    fixed_batch: bool = False  # overfit one batch (smoke tests)
    device: str = "cpu"
    threads: int | None = None
    weights: LossWeights = field(default_factory=LossWeights)
    # Weight of the auxiliary patch-class loss on the encoder (PatchClassifier); 0 turns it off.
    patch_class_weight: float = 2.0


@dataclass(slots=True)
class TrainReport:
    steps: int
    seconds: float
    losses: list[float]
    images: int
    stopped: bool = False  # a stop came before the schedule's end (the model is not finished)
    done: float = 1.0  # the share of the schedule done


@dataclass
class TrainingRun:
    """What a training loop is told from outside its settings: ``stop`` (set by a signal) ends it
    after the step under way; ``resume`` is a state ``save_state`` wrote, to go on from; with
    ``state_path`` the loop keeps its state there every ``every_s`` seconds and when it stops, so
    that a run killed or stopped goes on with ``--resume``; ``data`` are pictures of one's own
    (a ``CocoPanopticDataset``) instead of synthetic scenes."""

    stop: threading.Event = field(default_factory=threading.Event)
    resume: dict | None = None
    state_path: Path | None = None
    every_s: float = 300.0
    data: Any = None
    init: str | None = None  # the weights it started from (--init), kept in its state

    def feed(self, settings, step: int) -> SceneFeed:
        return DatasetFeed(settings, self.data, step) if self.data is not None else SceneFeed(settings, step)

    def keep(self, kind: str, settings, modules: dict[str, nn.Module], optimizer, step: int, elapsed_s: float) -> None:
        """Keep the run's state at ``state_path`` (``save_state``), with its data and its start."""
        save_state(self.state_path, kind, settings, modules, optimizer, step, elapsed_s, self.data, self.init)


def save_state(path: Path, kind: str, settings, modules: dict[str, nn.Module], optimizer, step: int,
               elapsed_s: float, data=None, init: str | None = None) -> None:
    """What a training run needs to go on where it stopped: its weights (``modules``), optimizer,
    step, time spent and settings; written whole or not at all (a kill mid-write keeps the last)."""
    state = {
        "kind": kind, "settings": settings_record(settings, data), "step": step, "elapsed_s": elapsed_s,
        "modules": {name: module.state_dict() for name, module in modules.items()},
        "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(), "init": init,
    }
    try:
        with _replacing(path) as partial:
            torch.save(state, partial)
    except (OSError, RuntimeError) as error:  # torch says a full disk as a RuntimeError of its writer
        from segstream.connectors.errors import ResourceLimit

        raise ResourceLimit(f"cannot keep the run's state in {path} ({getattr(error, 'strerror', None) or error}) — "
                            "free space, then go on with --resume from the last state kept") from None


def load_state(path: Path, kind: str, settings, data=None) -> dict:
    """A state ``save_state`` wrote, checked to be of this kind of model and these settings; a
    ValueError says what differs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{path}: no saved state to resume from (a run keeps it there while it trains, "
                         "and removes it when it ends)") from None
    except Exception as error:  # a truncated or foreign file: torch says pickle/zip things
        said = str(error).splitlines()[0][:160] if str(error) else ""
        raise ValueError(f"{path}: not a training state this script saved ({type(error).__name__}: {said}) — "
                         "delete it to start again") from None
    if not isinstance(state, dict) or state.get("kind") != kind:
        raise ValueError(f"{path}: not the state of a {kind} training run")
    mine = settings_record(settings, data)
    differ = [f"{key} {state['settings'].get(key)!r} there, {value!r} here" for key, value in mine.items()
              if state["settings"].get(key) != value and key != "config"]
    if state["settings"].get("config") != mine["config"]:  # said by what differs, not as two JSONs
        theirs, ours = json.loads(state["settings"]["config"]), json.loads(mine["config"])
        differ += [f"{key} {theirs.get(key)!r} there, {value!r} here" for key, value in ours.items()
                   if theirs.get(key) != value]
    if differ:
        raise ValueError(f"{path} was saved with other settings ({'; '.join(differ)}) — resume with the options "
                         "the run began with")
    return state


def settings_record(settings, data=None) -> dict:
    """The settings that make a run what it is, as plain values (a resumed run must have the same):
    with ``data`` (one's own pictures) the paths of its JSON and of its PNGs' and pictures' folders."""
    record = {"data": None if data is None else " ".join(
        str(Path(p).resolve()) for p in (data.json_path, getattr(data, "masks", ""), getattr(data, "images", "")))}
    for key in ("minutes", "steps", "batch_size", "lr", "seed", "patch_class_weight", "downsampling"):
        if hasattr(settings, key):
            record[key] = getattr(settings, key)
    record["config"] = json.dumps(asdict(settings.config), sort_keys=True)
    if record.get("steps") is not None:
        record["minutes"] = None  # the budget does not count when steps are set
    return record


def write_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """``state`` as safetensors at ``path``: written beside it and moved into place (an
    interrupted write leaves the old file), readable by all as the umask allows (safetensors
    itself makes files its owner's only: a container's other user could not read them). Weights
    holding NaN or infinity are never written (``TrainingDiverged``): no loader would take them."""
    from safetensors.torch import save_file

    if bad := [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]:
        raise TrainingDiverged(f"training diverged: {len(bad)} of the {len(state)} tensors (e.g. {bad[0]}) are NaN "
                               f"or infinite, so {path} was not written — train again with a lower --lr")

    with _replacing(path) as partial:
        save_file(state, str(partial), metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A file written beside ``path`` (the yielded path) and moved into place when whole and on
    disk: a kill, a full disk or a power cut mid-write keeps the old ``path``, and leaves no
    model-sized half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.writing")
    try:
        yield partial
        replace_synced(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def annealing(progress: float, blocks: int, power: float = 0.9) -> list[float]:
    """Masked-attention probability per query block at ``progress`` (0..1) through training:
    1 until the block's window, then a polynomial fall to 0. Windows are staggered from 20% to
    75% of training, earliest block first, leaving the last quarter to train the unmasked model
    that inference runs."""
    probs = []
    for b in range(blocks):
        start = 0.2 + 0.35 * b / max(1, blocks)
        end = start + 0.2
        if progress < start:
            probs.append(1.0)
        elif progress >= end:
            probs.append(0.0)
        else:
            probs.append((1 - (progress - start) / (end - start)) ** power)
    return probs


class SceneFeed:
    """Training frames and targets from a rotating pool of synthetic scenes."""

    def __init__(self, settings: TrainSettings, offset: int = 0):
        # ``offset``: a resumed run's step, so that it draws other scenes than its first part did
        self.settings = settings
        self.rng = np.random.default_rng([settings.seed, offset])
        self.next_seed = FIRST_TRAINING_SEED + settings.seed * 100_000 + offset
        self.pool = [self._new_scene() for _ in range(settings.scenes)]

    def _new_scene(self) -> list:
        w, h = self.settings.frame_size
        scene = SyntheticScene(width=w, height=h, fps=25.0, seed=self.next_seed)
        self.next_seed += 1
        for _ in range(int(self.rng.integers(0, 40))):
            scene.render()
        return [scene, 0]

    def draw(self) -> tuple[np.ndarray, FrameResult]:
        """One training frame and its truth: a random live scene, advanced 1 to 5 frames."""
        slot = int(self.rng.integers(len(self.pool)))
        entry = self.pool[slot]
        for _ in range(int(self.rng.integers(1, 6))):
            image, truth = entry[0].render()
            entry[1] += 1
        if entry[1] >= self.settings.scene_life:
            self.pool[slot] = self._new_scene()
        return image, truth

    def batch(self, cfg: EoMTConfig) -> tuple[torch.Tensor, list[Target], torch.Tensor]:
        """Letterboxed uint8 images, their segment targets, and their patch-class shares."""
        images, targets, shares = [], [], []
        for _ in range(self.settings.batch_size):
            image, truth = self.draw()
            images.append(torch.from_numpy(image))
            target, patch_shares = training_targets(truth, cfg)
            targets.append(target)
            shares.append(patch_shares)
        pixels, _ = letterbox(images, cfg.img_size)
        return pixels, targets, torch.stack(shares)


class DatasetFeed(SceneFeed):
    """Training frames and targets drawn from pictures of one's own (a ``CocoPanopticDataset``):
    a random picture each time, mirrored left-right half the time."""

    def __init__(self, settings, dataset, offset: int = 0):
        self.settings = settings
        self.dataset = dataset
        self.rng = np.random.default_rng([settings.seed, offset])
        # the pictures with a labelled segment (the training script checks them all first)
        self.indices = getattr(dataset, "labelled", None) or list(range(len(dataset)))

    def draw(self) -> tuple[np.ndarray, FrameResult]:
        image, truth = self.dataset[self.indices[int(self.rng.integers(len(self.indices)))]]
        if self.rng.random() < 0.5:
            image = np.ascontiguousarray(image[:, ::-1])
            truth.segment_map = np.ascontiguousarray(truth.label_map[:, ::-1])
        return image, truth


def training_targets(truth: FrameResult, cfg: EoMTConfig) -> tuple[Target, torch.Tensor]:
    """One frame's ground truth, letterboxed like the input (the label map is scaled once):

    - the segments as soft masks at the model's mask resolution (each cell holds the share of its
      pixels inside the segment), for the mask classification loss;
    - N x C patch-class shares: for every input patch, the share of its pixels in each class (all
      zero on padding), for the auxiliary patch-class loss.
    """
    h, w = letterbox_size(truth.height, truth.width, cfg.img_size)
    scaled = scale_label_map(truth.label_map, h, w)
    ids = torch.from_numpy(truth.segments.ids.astype(np.int64))
    classes = torch.from_numpy(truth.segments.class_ids.astype(np.int64))

    onehot = torch.zeros((len(ids), cfg.img_size, cfg.img_size))
    onehot[:, :h, :w] = (scaled[None] == ids[:, None, None]).float()
    masks = F.adaptive_avg_pool2d(onehot, cfg.mask_size)
    present = masks.flatten(1).sum(1) > 0

    # segment ids are 0..S-1, in list order; void (-1, unlabelled pixels of one's own pictures) is no class
    class_map = torch.cat([classes, classes.new_full((1,), -1)])[scaled]
    onehot = torch.zeros((cfg.num_classes, cfg.img_size, cfg.img_size))
    onehot[:, :h, :w] = (class_map[None] == torch.arange(cfg.num_classes)[:, None, None]).float()
    shares = F.adaptive_avg_pool2d(onehot, cfg.grid_size).flatten(1).T
    return Target(classes[present], masks[present]), shares


class PatchClassifier(nn.Module):
    """Training-only auxiliary head: each patch's class mix, from the tokens entering the first
    query block. It stands in for the pretrained backbone (DINOv2) the paper fine-tunes, whose
    patch tokens already tell classes apart; it is dropped after training, so the model is plain EoMT.
    """

    def __init__(self, cfg: EoMTConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    def loss(self, tokens: torch.Tensor, shares: torch.Tensor) -> torch.Tensor:
        """Soft-target cross-entropy over the patches that hold any image (not letterbox padding)."""
        mass = shares.sum(-1)
        inside = mass > 0
        target = shares[inside] / mass[inside, None]
        log_probs = F.log_softmax(self.head(self.norm(tokens[inside])).float(), dim=-1)
        return -(target * log_probs).sum(-1).mean()


def _lr_at(progress: float, s: TrainSettings) -> float:
    """Linear warm-up over the first ``warmup`` share of training, then polynomial decay."""
    if progress < s.warmup:
        return s.lr * max(progress / s.warmup, 0.01)
    return s.lr * max(0.0, 1 - (progress - s.warmup) / (1 - s.warmup)) ** s.poly_power


def _param_groups(modules: list[nn.Module], weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for module in modules:
        for name, p in module.named_parameters():
            # Norms, biases, LayerScale and learned tokens are not shrunk towards zero.
            if p.ndim <= 1 or name in ("cls_token", "reg_token", "pos_embed", "q.weight"):
                no_decay.append(p)
            else:
                decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(settings: TrainSettings, model: EoMT | None = None, progress: bool = True,
          run: TrainingRun | None = None) -> tuple[EoMT, TrainReport]:
    run = run or TrainingRun()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    cfg = settings.config
    model = (model or EoMT(cfg)).to(settings.device).train()
    patch_classifier = PatchClassifier(cfg).to(settings.device).train()
    optimizer = torch.optim.AdamW(
        _param_groups([model, patch_classifier], settings.weight_decay), lr=settings.lr, betas=(0.9, 0.999)
    )
    step, spent_before = 0, 0.0
    if run.resume is not None:
        model.load_state_dict(run.resume["modules"]["model"])
        patch_classifier.load_state_dict(run.resume["modules"]["patch_classifier"])
        optimizer.load_state_dict(run.resume["optimizer"])
        torch.set_rng_state(run.resume["torch_rng"])
        step, spent_before = run.resume["step"], run.resume["elapsed_s"]
    feed = run.feed(settings, step)
    fixed = feed.batch(cfg) if settings.fixed_batch else None
    modules = {"model": model, "patch_classifier": patch_classifier}

    budget = settings.minutes * 60
    losses: list[float] = []
    start = saved = time.perf_counter()
    # disable=None: a bar on a terminal only (a log file gets no carriage-return lines)
    bar = tqdm(total=settings.steps, initial=step, disable=bars_off() if progress else True, file=sys.stderr, unit="step",
               **bar_shape())
    while True:
        # Progress through the schedule is the share of steps done, or of the time budget spent,
        # so a machine that speeds up or slows down mid-run still ends on schedule.
        if settings.steps is not None:
            progress_done = step / settings.steps
        else:
            progress_done = (spent_before + time.perf_counter() - start) / budget
        if progress_done >= 1 or run.stop.is_set():
            break
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(progress_done, settings)
        model.attn_mask_probs.copy_(torch.tensor(annealing(progress_done, cfg.num_query_blocks)))
        pixels, targets, shares = fixed or feed.batch(cfg)
        pixels = pixels.to(settings.device)
        targets = [Target(t.classes.to(settings.device), t.masks.to(settings.device)) for t in targets]
        encoder_tokens: list[torch.Tensor] = []
        loss = 0.0
        try:
            for mask_logits, class_logits in model.forward_train(pixels, encoder_tokens):
                parts = mask_classification_loss(mask_logits, class_logits, targets, settings.weights)
                loss = loss + sum(parts.values())
        except FloatingPointError:
            raise diverged(step, "the model's predictions are NaN or infinite", optimizer, settings.lr) from None
        if settings.patch_class_weight and encoder_tokens:
            loss = loss + settings.patch_class_weight * patch_classifier.loss(
                encoder_tokens[0], shares.to(settings.device)
            )
        if not bool(torch.isfinite(loss)):
            raise diverged(step, f"the loss is {float(loss)}", optimizer, settings.lr)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_([*model.parameters(), *patch_classifier.parameters()], settings.clip_norm)
        if not bool(torch.isfinite(norm)):  # clipping would make the weights NaN
            raise diverged(step, f"the gradients' norm is {float(norm)}", optimizer, settings.lr)
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", mask_attn=f"{float(model.attn_mask_probs[-1]):.2f}")
        if run.state_path is not None and time.perf_counter() - saved >= run.every_s:
            run.keep("eomt", settings, modules, optimizer, step, spent_before + time.perf_counter() - start)
            saved = time.perf_counter()
    bar.close()
    seconds = time.perf_counter() - start
    stopped = progress_done < 1
    if stopped and run.state_path is not None:
        run.keep("eomt", settings, modules, optimizer, step, spent_before + seconds)
    if bad := [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]:
        raise diverged(step - 1, f"{len(bad)} weights (e.g. {bad[0]}) are NaN or infinite", optimizer, settings.lr)
    model.attn_mask_probs.zero_()
    report = TrainReport(step, spent_before + seconds, losses, step * settings.batch_size, stopped, min(1.0, progress_done))
    return model.eval(), report


def diverged(step: int, what: str, optimizer, lr: float) -> TrainingDiverged:
    """The one line for a run whose numbers became NaN or infinite at ``step`` (counted from 0)."""
    now = optimizer.param_groups[0]["lr"]
    if step == 0 and not optimizer.state:  # no update made yet: not the learning rate's doing
        return TrainingDiverged(f"training failed at its first step: {what}, before any update — the weights it "
                                "started from (--init) or the pictures are broken; no weights were written")
    return TrainingDiverged(f"training diverged at step {step + 1}: {what} (--lr {lr:g}, {now:.3g} at that step) — "
                            "no weights were written; train again with a lower --lr")


# The class head's tensors, which another class count shapes otherwise (they start fresh then).
CLASS_HEADS = {"eomt": ("class_head.weight", "class_head.bias"), "senatra": ("head.fc2.weight", "head.fc2.bias")}


def start_from(model: nn.Module, reference: str, family: str) -> tuple[Path, list[str]]:
    """Load the weights ``reference`` names (a file, a model folder, a shipped weights file's
    name) into ``model`` to fine-tune it: every tensor must fit, except the class head's when
    the classes are others (those stay as initialised: returned, with the file read). Anything
    else that does not fit raises ValueError naming it."""
    from segstream.connectors.checkpoints import checkpoint_path, read_state_dict

    path = checkpoint_path(reference)  # (a model folder's weights file)
    state = read_state_dict(path)
    if family == "eomt":
        from segstream.models.eomt import convert_state_dict

        state = convert_state_dict(state)
    own = model.state_dict()
    fresh = [k for k in CLASS_HEADS[family] if k in state and k in own and state[k].shape != own[k].shape]
    problems = [f"missing {k}" for k in own if k not in state and k != "attn_mask_probs"]  # EoMT's schedule
    problems += [f"unexpected {k}" for k in state if k not in own]
    problems += [f"{k}: shape {tuple(state[k].shape)}, expected {tuple(own[k].shape)}"
                 for k in own if k in state and k not in fresh and state[k].shape != own[k].shape]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError(f"not weights of this model's architecture: {'; '.join(problems[:3])}{more}")
    model.load_state_dict({k: v for k, v in state.items() if k not in fresh}, strict=False)  # all else checked
    return path, fresh


def save_model(model: EoMT, path: Path, metadata: dict) -> None:
    """Weights as safetensors, with the architecture and training facts in its metadata."""
    meta = {"format": "segstream", "config": json.dumps(asdict(model.cfg))} | {k: str(v) for k, v in metadata.items()}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_safetensors(state, Path(path), meta)


def smoke_config() -> EoMTConfig:
    """A tiny architecture for tests of the training loop."""
    return EoMTConfig(img_size=64, dim=48, depth=3, heads=3, num_queries=8, num_classes=8, num_query_blocks=2)
