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
import tempfile
import time

import redis

from redis_sizing import redis_server  # benchmarks/, beside this script

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
    stats = {name: client.info("commandstats").get(f"cmdstat_{name}", {}) for name in ("xadd", "xtrim", "pexpire")}
    per_call = {name: stat.get("usec_per_call", 0.0) for name, stat in stats.items()}
    per_call["batch"] = sum(stat.get("usec", 0) for stat in stats.values()) / stats["xadd"]["calls"]
    return per_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data, redis_server(data) as (client, _):
        print(f"{'entry':14} {'case':24} {'XADD us':>8} {'XTRIM us':>9} {'PEXPIRE us':>11} {'batch us':>9} "
              f"{'ratio':>6}")
        for entry, size in SIZES.items():
            alone = None
            for case in CASES:
                cost = measure(client, case, size, args.seconds, 1000)
                alone = alone or cost["batch"]
                print(f"{entry:14} {case:24} {cost['xadd']:8.2f} {cost['xtrim']:9.2f} {cost['pexpire']:11.2f} "
                      f"{cost['batch']:9.2f} {cost['batch'] / alone:5.2f}x")


if __name__ == "__main__":
    main()
