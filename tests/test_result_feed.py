"""The Python API a notebook uses: results in memory (``segstream.results``), short reprs of
results, and ``load_config``'s overrides as Python values."""

from __future__ import annotations

import _thread
import gc
import signal
import socket
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import segstream
from segstream.pipeline.runtime import THREAD_PREFIX
from tests.conftest import CollectingSink
from tests.redis_servers import free_port

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def _config(**extra) -> segstream.PipelineConfig:
    sources = extra.pop("sources", [{"name": "cam", "type": "synthetic", "width": 64, "height": 48, "num_frames": 30}])
    return segstream.load_config({
        "sources": sources,
        "model": {"device": "cpu", "precision": "fp32"},
        "sinks": {"redis": {"enabled": False}},
        "ops": {"http": None},
        **extra,
    })


def _segstream_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)}


def test_the_loop_gets_every_result_of_each_source_in_frame_order_and_the_report():
    sources = [{"name": name, "type": "synthetic", "width": 64, "height": 48, "num_frames": 12} for name in "ab"]
    with segstream.results(_config(sources=sources)) as feed:
        got = [(result.source, result.index) for result in feed]
    assert [i for source, i in got if source == "a"] == list(range(12))
    assert [i for source, i in got if source == "b"] == list(range(12))
    assert feed.report is not None and feed.report.sources["a"].published == 12
    assert feed.error is None


def test_break_stops_the_run_ends_its_threads_and_frees_its_ops_port():
    port = free_port(27600, 27649)
    before = _segstream_threads()
    cfg = _config(sources=[{"name": "cam", "type": "synthetic", "width": 64, "height": 48, "num_frames": 100000,
                            "realtime": True, "fps": 30}], ops={"http": f"127.0.0.1:{port}"})
    seen = []
    for result in segstream.results(cfg, ops=True):
        seen.append(result.index)
        if len(seen) == 1:  # the endpoints serve while the loop runs
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                assert response.status == 200
        if len(seen) == 3:
            break
    assert seen == [0, 1, 2]
    assert _segstream_threads() <= before
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))


def test_a_loop_slower_than_the_pipeline_holds_a_recorded_source_back_instead_of_losing_frames():
    cfg = _config(sources=[{"name": "cam", "type": "synthetic", "width": 64, "height": 48, "num_frames": 200}])
    with segstream.results(cfg, waiting=2) as feed:
        first = next(feed)
        held, deadline = -1, time.monotonic() + 30
        while time.monotonic() < deadline:  # the pipeline fills what lies between the source and the loop, then waits
            time.sleep(0.5)
            if (decoded := feed.runtime.metrics.source("cam").decoded) == held:
                break
            held = decoded
        time.sleep(1.0)
        still = feed.runtime.metrics.source("cam").decoded
        rest = [result.index for result in feed]
    assert first.index == 0 and held == still < 100
    assert rest == list(range(1, 200)) and feed.report.sources["cam"].dropped == 0


def test_an_error_of_a_config_stage_is_raised_in_the_loop(tmp_path, monkeypatch):
    (tmp_path / "feedstages.py").write_text(textwrap.dedent("""
        class Boom:
            def __init__(self, source):
                pass

            def process(self, result):
                if result.index == 5:
                    raise ValueError("the line is not where it was")
                return result
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    before = _segstream_threads()
    seen = []
    with pytest.raises(segstream.StageError, match="the line is not where it was"):
        for result in segstream.results(_config(stages=[{"use": "feedstages:Boom"}])):
            seen.append(result.index)
    assert seen == [0, 1, 2, 3, 4]
    assert _segstream_threads() <= before


def test_ctrl_c_in_the_loop_stops_the_run_and_is_raised():
    before = _segstream_threads()
    cfg = _config(sources=[{"name": "cam", "type": "synthetic", "width": 64, "height": 48, "num_frames": 100000,
                            "realtime": True, "fps": 30}])

    def watch():
        for result in segstream.results(cfg):
            if result.index == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        watch()
    gc.collect()
    assert _segstream_threads() <= before


class _OneFrameThenSilence:
    """A live source of one's own that gives one frame and then nothing until closed: the loop
    waits for its next result however loaded the machine is (a paced synthetic camera's second
    frame could be ready before the interrupt came, under CI's load)."""

    live = True

    def __init__(self, name: str):
        self.name = name
        self._closed = threading.Event()

    def frames(self):
        yield segstream.Frame(self.name, 0, np.zeros((48, 64, 3), np.uint8), 0, None, None, time.time())
        self._closed.wait()

    def close(self):
        self._closed.set()


def test_ctrl_c_while_the_loop_waits_for_a_result_stops_the_run_and_is_raised():
    before = _segstream_threads()
    cfg = _config(sources=[{"name": "tick", "type": "synthetic", "width": 64, "height": 48, "num_frames": 1}])
    feed = segstream.results(cfg, sources=[_OneFrameThenSilence("cam")])
    assert sorted((next(feed).source, next(feed).source)) == ["cam", "tick"]  # then nothing comes
    # Python's own Ctrl-C handler, as a notebook's kernel has it (a test run before this one in the
    # same worker, Ray's, may have left another: CI saw the interrupt never arrive)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    ctrl_c = threading.Timer(0.5, _thread.interrupt_main)
    try:
        ctrl_c.start()
        with pytest.raises(KeyboardInterrupt):
            next(feed)
        ctrl_c.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert _segstream_threads() <= before
    assert list(feed) == []


def test_images_come_with_the_results_only_when_asked_for():
    cfg = _config(sources=[{"name": "cam", "type": "synthetic", "width": 64, "height": 48, "num_frames": 6}])
    with_images = list(segstream.results(cfg, images=True))
    assert len(with_images) == 6
    for result in with_images:
        assert result.image.shape == (48, 64, 3) and result.image.dtype == np.uint8 and result.image.any()
        drawn = segstream.draw_overlay(result.image, result)
        assert drawn.shape == (48, 64, 3) and not np.array_equal(drawn, result.image)
    assert all(result.image is None for result in segstream.results(cfg))


def test_stop_while_the_loop_is_slow_still_hands_the_loop_every_result_drained():
    """Found probing: ``feed.runtime.stop()`` with a loop slower than the pipeline lost what the
    stop drained (the loop got 38 of 66 results published, the summary said 0 dropped): the
    hand-off dropped each result that found no room once the run was stopping."""
    sources = [{"name": name, "type": "synthetic", "width": 64, "height": 48, "num_frames": 200} for name in "ab"]
    got = []
    with segstream.results(_config(sources=sources), waiting=2) as feed:
        for result in feed:
            got.append((result.source, result.index))
            if len(got) == 3:
                time.sleep(0.5)  # the pipeline fills what lies between the sources and the loop
                feed.runtime.stop()
            elif 3 < len(got) <= 8:
                time.sleep(0.15)  # slower than the hand-off's look at the room it waits for (0.1 s)
    report = feed.report
    assert report.stopped and report.dropped == 0 and feed.error is None
    assert len(got) > 3 + 2, "the stop drained no more than the hand-off holds: nothing to lose"
    assert len(got) == report.published == report.handed
    for name in "ab":
        assert [i for source, i in got if source == name] == list(range(report.sources[name].published))


def test_a_loop_gone_without_closing_its_feed_holds_a_stopped_run_s_drain_briefly_and_is_counted(monkeypatch):
    """Found reviewing: with the drain handing every result to the loop, ``stop()`` and then a
    ``break`` out of a plain ``for`` loop, the feed still referenced, held the run for ever."""
    from segstream.pipeline import result_feed

    monkeypatch.setattr(result_feed, "LOOP_GONE_S", 0.5)
    source = {"name": "cam", "type": "synthetic", "width": 64, "height": 48, "num_frames": 400}
    # with events too: an event left over is not a result (found reviewing: the run failed on one)
    feed = segstream.results(_config(sources=[source]), waiting=1, events=True)
    for index, _ in enumerate(feed):
        if index == 2:
            feed.runtime.stop()
            time.sleep(0.5)  # what lies between the source and the loop fills
            break
    assert feed.runtime._finished.wait(30), "the run still drains into a loop that has gone"
    feed.close()
    report = feed.report
    assert feed.error is None, feed.error
    assert report.undelivered.get("results_loop_gone", 0) > 0, report.undelivered
    assert report.published + report.undelivered["results_loop_gone"] == report.handed


def test_a_program_that_exits_with_a_feed_open_does_not_wait_for_its_drain(tmp_path):
    """Found reviewing: a program returning from its main with a feed open (a module's global)
    waited the exit's whole 20 s for a drain held by the loop that had gone (the runtime's exit
    hook ran before the feeds were closed)."""
    import subprocess
    import sys

    program = textwrap.dedent("""
        import time, segstream
        cfg = segstream.load_config({
            "sources": [{"name": "cam", "type": "synthetic", "width": 64, "height": 48, "num_frames": 400}],
            "model": {"device": "cpu", "precision": "fp32"},
            "sinks": {"redis": {"enabled": False}}, "ops": {"http": None}})
        feed = segstream.results(cfg, waiting=1)
        next(feed)
        time.sleep(1.5)  # the pipeline fills up to the hand-off
    """)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "did not finish draining" not in done.stderr, done.stderr


def test_the_loop_can_see_its_sources_states_run_on_a_model_built_once_and_stack_masks(tmp_path, monkeypatch):
    """Found probing as a Roboflow inference user: the loop never learnt that a camera failed or
    reconnected (state events were thrown away); each run of a folder of videos built its model
    again; masks came as a dict keyed by segment id, not an array in the segments' order."""
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0" * 5000)
    sources = [{"name": "cam", "type": "synthetic", "width": 64, "height": 48, "num_frames": 3},
               {"name": "bad", "type": "file", "path": str(bad)}]
    cfg = _config(sources=sources)
    adapter = segstream.build_segmenter(cfg.model, batch_size=cfg.engine.batch_size)
    from segstream.pipeline import model_factory

    monkeypatch.setattr(model_factory, "build_segmenter", lambda *a, **k: pytest.fail("the model was built again"))
    for _ in range(2):  # two runs, one model
        with segstream.results(cfg, events=True, adapter=adapter) as feed:
            items = list(feed)
        states = [(e.source, e.data["state"]) for e in items if isinstance(e, segstream.Event) and e.kind == "state"]
        assert ("bad", "failed") in states and ("cam", "streaming") in states
        cam = [i.data["state"] if isinstance(i, segstream.Event) else i.index for i in items
               if i.source == "cam" and (not isinstance(i, segstream.Event) or i.kind == "state")]
        assert cam == ["connecting", "streaming", 0, 1, 2, "ended"]  # in their place among its results
        assert feed.report.failed.keys() == {"bad"}
    result = next(i for i in items if isinstance(i, segstream.FrameResult))
    masks = result.mask_array()
    assert masks.shape == (len(result.segments), 48, 64) and masks.dtype == bool
    assert all((masks[row] == result.masks()[int(i)]).all() for row, i in enumerate(result.segments.ids))


class _LatencySeen(CollectingSink):
    """A sink of one's own that notes the latency each result has as it is handed over."""

    name = "latency_seen"

    def publish(self, result):
        self.results.append(result.latency_s)


@pytest.mark.parametrize("images, redis", [(True, False), (False, False), (True, True)])
def test_the_loops_results_and_a_sink_see_when_each_result_was_published(images, redis):
    """Found probing: with ``images=True`` every result's ``publish_ts`` and ``latency_s`` were
    None (the hand-off copied the result before the runtime stamped it), and a sink's
    ``publish`` never saw a latency (stamped after the sinks returned); with Redis, which stamps
    its own copies later, the loop's results had none either."""
    cfg = _config(sources=[{"name": "cam", "type": "synthetic", "width": 64, "height": 48, "num_frames": 6}],
                  sinks={"redis": {"enabled": redis}})
    sink = _LatencySeen()
    with segstream.results(cfg, images=images, sinks=[sink]) as feed:
        results = list(feed)
    assert len(results) == 6 and all((result.image is not None) == images for result in results)
    for result in results:
        assert result.publish_ts is not None and 0 <= result.latency_s < 30, result.latency_s
    if not redis:  # a sink that writes later (Redis) stamps its results after the sinks were called
        assert len(sink.results) == 6 and all(latency is not None and latency >= 0 for latency in sink.results)


def test_draw_overlay_on_a_frame_that_is_not_uint8_rgb_says_what_it_takes():
    """Found probing: a float32 frame failed inside OpenCV ("arithm.cpp:713 ... output array type
    must be explicitly specified")."""
    label_map = np.zeros((48, 64), np.int32)
    result = segstream.FrameResult("cam", 0, 64, 48, label_map, segstream.Segments.build([0], [0], ["sky"], [False]))
    frame = np.zeros((48, 64, 3), np.uint8)
    assert segstream.draw_overlay(frame, result).shape == (48, 64, 3)
    with pytest.raises(ValueError, match=r"^draw_overlay draws on an H x W x 3 uint8 RGB frame, got a 48x64x3 "
                                         r"float32 array \(a float frame in 0..1"):
        segstream.draw_overlay(frame.astype(np.float32) / 255, result)
    with pytest.raises(segstream.FrameError, match="got a 48x64 uint8 array"):  # a ValueError too
        segstream.draw_overlay(frame[..., 0], result)


def test_reprs_of_a_result_its_segments_and_a_scaled_map_are_one_short_line():
    labels = ["person", "person", "car", "road", "sky", "tree"] * 20
    segments = segstream.Segments.build(range(120), [i % 6 for i in range(120)], labels, [True] * 120,
                                        embeddings=np.ones((120, 256)))
    scaled = segstream.ScaledLabelMap(np.zeros((256, 256), np.int32), np.arange(1080) * 256 // 1080,
                                      np.arange(1920) * 256 // 1920)
    result = segstream.FrameResult("cam0", 12, 1920, 1080, scaled, segments)
    for text in (repr(result), repr(segments), repr(scaled)):
        assert "\n" not in text and len(text) < 120, text
    assert repr(result) == "FrameResult(cam0 frame 12, 1920x1080, 120 segments (person x40, car x20, road x20, sky x20, +1 more))"
    assert repr(segments) == "Segments(120: person x40, car x20, road x20, sky x20, +1 more; embeddings 120x256)"
    assert repr(scaled) == "ScaledLabelMap(1920x1080 frame from 256x256 decided)"
    # adapter.segment()'s results have no source (found probing: "FrameResult( frame 0, ...")
    assert repr(segstream.FrameResult("", 0, 64, 48, None, segments[:0])) == "FrameResult(frame 0, 64x48, 0 segments)"
    # a hierarchy level's arrays were printed whole, its map among them: 5 KB (found probing as a researcher)
    from segstream.client import Level

    level = Level(np.arange(5), np.array([0, 0, 1, 1, 2]), np.ones(5), np.zeros((240, 320), np.int32))
    assert repr(level) == "Level(5 segments in 3 parents, 320x240 label map)"
    assert repr(Level(np.arange(3), np.full(3, -1), np.ones(3), scaled)) == \
        "Level(3 segments, the coarsest, ScaledLabelMap(1920x1080 frame from 256x256 decided))"


@pytest.mark.parametrize("overrides", [
    "engine.batch_size=8",
    ["engine.batch_size=8", "engine.max_wait_ms=5"],
    {"engine.batch_size": 8, "sources[0].name": "gate"},
])
def test_load_config_takes_overrides_as_one_string_a_list_or_a_mapping(overrides):
    cfg = segstream.load_config(DEMO, overrides)
    assert cfg.engine.batch_size == 8
    assert cfg.engine.max_wait_ms == (5 if isinstance(overrides, list) else 20)
    assert cfg.sources[0].name == ("gate" if isinstance(overrides, dict) else "demo")


@pytest.mark.parametrize("overrides, message", [
    ("engine", "override 'engine': expected KEY=VALUE"),
    ([8], "override 8: expected a KEY=VALUE string"),
    ({"sources.x": 1}, "override sources.x: sources has no entry named 'x' (its names: demo)"),
    (5, "overrides 5: not a KEY=VALUE string, a list of them or a mapping"),  # release QA: a raw TypeError
])
def test_load_config_s_override_errors_name_the_override_not_the_cli_flag(overrides, message):
    with pytest.raises(segstream.ConfigError) as error:
        segstream.load_config(DEMO, overrides)
    assert str(error.value).startswith(message) and "--set" not in str(error.value)


def test_load_config_takes_none_for_no_overrides_and_draw_overlay_without_a_frame_says_how_to_get_one():
    # release QA: None raised "'NoneType' object is not iterable"; a feed's result without images=True,
    # "'NoneType' object has no attribute 'shape'"
    assert segstream.load_config(DEMO, None).sources[0].name == "demo"
    cfg = segstream.load_config(DEMO, {"sources[0].max_frames": 1, "sinks.redis.enabled": False, "ops.http": None})
    with segstream.results(cfg) as feed:
        result = next(iter(feed))
    with pytest.raises(ValueError, match=r"image is None\) — pass the decoded frame, or ask "
                                         r"segstream.results\(..., images=True\) for it"):
        segstream.draw_overlay(result.image, result)


def test_results_refuse_a_preview_level_the_model_lacks_before_it_loads(tmp_path):
    # review: build_runtime (under results) checked the model section but not the level to draw,
    # which then failed at the first frame
    cfg = _config(sinks={"redis": {"enabled": False},
                         "preview": {"enabled": True, "dir": str(tmp_path / "preview"), "level": 0}})
    with pytest.raises(segstream.ConfigError, match="sinks.preview.level: synthetic_eomt_tiny_256 is an eomt model"):
        segstream.results(cfg)
    assert not (tmp_path / "preview").exists()


def test_each_source_s_first_frame_and_a_change_of_its_filters_say_what_made_its_results():
    """Found probing as a reproducibility engineer: no output said which weights or settings made
    it (entries name the preset only, the same for any checkpoint), and a reload that changed a
    source's filters mid-run left no trace."""
    from segstream.connectors.checkpoints import file_sha256
    from segstream.models.segment_filter import FilterSettings, SegmentFilter

    weights = Path(segstream.__file__).resolve().parents[1] / "models" / "weights" / "synthetic_eomt_tiny_256.safetensors"
    cfg = _config(filters={"min_score": 0.85, "exclude_classes": ["sky"]})
    said = []
    with segstream.results(cfg, max_frames=8) as feed:
        for result in feed:
            said += [(result.index, e.data) for e in result.events if e.kind == "settings"]
            if result.index == 2:  # as a reload does
                feed.runtime.set_filter("cam", SegmentFilter(FilterSettings(min_score=0.95)))
    (first, start), (later, changed) = said
    assert first == start["frame"] == 0 and start["checkpoint"] == str(weights)
    assert start["checkpoint_sha256"] == file_sha256(weights) and start["precision"] == "fp32"
    assert start["model"] == "synthetic_eomt_tiny_256" and start["segstream"] == segstream.__version__
    assert start["filters"] == {"classes": None, "exclude_classes": ["sky"], "min_score": 0.85, "min_area": 0,
                                "roi": None}
    assert later == changed["frame"] > 2 and changed["filters"]["min_score"] == 0.95
