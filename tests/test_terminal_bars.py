"""Progress bars on a terminal that reports no size (``script``, some ``docker exec -t``, CI
runners' pseudo-terminals): tqdm took 0 rows for a screen too small for any bar and drew none."""

from __future__ import annotations

import os
import pty
import select
import sys
from pathlib import Path

from segstream.pipeline.batch import BatchProgress, VideoJob, VideoOutcome


def test_a_batch_draws_its_bars_on_a_terminal_of_no_size(monkeypatch):
    terminal, its_end = pty.openpty()  # a new pseudo-terminal: 0 rows, 0 columns until told otherwise
    assert os.get_terminal_size(its_end) == (0, 0)
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("LINES", raising=False)
    try:
        with os.fdopen(os.dup(its_end), "w") as stderr:
            monkeypatch.setattr(sys, "stderr", stderr)
            progress = BatchProgress([VideoJob(Path("a.mp4"), "a", frames=10), VideoJob(Path("b.mp4"), "b", frames=5)],
                                     enabled=True)
            progress.advance("a", 4)
            progress.overall.refresh()
            # a truncated file gives fewer frames than its container claims: the overall bar still ends at 100%
            progress.ended_video(VideoOutcome(progress.jobs["a"], "done", frames=4))
            progress.advance("b", 5)
            progress.ended_video(VideoOutcome(progress.jobs["b"], "done", frames=5))
            progress.overall.refresh()
            progress.close()
            stderr.flush()
        raw = b""
        while select.select([terminal], [], [], 0.5)[0]:  # all of it: a read gives what one write left
            raw += os.read(terminal, 65536)
        drawn = raw.decode(errors="replace")
    finally:
        os.close(terminal)
        os.close(its_end)
    assert "batch 0/2 videos" in drawn and "4/15" in drawn, repr(drawn)
    assert "batch 2/2 videos: 100%" in drawn and "9/9" in drawn, repr(drawn)
