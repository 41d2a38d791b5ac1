"""Folders and globs of still images played as video."""

from __future__ import annotations

import struct
import time

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
