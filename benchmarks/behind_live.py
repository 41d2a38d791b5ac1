"""How far behind live a UDP stream the machine cannot decode as fast as it comes falls: the
sample clip upscaled to 3840x2160 at 60 fps (H.264, about 24 Mbit/s) sent in real time as
MPEG-TS over UDP, read by `segstream run` (the shipped model on the CPU, no sinks), its
`segstream_source_lag_seconds` read from /metrics every 10 s; with the source's UDP buffer as it
is, and as it was (`--fifo 1000000`, 188 MB); with the source's catch-up (`max_behind_s`, 1 s by
default) or without it (`--max-behind null`).

    python benchmarks/behind_live.py --seconds 30 [--fifo 1000000] [--max-behind null]
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "demo.mp4"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lag(port: int) -> str:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return "?"
    lines = [line for line in text.splitlines() if line.startswith("segstream_source_lag_seconds")]
    return lines[0].rpartition(" ")[2] if lines else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--fifo", type=int, help="the source's FFmpeg UDP fifo_size (packets); default: segstream's")
    parser.add_argument("--max-behind", help="the source's max_behind_s (seconds, or null); default: segstream's")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        clip = Path(scratch) / "4k60.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(SAMPLE), "-vf", "scale=3840:2160,fps=60", "-c:v", "libx264",
                        "-preset", "ultrafast", "-b:v", "24M", "-g", "60", str(clip)], check=True)
        udp, ops = free_port(socket.SOCK_DGRAM), free_port()
        options = f", options: {{fifo_size: '{args.fifo}'}}" if args.fifo else ""
        options += f", max_behind_s: {args.max_behind}" if args.max_behind else ""
        config = Path(scratch) / "live.yaml"
        config.write_text(f"sources:\n  - {{name: cam4k, type: stream, url: 'udp://127.0.0.1:{udp}'{options}}}\n"
                          "model: {preset: synthetic_eomt_tiny_256, device: cpu}\n"
                          f"sinks: {{redis: {{enabled: false}}}}\nops: {{http: '127.0.0.1:{ops}'}}\n")
        sender = subprocess.Popen(["ffmpeg", "-nostdin", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(clip),
                                   "-c", "copy", "-f", "mpegts", f"udp://127.0.0.1:{udp}?pkt_size=1316"])
        run = subprocess.Popen([sys.executable, "-m", "segstream", "run", str(config)], stderr=subprocess.PIPE,
                               text=True)
        try:
            for second in range(10, args.seconds + 1, 10):
                time.sleep(10)
                print(f"t={second} s: behind live {lag(ops)} s", flush=True)
            sender.kill()
            time.sleep(5)
            print(f"5 s after the sender stopped: behind live {lag(ops)} s", flush=True)
        finally:
            sender.kill()
            run.send_signal(signal.SIGINT)
            _, err = run.communicate(timeout=60)
        summary = [line for line in err.splitlines()
                   if "frames published" in line or "behind live" in line or "stopped:" in line]
        print("\n".join(summary))


if __name__ == "__main__":
    main()
