"""Cameras that offer only a picture a request (``http://cam/snap.jpg``, ``/cgi-bin/snapshot.cgi``,
``/ISAPI/Streaming/channels/101/picture``), polled over HTTP(S) as a live source.

A ``SnapshotSource`` asks for the picture on a steady schedule: poll k is due ``k * interval_s``
after the first, whatever each took, so the schedule never drifts; a poll whose answer came after
the next slot skips the slots it ran over (``polls_missed``) rather than bursting to catch up.
Each new picture is a frame whose ``pts`` is the time its request was sent, counted from the
first poll (``pts_s`` gaps are real time, outages included) and whose ``capture_ts`` is the time
its answer arrived (this machine's clock: a camera's ``Date`` and ``Last-Modified`` headers have
whole seconds and a clock of the camera's own; neither is used). Snapshots carry no sender clock:
``sender_ts`` stays empty.

A picture the camera has not changed since the last frame (``304 Not Modified`` to our
``If-None-Match``, the same ``ETag``, or the same bytes) is no new frame: it is skipped and
counted (``frames_unchanged``, within ``frames_skipped``), its poll taking its place in the frame
numbers as a skipped frame does. ``Last-Modified`` alone is not trusted for that (whole seconds:
two pictures within one would read as one).

The server's answers: a picture (JPEG, PNG, whatever OpenCV decodes) streams; a body that is no
picture (a login page) or a JPEG cut short is a decode error, said in one line, and the source
``stalled`` until a picture comes (before the first frame it fails the source: the URL is
wrong). A refused login (401, 403), a path not there (404, 410) or another client error before
the first frame fails the source at once in one line (``wait_for_input`` waits instead); after
it, they are retried like any loss. A server error (5xx, 408, 429), a timeout (``timeout_s``
bounds a whole request), a refused connection or an answer broken off puts the source in
``reconnecting``: the next attempt waits the ``ReconnectPolicy``'s backoff (or less: a camera
whose port refused is polled as soon as its port accepts again), and the source goes on
``streaming`` in a new epoch once a picture comes again; ``max_reconnects`` counts the attempts
since the last frame.

Logins are answered as the server asks: HTTP Basic or Digest (MD5, SHA-256, their ``-sess``
forms; ``qop`` auth), the credentials sent only once it has asked for them, then with every
request (a digest's nonce reused with a growing count), so that each poll is one request. The
connection is kept open between polls where the server allows it. ``close()`` cuts a request in
flight and ends a wait at once.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import http.client
import ipaddress
import logging
import math
import os
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from fractions import Fraction
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit

import cv2
import numpy as np

from segstream import __version__
from segstream.connectors.av_input import InputInfo, InputRefused, InputTimeout, InputUnreachable
from segstream.connectors.errors import SourceError
from segstream.connectors.frames import Frame
from segstream.connectors.live_source import ReconnectPolicy, Resolver, port_back_within
from segstream.connectors.source import StateListener, tell_state
from segstream.connectors.threads import waiting_for_input
from segstream.connectors.urls import redact_url

logger = logging.getLogger("segstream.sources")

TIME_BASE = Fraction(1, 1_000_000)  # pts in microseconds since the first poll
MAX_PICTURE_BYTES = 64 << 20  # a 4K PNG is about 25 MB; more is no snapshot
_ERROR_BODY_BYTES = 64 << 10  # of an error page, read to keep the connection; beyond, it is dropped
_CHUNK = 1 << 16
_MAX_REDIRECTS = 3
_REDIRECTS = (301, 302, 303, 307, 308)
_RETRIED_STATUSES = (408, 429)  # client errors that are the server's state, not the URL's
_DIGESTS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
# codec names, as FFmpeg names the decoders of these pictures (segstream_source_info's codec label)
_CODECS = {"JPEG": "mjpeg", "PNG": "png"}

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# one comma-separated item of a WWW-Authenticate header: [scheme] name[=value]
_AUTH_ITEM = re.compile(rf'\s*(?:({_TOKEN})\s+)?({_TOKEN})(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]*))?\s*(?:,|$)')


def auth_challenges(headers: list[str]) -> list[tuple[str, dict[str, str]]]:
    """The challenges of ``WWW-Authenticate`` headers, in order, as (scheme in lower case,
    parameters by lower-case name): one header may hold several (``Digest realm="cam",
    nonce="1f", Basic realm="cam"``)."""
    found: list[tuple[str, dict[str, str]]] = []
    for header in headers:
        at = 0
        while at < len(header):
            match = _AUTH_ITEM.match(header, at)
            if match is None or match.end() == at:
                break
            at = match.end()
            scheme, name, value = match.groups()
            if scheme is None and value is None:  # a scheme without parameters
                found.append((name.lower(), {}))
                continue
            if scheme is not None:
                found.append((scheme.lower(), {}))
            if found and value is not None:
                if value.startswith('"'):
                    value = re.sub(r"\\(.)", r"\1", value[1:-1])
                found[-1][1][name.lower()] = value
    return found


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Login:
    """A user's credentials, and how the server last asked for them (``take``): each
    ``authorization`` header answers that challenge, a digest counting its nonce's uses."""

    def __init__(self, user: str, password: str, cnonce: str | None = None):
        self.user, self.password = user, password
        self.scheme: str | None = None  # basic or digest, once the server asked
        self.params: dict[str, str] = {}
        self.count = 0  # requests answered with the digest's nonce (its nc)
        self._cnonce = cnonce  # fixed: RFC 2617's example (the tests)
        self.cnonce = ""

    def take(self, challenges: list[tuple[str, dict[str, str]]]) -> str | None:
        """Answer the first Digest challenge of an algorithm spoken here, else the first Basic one;
        what the server asks for instead when it asks for neither, else None."""
        digest = next((params for scheme, params in challenges if scheme == "digest" and "nonce" in params
                       and params.get("algorithm", "MD5").upper().removesuffix("-SESS") in _DIGESTS), None)
        basic = next((params for scheme, params in challenges if scheme == "basic"), None)
        if digest is not None:
            self.scheme, self.params, self.count = "digest", digest, 0
            self.cnonce = self._cnonce or os.urandom(8).hex()  # one a nonce: -sess hashes it into the key
            return None
        if basic is not None:
            self.scheme, self.params = "basic", basic
            return None
        asked = [f"{scheme.title()}" + (f" ({params['algorithm']})" if "algorithm" in params else "")
                 for scheme, params in challenges]
        return (f"{', '.join(asked) or 'a login it does not name'} authentication, which segstream does not speak "
                "(it speaks Basic, and Digest with MD5 or SHA-256)")

    def renewed(self, challenges: list[tuple[str, dict[str, str]]]) -> bool:
        """Whether a 401 to a request answered with this login asks anew rather than refuses the
        login: a digest's nonce gone stale (``stale=true``, or another nonce). A refused login is
        not tried again in the same poll: a camera may lock an account after failed logins."""
        if self.scheme != "digest":
            return False
        return any(scheme == "digest" and (params.get("stale", "").lower() == "true"
                                           or params.get("nonce") != self.params.get("nonce"))
                   for scheme, params in challenges)

    def authorization(self, method: str, uri: str) -> str:
        """The ``Authorization`` header of a request for ``uri`` (its request target)."""
        if self.scheme == "basic":
            return "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        params = self.params
        algorithm = params.get("algorithm", "MD5")
        digest = _DIGESTS[algorithm.upper().removesuffix("-SESS")]

        def hashed(text: str) -> str:
            return digest(text.encode()).hexdigest()

        self.count += 1
        realm, nonce, count = params.get("realm", ""), params["nonce"], f"{self.count:08x}"
        key = hashed(f"{self.user}:{realm}:{self.password}")
        if algorithm.upper().endswith("-SESS"):
            key = hashed(f"{key}:{nonce}:{self.cnonce}")
        offered = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
        qop = "auth" if "auth" in offered else "auth-int" if "auth-int" in offered else None
        request = hashed(f"{method}:{uri}") if qop != "auth-int" else hashed(f"{method}:{uri}:{hashed('')}")
        if qop:
            response = hashed(f"{key}:{nonce}:{count}:{self.cnonce}:{qop}:{request}")
        else:  # RFC 2069's, for servers that offer no qop
            response = hashed(f"{key}:{nonce}:{request}")
        try:
            user = f"username={_quoted(self.user.encode('latin-1').decode('latin-1'))}"
        except UnicodeEncodeError:  # RFC 7616's form for a name a header cannot carry as it is
            user = f"username*=UTF-8''{quote(self.user, safe='')}"
        fields = [user, f"realm={_quoted(realm)}", f"nonce={_quoted(nonce)}", f"uri={_quoted(uri)}"]
        if "algorithm" in params:
            fields.append(f"algorithm={algorithm}")
        fields.append(f"response={_quoted(response)}")
        if "opaque" in params:
            fields.append(f"opaque={_quoted(params['opaque'])}")
        if qop:
            fields += [f"qop={qop}", f"nc={count}", f"cnonce={_quoted(self.cnonce)}"]
        return "Digest " + ", ".join(fields)


@dataclass(slots=True)
class Answer:
    """A picture's answer: its body, its ``Content-Type`` and ``ETag``, when it arrived (Unix
    time), and whether it was ``304 Not Modified`` (no body: the picture of the ETag sent)."""

    body: bytes
    content_type: str
    arrived: float
    etag: str | None = None
    not_modified: bool = False


class _Closed(Exception):
    """The source was closed during a request."""


def _http_error(cls: type[SourceError], message: str, status: int, **kwargs: Any) -> SourceError:
    error = cls(message, **kwargs)
    error.status = status  # for the state's data
    return error


class SnapshotClient:
    """GETs of one URL on a kept-alive connection, bounded by ``timeout_s`` each (connect,
    TLS handshake, answer and body); logins answered as the server asks (``Login``), redirects
    followed within the same server (credentials never go to another), ``If-None-Match`` sent
    with ``etag`` (the last picture's, set by its user). ``tls``: the context for https (None:
    http). ``phase`` is where the last request got to: ``open`` (connecting) or ``read``
    (sent). ``close()`` cuts a request in flight, from any thread."""

    def __init__(self, url: str, shown: str, login: Login | None, timeout_s: float,
                 tls: ssl.SSLContext | None = None):
        parts = urlsplit(url)
        self.scheme = parts.scheme.lower()
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.scheme == "https" else 80)
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.shown, self.login, self.timeout_s, self.tls = shown, login, timeout_s, tls
        self.etag: str | None = None
        self.phase = "open"
        self._connection: http.client.HTTPConnection | None = None
        self._used = False  # whether the connection served a request already (a kept-alive one)
        self._socket: socket.socket | None = None  # being connected
        self._closed = False
        self._lock = threading.Lock()

    def fetch(self) -> Answer:
        """The picture now. Raises ``InputRefused`` (401, 403, 404, another client error, a
        redirect elsewhere, an MJPEG stream), ``SourceError`` with ``status`` (a server error),
        and the transport's own errors (``OSError``, ``http.client.HTTPException``,
        ``_Closed``), the connection then dropped."""
        deadline = time.monotonic() + self.timeout_s
        target, redirects, answered = self.target, 0, False
        try:
            while True:
                headers = {"User-Agent": f"segstream/{__version__}", "Accept": "image/*, */*;q=0.5"}
                if self.etag is not None and target == self.target:
                    headers["If-None-Match"] = self.etag
                sent = self.login is not None and self.login.scheme is not None
                if sent:
                    headers["Authorization"] = self.login.authorization("GET", target)
                status, reason, reply, body = self._exchange(target, headers, deadline)
                if status == 401:
                    if self.login is None:
                        raise _http_error(InputRefused, f"'{self.shown}' asks for a login (401 Unauthorized) — give "
                                          "the user and password in the URL, or as username and password", status)
                    challenges = auth_challenges(reply.get_all("WWW-Authenticate") or [])
                    if answered or sent and not self.login.renewed(challenges):
                        raise _http_error(InputRefused, f"'{self.shown}' refused the login (401 Unauthorized) — check "
                                          "the user name and password", status)
                    problem = self.login.take(challenges)
                    if problem is not None:
                        raise _http_error(InputRefused, f"'{self.shown}' asks for {problem}", status)
                    answered = True  # a first challenge, or a new nonce for a stale one
                    continue
                if status in _REDIRECTS and redirects < _MAX_REDIRECTS:
                    redirects += 1
                    target = self._redirected(target, reply.get("Location") or "", status)
                    continue
                if status == 304 and "If-None-Match" in headers:
                    return Answer(b"", "", time.time(), self.etag, not_modified=True)
                if 200 <= status < 300:
                    content_type = reply.get_content_type() if reply.get("Content-Type") else ""
                    return Answer(body, content_type, time.time(), reply.get("ETag") if target == self.target else None)
                raise self._refusal(status, reason)
        except BaseException:
            self.drop()
            raise

    def _redirected(self, target: str, location: str, status: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        base = f"{self.scheme}://{host}:{self.port}{target}"
        moved = urlsplit(urljoin(base, location))
        try:
            port = moved.port or (443 if moved.scheme == "https" else 80)
        except ValueError:
            port = -1
        if not location or (moved.scheme.lower(), moved.hostname, port) != (self.scheme, self.host, self.port):
            where = redact_url(urljoin(base, location)) if location else "nowhere it says"
            raise _http_error(InputRefused, f"'{self.shown}' redirects ({status}) to another server, '{where}' — give "
                              "that URL if it is the camera's", status)
        return (moved.path or "/") + (f"?{moved.query}" if moved.query else "")

    def _refusal(self, status: int, reason: str) -> SourceError:
        said = f"{status} {reason}".strip()
        if status == 403:
            return _http_error(InputRefused, f"'{self.shown}' refused access ({said}) — check the account's "
                               "permissions (a user may need the right to take snapshots)", status)
        if status in (404, 410):
            return _http_error(InputRefused, f"'{self.shown}' has no picture at that path ({said}) — check the path "
                               "of the URL", status, missing=True)
        if 400 <= status < 500 and status not in _RETRIED_STATUSES:
            return _http_error(InputRefused, f"'{self.shown}' refused the request ({said}) — check the URL", status)
        if status in _REDIRECTS:
            return _http_error(SourceError, f"'{self.shown}' redirected more than {_MAX_REDIRECTS} times", status)
        return _http_error(SourceError, f"'{self.shown}' answered {said}", status)

    def _exchange(self, target: str, headers: dict[str, str], deadline: float) -> tuple[int, str, Message, bytes]:
        """One request and its whole answer. A kept-alive connection the server closed meanwhile
        (an idle timeout) is opened again once."""
        for attempt in (0, 1):
            connection, reused = self._open(deadline), self._used
            try:
                self._arm(connection, deadline)
                connection.request("GET", target, headers=headers)
                self.phase = "read"
                response = connection.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
                self.drop()
                if reused and attempt == 0 and not self._closed:
                    continue
                raise
            if response.getheader("Content-Type", "").lower().startswith("multipart/x-mixed-replace"):
                raise _http_error(InputRefused, f"'{self.shown}' is an MJPEG stream (multipart/x-mixed-replace), not "
                                  "a snapshot URL — read it with type: stream", response.status)
            body = self._body(connection, response, deadline)
            self._used = True
            if response.will_close:
                self.drop()
            return response.status, response.reason, response.headers, body
        raise AssertionError("unreachable")

    def _body(self, connection, response: http.client.HTTPResponse, deadline: float) -> bytes:
        limit = MAX_PICTURE_BYTES if 200 <= response.status < 300 else _ERROR_BODY_BYTES
        length = response.getheader("Content-Length", "")
        declared, chunks, read = int(length) if length.isdigit() else 0, [], 0
        while max(declared, read) <= limit:
            self._arm(connection, deadline)
            chunk = response.read1(_CHUNK)
            if not chunk:
                response.close()  # read whole: the connection serves the next request (read1 leaves it "open")
                return b"".join(chunks)
            chunks.append(chunk)
            read += len(chunk)
        self.drop()  # not read to its end: the connection cannot serve another request
        if limit == MAX_PICTURE_BYTES:
            raise _http_error(InputRefused, f"'{self.shown}' answered more than {MAX_PICTURE_BYTES >> 20} MB: no "
                              "snapshot — check that the URL is the camera's picture", response.status)
        return b"".join(chunks)

    def _open(self, deadline: float) -> http.client.HTTPConnection:
        with self._lock:
            if self._closed:
                raise _Closed()
            if self._connection is None:
                self.phase = "open"
                timeout = max(0.001, deadline - time.monotonic())
                if self.scheme == "https":
                    connection = http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.tls)
                else:
                    connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
                connection._create_connection = self._connect  # so that close() can cut a connect short
                self._connection, self._used = connection, False
            return self._connection

    def _connect(self, address: tuple[str, int], timeout: float, source_address=None) -> socket.socket:
        """``socket.create_connection``, with each socket known to ``close()`` while it connects."""
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in self._addresses(*address, time.monotonic() + timeout):
            sock = socket.socket(family, kind, proto)
            with self._lock:
                if self._closed:
                    sock.close()
                    raise _Closed()
                self._socket = sock
            try:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
                return sock  # still known to close() until dropped: the connection takes it after this returns
            except OSError as failed:
                error = failed
                sock.close()
                with self._lock:
                    self._socket = None
        raise error if error is not None else OSError(errno.EADDRNOTAVAIL, "no address")

    def _addresses(self, host: str, port: int, deadline: float) -> list[tuple]:
        """``getaddrinfo`` of a host name, looked up on a thread of its own: it takes no timeout,
        and a resolver that is down may hold it for many seconds, which the request's time and
        ``close()`` bound here (``TimeoutError``, ``_Closed``). An address is used as it is."""
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(host)
            return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        found: dict[str, Any] = {}

        def look() -> None:
            try:
                found["addresses"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as error:
                found["error"] = error
            except UnicodeError:  # a label IDNA cannot encode (too long)
                found["error"] = socket.gaierror(socket.EAI_NONAME, "not a host name")

        looking = threading.Thread(target=look, daemon=True, name="segstream-resolve")
        looking.start()
        while looking.is_alive():
            if self._closed:
                raise _Closed()
            if time.monotonic() > deadline:
                raise TimeoutError(f"looking up {host} timed out")
            looking.join(0.02)
        if "error" in found:
            raise found["error"]
        return found["addresses"]

    def _arm(self, connection: http.client.HTTPConnection, deadline: float) -> None:
        """The socket's timeout set to what is left of the request's time (closed: ``_Closed``)."""
        if self._closed:
            raise _Closed()
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        connection.timeout = left
        if connection.sock is not None:
            connection.sock.settimeout(left)

    def drop(self) -> None:
        """Let the connection go (the next request opens another)."""
        with self._lock:
            connection, self._connection, self._socket = self._connection, None, None
        if connection is not None:
            connection.close()

    def close(self) -> None:
        """Cut a request in flight and refuse further ones."""
        with self._lock:
            self._closed = True
            sockets = [self._socket, getattr(self._connection, "sock", None)]
        for sock in sockets:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a connect or a read blocked on it


def tls_context(verify: bool, ca_file: str | None = None) -> ssl.SSLContext:
    """For https: the server's certificate checked against ``ca_file`` (None: the system's CAs)
    and the URL's host name, or (``verify`` False, as FFmpeg reads https by default) not checked."""
    context = ssl.create_default_context(cafile=ca_file if verify else None)
    if not verify:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def picture_kind(body: bytes, content_type: str) -> str:
    """``JPEG``, ``PNG``, or the subtype of another image's ``Content-Type`` in capitals."""
    if body[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if body[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    subtype = content_type.partition("/")[2]
    return subtype.upper() if content_type.startswith("image/") and subtype else "image"


def _bytes(size: int) -> str:
    return f"{size} bytes" if size < 10_000 else f"{size / 1000:.0f} kB" if size < 10_000_000 else f"{size / 1e6:.0f} MB"


def _jpeg_whole(body: bytes) -> bool:
    """Whether a JPEG has its end-of-image marker after its last scan's start (a camera may pad
    after it; entropy-coded data never holds one)."""
    scan = body.rfind(b"\xff\xda")
    return scan >= 0 and body.find(b"\xff\xd9", scan) >= 0


class SnapshotSource:
    """A camera's snapshot URL polled every ``interval_s`` (at least ``1 / max_fps``), always
    live; see the module docstring. Credentials come from the URL (percent-encoded) or
    ``username``/``password``; ``timeout_s`` bounds each request; of ``policy`` the retries
    apply (``max_reconnects``, ``delay_s``, ``max_delay_s``, ``wait_for_input``), not its
    timeouts. ``tls_verify`` checks an https server's certificate (against ``ca_file``, None: the
    system's CAs). ``seed`` fixes the backoff's jitter (tests)."""

    live = True

    def __init__(
        self,
        name: str,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        interval_s: float = 1.0,
        timeout_s: float = 5.0,
        policy: ReconnectPolicy = ReconnectPolicy(),
        tls_verify: bool = False,
        ca_file: str | None = None,
        max_fps: float | None = None,
        seed: int | None = None,
    ):
        if not interval_s > 0 or not timeout_s > 0:
            raise SourceError(f"source {name}: interval_s and timeout_s must be positive")
        self.name = name
        self.shown = redact_url(url)
        self.interval_s = max(interval_s, 1 / max_fps) if max_fps else interval_s
        self.timeout_s = timeout_s
        self.policy = policy
        parts = urlsplit(url)
        if username is None and parts.username is not None:
            username, password = unquote(parts.username), unquote(parts.password or "")
        login = Login(username, password or "") if username is not None else None
        tls = tls_context(tls_verify, ca_file) if parts.scheme.lower() == "https" else None
        self._client = SnapshotClient(url, self.shown, login, timeout_s, tls)
        self.on_state: StateListener | None = None
        self.state = "connecting"
        self.epoch = 0
        self.reconnects = 0
        self.info: InputInfo | None = None  # of the pictures now streaming
        self.decode_errors = 0
        self.frames_unchanged = 0  # polls that brought the picture of before
        self.polls_missed = 0  # slots of the schedule passed over while an answer was awaited
        self._kind = ""
        self._digest: bytes | None = None  # of the last picture delivered
        self._rng = random.Random(seed)
        self._resolver = Resolver()  # the camera's address, for the port checks of a retry's wait
        self._closed = threading.Event()
        self._told_slow = False

    @property
    def frames_skipped(self) -> int:
        """Polls whose picture was left out on purpose: unchanged since the last frame."""
        return self.frames_unchanged

    def frames(self) -> Iterator[Frame]:
        interval = self.interval_s
        epoch, index, failures, last_pts = -1, 0, 0, -1
        origin: float | None = None  # monotonic time of the first poll: slot 0, pts 0
        slot, due = 0, time.monotonic()
        on_grid = True  # the poll due is a slot's, not a retry's
        reason, failed, ended = "", False, "stopped"
        self._enter("connecting", f"polling '{self.shown}' every {interval:g} s",
                    {"url": self.shown, "interval_s": interval})
        try:
            while self._wait_until(due, "waiting for the next snapshot to be due"):
                asked = time.monotonic()
                origin = asked if origin is None else origin
                lost: tuple[str, dict[str, Any]] | None = None
                answer: Answer | None = None
                try:
                    waiting_for_input(f"waiting for '{self.shown}' to answer (at most {self.timeout_s:g} s)")
                    answer = self._poll()
                except InputRefused as error:
                    if epoch < 0 and not self.policy.wait_for_input:
                        failed = True
                        hint = "; wait_for_input: true waits for it" if error.missing else ""
                        line = f"{error} (before the first frame: not retried{hint})"
                        self._enter("failed", line, {"url": self.shown, **self._status(error)})
                        raise SourceError(f"source {self.name} failed: {line}") from None
                    lost = str(error), {"phase": self._client.phase, "refused": True, **self._status(error)}
                except InputUnreachable as error:
                    lost = str(error), {"phase": "open", "unreachable": True}
                except InputTimeout as error:
                    lost = str(error), {"phase": error.phase, "timeout_s": error.timeout_s}
                except SourceError as error:
                    lost = str(error), {"phase": self._client.phase, **self._status(error)}
                finally:
                    waiting_for_input(None)
                if self._closed.is_set():
                    break
                now = answered = time.monotonic()
                if lost is None and answer is not None:
                    position, index = index, index + 1  # every answer takes its place in the frame numbers
                    picture, problem = self._picture(answer)
                    if problem is not None:
                        self.decode_errors += 1
                        if epoch < 0 and not self.policy.wait_for_input:
                            failed = True
                            line = f"{problem} (before the first frame: not retried)"
                            self._enter("failed", line, {"url": self.shown})
                            raise SourceError(f"source {self.name} failed: {line}")
                        if epoch < 0:  # waited for: retried as a refusal is
                            lost = problem, {"phase": "read", "refused": True}
                        elif self.state != "stalled":
                            self._enter("stalled", problem, {"phase": "stall"})  # answering, but no pictures
                        else:
                            logger.debug("source %s: %s", self.name, problem)
                    elif picture is None:
                        self.frames_unchanged += 1
                        failures = 0
                        if self.state != "streaming":  # up again, its picture unchanged: no frame yet
                            epoch += 1
                            self._streaming(epoch, "its picture unchanged since its last frame")
                    else:
                        failures = 0
                        restarted = self._changed_size(picture)
                        if self.state != "streaming" or restarted:
                            epoch += 1
                            self._streaming(epoch, restarted, picture, restarted=restarted is not None)
                        last_pts = max(last_pts + 1, round((asked - origin) / TIME_BASE))
                        waiting_for_input(None)
                        yield Frame(self.name, position, picture, last_pts, TIME_BASE, float(last_pts * TIME_BASE),
                                    answer.arrived, epoch=epoch)
                        now = time.monotonic()
                if lost is not None:
                    reason, details = lost
                    failures += 1
                    if (given_up := self.policy.given_up(failures, reason)) is not None:
                        failed = True
                        self._enter("failed", given_up, {**details, "attempts": self.policy.max_reconnects})
                        raise SourceError(f"source {self.name} failed: {given_up}")
                    delay = self.policy.delay(failures, self._rng)
                    self.reconnects += 1
                    self._enter("reconnecting", reason, {**details, "attempt": failures, "delay_s": round(delay, 3)})
                    no_port = details.get("unreachable") or "timeout_s" in details and details["phase"] == "open"
                    if self._wait_to_retry(delay, bool(no_port)):
                        break
                    due, on_grid = time.monotonic(), False
                    continue
                # the next slot of the schedule not yet begun: a late answer passes over the slots it ran into
                following = max(slot + 1, math.ceil((now - origin) / interval))
                if on_grid and following > slot + 1:
                    self._missed(following - slot - 1, answered - asked)
                slot, on_grid = following, True
                due = origin + slot * interval
        except GeneratorExit:
            raise
        except BaseException:
            failed = True
            raise
        finally:
            waiting_for_input(None)
            self._client.drop()
            if not failed:
                if epoch < 0 and self.reconnects:
                    ended = (f"stopped before it ever streamed ({self.reconnects} reconnect attempt"
                             f"{'s' if self.reconnects != 1 else ''}; the last because: {reason})")
                elif epoch < 0:
                    ended = "stopped while connecting, before it ever streamed"
                self._enter("ended", ended, {"never_streamed": True} if epoch < 0 else {})

    def first_snapshot(self) -> str:
        """One snapshot fetched and decoded, said in a line (``segstream validate --connect``);
        raises what failed, in one line."""
        try:
            answer = self._poll()
        finally:
            self._client.drop()
        if answer is None:
            raise SourceError(f"'{self.shown}': closed before it answered")
        picture, problem = self._picture(answer)
        if picture is None:
            raise InputRefused(problem or f"'{self.shown}' answered no picture")
        height, width = picture.shape[:2]
        return (f"'{self.shown}' gave a snapshot, {width}x{height} {self._kind} ({_bytes(len(answer.body))}), to be "
                f"polled every {self.interval_s:g} s")

    def close(self) -> None:
        """Stop: a wait ends at once, a request in flight is cut."""
        self._closed.set()
        self._client.close()

    def _poll(self) -> Answer | None:
        """One request; None once closed. The transport's failures become ``InputTimeout``,
        ``InputUnreachable``, ``InputRefused`` (a host name not known, a certificate not trusted)
        or ``SourceError``, each a line naming the URL without its credentials."""
        shown = self.shown
        try:
            return self._client.fetch()
        except _Closed:
            return None
        except SourceError:
            raise
        except (OSError, http.client.HTTPException) as error:
            if self._closed.is_set():  # cut by close()
                return None
            raise self._transport_error(error, shown) from None

    def _transport_error(self, error: OSError | http.client.HTTPException, shown: str) -> SourceError:
        opening = self._client.phase == "open"
        if isinstance(error, TimeoutError):
            what = "connect to" if opening else "get an answer from"
            return InputTimeout(f"could not {what} '{shown}' within {self.timeout_s:g} s (timeout_s)",
                                self._client.phase, self.timeout_s)
        if isinstance(error, ssl.SSLCertVerificationError):
            return InputRefused(f"'{shown}' shows a certificate this machine does not trust ({error.verify_message}) "
                                "— give the CA that signed it as ca_file, or set tls_verify: false")
        if isinstance(error, ConnectionRefusedError):
            return InputUnreachable(f"connection refused by '{shown}' (is the camera up?)")
        if isinstance(error, socket.gaierror):
            if error.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                return InputRefused(f"cannot open '{shown}': the host name '{self._client.host}' is not known (DNS) "
                                    "— check the URL", missing=True)
            return SourceError(f"cannot look up the host of '{shown}' ({error.strerror})")  # a resolver not up yet
        if isinstance(error, OSError) and error.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return InputUnreachable(f"cannot reach '{shown}' ({error.strerror}): is the camera on the network?")
        if isinstance(error, http.client.RemoteDisconnected):
            return SourceError(f"'{shown}' closed the connection without an answer")
        if isinstance(error, http.client.IncompleteRead):
            return SourceError(f"'{shown}' broke off its answer ({_bytes(len(error.partial))} came)")
        if isinstance(error, http.client.HTTPException):
            return SourceError(f"'{shown}' answered what is not HTTP ({type(error).__name__})")
        if isinstance(error, ssl.SSLError):
            return SourceError(f"TLS with '{shown}' failed ({error.reason or error.strerror})")
        what = "connecting to" if opening else "reading from"
        return SourceError(f"{what} '{shown}' failed: {error.strerror or type(error).__name__}")

    def _picture(self, answer: Answer) -> tuple[np.ndarray | None, str | None]:
        """The answer's picture in RGB, and None; or None and why it holds none (one line); or
        (None, None): the picture of the last frame (a 304, its ETag again, or its very bytes)."""
        client = self._client
        if self.info is not None and (answer.not_modified or answer.etag is not None and answer.etag == client.etag):
            return None, None
        body = answer.body
        digest = hashlib.blake2b(body, digest_size=16).digest()
        if digest == self._digest:
            client.etag = answer.etag
            return None, None
        kind = picture_kind(body, answer.content_type)
        image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR) if body else None
        if image is not None and kind == "JPEG" and not _jpeg_whole(body):
            return None, f"'{self.shown}' answered a JPEG cut short ({_bytes(len(body))}, no end-of-image marker)"
        if image is None:
            return None, self._not_a_picture(body, answer.content_type)
        self._digest, self._kind, client.etag = digest, kind, answer.etag
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), None

    def _not_a_picture(self, body: bytes, content_type: str) -> str:
        if not body:
            return f"'{self.shown}' answered nothing (an empty body), not a picture"
        said = content_type or "no Content-Type"
        if content_type in ("text/html", "application/xhtml+xml") or body.lstrip()[:1] == b"<":
            what, hint = f"a web page ({said}, {_bytes(len(body))})", " a login or error page? "
        else:
            what, hint = f"{_bytes(len(body))} of {said}", " "
        return (f"'{self.shown}' answered {what}, not a picture OpenCV can decode —{hint}check that the URL is the "
                "camera's snapshot and that the user may take snapshots")

    def _changed_size(self, picture: np.ndarray) -> str | None:
        height, width = picture.shape[:2]
        if self.info is None or (self.info.height, self.info.width) == (height, width):
            return None
        return f"its pictures changed size from {self.info.width}x{self.info.height} to {width}x{height}"

    def _streaming(self, epoch: int, why: str | None, picture: np.ndarray | None = None,
                   restarted: bool = False) -> None:
        self.epoch = epoch
        if picture is not None:
            height, width = picture.shape[:2]
            self.info = InputInfo(width, height, _CODECS.get(self._kind, self._kind.lower()), None, None)
        info = self.info
        reason = f"{info.width}x{info.height} {self._kind} every {self.interval_s:g} s" if info else "answering"
        data = {"url": self.shown, "epoch": epoch, "reconnects": self.reconnects, "interval_s": self.interval_s,
                **(info.as_dict() if info else {})}
        if restarted:
            data["restarted"] = True
        self._enter("streaming", f"{reason}, {why}" if why else reason, data)

    def _missed(self, slots: int, took_s: float) -> None:
        self.polls_missed += slots
        if not self._told_slow and took_s > self.interval_s:
            self._told_slow = True
            logger.warning("source %s: '%s' took %.2f s to answer, longer than interval_s (%g s): polls that fall "
                           "due meanwhile are not made (counted: polls_missed); set interval_s to what the camera "
                           "keeps up with", self.name, self.shown, took_s, self.interval_s, extra={"source": self.name})

    def _wait_to_retry(self, delay: float, seen_closed: bool) -> bool:
        """Wait ``delay`` before the next poll (True: closed meanwhile). A camera whose port
        refused or did not answer (``seen_closed``), or does so during the wait, is polled at once
        when its port accepts a connection again (``port_back_within``): a camera back
        from a reboot is read within a second, not at the end of a backoff grown over its outage.
        One that answers with errors all along waits its backoff."""
        waiting_for_input("waiting to poll again after a failed poll")
        try:
            left = port_back_within(delay, self._closed, self._resolver, self._client.host, self._client.port,
                                    seen_closed)
        finally:
            waiting_for_input(None)
        if left is not None:
            logger.info("source %s: '%s' accepts connections again: polling now, %.1f s before its backoff ended",
                        self.name, self.shown, left, extra={"source": self.name})
            return False
        return self._closed.is_set()

    def _wait_until(self, due: float, why: str) -> bool:
        """Sleep until ``due`` (monotonic), marked as waiting on the input; False once closed."""
        delay = due - time.monotonic()
        if delay <= 0:
            return not self._closed.is_set()
        waiting_for_input(why)
        try:
            return not self._closed.wait(delay)
        finally:
            waiting_for_input(None)

    @staticmethod
    def _status(error: Exception) -> dict[str, int]:
        status = getattr(error, "status", None)
        return {"status": status} if status is not None else {}

    def _enter(self, state: str, reason: str, data: dict[str, Any]) -> None:
        self.state = state
        tell_state(self.name, self.on_state, state, reason, data, logger)
