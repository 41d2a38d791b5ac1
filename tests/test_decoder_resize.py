"""``engine.resize_in_decoder``: frames converted to RGB at the model's input size by FFmpeg, with
results that still describe the full frame. Real clips, a real RTSP server, the shipped model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segstream.connectors.file_source import FileSource
from segstream.connectors.stream_source import StreamSource
from segstream.connectors.synthetic import write_clip
from segstream.models.processing import _resize_rgb, letterbox_size
from segstream.pipeline.cli import main
from segstream.pipeline.config import ModelConfig, load_config
from segstream.pipeline.model_factory import build_segmenter
from segstream.pipeline.runtime import Runtime
from tests.conftest import CollectingSink
from tests.live_servers import RtspCamera
from tests.test_file_media import MARK, _marked_clip
from tests.test_stream_source import take


@pytest.fixture(scope="module")
def vga_clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decoder_resize")
    write_clip(folder / "vga.mp4", folder / "vga.npz", 640, 480, 8, seed=5)
    return folder / "vga.mp4"


def _read(path, decode_size=None) -> list:
    source = FileSource("clip", str(path))
    source.decode_size = decode_size
    try:
        return list(source.frames())
    finally:
        source.close()


def _to_model_size(height: int, width: int) -> tuple[int, int]:
    return letterbox_size(height, width, 256)


def test_frames_come_at_the_model_size_and_keep_the_frame_size(vga_clip):
    full, small = _read(vga_clip), _read(vga_clip, _to_model_size)
    assert len(small) == len(full) == 8
    for a, b in zip(full, small):
        assert b.image.shape == (192, 256, 3) and b.image.flags.c_contiguous
        assert b.size == (480, 640) and (b.height, b.width) == (480, 640) and a.size is None
        assert (a.pts, a.index) == (b.pts, b.index)
        # FFmpeg's bilinear against the model's own resize of the full frame: close, not equal
        resized = _resize_rgb(torch.from_numpy(a.image), 192, 256).permute(1, 2, 0).numpy()
        assert np.abs(resized.astype(int) - b.image.astype(int)).mean() < 3


@pytest.mark.parametrize("rotation", [90, 270])
def test_a_rotated_clip_is_scaled_as_displayed(tmp_path, rotation):
    clip = _marked_clip(tmp_path / f"rot{rotation}.mp4", rotation)  # stored 160x96, displayed 96x160

    def half(height: int, width: int) -> tuple[int, int]:
        return height // 2, width // 2

    full, small = _read(clip), _read(clip, half)
    assert full[0].image.shape == (160, 96, 3) and small[0].image.shape == (80, 48, 3)
    assert small[0].size == (160, 96)
    expected = full[0].image[::2, ::2].astype(int)  # the mark lands where the displayed frame has it
    marked = np.all(np.abs(expected - MARK) < 40, axis=2)
    got = np.all(np.abs(small[0].image.astype(int) - MARK) < 60, axis=2)
    assert marked.sum() > 50 and (marked == got).mean() > 0.95


def test_frames_no_larger_than_the_input_are_left_alone(vga_clip):
    frames = _read(vga_clip, lambda height, width: (height * 2, width * 2))
    assert frames[0].image.shape == (480, 640, 3) and frames[0].size is None


def test_a_stream_source_scales_in_its_decoder(tmp_path):
    with RtspCamera(tmp_path, size="160x120") as camera:
        source = StreamSource("cam", camera.url())
        source.decode_size = lambda height, width: (height // 2, width // 2)
        frames = take(source, 3)
    assert [f.image.shape for f in frames] == [(60, 80, 3)] * 3
    assert all((f.height, f.width) == (120, 160) for f in frames)
    assert source.info.width == 160 and source.info.height == 120  # what the camera sends


def _classes(result) -> np.ndarray:
    labels = result.label_map
    lut = np.full(max(int(labels.max()), int(result.segments.ids.max(initial=-1))) + 2, -1)
    lut[result.segments.ids + 1] = result.segments.class_ids
    return lut[labels + 1]


def test_a_run_that_resizes_in_the_decoder_describes_full_frames_like_one_that_does_not(vga_clip):
    adapter = build_segmenter(ModelConfig(device="cpu"), batch_size=4)
    runs = {}
    for resize in (False, True):
        sink = CollectingSink()
        Runtime([FileSource("clip", str(vga_clip))], adapter, [sink], resize_in_decoder=resize,
                progress=None).run()
        runs[resize] = sorted(sink.results, key=lambda r: r.index)
    assert len(runs[True]) == len(runs[False]) == 8
    for a, b in zip(runs[False], runs[True]):
        assert (b.width, b.height) == (640, 480) and b.label_map.shape == (480, 640)
        assert b.segments.boxes[:, 2].max() > 256  # boxes in frame pixels, not the model's
        assert (_classes(a) == _classes(b)).mean() > 0.95


def test_the_preview_needs_full_frames(tmp_path, vga_clip, capsys):
    config = tmp_path / "p.yaml"
    config.write_text(
        f"sources: [{{name: a, type: file, path: '{vga_clip}'}}]\n"
        "engine: {resize_in_decoder: true}\nsinks: {preview: {enabled: true}}\n"
    )
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "engine.resize_in_decoder" in err[0] and "sinks.preview" in err[0]
    config.write_text(f"sources: [{{name: a, type: file, path: '{vga_clip}'}}]\nengine: {{resize_in_decoder: true}}\n")
    assert load_config(config).engine.resize_in_decoder


def test_the_batch_overlay_needs_full_frames():
    from segstream.connectors.errors import ConfigError
    from segstream.pipeline.config import BatchPipelineConfig, validate_config

    with pytest.raises(ConfigError, match="batch.overlay"):
        validate_config({"engine": {"resize_in_decoder": True}, "batch": {"overlay": True}}, schema=BatchPipelineConfig)


@pytest.mark.parametrize("family, task", [("eomt", "panoptic"), ("eomt", "semantic"), ("senatra", "panoptic")])
def test_every_family_takes_frames_already_at_its_input_size(family, task):
    """Scaling is idempotent: a frame at ``input_size`` with its full size gives the layout of the
    full frame, and the model input is that frame, not resized again."""
    adapter = build_segmenter(ModelConfig(family=family, device="cpu", precision="fp32"))
    if family == "eomt":
        adapter.task = task  # the geometry alone is under test: windows or letterbox
    rng = np.random.default_rng(0)
    full = torch.from_numpy(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    h, w = adapter.geometry.scale(480, 640)
    small = _resize_rgb(full, h, w).permute(1, 2, 0).contiguous()
    a, b = adapter.prepare([full]), adapter.prepare([small], [(480, 640)])
    assert a.frames == b.frames == [(480, 640)] and a.layouts == b.layouts
    assert torch.equal(a.pixels, b.pixels)  # the same resize, done once
