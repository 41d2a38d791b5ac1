"""SeNaTra behind the family adapter: pre-processing, native segments at frame size, the hierarchy
on the wire, and checkpoints that do not fit."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segstream.connectors.checkpoints import load_senatra
from segstream.connectors.errors import CheckpointError, WireFormatError
from segstream.connectors.redis_wire import from_wire, to_wire
from segstream.connectors.synthetic import synthetic_clip
from segstream.models.label_sets import load_label_set
from segstream.models.presets import PRESETS, SYNTHETIC_SENATRA
from segstream.models.processing import normalize
from segstream.models.results import ScaledLabelMap
from segstream.models.senatra import SeNaTra, SeNaTraConfig, carry, hierarchy
from segstream.models.segmenter import results, upload
from segstream.models.senatra_adapter import SeNaTraSegmenter, SizeGroups, scale_frames, stem_to_scaled
from segstream.pipeline.training import FIRST_TRAINING_SEED

SMALL = SeNaTraConfig(
    dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), heads=(1, 2, 2, 4), kernel_size=3, num_classes=8, embed_dim=4,
    input_size=96,
)
LABELS = load_label_set("synthetic")


def _model(seed: int = 0, **overrides) -> SeNaTra:
    """Random weights large enough that assignments and classes vary across the image."""
    torch.manual_seed(seed)
    model = SeNaTra(replace(SMALL, **overrides)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        model.head.fc2.weight.mul_(10)  # classes that differ from token to token
    return model


def _frames(count=2, width=160, height=120, seed=FIRST_TRAINING_SEED):
    return [image for image, _ in synthetic_clip(width, height, count, seed)]


def test_frames_are_scaled_by_their_long_side_and_padded_to_whole_stem_cells():
    frames = [torch.zeros(120, 160, 3, dtype=torch.uint8), torch.full((100, 50, 3), 255, dtype=torch.uint8)]
    pixels, scaled = scale_frames(frames, 96)
    assert scaled == [(72, 96), (96, 48)]
    assert pixels.shape == (2, 3, 96, 96)
    # Each frame fills its scaled size; the rest is black padding (as normalised zeros).
    black = normalize(torch.zeros(1, 3, 1, 1))[0]
    white = normalize(torch.full((1, 3, 1, 1), 255))[0]
    assert torch.allclose(pixels[1, :, :, :48], white.expand(3, 96, 48))
    assert torch.allclose(pixels[1, :, :, 48:], black.expand(3, 96, 48))
    assert torch.allclose(pixels[0, :, 72:], black.expand(3, 24, 96))
    pixels, scaled = scale_frames([torch.zeros(30, 90, 3, dtype=torch.uint8)], 90)
    assert scaled == [(30, 90)] and pixels.shape[-2:] == (32, 92)


def test_a_frame_s_segments_do_not_depend_on_the_frames_batched_with_it():
    # Found by a geometry audit: a wide frame padded to a taller one's size in a batch had up to 3.8% of
    # its pixels change class, so a batch's outputs changed with its concurrency and a live run's with
    # which cameras' frames met in a batch. Frames of other sizes now run apart, each at its own.
    segmenter = SeNaTraSegmenter(_model(), "panoptic", LABELS, "small")
    wide, = _frames(count=1, width=240, height=80)
    tall, = _frames(count=1, width=120, height=160, seed=FIRST_TRAINING_SEED + 1)
    alone = segmenter.segment([wide])[0]
    together = segmenter.segment([tall, wide, tall])
    assert np.array_equal(together[1].label_map, alone.label_map)
    assert together[1].segments.class_ids.tolist() == alone.segments.class_ids.tolist()
    assert [len(level.ids) for level in together[1].levels] == [len(level.ids) for level in alone.levels]
    assert np.array_equal(together[0].label_map, together[2].label_map)  # the same frame twice in one group
    assert np.array_equal(together[0].label_map, segmenter.segment([tall])[0].label_map)


def test_every_finer_segment_lies_inside_its_parent_at_frame_size():
    segmenter = SeNaTraSegmenter(_model(), "panoptic", LABELS, "small")
    for result in segmenter.segment(_frames(width=150, height=110)):
        levels = result.levels
        assert len(levels) == 3
        assert [len(level.ids) for level in levels] == sorted((len(level.ids) for level in levels), reverse=True)
        assert len(levels[0].ids) > len(levels[2].ids) > 1, "a real hierarchy, not one blob"
        for level in levels:
            assert level.label_map.shape == (110, 150)
            assert set(np.unique(level.label_map)) == set(level.ids.tolist())
            assert level.areas.sum() == 110 * 150
            assert np.array_equal(level.areas, np.bincount(level.label_map.ravel(), minlength=len(level.ids)))
        for fine, coarse in zip(levels, levels[1:]):
            for segment, parent in zip(fine.ids, fine.parents):
                assert np.unique(coarse.label_map[fine.label_map == segment]).tolist() == [parent]
        assert (levels[-1].parents == -1).all()


def test_panoptic_segments_are_unions_of_coarsest_level_segments():
    # Uniform downsampling: every final token owns pixels (random grouping weights may not).
    segmenter = SeNaTraSegmenter(_model(seed=1, downsampling="uniform"), "panoptic", LABELS, "small")
    frames = _frames(width=96, height=72, seed=FIRST_TRAINING_SEED + 1)  # the input size: no resizing
    prepared = segmenter.prepare([upload(f, segmenter.device) for f in frames])
    outputs = segmenter.forward(prepared)
    # Final token t says class t % 8 (four things, then four stuff classes), so classes repeat.
    b, m, _ = outputs.class_logits.shape
    classes = torch.arange(m) % 8
    outputs = outputs._replace(class_logits=10 * F.one_hot(classes, 8).float().expand(b, m, 8),
                               embeddings=torch.zeros(b, m, SMALL.embed_dim))
    tokens = hierarchy(outputs.assignments).maps[-1]
    for i, result in enumerate(results(segmenter, outputs, prepared, segmenter.decide(outputs, prepared))):
        coarsest = result.levels[-1].label_map
        for segment in np.unique(coarsest):
            assert len(np.unique(result.label_map[coarsest == segment])) == 1
        present = {int(c) for c in classes[stem_to_scaled(tokens[i], 72, 96).unique()]}
        assert set(result.segments.class_ids.tolist()) == present and len(present) > 2
        stuff = result.segments[~result.segments.isthing]
        assert len(set(stuff.class_ids.tolist())) == len(stuff), "one stuff segment per class"
        assert result.segments.isthing.tolist() == [LABELS.isthing[c] for c in result.segments.class_ids]
        counts = np.bincount(result.label_map.ravel(), minlength=len(result.segments))
        assert np.array_equal(result.segments.areas, counts)


def test_semantic_task_labels_each_stem_cell_by_its_carried_class_logits():
    segmenter = SeNaTraSegmenter(_model(seed=2), "semantic", LABELS, "small")
    frames = _frames(width=96, height=72, seed=FIRST_TRAINING_SEED + 2)  # the input size: no resizing
    prepared = segmenter.prepare([upload(f, segmenter.device) for f in frames])
    outputs = segmenter.forward(prepared)
    b, m, _ = outputs.class_logits.shape
    class_logits = torch.randn(b, m, 8, generator=torch.Generator().manual_seed(5)) * 3
    h0, w0 = outputs.assignments[0].in_grid
    pixel_logits = carry(outputs.assignments, class_logits).transpose(1, 2).reshape(b, 8, h0, w0)
    outputs = outputs._replace(class_logits=class_logits, pixel_logits=pixel_logits)
    final_tokens = hierarchy(outputs.assignments).maps[-1]
    for i, result in enumerate(results(segmenter, outputs, prepared, segmenter.decide(outputs, prepared))):
        expected = stem_to_scaled(pixel_logits[i].argmax(0), 72, 96).numpy()
        assert np.array_equal(result.segments.class_ids[result.label_map], expected)
        assert sorted(result.segments.class_ids.tolist()) == np.unique(expected).tolist()
        assert len(np.unique(expected)) > 1
        # Soft carrying is not the hard final token's class everywhere.
        hard = stem_to_scaled(class_logits[i].argmax(-1)[final_tokens[i]], 72, 96).numpy()
        assert (hard != expected).any()


def test_hierarchy_round_trips_through_both_wire_encodings():
    segmenter = SeNaTraSegmenter(_model(seed=3), "panoptic", LABELS, "small")
    (result,) = segmenter.segment(_frames(count=1, width=124, height=90))
    # decided at the model's size: levels travel as scaled maps, encoded without the frame-size map
    assert all(isinstance(level.segment_map, ScaledLabelMap) for level in result.levels)
    for encoding in ("rle", "idmap"):
        fields = to_wire(result, encoding)
        assert ("levels_idmap" in fields) == (encoding == "idmap")
        back = from_wire(fields)
        assert np.array_equal(back.label_map, result.label_map)
        assert len(back.levels) == 3
        for sent, got in zip(result.levels, back.levels):
            for column in ("ids", "parents", "areas", "label_map"):
                assert np.array_equal(getattr(sent, column), getattr(got, column)), column
        without_masks = from_wire(fields, decode_masks=False)
        assert without_masks.levels[0].label_map is None
        assert np.array_equal(without_masks.levels[1].ids, result.levels[1].ids)


def test_entries_without_a_hierarchy_read_back_with_none():
    segmenter = SeNaTraSegmenter(_model(), "panoptic", LABELS, "small", hierarchy_levels=False)
    (result,) = segmenter.segment(_frames(count=1))
    assert result.levels == []
    fields = to_wire(result, "rle")
    assert "levels" not in fields and from_wire(fields).levels == []


def test_a_hierarchy_naming_a_missing_parent_is_rejected_with_one_line():
    segmenter = SeNaTraSegmenter(_model(), "panoptic", LABELS, "small")
    (result,) = segmenter.segment(_frames(count=1))
    fields = to_wire(result, "idmap")
    fields["levels"] = fields["levels"].replace('"parent":0,', '"parent":999,', 1)
    with pytest.raises(WireFormatError, match="parent"):
        from_wire(fields)
    fields = to_wire(result, "idmap")
    fields["levels"] = fields["levels"].replace('"area":', '"area":1' + "0" * 30, 1)
    with pytest.raises(WireFormatError, match="areas"):
        from_wire(fields)
    fields = to_wire(result, "idmap")
    fields["levels_idmap"] = fields["idmap"]  # one map where three are needed
    with pytest.raises(WireFormatError, match="levels_idmap holds"):
        from_wire(fields)


def test_checkpoints_that_do_not_fit_the_preset_say_so(tmp_path):
    from safetensors.torch import save_file

    wrong = SeNaTra(replace(SYNTHETIC_SENATRA.config, dims=(16, 32, 64, 128), heads=(1, 2, 4, 8)))
    path = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in wrong.state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match="does not fit preset synthetic_senatra_tiny_192.*stem.weight"):
        load_senatra(SYNTHETIC_SENATRA, str(path))
    with pytest.raises(CheckpointError, match="no published weights"):
        load_senatra(PRESETS["ade20k_senatra_tiny_512"])
    # found probing as a SeNaTra user: the line did not say which preset fits, nor what the
    # repository's own uniform-downsampling ablation is
    shipped_size = tmp_path / "small.pt"
    torch.save(SeNaTra(SYNTHETIC_SENATRA.config).state_dict(), shipped_size)
    with pytest.raises(CheckpointError, match=r"— it fits model.preset synthetic_senatra_tiny_192$"):
        load_senatra(PRESETS["ade20k_senatra_tiny_512"], str(shipped_size))
    ablation = tmp_path / "uniform.pt"
    torch.save(SeNaTra(replace(SYNTHETIC_SENATRA.config, downsampling="uniform")).state_dict(), ablation)
    with pytest.raises(CheckpointError, match=r"synthetic_senatra_tiny_192's network with uniform downsampling"):
        load_senatra(SYNTHETIC_SENATRA, str(ablation))


def test_segment_embeddings_are_the_mean_final_token_over_each_segment():
    segmenter = SeNaTraSegmenter(_model(seed=4), "panoptic", LABELS, "small")
    frames = _frames(count=1, width=96, height=72)  # the input size: one stem cell is 4x4 pixels
    prepared = segmenter.prepare([upload(f, segmenter.device) for f in frames])
    outputs = segmenter.forward(prepared)
    (result,) = results(segmenter, outputs, prepared, segmenter.decide(outputs, prepared))
    tokens = outputs.tokens[0][hierarchy(outputs.assignments).maps[-1][0]]  # 18 x 24 stem cells x D
    cells = result.label_map[::4, ::4]
    assert result.segments.embeddings.shape == (len(result.segments), SMALL.dims[-1])
    for row, segment in enumerate(result.segments.ids):
        expected = tokens[torch.from_numpy(cells == segment)].mean(0)
        assert torch.allclose(torch.from_numpy(result.segments.embeddings[row]), expected, atol=1e-5)


def test_frames_of_different_sizes_in_one_batch_get_no_segments_from_padding():
    segmenter = SeNaTraSegmenter(_model(seed=5, downsampling="uniform"), "panoptic", LABELS, "small")
    frames = _frames(count=1, width=160, height=62) + _frames(count=1, width=62, height=160)
    prepared = segmenter.prepare([upload(f, segmenter.device) for f in frames])
    assert prepared.pixels.shape[-2:] == (96, 96)  # 96x37 and 37x96 padded to one size
    outputs = segmenter.forward(prepared)
    assert isinstance(outputs, SizeGroups) and [frames for frames, _ in outputs.groups] == [[0], [1]]
    # each run apart at its own size, padded to whole stem cells (37 -> 40): every token given a class
    for k, (frames, group) in enumerate(outputs.groups):
        assert group.pixel_logits.shape[-2:] == [(10, 24), (24, 10)][k]
        b, m, _ = group.class_logits.shape
        outputs.groups[k] = (frames, group._replace(class_logits=10 * F.one_hot(torch.arange(m) % 8, 8).float().expand(b, m, 8)))
    for result in results(segmenter, outputs, prepared, segmenter.decide(outputs, prepared)):
        assert (result.segments.areas > 0).all(), result.segments.areas
        assert result.segments.areas.sum() == result.width * result.height
        for level in result.levels:
            assert (level.areas > 0).all() and level.areas.sum() == result.width * result.height
