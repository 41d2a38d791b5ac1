"""An HLS master playlist: only the variant read is downloaded."""

import collections
import functools
import http.server
import subprocess
import threading

from segstream.connectors.av_input import AVInput
from tests.live_servers import FFMPEG, QuietHandler


def test_a_master_playlist_s_other_variants_are_not_downloaded(tmp_path):
    # Found probing HLS cameras: every variant's segments were downloaded while one was decoded,
    # doubling each camera's traffic
    for variant, size in (("hi", "320x240"), ("lo", "160x120")):
        (tmp_path / variant).mkdir()
        subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=10", "-t", "12",
                        "-c:v", "libx264", "-g", "10", "-f", "hls", "-hls_time", "1", "-hls_playlist_type", "vod",
                        str(tmp_path / variant / "index.m3u8")], check=True)
    (tmp_path / "master.m3u8").write_text(
        "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=320x240\nhi/index.m3u8\n"
        "#EXT-X-STREAM-INF:BANDWIDTH=200000,RESOLUTION=160x120\nlo/index.m3u8\n")
    requests = collections.Counter()

    class Counting(QuietHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            requests[self.path.split("/")[1]] += 1
            return super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Counting, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        source = AVInput(f"http://127.0.0.1:{server.server_address[1]}/master.m3u8")
        try:
            pictures = [p for p, _ in zip(source.pictures(), range(100))]
        finally:
            source.close()
    finally:
        server.shutdown()
        server.server_close()
    assert len(pictures) == 100 and pictures[0].image.shape[:2] == (240, 320)
    assert requests["hi"] >= 11, requests  # its playlist and ten segments
    assert requests["lo"] <= 4, requests  # its playlist and what probing the streams read
