"""Segment filters (``filters:``): what they drop leaves no trace in segments, label maps, the wire
format, hierarchy levels or tracks; runs of the shipped model on synthetic scenes and of the
colour segmenter on a clip whose square's position is known."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from segstream.connectors.errors import ConfigError
from segstream.connectors.file_source import FileSource
from segstream.connectors.redis_wire import from_wire, to_wire
from segstream.connectors.synthetic import synthetic_clip
from segstream.models.results import ScaledLabelMap
from segstream.models.segment_filter import FilterSettings, SegmentFilter
from segstream.pipeline.builders import build_sources
from segstream.pipeline.cli import main
from segstream.pipeline.config import ModelConfig, validate_config
from segstream.pipeline.metrics import RunMetrics
from segstream.pipeline.model_factory import build_segmenter
from segstream.pipeline.monitoring import OpsServer
from segstream.pipeline.runtime import Runtime
from tests.conftest import CollectingSink, ColourSegmenter
from tests.test_monitoring import get, samples

THINGS = ["disc", "box", "triangle", "star"]
LEFT_HALF = [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]


@pytest.fixture(scope="module")
def shipped():
    return build_segmenter(ModelConfig(device="cpu", precision="fp32"), batch_size=4)


@pytest.fixture(scope="module")
def model_results(shipped):
    """The shipped model's results for 6 frames of two scenes at 320x240 (fast post-processing:
    maps kept at the model's resolution)."""
    images = [image for seed in (0, 1) for image, _ in synthetic_clip(320, 240, 3, seed)]
    results = shipped.segment(images)
    assert all(isinstance(r.segment_map, ScaledLabelMap) for r in results)
    return results


def consistent(result) -> None:
    """Every pixel belongs to a listed segment; each segment's area, box and centroid are its pixels'."""
    label_map = result.label_map
    assert set(np.unique(label_map).tolist()) - {-1} <= set(result.segments.ids.tolist())
    for segment in result.segments:
        ys, xs = np.nonzero(label_map == segment["id"])
        assert segment["area"] == len(ys) > 0
        assert segment["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert segment["centroid"] == pytest.approx([round(xs.mean() + 0.5, 1), round(ys.mean() + 0.5, 1)], abs=0.051)


def filtered(result, **settings):
    result = copy.deepcopy(result)
    counts = SegmentFilter(FilterSettings(**settings)).apply(result)
    return result, counts


def synthetic_config(**filters):
    return validate_config({
        "sources": [
            {"name": "kept", "type": "synthetic", "width": 320, "height": 240, "num_frames": 12, "seed": 4},
            {"name": "all", "type": "synthetic", "width": 320, "height": 240, "num_frames": 12, "seed": 4,
             "filters": {"classes": None}},
        ],
        "model": {"device": "cpu", "precision": "fp32"},
        "filters": filters,
    })


def test_a_source_keeps_only_the_listed_classes_in_its_segments_pixels_and_tracks(shipped):
    cfg = synthetic_config(classes=THINGS)
    sink = CollectingSink()
    runtime = Runtime.from_config(cfg, build_sources(cfg.sources), shipped, [sink], progress=None)
    runtime.run()
    kept = [r for r in sink.results if r.source == "kept"]
    unfiltered = [r for r in sink.results if r.source == "all"]
    assert len(kept) == len(unfiltered) == 12
    # the other source overrode the classes away: stuff is there, tracked, and not filtered
    assert {label for r in unfiltered for label in r.segments.labels} - set(THINGS)
    assert {e.data["label"] for e in sink.events if e.source == "all" and e.kind == "track_started"} - set(THINGS)
    assert all(r.segments.track_ids[~r.segments.isthing].min(initial=0) >= 0 for r in unfiltered[2:])
    for result in kept:
        assert set(result.segments.labels) <= set(THINGS)
        consistent(result)
        assert (result.label_map >= 0).mean() < 0.5  # the stuff around the things is gone
    assert {e.data["label"] for e in sink.events if e.source == "kept" and e.kind.startswith("track")} <= set(THINGS)
    assert any(len(r.segments) for r in kept)
    stuff_dropped = sum(int((~r.segments.isthing).sum()) for r in unfiltered)
    assert runtime.filtered[("kept", "class")] >= stuff_dropped > 0
    assert ("all", "class") not in runtime.filtered  # it filters nothing: no series


def test_min_score_min_area_and_exclude_classes_drop_what_they_name_and_their_pixels(model_results):
    scores = np.concatenate([r.segments.scores for r in model_results])
    areas = np.concatenate([r.segments.areas for r in model_results])
    cases = [
        ({"min_score": float(np.median(scores))}, "score", lambda s: s.scores >= np.median(scores)),
        ({"min_area": int(np.median(areas))}, "min_area", lambda s: s.areas >= np.median(areas)),
        ({"drop_class_ids": frozenset({4, 5})}, "class", lambda s: ~np.isin(s.class_ids, [4, 5])),
    ]
    for settings, reason, keeps in cases:
        dropped = 0
        for original in model_results:
            result, counts = filtered(original, **settings)
            keep = keeps(original.segments)
            assert result.segments.ids.tolist() == original.segments.ids[keep].tolist(), settings
            assert counts[reason] == int((~keep).sum()) and sum(counts.values()) == counts[reason]
            dropped += counts[reason]
            before = original.label_map
            expected = np.where(np.isin(before, original.segments.ids[keep]), before, -1)
            assert np.array_equal(result.label_map, expected)
            assert result.segments.areas.tolist() == original.segments.areas[keep].tolist()
            for encoding in ("idmap", "rle"):  # what goes on the wire has no pixels of them either
                assert np.array_equal(from_wire(to_wire(result, mask_encoding=encoding)).label_map, expected)
        assert 0 < dropped < len(scores), settings  # some went, some stayed


def test_the_region_of_interest_clips_the_square_and_drops_it_once_outside(clip):
    # the clip's red square (30 px) moves right 3 px a frame over a 160 px frame; ROI: the left half
    cfg = validate_config({
        "sources": [{"name": "left", "type": "file", "path": str(clip), "filters": {"roi": LEFT_HALF}},
                    {"name": "all", "type": "file", "path": str(clip)}],
        "filters": {"min_area": 300},
    })
    sink, metrics = CollectingSink(), RunMetrics()
    runtime = Runtime.from_config(cfg, [FileSource("left", str(clip)), FileSource("all", str(clip))],
                                  ColourSegmenter(), [sink], metrics=metrics, progress=None)
    with OpsServer(metrics, "127.0.0.1", 0) as server:
        runtime.run()
        page = samples(get(server.url + "/metrics")[1])
    left = {r.index: r for r in sink.results if r.source == "left"}
    unfiltered = {r.index: r for r in sink.results if r.source == "all"}
    expected_counts = {"roi": 0, "min_area": 0}
    for index, whole in unfiltered.items():
        assert len(whole.segments) == 1
        inside = np.where(np.arange(160) < 80, whole.label_map, -1)  # pixel centres x + 0.5 < 80
        area = int((inside >= 0).sum())
        result = left[index]
        if area == 0:
            expected_counts["roi"] += 1
        elif area < 300:
            expected_counts["min_area"] += 1
        if area < 300:
            assert len(result.segments) == 0 and (result.label_map == -1).all()
            continue
        assert np.array_equal(result.label_map, inside)
        assert result.segments.areas.tolist() == [area]
        consistent(result)
        assert result.segments.boxes[0][2] <= 80
    assert 0 < expected_counts["min_area"] < expected_counts["roi"]  # the scene has both cases
    assert any(left[i].segments.areas[0] < unfiltered[i].segments.areas[0] for i in left if len(left[i].segments))
    for reason, count in expected_counts.items():
        assert page[("segstream_segments_filtered_total", (("reason", reason), ("source", "left")))] == count
    assert page[("segstream_segments_filtered_total", (("reason", "min_area"), ("source", "all")))] == 0
    # the tracker never saw the square outside: its track ends, at the end, on the last frame it was in
    (ended,) = [e for e in sink.events if e.source == "left" and e.kind == "track_ended"]
    assert ended.data["last_frame"] == max(i for i, r in left.items() if len(r.segments))


def test_the_region_of_interest_clips_maps_kept_at_the_models_resolution(model_results):
    centre = [[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]  # x 80..240, y 60..180 at 320x240
    for original in model_results:
        result, counts = filtered(original, roi=tuple(map(tuple, centre)))
        assert isinstance(result.segment_map, ScaledLabelMap)
        consistent(result)
        label_map, before = result.label_map, original.label_map
        ys, xs = np.nonzero(label_map >= 0)
        # decided at 256x192: the edge may fall one model pixel (1.25 frame pixels) either side
        assert xs.min() >= 78 and xs.max() < 242 and ys.min() >= 58 and ys.max() < 182
        assert np.array_equal(label_map[62:178, 82:238], before[62:178, 82:238])
        outside = {s["id"] for s in original.segments if s["box"][0] >= 242 or s["box"][2] <= 78
                   or s["box"][1] >= 182 or s["box"][3] <= 58}
        dropped = set(original.segments.ids.tolist()) - set(result.segments.ids.tolist())
        assert counts["roi"] == len(dropped) and outside <= dropped
        assert not set(np.unique(before[62:178, 82:238]).tolist()) & dropped  # none had pixels well inside
    assert any(filtered(r, roi=tuple(map(tuple, centre)))[1]["roi"] for r in model_results)


def test_hierarchy_levels_lose_the_pixels_of_filtered_segments_and_outside_the_region():
    segmenter = build_segmenter(ModelConfig(family="senatra", device="cpu", precision="fp32"), batch_size=2)
    images = [image for image, _ in synthetic_clip(240, 180, 2, seed=3)]
    for original in segmenter.segment(images):
        assert original.levels
        dropped_class = int(original.segments.class_ids[0])
        result, counts = filtered(original, drop_class_ids=frozenset({dropped_class}), roi=((0, 0), (0.6, 0), (0, 1)))
        assert counts["class"] >= 1
        before, after = original.label_map, result.label_map
        cleared = (before >= 0) & (after < 0)
        assert (before == original.segments.ids[0]).any() and cleared.any()
        for old, new in zip(original.levels, result.levels):
            level_map = new.label_map
            assert (level_map[cleared] == -1).all()
            shown = (level_map >= 0) | (after >= 0)  # left alone: what kept its segment, at every level
            assert (level_map[shown] == old.label_map[shown]).all()
            assert (level_map[:, -1] == -1).all()  # the right edge lies outside the triangle
            present = set(np.unique(level_map).tolist()) - {-1}
            assert present == set(new.ids.tolist())
            assert [int((level_map == i).sum()) for i in new.ids] == new.areas.tolist()
        for finer, coarser in zip(result.levels, result.levels[1:]):
            assert set(finer.parents.tolist()) <= set(coarser.ids.tolist()) | {-1}
        decoded = from_wire(to_wire(result, mask_encoding="idmap"))
        assert all(np.array_equal(a.label_map, b.label_map) for a, b in zip(decoded.levels, result.levels))


def test_a_class_name_the_model_lacks_is_one_error_naming_the_key_and_close_names(shipped):
    cfg = synthetic_config(classes=["disk"])
    with pytest.raises(ConfigError, match=r"^filters\.classes: the model's label set \(synthetic\) has no class "
                                          r"'disk' — did you mean 'disc'\?$"):
        Runtime.from_config(cfg, [], shipped, [], progress=None)
    cfg = validate_config({"sources": [{"name": "a", "type": "synthetic"},
                                       {"name": "b", "type": "synthetic", "filters": {"exclude_classes": ["cat"]}}]})
    with pytest.raises(ConfigError, match=r"^sources\[1\]\.filters\.exclude_classes: .* no class 'cat' — its classes "
                                          r"are disc, box, triangle, star, sky, grass, sand, water$"):
        Runtime.from_config(cfg, [], shipped, [], progress=None)
    # found by release QA: validate said only the first of two names the model lacks
    with pytest.raises(ConfigError) as both:
        Runtime.from_config(synthetic_config(classes=["disk", "boxx"]), [], shipped, [], progress=None)
    assert [line.split(" — ")[1] for line in str(both.value).splitlines()] == [
        "did you mean 'disc'?", "did you mean 'box'?"]


@pytest.mark.parametrize("filters, message", [
    ({"classes": []}, r"sources\[0\]\.filters\.classes: List should have at least 1 item"),
    ({"clases": ["disc"]}, r"sources\[0\]\.filters\.clases: unknown key — did you mean 'classes'\?"),
    ({"classes": ["disc", "disc"]}, r"class 'disc' is listed twice"),
    ({"classes": ["disc"], "exclude_classes": ["disc"]}, r"exclude_classes removes every class that classes keeps"),
    ({"min_score": 1.5}, r"filters\.min_score: Input should be less than or equal to 1"),
    ({"min_area": -1}, r"filters\.min_area: Input should be greater than or equal to 0"),
    ({"roi": [[0, 0], [1, 1]]}, r"filters\.roi: List should have at least 3 items"),
    ({"roi": [[0, 0], [640, 0], [640, 480]]}, r"filters\.roi: points are \[x, y\] fractions 0\.\.1 .* got 640 — divide"),
    ({"roi": [[0, 0], [1, 0], "x"]}, r"filters\.roi\[2\]: Input should be a valid"),
    ({"roi": [[0, 0], [0.5, 0.5], [1, 1]]}, r"filters\.roi: the polygon encloses no area"),
    # found by release QA: a bow-tie was said to lie on one line (its two halves cancel), an uneven one passed
    ({"roi": [[0, 0], [1, 1], [1, 0], [0, 1]]}, r"filters\.roi: the polygon's edges cross \(edge 1 and edge 3\)"),
    ({"roi": [[0, 0], [1, 1], [1, 0], [0, 0.6]]}, r"filters\.roi: the polygon's edges cross"),
])
def test_bad_filters_are_refused_in_one_line(filters, message):
    with pytest.raises(ConfigError, match=message) as error:
        validate_config({"sources": [{"name": "a", "type": "synthetic", "filters": filters}]})
    assert "\n" not in str(error.value)


def test_a_sources_filters_replace_the_top_level_ones_key_by_key():
    cfg = validate_config({
        "sources": [{"name": "a", "type": "synthetic", "filters": {"min_area": 50, "roi": None}},
                    {"name": "b", "type": "synthetic"}],
        "filters": {"classes": ["disc"], "min_area": 10, "roi": [[0, 0], [1, 0], [1, 1]]},
    })
    a, b = cfg.filters_of("a"), cfg.filters_of("b")
    assert (a.classes, a.min_area, a.roi) == (["disc"], 50, None)
    assert (b.classes, b.min_area, b.roi) == (["disc"], 10, [(0, 0), (1, 0), (1, 1)])
    assert cfg.filters_of("not_in_config") == cfg.filters
    # found by release QA: null turned classes and roi off for a source, but was refused for these
    off = validate_config({
        "sources": [{"name": "a", "type": "synthetic",
                     "filters": {"min_score": None, "min_area": None, "exclude_classes": None}}],
        "filters": {"min_score": 0.5, "min_area": 10, "exclude_classes": ["sky"]},
    }).filters_of("a")
    assert (off.min_score, off.min_area, off.exclude_classes) == (0.0, 0, [])
    # found in review: merged, a source's exclude_classes could cancel the top-level classes, unsaid
    with pytest.raises(ConfigError, match=r"sources\[0\]\.filters: its exclude_classes remove every class"):
        validate_config({"sources": [{"name": "a", "type": "synthetic", "filters": {"exclude_classes": ["disc"]}}],
                         "filters": {"classes": ["disc"]}})


def test_segstream_schema_shows_the_filter_keys(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    keys = set(schema["$defs"]["FiltersConfig"]["properties"])
    assert keys == {"classes", "exclude_classes", "min_score", "min_area", "roi"}
    assert "filters" in schema["properties"] and "filters" in schema["$defs"]["SyntheticSourceConfig"]["properties"]


def test_segstream_run_refuses_an_unknown_class_in_one_line_before_anything_starts(tmp_path, capsys):
    config = tmp_path / "pipeline.yaml"
    config.write_text("sources:\n  - {name: cam0, type: synthetic, num_frames: 2}\n"
                      "model: {device: cpu}\nops: {http: null}\nfilters: {exclude_classes: [watr]}\n")
    expected = ("filters.exclude_classes: the model's label set (synthetic) has no class 'watr' — "
                "did you mean 'water'?")
    assert main(["validate", str(config)]) == 2  # found before the model is built
    assert capsys.readouterr().err.strip().endswith(expected)
    assert main(["run", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(expected), err
    assert not any("Traceback" in line or "run " in line and "starting" in line for line in err)


def test_segstream_batch_applies_the_top_level_filters_to_every_video(clip, tmp_path):
    from segstream.connectors.files_sink import read_entries
    from segstream.pipeline.batch import run_batch
    from segstream.pipeline.config import BatchPipelineConfig

    cfg = validate_config({"batch": {"output": str(tmp_path / "out"), "coco_panoptic": False}, "ops": {"http": None},
                           "filters": {"roi": LEFT_HALF}}, schema=BatchPipelineConfig)
    (outcome,), _, _ = run_batch(cfg, [str(clip)], adapter=ColourSegmenter(), progress=False)
    results = [from_wire(e) for e in read_entries(tmp_path / "out" / outcome.job.id / "frames.jsonl")]
    assert len(results) == 40
    assert all((r.label_map[:, 80:] == -1).all() for r in results)
    assert sum(len(r.segments) == 0 for r in results) > 5  # the square's frames in the right half


def test_a_clipped_segment_outside_the_box_it_came_with_gets_its_box_from_its_pixels():
    # found in review: a family's box that missed the segment's pixels (or ran off the frame)
    # ended the run with an IndexError when the region of interest clipped it
    from segstream.models.segment_filter import _measured_within

    new = np.full((40, 60), -1, np.int32)
    new[30:35, 50:55] = 3
    ones_r, ones_c = np.ones(40, np.int64), np.ones(60, np.int64)
    for given in ([0, 0, 10, 10], [45, 25, 90, 80]):
        box, centroid = _measured_within(new, 3, np.array(given), new, ones_r, ones_c)
        assert box.tolist() == [50, 30, 55, 35] and centroid.tolist() == [52.5, 32.5]


def test_a_class_name_written_decomposed_matches_its_composed_label():
    """Found by an i18n probe: macOS writes "Gräs" as a + U+0308, which looked the same as the
    label set's and matched nothing: "has no class 'Gräs' — did you mean 'Gräs'?"."""
    from segstream.models.label_sets import LabelSet
    from segstream.pipeline.config import FiltersConfig
    from segstream.pipeline.filtering import filter_settings

    labels = LabelSet.from_dict({"name": "own", "classes": [{"id": 0, "name": "Sand", "isthing": False},
                                                            {"id": 1, "name": "Gr\u00e4s", "isthing": False}]})
    settings = filter_settings(FiltersConfig(classes=["Gra\u0308s"], exclude_classes=["Sand"]), labels)
    assert settings.keep_class_ids == frozenset({1}) and settings.drop_class_ids == frozenset({0})
