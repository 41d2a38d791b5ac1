"""What an http(s) server says about a file without sending it: its version (ETag), length and
time, to tell whether the file changed since it was last read; and the status it answers now,
to name an error FFmpeg names only by its class ("5XX").

Asked with a GET of its first byte (``Range: bytes=0-0``), not a HEAD: a presigned S3 or GCS
URL is signed for one method, and a GET URL answers a HEAD with 403.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
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


def first_byte(url: str, timeout_s: float) -> tuple[int, Message]:
    """The status and headers of a GET of ``url``'s first byte, asked as FFmpeg asks for the
    file: the URL's user and password as Basic auth, its certificate not verified (FFmpeg's
    ``tls_verify`` 0: an internal object store's own CA), no fragment. Raises urllib's
    ``HTTPError`` for an error status, ``OSError``/``ValueError``/``HTTPException`` for none."""
    parts = urlsplit(url)
    headers = {"Range": "bytes=0-0", "Accept-Encoding": "identity"}
    if parts.username is not None:  # urllib takes no user info in the URL
        login = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
    plain = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], fragment=""))
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with urllib.request.urlopen(urllib.request.Request(plain, headers=headers), timeout=timeout_s,
                                context=context) as response:
        response.read(1)
        return response.status, response.headers


def remote_version(url: str, timeout_s: float = 10.0) -> RemoteVersion:
    """Ask the server of ``url`` for its file's version (one request, one byte of body read).
    Never raises: a server that refuses or cannot be reached gives a version with ``problem``."""
    try:
        status, found = first_byte(url, timeout_s)
    except urllib.error.HTTPError as error:
        with error:
            return RemoteVersion(problem=f"HTTP {error.code} {error.reason}")
    except (OSError, ValueError, http.client.HTTPException) as error:  # no answer, a bad address: the reader says why
        return RemoteVersion(problem=type(error).__name__)
    size = None
    if status == 206:  # Content-Range: bytes 0-0/1234 (or */* when the server does not know)
        total = found.get("Content-Range", "").rpartition("/")[2]
        size = int(total) if total.isdigit() else None
    elif (length := found.get("Content-Length", "")).isdigit():  # 200: ranges not served, the whole file
        size = int(length)
    mtime_ns = None
    if modified := found.get("Last-Modified"):
        with contextlib.suppress(TypeError, ValueError):  # a date it does not write as HTTP's
            mtime_ns = int(parsedate_to_datetime(modified).timestamp()) * 1_000_000_000
    return RemoteVersion(found.get("ETag") or None, size, mtime_ns)


def http_status(url: str, timeout_s: float) -> str | None:
    """What an http(s) server answers for ``url`` now, as ``503 Service Unavailable (Retry-After:
    30)``, asked once more with a one-byte ranged GET for a failure FFmpeg names only by its class
    ("5XX"). None when the answer is the data, or when the server cannot be asked."""
    try:
        first_byte(url, timeout_s)
        return None
    except urllib.error.HTTPError as error:
        with error:
            wait = error.headers.get("Retry-After")
            return f"{error.code} {error.reason}" + (f" (Retry-After: {wait})" if wait else "")
    except (OSError, ValueError, http.client.HTTPException):
        return None


def web_page(url: str) -> str | None:
    """The content type of an http(s) ``url`` that answers a web page (HTML, JSON, text), which
    FFmpeg calls invalid data (found probing: a camera's login page read as a lost connection);
    None for anything else or a server that cannot be asked."""
    if urlsplit(url).scheme not in ("http", "https"):
        return None
    try:
        headers = first_byte(url, 3.0)[1]
    except Exception:  # not asked: FFmpeg's own reading stands
        return None
    if "Content-Type" not in headers:  # (an absent type reads as text/plain)
        return None
    kind = headers.get_content_type()
    return kind if kind in ("text/html", "text/plain", "application/json", "application/xhtml+xml") else None
