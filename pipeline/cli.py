"""The ``segstream`` command: run, validate, schema, tail, evaluate, demo.

User errors (``SegstreamError``) end as one line ``segstream: error: ...`` and the error's exit
code; Ctrl-C or SIGTERM drains the pipeline and exits 0, a second one aborts with 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from segstream.connectors.errors import SegstreamError
from segstream.pipeline.config import PipelineConfig, json_schema, load_config

if TYPE_CHECKING:
    from segstream.pipeline.runtime import RunReport

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
# Frames of this size (height, width) warm the model up before the sources start: the network's
# input size does not depend on the frame's, so any size compiles what the run will use.
WARM_UP_FRAME = (480, 640)


def main(argv: list[str] | None = None) -> int:
    if not logging.getLogger().handlers:
        # Library warnings (a lost Redis, ...) as plain lines beside the status line.
        logging.basicConfig(level=logging.WARNING, format="segstream: %(message)s")
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:
        return int(exit.code or 0)
    try:
        return args.command(args)
    except SegstreamError as error:
        for line in str(error).splitlines() or [type(error).__name__]:
            print(f"segstream: error: {line}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("segstream: aborted", file=sys.stderr)
        if _pipeline_threads_alive():
            # they may be inside torch or FFmpeg, and finalising the interpreter under them crashes
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(130)
        return 130


def _pipeline_threads_alive() -> bool:
    from segstream.pipeline.runtime import THREAD_PREFIX

    return any(t.name.startswith(THREAD_PREFIX) and t.is_alive() for t in threading.enumerate())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segstream", description="Streaming video segmentation with EoMT, published to Redis Streams."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def overrides(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one config value, e.g. --set engine.batch_size=8 --set sources.0.path=x.mp4")

    run = commands.add_parser("run", help="run the pipeline described by a YAML config")
    run.add_argument("config", type=Path, metavar="CONFIG")
    overrides(run)
    run.add_argument("--max-frames", type=int, metavar="N", help="stop each source after N frames")
    run.set_defaults(command=_run)

    demo = commands.add_parser("demo", help=f"run {DEMO_CONFIG.relative_to(DEMO_CONFIG.parents[1])}")
    overrides(demo)
    demo.add_argument("--max-frames", type=int, metavar="N", help="stop each source after N frames")
    demo.set_defaults(command=_run, config=DEMO_CONFIG)

    validate = commands.add_parser("validate", help="check a config without running it")
    validate.add_argument("config", type=Path, metavar="CONFIG")
    overrides(validate)
    validate.set_defaults(command=_validate)

    schema = commands.add_parser("schema", help="print the JSON Schema of the config file")
    schema.set_defaults(command=_schema)

    tail = commands.add_parser("tail", help="print the entries of a segstream Redis stream")
    tail.add_argument("stream", metavar="STREAM", help="stream name, e.g. segstream:cam0:frames")
    tail.add_argument("--url", default="redis://localhost:6379/0", help="Redis URL (default %(default)s)")
    tail.add_argument("--count", type=int, default=10, metavar="N", help="newest entries to print (default %(default)s)")
    tail.add_argument("--follow", action="store_true", help="keep printing new entries as they arrive")
    tail.add_argument("--events", action="store_true",
                      help="also print the source's events stream (track starts and ends, source states)")
    tail.set_defaults(command=_tail)

    bench = commands.add_parser(
        "bench", help="measure the network alone, the pipeline and a naive loop on a config, in one run"
    )
    bench.add_argument("config", type=Path, metavar="CONFIG")
    overrides(bench)
    bench.add_argument("--sources", type=int, default=1, metavar="N", help="run N copies of the first source")
    bench.add_argument("--frames", type=int, default=None, metavar="N",
                       help="frames per source (files loop to last that long); default: each source once")
    bench.add_argument("--naive-frames", type=int, default=100, metavar="N", help="frames of the naive loop")
    bench.add_argument("--network-seconds", type=float, default=3.0, metavar="S",
                       help="how long to time the network alone (default %(default)s)")
    bench.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    bench.set_defaults(command=_bench)

    evaluate = commands.add_parser("evaluate", help="measure segmentation quality on synthetic scenes")
    evaluate.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED")
    evaluate.add_argument("--frames", type=int, default=50, metavar="N", help="frames per seed")
    evaluate.add_argument("--size", type=int, nargs=2, default=[640, 480], metavar=("WIDTH", "HEIGHT"))
    evaluate.add_argument("--checkpoint", default=None, help="local path or hf://org/name; default: the preset's weights")
    evaluate.add_argument("--preset", default=None, help="a model trained on synthetic scenes (default: the shipped one)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default %(default)s)")
    evaluate.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    evaluate.add_argument("--postprocess", default="fast", choices=["fast", "exact"])
    evaluate.add_argument("--tracking", action="store_true",
                          help="IDF1, HOTA and ID switches of the tracker (noisy ground truth, the model's "
                               "segments, and an oracle on them) instead of PQ; needs segstream[eval]")
    evaluate.add_argument("--no-model", action="store_true",
                          help="with --tracking: only the tracker on noisy ground truth (no model run)")
    evaluate.set_defaults(command=_evaluate)
    return parser


def _validate(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    print(f"ok: {len(cfg.sources)} source{'s' if len(cfg.sources) != 1 else ''}, model {cfg.model.preset}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


def _tail(args: argparse.Namespace) -> int:
    from segstream.connectors.redis_reader import tail

    tail(args.stream, url=args.url, count=args.count, follow=args.follow, events=args.events,
         password=os.environ.get("REDIS_PASSWORD") or None)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from segstream.pipeline.bench import main_bench

    return main_bench(args)


def _evaluate(args: argparse.Namespace) -> int:
    if args.tracking:
        from segstream.pipeline.track_evaluation import main_evaluate_tracking

        return int(main_evaluate_tracking(args) or 0)
    if args.no_model:
        raise SegstreamError("--no-model goes with --tracking")
    from segstream.pipeline.evaluation import main_evaluate

    return int(main_evaluate(args) or 0)


def _run(args: argparse.Namespace) -> int:
    if args.max_frames is not None and args.max_frames <= 0:
        raise SegstreamError(f"--max-frames must be a positive number, got {args.max_frames}")
    cfg = load_config(args.config, args.overrides)
    run_pipeline(cfg, max_frames=args.max_frames)
    return 0


def run_pipeline(cfg: PipelineConfig, max_frames: int | None = None, progress=True) -> RunReport:
    """Build model, sinks and sources from ``cfg`` and run them; Ctrl-C/SIGTERM drain."""
    import torch

    from segstream.pipeline.builders import build_sinks, build_sources
    from segstream.pipeline.model_factory import build_segmenter
    from segstream.pipeline.runtime import Runtime

    if cfg.engine.threads is not None:
        torch.set_num_threads(cfg.engine.threads)
    adapter = build_segmenter(cfg.model, batch_size=cfg.engine.batch_size)
    sinks = build_sinks(cfg.sinks)
    try:
        sources = build_sources(cfg.sources)
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    runtime = Runtime.from_config(
        cfg, sources, adapter, sinks, max_frames=max_frames, warm_up=WARM_UP_FRAME, progress=progress
    )
    with _DrainOnSignal(runtime):
        return runtime.run()


class _DrainOnSignal:
    """First SIGINT/SIGTERM: ``runtime.stop()`` (drain, exit 0); second: KeyboardInterrupt."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.signals = 0
        self.previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.signals += 1
        if self.signals > 1:
            raise KeyboardInterrupt
        self.runtime.stop()
        # os.write, not print: print may be interrupted while holding stderr's buffer lock
        name = signal.Signals(signum).name
        os.write(2, f"segstream: {name}: stopping, draining queued frames ({name} again aborts)\n".encode())

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
