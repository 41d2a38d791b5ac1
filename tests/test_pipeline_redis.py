"""The whole spine: an H.264 file through the shipped model into a real Redis, read back with
the reader segstream ships."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from segstream.connectors.embedded_redis import EmbeddedRedis
from segstream.connectors.file_source import FileSource
from segstream.connectors.frames import Frame
from segstream.connectors.redis_reader import Client, StreamReader
from segstream.connectors.redis_wire import from_wire
from segstream.connectors.synthetic import write_clip
from segstream.models.presets import SYNTHETIC_TINY
from segstream.models.results import FrameResult
from segstream.pipeline.cli import main, run_pipeline
from segstream.pipeline.config import load_config
from segstream.pipeline.model_factory import build_segmenter

REPO = Path(__file__).resolve().parents[1]
FRAMES, FPS = 24, 12


@pytest.fixture(scope="module")
def scene_clip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scene")
    write_clip(folder / "scene.mp4", folder / "scene.npz", 192, 144, FRAMES, seed=11, fps=FPS)
    return folder / "scene.mp4"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


def _config(tmp_path: Path, clip: Path, url: str | None, encoding: str = "rle", extra_source: str = "") -> Path:
    config = tmp_path / "pipeline.yaml"
    url_line = f"url: '{url}'" if url else "url: null"
    config.write_text(
        f"sources:\n  - {{name: cam0, type: file, path: '{clip}'{extra_source}}}\n"
        f"model: {{preset: {SYNTHETIC_TINY.name}, device: cpu, precision: fp32}}\n"
        "engine: {batch_size: 3, max_wait_ms: 5}\n"
        "ops: {http: null}\n"  # not the default port: other test files run beside this one
        f"sinks:\n  redis: {{{url_line}, mask_encoding: {encoding}, pipeline_size: 4}}\n"
    )
    return config


def _model_label_maps(clip: Path) -> tuple[list[FrameResult], list[Frame]]:
    """What the model itself says about every frame of the clip, without the pipeline."""
    segmenter = build_segmenter(load_config(_config(clip.parent, clip, None)).model)
    frames = list(FileSource("ref", str(clip)).frames())
    predictions = [p for i in range(0, len(frames), 4) for p in segmenter.segment([f.image for f in frames[i : i + 4]])]
    return predictions, frames


@pytest.mark.parametrize("encoding", ["rle", "idmap"])
def test_every_frame_reaches_redis_with_the_models_masks(tmp_path, scene_clip, redis_server, encoding):
    stream = "segstream:cam0:frames"
    redis_server.client().delete(stream)
    report = run_pipeline(load_config(_config(tmp_path, scene_clip, redis_server.url, encoding)))
    assert report.published == FRAMES and report.dropped == 0

    entries = StreamReader(redis_server.client(), stream).read(count=1000)
    assert len(entries) == FRAMES
    predictions, frames = _model_label_maps(scene_clip)
    assert [e.index for _, e in entries] == list(range(FRAMES))
    raw = redis_server.client().xrange(stream)
    assert {fields[b"mask_encoding"] for _, fields in raw} == {encoding.encode()}
    for (_, entry), frame, prediction in zip(entries, frames, predictions, strict=True):
        assert entry.source == "cam0" and entry.model == SYNTHETIC_TINY.name
        assert entry.pts == frame.pts and entry.time_base == frame.time_base
        assert entry.pts_seconds == pytest.approx(frame.index / FPS, abs=1e-6)
        assert (entry.width, entry.height) == (192, 144)
        assert np.array_equal(entry.label_map, prediction.label_map)
        assert [(s["id"], s["class_id"], s["area"]) for s in entry.segments] == [
            (s["id"], s["class_id"], s["area"]) for s in prediction.segments
        ]
        assert entry.capture_ts <= entry.publish_ts
    assert sum(len(e.segments) for _, e in entries) > FRAMES, "the shipped model finds segments in its scenes"


def test_pts_follow_the_file_time_base(tmp_path, scene_clip, redis_server):
    stream = "segstream:cam0:frames"
    redis_server.client().delete(stream)
    run_pipeline(load_config(_config(tmp_path, scene_clip, redis_server.url)))
    entries = [e for _, e in StreamReader(redis_server.client(), stream).read(count=1000)]
    seconds = [e.pts * e.time_base for e in entries]
    assert all(isinstance(e.time_base, Fraction) for e in entries)
    assert seconds == sorted(seconds) and float(seconds[1] - seconds[0]) == pytest.approx(1 / FPS)


def test_without_a_url_an_embedded_redis_is_started_and_announced(tmp_path, scene_clip, capsys):
    config = _config(tmp_path, scene_clip, None)
    assert main(["run", str(config)]) == 0
    err = capsys.readouterr().err
    assert "redis-cli" in err and "segstream tail" in err
    assert re.search(rf"segstream: done: {FRAMES} frames published", err)
    # Before the embedded server goes, the run says what it holds, decoded by the shipped reader.
    assert re.search(rf"published {FRAMES} entries to segstream:cam0:frames \(XLEN {FRAMES}.*newest: .* frame={FRAMES - 1} ", err)


def _status_while(client, source: str, wanted, timeout_s: float = 60.0):
    """The source's status (None: no key) once ``wanted(status)`` holds, polled through the shipped reader."""
    deadline = time.monotonic() + timeout_s
    while not wanted(status := client.status(source)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return status


def test_sigterm_mid_run_leaves_only_whole_entries_and_the_status_key_tells_a_frozen_run(
        tmp_path, scene_clip, redis_server):
    stream = "segstream:cam0:frames"
    redis_server.client().delete(stream, "segstream:cam0:status")
    # A looping real-time file: it would run forever without the signal.
    config = _config(tmp_path, scene_clip, redis_server.url, extra_source=", loop: true, realtime: true")
    config.write_text(config.read_text().replace("pipeline_size: 4", "pipeline_size: 4, status_ttl_s: 1.5"))
    process = subprocess.Popen(
        [sys.executable, "-m", "segstream.pipeline.cli", "run", str(config)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,
        text=True,
    )
    client = redis_server.client()
    reader = Client(client)
    deadline = time.monotonic() + 120
    while client.xlen(stream) < 5 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    # While the run publishes, its status key says so, refreshed past its time to live.
    live = _status_while(reader, "cam0", lambda status: status is not None and status.frame is not None)
    assert live.state == "streaming" and not live.final and live.ttl_s == 1.5 and live.run_id
    assert 0 < client.pttl("segstream:cam0:status") <= 1500
    time.sleep(2.0)
    later = reader.status("cam0")
    assert later is not None and later.ts > live.ts and later.frame > live.frame
    # Frozen (as a killed or hung run is): no refresh, and the key is gone within its time to live,
    # while the streams alone would still read as a quiet camera.
    process.send_signal(signal.SIGSTOP)
    frozen = time.monotonic()
    assert _status_while(reader, "cam0", lambda status: status is None, timeout_s=10) is None
    assert time.monotonic() - frozen < 3.0
    process.send_signal(signal.SIGCONT)
    assert _status_while(reader, "cam0", lambda status: status is not None).state == "streaming"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    # Stopped: the final state stays, for good, with the last frame the stream holds.
    final = reader.status("cam0")
    assert final.state == "ended" and final.final and final.ttl_s is None
    assert client.pttl("segstream:cam0:status") == -1
    assert final.frame == from_wire(client.xrevrange(stream, count=1)[0][1], decode_masks=False).index
    assert "Traceback" not in err
    summary = re.search(r"segstream: stopped: (\d+) frames published .*?(\d+) dropped", err)
    assert summary, err
    published, dropped = int(summary.group(1)), int(summary.group(2))
    per_source = re.search(r"cam0 (\d+)/(\d+)", err)
    assert int(per_source.group(2)) == published + dropped  # decoded = published + dropped
    entries = StreamReader(client, stream).read(count=10_000)
    assert len(entries) == published >= 5
    for _, entry in entries:  # every entry decodes whole
        assert entry.label_map.shape == (144, 192)


def test_a_tenant_s_stream_prefix_takes_its_events_along_and_readers_find_them(tmp_path, redis_server):
    # found in the list of what was left: with stream acme:{source}:frames the events still went to
    # segstream:{source}:events, outside the tenant's ACL pattern, where `tail` and the client did not look
    import segstream.client

    config = tmp_path / "tenant.yaml"
    config.write_text("sources: [{name: shop1, type: synthetic, width: 64, height: 48, num_frames: 3}]\n"
                      "model: {device: cpu, precision: fp32}\nops: {http: null}\n"
                      f"sinks: {{redis: {{url: '{redis_server.url}', stream: 'acme:{{source}}:frames'}}}}\n")
    report = run_pipeline(load_config(config), progress=False)
    assert report.published == 3
    keys = sorted(k.decode() for k in redis_server.client().keys("*shop1*"))
    assert keys == ["acme:shop1:events", "acme:shop1:frames", "acme:shop1:status"], keys
    client = segstream.client.connect(redis_server.url, stream_pattern="acme:{source}:frames")
    kinds = [event.kind for event in client.events("shop1", start="0").read(count=100)]
    assert "settings" in kinds and "state" in kinds
