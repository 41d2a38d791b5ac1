"""SeNaTra as a segstream model family: frames in, panoptic segments and their hierarchy out.

Pre-processing scales each frame so its long side is the preset's ``input_size`` (no square
letterbox: the network takes any size) and pads the batch bottom/right to a common size, a
multiple of the 4-pixel stem. Everything after the network comes from the grouping layers
themselves, with no pixel decoder:

- **semantic** (task ``semantic``): the final tokens' class logits carried to the stem grid
  (stride 4) by the composed soft assignments (``SeNaTraOutput.pixel_logits``); argmax per stem
  cell, one segment per class present.
- **hierarchy**: the hard label maps of every level (``senatra.hierarchy``: each token's parent
  is the argmax of its own A_up row, so the levels nest), with the parent of each segment.
- **panoptic** (task ``panoptic``): each final token takes the argmax of its class logits;
  stuff is one segment per class (every final token of that class); things are the connected
  groups of touching final tokens of one thing class (``senatra.panoptic_segments``). With a
  finite ``margin`` two touching tokens also need instance embeddings within ``margin`` to join;
  on the shipped model that split objects more than it separated them (docs/BENCHMARKS.md), so
  by default touching is enough. A pixel's panoptic segment is that of its final-level segment,
  so every panoptic segment is a union of final-level segments.

Each segment's embedding (``Segments.embeddings``, for trackers) is the mean final token over
its stem cells. Decisions are taken on the stem cells that hold the frame (a smaller frame's
batch padding yields no segment) and only the label maps travel to the host, where they are
resized to the frame by nearest neighbour.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from segstream.models.label_sets import LabelSet
from segstream.models.processing import (
    Decision,
    InputGeometry,
    _resize_rgb,
    frame_label_map,
    letterbox_size,
    normalize,
)
from segstream.models.results import FrameResult, Level
from segstream.models.segmenter import PRECISIONS, Prepared, rows_finite, segment_frames
from segstream.models.senatra import SeNaTra, SeNaTraOutput, hierarchy, panoptic_segments

STEM = 4


def stem_to_scaled(stem_map: Tensor, height: int, width: int) -> Tensor:
    """A map on the stem grid (one value per 4x4 pixels) at the scaled frame's pixels."""
    return stem_map.repeat_interleave(STEM, 0).repeat_interleave(STEM, 1)[:height, :width]


def segment_means(values: Tensor, stem_labels: Tensor, count: int) -> Tensor:
    """count x D: the mean of ``values`` (h0 x w0 x D, per stem cell) over each segment's stem
    cells (``stem_labels`` h0 x w0, segments 0..count-1)."""
    flat = stem_labels.reshape(-1).long()
    sums = values.new_zeros(count, values.shape[-1]).index_add_(0, flat, values.reshape(-1, values.shape[-1]))
    return sums / torch.bincount(flat, minlength=count).clamp_min(1)[:, None]


def scale_frames(frames: Sequence[Tensor], size: int) -> tuple[Tensor, list[tuple[int, int]]]:
    """H x W x 3 uint8 frames -> normalised B x 3 x h x w input (each frame's long side scaled to
    ``size``, placed top-left, zero-padded to the batch's largest size rounded up to the stem's
    4 pixels) and each frame's scaled (height, width)."""
    scaled = [letterbox_size(int(f.shape[0]), int(f.shape[1]), size) for f in frames]
    h = -(-max(s[0] for s in scaled) // STEM) * STEM
    w = -(-max(s[1] for s in scaled) // STEM) * STEM
    batch = frames[0].new_zeros((len(frames), 3, h, w), dtype=torch.uint8)
    for i, (frame, (fh, fw)) in enumerate(zip(frames, scaled)):
        batch[i, :, :fh, :fw] = _resize_rgb(frame, fh, fw)
    return normalize(batch), scaled


@dataclass(slots=True)
class SizeGroups:
    """A batch's network outputs when its frames differ in size: each group's frame indices in the
    batch and its outputs, the group run at its own size."""

    groups: list[tuple[list[int], SeNaTraOutput]]


@dataclass(slots=True)
class LevelDecision:
    """One hierarchy level of one frame on the device: ``label_map`` at the scaled frame's size,
    values 0..S-1 (the level's segments: its tokens that own a pixel, in token order); ``token`` the level token of
    each segment and ``parents`` each segment's segment at the next coarser level (-1 at the top)."""

    label_map: Tensor
    token: Tensor
    parents: Tensor


@dataclass(slots=True)
class NativeDecision(Decision):
    """A ``Decision`` plus the frame's hierarchy, finest level first, and each segment's embedding
    (S x D: the mean final token over the segment's stem cells, for trackers)."""

    levels: list[LevelDecision] | None = None
    embeddings: Tensor | None = None


def level_decisions(maps: Sequence[Tensor], links: Sequence[Tensor]) -> list[LevelDecision]:
    """Per level (finest first), one frame's hard segments with dense ids and parent links.

    ``maps[k]`` h x w: token of level k+1 per pixel (already cropped); ``links[k]`` the
    parent token (level k+1) of each level-k token (level 0: stem tokens), as ``hierarchy`` gives.
    """
    levels = []
    dense_of_token: list[Tensor] = []
    for label in maps:
        tokens, inverse = torch.unique(label.flatten(), return_inverse=True)
        order = torch.full((int(tokens.max()) + 1,), -1, dtype=torch.long, device=label.device)
        order[tokens] = torch.arange(len(tokens), device=label.device)
        dense_of_token.append(order)
        levels.append(LevelDecision(inverse.view(label.shape).int(), tokens, tokens.new_full(tokens.shape, -1)))
    for k in range(len(levels) - 1):
        parent_tokens = links[k + 1][levels[k].token]
        levels[k].parents = dense_of_token[k + 1][parent_tokens]
    return levels


class SeNaTraSegmenter:
    """A SeNaTra model on batches of H x W x 3 uint8 RGB frames, behind the ``FamilyAdapter``
    protocol. ``task`` is panoptic (segments: stuff per class, things per token cluster) or
    semantic (one segment per class present); either way results carry the hierarchy
    (``FrameResult.levels``). ``margin``: embedding distance under which touching final tokens of
    one thing class are one instance (inf: all touching ones; ignored without an embedding head)."""

    family = "senatra"

    def __init__(
        self,
        model: SeNaTra,
        task: str,
        labels: LabelSet,
        name: str,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        margin: float = float("inf"),
        hierarchy_levels: bool = True,
    ):
        if task not in ("panoptic", "semantic"):
            raise ValueError(f"SeNaTra runs panoptic or semantic segmentation, not {task!r}")
        if labels.num_classes != model.cfg.num_classes:
            raise ValueError(
                f"label set {labels.name} has {labels.num_classes} classes, the model {model.cfg.num_classes}"
            )
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.task = task
        self.labels = labels
        self.name = name
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.margin = margin
        self.hierarchy_levels = hierarchy_levels
        self.postprocess = "native"
        self.batch_buckets: tuple[int, ...] = ()
        self._isthing = torch.tensor(labels.isthing, device=self.device)

    @property
    def size(self) -> int:
        return self.model.cfg.input_size

    @property
    def geometry(self) -> InputGeometry:
        return InputGeometry(self.size)

    def prepare(self, frames: list[Tensor], sizes: list[tuple[int, int]] | None = None) -> Prepared:
        """Normalised input; frames already at ``geometry.scale`` of their ``sizes`` stay as they are."""
        if sizes is None:
            sizes = [(int(f.shape[0]), int(f.shape[1])) for f in frames]
        pixels, scaled = scale_frames(frames, self.size)
        return Prepared(pixels, sizes, scaled)

    @torch.inference_mode()
    def forward(self, prepared: Prepared) -> SeNaTraOutput | SizeGroups:
        """The network on the batch; frames of other sizes run apart (``SizeGroups``), each at its
        own size: padded to a larger frame's, a frame's grouping changed (up to 3.8% of its pixels
        changed class with the frames it happened to be batched with), so results depended on the
        batch, and a batch's outputs on its ``concurrency``."""
        autocast = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (h, w) in enumerate(prepared.layouts):
            groups.setdefault((-(-h // STEM) * STEM, -(-w // STEM) * STEM), []).append(i)
        with autocast:
            if len(groups) == 1:
                [(h, w)] = groups
                return self.model(prepared.pixels[..., :h, :w])
            return SizeGroups([(frames, self.model(prepared.pixels[frames][..., :h, :w]))
                               for (h, w), frames in groups.items()])

    @torch.inference_mode()
    def decide(self, outputs: SeNaTraOutput | SizeGroups, prepared: Prepared) -> list[NativeDecision]:
        if isinstance(outputs, SeNaTraOutput):
            return self._decide(outputs, prepared)
        decisions: list[NativeDecision | None] = [None] * len(prepared.frames)
        for frames, group in outputs.groups:
            part = Prepared(prepared.pixels[frames], [prepared.frames[i] for i in frames],
                            [prepared.layouts[i] for i in frames])
            for i, decision in zip(frames, self._decide(group, part), strict=True):
                decisions[i] = decision
        return decisions  # type: ignore[return-value]  # every frame is in one group

    def _decide(self, outputs: SeNaTraOutput, prepared: Prepared) -> list[NativeDecision]:
        levels = hierarchy(outputs.assignments)
        token_probs = outputs.class_logits.float().softmax(-1)
        token_scores, token_classes = token_probs.max(-1)
        pixel_scores, pixel_classes = outputs.pixel_logits.float().softmax(1).max(1)
        decisions = []
        for i, (frame, (h, w)) in enumerate(zip(prepared.frames, prepared.layouts)):
            inside = (slice(0, -(-h // STEM)), slice(0, -(-w // STEM)))  # stem cells of this frame, not padding
            final = levels.maps[-1][i][inside]
            if self.task == "panoptic":
                split = outputs.embeddings is not None and self.margin != float("inf")
                embeddings = outputs.embeddings[i].float() if split else None
                seg = panoptic_segments(final, token_classes[i], self._isthing, embeddings, self.margin)
                label_map, classes, scores = seg.label_map, seg.classes, token_scores[i][final]
            else:  # the carried class logits decide each stem cell: the paper's native masks
                classes, label_map = torch.unique(pixel_classes[i][inside], return_inverse=True)
                scores = pixel_scores[i][inside]
            count = len(classes)
            embeddings = segment_means(outputs.tokens[i].float()[final], label_map, count)
            label_map = stem_to_scaled(label_map, h, w)
            # A segment's score: the mean top class probability over its pixels.
            flat = label_map.flatten().long()
            area = torch.zeros(count, device=flat.device).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float))
            mass = torch.zeros(count, device=flat.device).index_add_(0, flat, stem_to_scaled(scores, h, w).flatten())
            hier = None
            if self.hierarchy_levels:
                maps = [stem_to_scaled(m[i], h, w) for m in levels.maps]
                hier = level_decisions(maps, [p[i] for p in levels.parents])
            decisions.append(
                NativeDecision(label_map.int(), classes, mass / area.clamp_min(1),
                               torch.full((count,), -1, dtype=torch.long, device=flat.device), frame, hier,
                               embeddings)
            )
        return decisions

    @torch.inference_mode()
    def finite(self, outputs: SeNaTraOutput | SizeGroups, prepared: Prepared) -> Tensor:
        """Per frame, whether its token and pixel class logits hold no NaN or infinity."""
        def of(group: SeNaTraOutput) -> Tensor:
            return rows_finite(group.class_logits) & rows_finite(group.pixel_logits)

        if isinstance(outputs, SeNaTraOutput):
            return of(outputs)
        flags = torch.ones(len(prepared.frames), dtype=torch.bool, device=self.device)
        for frames, group in outputs.groups:
            flags[frames] = of(group)
        return flags

    def embeddings(self, outputs: SeNaTraOutput, prepared: Prepared, index: int, decision: NativeDecision) -> Tensor:
        """Each segment's mean final token (S x D), what a tracker matches segments by."""
        return decision.embeddings

    def host_levels(self, decision: NativeDecision) -> list[Level]:
        """The decision's hierarchy at frame size, on the host (finest level first)."""
        out = []
        for level in decision.levels or []:
            count = int(level.token.numel())
            label_map, areas, _, _ = frame_label_map(level.label_map.cpu().numpy(), count, decision.frame)
            parents = level.parents.cpu().numpy().astype(np.int32)
            out.append(Level(ids=np.arange(count, dtype=np.int32), parents=parents, areas=areas, segment_map=label_map))
        return out

    def segment(self, images: Sequence[np.ndarray]) -> list[FrameResult]:
        """Frames in, results out (label maps, segments and hierarchy; no source metadata)."""
        return segment_frames(self, images)
