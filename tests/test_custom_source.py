"""Sources of one's own named in a config (``type: custom``, ``use: module:attribute``): built by
the run with their options, given the run's buffering, states and failure handling, checked by
``validate`` without being built (found probing as a plugin author: stages and sinks could be
named in YAML, a camera SDK's source only in a program of one's own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import segstream
from segstream.connectors.files_sink import read_entries
from segstream.connectors.redis_wire import event_from_wire, from_wire
from segstream.pipeline.cli import main, run_pipeline
from segstream.pipeline.config import load_checked_config
from tests.conftest import unlocated

SOURCES = '''
import threading
import time

import numpy as np

import segstream


class Pattern:
    """Frames of one grey level after another, as fast as they are taken (not live)."""

    live = False

    def __init__(self, name, frames=5, width=64, height=48):
        self.name, self.count, self.size = name, frames, (height, width)
        self.closed = threading.Event()

    def picture(self, i):
        return segstream.Frame(self.name, i, np.full((*self.size, 3), 40 * i % 256, np.uint8), pts=None,
                               time_base=None, pts_seconds=i / 10, capture_wall=time.time())

    def frames(self):
        for i in range(self.count):
            if self.closed.is_set():
                return
            yield self.picture(i)

    def close(self):
        self.closed.set()


class Ticker(Pattern):
    """A camera SDK's source: frames at its own pace (live) until it is closed."""

    live = True

    def __init__(self, name, fps=50.0):
        super().__init__(name)
        self.fps = fps

    def frames(self):
        i = 0
        while not self.closed.wait(1 / self.fps):
            yield self.picture(i)
            i += 1


class Declares(Pattern):
    """A source that says how it wants to be buffered."""

    queue_size = 3
    buffer_policy = segstream.BufferPolicy("newest", max_staleness_s=0.25)


class Unplugged(Pattern):
    def frames(self):
        yield self.picture(0)
        yield self.picture(1)
        raise OSError("the camera's cable was pulled")


def refuse(name, serial):
    raise RuntimeError(f"no camera with serial {serial}")


def elsewhere(name):
    return Pattern("cam9")


def unsure(name):
    source = Pattern(name)
    source.live = "yes"
    return source


class NoClose:
    def __init__(self, name):
        self.name, self.live = name, False

    def frames(self):
        return iter(())
'''


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    (tmp_path / "mysources.py").write_text(SOURCES, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("mysources", None)


def write_config(site: Path, sources: str, extra: str = "") -> Path:
    config = site / "pipeline.yaml"
    config.write_text("sources:\n" + textwrap.indent(textwrap.dedent(sources).strip(), "  ") + "\n"
                      "model: {device: cpu, precision: fp32}\nengine: {batch_size: 2}\n"
                      "sinks:\n  redis: {enabled: false}\n  files: {enabled: true, dir: out}\nops: {http: null}\n"
                      + textwrap.dedent(extra), encoding="utf-8")
    return config


def frames_of(site: Path, source: str) -> list:
    return [from_wire(entry) for entry in read_entries(site / "out" / f"{source}.jsonl")]


def states_of(site: Path, source: str) -> list[tuple[str, str]]:
    return [(e.data["state"], e.data["reason"]) for e in map(event_from_wire, read_entries(site / "out" /
                                                                                         f"{source}.events.jsonl"))
            if e.kind == "state"]


def test_a_config_named_source_runs_with_its_options_beside_a_shipped_one(site):
    config = write_config(site, """
        - {name: lab, type: custom, use: 'mysources:Pattern', options: {frames: 6, width: 80, height: 60}}
        - {name: demo, type: synthetic, width: 64, height: 48, num_frames: 3}
    """)
    report = run_pipeline(load_checked_config(config), progress=False)
    assert report.failed == {} and report.published == 9
    lab = frames_of(site, "lab")
    assert [r.index for r in lab] == list(range(6)) and {(r.width, r.height) for r in lab} == {(80, 60)}
    assert [r.pts_seconds for r in lab] == pytest.approx([i / 10 for i in range(6)])
    assert len(frames_of(site, "demo")) == 3
    # the runtime's own states for a source that reports none, its end an end of input
    assert states_of(site, "lab")[-1] == ("ended", "end of input")


def test_a_live_source_of_one_s_own_gets_a_live_buffer_and_one_that_declares_its_own_keeps_it(site):
    config = write_config(site, """
        - {name: sdk, type: custom, use: 'mysources:Ticker', options: {fps: 200}}
        - {name: decl, type: custom, use: 'mysources:Declares'}
        - {name: told, type: custom, use: 'mysources:Pattern', queue_size: 5, buffer: newest, max_staleness_ms: 100}
    """)
    cfg = load_checked_config(config)
    from segstream.pipeline.builders import build_sources
    from tests.conftest import ColourSegmenter

    sources = build_sources(cfg.sources)
    try:
        runtime = segstream.Runtime.from_config(cfg, sources, ColourSegmenter(), [], stages=[])
        by_name = dict(zip([s.name for s in sources], runtime.buffers))
        assert (by_name["sdk"].kind, by_name["sdk"].max_staleness_s) == ("newest", None)  # live: the newest frames
        assert (by_name["decl"].kind, by_name["decl"].max_staleness_s) == ("newest", 0.25)  # its own buffer_policy
        assert (by_name["told"].kind, by_name["told"].max_staleness_s) == ("newest", 0.1)  # the config's first
        sizes = dict(zip([s.name for s in sources], runtime._batcher.sizes))
        assert sizes == {"sdk": 8, "decl": 3, "told": 5}
    finally:
        for source in sources:
            source.close()


def test_a_live_source_of_one_s_own_runs_until_stopped_and_is_closed(site):
    config = write_config(site, "- {name: sdk, type: custom, use: 'mysources:Ticker', options: {fps: 100}}")
    cfg = load_checked_config(config)
    runtime = segstream.build_runtime(cfg, progress=False)
    [source] = runtime.sources
    running = threading.Thread(target=runtime.run)
    running.start()
    deadline = time.monotonic() + 60
    while runtime.metrics.source("sdk").published < 5:
        assert time.monotonic() < deadline and running.is_alive()
        time.sleep(0.05)
    runtime.stop()
    running.join(60)
    assert not running.is_alive() and source.closed.is_set()
    assert states_of(site, "sdk")[-1] == ("ended", "stopped")


def test_a_source_that_fails_midway_fails_alone_and_the_run_says_so(site):
    config = write_config(site, """
        - {name: dock, type: custom, use: 'mysources:Unplugged'}
        - {name: demo, type: synthetic, width: 64, height: 48, num_frames: 4}
    """)
    report = run_pipeline(load_checked_config(config), progress=False)
    assert report.failed == {"dock": "OSError: the camera's cable was pulled"}
    assert [r.index for r in frames_of(site, "dock")] == [0, 1] and len(frames_of(site, "demo")) == 4
    assert states_of(site, "dock")[-1] == ("failed", "OSError: the camera's cable was pulled")


def test_a_factory_that_raises_fails_its_source_alone_or_the_start_when_it_is_the_only_one(site, capsys):
    config = write_config(site, """
        - {name: gige, type: custom, use: 'mysources:refuse', options: {serial: A12}}
        - {name: demo, type: synthetic, width: 64, height: 48, num_frames: 2}
    """)
    report = run_pipeline(load_checked_config(config), progress=False)
    assert report.failed == {"gige": "mysources:refuse('gige', ...) raised RuntimeError: no camera with serial A12"}
    assert len(frames_of(site, "demo")) == 2
    alone = write_config(site, "- {name: gige, type: custom, use: 'mysources:refuse', options: {serial: A12}}")
    assert main(["run", str(alone)]) == 1  # (a camera not there: no config mistake, exit 1)
    assert capsys.readouterr().err.splitlines()[-1] == (
        "segstream: error: source gige: mysources:refuse('gige', ...) raised RuntimeError: no camera with serial A12")


@pytest.mark.parametrize(("entry", "message"), [
    ("{name: a, type: custom, use: 'nowhere_module:Camera'}",
     "sources[0].use: cannot import module 'nowhere_module' (ModuleNotFoundError: No module named 'nowhere_module') "
     "— install its package, or put the folder that holds it on PYTHONPATH"),
    ("{name: a, type: custom, use: 'mysources:NoClose'}",
     "sources[0].use: mysources:NoClose: class NoClose lacks close — segstream.VideoSource has name, live, "
     "frames() and close()"),
    ("{name: a, type: custom, use: 'mysources:Ticker', options: {fsp: 5}}",
     "sources[0].options: mysources:Ticker cannot be called as mysources:Ticker(name, fsp=...): got an unexpected "
     "keyword argument 'fsp' (option 'fsp': did you mean 'fps'?) — give the options its factory takes"),
    ("{name: a, type: custom, use: 'gige_camera'}",
     "sources[0].use: 'gige_camera' is no entry point of the group segstream.sources (none is installed) — write "
     "module:attribute, e.g. my_package.sources:GigECamera"),
    ("{name: a, type: custom, use: 'mysources:Pattern', max_staleness_ms: 200}",
     "sources[0]: max_staleness_ms drops frames of a source whose buffer is newest — "
     "add buffer: newest (a source of one's own says nothing of it to the config)"),
    ("{name: a, type: plugin, use: 'mysources:Pattern'}",
     "sources[0].type: unknown source type 'plugin' — use type: custom (README, \"Cameras, streams and "
     "image folders\")"),
])
def test_a_wrong_source_of_one_s_own_is_one_line_at_validate_and_at_run(site, capsys, entry, message):
    config = write_config(site, f"- {entry}")
    for command in ("validate", "run"):
        assert main([command, str(config)]) == 2
        assert unlocated(capsys.readouterr().err) == f"segstream: error: {message}\n"


@pytest.mark.parametrize(("use", "problem"), [
    ("mysources:elsewhere", "returned a Pattern, which is named 'cam9', not 'a' (the name the factory was given)"),
    ("mysources:unsure", "returned a Pattern, which has live 'yes', not True or False"),
])
def test_a_factory_that_returns_no_source_of_its_name_is_refused_at_the_start(site, capsys, use, problem):
    config = write_config(site, f"- {{name: a, type: custom, use: '{use}'}}")
    assert main(["validate", str(config)]) == 0  # validate calls no factory
    capsys.readouterr()
    assert main(["run", str(config)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"segstream: error: source a: {use}('a', ...) {problem} — segstream.VideoSource has name, live, frames() "
        "and close()")


def test_validate_connect_leaves_a_source_of_one_s_own_to_the_run(site, capsys):
    config = write_config(site, "- {name: lab, type: custom, use: 'mysources:Pattern'}")
    assert main(["validate", "--connect", "--json", str(config)]) == 0
    report = json.loads(capsys.readouterr().out)
    [check] = [c for c in report["checks"] if "lab" in c["what"]]
    assert check["ok"] and check["said"] == "a source of your own (mysources:Pattern), built and opened when the run starts"


def test_an_entry_point_names_a_source_and_segstream_run_runs_it(site):
    info = site / "mysources-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mysources\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[segstream.sources]\npattern = mysources:Pattern\n", encoding="utf-8")
    config = write_config(site, "- {name: lab, type: custom, use: pattern, options: {frames: 3}}")
    ran = subprocess.run([sys.executable, "-m", "segstream", "run", str(config)], cwd=site,
                         env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True, timeout=180)
    assert ran.returncode == 0, ran.stderr
    assert "lab 3/3" in ran.stderr and len(frames_of(site, "lab")) == 3


def _published_at_least(runtime, name: str, count: int, running: threading.Thread) -> None:
    deadline = time.monotonic() + 60
    while runtime.metrics.source(name).published < count:
        assert time.monotonic() < deadline and running.is_alive()
        time.sleep(0.05)


def test_a_reload_that_changes_a_source_s_options_builds_it_again_and_closes_the_old_one(site):
    from segstream.pipeline.reload import Reloader

    first = load_checked_config(write_config(site, "- {name: lab, type: custom, use: 'mysources:Ticker', "
                                                   "options: {fps: 100}}"))
    runtime = segstream.build_runtime(first, progress=False)
    [old] = runtime.sources
    running = threading.Thread(target=runtime.run)
    running.start()
    try:
        _published_at_least(runtime, "lab", 3, running)
        second = load_checked_config(write_config(site, "- {name: lab, type: custom, use: 'mysources:Ticker', "
                                                        "options: {fps: 150}}"))
        applied, line = Reloader(runtime, first, lambda: second)()
        assert applied and line.startswith("reloaded: restarted lab"), line
        assert old.closed.is_set()
        new = runtime.sources[-1]
        assert new is not old and new.fps == 150
        before = runtime.metrics.source("lab").published
        _published_at_least(runtime, "lab", before + 3, running)
    finally:
        runtime.stop()
        running.join(60)
    assert not running.is_alive() and new.closed.is_set()
