"""Synthetic scenes: deterministic frames, ground truth that matches them, files and a live source."""

from __future__ import annotations

import threading
import time
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from segstream.connectors.errors import SourceError
from segstream.connectors.synthetic import (
    _HUES,
    CLASSES,
    STUFF_IDS,
    THING_IDS,
    SyntheticScene,
    SyntheticSource,
    _thing_texture,
    load_truth,
    sample_training_frame,
    synthetic_clip,
    write_clip,
)
from segstream.models.label_sets import load_label_set


def _truth_key(truth):
    return truth.index, truth.label_map.tobytes(), list(truth.segments)


def test_same_seed_gives_byte_identical_frames_and_truth():
    first = list(synthetic_clip(128, 96, 20, seed=11))
    second = list(synthetic_clip(128, 96, 20, seed=11))
    for (image_a, truth_a), (image_b, truth_b) in zip(first, second):
        assert image_a.tobytes() == image_b.tobytes()
        assert _truth_key(truth_a) == _truth_key(truth_b)


def test_different_seed_gives_different_frames():
    ((image_a, truth_a),) = synthetic_clip(128, 96, 1, seed=11)
    ((image_b, truth_b),) = synthetic_clip(128, 96, 1, seed=12)
    assert image_a.tobytes() != image_b.tobytes()
    assert truth_a.label_map.tobytes() != truth_b.label_map.tobytes()


def test_odd_non_square_size_gives_frames_and_maps_of_that_size():
    image, truth = SyntheticScene(width=97, height=61, fps=30.0, seed=3).render()
    assert image.shape == (61, 97, 3) and image.dtype == np.uint8
    assert truth.label_map.shape == (61, 97) and truth.label_map.dtype == np.int32
    assert (truth.width, truth.height) == (97, 61)


def test_every_pixel_is_in_exactly_one_listed_segment_with_matching_area():
    scene = SyntheticScene(width=97, height=61, seed=5)
    things_seen = 0
    for _ in range(60):
        _, truth = scene.render()
        ids = truth.segments.ids.tolist()
        assert ids == list(range(len(ids)))
        counts = np.bincount(truth.label_map.ravel(), minlength=len(ids))
        assert truth.label_map.min() >= 0 and len(counts) == len(ids)
        assert truth.segments.areas.tolist() == counts.tolist()
        stuff = [s["class_id"] for s in truth.segments if not s["isthing"]]
        assert len(stuff) == len(set(stuff)) and set(stuff) <= set(STUFF_IDS)
        for s in truth.segments:
            assert s["isthing"] == CLASSES[s["class_id"]].isthing and s["label"] == CLASSES[s["class_id"]].name
            assert (s["track_id"] > 0) if s["isthing"] else (s["track_id"] == -1)
            if s["isthing"]:
                assert s["area"] >= scene.min_area
            ys, xs = np.nonzero(truth.label_map == s["id"])
            assert s["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        things_seen += int(truth.segments.isthing.sum())
    assert things_seen > 0


def test_objects_enter_and_leave_keeping_one_track_id_each():
    width, height, frames = 96, 72, 300
    life: dict[int, list[tuple[int, int, float, float]]] = {}  # track -> (frame, class, cx, cy)
    for index, (_, truth) in enumerate(synthetic_clip(width, height, frames, seed=2)):
        for s in truth.segments:
            if s["isthing"]:
                ys, xs = np.nonzero(truth.label_map == s["id"])
                life.setdefault(s["track_id"], []).append((index, s["class_id"], xs.mean(), ys.mean()))
    assert len(life) > 6  # more objects than can be alive at once: some left, others came
    assert any(seen[0][0] > 0 for seen in life.values())  # entered during the clip
    assert any(seen[-1][0] < frames - 1 for seen in life.values())  # left before the end
    for seen in life.values():
        assert len({class_id for _, class_id, _, _ in seen}) == 1
        # A reused id would jump to the far border; one object moves a few pixels a frame.
        for (f0, _, x0, y0), (f1, _, x1, y1) in zip(seen, seen[1:]):
            if f1 == f0 + 1:
                assert abs(x1 - x0) + abs(y1 - y0) < 0.3 * width


def test_sample_training_frame_is_deterministic_per_seed():
    image_a, _ = sample_training_frame(7, 64, 48)
    image_b, _ = sample_training_frame(7, 64, 48)
    image_c, _ = sample_training_frame(8, 64, 48)
    assert image_a.tobytes() == image_b.tobytes() != image_c.tobytes()


def test_label_set_file_lists_the_scene_classes():
    labels = load_label_set("synthetic")
    assert labels.names == tuple(c.name for c in CLASSES)
    assert labels.isthing == tuple(c.isthing for c in CLASSES)
    assert labels.thing_ids == (0, 1, 2, 3) and labels.stuff_ids == (4, 5, 6, 7)


def test_too_small_frames_are_refused():
    with pytest.raises(SourceError):
        SyntheticScene(width=8, height=8)


def test_write_clip_round_trip(tmp_path):
    video, truth_path = tmp_path / "clip.mp4", tmp_path / "clip.npz"
    write_clip(video, truth_path, 160, 120, 30, seed=4)
    rendered = list(synthetic_clip(160, 120, 30, seed=4))
    with av.open(str(video)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 30
    for i, image in enumerate(decoded):
        same = np.abs(image.astype(np.int16) - rendered[i][0]).mean()
        assert same < 10.0  # lossy H.264 with 4:2:0 chroma on a 160x120 frame of saturated objects
    # Frames are in order: a neighbour's difference is clearly larger than the frame's own.
    assert (
        np.abs(decoded[10].astype(np.int16) - rendered[20][0]).mean()
        > 2 * np.abs(decoded[10].astype(np.int16) - rendered[10][0]).mean()
    )
    loaded = load_truth(truth_path)
    assert [_truth_key(t) for t in loaded] == [_truth_key(t) for _, t in rendered]


def test_write_clip_refuses_odd_size(tmp_path):
    with pytest.raises(SourceError):
        write_clip(tmp_path / "a.mp4", tmp_path / "a.npz", 161, 120, 2, seed=0)


def test_source_yields_frames_with_increasing_index_and_pts():
    source = SyntheticSource("synthetic", 64, 48, 25.0, seed=1, num_frames=5)
    frames = list(source.frames())
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert [f.pts for f in frames] == [0, 1, 2, 3, 4]
    assert all(f.time_base == Fraction(1, 25) for f in frames)
    assert [f.pts_seconds for f in frames] == pytest.approx([0, 0.04, 0.08, 0.12, 0.16])
    assert frames[0].image.shape == (48, 64, 3) and frames[0].source == "synthetic"
    assert source.last_truth is not None and source.last_truth.label_map.shape == (48, 64)
    assert (source.last_truth.source, source.last_truth.index) == ("synthetic", 4)
    assert not source.live


def test_close_from_another_thread_stops_an_endless_realtime_source():
    source = SyntheticSource("live", 64, 48, 50.0, seed=1, num_frames=None, realtime=True)
    assert source.live
    timer = threading.Timer(0.3, source.close)
    started = time.monotonic()
    timer.start()
    count = sum(1 for _ in source.frames())
    elapsed = time.monotonic() - started
    timer.join()
    assert elapsed < 2.0
    # Paced at 50 fps: about 15 frames in 0.3 s, far fewer than an unpaced loop would make.
    assert 5 <= count <= 40
    source.close()  # a second close is harmless


def test_each_thing_class_wears_its_own_hue_and_pattern():
    rng = np.random.default_rng(0)
    for class_id in THING_IDS:
        low, high = _HUES[class_id]
        dark_hues = []
        for _ in range(6):
            texture = _thing_texture(rng, class_id, radius=20.0, grain=1.0)
            centre = texture[4:-4, 4:-4].reshape(-1, 1, 3)
            hsv = cv2.cvtColor(centre, cv2.COLOR_RGB2HSV_FULL).reshape(-1, 3).astype(np.float64)
            bright = hsv[:, 2] >= np.quantile(hsv[:, 2], 0.7)
            assert np.linalg.norm(centre.reshape(-1, 3).astype(np.float64).std(0)) > 20, "a two-colour pattern"
            # the bright colour's circular mean hue, as a fraction of the colour wheel
            angle = hsv[bright, 0] / 256 * 2 * np.pi
            hue = np.arctan2(np.sin(angle).mean(), np.cos(angle).mean()) / (2 * np.pi)
            off_centre = abs((hue - (low + high) / 2 + 0.5) % 1 - 0.5)  # distance around the wheel
            assert off_centre <= (high - low) / 2 + 0.03, (class_id, hue)
            dark_hues.append(np.median(hsv[~bright, 0]))
        # The dark colour varies, so that objects of one class look different from each other.
        assert np.ptp(dark_hues) > 40
