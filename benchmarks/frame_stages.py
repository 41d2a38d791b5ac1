"""What the per-frame work after the model costs alone, at a frame size: the decision (the post
thread; a batch of 4 frames with the CPU's budget of masks at once and with a GPU's, its torch
operations counted),
tracking (the stage thread) and the Redis entry's encoding (the publish thread), in ms of one
core a frame.

    python benchmarks/frame_stages.py                        # 1080p, S/640 random weights, 24 frames
    python benchmarks/frame_stages.py --size 3840x2160 --frames 12
    python benchmarks/frame_stages.py --pass-memory    # one decision pass at an H200's budget: its peak memory

On a GPU these run in Python threads beside the post-processing thread, all under one GIL: their
sum is what a frame holds the interpreter for besides the decision and the network's launches
(docs/BENCHMARKS.md, "GPU"). The frames are a synthetic scene's, segmented on the CPU in fast
mode (the decided map at the model's size, as on a GPU). Not a test: record the output in
docs/BENCHMARKS.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import copy
import platform
import resource
import statistics
import time
from types import SimpleNamespace
from unittest import mock

import torch
from torch.profiler import ProfilerActivity, profile

from segstream.connectors.redis_wire import to_wire
from segstream.connectors.synthetic import synthetic_clip
from segstream.models import processing
from segstream.models.segmenter import upload
from segstream.pipeline.config import ModelConfig, TrackingConfig
from segstream.pipeline.model_factory import build_segmenter
from segstream.pipeline.tracking import tracking_stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1920x1080", help="frame WIDTHxHEIGHT")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--preset", default="coco_panoptic_eomt_small_640_2x")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the frames (the median is given)")
    parser.add_argument("--pass-memory", action="store_true",
                        help="only the peak memory of one decision pass over 8 fast-mode 1080p frames of 80 kept "
                             "queries each, at a 141 GiB GPU's budget (run on the CPU)")
    args = parser.parse_args()
    if args.pass_memory:
        _pass_memory()
        return
    width, height = (int(v) for v in args.size.lower().split("x"))
    segmenter = build_segmenter(ModelConfig(preset=args.preset, checkpoint="random", device="cpu", precision="fp32"))
    images = [image for image, _ in synthetic_clip(width, height, args.frames, seed=3, fps=30)]
    frames = []
    for first in range(0, len(images), 4):
        frames += segmenter.segment(images[first:first + 4])
    for i, result in enumerate(frames):
        result.source, result.index, result.pts_seconds = "bench", i, i / 30
    decision = {}
    cpu_chunks = processing.chunk_size
    budgets = (("CPU", cpu_chunks),) + tuple((f"{gib} GiB GPU", _gpu_chunks(gib)) for gib in (16, 141))
    for name, chunks in budgets:
        processing.chunk_size = chunks
        try:
            decision[name] = _decision(segmenter, images[:4], args.repeat)
        finally:
            processing.chunk_size = cpu_chunks
    (tracker,) = tracking_stages(TrackingConfig())
    tracking, wire = [], []
    for _ in range(args.repeat):
        stage, given = tracker("bench"), copy.deepcopy(frames)
        start = time.perf_counter()
        tracked = [stage.process(result) for result in given]
        tracking.append((time.perf_counter() - start) / len(given))
        start = time.perf_counter()
        for result in tracked:
            to_wire(result)
        wire.append((time.perf_counter() - start) / len(tracked))
    segments = statistics.mean(len(result.segments) for result in frames)
    print(f"{platform.processor() or platform.machine()}, {args.preset} random weights, {width}x{height}, "
          f"{len(frames)} frames, {segments:.1f} segments a frame (median of {args.repeat} passes)")
    for name, (seconds, operations) in decision.items():
        print(f"  decision     {1000 * seconds:6.2f} ms a frame, {operations:.0f} torch operations a frame "
              f"(masks at once as on a {name})")
    print(f"  tracking     {1000 * statistics.median(tracking):6.2f} ms a frame")
    print(f"  Redis entry  {1000 * statistics.median(wire):6.2f} ms a frame (COCO RLE masks)")


_CHUNK_SIZE = processing.chunk_size  # the rule itself: the runs below put others in its place


def _gpu_chunks(gib: int):
    """``processing.chunk_size`` as a GPU of ``gib`` GiB has it (its budget rule, run on the CPU)."""
    memory = SimpleNamespace(total_memory=gib * 2**30)

    def chunks(device: torch.device, size: tuple[int, int]) -> int:
        with mock.patch.object(torch.cuda, "get_device_properties", lambda device: memory):
            processing._pixel_budget.cache_clear()
            try:
                return _CHUNK_SIZE(torch.device("cuda"), size)
            finally:
                processing._pixel_budget.cache_clear()

    return chunks


def _decision(segmenter, images: list, repeat: int) -> tuple[float, float]:
    """The panoptic decision's median time a frame over ``repeat`` passes, and its torch
    operations a frame (torch.profiler's aten events, nested ones included)."""
    with torch.inference_mode():
        prepared = segmenter.prepare([upload(image, segmenter.device) for image in images])
        outputs = segmenter.forward(prepared)
        segmenter.decide(outputs, prepared)  # untimed: the first pass's allocations
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            segmenter.decide(outputs, prepared)
            times.append((time.perf_counter() - start) / len(images))
        with profile(activities=[ProfilerActivity.CPU]) as profiled:
            segmenter.decide(outputs, prepared)
    operations = sum(event.count for event in profiled.key_averages() if event.key.startswith("aten::"))
    return statistics.median(times), operations / len(images)


def _pass_memory() -> None:
    """The growth of this process's peak RSS over one ``panoptic_frames`` pass: 8 frames, 200
    queries of which 80 kept, EoMT-L/640's 160x160 mask logits, decided at 640x360 (a 16:9
    frame in fast mode), every mask in one pass as on an H200."""
    frames, queries, classes = 8, 200, 133
    generator = torch.Generator().manual_seed(0)
    masks = torch.randn(frames, queries, 160, 160, generator=generator)
    logits = torch.full((frames, queries, classes + 1), -10.0)
    logits[:, :80, 0] = 10.0  # kept: an object class, probability ~1
    logits[:, 80:, classes] = 10.0  # the rest: no object
    processing.chunk_size = _gpu_chunks(141)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode():
        processing.panoptic_frames(masks, logits, 640, [(360, 640)] * frames, [(1080, 1920)] * frames,
                                   torch.ones(classes, dtype=torch.bool), mode="fast")
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(f"one pass over {frames} frames x 80 kept queries at 640x360 (641 masks at once): peak memory "
          f"+{grown / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
