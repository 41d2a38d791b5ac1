"""EoMT under torch.compile (inductor, CPU here): one static graph per batch bucket, same answers.

Both tests compile the same small network at the same input size: inductor's graph cache then
compiles each bucket's graph once for the module (a cold compile is tens of CPU-seconds a graph on
CI's two cores; the weights are graph inputs, so the second test's other weights still hit it)."""

import numpy as np
import pytest
import torch
import torch._dynamo

from segstream.connectors.checkpoints import load_eomt
from segstream.connectors.synthetic import SyntheticScene
from segstream.models.eomt import EoMT, EoMTConfig
from segstream.models.label_sets import load_label_set
from segstream.models.segmenter import EoMTSegmenter, Prepared, batch_buckets
from tests.eomt_reference import preset_for, reference_model, write_checkpoints

SMALL = EoMTConfig(img_size=64, dim=64, depth=3, heads=2, num_queries=10, num_classes=19, num_query_blocks=2)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> EoMT:
    """Random weights made confident, and queries owning mostly separate regions, so that the maps
    hold several classes and panoptic segments to compare."""
    reference = reference_model(SMALL, seed=3, confident=True, mask_offset=1.2)
    paths = write_checkpoints(reference, tmp_path_factory.mktemp("compile"))
    return load_eomt(preset_for(SMALL, "semantic", "cityscapes"), str(paths["official"]))


def _spy(segmenter: EoMTSegmenter) -> list[int]:
    """The batch sizes the segmenter's network is called with, in order."""
    seen: list[int] = []
    network = segmenter.network

    def counting(pixels):
        seen.append(int(pixels.shape[0]))
        return network(pixels)

    segmenter.network = counting
    return seen


def test_buckets_are_powers_of_two_up_to_the_largest_batch():
    assert batch_buckets(1) == (1,)
    assert batch_buckets(4) == (1, 2, 4)
    assert batch_buckets(6) == (1, 2, 4, 6)
    assert batch_buckets(8) == (1, 2, 4, 8)


def test_compiled_model_reuses_one_graph_per_bucket_and_matches_eager(small_model):
    model = small_model
    labels = load_label_set("cityscapes")
    scene = SyntheticScene(width=200, height=150, seed=3)
    frames = [scene.render()[0] for _ in range(8)]
    eager = EoMTSegmenter(model, "panoptic", labels, "t", precision="fp32", postprocess="exact")
    compiled = EoMTSegmenter(model, "panoptic", labels, "t", precision="fp32", postprocess="exact",
                             compile=True, max_batch=4)
    assert compiled.batch_buckets == (1, 2, 4) and eager.batch_buckets == ()
    seen = _spy(compiled)

    torch._dynamo.reset()
    with torch.inference_mode():
        for bucket in compiled.batch_buckets:  # the first batch of each bucket compiles its graph
            compiled.segment(frames[:bucket])
    assert seen == [1, 2, 4]
    seen.clear()
    # Any further compilation (a batch size that is not a bucket reaching the network) raises here.
    with torch._dynamo.config.patch(error_on_recompile=True), torch.inference_mode():
        got = compiled.segment(frames[:1]) + compiled.segment(frames[1:3]) + compiled.segment(frames[3:8])
        got_three = compiled.segment(frames[:3])
        pixels = torch.rand(3, 3, model.cfg.img_size, model.cfg.img_size)
        compiled_out = compiled.forward(Prepared(pixels, [], []))
    # 1 -> 1; 2 -> 2; 5 -> 4 + 1; 3 -> 4 (padded, twice: frames, then raw pixels)
    assert seen == [1, 2, 4, 1, 4, 4]
    want = eager.segment(frames)
    assert len(got) == 8
    assert all(np.mean(a.label_map == b.label_map) >= 0.999 for a, b in zip(got_three, got[:3], strict=True))

    segments = 0
    for g, w in zip(got, want, strict=True):
        assert np.mean(g.label_map == w.label_map) >= 0.999
        assert g.segments.class_ids.tolist() == w.segments.class_ids.tolist()
        segments += len(w.segments)
    assert segments >= 10  # the comparison covered real segments, not empty frames

    with torch.inference_mode():
        eager_out = eager.forward(Prepared(pixels, [], []))
    assert compiled_out.class_logits.shape[0] == 3  # the padding is cut off again
    torch.testing.assert_close(compiled_out.class_logits, eager_out.class_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(compiled_out.mask_logits, eager_out.mask_logits, atol=1e-4, rtol=1e-4)


def test_compiled_semantic_model_runs_any_count_of_windows_in_bucket_graphs(small_model):
    model = small_model
    labels = load_label_set("cityscapes")
    wide = SyntheticScene(width=200, height=150, seed=4).render()[0]  # 2 windows
    wider = SyntheticScene(width=300, height=100, seed=5).render()[0]  # 3 windows
    eager = EoMTSegmenter(model, "semantic", labels, "t", precision="fp32", postprocess="exact")
    compiled = EoMTSegmenter(model, "semantic", labels, "t", precision="fp32", postprocess="exact",
                             compile=True, max_batch=4)
    seen = _spy(compiled)

    torch._dynamo.reset()
    with torch.inference_mode():
        compiled.segment([wide])  # 2 windows
        compiled.segment([wide, wide])  # 4
        compiled.segment([wider, wide])  # 5 = 4 + 1
    assert seen == [2, 4, 4, 1]
    seen.clear()
    batches = [[wider], [wide, wider, wide], [wider, wider, wider]]
    with torch._dynamo.config.patch(error_on_recompile=True), torch.inference_mode():
        got = [compiled.segment(batch) for batch in batches]
    # 3 windows -> 4 (padded); 7 -> 4 + 4 (padded); 9 -> 4 + 4 + 1
    assert seen == [4, 4, 4, 4, 4, 1]
    for batch, results in zip(batches, got, strict=True):
        for g, w in zip(results, eager.segment(batch), strict=True):
            assert g.label_map.shape == w.label_map.shape
            assert np.mean(g.label_map == w.label_map) >= 0.999
            assert g.segments.class_ids.tolist() == w.segments.class_ids.tolist()
            assert len(w.segments) >= 2, "the maps must hold several classes for the comparison to mean anything"
