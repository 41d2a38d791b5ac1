"""``segstream batch --engine ray``: the same videos and outputs as the local engine, on Ray.

    driver ──► one task per video (CPU: decode, per-video outputs, commit) ──► model actors
                at most ``videos_in_flight``    at most 2 batches waiting       (one per GPU, or
                at once                         per video: back-pressure          per CPU slot)

Each video is a Ray task that decodes the file, sends batches of frames to a model actor
(round-robin by video) with at most two batches outstanding, and writes the results with the
same ``VideoOutputs`` as the local engine, so the files are byte for byte the same. The task
moves its folder into place only when the video is complete; if its worker dies, Ray runs the
task again (``batch.ray.retries``) from the start, in a fresh ``.partial`` folder, and the
driver records the video in the manifest once, when a task returns. The output folder must be
one path that every node can write (a shared filesystem), and every node needs segstream.

Ray is an optional extra: ``pip install -e ".[ray]"`` in the checkout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from segstream.connectors.errors import ConfigError, SegstreamError
from segstream.connectors.sink import SINK_DROPS
from segstream.models.results import Event
from segstream.pipeline import entry
from segstream.pipeline.batch import (
    BatchControl,
    BatchProgress,
    Manifest,
    RedisMarks,
    REDIS_MARKS,
    VideoJob,
    VideoOutcome,
    _extra_sinks,
    cut_back,
    judge,
    lost_after_taking,
    manifest_runs,
    undelivered_reason,
)
from segstream.pipeline.config import BatchPipelineConfig, PipelineConfig
from segstream.pipeline.filtering import filter_settings
from segstream.pipeline.logs import JsonLines, adopt_library_logs, configure_logging, json_logging, log_settings
from segstream.pipeline.metrics import RunMetrics, SourceCounts
from segstream.pipeline.source_states import SourceStates, first_frame

log = logging.getLogger(__name__)

BATCHES_IN_FLIGHT = 2  # per video: one being segmented, one waiting, while the task decodes the next
_POLL_S = 0.5
_TERMINAL_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # Ray colours the task's name in its errors


def ray_failure(error: BaseException) -> str:
    """One line on why a Ray task failed: the exception inside it (the task's own, or the one a
    task's ``ray.get`` met: the object store full, a worker that crashed) with its message, in
    place of Ray's header (``ray::process_video() (pid=..., ip=...)``) and its colour codes."""
    inner = error
    while getattr(inner, "cause", None) is not None and inner.cause is not inner:
        inner = inner.cause
    lines = [line.strip() for line in _TERMINAL_CODES.sub("", str(inner)).splitlines()
             if line.strip() and not line.strip().startswith(("ray::", "File \"", "Traceback"))]
    if type(inner).__name__.startswith("RayTaskError"):  # no cause kept: its text ends in the exception's line
        return lines[-1] if lines else "RayTaskError"
    name = type(inner).__name__
    return f"{name}: {lines[0]}" if lines else name


def _one_line(error: BaseException) -> str:
    """Ray's message on one line: its version mismatch is five ("The cluster was started with:\n
    Ray: 2.54.0 ..."; found probing two machines), said as ``... started with Ray: 2.54.0; Python:
    3.11.7; This process ... Ray: 2.60.0; ...`` with what to do."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = "; ".join(lines).replace(":;", ":").replace("with:", "with")
    if "Version mismatch" in text:
        text += " — install the cluster's Ray and Python versions here (pip install ray==<its version>), or start " \
                "the cluster with this machine's"
    return text


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray, which is not installed here — pip install ray (segstream's ray extra), or choose --engine local") from None
    return ray


class ModelActor:
    """One replica of the model (a Ray actor): segments batches of frames in order."""

    def __init__(self, model_json: str, batch_size: int, logs: tuple[str, str] | None = None):
        from segstream.pipeline.config import ModelConfig
        from segstream.pipeline.engine import ModelStage
        from segstream.pipeline.model_factory import build_segmenter

        if logs is not None:
            configure_logging(*logs)
        from pydantic import ValidationError

        try:  # (its node's view: a checkpoint at a path only the driver has; found probing two machines)
            model_cfg = ModelConfig.model_validate_json(model_json)
        except ValidationError as error:
            problem = error.errors()[0]
            raise ConfigError(f"model.{'.'.join(map(str, problem['loc']))} on Ray node {_node()}: "
                              f"{problem['msg'].removeprefix('Value error, ')}") from None
        self.adapter = build_segmenter(model_cfg, batch_size=batch_size)
        self.stage = ModelStage(self.adapter, max_inflight=1)

    def labels(self):
        return self.adapter.labels

    def geometry(self):
        return self.adapter.geometry

    def segment(self, frames):
        for frame in frames:  # arrays from Ray's object store are read-only; torch wants its own
            frame.image = np.array(frame.image)
        return self.stage.collect(self.stage.submit(frames))


class ProgressBoard:
    """Frames done per video, reported by the video tasks and collected by the driver; and whether
    a video's task may begin: once the driver has said ``stop`` (a first Ctrl-C), one that had not
    begun returns at once, stopped, where it would have been run to its end."""

    def __init__(self):
        self.counts: dict[str, int] = {}
        self.stopping = False

    def begin(self, video_id: str) -> bool:
        if not self.stopping:
            self.counts.setdefault(video_id, 0)
        return not self.stopping

    def stop(self) -> None:
        self.stopping = True

    def add(self, video_id: str, frames: int) -> None:
        self.counts[video_id] = self.counts.get(video_id, 0) + frames

    def take(self) -> dict[str, int]:
        counts, self.counts = self.counts, {}
        return counts


def process_video(job: VideoJob, cfg_json: str, root: str, actor, labels, board, geometry=None,
                  run_id: str = "", mark: dict[str, str] | None = None, logs: tuple[str, str] | None = None) -> dict:
    """A Ray task: every frame of one video through ``actor`` into its outputs; returns what
    became of it (a video that cannot be decoded is a result, not an exception: it is not
    retried). With ``geometry`` (the model's ``InputGeometry``) frames are converted at the
    model's input size (``engine.resize_in_decoder``). With ``mark`` (where its Redis streams
    ended before the batch began it) it first deletes what an attempt that died published.
    ``logs``: the driver's log format and level (``logs.log_settings``), for this worker's lines."""
    import ray

    if logs is not None:
        configure_logging(*logs)

    from segstream.connectors.file_source import FileSource
    from segstream.connectors.video_outputs import VideoOutputs
    from segstream.pipeline.filtering import segment_filters
    from segstream.pipeline.runtime import _weights_made_by
    from segstream.pipeline.tracking import tracking_stages

    cfg = BatchPipelineConfig.model_validate_json(cfg_json)
    # the weights' short SHA-256 on every entry, as the local engine's (hashed once a worker process)
    checkpoint_id = (_weights_made_by(cfg).get("checkpoint_sha256") or "")[:12]
    batch_cfg = cfg.batch
    started = time.monotonic()
    outputs = sinks = source = None
    status, reason = "done", ""
    stages: list = []
    undelivered = ""

    def to_sinks(event: Event) -> None:  # states go to the sinks that stream, not into the files
        event.run_id = run_id
        for sink in sinks or ():
            sink.publish_event(event)

    states = SourceStates(RunMetrics(), to_sinks)  # the local engine's states, in its format

    def publish_state(state: str, why: str, data: dict | None = None) -> None:
        states.enter(job.id, state, why, data, quiet=True)

    decoded = 0

    def final_counts() -> dict:
        """What the local engine's final state event says of the video's frames (SCHEMA, frames)."""
        errors = getattr(source, "decode_errors", 0) if source is not None else 0
        counts = SourceCounts(decoded=decoded, published=outputs.frames if outputs else 0, decode_errors=errors,
                              dropped_by=Counter(decode_error=errors) if errors else Counter())
        return {"frames": counts.outcome()}

    try:  # a first Ctrl-C stops the videos not begun (a board lost with its node: it begins)
        if not ray.get(board.begin.remote(job.id), timeout=30):
            return {"status": "stopped", "node": _node()}
    except ray.exceptions.RayError:
        pass
    try:
        sinks = _extra_sinks(cfg)  # first: a video that cannot be opened says so on its events stream
        _cut_back(sinks, job.id, mark, run_id)
        publish_state("connecting", "starting")
        source = FileSource(job.id, job.source, open_timeout_s=batch_cfg.open_timeout_s,
                            read_timeout_s=batch_cfg.read_timeout_s, max_fps=batch_cfg.max_fps,
                            deinterlace=batch_cfg.deinterlace)
        source.shown = job.key  # what its messages name a URL by: not even its query's keys
        if geometry is not None:
            source.decode_size = geometry.scale
        outputs = VideoOutputs(
            root, job.id, labels, jsonl=batch_cfg.jsonl, coco_panoptic=batch_cfg.coco_panoptic,
            coco_images=batch_cfg.coco_images, overlay=batch_cfg.overlay, overlay_level=batch_cfg.overlay_level,
            number=job.number,
            mask_encoding=cfg.sinks.redis.mask_encoding, levels=cfg.sinks.redis.levels,
            video_name=job.name, video=job.key, fps_hint=job.fps,
        )
        images = outputs.wants_images or any(getattr(s, "wants_images", False) for s in sinks)
        pending: deque = deque()
        # The same per-source stages (the tracker) as the local engine, so the outputs are the same.
        stages = [factory(job.id) for factory in tracking_stages(cfg.tracking)]
        segment_filter = segment_filters(cfg, labels, [job.id]).get(job.id)  # and the same filters before it

        def write_events(events) -> None:
            for event in events:
                event.run_id = run_id
                outputs.write_event(event)
                for sink in sinks:
                    sink.publish_event(event)

        def write(ref) -> None:
            frames, results = ref
            for frame, result in zip(frames, ray.get(results)):
                if segment_filter is not None:
                    segment_filter.apply(result)
                for stage in stages:
                    result = stage.process(result)
                if images:
                    result.image, result.sample_aspect = frame.image, frame.sample_aspect
                result.run_id, result.checkpoint_id = run_id, checkpoint_id
                outputs.write(result)
                for sink in sinks:
                    sink.publish(result)
                write_events(result.events)
                result.image = None
            board.add.remote(job.id, len(frames))

        batch = []
        for number, frame in enumerate(source.frames()):
            if number == 0:
                publish_state("streaming", *first_frame(source, frame))
            decoded += 1
            batch.append(frame)
            if len(batch) == cfg.engine.batch_size:
                pending.append((batch, actor.segment.remote(batch)))
                batch = []
                while len(pending) >= BATCHES_IN_FLIGHT:
                    write(pending.popleft())
        if batch:
            pending.append((batch, actor.segment.remote(batch)))
        while pending:
            write(pending.popleft())
        for stage in stages:  # the video's end: its tracks end, as in the local engine
            write_events(stage.finish() if hasattr(stage, "finish") else [])
        status, reason = judge(job, status, outputs.frames, reason)
        publish_state("ended" if status == "done" else "failed", "end of input" if status == "done" else reason,
                      final_counts())
        for sink in sinks:
            sink.flush()
        lost: Counter[str] = Counter()
        for sink in sinks:
            lost.update(getattr(sink, "dropped", {}))
        if any(lost.get(reason) for reason in SINK_DROPS):
            undelivered = undelivered_reason(lost)
    except SegstreamError as error:
        status, reason = "failed", job.told(str(error))
        for stage in stages:  # as the local engine: its tracks end, saying it failed (its files are discarded)
            for event in stage.finish("failed") if hasattr(stage, "finish") else []:
                event.run_id = run_id
                for sink in sinks or ():
                    sink.publish_event(event)
        publish_state("failed", reason, final_counts())
    finally:
        for sink in sinks or ():
            sink.close()
        if source is not None:
            source.close()
    # entries Redis lost after taking them, found as its publisher closed (as the local engine's)
    gone = sum(getattr(sink, "frames_lost_of", {}).get(job.id, 0) for sink in sinks or ())
    undelivered = undelivered or (lost_after_taking(gone) if gone else "")
    frames = outputs.frames if outputs else 0
    status, reason = judge(job, status, frames, reason)
    written = []
    if outputs is not None:
        if status == "done":
            written = outputs.commit()
        else:
            outputs.discard()
    if status == "done" and undelivered:  # as the local engine: its files are whole, a rerun publishes it
        status, reason = "failed", undelivered
    info = source.info if source else None
    return {"status": status, "reason": reason, "frames": frames, "outputs": written,
            "decode_errors": source.decode_errors if source else 0, "seconds": time.monotonic() - started,
            "frames_missing": source.frames_missing if source else 0, "damage": source.damage if source else "",
            "video_stream": info.stream if info else "", "other_video_streams": list(info.other_streams) if info else [],
            "node": _node()}


def _node() -> str:
    """The address of the Ray node this process runs on."""
    import ray

    return ray.util.get_node_ip_address()


# Seconds without a frame or a video ended, with videos in flight, before the batch says it is waiting
_STALL_S = 60.0


class _Stopped(Exception):
    """A first Ctrl-C while the batch waited for the cluster to start its model actor."""


class _StallWatch:
    """Says when a batch on Ray stops moving, and why it may be: Ray holds a task until a node has
    its resources, and an actor until one can take it, so a cluster too small for the model actors
    and a video's task beside them, or one that lost the node they fit on, left the batch waiting in
    silence for ever (found probing two machines). It waits on (an autoscaler may add nodes), saying
    so; the progress board's answers are taken through it (a board lost with its node costs the
    bars their counts until it is back, not the batch)."""

    def __init__(self, ray, settings):
        self.ray, self.settings = ray, settings
        self.moved = time.monotonic()
        self.said = False
        self.board_lost = False
        self._take = None  # the board's answer asked for, not yet come

    def nodes_line(self) -> str:
        """What the cluster holds now and what the batch asks of it."""
        try:
            free = self.ray.available_resources()
            nodes = [node["Resources"] for node in self.ray.nodes() if node.get("Alive")]
        except Exception:  # noqa: BLE001 (the cluster itself away: said by what follows)
            return "the cluster does not answer"
        cpus = ", ".join(f"{float(r.get('CPU', 0)):g}" for r in nodes)
        return (f"its {len(nodes)} node(s) have {cpus or 'no'} CPU(s), {float(free.get('CPU', 0)):g} free; each model "
                f"actor asks batch.ray.actor_cpus {self.settings.actor_cpus:g} and each video's task "
                f"batch.ray.decode_cpus {self.settings.decode_cpus:g}")

    def fits(self, actors: int, gpus: float) -> None:
        """Warn now when the cluster's nodes cannot hold the model actors and a video's task beside them."""
        try:
            nodes = [[float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0))]
                     for n in self.ray.nodes() if n.get("Alive")]
        except Exception:  # noqa: BLE001
            return
        placed = 0
        for _ in range(actors):
            room = [node for node in nodes if node[0] >= self.settings.actor_cpus and node[1] >= gpus]
            if not room:
                break
            node = max(room)
            node[0] -= self.settings.actor_cpus
            node[1] -= gpus
            placed += 1
        if placed == actors and any(node[0] >= self.settings.decode_cpus for node in nodes):
            return
        log.warning("the Ray cluster cannot run this batch as it is: %s%s — nothing runs until it grows (an "
                    "autoscaler?); lower batch.ray.actor_cpus, decode_cpus or model_actors, or add CPUs",
                    self.nodes_line(), f", {actors} model actor(s) with {gpus:g} GPU(s) each" if gpus else "")

    def get(self, refs, what: str, stopping: threading.Event | None = None):
        """``ray.get(refs)``, saying each minute that ``what`` has not started (its resources not
        found: the cluster too small?); ``_Stopped`` once ``stopping`` is set."""
        waited = 0.0
        while True:
            try:
                return self.ray.get(refs, timeout=_POLL_S)
            except self.ray.exceptions.GetTimeoutError:
                waited += _POLL_S
                if stopping is not None and stopping.is_set():
                    raise _Stopped from None
                if waited % _STALL_S < _POLL_S:
                    log.warning("%s has not started in %.0f s: %s", what, waited, self.nodes_line())

    def take(self, board) -> dict[str, int]:
        """The frames each video did since the last take: a take asked in one turn is collected in a
        later one when it has come (one given up on would still empty the board, its counts lost:
        found reviewing); a board lost is said once, and its return."""
        if self._take is None:
            self._take = board.take.remote()
        ready, _ = self.ray.wait([self._take], timeout=0)
        if not ready:
            return {}
        try:
            counts = self.ray.get(self._take)
        except self.ray.exceptions.RayError as error:
            if not self.board_lost:
                self.board_lost = True
                log.warning("the batch's progress board was lost with its node (%s): the bars wait until Ray has "
                            "restarted it; the videos go on", ray_failure(error))
            return {}
        finally:
            self._take = None
        if self.board_lost:
            self.board_lost = False
            log.info("the batch's progress board is back")
        if counts:
            self.moved = time.monotonic()
        return counts

    def drain(self, board) -> dict[str, int]:
        """Once the board was told to stop: the take in flight, then one asked after the stop (the
        board answers in order), so that every video begun before it is in what they give."""
        counts: Counter[str] = Counter()
        for ref in ([self._take] if self._take is not None else []) + [board.take.remote()]:
            try:
                counts.update(self.ray.get(ref, timeout=10))
            except self.ray.exceptions.RayError:  # a board lost: its videos are taken as not begun
                pass
        self._take = None
        return dict(counts)

    def waiting(self, ended: bool, in_flight: int) -> None:
        """Told each turn of the driver's loop whether a video ended: says a stall once, and its end."""
        now = time.monotonic()
        if ended or now - self.moved < _STALL_S or not in_flight:
            if ended:
                self.moved = now
            if self.said and now - self.moved < _STALL_S:
                self.said = False
                log.info("the batch moves again")
            return
        if not self.said:
            self.said = True
            log.warning("no frame and no video's end for %.0f s with %d video(s) in flight: %s — a node lost, or "
                        "a cluster too small for them? The batch waits for the cluster; Ctrl-C stops it", now -
                        self.moved, in_flight, self.nodes_line())


def _actor_lost(ray, error: BaseException) -> bool:
    """Whether a task failed because its model actor was lost (its node died or was cut off)."""
    seen = set()
    inner: BaseException | None = error
    while inner is not None and id(inner) not in seen:
        if isinstance(inner, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError)):
            return True
        seen.add(id(inner))
        inner = getattr(inner, "cause", None)
    return False


def _seen_from_here(outcome: VideoOutcome, root: Path, node: str) -> VideoOutcome:
    """A video's outcome as the driver's machine sees it: a video done whose outputs are not in the
    output folder here was written on a node that does not share it (found probing two machines:
    exit 0, every video done, the outputs on the workers' disks); a file its node did not find that
    is here is said so. (An earlier run's outputs under the same names pass: whether the folder was
    replaced cannot be told reliably over NFS, whose clients cache what they last saw.)"""
    job = outcome.job
    if outcome.status == "done" and any(not (root / output).exists() for output in outcome.outputs):
        return VideoOutcome(job, "failed", outcome.frames, reason=(
            f"its outputs were written on Ray node {node or '?'}, and are not in {root} here — the output folder "
            "must be one folder shared at the same path by every node (NFS, a mounted bucket; docs/OPERATIONS.md, "
            "\"Two machines or more\")"))
    if (outcome.status == "failed" and "does not exist" in outcome.reason and not job.url
            and Path(job.path).exists()):
        return VideoOutcome(job, "failed", reason=(
            f"{outcome.reason} on Ray node {node or '?'}, where its task ran, but it does here — the inputs must be "
            "at the same path on every node"))
    return outcome


def _resources(ray, cfg: PipelineConfig) -> tuple[int, float]:
    """How many model actors, and how many GPUs each holds."""
    settings = cfg.batch.ray
    gpus_in_cluster = float(ray.cluster_resources().get("GPU", 0))
    if settings.actor_gpus is not None:
        per_actor = settings.actor_gpus
    elif cfg.model.device == "cpu":
        per_actor = 0.0
    elif cfg.model.device.startswith("cuda") or gpus_in_cluster > 0:
        per_actor = 1.0
    else:
        per_actor = 0.0
    if settings.model_actors is not None:
        actors = settings.model_actors
    elif per_actor > 0:
        actors = max(1, int(gpus_in_cluster // per_actor))
    else:
        actors = 1
    return actors, per_actor


@contextlib.contextmanager
def joined_ray(cfg: PipelineConfig) -> Iterator:
    """The ``ray`` module, joined to the cluster at ``batch.ray.address``, or the Ray this
    process already joined, or a local one started for this batch (shut down at the end)."""
    _quiet_ray_output()
    ray = _ray()
    adopt_library_logs("ray")  # its driver's warnings (joining included): JSON records under JSON logs
    # and the lines its driver prints for its processes (a raylet's "disk is over 95% full", a
    # worker's native library's own): records too, where they were plain lines among the JSON
    stderr = sys.stderr
    if json_logging():
        sys.stderr = JsonLines(stderr, "ray")  # type: ignore[assignment]
    try:
        yield from _joined(ray, cfg)
    finally:
        if sys.stderr is not stderr:
            sys.stderr.flush()
            sys.stderr = stderr


def _joined(ray, cfg: PipelineConfig) -> Iterator:
    _check_redis(cfg)  # as the local engine does before its first video, not as each video's failure
    started_here = not ray.is_initialized()
    if started_here:
        address = cfg.batch.ray.address
        _check_reachable(address)
        handlers = _signal_handlers()
        kept: list[str] = []
        try:
            with _native_lines_kept(address is not None) as kept:
                ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
            if kept:
                log.warning("Ray's client tried %d times before it joined %s (the last: %s)", len(kept) + 1, address,
                            kept[-1].split("] ", 1)[-1])
        except (ConnectionError, RuntimeError, ValueError, *_auth_errors(ray)) as error:
            if isinstance(error, _auth_errors(ray)) and "RAY_AUTH_TOKEN_PATH" in str(error):
                raise ConfigError(f"RAY_AUTH_TOKEN_PATH names {os.environ.get('RAY_AUTH_TOKEN_PATH')!r}, which cannot "
                                  "be read or is empty — write the cluster's token there (`ray get-auth-token` on "
                                  "the head prints it) or unset it") from None
            if _refused_token(error, kept, _auth_errors(ray)):
                raise ConfigError(f"batch.ray.address: the Ray cluster at {address} refused segstream's token (Ray's "
                                  f"token authentication): {_token_sent()} — run with RAY_AUTH_MODE=token and the "
                                  "cluster's token in RAY_AUTH_TOKEN, in a file named by RAY_AUTH_TOKEN_PATH, or in "
                                  "~/.ray/auth_token (`ray get-auth-token` on the head prints it)") from None
            said = f" (Ray's client: {kept[-1].split('] ', 1)[-1]})" if kept else ""
            raise ConfigError(f"cannot join the Ray cluster at {address or 'a new local Ray'}: {_one_line(error)}{said}"
                              ) from None
        finally:
            _restore(handlers)  # Ray's own SIGTERM handler aborted the batch instead of draining it
    try:
        yield ray
    finally:
        if started_here:
            ray.shutdown()


# What Ray's C++ client writes a second while a cluster refuses it (21 such lines in 20 s for a missing token)
_RETRY_LINE = re.compile(rb"gcs_client\.cc:\d+\]? ?.*(Failed to get cluster ID|Unauthenticated|InvalidAuthToken)")


@contextlib.contextmanager
def _native_lines_kept(joining: bool) -> Iterator[list[str]]:
    """While joining a cluster, the lines Ray's C++ client writes to standard error a second
    while the cluster refuses it are kept aside, in the list yielded (filled at the end); every
    other line written to standard error meanwhile (a crash's, a log record's) goes on to it as
    it comes. Starting a local Ray changes nothing."""
    lines: list[str] = []
    if not joining:
        yield lines
        return
    sys.stderr.flush()
    saved = os.dup(2)
    reading, writing = os.pipe()
    forwarding = True

    def forward() -> None:
        with os.fdopen(reading, "rb") as pipe:
            for line in pipe:
                if _RETRY_LINE.search(line):
                    lines.append(line.decode(errors="replace").rstrip("\n"))
                elif forwarding:
                    os.write(saved, line)

    forwarder = threading.Thread(target=forward, name="segstream-ray-stderr", daemon=True)
    forwarder.start()
    os.dup2(writing, 2)
    os.close(writing)
    try:
        yield lines
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer gone (a process Ray started may hold it: not waited for)
        forwarder.join(2.0)
        if forwarder.is_alive():  # still held open: its later lines are let go, and `saved` is kept (its
            forwarding = False    # number could name another file once closed)
        else:
            os.close(saved)


def _token_sent() -> str:
    """Which token this driver sent, as Ray picks it (its environment, then the default file)."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode != "token":
        return ("RAY_AUTH_MODE is not set, so none was sent" if mode is None
                else f"RAY_AUTH_MODE is {mode!r}, not 'token', so none was sent")
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "the one in RAY_AUTH_TOKEN was not the cluster's"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"the one in {os.environ['RAY_AUTH_TOKEN_PATH']} (RAY_AUTH_TOKEN_PATH) was not the cluster's"
    default = Path.home() / ".ray" / "auth_token"
    return (f"the one in {default} was not the cluster's" if default.exists()
            else f"none was found (no RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or {default})")


def _auth_errors(ray) -> tuple[type[BaseException], ...]:
    """Ray's token-authentication error (Ray 2.52 on), as a tuple for ``except``; none before."""
    error = getattr(ray.exceptions, "AuthenticationError", None)
    return (error,) if error is not None else ()


def _refused_token(error: BaseException | None, lines: list[str], auth_errors: tuple[type[BaseException], ...]) -> bool:
    """Whether Ray's join failed on its token authentication (an AuthenticationError, itself or
    inside the ConnectionError Ray raises, or its C++ client's lines)."""
    while error is not None:
        if isinstance(error, auth_errors) or "InvalidAuthToken" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return any("InvalidAuthToken" in line for line in lines)


def _quiet_ray_output() -> None:
    """Ray's forwarded worker lines as segstream's other lines are: no colour codes where
    NO_COLOR is set or standard error is no terminal; under JSON logs no ``(task pid=...)``
    prefix and no "[repeated 2x]" suffix, which made the workers' JSON lines none. Read when
    Ray is imported (the prefix, the suffix) or prints (the colour); a user's own setting stands."""
    if os.environ.get("NO_COLOR") or not sys.stderr.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if json_logging():
        os.environ.setdefault("RAY_DISABLE_WORKER_LOG_PREFIX", "1")
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def settle_model(ray, cfg: PipelineConfig) -> PipelineConfig:
    """``cfg`` with the model's device and precision as the model actors will run it: ``cuda``
    for ``auto`` where they hold GPUs, and ``auto`` precision resolved by a task on the
    resources an actor takes, so that the manifest records what the actors compute in (the local
    engine's ``auto`` is resolved on its machine): the same settings on both engines, and every
    actor in the one precision recorded."""
    _, gpus = _resources(ray, cfg)
    model = cfg.model
    if gpus > 0 and model.device == "auto":
        model = model.model_copy(update={"device": "cuda"})
    if model.precision == "auto":
        watch = _StallWatch(ray, cfg.batch.ray)
        watch.fits(_resources(ray, cfg)[0], gpus)  # before its question waits on the cluster
        # max_calls=1: the worker exits after it, rather than hold the CUDA context its question made
        task = ray.remote(num_cpus=cfg.batch.ray.actor_cpus, num_gpus=gpus, max_calls=1)(_precision_here)
        try:
            precision = watch.get(task.remote(model.precision, model.device), "the question of the model's precision")
        except ray.exceptions.RayTaskError as error:  # model.device: cuda on workers without one, say
            raise ConfigError(ray_failure(error).removeprefix("ConfigError: ")) from None
        model = model.model_copy(update={"precision": precision})
    return cfg.model_copy(update={"model": model})


def _precision_here(precision: str, device: str) -> str:
    """A Ray task: ``precision`` resolved on the machine it runs on."""
    from segstream.pipeline.model_factory import resolve_device, resolve_precision

    return resolve_precision(precision, resolve_device(device))


def run_ray(ray, cfg: PipelineConfig, jobs: Sequence[VideoJob], root: Path, manifest: Manifest,
            progress: BatchProgress, control: BatchControl, run_id: str = "") -> list[VideoOutcome]:
    """Process ``jobs`` on the Ray ``joined_ray`` joined, the model as ``settle_model`` settled it."""
    # the tasks run in other processes, maybe on other machines, in other working directories
    root = Path(root).resolve()
    try:
        return _run(ray, cfg, jobs, root, manifest, progress, control, run_id)
    except ray.exceptions.RayError as error:  # the cluster went away under the batch
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SegstreamError(f"lost the Ray cluster during the batch ({type(error).__name__}: {first}) — the "
                             "videos finished so far are recorded; run the same command again to go on") from None


def _cut_back(sinks, video_id: str, mark: dict[str, str] | None, run_id: str) -> None:
    """A retried task (its worker died mid-video) starts its streams again from the mark: what
    its run published of the video is deleted (the driver cut earlier runs' before the first try)."""
    import redis

    from segstream.connectors.redis_connection import error_summary
    from segstream.connectors.redis_sink import RedisPublisher

    publisher = next((s for s in sinks if isinstance(s, RedisPublisher)), None)
    if publisher is None or not mark:
        return
    try:  # (quietly: the driver said what it keeps of other writers)
        cut_back(publisher.client, video_id, mark, {run_id}, say_kept=False)
    except redis.RedisError as error:
        log.warning("%s: cannot cut its Redis streams back to where the batch began it (%s): entries an attempt "
                    "that died published may be there twice", video_id, error_summary(error))


def _marks(cfg, root: Path, manifest: Manifest):
    """The Redis client, stream patterns and ``RedisMarks`` of a batch that publishes to Redis."""
    redis_cfg = cfg.sinks.redis
    if not (redis_cfg.enabled and redis_cfg.url):
        return None
    from segstream.connectors.redis_connection import connect_redis

    client = connect_redis(redis_cfg.url, **redis_cfg.login())
    return client, (redis_cfg.stream, redis_cfg.events_stream), RedisMarks(root / REDIS_MARKS, manifest_runs(manifest))


def _signal_handlers() -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.getsignal(signum) for signum in entry.stop_signals()}


def _restore(handlers: dict) -> None:
    for signum, handler in handlers.items():
        if handler is not None:
            signal.signal(signum, handler)


def _check_reachable(address: str | None) -> None:
    """A ``host:port`` cluster address that does not answer fails now, in one line: Ray would
    retry it for minutes. ``auto``, ``ray://`` and none (a local Ray) are Ray's to resolve."""
    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as error:
        raise ConfigError(f"batch.ray.address: nothing answers at {address} ({error.strerror or error}) — start "
                          "the cluster's head (ray start --head) or fix the address") from None


def _check_redis(cfg) -> None:
    redis_cfg = cfg.sinks.redis
    if not (redis_cfg.enabled and redis_cfg.url):
        return
    from segstream.connectors.redis_connection import connect_redis

    connect_redis(redis_cfg.url, **redis_cfg.login()).close()


def _run(ray, cfg, jobs, root, manifest, progress, control, run_id) -> list[VideoOutcome]:
    settings = cfg.batch.ray
    actors_wanted, gpus = _resources(ray, cfg)
    actor_class = ray.remote(ModelActor).options(num_cpus=settings.actor_cpus, num_gpus=gpus, max_restarts=3,
                                                 max_task_retries=3)
    logs = log_settings()  # the workers' lines as the driver's: the format and level it was given
    actors = [actor_class.remote(cfg.model.model_dump_json(), cfg.engine.batch_size, logs) for _ in range(actors_wanted)]
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    watch = _StallWatch(ray, settings)
    watch.fits(actors_wanted, gpus)
    try:
        # every actor started (a checkpoint a node lacks stops the batch now, not each video it gets: found reviewing)
        labels, geometry, *_ = watch.get([actors[0].labels.remote(), actors[0].geometry.remote(),
                                          *(actor.labels.remote() for actor in actors[1:])], "the model actor",
                                         control.stopping)
    except _Stopped:
        return [VideoOutcome(job, "stopped") for job in jobs]
    except ray.exceptions.RayError as error:
        raise ConfigError(f"the model actor could not start: {ray_failure(error)}") from None
    filter_settings(cfg.filters, labels)  # its class names, checked once here rather than failing every video
    # on the driver's node where it has one (found probing: a node lost with the board on it ended the batch),
    # restarted where it is lost all the same: it only counts frames for the bars
    here = ray.get_runtime_context().get_node_id()
    placed = {"scheduling_strategy": NodeAffinitySchedulingStrategy(here, soft=True)} if here else {}
    board = ray.remote(ProgressBoard).options(num_cpus=0, max_restarts=-1, **placed).remote()
    task = ray.remote(process_video).options(num_cpus=settings.decode_cpus, max_retries=settings.retries,
                                             retry_exceptions=False)
    limit = settings.videos_in_flight or 2 * len(actors)
    cfg_json = cfg.model_dump_json()
    queue = deque((i, job) for i, job in enumerate(jobs))
    in_flight: dict = {}
    tries: Counter[str] = Counter()  # per video, its tasks lost with their model actor
    begun: set[str] = set()  # videos whose task has begun (the board says so)
    stop_said = False
    outcomes: list[VideoOutcome] = []
    marking = _marks(cfg, root, manifest)
    try:
        while queue or in_flight:
            while queue and len(in_flight) < limit and not control.stopping.is_set():
                i, job = queue.popleft()
                mark = None
                if marking is not None:
                    client, patterns, marks = marking
                    marks.cut_back(client, patterns, [job], run_id)
                    mark = marks.marks.get(job.id)
                # a video done again after its actor was lost goes to the next actor (that one may be gone for good)
                actor = actors[(i + tries[job.id]) % len(actors)]
                ref = task.remote(job, cfg_json, str(root), actor, labels, board,
                                  geometry if cfg.engine.resize_in_decoder else None, run_id, mark, logs)
                in_flight[ref] = (i, job)
            if not in_flight:
                break
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=_POLL_S)
            if control.stopping.is_set():  # the videos not begun return at once, stopped (said each turn: a
                board.stop.remote()         # board restarted after a lost node has forgotten)
                if not stop_said:  # and those Ray holds back, waiting for a CPU, never begin: cancelled (found
                    stop_said = True  # reviewing: a first Ctrl-C waited for them for ever)
                    for video_id, frames in watch.drain(board).items():
                        begun.add(video_id)
                        progress.advance(video_id, frames)
                    for ref, (_, job) in in_flight.items():
                        if job.id not in begun:
                            ray.cancel(ref)
            for video_id, frames in watch.take(board).items():
                begun.add(video_id)
                progress.advance(video_id, frames)
            watch.waiting(bool(ready), len(in_flight))
            for ref in ready:
                i, job = in_flight.pop(ref)
                try:
                    result = ray.get(ref)
                    if result["status"] == "stopped":
                        outcome = VideoOutcome(job, "stopped")
                    else:
                        outcome = VideoOutcome(job, result["status"], result["frames"], result["decode_errors"],
                                               result["seconds"], result["reason"], result["outputs"],
                                               result["frames_missing"], result["damage"], result["video_stream"],
                                               result["other_video_streams"])
                        outcome = _seen_from_here(outcome, root, result.get("node", ""))
                except ray.exceptions.TaskCancelledError:  # held back for a CPU when the batch stopped
                    outcome = VideoOutcome(job, "stopped")
                except ray.exceptions.RayError as error:
                    lost = _actor_lost(ray, error)
                    if lost and control.stopping.is_set():
                        outcome = VideoOutcome(job, "stopped")  # (done again by the next run, not skipped as failed)
                    elif lost and tries[job.id] < settings.retries:
                        # its model actor's node went away (the actor restarts elsewhere): the video again, not failed
                        tries[job.id] += 1
                        log.warning("%s: its model actor was lost (%s): the video is done again (%d of %d)", job.id,
                                    ray_failure(error), tries[job.id], settings.retries)
                        queue.appendleft((i, job))
                        continue
                    else:
                        # a worker that died is retried (batch.ray.retries); an error in the task is not
                        died = isinstance(error, (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError))
                        times = f" {settings.retries + 1} times" if died else ""
                        outcome = VideoOutcome(job, "failed",
                                               reason=f"its Ray task failed{times}: {ray_failure(error)}")
                if outcome.status != "stopped":
                    manifest.record(outcome)
                progress.ended_video(outcome)
                outcomes.append(outcome)
    except BaseException:
        for ref in in_flight:
            ray.cancel(ref, force=True)
        raise
    finally:
        if marking is not None:
            marking[0].close()
    outcomes += [VideoOutcome(job, "stopped") for _, job in queue]
    return outcomes
