"""Threads that carry their name into the operating system, so that ``top -H``, ``ps -L``, gdb,
perf and a core dump tell segstream's threads apart (``decode-cam0``, ``model``, ``publish``)
instead of showing every one of them as ``python``. Python only names its own thread objects
(until 3.14); Linux takes at most 15 bytes, so the ``segstream-`` prefix stays behind."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
import threading

OS_NAME_BYTES = 15  # Linux's TASK_COMM_LEN less its terminating zero
_PR_SET_NAME = 15

_libc = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:  # a libc that cannot be loaded leaves the names as they are: they are only for people
        _libc = None


def os_thread_name(name: str) -> bytes:
    """The name the OS shows for a thread named ``name``: without ``segstream-``, at most 15 bytes,
    cut at a character boundary."""
    short = name.removeprefix("segstream-").encode()[:OS_NAME_BYTES]
    return short.decode(errors="ignore").encode()


def name_os_thread(name: str) -> None:
    """Give the calling thread ``name`` in the OS (Linux; elsewhere nothing happens)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(os_thread_name(name)), 0, 0, 0)


def name_os_thread_as_python() -> None:
    """Give the calling thread its Python name in the OS (an executor's ``initializer``)."""
    name_os_thread(threading.current_thread().name)


def run_id_of_thread() -> str | None:
    """The run the calling thread works for (a ``NamedThread`` of a run), if it knows."""
    return getattr(threading.current_thread(), "segstream_run_id", None)


class NamedThread(threading.Thread):
    """A ``threading.Thread`` that names its OS thread after itself when it starts. It works for
    the run its creator works for (``segstream_run_id``, which JSON log records carry): with two
    runs in one process, each thread's records name its own."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.segstream_run_id = run_id_of_thread()

    def run(self) -> None:
        name_os_thread(self.name)
        super().run()


# Threads waiting on their input (a real-time source's pacing, a stream's next packets): by ident,
# why. A waiting thread makes no progress and is not stuck: its input tells when it goes on.
_input_waits: dict[int, str] = {}


def waiting_for_input(why: str | None) -> None:
    """The calling thread waits on its input from now (``why``), or works again (None)."""
    if why is None:
        _input_waits.pop(threading.get_ident(), None)
    else:
        _input_waits[threading.get_ident()] = why


def input_wait(ident: int | None) -> str | None:
    """Why the thread ``ident`` waits on its input, None while it does not."""
    return _input_waits.get(ident) if ident is not None else None
