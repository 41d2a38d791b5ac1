"""What converting decoded frames to RGB costs, by the kind of video (``ColourConversion``,
``Deinterlacer``), beside PyAV's plain conversion (``to_ndarray(format="rgb24")``, what every
frame had before: BT.601 for untagged video, HDR's code values as they are, woven fields).

    python benchmarks/colour_conversion.py --frames 50 --rounds 9

Makes 1080p25 clips with ffmpeg (SDR 8-bit BT.709 tagged, untagged, 10-bit BT.709, HDR10 PQ,
HLG, 1080i), decodes each clip's frames once, then converts them the plain way and segstream's
way in interleaved rounds, each first in every other one (on a shared machine, the two see the
same load), and prints the median process CPU milliseconds per frame (swscale's threads
included) of each, and their ratio. segstream's way goes the way a source's frames go: a deinterlacer in ``auto`` mode, the
``ColourConversion`` with a swscale context lent for the input, its first frame converted
before the rounds: it pays for an HDR clip's tone-mapping tables (seconds, once per input),
printed apart.
Not a test: record the output in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import av
from segstream.connectors.colour import ColourConversion
from segstream.connectors.deinterlace import Deinterlacer

BT709 = ["-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv"]
HDR = ["-colorspace", "bt2020nc", "-color_primaries", "bt2020", "-color_range", "tv"]
X265 = ["-c:v", "libx265", "-x265-params", "log-level=error", "-preset", "ultrafast"]
X264 = ["-c:v", "libx264", "-crf", "20", "-preset", "veryfast"]
CLIPS = {
    "sdr 8-bit bt709 tagged": (["format=yuv420p"], BT709 + X264),
    "sdr 8-bit untagged": (["format=yuv420p"], X264),
    "sdr 10-bit bt709": (["format=yuv420p10le"], BT709 + X265),
    "hdr pq": (["scale=out_color_matrix=bt2020:out_range=tv", "format=yuv420p10le"],
               HDR + ["-color_trc", "smpte2084"] + X265),
    "hdr hlg": (["scale=out_color_matrix=bt2020:out_range=tv", "format=yuv420p10le"],
                HDR + ["-color_trc", "arib-std-b67"] + X265),
    "1080i tff": (["interlace=scan=tff", "setfield=tff", "format=yuv420p"],
                  BT709 + X264 + ["-flags", "+ilme+ildct", "-x264-params", "tff=1", "-field_order", "tt"]),
}


def make(folder: Path, name: str, frames: int) -> Path:
    filters, output = CLIPS[name]
    path = folder / (name.replace(" ", "_") + ".mp4")
    rate = 50 if "1080i" in name else 25  # interlace takes two frames for one
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                    "-i", f"testsrc2=size=1920x1080:rate={rate}", "-frames:v", str(frames * (rate // 25)),
                    "-vf", ",".join(filters), *output, str(path)], check=True)
    return path


def decode(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def plain(frames: list[av.VideoFrame]) -> float:
    started = time.process_time()
    for frame in frames:
        frame.to_ndarray(format="rgb24")
    return (time.process_time() - started) / len(frames) * 1000


def segstream_way(frames: list[av.VideoFrame], colour: ColourConversion, reformatter) -> float:
    fields = Deinterlacer("auto").for_input("clip")
    started = time.process_time()
    for frame in frames:
        for whole in fields.frames(frame):
            colour.rgb(whole, None, reformatter, "clip")
    for whole in fields.flush():
        colour.rgb(whole, None, reformatter, "clip")
    return (time.process_time() - started) / len(frames) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--clips", nargs="*", default=list(CLIPS), choices=list(CLIPS))
    args = parser.parse_args()
    print(f"| clip (1920x1080, {args.frames} frames) | plain, CPU ms/frame | segstream, CPU ms/frame | ratio "
          "| segstream's first frame, CPU s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.clips:
            frames = decode(make(Path(folder), name, args.frames))
            colour = ColourConversion()  # a source's, its tables built before the rounds (as an input's first frame does)
            reformatter = colour.lend()
            started = time.process_time()
            colour.rgb(frames[0], None, reformatter, "clip")
            first_s = time.process_time() - started
            rounds = []
            for i in range(args.rounds):  # each goes first in every other round
                if i % 2:
                    rounds.append((plain(frames), segstream_way(frames, colour, reformatter)))
                else:
                    after = segstream_way(frames, colour, reformatter)
                    rounds.append((plain(frames), after))
            before = statistics.median(p for p, _ in rounds)
            after = statistics.median(s for _, s in rounds)
            print(f"| {name} | {before:.2f} | {after:.2f} | {after / before:.2f} | {first_s:.2f} |", flush=True)
            del frames


if __name__ == "__main__":
    main()
