"""The model segstream ships segments held-out synthetic video through the pipeline's own path."""

import pytest

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


@pytest.mark.parametrize("kind, warned", [("stream", True), ("file", False)])
def test_the_demo_model_on_a_camera_is_said_to_know_only_the_demo_scenes(kind, warned):
    # found probing as a home-lab NVR user: with no model section, four cameras' yards came out as
    # sky, sand and stars, and nothing said the model knows nothing else
    import logging

    from segstream.connectors.synthetic import SyntheticSource
    from segstream.pipeline import runtime
    from segstream.pipeline.config import validate_config
    from tests.conftest import CollectingSink

    where = {"url": "rtsp://127.0.0.1:8554/gate"} if kind == "stream" else {"path": __file__}
    cfg = validate_config({"sources": [{"name": "gate", "type": kind, **where}], "model": {"device": "cpu"},
                           "sinks": {"redis": {"enabled": False}}})
    lines = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())
    runtime.log.addHandler(handler)
    try:
        runtime.Runtime.from_config(cfg, [SyntheticSource("gate", 64, 48, 25, 0, 1)], build_segmenter(cfg.model),
                                    [CollectingSink()], progress=False).run()
    finally:
        runtime.log.removeHandler(handler)
    said = [line for line in lines if "knows only the synthetic demo scenes" in line]
    assert bool(said) == warned, lines
    if warned:
        assert said[0].startswith("model synthetic_eomt_tiny_256 knows only the synthetic demo scenes (disc, box, ")
        assert "on the pictures of source gate its segments mean nothing" in said[0]
