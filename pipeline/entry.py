"""The ``segstream`` console command: the CLI's modules load inside it, so that Ctrl-C while they
load (pydantic, redis, the config schema) ends quietly, as it does once the command runs."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from segstream.pipeline.cli import main as cli_main
    except KeyboardInterrupt:
        print("segstream: stopped before starting", file=sys.stderr)
        return 0
    return cli_main()
