"""Where segstream's log lines go: plain lines for people, or one JSON object per line for
containers and log shippers (``--log-format json``, or ``SEGSTREAM_LOG_FORMAT=json``).

Library code logs through ``logging.getLogger(__name__)``; only the CLI configures handlers. The
JSON objects have ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, ``run_id`` while a
run is on, and any ``extra`` fields; JSON formatting is python-json-logger's.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import sys
import threading
import time
from datetime import datetime, timezone
from typing import TextIO

from segstream.connectors.errors import ConfigError
from segstream.connectors.terminal import printable
from segstream.connectors.threads import run_id_of_thread

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
ENV_FORMAT = "SEGSTREAM_LOG_FORMAT"
ENV_LEVEL = "SEGSTREAM_LOG_LEVEL"
_configured = {"format": "text", "level": "info"}
_run = {"id": ""}  # the run this process runs now: every JSON record carries its run_id


# syslog's priorities of logging's levels, for journald (``journal_prefix``)
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def journal_prefix(levelno: int) -> str:
    """``<N>``, the syslog priority journald reads at the start of a line, when standard error
    is journald's stream (systemd says which in ``JOURNAL_STREAM``, device:inode); else "".
    Without it journald stores every line at one priority, and ``journalctl -p warning`` showed
    none of segstream's warnings (found probing a systemd deployment)."""
    stream = os.environ.get("JOURNAL_STREAM")
    if not stream:
        return ""
    try:
        stat = os.fstat(2)
    except OSError:
        return ""
    if stream != f"{stat.st_dev}:{stat.st_ino}":
        return ""
    return f"<{next((n for level, n in _PRIORITIES if levelno >= level), 7)}>"


def _prefixed(text: str, levelno: int) -> str:
    """Each line of ``text`` with ``journal_prefix`` (a traceback's lines at the record's priority)."""
    prefix = journal_prefix(levelno)
    return "\n".join(prefix + line for line in text.split("\n")) if prefix else text


class _ScrubbedTracebacks:
    """Tracebacks and stacks scrubbed as the message is: an exception's text may quote a URL
    with its password (the ``_Scrub`` filter sees only the message)."""

    def formatException(self, ei):
        from segstream.connectors.redaction import scrub

        text = super().formatException(ei)
        return [scrub(line) for line in text] if isinstance(text, list) else scrub(text)

    def formatStack(self, stack_info):
        from segstream.connectors.redaction import scrub

        text = super().formatStack(stack_info)
        return [scrub(line) for line in text] if isinstance(text, list) else scrub(text)


class _PlainFormatter(_ScrubbedTracebacks, logging.Formatter):
    """``segstream: message``, with the level named from warnings up, as the CLI's own lines read."""

    def format(self, record: logging.LogRecord) -> str:
        message = printable(record.getMessage())
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname.lower()}: {message}"
        text = f"segstream: {message}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return _prefixed(text, record.levelno)


class _Scrub(logging.Filter):
    """Keeps a config's secrets out of every record (``segstream.connectors.redaction``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from segstream.connectors.redaction import scrub

        try:
            message = record.getMessage()
        except Exception:  # a malformed call: logging's own error handling says so, not us
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


class _RunId(logging.Filter):
    """Adds ``run_id`` to each record while a run is on (``set_run_id``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # a run's own threads know their run (two runs in one process); others the process's last
        run_id = run_id_of_thread() or _run["id"]
        if run_id and not hasattr(record, "run_id"):
            record.run_id = run_id
        return True


def new_run_id() -> str:
    """A run's name: its start time (UTC) and 32 random bits, e.g. ``20261121T101502Z-3f2a9c1d``;
    sortable by start and unique in practice."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


def set_run_id(run_id: str) -> None:
    """The run id the JSON log records carry from now on ("" for none)."""
    _run["id"] = run_id


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (it may be replaced
    after logging is configured: by a test's capture, by a redirect)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(format: str | None = None, level: str | None = None, stream: TextIO | None = None) -> None:
    """Send the ``segstream`` loggers to ``stream`` (default: stderr) as ``format`` (text or json;
    default from SEGSTREAM_LOG_FORMAT, else text) at ``level`` (default SEGSTREAM_LOG_LEVEL, else
    info), either in any case; a value that is none of them is a ``ConfigError``."""
    said = {ENV_FORMAT: format, ENV_LEVEL: level}  # what the caller gave, else the variable's
    format = (format or os.environ.get(ENV_FORMAT) or "text").lower()
    level = (level or os.environ.get(ENV_LEVEL) or "info").lower()
    # a typo is refused, as --log-format's is: a service meant to log JSON went on in text
    for name, what, value, choices in ((ENV_FORMAT, "log format", format, LOG_FORMATS),
                                       (ENV_LEVEL, "log level", level, LOG_LEVELS)):
        if value not in choices:
            given = f"{name}={value!r}" if said[name] is None else f"{what} {value!r}"
            raise ConfigError(f"{given} is none of {', '.join(choices)}")
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    if format == "json":
        from pythonjsonlogger.json import JsonFormatter

        class _JsonFormatter(_ScrubbedTracebacks, JsonFormatter):
            def format(self, record: logging.LogRecord) -> str:
                return journal_prefix(record.levelno) + super().format(record)

        handler.setFormatter(_JsonFormatter(
            "{levelname}{name}{message}", style="{", timestamp="time",
            rename_fields={"levelname": "level", "name": "logger"},
        ))
    else:
        handler.setFormatter(_PlainFormatter())
    handler.addFilter(_Scrub())
    if format == "json":
        handler.addFilter(_RunId())
    root = logging.getLogger("segstream")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    root.propagate = False
    _configured["format"], _configured["level"] = format, level
    _json_everywhere(handler if format == "json" else None)


def _json_everywhere(handler: logging.Handler | None) -> None:
    """With JSON logs (``handler``) every stderr line is one object: a library's warning and a
    thread's uncaught exception, which Python prints over several lines, become records too.
    Without (None), the process's own hooks as they were before are put back."""
    warned = logging.getLogger("py.warnings")  # where logging.captureWarnings sends warnings.warn
    _quiet_opencv(handler is not None)
    if _hooks:
        for logger, handlers, propagate in reversed(_hooks.get("adopted", [])):  # a library's own, as they were
            for forward in [h for h in logger.handlers if isinstance(h, _Forward)]:
                logger.removeHandler(forward)
            for old in handlers:
                logger.addHandler(old)
            logger.propagate = propagate
        warned.removeHandler(_hooks["handler"])  # ours alone: a handler the process had stays
        warned.propagate = _hooks["propagate"]
        threading.excepthook = _hooks["excepthook"]
        sys.excepthook = _hooks["sys_excepthook"]
        logging.captureWarnings(_hooks["captured"])
        _hooks.clear()
    if handler is None:
        return
    _hooks.update(handler=handler, excepthook=threading.excepthook, sys_excepthook=sys.excepthook,
                  propagate=warned.propagate, captured=getattr(logging, "_warnings_showwarning", None) is not None)
    warned.addHandler(handler)
    warned.propagate = False
    logging.captureWarnings(True)
    threading.excepthook = _thread_exception_record
    # a run's thread's error is raised again in the main thread when the run ends: a traceback
    # of 27 plain lines among the JSON ones (found probing as a platform engineer)
    sys.excepthook = _exception_record


_hooks: dict = {}  # what _json_everywhere replaced, to put back


def _quiet_opencv(quiet: bool) -> None:
    """With JSON logs, OpenCV's own lines (``[ WARN:0@2.1] global grfmt_png.cpp:793 ...``, written
    to stderr past Python's logging) are silenced: the sources say each failure in a record of
    their own (found probing an inspection line's corrupt images). Put back without."""
    import cv2

    if quiet and not _opencv_level:
        _opencv_level.append(cv2.utils.logging.getLogLevel())
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    elif not quiet and _opencv_level:
        cv2.utils.logging.setLogLevel(_opencv_level.pop())


_opencv_level: list[int] = []  # OpenCV's log level before JSON logs silenced it


def adopt_library_logs(prefix: str = "torch") -> None:
    """With JSON logs, the records of a library that prints its own (torch's loggers, each with a
    handler of its own writing glog-like text: dynamo's recompiles, cpp_extension's "No CUDA
    runtime"; Ray's) go through segstream's JSON handler instead; call once the library is
    imported. With text logs, nothing changes."""
    if _configured["format"] != "json" or not _hooks:
        return
    ours = _hooks["handler"]
    adopted = _hooks.setdefault("adopted", [])
    top = logging.getLogger(prefix)
    names = [name for name in logging.root.manager.loggerDict if name == prefix or name.startswith(prefix + ".")]
    for name in [prefix, *sorted(set(names) - {prefix})]:
        logger = logging.getLogger(name)
        if any(logger is done for done, _, _ in adopted):
            continue
        theirs = [handler for handler in logger.handlers if not isinstance(handler, _Forward)]
        adopted.append((logger, theirs, logger.propagate))
        for handler in theirs:
            logger.removeHandler(handler)
        logger.propagate = logger is not top  # on to the top logger's handler: ours
    if not any(isinstance(handler, _Forward) for handler in top.handlers):
        top.addHandler(_Forward(ours))


class _Forward(logging.Handler):
    """Hands a library's records to segstream's handler; a formatter the library sets on its
    logger's handlers (``ray.init`` sets its own) stays off ours."""

    def __init__(self, target: logging.Handler):
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.handle(record)

    def setFormatter(self, fmt) -> None:
        """Ignored: the library's formatter is not segstream's (the records keep the handler's own)."""


def _exception_record(exc_type, exc_value, exc_traceback) -> None:
    """``sys.excepthook`` under JSON logs: an exception nothing caught as one ERROR record,
    traceback in ``exc_info``."""
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc_value, exc_traceback)
        return
    logging.getLogger("segstream.cli").error("uncaught exception: %s", exc_type.__name__,
                                             exc_info=(exc_type, exc_value, exc_traceback))


def _thread_exception_record(args) -> None:
    """``threading.excepthook`` under JSON logs: the exception as one ERROR record, traceback in
    ``exc_info``."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "a thread"
    logging.getLogger("segstream.threads").error(
        "uncaught exception in thread %s", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        extra={"thread_name": name})


def log_settings() -> tuple[str, str]:
    """The format and level ``configure_logging`` was last given (resolved), for another
    process to log as this one does (a Ray worker)."""
    return _configured["format"], _configured["level"]


def json_logging() -> bool:
    """Whether the segstream loggers write JSON (the status line then goes to the log too)."""
    return _configured["format"] == "json"


def signal_line(message: str, level: str = "WARNING", as_json: bool | None = None) -> bytes:
    """One line for stderr that a signal handler may write with ``os.write`` (logging and print
    may be interrupted holding a lock): ``segstream: message``, or with JSON logs (``as_json``;
    None: as logging is configured) a JSON object with the keys of the other lines. Imports
    nothing when called."""
    prefix = journal_prefix(getattr(logging, level, logging.WARNING))
    if not (json_logging() if as_json is None else as_json):
        return f"{prefix}segstream: {message}\n".encode()
    return (prefix + _json_record(message, level, "segstream.cli") + "\n").encode()


def _json_record(message: str, level: str, logger: str) -> str:
    """A JSON line's object, with the keys of the records segstream logs."""
    record = {"level": level, "logger": logger, "message": message, "time": datetime.now(timezone.utc).isoformat()}
    if _run["id"]:
        record["run_id"] = _run["id"]
    return json.dumps(record)


# A glog line's severity (Ray's C++ processes: "[2026-12-04 22:20:34,341 W 25039 25039] gcs_client.cc:...")
_GLOG_LEVEL = re.compile(r"^\[[^\]]* ([IWEF]) \d+ \d+\]")
_GLOG_LEVELS = {"I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}


class JsonLines:
    """Standard error for a library that prints lines itself (Ray's driver forwards its workers'
    and raylet's lines with ``print``): under JSON logs each line it writes that is no JSON object
    becomes a record of ``logger`` (its glog severity, else WARNING); JSON lines pass as they are."""

    def __init__(self, stream: TextIO, logger: str):
        self.stream, self.logger = stream, logger
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
            for line in lines:
                if line.strip():
                    self.stream.write(self._as_json(line) + "\n")
        return len(text)

    def _as_json(self, line: str) -> str:
        body = line[3:] if line[:1] == "<" and line[2:3] == ">" else line  # after a journald priority
        if body.startswith("{"):
            try:
                if isinstance(json.loads(body), dict):
                    return line
            except (ValueError, RecursionError):  # (nested too deep: not the record it looked like)
                pass
        glog = _GLOG_LEVEL.match(body)
        level = _GLOG_LEVELS[glog.group(1)] if glog else "WARNING"
        return journal_prefix(getattr(logging, level)) + _json_record(body, level, self.logger)  # as the others

    def flush(self) -> None:
        with self._lock:
            if self._partial.strip():
                self.stream.write(self._as_json(self._partial) + "\n")
            self._partial = ""
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()


def write_line(line: bytes) -> None:
    """``os.write`` of a ``signal_line`` to stderr. After a SIGHUP stderr may be a terminal that is
    gone (EIO): then stdout and stderr become /dev/null, so that the run drains and every later
    line (status, summary) is dropped, not an exception that ends the run undrained."""
    try:
        os.write(2, line)
    except OSError as error:
        if error.errno not in (errno.EIO, errno.ENXIO, errno.EPIPE):  # a full disk, a busy pipe: this line only
            return
        null = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            os.dup2(null, fd)
        os.close(null)


class LogLines:
    """A text stream whose lines become INFO records of ``logger``: the console status line of
    a run, in the log when the log is JSON."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def write(self, text: str) -> int:
        self.record(text)
        return len(text)

    def record(self, text: str, **fields) -> None:
        """``text``'s lines as records, the first with ``fields`` (a JSON line's keys)."""
        for n, line in enumerate(line for line in text.splitlines() if line.strip()):
            self.logger.info(line.removeprefix("segstream: "), extra=fields if n == 0 and fields else None)

    def flush(self) -> None:
        pass
