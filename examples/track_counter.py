"""Consumer-group analytics: count tracks per class from a source's events stream.

    python examples/track_counter.py --url redis://localhost:6379/0 --source cam0 --consumer worker-1

Run as many as you like with the same --group: each events entry goes to one of them. A
thing's ``track_started`` (stuff, as sky or grass, has one track per class for the whole run and
is not counted unless --stuff is given) adds one to its class in the Redis hash ``segstream:<source>:track_counts``
(``<run id>|<label>`` started, ``<run id>|<label>:ended`` ended), in one Lua script with the XACK,
so an entry is counted exactly once even when a crashed worker's entries are claimed by another
(after --claim-idle-ms) or delivered twice. Counts are kept per pipeline run: a run that was
killed never ends its tracks, and the next run (a new run id) starts afresh, so only the newest
run's tracks are active. Prints the counts on exit (Ctrl-C, or --idle-exit seconds without an
event). Needs only ``pip install ./clients/python`` (no torch). Redis credentials come from
--username and --password, or REDIS_USERNAME and REDIS_PASSWORD; a pipeline that writes other
keys (its ``sinks.redis.events_stream``, a tenant's prefix) is read with --events-stream, the
same pattern, and the counts go where --counts-key says. Its ACL user needs consumer groups'
commands and the Lua script's: ``+@stream +@read +@connection +hincrby +hgetall +evalsha
+script|load`` on the events stream and the counts key.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

from segstream.client import SegstreamError, WireFormatError, connect

# XACK and count in one step: the count moves only for the consumer whose XACK took the entry.
COUNT_ONCE = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[3], 1)
  return 1
end
return 0
"""


COUNTS_KEY = "segstream:{source}:track_counts"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Count tracks per class in a consumer group.")
    parser.add_argument("--url", default=os.environ.get("SEGSTREAM_REDIS_URL", "redis://localhost:6379/0"))
    parser.add_argument("--source", default=os.environ.get("SEGSTREAM_SOURCE", "sample"))
    parser.add_argument("--username", default=os.environ.get("REDIS_USERNAME") or None)
    parser.add_argument("--password", default=os.environ.get("REDIS_PASSWORD") or None)
    parser.add_argument("--events-stream", default="segstream:{source}:events", metavar="PATTERN",
                        help="the pipeline's sinks.redis.events_stream (default %(default)s)")
    parser.add_argument("--counts-key", default=COUNTS_KEY, metavar="PATTERN",
                        help="the hash the counts go to (default %(default)s)")
    parser.add_argument("--group", default="track-counter")
    parser.add_argument("--consumer", default=f"{socket.gethostname()}-{os.getpid()}")
    parser.add_argument("--claim-idle-ms", type=int, default=30_000,
                        help="take over entries another worker left pending this long (default %(default)s)")
    parser.add_argument("--start", default="0", help="where a new group starts: 0 (all kept) or $ (from now)")
    parser.add_argument("--idle-exit", type=float, default=None, metavar="S", help="exit after S s without events")
    parser.add_argument("--stuff", action="store_true",
                        help="count stuff tracks too (sky, road: one per class and run, not objects)")
    args = parser.parse_args(argv)
    try:
        client = connect(args.url, args.password, username=args.username, events_pattern=args.events_stream)
    except SegstreamError as error:
        print(f"track_counter: error: {error}", file=sys.stderr)
        return 1
    count_once = client.redis.register_script(COUNT_ONCE)
    try:
        events = client.events(args.source, group=args.group, consumer=args.consumer, start=args.start,
                               claim_idle_ms=args.claim_idle_ms, block_ms=500)
    except ValueError as error:  # a glob or a list: a group reads one source's events
        print(f"track_counter: error: --source {args.source}: {error}", file=sys.stderr)
        return 2
    counts_key = args.counts_key.replace("{source}", args.source)
    counted = 0
    last_event = time.monotonic()
    try:
        while args.idle_exit is None or time.monotonic() - last_event < args.idle_exit:
            try:
                batch = events.read(block_ms=500)
            except WireFormatError as error:  # one entry we cannot read: say so, settle it, go on
                print(f"track_counter: skipping {error}", file=sys.stderr)
                events.ack(error.entry_id)
                continue
            for event in batch:
                last_event = time.monotonic()
                field = None
                # stuff (sky, grass) has one track per class for the whole run: not an object to count
                counted_class = args.stuff or event.data.get("isthing", True)
                if event.kind == "track_started" and counted_class:
                    field = f"{event.run_id}|{event.data['label']}"
                elif event.kind == "track_ended" and counted_class:
                    field = f"{event.run_id}|{event.data['label']}:ended"
                if field is None:
                    events.ack(event)  # other kinds (source states), and stuff, are not ours to count
                    continue
                counted += client.call(count_once, keys=[events.stream, counts_key],
                                       args=[args.group, event.id, field])
    except KeyboardInterrupt:
        pass
    except SegstreamError as error:  # what Redis refused, in one line
        print(f"track_counter: error: {error}", file=sys.stderr)
        client.close()
        return 1
    totals = {k.decode(): int(v) for k, v in client.redis.hgetall(counts_key).items()}
    newest = client.redis.xrevrange(events.stream, count=1)
    newest_run = newest[0][1].get(b"run_id", b"").decode() if newest else ""
    client.close()
    print(f"{args.consumer}: counted {counted} events; tracks per class in {counts_key}:")
    runs = sorted({key.split("|", 1)[0] for key in totals}, key=lambda run: (run != newest_run, run))
    for run in runs:
        print(f"  run {run or '-'}" + (" (the newest)" if run == newest_run else " (ended or killed: no track active)"))
        for key in sorted(k for k in totals if k.startswith(f"{run}|") and not k.endswith(":ended")):
            started, ended = totals[key], totals.get(f"{key}:ended", 0)
            active = started - ended if run == newest_run else 0
            print(f"    {key.split('|', 1)[1]:12} started {started:5d}  ended {ended:5d}  active {active:5d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
