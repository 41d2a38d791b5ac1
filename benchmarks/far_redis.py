"""What a run publishes to a Redis far away: a real `segstream run` (a synthetic 10 fps camera in
real time, the shipped model on the CPU) into a real redis-server behind a TCP proxy that delays
each chunk by ``--delay-ms`` each way (round trip twice that), and, for comparison, the same run
with no proxy. Prints each run's summary line.

    python benchmarks/far_redis.py [--delay-ms 250] [--seconds 30]

Needs redis-server on PATH. Not a test: record the output in docs/BENCHMARKS.md with the command
and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from redis_sizing import free_port, redis_server  # benchmarks/, beside this script


def delaying_proxy(listen: int, target: int, delay_s: float) -> None:
    """Forward 127.0.0.1:listen to 127.0.0.1:target, each chunk ``delay_s`` late, order kept (a
    thread of its own, for the life of the process)."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        late: asyncio.Queue = asyncio.Queue()

        async def send() -> None:
            while (item := await late.get()) is not None:
                due, chunk = item
                await asyncio.sleep(max(0.0, due - asyncio.get_running_loop().time()))
                writer.write(chunk)
                await writer.drain()
            writer.close()

        sender = asyncio.create_task(send())
        while chunk := await reader.read(65536):
            late.put_nowait((asyncio.get_running_loop().time() + delay_s, chunk))
        late.put_nowait(None)
        await sender

    async def serve(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer),
                             return_exceptions=True)

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", listen)
        async with server:
            await server.serve_forever()

    threading.Thread(target=asyncio.run, args=(main(),), daemon=True).start()


def run(port: int, seconds: int, folder: Path, name: str) -> tuple[str, int]:
    """The run's summary line, and the frames it published."""
    config = folder / f"{name}.yaml"
    config.write_text(
        f"sources:\n  - {{name: cam0, type: synthetic, width: 320, height: 240, fps: 10, num_frames: {seconds * 10}, "
        "realtime: true}\nmodel: {device: cpu}\nengine: {batch_size: 1}\n"
        f"sinks:\n  redis: {{url: 'redis://127.0.0.1:{port}/0', timeout_s: 5}}\nops: {{http: null}}\n")
    err = subprocess.run([sys.executable, "-m", "segstream.pipeline.cli", "run", str(config), "--log-level", "info"],
                         capture_output=True, text=True).stderr
    line = next((line for line in err.splitlines() if "frames published in" in line), None)
    if line is None:
        raise SystemExit(f"the {name} run printed no summary:\n{err}")
    return line, int(re.search(r"(\d+) frames published", line).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay-ms", type=float, default=250.0, help="each way (the round trip is twice this)")
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, python {platform.python_version()}; a 10 fps camera for "
          f"{args.seconds} s")
    with tempfile.TemporaryDirectory() as folder, redis_server(folder) as (_, port):
        near, near_frames = run(port, args.seconds, Path(folder), "near")
        print(f"near (no proxy):            {near}")
        far_port = free_port()
        delaying_proxy(far_port, port, args.delay_ms / 1000)
        far, far_frames = run(far_port, args.seconds, Path(folder), "far")
        print(f"far ({2 * args.delay_ms:.0f} ms round trip): {far}")
        print(f"far / near: {far_frames / near_frames:.2f} of the frames published")


if __name__ == "__main__":
    main()
