"""The CUDA path of the engine: pinned staging, copy/compute/post streams, compile buckets.

These run wherever CUDA is available (the device machine); on a machine without a GPU they are
reported as skipped for that reason, while the same engine's CPU path is tested everywhere
(tests/test_runtime.py, tests/test_postprocess_modes.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segstream.connectors.checkpoints import load_eomt
from segstream.connectors.file_source import FileSource
from segstream.connectors.synthetic import synthetic_clip, write_clip
from segstream.models.label_sets import load_label_set
from segstream.models.presets import SYNTHETIC_TINY
from segstream.models.segmenter import EoMTSegmenter
from segstream.pipeline.engine import ModelStage
from segstream.pipeline.runtime import Runtime
from tests.conftest import CollectingSink

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _segmenter(device: str, precision: str = "fp32", **kwargs) -> EoMTSegmenter:
    return EoMTSegmenter(load_eomt(SYNTHETIC_TINY), "panoptic", load_label_set("synthetic"), "t",
                         device=device, precision=precision, postprocess="exact", **kwargs)


def test_cuda_results_agree_with_the_cpu():
    frames = [image for image, _ in synthetic_clip(320, 240, 6, seed=2)]
    cpu = _segmenter("cpu").segment(frames)
    gpu = _segmenter("cuda").segment(frames)
    for a, b in zip(cpu, gpu):
        assert (a.label_map == b.label_map).mean() > 0.995
        assert list(a.segments.class_ids) == list(b.segments.class_ids)


def test_frames_resize_on_the_gpu_as_torchvision_resizes_them():
    from torchvision.transforms.v2.functional import InterpolationMode, resize

    from segstream.models.processing import _resize_rgb

    image = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)).cuda()
    expected = resize(image.permute(2, 0, 1), [360, 640], interpolation=InterpolationMode.BILINEAR, antialias=True)
    assert torch.equal(_resize_rgb(image, 360, 640), expected)


def test_staging_buffers_are_reused_and_frames_of_any_size_survive_the_upload():
    stage = ModelStage(_segmenter("cuda"), max_inflight=2)
    sizes = [(240, 320), (97, 131), (480, 640), (240, 320)]
    for round_ in range(3):
        images = [np.random.default_rng(round_ + i).integers(0, 255, (*s, 3), dtype=np.uint8) for i, s in enumerate(sizes)]
        uploaded = stage.staging.upload(images, stage.compute_stream)
        stage.compute_stream.synchronize()
        for image, tensor in zip(images, uploaded):
            np.testing.assert_array_equal(tensor.cpu().numpy(), image)
    assert all(buffer is None or buffer.is_pinned() for buffer in stage.staging.buffers)


def test_the_cuda_pipeline_keeps_order_and_matches_the_synchronous_call(tmp_path):
    write_clip(tmp_path / "a.mp4", tmp_path / "a.npz", 192, 144, 16, seed=4)
    segmenter = _segmenter("cuda")
    expected = [segmenter.segment([f.image])[0] for f in FileSource("x", str(tmp_path / "a.mp4")).frames()]

    sink = CollectingSink()
    sources = [FileSource("a", str(tmp_path / "a.mp4")), FileSource("b", str(tmp_path / "a.mp4"))]
    Runtime(sources, segmenter, [sink], batch_size=3, max_inflight=3, progress=None).run()
    for name in ("a", "b"):
        got = [r for r in sink.results if r.source == name]
        assert [r.index for r in got] == list(range(16))
        for r, e in zip(got, expected):
            assert (r.label_map == e.label_map).mean() > 0.995


def test_compiled_buckets_warm_up_before_the_first_frame_and_never_recompile():
    segmenter = _segmenter("cuda", precision="bf16", compile=True, max_batch=4)
    stage = ModelStage(segmenter, max_inflight=2)
    stage.warm_up(240, 320)
    frames = [image for image, _ in synthetic_clip(320, 240, 7, seed=1)]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for count in (1, 3, 4, 2):
            assert len(segmenter.segment(frames[:count])) == count


def test_random_weights_are_calibrated_on_the_gpu_as_on_the_cpu(monkeypatch):
    from segstream.connectors import checkpoints

    calibrated_on, calibration = [], checkpoints._mask_calibration

    def calibrate(masks, *args, **kwargs):
        calibrated_on.append(masks.device.type)
        return calibration(masks, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "_mask_calibration", calibrate)
    config = SYNTHETIC_TINY.config
    for device in ("cpu", "cuda"):
        checkpoints._CALIBRATED.pop((config, 0, "panoptic", device), None)
    on_cpu = checkpoints.random_eomt(config)
    on_gpu = checkpoints.random_eomt(config, device="cuda")
    assert calibrated_on == ["cpu", "cuda"]
    assert next(on_gpu.parameters()).is_cuda
    assert checkpoints._CALIBRATED[config, 0, "panoptic", "cuda"] == checkpoints._CALIBRATED[config, 0, "panoptic", "cpu"]
    for (name, a), b in zip(on_cpu.state_dict().items(), on_gpu.state_dict().values()):
        assert torch.equal(a, b.cpu()), name
