"""How soon a live stream's first frame comes, and how late it is when it does.

    python benchmarks/first_frame.py [--fps 10] [--gop 10] [--tries 3] [--port 23555]

Sends ffmpeg's testsrc2 (320x240, H.264 with a keyframe every ``--gop`` frames, real time) as
MPEG-TS over UDP, and opens it ``--tries`` times with segstream's FFmpeg options for a live stream
(``stream_options``), and with the same options but FFmpeg's own frame-rate probe (20 frames) as
before. For each: seconds from opening to the first decoded frame, and how far behind live that
frame was, measured by the stream itself: over the next 40 frames, the most by which their
timestamps ran ahead of their arrival (frames that were waiting come in a burst). Not a test:
record results in docs/BENCHMARKS.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time

import av

from segstream.connectors.stream_source import stream_options

FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"


def first_frame(url: str, options: dict[str, str]) -> tuple[float, float, str]:
    """Seconds from open to the first frame, seconds that frame was behind live, the rate FFmpeg named."""
    opened = time.monotonic()
    with av.open(url, options=options) as container:
        stream = container.streams.video[0]
        arrivals: list[tuple[float, float]] = []  # (arrival, pts seconds)
        for frame in container.decode(stream):
            arrivals.append((time.monotonic(), float(frame.pts * frame.time_base)))
            if len(arrivals) > 40:
                break
        rate = str(stream.guessed_rate or stream.average_rate)
    (t0, p0), behind = arrivals[0], 0.0
    for t, p in arrivals[1:]:
        behind = max(behind, (p - p0) - (t - t0))
    return t0 - opened, behind, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--gop", type=int, default=10)
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument("--port", type=int, default=23555)
    args = parser.parse_args()
    url = f"udp://127.0.0.1:{args.port}"
    sender = subprocess.Popen(
        [FFMPEG, "-loglevel", "error", "-re", "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={args.fps}",
         "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(args.gop), "-f", "mpegts",
         f"{url}?pkt_size=1316"])
    try:
        time.sleep(1.0)
        ours = stream_options(url)
        before = {key: value for key, value in ours.items() if key != "fpsprobesize"}
        print(f"UDP MPEG-TS, testsrc2 320x240 at {args.fps} fps, keyframe every {args.gop} frames")
        for name, options in (("segstream (fpsprobesize 5)", ours), ("FFmpeg's rate probe (20 frames)", before)):
            for _ in range(args.tries):
                to_first, behind, rate = first_frame(url, options)
                print(f"{name:32s} open to first frame {to_first:5.2f} s, first frame behind live {behind:5.2f} s, "
                      f"rate {rate}")
    finally:
        sender.kill()
        sender.wait()


if __name__ == "__main__":
    main()
