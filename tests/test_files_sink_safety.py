"""Outputs in folders others can write: no link, FIFO or other user's file is written through
(found by a security review: a link planted as cam.jsonl made a run append frames to a root-only
file)."""

import errno
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from segstream.connectors.errors import SinkError
from segstream.connectors.file_source import FileSource
from segstream.connectors.files_sink import FilesSink, read_entries
from segstream.connectors.preview_sink import PreviewSink
from segstream.pipeline.batch import output_lock, run_batch
from segstream.pipeline.config import BatchPipelineConfig, validate_config
from segstream.pipeline.runtime import Runtime
from tests.conftest import CollectingSink

SECRET = b"root:only:0600\n"


@pytest.fixture
def secret(tmp_path) -> Path:
    """A file of its user's alone, elsewhere: what a planted link points at."""
    path = tmp_path / "elsewhere" / "secret"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


@pytest.fixture
def results(clip, segmenter) -> list:
    sink = CollectingSink()
    Runtime([FileSource("a", str(clip), max_frames=2), FileSource("b", str(clip), max_frames=2)], segmenter, [sink],
            progress=None).run()
    return sink.results


def test_a_link_where_the_file_goes_stops_the_run_and_leaves_its_target_alone(clip, segmenter, tmp_path, secret):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.jsonl").symlink_to(secret)
    with pytest.raises(SinkError) as raised:
        Runtime([FileSource("a", str(clip), max_frames=3)], segmenter, [FilesSink(out)], progress=None).run()
    assert str(raised.value) == (
        f"cannot write to '{out / 'a.jsonl'}': is a symbolic link, which outputs never follow (another user may "
        "have put it there) — remove it, or choose a folder of your own for the outputs"
    )
    assert secret.read_bytes() == SECRET


def test_a_link_met_after_the_first_line_costs_its_entries_counted_not_its_target(results, tmp_path, secret):
    out = tmp_path / "out"
    sink = FilesSink(out)
    dropped = []
    sink.on_dropped = lambda rs, reason: dropped.extend((r.source, reason) for r in rs)
    sink.publish(first_of(results, "a"))  # a line written: the run goes on
    (out / "b.jsonl").symlink_to(secret)
    for result in results:
        if result.source == "b":
            sink.publish(result)
    sink.close()
    assert dropped == [("b", "sink_write_failed")] * 2
    assert "symbolic link" in sink.status()["line"]
    assert secret.read_bytes() == SECRET and len(list(read_entries(out / "a.jsonl"))) == 1


def test_a_fifo_where_the_file_goes_is_refused_without_waiting_for_a_reader(results, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "a.jsonl")
    outcome = []
    result = first_of(results, "a")
    thread = threading.Thread(target=lambda: outcome.append(_raised(FilesSink(out).publish, result)), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "the sink waited for a reader of the FIFO"
    assert outcome == [f"cannot write to '{out / 'a.jsonl'}': is not a regular file (a FIFO, socket or device) — "
                       "remove it, or choose a folder of your own for the outputs"]


def test_a_folder_every_user_can_write_without_the_sticky_bit_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    with pytest.raises(SinkError, match=r"output directory '.*out' can be written by every user and has no sticky bit: "
                                        r"others could replace the files written there"):
        FilesSink(out)
    out.chmod(0o1777)  # as /tmp: others cannot remove or rename our files
    FilesSink(out).close()


def test_a_file_of_another_user_in_a_shared_folder_is_not_written(results, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o1777)
    theirs = out / "a.jsonl"
    theirs.write_bytes(b"")
    theirs.chmod(0o666)
    try:
        os.chown(theirs, 54321, 54321)
    except PermissionError:
        pytest.skip("making a file of another user needs root")
    with pytest.raises(SinkError, match=r"belongs to another user \(uid 54321\) in a folder every user can write"):
        FilesSink(out).publish(first_of(results, "a"))
    assert theirs.read_bytes() == b""


def test_new_files_get_the_mode_the_umask_leaves(results, tmp_path):
    old = os.umask(0o077)
    try:
        sink = FilesSink(tmp_path / "out")
        sink.publish(first_of(results, "a"))
        sink.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out" / "a.jsonl").stat().st_mode) == 0o600


@pytest.mark.parametrize("format", ["mp4", "png"])
def test_the_preview_writes_through_no_link(results, tmp_path, secret, format):
    out = tmp_path / "preview"
    preview = PreviewSink(out, format)
    result = first_of(results, "a")
    target = out / "a.mp4" if format == "mp4" else preview.path("a", result.run_id) / f"{result.index:08d}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(secret)
    result.image = np.zeros((result.height, result.width, 3), np.uint8)
    with pytest.raises(SinkError, match=r"is a symbolic link, which outputs never follow"):
        preview.publish(result)
        preview.close()
    assert secret.read_bytes() == SECRET


def test_batch_writes_its_lock_and_manifest_through_no_link(tmp_path, secret, clip, segmenter):
    out = tmp_path / "batch"
    out.mkdir()
    (out / ".lock").symlink_to(secret)
    with pytest.raises(Exception, match=r"\.lock.*is a symbolic link, which outputs never follow"):
        with output_lock(out):
            pass
    (out / ".lock").unlink()
    (out / "manifest.jsonl.tmp").symlink_to(secret)  # where the manifest is rewritten
    (out / "manifest.jsonl").write_text("")
    cfg = validate_config({"batch": {"output": str(out)}, "ops": {"http": None}}, schema=BatchPipelineConfig)
    with pytest.raises(SinkError, match=r"manifest.jsonl.tmp': is a symbolic link"):
        run_batch(cfg, [str(clip)], adapter=segmenter, progress=False)
    assert secret.read_bytes() == SECRET
    out.chmod(0o777)
    with pytest.raises(SinkError, match=r"batch output folder '.*batch' can be written by every user"):
        with output_lock(out):
            pass


def first_of(results: list, source: str):
    return next(r for r in results if r.source == source)


def _raised(call, *args) -> str:
    try:
        call(*args)
    except SinkError as error:
        return str(error)
    return "nothing raised"



def test_a_file_deleted_with_its_folder_mid_run_is_said_lost_and_written_anew(tmp_path, caplog):
    """Found probing: `rm -rf` of the sink's folder mid-run lost every entry silently (writes to the
    open, deleted file succeed), ending exit 0 with no folder and no file."""
    import shutil

    from tests.test_redis_wire import stamped, synthetic_scene

    folder = tmp_path / "out"
    sink = FilesSink(folder)
    for index in range(3):
        sink.publish(stamped(synthetic_scene("cam", index)))
    shutil.rmtree(folder)
    for index in range(3, 5):
        sink.publish(stamped(synthetic_scene("cam", index)))
    sink.close()
    assert [int(entry["frame"]) for entry in read_entries(folder / "cam.jsonl")] == [3, 4]
    assert sink.status()["lost_with_files"] == 3 and "3 lines lost with files deleted under us" in sink.status()["line"]
    assert any("was deleted while this run wrote to it: the 3 entries" in r.message for r in caplog.records)


def test_a_second_writer_of_the_same_file_is_refused_in_one_line(tmp_path):
    """Found probing: two runs with the same sinks.files.dir appended to one JSONL, their lines
    interleaved under two run_ids, with no word."""
    from tests.test_redis_wire import stamped, synthetic_scene

    first, second = FilesSink(tmp_path), FilesSink(tmp_path)
    first.publish(stamped(synthetic_scene("cam", 0)))
    with pytest.raises(SinkError, match=r"cam.jsonl' is being written by another process \(a second run with the "
                                        r"same sinks.files.dir\?\) — stop it, or give this run a folder of its own"):
        second.publish(stamped(synthetic_scene("cam", 1)))
    first.close()
    second.publish(stamped(synthetic_scene("cam", 2)))  # free again once the first let go
    second.close()
    assert [int(e["frame"]) for e in read_entries(tmp_path / "cam.jsonl")] == [0, 2]


def test_two_runs_starting_at_once_on_a_new_folder_are_told_apart_at_start_and_leave_no_empty_file(tmp_path):
    """Found at stop 28: on a folder without the sources' files both runs started, and the second
    failed at its first line, after it had published elsewhere."""
    from tests.test_redis_wire import stamped, synthetic_scene

    first = FilesSink(tmp_path, sources=["cam"])
    with pytest.raises(SinkError, match=r"cam.jsonl' is being written by another process"):
        FilesSink(tmp_path, sources=["cam"])
    first.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # made at start, never written: removed

    again = FilesSink(tmp_path, sources=["cam"])
    again.publish(stamped(synthetic_scene("cam", 0)))
    again.source_ended("cam")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cam.jsonl"]  # written: kept; no empty events file
    assert [int(e["frame"]) for e in read_entries(tmp_path / "cam.jsonl")] == [0]
    again.close()


def test_a_run_whose_files_another_run_holds_is_refused_before_it_publishes_anywhere(tmp_path, capsys):
    """Found probing: the refused run had already put its `connecting` event into the Redis
    stream the other run's readers follow."""
    from segstream.pipeline.cli import main
    from tests.redis_servers import RedisProcess
    from tests.test_redis_outage import camera_run_config
    from tests.test_redis_wire import stamped, synthetic_scene

    out = tmp_path / "out"
    other_run = FilesSink(out)
    other_run.publish(stamped(synthetic_scene("cam0", 0)))
    with RedisProcess(tmp_path / "redis") as server:
        config = camera_run_config(tmp_path, f"{{url: '{server.url}'}}", 10, 5)
        config.write_text(config.read_text() + f"  files: {{enabled: true, dir: '{out}'}}\n")
        assert main(["run", str(config)]) == 1
        assert server.client().keys("*") == []
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "cam0.jsonl' is being written by another process" in line
    other_run.close()


def test_a_deleted_file_whose_new_one_another_process_holds_costs_entries_counted_not_the_run(tmp_path, caplog):
    """Found reviewing: a file deleted mid-run and taken by a second run before ours reopened it
    stopped the run (SinkError) instead of counting what could not be written."""
    import multiprocessing

    from tests.test_redis_wire import stamped, synthetic_scene

    import logging

    logger = logging.getLogger("segstream.sinks")  # its records even after the CLI's setup stopped propagation
    logger.addHandler(caplog.handler)
    logger.propagate = False
    sink = FilesSink(tmp_path)
    dropped = []
    sink.on_dropped = lambda rs, reason: dropped.extend((r.index, reason) for r in rs)
    sink.publish(stamped(synthetic_scene("cam", 0)))
    (tmp_path / "cam.jsonl").unlink()
    context = multiprocessing.get_context("spawn")
    holding, release = context.Event(), context.Event()
    other = context.Process(target=_hold_lock, args=(str(tmp_path / "cam.jsonl"), holding, release))
    other.start()
    try:
        assert holding.wait(60)
        for index in range(1, 4):
            sink.publish(stamped(synthetic_scene("cam", index)))  # never raises
        failing = sink.status()["line"]
    finally:
        release.set()
        other.join(60)
        logger.propagate = True
        logger.removeHandler(caplog.handler)
    sink.publish(stamped(synthetic_scene("cam", 4)))  # the other let go: written again
    sink.close()
    assert dropped == [(1, "sink_write_failed"), (2, "sink_write_failed"), (3, "sink_write_failed")]
    assert sink.status()["dropped"] == {"sink_write_failed": 3} and "another process writes it" in failing
    assert "writes failing" not in sink.status()["line"]  # written again: no failure to speak of
    said = [r.getMessage() for r in caplog.records if "another process writes it" in r.getMessage()]
    assert said == [f"cannot write to '{tmp_path / 'cam.jsonl'}': another process writes it now (a second run with "
                    "the same sinks.files.dir?) — stop it, or give each run a folder of its own; its entries are "
                    "dropped (counted as sink_write_failed) until writes succeed again"]
    assert [int(e["frame"]) for e in read_entries(tmp_path / "cam.jsonl")] == [4]


def _hold_lock(path: str, holding, release) -> None:
    """Another process: takes the file's exclusive lock, as a second run's files sink does, until released."""
    import fcntl

    with open(path, "ab") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        holding.set()
        release.wait(60)


def test_a_folder_made_anew_that_every_user_can_write_costs_entries_counted_not_the_run(tmp_path):
    from tests.test_redis_wire import stamped, synthetic_scene

    folder = tmp_path / "out"
    sink = FilesSink(folder)
    sink.publish(stamped(synthetic_scene("cam", 0)))
    (folder / "cam.jsonl").unlink()
    folder.chmod(0o777)  # what a careless `chmod -R 777` leaves: others could swap the new file
    sink.publish(stamped(synthetic_scene("cam", 1)))  # never raises
    assert not (folder / "cam.jsonl").exists() and sink.status()["dropped"] == {"sink_write_failed": 1}
    assert "can be written by every user and has no sticky bit" in sink.status()["line"]
    folder.chmod(0o755)
    sink.publish(stamped(synthetic_scene("cam", 2)))
    sink.close()
    assert [int(e["frame"]) for e in read_entries(folder / "cam.jsonl")] == [2]


def test_an_output_that_finds_no_file_descriptor_left_names_ulimit_n(tmp_path):
    # Found probing: the files sink said only "Too many open files" where the rest of segstream
    # names the limit to raise. In a process of its own: the limit is the whole process's.
    script = (
        "import os, resource, sys\n"
        "from segstream.connectors.output_files import open_output\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir('/proc/self/fd')) - 1, 4096))  # less the listing's own\n"
        "try:\n"
        "    open_output(sys.argv[1])\n"
        "except OSError as error:\n"
        "    print(error.errno, error.strerror)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "dock.jsonl")], capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.startswith(f"{errno.EMFILE} too many open files in this process ("), done
    assert "raise `ulimit -n`" in done.stdout
