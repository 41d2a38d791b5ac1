"""A folder served as an object store serves presigned GET URLs, for the tests of http(s) video
files and of batch over URLs: HTTP/1.1 with keep-alive (its answers do not say ``Connection:
close``, as Python's server and many others do not), byte ranges, and the failures object
stores have."""

from __future__ import annotations

import email.utils
import hashlib
import http.server
import ssl
import threading
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

SIGNATURE = "Sig0nlyF0rTests9c1d"  # a fake X-Amz-Signature: it must appear nowhere segstream writes or prints


class ObjectStore(http.server.ThreadingHTTPServer):
    """Serves ``folder``: a GET without an ``X-Amz-Signature`` and any HEAD (the signature covers
    the method) are 403, a missing object 404; ranges, ETag (the content's digest),
    Content-Length and Last-Modified as S3 sends them. ``failures`` are answered first, one per
    GET, before any object: (status, Retry-After seconds or None). ``cut``: every answer that
    starts before the middle of its object stops there and closes the connection (a resumed
    request, from the middle, gets the rest); without ``ranges`` the server ignores Range headers
    and answers from the start. ``certificates`` (``make_certificates``'): HTTPS with a CA of its
    own, an internal store's. ``requests`` holds each GET's path and Range header."""

    daemon_threads = True

    def __init__(self, folder: Path, *, failures=(), cut: bool = False, ranges: bool = True,
                 certificates: dict[str, Path] | None = None):
        super().__init__(("127.0.0.1", 0), _StoreHandler)
        self.folder, self.failures, self.cut, self.ranges = folder, list(failures), cut, ranges
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        scheme = "http"
        if certificates is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certificates["server_cert"], certificates["server_key"])
            self.socket = context.wrap_socket(self.socket, server_side=True)
            scheme = "https"
        self.base = f"{scheme}://127.0.0.1:{self.server_address[1]}"

    def url(self, name: str, signature: str = SIGNATURE) -> str:
        return (f"{self.base}/{name}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDTEST%2F20261203"
                f"&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Signature={signature}")

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    @property
    def ranges_asked(self) -> list[str | None]:
        return [asked for _, asked in self.requests]

    def __enter__(self) -> ObjectStore:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


class _StoreHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ObjectStore

    def log_message(self, format, *args):
        pass

    def do_HEAD(self):
        self._answer(403, b"")

    def do_GET(self):
        store, url = self.server, urlsplit(self.path)
        with store.lock:
            store.requests.append((self.path, self.headers.get("Range")))
            failure = store.failures.pop(0) if store.failures else None
        if failure is not None:
            return self._answer(failure[0], b"<Error><Code>SlowDown</Code></Error>", failure[1])
        if "X-Amz-Signature" not in parse_qs(url.query):
            return self._answer(403, b"<Error><Code>AccessDenied</Code></Error>")
        file = store.folder / unquote(url.path).lstrip("/")
        if not file.is_file():
            return self._answer(404, b"<Error><Code>NoSuchKey</Code></Error>")
        data = file.read_bytes()
        size = len(data)
        start, end = 0, size - 1
        if (ranged := self.headers.get("Range", "")).startswith("bytes=") and store.ranges:
            first, _, last = ranged[6:].partition("-")
            start, end = int(first or 0), min(int(last) if last else end, end)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes" if store.ranges else "none")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("ETag", f'"{hashlib.md5(data).hexdigest()}"')
        self.send_header("Last-Modified", email.utils.formatdate(file.stat().st_mtime, usegmt=True))
        self.end_headers()
        body = data[start:end + 1]
        try:
            if store.cut and start < size // 2:
                self.wfile.write(body[: size // 2 - start])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the reader went away (a seek, a source closed)

    def _answer(self, code: int, body: bytes, retry_after_s: int | None = None) -> None:
        self.send_response(code)
        if retry_after_s is not None:
            self.send_header("Retry-After", str(retry_after_s))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
