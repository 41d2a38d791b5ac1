"""Model families behind one small interface, and EoMT as the first of them.

A family adapter owns what lies between decoded frames and per-frame segments on the model's
device: pre-processing (``prepare``), the network (``forward``) and post-processing
(``decide``). The engine calls these three in that order, possibly from two threads (the network
of one batch overlapping the post-processing of the previous one), and ``results`` brings the
decisions to the host as ``FrameResult``. ``segment`` runs all of it at once, for scripts and
tests.
"""

from __future__ import annotations

import logging
import platform
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from segstream.connectors.errors import AdapterError, FrameError
from segstream.models.eomt import EoMT, EoMTOutput
from segstream.models.label_sets import LabelSet
from segstream.models.processing import (
    POSTPROCESS_MODES,
    Decision,
    InputGeometry,
    Thresholds,
    frame_label_map,
    instance,
    letterbox,
    panoptic_frames,
    semantic,
    semantic_windows,
)
from segstream.models.results import NO_TRACK, FrameResult, Segments

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


log = logging.getLogger("segstream.model")


@dataclass(slots=True)
class Prepared:
    """A batch ready for the network: ``pixels`` N x 3 x S x S (N frames, or windows of them),
    each frame's (height, width) and how it was laid out (letterboxed size or window layout)."""

    pixels: Tensor
    frames: list[tuple[int, int]]
    layouts: list[Any]
    extra: dict = field(default_factory=dict)


class FamilyAdapter(Protocol):
    """One model family, as the engine drives it. ``prepare`` takes H x W x 3 uint8 frames
    already on ``device`` (with ``sizes``: each frame's own (height, width), the images being
    copies already scaled to ``geometry.scale`` of it); ``decide`` returns one ``Decision`` per
    frame, still on the device, and ``embeddings`` the per-segment embeddings of those decisions
    (S x D, D may be 0). ``geometry.scale`` gives the (height, width) pre-processing scales a
    frame of a given size to, before any padding or windowing (what a decoder may scale to at
    once); the geometry is a plain value that travels without the model.

    ``prepare`` and ``forward`` run on the model thread(s) (several at once on the CPU with
    ``engine.model_workers`` > 1), ``decide`` and ``embeddings`` on the post-processing thread,
    one batch at a time in batch order. ``batch_buckets`` are the batch sizes a compiled network
    is specialised for (``()``: any). ``segment(images)`` is the synchronous path, H x W x 3
    uint8 RGB numpy frames to ``FrameResult``s: ``segment_frames(self, images)`` implements it
    for any adapter. An adapter may also have ``finite(outputs, prepared)``: a bool tensor, per
    frame, whether the network's outputs for it hold no NaN or infinity (``nonfinite_frames``);
    the engine drops a frame whose outputs do not, counting it (an fp16 network can overflow)."""

    # read-only (the engine only reads them): an adapter's own may be properties or Final
    @property
    def name(self) -> str: ...

    @property
    def family(self) -> str: ...

    @property
    def labels(self) -> LabelSet: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def batch_buckets(self) -> tuple[int, ...]: ...

    @property
    def geometry(self) -> InputGeometry: ...

    def prepare(self, frames: list[Tensor], sizes: list[tuple[int, int]] | None = None) -> Prepared: ...

    def forward(self, prepared: Prepared) -> Any: ...

    def decide(self, outputs: Any, prepared: Prepared) -> list[Decision]: ...

    def embeddings(self, outputs: Any, prepared: Prepared, index: int, decision: Decision) -> Tensor: ...

    def segment(self, images: Sequence[np.ndarray]) -> list[FrameResult]: ...


def cpu_computes_bf16() -> bool:
    """Whether this CPU computes bf16 natively. On x86, AVX-512 BF16 or AMX: oneDNN's own check
    passes any AVX-512 CPU (a Skylake or Cascade Lake Xeon), where bf16 is emulated, several
    times slower than fp32. Asked of torch, else of /proc/cpuinfo's flags (torch before about
    2.5 has no such check). Elsewhere (Arm), oneDNN's check."""
    if not torch.backends.mkldnn.is_available():
        return False
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        if all(check is not None for check in checks):
            return any(check() for check in checks)
        flags = cpu_flags()
        if flags is not None:
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The first processor's flags in ``path`` (Linux), None where it cannot be read."""
    try:
        with open(path) as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        return None
    return None


def default_precision(device: torch.device) -> str:
    """The faster precision that keeps results: bf16 where the hardware computes it natively
    (CUDA with bf16 support, CPUs with AMX or AVX-512 BF16), else fp16 on CUDA and fp32 on CPU."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_computes_bf16() else "fp32"


# Layers whose weights autocast casts to the lower precision on every call.
_AUTOCAST_LAYERS = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d)


def store_autocast_weights(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Keeps the weights of ``model``'s linear and convolution layers in ``dtype``, in place.

    Under autocast to ``dtype`` these layers cast their weights on every call; stored cast, the
    outputs stay bit-equal (a test holds them so) and the weights take half the memory (the
    CPU forward's time did not measurably change: docs/BENCHMARKS.md). Other parameters (norms, layer scales, tokens)
    stay float32, as autocast uses them. Only for a model that runs under autocast from then on.
    """
    if dtype != torch.float32:
        for module in model.modules():
            if isinstance(module, _AUTOCAST_LAYERS):
                module.to(dtype)
    return model


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Batch sizes a compiled network is specialised for: powers of two up to ``max_batch``, and
    ``max_batch`` itself. A batch runs padded to the smallest bucket that holds it."""
    sizes = {max_batch}
    size = 1
    while size < max_batch:
        sizes.add(size)
        size *= 2
    return tuple(sorted(sizes))


class EoMTSegmenter:
    """EoMT on batches of H x W x 3 uint8 RGB frames (any sizes, mixed), on one device.

    ``precision`` bf16/fp16 run the network under autocast; post-processing is always fp32.
    ``postprocess`` is ``exact`` (decisions at frame resolution, the official label maps) or
    ``fast`` (decisions at input resolution, label map resized; the default, as in the config).
    ``compile`` wraps the network in
    ``torch.compile`` (on CUDA with CUDA graphs); the network then always sees one of
    ``batch_buckets`` batch sizes (inputs are zero-padded up to the next one), so each bucket
    keeps one static graph.
    """

    family = "eomt"

    def __init__(
        self,
        model: EoMT,
        task: str,
        labels: LabelSet,
        name: str,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        thresholds: Thresholds = Thresholds(),
        postprocess: str = "fast",
        compile: bool = False,
        max_batch: int = 8,
    ):
        if task not in ("panoptic", "semantic", "instance"):
            raise ValueError(f"unknown task {task!r}: use panoptic, semantic or instance")
        if labels.num_classes != model.cfg.num_classes:
            raise ValueError(
                f"label set {labels.name} has {labels.num_classes} classes, the model {model.cfg.num_classes}"
            )
        if postprocess not in POSTPROCESS_MODES:
            raise ValueError(f"unknown post-processing mode {postprocess!r}: use {' or '.join(POSTPROCESS_MODES)}")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.task = task
        self.labels = labels
        self.name = name
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.thresholds = thresholds
        self.postprocess = postprocess
        self.batch_buckets = batch_buckets(max_batch) if compile else ()
        # On CUDA, compiled graphs are also captured as CUDA graphs (one per bucket): a batch
        # launches as one graph instead of hundreds of kernels.
        self.cuda_graphs = compile and self.device.type == "cuda"
        mode = "reduce-overhead" if self.cuda_graphs else None
        self.network = torch.compile(self.model, dynamic=False, mode=mode) if compile else self.model
        self._isthing = torch.tensor(labels.isthing, device=self.device)

    @property
    def size(self) -> int:
        return self.model.cfg.img_size

    # --- the three steps the engine drives ---------------------------------------------------

    @property
    def geometry(self) -> InputGeometry:
        return InputGeometry(self.size, windows=self.task == "semantic")

    def prepare(self, frames: list[Tensor], sizes: list[tuple[int, int]] | None = None) -> Prepared:
        """Letterboxed (or windowed) normalised input. Frames already at ``geometry.scale`` of their
        ``sizes`` are not resized again (scaling is idempotent: the sizes and layouts are those of
        the full frames)."""
        if sizes is None:
            sizes = [(int(f.shape[0]), int(f.shape[1])) for f in frames]
        if self.task == "semantic":
            pixels, layouts = semantic_windows(frames, self.size)
        else:
            pixels, layouts = letterbox(frames, self.size)
        return Prepared(pixels, sizes, layouts)

    @torch.inference_mode()
    def forward(self, prepared: Prepared) -> EoMTOutput:
        """The network alone on normalised input. With buckets, the input runs in chunks of
        bucket sizes (the last one zero-padded), so any count of frames or semantic windows
        reuses the compiled graphs."""
        pixels = prepared.pixels
        autocast = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()
        n = pixels.shape[0]
        if not self.batch_buckets or n == 0:
            with autocast:
                return EoMTOutput(*self.network(pixels))
        chunks, first = [], 0
        largest = self.batch_buckets[-1]
        while first < n:
            count = min(largest, n - first)
            bucket = next(b for b in self.batch_buckets if b >= count)
            chunk = pixels[first : first + count]
            if bucket > count:
                chunk = torch.cat((chunk, chunk.new_zeros((bucket - count, *chunk.shape[1:]))))
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()
            with autocast:
                out = self.network(chunk)
            # A CUDA graph writes every run into the same buffers: this batch's outputs are copied
            # out before the next batch's network overwrites them while they are post-processed.
            chunks.append([t[:count].clone() if self.cuda_graphs else t[:count] for t in out])
            first += count
        return EoMTOutput(*(torch.cat(parts) for parts in zip(*chunks)))

    @torch.inference_mode()
    def decide(self, outputs: EoMTOutput, prepared: Prepared) -> list[Decision]:
        if self.task == "semantic":
            decisions, first = [], 0
            for layout, frame in zip(prepared.layouts, prepared.frames):
                last = first + len(layout.starts)
                decisions.append(
                    semantic(outputs.mask_logits[first:last], outputs.class_logits[first:last], self.size,
                             layout, frame, self.postprocess)
                )
                first = last
            return decisions
        if self.task == "panoptic":
            return panoptic_frames(outputs.mask_logits, outputs.class_logits, self.size, prepared.layouts,
                                   prepared.frames, self._isthing, self.thresholds, self.postprocess)
        return [
            instance(outputs.mask_logits[i], outputs.class_logits[i], self.size, prepared.layouts[i],
                     prepared.frames[i], self.thresholds, self.postprocess)
            for i in range(len(prepared.frames))
        ]

    @torch.inference_mode()
    def finite(self, outputs: EoMTOutput, prepared: Prepared) -> Tensor:
        """Per frame, whether its class and mask logits hold no NaN or infinity (a semantic
        frame's: all of its windows')."""
        rows = rows_finite(outputs.class_logits) & rows_finite(outputs.mask_logits)
        if self.task != "semantic":
            return rows
        return torch.stack([part.all() for part in rows.split([len(layout.starts) for layout in prepared.layouts])])

    def embeddings(self, outputs: EoMTOutput, prepared: Prepared, index: int, decision: Decision) -> Tensor:
        """The final-normed query token of each segment's query (S x D); none for semantic."""
        if self.task == "semantic":
            return outputs.query_embeddings.new_zeros((int(decision.queries.numel()), 0))
        return outputs.query_embeddings[index][decision.queries]

    # --- everything at once ---------------------------------------------------------------

    def segment(self, images: Sequence[np.ndarray]) -> list[FrameResult]:
        """Frames in, results out (label maps and segments only; no source metadata)."""
        return segment_frames(self, images)


@torch.inference_mode()
def segment_frames(
    adapter: FamilyAdapter, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]] | None = None
) -> list[FrameResult]:
    """The synchronous path of any family: ``images`` (H x W x 3 uint8 RGB) through pre-processing,
    the network and post-processing in one call. ``sizes``: each frame's (height, width) when the
    images are copies already scaled to the adapter's ``geometry.scale`` (the results describe
    the frames)."""
    if isinstance(images, np.ndarray) or isinstance(images, (str, bytes)):
        shape = getattr(images, "shape", None)
        raise FrameError(f"segment() takes a list of frames (each H x W x 3 uint8 RGB), got "
                        f"{type(images).__name__}{'' if shape is None else f' {shape}'} — wrap one frame as "
                        "[frame], or pass list(batch)")
    if not images:
        return []
    tensors = []
    for i, image in enumerate(images):
        try:
            tensors.append(upload(image, adapter.device))
        except FrameError as error:  # which of the list (found probing with batches of mixed photos)
            if len(images) == 1:
                raise
            raise FrameError(f"frame {i} of {len(images)}: {error}") from None
    prepared = adapter.prepare(tensors, None if sizes is None else list(sizes))
    outputs = adapter.forward(prepared)
    out = results(adapter, outputs, prepared, adapter.decide(outputs, prepared))
    if bad := nonfinite_frames(adapter, outputs, prepared):
        which = f"frame {bad[0]}" if len(bad) == 1 else f"frames {', '.join(map(str, bad))}"
        log.warning("%s of %d: %s", which, len(images), nonfinite_advice(adapter))
    return out


def rows_finite(tensor: Tensor) -> Tensor:
    """Per row (first dimension), whether it holds no NaN or infinity: its largest and smallest
    values, which NaN and infinity reach (no bool copy of the whole: 8 ms where isfinite().all()
    took 75-121 for EoMT-L's mask logits of a batch of 4 on a CPU thread, docs/BENCHMARKS.md)."""
    flat = tensor.flatten(1)
    return torch.isfinite(flat.amax(1)) & torch.isfinite(flat.amin(1))


def nonfinite_frames(adapter: FamilyAdapter, outputs: Any, prepared: Prepared) -> list[int]:
    """The frames of a batch whose network outputs hold NaN or infinity (the adapter's
    ``finite``; none known for an adapter without it)."""
    finite = getattr(adapter, "finite", None)
    if finite is None:
        return []
    flags = finite(outputs, prepared)
    if bool(flags.all()):  # (one synchronisation a batch, the usual answer)
        return []
    return [i for i, ok in enumerate(flags.tolist()) if not ok]


def nonfinite_advice(adapter: FamilyAdapter) -> str:
    """What a frame whose network outputs are not finite means, and what to do."""
    said = "the network's outputs hold NaN or infinity (its segments would mean nothing)"
    if getattr(adapter, "precision", None) == "fp16":
        return f"{said} — fp16 overflows in this network: set model.precision to bf16 (or fp32)"
    return (f"{said} — set model.precision to fp32 if it is not, and check that the checkpoint was trained for "
            f"{adapter.name}")


def upload(image: np.ndarray, device: torch.device) -> Tensor:
    """An H x W x 3 uint8 RGB frame as a tensor on ``device``."""
    if not isinstance(image, np.ndarray):
        raise FrameError(f"frames must be numpy arrays (H x W x 3 uint8 RGB), got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise FrameError(f"frames must be H x W x 3 uint8 RGB, got {image.dtype} {image.shape}{_frame_hint(image)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise FrameError(f"a frame has no pixels ({image.shape[0]} x {image.shape[1]})")
    if not image.flags.writeable:  # torch warns of (and will not share) memory it may not write: a copy
        image = image.copy()
    return torch.from_numpy(np.ascontiguousarray(image)).to(device)


def _frame_hint(image: np.ndarray) -> str:
    """How the usual look-alikes of an RGB frame become one."""
    if image.ndim == 2 and image.size:
        return " — a grey frame: np.repeat(frame[..., None], 3, axis=2)"
    if image.ndim == 3 and image.shape[2] == 4:
        return " — RGBA: frame[..., :3]"
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype.kind == "f":
        return " — floats from 0 to 1: (frame * 255).round().astype(np.uint8)"
    return ""


def check_decision(adapter: FamilyAdapter, decision: Decision, label_map: np.ndarray, class_ids: np.ndarray,
                   embeddings: np.ndarray, frame: tuple[int, int]) -> None:
    """Raise ``AdapterError`` where a decision (its host copies) breaks the contract: class ids
    within the label set, a 2-D integer label map of values below the segment count with the
    frame's shape (up to a pixel and a half of rounding: decided at another size is fine, padded
    is not), the frame's own size, one embedding row per segment. Costs microseconds; a family of
    one's own is caught here rather than publishing wrong labels or sizes."""
    count = len(class_ids)
    if tuple(decision.frame) != frame:
        raise _adapter_error(adapter, f"decide() said the frame is {decision.frame[1]}x{decision.frame[0]} (width x "
                                      f"height), but it is {frame[1]}x{frame[0]}: Decision.frame is (height, width)")
    if count and (class_ids.min() < 0 or class_ids.max() >= adapter.labels.num_classes):
        raise _adapter_error(adapter, f"decide() returned class ids {sorted({int(c) for c in class_ids})}; they must be "
                                      f"0 to {adapter.labels.num_classes - 1} (its label set's classes)")
    if label_map.ndim != 2 or label_map.dtype.kind not in "iu":
        raise _adapter_error(adapter, f"decide() returned a {label_map.dtype} label map of shape {label_map.shape}; it "
                                      "must be a 2-D integer map (segment i has value i, -1 none)")
    h, w = label_map.shape
    height, width = frame
    # the shorter side was rounded from the longer: its own tolerance, either way round
    if h and w and abs(h - w * height / width) > 1.5 + 0.02 * h and abs(w - h * width / height) > 1.5 + 0.02 * w:
        raise _adapter_error(adapter, f"decide() returned a {w}x{h} label map for a {width}x{height} frame: a map "
                                      "stands for the whole frame at any scale, without padding")
    if label_map.size and (label_map.max() >= count or label_map.min() < -1):
        raise _adapter_error(adapter, f"decide()'s label map holds values {int(label_map.min())} to "
                                      f"{int(label_map.max())} for {count} segments; segment i has value i, -1 none")
    if embeddings.ndim != 2 or embeddings.shape[0] != count:
        raise _adapter_error(adapter, f"embeddings() returned shape {embeddings.shape} for {count} segments; it must be "
                                      f"{count} x D (D may be 0)")


def _adapter_error(adapter: FamilyAdapter, what: str) -> AdapterError:
    return AdapterError(f"model family {adapter.family!r} ({adapter.name}): {what}")


def results(adapter: FamilyAdapter, outputs: Any, prepared: Prepared, decisions: list[Decision]) -> list[FrameResult]:
    """The decisions as host ``FrameResult``s: label maps for the frame (a ``ScaledLabelMap``
    where decided at the model's size) with segment columns.

    Only the compact parts leave the device: the label maps, the segment columns and the
    segments' embeddings, each in one copy for the batch.
    """
    names = np.array(adapter.labels.names, dtype=object)
    isthing = np.array(adapter.labels.isthing, dtype=bool)
    host_levels = getattr(adapter, "host_levels", None)  # families with a segment hierarchy
    if len(decisions) != len(prepared.frames):
        raise _adapter_error(adapter, f"decide() returned {len(decisions)} decisions for {len(prepared.frames)} frames")
    for decision in decisions:
        if not len(decision.class_ids) == len(decision.queries) == len(decision.scores):
            raise _adapter_error(adapter, f"decide() returned {len(decision.class_ids)} class ids, "
                                          f"{len(decision.scores)} scores and {len(decision.queries)} queries")
    # The segment columns of the whole batch travel together, as do its label maps and its
    # embeddings: three copies from a device a batch, not three a frame.
    columns = host_arrays([torch.stack((d.class_ids.double(), d.queries.double(), d.scores.double()), dim=1)
                           for d in decisions])
    maps = host_arrays([decision.label_map for decision in decisions])
    vectors = host_arrays([adapter.embeddings(outputs, prepared, i, d).float() for i, d in enumerate(decisions)])
    out = []
    for i, decision in enumerate(decisions):
        class_ids = columns[i][:, 0].astype(np.int32)
        small, embeddings = maps[i], vectors[i]
        check_decision(adapter, decision, small, class_ids, embeddings, tuple(prepared.frames[i]))
        label_map, areas, boxes, centroids = frame_label_map(small, len(class_ids), decision.frame)
        segments = Segments(
            ids=np.arange(len(class_ids), dtype=np.int32),
            class_ids=class_ids,
            labels=names[class_ids],
            isthing=isthing[class_ids],
            scores=columns[i][:, 2].astype(np.float32).round(6),
            areas=areas,
            boxes=boxes,
            queries=columns[i][:, 1].astype(np.int32),
            embeddings=embeddings,
            track_ids=np.full(len(class_ids), NO_TRACK, np.int64),
            track_ages=np.zeros(len(class_ids), np.int32),
            centroids=centroids,
        )
        if not areas.all():
            # a frame smaller than the model's input loses segments narrower than a frame pixel in
            # the resize; a segment with no pixel is not one (ids stay the label map's values)
            segments = segments[areas > 0]
        height, width = decision.frame
        out.append(FrameResult(source="", index=i, width=width, height=height, segment_map=label_map,
                               segments=segments, model=adapter.name,
                               levels=host_levels(decision) if host_levels else []))
    return out


def host_arrays(tensors: list[Tensor]) -> list[np.ndarray]:
    """Each tensor as a host array of its own; a device's tensors of one dtype and one shape but
    the first are copied in one (one synchronisation for a batch rather than one a tensor).

    No array shares memory with another's or with a larger tensor (a pass's label maps are one
    tensor): a result kept holds its own map, not its batch's."""
    arrays: list[np.ndarray | None] = [None] * len(tensors)
    together: dict[tuple, list[int]] = {}
    for i, tensor in enumerate(tensors):
        if tensor.device.type == "cpu" or tensor.dim() == 0:
            tensor = tensor.cpu()
            own = tensor.untyped_storage().nbytes() <= tensor.nbytes
            arrays[i] = tensor.numpy() if own else tensor.numpy().copy()
        else:
            together.setdefault((tensor.device, tensor.dtype, tuple(tensor.shape[1:])), []).append(i)
    for members in together.values():
        if len(members) == 1:
            arrays[members[0]] = tensors[members[0]].cpu().numpy()
            continue
        joined = torch.cat([tensors[i] for i in members]).cpu().numpy()
        for i, part in zip(members, np.split(joined, np.cumsum([len(tensors[i]) for i in members])[:-1])):
            arrays[i] = part.copy()
    return arrays
