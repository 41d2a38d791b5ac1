"""What the preview costs Redis's entries: capture-to-publish latency of a camera-paced run
with the preview sink on, its drawing on a thread of its own (as shipped) against drawn inline on
the publishing thread (as before 0.3.7), alternating, in one run of this script.

    python benchmarks/preview_latency.py [--size 1280x720] [--frames 150] [--rounds 2]

The demo clip scaled to ``--size``, played at its rate (``realtime: true``), the shipped model
on the CPU, an embedded Redis (the run's latency is when Redis took each entry). Not a test:
record the output in docs/BENCHMARKS.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import av

from segstream.connectors.preview_sink import PreviewSink
from segstream.pipeline.cli import run_pipeline
from segstream.pipeline.config import PipelineConfig, validate_config

CLIP = Path(__file__).resolve().parent.parent / "samples" / "demo.mp4"


def _scaled(target: Path, width: int, height: int, frames: int) -> None:
    with av.open(str(CLIP)) as source, av.open(str(target), "w") as out:
        rate = source.streams.video[0].average_rate
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for _, frame in zip(range(frames), source.decode(video=0)):
            for packet in stream.encode(frame.reformat(width=width, height=height, format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _inline(self: PreviewSink, result) -> None:
    """The preview as it was: drawn and written before ``publish`` returns."""
    self._draw(result, result.image)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.split("x"))
    threaded = PreviewSink.publish
    with tempfile.TemporaryDirectory() as scratch:
        clip = Path(scratch) / "clip.mp4"
        _scaled(clip, width, height, args.frames)
        print(f"{platform.processor() or platform.machine()}, the demo clip at {width}x{height}, "
              f"{args.frames} frames played at its rate, the shipped model, embedded Redis, preview on")
        for round_ in range(args.rounds):
            for name, publish in (("thread", threaded), ("inline", _inline)):
                PreviewSink.publish = publish
                cfg = validate_config({
                    "sources": [{"name": "cam", "type": "file", "path": str(clip), "realtime": True}],
                    "sinks": {"preview": {"enabled": True, "dir": f"{scratch}/preview-{name}-{round_}"}},
                    "ops": {"http": None},
                }, schema=PipelineConfig)
                report = run_pipeline(cfg, progress=False)
                print(f"  {name:6s} round {round_ + 1}: {report.published} published, {report.dropped} dropped, "
                      f"capture to publish p50 {report.latency_ms_p50:.0f} ms, p99 {report.latency_ms_p99:.0f} ms, "
                      f"max {report.latency_ms_max:.0f} ms")
    PreviewSink.publish = threaded


if __name__ == "__main__":
    main()
