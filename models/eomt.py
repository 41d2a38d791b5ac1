"""EoMT: the Encoder-only Mask Transformer ("Your ViT is Secretly an Image Segmentation Model").

A plain ViT (DINOv2 layout: CLS + register tokens, learned position embedding for the patch grid
only, LayerScale) whose last ``num_query_blocks`` blocks also process learned queries prepended to
the token sequence. After the final norm, each query gives class logits and, through a 3-layer MLP
dotted with 4x-upscaled patch features, mask logits at stride 4.

Sizes are constructor arguments (``EoMTConfig``). Converting the published checkpoints is a pure
function from their state dict to ours (``convert_official_state_dict``,
``convert_transformers_state_dict``). Inference runs without masked attention, as published;
masked attention with annealed per-block probabilities exists for training only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True, slots=True)
class EoMTConfig:
    """Architecture hyper-parameters. ``img_size`` is the square input side in pixels."""

    img_size: int = 640
    patch_size: int = 16
    dim: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_ratio: float = 4.0
    swiglu: bool = False
    num_register_tokens: int = 4
    num_queries: int = 200
    num_classes: int = 133
    num_query_blocks: int = 4
    num_upscale_blocks: int = 2
    layer_norm_eps: float = 1e-6

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def mask_size(self) -> int:
        """Side of the mask logits: the patch grid upscaled 2x per upscale block."""
        return self.grid_size * 2**self.num_upscale_blocks

    @property
    def mlp_hidden(self) -> int:
        # SwiGLU keeps 2/3 of the hidden width, rounded up to a multiple of 8, packed as [gate | value].
        hidden = int(self.dim * self.mlp_ratio)
        if self.swiglu:
            return 2 * ((int(hidden * 2 / 3) + 7) // 8 * 8)
        return hidden


# Published backbone sizes: (dim, depth, heads, swiglu, blocks that see the queries).
SIZES: dict[str, tuple[int, int, int, bool, int]] = {
    "S": (384, 12, 6, False, 3),
    "B": (768, 12, 12, False, 3),
    "L": (1024, 24, 16, False, 4),
    "g": (1536, 40, 24, True, 5),
}


def config_for_size(size: str, **overrides) -> EoMTConfig:
    """The published architecture of size S, B, L or g, with e.g. img_size/num_classes overridden."""
    if size not in SIZES:
        raise ValueError(f"unknown EoMT size {size!r}; known sizes: {', '.join(SIZES)}")
    dim, depth, heads, swiglu, query_blocks = SIZES[size]
    base = EoMTConfig(dim=dim, depth=depth, heads=heads, swiglu=swiglu, num_query_blocks=query_blocks)
    return replace(base, **overrides)


class EoMTOutput(NamedTuple):
    """``mask_logits`` B x Q x M x M at stride 4; ``class_logits`` B x Q x (C+1), the last column
    is no-object; ``query_embeddings`` B x Q x D, the final-normed query tokens."""

    mask_logits: Tensor
    class_logits: Tensor
    query_embeddings: Tensor


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None:
            attn_mask = attn_mask[:, None]  # same mask for every head
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """GELU MLP, or SwiGLU with fc1 packed as [gate | value] (the giant model)."""

    def __init__(self, dim: int, hidden: int, swiglu: bool):
        super().__init__()
        self.swiglu = swiglu
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden // 2 if swiglu else hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1(x)
        if self.swiglu:
            gate, value = x.chunk(2, dim=-1)
            x = F.silu(gate) * value
        else:
            x = F.gelu(x)
        return self.fc2(x)


class Block(nn.Module):
    def __init__(self, cfg: EoMTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg.dim, cfg.heads)
        self.ls1 = LayerScale(cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg.dim, cfg.mlp_hidden, cfg.swiglu)
        self.ls2 = LayerScale(cfg.dim)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), attn_mask))
        return x + self.ls2(self.mlp(self.norm2(x)))


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an N x C x H x W map."""

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ScaleBlock(nn.Module):
    """2x upscaling: transposed conv, GELU, depthwise 3x3 conv, channel LayerNorm."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.conv1 = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, bias=False)
        self.norm = LayerNorm2d(dim, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv2(F.gelu(self.conv1(x))))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: EoMTConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class EoMT(nn.Module):
    """EoMT on ImageNet-normalised B x 3 x img_size x img_size input."""

    def __init__(self, cfg: EoMTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.reg_token = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid_size**2, d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.q = nn.Embedding(cfg.num_queries, d)
        self.class_head = nn.Linear(d, cfg.num_classes + 1)
        self.mask_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
        self.upscale = nn.Sequential(*(ScaleBlock(d, cfg.layer_norm_eps) for _ in range(cfg.num_upscale_blocks)))
        # Probability that a query keeps masked attention in each query block (training only).
        self.register_buffer("attn_mask_probs", torch.ones(cfg.num_query_blocks))
        self.reset_parameters()

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.cfg.num_register_tokens

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=1e-6)
        nn.init.trunc_normal_(self.reg_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            # Small LayerScale lets a from-scratch model start close to identity (DINOv2 uses 1e-5).
            nn.init.constant_(block.ls1.gamma, 0.1)
            nn.init.constant_(block.ls2.gamma, 0.1)

    def embed(self, pixels: Tensor) -> Tensor:
        x = self.patch_embed(pixels) + self.pos_embed
        prefix = torch.cat((self.cls_token, self.reg_token), dim=1).expand(x.shape[0], -1, -1)
        return torch.cat((prefix, x), dim=1)

    def predict(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mask and class logits from normed tokens [queries | prefix | patches]."""
        q = x[:, : self.cfg.num_queries]
        patches = x[:, self.cfg.num_queries + self.num_prefix_tokens :]
        g = self.cfg.grid_size
        features = self.upscale(patches.transpose(1, 2).reshape(x.shape[0], -1, g, g))
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_head(q), features)
        return mask_logits, self.class_head(q)

    def forward(self, pixels: Tensor) -> EoMTOutput:
        x = self.embed(pixels)
        first_query_block = self.cfg.depth - self.cfg.num_query_blocks
        for i, block in enumerate(self.blocks):
            if i == first_query_block:
                x = torch.cat((self.q.weight.expand(x.shape[0], -1, -1), x), dim=1)
            x = block(x)
        x = self.norm(x)
        mask_logits, class_logits = self.predict(x)
        return EoMTOutput(mask_logits, class_logits, x[:, : self.cfg.num_queries])

    def forward_train(self, pixels: Tensor, encoder_tokens: list[Tensor] | None = None) -> list[tuple[Tensor, Tensor]]:
        """(mask_logits, class_logits) before every query block and after the last one.

        Each query block's attention is masked by the previous prediction (queries see only
        patches inside their own mask), except for queries drawn to skip it with probability
        ``1 - attn_mask_probs[block]``; annealing those probabilities to 0 yields the unmasked
        model used at inference. When ``encoder_tokens`` is a list, the patch tokens entering the
        first query block (B x N x D) are appended to it, for auxiliary losses on the encoder.
        """
        x = self.embed(pixels)
        first_query_block = self.cfg.depth - self.cfg.num_query_blocks
        outputs = []
        for i, block in enumerate(self.blocks):
            if i == first_query_block:
                if encoder_tokens is not None:
                    encoder_tokens.append(x[:, self.num_prefix_tokens :])
                x = torch.cat((self.q.weight.expand(x.shape[0], -1, -1), x), dim=1)
            attn_mask = None
            if i >= first_query_block:
                mask_logits, class_logits = self.predict(self.norm(x))
                outputs.append((mask_logits, class_logits))
                attn_mask = self._attention_mask(mask_logits, self.attn_mask_probs[i - first_query_block], x.shape[1])
            x = block(x, attn_mask)
        outputs.append(self.predict(self.norm(x)))
        return outputs

    def _attention_mask(self, mask_logits: Tensor, keep_prob: Tensor, num_tokens: int) -> Tensor | None:
        if not bool(keep_prob > 0):
            return None
        b, nq = mask_logits.shape[:2]
        g = self.cfg.grid_size
        inside = F.interpolate(mask_logits.detach(), (g, g), mode="bilinear").flatten(2) > 0
        unmasked = torch.rand(b, nq, 1, device=mask_logits.device) >= keep_prob
        mask = torch.ones(b, num_tokens, num_tokens, dtype=torch.bool, device=mask_logits.device)
        mask[:, :nq, nq + self.num_prefix_tokens :] = inside | unmasked
        return mask


# --- checkpoint conversion (pure functions over state dicts) -------------------------------------

# (endings: the Lightning module's keys have ``network.`` before them, its network's own do not)
_OFFICIAL_DROPPED = ("encoder.pixel_mean", "encoder.pixel_std", "criterion.empty_weight")


def convert_official_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """tue-mps/eomt checkpoint (the Lightning module's, ``network.``-prefixed, or its network's own;
    timm backbone) -> EoMT state dict."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        key = key.replace("._orig_mod", "")  # a torch.compile'd network's keys
        if key.endswith(_OFFICIAL_DROPPED):
            continue
        for prefix in ("network.encoder.backbone.", "network.", "encoder.backbone."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        out[key] = value
    return out


_TRANSFORMERS_RENAMES = (
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.register_tokens", "reg_token"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("layernorm.", "norm."),
    ("query.weight", "q.weight"),
    ("class_predictor.", "class_head."),
    ("mask_head.fc1.", "mask_head.0."),
    ("mask_head.fc2.", "mask_head.2."),
    ("mask_head.fc3.", "mask_head.4."),
)

_TRANSFORMERS_LAYER_RENAMES = (
    (".attention.out_proj.", ".attn.proj."),
    (".layer_scale1.lambda1", ".ls1.gamma"),
    (".layer_scale2.lambda1", ".ls2.gamma"),
    (".mlp.weights_in.", ".mlp.fc1."),
    (".mlp.weights_out.", ".mlp.fc2."),
    (".mlp.down_proj.", ".mlp.fc2."),
)

# Split projections that our blocks keep fused: piece -> (fused name, position in the fused matrix).
_TRANSFORMERS_FUSED = {
    ".attention.q_proj.": (".attn.qkv.", 0),
    ".attention.k_proj.": (".attn.qkv.", 1),
    ".attention.v_proj.": (".attn.qkv.", 2),
    ".mlp.gate_proj.": (".mlp.fc1.", 0),
    ".mlp.up_proj.": (".mlp.fc1.", 1),
}


def convert_transformers_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers ``EomtForUniversalSegmentation`` state dict -> EoMT state dict.

    q/k/v projections are fused in q, k, v order; a SwiGLU split into gate/up projections is
    packed back into one [gate | value] matrix.
    """
    out: dict[str, Tensor] = {}
    pieces: dict[str, dict[int, Tensor]] = {}
    for key, value in state.items():
        if key.startswith("model."):
            key = key[len("model.") :]
        if key.startswith("criterion.") or key == "embeddings.position_ids":
            continue
        if key == "embeddings.position_embeddings.weight":
            out["pos_embed"] = value[None]
        elif key.startswith("upscale_block.block."):
            out["upscale." + key[len("upscale_block.block.") :].replace(".layernorm2d.", ".norm.")] = value
        elif key.startswith("layers."):
            key = "blocks." + key[len("layers.") :]
            for piece, (fused, position) in _TRANSFORMERS_FUSED.items():
                if piece in key:
                    pieces.setdefault(key.replace(piece, fused), {})[position] = value
                    break
            else:
                for old, new in _TRANSFORMERS_LAYER_RENAMES:
                    key = key.replace(old, new)
                out[key] = value
        else:
            for old, new in _TRANSFORMERS_RENAMES:
                if key.startswith(old):
                    key = new + key[len(old) :]
                    break
            out[key] = value
    for fused_key, parts in pieces.items():
        expected = 3 if ".attn.qkv." in fused_key else 2
        if len(parts) != expected:
            # An incomplete set stays under a name of its own so the key check reports it.
            out[fused_key + f"(incomplete: {len(parts)} of {expected} pieces)"] = parts[min(parts)]
            continue
        out[fused_key] = torch.cat([parts[i] for i in range(expected)], dim=0)
    return out


def detect_checkpoint_format(state: dict[str, Tensor]) -> str:
    """'official', 'transformers' or 'segstream' (already our own key names)."""
    keys = state.keys()
    # the Lightning module's (``network.``), or its network's own (``torch.save(module.network.state_dict())``)
    if any(k.startswith(("network.", "encoder.backbone.")) for k in keys) or "state_dict" in state:
        return "official"
    if any(k.startswith(("embeddings.", "model.embeddings.")) for k in keys):
        return "transformers"
    return "segstream"


def convert_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Any published EoMT state dict -> ours."""
    kind = detect_checkpoint_format(state)
    if kind == "official":
        return convert_official_state_dict(state)
    if kind == "transformers":
        return convert_transformers_state_dict(state)
    return dict(state)


def state_dict_problems(model: EoMT, state: dict[str, Tensor]) -> list[str]:
    """Everything that keeps ``state`` from loading into ``model``: one line per problem."""
    expected = model.state_dict()
    problems: list[str] = []
    missing = [k for k in expected if k not in state and k != "attn_mask_probs"]
    unexpected = [k for k in state if k not in expected]
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
    for key, value in state.items():
        if key == "attn_mask_probs" and value.ndim == 1 and value.shape != expected[key].shape:
            # The only place the query-block count shows in a checkpoint.
            problems.append(
                f"it was trained with {value.shape[0]} query blocks, the model has {expected[key].shape[0]}"
            )
        elif key in expected and tuple(value.shape) != tuple(expected[key].shape):
            problems.append(f"{key}: shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}")
    return problems


def _preview(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def infer_config(state: dict[str, Tensor], **overrides) -> EoMTConfig:
    """Read the architecture off an EoMT state dict (ours) where the shapes determine it.

    Heads and the number of query blocks are not visible in shapes: they come from the published
    size with the same width, unless overridden.
    """
    dim = state["q.weight"].shape[1]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    sized = {v[0]: (name, v) for name, v in SIZES.items()}
    _, (_, _, heads, _, query_blocks) = sized.get(dim, ("?", (dim, depth, max(1, dim // 64), False, 4)))
    patch = state["patch_embed.proj.weight"].shape[-1]
    grid = int(math.isqrt(state["pos_embed"].shape[1]))
    fc1, fc2 = state["blocks.0.mlp.fc1.weight"].shape[0], state["blocks.0.mlp.fc2.weight"].shape[1]
    swiglu = fc2 * 2 == fc1
    fields = dict(
        img_size=grid * patch,
        patch_size=patch,
        dim=dim,
        depth=depth,
        heads=heads,
        swiglu=swiglu,
        mlp_ratio=_mlp_ratio(dim, fc1, swiglu),
        num_register_tokens=state["reg_token"].shape[1],
        num_queries=state["q.weight"].shape[0],
        num_classes=state["class_head.weight"].shape[0] - 1,
        num_query_blocks=query_blocks,
        num_upscale_blocks=1 + max(int(k.split(".")[1]) for k in state if k.startswith("upscale.")),
    )
    fields.update(overrides)
    return EoMTConfig(**fields)


def _mlp_ratio(dim: int, fc1_rows: int, swiglu: bool) -> float:
    """The MLP ratio that gives ``fc1_rows``; SwiGLU's rounding makes the published 4.0 the
    natural first guess."""
    if EoMTConfig(dim=dim, swiglu=swiglu, mlp_ratio=4.0).mlp_hidden == fc1_rows:
        return 4.0
    return (fc1_rows * 3 / 4 if swiglu else fc1_rows) / dim
