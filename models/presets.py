"""Named models: the published EoMT ones (tue-mps model zoo) and the small ones segstream ships."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from segstream.models.eomt import EoMTConfig, config_for_size
from segstream.models.label_sets import LabelSet, available_label_sets
from segstream.models.senatra import SeNaTraConfig
from segstream.models.senatra import config_for_size as senatra_size


@dataclass(frozen=True, slots=True)
class Preset:
    """A named model: its family, architecture, task, label set and where its weights come from.

    ``family`` names the adapter that runs it (``eomt``, ``senatra``, or one registered with
    ``register_family``); ``config`` is that family's architecture, any object its builder reads.
    ``label_set`` is the name of a shipped label set or a ``LabelSet``. ``weights`` is a file name
    under ``models/weights/`` for shipped models, an ``hf://<repo>`` reference for published ones,
    or empty when none are published (EoMT and SeNaTra then need ``model.checkpoint``; a family
    of one's own reads it, and ``model.checkpoint``, as its builder likes).
    """

    name: str
    config: EoMTConfig | SeNaTraConfig | Any
    task: str
    label_set: str | LabelSet
    weights: str = ""
    family: str = "eomt"

    def __post_init__(self) -> None:
        for field_name in ("name", "family"):
            value = getattr(self, field_name)
            if not isinstance(value, str) or not value.strip():
                raise TypeError(f"Preset.{field_name} must be a non-empty string, got {value!r}")
        if self.task not in TASKS:
            raise ValueError(f"preset {self.name}: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if not isinstance(self.label_set, (str, LabelSet)):
            raise TypeError(f"preset {self.name}: label_set must be a shipped label set's name or a LabelSet, "
                            f"got {type(self.label_set).__name__}")
        if not isinstance(self.weights, str):
            raise TypeError(f"preset {self.name}: weights must be a string (empty for none), got "
                            f"{type(self.weights).__name__}")


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


def register_preset(preset: Preset) -> Preset:
    """Make ``preset`` known by its name (``model.preset`` in a config, ``build_segmenter``),
    beside the shipped ones; returns it. Its family need not be registered yet (it must be when
    the preset is used). Raises TypeError for what is not a ``Preset``, ValueError for a name
    already taken or a label set name that is not shipped."""
    if not isinstance(preset, Preset):
        raise TypeError(f"register_preset takes a segstream.Preset, got {type(preset).__name__}")
    if preset.name in PRESETS:
        raise ValueError(f"preset {preset.name!r} is already registered ({PRESETS[preset.name].family} family) — "
                         "give yours another name")
    if isinstance(preset.label_set, str) and preset.label_set not in available_label_sets():
        raise ValueError(f"preset {preset.name}: no shipped label set is called {preset.label_set!r} (shipped: "
                         f"{', '.join(available_label_sets())}) — pass a segstream.LabelSet of your classes")
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset:
    """The preset called ``name``; unknown names raise KeyError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}") from None
