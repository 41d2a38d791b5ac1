"""Sum py-spy's raw stacks (``py-spy record -f raw --threads``) per thread: samples, and the Python
lines that take them, for the threads whose names contain the given words. Each sample counts
once for each of its innermost four Python frames (so a line's share includes what it called
within those four).

    python benchmarks/stacks.py .gpu/out/large_idle.txt post model stage publish capture decode
"""

from __future__ import annotations

import argparse
import collections
import re


# where a thread waits (for a queue, a slot, an event), not works: with py-spy's --idle
WAITS = ("Condition.wait", "Event.wait", "Semaphore.acquire")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("threads", nargs="*", help="words of thread names (default: list the threads)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    per_thread: collections.Counter[str] = collections.Counter()
    waiting: collections.Counter[str] = collections.Counter()  # samples whose innermost Python frame waits
    lines: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    with open(args.file) as stacks:
        for row in stacks:
            stack, count = row.rsplit(" ", 1)
            frames = stack.split(";")
            thread = re.sub(r"\(\d+\)", "", frames[0]).replace("thread", "").strip(" :") or "?"
            per_thread[thread] += int(count)
            word = next((w for w in args.threads if w in thread), None)
            if word is None:
                continue
            python = [re.sub(r"\(.*/", "(", f) for f in frames[1:] if ".py:" in f]
            if python and python[-1].startswith(WAITS):
                waiting[word] += int(count)
            for frame in dict.fromkeys(python[-4:]):  # the innermost four Python frames, each once
                lines[word][frame] += int(count)
    if not args.threads:
        for thread, count in per_thread.most_common():
            print(f"{count:7d}  {thread}")
        return
    for word in args.threads:
        total = sum(n for t, n in per_thread.items() if word in t)
        busy = 100 * (total - waiting[word]) / max(total, 1)
        print(f"== {word}: {total} samples, busy {busy:.1f}% (the rest waiting: {', '.join(WAITS)})")
        for frame, count in lines[word].most_common(args.top):
            print(f"{count:7d}  {100 * count / max(total, 1):5.1f}%  {frame[:140]}")


if __name__ == "__main__":
    main()
