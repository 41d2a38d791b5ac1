"""Reading EoMT checkpoints: local files in either published format, or hf:// references.

Nothing here unpickles arbitrary objects: safetensors files are read as tensors, and pickled
``.bin`` files go through ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import pickle
import re
import warnings
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from segstream.connectors.errors import CheckpointError
from segstream.connectors.redis_wire import parse_json
from segstream.connectors.urls import hub_reference_problem
from segstream.models.eomt import EoMT, convert_state_dict, state_dict_problems
from segstream.models.label_sets import LabelSet
from segstream.models.presets import Preset
from segstream.models.senatra import SeNaTra

HF_PREFIX = "hf://"
RANDOM = "random"  # model.checkpoint: the preset's architecture with seeded random weights (speed measurements)
# what a model folder holds (the hub's, and what transformers' save_pretrained writes), in order
CHECKPOINT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def shipped_weights(filename: str) -> Path:
    """Path of a weights file shipped inside the package (models/weights/)."""
    return Path(str(resources.files("segstream.models") / "weights" / filename))


def read_state_dict(path: Path, shapes_only: bool = False) -> dict[str, Tensor]:
    """Tensors of a safetensors file, or of a pickled state dict loaded with weights_only; which
    one a file is, its first bytes say (a download may be saved under any name). With
    ``shapes_only``, tensors on the meta device: names and shapes, the weights left on disk. Keys
    as the network has them: without what DataParallel or torch.compile put before them."""
    state = _read_state_dict(path, shapes_only)
    _refuse_nonfinite(path, state)
    # saved from DataParallel/DistributedDataParallel ("module."), from torch.compile's wrapper
    # ("_orig_mod."), or both; a compiled submodule has "._orig_mod." inside its keys
    while state and (wrapper := next((p for p in _KEY_WRAPPERS if all(k.startswith(p) for k in state)), None)):
        state = {k[len(wrapper):]: v for k, v in state.items()}
    return {k.replace("._orig_mod.", "."): v for k, v in state.items()}


def _read_state_dict(path: Path, shapes_only: bool) -> dict[str, Tensor]:
    if path.name.endswith(".index.json") and path.is_file():
        return _sharded(path, shapes_only)
    if not path.is_file():
        what = ("is a folder" if path.is_dir() else "is no regular file (a pipe or a device)" if path.exists()
                else "does not exist")  # found probing: a FIFO and /dev/zero "did not exist"
        raise CheckpointError(f"checkpoint '{path}' {what} — pass the path of a .safetensors or .bin file")
    try:
        with path.open("rb") as file:
            head = file.read(9)
    except OSError as error:
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({error.strerror}) — check its permissions") from None
    # safetensors: the header's length (8 bytes, little-endian), then the JSON header itself
    safetensors = len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") <= _MAX_SAFETENSORS_HEADER
    if safetensors:
        _refuse_truncated_safetensors(path, int.from_bytes(head[:8], "little"))
    if not head:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes) — download or copy it again")
    if not safetensors and not head.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip, or a bare pickle
        raise CheckpointError(
            f"checkpoint '{path}' is not a checkpoint: neither a safetensors file nor one PyTorch saved "
            "— pass the model's .safetensors or .bin/.pt file"
        )
    try:
        if safetensors and shapes_only:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as opened:
                return {k: torch.empty(opened.get_slice(k).get_shape(), device="meta") for k in opened.keys()}
        if safetensors:
            from safetensors.torch import load_file

            return load_file(str(path))
        with warnings.catch_warnings():
            # torch's note about pickle protocols is noise to someone loading weights
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            # mapped, not read, for shapes (torch.save's zip format; an old bare pickle is read)
            # torch.load reads a path ending in .safetensors as safetensors whatever it holds: such a
            # path goes as an open file (which torch cannot map)
            mapped = shapes_only and head.startswith(b"PK\x03\x04") and not path.name.endswith(".safetensors")
            if mapped:
                state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            else:
                with path.open("rb") as file:
                    state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message advises weights_only=False, i.e. running the file's code: never.
        raise CheckpointError(
            f"checkpoint '{path}' holds Python objects besides tensors, which segstream refuses to "
            "unpickle — save a plain state dict of tensors (or a .safetensors file) and load that"
        ) from None
    except Exception as exc:  # any decoding failure is the file's fault, not ours
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "central directory" in reason or "zip archive" in reason:
            # torch.save's zip without its end (miniz says so in five sentences): cut short in a copy
            raise CheckpointError(f"checkpoint '{path}' is truncated: PyTorch's zip archive lacks its end "
                                  f"({path.stat().st_size} bytes) — copy or download it again") from None
        reason = reason.split(". ")[0]  # a reader's first sentence: the line stays one line
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read ({reason}) — it must be a safetensors file or a "
            "PyTorch state dict of tensors"
        ) from None
    for wrapper in _WRAPPERS:  # a training script's checkpoint: the weights under one key, beside others
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict) and state[wrapper] and all(
            isinstance(v, Tensor) for v in state[wrapper].values()
        ):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        held = ", ".join(f"{k!r}" for k in list(state)[:8]) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint '{path}' is not a state dict of tensors (it holds {held}) — save "
                              "model.state_dict() itself, or put it under 'state_dict'")
    return state


def _refuse_truncated_safetensors(path: Path, header_length: int) -> None:
    """A file that begins as safetensors but is shorter than its header says (a download or copy
    cut short): said as such, with the two sizes."""
    size = path.stat().st_size
    if 8 + header_length > size:
        raise CheckpointError(f"checkpoint '{path}' is truncated: its safetensors header alone is {header_length} "
                              f"bytes, the file has {size} — download or copy it again")
    try:
        with path.open("rb") as file:
            file.seek(8)
            header = parse_json(file.read(header_length))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        return  # a header that does not parse: the reader says what is wrong
    if 8 + header_length + end > size:
        raise CheckpointError(f"checkpoint '{path}' is truncated: its header says {8 + header_length + end} bytes, "
                              f"the file has {size} — download or copy it again")


_MAX_SAFETENSORS_HEADER = 100_000_000  # the most the safetensors reader takes


def _refuse_nonfinite(path: Path, state: object) -> None:
    """Refuse weights holding NaN or infinity (a training run that diverged): a model of them
    finds no segment in any frame, and says nothing. Tensors left on disk (meta) are not looked at."""
    if not isinstance(state, dict):
        return
    bad = [k for k, v in state.items() if isinstance(v, Tensor) and v.is_floating_point() and not v.is_meta
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(nonfinite_line(path, bad, len(state)))


def nonfinite_line(path: Path, names: list[str], total: int) -> str:
    return (f"checkpoint '{path}' holds NaN or infinite weights in {len(names)} of its {total} tensors (e.g. "
            f"{names[0]}) — it is broken (a training run that diverged?): train it again, with a lower --lr")


def nonfinite_tensors(path: Path) -> tuple[list[str], int]:
    """The names of the floating tensors of a checkpoint that hold NaN or infinity, and how many
    tensors it has: a safetensors file (or a sharded one's shards) read a tensor at a time, any
    other read whole (``segstream validate``: the weights are not kept)."""
    if path.name.endswith(".index.json"):
        bad, total = [], 0
        for shard in sorted(set(parse_json(path.read_text(encoding="utf-8"))["weight_map"].values())):
            names, count = nonfinite_tensors(path.parent / shard)
            bad, total = bad + names, total + count
        return bad, total
    with path.open("rb") as file:
        head = file.read(9)
    if head[8:] != b"{":
        state = _read_state_dict(path, shapes_only=False)
        return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())], len(state)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as opened:
        names = list(opened.keys())
        return [k for k in names if (t := opened.get_tensor(k)).is_floating_point()
                and not bool(torch.isfinite(t).all())], len(names)


# Keys under which training scripts keep the weights (Lightning, most loops, EMA copies last).
_WRAPPERS = ("state_dict", "model_state_dict", "model", "network", "module", "ema")
_KEY_WRAPPERS = ("module.", "_orig_mod.")  # what wrapped networks put before every key


def _sharded(index: Path, shapes_only: bool = False) -> dict[str, Tensor]:
    """The tensors of a sharded checkpoint: ``save_pretrained``'s ``*.index.json`` names the
    shard of each weight; every shard is read as one file is."""
    try:
        weight_map = parse_json(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"'{index}' is not a sharded checkpoint's index ({error}) — pass the weights "
                              "file itself") from None
    missing = [shard for shard in shards if not (index.parent / shard).is_file()]
    if missing:  # (each was said as a file that "does not exist", to be passed as a .safetensors file)
        raise CheckpointError(f"sharded checkpoint '{index.parent}' lacks {len(missing)} of the {len(shards)} shards "
                              f"its index names ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}) — "
                              "copy all its shards")
    state: dict[str, Tensor] = {}
    for shard in shards:
        state.update(read_state_dict(index.parent / shard, shapes_only))
    return state


def _hub_target(reference: str) -> tuple[str, list[str], str]:
    """``hf://owner/name[/file]``'s repository, the files to look for in it, and what to do
    without the hub; ``CheckpointError`` when the reference is malformed or huggingface_hub is
    missing."""
    parts = reference[len(HF_PREFIX) :].strip("/").split("/")
    if problem := hub_reference_problem(reference):
        raise CheckpointError(f"'{reference}' {problem} — e.g. hf://tue-mps/coco_panoptic_eomt_large_640")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:]) or None
    local_hint = (
        f"download the weights of {repo_id} on a machine with access and set model.checkpoint to the local "
        "file (pytorch_model.bin or model.safetensors)"
    )
    try:
        importlib.import_module("huggingface_hub")
    except ImportError:
        raise CheckpointError(
            f"'{reference}' needs huggingface_hub, which is not installed here (pip install huggingface_hub: segstream's "
            f"hub extra), or {local_hint}"
        ) from None
    return repo_id, [filename] if filename else list(CHECKPOINT_FILES), local_hint


def resolve_hf(reference: str) -> Path:
    """Download ``hf://owner/name[/file]`` with huggingface_hub and return the local file."""
    repo_id, names, local_hint = _hub_target(reference)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    for name in names:  # downloaded before: no network needed
        with contextlib.suppress(LocalEntryNotFoundError):
            return Path(hf_hub_download(repo_id, name, local_files_only=True))
    host = _unreachable_hub()
    if host is not None:  # huggingface_hub would retry each file for most of a minute, logging each try
        raise CheckpointError(f"cannot fetch {repo_id}: the model hub's host {host} is not known here (no network "
                              f"or no DNS) — {local_hint}")
    errors = []
    for name in names:
        try:
            return Path(hf_hub_download(repo_id, name))
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}")
    raise CheckpointError(f"cannot fetch {repo_id} from the model hub ({'; '.join(errors)}) — offline? {local_hint}")


def hub_file_found(reference: str, timeout_s: float = 5.0) -> tuple[Path | None, str]:
    """Where ``resolve_hf`` would take ``hf://owner/name[/file]`` from, found without downloading
    it: the file in the local Hugging Face cache, else (None) the hub's answer to a metadata
    request; and that, said (``segstream validate --connect``). Raises ``CheckpointError``
    saying why the run could not fetch it."""
    repo_id, names, local_hint = _hub_target(reference)
    from huggingface_hub import get_hf_file_metadata, hf_hub_url, try_to_load_from_cache

    for name in names:
        cached = try_to_load_from_cache(repo_id, name)
        if isinstance(cached, str):
            return Path(cached), f"in the local Hugging Face cache ({cached})"
    host = _unreachable_hub()
    if host is not None:
        raise CheckpointError(f"{repo_id} is not in the local Hugging Face cache, and the model hub's host {host} is "
                              f"not known here (no network or no DNS) — {local_hint}")
    errors = []
    for name in names:
        try:
            found = get_hf_file_metadata(hf_hub_url(repo_id, name), timeout=timeout_s)
        except Exception as exc:  # not found, gated, refused, timed out: each the run would meet
            errors.append(f"{name}: {type(exc).__name__}")
            continue
        size = f", {found.size / 2**20:.0f} MiB" if found.size else ""
        return None, f"on the model hub ({repo_id}/{name}{size}), downloaded when the run starts"
    raise CheckpointError(f"the model hub does not give {repo_id} ({'; '.join(errors)}) — check the name and your "
                          f"access (HF_TOKEN for a gated model), or {local_hint}")


def _unreachable_hub() -> str | None:
    """The hub's host name when it does not resolve (or huggingface_hub is told to stay offline)."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    host = urlsplit(constants.ENDPOINT).hostname or constants.ENDPOINT
    if constants.HF_HUB_OFFLINE:
        return f"{host} (HF_HUB_OFFLINE is set)"
    from urllib.request import getproxies

    if getproxies().get("https"):  # the proxy resolves it, not this machine
        return None
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return host
    return None


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


def local_weights(checkpoint: str | None, preset_weights: str | None) -> Path | None:
    """The local weights file a run reads: ``model.checkpoint``'s (a model folder's own), or the
    preset's shipped file; None for a hub reference, ``random``, or a file that is not there."""
    reference = checkpoint or preset_weights
    if not reference or reference == RANDOM or reference.startswith(HF_PREFIX):
        return None
    path = checkpoint_path(reference)
    return path if path.is_file() else None


# (path, inode, size, mtime, ctime) -> SHA-256: runs one after another hash once; a file written
# again has another ctime, whatever time it was given back (cp -p, rsync -a)
_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read in 1 MiB pieces (a published checkpoint is a GB or more); for a
    sharded checkpoint's index, of the index and every shard it names (retrained in place, the
    shards change, not the index). Kept for the process while a file is not written again."""
    if path.name.endswith(".index.json"):
        shards = sorted(set(parse_json(path.read_text(encoding="utf-8")).get("weight_map", {}).values()))
        parts = [path, *(path.parent / shard for shard in shards)]
        return hashlib.sha256("".join(_one_file_sha256(part) for part in parts).encode()).hexdigest()
    return _one_file_sha256(path)


def _one_file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            while piece := file.read(1 << 20):
                digest.update(piece)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def checkpoint_in_folder(folder: Path) -> Path:
    """The weights file of a model folder: transformers' ``save_pretrained`` names it, or the one
    ``.safetensors`` file there (a training run's, named by its ``--out``: ``senatra.safetensors``;
    not a stopped run's unfinished ``*.partial.safetensors``)."""
    for name in CHECKPOINT_FILES + SHARD_INDEXES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(path.name for path in folder.glob("*.safetensors")
                   if path.is_file() and not path.name.endswith("partial.safetensors"))
    if len(found) == 1:
        return folder / found[0]
    others = f"; it holds {', '.join(found[:4])}{', ...' if len(found) > 4 else ''}" if found else ""
    raise CheckpointError(f"checkpoint '{folder}' is a folder without {' or '.join(CHECKPOINT_FILES)} (or a "
                          f"sharded one's index, or one .safetensors file){others} — pass the weights file itself")


def random_eomt(config, seed: int = 0, task: str = "panoptic", device: str | torch.device = "cpu") -> EoMT:
    """An EoMT of ``config`` with seeded random weights whose outputs look like a trained model's
    to the pipeline: class scores clear the 0.8 threshold and masks are separate, so
    post-processing, tracking and publishing do the work they would do (a plain random init
    gives no confident query, and a pipeline with nothing to post-process measures too fast).
    Speed does not depend on the values of the weights; segments mean nothing.

    The mask logits' scale and offset differ by orders of magnitude between sizes, so they are
    calibrated: one forward pass over two synthetic scenes gives the logits A of the mask head's
    last layer without its bias; the layer's weight times s and a bias of b / dim (the upscaled
    features are channel-normalised with a bias of 1, so that bias adds exactly b) make the
    logits s * A + b, and (s, b) is the pair of a small grid under which the official decision
    of ``task`` keeps the most segments (panoptic's also serves semantic)."""
    generator = torch.random.fork_rng()
    with generator:
        torch.manual_seed(seed)
        model = EoMT(config).eval()
        with torch.no_grad():
            model.class_head.weight.normal_(0, 12.0 / config.dim**0.5)
            model.class_head.bias.normal_(0, 2.0)
            model.upscale[-1].norm.bias.fill_(1.0)
            last = model.mask_head[-1]
            last.bias.zero_()
            # drawn on the CPU (the same weights anywhere), calibrated where the model runs: on the
            # CPU, L/640's calibration was most of a GPU benchmark's start (docs/BENCHMARKS.md, "GPU")
            model.to(device)
            # a frozen dataclass: the architecture itself is the key; a device's arithmetic may differ
            key = (config, seed, task, torch.device(device).type)
            if key not in _CALIBRATED:  # the same model is the same every time: one forward per process
                with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # fp32 convolutions, as on the CPU
                    outputs = model(_calibration_scenes(config.img_size).to(device))
                _CALIBRATED[key] = _mask_calibration(outputs.mask_logits, outputs.class_logits,
                                                     instance=task == "instance")
            scale, offset = _CALIBRATED[key]
            last.weight.mul_(scale)
            last.bias.fill_(offset / config.dim)
    return model


_CALIBRATED: dict[tuple[object, int, str, str], tuple[float, float]] = {}


def _calibration_scenes(size: int) -> Tensor:
    """Two synthetic scenes at ``size`` x ``size``, normalised as the pipeline feeds the model."""
    from segstream.connectors.synthetic import SyntheticSource
    from segstream.models.processing import normalize

    images = [next(iter(SyntheticSource("calibration", size, size, 25, seed, 1).frames())).image
              for seed in (0, 1)]
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return normalize(pixels)


def _mask_calibration(mask_logits: Tensor, class_logits: Tensor, score: float = 0.8,
                      overlap: float = 0.8, instance: bool = False) -> tuple[float, float]:
    """The (scale, offset) of the grid under which the panoptic decision (queries scoring over
    ``score``; each pixel to the likeliest; a query kept when ``overlap`` of its mask is its own)
    keeps the most segments over the images; with ``instance``, the instance decision (class
    score times the mean mask probability inside the mask over ``score``; masks of less than
    half the image, which better ones would not wholly cover)."""
    scores = class_logits.softmax(-1)[..., :-1].max(-1).values
    if mask_logits.shape[-1] > 64:  # the decision's outcome on a coarser grid: much cheaper, the same choice
        mask_logits = torch.nn.functional.interpolate(mask_logits, size=(64, 64), mode="bilinear")
    best, best_count = (1.0, 0.0), 0  # kept when nothing scores: the plain scale
    for scale in (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0):
        for offset in (-6.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0):
            count = 0
            for logits, image_scores in zip(mask_logits, scores):
                kept = image_scores > score
                if not kept.any():
                    continue
                probs = (logits[kept] * scale + offset).sigmoid()
                if instance:
                    inside = probs > 0.5
                    area = inside.flatten(1).sum(1)
                    mean = (probs * inside).flatten(1).sum(1) / area.clamp(min=1)
                    final = image_scores[kept] * mean
                    count += int(((final >= score) & (area > 0) & (area < inside[0].numel() / 2)).sum())
                    continue
                winner = (probs * image_scores[kept, None, None]).argmax(0)
                inside = probs >= 0.5
                own = (winner[None] == torch.arange(len(probs), device=probs.device)[:, None, None]) & inside
                area, own_area = inside.flatten(1).sum(1), own.flatten(1).sum(1)
                count += int(((own_area > 0) & (own_area >= overlap * area)).sum())
            if count > best_count:
                best, best_count = (scale, offset), count
    return best


def load_eomt(preset: Preset, checkpoint: str | None = None, device: str | torch.device = "cpu") -> EoMT:
    """The preset's EoMT with weights from ``checkpoint`` (or the preset's own weights; ``random``:
    ``random_eomt``, calibrated on ``device``)."""
    if checkpoint == RANDOM:
        return random_eomt(preset.config, task=preset.task, device=device)
    path = checkpoint_path(checkpoint or preset.weights)
    state = convert_state_dict(read_state_dict(path))
    # A checkpoint that does not fit is refused before a published architecture's weights are
    # initialised only to be thrown away (6 s of a CPU for L): its shapes checked on the meta device.
    with torch.device("meta") if _params_estimate(preset.config) > 30e6 else contextlib.nullcontext():
        model = EoMT(preset.config)
    _refuse_misfit_eomt(path, preset, model, state)
    _refuse_other_labels(path, preset)
    _refuse_other_config(path, preset)
    if any(p.is_meta for p in model.parameters()):
        model = EoMT(preset.config)
    model.load_state_dict(state, strict=False)
    return model


def check_checkpoint(preset: Preset, checkpoint: str | None = None) -> None:
    """What loading ``checkpoint`` into ``preset`` would refuse, found without loading it: the
    file's kind, its tensors' names and shapes against the preset's, then their values (NaN,
    infinity) a tensor at a time (``segstream validate``, a reload; the model is not built). A hub reference is checked only for huggingface_hub being installed
    (what the run needs to read it), ``random`` not at all."""
    reference = checkpoint or preset.weights
    if reference and reference.startswith(HF_PREFIX):
        _hub_target(reference)  # an install without the hub extra: said now, not when the run starts
        return
    if not reference or reference == RANDOM:
        return
    path = checkpoint_path(reference)
    state = read_state_dict(path, shapes_only=True)
    # A published architecture is built on the meta device (no memory, no initialising); a small one
    # on the CPU: quicker than the 2-3 s torch takes to load what meta tensors' initialisers call.
    with torch.device("meta") if _params_estimate(preset.config) > 30e6 else contextlib.nullcontext():
        if preset.family == "senatra":
            _refuse_misfit_senatra(path, preset, SeNaTra(preset.config), state)
        else:
            _refuse_misfit_eomt(path, preset, EoMT(preset.config), convert_state_dict(state))
            _refuse_other_config(path, preset)
    _refuse_other_labels(path, preset)
    if any(v.is_meta for v in state.values()):  # left on disk: read now, a tensor at a time
        bad, total = nonfinite_tensors(path)
        if bad:
            raise CheckpointError(nonfinite_line(path, bad, total))


def _params_estimate(config) -> float:
    """About how many parameters a ViT of ``config`` has (12 dim^2 a block), infinite when unknown."""
    dims = getattr(config, "dim", getattr(config, "dims", None))
    depths = getattr(config, "depth", getattr(config, "depths", None))
    if dims is None or depths is None:
        return float("inf")
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    depths = depths if isinstance(depths, (list, tuple)) else [depths]
    return float(sum(12 * d * d * n for d, n in zip(dims, depths)))


def _refuse_misfit_eomt(path: Path, preset: Preset, model: EoMT, state: dict[str, Tensor]) -> None:
    problems = state_dict_problems(model, state)
    if problems:
        _refuse_other_classes(path, preset, state, "class_head.bias", 1,
                              lambda config: not state_dict_problems(EoMT(config), state))
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise CheckpointError(
            f"checkpoint '{path}' does not fit preset {preset.name} "
            f"(dim {preset.config.dim}, {preset.config.depth} blocks, {preset.config.num_query_blocks} query blocks, "
            f"{preset.config.num_classes} classes, "
            f"{preset.config.num_queries} queries, input {preset.config.img_size}): {shown}{_what_fits(state, preset, problems, path)}"
        )


def _refuse_other_classes(path: Path, preset: Preset, state: dict[str, Tensor], head: str, extra: int,
                          fits: Callable[[Any], bool]) -> None:
    """With a label set of one's own (``model.labels``), a checkpoint that fits the architecture but
    for its class head: said as the two class counts, not as tensor shapes (``extra``: the head's
    outputs beyond the classes, EoMT's "no object")."""
    labels = preset.label_set
    if not isinstance(labels, LabelSet) or head not in state or state[head].ndim != 1:
        return
    classes = state[head].shape[0] - extra
    if classes == labels.num_classes or classes < 1:
        return
    with torch.device("meta"):
        if not fits(dataclasses.replace(preset.config, num_classes=classes)):
            return
    raise CheckpointError(
        f"model.labels ('{labels.name}') names {labels.num_classes} classes while the class head of checkpoint "
        f"'{path}' has {classes} — fix the labels file or the checkpoint (they must be of the same training)")


# The safetensors metadata key under which training writes its class names (a JSON list, class id order).
LABELS_KEY = "labels"


def trained_labels(path: Path) -> tuple[str, ...] | None:
    """The class names a safetensors checkpoint was trained on, as its training wrote them in its
    metadata (``LABELS_KEY``); None for a file without them (published weights, older training,
    another format)."""
    try:
        with path.open("rb") as file:
            head = file.read(8)
            length = int.from_bytes(head, "little")
            if len(head) < 8 or length > _MAX_SAFETENSORS_HEADER:
                return None
            metadata = parse_json(file.read(length)).get("__metadata__") or {}
        names = parse_json(metadata[LABELS_KEY])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return tuple(str(n) for n in names) if isinstance(names, list) else None


def _refuse_other_labels(path: Path, preset: Preset) -> None:
    """Refuse a checkpoint whose training named its classes otherwise than the run would: of the
    same count, the weights load and every segment gets another class's name."""
    theirs = trained_labels(path)
    if theirs is None:
        return
    own = isinstance(preset.label_set, LabelSet)
    labels = preset.label_set if own else _shipped_labels(str(preset.label_set))
    if theirs == labels.names:
        return
    here = f"model.labels ('{labels.name}')" if own else f"preset {preset.name}'s label set ({labels.name})"
    differ = next((i for i, (a, b) in enumerate(zip(theirs, labels.names)) if a != b), min(len(theirs), len(labels.names)))
    first = (f"class {differ} is '{theirs[differ]}' there, '{labels.names[differ]}' here" if differ < min(
        len(theirs), len(labels.names)) else f"{len(theirs)} classes there, {labels.num_classes} here")
    raise CheckpointError(
        f"checkpoint '{path}' was trained on other classes than {here} names ({first}) — set model.labels to the "
        f"labels file its training wrote beside it ({path.name.removesuffix('.safetensors')}.labels.json)")


# transformers' EoMT config.json fields, and the preset's that they must equal
_TRANSFORMERS_FIELDS = (("hidden_size", "dim"), ("num_hidden_layers", "depth"), ("num_attention_heads", "heads"),
                        ("patch_size", "patch_size"), ("image_size", "img_size"), ("num_queries", "num_queries"),
                        ("num_blocks", "num_query_blocks"), ("num_register_tokens", "num_register_tokens"),
                        ("num_upscale_blocks", "num_upscale_blocks"), ("mlp_ratio", "mlp_ratio"),
                        ("use_swiglu_ffn", "swiglu"), ("layer_norm_eps", "layer_norm_eps"))


def _config_beside(path: Path) -> dict | None:
    """The ``config.json`` beside a weights file (a transformers ``save_pretrained`` folder's), as
    a mapping; None where there is none, or none readable."""
    config = path.parent / "config.json"
    try:
        data = parse_json(config.read_bytes()) if config.is_file() else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def transformers_config(path: Path) -> dict | None:
    """The ``config.json`` of a transformers EoMT beside its weights, None where there is none."""
    data = _config_beside(path)
    return data if data is not None and data.get("model_type") == "eomt" else None


def _refuse_other_config(path: Path, preset: Preset) -> None:
    """Refuse a transformers checkpoint whose ``config.json`` says another architecture than the
    preset's where its tensors' shapes cannot (the attention heads, the norm's epsilon), or other
    class names than ``model.labels``'s (found probing as a researcher: 8 heads ran as the
    preset's 4, and a labels file with two names swapped published a disc as a box)."""
    data = transformers_config(path)
    if data is None:
        return
    cfg = preset.config
    differ = [f"{theirs} {data[theirs]!r} there, {getattr(cfg, ours)!r} here" for theirs, ours in _TRANSFORMERS_FIELDS
              if theirs in data and not isinstance(data[theirs], (dict, list)) and data[theirs] != getattr(cfg, ours)]
    if differ:
        raise CheckpointError(
            f"checkpoint '{path}' comes with a config.json of another architecture than preset {preset.name}'s "
            f"({'; '.join(differ[:3])}) — use the preset of its architecture, or register one (README: Your own model)")
    id2label, labels = data.get("id2label"), preset.label_set
    if not isinstance(id2label, dict) or not isinstance(labels, LabelSet) or len(id2label) != labels.num_classes:
        return  # (a count that differs is the class head's to say)
    theirs = [str(id2label.get(str(i), id2label.get(i, ""))) for i in range(len(id2label))]
    if theirs == [f"LABEL_{i}" for i in range(len(theirs))]:  # transformers' placeholders: no names given (found in review)
        return
    differ_at = next((i for i, (a, b) in enumerate(zip(theirs, labels.names)) if a != b), None)
    if differ_at is not None:
        raise CheckpointError(
            f"checkpoint '{path}' names its classes otherwise than model.labels ('{labels.name}') in its config.json "
            f"(class {differ_at} is '{theirs[differ_at]}' there, '{labels.names[differ_at]}' here) — set model.labels "
            "to a file of the classes its config.json's id2label names, in their order")


def _shipped_labels(name: str) -> LabelSet:
    from segstream.models.label_sets import load_label_set

    return load_label_set(name)


def _what_fits(state: dict[str, Tensor], preset: Preset, problems: list[str], path: Path | None = None) -> str:
    """Advice for a checkpoint that did not fit: what it is, and the presets of that shape; of
    ``preset``'s shape, none (``problems`` said it: tensors missing or extra, query blocks)."""
    from segstream.models.eomt import infer_config
    from segstream.models.presets import PRESETS

    try:
        found = infer_config(state)
    except (KeyError, ValueError, IndexError, AttributeError, TypeError):
        return f" — it is not an EoMT checkpoint{_what_else(state, path)}"
    shape = (found.dim, found.depth, found.num_classes, found.num_queries, found.img_size)
    cfg = preset.config
    if (cfg.dim, cfg.depth, cfg.num_classes, cfg.num_queries, cfg.img_size) == shape:
        if all(p.startswith(("missing keys", "unexpected keys")) for p in problems):
            return (" — its architecture is this preset's, but its tensors are not exactly the model's (saved from "
                    "part of it, or beside other modules?): save model.state_dict() of this model alone")
        return ""
    fitting = [p.name for p in PRESETS.values() if p.family == "eomt" and
               (p.config.dim, p.config.depth, p.config.num_classes, p.config.num_queries, p.config.img_size) == shape]
    it = (f" — the checkpoint is an EoMT of dim {found.dim}, {found.depth} blocks, {found.num_classes} classes, "
          f"{found.num_queries} queries, input {found.img_size}")
    if fitting:
        return f"{it}: use model.preset {' or '.join(fitting)}"
    same = [p.name for p in PRESETS.values() if p.family == "eomt" and
            (p.config.dim, p.config.depth, p.config.num_queries, p.config.img_size) == shape[:2] + shape[3:]]
    if same:
        return (f"{it}: use model.preset {same[0]} for its architecture and model.labels for a file of its "
                f"{found.num_classes} class names (README: Your own model)")
    return f"{it}, an architecture no preset has"


def _what_else(state: dict[str, Tensor], path: Path | None = None) -> str:
    """What a checkpoint that is no EoMT is: one shard of several, what its ``config.json`` names,
    SeNaTra's (its grouping layers' tensors), or a network named by its first tensors (every such
    file was asked "is it SeNaTra's?", found probing: a ResNet, a DINOv2 backbone, one shard)."""
    if path is not None and re.search(r"-\d{5}-of-\d{5}\.safetensors$", path.name):
        return (" (it is one shard of a sharded checkpoint: give its folder, or its model.safetensors.index.json, "
                "for all of them)")
    named = _config_beside(path) if path is not None else None
    if named is not None and named.get("model_type") not in (None, "eomt"):
        kind = ", ".join(map(str, named.get("architectures") or [])) or named["model_type"]
        return f" (its config.json names {kind}, model_type {named['model_type']!r}, which segstream does not run)"
    keys = [k for k in state if isinstance(k, str)]
    if any(k.startswith("downsamples.") for k in keys):
        return " (it is SeNaTra's: set model.family: senatra)"
    shown = ", ".join(keys[:3])
    return f" (its tensors are named {shown}, ...)" if shown else ""


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
    _refuse_misfit_senatra(path, preset, model, state)
    _refuse_other_labels(path, preset)
    model.load_state_dict(state)
    return model


def _refuse_misfit_senatra(path: Path, preset: Preset, model: SeNaTra, state: dict[str, Tensor]) -> None:
    expected = model.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state][:3]
    problems += [f"unexpected {k}" for k in state if k not in expected][:3]
    problems += [
        f"{k} is {tuple(state[k].shape)}, the preset needs {tuple(v.shape)}"
        for k, v in expected.items() if k in state and state[k].shape != v.shape
    ][:3]
    if problems:
        def fits(config) -> bool:
            expected = SeNaTra(config).state_dict()
            return expected.keys() == state.keys() and all(expected[k].shape == state[k].shape for k in expected)

        _refuse_other_classes(path, preset, state, "head.fc2.bias", 0, fits)
        cfg = preset.config
        raise CheckpointError(
            f"checkpoint '{path}' does not fit preset {preset.name} (dims {list(cfg.dims)}, depths "
            f"{list(cfg.depths)}, {cfg.downsampling} downsampling, {cfg.num_classes} classes, embedding "
            f"{cfg.embed_dim}): " + "; ".join(problems) + (_eomt_given_to_senatra(state) or _senatra_fits(state))
        )


def _senatra_fits(state: dict[str, Tensor]) -> str:
    """Advice for a SeNaTra checkpoint that did not fit: the presets of its shape (built on the
    meta device: no memory, no time), or that it is one's uniform-downsampling ablation."""
    from dataclasses import replace

    from segstream.models.presets import PRESETS

    def fits(config) -> bool:
        with torch.device("meta"):
            expected = SeNaTra(config).state_dict()
        return expected.keys() == state.keys() and all(expected[k].shape == state[k].shape for k in expected)

    senatra = [p for p in PRESETS.values() if p.family == "senatra"]
    if fitting := [p.name for p in senatra if fits(p.config)]:
        return f" — it fits model.preset {' or '.join(fitting)}"
    if ablation := [p.name for p in senatra if fits(replace(p.config, downsampling="uniform"))]:
        return (f" — it is {ablation[0]}'s network with uniform downsampling (the ablation scripts/train_senatra.py "
                "--downsampling uniform trains), which no preset runs: benchmarks/senatra_grouping.py "
                "--uniform-checkpoint compares it with grouping")
    return ""


def _eomt_given_to_senatra(state: dict[str, Tensor]) -> str:
    try:
        convert_state_dict(state)["q.weight"]
    except (KeyError, ValueError, TypeError):
        return ""
    return " — it is an EoMT checkpoint: run it with an EoMT preset (drop model.family: senatra)"
