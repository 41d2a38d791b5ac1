"""From the ``model:`` section of a pipeline config to a ready Segmenter."""

from __future__ import annotations

import torch

from segstream.connectors.checkpoints import load_eomt
from segstream.connectors.errors import ConfigError
from segstream.models.label_sets import load_label_set
from segstream.models.presets import PRESETS, get_preset
from segstream.models.processing import Thresholds
from segstream.models.segmenter import Segmenter


def resolve_device(device: str) -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device: '{device}' asked for, but no CUDA GPU is visible — use 'cpu' or 'auto'")
    return torch.device(device)


def build_segmenter(model_cfg, batch_size: int | None = None) -> Segmenter:
    """The configured model on its device, weights loaded, ready to ``segment`` frames."""
    if model_cfg.preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset '{model_cfg.preset}' — known presets: {', '.join(PRESETS)}")
    preset = get_preset(model_cfg.preset)
    if model_cfg.task != preset.task:
        raise ConfigError(
            f"model.task: preset {preset.name} is a {preset.task} model, the config asks for {model_cfg.task} — "
            f"set model.task to {preset.task} or choose a {model_cfg.task} preset"
        )
    device = resolve_device(model_cfg.device)
    precision = model_cfg.precision
    if device.type == "cpu" and precision == "fp16":
        raise ConfigError("model.precision: fp16 needs a GPU — use fp32 or bf16 on the CPU")
    model = load_eomt(preset, model_cfg.checkpoint)
    thresholds = Thresholds(
        score=model_cfg.score_threshold, mask=model_cfg.mask_threshold, overlap=model_cfg.overlap_threshold
    )
    return Segmenter(
        model,
        task=preset.task,
        labels=load_label_set(preset.label_set),
        name=preset.name,
        device=device,
        precision=precision,
        thresholds=thresholds,
        compile=model_cfg.compile,
        static_batch=batch_size,
    )
