"""Network streams: RTSP(S), RTMP(S), HTTP(S) (progressive or HLS), TCP, UDP, SRT and RIST, read
with FFmpeg through PyAV (SRT and RIST received by the system's ``ffmpeg``: ``ffmpeg_relay``) as
``LiveSource`` s that reconnect until stopped."""

from __future__ import annotations

import contextlib
import re
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import av

from segstream.connectors.deinterlace import Deinterlace
from segstream.connectors.live_source import _FFMPEG_TIMEOUT_MARGIN_S, LiveSource, ReconnectPolicy
from segstream.connectors.urls import redact_url, url_scheme

# FFmpeg 5.0 (libavformat 59) renamed RTSP's socket timeout `stimeout` to `timeout`; before it,
# `timeout` made the RTSP client listen for a connection instead.
_RTSP_TIMEOUT_OPTION = "timeout" if av.library_versions["libavformat"] >= (59,) else "stimeout"

# FFmpeg's UDP input buffer, in 188-byte packets: FFmpeg's own default (5.4 MB: 1.8 s of a
# 24 Mbit/s 4K stream, 11 s of a 4 Mbit/s 1080p one). What a decoder cannot keep up with waits
# there, unseen by any count, until it is full and packets are lost: 1,000,000 (188 MB) let a 4K
# stream fall a minute behind live; less than FFmpeg's default lost packets of a healthy stream.
UDP_FIFO_PACKETS = 28672


def stream_options(
    url: str, transport: str = "tcp", read_timeout_s: float = 5.0, low_latency: bool = True
) -> dict[str, str]:
    """FFmpeg options for reading ``url``: transport, socket timeouts in microseconds (each
    protocol has its own name for them), and with ``low_latency`` bounded stream probing (the
    decoder's low-delay flag is set by ``AVInput``)."""
    scheme = url_scheme(url)
    io_us = str(int((read_timeout_s + _FFMPEG_TIMEOUT_MARGIN_S) * 1_000_000))
    options = {"rw_timeout": io_us}  # every protocol's reads and writes
    if scheme in ("rtsp", "rtsps"):
        options["rtsp_transport"] = transport
        options[_RTSP_TIMEOUT_OPTION] = io_us
        # Only the video is set up. With more tracks (a camera's audio, an ONVIF metadata track)
        # FFmpeg times each track's packets by the sender reports' wall clock, so a camera whose
        # clock stepped (NTP) had its video's pts step with it: a false silence, counted as down
        # time (found probing: 3 s). With one track they are its RTP clock's; sender_ts still
        # follows the reports.
        options["allowed_media_types"] = "video"
    elif scheme in ("http", "https", "tcp", "srt"):
        options["timeout"] = io_us
        if scheme in ("http", "https"):
            # a live playlist starts at its newest segment: played at its rate, FFmpeg's default of
            # three segments back would stay three segments behind for good
            options["live_start_index"] = "-1"
    elif scheme == "udp":
        # a sender restarted on the port may put its video on another PID of the same program: merged,
        # its packets reach the decoder, which tells another codec; else FFmpeg adds a stream PyAV skips
        options.update(timeout=io_us, overrun_nonfatal="1", fifo_size=str(UDP_FIFO_PACKETS), merge_pmt_versions="1")
    # rtmp(s): `timeout` would mean "listen for a publisher"; rw_timeout alone bounds its reads
    if low_latency:
        # Probing ends at the first keyframe anyway; this bounds it when a stream never completes
        # it. `fflags nobuffer` is left out on purpose: it throws away the probed packets, so the
        # first frame waits for the next keyframe (a GOP later), and costs nothing after the start.
        options["analyzeduration"] = "2000000"
        # FFmpeg reads 20 frames to estimate the frame rate before the first leaves: 2 s of a 10 fps
        # camera, so each session's first frames came out 2 s late in a burst (their capture_ts late,
        # a new epoch's pts_s overstating an outage by 2 s: found probing). 5 frames still name
        # the rate (0.8 s from open to first frame instead of 2.3 s, UDP at 10 fps, measured)
        if scheme not in ("http", "https") or _timed_video_path(url):
            options["fpsprobesize"] = "5"
        # Else FFmpeg's own choice: none for MJPEG (a camera's multipart stream, whose rate is not
        # used: its frames are timed by arrival), where 5 held the open for 6 frames (a 0.33 fps
        # camera never opened; 1 fps ones began each session 6 s late, found probing). Never 0:
        # H.264 and MPEG-2 in MPEG-TS or HLS were then read at twice their rate (measured)
    return options


# Paths of HTTP inputs that name a format with timestamps of its own (a playlist, MPEG-TS, FLV,
# a video file), whose frame rate FFmpeg probes: with 5 frames rather than its 20
_TIMED_VIDEO_SUFFIXES = {
    ".m3u8", ".m3u", ".mpd", ".ts", ".m2ts", ".mts", ".flv", ".mp4", ".m4v", ".m4s", ".mov", ".mkv", ".webm",
    ".avi", ".mpg", ".mpeg", ".h264", ".264", ".h265", ".hevc", ".265",
}


def _timed_video_path(url: str) -> bool:
    address = url.partition("://")[2]
    after_login = address[address.rfind("@") + 1:]  # a password may hold "/", "?" or "#"
    paths = [re.split(r"[?#]", after_login, maxsplit=1)[0].partition("/")[2]]
    with contextlib.suppress(ValueError):  # and a query may hold "@" (a signed URL's): found in review
        paths.append(urlsplit(url).path)
    return any(PurePosixPath(path).suffix.lower() in _TIMED_VIDEO_SUFFIXES for path in paths)


class StreamSource(LiveSource):
    """A network stream at ``url`` (always live). ``transport`` (tcp or udp) applies to RTSP;
    ``options`` are extra FFmpeg options that take precedence over ours; ``max_behind_s`` (None:
    never) how far behind live its decoding may fall before it catches up (``CatchUp``);
    ``deinterlace`` as a file's (``FileSource``)."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        transport: str = "tcp",
        policy: ReconnectPolicy = ReconnectPolicy(),
        low_latency: bool = True,
        options: dict[str, Any] | None = None,
        seed: int | None = None,
        max_fps: float | None = None,
        max_behind_s: float | None = None,
        deinterlace: Deinterlace = "auto",
    ):
        given = {str(k): str(v) for k, v in (options or {}).items()}
        merged = stream_options(url, transport, policy.read_timeout_s, low_latency)
        if "listen" in given.get("rtsp_flags", ""):
            # FFmpeg as the RTSP server refuses a publisher's SETUP of a track it left out: the
            # stream of one that sends audio too would not start
            merged.pop("allowed_media_types", None)
        merged.update(given)
        super().__init__(
            name, url, policy=policy, options=merged, low_latency=low_latency, shown=redact_url(url), seed=seed,
            max_fps=max_fps, max_behind_s=max_behind_s, deinterlace=deinterlace,
        )
