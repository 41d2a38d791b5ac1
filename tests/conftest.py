"""Shared fixtures: real media encoded with PyAV, and a small real segmenter."""

from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np
import pytest

from segstream.models.prediction import FramePrediction, Segment

SQUARE_COLOUR = (255, 40, 40)


def encode_clip(path: Path, frames: int = 40, fps: int = 10, width: int = 160, height: int = 120) -> Path:
    """An H.264 mp4 of a red square moving right over a dark grey background."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        side = height // 4
        for i in range(frames):
            image = np.full((height, width, 3), 30, np.uint8)
            x = (i * 3) % (width - side)
            image[side : 2 * side, x : x + side] = SQUARE_COLOUR
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> Path:
    """40 frames, 160x120, 10 fps (4 s)."""
    return encode_clip(tmp_path_factory.mktemp("media") / "square.mp4")


@pytest.fixture(scope="session")
def fast_clip(tmp_path_factory) -> Path:
    """30 frames, 160x120, 30 fps (1 s): for tests that play a clip in real time."""
    return encode_clip(tmp_path_factory.mktemp("media") / "square_30fps.mp4", frames=30, fps=30)


class ColourSegmenter:
    """Segments the reddish pixels of each image as one 'square' segment; ``delay_s`` per batch
    makes it a slow model. Remembers the images of every batch it saw."""

    name = "colour-threshold"

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.batches: list[list[np.ndarray]] = []

    def segment(self, images: list[np.ndarray]) -> list[FramePrediction]:
        self.batches.append(list(images))
        if self.delay_s:
            time.sleep(self.delay_s)
        return [self._one(image) for image in images]

    @staticmethod
    def _one(image: np.ndarray) -> FramePrediction:
        red = (image[..., 0] > 150) & (image[..., 1] < 100)
        label_map = np.where(red, 0, -1).astype(np.int32)
        segments = []
        if red.any():
            ys, xs = np.nonzero(red)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            segments.append(Segment(0, 0, "square", True, 1.0, int(red.sum()), box, 0))
        return FramePrediction(label_map, segments, np.zeros((len(segments), 4), np.float32))


@pytest.fixture
def segmenter() -> ColourSegmenter:
    return ColourSegmenter()
