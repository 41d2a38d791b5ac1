"""COCO panoptic outputs: ids in the PNGs' RGB, segments_info that pycocotools agrees with, and PQ
computed from the files alone equal to segstream evaluate on the same clips."""

import json

import cv2
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from segstream.connectors.coco_panoptic import (
    CocoPanopticWriter,
    category_ids,
    id_to_rgb,
    read_coco_panoptic,
    rgb_to_id,
)
from segstream.connectors.synthetic import CLASSES, load_truth, synthetic_clip, write_clip
from segstream.models.label_sets import load_label_set
from segstream.pipeline.evaluation import PanopticTally


def test_ids_are_stored_as_r_plus_256g_plus_65536b():
    ids = np.array([[0, 1, 255], [256, 65535, 65536 + 2 * 256 + 3]])
    rgb = id_to_rgb(ids)
    assert rgb[1, 2].tolist() == [3, 2, 1]
    assert rgb[0, 2].tolist() == [255, 0, 0] and rgb[1, 0].tolist() == [0, 1, 0]
    np.testing.assert_array_equal(rgb_to_id(rgb), ids)


def test_category_ids_are_coco_ids_where_the_label_set_has_them():
    assert category_ids(load_label_set("coco_panoptic"))[:3] == [1, 2, 3]
    coco = category_ids(load_label_set("coco_panoptic"))
    assert max(coco) == 200 and len(set(coco)) == 133  # COCO's own ids, with its gaps
    assert category_ids(load_label_set("synthetic")) == list(range(1, 9))


def test_files_are_what_pycocotools_reads_from_the_pngs(tmp_path):
    labels = load_label_set("synthetic")
    writer = CocoPanopticWriter(tmp_path, labels, "panoptic", "scene.mp4")
    truths = [truth for _, truth in synthetic_clip(160, 120, 3, seed=4)]
    for index, truth in enumerate(truths):
        truth.index = index
        writer.add(truth)
    writer.close()

    document = json.loads((tmp_path / "panoptic.json").read_text())
    assert [c["id"] for c in document["categories"]] == category_ids(labels)
    assert [c["name"] for c in document["categories"]] == [c.name for c in CLASSES]
    assert len(document["images"]) == len(document["annotations"]) == 3
    for annotation, truth in zip(document["annotations"], truths):
        rgb = cv2.imread(str(tmp_path / "panoptic" / annotation["file_name"]))[..., ::-1]
        ids = rgb_to_id(rgb)
        assert set(np.unique(ids)) - {0} == {s["id"] for s in annotation["segments_info"]}
        for info in annotation["segments_info"]:
            rle = coco_mask.encode(np.asfortranarray((ids == info["id"]).astype(np.uint8)))
            assert int(coco_mask.area(rle)) == info["area"]
            assert coco_mask.toBbox(rle).tolist() == info["bbox"]
            row = truth.segments.index_of(info["id"] - 1)
            assert document["categories"][truth.segments.class_ids[row]]["id"] == info["category_id"]
        np.testing.assert_array_equal(ids - 1, np.where(truth.label_map >= 0, truth.label_map, -1))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    paths = []
    for seed in (21, 22):
        video = folder / f"scene{seed}.mp4"
        write_clip(video, folder / f"scene{seed}_truth.npz", 160, 120, 8, seed=seed)
        paths.append(video)
    return paths


def test_pq_from_the_coco_files_alone_equals_segstream_evaluate(tmp_path, clips, capsys):
    from segstream.pipeline.cli import main

    out = tmp_path / "out"
    assert main(["batch", *map(str, clips), "--out", str(out), "--set", "model.device=cpu",
                 "--set", "batch.jsonl=false", "--set", "ops.http=null", "--no-progress"]) == 0
    labels = load_label_set("synthetic")
    tally = PanopticTally(labels.thing_ids, labels.stuff_ids)
    for video in clips:
        truths = load_truth(video.with_name(f"{video.stem}_truth.npz"))
        predictions = read_coco_panoptic(out / video.stem / "panoptic.json")
        assert [p.index for p in predictions] == list(range(len(truths)))
        for prediction, truth in zip(predictions, truths):
            tally.add(prediction, truth)
    from_files = tally.summary()

    capsys.readouterr()
    assert main(["evaluate", "--clips", *map(str, clips), "--device", "cpu"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["frames"] == from_files["frames"] == 16
    assert 0 < evaluated["pq"] < 1, "a PQ of 0 or 1 would match trivially"
    for key in ("pq", "sq", "rq", "pq_things", "pq_stuff"):
        assert from_files[key] == pytest.approx(evaluated[key], abs=1e-12), key
    # Found probing: --frames was ignored with --clips (and --clips with --tracking, which scores them now)
    assert main(["evaluate", "--clips", *map(str, clips), "--device", "cpu", "--frames", "3"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["frames"] == 3 * len(clips)
    assert main(["evaluate", "--tracking", "--no-model", "--clips", *map(str, clips), "--frames", "3"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["noisy_truth"]["frames"] == 3 * len(clips)
