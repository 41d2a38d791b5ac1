"""Training a small SeNaTra from scratch on synthetic scenes (connectors/synthetic.py).

Frames come from the same rotating scene pool as EoMT's training (``training.SceneFeed``) and are
scaled like inference scales them (``senatra_adapter.scale_frames``). Three losses, all on what
the grouping layers produce, with no pixel decoder:

- **semantic**: soft cross-entropy of the pixel logits (the final tokens' class logits carried
  to the stem grid by the composed assignments) against each stem cell's class shares. This is
  the paper's native-mask supervision.
- **grouping** (ours): every final token should hold one ground-truth segment (an instance for
  things). With M the stem-to-final memberships and S the stem cells' segment shares, a token's
  segment mix is q = normalise(M^T S) and a cell's predicted segment mix is M q; the loss is the
  cross-entropy of S against M q. It is lowest when no token straddles two segments, so touching
  objects of one class end up in different tokens. The uniform ablation's M is fixed: no effect.
- **embedding** (ours): a discriminative loss (pull each token's embedding to its segment's mean
  within 0.5, push the means of different thing segments 3 apart) on the final tokens whose main
  segment is a thing, so inference can tell touching same-class tokens apart (margin 1.5).

The paper's stabilisers: linear warm-up then polynomial decay of the learning rate, AdamW weight
decay, gradient-norm clipping. A step whose gradient is not finite is skipped and counted. The
schedule follows a time budget like EoMT's training.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from segstream.connectors.synthetic import CLASSES
from segstream.connectors.terminal import bar_shape, bars_off
from segstream.models.processing import scale_label_map
from segstream.models.results import FrameResult
from segstream.models.senatra import SeNaTra, SeNaTraConfig, SeNaTraOutput, densify, memberships
from segstream.models.senatra_adapter import STEM, scale_frames
from segstream.pipeline.training import (  # EoMT's warm-up + poly schedule, same fields
    SceneFeed, TrainingRun, _lr_at, write_safetensors,
)

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SeNaTraTrainSettings:
    config: SeNaTraConfig
    minutes: float = 45.0
    steps: int | None = None  # overrides the time budget when set
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05  # share of training spent warming up the learning rate
    poly_power: float = 0.9
    clip_norm: float = 1.0
    frame_size: tuple[int, int] = (320, 240)  # width, height of rendered frames (scaled to input_size)
    scenes: int = 24
    scene_life: int = 120
    seed: int = 0
    fixed_batch: bool = False  # overfit one batch (smoke tests)
    threads: int | None = None
    group_weight: float = 1.0
    embed_weight: float = 1.0
    log_every: int = 50


@dataclass(slots=True)
class SeNaTraTrainReport:
    steps: int
    seconds: float
    losses: list[float]
    images: int
    parts: dict[str, float]  # mean of each loss over the last 50 steps
    skipped: int = 0  # steps whose gradient was not finite (no update)
    stopped: bool = False  # a stop came before the schedule's end (the model is not finished)
    done: float = 1.0  # the share of the schedule done


@dataclass(slots=True)
class NativeTarget:
    """One frame's truth on the stem grid of its (padded) input: ``segments`` K x N0 (each stem
    cell's share of pixels in each segment, zero on padding), ``classes`` K, ``isthing`` K."""

    segments: Tensor
    classes: Tensor
    isthing: Tensor


def native_target(truth: FrameResult, scaled: tuple[int, int], padded: tuple[int, int]) -> NativeTarget:
    """The truth scaled like the input (the label under each pixel's centre), as segment shares per stem cell."""
    h, w = scaled
    label = scale_label_map(truth.label_map, h, w)
    ids = torch.from_numpy(truth.segments.ids.astype(np.int64))
    onehot = torch.zeros((len(ids), *padded))
    onehot[:, :h, :w] = (label[None] == ids[:, None, None]).float()
    shares = F.avg_pool2d(onehot, STEM).flatten(1)
    return NativeTarget(
        shares,
        torch.from_numpy(truth.segments.class_ids.astype(np.int64)),
        torch.from_numpy(truth.segments.isthing.astype(bool)),
    )


def training_batch(feed: SceneFeed, cfg: SeNaTraConfig) -> tuple[Tensor, list[NativeTarget]]:
    images, truths = zip(*(feed.draw() for _ in range(feed.settings.batch_size)))
    pixels, scaled = scale_frames([torch.from_numpy(i) for i in images], cfg.input_size)
    padded = tuple(pixels.shape[-2:])
    return pixels, [native_target(t, s, padded) for t, s in zip(truths, scaled)]


def semantic_loss(pixel_logits: Tensor, targets: list[NativeTarget], num_classes: int) -> Tensor:
    """Soft cross-entropy of the stem-grid class logits against each cell's class shares."""
    log_probs = F.log_softmax(pixel_logits.float().flatten(2), dim=1)  # B x C x N0
    total, mass = 0.0, 0.0
    for b, t in enumerate(targets):
        class_shares = torch.zeros(num_classes, t.segments.shape[1]).index_add_(0, t.classes, t.segments)
        total = total - (class_shares * log_probs[b]).sum()
        mass += float(class_shares.sum())
    return total / max(mass, 1.0)


def grouping_loss(final_members: Tensor, targets: list[NativeTarget]) -> tuple[Tensor, list[Tensor]]:
    """Cross-entropy of each cell's segment shares against the segment mix of the final tokens it
    belongs to; also each image's token x segment mass (for the embedding loss)."""
    total, mass, token_mass = 0.0, 0.0, []
    for b, t in enumerate(targets):
        m = final_members[b]  # N0 x M
        s = t.segments.T  # N0 x K
        per_token = m.T @ s  # M x K
        q = per_token / per_token.sum(1, keepdim=True).clamp_min(1e-6)
        predicted = m @ q  # N0 x K
        total = total - (s * predicted.clamp_min(1e-6).log()).sum()
        mass += float(s.sum())
        token_mass.append(per_token.detach())
    return total / max(mass, 1.0), token_mass


def embedding_loss(embeddings: Tensor, token_mass: list[Tensor], targets: list[NativeTarget],
                   pull: float = 0.5, push: float = 1.5) -> Tensor:
    """Discriminative loss (De Brabandere et al. 2017) over final tokens whose main segment is a
    thing: within ``pull`` of their segment's mean embedding, means ``2 * push`` apart."""
    losses = []
    for b, (mass, t) in enumerate(zip(token_mass, targets)):
        owned = mass.sum(1) > 0.5  # tokens that hold at least half a stem cell
        main = mass.argmax(1)
        chosen = owned & t.isthing[main]
        if not chosen.any():
            continue
        e, seg = embeddings[b][chosen].float(), main[chosen]
        segments, inverse = torch.unique(seg, return_inverse=True)
        means = torch.zeros(len(segments), e.shape[1]).index_add_(0, inverse, e)
        means = means / torch.bincount(inverse, minlength=len(segments))[:, None]
        var = F.relu((e - means[inverse]).norm(dim=1) - pull).pow(2).mean()
        loss = var + 1e-3 * means.norm(dim=1).mean()
        if len(segments) > 1:
            gaps = torch.cdist(means, means)
            off = ~torch.eye(len(segments), dtype=torch.bool)
            loss = loss + F.relu(2 * push - gaps[off]).pow(2).mean()
        losses.append(loss)
    return torch.stack(losses).mean() if losses else embeddings.sum() * 0


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        # Norms, biases and the grouping layers' position-bias tables are not shrunk towards zero.
        (no_decay if p.ndim <= 1 or name.endswith("rel_bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def losses_of(output: SeNaTraOutput, targets: list[NativeTarget], settings: SeNaTraTrainSettings) -> dict[str, Tensor]:
    cfg = settings.config
    parts = {"semantic": semantic_loss(output.pixel_logits, targets, cfg.num_classes)}
    final = densify(memberships(output.assignments, len(output.assignments)))
    group, token_mass = grouping_loss(final, targets)
    if settings.group_weight:
        parts["grouping"] = settings.group_weight * group
    if settings.embed_weight and output.embeddings is not None:
        parts["embedding"] = settings.embed_weight * embedding_loss(output.embeddings, token_mass, targets)
    return parts


def train_senatra(
    settings: SeNaTraTrainSettings, model: SeNaTra | None = None, progress: bool = True,
    run: TrainingRun | None = None,
) -> tuple[SeNaTra, SeNaTraTrainReport]:
    run = run or TrainingRun()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    cfg = settings.config
    classes = run.data.labels.num_classes if run.data is not None else len(CLASSES)
    if cfg.num_classes != classes:
        raise ValueError(f"the training pictures have {classes} classes, the config {cfg.num_classes}")
    model = (model or SeNaTra(cfg)).train()
    optimizer = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.lr)
    step = skipped = 0
    spent_before = 0.0
    if run.resume is not None:
        model.load_state_dict(run.resume["modules"]["model"])
        optimizer.load_state_dict(run.resume["optimizer"])
        torch.set_rng_state(run.resume["torch_rng"])
        step, spent_before = run.resume["step"], run.resume["elapsed_s"]
    feed = run.feed(settings, step)
    fixed = training_batch(feed, cfg) if settings.fixed_batch else None

    budget = settings.minutes * 60
    losses: list[float] = []
    history: dict[str, list[float]] = {}
    start = saved = time.perf_counter()
    bar = tqdm(total=settings.steps, initial=step, disable=bars_off() if progress else True, file=sys.stderr, unit="step",
               **bar_shape(every_s=10))
    while True:
        done = (step / settings.steps if settings.steps is not None
                else (spent_before + time.perf_counter() - start) / budget)
        if done >= 1 or run.stop.is_set():
            break
        lr = _lr_at(done, settings)
        for group in optimizer.param_groups:
            group["lr"] = lr
        pixels, targets = fixed or training_batch(feed, cfg)
        parts = losses_of(model(pixels), targets, settings)
        loss = sum(parts.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), settings.clip_norm)
        if not torch.isfinite(grad_norm):
            # One bad batch must not turn every weight into NaN: drop its update, count it.
            skipped += 1
            log.warning("step %d: non-finite gradient (loss %s), update skipped", step, float(loss.detach()))
            step += 1
            bar.update(1)
            continue
        optimizer.step()
        losses.append(float(loss.detach()))
        for key, value in parts.items():
            history.setdefault(key, []).append(float(value.detach()))
        step += 1
        bar.update(1)
        if step % settings.log_every == 0:
            means = {k: round(float(np.mean(v[-settings.log_every :])), 4) for k, v in history.items()}
            log.info("step %d  %.0f s  lr %.2e  grad %.2f  %s", step, spent_before + time.perf_counter() - start, lr,
                     float(grad_norm), json.dumps(means))
        if run.state_path is not None and time.perf_counter() - saved >= run.every_s:
            run.keep("senatra", settings, {"model": model}, optimizer, step, spent_before + time.perf_counter() - start)
            saved = time.perf_counter()
    bar.close()
    seconds = spent_before + time.perf_counter() - start
    stopped = done < 1
    if stopped and run.state_path is not None:
        run.keep("senatra", settings, {"model": model}, optimizer, step, seconds)
    parts = {k: float(np.mean(v[-50:])) for k, v in history.items()}
    report = SeNaTraTrainReport(step, seconds, losses, step * settings.batch_size, parts, skipped, stopped, min(1.0, done))
    return model.eval(), report


def save_senatra(model: SeNaTra, path, metadata: dict) -> None:
    """Weights as safetensors, with the architecture and training facts in its metadata."""
    from pathlib import Path

    meta = {"format": "segstream-senatra", "config": json.dumps(asdict(model.cfg))}
    meta |= {k: str(v) for k, v in metadata.items()}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_safetensors(state, Path(path), meta)
