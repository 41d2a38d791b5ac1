"""How long a reader of the status keys takes to learn that a run is gone: a real `segstream run`
(the demo clip looping at its rate, the shipped model on the CPU) into a real redis-server, then
SIGKILL (a crash, the OOM killer) or SIGSTOP (a frozen run) and, after SIGSTOP, SIGCONT; the key
polled through the shipped reader every 20 ms.

    python benchmarks/status_expiry.py [--ttl 5] [--rounds 2]

Needs redis-server on PATH. Not a test: record the output in docs/BENCHMARKS.md with the command
and the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from segstream.client import Client

CLIP = Path(__file__).resolve().parent.parent / "samples" / "demo.mp4"


def _until(wanted, timeout_s: float = 60.0) -> float:
    """Seconds until ``wanted()`` holds (polled every 20 ms)."""
    start = time.monotonic()
    while not wanted():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError("the status key did not do what was waited for")
        time.sleep(0.02)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ttl", type=float, default=5.0, help="sinks.redis.status_ttl_s (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    _until(lambda: _answers(client), 10)
    reader = Client(client)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; status_ttl_s {args.ttl:g}")
    try:
        with tempfile.TemporaryDirectory() as folder:
            config = Path(folder) / "run.yaml"
            config.write_text(f"sources:\n  - {{name: cam0, type: file, path: '{CLIP}', loop: true, realtime: true}}\n"
                              "model: {preset: synthetic_eomt_tiny_256, device: cpu}\nops: {http: null}\n"
                              f"sinks:\n  redis: {{url: '{url}', status_ttl_s: {args.ttl}}}\n")
            for round_ in range(args.rounds):
                for how in (signal.SIGKILL, signal.SIGSTOP):
                    client.delete("segstream:cam0:status")
                    run = subprocess.Popen([sys.executable, "-m", "segstream", "run", str(config)],
                                           stderr=subprocess.DEVNULL)
                    _until(lambda: (s := reader.status("cam0")) is not None and s.frame is not None)
                    time.sleep(1.0)  # a few refreshes in
                    run.send_signal(how)
                    gone = _until(lambda: reader.status("cam0") is None)
                    back = None
                    if how == signal.SIGSTOP:
                        run.send_signal(signal.SIGCONT)
                        back = _until(lambda: reader.status("cam0") is not None)
                    run.kill()
                    run.wait()
                    said = f", back {back:.2f} s after SIGCONT" if back is not None else ""
                    print(f"round {round_ + 1}: {signal.Signals(how).name}: key gone {gone:.2f} s after{said}")
    finally:
        server.terminate()
        server.wait()


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


if __name__ == "__main__":
    main()
