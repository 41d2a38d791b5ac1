"""Sources and sinks from their config sections, found by registries keyed by ``type``
(sources) and by section name (sinks). A new source type adds its config model in
``segstream.pipeline.config`` and its builder here."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from segstream.connectors.errors import SegstreamError
from segstream.connectors.sink import Sink
from segstream.connectors.source import VideoSource
from segstream.pipeline.config import (
    CameraSourceConfig,
    CustomSourceConfig,
    FileSourceConfig,
    ImagesSourceConfig,
    SinksConfig,
    SnapshotSourceConfig,
    SourceConfig,
    StreamSourceConfig,
    SyntheticSourceConfig,
)

log = logging.getLogger("segstream.sinks")


def _file_source(cfg: FileSourceConfig) -> VideoSource:
    from segstream.connectors.file_source import FileSource

    return FileSource(
        cfg.name,
        cfg.path,
        realtime=cfg.realtime,
        loop=cfg.loop,
        max_frames=cfg.max_frames,
        open_timeout_s=cfg.open_timeout_s,
        read_timeout_s=cfg.read_timeout_s,
        max_fps=cfg.max_fps,
        deinterlace=cfg.deinterlace,
    )


def _synthetic_source(cfg: SyntheticSourceConfig) -> VideoSource:
    from segstream.connectors.synthetic import SyntheticSource

    return SyntheticSource(cfg.name, cfg.width, cfg.height, cfg.fps, cfg.seed, cfg.num_frames, cfg.realtime,
                           max_fps=cfg.max_fps)


def _reconnect_policy(cfg: StreamSourceConfig | CameraSourceConfig):
    from segstream.connectors.live_source import ReconnectPolicy

    return ReconnectPolicy(
        open_timeout_s=cfg.open_timeout_s,
        read_timeout_s=cfg.read_timeout_s,
        stall_timeout_s=cfg.stall_timeout_s,
        max_reconnects=cfg.max_reconnects,
        delay_s=cfg.reconnect_delay_s,
        max_delay_s=cfg.reconnect_max_delay_s,
        wait_for_input=cfg.wait_for_input,
    )


def _stream_source(cfg: StreamSourceConfig) -> VideoSource:
    from segstream.connectors.stream_source import StreamSource

    return StreamSource(
        cfg.name,
        cfg.url,
        transport=cfg.transport,
        policy=_reconnect_policy(cfg),
        low_latency=cfg.low_latency,
        options=cfg.options,
        max_fps=cfg.max_fps,
        max_behind_s=cfg.max_behind_s,
        deinterlace=cfg.deinterlace,
    )


def _camera_source(cfg: CameraSourceConfig) -> VideoSource:
    from segstream.connectors.camera_source import CameraSource

    return CameraSource(
        cfg.name,
        cfg.device,
        width=cfg.width,
        height=cfg.height,
        fps=cfg.fps,
        pixel_format=cfg.pixel_format,
        policy=_reconnect_policy(cfg),
        backend=cfg.backend,
        max_fps=cfg.max_fps,
        deinterlace=cfg.deinterlace,
    )


def _snapshot_source(cfg: SnapshotSourceConfig) -> VideoSource:
    from segstream.connectors.live_source import ReconnectPolicy
    from segstream.connectors.snapshot_source import SnapshotSource

    return SnapshotSource(
        cfg.name,
        cfg.url,
        username=cfg.username,
        password=cfg.password,
        interval_s=cfg.interval_s,
        timeout_s=cfg.timeout_s,
        policy=ReconnectPolicy(max_reconnects=cfg.max_reconnects, delay_s=cfg.reconnect_delay_s,
                               max_delay_s=cfg.reconnect_max_delay_s, wait_for_input=cfg.wait_for_input),
        tls_verify=cfg.tls_verify,
        ca_file=cfg.ca_file,
        max_fps=cfg.max_fps,
    )


def _images_source(cfg: ImagesSourceConfig) -> VideoSource:
    from segstream.connectors.image_source import ImageFolderSource

    return ImageFolderSource(
        cfg.name, cfg.path, fps=cfg.fps, loop=cfg.loop, realtime=cfg.realtime, max_frames=cfg.max_frames,
        max_fps=cfg.max_fps, timestamps=cfg.timestamps, timestamp_format=cfg.timestamp_format,
        timestamp_zone=cfg.timestamp_zone, watch=cfg.watch, watch_from=cfg.watch_from, poll_s=cfg.poll_s,
        settle_s=cfg.settle_s,
        bit_depth=cfg.bit_depth, empty_settle_s=cfg.empty_settle_s,
    )


# Stream, camera and snapshot sources open in their own threads once the run starts (never here):
# a camera that does not answer must not hold up the others, nor Ctrl-C.
def _custom_source(cfg: CustomSourceConfig) -> VideoSource:
    from segstream.pipeline.own_parts import build_source as build_own

    return build_own(cfg)


SOURCE_BUILDERS: dict[str, Callable[..., VideoSource]] = {
    "file": _file_source,
    "stream": _stream_source,
    "camera": _camera_source,
    "snapshot": _snapshot_source,
    "images": _images_source,
    "synthetic": _synthetic_source,
    "custom": _custom_source,
}


def build_source(cfg: SourceConfig) -> VideoSource:
    """Open one configured source (a ``SegstreamError`` when it cannot be)."""
    return SOURCE_BUILDERS[cfg.type](cfg)


def build_sources(configs: Iterable[SourceConfig]) -> list[VideoSource]:
    """Open every configured source. One that cannot be opened (a missing or unreadable file)
    fails alone when it is not ``required`` and others remain: it becomes a source that fails
    when the run starts, so the run goes on with the others and reports it. Otherwise the error
    is raised at once, and the sources already open are closed again."""
    configs = list(configs)
    sources: list[VideoSource] = []
    try:
        for cfg in configs:
            try:
                sources.append(build_source(cfg))
            except SegstreamError as error:
                if cfg.required or len(configs) == 1:
                    raise
                sources.append(_Unopened(cfg.name, error))
        if sources and all(isinstance(source, _Unopened) for source in sources):
            raise sources[0].error  # nothing would run: the first reason, as for one source
    except BaseException:
        for source in sources:
            source.close()
        raise
    return sources


class _Unopened:
    """A source that could not be opened: its ``frames()`` raises why, so the runtime marks it
    failed (logged, counted, a ``failed`` event, a non-zero exit) while the others run."""

    live = False

    def __init__(self, name: str, error: SegstreamError):
        self.name = name
        self.error = error

    def frames(self):
        raise self.error
        yield  # a generator, as every source's frames()

    def close(self) -> None:
        """Nothing was opened."""


def _redis_sink(cfg: SinksConfig, embedded_dir: Path | None, run_id: str = "", stopping=lambda: False,
                sources: Sequence[str] = ()) -> Sink:
    from segstream.connectors.redis_sink import RedisPublisher

    redis = cfg.redis
    return RedisPublisher.from_config(
        redis.url,
        **redis.login(),
        max_backlog=redis.max_backlog,
        max_backlog_bytes=int(redis.max_backlog_mb * 2**20),
        reconnect_max_s=redis.reconnect_max_s,
        drain_timeout_s=redis.drain_timeout_s,
        timeout_s=redis.timeout_s,
        start_wait_s=redis.start_wait_s,
        stopping=stopping,
        stream_pattern=redis.stream,
        maxlen=redis.maxlen,
        max_age_s=redis.max_age_s,
        mask_encoding=redis.mask_encoding,
        levels=redis.levels,
        pipeline_size=redis.pipeline_size,
        files_kept=cfg.files.enabled,
        max_batch_delay_s=redis.max_batch_delay_ms / 1000,
        events_pattern=redis.events_stream,
        status_pattern=redis.status_key,
        status_ttl_s=redis.status_ttl_s,
        embedded_dir=embedded_dir,
        run_id=run_id,
        sources=sources,
        background=True,  # the run's publishing thread goes on while a batch is on its way
    )


def _files_sink(cfg: SinksConfig, embedded_dir: Path | None, sources: Sequence[str] = ()) -> Sink:
    from segstream.connectors.files_sink import FilesSink

    return FilesSink(cfg.files.dir, cfg.redis.mask_encoding, sources=sources, levels=cfg.redis.levels)


def _preview_sink(cfg: SinksConfig, embedded_dir: Path | None) -> Sink:
    from segstream.connectors.preview_sink import PreviewSink

    return PreviewSink(cfg.preview.dir, cfg.preview.format, cfg.preview.opacity, cfg.preview.keep_runs,
                       cfg.preview.level, cfg.preview.max_width)


# In publishing order: the first enabled sink's writes are the run's publish times.
SINK_BUILDERS: dict[str, Callable[[SinksConfig, Path | None], Sink]] = {
    "redis": _redis_sink, "files": _files_sink, "preview": _preview_sink,
}


def unused_sink_folders(cfg: SinksConfig) -> list[str]:
    """A line for each sink given a folder and left off: nothing would be written there."""
    return [f"sinks.{section}.dir is set but sinks.{section}.enabled is not true: nothing is written there — set "
            f"sinks.{section}.enabled: true" for section in ("files", "preview")
            if not getattr(cfg, section).enabled and "dir" in getattr(cfg, section).model_fields_set]


def build_sinks(cfg: SinksConfig, embedded_dir: Path | None = None, run_id: str = "",
                stopping=lambda: False, sources: Sequence[str] = (), tell_unused: bool = True) -> list[Sink]:
    """The enabled sinks, then the ``custom`` ones. ``embedded_dir`` holds the data of an embedded Redis (``url: null``);
    None means a temporary directory. ``run_id`` names the Redis connection (CLIENT LIST).
    ``stopping()`` true ends a wait for Redis (``start_wait_s``) early. ``sources``: the run's
    source names, whose output files are taken now (one run per file: another run's is refused
    here, before any sink publishes). ``tell_unused``: warn of a folder given to a sink left off
    (a batch says it once, not in each of its groups and Ray tasks)."""
    sinks: list[Sink] = []
    for line in unused_sink_folders(cfg) if tell_unused else ():
        log.warning(line)
    try:
        for section, builder in SINK_BUILDERS.items():
            if getattr(cfg, section).enabled:
                if builder is _redis_sink:
                    sinks.append(_redis_sink(cfg, embedded_dir, run_id, stopping, sources))
                elif builder is _files_sink:
                    sinks.append(_files_sink(cfg, embedded_dir, sources))
                else:
                    sinks.append(builder(cfg, embedded_dir))
        if cfg.custom:
            from segstream.pipeline.own_parts import build_sinks as build_custom_sinks

            sinks += build_custom_sinks(cfg.custom)
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks
