"""The terminal: what text from others may hold when it is written there, how long a time reads,
and the size progress bars are drawn at."""

from __future__ import annotations

import os
import sys

# C0 and C1 controls, DEL, and the bidirectional overrides and isolates that reorder what a terminal
# shows: text from others (a stream's entries, a camera's HTTP reason phrase, a file's name) written
# raw could clear the screen, colour or move the cursor, retitle the window, or fake lines. Not the
# left-to-right and right-to-left marks, ordinary in Hebrew and Arabic names (found probing an upgrade).
_CONTROLS = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
             for c in [*range(0x20), *range(0x7f, 0xa0), *range(0x202a, 0x202f), *range(0x2066, 0x206a)]}
_IN_LINES = {c: shown for c, shown in _CONTROLS.items() if c not in (0x09, 0x0a)}  # tabs and line breaks kept


def terminal_safe(text: str) -> str:
    """``text`` with its control characters escaped (``\\x1b``), line breaks too: one line of it."""
    return text.translate(_CONTROLS)


def printable(text: str) -> str:
    """``text`` with its control characters escaped (``\\x1b``), its line breaks and tabs kept (a
    log record's, a table's)."""
    return text.translate(_IN_LINES)


def span(seconds: float) -> str:
    """A time for people: ``4.2 s``, ``3 min 20 s``, ``1 h 5 min``, ``2 d 3 h``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"


BAR_EVERY_S = 1.0  # a bar is drawn again at most once a second


def bar_shape(every_s: float = BAR_EVERY_S) -> dict:
    """tqdm's size and pace options for a bar on stderr: drawn again at most every ``every_s``,
    a second by default (tqdm's 0.1 s redrew a batch's bars 7 to 12 times a second, which a screen reader or a
    braille display follows, found probing), its width followed, except on a terminal that
    reports no size (``script``, some ``docker exec -t``, CI runners' pseudo-terminals), where
    tqdm took 0 rows for a screen too small for any bar and drew none (found probing a batch):
    there ``COLUMNS`` and ``LINES``, else 100 x 24."""
    try:
        columns, lines = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):  # not a terminal: the bar is off, or goes to a file
        return {"dynamic_ncols": True, "mininterval": every_s}
    if columns and lines:
        return {"dynamic_ncols": True, "mininterval": every_s}

    def given(name: str, otherwise: int) -> int:
        value = os.environ.get(name, "")
        return int(value) if value.isdigit() and int(value) > 0 else otherwise
    return {"ncols": given("COLUMNS", 100), "nrows": given("LINES", 24), "mininterval": every_s}


def bars_off() -> bool | None:
    """tqdm's ``disable`` for a bar on stderr that the command's options leave on: None (tqdm's
    own rule: drawn on a terminal only), True on a terminal that says it cannot redraw a line
    (``TERM=dumb``: a screen reader's console, Emacs' shell), which got the bars' cursor movements."""
    return True if os.environ.get("TERM") == "dumb" else None


def bars_drawn() -> bool:
    """Whether a bar on stderr is drawn (``bars_off``'s rule)."""
    return bars_off() is None and sys.stderr.isatty()
