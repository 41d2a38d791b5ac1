"""The ``segstream`` console command. Ctrl-C (or SIGTERM) while a module loads (the CLI's own, or torch's when a
command first needs it) ends the command at once, quietly, with 130 — but for ``run`` and ``demo``,
whose first stop drains: that one waits for the run's handler, and the run stops before it begins
(exit 0), as it does for a stop later in its start-up. A KeyboardInterrupt raised
inside an import leaves the module half-loaded (numpy then refuses to load again) or, raised
inside torch's C++ start-up, aborts the interpreter. Anywhere else Ctrl-C behaves as usual, and
commands that drain on a signal (run, batch) install their own handler, whose abort (a second
signal) does the same inside an import."""

from __future__ import annotations

import codecs
import contextlib
import gc
import os
import signal
import sys
import time


# What stops a command: Ctrl-C, SIGTERM, and SIGHUP (the terminal or SSH session that started it
# went away): without a handler SIGHUP killed a run on the spot, undrained and unsaid.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

def stop_signals() -> tuple[int, ...]:
    """``STOP_SIGNALS`` but SIGHUP where it is ignored already: ``nohup segstream run`` outlives
    its terminal, as nohup's user means it to."""
    return tuple(s for s in STOP_SIGNALS if not (s == signal.SIGHUP and signal.getsignal(s) is signal.SIG_IGN))


# The signal that aborted the command through ``_interrupt`` (the exit status is 128 + it).
aborted_by: int | None = None
# Whether this process is the console command (``main``), not a program calling segstream: only
# the command's process is segstream's to end (stuck threads) and to shield (signals at its exit).
console = False
# Whether the console command started with a controlling terminal: without one (a service:
# systemd, a supervisor), a SIGHUP is no terminal hanging up but a reload asked for.
had_terminal = True


class StreamClosed(OSError):
    """A command wrote to standard output, or read standard input, that its caller closed (``>&-``,
    ``<&-``)."""


class Closed:
    """Standard output or input that the caller closed: Python leaves ``None``, and ``print`` to
    None writes nothing (found probing bad input: ``segstream schema >&-`` exited 0 with its
    output lost; ``tail`` raised AttributeError). Using it says so instead."""

    def __init__(self, name: str, use: str):
        self.name, self.use = name, use

    def _closed(self, *_args, **_kwargs):
        raise StreamClosed(f"its standard {self.name} is closed ({self.use}) — give it a file, a pipe or /dev/null")

    write = writelines = read = readline = readlines = fileno = _closed
    encoding, errors, closed = "utf-8", "strict", False  # (a write says it is closed: not skipped)

    def flush(self) -> None:  # (the interpreter's own at exit: nothing to say then)
        pass

    def isatty(self) -> bool:
        return False


def controlling_terminal() -> bool:
    """Whether this process has a controlling terminal (``/dev/tty`` opens)."""
    try:
        os.close(os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY))
        return True
    except OSError:
        return False


_PLAIN_PUNCTUATION = "segstream.plain_punctuation"
# the punctuation segstream's own messages use (not quotes, which a file's name may hold)
_ASCII_PUNCTUATION = {"\u2014": "-", "\u2013": "-", "\u2192": "->", "\u2190": "<-", "\u2026": "...", "\u00d7": "x",
                      "\u2265": ">=", "\u2264": "<=", "\u2248": "~"}


def _plain_punctuation(error: UnicodeError) -> tuple[str, int]:
    """A codec error handler: what an output's encoding cannot write, its ASCII look-alike where
    it is punctuation, else escaped (``backslashreplace``)."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    text = error.object[error.start:error.end]
    return "".join(_ASCII_PUNCTUATION.get(c) or c.encode("ascii", "backslashreplace").decode() for c in text), error.end


def main() -> int:
    global console, had_terminal
    console = True
    had_terminal = controlling_terminal()
    # SIGTERM as Ctrl-C: without a handler it killed a command on the spot, leaving what it had
    # started (bench's embedded Redis) running, and said nothing
    for signum in stop_signals():
        signal.signal(signum, _interrupt)
    # a terminal or pipe whose encoding lacks a character (a class name in Chinese, a path with é,
    # under LANG=C or a Latin-1 locale) gets it escaped, as standard error does: printing it raised
    # UnicodeEncodeError from tail and validate --print (found by an i18n probe)
    # On standard error, the punctuation of messages (dashes, arrows, ellipses) becomes its ASCII
    # look-alike there, not an escape a screen reader spells out ("\u2014 start Redis", found probing
    # under Latin-1); standard output's data keeps its escapes (a name's ’ printed as ' names another file).
    codecs.register_error(_PLAIN_PUNCTUATION, _plain_punctuation)
    for stream, errors in ((sys.stdout, "backslashreplace"), (sys.stderr, _PLAIN_PUNCTUATION)):
        with contextlib.suppress(AttributeError, ValueError):  # a stream replaced by one of another kind
            stream.reconfigure(errors=errors)
    for fd in (0, 1):  # closed: /dev/null holds the number, which a config, a socket or a child's stdin would take
        try:
            os.fstat(fd)
        except OSError:
            with contextlib.suppress(OSError):
                if (held := os.open(os.devnull, os.O_RDWR)) != fd:
                    os.dup2(held, fd)
                    os.close(held)
    if sys.stdout is None:
        sys.stdout = Closed("output", ">&-")
    if sys.stdin is None:
        sys.stdin = Closed("input", "<&-")
    try:
        from segstream.pipeline.cli import main as cli_main

        code = cli_main()
        from segstream.pipeline.cli import leave_past_stuck_threads

        leave_past_stuck_threads(code)  # the console command only: a program calling cli.main goes on
        # The command's work is written and closed; what is left is finalising the interpreter, whose
        # last garbage collection walks every object torch's import made (1-2 s on a busy machine).
        gc.freeze()
        return code
    except ImportError as error:
        if "failed to map segment" not in str(error):  # else a broken install: its traceback
            raise
        os.write(2, _address_space_line(error))
        return 1


def _address_space_line(error: ImportError) -> bytes:
    """What a library that could not be mapped within ``ulimit -v`` (RLIMIT_AS) says: torch and
    FFmpeg map gigabytes of address space they never touch, so the limit, not memory, ran out."""
    import resource

    library = str(error).split(":")[0].strip() or "a library"
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft // 2**20} MiB"
    message = (f"error: could not load {library} within this process's address-space limit (`ulimit -v`: {limit}) "
               "— raise or lift `ulimit -v` (torch alone maps several GB it never uses); to cap memory, use "
               "the container's memory limit instead")
    return _line(message, "ERROR")


# Commands whose first stop signal drains (exit 0): one that comes before the run installs its own
# handler waits here for it, and the run then stops before it begins.
DRAINING_COMMANDS = ("run", "demo")
# That first signal, until the run's handler takes it up, and when it came (time.monotonic()).
pending_stop: int | None = None
pending_since = 0.0
# The same signal again within this many seconds of the first is that one sent twice (GNU timeout
# signals its command, then its process group), not a second stop: as the run's handler has it.
SAME_SIGNAL_S = 0.2


def _interrupt(signum, frame) -> None:
    global aborted_by, pending_stop, pending_since
    if pending_stop == signum and time.monotonic() - pending_since < SAME_SIGNAL_S:
        return
    if pending_stop is None and _command() in DRAINING_COMMANDS:
        # a supervisor's stop during start-up is a stop like any other, not an abort (it was 130/143):
        # no import is cut in half, and the run, once its handler is in place, begins nothing
        pending_stop, pending_since = signum, time.monotonic()
        name = signal.Signals(signum).name
        _write(_line(f"{name}: stopping once the command has started ({name} again aborts)", "INFO"))
        return
    abort_if_loading(frame, signum)
    aborted_by = signum
    raise KeyboardInterrupt


# segstream's own options, each taking a value, which may come before the subcommand
_GLOBAL_OPTIONS = ("--log-format", "--log-level")


def _command() -> str | None:
    """The console command's subcommand (``run`` in ``segstream --log-format json run x.yaml``):
    the first argument that is no option nor an option's value."""
    args = iter(sys.argv[1:])
    for arg in args:
        if arg in _GLOBAL_OPTIONS:
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def _line(message: str, level: str) -> bytes:
    """``message`` as the command's stderr lines are (``segstream: ...``, or a JSON object with
    JSON logs), from a signal handler or before ``logs`` is loaded (or while it is: the handlers
    are in before it); JSON as SEGSTREAM_LOG_FORMAT says, or --log-format once it was read.
    Imports nothing."""
    logs = sys.modules.get("segstream.pipeline.logs")
    # found probing as a platform engineer: a SIGTERM in a pod's start-up wrote plain lines among
    # the JSON ones: until logging is configured, the command line and SEGSTREAM_LOG_FORMAT say
    as_json = json_logs_asked(sys.argv[1:])
    if logs is None or not hasattr(logs, "signal_line"):
        return _json_line(message, level) if as_json else f"segstream: {message}\n".encode()
    return logs.signal_line(message, level, logs.json_logging() or as_json)


def json_logs_asked(argv: list[str]) -> bool:
    """Whether ``argv`` (else SEGSTREAM_LOG_FORMAT) asks for JSON logs, read before argparse (so
    that its own errors, and a stop signal's lines before the logs module loads, follow it). The
    last --log-format wins, as argparse's does; nothing after ``--``."""
    asked = os.environ.get("SEGSTREAM_LOG_FORMAT")
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--log-format" and i + 1 < len(argv):
            asked = argv[i + 1]
        elif arg.startswith("--log-format="):
            asked = arg.partition("=")[2]
    return (asked or "").lower() == "json"


def _json_line(message: str, level: str) -> bytes:
    """The JSON object the logs module would write (level, logger, message, time), built without
    importing it (nor ``json``: a signal handler in an import must import nothing)."""
    escaped = "".join(c if c not in '"\\' and c >= " " else f"\\u{ord(c):04x}" for c in message)
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}+00:00"
    return (f'{{"level": "{level}", "logger": "segstream.cli", "message": "{escaped}", "time": "{stamp}"}}'
            "\n").encode()


def _write(line: bytes) -> None:
    try:
        os.write(2, line)
    except OSError:  # stderr a terminal that is gone (SIGHUP)
        pass


def loading(frame) -> bool:
    """Whether ``frame`` (a signal handler's) is inside an import."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def abort_if_loading(frame, signum: int = signal.SIGINT) -> None:
    """Exit at once with 128 + ``signum`` when ``frame`` (a signal handler's) is inside an import
    (an import here would wait on the one interrupted; ``signal_line`` imports nothing). JSON as
    SEGSTREAM_LOG_FORMAT says: the command line's --log-format may not be read yet."""
    if loading(frame):
        _write(_line("aborted while loading its modules", "ERROR"))
        embedded = sys.modules.get("segstream.connectors.embedded_redis")
        if embedded is not None and hasattr(embedded, "kill_all"):  # loaded whole: a daemonised
            embedded.kill_all()  # redis-server of ours would outlive us (a signal only: no client here)
        os._exit(128 + signum)
