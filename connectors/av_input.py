"""One FFmpeg input opened with PyAV — a video file, a stream URL or a V4L2 device — decoded to
RGB frames in their displayed orientation, and the thread that reads it.

The file, stream and camera sources all decode through ``AVInput``:

- Rotation metadata (the display matrix of phone clips) is applied, so frames, masks and
  entries come out the way a player shows them.
- The decoder is never frame-threaded: frame threading hides the errors of damaged packets
  (and on some inputs drops their frames) and delays every frame by a frame per thread. Slice
  threading loses nothing, so every packet the decoder rejects is counted in ``decode_errors``,
  as is every frame it decodes marked corrupt (pixels made up: concealed damage, a missing
  reference), which is left out.
- Frames that never reached the decoder (packets a network lost, a damaged file's) are counted
  in ``frames_lost`` where the input's frames come at one steady rate (``SteadyGaps``); every
  picture says how many rejected frames (and, for a stream, lost ones) came just before it
  (``Picture.skipped``).
- For RTP (RTSP) inputs with RTCP sender reports, FFmpeg attaches the sender's wall-clock time
  of each packet as producer reference time (``AV_PKT_DATA_PRFT``); frames carry it as
  ``sender_wall``, so consumers can align cameras on the cameras' own clocks.
- Errors never quote FFmpeg's message text: it contains the URL, credentials included. They
  name the input by its redacted form (``redact_url``).

``CaptureThread`` runs an input's blocking open and reads on a thread of its own. Whoever
consumes its frames can then give up at its own deadline, or at once on ``close()``, whatever
FFmpeg is doing: PyAV cannot interrupt a blocking open or read on request, only when its timeout
runs out. A thread given up on ends by itself when FFmpeg's timeout returns or its next packet
comes, and closes its input on the way out.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import logging
import math
import os
import queue
import re
import socket
import statistics
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from urllib.parse import urlsplit

import av
import numpy as np

from segstream.connectors.catch_up import CatchUp
from segstream.connectors.colour import ColourConversion
from segstream.connectors.deinterlace import Deinterlacer, field_order
from segstream.connectors.errors import THREAD_LIMIT_HINT, ResourceLimit, SourceError, thread_start_failed
from segstream.connectors.frame_rate import FrameRateCap
from segstream.connectors.ffmpeg_relay import RELAYED_SCHEMES, FFmpegRelay, demuxer_options, refused_caller, relay_program
from segstream.connectors.remote_files import http_status, web_page
from segstream.connectors.threads import NamedThread
from segstream.connectors.urls import exclusive_input, redact_url, url_scheme

logger = logging.getLogger("segstream.sources")

_NO_TIMESTAMPS = 0x80  # AVFMT_NOTIMESTAMPS: the format carries no timestamps
_INDEXED_FORMATS = {"mov", "mp4", "matroska", "webm"}  # FFmpeg's names of formats with an index of every sample
# Formats that state no length: FFmpeg estimates it from the timestamps of the file's first and last
# packets (MPEG-TS, MPEG-PS, Ogg) or from its bitrate (raw bitstreams). A copy cut short is its own
# length to them, and one corrupt timestamp makes the length anything (found probing an archive: a TS
# with flipped bytes listed 41.5 s for its 4.9 s, and was called truncated, 367 frames missing).
_ESTIMATED_LENGTH_FORMATS = {"mpegts", "mpeg", "ogg", "h264", "hevc", "vvc", "mpegvideo", "m4v", "mjpeg", "vc1", "obu",
                             "ivf"}
_PRFT = struct.Struct("=qi")  # AVProducerReferenceTime: int64 wallclock (us since the Unix epoch), int flags
_DISPLAY_MATRIX = struct.Struct("=9i")
_FIXED_ONE = 1 << 16  # the display matrix's 2x2 part is 16.16 fixed point
# Where a codec's stream starts, in an MPEG-TS's Annex B byte stream: H.264's SPS NAL unit,
# HEVC's VPS, MPEG-2's sequence header (a codec not listed: the packet is left out)
_SEQUENCE_HEADERS = {
    "h264": re.compile(rb"\x00\x00\x01[\x07\x27\x47\x67]"),
    "hevc": re.compile(rb"\x00\x00\x01\x40\x01"),
    "mpeg2video": re.compile(rb"\x00\x00\x01\xb3"),
}


@dataclass(frozen=True, slots=True)
class InputInfo:
    """What an opened input delivers: frame size (as decoded, before any rotation), codec, pixel
    format, frame rate; once frames came, ``hdr`` (``pq`` or ``hlg``: tone-mapped to SDR for
    the model), ``interlaced`` (the field order, ``tff``, ``bff`` or ``unknown``, of frames
    flagged interlaced) and ``deinterlaced`` (whether they were made whole). ``stream``: the
    video stream read, as ``#0 320x240 h264`` (its index in the input); ``other_streams``: the
    input's other video streams, not read (a camera's sub stream, a dashcam's rear camera)."""

    width: int
    height: int
    codec: str
    pixel_format: str | None
    fps: float | None
    hdr: str | None = None
    interlaced: str | None = None
    deinterlaced: bool = False
    stream: str = ""
    other_streams: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """The keys of a ``streaming`` event; ``hdr``, ``interlaced`` and ``deinterlaced``, and the
        video streams read and not read, only where there is something to say."""
        said = {
            "width": self.width,
            "height": self.height,
            "codec": self.codec,
            "pixel_format": self.pixel_format,
            "fps": None if self.fps is None else round(self.fps, 3),
        }
        if self.hdr is not None:
            said["hdr"] = self.hdr
        if self.interlaced is not None or self.deinterlaced:
            said.update(interlaced=self.interlaced, deinterlaced=self.deinterlaced)
        if self.other_streams:
            said.update(video_stream=self.stream, other_video_streams=list(self.other_streams))
        return said


@dataclass(slots=True)
class Picture:
    """One decoded frame before a source numbers it: RGB image (as displayed), its PTS in
    ``time_base`` units (None when the input has none), one frame's duration in the same units,
    Unix time it left the decoder, and the sender's Unix time of it when the stream says.
    ``size``: the frame's displayed (height, width) when ``image`` was scaled down in the decoder.
    ``skipped``: frames of the input just before this one that the decoder rejected, or (a
    stream's) that were lost before it (a source's frame index counts them, so an index is the
    frame's place in the input; a file source's not those before its first frame)."""

    image: np.ndarray | None  # None: over the source's max_fps (``FrameRateCap``), never converted
    pts: int | None
    time_base: Fraction
    step: int
    capture_wall: float
    sender_wall: float | None
    size: tuple[int, int] | None = None
    skipped: int = 0
    held_s: float = 0.0  # the reads stood still that long since the previous picture (a consumer's back-pressure)
    decoded_at: float = 0.0  # monotonic time it left the decoder (``capture_wall`` is the Unix time)
    gap_s: float = 0.0  # the silence before it its timestamps show, added to the input's ``gap_s``
    left_out: int = 0  # frames just before it left undecoded to catch up with live (``CatchUp``)
    sample_aspect: Fraction | None = None  # a pixel's width:height as displayed, when not square


_TLS_SCHEMES = ("https", "rtsps", "rtmps", "tls")  # FFmpeg's TLS under them takes tls_verify and ca_file


# Above this a "rate" is a time base, not frames per second: FFmpeg's guess for an RTSP camera read
# again after a stall, its probe fed a burst of the stalled frames (found probing a port's cameras:
# "at 90000 fps", which the SegstreamCameraSlow alert compared the real rate with).
MAX_PLAUSIBLE_FPS = 1000


def frame_rate(stream) -> Fraction | None:
    """The video stream's frame rate, None where FFmpeg knows none that could be one: its guess
    first (the average rate of a file with a gap in its timestamps is far too low), then the
    average, then the base rate, each taken only below ``MAX_PLAUSIBLE_FPS``."""
    for rate in (stream.guessed_rate, stream.average_rate, stream.base_rate):
        if rate and 0 < rate <= MAX_PLAUSIBLE_FPS:
            return Fraction(rate)
    return None


class SteadyGaps:
    """Frames an input lost before its decoder saw them. Where the recent frames came at one
    steady rate (of the last ``WINDOW`` intervals, at least ``MIN_INTERVALS``, every one a whole
    number of frames, three in four exactly one), a burst of gaps (one, or several back to back)
    of two frames up to a second's worth in all holds frames that never arrived, when the interval
    just before it and the one just after it are one frame: the burst's frames are counted at the
    picture after it (the frame index then shows the gap a picture late). Not a loss: a longer
    gap or burst (a pause: a camera that sends on motion; a change of rate: night mode, a smart
    codec's skipping), a burst of three or more gaps all of one size but one at most (a while at
    a lower rate: half the rate for half a second), a variable rate's intervals. Timestamps that go back (a wrap,
    a discontinuity) start the judgment afresh.

    With ``hindsight`` (a file's, whose losses are told at its end), gaps among the first
    ``MIN_INTERVALS`` intervals, before the rate showed, count once ``MIN_INTERVALS`` intervals of
    one frame follow them and the window is steady with them (not so a slow intro: ten frames at
    3 fps before a 30 fps file's steady rate).

    With ``unit_s`` (the seconds of a PTS unit), a silence of more than a second up to
    ``max_silence_s`` (a stream's read timeout) that no frames were counted for is added to
    ``gap_s``: lost or a pause, it is told in seconds rather than guessed as frames. A silence is
    the time past the stream's own pace, the median of its last ``PACES`` intervals (its frame
    rate's until it has some; an input of unknown rate, an MJPEG camera's, none before its first
    interval): a camera that sends a frame every 3 s is not silent between its frames, and 5 s
    without one after such frames are a silence of 2 s."""

    WINDOW = 50
    MIN_INTERVALS = 10
    STEADY = 0.75
    PACES = 9

    def __init__(self, step: int, fps: float | None, unit_s: float = 0.0, max_silence_s: float = 0.0,
                 hindsight: bool = False):
        self.step = step
        self.max_gap = max(2, round(fps or 25))
        self.unit_s, self.max_silence_s = unit_s, max_silence_s
        self.rate_known = fps is not None
        self.paces: deque[float] = deque(maxlen=self.PACES)  # the last intervals, in seconds a frame
        self.hindsight = hindsight
        self.gap_s = 0.0  # silences of more than a second up to ``max_silence_s``, not counted as frames
        self.last: int | None = None
        self.recent: deque[int] = deque(maxlen=self.WINDOW)  # intervals in frames; 0: not a whole number
        self.pending = 0  # the burst's frames: lost if the next interval is one frame
        self.span = 0  # the burst's length in frames: past a second's worth, a change of rate
        self.sizes: Counter[int] = Counter()  # its gaps' sizes, and how many gaps
        self.gaps = 0
        self.early = 0  # gaps before the rate showed (``hindsight``): lost once the rate shows steady
        self.calm = 0  # one-frame intervals since the last gap

    def lost_before(self, pts: int | None, rejected: int) -> int:
        """Frames lost just before the picture at ``pts``, besides the ``rejected`` ones."""
        if pts is None:
            return 0
        if self.last is None or pts < self.last:
            self.last = pts
            self.recent.clear()
            self.paces.clear()
            self.pending = self.span = self.early = self.calm = self.gaps = 0
            return 0
        if pts == self.last:
            return 0
        frames = (pts - self.last) / self.step
        whole = round(frames) if abs(frames - round(frames)) <= 0.02 else 0
        missed, lost, counted = max(0, whole - 1 - rejected), 0, False
        self.calm = self.calm + 1 if whole == 1 else 0
        if whole == 1:  # the rate went on: the burst before held lost frames, unless a lower rate's
            lower_rate = self.gaps >= 3 and self.sizes.most_common(1)[0][1] >= self.gaps - 1
            lost = 0 if lower_rate else self.pending
            self.pending = self.span = self.gaps = 0
            if self.early and self.calm >= self.MIN_INTERVALS:
                lost, self.early = lost + (self.early if self._steady() else 0), 0
        elif whole >= 2 and self.span + whole <= self.max_gap and (self.span or self._steady()):
            if not self.span:
                self.sizes = Counter()
            self.pending, self.span, counted = self.pending + missed, self.span + whole, True
            self.sizes[whole] += 1
            self.gaps += 1
        elif self.hindsight and 2 <= whole <= self.max_gap and len(self.recent) < self.MIN_INTERVALS:
            self.early, counted = self.early + missed, True
        else:  # a pause, a change of rate, a variable rate: nothing lost
            self.pending = self.span = self.early = self.gaps = 0
        if self.unit_s and self.max_silence_s:
            self._silence((pts - self.last) * self.unit_s, 1 + rejected, counted)  # the rejected came
        self.recent.append(whole)
        self.last = pts
        return lost

    def lost_at_end(self) -> int:
        """With ``hindsight``: the frames of the burst of gaps the input ended in, which no interval
        of one frame came to confirm. A recording cut mid-file ends so: the B-frames shown before
        its last decoded frame had their packets after the cut (found probing: a TS cut mid-GOP
        ended two frames short of its last one, and nothing counted them)."""
        if not self.hindsight or not self.pending:
            return 0
        lower_rate = self.gaps >= 3 and self.sizes.most_common(1)[0][1] >= self.gaps - 1
        lost = 0 if lower_rate else self.pending
        self.pending = self.span = self.gaps = 0
        return lost

    def _silence(self, interval_s: float, frames: int, counted: bool) -> None:
        """Add to ``gap_s`` what an interval of ``frames`` frames had past the stream's pace."""
        step_s = self.step * self.unit_s
        pace_s = max(step_s, statistics.median(self.paces)) if self.paces else step_s if self.rate_known else None
        self.paces.append(interval_s / frames)
        if counted or pace_s is None or interval_s - step_s * frames > self.max_silence_s:
            return  # (a longer jump of the timestamps alone is a new sender's)
        if (silence_s := interval_s - pace_s * frames) > 1.0:
            self.gap_s += silence_s

    def _steady(self) -> bool:
        recent = self.recent
        if len(recent) < self.MIN_INTERVALS or recent[-1] != 1 or 0 in recent:
            return False
        return recent.count(1) >= self.STEADY * len(recent)


class BestEffortTimestamp:
    """A decoded frame's presentation time when its PTS cannot be trusted, by FFmpeg's best-effort
    rule: count how often the frames' PTS and their DTS each failed to increase, and take the PTS
    unless it failed more often than the DTS (or is missing; then the DTS). Where the PTS failed
    more often than once more, a frame without a DTS has no time (None) rather than its wrong PTS.

    An AVI's H.264 with B-frames carries its PTS in decode order (1, 4, 3, 5, 2, ...) while its
    DTS rise steadily; taken as they came, every PTS that stepped back was moved a frame after the
    last one, and a 2 s clip ran for 4.5 s. Files with sound PTS (MP4, MKV, TS; a wrap or a
    discontinuity sets both counts back alike) keep their PTS."""

    def __init__(self) -> None:
        self.pts_faults = self.dts_faults = 0
        self._last_pts: int | None = None
        self._last_dts: int | None = None

    @property
    def by_pts(self) -> bool:
        """Whether pictures are timed by their PTS now."""
        return self.pts_faults <= self.dts_faults

    def choose(self, pts: int | None, dts: int | None) -> int | None:
        if dts is not None:
            self.dts_faults += self._last_dts is not None and dts <= self._last_dts
            self._last_dts = dts
        if pts is not None:
            self.pts_faults += self._last_pts is not None and pts <= self._last_pts
            self._last_pts = pts
        if self.pts_faults <= self.dts_faults:
            return pts if pts is not None else dts
        # PTS out of order again and again (an AVI's, in decode order): a frame without a DTS (the
        # decoder's last, flushed at the end) is taken as unknown, which a timeline places one frame
        # after the last; PTS that failed once (two files joined with an overlap) still time it (as
        # unknown the last two frames of such a join were placed at its first part's rate, found probing)
        if dts is None and self.pts_faults == self.dts_faults + 1:
            return pts
        return dts


STALE_WINDOW = 16  # pictures after a rejected packet in which one whose PTS falls back into the damage is a leftover


class InputTimeout(SourceError):
    """An open or a read ran out of time; ``phase`` is ``open`` or ``read``."""

    def __init__(self, message: str, phase: str, timeout_s: float):
        super().__init__(message)
        self.phase = phase
        self.timeout_s = timeout_s


class InputHungUp(SourceError):
    """The far end took the connection, then closed or reset it, or said nothing usable: a
    camera booting or at its session limit. A live source retries it, as any drop."""


class InputUnsupported(SourceError):
    """The input can never be read by this FFmpeg build (no such protocol or demuxer):
    retrying will not help."""


class InputChanged(SourceError):
    """A stream's decoder, having decoded it, makes no picture of a second of packets in a row:
    another sender took over the address with another codec or stream parameters (an encoder
    restarted as HEVC into the port an H.264 one used), which a decoder set up at the open cannot
    read (it rejects the packets, or swallows them). Or, where none of the packets was flagged a
    keyframe, one lost on the way (a lossy RTP link) left it without references: the message says
    which. A new decoder reads either from the next keyframe. ``unread``: packets this session
    counted lost itself (in ``decode_errors``; ``AVInput`` hands them over instead, and says 0);
    ``carried``: those packets (and the one of the last picture, which may hold the new sender's
    first keyframe behind the old one's last frame), handed to the input opened next, whose new
    decoder decodes them first (``AVInput.carried``) and counts what it cannot."""

    def __init__(self, message: str, unread: int, carried: tuple[bytes, ...] = ()):
        super().__init__(message)
        self.unread = unread
        self.carried = carried


class InputUnreachable(SourceError):
    """No server took the connection: refused (nothing listens on the port: a camera rebooting,
    a server down) or no route to the host."""


class InputRefused(SourceError):
    """The input is not there or not ours: the server refused the credentials or access (401,
    403), or has nothing at that path (404), or the device or file does not exist or may not be
    read, or what is there is no video (a web page, a device that is no camera). The same URL
    gets the same answer until someone changes it, the server, its permissions, or plugs the
    device in. ``missing``: not there (rather than refused)."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


class InputPortInUse(InputRefused):
    """A source that listens (a UDP port, a TCP or SRT listener) found its port held by another
    process: another run listening there, most often, which keeps it until it stops."""

    def __init__(self, shown: str):
        try:
            port = urlsplit(shown).port
        except ValueError:
            port = None
        proto = "TCP" if url_scheme(shown) in ("tcp", "rtsp", "rtmp", "http") else "UDP"
        held = f"{proto} port {port}" if port is not None else "its port"
        super().__init__(f"cannot open '{shown}': port in use — {held} is held by another process (another run "
                         "listening on it?): stop that one, or give this source a port of its own")
        self.port = port


class DisplayOrientation:
    """The transform a video's display matrix asks for, remembered across the inputs one source
    opens of the same video (each loop of a file; a camera's next session may be another stream,
    so it gets a new one).

    The matrix is read again only when a frame's rotation changes: PyAV's side-data container
    forms a reference cycle with its frame, so every read keeps a whole decoded frame alive until
    the next full garbage collection (25 MB a 4K frame; reading it for every frame grew RSS by
    gigabytes in a minute, and once per loop of a short clip by 4 MB a minute). (Collecting at
    that point instead paused every thread at each reconnect long enough to break the stream's
    next session.)
    """

    def __init__(self) -> None:
        self._known: tuple[float, Callable[[np.ndarray], np.ndarray]] | None = None
        self._warned = False
        self.transposes = False  # whether the last transform turns stored rows into columns

    def transform(self, frame: av.VideoFrame, shown: str) -> Callable[[np.ndarray], np.ndarray]:
        rotation = frame.rotation  # computed without the side-data container
        known = self._known
        if known is not None and known[0] == rotation:
            return known[1]
        entries = _display_matrix(frame, rotation)
        orient: Callable[[np.ndarray], np.ndarray] = _identity
        if entries is not None:
            orient = display_transform(entries) or _identity
            if orient is _identity and rotation % 90:
                if not self._warned:
                    self._warned = True
                    logger.warning("'%s' asks for a rotation that is not a multiple of 90 degrees; frames are "
                                   "left as stored", shown)
        self._known = (rotation, orient)
        self.transposes = orient(np.zeros((2, 1, 1), np.uint8)).shape[0] == 1
        return orient


def video_stream(container, shown: str):
    """The video stream FFmpeg would pick (``av_find_best_stream``: the default one, with most
    frames probed, the highest bit rate), never an attached picture (a cover): a file whose first
    video stream was its cover was read as one frame. ``SourceError`` when there is none. The
    others are ``other_video_streams``'."""
    streams = container.streams
    moving = _moving(container)
    if not moving:
        cover = " (only a cover picture)" if streams.video else ""
        raise SourceError(f"'{shown}' has no video stream{cover}")
    best = streams.best("video")
    return next((s for s in moving if best is not None and s.index == best.index), moving[0])


def other_video_streams(container, chosen) -> tuple[str, ...]:
    """The input's video streams other than ``chosen``, as ``stream_text`` says them: a camera's
    second (sub) stream, a dashcam's rear camera, not read (and said so, not passed over unseen)."""
    return tuple(stream_text(s) for s in _moving(container) if s.index != chosen.index)


def _moving(container) -> list:
    return [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]


def stream_text(stream, turned: bool = False) -> str:
    """``#0 320x240 h264``: its index in the input, size (when known yet) and codec; ``turned``
    (its frames displayed a quarter turn round: a phone's portrait video) gives the displayed
    size, ``#0 240x320 h264 (stored 320x240)``, the size of its entries and outputs."""
    context = stream.codec_context
    if not (context.width and context.height):
        return f"#{stream.index} {context.name}"
    if turned:
        return f"#{stream.index} {context.height}x{context.width} {context.name} (stored {context.width}x{context.height})"
    return f"#{stream.index} {context.width}x{context.height} {context.name}"


class AVInput:
    """An FFmpeg input opened in the constructor; ``pictures()`` decodes its video stream (the
    one FFmpeg picks, ``video_stream``).

    ``target`` is what FFmpeg opens (path, URL, device), ``shown`` how messages name it (the
    redacted URL). ``format`` forces a demuxer (``v4l2``); ``options`` are FFmpeg's format and
    protocol options. ``timeout`` = (open, read) seconds, enforced by PyAV's interrupt callback
    ``grace_s`` later (messages name ``timeout``).
    ``low_latency`` asks the decoder to output each frame as soon as it can. ``colour`` converts
    frames to RGB (``ColourConversion``: HDR tone-mapped to SDR) and ``fields`` deinterlaces
    them (``Deinterlacer``); a source keeps one of each across the inputs it opens, as it does
    its ``orientation``. ``scale``, when set,
    gives for a displayed (height, width) the size the model scales a frame to; frames larger than
    that are converted to RGB at that size in one step (FFmpeg's bilinear, area-aware when
    shrinking), instead of at full size and resized again by the model.
    """

    def __init__(
        self,
        target: str,
        shown: str | None = None,
        *,
        format: str | None = None,
        options: dict[str, str] | None = None,
        timeout: tuple[float, float] = (10.0, 10.0),
        low_latency: bool = False,
        orientation: DisplayOrientation | None = None,
        colour: ColourConversion | None = None,
        fields: Deinterlacer | None = None,
        scale: Callable[[int, int], tuple[int, int]] | None = None,
        lost_are_errors: bool = False,
        grace_s: float = 0.0,
        sender_may_change: bool = False,
    ):
        self.target = target
        self.scale = scale
        self.cap: FrameRateCap | None = None  # set: frames over its rate are decoded, never converted
        self.catch_up: CatchUp | None = None  # set: a live stream behind live leaves packets undecoded
        self.shown = shown if shown is not None else redact_url(target)
        self.timeout = timeout
        self.low_latency = low_latency
        self.decode_errors = 0
        self.before_keyframe = 0  # a live stream's packets before its first picture: joined mid-GOP
        self.log_extra: dict[str, str] = {}  # fields of its log records (a JSON log's ``source``)
        self.pending_rejected = 0  # a live stream's rejected packets no picture followed yet (decode_errors soon)
        # the PTS of rejected packets not yet passed by a picture (sorted), and those without one
        self._rejected: list[int] = []
        self._rejected_untimed = 0
        self._left_out: list[int] = []  # and of packets left undecoded to catch up (``catch_up``)
        self._left_out_untimed = 0
        self._read_wait_s = 0.0  # how long the last read waited for its packet
        self._read_wall = time.time()  # when the last packet was read (Unix time)
        self.frames_lost = 0  # frames that never reached the decoder (SteadyGaps)
        self.frames_cut = 0  # of them, a file's in the gaps it ended in (``SteadyGaps.lost_at_end``)
        # a stream's lost frames count as decode errors as they come; a file's are told at its end
        self.lost_are_errors = lost_are_errors
        self.last_read = time.monotonic()  # when FFmpeg last handed over a packet
        self.sender_may_change = sender_may_change
        self.stop: threading.Event | None = None  # set: ``pictures()`` returns at the next packet
        # an http input told to resume a lost connection with a Range request (a file's)
        self.resumes = (options or {}).get("reconnect") == "1"
        self.orientation = orientation if orientation is not None else DisplayOrientation()
        self.colour = colour if colour is not None else ColourConversion()
        self.fields = fields if fields is not None else Deinterlacer()
        self._relay: FFmpegRelay | None = None
        # FFmpeg's own deadlines come ``grace_s`` after the caller's (a watchdog that acts on
        # the caller's); messages name the caller's
        deadlines = (timeout[0] + grace_s, timeout[1] + grace_s)
        try:
            self.container = av.open(target, format=format, options=options or {}, timeout=deadlines)
        except av.error.ProtocolNotFoundError as error:
            if (ffmpeg := relay_program(target)) is None:
                if (scheme := url_scheme(target)) in RELAYED_SCHEMES:
                    raise InputUnsupported(
                        f"cannot read '{self.shown}': the FFmpeg inside PyAV lacks {scheme}, and no ffmpeg on PATH has "
                        f"it — install one that does (apt-get install ffmpeg) to receive {scheme} streams"
                    ) from None
                raise open_error(error, self.shown, timeout[0]) from None
            self.container = self._open_relayed(ffmpeg, options or {}, deadlines)
        except av.error.HTTPServerError:
            raise self._server_error("cannot open") from None
        except Exception as error:
            # (rtsps and rtmps too: an untrusted camera certificate was a bare "Input/output error",
            # retried for ever: found probing)
            verified = url_scheme(target) in _TLS_SCHEMES and str((options or {}).get("tls_verify")) == "1"
            if isinstance(error, av.error.InvalidDataError) and (page := web_page(target)) is not None:
                raise InputRefused(f"'{self.shown}' answered a web page ({page}), not video — a camera's login or "
                                   "settings page? check the URL's path (the camera's stream URL) and credentials",
                                   missing=True) from None
            if verified and getattr(error, "errno", None) == errno.EIO:  # FFmpeg says only "Input/output error"
                raise InputRefused(
                    f"cannot open '{self.shown}': the TLS handshake failed (Input/output error) — with tls_verify: 1 "
                    "that is most often a certificate not trusted: give its CA with options: {ca_file: /path/ca.pem}, "
                    "and use the host name the certificate names") from None
            raise open_error(error, self.shown, timeout[0]) from None
        try:
            self.stream = video_stream(self.container, self.shown)
        except BaseException:
            self.close()
            raise
        self.other_streams = other_video_streams(self.container, self.stream)
        if self.other_streams:  # once per input (the batch's probe of the file no longer says it too)
            logger.info("'%s' has %d video streams: reading %s (FFmpeg's best), not %s", self.shown,
                        len(self.other_streams) + 1, stream_text(self.stream), ", ".join(self.other_streams))
        # the other streams are not read: an HLS master playlist's other variants (and audio renditions)
        # are then not downloaded at all (every variant's segments were, doubling a camera's traffic)
        for other in self.container.streams:
            if other.index != self.stream.index:
                other.discard = av.stream.Discard.all
        context = self.stream.codec_context
        # Slice threads lose nothing; frame threads hide decode errors and add latency.
        context.thread_type = "SLICE"
        context.thread_count = 0
        if low_latency:
            context.flags |= av.codec.context.Flags.low_delay
        if not lost_are_errors:
            # A file's frames whose references are missing (a recording cut mid-GOP: a TS's first 20
            # frames, measured) come out marked corrupt and are counted (``pictures()``): without it
            # the decoder kept them, and they were neither delivered nor counted. A live stream's
            # decoder keeps them still: what precedes its first keyframe is no loss of the stream's.
            context.flags |= av.codec.context.Flags.output_corrupt
        self.time_base = self.stream.time_base or Fraction(1, 1_000_000)
        # The input's length in seconds when it has one (a file, a video-on-demand playlist), None
        # for live streams, read now (the capture thread may close the container at any time): the
        # video's own duration where the format says, since a file's audio may outlast its video;
        # ``video_duration`` says whether it is that (or a playlist's, whose segments carry both).
        # A length listed from the timeline's 0 is the listed end: the time before the first frame
        # (a video from 100 s to 110 s lists 110 s) is no part of it (``listed_from_zero``).
        from_zero = listed_from_zero(self.container)
        duration, start = self.container.duration, self.container.start_time
        self.duration_s: float | None = duration / 1_000_000 if duration and duration > 0 else None
        if self.duration_s is not None and from_zero and start:
            self.duration_s = length_after(self.duration_s, start / 1_000_000)
        self.video_duration = self.container.format.name == "hls"
        if self.stream.duration and self.stream.duration > 0 and self.stream.time_base:
            self.duration_s = float(self.stream.duration * self.stream.time_base)
            self.video_duration = True
        elif (tagged := tagged_duration(self.stream.metadata)) is not None:  # Matroska's, per stream
            start_s = float(self.stream.start_time * self.time_base) if self.stream.start_time is not None else 0.0
            self.duration_s, self.video_duration = length_after(tagged, start_s) if from_zero else tagged, True
        elif len(self.container.streams) == 1:  # the container's duration is its one stream's
            self.video_duration = True
        self.format_name: str = self.container.format.name
        # whether that length is one the file states (not FFmpeg's estimate): what a truncation is told by
        self.length_listed = not set(self.format_name.split(",")) & _ESTIMATED_LENGTH_FORMATS
        # (a file's: a live AVI's header may hold a placeholder count, which would make it look finite)
        recorded_s = recorded_length(self.container, self.stream) if not sender_may_change else None
        if recorded_s is not None:
            if self.duration_s is None or recorded_s > self.duration_s:
                self.duration_s, self.video_duration = recorded_s, True
        # A file whose container indexes every sample (MP4/MOV, Matroska/WebM) holds what its recorder
        # wrote: a gap of its steady rate is the recorder's (a phone skipping frames in the dark), not a
        # frame lost on the way to the decoder (found probing: an intact phone clip was called damaged)
        self.indexed = not lost_are_errors and bool(set(self.format_name.split(",")) & _INDEXED_FORMATS)
        # The input's size in bytes when the server or file says (a file over HTTP, without a
        # duration when its format has none, as MPEG-TS), None for a stream without an end.
        self.size_bytes: int | None = self.container.size if (self.container.size or 0) > 0 else None
        rate = frame_rate(self.stream)
        self.fps = float(rate) if rate else None
        self.step = max(1, round(1 / (rate * self.time_base))) if rate else max(1, round(1 / (25 * self.time_base)))
        # A live input whose format carries no timestamps (MJPEG over HTTP, a raw H.264 stream): FFmpeg
        # makes them up at a guessed rate, an MJPEG camera's 25 fps whatever it sends (a 10 fps camera
        # read 0.6 s further behind live each second, its max_fps kept one frame in 12): its frames are
        # timed by when their packets are read instead, and an MJPEG stream's rate is not known.
        self.wall_times = (sender_may_change and self.duration_s is None and self.size_bytes is None
                           and bool(self.container.format.flags & _NO_TIMESTAMPS))
        if self.wall_times:
            self.time_base = Fraction(1, 1_000_000)
            self.step = round(1_000_000 / (self.fps or 25))
            if context.name == "mjpeg":
                self.fps = None
        self._wall_start: float | None = None  # the Unix time of the first picture, with ``wall_times``
        self._wall_last: int | None = None  # and the last picture's pts
        # a stream's silences longer than a second, up to its read timeout (past it, a stall;
        # a longer jump of the timestamps alone is a new sender's)
        self._gaps = SteadyGaps(self.step, self.fps, float(self.time_base), timeout[1] if lost_are_errors else 0.0,
                                hindsight=not lost_are_errors)
        self.info = self._info(context)
        self._turned = False  # whether ``info.stream`` says its frames' displayed size turned
        sar = self.stream.sample_aspect_ratio or context.sample_aspect_ratio
        self.sample_aspect: Fraction | None = Fraction(sar) if sar and sar > 0 and sar != 1 else None
        self._sender: tuple[int, float] | None = None  # (pts, sender Unix time) of the last packet with one
        self._timestamps = BestEffortTimestamp()
        # packets the last session's decoder could not read, decoded first (set before ``pictures()``)
        self.carried: tuple[bytes, ...] = ()
        self._reformatter = self.colour.lend()  # given back by close()

    def _open_relayed(self, ffmpeg: str, options: dict[str, str], deadlines: tuple[float, float]):
        """The input through the system's ``ffmpeg`` (a protocol PyAV's FFmpeg lacks: SRT)."""
        self._relay = relay = FFmpegRelay(ffmpeg, self.target, self.shown, options, deadlines)
        try:
            return av.open(relay, format="mpegts", options=demuxer_options(options), timeout=deadlines)
        except Exception as error:
            relay.close()
            if relay.timed_out:
                raise InputTimeout(f"timed out after {self.timeout[0]:g} s opening '{self.shown}' (open timeout)"
                                   f"{_refused_hint(relay.refused)}", "open", self.timeout[0]) from None
            reason = relay.reason() or describe_error(error)
            if "passphrase" in reason.lower():  # SRT's: refused credentials, as a 401 is
                raise InputRefused(f"'{self.shown}' refused us: {reason} — check the passphrase") from None
            if (host := _unknown_host(self.target)) is not None:
                raise InputRefused(f"cannot open '{self.shown}': the host name '{host}' is not known (DNS) — check "
                                   "the URL", missing=True) from None
            raise SourceError(f"cannot open '{self.shown}': {reason}") from None

    def _relay_ended(self) -> None:
        """After a relayed input's data ended: raise what ended ``ffmpeg``, if anything did."""
        relay = self._relay
        if relay is None:
            return
        relay.process.wait()
        if relay.timed_out:
            raise InputTimeout(
                f"no data from '{self.shown}' for {self.timeout[1]:g} s (read timeout)", "read", self.timeout[1]
            )
        if (reason := relay.reason()) is not None:
            raise SourceError(f"reading '{self.shown}' failed: {reason}")

    @property
    def gap_s(self) -> float:
        """Seconds of this input's silences of more than a second (a stream's; ``SteadyGaps``)."""
        return self._gaps.gap_s

    def _info(self, context) -> InputInfo:
        return InputInfo(context.width, context.height, context.name, context.pix_fmt, self.fps,
                         stream=stream_text(self.stream), other_streams=self.other_streams)

    def pictures(self) -> Iterator[Picture]:
        """Decoded frames in presentation order until the input ends. Packets the decoder rejects
        are counted and skipped; a failing read raises ``SourceError`` (``InputTimeout`` when
        FFmpeg's read timeout ran out). The packets ``carried`` over from the last session are
        decoded first."""
        stream, context = self.stream, self.stream.codec_context
        # once it has decoded, a second of packets (at least 10, more than a decoder's reorder delay)
        # without a picture: the decoder set up at the open cannot read what comes now
        live = self.sender_may_change and self.duration_s is None
        change_after = max(10, round(self.fps or 25)) if live else None
        # the packets since the last picture, and its own: what InputChanged hands over. A live
        # stream's rejected packets are counted once a picture follows them or the input ends,
        # not when handed over: the next decoder may read them
        recent: deque = deque(maxlen=(change_after or 0) + 1)
        decoded, without_picture, rejected, handed = False, 0, 0, False
        key_unread = False  # a packet its demuxer flags a keyframe among those since the last picture
        demuxed = self._demuxed(stream)
        catch_up = self.catch_up
        jpeg = context.name == "mjpeg" and live  # (a file's JPEG may carry more after its end: a motion photo's video)
        fields = self.fields.for_input(self.shown, self.log_extra)
        # A file's packets its demuxer flags damaged (read short where the file ended inside one):
        # an MJPEG decoder makes a whole picture of half a JPEG without marking it corrupt ("EOI
        # missing, emulating"; found probing a half-copied camera AVI). MJPEG's alone: an H.264
        # decoder marks what it conceals itself, and a TS joined to another flags its last packet
        # before the join though its frame decodes whole (two good frames were left out, the
        # second copy's of the same time too).
        damaged: set[int] = set()
        flag_damaged = context.name == "mjpeg" and not self.lost_are_errors

        # A picture within STALE_WINDOW pictures of a rejected packet whose PTS falls back into the
        # damaged stretch (after the last picture before it, at or before the last picture) is the
        # decoder's leftover of it, shown out of place (found probing an archive: a flipped-bytes
        # H.264 gave 1.6 1.7 2.7 2.8 1.9 2.9): rejected as its packets were, not taken for PTS in
        # decode order (which set every later frame a frame late). One before the stretch is a
        # discontinuity (two recordings joined, a sender restarted), its frames kept.
        since_rejected: int | None = None  # pictures since the last rejected packet (None: none yet)
        last_pts: int | None = None  # the last picture's PTS
        pts_before: int | None = None  # the last picture's before the damaged stretch began

        def made_up(frame: av.VideoFrame) -> bool:
            return frame.is_corrupt or (frame.pts is not None and frame.pts in damaged)

        def stale(frame: av.VideoFrame) -> bool:
            return (since_rejected is not None and since_rejected < STALE_WINDOW and frame.pts is not None
                    and last_pts is not None and pts_before is not None and pts_before < frame.pts <= last_pts
                    and self._timestamps.by_pts and not self.wall_times)

        def reject(pts: int | None, leftover: bool = False) -> None:
            """Count a frame the decoder rejected (or made up, or gave back out of place: a
            ``leftover``), its place kept for the picture after it."""
            nonlocal rejected, since_rejected, pts_before
            rejected += 1
            if not leftover:  # a damaged stretch begins, or goes on
                if since_rejected is None or since_rejected >= STALE_WINDOW:
                    pts_before = last_pts
                since_rejected = 0
            if change_after is None:
                self.decode_errors += 1
            else:
                self.pending_rejected = rejected  # read with decode_errors: a session may end here
            if pts is None or self.wall_times:  # (made-up timestamps: not the pictures' times)
                self._rejected_untimed += 1
            else:
                bisect.insort(self._rejected, pts)

        try:
            for packet, carried in itertools.chain(self._carried_packets(), demuxed):
                if self.stop is not None and self.stop.is_set():
                    return  # let go (a decoder that outputs nothing would otherwise hold the port)
                if not carried:
                    self.last_read = time.monotonic()
                if packet.pts is not None and not carried and packet.has_sidedata("prft"):
                    wallclock, _ = _PRFT.unpack(bytes(packet.get_sidedata("prft"))[: _PRFT.size])
                    self._sender = (packet.pts, wallclock / 1e6)
                if flag_damaged and packet.is_corrupt and packet.pts is not None:
                    damaged.add(packet.pts)
                if catch_up is not None and not carried and packet.size:  # (the last, empty one flushes)
                    if catch_up.skip(packet.pts, packet.is_keyframe, waited_s=self._read_wait_s):
                        # its place counted at the picture after it, as a rejected one's
                        if packet.pts is None:
                            self._left_out_untimed += 1
                        else:
                            bisect.insort(self._left_out, packet.pts)
                        continue
                # a JPEG cut short (a camera's frame over a dropped connection): the decoder would fill
                # in what is missing with the last frame's pixels and hand it over as whole
                failed = jpeg and packet.size > 0 and _jpeg_cut_short(packet)
                # decoding resumes at a keyframe after skipped ones: the frames the decoder held, then a
                # decoder started afresh (an open GOP's leading frames refer to skipped ones: a fresh
                # decoder drops them instead of inventing their references)
                resumed = catch_up is not None and catch_up.resumed
                held = _drained(context) if resumed else []
                try:
                    frames = [*held, *([] if failed else context.decode(packet))]
                except av.error.EOFError:
                    for whole in fields.flush():
                        yield self._picture(whole)
                    self._ended()
                    self._relay_ended()
                    return
                except av.error.FFmpegError as error:
                    if error.errno == errno.EAGAIN:  # the decoder opens at its first packet, starting its threads
                        raise self._threads_refused() from None
                    if not decoded and self.lost_are_errors and not carried:  # a live source's input
                        # a live stream joined between keyframes: what precedes the first cannot be
                        # decoded, and is no fault of the stream (nor a frame it lost)
                        self.before_keyframe += 1
                        continue
                    failed, frames = True, held
                if failed or (carried and not frames and not decoded):  # a carried one swallowed: lost too
                    reject(packet.pts)
                # A frame FFmpeg marks corrupt holds pixels it made up (a damaged packet's concealed
                # blocks, a missing reference's grey): rejected below as its packet would have been,
                # its place kept (published, its entries were taken for whole ones: found probing)
                pictured = any(not made_up(frame) for frame in frames)
                if pictured:
                    recent.clear()
                    key_unread = False
                if change_after is not None:
                    recent.append(packet)
                if not pictured and decoded and packet.size:
                    without_picture += 1
                    key_unread = key_unread or packet.is_keyframe
                    if change_after is not None and without_picture >= change_after:
                        handed = True
                        raise InputChanged(
                            f"the {context.name} decoder that read it made nothing of the last "
                            f"{without_picture} packets ({rejected} rejected"
                            + (", a keyframe among them): another codec or stream parameters" if key_unread else
                               ", none flagged a keyframe): another codec or stream parameters, or a keyframe "
                               "lost on the way"),
                            0,
                            tuple(bytes(p) for p in recent),
                        )
                for n, frame in enumerate(frames):
                    if resumed and n == len(held):  # the deinterlacer's neighbour is from before the skip
                        for whole in fields.flush():
                            yield self._picture(whole)
                    if made_up(frame):
                        if not decoded and self.lost_are_errors and not carried:  # joined mid-GOP, as above
                            self.before_keyframe += 1
                        else:
                            reject(self._timestamps.choose(frame.pts, frame.dts))
                        continue
                    if stale(frame):
                        reject(frame.pts, leftover=True)
                        continue
                    if since_rejected is not None:
                        since_rejected += 1
                    if frame.pts is not None:
                        last_pts = frame.pts
                    if not decoded and self.before_keyframe:
                        logger.info("'%s': joined between keyframes; decoding began at the first, %d packets later",
                                    self.shown, self.before_keyframe, extra=self.log_extra)
                    if change_after is not None:
                        self.decode_errors, self.pending_rejected = self.decode_errors + rejected, 0
                    decoded, without_picture, rejected = True, 0, 0
                    for whole in fields.frames(frame):  # the frame before, where deinterlacing holds one back
                        yield self._picture(whole)
                if resumed and len(frames) == len(held):
                    for whole in fields.flush():
                        yield self._picture(whole)
            for whole in fields.flush():
                yield self._picture(whole)
            self._ended()
            self._relay_ended()
        except av.error.ExitError:
            raise InputTimeout(
                f"no data from '{self.shown}' for {self.timeout[1]:g} s (read timeout)", "read", self.timeout[1]
            ) from None
        except av.error.FFmpegError as error:
            if isinstance(error, av.error.TimeoutError) or getattr(error, "errno", None) == 110:
                raise InputTimeout(
                    f"no data from '{self.shown}' for {self.timeout[1]:g} s (read timeout)", "read", self.timeout[1]
                ) from None
            if error.errno == errno.EAGAIN:  # a file, a blocking read: what FFmpeg could not get is a thread
                raise self._threads_refused() from None
            if isinstance(error, av.error.HTTPServerError):  # resuming a cut connection
                raise self._server_error("cannot read") from None
            if error.errno == errno.EIO and self.resumes:
                raise SourceError(f"reading '{self.shown}' failed ({describe_error(error)}): the connection to the "
                                  "server was lost and could not be resumed, or the server serves no byte ranges (an "
                                  "MP4 with its index at the end needs them; -movflags +faststart puts it first)") from None
            raise SourceError(f"reading '{self.shown}' failed: {describe_error(error)}") from None
        finally:
            if change_after is not None and not handed:
                self.decode_errors, self.pending_rejected = self.decode_errors + rejected, 0
            elif handed:
                self.pending_rejected = 0  # handed over: the next decoder's to read or count

    def _ended(self) -> None:
        """At a file's end (not an indexed one's: its gaps are its recorder's): frames lost in the
        gaps before its last frame, the last decoded or the last rejected (a frame cut short with
        the file), are lost at its end (``frames_cut``)."""
        if self.lost_are_errors or self.indexed:
            return
        if self._rejected:  # the rejected one is a frame's place: the gap before it is the file's
            self.frames_lost += self._gaps.lost_before(self._rejected[-1], len(self._rejected) - 1)
        cut = self._gaps.lost_at_end()
        self.frames_lost += cut
        self.frames_cut += cut

    @property
    def rejected_at_end(self) -> int:
        """Rejected packets (counted in ``decode_errors``) that no picture followed: a file's
        damaged tail."""
        return len(self._rejected) + self._rejected_untimed

    def _demuxed(self, stream) -> Iterator[tuple[av.Packet, bool]]:
        """The stream's packets (not carried over), each read's wait kept in ``_read_wait_s``: a
        read that had to wait found no backlog (``CatchUp``)."""
        packets = self.container.demux(stream)
        while True:
            asked = time.monotonic()
            packet = next(packets, None)
            if packet is None:
                return
            self._read_wait_s = time.monotonic() - asked
            if self.wall_times:
                self._read_wall = time.time()
            yield packet, False

    def _server_error(self, doing: str) -> SourceError:
        """An http(s) server's error (5xx), named by the status it answers now: FFmpeg says only "5XX"."""
        if url_scheme(self.target) in ("rtsp", "rtsps"):
            # found probing as a home-lab NVR user: a booting camera's 503 read as an overloaded object store
            return SourceError(f"{doing} '{self.shown}': the camera or media server answered an RTSP server error "
                               "(5xx; FFmpeg does not say which: 503 is a camera still starting or out of sessions) — "
                               "check how many clients it serves and that the stream path is enabled")
        status = http_status(self.target, min(self.timeout[0], 5.0)) or "5XX"
        return SourceError(f"{doing} '{self.shown}': the server answered {status} — a server error: the server or "
                           "object store is overloaded or failing; try again later")

    def _carried_packets(self) -> Iterator[tuple[av.Packet, bool]]:
        """The packets ``carried`` over from the last session, for this decoder. The old demuxer's
        parser split them by the old codec's rules (an MPEG-2 frame's slices into packets of their
        own), and the first, of the old decoder's last picture, holds the new sender's first
        keyframe behind the old sender's last frame when that one stopped mid-frame (measured):
        their bytes (kept without timestamps: those no longer belong to a frame) from the new
        codec's first sequence header on go through this codec's parser again."""
        carried, self.carried = self.carried, ()
        context = self.stream.codec_context
        header = _SEQUENCE_HEADERS.get(context.name)
        data = b"".join(carried)
        found = header.search(data) if header is not None else None
        try:
            packets = (context.parse(data[found.start():]) + context.parse(None)) if found is not None else None
        except av.error.FFmpegError:
            packets = None
        if packets is None:  # nothing this decoder can start from: lost, counted, their gap left in the index
            if carried:
                self.decode_errors += len(carried) - 1
                self._rejected_untimed += len(carried) - 1
            return
        for packet in packets:
            packet.time_base = self.time_base
            yield packet, True

    def _threads_refused(self) -> ResourceLimit:
        return ResourceLimit(f"could not start the decoder's threads for '{self.shown}' ({THREAD_LIMIT_HINT})")

    def _image(self, frame: av.VideoFrame) -> tuple[np.ndarray, tuple[int, int] | None]:
        """The frame as RGB, as displayed, and its displayed size when scaled down here."""
        orient = self.orientation.transform(frame, self.shown)
        stored, size = None, None
        if self.scale is not None:
            turned = self.orientation.transposes
            height, width = (frame.width, frame.height) if turned else (frame.height, frame.width)
            h, w = self.scale(height, width)
            if h < height and w < width:
                size = (height, width)
                stored = (h, w) if turned else (w, h)  # (width, height) as stored
        image = orient(self.colour.rgb(frame, stored, self._reformatter, self.shown, self.log_extra))
        described = (self.colour.hdr, self.fields.interlaced, self.fields.deinterlaced, self.orientation.transposes)
        if described != (self.info.hdr, self.info.interlaced is not None, self.info.deinterlaced, self._turned):
            self._turned = described[3]
            self.info = replace(self.info, hdr=described[0], deinterlaced=described[2],
                                interlaced=field_order(self.stream.codec_context) if described[1] else None,
                                stream=stream_text(self.stream, self._turned))
        return image, size

    def _picture(self, frame: av.VideoFrame) -> Picture:
        pts = self._timestamps.choose(frame.pts, frame.dts)
        if self.wall_times:  # when its packet was read; pictures a read released together a frame apart
            read = self._read_wall
            self._wall_start = self._wall_start or read
            pts = round((read - self._wall_start) * 1_000_000)
            if self._wall_last is not None and pts <= self._wall_last:
                pts = self._wall_last + self.step
            self._wall_last = pts
        sender = None
        if self._sender is not None and pts is not None:
            sender_pts, sender_wall = self._sender
            sender = sender_wall + float((pts - sender_pts) * self.time_base)
        # The rejected frames this one follows: pictures leave in presentation order, so a rejected
        # packet with an earlier PTS was a frame before it (one without a PTS counts before the next;
        # after timestamps went back, all of them do).
        back = pts is None or (self._gaps.last is not None and pts < self._gaps.last)
        passed = len(self._rejected) if back else bisect.bisect_left(self._rejected, pts)
        del self._rejected[:passed]
        skipped, self._rejected_untimed = passed + self._rejected_untimed, 0
        left_out = len(self._left_out) if back else bisect.bisect_left(self._left_out, pts)
        del self._left_out[:left_out]
        left_out, self._left_out_untimed = left_out + self._left_out_untimed, 0
        before = self._gaps.gap_s
        lost = self._gaps.lost_before(pts, skipped + left_out) if not self.indexed else 0
        self.frames_lost += lost
        if self._gaps.gap_s > before:
            logger.warning("'%s': no frames for %.1f s of the stream's time (lost, or its sender paused)",
                           self.shown, self._gaps.gap_s - before, extra=self.log_extra)
        if self.lost_are_errors:
            skipped += lost
        image, size = None, None
        arrived = time.time()
        if self.cap is None or self.cap.keep(None if pts is None else float(pts * self.time_base),
                                             wall=arrived if sender is None else sender, exact=sender is not None):
            image, size = self._image(frame)  # the conversion a frame over max_fps is spared
        aspect = self.sample_aspect
        if aspect is not None and self.orientation.transposes:
            aspect = 1 / aspect  # a pixel's width turned into its height
        return Picture(image, pts, self.time_base, self.step, arrived, sender, size, skipped,
                       decoded_at=time.monotonic(), gap_s=self._gaps.gap_s - before, sample_aspect=aspect,
                       left_out=left_out)

    def close(self) -> None:
        container, self.container = self.container, None
        try:
            if container is not None:
                container.close()
        finally:
            # the decoder's threads live as long as its codec context, which lives as long as
            # anything holds the stream: a retired input kept by its source (a source removed from
            # the run, the session before a reconnect) must not keep them
            self.stream = None
            if self._relay is not None:
                self._relay.close()
            reformatter, self._reformatter = getattr(self, "_reformatter", None), None
            if reformatter is not None:
                self.colour.give_back(reformatter)


def _jpeg_cut_short(packet: av.Packet) -> bool:
    """Whether a JPEG lacks its end-of-image marker after its last scan's start (entropy-coded
    data never holds one; after it, a camera may pad the frame with bytes of its own)."""
    data = bytes(packet)
    scan = data.rfind(b"\xff\xda")
    return scan < 0 or data.find(b"\xff\xd9", scan) < 0


def _drained(context) -> list[av.VideoFrame]:
    """The frames a decoder still holds, and the decoder started afresh."""
    try:
        frames = list(context.decode(None))
    except av.error.FFmpegError:
        frames = []
    context.flush_buffers()
    return frames


def _identity(image: np.ndarray) -> np.ndarray:
    return image


def _unit(value: int) -> int:
    """-1, 0 or 1: a 16.16 matrix entry of a right-angle transform, rounded."""
    return int(round(value / _FIXED_ONE))


def _display_matrix(frame: av.VideoFrame, rotation: float) -> tuple[int, ...] | None:
    """The entries of ``frame``'s display matrix (None: it has none). PyAV 18 cannot list side
    data of a type newer than it names: a JPEG's EXIF (type 31, which FFmpeg 8 attaches to every
    picture with EXIF) made reading any of it raise. Such a frame's matrix is built from its
    rotation, which PyAV reads without the list, as FFmpeg's ``av_display_rotation_set`` writes
    it; a mirroring EXIF orientation (2, 4, 5, 7: rare, not what phones write) is then not seen."""
    try:
        side_data = frame.side_data
    except ValueError:
        if not rotation:
            return None
        turn = math.radians(rotation)
        cos, sin = (round(v * _FIXED_ONE) for v in (math.cos(turn), math.sin(turn)))
        return (cos, -sin, 0, sin, cos, 0, 0, 0, 1 << 30)
    matrix = side_data.get("DISPLAYMATRIX")
    entries = None if matrix is None else _DISPLAY_MATRIX.unpack(bytes(matrix)[: _DISPLAY_MATRIX.size])
    del side_data, matrix  # a reference to the container keeps the frame's buffers (see above)
    return entries


def display_transform(matrix: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray] | None:
    """The array operation that turns a decoded H x W x C frame into what the display matrix
    says to show, for rotations by multiples of 90 degrees with or without a flip; None for other
    angles.

    FFmpeg's display matrix maps a stored pixel (x, y) to the displayed (a x + c y, b x + d y)
    with a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4] (before the translation that
    brings the result back into the frame). With entries in {-1, 0, 1}, that is a transpose when
    a = d = 0, and a flip of each displayed axis whose coefficient is negative.
    """
    a, b, c, d = (_unit(matrix[i]) for i in (0, 1, 3, 4))
    if (a, b, c, d) == (1, 0, 0, 1):
        return None if matrix[0] != _FIXED_ONE or matrix[4] != _FIXED_ONE else _identity
    if b == c == 0 and a and d:
        rows, columns = d < 0, a < 0

        def flip(image: np.ndarray) -> np.ndarray:
            image = image[::-1] if rows else image
            return np.ascontiguousarray(image[:, ::-1] if columns else image)

        return flip
    if a == d == 0 and b and c:
        # displayed row y' = b x, displayed column x' = c y: the stored columns become rows
        rows, columns = b < 0, c < 0

        def turn(image: np.ndarray) -> np.ndarray:
            image = image.transpose(1, 0, 2)
            image = image[::-1] if rows else image
            return np.ascontiguousarray(image[:, ::-1] if columns else image)

        return turn
    return None


_TAGGED_DURATION = re.compile(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)")


def tagged_duration(metadata: dict[str, str]) -> float | None:
    """The seconds of a stream's ``DURATION`` tag (``HH:MM:SS.nnnnnnnnn``), which FFmpeg's and
    mkvmerge's Matroska muxers write per stream: Matroska has no stream duration of its own, and
    the container's is its longest stream's (often the audio). FFmpeg's is where the stream ends,
    mkvmerge's how long it lasts (``listed_from_zero``). None without one."""
    text = next((value for key, value in metadata.items() if key.upper() == "DURATION"), None)
    match = _TAGGED_DURATION.fullmatch(text.strip()) if text else None
    if match is None:
        return None
    seconds = int(match[1]) * 3600 + int(match[2]) * 60 + float(match[3])
    return seconds if seconds > 0 else None


def listed_from_zero(container) -> bool:
    """Whether ``container``'s listed lengths (its own duration, Matroska's per-stream
    ``DURATION`` tags) run from its timeline's 0, not from its first frame: an MP4/MOV's movie
    duration (its timeline starts at 0: a later first frame follows an empty edit), a Matroska
    file's as FFmpeg's muxer writes them (the end of its last frame: a video from 100 s to 110 s
    lists 110 s, and was called truncated, 2,500 frames missing), not as mkvmerge does (the span
    from its first frame)."""
    formats = set(container.format.name.split(","))
    if formats & {"mov", "mp4"}:
        return True
    if not formats & {"matroska", "webm"}:
        return False
    writer = next((value for key, value in container.metadata.items() if key.upper() == "ENCODER"), "")
    return writer.startswith("Lavf")  # FFmpeg's MuxingApp (PyAV's too), with or without its version


def recorded_length(container, stream) -> float | None:
    """The seconds of video an AVI's header says were recorded (its stream header's frame count,
    each frame a tick of the stream's time base), None for other formats or without a count.
    FFmpeg's duration of an AVI is that of the frames its index, or a scan where the index is
    gone, found: a copy cut short lists only what it still holds (found probing: a 10 s MJPEG
    AVI cut at 30% read as a whole 3 s one). Not for MP4/MOV, whose count and duration are both
    its index's (and its count holds the frames an edit list leaves out), nor Matroska or MPEG-TS,
    which state none (PyAV says 0)."""
    if container.format.name != "avi" or not stream.frames or not stream.time_base:
        return None
    return float(stream.frames * stream.time_base)


def length_after(listed_s: float, start_s: float) -> float:
    """A length listed from the timeline's 0 as the length from ``start_s`` (the first frame's
    time, seconds) on; a listed length that ends before that start was the span itself."""
    return listed_s - start_s if 0 < start_s < listed_s else listed_s


def describe_error(error: BaseException) -> str:
    """FFmpeg's reason for a failure without the file name PyAV appends (it may hold credentials)."""
    text = getattr(error, "strerror", None)
    if isinstance(error, av.error.HTTPUnauthorizedError):
        return "401 Unauthorized — check the user name and password in the URL"
    if isinstance(error, av.error.HTTPForbiddenError):
        return "403 Forbidden — check the account's permissions"
    if isinstance(error, av.error.HTTPNotFoundError):
        return "404 Not Found — check the path of the URL"
    return str(text) if text else type(error).__name__


def open_error(error: BaseException, shown: str, open_timeout_s: float) -> SourceError:
    """The ``SourceError`` for an input that could not be opened, saying why in the user's terms."""
    if isinstance(error, SourceError):
        return error
    if isinstance(error, (av.error.ExitError, av.error.TimeoutError)) or getattr(error, "errno", None) == 110:
        return InputTimeout(
            f"timed out after {open_timeout_s:g} s opening '{shown}' (open timeout)", "open", open_timeout_s
        )
    if isinstance(error, (av.error.ProtocolNotFoundError, av.error.DemuxerNotFoundError)):
        return InputUnsupported(
            f"this FFmpeg build cannot read '{shown}' ({describe_error(error)}) — use another protocol, or build "
            "PyAV against an FFmpeg that has it"
        )
    if isinstance(error, (FileNotFoundError, av.error.FileNotFoundError)):
        try:  # a broken link (a card's folder moved away): where it points is what is missing
            return InputRefused(f"'{shown}' is a link to '{os.readlink(shown)}', which does not exist", missing=True)
        except (OSError, ValueError):
            return InputRefused(f"'{shown}' does not exist", missing=True)
    if isinstance(error, (PermissionError, av.error.PermissionError)):
        return InputRefused(f"'{shown}' may not be read by this user (permission denied) — for a camera, add the "
                            "user to the video group")
    if isinstance(error, (av.error.HTTPUnauthorizedError, av.error.HTTPForbiddenError)):
        return InputRefused(f"'{shown}' refused access: {describe_error(error)}")
    if isinstance(error, av.error.HTTPNotFoundError):
        return InputRefused(f"cannot open '{shown}': {describe_error(error)}", missing=True)
    if isinstance(error, av.error.ConnectionRefusedError):
        return InputUnreachable(f"connection refused by '{shown}' (is the server or camera up?)")
    if getattr(error, "errno", None) in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return InputUnreachable(f"cannot reach '{shown}' ({describe_error(error)}): is the camera on the network?")
    if isinstance(error, av.error.InvalidDataError) and url_scheme(shown) not in ("", "file", "http", "https"):
        # FFmpeg's answer to an RTSP/RTMP/TCP server that accepted and then hung up or said nothing
        # within its socket timeout: a camera booting or at its session limit; retried
        if exclusive_input(shown) and not shown.startswith("/dev/"):  # we listen: a sender sent what is no stream
            return SourceError(f"what was sent to '{shown}' is no stream FFmpeg can read ({describe_error(error)}): "
                               "the sender's data is not the format expected, or it sent nothing before the timeout")
        return InputHungUp(f"'{shown}' answered nothing usable ({describe_error(error)}): the server accepted the "
                           "connection, then closed it or stayed silent")
    if isinstance(error, av.error.InvalidDataError) and (why := _unreadable_file(shown)) is not None:
        return InputRefused(f"cannot open '{shown}': {why}", missing=True)
    if isinstance(error, av.error.InvalidDataError) and url_scheme(shown) in ("http", "https"):
        # FFmpeg's answer to a connection lost before the header, or an MP4's index at its end, as well
        return InputRefused(f"cannot open '{shown}' as video ({describe_error(error)}) — the connection may have "
                            "been lost before its header or index (an MP4's moov atom) arrived, and could not be "
                            "resumed; else check that the URL is the video itself", missing=True)
    if isinstance(error, av.error.InvalidDataError):  # a web page, a file of another kind: not going to change
        return InputRefused(f"cannot open '{shown}' as video ({describe_error(error)}) — check that the URL or path "
                            "is the video itself", missing=True)  # no video there (yet: a publisher starting)
    if getattr(error, "errno", None) == errno.EADDRINUSE and exclusive_input(shown):
        return InputPortInUse(shown)
    if getattr(error, "errno", None) == errno.EMFILE:
        return SourceError(f"cannot open '{shown}': too many open files in this process — raise `ulimit -n` "
                             "(or the container's nofile limit), or run fewer sources")
    if getattr(error, "errno", None) == errno.ENOTTY:  # a device that is no camera (ioctl refused)
        return InputRefused(f"'{shown}' is not a video capture device — list the cameras with v4l2-ctl --list-devices")
    if getattr(error, "errno", None) == errno.EIO and exclusive_input(shown) and not shown.startswith("/dev/"):
        # a listener waits for its sender; FFmpeg's read timeout ends the wait with "Input/output error"
        return SourceError(f"nothing arrived at '{shown}' while opening it (read timeout) — is the sender "
                           "streaming to this address and port?")
    host = _unknown_host(shown) if getattr(error, "errno", None) == errno.EIO else None
    if host is not None:  # FFmpeg says only "Input/output error"
        return InputRefused(f"cannot open '{shown}': the host name '{host}' is not known (DNS) — check the URL",
                            missing=True)
    if getattr(error, "errno", None) in (errno.ECONNRESET, errno.EPIPE):  # (an RTMP/RTSPS server at its limit)
        return InputHungUp(f"cannot open '{shown}': {describe_error(error)} — the server took the connection, then "
                           "reset it")
    if isinstance(error, (av.error.FFmpegError, OSError)):
        return SourceError(f"cannot open '{shown}': {describe_error(error)}")
    return SourceError(f"cannot open '{shown}': {type(error).__name__}")


_BOX = struct.Struct(">I4s")  # an ISO BMFF (MP4, MOV) box header: size, type


def _unreadable_file(target: str) -> str | None:
    """Why a local file FFmpeg found no valid data in cannot be read, where that is plain from
    the file itself: it is empty, or it is an MP4/MOV whose index (the ``moov`` box) was never
    written, as when a recording stops before the writer finished the file. None otherwise."""
    if url_scheme(target) not in ("", "file"):
        return None
    path = urlsplit(target).path if url_scheme(target) == "file" else target
    try:
        with open(path, "rb") as file:
            file.seek(0, 2)
            size, position, boxes = file.tell(), 0, []
            if size == 0:
                return "the file is empty (0 bytes)"
            while position + _BOX.size <= size and len(boxes) < 1000:
                file.seek(position)
                length, kind = _BOX.unpack(file.read(_BOX.size))
                if length == 1:  # a 64-bit size follows
                    length = struct.unpack(">Q", file.read(8))[0]
                elif length == 0:  # the box runs to the end of the file
                    length = size - position
                if length < _BOX.size:
                    break
                boxes.append(kind)
                position += length
    except (OSError, struct.error):
        return None
    if boxes and boxes[0] == b"ftyp" and b"moov" not in boxes:
        return ("an MP4/MOV without its index (moov atom not found): an unfinished recording, stopped before the "
                "file was closed — a repair tool (untrunc) can rebuild the index from a good file of the same recorder")
    return None


def _unknown_host(url: str) -> str | None:
    """The host name of a network URL when it does not resolve, else None."""
    try:
        host = urlsplit(url).hostname if url_scheme(url) not in ("", "file") else None
    except ValueError:
        return None
    if not host:
        return None
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror as error:
        # not EAI_AGAIN: a resolver not up yet (a box booting) is retried like any outage
        unknown = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}
        return host if error.errno in unknown else None
    except OSError:
        return None
    return None


_END = object()


def _refused_hint(refused: str | None) -> str:
    """What to add to a listener's open timeout when callers did call and were refused: the
    timeout alone reads as if no caller came. It is still retried: the right caller may come."""
    if refused is None:
        return ""
    return f": a caller was refused: its passphrase does not match ({refused}) — check the passphrase on both ends"


class CaptureThread:
    """Opens and reads one input on a daemon thread, handing pictures over through a small queue.

    ``wait_open`` and ``next`` wait at most as long as their caller says and return early when
    the caller's ``stop`` event is set; ``abandon`` lets the thread go (it closes its input once
    FFmpeg returns). The queue holds ``depth`` pictures: a consumer that stops taking them stops
    the reads (back-pressure), it does not make the queue grow.
    """

    def __init__(self, name: str, open_input: Callable[[], AVInput], depth: int = 2):
        self._open_input = open_input
        self._items: queue.Queue = queue.Queue(maxsize=depth)
        self._opened = threading.Event()
        self._abandoned = threading.Event()
        self.input: AVInput | None = None
        self.error: BaseException | None = None
        self.blocked_s = 0.0  # time the reads stood still for a consumer that took no picture (back-pressure)
        self.thread = NamedThread(target=self._run, name=f"segstream-capture-{name}", daemon=True)

    def start(self) -> CaptureThread:
        try:
            self.thread.start()
        except RuntimeError as error:
            if not thread_start_failed(error):
                raise
            raise ResourceLimit(f"the system refused to start its capture thread ({THREAD_LIMIT_HINT})") from None
        return self

    @property
    def last_read(self) -> float:
        """When the input last delivered a packet (monotonic seconds; the open's end before that)."""
        return self.input.last_read if self.input is not None else 0.0

    @property
    def decode_errors(self) -> int:
        """Frames of the input that never came out: rejected by the decoder, or (a stream's) lost
        before it."""
        source_input = self.input
        if source_input is None:
            return 0
        return (source_input.decode_errors + source_input.pending_rejected
                + (source_input.frames_lost if source_input.lost_are_errors else 0))

    def _run(self) -> None:
        source_input = None
        try:
            source_input = self._open_input()
            if self._abandoned.is_set():
                return
            self.input = source_input
            source_input.stop = self._abandoned
            self._opened.set()
            held = 0.0
            for picture in source_input.pictures():  # the next is decoded once this one is handed over
                picture.held_s, held = self.blocked_s - held, self.blocked_s
                if not self._put(picture):
                    return
            self._put(_END)
        except BaseException as error:
            self.error = error
            self._opened.set()
            self._put(_END)
        finally:
            if source_input is not None:
                source_input.close()

    def _put(self, item: object) -> bool:
        try:
            self._items.put_nowait(item)
            return True
        except queue.Full:
            pass
        waiting_since = time.monotonic()
        try:
            while not self._abandoned.is_set():
                try:
                    self._items.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False
        finally:
            self.blocked_s += time.monotonic() - waiting_since

    def wait_open(self, timeout_s: float, stop: threading.Event, shown: str) -> AVInput | None:
        """The opened input; None when ``stop`` was set first. Raises the open's error, or
        ``InputTimeout`` when it took longer than ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self._opened.wait(min(0.05, max(0.0, deadline - time.monotonic()))):
            if stop.is_set():
                return None
            if time.monotonic() >= deadline:
                raise InputTimeout(f"timed out after {timeout_s:g} s opening '{shown}' (open timeout)"
                                   f"{_refused_hint(refused_caller(self.thread))}", "open", timeout_s)
        if self.input is None:
            raise self.error if isinstance(self.error, SourceError) else open_error(self.error, shown, timeout_s)
        return self.input

    def next(self, timeout_s: float) -> Picture | None:
        """The next picture, or None after ``timeout_s`` with none. Raises ``EOFError`` at the
        input's end and the read's error if it failed."""
        try:
            item = self._items.get(timeout=timeout_s)
        except queue.Empty:
            return None
        if item is _END:
            if self.error is not None:
                raise self.error
            raise EOFError
        return item

    def abandon(self) -> None:
        self._abandoned.set()
