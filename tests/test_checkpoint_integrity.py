"""Checkpoints that are broken, cut short or misnamed: refused in one line that says which, before
a run publishes what they make."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from segstream.connectors.checkpoints import check_checkpoint, load_eomt, read_state_dict, shipped_weights
from segstream.connectors.errors import CheckpointError
from segstream.models.presets import get_preset

TINY = get_preset("synthetic_eomt_tiny_256")


@pytest.fixture(scope="module")
def shipped_state() -> dict[str, torch.Tensor]:
    return read_state_dict(shipped_weights(TINY.weights))


def test_weights_holding_nan_are_refused_by_the_loader_and_by_validate(tmp_path, shipped_state):
    # found probing: a diverged run's weights (110 NaN tensors) loaded, validated ok, and published empty frames
    broken = dict(shipped_state)
    broken["class_head.weight"] = broken["class_head.weight"].clone()
    broken["class_head.weight"][0, 0] = float("nan")
    broken["q.weight"] = torch.full_like(broken["q.weight"], float("inf"))
    path = tmp_path / "diverged.safetensors"
    save_file(broken, str(path))
    said = f"checkpoint '{path}' holds NaN or infinite weights in 2 of its {len(broken)} tensors (e.g. "
    for check in (load_eomt, check_checkpoint):
        with pytest.raises(CheckpointError) as refused:
            check(TINY, str(path))
        assert str(refused.value).startswith(said) and "\n" not in str(refused.value), refused.value
    torch.save(broken, tmp_path / "diverged.pt")
    with pytest.raises(CheckpointError, match="holds NaN or infinite weights in 2 of"):
        check_checkpoint(TINY, str(tmp_path / "diverged.pt"))


def test_a_truncated_download_is_said_to_be_one_with_both_sizes(tmp_path, shipped_state):
    # found probing: "is not a checkpoint" and "must be a safetensors file" for a safetensors file cut short
    whole = shipped_weights(TINY.weights).read_bytes()
    half = tmp_path / "half.safetensors"
    half.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match=rf"is truncated: its header says {len(whole)} bytes, the file has "
                                              rf"{len(whole) // 2} — download or copy it again"):
        read_state_dict(half)
    header = tmp_path / "header.safetensors"
    header.write_bytes(whole[:64])
    with pytest.raises(CheckpointError, match=r"is truncated: its safetensors header alone is \d+ bytes, the file "
                                              "has 64"):
        check_checkpoint(TINY, str(header))
    torch.save(shipped_state, tmp_path / "whole.pt")
    cut = tmp_path / "cut.pt"
    cut.write_bytes((tmp_path / "whole.pt").read_bytes()[:100_000])
    with pytest.raises(CheckpointError) as refused:
        read_state_dict(cut)
    line = str(refused.value)
    assert "is truncated" in line and "miniz" not in line and "\n" not in line, line
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\)"):
        read_state_dict(tmp_path / "empty.safetensors")


def test_a_pytorch_file_under_a_safetensors_name_is_read_by_its_first_bytes(tmp_path, shipped_state):
    # found probing: torch.load sends any path ending .safetensors to safetensors: "header too large"
    path = tmp_path / "model.safetensors"
    torch.save({"state_dict": shipped_state}, path)
    check_checkpoint(TINY, str(path))
    model = load_eomt(TINY, str(path))
    assert torch.equal(model.state_dict()["q.weight"], shipped_state["q.weight"])


def test_a_checkpoint_of_the_preset_s_shape_with_a_tensor_missing_or_extra_is_not_told_to_use_that_preset(
        tmp_path, shipped_state):
    # found probing: "missing keys (1): mask_head.4.bias ... use model.preset synthetic_eomt_tiny_256", the preset set
    missing = {k: v for k, v in shipped_state.items() if k != "mask_head.4.bias"}
    extra = {**shipped_state, "extra.head.weight": torch.zeros(2)}
    for state, named in ((missing, "missing keys (1): mask_head.4.bias"),
                         (extra, "unexpected keys (1): extra.head.weight")):
        save_file(state, str(tmp_path / "odd.safetensors"))
        for check in (load_eomt, check_checkpoint):
            with pytest.raises(CheckpointError) as refused:
                check(TINY, str(tmp_path / "odd.safetensors"))
            line = str(refused.value)
            assert named in line and "its architecture is this preset's" in line, line
            assert "use model.preset" not in line
