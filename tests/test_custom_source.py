"""Sources of one's own named in a config (``type: custom``, ``use: module:attribute``): built by
the run with their options, given the run's buffering, states and failure handling, checked by
``validate`` without being built (found probing as a plugin author: stages and sinks could be
named in YAML, a camera SDK's source only in a program of one's own)."""

from __future__ import annotations

import json
import logging
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
from tests.conftest import install_entry_point, unlocated

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


class Faulty(Pattern):
    """Frames that go wrong at frame 2 in the way ``fault`` says."""

    def __init__(self, name, fault):
        super().__init__(name)
        self.fault = fault

    def frames(self):
        for frame in super().frames():
            if frame.index == 2:
                if self.fault == "backwards":
                    frame.index = 1
                elif self.fault == "other_name":
                    frame.source = "line9"
                elif self.fault == "wall_ms":
                    frame.capture_wall *= 1000
                elif self.fault == "raise":
                    raise RuntimeError("GenTL error -1011")
            yield frame


class States(Pattern):
    """Reports its own states: as ``says`` lists them, before its frames."""

    def __init__(self, name, says=()):
        super().__init__(name)
        self.says, self.on_state = says, None

    def frames(self):
        for state in self.says:
            self.on_state(state, "sensor " + state, {})
        yield from super().frames()
        self.on_state("ended", "camera closed", {})


class ReportingTicker(Ticker):
    """A live source that reports its own states, its end in its own words."""

    on_state = None

    def frames(self):
        self.on_state("streaming", "sensor open", {})
        try:
            yield from super().frames()
        finally:  # (closed at a yield, when the run removes it: its end still said)
            self.on_state("ended", "camera closed", {})


class Eventful(Pattern):
    """Says an event of its own before its frames."""

    on_event = None

    def frames(self):
        self.on_event("sensor_warm", {"celsius": 41})
        yield from super().frames()


class Misnamed(Pattern):
    def picture(self, i):
        frame = super().picture(i)
        frame.source = "line9"
        return frame


class Timed(Pattern):
    """10 frames a second of stream time."""

    def __init__(self, name, frames=20):
        super().__init__(name, frames)


class Listed(Pattern):
    """frames() a plain iterator, not a generator (the protocol allows any iterator)."""

    def frames(self):
        return iter([self.picture(i) for i in range(self.count)])


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
    # every problem of the options at once (found probing the docs: a fix, a rerun, the next one)
    ("{name: a, type: custom, use: 'mysources:refuse', options: {gain: 3}}",
     "sources[0].options: mysources:refuse cannot be called as mysources:refuse(name, gain=...): got an unexpected "
     "keyword argument 'gain'; missing a required argument: 'serial' — give the options its factory takes"),
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


def test_validate_connect_builds_a_source_of_one_s_own_and_reads_its_first_frame(site, capsys, monkeypatch):
    from segstream.pipeline import preflight

    monkeypatch.setattr(preflight, "OWN_SOURCE_WAIT_S", 1.0)
    config = write_config(site, """
        - {name: lab, type: custom, use: 'mysources:Pattern', options: {width: 80, height: 60}}
        - {name: gige, type: custom, use: 'mysources:refuse', options: {serial: A12}}
        - {name: dark, type: custom, use: 'mysources:Ticker', options: {fps: 0.1}}
        - {name: dock, type: custom, use: 'mysources:Faulty', options: {fault: wall_ms}}
        - {name: told, type: custom, use: 'mysources:ReportingTicker', options: {fps: 50}}
        - {name: alias, type: custom, use: 'mysources:Misnamed'}
        - {name: warm, type: custom, use: 'mysources:Eventful'}
    """)
    assert main(["validate", "--connect", "--json", str(config)]) == 1
    checks = {c["what"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    assert checks["source lab"]["ok"] and checks["source lab"]["said"] == "mysources:Pattern gave a first frame, 80x60"
    assert checks["source gige"]["said"] == ("mysources:refuse('gige', ...) raised RuntimeError: no camera with "
                                             "serial A12")
    assert checks["source dark"]["said"] == ("mysources:Ticker gave no frame within 1 s — check that its camera is "
                                             "there and sends (the run waits for it as long as the source does)")
    assert checks["source dock"]["ok"]  # (its frame 2 is the faulty one: the check reads the first)
    # found probing the docs: on_state was left None (a TypeError in the source), another name passed
    assert checks["source told"]["said"] == "mysources:ReportingTicker gave a first frame, 64x48"
    assert checks["source warm"]["said"] == "mysources:Eventful gave a first frame, 64x48"  # on_event set as well
    assert checks["source alias"]["said"] == ("its first frame is of source 'line9', not 'alias' (Frame.source is "
                                              "the source's name)")
    assert not any(checks[name]["ok"] for name in ("source gige", "source dark", "source alias"))


def test_an_entry_point_names_a_source_and_segstream_run_runs_it(site, capsys):
    install_entry_point(site, "mysources", "segstream.sources", "pattern = mysources:Pattern")
    config = write_config(site, "- {name: lab, type: custom, use: pattern, options: {frames: 3}}")
    assert main(["run", str(config)]) == 0  # (the site on the module path: the fixture's)
    assert "lab 3/3" in capsys.readouterr().err and len(frames_of(site, "lab")) == 3


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


@pytest.mark.parametrize(("fault", "reason"), [
    ("backwards", "frame 1 follows frame 1: a source's frame indices increase, each above the last (Frame.index)"),
    ("other_name", "frame 2 is of source 'line9', not 'dock' (Frame.source is the source's name)"),
    ("wall_ms", "frame 2 has capture_wall "),
])
def test_a_frame_out_of_line_fails_its_source_alone_in_one_line(site, fault, reason):
    # found probing: indices going back crashed the run in the tracker (a traceback, the healthy camera with it),
    # another source's name made a stream for it, a capture_wall in milliseconds gave latencies of 1.8e12 ms
    config = write_config(site, f"""
        - {{name: dock, type: custom, use: 'mysources:Faulty', options: {{fault: {fault}}}}}
        - {{name: demo, type: synthetic, width: 64, height: 48, num_frames: 4}}
    """)
    report = run_pipeline(load_checked_config(config), progress=False)
    assert report.failed["dock"].startswith(reason), report.failed
    assert [r.index for r in frames_of(site, "dock")] == [0, 1] and len(frames_of(site, "demo")) == 4
    assert not (site / "out" / "line9.jsonl").exists()


def test_a_required_source_that_raises_ends_the_run_in_one_line(site, capsys):
    config = write_config(site, "- {name: dock, type: custom, use: 'mysources:Faulty', options: {fault: raise}, "
                                "required: true}")
    assert main(["run", str(config)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[-1] == "segstream: error: source dock failed: RuntimeError: GenTL error -1011"


def test_max_fps_thins_a_source_of_one_s_own_and_counts_what_it_left_out(site):
    config = write_config(site, "- {name: lab, type: custom, use: 'mysources:Timed', options: {frames: 20}, "
                                "max_fps: 2}")
    report = run_pipeline(load_checked_config(config), progress=False)
    seconds = [r.pts_seconds for r in frames_of(site, "lab")]
    assert seconds == pytest.approx([0.0, 0.5, 1.0, 1.5]) and report.sources["lab"].skipped == 16


def test_a_source_s_own_unknown_state_is_said_and_left_out_and_one_that_says_none_streams_at_its_first_frame(
        site, caplog):
    # found probing: "warming_up" went out as a state; one that reported none stayed in state None, without a
    # status key. An unknown one is not raised: it may be said on an SDK's own thread, which must live on
    config = write_config(site, """
        - {name: quiet, type: custom, use: 'mysources:States'}
        - {name: odd, type: custom, use: 'mysources:States', options: {says: [connecting, warming_up]}}
    """)
    with caplog.at_level(logging.WARNING, logger="segstream"):
        report = run_pipeline(load_checked_config(config), progress=False)
    assert report.failed == {} and report.published == 10
    assert [r.getMessage() for r in caplog.records if "warming_up" in r.getMessage()] == [
        "source odd reported the state 'warming_up', which is none of connecting, streaming, stalled, reconnecting, "
        "ended, failed: left out (its reason: sensor warming_up)"]
    assert [state for state, _ in states_of(site, "odd")] == ["connecting", "streaming", "ended"]
    assert [state for state, _ in states_of(site, "quiet")] == ["streaming", "ended"]
    assert states_of(site, "quiet")[-1] == ("ended", "camera closed")


def test_a_removed_source_s_own_end_is_said_to_be_its_removal(site):
    # found probing: README says a removed source's state event says ended, reason removed; one reporting its
    # own states said "camera closed" only
    config = write_config(site, """
        - {name: sdk, type: custom, use: 'mysources:ReportingTicker', options: {fps: 100}}
        - {name: other, type: custom, use: 'mysources:Ticker', options: {fps: 100}}
    """)
    runtime = segstream.build_runtime(load_checked_config(config), progress=False)
    running = threading.Thread(target=runtime.run)
    running.start()
    try:
        _published_at_least(runtime, "sdk", 3, running)
        assert runtime.remove_source("sdk", wait_s=30)
    finally:
        runtime.stop()
        running.join(60)
    assert states_of(site, "sdk")[-1] == ("ended", "removed (camera closed)")


def test_max_fps_thins_a_source_whose_frames_are_a_plain_iterator(site):
    # found in review: the cap closed what frames() gave, and a list's iterator has no close()
    config = write_config(site, "- {name: lab, type: custom, use: 'mysources:Listed', options: {frames: 10}, "
                                "max_fps: 5}")
    report = run_pipeline(load_checked_config(config), progress=False)
    assert report.failed == {} and [r.pts_seconds for r in frames_of(site, "lab")] == pytest.approx([0.0, 0.2, 0.4,
                                                                                                     0.6, 0.8])


def test_a_required_source_of_one_s_own_added_while_the_run_goes_is_one_line_too(site):
    # found in review: the one-line error keyed on the names the config had at the start, so one a reload added
    # still ended the run in a traceback
    from segstream.connectors.errors import SourceError
    from segstream.pipeline.builders import build_source

    first = load_checked_config(write_config(site, "- {name: lab, type: custom, use: 'mysources:Ticker'}"))
    runtime = segstream.build_runtime(first, progress=False)
    added = load_checked_config(write_config(site, "- {name: dock, type: custom, use: 'mysources:Faulty', "
                                                   "options: {fault: raise}}"))
    outcome: dict = {}
    running = threading.Thread(target=lambda: outcome.update(error=_raised(runtime.run)))
    running.start()
    try:
        _published_at_least(runtime, "lab", 2, running)
        runtime.add_source(build_source(added.sources[0]), required=True)
    finally:
        running.join(60)
        runtime.stop()
    assert isinstance(outcome["error"], SourceError), outcome
    assert str(outcome["error"]) == "source dock failed: RuntimeError: GenTL error -1011"


def _raised(call) -> BaseException | None:
    try:
        call()
    except BaseException as error:  # noqa: BLE001 (what the run raised is the test's subject)
        return error
    return None


def test_a_shipped_image_folder_keeps_pictures_timed_by_a_camera_whose_clock_was_never_set(site):
    # found in review: the capture time check, meant for sources of one's own, failed a folder of 1970 names
    from PIL import Image

    folder = site / "stills"
    folder.mkdir()
    for second in (5, 6):
        Image.new("RGB", (64, 48), (40 * second, 0, 0)).save(folder / f"cam_19700101_0000{second:02d}.jpg")
    config = write_config(site, "- {name: yard, type: images, path: stills, timestamps: name, "
                                "timestamp_format: 'cam_%Y%m%d_%H%M%S'}")
    report = run_pipeline(load_checked_config(config), progress=False)
    assert report.failed == {} and [r.capture_ts for r in frames_of(site, "yard")] == [5.0, 6.0]
