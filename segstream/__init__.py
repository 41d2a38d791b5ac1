"""segstream: streaming video segmentation, published to Redis Streams.

The public API is importable from here; names load on first use, so ``import segstream`` stays
light (no torch) for programs that only read streams.

    import segstream
    cfg = segstream.load_config("configs/demo.yaml")
    for result in segstream.results(cfg, max_frames=20):   # FrameResults, in memory
        print(result)

Extending it (``README.md``, "Extending segstream"): sources (``VideoSource``), per-source stages
(``FrameStage``), sinks (``Sink``) and model families (``register_family``, ``register_preset``,
or a plugin's entry point in the group ``segstream.plugins``) of one's own.

The repository's folders are subpackages: ``segstream.models`` (the math: EoMT, pre- and
post-processing, results; SeNaTra), ``segstream.connectors`` (sources, sinks, the wire format, Redis),
``segstream.pipeline`` (config, engine, runtime, CLI). ``segstream.client`` is the consumer SDK;
the ``segstream-client`` distribution installs it (and this file) without torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.3.15"

# public name -> module that defines it
_EXPORTS = {
    "FrameResult": "segstream.models.results",
    "Segments": "segstream.models.results",
    "Level": "segstream.models.results",
    "ScaledLabelMap": "segstream.models.results",
    "NO_TRACK": "segstream.models.results",
    "Frame": "segstream.connectors.frames",
    "SegstreamError": "segstream.connectors.errors",
    "ConfigError": "segstream.connectors.errors",
    "SourceError": "segstream.connectors.errors",
    "SinkError": "segstream.connectors.errors",
    "IdleTimeout": "segstream.connectors.errors",
    "ReaderError": "segstream.connectors.errors",
    "ResourceLimit": "segstream.connectors.errors",
    "CheckpointError": "segstream.connectors.errors",
    "AdapterError": "segstream.connectors.errors",
    "FrameError": "segstream.connectors.errors",
    "StageError": "segstream.connectors.errors",
    "WireFormatError": "segstream.connectors.errors",
    "to_wire": "segstream.connectors.redis_wire",
    "from_wire": "segstream.connectors.redis_wire",
    "StreamReader": "segstream.connectors.redis_reader",
    "connect": "segstream.connectors.redis_reader",
    "Client": "segstream.connectors.redis_reader",
    "Entry": "segstream.connectors.redis_reader",
    "EventEntry": "segstream.connectors.redis_reader",
    "Event": "segstream.models.results",
    "EoMT": "segstream.models.eomt",
    "EoMTConfig": "segstream.models.eomt",
    "EoMTSegmenter": "segstream.models.segmenter",
    "SeNaTra": "segstream.models.senatra",
    "SeNaTraConfig": "segstream.models.senatra",
    "SeNaTraSegmenter": "segstream.models.senatra_adapter",
    "FamilyAdapter": "segstream.models.segmenter",
    "Prepared": "segstream.models.segmenter",
    "segment_frames": "segstream.models.segmenter",
    "Decision": "segstream.models.processing",
    "InputGeometry": "segstream.models.processing",
    "LabelSet": "segstream.models.label_sets",
    "PRESETS": "segstream.models.presets",
    "Preset": "segstream.models.presets",
    "register_preset": "segstream.models.presets",
    "register_family": "segstream.pipeline.model_factory",
    "load_plugins": "segstream.pipeline.plugins",
    "VideoSource": "segstream.connectors.source",
    "FileSource": "segstream.connectors.file_source",
    "StreamSource": "segstream.connectors.stream_source",
    "CameraSource": "segstream.connectors.camera_source",
    "ImageFolderSource": "segstream.connectors.image_source",
    "SyntheticSource": "segstream.connectors.synthetic",
    "Sink": "segstream.connectors.sink",
    "FrameStage": "segstream.pipeline.runtime",
    "BufferPolicy": "segstream.pipeline.engine",
    "PipelineConfig": "segstream.pipeline.config",
    "load_config": "segstream.pipeline.config",
    "build_segmenter": "segstream.pipeline.model_factory",
    "Runtime": "segstream.pipeline.runtime",
    "RunReport": "segstream.pipeline.runtime",
    "run_pipeline": "segstream.pipeline.cli",
    "build_runtime": "segstream.pipeline.cli",
    "results": "segstream.pipeline.result_feed",
    "ResultFeed": "segstream.pipeline.result_feed",
    "draw_overlay": "segstream.connectors.overlay",
    "EncodedMasks": "segstream.connectors.redis_wire",
    "WrittenCallback": "segstream.connectors.sink",
    "DroppedCallback": "segstream.connectors.sink",
    "SegmentFilter": "segstream.models.segment_filter",
    "StageFactory": "segstream.pipeline.runtime",
    "FamilyBuilder": "segstream.pipeline.model_factory",
}

# Written out, one name a line: type checkers read __all__ only as a literal list (tests/test_public_api.py
# checks that it, _EXPORTS and the imports for type checkers below name the same things).
__all__ = [
    "AdapterError",
    "BufferPolicy",
    "CameraSource",
    "CheckpointError",
    "Client",
    "ConfigError",
    "Decision",
    "DroppedCallback",
    "EncodedMasks",
    "Entry",
    "EoMT",
    "EoMTConfig",
    "EoMTSegmenter",
    "Event",
    "EventEntry",
    "FamilyAdapter",
    "FamilyBuilder",
    "FileSource",
    "Frame",
    "FrameError",
    "FrameResult",
    "FrameStage",
    "IdleTimeout",
    "ImageFolderSource",
    "InputGeometry",
    "LabelSet",
    "Level",
    "NO_TRACK",
    "PRESETS",
    "PipelineConfig",
    "Prepared",
    "Preset",
    "ReaderError",
    "ResourceLimit",
    "ResultFeed",
    "RunReport",
    "Runtime",
    "ScaledLabelMap",
    "SeNaTra",
    "SeNaTraConfig",
    "SeNaTraSegmenter",
    "SegmentFilter",
    "Segments",
    "SegstreamError",
    "Sink",
    "SinkError",
    "SourceError",
    "StageError",
    "StageFactory",
    "StreamReader",
    "StreamSource",
    "SyntheticSource",
    "VideoSource",
    "WireFormatError",
    "WrittenCallback",
    "build_runtime",
    "build_segmenter",
    "connect",
    "draw_overlay",
    "from_wire",
    "load_config",
    "load_plugins",
    "register_family",
    "register_preset",
    "results",
    "run_pipeline",
    "segment_frames",
    "to_wire",
    "__version__",
]

if TYPE_CHECKING:  # listed in the literal __all__ above: re-exported, for mypy --strict and pyright too
    from segstream.connectors.errors import (
        AdapterError,
        CheckpointError,
        ConfigError,
        FrameError,
        IdleTimeout,
        ReaderError,
        ResourceLimit,
        SegstreamError,
        SinkError,
        SourceError,
        StageError,
        WireFormatError,
    )
    from segstream.connectors.camera_source import CameraSource
    from segstream.connectors.file_source import FileSource
    from segstream.connectors.frames import Frame
    from segstream.connectors.image_source import ImageFolderSource
    from segstream.connectors.overlay import draw_overlay
    from segstream.connectors.redis_reader import Client, Entry, EventEntry, StreamReader, connect
    from segstream.connectors.redis_wire import EncodedMasks, from_wire, to_wire
    from segstream.connectors.sink import DroppedCallback, Sink, WrittenCallback
    from segstream.connectors.source import VideoSource
    from segstream.connectors.stream_source import StreamSource
    from segstream.connectors.synthetic import SyntheticSource
    from segstream.models.eomt import EoMT, EoMTConfig
    from segstream.models.label_sets import LabelSet
    from segstream.models.presets import PRESETS, Preset, register_preset
    from segstream.models.processing import Decision, InputGeometry
    from segstream.models.results import NO_TRACK, Event, FrameResult, Level, ScaledLabelMap, Segments
    from segstream.models.segment_filter import SegmentFilter
    from segstream.models.segmenter import EoMTSegmenter, FamilyAdapter, Prepared, segment_frames
    from segstream.models.senatra import SeNaTra, SeNaTraConfig
    from segstream.models.senatra_adapter import SeNaTraSegmenter
    from segstream.pipeline.cli import build_runtime, run_pipeline
    from segstream.pipeline.config import PipelineConfig, load_config
    from segstream.pipeline.engine import BufferPolicy
    from segstream.pipeline.model_factory import FamilyBuilder, build_segmenter, register_family
    from segstream.pipeline.plugins import load_plugins
    from segstream.pipeline.result_feed import ResultFeed, results
    from segstream.pipeline.runtime import FrameStage, RunReport, Runtime, StageFactory


if not TYPE_CHECKING:  # for a type checker an unknown name (segstream.NotAThing) must stay an error, not Any

    def __getattr__(name: str) -> Any:
        module = _EXPORTS.get(name)
        if module is None:
            raise AttributeError(f"module 'segstream' has no attribute {name!r}")
        try:
            imported = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name is not None and error.name.split(".")[0] in ("segstream", "torch", "torchvision", "av"):
                # The consumer-only distribution (segstream-client) has segstream.client and the wire format.
                raise ImportError(
                    f"segstream.{name} needs the full segstream distribution (not on PyPI: pip install a checkout "
                    f"of the repository, as README.md says); this installation lacks {error.name}"
                ) from None
            raise
        value = getattr(imported, name)
        globals()[name] = value
        return value

    def _installed(module: str) -> bool:
        """Whether ``module`` is in this installation (segstream-client has only the torch-free ones),
        found without importing it."""
        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # its package is not there
            return False

    # What loads here: so that `from segstream import *` and help(segstream) work in a segstream-client install.
    __all__ = [name for name in __all__ if name not in _EXPORTS or _installed(_EXPORTS[name])]

    def __dir__() -> list[str]:
        return __all__
