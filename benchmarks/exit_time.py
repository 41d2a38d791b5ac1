"""How long `segstream run` takes to exit after its summary line: a 20-frame synthetic run into
the files sink, started as a user starts it, timed from the moment the summary line arrives to
the process's end.

    python benchmarks/exit_time.py --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """sources:
  - {{name: cam0, type: synthetic, width: 96, height: 64, fps: 20, num_frames: 20}}
model: {{device: cpu, precision: fp32}}
ops: {{http: null}}
sinks: {{redis: {{enabled: false}}, files: {{enabled: true, dir: '{out}'}}}}
"""


def after_summary(config: Path) -> float:
    """Seconds from the run's summary line to its exit."""
    process = subprocess.Popen([sys.executable, "-m", "segstream", "run", str(config)], stderr=subprocess.PIPE,
                               text=True)
    summary = None
    for line in process.stderr:
        if line.startswith("segstream: done:"):
            summary = time.monotonic()
    process.wait()
    if process.returncode != 0 or summary is None:
        raise SystemExit(f"the run failed (exit {process.returncode})")
    return time.monotonic() - summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "run.yaml"
        config.write_text(CONFIG.format(out=Path(folder) / "out"))
        times = [after_summary(config) for _ in range(args.repeat)]
    print(f"summary to exit: median {statistics.median(times):.2f} s, "
          f"min {min(times):.2f} s, max {max(times):.2f} s over {args.repeat} runs")


if __name__ == "__main__":
    main()
