"""Protocols that the FFmpeg inside PyAV's wheels lacks (SRT, RIST), read through the system's
``ffmpeg``: it receives the stream and hands its packets on unchanged (``-c copy``, timestamps
kept) as MPEG-TS through a pipe, which PyAV then demuxes and decodes as any other input.

PyAV's wheels bundle an FFmpeg built without libsrt; Debian's ``ffmpeg`` package (and most
distributions') has it. Only the receiving runs in the ``ffmpeg`` process: decoding, timeouts
and reconnecting stay where they are for every other stream (``AVInput``, ``LiveSource``). A
read from the pipe blocks until ``ffmpeg`` writes or exits, so the relay has its own deadlines
(open, then read, as FFmpeg's own) after which it ends the ``ffmpeg`` process; the read then
returns and the input reports the timeout.
"""

from __future__ import annotations

import atexit
import collections
import functools
import re
import shutil
import subprocess
import threading
import time
import weakref

from segstream.connectors.threads import NamedThread
from segstream.connectors.urls import url_scheme

RELAYED_SCHEMES = ("srt", "rist")
# Options of the input that PyAV's demuxer of the pipe takes too; the rest are the protocol's
# (timeouts, SRT's passphrase, latency, streamid) and go to ``ffmpeg`` only.
_DEMUXER_OPTIONS = ("analyzeduration", "probesize", "fpsprobesize")
_RUNNING: weakref.WeakSet[FFmpegRelay] = weakref.WeakSet()  # relays not closed yet, ended at exit
_LIBSRT = re.compile(r"\d\d:\d\d:\d\d\.\d+/SRT:\S+ ")  # libsrt's own log lines, time-stamped
_CONTEXT = re.compile(r"^\[[\w:-]+ @ 0x[0-9a-f]+\] ")  # "[srt @ 0x55db...] ": FFmpeg's object address, no news to a user


def _generic(line: str) -> bool:
    """Whether an ffmpeg error line says only that something failed (a line before it says what):
    "Input/output error", and from ffmpeg 6 on "Error opening input file srt://...." and
    "[in#0] Error opening input: ..."."""
    return line.endswith("Input/output error") or line.startswith(("Error opening input", "[in#"))


def refused_caller(thread: threading.Thread) -> str | None:
    """Why a listening relay that ``thread`` started, still waiting, refused a caller (its
    passphrase: "Incorrect passphrase"); None when it refused none."""
    return next((r.refused for r in list(_RUNNING) if r.started_by is thread and r.refused), None)


@atexit.register
def _end_running() -> None:
    """At exit, the relays whose sessions were cut short (their reads still blocked): their
    ffmpeg must not outlive segstream holding a port."""
    for relay in list(_RUNNING):
        relay._end()


@functools.lru_cache(maxsize=None)
def _ffmpeg_protocols(ffmpeg: str) -> frozenset[str]:
    """The input protocols of the ``ffmpeg`` program at that path (empty when it does not run)."""
    try:
        listing = subprocess.run([ffmpeg, "-hide_banner", "-protocols"], capture_output=True, text=True,
                                 timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    inputs = listing.split("Input:", 1)[-1].split("Output:", 1)[0]
    return frozenset(line.strip() for line in inputs.splitlines() if line.strip())


def relay_program(target: str) -> str | None:
    """The ``ffmpeg`` on PATH when it can read ``target``'s protocol and that protocol is one this
    module relays; else None."""
    scheme = url_scheme(target)
    if scheme not in RELAYED_SCHEMES:
        return None
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None or scheme not in _ffmpeg_protocols(ffmpeg):
        return None
    return ffmpeg


def demuxer_options(options: dict[str, str]) -> dict[str, str]:
    """Of an input's FFmpeg options, those PyAV's MPEG-TS demuxer of the pipe takes as well."""
    return {k: v for k, v in options.items() if k in _DEMUXER_OPTIONS}


class FFmpegRelay:
    """One ``ffmpeg`` process receiving ``target`` and writing its video as MPEG-TS to a pipe;
    ``read`` (what PyAV reads from) gives its bytes. ``timeout`` = (open, read) seconds: waiting in
    ``read`` longer than the first before the first byte, or the second after it, ends the
    process, and ``timed_out`` says which. ``reason()`` is ``ffmpeg``'s most telling error line
    with the URL in it replaced by ``shown`` (it may hold credentials). The process is started
    by the thread that reads it (``pdeathsig`` follows that thread)."""

    def __init__(self, ffmpeg: str, target: str, shown: str, options: dict[str, str],
                 timeout: tuple[float, float]):
        self.target = target
        self.shown = shown
        self.timeout = timeout
        self.timed_out: str | None = None  # "open" or "read" when a deadline ended the process
        self._errors: collections.deque[str] = collections.deque(maxlen=8)
        self._last_data: float | None = None
        self._waiting_since: float | None = None  # inside read() with nothing yet, since when
        self._closed = threading.Event()
        self._stopped = False  # ended by us (close, exit) before it ended by itself: no failure of the stream's
        self.started_by = threading.current_thread()
        self.listening = "mode=listener" in target or options.get("mode") == "listener"
        self.refused: str | None = None  # a listener's: libsrt's reason for refusing a caller ("Incorrect passphrase")
        # setpriv (util-linux): ffmpeg is killed with the thread that started it, even when
        # segstream itself is killed (-9) and nothing else could end it
        setpriv = shutil.which("setpriv")
        command = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
        command += [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error"]
        for key, value in options.items():
            command += [f"-{key}", str(value)]
        # packets as they come: no muxing delay, each one flushed into the pipe at once
        command += ["-i", target, "-map", "0:v", "-c", "copy", "-copyts", "-muxdelay", "0", "-muxpreload", "0",
                    "-flush_packets", "1", "-f", "mpegts", "pipe:1"]
        # its own session: a signal to segstream's process group (Ctrl-C, timeout(1)) reaches segstream,
        # which stops it; hit directly, it died first and its "Immediate exit requested" read as the stream's failure
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, start_new_session=True)
        self._stderr = NamedThread(target=self._read_errors, name="segstream-relay-stderr", daemon=True)
        self._stderr.start()
        self._watchdog = NamedThread(target=self._watch, name="segstream-relay-watchdog", daemon=True)
        self._watchdog.start()
        _RUNNING.add(self)

    def read(self, size: int = -1) -> bytes:
        # only time spent waiting in here counts against the deadlines: a consumer that holds
        # the reads back (back-pressure) is no silence of the stream
        self._waiting_since = time.monotonic()
        try:
            data = self.process.stdout.read1(size if size > 0 else 65536)
        finally:
            self._waiting_since = None
        if data:
            self._last_data = time.monotonic()
        return data

    def reason(self) -> str | None:
        """Why ``ffmpeg`` failed (its most telling error line, or how it exited); None while it
        runs, when it ended without error, or when we ended it (a deadline, a stop)."""
        code = self.process.poll()
        if code is None or code == 0 or self.timed_out is not None or self._stopped:
            return None
        telling = [line for line in self._errors if not _generic(line)]
        if telling or self._errors:
            return (telling or list(self._errors))[-1]
        return f"ffmpeg was killed by signal {-code}" if code < 0 else f"ffmpeg exited with status {code}"

    def close(self) -> None:
        self._closed.set()
        self._end()
        _RUNNING.discard(self)
        self.process.stdout.close()
        self._stderr.join(timeout=2)
        self._watchdog.join(timeout=2)

    def _end(self) -> None:
        if self.process.poll() is None:
            self._stopped = True
            self.process.terminate()
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _watch(self) -> None:
        while not self._closed.wait(0.1):
            if self.process.poll() is not None:
                return
            waiting = self._waiting_since
            if waiting is None:
                continue
            waited = time.monotonic() - max(waiting, self._last_data or waiting)
            phase, limit = ("open", self.timeout[0]) if self._last_data is None else ("read", self.timeout[1])
            if waited <= limit:
                continue
            self.timed_out = phase
            self._end()  # the blocked read returns: the pipe ends
            return

    def _read_errors(self) -> None:
        for raw in iter(self.process.stderr.readline, b""):
            line = raw.decode("utf-8", "replace").strip()
            if _LIBSRT.match(line):  # "05:33:46.693540/SRT:RcvQ:w1!W:SRT.cn: processX: ...: Incorrect passphrase"
                line = line.rsplit(": ", 1)[-1]
                if self.listening and "passphrase" in line.lower():  # "1010 - Incorrect passphrase"
                    self.refused = re.sub(r"^\d+ - ", "", line)
            line = _CONTEXT.sub("", line, count=1)
            if line:  # "<url>: Connection timed out": the URL is the input's, named already
                self._errors.append(line.removeprefix(f"{self.target}: ").replace(self.target, self.shown))
        self.process.stderr.close()
