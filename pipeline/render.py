"""``segstream render``: a recorded Redis stream drawn over the video it was made from.

Entries are read in stream order and matched to the video's frames by frame number (the
``frame`` field, counted as a file source counts them); each matched frame is drawn as the
preview sink draws it and written with the entry's timestamps, so a render of a stream and the
preview of the same run hold the same frames. Frames without an entry (dropped, or trimmed from
the stream by MAXLEN) are left out.
"""

from __future__ import annotations

import logging
from pathlib import Path

from segstream.connectors.errors import SegstreamError, SinkError
from segstream.connectors.file_source import FileSource
from segstream.connectors.overlay import OverlayVideo, draw_overlay
from segstream.connectors.redis_connection import COMMAND_LINE
from segstream.connectors.redis_reader import StreamReader, _missing_stream_message, connect_redis
from segstream.pipeline.cli import redis_sentinel, redis_tls

log = logging.getLogger(__name__)

_PAGE = 256


def render_stream(client, stream: str, video: str | Path, out: str | Path, opacity: float = 0.45) -> tuple[int, int]:
    """Draw every entry of ``stream`` over its frame of ``video`` into the MP4 ``out``; returns
    the number of frames written, and of the video's frames up to the last entry that had none
    (trimmed by the stream's MAXLEN, or dropped by the pipeline)."""
    if not client.exists(stream):
        raise SinkError(_missing_stream_message(client, stream))
    if stream.endswith(":events"):
        raise SegstreamError(f"{stream} is an events stream (track and source events, no masks) — render draws "
                             f"a frames stream, e.g. {stream[: -len(':events')]}:frames")
    reader = StreamReader(client, stream, start="0")
    source = FileSource("render", str(video))
    writer = OverlayVideo(out)
    frames = iter(source.frames())
    frame = None
    missing, drawn = 0, -1
    try:
        while entries := reader.read(count=_PAGE):
            for _, result in entries:
                while frame is None or frame.index < result.index:
                    if frame is not None and frame.index > drawn:
                        missing += 1
                    frame = next(frames, None)
                    if frame is None:
                        raise SegstreamError(
                            f"{video} ends before frame {result.index} of {stream} — is it the video the stream was made from?"
                        )
                if frame.index > result.index:
                    continue  # entries out of frame order (a looping source): drawn once, first come
                if (frame.width, frame.height) != (result.width, result.height):
                    raise SegstreamError(
                        f"frame {result.index} of {video} is {frame.width}x{frame.height} but the stream's entry is "
                        f"{result.width}x{result.height} — is it the video the stream was made from?"
                    )
                writer.write(draw_overlay(frame.image, result, opacity), result.pts, result.time_base)
                drawn = frame.index
    except BaseException:
        writer.abandon()  # its own error would hide the one that stopped the render
        raise
    finally:
        source.close()
    writer.close()
    return writer.frames, missing


def main_render(args) -> int:
    if not 0 <= args.opacity <= 1:
        raise SegstreamError(f"--opacity must be between 0 and 1, got {args.opacity}")
    client = connect_redis(args.url, args.password, username=args.username, tls=redis_tls(args),
                           sentinel=redis_sentinel(args),
                           client_name="segstream-render", hint="start Redis or fix --url", names=COMMAND_LINE)
    try:
        written, missing = render_stream(client, args.stream, args.video, args.out, args.opacity)
    finally:
        client.close()
    if written == 0:
        raise SegstreamError(f"{args.stream} has no entries to draw")
    if missing:
        log.warning("%d frames of %s have no entry in %s (trimmed by its MAXLEN, or dropped by the pipeline) and "
                    "are left out", missing, args.video, args.stream)
    log.info("wrote %d frames to %s", written, args.out)
    return 0
