"""segstream tail prints what others wrote: escaped, and one foreign entry costs only itself
(found by a security review: a label's escape sequences reached the terminal raw; one
`XADD segstream:cam0:frames * garbage x` ended `tail --follow` with exit 1)."""

import io
import logging
import os
import select
import signal
import subprocess
import sys
import time

from segstream.connectors.redis_reader import tail
from segstream.connectors.redis_wire import event_to_wire, to_wire
from segstream.models.results import Event
from tests import test_redis_sink
from tests.test_redis_wire import synthetic_scene

server = test_redis_sink.server  # the fixture: an embedded Redis (conftest's client flushes it per test)

HOSTILE = "disc\x1b[2J\x1b[31mFAKE"


def hostile_scene(index: int):
    scene = synthetic_scene("cam0", index)
    labels = list(scene.segments.labels)
    labels[0] = HOSTILE
    scene.segments.labels = labels
    return scene


def test_tail_escapes_the_control_characters_of_labels_and_event_fields(server, client):
    client.xadd("segstream:cam0:frames", to_wire(hostile_scene(0), "rle"))
    client.xadd("segstream:cam0:events", event_to_wire(Event("cam0", "state", 1.0, {"state": "ended\r\x1b]0;pwned\x07"})))
    out = io.StringIO()
    assert tail("segstream:cam0:frames", server.url, count=None, follow=False, out=out, events=True) == 2
    printed = out.getvalue()
    assert "\x1b" not in printed and "\r" not in printed and "\x07" not in printed
    assert "disc\\x1b[2J\\x1b[31mFAKE#-" in printed and "state=ended\\x0d\\x1b]0;pwned\\x07" in printed
    assert len(printed.splitlines()) == 2


def test_tail_skips_a_foreign_entry_with_a_warning_naming_it_and_prints_the_rest(server, client, caplog):
    client.xadd("segstream:cam0:frames", to_wire(synthetic_scene("cam0", 0), "rle"))
    foreign = client.xadd("segstream:cam0:frames", {"garbage": "x"}).decode()
    client.xadd("segstream:cam0:frames", to_wire(synthetic_scene("cam0", 1), "rle"))
    out = io.StringIO()
    logger = logging.getLogger("segstream.client")
    logger.addHandler(caplog.handler)  # the CLI's logging setup, run by other tests, may stop propagation
    try:
        with caplog.at_level("WARNING", logger="segstream.client"):
            assert tail("segstream:cam0:frames", server.url, count=None, follow=False, out=out) == 2
    finally:
        logger.removeHandler(caplog.handler)
    assert [line.split()[2] for line in out.getvalue().splitlines()] == ["frame=0", "frame=1"]
    warnings = list(dict.fromkeys(r.getMessage() for r in caplog.records if r.name == "segstream.client"))
    assert warnings[0].startswith(f"entry {foreign} of segstream:cam0:frames skipped: stream entry has no 'v' field")
    assert warnings[-1] == "1 entry could not be read as segstream entries (skipped, each named above)"


def test_tail_follow_goes_on_past_a_foreign_entry(server, client):
    process = subprocess.Popen(
        [sys.executable, "-m", "segstream.pipeline.cli", "tail", "segstream:cam0:frames", "--url", server.url,
         "--follow", "--count", "0"],
        # no PYTHONUNBUFFERED: a follower piped into another program gets each entry as it comes
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
    )
    try:
        deadline = time.monotonic() + 30  # it follows from the stream's end: add the entries once it waits there
        while not any(c.get("name") == "segstream-tail" and c.get("cmd") == "xread" for c in client.client_list()):
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.05)
        client.xadd("segstream:cam0:frames", {"garbage": "x"})
        client.xadd("segstream:cam0:frames", to_wire(hostile_scene(5), "rle"))
        # the entry after the foreign one, as it comes (a follower that does not flush never shows it)
        assert select.select([process.stdout], [], [], 30)[0], "tail --follow printed nothing within 30 s"
        line = process.stdout.readline()
        assert process.poll() is None, process.stderr.read()
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert "frame=5" in line and "\x1b" not in line and "\\x1b[2J" in line
    assert process.returncode == 0
    assert "skipped: stream entry has no 'v' field" in err
    assert "1 entry could not be read as segstream entries" in err
