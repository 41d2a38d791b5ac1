"""A folder, a glob or a single file of still images played as video, in natural sort order."""

from __future__ import annotations

import glob
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from segstream.connectors.clock import Pacer, Timeline
from segstream.connectors.errors import SourceError
from segstream.connectors.frame_rate import FrameRateCap
from segstream.connectors.frames import Frame
from segstream.connectors.image_times import NameTimes, zone_of
from segstream.connectors.source import StateListener, tell_state
from segstream.connectors.threads import waiting_for_input

logger = logging.getLogger("segstream.sources")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm", ".pnm", ".gif")
_DIGITS = re.compile(r"(\d+)")
_WILDCARD = re.compile(r"[*?\[]")
TIMESTAMPS = ("fps", "name", "mtime")  # where an image's time comes from
TIMED_BASE = Fraction(1, 1000)  # the time base of images timed by their names or files: milliseconds
# what an upload in progress is named by, where a watched glob would match it (a folder lists images by suffix)
UPLOAD_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".filepart", ".crdownload", ".download", ".upload")
EMPTY_SETTLE_S = 30.0  # an empty new file is an upload whose data has not begun: given this long at least
_NAMINGS = ("timestamps: name reads names such as site_20261204_130501.jpg, 20261204130501.jpg, "
            "2026-12-04_13-05-01.jpg or 2026-12-04T13:05:01Z.jpg; give timestamp_format for another naming "
            "(e.g. 'cam1_%d.%m.%Y_%H-%M-%S'), or use timestamps: mtime or fps")


def untimed_problem(path: str, example: str, format: str | None) -> str:
    """The line for a listing of images of which none has a time in its name."""
    example = os.path.basename(example)
    if format is None:
        return f"no image in '{path}' has a date and time in its name (such as '{example}') — {_NAMINGS}"
    return (f"no image in '{path}' has a time in its name as timestamp_format '{format}' writes it (such as "
            f"'{example}') — correct the format, or use timestamps: mtime or fps")


def natural_key(path: str) -> tuple:
    """Sort key under which ``frame2.png`` comes before ``frame10.png``: digit runs compare as
    numbers, the rest case-insensitively; ties fall back to the plain name."""
    parts = _DIGITS.split(path)
    return tuple((0, int(p), "") if i % 2 else (1, 0, p.casefold()) for i, p in enumerate(parts)), path


def list_images(pattern: str) -> list[str]:
    """The images a folder holds (by suffix, not recursing), the files a glob matches, or the one
    file named, in natural order."""
    path = Path(pattern).expanduser()
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        names = [str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        names = [p for p in glob.glob(str(path), recursive=True) if Path(p).is_file()]
    return sorted(names, key=natural_key)


def gif_images(data: bytes) -> tuple[list[bytes], bool]:
    """A GIF file's bytes cut into one piece per image, as FFmpeg's GIF decoder takes them (the
    first with the header and global palette, each with the extensions before it), and whether
    its blocks were whole. FFmpeg's demuxer cuts a GIF at its frames' delays: one without them
    (GIF87a, PIL's ``save_all`` without ``duration``) came as one packet, of which the decoder
    made the first image only. The bytes after the last whole image, if any, are one more piece."""
    if len(data) < 13 or data[:6] not in (b"GIF87a", b"GIF89a"):
        return [data], False
    palette = data[10]
    at = 13 + (3 << ((palette & 7) + 1) if palette & 0x80 else 0)
    images, start, whole = [], 0, False
    while at < len(data):
        if data[at] == 0x3B:  # the trailer
            whole = True
            break
        if data[at] == 0x21:  # an extension: its label, then data sub-blocks
            at = _past_sub_blocks(data, at + 2)
        elif data[at] == 0x2C and at + 10 <= len(data):  # an image: descriptor, local palette, LZW data
            packed = data[at + 9]
            at = _past_sub_blocks(data, at + 11 + (3 << ((packed & 7) + 1) if packed & 0x80 else 0))
            if at <= len(data):
                images.append(data[start:at])
                start = at
        else:
            break
    whole = whole or (at == len(data) and start == at)
    if start < len(data) and not whole:
        images.append(data[start:])
    return images, whole


def _past_sub_blocks(data: bytes, at: int) -> int:
    """Where a run of GIF data sub-blocks starting at ``at`` ends (past its empty block); past
    the end of ``data`` when it is cut short."""
    while at < len(data) and data[at]:
        at += data[at] + 1
    return at + 1


@dataclass(slots=True)
class _Play:
    """Where playing stands, across a loop's passes and a watched folder's arrivals."""

    pacer: Pacer | None
    timeline: Timeline = field(default_factory=Timeline)
    position: int = 0  # index (and, timed by fps, PTS): the place in the listing, each frame of a GIF one
    delivered: int = 0
    first_time: float | None = None  # the first image's Unix time (timestamps name or mtime)
    done: bool = False  # max_frames reached, or closed


class ImageFolderSource:
    """Images of a folder (or a glob such as ``shots/**/*.png``, or one image file) as frames,
    one per image, and one per frame of an animated GIF.

    ``timestamps`` says when each image was taken. ``fps`` (the default): image k of the listing,
    in natural order, has PTS k in time base ``1/fps``, and its capture time is when it was read.
    ``name`` (the date and time its file name writes, ``connectors/image_times.py``; in
    ``timestamp_format`` when given, in ``timestamp_zone`` when it writes none, else local time)
    or ``mtime`` (its file's modification time): the images in the order of their times, each
    frame's capture time its image's, its ``pts_seconds`` the time since the first image's (in
    milliseconds), so a night without images is a night-long gap; an image at the time of the one
    before is placed a millisecond after it. An image whose name holds no time is left out, said
    once; a listing of which none has one fails the source. ``Frame.index`` k is the k-th image
    (or GIF frame) in order: an image that cannot be decoded leaves a gap in it (and, by fps, in
    the PTS; as a video's rejected frame does) and is counted in ``decode_errors``; a pass in
    which no image at all could be read fails the source. ``realtime`` plays one image every
    ``1/fps`` seconds (whatever their own times) and makes the source live. ``loop`` lists the
    images again and starts over (new images included), indices and PTS counting on; each pass
    is an ``epoch``. Orientation follows the images' EXIF tags.

    ``watch`` follows a folder (or glob) that files keep arriving in, until ``close()``: the
    images there first (``watch_from: start``; ``new``: only those that come later), then each
    new image as it comes, in order of time (by ``fps``: of name), never one twice (by ``mtime``,
    a file written again is a new image). It looks every ``poll_s`` seconds; a new file is read
    once its size and modification time have stayed the same for ``settle_s`` (or it was last
    written that long ago), and not before the ones before it in order; names starting with a
    dot (an upload in progress, as some FTP servers name it) are not images. A file that comes with a time at or before the last image read is not read,
    said. It remembers the last image read and the names of the folder's last listing (not every
    name it ever read), and reports its own states: ``streaming`` as soon as it watches, images or
    not yet, ``stalled`` while the folder cannot be listed.
    """

    def __init__(
        self,
        name: str,
        path: str,
        fps: float = 25.0,
        loop: bool = False,
        realtime: bool = False,
        max_frames: int | None = None,
        max_fps: float | None = None,
        timestamps: str = "fps",
        timestamp_format: str | None = None,
        timestamp_zone: str | None = None,
        watch: bool = False,
        watch_from: str = "start",
        poll_s: float = 1.0,
        settle_s: float = 2.0,
        bit_depth: int | None = None,
        empty_settle_s: float = EMPTY_SETTLE_S,
    ):
        if not fps > 0:
            raise SourceError(f"source {name}: fps must be positive, got {fps}")
        if timestamps not in TIMESTAMPS:
            raise SourceError(f"source {name}: timestamps must be one of {', '.join(TIMESTAMPS)}, got {timestamps!r}")
        if watch and loop:
            raise SourceError(f"source {name}: watch reads each new image once and loop plays them over — use one")
        if watch_from not in ("start", "new", "last") or not poll_s > 0 or not settle_s >= 0:
            raise SourceError(f"source {name}: watch_from must be start, new or last, poll_s positive and settle_s 0 "
                              f"or more, got {watch_from!r}, {poll_s}, {settle_s}")
        if bit_depth is not None and not 9 <= bit_depth <= 16:
            raise SourceError(f"source {name}: bit_depth is the bits of 16-bit images' samples, 9 to 16, got {bit_depth}")
        self.name = name
        self.path = str(path)
        self.fps = fps
        self.bit_depth = bit_depth
        self._depth_checked = False  # the first 16-bit image's samples looked at, once a source
        self.cap = FrameRateCap(max_fps) if max_fps is not None else None
        self.loop = loop
        self.live = realtime
        self.max_frames = max_frames
        self.decode_errors = 0
        self.frames_out_of_order = 0  # a watched folder's images that came after later ones were read
        self.timestamps = timestamps
        # frames captured at the images' own times, before segstream read them: its latency is
        # measured from the read (an upload's delay, a folder's backlog, are not segstream's)
        self.captures_before_read = timestamps != "fps"
        try:
            self.name_times = NameTimes(timestamp_format, zone_of(timestamp_zone)) if timestamps == "name" else None
        except ValueError as error:
            raise SourceError(f"source {name}: {error}") from None
        self.time_base = 1 / Fraction(fps).limit_denominator(1001) if timestamps == "fps" else TIMED_BASE
        self.watch, self.watch_from, self.poll_s, self.settle_s = watch, watch_from, poll_s, settle_s
        # watch_from last: the runtime says before frames() where the last run left off (resume_after)
        self.resumes = watch and watch_from == "last"
        self._resume: tuple[Any, str] | None = None
        self._resume_said = False  # why it reads from the start after all, said
        self.empty_settle_s = empty_settle_s  # an empty new file waits this long (the ones after it too)
        self._closed = threading.Event()
        self._keys: dict[str, Any] = {}  # the last listing's names: what of each key needs no stat (None: no time)
        # set by the runtime: each image not read, named on the source's events stream (``image_skipped``)
        self.on_event: Callable[[str, dict[str, Any]], None] | None = None
        where = Path(self.path).expanduser()
        if watch:
            self.on_state: StateListener | None = None  # set by the runtime: it says when it watches
            if where.is_file():
                raise SourceError(f"source {name}: watch follows a folder or a glob, and '{self.path}' is one image "
                                  "— give the folder it is in")
            if not _WILDCARD.search(self.path) and not where.is_dir():
                raise SourceError(f"source {name}: folder '{self.path}' does not exist — watch needs the folder, "
                                  "empty or not")
            self._first: list[tuple[str, Any]] = []
            if self.name_times is not None:  # a folder of another naming: said now, not by a warning per file
                names = list_images(self.path)
                if names and not any(self.name_times.unix(image) is not None for image in names):
                    raise SourceError(f"source {name}: {untimed_problem(self.path, names[0], timestamp_format)}")
            return
        names = list_images(self.path)
        if not names:
            raise SourceError(
                f"source {name}: no images in '{self.path}' — give a folder of "
                f"{'/'.join(s[1:] for s in IMAGE_SUFFIXES[:4])}... files or a glob such as 'frames/*.png'"
            )
        self._first = self._ordered(names)
        if not self._first:
            raise SourceError(f"source {name}: {untimed_problem(self.path, names[0], timestamp_format)}")

    def frames(self) -> Iterator[Frame]:
        play = _Play(Pacer() if self.live else None)
        if self.watch:
            yield from self._follow(play)
            return
        epoch = 0
        images = self._first
        while not self._closed.is_set():
            read = yield from self._play(images, play, epoch)
            if play.done or self._closed.is_set():
                return
            if read == 0:  # not a folder that ended: nothing of it could be read
                if len(images) == 1:
                    raise SourceError(f"source {self.name}: '{images[0][0]}' has no decodable image")
                raise SourceError(f"source {self.name}: none of the {len(images)} images in '{self.path}' could be "
                                  "decoded")
            if not self.loop:
                return
            names = list_images(self.path)
            if not names:
                raise SourceError(f"source {self.name}: the images in '{self.path}' are gone")
            images = self._ordered(names)
            if not images:
                raise SourceError(f"source {self.name}: {untimed_problem(self.path, names[0], self._format)}")
            epoch += 1
            play.timeline.restart()  # timed by the images: the next pass goes on after the last

    def _play(self, images: list[tuple[str, Any]], play: _Play, epoch: int) -> Generator[Frame, None, int]:
        """The frames of ``images`` (name and sort key, in order); returns how many images were
        read (left out over ``max_fps`` included)."""
        # kept frames over max_fps are a period apart: no discontinuity for the pacer
        frame_s = float(self.time_base) if self.timestamps == "fps" else 1 / self.fps
        step_s = max(frame_s, self.cap.period_s if self.cap is not None else 0.0)
        read = 0
        for name, key in images:
            moment = self._moment(key)
            gif = name.lower().endswith(".gif")
            if moment is not None and play.first_time is None:
                play.first_time = moment
                logger.info("source %s: images timed by %s: the first, %s, at %s", self.name, self._timed_by(),
                            name, self._shown(moment), extra={"source": self.name})
            if self.cap is not None and not gif:
                offset = float(play.position * self.time_base) if moment is None else moment - play.first_time
                if not self.cap.keep(offset):
                    play.position += 1  # over max_fps: its place counted, the image never read
                    read += 1
                    continue
            with closing(self._read(name)) as pictures:
                for image in pictures:
                    if self._closed.is_set():
                        play.done = True
                        return read
                    index = play.position
                    play.position += 1
                    if image is None:
                        continue
                    if moment is None:
                        pts = index
                    else:  # a time at or before the last one's is placed a millisecond after it
                        pts = play.timeline.place(round((moment - play.first_time) * 1000), TIMED_BASE, 1)
                    pts_seconds = float(pts * self.time_base)
                    if self.cap is not None and gif and not self.cap.keep(pts_seconds):
                        read += 1
                        continue
                    if play.pacer is not None:
                        # timed by their own times, images hours apart: paced one per 1/fps all the same
                        due_s = pts_seconds if moment is None else play.delivered / self.fps
                        if not play.pacer.wait(due_s, step_s, self._closed):
                            play.done = True
                            return read
                    yield Frame(self.name, index, image, pts, self.time_base, pts_seconds,
                                time.time() if moment is None else moment, epoch=epoch, file=name)
                    read += 1
                    play.delivered += 1
                    if self.max_frames is not None and play.delivered >= self.max_frames:
                        play.done = True
                        return read
        return read

    def _follow(self, play: _Play) -> Iterator[Frame]:
        """A watched folder's images: those there first (or not), then each new one as it comes."""
        self._enter("connecting", f"listing '{self.path}'")
        cursor, last = None, None  # the key and name of the last image read: what sorts after it is new
        seen: set[str] = set()  # the names of the last listing: one not among them came since
        settling: dict[str, tuple[int, int, float]] = {}  # a new file's size, mtime and since when they are so
        first, watching, unlisted = True, False, None
        while not self._closed.is_set():
            try:
                keys = self._listing(self._scan())
            except OSError as error:
                why = error.strerror or type(error).__name__
                if unlisted != why:
                    unlisted = why
                    self._enter("stalled", f"cannot list '{self.path}' ({why}); looking again every {self.poll_s:g} s")
                if not self._wait():
                    return
                continue
            if unlisted is not None:
                unlisted = None
                self._enter("streaming", f"'{self.path}' can be listed again")
            if first and self.watch_from == "new":
                cursor, last = max(((key, name) for name, key in keys.items() if key is not None),
                                   default=(None, None))
            elif first and self._resume is not None:
                cursor, last = self._resume
                logger.info("source %s: going on after %s, the newest image its stream holds (%d in the folder "
                            "up to it left as read)", self.name, last,
                            sum(key is not None and key <= cursor for key in keys.values()),
                            extra={"source": self.name})
            elif first and self.resumes and keys and not self._resume_said:  # after a Redis that lost its data
                logger.info("source %s: its stream holds no image yet: reading the %d in the folder from the start "
                            "(a first run, or a stream Redis lost or trimmed)", self.name, len(keys),
                            extra={"source": self.name})
            new, late = [], []
            for name, key in keys.items():
                if key is None:
                    continue
                if cursor is not None and key <= cursor and self.name_times is not None and name not in seen:
                    # the clocks went back: an hour's names come again, their times the second time
                    # round (found in review: a watched folder left the repeated hour unread)
                    later = self.name_times.unix(name, later=True)
                    if later is not None and (later, key[1]) > cursor:
                        key = keys[name] = self._keys[name] = (later, key[1])
                if cursor is None or key > cursor:
                    new.append((key, name))
                elif not first and name not in seen:
                    late.append(name)
            if late:
                # counted, as skipped: a part's picture on an inspection line is never lost unsaid
                # (found probing a line whose counter wrapped: every later part went unread, exit 0)
                self.frames_out_of_order += len(late)
                for name in late:
                    self._skipped(name, "out_of_order", "came after images later than it were read")
                before = (f"a name sorting before that of the last image read, {last}" if self.timestamps == "fps"
                          else f"a time at or before that of the last image read ({self._shown(self._moment(cursor))})")
                logger.warning("source %s: %s%s came with %s; not read (counted as skipped, out of order) — a "
                               "watched folder is read forward, never back", self.name, late[0], f" and {len(late) - 1} more" if len(late) > 1 else "",
                               before, extra={"source": self.name})
            seen = set(keys)
            new.sort()
            ready = []
            for key, name in new:
                if not self._settled(name, settling):
                    break  # the ones after it wait for it: read in order
                ready.append((name, key))
            for name in set(settling) - {name for _, name in new}:
                del settling[name]
            first = False
            if not ready:
                if not watching:
                    watching = True
                    self._enter("streaming", f"watching '{self.path}' for new images", {"epoch": 0})
                if not self._wait():
                    return
                continue
            for name, key in ready:
                settling.pop(name, None)
                with closing(self._play([(name, key)], play, 0)) as frames:
                    for frame in frames:
                        if not watching:
                            watching = True
                            self._enter("streaming", f"first frame {frame.width}x{frame.height}, watching "
                                        f"'{self.path}'", {"width": frame.width, "height": frame.height, "epoch": 0})
                        yield frame
                cursor, last = key, name
                if play.done or self._closed.is_set():
                    return

    def _wait(self) -> bool:
        """Wait ``poll_s`` for files to come; False when closed first."""
        waiting_for_input(f"watching '{self.path}' for new images")  # a night without images is no stuck thread
        try:
            return not self._closed.wait(self.poll_s)
        finally:
            waiting_for_input(None)

    def _scan(self) -> list[str]:
        """The images a watched folder or glob holds now, in no order; an ``OSError`` when the
        folder cannot be listed."""
        where = Path(self.path).expanduser()
        if not _WILDCARD.search(self.path):
            with os.scandir(where) as entries:
                return [entry.path for entry in entries if not entry.name.startswith(".")
                        and entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file()]
        if not where.parent.exists() and not _WILDCARD.search(str(where.parent)):
            raise FileNotFoundError(2, "No such file or directory")
        return [name for name in glob.glob(str(where), recursive=True)
                if not os.path.basename(name).startswith(".") and not name.lower().endswith(UPLOAD_SUFFIXES)
                and os.path.isfile(name)]

    def _settled(self, name: str, settling: dict[str, tuple[int, int, float]]) -> bool:
        """Whether a new file is whole: its size and modification time the same for ``settle_s``
        (by this machine's clock, or since it was last written), longer for an empty one."""
        try:
            stat = os.stat(name)
        except OSError:  # gone again: the next listing leaves it out
            return False
        now, size = time.monotonic(), (stat.st_size, stat.st_mtime_ns)
        before = settling.get(name)
        if before is None or before[:2] != size:
            settling[name] = (*size, now)
            since = now
        else:
            since = before[2]
        wait_s = self.settle_s if stat.st_size else max(self.settle_s, self.empty_settle_s)
        return wait_s == 0 or now - since >= wait_s or time.time() - stat.st_mtime_ns / 1e9 >= wait_s

    def _ordered(self, names: list[str]) -> list[tuple[str, Any]]:
        """``names`` with their keys in the order they are played; those without a time left out."""
        keys = self._listing(names)
        return sorted(((name, key) for name, key in keys.items() if key is not None), key=lambda item: item[1])

    def _listing(self, names: list[str]) -> dict[str, Any]:
        """Each name's sort key (None: no time in its name): by fps its natural order, by name its
        time and natural order, by mtime its file's time and natural order. Those of names of the
        last listing are kept; a new name without a time is said once."""
        known, keys, untimed = self._keys, {}, []
        for name in names:
            fixed = known[name] if name in known else self._fixed_key(name)
            if fixed is None and name not in known:
                untimed.append(name)
            keys[name] = fixed
        self._keys = dict(keys)
        if untimed and (self.watch or len(untimed) < len(names)):  # all of a listing played: the source fails
            logger.warning("source %s: %s%s has no date and time in its name; not read — %s", self.name, untimed[0],
                           f" (and {len(untimed) - 1} more)" if len(untimed) > 1 else "",
                           _NAMINGS if self._format is None else f"timestamp_format is '{self._format}'",
                           extra={"source": self.name})
        if self.timestamps != "mtime":
            return keys
        timed = {}
        for name, fixed in keys.items():
            try:
                timed[name] = (os.stat(name).st_mtime_ns, fixed)
            except OSError:  # gone since it was listed
                continue
        return timed

    def resume_after(self, file: str | None, capture_ts: float | None) -> None:
        """With ``watch_from: last``: the newest image already published (its ``file`` and
        ``capture_ts``, from the source's stream; None: none, so from the start). Only what sorts
        after it is read: a restart neither reads again what the last run published nor leaves
        out what came while it was down."""
        if file is None:
            self._resume = None
            return
        listed = self._as_listed(file)
        if listed is None:  # found reviewing: "ftp" one run, "/srv/ftp" the next, every new image "before" it
            logger.warning("source %s: the newest image its stream holds, %s, is not in '%s' as this run names "
                           "it (the path changed since?); reading the folder from the start", self.name, file,
                           self.path, extra={"source": self.name})
            self._resume_said = True
            return
        file = listed
        fixed = self._fixed_key(file)
        if fixed is None:  # its name no longer has a time this config reads: said, and from the start
            logger.warning("source %s: the newest image its stream holds, %s, has no time in its name as this "
                           "config reads names; reading the folder from the start", self.name, file,
                           extra={"source": self.name})
            self._resume_said = True
            return
        key = fixed
        if self.timestamps == "mtime":
            try:
                key = (os.stat(file).st_mtime_ns, fixed)
            except OSError:  # moved away once read: its time as published
                key = (round((capture_ts or 0.0) * 1e9), fixed)
        self._resume = (key, file)

    def _as_listed(self, file: str) -> str | None:
        """``file``, an image the last run read, named as this run lists the folder (the same
        folder spelled otherwise: relative then, absolute now, through a link); None when it is
        not in the folder this run watches."""
        where = str(Path(self.path).expanduser())
        wildcard = _WILDCARD.search(where)
        root = os.path.dirname(where[:wildcard.start()]) if wildcard else where
        if file.startswith(root.rstrip(os.sep) + os.sep):
            return file
        real_root, real_file = os.path.realpath(root), os.path.realpath(file)
        if real_file.startswith(real_root.rstrip(os.sep) + os.sep):
            return os.path.join(root, os.path.relpath(real_file, real_root))
        return None

    def _fixed_key(self, name: str) -> Any:
        """What of a name's sort key stays as long as the name does."""
        order = natural_key(name)
        if self.name_times is None:
            return order
        moment = self.name_times.unix(name)
        return None if moment is None else (moment, order)

    def _moment(self, key: Any) -> float | None:
        """The Unix time of the image with sort key ``key``; None when timed by fps."""
        if key is None or self.timestamps == "fps":
            return None
        return key[0] / 1e9 if self.timestamps == "mtime" else key[0]

    @property
    def _format(self) -> str | None:
        return self.name_times.format if self.name_times is not None else None

    def _timed_by(self) -> str:
        if self.name_times is None:
            return "their files' modification times"
        how = f"timestamp_format '{self._format}'" if self._format is not None else "the usual namings"
        return f"their names ({how}, in {self.name_times.describe()} where a name gives no zone)"

    def _shown(self, moment: float | None) -> str:
        """A Unix time as people read it, in the zone the names are read in."""
        if moment is None:
            return "-"
        zone = self.name_times.zone if self.name_times is not None else None
        shown = datetime.fromtimestamp(moment, zone) if zone is not None else datetime.fromtimestamp(moment).astimezone()
        return shown.isoformat(sep=" ", timespec="milliseconds" if moment % 1 else "seconds")

    def _enter(self, state: str, reason: str, data: dict[str, Any] | None = None) -> None:
        tell_state(self.name, getattr(self, "on_state", None), state, reason, data or {}, logger)

    @property
    def frames_skipped(self) -> int:
        """Images left out: over ``max_fps``, and a watched folder's that came out of order."""
        return (self.cap.skipped if self.cap is not None else 0) + self.frames_out_of_order

    def _read(self, name: str) -> Iterator[np.ndarray | None]:
        """The file's images (an animated GIF's frames), or one None when it cannot be read."""
        try:
            data = np.fromfile(name, np.uint8)
        except OSError as error:
            logger.warning("source %s: cannot read %s (%s); skipped", self.name, name, error.strerror)
            self.decode_errors += 1
            self._skipped(name, "decode_error", f"cannot read it: {error.strerror}")
            yield None
            return
        if name.lower().endswith(".gif") and data[:4].tobytes() == b"GIF8":
            yield from self._gif_frames(name, data.tobytes())
            return
        # 16-bit images as they are (OpenCV's 8-bit decode keeps the high byte: a 12-bit camera's
        # images came out nearly black, found probing an inspection line), scaled below
        refused = None
        try:
            image = cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH) if data.size else None
            if image is not None and image.dtype not in (np.uint8, np.uint16):  # 32-bit: OpenCV's own 8-bit
                image = cv2.imdecode(data, cv2.IMREAD_COLOR)
        except cv2.error as error:  # found probing: a 40000x40000 PNG failed the whole source with OpenCV's assertion
            image, refused = None, error
        if image is None:
            why = ("is not an image OpenCV can decode" if refused is None else
                   "is larger than OpenCV decodes (its limit: 2**30 pixels, OPENCV_IO_MAX_IMAGE_PIXELS)"
                   if "CV_IO_MAX_IMAGE_PIXELS" in str(refused) else
                   f"cannot be decoded ({str(refused).strip().splitlines()[-1]})") if data.size else "is empty (0 bytes)"
            logger.warning("source %s: %s %s; skipped", self.name, name, why)
            self.decode_errors += 1
            self._skipped(name, "decode_error", why)
            yield None
            return
        if image.dtype == np.uint16:
            image = self._eight_bits(image, name)
        yield cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def _skipped(self, name: str, reason: str, detail: str) -> None:
        """An image not read, named to the run's events (``image_skipped``): a reader of the
        streams alone sees which file is missing, not only a gap in ``frame``."""
        if self.on_event is not None:
            self.on_event("image_skipped", {"file": name, "reason": reason, "detail": detail})

    def _eight_bits(self, image: np.ndarray, name: str) -> np.ndarray:
        """A 16-bit image's samples as 8 bits: the top 8 of its ``bit_depth`` (16: the high byte,
        as OpenCV reads it), higher values saturated."""
        bits = self.bit_depth or 16
        if self.bit_depth is None and not self._depth_checked:  # once: a max of every frame costs each one
            self._depth_checked = True
            if int(image.max()) < 4096:
                logger.warning("source %s: %s is a 16-bit image whose samples use 12 bits or fewer (the largest %d): "
                               "read as 16 bits it is nearly black — set the source's bit_depth to the camera's (12)",
                               self.name, name, int(image.max()), extra={"source": self.name})
        return np.minimum(image >> (bits - 8), 255).astype(np.uint8)

    def _gif_frames(self, name: str, data: bytes) -> Iterator[np.ndarray | None]:
        """Every frame of a GIF, composed as FFmpeg's decoder shows it (as ``type: file`` reads
        it), one image of the file at a time; a None for each that cannot be decoded."""
        images, whole = gif_images(data)
        context = av.CodecContext.create("gif", "r")
        failed, why = 0, "" if whole else "its blocks break off"
        for image in images:
            try:
                frames = context.decode(av.Packet(image))
            except av.error.FFmpegError as error:
                frames, why = [], error.strerror or type(error).__name__
            if frames:
                yield frames[0].to_ndarray(format="rgb24")
                continue
            failed += 1
            yield None
        if not images:
            failed += 1
            yield None
        if failed:
            logger.warning("source %s: %d image%s of %s could not be decoded (%s); skipped", self.name, failed,
                           "s" * (failed > 1), name, why or "no picture")
            self.decode_errors += failed
            self._skipped(name, "decode_error", f"{failed} of its images could not be decoded ({why or 'no picture'})")

    def close(self) -> None:
        self._closed.set()
