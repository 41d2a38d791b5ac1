"""A robot-style consumer: act on the newest frame only, never on a backlog.

    python examples/newest_only.py --url redis://localhost:6379/0 --source cam0

Each time a newer entry than the last one handled exists, it takes the newest (XREVRANGE COUNT 1,
woken by a blocking XREAD, no polling), skipping whatever came between, and prints what a
planner would use: how old the frame is, and each thing with its track id, centre and size,
largest first. A slow consumer never falls behind: it only ever sees the present. Needs only
``pip install ./clients/python`` (no torch). Redis credentials come from --username and
--password, or REDIS_USERNAME and REDIS_PASSWORD; the URL and source may come from
SEGSTREAM_REDIS_URL and SEGSTREAM_SOURCE. A pipeline that writes other keys (its
``sinks.redis.stream`` and ``status_key``, a tenant's prefix) is read with --stream and --status,
the same patterns.

A watchdog comes with it: after --idle seconds (default 2) without a fresh frame it says on
standard error why, from the source's status key (docs/SCHEMA.md, Status keys): the camera
reconnecting, the source ended, or no run publishing it any more (a pipeline killed or stuck),
where a planner must stop trusting the last scene; and again every --idle seconds while it lasts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from segstream.client import SegstreamError, connect


def describe(entry) -> str:
    """One line: frame, age, and the things in view by track id, largest first."""
    age_ms = (time.time() - entry.capture_ts) * 1000
    things = entry.segments[entry.segments.isthing]
    order = sorted(range(len(things)), key=lambda i: -int(things.areas[i]))
    listed = []
    for i in order:
        x0, y0, x1, y1 = (int(v) for v in things.boxes[i])
        track = int(things.track_ids[i])
        listed.append(f"{things.labels[i]}#{track if track >= 0 else '?'} at ({(x0 + x1) // 2},{(y0 + y1) // 2}) "
                      f"{int(things.areas[i])} px")
    return f"frame {entry.frame} ({age_ms:.0f} ms old, run {entry.run_id or '?'}): " + (", ".join(listed) or "no things")


def why_quiet(client, source: str, idle_s: float) -> str:
    """Why no fresh frame came for ``idle_s`` seconds, as the source's status key says."""
    quiet = f"no fresh frame of {source} for {idle_s:g} s"
    try:
        status = client.status(source, patience_s=idle_s)  # Redis away: said, and said again each --idle
    except SegstreamError as error:
        return f"{quiet}: {error}"
    if status is None:
        return f"{quiet}, and no run publishes it (its pipeline stopped, was killed or is stuck): the last scene is stale"
    if status.final:
        return f"{quiet}: run {status.run_id} {status.state} it; nothing more comes until a run publishes it again"
    if status.state == "streaming":
        return (f"{quiet}: run {status.run_id} is streaming it, its newest frame {status.frame} (a still snapshot "
                "scene, or every frame dropped)")
    down = status.ts - (status.down_since if status.down_since is not None else status.since)  # the run's clock
    return f"{quiet}: the source is {status.state}, down for {down:.0f} s: {status.reason} (run {status.run_id})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Act on the newest segstream frame only.")
    parser.add_argument("--url", default=os.environ.get("SEGSTREAM_REDIS_URL", "redis://localhost:6379/0"))
    parser.add_argument("--source", default=os.environ.get("SEGSTREAM_SOURCE", "sample"))
    parser.add_argument("--username", default=os.environ.get("REDIS_USERNAME") or None)
    parser.add_argument("--password", default=os.environ.get("REDIS_PASSWORD") or None)
    parser.add_argument("--stream", default="segstream:{source}:frames", metavar="PATTERN",
                        help="the pipeline's sinks.redis.stream (default %(default)s)")
    parser.add_argument("--status", default=None, metavar="PATTERN",
                        help="the pipeline's sinks.redis.status_key (default: beside --stream, :frames as :status)")
    parser.add_argument("--idle", type=float, default=2.0, metavar="S",
                        help="say why after S seconds without a fresh frame (default %(default)s)")
    parser.add_argument("--count", type=int, default=None, metavar="N", help="stop after N entries (default: never)")
    parser.add_argument("--max-age", type=float, default=None, metavar="S",
                        help="leave out scenes captured more than S seconds ago (a stopped or overloaded pipeline's)")
    args = parser.parse_args(argv)
    try:
        client = connect(args.url, args.password, username=args.username, stream_pattern=args.stream,
                         status_pattern=args.status)
    except SegstreamError as error:
        print(f"newest_only: error: {error}", file=sys.stderr)
        return 1
    handled = 0
    try:
        for entry in client.follow_newest(args.source, max_age_s=args.max_age, idle_s=args.idle):
            if entry is None:  # the watchdog: nothing fresh for --idle seconds
                print(f"newest_only: {why_quiet(client, args.source, args.idle)}", file=sys.stderr, flush=True)
                continue
            print(describe(entry), flush=True)
            handled += 1
            if args.count is not None and handled >= args.count:
                break
    except KeyboardInterrupt:
        pass
    except SegstreamError as error:  # what Redis refused, in one line
        print(f"newest_only: error: {error}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
