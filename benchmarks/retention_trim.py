"""What ``sinks.redis.max_age_s`` costs Redis per batch: the age trim exact (``XTRIM MINID``, what the
sink sends) against approximate (``MINID ~``, which keeps whole nodes of up to 100 small entries),
each with the batch's ``PEXPIRE``.

    python benchmarks/retention_trim.py            # about 30 s

One stream in a redis-server of its own (no persistence, default node settings); per case, one
MULTI/EXEC per entry for ``--seconds`` with a 1 s age limit, so that every batch trims. Prints
Redis's own time per call (INFO commandstats, usec_per_call) and what a batch costs Redis in all,
as a ratio to XADD alone. Not a test: record the results in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time

import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
CASES = ("no trim", "MINID ~", "MINID exact", "MINID exact + PEXPIRE")
SIZES = {"event (60 B)": 60, "frame (6 kB)": 6000}


def measure(client: redis.Redis, case: str, size: int, seconds: float, age_ms: int) -> dict[str, float]:
    """Redis's microseconds per call of each command, and per batch, over ``seconds`` of batches."""
    client.flushall()
    client.config_resetstat()
    payload, newest, started = os.urandom(size), None, time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = client.pipeline(transaction=True)
        batch.xadd("stream", {"payload": payload}, maxlen=100000, approximate=True)
        if case != "no trim" and newest is not None:
            batch.xtrim("stream", minid=f"{int(newest.split(b'-')[0]) - age_ms}-0", approximate=case == "MINID ~")
        if case.endswith("PEXPIRE"):
            batch.pexpire("stream", age_ms)
        newest = batch.execute()[0]
    stats = client.info("commandstats")
    per_call = {name: stats.get(f"cmdstat_{name}", {}).get("usec_per_call", 0.0) for name in ("xadd", "xtrim", "pexpire")}
    calls = stats["cmdstat_xadd"]["calls"]
    per_call["batch"] = sum(stats.get(f"cmdstat_{name}", {}).get("usec", 0) for name in ("xadd", "xtrim", "pexpire")) / calls
    return per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", data], stdout=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            print(f"{'entry':14} {'case':24} {'XADD us':>8} {'XTRIM us':>9} {'PEXPIRE us':>11} {'batch us':>9} {'ratio':>6}")
            for entry, size in SIZES.items():
                alone = None
                for case in CASES:
                    cost = measure(client, case, size, args.seconds, 1000)
                    alone = alone or cost["batch"]
                    print(f"{entry:14} {case:24} {cost['xadd']:8.2f} {cost['xtrim']:9.2f} {cost['pexpire']:11.2f} "
                          f"{cost['batch']:9.2f} {cost['batch'] / alone:5.2f}x")
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
