"""``model.checkpoint: random``: a published architecture with seeded random weights, so its speed
can be measured without its checkpoint (no model hub here), with segments for every stage to
work on."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from segstream.connectors.synthetic import synthetic_clip
from segstream.pipeline.config import ModelConfig
from segstream.pipeline.model_factory import build_segmenter

S640 = ModelConfig(preset="coco_panoptic_eomt_small_640_2x", checkpoint="random", device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def small_frame():
    [image] = [frame for frame, _ in synthetic_clip(96, 64, 1, seed=0)]
    return image


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def test_random_weights_give_a_published_eomt_confident_segments_and_are_the_same_each_time(small_frame):
    state = torch.random.get_rng_state()
    # its own handler: the CLI's logging set-up in other tests stops propagation to pytest's
    warnings = _Lines()
    logger = logging.getLogger("segstream.pipeline.model_factory")
    logger.addHandler(warnings)
    try:
        first = build_segmenter(S640)
    finally:
        logger.removeHandler(warnings)
    assert torch.equal(torch.random.get_rng_state(), state), "the caller's random stream is left alone"
    [line] = warnings.lines
    assert "random weights" in line and "coco_panoptic_eomt_small_640_2x" in line
    second = build_segmenter(S640)
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    [result] = first.segment([small_frame])
    # a plain random init leaves no query above the 0.8 score threshold: nothing to post-process
    assert len(result.segments) >= 5 and (result.segments.scores >= 0.8).all()


def test_fast_mode_publishes_no_segment_that_lost_every_pixel_on_a_frame_smaller_than_the_input(small_frame):
    # 96x64 from a 640 input: segments a few model pixels wide fall between the frame's pixels
    segmenter = build_segmenter(S640)
    [result] = segmenter.segment([small_frame])
    assert len(result.segments) >= 5
    assert np.isin(result.segments.ids, result.label_map).all(), "every segment has pixels"
    assert (result.segments.areas > 0).all()
    for row, segment_id in enumerate(result.segments.ids):
        assert result.segments.areas[row] == (result.label_map == segment_id).sum()


def test_random_weights_run_a_senatra_preset_without_published_weights(small_frame):
    cfg = ModelConfig(preset="ade20k_senatra_tiny_512", checkpoint="random", device="cpu", precision="fp32",
                      task="semantic")
    [result] = build_segmenter(cfg).segment([small_frame])
    assert result.label_map.shape == (64, 96) and len(result.segments) >= 1
    assert np.isin(result.label_map, result.segments.ids).all()
