"""``PauseWatch`` tells segstream's own pauses from a busy interpreter (a SIGSTOP'd run: test_live_cli)."""

from __future__ import annotations

import sys
import time

from segstream.connectors.pauses import MIN_PAUSE_S, PauseWatch


def test_a_thread_holding_the_interpreter_is_not_a_pause():
    # the watch thread waits for the interpreter as long as after a SIGSTOP, but the process ran meanwhile
    watch = PauseWatch()
    watch.start()
    time.sleep(0.3)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(10.0)
    try:
        busy_since = time.monotonic()
        while time.monotonic() - busy_since < 3 * MIN_PAUSE_S:
            pass
    finally:
        sys.setswitchinterval(interval)
    assert watch.since(busy_since - 1.0) == 0.0
