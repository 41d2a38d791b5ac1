"""Exact post-processing equals the official algorithm computed the plain way (every kept
query's mask at frame resolution, one argmax); fast mode stays close to it; the pipeline's
asynchronous engine gives what the synchronous call gives."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segstream.connectors.checkpoints import load_eomt
from segstream.connectors.file_source import FileSource
from segstream.connectors.synthetic import synthetic_clip
from segstream.models.label_sets import load_label_set
from segstream.models.presets import SYNTHETIC_TINY
from segstream.models.processing import Thresholds, frame_label_map, letterbox
from segstream.models.results import ScaledLabelMap
from segstream.models.segmenter import EoMTSegmenter
from segstream.pipeline.runtime import Runtime
from tests.conftest import CollectingSink


def official_panoptic(mask_logits, class_logits, size, scaled, frame, isthing, t=Thresholds()):
    """The official panoptic rule, materialised: label map (frame size) and (class, query) rows."""
    probs = class_logits.float().softmax(-1)
    scores, classes = probs.max(-1)
    keep = torch.nonzero((classes != probs.shape[-1] - 1) & (scores > t.score)).squeeze(1)
    label_map = torch.full(frame, -1, dtype=torch.long)
    if keep.numel() == 0:
        return label_map, []
    x = F.interpolate(mask_logits[keep][None].float(), (size, size), mode="bilinear", align_corners=False)
    x = F.interpolate(x[:, :, : scaled[0], : scaled[1]], frame, mode="bilinear", align_corners=False)[0]
    mask_probs = x.sigmoid()
    winner = (scores[keep][:, None, None] * mask_probs).argmax(0)
    own = mask_probs >= t.mask
    rows, stuff_segment = [], {}
    for j in range(keep.numel()):
        won = winner == j
        final = won & own[j]
        if own[j].sum() == 0 or won.sum() == 0 or final.sum() == 0 or won.sum() / own[j].sum() < t.overlap:
            continue
        cls = int(classes[keep[j]])
        if not isthing[cls] and cls in stuff_segment:
            label_map[final] = stuff_segment[cls]
            continue
        label_map[final] = len(rows)
        if not isthing[cls]:
            stuff_segment[cls] = len(rows)
        rows.append((cls, int(keep[j])))
    return label_map, rows


@pytest.fixture(scope="module")
def shipped():
    return load_eomt(SYNTHETIC_TINY)


def _frames(count: int, width: int, height: int, seed: int = 5) -> list[np.ndarray]:
    return [image for image, _ in synthetic_clip(width, height, count, seed)]


@pytest.mark.parametrize("size", [(320, 240), (250, 410)])
def test_exact_mode_equals_the_official_algorithm_on_the_shipped_model(shipped, size):
    segmenter = EoMTSegmenter(shipped, "panoptic", load_label_set("synthetic"), "t", postprocess="exact")
    frames = _frames(4, *size)
    results = segmenter.segment(frames)
    pixels, scaled = letterbox([torch.from_numpy(f) for f in frames], segmenter.size)
    with torch.inference_mode():
        out = shipped(pixels)
    checked = 0
    for i, result in enumerate(results):
        expected, rows = official_panoptic(out.mask_logits[i], out.class_logits[i], segmenter.size, scaled[i],
                                           result.label_map.shape, segmenter.labels.isthing)
        np.testing.assert_array_equal(result.label_map, expected.numpy())
        assert [(int(c), int(q)) for c, q in zip(result.segments.class_ids, result.segments.queries)] == rows
        checked += len(rows)
    assert checked >= 8, "the shipped model must find segments for the comparison to mean anything"


def test_fast_mode_agrees_with_exact_mode_on_the_shipped_model(shipped):
    labels = load_label_set("synthetic")
    exact = EoMTSegmenter(shipped, "panoptic", labels, "t", postprocess="exact")
    fast = EoMTSegmenter(shipped, "panoptic", labels, "t", postprocess="fast")
    frames = _frames(4, 640, 480)
    agreement = [(a.label_map == b.label_map).mean() for a, b in zip(exact.segment(frames), fast.segment(frames))]
    assert min(agreement) > 0.98
    # Fast mode decides at the input resolution: the label map is the frame's size all the same,
    # built only when read; until then the result holds the decided map (the model's input size).
    result = fast.segment(frames[:1])[0]
    assert result.label_map.shape == (480, 640)
    assert isinstance(result.segment_map, ScaledLabelMap)
    assert result.segment_map.decided.shape == (fast.size * 3 // 4, fast.size)
    assert result.segment_map.every(5).shape == (96, 128)
    assert np.array_equal(result.segment_map.every(5), result.label_map[::5, ::5])


@pytest.mark.parametrize("postprocess", ["exact", "fast"])
def test_line_scan_frames_one_pixel_high_or_wide_are_segmented(shipped, postprocess):
    # found probing: a 1 x 4096 frame scaled to 0 rows and failed inside torch's resize
    segmenter = EoMTSegmenter(shipped, "panoptic", load_label_set("synthetic"), "tiny", postprocess=postprocess)
    shapes = [(1, 4096), (4096, 1), (5, 3001), (1, 1)]
    results = segmenter.segment([np.full((h, w, 3), 120, np.uint8) for h, w in shapes])
    assert [r.label_map.shape for r in results] == shapes
    assert all(int(r.segments.areas.sum()) == int((r.label_map >= 0).sum()) for r in results)


def test_areas_and_boxes_of_a_resized_map_are_those_of_the_full_map():
    rng = np.random.default_rng(0)
    small = rng.integers(-1, 5, (37, 53)).astype(np.int32)
    small[:, 40:] = np.where(small[:, 40:] == 3, 2, small[:, 40:])  # segment 3 absent from some columns
    for frame in [(100, 71), (37, 53), (480, 640), (20, 30)]:
        kept, areas, boxes, _ = frame_label_map(small, 6, frame)
        assert kept.shape == frame
        full = kept.full() if isinstance(kept, ScaledLabelMap) else kept
        assert np.array_equal(full, cv2.resize(small, frame[::-1], interpolation=cv2.INTER_NEAREST_EXACT))
        for segment in range(6):
            ys, xs = np.nonzero(full == segment)
            assert areas[segment] == ys.size
            expected = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if ys.size else (0, 0, 0, 0)
            assert tuple(boxes[segment]) == expected


def test_boxes_of_a_map_shrunk_to_a_smaller_frame_count_only_the_lines_it_keeps():
    """A frame smaller than the decided map skips some of its lines: a segment seen in a column
    only on skipped rows must not widen its box (found on 200x150 clips)."""
    rng = np.random.default_rng(1)
    small = np.full((192, 256), -1, np.int32)
    ys, xs = rng.integers(0, 192, 300), rng.integers(0, 256, 300)
    small[ys, xs] = rng.integers(0, 6, 300)
    for frame in [(150, 200), (76, 100), (191, 255)]:
        kept, areas, boxes, _ = frame_label_map(small, 6, frame)
        full = kept.full()
        for segment in range(6):
            ys, xs = np.nonzero(full == segment)
            assert areas[segment] == ys.size
            expected = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) if ys.size else (0, 0, 0, 0)
            assert tuple(boxes[segment]) == expected


@pytest.mark.parametrize("postprocess", ["exact", "fast"])
def test_the_engine_gives_what_the_synchronous_call_gives(shipped, tmp_path, postprocess):
    from segstream.connectors.synthetic import write_clip

    write_clip(tmp_path / "clip.mp4", tmp_path / "clip.npz", 192, 144, 12, seed=3)
    segmenter = EoMTSegmenter(shipped, "panoptic", load_label_set("synthetic"), "t", postprocess=postprocess)
    frames = list(FileSource("ref", str(tmp_path / "clip.mp4")).frames())
    # Frame by frame on both sides: the network's numbers may depend on the batch size.
    expected = [segmenter.segment([f.image])[0] for f in frames]

    sink = CollectingSink()
    Runtime([FileSource("cam", str(tmp_path / "clip.mp4"))], segmenter, [sink], batch_size=1, progress=None).run()
    assert [r.index for r in sink.results] == list(range(12))
    for got, want in zip(sink.results, expected):
        np.testing.assert_array_equal(got.label_map, want.label_map)
        np.testing.assert_array_equal(got.segments.class_ids, want.segments.class_ids)
        np.testing.assert_array_equal(got.segments.areas, want.segments.areas)


def test_each_result_of_a_batch_holds_a_map_of_its_own(shipped):
    # the batch's maps are decided in one tensor; a result kept must not keep the others' pixels
    segmenter = EoMTSegmenter(shipped, "panoptic", load_label_set("synthetic"), "t", postprocess="fast")
    maps = [result.segment_map.decided for result in segmenter.segment(_frames(1, 320, 240) * 4)]  # one pass
    for a in maps:  # what each array keeps alive: itself, or the array or tensor it views
        base = a.base
        held = a.nbytes if base is None else (
            base.untyped_storage().nbytes() if isinstance(base, torch.Tensor) else base.nbytes)
        assert held == a.nbytes
