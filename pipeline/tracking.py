"""The tracker as a per-source stage of the runtime: track ids into each result's segments, and
``track_started`` / ``track_ended`` events onto the source's events stream.

The math is ``segstream.models.tracking.SegmentTracker``; this module only maps a
``FrameResult`` onto it and its decisions back, and turns the config section into settings.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence

from segstream.models.results import Event, FrameResult
from segstream.models.tracking import SegmentTracker, TrackerSettings, TrackEvent

TRACK_STARTED = "track_started"
TRACK_ENDED = "track_ended"
TRACK_CAPACITY = "track_capacity"
_STEPS_JUDGED = 5  # results in a row further apart than max_lost before it is said

log = logging.getLogger("segstream.tracking")


class TrackingStage:
    """Gives the segments of one source's results their track ids (a runtime ``FrameStage``).

    Each event's ``data`` holds ``track_id``, ``class_id``, ``label``, ``isthing``,
    ``first_frame``, ``last_frame``, ``frames_seen`` and ``frame`` (the frame it was written
    at); ``track_started`` adds which segment of ``first_frame``'s entry the track began as
    (``first_segment``, its ``id``; ``first_box``; ``first_centroid``); ``track_ended`` adds ``reason``
    (``lost``: unseen for more than ``max_lost`` frames, or ``max_lost_s`` seconds of its
    timestamps, or the source back after an outage or a pause longer than that; ``filtered``: its
    class dropped by the source's filters, changed by a reload; ``end``: the source ended;
    ``capacity``: more than ``max_tracks`` tracks; ``frame_size``: the frame size changed).
    The first time the tracker is full (``max_tracks``) it logs a warning and writes one
    ``track_capacity`` event (``max_tracks``, ``frame``, ``refused``); ``capacity_refused``
    counts the segments left without an id for it.
    """

    def __init__(self, source: str, settings: TrackerSettings = TrackerSettings()):
        self.source = source
        self.tracker = SegmentTracker(settings)
        self._labels: dict[int, str] = {}  # class id -> label, as the model names it (bounded by its label set)
        self._last_ts: float | None = None  # the time of the last result's frame
        self._last_frame: int | None = None  # and its index
        self._last_pts: float | None = None  # the last result's pts_seconds
        self._last_epoch = 0  # and its epoch (a source's reconnects)
        self._step_s: float | None = None  # about one frame's time
        self.capacity_refused = 0  # segments left without a track id: the tracker held max_tracks
        self._full_once = False  # the tracker has been full: warned and announced, once per source
        self._apart: deque[float] = deque(maxlen=_STEPS_JUDGED)  # frame numbers (or seconds) between the last results
        self._apart_warned = False
        self._skip_warned = False  # its times skipped where its frame numbers did not: said once

    def process(self, result: FrameResult) -> FrameResult:
        if result.segment_map is None:
            raise ValueError(f"{result.source} frame {result.index} has no label map to track")
        previous = self._last_pts, self._last_epoch
        self._after_outage(result)
        self._check_apart(result, *previous)
        segments = result.segments
        update = self.tracker.update(
            result.index, result.segment_map, segments.ids, segments.class_ids, segments.isthing, segments.embeddings,
            segments.boxes, result.pts_seconds, segments.centroids,
        )
        segments.track_ids = update.track_ids
        segments.track_ages = update.track_ages
        for class_id, label in zip(segments.class_ids.tolist(), segments.labels.tolist()):
            self._labels[class_id] = label
        self._last_ts = result.capture_ts or time.time()
        self._last_frame = result.index
        result.events.extend(self._event(e, self._last_ts, result.index) for e in update.events)
        full = update.capacity_refused or any(e.reason == "capacity" for e in update.events)
        self.capacity_refused += update.capacity_refused
        if full and not self._full_once:
            self._full_once = True
            settings = self.tracker.settings
            log.warning("%s: the tracker holds tracking.max_tracks (%d) tracks from frame %d on: new things "
                        "get no id (counted in segstream_track_capacity_refused_total) — raise max_tracks, or lower "
                        "max_lost (%d) or max_lost_s so unseen tracks end sooner", self.source, settings.max_tracks,
                        result.index, settings.max_lost)
            result.events.append(Event(self.source, TRACK_CAPACITY, self._last_ts, {
                "max_tracks": settings.max_tracks, "frame": result.index, "refused": update.capacity_refused}))
        return result

    def _check_apart(self, result: FrameResult, last_pts: float | None, last_epoch: int) -> None:
        """Warn once when results keep coming further apart in frame numbers than ``max_lost``
        counts (``max_fps`` 2 of a 25 fps camera: 12 apart, against a max_lost of 2), or with
        ``max_lost_s``, further apart in seconds (a camera sending a frame every 10 s, against a
        max_lost_s of 5): a thing missed in a single result (hidden for a moment) would lose its
        id, and with ``max_lost_s`` every thing loses it from one result to the next."""
        settings = self.tracker.settings
        if self._apart_warned or self._last_frame is None:
            return
        if settings.max_lost_s is not None:
            if result.pts_seconds is None or last_pts is None or result.epoch != last_epoch:
                return
            self._apart.append(result.pts_seconds - last_pts)
            if len(self._apart) == _STEPS_JUDGED and min(self._apart) > settings.max_lost_s:
                self._apart_warned = True
                log.warning("%s: its results reach the tracker %.3g s or more apart (a slow camera, max_fps, or "
                            "frames dropped), more than tracking.max_lost_s (%g s): every thing loses its id from "
                            "one result to the next — set max_lost_s to a few times %.3g s",
                            self.source, min(self._apart), settings.max_lost_s, max(self._apart),
                            extra={"source": self.source})
            return
        self._apart.append(result.index - self._last_frame)
        if len(self._apart) == _STEPS_JUDGED and min(self._apart) > settings.max_lost:
            self._apart_warned = True
            log.warning("%s: its results reach the tracker %d or more frame numbers apart (max_fps, or frames dropped), "
                        "more than tracking.max_lost (%d) counts: a thing missed in a single result loses its id — "
                        "set tracking.max_lost_s (seconds of stream time), or max_lost to a few times %d",
                        self.source, min(self._apart), settings.max_lost, max(self._apart),
                        extra={"source": self.source})

    def _after_outage(self, result: FrameResult) -> None:
        """A source back after an outage longer than ``max_lost`` frames (its timeline says how
        long: the gap in ``pts_seconds``, over a reconnect or within one stream that paused): its
        things' tracks ended unseen, as ``lost``; what comes now starts new ones. Stuff keeps its
        id per class for the whole run. Frame numbers alone would not tell: they go on from the
        last frame delivered. With ``max_lost_s`` the tracker itself measures unseen time on the
        same timestamps, so an outage needs nothing more here."""
        last_pts, last_epoch = self._last_pts, self._last_epoch
        self._last_pts, self._last_epoch = result.pts_seconds, result.epoch
        if last_pts is None or result.pts_seconds is None:
            return
        if self.tracker.settings.max_lost_s is not None:
            return  # the tracker measures unseen time on these same timestamps, outages included
        step = result.pts_seconds - last_pts
        outage = self._step_s is not None and step > (self.tracker.settings.max_lost + 1) * self._step_s
        if (self._step_s is not None and not self._skip_warned and result.epoch == last_epoch and not outage
                and result.index == (self._last_frame or 0) + 1 and step > 2.5 * self._step_s):
            # found probing a robot's tracks: a file with 10 frames cut out, or of a variable rate, counts
            # as frames what took longer, so a thing gone 38 frames' time came back as its id within 28
            self._skip_warned = True
            log.warning("%s: its frames' times skip %.2f s from frame %d to %d (frames cut out of a file, a "
                        "variable frame rate, or frames a stream lost): tracking.max_lost (%d) counts frame numbers, "
                        "not their time, so things unseen across such a skip keep their ids longer — set "
                        "tracking.max_lost_s (seconds of the source's timestamps)", self.source, step,
                        self._last_frame, result.index, self.tracker.settings.max_lost, extra={"source": self.source})
        if outage:
            ts = result.capture_ts or time.time()
            result.events.extend(self._event(e, ts, result.index) for e in self.tracker.lose_things())
        elif result.epoch == last_epoch and step > 0:
            # The shortest recent step: drops make longer ones; a slower rate is followed.
            self._step_s = step if self._step_s is None else min(step, self._step_s * 1.05)

    def filters_changed(self, segment_filter, result: FrameResult) -> list[Event]:
        """The source's segment filters changed (a reload) from ``result`` on: the tracks of things
        of the classes they now drop end at once, as ``filtered`` (found probing a robot's tracks:
        they ended as ``lost``, ``max_lost`` later, as if hidden). A change of score, area or region
        tells no class: those tracks end as ``lost`` if nothing of them passes."""
        settings = getattr(segment_filter, "settings", None)
        if settings is None:
            return []
        ended = self.tracker.end_classes(settings.dropped_classes)
        ts = result.capture_ts or time.time()
        return [self._event(e, ts, result.index) for e in ended]

    def finish(self, reason: str = "end") -> list[Event]:
        """The source ended (or failed: ``reason="failed"``): every track ends with that reason,
        at its last frame's time."""
        ts = self._last_ts if self._last_ts is not None else time.time()
        return [self._event(e, ts, self._last_frame) for e in self.tracker.finish(reason)]

    def _event(self, event: TrackEvent, ts: float, frame: int | None) -> Event:
        data = {
            "track_id": event.track_id,
            "class_id": event.class_id,
            "label": self._labels.get(event.class_id, str(event.class_id)),
            "isthing": event.isthing,
            "first_frame": event.first_frame,
            "last_frame": event.last_frame,
            "frames_seen": event.frames_seen,
            "frame": frame,  # the frame the event was written at: it follows that frame's entry
        }
        if event.kind == "ended":
            data["reason"] = event.reason
        elif event.first is not None:  # which of first_frame's segments it began as (tentative there: track_id -1)
            data["first_segment"] = event.first.segment_id
            data["first_box"] = None if event.first.box is None else list(event.first.box)
            data["first_centroid"] = None if event.first.centroid is None else [round(v, 1) for v in event.first.centroid]
        return Event(self.source, TRACK_STARTED if event.kind == "started" else TRACK_ENDED, ts, data)


def tracker_settings(cfg) -> TrackerSettings:
    """The settings of a ``tracking:`` config section."""
    return TrackerSettings(**cfg.model_dump(exclude={"enabled"}))


def tracking_stages(cfg) -> Sequence:
    """The per-source stage factories a ``tracking:`` section asks for (none when disabled)."""
    if not cfg.enabled:
        return []
    settings = tracker_settings(cfg)
    return [lambda source: TrackingStage(source, settings)]
