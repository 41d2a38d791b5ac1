"""``segstream render``: a recorded Redis stream drawn over the video it was made from.

Entries are read in stream order and matched to the video's frames by frame number (the
``frame`` field, counted as a file source counts them); each matched frame is drawn as the
preview sink draws it and written with the entry's timestamps, so a render of a stream and the
preview of the same run hold the same frames. Frames without an entry (dropped, trimmed from the
stream by MAXLEN, or after the run's last entry) are left out, and counted.

A stream written by a pipeline that was restarted holds several runs (each with its own
``run_id``, frame numbers from 0 in each): one is drawn, the latest unless ``--run`` names another
by run id or by number (1 the oldest, -1 the latest).

``--level K`` draws level K of each entry's segment hierarchy (``levels``, 0 the finest; SeNaTra
models write them) instead of its segments; a run with an entry of fewer levels is refused before
anything is drawn.

The MP4 is written under a hidden name beside ``--out`` and renamed to it once finished, so
``--out`` only ever holds a whole video: a render that fails (a video shorter than the stream, a
full disk) or is interrupted removes what it wrote and leaves an earlier file there as it was.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from tqdm import tqdm

from segstream.connectors.errors import ConfigError, SegstreamError, SinkError
from segstream.connectors.file_source import FileSource
from segstream.connectors.frames import Frame
from segstream.connectors.overlay import OutputWriteError, OverlayVideo, draw_overlay
from segstream.connectors.output_files import replace_synced
from segstream.connectors.redis_connection import COMMAND_LINE, error_summary, redis_address
from segstream.connectors.redis_reader import StreamReader, _missing_stream_message, _refusal, connect_redis
from segstream.connectors.terminal import bar_shape, bars_off
from segstream.models.results import FrameResult
from segstream.pipeline.cli import redis_sentinel, redis_tls
from segstream.pipeline.logs import json_logging

log = logging.getLogger(__name__)

_PAGE = 256  # entries read a time without their masks (the runs of a stream)
# and with them, decoded (a frame-size label map each: 33 MB at 4K, so 256 would hold 8 GB)
_DRAWN_PAGE = 8
LATEST = "latest"


@dataclass(slots=True)
class StreamRun:
    """One pipeline run's entries in a stream: its ``run_id`` ("" for entries written before
    entries carried one), how many entries it has, the stream ID before its first entry (where
    a read of it starts) and its last entry's ID; the fewest hierarchy levels an entry of it has,
    and the frame of the first entry that has that few."""

    run_id: str
    entries: int
    after: str
    last: str
    levels: int = 0
    fewest_levels_at: int = 0

    @property
    def name(self) -> str:
        return self.run_id or "(entries without run_id)"


def stream_runs(client, stream: str) -> list[StreamRun]:
    """The runs whose entries ``stream`` holds, oldest first (by their first entry)."""
    runs: dict[str, StreamRun] = {}
    previous = "0"
    reader = StreamReader(client, stream, start="0", decode_masks=False)
    while entries := reader.read(count=_PAGE):
        for entry_id, result in entries:
            run = runs.setdefault(result.run_id, StreamRun(result.run_id, 0, previous, entry_id,
                                                           len(result.levels), result.index))
            run.entries += 1
            if len(result.levels) < run.levels:
                run.levels, run.fewest_levels_at = len(result.levels), result.index
            run.last = previous = entry_id
    return list(runs.values())


def pick_run(runs: list[StreamRun], stream: str, wanted: str | None, doing: str = "drawing") -> StreamRun:
    """The run ``wanted`` names (a run id, ``latest``, or a number: 1 the oldest, -1 the latest;
    None: the latest, said in a line when there are others, ``doing`` what with it)."""
    choices = ", ".join(f"{number} {run.name} ({run.entries} entries)" for number, run in enumerate(runs, 1))
    if wanted is None or wanted == LATEST:
        chosen = runs[-1]
        if wanted is None and len(runs) > 1:
            log.warning("%s holds %d runs: %s; %s the latest, %s — choose another with --run RUN_ID or "
                        "--run NUMBER", stream, len(runs), choices, doing, chosen.name)
        return chosen
    for run in runs:
        if run.run_id == wanted:
            return run
    try:
        number = int(wanted)
    except ValueError:
        number = 0
    if 1 <= number <= len(runs) or -len(runs) <= number <= -1:
        return runs[number - 1 if number > 0 else number]
    raise ConfigError(f"{stream} holds no run {wanted!r} — its runs: {choices}; give --run one of those run ids, "
                         f"a number from 1 (the oldest) to {len(runs)}, -1 or {LATEST}")


def check_level(run: StreamRun, stream: str, level: int) -> None:
    """Refuse ``--level`` when an entry of ``run`` has no level ``level``."""
    if level < run.levels:
        return
    where = f"frame {run.fewest_levels_at} of {stream} (run {run.name})"
    if run.levels == 0:
        raise ConfigError(f"--level {level}: {where} has no segment hierarchy (its model makes none, or "
                          "sinks.redis.levels was false) — leave --level out to draw the entries' segments")
    raise ConfigError(f"--level {level}: {where} has {run.levels} hierarchy level{'s' if run.levels > 1 else ''} "
                      f"— give --level 0 (the finest) to {run.levels - 1}, or leave --level out to draw the "
                      "entries' segments")


def _entry_key(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def render_stream(client, stream: str, video: str | Path, out: str | Path, opacity: float = 0.45,
                  run: str | None = None, level: int | None = None,
                  progress: bool | None = False) -> tuple[int, int, StreamRun]:
    """Draw the entries of one run of ``stream`` (``pick_run``) over their frames of ``video``
    into the MP4 ``out`` (their segments, or level ``level`` of their hierarchy), with a progress
    bar on stderr (``progress`` None: when it is a terminal); returns the
    number of frames written, the number of the video's frames that had no entry (trimmed by the
    stream's MAXLEN, dropped or left out by the pipeline, or after the run's last entry), and the
    run drawn."""
    if not client.exists(stream):
        raise SinkError(_missing_stream_message(client, stream))
    if stream.endswith(":events"):
        raise SegstreamError(f"{stream} is an events stream (track and source events, no masks) — render draws "
                             f"a frames stream, e.g. {stream[: -len(':events')]}:frames")
    runs = stream_runs(client, stream)
    if not runs:
        raise SegstreamError(f"{stream} has no entries to draw")
    chosen = pick_run(runs, stream, run)
    if level is not None:
        check_level(chosen, stream, level)
    out = Path(out)
    if out.is_dir():
        raise OutputWriteError(out, os.strerror(errno.EISDIR), errno.EISDIR, "create")
    source = FileSource("render", str(video))
    partial = out.with_name(f".{out.name}.{os.getpid()}.part")  # hidden: no player offered it half done
    writer = OverlayVideo(partial)
    frames = iter(source.frames())
    frame = None
    missing, drawn = 0, -1
    # a 5K render of a long flight wrote nothing for minutes but its last line (found probing drone footage)
    bar = tqdm(total=chosen.entries, desc="render", unit="frame", file=sys.stderr,
               disable=True if progress is False or json_logging() else bars_off() if progress is None else False,
               **bar_shape())
    try:
        for result in _entries_of(StreamReader(client, stream, start=chosen.after), chosen):
            while frame is None or frame.index < result.index:
                if frame is not None and frame.index > drawn:
                    missing += 1
                frame = next(frames, None)
                if frame is None:
                    raise SegstreamError(f"{video} ends before frame {result.index} of {stream}, so {out} is not "
                                         "written — is it the video the stream was made from?")
            if frame.index > result.index:
                continue  # entries out of frame order (a looping source): drawn once, first come
            if (frame.width, frame.height) != (result.width, result.height):
                raise SegstreamError(
                    f"frame {result.index} of {video} is {frame.width}x{frame.height} but the stream's entry is "
                    f"{result.width}x{result.height} — is it the video the stream was made from?"
                )
            writer.write(draw_overlay(frame.image, result, opacity, level=level), result.pts, result.time_base,
                         frame.sample_aspect)
            drawn = frame.index
            bar.update()
        if frame is not None and frame.index > drawn:
            missing += 1
        frames.close()
        missing += _frames_after(video, frame, source.leading_errors)  # after the run's last entry
        writer.close()
        if writer.frames:
            try:
                replace_synced(partial, out)
            except OSError as error:
                raise OutputWriteError(partial, error.strerror or str(error), error.errno, "create") from None
    except BaseException as error:
        writer.abandon()  # its own error would hide the one that stopped the render
        with contextlib.suppress(OSError):  # never made (a read-only folder), or not ours to remove
            partial.unlink()
        if isinstance(error, OutputWriteError):  # said of the file asked for, not of its hidden name
            raise OutputWriteError(out, error.reason, error.errno, error.verb) from None
        raise
    finally:
        bar.close()
        source.close()
    return writer.frames, missing, chosen


def _frames_after(video: str | Path, last: Frame | None, unnumbered: int = 0) -> int:
    """How many frames ``video`` holds after ``last`` (the last one read), counted from its
    packets, none decoded (decoding the rest of a long 4K recording behind a short run took
    minutes): all its video packets but the frames read (``last.index`` counts those it lost or
    rejected too) and the ``unnumbered`` ones rejected before its first frame (the source's
    ``leading_errors``, which ``last.index`` does not count). Not by timestamps: an elementary
    stream has none, a concatenated TS starts them again, and B-frames put them out of the
    packets' order. 0 when the video cannot be read again (the count is for the warning only)."""
    import av

    from segstream.connectors.av_input import video_stream

    if last is None:
        return 0
    try:
        with av.open(str(video)) as container:
            stream = video_stream(container, str(video))  # the one the source read
            packets = sum(1 for p in container.demux(stream) if p.size and not p.is_discard)
    except (av.FFmpegError, SegstreamError, OSError) as error:
        log.warning("could not count the frames of %s after frame %d: %s", video, last.index, error)
        return 0
    return max(0, packets - (last.index + 1) - unnumbered)


def _entries_of(reader: StreamReader, run: StreamRun) -> Iterator[FrameResult]:
    """The results of ``run``'s entries, in stream order, read up to its last entry."""
    last = _entry_key(run.last)
    while entries := reader.read(count=_DRAWN_PAGE):
        for entry_id, result in entries:
            if _entry_key(entry_id) > last:
                return
            if result.run_id == run.run_id:  # else another run's, written while this one ran
                yield result


def main_render(args) -> int:
    if str(args.out) == "-":  # it wrote a file named '-'
        raise ConfigError("--out -: an MP4 cannot go to standard output (its index is written once the video "
                          "ends, and a player needs it first) — give a file name, such as --out overlay.mp4")
    if not 0 <= args.opacity <= 1:
        raise ConfigError(f"--opacity must be between 0 and 1, got {args.opacity}")
    if args.level is not None and args.level < 0:
        raise ConfigError(f"--level must be 0 (the finest level) or more, got {args.level}")
    if not Path(args.video).is_file():  # before asking Redis anything
        raise ConfigError(f"--video '{args.video}' does not exist or is no file — give the video the stream was "
                          "made from")
    if Path(args.out).exists() and Path(args.out).samefile(args.video):  # found probing: the input was replaced
        raise ConfigError(f"--out '{args.out}' is the video it reads (--video): it would be overwritten — give "
                          "another file name, such as --out overlay.mp4")
    client = connect_redis(args.url, args.password, username=args.username, tls=redis_tls(args),
                           sentinel=redis_sentinel(args),
                           client_name="segstream-render", hint="start Redis or fix --url", names=COMMAND_LINE)
    try:
        written, missing, run = render_stream(client, args.stream, args.video, args.out, args.opacity, args.run,
                                              args.level, getattr(args, "progress", None))
    except redis.exceptions.NoPermissionError as error:  # found probing: a user without EXISTS, or the key, a traceback
        raise _refusal(error, args.stream, redis_address(client), f"~{args.stream}") from None
    except (redis.ConnectionError, redis.TimeoutError) as error:
        raise SinkError(f"lost Redis at {redis_address(client)}: {error_summary(error)} — check that it still "
                        "runs") from None
    except redis.ResponseError as error:
        raise SinkError(f"Redis at {redis_address(client)} refused: {error_summary(error)} — check that the URL "
                        "names the Redis that keeps the streams") from None
    finally:
        client.close()
    if written == 0:
        raise SegstreamError(f"{args.stream} has no entries to draw")
    if missing:
        log.warning("%d of the %d frames of %s have no entry in %s (trimmed by its MAXLEN, dropped or left out by "
                    "the pipeline, or after the run's last entry) and are left out", missing, written + missing,
                    args.video, args.stream)
    log.info("wrote %d frames of run %s to %s", written, run.name, args.out)
    return 0
