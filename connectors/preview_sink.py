"""The preview sink: what the model sees, drawn over each source's frames, as MP4 or PNG files."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import cv2

from segstream.connectors.errors import SinkError
from segstream.connectors.output_files import absolute, check_output_dir
from segstream.connectors.overlay import OverlayVideo, OutputWriteError, draw_overlay, write_png
from segstream.connectors.sink import DROPPED_WRITE_FAILED, DroppedCallback, WrittenCallback
from segstream.models.results import Event, FrameResult

log = logging.getLogger(__name__)

# Write errors that pass (space comes back, a disk recovers): the frame is dropped and counted,
# as the files sink does; any other error stops the run (a folder where the file goes, a read-only disk).
_PASSING = (errno.ENOSPC, errno.EDQUOT, errno.EIO)
RETRY_S = 5.0  # an MP4 whose writes failed: how long its frames are dropped before a new file is tried
# Frames handed to the preview and not yet drawn. The drawing (OpenCV and the encoder, which
# leave the GIL) goes on beside the publishing thread; a preview that falls further behind holds
# the publishing thread back rather than drop frames of its video.
WAITING = 4


class PreviewSink:
    """``<dir>/<source>.mp4`` (``format="mp4"``) or ``<dir>/<source>/<run_id>/<frame>.png`` per
    source, each frame with its segments drawn (``segstream.connectors.overlay``). MP4 frames
    keep their source timestamps, so dropped frames show as held frames, not as a faster video.

    PNGs go into a folder per run (the ``run_id`` of the results), so a restarted run, whose
    frame numbers start at 0 again, leaves the earlier run's pictures as they were;
    ``<dir>/<source>/latest`` links to the newest run's folder, and the folders of all but the
    ``keep_runs`` most recently written runs are removed when a run starts. An MP4 is rewritten
    by each run.

    It asks the runtime for the decoded frames (``wants_images``); the runtime attaches each
    frame's image to its result until the sinks have published it, so memory stays bounded by
    the runtime's queues and the preview's own: up to ``WAITING`` + 2 frames with their images
    (queued, being drawn, being handed over; at 4K about 60 MB each).

    ``level`` draws that level of each result's segment hierarchy (``FrameResult.levels``, 0 the
    finest) instead of its segments; a result without it stops the run (the config check refuses
    the shipped models that have none, so only a model of one's own meets this).

    Frames are drawn and written on a thread of the sink's own, in order: ``publish`` returns
    once the frame is queued (up to ``WAITING`` frames wait; it blocks while that many do),
    ``flush`` returns once every frame handed to it is written, and an error of the drawing
    thread is raised by the next ``publish``, ``poll``, ``flush`` or ``close`` (the frames still
    queued then are dropped, counted as ``sink_write_failed``). So the sinks before it (Redis)
    send their entries without waiting for the picture. ``on_written`` and ``on_dropped`` are
    called from the drawing thread (they must not call ``flush``).

    A write that fails for a while (the disk full) costs the preview its frames, not the run:
    each is dropped and counted as ``sink_write_failed`` (``on_dropped``, ``status()``), said once
    per failing spell in a warning, and a line says when writing resumed. A PNG is tried again
    with the next frame. An MP4 whose write failed cannot be finished (it has no index, so no
    player opens it); it is left as it is, said in one line when the run ends, and after
    ``RETRY_S`` the frames go to a new file, ``<source>.2.mp4`` (then ``.3``...). The frames
    the encoder held when the write failed are in no file.
    """

    name = "preview"
    wants_images = True

    def __init__(self, directory: str | Path, format: str = "mp4", opacity: float = 0.45, keep_runs: int = 2,
                 level: int | None = None, max_width: int | None = None):
        if format not in ("mp4", "png"):
            raise SinkError(f"preview format {format!r} is not one of mp4, png")
        if keep_runs < 1:
            raise SinkError(f"preview keep_runs must be 1 or more, got {keep_runs}")
        if level is not None and level < 0:
            raise SinkError(f"preview level must be 0 (the finest) or more, got {level}")
        if max_width is not None and max_width < 16:
            raise SinkError(f"preview max_width must be 16 pixels or more, got {max_width}")
        self.directory = Path(directory)
        self.format = format
        self.opacity = opacity
        self.keep_runs = keep_runs
        self.level = level
        self.max_width = max_width  # wider pictures are scaled down to it (an H.264 4K frame: 0.3 s of a CPU)
        # the run folder of results that name no run (a sink used outside the runtime): this sink's start
        self._unnamed_run = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self._runs: dict[str, str] = {}  # source -> the run whose PNG folder it writes
        self._latest: dict[str, str] = {}  # source -> the run its `latest` link names
        self._pictures: dict[str, tuple[Path, int]] = {}  # source -> its PNG folder and the pictures written there
        self.on_written: WrittenCallback | None = None
        self.on_dropped: DroppedCallback | None = None
        self.frames = 0
        self.dropped: Counter[str] = Counter()
        self._videos: dict[str, OverlayVideo] = {}
        self._parts: dict[str, int] = {}  # source -> number of its current MP4 (1: <source>.mp4)
        self._failing: dict[str, int] = {}  # source -> frames dropped since its writes began failing
        self._retry_at: dict[str, float] = {}  # source -> when its next MP4 may be tried
        self._unfinished: dict[Path, tuple[str, int]] = {}  # MP4s left unplayable -> why, frames held
        self._said_unfinished: set[Path] = set()
        self._wrote = False  # whether a frame was written: after that, any write error is dropped and counted
        self._last_error = ""
        self._waiting: queue.Queue[tuple[FrameResult, Any] | None] = queue.Queue(WAITING)
        self._drawer: threading.Thread | None = None
        self._error: BaseException | None = None  # the drawing thread's, raised once on the caller's
        self._raised = False
        self._closing = threading.Lock()  # an aborted run's second close waits for the first
        self._ending_sent = False  # the drawing thread told to end (once)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SinkError(f"cannot create preview directory '{self.directory}'{absolute(self.directory)}: "
                            f"{error.strerror}") from None
        check_output_dir(self.directory, "preview directory")

    def path(self, source: str, run_id: str = "") -> Path:
        """Where ``source``'s preview goes: its MP4, or its folder of PNGs of run ``run_id``."""
        if self.format == "png":
            return self.directory / source / (run_id or self._unnamed_run)
        part = self._parts.get(source, 1)
        return self.directory / (f"{source}.mp4" if part == 1 else f"{source}.{part}.mp4")

    def publish(self, result: FrameResult) -> None:
        if result.image is None:
            raise SinkError("the preview sink got a result without its frame — run it inside the runtime, "
                            "which attaches frames for sinks that set wants_images")
        if self.level is not None and self.level >= len(result.levels):
            raise SinkError(f"sinks.preview.level: frame {result.index} of {result.source} has {len(result.levels)} "
                            f"hierarchy levels, no level {self.level} — lower sinks.preview.level, or set it to null "
                            "to draw the frame's segments")
        self._raise_drawing_error()
        if self._drawer is None:
            self._drawer = threading.Thread(target=self._draw_all, name="segstream-preview", daemon=True)
            self._drawer.start()
        item = (result, result.image)  # the runtime lets go of result.image once the sinks have it
        while True:
            try:
                self._waiting.put(item, timeout=0.1)
                return
            except queue.Full:
                self._raise_drawing_error()

    def _draw_all(self) -> None:
        """The drawing thread: each frame queued, in order, until close's None; after an error the
        frames still queued are dropped and counted (the error ends the run)."""
        while True:
            item = self._waiting.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._draw(*item)
                else:  # not drawn: counted, as a failed write's frame is
                    self.dropped[DROPPED_WRITE_FAILED] += 1
                    if self.on_dropped is not None:
                        self.on_dropped([item[0]], DROPPED_WRITE_FAILED)
            except BaseException as error:
                if self._error is None:
                    self._error = error
            finally:
                self._waiting.task_done()

    def _raise_drawing_error(self) -> None:
        if self._error is not None and not self._raised:
            self._raised = True
            raise self._error

    def _draw(self, result: FrameResult, image: Any) -> None:
        if not self._write(result, image):
            self.dropped[DROPPED_WRITE_FAILED] += 1
            if self.on_dropped is not None:
                self.on_dropped([result], DROPPED_WRITE_FAILED)
            return
        self.frames += 1
        if self.on_written is not None:  # a stand-in: the result the other sinks and the caller hold stays as it is
            self.on_written([result.stand_in(publish_ts=time.time())])

    def _write(self, result: FrameResult, image: Any) -> bool:
        """Draw and write one frame; False (said once per failing spell) when its write failed."""
        source = result.source
        if source in self._retry_at and time.monotonic() < self._retry_at[source]:
            self._failing[source] += 1
            return False
        picture = draw_overlay(image, result, self.opacity, level=self.level)
        if self.max_width is not None and picture.shape[1] > self.max_width:
            height = max(1, round(picture.shape[0] * self.max_width / picture.shape[1]))
            picture = cv2.resize(picture, (self.max_width, height), interpolation=cv2.INTER_AREA)
        target = self.path(source, result.run_id)
        if self.format == "png":
            target = target / f"{result.index:08d}.png"
        try:
            if self.format == "mp4":
                video = self._videos.get(source)
                if video is None:
                    video = self._videos[source] = OverlayVideo(target)
                video.write(picture, result.pts, result.time_base, result.sample_aspect)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                if self._runs.get(source) != target.parent.name:
                    self._start_run(source, target.parent)
                write_png(target, picture)
                folder, written = self._pictures.get(source, (target.parent, 0))
                self._pictures[source] = (target.parent, written + 1 if folder == target.parent else 1)
                if self._latest.get(source) != target.parent.name:
                    self._point_latest(source, target.parent)
        except (OutputWriteError, OSError) as error:
            if error.errno not in _PASSING and not self._wrote:
                raise  # a preview that never wrote a frame and will not: the run cannot make what it is for
            self._failed(source, target, error)
            return False
        if self.format == "mp4" and not video.written:
            return True  # in the encoder, not on the disk yet: a failing spell ends once the file takes bytes
        self._wrote = True
        if source in self._failing:
            log.warning("preview of %s: writing to '%s' again after %d dropped frames", source, target,
                        self._failing.pop(source))
            self._retry_at.pop(source, None)
        return True

    def _start_run(self, source: str, folder: Path) -> None:
        """Remove the PNG folders of the runs beyond ``keep_runs`` (the least recently written
        ones), so restarts do not fill the disk."""
        self._runs[source] = folder.name
        runs = [entry for entry in os.scandir(folder.parent) if entry.is_dir(follow_symlinks=False)]
        runs.sort(key=lambda entry: (entry.stat(follow_symlinks=False).st_mtime, entry.name), reverse=True)
        for entry in [entry for entry in runs if entry.name != folder.name][self.keep_runs - 1 :]:
            try:
                shutil.rmtree(entry.path)
            except OSError as error:
                log.warning("preview of %s: cannot remove the earlier run's '%s': %s", source, entry.path,
                            error.strerror)

    def _point_latest(self, source: str, folder: Path) -> None:
        """Make ``<source>/latest`` a link to the run's ``folder``, replaced in one step (a reader
        never finds none); a full disk leaves it to the next frame."""
        latest, link = folder.parent / "latest", folder.parent / f".latest.{os.getpid()}"
        try:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            link.symlink_to(folder.name)
            os.replace(link, latest)
        except OSError as error:
            with contextlib.suppress(OSError):
                link.unlink()
            if error.errno in _PASSING:
                return
            log.warning("preview of %s: cannot point '%s' at '%s': %s", source, latest, folder, error.strerror)
        self._latest[source] = folder.name

    def _failed(self, source: str, target: Path, error: OutputWriteError | OSError) -> None:
        self._last_error = (error.reason if isinstance(error, OutputWriteError) else error.strerror) or str(error)
        if source not in self._failing:
            log.warning("preview of %s: cannot write '%s': %s; its frames are dropped (counted as %s) until writes "
                        "succeed again", source, target, self._last_error, DROPPED_WRITE_FAILED)
            self._failing[source] = 0
        self._failing[source] += 1
        if self.format == "png":
            with contextlib.suppress(OSError):  # a PNG cut short is no picture: its space goes back
                target.unlink()
            return
        video = self._videos.pop(source, None)
        if video is not None:
            video.abandon()
            if video.frames or _size(video.path):
                self._unfinished[video.path] = (self._last_error, video.frames)
                self._lost_in_file(source, video.frames)
                self._parts[source] = self._parts.get(source, 1) + 1
            else:  # nothing of it reached the disk: the next try takes its name
                with contextlib.suppress(OSError):
                    video.path.unlink()
        self._retry_at[source] = time.monotonic() + RETRY_S

    def _lost_in_file(self, source: str, frames: int) -> None:
        """Frames written to an MP4 that cannot be finished (no player opens it): dropped after all,
        counted as a failed write's (found probing: a run whose first two MP4s were lost to a full
        disk summarised their 22 frames as published)."""
        if not frames:
            return
        self.frames -= frames
        self.dropped[DROPPED_WRITE_FAILED] += frames
        if self.on_dropped is not None:
            self.on_dropped([FrameResult(source, -1, 0, 0, None) for _ in range(frames)], DROPPED_WRITE_FAILED)

    def status(self) -> dict:
        """What the preview dropped, with a ``line`` for status lines while it has dropped any."""
        dropped = dict(self.dropped)
        line = ""
        if dropped:
            line = f"preview dropped {sum(dropped.values())} frames"
            if self._failing:
                line += f" (writes failing: {self._last_error})"
        return {"dropped": dropped, "failing": sorted(self._failing),
                "unfinished": {str(path): frames for path, (_, frames) in dict(self._unfinished).items()}, "line": line}

    @property
    def connected(self) -> bool:
        """False while the last write of some source failed (its frames are being dropped)."""
        return not self._failing

    def publish_event(self, event: Event) -> None:
        pass

    def poll(self) -> float | None:
        self._raise_drawing_error()
        return None

    def flush(self) -> None:
        self._waiting.join()
        self._raise_drawing_error()

    def settle(self) -> None:
        """Wait until every frame handed over is written or dropped (the runtime, before it counts
        what became of an ended source's frames)."""
        self.flush()

    def close(self) -> None:
        with self._closing:
            self._close()

    def _close(self) -> None:
        drawer = self._drawer
        if drawer is not None:  # the frames queued are drawn first (an aborted run's too: at most WAITING)
            if not self._ending_sent:
                self._waiting.put(None)
                self._ending_sent = True
            drawer.join()  # again in a close repeated after one interrupted here (a second Ctrl-C)
            self._drawer = None
        videos, self._videos = self._videos, {}
        for source, video in videos.items():
            try:
                video.close()
            except OutputWriteError as error:
                self._unfinished[video.path] = (error.reason, video.frames)
                self._lost_in_file(source, video.frames)
                continue
            log.info("preview of %s: %d frames in %s", source, video.frames, video.path)
        pictures, self._pictures = self._pictures, {}
        for source, (folder, written) in pictures.items():  # as the MP4's line (found: a PNG run said nothing)
            log.info("preview of %s: %d pictures in %s", source, written, folder)
        for path, (reason, frames) in sorted(self._unfinished.items()):
            if path in self._said_unfinished:  # close is called twice when a run is aborted
                continue
            self._said_unfinished.add(path)
            log.warning("preview '%s' is unfinished and cannot be played (the %d frames written to it are lost, counted "
                        "as %s): its writes failed (%s)", path, frames, DROPPED_WRITE_FAILED, reason)
        self._raise_drawing_error()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
