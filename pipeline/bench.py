"""``segstream bench``: the network alone, the pipeline, and a naive loop, measured in one run.

- network: the model's forward on one prepared batch of ``engine.batch_size`` frames of the
  first source, repeated; no decoding, pre- or post-processing. Measured both as one thread with
  every core (or ``engine.threads`` intra-op threads when set) and, where the pipeline runs
  several model workers, in the pipeline's own layout (workers x intra-op threads, in parallel);
  the faster is the network's rate.
- pipeline: the configured run (every source, ``--sources N`` copies of the first), from the
  first decoded frame to the last published entry, after the model's warm-up.
- naive: decode, pre-process + network + post-process, publish, one frame after another, with
  the same sinks; the faster of every core (or ``engine.threads``) and one intra-op thread.

Ratios compare the three at the same batch size on the same machine in the same process, so
they are meaningful where absolute numbers are not.
"""

from __future__ import annotations

import itertools
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from segstream.connectors.errors import ConfigError
from segstream.connectors.threads import NamedThread
from segstream.pipeline.config import PipelineConfig


def replicate(cfg: PipelineConfig, copies: int, frames: int | None) -> PipelineConfig:
    """``copies`` copies of the first source (renamed), each looping so it lasts ``frames``."""
    first = cfg.sources[0]
    sources = list(cfg.sources) if copies <= 1 else [
        first.model_copy(update={"name": f"{first.name}-{i}"}) for i in range(copies)
    ]
    if frames is not None:
        sources = [s.model_copy(update={"loop": True}) if s.type == "file" else s for s in sources]
    stages = cfg.stages if copies <= 1 else first_source_stages(cfg)
    return cfg.model_copy(update={"sources": sources, "stages": stages})


def bench_outputs(cfg: PipelineConfig, scratch: Path) -> PipelineConfig:
    """``cfg`` writing what the bench publishes beside the run's own outputs, never into them:
    Redis streams named ``bench-<source>`` where ``<source>`` was (the same key prefix, so the
    same ACL), files and previews in ``scratch``. The sinks' costs are measured all the same."""
    sinks = cfg.sinks
    redis = sinks.redis.model_copy(update={key: getattr(sinks.redis, key).replace("{source}", "bench-{source}")
                                           for key in ("stream", "events_stream")})
    # a sink left off keeps its settings as written: a folder given it would be warned of as unused
    files = sinks.files.model_copy(update={"dir": str(scratch / "files")}) if sinks.files.enabled else sinks.files
    preview = (sinks.preview.model_copy(update={"dir": str(scratch / "preview")}) if sinks.preview.enabled
               else sinks.preview)
    return cfg.model_copy(update={"sinks": sinks.model_copy(update={"redis": redis, "files": files,
                                                                      "preview": preview})})


def first_source_stages(cfg: PipelineConfig) -> list:
    """The config's stages that run on its first source, for every source (its copies, the naive loop's)."""
    first = cfg.sources[0].name
    return [s.model_copy(update={"sources": None}) for s in cfg.stages if s.sources is None or first in s.sources]


def _first_frames(cfg: PipelineConfig, count: int) -> list:
    from segstream.pipeline.builders import build_sources

    (source,) = build_sources([cfg.sources[0].model_copy(update={"realtime": False, "loop": True})])
    frames = []
    try:
        for frame in source.frames():
            frames.append(frame)
            if len(frames) == count:
                break
    finally:
        source.close()
    if not frames:
        raise ConfigError(f"sources[0] ({cfg.sources[0].name}) gave no frame to benchmark with")
    return frames


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def network_fps(adapter, frames: list, seconds: float = 3.0, workers: int = 1) -> float:
    """Frames per second of the network alone on one prepared batch, repeated for ``seconds`` by
    each of ``workers`` threads at once (each with torch's current intra-op thread count)."""
    from segstream.models.segmenter import upload

    with torch.inference_mode():
        prepared = adapter.prepare([upload(f.image, adapter.device) for f in frames])
        for _ in range(3):
            adapter.forward(prepared)
        _sync(adapter.device)
    runs = [0] * workers
    errors: list[BaseException] = []

    def repeat(worker: int) -> None:
        try:
            with torch.inference_mode():
                while time.perf_counter() - start < seconds or runs[worker] < 5:
                    adapter.forward(prepared)
                    runs[worker] += 1
                    if runs[worker] % 4 == 0:
                        _sync(adapter.device)
                _sync(adapter.device)
        except BaseException as error:  # surfaced by the caller's thread
            errors.append(error)

    # One worker runs in this thread: compiled CUDA graphs belong to the thread that warmed them.
    threads = [NamedThread(target=repeat, args=(i,), name=f"segstream-bench-{i}") for i in range(1, workers)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    repeat(0)
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(runs) * len(frames) / elapsed


def naive_fps(cfg: PipelineConfig, adapter, frame_count: int) -> float:
    """Decode, segment, filter, track and publish one frame after another, on the intra-op threads torch
    has (``run_bench`` tries every core, or ``engine.threads``, and one); frames per second from the
    first frame on (opening the source is not timed)."""
    from segstream.pipeline.builders import build_sinks, build_sources
    from segstream.pipeline.tracking import tracking_stages

    (source,) = build_sources([cfg.sources[0].model_copy(update={"realtime": False, "loop": True, "name": "naive"})])
    from segstream.pipeline.own_parts import build_stages

    from segstream.pipeline.filtering import filter_settings
    from segstream.models.segment_filter import SegmentFilter

    named = build_stages(first_source_stages(cfg), ["naive"])
    stages = [factory("naive") for factory in [*tracking_stages(cfg.tracking), *named]]
    # the first source's filters, as the engine applies them before its stages
    settings = filter_settings(cfg.filters_of(cfg.sources[0].name), adapter.labels)
    segment_filter = SegmentFilter(settings) if settings.active else None
    sinks = build_sinks(cfg.sinks, tell_unused=False)  # (said once, by the pipeline's)
    drawn = any(getattr(sink, "wants_images", False) for sink in sinks)  # a preview draws on the frame
    done = 0
    try:
        frames = source.frames()
        first = next(frames)
        start = time.perf_counter()
        for frame in itertools.chain([first], frames):
            (result,) = adapter.segment([frame.image])
            result.source, result.index, result.capture_ts = frame.source, frame.index, frame.capture_wall
            result.pts, result.time_base, result.pts_seconds = frame.pts, frame.time_base, frame.pts_seconds
            if segment_filter is not None:
                segment_filter.apply(result)
            for stage in stages:
                result = stage.process(result)
            if drawn:
                result.image, result.sample_aspect = frame.image, frame.sample_aspect
            for sink in sinks:
                sink.publish(result)
                sink.flush()
            done += 1
            if done == frame_count:
                break
        elapsed = time.perf_counter() - start
    finally:
        source.close()
        for sink in sinks:
            sink.close()
    return done / elapsed


def run_bench(
    cfg: PipelineConfig, sources: int = 1, frames: int | None = None, naive_frames: int = 100,
    network_seconds: float = 3.0,
) -> dict[str, Any]:
    """All three measurements and their ratios, as a dict (``--json`` prints it)."""
    from segstream.pipeline.builders import build_sinks, build_sources
    from segstream.pipeline.cli import WARM_UP_FRAME
    from segstream.pipeline.engine import engine_layout, usable_cores
    from segstream.pipeline.metrics import RunMetrics
    from segstream.pipeline.model_factory import build_segmenter
    from segstream.pipeline.runtime import Runtime

    adapter = build_segmenter(cfg.model, batch_size=cfg.engine.batch_size)
    device = adapter.device
    batch = _first_frames(cfg, cfg.engine.batch_size)
    # The network alone gets the whole machine: every core (unless engine.threads says) for one thread,
    # and, where the pipeline runs several model workers, the pipeline's layout too; the faster
    # of the two is what the pipeline is held against.
    cores = usable_cores()  # the affinity and cgroup quota's, not the machine's
    layout = engine_layout(device, cores, compiled=bool(adapter.batch_buckets),
                           workers=cfg.engine.model_workers, threads=cfg.engine.threads)
    torch.set_num_threads(cfg.engine.threads or cores)
    layouts = {f"1x{torch.get_num_threads()}": network_fps(adapter, batch, network_seconds)}
    if layout.workers > 1:
        torch.set_num_threads(layout.threads)
        layouts[f"{layout.workers}x{layout.threads}"] = network_fps(adapter, batch, network_seconds, layout.workers)
    network_layout, network = max(layouts.items(), key=lambda item: item[1])

    run_cfg = replicate(cfg, sources, frames)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    metrics = RunMetrics()
    sinks = build_sinks(run_cfg.sinks)
    runtime = Runtime.from_config(
        run_cfg, build_sources(run_cfg.sources), adapter, sinks, max_frames=frames, metrics=metrics,
        warm_up=WARM_UP_FRAME, progress=None,
    )
    utilisation = _GpuUtilisation(device)
    with utilisation:
        report = runtime.run()
    pipeline = report.published / metrics.streaming_s if metrics.streaming_s else 0.0
    pipeline_threads = runtime.threads  # torch's intra-op threads while the pipeline ran
    # the naive loop's best too: on every core (the network alone's first layout) and, with several,
    # on one (where other work shares the cores, threads that wait on each other lose most)
    naive, naive_threads = 0.0, 1
    try:
        for threads in dict.fromkeys([cfg.engine.threads or cores, 1]):
            torch.set_num_threads(threads)
            if (fps := naive_fps(cfg, adapter, naive_frames)) > naive:
                naive, naive_threads = fps, threads
    finally:
        torch.set_num_threads(pipeline_threads)
    result: dict[str, Any] = {
        "model": adapter.name,
        "device": str(device),
        "precision": getattr(adapter, "precision", None),
        "postprocess": getattr(adapter, "postprocess", None),
        "batch_size": cfg.engine.batch_size,
        "network_layout": network_layout,
        "network_layouts_fps": layouts,
        "model_workers": runtime.model_workers,
        "threads": pipeline_threads,  # torch's intra-op threads in each model worker
        "naive_threads": naive_threads,
        "sources": len(run_cfg.sources),
        "frames": report.published,
        "dropped": report.dropped,
        "fps": {"network": network, "pipeline": pipeline, "naive": naive},
        "ratio": {
            "pipeline_vs_network": pipeline / network if network else math.nan,
            "pipeline_vs_naive": pipeline / naive if naive else math.nan,
        },
        "capture_to_publish_ms": {"p50": report.latency_ms_p50, "p99": report.latency_ms_p99},
        "capture_to_publish_ms_per_source": report.source_latency,
        "stages_ms": report.stages,
        "mean_batch": report.model_frames / report.batches if report.batches else 0.0,
        "warm_up_s": runtime.warm_up_s,
        # the whole process so far: model, all three measurements
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.type == "cuda":
        result["gpu"] = {
            "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20,
            "utilisation_percent": utilisation.mean,
        }
    return result


class _GpuUtilisation:
    """Mean GPU utilisation (NVML, through torch) sampled every 0.2 s while the block runs;
    None when the device is no GPU or NVML is missing."""

    def __init__(self, device: torch.device):
        self.device = device
        self.samples: list[float] = []
        self.mean: float | None = None

    def __enter__(self):
        import threading

        self._stop = threading.Event()
        self._thread = None
        if self.device.type == "cuda":
            try:
                torch.cuda.utilization(self.device)
            except Exception:  # NVML (pynvml) is optional
                return self
            self._thread = NamedThread(target=self._sample, name="segstream-gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append(float(torch.cuda.utilization(self.device)))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.samples:
            self.mean = sum(self.samples) / len(self.samples)


def print_bench(result: dict[str, Any], out=None) -> None:
    from segstream.pipeline.model_factory import how_it_ran

    out = out or sys.stdout
    fps, ratio = result["fps"], result["ratio"]
    print(
        f"model {result['model']} on {result['device']}{how_it_ran(result['precision'], result['postprocess'])}, batch {result['batch_size']}, "
        f"pipeline {result['model_workers']} model worker(s) x {result['threads']} thread(s), {result['sources']} source(s), {result['frames']} frames, "
        f"{result['dropped']} dropped",
        file=out,
    )
    layouts = ", ".join(f"{name} {value:.1f} fps" for name, value in result["network_layouts_fps"].items())
    print(f"  network alone  {fps['network']:8.1f} fps   best of workers x threads: {layouts}", file=out)
    print(f"  pipeline       {fps['pipeline']:8.1f} fps   {ratio['pipeline_vs_network']:.2f}x the network", file=out)
    print(f"  naive loop     {fps['naive']:8.1f} fps   pipeline is {ratio['pipeline_vs_naive']:.2f}x this "
          f"(decode, model, post-process, track, publish; {result['naive_threads']} thread(s))", file=out)
    print(f"  mean batch {result['mean_batch']:.1f}, warm-up {result['warm_up_s']:.1f} s, "
          f"peak RSS {result['peak_rss_mib']:.0f} MiB", file=out)
    print(f"  {'stage':20}{'p50 ms':>10}{'p99 ms':>10}   (each: time from the stage before it)", file=out)
    for name, row in result["stages_ms"].items():
        print(f"  {name:20}{row['p50_ms']:10.1f}{row['p99_ms']:10.1f}", file=out)
    per_source = result["capture_to_publish_ms_per_source"]
    if len(per_source) > 1:  # a real-time claim holds for every camera, not for their mixture
        order = sorted(per_source, key=lambda name: per_source[name]["p99_ms"])
        best, worst = order[0], order[-1]
        print(f"  capture to publish p99 per source: worst {per_source[worst]['p99_ms']:.1f} ms ({worst}), "
              f"best {per_source[best]['p99_ms']:.1f} ms ({best})", file=out)
    if "gpu" in result:
        gpu = result["gpu"]
        util = "n/a" if gpu["utilisation_percent"] is None else f"{gpu['utilisation_percent']:.0f}%"
        print(f"  GPU peak memory {gpu['peak_memory_mib']:.0f} MiB, utilisation {util}", file=out)


def main_bench(args) -> int:
    from segstream.pipeline.config import load_checked_config

    if args.sources < 1:
        raise ConfigError(f"--sources must be at least 1, got {args.sources}")
    if args.frames is not None and args.frames < 1:
        raise ConfigError(f"--frames must be a positive number, got {args.frames}")
    if args.naive_frames < 1:  # the naive loop's source loops: it stops at this count, or never
        raise ConfigError(f"--naive-frames must be at least 1, got {args.naive_frames}")
    if not (args.network_seconds > 0 and math.isfinite(args.network_seconds)):
        raise ConfigError(f"--network-seconds must be a number of seconds above 0, got {args.network_seconds}")
    cfg = load_checked_config(args.config, args.overrides)
    with tempfile.TemporaryDirectory(prefix="segstream-bench-") as scratch:
        result = run_bench(bench_outputs(cfg, Path(scratch)), sources=args.sources, frames=args.frames,
                           naive_frames=args.naive_frames, network_seconds=args.network_seconds)
    if args.json:
        print(json.dumps(result))
    else:
        print_bench(result)
    return 0

