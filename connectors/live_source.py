"""Live inputs that survive the real world: reconnects with backoff and jitter, a watchdog for
stalls and timeouts, one monotone timeline across sessions, and every state made visible.

A ``LiveSource`` reads one FFmpeg input (a stream URL, a camera) through ``CaptureThread``
sessions. When a session cannot open in ``open_timeout_s``, ends, fails, delivers no data for
``read_timeout_s`` or no frame for ``stall_timeout_s``, the source reconnects: after a delay
that doubles with each failed attempt up to ``max_delay_s``, with jitter so that many cameras
behind one switch do not retry in step, forever unless ``max_reconnects`` says otherwise
(consecutive attempts without a frame; a frame resets the count). An input that refuses the
credentials (401, 403) or is not there (404, no such device) before the first frame fails the
source at once: the URL is wrong, and retrying would only hide it (``wait_for_input`` waits for
it instead); later, these are retried like any loss. An input with a length (a video file or
video-on-demand playlist over HTTP; a file whose server gives only its size) is played at its own
rate, like a live stream, and ends the source when it ends instead of being played again (it
fails it when lost part-way, or when what it played, jumps in its timestamps left out, falls
short of its length: FFmpeg passes over a segment it cannot fetch; opened again it would start
over). A live HLS playlist opened again starts a few segments back: its first frames, those
already delivered (the same timestamp and the same pixels), are skipped and counted. A live
playlist its publisher finishes (``#EXT-X-ENDLIST``) ends the source, or with ``wait_for_input``
is waited on until it is live again. Waiting for the consumer (back-pressure) is never a stall: the watchdog counts only time
spent waiting for the input; a timeout that ran out only because segstream itself was paused
(SIGSTOP, suspend: ``pauses``), or in its aftermath, says so, with ``paused_s``, instead of blaming the input.

Frame indices keep counting across sessions; PTS stay strictly increasing (``Timeline``), the
gap over an outage being the real time it lasted; ``epoch`` counts the sessions that delivered
frames. Frame size and codec may differ from one session to the next. Another sender taking over
a stream's address starts a new epoch too (``_Sender``); one whose stream the session's decoder
cannot read (another codec: it makes nothing of a second of packets, ``InputChanged``) has the
input opened again at once, with a new demuxer and decoder, rather than reconnected; the new
decoder decodes the packets the old one made nothing of first (the new sender's first keyframe is
among them). Each state
the source enters is reported to ``on_state`` (set by the runtime) with its reason.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

import numpy as np

from segstream.connectors.av_input import (
    AVInput,
    CaptureThread,
    InputChanged,
    InputInfo,
    InputPortInUse,
    InputRefused,
    InputTimeout,
    InputUnreachable,
    InputUnsupported,
    Picture,
)
from segstream.connectors.catch_up import CatchUp, CatchUpTally
from segstream.connectors.colour import ColourConversion
from segstream.connectors.deinterlace import Deinterlace, Deinterlacer
from segstream.connectors.clock import Pacer, Timeline
from segstream.connectors.errors import ResourceLimit, SourceError
from segstream.connectors.frame_rate import FrameRateCap
from segstream.connectors.frames import Frame, times_at
from segstream.connectors.pauses import pauses
from segstream.connectors.source import DOWN_STATES, StateListener, tell_state
from segstream.connectors.threads import waiting_for_input
from segstream.connectors.urls import exclusive_input, redact_url, rtsp_address

logger = logging.getLogger("segstream.sources")

_POLL_S = 0.1  # how often a wait for the next frame checks close() and the watchdog
_PORT_CHECK_S = 0.5  # how often a reconnect's wait checks whether the server's port accepts again
_RESOLVE_AGAIN_S = 30.0  # how old a camera's looked-up address may get before it is looked up again
# An input silent for longer than this before a pause of segstream began is not waiting on the pause: its
# own silence (a 1 fps camera sends a frame a second)
SILENT_BEFORE_PAUSE_S = 1.5
# FFmpeg's own timeouts run this much longer than ours: ours decide and report, FFmpeg's only
# end a capture thread that was given up on.
_FFMPEG_TIMEOUT_MARGIN_S = 1.0
# How much of a finite input's length may go unplayed and still be a normal end: of its video's
# own length, less than any segment a playlist could skip and more than its durations' rounding;
# of a container's length (Matroska's, MPEG-TS's), which its audio may outlast, more.
_FINITE_SLACK_S = 0.5
_CONTAINER_SLACK_S = 2.0
# Formats whose size is a manifest's, not the video's.
_MANIFESTS = ("hls", "dash")


def picture_format(format_name: str) -> bool:
    """Whether FFmpeg read the input as a picture: a ``*_pipe`` demuxer (``jpeg_pipe``,
    ``png_pipe``, ``bmp_pipe``: a picture named by its bytes), or ``image2`` (one named by its
    path's suffix: a JPEG of more than 2 KB at a URL ending in .jpg or .jpeg, found probing)."""
    return format_name == "image2" or format_name.endswith("_pipe")


def single_picture(shown: str) -> str:
    """What to say of a stream source whose input held one picture (a camera's snapshot URL)."""
    return (f"'{shown}' is a single picture (a camera's snapshot URL?), not a video stream — poll it with type: "
            "snapshot (url, interval_s), or give a stream source the camera's MJPEG (multipart) or RTSP URL")


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    """How long a live source waits for its input, and how it retries.

    ``open_timeout_s`` bounds a whole open (connect, handshake, stream probing); ``read_timeout_s``
    the time without any data once open; ``stall_timeout_s`` the time without a decoded frame.
    Reconnect attempt n waits between half and all of ``min(max_delay_s, delay_s * 2**(n-1))``.
    ``wait_for_input`` retries an input that is missing or refuses us before its first frame (a
    publisher or camera not started yet) instead of failing the source at once, and a live
    playlist its publisher finished until it is live again, instead of ending the source.
    """

    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    stall_timeout_s: float = 10.0
    max_reconnects: int | None = None
    delay_s: float = 0.5
    max_delay_s: float = 30.0
    wait_for_input: bool = False

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.max_delay_s, self.delay_s * 2 ** max(0, attempt - 1))
        return base / 2 + rng.uniform(0, base / 2)

    def given_up(self, failures: int, reason: str) -> str | None:
        """Why the source fails after ``failures`` attempts in a row, the last lost because of
        ``reason``, once they are more than ``max_reconnects``; None while it retries."""
        limit = self.max_reconnects
        if limit is None or failures <= limit:
            return None
        return f"{reason}; gave up after {limit} reconnect attempt{'s' if limit != 1 else ''}"


def _port_accepts(address: tuple[int, tuple], timeout_s: float) -> bool:
    """Whether a TCP connection to ``address`` (family, socket address) is accepted within
    ``timeout_s`` (closed at once)."""
    family, sockaddr = address
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.settimeout(timeout_s)
            probe.connect(sockaddr)
    except OSError:
        return False
    return True


LOOKING = object()  # what ``Resolver.get`` says before its first lookup has ended


class Resolver:
    """A host name's address, looked up on a thread of its own (``getaddrinfo`` takes no timeout,
    and a network that is down may keep it for many seconds: the source's wait must not), at most
    one lookup at a time; a found address is looked up again once ``_RESOLVE_AGAIN_S`` old, a
    failed lookup at the next ``get``."""

    def __init__(self):
        self._found: tuple[float, tuple[int, tuple] | None] | None = None  # (when, address or None: none found)
        self._looking: threading.Thread | None = None
        self._lock = threading.Lock()

    def get(self, host: str, port: int) -> tuple[int, tuple] | None | object:
        """The address last found for ``host``:``port``; None when the last lookup found none (a name
        that does not resolve now: the camera is unreachable), ``LOOKING`` before the first ends."""
        with self._lock:
            found, looking = self._found, self._looking
            again = found is None or found[1] is None or time.monotonic() - found[0] > _RESOLVE_AGAIN_S
            if again and (looking is None or not looking.is_alive()):
                self._looking = threading.Thread(target=self._look, args=(host, port), daemon=True,
                                                 name="segstream-resolve")
                self._looking.start()
        return found[1] if found is not None else LOOKING

    def _look(self, host: str, port: int) -> None:
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            address = (info[0][0], info[0][4]) if info else None
        except (OSError, UnicodeError):  # no such name now; a label too long for IDNA
            address = None
        with self._lock:
            self._found = (time.monotonic(), address)


def port_back_within(delay_s: float, closed: threading.Event, resolver: Resolver, host: str, port: int,
                     seen_closed: bool) -> float | None:
    """Wait up to ``delay_s`` (a retry's backoff), checking every ``_PORT_CHECK_S`` whether
    ``host``:``port`` accepts a TCP connection: the seconds of the wait left when it accepts again
    after refusing or not answering (at the attempt: ``seen_closed``, or during the wait), so that
    a camera back from a reboot is read within a second, not at the end of a backoff grown over its
    outage; None when the wait ran out or ``closed`` was set (a port that accepted all along, a
    server answering badly, waits its backoff, probed once)."""
    deadline = time.monotonic() + delay_s
    while (left := deadline - time.monotonic()) > 0:
        if closed.wait(min(left, _PORT_CHECK_S)):
            return None
        if (resolved := resolver.get(host, port)) is LOOKING:  # its name being looked up
            continue
        accepts = resolved is not None and _port_accepts(resolved, _PORT_CHECK_S)
        if accepts and seen_closed:
            return max(0.0, deadline - time.monotonic())
        if accepts:  # accepting all along: a server up but answering badly (a camera still booting)
            # waits its backoff unprobed: a connection every half second is dozens a minute to a
            # camera that may take few sessions (found probing as a home-lab NVR user: 86 in 40 s)
            closed.wait(max(0.0, deadline - time.monotonic()))
            return None
        seen_closed = True
    return None


def _length(seconds: float) -> str:
    return "length unknown" if seconds == math.inf else f"{seconds:.1f} s"


class _Played:
    """How much of the input's time a session's frames covered: each frame the time since the one
    before, but a jump (more than a second, or two frames) only the frame's own step, the rest
    counted as ``skipped_s`` (a segment FFmpeg could not fetch, or a playlist's discontinuity)."""

    def __init__(self):
        self.seconds = 0.0
        self.skipped_s = 0.0
        self.frames = 0
        self._previous_s: float | None = None

    def add(self, picture: Picture, step_s: float) -> None:
        self.frames += 1
        at_s = float(picture.pts * picture.time_base) if picture.pts is not None else None
        ahead_s = at_s - self._previous_s if at_s is not None and self._previous_s is not None else None
        if ahead_s is not None and 0 < ahead_s <= max(1.0, 2 * step_s):
            self.seconds += ahead_s
        else:
            self.seconds += step_s
            if ahead_s is not None and ahead_s > 0:
                self.skipped_s += ahead_s - step_s
        self._previous_s = at_s


class _Delivered:
    """The frames a live HLS source delivered in the last ``window_s`` of the input's time: each
    one's timestamp and a digest of its pixels. A live playlist opened again starts a few segments
    back from its newest, and its first frames decode bit for bit as before (segments start at key
    frames); a restarted publisher's frames differ in timestamp or pixels."""

    def __init__(self, window_s: float = 60.0, limit: int = 10_000):
        self.window_s = window_s
        self.limit = limit
        self._digests: dict[tuple[int, Fraction], bytes] = {}
        self._order: deque[tuple[float, tuple[int, Fraction]]] = deque()

    @staticmethod
    def _digest(picture: Picture) -> bytes:
        sample = np.ascontiguousarray(picture.image[::8, ::8])
        digest = hashlib.blake2b(str(sample.shape).encode(), digest_size=16)
        digest.update(sample.data)
        return digest.digest()

    def add(self, picture: Picture) -> None:
        if picture.pts is None:
            return
        key = (picture.pts, picture.time_base)
        seconds = float(picture.pts * picture.time_base)
        self._digests[key] = self._digest(picture)
        self._order.append((seconds, key))
        while self._order and (len(self._order) > self.limit or self._order[0][0] < seconds - self.window_s):
            self._digests.pop(self._order.popleft()[1], None)

    def holds(self, picture: Picture) -> bool:
        if picture.pts is None:
            return False
        known = self._digests.get((picture.pts, picture.time_base))
        return known is not None and known == self._digest(picture)


class _Lost(Exception):
    """A session ended; ``reason`` says why, ``data`` carries the details for the state event."""

    def __init__(self, reason: str, data: dict[str, Any] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.data = data or {}


# MPEG-TS timestamps: 33 bits of a 90 kHz clock
MPEG_TS_TIME_BASE = Fraction(1, 90000)
MPEG_TS_WRAP = 1 << 33


class _Sender:
    """Tells, from a live stream's pictures, when another sender took over the same address (an
    encoder restarted into the same UDP port): its frames change size, or its timestamps jump
    ahead of the clock, or back, by more than ``JUMP_S``, or go on by less than half of a silence
    of more than ``SILENCE_S`` before them (a clock that did not run through it: an encoder
    restarted within the read timeout). The source then starts a new epoch in
    the same session (its timeline placed after the last frame by the time that passed, a
    ``streaming`` state with the new size): read on unannounced, frames changed size with no
    event and the first sender's timestamps jumped 26 hours ahead."""

    JUMP_S = 5.0
    SILENCE_S = 1.0  # a silence longer than this that the timestamps do not show is a new sender's
    HELD_BACK = 3  # frames after such a silence that may still be the old sender's, held in the demuxer and decoder

    def __init__(self, shown: str, silences: bool = True):
        self.shown = shown
        # a silence tells only where another sender can take the address over (UDP, a listener); a
        # stream we connect to (RTSP, RTMP, HTTP, SRT caller) resumes after a stall with its backlog
        self.silences = silences
        self.size: tuple[int, int] | None = None
        self.last: tuple[int, Any, float] | None = None  # pts, time base, monotonic time it was decoded
        self.silence_s = 0.0  # before the picture last found to be a new sender's, when over SILENCE_S
        self.held_s = 0.0  # back-pressure since the last picture checked, in pictures left out (max_fps)
        # a silence the last pictures came after going on a frame at a time, and how many more may
        # still be the old sender's (the demuxer and the decoder each hold one back): a jump tells
        self.pending_s, self.pending_left = 0.0, 0

    def check(self, picture: Picture) -> str | None:
        """Why ``picture`` comes from a new sender, or None (its size and timing go on)."""
        size, now = picture.size or picture.image.shape[:2], picture.decoded_at  # not the Unix clock: it steps
        previous, last, held_s = self.size, self.last, self.held_s + picture.held_s
        self.size, self.held_s = size, 0.0
        self.last = (picture.pts, picture.time_base, now) if picture.pts is not None else None
        self.silence_s, pending = 0.0, self.pending_s
        self.pending_left = max(0, self.pending_left - 1)
        if not self.pending_left:
            self.pending_s = 0.0
        if previous is not None and size != previous:
            return self._new(f"its frames changed size from {previous[1]}x{previous[0]} to {size[1]}x{size[0]}",
                             pending)
        if last is not None and picture.pts is not None and picture.time_base == last[1]:
            ticks = picture.pts - last[0]
            if picture.time_base == MPEG_TS_TIME_BASE and picture.pts // MPEG_TS_WRAP != last[0] // MPEG_TS_WRAP:
                # FFmpeg's wrap correction (2^33 added) made a new sender's clock, gone back 816 s,
                # read as 26 hours ahead; a clock crossing the wrap is the smaller of the two
                unwrapped = picture.pts % MPEG_TS_WRAP - last[0] % MPEG_TS_WRAP
                ticks = unwrapped if abs(unwrapped) < abs(ticks) else ticks
            jump = float(ticks * picture.time_base)
            waited = now - last[2]
            silence = waited - held_s  # a wait of ours (back-pressure) is no silence of the sender's
            step_s = float(picture.step * picture.time_base)
            next_frame = 0 < jump <= 2 * step_s + 0.05  # one or two frames on: the same clock
            caught_up_s = picture.left_out * step_s  # frames left undecoded, read faster than they came
            if jump - caught_up_s > waited + self.JUMP_S or jump < -self.JUMP_S:
                # after a silence, the old sender's frames held back came first: the wait was the silence
                return self._new(f"its timestamps jumped {jump:+.1f} s in {max(waited, pending):.1f} s",
                                 max(silence if silence > self.SILENCE_S and self.silences else 0.0, pending))
            if pending and not next_frame:
                if jump < pending / 2:
                    return self._new(f"its timestamps went {jump:+.1f} s on after {pending:.1f} s of silence", pending)
                # the frames held back were the old sender's last, and its clock ran through the silence: the
                # network's outage, not a new sender (a 4 s one was read as one: a new epoch, its tracks ended)
                self.pending_s, self.pending_left = 0.0, 0
                return None
            # A sender's clock runs through a silence of its own or the network's (its next frame is
            # as much later); one that did not was started again: an encoder restarted within the
            # read timeout, its clock from about where the old one began. Unless segstream itself
            # was paused meanwhile (then the socket's buffered frames come late, not new). Frames
            # going on one at a time are the old sender's last (up to HELD_BACK), which the demuxer
            # and decoder give only when the new sender's packets push them out: a jump then tells.
            if (self.silences and silence > self.SILENCE_S and jump < silence / 2
                    and not pauses.since(time.monotonic() - waited)):
                if next_frame:
                    self.pending_s, self.pending_left = silence, self.HELD_BACK
                    return None
                return self._new(f"its timestamps went {jump:+.1f} s on after {silence:.1f} s of silence", silence)
        return None

    def _new(self, reason: str, silence_s: float) -> str:
        """``reason``, the picture being a new sender's after ``silence_s`` of silence."""
        self.silence_s, self.pending_s, self.pending_left = silence_s, 0.0, 0
        return reason


class LiveSource:
    """A live FFmpeg input (``target``: URL or device, ``format``: forced demuxer, ``options``:
    FFmpeg options) that reconnects until closed; see the module docstring.

    ``describe(info, picture)`` adds details to the ``streaming`` state (a camera's requested
    and negotiated formats). ``seed`` fixes the jitter (tests).
    """

    live = True

    def __init__(
        self,
        name: str,
        target: str,
        *,
        policy: ReconnectPolicy = ReconnectPolicy(),
        format: str | None = None,
        options: dict[str, str] | None = None,
        low_latency: bool = True,
        shown: str | None = None,
        describe: Callable[[InputInfo, Picture], dict[str, Any]] | None = None,
        seed: int | None = None,
        max_fps: float | None = None,
        max_behind_s: float | None = None,
        deinterlace: Deinterlace = "auto",
    ):
        self.name = name
        self.target = target
        self.max_fps = max_fps
        self._finished_skipped = 0  # frames over max_fps of sessions already let go
        self.max_behind_s = max_behind_s
        # what its sessions' catch-ups left undecoded, and whether they said so
        self.catch_up_tally = CatchUpTally(log_extra={"source": name}) if max_behind_s is not None else None
        self.shown = shown if shown is not None else redact_url(target)
        self.policy = policy
        self.format = format
        self.options = dict(options or {})
        self.low_latency = low_latency
        self.describe = describe
        self.on_state: StateListener | None = None
        self.state = "connecting"
        self.reconnects = 0
        self.epoch = 0
        self.info: InputInfo | None = None  # of the session now streaming
        self._in_bursts = False  # whether its data comes a segment at a time (HLS, DASH), seconds apart
        self.colour = ColourConversion()  # its sessions' frames to RGB, told once
        self.fields = Deinterlacer(deinterlace)
        # for a displayed (height, width), the size to decode at (set by the runtime; see AVInput)
        self.decode_size: Callable[[int, int], tuple[int, int]] | None = None
        self._finished_errors = 0
        self._finished_gap_s = 0.0
        self._capture: CaptureThread | None = None
        self._retired: CaptureThread | None = None  # the last session let go, maybe still closing
        self._port_held_since: float | None = None  # monotonic time of the first open that found the port held
        self._carried: tuple[bytes, ...] = ()  # packets a session its decoder could not read hands to the next one
        self._rng = random.Random(seed)
        self._resolver = Resolver()  # its host's address, for the reconnect waits' port checks
        self._closed = threading.Event()
        self._lock = threading.Lock()

    @property
    def decode_errors(self) -> int:
        capture = self._capture
        return self._finished_errors + (capture.decode_errors if capture is not None else 0)

    @property
    def gap_s(self) -> float:
        """Seconds of silence not counted as frames nor in a state without frames, over all
        sessions: gaps longer than a second in its timestamps within sessions (lost, or a sender's
        pause), the silence before a stall, and that before a new sender's frames."""
        capture = self._capture
        current = getattr(capture.input, "gap_s", 0.0) if capture is not None else 0.0
        return self._finished_gap_s + current

    @property
    def frames_skipped(self) -> int:
        """Frames left out on purpose, over all sessions: decoded over ``max_fps`` (never converted
        nor counted as decoded by the runtime), and left undecoded to catch up with live
        (``frames_caught_up``)."""
        capture = self._capture
        cap = getattr(capture.input, "cap", None) if capture is not None else None
        return self._finished_skipped + (cap.skipped if cap is not None else 0) + self.frames_caught_up

    @property
    def frames_caught_up(self) -> int:
        """Frames left undecoded to catch up with live (``max_behind_s``), over all sessions."""
        return self.catch_up_tally.skipped if self.catch_up_tally is not None else 0

    @property
    def catches_up(self) -> bool:
        """Whether it leaves frames undecoded to catch up with live (and says so itself)."""
        return self.max_behind_s is not None

    def _capped_open(self):
        """A session's input (``_open``), with a frame-rate cap of its own when ``max_fps`` is set:
        each session's first frame is kept, wherever its timestamps start, the later ones on the
        clock's grid (``FrameRateCap``)."""
        opened = self._open()
        opened.cap = FrameRateCap(self.max_fps, on_clock=True) if self.max_fps is not None else None
        if self.max_behind_s is not None and not opened.wall_times:  # (made-up timestamps tell no lag)
            opened.catch_up = CatchUp(self.max_behind_s, float(opened.time_base), float(opened.step * opened.time_base),
                                      self.catch_up_tally, self.name, edge_from_waits=opened.format_name not in _MANIFESTS)
        opened.carried, self._carried = self._carried, ()
        opened.log_extra = {"source": self.name}
        return opened

    def _open(self) -> AVInput:
        return AVInput(
            self.target,
            self.shown,
            format=self.format,
            options=self.options,
            timeout=(self.policy.open_timeout_s, self.policy.read_timeout_s),
            low_latency=self.low_latency,
            colour=self.colour,
            fields=self.fields,
            scale=self.decode_size,
            lost_are_errors=True,
            grace_s=_FFMPEG_TIMEOUT_MARGIN_S,
            sender_may_change=True,
        )

    def frames(self) -> Iterator[Frame]:
        timeline = Timeline()
        index = 0
        failures = 0
        epoch = -1
        reason = ""  # why the last session was lost
        last_frame_at: float | None = None
        failed = False
        ended = "stopped"
        was_live = False  # a session opened without a length: a live stream
        warned = False  # that a finite input is played as a stream
        pacer = Pacer()  # plays an input with a length, or a live playlist's bursts, at its own rate
        delivered = _Delivered()  # of a live HLS playlist, to know its segments when opened again
        restarted: str | None = None  # why the input was opened again for a new sender, until its first frame
        self._enter("connecting", f"opening '{self.shown}'", {"url": self.shown})
        pauses.start()  # a stall over our own pause (SIGSTOP, suspend) is not the input's
        try:
            while not self._closed.is_set():
                if not self._port_released():
                    break
                finite: float | None = None  # the input's length, when the source ends with it
                first = True  # no frame yet from this session
                played = _Played()
                repeats = 0  # frames already delivered by an earlier session, skipped
                try:
                    with self._lock:
                        if self._closed.is_set():
                            break
                        capture = self._capture = CaptureThread(self.name, self._capped_open).start()
                    opened = self._wait_open(capture, never_streamed=epoch < 0)
                    if opened is None:
                        break
                    length, hls = opened.duration_s, opened.format_name == "hls"
                    self._in_bursts = opened.format_name in _MANIFESTS  # a playlist's segments: seconds apart
                    if length is None and opened.size_bytes is not None and opened.format_name not in _MANIFESTS:
                        # a file served whole (an MPEG-TS over HTTP): it ends with its data, and
                        # opened again it would start over (a playlist's size is its text's)
                        length = math.inf
                    if length is not None and was_live and hls:
                        # a live playlist its publisher finished (#EXT-X-ENDLIST): reading it
                        # again would publish its last segments a second time
                        finished = f"'{self.shown}' has ended: its publisher finished the stream"
                        if not self.policy.wait_for_input:
                            ended = finished
                            break
                        raise _Lost(f"{finished}; waiting for it to go live again", {"phase": "open", "finished": True})
                    if not was_live:  # once live, what any other input plays next is more of the stream
                        finite = length
                    was_live = was_live or length is None
                    if finite is not None and not warned and not picture_format(opened.format_name):
                        # (a picture, a snapshot URL's, is said to be one when it ends: not a video to use type: file for)
                        warned = True
                        logger.warning(
                            "source %s: '%s' is a finite video (%s), played as a live stream at its own rate "
                            "(frames the model cannot keep up with are dropped), ending with the video — use "
                            "type: file to process every frame as fast as the model goes", self.name, self.shown,
                            _length(finite),
                        )
                    remember = hls and length is None
                    repeating = remember and epoch >= 0  # opened again: it starts with frames already delivered
                    sender = _Sender(self.shown, exclusive_input(self.target)) if length is None and not hls else None
                    held_s = 0.0  # reads held back since the last frame placed (left-out ones' too)
                    for picture in self._read(capture):
                        held_s += picture.held_s
                        if picture.image is None:  # over max_fps: its place counted, the frame left out
                            index += picture.skipped + picture.left_out + 1
                            if sender is not None:
                                sender.held_s += picture.held_s
                            continue
                        if sender is not None and (new_sender := sender.check(picture)) is not None:
                            epoch += 1  # a sender restarted on the same address: a new epoch, said so
                            self.epoch = epoch
                            # down meanwhile, as in any silence; the part its timestamps show is in gap_s already
                            self._finished_gap_s += max(0.0, sender.silence_s - picture.gap_s)
                            since_last = time.monotonic() - last_frame_at if last_frame_at is not None else 0.0
                            timeline.restart(max(since_last, sender.silence_s))  # the silence may precede the old sender's last frame
                            self._streaming(opened.info, picture, epoch, 0, restarted=new_sender)
                        if repeating and delivered.holds(picture):
                            repeats += 1
                            continue
                        repeating = False
                        step_s = float(picture.step * picture.time_base)
                        if first:
                            first = False
                            failures = 0
                            epoch += 1
                            self.epoch = epoch
                            if last_frame_at is not None:
                                timeline.restart(time.monotonic() - last_frame_at)
                            self._streaming(opened.info, picture, epoch, repeats, restarted=restarted, reopened=True)
                            restarted = None
                        played.add(picture, step_s)
                        if remember:
                            delivered.add(picture)
                        # a live sender's frames are timed by their arrival where their clock goes back; a
                        # playlist's (fetched a segment at a time) and a finite video's are not
                        pts = timeline.place(picture.pts, picture.time_base, picture.step,
                                             picture.decoded_at if sender is not None else None, held_s)
                        held_s = 0.0
                        # frames the decoder rejected leave a gap, as drops do, and those left undecoded
                        index += picture.skipped + picture.left_out
                        # A live stream comes at its rate; an input with a length, and a live playlist
                        # (a segment's frames decode at once), are played at theirs. A finite video
                        # stands in for a camera: its frames are captured when due. A playlist's were
                        # captured when they came: the time they wait here is latency.
                        if length is not None or hls:
                            pace_s = max(step_s, 1 / self.max_fps) if self.max_fps is not None else step_s
                            if not pacer.wait(timeline.seconds(pts), pace_s, self._closed):
                                break
                            if length is not None:
                                picture.capture_wall = time.time()
                        last_frame_at = time.monotonic()
                        yield Frame(
                            source=self.name,
                            index=index,
                            image=picture.image,
                            pts=pts,
                            time_base=timeline.time_base,
                            pts_seconds=timeline.seconds(pts),
                            capture_wall=picture.capture_wall,
                            epoch=epoch,
                            sender_wall=picture.sender_wall,
                            size=picture.size,
                            sample_aspect=picture.sample_aspect,
                            # (a finite video's frame captured when due: now, not when decoded)
                            times=times_at(picture.capture_wall, 0.0 if length is not None else picture.decoded_at),
                        )
                        index += 1
                    break  # _read returns only once closed
                except _Lost as lost:
                    reason, details = lost.reason, lost.data
                    if details.get("changed") and not first:
                        # a new sender this decoder cannot read: a new demuxer and decoder at once,
                        # no reconnect, that decode the packets it made nothing of first (the new
                        # sender's first keyframe is among them); those counted lost leave their gap
                        restarted = reason
                        index += details["unread"]
                        continue
                    if finite is not None and first and "mp4" in opened.format_name and details.get("phase") == "read":
                        reason += (" — over HTTP an mp4 needs its index first (ffmpeg -movflags +faststart) or a server "
                                   "that sends byte ranges")
                    if first and repeats:
                        details = {**details, "repeats_skipped": repeats}
                    if finite is not None and not first:  # opened again it would start over
                        ended = self._finite_end(reason, details, finite, played, opened.video_duration,
                                                 opened.format_name)
                        break
                except ResourceLimit as error:
                    # the machine's or container's limit (threads, pids), which other processes and
                    # sources share: it may have room at the next attempt, so the camera waits, said so
                    reason, details = str(error), {"phase": "open", "resource_limit": True}
                except (InputUnsupported, InputRefused) as error:
                    failed = True
                    self._enter("failed", str(error), {"url": self.shown})
                    raise SourceError(f"source {self.name} failed: {error}") from None
                finally:
                    self._retire()
                if self._closed.is_set():
                    break
                if self._carried:  # not opened again at once: what the next decoder was to read is lost
                    lost = len(self._carried) - 1  # the first gave the old decoder's last picture
                    index += lost
                    self._finished_errors += lost
                    self._carried = ()
                failures += 1
                if (given_up := self.policy.given_up(failures, reason)) is not None:
                    failed = True
                    self._enter("failed", given_up, {**details, "attempts": self.policy.max_reconnects})
                    raise SourceError(f"source {self.name} failed: {given_up}")
                delay = self.policy.delay(failures, self._rng)
                restarted = None  # lost, not handed over: what follows is a reconnect
                self.reconnects += 1
                self._enter(
                    "reconnecting", reason, {**details, "attempt": failures, "delay_s": round(delay, 3)}
                )
                if self._wait_to_retry(delay, details.get("unreachable", False)):
                    break
        except GeneratorExit:
            raise
        except BaseException:
            failed = True  # the runtime reports it as the failure
            raise
        finally:
            self._retire()
            if not failed:
                if epoch < 0 and ended == "stopped" and self.reconnects:  # down the whole run: not a normal end
                    ended = (f"stopped before it ever streamed ({self.reconnects} reconnect attempt"
                             f"{'s' if self.reconnects != 1 else ''}; the last because: {reason})")
                elif epoch < 0 and ended == "stopped":
                    ended = "stopped while connecting, before it ever streamed"
                # SCHEMA: no frame ever delivered (also when stopped during its first attempt; found
                # probing: such a camera's ended event looked like a healthy one's)
                self._enter("ended", ended, {"never_streamed": True} if epoch < 0 else {})

    def _wait_to_retry(self, delay: float, seen_closed: bool) -> bool:
        """Wait ``delay`` before the next attempt (True: closed meanwhile). An RTSP camera is
        retried at once when its port, refusing or unreachable at the attempt (``seen_closed``) or
        at a check during the wait, accepts a connection (checked every ``_PORT_CHECK_S``): a
        camera that comes back is read within a second, not at the end of a backoff grown over its
        outage. A port found accepting all along (a server that answers badly) waits the rest of
        its backoff unprobed. RTSP only: a camera serves many clients,
        and a bare connection closed at once costs it nothing; FFmpeg serving HTTP, TCP or RTMP
        itself (``-listen 1``) takes one client, which the check would use up."""
        address = rtsp_address(self.target)
        if address is None:
            return self._closed.wait(delay)
        left = port_back_within(delay, self._closed, self._resolver, *address, seen_closed)
        if left is not None:
            logger.info("source %s: '%s' accepts connections again: retrying now, %.1f s before its backoff "
                        "ended", self.name, self.shown, left)
            return False
        return self._closed.is_set()

    def _finite_end(self, reason: str, details: dict[str, Any], length: float, played: _Played,
                    video_length: bool, format_name: str = "") -> str:
        """How a session of a finite input that was lost (``reason``) ends the source: normally
        when the input ended it having played it whole (its length unknown: its data ran to its
        end; a jump in its timestamps alone may be a playlist's discontinuity, not a loss), else
        as failed; failed too a single picture (a camera's snapshot URL: it ended the source
        after one frame, exit 0, found probing MJPEG cameras)."""
        if details.get("ended") and played.frames == 1 and picture_format(format_name):
            picture = single_picture(self.shown)
            self._enter("failed", picture, {**details, "url": self.shown})
            raise SourceError(f"source {self.name} failed: {picture}")
        slack = _FINITE_SLACK_S if video_length else _CONTAINER_SLACK_S
        if details.get("ended") and (length == math.inf or played.seconds >= length - slack):
            return f"'{self.shown}' is a finite video and has ended"
        if details.get("ended"):  # FFmpeg skipped what it could not fetch
            of = f" of its {length:.1f} s" if length != math.inf else ""
            jumped = f", {played.skipped_s:.1f} s of it skipped" if played.skipped_s else ""
            reason = f"{reason} after {played.seconds:.1f} s{of}{jumped}"
        lost_part_way = f"'{self.shown}' is a finite video and was lost part-way ({reason})"
        self._enter("failed", lost_part_way, {**details, "url": self.shown})
        raise SourceError(f"source {self.name} failed: {lost_part_way} — use type: file for it")

    def _wait_open(self, capture: CaptureThread, never_streamed: bool) -> AVInput | None:
        """The opened input, None once closed. An input missing or refusing us (wrong password,
        path or device) ends a source that never streamed, unless the policy waits for it:
        retrying it forever would hide the mistake; a source that has streamed retries (a camera
        rebooting may refuse accounts, a replugged one be missing, until it is up). A port to
        listen on that another process holds is retried for ``open_timeout_s`` first (a session
        or run letting go of it: a source removed and added again, a restart's overlap)."""
        timeout_s = self.policy.open_timeout_s
        opening_since = time.monotonic()
        try:
            opened = capture.wait_open(timeout_s, self._closed, self.shown)
            self._port_held_since = None
            return opened
        except InputUnsupported:
            raise
        except InputPortInUse as error:
            now = time.monotonic()
            held_s = now - (self._port_held_since or now)
            self._port_held_since = self._port_held_since or now
            if never_streamed and not self.policy.wait_for_input and held_s >= timeout_s:
                raise InputRefused(f"{error} (for {held_s:.0f} s before the first frame: not retried further; "
                                   "wait_for_input: true waits for it)") from None
            raise _Lost(str(error), {"phase": "open", "refused": True}) from None
        except InputRefused as error:
            if never_streamed and not self.policy.wait_for_input:
                hint = "; wait_for_input: true waits for it" if error.missing else ""
                raise InputRefused(f"{error} (before the first frame: not retried{hint})", error.missing) from None
            raise _Lost(str(error), {"phase": "open", "refused": True}) from None
        except InputTimeout as error:
            reason, data = self._paused_over(opening_since, str(error), {"phase": "open", "timeout_s": timeout_s})
            raise _Lost(reason, data) from None
        except InputUnreachable as error:
            raise _Lost(str(error), {"phase": "open", "unreachable": True}) from None
        except SourceError as error:
            raise _Lost(str(error), {"phase": "open"}) from None

    def _read(self, capture: CaptureThread) -> Iterator[Picture]:
        """The session's pictures until close(); raises ``_Lost`` when the session ends, fails,
        or the watchdog gives up on it (entering ``stalled`` first)."""
        policy = self.policy
        waiting_since = time.monotonic()  # when the consumer last asked for a frame
        try:
            while True:
                try:
                    # no progress while the stream sends nothing is no stuck thread: the timeouts below bound it
                    waiting_for_input("waiting for the stream's next frame")
                    picture = capture.next(_POLL_S)
                except EOFError:
                    raise _Lost(f"'{self.shown}' ended the stream", {"phase": "read", "ended": True}) from None
                except InputTimeout as error:
                    self._stall(str(error), "read", error.timeout_s, max(capture.last_read, waiting_since))
                except InputChanged as error:
                    self._carried = error.carried  # for the next session's decoder, if it is opened at once
                    raise _Lost(str(error), {"phase": "read", "changed": True, "unread": error.unread}) from None
                except SourceError as error:
                    raise _Lost(str(error), {"phase": "read"}) from None
                if self._closed.is_set():
                    return
                if picture is None:
                    now = time.monotonic()
                    if _waited(max(capture.last_read, waiting_since), now) > policy.read_timeout_s:
                        self._stall(
                            f"no data from '{self.shown}' for {policy.read_timeout_s:g} s (read timeout)",
                            "read",
                            policy.read_timeout_s,
                            max(capture.last_read, waiting_since),
                        )
                    # packets left undecoded to catch up with live are a stream that goes on, not a stall
                    skipping = self.catch_up_tally.last_skip if self.catch_up_tally is not None else 0.0
                    if _waited(max(waiting_since, skipping), now) > policy.stall_timeout_s:
                        self._stall(
                            f"no frame from '{self.shown}' for {policy.stall_timeout_s:g} s while data arrives "
                            "(stall timeout)",
                            "stall",
                            policy.stall_timeout_s,
                            waiting_since,
                        )
                    continue
                waiting_for_input(None)
                yield picture
                waiting_since = time.monotonic()
        finally:
            waiting_for_input(None)

    def _stall(self, reason: str, phase: str, timeout_s: float, since: float) -> None:
        """Enter ``stalled`` and give the session up: nothing came since ``since`` (monotonic).
        That silence was down time too, unless it was spent in a down state already (a session
        opened while reconnecting that brought nothing new: a stale playlist's, counted twice,
        found probing HLS): the stalled state's own counts from now."""
        if self.state not in DOWN_STATES:
            self._finished_gap_s += max(0.0, time.monotonic() - since)
        reason, data = self._paused_over(since, reason, {"phase": phase, "timeout_s": timeout_s})
        self._enter("stalled", reason, data)
        raise _Lost(reason, data)

    def _paused_over(self, since: float, reason: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """``reason`` and ``data`` of a timeout that ran out waiting since ``since``, or when
        segstream itself was paused meanwhile (SIGSTOP, suspend) and would not have run out
        without the pause, the input still sending until the pause began (within
        ``SILENT_BEFORE_PAUSE_S``), a reason that says so, not the input's fault, and ``paused_s``. So
        is a wait that began within a timeout after a pause ended: the pause's aftermath (a
        socket's backlog read at once, then a stream that resyncs or lost what overran its buffer)."""
        paused_s = pauses.since(since)
        if paused_s > 0 and time.monotonic() - since - paused_s >= data["timeout_s"]:
            return reason, data
        if paused_s == 0 or self._silent_before_pause(since, data["phase"]):
            # no pause in the wait, or the input silent before it: the pause's only as an earlier one's aftermath
            last = pauses.last_before(since)
            if last is None or since - last[0] > data["timeout_s"]:
                return reason, data
            paused_s = paused_s or last[1]
        return (
            f"segstream was paused for {paused_s:.1f} s (SIGSTOP, suspend, VM pause, or a machine too busy to run it), "
            f"past the {data['timeout_s']:g} s {data['phase']} timeout of '{self.shown}': not the source's fault",
            {**data, "paused_s": round(paused_s, 1)},
        )

    def _silent_before_pause(self, since: float, phase: str) -> bool:
        """Whether a read's input, waited on since ``since``, had gone silent well before the first
        pause within the wait began (found probing an edge box: a camera stopped 4 s before a 1.5 s
        pause of a busy core was "not the source's fault"): longer than ``SILENT_BEFORE_PAUSE_S``,
        or two of its frames. Not an open's (its wait began with the attempt, not at the last data),
        nor a playlist's, whose data comes a segment at a time."""
        first = pauses.first_after(since)
        if phase != "read" or self._in_bursts or first is None:
            return False
        fps = self.info.fps if self.info is not None else None
        allowed = max(SILENT_BEFORE_PAUSE_S, 2 / fps if fps else 0.0)
        return first[0] - first[1] - since > allowed

    def _streaming(self, info: InputInfo, picture: Picture, epoch: int, repeats: int,
                   restarted: str | None = None, reopened: bool = False) -> None:
        height, width = picture.size or picture.image.shape[:2]
        fps = None if restarted and not reopened else info.fps  # a new sender's rate is the probed one's only reopened
        # the source's nominal rate (segstream_source_nominal_fps) stays the one probed at the open
        self.info = replace(info, width=width, height=height)
        data = {"url": self.shown, "epoch": epoch, "reconnects": self.reconnects, **self.info.as_dict()}
        if fps is None:
            data["fps"] = None
        if self.describe is not None:
            data.update(self.describe(self.info, picture))
        reason = f"{width}x{height} {info.codec}" + (f" at {fps:g} fps" if fps else "")
        if restarted:
            data["restarted"] = True
            reason += f", its stream started anew: {restarted}"  # another sender, or the camera's own new settings
        if repeats:
            data["repeats_skipped"] = repeats
            reason += f", after skipping {repeats} frames it had delivered before"
        self._enter("streaming", reason, data)

    def _enter(self, state: str, reason: str, data: dict[str, Any]) -> None:
        self.state = state
        tell_state(self.name, self.on_state, state, reason, data, logger)

    def _retire(self) -> None:
        with self._lock:
            capture, self._capture = self._capture, None
            if capture is not None:
                self._finished_errors += capture.decode_errors
                self._finished_gap_s += getattr(capture.input, "gap_s", 0.0)  # None before it opened
                cap = getattr(capture.input, "cap", None)
                self._finished_skipped += cap.skipped if cap is not None else 0
                capture.abandon()
                self._retired = capture

    def _port_released(self) -> bool:
        """Whether the next session may open (False once closed). An input only one reader may
        hold (a UDP port, a listener, a capture device) waits for the abandoned session to let it
        go: opened beside it, it would fail with "address already in use" or "device busy".
        FFmpeg's own timeouts end that session's read or open; past them (plus a second) the
        next open goes ahead and says what it finds."""
        retired = self._retired
        if retired is None or not exclusive_input(self.target):
            return not self._closed.is_set()
        bound_s = max(self.policy.open_timeout_s, self.policy.read_timeout_s) + _FFMPEG_TIMEOUT_MARGIN_S + 1.0
        deadline = time.monotonic() + bound_s
        while retired.thread.is_alive() and time.monotonic() < deadline:
            if self._closed.wait(_POLL_S):
                return False
        return not self._closed.is_set()

    def close(self) -> None:
        """Stop: ``frames()`` returns within a poll interval whatever the input is doing."""
        self._closed.set()


def _waited(since: float, now: float) -> float:
    """How long a read has waited since ``since`` (monotonic) while segstream ran: the time
    segstream itself stood still (SIGSTOP, a suspend, a VM paused) is the source's wait for no
    one. Found probing clock steps: a 40 s suspend stalled a UDP camera whose data sat in the
    socket, a reconnect and 44 s of its down time counted (the flapping alert counts reconnects)."""
    waited = now - since
    return waited - pauses.within(since) if waited > 0.5 else waited
