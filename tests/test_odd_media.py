"""Odd media a new user fed segstream: an AVI whose H.264 PTS come in decode order, a single
glitched timestamp, audio that outlasts the video, files with nothing decodable, cover pictures,
image folders with unreadable or animated files. Each file is made here with ffmpeg or PyAV."""

from __future__ import annotations

import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from segstream.connectors.av_input import BestEffortTimestamp
from segstream.connectors.file_source import FileSource
from tests.live_servers import FFMPEG

def _ffmpeg(*args: str) -> None:
    subprocess.run([FFMPEG, "-v", "error", "-y", *args], check=True)


def test_an_avi_with_b_frames_keeps_its_length_and_frame_rate(tmp_path):
    # Found probing: PyAV hands an AVI's H.264 frames PTS in decode order (1, 4, 3, 5, 2, ...);
    # each one stepping back was moved a frame on, and a 2 s clip ran to 4.56 s.
    clip = tmp_path / "bframes.avi"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25", "-t", "2", "-c:v", "libx264", "-bf", "3",
            "-preset", "ultrafast", str(clip))
    with av.open(str(clip)) as container:
        raw = [f.pts for p in container.demux(container.streams.video[0]) for f in p.decode()]
    assert any(b < a for a, b in zip(raw, raw[1:])), "the file must carry PTS out of order to mean anything"
    frames = list(FileSource("avi", str(clip)).frames())
    seconds = np.array([f.pts_seconds for f in frames])
    assert len(frames) == 50 and seconds[-1] - seconds[0] < 2.1
    assert np.count_nonzero(np.isclose(np.diff(seconds), 0.04)) >= 47, "one frame apart, as the file plays"


def test_best_effort_timestamps_take_the_dts_only_when_the_pts_fail_more_often():
    def chosen(pairs):
        rule = BestEffortTimestamp()
        return [rule.choose(pts, dts) for pts, dts in pairs]

    decode_order = [(1, 2), (4, 3), (3, 4), (5, 5), (2, 6), (8, 7), (6, None), (9, None)]
    assert chosen(decode_order) == [1, 4, 4, 5, 6, 7, None, None], "the flushed last frames: no time, not a wrong one"
    vfr = [(0, -80), (40, -40), (70, 0), (140, 40), (150, 80)]  # an MP4's with B-frames, out of the decoder
    assert chosen(vfr) == [0, 40, 70, 140, 150]
    wrapped = [(8589934590, 8589934590), (10, 10), (20, 20)]  # a TS wrap sets both back alike
    assert chosen(wrapped) == [8589934590, 10, 20]
    assert chosen([(None, 5), (None, 6), (7, None)]) == [5, 6, 7]
