"""Folders and globs of still images played as video."""

from __future__ import annotations

import os
import struct
import threading
import time
from datetime import datetime
from fractions import Fraction

import cv2
import numpy as np
import pytest

from segstream.connectors.errors import SourceError
from segstream.connectors.image_source import ImageFolderSource, natural_key


def _write(path, value: int, size=(40, 30)) -> None:
    image = np.full((size[1], size[0], 3), value, np.uint8)
    assert cv2.imwrite(str(path), image)


@pytest.fixture
def folder(tmp_path):
    for n in (1, 2, 10, 9, 100):
        _write(tmp_path / f"frame{n}.png", n)
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_images_play_in_natural_order(folder):
    frames = list(ImageFolderSource("stills", str(folder)).frames())
    assert [int(f.image[0, 0, 0]) for f in frames] == [1, 2, 9, 10, 100]
    assert [f.index for f in frames] == list(range(5))
    assert sorted(["b10", "B2", "a1", "b1"], key=natural_key) == ["a1", "b1", "B2", "b10"]


def test_the_frame_rate_sets_the_timestamps(folder):
    frames = list(ImageFolderSource("stills", str(folder), fps=4).frames())
    assert [f.pts_seconds for f in frames] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert all(f.time_base == 0.25 for f in frames)


def test_a_glob_picks_its_files(folder):
    frames = list(ImageFolderSource("stills", str(folder / "frame1*.png")).frames())
    assert [int(f.image[0, 0, 0]) for f in frames] == [1, 10, 100]


def test_loop_starts_over_with_a_new_epoch_and_increasing_timestamps(folder):
    frames = list(ImageFolderSource("stills", str(folder), fps=10, loop=True, max_frames=12).frames())
    assert [f.epoch for f in frames] == [0] * 5 + [1] * 5 + [2] * 2
    pts = [f.pts for f in frames]
    assert pts == list(range(12))


def test_an_undecodable_image_is_counted_and_leaves_a_gap_in_the_timestamps_and_indices(folder):
    # an index is the image's place in the listing, as a video's rejected frame leaves a gap in
    # its frame numbers (found probing: the images source alone renumbered past a broken image)
    (folder / "frame5.png").write_bytes(b"\x89PNG broken")
    source = ImageFolderSource("stills", str(folder))
    frames = list(source.frames())
    assert source.decode_errors == 1
    assert [f.pts for f in frames] == [0, 1, 3, 4, 5]  # frame5.png was third in line
    assert [f.index for f in frames] == [0, 1, 3, 4, 5]


def test_an_image_too_large_to_decode_is_skipped_and_named_not_the_source_s_end(folder, caplog):
    # found probing bad input: a 40000x40000 PNG failed the whole source with OpenCV's assertion, unnamed
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 40_000, 40_000, 8, 2, 0, 0, 0)  # 8-bit RGB
    (folder / "frame5.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
                                        + chunk(b"IEND", b""))
    source = ImageFolderSource("stills", str(folder))
    frames = list(source.frames())
    assert source.decode_errors == 1 and [f.index for f in frames] == [0, 1, 3, 4, 5]
    assert any("frame5.png is larger than OpenCV decodes" in r.getMessage() for r in caplog.records)


def test_exif_orientation_is_applied(tmp_path):
    image = np.zeros((30, 40, 3), np.uint8)
    ok, jpeg = cv2.imencode(".jpg", image)
    # an APP1 Exif segment whose only tag is Orientation = 6 (turn 90 degrees clockwise to show)
    tiff = b"II" + struct.pack("<HI", 42, 8) + struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 3, 1, 6) + b"\0" * 4
    app1 = b"Exif\0\0" + tiff
    data = jpeg.tobytes()
    (tmp_path / "turned.jpg").write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:])
    frames = list(ImageFolderSource("stills", str(tmp_path)).frames())
    assert frames[0].image.shape == (40, 30, 3)


def test_realtime_plays_at_the_frame_rate(folder):
    source = ImageFolderSource("stills", str(folder), fps=10, realtime=True)
    start = time.monotonic()
    assert len(list(source.frames())) == 5 and source.live
    assert time.monotonic() - start >= 0.35


def test_a_folder_without_images_is_a_source_error(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(SourceError, match="no images in"):
        ImageFolderSource("stills", str(tmp_path))


def test_each_entry_names_its_image_file_through_the_pipeline(folder, tmp_path):
    """Each entry says which image it is (found probing: no way to tell), and an unreadable image
    leaves a gap in the frame numbers."""
    from segstream.connectors.files_sink import FilesSink, read_entries
    from segstream.connectors.redis_wire import from_wire
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import ColourSegmenter

    (folder / "frame5.png").write_bytes(b"\x89PNG broken")
    Runtime([ImageFolderSource("stills", str(folder))], ColourSegmenter(), [FilesSink(tmp_path / "out")],
            progress=None).run()
    entries = [from_wire(e) for e in read_entries(tmp_path / "out" / "stills.jsonl")]
    assert [(e.index, e.file) for e in entries] == [
        (i, str(folder / f"frame{n}.png")) for i, n in zip((0, 1, 3, 4, 5), (1, 2, 9, 10, 100))
    ]


def test_a_source_whose_images_all_fail_to_decode_fails_instead_of_ending(tmp_path):
    # Found probing: a folder of broken images "ended normally" with nothing read.
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"not an image")
    source = ImageFolderSource("stills", str(tmp_path))
    with pytest.raises(SourceError, match=r"^source stills: none of the 2 images in '.*' could be decoded$"):
        list(source.frames())
    assert source.decode_errors == 2
    with pytest.raises(SourceError, match=r"^source one: '.*a\.png' has no decodable image$"):
        list(ImageFolderSource("one", str(tmp_path / "a.png")).frames())


def _gif(path, frames: int) -> None:
    import av

    with av.open(str(path), "w", format="gif") as container:
        stream = container.add_stream("gif", rate=10)
        stream.width, stream.height, stream.pix_fmt = 40, 30, "rgb8"
        for n in range(frames):
            image = np.full((30, 40, 3), 80 * n, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))


def test_an_animated_gif_in_a_folder_or_a_glob_gives_all_its_frames(folder):
    # Found probing: a folder's .gif was skipped without a word, and a glob's gave its first frame only.
    _gif(folder / "frame3.gif", 4)
    frames = list(ImageFolderSource("stills", str(folder)).frames())
    names = [f.file.rsplit("/", 1)[-1] for f in frames]
    assert names == ["frame1.png", "frame2.png"] + ["frame3.gif"] * 4 + ["frame9.png", "frame10.png", "frame100.png"]
    assert [f.index for f in frames] == list(range(9)) and [f.pts for f in frames] == list(range(9))
    brightness = [f.image.mean() for f in frames[2:6]]
    assert brightness == sorted(set(brightness)), "each frame of the GIF, in order"
    assert len(list(ImageFolderSource("stills", str(folder / "*.gif")).frames())) == 4


def test_an_animated_gif_without_frame_delays_gives_all_its_frames_and_counts_one_it_cannot_decode(tmp_path):
    # Found probing: PIL's save_all without duration writes no delays, FFmpeg's demuxer then hands
    # the whole file over as one packet, and its decoder made the first of the frames only.
    import re

    _gif(tmp_path / "timed.gif", 3)
    data = (tmp_path / "timed.gif").read_bytes()
    untimed = b"GIF87a" + re.sub(rb"\x21\xf9\x04.{4}\x00|\x21\xff\x0bNETSCAPE2\.0\x03\x01..\x00", b"", data[6:],
                                  flags=re.S)  # graphic control and looping extensions taken out
    assert len(untimed) == len(data) - 3 * 8 - 19, "the delays must be gone for this test to mean anything"
    (tmp_path / "untimed.gif").write_bytes(untimed)
    source = ImageFolderSource("stills", str(tmp_path / "untimed.gif"))
    frames = list(source.frames())
    assert [f.index for f in frames] == [0, 1, 2] and source.decode_errors == 0
    assert [round(f.image.mean() / 80) for f in frames] == [0, 1, 2], "each frame, in order"

    second = untimed.index(b"\x2c", untimed.index(b"\x2c") + 1)  # the second image's descriptor
    (tmp_path / "broken.gif").write_bytes(untimed[:second] + b"\x99" + untimed[second + 1:])
    broken = ImageFolderSource("stills", str(tmp_path / "broken.gif"))
    assert [f.index for f in broken.frames()] == [0] and broken.decode_errors == 1, "the rest counted, not silent"


# --- timestamps: name and mtime ------------------------------------------------------------

NIGHT = [("site_20261204_130501.jpg", 0), ("site_20261204_130511.jpg", 10),  # then two hours without images
         ("site_20261204_150521.jpg", 7220), ("site_20261204_150531.jpg", 7230)]
FIRST = 1796389501.0  # 2026-12-04 13:05:01 UTC


def _square(path, at: int = 0) -> None:
    """A red square on black (what ColourSegmenter segments as one thing), ``at`` pixels in."""
    image = np.zeros((30, 40, 3), np.uint8)
    image[5:15, 5 + at:15 + at] = (0, 0, 255)  # BGR
    assert cv2.imwrite(str(path), image)


def test_name_timestamps_keep_a_night_gap_and_capture_the_named_time(tmp_path):
    # Found probing an FTP timelapse: the 2-hour night became 10 s, and no frame had its capture time.
    for name, _ in reversed(NIGHT):
        _square(tmp_path / name)
    _square(tmp_path / "a_20261204_130506.jpg")  # between the first two by time, first by name
    source = ImageFolderSource("site", str(tmp_path), timestamps="name", timestamp_zone="UTC")
    frames = list(source.frames())
    assert [f.file.rsplit("/", 1)[1] for f in frames] == [NIGHT[0][0], "a_20261204_130506.jpg", *(n for n, _ in NIGHT[1:])]
    assert [f.pts_seconds for f in frames] == [0.0, 5.0, 10.0, 7220.0, 7230.0]
    assert [f.capture_wall - FIRST for f in frames] == [0.0, 5.0, 10.0, 7220.0, 7230.0]
    assert [f.index for f in frames] == list(range(5)) and frames[0].time_base == Fraction(1, 1000)
    assert [f.pts for f in frames] == [0, 5000, 10000, 7220000, 7230000]


def test_name_times_without_a_zone_are_local_unless_a_zone_is_given(tmp_path):
    _square(tmp_path / NIGHT[0][0])
    local = next(ImageFolderSource("site", str(tmp_path), timestamps="name").frames())
    assert local.capture_wall == datetime(2026, 12, 4, 13, 5, 1).timestamp()
    berlin = next(ImageFolderSource("site", str(tmp_path), timestamps="name", timestamp_zone="Europe/Berlin").frames())
    assert berlin.capture_wall == FIRST - 3600
    offset = next(ImageFolderSource("site", str(tmp_path), timestamps="name", timestamp_zone="-05:00").frames())
    assert offset.capture_wall == FIRST + 5 * 3600


@pytest.mark.parametrize("name, seconds", [
    ("site_20261204_130501.jpg", 0.0),
    ("IMG20261204130501.jpg", 0.0),
    ("cam1_2026-12-04_13-05-01.jpg", 0.0),
    ("2026-12-04T13:05:01.jpg", 0.0),
    ("2026-12-04T13:05:01.250Z.jpg", 0.25),
    ("2026-12-04T14:05:01+01:00.png", 0.0),  # the zone the name writes wins over timestamp_zone
    ("20261204T140501+0100.png", 0.0),
    ("192.168.1.64_01_20261204130501750_MOTION_DETECTION.jpg", 0.75),  # milliseconds straight after
    ("site_20261204_130501-0001.jpg", 0.0),  # a counter after the time, no zone
    ("2026.12.04 13.05.01.jpg", 0.0),
])
def test_the_usual_namings_are_read(name, seconds):
    from segstream.connectors.image_times import NameTimes, zone_of

    assert NameTimes(zone=zone_of("UTC")).unix(name) == FIRST + seconds


@pytest.mark.parametrize("name", ["frame_0001.png", "20261204.jpg", "site_20261204_1305.jpg", "20261231_250000.jpg",
                                  "20261304_130501.jpg", "x120261204_130501.jpg"])
def test_names_without_a_whole_time_have_none(name):
    from segstream.connectors.image_times import NameTimes

    assert NameTimes().unix(name) is None


def test_a_timestamp_format_reads_other_namings():
    from segstream.connectors.image_times import NameTimes, format_problem, zone_of

    utc = zone_of("UTC")
    assert NameTimes("cam1-%d.%m.%Y-%Hh%Mm%Ss", utc).unix("cam1-04.12.2026-13h05m01s.jpg") == FIRST
    assert NameTimes("%y%m%d%H%M%S", utc).unix("snap_261204130501_3.jpg") == FIRST
    assert NameTimes("%s", utc).unix("capture_1796389501.jpg") == FIRST
    assert NameTimes("%Y%m%d%H%M%S", utc).unix("frame_0001.jpg") is None
    assert "no whole date" in format_problem("%H%M%S")
    assert "'%a', which is not read" in format_problem("%a %Y%m%d")


def test_equal_times_keep_their_order_a_millisecond_apart(tmp_path):
    for name in ("site_20261204_130501_1.jpg", "site_20261204_130501_2.jpg", "site_20261204_130502.jpg"):
        _square(tmp_path / name)
    frames = list(ImageFolderSource("site", str(tmp_path), timestamps="name", timestamp_zone="UTC").frames())
    assert [f.pts for f in frames] == [0, 1, 1000], "pts strictly increasing, back on the images' times after"
    assert [f.capture_wall - FIRST for f in frames] == [0.0, 0.0, 1.0]


def test_mtime_timestamps_follow_the_files_modification_times(tmp_path):
    for n, (_, seconds) in enumerate(NIGHT):
        path = tmp_path / f"shot{9 - n}.jpg"  # natural order is the reverse of the times'
        _square(path)
        os.utime(path, (FIRST + seconds, FIRST + seconds))
    frames = list(ImageFolderSource("site", str(tmp_path), timestamps="mtime").frames())
    assert [f.file.rsplit("/", 1)[1] for f in frames] == ["shot9.jpg", "shot8.jpg", "shot7.jpg", "shot6.jpg"]
    assert [f.pts_seconds for f in frames] == [0.0, 10.0, 7220.0, 7230.0]
    assert [f.capture_wall for f in frames] == [FIRST + s for _, s in NIGHT]


def test_an_image_without_a_time_in_its_name_is_skipped_and_named(tmp_path, caplog):
    _square(tmp_path / NIGHT[0][0])
    _square(tmp_path / "snapshot.jpg")
    frames = list(ImageFolderSource("site", str(tmp_path), timestamps="name").frames())
    assert [f.file.rsplit("/", 1)[1] for f in frames] == [NIGHT[0][0]]
    [line] = [r.getMessage() for r in caplog.records if "snapshot.jpg" in r.getMessage()]
    assert "has no date and time in its name; not read — timestamps: name reads names such as" in line
    assert "timestamp_format" in line
    (tmp_path / NIGHT[0][0]).unlink()
    with pytest.raises(SourceError, match=r"^source site: no image in '.*' has a date and time in its name "
                                          r"\(such as 'snapshot.jpg'\) — .*timestamp_format"):
        ImageFolderSource("site", str(tmp_path), timestamps="name")


def test_realtime_plays_images_timed_by_their_names_at_fps_not_at_their_gaps(tmp_path):
    for name, _ in NIGHT:
        _square(tmp_path / name)
    source = ImageFolderSource("site", str(tmp_path), fps=20, realtime=True, timestamps="name")
    start = time.monotonic()
    frames = list(source.frames())
    took = time.monotonic() - start
    assert source.live and 0.14 <= took < 2.0, "a frame every 1/20 s: the night is not slept through"
    assert [f.pts_seconds for f in frames] == [s for _, s in NIGHT], "the timestamps stay the images' own"


def test_a_thing_loses_its_id_over_the_night_with_max_lost_s(tmp_path):
    # Found probing: through a 2-hour gap read as 10 s, a tracked thing kept its id with max_lost_s 60.
    from segstream.pipeline.builders import build_sources
    from segstream.pipeline.config import validate_config
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import CollectingSink, ColourSegmenter

    for n, (name, _) in enumerate(NIGHT):
        _square(tmp_path / name, at=n)

    def ids(timestamps: str) -> tuple[list[int], list[str]]:
        cfg = validate_config({"sources": [{"name": "site", "type": "images", "path": str(tmp_path), "fps": 0.1,
                                            "timestamps": timestamps}], "tracking": {"max_lost_s": 60, "min_hits": 1}})
        sink = CollectingSink()
        Runtime.from_config(cfg, build_sources(cfg.sources), ColourSegmenter(), [sink], progress=None).run()
        reasons = [e.data.get("reason") for e in sink.events if e.kind == "track_ended"]
        return [int(r.segments.track_ids[0]) for r in sink.results], reasons

    tracks, reasons = ids("name")
    assert tracks[0] == tracks[1] and tracks[2] == tracks[3] and tracks[1] != tracks[2]
    assert reasons == ["lost", "end"]
    assert len(set(ids("fps")[0])) == 1, "timed by fps the night is 10 s: this test would mean nothing"


def test_the_latency_of_images_timed_by_their_names_runs_from_their_read(tmp_path):
    # found in review: an image's capture_ts is its own (hours old for a folder's backlog), and the
    # run's latency (status line, capture_to_publish histogram, the p99 > 1 s alert) took it as segstream's
    from segstream.connectors.files_sink import FilesSink, read_entries
    from segstream.connectors.redis_wire import from_wire
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import ColourSegmenter

    folder = tmp_path / "in"
    folder.mkdir()
    for n, (name, _) in enumerate(NIGHT):
        _square(folder / name, at=n)
    source = ImageFolderSource("site", str(folder), timestamps="name", timestamp_zone="UTC")
    runtime = Runtime([source], ColourSegmenter(), [FilesSink(tmp_path / "out")], progress=None)
    report = runtime.run()
    assert report.published == 4 and report.latency_ms_max < 30_000  # not the images' age: years, hours
    captured = [from_wire(e).capture_ts for e in read_entries(tmp_path / "out" / "site.jsonl")]
    assert captured == [FIRST + s for _, s in NIGHT], "the entries keep the images' own times"


# --- watch -----------------------------------------------------------------------------------


class _Reader:
    """Reads a source's frames on a thread of its own, as the runtime's decode thread does."""

    def __init__(self, source: ImageFolderSource):
        self.source, self.frames, self.error, self.events = source, [], None, []
        source.on_event = lambda kind, data: self.events.append((kind, data))  # as the runtime takes them
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for frame in self.source.frames():
                self.frames.append(frame)
        except Exception as error:  # noqa: BLE001 - the test looks at it
            self.error = error

    def names(self) -> list[str]:
        return [f.file.rsplit("/", 1)[1] for f in self.frames]

    def until(self, count: int, timeout_s: float = 5.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while len(self.frames) < count and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.01)
        return self.names()

    def stop(self) -> float:
        start = time.monotonic()
        self.source.close()
        self.thread.join(5)
        assert not self.thread.is_alive() and self.error is None
        return time.monotonic() - start


def _arrive(path, at: int = 0) -> None:
    """An image uploaded whole: written under a hidden name, then renamed (the watch tests read
    files at once, settle_s 0)."""
    hidden = path.with_name(f".{path.name}")
    _square(hidden, at)
    os.replace(hidden, path)


def _watching(folder, **keys) -> ImageFolderSource:
    keys = {"poll_s": 0.02, "settle_s": 0.0, **keys}
    return ImageFolderSource("site", str(folder), watch=True, **keys)


def test_watch_reads_the_images_there_then_each_new_one_in_order_never_twice(tmp_path):
    _square(tmp_path / NIGHT[1][0])
    _square(tmp_path / NIGHT[0][0])
    reader = _Reader(_watching(tmp_path, timestamps="name", timestamp_zone="UTC"))
    assert reader.until(2) == [NIGHT[0][0], NIGHT[1][0]]
    _arrive(tmp_path / NIGHT[2][0])
    assert reader.until(3) == [n for n, _ in NIGHT[:3]]
    _arrive(tmp_path / NIGHT[3][0])
    assert reader.until(4) == [n for n, _ in NIGHT]
    time.sleep(0.2)  # several more looks at the folder: nothing read again
    assert reader.stop() < 1.0
    assert reader.names() == [n for n, _ in NIGHT]
    assert [f.pts_seconds for f in reader.frames] == [s for _, s in NIGHT]
    assert [f.index for f in reader.frames] == [0, 1, 2, 3]


def test_watch_from_new_leaves_the_images_there_out(tmp_path):
    _square(tmp_path / "old1.png")
    _square(tmp_path / "old2.png")
    reader = _Reader(_watching(tmp_path, watch_from="new"))
    time.sleep(0.15)
    assert reader.frames == []
    _arrive(tmp_path / "old3.png")
    assert reader.until(1) == ["old3.png"]
    reader.stop()


def test_watch_waits_through_a_night_without_ending_and_stops_promptly(tmp_path):
    from segstream.connectors.threads import input_wait

    reader = _Reader(_watching(tmp_path, poll_s=0.05))  # an empty folder: images are still to come
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline and input_wait(reader.thread.ident) is None:
        time.sleep(0.01)
    assert input_wait(reader.thread.ident) == f"watching '{tmp_path}' for new images", "/healthz: waiting, not stuck"
    time.sleep(0.3)
    assert reader.thread.is_alive() and reader.error is None, "a folder without images yet is no end"
    _arrive(tmp_path / "first.png")
    assert reader.until(1) == ["first.png"]
    source = reader.source
    source.poll_s = 30.0  # a long poll: close() must not wait for it
    time.sleep(0.1)
    assert reader.stop() < 1.0
    assert input_wait(reader.thread.ident) is None


def test_watch_does_not_read_a_file_still_being_written(tmp_path):
    _square(tmp_path / "whole.jpg")
    data = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "whole.jpg").unlink()
    reader = _Reader(_watching(tmp_path, settle_s=1.0, timestamps="name"))
    with open(tmp_path / NIGHT[0][0], "wb") as upload:  # an FTP upload written in place
        upload.write(data[: len(data) // 2])
        upload.flush()
        time.sleep(0.3)
        assert reader.frames == [], "half a JPEG read"
        upload.write(data[len(data) // 2:])
    assert reader.until(1) == [NIGHT[0][0]]
    reader.stop()
    assert reader.source.decode_errors == 0


def test_watch_leaves_hidden_and_part_files_for_later(tmp_path):
    # uploads some FTP servers and clients name apart until they are whole, then rename
    first, second, third = (name for name, _ in NIGHT[:3])
    _square(tmp_path / first)
    reader = _Reader(_watching(tmp_path, timestamps="name"))
    assert reader.until(1) == [first]
    _square(tmp_path / f".{second}")
    (tmp_path / f"{third}.part").write_bytes((tmp_path / first).read_bytes())
    time.sleep(0.2)
    assert reader.names() == [first]
    (tmp_path / f".{second}").rename(tmp_path / second)
    assert reader.until(2) == [first, second]
    reader.stop()


def test_watch_says_a_late_file_and_does_not_read_it(tmp_path, caplog):
    _square(tmp_path / NIGHT[1][0])
    reader = _Reader(_watching(tmp_path, timestamps="name", timestamp_zone="UTC"))
    assert reader.until(1) == [NIGHT[1][0]]
    _arrive(tmp_path / NIGHT[0][0])  # from before the image already read
    _arrive(tmp_path / NIGHT[2][0])
    assert reader.until(2) == [NIGHT[1][0], NIGHT[2][0]]
    reader.stop()
    [line] = [r.getMessage() for r in caplog.records if "not read" in r.getMessage()]
    assert NIGHT[0][0] in line and "at or before that of the last image read (2026-12-04 13:05:11" in line
    # counted, not only said (found probing an inspection line: parts after a counter's wrap went unread, 0 counted)
    assert (reader.source.frames_out_of_order, reader.source.frames_skipped) == (1, 1)
    assert "counted as skipped, out of order" in line
    [event] = reader.events
    assert event[0] == "image_skipped" and event[1]["reason"] == "out_of_order"
    assert event[1]["file"].endswith(NIGHT[0][0])


def test_images_out_of_order_are_said_in_the_summary_and_the_ended_event():
    from segstream.pipeline.metrics import RunMetrics
    from segstream.pipeline.runtime import RunReport, SourceReport, skipped_why

    assert skipped_why(3, 0, 0, 3) == "out of order"
    assert skipped_why(5, 0, 0, 2) == "max_fps 3, out of order 2"
    metrics = RunMetrics(["cam"])
    metrics.skipped("cam", 2, out_of_order=2)
    assert metrics.source("cam").outcome()["out_of_order"] == 2
    line = RunReport({"cam": SourceReport(decoded=4, published=4, skipped=2, out_of_order=2)}, 1, 4, 1.0, False,
                     1.0, 1.0, 1.0).summary()
    assert "skipped 2 (out of order)" in line


def test_watch_reads_the_hour_the_clocks_going_back_bring_again(tmp_path):
    # found in review: names in local time without a zone, 02:xx written twice on the night the
    # clocks go back (Europe/Berlin, 2026-10-25): the second hour's came "before the last read", unread
    first_hour = ["cam_20261025_015900.jpg", "cam_20261025_020000.jpg", "cam_20261025_025900.jpg"]
    for name in first_hour:
        _square(tmp_path / name)
    reader = _Reader(_watching(tmp_path, timestamps="name", timestamp_zone="Europe/Berlin"))
    assert reader.until(3) == first_hour
    again = ["cam_20261025_020000b.jpg", "cam_20261025_023000.jpg", "cam_20261025_030000.jpg"]
    for name in again:
        _arrive(tmp_path / name)
    assert reader.until(6) == first_hour + again
    reader.stop()
    seconds = [f.pts_seconds for f in reader.frames]
    assert seconds == [0.0, 60.0, 3600.0, 3660.0, 5460.0, 7260.0]  # the second 02:00 an hour after the first


def test_a_watched_source_streams_in_the_runtime_while_it_waits(tmp_path):
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import CollectingSink, ColourSegmenter

    sink = CollectingSink()
    runtime = Runtime([_watching(tmp_path)], ColourSegmenter(), [sink], progress=None)
    thread = threading.Thread(target=runtime.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while runtime.metrics.source("site").state != "streaming" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert runtime.metrics.source("site").state == "streaming", "watching an empty folder is streaming"
    _arrive(tmp_path / "a.png")
    while not sink.results and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [r.file for r in sink.results] == [str(tmp_path / "a.png")]
    assert thread.is_alive() and runtime.metrics.source("site").state == "streaming"
    runtime.stop()
    thread.join(5)
    assert not thread.is_alive() and runtime.metrics.source("site").state == "ended"


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_a_12_bit_camera_s_16_bit_images_come_out_at_their_levels_with_bit_depth(tmp_path, ext, caplog):
    # found probing an inspection line: 12-bit samples in 16-bit files read as the high byte, nearly black
    levels = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (48, 1))
    cv2.imwrite(str(tmp_path / f"part1{ext}"), levels)
    cv2.imwrite(str(tmp_path / f"part2{ext}"), levels)
    as_12 = [f.image for f in ImageFolderSource("line", str(tmp_path), bit_depth=12).frames()]
    np.testing.assert_array_equal(as_12[0][..., 0], (levels >> 4).astype(np.uint8))
    assert as_12[0][:, -1].max() == 255
    as_16 = [f.image for f in ImageFolderSource("line", str(tmp_path)).frames()]
    assert as_16[0].max() == 15  # the high byte, as before: but said, once
    said = [r.getMessage() for r in caplog.records if "12 bits or fewer" in r.getMessage()]
    assert len(said) == 1 and "set the source's bit_depth to the camera's (12)" in said[0]


def test_a_full_range_16_bit_image_reads_as_opencv_reads_it_and_8_bit_ones_unchanged(tmp_path):
    rng = np.random.default_rng(3)
    full = rng.integers(0, 65536, (40, 60, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), full)
    cv2.imwrite(str(tmp_path / "b.png"), full[..., 0].astype(np.uint8))  # 8-bit grey
    frames = [f.image for f in ImageFolderSource("line", str(tmp_path)).frames()]
    for frame, name in zip(frames, ("a.png", "b.png")):
        expected = cv2.cvtColor(cv2.imread(str(tmp_path / name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(frame, expected)
    with pytest.raises(SourceError, match="bit_depth is the bits of 16-bit images' samples, 9 to 16, got 8"):
        ImageFolderSource("line", str(tmp_path), bit_depth=8)


def test_an_image_that_cannot_be_read_is_named_on_the_events_stream(tmp_path):
    # found probing an inspection line: a failed part was a gap in `frame`, its file named only in the log
    from segstream.pipeline.config import validate_config
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import CollectingSink, ColourSegmenter

    _square(tmp_path / "part1.png")
    (tmp_path / "part2.png").write_bytes(b"\x89PNG not really")
    _square(tmp_path / "part3.png")
    cfg = validate_config({"sources": [{"name": "line", "type": "images", "path": str(tmp_path)}],
                           "model": {"device": "cpu"}, "sinks": {"redis": {"enabled": False}}})
    sink = CollectingSink()
    report = Runtime.from_config(cfg, [ImageFolderSource("line", str(tmp_path))], ColourSegmenter(), [sink],
                                 progress=False).run()
    assert report.sources["line"].published == 2
    [skipped] = [e for e in sink.events if e.kind == "image_skipped"]
    assert skipped.data["file"].endswith("part2.png") and skipped.data["reason"] == "decode_error"
    assert "not an image OpenCV can decode" in skipped.data["detail"] and skipped.source == "line"


def test_an_empty_new_file_holds_the_images_after_it_for_empty_settle_s_then_fails(tmp_path):
    # found probing an inspection line: a crashed write held every later part 30 s, not settable
    reader = _Reader(_watching(tmp_path, settle_s=0.05, empty_settle_s=0.6))
    first, second = (name for name, _ in NIGHT[:2])
    (tmp_path / first).write_bytes(b"")  # its data never comes
    _arrive(tmp_path / second)
    time.sleep(0.3)
    assert reader.frames == [], "the image after an empty one waits for it"
    assert reader.until(1) == [second]
    reader.stop()
    assert reader.source.decode_errors == 1
    assert [(kind, data["reason"]) for kind, data in reader.events] == [("image_skipped", "decode_error")]
