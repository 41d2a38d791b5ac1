"""SeNaTra: grouping-layer invariants, sparse vs dense agreement, composition, nested hierarchies."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from segstream.models.senatra import (
    Assignment,
    SeNaTra,
    SeNaTraConfig,
    SpatialGrouping,
    carry,
    compose,
    config_for_size,
    densify,
    hierarchy,
    memberships,
    panoptic_segments,
)

# Odd and even grids, small enough for float64 on the CPU.
GRIDS = [(7, 5), (6, 8), (3, 3), (1, 4)]

# A model that runs in milliseconds: odd grids at every level for a 40 x 56 image.
SMALL = SeNaTraConfig(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), heads=(1, 2, 2, 4), kernel_size=3, num_classes=5)


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial weights everywhere (LayerNorm affines and biases too) so no term vanishes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5 + (1.0 if p.ndim == 1 else 0.0))


def _pair(dim_in=4, dim_out=8, iters=3, seed=0):
    """The same grouping layer twice: sparse unfold/fold and dense masked, float64."""
    sparse = SpatialGrouping(dim_in, dim_out, local=True, sparse=True, iters=iters, mlp_ratio=2.0).double()
    _randomise(sparse, seed)
    dense = SpatialGrouping(dim_in, dim_out, local=True, sparse=False, iters=iters, mlp_ratio=2.0).double()
    dense.load_state_dict(sparse.state_dict())
    return sparse, dense


def _tokens(grid, dim=4, batch=2, seed=1):
    return torch.randn(batch, *grid, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _allowed(grid):
    """N x M bool: the 3x3 output cells around each input token's home cell, built by brute force."""
    h, w = grid
    ho, wo = (h + 1) // 2, (w + 1) // 2
    allowed = torch.zeros(h * w, ho * wo, dtype=torch.bool)
    for i in range(h):
        for j in range(w):
            for a in range(ho):
                for b in range(wo):
                    allowed[i * w + j, a * wo + b] = abs(a - i // 2) <= 1 and abs(b - j // 2) <= 1
    return allowed


@pytest.mark.parametrize("grid", GRIDS)
def test_rows_of_a_up_sum_to_one_dense_and_sparse(grid):
    sparse, dense = _pair()
    x = _tokens(grid)
    for layer in (sparse, dense):
        _, a = layer(x)
        rows = densify(a).sum(-1)
        assert rows.shape == (2, grid[0] * grid[1])
        assert torch.allclose(rows, torch.ones_like(rows), atol=1e-12)
    # Dense grouping (G3) too.
    layer = SpatialGrouping(4, 8, local=False).double()
    _randomise(layer)
    _, a = layer(x)
    assert a.index is None and torch.allclose(a.weights.sum(-1), torch.ones(2, grid[0] * grid[1], dtype=torch.float64))


@pytest.mark.parametrize("grid", GRIDS)
def test_local_layers_put_no_mass_outside_the_3x3_neighbourhood(grid):
    sparse, dense = _pair()
    allowed = _allowed(grid)
    x = _tokens(grid)
    for layer in (sparse, dense):
        a_up = densify(layer(x)[1])
        assert torch.all(a_up[:, ~allowed] == 0), "mass outside the neighbourhood (or off the grid)"
        # Not vacuous: every allowed cell, border cells included, gets some mass.
        assert torch.all(a_up[:, allowed] > 0)


@pytest.mark.parametrize("grid", GRIDS)
def test_sparse_and_dense_grouping_agree_in_float64(grid):
    sparse, dense = _pair()
    x = _tokens(grid)
    y_sparse, a_sparse = sparse(x)
    y_dense, a_dense = dense(x)
    assert a_sparse.index is not None and a_sparse.weights.shape[-1] == 9 and a_dense.index is None
    assert y_sparse.shape == y_dense.shape == (2, (grid[0] + 1) // 2, (grid[1] + 1) // 2, 8)
    assert y_dense.std() > 0.1 and a_dense.weights.std() > 1e-3
    assert torch.allclose(y_sparse, y_dense, atol=1e-10, rtol=0)
    assert torch.allclose(densify(a_sparse), a_dense.weights, atol=1e-10, rtol=0)


@pytest.mark.parametrize("sparse", [True, False])
def test_grouping_layer_passes_gradcheck(sparse):
    layer = SpatialGrouping(3, 4, local=True, sparse=sparse, iters=2, mlp_ratio=1.0).double()
    _randomise(layer, seed=3)
    x = _tokens((3, 5), dim=3, batch=1).requires_grad_()

    def outputs(t):
        y, a = layer(t)
        return y, a.weights

    assert torch.autograd.gradcheck(outputs, (x,), eps=1e-6, atol=1e-5)


def _model(seed=0, **overrides) -> SeNaTra:
    torch.manual_seed(seed)
    model = SeNaTra(replace(SMALL, **overrides)).double().eval()
    _randomise(model, seed)
    return model


def _image(h=40, w=56, seed=2):
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_composed_assignments_stay_row_stochastic_and_match_dense_products():
    with torch.no_grad():
        out = _model()(_image())
    a1, a2, a3 = out.assignments
    assert [a.weights.shape[-1] for a in out.assignments] == [9, 9, a3.num_out]
    product = densify(a1)
    for level in (1, 2, 3):
        p = memberships(out.assignments, level)
        if level > 1:
            product = product @ densify(out.assignments[level - 1])
        assert torch.allclose(p.weights.sum(-1), torch.ones(1, 10 * 14, dtype=torch.float64), atol=1e-12)
        assert torch.allclose(densify(p), product, atol=1e-12)
    # Two local layers compose to at most a 4x4 window (3 x 4 here: the level-2 grid), not 81 entries.
    assert memberships(out.assignments, 2).weights.shape[-1] == 12
    assert torch.all(memberships(out.assignments, 3).weights >= 0)


def test_hierarchical_label_maps_nest():
    with torch.no_grad():
        out = _model()(_image(72, 88, seed=1))
    levels = hierarchy(out.assignments)
    assert [m.shape for m in levels.maps] == [(1, 18, 22)] * 3
    for fine, coarse, link in zip(levels.maps, levels.maps[1:], levels.parents[1:]):
        fine, coarse = fine[0].flatten(), coarse[0].flatten()
        # Every finer segment lies inside exactly one coarser segment, its recorded parent.
        for segment in fine.unique():
            assert coarse[fine == segment].unique().tolist() == [int(link[0, segment])]
        assert len(fine.unique()) > len(coarse.unique()) > 1  # real hierarchy, not one blob


def test_pixel_logits_equal_an_explicit_dense_composition():
    with torch.no_grad():
        out = _model(seed=6)(_image(seed=7))
    product = densify(out.assignments[0]) @ densify(out.assignments[1]) @ densify(out.assignments[2])
    expected = (product @ out.class_logits).transpose(1, 2).reshape(1, 5, 10, 14)
    assert out.pixel_logits.shape == (1, 5, 10, 14)
    assert out.pixel_logits.std() > 1e-2
    assert torch.allclose(out.pixel_logits, expected, atol=1e-10)
    level1 = densify(out.assignments[1]) @ densify(out.assignments[2]) @ out.class_logits
    assert torch.allclose(carry(out.assignments[1:], out.class_logits), level1, atol=1e-10)


def test_sparse_and_dense_masked_models_agree():
    sparse_model = _model(seed=8)
    dense_model = _model(seed=8, sparse_grouping=False)
    image = _image(seed=9)
    with torch.no_grad():
        a, b = sparse_model(image), dense_model(image)
    assert torch.allclose(a.pixel_logits, b.pixel_logits, atol=1e-10)
    assert a.assignments[0].index is not None and b.assignments[0].index is None


def test_compose_sparse_with_sparse_coalesces_repeated_cells():
    # Every input goes to output 0 through two different middle tokens: one summed column.
    first = Assignment(torch.tensor([[[0.25, 0.75]]]), torch.tensor([[0, 1]]), (1, 1), (1, 2))
    second = Assignment(torch.tensor([[[1.0], [1.0]]]), torch.tensor([[0], [0]]), (1, 2), (1, 1))
    both = compose(first, second)
    assert both.weights.shape == (1, 1, 1) and float(both.weights) == 1.0


def test_panoptic_segments_merge_stuff_per_class_and_touching_things():
    final_map = torch.tensor(
        [
            [0, 1, 1, 0, 2],
            [0, 3, 1, 0, 2],
            [4, 4, 4, 4, 5],
        ]
    )
    # tokens: 0 sky(stuff 0), 1 car(thing 2), 2 sky, 3 car touching 1, 4 road(stuff 1), 5 car apart
    classes = torch.tensor([0, 2, 0, 2, 1, 2, 2])  # token 6 owns no position
    thing = torch.tensor([False, False, True])
    seg = panoptic_segments(final_map, classes, thing)
    assert seg.classes.tolist() == [0, 2, 1, 2]
    assert seg.isthing.tolist() == [False, True, False, True]
    expected = torch.tensor([[0, 1, 1, 0, 0], [0, 1, 1, 0, 0], [2, 2, 2, 2, 3]])
    assert torch.equal(seg.label_map, expected)
    assert torch.equal(panoptic_segments(final_map, classes, thing).label_map, seg.label_map)  # deterministic


def test_tiny_forward_shapes_grouping_and_uniform():
    for downsampling in ("grouping", "uniform"):
        model = SeNaTra(config_for_size("tiny", num_classes=7, downsampling=downsampling)).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, 72, 56))
        assert out.class_logits.shape == (1, 3 * 2, 7)  # 18x14 -> 9x7 -> 5x4 -> 3x2
        assert out.tokens.shape == (1, 6, 512)
        assert out.pixel_logits.shape == (1, 7, 18, 14)
        assert [a.out_grid for a in out.assignments] == [(9, 7), (5, 4), (3, 2)]
        levels = hierarchy(out.assignments)
        assert levels.maps[-1].max() < 6
    # Uniform downsampling is the hard 2x2 grid: pixel logits are the final logits, upsampled.
    assert torch.equal(out.pixel_logits[0, :, 0, 0], out.class_logits[0, 0])
    assert torch.equal(out.pixel_logits[0, :, 17, 13], out.class_logits[0, 5])


def test_tiny_and_base_sizes():
    tiny, base = config_for_size("tiny"), config_for_size("base")
    assert tiny.dims == (64, 128, 256, 512) and tiny.depths == (3, 4, 18, 5)
    assert base.dims == (128, 256, 512, 1024) and base.depths == (3, 4, 18, 5)
    count = lambda cfg: sum(p.numel() for p in SeNaTra(cfg).parameters())  # noqa: E731
    tiny_params = count(tiny)
    uniform_params = count(config_for_size("tiny", downsampling="uniform"))
    assert 25e6 < uniform_params < tiny_params < 40e6  # NAT-T is 28M; grouping adds q/k/v/MLP
    model = SeNaTra(config_for_size("base", num_classes=3)).eval()
    assert 85e6 < sum(p.numel() for p in model.parameters()) < 130e6
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.pixel_logits.shape == (1, 3, 16, 16) and out.tokens.shape == (1, 4, 1024)


def test_config_rejects_inconsistent_sizes():
    with pytest.raises(ValueError, match="head width"):
        SeNaTraConfig(dims=(8, 16, 32, 64), heads=(3, 2, 2, 4))
    with pytest.raises(ValueError, match="uniform"):
        SeNaTraConfig(downsampling="pool")
    with pytest.raises(ValueError, match="known sizes"):
        config_for_size("huge")


def test_neighbourhood_attention_matches_masked_full_attention():
    from segstream.models.senatra import NeighbourhoodAttention, rope_2d

    attn = NeighbourhoodAttention(dim=16, heads=2, kernel_size=3, rope_theta=100.0).double()
    _randomise(attn, seed=11)
    h, w, k = 5, 4, 3
    x = _tokens((h, w), dim=16, batch=1, seed=12)
    # NAT's window, brute force: k consecutive positions around i, shifted inward at the borders.
    starts = lambda n: [min(max(i - k // 2, 0), n - k) for i in range(n)]  # noqa: E731
    sy, sx = starts(h), starts(w)
    queries, keys = [(i, j) for i in range(h) for j in range(w)], [(a, b) for a in range(h) for b in range(w)]
    allowed = torch.tensor([[sy[i] <= a < sy[i] + k and sx[j] <= b < sx[j] + k for a, b in keys] for i, j in queries])
    q, kk, v = attn.qkv(x).view(1, h, w, 3, 2, 8).permute(3, 0, 4, 1, 2, 5)
    q, kk = rope_2d(q, 100.0).flatten(2, 3), rope_2d(kk, 100.0).flatten(2, 3)
    full = torch.nn.functional.scaled_dot_product_attention(q, kk, v.flatten(2, 3), attn_mask=allowed)
    expected = attn.proj(full.permute(0, 2, 1, 3).reshape(1, h, w, 16))
    assert torch.allclose(attn(x), expected, atol=1e-12)


def test_rope_logits_depend_on_relative_position_only():
    from segstream.models.senatra import rope_2d

    g = torch.Generator().manual_seed(13)
    q, k = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    rq = rope_2d(q.expand(1, 1, 6, 6, 8), 100.0)[0, 0]
    rk = rope_2d(k.expand(1, 1, 6, 6, 8), 100.0)[0, 0]
    logit = lambda a, b: float(rq[a] @ rk[b])  # noqa: E731
    assert logit((0, 0), (2, 1)) == pytest.approx(logit((3, 4), (5, 5)), abs=1e-12)
    assert logit((1, 2), (1, 0)) == pytest.approx(logit((4, 5), (4, 3)), abs=1e-12)
    assert abs(logit((0, 0), (2, 1)) - logit((0, 0), (1, 2))) > 1e-3  # rows and columns differ


def test_panoptic_segments_split_touching_things_whose_embeddings_differ():
    final_map = torch.tensor([[0, 0, 1, 1, 2], [3, 3, 3, 3, 3]])
    classes = torch.tensor([2, 2, 2, 1])  # tokens 0, 1, 2: one thing class, all touching in a row; 3 stuff
    thing = torch.tensor([False, False, True])
    embeddings = torch.tensor([[0.0, 0.0], [0.5, 0.0], [5.0, 0.0], [0.0, 9.0]])
    merged = panoptic_segments(final_map, classes, thing)
    assert merged.classes.tolist() == [2, 1]  # without embeddings touching things are one instance
    split = panoptic_segments(final_map, classes, thing, embeddings, margin=1.5)
    assert split.classes.tolist() == [2, 2, 1]
    assert torch.equal(split.label_map, torch.tensor([[0, 0, 0, 0, 1], [2, 2, 2, 2, 2]]))


@pytest.mark.parametrize("local,sparse", [(True, True), (True, False), (False, False)])
def test_output_tokens_left_without_mass_keep_gradients_finite(local, sparse):
    # Huge logits saturate the softmax: A_up is exactly one-hot and some output tokens get no
    # mass at all. Dividing by that zero column sum once made the weights NaN in training.
    layer = SpatialGrouping(4, 8, local=local, sparse=sparse, iters=3, mlp_ratio=2.0)
    _randomise(layer, seed=4)
    with torch.no_grad():
        layer.k.weight.mul_(1e4)
    x = torch.randn(2, 6, 8, 4, generator=torch.Generator().manual_seed(5), requires_grad=True)
    y, a = layer(x)
    dense = densify(a)
    assert (dense.sum(1) == 0).any(), "the case under test: an output token with no mass"
    (y.square().mean() + a.weights.sum()).backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)
