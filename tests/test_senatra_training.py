"""SeNaTra's training recipe: targets on the stem grid, the grouping and embedding losses, and a
loss that falls."""

from __future__ import annotations

import torch

from segstream.connectors.synthetic import SyntheticScene
from segstream.models.senatra import SeNaTraConfig
from segstream.pipeline.senatra_training import (
    NativeTarget,
    SeNaTraTrainSettings,
    embedding_loss,
    grouping_loss,
    native_target,
    train_senatra,
)

TINY = SeNaTraConfig(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), heads=(1, 2, 2, 4), kernel_size=3, num_classes=8,
                     embed_dim=4, input_size=64)


def test_targets_hold_each_stem_cells_segment_shares_and_nothing_on_padding():
    _, truth = SyntheticScene(width=128, height=96, seed=3).render()
    target = native_target(truth, (48, 64), (52, 64))  # scaled 64x48, padded to 64x52
    shares = target.segments.view(len(truth.segments), 13, 16)
    assert torch.allclose(shares[:, :12].sum(0), torch.ones(12, 16))
    assert shares[:, 12].sum() == 0
    assert target.classes.tolist() == truth.segments.class_ids.tolist()
    areas = torch.from_numpy(truth.segments.areas).float()
    assert torch.allclose(shares[:, :12].mean((1, 2)), areas / areas.sum(), atol=0.03)


def _two_segments() -> NativeTarget:
    # Four stem cells: cells 0, 1 in segment 0 (a thing), cells 2, 3 in segment 1 (another thing).
    return NativeTarget(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]), torch.tensor([0, 0]),
                        torch.tensor([True, True]))


def test_grouping_loss_is_lowest_when_no_token_straddles_two_segments():
    target = _two_segments()
    pure = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    straddling = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    soft = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    losses = [float(grouping_loss(m[None], [target])[0]) for m in (pure, soft, straddling)]
    assert losses[0] < 1e-5 < losses[1] < losses[2]
    _, mass = grouping_loss(pure[None], [target])
    assert torch.equal(mass[0], torch.tensor([[2.0, 0.0], [0.0, 2.0]]))


def test_embedding_loss_pulls_tokens_of_one_instance_and_pushes_instances_apart():
    target = _two_segments()
    mass = [torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])]  # tokens 0, 1 hold instance 0, token 2 instance 1
    apart = torch.tensor([[[0.0, 0.0], [0.1, 0.0], [4.0, 0.0]]])
    close = torch.tensor([[[0.0, 0.0], [0.1, 0.0], [1.0, 0.0]]])
    spread = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [8.0, 0.0]]])
    assert float(embedding_loss(apart, mass, [target])) < 0.01
    assert float(embedding_loss(close, mass, [target])) > 1.0
    assert float(embedding_loss(spread, mass, [target])) > 0.1
    stuff = NativeTarget(target.segments, target.classes, torch.tensor([False, False]))
    assert float(embedding_loss(close, mass, [stuff])) == 0, "stuff tokens need no instance embedding"


def test_training_steps_lower_the_loss_on_a_tiny_config():
    settings = SeNaTraTrainSettings(config=TINY, steps=25, batch_size=2, fixed_batch=True, lr=3e-3, scenes=2)
    model, report = train_senatra(settings, progress=False)
    assert report.steps == 25 and set(report.parts) == {"semantic", "grouping", "embedding"}
    assert sum(report.losses[-3:]) / 3 < 0.9 * sum(report.losses[:3]) / 3
    assert not model.training


def test_a_step_with_a_non_finite_gradient_is_skipped_not_applied():
    from segstream.models.senatra import SeNaTra

    torch.manual_seed(0)
    model = SeNaTra(TINY)
    with torch.no_grad():
        model.head.fc2.bias[0] = float("inf")  # every loss and gradient is non-finite
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = SeNaTraTrainSettings(config=TINY, steps=2, batch_size=2, fixed_batch=True, scenes=2)
    model, report = train_senatra(settings, model=model, progress=False)
    assert report.steps == 2 and report.skipped == 2
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_weights_no_preset_runs_are_said_with_what_reads_them(tmp_path, capsys):
    """Found probing as a researcher: the uniform-downsampling ablation's run ended "run them with
    model: {preset: synthetic_senatra_tiny_192, ...}", which refuses them."""
    from types import SimpleNamespace

    from segstream.pipeline.train_cli import finish

    args = SimpleNamespace(out=tmp_path / "uniform.safetensors", name=None)
    for hint, said in (("the ablation: benchmarks/senatra_grouping.py reads them", "the ablation: benchmarks/"),
                       ({"family": "senatra"}, 'run them with  model: {"family": "senatra", "checkpoint": ')):
        assert finish(args, SimpleNamespace(stopped=False), [], lambda path, meta: path.write_bytes(b"weights"),
                      {"preset": "synthetic_senatra_tiny_192"}, None, hint) == 0
        assert capsys.readouterr().err.startswith(f"weights in {args.out}; {said}")
