"""Stream URLs: which schemes are streams, how a URL is shown without its credentials, and the
address of an RTSP server."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote, urlsplit

# Schemes of live network streams (``type: stream``); http(s) may also be a plain file.
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "tcp", "udp", "srt", "rist")
REDACTED = "***"
_RTSP_PORTS = {"rtsp": 554, "rtsps": 322}  # when a URL names none
# Query parameters whose values are secrets in signed or tokenised stream URLs: names holding one
# of these words, and short names that are secrets alone (an Azure Functions key, ``code``; a
# CloudFront policy, ``Policy``) but words of harmless names in others (``codec``).
_SECRET_QUERY_KEY = re.compile(r"pass|pwd|secret|token|key|sig|auth|credential|session|jwt|^(code|policy)$",
                               re.IGNORECASE)


def redact_url(url: str, keep_user: bool = False) -> str:
    """``url`` with its user info, the values of credential-like query parameters and its
    fragment replaced by ``***``: ``rtsp://admin:pw@cam/live?token=x`` ->
    ``rtsp://***@cam/live?token=***`` (with ``keep_user``, only the password:
    ``redis://alice:***@host``). A fragment is never sent to the server, and may hold a token
    (``#access_token=...``).

    The user info is everything up to the last ``@``, so a password with an unescaped ``/``,
    ``@``, ``?`` or ``#`` in it is hidden too (an ``@`` in a path or query hides more than it
    must: never less).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    user = ""
    at = rest.rfind("@")
    if at >= 0:
        name, colon, _ = rest[:at].partition(":")
        if at == 0:  # nothing to hide: "udp://@239.1.1.1:5000", FFmpeg's way of saying a multicast group
            user = "@"
        else:
            user = f"{name}{':' + REDACTED if colon else ''}@" if keep_user else f"{REDACTED}@"
        rest = rest[at + 1 :]
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    address, tail = user + rest[:cut], rest[cut:]
    query, hash_sign, fragment = tail.partition("#")
    if query.startswith("?"):
        pairs = [
            f"{quote(k, safe='')}={REDACTED if _SECRET_QUERY_KEY.search(k) else quote(v, safe='')}"
            for k, v in parse_qsl(query[1:], keep_blank_values=True)
        ]
        query = "?" + "&".join(pairs)
    return f"{scheme}://{address}{query}{hash_sign}{REDACTED if fragment else ''}"


# The query parameters that name an object rather than sign a request for it: an object version
# (S3's versionId, GCS's generation) and a download endpoint's file; every other parameter (a
# signature, its date and expiry: S3's, GCS's, a CDN's md5/hmac/hdnts, whatever their names) changes
# each time the same object is signed again, and may be a secret.
_IDENTITY_QUERY_KEY = re.compile(r"^(versionid|generation|file|filename|name|path|object|objectkey|id)$",
                                 re.IGNORECASE)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def url_identity(url: str) -> str:
    """What names the file a URL reads, kept where the URL itself may not be: the URL without
    its user info, fragment and query (``https://bucket.s3.amazonaws.com/cams/a.mp4`` for a
    presigned URL of it, whatever its signature), but for the parameters that name an object
    (``?versionId=3``, a download endpoint's ``?file=b.mp4``: another object), sorted. Scheme and
    host in lower case, without the scheme's default port."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port not in (None, _DEFAULT_PORTS.get(scheme)) else ""
    except ValueError:  # a port that is no number: kept as written, the URL fails when read
        port = parts.netloc.rpartition("@")[2].removeprefix(parts.hostname or "")
    kept = sorted((k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if _IDENTITY_QUERY_KEY.match(k))
    query = "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='/')}" for k, v in kept) if kept else ""
    return f"{scheme}://{host}{port}{parts.path}{query}"


def url_secrets(url: str) -> list[str]:
    """What in ``url`` is secret: its password, the values of its query's credential-like
    parameters (a presigned URL's signature, credential and token), as written and decoded, and
    its whole query where it holds more than what names the object (``url_identity``: a CDN's
    signature of any name)."""
    parts = urlsplit(url)
    written = [part.partition("=") for part in parts.query.split("&") if part]
    secret = [(unquote(key), value) for key, _, value in written
              if _SECRET_QUERY_KEY.search(unquote(key)) and not _IDENTITY_QUERY_KEY.match(unquote(key))]
    signed = any(not _IDENTITY_QUERY_KEY.match(unquote(key)) for key, _, _ in written)
    found = [parts.password or "", parts.query if signed else ""]
    found += [value for _, value in secret] + [unquote(value.replace("+", " ")) for _, value in secret]
    return [text for text in found if text]


def url_scheme(target: str) -> str:
    """The lower-case scheme of a URL, '' for a path."""
    return urlsplit(target).scheme.lower() if "://" in target else ""


def exclusive_input(target: str) -> bool:
    """Whether reading ``target`` holds something only one reader may hold at a time: a local
    port (UDP and RTP, where the sender sends to us; a TCP/RTMP listener, ``?listen=1``; SRT in
    listener mode) or a capture device (``/dev/video0``: a second reader gets "device busy")."""
    if target.startswith("/dev/"):
        return True
    scheme = url_scheme(target)
    if scheme in ("udp", "rtp"):
        return True
    try:
        query = dict(parse_qsl(urlsplit(target).query, keep_blank_values=True))
    except ValueError:
        return False
    return (query.get("listen") in ("", "1", "2") or query.get("mode") == "listener"
            or "listen" in query.get("rtsp_flags", "").split("+"))


_HOST_PORT = re.compile(r"([\w.-]+|\[[0-9A-Fa-f:.]+\])(:\d+)?")


def unescaped_userinfo(url: str) -> bool:
    """Whether ``url``'s password (or user) holds a ``/``, ``?`` or ``#`` that is not
    percent-encoded: FFmpeg ends the address at the first of them, so it would dial part of
    the password as the host. Told by an ``@`` after that character where what comes before it
    is no host[:port] (a ``?`` between them is a query, and an ``@`` in a query is no password;
    a password that looks like a port is not told)."""
    rest = url.partition("://")[2]
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    at = rest.rfind("@")
    before = rest[:end]
    if _HOST_PORT.fullmatch(before.rsplit("@", 1)[-1]):  # FFmpeg reads a host there: the address is whole
        return False
    return at > end and "?" not in rest[end + 1 : at]


# A model hub repository's owner or name: letters, digits, '_', '.', '-', neither starting nor
# ending with '.' or '-', without '..' or '--' (what the hub accepts).
_HUB_PART = re.compile(r"(?!.*(\.\.|--))[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?")


def hub_reference_problem(reference: str) -> str | None:
    """What is wrong with an ``hf://owner/name[/file]`` reference, or None."""
    parts = reference.removeprefix("hf://").strip("/").split("/")
    if len(parts) < 2:
        return "names no repository: use hf://<owner>/<name>"
    for part in parts[:2]:
        if not _HUB_PART.fullmatch(part):
            return (f"'{part}' is not a repository's owner or name on the hub (letters, digits, '_', '.', '-'; "
                    "not starting or ending with '.' or '-')")
    if any(part in ("", ".", "..") for part in parts[2:]):
        return "names its file with an empty, '.' or '..' part"
    return None


def rtsp_address(target: str) -> tuple[str, int] | None:
    """The host and TCP port of the RTSP server an ``rtsp://`` or ``rtsps://`` URL reads from;
    None for anything else, and for a URL where we listen (``rtsp_flags=listen``)."""
    scheme = url_scheme(target)
    if scheme not in _RTSP_PORTS or exclusive_input(target):
        return None
    try:
        parts = urlsplit(target)
        port = parts.port or _RTSP_PORTS[scheme]
    except ValueError:  # a port that is no number
        return None
    return (parts.hostname, port) if parts.hostname else None
