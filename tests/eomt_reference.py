"""Test helpers: transformers' EoMT as the reference, and its weights in both published formats."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import EomtForUniversalSegmentation

from segstream.models.eomt import EoMTConfig
from segstream.models.presets import Preset


def reference_model(cfg: EoMTConfig, seed: int = 0, confident: bool = False, mask_offset: float = 0.0) -> EomtForUniversalSegmentation:
    """transformers' EoMT with random weights and the architecture of ``cfg``.

    The published checkpoints were trained with masked attention annealed to zero, so their
    ``attn_mask_probs`` are 0; transformers applies masked attention in eval whenever a
    probability is above 0 (a fresh model has 1s), the official code never at inference. We
    follow the official code and zero the buffer, as in the published weights.

    ``confident`` sharpens the class head so that random queries clear the 0.8 score threshold
    and post-processing has segments to produce.
    """
    torch.manual_seed(seed)
    # imported here, not with this module: transformers' EoMT costs 3.4 CPU-s to import, and every
    # test process imports the modules that import this one while it collects
    from transformers import EomtConfig, EomtForUniversalSegmentation

    hf_cfg = EomtConfig(
        hidden_size=cfg.dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.heads,
        image_size=cfg.img_size,
        patch_size=cfg.patch_size,
        num_queries=cfg.num_queries,
        num_labels=cfg.num_classes,
        num_blocks=cfg.num_query_blocks,
        num_register_tokens=cfg.num_register_tokens,
        use_swiglu_ffn=cfg.swiglu,
        layerscale_value=0.3,
    )
    model = EomtForUniversalSegmentation(hf_cfg).eval()
    with torch.no_grad():
        model.attn_mask_probs.zero_()
        # Random LayerScale and norms so that a mix-up of any two of them would show.
        for name, p in model.named_parameters():
            if "lambda1" in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
        if confident:
            model.class_predictor.weight.normal_(0, 12.0 / cfg.dim**0.5)
            model.class_predictor.bias.normal_(0, 2.0)
            # A shared negative offset on every mask logit keeps only each query's peaks, so
            # queries own mostly separate regions, as trained models' queries do.
            model.upscale_block.block[-1].layernorm2d.bias.fill_(1.0)
            model.mask_head.fc3.bias.fill_(-mask_offset / cfg.dim)
    return model


def official_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same weights in the tue-mps/eomt layout: ``network.``-prefixed timm names, fused qkv,
    (1, N, D) position embedding, normalisation buffers."""
    out: dict[str, torch.Tensor] = {}
    backbone = "network.encoder.backbone."
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in hf_state.items():
        if key.startswith("criterion.") or key == "embeddings.position_ids":
            continue
        if key.startswith("layers."):
            n, rest = key[len("layers.") :].split(".", 1)
            layers.setdefault(n, {})[rest] = value
            continue
        simple = {
            "embeddings.cls_token": backbone + "cls_token",
            "embeddings.register_tokens": backbone + "reg_token",
            "query.weight": "network.q.weight",
            "attn_mask_probs": "network.attn_mask_probs",
        }
        if key in simple:
            out[simple[key]] = value
        elif key == "embeddings.position_embeddings.weight":
            out[backbone + "pos_embed"] = value[None]
        elif key.startswith("embeddings.patch_embeddings.projection."):
            out[backbone + "patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("layernorm."):
            out[backbone + "norm." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("class_predictor."):
            out["network.class_head." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("mask_head.fc"):
            index = {"1": "0", "2": "2", "3": "4"}[key[len("mask_head.fc")]]
            out[f"network.mask_head.{index}." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("upscale_block.block."):
            rest = key[len("upscale_block.block.") :].replace("layernorm2d", "norm")
            out["network.upscale." + rest] = value
        else:
            raise AssertionError(f"unmapped transformers key {key}")
    for n, parts in layers.items():
        prefix = f"{backbone}blocks.{n}."
        for kind in ("weight", "bias"):
            out[prefix + f"attn.qkv.{kind}"] = torch.cat([parts[f"attention.{p}_proj.{kind}"] for p in "qkv"])
            out[prefix + f"attn.proj.{kind}"] = parts[f"attention.out_proj.{kind}"]
            out[prefix + f"norm1.{kind}"] = parts[f"norm1.{kind}"]
            out[prefix + f"norm2.{kind}"] = parts[f"norm2.{kind}"]
            if f"mlp.fc1.{kind}" in parts:
                out[prefix + f"mlp.fc1.{kind}"] = parts[f"mlp.fc1.{kind}"]
                out[prefix + f"mlp.fc2.{kind}"] = parts[f"mlp.fc2.{kind}"]
            else:
                out[prefix + f"mlp.fc1.{kind}"] = torch.cat([parts[f"mlp.gate_proj.{kind}"], parts[f"mlp.up_proj.{kind}"]])
                out[prefix + f"mlp.fc2.{kind}"] = parts[f"mlp.down_proj.{kind}"]
        out[prefix + "ls1.gamma"] = parts["layer_scale1.lambda1"]
        out[prefix + "ls2.gamma"] = parts["layer_scale2.lambda1"]
    out["network.encoder.pixel_mean"] = torch.tensor([0.485, 0.456, 0.406]).reshape(1, -1, 1, 1)
    out["network.encoder.pixel_std"] = torch.tensor([0.229, 0.224, 0.225]).reshape(1, -1, 1, 1)
    return out


def write_checkpoints(model: EomtForUniversalSegmentation, folder: Path) -> dict[str, Path]:
    """The reference weights as official pytorch_model.bin, transformers safetensors and .bin."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    paths = {
        "official": folder / "pytorch_model.bin",
        "transformers_safetensors": folder / "model.safetensors",
        "transformers_bin": folder / "transformers_model.bin",
    }
    torch.save(official_state_dict(state), paths["official"])
    save_file({k: v for k, v in state.items() if k != "embeddings.position_ids"}, str(paths["transformers_safetensors"]))
    torch.save(state, paths["transformers_bin"])
    return paths


def preset_for(cfg: EoMTConfig, task: str, label_set: str, name: str = "test") -> Preset:
    return Preset(name, cfg, task, label_set, "unused.safetensors")
