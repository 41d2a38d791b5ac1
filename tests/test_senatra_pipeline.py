"""SeNaTra through the whole pipeline: an H.264 clip, `model.family: senatra`, a real Redis, and
the hierarchy read back with the shipped reader, checked against the model's own output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segstream.connectors.embedded_redis import EmbeddedRedis
from segstream.connectors.errors import ConfigError
from segstream.connectors.file_source import FileSource
from segstream.connectors.redis_reader import StreamReader, summary_line
from segstream.connectors.synthetic import write_clip
from segstream.models.presets import SYNTHETIC_SENATRA
from segstream.pipeline.cli import run_pipeline
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
    with pytest.raises(ConfigError, match="preset synthetic_eomt_tiny_256 is a eomt model.*senatra"):
        build_segmenter(ModelConfig(family="senatra", preset="synthetic_eomt_tiny_256", device="cpu"))
    with pytest.raises(ConfigError, match="model.compile: .*SeNaTra"):
        build_segmenter(ModelConfig(family="senatra", device="cpu", compile=True))
    with pytest.raises(ConfigError, match="unknown family 'maskformer'"):
        build_segmenter(ModelConfig(family="maskformer", device="cpu"))


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
