"""Pre- and post-processing for EoMT, on whatever device the tensors live on.

Pre-processing follows the official code: panoptic/instance models see the frame scaled so its
long side is the input size, padded bottom/right with zeros (``letterbox``); semantic models see
the frame scaled so its short side is the input size, cut into windows along the long side
(``semantic_windows``). Pixels are normalised with ImageNet statistics after padding.

Post-processing reproduces the official algorithms while never materialising every query's mask
at frame resolution: queries are filtered on their class scores first (exactly as the official
code does), and only the survivors' mask logits are resized to the frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2.functional import InterpolationMode, resize

from segstream.models.label_sets import LabelSet
from segstream.models.prediction import FramePrediction, Segment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """``score``: minimum class probability of a query (panoptic) or segment score (instance);
    ``mask``: mask probability that counts as inside; ``overlap``: minimum share of a query's
    own mask it must win to survive (panoptic)."""

    score: float = 0.8
    mask: float = 0.5
    overlap: float = 0.8


def normalize(pixels: Tensor) -> Tensor:
    """0..255 float B x 3 x H x W -> ImageNet-normalised."""
    mean = pixels.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = pixels.new_tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return (pixels - mean) / std


def _resize_rgb(image: Tensor, height: int, width: int) -> Tensor:
    """H x W x 3 uint8 -> 3 x height x width float in 0..255, bilinear with antialiasing.

    torchvision resizes uint8 images with integer rounding, close to the official code's PIL
    resize and identical to transformers' image processor.
    """
    x = image.permute(2, 0, 1)
    if (height, width) != tuple(image.shape[:2]):
        x = resize(x, [height, width], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return x.float()


def letterbox_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Frame size after scaling the long side to ``size``."""
    factor = min(size / height, size / width)
    return round(height * factor), round(width * factor)


def letterbox(images: list[Tensor], size: int) -> tuple[Tensor, list[tuple[int, int]]]:
    """H x W x 3 uint8 frames -> normalised B x 3 x size x size input, and each scaled size."""
    batch = images[0].new_zeros((len(images), 3, size, size), dtype=torch.float32)
    scaled = []
    for i, image in enumerate(images):
        h, w = letterbox_size(image.shape[0], image.shape[1], size)
        batch[i, :, :h, :w] = _resize_rgb(image, h, w)
        scaled.append((h, w))
    return normalize(batch), scaled


@dataclass(frozen=True, slots=True)
class WindowLayout:
    """How one frame was cut for a semantic model: scaled to ``scaled`` (short side = window),
    windows starting at ``starts`` along the long side (rows if ``vertical``)."""

    scaled: tuple[int, int]
    starts: tuple[int, ...]
    vertical: bool


def window_layout(height: int, width: int, size: int) -> WindowLayout:
    factor = max(size / height, size / width)
    h, w = round(height * factor), round(width * factor)
    long_side = max(h, w)
    count = math.ceil(long_side / size)
    overlap = count * size - long_side
    # The official code spreads the overlap evenly over the window boundaries.
    step = size - (overlap / (count - 1) if overlap > 0 else 0)
    return WindowLayout((h, w), tuple(int(j * step) for j in range(count)), vertical=height > width)


def semantic_windows(images: list[Tensor], size: int) -> tuple[Tensor, list[WindowLayout]]:
    """H x W x 3 uint8 frames -> normalised N x 3 x size x size windows, and each frame's layout."""
    windows, layouts = [], []
    for image in images:
        layout = window_layout(image.shape[0], image.shape[1], size)
        scaled = _resize_rgb(image, *layout.scaled)
        for start in layout.starts:
            window = scaled[:, start : start + size, :] if layout.vertical else scaled[:, :, start : start + size]
            windows.append(window)
        layouts.append(layout)
    return normalize(torch.stack(windows)), layouts


def _to_frame(mask_logits: Tensor, size: int, scaled: tuple[int, int], frame: tuple[int, int]) -> Tensor:
    """K x m x m logits -> K x H x W: to the input size, crop the padding, to the frame size."""
    x = F.interpolate(mask_logits[None].float(), (size, size), mode="bilinear", align_corners=False)
    x = x[:, :, : scaled[0], : scaled[1]]
    return F.interpolate(x, frame, mode="bilinear", align_corners=False)[0]


def segment_stats(label_map: Tensor, count: int) -> tuple[list[int], list[tuple[int, int, int, int]]]:
    """Area and (x0, y0, x1, y1) box, x1/y1 exclusive, of segments 0..count-1 of a label map."""
    if count == 0:
        return [], []
    h, w = label_map.shape
    flat = label_map.flatten().long()
    inside = flat >= 0
    ids = flat[inside]
    pos = torch.nonzero(inside).squeeze(1)
    ys, xs = pos // w, pos % w
    area = torch.bincount(ids, minlength=count)
    big = torch.full((count,), max(h, w), dtype=torch.long, device=flat.device)
    small = torch.full((count,), -1, dtype=torch.long, device=flat.device)
    x0 = big.scatter_reduce(0, ids, xs, "amin")
    y0 = big.scatter_reduce(0, ids, ys, "amin")
    x1 = small.scatter_reduce(0, ids, xs, "amax") + 1
    y1 = small.scatter_reduce(0, ids, ys, "amax") + 1
    boxes = torch.stack((x0, y0, x1, y1), dim=1).tolist()
    return area.tolist(), [tuple(b) for b in boxes]


def _prediction(
    label_map: Tensor,
    rows: list[tuple[int, float, int]],
    labels: LabelSet,
    embeddings: Tensor,
) -> FramePrediction:
    """Assemble the FramePrediction; ``rows[i]`` is (class_id, score, query) of segment i."""
    areas, boxes = segment_stats(label_map, len(rows))
    segments = [
        Segment(
            id=i,
            class_id=class_id,
            label=labels.names[class_id],
            isthing=labels.isthing[class_id],
            score=round(float(score), 6),
            area=int(areas[i]),
            box=boxes[i],
            query=query,
        )
        for i, (class_id, score, query) in enumerate(rows)
    ]
    return FramePrediction(
        label_map=label_map.to(torch.int32).cpu().numpy(),
        segments=segments,
        embeddings=embeddings.float().cpu().numpy(),
    )


def _empty(frame: tuple[int, int], dim: int) -> FramePrediction:
    return FramePrediction(np.full(frame, -1, np.int32), [], np.zeros((0, dim), np.float32))


def panoptic(
    mask_logits: Tensor,
    class_logits: Tensor,
    query_embeddings: Tensor,
    size: int,
    scaled: tuple[int, int],
    frame: tuple[int, int],
    labels: LabelSet,
    thresholds: Thresholds = Thresholds(),
) -> FramePrediction:
    """One frame's panoptic segmentation from its Q x m x m mask and Q x (C+1) class logits.

    Queries whose best class is an object with probability above ``thresholds.score`` compete
    per pixel by score x mask probability; a query keeps the pixels it wins inside its own mask,
    and is dropped when it wins less than ``thresholds.overlap`` of that mask (the official rule:
    won area / own area, kept when >= the threshold). Stuff queries of one class merge.
    """
    probs = class_logits.float().softmax(-1)
    scores, classes = probs.max(-1)
    keep = torch.nonzero((classes != probs.shape[-1] - 1) & (scores > thresholds.score)).squeeze(1)
    if keep.numel() == 0:
        return _empty(frame, query_embeddings.shape[-1])
    mask_probs = _to_frame(mask_logits[keep], size, scaled, frame).sigmoid_()
    kept_scores = scores[keep]
    winner = (kept_scores[:, None, None] * mask_probs).argmax(0)
    own = mask_probs >= thresholds.mask
    k = keep.numel()
    own_area = own.flatten(1).sum(1)
    won_area = torch.bincount(winner.flatten(), minlength=k)
    inside = own.gather(0, winner[None])[0]
    final_area = torch.bincount(winner[inside], minlength=k)
    del mask_probs, own

    table = [-1] * k
    rows: list[tuple[int, float, int]] = []
    first_query: list[int] = []
    stuff_segment: dict[int, int] = {}
    for j, (cls, score, own_a, won_a, final_a) in enumerate(
        zip(classes[keep].tolist(), kept_scores.tolist(), own_area.tolist(), won_area.tolist(), final_area.tolist())
    ):
        if own_a == 0 or won_a == 0 or final_a == 0 or won_a / own_a < thresholds.overlap:
            continue
        if not labels.isthing[cls] and cls in stuff_segment:
            table[j] = stuff_segment[cls]
            continue
        table[j] = len(rows)
        if not labels.isthing[cls]:
            stuff_segment[cls] = table[j]
        rows.append((cls, score, int(keep[j])))
        first_query.append(j)
    lookup = torch.tensor(table, dtype=torch.long, device=winner.device)
    label_map = torch.where(inside, lookup[winner], torch.full_like(winner, -1))
    return _prediction(label_map, rows, labels, query_embeddings[keep[first_query]])


def instance(
    mask_logits: Tensor,
    class_logits: Tensor,
    query_embeddings: Tensor,
    size: int,
    scaled: tuple[int, int],
    frame: tuple[int, int],
    labels: LabelSet,
    thresholds: Thresholds = Thresholds(),
    top_k: int = 100,
) -> FramePrediction:
    """One frame's instances: the official top-k over queries x classes, each scored as class
    probability x mean mask probability inside its mask (logit > 0); those scoring at least
    ``thresholds.score`` are kept. The label map paints higher scores over lower ones.
    """
    probs = class_logits.float().softmax(-1)[:, :-1]
    num_classes = probs.shape[1]
    top_scores, top_index = probs.flatten().topk(min(top_k, probs.numel()))
    # A mask score is at most 1, so candidates below the threshold on class score alone can go.
    candidate = top_scores >= thresholds.score
    top_scores, top_index = top_scores[candidate], top_index[candidate]
    if top_index.numel() == 0:
        return _empty(frame, query_embeddings.shape[-1])
    queries = top_index // num_classes
    classes = top_index % num_classes
    unique_queries, which = torch.unique(queries, return_inverse=True)
    logits = _to_frame(mask_logits[unique_queries], size, scaled, frame)
    masks = logits > 0
    mask_area = masks.flatten(1).sum(1)
    mask_scores = (logits.sigmoid() * masks).flatten(1).sum(1) / (mask_area + 1e-6)
    final = top_scores * mask_scores[which]
    order = torch.argsort(final, descending=True)
    order = order[(final[order] >= thresholds.score) & (mask_area[which[order]] > 0)]
    if order.numel() == 0:
        return _empty(frame, query_embeddings.shape[-1])
    label_map = torch.full(frame, -1, dtype=torch.long, device=logits.device)
    for rank in reversed(range(order.numel())):
        label_map[masks[which[order[rank]]]] = rank
    # Segments wholly covered by better ones disappear; renumber the visible ones densely.
    visible = torch.bincount(label_map[label_map >= 0], minlength=order.numel()) > 0
    renumber = torch.cumsum(visible.long(), 0) - 1
    label_map = torch.where(label_map >= 0, renumber[label_map.clamp(min=0)], label_map)
    order = order[visible]
    rows = [(int(classes[i]), float(final[i]), int(queries[i])) for i in order.tolist()]
    return _prediction(label_map, rows, labels, query_embeddings[queries[order]])


def semantic(
    mask_logits: Tensor,
    class_logits: Tensor,
    size: int,
    layout: WindowLayout,
    frame: tuple[int, int],
    labels: LabelSet,
    class_chunk: int = 16,
) -> FramePrediction:
    """One frame's semantic map from its windows' logits (N x Q x m x m, N x Q x (C+1)).

    Per window, per-pixel class scores are sigmoid(mask) weighted by softmax(class) summed over
    queries; overlapping windows are averaged, and the result is resized to the frame. The final
    resize and argmax run a few classes at a time, which gives the same answer as resizing all
    class maps at once without holding C full-resolution maps.
    """
    class_probs = class_logits.float().softmax(-1)[..., :-1]
    num_classes = class_probs.shape[-1]
    h, w = layout.scaled
    sums = mask_logits.new_zeros((num_classes, h, w), dtype=torch.float32)
    counts = mask_logits.new_zeros((1, h, w), dtype=torch.float32)
    for i, start in enumerate(layout.starts):
        window_masks = F.interpolate(mask_logits[i : i + 1].float(), (size, size), mode="bilinear")[0].sigmoid_()
        window = torch.einsum("qhw,qc->chw", window_masks, class_probs[i])
        if layout.vertical:
            sums[:, start : start + size, :] += window
            counts[:, start : start + size, :] += 1
        else:
            sums[:, :, start : start + size] += window
            counts[:, :, start : start + size] += 1
    averaged = sums / counts
    best = torch.full(frame, -math.inf, device=averaged.device)
    best_class = torch.zeros(frame, dtype=torch.long, device=averaged.device)
    for c0 in range(0, num_classes, class_chunk):
        chunk = F.interpolate(averaged[None, c0 : c0 + class_chunk], frame, mode="bilinear", align_corners=False)[0]
        value, index = chunk.max(0)
        better = value > best
        best = torch.where(better, value, best)
        best_class = torch.where(better, index + c0, best_class)
    present = torch.unique(best_class)
    lookup = torch.full((num_classes,), -1, dtype=torch.long, device=best_class.device)
    lookup[present] = torch.arange(present.numel(), device=best_class.device)
    label_map = lookup[best_class]
    mean_score = torch.bincount(label_map.flatten(), weights=best.flatten(), minlength=present.numel())
    mean_score = mean_score / torch.bincount(label_map.flatten(), minlength=present.numel()).clamp(min=1)
    rows = [(int(c), float(s), -1) for c, s in zip(present.tolist(), mean_score.tolist())]
    return _prediction(label_map, rows, labels, torch.zeros(len(rows), 0))
