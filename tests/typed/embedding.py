"""A typed program that embeds a pipeline with a sink and a stage of its own: checked by
tests/test_type_checking.py (never run)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import segstream
from segstream import Event, FamilyAdapter, Frame, FrameResult, FrameStage, Preset, Sink, StageFactory, VideoSource
from segstream.pipeline.config import ModelConfig


class CountingSink:
    def __init__(self) -> None:
        self.count = 0

    @property
    def name(self) -> str:
        return "counting"

    def publish(self, result: FrameResult) -> None:
        self.count += 1

    def publish_event(self, event: Event) -> None:
        pass

    def poll(self) -> float | None:
        return None

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class SilentSource:
    def __init__(self, name: str) -> None:
        self._name = name
        self.live: Final = False  # read-only members: the runtime only reads them

    @property
    def name(self) -> str:
        return self._name

    def frames(self) -> Iterator[Frame]:
        return iter(())

    def close(self) -> None:
        pass


def build_mine(preset: Preset, model_cfg: ModelConfig, device: Any, precision: str, max_batch: int) -> FamilyAdapter:
    # only its signature matters here: register_family must take a builder typed with a real config class
    raise NotImplementedError(model_cfg.family)


class Dropper:
    def process(self, result: FrameResult) -> FrameResult:
        result.segments = result.segments[result.segments.scores > 0.5]
        return result


def stage_for(source: str) -> FrameStage | None:
    return Dropper() if source.startswith("cam") else None


def run(path: str) -> int:
    segstream.register_family("mine", build_mine)
    cfg = segstream.load_config(path)
    sinks: list[Sink] = [CountingSink()]
    sources: list[VideoSource] = [SilentSource("quiet")]
    factories: list[StageFactory] = [stage_for]
    runtime = segstream.build_runtime(cfg, max_frames=10, progress=False, sinks=sinks, sources=sources,
                                      stages=factories)
    report = runtime.run()  # without stopping=: a Runtime, never None (README's example, as written)
    stoppable = segstream.build_runtime(cfg, progress=False, stopping=lambda: True)
    if stoppable is None:  # with it: None once it said stop
        return report.batches
    return stoppable.run().batches


def overlay(result: FrameResult) -> Any:
    """README's drawing of a result kept with its frame (``images=True``): its image may be None."""
    return segstream.draw_overlay(result.image, result)
