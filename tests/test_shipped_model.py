"""The model segstream ships segments held-out synthetic video through the pipeline's own path."""

from segstream.pipeline.config import ModelConfig
from segstream.pipeline.evaluation import evaluate_segmenter
from segstream.pipeline.model_factory import build_segmenter
from segstream.pipeline.training import FIRST_TRAINING_SEED

HELD_OUT_SEEDS = (0, 1)  # training scenes start at FIRST_TRAINING_SEED


def test_shipped_checkpoint_segments_held_out_scenes():
    assert max(HELD_OUT_SEEDS) < FIRST_TRAINING_SEED
    # The default model section, built as `segstream run` builds it: same loading, precision
    # (auto), pre- and post-processing (letterbox; fast mode; 0.8 score, 0.5 mask, 0.8 overlap).
    segmenter = build_segmenter(ModelConfig(device="cpu"), batch_size=4)
    assert segmenter.postprocess == "fast"
    result = evaluate_segmenter(segmenter.segment, HELD_OUT_SEEDS, 320, 240, 20, segmenter.labels, progress=False)
    assert result["frames"] == 40
    assert result["pq"] >= 0.75, result
    # Both halves of panoptic segmentation work: objects are found and named, not only backgrounds.
    assert result["pq_things"] >= 0.6 and result["pq_stuff"] >= 0.9, result
