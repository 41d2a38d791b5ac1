"""``segstream batch``: every frame of many video files, resumable, on this machine or on Ray.

The videos come from the command line (files, folders, globs, list files). Each video is one
source of the ordinary runtime (``engine: local``): ``batch.concurrency`` of them decode at once
and share the model's batches, with back-pressure, so no frame is dropped. What each video
yields is written aside and moved into place when its last frame is written
(``connectors/video_outputs.py``), and only then is the video recorded as done in
``<output>/manifest.jsonl``. A run started again skips what the manifest lists as done (unless
the file changed since), skips what failed (unless ``--retry-failed``), and does the rest.

SIGINT or SIGTERM stops starting videos and lets the ones in progress finish; a second one stops
at once, and the videos in progress are done again by the next run. A video that cannot be
decoded is recorded as failed, with the reason, and the others go on.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import glob
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shlex
import socket
import sys
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO
from urllib.parse import unquote, urlsplit

from tqdm import tqdm

from segstream.connectors.errors import ConfigError, SegstreamError, SinkError
from segstream.connectors.frames import Frame
from segstream.connectors.output_files import check_output_dir, open_output, replace_synced
from segstream.connectors.redaction import mask_userinfo, remember, scrub
from segstream.connectors.redis_wire import parse_json
from segstream.connectors.sink import SINK_DROPS
from segstream.connectors.terminal import bar_shape, bars_drawn, printable, span
from segstream.connectors.text_files import STDIN, read_saved_text, standard_input, streamed
from segstream.connectors.urls import redact_url, url_identity, url_scheme, url_secrets
from segstream.connectors.video_outputs import VideoOutputs, clear_partial
from segstream.models.label_sets import LabelSet
from segstream.models.results import Event, FrameResult
from segstream.pipeline.config import (
    BatchPipelineConfig,
    PipelineConfig,
    apply_override,
    interpolate,
    validate_config,
)
from segstream.pipeline.metrics import MODEL_NONFINITE, RunMetrics, decode_thread
from segstream.pipeline.source_states import first_frame

log = logging.getLogger(__name__)

LIST_SUFFIXES = (".txt", ".list", ".lst")
MANIFEST = "manifest.jsonl"
BATCH_PANOPTIC = "panoptic_batch.json"  # as connectors.coco_panoptic.BATCH_PANOPTIC_NAME (not imported: cv2)
REDIS_MARKS = ".redis-marks.json"
# Videos per runtime: each video is a source with its decode thread, so an archive of thousands
# runs as a sequence of runtimes over groups of videos that share one warm model.
GROUP_SIZE = 64
MAX_ID = 200  # as config.SourceName's max_length
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# Letters NFKD does not take apart into an ASCII letter and marks, spelled in ASCII (İ and é it does)
_SPELLED = str.maketrans({"ı": "i", "ß": "ss", "ẞ": "SS", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o",
                          "Ø": "O", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "þ": "th", "Þ": "Th"})


# --- what to process ------------------------------------------------------------------------


@dataclass(slots=True)
class VideoJob:
    """One video of a batch: its file, the id its outputs and stream are named by, its number
    (its COCO image ids), and what its container says about it (``frames`` may be None when it
    does not say).

    A video read over http(s) has its ``url`` (with its query: a presigned URL's signature, never
    written or printed) and, as ``path``, the URL's path; its ``size``, ``mtime_ns`` and ``etag``
    are what its server says (None where it says nothing)."""

    path: Path
    id: str
    number: int = 0
    size: int | None = 0
    mtime_ns: int | None = 0
    frames: int | None = None
    fps: float = 25.0
    url: str = ""
    etag: str | None = None

    @property
    def key(self) -> str:
        """What the manifest knows the video by: a URL's identity (``url_identity``: without its
        signature, so signed again it is the same video), a path with a name shaped like a URL's
        ``user:password@`` masked, as everything batch writes or prints is."""
        return url_identity(self.url) if self.url else mask_userinfo(str(self.path))

    @property
    def source(self) -> str:
        """What is opened to read it: the file's path, or the whole URL."""
        return self.url or str(self.path)

    @property
    def name(self) -> str:
        """Its file name, as the outputs name it (COCO ``file_name``)."""
        return self.path.name if self.url else mask_userinfo(self.path.name)  # a URL's: unquoted once, by _job

    def told(self, text: str) -> str:
        """``text`` (a reason it failed) with its URL as ``key``: not even the signature's redacted parameters."""
        return text.replace(redact_url(self.url), self.key).replace(self.url, self.key) if self.url else text

    def unchanged(self, record: dict) -> bool:
        """Whether the file is the one ``record`` (its manifest line) was made from: a file by its
        size and time; a URL by what its server says (ETag, length, time), each compared where
        both the record and the server have it, so a server that says nothing says unchanged."""
        if not self.url:
            return (record.get("size"), record.get("mtime_ns")) == (self.size, self.mtime_ns)
        return all(record.get(k) is None or now is None or record.get(k) == now
                   for k, now in (("etag", self.etag), ("size", self.size), ("mtime_ns", self.mtime_ns)))


@dataclass(slots=True)
class VideoOutcome:
    """What became of one video: ``done``, ``failed`` (``reason`` says why), ``skipped`` (done or
    failed in an earlier run) or ``stopped`` (the run ended first; it is redone next time)."""

    job: VideoJob
    status: str
    frames: int = 0
    decode_errors: int = 0
    seconds: float = 0.0
    reason: str = ""
    outputs: list[str] = field(default_factory=list)
    frames_missing: int = 0  # about how many frames a damaged or truncated file lacks
    damage: str = ""  # and why
    video_stream: str = ""  # the video stream read, ``#0 320x240 h264`` ("": the file never opened)
    other_video_streams: list[str] = field(default_factory=list)  # the file's others, not read

    @property
    def note(self) -> str:
        """What the summary table says of it."""
        if self.status == "failed":
            return self.reason
        notes = [f"{self.decode_errors} decode errors"] if self.decode_errors else []
        notes += [f"damaged: {self.damage}"] if self.damage else []
        if self.other_video_streams:
            notes.append(f"read video stream {self.video_stream}, not {', '.join(self.other_video_streams)}")
        return "; ".join(notes)


def find_videos(inputs: Sequence[str], extensions: Iterable[str],
                outputs: Iterable[Path | str] = ()) -> tuple[list[Path | str], list[str]]:
    """The videos ``inputs`` name (files, and http(s) URLs as given), in order without repeats,
    and a warning per input that named none. An input is a file, an http(s) URL of a video file
    (a presigned one too: its secrets are remembered, so no line prints them), a folder (searched
    recursively for ``extensions``), a glob, or a list file (``@FILE``, ``@-`` standard input, or
    a .txt/.list/.lst file: one input per line, ``#`` comments, relative paths relative to the
    list file, of standard input or a pipe to the working directory; UTF-8, or
    UTF-16 with its byte-order mark, as Windows editors save it). Two URLs
    of one file (signed twice) are one video. A URL of another scheme (a stream) is refused.
    A folder's or a glob's search leaves out hidden files and folders (a Mac's ``._clip.mov``
    beside each clip on a USB stick is no video) and what lies under ``outputs`` (the batch's own
    folders: a batch writing into the folder it reads took its overlays as new videos on every
    rerun, found probing); a file named on its own is taken as named. A folder's search follows
    links to folders (each folder once: a link to one above it would loop), and takes a broken
    link of a video's extension as a video that fails, as a missing file named on its own does;
    a warning says how many files of other extensions it left out, and which folders it could
    not read."""
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    written = [Path(folder).expanduser().resolve() for folder in outputs]

    def searched(candidates: Iterable[Path], top: Path) -> list[Path]:
        """The files of a folder's or glob's search that may be inputs, and broken links (found
        probing: dropped without a word), in natural order."""
        kept = []
        for candidate in candidates:
            # a pipe or device named as a video fails as one named on its own does (found probing: left out unsaid)
            if candidate.is_dir() or not (candidate.exists() or candidate.is_symlink()):
                continue
            try:
                below = candidate.relative_to(top).parts
            except ValueError:
                below = (candidate.name,)
            if any(part.startswith(".") for part in below):
                continue
            real = candidate.resolve()
            if any(real.is_relative_to(folder) for folder in written):
                continue
            kept.append(candidate)
        return sorted(kept, key=_natural)

    found: dict[Path | str, None] = {}
    urls: set[str] = set()  # the identities of the URLs found
    warnings = []

    def add(item: str, base: Path | None) -> None:
        listed = item.startswith("@")
        text = item[1:] if listed else item
        if _URL.match(text) and url_scheme(text) in ("http", "https") and not listed:
            remember(url_secrets(text))
            if (identity := url_identity(text)) not in urls:
                urls.add(identity)
                found.setdefault(text)
            return
        if _URL.match(text):  # as a path it would be a missing file, its password in the manifest
            raise ConfigError(
                f"'{redact_url(text, keep_user=True)}' is a URL, and segstream batch takes video files, http(s) URLs "
                "of video files, folders, globs and list files — process a stream with `segstream run` (a source "
                "of type: stream)"
            )
        path = Path(text).expanduser()
        if base is not None and not path.is_absolute() and not (listed and text == STDIN):
            path = base / path
        if listed or (path.is_file() and path.suffix.lower() in LIST_SUFFIXES):
            try:
                lines = read_saved_text(path).splitlines()
            except OSError as error:
                raise ConfigError(f"cannot read the list file '{path}': {error.strerror}") from None
            except ValueError as error:
                raise ConfigError(f"the list file {error}") from None
            for line in lines:  # (a list from standard input, `@-`, or a pipe: relative to the working directory)
                if (line := line.strip()) and not line.startswith("#"):
                    add(line, None if streamed(path) else path.parent)
        elif path.is_dir():
            unreadable: list[Path] = []
            files = list(_walk(path, unreadable))
            videos = searched((p for p in files if p.suffix.lower() in suffixes), path)
            if unreadable:
                warnings.append(f"folder '{path}': {len(unreadable)} folder{'s' if len(unreadable) != 1 else ''} could "
                                f"not be read, their videos left out: {_named([str(f) for f in unreadable], 3)}")
            left = searched((p for p in files if p.suffix.lower() not in suffixes), path)
            if dangling := [p for p in left if not p.exists()]:  # (one of a video's extension is a video that fails)
                warnings.append(f"folder '{path}': {len(dangling)} broken link{'s' if len(dangling) != 1 else ''} left "
                                f"out: {_named([f'{p} -> {os.readlink(p)}' for p in dangling], 3)}")
            if not videos:
                warnings.append(f"folder '{path}' holds no video files ({', '.join(sorted(suffixes))})"
                                + _pictures_hint(path))
            elif others := Counter(p.suffix.lower() or "no extension" for p in left if p.exists()):
                # found probing: a camera trap's stills beside its clips were left out without a word
                n, kinds = sum(others.values()), [f"{kind} {k}" for kind, k in others.most_common()]
                warnings.append(f"folder '{path}': {n} file{'s' if n != 1 else ''} of other extensions left out "
                                f"({_named(kinds, 5)}): batch.extensions takes {', '.join(sorted(suffixes))} — "
                                "--set 'batch.extensions=[...]' names the ones to take (a picture is a video of "
                                "one frame)")
            for video in videos:
                found.setdefault(_as_found(video))
        elif glob.has_magic(str(path)):
            top = Path(*itertools.takewhile(lambda part: not glob.has_magic(part), path.parts))
            matches = searched((Path(p) for p in glob.glob(str(path), recursive=True)), top)
            if not matches:
                warnings.append(f"'{text}' matches no file")
            for match in matches:
                found.setdefault(_as_found(match))
        else:
            # a missing file is a video that fails (reported with the others), not a reason to stop
            found.setdefault(_as_found(path))

    for item in inputs:
        add(item, None)
    return list(found), warnings


def _as_found(path: Path) -> Path:
    """A video's path as the batch knows it: resolved, links and all; a missing file's (a broken
    link's too: its own path, not where it pointed) made absolute only."""
    return path.resolve() if path.exists() else Path(os.path.abspath(path))


def _walk(top: Path, unreadable: list[Path]) -> Iterator[Path]:
    """What is under ``top`` but folders and what is under hidden folders, following links to
    folders, each folder once (a link to a folder above it would loop); the folders that cannot
    be listed are added to ``unreadable``."""
    seen: set[tuple[int, int]] = set()
    folders = [top]
    while folders:
        folder = folders.pop()
        try:
            info = folder.stat()
            if (info.st_dev, info.st_ino) in seen:
                continue
            seen.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError:
            unreadable.append(folder)
            continue
        for entry in entries:
            try:
                is_folder = entry.is_dir()  # a link's target's
            except OSError:
                is_folder = False
            if not is_folder:
                yield folder / entry.name
            elif not entry.name.startswith("."):
                folders.append(folder / entry.name)


def _output_folders(cfg: PipelineConfig) -> list[str]:
    """The folders a batch writes videos into: never searched for inputs."""
    return [cfg.batch.output] + [sink.dir for sink in (cfg.sinks.files, cfg.sinks.preview) if sink.enabled]


def _pictures_hint(folder: Path) -> str:
    """For a folder of pictures: how to segment them (found probing: batch said only "no video files")."""
    from segstream.connectors.image_source import IMAGE_SUFFIXES

    found = Counter(p.suffix.lower() for p in _walk(folder, []) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        return ""
    n, kinds = sum(found.values()), sorted(found)
    return (f" but {n} picture{'s' if n != 1 else ''} ({', '.join(kinds)}): segment each as a video of one frame "
            f"with --set 'batch.extensions=[{','.join(kinds)}]', or all in order as one source with `segstream run "
            f"configs/image_folder.yaml --set {shlex.quote(f'sources.0.path={folder.absolute()}')}` (a source of type: images)")


def _natural(path: Path) -> list:
    """Sort key: clip2 before clip10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(path))]


def plan(paths: Sequence[Path | str], taken: dict[str, str] | None = None,
         numbers: dict[str, int] | None = None) -> list[VideoJob]:
    """A job per video, each with an id that is a valid source name, unique in this batch and
    not used by another video of the manifest (``taken``: id -> video path), and a number not
    used by another (``numbers``: video path -> number; new videos take the lowest free ones). A
    video listed in the manifest keeps its id and number. A new video's id is the shortest ending
    of its path (``_id_parts``) that no other video of the batch or the manifest has as an
    ending, ignoring case (output folders may be on a filesystem that does): the file's stem,
    else its parent folders' names prepended (``b__day1``) until it names this video alone,
    whatever the order the videos are listed in. Videos whose paths make the same parts at every
    depth (names alike but for case, or characters an id cannot spell) take a short hash of their
    path too. A URL's (an http(s) one, a str in ``paths``) is its path's, with its folders and
    host as the parent folders."""
    taken = dict(taken or {})
    numbers = dict(numbers or {})
    used = set(numbers.values())
    free = (n for n in itertools.count(1) if n not in used)  # a resumed batch numbers as an uninterrupted one
    owned = {path: vid for vid, path in taken.items()}
    jobs = [_job(path) for path in paths]
    # the id names folders and streams: no password in it; the manifest's other videos count as others too
    known = {job.key: _named_path(job) for job in jobs}
    for key in owned:
        known.setdefault(key, _named_path(_job(key) if _URL.match(key) else VideoJob(Path(key), "")))
    parts = _id_parts(known)
    endings = Counter(ending for named in parts.values() for ending in {e.lower() for e in _endings(named)})
    alike = Counter(tuple(part.lower() for part in named) for named in parts.values())
    folded = {vid.lower() for vid in taken}  # ids are ASCII
    for job in jobs:
        key = job.key
        vid = owned.get(key)
        if vid is None:
            mine = parts[key]
            twins = alike[tuple(part.lower() for part in mine)]  # itself among them
            hashed = f"-{_short_hash(key if job.url else job.source)}"
            suffix = hashed if twins > 1 else ""
            vid = next((ending + suffix for ending in _endings(mine)
                        if endings[ending.lower()] == twins and (ending + suffix).lower() not in folded),
                       mine[-1] + hashed)  # (each ending an id the manifest gave another video)
            if len(vid) > MAX_ID:  # a source name's most: its files' names must fit a file name
                vid = vid[len(vid) - MAX_ID + len(hashed):].lstrip("_.-") + hashed
            taken[vid] = key
            folded.add(vid.lower())
        job.id = vid
        number = numbers.get(key)
        job.number = next(free) if number is None else number
    return jobs


def _id_parts(named: dict[str, PurePosixPath | Path]) -> dict[str, list[str]]:
    """The parts of each video's id (``plan``), by its key: its folders' names below the root and
    its stem, or its stem and extension (``day1_mov``, ``day1_mp4``) where its folder holds another
    video of that stem (but for case), unless their names differ only in case (``a.MP4``, ``a.mp4``:
    no extension tells those apart); each spelled in ASCII (``_id_part``)."""
    stems = Counter((path.parent, path.stem.casefold()) for path in named.values())
    names = Counter((path.parent, path.name.casefold()) for path in named.values())
    parts = {}
    for key, path in named.items():
        alone = stems[path.parent, path.stem.casefold()] == 1 or names[path.parent, path.name.casefold()] > 1
        name = path.stem if alone else f"{path.stem}_{path.suffix.lstrip('.')}"
        parts[key] = [_id_part(part) for part in (*path.parent.parts[1:], name)]
    return parts


def _endings(parts: Sequence[str]) -> list[str]:
    """The ids ``parts`` can make, shortest first: ``day1``, ``b__day1``, ``a__b__day1``."""
    return ["__".join(parts[-depth:]) for depth in range(1, len(parts) + 1)]


def _id_part(name: str) -> str:
    """A file's or folder's name as a part of an id, a source name (ASCII letters, digits, '_',
    '.', '-'): its letters spelled in ASCII where they can be (Kamera Süd: ``Kamera_Sud``,
    İstanbul ı: ``Istanbul_i``), and where characters could not be kept (摄像头1), what is left
    with a short hash of the name (``1-<hash>``; ``video-<hash>`` for none left), so that two
    such names never make one id. The hash is of the name in NFC: macOS's NFD names give the same.
    A hidden name keeps a ``_`` for its leading dot (an id never starts with one): a Mac's
    ``._IMAG0004`` beside ``IMAG0004`` is ``_IMAG0004``."""
    name = unicodedata.normalize("NFC", name)
    spelled = "".join(c for c in unicodedata.normalize("NFKD", name.translate(_SPELLED)) if not unicodedata.combining(c))
    part = ("_" if name.startswith(".") else "") + (_SAFE.sub("_", spelled).strip("_.") or "video")
    return part if spelled.isascii() else f"{part}-{_short_hash(name)}"


def _short_hash(text: str) -> str:
    """8 hex digits of ``text``'s SHA-1 (a file name not in UTF-8, read with surrogate escapes,
    hashes its own bytes: such a path was a traceback)."""
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _job(path: Path | str) -> VideoJob:
    """A job of a file (its size and time now; -1 when it is missing) or a URL (``size``,
    ``mtime_ns`` and ``etag`` unknown until its server is asked: ``ask_servers``)."""
    if isinstance(path, str):
        # the path's last name (https://host/ alone: "video")
        return VideoJob(Path(unquote(urlsplit(path).path).rstrip("/") or "/video"), "", url=path, size=None,
                        mtime_ns=None)
    try:
        stat = path.stat()
        size, mtime = stat.st_size, stat.st_mtime_ns
    except OSError:
        size, mtime = -1, -1
    return VideoJob(path, "", size=size, mtime_ns=mtime)


def _named_path(job: VideoJob) -> PurePosixPath | Path:
    """The path a video's id is made from: a file's (masked), a URL's under its host."""
    if not job.url:
        return Path(job.key)
    parts = urlsplit(job.url)
    return PurePosixPath("/", parts.hostname or "host", *job.path.parts[1:])


def ask_servers(jobs: Sequence[VideoJob], timeout_s: float, workers: int = 8) -> None:
    """Fill in the version (ETag, length, time) of each URL's file, as its server says it, a few
    servers asked at once. A server that refuses (an expired signature: 403) or is away leaves
    them unknown, which compares as unchanged: the video is read only if it is not done."""
    from concurrent.futures import ThreadPoolExecutor

    from segstream.connectors.remote_files import remote_version

    remote = [job for job in jobs if job.url]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="http-version") as pool:
        for job, version in zip(remote, pool.map(lambda job: remote_version(job.url, timeout_s), remote)):
            job.etag, job.size, job.mtime_ns = version.etag, version.size, version.mtime_ns
            if version.problem:
                log.debug("%s: its server did not say its version (%s)", job.key, version.problem)


def probe(job: VideoJob, max_fps: float | None = None) -> None:
    """Fill in the frame count and rate the video's container states (for progress and ETA):
    with ``max_fps`` below its rate, the frames that go on to the model."""
    import av

    from segstream.connectors.av_input import video_stream
    from segstream.connectors.source import special_file

    # a FIFO would hold the open until a writer comes: its run says why
    if not job.url and special_file(job.path) is not None:
        return
    try:
        with av.open(job.source, timeout=(5.0, 5.0)) as container:
            stream = video_stream(container, job.key)
            rate = stream.average_rate or stream.guessed_rate
            job.fps = float(rate) if rate else 25.0
            if stream.frames:
                job.frames = int(stream.frames)
            elif stream.duration and stream.time_base:
                job.frames = math.ceil(float(stream.duration * stream.time_base) * job.fps)
            elif container.duration:
                job.frames = math.ceil(container.duration / 1_000_000 * job.fps)
            if job.frames and max_fps and max_fps < job.fps:
                job.frames = math.ceil(job.frames * max_fps / job.fps)
    except (OSError, SegstreamError, av.FFmpegError):
        pass  # the run reports why it cannot be decoded


# --- the manifest ----------------------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, dict]:
    """The newest line of each video in the manifest at ``path`` (``OSError`` if unreadable)."""
    records = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            records[record["video"]] = record
        except (ValueError, RecursionError, KeyError, TypeError):  # (a line nested too deep: not a record either)
            continue
    return records


class Manifest:
    """``manifest.jsonl``: one line per video that ended (done or failed), appended and synced
    as each ends, so it survives a killed run; on opening and closing it is rewritten with only
    the newest line of each video. A half-written last line (a crash mid-append) is ignored."""

    def __init__(self, path: str | Path, settings: dict | None = None):
        self.path = Path(path)
        self.settings = settings  # what decides a video's outputs (``output_settings``), kept with each
        self.made_by: dict | None = None  # the run and software that made them (``made_by``), kept with each
        self.records: dict[str, dict] = {}
        self._lock = threading.Lock()
        try:
            if self.path.is_file() and not self.path.is_symlink():
                self.records = read_manifest(self.path)
                self._compact()
            self._file: IO[str] = open_output(self.path, "a", encoding="utf-8")
        except OSError as error:
            raise SinkError(f"cannot write '{error.filename or self.path}': {error.strerror or error}") from None

    def _compact(self) -> None:
        """Rewrite the manifest with the newest line of each video. When the disk is full the
        manifest stays as it is, which means the same (its last line of a video counts), and the
        half-written copy is removed; any other error (a link where the copy goes) raises."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            f = open_output(tmp, "w", encoding="utf-8")
        except OSError as error:
            self._not_compacted(error)
            return
        try:
            with f:
                f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records.values()))
            replace_synced(tmp, self.path)
        except OSError as error:
            with contextlib.suppress(OSError):  # ours, cut short
                os.unlink(tmp)
            self._not_compacted(error)

    def _not_compacted(self, error: OSError) -> None:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            raise SinkError(f"cannot write '{error.filename or self.path}': {error.strerror or error}") from None
        log.warning("cannot rewrite '%s' without its older lines (%s): it is kept as it is, which reads the same "
                    "(the last line of each video counts)", self.path, error.strerror or error)

    def ids(self) -> dict[str, str]:
        return {record["id"]: video for video, record in self.records.items() if "id" in record}

    def numbers(self) -> dict[str, int]:
        return {video: record["number"] for video, record in self.records.items()
                if isinstance(record.get("number"), int)}

    def done(self, job: VideoJob, root: Path) -> bool:
        """Done in an earlier run, the file unchanged since, its outputs still there and made
        with the same settings (a record from before settings were kept is taken as made so)."""
        record = self.records.get(job.key)
        return (
            record is not None and record.get("status") == "done" and job.unchanged(record)
            and (root / record.get("id", "")).is_dir()
            and not self.changes(record)
        )

    def changes(self, record: dict) -> dict[str, str]:
        """How this run's settings differ from those ``record`` was made with, by setting
        (``settings_changes``); none for a record from before settings were kept."""
        made = record.get("settings")
        if made is None or self.settings is None:
            return {}
        return settings_changes(made, self.settings)

    def failed(self, job: VideoJob) -> dict | None:
        record = self.records.get(job.key)
        if record is None or record.get("status") != "failed":
            return None
        if job.url:  # tried again when its server says otherwise than then (a 404 then, there now)
            then = (record.get("etag"), record.get("size"), record.get("mtime_ns"))
            return record if then == (job.etag, job.size, job.mtime_ns) else None
        if record.get("size") == job.size:
            return record
        return None

    def record(self, outcome: VideoOutcome) -> None:
        job = outcome.job
        record = {
            "video": job.key, "id": job.id, "number": job.number, "status": outcome.status,
            "frames": outcome.frames,
            "decode_errors": outcome.decode_errors, "seconds": round(outcome.seconds, 3),
            "reason": scrub(outcome.reason), "frames_missing": outcome.frames_missing, "damage": scrub(outcome.damage),
            "video_stream": outcome.video_stream, "other_video_streams": outcome.other_video_streams,
            "outputs": outcome.outputs, "size": job.size, "mtime_ns": job.mtime_ns,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if job.url:
            record["etag"] = job.etag
        if self.settings is not None:
            record["settings"] = self.settings
        if self.made_by is not None:
            record["made_by"] = self.made_by
        with self._lock:
            self._file.write(json.dumps(record, sort_keys=True) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
            self.records[record["video"]] = record

    def close(self) -> None:
        self._file.close()
        self._compact()


class RedisMarks:
    """``.redis-marks.json``: where each video's Redis streams (frames and events) ended before
    the batch of this output folder first published it, kept for as long as the folder, and the
    runs of its batches that published (``runs``, under ``":runs"``). Every video published again
    is first cut back to its mark, whatever became of the earlier attempt (killed midway,
    finished but never taken by Redis, or finished and done again because its file or the
    settings changed): what the folder's batches published of it is deleted, so the stream holds
    each frame once, from the latest attempt, as the video's folder holds its latest outputs.
    (Marks dropped when their video finished went stale when a run was aborted before saving
    them: one video done again lost its earlier copy while the others kept theirs.) Entries of
    other writers are kept and said (found probing as an attacker: a batch whose video was named
    as a live camera deleted the camera's entries from its stream). ``manifest_runs``: the runs
    the manifest names, the folder's batches' before the marks named their runs (0.3.12 and older:
    the first run over such marks, ``legacy``, cuts back everything after them, as they were cut)."""

    RUNS = ":runs"  # (no video id has a colon)
    LEGACY = ":legacy"

    def __init__(self, path: Path, manifest_runs: Iterable[str] = ()):
        self.path = path
        self.marks: dict[str, dict[str, str]] = {}
        try:
            if path.is_file() and not path.is_symlink():
                self.marks = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # unreadable: nothing to cut back, as before marks were kept
            self.marks = {}
        if not isinstance(self.marks, dict):
            self.marks = {}
        runs = self.marks.pop(self.RUNS, None)
        self.runs = {run for run in (runs if isinstance(runs, list) else ()) if isinstance(run, str)}
        self.runs |= {run for run in manifest_runs if run}
        # marks an earlier release wrote (0.3.12 or before) name no runs: an attempt it killed midway is in no
        # manifest line, and its entries would stay twice (found probing an upgrade). Each of those videos is cut
        # back once as that release did, everything after its mark (the ones left kept under ":legacy" until
        # then: a run stopped before it reached them leaves them to the next); runs are named from now on.
        left = self.marks.pop(self.LEGACY, None) if runs is not None else list(self.marks)
        self.legacy: set[str] = {video for video in (left if isinstance(left, list) else ()) if isinstance(video, str)}

    def cut_back(self, client, patterns: Sequence[str], jobs: Sequence[VideoJob], run_id: str = "") -> None:
        """Before ``jobs`` publish (in run ``run_id``): delete what an earlier run of the batch
        published to each of their streams after its mark, or mark where each of its streams
        (``patterns`` named by video) ends now if it has none yet."""
        import redis

        from segstream.connectors.redis_connection import error_summary
        from segstream.connectors.redis_wire import stream_name

        marked = bool(run_id) and run_id not in self.runs  # said before the run publishes anything
        self.runs |= {run_id} - {""}
        for job in jobs:
            mark = self.marks.get(job.id, {})
            streams = [stream_name(pattern, job.id) for pattern in patterns]
            try:
                legacy = job.id in self.legacy
                cut_back(client, job.id, mark, None if legacy else self.runs)
                if legacy:
                    self.legacy.discard(job.id)
                    marked = True
                ends = {stream: client.xrevrange(stream, count=1) for stream in streams if stream not in mark}
            except redis.RedisError as error:  # Redis away: the video's entries of an earlier run may stay twice
                log.warning("%s: cannot cut its Redis streams back to where the batch first began it (%s): entries "
                            "an earlier run published may be there twice", job.id, error_summary(error))
                continue
            for stream, end in ends.items():
                if end and _run_of(end[0][1]) not in self.runs:
                    log.warning("%s: %s holds entries of another writer already (its newest of run %s): the batch "
                                "adds the video's after them, and never deletes them — if that is a camera's or "
                                "another batch's, give this batch streams of its own (sinks.redis.stream, e.g. "
                                "batch:{source}:frames)", job.id, stream, _run_of(end[0][1]) or "unnamed")
            if ends:  # a new video, or streams a changed config names
                self.marks[job.id] = mark | {stream: _text(end[0][0]) if end else "0-0" for stream, end in ends.items()}
                marked = True
        if marked:
            self._save()

    def _save(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open_output(tmp, "w", encoding="utf-8") as f:
                legacy = {self.LEGACY: sorted(self.legacy)} if self.legacy else {}
                json.dump({**self.marks, self.RUNS: sorted(self.runs), **legacy}, f, sort_keys=True)
            replace_synced(tmp, self.path)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
                raise SinkError(f"cannot write '{error.filename or self.path}': {error.strerror or error}") from None
            with contextlib.suppress(OSError):  # ours, cut short
                os.unlink(tmp)
            # found in review: a full disk here was a traceback; without the marks a rerun cannot cut back
            log.warning("cannot save where the videos' Redis streams began in '%s' (%s): a video this run begins "
                        "may have its entries twice in Redis when it is published again", self.path,
                        error.strerror or error)


def manifest_runs(manifest: Manifest) -> set[str]:
    """The runs that made the videos of ``manifest`` (``made_by.run_id``)."""
    return {record["made_by"].get("run_id", "") for record in manifest.records.values()
            if isinstance(record.get("made_by"), dict)}


def cut_back(client, video_id: str, marks: dict[str, str], runs: Collection[str] | None,
             say_kept: bool = True) -> None:
    """Delete what ``runs`` published to each stream after its mark (``{stream: entry ID}``; None:
    every entry after it); the entries of other writers there are kept, and said (``say_kept``)."""
    for stream, mark in marks.items():
        removed = kept = 0
        start = f"({mark}"
        while entries := client.xrange(stream, start, "+", count=1000):
            ours = [entry_id for entry_id, fields in entries if runs is None or _run_of(fields) in runs]
            kept += len(entries) - len(ours)
            if ours:
                removed += client.xdel(stream, *ours)
            start = f"({_text(entries[-1][0])}"
        if removed and runs is None:  # (0.3.12's marks: whoever wrote them; said, as a camera's may be among them)
            log.warning("%s: %d entries after where an earlier release's batch began the video removed from %s "
                        "(its marks name no runs: everything after them, as it cut back): it is published again "
                        "from its first frame", video_id, removed, stream)
        elif removed:
            log.info("%s: %d entries an earlier attempt published to %s removed: it is published again from "
                     "its first frame", video_id, removed, stream)
        if kept and say_kept:
            log.warning("%s: %s holds %d entries another writer added since the batch began the video: kept (a "
                        "camera's or another batch's?) — give this batch streams of its own (sinks.redis.stream, "
                        "e.g. batch:{source}:frames)", video_id, stream, kept)


def _run_of(fields: dict) -> str:
    """The ``run_id`` field of a stream entry read back ("" where it has none)."""
    value = fields.get(b"run_id", fields.get("run_id", b""))
    return _text(value)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@contextlib.contextmanager
def output_lock(root: Path) -> Iterator[None]:
    """One batch at a time per output folder (two would write the same videos' outputs)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        check_output_dir(root, "batch output folder")
        lock = open_output(root / ".lock", "a")
    except OSError as error:
        what = error.strerror or error
        if error.filename and Path(error.filename) != root:  # a folder above it, or its lock file
            what = f"'{error.filename}': {what}"
        raise ConfigError(
            f"cannot use '{root}' as the output folder ({what}) — give --out (or batch.output) "
            "a folder that can be created and written"
        ) from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another segstream batch{_holder(root / '.lock')} is writing to '{root}' — wait for it "
                              "or choose another --out") from None
        with contextlib.suppress(OSError):  # who holds it, for the next one's refusal (found probing a shared machine)
            lock.truncate(0)
            lock.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                   "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}) + "\n")
            lock.flush()
        yield


def _holder(lock: Path) -> str:
    """`` (pid 1234 on vm, since ...)``: the batch holding ``lock``, as it wrote there; "" unknown."""
    try:
        held = parse_json(lock.read_text(errors="replace")[:1000])
        return f" (pid {int(held['pid'])} on {printable(str(held['host']))}, since {printable(str(held['since']))})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


# --- progress --------------------------------------------------------------------------------


class BatchProgress:
    """A bar for the whole batch (frames, fps, ETA from the containers' frame counts) and one per
    video in progress; a log line as each video ends. Without bars (not a terminal, ``TERM=dumb``,
    JSON logs) unless ``enabled`` is False, a line every ``every_s`` seconds says the same (the
    batch's log said nothing of a long video until its end, found probing). Called from one
    thread at a time."""

    def __init__(self, jobs: Sequence[VideoJob], enabled: bool | None, every_s: float = 2.0, drawn: bool | None = None):
        self.jobs = {job.id: job for job in jobs}
        self.videos = len(jobs)
        self.ended = 0
        self.statuses: Counter[str] = Counter()  # of the videos that ended, by status
        drawn = bars_drawn() if drawn is None else drawn  # (the caller's: JSON logs draw none)
        self.disabled = not drawn if enabled is None else not enabled
        # the frames the containers state, corrected as videos end; an estimate only while every
        # video left states its own (else its percentage ran ahead)
        self.total = sum(job.frames or 0 for job in jobs)
        self.uncounted = {job.id for job in jobs if not job.frames}
        self.every_s = every_s if enabled is None and self.disabled else None
        self.frames = 0
        self._began = self._said = time.monotonic()
        self.overall = tqdm(total=self.total or None, unit="frame", desc=self._description(), disable=self.disabled,
                            smoothing=0.05, position=0, **bar_shape())
        self.bars: dict[str, tqdm] = {}

    def _description(self) -> str:
        return f"batch {self.ended}/{self.videos} videos"

    def advance(self, video_id: str, frames: int = 1) -> None:
        bar = self.bars.get(video_id)
        if bar is None:
            job = self.jobs.get(video_id)
            bar = self.bars[video_id] = tqdm(
                total=job.frames if job else None, unit="frame", desc=video_id[-28:], leave=False,
                disable=self.disabled, **bar_shape(),
            )
        bar.update(frames)
        self.overall.update(frames)
        self.frames += frames
        if self.every_s is not None and (now := time.monotonic()) - self._said >= self.every_s:
            self._said = now
            log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        """``batch: 3/200 videos ended, 1234/5678 frames (22%), 27.5 frames/s, about 3 min 20 s left``."""
        rate = self.frames / (now - self._began) if now > self._began else 0.0
        said = f"batch: {self.ended}/{self.videos} videos ended, {self.frames}"
        if not self.uncounted and self.total and self.total >= self.frames:
            said += f"/{self.total} frames ({100 * self.frames // self.total}%), {rate:.1f} frames/s"
            if rate > 0:
                said += f", about {span((self.total - self.frames) / rate)} left"
            return said
        return f"{said} frames, {rate:.1f} frames/s"

    def ended_video(self, outcome: VideoOutcome) -> None:
        bar = self.bars.pop(outcome.job.id, None)
        if bar is not None:
            bar.close()
        claimed = self.jobs[outcome.job.id].frames if outcome.job.id in self.jobs else None
        # the total counts what the video gave, not what its container claimed (a truncated file's end at 94%)
        self.total += outcome.frames - (claimed or 0)
        self.uncounted.discard(outcome.job.id)
        if self.overall.total:
            self.overall.total = self.total
        self.ended += 1
        self.statuses[outcome.status] += 1
        self.overall.set_description(self._description(), refresh=False)
        if outcome.status == "done":
            fps = outcome.frames / outcome.seconds if outcome.seconds > 0 else 0.0
            log.info("%s: done, %d frame%s in %.1f s (%.1f fps)", outcome.job.id, outcome.frames,
                     "s" if outcome.frames != 1 else "", outcome.seconds, fps)
        elif outcome.status == "failed":
            log.warning("%s: failed: %s", outcome.job.id, outcome.reason)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.overall.close()


# --- the local engine ------------------------------------------------------------------------


class BatchVideoSource:
    """One video as an offline source of the runtime. It waits for one of the batch's decode
    slots before opening the file, so only ``concurrency`` videos decode at once, and never
    raises: a video that cannot be decoded ends with ``outcome`` failed and ``reason``, and the
    run goes on. ``outcome`` is set (done, failed or stopped) once no frame will follow."""

    live = False

    def __init__(self, job: VideoJob, batch_cfg, slots: threading.Semaphore, metrics: RunMetrics,
                 stopping: threading.Event):
        self.job = job
        self.name = job.id
        self.cfg = batch_cfg
        self.outcome: str | None = None
        self.reason = ""
        self.yielded = 0
        self.started: float | None = None
        self._slots = slots
        self._metrics = metrics
        self._stopping = stopping  # the batch takes no new videos
        self._closed = threading.Event()  # the runtime stops now
        self._lock = threading.Lock()
        self._inner = None
        self.decode_size = None  # handed to the file source (engine.resize_in_decoder)
        self.on_state = None  # set by the runtime: each video's states go to its events stream

    @property
    def decode_errors(self) -> int:
        return getattr(self._inner, "decode_errors", 0)

    @property
    def damage(self) -> tuple[int, str]:
        """About how many frames the file lacks, and why (``FileSource``'s judgment)."""
        return getattr(self._inner, "frames_missing", 0), getattr(self._inner, "damage", "")

    @property
    def streams(self) -> tuple[str, list[str]]:
        """The video stream read and the file's others, not read ("" and none: never opened)."""
        info = getattr(self._inner, "info", None)
        return (info.stream, list(info.other_streams)) if info is not None else ("", [])

    def frames(self) -> Iterator[Frame]:
        from segstream.connectors.file_source import FileSource

        beat = decode_thread(self.name)
        slot = False
        try:
            self._state("connecting", "waiting for a decode slot")
            self._metrics.beat(beat, idle="waiting for a decode slot")
            while not (slot := self._slots.acquire(timeout=0.1)):
                if self._closed.is_set() or self._stopping.is_set():
                    return
            if self._stopping.is_set():
                return
            self._metrics.beat(beat)
            self.started = time.monotonic()
            with self._lock:
                if self._closed.is_set():
                    return
                self._inner = FileSource(self.name, self.job.source, open_timeout_s=self.cfg.open_timeout_s,
                                         read_timeout_s=self.cfg.read_timeout_s, max_fps=self.cfg.max_fps,
                                         deinterlace=self.cfg.deinterlace)
                self._inner.shown = self.job.key  # what its messages name a URL by: not even its signature's parameter names
                self._inner.decode_size = self.decode_size
            with closing(self._inner.frames()) as frames:
                for frame in frames:
                    if not self.yielded:
                        self._state("streaming", *first_frame(self._inner, frame))
                    self.yielded += 1
                    yield frame
            if not self._closed.is_set():
                self.outcome = "done"
        except GeneratorExit:
            raise
        except SegstreamError as error:
            self.outcome, self.reason = "failed", str(error)
        except Exception as error:  # whatever FFmpeg or a broken file throws: this video fails, the batch goes on
            log.debug("%s failed", self.name, exc_info=True)
            self.outcome, self.reason = "failed", f"{type(error).__name__}: {error}"
        finally:
            if self.outcome is None:
                self.outcome = "stopped"
            status, reason = judge(self.job, self.outcome, self.yielded, self.reason)
            if status == "failed":  # the runtime holds a final state until the last result is out
                self._state("failed", reason)
            elif status == "done":
                self._state("ended", "end of input")
            else:
                self._state("ended", "stopped")
            if self._inner is not None:
                self._inner.close()
            if slot:
                self._slots.release()

    def _state(self, state: str, reason: str, data: dict | None = None) -> None:
        if self.on_state is not None:  # quiet: the batch reports each video's end itself
            self.on_state(state, reason, data or {}, quiet=True)

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            if self._inner is not None:
                self._inner.close()


def judge(job: VideoJob, status: str, frames: int, reason: str) -> tuple[str, str]:
    """A video that decoded to its end without a single frame has failed too. A reason names a
    URL as the manifest does (``VideoJob.told``)."""
    if status == "done" and frames == 0:
        return "failed", f"'{job.key}' has no decodable video frames"
    return status, job.told(reason)


class BatchSink:
    """The runtime's sink for a group of videos: writes each result to its video's outputs and,
    once a video's source has ended and its last result is written, commits or discards them
    and records the video in the manifest. Called from the runtime's sink thread (``close`` may
    also come from the main thread on an abort)."""

    name = "batch"

    def __init__(self, root: Path, sources: Sequence[BatchVideoSource], labels: LabelSet, cfg: PipelineConfig,
                 manifest: Manifest, progress: BatchProgress):
        self.root = root
        self.labels = labels
        self.cfg = cfg
        self.manifest = manifest
        self.progress = progress
        self.wants_images = cfg.batch.overlay or (cfg.batch.coco_panoptic and cfg.batch.coco_images)
        self.on_written = None
        self.outcomes: list[VideoOutcome] = []
        self._pending = {source.name: source for source in sources}
        self._outputs: dict[str, VideoOutputs] = {}
        self._ended: set[str] = set()  # videos the runtime has sent all of (results and end events)
        self._dropped: Counter[str] = Counter()  # frames of each video dropped after the model (no result)
        # when each video's first frame went into the model: its ``seconds`` run from there (from the
        # start of its decoding they held the time it waited behind other videos' frames: 200 clips of
        # 3 frames done in 46 s listed up to 14.4 s each, 1988 s in all, found probing)
        self._began: dict[str, float] = {}
        self._lock = threading.RLock()

    def _outputs_of(self, video_id: str) -> VideoOutputs:
        outputs = self._outputs.get(video_id)
        if outputs is None:
            job = self._pending[video_id].job
            batch = self.cfg.batch
            outputs = self._outputs[video_id] = VideoOutputs(
                self.root, video_id, self.labels, jsonl=batch.jsonl, coco_panoptic=batch.coco_panoptic,
                coco_images=batch.coco_images, overlay=batch.overlay, overlay_level=batch.overlay_level,
                number=job.number,
                mask_encoding=self.cfg.sinks.redis.mask_encoding, levels=self.cfg.sinks.redis.levels,
                video_name=job.name, video=job.key,
                fps_hint=job.fps,
            )
        return outputs

    def publish(self, result: FrameResult) -> None:
        with self._lock:
            self._outputs_of(result.source).write(result)
            self._began.setdefault(result.source, result.times.get("model_start", time.monotonic()))
            self.progress.advance(result.source)
            result.publish_ts = time.time()
            if self.on_written is not None:
                self.on_written([result])
            self._end_finished()

    def frame_dropped(self, source: str, index: int, reason: str) -> None:
        """A frame of the video the runtime dropped after the model (its outputs not finite): it
        has no result to write, and the video is failed for it once it ended."""
        with self._lock:
            self._dropped[source] += 1
            self._end_finished()

    def publish_event(self, event: Event) -> None:
        if event.kind == "state":  # for the sinks that stream (Redis); the files stay the same each run
            return
        with self._lock:
            if event.source in self._pending:
                self._outputs_of(event.source).write_event(event)

    def source_ended(self, source: str) -> None:
        """The video's last result and the events of its end (its tracks' ends) are written."""
        with self._lock:
            self._ended.add(source)
            self._end_finished()

    def poll(self) -> float | None:
        with self._lock:
            self._end_finished()
        return None

    def flush(self) -> None:
        self.poll()

    def close(self) -> None:
        """End what can be ended; what is left was stopped before its end."""
        with self._lock:
            self._end_finished()
            for video_id, source in list(self._pending.items()):
                self._end(video_id, source, "stopped", "")

    def _end_finished(self) -> None:
        for video_id, source in list(self._pending.items()):
            outputs = self._outputs.get(video_id)
            handled = (outputs.frames if outputs else 0) + self._dropped[video_id]
            if video_id in self._ended and source.outcome is not None and handled >= source.yielded:
                self._end(video_id, source, source.outcome, source.reason)

    def _end(self, video_id: str, source: BatchVideoSource, status: str, reason: str) -> None:
        del self._pending[video_id]
        outputs = self._outputs.pop(video_id, None)
        frames = outputs.frames if outputs else 0
        status, reason = judge(source.job, status, frames, reason)
        if (dropped := self._dropped.pop(video_id, 0)) and (status == "done" or frames == 0):
            # its outputs would lack those frames: not done, and not committed
            status, reason = "failed", (f"{dropped} frames dropped: the network's outputs for them held NaN or "
                                        f"infinity ({MODEL_NONFINITE}; the warning above says what to do)")
        began = self._began.pop(video_id, source.started)
        seconds = time.monotonic() - began if began is not None else 0.0
        outcome = VideoOutcome(source.job, status, frames, source.decode_errors, seconds, reason,
                               frames_missing=source.damage[0], damage=source.damage[1],
                               video_stream=source.streams[0], other_video_streams=source.streams[1])
        if status == "done":
            outcome.outputs = outputs.commit() if outputs else []
        elif outputs is not None:
            outputs.discard()
        if status in ("done", "failed"):
            self.manifest.record(outcome)
            self.progress.ended_video(outcome)
        self.outcomes.append(outcome)


class BatchControl:
    """Stops a batch: the first ``stop()`` starts no new video (the ones in progress finish);
    the signal handler turns a second signal into an abort."""

    def __init__(self):
        self.stopping = threading.Event()

    def stop(self) -> None:
        self.stopping.set()


def _extra_sinks(cfg: PipelineConfig) -> list:
    """The config's own sinks, besides the batch's files: Redis (only with a URL: an embedded
    Redis would vanish with the run), the files sink and the preview."""
    from segstream.pipeline.builders import build_sinks

    sinks_cfg = cfg.sinks
    if sinks_cfg.redis.enabled and sinks_cfg.redis.url is None:
        sinks_cfg = sinks_cfg.model_copy(update={"redis": sinks_cfg.redis.model_copy(update={"enabled": False})})
    # a folder given to a sink left off is said once (load_batch_config), not by each group or Ray task (a
    # task's config, written out whole, gave every default: it warned of folders the user never set)
    return build_sinks(sinks_cfg, tell_unused=False)


def run_local(cfg: PipelineConfig, jobs: Sequence[VideoJob], root: Path, manifest: Manifest,
              progress: BatchProgress, control: BatchControl, adapter=None, server=None,
              run_id: str = "") -> list[VideoOutcome]:
    """Process ``jobs`` with the runtime on this machine, a group of videos per runtime."""
    from segstream.connectors.redis_sink import RedisPublisher
    from segstream.pipeline.cli import WARM_UP_FRAME
    from segstream.pipeline.model_factory import build_segmenter
    from segstream.pipeline.runtime import Runtime
    from segstream.pipeline.tracking import tracking_stages

    if adapter is None:
        adapter = build_segmenter(cfg.model, batch_size=cfg.engine.batch_size)
    outcomes: list[VideoOutcome] = []
    warm_up: tuple[int, int] | None = WARM_UP_FRAME
    marks: RedisMarks | None = None
    for start in range(0, len(jobs), GROUP_SIZE):
        group = jobs[start : start + GROUP_SIZE]
        if control.stopping.is_set():
            outcomes += [VideoOutcome(job, "stopped") for job in group]
            continue
        metrics = RunMetrics()
        if server is not None:
            server.metrics = metrics  # per group: the scrape shows the videos in progress, not thousands
        slots = threading.Semaphore(cfg.batch.concurrency)
        sources = [BatchVideoSource(job, cfg.batch, slots, metrics, control.stopping) for job in group]
        sink = BatchSink(root, sources, adapter.labels, cfg, manifest, progress)
        extra = _extra_sinks(cfg)
        publisher = next((s for s in extra if isinstance(s, RedisPublisher)), None)
        if publisher is not None:
            marks = marks or RedisMarks(root / REDIS_MARKS, manifest_runs(manifest))
            marks.cut_back(publisher.client, (publisher.stream_pattern, publisher.events_pattern), group, run_id)
        runtime = Runtime.from_config(
            cfg, sources, adapter, [sink, *extra], queue_size=cfg.batch.queue_size, metrics=metrics,
            warm_up=warm_up, progress=None, run_id=run_id, stages=tracking_stages(cfg.tracking), publish_states=True,
            say_model=start == 0, oldest_first=True,
        )
        warm_up = None  # the model is warm from the first group on
        try:
            report = runtime.run()
        finally:
            sink.close()
            outcomes += sink.outcomes
        for outcome in sink.outcomes:
            lost = report.sources[outcome.job.id].dropped_by
            gone = publisher.frames_lost_of.get(outcome.job.id, 0) if publisher is not None else 0
            if outcome.status == "done" and (any(lost.get(reason) for reason in SINK_DROPS) or gone):
                outcome.status, outcome.reason = "failed", lost_after_taking(gone) if gone else undelivered_reason(lost)
                manifest.record(outcome)  # its files are whole, but a rerun must publish it again
                log.warning("%s: failed after all: %s", outcome.job.id, outcome.reason)  # said done before
    return outcomes


def output_settings(cfg: PipelineConfig) -> dict:
    """What decides what a video's outputs hold, as kept in the manifest: the model (its
    weights file's size, time and sha256, and the precision it computes in, ``auto`` resolved
    on this machine: the Ray engine resolves it where its model actors run first, see
    ``batch_ray.settle_model``), the tracker, the segment filters and what is written. Not the
    device, the engine's batching or the concurrency, which change nothing in them (measured in
    docs/BENCHMARKS.md)."""
    from segstream.connectors.checkpoints import file_sha256
    from segstream.pipeline.model_factory import resolve_device, resolve_precision, weights_read

    model = cfg.model.model_dump(mode="json", exclude={"device", "compile", "options"})
    # found probing reproducibility: "auto" was kept, which is bf16 on one machine and fp32 on another
    if cfg.model.precision == "auto":
        model["precision"] = resolve_precision(cfg.model.precision, resolve_device(cfg.model.device))
    if cfg.model.options:  # a plugin family's own settings may hold secrets: their digest only
        options = json.dumps(cfg.model.options, sort_keys=True, default=str).encode()
        model["options_sha256"] = hashlib.sha256(options).hexdigest()
    from segstream.pipeline.model_factory import check_preset

    preset = check_preset(cfg.model)  # the one that runs: a family-only section's is the family's, not the default
    model["preset"] = preset.name
    if model.get("task") is None:  # the preset's own: said as before the default was null
        model["task"] = preset.task
    # a model folder's weights file: retrained in place, it changes; the preset's own: a release may ship others
    if (weights := weights_read(cfg.model)) is not None:
        stat = weights.stat()
        # found probing reproducibility: other weights of the same size and time (cp -p, rsync -a) were taken
        # for the same; the digest tells
        model["checkpoint_file"] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                    "sha256": file_sha256(weights)}
    batch = cfg.batch
    outputs = {"jsonl": batch.jsonl, "coco_panoptic": batch.coco_panoptic, "overlay": batch.overlay,
               "mask_encoding": cfg.sinks.redis.mask_encoding, "resize_in_decoder": cfg.engine.resize_in_decoder}
    if not cfg.sinks.redis.levels:  # only when off: manifests from before the key stay matching
        outputs["levels"] = False
    if batch.max_fps:  # only when set: manifests from before the key stay matching every-frame runs
        outputs["max_fps"] = batch.max_fps
    if batch.coco_panoptic and batch.coco_images:  # the same
        outputs["coco_images"] = True
    if batch.overlay and batch.overlay_level is not None:  # the same
        outputs["overlay_level"] = batch.overlay_level
    settings = {"model": model, "tracking": cfg.tracking.model_dump(mode="json"), "outputs": outputs}
    if cfg.filters != type(cfg.filters)():  # only when set: manifests from before the key stay matching
        settings["filters"] = cfg.filters.model_dump(mode="json")  # found probing: a new min_score redid nothing
    return settings


def made_by(run_id: str, cfg: PipelineConfig, engine: str = "local") -> dict:
    """What a manifest line says made a video's outputs, beyond its settings: the run (its
    ``run_id`` is on what it published to Redis), the device it ran on (on Ray: as configured,
    the workers choose) and the software's versions."""
    import platform

    from segstream.pipeline.model_factory import resolve_device
    from segstream.pipeline.runtime import software_versions

    device = str(resolve_device(cfg.model.device)) if engine == "local" else f"{engine}: {cfg.model.device}"
    return {"run_id": run_id, "device": device, **software_versions(), "host": platform.node()}


_ABSENT = object()  # a key a record or this run's settings do not have
# Settings added since a release whose default does not do what that release did: a record
# without one matches only a value that does, and its note says what that was. A new setting
# whose default does what the releases before it did needs nothing here.
BEFORE_ADDED = {
    # 1e7dd33's tracker found a lost thing only where it should be, never anywhere: above 1 is never
    "tracking.reid_similarity": (lambda value: value > 1, "no re-identification then"),
}


@functools.cache
def _schema_defaults() -> dict[str, dict]:
    """The defaults of the settings' sections that mirror a schema, as ``output_settings`` keeps them."""
    from segstream.pipeline.config import FiltersConfig, ModelConfig, TrackingConfig

    return {"model": ModelConfig().model_dump(mode="json"), "tracking": TrackingConfig().model_dump(mode="json"),
            "filters": FiltersConfig().model_dump(mode="json")}


def settings_changes(made: dict, now: dict) -> dict[str, str]:
    """How the settings ``now`` differ from ``made`` (a manifest record's), by setting
    (``tracking.min_hits``): ``2 → 3``. A setting a record does not have (an earlier release
    wrote it, or it was not set) reads as what that release did: the schema's default, unless
    ``BEFORE_ADDED`` says otherwise (``not recorded (no re-identification then) → 0.9``); a key of
    ``outputs`` is kept only when set, so its absence is its default on both sides. Records
    from before the weights' digest was kept compare the preset's own weights as the same, and
    a weights file without its sha256 by size and time; a precision ``auto`` is any."""
    made, now = dict(made), dict(now)
    if isinstance(made.get("model"), dict) and isinstance(now.get("model"), dict):
        made["model"], now["model"] = _weights_as_recorded(made["model"], now["model"])
    changes: dict[str, str] = {}
    defaults = _schema_defaults()
    for section in [*now, *(key for key in made if key not in now)]:
        _changes(section, made.get(section, _ABSENT), now.get(section, _ABSENT), defaults.get(section, _ABSENT), changes)
    return changes


def _weights_as_recorded(before: dict, after: dict) -> tuple[dict, dict]:
    """The model settings, the precision and the weights file as precise as ``before`` kept them."""
    before, after = dict(before), dict(after)
    if before.get("precision") == "auto":
        before["precision"] = after.get("precision")
    file_before, file_after = before.get("checkpoint_file"), after.get("checkpoint_file")
    if isinstance(file_after, dict):
        if file_before is None and before.get("checkpoint") is None:  # the preset's own, not kept then
            before["checkpoint_file"] = file_after
        elif isinstance(file_before, dict):
            compared = ("size", "sha256") if "sha256" in file_before else ("size", "mtime_ns")
            before["checkpoint_file"] = {k: file_before.get(k) for k in compared}
            after["checkpoint_file"] = {k: file_after.get(k) for k in compared}
    return before, after


def _changes(name: str, before, after, default, changes: dict[str, str]) -> None:
    """Add to ``changes`` how ``before`` (recorded) became ``after`` (now), key by key within dicts."""
    if after is _ABSENT:  # a section kept only when set: not set now is its default
        after = default
    if before is _ABSENT and isinstance(after, dict) and isinstance(default, dict):
        before = {}  # a section not kept then: each of its keys reads as before it was added
    if isinstance(before, dict) and isinstance(after, dict):
        defaults = default if isinstance(default, dict) else {}
        for key in [*after, *(key for key in before if key not in after)]:
            _changes(f"{name}.{key}", before.get(key, _ABSENT), after.get(key, _ABSENT), defaults.get(key, _ABSENT),
                     changes)
        return
    if before is _ABSENT:
        same_as_then, note = BEFORE_ADDED.get(name, (lambda value: value == default, ""))
        if after is _ABSENT or not same_as_then(after):
            changes[name] = f"not recorded{f' ({note})' if note else ''} → {_shown(after)}"
    elif before != after:
        changes[name] = f"{_shown(before)} → {_shown(after)}"


def _shown(value) -> str:
    text = "not set" if value is _ABSENT else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 48 else text[:47] + "…"


def _changes_listed(changed: Counter[str], limit: int = 8) -> str:
    """``tracking.min_hits: 2 → 3 (4 videos); ...``: what changed for how many videos, the most
    frequent first."""
    listed = [f"{change} ({n} video{'s' if n != 1 else ''})" for change, n in changed.most_common(limit)]
    if len(changed) > limit:
        listed.append(f"and {len(changed) - limit} more (the manifest keeps each video's settings)")
    return "; ".join(listed)


def write_batch_coco(root: Path, manifest: Manifest) -> None:
    """``<root>/panoptic_batch.json``: the COCO panoptic JSON of every video the manifest lists as
    done with this run's settings, by video id (the same bytes however many runs it took). A
    warning names each video done that it leaves out, and why."""
    from segstream.connectors.coco_panoptic import write_batch_panoptic

    videos, unnumbered = [], []
    other: dict[str, list[str]] = {}  # how the settings changed since: the ids of the videos done so
    for record in manifest.records.values():
        if record.get("status") != "done":
            continue
        if changes := manifest.changes(record):
            other.setdefault("; ".join(f"{key}: {change}" for key, change in changes.items()), []).append(record["id"])
        elif isinstance(record.get("number"), int):
            videos.append((record["id"], record["number"]))
        else:
            unnumbered.append(record["id"])
    if other:  # found probing: videos of an earlier release were left out of it without a word
        left_out = sum(len(ids) for ids in other.values())
        groups = sorted(other.items(), key=lambda item: (-len(item[1]), min(item[1])))
        named = [f"{_named(sorted(ids))} ({why})" for why, ids in groups[:5]]
        if len(groups) > 5:
            named.append(f"{sum(len(ids) for _, ids in groups[5:])} more with other changes (the manifest keeps "
                         "each video's settings)")
        them = "them" if left_out != 1 else "it"
        log.warning("%d video%s done with other settings than this run's %s left out of %s: %s — give %s to a batch "
                    "with these settings to have %s done again", left_out, "s" if left_out != 1 else "",
                    "are" if left_out != 1 else "is", BATCH_PANOPTIC, "; ".join(named), them, them)
    if unnumbered:
        log.warning("%d videos done before their COCO image ids were unique across the batch are left out of %s (%s): "
                    "delete their folders under '%s' to have them done again", len(unnumbered), BATCH_PANOPTIC,
                    _named(sorted(unnumbered)), root)
    write_batch_panoptic(root / BATCH_PANOPTIC, sorted(videos))


def _named(ids: Sequence[str], limit: int = 10) -> str:
    """``a, b, c and 7 more``."""
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def lost_after_taking(frames: int) -> str:
    """Why a video Redis lost entries of after taking them (another writer's ``max_age_s`` let its
    stream expire, a flush) is not done: it said "done", exit 0, its stream empty (found probing a
    shared Redis)."""
    return (f"Redis lost {frames} of its frame entries after taking them (the warning above says how); --retry-failed "
            "publishes it again")


def undelivered_reason(lost: dict[str, int]) -> str:
    """Why a video whose results a sink took but never wrote (its server stayed away) is not done."""
    counts = {reason: lost[reason] for reason in SINK_DROPS if lost.get(reason)}
    reasons = ", ".join(f"{reason} {n}" for reason, n in counts.items())
    return f"{sum(counts.values())} results never reached a sink ({reasons}); --retry-failed publishes it again"


# --- the command -----------------------------------------------------------------------------


def summary_table(outcomes: Sequence[VideoOutcome], skipped: int, manifest: Path, limit: int = 100) -> str:
    """A table of the videos this run touched and a totals line."""
    ran = [o for o in outcomes if o.status in ("done", "failed")]
    shown = ran if len(ran) <= limit else [o for o in ran if o.status == "failed" or o.damage][:limit]
    width = max([len("video"), *(len(o.job.id) for o in shown)])
    lines = []
    if shown:
        lines.append(f"{'video':<{width}}  {'status':<7}{'frames':>8}{'seconds':>9}{'fps':>8}  note")
        for o in shown:
            fps = f"{o.frames / o.seconds:8.1f}" if o.seconds > 0 and o.frames else f"{'':8}"
            # (a note quotes the video's name and its error: escaped as the log lines are, found probing an upgrade)
            lines.append(f"{o.job.id:<{width}}  {o.status:<7}{o.frames:>8}{o.seconds:>9.1f}{fps}  {printable(scrub(o.note))}")
        if len(shown) < len(ran):
            listed = {id(o) for o in shown}
            left = Counter(o.status for o in ran if id(o) not in listed)
            kinds = ", ".join(f"{n} {status}" for status, n in sorted(left.items()))
            lines.append(f"({len(ran) - len(shown)} more videos not listed: {kinds}; the manifest has them all)")
    done = [o for o in outcomes if o.status == "done"]
    failed = sum(o.status == "failed" for o in outcomes)
    failed_before = sum(o.status == "skipped" for o in outcomes)
    stopped = sum(o.status == "stopped" for o in outcomes)
    frames = sum(o.frames for o in done)
    damaged = sum(bool(o.damage) for o in done)
    totals = f"{len(done)} done ({frames} frame{'s' if frames != 1 else ''})"
    totals += f" of which {damaged} damaged (frames missing: see the notes)" if damaged else ""
    totals += f", {failed} failed, {skipped} skipped (ended in an earlier run"
    totals += f"; {failed_before} of them failed: --retry-failed tries again)" if failed_before else ")"
    if stopped:
        totals += f", {stopped} not done (stopped; run again to do them)"
    lines.append(f"{totals}; manifest: {manifest}")
    return "\n".join(lines)


def summary_json(outcomes: Sequence[VideoOutcome], skipped: int, manifest: Path) -> Iterator[dict]:
    """``summary_table`` for scripts: each video this run touched (as its manifest line names it),
    then the totals."""
    for o in outcomes:
        yield {"type": "video", "video": o.job.key, "id": o.job.id, "status": o.status, "frames": o.frames,
               "decode_errors": o.decode_errors, "seconds": round(o.seconds, 3), "frames_missing": o.frames_missing,
               "damage": scrub(o.damage), "video_stream": o.video_stream, "other_video_streams": o.other_video_streams,
               "reason": scrub(o.reason), "outputs": o.outputs}
    counts = Counter(o.status for o in outcomes)
    yield {"type": "summary", "done": counts["done"], "failed": counts["failed"], "stopped": counts["stopped"],
           "skipped": skipped, "skipped_failed_before": counts["skipped"],
           "frames": sum(o.frames for o in outcomes if o.status == "done"), "manifest": str(manifest)}


class _BatchCollector:
    """``segstream_batch_videos{status}`` for /metrics: done, failed, skipped and pending."""

    def __init__(self, progress: BatchProgress, skipped: int):
        self.progress, self.skipped = progress, skipped

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        ended = {"done": 0, "failed": 0, **self.progress.statuses}
        videos = GaugeMetricFamily("segstream_batch_videos", "Videos of this batch by status.", labels=["status"])
        for status, n in sorted(ended.items()):
            videos.add_metric([status], n)
        videos.add_metric(["skipped"], self.skipped)
        videos.add_metric(["pending"], max(0, self.progress.videos - sum(ended.values())))
        yield videos


def load_batch_config(args) -> PipelineConfig:
    if getattr(args, "address", None) is not None and getattr(args, "engine", "local") != "ray":
        raise ConfigError(f"--address {args.address}: the Ray cluster to join, for --engine ray — add --engine ray, "
                          "or leave --address out to run here")  # it was ignored: the batch ran on this machine
    if args.config is not None and standard_input(args.config) and any(
            standard_input(str(i)[1:]) for i in args.inputs if str(i).startswith("@")):
        raise ConfigError("standard input can be the config (--config -) or the list of videos (@-), not both — "
                          "give one of them as a file")  # both read one stream: the config came out as a video path
    if args.config is None:  # the defaults: the shipped model
        data: dict = {}
        for override in args.overrides:
            apply_override(data, override)
        cfg = validate_config(interpolate(data), schema=BatchPipelineConfig)
    else:
        from segstream.pipeline.config import load_checked_config

        cfg = load_checked_config(args.config, args.overrides, schema=BatchPipelineConfig)
    updates = {}
    if args.concurrency is not None:
        if args.concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {args.concurrency}")
        updates["concurrency"] = args.concurrency
    if args.out is not None:
        updates["output"] = str(args.out)
    if getattr(args, "address", None) is not None:
        updates["ray"] = cfg.batch.ray.model_copy(update={"address": args.address})
    if updates:
        cfg = cfg.model_copy(update={"batch": cfg.batch.model_copy(update=updates)})
    if cfg.stages:
        raise ConfigError("stages: segstream batch does not run a config's stages (segstream run does) — remove the "
                          "stages: section from the config for batch")
    if cfg.sinks.preview.level is not None or cfg.batch.overlay_level is not None:  # a level the model lacks:
        from segstream.pipeline.model_factory import check_model_section  # said before any video

        check_model_section(cfg, batch=True)
    if cfg.sources:
        log.info("the config's sources are not used: batch processes the videos given on the command line")
    from segstream.pipeline.builders import unused_sink_folders

    for line in unused_sink_folders(cfg.sinks):
        log.warning(line)
    if not (cfg.batch.jsonl or cfg.batch.coco_panoptic or cfg.batch.overlay
            or (cfg.sinks.redis.enabled and cfg.sinks.redis.url) or cfg.sinks.files.enabled or cfg.sinks.preview.enabled):
        raise ConfigError("batch writes nothing: enable batch.jsonl, batch.coco_panoptic, batch.overlay, or a sink "
                          "(sinks.redis with a url, sinks.files, sinks.preview)")
    return cfg


def run_batch(cfg: PipelineConfig, inputs: Sequence[str], engine: str = "local", retry_failed: bool = False,
              progress: bool | None = None, adapter=None) -> tuple[list[VideoOutcome], int, int | None]:
    """Run a batch; returns the outcomes of the videos it ran (and, as ``skipped`` with the
    earlier reason, of those it skipped because they failed in an earlier run), how many it
    skipped, and the signal that stopped it (None if none did)."""
    from segstream.pipeline.cli import _DrainOnSignal
    from segstream.pipeline.monitoring import serve_ops
    from segstream.pipeline.logs import new_run_id

    root = Path(cfg.batch.output)
    paths, warnings = find_videos(inputs, cfg.batch.extensions, _output_folders(cfg))
    if not paths:  # the warnings are the error's own words: said once, in it (found probing a photo folder)
        raise ConfigError("no videos to process: " + ("; ".join(warnings) or "no inputs given"))
    for warning in warnings:
        log.warning(warning)
    # a missing one among others fails as a video; all: a mistake (a URL is not known missing until read)
    if not any(isinstance(path, str) or path.exists() for path in paths):
        missing = ", ".join(f"'{path}'" for path in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        raise ConfigError(f"no videos to process: {missing} do{'es' if len(paths) == 1 else ''} not exist")
    with output_lock(root), contextlib.ExitStack() as cluster:
        if unfinished := clear_partial(root):  # a run stopped by a kill, a power cut or an OOM killer
            log.warning("an earlier run stopped before finishing %d video%s (%s): their half-written outputs were "
                        "removed", len(unfinished), "s" if len(unfinished) != 1 else "", _named(unfinished, 5))
        if engine == "ray":  # joined first: the precision the manifest records is decided where the model runs
            from segstream.pipeline.batch_ray import joined_ray, settle_model

            ray = cluster.enter_context(joined_ray(cfg))
            cfg = settle_model(ray, cfg)
        manifest = Manifest(root / MANIFEST, output_settings(cfg))
        try:
            jobs = plan(paths, manifest.ids(), manifest.numbers())
            _warn_of_the_locale(jobs)
            ask_servers(jobs, cfg.batch.open_timeout_s)
            todo, skipped = [], 0
            outcomes: list[VideoOutcome] = []
            changed: Counter[str] = Counter()  # "tracking.min_hits: 2 → 3": the videos done before with it
            redone = 0  # videos done before with other settings
            rewritten: list[str] = []  # ids of videos done before whose file changed since
            for job in jobs:
                record = manifest.records.get(job.key, {})
                if record.get("status") == "done":
                    changes = manifest.changes(record)
                    changed.update(f"{key}: {change}" for key, change in changes.items())
                    redone += bool(changes)
                    if not job.unchanged(record):
                        rewritten.append(job.id)
                earlier = manifest.failed(job)
                if manifest.done(job, root) or (earlier is not None and not retry_failed):
                    skipped += 1
                    if earlier is not None:
                        log.info("%s: skipped, it failed before (%s); --retry-failed tries again", job.id, earlier["reason"])
                        outcomes.append(VideoOutcome(job, "skipped", reason=f"failed before: {earlier['reason']}"))
                else:
                    todo.append(job)
            if rewritten:  # its outputs (and Redis entries) of the earlier file are replaced
                log.warning("%d video%s done before changed since (size or time): done again (%s)", len(rewritten),
                            "s" if len(rewritten) != 1 else "", _named(rewritten, 5))
            if changed:  # one archive, one model: outputs of other settings are not mixed in
                log.warning("%d video%s done before with other settings %s done again: %s", redone,
                            "s" if redone != 1 else "", "are" if redone != 1 else "is", _changes_listed(changed))
            log.info("%d video%s: %d to do, %d skipped (ended in an earlier run)", len(jobs), "s" if len(jobs) != 1 else "",
                     len(todo), skipped)
            for job in todo:
                probe(job, cfg.batch.max_fps)
            control = BatchControl()
            metrics = RunMetrics()
            run_id = new_run_id()  # on what the batch publishes; its files hold none, to be the same each run
            manifest.made_by = made_by(run_id, cfg, engine)  # in the manifest: its Redis entries traced to their line
            log.info("batch run %s", run_id)
            with serve_ops(cfg.ops, metrics) as server, _progress(todo, progress, cfg.ops.status_interval_s) as bars:
                if server is not None:
                    server.collector.extra.append(_BatchCollector(bars, skipped))
                doing = "stopping: no new videos, the ones in progress finish"
                with _DrainOnSignal(control, doing) as signals:
                    if engine == "ray":
                        from segstream.pipeline.batch_ray import run_ray

                        outcomes += run_ray(ray, cfg, todo, root, manifest, bars, control, run_id)
                    else:
                        outcomes += run_local(cfg, todo, root, manifest, bars, control, adapter, server, run_id)
            if cfg.batch.coco_panoptic:
                write_batch_coco(root, manifest)
            return outcomes, skipped, signals.signum
        finally:
            manifest.close()
            clear_partial(root)


def _warn_of_the_locale(jobs: Sequence[VideoJob]) -> None:
    """Says once that file names are read in a locale's encoding other than UTF-8 where a name is
    not ASCII: its ids and the manifest's paths are then not those a UTF-8 run gives (found probing
    under Latin-1: 'café.mp4' became 'cafA__' and was done again by the next run under UTF-8)."""
    encoding = sys.getfilesystemencoding()
    if encoding.replace("-", "").lower() == "utf8":
        return
    named = next((job.key for job in jobs if not job.key.isascii()), None)
    if named is not None:
        log.warning("this locale reads file names as %s (%s): their ids and the manifest's paths differ from a UTF-8 "
                    "run's, which does such videos again — run batches under a UTF-8 locale (LC_ALL=C.UTF-8) or with "
                    "PYTHONUTF8=1", encoding, printable(named))


@contextlib.contextmanager
def _progress(jobs: Sequence[VideoJob], enabled: bool | None, every_s: float = 2.0) -> Iterator[BatchProgress]:
    from tqdm.contrib.logging import logging_redirect_tqdm

    from segstream.pipeline.logs import json_logging

    bars = BatchProgress(jobs, enabled, every_s, drawn=bars_drawn() and not json_logging())
    try:
        if bars.disabled:
            yield bars
        else:
            with logging_redirect_tqdm(loggers=[logging.getLogger("segstream")]):
                yield bars
    finally:
        bars.close()


def main_batch(args) -> int:
    cfg = load_batch_config(args)
    manifest = Path(cfg.batch.output) / MANIFEST
    try:
        outcomes, skipped, signum = run_batch(cfg, args.inputs, args.engine, args.retry_failed, args.progress)
    except KeyboardInterrupt:  # a second stop signal: no table, but what is whole is said before "aborted"
        with contextlib.suppress(Exception):
            records = read_manifest(manifest).values()
            done = sum(record.get("status") == "done" for record in records)
            log.warning("%d video%s done, as %s records (their outputs whole): the same command again does the "
                        "rest", done, "s" if done != 1 else "", manifest)
        raise
    except SinkError as error:  # outputs that cannot be written (a full disk): no video after could be either
        try:
            done = sum(record.get("status") == "done" for record in read_manifest(manifest).values())
        except OSError:
            raise error from None
        raise SinkError(f"{error} — the batch stopped there; {done} video{'s' if done != 1 else ''} done, as "
                        f"{manifest} records: the same command again does the rest") from None
    if getattr(args, "json", False):
        for line in summary_json(outcomes, skipped, manifest):
            print(json.dumps(line), flush=True)
    else:
        print(summary_table(outcomes, skipped, manifest))
    if signum is not None and any(o.status == "stopped" for o in outcomes):
        return 128 + signum
    # a video that failed before and was skipped is still not done: a cron job must not read "all done"
    return 1 if any(o.status == "failed" or o.status == "skipped" for o in outcomes) else 0
