"""The Redis entry format (schema v1): round trips, interoperability with pycocotools, rejection."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from segstream.connectors.errors import WireFormatError
from segstream.connectors.frames import Frame
from segstream.connectors.redis_wire import SCHEMA_VERSION, decode_entry, encode_entry
from segstream.models.prediction import FramePrediction, Segment

LABELS = {1: "person", 3: "car", 21: "cow", 184: "grass"}


def synthetic_scene(
    source: str = "cam0", index: int = 0, height: int = 60, width: int = 80, seed: int = 0
) -> tuple[Frame, FramePrediction]:
    """A frame and a hand-made panoptic prediction: a stuff background strip and a few blobs
    with non-contiguous ids, some touching the frame border, part of the frame unlabelled."""
    rng = np.random.default_rng(seed + 1000 * index)
    label_map = np.full((height, width), -1, np.int32)
    label_map[height * 2 // 3:, :] = 40  # grass along the bottom
    yy, xx = np.mgrid[:height, :width]
    ids = [7, 2, 19]
    for segment_id in ids:
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(4, height // 3), rng.integers(4, width // 3)
        label_map[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = segment_id
    segments = []
    for segment_id, class_id in zip(ids + [40], [1, 3, 21, 184]):
        ys, xs = np.nonzero(label_map == segment_id)
        if ys.size == 0:
            continue
        segments.append(Segment(
            id=segment_id, class_id=class_id, label=LABELS[class_id], isthing=class_id < 100,
            score=float(rng.uniform(0.8, 1.0)), area=int(ys.size),
            box=(int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
            query=segment_id * 3,
        ))
    used = [s.id for s in segments]
    label_map[~np.isin(label_map, used)] = -1
    return blank_frame(source, index, height, width), FramePrediction(label_map=label_map, segments=segments)


def blank_frame(source: str, index: int, height: int, width: int) -> Frame:
    """A black frame at 30 fps in a 90 kHz stream time base."""
    return Frame(
        source=source, index=index, image=np.zeros((height, width, 3), np.uint8),
        pts=index * 3000, time_base=Fraction(1, 90000), pts_seconds=index * 3000 / 90000,
        capture_wall=1_700_000_000.25 + index / 30,
    )


@pytest.mark.parametrize("mask_encoding", ["rle", "idmap"])
def test_round_trip_restores_label_map_and_metadata(mask_encoding):
    frame, prediction = synthetic_scene(index=4)
    fields = encode_entry(frame, prediction, "eomt-s-coco-640", mask_encoding, publish_ts=1_700_000_000.5)

    entry = decode_entry(fields)

    np.testing.assert_array_equal(entry.label_map, prediction.label_map)
    assert entry.label_map.dtype == np.int32
    assert (entry.source, entry.frame_index, entry.model) == ("cam0", 4, "eomt-s-coco-640")
    assert (entry.pts, entry.time_base, entry.pts_seconds) == (12000, Fraction(1, 90000), 12000 / 90000)
    assert (entry.capture_ts, entry.publish_ts) == (frame.capture_wall, 1_700_000_000.5)
    assert (entry.width, entry.height, entry.mask_encoding) == (80, 60, mask_encoding)
    for record, segment in zip(entry.segments, prediction.segments, strict=True):
        assert (record.id, record.class_id, record.label, record.isthing, record.score, record.area, record.box) == (
            segment.id, segment.class_id, segment.label, segment.isthing, segment.score, segment.area, segment.box
        )


def test_round_trip_keeps_label_maps_of_full_hd_frames():
    frame, prediction = synthetic_scene(height=1080, width=1920, seed=3)

    entry = decode_entry(encode_entry(frame, prediction, "m", "rle"))

    np.testing.assert_array_equal(entry.label_map, prediction.label_map)


def test_masks_gives_one_bool_mask_per_segment():
    frame, prediction = synthetic_scene()

    masks = decode_entry(encode_entry(frame, prediction, "m", "rle")).masks()

    assert sorted(masks) == sorted(s.id for s in prediction.segments)
    for segment in prediction.segments:
        assert masks[segment.id].dtype == bool
        assert masks[segment.id].sum() == segment.area


# pycocotools' own decode warns under numpy 2; its result is still right.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_rle_is_what_pycocotools_encodes_and_decodes():
    frame, prediction = synthetic_scene(height=90, width=120, seed=5)

    records = json.loads(encode_entry(frame, prediction, "m", "rle")["segments"])

    for record in records:
        binary = np.asfortranarray(prediction.label_map == record["id"], dtype=np.uint8)
        assert record["rle"]["size"] == [90, 120]
        assert record["rle"]["counts"] == coco_mask.encode(binary)["counts"].decode("ascii")
        np.testing.assert_array_equal(coco_mask.decode(record["rle"]), binary)


@pytest.mark.parametrize("case", ["first pixel", "last pixel", "whole frame", "absent", "noise"])
def test_rle_matches_pycocotools_at_the_frame_edges(case):
    frame = blank_frame("cam0", 0, height=7, width=5)
    label_map = np.full((7, 5), -1, np.int32)
    if case == "first pixel":
        label_map[0, 0] = 3
    elif case == "last pixel":
        label_map[-1, -1] = 3
    elif case == "whole frame":
        label_map[:] = 3
    elif case == "noise":
        label_map = np.random.default_rng(0).choice(np.array([-1, 3], np.int32), size=(7, 5))
    area = int((label_map == 3).sum())
    segment = Segment(id=3, class_id=1, label="person", isthing=True, score=0.9, area=area,
                      box=(0, 0, 5, 7), query=0)
    prediction = FramePrediction(label_map=label_map, segments=[segment])

    fields = encode_entry(frame, prediction, "m", "rle")

    expected = coco_mask.encode(np.asfortranarray(label_map == 3, dtype=np.uint8))["counts"].decode("ascii")
    assert json.loads(fields["segments"])[0]["rle"]["counts"] == expected
    np.testing.assert_array_equal(decode_entry(fields).label_map, label_map)


def test_large_segment_ids_survive_rle():
    frame = blank_frame("cam0", 0, height=6, width=4)
    label_map = np.full((6, 4), -1, np.int32)
    label_map[1:3, 1:] = 70_000
    segment = Segment(id=70_000, class_id=1, label="person", isthing=True, score=0.9, area=6,
                      box=(1, 1, 4, 3), query=0)

    entry = decode_entry(encode_entry(frame, FramePrediction(label_map, [segment]), "m", "rle"))

    np.testing.assert_array_equal(entry.label_map, label_map)


def test_overlapping_rle_masks_are_rejected():
    frame, prediction = synthetic_scene()
    fields = encode_entry(frame, prediction, "m", "rle")
    records = json.loads(fields["segments"])
    records[1]["rle"] = records[0]["rle"]
    fields["segments"] = json.dumps(records)

    with pytest.raises(WireFormatError, match="overlap"):
        decode_entry(fields)


def test_entry_fields_are_text_except_binary_idmap():
    frame, prediction = synthetic_scene()

    rle = encode_entry(frame, prediction, "m", "rle")
    idmap = encode_entry(frame, prediction, "m", "idmap")

    assert all(isinstance(k, str) and isinstance(v, str) for k, v in rle.items())
    assert rle["v"] == str(SCHEMA_VERSION) == "1"
    assert "idmap" not in rle
    assert isinstance(idmap["idmap"], bytes)
    assert all(isinstance(v, str) for k, v in idmap.items() if k != "idmap")


def test_decodes_entries_with_bytes_keys_as_redis_returns_them():
    frame, prediction = synthetic_scene()
    fields = encode_entry(frame, prediction, "m", "idmap")
    raw = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}

    np.testing.assert_array_equal(decode_entry(raw).label_map, prediction.label_map)


def test_unknown_stream_time_decodes_as_none():
    frame, prediction = synthetic_scene()
    frame.pts, frame.time_base, frame.pts_seconds = None, None, None

    fields = encode_entry(frame, prediction, "m", "rle")
    entry = decode_entry(fields)

    assert (fields["pts"], fields["time_base"], fields["pts_s"]) == ("", "", "")
    assert (entry.pts, entry.time_base, entry.pts_seconds) == (None, None, None)


def test_frame_without_segments_round_trips():
    frame, _ = synthetic_scene()
    empty = FramePrediction(label_map=np.full((60, 80), -1, np.int32))

    entry = decode_entry(encode_entry(frame, empty, "m", "rle"))

    assert entry.segments == []
    assert (entry.label_map == -1).all()


def test_unknown_major_version_is_rejected():
    frame, prediction = synthetic_scene()
    fields = encode_entry(frame, prediction, "m", "rle") | {"v": "2"}

    with pytest.raises(WireFormatError, match="schema v2 but this reader understands v1"):
        decode_entry(fields)


def test_entry_without_version_is_rejected():
    with pytest.raises(WireFormatError, match="no 'v' field"):
        decode_entry({b"temperature": b"21"})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("frame", "twelve", "field 'frame' is 'twelve', expected an integer"),
        ("time_base", "1:90000", "expected 'num/den'"),
        ("segments", "[{", "not valid JSON"),
        ("segments", '[{"id": 1}]', "must be an object with keys"),
        ("mask_encoding", "png", "schema v1 knows rle, idmap"),
        ("segments", '[{"id": -2, "class_id": 1, "label": "a", "isthing": true, "score": 1, "area": 0, '
         '"box": [0, 0, 0, 0]}]', "ids must be distinct and >= 0"),
        ("width", "81", "rle size"),
    ],
)
def test_malformed_fields_are_rejected_with_the_field_named(field, value, message):
    frame, prediction = synthetic_scene()
    fields = encode_entry(frame, prediction, "m", "rle") | {field: value}

    with pytest.raises(WireFormatError, match=message):
        decode_entry(fields)


def test_truncated_idmap_is_rejected():
    frame, prediction = synthetic_scene()
    fields = encode_entry(frame, prediction, "m", "idmap")
    fields["idmap"] = fields["idmap"][:-8]

    with pytest.raises(WireFormatError, match="idmap"):
        decode_entry(fields)


def test_missing_field_is_named():
    frame, prediction = synthetic_scene()
    fields = encode_entry(frame, prediction, "m", "rle")
    del fields["capture_ts"]

    with pytest.raises(WireFormatError, match="lacks field.*capture_ts"):
        decode_entry(fields)


def test_label_map_of_another_size_than_the_frame_is_refused():
    frame, prediction = synthetic_scene()
    prediction.label_map = prediction.label_map[:30]

    with pytest.raises(WireFormatError, match="label map of cam0 frame 0 is 30x80 but the frame is 60x80"):
        encode_entry(frame, prediction, "m", "rle")
