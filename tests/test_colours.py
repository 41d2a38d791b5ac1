"""The colours and fields of the video segstream reads and writes: HDR tone-mapped to SDR, an
untagged HD video read as BT.709, 10-bit video at its levels, interlaced frames made whole, and
the videos it writes in BT.709 and tagged so. Each clip is made here with PyAV or ffmpeg, from
flat patches whose RGB is known."""

from __future__ import annotations

import json
import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest
from segstream.connectors.errors import ConfigError
from segstream.connectors.file_source import FileSource
from segstream.connectors.overlay import OverlayVideo
from segstream.pipeline.config import load_config
from segstream.pipeline.source_states import first_frame

from tests.conftest import unlocated

# saturated, pastel, grey, near black, near white: 4 x 3 patches
PATCHES = [(235, 30, 30), (30, 200, 40), (20, 40, 230), (240, 220, 20), (20, 210, 220), (220, 30, 210),
           (128, 128, 128), (8, 8, 8), (250, 250, 250), (190, 120, 60), (60, 90, 140), (255, 0, 0)]


def _patches(width: int, height: int) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    h, w = height // 3, width // 4
    for i, colour in enumerate(PATCHES):
        row, column = divmod(i, 4)
        image[row * h : (row + 1) * h, column * w : (column + 1) * w] = colour
    return image


def _inside(width: int, height: int) -> np.ndarray:
    """The patches' pixels away from their edges (where chroma subsampling blends two)."""
    mask = np.zeros((height, width), bool)
    h, w = height // 3, width // 4
    for row in range(3):
        for column in range(4):
            mask[row * h + 8 : (row + 1) * h - 8, column * w + 8 : (column + 1) * w - 8] = True
    return mask


def _encode(path, image: np.ndarray, pix_fmt: str, matrix: int, tags: dict[str, int] | None, codec: str = "libx264",
            transfer: int | None = None, primaries: int | None = None) -> str:
    """A lossless clip of 3 frames of ``image``: converted to ``pix_fmt`` with colour ``matrix``
    (and ``transfer``/``primaries``: swscale maps SDR into them), tagged with ``tags`` (None:
    untagged)."""
    rgb = av.VideoFrame.from_ndarray(image, format="rgb24")
    rgb.color_trc = rgb.color_primaries = 1  # BT.709: what the patches are
    extra = {} if transfer is None else {"dst_color_trc": transfer, "dst_color_primaries": primaries}
    yuv = rgb.reformat(format=pix_fmt, dst_colorspace=matrix, dst_color_range=1, **extra)
    lossless = {"libx264": {"qp": "0"}, "libx265": {"x265-params": "lossless=1:log-level=error"}}[codec]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25, options=lossless)
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], pix_fmt
        for name, value in (tags or {}).items():
            setattr(stream.codec_context, name, value)
        for i in range(3):
            frame = yuv.reformat()  # a copy, tagged as the stream is
            for name in ("colorspace", "color_range", "color_trc", "color_primaries"):
                setattr(frame, name, (tags or {}).get(name, 0 if name == "color_range" else 2))
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


BT709 = {"colorspace": 1, "color_range": 1, "color_trc": 1, "color_primaries": 1}


def _read(path: str, **options) -> tuple[list, FileSource]:
    # an HDR input's first frame waits for its tone-mapping tables (2.7 s here): on a machine as
    # busy as a test run with probes beside it, that passed the default read timeout of 10 s
    source = FileSource("clip", path, **{"read_timeout_s": 60.0, **options})
    try:
        return list(source.frames()), source
    finally:
        source.close()


def _error(image: np.ndarray, expected: np.ndarray) -> float:
    """Mean absolute difference inside the patches, in levels of 255."""
    mask = _inside(expected.shape[1], expected.shape[0])
    return float(np.abs(image.astype(int) - expected.astype(int))[mask].mean())


def test_an_untagged_hd_video_is_read_as_bt709_as_players_do(tmp_path):
    expected = _patches(1280, 720)
    clip = _encode(tmp_path / "untagged.mp4", expected, "yuv420p", matrix=1, tags=None)
    frames, source = _read(clip)
    assert len(frames) == 3
    assert _error(frames[0].image, expected) < 1.5  # read as BT.601: 7.5 off
    assert "hdr" not in first_frame(source, frames[0])[1]


def test_an_untagged_sd_video_is_still_read_as_bt601(tmp_path):
    expected = _patches(640, 360)
    clip = _encode(tmp_path / "untagged_sd.mp4", expected, "yuv420p", matrix=5, tags=None)
    frames, _ = _read(clip)
    assert _error(frames[0].image, expected) < 1.5


def test_a_tagged_video_is_read_by_its_tags(tmp_path):
    expected = _patches(1280, 720)
    tags = {"colorspace": 6, "color_range": 1, "color_trc": 6, "color_primaries": 6}  # BT.601 (SMPTE 170M), HD
    frames, _ = _read(_encode(tmp_path / "bt601_hd.mp4", expected, "yuv420p", matrix=5, tags=tags))
    assert _error(frames[0].image, expected) < 1.5


def test_a_10_bit_video_comes_out_at_its_levels(tmp_path):
    expected = _patches(640, 360)
    clip = _encode(tmp_path / "ten.mp4", expected, "yuv420p10le", matrix=1, tags=BT709)
    frames, _ = _read(clip)
    # swscale's fast path: 1.7 levels dark on average
    assert _error(frames[0].image, expected) < 0.6


@pytest.fixture(scope="module")
def hdr_clips(tmp_path_factory) -> dict[str, str]:
    """The patches as HDR10 (PQ) and HLG, BT.2020, 10-bit HEVC: swscale maps the SDR picture into
    them (its tables take seconds to build, so the clips are made once)."""
    folder = tmp_path_factory.mktemp("hdr")
    clips = {}
    for name, transfer in (("pq", 16), ("hlg", 18)):
        tags = {"colorspace": 9, "color_range": 1, "color_trc": transfer, "color_primaries": 9}
        clips[name] = _encode(folder / f"{name}.mp4", _patches(640, 360), "yuv420p10le", matrix=9, tags=tags,
                              codec="libx265", transfer=transfer, primaries=9)
    return clips


@pytest.mark.parametrize("name, raw_error", [("pq", 50), ("hlg", 30)])
def test_an_hdr_video_is_tone_mapped_to_sdr_and_said(hdr_clips, name, raw_error):
    expected, clip = _patches(640, 360), hdr_clips[name]
    with av.open(clip) as container:  # the comparison would not be worth much if the code values were SDR's
        raw = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert _error(raw, expected) > raw_error
    frames, source = _read(clip)
    assert _error(frames[0].image, expected) < 8
    data = first_frame(source, frames[0])[1]
    assert data["hdr"] == name and data["pixel_format"] == "yuv420p10le"


def test_an_hdr_video_scaled_in_the_decoder_is_tone_mapped_too(hdr_clips):
    expected = _patches(640, 360)
    source = FileSource("clip", hdr_clips["pq"])
    source.decode_size = lambda height, width: (height // 2, width // 2)
    try:
        frames = list(source.frames())
    finally:
        source.close()
    assert frames[0].image.shape == (180, 320, 3)
    assert _error(frames[0].image, expected[::2, ::2]) < 10


def _interlaced(path, frames: int = 12, field_order: str = "tff") -> str:
    """An interlaced H.264 clip, 320x240, of a test pattern sliding sideways, each field another
    instant (50 fields a second)."""
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", "testsrc2=size=320x240:rate=50", "-frames:v", str(frames),
         "-vf", f"scroll=horizontal=0.02,interlace=scan={field_order},setfield={field_order},format=yuv420p",
         "-c:v", "libx264", "-qp", "10", "-flags", "+ilme+ildct", "-x264-params", f"{field_order}=1",
         "-field_order", "tt" if field_order == "tff" else "bb", str(path)],
        check=True,
    )
    return str(path)


def _combing(image: np.ndarray) -> float:
    """How much more a row differs from the next (the other field) than from the one after (its
    own field): above 1 for a woven frame of something moving, below 1 for a whole one."""
    grey = image.astype(int).mean(axis=2)
    across = np.abs(grey[0:-2:2] - grey[1:-1:2]).mean()
    within = np.abs(grey[0:-2:2] - grey[2::2]).mean()
    return across / within


def test_interlaced_frames_are_deinterlaced_one_for_one(tmp_path):
    clip = _interlaced(tmp_path / "i.mp4")
    whole, source = _read(clip)
    woven, woven_source = _read(clip, deinterlace=False)
    assert len(whole) == len(woven) == 12  # the last one too, held back by the filter
    assert [f.pts for f in whole] == [f.pts for f in woven] and [f.index for f in whole] == list(range(12))
    assert min(_combing(f.image) for f in woven) > 2
    assert max(_combing(f.image) for f in whole) < 1
    data = first_frame(source, whole[0])[1]
    assert data["interlaced"] == "tff" and data["deinterlaced"] is True
    data = first_frame(woven_source, woven[0])[1]
    assert data["interlaced"] == "tff" and data["deinterlaced"] is False


def test_a_looping_interlaced_file_keeps_every_frame_of_every_pass(tmp_path):
    clip = _interlaced(tmp_path / "i.mp4", frames=5)
    frames, _ = _read(clip, loop=True, max_frames=12)
    assert [f.index for f in frames] == list(range(12)) and [f.epoch for f in frames] == [0] * 5 + [1] * 5 + [2] * 2
    assert max(_combing(f.image) for f in frames) < 1


def test_deinterlacing_a_format_the_filter_converts_keeps_the_frames_colours(tmp_path):
    # Found reviewing: bwdif takes no yuyv422 (a USB camera's) or nv12, FFmpeg converted them on the way
    # in without the frames' matrix and range, and they came out untagged: read as BT.601, 9-10 levels off
    image = _patches(1280, 720)
    rgb = av.VideoFrame.from_ndarray(image, format="rgb24")
    yuv = rgb.reformat(format="yuyv422", dst_colorspace=1, dst_color_range=1)
    path = str(tmp_path / "yuyv.mkv")
    with av.open(path, "w") as container:
        stream = container.add_stream("rawvideo", rate=25)
        stream.width, stream.height, stream.pix_fmt = 1280, 720, "yuyv422"
        for name, value in BT709.items():
            setattr(stream.codec_context, name, value)
        for i in range(3):
            frame = yuv.reformat()
            for name, value in BT709.items():
                setattr(frame, name, value)
            frame.pts, frame.time_base = i, Fraction(1, 25)
            for packet in stream.encode(frame):
                container.mux(packet)
    frames, _ = _read(path, deinterlace=True)
    assert len(frames) == 3 and max(_error(f.image, image) for f in frames) < 3


def test_progressive_frames_pass_untouched_and_unsaid(tmp_path, clip):
    auto, source = _read(str(clip))
    off, _ = _read(str(clip), deinterlace=False)
    forced, forced_source = _read(str(clip), deinterlace=True)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(auto, off))
    assert "interlaced" not in first_frame(source, auto[0])[1]
    assert len(forced) == len(auto) and [f.pts for f in forced] == [f.pts for f in auto]
    assert first_frame(forced_source, forced[0])[1]["deinterlaced"] is True


def _probe_colours(path) -> dict:
    shown = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                            "stream=color_space,color_transfer,color_primaries,color_range", "-of", "json", str(path)],
                           capture_output=True, text=True, check=True).stdout
    return json.loads(shown)["streams"][0]


def test_the_videos_written_are_bt709_and_say_so(tmp_path):
    expected = _patches(1280, 720)
    video = OverlayVideo(tmp_path / "overlay.mp4")
    for i in range(3):
        video.write(expected, i, Fraction(1, 25))
    video.close()
    assert _probe_colours(tmp_path / "overlay.mp4") == {
        "color_range": "tv", "color_space": "bt709", "color_transfer": "bt709", "color_primaries": "bt709"}
    with av.open(str(tmp_path / "overlay.mp4")) as container:  # read by its tags, as a player would
        image = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert _error(image, expected) < 2  # converted with BT.601 and read as BT.709: 12 off


@pytest.mark.parametrize("value, said", [
    ("sometimes", "sources[0].deinterlace: must be auto, true or false, not 'sometimes'"),
    (2, "sources[0].deinterlace: must be auto, true or false, not 2"),
])
def test_a_bad_deinterlace_is_one_line(tmp_path, clip, value, said):
    with pytest.raises(ConfigError) as raised:
        load_config({"sources": [{"name": "a", "type": "file", "path": str(clip), "deinterlace": value}]})
    assert unlocated(str(raised.value)) == said


def test_deinterlace_true_wants_the_ffmpeg_camera_backend():
    with pytest.raises(ConfigError) as raised:
        load_config({"sources": [{"name": "cam", "type": "camera", "backend": "opencv", "deinterlace": True}]})
    assert "deinterlace: true needs backend: ffmpeg" in str(raised.value) and "\n" not in str(raised.value)


def test_a_synthetic_hd_clip_says_its_matrix_and_is_read_by_it(tmp_path):
    # Found reviewing: write_clip converts with PyAV's BT.601 and said nothing, so its HD clips (the
    # benchmarks' 1080p and 4K) were read as BT.709 once untagged HD was: 7.3 levels off at crf 18, 3.7 now
    from segstream.connectors.synthetic import synthetic_clip, write_clip

    write_clip(tmp_path / "hd.mp4", tmp_path / "hd.npz", 1280, 720, 3, seed=1)
    frames, _ = _read(str(tmp_path / "hd.mp4"))
    drawn = [image for image, _ in synthetic_clip(1280, 720, 3, 1)]
    assert np.mean([np.abs(f.image.astype(int) - d.astype(int)).mean() for f, d in zip(frames, drawn)]) < 5


@pytest.mark.parametrize(("size", "pix_fmt", "tags"), [((1280, 720), "yuv420p", BT709), ((322, 182), "yuv420p", BT709),
                                                       ((321, 181), "yuv444p", BT709),
                                                       ((320, 180), "yuv420p", {**BT709, "color_range": 2}),
                                                       ((320, 180), "yuvj420p", {**BT709, "color_range": 2})])
def test_a_tagged_8_bit_frame_comes_out_as_pyav_s_own_conversion_gives_it(tmp_path, size, pix_fmt, tags):
    # through the input's own swscale context (PyAV's to_ndarray made one a frame, with a thread pool each time)
    clip = _encode(tmp_path / "clip.mp4", _patches(*size), pix_fmt, matrix=1, tags=tags)
    frames, _ = _read(clip)
    with av.open(clip) as container:
        expected = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == len(expected) == 3
    for frame, image in zip(frames, expected):
        np.testing.assert_array_equal(frame.image, image)
