"""Training and evaluating on pictures of one's own (COCO panoptic, as a batch writes it), and a
training run that is stopped or killed keeping its work for --resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from segstream.connectors.coco_panoptic import CocoPanopticDataset, CocoPanopticWriter, id_to_rgb
from segstream.connectors.errors import ConfigError
from segstream.connectors.synthetic import SyntheticScene
from segstream.models.label_sets import LabelSet, load_label_set
from segstream.pipeline.training import TrainingRun, TrainSettings, load_state, smoke_config, train

REPO = Path(__file__).resolve().parents[1]


def write_scenes(folder: Path, frames: int, seed: int) -> list:
    """Synthetic frames and their truth written as a batch writes COCO panoptic (pictures too)."""
    writer = CocoPanopticWriter(folder, load_label_set("synthetic"), images=True)
    scene = SyntheticScene(width=96, height=72, seed=seed)
    truths = []
    for index in range(frames):
        image, truth = scene.render()
        truth.index, truth.image = index, image
        writer.add(truth)
        truths.append(truth)
    writer.close()
    return truths


def test_a_batch_s_coco_files_read_back_as_the_ground_truth_they_were_written_from(tmp_path):
    truths = write_scenes(tmp_path / "day1", 3, seed=2)
    data = CocoPanopticDataset(tmp_path / "day1" / "panoptic.json")
    assert len(data) == 3 and data.labels.names == load_label_set("synthetic").names
    assert data.labels.name == "day1"  # a batch's panoptic.json is named by its folder
    for (image, truth), want in zip(data, truths, strict=True):
        assert image.shape == (72, 96, 3) and image.dtype == np.uint8
        kept = [i for i in range(len(want.segments)) if (want.label_map == i).any()]
        remap = np.full(len(want.segments) + 1, -1)
        remap[kept] = np.arange(len(kept))
        assert np.array_equal(truth.label_map, remap[want.label_map])
        assert truth.segments.class_ids.tolist() == want.segments.class_ids[kept].tolist()
        assert truth.segments.ids.tolist() == list(range(len(kept)))


def test_coco_s_own_ids_category_gaps_and_crowds_become_contiguous_classes_and_void(tmp_path):
    """COCO's PNG ids are any numbers and its category ids have gaps; a crowd region is void, and
    given apart for PQ."""
    ids = np.zeros((4, 6), np.int64)
    ids[:, :2], ids[:, 2:4], ids[:, 4:] = 3_000_001, 7, 255 * 256  # a person, the road, a crowd of people
    (tmp_path / "panoptic_val").mkdir()
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "panoptic_val" / "a.png"), id_to_rgb(ids)[..., ::-1])
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.full((4, 6, 3), 90, np.uint8))
    document = {
        "images": [{"id": 5, "file_name": "a.png", "width": 6, "height": 4}],
        "annotations": [{"image_id": 5, "file_name": "a.png", "segments_info": [
            {"id": 3_000_001, "category_id": 1, "iscrowd": 0}, {"id": 7, "category_id": 128, "iscrowd": 0},
            {"id": 255 * 256, "category_id": 1, "iscrowd": 1}, {"id": 99, "category_id": 1}]}],  # 99: no pixel
        "categories": [{"id": 128, "name": "road", "isthing": 0}, {"id": 1, "name": "person", "isthing": 1}],
    }
    (tmp_path / "panoptic_val.json").write_text(json.dumps(document))
    data = CocoPanopticDataset(tmp_path / "panoptic_val.json")
    assert data.labels == LabelSet("panoptic_val", ("person", "road"), (True, False), coco_ids=(1, 128))
    _, truth = data[0]
    assert truth.label_map.tolist() == [[0, 0, 1, 1, -1, -1]] * 4
    assert truth.segments.class_ids.tolist() == [0, 1] and truth.segments.areas.tolist() == [8, 8]
    ((_, scored, crowd),) = data.scored_frames()
    assert scored.label_map.tolist() == truth.label_map.tolist()
    assert crowd.tolist() == [[-1, -1, -1, -1, 0, 0]] * 4  # person's class id
    assert [(c["id"], c["name"], c["coco_id"]) for c in data.label_file_data()["classes"]] == [
        (0, "person", 1), (1, "road", 128)]


def test_data_that_is_not_coco_panoptic_or_misses_files_is_one_line_naming_it(tmp_path):
    write_scenes(tmp_path / "day1", 2, seed=1)
    json_path = tmp_path / "day1" / "panoptic.json"
    (tmp_path / "day1" / "images" / "00000001.jpg").unlink()
    with pytest.raises(ConfigError, match=r"00000001.jpg: no such picture \(1 of 2 missing\) — give the folder "
                                          r"that holds them with --images"):
        CocoPanopticDataset(json_path)
    _edit(json_path, lambda d: d["categories"][0].update(name=" "))
    with pytest.raises(ConfigError, match=r"categories\[0\] needs an integer id, a name \(not empty\)"):
        CocoPanopticDataset(json_path)
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps({"images": [], "annotations": [{"image_id": 1, "bbox": [0, 0, 1, 1]}],
                                     "categories": [{"id": 1, "name": "a", "isthing": 1}]}))
    with pytest.raises(ConfigError, match=r"annotations\[0\] needs image_id, file_name \(its PNG\) and segments_info"):
        CocoPanopticDataset(instances)
    with pytest.raises(ConfigError, match="no such file"):
        CocoPanopticDataset(tmp_path / "nothing.json")


class _StopAfter:
    """A dataset that sets ``run.stop`` once ``draws`` pictures were taken: the run stops after
    the step that took them."""

    def __init__(self, data, run: TrainingRun, draws: int):
        self.data, self.run, self.draws, self.labels, self.json_path = data, run, draws, data.labels, data.json_path
        self.masks, self.images = data.masks, data.images

    def __len__(self):
        return len(self.data)

    def __getitem__(self, k):
        self.draws -= 1
        if self.draws == 0:
            self.run.stop.set()
        return self.data[k]


def test_a_stopped_run_keeps_its_state_and_a_resumed_one_goes_on_from_its_step(tmp_path):
    write_scenes(tmp_path / "day1", 4, seed=3)
    data = CocoPanopticDataset(tmp_path / "day1" / "panoptic.json")
    settings = TrainSettings(config=smoke_config(), steps=5, batch_size=2, lr=2e-3)
    state_path = tmp_path / "m.state.pt"
    run = TrainingRun(state_path=state_path)
    run.data = _StopAfter(data, run, draws=2 * 2)
    _, report = train(settings, progress=False, run=run)
    assert report.stopped and report.steps == 2 and report.done == pytest.approx(0.4)
    state = load_state(state_path, "eomt", settings, data)
    assert state["step"] == 2
    with pytest.raises(ValueError, match=r"other settings \(data '.*day1/panoptic.json .*' there, None here\)"):
        load_state(state_path, "eomt", settings)  # the state of a run on other pictures (found reviewing)
    import shutil

    shutil.copytree(tmp_path / "day1" / "images", tmp_path / "copy")
    elsewhere = CocoPanopticDataset(tmp_path / "day1" / "panoptic.json", images=tmp_path / "copy")
    with pytest.raises(ValueError, match="other settings"):  # the same JSON, its pictures from another folder
        load_state(state_path, "eomt", settings, elsewhere)

    resumed = TrainingRun(state_path=state_path, resume=state, data=data)
    model, report = train(settings, progress=False, run=resumed)
    assert not report.stopped and report.steps == 5 and len(report.losses) == 3  # steps 3 to 5 only
    assert float(model.attn_mask_probs.sum()) == 0
    other = TrainSettings(config=smoke_config(), steps=5, batch_size=4, lr=2e-3)
    with pytest.raises(ValueError, match=r"other settings \(batch_size 2 there, 4 here\)"):
        load_state(state_path, "eomt", other, data)


def _script(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "scripts" / "train_synthetic.py"), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_script_trains_on_coco_data_stops_on_sigint_resumes_and_writes_readable_weights_and_labels(tmp_path,
                                                                                                     capsys, monkeypatch):
    """Found probing as a model trainer: no way to train on one's own pictures; Ctrl-C threw the
    whole run away (a traceback, exit 1) and nothing resumed; weights came out owner-only (-rw-------)
    from safetensors, unreadable by a container's other user."""
    write_scenes(tmp_path / "train", 4, seed=4)
    write_scenes(tmp_path / "val", 2, seed=5)
    args = ["--data", "train/panoptic.json", "--val", "val/panoptic.json", "--steps", "6", "--batch-size", "1",
            "--out", "out/m.safetensors", "--save-every", "0.001", "--init", "shipped"]
    process = _script(*args, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not (tmp_path / "out" / "m.state.pt").exists():  # kept after every step here: it has begun
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "go on with the same command and --resume" in err, err
    assert json.loads(out)["finished"] is False
    assert (tmp_path / "out" / "m.partial.safetensors").exists() and not (tmp_path / "out" / "m.safetensors").exists()
    # found reviewing: the partial weights of one's own classes came without the labels file they need
    assert (tmp_path / "out" / "m.partial.labels.json").exists() and "their classes: " in err
    assert not (tmp_path / "out" / "m.labels.json").exists()  # the finished model's name, none here yet

    # found reviewing: --resume took the state's start whatever --init said (in this process: a
    # command's start is seconds of CI)
    import runpy

    from segstream.pipeline.train_cli import main_guard

    script = runpy.run_path(str(REPO / "scripts" / "train_synthetic.py"), run_name="train_synthetic")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train_synthetic.py", *args[:-1], str(REPO / "models" / "weights" /
                                      "synthetic_senatra_tiny_192.safetensors"), "--resume"])
    code = main_guard(script["main"])
    err = capsys.readouterr().err
    assert code == 2 and "the kept state started from " in err and "Traceback" not in err, err

    umask = os.umask(0o022)  # as a shell's usual one: files the group and others may read
    try:
        resumed = _script(*args, "--resume", cwd=tmp_path)
        out, err = resumed.communicate(timeout=300)
    finally:
        os.umask(umask)
    assert resumed.returncode == 0, err
    facts = json.loads(out)
    assert facts["steps"] == 6 and facts["held_out"]["frames"] == 2 and facts["settings"]["batch_size"] == 1
    # fine-tuned from the shipped model (kept in the state across the resume): six steps from
    # random weights segment nothing (PQ 0.0 here), from the shipped ones what it does
    assert facts["init"] == str(REPO / "models" / "weights" / "synthetic_eomt_tiny_256.safetensors")
    assert facts["held_out"]["pq"] > 0.5, facts
    weights, labels = tmp_path / "out" / "m.safetensors", tmp_path / "out" / "m.labels.json"
    assert oct(weights.stat().st_mode & 0o777) == "0o644"
    assert [c["name"] for c in json.loads(labels.read_text())["classes"]] == list(load_label_set("synthetic").names)
    assert not [p.name for p in (tmp_path / "out").glob("m.*") if p.name not in ("m.safetensors", "m.labels.json")]
    assert f'"checkpoint": "{weights}", "labels": "{labels}"' in err

    # the trained model measured on the held-out pictures (in this process: a command's start is seconds of CI)
    from segstream.pipeline.cli import main

    assert main(["evaluate", "--data", str(tmp_path / "val" / "panoptic.json"), "--checkpoint", str(weights),
                 "--json", "--device", "cpu"]) == 0  # its classes: the labels file beside it
    result = json.loads(capsys.readouterr().out)
    assert result["checkpoint"] == str(weights) and result["frames"] == 2
    assert result["data"] == str(tmp_path / "val" / "panoptic.json")


def test_bad_training_options_are_one_line_each(tmp_path, monkeypatch, capsys):
    """Found probing: --steps 0 was a ZeroDivisionError traceback, --device cuda without a GPU a
    RuntimeError's."""
    import runpy

    from segstream.pipeline.train_cli import main_guard

    script = runpy.run_path(str(REPO / "scripts" / "train_synthetic.py"), run_name="train_synthetic")
    cases = [(["--steps", "0"], "argument --steps: must be more than 0, got 0"),
             (["--masks", "x"], "--masks goes with --data"),
             (["--resume", "--out", "none/m.safetensors"], "--resume: none/m.state.pt: no saved state to resume from"),
             # without --resume an unfinished run is not thrown away
             (["--out", "kept/m.safetensors"], "holds an unfinished run of --out kept/m.safetensors: go on with --resume"),
             (["--init", "none.safetensors"], "--init none.safetensors: no such file"),
             # SeNaTra's weights for EoMT: said before any training
             (["--init", str(REPO / "models" / "weights" / "synthetic_senatra_tiny_192.safetensors"), "--out",
               "x/m.safetensors"], "not weights of this model's architecture: missing cls_token")]
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "m.state.pt").write_bytes(b"")
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "--device cuda: this torch sees no CUDA GPU — use --device cpu"))
    monkeypatch.chdir(tmp_path)
    for args, said in cases:
        monkeypatch.setattr(sys, "argv", ["train_synthetic.py", *args])
        try:
            code = main_guard(script["main"])
        except SystemExit as exit:  # argparse's own
            code = exit.code
        err = capsys.readouterr().err
        # one line says it (argparse's usage lines before its own, as for segstream's commands)
        assert code == 2 and said in err.strip().splitlines()[-1] and "Traceback" not in err, (args, err)


def _edit(json_path: Path, change) -> None:
    document = json.loads(json_path.read_text(encoding="utf-8-sig"))
    change(document)
    json_path.write_text(json.dumps(document))


def test_pictures_without_a_labelled_segment_are_left_out_and_void_pixels_are_no_class(tmp_path):
    """Found probing a labelling loop: a picture not labelled yet (all void, or all crowd) crashed
    training with an IndexError; and void pixels counted as the last segment's class in the
    patch-class targets."""
    from segstream.pipeline.training import DatasetFeed, training_targets

    write_scenes(tmp_path / "day1", 3, seed=6)
    json_path = tmp_path / "day1" / "panoptic.json"

    def unlabel(document):
        for s in document["annotations"][0]["segments_info"]:
            s["iscrowd"] = 1
        document["annotations"][1]["segments_info"] = []

    _edit(json_path, unlabel)
    data = CocoPanopticDataset(json_path)
    assert data.check(progress=False) == [2] and data.labelled == [2]
    feed = DatasetFeed(TrainSettings(config=smoke_config(), batch_size=2), data)
    assert all(len(feed.draw()[1].segments) for _ in range(10))

    _, truth = data[2]
    cfg = smoke_config()
    truth.segment_map = truth.label_map.copy()
    truth.segment_map[:, : truth.width // 2] = -1  # the left half unlabelled
    target, shares = training_targets(truth, cfg)
    grid = shares.reshape(cfg.grid_size, cfg.grid_size, cfg.num_classes).sum(-1)
    assert grid[:, 0].max() == 0  # void patches hold no class (they held the last segment's)
    assert grid[0, -1] > 0.99  # a labelled patch (top right) is wholly its classes


def test_a_training_label_file_s_coco_ids_are_the_ids_a_batch_writes(tmp_path):
    """Found probing: a model trained on COCO data whose categories are 10, 40, 90 wrote categories
    1, 2, 3 in its batch's COCO JSON; the round trip to the labelling tool lost the data's ids."""
    from segstream.connectors.coco_panoptic import categories
    from segstream.models.label_sets import read_label_set_file

    write_scenes(tmp_path / "day1", 1, seed=7)
    json_path = tmp_path / "day1" / "panoptic.json"
    _edit(json_path, lambda d: [c.update(id=10 * c["id"]) for c in d["categories"]] and None or [
        s.update(category_id=10 * s["category_id"]) for a in d["annotations"] for s in a["segments_info"]])
    data = CocoPanopticDataset(json_path)
    written = tmp_path / "m.labels.json"
    written.write_text(json.dumps(data.label_file_data("warehouse")))
    labels = read_label_set_file(written)
    assert labels.name == "warehouse" and labels.coco_ids == tuple(10 * (k + 1) for k in range(len(labels.names)))
    assert [c["id"] for c in categories(labels)] == list(labels.coco_ids)
    assert load_label_set("synthetic").coco_ids is None and [c["id"] for c in categories(load_label_set("synthetic"))] \
        == list(range(1, 9))


def test_a_batch_wide_json_a_bom_a_held_out_set_s_own_folders_and_duplicate_ids(tmp_path):
    write_scenes(tmp_path / "out" / "day1", 2, seed=8)
    # a batch's panoptic_batch.json names its files from its own folder
    batch_json = tmp_path / "out" / "panoptic_batch.json"
    document = json.loads((tmp_path / "out" / "day1" / "panoptic.json").read_text())
    for image, annotation in zip(document["images"], document["annotations"]):
        image["file_name"], annotation["file_name"] = f"day1/images/{image['file_name']}", f"day1/panoptic/{annotation['file_name']}"
    batch_json.write_text("\ufeff" + json.dumps(document), encoding="utf-8")  # with a byte-order mark
    assert len(CocoPanopticDataset(batch_json)) == 2
    # both folders wrong: both said at once, by the options of the set they are about
    with pytest.raises(ConfigError, match=r"no such picture .* with --val-images; .* no such PNG .* with --val-masks"):
        CocoPanopticDataset(batch_json, tmp_path, tmp_path, options=("--val-masks", "--val-images"))
    _edit(batch_json, lambda d: d["images"].append(dict(d["images"][0])))
    with pytest.raises(ConfigError, match="two images have one id"):
        CocoPanopticDataset(batch_json)


def test_an_unwritable_out_a_corrupt_state_and_another_data_s_state_are_one_line_each(tmp_path, monkeypatch, capsys):
    """Found probing: a read-only --out was found when the weights were saved, after the training,
    as a 22-line SafetensorError traceback; a corrupt state said torch's zip internals."""
    import runpy

    from segstream.pipeline.train_cli import main_guard

    script = runpy.run_path(str(REPO / "scripts" / "train_synthetic.py"), run_name="train_synthetic")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "m.state.pt").write_bytes(b"PK\x03\x04 not a whole zip")
    (tmp_path / "adir").mkdir()
    for args, code, said in [
        (["--out", "a_file/m.safetensors"], 2, "--out a_file/m.safetensors: cannot write in its folder"),
        # found reviewing: a folder as --out was found after the whole training, advised to free space
        (["--out", "adir"], 2, "--out adir: a folder — give the weights file's path"),
        (["--out", "out/m.safetensors", "--resume"], 2, "not a training state this script saved"),
    ]:
        monkeypatch.setattr(sys, "argv", ["train_synthetic.py", "--steps", "1", *args])
        assert main_guard(script["main"]) == code
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert "delete it to start again" in err

    # found reviewing: a write that fails kept a model-sized hidden file beside the target
    from segstream.pipeline.training import save_model

    with pytest.raises(OSError):
        save_model(__import__("segstream.models.eomt", fromlist=["EoMT"]).EoMT(smoke_config()), tmp_path / "adir", {})
    assert not list(tmp_path.glob(".adir*"))
    settings = TrainSettings(config=smoke_config(), steps=5)
    from segstream.pipeline.training import save_state

    model = __import__("segstream.models.eomt", fromlist=["EoMT"]).EoMT(smoke_config())
    import torch

    save_state(tmp_path / "s.pt", "eomt", settings, {"model": model}, torch.optim.AdamW(model.parameters()), 1, 1.0)
    from dataclasses import replace

    other = TrainSettings(config=replace(smoke_config(), num_classes=5), steps=5)
    with pytest.raises(ValueError, match=r"other settings \(num_classes 8 there, 5 here\)"):
        load_state(tmp_path / "s.pt", "eomt", other)


def test_evaluate_s_closing_json_line_is_json_when_an_average_has_no_class(tmp_path, capsys):
    """Found probing: evaluate's table ended with {"pq": NaN, ...}, which is no JSON."""
    from segstream.pipeline.cli import main

    write_scenes(tmp_path / "crowd", 1, seed=9)
    _edit(tmp_path / "crowd" / "panoptic.json",
          lambda d: [s.update(iscrowd=1) for a in d["annotations"] for s in a["segments_info"]])
    assert main(["evaluate", "--data", str(tmp_path / "crowd" / "panoptic.json"), "--device", "cpu"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]

    def no_constants(name):
        raise AssertionError(f"{name} in {last}")

    assert json.loads(last, parse_constant=no_constants)["pq"] is None
    # found reviewing: --seeds and --size were ignored with --data without a word
    assert main(["evaluate", "--data", str(tmp_path / "crowd" / "panoptic.json"), "--size", "64", "48"]) == 2
    assert "--size is for rendered synthetic scenes; with --data the frames are those given" in capsys.readouterr().err


def test_evaluate_data_counts_crowd_regions_by_coco_s_rules(tmp_path, capsys):
    """A crowd excuses only predictions of its own class (found auditing: evaluate --data made
    crowd void, which excused any). Every segment here is a crowd of the next class: whatever the
    model finds lies on a crowd of another class, a false positive."""
    from segstream.pipeline.cli import main

    write_scenes(tmp_path / "crowd", 1, seed=9)

    def crowd_of_another_class(document):
        count = len(document["categories"])
        for segment in document["annotations"][0]["segments_info"]:
            segment.update(iscrowd=1, category_id=segment["category_id"] % count + 1)

    _edit(tmp_path / "crowd" / "panoptic.json", crowd_of_another_class)
    assert main(["evaluate", "--data", str(tmp_path / "crowd" / "panoptic.json"), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    counts = [(c["tp"], c["fp"], c["fn"]) for c in result["per_class"].values()]
    assert counts and all(tp == fn == 0 and fp > 0 for tp, fp, fn in counts), counts
    assert result["pq"] == 0.0
    assert "crowd" in result["definitions"] and "IoU > 0.5" in result["definitions"]["match"]


def test_a_stopped_run_leaves_a_finished_model_s_labels_alone(tmp_path):
    """Found reviewing the mend: a stopped run wrote its classes over (or, without --data, deleted)
    the labels file of the finished model at the same --out, which it does not replace."""
    import argparse

    from segstream.pipeline.training import TrainReport
    from segstream.pipeline.train_cli import finish

    write_scenes(tmp_path / "b", 1, seed=11)
    data = CocoPanopticDataset(tmp_path / "b" / "panoptic.json")
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"the finished model")
    (tmp_path / "m.labels.json").write_text("its classes")
    args = argparse.Namespace(out=out, name=None)
    stopped = TrainReport(3, 1.0, [1.0], 3, stopped=True, done=0.3)
    for given in (data, None):
        code = finish(args, stopped, [signal.SIGTERM], lambda path, meta: path.write_bytes(b"partial"), {}, given, {})
        assert code == 143
        assert out.read_bytes() == b"the finished model" and (tmp_path / "m.labels.json").read_text() == "its classes"
    assert not (tmp_path / "m.partial.labels.json").exists()  # the last stop was of a run without --data


def test_a_second_stop_signal_aborts_training_with_its_own_status():
    """Found reviewing: the second signal's exit was 130 whichever it was."""
    from segstream.pipeline.train_cli import main_guard, stop_on_signals

    def training():
        with stop_on_signals(TrainingRun()) as got:
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        return 0

    assert main_guard(training) == 143


def test_a_senatra_run_on_one_s_own_pictures_stops_and_resumes_from_its_state(tmp_path):
    """Found reviewing: nothing trained SeNaTra on --data with a kept state (its resume was refused)."""
    from dataclasses import replace

    from segstream.models.presets import SYNTHETIC_SENATRA
    from segstream.pipeline.senatra_training import SeNaTraTrainSettings, train_senatra

    write_scenes(tmp_path / "day1", 2, seed=12)
    data = CocoPanopticDataset(tmp_path / "day1" / "panoptic.json")
    data.check(progress=False)
    settings = SeNaTraTrainSettings(config=replace(SYNTHETIC_SENATRA.config), steps=3, batch_size=1, threads=1)
    run = TrainingRun(state_path=tmp_path / "s.state.pt")
    run.data = _StopAfter(data, run, draws=1)
    _, report = train_senatra(settings, progress=False, run=run)
    assert report.stopped and report.steps == 1
    state = load_state(tmp_path / "s.state.pt", "senatra", settings, data)
    _, report = train_senatra(settings, progress=False, run=TrainingRun(resume=state, data=data))
    assert not report.stopped and report.steps == 3


def test_a_config_naming_only_a_trained_checkpoint_runs_it_with_its_preset_and_its_classes(tmp_path):
    """Found left from stop 30: a SeNaTra checkpoint written by segstream's training failed in
    run and batch ("it is not an EoMT checkpoint ... set model.family: senatra") although its
    metadata names its preset, and weights of one's own classes needed model.labels although
    their labels file lies beside them."""
    import shutil

    from segstream.models.presets import SYNTHETIC_SENATRA
    from segstream.pipeline.config import load_config
    from segstream.pipeline.model_factory import build_segmenter, check_model_config

    folder = tmp_path / "runs"
    folder.mkdir()
    shutil.copy(REPO / "models" / "weights" / f"{SYNTHETIC_SENATRA.name}.safetensors", folder / "model.safetensors")
    source = [{"name": "cam", "type": "synthetic", "num_frames": 1}]
    model = load_config({"sources": source, "model": {"checkpoint": "runs/model.safetensors"}}, base_dir=tmp_path).model
    assert model.preset == SYNTHETIC_SENATRA.name and model.labels is None
    assert build_segmenter(model, batch_size=1).family == "senatra"
    # a model folder (a training run's --out folder) says the same
    assert load_config({"sources": source, "model": {"checkpoint": "runs"}}, base_dir=tmp_path).model.preset == \
        SYNTHETIC_SENATRA.name
    # what is written wins: a preset, or a family the checkpoint's preset is not of
    written = load_config({"sources": source, "model": {"checkpoint": "runs/model.safetensors", "family": "eomt"}},
                          base_dir=tmp_path).model
    assert written.preset == "synthetic_eomt_tiny_256"

    own = [{"id": i, "name": f"part{i}", "isthing": i < 3} for i in range(load_label_set(SYNTHETIC_SENATRA.label_set).num_classes)]
    (folder / "model.labels.json").write_text(json.dumps({"name": "parts", "classes": own}))
    model = load_config({"sources": source, "model": {"checkpoint": "runs/model.safetensors"}}, base_dir=tmp_path).model
    assert model.labels == str(folder / "model.labels.json")
    assert check_model_config(model).label_set.names[0] == "part0"
    (folder / "model.labels.json").write_text('{"name": "parts"}')
    with pytest.raises(ConfigError) as error:
        load_config({"sources": source, "model": {"checkpoint": "runs/model.safetensors"}}, base_dir=tmp_path)
    assert "the labels file beside the checkpoint" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("family", ["eomt", "senatra"])
def test_fine_tuning_starts_from_the_shipped_weights_with_a_fresh_head_for_other_classes(family):
    """Found left from stop 30: training could only start from random weights (no --init), so a
    few pictures of one's own could not build on the shipped model."""
    from dataclasses import replace

    from segstream.connectors.checkpoints import checkpoint_path, read_state_dict
    from segstream.models.eomt import EoMT
    from segstream.models.presets import SYNTHETIC_SENATRA, SYNTHETIC_TINY
    from segstream.models.senatra import SeNaTra
    from segstream.pipeline.training import CLASS_HEADS, start_from

    preset, build = (SYNTHETIC_TINY, EoMT) if family == "eomt" else (SYNTHETIC_SENATRA, SeNaTra)
    shipped = read_state_dict(checkpoint_path(preset.weights))
    model = build(replace(preset.config, num_classes=3))  # three classes of one's own
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k in CLASS_HEADS[family]}
    path, fresh = start_from(model, preset.weights, family)
    assert path == checkpoint_path(preset.weights) and fresh == list(CLASS_HEADS[family])
    state = model.state_dict()
    assert all(torch.equal(state[k], head_before[k]) for k in fresh)
    assert all(torch.equal(state[k], shipped[k]) for k in shipped if k not in fresh)
    # the same classes: every tensor, the head's too
    same = build(preset.config)
    assert start_from(same, preset.weights, family)[1] == []
    assert all(torch.equal(same.state_dict()[k], shipped[k]) for k in shipped)


def test_trained_weights_carry_their_class_names_and_a_run_of_other_names_refuses_them(tmp_path, capsys):
    """Found probing: weights trained on renamed classes, copied without their labels file, ran
    under the preset's names (the same count: every segment named as another class)."""
    import argparse
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    from segstream.connectors.checkpoints import check_checkpoint, load_eomt, read_state_dict, shipped_weights
    from segstream.connectors.errors import CheckpointError
    from segstream.models.presets import SYNTHETIC_TINY
    from segstream.pipeline.config import ModelConfig
    from segstream.pipeline.model_factory import check_model_config
    from segstream.pipeline.training import TrainReport
    from segstream.pipeline.train_cli import finish

    shipped = read_state_dict(shipped_weights(SYNTHETIC_TINY.weights))
    synthetic = load_label_set(SYNTHETIC_TINY.label_set).names
    renamed = ("ball", *synthetic[1:])
    args = argparse.Namespace(out=tmp_path / "model.safetensors", name=None)
    done = TrainReport(3, 1.0, [1.0], 3)
    for data, names in ((None, synthetic), (argparse.Namespace(labels=LabelSet("renamed", renamed, (True,) * 8)),
                                            renamed)):
        if data is not None:
            data.label_file_data = lambda name: {"name": "renamed", "classes": [
                {"id": i, "name": n, "isthing": True} for i, n in enumerate(renamed)]}
        assert finish(args, done, [], lambda path, meta: save_file(shipped, str(path), meta),
                      {"preset": SYNTHETIC_TINY.name}, data, {"preset": SYNTHETIC_TINY.name}) == 0
        with safe_open(str(args.out), "pt") as opened:
            assert json.loads(opened.metadata()["labels"]) == list(names)
    capsys.readouterr()
    alone = tmp_path / "alone.safetensors"  # the weights copied without their labels file
    shutil.copy(args.out, alone)
    said = (f"checkpoint '{alone}' was trained on other classes than preset synthetic_eomt_tiny_256's label set "
            f"(synthetic) names (class 0 is 'ball' there, '{synthetic[0]}' here) — set model.labels to the labels "
            "file its training wrote beside it")
    for check in (load_eomt, check_checkpoint):
        with pytest.raises(CheckpointError) as refused:
            check(SYNTHETIC_TINY, str(alone))
        assert str(refused.value).startswith(said), refused.value
    # with its labels: it loads; the shipped weights (no class names written) load as before
    own = check_model_config(ModelConfig(checkpoint=str(alone), labels=str(args.out.with_name("model.labels.json"))))
    assert own.label_set.names == renamed and load_eomt(own, str(alone)) is not None
    check_checkpoint(SYNTHETIC_TINY)


def test_evaluate_data_matches_the_ground_truth_s_classes_to_the_model_s_by_name(tmp_path, capsys):
    """Found probing as an ML engineer: ground truth listing the model's classes in another order,
    only those it uses, or a name in other case was refused ("not those of the ground truth, in
    the same order"), where panopticapi matches by category; a COCO model could not be scored on
    pictures labelled with a few of its classes."""
    from segstream.pipeline.cli import main

    write_scenes(tmp_path / "own", 4, seed=9)
    data = tmp_path / "own" / "panoptic.json"
    args = ["evaluate", "--data", str(data), "--device", "cpu", "--precision", "fp32", "--json"]
    assert main(args) == 0
    same_order = json.loads(capsys.readouterr().out)
    scored = set(same_order["per_class"])  # classes in the pictures or predicted
    assert 0 < same_order["pq"] < 1 and len(scored) >= 3

    def renumbered(document):  # the categories' ids reversed, one renamed in capitals, the unused ones left out
        top = max(c["id"] for c in document["categories"])
        document["categories"] = [{**c, "id": top + 1 - c["id"], "name": c["name"].upper() if c["name"] == "disc"
                                   else c["name"]} for c in document["categories"] if c["name"] in scored]
        for annotation in document["annotations"]:
            for segment in annotation["segments_info"]:
                segment["category_id"] = top + 1 - segment["category_id"]

    _edit(data, renumbered)
    assert main(args) == 0
    by_name = json.loads(capsys.readouterr().out)
    assert by_name.pop("definitions")["classes"].startswith("the ground truth's matched to the model's by name")
    same_order.pop("definitions")
    assert by_name == same_order
    assert main(args[:-1]) == 0  # the table: of the ground truth's classes only
    shown = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ") and not line.startswith("   ")}
    assert shown == scored, shown

    _edit(data, lambda d: d["categories"].append({"id": 99, "name": "forklift", "isthing": 1}))
    assert main(args) == 2
    assert "the ground truth's classes forklift are not among the model's (disc, box" in capsys.readouterr().err
    _edit(data, lambda d: d["categories"][-1].update(name="disks"))
    assert main(args) == 2
    assert "the ground truth's classes disks (the model's disc?) are not among" in capsys.readouterr().err
    _edit(data, lambda d: d["categories"][-1].update(name="forklift"))
    _edit(data, lambda d: d["categories"].pop() and [c.update(isthing=0) for c in d["categories"] if c["name"] == "DISC"])
    assert main(args) == 2
    assert "DISC (stuff in the ground truth) the model has as the other kind" in capsys.readouterr().err
