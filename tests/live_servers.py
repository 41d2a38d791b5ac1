"""Real servers on loopback for the live-source tests: an RTSP camera (tests/rtsp_server.py
relaying ffmpeg's RTP), ffmpeg streaming over HTTP, HLS, UDP and TCP, an MJPEG IP camera, and a
server that accepts connections and never says a word."""

from __future__ import annotations

import contextlib
import functools
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import CollectingSink

FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
RTSP_SERVER = Path(__file__).with_name("rtsp_server.py")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.05) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(poll_s)


# each encoder's options for a live sender (x265 is quiet only when told in its own parameters)
_ENCODER_ARGS = {
    "libx264": ["-preset", "ultrafast", "-tune", "zerolatency"],
    "libx265": ["-preset", "ultrafast", "-tune", "zerolatency", "-x265-params", "log-level=error"],
}


def pattern_args(size: str = "160x120", fps: int = 25, gop: int | None = None, codec: str = "libx264",
                 pattern: str = "testsrc2") -> list[str]:
    """ffmpeg arguments: a test pattern (moving by default; ``color=c=red`` a solid one), H.264
    (or ``codec``) without B-frames, real time."""
    joined = ":" if "=" in pattern else "="  # a pattern given with options of its own
    return [
        "-re", "-f", "lavfi", "-i", f"{pattern}{joined}size={size}:rate={fps}",
        "-c:v", codec, *_ENCODER_ARGS.get(codec, []), "-g", str(gop or fps), "-bf", "0", "-pix_fmt", "yuv420p",
    ]


class RtspCamera:
    """tests/rtsp_server.py in its own process group: ``kill()`` takes server and ffmpeg down at
    once, as a camera losing power would; ``start()`` brings it back (maybe at another size).
    ``audio``: it sends an audio track too; ``step_clock()`` steps its wall clock (the time its
    RTCP sender reports give) by ``clock_step_s``."""

    def __init__(self, workdir: Path, port: int | None = None, size: str = "160x120", fps: int = 25,
                 user: str | None = None, password: str | None = None, audio: bool = False,
                 clock_step_s: float = 0.0):
        self.workdir = workdir
        self.port = port or free_port()
        self.size, self.fps = size, fps
        self.user, self.password = user, password
        self.audio, self.clock_step_s = audio, clock_step_s
        self.process: subprocess.Popen | None = None

    def url(self, user: str | None = None, password: str | None = None, path: str = "cam") -> str:
        credentials = f"{user}:{password}@" if user is not None else ""
        return f"rtsp://{credentials}127.0.0.1:{self.port}/{path}"

    def start(self, size: str | None = None) -> RtspCamera:
        self.size = size or self.size
        command = [sys.executable, str(RTSP_SERVER), "--port", str(self.port), "--size", self.size, "--fps", str(self.fps)]
        if self.user is not None:
            command += ["--user", self.user, "--password", self.password or ""]
        if self.audio:
            command.append("--audio")
        if self.clock_step_s:
            command += ["--clock-step", str(self.clock_step_s)]
        log = open(self.workdir / f"rtsp-{self.port}.log", "ab")
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
            env={**os.environ, "TMPDIR": str(self.workdir)},
        )
        line = self.process.stdout.readline().decode()
        if "listening" not in line:
            self.kill()
            raise AssertionError(f"the RTSP test server did not start: {line!r}")
        return self

    def step_clock(self) -> None:
        assert self.process is not None and self.clock_step_s, "a camera started with a clock_step_s"
        os.kill(self.process.pid, signal.SIGUSR1)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def __enter__(self) -> RtspCamera:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


class FfmpegStream:
    """ffmpeg as a camera that streams to or serves ``output`` (ffmpeg's output arguments)."""

    def __init__(self, output: list[str], size: str = "160x120", fps: int = 25, gop: int | None = None,
                 codec: str = "libx264", pattern: str = "testsrc2"):
        arguments = pattern_args(size, fps, gop, codec, pattern)
        self.command = [FFMPEG, "-nostdin", "-hide_banner", "-loglevel", "error", *arguments, *output]
        self.process: subprocess.Popen | None = None

    def start(self) -> FfmpegStream:
        self.process = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, start_new_session=True)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> FfmpegStream:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


class SilentServer:
    """Accepts TCP connections and never sends a byte; ``connections`` counts them."""

    def __init__(self):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[tuple[float, socket.socket]] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def connections(self) -> int:
        return len(self.accepted)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.accepted.append((time.monotonic(), sock))
            self._accepted(sock)

    def _accepted(self, sock: socket.socket) -> None:
        """What happens to a connection once accepted: nothing, here (it stays open and silent)."""

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.listener.close()
        for _, sock in self.accepted:
            sock.close()


class HangUpServer(SilentServer):
    """Accepts TCP connections and closes each at once (a camera at its session limit)."""

    def _accepted(self, sock: socket.socket) -> None:
        sock.close()


class StaticHttpServer:
    """Serves a folder over HTTP on loopback (for HLS playlists and segments ffmpeg writes)."""

    def __init__(self, folder: Path):
        handler = functools.partial(QuietHandler, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StaticHttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


class MjpegCamera:
    """An IP camera that serves MJPEG over HTTP (``multipart/x-mixed-replace``, a JPEG a part with
    its Content-Length) at ``fps``, each frame a moving square; with ``cut_every`` N, every Nth
    frame is sent cut short at half its bytes (a camera's frame over a dropped link); ``pad``
    zero bytes follow each JPEG's end (as some cameras send them). ``sent``
    counts the frames sent, ``cut`` those cut short."""

    BOUNDARY = "camframe"

    def __init__(self, fps: float = 10, size: tuple[int, int] = (160, 120), cut_every: int = 0, pad: int = 0):
        self.fps, self.size, self.cut_every, self.pad = fps, size, cut_every, pad
        self.sent = self.cut = 0
        camera = self

        class Handler(QuietHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={MjpegCamera.BOUNDARY}")
                self.end_headers()
                with contextlib.suppress(OSError):  # the reader went away
                    camera._serve(self.wfile)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/mjpg/video.mjpg"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _serve(self, out) -> None:
        import cv2
        import numpy as np

        width, height = self.size
        started = time.monotonic()
        n = 0
        while not self._stop.is_set():
            image = np.full((height, width, 3), 60, np.uint8)
            x = (n * 7) % (width - 20)
            image[40:60, x:x + 20] = (0, 0, 230)
            data = cv2.imencode(".jpg", image)[1].tobytes()
            n += 1
            if self.cut_every and n % self.cut_every == 0:
                data, self.cut = data[: len(data) // 2], self.cut + 1
            data += bytes(self.pad)  # a camera's padding after the end-of-image marker
            out.write(f"--{self.BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                      + data + b"\r\n")
            out.flush()
            self.sent += 1
            time.sleep(max(0.0, started + n / self.fps - time.monotonic()))

    def __enter__(self) -> MjpegCamera:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


class RecordingSink(CollectingSink):
    """The tests' collecting sink, with the results and state events of one source at hand."""

    def states(self, source: str | None = None) -> list[str]:
        return [e.data["state"] for e in list(self.events) if e.kind == "state" and source in (None, e.source)]

    def of(self, source: str) -> list:
        return [r for r in list(self.results) if r.source == source]


def run_in_thread(runtime) -> tuple[threading.Thread, dict]:
    """Start ``runtime.run()`` on a thread; the dict gets ``report`` or ``error`` when it ends."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["report"] = runtime.run()
        except BaseException as error:  # the test asserts on it
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome
