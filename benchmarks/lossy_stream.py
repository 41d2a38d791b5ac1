"""How many of the frames a network loses a live source counts: the sample clip as MPEG-TS over
HTTP, damaged by FFmpeg's noise filter (deterministic: the same losses each run), read by
StreamSource alone for a while; the frames decoded, those counted as decode errors (rejected,
or lost in a gap of a steady rate), the frame numbers they span, and the frames the timestamps
span: the difference is frames lost that no rule counted.

    python benchmarks/lossy_stream.py --seconds 20
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import time
from pathlib import Path

from segstream.connectors.stream_source import StreamSource

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "demo.mp4"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--noise", type=int, default=50, help="the noise filter's amount")
    args = parser.parse_args()
    url = f"http://127.0.0.1:{free_port()}/live.ts"
    sender = subprocess.Popen(["ffmpeg", "-loglevel", "quiet", "-re", "-stream_loop", "-1", "-i", str(SAMPLE),
                               "-c:v", "libx264", "-g", "25", "-bsf:v", f"noise=amount={args.noise}", "-f", "mpegts",
                               "-listen", "1", url])
    try:
        time.sleep(1.0)
        source = StreamSource("net", url)
        seen: list[tuple[int, float | None]] = []
        until = time.monotonic() + args.seconds
        for frame in source.frames():
            seen.append((frame.index, frame.pts_seconds))
            if time.monotonic() > until:
                break
        source.close()
    finally:
        sender.kill()
        sender.wait()
    if len(seen) < 2 or seen[0][1] is None or seen[-1][1] is None:
        raise SystemExit(f"the stream gave {len(seen)} frames with timestamps: nothing to compare")
    (first, start), (last, end) = seen[0], seen[-1]
    fps = 25  # the sample clip's rate, which ffmpeg keeps
    spanned = round((end - start) * fps) + 1
    counted = last - first + 1
    print(f"decoded {len(seen)}, decode errors {source.decode_errors}, frame numbers span {counted}, "
          f"timestamps span {spanned} frames: {spanned - counted} of {spanned - len(seen)} lost frames uncounted")


if __name__ == "__main__":
    main()
