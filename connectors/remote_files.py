"""What an http(s) server says about a file without sending it: its version (ETag), length and
time, to tell whether the file changed since it was last read.

Asked with a GET of its first byte (``Range: bytes=0-0``), not a HEAD: a presigned S3 or GCS
URL is signed for one method, and a GET URL answers a HEAD with 403.
"""

from __future__ import annotations

import base64
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import unquote, urlsplit, urlunsplit

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RemoteVersion:
    """What the server said of a file; None for what it did not say. ``problem`` is why it said
    nothing (``HTTP 404 Not Found``, a refused connection), '' when it answered."""

    etag: str | None = None
    size: int | None = None  # bytes, the whole file's
    mtime_ns: int | None = None  # Last-Modified, in ns since the epoch (whole seconds)
    problem: str = ""


def remote_version(url: str, timeout_s: float = 10.0) -> RemoteVersion:
    """Ask the server of ``url`` for its file's version (one request, one byte of body read).
    Never raises: a server that refuses or cannot be reached gives a version with ``problem``."""
    parts = urlsplit(url)
    headers = {"Range": "bytes=0-0", "Accept-Encoding": "identity"}
    if parts.username is not None:  # urllib takes no user info in the URL; FFmpeg sends it as Basic auth
        login = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
        parts = parts._replace(netloc=parts.netloc.rpartition("@")[2])
    request = urllib.request.Request(urlunsplit(parts), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read(1)
            found = response.headers
            status = response.status
    except urllib.error.HTTPError as error:
        return RemoteVersion(problem=f"HTTP {error.code} {error.reason}")
    except (OSError, ValueError) as error:  # no answer, a bad address: the reader says why
        return RemoteVersion(problem=type(error).__name__)
    size = None
    if status == 206:  # Content-Range: bytes 0-0/1234 (or */* when the server does not know)
        total = found.get("Content-Range", "").rpartition("/")[2]
        size = int(total) if total.isdigit() else None
    elif (length := found.get("Content-Length", "")).isdigit():  # 200: ranges not served, the whole file
        size = int(length)
    mtime_ns = None
    if modified := found.get("Last-Modified"):
        try:
            mtime_ns = int(parsedate_to_datetime(modified).timestamp()) * 1_000_000_000
        except (TypeError, ValueError):
            pass
    return RemoteVersion(found.get("ETag") or None, size, mtime_ns)
