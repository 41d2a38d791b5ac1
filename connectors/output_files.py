"""Opening output files in folders that others may write: no symbolic link or FIFO is followed.

A folder every user can write (a shared ``/tmp``-like one) lets another user put a link named
like our output (``cam.jsonl -> /etc/shadow``) and have a run append to, or truncate, the file
it points at. The openers here never follow a link in the last component (``O_NOFOLLOW``), open
nothing but regular files, and refuse a file another user owns in a folder every user can write;
``check_output_dir`` refuses a folder every user can write that has no sticky bit (there others
could swap a file we opened for their own). New files get the mode the umask leaves of 0666.
"""

from __future__ import annotations

import errno
import os
import resource
import stat
from pathlib import Path
from typing import IO

from segstream.connectors.errors import SinkError

_DO = "remove it, or choose a folder of your own for the outputs"


def absolute(path: str | Path) -> str:
    """`` (/the/absolute/path)`` of a relative path, for a message (a service's working folder is
    not its user's shell's), else nothing."""
    return "" if os.path.isabs(path) else f" ({os.path.abspath(path)})"


def check_output_dir(directory: str | Path, what: str = "output directory") -> None:
    """Raise ``SinkError`` for a folder every user can write that has no sticky bit."""
    try:
        mode = os.stat(directory).st_mode
    except OSError:
        return  # whoever uses it says why it cannot be written
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        raise SinkError(
            f"{what} '{directory}' can be written by every user and has no sticky bit: others could replace the "
            f"files written there — choose a folder of your own, or `chmod o-w` (or `chmod +t`) it"
        )


def open_output(path: str | Path, mode: str = "ab", buffering: int = -1, encoding: str | None = None) -> IO:
    """``open(path, mode)`` for writing (``mode`` one of a, ab, w, wb) that refuses a symbolic
    link, anything but a regular file, and a file of another user in a folder every user can
    write, with an ``OSError`` whose ``strerror`` says so and what to do."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # a FIFO: no wait for a reader
    flags |= os.O_APPEND if mode.startswith("a") else 0
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENXIO) and (reason := _not_regular(path)):
            raise OSError(error.errno, reason, str(path)) from None
        if error.errno == errno.EMFILE:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            raise OSError(errno.EMFILE, f"too many open files in this process ({soft}, `ulimit -n`) — raise `ulimit -n` "
                          "(or the container's nofile limit), or run fewer sources", str(path)) from None
        raise
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise OSError(errno.EINVAL, _not_regular(path) or f"is not a regular file — {_DO}", str(path))
        if status.st_uid != os.geteuid() and _shared(path.parent):
            raise OSError(errno.EPERM, f"belongs to another user (uid {status.st_uid}) in a folder every user can "
                          f"write — {_DO}", str(path))
        os.set_blocking(fd, True)
        if mode.startswith("w"):
            os.ftruncate(fd, 0)  # only now: a file that is refused is left as it was
        return os.fdopen(fd, mode, buffering=buffering, encoding=encoding)
    except BaseException:
        os.close(fd)
        raise


def _not_regular(path: Path) -> str:
    """Why ``path`` is no file to write: a link or not a regular file ('' for a regular file)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return ""
    if stat.S_ISLNK(mode):
        return f"is a symbolic link, which outputs never follow (another user may have put it there) — {_DO}"
    if not stat.S_ISREG(mode):
        return f"is not a regular file (a FIFO, socket or device) — {_DO}"
    return ""


def _shared(directory: Path) -> bool:
    try:
        return bool(os.stat(directory).st_mode & stat.S_IWOTH)
    except OSError:
        return False


# Durability: a file written and renamed into place, or a line that says a file is done, survives a
# power cut only if the file's data reached the disk first (ext4 and XFS may write the rename, or the
# appended line, before the data: a file recorded done came back empty).


def sync_path(path: str | Path) -> None:
    """``path`` (a file, or a folder's entries) on disk (fsync). A folder on a file system that
    cannot sync one (EINVAL: vboxsf, some FUSE and CIFS mounts) is left as it is, as databases do:
    its rename is as durable there as the file system makes it."""
    folder = os.path.isdir(path)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_DIRECTORY if folder else 0))
    try:
        os.fsync(fd)
    except OSError as error:
        if not (folder and error.errno in (errno.EINVAL, errno.EBADF, errno.ENOTSUP)):
            raise
    finally:
        os.close(fd)


def sync_tree(folder: str | Path) -> None:
    """Every file and folder under ``folder``, and ``folder`` itself, on disk."""
    for where, _, files in os.walk(folder):
        for name in files:
            sync_path(os.path.join(where, name))
        sync_path(where)


def replace_synced(written: str | Path, path: str | Path) -> None:
    """``os.replace(written, path)`` once ``written`` is on disk, then the rename too: after a
    power cut ``path`` is the old file or the new one whole, never the new one empty."""
    sync_path(written)
    os.replace(written, path)
    sync_path(os.path.dirname(os.path.abspath(path)))
