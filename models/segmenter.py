"""Frames in, segments out: EoMT with its pre- and post-processing on one device."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from segstream.models.eomt import EoMT, EoMTOutput
from segstream.models.label_sets import LabelSet
from segstream.models.prediction import FramePrediction
from segstream.models.processing import Thresholds, instance, letterbox, panoptic, semantic, semantic_windows

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Segmenter:
    """Runs an EoMT model on batches of H x W x 3 uint8 RGB frames (any sizes, mixed).

    ``precision`` bf16/fp16 run the network under autocast; post-processing is always fp32.
    ``compile`` wraps the network in ``torch.compile``; with ``static_batch`` set, the network
    always sees batches of exactly that size, so the compiled graph keeps one static shape.
    """

    def __init__(
        self,
        model: EoMT,
        task: str,
        labels: LabelSet,
        name: str,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        thresholds: Thresholds = Thresholds(),
        compile: bool = False,
        static_batch: int | None = None,
    ):
        if task not in ("panoptic", "semantic", "instance"):
            raise ValueError(f"unknown task {task!r}: use panoptic, semantic or instance")
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
        self.thresholds = thresholds
        self.static_batch = static_batch if compile else None
        self.network = torch.compile(self.model, dynamic=False) if compile else self.model

    @property
    def size(self) -> int:
        return self.model.cfg.img_size

    def forward(self, pixels: torch.Tensor) -> EoMTOutput:
        """The network alone on normalised input. Compiled with ``static_batch``, the input runs
        in chunks of exactly that many images (the last one zero-padded), so frames and semantic
        windows of any count reuse the one compiled graph."""
        autocast = torch.autocast(self.device.type, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()
        n, step = pixels.shape[0], self.static_batch
        if not step or n == 0:
            with autocast:
                return EoMTOutput(*self.network(pixels))
        chunks = []
        for first in range(0, n, step):
            chunk = pixels[first : first + step]
            if chunk.shape[0] < step:
                chunk = torch.cat((chunk, chunk.new_zeros((step - chunk.shape[0], *chunk.shape[1:]))))
            with autocast:
                chunks.append(self.network(chunk))
        return EoMTOutput(*(torch.cat(parts)[:n] for parts in zip(*chunks)))

    @torch.inference_mode()
    def segment(self, images: list[np.ndarray]) -> list[FramePrediction]:
        if not images:
            return []
        pin = self.device.type == "cuda"
        frames = [self._upload(image, pin) for image in images]
        sizes = [(int(f.shape[0]), int(f.shape[1])) for f in frames]
        if self.task == "semantic":
            return self._segment_semantic(frames, sizes)
        pixels, scaled = letterbox(frames, self.size)
        out = self.forward(pixels)
        post = panoptic if self.task == "panoptic" else instance
        return [
            post(
                out.mask_logits[i],
                out.class_logits[i],
                out.query_embeddings[i],
                self.size,
                scaled[i],
                sizes[i],
                self.labels,
                self.thresholds,
            )
            for i in range(len(frames))
        ]

    def _segment_semantic(self, frames: list[torch.Tensor], sizes: list[tuple[int, int]]) -> list[FramePrediction]:
        windows, layouts = semantic_windows(frames, self.size)
        out = self.forward(windows)
        results, first = [], 0
        for layout, size in zip(layouts, sizes):
            last = first + len(layout.starts)
            results.append(
                semantic(
                    out.mask_logits[first:last], out.class_logits[first:last], self.size, layout, size, self.labels
                )
            )
            first = last
        return results

    def _upload(self, image: np.ndarray, pin: bool) -> torch.Tensor:
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"frames must be H x W x 3 uint8 RGB, got {image.dtype} {image.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(image))
        if pin:
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=True)
