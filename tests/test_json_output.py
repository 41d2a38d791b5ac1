"""``--json`` of tail, validate and evaluate: what a script reads instead of text for people;
``tail --follow``'s ways to stop: ``--idle-timeout`` and ``--until-ended``."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import segstream

from segstream.connectors.redis_wire import event_to_wire, to_wire
from segstream.models.results import Event
from segstream.pipeline.cli import main
from tests.redis_servers import RedisProcess, free_port
from tests.test_redis_wire import synthetic_scene

DEMO = Path(__file__).resolve().parents[1] / "samples" / "demo.mp4"
FRAMES = "segstream:cam0:frames"
EVENTS = "segstream:cam0:events"
SEGMENT_KEYS = {"id", "class_id", "label", "isthing", "score", "area", "box", "track_id", "track_age", "centroid"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with RedisProcess(tmp_path_factory.mktemp("redis"), port=free_port(27200, 27299)) as redis_server:
        yield redis_server


def state(name: str, reason: str = "end of input") -> dict:
    return event_to_wire(Event("cam0", "state", 2.0, {"state": name, "previous": "streaming", "reason": reason},
                               run_id="run-1"))


def tail_json(server, capsys, *extra: str) -> tuple[int, list[dict], str]:
    code = main(["tail", FRAMES, "--url", server.url, "--json", *extra])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def follower(server, *extra: str) -> subprocess.Popen:
    # no PYTHONUNBUFFERED: each line must reach a pipe as it is printed
    return subprocess.Popen(
        [sys.executable, "-m", "segstream", "tail", FRAMES, "--url", server.url, "--follow", "--count", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
    )


def wait_until_reading(process: subprocess.Popen, client) -> None:
    """Until the follower waits at the streams' end (entries added before would be its backlog)."""
    deadline = time.monotonic() + 30
    while not any(c.get("name") == "segstream-tail" and c.get("cmd") == "xread" for c in client.client_list()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)


def follow_a_burst(server, client, write, *extra: str) -> tuple[int, str, str]:
    """A follower started, then what ``write`` adds to a transaction written all at once (one
    XREAD sees it whole, its count full); the follower's exit status, output and errors."""
    process = follower(server, *extra)
    try:
        wait_until_reading(process, client)
        burst = client.pipeline(transaction=True)
        write(burst)
        burst.execute()
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, out, err


def test_tail_json_prints_each_frame_with_its_segments_and_no_masks(server, client, capsys):
    scenes = [synthetic_scene("cam0", index) for index in range(3)]
    for scene in scenes:
        scene.run_id = "run-1"
        client.xadd(FRAMES, {**to_wire(scene, "rle"), "seq": str(scene.index + 1)})

    code, records, _ = tail_json(server, capsys)

    assert code == 0 and [r["frame"] for r in records] == [0, 1, 2]
    record, scene = records[1], scenes[1]
    assert record["type"] == "frame" and record["stream"] == FRAMES and record["source"] == "cam0"
    assert record["run_id"] == "run-1" and record["seq"] == 2 and re.fullmatch(r"\d+-\d+", record["id"])
    assert (record["width"], record["height"], record["model"], record["epoch"]) == (80, 60, "m", 0)
    assert record["capture_ts"] == scene.capture_ts and record["latency_s"] == record["publish_ts"] - scene.capture_ts
    assert (record["pts"], record["time_base"], record["pts_s"]) == (3000, "1/90000", scene.pts_seconds)
    assert [set(s) for s in record["segments"]] == [SEGMENT_KEYS] * len(scene.segments)  # no rle, no idmap
    assert [(s["id"], s["label"], s["box"], s["area"], s["track_id"]) for s in record["segments"]] == [
        (s["id"], s["label"], s["box"], s["area"], s["track_id"]) for s in scene.segments]


def test_tail_json_with_events_and_at_prints_events_as_objects_in_time_order(server, client, capsys):
    for index in range(3):
        client.xadd(FRAMES, to_wire(synthetic_scene("cam0", index), "rle"), id=f"1000-{index}")
    client.xadd(EVENTS, event_to_wire(Event("cam0", "track_started", 1.0, {"track_id": 4, "frame": 0})), id="1000-0")
    at = str(synthetic_scene("cam0", 1).capture_ts)

    code, records, _ = tail_json(server, capsys, "--events", "--at", at)

    assert code == 0
    assert [(r["type"], r.get("frame"), r.get("kind")) for r in records] == [
        ("frame", 0, None), ("event", None, "track_started"), ("frame", 1, None)]
    assert records[1]["data"] == {"track_id": 4, "frame": 0} and records[1]["stream"] == EVENTS


def test_tail_json_follow_prints_each_entry_as_it_comes_and_ends_with_its_source(server, client):
    process = follower(server, "--json", "--until-ended")
    try:
        wait_until_reading(process, client)
        client.xadd(FRAMES, to_wire(synthetic_scene("cam0", 7), "rle"))
        assert select.select([process.stdout], [], [], 30)[0], "tail --follow --json printed nothing within 30 s"
        assert json.loads(process.stdout.readline())["frame"] == 7
        assert process.poll() is None  # the source has not ended
        client.xadd(EVENTS, state("ended"))
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert out == ""  # its events are not printed without --events
    assert "source cam0 ended (end of input)" in err


def test_tail_until_ended_prints_every_entry_before_the_end_however_many_came_at_once(server, client):
    # review: 1,500 frames and their end in one burst: one read took 500 frames and the end, and
    # tail exited 0 without the other 1,000
    entry = {**to_wire(synthetic_scene("cam0", 0), "rle"), "run_id": "run-1"}  # the run that ends

    def write(burst) -> None:
        for index in range(1500):
            burst.xadd(FRAMES, {**entry, "frame": str(index)})
        burst.xadd(EVENTS, state("ended"))

    returncode, out, err = follow_a_burst(server, client, write, "--json", "--until-ended")
    assert returncode == 0, err
    assert [json.loads(line)["frame"] for line in out.splitlines()] == list(range(1500))


def test_tail_follow_with_events_prints_a_burst_in_time_order_however_many_came_at_once(server, client):
    # one read takes 500 frames and every event: the events of frames 500 on were printed before those frames
    entry = {**to_wire(synthetic_scene("cam0", 0), "rle"), "run_id": "run-1"}

    def write(burst) -> None:
        start = int(time.time() * 1000) + 1000  # IDs later than any entry there: a millisecond each frame
        for index in range(1200):
            burst.xadd(FRAMES, {**entry, "frame": str(index)}, id=f"{start + index}-0")
            if index % 100 == 50:
                burst.xadd(EVENTS, event_to_wire(Event("cam0", "track_started", 1.0, {"track_id": index, "frame": index})),
                           id=f"{start + index}-0")
        burst.xadd(EVENTS, state("ended"), id=f"{start + 1200}-0")

    returncode, out, err = follow_a_burst(server, client, write, "--json", "--events", "--until-ended")
    assert returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    order = [r["frame"] if r["type"] == "frame" else ("event", r["data"].get("frame")) for r in records]
    expected = [step for index in range(1200) for step in ([index, ("event", index)] if index % 100 == 50 else [index])]
    assert order == [*expected, ("event", None)]


def test_tail_until_ended_of_a_source_that_already_ended_exits_at_once(server, client, capsys):
    client.xadd(FRAMES, to_wire(synthetic_scene("cam0", 0), "rle"))
    client.xadd(EVENTS, state("ended"))

    started = time.monotonic()
    code, records, err = tail_json(server, capsys, "--follow", "--until-ended")

    assert code == 0 and time.monotonic() - started < 5
    assert [r["frame"] for r in records] == [0] and "source cam0 ended" in err


def test_tail_until_ended_waits_for_a_run_started_again_after_an_end(server, client):
    client.xadd(EVENTS, state("ended"))
    client.xadd(EVENTS, event_to_wire(Event("cam0", "state", 3.0, {"state": "connecting", "previous": "new"})))
    process = follower(server, "--until-ended", "--idle-timeout", "1")
    _, err = process.communicate(timeout=30)
    assert process.returncode == 124, err  # not 0: the run begun again has not ended


def test_tail_until_ended_of_a_failed_source_exits_1_saying_why(server, client):
    process = follower(server, "--until-ended")
    try:
        wait_until_reading(process, client)
        client.xadd(EVENTS, state("failed", "gave up after 3 reconnects"))
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 1
    assert err.strip().splitlines()[-1] == (
        "segstream: error: source cam0 failed: gave up after 3 reconnects — its run's log says more")


def test_tail_follow_idle_timeout_gives_up_with_124_after_the_last_entry(server, client):
    process = follower(server, "--idle-timeout", "1.5")
    wait_until_reading(process, client)
    client.xadd(FRAMES, to_wire(synthetic_scene("cam0", 3), "rle"))
    printed = time.monotonic()
    out, err = process.communicate(timeout=30)
    assert process.returncode == 124, err
    assert 1.0 < time.monotonic() - printed < 10  # counted from the entry printed, not from the start
    assert "frame=3" in out
    assert err.strip().splitlines()[-1] == (
        f"segstream: error: no new entry of {FRAMES} for 1.5 s (--idle-timeout) — check that its pipeline runs, or "
        "wait longer")


def test_tail_idle_timeout_and_until_ended_need_follow(server, client, capsys):
    assert main(["tail", FRAMES, "--url", server.url, "--idle-timeout", "5"]) == 2
    assert main(["tail", FRAMES, "--url", server.url, "--until-ended"]) == 2
    assert main(["tail", FRAMES, "--url", server.url, "--follow", "--idle-timeout", "0"]) == 2
    err = capsys.readouterr().err
    assert "--idle-timeout says when --follow stops waiting — add --follow" in err
    assert "--until-ended says when --follow stops waiting — add --follow" in err
    assert "--idle-timeout: must be a number of seconds above 0, got 0" in err


def test_tail_json_whose_reader_went_away_exits_141_quietly(server, client):
    process = follower(server, "--json")
    try:
        wait_until_reading(process, client)
        client.xadd(FRAMES, to_wire(synthetic_scene("cam0", 0), "rle"))
        assert select.select([process.stdout], [], [], 30)[0]
        process.stdout.readline()
        process.stdout.close()  # `| head -1` has its line
        client.xadd(FRAMES, to_wire(synthetic_scene("cam0", 1), "rle"))
        process.wait(timeout=30)
        err = process.stderr.read()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert process.returncode == 141 and err == ""


def test_validate_json_says_ok_or_each_error_and_exits_as_the_text_does(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(f"sources:\n  - {{name: cam0, type: file, path: '{DEMO}'}}\n"
                    "model: {preset: synthetic_eomt_tiny_256, device: cpu}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - {name: cam0, type: file}\nengine: {batch_size: 0}\n")

    assert main(["validate", str(good), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"ok": True, "config": str(good),
                                                   "summary": "1 source, model synthetic_eomt_tiny_256", "errors": []}
    assert main(["validate", str(bad), "--json"]) == 2
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["ok"] is False and len(report["errors"]) >= 2
    assert "sources[0].path (line 2): required key is missing" in report["errors"]  # where the file writes it
    assert any(line.startswith("engine.batch_size") for line in report["errors"])
    assert [f"segstream: error: {line}" for line in report["errors"]] == captured.err.splitlines()


def test_validate_connect_json_lists_each_check(tmp_path, capsys):
    secret = "n0t-the-passw0rd"
    with RedisProcess(tmp_path / "redis", ["--requirepass", "right-pw"], port=free_port(27200, 27299)) as redis_server:
        config = tmp_path / "site.yaml"
        config.write_text(f"sources:\n  - {{name: cam0, type: file, path: '{DEMO}'}}\n"
                          "model: {preset: synthetic_eomt_tiny_256, device: cpu}\nops: {http: null}\n"
                          f"sinks:\n  redis: {{url: '{redis_server.url}', password: '{secret}'}}\n")
        assert main(["validate", str(config), "--connect", "--json"]) == 1
    out = capsys.readouterr().out
    report = json.loads(out)
    assert report["ok"] is False and secret not in out
    checks = {check["what"]: check for check in report["checks"]}
    assert set(checks) == {"config", "model", "redis", "source cam0"}
    assert checks["config"]["ok"] and checks["model"]["ok"] and checks["source cam0"]["ok"]
    assert not checks["redis"]["ok"] and "refused the credentials" in checks["redis"]["said"]
    assert report["errors"] == [f"redis: {checks['redis']['said']}"]  # review: a script reading errors saw none


def test_evaluate_json_prints_the_numbers_of_its_table(capsys):
    args = ["evaluate", "--seeds", "0", "--frames", "2", "--size", "160", "120", "--device", "cpu"]
    assert main(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert main([*args, "--json"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out)  # the whole output: one object
    assert result["model"] == "synthetic_eomt_tiny_256" and result["frames"] == 2 and result["seeds"] == [0]
    rows = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in table[2:5]}
    for group, suffix in (("all", ""), ("things", "_things"), ("stuff", "_stuff")):
        assert rows[group] == [round(100 * result[f"{m}{suffix}"], 1) for m in ("pq", "sq", "rq")]
    per_class = {line.split()[0]: line for line in table if "(tp " in line}
    assert per_class and set(per_class) == set(result["per_class"])
    for name, stats in result["per_class"].items():
        assert f"PQ {100 * stats['pq']:5.1f}  (tp {stats['tp']}, fp {stats['fp']}, fn {stats['fn']})" in per_class[name]
    # which PQ it is, said beside the numbers (README: "What evaluate counts")
    assert "IoU > 0.5" in result["definitions"]["match"] and "tp + fp + fn > 0" in result["definitions"]["averages"]


def test_evaluate_tracking_json_prints_the_numbers_of_its_table(capsys):
    args = ["evaluate", "--tracking", "--no-model", "--seeds", "3", "--frames", "20", "--size", "160", "120"]
    assert main(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert main([*args, "--json", "--set", "tracking.min_hits=1"]) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model_name"] is None and result["tracker"]["min_hits"] == 2 and tuned["tracker"]["min_hits"] == 1
    row = next(line for line in table if line.startswith("tracker, noisy ground truth")).split()[-6:]
    truth = result["noisy_truth"]
    assert [float(v) for v in row] == [round(100 * truth[m], 1) for m in ("idf1", "hota", "deta", "assa")] + [
        truth["id_switches"], round(100 * truth["mota"], 1)]
    import trackeval

    assert result["definitions"]["trackeval"] == trackeval.__version__
    assert "mask IoU" in result["definitions"]["similarity"] and "alpha" in result["definitions"]["hota"]


def test_a_result_to_dict_is_tail_json_s_frame_object_with_its_masks_as_rle_or_polygons():
    """Found by an image-service probe: a result had no documented JSON form (to_wire's are
    Redis field strings, segments JSON inside JSON); a service's clients want COCO RLE or polygons."""
    from pycocotools import mask as coco_mask

    from segstream.connectors.redis_reader import entry_record

    label_map = np.full((40, 60), -1, np.int32)
    label_map[5:15, 10:30] = 3  # a rectangle
    label_map[20:35, 40:55] = 7
    label_map[25:30, 45:50] = -1  # with a hole
    segments = segstream.Segments.build([3, 7], [1, 2], ["box", "disc"], [True, True], scores=[0.9, 0.8])
    result = segstream.FrameResult("cam", 4, 60, 40, label_map, segments, pts=400, capture_ts=100.0)

    plain = result.to_dict()
    wire = entry_record("1-0", "segstream:cam:frames", to_wire(result, publish_ts=101.0))
    assert set(wire) - set(plain) == {"type", "id", "stream", "seq"}
    assert {k: v for k, v in wire.items() if k in plain and k not in ("publish_ts", "latency_s")} == {
        k: v for k, v in plain.items() if k not in ("publish_ts", "latency_s")}
    assert json.loads(json.dumps(plain)) == plain

    with_rle = json.loads(json.dumps(result.to_dict(masks="rle")))
    for segment, mask in zip(with_rle["segments"], result.mask_array()):
        rle = {"size": segment["rle"]["size"], "counts": segment["rle"]["counts"].encode()}
        assert (coco_mask.decode(rle).astype(bool) == mask).all()

    with_polygons = json.loads(json.dumps(result.to_dict(masks="polygons")))
    [box_outline] = with_polygons["segments"][0]["polygons"]
    assert box_outline == [10, 5, 10, 15, 30, 15, 30, 5]  # along the pixels' edges, in COCO's coordinates
    # found by a geometry audit: outlines through the edge pixels' centres came back half a pixel up-left
    # and smaller from COCO's tools (a 40-pixel star as 28); drawn back by them now, the masks exactly
    outer = result.mask_array()
    outer[1, 25:30, 45:50] = True  # the disc's hole is not kept
    for segment, mask in zip(with_polygons["segments"], outer):
        drawn = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(segment["polygons"], 40, 60)))
        assert (drawn.astype(bool) == mask).all()
    assert len(with_polygons["segments"][1]["polygons"]) == 1  # the outer outline
    with pytest.raises(ValueError, match="masks='png': use 'rle', 'polygons' or None"):
        result.to_dict(masks="png")


def test_tail_s_text_line_of_an_event_reads_as_key_value_pairs_not_python_data():
    # found probing with a screen reader: frames={'decoded': 50, 'decode_errors': 0} and classes=['disc', 'box']
    from segstream.connectors.redis_reader import event_line
    from segstream.models.results import Event

    event = Event("cam", "ended", 0.0, {"reason": "end of input", "frames": {"decoded": 50, "decode_errors": 0},
                                        "classes": ["disc", "box"], "extra": {}})
    assert event_line("1-0", event) == ("1-0 cam ended reason=end of input frames.decoded=50 frames.decode_errors=0 "
                                        "classes=disc,box extra={}")
