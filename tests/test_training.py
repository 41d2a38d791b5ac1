"""The training recipe: matching, losses, masked-attention annealing, and a loss that falls."""

from __future__ import annotations

import torch
from safetensors import safe_open

from connectors.synthetic import SyntheticScene
from models.criterion import LossWeights, Target, mask_classification_loss, match
from models.eomt import EoMT
from pipeline.training import TrainSettings, annealing, save_model, smoke_config, target_from_truth, train


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
    target = target_from_truth(truth, cfg)
    assert target.masks.shape[1:] == (cfg.mask_size, cfg.mask_size)
    # 128x96 letterboxed to 64: the bottom quarter is padding, owned by no segment.
    assert target.masks[:, 12:].sum() == 0
    assert torch.allclose(target.masks[:, :12].sum(0), torch.ones(12, 16))


def test_saved_weights_carry_the_architecture(tmp_path):
    model = EoMT(smoke_config())
    save_model(model, tmp_path / "m.safetensors", {"steps": 3})
    with safe_open(str(tmp_path / "m.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "segstream" and '"dim": 48' in meta["config"] and meta["steps"] == "3"
