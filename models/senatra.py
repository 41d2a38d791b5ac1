"""SeNaTra: Native Segmentation Vision Transformers (Brasó, Ošep, Leal-Taixé, arXiv 2505.16993).

A four-stage backbone like NAT/Swin (4x4 patch stem; strides 4, 8, 16, 32; channels doubling per
stage; neighbourhood-attention blocks) whose three downsampling steps are *spatial grouping
layers* instead of patch merging. Each grouping layer softly assigns every input token to the
output tokens (a differentiable k-means: output tokens are centroids), so stacking them yields a
hierarchical segmentation of the image for free. Class logits of the final tokens are carried to
pixels by the same assignments: no pixel decoder.

Grouping layer (input X: N x C on an H x W grid, output Y: M x C' on ceil(H/2) x ceil(W/2), C' = 2C)::

    Y0 = LN(conv2x2/stride2(X));  K = Wk LN(X);  V = Wv LN(X)
    L = 3 times:
        logits = K (Wq Y)^T / sqrt(C') + B + M_loc          N x M
        A_up   = softmax over the M outputs (each row sums to 1: where input token n goes)
        A_down = A_up with each column divided by (its sum + 1e-6) (weights of a mean over inputs)
        Y = Y + LN(A_down^T V);  Y = Y + LN(MLP(Y))

What the paper says (read through public write-ups of arXiv 2505.16993, chiefly the themoonlight.io
paper review with its equations, and REFERENCE.md section 2; the PDF itself was not in reach, and
a second search (project page, alphaXiv, emergentmind summaries) found nothing that contradicts
the choices below):
strided-conv initialisation, L = 3, the
logit form "scaled k(X) q(Y)^T + relative positional bias B + locality mask M_loc in {0, -inf}",
row softmax for A_up, column normalisation for A_down, output width 2C and N/4 tokens, residual
(skip) updates rather than a GRU, local grouping (3x3 output cells around each input's home cell,
as in Superpixel Sampling Networks) in G1 and G2 and dense grouping in G3, NAT-like stages with
RoPE in the attention blocks, and composition of the A_up matrices (a Markov chain) for masks.

Choices where those sources are silent (ours, not the paper's):
- One head. A segmentation needs one assignment per input token; several heads would give
  several competing partitions.
- Weights (Wq, norms, MLP) are shared across the L iterations, as in Slot Attention; LN on X
  before Wk/Wv; MLP ratio = the backbone's ``mlp_ratio``; A_up returned is the last iteration's.
- Relative position bias: a learned table indexed by the input token's parity inside its home
  cell (0/1 per axis) and the output cell's offset from that home cell, clipped to
  +-``bias_range`` (1 in local layers: 2x3 x 2x3 = 36 entries; ``dense_bias_range`` in G3).
- Odd grids: the output grid is ceil(H/2) x ceil(W/2); the strided conv sees X zero-padded at
  the bottom/right (as Swin's patch merging pads). Padded positions are not tokens: they get no
  row in A_up. Every output cell holds at least one real input in its home, so no column is empty.
- Borders: neighbour cells outside the output grid get -inf logits, hence exactly zero mass.
- Memory: the sparse layer unfolds Q over 3x3 cells per home cell (9 M C' = 2.25 N C' values);
  the dense layer holds N x M logits, fine for G3 (N/16 of the stem tokens to N/64).
- Neighbourhood attention: NAT's window (k x k, shifted inward at borders so every token sees k^2
  keys; the whole axis when it is shorter than k), gathered with advanced indexing in pure torch.
  Memory is k^2 x the key and value tensors (49x for k = 7): 51 MB per 64-channel stage-1 map at
  256x256 input, ~1.6 GB at 1080p. Positions: axial 2D RoPE (half of each head's channels rotate
  with the row, half with the column, base 100), applied to q and k before gathering, so logits
  depend on relative offsets only.
- A_down divides by the column sum plus 1e-6 (``MASS_EPS``): an output token can end with no
  mass at all, and dividing by that zero made training diverge to NaN.
- Stem: non-overlapping 4x4 patches (each pixel belongs to exactly one stem token, so memberships
  at stride 4 are memberships of pixels); images are zero-padded to a multiple of 4.
- Sizes follow NAT (the paper's SeNaTra-T is NAT-T with grouping: 64-128-256-512, depths
  3-4-18-5); heads, MLP ratios and the ``small``/``base`` widths are NAT's, not checked against
  the paper's own table. No layer scale, no drop path (training regularisers left out).

Native segments. Each downsampling step returns its A_up as an ``Assignment``: local layers in
sparse form (B x N x 9 weights and the N x 9 output cells they point at), the dense layer as
B x N x M. ``compose`` multiplies them (sparse x sparse stays sparse: a 4x4 window after two local
layers; anything x dense is dense), ``carry`` applies them right to left to values on coarse
tokens (class logits reach stride 4 without any N0 x M matrix; ``memberships`` at the last level
is a dense N0 x M3, ~1 GB at 1080p, so use it for analysis, not per frame), and ``hierarchy`` gives nested
hard label maps: a token's parent is the argmax of its own A_up row, and a stem token's level-k
segment is its level-(k-1) segment's parent. Nesting holds by construction; the argmax of the
composed soft memberships need not nest, which is why it is not used for the hierarchy.
``panoptic_segments`` turns final-level segments into stuff (one segment per class) and things
(connected groups of touching final-level segments of the same thing class, optionally only
those whose instance embeddings are close: the ``embed_dim`` head, ours, not the paper's, which
reports panoptic results without saying how things are formed).

The "uniform" variant (``downsampling="uniform"``) replaces grouping with LN(conv2x2/stride2):
the paper's ablation. Its assignments are the hard 2x2 home cells, so everything above still works.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


# Added to each output token's total assignment (A_up column sum) before A_down divides by it. An
# output token that the softmax leaves no mass at all (exp underflows to exactly 0 once the
# logits sharpen) would otherwise divide by ~0: a finite forward, an infinite gradient, NaN weights.
MASS_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class SeNaTraConfig:
    """Architecture hyper-parameters. One entry per stage in ``dims``/``depths``/``heads``."""

    dims: tuple[int, ...] = (64, 128, 256, 512)
    depths: tuple[int, ...] = (3, 4, 18, 5)
    heads: tuple[int, ...] = (2, 4, 8, 16)
    mlp_ratio: float = 3.0
    kernel_size: int = 7
    patch_size: int = 4
    downsampling: str = "grouping"  # or "uniform": strided 2x2 conv + LN (the ablation)
    local_grouping: tuple[bool, ...] = (True, True, False)  # G1, G2 local; G3 dense
    sparse_grouping: bool = True  # local layers via 3x3 unfold/fold (False: dense N x M with a mask)
    grouping_iters: int = 3
    dense_bias_range: int = 16  # output-cell offsets covered by the dense layer's bias table
    rope_theta: float = 100.0
    num_classes: int = 150
    layer_norm_eps: float = 1e-5
    # Width of the per-token instance embedding head (0: none). Ours, not the paper's: it tells
    # touching final tokens of one thing class apart (``panoptic_segments``).
    embed_dim: int = 0
    # Long side frames are scaled to before the network (pre-processing; the network takes any size).
    input_size: int = 512

    def __post_init__(self):
        stages = len(self.dims)
        if not (len(self.depths) == len(self.heads) == stages and len(self.local_grouping) == stages - 1):
            raise ValueError("dims, depths and heads need one entry per stage; local_grouping one per downsampling")
        if self.downsampling not in ("grouping", "uniform"):
            raise ValueError(f"downsampling must be 'grouping' or 'uniform', not {self.downsampling!r}")
        for dim, heads in zip(self.dims, self.heads):
            if dim % heads or (dim // heads) % 4:
                raise ValueError(f"dim {dim} / {heads} heads: head width must be a multiple of 4 (2D RoPE)")


# NAT sizes: (stem width, depths, heads, MLP ratio).
SIZES: dict[str, tuple[int, tuple[int, ...], tuple[int, ...], float]] = {
    "tiny": (64, (3, 4, 18, 5), (2, 4, 8, 16), 3.0),
    "small": (96, (3, 4, 18, 5), (3, 6, 12, 24), 2.0),
    "base": (128, (3, 4, 18, 5), (4, 8, 16, 32), 2.0),
}


def config_for_size(size: str, **overrides) -> SeNaTraConfig:
    """The architecture of size tiny, small or base, with e.g. num_classes/downsampling overridden."""
    if size not in SIZES:
        raise ValueError(f"unknown SeNaTra size {size!r}; known sizes: {', '.join(SIZES)}")
    width, depths, heads, mlp_ratio = SIZES[size]
    dims = tuple(width * 2**i for i in range(len(depths)))
    return replace(SeNaTraConfig(dims=dims, depths=depths, heads=heads, mlp_ratio=mlp_ratio), **overrides)


# --- assignments and their composition -----------------------------------------------------------


class Assignment(NamedTuple):
    """A_up of one downsampling step (or a product of several): row n holds where input token n goes.

    ``weights`` is B x N x K. With ``index`` (N x K, long) column k of row n is output token
    ``index[n, k]`` (repeats allowed, zero weights may point anywhere); without it K == M and column
    k is output token k. Tokens are numbered row-major on their grids ``in_grid``/``out_grid``.
    """

    weights: Tensor
    index: Tensor | None
    in_grid: tuple[int, int]
    out_grid: tuple[int, int]

    @property
    def num_out(self) -> int:
        return self.out_grid[0] * self.out_grid[1]


def densify(a: Assignment) -> Tensor:
    """The B x N x M matrix (for tests and small grids)."""
    if a.index is None:
        return a.weights
    b, n, k = a.weights.shape
    dense = a.weights.new_zeros(b, n, a.num_out)
    return dense.scatter_add_(2, a.index.expand(b, n, k), a.weights)


def pull_back(a: Assignment, values: Tensor) -> Tensor:
    """A_up @ values: B x M x C on the output tokens -> B x N x C on the input tokens."""
    if a.index is None:
        return a.weights @ values
    out = values.new_zeros(values.shape[0], a.weights.shape[1], values.shape[2])
    for k in range(a.weights.shape[2]):  # one gather at a time: memory N x C, not N x K x C
        out += a.weights[:, :, k, None] * values[:, a.index[:, k]]
    return out


def carry(assignments: tuple[Assignment, ...] | list[Assignment], values: Tensor) -> Tensor:
    """Values on the last level's tokens carried to the first level's: A_1 (A_2 (... A_k values))."""
    for a in reversed(assignments):
        values = pull_back(a, values)
    return values


def compose(first: Assignment, second: Assignment) -> Assignment:
    """first @ second. Sparse x sparse stays sparse (coalesced to the smallest window holding every
    row's support); a dense factor makes the product dense."""
    if first.out_grid != second.in_grid:
        raise ValueError(f"cannot compose: {first.out_grid} output grid vs {second.in_grid} input grid")
    if first.index is None:
        return Assignment(first.weights @ densify(second), None, first.in_grid, second.out_grid)
    if second.index is None:
        return Assignment(pull_back(first, second.weights), None, first.in_grid, second.out_grid)
    b, n, _ = first.weights.shape
    weights = (first.weights[:, :, :, None] * second.weights[:, first.index]).reshape(b, n, -1)
    index = second.index[first.index].reshape(n, -1)
    return _coalesce(Assignment(weights, index, first.in_grid, second.out_grid))


def _coalesce(a: Assignment) -> Assignment:
    """Sum repeated indices by laying each row out on a window of the output grid."""
    w_out = a.out_grid[1]
    ys, xs = a.index // w_out, a.index % w_out
    y0, x0 = ys.min(1, keepdim=True).values, xs.min(1, keepdim=True).values
    wy, wx = int((ys - y0).max()) + 1, int((xs - x0).max()) + 1
    slot = (ys - y0) * wx + (xs - x0)
    b, n, _ = a.weights.shape
    weights = a.weights.new_zeros(b, n, wy * wx).scatter_add_(2, slot.expand(b, n, -1), a.weights)
    sy = torch.arange(wy, device=a.index.device).repeat_interleave(wx)
    sx = torch.arange(wx, device=a.index.device).repeat(wy)
    # Window slots past the grid edge hold zero weight; clamping keeps their index valid.
    index = (y0 + sy).clamp(max=a.out_grid[0] - 1) * w_out + (x0 + sx).clamp(max=w_out - 1)
    return Assignment(weights, index, a.in_grid, a.out_grid)


def memberships(assignments: tuple[Assignment, ...] | list[Assignment], level: int) -> Assignment:
    """Soft membership of the first level's tokens (stem tokens = 4x4 pixel patches) in the tokens of
    ``level`` (1 = after the first downsampling): the product A_1 ... A_level."""
    out = assignments[0]
    for a in assignments[1:level]:
        out = compose(out, a)
    return out


def parents(a: Assignment) -> Tensor:
    """B x N: each input token's hard parent, the output token its A_up row weighs most."""
    best = a.weights.argmax(-1, keepdim=True)
    if a.index is None:
        return best[..., 0]
    return a.index.expand_as(a.weights).gather(2, best)[..., 0]


class Hierarchy(NamedTuple):
    """``maps[k]`` is B x h0 x w0 (the stem grid, stride 4): each stem token's segment at level k+1,
    an index into that level's tokens. ``parents[k]`` is B x N_k: the level-(k+1) token that owns
    level-k token n (level 0 = stem tokens). Every level-k segment lies inside its parent."""

    maps: tuple[Tensor, ...]
    parents: tuple[Tensor, ...]


def hierarchy(assignments: tuple[Assignment, ...] | list[Assignment]) -> Hierarchy:
    """Nested hard label maps: hard parents composed level by level (O(N) per level)."""
    links = tuple(parents(a) for a in assignments)
    h0, w0 = assignments[0].in_grid
    label = links[0]
    maps = [label]
    for link in links[1:]:
        label = link.gather(1, label)
        maps.append(label)
    return Hierarchy(tuple(m.view(-1, h0, w0) for m in maps), links)


class PanopticSegments(NamedTuple):
    """One image: ``label_map`` h x w, segment index of each position; segment s has class
    ``classes[s]`` and is a thing when ``isthing[s]``."""

    label_map: Tensor
    classes: Tensor
    isthing: Tensor


def panoptic_segments(
    final_map: Tensor,
    token_classes: Tensor,
    thing_classes: Tensor,
    embeddings: Tensor | None = None,
    margin: float = 1.5,
) -> PanopticSegments:
    """Panoptic segments of one image from its final-level segments.

    ``final_map`` h x w: final-token index per position (``hierarchy(...).maps[-1][b]``);
    ``token_classes`` M: class of each final token (argmax of its class logits); ``thing_classes``
    C bool. Stuff: all final segments of one class form one segment. Things: final segments of the
    same thing class that touch (4-neighbours in ``final_map``) form one instance, so objects split
    over several final tokens stay whole. Without ``embeddings`` two touching objects of one class
    merge; with them (M x E, the tokens' instance embeddings) two touching segments join only when
    their embeddings lie within ``margin`` (Euclidean). Segments are numbered by their smallest
    final-token index: deterministic.
    """
    m = token_classes.shape[0]
    device = final_map.device
    cls = token_classes.long()
    thing = thing_classes.to(device)[cls]
    # Stuff tokens start in their class's group (the smallest token of that class), things alone.
    first_of_class = torch.full((int(cls.max()) + 1,), m, device=device, dtype=torch.long)
    first_of_class = first_of_class.scatter_reduce(0, cls, torch.arange(m, device=device), "amin")
    group = torch.where(thing, torch.arange(m, device=device), first_of_class[cls])
    pairs = torch.cat(
        (
            torch.stack((final_map[:, :-1].reshape(-1), final_map[:, 1:].reshape(-1))),
            torch.stack((final_map[:-1].reshape(-1), final_map[1:].reshape(-1))),
        ),
        dim=1,
    )
    u, v = pairs
    keep = (u != v) & (cls[u] == cls[v]) & thing[u]
    if embeddings is not None:
        keep &= (embeddings[u] - embeddings[v]).norm(dim=-1) < margin
    u, v = torch.cat((u[keep], v[keep])), torch.cat((v[keep], u[keep]))
    while u.numel():  # connected components: spread the smallest group id along touching pairs
        spread = group.scatter_reduce(0, u, group[v], "amin")
        if torch.equal(spread, group):
            break
        group = spread
    present = torch.zeros(m, dtype=torch.bool, device=device)
    present[final_map.reshape(-1)] = True
    ids, segment_of_token = torch.unique(torch.where(present, group, m), return_inverse=True)
    ids = ids[ids < m]  # tokens that own no position end in the dropped id m
    return PanopticSegments(segment_of_token[final_map], cls[ids], thing[ids])


# --- neighbourhood attention blocks --------------------------------------------------------------


def window_starts(length: int, kernel: int, device: torch.device) -> Tensor:
    """length x k: NAT's neighbourhood along one axis (centred, shifted inward at the borders)."""
    k = min(kernel, length)
    start = (torch.arange(length, device=device) - k // 2).clamp(0, length - k)
    return start[:, None] + torch.arange(k, device=device)


def rope_2d(x: Tensor, theta: float) -> Tensor:
    """Axial RoPE on B x heads x H x W x d: the first d/2 channels rotate with the row index, the
    last d/2 with the column index (rotate-half pairing within each half)."""
    _, _, h, w, d = x.shape
    freqs = theta ** (-torch.arange(d // 4, device=x.device, dtype=x.dtype) / (d // 4))
    rows = torch.arange(h, device=x.device, dtype=x.dtype)[:, None, None] * freqs  # H x 1 x d/4
    cols = torch.arange(w, device=x.device, dtype=x.dtype)[None, :, None] * freqs  # 1 x W x d/4
    angles = torch.cat((rows.expand(h, w, -1), cols.expand(h, w, -1)), dim=-1)  # H x W x d/2
    cos, sin = angles.cos(), angles.sin()
    halves = x.unflatten(-1, (2, 2, d // 4))  # [row | col] x [first | second] x d/4
    first, second = halves[..., 0, :], halves[..., 1, :]
    cos, sin = cos.unflatten(-1, (2, d // 4)), sin.unflatten(-1, (2, d // 4))
    rotated = torch.stack((first * cos - second * sin, second * cos + first * sin), dim=-2)
    return rotated.flatten(-3)


class NeighbourhoodAttention(nn.Module):
    """Each token attends to the k x k tokens around it (NAT), with 2D RoPE."""

    def __init__(self, dim: int, heads: int, kernel_size: int, rope_theta: float):
        super().__init__()
        self.heads, self.kernel_size, self.rope_theta = heads, kernel_size, rope_theta
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        q, k, v = self.qkv(x).view(b, h, w, 3, self.heads, c // self.heads).permute(3, 0, 4, 1, 2, 5)
        q, k = rope_2d(q, self.rope_theta), rope_2d(k, self.rope_theta)
        rows, cols = window_starts(h, self.kernel_size, x.device), window_starts(w, self.kernel_size, x.device)

        def neighbours(t: Tensor) -> Tensor:  # B x heads x H x W x d -> B x heads x H x W x K x d
            t = t[:, :, rows][:, :, :, :, cols]  # B x heads x H x kh x W x kw x d
            return t.permute(0, 1, 2, 4, 3, 5, 6).flatten(4, 5)

        logits = torch.einsum("bnyxd,bnyxkd->bnyxk", q * q.shape[-1] ** -0.5, neighbours(k))
        out = torch.einsum("bnyxk,bnyxkd->bnyxd", logits.softmax(-1), neighbours(v))
        return self.proj(out.permute(0, 2, 3, 1, 4).reshape(b, h, w, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block on a B x H x W x C token map."""

    def __init__(self, dim: int, heads: int, cfg: SeNaTraConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.attn = NeighbourhoodAttention(dim, heads, cfg.kernel_size, cfg.rope_theta)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


# --- downsampling: spatial grouping and its uniform ablation -------------------------------------


def _strided_init(conv: nn.Conv2d, norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """LN(conv2x2/stride2) of a B x H x W x C map zero-padded to even sides: B x ceil(H/2) x ceil(W/2) x C'."""
    h, w = x.shape[1:3]
    x = F.pad(x.permute(0, 3, 1, 2), (0, w % 2, 0, h % 2))
    return norm(conv(x).permute(0, 2, 3, 1))


def home_cells(in_grid: tuple[int, int], device: torch.device) -> Tensor:
    """N x 1: the output cell (under 2x2 striding) that contains each input token."""
    h, w = in_grid
    wo = (w + 1) // 2
    ys, xs = torch.arange(h, device=device) // 2, torch.arange(w, device=device) // 2
    return (ys[:, None] * wo + xs[None, :]).reshape(-1, 1)


def neighbour_cells(in_grid: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor]:
    """(index, valid), both N x 9: the 3x3 output cells around each input token's home cell, row-major
    offsets (-1,-1) ... (1,1) (the order of F.unfold). Cells off the grid are clamped onto it and
    marked invalid."""
    h, w = in_grid
    ho, wo = (h + 1) // 2, (w + 1) // 2
    offsets = torch.arange(-1, 2, device=device)
    cy = (torch.arange(h, device=device) // 2)[:, None, None, None] + offsets[:, None]  # H x 1 x 3 x 1
    cx = (torch.arange(w, device=device) // 2)[None, :, None, None] + offsets[None, :]  # 1 x W x 1 x 3
    valid = ((cy >= 0) & (cy < ho)) & ((cx >= 0) & (cx < wo))
    index = cy.clamp(0, ho - 1) * wo + cx.clamp(0, wo - 1)
    return index.reshape(h * w, 9), valid.reshape(h * w, 9)


class UniformDownsample(nn.Module):
    """LN(strided 2x2 conv): the ablation. Its assignment is each token's home cell, weight 1."""

    def __init__(self, dim_in: int, dim_out: int, eps: float):
        super().__init__()
        self.conv = nn.Conv2d(dim_in, dim_out, kernel_size=2, stride=2)
        self.norm = nn.LayerNorm(dim_out, eps=eps)

    def forward(self, x: Tensor) -> tuple[Tensor, Assignment]:
        y = _strided_init(self.conv, self.norm, x)
        in_grid, out_grid = tuple(x.shape[1:3]), tuple(y.shape[1:3])
        weights = x.new_ones(x.shape[0], in_grid[0] * in_grid[1], 1)
        return y, Assignment(weights, home_cells(in_grid, x.device), in_grid, out_grid)


class SpatialGrouping(nn.Module):
    """The grouping layer: B x H x W x C tokens -> (B x ceil(H/2) x ceil(W/2) x C' tokens, A_up).

    ``local`` restricts each input token to the 3x3 output cells around its home cell; ``sparse``
    (local only) computes that with unfold/fold over the 9 neighbour cells, memory linear in the
    tokens, and returns A_up as B x N x 9 weights with their cell indices. Otherwise the N x M
    logits are materialised (with -inf outside the neighbourhood when local): the reference.
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        local: bool = True,
        sparse: bool = True,
        iters: int = 3,
        mlp_ratio: float = 4.0,
        bias_range: int = 16,
        eps: float = 1e-5,
    ):
        super().__init__()
        self.local, self.sparse, self.iters = local, sparse and local, iters
        self.bias_range = 1 if local else bias_range
        self.init_conv = nn.Conv2d(dim_in, dim_out, kernel_size=2, stride=2)
        self.init_norm = nn.LayerNorm(dim_out, eps=eps)
        self.in_norm = nn.LayerNorm(dim_in, eps=eps)
        self.q = nn.Linear(dim_out, dim_out)
        self.k = nn.Linear(dim_in, dim_out)
        self.v = nn.Linear(dim_in, dim_out)
        self.update_norm = nn.LayerNorm(dim_out, eps=eps)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio))
        self.mlp_norm = nn.LayerNorm(dim_out, eps=eps)
        # [row parity in the home cell, row offset of the output cell, col parity, col offset]
        span = 2 * self.bias_range + 1
        self.rel_bias = nn.Parameter(torch.zeros(2, span, 2, span))
        nn.init.trunc_normal_(self.rel_bias, std=0.02)

    def forward(self, x: Tensor) -> tuple[Tensor, Assignment]:
        y = _strided_init(self.init_conv, self.init_norm, x)
        xn = self.in_norm(x)
        k, v = self.k(xn), self.v(xn)
        if self.sparse:
            y, weights = self._iterate_sparse(y, k, v)
            index, _ = neighbour_cells(tuple(x.shape[1:3]), x.device)
        else:
            y, weights = self._iterate_dense(y, k, v)
            index = None
        return y, Assignment(weights, index, tuple(x.shape[1:3]), tuple(y.shape[1:3]))

    def _update(self, y: Tensor, pooled: Tensor) -> Tensor:
        y = y + self.update_norm(pooled)
        return y + self.mlp_norm(self.mlp(y))

    def dense_bias(self, in_grid: tuple[int, int], out_grid: tuple[int, int], device: torch.device) -> Tensor:
        """N x M: relative position bias, -inf where a local layer forbids the pair."""
        r = self.bias_range

        def axis(n_in: int, n_out: int) -> tuple[Tensor, Tensor]:
            i = torch.arange(n_in, device=device)
            offset = torch.arange(n_out, device=device)[None, :] - (i // 2)[:, None]  # n_in x n_out
            return (i % 2)[:, None].expand(-1, n_out), offset

        py, dy = axis(in_grid[0], out_grid[0])
        px, dx = axis(in_grid[1], out_grid[1])
        rows = (py[:, None, :, None], dy.clamp(-r, r)[:, None, :, None] + r)
        cols = (px[None, :, None, :], dx.clamp(-r, r)[None, :, None, :] + r)
        bias = self.rel_bias[rows + cols]  # H x W x Ho x Wo
        if self.local:
            outside = (dy.abs() > 1)[:, None, :, None] | (dx.abs() > 1)[None, :, None, :]
            bias = bias.masked_fill(outside, float("-inf"))
        return bias.reshape(in_grid[0] * in_grid[1], out_grid[0] * out_grid[1])

    def _iterate_dense(self, y: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        b, ho, wo, c = y.shape
        bias = self.dense_bias(tuple(k.shape[1:3]), (ho, wo), k.device)
        k, v, y = k.reshape(b, -1, c), v.reshape(b, -1, c), y.reshape(b, -1, c)
        for _ in range(self.iters):
            a_up = (k @ self.q(y).transpose(1, 2) * c**-0.5 + bias).softmax(-1)  # B x N x M
            a_down = a_up / (a_up.sum(1, keepdim=True) + MASS_EPS)
            y = self._update(y, a_down.transpose(1, 2) @ v)
        return y.view(b, ho, wo, c), a_up

    def _iterate_sparse(self, y: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        b, ho, wo, c = y.shape
        h, w = k.shape[1:3]
        m = ho * wo

        def by_home(t: Tensor) -> Tensor:  # B x H x W x C' -> B x M x 4 x C' (the 2x2 tokens of each home cell)
            t = F.pad(t, (0, 0, 0, w % 2, 0, h % 2))
            return t.view(b, ho, 2, wo, 2, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, m, 4, -1)

        k4, v4 = by_home(k), by_home(v)
        real = by_home(k.new_ones(1, h, w, 1).expand(b, -1, -1, -1))[..., 0]  # B x M x 4: 0 at padding
        home = torch.arange(m, device=k.device)
        ay, ax = home // wo, home % wo
        offsets = torch.arange(-1, 2, device=k.device)
        valid = (((ay[:, None] + offsets) >= 0) & ((ay[:, None] + offsets) < ho))[:, :, None] & (
            ((ax[:, None] + offsets) >= 0) & ((ax[:, None] + offsets) < wo)
        )[:, None, :]
        valid = valid.reshape(m, 1, 9)
        bias = self.rel_bias.permute(0, 2, 1, 3).reshape(4, 9)  # [parity yx, offset yx]

        def fold(t: Tensor) -> Tensor:  # B x (C*9) x M -> B x C x Ho x Wo, summing each cell's neighbours
            return F.fold(t, (ho, wo), kernel_size=3, padding=1)

        for _ in range(self.iters):
            q = self.q(y).permute(0, 3, 1, 2)  # B x C' x Ho x Wo
            q9 = F.unfold(q, kernel_size=3, padding=1).view(b, c, 9, m)
            logits = torch.einsum("bmpc,bcsm->bmps", k4, q9) * c**-0.5 + bias
            a_up = logits.masked_fill(~valid, float("-inf")).softmax(-1) * real[..., None]  # B x M x 4 x 9
            mass = fold(a_up.sum(2).transpose(1, 2))  # B x 1 x Ho x Wo: column sums of A_up
            pooled = fold(torch.einsum("bmps,bmpc->bcsm", a_up, v4).reshape(b, c * 9, m))
            pooled = pooled / (mass + MASS_EPS)  # A_down^T V
            y = self._update(y, pooled.permute(0, 2, 3, 1))
        # Back to raster order of the input tokens, padding dropped: B x N x 9.
        a_up = a_up.view(b, ho, wo, 2, 2, 9).permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * ho, 2 * wo, 9)
        return y, a_up[:, :h, :w].reshape(b, h * w, 9)


# --- the model -----------------------------------------------------------------------------------


class SeNaTraOutput(NamedTuple):
    """``class_logits`` B x M x C on the final tokens; ``pixel_logits`` B x C x h0 x w0, the same
    logits carried to the stem grid (stride 4, image padded to a multiple of 4) through the
    assignments; ``assignments`` the A_up of each downsampling step (stem -> level 1 -> 2 -> 3);
    ``tokens`` B x M x D, the final-normed tokens; ``embeddings`` B x M x E, each final token's
    instance embedding (None without an embedding head)."""

    class_logits: Tensor
    pixel_logits: Tensor
    assignments: tuple[Assignment, ...]
    tokens: Tensor
    embeddings: Tensor | None = None


class SeNaTra(nn.Module):
    """SeNaTra with a semantic head on ImageNet-normalised B x 3 x H x W input (any H, W)."""

    def __init__(self, cfg: SeNaTraConfig):
        super().__init__()
        self.cfg = cfg
        eps = cfg.layer_norm_eps
        self.stem = nn.Conv2d(3, cfg.dims[0], kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.stem_norm = nn.LayerNorm(cfg.dims[0], eps=eps)
        self.stages = nn.ModuleList(
            nn.Sequential(*(Block(dim, heads, cfg) for _ in range(depth)))
            for dim, depth, heads in zip(cfg.dims, cfg.depths, cfg.heads)
        )
        self.downsamples = nn.ModuleList(
            SpatialGrouping(
                d_in,
                d_out,
                local=local,
                sparse=cfg.sparse_grouping,
                iters=cfg.grouping_iters,
                mlp_ratio=cfg.mlp_ratio,
                bias_range=cfg.dense_bias_range,
                eps=eps,
            )
            if cfg.downsampling == "grouping"
            else UniformDownsample(d_in, d_out, eps)
            for d_in, d_out, local in zip(cfg.dims, cfg.dims[1:], cfg.local_grouping)
        )
        self.norm = nn.LayerNorm(cfg.dims[-1], eps=eps)
        self.head = Mlp(cfg.dims[-1], cfg.dims[-1], cfg.num_classes)
        self.embed_head = Mlp(cfg.dims[-1], cfg.dims[-1], cfg.embed_dim) if cfg.embed_dim else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def features(self, pixels: Tensor) -> tuple[Tensor, tuple[Assignment, ...]]:
        """Final-normed tokens B x h x w x D and the assignments of the three downsampling steps."""
        p = self.cfg.patch_size
        h, w = pixels.shape[-2:]
        pixels = F.pad(pixels, (0, -w % p, 0, -h % p))
        x = self.stem_norm(self.stem(pixels).permute(0, 2, 3, 1))
        assignments = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.downsamples):
                x, a = self.downsamples[i](x)
                assignments.append(a)
        return self.norm(x), tuple(assignments)

    def forward(self, pixels: Tensor) -> SeNaTraOutput:
        x, assignments = self.features(pixels)
        tokens = x.flatten(1, 2)
        class_logits = self.head(tokens)
        h0, w0 = assignments[0].in_grid
        pixel_logits = carry(assignments, class_logits).transpose(1, 2).reshape(x.shape[0], -1, h0, w0)
        embeddings = self.embed_head(tokens) if self.embed_head is not None else None
        return SeNaTraOutput(class_logits, pixel_logits, assignments, tokens, embeddings)
