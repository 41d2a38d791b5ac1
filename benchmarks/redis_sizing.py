"""What one Redis stream entry costs: payload on the wire, memory in Redis, and what that makes
per camera-hour and per camera's uplink.

    python benchmarks/redis_sizing.py                 # about two minutes on 2 CPU cores
    python benchmarks/redis_sizing.py --frames 40 --fps 25
    python benchmarks/redis_sizing.py --preset ade20k_senatra_tiny_512 --checkpoint random --scenes demo --frames 8

Runs ``segstream run`` (the demo's shipped model, or ``--preset``/``--checkpoint``'s: SeNaTra's
entries carry its segment hierarchy too, on the CPU) on two scenes (``--scenes``), the demo clip
(samples/demo.mp4) and ffmpeg's testsrc2, each scaled to 640x480 and 1920x1080, once per mask
encoding, into a redis-server of its own (no persistence, default stream-node-max-bytes 4096).
Per case: entries, segments per entry, payload bytes per entry (field names and values, as the
sink's ``segstream_sink_bytes_written_total`` counts them), Redis memory per entry (``MEMORY
USAGE key SAMPLES 0`` / entries: the whole stream, its nodes and radix tree included), Redis's
overhead over the payload, MB per camera-hour and Mbit/s per camera at ``--fps``. Then one
short stream: XLEN once ``MAXLEN ~`` trimmed a run longer than maxlen. Not a test: record the
results in docs/BENCHMARKS.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[1]
FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
SEGSTREAM = Path(sys.executable).with_name("segstream")
SIZES = ("640x480", "1920x1080")
CONFIG = """\
sources:
  - name: {name}
    type: file
    path: {clip}
model:
  preset: {preset}
  checkpoint: {checkpoint}
  device: cpu
sinks:
  redis:
    url: redis://127.0.0.1:{port}/0
    maxlen: {maxlen}
    mask_encoding: {encoding}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def redis_server(directory: str) -> Iterator[tuple[redis.Redis, int]]:
    """A redis-server of its own on a free port, persisting nothing, once it answers PING: its client and port."""
    port = free_port()
    server = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", directory], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield client, port
    finally:
        server.terminate()
        server.wait(timeout=10)


def clip(folder: Path, scene: str, size: str, frames: int, fps: int) -> Path:
    """The scene at ``size``: the demo clip scaled, or ffmpeg's testsrc2 drawn at that size."""
    out = folder / f"{scene}-{size}.mp4"
    source = (["-i", str(REPO / "samples" / "demo.mp4"), "-vf", f"scale={size.replace('x', ':')}"] if scene == "demo"
              else ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}"])
    subprocess.run([FFMPEG, "-v", "error", "-y", *source, "-frames:v", str(frames), "-c:v", "libx264",
                    "-preset", "veryfast", "-pix_fmt", "yuv420p", str(out)], check=True)
    return out


def run(folder: Path, name: str, video: Path, port: int, encoding: str, maxlen: int, frames: int,
        model: tuple[str, str] = ("synthetic_eomt_tiny_256", "null")) -> None:
    config = folder / f"{name}.yaml"
    config.write_text(CONFIG.format(name=name, clip=video, port=port, maxlen=maxlen, encoding=encoding,
                                    preset=model[0], checkpoint=model[1]))
    done = subprocess.run([str(SEGSTREAM), "run", str(config), "--max-frames", str(frames)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"segstream run {name} failed:\n{done.stderr[-2000:]}")


def measure(client: redis.Redis, stream: str) -> dict:
    entries = client.xrange(stream)
    payload = sum(len(key) + len(value) for _, fields in entries for key, value in fields.items())
    segments = sum(fields[b"segments"].count(b'"id":') for _, fields in entries)
    memory = client.memory_usage(stream, samples=0)
    return {"entries": len(entries), "segments": segments / len(entries), "payload": payload / len(entries),
            "memory": memory / len(entries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=40, help="frames per run (default 40)")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate the rates are computed at (default 25)")
    parser.add_argument("--preset", default="synthetic_eomt_tiny_256", help="the model's preset (default the demo's)")
    parser.add_argument("--checkpoint", default="null", help="its weights (default the preset's; random: seeded)")
    parser.add_argument("--scenes", nargs="+", default=["demo", "testsrc2"], choices=["demo", "testsrc2"])
    args = parser.parse_args()
    model = (args.preset, args.checkpoint)
    with tempfile.TemporaryDirectory(prefix="segstream-sizing-") as tmp, redis_server(tmp) as (client, port):
        folder = Path(tmp)
        print(f"model {args.preset} ({args.checkpoint}); redis-server {client.info('server')['redis_version']}, "
              "stream-node-max-bytes "
              f"{client.config_get('stream-node-max-bytes')['stream-node-max-bytes']}; "
              f"{args.frames} frames per run, rates at {args.fps:g} fps")
        print(f"{'scene':<9} {'size':>9} {'encoding':>8} {'segs':>5} {'payload B':>10} {'Redis B':>9} "
              f"{'overhead':>8} {'MB/cam-h':>9} {'Mbit/s':>7}")
        for scene in args.scenes:
            for size in SIZES:
                video = clip(folder, scene, size, args.frames, int(args.fps))
                for encoding in ("rle", "idmap"):
                    name = f"{scene}-{size}-{encoding}"
                    run(folder, name, video, port, encoding, 10000, args.frames, model)
                    m = measure(client, f"segstream:{name}:frames")
                    print(f"{scene:<9} {size:>9} {encoding:>8} {m['segments']:>5.1f} {m['payload']:>10.0f} "
                          f"{m['memory']:>9.0f} {m['memory'] / m['payload'] - 1:>8.0%} "
                          f"{m['memory'] * args.fps * 3600 / 1e6:>9.0f} {m['payload'] * args.fps * 8 / 1e6:>7.2f}")
        maxlen = args.frames // 2
        run(folder, "trimmed", clip(folder, "demo", SIZES[0], args.frames, int(args.fps)), port, "rle", maxlen,
            args.frames, model)
        print(f"MAXLEN ~ {maxlen} after {args.frames} entries of the demo at 640x480 (each above 4096 bytes): "
              f"XLEN {client.xlen('segstream:trimmed:frames')}")


if __name__ == "__main__":
    main()
