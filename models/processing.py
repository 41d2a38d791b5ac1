"""Pre- and post-processing for EoMT, on whatever device the tensors live on.

Pre-processing follows the official code: panoptic/instance models see the frame scaled so its
long side is the input size, padded bottom/right with zeros (``letterbox``); semantic models see
the frame scaled so its short side is the input size, cut into windows along the long side
(``semantic_windows``). Pixels are normalised with ImageNet statistics after padding.

Post-processing reproduces the official algorithms in two modes that differ only in where the
per-pixel decisions are taken:
- ``exact``: at frame resolution, as the official code does (mask logits resized to the input
  size, the padding cropped, resized to the frame); label maps are the official ones.
- ``fast``: at the model's input resolution (the letterboxed frame); the final label map stays
  at that size, with the nearest-neighbour lines that bring it to the frame
  (``ScaledLabelMap``); cost no longer grows with frame size x queries.

Either way queries are filtered on their class scores first (as the official code does), the
surviving queries' masks are visited a few at a time (never all of them at frame resolution at
once), and per-pixel winners come from running maxima instead of a reduction across queries.
Decisions stay on the tensors' device (``Decision``); ``frame_label_map`` brings a decided map,
once on the host, to frame size (as a ``ScaledLabelMap`` until something reads it) with its
segments' areas and boxes.
"""

from __future__ import annotations

import functools
import math
import platform
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from segstream.connectors.errors import FrameError
from segstream.models.results import ScaledLabelMap, segment_moments

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POSTPROCESS_MODES = ("fast", "exact")
# Query masks resized and compared together (a batch's frames decided at one size share them):
# as many as fit a budget of pixels, never fewer than 8 a pass (8 maps of a 4K frame are 265 MB,
# and a pass holds a few such tensors). The CPU's budget is 8 maps of 640x360, which stay in its
# caches (a pass of 13 such maps was 2.2x slower: benchmarks/frame_stages.py); a GPU's is 8 maps
# of 1080p or a 1024th of its memory if more, since each pass is about ten kernel launches from
# Python (docs/BENCHMARKS.md, "GPU"). Frames with fewer kept queries than another in their pass
# are padded to its count: at most 1.25x the masks a pass holds on the CPU, where each padded mask
# costs what a kept one does, and 4x on a GPU, where launches cost more than masks.
PADDING_ALLOWED = {"cpu": 1.25, "cuda": 4.0}
QUERY_CHUNK = 8
CPU_CHUNK_PIXELS = QUERY_CHUNK * 640 * 360
CHUNK_PIXELS = QUERY_CHUNK * 1920 * 1080


@dataclass(frozen=True, slots=True)
class Thresholds:
    """``score``: minimum class probability of a query (panoptic) or segment score (instance);
    ``mask``: mask probability that counts as inside; ``overlap``: minimum share of a query's
    own mask it must win to survive (panoptic)."""

    score: float = 0.8
    mask: float = 0.5
    overlap: float = 0.8


@dataclass(slots=True)
class Decision:
    """One frame's segmentation on the device, at the resolution it was decided at.

    ``label_map`` is h x w int32 (-1: no segment), segment i having value i; ``frame`` is the
    (height, width) it stands for. Per segment: ``class_ids``, ``scores``, ``queries`` (the query
    that produced it, -1 for none).
    """

    label_map: Tensor
    class_ids: Tensor
    scores: Tensor
    queries: Tensor
    frame: tuple[int, int]


# --- pre-processing --------------------------------------------------------------------------


def normalize(pixels: Tensor) -> Tensor:
    """0..255 B x 3 x H x W (any dtype) -> ImageNet-normalised float32.

    In place on one float copy: the same values as ``(x - mean) / std``, a quarter of the time on
    the CPU (no intermediate tensors)."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=pixels.device).view(1, 3, 1, 1) * 255
    return pixels.to(torch.float32, copy=True).sub_(mean).div_(std)


def _resize_rgb(image: Tensor, height: int, width: int) -> Tensor:
    """H x W x 3 uint8 -> 3 x height x width uint8, bilinear with antialiasing.

    What torchvision's ``resize`` gives (a test holds them equal), close to the official code's
    PIL resize and identical to transformers' image processor, called on torch directly:
    importing torchvision costs a pipeline 160 MB of memory for this one function. Where torch
    has vectorised uint8 kernels it resizes uint8 itself, with integer rounding, fastest on the
    channels-last view that ``permute`` of an H x W x 3 image is; elsewhere it resizes floats,
    rounded back to uint8 (torchvision chooses the same way, so the pixels stay its own).
    """
    x = image.permute(2, 0, 1)
    if (height, width) == tuple(image.shape[:2]):
        return x
    if x.device.type == "cpu" and _vectorised_uint8_resize():
        return F.interpolate(x[None], (height, width), mode="bilinear", align_corners=False, antialias=True)[0]
    scaled = F.interpolate(x[None].float(), (height, width), mode="bilinear", align_corners=False, antialias=True)
    return scaled[0].round_().to(torch.uint8)


@functools.cache
def _vectorised_uint8_resize() -> bool:
    return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")


def letterbox_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Frame size after scaling the long side to ``size`` (at least one pixel each way: a
    line-scan frame, 1 x 4096, keeps one row)."""
    factor = min(size / height, size / width)
    return max(1, round(height * factor)), max(1, round(width * factor))


def letterbox(images: list[Tensor], size: int) -> tuple[Tensor, list[tuple[int, int]]]:
    """H x W x 3 uint8 frames -> normalised B x 3 x size x size input, and each scaled size."""
    batch = images[0].new_zeros((len(images), 3, size, size), dtype=torch.uint8)
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


# Windows of one frame a semantic model takes at most: a 32:1 panorama; a line-scan frame (1 x
# 4096) would need 4096 windows of the model's size, gigabytes for one frame.
MAX_WINDOWS = 32


def window_layout(height: int, width: int, size: int) -> WindowLayout:
    factor = max(size / height, size / width)
    h, w = round(height * factor), round(width * factor)
    long_side = max(h, w)
    count = math.ceil(long_side / size)
    if count > MAX_WINDOWS:
        raise FrameError(f"a {width}x{height} frame would need {count} windows of {size} x {size} for a semantic "
                         f"model (at most {MAX_WINDOWS}): crop it nearer to square first")
    overlap = count * size - long_side
    # The official code spreads the overlap evenly over the window boundaries.
    step = size - (overlap / (count - 1) if overlap > 0 else 0)
    return WindowLayout((h, w), tuple(int(j * step) for j in range(count)), vertical=height > width)


@dataclass(frozen=True, slots=True)
class InputGeometry:
    """How pre-processing scales a frame: its long side to ``size`` (letterbox), or with
    ``windows`` its short side (semantic windows). A plain value, so it travels where the model
    does not (a Ray task decoding for a model actor)."""

    size: int
    windows: bool = False

    def scale(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) a frame of this size is scaled to, before padding or windowing."""
        if self.windows:
            return window_layout(height, width, self.size).scaled
        return letterbox_size(height, width, self.size)


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


# --- resolution helpers ----------------------------------------------------------------------


def _mask_resizer(
    mask_logits: Tensor, size: int, scaled: tuple[int, int], out: tuple[int, int]
) -> Callable[..., Tensor]:
    """A function from query indices to their K x out_h x out_w mask logits: resized to the input
    size, the letterbox padding cropped, resized to ``out`` (skipped when ``out`` is ``scaled``).
    With B x Q x m x m logits (a batch's), it takes (frame rows, query indices), G x 1 and G x K,
    and gives G x K x out_h x out_w."""

    m = mask_logits.shape[-1]
    # Only the rows and columns under the letterboxed frame are resized (a 16:9 frame leaves 44%
    # of the square as padding). With an integer ratio the given scale factor is exactly the one
    # the full-size call derives, so the pixels kept are bit-identical to resizing everything.
    rows = min(m, math.ceil(scaled[0] * m / size) + 1) if size % m == 0 else m
    cols = min(m, math.ceil(scaled[1] * m / size) + 1) if size % m == 0 else m

    def logits(*index: Tensor) -> Tensor:
        x = mask_logits[index][..., :rows, :cols].float()
        if x.dim() == 3:
            x = x[None]
        if (rows, cols) == (m, m):
            x = F.interpolate(x, (size, size), mode="bilinear", align_corners=False)
        else:
            x = F.interpolate(x, scale_factor=size / m, mode="bilinear", align_corners=False,
                              recompute_scale_factor=False)
        x = x[:, :, : scaled[0], : scaled[1]]
        if tuple(out) != tuple(scaled):
            x = F.interpolate(x, out, mode="bilinear", align_corners=False)
        return x[0] if len(index) == 1 else x

    return logits


def chunk_size(device: torch.device, size: tuple[int, int]) -> int:
    """How many query masks of ``size`` are decided at once on ``device`` (of one frame or of
    several decided together)."""
    return max(QUERY_CHUNK, _pixel_budget(device) // max(1, size[0] * size[1]))


@functools.cache
def _pixel_budget(device: torch.device) -> int:
    if device.type != "cuda":
        return CPU_CHUNK_PIXELS
    return max(CHUNK_PIXELS, torch.cuda.get_device_properties(device).total_memory // 1024)


def _chunks(count: int, device: torch.device, size: tuple[int, int]) -> Iterator[Tensor]:
    step = chunk_size(device, size)
    for first in range(0, count, step):
        yield torch.arange(first, min(first + step, count), device=device)


def nearest_index(source: int, target: int) -> np.ndarray:
    """For each of ``target`` output lines, the source line a nearest-neighbour resize copies
    (OpenCV's INTER_NEAREST_EXACT, which picks the line under each output line's centre)."""
    lines = np.arange(source, dtype=np.int32)[:, None]
    return cv2.resize(lines, (1, target), interpolation=cv2.INTER_NEAREST_EXACT)[:, 0]


def scale_label_map(label_map: np.ndarray, height: int, width: int) -> Tensor:
    """A label map at ``height`` x ``width``, each output pixel the label under its centre (as
    ``nearest_index``): a training target that sits where the scaled image's pixels do (torch's
    legacy ``nearest`` takes the label at the output pixel's corner, half a source pixel up-left
    of the image, which taught the models to draw their masks that far down-right)."""
    rows, cols = nearest_index(label_map.shape[0], height), nearest_index(label_map.shape[1], width)
    return torch.from_numpy(np.ascontiguousarray(label_map[np.ix_(rows, cols)]).astype(np.int64))


def frame_label_map(
    small: np.ndarray, count: int, frame: tuple[int, int]
) -> tuple[np.ndarray | ScaledLabelMap, np.ndarray, np.ndarray, np.ndarray]:
    """A decided label map (host, int32) brought to frame size by nearest neighbour, and the
    areas (int64), (x0, y0, x1, y1) boxes (int32, x1/y1 exclusive) and (x, y) centroids (float64,
    to 0.1 pixel: ``segment_moments``) of its segments 0..count-1.

    The map comes back as is when it already has the frame's size, else as a ``ScaledLabelMap``
    (the frame-size array is built only where something reads ``label_map``). Areas, boxes and
    centroids come from the small map, each of its lines weighted by how many frame lines copy
    it: exactly what the full-size map holds, at the small map's cost.
    """
    h, w = small.shape
    height, width = frame
    if (h, w) == (height, width):
        kept, rows, cols = small, None, None
    else:
        rows, cols = nearest_index(h, height), nearest_index(w, width)
        kept = ScaledLabelMap(small, rows, cols)
    row_repeat = None if rows is None else np.bincount(rows, minlength=h)
    col_repeat = None if cols is None else np.bincount(cols, minlength=w)
    ids = np.where((small >= 0) & (small < count), small, count)  # count: no segment
    areas, boxes, centroids = segment_moments(ids, count, row_repeat, col_repeat)
    return kept, areas, boxes, centroids


# --- post-processing -------------------------------------------------------------------------


def decision_size(mode: str, scaled: tuple[int, int], frame: tuple[int, int]) -> tuple[int, int]:
    """Where a frame's pixels are decided: the frame (exact) or the letterboxed frame (fast)."""
    if mode not in POSTPROCESS_MODES:
        raise ValueError(f"unknown post-processing mode {mode!r}: use {' or '.join(POSTPROCESS_MODES)}")
    return frame if mode == "exact" else scaled


def _empty(size: tuple[int, int], frame: tuple[int, int], device: torch.device) -> Decision:
    none = torch.zeros(0, dtype=torch.long, device=device)
    return Decision(torch.full(size, -1, dtype=torch.int32, device=device), none, none.float(), none, frame)


def panoptic(
    mask_logits: Tensor,
    class_logits: Tensor,
    size: int,
    scaled: tuple[int, int],
    frame: tuple[int, int],
    isthing: Tensor,
    thresholds: Thresholds = Thresholds(),
    mode: str = "exact",
) -> Decision:
    """One frame's panoptic segmentation from its Q x m x m mask and Q x (C+1) class logits
    (``panoptic_frames`` for one frame)."""
    return panoptic_frames(mask_logits[None], class_logits[None], size, [scaled], [frame], isthing, thresholds,
                           mode)[0]


def panoptic_frames(
    mask_logits: Tensor,
    class_logits: Tensor,
    size: int,
    scaled: Sequence[tuple[int, int]],
    frames: Sequence[tuple[int, int]],
    isthing: Tensor,
    thresholds: Thresholds = Thresholds(),
    mode: str = "exact",
) -> list[Decision]:
    """A batch's panoptic segmentations from its B x Q x m x m mask and B x Q x (C+1) class logits.

    Queries whose best class is an object with probability above ``thresholds.score`` compete
    per pixel by score x mask probability (the first query wins ties); a query keeps the pixels it
    wins inside its own mask, and is dropped when it wins less than ``thresholds.overlap`` of
    that mask (the official rule: won area / own area, kept when >= the threshold) or nothing at
    all. Stuff queries of one class merge into the segment of the first of them. ``isthing`` is a
    bool tensor over the C classes.

    Frames decided at the same size are decided together, as many at a time as ``chunk_size``
    allows, each frame's kept queries first and the rest of the rows padding that never wins: a
    batch costs about as many operations as one frame (on a GPU, kernel launches from Python).
    """
    out = [decision_size(mode, s, f) for s, f in zip(scaled, frames)]
    device = mask_logits.device
    probs = class_logits.float().softmax(-1)
    scores, classes = probs.max(-1)
    keep = (classes != probs.shape[-1] - 1) & (scores > thresholds.score)
    counts = keep.sum(1).tolist()
    decisions: list[Decision | None] = [None] * len(frames)
    groups: dict[tuple, list[int]] = {}
    for i, count in enumerate(counts):
        if count == 0:
            decisions[i] = _empty(out[i], frames[i], device)
        else:
            groups.setdefault((tuple(scaled[i]), tuple(out[i])), []).append(i)
    for (group_scaled, group_out), members in groups.items():
        maps = chunk_size(device, group_out)
        # the busiest frames first: a pass holds frames of like counts, so little padding
        members.sort(key=lambda i: -counts[i])
        for batch in _frame_passes(members, counts, maps, PADDING_ALLOWED.get(device.type, PADDING_ALLOWED["cuda"])):
            step = max(1, maps // len(batch))
            decided = _panoptic_pass(mask_logits, scores, classes, keep, batch, [counts[i] for i in batch], step,
                                     size, group_scaled, group_out, isthing, thresholds)
            for i, decision in zip(batch, decided):
                decisions[i] = Decision(*decision, frames[i])
    return decisions


def _frame_passes(members: list[int], counts: list[int], maps: int, allowed: float) -> Iterator[list[int]]:
    """``members`` (by kept count, most first) in runs of frames decided in one pass: their padded
    masks (frames x the first one's count) fit ``maps`` and are at most ``allowed`` times the
    kept masks they hold. A frame whose own masks do not fit is a pass of its own."""
    batch: list[int] = []
    for i in members:
        padded = (len(batch) + 1) * counts[batch[0] if batch else i]
        if batch and (padded > maps or padded > allowed * (sum(counts[j] for j in batch) + counts[i])):
            yield batch
            batch = []
        batch.append(i)
    yield batch


def _panoptic_pass(mask_logits, scores, classes, keep, batch, counts, step, size, scaled, out, isthing, thresholds):
    """``panoptic_frames`` for the frames ``batch`` (one decision size): per frame its label map,
    class ids, scores and queries."""
    device = mask_logits.device
    g, k = len(batch), max(counts)
    rows = torch.tensor(batch, device=device)
    # each frame's kept queries first, in query order (a stable sort of "not kept"), then padding
    kept = keep[rows]
    order = torch.sort((~kept).to(torch.uint8), dim=1, stable=True).indices[:, :k]
    pad = ~kept.gather(1, order)
    # Padding scores -1, so its score x probability is at most 0, which never beats a kept
    # query's, and shows the frame's first kept mask, whose pixels are already in the contest (a
    # query not kept may hold NaN where no kept one does, and a NaN maximum beats nothing).
    kept_scores = torch.where(pad, -1.0, scores[rows].gather(1, order))
    kept_classes = torch.where(pad, 0, classes[rows].gather(1, order))  # padding may hold the no-object class
    order = torch.where(pad, order[:, :1], order)
    masks = _mask_resizer(mask_logits, size, scaled, out)
    frame_rows = rows[:, None]

    best = torch.full((g, *out), -1.0, device=device)  # score x probability >= 0 always beats it
    winner = torch.zeros((g, *out), dtype=torch.long, device=device)
    inside = torch.zeros((g, *out), dtype=torch.bool, device=device)
    own_area = torch.zeros((g, k), dtype=torch.long, device=device)
    for first in range(0, k, step):
        chunk = slice(first, first + step)
        prob = masks(frame_rows, order[:, chunk]).sigmoid_()
        own = prob >= thresholds.mask
        own_area[:, chunk] = torch.count_nonzero(own, dim=(2, 3))
        value, which = (kept_scores[:, chunk, None, None] * prob).max(1)
        better = value > best
        best = torch.where(better, value, best)
        winner = torch.where(better, which + first, winner)
        inside = torch.where(better, own.gather(1, which[:, None])[:, 0], inside)
    per_frame = torch.arange(g, device=device)[:, None, None]
    won_area = torch.bincount((winner + per_frame * k).flatten(), minlength=g * k).view(g, k)
    final_area = torch.bincount((torch.where(inside, winner, k) + per_frame * (k + 1)).flatten(),
                                minlength=g * (k + 1)).view(g, k + 1)[:, :k]
    valid = ~pad & (own_area > 0) & (won_area > 0) & (final_area > 0) & (won_area >= thresholds.overlap * own_area)

    # Stuff of one class merges into its first valid query: the leader of each query.
    stuff = ~isthing[kept_classes]
    index = torch.arange(k, device=device)[None, :]
    same_stuff = ((kept_classes[:, :, None] == kept_classes[:, None, :]) & stuff[:, :, None] & stuff[:, None, :]
                  & valid[:, None, :])
    leader = torch.where(same_stuff.any(2), same_stuff.int().argmax(2), index)
    is_leader = valid & (leader == index)
    segment_of = torch.cumsum(is_leader.long(), 1) - 1
    table = torch.where(valid, segment_of.gather(1, leader), -1)
    label_maps = torch.where(inside, table.gather(1, winner.flatten(1)).view(winner.shape), -1).int()
    chosen = is_leader.nonzero(as_tuple=True)
    segments = is_leader.sum(1).tolist()
    columns = (kept_classes[chosen].split(segments), kept_scores[chosen].split(segments),
               order[chosen].split(segments))
    return [(label_maps[j], *(column[j] for column in columns)) for j in range(g)]


def instance(
    mask_logits: Tensor,
    class_logits: Tensor,
    size: int,
    scaled: tuple[int, int],
    frame: tuple[int, int],
    thresholds: Thresholds = Thresholds(),
    mode: str = "exact",
    top_k: int = 100,
) -> Decision:
    """One frame's instances: the official top-k over queries x classes, each scored as class
    probability x mean mask probability inside its mask (logit > 0); those scoring at least
    ``thresholds.score`` are kept. The label map paints higher scores over lower ones, and
    segments wholly covered by better ones disappear.
    """
    out = decision_size(mode, scaled, frame)
    device = mask_logits.device
    probs = class_logits.float().softmax(-1)[:, :-1]
    num_classes = probs.shape[1]
    top_scores, top_index = probs.flatten().topk(min(top_k, probs.numel()))
    # A mask score is at most 1, so candidates below the threshold on class score alone can go.
    candidate = top_scores >= thresholds.score
    top_scores, top_index = top_scores[candidate], top_index[candidate]
    if top_index.numel() == 0:
        return _empty(out, frame, device)
    queries = top_index // num_classes
    classes = top_index % num_classes
    unique_queries, which = torch.unique(queries, return_inverse=True)
    masks = _mask_resizer(mask_logits, size, scaled, out)
    u = int(unique_queries.numel())
    mask_area = torch.zeros(u, dtype=torch.long, device=device)
    prob_sum = torch.zeros(u, device=device)
    for chunk in _chunks(u, device, out):
        logits = masks(unique_queries[chunk])
        inside = logits > 0
        mask_area[chunk] = inside.flatten(1).sum(1)
        prob_sum[chunk] = (logits.sigmoid() * inside).flatten(1).sum(1)
    mask_scores = prob_sum / (mask_area + 1e-6)
    final = top_scores * mask_scores[which]
    order = torch.argsort(final, descending=True)
    order = order[(final[order] >= thresholds.score) & (mask_area[which[order]] > 0)]
    n = int(order.numel())
    if n == 0:
        return _empty(out, frame, device)
    # Each pixel shows the best-ranked candidate whose mask covers it: a running minimum of rank.
    rank_of_query = torch.full((u, n), n, dtype=torch.long, device=device)
    rank_of_query[which[order], torch.arange(n, device=device)] = torch.arange(n, device=device)
    shown = torch.full(out, n, dtype=torch.long, device=device)
    for chunk in _chunks(u, device, out):
        inside = masks(unique_queries[chunk]) > 0
        # A query may head several candidates (one per class): its best rank is what paints.
        best_rank = rank_of_query[chunk].amin(1)
        shown = torch.minimum(shown, torch.where(inside, best_rank[:, None, None], n).amin(0))
    visible = torch.bincount(shown.flatten(), minlength=n + 1)[:n] > 0
    renumber = torch.cumsum(visible.long(), 0) - 1
    label_map = torch.where(shown < n, renumber[shown.clamp(max=n - 1)], -1).int()
    kept = order[visible]
    return Decision(label_map, classes[kept], final[kept], queries[kept], frame)


def semantic(
    mask_logits: Tensor,
    class_logits: Tensor,
    size: int,
    layout: WindowLayout,
    frame: tuple[int, int],
    mode: str = "exact",
    class_chunk: int = 16,
) -> Decision:
    """One frame's semantic map from its windows' logits (N x Q x m x m, N x Q x (C+1)).

    Per window, per-pixel class scores are sigmoid(mask) weighted by softmax(class) summed over
    queries; overlapping windows are averaged. Exact mode resizes the class scores to the frame
    and takes the best class there, a few classes at a time (the same answer as resizing all at
    once without holding C full-resolution maps); fast mode takes the best class at the scaled
    size. Each class present is one segment, scored by its mean winning score.
    """
    out = decision_size(mode, layout.scaled, frame)
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
    best = torch.full(out, -math.inf, device=averaged.device)
    best_class = torch.zeros(out, dtype=torch.long, device=averaged.device)
    for c0 in range(0, num_classes, class_chunk):
        chunk = averaged[c0 : c0 + class_chunk]
        if tuple(out) != (h, w):
            chunk = F.interpolate(chunk[None], out, mode="bilinear", align_corners=False)[0]
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
    none = torch.full_like(present, -1)
    return Decision(label_map.int(), present, mean_score.float(), none, frame)
