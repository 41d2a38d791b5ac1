"""The pipeline description: one YAML file, validated key by key.

The pydantic models below mirror the YAML one to one and hold every default. Loading goes
YAML -> ``--set`` overrides -> ``${VAR}`` interpolation -> validation; every problem found on the
way becomes one line of a single ``ConfigError`` (exit code 2), its path written the way the
YAML reads (``sources[1].path``).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import ipaddress
import math
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from segstream.connectors.errors import ConfigError
from segstream.connectors.text_files import read_saved_text, streamed
from segstream.connectors.redaction import SECRET_NAME, remember, remember_in
from segstream.connectors.source import not_a_video_file, special_file
from segstream.connectors.redis_wire import events_beside, status_beside
from segstream.connectors.redis_connection import (
    SentinelAuth,
    TlsFiles,
    url_password,
    database_problem,
    is_sentinel_url,
    parse_sentinel_url,
    redis_url_shown,
    tls_query_problem,
)
from segstream.connectors.urls import (
    STREAM_SCHEMES,
    exclusive_input,
    hub_reference_problem,
    redact_url,
    unescaped_userinfo,
    url_scheme,
)

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction01 = Annotated[float, Field(ge=0, le=1)]
# at most 200 characters: a files sink's ``<name>.events.jsonl`` must fit a file name (255 bytes)
# ASCII (a Redis key, a file and a /metrics label each), and not `.` or `..` alone: the files sink's
# `..jsonl` and the preview's `../` are other files than the source's (found by an i18n probe)
_NAME_RULE = "use ASCII letters, digits, '_', '.' and '-' (not '.' or '..' alone)"


def _not_dots(name: str) -> str:
    if name in (".", ".."):
        raise ValueError(f"{name!r} is not a valid source name — {_NAME_RULE}")
    return name


SourceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=200), AfterValidator(_not_dots)]


# The longest time a key may name: about 31 years. A socket's timeout of 1e10 s, or a wait of
# 1e13 ms, passed validation and ended the run in an OverflowError (found probing bad input).
LONGEST_S = 1e9
_LARGEST_INT = 2**63 - 1  # what Redis (MAXLEN) and the C integers under torch and FFmpeg take


class Strict(BaseModel):
    # no inf or nan: a wait of inf ms got through to time arithmetic that cannot take it
    # each key's docstring is its description in `segstream schema`
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, use_attribute_docstrings=True)

    @field_validator("*", mode="after")
    @classmethod
    def _in_range(cls, value: Any, info: ValidationInfo) -> Any:
        """A time (a key ending ``_s`` or ``_ms``) up to ``LONGEST_S``, any integer up to ``_LARGEST_INT``."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value
        name = info.field_name or ""
        if name.endswith(("_s", "_ms")) and value > LONGEST_S * (1000 if name.endswith("_ms") else 1):
            longest = f"{LONGEST_S:.0e} s" if name.endswith("_s") else f"{LONGEST_S * 1000:.0e} ms"
            raise ValueError(f"{value!r} is longer than any wait segstream can keep ({longest}, about 31 years) — "
                             "give a shorter time, or null where the key takes it for none")
        if isinstance(value, int) and abs(value) > _LARGEST_INT and name != "seed":  # (numpy takes any seed)
            raise ValueError(f"{value} is past the largest integer segstream can pass on (2**63 - 1, either sign)")
        return value


BufferKind = Literal["every_frame", "newest"]
# Stream schemes whose URL must name a host: they connect to one (udp, srt, tcp and rist may listen instead).
_HOST_NEEDED = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https")
# Stream schemes without a default port: a URL of one must name its port.
_PORT_NEEDED = ("tcp", "udp", "srt", "rist")
# A stream's longest read timeout: FFmpeg's socket options take microseconds in a 32-bit integer
# (2147 s), less the second segstream adds to them (``stream_options``)
_STREAM_READ_TIMEOUT_MAX_S = 2146


def _ffmpeg_socket_timeout(value: float) -> float:
    """A stream's read timeout as FFmpeg's socket options take it (found probing an upgrade: 3600 s
    validated, then every open failed with "Numerical result out of range", and was retried for ever)."""
    if value > _STREAM_READ_TIMEOUT_MAX_S:
        raise ValueError(f"{value:g} s is longer than FFmpeg's socket timeouts can be ({_STREAM_READ_TIMEOUT_MAX_S} s: "
                         f"microseconds in a 32-bit integer) — give {_STREAM_READ_TIMEOUT_MAX_S} or less; a camera "
                         "silent for longer is read again after it")
    return value


StreamReadTimeout = Annotated[PositiveFloat, AfterValidator(_ffmpeg_socket_timeout)]
# Every source's max_fps (``_Buffered``): frames per second of the input's time that go on to the model.
MaxFps = PositiveFloat | None


def _deinterlace_mode(value: Any) -> Any:
    if isinstance(value, bool) or value == "auto":
        return value
    raise ValueError(f"must be auto, true or false, not {value!r}")


# A video source's deinterlacing (``Deinterlacer``): auto (the frames flagged interlaced), true (every frame), false.
Deinterlace = Annotated[Literal["auto"] | bool, BeforeValidator(_deinterlace_mode)]
# Schemes that only `type: stream` reads: a live stream is never a file.
_LIVE_ONLY_SCHEMES = tuple(scheme for scheme in STREAM_SCHEMES if scheme not in ("http", "https"))


RoiPoint = tuple[Fraction01, Fraction01]
ClassName = Annotated[str, Field(min_length=1)]


class FiltersConfig(Strict):
    """Segment filters, applied after post-processing and before the tracker and every sink: a
    segment filtered out is in no entry, no mask, no track and no track event, and its pixels are
    no segment (-1). ``classes``: keep only these class names (null: every class);
    ``exclude_classes``: never these; ``min_score``: drop segments scored below it; ``min_area``:
    drop segments covering fewer frame pixels (inside the ``roi``, when there is one); ``roi``: a
    polygon of at least 3 ``[x, y]`` points, fractions 0..1 of the frame's width and height
    (a camera that comes back at another resolution keeps its region): pixels outside it become
    no segment, a segment partly inside keeps its inside pixels (area and box measured again),
    one wholly outside is dropped. Every key applies to things and stuff alike. Class names are
    checked against the model's label set when the run starts."""

    classes: Annotated[list[ClassName], Field(min_length=1)] | None = None
    """Keep only segments of these class names (null: every class)."""
    exclude_classes: list[ClassName] = Field(default_factory=list)
    """Never keep segments of these class names."""
    min_score: Fraction01 = 0.0
    """Drop segments scored below this (0..1)."""
    min_area: NonNegativeInt = 0
    """Drop segments covering fewer frame pixels than this (inside the roi, when there is one)."""
    roi: Annotated[list[RoiPoint], Field(min_length=3)] | None = None
    """A polygon of at least 3 [x, y] points, fractions 0..1 of the frame: pixels outside it are no segment."""

    @field_validator("exclude_classes", "min_score", "min_area", mode="before")
    @classmethod
    def _null_is_off(cls, value: Any, info: ValidationInfo) -> Any:
        # a source's null turns off what the top-level filters set, as for classes and roi
        return ({"exclude_classes": [], "min_score": 0.0, "min_area": 0}[info.field_name]
                if value is None else value)

    @field_validator("classes", "exclude_classes")
    @classmethod
    def _distinct(cls, names: list[str] | None) -> list[str] | None:
        if names is not None and (twice := sorted({n for n in names if names.count(n) > 1})):
            raise ValueError(f"class '{twice[0]}' is listed twice — list each class once")
        return names

    @field_validator("roi", mode="before")
    @classmethod
    def _fractions(cls, roi: Any) -> Any:
        # one line for pixel coordinates, not one per number out of range
        numbers = [v for point in roi for v in point] if isinstance(roi, list) and all(
            isinstance(p, (list, tuple)) for p in roi) else []
        if any(isinstance(v, (int, float)) and not 0 <= v <= 1 for v in numbers):
            bad = next(v for v in numbers if isinstance(v, (int, float)) and not 0 <= v <= 1)
            raise ValueError(f"points are [x, y] fractions 0..1 of the frame's width and height, got {bad} — divide "
                             "pixel coordinates by the width and height (fractions keep their place when a camera "
                             "comes back at another resolution)")
        return roi

    @field_validator("roi")
    @classmethod
    def _encloses_area(cls, roi: list[tuple[float, float]] | None) -> list[tuple[float, float]] | None:
        if roi is None:
            return None
        # the shoelace formula: twice the polygon's signed area
        doubled = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(roi, roi[1:] + roi[:1]))
        edges = list(zip(roi, roi[1:] + roi[:1]))
        for i, j in ((i, j) for i in range(len(edges)) for j in range(i + 2, len(edges))):
            if (i, j) != (0, len(edges) - 1) and _segments_cross(*edges[i], *edges[j]):
                raise ValueError(f"the polygon's edges cross (edge {i + 1} and edge {j + 1}) — list its points in "
                                 "order around the region, e.g. [[0, 0.5], [1, 0.5], [1, 1], [0, 1]] for the lower half")
        if abs(doubled) < 1e-9:
            raise ValueError("the polygon encloses no area (its points lie on one line) — give at least 3 points "
                             "around the region, [x, y] fractions of width and height, e.g. "
                             "[[0, 0.5], [1, 0.5], [1, 1], [0, 1]] for the lower half")
        return roi

    @model_validator(mode="after")
    def _some_class_left(self) -> FiltersConfig:
        if self.classes is not None and not set(self.classes) - set(self.exclude_classes):
            raise ValueError("exclude_classes removes every class that classes keeps — nothing would be published")
        return self

    def over(self, base: FiltersConfig) -> FiltersConfig:
        """These filters (a source's) key by key over ``base`` (the top-level ones): a key set
        here replaces base's (null clears it), a key left out comes from base."""
        return base.model_copy(update={key: getattr(self, key) for key in self.model_fields_set})


def _segments_cross(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float],
                    d: tuple[float, float]) -> bool:
    """Whether the segments ab and cd cross at a point inside both (touching ends do not)."""
    def side(p, q, r) -> float:
        return (q[0] - p[0]) * (r[1] - p[1]) - (q[1] - p[1]) * (r[0] - p[0])

    return side(a, b, c) * side(a, b, d) < 0 and side(c, d, a) * side(c, d, b) < 0


class _Buffered:
    """What every source has: a queue of ``queue_size`` frames in front of the model, its
    ``buffer`` policy (``every_frame``: the source waits, nothing is dropped; ``newest``: the
    oldest frames are dropped, and frames older than ``max_staleness_ms`` when the model would
    take them), ``required`` (its failure ends the run; otherwise the other sources carry
    on and the run reports it as failed), and ``max_fps``: at most that many frames per second of
    the input's own time go on to the model, the others are left out before their conversion to
    RGB and counted as skipped (null: every frame). ``filters``: the source's segment filters,
    key by key over the top-level ``filters:`` (``FiltersConfig.over``)."""

    @property
    def buffer_kind(self) -> str:
        """The buffer policy in force: a file or a synthetic source that gave none keeps the
        newest frames when real-time, every frame otherwise."""
        if self.buffer is not None:
            return self.buffer
        return "newest" if getattr(self, "realtime", False) else "every_frame"


class FileSourceConfig(_Buffered, Strict):
    """A video file (any container and codec FFmpeg decodes), a local path or an http(s) URL.

    Relative paths are relative to the config file's directory. ``realtime`` paces the file at its
    own frame rate, standing in for a camera: its buffer then defaults to a stream's (``newest``,
    a queue of 2, frames older than 500 ms dropped). Live streams are ``type: stream``.
    """

    name: SourceName
    """The source's name: its streams, files and metrics are named by it (letters, digits, _ . -)."""
    type: Literal["file"]
    """file: a video file."""
    path: str
    """The video: a local path (relative to the config file's folder) or an http(s) URL."""
    realtime: bool = False
    """Play at the input's own frame rate, as a camera would, instead of as fast as the model takes it."""
    loop: bool = False
    """Start over at the end, for as long as the run lasts."""
    max_frames: PositiveInt | None = None
    """Stop after this many frames (null: the whole input)."""
    queue_size: PositiveInt = 8
    """Frames held in front of the model for this source."""
    buffer: BufferKind | None = None
    """When the queue is full: every_frame (the source waits) or newest (the oldest frame is dropped)."""
    max_staleness_ms: PositiveFloat | None = None
    """With buffer newest: frames older than this when the model would take them are dropped (null: no limit)."""
    open_timeout_s: PositiveFloat = 10.0
    """Seconds an open (connect, handshake, probing) may take before it fails."""
    read_timeout_s: PositiveFloat = 10.0
    """Seconds without data, once open, before the read fails."""
    required: bool = False
    """Whether this source's failure ends the run (otherwise the others carry on)."""
    max_fps: MaxFps = None
    """At most this many frames per second of the input's own time go to the model (null: every frame)."""
    deinterlace: Deinterlace = "auto"
    """Interlaced video's frames made whole (FFmpeg's bwdif, a frame per frame): auto (the frames flagged interlaced), true (every frame), false (none)."""
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    """This source's segment filters, key by key over the top-level filters."""

    @model_validator(mode="after")
    def _camera_defaults(self) -> FileSourceConfig:
        # found probing: a realtime file had a file's queue of 8 and no staleness limit, so its
        # latency ran 0.2-0.3 s above the streams' beside it
        if self.realtime and self.buffer_kind == "newest":
            for key in ("queue_size", "max_staleness_ms"):
                if key not in self.model_fields_set:
                    setattr(self, key, StreamSourceConfig.model_fields[key].default)
        return self

    @field_validator("path")
    @classmethod
    def _path_exists(cls, path: str, info: ValidationInfo) -> str:
        if url_scheme(path) == "file":  # a local file as a URL: its path, %-escapes decoded, checked as one
            # (found probing: file:///missing.mp4 passed validate, and file:///cam%C3%A9ra.mp4 was "missing")
            parts = urlsplit(path)
            if parts.netloc not in ("", "localhost"):
                raise ValueError(f"'{path}' names a file on another host ({parts.netloc}) — mount it here and give "
                                 "its local path")
            path = unquote(parts.path)
        if "://" in path:
            if url_scheme(path) in _LIVE_ONLY_SCHEMES:
                raise ValueError(
                    f"'{redact_url(path)}' is a live stream — use type: stream with url: for it "
                    "(it reconnects, and never counts as a file that ended)"
                )
            return path
        resolved = _resolve(path, info)
        if not _files_checked(info):
            return str(resolved)
        if resolved.is_dir():
            raise ValueError(
                f"'{path}' is a folder{_led_to(path, resolved)}, not a video file — for a folder of pictures use "
                "type: "
                "images; for a folder of videos, segstream batch"
            )
        if not resolved.is_file() and re.search(r"[*?\[]", path):
            raise ValueError(
                f"'{path}' is a pattern, and type: file reads one video — for a sequence of images use type: images "
                "(it takes a glob); for many videos, segstream batch"
            )
        if (kind := special_file(resolved)) is not None:
            raise ValueError(not_a_video_file(path, kind))
        if not resolved.is_file():
            raise ValueError(
                f"file '{path}' does not exist{_led_to(path, resolved)} — fix the path; relative paths are relative "
                "to the config file's directory (a config given as a mapping: its base_dir)"
            )
        return str(resolved)


class _LiveSourceKeys(_Buffered, Strict):
    """The keys live sources (stream, camera) share. ``open_timeout_s`` bounds a whole open
    (connect, handshake, probing), ``read_timeout_s`` the time without data once open,
    ``stall_timeout_s`` the time without a frame. A lost source reconnects after
    ``reconnect_delay_s``, doubling per failed attempt up to ``reconnect_max_delay_s``, with
    jitter; ``max_reconnects`` (null: forever) counts the attempts since the last frame. An input
    that refuses the credentials or is not there (401, 403, 404, no such device) before its first
    frame fails the source at once, unless ``wait_for_input`` (a publisher or camera that starts
    after the pipeline); ``wait_for_input`` also waits for a live playlist its publisher finished
    to go live again, instead of ending the source. They keep the newest frames by default."""

    open_timeout_s: PositiveFloat = 10.0
    """Seconds an open (connect, handshake, probing) may take before it fails."""
    read_timeout_s: StreamReadTimeout = 5.0
    """Seconds without data, once open, before the read fails (at most 2146: FFmpeg's socket timeouts)."""
    stall_timeout_s: PositiveFloat = 10.0
    """Seconds without a frame before the source counts as lost and reconnects."""
    max_reconnects: NonNegativeInt | None = None
    """Reconnect attempts since the last frame before the source fails (null: forever)."""
    reconnect_delay_s: PositiveFloat = 0.5
    """Seconds before the first reconnect attempt; doubled per failed attempt."""
    reconnect_max_delay_s: PositiveFloat = 30.0
    """The longest wait between reconnect attempts, in seconds."""
    wait_for_input: bool = False
    """Keep trying an input that refuses the credentials or is not there yet, instead of failing at once."""
    queue_size: PositiveInt = 2
    """Frames held in front of the model for this source."""
    buffer: BufferKind = "newest"
    """When the queue is full: every_frame (the source waits) or newest (the oldest frame is dropped)."""
    max_staleness_ms: PositiveFloat | None = 500.0
    """With buffer newest: frames older than this when the model would take them are dropped (null: no limit)."""
    required: bool = False
    """Whether this source's failure ends the run (otherwise the others carry on)."""
    max_fps: MaxFps = None
    """At most this many frames per second of the input's own time go to the model (null: every frame)."""
    deinterlace: Deinterlace = "auto"
    """Interlaced video's frames made whole (FFmpeg's bwdif, a frame per frame): auto (the frames flagged interlaced), true (every frame), false (none)."""
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    """This source's segment filters, key by key over the top-level filters."""


class StreamSourceConfig(_LiveSourceKeys):
    """A network stream, always live: ``rtsp://``, ``rtsps://``, ``rtmp(s)://``, ``http(s)://``
    (progressive or HLS), ``tcp://``, ``udp://``, ``srt://``. Credentials in the URL (best as
    ``${VAR}``) are never printed. ``transport`` (tcp or udp) is RTSP's; ``low_latency`` turns off
    demuxer buffering and shortens stream probing; ``options`` are extra FFmpeg options. A stream
    decoded slower than it comes, ``max_behind_s`` behind live, leaves the frames waiting undecoded
    up to a keyframe near live, counted as skipped (README, "Buffer policies"); a source whose
    frames all count (``buffer: every_frame``) never does.
    """

    name: SourceName
    """The source's name: its streams, files and metrics are named by it (letters, digits, _ . -)."""
    type: Literal["stream"]
    """stream: a live network stream."""
    url: Annotated[str, Field(repr=False)]  # may hold credentials: never in a repr
    """The stream's URL (rtsp, rtmp, http(s), tcp, udp, srt...); credentials in it are never printed."""
    transport: Literal["tcp", "udp", "udp_multicast", "http"] = "tcp"
    """RTSP's transport: tcp, udp, udp_multicast (the camera's group) or http (tunnelled over HTTP)."""
    low_latency: bool = True
    """Turn off demuxer buffering and shorten stream probing."""
    max_behind_s: PositiveFloat | None = 1.0
    """Seconds behind live past which the waiting frames are left undecoded up to a keyframe near live (null: never)."""
    options: dict[str, str | int | float] = Field(default_factory=dict, repr=False)  # may hold a passphrase
    """Extra FFmpeg input options, by name."""

    @field_validator("url")
    @classmethod
    def _stream_url(cls, url: str) -> str:
        scheme = url_scheme(url)
        if scheme not in STREAM_SCHEMES:
            raise ValueError(
                f"'{redact_url(url)}' is not a stream URL — use one of "
                f"{', '.join(s + '://' for s in STREAM_SCHEMES)} (a file is type: file)"
            )
        if not url.partition("://")[2].strip("/"):
            raise ValueError(f"'{redact_url(url)}' names no host")
        if unescaped_userinfo(url):
            raise ValueError(f"the password in '{redact_url(url)}' has a '/', '?' or '#' — percent-encode it "
                             "(%2F, %3F, %23; '@' is %40), or FFmpeg reads the address up to it")
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:  # out of 0-65535, or not a number: FFmpeg's "Invalid argument" at every retry
            port = -1
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"'{redact_url(url)}' has port '{parts.netloc.rpartition(':')[2]}' — a port is a "
                             "number from 1 to 65535")
        if scheme in _HOST_NEEDED and not parts.hostname:  # a listener (udp://@:1234) has none
            raise ValueError(f"'{redact_url(url)}' names no host — give the camera's or server's address")
        if scheme in _PORT_NEEDED and port is None and "localport=" not in parts.query:
            # a UDP input without one listened on a port FFmpeg picked anew at each open, which no
            # sender can reach: NEVER STREAMED after validate --connect said ok (found probing a drone link)
            example = "udp://@:5000" if scheme == "udp" else f"{scheme}://{parts.hostname or '0.0.0.0'}:5000"
            raise ValueError(f"'{redact_url(url)}' names no port — {scheme}:// has no default one: give the port "
                             f"the stream is sent to or served on (e.g. {example})")
        return url

    @model_validator(mode="after")
    def _catch_up_drops(self) -> StreamSourceConfig:
        """Catching up leaves frames out: no source whose frames all count does (``every_frame``)."""
        if self.buffer == "every_frame" and self.max_behind_s is not None:
            if "max_behind_s" in self.model_fields_set:
                raise ValueError("max_behind_s leaves frames undecoded to catch up with live, and buffer every_frame "
                                 "keeps every frame — remove max_behind_s, or use buffer newest")
            object.__setattr__(self, "max_behind_s", None)  # its default, a newest source's
        return self

    @model_validator(mode="after")
    def _transport_is_rtsps(self) -> StreamSourceConfig:
        if "transport" in self.model_fields_set and url_scheme(self.url) not in ("rtsp", "rtsps"):
            raise ValueError("transport applies to rtsp:// and rtsps:// URLs only — remove it")
        return self

    @model_validator(mode="after")
    def _ca_file_exists(self) -> StreamSourceConfig:
        """A CA file for TLS verification that is not there failed every open as "Input/output
        error" (found probing an RTSPS camera), after validate said ok."""
        ca_file = self.options.get("ca_file")
        if ca_file is not None and not Path(str(ca_file)).is_file():
            raise ValueError(f"options.ca_file '{ca_file}' is not a file — give the path of the PEM file of the CA "
                             "that signed the server's certificate")
        return self

    @model_validator(mode="after")
    def _srt_options(self) -> StreamSourceConfig:
        """SRT takes a passphrase of 10 to 79 characters; another fails every open, said by the
        run as the far end refusing us (found probing). The value checked is the one FFmpeg
        uses: the URL's query wins over ``options`` (measured: ``?passphrase=short`` with a valid
        ``options.passphrase`` failed with "Bad parameters"). Its latency is in microseconds,
        its mode one of three."""
        if url_scheme(self.url) != "srt":
            return self
        query = dict(parse_qsl(urlsplit(self.url).query, keep_blank_values=True))
        used = {**{k: str(v) for k, v in self.options.items()}, **query}
        passphrase = used.get("passphrase")
        if passphrase is not None and not 10 <= len(passphrase) <= 79:
            both = " (the URL's, which FFmpeg uses over options.passphrase)" if (
                "passphrase" in query and "passphrase" in self.options) else ""
            raise ValueError(f"the SRT passphrase{both} has {len(passphrase)} characters; SRT takes 10 to 79 — "
                             "set the same passphrase of that length on both ends")
        for key in ("latency", "rcvlatency", "peerlatency"):
            if (value := used.get(key)) is None:
                continue
            try:
                microseconds = int(value)
            except ValueError:
                raise ValueError(f"the SRT {key} '{value}' is not a whole number — it is in microseconds "
                                 "(200000 for 200 ms)") from None
            if 0 < microseconds < 1000:  # below a millisecond: surely meant as milliseconds
                raise ValueError(f"the SRT {key} is in microseconds: {microseconds} is {microseconds / 1000:g} ms; "
                                 f"for {microseconds} ms give {microseconds * 1000}")
        if (mode := used.get("mode")) is not None and mode not in ("caller", "listener", "rendezvous"):
            raise ValueError(f"the SRT mode '{mode}' is none of caller, listener, rendezvous")
        return self


class CameraSourceConfig(_LiveSourceKeys):
    """A USB or other V4L2 camera by index (0 is /dev/video0) or device path, always live.
    ``width``/``height``, ``fps`` and ``pixel_format`` are requested (null: the driver's
    choice); what the camera grants is logged and reported in its ``streaming`` state.
    ``backend``: ``ffmpeg`` (FFmpeg's v4l2 input; counts decode errors and lost frames) or
    ``opencv`` (OpenCV's VideoCapture: V4L2 on Linux, the platform's camera API elsewhere)."""

    name: SourceName
    """The source's name: its streams, files and metrics are named by it (letters, digits, _ . -)."""
    type: Literal["camera"]
    """camera: a local camera (V4L2 on Linux)."""
    device: NonNegativeInt | str = 0
    """The camera: an index (0 is /dev/video0) or a device path."""
    width: PositiveInt | None = None
    """Frame width in pixels to ask the camera for (null: the driver's choice; with height)."""
    height: PositiveInt | None = None
    """Frame height in pixels to ask the camera for (null: the driver's choice; with width)."""
    fps: PositiveFloat | None = None
    """Frame rate to ask the camera for (null: the driver's choice)."""
    pixel_format: Literal["MJPG", "YUYV"] | None = None
    """Pixel format to ask the camera for: MJPG or YUYV (null: the driver's choice)."""
    backend: Literal["ffmpeg", "opencv"] = "ffmpeg"
    """How the camera is read: ffmpeg (FFmpeg's v4l2 input) or opencv (OpenCV's VideoCapture)."""

    @field_validator("device")
    @classmethod
    def _device_path(cls, device: int | str) -> int | str:
        if isinstance(device, str) and not device.startswith("/"):
            raise ValueError(f"'{device}' is not a device — use an index (0 for /dev/video0) or a path like /dev/video0")
        if isinstance(device, str) and Path(device).is_file():  # found probing: played unpaced, over and over
            raise ValueError(f"'{device}' is a file, not a camera — to play a video as a camera, use type: file "
                             "with realtime: true")
        return device

    @model_validator(mode="after")
    def _deinterlaced_by_ffmpeg(self) -> CameraSourceConfig:
        if self.backend == "opencv" and self.deinterlace is True:
            raise ValueError("deinterlace: true needs backend: ffmpeg (OpenCV's frames are not deinterlaced) — "
                             "use backend: ffmpeg, or remove deinterlace")
        return self

    @model_validator(mode="after")
    def _width_with_height(self) -> CameraSourceConfig:
        if (self.width is None) != (self.height is None):
            raise ValueError("give width and height together (or neither, for the camera's default size)")
        return self


class SnapshotSourceConfig(_Buffered, Strict):
    """A camera's snapshot URL (one picture a request: ``http://cam/snap.jpg``,
    ``/cgi-bin/snapshot.cgi``, ``/ISAPI/Streaming/channels/101/picture``) polled every
    ``interval_s`` over http(s), always live; each new picture is a frame, timed by when it was
    asked for, and one the camera has not changed (a 304, the same ETag or the same bytes) is
    skipped and counted. The login (HTTP Basic or Digest) is the URL's or ``username`` and
    ``password`` (best as ``${VAR}``), never printed. ``timeout_s`` bounds each request; a poll
    that fails (a timeout, no connection, a server error) is retried after ``reconnect_delay_s``,
    doubling up to ``reconnect_max_delay_s``; a login refused, a path not there or an answer
    that is no picture before the first frame fails the source, unless ``wait_for_input``.
    ``tls_verify`` checks an https camera's certificate (against ``ca_file``, or the system's CAs).
    It keeps the newest frames by default, with no staleness limit: a snapshot waited for is worth
    segmenting late."""

    name: SourceName
    """The source's name: its streams, files and metrics are named by it (letters, digits, _ . -)."""
    type: Literal["snapshot"]
    """snapshot: a camera's picture URL, polled."""
    url: Annotated[str, Field(repr=False)]  # may hold credentials: never in a repr
    """The picture's http(s) URL; credentials in it are never printed."""
    username: str | None = None
    """The user to log in as (HTTP Basic or Digest, as the camera asks), instead of the URL's."""
    password: str | None = Field(default=None, repr=False)
    """The user's password (best as ${VAR}); never printed."""
    interval_s: PositiveFloat = 1.0
    """Seconds from one poll to the next, on a steady schedule (a late answer skips the polls it ran over)."""
    timeout_s: PositiveFloat = 5.0
    """Seconds a whole request (connect, answer, picture) may take before it fails."""
    tls_verify: bool = False
    """Check an https camera's certificate and host name (false: any certificate, as FFmpeg's https)."""
    ca_file: str | None = None
    """With tls_verify: the CA certificate that signed the camera's (null: the system's CAs)."""
    max_reconnects: NonNegativeInt | None = None
    """Failed polls since the last frame before the source fails (null: never)."""
    reconnect_delay_s: PositiveFloat = 0.5
    """Seconds before the poll after a failed one; doubled per failed poll."""
    reconnect_max_delay_s: PositiveFloat = 30.0
    """The longest wait after failed polls, in seconds."""
    wait_for_input: bool = False
    """Keep polling a URL that refuses the login, is not there or gives no picture yet, instead of failing at once."""
    queue_size: PositiveInt = 2
    """Frames held in front of the model for this source."""
    buffer: BufferKind = "newest"
    """When the queue is full: every_frame (the source waits) or newest (the oldest frame is dropped)."""
    max_staleness_ms: PositiveFloat | None = None
    """With buffer newest: frames older than this when the model would take them are dropped (null: no limit)."""
    required: bool = False
    """Whether this source's failure ends the run (otherwise the others carry on)."""
    max_fps: MaxFps = None
    """At most this many polls a second: the interval is at least 1/max_fps (null: interval_s alone)."""
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    """This source's segment filters, key by key over the top-level filters."""

    @field_validator("username", "password", "ca_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return _empty_is_null(value)  # `${CAM_PASSWORD:-}`

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        scheme = url_scheme(url)
        if scheme not in ("http", "https"):
            stream = " (a stream is type: stream)" if scheme in STREAM_SCHEMES else ""
            raise ValueError(f"'{redact_url(url)}' is not an http(s) URL — a snapshot source polls a picture over "
                             f"HTTP{stream}")
        if unescaped_userinfo(url):
            raise ValueError(f"the password in '{redact_url(url)}' has a '/', '?' or '#' — percent-encode it "
                             "(%2F, %3F, %23; '@' is %40), or give it as password")
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if port is not None and not 0 < port < 65536:
            raise ValueError(f"'{redact_url(url)}' has port '{parts.netloc.rpartition(':')[2]}' — a port is a "
                             "number from 1 to 65535")
        if not parts.hostname:
            raise ValueError(f"'{redact_url(url)}' names no host — give the camera's address")
        return url

    @field_validator("ca_file")
    @classmethod
    def _ca_exists(cls, path: str | None, info: ValidationInfo) -> str | None:
        if path is None:
            return None
        resolved = _resolve(path, info)
        if _files_checked(info) and not resolved.is_file():
            raise ValueError(f"file '{path}' does not exist{_led_to(path, resolved)} — fix the path; relative paths "
                             "are relative to the config file's directory")
        return str(resolved)

    @model_validator(mode="after")
    def _one_login(self) -> SnapshotSourceConfig:
        if urlsplit(self.url).username is not None and (self.username is not None or self.password is not None):
            raise ValueError("the url holds a user, and username/password give one too — give the login once")
        if self.password is not None and self.username is None:
            raise ValueError("password without username — give the user too")
        if self.ca_file is not None and not self.tls_verify:
            raise ValueError("ca_file is used to check the camera's certificate — add tls_verify: true, or remove "
                             "ca_file")
        return self


class ImagesSourceConfig(_Buffered, Strict):
    """Still images played as video: a folder (its images), a glob (``shots/**/*.png``) or one
    image file. ``timestamps`` says when each was taken: ``fps`` (image k at k/fps seconds, in
    natural order, 2 before 10), ``name`` (the date and time in its file name, as cameras and FTP
    uploads write it, or as ``timestamp_format`` says) or ``mtime`` (its file's modification
    time): then in the order of their times, each frame's capture time its image's, the gaps
    between them real ones. ``realtime`` plays one image every 1/fps seconds, as a camera would;
    ``loop`` starts over (listing the folder again); ``watch`` follows a folder that images keep
    arriving in, reading each new one once, until the run is stopped."""

    name: SourceName
    """The source's name: its streams, files and metrics are named by it (letters, digits, _ . -)."""
    type: Literal["images"]
    """images: still images played as video."""
    path: str
    """A folder of images, a glob (shots/**/*.png) or one image file, relative to the config file's folder."""
    fps: PositiveFloat = 25.0
    """Frames per second the images' timestamps are spaced by (timestamps fps), and that realtime plays them at."""
    timestamps: Literal["fps", "name", "mtime"] = "fps"
    """When each image was taken: fps (k/fps s; captured when read), name (the date and time in its file name) or mtime (its file's modification time)."""
    timestamp_format: str | None = None
    """With timestamps name: how the names write the time, strftime-style, e.g. cam1_%d.%m.%Y_%H-%M-%S (null: the usual camera namings, such as 20261204_130501)."""
    timestamp_zone: str | None = None
    """With timestamps name: the zone of times a name writes without one: an IANA name (Europe/Berlin), UTC or an offset (+01:00) (null: this machine's local time)."""
    loop: bool = False
    """Start over at the end, listing the folder again."""
    realtime: bool = False
    """Play one image every 1/fps seconds, as a camera would, instead of as fast as the model takes them."""
    watch: bool = False
    """Follow the folder: after the images in it, read each new one as it comes, in order, until the run is stopped."""
    watch_from: Literal["start", "new", "last"] = "start"
    """With watch: start (the images there already first), new (only those that come from now on) or last (those after the newest image the source's Redis stream holds: a restart reads nothing twice and leaves nothing out)."""
    poll_s: PositiveFloat = 1.0
    """With watch: seconds between two looks at the folder."""
    settle_s: Annotated[float, Field(ge=0)] = 2.0
    """With watch: seconds a new file's size and time must stay the same before it is read (0: at once, for uploads renamed into place)."""
    empty_settle_s: Annotated[float, Field(ge=0)] = 30.0
    """With watch: seconds a new empty file waits for its data before it is read (and fails) at least, the images after it waiting too (an upload's data not begun; an inspection line may want less)."""
    bit_depth: Annotated[int, Field(ge=9, le=16)] | None = None
    """Bits a 16-bit image's samples use (a 12-bit camera's PNG or TIFF: 12): its top 8 of them become the model's levels (null: all 16, the high byte)."""
    max_frames: PositiveInt | None = None
    """Stop after this many frames (null: the whole input)."""
    queue_size: PositiveInt = 8
    """Frames held in front of the model for this source."""
    buffer: BufferKind | None = None
    """When the queue is full: every_frame (the source waits) or newest (the oldest frame is dropped)."""
    max_staleness_ms: PositiveFloat | None = None
    """With buffer newest: frames older than this when the model would take them are dropped (null: no limit)."""
    required: bool = False
    """Whether this source's failure ends the run (otherwise the others carry on)."""
    max_fps: MaxFps = None
    """At most this many frames per second of the input's own time go to the model (null: every frame)."""
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    """This source's segment filters, key by key over the top-level filters."""

    @field_validator("path")
    @classmethod
    def _folder_exists(cls, path: str, info: ValidationInfo) -> str:
        if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", path):  # found probing: read as a local path, said missing
            raise ValueError(f"'{redact_url(path)}' is a URL — type: images reads a local folder, image or glob; a "
                             "camera's snapshot URL is polled by type: snapshot (url, interval_s), its MJPEG or RTSP URL "
                             "read by a stream source")
        wildcard = re.search(r"[*?\[]", path)
        folder = path[: wildcard.start()].rpartition("/")[0] if wildcard else path
        resolved = _resolve(folder or ".", info)
        if not wildcard and resolved.is_file():  # one image
            return str(resolved)
        checked = str(resolved) if not wildcard else (str(_resolve(path, info)) if not Path(path).is_absolute() else path)
        if not _files_checked(info):
            return checked
        if not resolved.is_dir():
            what = "folder" if wildcard else "path"
            raise ValueError(
                f"{what} '{folder or path}' does not exist{_led_to(folder or path, resolved)} — give a folder of "
                "images, one image or a glob such as frames/*.jpg; relative paths are relative to the config file's "
                "directory (a config given as a mapping: its base_dir)"
            )
        return checked

    @model_validator(mode="after")
    def _timestamp_keys(self) -> ImagesSourceConfig:
        from segstream.connectors.image_times import format_problem, zone_of

        for key in ("timestamp_format", "timestamp_zone"):
            if getattr(self, key) is not None and self.timestamps != "name":
                raise ValueError(f"{key} is about the times file names write, and timestamps is {self.timestamps} — "
                                 f"add timestamps: name, or remove {key}")
        if self.timestamp_format is not None and (problem := format_problem(self.timestamp_format)) is not None:
            raise ValueError(problem)
        zone_of(self.timestamp_zone)
        return self

    @model_validator(mode="after")
    def _watch_keys(self) -> ImagesSourceConfig:
        if self.watch and self.loop:
            raise ValueError("watch reads each image once, as it comes, and loop plays the folder over and over — "
                             "remove loop (or watch)")
        given = [key for key in ("watch_from", "poll_s", "settle_s") if key in self.model_fields_set]
        if given and not self.watch:
            raise ValueError(f"{given[0]} is about following a folder — add watch: true, or remove {given[0]}")
        if self.watch and Path(self.path).is_file():
            raise ValueError(f"watch follows a folder (or a glob) that new images come to, and '{self.path}' is one "
                             "image — give the folder it is in")
        return self

    @model_validator(mode="after")
    def _images_there(self, info: ValidationInfo) -> ImagesSourceConfig:
        """What the run would fail on at once, said now (found probing): a folder without images
        (a watched one may be empty yet), or none with a time in its name."""
        if not _files_checked(info):
            return self
        from segstream.connectors.image_source import IMAGE_SUFFIXES, list_images, untimed_problem
        from segstream.connectors.image_times import NameTimes, zone_of

        names = list_images(self.path)
        if not names and not self.watch:
            raise ValueError(f"no images in '{self.path}' — give a folder of "
                             f"{'/'.join(s[1:] for s in IMAGE_SUFFIXES[:4])}... files, one image or a glob such "
                             "as frames/*.png (watch: true follows a folder that images are still to come to)")
        if names and self.timestamps == "name":
            times = NameTimes(self.timestamp_format, zone_of(self.timestamp_zone))
            if not any(times.unix(name) is not None for name in names):
                raise ValueError(untimed_problem(self.path, names[0], self.timestamp_format))
        return self


class SyntheticSourceConfig(_Buffered, Strict):
    """Generated scenes with known ground truth (``connectors/synthetic.py``);
    ``num_frames: null`` runs until stopped."""

    name: SourceName
    """The source's name: its streams, files and metrics are named by it (letters, digits, _ . -)."""
    type: Literal["synthetic"]
    """synthetic: generated scenes with known ground truth."""
    width: PositiveInt = 640
    """Frame width in pixels."""
    height: PositiveInt = 480
    """Frame height in pixels."""
    fps: PositiveFloat = 25.0
    """Frames per second of the scene's timestamps (and of playing, with realtime)."""
    seed: NonNegativeInt = 0
    """Random seed of the scenes: the same seed, the same frames."""
    num_frames: PositiveInt | None = 250
    """Frames to generate (null: until the run is stopped)."""
    realtime: bool = False
    """Play at the input's own frame rate, as a camera would, instead of as fast as the model takes it."""
    queue_size: PositiveInt = 8
    """Frames held in front of the model for this source."""
    buffer: BufferKind | None = None
    """When the queue is full: every_frame (the source waits) or newest (the oldest frame is dropped)."""
    max_staleness_ms: PositiveFloat | None = None
    """With buffer newest: frames older than this when the model would take them are dropped (null: no limit)."""
    required: bool = False
    """Whether this source's failure ends the run (otherwise the others carry on)."""
    max_fps: MaxFps = None
    """At most this many frames per second of the input's own time go to the model (null: every frame)."""
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    """This source's segment filters, key by key over the top-level filters."""


# What ``use:`` names: ``module:attribute`` (the attribute may be dotted: ``module:Class.build``), or
# the name of an installed entry point (group ``segstream.sources``,
# ``segstream.stages`` or ``segstream.sinks``).
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
PartName = Annotated[str, Field(pattern=rf"^({_DOTTED}:{_DOTTED}|[A-Za-z0-9_.-]+)$")]


class CustomSourceConfig(_Buffered, Strict):
    """A source of one's own (a ``segstream.VideoSource``: a camera SDK, a robot's topic): ``use``
    names its factory as ``module:attribute`` (importable: installed, or on PYTHONPATH) or as an
    entry point of the group ``segstream.sources``; it is called as ``factory(name, **options)``
    once when the run starts (and again when a reload changes the entry). Left unset, ``queue_size``
    and ``buffer`` are what the source declares (``queue_size``, ``buffer_policy``), else a queue of 8
    frames, ``newest`` when it is ``live`` and ``every_frame`` when not."""

    name: SourceName
    """The source's name: its streams, files and metrics are named by it (letters, digits, _ . -)."""
    type: Literal["custom"]
    """custom: a source of one's own, built by the factory use names."""
    use: PartName
    """The source's factory: module:attribute, or an entry point of group segstream.sources."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the factory (after the source's name)."""
    queue_size: PositiveInt | None = None
    """Frames held in front of the model for this source (null: what the source declares, else 8)."""
    buffer: BufferKind | None = None
    """When the queue is full: every_frame (the source waits) or newest (the oldest frame is dropped); null: what the source declares, else newest when it is live."""
    max_staleness_ms: PositiveFloat | None = None
    """With buffer newest: frames older than this when the model would take them are dropped (null: no limit)."""
    required: bool = False
    """Whether this source's failure ends the run (otherwise the others carry on)."""
    max_fps: MaxFps = None
    """At most this many frames per second of the input's own time go to the model (null: every frame)."""
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    """This source's segment filters, key by key over the top-level filters."""

    @property
    def buffer_kind(self) -> str | None:
        """The policy written, or None: the built source's own (its buffer_policy, else by its live)."""
        return self.buffer

    @model_validator(mode="after")
    def _staleness_with_newest(self) -> CustomSourceConfig:
        if self.max_staleness_ms is not None and self.buffer != "newest":
            raise ValueError("max_staleness_ms drops frames of a source whose buffer is newest — add buffer: newest "
                             "(a source of one's own says nothing of it to the config)")
        return self


SourceConfig = Annotated[
    Union[FileSourceConfig, StreamSourceConfig, CameraSourceConfig, SnapshotSourceConfig, ImagesSourceConfig,
          SyntheticSourceConfig, CustomSourceConfig],
    Field(discriminator="type"),
]
SOURCE_TYPES = ("file", "stream", "camera", "snapshot", "images", "synthetic", "custom")
# names other tools give these sources, and which type reads them here
SOURCE_TYPE_ALIASES = {
    **dict.fromkeys(("rtsp", "rtsps", "rtmp", "srt", "udp", "rtp", "hls", "network", "ipcam", "ip_camera", "mjpeg",
                     "live"), "stream"),
    **dict.fromkeys(("usb", "webcam", "v4l2", "uvc", "dshow", "avfoundation"), "camera"),
    **dict.fromkeys(("video", "mp4", "local"), "file"),  # (with a url: stream)
    **dict.fromkeys(("image", "folder", "directory", "dir"), "images"),
    **dict.fromkeys(("still", "picture", "jpeg", "jpg"), "snapshot"),  # (with a path: images)
    **dict.fromkeys(("plugin", "own", "python", "sdk", "callback", "ros", "gige"), "custom"),
}


class ModelConfig(Strict):
    """Which model runs and how; ``checkpoint: null`` uses the preset's own weights, ``random``
    seeded random weights shaped to give confident segments (to measure the speed of a published
    architecture without its checkpoint; the segments mean nothing).

    ``precision: auto`` is bf16 where the hardware computes it natively (CUDA GPUs with bf16,
    CPUs with AMX or AVX-512 BF16), else fp16 on CUDA and fp32 on the CPU. ``postprocess``
    decides each pixel at the model's input resolution and resizes the label map (``fast``) or
    decides at frame resolution as the official code does (``exact``). ``labels``: a label-set
    file of your own model's classes (the preset then names its architecture only).
    """

    preset: Annotated[str, Field(min_length=1)] = "synthetic_eomt_tiny_256"
    """The model preset: its architecture, input size, labels and weights (null: as left out, the family's default)."""
    # Model family (eomt, senatra): checked against the preset's; alone, it picks the family's
    # default preset (synthetic_senatra_tiny_192 for senatra).
    family: Annotated[str, Field(min_length=1)] | None = None
    """The model family (eomt, senatra): checked against the preset's; alone, it picks the family's default preset."""
    checkpoint: str | None = None
    """Weights: a file, a model folder, hf://owner/repo, or random (null: the preset's own)."""
    task: Literal["panoptic", "semantic", "instance"] | None = None  # null: the preset's own
    """panoptic, semantic or instance (null: the preset's own)."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto, fp32, bf16 or fp16 (auto: bf16 where the hardware computes it natively)."""
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda|cuda:\d+)$")] = "auto"
    """auto, cpu, cuda or cuda:N."""
    compile: bool = False
    """Compile the model with torch.compile (a slower start, maybe faster frames)."""
    postprocess: Literal["fast", "exact"] = "fast"
    """fast (decide pixels at the model's resolution) or exact (at the frame's, as the official code)."""
    score_threshold: Fraction01 = 0.8
    """Segments scored below this are dropped (0..1)."""
    mask_threshold: Fraction01 = 0.5
    """Mask probability above which a pixel belongs to a segment (0..1)."""
    overlap_threshold: Fraction01 = 0.8
    """The share of a segment's mask that must survive overlaps for it to be kept (0..1)."""
    # Your own classes: a label-set JSON file (the shipped ones' schema); the preset then gives
    # the architecture only, with as many classes as the file has, and the checkpoint the weights.
    labels: str | None = None
    """A label-set JSON file of your own model's classes (the preset then gives the architecture only)."""
    # A plugin family's own settings, for its builder to read (model_cfg.options); the shipped
    # families take none.
    options: dict[str, Any] = Field(default_factory=dict, repr=False)  # may hold a plugin's keys
    """A plugin model family's own settings, for its builder (the shipped families take none)."""

    @model_validator(mode="before")
    @classmethod
    def _null_preset_is_the_default(cls, data: Any) -> Any:
        # preset: null (a YAML key left empty, --set model.preset=null) means what leaving it out does
        if isinstance(data, dict) and data.get("preset", "") is None:
            data = {k: v for k, v in data.items() if k != "preset"}
        return data

    @field_validator("labels")
    @classmethod
    def _labels_file(cls, labels: str | None, info: ValidationInfo) -> str | None:
        if labels is None:
            return None
        from segstream.models.label_sets import read_label_set_file

        resolved = _resolve(labels, info)
        if not _files_checked(info):
            return str(resolved)
        try:
            read_label_set_file(resolved)
        except ValueError as error:
            raise ValueError(f"{error} — a label set is {{\"name\": ..., \"classes\": [{{\"id\": 0, "
                             f"\"name\": ..., \"isthing\": true}}, ...]}}, ids 0, 1, 2, ...") from None
        return str(resolved)

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_exists(cls, checkpoint: str | None, info: ValidationInfo) -> str | None:
        if checkpoint in (None, "random"):
            return checkpoint
        if checkpoint.startswith("hf://"):
            if problem := hub_reference_problem(checkpoint):
                raise ValueError(f"'{checkpoint}' {problem} — e.g. hf://tue-mps/coco_panoptic_eomt_large_640")
            return checkpoint
        if "://" in checkpoint:
            raise ValueError(f"'{checkpoint}' is not a checkpoint reference — use hf://<org>/<name> or a local path")
        resolved = _resolve(checkpoint, info)
        if not _files_checked(info):
            return str(resolved)
        if resolved.is_dir():  # a model folder: its weights file (checked now, loaded later)
            from segstream.connectors.checkpoints import checkpoint_in_folder
            from segstream.connectors.errors import CheckpointError

            try:
                checkpoint_in_folder(resolved)
            except CheckpointError as error:
                raise ValueError(str(error)) from None
            return str(resolved)
        if not resolved.is_file():
            raise ValueError(
                f"checkpoint file '{checkpoint}' does not exist ({resolved}) — fix the path or use null for the "
                "preset's weights"
            )
        return str(resolved)

    @model_validator(mode="after")
    def _what_the_checkpoint_says(self) -> ModelConfig:
        # Weights written by segstream's training name their preset, and a run on pictures of one's
        # own writes their classes beside them (model.labels.json): a config naming only the
        # checkpoint runs them as trained (a SeNaTra one needed model.family, own classes model.labels).
        weights = weights_file(self.checkpoint)
        if weights is None:
            return self
        if "preset" not in self.model_fields_set:
            from segstream.models.presets import PRESETS

            preset = preset_of_checkpoint(weights)
            if preset in PRESETS and self.family in (None, PRESETS[preset].family):
                self.preset = preset
        labels = weights.with_name(f"{weights.name.removesuffix('.safetensors')}.labels.json")
        if self.labels is None and weights.name.endswith(".safetensors") and labels.is_file():
            from segstream.models.label_sets import read_label_set_file

            try:
                read_label_set_file(labels)
            except ValueError as error:
                raise ValueError(f"the labels file beside the checkpoint, {labels}, is not a label set ({error}) — fix or "
                                 "remove it, or set model.labels to the file of the checkpoint's classes") from None
            self.labels = str(labels)
        return self


def weights_file(checkpoint: str | None) -> Path | None:
    """The local weights file a ``model.checkpoint`` names (a model folder's own), else None."""
    if checkpoint is None:
        return None
    from segstream.connectors.checkpoints import local_weights
    from segstream.connectors.errors import CheckpointError

    try:
        return local_weights(checkpoint, None)
    except CheckpointError:  # a folder without weights: loading it says so
        return None


def preset_of_checkpoint(path: Path) -> str | None:
    """The preset a safetensors file written by segstream's training names in its metadata
    (``preset``), else None; a file that is no safetensors says why when it is loaded."""
    if not path.name.endswith(".safetensors"):
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as weights:
            preset = (weights.metadata() or {}).get("preset")
    except Exception:  # not readable as safetensors: loading it says why, in its own words
        return None
    return preset if isinstance(preset, str) else None


class EngineConfig(Strict):
    """The model stage: batches of up to ``batch_size`` frames from all sources together,
    formed within ``max_wait_ms`` of a batch's first frame, run by ``model_workers`` threads
    (each a whole batch at a time) with ``threads`` intra-op threads each; at most
    ``max_inflight`` batches between the start of their network and the end of their
    post-processing. Null means chosen for the device: on a GPU one worker; on the CPU two
    workers of one thread each on two cores, and the other cores shared between them, one core
    left to decoding and publishing (measured in docs/BENCHMARKS.md). ``frame_budget_mb`` caps
    the decoded frames each source's queue holds by their size in memory, and each batch at the
    budgets of all sources together (at least one frame; null: no cap): 64 MB is 10 frames of
    1080p (so the queue's 8 stand) and 2 of 3840x2160. ``resize_in_decoder`` has file, stream
    and camera sources convert each frame to RGB directly at the size the model scales it to
    (FFmpeg's bilinear), instead of at full size and resized again: less work and memory for
    frames larger than the model's input, at pixels slightly different from the default resize
    (measured in docs/BENCHMARKS.md); results still describe the full frame. Not with the
    preview, which draws on full frames."""

    batch_size: PositiveInt = 4
    """Frames per model batch, from all sources together."""
    max_wait_ms: Annotated[float, Field(ge=0)] = 20.0
    """Milliseconds a batch waits for more frames after its first."""
    model_workers: PositiveInt | None = None
    """Threads running the model, each a whole batch at a time (null: chosen for the device)."""
    threads: PositiveInt | None = None
    """Intra-op threads per model worker (null: chosen for the device); torch's setting is process-wide, so it is set while a run lasts and given back after."""
    max_inflight: PositiveInt | None = None
    """At most this many batches between the start of their network and the end of post-processing (null: chosen)."""
    frame_budget_mb: PositiveFloat | None = 64.0
    """Megabytes of decoded frames each source's queue may hold (null: no cap)."""
    resize_in_decoder: bool = False
    """Convert frames to RGB at the model's input size in the decoder (less work; not with the preview)."""


def _empty_is_null(value: Any) -> Any:
    # lets `${REDIS_URL:-}` and `${REDIS_PASSWORD:-}` mean "not set"
    return None if value == "" else value


class RedisTlsConfig(Strict):
    """TLS for a ``rediss://`` URL: the CA that signed the server's certificate (null: the
    system's CAs), and a client certificate and key for servers that ask for one."""

    ca_file: str | None = None
    """The CA certificate that signed the server's (null: the system's CAs)."""
    cert_file: str | None = None
    """A client certificate, for servers that ask for one."""
    key_file: str | None = None
    """The client certificate's private key."""
    check_hostname: bool = True
    """Check that the server's certificate names the host of the url."""

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _file_exists(cls, path: str | None, info: ValidationInfo) -> str | None:
        if path is None or path == "":
            return None
        resolved = _resolve(path, info)
        if _files_checked(info) and not resolved.is_file():
            raise ValueError(f"file '{path}' does not exist ({resolved}) — fix the path")
        return str(resolved)


class RedisSentinelConfig(Strict):
    """The sentinels' own login, for a ``redis+sentinel://`` url whose sentinels have a
    ``requirepass`` (or ACL users) of their own: the url's user and password are the master's."""

    username: str | None = None
    """The sentinels' own user (the url's is the master's)."""
    password: str | None = Field(default=None, repr=False)
    """The sentinels' own password (the url's is the master's); never printed."""

    _nulls = field_validator("username", "password", mode="before")(_empty_is_null)


class RedisSinkConfig(Strict):
    """Redis Streams, one stream per source; ``url: null`` starts an embedded Redis. Entries go
    out in pipelined batches of up to ``pipeline_size``, none waiting longer than
    ``max_batch_delay_ms``. ``username`` and ``password`` log in (an ACL user, or the
    ``requirepass`` password alone). While Redis cannot be reached the run goes on: entries wait
    in a backlog of at most ``max_backlog`` entries and ``max_backlog_mb`` megabytes (the oldest
    are dropped and counted beyond that), reconnect attempts back off up to
    ``reconnect_max_s``, and at the end the run gives Redis up to ``drain_timeout_s`` to take what
    is left (an unreachable Redis and a slow one alike). A write Redis does not answer within ``timeout_s`` (a hung or partitioned
    server) is an outage too: the run does not wait longer for it; a connect waits the longer of
    ``timeout_s`` and 2 s (``validate --connect`` connects within the same). A Redis that cannot be reached
    when the run starts fails it, at once or, with ``start_wait_s``, once that many seconds have
    passed with no answer (a Redis and a pipeline started together, as Kubernetes does). A
    ``redis+sentinel://host1:26379,host2:26379/<master-name>[/db]`` url (``rediss+sentinel://``
    for TLS) asks those sentinels for the master, again after each outage: a failover is an
    outage that ends on the promoted replica; ``sentinel`` holds the sentinels' own login.
    Each stream (frames and events) keeps at least its ``maxlen`` newest entries (``MAXLEN ~``:
    up to one stream node more), which is ``maxlen / fps`` seconds of a source and changes with
    its fps or ``max_fps``; with ``max_age_s`` no entry older than that many seconds stays (exact
    ``XTRIM MINID`` and ``PEXPIRE`` with each batch, the streams no batch writes trimmed each
    second, each stream expiring at the end of the run; Redis 6.2 or newer), so that retention is a
    time whatever the frame rate and whether or not the source streams, ``maxlen`` still capping the
    memory."""

    enabled: bool = True
    """Publish to Redis Streams."""
    url: str | None = None
    """redis://, rediss:// (TLS) or redis+sentinel:// URL (null: an embedded Redis starts with the run)."""
    username: str | None = None
    """The ACL user to log in as, with password."""
    password: str | None = Field(default=None, repr=False)
    """The password (an ACL user's, or requirepass); never printed."""
    tls: RedisTlsConfig = Field(default_factory=RedisTlsConfig)
    """TLS files for a rediss:// url."""
    sentinel: RedisSentinelConfig = Field(default_factory=RedisSentinelConfig)
    """The sentinels' own login, for a redis+sentinel:// url."""

    def login(self) -> dict:
        """How to log in, as ``connect_redis`` (and the publisher) take it: password, username,
        TLS files and the sentinels' own login."""
        tls = self.tls
        return {"password": self.password, "username": self.username,
                "tls": TlsFiles(tls.ca_file, tls.cert_file, tls.key_file, tls.check_hostname),
                "sentinel": SentinelAuth(self.sentinel.username, self.sentinel.password)}
    max_backlog: PositiveInt = 1000
    """Entries kept while Redis is away; beyond it the oldest are dropped and counted."""
    max_backlog_mb: PositiveFloat = 256.0
    """Megabytes of entries kept while Redis is away; beyond it the oldest are dropped and counted."""
    reconnect_max_s: PositiveFloat = 5.0
    """The longest wait, in seconds, between reconnect attempts."""
    drain_timeout_s: Annotated[float, Field(ge=0)] = 10.0
    """Seconds the run's end waits for Redis to take what is left."""
    timeout_s: Annotated[float, Field(ge=0.05)] = 1.0  # shorter: a healthy Redis read as gone, entries sent twice
    """Seconds a write may go unanswered before Redis counts as away."""
    start_wait_s: Annotated[float, Field(ge=0)] = 0.0
    """Seconds the start waits for an unreachable Redis before the run fails (0: fail at once)."""
    stream: str = "segstream:{source}:frames"
    """The frames stream's name; {source} is the source's name."""
    events_stream: str = "segstream:{source}:events"
    """The events stream's name; {source} is the source's name (default: the stream's name with :events for :frames)."""
    status_key: str | None = "segstream:{source}:status"
    """Each source's status key, which says while a run publishes it (docs/SCHEMA.md); {source} is the source's name (null: none; default: the stream's name with :status for :frames)."""
    status_ttl_s: Annotated[float, Field(ge=0.5)] = 5.0
    """Seconds a status key outlives the last refresh of a run killed or stuck (refreshed every third of it)."""
    maxlen: PositiveInt = 10000
    """Each stream keeps at least this many newest entries (MAXLEN ~)."""
    max_age_s: PositiveFloat | None = None
    """Also trim entries older than this many seconds, and let a stream no run writes go as long after its last entry (null: by maxlen only)."""
    mask_encoding: Literal["rle", "idmap"] = "rle"
    """How masks travel: rle (per segment) or idmap (one label map per frame)."""
    levels: bool = True
    """Publish a model's segment hierarchy (SeNaTra's levels); false leaves it out of entries and files."""
    pipeline_size: PositiveInt = 32
    """At most this many entries per pipelined write to Redis."""
    max_batch_delay_ms: Annotated[float, Field(ge=0)] = 20.0
    """Milliseconds an entry may wait for its batch to fill before it is sent."""

    _nulls = field_validator("url", "username", "password", "status_key", mode="before")(_empty_is_null)

    @field_validator("url")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        shown = redis_url_shown(url)  # never echo a password embedded in the URL
        hint = ("use redis://host:6379/0, rediss://host:6380/0, unix:///path/to/redis.sock, "
                "redis+sentinel://host1:26379,host2:26379/<master-name>, or null for an embedded Redis")
        if is_sentinel_url(url):
            try:
                parse_sentinel_url(url)
            except ValueError as error:
                raise ValueError(f"'{shown}' {error} — use redis+sentinel://host1:26379,host2:26379/<master-name>[/db]"
                                 ) from None
            return url
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"'{shown}' is not a Redis URL — {hint}")
        if parts.scheme == "unix" and not parts.path:
            raise ValueError(f"'{shown}' names no socket path — {hint}")
        if parts.scheme != "unix":
            try:
                _ = parts.port  # reading it validates the port
            except ValueError:
                raise ValueError(f"'{shown}' has an invalid port — {hint}") from None
            if not parts.hostname:
                raise ValueError(f"'{shown}' names no host — {hint}")
            if problem := database_problem(url):
                raise ValueError(f"'{shown}' {problem} — {hint}")
        if problem := tls_query_problem(url):
            raise ValueError(f"'{shown}' {problem}")
        return url

    @model_validator(mode="after")
    def _tls_needs_rediss(self) -> RedisSinkConfig:
        tls = self.tls
        if (tls.ca_file or tls.cert_file or tls.key_file) and not (self.url or "").startswith(("rediss://",
                                                                                                "rediss+sentinel://")):
            raise ValueError("tls files are set but the url is not rediss:// — use rediss://host:port for TLS "
                             "(rediss+sentinel:// behind Sentinel)")
        if (self.sentinel.username or self.sentinel.password) and not is_sentinel_url(self.url or ""):
            raise ValueError("sentinel.username/password are set but the url is no redis+sentinel:// URL — use "
                             "redis+sentinel://host1:26379,host2:26379/<master-name>, or remove them")
        if bool(tls.cert_file) != bool(tls.key_file):
            raise ValueError("tls.cert_file and tls.key_file go together — set both or neither")
        return self

    @model_validator(mode="after")
    def _one_password_and_two_streams(self) -> RedisSinkConfig:
        # found probing a fleet's configs: these were found by `validate --connect` only, or not at all
        if not self.enabled:
            return self
        if self.password is not None and self.url and (in_url := url_password(self.url)) is not None \
                and in_url != self.password:
            raise ValueError(f"the url {redis_url_shown(self.url)} has a password and sinks.redis.password another "
                             "one, and the URL's would be used — keep the password in one of them")
        if "events_stream" not in self.model_fields_set:  # beside the frames: a tenant's prefix is its too
            self.events_stream = events_beside(self.stream)
        if self.stream == self.events_stream:
            raise ValueError(f"stream and events_stream are both '{self.stream}': frames and events would be mixed "
                             "in one stream — give them different names")
        if "status_key" not in self.model_fields_set:  # beside the streams: a tenant's prefix is the key's too
            self.status_key = status_beside(self.stream)
        if self.status_key in (self.stream, self.events_stream):
            raise ValueError(f"status_key is '{self.status_key}', the name of a stream — give it a name of its own, "
                             "e.g. 'segstream:{source}:status'")
        return self

    @field_validator("stream", "events_stream", "status_key")
    @classmethod
    def _stream_template(cls, stream: str | None) -> str | None:
        if stream is None:
            return None
        try:
            ok = stream.format(source="a") != stream.format(source="b")
        except (KeyError, IndexError, ValueError):
            ok = False
        if not ok:
            raise ValueError(
                f"'{stream}' must contain {{source}} and no other placeholder, e.g. 'segstream:{{source}}:frames'"
            )
        return stream


class TrackingConfig(Strict):
    """Stable segment ids across frames, per source (``segstream.models.tracking``).

    A new thing gets its id once seen in ``min_hits`` consecutive frames; a thing not seen keeps
    its id for ``max_lost`` frames (an occlusion), then its track ends; with ``max_lost_s`` set, for
    that many seconds of the source's timestamps instead (the same time at any frame rate, with
    frames dropped or a stream paused; frames without a timestamp still count ``max_lost``).
    Matching scores mask overlap (``iou_weight``), query-embedding similarity (``embedding_weight``) and class
    agreement (``class_weight``); a pair needs ``min_overlap``, or an embedding similarity of
    ``min_similarity`` within ``max_shift`` box diagonals of where the thing should be (for a
    thing unseen a while: anywhere from where it was last seen to where its velocity would have
    carried it; a lost thing: anywhere at ``reid_similarity``, above 1: never), and a class change
    needs ``class_change_overlap``. A lost thing nothing else matched takes the nearest thing of
    its class that no track matched, within ``max_shift`` diagonals of that stretch (its embedding
    not plainly another's). ``embedding_momentum`` smooths a track's embedding; a detection under ``partial_area`` of the thing's size counts as partly hidden.
    Overlaps are measured on label maps shrunk to a long side of ``mask_side`` pixels; at most
    ``max_tracks`` tracks are kept per source.
    """

    enabled: bool = True
    """Give segments ids that stay the same across frames."""
    min_hits: PositiveInt = 2
    """Consecutive frames a new thing must be seen in before it gets its id."""
    max_lost: Annotated[int, Field(ge=0)] = 30
    """Frames a thing not seen keeps its id (an occlusion) before its track ends."""
    max_lost_s: Annotated[float, Field(gt=0)] | None = None
    """Seconds of the source's time a thing not seen keeps its id, instead of max_lost frames."""
    iou_weight: Annotated[float, Field(ge=0)] = 0.5
    """Weight of mask overlap in the matching score."""
    embedding_weight: Annotated[float, Field(ge=0)] = 0.4
    """Weight of query-embedding similarity in the matching score."""
    class_weight: Annotated[float, Field(ge=0)] = 0.1
    """Weight of class agreement in the matching score."""
    min_overlap: Fraction01 = 0.1
    """Mask overlap (IoU) a pair needs to match (or min_similarity)."""
    min_similarity: Annotated[float, Field(ge=-1, le=1)] = 0.6
    """Embedding similarity a pair needs to match without min_overlap, within max_shift."""
    max_shift: PositiveFloat = 1.0
    """How far, in box diagonals, a thing may be from where it should be to match by similarity (lost: by position)."""
    reid_similarity: Annotated[float, Field(ge=-1, le=2)] = 0.9
    """Embedding similarity a lost thing needs to be matched anywhere (above 1: never)."""
    class_change_overlap: Fraction01 = 0.3
    """Mask overlap a match needs when the class changes."""
    embedding_momentum: Annotated[float, Field(ge=0, lt=1)] = 0.7
    """How much of a track's embedding is kept at each update (0..1)."""
    partial_area: Fraction01 = 0.5
    """A detection under this share of the thing's size counts as partly hidden."""
    mask_side: Annotated[int, Field(ge=8)] = 480
    """Long side, in pixels, of the label maps overlaps are measured on."""
    max_tracks: PositiveInt = 1000
    """Tracks kept per source at most."""

    @model_validator(mode="after")
    def _some_weight_beyond_embeddings(self) -> TrackingConfig:
        if self.iou_weight + self.class_weight <= 0:  # found probing: validate said ok, run raised
            raise ValueError("iou_weight and class_weight are both 0 — give one of them a weight above 0 "
                             "(embeddings alone cannot match things the model gives none for)")
        return self


class FilesSinkConfig(Strict):
    """One JSONL file per source under ``dir``, entries in the same schema (and with the same
    ``mask_encoding``) as Redis."""

    enabled: bool = False
    """Write each source's entries to a JSONL file."""
    dir: str = "runs/out"
    """The folder of the JSONL files, one per source."""


class PreviewSinkConfig(Strict):
    """Pictures of what the model sees: each source's frames with its segments drawn over them
    (masks coloured by track id, or by segment id until a tracker gives tracks; outlines; labels
    with ids and scores), as ``<dir>/<source>.mp4`` or as ``<dir>/<source>/<run_id>/<frame>.png``
    (``<dir>/<source>/latest`` links to the newest run's folder). ``keep_runs``: how many runs'
    PNG folders a source keeps (this run's and the one before by default); older ones are removed
    when a run starts. ``level``: draw that level of the model's segment hierarchy (SeNaTra's
    levels, 0 the finest) instead of the frame's segments; a model without one is refused."""

    enabled: bool = False
    """Draw each source's segments over its frames."""
    dir: str = "runs/preview"
    """The folder of the previews: <dir>/<source>.mp4, or <dir>/<source>/<run_id>/ of PNGs."""
    format: Literal["mp4", "png"] = "mp4"
    """mp4 (a video per source) or png (a picture per frame)."""
    opacity: Fraction01 = 0.45
    """Opacity of the masks drawn over the frames (0..1)."""
    keep_runs: PositiveInt = 2
    """How many runs' PNG folders each source keeps; older ones are removed when a run starts."""
    level: NonNegativeInt | None = None
    """Draw this level of the model's segment hierarchy (SeNaTra; 0 the finest), not the segments (null)."""
    max_width: Annotated[int, Field(ge=16)] | None = None
    """Scale previews down to at most this many pixels wide (null: the frame's width); 4K is slow to encode on a CPU."""




class CustomSinkConfig(Strict):
    """A sink of one's own (a ``segstream.Sink``): ``use`` names its factory as
    ``module:attribute`` (importable: installed, or on PYTHONPATH) or as an entry point of the
    group ``segstream.sinks``; it is called as ``factory(**options)`` once per run. It gets every
    result and event after the shipped sinks."""

    use: PartName
    """The sink's factory: module:attribute, or an entry point of group segstream.sinks."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the factory."""


class StageConfig(Strict):
    """A per-source stage of one's own (a ``segstream.FrameStage``): ``use`` names its factory as
    ``module:attribute`` (importable: installed, or on PYTHONPATH) or as an entry point of the
    group ``segstream.stages``; it is called as ``factory(source_name, **options)`` once per source
    at the start. Stages run after the tracker, in the order listed; ``sources`` limits one to
    those of the config's sources (null: every source)."""

    use: PartName
    """The stage's factory: module:attribute, or an entry point of group segstream.stages."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for the factory (after the source's name)."""
    sources: Annotated[list[SourceName], Field(min_length=1)] | None = None
    """The sources it runs on (null: every source)."""


class SinksConfig(Strict):
    redis: RedisSinkConfig = Field(default_factory=RedisSinkConfig)
    """Redis Streams, one stream per source."""
    files: FilesSinkConfig = Field(default_factory=FilesSinkConfig)
    """JSONL files, one per source."""
    preview: PreviewSinkConfig = Field(default_factory=PreviewSinkConfig)
    """Pictures of the segments drawn over the frames."""
    custom: list[CustomSinkConfig] = Field(default_factory=list)
    """Sinks of one's own."""


def _host_port(address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9108`` for IPv6) -> (host, port); ValueError naming the problem."""
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"'{address}' is not host:port — write e.g. 127.0.0.1:9108, 0.0.0.0:9108 or [::1]:9108")
    if host == "*":  # other servers' "every interface" (found probing: the run failed, blaming another segstream)
        raise ValueError(f"'{address}': * names no address here — write 0.0.0.0:{port} for every interface (or "
                         f"[::]:{port} for IPv6 too)")
    return host, int(port)


class OpsConfig(Strict):
    """Operations: ``http`` serves ``/metrics`` (Prometheus), ``/healthz`` and ``/readyz`` on one
    port (null turns it off; port 0 picks a free one). ``/healthz`` fails once a stage that is
    working has made no progress for ``stall_after_s``; waiting for input or for a slower stage
    downstream is not a stall. ``status_interval_s``: how often ``segstream run`` writes its
    status line (with JSON logs, an INFO record of ``segstream.status``). ``reload``: ``POST
    /reload`` on that port (``segstream reload CONFIG`` sends it) reads the config file again and
    applies its sources to the run: added, removed, restarted when their settings changed, new
    filters; other sections take a restart."""

    http: str | None = "127.0.0.1:9108"
    """host:port of /metrics, /healthz and /readyz (null: off; port 0: a free one)."""
    stall_after_s: PositiveFloat = 60.0
    """/healthz fails once a working stage has made no progress for this many seconds."""
    status_interval_s: PositiveFloat = 2.0
    """Seconds between segstream run's status lines (and segstream batch's progress lines, where it draws no bars)."""
    reload: bool = False
    """Serve POST /reload on the ops port: read the config again and apply its sources."""

    _nulls = field_validator("http", mode="before")(_empty_is_null)

    @field_validator("http", mode="before")
    @classmethod
    def _port_alone(cls, http: Any) -> Any:
        if isinstance(http, int) and not isinstance(http, bool):  # --set ops.http=9108 (found probing)
            raise ValueError(f"{http} is a port alone — write host:port: 127.0.0.1:{http} (this machine only) or "
                             f"0.0.0.0:{http} (every interface)")
        return http

    @field_validator("http")
    @classmethod
    def _address(cls, http: str | None) -> str | None:
        if http is not None:
            _host_port(http)
        return http

    @property
    def address(self) -> tuple[str, int] | None:
        return None if self.http is None else _host_port(self.http)


class RayConfig(Strict):
    """``segstream batch --engine ray``: ``address`` of the cluster (null: start a local Ray);
    ``model_actors`` model replicas (null: one per GPU of the cluster, or one without GPUs), each
    holding ``actor_gpus`` GPUs (null: 1 when the model runs on CUDA, else 0) and ``actor_cpus``
    CPUs; ``videos_in_flight`` decoding tasks at once (null: two per model actor), each with
    ``decode_cpus`` CPUs; a video whose worker dies is tried again up to ``retries`` times."""

    address: str | None = None
    """The Ray cluster's address (null: start a local Ray)."""
    model_actors: PositiveInt | None = None
    """Model replicas (null: one per GPU of the cluster, or one without GPUs)."""
    actor_cpus: PositiveFloat = 1.0
    """CPUs each model actor holds."""
    actor_gpus: Annotated[float, Field(ge=0)] | None = None
    """GPUs each model actor holds (null: 1 when the model runs on CUDA, else 0)."""
    videos_in_flight: PositiveInt | None = None
    """Videos decoding at once (null: two per model actor)."""
    decode_cpus: PositiveFloat = 1.0
    """CPUs each decoding task holds."""
    retries: Annotated[int, Field(ge=0)] = 3
    """Times a video whose worker dies is tried again."""

    _nulls = field_validator("address", mode="before")(_empty_is_null)


VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg", ".flv",
                    ".wmv", ".3gp", ".3g2", ".mxf", ".ogv", ".dv")


class BatchConfig(Strict):
    """``segstream batch``: what it writes under ``output`` for each video (``jsonl``: wire-schema
    entries; ``coco_panoptic``: a PNG per frame and a JSON per video, and one JSON over the batch;
    ``coco_images``: with it, each frame as the JPEG the COCO JSON names; ``overlay``: an MP4 with
    the segments drawn, or with ``overlay_level`` that level of the model's hierarchy), and how many videos the local engine decodes at once (``concurrency``).
    Folders given as inputs are searched for files with one of ``extensions``. ``max_fps``: at most
    that many frames per second of each video's time go to the model (a sample of a long archive:
    1 keeps a frame a second; null: every frame); the frames left out leave gaps in ``frame``."""

    output: str = "runs/batch"
    """The output folder: a folder per video, and manifest.jsonl."""
    jsonl: bool = True
    """Write each video's entries as JSONL (the wire schema)."""
    coco_panoptic: bool = True
    """Write COCO panoptic: a PNG per frame, a JSON per video and one over the batch."""
    coco_images: bool = False
    """With coco_panoptic, write each frame as the JPEG the COCO JSON names."""
    overlay: bool = False
    """Write an MP4 per video with the segments drawn."""
    overlay_level: NonNegativeInt | None = None
    """With overlay, draw this level of the model's segment hierarchy (SeNaTra's; 0 the finest) instead of the segments (null: the segments)."""
    concurrency: PositiveInt = 4
    """Videos the local engine decodes at once."""
    extensions: list[str] = Field(default_factory=lambda: list(VIDEO_EXTENSIONS))
    """File extensions of the videos searched for in folders given as inputs."""
    queue_size: PositiveInt = 8
    """Frames held in front of the model for each video."""
    open_timeout_s: PositiveFloat = 10.0
    """Seconds opening a video may take before it fails."""
    read_timeout_s: PositiveFloat = 10.0
    """Seconds without data from a video before it fails."""
    max_fps: MaxFps = None
    """At most this many frames per second of each video's time go to the model (null: every frame)."""
    deinterlace: Deinterlace = "auto"
    """Interlaced videos' frames made whole (FFmpeg's bwdif, a frame per frame): auto (the frames flagged interlaced), true (every frame), false (none)."""
    ray: RayConfig = Field(default_factory=RayConfig)
    """The Ray engine (--engine ray)."""


class PipelineConfig(Strict):
    """The whole pipeline: sources -> model -> sinks. ``filters`` apply to every source (and
    every video of ``segstream batch``); a source's own ``filters`` override them key by key."""

    sources: Annotated[list[SourceConfig], Field(min_length=1)]
    """The inputs: files, streams, cameras, image folders or synthetic scenes."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The segmentation model."""
    engine: EngineConfig = Field(default_factory=EngineConfig)
    """How frames are batched and the model run."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """Stable segment ids across frames."""
    stages: list[StageConfig] = Field(default_factory=list)
    """Per-source stages of one's own, after the tracker."""
    sinks: SinksConfig = Field(default_factory=SinksConfig)
    """Where results go."""
    ops: OpsConfig = Field(default_factory=OpsConfig)
    """Metrics, health and reload over HTTP, and status lines."""
    batch: BatchConfig = Field(default_factory=BatchConfig)
    """segstream batch: what it writes and how many videos at once."""
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    """Segment filters for every source (a source's own override them key by key)."""

    def filters_of(self, source: str) -> FiltersConfig:
        """The filters in force for ``source``: its own over the top-level ones (the top-level
        ones for a source the config does not name)."""
        own = next((s.filters for s in self.sources if s.name == source), None)
        return self.filters if own is None else own.over(self.filters)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, sources: list) -> list:
        problem = _name_clash([source.name for source in sources]) or _port_clash(sources)
        if problem:
            raise ValueError(problem)
        return sources

    @model_validator(mode="after")
    def _stages_name_known_sources(self) -> PipelineConfig:
        names = [source.name for source in self.sources]
        for i, stage in enumerate(self.stages):
            for name in stage.sources or ():
                if name not in names:
                    close = difflib.get_close_matches(name, names, n=1)
                    hint = f"did you mean '{close[0]}'? " if close else ""
                    raise ValueError(f"stages[{i}].sources: no source is named '{name}' — {hint}the config's sources "
                                     f"are {', '.join(names) or 'none'}")
        return self

    @model_validator(mode="after")
    def _merged_filters_keep_a_class(self) -> PipelineConfig:
        # found in review: a source's exclude_classes over the top-level classes (merged without
        # the section's own checks) kept no class, and the source published nothing, unsaid
        for i, source in enumerate(self.sources):
            merged = self.filters_of(source.name)
            if merged.classes is not None and not set(merged.classes) - set(merged.exclude_classes):
                raise ValueError(f"sources[{i}].filters: its exclude_classes remove every class the filters' classes "
                                 "keep — nothing of this source would be published")
        return self

    @model_validator(mode="after")
    def _ids_outlast_the_frame_interval(self) -> PipelineConfig:
        # found by QA: max_fps 1 with max_lost_s 0.5 left every segment without an id, unsaid
        lost_s = self.tracking.max_lost_s
        if not self.tracking.enabled or lost_s is None:
            return self
        # a source's own rate where the config says it (a folder of stills at fps 0.1: found probing,
        # max_lost_s 5 left every thing without an id; a snapshot source's interval_s), or its max_fps where lower
        # (not a folder timed by its images' own times: its fps is then only a pace of playing them)
        rates = [(f"source {s.name}'s", key, rate) for s in self.sources
                 for key, rate in [min((("max_fps", s.max_fps),
                                        ("fps", getattr(s, "fps", None) if getattr(s, "timestamps", "fps") == "fps"
                                         else None),
                                        ("interval_s", 1 / s.interval_s if s.type == "snapshot" else None)),
                                       key=lambda pair: math.inf if pair[1] is None else pair[1])]]
        rates.append(("batch", "max_fps", self.batch.max_fps))
        for whose, key, rate in rates:
            # kept frames come up to an input frame later than 1/max_fps apart: two intervals are safe
            if rate is not None and lost_s < 2 / rate:
                raise ValueError(
                    f"tracking.max_lost_s ({lost_s:g} s) is shorter than two of {whose} frame intervals at its "
                    f"{key} {1 / rate if key == 'interval_s' else rate:g} ({2 / rate:g} s): things would lose their "
                    f"ids from one frame to the next — set max_lost_s to {2 / rate:g} s or more"
                )
        return self

    @model_validator(mode="after")
    def _resumed_from_redis(self) -> PipelineConfig:
        if not self.sinks.redis.enabled:
            for i, source in enumerate(self.sources):
                if getattr(source, "watch_from", None) == "last":
                    raise ValueError(f"sources[{i}].watch_from: last goes on after the newest image the source's "
                                     "Redis stream holds, and sinks.redis is off — turn it on, or use start or new")
        return self

    @model_validator(mode="after")
    def _full_frames_for_the_preview(self) -> PipelineConfig:
        if self.engine.resize_in_decoder and self.sinks.preview.enabled:
            raise ValueError(
                "engine.resize_in_decoder: the preview (sinks.preview) draws on full-size frames — turn one of "
                "them off"
            )
        return self


class BatchPipelineConfig(PipelineConfig):
    """A pipeline for ``segstream batch``: the videos come from the command line, so a config
    needs no sources (any it has are not used)."""

    sources: list[SourceConfig] = Field(default_factory=list)
    """Not used: segstream batch takes its videos from the command line."""

    @model_validator(mode="after")
    def _no_status_keys(self) -> BatchPipelineConfig:
        # a batch writes none (its run, its Ray tasks, its check at start): a key a video would stay
        # for good, where a video's end is in its events stream and the manifest
        self.sinks.redis.status_key = None
        return self

    @model_validator(mode="after")
    def _full_frames_for_the_overlay(self) -> BatchPipelineConfig:
        if self.batch.overlay_level is not None and not self.batch.overlay:
            raise ValueError("batch.overlay_level: it draws on the overlay video, which is off — set batch.overlay "
                             "to true, or remove batch.overlay_level")
        if self.engine.resize_in_decoder and self.batch.overlay:
            raise ValueError(
                "engine.resize_in_decoder: the overlay video (batch.overlay) draws on full-size frames — turn one "
                "of them off"
            )
        if self.engine.resize_in_decoder and self.batch.coco_panoptic and self.batch.coco_images:
            raise ValueError(
                "engine.resize_in_decoder: the COCO images (batch.coco_images) are the full-size frames — turn one "
                "of them off"
            )
        return self


def config_folder(path: str | Path) -> Path:
    """The folder a config file's relative paths start from: the one it is in as named (a link's
    own, as docker-compose takes it), not the one a link leads to; for a config read from
    standard input or a pipe, the working directory."""
    return Path.cwd() if streamed(path) else Path(os.path.abspath(path)).parent


def _led_to(path: str, resolved: Path) -> str:
    """Where a path as written led, for a message, when that reads differently."""
    return "" if str(resolved) == path else f" ({resolved})"


def _files_checked(info: ValidationInfo | None) -> bool:
    """Whether the files a config names are looked at (``segstream validate --no-files``: not, for
    a config checked away from the host it runs on)."""
    return info is None or (info.context or {}).get("files", True)


def _resolve(path: str, info: ValidationInfo) -> Path:
    """Relative paths in a config file are relative to that file's directory (as in
    docker-compose), so a config works from wherever segstream is started. Made absolute, not
    followed through links: a Kubernetes ConfigMap's files are links into a folder that each
    update replaces, and a run reloading its config must find the same paths. (So ``..`` goes up
    from the path as written, not from where a link in it leads.)"""
    candidate = Path(path).expanduser()
    base = (info.context or {}).get("base_dir") if info is not None else None
    if base is not None and not candidate.is_absolute():
        candidate = Path(base) / candidate
    return Path(os.path.abspath(candidate))


def json_schema() -> dict:
    """The JSON Schema of the YAML file (``segstream schema``); the top level's ``x-`` keys are the
    file's own (YAML anchors to reuse), as ``load_config`` takes them."""
    schema = PipelineConfig.model_json_schema()
    schema["patternProperties"] = {"^x-": {}}  # found probing: editors flagged every anchored config
    return schema


def load_config(
    path: str | Path | typing.Mapping[str, Any],
    overrides: str | typing.Iterable[str] | typing.Mapping[str, Any] | None = (),
    schema: type[PipelineConfig] = PipelineConfig, *, base_dir: str | Path | None = None,
) -> PipelineConfig:
    """Read, override, interpolate and validate the pipeline description at ``path``, or given as
    a mapping of the YAML's keys (a program's own config; not changed); relative paths in it are
    relative to ``base_dir`` (a file's: its folder; a mapping's: the working directory). Every
    problem is one ``ConfigError``.

    ``overrides`` are what ``--set`` gives the CLI: one ``"engine.batch_size=8"``, a list of
    them (each value typed like a YAML scalar), or a mapping ``{"engine.batch_size": 8}`` (each
    value taken as it is); a key's dots (or ``[0]``) walk into mappings and lists."""
    pairs = override_pairs(overrides)
    if isinstance(path, typing.Mapping):  # x- keys are its own, as a file's
        raw = copy.deepcopy({key: value for key, value in path.items()
                             if not (isinstance(key, str) and key.startswith("x-"))})
        folder = Path(os.path.abspath(base_dir or "."))
        return _loaded_config(raw, pairs, schema, folder)
    raw = read_yaml(path)
    folder = config_folder(path) if base_dir is None else Path(os.path.abspath(base_dir))
    try:
        return _loaded_config(raw, pairs, schema, folder)
    except ConfigError as error:
        raise ConfigError(located(str(error), path, pairs, "the overrides")) from None


def _loaded_config(raw: dict, pairs: list[tuple[str, Any]], schema: type[PipelineConfig], folder: Path) -> PipelineConfig:
    for key, value in pairs:
        set_config_key(raw, key, value, "override")
    if problem := _redis_url_left_empty(raw):
        raise ConfigError(problem)
    if problem := _batch_config_for_run(raw, schema):
        raise ConfigError(problem)
    return validate_config(interpolate(raw), base_dir=folder, schema=schema)


# A variable a config line reads (``${CAM_PASSWORD}``, ``${SEGSTREAM_REDIS_URL:-}``; not a ``${file:...}`` secret).
_VARIABLE_USED = re.compile(r"(?<!\$)\$\{(?!file:)([A-Za-z_][A-Za-z0-9_]*)")  # ($${X} is the text ${X})
# The path an error line starts with: ``sources[0].max_fps``, then ``(source cam1)`` where it has one.
_LINE_PATH = re.compile(r"(?P<path>[A-Za-z_][\w-]*(?:\.[\w-]+|\[\d+\])*)(?: \((?P<source>source [^)]*)\))?: ")


def located(text: str, path: str | Path, overrides: typing.Sequence[tuple[str, Any]] = (),
            given_by: str = "--set") -> str:
    """The lines of a config error with where each key is written: the line of the file that
    ``path`` names (``sources[0].max_fps (source cam1, line 12): ...``; an entry merged from a
    YAML anchor: the anchor's line), or ``from --set`` (``given_by``) for one an override (a
    key and its value) wrote. A line not about a key, or a key the file does not have (nor any
    key above it), is left as it is."""
    try:
        written_text = read_saved_text(path)
        lines_of = yaml_lines(written_text)
        data = read_yaml(path)
    except (OSError, ValueError, yaml.YAMLError, RecursionError, ConfigError):
        return text
    written = []  # each override's key as indices, as the file and the overrides before it have it
    for key, value in overrides:
        try:
            written.append(tuple(str(part) for part in set_config_key(data, key, value, "--set")))
        except ConfigError:
            continue
    out = []
    for line in text.splitlines():
        match = _LINE_PATH.match(line)
        top = match["path"].partition(".")[0].partition("[")[0] if match is not None else None
        # (a key an override wrote is said so where the file has no section for it: found probing an upgrade)
        if match is None or (top not in lines_of.get((), ()) and not any(key[:1] == (top,) for key in written)):
            out.append(line)
            continue
        parts = tuple(_key_parts(match["path"], "config"))  # as an override's key is read
        named = tuple(str(part) for part in parts)
        source = match["source"]
        if any(named[:len(key)] == key for key in written):
            where = f"from {given_by}"
        else:
            found = next((lines_of[parts[:depth]] for depth in range(len(parts), 0, -1) if parts[:depth] in lines_of),
                         None)
            if found is None:
                out.append(line)
                continue
            where = f"line {found}"
            # the value a variable gave (found probing: SEGSTREAM_REDIS_URL=garbage named the demo config's line 20)
            if variables := [name for name in _VARIABLE_USED.findall(written_text.splitlines()[found - 1])
                             if name not in line]:  # (not where the problem names it itself: one unset)
                where += ", from " + " and ".join(f"${name}" for name in dict.fromkeys(variables))
        said = f"{source}, {where}" if source else where
        out.append(f"{match['path']} ({said}): {line[match.end():]}")
    return "\n".join(_shared_lines(out))


def yaml_lines(text: str) -> dict[tuple, Any]:
    """Where each key and list entry of a YAML document is written: its path (``("sources", 0,
    "url")``) -> its line (1-based); ``()`` -> the top-level keys. Keys merged from an anchor
    (``<<: *camera``) are at the anchor's lines, unless the mapping writes them itself; what
    lies below an alias is found where its anchor is written."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    lines: dict[tuple, Any] = {}
    walked: set[int] = set()  # an anchor's node once: aliases of aliases would expand exponentially

    def walk(node: yaml.Node, path: tuple) -> None:
        if id(node) in walked:
            return
        walked.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node, line in _mapping_entries(node):
                lines.setdefault((*path, key_node.value), line)
                walk(value_node, (*path, key_node.value))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines.setdefault((*path, index), item.start_mark.line + 1)
                walk(item, (*path, index))

    walk(root, ())
    lines[()] = {key[0] for key in lines if len(key) == 1}
    return lines


def _mapping_entries(node: yaml.MappingNode, merged_in: set[int] | None = None) -> list[tuple[yaml.Node, yaml.Node, int]]:
    """A mapping's (key, value, line) entries, its own first, then those merged into it (each
    merged mapping once)."""
    merged_in = set() if merged_in is None else merged_in
    own, merged = [], []
    for key_node, value_node in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            for source in (value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]):
                if isinstance(source, yaml.MappingNode) and id(source) not in merged_in:
                    merged_in.add(id(source))
                    merged += _mapping_entries(source, merged_in)
        elif isinstance(key_node, yaml.ScalarNode):
            own.append((key_node, value_node, key_node.start_mark.line + 1))
    return own + merged


def _batch_config_for_run(raw: dict, schema: type[PipelineConfig]) -> str | None:
    """What is wrong when a config for ``segstream batch`` (``batch:``, no ``sources:``) is read
    as one for ``segstream run``."""
    if schema is PipelineConfig and isinstance(raw, dict) and "batch" in raw and "sources" not in raw:
        return ("sources: required key is missing — this is a config for segstream batch (it has batch: and no "
                "sources:): run it with segstream batch VIDEOS --config FILE, or load it with load_config(..., "
                "schema=BatchPipelineConfig)")
    return None


def _redis_url_left_empty(raw: dict) -> str | None:
    """What is wrong when ``sinks.redis.url`` is ``${VAR}`` (no default) and VAR is set but empty
    (an empty ConfigMap value, an optional Secret's key): an embedded Redis would stand in, and
    the run's entries would end with it where no consumer reads them. ``${VAR:-}`` means that."""
    sinks = raw.get("sinks") if isinstance(raw, dict) else None
    redis_section = sinks.get("redis") if isinstance(sinks, dict) else None
    url = redis_section.get("url") if isinstance(redis_section, dict) else None
    reference = re.fullmatch(r"\$\{(\w+)\}", url) if isinstance(url, str) else None
    if reference is None or os.environ.get(reference.group(1)) != "":
        return None
    name = reference.group(1)
    return (f"sinks.redis.url: environment variable {name} is set but empty, so an embedded Redis would stand in "
            f"for yours and the entries would end with the run — set {name}, or write ${{{name}:-}} where an "
            "embedded Redis is meant")


def load_checked_config(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), schema: type[PipelineConfig] = PipelineConfig,
    files: bool = True,
) -> PipelineConfig:
    """``load_config``, whose errors also say what the model's own checks (preset, family, task,
    weights) find and whether the factories ``stages:`` and ``sinks.custom`` name import and take
    their options, so that one run of a command lists every mistake. ``files=False``: the files
    it names are not looked at (``validate --no-files``)."""
    try:
        return _checked_config(path, overrides, schema, files)
    except ConfigError as error:
        pairs = []
        for override in overrides:  # those that are no KEY=VALUE were said as such
            with contextlib.suppress(ConfigError):
                pairs.append(_override_pair(override, ""))
        raise ConfigError(located(str(error), path, pairs)) from None


def _checked_config(
    path: str | Path, overrides: list[str] | tuple[str, ...], schema: type[PipelineConfig], files: bool,
) -> PipelineConfig:
    raw = raw_config_data(path, overrides)  # a YAML error stops here
    unset: list[tuple[list, str]] = []
    data = interpolate(raw, problems=unset, files=files)  # an unset variable does not hide the other mistakes
    base_dir = config_folder(path)
    lines = _problem_lines(unset, raw)
    if problem := _redis_url_left_empty(raw):
        lines.append(problem)
    if problem := _batch_config_for_run(raw, schema):
        raise ConfigError(problem)
    try:
        config = validate_config(data, base_dir=base_dir, schema=schema, files=files)
    except ConfigError as error:
        # what a missing variable left empty fails too, and the object that holds it (a source whose
        # path is empty: "no images in '<the config's folder>'", found probing the docs)
        blank = [_where(where[:cut], raw) for where, _ in unset for cut in (len(where), len(where) - 1) if cut > 0]
        lines += [line for line in str(error).splitlines() if not any(line.startswith(f"{b}:") for b in blank)]
        lines += _model_errors(data, base_dir, files)
        raise ConfigError("\n".join(lines)) from None
    if config.stages or config.sinks.custom or any(s.type == "custom" for s in config.sources):
        # imported, not called: a factory may be heavy
        from segstream.pipeline.own_parts import check

        lines += check(config)
    if lines:
        raise ConfigError("\n".join(lines))
    return config


def _model_errors(data: dict, base_dir: Path, files: bool = True) -> list[str]:
    """What the model's checks say of its section, where the section alone is valid (else the
    schema's errors already name it)."""
    from segstream.pipeline.model_factory import check_model_config, check_preset  # torch: on errors only

    section = data.get("model") or {}
    try:
        model = ModelConfig.model_validate(section, context={"base_dir": base_dir, "files": files})
    except ValueError:  # pydantic's ValidationError: its errors are the config's; the preset may be wrong too
        names = {key: section[key] for key in ("preset", "family") if isinstance(section, dict) and key in section}
        try:
            model = ModelConfig.model_validate(names)
        except ValueError:
            return []
        check = check_preset
    else:
        check = check_model_config
    try:
        check(model if files else labels_unread(model))
    except ConfigError as error:
        return [str(error)]
    return []


def labels_unread(model: ModelConfig) -> ModelConfig:
    """``model`` as ``validate --no-files`` checks it: its ``model.labels`` file is left unread
    (its classes are the host's to read), unless a missing checkpoint makes it an error anyway
    (said before the file would be read)."""
    if model.labels and model.checkpoint:
        return model.model_copy(update={"labels": None})
    return model


def config_data(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The pipeline description at ``path``, overridden and interpolated, not yet validated."""
    return interpolate(raw_config_data(path, overrides))


def raw_config_data(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The pipeline description at ``path`` with its overrides, ``${VAR}`` not yet replaced."""
    data = read_yaml(path)
    for override in overrides:
        apply_override(data, override)
    return data


def _port_clash(sources: list) -> str | None:
    """What is wrong when two sources would hold one local port or device: two listeners on one
    port (a UDP port, an SRT or TCP listener) or one camera twice; the second would retry
    "address already in use" or "device busy" for good (None when none do)."""
    seen: dict = {}
    for i, source in enumerate(sources):
        url = getattr(source, "url", None) or getattr(source, "device", None)
        if isinstance(url, int):  # a camera by index
            url = f"/dev/video{url}"
        if url is None or not exclusive_input(str(url)):
            continue
        try:
            parts = urlsplit(str(url)) if "://" in str(url) else None
            port = parts.port if parts is not None else None
        except ValueError:
            continue
        if parts is not None and (_multicast(parts.hostname) or "reuse=1" in parts.query):
            continue  # groups on one port, or a socket that shares its port: FFmpeg binds them side by side
        proto = "tcp" if url_scheme(str(url)) in ("tcp", "rtsp", "rtmp", "http") else "udp"
        key = (proto, port) if port is not None else str(url)
        if key in seen:
            what = f"{proto.upper()} port {port}" if port is not None else f"'{url}'"
            return (f"sources[{seen[key]}] and sources[{i}] both listen on {what}: only one can hold it — give each "
                    "its own")
        seen[key] = i
    return None


def _multicast(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_multicast
    except ValueError:  # a name
        return False


def _name_clash(names: list) -> str | None:
    """What is wrong when two sources share a name (None when none do)."""
    seen: dict = {}
    for i, name in enumerate(names):
        if name is not None and name in seen:
            return f"source name '{name}' is used by sources[{seen[name]}] and sources[{i}] — names must be unique"
        seen.setdefault(name, i)
    for i, name in enumerate(names):  # the files sink writes <name>.jsonl and <name>.events.jsonl
        if isinstance(name, str) and name.endswith(".events") and name.removesuffix(".events") in seen:
            return (f"source names '{name.removesuffix('.events')}' and '{name}' (sources[{i}]) would share the file "
                    f"{name}.jsonl of the files sink (one's events, the other's frames) — rename one")
    return None


def validate_config(
    data: Any, base_dir: Path | None = None, schema: type[PipelineConfig] = PipelineConfig, files: bool = True
) -> PipelineConfig:
    """Validate plain data (already interpolated); all problems become one ConfigError.
    ``files=False`` leaves the files it names unread (``validate --no-files``)."""
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping with the keys sources, model, engine, tracking and sinks")
    try:
        return schema.model_validate(data, context={"base_dir": base_dir, "files": files})
    except ValidationError as error:
        lines = [_error_line(e, data) for e in error.errors()]
        # the checks of a whole section run only once its fields are valid; the names need no more
        sources = data.get("sources")
        names = [s.get("name") if isinstance(s, dict) and isinstance(s.get("name"), str) else None
                 for s in sources] if isinstance(sources, list) else []
        clash = _name_clash(names)
        if clash and f"sources: {clash}" not in lines:
            lines.append(f"sources: {clash}")
        raise ConfigError("\n".join(lines)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping instead of keeping the last."""

    def construct_mapping(self, node, deep=False):
        keys = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *camera`: its keys may be written again here
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):  # `? [a, b]`: YAML allows it, no config key is one
                raise yaml.constructor.ConstructorError(
                    None, None, f"a key that is a {'list' if isinstance(key, list) else 'mapping'}: every key of a "
                    "config is a name", key_node.start_mark)
            if key in keys:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice in the same mapping", mark
                )
            keys.add(key)
        self.flatten_mapping(node)
        return super().construct_mapping(node, deep=deep)


# The configs shipped in the package (segstream/configs/ of an installed wheel; configs/ of a checkout)
SHIPPED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = read_saved_text(path)  # a Windows editor's UTF-16 too
    except FileNotFoundError:
        shipped = SHIPPED_CONFIGS / path.name
        # the README's `configs/...` paths are a checkout's: an installed segstream has them elsewhere
        hint = f" — segstream ships a config of that name: {shipped} (copy it to edit it)" if shipped.is_file() else ""
        raise ConfigError(f"config file '{path}' does not exist{hint}") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file '{path}': {error}") from None
    except ValueError as error:
        raise ConfigError(f"config file {error}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: invalid YAML: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested deeper than a config can be (hundreds of levels of lists or mappings) — "
                          "is it the file you meant?") from None
    if data is None:
        raise ConfigError(f"config file '{path}' is empty — it needs at least a sources list")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with the keys sources, model, engine, tracking and sinks")
    # keys starting with x- are the file's own (as in docker-compose): a place for YAML anchors
    return {key: value for key, value in data.items() if not (isinstance(key, str) and key.startswith("x-"))}


def apply_override(data: dict, override: str) -> None:
    """Apply one ``--set a.b.c=value`` (``sources.0.path`` and ``sources[0].path`` both index
    lists; ``value`` is typed like a YAML scalar: 4, true, null, 0.5, text)."""
    key, value = _override_pair(override, f"--set {override}: expected KEY=VALUE, e.g. --set engine.batch_size=8")
    set_config_key(data, key, value, "--set")


def override_pairs(overrides: str | typing.Iterable[str] | typing.Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    """``load_config``'s overrides as (key, value) pairs: one ``"KEY=VALUE"``, a list of them
    (values typed like YAML scalars), or a mapping of key -> value (values as they are)."""
    example = "e.g. \"engine.batch_size=8\", a list of such strings, or {\"engine.batch_size\": 8}"
    if overrides is None:  # none, as () says
        return []
    if not isinstance(overrides, (str, typing.Mapping, typing.Iterable)):
        raise ConfigError(f"overrides {overrides!r}: not a KEY=VALUE string, a list of them or a mapping ({example})")
    if isinstance(overrides, typing.Mapping):
        for key in overrides:
            if not isinstance(key, str) or not key.strip():
                raise ConfigError(f"override {key!r}: a key is a dotted path such as 'engine.batch_size' ({example})")
        return list(overrides.items())
    if isinstance(overrides, str):
        overrides = [overrides]
    pairs = []
    for override in overrides:
        if not isinstance(override, str):
            raise ConfigError(f"override {override!r}: expected a KEY=VALUE string ({example})")
        pairs.append(_override_pair(override, f"override {override!r}: expected KEY=VALUE ({example})"))
    return pairs


def _override_pair(override: str, problem: str) -> tuple[str, Any]:
    """One ``KEY=VALUE`` as its key and its value typed like a YAML scalar; ``problem`` is the
    error when it is no such pair."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(problem)
    return key, _scalar(text)


def _scalar(text: str) -> Any:
    """An override's value as YAML types a scalar (4, true, null, 0.5) or a list or mapping
    (``[.jpg, .png]``, ``{min_area: 100}``, ``min_area: 100``, ``- disc``), its surrounding blanks
    and line breaks dropped (a secret read from a file ends in one), else the text: where YAML
    would make of it a comment (``my video #2.mp4``, a password with `` #``: cut short), a folded
    line (a line break inside a path), an empty list item (``-``) or a mapping of what has no
    ``: `` (``{source}``, a stream's pattern), found probing bad input."""
    text = text.strip()
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if text[:1] in ("'", '"') and isinstance(value, str):  # quoted, as YAML is (the usual way round ' #')
        return value
    if isinstance(value, list) and not text.startswith(("[", "- ")):
        return text
    if isinstance(value, dict) and not (": " in text or text.startswith("{") and (":" in text or text == "{}")):
        return text
    if "\n" in text or re.search(r"(^|\s)#", text):  # folded, or a comment cut off
        return text if not isinstance(value, (list, dict)) else value
    return value


# A key's parts: ``name``, ``0``, ``[0]`` or ``[a name]`` (a list's entry by its name: it may hold dots).
_KEY_PART = re.compile(r"\[([^\]]+)\]|([^.\[\]]+)")
_DIGITS = re.compile(r"[0-9]+")  # an index (str.isdigit takes '²', which int() refuses)


def _key_parts(key: str, given_by: str) -> list:
    """``sources[cam.1].filters.min_score`` -> ["sources", Named("cam.1"), "filters", "min_score"];
    a plain number is a list index."""
    parts: list = []
    rest = key.strip()
    while rest:
        match = _KEY_PART.match(rest)
        if match is None:
            raise ConfigError(f"{given_by} {key}: not a key — dotted names and numbers, a list's entry as [N] or "
                              "[its name], e.g. sources[cam-1].max_fps")
        named, plain = match.groups()
        parts.append(int(named) if named and _DIGITS.fullmatch(named) else _Named(named) if named is not None else
                     int(plain) if _DIGITS.fullmatch(plain) else plain)
        rest = rest[match.end():]
        if rest.startswith("."):
            rest = rest[1:]
            if not rest or rest.startswith("."):
                raise ConfigError(f"{given_by} {key}: an empty part — e.g. engine.batch_size")
    return parts


class _Named(str):
    """A list's entry named in brackets (``sources[cam-1]``): the mapping whose ``name`` it is."""


def set_config_key(data: dict, key: str, value: Any, given_by: str) -> list:
    """Set the dotted ``key`` of ``data`` to ``value`` (``sources.0.path`` and ``sources[0].path``
    both index lists; ``sources[cam-1].path`` or ``sources.cam-1.path`` is the entry named
    cam-1); errors start with ``given_by`` and the key (``--set engine.x``). Returns the key's
    parts as set, a list entry by its index."""
    parts = _key_parts(key, given_by)
    resolved: list = []
    node: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        here = _format_path(parts[:depth]) or "the top level"
        if isinstance(node, list):
            if not isinstance(part, int):
                names = [entry.get("name") if isinstance(entry, dict) else None for entry in node]
                if not any(isinstance(name, str) for name in names):
                    raise ConfigError(f"{given_by} {key}: {here} is a list; index it with a number, e.g. {here}.0")
                if part not in names:
                    shown = ", ".join(str(n) for n in names if isinstance(n, str))
                    raise ConfigError(f"{given_by} {key}: {here} has no entry named '{part}' (its names: {shown})")
                part = names.index(part)
            if part > len(node):
                raise ConfigError(f"{given_by} {key}: {here} has {len(node)} entries (indices 0 to {len(node) - 1})")
            if part == len(node):
                node.append({})
        elif isinstance(node, dict):
            part = str(part) if isinstance(part, _Named) else part
            if not last and not isinstance(node.get(part), (dict, list)):
                node[part] = {}
        else:
            raise ConfigError(f"{given_by} {key}: {here} is a single value, not a mapping or list")
        resolved.append(part)
        if last:
            node[part] = value
        else:
            node = node[part]
    return resolved


def overrides_by_name(path: str | Path, overrides: typing.Iterable[str]) -> list[str]:
    """``--set`` overrides of ``sources.N`` rewritten to name the source there (``sources[its
    name]``), as the file and the overrides before it have it, so that a reload of a file whose
    sources moved applies each to the same camera. Entries past the file's own (added by
    overrides) and names of digits only keep their index; a file that cannot be read is said by
    loading it."""
    try:
        data = read_yaml(path)
    except ConfigError:
        return list(overrides)
    sources = data.get("sources") if isinstance(data, dict) else None
    if not isinstance(sources, list):
        return list(overrides)
    own = len(sources)
    named = []
    for override in overrides:
        key, sep, value = override.partition("=")
        match = re.match(r"\s*sources(?:\.([0-9]+)|\[([0-9]+)\])(?=$|[.\[])", key)
        sources = data.get("sources")
        if sep and match and isinstance(sources, list):
            index = int(match.group(1) or match.group(2))
            entry = sources[index] if index < min(own, len(sources)) else None
            name = entry.get("name") if isinstance(entry, dict) else None
            if isinstance(name, str) and name and not _DIGITS.fullmatch(name):
                override = f"sources[{name}]{key[match.end():]}={value}"
        named.append(override)
        with contextlib.suppress(ConfigError):  # (loading says it) the next overrides see what this one did
            set_config_key(data, *_override_pair(override, ""), "override")
    return named


# ${NAME...}, $$, and ${file:PATH} whose path may hold variables (${file:${CREDENTIALS_DIRECTORY}/pw}: systemd's)
_REFERENCE = re.compile(r"\$\$|\$\{(file:(?:\$\{[^{}]*\}|[^{}])*|[^}]*)\}")
# The credentials of a URL as written in the config, before references are replaced.
_URL_CREDENTIALS = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#@]*)@")


def _escape_userinfo(text: str) -> str:
    """Percent-encoded for a URL's credentials: all but RFC 3986's unreserved and sub-delimiter
    characters ('%' too: a variable's value is taken as written)."""
    return quote(text, safe="!$&'()*+,;=")


# NAME, NAME:-default (unset or empty), NAME-default (unset), NAME:?why (unset or empty is an
# error saying why), NAME?why (unset is): docker-compose's forms.
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?])(.*))?", re.DOTALL)
# Values a config may expand to, YAML aliases expanded: far past any real pipeline, far below
# what nested aliases ("billion laughs") expand to.
MAX_CONFIG_VALUES = 100_000


def interpolate(data: Any, environ: typing.Mapping[str, str] | None = None,
                problems: list[tuple[list, str]] | None = None, files: bool = True) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string value (``$$`` is a literal ``$``).

    The default applies when VAR is unset or empty (``${VAR-default}``: unset only); an unset VAR
    without default is an error naming the variable and the key, as is ``${VAR:?why}`` when VAR
    is unset or empty (``${VAR?why}``: unset), saying ``why``. ``${file:/run/secrets/x}`` is that
    file's text (a mounted secret's, read again at each reload; its path may hold variables:
    ``${file:${CREDENTIALS_DIRECTORY}/x}``), taken as a secret; with
    ``files=False`` (``validate --no-files``) it is ``***``, unread. A reference in the credentials of a URL
    (``rtsp://user:${PASSWORD}@host/...``) is percent-encoded where the URL needs it, so that a
    password with ``@ : / ? # %`` works as it is: the variable holds the password as written.
    """
    env = os.environ if environ is None else environ
    raising = problems is None
    problems = [] if problems is None else problems

    def substitute(text: str, path: list) -> str:
        # found where a reference is (its ${NAME:?why} may hold '?', '/' or '@'): at the same places
        credentials = _URL_CREDENTIALS.match(_REFERENCE.sub(lambda m: "x" * len(m.group(0)), text))
        # With no ':' of its own between user and password, the first ':' a value brings is that
        # separator (``rtsp://${AUTH}@host`` with AUTH=user:password) and stays one.
        separator_written = credentials is not None and ":" in _REFERENCE.sub(
            "", text[credentials.start(1):credentials.end(1)])

        def one(match: re.Match) -> str:
            value = resolve(match)
            if credentials is None or not credentials.start(1) <= match.start() < credentials.end(1):
                return value
            user, colon, password = (("", "", value) if separator_written else value.partition(":"))
            return _escape_userinfo(user) + colon + _escape_userinfo(password)

        def resolve(match: re.Match) -> str:
            if match.group(0) == "$$":
                return "$"
            if match.group(1).startswith("file:"):
                said = len(problems)
                name = _REFERENCE.sub(resolve, match.group(1).removeprefix("file:"))  # its variables first
                if len(problems) > said:  # a variable of its path is missing: that alone is said
                    return ""
                return file_secret(name, path, problems) if files else "***"
            ref = _VARIABLE.fullmatch(match.group(1))
            if ref is None:
                problems.append((path, f"'{match.group(0)}' is not a variable reference — "
                                 "write ${NAME}, ${NAME:-default} or ${NAME:?what it is}"))
                return match.group(0)
            name, colon, kind, text = ref.groups()
            value = env.get(name)
            if value and SECRET_NAME.search(name):  # CAM_PASSWORD, HF_TOKEN: wherever it lands
                remember(value)
            if value is None or (value == "" and colon):
                if kind == "-":
                    return text
                said = f" ({text})" if kind == "?" and text else ""
                empty = "is empty" if value == "" else "is not set"
                problems.append((path, f"environment variable {name} {empty}{said} — export it"
                                 + ("" if kind == "?" else f" or write ${{{name}:-default}}")))
                return ""
            return value

        return _REFERENCE.sub(one, text)

    values = 0

    def walk(node: Any, path: list) -> Any:
        nonlocal values
        values += 1
        if values > MAX_CONFIG_VALUES:  # counted as the copy is made: refused before it fills memory
            raise ConfigError(
                f"{_format_path(path) or 'config'}: the config expands to more than {MAX_CONFIG_VALUES:,} values "
                "(nested YAML aliases: an alias bomb?) — write it without aliases of aliases"
            )
        if isinstance(node, dict):
            return {k: walk(v, [*path, k]) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, [*path, i]) for i, v in enumerate(node)]
        if isinstance(node, str):
            return substitute(node, path)
        return node

    result = walk(data, [])
    remember_in(result)  # its secrets (as written, or brought by variables) stay out of every line printed
    if raising and problems:
        raise ConfigError("\n".join(_problem_lines(problems, data)))
    return result


MAX_SECRET_BYTES = 64 * 1024  # a password, a token, a key: not a video


def file_secret(name: str, path: list, problems: list[tuple[list, str]]) -> str:
    """The text of the secret file ``name`` (``${file:NAME}``), its one closing line end left out
    (what an editor or ``kubectl create secret --from-file`` leaves); never printed. A problem is
    added to ``problems`` (and "" returned)."""
    where = Path(name)
    if not where.is_absolute():
        problems.append((path, f"${{file:{name}}}: give the secret file's absolute path, e.g. ${{file:/run/secrets/"
                               f"{where.name or 'name'}}}"))
        return ""
    try:
        with open(where, "rb") as file:
            data = file.read(MAX_SECRET_BYTES + 1)
    except OSError as error:
        problems.append((path, f"${{file:{name}}}: cannot read it ({error.strerror}) — mount the secret there, or fix "
                               "the path"))
        return ""
    if len(data) > MAX_SECRET_BYTES:
        problems.append((path, f"${{file:{name}}}: over {MAX_SECRET_BYTES // 1024} KiB, which is no secret — name the "
                               "file that holds the password or token"))
        return ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        problems.append((path, f"${{file:{name}}}: not UTF-8 text — a secret here is a password or token as text"))
        return ""
    text = text.removesuffix("\n").removesuffix("\r")
    if text:
        remember(text)
    return text


def _problem_lines(problems: list[tuple[list, str]], data: Any) -> list[str]:
    """A line per problem; one for the same problem in several places (a variable 16 cameras use)."""
    places: dict[str, list[str]] = {}
    for path, problem in problems:
        places.setdefault(problem, []).append(_where(path, data))
    lines = []
    for problem, where in places.items():
        more = len(where) - 1
        also = f" and {more} more place{'s' if more > 1 else ''}" if more else ""
        lines.append(f"{where[0]}{also}: {problem}")
    return lines


_SOURCE_LINE = re.compile(r"^sources\[(\d+)\](\S*) \((?:source ([^,()]+), )?line (\d+)\): (.*)$")


def _shared_lines(lines: list[str]) -> list[str]:
    """The same problem of several sources from one YAML line (a YAML anchor the cameras merge)
    as one line naming them all, not one per camera (found probing as a home-lab NVR user)."""
    groups: dict[tuple[str, str, str], list[tuple[int, str | None]]] = {}
    for line in lines:
        if match := _SOURCE_LINE.match(line):
            index, rest, name, number, problem = match.groups()
            groups.setdefault((rest, number, problem), []).append((int(index), name))
    out, said = [], set()
    for line in lines:
        match = _SOURCE_LINE.match(line)
        key = match and match.group(2, 4, 5)
        if not match or len(groups[key]) == 1:
            out.append(line)
            continue
        if key in said:
            continue
        said.add(key)
        rest, number, problem = key
        (index, name), *others = groups[key]
        also = ", ".join(other if other is not None else f"[{i}]" for i, other in others)
        named = f"source {name}, " if name is not None else ""
        out.append(f"sources[{index}]{rest} ({named}line {number}; also sources {also}, from that line): {problem}")
    return out


def _where(path: typing.Sequence, data: Any) -> str:
    """``path`` as the YAML reads (``sources[12].url``), with the source's name where there are
    several sources and it has one: ``sources[12].url (source cam13)``."""
    where = _format_path(path) or "config"
    if len(path) >= 2 and path[0] == "sources" and isinstance(path[1], int) and isinstance(data, dict):
        sources = data.get("sources")
        several = isinstance(sources, list) and len(sources) > 1
        entry = sources[path[1]] if several and path[1] < len(sources) else None
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            where += f" (source {entry['name']})"
    return where


def _format_path(parts: typing.Sequence) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def unnameable(path: Any) -> str:
    """Why a path cannot be opened here: this locale's encoding cannot spell it (found probing
    under a Latin-1 locale: "'latin-1' codec can't encode characters in position 31-32")."""
    return (f"{str(path)!r} cannot be named in this locale's encoding ({sys.getfilesystemencoding()}) — run segstream "
            f"under a UTF-8 locale (LC_ALL=C.UTF-8) or with PYTHONUTF8=1")


def _error_line(error: dict, data: Any) -> str:
    """One line for one pydantic error, with the path as the YAML reads: a value's own line breaks
    (a variable's value, a path) escaped, found probing bad input: they made lines that read as
    problems of their own ("segstream: error: model (line 5): ...")."""
    return _problem_line(error, data).replace("\r", "\\r").replace("\n", "\\n")


def _problem_line(error: dict, data: Any) -> str:
    loc, kind = error["loc"], error["type"]
    path: list = []
    node: Any = data
    for part in loc:
        # a discriminated union adds its tag (`file`, `synthetic`) to the location; the YAML has no such key
        if isinstance(node, dict) and part not in node and node.get("type") == part:
            continue
        path.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    where = _where(path, data)
    got = error.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed here: {', '.join(allowed)}"
        return f"{where}: unknown key — {hint}"
    if kind == "missing":
        return f"{where}: required key is missing"
    if kind == "union_tag_invalid":
        named = str(got.get("type")).strip().lower()
        alias = named if named in SOURCE_TYPES else SOURCE_TYPE_ALIASES.get(named)
        if isinstance(got, dict):  # what the entry holds tells look-alikes apart
            if alias == "file" and "url" in got:
                alias = "stream"
            elif alias == "snapshot" and "path" in got:
                alias = "images"
        hint = f"use type: {alias}" if alias else f"use {', '.join(SOURCE_TYPES)}"
        return f"{_where([*path, 'type'], data)}: unknown source type {got.get('type')!r} — {hint} (README, \"Cameras, streams and image folders\")"
    if kind == "union_tag_not_found":
        return f"{where}: missing 'type' — use {', '.join(SOURCE_TYPES)}"
    if kind == "value_error" and isinstance(error["ctx"]["error"], UnicodeEncodeError):
        return f"{where}: {unnameable(got)}"
    if kind == "value_error":
        return f"{where}: {error['ctx']['error']}"
    if kind == "too_short" and path == ["sources"]:
        return f"{where}: at least one source is needed"
    if path and path[-1] == "password":  # never echo it; YAML reads an unquoted 98765432 as a number
        hint = " — put the password in quotes" if kind == "string_type" else ""
        return f"{where}: {error['msg']}{hint}"
    if kind == "string_pattern_mismatch" and path and path[-1] == "name":
        return f"{where}: {got!r} is not a valid source name — {_NAME_RULE}"
    if kind == "string_pattern_mismatch" and path and path[-1] == "use":
        return (f"{where}: {got!r} names no factory — write module:attribute (e.g. my_package.stages:LineCrossing) "
                "or an installed entry point's name")
    if kind == "string_pattern_mismatch" and path and path[-1] == "device":
        return f"{where}: {got!r} is not a device — use auto, cpu, cuda or cuda:N"
    return f"{where}: {error['msg']} (got {got!r})"


def _allowed_keys(loc: tuple) -> list[str]:
    """Field names of the model at ``loc`` (which includes union tags, as pydantic reports it)."""
    tp: Any = PipelineConfig
    for part in loc:
        tp = _strip(tp)
        if typing.get_origin(tp) in (Union, types.UnionType):
            tp = next((m for m in typing.get_args(tp) if part in typing.get_args(m.model_fields["type"].annotation)), None)
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            tp = tp.model_fields[part].annotation
        elif typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
    tp = _strip(tp)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _strip(tp: Any) -> Any:
    """``X`` from ``Annotated[X, ...]`` and ``X | None``; tagged unions stay unions."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
        elif typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = members[0] if len(members) == 1 else Union[tuple(members)]
        else:
            return tp
