"""A frame whose network outputs hold NaN or infinity (an fp16 network overflowing on a GPU) is
dropped, counted and said, not published: before, EoMT's panoptic and instance decisions quietly
found no segment in it (a street full of cars published as empty), and its semantic decision one
segment of class 0 scored -Infinity, written as JSON that no strict reader parses."""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
import pytest
import torch

import segstream
from segstream.connectors.errors import WireFormatError
from segstream.connectors.frames import Frame
from segstream.connectors.redis_wire import to_wire
from segstream.models.segmenter import EoMTSegmenter, nonfinite_frames
from segstream.models.senatra_adapter import SeNaTraSegmenter, SizeGroups
from segstream.pipeline.cli import nonfinite_line
from segstream.pipeline.metrics import MODEL_NONFINITE
from segstream.pipeline.model_factory import build_segmenter
from segstream.pipeline.runtime import Runtime
from tests.conftest import CollectingSink


def _overflowing(adapter, brighter_than: float = 0.5):
    """The adapter, its network giving NaN for frames brighter than that (normalised: 0.5 is about
    mid-grey; an overflow's outputs)."""
    forward = adapter.forward

    def poison(outputs, pixels):
        for i, frame in enumerate(pixels):
            if float(frame.float().mean()) > brighter_than:
                for tensor in outputs[:2]:  # EoMT's mask and class logits; SeNaTra's class and pixel logits
                    tensor[i] = float("nan")

    @torch.inference_mode()
    def overflowing(prepared):
        outputs = forward(prepared)
        if isinstance(outputs, SizeGroups):  # SeNaTra's frames of other sizes, each group run apart
            for frames, group in outputs.groups:
                poison(group, prepared.pixels[frames])
        else:
            poison(outputs, prepared.pixels)
        return outputs

    adapter.forward = overflowing
    return adapter


def _model(family: str):
    cfg = segstream.load_config({"sources": [{"name": "a", "type": "synthetic"}],
                                 "model": {"device": "cpu", "precision": "fp32",
                                           **({"family": "senatra"} if family == "senatra" else {})}})
    return build_segmenter(cfg.model, batch_size=4)


@pytest.mark.parametrize("family", ["eomt", "senatra"])
def test_each_family_says_which_frames_of_a_batch_have_outputs_that_are_not_finite(family):
    adapter = _overflowing(_model(family))
    assert isinstance(adapter, EoMTSegmenter if family == "eomt" else SeNaTraSegmenter)
    frames = [np.full((48, 64, 3), level, np.uint8) for level in (30, 255, 90, 255)]
    frames[2] = np.full((60, 40, 3), 90, np.uint8)  # another size: SeNaTra runs it apart
    tensors = [torch.from_numpy(f) for f in frames]
    prepared = adapter.prepare(tensors)
    outputs = adapter.forward(prepared)
    assert nonfinite_frames(adapter, outputs, prepared) == [1, 3]


def test_a_semantic_frame_is_not_finite_when_any_of_its_windows_is_not():
    shipped = _model("eomt")
    adapter = EoMTSegmenter(shipped.model, "semantic", shipped.labels, shipped.name)
    frames = [torch.from_numpy(np.zeros((64, 192, 3), np.uint8)), torch.from_numpy(np.zeros((64, 64, 3), np.uint8))]
    prepared = adapter.prepare(frames)
    outputs = adapter.forward(prepared)
    assert len(prepared.layouts[0].starts) > 1 and nonfinite_frames(adapter, outputs, prepared) == []
    with torch.inference_mode():
        outputs.mask_logits[1] = float("inf")  # the first frame's second window
    assert nonfinite_frames(adapter, outputs, prepared) == [0]


class _Flashes:
    """A source whose every third frame is white."""

    live = False

    def __init__(self, name: str, count: int):
        self.name, self.count = name, count

    def frames(self):
        for i in range(self.count):
            level = 255 if i % 3 == 1 else 40
            yield Frame(self.name, i, np.full((48, 64, 3), level, np.uint8), None, None, i / 10, time.time())

    def close(self):
        """Nothing to release: its frames end by themselves."""


def test_the_engine_drops_counts_and_says_each_source_s_frames_whose_outputs_are_not_finite(caplog):
    sink = CollectingSink()
    runtime = Runtime([_Flashes("cam1", 9), _Flashes("cam2", 6)], _overflowing(_model("eomt")), [sink],
                      batch_size=4, progress=False)
    with caplog.at_level(logging.WARNING, logger="segstream"):
        report = runtime.run()
    assert sink.indices("cam1") == [0, 2, 3, 5, 6, 8] and sink.indices("cam2") == [0, 2, 3, 5]
    counts = report.sources["cam1"]
    assert (counts.published, counts.dropped_by[MODEL_NONFINITE]) == (6, 3) and report.balanced
    assert report.nonfinite == 5
    said = [r.getMessage() for r in caplog.records if "NaN or infinity" in r.getMessage()]
    assert sorted(said) == [
        f"source {name} frame 1 dropped: the network's outputs hold NaN or infinity (its segments would mean nothing) "
        "— set model.precision to fp32 if it is not, and check that the checkpoint was trained for "
        f"synthetic_eomt_tiny_256 (said once for this source; every such frame is counted as dropped, model_nonfinite)"
        for name in ("cam1", "cam2")]
    assert "cam1 6/9 dropped 3 (model_nonfinite 3)" in report.summary()


def test_at_fp16_the_advice_is_bf16_and_the_run_ends_saying_its_output_is_incomplete():
    from segstream.models.segmenter import nonfinite_advice

    adapter = _model("eomt")
    adapter.precision = "fp16"
    assert nonfinite_advice(adapter).endswith("fp16 overflows in this network: set model.precision to bf16 (or fp32)")
    assert nonfinite_line(3, 90) == ("the output is incomplete: 3 of 90 frames were dropped because the network's "
                                     "outputs for them held NaN or infinity (model_nonfinite); the warning above says "
                                     "what to do")


def test_segment_says_which_images_gave_outputs_that_are_not_finite(caplog):
    adapter = _overflowing(_model("eomt"))
    with caplog.at_level(logging.WARNING, logger="segstream"):
        results = adapter.segment([np.zeros((48, 64, 3), np.uint8), np.full((48, 64, 3), 255, np.uint8)])
    assert len(results) == 2
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("frame 1 of 2: the network's outputs hold NaN or infinity")


def test_the_wire_refuses_a_score_that_is_not_finite_rather_than_write_json_no_reader_parses():
    from segstream.connectors.synthetic import SyntheticScene

    adapter = _model("eomt")
    [result] = adapter.segment([SyntheticScene(width=200, height=150, seed=3).render()[0]])
    result.source, result.index = "cam1", 7
    assert len(result.segments) > 0
    json.loads(to_wire(result)["segments"])
    result.segments.scores[0] = np.nan
    with pytest.raises(WireFormatError, match="segment scores of cam1 frame 7 must be finite"):
        to_wire(result)


def test_a_run_stopped_while_a_frame_is_dropped_so_still_ends_each_source():
    # the dropped frame is counted where its source's order is kept: the source's end waits for it
    sink = CollectingSink()
    runtime = Runtime([_Flashes("cam1", 200)], _overflowing(_model("eomt")), [sink], batch_size=2, progress=False)
    done = {}
    thread = threading.Thread(target=lambda: done.setdefault("report", runtime.run()))
    thread.start()
    deadline = time.monotonic() + 30
    while len(sink.indices("cam1")) < 10 and time.monotonic() < deadline:
        time.sleep(0.02)
    runtime.stop()
    thread.join(30)
    report = done["report"]
    assert report.balanced and report.sources["cam1"].dropped_by.get(MODEL_NONFINITE, 0) >= 3


def test_a_batch_video_with_frames_dropped_so_is_failed_not_done(tmp_path):
    from segstream.pipeline.batch import run_batch
    from segstream.pipeline.config import BatchPipelineConfig, validate_config
    from tests.conftest import encode_clip

    video = encode_clip(tmp_path / "a.mp4", frames=4)
    cfg = validate_config({"model": {"device": "cpu", "precision": "fp32"}, "ops": {"http": None},
                           "sinks": {"redis": {"enabled": False}}, "batch": {"output": str(tmp_path / "out")}},
                          schema=BatchPipelineConfig)
    outcomes, _, _ = run_batch(cfg, [str(video)], adapter=_overflowing(_model("eomt"), brighter_than=-100),
                               progress=False)
    [outcome] = outcomes
    assert (outcome.status, outcome.reason) == (
        "failed", "4 frames dropped: the network's outputs for them held NaN or infinity (model_nonfinite; the warning "
                  "above says what to do)")


def test_segstream_run_ends_with_exit_1_saying_its_output_is_incomplete(tmp_path, monkeypatch, capsys):
    from segstream.pipeline import model_factory
    from segstream.pipeline.cli import main

    built = model_factory.build_segmenter
    monkeypatch.setattr(model_factory, "build_segmenter",
                        lambda *args, **kwargs: _overflowing(built(*args, **kwargs), brighter_than=-100))
    config = tmp_path / "run.yaml"
    config.write_text("sources: [{name: cam1, type: synthetic, width: 64, height: 48, num_frames: 3}]\n"
                      "model: {device: cpu, precision: fp32}\nsinks: {redis: {enabled: false}}\nops: {http: null}\n")
    assert main(["run", str(config)]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "segstream: error: the output is incomplete: 3 of 3 frames were dropped because the network's outputs for "
        "them held NaN or infinity (model_nonfinite); the warning above says what to do")


class _Blinks:
    """A live camera that reports its states: 6 frames, the last white, then reconnecting, waiting
    for that state to reach the sinks (at most 10 s) before it ends."""

    live = True

    def __init__(self, name: str, told: threading.Event):
        self.name, self.told, self.on_state = name, told, None
        self.waited_out = False

    def frames(self):
        self.on_state("streaming", "up", {})
        for i in range(6):
            yield Frame(self.name, i, np.full((48, 64, 3), 255 if i == 5 else 40, np.uint8), None, None, i / 20,
                        time.time())
        self.on_state("reconnecting", "camera went away", {})
        self.waited_out = not self.told.wait(10)
        self.on_state("ended", "closed", {})

    def close(self):
        self.told.set()


class _Telling(CollectingSink):
    def __init__(self, told: threading.Event):
        super().__init__()
        self.told = told

    def publish_event(self, event):
        super().publish_event(event)
        if event.kind == "state" and event.data.get("state") == "reconnecting":
            self.told.set()


def test_a_state_said_after_a_dropped_frame_is_not_held_until_the_source_ends():
    # found in review: a state waits for the frames before it to reach the sinks, and a frame dropped for its
    # outputs never counted as reached: the state waited for the source's end (or 10 s)
    told = threading.Event()
    camera, sink = _Blinks("cam", told), _Telling(told)
    Runtime([camera], _overflowing(_model("eomt")), [sink], batch_size=1, progress=False, publish_states=True).run()
    assert sink.indices("cam") == [0, 1, 2, 3, 4] and not camera.waited_out
