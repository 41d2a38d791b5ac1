"""Secrets kept out of every line segstream prints: errors, logs, status lines.

A config's secrets are remembered as it is read (``remember``): the values of credential-like
keys (``password``, ``passphrase``, ``token``...), the passwords of URLs, and the values of
environment variables with credential-like names (``CAM_PASSWORD``, ``HF_TOKEN``) wherever they
are substituted, so that a value that lands in the wrong field, or a URL mistyped so that no
URL parser sees its password, is still hidden. ``scrub`` replaces them, and whatever looks like
a URL's ``user:password@``, with ``***``.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import unquote

from segstream.connectors.urls import REDACTED

# Keys and variable names whose values are secrets.
SECRET_NAME = re.compile(r"pass|(?<=_)pwd|secret|token|key|auth|credential|phrase", re.IGNORECASE)  # CAM_PWD, not $PWD
# ``user:password@host`` with or without a scheme (and with ``:/`` or ``//`` mistyped): the
# password is what lies between the first ':' after the user and the last '@' before the host.
# A ':' before '//' is a scheme's: ``rtsp://admin@cam`` (a user, no password) and an URL already
# redacted (``rtsp://***@cam``) stay as they are (they read ``rtsp:***@cam``). After a scheme the
# user may be empty: ``redis://:password@host``, Redis's own form.
_USER = r"[^\s/@:'\"`=,;()\[\]{}]"
_USERINFO = re.compile(rf"(?:(?P<scheme>[A-Za-z][\w+.-]{{0,30}}:/{{1,2}})(?P<user>{_USER}{{0,128}})|(?P<bare>{_USER}{{1,128}})):"
                       r"(?!//)(?P<password>[^\s'\"`]{1,256})@(?=[\w\[])")  # bounded: no quadratic scans of long lines
_NAMES_A_PLACE = ("_file", "_path", "_dir")  # tls.key_file: where a secret is, not the secret
# names of Redis keys, not keys to anything (found probing: a status_key naming a stream was said as '***')
_REDIS_KEYS = ("status_key",)
# FFmpeg's http options that carry credentials in other words (found probing as an attacker: a
# source's ``options: {headers: "Authorization: Bearer ..."}`` and its cookies were shown whole by
# ``validate --print``)
_HEADERS = ("headers", "cookies")
# (auth too, but not a realm's, method's or type's name: X-Auth-Realm names a host)
_SECRET_HEADER = re.compile(r"token|key|secret|pass|pwd|credential|session|auth(?!.*(realm|method|type|scheme|domain|url|host))",
                            re.IGNORECASE)
# Cookies that are credentials: named so, or long (session ids and tokens: 16 characters and more;
# PHP's are 26, Java's and Django's 32)
_SECRET_COOKIE = re.compile(r"sess|sid|token|auth|key|secret|pass|csrf|xsrf|jwt|login", re.IGNORECASE)
_LONG_COOKIE = 16
_MIN_LENGTH = 4  # shorter values would hide too much else ('pts', digits in every number)

_lock = threading.Lock()
_secrets: set[str] = set()


def remember(value: Any, _seen: set[int] | None = None) -> None:
    """Keep ``value`` (a string, or the strings in a list or mapping) out of every scrubbed line."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # password: 12345678 reads as a number
    if isinstance(value, str):
        for form in {value, unquote(value)}:
            if len(form) >= _MIN_LENGTH:
                with _lock:
                    _secrets.add(form)
        return
    if not isinstance(value, (dict, list, tuple)):
        return
    seen = set() if _seen is None else _seen
    if id(value) in seen:  # shared by YAML aliases: once is enough
        return
    seen.add(id(value))
    for item in value.values() if isinstance(value, dict) else value:
        remember(item, seen)


def remember_in(data: Any, _seen: set[int] | None = None) -> None:
    """Remember the secrets of a config's raw data: values of credential-like keys, and the
    passwords of URLs (``scheme://user:password@host``, or without a scheme). Each mapping and
    list is visited once: YAML aliases share them (an alias bomb costs its size, not its expansion)."""
    seen = set() if _seen is None else _seen
    if isinstance(data, (dict, list)):
        if id(data) in seen:
            return
        seen.add(id(data))
    if isinstance(data, dict):
        for key, value in data.items():
            if (isinstance(key, str) and SECRET_NAME.search(key) and not key.endswith(_NAMES_A_PLACE)
                    and key not in _REDIS_KEYS):
                remember(value, seen)
            elif key in _HEADERS and isinstance(value, str):
                remember(value)  # the whole; and credentials' values, not a region's or a view's (found probing
                for line in value.splitlines():  # an upgrade: region=eu-west-1 hid every host of that region)
                    if key == "cookies":  # Set-Cookie lines: the value, before its path and domain
                        _remember_cookies(line.split(";")[:1])
                        continue
                    name, _, said = line.partition(":")
                    name = name.strip().lower()
                    if name == "cookie":  # every cookie of it (found reviewing: the first only)
                        _remember_cookies(said.split(";"))
                    elif name.endswith(("authorization", "authentication")):  # Bearer <token>: the token alone too
                        remember([said.strip(), said.strip().rpartition(" ")[2]])
                    elif _SECRET_HEADER.search(name):  # X-Api-Key, X-Auth-Token, X-Auth (not X-Auth-Realm)
                        remember(said.strip())
            else:
                remember_in(value, seen)
    elif isinstance(data, list):
        for item in data:
            remember_in(item, seen)
    elif isinstance(data, str) and "@" in data:
        for match in _USERINFO.finditer(data):
            remember(match.group("password"))


def _remember_cookies(pairs: list[str]) -> None:
    """Remember the values of the ``name=value`` cookies that are credentials."""
    for pair in pairs:
        name, _, value = pair.strip().partition("=")
        if _SECRET_COOKIE.search(name) or len(value.strip()) >= _LONG_COOKIE:
            remember(value.strip())


def scrub(text: str) -> str:
    """``text`` with remembered secrets and anything shaped like a URL's password as ``***``."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return mask_userinfo(text)


def mask_userinfo(text: str) -> str:
    """``text`` with whatever looks like a URL's ``user:password@`` as ``user:***@``, and nothing
    else changed: the same text whatever config was read (a file path kept as a key stays one)."""
    if "@" in text:
        text = _USERINFO.sub(lambda m: f"{m.group('scheme') or ''}{m.group('user') or m.group('bare') or ''}:{REDACTED}@",
                             text)
    return text
