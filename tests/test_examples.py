"""The example consumers, run as their users run them, against a Redis a real run published to."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from segstream.connectors.embedded_redis import EmbeddedRedis
from segstream.connectors.redis_wire import event_from_wire
from segstream.pipeline.cli import run_pipeline
from segstream.pipeline.config import validate_config

REPO = Path(__file__).resolve().parents[1]
FRAMES = 40


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A run of the shipped model on a synthetic scene, tracked, into an embedded Redis."""
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        cfg = validate_config({
            "sources": [{"name": "cam0", "type": "synthetic", "width": 128, "height": 96, "num_frames": FRAMES,
                         "seed": 4}],
            "model": {"device": "cpu", "precision": "fp32"},
            "ops": {"http": None},
            "sinks": {"redis": {"url": server.url}},
        })
        run_pipeline(cfg, progress=False)
        yield server


def run_example(name: str, *args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "examples" / name), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_track_counter_counts_each_started_track_once_per_class_across_workers(published):
    events = [event_from_wire(f) for _, f in published.client().xrange("segstream:cam0:events")]
    things = [e for e in events if e.kind in ("track_started", "track_ended") and e.data["isthing"]]
    expected = collections.Counter(e.data["label"] for e in things if e.kind == "track_started")
    assert sum(expected.values()) >= 4, "the run must have started tracks for the test to mean anything"
    assert any(not e.data["isthing"] for e in events if e.kind == "track_started"), "and stuff tracks, not counted"

    first = run_example("track_counter.py", "--url", published.url, "--source", "cam0", "--consumer", "w1",
                        "--idle-exit", "1")
    again = run_example("track_counter.py", "--url", published.url, "--source", "cam0", "--consumer", "w2",
                        "--idle-exit", "1")
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert f"w1: counted {len(things)} events" in first.stdout  # things only: stuff (sky, grass) is no object
    assert "w2: counted 0 events" in again.stdout  # the group already took every entry
    counts = {k.decode(): int(v) for k, v in published.client().hgetall("segstream:cam0:track_counts").items()}
    (run_id,) = {e.run_id for e in events}
    assert {k: v for k, v in counts.items() if not k.endswith(":ended")} == {f"{run_id}|{k}": v for k, v in expected.items()}
    assert f"run {run_id} (the newest)" in first.stdout
    for label, started in expected.items():
        assert f"{label:12} started {started:5d}" in first.stdout


def test_newest_only_prints_the_newest_frame_then_each_newer_one(published):
    process = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "newest_only.py"), "--url", published.url, "--source", "cam0",
         "--count", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    first = process.stdout.readline()
    assert first.startswith(f"frame {FRAMES - 1} (")
    assert "#" in first and " px" in first  # things with their track ids
    client = published.client()
    (_, fields), = client.xrevrange("segstream:cam0:frames", count=1)
    fields[b"frame"] = str(FRAMES + 5).encode()
    time.sleep(0.2)
    client.xadd("segstream:cam0:frames", fields)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert out.startswith(f"frame {FRAMES + 5} (")


def test_newest_only_s_watchdog_says_why_no_fresh_frame_comes(published):
    client = published.client()
    ended = client.get("segstream:cam0:status")
    (_, newest), = client.xrevrange("segstream:cam0:frames", count=1)
    process = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "newest_only.py"), "--url", published.url, "--source", "cam0",
         "--count", "2", "--idle", "0.3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout.readline().startswith(f"frame {newest[b'frame'].decode()} (")
        (run_id,) = {f[b"run_id"].decode() for _, f in client.xrange("segstream:cam0:frames")}
        assert process.stderr.readline() == (f"newest_only: no fresh frame of cam0 for 0.3 s: run {run_id} ended it; "
                                             "nothing more comes until a run publishes it again\n")
        client.delete("segstream:cam0:status")  # as a killed run's key goes
        while (line := process.stderr.readline()).endswith("ended it; nothing more comes until a run publishes it "
                                                           "again\n"):
            pass
        assert line == ("newest_only: no fresh frame of cam0 for 0.3 s, and no run publishes it (its pipeline "
                        "stopped, was killed or is stuck): the last scene is stale\n")
        (_, fields), = client.xrevrange("segstream:cam0:frames", count=1)
        fields[b"frame"] = str(FRAMES + 60).encode()
        client.xadd("segstream:cam0:frames", fields)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
        client.set("segstream:cam0:status", ended)
    assert process.returncode == 0, err
    assert out.startswith(f"frame {FRAMES + 60} (")


def test_newest_only_s_watchdog_speaks_through_a_redis_outage(published, tmp_path):
    # found reviewing: its status read waited out the outage, so the watchdog fell silent in it
    from tests.redis_servers import RedisProcess

    with RedisProcess(tmp_path / "redis") as server:
        (_, newest), = published.client().xrevrange("segstream:cam0:frames", count=1)
        server.client().xadd("segstream:cam0:frames", newest)
        process = subprocess.Popen(
            [sys.executable, str(REPO / "examples" / "newest_only.py"), "--url", server.url, "--source", "cam0",
             "--idle", "0.3"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        guard = threading.Timer(60, process.kill)  # a watchdog that never speaks ends the reads (EOF)
        guard.start()
        try:
            assert process.stdout.readline().startswith("frame ")
            assert "no run publishes it" in process.stderr.readline()  # no status key there
            server.kill()
            said = []
            while len(said) < 3:
                line = process.stderr.readline()
                assert line, "the watchdog fell silent"
                if line.startswith("newest_only: no fresh frame of cam0 for 0.3 s: Redis at "):
                    said.append(line)
            assert said[0].endswith(" did not answer for 0.3 s: the status of cam0 is not known — it is "
                                    "reconnecting\n")
        finally:
            guard.cancel()
            process.kill()
            process.communicate()


def test_the_examples_read_a_tenant_s_streams_as_its_acl_user(published):
    # found at stop 28: neither example took a stream pattern or a username, so a tenant's consumer
    # (OPERATIONS, several pipelines on one machine) could not run them
    admin = published.client()
    for kind in ("frames", "events"):
        for entry_id, fields in admin.xrange(f"segstream:cam0:{kind}"):
            admin.xadd(f"tenant1:cam0:{kind}", fields)
    # the grant track_counter's docstring names (release QA: +evalsha and +script|load were said nowhere)
    doc = (REPO / "examples" / "track_counter.py").read_text().replace("\n", " ")
    grant = re.search(r"``(\+@stream [^`]*)``", doc).group(1).split()
    admin.acl_setuser("reader1", enabled=True, passwords=["+r1-pw"], keys=["tenant1:*"], commands=grant)
    env = {"REDIS_USERNAME": "reader1", "REDIS_PASSWORD": "r1-pw"}
    newest = run_example("newest_only.py", "--url", published.url, "--source", "cam0",
                         "--stream", "tenant1:{source}:frames", "--count", "1", env=env)
    assert newest.returncode == 0, newest.stderr
    assert newest.stdout.startswith("frame ")
    counted = run_example("track_counter.py", "--url", published.url, "--source", "cam0", "--idle-exit", "1",
                          "--events-stream", "tenant1:{source}:events", "--counts-key", "tenant1:{source}:counts",
                          env=env)
    assert counted.returncode == 0, counted.stderr
    assert "tracks per class in tenant1:cam0:counts:" in counted.stdout
    assert admin.hlen("tenant1:cam0:counts") > 0


def test_an_example_pointed_at_no_redis_says_so_in_one_line():
    done = run_example("newest_only.py", "--url", "redis://127.0.0.1:1", "--count", "1")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "cannot reach Redis" in done.stderr


def test_segstream_tail_shows_track_ids_and_with_events_the_events_stream(published, capsys):
    from segstream.pipeline.cli import main

    assert main(["tail", "segstream:cam0:frames", "--url", published.url, "--count", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(" cam0 frame=" in line for line in lines)
    assert any("#" in line and "#-" not in line.split("[")[1].split(",")[0] for line in lines)

    assert main(["tail", "segstream:cam0:frames", "--url", published.url, "--count", "1000", "--events"]) == 0
    lines = capsys.readouterr().out.splitlines()
    kinds = collections.Counter(line.split()[2] for line in lines)
    assert kinds["track_started"] >= 4 and kinds["track_ended"] >= 1
    assert sum(kind.startswith("frame=") for kind in kinds.elements()) >= FRAMES  # (+1 if the newest-only test added one)
    started = next(line for line in lines if " track_started " in line)
    assert "track_id=" in started and "label=" in started and "first_frame=" in started
    millis = [int(line.split()[0].split("-")[0]) for line in lines]
    assert millis == sorted(millis)  # one time order


def test_track_counter_does_not_count_a_killed_run_s_tracks_as_active(published):
    # Found probing: after a pipeline was killed (no track_ended), its tracks stayed active for ever.
    from segstream.connectors.redis_wire import event_to_wire
    from segstream.models.results import Event

    client = published.client()
    killed = Event("cam9", "track_started", 1.0, {"track_id": 1, "label": "box", "class_id": 1, "isthing": True})
    killed.run_id = "killedrun"
    client.xadd("segstream:cam9:events", event_to_wire(killed))
    for _, fields in client.xrange("segstream:cam0:events"):
        client.xadd("segstream:cam9:events", fields)
    result = run_example("track_counter.py", "--url", published.url, "--source", "cam9", "--idle-exit", "1")
    assert result.returncode == 0, result.stderr
    old = result.stdout.split("run killedrun (ended or killed: no track active)")[1]
    assert "box          started     1  ended     0  active     0" in old


def test_track_counter_given_a_glob_says_a_group_reads_one_source(published):
    result = run_example("track_counter.py", "--url", published.url, "--source", "cam*", "--idle-exit", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("track_counter: error: --source cam*: a consumer group reads one stream")
