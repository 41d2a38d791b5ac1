"""segstream batch on the local engine: inputs, every frame written, failures recorded, resuming."""

import codecs
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import unicodedata
from pathlib import Path

import pytest
import torch
from pydantic import TypeAdapter

import segstream
from segstream.connectors.errors import ConfigError
from segstream.connectors.files_sink import read_entries
from segstream.connectors.redis_wire import event_from_wire, from_wire
from segstream.connectors.coco_panoptic import read_coco_panoptic
from segstream.models.segmenter import default_precision
from segstream.pipeline.batch import (MANIFEST, REDIS_MARKS, VideoJob, VideoOutcome, find_videos, output_lock, plan, run_batch,
                                      summary_json, summary_table)
from segstream.pipeline.config import BatchPipelineConfig, SourceName, validate_config
from tests.conftest import ColourSegmenter, encode_clip

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """Three clips (two in a subfolder), a corrupt one, and a text file that is not a video."""
    root = tmp_path_factory.mktemp("archive")
    (root / "day2").mkdir()
    encode_clip(root / "a.mp4", frames=12)
    encode_clip(root / "day2" / "b.mp4", frames=9)
    encode_clip(root / "day2" / "c10.mp4", frames=7)
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    (root / "notes.md").write_text("not a video")
    return root


def config(out: Path, **batch) -> BatchPipelineConfig:
    return validate_config({"batch": {"output": str(out), **batch}, "ops": {"http": None}}, schema=BatchPipelineConfig)


def tree(root: Path) -> dict[str, bytes]:
    """Every output file under ``root`` (not the manifest or lock) by relative path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in (MANIFEST, ".lock")
    }


def manifest(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / MANIFEST).read_text().splitlines()]


def _one_video_done(tmp_path: Path, name: str) -> tuple[Path, Path, dict]:
    """A folder with one 3-frame video ``name``, batched into ``out``: the folder, ``out`` and the
    video's manifest line."""
    videos = tmp_path / "videos"
    videos.mkdir()
    encode_clip(videos / name, frames=3)
    out = tmp_path / "out"
    assert run_batch(config(out), [str(videos)], adapter=ColourSegmenter(), progress=False)[1] == 0
    [record] = manifest(out)
    return videos, out, record


def test_inputs_are_files_folders_globs_and_list_files(archive, tmp_path):
    listing = tmp_path / "videos.txt"
    listing.write_text(f"# the second day\n{archive / 'day2' / 'b.mp4'}\n\nmissing.mp4\n")
    found, warnings = find_videos(
        [str(archive / "a.mp4"), str(archive / "day2"), str(archive / "*.mp4"), str(listing), str(tmp_path / "none*.mp4")],
        [".mp4"],
    )
    names = [p.name for p in found]
    # order of first mention, no repeats; natural order in a folder; a listed missing file is kept (it fails later)
    assert names == ["a.mp4", "b.mp4", "c10.mp4", "corrupt.mp4", "missing.mp4"]
    assert found[-1] == tmp_path / "missing.mp4"
    assert warnings == [f"'{tmp_path / 'none*.mp4'}' matches no file"]


def test_a_batch_writing_into_the_folder_it_reads_never_takes_its_own_outputs_or_hidden_files_as_videos(tmp_path):
    # Found probing as a claims team: `batch claim --out claim/results` took results/a/overlay.mp4
    # as a new video on every rerun, and a Mac's `._a.mp4` beside each clip failed the batch
    claim = tmp_path / "claim"
    (claim / ".thumbnails").mkdir(parents=True)
    encode_clip(claim / "a.mp4", frames=3)
    (claim / "._a.mp4").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # AppleDouble: the Mac's metadata of a.mp4
    encode_clip(claim / ".thumbnails" / "t.mp4", frames=2)
    encode_clip(claim / "dash.m2ts", frames=2)
    encode_clip(claim / "old phone.3gp", frames=2)
    out = claim / "results"
    for _ in range(2):
        outcomes, skipped, _ = run_batch(config(out, overlay=True), [str(claim)], adapter=ColourSegmenter(),
                                         progress=False)
        assert all(outcome.status == "done" for outcome in outcomes), [outcome.reason for outcome in outcomes]
    assert (out / "a" / "overlay.mp4").is_file()
    assert skipped == 3 and outcomes == [], "the rerun found the same three videos, done before"
    assert sorted(record["video"].rsplit("/", 1)[-1] for record in manifest(out)) == ["a.mp4", "dash.m2ts",
                                                                                       "old phone.3gp"]
    found, _ = find_videos([str(claim / "**" / "*.mp4")], [".mp4"], outputs=[out])
    assert found == [claim / "a.mp4"], "a glob leaves them out too"
    assert find_videos([str(claim / "._a.mp4")], [".mp4"], outputs=[out])[0] == [claim / "._a.mp4"], "named: taken"


def test_a_folder_s_search_follows_links_to_folders_and_loses_no_broken_link_or_other_file_without_a_word(tmp_path):
    # Found probing a camera-trap archive: a site linked in from another disk was not searched, a broken
    # link of a clip's name was dropped without a word, and the stills beside the clips left out uncounted
    trap, elsewhere = tmp_path / "trap", tmp_path / "disk2" / "SiteB"
    (trap / "SiteA").mkdir(parents=True)
    elsewhere.mkdir(parents=True)
    encode_clip(trap / "SiteA" / "a.mp4", frames=2)
    (elsewhere / "b.mp4").write_bytes(b"")
    (trap / "SiteA" / "a.jpg").write_bytes(b"")
    (trap / "SiteA" / "DATA.TXT").write_bytes(b"")
    (trap / "SiteB").symlink_to(elsewhere)
    (trap / "SiteA" / "up").symlink_to(trap)  # a link to a folder above: searched once, not for ever
    (trap / "SiteA" / "c.mp4").symlink_to(tmp_path / "gone" / "c.mp4")
    (trap / "SiteC").symlink_to(tmp_path / "gone")
    os.mkfifo(trap / "SiteA" / "d.mp4")  # a pipe of a clip's name (found probing bad input: left out unsaid)
    found, warnings = find_videos([str(trap)], [".mp4"])
    assert found == [(trap / "SiteA" / "a.mp4").resolve(), trap / "SiteA" / "c.mp4", trap / "SiteA" / "d.mp4",
                     elsewhere.resolve() / "b.mp4"]
    assert warnings == [
        f"folder '{trap}': 1 broken link left out: {trap / 'SiteC'} -> {tmp_path / 'gone'}",
        f"folder '{trap}': 2 files of other extensions left out (.jpg 1, .txt 1): batch.extensions takes .mp4 — "
        "--set 'batch.extensions=[...]' names the ones to take (a picture is a video of one frame)",
    ]
    # the broken link of a clip's name is a video that fails, and says where it pointed
    outcomes, _, _ = run_batch(config(tmp_path / "out"), [str(trap / "SiteA" / s) for s in ("a.mp4", "c.mp4")],
                               adapter=ColourSegmenter(), progress=False)
    assert [(o.status, o.reason) for o in outcomes if o.job.id == "c"] == [
        ("failed", f"source c: '{trap / 'SiteA' / 'c.mp4'}' is a link to '{tmp_path / 'gone' / 'c.mp4'}', which does "
                   "not exist")]


def test_the_model_is_told_once_however_many_groups_of_videos_a_batch_runs(tmp_path, monkeypatch, caplog):
    # Found probing: the model's line came again every 64 videos (each group a runtime), read as a reload
    import segstream.pipeline.batch as batch

    monkeypatch.setattr(batch, "GROUP_SIZE", 1)
    for name in ("a.mp4", "b.mp4"):
        encode_clip(tmp_path / name, frames=2)
    caplog.set_level(logging.INFO, logger="segstream")
    cfg = config(tmp_path / "out")
    cfg.engine.threads = 8  # more threads than cores: that warning once too (found in review: once a group)
    outcomes, _, _ = run_batch(cfg, [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")], adapter=ColourSegmenter(),
                               progress=False)
    assert [o.status for o in outcomes] == ["done", "done"]
    assert sum("usable core(s)" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records) == 1
    assert sum("usable core(s);" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records) == 1


def test_a_list_from_standard_input_names_videos_relative_to_the_working_directory(archive, tmp_path, monkeypatch):
    # found probing as a CLI reviewer: `ls *.mp4 | segstream batch @- ...` looked for a list file named '-'
    import io

    from segstream.connectors import text_files

    monkeypatch.setattr(text_files, "_read_once", {}, raising=False)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"a.mp4\nday2/b.mp4\n")))
    monkeypatch.chdir(archive)
    found, warnings = find_videos(["@-"], [".mp4"])
    assert found == [archive / "a.mp4", archive / "day2" / "b.mp4"] and warnings == []
    assert find_videos(["@-"], [".mp4"])[0] == found, "standard input read once, as often as it is named"


def test_standard_input_cannot_be_both_the_config_and_the_list(tmp_path):
    # Found reviewing: both read one stream, and the config's text came out as a video that does not exist
    done = subprocess.run([sys.executable, "-m", "segstream", "batch", "@-", "--config", "-", "--out", str(tmp_path)],
                          input="model: {}\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == ("segstream: error: standard input can be the config (--config -) or the list of "
                                   "videos (@-), not both — give one of them as a file")


def test_a_list_file_saved_by_a_windows_editor_is_read_whole(tmp_path, capsys):
    # Found probing (i18n): a UTF-8 BOM made the first line '\ufeff# Liste', a path; UTF-16 was a traceback
    from segstream.pipeline.cli import main

    (tmp_path / "été").mkdir()
    video = tmp_path / "été" / "Kamera Süd.mp4"
    video.write_bytes(b"")
    text = "# Liste\r\nété/Kamera Süd.mp4\r\n"
    saved = {"bom.txt": codecs.BOM_UTF8 + text.encode(), "notepad_unicode.txt": text.encode("utf-16"),
             "utf16be.lst": codecs.BOM_UTF16_BE + text.encode("utf-16-be"), "utf32.txt": text.encode("utf-32")}
    for name, data in saved.items():
        (tmp_path / name).write_bytes(data)
        assert find_videos([str(tmp_path / name)], [".mp4"]) == ([video], []), name
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes(text.encode("latin-1"))
    code = main(["batch", str(latin1), "--out", str(tmp_path / "out")])
    assert code == 2 and capsys.readouterr().err.strip() == (
        f"segstream: error: the list file '{latin1}' is not UTF-8 text (byte 0xe9 at offset 9) — save it as UTF-8")
    assert not (tmp_path / "out").exists()
    marked = tmp_path / "no_mark.txt"  # UTF-16 without its mark: valid UTF-8, full of NULs (found in review)
    marked.write_bytes("# Liste\r\nclip.mp4\r\n".encode("utf-16-le"))
    assert main(["batch", str(marked), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"segstream: error: the list file '{marked}' holds NUL characters (UTF-16 without a byte-order mark?) — "
        "save it as UTF-8")


def test_video_ids_are_unique_source_names_and_keep_the_manifests(tmp_path):
    paths = [tmp_path / "x" / "cam 1.mp4", tmp_path / "y" / "cam 1.mp4", tmp_path / "cam 1.mkv"]
    ids = [job.id for job in plan(paths)]
    assert ids == ["x__cam_1", "y__cam_1", f"{tmp_path.name}__cam_1"]
    assert all(c.isalnum() or c in "_.-" for vid in ids for c in vid)
    # two videos of one stem in one folder: their extensions tell them apart, not a folder further up
    assert [job.id for job in plan([tmp_path / "b" / "day1.mov", tmp_path / "b" / "day1.mp4", tmp_path / "a" / "day1.mp4"])] \
        == ["day1_mov", "day1_mp4", "day1"]
    # a video the manifest knows keeps its id (an earlier release's too); another video cannot take it
    again = plan([paths[1], paths[0]], taken={"cam_1": str(paths[0])})
    assert [job.id for job in again] == ["y__cam_1", "cam_1"]
    # numbers (COCO image ids): the manifest's are kept, new videos take the lowest free ones, so a
    # resumed batch numbers its videos as an uninterrupted one did
    assert [job.number for job in plan(paths)] == [1, 2, 3]
    assert [job.number for job in plan(paths, numbers={str(paths[2]): 3, "gone.mp4": 1})] == [2, 4, 3]


def test_a_video_id_is_an_ending_of_its_path_that_no_other_path_shares_whatever_the_order(tmp_path):
    # Found probing a camera-trap archive: Site*/<date>/DCIM/100MEDIA/IMAG0008.MP4 got IMAG0008,
    # 100MEDIA__IMAG0008, DCIM__100MEDIA__IMAG0008, ... in listing order: which clip had which id
    # depended on the sort, and 2026-05-01__DCIM__100MEDIA__IMAG0008 was SiteA's though Site C North
    # had a 2026-05-01 IMAG0008 too
    clip = Path("DCIM", "100MEDIA", "IMAG0008.MP4")
    paths = [tmp_path / site / date / clip for site in ("SiteA", "Site C North") for date in ("2026-05-01", "2026-05-02")]
    paths.append(tmp_path / "SiteB" / "2026-05-03" / clip)
    ids = {job.key: job.id for job in plan(paths)}
    assert list(ids.values()) == ["SiteA__2026-05-01__DCIM__100MEDIA__IMAG0008", "SiteA__2026-05-02__DCIM__100MEDIA__IMAG0008",
                                  "Site_C_North__2026-05-01__DCIM__100MEDIA__IMAG0008",
                                  "Site_C_North__2026-05-02__DCIM__100MEDIA__IMAG0008", "2026-05-03__DCIM__100MEDIA__IMAG0008"]
    for order in (paths[::-1], paths[2:] + paths[:2]):
        assert {job.key: job.id for job in plan(order)} == ids
    # a resumed batch keeps the ids its manifest gave (an earlier release's too), and a new video's id is
    # no ending of a video the manifest holds, listed now or not
    taken = {"IMAG0008": str(paths[0]), "100MEDIA__IMAG0008": str(paths[1])}
    new = tmp_path / "SiteD" / "2026-05-01" / clip
    again = {job.key: job.id for job in plan([new, paths[1], paths[0]], taken=taken)}
    assert again == {str(new): "SiteD__2026-05-01__DCIM__100MEDIA__IMAG0008", str(paths[1]): "100MEDIA__IMAG0008",
                     str(paths[0]): "IMAG0008"}
    # two copies of a deep tree: told apart only at its root, their ids still valid source names
    deep = Path(*(f"folder {n} of a camera's card" for n in range(12)), "IMAG0001.MP4")
    ids = [job.id for job in plan([tmp_path / "copy1" / deep, tmp_path / "copy2" / deep])]
    assert len(set(ids)) == 2 and [TypeAdapter(SourceName).validate_python(vid) for vid in ids] == ids


def test_each_video_s_folder_says_which_file_it_is_of(tmp_path):
    # Found probing: frames.jsonl names only the id and panoptic.json the file's name (IMAG0008.MP4 of
    # every site and day): a folder copied away could not be joined back to its file
    clips = [tmp_path / "trap" / site / "DCIM" / "IMAG0008.MP4" for site in ("SiteA", "SiteB")]
    for clip in clips:
        clip.parent.mkdir(parents=True)
        encode_clip(clip, frames=2)
    out = tmp_path / "out"
    outcomes, _, _ = run_batch(config(out), [str(tmp_path / "trap")], adapter=ColourSegmenter(), progress=False)
    records = {record["video"]: record for record in manifest(out)}
    for clip in clips:
        record = records[str(clip)]
        said = json.loads((out / record["id"] / "video.json").read_text())
        assert said == {"video": str(clip), "id": record["id"], "number": record["number"]}
        assert f"{record['id']}/video.json" in record["outputs"]
        assert {entry["source"] for entry in read_entries(out / record["id"] / "frames.jsonl")} == {said["id"]}


def test_video_ids_spell_names_in_ascii_never_collapse_and_never_differ_only_in_case(tmp_path):
    # Found probing (i18n): non-ASCII letters were dropped (摄像头1 -> '1', İstanbul -> 'stanbul', all-CJK -> 'video',
    # 'video__video'), and 'Kamera_S_d' and 'kamera_s_d' were two folders on NTFS, SMB and macOS but one
    paths = [tmp_path / "été" / "Kamera Süd.mp4", tmp_path / "été" / "kamera süd.mp4", tmp_path / "İstanbul ı.mp4",
             tmp_path / "摄像头1.mp4", tmp_path / "监控1.mp4", tmp_path / "东门" / "西门.mp4", tmp_path / "摄像头" / "东门.mp4",
             tmp_path / "监控" / "东门.mp4", tmp_path / "Straße Ærø.mp4"]
    ids = [job.id for job in plan(paths)]
    assert ids[2:3] + ids[-1:] == ["Istanbul_i", "Strasse_AEro"]
    # two names alike but for case, in one folder: no folder tells them apart, a hash of each path does
    assert re.fullmatch(r"Kamera_Sud-[0-9a-f]{8}", ids[0]) and re.fullmatch(r"kamera_sud-[0-9a-f]{8}", ids[1])
    assert re.fullmatch(r"1-[0-9a-f]{8}", ids[3]) and re.fullmatch(r"1-[0-9a-f]{8}", ids[4])
    assert re.fullmatch(r"video-[0-9a-f]{8}", ids[5])
    assert re.fullmatch(r"video-[0-9a-f]{8}__video-[0-9a-f]{8}", ids[6])
    assert re.fullmatch(r"video-[0-9a-f]{8}__video-[0-9a-f]{8}", ids[7])
    assert len({vid.lower() for vid in ids}) == len(ids)
    assert [TypeAdapter(SourceName).validate_python(vid) for vid in ids] == ids
    # the hash is of the name: another batch, or the name as macOS writes it (NFD), gives the same id
    assert [job.id for job in plan([Path(unicodedata.normalize("NFD", str(paths[3]))), paths[2]])] == [ids[3], ids[2]]
    # a name not in UTF-8 (a Latin-1 disk): read with surrogate escapes, it hashes its bytes, also where every id is taken
    latin1 = Path(os.fsdecode(b"/archive/caf\xe9.mp4"))
    [job] = plan([latin1])
    assert re.fullmatch(r"caf-[0-9a-f]{8}", job.id)
    assert re.fullmatch(r"caf-[0-9a-f]{8}-[0-9a-f]{8}", plan([latin1], taken={job.id: "x", f"archive__{job.id}": "y"})[0].id)
    # one stem in one folder but for case: the extensions tell them apart, as for one stem
    assert [job.id for job in plan([tmp_path / "Day1.mov", tmp_path / "day1.mp4"])] == ["Day1_mov", "day1_mp4"]
    # videos of a manifest keep the ids an earlier release gave them; a new one takes none of them, ignoring case
    taken = {"Kamera_S_d": str(paths[0]), "kamera_s_d": str(paths[1]), "1": str(paths[3])}
    again = plan([*paths[:4], tmp_path / "new" / "KAMERA_S_D.mp4", tmp_path / "new" / "1.mp4"], taken=taken)
    assert [job.id for job in again] == ["Kamera_S_d", "kamera_s_d", "Istanbul_i", "1", "new__KAMERA_S_D", "new__1"]
    # a hidden file named on its own (a Mac's ._ file beside each clip) keeps a sign of its dot
    assert [job.id for job in plan([tmp_path / "._clip.mp4", tmp_path / "clip.mp4"])] == ["_clip", "clip"]


def test_a_video_done_under_an_id_of_an_earlier_release_keeps_it_and_a_new_one_gets_the_new_id(tmp_path):
    videos, out, record = _one_video_done(tmp_path, "Kamera Süd.mp4")
    assert record["id"] == "Kamera_Sud" and (out / "Kamera_Sud" / "frames.jsonl").is_file()
    record["id"] = "Kamera_S_d"  # as the release before wrote it, with its folder
    (out / "manifest.jsonl").write_text(json.dumps(record) + "\n")
    (out / "Kamera_Sud").rename(out / "Kamera_S_d")
    encode_clip(videos / "kamera süd.mp4", frames=2)
    encode_clip(videos / "KAMERA_S_D.mp4", frames=2)  # its own id would be the old one's but for case
    outcomes, skipped, _ = run_batch(config(out), [str(videos)], adapter=ColourSegmenter(), progress=False)
    assert skipped == 1
    # kamera süd.mp4 is named as Kamera Süd.mp4 but for case: a hash of its path tells them apart
    [alike] = [o.job.id for o in outcomes if o.job.id.startswith("kamera_sud")]
    assert re.fullmatch(r"kamera_sud-[0-9a-f]{8}", alike)
    assert sorted((o.job.id, o.status) for o in outcomes) == [(alike, "done"), ("videos__KAMERA_S_D", "done")]
    assert sorted(r["id"] for r in manifest(out)) == ["Kamera_S_d", alike, "videos__KAMERA_S_D"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")) == \
        ["Kamera_S_d", alike, "videos__KAMERA_S_D"]


def test_every_frame_of_every_video_is_written_and_a_corrupt_one_is_reported(archive, tmp_path):
    out = tmp_path / "out"
    cfg = config(out, concurrency=2, overlay=True)
    outcomes, skipped, signum = run_batch(cfg, [str(archive)], adapter=ColourSegmenter(delay_s=0.01), progress=False)
    by_id = {o.job.id: o for o in outcomes}
    assert {vid: o.status for vid, o in by_id.items()} == {
        "a": "done", "b": "done", "c10": "done", "corrupt": "failed"
    }
    assert "cannot open" in by_id["corrupt"].reason and skipped == 0 and signum is None
    for vid, frames in (("a", 12), ("b", 9), ("c10", 7)):
        entries = [from_wire(e) for e in read_entries(out / vid / "frames.jsonl")]
        assert [e.index for e in entries] == list(range(frames)), "every frame, in order, once"
        assert all(e.capture_ts == 0 and e.publish_ts == 0 and e.run_id == "" for e in entries), \
            "no wall-clock times or run ids in files"
        # the video's end ends its tracks (found probing: tracks that never ended)
        events = [event_from_wire(e) for e in read_entries(out / vid / "events.jsonl")]
        started = {e.data["track_id"] for e in events if e.kind == "track_started"}
        ended = {e.data["track_id"]: e.data["reason"] for e in events if e.kind == "track_ended"}
        assert started and set(ended) == started and "end" in ended.values(), events
        coco = read_coco_panoptic(out / vid / "panoptic.json")
        assert [c.index for c in coco] == list(range(frames))
        for entry, frame in zip(entries, coco):
            assert (entry.label_map == frame.label_map).all()
        assert (out / vid / "overlay.mp4").stat().st_size > 0
    records = {r["id"]: r for r in manifest(out)}
    assert records["a"]["status"] == "done" and records["a"]["frames"] == 12
    assert records["corrupt"]["status"] == "failed" and "cannot open" in records["corrupt"]["reason"]
    assert not (out / ".partial").exists() and not (out / "corrupt").exists()


def test_a_video_s_seconds_are_its_own_not_the_time_it_waited_behind_other_videos(tmp_path):
    # Found probing an archive: 200 clips of 3 frames done in 46 s, one video at a time, listed
    # up to 14.4 s each (1988 s in all): each clock ran from the start of its decoding, which ran
    # ahead of the model, so it held the wait behind the other videos' frames.
    videos = tmp_path / "videos"
    videos.mkdir()
    for n in range(16):
        encode_clip(videos / f"clip{n:02d}.mp4", frames=3)
    cfg = validate_config({"batch": {"output": str(tmp_path / "out"), "concurrency": 1}, "engine": {"batch_size": 1},
                           "ops": {"http": None}}, schema=BatchPipelineConfig)
    began = time.monotonic()
    outcomes = run_batch(cfg, [str(videos)], adapter=ColourSegmenter(delay_s=0.04), progress=False)[0]
    wall = time.monotonic() - began
    assert [o.status for o in outcomes] == ["done"] * 16
    assert sum(o.seconds for o in outcomes) < 1.5 * wall, [round(o.seconds, 2) for o in outcomes]


def test_without_bars_a_batch_says_its_progress_in_a_line_every_status_interval(tmp_path, caplog, monkeypatch):
    # Found probing with a screen reader: piped, or with TERM=dumb, a batch said nothing of a long
    # video until its end; on a terminal its bars were redrawn 7-12 times a second, TERM=dumb too.
    from segstream.connectors.terminal import bar_shape, bars_drawn

    encode_clip(tmp_path / "long.mp4", frames=30)
    cfg = validate_config({"batch": {"output": str(tmp_path / "out")}, "engine": {"batch_size": 1},
                           "ops": {"http": None, "status_interval_s": 0.2}}, schema=BatchPipelineConfig)
    with caplog.at_level(logging.INFO, logger="segstream"):
        assert run_batch(cfg, [str(tmp_path / "long.mp4")], adapter=ColourSegmenter(delay_s=0.05))[1] == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("batch: ")]
    assert len(lines) >= 3, lines
    assert re.fullmatch(r"batch: 0/1 videos ended, \d+/30 frames \(\d+%\), [\d.]+ frames/s, about [\d.]+ s left",
                        lines[0]), lines
    frames = [int(re.search(r"ended, (\d+)/", line)[1]) for line in lines]
    # lines while the video goes on (a last one may come between its last frame and its end)
    assert frames == sorted(frames) and sum(n < 30 for n in frames) >= 2, lines
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="segstream"):  # --no-progress: none
        run_batch(cfg, [str(tmp_path / "long.mp4")], adapter=ColourSegmenter(delay_s=0.05), retry_failed=False,
                  progress=False)
    assert not [r for r in caplog.records if r.getMessage().startswith("batch: ")]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert bars_drawn()
    monkeypatch.setenv("TERM", "dumb")
    assert not bars_drawn() and bar_shape()["mininterval"] >= 1


def test_a_batch_under_a_locale_that_is_not_utf_8_says_its_ids_are_not_a_utf_8_run_s(tmp_path, caplog, monkeypatch):
    # Found probing under Latin-1: 'café_日本.mp4' got the id 'cafA__ae_ae__d-350f5da6' (its UTF-8 bytes read
    # as Latin-1), and the next run, under UTF-8, did it again under another id, unsaid.
    from segstream.pipeline.batch import VideoJob, _warn_of_the_locale

    jobs = [VideoJob(tmp_path / "a.mp4", "a"), VideoJob(tmp_path / "cafÃ©.mp4", "cafa")]
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "iso8859-1")
    with caplog.at_level(logging.WARNING, logger="segstream"):
        _warn_of_the_locale(jobs[:1])  # ASCII names read alike in any locale: nothing to say
        assert not caplog.records
        _warn_of_the_locale(jobs)
    [record] = caplog.records
    assert "reads file names as iso8859-1" in record.getMessage() and "PYTHONUTF8=1" in record.getMessage()
    caplog.clear()
    monkeypatch.setattr(sys, "getfilesystemencoding", lambda: "utf-8")
    _warn_of_the_locale(jobs)
    assert not caplog.records


def test_a_rerun_skips_what_ended_and_redoes_a_changed_file(archive, tmp_path, caplog):
    videos = tmp_path / "videos"
    videos.mkdir()
    encode_clip(videos / "one.mp4", frames=5)
    encode_clip(videos / "two.mp4", frames=6)
    (videos / "bad.mp4").write_bytes(b"garbage" * 100)
    out = tmp_path / "out"
    run_batch(config(out), [str(videos)], adapter=ColourSegmenter(), progress=False)
    first = tree(out)

    outcomes, skipped, _ = run_batch(config(out), [str(videos)], adapter=ColourSegmenter(), progress=False)
    # the video that failed is skipped, and said to be still failed (a re-run is not "all done")
    assert [(o.job.id, o.status) for o in outcomes] == [("bad", "skipped")] and skipped == 3 and tree(out) == first
    assert outcomes[0].reason.startswith("failed before: ")
    assert summary_table(outcomes, skipped, out / MANIFEST).splitlines()[-1].startswith(
        "0 done (0 frames), 0 failed, 3 skipped (ended in an earlier run; 1 of them failed: --retry-failed tries again)"
    )

    encode_clip(videos / "two.mp4", frames=8)  # the file changed: its outputs are stale
    outcomes, skipped, _ = run_batch(config(out), [str(videos)], adapter=ColourSegmenter(), progress=False)
    assert [(o.job.id, o.status, o.frames) for o in outcomes if o.status != "skipped"] == [("two", "done", 8)]
    # found probing (release QA): OPERATIONS promised a warning, and none said why it was done again
    assert "1 video done before changed since (size or time): done again (two)" in [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert skipped == 2
    outcomes, _, _ = run_batch(config(out), [str(videos)], retry_failed=True, adapter=ColourSegmenter(), progress=False)
    assert [(o.job.id, o.status) for o in outcomes] == [("bad", "failed")]
    assert sorted(r["id"] for r in manifest(out)) == ["bad", "one", "two"], "one line per video after compaction"


def test_max_fps_samples_each_video_and_a_rerun_at_every_frame_does_it_again(tmp_path):
    """A long archive sampled at a frame a second: `batch.max_fps` (found probing an edge box:
    sources had it, batch did not)."""
    videos = tmp_path / "videos"
    videos.mkdir()
    encode_clip(videos / "one.mp4", frames=25, fps=10)
    out = tmp_path / "out"
    outcomes, _, _ = run_batch(config(out, max_fps=2), [str(videos)], adapter=ColourSegmenter(), progress=False)
    assert [(o.job.id, o.status, o.frames, o.job.frames) for o in outcomes] == [("one", "done", 5, 5)]
    entries = [from_wire(e) for e in read_entries(out / "one" / "frames.jsonl")]
    assert [e.index for e in entries] == [0, 5, 10, 15, 20]  # its place in the video: gaps where left out
    assert [c.index for c in read_coco_panoptic(out / "one" / "panoptic.json")] == [0, 5, 10, 15, 20]
    outcomes, skipped, _ = run_batch(config(out, max_fps=2), [str(videos)], adapter=ColourSegmenter(), progress=False)
    assert outcomes == [] and skipped == 1
    outcomes, _, _ = run_batch(config(out), [str(videos)], adapter=ColourSegmenter(), progress=False)
    assert [(o.job.id, o.status, o.frames) for o in outcomes] == [("one", "done", 25)]  # other settings: again


def test_the_example_batch_config_needs_no_sources(monkeypatch):
    from segstream.pipeline.config import load_config

    monkeypatch.delenv("SEGSTREAM_REDIS_URL", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = load_config(REPO / "configs" / "batch.yaml", schema=BatchPipelineConfig)
    assert cfg.sources == [] and cfg.batch.coco_panoptic and cfg.sinks.redis.url is None
    assert cfg.batch.ray.address is None


def test_two_batches_cannot_write_to_one_folder(tmp_path):
    # the refusal names the batch holding it (found probing a shared machine: "another segstream batch")
    with output_lock(tmp_path):
        with pytest.raises(ConfigError, match=rf"another segstream batch \(pid {os.getpid()} on .+, since "
                                              rf"\d{{4}}-.+\) is writing to"):
            with output_lock(tmp_path):
                pass


def test_an_output_folder_that_is_a_file_is_one_line_not_a_traceback(archive, tmp_path, capsys):
    from segstream.pipeline.cli import main

    taken = tmp_path / "taken"
    taken.write_text("a file where the output folder should be")
    code = main(["batch", str(archive / "a.mp4"), "--out", str(taken)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"cannot use '{taken}' as the output folder" in err
    assert taken.read_text() == "a file where the output folder should be"


def test_a_batch_whose_inputs_all_do_not_exist_does_nothing_and_exits_2(archive, tmp_path, capsys):
    # Found probing (release QA): a mistyped only input loaded the model, wrote a manifest and exited 1
    from segstream.pipeline.cli import main

    code = main(["batch", str(tmp_path / "nothing_here"), "--out", str(tmp_path / "out")])
    assert code == 2 and capsys.readouterr().err.strip() == (
        f"segstream: error: no videos to process: '{tmp_path / 'nothing_here'}' does not exist")
    assert not (tmp_path / "out").exists()


def test_a_folder_of_pictures_is_refused_with_how_to_segment_them_and_that_works(tmp_path, capsys, monkeypatch):
    # Found probing: a folder of pictures said only "holds no video files", while one picture given alone works
    import cv2
    import numpy as np

    from segstream.pipeline.cli import main

    pictures = tmp_path / "shots"
    pictures.mkdir()
    for name in ("a.png", "b.png", "c.jpg"):
        cv2.imwrite(str(pictures / name), np.full((48, 64, 3), 90, np.uint8))
    monkeypatch.chdir(tmp_path)  # named relative: the hint's path absolute (--set's are the config's folder's)
    code = main(["batch", "shots", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # said once, in the error (it was a warning too: found probing photo batches)
    assert code == 2 and err[-1].endswith(
        f"holds no video files (.3g2, .3gp, .avi, .dv, .flv, .m2ts, .m4v, .mkv, .mov, .mp4, .mpeg, .mpg, .mts, .mxf, "
        f".ogv, .ts, .webm, .wmv) but 3 pictures "
        f"(.jpg, .png): segment each as a video of one frame with --set 'batch.extensions=[.jpg,.png]', or all in "
        f"order as one source with `segstream run configs/image_folder.yaml --set sources.0.path={pictures}` "
        f"(a source of type: images)")
    assert not (tmp_path / "out").exists()
    outcomes, _, _ = run_batch(config(tmp_path / "out", extensions=[".jpg", ".png"]), [str(pictures)],
                               adapter=ColourSegmenter(), progress=False)
    assert sorted((o.job.id, o.status, o.frames) for o in outcomes) == [("a", "done", 1), ("b", "done", 1),
                                                                         ("c", "done", 1)]


def test_a_batch_that_would_write_nothing_is_refused(archive, capsys):
    from segstream.pipeline.cli import main

    code = main(["batch", str(archive / "a.mp4"), "--set", "batch.jsonl=false", "--set", "batch.coco_panoptic=false",
                 "--set", "sinks.redis.enabled=false"])
    assert code == 2 and "batch writes nothing" in capsys.readouterr().err


def _batch(out: Path, videos: list[Path], config_file: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "segstream.pipeline.cli", "batch", *map(str, videos), "--config", str(config_file),
         "--out", str(out), "--no-progress"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_a_second_stop_signal_says_how_many_videos_are_whole_before_it_aborts(tmp_path):
    # found probing an archive: a second SIGTERM printed "segstream: aborted" alone, though two videos were done
    videos = [encode_clip(tmp_path / "v0.mp4", frames=10), encode_clip(tmp_path / "v1.mp4", frames=200)]
    config_file = tmp_path / "batch.yaml"
    config_file.write_text("model: {device: cpu}\nengine: {batch_size: 2}\nops: {http: null}\nbatch: {concurrency: 1}\n")
    process = _batch(tmp_path / "out", videos, config_file)
    deadline = time.monotonic() + 120
    while not ((tmp_path / "out" / MANIFEST).exists() and (tmp_path / "out" / MANIFEST).read_text().strip()):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.4)  # handled, and past SAME_SIGNAL_S: the 200-frame video still being finished
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in err, err
    assert f"1 video done, as {tmp_path / 'out' / MANIFEST} records" in err and "segstream: aborted" in err, err


def test_sigterm_halfway_then_resume_gives_the_uninterrupted_outputs_byte_for_byte(tmp_path):
    videos = []
    for i in range(4):
        videos.append(encode_clip(tmp_path / f"v{i}.mp4", frames=20))
    config_file = tmp_path / "batch.yaml"
    config_file.write_text(
        "model: {device: cpu}\nengine: {batch_size: 2}\nops: {http: null}\n"
        "batch: {concurrency: 1, overlay: true}\n"
    )
    whole = tmp_path / "whole"
    uninterrupted = _batch(whole, videos, config_file)

    resumed = tmp_path / "resumed"
    first = _batch(resumed, videos, config_file)
    deadline = time.monotonic() + 120
    while not ((resumed / MANIFEST).exists() and (resumed / MANIFEST).read_text().strip()):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, err
    assert "the ones in progress finish" in err and "Traceback" not in err
    done_first = [r["id"] for r in manifest(resumed)]
    assert 1 <= len(done_first) < 4, "stopped halfway"
    assert not (resumed / ".partial").exists(), "nothing half-written is left"

    second = _batch(resumed, videos, config_file)
    out, err = second.communicate(timeout=180)
    assert second.returncode == 0, err
    assert f"{4 - len(done_first)} done" in out and f"{len(done_first)} skipped" in out
    records = manifest(resumed)
    assert sorted(r["id"] for r in records) == [f"v{i}" for i in range(4)], "each video exactly once"
    assert all(r["status"] == "done" and r["frames"] == 20 for r in records)

    assert uninterrupted.wait(timeout=180) == 0
    resumed_files, whole_files = tree(resumed), tree(whole)
    assert resumed_files.keys() == whole_files.keys()
    # x264 may encode an occasional frame of the (identical) overlay pictures differently from run
    # to run; every other output must be the same bytes
    overlays = {name for name in whole_files if name.endswith("overlay.mp4")}
    assert len(overlays) == 4 and all(resumed_files[name] for name in overlays)
    for name in whole_files.keys() - overlays:
        assert resumed_files[name] == whole_files[name], name


def test_a_rerun_that_skips_a_video_that_failed_before_exits_1(tmp_path, capsys):
    from segstream.pipeline.cli import main

    videos = tmp_path / "videos"
    videos.mkdir()
    encode_clip(videos / "one.mp4", frames=3)
    (videos / "bad.mp4").write_bytes(b"garbage" * 100)
    args = ["batch", str(videos), "--out", str(tmp_path / "out"), "--set", "model.device=cpu", "--no-progress"]
    assert main(args) == 1  # bad.mp4 failed
    assert main(args) == 1, "still not all done"
    assert "1 of them failed: --retry-failed tries again" in capsys.readouterr().out


def test_a_video_whose_results_never_reached_redis_is_failed_and_retried(tmp_path, monkeypatch, caplog):
    # Found probing: with Redis gone, the manifest said "done", so a rerun never published the video.
    from segstream.pipeline import batch
    from tests.redis_servers import RedisProcess

    videos = tmp_path / "videos"
    videos.mkdir()
    encode_clip(videos / "one.mp4", frames=4)
    server = RedisProcess(tmp_path / "redis")
    build = batch._extra_sinks

    def sinks_then_redis_goes(cfg):  # the sinks connect, then the server dies before the first frame
        sinks = build(cfg)
        server.kill()
        return sinks

    cfg = config(tmp_path / "out")
    cfg.sinks.redis.url, cfg.sinks.redis.drain_timeout_s = server.url, 0.2
    try:
        monkeypatch.setattr(batch, "_extra_sinks", sinks_then_redis_goes)
        outcomes, _, _ = run_batch(cfg, [str(videos)], adapter=ColourSegmenter(), progress=False)
        assert [(o.status, o.reason) for o in outcomes] == [
            ("failed", "4 results never reached a sink (sink_unreachable 4); --retry-failed publishes it again")
        ]
        assert manifest(tmp_path / "out")[-1]["status"] == "failed"
        # its log said done when its files were; found probing as an automation engineer: said again
        assert any(r.getMessage().startswith("one: failed after all: 4 results never reached a sink")
                   for r in caplog.records)

        monkeypatch.setattr(batch, "_extra_sinks", build)
        server.start()
        outcomes, _, _ = run_batch(cfg, [str(videos)], retry_failed=True, adapter=ColourSegmenter(), progress=False)
        assert [o.status for o in outcomes] == ["done"]
        assert [int(f[b"frame"]) for _, f in server.client().xrange("segstream:one:frames")] == [0, 1, 2, 3]
    finally:
        server.close()


def test_a_video_whose_entries_redis_lost_after_taking_them_is_failed(tmp_path):
    # Found probing a shared Redis: a run with max_age_s gave the stream a time to live, the batch's
    # writes (without max_age_s) did not push it forward, the stream went with the batch's entries,
    # and the batch said "done", exit 0, its stream empty.
    from tests.redis_servers import RedisProcess

    videos = tmp_path / "videos"
    videos.mkdir()
    encode_clip(videos / "gate.mp4", frames=40)
    with RedisProcess(tmp_path / "redis") as server:
        client = server.client()

        def a_camera_s_run_with_max_age_s() -> None:  # its write mid-batch gives the stream a time to live
            deadline = time.monotonic() + 30
            while client.xlen("segstream:gate:frames") < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            client.xadd("segstream:gate:frames", {"from": "a camera's run"})
            client.pexpire("segstream:gate:frames", 300)

        other = threading.Thread(target=a_camera_s_run_with_max_age_s)
        other.start()
        cfg = validate_config({"batch": {"output": str(tmp_path / "out")}, "engine": {"batch_size": 1},
                               "sinks": {"redis": {"url": server.url}}, "ops": {"http": None}},
                              schema=BatchPipelineConfig)
        outcomes, _, _ = run_batch(cfg, [str(videos)], adapter=ColourSegmenter(delay_s=0.05), progress=False)
        other.join()
        [outcome] = outcomes
        assert outcome.status == "failed" and outcome.reason.startswith("Redis lost "), outcome.reason
        assert outcome.reason.endswith("of its frame entries after taking them (the warning above says how); "
                                       "--retry-failed publishes it again")
        assert manifest(tmp_path / "out")[-1]["status"] == "failed"


def test_each_video_s_states_go_to_redis_in_order_and_not_into_the_files(archive, tmp_path):
    # Found re-checking stop 18: a batch published frames and track events to Redis but no state,
    # so a consumer could not tell a finished video from a slow one, nor see one that failed.
    from tests.redis_servers import RedisProcess

    out = tmp_path / "out"
    cfg = config(out)
    with RedisProcess(tmp_path / "redis") as server:
        cfg.sinks.redis.url = server.url
        outcomes, _, _ = run_batch(cfg, [str(archive / "a.mp4"), str(archive / "corrupt.mp4")],
                                   adapter=ColourSegmenter(), progress=False)
        assert sorted((o.job.id, o.status) for o in outcomes) == [("a", "done"), ("corrupt", "failed")]
        client = server.client()
        events = {vid: [event_from_wire(f) for _, f in client.xrange(f"segstream:{vid}:events")] for vid in ("a", "corrupt")}
        last_frame = float(client.xrange("segstream:a:frames")[-1][1][b"publish_ts"])
        # no status key a video, which would stay for good: its end is in its events stream
        assert client.keys("*:status") == []
    states = [(e.data["state"], e.data["previous"]) for e in events["a"] if e.kind == "state"]
    assert states == [("connecting", "new"), ("streaming", "connecting"), ("ended", "streaming")]
    assert events["a"][-1].kind == "state" and events["a"][-1].ts >= last_frame - 1, "the end comes last"
    assert {e.kind for e in events["a"][:-1]} >= {"track_started", "track_ended"}
    failed = [e for e in events["corrupt"] if e.kind == "state"][-1]
    assert failed.data["state"] == "failed" and "cannot open" in failed.data["reason"]
    assert all(e.run_id == events["a"][0].run_id != "" for e in events["a"])
    assert "state" not in {e.kind for e in map(event_from_wire, read_entries(out / "a" / "events.jsonl"))}


def test_a_rerun_with_other_model_or_outputs_does_the_videos_again(tmp_path, monkeypatch):
    # Found probing: a rerun with another model or with overlays on skipped every video as done,
    # so one archive silently mixed two models' outputs and the overlays were never written.
    from segstream.pipeline import batch

    videos = tmp_path / "videos"
    videos.mkdir()
    encode_clip(videos / "one.mp4", frames=3)
    out = tmp_path / "out"
    warnings = []
    monkeypatch.setattr(batch.log, "warning", lambda message, *args: warnings.append(message % args))

    def run(**changes):
        cfg = config(out)
        for section, values in changes.items():
            for key, value in values.items():
                setattr(getattr(cfg, section), key, value)
        outcomes, skipped, _ = run_batch(cfg, [str(videos)], adapter=ColourSegmenter(), progress=False)
        return [o.status for o in outcomes], skipped

    assert run() == (["done"], 0)
    assert run(engine={"batch_size": 2}) == ([], 1), "batching changes no output"
    assert run(model={"score_threshold": 0.5}) == (["done"], 0)
    assert warnings == ["1 video done before with other settings is done again: model.score_threshold: 0.8 → 0.5 "
                        "(1 video)"]
    assert run(model={"score_threshold": 0.5}) == ([], 1)
    assert run(model={"score_threshold": 0.5}, batch={"overlay": True}) == (["done"], 0)
    assert (out / "one" / "overlay.mp4").is_file()
    assert manifest(out)[-1]["settings"]["outputs"]["overlay"] is True
    # a model folder retrained in place: the folder's own size and time do not change (review)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights v1")
    changes = {"model": {"score_threshold": 0.5, "checkpoint": str(folder)}, "batch": {"overlay": True}}
    assert run(**changes) == (["done"], 0)
    assert run(**changes) == ([], 1)
    (folder / "model.safetensors").write_bytes(b"weights v2, retrained")
    assert run(**changes) == (["done"], 0)
    # found probing reproducibility: other weights of the same size and time (cp -p, rsync -a, tar)
    # were taken for the same, and a new filters: redid nothing
    stat = (folder / "model.safetensors").stat()
    (folder / "model.safetensors").write_bytes(b"weights v3, retrained")
    os.utime(folder / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert run(**changes) == (["done"], 0)
    os.utime(folder / "model.safetensors")  # touched only: the same weights
    assert run(**changes) == ([], 1)
    assert run(**changes, filters={"min_score": 0.99}) == (["done"], 0)
    assert manifest(out)[-1]["settings"]["filters"]["min_score"] == 0.99
    assert run(**changes, filters={"min_score": 0.99}) == ([], 1)
    assert run(**changes) == (["done"], 0), "filters no longer set: done again"
    # what made it, for an audit: the run (its Redis entries' run_id), the device, the versions
    record = manifest(out)[-1]
    assert record["made_by"]["device"] == "cpu" and record["made_by"]["segstream"] == segstream.__version__
    # auto resolved as on this machine (bf16 where the CPU computes it natively: it failed on one with AVX-512 BF16)
    resolved = default_precision(torch.device("cpu"))
    assert record["made_by"]["run_id"] and record["settings"]["model"]["precision"] == resolved
    assert len(record["settings"]["model"]["checkpoint_file"]["sha256"]) == 64


def test_a_ray_driver_without_the_workers_gpu_records_the_precision_the_workers_settled(tmp_path, monkeypatch):
    """Found reviewing: the settings resolved the device on the driver, so a CPU driver refused
    model.device: cuda (the Ray workers' GPU) and recorded its own fp32 for an auto the workers ran
    in bf16. The Ray engine settles auto where its actors run (tests/test_batch_ray.py); a
    precision given is recorded as it is, the device not looked at."""
    from segstream.pipeline import batch

    cfg = config(tmp_path / "out")
    cfg.model.device, cfg.model.precision = "cuda", "bf16"
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert batch.output_settings(cfg)["model"]["precision"] == "bf16"
    assert batch.made_by("run-1", cfg, "ray")["device"] == "ray: cuda"
    cfg.model.precision = "auto"
    with pytest.raises(ConfigError):  # the local engine runs here: its device must be here
        batch.output_settings(cfg)


def test_a_sharded_checkpoint_s_digest_covers_its_shards(tmp_path):
    """Found reviewing: only the index of a sharded model folder was hashed, which stays the same
    when its shards are retrained in place."""
    from segstream.connectors.checkpoints import file_sha256

    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}))
    (tmp_path / "model-1.safetensors").write_bytes(b"one")
    (tmp_path / "model-2.safetensors").write_bytes(b"two")
    before = file_sha256(index)
    (tmp_path / "model-2.safetensors").write_bytes(b"TWO")
    assert file_sha256(index) != before


def test_a_manifest_of_an_earlier_release_keeps_its_videos_done(tmp_path):
    """Records written before the weights' digest and the resolved precision were kept are read
    as made with what they could not say: no archive is done again by an upgrade."""
    videos, out, record = _one_video_done(tmp_path, "one.mp4")
    model = record["settings"]["model"]
    assert model["checkpoint"] is None and "sha256" in model["checkpoint_file"]  # the preset's own weights
    del model["checkpoint_file"]  # as an earlier release wrote it
    model["precision"] = "auto"
    record.pop("made_by")
    (out / "manifest.jsonl").write_text(json.dumps(record) + "\n")
    outcomes, skipped, _ = run_batch(config(out), [str(videos)], adapter=ColourSegmenter(), progress=False)
    assert (outcomes, skipped) == ([], 1)


# A line of manifest.jsonl as release 1e7dd33 wrote it (found probing an upgrade from it): no number
# or made_by, no weights' digest, precision auto, and none of the settings added since
RELEASE_1E7DD33_RECORD = {
    "damage": "", "decode_errors": 0, "finished": "2026-12-03T17:15:58+00:00", "frames": 3, "frames_missing": 0,
    "id": "one", "outputs": ["one/events.jsonl", "one/frames.jsonl", "one/panoptic", "one/panoptic.json"],
    "reason": "", "seconds": 0.5, "status": "done",
    "settings": {
        "model": {"checkpoint": None, "family": None, "mask_threshold": 0.5, "overlap_threshold": 0.8,
                  "postprocess": "fast", "precision": "auto", "preset": "synthetic_eomt_tiny_256",
                  "score_threshold": 0.8, "task": "panoptic"},
        "outputs": {"coco_panoptic": True, "jsonl": True, "mask_encoding": "rle", "overlay": False,
                    "resize_in_decoder": False},
        "tracking": {"class_change_overlap": 0.3, "class_weight": 0.1, "embedding_momentum": 0.7,
                     "embedding_weight": 0.4, "enabled": True, "iou_weight": 0.5, "mask_side": 480, "max_lost": 30,
                     "max_shift": 1.0, "max_tracks": 1000, "min_hits": 2, "min_overlap": 0.1, "min_similarity": 0.6,
                     "partial_area": 0.5},
    },
}


def test_a_video_done_by_release_1e7dd33_is_done_again_only_for_a_setting_that_may_change_it(tmp_path, caplog):
    """Found probing an upgrade: the first batch after it did every finished video again, as
    made with other settings, for the keys 1e7dd33 did not write. A key a record lacks reads as
    what that release did: model.labels and tracking.max_lost_s unset do the same, while
    re-identifying lost things (tracking.reid_similarity up to 1), which its tracker never did,
    may give other track ids. The warning names the setting, so an operator knows why."""
    videos = tmp_path / "videos"
    videos.mkdir()
    encode_clip(videos / "one.mp4", frames=3)
    out = tmp_path / "out"
    run_batch(config(out), [str(videos)], adapter=ColourSegmenter(), progress=False)  # its outputs

    def as_1e7dd33_wrote_it() -> None:
        stat = (videos / "one.mp4").stat()
        record = {**RELEASE_1E7DD33_RECORD, "video": str((videos / "one.mp4").resolve()), "size": stat.st_size,
                  "mtime_ns": stat.st_mtime_ns}
        (out / MANIFEST).write_text(json.dumps(record) + "\n")

    def run(**tracking) -> tuple[list[str], int]:
        cfg = config(out)
        for key, value in tracking.items():
            setattr(cfg.tracking, key, value)
        outcomes, skipped, _ = run_batch(cfg, [str(videos)], adapter=ColourSegmenter(), progress=False)
        return [o.status for o in outcomes], skipped

    as_1e7dd33_wrote_it()
    assert run(reid_similarity=2.0) == ([], 1), "no re-identification, as 1e7dd33: the same outputs"
    assert "number" not in manifest(out)[0], "kept as it was"
    caplog.clear()
    assert run() == (["done"], 0), "re-identification on: done again"
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "1 video done before with other settings is done again: tracking.reid_similarity: not recorded "
        "(no re-identification then) → 0.9 (1 video)"]
    assert run() == ([], 1)
    as_1e7dd33_wrote_it()
    assert run(reid_similarity=2.0, max_lost_s=2.0) == (["done"], 0), "a lost track kept by time, not frames"


def test_every_done_video_left_out_of_the_batch_json_is_named_in_a_warning_with_why(tmp_path, caplog):
    """Found probing an upgrade: a batch of one new video into a copy of an earlier release's
    folder wrote a panoptic_batch.json of the new video alone and said nothing of the others,
    done with other settings (OPERATIONS promised a warning naming them)."""
    from segstream.pipeline.batch import BATCH_PANOPTIC

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("one", "two", "three"):
        encode_clip(videos / f"{name}.mp4", frames=2)
    out = tmp_path / "out"
    run_batch(config(out), [str(videos / "one.mp4"), str(videos / "two.mp4")], adapter=ColourSegmenter(), progress=False)
    records = {record["id"]: record for record in manifest(out)}
    stat = (videos / "one.mp4").stat()
    records["one"] = {**RELEASE_1E7DD33_RECORD, "video": records["one"]["video"], "size": stat.st_size,
                      "mtime_ns": stat.st_mtime_ns}
    records["two"]["settings"]["model"]["score_threshold"] = 0.5
    (out / MANIFEST).write_text("".join(json.dumps(record) + "\n" for record in records.values()))

    caplog.clear()
    run_batch(config(out), [str(videos / "three.mp4")], adapter=ColourSegmenter(), progress=False)
    merged = json.loads((out / BATCH_PANOPTIC).read_text())
    assert {image["video_id"] for image in merged["images"]} == {"three"}
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "2 videos done with other settings than this run's are left out of panoptic_batch.json: one "
        "(tracking.reid_similarity: not recorded (no re-identification then) → 0.9); two (model.score_threshold: "
        "0.5 → 0.8) — give them to a batch with these settings to have them done again"]


def test_a_damaged_video_is_done_with_its_missing_frames_in_the_table_and_the_manifest(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    encode_clip(tmp_path / "whole.mp4", frames=40)
    encode_clip(videos / "whole.mp4", frames=12)
    # cut short after its index, which is at the front and lists what is gone: damaged, not unreadable
    import av

    with av.open(str(tmp_path / "whole.mp4")) as source, \
            av.open(str(tmp_path / "front.mp4"), "w", options={"movflags": "+faststart"}) as out:
        copy = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.size:
                packet.stream = copy
                out.mux(packet)
    front = (tmp_path / "front.mp4").read_bytes()
    (videos / "cut.mp4").write_bytes(front[: len(front) * 2 // 3])
    out = tmp_path / "out"
    outcomes, skipped, _ = run_batch(config(out), [str(videos)], adapter=ColourSegmenter(), progress=False)
    by_id = {o.job.id: o for o in outcomes}
    assert by_id["cut"].status == "done" and 0 < by_id["cut"].frames < 40 and by_id["cut"].frames_missing > 0
    assert by_id["whole"].frames_missing == 0 and by_id["whole"].note == ""
    table = summary_table(outcomes, skipped, out / MANIFEST).splitlines()
    assert any(line.startswith("cut ") and "damaged: its frames end after" in line for line in table)
    assert "2 done (" in table[-1] and "of which 1 damaged (frames missing: see the notes)" in table[-1]
    assert {r["id"]: r["frames_missing"] for r in manifest(out)}["cut"] == by_id["cut"].frames_missing


def test_a_file_with_two_video_streams_says_in_the_manifest_and_json_which_it_read(tmp_path, caplog):
    # Found probing: a camera's recording with its main and sub stream (a dashcam's front and rear)
    # said which it read in an INFO line only, logged twice (the batch's probe and the decode)
    from tests.live_servers import FFMPEG

    videos = tmp_path / "videos"
    videos.mkdir()
    for name, size in (("main.mp4", "320x240"), ("sub.mp4", "160x120")):
        subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=10", "-t", "1",
                        "-c:v", "libx264", "-pix_fmt", "yuv420p", str(tmp_path / name)], check=True)
    subprocess.run([FFMPEG, "-v", "error", "-i", str(tmp_path / "main.mp4"), "-i", str(tmp_path / "sub.mp4"),
                    "-map", "0", "-map", "1", "-c", "copy", str(videos / "two.mkv")], check=True)
    encode_clip(videos / "one.mp4", frames=5)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="segstream"):
        outcomes, skipped, _ = run_batch(config(out), [str(videos)], adapter=ColourSegmenter(), progress=False)
    assert len([r for r in caplog.records if "video streams" in r.getMessage()]) == 1
    by_id = {o.job.id: o for o in outcomes}
    assert by_id["two"].status == "done" and by_id["two"].frames == 10
    records = {r["id"]: r for r in manifest(out)}
    said = {video: (records[video]["video_stream"], records[video]["other_video_streams"]) for video in records}
    assert said == {"two": ("#0 320x240 h264", ["#1 160x120 h264"]), "one": ("#0 160x120 h264", [])}, said
    lines = {line["id"]: line for line in summary_json(outcomes, skipped, out / MANIFEST) if line["type"] == "video"}
    assert {video: (lines[video]["video_stream"], lines[video]["other_video_streams"]) for video in lines} == said
    table = summary_table(outcomes, skipped, out / MANIFEST).splitlines()
    assert any(line.startswith("two ") and line.endswith("read video stream #0 320x240 h264, not #1 160x120 h264")
               for line in table), table


_KILLED_MIDWAY = """
import os, signal, sys, time
import redis
from segstream.pipeline.batch import run_batch
from tests.conftest import ColourSegmenter
from tests.test_batch import config

out, video, url = sys.argv[1:]

class KilledMidway(ColourSegmenter):
    seen = 0

    def forward(self, prepared):
        self.seen += len(prepared.extra["images"])
        if self.seen > 12:  # entries out, the video (40 frames) not done; a loaded machine's publisher
            deadline = time.monotonic() + 60  # may lag the model: this waits for it
            while redis.Redis.from_url(url).xlen("segstream:long:frames") < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
        return super().forward(prepared)

cfg = config(out)
cfg.sinks.redis.url, cfg.sinks.redis.pipeline_size = url, 1
run_batch(cfg, [video], adapter=KilledMidway(delay_s=0.02), progress=False)
"""


def test_a_batch_killed_midway_and_resumed_leaves_each_frame_once_in_redis(tmp_path):
    """Found reviewing: a video begun again from its start after a SIGKILL was published twice
    from frame 0 up to where the killed run stopped."""
    from tests.redis_servers import RedisProcess

    video = encode_clip(tmp_path / "long.mp4", frames=40)
    out = tmp_path / "out"
    with RedisProcess(tmp_path / "redis") as server:
        killed = subprocess.run([sys.executable, "-c", _KILLED_MIDWAY, str(out), str(video), server.url],
                                env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        client = server.client()
        partial = [int(f[b"frame"]) for _, f in client.xrange("segstream:long:frames")]
        assert 5 <= len(partial) < 40 and not (out / MANIFEST).read_text().strip() and (out / REDIS_MARKS).exists()

        cfg = config(out)
        cfg.sinks.redis.url = server.url
        outcomes, _, _ = run_batch(cfg, [str(video)], adapter=ColourSegmenter(), progress=False)
        assert [o.status for o in outcomes] == ["done"]
        entries = [f for _, f in client.xrange("segstream:long:frames")]
        assert [int(f[b"frame"]) for f in entries] == list(range(40))
        assert [int(f[b"seq"]) for f in entries] == list(range(1, 41)), "numbered on from where it was cut back to"
        states = [event_from_wire(f) for _, f in client.xrange("segstream:long:events")]
        assert len({e.run_id for e in states}) == 1, "the killed run's events went with its frames"
        marks = json.loads((out / REDIS_MARKS).read_text())
        assert len(marks.pop(":runs")) == 2, "the killed run and this one: the entries the folder's batches wrote"
        assert marks == {
            "long": {"segstream:long:events": "0-0", "segstream:long:frames": "0-0"}
        }, "the mark stays where the batch first began the video, for when it is done again"


def test_a_folder_of_0_3_12_takes_its_manifest_s_runs_as_its_batches(tmp_path):
    """Its .redis-marks.json names no runs: the runs its manifest names are the folder's batches'."""
    from segstream.pipeline.batch import Manifest, RedisMarks, manifest_runs

    (tmp_path / REDIS_MARKS).write_text(json.dumps({"gate": {"segstream:gate:frames": "5-0"}}))
    (tmp_path / MANIFEST).write_text(json.dumps({"video": "gate.mp4", "id": "gate", "status": "done",
                                                 "made_by": {"run_id": "20261204T000000Z-0123abcd"}}) + "\n")
    marks = RedisMarks(tmp_path / REDIS_MARKS, manifest_runs(Manifest(tmp_path / MANIFEST)))
    assert marks.runs == {"20261204T000000Z-0123abcd"} and marks.marks == {"gate": {"segstream:gate:frames": "5-0"}}
    # found probing an upgrade: an attempt 0.3.12 killed is in no manifest line, its entries were kept twice;
    # the first run over such marks cuts back everything after them, as 0.3.12 did
    assert marks.legacy == {"gate"}
    from tests.redis_servers import RedisProcess

    with RedisProcess(tmp_path / "redis") as server:
        client = server.client()
        for frame in range(3):  # the killed 0.3.12 attempt's entries, after the mark
            client.xadd("segstream:gate:frames", {"run_id": "20261204T010000Z-killed00", "frame": frame}, id=f"{6 + frame}-0")
        marks.cut_back(client, ("segstream:{source}:frames",), [VideoJob(tmp_path / "gate.mp4", "gate")], "new-run")
        assert client.xlen("segstream:gate:frames") == 0
    saved = json.loads((tmp_path / REDIS_MARKS).read_text())
    assert saved[":runs"] == ["20261204T000000Z-0123abcd", "new-run"] and ":legacy" not in saved, "gate is cut back"
    # a run stopped before it reached a video of such marks leaves it to the next (found reviewing)
    (tmp_path / REDIS_MARKS).write_text(json.dumps({":runs": ["r1"], ":legacy": ["yard"], "yard": {"s": "1-0"}}))
    assert RedisMarks(tmp_path / REDIS_MARKS).legacy == {"yard"}
    (tmp_path / REDIS_MARKS).write_text(json.dumps({":runs": ["r1", "r2"], "gate": {"segstream:gate:frames": "5-0"}}))
    marks = RedisMarks(tmp_path / REDIS_MARKS)
    assert marks.runs == {"r1", "r2"} and list(marks.marks) == ["gate"] and not marks.legacy, "the runs are no video"


def test_a_batch_done_again_never_deletes_what_another_writer_put_in_its_video_s_stream(tmp_path, caplog):
    """Found probing as an attacker: a batch over gate.mp4, with the shipped config's stream names,
    wrote into the live camera gate's stream unsaid, and done again deleted the camera's entries
    written since (XDEL of everything after its mark)."""
    from segstream.connectors.redis_sink import RedisPublisher
    from tests.redis_servers import RedisProcess
    from tests.test_redis_sink import tiny_scene

    video = encode_clip(tmp_path / "gate.mp4", frames=6)
    out = tmp_path / "out"
    caplog.set_level(logging.INFO, logger="segstream")
    with RedisProcess(tmp_path / "redis") as server:
        client = server.client()
        camera = RedisPublisher(server.client(), max_batch_delay_s=0, run_id="camera-run", status_pattern=None)

        def camera_publishes(frames: range) -> None:
            for index in frames:
                scene = tiny_scene("gate", index)
                scene.run_id = "camera-run"
                camera.publish(scene)
            camera.flush()

        camera_publishes(range(3))
        cfg = config(out)
        cfg.sinks.redis.url = server.url
        assert [o.status for o in run_batch(cfg, [str(video)], adapter=ColourSegmenter(), progress=False)[0]] == ["done"]
        [said] = [r.getMessage() for r in caplog.records if "holds entries of another writer" in r.getMessage()]
        assert "segstream:gate:frames" in said and "camera-run" in said and "streams of its own" in said
        camera_publishes(range(3, 5))
        cfg.tracking.min_hits = 4  # other settings: the video is done again
        caplog.clear()
        assert [o.status for o in run_batch(cfg, [str(video)], adapter=ColourSegmenter(), progress=False)[0]] == ["done"]
        runs = [(f[b"run_id"].decode(), int(f[b"frame"])) for _, f in client.xrange("segstream:gate:frames")]
        assert [frame for run, frame in runs if run == "camera-run"] == list(range(5)), "the camera's entries kept"
        batch_runs = {run for run, _ in runs} - {"camera-run"}
        assert len(batch_runs) == 1 and [frame for run, frame in runs if run in batch_runs] == list(range(6)), \
            "the first batch's entries deleted, the second's there once"
        assert any("holds 2 entries another writer added since the batch began the video: kept" in r.getMessage()
                   for r in caplog.records)
        camera.close()


_INTERRUPTED = """
import sys
from segstream.pipeline.batch import run_batch
from tests.conftest import ColourSegmenter
from tests.test_batch import config

out, url, *videos = sys.argv[1:]
cfg = config(out, concurrency=1)
cfg.sinks.redis.url, cfg.sinks.redis.pipeline_size = url, 1
cfg.tracking.min_hits = 3  # other settings than the first run's: its videos are done again
run_batch(cfg, videos, adapter=ColourSegmenter(delay_s=0.2), progress=False)
"""


def test_videos_done_again_after_an_interrupted_batch_each_hold_their_frames_once_in_redis(tmp_path):
    """Found probing: done again after an interrupted batch, the video that batch had finished was
    cut back to a mark the abort left (its earlier entries deleted) while the other kept its
    earlier copy and got a second one."""
    from tests.redis_servers import RedisProcess

    videos = [encode_clip(tmp_path / "short.mp4", frames=4),
              encode_clip(tmp_path / "long.mp4", frames=120)]  # seconds of work left when it is stopped
    out = tmp_path / "out"
    with RedisProcess(tmp_path / "redis") as server:
        client = server.client()
        cfg = config(out, concurrency=1)
        cfg.sinks.redis.url = server.url
        outcomes, _, _ = run_batch(cfg, list(map(str, videos)), adapter=ColourSegmenter(), progress=False)
        assert [o.status for o in outcomes] == ["done", "done"]

        # other settings, interrupted while the long video is midway: SIGINT drains, SIGTERM aborts
        run = subprocess.Popen([sys.executable, "-c", _INTERRUPTED, str(out), server.url, *map(str, videos)],
                               env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        first_run = client.xrange("segstream:long:frames", count=1)[0][1][b"run_id"]

        def short_recorded() -> bool:  # its record written (on a loaded machine it came after long's frame 5)
            lines = (out / MANIFEST).read_text().splitlines()
            return any(line.endswith("}") and json.loads(line)["id"] == "short"
                       and json.loads(line)["settings"]["tracking"]["min_hits"] == 3 for line in lines)

        def long_midway() -> bool:
            newest = client.xrevrange("segstream:long:frames", count=1)
            return (bool(newest) and newest[0][1][b"run_id"] != first_run and int(newest[0][1][b"frame"]) >= 5
                    and short_recorded())

        deadline = time.monotonic() + 60
        while not long_midway() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        run.send_signal(signal.SIGINT)
        time.sleep(0.1)
        run.send_signal(signal.SIGTERM)
        assert run.wait(60) != 0, run.stderr.read()
        records = {r["id"]: r for r in manifest(out)}
        assert records["short"]["settings"]["tracking"]["min_hits"] == 3, "the short video was done again"
        assert records["long"]["settings"]["tracking"]["min_hits"] == 2, "the long one was not"

        cfg.tracking.min_hits = 4  # and again: both are done again
        outcomes, _, _ = run_batch(cfg, list(map(str, videos)), adapter=ColourSegmenter(), progress=False)
        assert [o.status for o in outcomes] == ["done", "done"]
        for vid, frames in (("short", 4), ("long", 120)):
            entries = [f for _, f in client.xrange(f"segstream:{vid}:frames")]
            assert [int(f[b"frame"]) for f in entries] == list(range(frames)), vid
            events = [event_from_wire(f) for _, f in client.xrange(f"segstream:{vid}:events")]
            assert {f[b"run_id"] for f in entries} == {e.run_id.encode() for e in events} and len(events) > 3, vid


def test_a_named_pipe_among_the_videos_fails_alone_instead_of_holding_the_batch(archive, tmp_path):
    import os
    import threading

    fifo = tmp_path / "in" / "pipe.mp4"
    fifo.parent.mkdir()
    os.mkfifo(fifo)  # opened, it would wait for a writer inside FFmpeg, where no signal reaches
    done = []
    worker = threading.Thread(target=lambda: done.append(run_batch(
        config(tmp_path / "out"), [str(fifo), str(archive / "a.mp4")], adapter=ColourSegmenter(), progress=False)),
        daemon=True)
    worker.start()
    worker.join(60)
    assert done, "the batch hung on the named pipe"
    by_id = {o.job.id: o for o in done[0][0]}
    assert by_id["a"].status == "done" and by_id["pipe"].status == "failed"
    assert "is a named pipe (FIFO), not a video file" in by_id["pipe"].reason


def test_coco_image_ids_are_unique_across_a_batch_one_json_covers_it_and_file_names_exist(archive, tmp_path):
    """Found probing: every video's JSON numbered its images from 0 (ids and PNG names collided
    across a batch), there was no JSON of the whole batch, and images named .jpg files never written."""
    import av
    import cv2
    import numpy as np
    from pycocotools import mask as coco_mask

    from segstream.connectors.coco_panoptic import rgb_to_id
    from segstream.pipeline.batch import BATCH_PANOPTIC

    out = tmp_path / "out"
    clips = {"a": archive / "a.mp4", "b": archive / "day2" / "b.mp4", "c10": archive / "day2" / "c10.mp4"}
    run_batch(config(out), [str(clips["a"])], adapter=ColourSegmenter(), progress=False)
    assert "file_name" not in json.loads((out / "a" / "panoptic.json").read_text())["images"][0], \
        "no JPEGs written: no file name that names none"
    run_batch(config(out, coco_images=True), [str(archive / "a.mp4"), str(archive / "day2")],
              adapter=ColourSegmenter(), progress=False)
    assert {r["id"]: r["number"] for r in manifest(out)} == {"a": 1, "b": 2, "c10": 3}, "a keeps its number"

    merged = json.loads((out / BATCH_PANOPTIC).read_text())
    ids = [image["id"] for image in merged["images"]]
    assert len(ids) == len(set(ids)) == 12 + 9 + 7
    assert ids[:2] == [100_000_000, 100_000_001] and ids[-1] == 3 * 100_000_000 + 6, "video number x 1e8 + frame"
    assert sorted(a["image_id"] for a in merged["annotations"]) == sorted(ids)
    assert len({a["file_name"] for a in merged["annotations"]}) == len(ids)
    assert merged["categories"] == [{"id": 1, "name": "square", "supercategory": "thing", "isthing": 1,
                                     "color": merged["categories"][0]["color"]}]
    for vid in clips:  # each video's own JSON has the same ids, its file names relative to its folders
        own = json.loads((out / vid / "panoptic.json").read_text())
        assert [i["id"] for i in own["images"]] == [i["id"] for i in merged["images"] if i["video_id"] == vid]
    images = {image["id"]: image for image in merged["images"]}
    for annotation in merged["annotations"][::5]:  # panopticapi's reading: file names relative to the JSON's folder
        image = images[annotation["image_id"]]
        ids_png = rgb_to_id(cv2.imread(str(out / annotation["file_name"]))[..., ::-1])
        assert ids_png.shape == (image["height"], image["width"])
        assert set(np.unique(ids_png)) - {0} == {s["id"] for s in annotation["segments_info"]}
        for info in annotation["segments_info"]:
            rle = coco_mask.encode(np.asfortranarray((ids_png == info["id"]).astype(np.uint8)))
            assert int(coco_mask.area(rle)) == info["area"] and coco_mask.toBbox(rle).tolist() == info["bbox"]
        picture = cv2.imread(str(out / image["file_name"]))[..., ::-1]
        with av.open(str(clips[image["video_id"]])) as container:
            frame = next(f for i, f in enumerate(container.decode(video=0)) if i == image["frame"])
        assert np.abs(picture.astype(int) - frame.to_ndarray(format="rgb24")).mean() < 4, "the frame, as a JPEG"
    frames = read_coco_panoptic(out / BATCH_PANOPTIC, png_dir=out)
    assert [(f.source, f.index) for f in frames][:2] == [("a.mp4", 0), ("a.mp4", 1)] and len(frames) == len(ids)


@pytest.mark.parametrize("listed", [False, True], ids=["argument", "list-file"])
def test_a_stream_url_input_is_refused_in_one_line_with_its_password_masked_and_nothing_written(tmp_path, capsys,
                                                                                               listed):
    from segstream.pipeline.cli import main

    # nothing listens: batch must not get that far (an http(s) URL is a video file: tests/test_batch_urls.py)
    url = "rtsp://camadmin:BatchPw_9@127.0.0.1:16903/x"
    given = url
    if listed:
        (tmp_path / "videos.txt").write_text(f"{url}\n")
        given = str(tmp_path / "videos.txt")
    out = tmp_path / "b1"
    code = main(["batch", given, "--out", str(out), "--set", "ops.http=null", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and captured.err.count("\n") == 1, captured
    assert "BatchPw_9" not in captured.err and "camadmin:***@127.0.0.1:16903" in captured.err
    assert "is a URL" in captured.err and "folders" in captured.err and "segstream run" in captured.err
    assert not out.exists(), "nothing written"


def test_paths_shaped_like_urls_with_passwords_keep_them_out_of_the_manifest_table_and_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real = tmp_path / "cams" / "viewer:FilePw_42@nvr" / "clip.mp4"  # a real file, a folder named like credentials
    real.parent.mkdir(parents=True)
    encode_clip(real, frames=3)
    encode_clip(tmp_path / "clip.mp4", frames=3)  # the same stem: the id takes the folder's name too
    missing = "camadmin:BatchPw_9@127.0.0.1:16903/x.mp4"  # a URL without its scheme: a missing file
    out = tmp_path / "out"
    inputs = [str(tmp_path / "clip.mp4"), str(real), missing]
    outcomes, skipped, _ = run_batch(config(out), inputs, adapter=ColourSegmenter(), progress=False)
    assert {o.job.id: o.status for o in outcomes} == {"viewer_nvr__clip": "done", f"{tmp_path.name}__clip": "done",
                                                      "x": "failed"}
    table = summary_table(outcomes, skipped, out / MANIFEST)
    written = [table, (out / MANIFEST).read_text(), *(str(p) for p in out.rglob("*"))]
    for secret in ("FilePw_42", "BatchPw_9"):
        assert not any(secret in text for text in written), (secret, written)
    assert "camadmin:***@127.0.0.1:16903" in (out / MANIFEST).read_text()
    again, skipped, _ = run_batch(config(out), inputs, adapter=ColourSegmenter(), progress=False)
    assert skipped == 3 and [o.status for o in again] == ["skipped"], "the masked manifest still resumes"


def test_the_table_says_what_the_videos_it_leaves_out_became(tmp_path):
    # found probing: 1 done and 3000 failed said "(2901 more done videos not listed ...)"
    outcomes = [VideoOutcome(VideoJob(tmp_path / "real.mp4", "real"), "done", frames=30, seconds=1.0)]
    outcomes += [VideoOutcome(VideoJob(tmp_path / f"m{i}.mp4", f"m{i}"), "failed", reason="does not exist")
                 for i in range(300)]
    table = summary_table(outcomes, 0, tmp_path / MANIFEST, limit=100).splitlines()
    assert sum(" failed " in line for line in table) == 100
    assert "(201 more videos not listed: 1 done, 200 failed; the manifest has them all)" in table


def test_a_video_is_on_disk_whole_before_the_manifest_records_it_done(tmp_path, monkeypatch):
    # Found probing power cuts (an ext4 image copied mid-run): every video the manifest recorded done
    # had a 0-byte panoptic.json, and the next run skipped them all and exited 0. Each file, its
    # folders, and the rename into place are synced before the video's manifest line.
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("one", "two"):
        encode_clip(videos / f"{name}.mp4", frames=3)
    out = tmp_path / "out"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))[1])
    cfg = config(out, overlay=True, coco_panoptic=True, concurrency=1)
    outcomes, _, _ = run_batch(cfg, [str(videos)], adapter=ColourSegmenter(), progress=False)
    assert sorted(o.status for o in outcomes) == ["done", "done"]
    manifest_syncs = [i for i, path in enumerate(synced) if path == str(out / MANIFEST)]
    for video in ("one", "two"):
        files = {str(p.relative_to(out / video)) for p in (out / video).rglob("*") if p.is_file()}
        assert {"frames.jsonl", "panoptic.json", "overlay.mp4"} <= files and len(files) >= 6, files
        partial = re.compile(rf"{re.escape(str(out))}/\.partial/{video}\.[0-9a-f]+(/.*)?$")
        own = [i for i, path in enumerate(synced) if partial.match(path)]
        assert files <= {partial.match(synced[i]).group(1).lstrip("/") for i in own if partial.match(synced[i]).group(1)}
        recorded = next(i for i in manifest_syncs if i > own[-1])  # the line that says it is done
        assert str(out) in synced[own[-1]:recorded], "the folder's rename into place, synced before the line"
    # the batch's own COCO file, written aside and moved into place, is synced before it is moved
    batch_json = str(out / "panoptic_batch.json.tmp")
    assert batch_json in synced and synced.index(batch_json) < len(synced) - 1 and synced[-1] == str(out)


def test_a_batch_says_which_videos_a_run_before_it_left_unfinished(tmp_path, caplog):
    # Found probing kill -9: the next run removed the half-written folders without a word
    videos, out, _ = _one_video_done(tmp_path, "one.mp4")
    for leftover in ("two.0123456789ab", "three.ba9876543210", "three.ba9876543210.old"):
        (out / ".partial" / leftover).mkdir(parents=True)
    caplog.set_level(logging.WARNING, logger="segstream")
    run_batch(config(out), [str(videos)], adapter=ColourSegmenter(), progress=False)
    said = [r.getMessage() for r in caplog.records if "stopped before finishing" in r.getMessage()]
    assert said == ["an earlier run stopped before finishing 2 videos (three, two): their half-written outputs were "
                    "removed"]
    assert not (out / ".partial").exists()


def test_a_file_system_that_cannot_sync_a_folder_still_records_videos_done(tmp_path, monkeypatch):
    # Found reviewing: fsync of a folder is EINVAL on vboxsf and some FUSE and CIFS mounts; it failed
    # every video after its folder was in place, so a rerun stopped at the first one again
    import errno
    import stat

    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    _, out, record = _one_video_done(tmp_path, "one.mp4")
    assert record["status"] == "done" and (out / "one" / "frames.jsonl").is_file()


def test_batch_json_prints_one_object_per_video_and_the_totals(tmp_path, capsys):
    # found probing as a CLI reviewer: a script had only the aligned table (free-text notes) or the manifest
    from segstream.pipeline.cli import main

    videos = tmp_path / "videos"
    videos.mkdir()
    encode_clip(videos / "one.mp4", frames=3)
    (videos / "broken.mp4").write_bytes(b"not a video" * 50)
    out = tmp_path / "out"
    code = main(["batch", str(videos), "--out", str(out), "--json", "--no-progress", "--set", "model.device=cpu",
                 "--set", "ops.http=null"])
    assert code == 1  # a video failed
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    videos_said = {line["id"]: line for line in lines if line["type"] == "video"}
    assert videos_said["one"]["status"] == "done" and videos_said["one"]["frames"] == 3
    assert "one/frames.jsonl" in videos_said["one"]["outputs"]
    assert videos_said["broken"]["status"] == "failed" and videos_said["broken"]["reason"]
    assert lines[-1] == {"type": "summary", "done": 1, "failed": 1, "stopped": 0, "skipped": 0,
                         "skipped_failed_before": 0, "frames": 3, "manifest": str(out / MANIFEST)}


def test_a_recording_split_into_parts_is_one_video_through_an_ffconcat_list(tmp_path):
    # OPERATIONS.md's recipe for a drone's or dashcam's chapter files (found probing drone footage:
    # a card folder gave each part as a video of its own, track ids starting again in each)
    parts = [encode_clip(tmp_path / f"DJI_000{n}.MP4", frames=6) for n in (1, 2)]
    listed = tmp_path / "flight.ffconcat"
    listed.write_text("ffconcat version 1.0\n" + "".join(f"file '{p.name}'\n" for p in parts))
    out = tmp_path / "out"
    outcomes, _, _ = run_batch(config(out), [str(listed)], adapter=ColourSegmenter(), progress=False)
    assert [(o.job.id, o.status, o.frames) for o in outcomes] == [("flight", "done", 12)]
    entries = [json.loads(line) for line in (out / "flight" / "frames.jsonl").read_text().splitlines()]
    assert [int(e["frame"]) for e in entries] == list(range(12))
    times = [float(e["pts_s"]) for e in entries]
    assert times == sorted(times) and times[6] > times[5], times  # the second part's run on
