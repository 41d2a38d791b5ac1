"""The ``segstream`` command: run, batch, render, validate, schema, tail, evaluate, demo.

User errors (``SegstreamError``) end as one line ``segstream: error: ...`` and the error's exit
code; Ctrl-C, SIGTERM or SIGHUP drains the pipeline and exits 0 (from any state once the command's
modules have loaded; while they load, it ends at once with 128 + its number), a second one aborts with 128 + its number (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP); a run with no
terminal and reloading on (a service) takes SIGHUP for a reload. A run in which a source failed
exits 1 and says which and why.
``--log-format json`` (or ``SEGSTREAM_LOG_FORMAT=json``) makes every line a JSON object, a usage
mistake's too (exit 2).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # python -m: the module imported by entry.main runs, not a second copy of this one
    from segstream.pipeline.entry import main as _console_command

    sys.exit(_console_command())

import argparse
import atexit
import contextlib
import errno
import json
import logging
import math
import os
import queue
import resource
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, overload

import yaml

from segstream import __version__
from segstream.connectors.errors import (
    THREAD_LIMIT_HINT,
    ConfigError,
    ResourceLimit,
    SegstreamError,
    SinkError,
    SourceError,
    thread_start_failed,
)
from segstream.connectors.redis_connection import RedisUnreachable, SentinelAuth, TlsFiles
from segstream.connectors.terminal import printable
from segstream.pipeline.config import (
    LONGEST_S,
    BatchPipelineConfig,
    PipelineConfig,
    json_schema,
    load_checked_config,
    read_yaml,
)
from segstream.connectors.threads import NamedThread
from segstream.connectors.text_files import streamed
from segstream.pipeline import entry
from segstream.pipeline.entry import abort_if_loading
from segstream.pipeline.train_cli import DATA_LAYOUT, add_data_arguments
from segstream.pipeline.logs import (
    LOG_FORMATS,
    LOG_LEVELS,
    LogLines,
    configure_logging,
    journal_prefix,
    json_logging,
    new_run_id,
    set_run_id,
    signal_line,
    write_line,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import TextIO

    from segstream.connectors.sink import Sink
    from segstream.connectors.source import VideoSource
    from segstream.models.segmenter import FamilyAdapter
    from segstream.pipeline.metrics import RunMetrics
    from segstream.pipeline.runtime import RunReport, Runtime, StageFactory

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
# Frames of this size (height, width) warm the model up before the sources start: the network's
# input size does not depend on the frame's, so any size compiles what the run will use.
WARM_UP_FRAME = (480, 640)
# How long `reload` waits for the run's answer: reload.REMOVE_WAIT_S (60 s, removed cameras draining)
# and 30 s for the rest (a constant here: importing reload loads torch, and --help says it)
RELOAD_WAIT_S = 90.0
log = logging.getLogger("segstream.cli")


def main(argv: list[str] | None = None) -> int:
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        _Parser.json_errors = _json_logs_asked(argv)
        _Parser.argv = argv
        try:
            parser = _parser()
            args, unknown = parser.parse_known_args(argv)
            if unknown:  # said by the command's parser, with its usage (the top-level one's said segstream's)
                getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
        except SystemExit as exit:
            if exit.code == 2 and _nagios_asked(argv):  # a monitoring system reads its arguments' mistake as UNKNOWN
                from segstream.connectors.redis_reader import nagios_unknown

                with contextlib.suppress(OSError):
                    return nagios_unknown("the check's arguments are wrong (its standard error says how)")
                return 3
            return int(exit.code or 0)
        try:
            configure_logging(getattr(args, "log_format", None), getattr(args, "log_level", None))
        except ConfigError:
            if _Parser.json_errors:  # a bad SEGSTREAM_LOG_LEVEL under JSON logs: its line JSON too
                configure_logging("json", "info")
            raise
        return args.command(args)
    except RuntimeError as error:
        if not thread_start_failed(error):  # else a bug: its traceback
            raise
        return main_error(ResourceLimit(f"the system refused to start a thread ({THREAD_LIMIT_HINT})"))
    except SegstreamError as error:
        return main_error(error)
    except entry.StreamClosed as error:
        code = main_error(ConfigError(str(error)))
        return 3 if _nagios_asked(argv) else code
    except BrokenPipeError:  # what read our output went away (`| head -1`): quiet, as other tools are
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor a word at exit's flush
        return 128 + signal.SIGPIPE
    except OSError as error:
        if (limit := os_limit(error)) is None:  # else a bug: its traceback
            raise
        return main_error(limit)
    except KeyboardInterrupt:
        write_line(signal_line("aborted", "ERROR"))
        code = 128 + (_DrainOnSignal.aborted_by or entry.aborted_by or signal.SIGINT)  # 130 Ctrl-C, 143 SIGTERM
        embedded = sys.modules.get("segstream.connectors.embedded_redis")  # loaded: maybe one runs
        if embedded is not None:
            embedded.close_all()  # a daemonised redis-server would outlive us
        return code  # the console command leaves past stuck threads (entry.main); a program goes on


def _nagios_asked(argv: list[str]) -> bool:
    """Whether the command is ``status --nagios``, whose mistakes exit 3 (a plugin's UNKNOWN)."""
    return "--nagios" in argv and "status" in argv


def leave_past_stuck_threads(code: int) -> None:
    """Exit now, after the exit handlers, while a pipeline thread still runs: it may be inside
    torch or FFmpeg (a camera's open that ignores close()), and finalising the interpreter under
    it crashes (SIGSEGV, seen with a camera still opening at a stop)."""
    if _pipeline_threads_alive():
        atexit._run_exitfuncs()  # FFmpeg relays stopped, log handlers flushed
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def os_limit(error: OSError) -> ResourceLimit | None:
    """The user's line for an ``OSError`` that is a limit of this process or machine, not a bug:
    no file descriptor left, no usable temporary directory. None for any other."""
    if error.errno == errno.EMFILE:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return ResourceLimit(f"too many open files: this process may open {soft} (`ulimit -n`) — raise `ulimit -n` "
                             "(or the container's nofile limit), or run fewer sources")
    if error.errno == errno.ENFILE:
        return ResourceLimit("too many open files on this machine (its file table is full: fs.file-max) — close "
                             "other programs' files, or raise fs.file-max")
    if error.errno in (errno.ENOSPC, errno.EDQUOT):  # writing the output (a table, JSON) to a full disk
        where = f"'{error.filename}'" if error.filename else "the output"
        return ResourceLimit(f"cannot write {where}: {error.strerror} — free space, or write it elsewhere")
    if error.errno == errno.ENOENT and str(error.strerror).startswith("No usable temporary directory"):
        return ResourceLimit(f"{error.strerror}: each is full, missing or not writable — free space in /tmp or "
                             "set TMPDIR to a writable directory")
    return None


def main_error(error: SegstreamError, about: str = "") -> int:
    """Say a user error as the command's last line(s), each after ``about`` (a config of several
    given); its exit status."""
    from segstream.connectors.redaction import scrub  # a config's secrets, wherever a value landed

    for line in scrub(str(error)).splitlines() or [type(error).__name__]:
        if json_logging():
            log.error(about + line)
        else:
            print(f"{journal_prefix(logging.ERROR)}segstream: error: {printable(about + line)}", file=sys.stderr)
    return error.exit_code


def _pipeline_threads_alive() -> bool:
    # Imports nothing: an interrupt may have cut an import short (torch's), and importing it again
    # from here crashes the interpreter. No runtime module loaded, no pipeline thread.
    runtime = sys.modules.get("segstream.pipeline.runtime")
    prefix = getattr(runtime, "THREAD_PREFIX", None)
    return prefix is not None and any(t.name.startswith(prefix) and t.is_alive() for t in threading.enumerate())


def _writable(text: str, stream) -> bool:
    """Whether ``stream``'s encoding writes ``text`` as it is."""
    try:
        text.encode(getattr(stream, "encoding", None) or "utf-8")
        return True
    except (UnicodeEncodeError, LookupError):
        return False


class _Parser(argparse.ArgumentParser):
    """argparse's parser, its commands' too, without abbreviated options (a script's ``--max``
    would break the day another ``--max-...`` came), and whose usage errors are one JSON line
    under JSON logs, as every other line then is."""

    json_errors = False  # JSON logs asked for (main sets it before parsing: no logging yet)
    argv: list[str] | None = None  # the command line parsed (main sets it), for ``_hint``

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def _print_message(self, message: str, file=None) -> None:
        """Help, version and usage, written as any output is: argparse's own passes over a failed
        write (found probing: ``--version >&-`` exited 0 with its line lost; to /dev/full too)."""
        if message:
            (file or sys.stderr).write(message)

    def error(self, message: str):
        message += self._hint(message)
        if not _Parser.json_errors:
            super().error(message)
        line = f"{self.prog}: {message} — `{self.prog} --help` says how it is used"
        sys.stderr.write(signal_line(line, "ERROR", as_json=True).decode())
        self.exit(2)

    def _hint(self, message: str) -> str:
        """What the mistake likely was: an option's name mistyped or cut short (``--max`` for
        ``--max-frames``), a file whose name starts with a dash, taken for an option (found probing
        an archive: ``batch -dash.mp4`` said an INPUT was required)."""
        import difflib

        argv = _Parser.argv or []
        given = [t for t in argv[: argv.index("--") if "--" in argv else len(argv)] if t.startswith("-") and t != "-"]
        files = [t for t in given if os.path.exists(t)]
        if files:
            return (f" ('{files[0]}' is a file: write ./{files[0]}, or put -- before it, for it not to be read as an "
                    f"option)")
        if message.startswith("unrecognized arguments:"):
            options = [o for o in self._option_string_actions if o.startswith("--")]
            for token in (t.split("=")[0] for t in message.split(":", 1)[1].split() if t.startswith("--")):
                close = [o for o in options if o.startswith(token)] or difflib.get_close_matches(token, options, n=1)
                if close:
                    return f" (did you mean {' or '.join(close[:2])}?)"
        return ""


_json_logs_asked = entry.json_logs_asked  # (one rule: the stop signal's early lines follow it too)


def _parser() -> argparse.ArgumentParser:
    def logging_options(p: argparse.ArgumentParser, default) -> None:
        p.add_argument("--log-format", type=str.lower, choices=LOG_FORMATS, default=default,
                       help="text lines for people, or one JSON object per line for containers "
                            "(default: $SEGSTREAM_LOG_FORMAT, else text)")
        p.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default=default,
                       help="least severe level logged, in any case (default: $SEGSTREAM_LOG_LEVEL, else info)")

    parser = _Parser(
        prog="segstream", description="Streaming video segmentation with EoMT, published to Redis Streams.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"segstream {__version__}")
    logging_options(parser, None)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def overrides(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config value, e.g. --set engine.batch_size=8 --set sources.0.path=x.mp4")

    run = commands.add_parser("run", help="run the pipeline described by a YAML config")
    run.add_argument("config", type=Path, metavar="CONFIG",
                     help="the pipeline's YAML config file (- reads it from standard input; its relative paths are "
                          "then relative to the working directory)")
    overrides(run)
    run.add_argument("--max-frames", type=int, metavar="N", help="stop each source after N frames")
    run.set_defaults(command=_run)

    demo = commands.add_parser("demo", help=f"run {DEMO_CONFIG.relative_to(DEMO_CONFIG.parents[1])}")
    overrides(demo)
    demo.add_argument("--max-frames", type=int, metavar="N", help="stop each source after N frames")
    demo.set_defaults(command=_run, config=DEMO_CONFIG)

    reload = commands.add_parser(
        "reload", help="apply a running pipeline's config file again: its sources added, removed or restarted, its "
                       "filters (the run's config needs ops.reload: true)")
    reload.add_argument("config", type=Path, metavar="CONFIG",
                        help="the config file the run was started with (the run reads and checks it, with its own "
                             "--set overrides and environment; here only its ops.http is read)")
    reload.add_argument("--ops", metavar="HOST:PORT",
                        help="where the run serves its endpoints (default: the config's ops.http; give it when that "
                             "key changed in the file since the run started)")
    reload.add_argument("--timeout", type=_positive_seconds, default=None, metavar="S",
                        help=f"give up waiting for the run's answer after S seconds (default {RELOAD_WAIT_S:g}: "
                             "removed cameras may take that long to drain), exit 1; the reload goes on in the run, "
                             "whose log says how it ended")
    reload.set_defaults(command=_reload)

    validate = commands.add_parser("validate", help="check configs without running them")
    validate.add_argument("config", type=Path, metavar="CONFIG", nargs="+",
                          help="one config file or several (each is said; the exit status is the worst); - reads "
                               "one from standard input")
    overrides(validate)
    validate.add_argument("--connect", action="store_true",
                          help="also check what the run needs at its start, without running the model: the model's "
                               "weights obtainable, Redis reachable and writable, each source's first frame, the "
                               "ops port free (one line each; exit 1 if any fails)")
    validate.add_argument("--json", action="store_true",
                          help="print one JSON object (a line per config) instead of lines: ok, the errors, with "
                               "--connect the checks")
    validate.add_argument("--print", action="store_true",
                          help="print the config as the run takes it: defaults filled in, variables and --set "
                               "applied, secrets as *** (YAML on stdout; with --json its 'effective' key)")
    validate.add_argument("--no-files", action="store_true",
                          help="do not look at the files the config names (videos, image folders, checkpoint, "
                               "labels, TLS files, ${file:} secrets): for a config checked away from the host it runs "
                               "on (a checkpoint's own preset is then not read from it: name model.preset)")
    validate.set_defaults(command=_validate)

    schema = commands.add_parser("schema", help="print the JSON Schema of the config file")
    schema.set_defaults(command=_schema)

    tail = commands.add_parser("tail", help="print the entries of segstream Redis streams")
    tail.add_argument("stream", metavar="STREAM", nargs="+",
                      help="stream name, e.g. segstream:cam0:frames; several, or a glob ('segstream:*:frames') "
                           "whose new streams --follow finds too")
    redis_options(tail)
    tail.add_argument("--count", type=int, default=10, metavar="N", help="newest entries to print (default %(default)s)")
    tail.add_argument("--follow", action="store_true", help="keep printing new entries as they arrive")
    tail.add_argument("--at", metavar="TIME",
                      help="print the --count entries up to the one captured nearest TIME: ISO 8601 with its zone "
                           "(2026-12-03T07:10:00Z, ...+01:00) or seconds since the epoch")
    tail.add_argument("--events", action="store_true",
                      help="also print the source's events stream (track starts and ends, source states)")
    tail.add_argument("--json", action="store_true",
                      help="print one JSON object per entry (JSON Lines) instead of a line for people: a frame's "
                           "metadata and segments without masks, an event's kind, time and data")
    tail.add_argument("--idle-timeout", type=_positive_seconds, default=None, metavar="S",
                      help="with --follow: give up after S seconds without a new entry (exit 124)")
    tail.add_argument("--until-ended", action="store_true",
                      help="with --follow: exit once the source of every stream followed has ended, as its events "
                           "stream says (its state ended: exit 0; failed: exit 1), at once if it already has")
    tail.set_defaults(command=_tail)

    status = commands.add_parser(
        "status", help="say what each source's run says of it now (its status key in Redis); exit 1 unless "
                       "every source shown is streaming")
    status.add_argument("source", metavar="SOURCE", nargs="*", default=["*"],
                        help="source names, or globs of them (default: every source with a status key)")
    redis_options(status)
    status.add_argument("--key", default="segstream:{source}:status", metavar="PATTERN",
                        help="the pipeline's sinks.redis.status_key (default %(default)s)")
    status.add_argument("--json", action="store_true",
                        help="print one JSON object per source (its status key's fields; state null without one)")
    status.add_argument("--nagios", action="store_true",
                        help="a monitoring plugin's output and exit status (Nagios, Icinga, Zabbix, Sensu): "
                             "'SEGSTREAM OK|WARNING|CRITICAL|UNKNOWN - ...' with performance data, then a line a "
                             "source; 0 every source streams, 1 one is being retried (connecting, reconnecting, "
                             "stalled), 2 one failed, ended or has no key, 3 the check itself failed (Redis "
                             "unreachable, no key matches)")
    status.set_defaults(command=_status)

    bench = commands.add_parser(
        "bench", help="measure the network alone, the pipeline and a naive loop on a config, in one run"
    )
    bench.add_argument("config", type=Path, metavar="CONFIG",
                       help="the pipeline's YAML config to measure (its model, engine, sinks and first source)")
    overrides(bench)
    bench.add_argument("--sources", type=int, default=1, metavar="N",
                       help="run N copies of the first source (default %(default)s: the config's sources)")
    bench.add_argument("--frames", type=int, default=None, metavar="N",
                       help="frames per source (files loop to last that long); default: each source once")
    bench.add_argument("--naive-frames", type=int, default=100, metavar="N",
                       help="frames of the naive loop (default %(default)s)")
    bench.add_argument("--network-seconds", type=float, default=3.0, metavar="S",
                       help="how long to time the network alone (default %(default)s)")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    bench.set_defaults(command=_bench)

    evaluate = commands.add_parser("evaluate", help="measure segmentation quality on synthetic scenes or your own pictures")
    # None: the defaults (0 1 2; 640 480), so that --data and --clips can refuse them when given
    evaluate.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                          help="the synthetic scenes (default 0 1 2)")
    evaluate.add_argument("--frames", type=_at_least_one, default=None, metavar="N",
                          help="frames per seed (default 50), or with --clips the first N of each clip (default all)")
    evaluate.add_argument("--size", type=_scene_side, nargs=2, default=None, metavar=("WIDTH", "HEIGHT"),
                          help="the synthetic scenes' frame size (default 640 480)")
    evaluate.add_argument("--checkpoint", default=None, help="local path or hf://org/name; default: the preset's weights")
    evaluate.add_argument("--preset", default=None, help="a model trained on synthetic scenes (default: the shipped one)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default %(default)s)")
    evaluate.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                          help="what the model computes in, as model.precision (default %(default)s: bf16 where the "
                               "hardware computes it natively, else fp16 on a GPU, fp32 on the CPU)")
    evaluate.add_argument("--postprocess", default="fast", choices=["fast", "exact"],
                          help="how masks are made, as model.postprocess (default %(default)s)")
    evaluate.add_argument("--clips", type=Path, nargs="+", default=None, metavar="VIDEO",
                          help="evaluate on videos instead of rendering --seeds: encoded synthetic clips (ground truth "
                               "in <stem>_truth.npz beside each), or with --tracking any video whose tracks' ground "
                               "truth is MOTS text in <stem>_truth.txt beside it")
    evaluate.add_argument("--truth-first-frame", type=int, choices=[0, 1], default=None, metavar="N",
                          help="with --tracking --clips: the number a MOTS file gives the video's first frame (default "
                               "0, KITTI MOTS's; MOTSChallenge's files count from 1)")
    add_data_arguments(evaluate, "--data", f"evaluate on pictures of your own: {DATA_LAYOUT}")
    evaluate.add_argument("--labels", type=Path, default=None, metavar="FILE",
                          help="the model's label-set file (model.labels), e.g. the one its training wrote")
    evaluate.add_argument("--tracking", action="store_true",
                          help="IDF1, HOTA and ID switches of the tracker (noisy ground truth, the model's "
                               "segments, and an oracle on them) instead of PQ; needs TrackEval: pip install -e \".[eval]\" in the checkout")
    evaluate.add_argument("--no-model", action="store_true",
                          help="with --tracking: only the tracker on noisy ground truth (no model run)")
    evaluate.add_argument("--config", type=Path, default=None, metavar="CONFIG",
                          help="with --tracking: the tracker's settings from this config's tracking section")
    evaluate.add_argument("--set", dest="overrides", action="append", default=[], metavar="tracking.KEY=VALUE",
                          help="with --tracking: override one tracker setting, e.g. --set tracking.max_lost=60")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    evaluate.set_defaults(command=_evaluate)

    batch = commands.add_parser(
        "batch", help="segment every frame of video files (an archive) into JSONL, COCO panoptic, overlays or Redis",
        description="Process every frame of each video; a re-run skips the videos the manifest lists as done.",
    )
    batch.add_argument("inputs", nargs="+", metavar="INPUT",
                       help="video files, http(s) URLs of video files (presigned ones too: known without their query, "
                            "which is never written), folders (searched recursively), quoted globs ('archive/**/*.mp4'), "
                            "or list files (.txt/.list/.lst, or @FILE: one path or URL per line, a path relative to the "
                            "list file, # comments; @- reads the list from standard input, its paths relative to the "
                            "working directory)")
    batch.add_argument("--config", type=Path, default=None, metavar="FILE",
                       help="pipeline config for the model, engine, sinks and the batch section (sources are not used)")
    overrides(batch)
    batch.add_argument("--out", type=Path, default=None, metavar="DIR", help="output folder (default: batch.output)")
    batch.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="local: this machine; ray: a Ray cluster, local by default (pip install -e \".[ray]\" in the checkout)")
    batch.add_argument("--address", default=None, metavar="ADDR",
                       help="Ray cluster address: auto (the cluster this machine joined), head:6379, or "
                            "ray://head:10001 (needs pip install 'ray[client]'); with --engine ray only (default: "
                            "batch.ray.address, else a local Ray)")
    batch.add_argument("--concurrency", type=int, default=None, metavar="N",
                       help="videos decoded at once, local engine (default: the config's batch.concurrency, 4 unless "
                            "set)")
    batch.add_argument("--retry-failed", action="store_true",
                       help="process videos that failed in an earlier run again (default: skip them)")
    batch.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress bars (default: when stderr is a terminal)")
    batch.add_argument("--json", action="store_true",
                       help="instead of the table, one JSON object per video this run touched and one of the totals "
                            "(JSON Lines, on stdout)")
    batch.set_defaults(command=_batch)

    render = commands.add_parser("render", help="draw a recorded Redis stream over its source video, as an MP4")
    render.add_argument("stream", metavar="STREAM", help="stream name, e.g. segstream:cam0:frames")
    render.add_argument("--video", type=Path, required=True, metavar="FILE", help="the video the stream was made from")
    render.add_argument("--out", type=Path, required=True, metavar="OUT.mp4", help="where to write the overlay video")
    redis_options(render)
    render.add_argument("--opacity", type=float, default=0.45, help="mask opacity, 0 to 1 (default %(default)s)")
    render.add_argument("--run", metavar="RUN", help="the run to draw when the stream holds several (a restarted "
                        "pipeline): its run_id, or a number, 1 the oldest, -1 the latest (default: the latest)")
    render.add_argument("--level", type=int, metavar="K", help="draw level K of each entry's segment hierarchy "
                        "(0 the finest; SeNaTra models write them) instead of its segments")
    render.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="a progress bar (default: when stderr is a terminal)")
    render.set_defaults(command=_render)

    mots = commands.add_parser("mots", help="write the tracked things of a JSONL file of entries as MOTS text")
    mots.add_argument("jsonl", type=Path, metavar="FILE.jsonl",
                      help="a files sink's <source>.jsonl or a batch's <video>/frames.jsonl")
    mots.add_argument("--out", type=Path, required=True, metavar="OUT.txt",
                      help="where to write the MOTS lines (TrackEval's MOTS loaders read them; - for standard output)")
    mots.add_argument("--first-frame", type=int, choices=[0, 1], default=0, metavar="N",
                      help="the number of the video's first frame (default %(default)s, KITTI MOTS's; MOTSChallenge "
                           "counts from 1)")
    mots.add_argument("--class-id", type=int, default=None, metavar="N",
                      help="write every mask with class id N instead of the model's class (MOTSChallenge's loader "
                           "scores class 2, pedestrians, alone; 10 is MOTS's ignore region)")
    mots.add_argument("--run", metavar="RUN", help="the run to write when the file holds several (a files sink "
                      "appends each run's): its run_id, or a number, 1 the oldest, -1 the latest (default: the latest)")
    mots.set_defaults(command=_mots)

    for command in commands.choices.values():  # after the command too; left out there, the top-level value stands
        logging_options(command, argparse.SUPPRESS)
        command.set_defaults(parser=command)  # whose usage an unrecognized argument is said with
    parser.set_defaults(parser=parser)
    return parser


# ``segstream --help``'s end: what a script reads of it, as README's tables say
EPILOG = """exit codes:
  0        done (a run a first signal stopped, drained, too)
  1        the work failed or is incomplete (a source failed, a sink lost output, a video of a batch
           failed, Redis unreachable or refusing, a validate --connect check or a reload failed)
  2        nothing was done: a mistake in what was asked (a config error, a bad option value,
           a file that does not exist)
  3        status --nagios: the check could not tell (a monitoring plugin's UNKNOWN; its 1 is WARNING,
           2 CRITICAL)
  124      a time limit given ran out (tail --follow --idle-timeout)
  128+N    stopped by signal N before the work was done (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP;
           141: the reader of its output went away)

environment:
  SEGSTREAM_LOG_FORMAT     text or json, as --log-format
  SEGSTREAM_LOG_LEVEL      debug, info, warning or error, as --log-level
  SEGSTREAM_REDIS_URL      tail, render and status: the Redis to read, as --url
  REDIS_USERNAME, REDIS_PASSWORD
                           tail, render and status: the Redis login, as --username and --password
  REDIS_SENTINEL_USERNAME, REDIS_SENTINEL_PASSWORD
                           tail, render and status: the sentinels' own login
  and any ${VAR} a config names (${VAR:-default} for one that may be unset)
"""


def _whole_number(least: int, unit: str = "") -> Callable[[str], int]:
    """argparse type: a whole number of ``least`` or more (``unit``: what it counts, for messages)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number{' of ' + unit if unit else ''}, "
                                             f"got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be at least {least}{' ' + unit if unit else ''}, got {value}")
        return value

    return parse


_at_least_one = _whole_number(1)
_scene_side = _whole_number(16, "pixels")  # a synthetic scene's width or height


def _positive_seconds(text: str) -> float:
    """argparse type: a number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text}")
    if value > LONGEST_S:  # a socket's timeout of 1e10 s raised OverflowError (found reviewing)
        raise argparse.ArgumentTypeError(f"{text} s is longer than any wait segstream can keep (1e+09 s, about 31 "
                                         "years)")
    return value


def redis_options(command: argparse.ArgumentParser) -> None:
    """How a command that reads Redis connects: URL, credentials and TLS, as the sink's config has them."""
    command.add_argument("--url", default=os.environ.get("SEGSTREAM_REDIS_URL") or "redis://localhost:6379/0",
                         help="Redis URL: redis://, rediss:// (TLS), unix://, or redis+sentinel://host1:26379,"
                              "host2:26379/<master-name>[/db] (rediss+sentinel:// for TLS) (default: "
                              "$SEGSTREAM_REDIS_URL, else redis://localhost:6379/0)")
    command.add_argument("--username", default=os.environ.get("REDIS_USERNAME") or None,
                         help="Redis ACL user (default: $REDIS_USERNAME)")
    command.add_argument("--password", default=os.environ.get("REDIS_PASSWORD") or None,
                         help="Redis password (default: $REDIS_PASSWORD)")
    command.add_argument("--sentinel-username", default=os.environ.get("REDIS_SENTINEL_USERNAME") or None,
                         help="with redis+sentinel://: the sentinels' ACL user (default: $REDIS_SENTINEL_USERNAME)")
    command.add_argument("--sentinel-password", default=os.environ.get("REDIS_SENTINEL_PASSWORD") or None,
                         help="with redis+sentinel://: the sentinels' own password, not the master's (default: "
                              "$REDIS_SENTINEL_PASSWORD)")
    command.add_argument("--tls-ca", default=None, metavar="FILE",
                         help="with rediss://: the CA that signed the server's certificate (default: the system's)")
    command.add_argument("--tls-cert", default=None, metavar="FILE",
                         help="with rediss://: this client's certificate, for servers that ask for one")
    command.add_argument("--tls-key", default=None, metavar="FILE", help="with --tls-cert: its private key")


def redis_url(args: argparse.Namespace) -> str:
    """``--url``, checked as the sink's config checks its url: a value that is no Redis URL is a
    mistake in what was asked (exit 2), not a Redis that cannot be reached."""
    from pydantic import ValidationError

    from segstream.pipeline.config import RedisSinkConfig

    if not (args.url or "").strip():  # (the sink's config takes empty as null: an embedded Redis)
        raise ConfigError("--url is empty — give the Redis to read, e.g. --url redis://host:6379/0 (or set "
                          "SEGSTREAM_REDIS_URL)")
    try:
        RedisSinkConfig(url=args.url)
    except ValidationError as error:
        said = error.errors()[0]["msg"].removeprefix("Value error, ").replace(", or null for an embedded Redis", "")
        raise ConfigError(f"--url: {said}") from None
    return args.url


def redis_tls(args: argparse.Namespace) -> TlsFiles | None:
    """The TLS files of ``redis_options``, checked as the sink's config checks them."""
    if not (args.tls_ca or args.tls_cert or args.tls_key):
        return None
    if not args.url.startswith(("rediss://", "rediss+sentinel://")):
        raise ConfigError("--tls-ca/--tls-cert/--tls-key are set but --url is not rediss:// — use rediss://host:port "
                             "(rediss+sentinel:// behind Sentinel)")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together — give both or neither")
    for option, path in (("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not Path(path).is_file():
            raise ConfigError(f"{option}: file '{path}' does not exist")
    return TlsFiles(args.tls_ca, args.tls_cert, args.tls_key)


def redis_sentinel(args: argparse.Namespace) -> SentinelAuth | None:
    """The sentinels' login of ``redis_options``."""
    if args.sentinel_username is None and args.sentinel_password is None:
        return None
    return SentinelAuth(args.sentinel_username, args.sentinel_password)


def _validate(args: argparse.Namespace) -> int:
    """Each config in turn (a fleet's, in CI): its errors, then the next one's; the exit status
    is the worst (2: a config error; 1: a --connect check failed)."""
    several = len(args.config) > 1
    worst = 0
    for config in args.config:
        try:
            code = _validated(args, config, several)
        except SegstreamError as error:
            if args.json:  # the report a script reads; the error's line(s) still go to stderr
                from segstream.connectors.redaction import scrub

                print(json.dumps({"ok": False, "config": str(config), "errors": scrub(str(error)).splitlines()}),
                      flush=True)
            if not several:
                raise
            code = main_error(error, f"{config}: ")
        worst = max(worst, code)
    return worst


def _validated(args: argparse.Namespace, config: Path, several: bool = False) -> int:
    # a config without sources is one for `segstream batch`, which takes its videos from the command line
    batch = "sources" not in read_yaml(config)
    from segstream.pipeline.config import labels_unread
    from segstream.pipeline.model_factory import BUILTIN_FAMILIES, check_model_section

    files = not args.no_files
    cfg = load_checked_config(config, args.overrides, schema=BatchPipelineConfig if batch else PipelineConfig,
                              files=files)
    checked = cfg if files else cfg.model_copy(update={"model": labels_unread(cfg.model)})
    preset = check_model_section(checked, batch=batch)  # unknown preset or family, a task it lacks, a level to draw
    from segstream.connectors.checkpoints import check_checkpoint
    from segstream.connectors.errors import CheckpointError

    try:
        if preset.family in BUILTIN_FAMILIES and files:  # a plugin's family loads (and checks) its weights itself
            check_checkpoint(preset, cfg.model.checkpoint)  # a file that is no checkpoint, or not this model's
    except CheckpointError as error:
        raise ConfigError(f"model.checkpoint: {error}") from None
    if preset.family in BUILTIN_FAMILIES and checked.model.labels == cfg.model.labels:
        # the filters' class names against the model's (a plugin names its own; labels not read: not known)
        from segstream.pipeline.filtering import segment_filters
        from segstream.pipeline.model_factory import labels_of

        segment_filters(cfg, labels_of(preset, cfg.model), [s.name for s in cfg.sources])
    model = preset.name
    if batch:
        summary = f"a batch config (videos from `segstream batch INPUTS`), model {model}"
    else:
        summary = f"{len(cfg.sources)} source{'s' if len(cfg.sources) != 1 else ''}, model {model}"
    if not files:
        summary += " (the files it names not looked at)"
    said = f"ok: {config}: {summary}" if several else f"ok: {summary}"
    effective = _effective(cfg) if args.print else None
    # the config alone on stdout (--- between several), for a diff or a file
    shown = "" if not effective or args.json else yaml.safe_dump(effective, sort_keys=False, allow_unicode=True,
                                                                 explicit_start=several)
    if shown and not _writable(shown, sys.stdout):
        # YAML's own escapes ("vid\xE9/..." in double quotes) where the output's encoding cannot write a
        # character: the output's escapes in a plain scalar named another file (found probing under Latin-1)
        shown = yaml.safe_dump(effective, sort_keys=False, allow_unicode=False, explicit_start=several)
    if args.connect:
        from segstream.pipeline.preflight import Check, preflight, report

        checks = [Check("config", True, summary), *preflight(cfg, preset, batch=batch)]
        if args.json:
            passed = all(check.ok for check in checks)
            errors = [f"{check.what}: {check.said}" for check in checks if not check.ok]
            print(json.dumps({"ok": passed, "config": str(config), "summary": summary, "errors": errors,
                              "checks": [check.shown() for check in checks]}
                             | ({"effective": effective} if effective is not None else {})), flush=True)
            return 0 if passed else 1
        if several:
            print(f"{config}:", flush=True)
        code = report(checks)
        print(shown, end="", flush=True)
        return code
    if args.json:
        print(json.dumps({"ok": True, "config": str(config), "summary": summary, "errors": []}
                         | ({"effective": effective} if effective is not None else {})), flush=True)
    else:
        print(said, file=sys.stderr if effective else sys.stdout, flush=True)
        print(shown, end="", flush=True)
    return 0


def _effective(cfg: PipelineConfig) -> dict:
    """The config as the run takes it (defaults filled in, variables and overrides applied,
    paths made absolute), its secrets as ***: every password, and what a variable of a secret's
    name brought."""
    from segstream.connectors.redaction import scrub
    from segstream.connectors.urls import redact_url, url_scheme

    def masked(node, key=""):
        if isinstance(node, dict):
            return {k: masked(v, str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [masked(v, key) for v in node]
        if isinstance(node, str):
            if key in ("password", "passphrase") and node:
                return "***"
            # a URL's query too (?password=, ?passphrase= of SRT): found reviewing
            return scrub(redact_url(node, keep_user=True) if "://" in node else node)
        return node

    effective = masked(cfg.model_dump(mode="json", exclude_none=False))
    for source, config in zip(effective["sources"], cfg.sources):
        # RTSP's transport is no setting of another URL (a probe read udp:// as tcp)
        if source.get("type") == "stream" and url_scheme(source["url"]) not in ("rtsp", "rtsps"):
            del source["transport"]
        if source.get("buffer") is None and (kind := getattr(config, "buffer_kind", None)):
            source["buffer"] = kind  # the policy in force, not null (found probing the docs as written)
    return effective


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def _tail(args: argparse.Namespace) -> int:
    from segstream.connectors.redis_reader import tail

    if args.count < 0:
        raise ConfigError(f"--count must be 0 or more (the newest entries to print), got {args.count}")

    at = None if args.at is None else wall_time(args.at)
    if at is not None and args.follow:
        raise ConfigError("--at and --follow: --at prints what was captured around a past time, --follow what "
                             "comes next — give one")
    if not args.follow and (args.idle_timeout is not None or args.until_ended):
        option = "--idle-timeout" if args.idle_timeout is not None else "--until-ended"
        raise ConfigError(f"{option} says when --follow stops waiting — add --follow")
    tail(args.stream, url=redis_url(args), count=args.count, follow=args.follow, events=args.events,
         password=args.password, username=args.username, tls=redis_tls(args), sentinel=redis_sentinel(args), at=at,
         json_lines=args.json, idle_timeout_s=args.idle_timeout, until_ended=args.until_ended)
    return 0


def _status(args: argparse.Namespace) -> int:
    if not args.nagios:
        return _status_of(args)
    try:  # a check that cannot tell is UNKNOWN to a monitoring system, whatever was wrong
        return _status_of(args)
    except SegstreamError as error:
        from segstream.connectors.redis_reader import nagios_unknown

        return nagios_unknown(str(error))


def _status_of(args: argparse.Namespace) -> int:
    from segstream.connectors.redis_reader import glob_outside_source, status_report

    if "{source}" not in args.key:
        raise ConfigError(f"--key {args.key!r} must contain {{source}}, as sinks.redis.status_key does, e.g. "
                          "'segstream:{source}:status'")
    if glob_outside_source(args.key):
        raise ConfigError(f"--key {args.key!r}: a glob goes in SOURCE, not in --key — e.g. --key '{{source}}:status' "
                          "'store*:*' for every store's cameras")
    if args.nagios and args.json:
        raise ConfigError("--nagios and --json are two outputs — give one of them")
    return status_report(args.source, url=redis_url(args), pattern=args.key, json_lines=args.json,
                         password=args.password, username=args.username, tls=redis_tls(args),
                         sentinel=redis_sentinel(args), nagios=args.nagios)


def wall_time(text: str) -> float:
    """``--at``'s time as seconds since the epoch: ISO 8601 with its zone, or a number of seconds."""
    from datetime import datetime

    no_time = ConfigError(f"--at {text!r} is no time — give a date and time with its zone (2026-12-03T07:10:00Z) "
                          "or seconds since the epoch")
    with contextlib.suppress(ValueError):  # else a date and time
        seconds = float(text)
        if not math.isfinite(seconds):
            raise no_time
        return seconds
    if not any(separator in text for separator in "T t"):  # a date alone: midnight of no zone
        raise no_time
    try:  # (Python 3.10 reads no Z)
        when = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise no_time from None
    if when.tzinfo is None:
        raise ConfigError(f"--at {text!r} has no time zone, and capture times are UTC — add Z (UTC) or the "
                             "offset (+01:00)")
    return when.timestamp()


def _bench(args: argparse.Namespace) -> int:
    from segstream.pipeline.bench import main_bench

    return main_bench(args)


def _evaluate(args: argparse.Namespace) -> int:
    if args.truth_first_frame is not None and not (args.tracking and args.clips):
        raise ConfigError("--truth-first-frame goes with --tracking --clips (a clip's MOTS ground truth)")
    if args.tracking and (given := [name for name, value in (("--data", args.data), ("--masks", args.masks),
                                                              ("--images", args.images)) if value is not None]):
        # found probing: a team's own pictures were taken and left unused, exit 0
        raise ConfigError(f"{given[0]} goes with PQ; --tracking scores the tracker on the synthetic scenes of --seeds, "
                          "or on videos with their tracks' ground truth (--clips) — drop one of them")
    if args.tracking and args.no_model and (given := [name for name, value in (
            ("--checkpoint", args.checkpoint), ("--preset", args.preset), ("--labels", args.labels)) if value is not None]):
        raise ConfigError(f"{given[0]} names a model, and --no-model runs none — drop one of them")
    if args.tracking:
        from segstream.pipeline.track_evaluation import main_evaluate_tracking

        return int(main_evaluate_tracking(args) or 0)
    if args.no_model or args.config or args.overrides:
        raise ConfigError("--no-model, --config and --set go with --tracking")
    from segstream.pipeline.evaluation import main_evaluate

    return int(main_evaluate(args) or 0)


def _batch(args: argparse.Namespace) -> int:
    from segstream.pipeline.batch import main_batch

    return main_batch(args)


def _mots(args: argparse.Namespace) -> int:
    from segstream.pipeline.track_evaluation import write_mots

    if args.class_id is not None and (args.class_id < 0 or args.class_id == 10):
        raise ConfigError(f"--class-id {args.class_id}: a class id is 0 or more and not 10 (MOTS's ignore region)")
    lines, entries = write_mots(args.jsonl, args.out, args.first_frame, args.class_id, args.run)
    if str(args.out) != "-":
        print(f"segstream: {lines} tracked masks of {entries} frames written to {args.out}", file=sys.stderr)
    return 0


def _render(args: argparse.Namespace) -> int:
    from segstream.pipeline.render import main_render

    redis_url(args)

    return main_render(args)


def _run(args: argparse.Namespace) -> int:
    if args.max_frames is not None and args.max_frames <= 0:
        raise ConfigError(f"--max-frames must be a positive number, got {args.max_frames}")
    from segstream.pipeline.config import overrides_by_name

    # a reload applies the overrides to the file as it is then: each source's by its name, not its place
    args.overrides = overrides_by_name(args.config, args.overrides)
    cfg = load_checked_config(args.config, args.overrides)

    def reload_from() -> PipelineConfig:
        if streamed(args.config):  # its text was read once, at the start
            raise ConfigError("the run's config came from standard input or a pipe, which cannot be read again — "
                              "start the run from a file to reload it")
        return load_checked_config(args.config, args.overrides)

    report = run_pipeline(cfg, max_frames=args.max_frames, reload_from=reload_from, config_file=Path(args.config))
    if report is None:  # a signal while the model, sinks or sources were being built
        line = signal_line("stopped before the run began: no frame was read, nothing was published", "INFO")
        sys.stderr.write(line.decode())
        return 0
    lines = []
    if report.undelivered:
        lines.append(undelivered_line(report.undelivered, report.published + sum(report.undelivered.values())))
    if report.data_losses:
        lines.append(data_loss_line({name: report.sinks[name] for name in report.data_losses}))
    if report.nonfinite:
        lines.append(nonfinite_line(report.nonfinite, report.decoded))
    if report.failed:
        # a live source that lost its camera must not look like a run that finished; and what else went
        # wrong is said with it (found probing a port's cameras: a failed camera hid a Redis data loss)
        failed = [f"source {name} failed: {reason}" for name, reason in report.failed.items()]
        raise SourceError("\n".join(failed[:-1] + ["; ".join([failed[-1], *lines])]))
    if lines:
        raise (SinkError if report.undelivered or report.data_losses else SegstreamError)("; ".join(lines))
    return 0


def _reload(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.parse
    import urllib.request

    from segstream.pipeline.config import _host_port
    from segstream.pipeline.reload import ops_address

    # The run reads and checks the file, with its own overrides and environment (a camera's
    # password may be in the run's environment only): here, only where it listens is read.
    if args.ops is not None:
        try:
            host, port = _host_port(args.ops)
        except ValueError as error:
            raise ConfigError(f"--ops: {error}") from None
    else:
        host, port = ops_address(args.config)
    if port == 0:
        raise ConfigError(f"{args.config}: ops.http picks a free port (0) — give the one the run took (its first "
                          "lines say) with --ops HOST:PORT")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    # the file meant: a run told to reload another than its own refuses (it reads its own, always)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/reload"
    asked = f"{url}?{urllib.parse.urlencode({'config': os.path.abspath(args.config)})}"
    request = urllib.request.Request(asked, method="POST", data=b"")
    timeout = RELOAD_WAIT_S if args.timeout is None else args.timeout

    def said(answer, code: int) -> str:
        """A run's answer: one line of plain text (found probing: another server's HTML page was
        printed, a line of it to each ``segstream: error:``)."""
        text = answer.read(64 * 1024).decode(errors="replace").strip()
        kind = answer.headers.get("Content-Type", "")
        if kind.startswith("text/plain") and "\n" not in text:
            return text or f"{url} answered {code}"
        raise SegstreamError(f"what answers at {url} is no segstream run (HTTP {code}, "
                             f"{kind.split(';')[0] or 'no content type'}, {len(text.splitlines())} lines): give the "
                             "run's ops.http address (its first lines say it) with --ops HOST:PORT")

    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            line = said(answer, answer.status)
    except urllib.error.HTTPError as error:
        line = said(error, error.code)
        if line.startswith("reloaded:"):  # applied in part: what was, and what takes a restart
            print(line)
            return 1
        raise SegstreamError(line) from None
    except TimeoutError:  # it took the request: the reload goes on there, its log says how it ended
        raise SegstreamError(f"{url} did not answer within {timeout:g} s: a run there may be applying the "
                             "reload still (removed cameras draining), or what listens there is no segstream run — "
                             "its log says which, and how the reload ended") from None
    except (urllib.error.URLError, OSError) as error:
        why = getattr(error, "reason", error)
        raise SegstreamError(f"no segstream run answers at {url} ({getattr(why, 'strerror', None) or why}): is it "
                             "running, with this config's ops.http (or give --ops HOST:PORT)?") from None
    print(line)
    return 0


def nonfinite_line(dropped: int, decoded: int) -> str:
    """The one line for frames dropped because the network's outputs for them were not finite."""
    return (f"the output is incomplete: {dropped} of {decoded} frames were dropped because the network's outputs for "
            "them held NaN or infinity (model_nonfinite); the warning above says what to do")


def undelivered_line(lost: dict[str, int], results: int) -> str:
    """The one line for results a sink took (``results`` in all) and never wrote: the output is
    incomplete."""
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(lost.items()))
    return (f"the output is incomplete: {sum(lost.values())} of {results} results were never written by a sink "
            f"({reasons}); the warnings above say which sink and why (another sink may hold them)")


def data_loss_line(losses: dict[str, dict]) -> str:
    """The one line for a store that lost entries a sink had written to it (each such sink's ``status()``)."""
    told = []
    for sink, status in sorted(losses.items()):
        lost, times = status.get("entries_lost", {}), status["data_losses"]
        frames, events = lost.get("frames", 0), lost.get("events", 0)
        told.append(f"{sink} {'at least ' if status.get('entries_lost_at_least') else ''}{frames} "
                    f"frame{'s' if frames != 1 else ''} and {events} event{'s' if events != 1 else ''} "
                    f"in {times} loss{'es' if times != 1 else ''}")
    return (f"the output is incomplete: entries this run had written were lost from the store ({'; '.join(told)}: restarted "
            "without persistence, failed over to a replica that lacked them, flushed, evicted or deleted); the warnings "
            "above name the streams")


@overload
def build_runtime(
    cfg: PipelineConfig, max_frames: int | None = None, progress: TextIO | bool | None = False,
    metrics: RunMetrics | None = None, *,
    sources: Iterable[VideoSource] = (), sinks: Iterable[Sink] = (), stages: Iterable[StageFactory] = (),
    adapter: FamilyAdapter | None = None, run_id: str | None = None, ops: bool = False,
) -> Runtime: ...  # without ``stopping``: never None (found probing: README's own example failed mypy)


@overload
def build_runtime(
    cfg: PipelineConfig, max_frames: int | None = None, progress: TextIO | bool | None = False,
    metrics: RunMetrics | None = None, *, stopping: Callable[[], bool],
    sources: Iterable[VideoSource] = (), sinks: Iterable[Sink] = (), stages: Iterable[StageFactory] = (),
    adapter: FamilyAdapter | None = None, run_id: str | None = None, ops: bool = False,
) -> Runtime | None: ...


def build_runtime(
    cfg: PipelineConfig, max_frames: int | None = None, progress: TextIO | bool | None = False,
    metrics: RunMetrics | None = None, stopping: Callable[[], bool] = lambda: False, *,
    sources: Iterable[VideoSource] = (), sinks: Iterable[Sink] = (), stages: Iterable[StageFactory] = (),
    adapter: FamilyAdapter | None = None, run_id: str | None = None, ops: bool = False,
) -> Runtime | None:
    """Model, stages, sinks and sources from ``cfg``, assembled into a Runtime ready to ``run()``;
    None when ``stopping()`` turned true while they were being built (what was built is released).
    For a program that embeds a pipeline: it runs ``runtime.run()`` on a thread of its own and
    calls ``runtime.stop()`` from any other; no signal handlers (``run_pipeline`` has them).
    ``progress``: where the status lines and the summary go (True: standard error); none by
    default, as a library's (found probing a service that embeds it: they reached its stderr).

    ``ops=True`` serves the config's ``ops.http`` endpoints (``/metrics``, ``/healthz``,
    ``/readyz``, for ``metrics`` or a new ``RunMetrics``) from now until ``run()`` returns, as
    ``segstream run`` does; ``runtime.ops_address`` is where (host, port; None when ``ops.http``
    is null or its default port is taken). A port the config names that is taken is a
    ``ConfigError``. Without it (the default) nothing is served.

    ``sources``, ``sinks`` and ``stages`` (per-source stage factories, ``source name -> FrameStage``)
    of one's own run beside the config's: sources after the config's (names must differ; see
    ``Runtime.from_config`` for their queues), sinks after the config's sinks (``sinks.custom``
    included), stages after the config's tracker and ``stages:``. They belong to the runtime from
    here on: its run closes them, and so does this function when it fails or returns None.
    ``adapter``: the model, already built (``build_segmenter``) from ``cfg.model``; else it is
    built here. ``run_id``: the run's id (``logs.new_run_id()``), when its log lines carry it
    already; else a new one."""
    with whole_imports():  # torch's, the first time (segstream.results from a notebook)
        from segstream.pipeline.builders import build_sinks, build_sources
        from segstream.pipeline.filtering import segment_filters
        from segstream.pipeline.model_factory import build_segmenter, check_model_section
        from segstream.pipeline.preflight import check_sink_permissions
        from segstream.pipeline.runtime import Runtime
        from segstream.pipeline.tracking import tracking_stages

    if run_id is None:
        run_id = new_run_id()
        set_run_id(run_id)
    own_sources, own_sinks = list(sources), list(sinks)
    built_sinks, built_sources, runtime = [], [], None
    served = contextlib.ExitStack()
    try:
        clash = sorted({s.name for s in cfg.sources} & {s.name for s in own_sources})
        if clash:
            raise ConfigError(f"source name '{clash[0]}' is both in the config's sources and among the sources "
                              "passed to build_runtime — names must be unique")
        server = None
        if ops:
            from segstream.pipeline.metrics import RunMetrics
            from segstream.pipeline.monitoring import serve_ops

            metrics = metrics or RunMetrics()
            server = served.enter_context(serve_ops(cfg.ops, metrics))  # /readyz says not yet until the run starts
        names = [*(s.name for s in cfg.sources), *(s.name for s in own_sources)]
        if adapter is None:  # as run_pipeline does first: what cannot run is said before the model loads
            check_model_section(cfg)
            check_sink_permissions(cfg, names)
            adapter = build_segmenter(cfg.model, batch_size=cfg.engine.batch_size)
        named_stages = []
        if cfg.stages:  # built before the sinks and sources open: a factory that raises is a start-up error
            from segstream.pipeline.own_parts import build_stages

            named_stages = build_stages(cfg.stages, names)
        # the filters' class names, checked against the model's before a sink or source starts
        filters = segment_filters(cfg, adapter.labels, names)
        if not stopping():
            try:
                built_sinks = build_sinks(cfg.sinks, run_id=run_id, stopping=stopping, sources=names)
            except RedisUnreachable:
                if not stopping():  # stopped while waiting for Redis (start_wait_s): the run never began
                    raise
        if not stopping():
            built_sources = build_sources(cfg.sources)
        if not stopping():
            if progress is True and json_logging():
                progress = LogLines(logging.getLogger("segstream.status"))
            runtime = Runtime.from_config(
                cfg, [*built_sources, *own_sources], adapter, [*built_sinks, *own_sinks],
                stages=[*tracking_stages(cfg.tracking), *named_stages, *stages], filters=filters,
                max_frames=max_frames, warm_up=WARM_UP_FRAME, progress=progress, metrics=metrics, publish_states=True,
                publish_settings=True, run_id=run_id,
            )
            runtime.ops_address = None if server is None else server.address
            runtime.at_end.append(served.pop_all().close)  # the endpoints live as long as the run
            log.info("run %s starting", run_id)  # once built: a start that fails stays its one error line
    finally:
        if runtime is None:  # stopped, or failed, before the run: an embedded Redis must not outlive us
            for part in [*built_sources, *own_sources, *built_sinks, *own_sinks]:
                close = getattr(part, "close", None)
                if not callable(close):  # a part that is no sink or source: the error that says so goes on
                    continue
                try:
                    close()
                except Exception as error:  # nor may a close that fails hide why the build failed
                    log.warning("closing %s after the failed start failed too: %s: %s",
                                getattr(part, "name", type(part).__name__), type(error).__name__, error)
            served.close()
    return runtime


def run_pipeline(cfg: PipelineConfig, max_frames: int | None = None, progress: TextIO | bool | None = True,
                 reload_from: Callable[[], PipelineConfig] | None = None,
                 config_file: Path | None = None) -> RunReport | None:
    """Build model, sinks and sources from ``cfg`` and run them. Ctrl-C/SIGTERM drains a run;
    while the model is being built it stops that at once, while sinks and sources are, it starts
    nothing more (then None: the run never began). The ``ops.http`` endpoints serve from before
    the model loads (``/readyz`` says not yet). With ``ops.reload``, ``POST /reload`` applies the
    sources of the config ``reload_from()`` reads (see ``segstream.pipeline.reload``), the file
    ``config_file`` (a reload asked for another file is refused)."""
    with whole_imports():  # torch's, the first time
        from segstream.pipeline.metrics import RunMetrics
        from segstream.pipeline.model_factory import build_segmenter, check_model_section
        from segstream.pipeline.monitoring import serve_ops
        from segstream.pipeline.preflight import check_sink_permissions

    # a model section that cannot run is said before anything listens
    check_model_section(cfg)
    metrics = RunMetrics()
    run_id = new_run_id()
    set_run_id(run_id)  # from the first line on, the endpoints' included
    with serve_ops(cfg.ops, metrics) as server, _DrainOnSignal() as signals:
        if not signals.stopping:  # (a stop sent during start-up: nothing will be written, nothing to check)
            check_sink_permissions(cfg)  # a user Redis refuses is told before the model takes seconds to load
        try:
            with signals.at_once():  # a model may take minutes to build: a stop then is not kept waiting
                adapter = build_segmenter(cfg.model, batch_size=cfg.engine.batch_size)
        except _StoppedBeforeRun:
            return None
        except SegstreamError:
            # the stop raised inside torch's C code, which made its own error of it ("could not determine
            # the shape of object type ..."): a checkpoint read as broken (exit 1), found by CI
            if signals.stopping:
                return None
            raise
        runtime = build_runtime(
            cfg, max_frames=max_frames, progress=progress, metrics=metrics, stopping=lambda: signals.stopping,
            adapter=adapter, run_id=run_id,
        )
        if runtime is None:
            return None
        signals.runtime = runtime
        if server is not None and cfg.ops.reload and reload_from is not None:
            from segstream.pipeline.reload import Reloader

            server.reload = Reloader(runtime, cfg, reload_from, config_file)
            if entry.console and not entry.had_terminal:  # a service's: systemd's ExecReload=kill -HUP
                signals.on_hangup = _ReloadOnHangup(server.reload)
        try:
            return runtime.run()
        finally:
            if server is not None:
                server.reload = None
            hangup, signals.on_hangup = signals.on_hangup, None  # a SIGHUP from now on stops the run
            if hangup is not None:
                hangup.close()


class _ReloadOnHangup:
    """A SIGHUP to a run with reloading on and no terminal to hang up (a service) reloads its
    config, as a daemon's SIGHUP does, instead of stopping it (``ExecReload=/bin/kill -HUP
    $MAINPID`` stopped the site with exit 0). The signal handler only asks; a thread reloads."""

    def __init__(self, reload: Callable[[], tuple[bool, str]]):
        self.reload = reload
        # SimpleQueue.put may be called from a signal handler (an Event's lock, taken by the main
        # thread when the handler interrupts it, would deadlock: found reviewing)
        self._asked: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False  # a SIGHUP queued before the run ended reloads nothing (found reviewing)
        NamedThread(target=self._run, name="segstream-hangup-reload", daemon=True).start()

    def __call__(self) -> None:
        self._asked.put(True)

    def close(self) -> None:
        self._closed = True
        self._asked.put(False)

    def _run(self) -> None:
        while self._asked.get() and not self._closed:
            try:
                applied, line = self.reload()
            except Exception as error:  # the thread lives on for the next SIGHUP; the run goes on
                log.error("SIGHUP: the reload failed: %s: %s", type(error).__name__, error)
                continue
            if not applied and line.startswith("a reload is under way"):  # the reloader says nothing of it
                log.warning("SIGHUP: %s", line)


@contextlib.contextmanager
def whole_imports():
    """Imports a Ctrl-C must not cut in half in a program that calls segstream (a notebook's
    kernel): a module left half-loaded (torch's first import takes seconds) fails every later
    import until the interpreter restarts. A SIGINT meanwhile is held, and handed to the handler
    that was there once they are done (Python's own raises KeyboardInterrupt; a draining run's
    stops it). The console command aborts such imports its own way (``entry``); off the main
    thread no signal arrives; a handler installed from C cannot be put back, so none is held then."""
    previous = signal.getsignal(signal.SIGINT)
    if entry.console or threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    held = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt


class _StoppedBeforeRun(BaseException):  # not caught by the model's loaders' `except Exception`
    """A first SIGINT/SIGTERM inside ``_DrainOnSignal.at_once()``: there is nothing to drain yet."""


# The same signal again within this many seconds of the first is that one sent twice, not a
# second stop: a person's second Ctrl-C comes far later.
SAME_SIGNAL_S = entry.SAME_SIGNAL_S
# How often a stop that waits for an import looks whether the import has ended.
_NUDGE_S = 0.05


class _DrainOnSignal:
    """First SIGINT/SIGTERM: ``runtime.stop()`` (drain, exit 0), or while there is no runtime yet,
    ``stopping`` (nothing more is started), or inside ``at_once()``, ``_StoppedBeforeRun`` raised
    there; second: KeyboardInterrupt. ``signum`` is the first signal received (None before one)."""

    aborted_by: int | None = None  # the signal that aborted this process (the second one)

    def __init__(self, runtime=None, doing: str = "stopping, draining queued frames"):
        self._runtime = runtime
        self.doing = doing
        self.stopping = False
        self.signals = 0
        self.signum: int | None = None
        self.previous: dict[int, object] = {}
        self._at_once = False
        self._stop_after = False  # a first signal inside an import of at_once's work: stopped once it ends
        self._nudged = False  # a signal the watcher of such a stop sent
        self._nudge_lock = threading.Lock()
        self._first_at = -math.inf
        self.on_hangup: Callable[[], None] | None = None  # set: a SIGHUP asks for a reload, not a stop

    @contextlib.contextmanager
    def at_once(self):
        """Work that a first signal stops where it is (building the model: nothing to drain, and
        nothing of it to release but memory); ``_StoppedBeforeRun`` is raised from inside it."""
        if self.stopping:
            raise _StoppedBeforeRun
        self._at_once = True
        if threading.current_thread() is threading.main_thread() and self.previous:
            NamedThread(target=self._watch_for_a_waiting_stop, name="segstream-stop-watch", daemon=True).start()
        try:
            yield
        finally:
            with self._nudge_lock:
                self._at_once = False
        if self._stop_after:
            self._stop_after = False
            raise _StoppedBeforeRun

    @property
    def runtime(self):
        return self._runtime

    @runtime.setter
    def runtime(self, runtime) -> None:
        self._runtime = runtime
        if self.stopping:
            runtime.stop()

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self._nudged:  # the watcher's, for a stop waiting for an import
            self._nudged = False
            if not self._stop_after or entry.loading(frame):
                return
            self._stop_after = False
            self._at_once = False
            raise _StoppedBeforeRun
        if signum == signal.SIGHUP and self.on_hangup is not None and not self.stopping:
            write_line(signal_line("SIGHUP: reloading the config (no terminal to hang up: a service's reload)"))
            self.on_hangup()
            return
        if signum == self.signum and now - self._first_at < SAME_SIGNAL_S:
            return  # one stop sent twice at once: GNU timeout signals its command, then its process group
        self.signals += 1
        if self.signals > 1:
            if entry.console:  # a program's process is its own to end: it gets the KeyboardInterrupt
                abort_if_loading(frame, signum)  # the model's modules may still be loading
            _DrainOnSignal.aborted_by = signum  # the exit status says which signal aborted
            raise KeyboardInterrupt
        self.signum = signum
        self._first_at = now
        self.stopping = True
        # os.write (write_line), not print: print may be interrupted while holding stderr's buffer lock
        name = signal.Signals(signum).name
        if self._at_once:
            if entry.loading(frame):
                # A program calling us (a notebook's kernel) lives on: a module left half-loaded
                # would fail its later imports; the console command's first stop is a clean one
                # (exit 0, as a supervisor's stop at start-up should be), not an abort (130).
                # The stop waits for the import to end, then stops the work.
                self._stop_after = True  # at_once's watcher stops the work once the import has ended
                write_line(signal_line(f"{name}: stopping once the modules being loaded are ({name} again aborts)"))
                return
            self._at_once = False
            write_line(signal_line(f"{name}: stopping"))
            raise _StoppedBeforeRun
        if self._runtime is not None:
            self._runtime.stop()
        write_line(signal_line(f"{name}: {self.doing} ({name} again aborts)"))

    def _watch_for_a_waiting_stop(self) -> None:
        """For at_once's work: while a stop waits for an import, once the main thread
        is out of imports, signal it (once: the handler clears ``_nudged``) so that the handler
        stops the work there (and again, should it be in another import by then). Started with the
        work, not by the handler: a thread started inside a signal handler may wait on a lock the
        interrupted code holds."""
        main = threading.main_thread().ident
        while True:
            with self._nudge_lock:  # at_once's end takes it too: no nudge comes after the work ended
                if not self._at_once:
                    return
                if self._stop_after and not self._nudged:
                    frame = sys._current_frames().get(main)
                    if frame is not None and not entry.loading(frame):
                        self._nudged = True
                        signal.pthread_kill(main, self.signum or signal.SIGINT)
                    del frame
            time.sleep(_NUDGE_S)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in entry.stop_signals():
                self.previous[signum] = signal.signal(signum, self._handle)
            if entry.console and entry.pending_stop is not None:  # a stop sent while the command started
                self.signals, self.signum, self._first_at = 1, entry.pending_stop, entry.pending_since
                self.stopping = True
                entry.pending_stop = None
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            # After a drained stop, the console command ignores a stop signal more (timeout's second,
            # a quick second Ctrl-C): it would make the rest of the exit an abort (130) of a run whose
            # output is whole. A program calling run_pipeline gets its own handlers back: it goes on.
            signal.signal(signum, signal.SIG_IGN if self.signum is not None and entry.console else handler)
