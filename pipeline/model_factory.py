"""From the ``model:`` section of a pipeline config to a ready model-family adapter.

The preset's ``family`` picks the builder (a registry keyed by family name); each builder loads
the weights and wraps the network in that family's adapter (``segstream.models.segmenter``).
Families and presets of one's own join with ``register_family`` and ``register_preset``, from
a program or from a plugin (``segstream.pipeline.plugins``), loaded before the first lookup.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from segstream.connectors.checkpoints import RANDOM, load_eomt, load_senatra, local_weights, no_weights
from segstream.connectors.errors import AdapterError, ConfigError, SegstreamError
from segstream.models.label_sets import LabelSet, load_label_set, read_label_set_file
from segstream.models.presets import PRESETS, SYNTHETIC_SENATRA, SYNTHETIC_TINY, Preset, get_preset
from segstream.models.processing import Thresholds
from segstream.models.segmenter import (
    PRECISIONS,
    EoMTSegmenter,
    FamilyAdapter,
    cpu_computes_bf16,
    default_precision,
    store_autocast_weights,
)
from segstream.models.senatra_adapter import SeNaTraSegmenter
from segstream.pipeline.plugins import load_plugins

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``auto`` is the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device: '{device}' asked for, but no CUDA GPU is visible — use 'cpu' or 'auto'")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return default_precision(device)
    if device.type == "cpu" and precision == "fp16":
        raise ConfigError("model.precision: fp16 needs a GPU — use fp32, bf16 or auto on the CPU")
    if device.type == "cpu" and precision == "bf16" and not cpu_computes_bf16():
        logger.warning("model.precision: bf16 on a CPU that does not compute it (x86: no AVX-512 BF16 or AMX) is "
                       "emulated, several times slower than fp32 — set model.precision to auto or fp32")
    return precision


def labels_of(preset: Preset, model_cfg) -> LabelSet:
    """The classes the model names: ``model.labels``' file, else the preset's label set."""
    if getattr(model_cfg, "labels", None):
        return read_label_set_file(model_cfg.labels)
    if isinstance(preset.label_set, LabelSet):
        return preset.label_set
    return load_label_set(preset.label_set)


def with_own_labels(preset: Preset, model_cfg) -> Preset:
    """The preset, for a model of one's own classes (``model.labels``): its architecture with as
    many classes as the file names, named after both."""
    if not getattr(model_cfg, "labels", None):
        return preset
    labels = read_label_set_file(model_cfg.labels)
    return dataclasses.replace(
        preset, name=f"{preset.name}:{labels.name}", weights="", label_set=labels,
        config=dataclasses.replace(preset.config, num_classes=labels.num_classes),
    )


def _build_eomt(preset: Preset, model_cfg, device: torch.device, precision: str, max_batch: int) -> EoMTSegmenter:
    model = load_eomt(preset, model_cfg.checkpoint, device)
    # The model is this adapter's alone: its autocast layers can keep their weights cast.
    store_autocast_weights(model, PRECISIONS[precision])
    thresholds = Thresholds(
        score=model_cfg.score_threshold, mask=model_cfg.mask_threshold, overlap=model_cfg.overlap_threshold
    )
    return EoMTSegmenter(
        model,
        task=preset.task,
        labels=labels_of(preset, model_cfg),
        name=preset.name,
        device=device,
        precision=precision,
        thresholds=thresholds,
        postprocess=model_cfg.postprocess,
        compile=model_cfg.compile,
        max_batch=max_batch,
    )


def _build_senatra(preset: Preset, model_cfg, device: torch.device, precision: str, max_batch: int) -> SeNaTraSegmenter:
    return SeNaTraSegmenter(
        load_senatra(preset, model_cfg.checkpoint),
        task=model_cfg.task or preset.task,
        labels=labels_of(preset, model_cfg),
        name=preset.name,
        device=device,
        precision=precision,
    )


# builder(preset, model_cfg, device, precision, max_batch) -> the family's adapter. model_cfg is Any,
# not object: a builder takes its own family's config class, and Callable's parameters are
# contravariant, so with object a builder typed with that class would not type-check as one.
FamilyBuilder = Callable[[Preset, Any, torch.device, str, int], FamilyAdapter]
FAMILY_BUILDERS: dict[str, FamilyBuilder] = {"eomt": _build_eomt, "senatra": _build_senatra}
# The families whose weights segstream loads itself (connectors/checkpoints.py): it checks them too.
BUILTIN_FAMILIES = frozenset(FAMILY_BUILDERS)
# The model a config naming only ``model.family`` gets: the family's shipped model.
DEFAULT_PRESETS = {"eomt": SYNTHETIC_TINY.name, "senatra": SYNTHETIC_SENATRA.name}
# What the engine and ``segment`` use of an adapter (the ``FamilyAdapter`` protocol).
ADAPTER_MEMBERS = ("name", "family", "labels", "device", "batch_buckets", "geometry", "prepare", "forward", "decide",
                   "embeddings", "segment")


# The model: section's keys that only some families read (the others: preset, family, checkpoint,
# task, precision, device, options); for a family registered with ``settings``, those it reads.
FAMILY_KEYS = ("compile", "postprocess", "score_threshold", "mask_threshold", "overlap_threshold", "labels")
FAMILY_SETTINGS: dict[str, frozenset[str]] = {}


def register_family(name: str, builder: FamilyBuilder, default_preset: str | None = None,
                    settings: Iterable[str] | None = None) -> None:
    """Make a model family of one's own runnable: presets whose ``family`` is ``name`` are built by
    ``builder(preset, model_cfg, device, precision, max_batch)``, which returns the family's
    adapter (a ``FamilyAdapter``). ``model_cfg`` is the config's ``model:`` section, ``device``
    the resolved ``torch.device``, ``precision`` fp32, bf16 or fp16, ``max_batch`` the engine's
    batch size; the builder loads the weights (``preset.weights``, ``model_cfg.checkpoint``) as
    it likes; its own settings are in ``model_cfg.options`` (a dict). ``default_preset``: the preset
    a config naming only ``model.family`` gets. ``settings``: which of ``FAMILY_KEYS`` (EoMT's
    thresholds, ``postprocess``, ``compile``, ``labels``) the builder reads; a config setting
    another is refused (None: the builder reads what it likes). Raises TypeError for arguments
    of the wrong kind, ValueError for a name already taken or a setting segstream has not."""
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"register_family: the family's name must be a non-empty string, got {name!r}")
    if name in FAMILY_BUILDERS:
        raise ValueError(f"register_family: family {name!r} is already registered — give yours another name")
    if not callable(builder):
        raise TypeError(f"register_family({name!r}): builder must be callable, got {type(builder).__name__}")
    try:
        inspect.signature(builder).bind(None, None, None, None, None)
    except TypeError:
        raise TypeError(f"register_family({name!r}): builder must take (preset, model_cfg, device, precision, "
                        f"max_batch), its signature is {inspect.signature(builder)}") from None
    except ValueError:  # no signature to read (a builtin): it is called as documented
        pass
    if default_preset is not None and (not isinstance(default_preset, str) or not default_preset):
        raise TypeError(f"register_family({name!r}): default_preset must be a preset's name, got {default_preset!r}")
    if settings is not None:
        if isinstance(settings, str) or not all(isinstance(key, str) for key in settings):
            raise TypeError(f"register_family({name!r}): settings must be a list of model: keys, got {settings!r}")
        settings = frozenset(settings)
        unknown = sorted(settings - set(FAMILY_KEYS))
        if unknown:
            raise ValueError(f"register_family({name!r}): settings names {', '.join(unknown)}, not among the "
                             f"model: keys a family may read ({', '.join(FAMILY_KEYS)}) — put your own in "
                             "model.options")
        FAMILY_SETTINGS[name] = settings
    FAMILY_BUILDERS[name] = builder
    if default_preset is not None:
        DEFAULT_PRESETS[name] = default_preset


# Settings of EoMT's query decision that SeNaTra has no use for.
_QUERY_SETTINGS = {"score_threshold", "mask_threshold", "overlap_threshold", "postprocess"}


def how_it_ran(precision: str | None, postprocess: str | None) -> str:
    """`` (bf16, fast post-processing)`` for a header line, naming only what a model has (a family
    of one's own may have neither precision nor post-processing mode: then "")."""
    parts = [*([precision] if precision else []), *([f"{postprocess} post-processing"] if postprocess else [])]
    return f" ({', '.join(parts)})" if parts else ""


def check_preset(model_cfg) -> Preset:
    """The configured preset; ``model.family`` alone (no preset written) picks the family's default.
    Plugins are loaded (once) when the config names a family or preset segstream does not ship:
    a config of shipped models neither waits for plugins' imports nor fails with a broken one."""
    family = model_cfg.family
    name = model_cfg.preset
    named = name if family is None or "preset" in model_cfg.model_fields_set else None  # else the family's default
    if (family is not None and family not in BUILTIN_FAMILIES) or (
            named is not None and (named not in PRESETS or PRESETS[named].family not in BUILTIN_FAMILIES)):
        load_plugins()
    if family is not None:
        if family not in FAMILY_BUILDERS:
            raise ConfigError(f"model.family: unknown family '{family}' — known families: {', '.join(FAMILY_BUILDERS)}")
        if "preset" not in model_cfg.model_fields_set:
            if family not in DEFAULT_PRESETS:
                raise ConfigError(f"model.family: family {family} has no default preset — set model.preset")
            name = DEFAULT_PRESETS[family]
    if name not in PRESETS:
        close = difflib.get_close_matches(str(name), list(PRESETS), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"model.preset: unknown preset '{name}' — {hint}known presets: {', '.join(PRESETS)}")
    preset = get_preset(name)
    if family is not None and preset.family != family:
        choices = ", ".join(p.name for p in PRESETS.values() if p.family == family)
        raise ConfigError(
            f"model.family: preset {preset.name} is {_a(preset.family)} model, the config asks for {family} — "
            f"drop model.family or choose {_a(family)} preset ({choices})"
        )
    return preset


def weights_read(model_cfg) -> Path | None:
    """The local weights file the ``model:`` section reads: its checkpoint (a model folder's own)
    or the preset's shipped file; None for a hub reference or random weights."""
    return local_weights(model_cfg.checkpoint, check_preset(model_cfg).weights)


def check_model_config(model_cfg) -> Preset:
    """The preset the ``model:`` section resolves to, after the checks that need no weights and no
    device (preset, family, task); ``segstream validate`` runs them too."""
    preset = check_preset(model_cfg)
    if getattr(model_cfg, "device", None) == "cpu" and getattr(model_cfg, "precision", None) == "fp16":
        resolve_precision("fp16", torch.device("cpu"))  # a device written in the config: said now, not by the run
    # SeNaTra's native semantic output exists whatever the preset's task: its carried class logits.
    native_semantic = preset.family == "senatra" and model_cfg.task == "semantic"
    if model_cfg.task not in (None, preset.task) and not native_semantic:  # None: the preset's
        task = model_cfg.task
        ours = [p.name for p in PRESETS.values() if p.family == preset.family and p.task == task][:3]
        others = [p.name for p in PRESETS.values() if p.task == task][:3]
        which = (f"{_a(task)} preset ({', '.join(ours)})" if ours else
                 f"{_a(task)} preset of another family ({', '.join(others)}: no {preset.family} preset is one)"
                 if others else f"a model of your own ({task}: no preset is one)")
        raise ConfigError(
            f"model.task: preset {preset.name} is {_a(preset.task)} model, the config asks for {task} — "
            f"remove model.task (or set it to {preset.task}), or choose {which}"
        )
    if preset.family not in FAMILY_BUILDERS:
        raise ConfigError(f"model.preset: {preset.name} is of family {preset.family!r}, which this segstream cannot run "
                          f"(known families: {', '.join(FAMILY_BUILDERS)}) — install or register that family")
    _check_family_keys(model_cfg, preset)
    if preset.family not in BUILTIN_FAMILIES:
        return preset  # a family of one's own: its builder reads labels and weights as it likes
    if preset.family == "senatra":
        # by value, not by "set": evaluate and Ray's actors pass every field, at its default
        from segstream.pipeline.config import ModelConfig

        ignored = sorted(k for k in _QUERY_SETTINGS if getattr(model_cfg, k, None) not in
                         (None, ModelConfig.model_fields[k].default))
        if ignored:
            raise ConfigError(f"model.{ignored[0]}: {preset.name} is a SeNaTra model, whose segments come from its "
                              "grouping layers, not from scored queries and masks — remove "
                              + ", ".join(f"model.{name}" for name in ignored))
        if getattr(model_cfg, "compile", False):  # (found probing: said by run only, validate passed it)
            raise ConfigError(f"model.compile: {preset.name} (SeNaTra) runs eagerly; compiling it is not supported "
                              "yet — set model.compile to false")
    if getattr(model_cfg, "labels", None) and not model_cfg.checkpoint:
        raise ConfigError("model.labels: a model of your own classes needs its weights — set model.checkpoint to "
                          "its file (the preset's own weights have the preset's classes)")
    preset = with_own_labels(preset, model_cfg)
    if not model_cfg.checkpoint and not preset.weights:
        raise ConfigError(f"model.checkpoint: {no_weights(preset)}")
    return preset


def hierarchy_depth(preset: Preset) -> int | None:
    """How many levels of segment hierarchy (``FrameResult.levels``) the preset's model gives each
    frame: SeNaTra one per grouping step, EoMT none; None for a family of one's own (unknown
    before it runs)."""
    if preset.family == "senatra":
        return len(preset.config.dims) - 1
    return 0 if preset.family == "eomt" else None


def check_model_section(cfg, batch: bool = False) -> Preset:
    """The preset a config's ``model:`` section resolves to, after every check that needs no
    weights (``check_model_config``), and the levels of the model's hierarchy the config draws
    (``sinks.preview.level`` with the preview on; for a batch, ``batch.overlay_level`` with the
    overlay on) checked against it: what cannot run is said before anything starts."""
    preset = check_model_config(cfg.model)
    if cfg.sinks.preview.enabled:
        _check_drawn_level(cfg.sinks.preview.level, preset, "sinks.preview.level")
    if batch and cfg.batch.overlay:
        _check_drawn_level(cfg.batch.overlay_level, preset, "batch.overlay_level")
    return preset


def _check_drawn_level(level: int | None, preset: Preset, key: str) -> None:
    """Refuse a level to draw (config key ``key``) the preset's model does not make."""
    depth = hierarchy_depth(preset)
    if level is None or depth is None or level < depth:
        return
    if depth == 0:
        raise ConfigError(f"{key}: {preset.name} is {_a(preset.family)} model, which makes no segment "
                          f"hierarchy to draw — set {key} to null (the frame's segments), or run a "
                          "SeNaTra model")
    raise ConfigError(f"{key}: {preset.name} makes {depth} hierarchy levels, 0 (the finest) to "
                      f"{depth - 1}, not level {level} — set {key} to one of those, or to null")


def _check_family_keys(model_cfg, preset: Preset) -> None:
    """Refuse settings the preset's family does not read (they would be ignored): options for a
    shipped family, and keys outside what a family registered with ``settings`` reads."""
    options = getattr(model_cfg, "options", None)
    if options and preset.family in BUILTIN_FAMILIES:
        raise ConfigError(f"model.options: {preset.name} is {_a(preset.family)} model, which takes no options "
                          "(they are a plugin family's own settings) — remove model.options")
    reads = FAMILY_SETTINGS.get(preset.family)
    if reads is None:
        return
    from segstream.pipeline.config import ModelConfig

    # by value, not by "set": evaluate and Ray's actors pass every field, at its default
    ignored = [k for k in FAMILY_KEYS if k not in reads and getattr(model_cfg, k, None) not in
               (None, ModelConfig.model_fields[k].default)]
    if ignored:
        raise ConfigError(f"model.{ignored[0]}: {preset.name} is a {preset.family} model, which does not read it — "
                          f"remove {', '.join(f'model.{k}' for k in ignored)}"
                          + (f" (it reads {', '.join(f'model.{k}' for k in sorted(reads))})" if reads else ""))


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def build_segmenter(model_cfg, batch_size: int = 8) -> FamilyAdapter:
    """The configured model on its device, weights loaded, behind its family's adapter
    (``model_cfg``: a ``ModelConfig``, a dict of the ``model:`` section's keys, or a preset's
    name, which runs at that preset's task with the section's other defaults)."""
    from segstream.pipeline.logs import adopt_library_logs

    adopt_library_logs("torch")  # imported by now: its own log lines as JSON too, where the logs are
    if isinstance(model_cfg, str):
        if model_cfg not in PRESETS:  # a plugin's, maybe
            load_plugins()
        model_cfg = {"preset": model_cfg}  # at the preset's own task
    if isinstance(model_cfg, dict):
        from pydantic import ValidationError

        from segstream.pipeline.config import ModelConfig

        try:
            model_cfg = ModelConfig.model_validate(model_cfg)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise ConfigError(f"model.{where}: {first['msg']}") from None
    if not hasattr(model_cfg, "preset"):
        raise TypeError(f"build_segmenter takes a preset's name, a ModelConfig or a dict of the model: section, "
                        f"got {type(model_cfg).__name__}")
    preset = check_model_config(model_cfg)
    builder = FAMILY_BUILDERS[preset.family]
    device = resolve_device(model_cfg.device)
    if model_cfg.checkpoint == RANDOM:
        logger.warning("model.checkpoint: random — %s runs with random weights; its segments mean nothing "
                       "(for speed measurements)", preset.name)
    precision = resolve_precision(model_cfg.precision, device)
    if preset.family in BUILTIN_FAMILIES:
        return builder(preset, model_cfg, device, precision, batch_size)
    try:
        adapter = builder(preset, model_cfg, device, precision, batch_size)
    except SegstreamError:
        raise  # already said for the user (a CheckpointError of the family's own loading)
    except Exception as error:  # a family of one's own: one line naming it; its traceback for its author
        logger.debug("the %s family's builder raised", preset.family, exc_info=True)
        raise AdapterError(f"model family {preset.family!r} could not build {preset.name}: "
                           f"{type(error).__name__}: {error}") from None
    missing = [member for member in ADAPTER_MEMBERS if not hasattr(adapter, member)]
    if missing:  # say so now, not from the middle of a run
        raise AdapterError(f"the {preset.family} family's builder returned a {type(adapter).__name__}, which lacks "
                           f"{', '.join(missing)} of the FamilyAdapter protocol")
    return adapter
