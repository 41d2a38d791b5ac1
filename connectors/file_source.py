"""Video files decoded with PyAV (FFmpeg): any container and codec FFmpeg reads."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from segstream.connectors.av_input import AVInput, CaptureThread, DisplayOrientation, InputInfo, InputTimeout
from segstream.connectors.clock import LONE_JUMP_S, Pacer, Timeline, out_of_line_mended
from segstream.connectors.colour import ColourConversion
from segstream.connectors.concat_lists import concat_fault, concat_list
from segstream.connectors.deinterlace import Deinterlace, Deinterlacer
from segstream.connectors.errors import SourceError
from segstream.connectors.frame_rate import FrameRateCap
from segstream.connectors.frames import Frame, times_at
from segstream.connectors.source import not_a_video_file, special_file
from segstream.connectors.urls import redact_url, url_scheme

_POLL_S = 0.1  # how often a wait for the next frame checks for close()
log = logging.getLogger(__name__)


def http_file_options(path: str, open_timeout_s: float = 10.0) -> dict[str, str]:
    """FFmpeg's http options for a video file read over http(s) (an object store's), none for a
    local path.

    A request that fails on the connection is made again on a new one: FFmpeg 8's http reuses a
    connection whose HTTP/1.1 answer did not say ``Connection: close``, though our request asked
    the server to close it (Python's http.server and many others close without saying so); the
    next request fails on the closed connection, and a seek that fails so reads on from another
    offset: an MP4 with its index at the end lost its first keyframe groups, unnoticed (10 of 40
    frames, measured with PyAV 18.1).

    A connection lost before the end is resumed with a Range request from where it stopped
    (``reconnect``; every object store serves ranges).

    A 429 or 5xx answer (an object store's SlowDown, 503) is asked again after 0, 1 and 3 s, or
    after the server's Retry-After where that is within 4 s: bounded, 4 s of waits in all and
    at most half the open timeout (a refused connection is retried too: with an open timeout of
    3 s it read as a timeout, found in review), after which the error names the status
    (``AVInput``).
    """
    if url_scheme(path) not in ("http", "https"):
        return {}
    waits = str(max(0, min(4, int(open_timeout_s // 2))))  # FFmpeg checks the total before each wait
    return {
        "reconnect": "1",
        "reconnect_on_network_error": "1",
        "reconnect_on_http_error": "429,5xx",
        "reconnect_delay_max": waits,
        "reconnect_delay_total_max": waits,
        "reconnect_max_retries": "3",
    }


class Coverage:
    """What one pass over a file delivered, held against what its container says it holds, so a
    damaged or truncated file is not taken for a whole one: its frames end well before the
    video's duration (truncated; the container's counts only where the video is all it holds, and
    only a length the file states, not one FFmpeg estimates from its timestamps: MPEG-TS's),
    or its decoder's input lost frames in gaps of a steady frame rate (``AVInput.frames_lost``; a
    variable rate's gaps are its own)."""

    def __init__(self):
        self.first: float | None = None
        self.last: float | None = None
        self.step_s = 0.0
        self.leading = 0  # frames rejected before the first (decode errors already)

    def add(self, seconds: float | None, step_s: float, skipped: int = 0) -> None:
        if seconds is None or step_s <= 0:
            return
        if self.first is None:
            self.first, self.leading = seconds, skipped
        self.last, self.step_s = max(seconds, self.last or seconds), step_s

    def missing(self, reading: AVInput) -> tuple[int, str]:
        """About how many frames are missing, and why (0 and "" when none seem to be)."""
        # one frame alone is a thin case to call a file damaged for, unless at its end: the frames a
        # cut left out there are shown before its last one (B-frames), which no recorder skips
        cut = reading.frames_cut
        within = reading.frames_lost - cut if reading.frames_lost - cut > 1 else 0
        lost = within + cut
        said = [f"about {within} frames missing in gaps of its steady frame rate"] if within else []
        said += [f"{cut} frame{'s' if cut > 1 else ''} shown before its last one never came (cut off mid-file?)"] if cut else []
        gaps = "; ".join(said)
        duration_s = reading.duration_s
        # without the video's own length, the container's may be its longer audio's; a length only
        # estimated from the timestamps holds no truncation (a cut TS ends where it lists): not judged
        if self.first is None or duration_s is None or not reading.video_duration or not reading.length_listed:
            return lost, gaps
        covered = self.last + self.step_s - self.first
        # the packets rejected after the last frame are decode errors already (found probing: a
        # file whose last 40% was zeroed had its 47 lost frames counted twice), as are the frames
        # rejected before the first (a recording cut mid-GOP: its first frames' references)
        counted_s = (reading.rejected_at_end + self.leading) * self.step_s
        if duration_s - covered - counted_s > max(0.5, 0.05 * duration_s):
            short = max(0, round((duration_s - covered - counted_s) / self.step_s))
            ends = f"its frames end after {covered:.2f} s of the {duration_s:.2f} s it lists (truncated?)"
            return lost + short, f"{gaps}; {ends}" if gaps else ends
        return lost, gaps


class FileSource:
    """Frames of one video file (a local path, or an http(s) URL of a file), in presentation order
    and displayed orientation.

    ``realtime`` paces frames at the file's own rate (by PTS), standing in for a camera, and makes
    the source ``live``; a jump in the timestamps re-anchors the pacing instead of sleeping
    through the gap. ``loop`` starts over at the end: PTS keep increasing (each pass is placed one
    frame after the previous one), ``Frame.index`` counts on and ``Frame.epoch`` counts the
    passes. Packets the decoder rejects, and frames it decodes marked corrupt, are skipped and
    counted in ``decode_errors``, and leave a gap in ``Frame.index`` (an index is the frame's place
    in the file), except those before a pass's first frame (``leading_errors``: a recording cut
    mid-GOP, whose first frames' references are not in it), which take no number: a file's first
    frame is 0, as FFmpeg, players and editors number it, and frame N is FFmpeg's frame N
    (``select=eq(n,N)``) up to the first frame lost after it. Frames lost before the decoder, and
    a file that ends early, are told at the end of a pass (``frames_missing``, ``damage``).
    ``max_frames`` counts frames delivered. A local file is opened in the constructor, so that a
    bad path fails before the pipeline starts; a URL is opened by ``frames()``. Reading runs on a
    thread of its own (``CaptureThread``), so ``close()`` ends ``frames()`` at once whatever
    FFmpeg is doing. ``decode_size``, set before
    ``frames()`` (the runtime does, for ``engine.resize_in_decoder``), has frames converted at
    the size the model scales them to (see ``AVInput``). Frames come as SDR RGB (HDR
    tone-mapped, ``ColourConversion``); ``deinterlace`` (auto: the frames flagged interlaced;
    True: all; False: none) has interlaced frames made whole (``Deinterlacer``).
    """

    def __init__(
        self,
        name: str,
        path: str,
        realtime: bool = False,
        loop: bool = False,
        max_frames: int | None = None,
        open_timeout_s: float = 10.0,
        read_timeout_s: float = 10.0,
        max_fps: float | None = None,
        deinterlace: Deinterlace = "auto",
    ):
        self.name = name
        self.path = str(path)
        self.shown = redact_url(self.path)
        self.live = realtime
        self.loop = loop
        self.max_frames = max_frames
        self.timeout = (open_timeout_s, read_timeout_s)
        self.pacer = Pacer() if realtime else None
        self._finished_errors = 0  # decode errors of passes already read
        self._cap = FrameRateCap(max_fps) if max_fps is not None else None  # one schedule over all passes
        self.frames_missing = 0  # about how many frames a damaged or truncated file lacks (Coverage)
        self.leading_errors = 0  # of the decode errors, those before the last pass's first frame (not numbered)
        self.damage = ""  # and why, for people
        self.timestamps_mended = 0  # frames whose timestamp alone was out of line, placed between their neighbours'
        self._said_mended = False
        self._capture: CaptureThread | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._orientation = DisplayOrientation()  # read once for all the loops of the file
        self._colour = ColourConversion()  # and its colours and fields, told once
        self._fields = Deinterlacer(deinterlace)
        self.decode_size: Callable[[int, int], tuple[int, int]] | None = None
        self.info: InputInfo | None = None  # what the open file delivers (codec, frame rate), once opened
        if "://" not in self.path and (kind := special_file(self.path)) is not None:
            # opening it would wait for a writer inside FFmpeg, where no signal reaches
            raise SourceError(f"source {name}: {not_a_video_file(self.shown, kind)}")
        self._input: AVInput | None = None if "://" in self.path else self._open()

    @property
    def decode_errors(self) -> int:
        capture = self._capture
        return self._finished_errors + (capture.decode_errors if capture is not None else 0)

    @property
    def frames_skipped(self) -> int:
        """Frames decoded and left out on purpose, over ``max_fps`` (never converted nor counted
        as decoded by the runtime)."""
        return self._cap.skipped if self._cap is not None else 0

    def _named(self, error: SourceError) -> SourceError:
        """``error`` as this source's, named once: an open fails on the capture thread (named
        there) and is raised again by ``wait_open``."""
        text, prefix = str(error), f"source {self.name}: "
        return SourceError(text if text.startswith(prefix) else prefix + text)

    def _open(self) -> AVInput:
        try:
            # a concat list's parts by any name (FFmpeg's safe mode refused a drone's 'DJI 0001.MP4' and
            # absolute paths: "Operation not permitted", found in review), for a list named as one: a
            # file of another name that merely begins as one (an upload's .mp4) keeps FFmpeg's safe mode
            listed = self.path.lower().endswith((".ffconcat", ".ffcat")) and concat_list(self.path)
            options = {"safe": "0"} if listed else http_file_options(self.path, self.timeout[0])
            opened = AVInput(self.path, self.shown, options=options,
                             timeout=self.timeout,
                             orientation=self._orientation, colour=self._colour, fields=self._fields,
                             scale=self.decode_size)
        except SourceError as error:
            if (fault := self._part_at_fault()) is not None:  # a concat list's first part, most likely
                raise SourceError(f"source {self.name}: cannot open '{self.shown}' (a concat list): {fault}") from None
            raise self._named(error) from None
        opened.cap = self._cap
        return opened

    def _part_at_fault(self):
        """Of a local concat list that failed, its part at fault (``concat_fault``); else None."""
        return concat_fault(self.path) if "://" not in self.path and concat_list(self.path) else None

    def frames(self) -> Iterator[Frame]:
        timeline = Timeline()
        index = delivered = 0
        epoch = 0
        try:
            while not self._closed.is_set():
                with self._lock:
                    if self._closed.is_set():
                        return
                    opened, self._input = self._input, None
                    if opened is not None:
                        opened.scale = self.decode_size
                        opened.cap = self._cap
                    capture = self._capture = CaptureThread(self.name, (lambda: opened) if opened else self._open)
                    capture.start()
                if (reading := self.wait_open(capture)) is None:
                    return
                self.info = reading.info
                passed, errors_before = 0, self._finished_errors
                coverage = Coverage()
                for picture in out_of_line_mended(self._pictures(capture), self._mended):
                    if self._closed.is_set():  # (a picture held for its timestamp comes after the close)
                        return
                    step_s = picture.step * picture.time_base
                    coverage.add(None if picture.pts is None else float(picture.pts * picture.time_base), float(step_s),
                                 picture.skipped)
                    if passed == 0:  # decode errors before the first frame: none of them is numbered
                        self.leading_errors = picture.skipped
                    else:  # an index is the frame's place in the file, rejected ones counted
                        index += picture.skipped
                    pts = timeline.place(picture.pts, picture.time_base, picture.step)
                    if picture.image is None:  # over max_fps: its place counted, the frame left out
                        index += 1
                        passed += 1
                        continue
                    pts_seconds = timeline.seconds(pts)
                    # kept frames over max_fps are a period apart: no discontinuity for the pacer
                    pace_s = max(float(step_s), self._cap.period_s) if self._cap is not None else float(step_s)
                    if self.pacer is not None and not self.pacer.wait(pts_seconds, pace_s, self._closed):
                        return
                    self.info = reading.info  # with what its frames showed (HDR, interlaced)
                    # when decoded, or (played in real time) now: the wall clock's reading, and the monotonic's with it
                    wall, made = (picture.capture_wall, picture.decoded_at) if self.pacer is None else (time.time(), 0.0)
                    yield Frame(
                        source=self.name,
                        index=index,
                        image=picture.image,
                        pts=pts,
                        time_base=timeline.time_base,
                        pts_seconds=pts_seconds,
                        capture_wall=wall,
                        times=times_at(wall, made),
                        epoch=epoch,
                        sender_wall=picture.sender_wall,
                        size=picture.size,
                        sample_aspect=picture.sample_aspect,
                    )
                    index += 1
                    passed += 1
                    delivered += 1
                    if (self.max_frames is not None and delivered >= self.max_frames) or self._closed.is_set():
                        return
                self._retire()
                self._judge(coverage, reading, passed + self._finished_errors - errors_before)
                if self._closed.is_set():
                    return
                if passed == 0:  # not a file that ended: nothing of it could be read
                    rejected = self._finished_errors - errors_before
                    raise SourceError(f"source {self.name}: '{self.shown}' has no decodable video frames" + (
                        f" (the decoder rejected all {rejected} of its frames)" if rejected else ""))
                if not self.loop:
                    return
                epoch += 1
                timeline.restart()
        finally:
            self._retire()

    def _mended(self, picture, pts: int, given: int) -> None:
        """A picture's PTS out of line with those around it was given another (``out_of_line_mended``):
        one far ahead (a corrupt timestamp) said once a file, the others (a join's overlap) for debugging."""
        at_s, given_s = float(pts * picture.time_base), float(given * picture.time_base)
        self.timestamps_mended += 1
        ahead = at_s - given_s > LONE_JUMP_S
        (log.warning if ahead and not self._said_mended else log.debug)(
            "source %s: '%s': a frame's timestamp (%.3f s) is out of line with those of the frames around it: %s; "
            "it is placed between them (%.3f s)", self.name, self.shown, at_s,
            "a corrupt timestamp" if ahead else "a join's overlap or a repeat", given_s)
        self._said_mended = self._said_mended or ahead

    def _judge(self, coverage: Coverage, reading: AVInput, seen: int) -> None:
        """After a whole pass: say (once per file) when frames seem to be missing."""
        if self._closed.is_set():
            return
        missing, why = coverage.missing(reading)
        if missing == 0 and reading.format_name == "concat" and (fault := concat_fault(self.path, seen)) is not None:
            # a concat list's part cut short or without video: FFmpeg read it as a shorter one (its
            # frames lacking where its index says, else at least one: the part's)
            missing, why = max(1, fault.lacking), f"a part of the list is damaged ({fault})"
        if missing > 0 and self.frames_missing == 0:
            log.warning("source %s: '%s' looks damaged: %s", self.name, self.shown, why)
            self.damage = why
        self.frames_missing += missing

    def wait_open(self, capture: CaptureThread) -> AVInput | None:
        try:
            return capture.wait_open(self.timeout[0], self._closed, self.shown)
        except SourceError as error:
            raise self._named(error) from None

    def _pictures(self, capture: CaptureThread):
        """The pass's pictures until its end; a read that delivers nothing for the read timeout
        fails the source."""
        waiting_since = time.monotonic()
        while True:
            try:
                picture = capture.next(_POLL_S)
            except EOFError:
                return
            except SourceError as error:
                if (fault := self._part_at_fault()) is not None:  # FFmpeg's error names the list alone
                    raise SourceError(f"{self._named(error)} ({fault})") from None
                raise self._named(error) from None
            if self._closed.is_set():
                return
            if picture is None:
                idle = time.monotonic() - max(capture.last_read, waiting_since)
                if idle > self.timeout[1]:
                    raise InputTimeout(
                        f"source {self.name}: no data from '{self.shown}' for {self.timeout[1]:g} s (read timeout)",
                        "read",
                        self.timeout[1],
                    )
                continue
            yield picture
            waiting_since = time.monotonic()

    def _retire(self) -> None:
        with self._lock:
            capture, self._capture = self._capture, None
            if capture is not None:
                self._finished_errors += capture.decode_errors
                capture.abandon()

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            # before frames() started, the opened file is ours to close; later its thread closes it
            if self._input is not None:
                self._input.close()
                self._input = None
