"""Named models: the published EoMT ones (tue-mps model zoo) and the small ones segstream ships."""

from __future__ import annotations

from dataclasses import dataclass

from segstream.models.eomt import EoMTConfig, config_for_size
from segstream.models.senatra import SeNaTraConfig
from segstream.models.senatra import config_for_size as senatra_size


@dataclass(frozen=True, slots=True)
class Preset:
    """A named model: its family, architecture, task, label set and where its weights come from.

    ``family`` names the adapter that runs it (``eomt``, ``senatra``); ``config`` is that family's
    architecture. ``weights`` is a file name under ``models/weights/`` for shipped models, an
    ``hf://<repo>`` reference for published ones, or empty when none are published (the model
    then needs ``model.checkpoint``).
    """

    name: str
    config: EoMTConfig | SeNaTraConfig
    task: str
    label_set: str
    weights: str
    family: str = "eomt"


TASKS = ("panoptic", "semantic", "instance")

_LABELS = {"coco_panoptic": 133, "coco_instance": 80, "ade20k": 150, "cityscapes": 19}


def _published(name: str, size: str, img_size: int, task: str, label_set: str) -> Preset:
    config = config_for_size(
        size,
        img_size=img_size,
        num_classes=_LABELS[label_set],
        num_queries=100 if task == "semantic" else 200,
    )
    return Preset(name, config, task, label_set, f"hf://tue-mps/{name}")


_PUBLISHED = [
    ("coco_panoptic_eomt_small_640_2x", "S", 640, "panoptic", "coco_panoptic"),
    ("coco_panoptic_eomt_base_640_2x", "B", 640, "panoptic", "coco_panoptic"),
    ("coco_panoptic_eomt_large_640", "L", 640, "panoptic", "coco_panoptic"),
    ("coco_panoptic_eomt_giant_640", "g", 640, "panoptic", "coco_panoptic"),
    ("coco_panoptic_eomt_large_1280", "L", 1280, "panoptic", "coco_panoptic"),
    ("coco_panoptic_eomt_giant_1280", "g", 1280, "panoptic", "coco_panoptic"),
    ("ade20k_panoptic_eomt_large_640", "L", 640, "panoptic", "ade20k"),
    ("ade20k_panoptic_eomt_giant_640", "g", 640, "panoptic", "ade20k"),
    ("ade20k_panoptic_eomt_large_1280", "L", 1280, "panoptic", "ade20k"),
    ("ade20k_panoptic_eomt_giant_1280", "g", 1280, "panoptic", "ade20k"),
    ("coco_instance_eomt_large_640", "L", 640, "instance", "coco_instance"),
    ("coco_instance_eomt_large_1280", "L", 1280, "instance", "coco_instance"),
    ("ade20k_semantic_eomt_large_512", "L", 512, "semantic", "ade20k"),
    ("cityscapes_semantic_eomt_large_1024", "L", 1024, "semantic", "cityscapes"),
]

# The model trained by scripts/train_synthetic.py on connectors/synthetic.py scenes and shipped
# in models/weights/ (see its model card there).
SYNTHETIC_TINY = Preset(
    name="synthetic_eomt_tiny_256",
    config=EoMTConfig(
        img_size=256,
        patch_size=16,
        dim=160,
        depth=6,
        heads=4,
        num_queries=20,
        num_classes=8,
        num_query_blocks=3,
    ),
    task="panoptic",
    label_set="synthetic",
    weights="synthetic_eomt_tiny_256.safetensors",
)

# SeNaTra trained by scripts/train_senatra.py on the synthetic scenes and shipped in
# models/weights/ (see its model card there): small enough to train in 45 minutes on 2 CPU cores.
SYNTHETIC_SENATRA = Preset(
    name="synthetic_senatra_tiny_192",
    config=SeNaTraConfig(
        dims=(32, 64, 128, 256),
        depths=(1, 1, 2, 2),
        heads=(1, 2, 4, 8),
        mlp_ratio=2.0,
        kernel_size=5,
        num_classes=8,
        embed_dim=8,
        input_size=192,
    ),
    task="panoptic",
    label_set="synthetic",
    weights="synthetic_senatra_tiny_192.safetensors",
    family="senatra",
)

# The paper's sizes (NAT-T / NAT-B widths with grouping). No weights are published: run them with
# model.checkpoint set to weights of your own.
_SENATRA_PAPER = [
    Preset(f"{label_set}_senatra_{size}_{input_size}",
           senatra_size(size, num_classes=_LABELS[label_set], input_size=input_size), task, label_set, "", "senatra")
    for size in ("tiny", "base")
    for label_set, task, input_size in (("ade20k", "semantic", 512), ("coco_panoptic", "panoptic", 640))
]

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [_published(*row) for row in _PUBLISHED] + [SYNTHETIC_TINY, SYNTHETIC_SENATRA] + _SENATRA_PAPER
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; unknown names raise KeyError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}") from None
