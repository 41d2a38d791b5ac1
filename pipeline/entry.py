"""The ``segstream`` console command. Ctrl-C while a module loads (the CLI's own, or torch's when a
command first needs it) ends the command at once, quietly, with 130: a KeyboardInterrupt raised
inside an import leaves the module half-loaded (numpy then refuses to load again) or, raised
inside torch's C++ start-up, aborts the interpreter. Anywhere else Ctrl-C behaves as usual, and
commands that drain on a signal (run, batch) install their own handler, whose abort (a second
signal) does the same inside an import."""

from __future__ import annotations

import os
import signal
import time


def main() -> int:
    signal.signal(signal.SIGINT, _interrupt)
    from segstream.pipeline.cli import main as cli_main

    return cli_main()


def _interrupt(signum, frame) -> None:
    abort_if_loading(frame)
    raise KeyboardInterrupt


def abort_if_loading(frame) -> None:
    """Exit at once with 130 when ``frame`` (a signal handler's) is inside an import. Imports
    nothing (an import here would wait on the one interrupted): the JSON line is formatted by hand,
    for ``SEGSTREAM_LOG_FORMAT=json`` (the command line's --log-format is not read yet)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            message = "aborted while loading its modules"
            if os.environ.get("SEGSTREAM_LOG_FORMAT") == "json":
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
                line = f'{{"level": "ERROR", "logger": "segstream.cli", "message": "{message}", "time": "{stamp}"}}\n'
            else:
                line = f"segstream: {message}\n"
            os.write(2, line.encode())
            os._exit(130)
        frame = frame.f_back
