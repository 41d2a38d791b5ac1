"""How long a UDP source takes to deliver a new sender's frames when an encoder with another codec
takes over its port: an H.264 sender for 3 s, then (the first killed) an HEVC one whose keyframes
come 25 s apart (keyint 250 at 10 fps, libx265's default interval), timed from the second
sender's start to its 10th frame.

    python benchmarks/sender_switch.py --repeat 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

from segstream.connectors.live_source import ReconnectPolicy
from segstream.connectors.stream_source import StreamSource

FFMPEG = shutil.which("ffmpeg") or "ffmpeg"


def sender(port: int, codec: str, gop: int) -> subprocess.Popen:
    """ffmpeg sending a moving test pattern at 10 fps to ``port`` as MPEG-TS."""
    quiet = ["-x265-params", "log-level=error"] if codec == "libx265" else []
    fast = ["-preset", "ultrafast", "-tune", "zerolatency"]  # a camera's encoder: no lookahead
    return subprocess.Popen(
        [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
         "testsrc2=size=160x120:rate=10", "-c:v", codec, *fast, *quiet, "-g", str(gop), "-bf", "0", "-pix_fmt", "yuv420p",
         "-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"], start_new_session=True)


def one_switch() -> float:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = StreamSource("udp", f"udp://127.0.0.1:{port}", policy=ReconnectPolicy(read_timeout_s=5))
    epochs: list[tuple[float, int]] = []
    reading = threading.Thread(target=lambda: epochs.extend((time.monotonic(), f.epoch) for f in source.frames()),
                               daemon=True)
    first = sender(port, "libx264", 10)
    reading.start()
    try:
        time.sleep(3)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        started = time.monotonic()
        second = sender(port, "libx265", 250)
        try:
            deadline = started + 40
            while time.monotonic() < deadline:
                new = [t for t, epoch in list(epochs) if epoch > epochs[0][1]] if epochs else []
                if len(new) >= 10:
                    return new[9] - started
                time.sleep(0.05)
            raise SystemExit("no 10 frames of the new sender within 40 s")
        finally:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait()
    finally:
        source.close()
        reading.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    for _ in range(args.repeat):
        print(f"H.264 -> HEVC (keyint 250 at 10 fps): 10 frames of the new sender {one_switch():.1f} s after it started")


if __name__ == "__main__":
    main()
