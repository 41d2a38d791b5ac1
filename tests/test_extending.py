"""Extending segstream from outside the package: model families and presets of one's own, and
sources, sinks and stages of one's own beside a config's (README.md's example runs them all:
tests/test_readme.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import segstream
from segstream.connectors.errors import ConfigError
from segstream.connectors.synthetic import SyntheticSource
from segstream.models import presets
from segstream.pipeline import model_factory
from segstream.pipeline.config import validate_config
from segstream.pipeline.runtime import Runtime
from tests.conftest import CollectingSink, ColourSegmenter

COLOURS = segstream.LabelSet("colours", ("square",), (True,))


class ColourFamily(ColourSegmenter):
    geometry = segstream.InputGeometry(64)  # what the engine's FamilyAdapter protocol asks for besides


@pytest.fixture
def registries():
    """The registries as they were before the test, put back after it."""
    registries = (model_factory.FAMILY_BUILDERS, model_factory.DEFAULT_PRESETS, model_factory.FAMILY_SETTINGS,
                  presets.PRESETS)
    saved = [dict(registry) for registry in registries]
    yield
    for registry, before in zip(registries, saved):
        registry.clear()
        registry.update(before)


def build_colour(preset, model_cfg, device, precision, max_batch):
    return ColourFamily()


def colour_preset(name: str = "colour_square") -> segstream.Preset:
    return segstream.Preset(name, config=None, task="panoptic", label_set=COLOURS, family="colour")


def test_a_family_registered_from_outside_builds_by_its_preset_s_name_and_segments(registries):
    segstream.register_family("colour", build_colour)
    segstream.register_preset(colour_preset())
    adapter = segstream.build_segmenter("colour_square")
    assert isinstance(adapter, ColourFamily)
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[10:20, 10:30] = (255, 0, 0)
    (result,) = adapter.segment([frame])
    assert list(result.segments.labels) == ["square"] and result.segments.areas.tolist() == [200]


def test_model_family_alone_picks_the_registered_default_preset(registries):
    segstream.register_family("colour", build_colour, default_preset="colour_square")
    segstream.register_preset(colour_preset())
    assert isinstance(segstream.build_segmenter({"family": "colour"}), ColourFamily)


def test_a_family_without_a_default_preset_named_alone_says_to_set_the_preset(registries):
    segstream.register_family("colour", build_colour)
    with pytest.raises(ConfigError, match="family colour has no default preset — set model.preset"):
        segstream.build_segmenter({"family": "colour"})


def test_a_preset_of_an_unregistered_family_names_the_known_families(registries):
    segstream.register_preset(segstream.Preset("orphan", None, "panoptic", COLOURS, family="nowhere"))
    with pytest.raises(ConfigError, match="family 'nowhere', which this segstream cannot run .known families: eomt, "
                                          "senatra"):
        segstream.build_segmenter("orphan")


@pytest.mark.parametrize(("args", "error", "message"), [
    (("", build_colour), TypeError, "name must be a non-empty string"),
    (("eomt", build_colour), ValueError, "family 'eomt' is already registered"),
    (("colour", "build_colour"), TypeError, "builder must be callable, got str"),
    (("colour", lambda preset: None), TypeError, r"builder must take \(preset, model_cfg, device, precision, max_batch\)"),
    (("colour", build_colour, 3), TypeError, "default_preset must be a preset's name"),
    (("colour", build_colour, None, "labels"), TypeError, "settings must be a list of model: keys"),
    (("colour", build_colour, None, ["labels", "strength"]), ValueError,
     "settings names strength, not among the model: keys a family may read .* put your own in model.options"),
])
def test_register_family_refuses_what_it_cannot_run(registries, args, error, message):
    with pytest.raises(error, match=message):
        segstream.register_family(*args)
    assert "colour" not in model_factory.FAMILY_BUILDERS


def test_a_family_of_one_s_own_reads_its_own_settings_from_model_options(registries, tmp_path):
    """Found probing: a plugin's family could not be given settings of its own (the model:
    section refuses unknown keys)."""
    seen = []

    def build(preset, model_cfg, device, precision, max_batch):
        seen.append(model_cfg.options)
        return ColourFamily()

    segstream.register_family("colour", build)
    segstream.register_preset(colour_preset())
    segstream.build_segmenter({"preset": "colour_square", "options": {"hue": 0.25, "modes": ["a", "b"]}})
    config = tmp_path / "pipeline.yaml"
    config.write_text("sources: [{name: cam, type: synthetic}]\nmodel: {preset: colour_square, options: {hue: 0.5}}\n")
    cfg = segstream.load_config(config)
    segstream.build_segmenter(cfg.model)
    assert seen == [{"hue": 0.25, "modes": ["a", "b"]}, {"hue": 0.5}]


def test_options_for_a_shipped_family_are_refused_not_ignored():
    with pytest.raises(ConfigError, match="model.options: synthetic_eomt_tiny_256 is an eomt model, which takes no "
                                          "options .they are a plugin family's own settings. — remove model.options"):
        segstream.build_segmenter({"options": {"hue": 1}})


def test_a_family_that_names_the_settings_it_reads_refuses_the_others(registries):
    """Found probing: EoMT's thresholds and post-processing mode given to a plugin's model were
    accepted and silently ignored."""
    segstream.register_family("colour", build_colour, settings=["score_threshold"])
    segstream.register_preset(colour_preset())
    assert isinstance(segstream.build_segmenter({"preset": "colour_square", "score_threshold": 0.5}), ColourFamily)
    with pytest.raises(ConfigError, match=r"model.compile: colour_square is a colour model, which does not read it "
                                          r"— remove model.compile, model.postprocess \(it reads model.score_threshold\)"):
        segstream.build_segmenter({"preset": "colour_square", "postprocess": "exact", "compile": True})


def test_register_preset_refuses_a_taken_name_a_non_preset_and_an_unknown_label_set(registries):
    with pytest.raises(ValueError, match="preset 'synthetic_eomt_tiny_256' is already registered .eomt family."):
        segstream.register_preset(colour_preset("synthetic_eomt_tiny_256"))
    with pytest.raises(TypeError, match="register_preset takes a segstream.Preset, got dict"):
        segstream.register_preset({"name": "x"})
    with pytest.raises(ValueError, match="no shipped label set is called 'mine'"):
        segstream.register_preset(segstream.Preset("x", None, "panoptic", "mine", family="colour"))
    assert segstream.PRESETS["synthetic_eomt_tiny_256"].family == "eomt" and "x" not in segstream.PRESETS


@pytest.mark.parametrize(("fields", "message"), [
    ({"task": "depth"}, "task must be one of panoptic, semantic, instance, got 'depth'"),
    ({"label_set": 3}, "label_set must be a shipped label set's name or a LabelSet"),
    ({"family": ""}, "Preset.family must be a non-empty string"),
    ({"weights": None}, "weights must be a string"),
])
def test_a_preset_is_checked_when_built(fields, message):
    with pytest.raises((TypeError, ValueError), match=message):
        segstream.Preset(**{"name": "p", "config": None, "task": "panoptic", "label_set": COLOURS,
                            "family": "colour", **fields})


def test_a_builder_returning_no_adapter_is_named_before_the_run(registries):
    segstream.register_family("colour", lambda preset, model_cfg, device, precision, max_batch: object())
    segstream.register_preset(colour_preset())
    with pytest.raises(segstream.SegstreamError, match="colour family.s builder returned a object, which lacks name, family, labels"):
        segstream.build_segmenter("colour_square")


def test_build_segmenter_takes_a_shipped_preset_s_name():
    adapter = segstream.build_segmenter("synthetic_senatra_tiny_192")
    assert isinstance(adapter, segstream.SeNaTraSegmenter) and adapter.name == "synthetic_senatra_tiny_192"
    with pytest.raises(ConfigError, match="unknown preset 'synthetic_eomt_tiny_265' — did you mean synthetic_eomt_tiny_256"):
        segstream.build_segmenter("synthetic_eomt_tiny_265")
    with pytest.raises(TypeError, match="takes a preset's name, a ModelConfig or a dict"):
        segstream.build_segmenter(7)


def test_what_an_extender_needs_is_exported_and_importing_segstream_still_loads_no_torch():
    names = ["VideoSource", "Sink", "FrameStage", "BufferPolicy", "Prepared", "Decision", "InputGeometry", "LabelSet",
             "Preset", "register_family", "register_preset", "segment_frames", "load_plugins", "FamilyAdapter"]
    script = ("import sys, segstream\n"
              f"missing = [n for n in {names!r} if n not in segstream.__all__]\n"
              "assert not missing and 'torch' not in sys.modules, missing\n"
              "assert segstream.Sink.__module__ == 'segstream.connectors.sink'\n")
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)


def _config():
    return validate_config({"sources": [{"name": "config_cam", "type": "synthetic", "width": 64, "height": 48,
                                         "num_frames": 3}], "model": {"device": "cpu"}, "engine": {"threads": 1},
                            "sinks": {"redis": {"enabled": False}}})


class FailingSource:
    name = "own_cam"
    live = True

    def frames(self):
        raise OSError("the robot's camera driver died")
        yield

    def close(self):
        pass


def test_runtime_from_config_takes_a_source_the_config_does_not_name():
    cfg = _config()
    sources = [SyntheticSource("config_cam", 64, 48, 25, 0, 3), SyntheticSource("own_cam", 64, 48, 25, 1, 4)]
    sink = CollectingSink()
    report = Runtime.from_config(cfg, sources, ColourSegmenter(), [sink], progress=False).run()
    assert sink.indices("own_cam") == [0, 1, 2, 3] and sink.indices("config_cam") == [0, 1, 2]
    assert report.sources["own_cam"].published == 4


def test_a_source_of_one_s_own_is_required_its_failure_ends_the_run():
    runtime = Runtime.from_config(_config(), [SyntheticSource("config_cam", 64, 48, 25, 0, 50), FailingSource()],
                                  ColourSegmenter(), [CollectingSink()], progress=False)
    with pytest.raises(OSError, match="camera driver died"):
        runtime.run()


def test_build_runtime_refuses_an_own_source_named_as_a_config_source_and_closes_what_it_was_given():
    sink, source = CollectingSink(), SyntheticSource("config_cam", 64, 48, 25, 0, 3)
    with pytest.raises(ConfigError, match="source name 'config_cam' is both in the config's sources and among"):
        segstream.build_runtime(_config(), progress=False, sources=[source], sinks=[sink])
    assert sink.closed and source._closed.is_set()


class Broken(ColourFamily):
    """The colour family with one mistake in what decide() or embeddings() returns."""

    def __init__(self, mistake: str):
        super().__init__()
        self.mistake = mistake

    def decide(self, outputs, prepared):
        decisions = super().decide(outputs, prepared)
        d = decisions[0]
        h, w = d.frame
        if self.mistake == "class":
            d.class_ids = d.class_ids - 1
        elif self.mistake == "swapped":
            d.frame = (w, h)
        elif self.mistake == "padded":  # the letterboxed square, padding included
            d.label_map = torch.nn.functional.pad(d.label_map, (0, 0, 0, w - h), value=-1)
        elif self.mistake == "outside":
            d.label_map = torch.where(d.label_map >= 0, 5, -1).int()
        elif self.mistake == "float":
            d.label_map = d.label_map.float()
        elif self.mistake == "fewer":
            decisions = decisions[:0]
        return decisions

    def embeddings(self, outputs, prepared, index, decision):
        rows = len(decision.class_ids) + (2 if self.mistake == "embeddings" else 0)
        return torch.zeros(rows, 4)


@pytest.mark.parametrize("mistake, says", [
    ("class", r"decide\(\) returned class ids \[-1\]; they must be 0 to 0 \(its label set's classes\)"),
    ("swapped", r"decide\(\) said the frame is 48x64 \(width x height\), but it is 64x48: Decision.frame is \(height, "),
    ("padded", r"decide\(\) returned a 64x64 label map for a 64x48 frame: a map stands for the whole frame at any scale, without"),
    ("outside", r"decide\(\)'s label map holds values -1 to 5 for 1 segments; segment i has value i, -1 none"),
    ("float", r"decide\(\) returned a float32 label map of shape \(48, 64\); it must be a 2-D integer map"),
    ("fewer", r"decide\(\) returned 0 decisions for 1 frames"),
    ("embeddings", r"embeddings\(\) returned shape \(3, 4\) for 1 segments; it must be 1 x D"),
])
def test_what_a_family_of_one_s_own_returns_is_checked_and_named_not_published_wrong(mistake, says):
    # found probing a plugin: class id -1 was published as the last class's label, a swapped
    # frame size as the frame's, a padded map stretched over the frame, all without a word
    from segstream.connectors.errors import AdapterError

    frame = np.zeros((48, 64, 3), np.uint8)
    frame[10:20, 10:30] = (255, 0, 0)
    with pytest.raises(AdapterError, match=r"model family 'test' \(colour-threshold\): " + says):
        Broken(mistake).segment([frame])


def test_a_builder_that_raises_is_one_line_naming_the_family(registries):
    from segstream.connectors.errors import AdapterError

    def build(preset, model_cfg, device, precision, max_batch):
        raise RuntimeError("weights.bin is corrupt")

    segstream.register_family("colour", build)
    segstream.register_preset(colour_preset())
    with pytest.raises(AdapterError, match=r"^model family 'colour' could not build colour_square: RuntimeError: "
                                           r"weights.bin is corrupt$"):
        segstream.build_segmenter("colour_square")


def test_bench_measures_a_family_of_one_s_own_and_names_no_precision_it_lacks(registries, capsys):
    """Found probing: `segstream bench` of a plugin's model said "(None, None post-processing)"."""
    from pathlib import Path

    from segstream.pipeline.cli import main

    segstream.register_family("colour", build_colour)
    segstream.register_preset(colour_preset())
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    assert main(["bench", str(demo), "--frames", "6", "--naive-frames", "2", "--network-seconds", "0.1",
                 "--set", "model.preset=colour_square"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("model colour-threshold on cpu, batch 4, pipeline ") and "None" not in header, header


class Delegating:
    """A family of one's own that runs the shipped model inside (and has no precision or
    post-processing mode to name)."""

    def __init__(self, inner, name):
        self._inner, self.name, self.family = inner, name, "delegating"

    def __getattr__(self, member):
        if member in ("precision", "postprocess"):
            raise AttributeError(member)
        return getattr(self._inner, member)

    def segment(self, images):
        return segstream.segment_frames(self, images)


def test_evaluate_scores_a_family_of_one_s_own_as_the_model_inside_it(registries, capsys):
    """Found probing: `segstream evaluate --preset` of a plugin's model refused its label set when
    a LabelSet rather than a shipped set's name, and then failed on a missing `precision`."""
    from segstream.models.label_sets import load_label_set
    from segstream.pipeline.cli import main

    segstream.register_family("delegating", lambda preset, model_cfg, device, precision, max_batch: Delegating(
        segstream.build_segmenter("synthetic_eomt_tiny_256"), preset.name))
    segstream.register_preset(segstream.Preset("delegating_tiny", None, "panoptic", load_label_set("synthetic"),
                                               family="delegating"))
    scores, headers = {}, {}
    for preset in ("delegating_tiny", "synthetic_eomt_tiny_256"):
        assert main(["evaluate", "--preset", preset, "--seeds", "5", "--frames", "2", "--device", "cpu"]) == 0
        out = capsys.readouterr().out.splitlines()
        scores[preset], headers[preset] = json.loads(out[-1]), out[0]
    assert headers["delegating_tiny"].startswith("model delegating_tiny: 2 frames, ")
    assert headers["synthetic_eomt_tiny_256"].startswith("model synthetic_eomt_tiny_256 (")
    assert scores["delegating_tiny"] == scores["synthetic_eomt_tiny_256"] and scores["delegating_tiny"]["pq"] > 0.5


def test_the_shipped_sources_are_exported_for_a_program_s_own_runtime(tmp_path):
    """Found probing: passing a video file to build_runtime(sources=...) meant importing
    segstream.connectors.file_source.FileSource; the shipped sources are now part of the API."""
    from tests.conftest import encode_clip

    assert {"FileSource", "StreamSource", "CameraSource", "ImageFolderSource", "SyntheticSource"} <= set(
        segstream.__all__)
    clip = encode_clip(tmp_path / "clip.mp4", frames=4)
    sink = CollectingSink()
    runtime = segstream.build_runtime(_config(), progress=False, sources=[segstream.FileSource("clip", str(clip))],
                                      sinks=[sink])
    report = runtime.run()
    assert report.sources["clip"].published == 4 and sink.indices("clip") == [0, 1, 2, 3]


def test_segment_takes_a_read_only_frame_without_a_warning_and_leaves_it_as_it_was():
    """Found probing: a frame from np.frombuffer printed torch's "NumPy array is not writable" warning."""
    import warnings

    adapter = segstream.build_segmenter("synthetic_eomt_tiny_256")
    frame = np.frombuffer(np.full((48, 64, 3), 90, np.uint8).tobytes(), np.uint8).reshape(48, 64, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (result,) = adapter.segment([frame])
    assert result.label_map.shape == (48, 64) and (frame == 90).all()


def test_build_runtime_given_something_that_is_no_sink_says_what_a_sink_has():
    # found by the typed-API probe: the refusal was hidden by an AttributeError from closing it
    import segstream

    cfg = segstream.load_config({"sources": [{"name": "cam", "type": "synthetic", "width": 64, "height": 48,
                                              "num_frames": 2}],
                                 "model": {"device": "cpu"}, "sinks": {"redis": {"enabled": False}},
                                 "ops": {"http": None}})
    with pytest.raises(TypeError, match="lacks .*: a sink has"):
        segstream.build_runtime(cfg, progress=False, sinks=[object()])

