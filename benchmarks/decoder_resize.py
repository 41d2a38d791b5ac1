"""What ``engine.resize_in_decoder`` costs in quality and saves in work, on held-out scenes.

    python benchmarks/decoder_resize.py --sizes 640x480 1920x1080 3840x2160 --seeds 0 1 2 3 --frames 10

For each size, encodes held-out synthetic scenes (seeds never trained on) as H.264 clips with
their ground truth, then reads every clip twice with a ``FileSource``: frames converted to RGB
at full size and resized by the model's pre-processing (the default), and frames converted at
the model's input size by FFmpeg (``resize_in_decoder``). Both go through the shipped model
(defaults: bf16, fast post-processing). Prints per size: PQ (all, things, stuff) of each way,
the share of frame pixels whose segment class agrees between the two, the mean absolute
difference of the model's input pixels, and the CPU milliseconds per frame of decoding,
conversion and pre-processing (this thread and FFmpeg's: the process's CPU time). Not a test:
record the output in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from segstream.connectors.file_source import FileSource
from segstream.connectors.synthetic import load_truth, write_clip
from segstream.models.processing import IMAGENET_STD
from segstream.models.segmenter import segment_frames, upload
from segstream.pipeline.config import ModelConfig
from segstream.pipeline.evaluation import PanopticTally
from segstream.pipeline.model_factory import build_segmenter

STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255


def read(video: Path, decode_size) -> list:
    source = FileSource(video.stem, str(video))
    source.decode_size = decode_size
    try:
        return list(source.frames())
    finally:
        source.close()


def prepare_cpu_ms(adapter, video: Path, decode_size) -> float:
    """Process CPU time per frame of decoding, converting and pre-processing one clip."""
    start = time.process_time()
    frames = read(video, decode_size)
    for frame in frames:
        sizes = None if frame.size is None else [frame.size]
        adapter.prepare([upload(frame.image, adapter.device)], sizes)
    return (time.process_time() - start) / len(frames) * 1000


def class_map(result) -> np.ndarray:
    """Each frame pixel's segment class (-1: none)."""
    labels = result.label_map
    lut = np.full(max(int(labels.max()), int(result.segments.ids.max(initial=-1))) + 2, -1)
    lut[result.segments.ids + 1] = result.segments.class_ids
    return lut[labels + 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1920x1080", "3840x2160"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--frames", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    adapter = build_segmenter(ModelConfig(device="cpu"), batch_size=4)
    labels = adapter.labels
    print(f"model {adapter.name} ({adapter.precision}, {adapter.postprocess} post-processing), seeds "
          f"{' '.join(map(str, args.seeds))}, {args.frames} frames each")
    print(f"{'size':>10} {'way':>10} {'PQ':>6} {'things':>7} {'stuff':>6} {'class agreement':>16} "
          f"{'input diff':>11} {'CPU ms/frame':>13}")
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            width, height = map(int, size.split("x"))
            clips = []
            for seed in args.seeds:
                video, truth = Path(folder) / f"{size}-{seed}.mp4", Path(folder) / f"{size}-{seed}.npz"
                write_clip(video, truth, width, height, args.frames, seed=seed, crf=23)
                clips.append((video, load_truth(truth)))
            tallies = {way: PanopticTally(labels.thing_ids, labels.stuff_ids) for way in ("full", "decoder")}
            agree = total = 0
            diffs = []
            for video, truths in clips:
                full, small = read(video, None), read(video, adapter.geometry.scale)
                for i in range(0, len(full), 4):
                    a = segment_frames(adapter, [f.image for f in full[i : i + 4]])
                    b = segment_frames(adapter, [f.image for f in small[i : i + 4]], [f.size for f in small[i : i + 4]])
                    pa = adapter.prepare([upload(f.image, adapter.device) for f in full[i : i + 4]])
                    pb = adapter.prepare([upload(f.image, adapter.device) for f in small[i : i + 4]],
                                         [f.size for f in small[i : i + 4]])
                    diffs.append(float(((pa.pixels - pb.pixels).abs() * STD).mean()))  # in 0..255 levels
                    for x, y, truth in zip(a, b, truths[i : i + 4]):
                        tallies["full"].add(x, truth)
                        tallies["decoder"].add(y, truth)
                        agree += int((class_map(x) == class_map(y)).sum())
                        total += x.width * x.height
            cost = {way: np.mean([prepare_cpu_ms(adapter, video, scale) for video, _ in clips])
                    for way, scale in (("full", None), ("decoder", adapter.geometry.scale))}
            for way in ("full", "decoder"):
                s = tallies[way].summary()
                shared = f"{100 * agree / total:15.2f}%" if way == "decoder" else f"{'':>16}"
                diff = f"{np.mean(diffs):11.2f}" if way == "decoder" else f"{'':>11}"
                print(f"{size:>10} {way:>10} {100 * s['pq']:6.1f} {100 * s['pq_things']:7.1f} "
                      f"{100 * s['pq_stuff']:6.1f} {shared} {diff} {cost[way]:13.2f}")


if __name__ == "__main__":
    main()
