"""Everything ``segstream batch`` writes for one video, written aside and moved into place whole.

    <root>/<video id>/frames.jsonl       wire-schema entries (docs/SCHEMA.md), one per frame
    <root>/<video id>/events.jsonl       the source's events, when there are any
    <root>/<video id>/panoptic.json      COCO panoptic (connectors/coco_panoptic.py)
    <root>/<video id>/panoptic/*.png
    <root>/<video id>/images/*.jpg       the frames the COCO JSON names (``coco_images``)
    <root>/<video id>/overlay.mp4        the segments drawn over the video
    <root>/<video id>/video.json         which video it is: ``video`` (as the manifest names it), ``id``, ``number``

Files are written under ``<root>/.partial/<video id>.<attempt>/`` and the folder is renamed to
``<root>/<video id>`` once the video's last frame is written, so a reader never sees half a
video, and a run that is stopped or killed leaves nothing but a ``.partial`` folder to delete.

Archived frames have no meaningful wall-clock times, and outputs must not depend on when they
were made (a resumed batch gives the same bytes as an uninterrupted one): in these files the
entries' ``capture_ts`` and ``publish_ts`` and the events' ``ts`` are 0; a frame's time is its
``pts_s``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import IO

from segstream.connectors.coco_panoptic import CocoPanopticWriter
from segstream.connectors.errors import SinkError
from segstream.connectors.files_sink import entry_line
from segstream.connectors.output_files import open_output, sync_path, sync_tree
from segstream.connectors.overlay import OverlayVideo, draw_overlay
from segstream.connectors.redis_wire import event_to_wire, to_wire
from segstream.models.label_sets import LabelSet
from segstream.models.results import Event, FrameResult

log = logging.getLogger(__name__)

PARTIAL = ".partial"
NO_TIME = "0.0"


class VideoOutputs:
    """The outputs of one video: ``write`` each result in frame order, then ``commit`` (move the
    finished folder into place) or ``discard``."""

    def __init__(
        self,
        root: str | Path,
        video_id: str,
        labels: LabelSet,
        *,
        jsonl: bool = True,
        coco_panoptic: bool = True,
        coco_images: bool = False,
        overlay: bool = False,
        overlay_level: int | None = None,
        number: int = 0,
        mask_encoding: str = "rle",
        video_name: str = "",
        video: str = "",
        fps_hint: float = 25.0,
        opacity: float = 0.45,
        levels: bool = True,
    ):
        self.root = Path(root)
        self.video_id = video_id
        self.final = self.root / video_id
        self.partial = self.root / PARTIAL / f"{video_id}.{uuid.uuid4().hex[:12]}"
        self.mask_encoding = mask_encoding
        self.levels = levels
        self.opacity = opacity
        self.overlay_level = overlay_level  # the hierarchy level the overlay draws (None: the segments)
        self.frames = 0
        try:
            self.partial.mkdir(parents=True)
        except OSError as error:
            raise SinkError(f"cannot create '{self.partial}': {error.strerror}") from None
        # the folder says which file it is of, wherever it is copied (its id is a shortened path)
        self.said = {"video": video, "id": video_id, "number": number} if video else None
        self._frames: IO[str] | None = self._open("frames.jsonl") if jsonl else None
        self._events: IO[str] | None = None
        self._coco = CocoPanopticWriter(self.partial, labels, "panoptic", video_name, number=number, video_id=video_id,
                                        images=coco_images) if coco_panoptic else None
        self._overlay = OverlayVideo(self.partial / "overlay.mp4", fps_hint=fps_hint) if overlay else None

    @property
    def wants_images(self) -> bool:
        return self._overlay is not None or (self._coco is not None and self._coco.image_dir is not None)

    def _open(self, name: str) -> IO[str]:
        try:
            return open_output(self.partial / name, "w", encoding="utf-8")
        except OSError as error:
            raise SinkError(f"cannot write '{self.partial / name}': {error.strerror}") from None

    def write(self, result: FrameResult) -> None:
        try:
            if self._frames is not None:
                entry = to_wire(result, self.mask_encoding, publish_ts=0.0, levels=self.levels)
                entry["capture_ts"] = NO_TIME
                entry["run_id"] = ""
                self._frames.write(entry_line(entry))
            if self._coco is not None:
                self._coco.add(result)
            if self._overlay is not None:
                if result.image is None:
                    raise SinkError(f"{result.source} frame {result.index} came without its image for the overlay")
                if self.overlay_level is not None and self.overlay_level >= len(result.levels):
                    raise SinkError(f"batch.overlay_level: frame {result.index} of {result.source} has "
                                    f"{len(result.levels)} hierarchy levels, no level {self.overlay_level} — lower "
                                    "batch.overlay_level, or set it to null to draw the segments")
                image = draw_overlay(result.image, result, self.opacity, level=self.overlay_level)
                self._overlay.write(image, result.pts, result.time_base, result.sample_aspect)
        except OSError as error:
            raise SinkError(f"cannot write the outputs of {self.video_id}: {error.strerror}") from None
        self.frames += 1

    def write_event(self, event: Event) -> None:
        if self._events is None:
            self._events = self._open("events.jsonl")
        entry = event_to_wire(event)
        entry["ts"] = NO_TIME
        entry["run_id"] = ""
        self._events.write(entry_line(entry))

    def _close_writers(self) -> None:
        for f in (self._frames, self._events):
            if f is not None:
                f.close()
        if self._coco is not None:
            self._coco.close()
        if self._overlay is not None:
            self._overlay.close()
        self._frames = self._events = self._coco = self._overlay = None

    def commit(self) -> list[str]:
        """Finish every file, have them on disk, and move the folder into place (replacing an older
        one), on disk too: what the manifest then records done survives a power cut. Returns the
        outputs' paths relative to the root."""
        try:
            self._close_writers()  # a full disk may show only now, as the last buffers go out
            if self.said is not None:
                with open_output(self.partial / "video.json", "w", encoding="utf-8") as f:
                    f.write(json.dumps(self.said, sort_keys=True) + "\n")
            sync_tree(self.partial)
        except OSError as error:
            raise SinkError(f"cannot finish the outputs of {self.video_id} in '{self.partial}': "
                            f"{error.strerror or error}") from None
        outputs = sorted(str(p.relative_to(self.partial)) for p in self.partial.iterdir())
        old = None
        try:
            if self.final.exists():
                old = self.partial.with_name(self.partial.name + ".old")
                os.rename(self.final, old)
            os.rename(self.partial, self.final)
            sync_path(self.root)
        except OSError as error:
            raise SinkError(f"cannot move '{self.partial}' to '{self.final}': {error.strerror}") from None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return [f"{self.video_id}/{name}" for name in outputs]

    def discard(self) -> None:
        """Drop what was written (the video failed or the run stopped before its end)."""
        try:
            self._close_writers()
        except Exception:  # an encoder that cannot finish a file we throw away anyway
            log.debug("closing the discarded outputs of %s failed", self.video_id, exc_info=True)
        shutil.rmtree(self.partial, ignore_errors=True)


def clear_partial(root: str | Path) -> list[str]:
    """Remove what stopped or killed runs left half-written under ``root``; returns the ids of
    the videos whose outputs those were."""
    folder = Path(root) / PARTIAL
    try:
        names = [p.name.removesuffix(".old") for p in folder.iterdir()]
    except OSError:
        names = []
    shutil.rmtree(folder, ignore_errors=True)
    return sorted({name.rpartition(".")[0] or name for name in names})
