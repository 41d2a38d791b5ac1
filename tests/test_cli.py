"""The command line itself: how its options are read and how a mistake in them is said."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segstream.pipeline.cli import main

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


@pytest.mark.parametrize("argv", [
    ["--log-format", "json", "run", "x.yaml", "--bogus"],
    ["--log-format=json", "nosuchcmd"],
    ["run", "x.yaml", "--log-format", "json", "--max-frames", "many"],
    ["--log-format", "json"],
])
def test_a_usage_error_under_json_logs_is_one_json_line(capsys, argv):
    # found probing as a CLI reviewer: argparse's usage and error, several plain lines, broke a log shipper's JSON
    assert main(argv) == 2
    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    record = json.loads(line)
    assert record["level"] == "ERROR" and record["logger"] == "segstream.cli" and "time" in record
    assert "--help` says how it is used" in record["message"] and captured.out == ""


def test_a_usage_error_follows_json_logs_asked_for_in_the_environment(capsys, monkeypatch):
    monkeypatch.setenv("SEGSTREAM_LOG_FORMAT", "JSON")
    assert main(["run", "x.yaml", "--bogus"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "segstream run: unrecognized arguments: --bogus" in json.loads(line)["message"]
    # the command line's format wins over the environment's
    assert main(["--log-format", "text", "run", "x.yaml", "--bogus"]) == 2
    assert capsys.readouterr().err.startswith("usage: segstream run")


def test_an_unrecognized_argument_is_said_with_the_command_s_usage(capsys):
    # found probing as a CLI reviewer: `segstream run x --bogus` printed segstream's usage, not run's
    assert main(["run", "x.yaml", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: segstream run ") and "segstream run: error: unrecognized arguments: --bogus" in err


def test_a_usage_error_says_the_option_meant_and_how_to_name_a_file_that_starts_with_a_dash(capsys, tmp_path,
                                                                                              monkeypatch):
    # found probing: `run CONFIG --max 3` said only "unrecognized arguments", and `batch -dash.mp4`
    # that an INPUT was required
    assert main(["run", "x.yaml", "--max", "3"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("unrecognized arguments: --max 3 (did you mean --max-frames?)")
    assert main(["batch", "x.mp4", "--conf", "a.yaml"]) == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith("(did you mean --config?)")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-dash.mp4").write_bytes(b"")
    assert main(["batch", "-dash.mp4", "--out", "out"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "segstream batch: error: the following arguments are required: INPUT ('-dash.mp4' is a file: write "
        "./-dash.mp4, or put -- before it, for it not to be read as an option)")


def test_an_abbreviated_option_is_refused(capsys):
    # found probing as a CLI reviewer: `demo --max 2` ran as --max-frames 2, and would break once another
    # --max-... option came
    assert main(["demo", "--max", "2"]) == 2
    assert "unrecognized arguments: --max 2" in capsys.readouterr().err
    assert main(["validate", str(DEMO), "--conn"]) == 2
    assert "unrecognized arguments: --conn" in capsys.readouterr().err


def test_the_log_level_and_format_are_taken_in_any_case(capsys, monkeypatch):
    # found probing as a CLI reviewer: --log-level WARNING was refused, SEGSTREAM_LOG_LEVEL=WARNING taken
    assert main(["--log-level", "WARNING", "--log-format", "Text", "validate", str(DEMO)]) == 0
    monkeypatch.setenv("SEGSTREAM_LOG_LEVEL", "WARNING")
    assert main(["validate", str(DEMO)]) == 0
    assert capsys.readouterr().out.startswith("ok: ")


def test_a_bad_log_level_in_the_environment_under_json_logs_is_said_in_json(capsys, monkeypatch):
    monkeypatch.setenv("SEGSTREAM_LOG_LEVEL", "verbose")
    assert main(["--log-format", "json", "validate", str(DEMO)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert json.loads(line)["message"] == "SEGSTREAM_LOG_LEVEL='verbose' is none of debug, info, warning, error"


@pytest.mark.parametrize("name", ["/dev/stdin", "-"])
def test_a_config_from_standard_input_is_read_once_its_paths_from_the_working_directory(tmp_path, name):
    # found probing as a CLI reviewer: `validate /dev/stdin` said the config is empty (the file was read twice)
    import os
    import subprocess
    import sys

    from tests.conftest import encode_clip

    encode_clip(tmp_path / "clip.mp4", frames=2)
    config = "sources:\n  - {name: cam, type: file, path: clip.mp4}\nsinks: {redis: {enabled: false}}\n"
    checked = subprocess.run([sys.executable, "-m", "segstream", "validate", name, "--print"], input=config, text=True,
                             capture_output=True, cwd=tmp_path, timeout=120,
                             env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert checked.returncode == 0, checked.stderr
    assert f"path: {tmp_path / 'clip.mp4'}" in checked.stdout


@pytest.mark.parametrize(("argv", "said"), [
    # found probing as a CLI reviewer: a URL of another scheme was exit 1, as if Redis could not be reached
    (["tail", "segstream:cam0:frames", "--url", "http://x"], "--url: 'http://x' is not a Redis URL"),
    (["render", "s", "--video", "v.mp4", "--out", "r.mp4", "--url", "http://u:pw@x"],
     "--url: 'http://u:***@x' is not a Redis URL"),
    # found probing bad input: exit 1, in redis-py's words
    (["tail", "segstream:cam0:frames", "--url", ""], "--url is empty — give the Redis to read"),
    # it wrote a file named '-'
    (["render", "s", "--video", "v.mp4", "--out", "-"], "--out -: an MP4 cannot go to standard output"),
    # the local engine ignored it
    (["batch", "v.mp4", "--address", "auto"], "--address auto: the Ray cluster to join, for --engine ray"),
])
def test_an_option_value_that_cannot_be_is_one_line_and_exit_2(capsys, argv, said):
    assert main(argv) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"segstream: error: {said}"), line


def test_render_refuses_to_write_over_the_video_it_reads(capsys, tmp_path):
    # found probing bad input: `render S --video v.mp4 --out v.mp4` replaced the video, exit 0
    video = tmp_path / "v.mp4"
    video.write_bytes(b"the recording")
    assert main(["render", "s", "--video", str(video), "--out", str(tmp_path / "." / "v.mp4")]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"segstream: error: --out '{tmp_path / '.' / 'v.mp4'}' is the video it reads (--video)")
    assert video.read_bytes() == b"the recording"


def test_help_ends_with_the_exit_codes_and_every_variable_segstream_reads(capsys):
    # found probing as a CLI reviewer: --help named neither, and several options had no help or default
    import re

    assert main(["--help"]) == 0
    epilog = capsys.readouterr().out.partition("exit codes:")[2]
    for code in ("0", "1", "2", "124", "128+N"):
        assert re.search(rf"^  {re.escape(code)} ", epilog, re.MULTILINE), code
    root = Path(__file__).resolve().parents[1]
    read = {name for folder in ("pipeline", "connectors") for file in (root / folder).glob("*.py")
            for name in re.findall(r'"((?:SEGSTREAM|REDIS)_[A-Z_]+)"', file.read_text())}
    assert len(read) >= 7 and all(name in epilog for name in read), read


@pytest.mark.parametrize(("command", "option", "said"), [
    ("run", "CONFIG", "the pipeline's YAML config file"),
    ("bench", "CONFIG", "the pipeline's YAML config to measure"),
    ("bench", "--sources", "(default 1"),
    ("bench", "--naive-frames", "(default 100)"),
    ("batch", "--concurrency", "4 unless set"),
    ("evaluate", "--precision", "(default auto"),
    ("evaluate", "--postprocess", "(default fast)"),
    ("reload", "--timeout", "(default 90:"),
])
def test_each_option_says_what_it_is_and_its_default(capsys, command, option, said):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    listed = out[out.index("\n  " + option, out.index("\n\n")) + 3:]  # its entry, past the usage
    entry = listed[:next((i for i in range(len(listed)) if listed.startswith("\n  -", i)), len(listed))]
    assert said in " ".join(entry.split()), f"{command} {option}: {entry}"  # argparse's wrapping undone


def test_reload_waits_as_long_as_its_help_says_longer_than_a_removed_camera_drains():
    from segstream.pipeline.cli import RELOAD_WAIT_S
    from segstream.pipeline.reload import REMOVE_WAIT_S

    assert RELOAD_WAIT_S == 90 and RELOAD_WAIT_S > REMOVE_WAIT_S


def test_a_failed_source_s_exit_line_says_the_store_s_loss_too(capsys, monkeypatch):
    """Found probing a port's cameras: a run with a failed camera and a Redis that came back without
    its entries ended on the camera's line alone; the loss, said where no source failed, went unsaid."""
    from segstream.pipeline import cli
    from segstream.pipeline.runtime import RunReport, SourceReport

    config = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    report = RunReport({"quay5": SourceReport(decoded=9, published=9),
                        "quay6": SourceReport(state="failed", reason="gave up after 3 reconnect attempts")},
                       3, 9, 40.0, False, 100.0, 200.0, 300.0,
                       sinks={"redis": {"data_losses": 1, "entries_lost": {"frames": 166, "events": 4}}})
    monkeypatch.setattr(cli, "run_pipeline", lambda cfg, **options: report)
    assert main(["run", str(config)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "segstream: error: source quay6 failed: gave up after 3 reconnect attempts; the output is incomplete: entries "
        "this run had written were lost from the store (redis 166 frames and 4 events in 1 loss: restarted without "
        "persistence, failed over to a replica that lacked them, flushed, evicted or deleted); the warnings above "
        "name the streams")
