"""The ``segstream`` console command. Ctrl-C while a module loads (the CLI's own, or torch's when a
command first needs it) ends the command at once, quietly, with 130: a KeyboardInterrupt raised
inside an import leaves the module half-loaded (numpy then refuses to load again) or, raised
inside torch's C++ start-up, aborts the interpreter. Anywhere else Ctrl-C behaves as usual, and
commands that drain on a signal (run, batch) install their own handler, whose abort (a second
signal) does the same inside an import."""

from __future__ import annotations

import os
import signal

from segstream.pipeline.logs import ENV_FORMAT, signal_line


def main() -> int:
    signal.signal(signal.SIGINT, _interrupt)
    from segstream.pipeline.cli import main as cli_main

    return cli_main()


def _interrupt(signum, frame) -> None:
    abort_if_loading(frame)
    raise KeyboardInterrupt


def abort_if_loading(frame) -> None:
    """Exit at once with 130 when ``frame`` (a signal handler's) is inside an import (an import
    here would wait on the one interrupted; ``signal_line`` imports nothing). JSON as
    SEGSTREAM_LOG_FORMAT says: the command line's --log-format may not be read yet."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            as_json = os.environ.get(ENV_FORMAT, "").lower() == "json"
            os.write(2, signal_line("aborted while loading its modules", "ERROR", as_json))
            os._exit(130)
        frame = frame.f_back
