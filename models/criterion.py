"""EoMT's training loss (the Mask2Former recipe the paper uses).

Each prediction (every query block and the final output) is matched one-to-one to the target
segments by the Hungarian algorithm (scipy's ``linear_sum_assignment``) on a cost of
class probability, sigmoid binary cross-entropy and dice; matched queries learn their segment's
class and mask, unmatched ones learn "no object" with a down-weighted cross-entropy.

Masks are compared at the model's mask resolution on every pixel rather than on sampled points:
at the small inputs segstream trains on, all pixels cost less than the sampling bookkeeping.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor


@dataclass(frozen=True, slots=True)
class Target:
    """One image's segments: ``classes`` (S,) long, ``masks`` S x M x M float 0/1 at mask size."""

    classes: Tensor
    masks: Tensor


@dataclass(frozen=True, slots=True)
class LossWeights:
    cls: float = 2.0
    mask: float = 5.0
    dice: float = 5.0
    no_object: float = 0.1


def _pairwise_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Q x P logits, S x P targets -> Q x S mean binary cross-entropy."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def _pairwise_dice(logits: Tensor, targets: Tensor) -> Tensor:
    probs = logits.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


@torch.no_grad()
def match(mask_logits: Tensor, class_logits: Tensor, target: Target, weights: LossWeights) -> tuple[Tensor, Tensor]:
    """Indices (queries, targets) of the minimum-cost one-to-one assignment for one image;
    FloatingPointError when the predictions are not finite (a training run that diverged)."""
    if target.classes.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    logits = mask_logits.flatten(1).float()
    masks = target.masks.flatten(1).float()
    cost = (
        -weights.cls * class_logits.float().softmax(-1)[:, target.classes]
        + weights.mask * _pairwise_bce(logits, masks)
        + weights.dice * _pairwise_dice(logits, masks)
    )
    if not bool(torch.isfinite(cost).all()):  # scipy's own words would not say why
        raise FloatingPointError("the predictions hold NaN or infinity: the matching cost is not finite")
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)


def mask_classification_loss(
    mask_logits: Tensor, class_logits: Tensor, targets: list[Target], weights: LossWeights = LossWeights()
) -> dict[str, Tensor]:
    """Weighted class, mask (BCE) and dice losses of one prediction over a batch."""
    num_classes = class_logits.shape[-1] - 1
    class_targets = torch.full(class_logits.shape[:2], num_classes, dtype=torch.long, device=class_logits.device)
    matched_logits, matched_masks = [], []
    for b, target in enumerate(targets):
        rows, cols = match(mask_logits[b], class_logits[b], target, weights)
        class_targets[b, rows.to(class_targets.device)] = target.classes[cols]
        matched_logits.append(mask_logits[b, rows])
        matched_masks.append(target.masks[cols])
    class_weight = torch.ones(num_classes + 1, device=class_logits.device)
    class_weight[-1] = weights.no_object
    loss_cls = F.cross_entropy(class_logits.flatten(0, 1).float(), class_targets.flatten(), weight=class_weight)
    logits = torch.cat(matched_logits).flatten(1).float()
    masks = torch.cat(matched_masks).flatten(1).float().to(logits.device)
    num_masks = max(1, masks.shape[0])
    if masks.shape[0] == 0:
        zero = mask_logits.sum() * 0
        return {"cls": weights.cls * loss_cls, "mask": zero, "dice": zero}
    loss_mask = F.binary_cross_entropy_with_logits(logits, masks, reduction="none").mean(1).sum() / num_masks
    probs = logits.sigmoid()
    dice = 1 - (2 * (probs * masks).sum(-1) + 1) / (probs.sum(-1) + masks.sum(-1) + 1)
    return {"cls": weights.cls * loss_cls, "mask": weights.mask * loss_mask, "dice": weights.dice * dice.sum() / num_masks}
