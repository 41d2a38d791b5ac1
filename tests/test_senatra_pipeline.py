"""SeNaTra through the whole pipeline: an H.264 clip, `model.family: senatra`, a real Redis, and
the hierarchy read back with the shipped reader, checked against the model's own output; a level
of it drawn where segments are drawn (`segstream render --level`, the preview's `level`), and a
level the model does not make refused."""

from __future__ import annotations

import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from segstream.connectors.embedded_redis import EmbeddedRedis
from segstream.connectors.errors import ConfigError, SinkError
from segstream.connectors.file_source import FileSource
from segstream.connectors.overlay import draw_overlay, id_colour
from segstream.connectors.preview_sink import PreviewSink
from segstream.connectors.redis_reader import StreamReader, summary_line
from segstream.connectors.synthetic import write_clip
from segstream.models.presets import SYNTHETIC_SENATRA
from segstream.models.results import FrameResult
from segstream.pipeline.cli import main, run_pipeline
from segstream.pipeline.config import ModelConfig, load_config
from segstream.pipeline.model_factory import build_segmenter

FRAMES = 8
STREAM = "segstream:cam0:frames"


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("senatra_clip")
    write_clip(folder / "scene.mp4", folder / "scene.npz", 192, 144, FRAMES, seed=21, fps=10)
    return folder / "scene.mp4"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server


def _config(tmp_path: Path, clip: Path, url: str, encoding: str) -> Path:
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        f"sources:\n  - {{name: cam0, type: file, path: '{clip}'}}\n"
        "model: {family: senatra, device: cpu, precision: fp32}\n"
        "engine: {batch_size: 3, max_wait_ms: 5}\n"
        "ops: {http: null}\n"  # not the default port: other test files run beside this one
        f"sinks:\n  redis: {{url: '{url}', mask_encoding: {encoding}, pipeline_size: 4}}\n"
    )
    return config


@pytest.mark.parametrize("encoding", ["idmap", "rle"])
def test_senatra_hierarchy_reaches_redis_as_the_model_made_it(tmp_path, clip, redis_server, encoding):
    redis_server.client().delete(STREAM)
    config = load_config(_config(tmp_path, clip, redis_server.url, encoding))
    report = run_pipeline(config)
    assert report.published == FRAMES and report.dropped == 0

    entries = [entry for _, entry in StreamReader(redis_server.client(), STREAM).read(count=100)]
    segmenter = build_segmenter(config.model)
    assert segmenter.family == "senatra" and segmenter.name == SYNTHETIC_SENATRA.name
    frames = [frame.image for frame in FileSource("ref", str(clip)).frames()]
    expected = segmenter.segment(frames[:4]) + segmenter.segment(frames[4:])
    assert [e.index for e in entries] == list(range(FRAMES))
    for entry, own in zip(entries, expected, strict=True):
        assert entry.model == SYNTHETIC_SENATRA.name
        assert np.array_equal(entry.label_map, own.label_map)
        assert entry.segments.class_ids.tolist() == own.segments.class_ids.tolist()
        assert len(entry.levels) == len(own.levels) == 3
        for got, made in zip(entry.levels, own.levels):
            assert np.array_equal(got.label_map, made.label_map)
            assert np.array_equal(got.ids, made.ids) and np.array_equal(got.parents, made.parents)
            assert np.array_equal(got.areas, made.areas)
        # What a consumer relies on: levels nest, and the coarsest holds the panoptic segments.
        for fine, coarse in zip(entry.levels, entry.levels[1:]):
            assert np.array_equal(coarse.label_map, fine.parents[fine.label_map])
        coarsest = entry.levels[-1].label_map
        pairs = np.unique(np.stack((coarsest.ravel(), entry.label_map.ravel())), axis=1)
        assert len(np.unique(pairs[0])) == pairs.shape[1], "a coarsest segment in two panoptic segments"
    assert sum(len(e.segments) for e in entries) > 2 * FRAMES, "the shipped model finds several segments a frame"
    # The consumer SDK decodes it too, when asked for.
    from segstream.client import connect

    newest = connect(redis_server.url).newest("cam0")
    assert newest.result.levels[0].label_map is None  # still encoded
    assert all(np.array_equal(a.label_map, b.label_map) for a, b in zip(newest.levels, entries[-1].levels))
    # `segstream tail` shows the hierarchy's size.
    sizes = "/".join(str(len(level.ids)) for level in entries[0].levels)
    assert summary_line("1-0", entries[0]).endswith(f" levels={sizes}")


def test_levels_left_out_make_entries_the_size_of_a_panoptic_model_s(tmp_path, clip, redis_server):
    # Found probing as a SeNaTra user: the hierarchy made each entry about ten times the size of its
    # segments (rle, 320x240), with no way to leave it out
    client = redis_server.client()
    client.delete(STREAM)
    path = _config(tmp_path, clip, redis_server.url, "rle")
    config = load_config(path, ["sinks.redis.levels=false", "sinks.files.enabled=true",
                                f"sinks.files.dir={tmp_path / 'out'}"])
    assert run_pipeline(config).published == FRAMES
    entries = [fields for _, fields in client.xrange(STREAM)]
    assert len(entries) == FRAMES and not any(b"levels" in fields or b"levels_idmap" in fields for fields in entries)
    from segstream.client import read_file

    written = list(read_file(tmp_path / "out" / "cam0.jsonl"))
    assert len(written) == FRAMES and all(entry.levels == [] for entry in written)
    assert all(entry.segments.labels.size for entry in written)  # the panoptic result is all there


def test_family_alone_picks_its_shipped_model_and_a_mismatch_is_named():
    assert build_segmenter(ModelConfig(family="senatra", device="cpu")).name == SYNTHETIC_SENATRA.name
    with pytest.raises(ConfigError, match="preset synthetic_eomt_tiny_256 is an eomt model.*choose a senatra preset"):
        build_segmenter(ModelConfig(family="senatra", preset="synthetic_eomt_tiny_256", device="cpu"))
    with pytest.raises(ConfigError, match="model.compile: .*SeNaTra"):
        build_segmenter(ModelConfig(family="senatra", device="cpu", compile=True))
    from segstream.pipeline.model_factory import check_model_config  # validate's check (found probing: run's only)

    with pytest.raises(ConfigError, match="model.compile: .*SeNaTra.*set model.compile to false"):
        check_model_config(ModelConfig(family="senatra", device="cpu", compile=True))
    with pytest.raises(ConfigError, match="unknown family 'maskformer'"):
        build_segmenter(ModelConfig(family="maskformer", device="cpu"))


def test_evaluate_says_a_setting_senatra_refuses_in_its_own_option_s_words(capsys):
    """Found probing as a researcher: evaluate --postprocess exact said "remove model.postprocess"."""
    from segstream.pipeline.cli import main

    assert main(["evaluate", "--preset", "synthetic_senatra_tiny_192", "--postprocess", "exact"]) == 2
    assert capsys.readouterr().err == (
        "segstream: error: --postprocess: synthetic_senatra_tiny_192 is a SeNaTra model, whose segments come from its "
        "grouping layers, not from scored queries and masks — remove --postprocess\n")


def test_eomts_query_settings_given_to_senatra_are_refused_not_ignored():
    # Found probing: score_threshold 1.0 still published SeNaTra segments scored 0.62
    from segstream.pipeline.model_factory import check_model_config

    with pytest.raises(ConfigError, match="model.score_threshold: synthetic_senatra_tiny_192 is a SeNaTra model.*"
                                          "remove model.score_threshold"):
        check_model_config(ModelConfig(family="senatra", score_threshold=1.0))
    with pytest.raises(ConfigError, match="remove model.overlap_threshold, model.postprocess"):
        check_model_config(ModelConfig(family="senatra", postprocess="exact", overlap_threshold=0.5))
    assert check_model_config(ModelConfig(family="senatra")).family == "senatra"
    # evaluate and Ray's actors pass every field at its default: that is no setting given
    everything = ModelConfig.model_validate_json(ModelConfig(preset="synthetic_senatra_tiny_192").model_dump_json())
    assert check_model_config(everything).family == "senatra"


DRAWN_STREAM = "segstream:drawn:frames"
OPACITY = 0.5
PREVIEW_LEVEL = 1


def _drawing_config(folder: Path, clip: Path, url: str, model: str = "{family: senatra, device: cpu, precision: fp32}",
                    preview: str = "") -> Path:
    config = folder / "pipeline.yaml"
    config.write_text(
        f"sources:\n  - {{name: drawn, type: file, path: '{clip}'}}\n"
        f"model: {model}\n"
        "engine: {batch_size: 3, max_wait_ms: 5}\n"
        "ops: {http: null}\n"
        f"sinks:\n  redis: {{url: '{url}'}}\n"
        f"  preview: {{enabled: true, format: png, dir: '{folder / 'preview'}', opacity: {OPACITY}{preview}}}\n"
    )
    return config


@pytest.fixture(scope="module")
def recorded(tmp_path_factory, clip, redis_server):
    """One SeNaTra run: its stream in Redis (with the hierarchy), a PNG preview of level 1, the
    entries read back with their masks, and the clip's frames."""
    folder = tmp_path_factory.mktemp("run")
    redis_server.client().delete(DRAWN_STREAM)
    config = _drawing_config(folder, clip, redis_server.url, preview=f", level: {PREVIEW_LEVEL}")
    report = run_pipeline(load_config(config))
    assert report.published == FRAMES
    entries = [entry for _, entry in StreamReader(redis_server.client(), DRAWN_STREAM).read(count=100)]
    frames = [frame.image for frame in FileSource("ref", str(clip)).frames()]
    assert len(entries) == len(frames) == FRAMES and all(len(entry.levels) == 3 for entry in entries)
    return folder / "preview" / "drawn" / report.run_id, entries, frames


def _decode(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _render(tmp_path: Path, clip: Path, url: str, *options: str) -> int:
    return main(["render", DRAWN_STREAM, "--video", str(clip), "--out", str(tmp_path / "out.mp4"), "--url", url,
                 "--opacity", str(OPACITY), *options])


def test_render_level_draws_the_levels_map_instead_of_the_segments(tmp_path, clip, redis_server, recorded):
    _, entries, frames = recorded
    assert _render(tmp_path / "segments", clip, redis_server.url) == 0
    assert _render(tmp_path / "coarsest", clip, redis_server.url, "--level", "2") == 0
    segments, coarsest = _decode(tmp_path / "segments" / "out.mp4"), _decode(tmp_path / "coarsest" / "out.mp4")
    assert len(segments) == len(coarsest) == FRAMES
    for entry, image, drawn, plain in zip(entries, frames, coarsest, segments):
        level = entry.levels[2]
        assert len(level.ids) > len(entry.segments), "the level has more segments: the comparison is not trivial"
        off_level = np.abs(drawn.astype(int) - draw_overlay(image, entry, OPACITY, level=2)).mean()
        off_segments = np.abs(drawn.astype(int) - draw_overlay(image, entry, OPACITY)).mean()
        # x264 at crf 20 brings this scene's plain frames back 4 levels off on average, sharp colours more
        assert off_level < 12 and off_segments > 5 * off_level, "the level as the overlay draws it (x264 aside)"
        assert np.abs(drawn.astype(int) - plain).mean() > 10, "the default render draws the segments, not the level"
        # the level's map: its largest segment's interior blended in the colour of its (untracked) id
        largest = int(level.ids[np.argmax(level.areas)])
        inside = cv2.erode((level.label_map == largest).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        expected = (1 - OPACITY) * image[inside] + OPACITY * np.array(id_colour(largest, tracked=False), float)
        assert inside.sum() > 500
        assert (np.abs(drawn[inside] - expected).max(axis=1) <= 16).mean() > 0.6, "all but its label has its colour"


def test_render_of_a_level_an_entry_lacks_is_one_line_and_exit_2(tmp_path, clip, redis_server, recorded, capsys):
    run_id = recorded[1][0].run_id
    capsys.readouterr()
    assert _render(tmp_path, clip, redis_server.url, "--level", "3") == 2
    err = capsys.readouterr().err
    assert err == (f"segstream: error: --level 3: frame 0 of {DRAWN_STREAM} (run {run_id}) has 3 hierarchy "
                   "levels — give --level 0 (the finest) to 2, or leave --level out to draw the entries' segments\n")
    assert not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob(".out.mp4*"))
    assert _render(tmp_path, clip, redis_server.url, "--level", "-1") == 2
    assert capsys.readouterr().err.startswith("segstream: error: --level must be 0 (the finest level) or more")


def test_render_level_of_a_stream_without_hierarchy_is_one_line_and_exit_2(tmp_path, clip, redis_server, recorded,
                                                                            capsys):
    stream = "segstream:flat:frames"
    client = redis_server.client()
    client.delete(stream)
    for _, fields in client.xrange(DRAWN_STREAM):  # the same entries, their hierarchy left out
        client.xadd(stream, {k: v for k, v in fields.items() if k not in (b"levels", b"levels_idmap")})
    capsys.readouterr()
    assert main(["render", stream, "--video", str(clip), "--out", str(tmp_path / "out.mp4"), "--url",
                 redis_server.url, "--level", "0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"segstream: error: --level 0: frame 0 of {stream} (run ")
    assert err[0].endswith("has no segment hierarchy (its model makes none, or sinks.redis.levels was false) — "
                           "leave --level out to draw the entries' segments")
    assert not (tmp_path / "out.mp4").exists()


def test_preview_level_writes_pngs_of_that_level(recorded):
    folder, entries, frames = recorded
    pictures = sorted(folder.glob("*.png"))
    assert [p.name for p in pictures] == [f"{i:08d}.png" for i in range(FRAMES)]
    for picture, entry, image in zip(pictures, entries, frames):
        drawn = cv2.cvtColor(cv2.imread(str(picture)), cv2.COLOR_BGR2RGB)
        level = draw_overlay(image, entry, OPACITY, level=PREVIEW_LEVEL)
        assert not np.array_equal(level, draw_overlay(image, entry, OPACITY)), "the comparison is not trivial"
        # the decoded frame the runtime drew on and the reference decode of the clip are the same frames
        assert np.array_equal(drawn, level)


def test_preview_level_is_refused_for_a_model_without_it(tmp_path, clip, redis_server, capsys):
    eomt = _drawing_config(tmp_path, clip, redis_server.url, model="{preset: synthetic_eomt_tiny_256, device: cpu}",
                   preview=", level: 0")
    for command in (["validate", str(eomt)], ["run", str(eomt)]):
        capsys.readouterr()
        assert main(command) == 2
        err = capsys.readouterr().err.splitlines()
        assert err == ["segstream: error: sinks.preview.level: synthetic_eomt_tiny_256 is an eomt model, which makes no "
                       "segment hierarchy to draw — set sinks.preview.level to null (the frame's segments), or run a "
                       "SeNaTra model"]
    assert not (tmp_path / "preview").exists(), "refused before the preview started"
    deep = _drawing_config(tmp_path, clip, redis_server.url, preview=", level: 3")
    assert main(["validate", str(deep)]) == 2
    assert capsys.readouterr().err == ("segstream: error: sinks.preview.level: synthetic_senatra_tiny_192 makes 3 "
                                       "hierarchy levels, 0 (the finest) to 2, not level 3 — set sinks.preview.level "
                                       "to one of those, or to null\n")
    assert main(["validate", str(_drawing_config(tmp_path, clip, redis_server.url, preview=", level: 2"))]) == 0
    negative = _drawing_config(tmp_path, clip, redis_server.url, preview=", level: -1")
    assert main(["validate", str(negative)]) == 2
    assert "sinks.preview.level" in capsys.readouterr().err


def test_batch_refuses_a_preview_level_the_model_lacks_before_any_video(tmp_path, clip, capsys):
    assert main(["batch", str(clip), "--out", str(tmp_path / "out"), "--set", "model.preset=synthetic_eomt_tiny_256",
                 "--set", "model.device=cpu", "--set", "sinks.preview.enabled=true",
                 "--set", f"sinks.preview.dir={tmp_path / 'preview'}", "--set", "sinks.preview.level=0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["segstream: error: sinks.preview.level: synthetic_eomt_tiny_256 is an eomt model, which makes no "
                   "segment hierarchy to draw — set sinks.preview.level to null (the frame's segments), or run a "
                   "SeNaTra model"]
    assert not (tmp_path / "out").exists() and not (tmp_path / "preview").exists()


def _first_frame(video: Path) -> np.ndarray:
    with av.open(str(video)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24").astype(np.int16)


def test_batch_overlay_level_draws_that_level_and_is_named_in_the_manifest(tmp_path, clip):
    # left by the levels change: the batch overlay drew segments only
    common = ["batch", str(clip), "--set", "model.family=senatra", "--set", "model.device=cpu",
              "--set", "batch.overlay=true", "--set", "batch.coco_panoptic=false", "--set", "batch.jsonl=false"]
    assert main([*common, "--out", str(tmp_path / "segments"), "--progress"]) == 0
    assert main([*common, "--out", str(tmp_path / "level"), "--set", "batch.overlay_level=2", "--no-progress"]) == 0
    [segments] = (tmp_path / "segments").glob("*/overlay.mp4")
    [level] = (tmp_path / "level").glob("*/overlay.mp4")
    plain = av.open(str(clip))
    original = next(plain.decode(video=0)).to_ndarray(format="rgb24").astype(np.int16)
    plain.close()
    drawn_segments, drawn_level = _first_frame(segments), _first_frame(level)
    assert np.abs(drawn_level - drawn_segments).mean() > 5  # another picture than the segments'
    assert np.abs(drawn_level - original).mean() > 5  # and a drawn one
    manifest = [json.loads(line) for line in (tmp_path / "level" / "manifest.jsonl").read_text().splitlines()]
    assert manifest[-1]["settings"]["outputs"]["overlay_level"] == 2
    assert manifest[-1]["settings"]["model"]["preset"] == SYNTHETIC_SENATRA.name  # release QA: it said the EoMT default


def test_batch_overlay_level_is_refused_without_the_overlay_and_for_a_model_without_it(tmp_path, clip, capsys):
    base = ["batch", str(clip), "--out", str(tmp_path / "out"), "--set", "model.device=cpu"]
    assert main([*base, "--set", "model.family=senatra", "--set", "batch.overlay_level=1"]) == 2
    assert "batch.overlay_level: it draws on the overlay video, which is off" in capsys.readouterr().err
    assert main([*base, "--set", "model.preset=synthetic_eomt_tiny_256", "--set", "batch.overlay=true",
                 "--set", "batch.overlay_level=0"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["segstream: error: batch.overlay_level: synthetic_eomt_tiny_256 is an eomt model, which makes no "
                   "segment hierarchy to draw — set batch.overlay_level to null (the frame's segments), or run a "
                   "SeNaTra model"]
    assert not (tmp_path / "out").exists()
    # and validate of the batch config says it too (review: it passed, and batch then refused it)
    config = tmp_path / "batch.yaml"
    config.write_text("model: {preset: synthetic_eomt_tiny_256, device: cpu}\nbatch: {overlay: true, overlay_level: 0}\n")
    assert main(["validate", str(config)]) == 2
    assert "batch.overlay_level: synthetic_eomt_tiny_256 is an eomt model" in capsys.readouterr().err


def test_preview_of_a_result_without_the_level_stops_with_one_line(tmp_path):
    # a model of one's own, whose levels no config check knows: said at its first frame
    result = FrameResult("cam", 4, 8, 6, np.zeros((6, 8), np.int32), image=np.zeros((6, 8, 3), np.uint8))
    with pytest.raises(SinkError, match=r"^sinks.preview.level: frame 4 of cam has 0 hierarchy levels, no level 1 — "):
        PreviewSink(tmp_path, "png", level=1).publish(result)
    assert not list(tmp_path.rglob("*.png"))


def test_a_training_run_s_folder_runs_its_one_weights_file_and_its_classes(tmp_path):
    """Found probing as a researcher: train_senatra.py's own --out example, senatra.safetensors,
    given as its folder said "a folder without model.safetensors or pytorch_model.bin"."""
    import shutil

    from segstream.connectors.errors import CheckpointError
    import segstream
    from segstream.connectors.checkpoints import load_senatra, shipped_weights

    folder = tmp_path / "warehouse"
    folder.mkdir()
    shutil.copy(shipped_weights(SYNTHETIC_SENATRA.weights), folder / "senatra.safetensors")
    (folder / "senatra.partial.safetensors").write_bytes(b"a stopped run's, unfinished")  # not taken
    classes = json.loads((Path(segstream.__file__).parents[1] / "models" / "labels" / "synthetic.json").read_text())
    (folder / "senatra.labels.json").write_text(json.dumps(classes | {"name": "warehouse"}))
    cfg = ModelConfig(checkpoint=str(folder))
    assert cfg.preset == SYNTHETIC_SENATRA.name and cfg.labels == str(folder / "senatra.labels.json")
    assert load_senatra(SYNTHETIC_SENATRA, str(folder)) is not None
    (folder / "other.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"or one \.safetensors file\); it holds other\.safetensors, "
                                              r"senatra\.safetensors — pass the weights file itself"):
        load_senatra(SYNTHETIC_SENATRA, str(folder))
