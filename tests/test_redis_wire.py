"""The Redis entry format (schema v1): round trips, interoperability with pycocotools, rejection."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from segstream.connectors.errors import WireFormatError
from segstream.connectors.redis_wire import SCHEMA_VERSION, from_wire, to_wire
from segstream.models.processing import frame_label_map
from segstream.models.results import FrameResult, ScaledLabelMap, Segments

LABELS = {1: "person", 3: "car", 21: "cow", 184: "grass"}


def synthetic_scene(
    source: str = "cam0", index: int = 0, height: int = 60, width: int = 80, seed: int = 0, model: str = "m"
) -> FrameResult:
    """A hand-made panoptic result: a stuff background strip and a few blobs with non-contiguous
    ids, some touching the frame border, part of the frame unlabelled."""
    rng = np.random.default_rng(seed + 1000 * index)
    label_map = np.full((height, width), -1, np.int32)
    label_map[height * 2 // 3:, :] = 40  # grass along the bottom
    yy, xx = np.mgrid[:height, :width]
    ids = [7, 2, 19]
    for segment_id in ids:
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        ry, rx = rng.integers(4, height // 3), rng.integers(4, width // 3)
        label_map[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = segment_id
    rows = []
    for segment_id, class_id in zip(ids + [40], [1, 3, 21, 184]):
        ys, xs = np.nonzero(label_map == segment_id)
        if ys.size == 0:
            continue
        rows.append((
            segment_id, class_id, LABELS[class_id], class_id < 100, float(rng.uniform(0.8, 1.0)), int(ys.size),
            (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), segment_id * 3,
        ))
    used = [r[0] for r in rows]
    label_map[~np.isin(label_map, used)] = -1
    columns = list(zip(*rows))
    segments = Segments.build(
        ids=columns[0], class_ids=columns[1], labels=columns[2], isthing=columns[3], scores=columns[4],
        areas=columns[5], boxes=columns[6], queries=columns[7],
    )
    return stamped(FrameResult(source, index, width, height, label_map, segments, model=model))


def stamped(result: FrameResult) -> FrameResult:
    """The result with the stream time of a 30 fps frame in a 90 kHz time base and a capture time."""
    result.pts, result.time_base = result.index * 3000, Fraction(1, 90000)
    result.pts_seconds = result.index * 3000 / 90000
    result.capture_ts = 1_700_000_000.25 + result.index / 30
    return result


def one_segment(label_map: np.ndarray, segment_id: int, area: int, box: tuple[int, int, int, int]) -> FrameResult:
    height, width = label_map.shape
    segments = Segments.build(ids=[segment_id], class_ids=[1], labels=["person"], isthing=[True], scores=[0.9],
                              areas=[area], boxes=[box], queries=[0])
    return stamped(FrameResult("cam0", 0, width, height, label_map, segments, model="m"))


@pytest.mark.parametrize("mask_encoding", ["rle", "idmap"])
def test_round_trip_restores_label_map_and_metadata(mask_encoding):
    result = synthetic_scene(index=4, model="eomt-s-coco-640")
    fields = to_wire(result, mask_encoding, publish_ts=1_700_000_000.5)

    entry = from_wire(fields)

    np.testing.assert_array_equal(entry.label_map, result.label_map)
    assert entry.label_map.dtype == np.int32
    assert (entry.source, entry.index, entry.model) == ("cam0", 4, "eomt-s-coco-640")
    assert (entry.pts, entry.time_base, entry.pts_seconds) == (12000, Fraction(1, 90000), 12000 / 90000)
    assert (entry.capture_ts, entry.publish_ts) == (result.capture_ts, 1_700_000_000.5)
    assert (entry.width, entry.height, fields["mask_encoding"]) == (80, 60, mask_encoding)
    assert len(entry.segments) == len(result.segments) > 0
    for record, segment in zip(entry.segments, result.segments, strict=True):
        keys = ("id", "class_id", "label", "isthing", "score", "area", "box")
        assert {k: record[k] for k in keys} == {k: segment[k] for k in keys}


def test_round_trip_keeps_label_maps_of_full_hd_frames():
    result = synthetic_scene(height=1080, width=1920, seed=3)

    entry = from_wire(to_wire(result, "rle"))

    np.testing.assert_array_equal(entry.label_map, result.label_map)


def test_masks_gives_one_bool_mask_per_segment():
    result = synthetic_scene()

    masks = from_wire(to_wire(result, "rle")).masks()

    assert sorted(masks) == sorted(int(i) for i in result.segments.ids)
    for segment in result.segments:
        assert masks[segment["id"]].dtype == bool
        assert masks[segment["id"]].sum() == segment["area"]


# pycocotools' own decode warns under numpy 2; its result is still right.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_rle_is_what_pycocotools_encodes_and_decodes():
    result = synthetic_scene(height=90, width=120, seed=5)

    records = json.loads(to_wire(result, "rle")["segments"])

    assert records
    for record in records:
        binary = np.asfortranarray(result.label_map == record["id"], dtype=np.uint8)
        assert record["rle"]["size"] == [90, 120]
        assert record["rle"]["counts"] == coco_mask.encode(binary)["counts"].decode("ascii")
        np.testing.assert_array_equal(coco_mask.decode(record["rle"]), binary)


@pytest.mark.parametrize("case", ["first pixel", "last pixel", "whole frame", "absent", "noise"])
def test_rle_matches_pycocotools_at_the_frame_edges(case):
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

    fields = to_wire(one_segment(label_map, 3, area, (0, 0, 5, 7)), "rle")

    expected = coco_mask.encode(np.asfortranarray(label_map == 3, dtype=np.uint8))["counts"].decode("ascii")
    assert json.loads(fields["segments"])[0]["rle"]["counts"] == expected
    np.testing.assert_array_equal(from_wire(fields).label_map, label_map)


# pycocotools' own decode warns under numpy 2; its result is still right.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("frame", [(90, 120), (23, 17), (90, 17), (7, 120)])
def test_a_scaled_label_map_encodes_as_its_frame_size_map(frame):
    """Results of fast post-processing hold the map decided at the model's size; its RLE is
    that of the frame-size map it stands for, bigger or smaller than the decided one."""
    small = synthetic_scene(height=30, width=40, seed=7)
    kept, _, _, _ = frame_label_map(small.label_map, int(small.segments.ids.max()) + 1, frame)
    assert isinstance(kept, ScaledLabelMap)
    full = kept.full()
    present = [int(i) for i in small.segments.ids if (full == i).any()]
    segments = Segments.build(ids=present, class_ids=[1] * len(present), labels=["person"] * len(present),
                              isthing=[True] * len(present))
    result = stamped(FrameResult("cam0", 0, frame[1], frame[0], kept, segments, model="m"))

    fields = to_wire(result, "rle")

    for record in json.loads(fields["segments"]):
        binary = np.asfortranarray(full == record["id"], dtype=np.uint8)
        assert record["rle"]["counts"] == coco_mask.encode(binary)["counts"].decode("ascii")
    np.testing.assert_array_equal(from_wire(fields).label_map, np.where(np.isin(full, present), full, -1))
    np.testing.assert_array_equal(from_wire(to_wire(result, "idmap")).label_map, full)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("decided, frame", [
    (np.full((4, 6), -1, np.int32), (9, 13)),                # no segment anywhere
    (np.array([[0, 2], [2, 0]], np.int32), (1, 1)),          # a one-pixel frame
    (np.array([[0, 2, 2], [0, 0, 2]], np.int32), (1, 7)),    # one row
    (np.array([[0, 2, 2], [0, 0, 2]], np.int32), (7, 1)),    # one column
    (np.array([[0, 0], [0, 0]], np.int32), (5, 5)),          # one segment covering it all
])
def test_scaled_maps_at_the_edges_encode_as_pycocotools_encodes_their_frame(decided, frame):
    kept, _, _, _ = frame_label_map(decided, 3, frame)
    full = kept.full() if isinstance(kept, ScaledLabelMap) else kept
    segments = Segments.build(ids=[0, 1, 2], class_ids=[1, 1, 1], labels=["person"] * 3, isthing=[True] * 3)

    fields = to_wire(stamped(FrameResult("cam0", 0, frame[1], frame[0], kept, segments, model="m")), "rle")

    for record in json.loads(fields["segments"]):  # id 1 is in no map: an empty mask
        binary = np.asfortranarray(full == record["id"], dtype=np.uint8)
        assert record["rle"]["counts"] == coco_mask.encode(binary)["counts"].decode("ascii")
    np.testing.assert_array_equal(from_wire(fields).label_map, full)


@pytest.mark.parametrize("rows, cols, problem", [
    ([0, 2, 1], [0, 1], "rows must not decrease"),
    ([0, 1], [0, 3], "cols must not decrease and must lie in 0..2"),
    ([-1, 0], [0, 1], "rows must not decrease and must lie"),
    ([], [0], "non-empty 1-D integer"),
])
def test_a_scaled_map_whose_lines_are_not_a_resize_is_refused(rows, cols, problem):
    with pytest.raises(ValueError, match=problem):
        ScaledLabelMap(np.zeros((3, 3), np.int32), np.array(rows, np.int64), np.array(cols, np.int64))


def test_large_segment_ids_survive_rle():
    label_map = np.full((6, 4), -1, np.int32)
    label_map[1:3, 1:] = 70_000

    entry = from_wire(to_wire(one_segment(label_map, 70_000, 6, (1, 1, 4, 3)), "rle"))

    np.testing.assert_array_equal(entry.label_map, label_map)


def test_overlapping_rle_masks_are_rejected():
    fields = to_wire(synthetic_scene(), "rle")
    records = json.loads(fields["segments"])
    records[1]["rle"] = records[0]["rle"]
    fields["segments"] = json.dumps(records)

    with pytest.raises(WireFormatError, match="overlap"):
        from_wire(fields)


def test_entry_fields_are_text_except_binary_idmap():
    result = synthetic_scene()

    rle = to_wire(result, "rle")
    idmap = to_wire(result, "idmap")

    assert all(isinstance(k, str) and isinstance(v, str) for k, v in rle.items())
    assert rle["v"] == str(SCHEMA_VERSION) == "1"
    assert "idmap" not in rle
    assert isinstance(idmap["idmap"], bytes)
    assert all(isinstance(v, str) for k, v in idmap.items() if k != "idmap")


def test_decodes_entries_with_bytes_keys_as_redis_returns_them():
    result = synthetic_scene()
    fields = to_wire(result, "idmap")
    raw = {k.encode(): v if isinstance(v, bytes) else v.encode() for k, v in fields.items()}

    np.testing.assert_array_equal(from_wire(raw).label_map, result.label_map)


def test_unknown_stream_time_decodes_as_none():
    result = synthetic_scene()
    result.pts, result.time_base, result.pts_seconds = None, None, None

    fields = to_wire(result, "rle")
    entry = from_wire(fields)

    assert (fields["pts"], fields["time_base"], fields["pts_s"]) == ("", "", "")
    assert (entry.pts, entry.time_base, entry.pts_seconds) == (None, None, None)


def test_frame_without_segments_round_trips():
    empty = stamped(FrameResult("cam0", 0, 80, 60, np.full((60, 80), -1, np.int32)))

    entry = from_wire(to_wire(empty, "rle"))

    assert len(entry.segments) == 0
    assert (entry.label_map == -1).all()


def test_unknown_major_version_is_rejected():
    fields = to_wire(synthetic_scene(), "rle") | {"v": "2"}

    with pytest.raises(WireFormatError, match="schema v2 but this reader understands v1"):
        from_wire(fields)


def test_entry_without_version_is_rejected():
    with pytest.raises(WireFormatError, match="no 'v' field"):
        from_wire({b"temperature": b"21"})


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
        ("segments", '[{"id": 1099511627776, "class_id": 1, "label": "a", "isthing": true, "score": 1, '
         '"area": 0, "box": [0, 0, 0, 0]}]', "out of the 32-bit range"),
        ("segments", '[{"id": 1, "class_id": 1, "label": "a", "isthing": true, "score": 1, "area": 0, '
         '"box": [0, 0, 4294967296, 1]}]', "out of the 32-bit range"),
        ("width", "81", "rle size"),
        ("segments", '[{"id": 1, "class_id": 1, "label": "a", "isthing": true, "score": 1, "area": 0, '
         '"box": [0, 0, 0, 0], "centroid": [3]}]', "centroid needs 2 numbers"),
        # found probing as an attacker: JSON nested past the recursion limit was a RecursionError traceback
        ("segments", "[" * 100_000, "not valid JSON: JSON nested too deep"),
        ("levels", "[" * 100_000, "levels field is not valid JSON: JSON nested too deep"),
        ("frame", "9" * 4000 + "x", r"field 'frame' is '9{60}'\.\.\. \(4001 characters\), expected an integer$"),
    ],
)
def test_malformed_fields_are_rejected_with_the_field_named(field, value, message):
    fields = to_wire(synthetic_scene(), "rle") | {field: value}

    with pytest.raises(WireFormatError, match=message):
        from_wire(fields)


def test_events_status_and_jsonl_lines_nested_too_deep_are_malformed_not_a_crash(tmp_path):
    from segstream.connectors.redis_sink import _finished
    from segstream.connectors.redis_wire import event_from_wire, read_entries, status_from_wire

    deep = "[" * 100_000
    with pytest.raises(WireFormatError, match="events entry's data is not valid JSON: JSON nested too deep"):
        event_from_wire({"v": "1", "source": "gate", "event": "state", "ts": "1", "data": deep})
    with pytest.raises(WireFormatError, match="status value is not JSON: JSON nested too deep"):
        status_from_wire(deep)
    with pytest.raises(WireFormatError, match=r"lacks field\(s\) source, run_id, since, ts, ttl_s — it was not"):
        status_from_wire('{"v": 1, "state": "streaming"}')  # (was Python's "__init__() missing 5 ... arguments")
    # a run's start reads its sources' last events back: one such entry stopped every start of the run
    assert _finished({b"event": b"state", b"data": deep.encode()}) is False
    (tmp_path / "cam.jsonl").write_text("[" * 100_000 + "\n")
    with pytest.raises(WireFormatError):
        list(read_entries(tmp_path / "cam.jsonl"))


def test_truncated_idmap_is_rejected():
    fields = to_wire(synthetic_scene(), "idmap")
    fields["idmap"] = fields["idmap"][:-8]

    with pytest.raises(WireFormatError, match=r"idmap (is cut short: \d+ of the \d+ bytes its zstd frame states|field "
                                              "is not a zstd frame)"):  # (it said "holds 0 bytes": found reviewing)
        from_wire(fields)


def test_an_idmap_stating_a_huge_size_is_refused_before_it_is_decompressed():
    """Found probing bad input: 30 KB of zstd stating 1e9 bytes had a reader allocate 1 GB (the
    decompressor takes a frame's stated size over max_output_size) before the size was refused."""
    import subprocess
    import sys

    code = """
import io, resource, zstandard
from segstream.connectors.redis_wire import from_wire, to_wire
from segstream.connectors.errors import WireFormatError
from tests.test_redis_wire import synthetic_scene
fields = to_wire(synthetic_scene(), "idmap")
stated = 300 * 2**20
out = io.BytesIO()
with zstandard.ZstdCompressor().stream_writer(out, size=stated, closefd=False) as writer:
    for _ in range(stated // 2**20):
        writer.write(bytes(2**20))
fields["idmap"] = out.getvalue()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    from_wire(fields)
except WireFormatError as error:
    print(str(error))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    said, grown_mb = done.stdout.splitlines()
    assert said.startswith(f"idmap holds {300 * 2**20} bytes but a ") and "int32 map needs" in said, done.stderr
    assert int(grown_mb) < 50, f"the reader grew {grown_mb} MB"


def test_a_label_map_is_decoded_into_itself_the_reader_holding_it_once():
    """Found probing as an attacker: 32 KB stating 16384x16384 took a reader to 2 GiB, the map's
    bytes and then their copy; it is decompressed into the (writable) map, one allocation."""
    import subprocess
    import sys

    code = """
import resource, zstandard
from segstream.connectors.redis_wire import from_wire, to_wire
from tests.test_redis_wire import synthetic_scene
fields = to_wire(synthetic_scene(), "idmap")
fields["height"] = fields["width"] = "4096"
fields["idmap"] = zstandard.ZstdCompressor().compress(bytes(4 * 4096 * 4096))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
label_map = from_wire(fields).label_map
label_map[0, 0] = 7
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, label_map.nbytes // 2**20)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    grown_mb, map_mb = map(int, done.stdout.split())
    assert map_mb == 64 and grown_mb < 1.4 * map_mb, f"the reader grew {grown_mb} MB for a {map_mb} MB map"


def test_missing_field_is_named():
    fields = to_wire(synthetic_scene(), "rle")
    del fields["capture_ts"]

    with pytest.raises(WireFormatError, match="lacks field.*capture_ts"):
        from_wire(fields)


def test_an_events_entry_read_as_a_frame_says_which_stream_to_read():
    from segstream.connectors.redis_wire import event_to_wire
    from segstream.models.results import Event

    fields = event_to_wire(Event("cam0", "track_started", 1.0, {"track_id": 3}))
    with pytest.raises(WireFormatError, match=r"events-stream entry \(track_started\), not a frame"):
        from_wire(fields)


def test_label_map_of_another_size_than_the_frame_is_refused():
    result = synthetic_scene()
    result.label_map = result.label_map[:30]

    with pytest.raises(WireFormatError, match="label map of cam0 frame 0 is 30x80 but the frame is 60x80"):
        to_wire(result, "rle")


def test_track_ids_ages_and_the_run_id_travel_with_the_entry():
    result = synthetic_scene(index=2)
    result.segments.track_ids = np.arange(len(result.segments), dtype=np.int64) + 40
    result.segments.track_ages = np.arange(len(result.segments), dtype=np.int32) + 3
    result.run_id = "20261121T101502Z-3f2a9c1d"

    entry = from_wire(to_wire(result, "rle"))

    assert entry.run_id == result.run_id
    np.testing.assert_array_equal(entry.segments.track_ids, result.segments.track_ids)
    np.testing.assert_array_equal(entry.segments.track_ages, result.segments.track_ages)


def test_an_entry_written_before_tracking_reads_as_untracked():
    fields = to_wire(synthetic_scene(), "rle")
    segments = json.loads(fields["segments"])
    for segment in segments:
        del segment["track_id"], segment["track_age"]
    fields["segments"] = json.dumps(segments)
    del fields["run_id"]

    entry = from_wire(fields)

    assert entry.run_id == "" and set(entry.segments.track_ids.tolist()) == {-1}
    assert set(entry.segments.track_ages.tolist()) == {0}


def ragged_and_disjoint(frame: tuple[int, int]) -> FrameResult:
    """A 40x60 decided map at ``frame``'s size (or the frame's own): a parked truck's two
    disjoint parts (their box's centre lies between them, on no pixel of it), an L and a stuff strip."""
    decided = np.full((40, 60), -1, np.int32)
    decided[5:15, 2:10] = 0  # the truck's cab ...
    decided[5:7, 40:58] = 0  # ... and, cut off by a pole, its trailer's roof
    decided[20:35, 20:23] = 1
    decided[32:35, 20:45] = 1  # an L: its centroid lies near the corner, not mid-box
    decided[36:, :] = 2
    label_map, areas, boxes, centroids = frame_label_map(decided, 3, frame)
    segments = Segments.build(ids=[0, 1, 2], class_ids=[3, 1, 184], labels=["car", "person", "grass"],
                              isthing=[True, True, False], areas=areas, boxes=boxes, centroids=centroids)
    return stamped(FrameResult("cam0", 0, frame[1], frame[0], label_map, segments, model="m"))


def pixel_centroids(result: FrameResult) -> list[list[float]]:
    """Each segment's mean pixel centre (x + 0.5, y + 0.5), to 0.1 pixel, from its mask."""
    out = []
    for segment_id in result.segments.ids:
        ys, xs = np.nonzero(result.label_map == segment_id)
        out.append([round(xs.mean() + 0.5, 1), round(ys.mean() + 0.5, 1)])
    return out


@pytest.mark.parametrize("frame", [(40, 60), (108, 192), (30, 45)])  # the decided map's size, larger, smaller
@pytest.mark.parametrize("mask_encoding", ["rle", "idmap"])
def test_each_segment_carries_the_centroid_of_its_masks_pixels(frame, mask_encoding):
    result = ragged_and_disjoint(frame)
    expected = pixel_centroids(result)

    fields = to_wire(result, mask_encoding)

    written = [segment["centroid"] for segment in json.loads(fields["segments"])]
    np.testing.assert_allclose(written, expected, atol=0.051)  # a mean that ends in .x5 may round either way
    assert written == [[round(v, 1) for v in point] for point in written]  # one decimal on the wire
    np.testing.assert_allclose(from_wire(fields).segments.centroids, written)
    truck_box = result.segments.boxes[0]
    box_centre = ((truck_box[0] + truck_box[2]) / 2, (truck_box[1] + truck_box[3]) / 2)
    assert result.label_map[int(box_centre[1]), int(box_centre[0])] != 0  # the box centre misses the truck
    assert abs(written[0][0] - box_centre[0]) > 0.1 * frame[1]


def test_segments_built_without_centroids_get_them_measured_from_the_map_on_the_wire():
    result = synthetic_scene(index=1)  # Segments.build without centroids: unknown
    assert np.isnan(result.segments.centroids).all()

    for mask_encoding in ("rle", "idmap"):
        written = [segment["centroid"] for segment in json.loads(to_wire(result, mask_encoding)["segments"])]
        np.testing.assert_allclose(written, pixel_centroids(result), atol=0.051)
    assert result.to_dict()["segments"][0]["centroid"] == pytest.approx(pixel_centroids(result)[0], abs=0.051)
    assert np.isnan(result.segments.centroids).all()  # measured for the entry, the result left as it was


def test_an_entry_written_before_centroids_reads_them_as_unknown():
    fields = to_wire(synthetic_scene(), "rle")
    segments = json.loads(fields["segments"])
    for segment in segments:
        del segment["centroid"]
    fields["segments"] = json.dumps(segments)

    entry = from_wire(fields, decode_masks=False)

    assert entry.segments.centroids.shape == (len(segments), 2) and np.isnan(entry.segments.centroids).all()
    assert {segment["centroid"] for segment in entry.segments} == {None}


def test_unknown_fields_and_segment_keys_are_ignored():
    fields = to_wire(synthetic_scene(), "idmap")
    fields["added_in_a_later_v1"] = "x"
    segments = json.loads(fields["segments"])
    segments[0]["velocity"] = [1, 2]
    fields["segments"] = json.dumps(segments)

    assert len(from_wire(fields).segments) == len(segments)


@pytest.mark.parametrize("mask_encoding", ["rle", "idmap"])
def test_one_mask_decodes_alone_and_equals_the_label_maps(mask_encoding):
    from segstream.connectors.redis_wire import read_entry

    result = synthetic_scene(index=1)
    entry, masks = read_entry(to_wire(result, mask_encoding))

    assert entry.label_map is None
    for segment_id in result.segments.ids:
        np.testing.assert_array_equal(masks.mask(int(segment_id)), result.label_map == segment_id)
    np.testing.assert_array_equal(masks.label_map(), result.label_map)
    with pytest.raises(KeyError):
        masks.mask(999)


def test_an_events_entry_without_a_version_says_so_and_lists_its_fields():
    from segstream.connectors.redis_wire import event_from_wire

    with pytest.raises(WireFormatError, match=r"events entry has no 'v' field \(fields: foo\) — it was not written"):
        event_from_wire({"foo": "bar"})


def test_a_damaged_mask_decoded_later_names_its_entry():
    from segstream.connectors.redis_reader import Entry
    from segstream.connectors.redis_wire import read_entry

    fields = to_wire(synthetic_scene(), "rle")
    segments = json.loads(fields["segments"])
    segments[0]["rle"]["counts"] = segments[0]["rle"]["counts"][:-1] + "\x7f"  # cut inside a number
    fields["segments"] = json.dumps(segments)
    entry = Entry("1700000000000-0", "segstream:cam0:frames", *read_entry(fields))  # its metadata reads fine
    with pytest.raises(WireFormatError, match=r"^entry 1700000000000-0 of segstream:cam0:frames: segment"):
        entry.mask(segments[0]["id"])
