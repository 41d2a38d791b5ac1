"""The terminal that progress bars are drawn on."""

from __future__ import annotations

import os
import sys


def bar_shape() -> dict:
    """tqdm's size options for a bar on stderr: its width followed, except on a terminal that
    reports no size (``script``, some ``docker exec -t``, CI runners' pseudo-terminals), where
    tqdm took 0 rows for a screen too small for any bar and drew none (found probing a batch):
    there ``COLUMNS`` and ``LINES``, else 100 x 24."""
    try:
        columns, lines = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):  # not a terminal: the bar is off, or goes to a file
        return {"dynamic_ncols": True}
    if columns and lines:
        return {"dynamic_ncols": True}

    def given(name: str, otherwise: int) -> int:
        value = os.environ.get(name, "")
        return int(value) if value.isdigit() and int(value) > 0 else otherwise
    return {"ncols": given("COLUMNS", 100), "nrows": given("LINES", 24)}
