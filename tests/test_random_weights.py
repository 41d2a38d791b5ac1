"""``model.checkpoint: random``: a published architecture with seeded random weights, so its speed
can be measured without its checkpoint (no model hub here), with segments for every stage to
work on."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from segstream.connectors.synthetic import synthetic_clip
from segstream.models.segmenter import upload
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


@pytest.fixture(scope="module")
def s640():
    """S/640 with random weights, built once for the module (its calibration is 6 CPU-s), with the
    warnings its build logged and whether it left the caller's random stream alone."""
    state = torch.random.get_rng_state()
    # its own handler: the CLI's logging set-up in other tests stops propagation to pytest's
    warnings = _Lines()
    logger = logging.getLogger("segstream.pipeline.model_factory")
    logger.addHandler(warnings)
    try:
        segmenter = build_segmenter(S640)
    finally:
        logger.removeHandler(warnings)
    return SimpleNamespace(segmenter=segmenter, warnings=warnings.lines,
                           rng_kept=torch.equal(torch.random.get_rng_state(), state))


def test_random_weights_give_a_published_eomt_confident_segments_and_are_the_same_each_time(small_frame, s640):
    first = s640.segmenter
    assert s640.rng_kept, "the caller's random stream is left alone"
    [line] = s640.warnings
    assert "random weights" in line and "coco_panoptic_eomt_small_640_2x" in line
    second = build_segmenter(S640)
    for (name, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), name
    [result] = first.segment([small_frame])
    # a plain random init leaves no query above the 0.8 score threshold: nothing to post-process
    assert len(result.segments) >= 5 and (result.segments.scores >= 0.8).all()


def test_fast_mode_publishes_no_segment_that_lost_every_pixel_on_a_frame_smaller_than_the_input(small_frame, s640):
    # 96x64 from a 640 input: segments a few model pixels wide fall between the frame's pixels
    segmenter = s640.segmenter
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


def test_random_weights_segment_at_every_size_not_only_the_one_they_were_tuned_on():
    # Found probing: random weights gave 0 segments on the tiny, base and large architectures (the
    # mask logits' scale differs by orders of magnitude), so their speed was measured without
    # post-processing; the calibration picks scale and offset per model. Base's and large's take
    # too long here: two small architectures of other widths and depths stand in for them
    from dataclasses import replace

    from segstream.connectors.synthetic import SyntheticSource
    from segstream.models.eomt import EoMTConfig
    from segstream.models.presets import get_preset
    from segstream.pipeline.model_factory import _build_eomt

    scene = next(iter(SyntheticSource("other", 160, 120, 25, 5, 1).frames())).image  # not a calibration scene
    tiny = build_segmenter(ModelConfig(preset="synthetic_eomt_tiny_256", checkpoint="random", device="cpu",
                                       precision="fp32"))
    assert len(tiny.segment([scene])[0].segments) >= 3
    cityscapes = get_preset("cityscapes_semantic_eomt_large_1024")
    for config in (EoMTConfig(img_size=128, dim=96, depth=4, heads=4, num_queries=30, num_classes=19),
                   EoMTConfig(img_size=128, dim=256, depth=6, heads=4, num_queries=30, num_classes=19)):
        preset = replace(cityscapes, name="stand-in", task="panoptic", config=config)
        adapter = _build_eomt(preset, ModelConfig(checkpoint="random", precision="fp32"), torch.device("cpu"), "fp32", 1)
        assert len(adapter.segment([scene])[0].segments) >= 3, config
    instance = replace(cityscapes, name="stand-in", task="instance",
                       config=EoMTConfig(img_size=128, dim=96, depth=4, heads=4, num_queries=30, num_classes=19))
    adapter = _build_eomt(instance, ModelConfig(checkpoint="random", precision="fp32", task="instance"),
                          torch.device("cpu"), "fp32", 1)
    assert len(adapter.segment([scene])[0].segments) >= 1


def test_the_python_api_says_what_is_wrong_with_its_input():
    # Found probing: a single frame gave "truth value of an array is ambiguous", a 0x0 frame a
    # ZeroDivisionError, a dict config an AttributeError
    import segstream
    from segstream.connectors.errors import ConfigError, FrameError

    segmenter = build_segmenter({"device": "cpu", "precision": "fp32"})
    frame = np.zeros((48, 64, 3), np.uint8)
    # each a segstream.FrameError (found by an image-service probe: a service could not map bad
    # uploads to one exception class), still the TypeError or ValueError it was
    with pytest.raises(FrameError, match=r"takes a list of frames .*wrap one frame as \[frame\]") as raised:
        segmenter.segment(frame)
    assert isinstance(raised.value, TypeError) and isinstance(raised.value, segstream.SegstreamError)
    with pytest.raises(FrameError, match="frames must be numpy arrays"):
        segmenter.segment(["frame.png"])
    with pytest.raises(FrameError, match="a frame has no pixels") as raised:
        segmenter.segment([np.zeros((0, 0, 3), np.uint8)])
    assert isinstance(raised.value, ValueError)
    with pytest.raises(FrameError, match="frames must be H x W x 3 uint8 RGB, got uint8 \\(48, 64\\)"):
        segmenter.segment([frame[..., 0]])
    with pytest.raises(ConfigError, match="model.precision: Input should be"):
        build_segmenter({"precision": "fp64"})
    assert len(segmenter.segment([frame, frame])) == 2
    # in a list, which frame, and how the usual look-alikes become one (found probing with
    # batches of mixed photos: a grey one at index 2 of 4 was not named)
    for bad, hint in ((frame[..., 0], "a grey frame: np.repeat(frame[..., None], 3, axis=2)"),
                      (np.zeros((48, 64, 4), np.uint8), "RGBA: frame[..., :3]"),
                      (frame.astype(np.float32), "floats from 0 to 1: (frame * 255).round().astype(np.uint8)")):
        with pytest.raises(FrameError) as raised:
            segmenter.segment([frame, frame, bad, frame])
        assert str(raised.value).startswith("frame 2 of 4: frames must be H x W x 3 uint8 RGB, got ")
        assert str(raised.value).endswith(f" — {hint}")


@pytest.fixture(scope="module")
def coco_stand_in():
    """A COCO panoptic architecture smaller than S/640 (CI's CPU time), random weights made
    confident, the network run once over five frames of two sizes: (segmenter, prepared, outputs)."""
    from dataclasses import replace

    from segstream.models.eomt import EoMTConfig
    from segstream.models.presets import get_preset
    from segstream.pipeline.model_factory import _build_eomt

    preset = replace(get_preset(S640.preset), name="stand-in",
                     config=EoMTConfig(img_size=256, dim=128, depth=4, heads=4, num_queries=100, num_classes=133))
    segmenter = _build_eomt(preset, ModelConfig(checkpoint="random", precision="fp32"), torch.device("cpu"), "fp32", 8)
    frames = [frame for frame, _ in synthetic_clip(200, 120, 3, seed=4)]
    frames += [frame for frame, _ in synthetic_clip(120, 160, 2, seed=6)]  # another size: decided apart
    with torch.inference_mode():
        prepared = segmenter.prepare([upload(frame, segmenter.device) for frame in frames])
        return segmenter, prepared, segmenter.forward(prepared)


@pytest.mark.parametrize("postprocess", ["fast", "exact"])
def test_decisions_do_not_depend_on_how_many_queries_or_frames_are_decided_at_once(monkeypatch, postprocess,
                                                                                  coco_stand_in):
    # a GPU decides as many masks at once as fit its budget, a batch's frames of one size
    # together; the CPU fewer: each frame's decision is the one it gets alone, whatever the passes
    from segstream.models import processing

    segmenter, prepared, outputs = coco_stand_in
    monkeypatch.setattr(segmenter, "postprocess", postprocess)
    frames = len(prepared.frames)
    with torch.inference_mode():
        alone = [processing.panoptic(outputs.mask_logits[i], outputs.class_logits[i], segmenter.size,
                                     prepared.layouts[i], prepared.frames[i], segmenter._isthing,
                                     segmenter.thresholds, postprocess) for i in range(frames)]
        passes, decide = [], processing._panoptic_pass
        # (frames, most kept queries of one of them, queries a step) of each pass
        monkeypatch.setattr(processing, "_panoptic_pass",
                            lambda *args: passes.append((len(args[4]), max(args[5]), args[6])) or decide(*args))
        for size in (8, 3, 1000):
            monkeypatch.setattr(processing, "chunk_size", lambda device, shape, size=size: size)
            for a, b in zip(alone, segmenter.decide(outputs, prepared), strict=True):
                for name in ("label_map", "class_ids", "scores", "queries"):
                    assert torch.equal(getattr(a, name), getattr(b, name)), name
                assert a.frame == b.frame
    assert all(len(a.class_ids) >= 5 for a in alone), "frames with segments to decide between"
    assert any(kept > step for _, kept, step in passes)  # a frame's queries in several steps
    assert max(count for count, _, _ in passes) == 3  # the three frames of one size in one pass
    assert sum(count for count, _, _ in passes) == 3 * frames


def test_a_gpu_decides_all_of_a_batchs_fast_frames_at_once_and_the_cpu_a_few_masks(monkeypatch):
    from segstream.models import processing
    from segstream.models.processing import chunk_size

    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    # (GPU memory, masks of 640x360 at once, of 1080p, of 4K): a 1024th of the memory, at least 8 of 1080p
    try:
        for memory, *masks in ((141 * 2**30, 641, 71, 17), (16 * 2**30, 72, 8, 8), (4 * 2**30, 72, 8, 8)):
            monkeypatch.setattr(torch.cuda, "get_device_properties",
                                lambda device, memory=memory: SimpleNamespace(total_memory=memory))
            processing._pixel_budget.cache_clear()
            assert [chunk_size(gpu, size) for size in ((360, 640), (1080, 1920), (2160, 3840))] == masks
    finally:
        processing._pixel_budget.cache_clear()  # no made-up GPU's budget left for later tests
    assert chunk_size(cpu, (360, 640)) == chunk_size(cpu, (1080, 1920)) == 8
    assert chunk_size(cpu, (192, 256)) == 37  # the shipped model's maps: a batch of four frames' together
