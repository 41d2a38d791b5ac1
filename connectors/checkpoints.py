"""Reading EoMT checkpoints: local files in either published format, or hf:// references.

Nothing here unpickles arbitrary objects: safetensors files are read as tensors, and pickled
``.bin`` files go through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import pickle
import warnings
from importlib import resources
from pathlib import Path

import torch
from torch import Tensor

from segstream.connectors.errors import CheckpointError
from segstream.models.eomt import EoMT, convert_state_dict, state_dict_problems
from segstream.models.presets import Preset
from segstream.models.senatra import SeNaTra

HF_PREFIX = "hf://"
RANDOM = "random"  # model.checkpoint: the preset's architecture with seeded random weights (speed measurements)
# what a model folder holds (the hub's, and what transformers' save_pretrained writes), in order
CHECKPOINT_FILES = ("model.safetensors", "pytorch_model.bin")


def shipped_weights(filename: str) -> Path:
    """Path of a weights file shipped inside the package (models/weights/)."""
    return Path(str(resources.files("segstream.models") / "weights" / filename))


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a safetensors file, or of a pickled state dict loaded with weights_only; which
    one a file is, its first bytes say (a download may be saved under any name)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist — pass the path of a .safetensors or .bin file")
    try:
        with path.open("rb") as file:
            head = file.read(9)
    except OSError as error:
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({error.strerror}) — check its permissions") from None
    # safetensors: the header's length (8 bytes, little-endian), then the JSON header itself
    safetensors = len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size
    if not safetensors and not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip, or a bare pickle
        raise CheckpointError(
            f"checkpoint '{path}' is not a checkpoint: neither a safetensors file nor one PyTorch saved "
            "— pass the model's .safetensors or .bin/.pt file"
        )
    try:
        if safetensors:
            from safetensors.torch import load_file

            return load_file(str(path))
        with warnings.catch_warnings():
            # torch's note about pickle protocols is noise to someone loading weights
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message advises weights_only=False, i.e. running the file's code: never.
        raise CheckpointError(
            f"checkpoint '{path}' holds Python objects besides tensors, which segstream refuses to "
            "unpickle — save a plain state dict of tensors (or a .safetensors file) and load that"
        ) from None
    except Exception as exc:  # any decoding failure is the file's fault, not ours
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read ({reason}) — it must be a safetensors file or a "
            "PyTorch state dict of tensors"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint '{path}' is not a state dict of tensors")
    return state


def resolve_hf(reference: str) -> Path:
    """Download ``hf://owner/name[/file]`` with huggingface_hub and return the local file."""
    repo = reference[len(HF_PREFIX) :].strip("/")
    parts = repo.split("/")
    if len(parts) < 2:
        raise CheckpointError(f"'{reference}' is not a hub reference — use hf://<owner>/<name>, e.g. hf://tue-mps/coco_panoptic_eomt_large_640")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:]) or None
    local_hint = (
        f"download the weights of {repo_id} on a machine with access and set model.checkpoint to the local "
        "file (pytorch_model.bin or model.safetensors)"
    )
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise CheckpointError(
            f"'{reference}' needs huggingface_hub (pip install 'segstream[hub]'), or {local_hint}"
        ) from None
    errors = []
    for name in [filename] if filename else CHECKPOINT_FILES:
        try:
            return Path(hf_hub_download(repo_id, name))
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}")
    raise CheckpointError(f"cannot fetch {repo_id} from the model hub ({'; '.join(errors)}) — offline? {local_hint}")


def checkpoint_path(reference: str) -> Path:
    """A local path for a checkpoint reference: hf://..., a shipped file name, or a path."""
    if reference.startswith(HF_PREFIX):
        return resolve_hf(reference)
    path = Path(reference).expanduser()
    if path.is_dir():
        return checkpoint_in_folder(path)
    if not path.exists() and not path.is_absolute() and len(path.parts) == 1:
        shipped = shipped_weights(reference)
        if shipped.exists():
            return shipped
    return path


def checkpoint_in_folder(folder: Path) -> Path:
    """The weights file of a model folder (transformers' ``save_pretrained`` writes one)."""
    for name in CHECKPOINT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"checkpoint '{folder}' is a folder without {' or '.join(CHECKPOINT_FILES)} — "
                          "pass the weights file itself")


def random_eomt(config, seed: int = 0) -> EoMT:
    """An EoMT of ``config`` with seeded random weights whose outputs look like a trained model's
    to the pipeline: class scores clear the 0.8 threshold and masks are separate, so
    post-processing, tracking and publishing do the work they would do (a plain random init
    gives no confident query, and a pipeline with nothing to post-process measures too fast).
    Speed does not depend on the values of the weights; segments mean nothing."""
    generator = torch.random.fork_rng()
    with generator:
        torch.manual_seed(seed)
        model = EoMT(config).eval()
        with torch.no_grad():
            model.class_head.weight.normal_(0, 12.0 / config.dim**0.5)
            model.class_head.bias.normal_(0, 2.0)
            model.upscale[-1].norm.bias.fill_(1.0)
            model.mask_head[-1].bias.fill_(-1.2 / config.dim)
    return model


def load_eomt(preset: Preset, checkpoint: str | None = None) -> EoMT:
    """The preset's EoMT with weights from ``checkpoint`` (or the preset's own weights; ``random``:
    ``random_eomt``)."""
    if checkpoint == RANDOM:
        return random_eomt(preset.config)
    path = checkpoint_path(checkpoint or preset.weights)
    state = convert_state_dict(read_state_dict(path))
    model = EoMT(preset.config)
    problems = state_dict_problems(model, state)
    if problems:
        raise CheckpointError(
            f"checkpoint '{path}' does not fit preset {preset.name} "
            f"(dim {preset.config.dim}, {preset.config.depth} blocks, {preset.config.num_query_blocks} query blocks, "
            f"{preset.config.num_classes} classes, "
            f"{preset.config.num_queries} queries, input {preset.config.img_size}): " + "; ".join(problems)
        )
    model.load_state_dict(state, strict=False)
    return model


def no_weights(preset: Preset) -> str:
    """What to say of a preset without published weights and no checkpoint given."""
    return (f"preset {preset.name} has no published weights — set model.checkpoint to a .safetensors file of "
            "your own training (or random, for speed measurements)")


def load_senatra(preset: Preset, checkpoint: str | None = None) -> SeNaTra:
    """The preset's SeNaTra with weights from ``checkpoint`` (or the preset's own weights;
    ``random``: seeded random weights, for speed measurements)."""
    if checkpoint == RANDOM:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return SeNaTra(preset.config).eval()
    reference = checkpoint or preset.weights
    if not reference:
        raise CheckpointError(no_weights(preset))
    path = checkpoint_path(reference)
    state = read_state_dict(path)
    model = SeNaTra(preset.config)
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state][:3]
    problems += [f"unexpected {k}" for k in state if k not in expected][:3]
    problems += [
        f"{k} is {tuple(state[k].shape)}, the preset needs {tuple(v.shape)}"
        for k, v in expected.items() if k in state and state[k].shape != v.shape
    ][:3]
    if problems:
        cfg = preset.config
        raise CheckpointError(
            f"checkpoint '{path}' does not fit preset {preset.name} (dims {list(cfg.dims)}, depths "
            f"{list(cfg.depths)}, {cfg.downsampling} downsampling, {cfg.num_classes} classes, embedding "
            f"{cfg.embed_dim}): " + "; ".join(problems)
        )
    model.load_state_dict(state)
    return model
