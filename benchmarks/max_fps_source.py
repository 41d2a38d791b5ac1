"""What a source's max_fps saves where it acts: a 640x480 25 fps H.264 file read by FileSource
alone, every frame against max_fps 5, in alternating runs; process CPU time (the decoder's
threads included) and wall time of reading it through.

    python benchmarks/max_fps_source.py --seconds 20 --repeat 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from segstream.connectors.file_source import FileSource


def make_clip(path: Path, seconds: int, fps: int = 25) -> None:
    """Moving bars, GOP 25, no B-frames: a camera's stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"g": "25", "bf": "0", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        x = np.arange(640)
        for i in range(seconds * fps):
            row = ((x + 8 * i) // 40 % 8 * 32).astype(np.uint8)
            image = np.broadcast_to(np.stack([row, row[::-1], 255 - row], -1), (480, 640, 3)).copy()
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def read_through(path: Path, max_fps: float | None) -> tuple[int, float, float]:
    source = FileSource("clip", str(path), max_fps=max_fps)
    cpu, wall = time.process_time(), time.perf_counter()
    kept = sum(1 for _ in source.frames())
    return kept, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        clip = Path(folder) / "clip.mp4"
        make_clip(clip, args.seconds)
        total = args.seconds * 25
        rows: dict[str, list[tuple[int, float, float]]] = {"none": [], "5": []}
        for _ in range(args.repeat):  # alternating, so that the machine's drift hits both alike
            rows["none"].append(read_through(clip, None))
            rows["5"].append(read_through(clip, 5.0))
    print("max_fps  kept / skipped   CPU s          wall s")
    for name, runs in rows.items():
        kept = runs[0][0]
        print(f"{name:>7}  {kept:4d} / {total - kept:<4d}     "
              f"{', '.join(f'{r[1]:.2f}' for r in runs):<14} {', '.join(f'{r[2]:.2f}' for r in runs)}")


if __name__ == "__main__":
    main()
