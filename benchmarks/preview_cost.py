"""What the preview costs a frame on the publishing thread: drawing the segments over the frame
and encoding it into the MP4, at a few frame sizes (the demo clip scaled, the shipped model's
segments), in ms of one core.

    python benchmarks/preview_cost.py

Not a test: record the output in docs/BENCHMARKS.md with the command and the machine.
"""

from __future__ import annotations

import platform
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av

from segstream.connectors.overlay import OverlayVideo, draw_overlay
from segstream.pipeline.config import ModelConfig
from segstream.pipeline.model_factory import build_segmenter

CLIP = Path(__file__).resolve().parent.parent / "samples" / "demo.mp4"
FRAMES = 16


def main() -> None:
    segmenter = build_segmenter(ModelConfig(device="cpu"))
    print(f"{platform.processor() or platform.machine()}, the demo clip's first {FRAMES} frames scaled, "
          "each drawn and encoded twice (median; the encoder's first 8 frames left out)")
    for width, height in ((640, 360), (1280, 720), (1920, 1080)):
        with av.open(str(CLIP)) as container:
            images = [frame.reformat(width=width, height=height, format="rgb24").to_ndarray()
                      for frame, _ in zip(container.decode(video=0), range(FRAMES))]
        results = []
        for first in range(0, FRAMES, 4):
            results += segmenter.segment(images[first:first + 4])
        draw, encode = [], []
        with tempfile.TemporaryDirectory() as folder:
            video = OverlayVideo(Path(folder) / "preview.mp4")
            for i, (image, result) in enumerate(zip(images * 2, results * 2)):
                start = time.perf_counter()
                picture = draw_overlay(image, result, 0.45)
                drawn = time.perf_counter()
                video.write(picture, i, Fraction(1, 25), None)
                draw.append(drawn - start)
                encode.append(time.perf_counter() - drawn)
            video.close()
        drawing, encoding = 1000 * statistics.median(draw), 1000 * statistics.median(encode[8:])
        print(f"  {width}x{height}: draw {drawing:5.1f} ms, encode {encoding:5.1f} ms, {drawing + encoding:5.1f} ms a frame")


if __name__ == "__main__":
    main()
