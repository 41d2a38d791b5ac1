"""EoMT under torch.compile (inductor, CPU here): one static graph for every batch, same answers."""

import numpy as np
import torch
import torch._dynamo

from segstream.connectors.checkpoints import load_eomt
from segstream.connectors.synthetic import SyntheticScene
from segstream.models.label_sets import load_label_set
from segstream.models.presets import SYNTHETIC_TINY
from segstream.models.segmenter import Segmenter


def test_compiled_model_reuses_one_static_graph_and_matches_eager():
    model = load_eomt(SYNTHETIC_TINY)
    labels = load_label_set(SYNTHETIC_TINY.label_set)
    scene = SyntheticScene(width=200, height=150, seed=3)
    frames = [scene.render()[0] for _ in range(5)]
    eager = Segmenter(model, "panoptic", labels, SYNTHETIC_TINY.name)
    compiled = Segmenter(model, "panoptic", labels, SYNTHETIC_TINY.name, compile=True, static_batch=2)

    torch._dynamo.reset()
    # A second compilation (another batch size reaching the network) would raise in this block:
    # batches of 2, 1 and 5 frames and 3 raw images all run as chunks of exactly 2.
    with torch._dynamo.config.patch(error_on_recompile=True), torch.inference_mode():
        got = compiled.segment(frames[:2]) + compiled.segment(frames[2:3]) + compiled.segment(frames[3:])
        got_all = compiled.segment(frames)
        pixels = torch.rand(3, 3, model.cfg.img_size, model.cfg.img_size)
        compiled_out = compiled.forward(pixels)
    want = eager.segment(frames)
    assert [np.mean(a.label_map == b.label_map) >= 0.999 for a, b in zip(got_all, got, strict=True)] == [True] * 5

    segments = 0
    for g, w in zip(got, want, strict=True):
        assert np.mean(g.label_map == w.label_map) >= 0.999
        assert [s.class_id for s in g.segments] == [s.class_id for s in w.segments]
        segments += len(w.segments)
    assert segments >= 10  # the comparison covered real segments, not empty frames

    with torch.inference_mode():
        eager_out = eager.forward(pixels)
    assert compiled_out.class_logits.shape[0] == 3
    torch.testing.assert_close(compiled_out.class_logits, eager_out.class_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(compiled_out.mask_logits, eager_out.mask_logits, atol=1e-4, rtol=1e-4)
