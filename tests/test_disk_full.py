"""A full disk under the file outputs (preview, render, batch): frames are dropped and counted,
the run goes on, and what cannot be finished is said in one line, never a traceback.

Each test runs its program under ``unshare -m`` with a small tmpfs mounted in that private mount
namespace only: the machine's mounts are never touched. That needs root (CAP_SYS_ADMIN), as in CI.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import av
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _can_unshare() -> str:
    try:
        done = subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True, text=True)
    except FileNotFoundError:
        return "no unshare command"
    return "" if done.returncode == 0 else done.stderr.strip() or "unshare -m refused"


_UNSHARE = _can_unshare()
pytestmark = pytest.mark.skipif(bool(_UNSHARE), reason=f"a private mount namespace is needed to mount a tmpfs to "
                                                       f"fill ({_UNSHARE}): run as root")


def on_small_disk(mountpoint: Path, size: str, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``argv`` run with a ``size`` tmpfs mounted at ``mountpoint`` in a mount namespace of its own."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    command = " ".join(f"'{a}'" for a in argv)
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t tmpfs -o size={size},mode=755 segstream-test '{mountpoint}' && exec {command}"],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO)})  # scripts import tests.conftest


def noise_clip(path: Path, frames: int = 40) -> Path:
    """Frames of noise: their preview does not compress, so its writes reach the disk at once."""
    rng = np.random.default_rng(7)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for _ in range(frames):
            image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
            image[30:60, 40:70] = (220, 30, 30)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


_PREVIEW_RUN = textwrap.dedent('''
    import json, logging, os, sys
    import av
    from segstream.connectors import preview_sink
    from segstream.connectors.file_source import FileSource
    from segstream.connectors.preview_sink import PreviewSink
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import CollectingSink, ColourSegmenter

    out, fmt, clip = sys.argv[1:4]
    preview_sink.RETRY_S = 0.0  # the next frame after a failure tries again
    with open(out + "/filler", "wb") as filler:  # the disk full from the first frame
        try:
            while True:
                filler.write(bytes(65536))
                filler.flush()
        except OSError:
            pass

    class SpaceComesBack(CollectingSink):
        """Frees the disk once the preview has tried frame 30 (the encoder holds a dozen; the
        preview draws on its own thread, so it is waited for)."""
        def publish(self, result):
            super().publish(result)
            if result.index == 30:
                preview.flush()
                os.unlink(out + "/filler")

    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("segstream").addHandler(handler)
    preview, other = PreviewSink(out + "/prev", fmt), SpaceComesBack()
    report = Runtime([FileSource("cam", clip)], ColourSegmenter(), [preview, other], progress=None).run()
    files = {}
    for root, _, names in os.walk(out + "/prev"):
        for name in names:
            path = os.path.join(root, name)
            try:
                with av.open(path) as container:
                    files[path] = sum(1 for _ in container.decode(video=0))
            except av.FFmpegError:
                files[path] = None
    print(json.dumps({"run_id": report.run_id, "undelivered": report.undelivered, "balanced": report.balanced, "others": len(other.results),
                      "status": report.sinks["preview"], "warnings": warnings, "files": files}))
''')


@pytest.mark.parametrize("fmt", ["mp4", "png"])
def test_a_full_disk_costs_the_preview_only_its_frames_and_it_writes_again_once_space_comes_back(tmp_path, fmt):
    # Found probing: a full disk under the preview stopped the whole run, Redis included
    clip = noise_clip(tmp_path / "noise.mp4")
    out = tmp_path / "disk"
    script = tmp_path / "preview_run.py"
    script.write_text(_PREVIEW_RUN)
    done = on_small_disk(out, "4m", [sys.executable, str(script), str(out), fmt, str(clip)])
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    seen = json.loads(done.stdout)
    status, said, files = seen["status"], seen["warnings"], seen["files"]
    assert seen["others"] == 40  # the other sinks went on
    lost = seen["undelivered"].get("sink_write_failed", 0)
    assert lost > 0 and seen["balanced"] and status["dropped"] == {"sink_write_failed": lost}
    first = "cam.mp4" if fmt == "mp4" else f"cam/{seen['run_id']}/00000000.png"
    assert said[0] == (f"preview of cam: cannot write '{out}/prev/{first}': No space left on device; its frames are "
                       "dropped (counted as sink_write_failed) until writes succeed again")
    unfinished = status["unfinished"]
    resumed = [line for line in said if " again after " in line]
    spell = lost - sum(unfinished.values())  # the frames of unplayable files count as dropped too (found probing)
    assert len(resumed) == 1 and resumed[0].endswith(f"again after {spell} dropped frames")  # once per spell
    assert status["line"] == f"preview dropped {lost} frames"  # writing again: no failure to speak of
    assert said[2:] == [f"preview '{path}' is unfinished and cannot be played (the {frames} frames written to it are "
                        "lost, counted as sink_write_failed): its writes failed (No space left on device)"
                        for path, frames in sorted(unfinished.items())]
    if fmt == "png":
        assert lost == 31 and not unfinished  # frames 0 to 30 met a full disk, each on its own
        assert sorted(os.path.basename(p) for p in files) == [f"{i:08d}.png" for i in range(31, 40)]
        assert all(n == 1 for n in files.values())  # no picture cut short is left
    else:
        assert unfinished and all(files[path] is None for path in unfinished)  # left as they are, said so
        playable = [n for path, n in files.items() if path not in unfinished]
        assert len(playable) == 1 and playable[0] > 0
        assert playable[0] + lost == 40  # every frame accounted for: in the playable file, or dropped
        assert sum(unfinished.values()) > 0, "frames in an unplayable file, counted as dropped"


def test_render_to_a_full_disk_is_one_line_naming_the_full_disk(tmp_path):
    # Found probing: a traceback, "PyAVCallbackError: Error in PyAV callback: '5'", from the MP4's close
    from segstream.connectors.embedded_redis import EmbeddedRedis
    from segstream.connectors.file_source import FileSource
    from segstream.connectors.redis_reader import connect_redis
    from segstream.connectors.redis_sink import RedisPublisher
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import ColourSegmenter

    clip = noise_clip(tmp_path / "noise.mp4")
    out = tmp_path / "disk"
    with EmbeddedRedis(tmp_path / "redis") as server:
        publisher = RedisPublisher(connect_redis(server.url))
        Runtime([FileSource("cam", str(clip))], ColourSegmenter(), [publisher], progress=None).run()
        done = on_small_disk(out, "100k", [sys.executable, "-m", "segstream.pipeline.cli", "render",
                                           "segstream:cam:frames", "--video", str(clip), "--out",
                                           str(out / "x.mp4"), "--url", server.url])
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"segstream: error: cannot write {out}/x.mp4: No space left on device"]


_FILL = "with open(sys.argv[1] + '/filler', 'wb', buffering=0) as f:\n    try:\n        while True:\n            f.write(bytes(65536)); f.flush()\n    except OSError:\n        pass\n"

_MANIFEST_ON_A_FULL_DISK = textwrap.dedent('''
    import json, logging, os, sys
    from segstream.pipeline.batch import Manifest
    logging.basicConfig(format="%(levelname)s %(message)s")
    manifest = Manifest(sys.argv[1] + "/manifest.jsonl")
    line = {"video": "/v/a.mp4", "id": "a", "status": "failed", "size": 1}
    manifest._file.write(json.dumps(line) + "\\n" + json.dumps({**line, "status": "done"}) + "\\n")
    manifest._file.flush()
    manifest.records["/v/a.mp4"] = {**line, "status": "done"}
''') + _FILL + textwrap.dedent('''
    manifest.close()
    files = sorted(os.listdir(sys.argv[1]))
    os.unlink(sys.argv[1] + "/filler")
    print(json.dumps({"files": files, "status": Manifest(sys.argv[1] + "/manifest.jsonl").records["/v/a.mp4"]["status"]}))
''')


def test_a_manifest_that_cannot_be_compacted_on_a_full_disk_is_kept_with_a_warning(tmp_path):
    # Found probing: a traceback from Manifest._compact, and an empty manifest.jsonl.tmp left
    out = tmp_path / "disk"
    script = tmp_path / "manifest_full.py"
    script.write_text(_MANIFEST_ON_A_FULL_DISK)
    done = on_small_disk(out, "256k", [sys.executable, str(script), str(out)])
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen == {"files": ["filler", "manifest.jsonl"], "status": "done"}  # no .tmp left; the newest line counts
    assert done.stderr.splitlines() == [
        f"WARNING cannot rewrite '{out}/manifest.jsonl' without its older lines (No space left on device): it is kept "
        "as it is, which reads the same (the last line of each video counts)"]


@pytest.mark.parametrize("outputs", [["batch.coco_panoptic=true"], ["batch.overlay=true", "batch.coco_panoptic=false"]])
def test_a_batch_on_a_full_disk_ends_in_one_line_naming_the_full_disk(tmp_path, outputs):
    # Found probing: libpng's "Write Error" lines on stderr (COCO PNGs), and a traceback from the manifest
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a", "b"):
        noise_clip(videos / f"{name}.mp4")
    out = tmp_path / "disk"
    sets = [a for o in outputs for a in ("--set", o)]
    done = on_small_disk(out, "300k", [sys.executable, "-m", "segstream.pipeline.cli", "batch", str(videos),
                                       "--config", "configs/batch.yaml", "--set", "batch.jsonl=false", *sets,
                                       "--concurrency", "1", "--out", str(out), "--no-progress"])
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr and not any("libpng" in line for line in lines), done.stderr
    # (where the disk fills, a frame's file or the end of the overlay's, depends on the order videos go in)
    assert re.match(rf"segstream: error: cannot (write |finish the outputs of \w+ in '){re.escape(str(out))}/\.partial/",
                    lines[-1]), lines[-1]
    # found probing crashes: nothing said what the batch had done before it stopped
    assert re.search(r": No space left on device — the batch stopped there; [01] videos? done, as "
                     f"{re.escape(str(out))}/manifest.jsonl records: the same command again does the rest$", lines[-1])


_FILES_READINESS = textwrap.dedent('''
    import json, os, sys
    from segstream.connectors.files_sink import FilesSink
    from segstream.connectors.file_source import FileSource
    from segstream.pipeline.metrics import RunMetrics
    from segstream.pipeline.monitoring import readiness
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import CollectingSink, ColourSegmenter

    out, clip = sys.argv[1:3]
    files = FilesSink(out + "/files")
''') + _FILL + textwrap.dedent('''
    metrics, seen = RunMetrics(), {}

    class Watcher(CollectingSink):
        """Published after the files sink: what /readyz and the gauge say at frames 5 and 12."""
        def publish(self, result):
            super().publish(result)
            if result.index in (5, 12, 20):
                verdict = readiness(metrics)
                seen[result.index] = {"ready": verdict.ok, "sinks": verdict.parts["sinks_connected"],
                                      "gauge": {k[0]: v for k, v in metrics.gauges["sink_connected"].read().items()},
                                      "line": files.status()["line"],
                                      "down": metrics.gauges["sink_down_seconds"].read()[("files",)],
                                      "reconnects": metrics.gauges["sink_reconnects"].read()[("files",)]}
            if result.index == 10:
                os.unlink(out + "/filler")

    # looped to 80 frames: still streaming at frame 20 however far decoding ran ahead (a loaded
    # machine's publisher once trailed the 40-frame clip's end, and /readyz wants a streaming source)
    Runtime([FileSource("cam", clip, loop=True, max_frames=80)], ColourSegmenter(), [files, Watcher()],
            metrics=metrics, progress=None).run()
    print(json.dumps(seen))
''')


def test_a_files_sink_whose_writes_fail_is_not_connected_and_not_ready_until_it_writes_again(tmp_path, clip):
    # Found probing: /readyz answered 200 and sink_connected{sink="files"} stayed 1 while every write failed
    out = tmp_path / "disk"
    script = tmp_path / "files_ready.py"
    script.write_text(_FILES_READINESS)
    done = on_small_disk(out, "256k", [sys.executable, str(script), str(out), str(clip)])
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["5"]["sinks"] == {"files": False, "collect": True} and not seen["5"]["ready"]
    assert seen["5"]["gauge"] == {"files": 0.0, "collect": 1.0}
    assert seen["12"]["sinks"] == {"files": True, "collect": True} and seen["12"]["ready"]
    assert seen["12"]["gauge"] == {"files": 1.0, "collect": 1.0}
    # found probing: the status lines still said "(writes failed: ...)" long after writing resumed
    assert re.fullmatch(r"files dropped 6 entries( \+ \d+ events?)? \(writes failing: No space left on device\)",
                        seen["5"]["line"])
    assert re.fullmatch(r"files dropped 11 entries( \+ \d+ events?)?", seen["12"]["line"])
    # found probing: the files sink had no outage clock (segstream_sink_down_seconds_total), as Redis has
    assert seen["5"]["down"] > 0 and seen["5"]["reconnects"] == 0
    assert seen["12"]["down"] > seen["5"]["down"] and seen["12"]["reconnects"] == 1
    assert seen["20"]["down"] == seen["12"]["down"], "the clock stops once the files write again"


def test_a_batch_output_folder_on_a_read_only_disk_names_the_folder_it_could_not_make(tmp_path, clip):
    # Found probing: "(runs Read-only file system)", the folder's name run into the reason
    disk = tmp_path / "ro"
    done = on_small_disk(disk, "64k,ro", [sys.executable, "-m", "segstream.pipeline.cli", "batch", str(clip),
                                          "--config", "configs/batch.yaml", "--out", str(disk / "runs" / "batch"),
                                          "--no-progress"])
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        f"segstream: error: cannot use '{disk}/runs/batch' as the output folder ('{disk}/runs': Read-only file "
        "system) — give --out (or batch.output) a folder that can be created and written")


_MARKS_ON_A_FULL_DISK = textwrap.dedent('''
    import json, logging, os, sys
    from segstream.pipeline.batch import RedisMarks
    logging.basicConfig(format="%(levelname)s %(message)s")
''') + _FILL + textwrap.dedent('''
    marks = RedisMarks(__import__("pathlib").Path(sys.argv[1] + "/.redis-marks.json"))
    marks.marks["a"] = {"segstream:a:frames": "0-0"}
    marks._save()
    files = sorted(os.listdir(sys.argv[1]))
    os.unlink(sys.argv[1] + "/filler")
    print(json.dumps(files))
''')


def test_batch_redis_marks_on_a_full_disk_are_a_warning_not_a_traceback(tmp_path):
    # Found in review: RedisMarks._save had no error handling (a traceback, its .tmp left)
    out = tmp_path / "disk"
    script = tmp_path / "marks_full.py"
    script.write_text(_MARKS_ON_A_FULL_DISK)
    done = on_small_disk(out, "256k", [sys.executable, str(script), str(out)])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["filler"]  # no .tmp left
    assert done.stderr.splitlines() == [
        f"WARNING cannot save where the videos' Redis streams began in '{out}/.redis-marks.json' (No space left on "
        "device): a video this run begins may have its entries twice in Redis when it is published again"]
