"""EoMT against transformers' implementation: same weights, same logits, both checkpoint formats."""

from __future__ import annotations

import os
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from segstream.connectors.checkpoints import load_eomt, read_state_dict
from segstream.connectors.errors import CheckpointError
from segstream.models.eomt import EoMTConfig, config_for_size, infer_config
from segstream.models.presets import PRESETS, Preset, get_preset
from tests.eomt_reference import preset_for, reference_model, write_checkpoints

SMALL_CONFIGS = {
    "gelu-64": EoMTConfig(img_size=64, dim=96, depth=4, heads=4, num_queries=10, num_classes=7, num_query_blocks=2),
    "swiglu-96": EoMTConfig(
        img_size=96, dim=64, depth=5, heads=2, num_queries=12, num_classes=5, num_query_blocks=3, swiglu=True
    ),
    "gelu-128-3blocks": EoMTConfig(img_size=128, dim=48, depth=3, heads=3, num_queries=6, num_classes=19, num_query_blocks=3),
}


REPO = Path(__file__).resolve().parents[1]


def _compare(ours, theirs, pixels):
    with torch.no_grad():
        ref = theirs(pixel_values=pixels)
        out = ours(pixels)
    # Guard against a vacuous match: the reference produces varied, non-zero logits.
    assert ref.masks_queries_logits.std() > 1e-2 and ref.class_queries_logits.std() > 1e-2
    assert out.mask_logits.shape == ref.masks_queries_logits.shape
    assert torch.allclose(out.mask_logits, ref.masks_queries_logits, atol=1e-4, rtol=0)
    assert torch.allclose(out.class_logits, ref.class_queries_logits, atol=1e-4, rtol=0)
    assert torch.allclose(out.query_embeddings, ref.last_hidden_state[:, : ours.cfg.num_queries], atol=1e-4, rtol=0)


@pytest.mark.parametrize("fmt", ["official", "transformers_safetensors", "transformers_bin"])
@pytest.mark.parametrize("name", list(SMALL_CONFIGS))
def test_logits_match_transformers_in_every_checkpoint_format(tmp_path, name, fmt):
    cfg = SMALL_CONFIGS[name]
    reference = reference_model(cfg, seed=1)
    paths = write_checkpoints(reference, tmp_path)
    ours = load_eomt(preset_for(cfg, "panoptic", "coco_panoptic"), str(paths[fmt])).eval()
    pixels = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    _compare(ours, reference, pixels)


def test_a_save_pretrained_folder_loads_and_one_without_weights_is_one_line(tmp_path):
    # Found probing: transformers' save_pretrained writes a folder, and passing it said "does not exist".
    from segstream.connectors.errors import CheckpointError
    from segstream.pipeline.config import ModelConfig

    cfg = SMALL_CONFIGS[next(iter(SMALL_CONFIGS))]
    reference = reference_model(cfg, seed=1)
    reference.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    assert ModelConfig(checkpoint=str(tmp_path / "saved")).checkpoint == str(tmp_path / "saved")
    ours = load_eomt(preset_for(cfg, "panoptic", "coco_panoptic"), str(tmp_path / "saved")).eval()
    _compare(ours, reference, torch.randn(1, 3, cfg.img_size, cfg.img_size))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is a folder without model.safetensors or pytorch_model.bin"):
        ModelConfig(checkpoint=str(tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="pass the weights file itself"):
        load_eomt(preset_for(cfg, "panoptic", "coco_panoptic"), str(tmp_path / "empty"))


def test_full_size_small_preset_matches_transformers(tmp_path):
    preset = get_preset("coco_panoptic_eomt_small_640_2x")
    assert (preset.config.dim, preset.config.depth, preset.config.heads) == (384, 12, 6)
    reference = reference_model(preset.config, seed=2)
    paths = write_checkpoints(reference, tmp_path)
    state = read_state_dict(paths["official"])
    # The official layout: fused qkv, (1, 1600, D) position embedding for the 40x40 patch grid.
    assert state["network.encoder.backbone.pos_embed"].shape == (1, 1600, 384)
    assert state["network.encoder.backbone.blocks.0.attn.qkv.weight"].shape == (3 * 384, 384)
    ours = load_eomt(preset, str(paths["official"])).eval()
    pixels = torch.randn(1, 3, 640, 640)
    _compare(ours, reference, pixels)
    with torch.no_grad():
        out = ours(pixels)
    assert out.mask_logits.shape == (1, 200, 160, 160)
    assert out.class_logits.shape == (1, 200, 134)


def test_presets_cover_every_published_size_task_and_label_set():
    eomt = [p for p in PRESETS.values() if p.family == "eomt"]
    sizes = {(p.config.dim, p.config.depth, p.config.heads, p.config.swiglu, p.config.num_query_blocks) for p in eomt}
    assert {(384, 12, 6, False, 3), (768, 12, 12, False, 3), (1024, 24, 16, False, 4), (1536, 40, 24, True, 5)} <= sizes
    by_name = {n: p for n, p in PRESETS.items()}
    assert by_name["coco_panoptic_eomt_giant_1280"].config.img_size == 1280
    assert by_name["ade20k_semantic_eomt_large_512"].config.num_queries == 100
    assert by_name["cityscapes_semantic_eomt_large_1024"].config.num_classes == 19
    assert by_name["coco_instance_eomt_large_640"].config.num_classes == 80
    assert by_name["ade20k_panoptic_eomt_large_640"].config.num_classes == 150
    assert {p.task for p in PRESETS.values()} == {"panoptic", "semantic", "instance"}


def test_giant_swiglu_shapes_match_transformers_layout():
    cfg = config_for_size("g", img_size=32, depth=1, num_query_blocks=1, num_queries=2, num_classes=3)
    hf = reference_model(cfg)
    ours_fc1 = 2 * hf.layers[0].mlp.gate_proj.weight.shape[0]
    assert cfg.mlp_hidden == ours_fc1 == 8192


def test_config_is_read_back_from_a_state_dict(tmp_path):
    cfg = SMALL_CONFIGS["swiglu-96"]
    paths = write_checkpoints(reference_model(cfg), tmp_path)
    model = load_eomt(preset_for(cfg, "panoptic", "coco_panoptic"), str(paths["official"]))
    inferred = infer_config(model.state_dict(), heads=cfg.heads, num_query_blocks=cfg.num_query_blocks)
    assert inferred == cfg


def test_checkpoint_with_other_class_count_names_the_keys_and_shapes(tmp_path):
    cfg = SMALL_CONFIGS["gelu-64"]
    paths = write_checkpoints(reference_model(cfg), tmp_path)
    wrong = preset_for(replace(cfg, num_classes=9), "panoptic", "coco_panoptic", name="wrong-classes")
    with pytest.raises(CheckpointError) as err:
        load_eomt(wrong, str(paths["official"]))
    message = str(err.value)
    assert "class_head.weight: shape (8, 96), expected (10, 96)" in message
    assert "wrong-classes" in message and "\n" not in message


def test_checkpoint_of_another_size_reports_missing_and_unexpected_keys(tmp_path):
    cfg = SMALL_CONFIGS["gelu-64"]
    paths = write_checkpoints(reference_model(cfg), tmp_path)
    deeper = replace(cfg, depth=6)
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): blocks\.4\."):
        load_eomt(preset_for(deeper, "panoptic", "coco_panoptic"), str(paths["official"]))
    state = torch.load(paths["official"], weights_only=True)
    state["network.extra_head.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.bin")
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): extra_head\.weight"):
        load_eomt(preset_for(cfg, "panoptic", "coco_panoptic"), str(tmp_path / "extra.bin"))


def test_checkpoint_with_other_query_block_count_says_so(tmp_path):
    # Query blocks leave every weight's shape alone; only the annealing buffer tells them apart.
    cfg = SMALL_CONFIGS["gelu-64"]
    paths = write_checkpoints(reference_model(cfg), tmp_path)
    more = preset_for(replace(cfg, num_query_blocks=cfg.num_query_blocks + 1), "panoptic", "coco_panoptic")
    with pytest.raises(CheckpointError) as err:
        load_eomt(more, str(paths["official"]))
    message = str(err.value)
    assert f"trained with {cfg.num_query_blocks} query blocks, the model has {cfg.num_query_blocks + 1}" in message
    assert f"{cfg.num_query_blocks + 1} query blocks," in message and "\n" not in message


class _Payload:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_pickled_objects_are_refused(tmp_path, capsys):
    path = tmp_path / "evil.bin"
    with open(path, "wb") as f:
        pickle.dump({"weight": _Payload()}, f)
    with pytest.raises(CheckpointError, match="refuses to unpickle") as refused:
        read_state_dict(path)
    assert "unpickled arbitrary code" not in capsys.readouterr().out
    # Our words, not torch's advice to load it with weights_only=False.
    assert "weights_only" not in str(refused.value) and "trust" not in str(refused.value)


def test_missing_and_garbage_checkpoints_are_user_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "nope.safetensors")
    os.mkfifo(tmp_path / "pipe.safetensors")  # found probing bad input: it "did not exist"
    with pytest.raises(CheckpointError, match="pipe.safetensors' is no regular file"):
        read_state_dict(tmp_path / "pipe.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        read_state_dict(garbage)
    truncated = tmp_path / "truncated.safetensors"
    save_file({"w": torch.ones(64, 64)}, str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="is truncated: its header says"):
        read_state_dict(truncated)
    # a file the system will not read (found reviewing: a traceback); root reads any file, not this one
    with pytest.raises(CheckpointError, match=r"'/proc/self/mem' cannot be read \(Input/output error\)"):
        read_state_dict(Path("/proc/self/mem"))
    # a video passed as a .pt: not "Python objects", which torch's unpickler would make it
    video = tmp_path / "clip.pt"
    video.write_bytes((Path(__file__).parents[1] / "samples" / "demo.mp4").read_bytes()[:4096])
    with pytest.raises(CheckpointError, match="is not a checkpoint: neither a safetensors file nor one PyTorch saved"):
        read_state_dict(video)


def test_a_safetensors_file_under_another_name_is_read_as_one(tmp_path):
    """A download saved as model.bin (found reviewing: "not a checkpoint")."""
    path = tmp_path / "model.bin"
    save_file({"w": torch.arange(6.0)}, str(path))
    assert torch.equal(read_state_dict(path)["w"], torch.arange(6.0))


def test_hub_reference_offline_says_how_to_use_a_local_file(monkeypatch, tmp_path):
    import socket

    import huggingface_hub.constants

    # huggingface_hub reads its environment once, at import: set its constants, not the variables.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))

    def no_network(*args, **kwargs):
        raise AssertionError("the offline hub test opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(CheckpointError) as err:
        load_eomt(get_preset("coco_panoptic_eomt_large_640"))
    message = str(err.value)
    assert "tue-mps/coco_panoptic_eomt_large_640" in message and "model.checkpoint" in message


def test_wrapped_data_parallel_compiled_and_sharded_checkpoints_load(tmp_path):
    # Found probing: {"model": sd} / {"model_state_dict": sd} and "module." keys were refused, a
    # compiled Lightning network's pixel_mean stayed an unexpected key, a sharded folder was told
    # to pass one file (which then lacked 133 keys)
    cfg = SMALL_CONFIGS["gelu-64"]
    reference = reference_model(cfg, seed=1)
    paths = write_checkpoints(reference, tmp_path)
    preset = preset_for(cfg, "panoptic", "coco_panoptic")
    official = torch.load(paths["official"], weights_only=True)
    ours = load_eomt(preset, str(paths["official"])).state_dict()
    compiled = {k.replace("network.", "network._orig_mod.", 1): v for k, v in official.items()}
    variants = {
        "model.pt": {"model": official, "epoch": 3},
        "model_state_dict.pt": {"model_state_dict": official, "optimizer": {"lr": 0.1}},
        "data_parallel.pt": {f"module.{k}": v for k, v in official.items()},
        "compiled.ckpt": {"state_dict": compiled, "epoch": 3},
        # found probing as a SeNaTra user: a whole compiled network's keys begin with _orig_mod.
        "compiled_whole.pt": {f"_orig_mod.{k}": v for k, v in official.items()},
        "ddp_compiled.pt": {"model": {f"module._orig_mod.{k}": v for k, v in official.items()}},
        # found probing as a researcher: the official network's own state dict (torch.save(module.network
        # .state_dict()): no "network." before its keys) was refused as "not an EoMT checkpoint"
        "network_alone.pth": {k.removeprefix("network."): v for k, v in official.items()},
        "network_alone_ddp.pth": {f"module.{k.removeprefix('network.')}": v for k, v in official.items()},
    }
    for name, state in variants.items():
        torch.save(state, tmp_path / name)
    from safetensors.torch import save_file

    save_file({f"_orig_mod.{k}": v.contiguous() for k, v in official.items()}, tmp_path / "compiled.safetensors")
    for name in [*variants, "compiled.safetensors"]:
        loaded = load_eomt(preset, str(tmp_path / name)).state_dict()
        assert all(torch.equal(loaded[k], ours[k]) for k in ours), name
    reference.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    _compare(load_eomt(preset, str(tmp_path / "sharded")).eval(), reference, torch.randn(1, 3, 64, 64))
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, tmp_path / "no_weights.pt")
    with pytest.raises(CheckpointError, match=r"not a state dict of tensors \(it holds 'epoch', 'optimizer'\)"):
        load_eomt(preset, str(tmp_path / "no_weights.pt"))


def test_a_checkpoint_that_fits_no_preset_is_refused_briefly_with_what_it_is_and_what_to_do(tmp_path):
    # Found probing: an S checkpoint on the L preset was one line of 11,708 characters, no advice
    from segstream.models.eomt import EoMT

    small = get_preset("coco_panoptic_eomt_small_640_2x")
    model = EoMT(small.config)
    ten_classes = {k: v for k, v in model.state_dict().items()}
    ten_classes["class_head.weight"] = ten_classes["class_head.weight"][:11].clone()
    ten_classes["class_head.bias"] = ten_classes["class_head.bias"][:11].clone()
    save_file(ten_classes, tmp_path / "ten.safetensors")
    save_file(model.state_dict(), tmp_path / "small.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_eomt(get_preset("coco_panoptic_eomt_large_640"), str(tmp_path / "small.safetensors"))
    message = str(err.value)
    assert len(message) < 1200 and "more" in message, len(message)
    assert "use model.preset coco_panoptic_eomt_small_640_2x" in message
    with pytest.raises(CheckpointError) as err:
        load_eomt(small, str(tmp_path / "ten.safetensors"))
    assert "10 classes" in str(err.value) and "model.labels" in str(err.value)


def test_a_checkpoint_that_is_no_eomt_says_what_it_is_and_a_shard_what_is_missing(tmp_path):
    # Found probing as a researcher: a ResNet, a DINOv2 backbone, an EoMT on DINOv3 and one shard were
    # each asked "is it SeNaTra's?", and a shard missing from a folder was "a file that does not exist".
    import json

    tiny = get_preset("synthetic_eomt_tiny_256")
    save_file({"conv1.weight": torch.zeros(4, 3, 7, 7), "bn1.weight": torch.zeros(4)}, tmp_path / "resnet.safetensors")
    with pytest.raises(CheckpointError, match=r"not an EoMT checkpoint \(its tensors are named bn1.weight, conv1.weight, ...\)"):
        load_eomt(tiny, str(tmp_path / "resnet.safetensors"))
    (tmp_path / "dinov3").mkdir()
    save_file({"embeddings.cls_token": torch.zeros(1, 1, 8)}, tmp_path / "dinov3" / "model.safetensors")
    (tmp_path / "dinov3" / "config.json").write_text(json.dumps(
        {"model_type": "eomt_dinov3", "architectures": ["EomtDinov3ForUniversalSegmentation"]}))
    with pytest.raises(CheckpointError, match=r"its config.json names EomtDinov3ForUniversalSegmentation, model_type "
                                              r"'eomt_dinov3', which segstream does not run"):
        load_eomt(tiny, str(tmp_path / "dinov3"))
    senatra = str(REPO / "models" / "weights" / "synthetic_senatra_tiny_192.safetensors")
    with pytest.raises(CheckpointError, match=r"it is SeNaTra's: set model.family: senatra"):
        load_eomt(tiny, senatra)
    cfg = SMALL_CONFIGS[next(iter(SMALL_CONFIGS))]
    reference_model(cfg, seed=1).save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    shards = sorted((tmp_path / "sharded").glob("model-*-of-*.safetensors"))
    assert len(shards) > 2, "it must be sharded to mean anything"
    with pytest.raises(CheckpointError, match=r"it is one shard of a sharded checkpoint: give its folder"):
        load_eomt(preset_for(cfg, "panoptic", "coco_panoptic"), str(shards[0]))
    shards[1].unlink()
    with pytest.raises(CheckpointError, match=rf"lacks 1 of the {len(shards)} shards its index names \({shards[1].name}\)"
                                              r" — copy all its shards"):
        load_eomt(preset_for(cfg, "panoptic", "coco_panoptic"), str(tmp_path / "sharded"))


def test_a_save_pretrained_folder_whose_config_says_other_heads_or_class_names_is_refused(tmp_path):
    # Found probing as a researcher: config.json was never read, so 8 attention heads ran as the preset's
    # 4 (the tensors' shapes are the same) and a labels file with two names swapped published a disc as a box.
    import json

    from segstream.models.label_sets import read_label_set_file

    cfg = SMALL_CONFIGS[next(iter(SMALL_CONFIGS))]
    reference = reference_model(cfg, seed=1)
    names = ["円", "箱", "空"] + [f"c{i}" for i in range(3, cfg.num_classes)]
    reference.config.id2label = dict(enumerate(names))
    reference.config.label2id = {n: i for i, n in enumerate(names)}
    reference.save_pretrained(tmp_path / "saved")

    def own(order: list[str]) -> Preset:
        path = tmp_path / "labels.json"
        path.write_text(json.dumps({"name": "own", "classes": [{"id": i, "name": n, "isthing": True}
                                                               for i, n in enumerate(order)]}), encoding="utf-8")
        return replace(preset_for(cfg, "panoptic", "coco_panoptic"), label_set=read_label_set_file(path))

    _compare(load_eomt(own(names), str(tmp_path / "saved")).eval(), reference, torch.randn(1, 3, cfg.img_size, cfg.img_size))
    swapped = [names[1], names[0], *names[2:]]
    with pytest.raises(CheckpointError, match=r"names its classes otherwise than model.labels \('own'\) in its "
                                              r"config.json \(class 0 is '円' there, '箱' here\)"):
        load_eomt(own(swapped), str(tmp_path / "saved"))
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    # a training that named no classes left transformers' placeholders: nothing to hold the labels file against
    placeholders = {str(i): f"LABEL_{i}" for i in range(len(names))}
    (tmp_path / "saved" / "config.json").write_text(json.dumps({**config, "id2label": placeholders}))
    load_eomt(own(swapped), str(tmp_path / "saved"))
    (tmp_path / "saved" / "config.json").write_text(json.dumps({**config, "num_attention_heads": cfg.heads * 2}))
    with pytest.raises(CheckpointError, match=rf"another architecture than preset test's \(num_attention_heads "
                                              rf"{cfg.heads * 2} there, {cfg.heads} here\)"):
        load_eomt(own(names), str(tmp_path / "saved"))


def test_a_model_of_ones_own_classes_runs_with_model_labels(tmp_path):
    # Found probing: no documented way to run an EoMT trained on one's own classes
    import json

    import numpy as np

    from segstream.connectors.checkpoints import random_eomt
    from segstream.connectors.errors import ConfigError
    from segstream.pipeline.config import ModelConfig
    from segstream.pipeline.model_factory import build_segmenter, check_model_config

    tiny = get_preset("synthetic_eomt_tiny_256")
    names = [("pallet", True), ("forklift", True), ("floor", False)]
    labels = tmp_path / "warehouse.json"
    labels.write_text(json.dumps({"name": "warehouse", "classes": [
        {"id": i, "name": n, "isthing": t} for i, (n, t) in enumerate(names)]}))
    save_file(random_eomt(replace(tiny.config, num_classes=3), seed=3).state_dict(), tmp_path / "mine.safetensors")
    cfg = ModelConfig(checkpoint=str(tmp_path / "mine.safetensors"), labels=str(labels), device="cpu",
                      precision="fp32", score_threshold=0.3)
    adapter = build_segmenter(cfg, batch_size=1)
    assert adapter.labels.names == ("pallet", "forklift", "floor") and adapter.name == "synthetic_eomt_tiny_256:warehouse"
    (result,) = adapter.segment([np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)])
    assert len(result.segments) > 0 and set(result.segments.labels.tolist()) <= {"pallet", "forklift", "floor"}
    with pytest.raises(ConfigError, match="model.labels: a model of your own classes needs its weights"):
        check_model_config(ModelConfig(labels=str(labels)))
    labels.write_text(json.dumps({"name": "w", "classes": [{"id": 1, "name": "a", "isthing": True}]}))
    with pytest.raises(ValueError, match="contiguous from 0.*a label set is"):
        ModelConfig(checkpoint=str(tmp_path / "mine.safetensors"), labels=str(labels))


def test_a_hub_reference_without_dns_fails_at_once_in_one_line(monkeypatch, tmp_path):
    # Found probing: without network, hf:// took about 47 s and 22 lines of retries
    import socket

    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def no_network(*args, **kwargs):
        raise AssertionError("a download was tried although the hub's host does not resolve")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(CheckpointError, match="the model hub's host huggingface.co is not known here") as err:
        load_eomt(get_preset("coco_panoptic_eomt_large_640"))
    assert "model.checkpoint" in str(err.value) and "\n" not in str(err.value)


def test_validate_refuses_a_checkpoint_that_is_none_or_does_not_fit_without_loading_it(tmp_path, capsys):
    # Found probing: validate said "ok" for 4 KB of noise and for a checkpoint of another class count
    from segstream.connectors.checkpoints import shipped_weights
    from segstream.models.eomt import EoMT
    from segstream.pipeline.cli import main

    tiny = get_preset("synthetic_eomt_tiny_256")
    (tmp_path / "noise.bin").write_bytes(bytes(range(256)) * 16)
    save_file(EoMT(replace(tiny.config, num_classes=3)).state_dict(), tmp_path / "three.safetensors")
    torch.save({"state_dict": read_state_dict(shipped_weights(tiny.weights))}, tmp_path / "fits.pt")

    def validate(checkpoint: str) -> tuple[int, str]:
        config = tmp_path / "c.yaml"
        config.write_text("sources: [{name: s, type: synthetic, num_frames: 1}]\n"
                          f"model: {{preset: {tiny.name}, checkpoint: '{checkpoint}'}}\n")
        code = main(["validate", str(config)])
        return code, capsys.readouterr()

    code, out = validate(str(tmp_path / "noise.bin"))
    assert code == 2 and "model.checkpoint: checkpoint" in out.err and "is not a checkpoint" in out.err
    code, out = validate(str(tmp_path / "three.safetensors"))
    assert code == 2 and "does not fit preset synthetic_eomt_tiny_256" in out.err and "3 classes" in out.err
    code, out = validate(str(tmp_path / "fits.pt"))
    assert code == 0 and out.out.startswith("ok: 1 source, model synthetic_eomt_tiny_256"), out
    config = tmp_path / "c.yaml"
    config.write_text("sources: [{name: s, type: synthetic, num_frames: 1}]\n"
                      f"model: {{family: senatra, checkpoint: '{tmp_path / 'fits.pt'}'}}\n")
    assert main(["validate", str(config)]) == 2
    assert "it is an EoMT checkpoint: run it with an EoMT preset" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["synthetic_eomt_tiny_256", "synthetic_senatra_tiny_192"])
def test_a_labels_file_of_fewer_classes_than_the_checkpoint_says_the_two_counts(tmp_path, capsys, preset):
    # found probing: an 8-class checkpoint with a 5-class labels file read "class_head.bias: shape (9,),
    # expected (6,) ... use model.preset synthetic_eomt_tiny_256", the preset already set
    import json

    from segstream.pipeline.cli import main
    from segstream.pipeline.config import ModelConfig
    from segstream.pipeline.model_factory import build_segmenter

    weights = Path(__file__).resolve().parents[1] / "models" / "weights" / f"{preset}.safetensors"
    labels = tmp_path / "five.json"
    labels.write_text(json.dumps({"name": "five", "classes": [
        {"id": i, "name": f"c{i}", "isthing": i < 2} for i in range(5)]}))
    said = (f"model.labels ('five') names 5 classes while the class head of checkpoint '{weights}' has 8 — fix the "
            "labels file or the checkpoint")
    family = "senatra" if "senatra" in preset else "eomt"
    cfg = ModelConfig(family=family, preset=preset, checkpoint=str(weights), labels=str(labels), device="cpu")
    with pytest.raises(CheckpointError) as raised:
        build_segmenter(cfg, batch_size=1)
    assert str(raised.value).startswith(said), raised.value
    config = tmp_path / "site.yaml"
    config.write_text(f"sources: [{{name: s, type: synthetic}}]\nmodel: {{family: {family}, preset: {preset}, "
                      f"checkpoint: '{weights}', labels: '{labels}'}}\n")
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert said in err and "class_head" not in err and "head.fc2" not in err, err
