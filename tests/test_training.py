"""The training recipe: matching, losses, masked-attention annealing, and a loss that falls."""

from __future__ import annotations

import numpy as np
import torch
from safetensors import safe_open

from segstream.connectors.synthetic import SyntheticScene
from segstream.models.criterion import LossWeights, Target, mask_classification_loss, match
from segstream.models.eomt import EoMT
from segstream.pipeline.training import (
    PatchClassifier,
    TrainSettings,
    annealing,
    save_model,
    smoke_config,
    train,
    training_targets,
)


def test_training_steps_lower_the_loss_on_a_tiny_config():
    settings = TrainSettings(config=smoke_config(), steps=20, batch_size=2, fixed_batch=True, lr=2e-3, warmup=0.05)
    model, report = train(settings, progress=False)
    assert report.steps == 20 and len(report.losses) == 20
    assert sum(report.losses[-3:]) / 3 < 0.9 * sum(report.losses[:3]) / 3
    assert float(model.attn_mask_probs.sum()) == 0, "the saved model runs without masked attention"


def test_annealing_staggers_blocks_and_ends_unmasked():
    assert annealing(0.0, 3) == [1.0, 1.0, 1.0]
    assert annealing(0.8, 3) == [0.0, 0.0, 0.0]
    middle = annealing(0.35, 3)
    assert 0 < middle[0] < middle[1] < middle[2] == 1.0  # earliest block anneals first
    values = [annealing(p / 100, 2)[0] for p in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_matching_pairs_each_target_with_the_query_that_predicts_it():
    masks = torch.zeros(2, 8, 8)
    masks[0, :4] = 1
    masks[1, 4:] = 1
    target = Target(classes=torch.tensor([3, 1]), masks=masks)
    mask_logits = torch.full((5, 8, 8), -8.0)
    mask_logits[4] = masks[0] * 16 - 8  # query 4 predicts target 0
    mask_logits[2] = masks[1] * 16 - 8  # query 2 predicts target 1
    class_logits = torch.zeros(5, 6)
    class_logits[4, 3] = 5
    class_logits[2, 1] = 5
    rows, cols = match(mask_logits, class_logits, target, LossWeights())
    assert dict(zip(rows.tolist(), cols.tolist())) == {4: 0, 2: 1}
    good = mask_classification_loss(mask_logits[None], class_logits[None], [target])
    swapped = mask_classification_loss(mask_logits[None], class_logits[None], [Target(torch.tensor([1, 3]), masks)])
    assert sum(good.values()) < sum(swapped.values())


def test_masked_attention_keeps_queries_inside_their_masks():
    model = EoMT(smoke_config()).eval()
    cfg = model.cfg
    mask_logits = torch.full((1, cfg.num_queries, cfg.mask_size, cfg.mask_size), -5.0)
    mask_logits[0, 0, : cfg.mask_size // 2] = 5.0  # query 0 covers the top half
    tokens = cfg.num_queries + model.num_prefix_tokens + cfg.grid_size**2
    attn = model._attention_mask(mask_logits, torch.tensor(1.0), tokens)
    patches = attn[0, 0, cfg.num_queries + model.num_prefix_tokens :].view(cfg.grid_size, cfg.grid_size)
    assert patches[: cfg.grid_size // 2].all() and not patches[cfg.grid_size // 2 :].any()
    assert attn[0, 0, : cfg.num_queries + model.num_prefix_tokens].all()  # queries and prefix stay visible
    assert attn[0, cfg.num_queries :].all()  # patches and prefix tokens are never masked
    assert model._attention_mask(mask_logits, torch.tensor(0.0), tokens) is None

    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model.attn_mask_probs.fill_(1.0)
        masked = model.forward_train(pixels)[-1][0]
        model.attn_mask_probs.zero_()
        unmasked = model.forward_train(pixels)[-1][0]
        plain = model(pixels).mask_logits
    assert torch.allclose(unmasked, plain, atol=1e-5), "with annealing done, training and inference agree"
    assert not torch.equal(masked, plain), "the mask reaches the attention of the query blocks"


def test_targets_follow_the_letterbox_of_the_input():
    cfg = smoke_config()
    _, truth = SyntheticScene(width=128, height=96, seed=3).render()
    target, _ = training_targets(truth, cfg)
    assert target.masks.shape[1:] == (cfg.mask_size, cfg.mask_size)
    # 128x96 letterboxed to 64: the bottom quarter is padding, owned by no segment.
    assert target.masks[:, 12:].sum() == 0
    assert torch.allclose(target.masks[:, :12].sum(0), torch.ones(12, 16))


def test_targets_sit_where_the_scaled_image_s_pixels_do():
    # Found by a geometry audit: the label map was scaled with torch's legacy nearest (the label at
    # each output pixel's corner), half a source pixel off the image, and the shipped model learnt to
    # draw its masks about 0.4 input pixels down-right. Each segment's centroid in the target, against
    # where its pixels' centroid lands in the target's cells (centre-aligned scaling), over two scenes.
    cfg = smoke_config()
    shifts = []
    for seed in (3, 4):
        _, truth = SyntheticScene(width=256, height=192, seed=seed).render()
        target, _ = training_targets(truth, cfg)
        cell = truth.width / cfg.mask_size  # frame pixels per mask cell (the letterbox keeps the ratio)
        assert len(target.masks) == len(truth.segments)  # a target mask for each segment, in order
        for mask, segment in zip(target.masks, truth.segments.ids.tolist(), strict=True):
            rows, cols = np.nonzero(truth.label_map == segment)
            if len(rows) < 400:  # a few cells: their centroid says little
                continue
            weights = mask / mask.sum()
            got = [(weights.sum(1) * torch.arange(mask.shape[0])).sum(), (weights.sum(0) * torch.arange(mask.shape[1])).sum()]
            want = [(rows.mean() + 0.5) / cell - 0.5, (cols.mean() + 0.5) / cell - 0.5]
            shifts.append([float(g - w) for g, w in zip(got, want)])
    mean = np.mean(shifts, axis=0)
    assert len(shifts) >= 6 and np.all(np.abs(mean) < 0.04), (len(shifts), mean)  # the legacy scaling: +0.125 each way


def test_patch_class_loss_takes_part_in_training():
    def final_weights(weight: float) -> torch.Tensor:
        settings = TrainSettings(
            config=smoke_config(), steps=2, batch_size=2, fixed_batch=True, patch_class_weight=weight
        )
        model, _ = train(settings, progress=False)
        return model.blocks[0].attn.qkv.weight.detach().clone()

    # Same seed, same data: only the auxiliary loss's gradient through the encoder can differ.
    assert torch.equal(final_weights(0.0), final_weights(0.0))
    assert not torch.equal(final_weights(0.0), final_weights(2.0))


def test_encoder_tokens_are_the_patches_entering_the_first_query_block():
    model = EoMT(smoke_config()).eval()
    cfg = model.cfg
    pixels = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    tokens: list[torch.Tensor] = []
    with torch.no_grad():
        model.forward_train(pixels, tokens)
        x = model.embed(pixels)
        for block in model.blocks[: cfg.depth - cfg.num_query_blocks]:
            x = block(x)
    assert len(tokens) == 1 and tokens[0].shape == (2, cfg.grid_size**2, cfg.dim)
    assert torch.equal(tokens[0], x[:, model.num_prefix_tokens :])


def test_patch_class_shares_follow_the_classes_and_the_letterbox():
    cfg = smoke_config()
    _, truth = SyntheticScene(width=128, height=96, seed=3).render()
    _, shares = training_targets(truth, cfg)
    g = cfg.grid_size
    assert shares.shape == (g * g, cfg.num_classes)
    grid = shares.view(g, g, cfg.num_classes)
    # 128x96 letterboxed to 64x48: the last row of 16-pixel patches is padding.
    assert grid[3].sum() == 0
    assert torch.allclose(grid[:3].sum(-1), torch.ones(3, g))
    areas = torch.zeros(cfg.num_classes)
    areas.index_add_(0, torch.from_numpy(truth.segments.class_ids).long(),
                     torch.from_numpy(truth.segments.areas).float())
    assert torch.allclose(grid[:3].mean((0, 1)), areas / areas.sum(), atol=0.03)


def test_patch_class_loss_is_soft_cross_entropy_over_image_patches_only():
    cfg = smoke_config()
    head = PatchClassifier(cfg)
    tokens = torch.randn(1, 3, cfg.dim)
    shares = torch.zeros(1, 3, cfg.num_classes)
    shares[0, 0, 2] = 1.0
    shares[0, 1, 2:4] = 0.5
    # patch 2 is padding: whatever it predicts costs nothing
    log_probs = torch.log_softmax(head.head(head.norm(tokens[0, :2])), -1)
    expected = -(log_probs[0, 2] + 0.5 * (log_probs[1, 2] + log_probs[1, 3])) / 2
    assert torch.allclose(head.loss(tokens, shares), expected)
    tokens[0, 2] = 1e3 * torch.randn(cfg.dim)
    assert torch.allclose(head.loss(tokens, shares), expected)


def test_saved_weights_carry_the_architecture(tmp_path):
    model = EoMT(smoke_config())
    save_model(model, tmp_path / "m.safetensors", {"steps": 3})
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "segstream" and '"dim": 48' in meta["config"] and meta["steps"] == "3"


def test_a_run_that_diverges_stops_in_one_line_naming_the_step_and_writes_nothing(tmp_path):
    # found probing: --lr 10 wrote weights of 110 NaN tensors with exit 0; --lr 1e4 died in scipy's matching
    import pytest

    from segstream.connectors.errors import TrainingDiverged

    settings = TrainSettings(config=smoke_config(), steps=3, batch_size=1, fixed_batch=True, lr=1e6, warmup=0.0)
    with pytest.raises(TrainingDiverged) as diverged:
        train(settings, progress=False)
    line = str(diverged.value)
    assert line.startswith("training diverged at step 2: ") and "lower --lr" in line and "\n" not in line, line
    model = EoMT(smoke_config())
    with torch.no_grad():
        model.q.weight.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="at its first step: the model's predictions are NaN or infinite"):
        train(TrainSettings(config=smoke_config(), steps=1, batch_size=1, fixed_batch=True), model=model,
              progress=False)
    with pytest.raises(TrainingDiverged, match=r"1 of the \d+ tensors \(e.g. q.weight\) are NaN or infinite"):
        save_model(model, tmp_path / "model.safetensors", {})
    assert list(tmp_path.iterdir()) == []


def test_matching_refuses_predictions_that_are_not_finite():
    import pytest

    target = Target(torch.tensor([1]), torch.ones(1, 4, 4))
    logits = torch.zeros(3, 4, 4)
    logits[0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or infinity"):
        match(logits, torch.zeros(3, 4), target, LossWeights())
