"""When an image was taken, as its file name says: the date and time a camera or an FTP upload
writes into it (``site_20261204_130501.jpg``), found by the usual namings or by a strftime-style
format, in a zone the name gives or the config says.

The usual namings (``NAME_TIME``): a date, year first, with or without separators (``-``, ``_``
or ``.``, the same one twice), then a time of day (hours, minutes, seconds, with or without ``-``,
``_``, ``:`` or ``.`` between them), after a ``T``, ``_``, ``-``, ``.``, a space or nothing:
``20261204_130501``, ``20261204130501``, ``2026-12-04_13-05-01``, ``2026-12-04T13:05:01``. Then,
optional: a fraction of a second after ``.`` or ``,`` (``13:05:01.250``), or three digits of
milliseconds straight after the seconds (``20261204130501250``), and a zone: ``Z``, ``+01:00``
or ``+0100`` (a ``-HHMM`` after the seconds reads as a counter, ``-HH:MM`` as a zone). The first
such date and time in the name counts; the folders above it do not.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

NAME_TIME = re.compile(
    r"(?<!\d)(?P<Y>(?:19|20)\d\d)(?P<ds>[-_.]?)(?P<m>0[1-9]|1[0-2])(?P=ds)(?P<d>0[1-9]|[12]\d|3[01])"
    r"[T_ .-]?"
    r"(?P<H>[01]\d|2[0-3])(?P<ts>[-_:.]?)(?P<M>[0-5]\d)(?P=ts)(?P<S>[0-5]\d)"
    r"(?:[.,](?P<f>\d{1,9})|(?P<ms>\d{3}))?"
    r"(?P<z>Z(?![A-Za-z])|[+-]\d\d:\d\d|\+\d{4})?"
    r"(?!\d)"
)

# strftime directives a timestamp_format may use, and what each matches in a name
_DIRECTIVES = {
    "Y": r"\d{4}", "y": r"\d\d", "m": r"\d\d?", "d": r"\d\d?", "j": r"\d{1,3}", "b": r"[A-Za-z]{3}",
    "B": r"[A-Za-z]{3,9}", "H": r"\d\d?", "I": r"\d\d?", "p": r"[AaPp][Mm]", "M": r"\d\d?", "S": r"\d\d?",
    "f": r"\d{1,6}", "z": r"(?:Z|[+-]\d\d:?\d\d)", "s": r"\d{1,12}", "%": "%",
}
_DIRECTIVE = re.compile(r"%(.?)")
_DIGIT_DIRECTIVES = set("YymdjHIMSfs")
_DATE_SETS = ({"Y", "m", "d"}, {"y", "m", "d"}, {"Y", "j"}, {"y", "j"}, {"Y", "b", "d"}, {"Y", "B", "d"},
              {"y", "b", "d"}, {"y", "B", "d"})
_OFFSET = re.compile(r"(?:UTC|GMT)?([+-])(\d\d?)(?::?(\d\d))?")


class NameTimes:
    """Reads an image's time from its file name: ``unix(name)`` is its Unix time in seconds, or
    None when the name holds none. ``format`` (strftime-style: ``%Y %y %m %d %j %b %B %H %I %p %M
    %S %f %z``, ``%s`` for Unix seconds, ``%%``) is searched for in the name instead of the usual
    namings. A time the name writes without a zone is in ``zone`` (``zone_of``), or this
    machine's local time when None."""

    def __init__(self, format: str | None = None, zone: tzinfo | None = None):
        problem = format_problem(format) if format is not None else None
        if problem is not None:
            raise ValueError(problem)
        self.format = format
        self.zone = zone
        self._pattern = _format_pattern(format) if format is not None else NAME_TIME

    def unix(self, name: str, later: bool = False) -> float | None:
        """The Unix time ``name`` writes, None when it writes none. A local time the clocks
        going back made twice (an autumn night's 02:30) is the first, or with ``later`` the
        second."""
        base = name.replace("\\", "/").rpartition("/")[2]
        for match in self._pattern.finditer(base):
            try:
                moment = self._moment(match)
            except (ValueError, OverflowError):  # 31 February, a 25th hour: no time, look further
                continue
            if isinstance(moment, float):
                return moment
            if moment.tzinfo is None:
                moment = moment if self.zone is None else moment.replace(tzinfo=self.zone)
                moment = moment.replace(fold=int(later))  # (no zone written: which of a twice-lived hour)
            return moment.timestamp()  # a naive one as this machine's local time
        return None

    def _moment(self, match: re.Match) -> datetime | float:
        if self.format is not None:
            groups = match.groupdict()
            if groups.get("s") is not None:
                return float(int(groups["s"])) + (int(groups["f"]) / 10 ** len(groups["f"]) if groups.get("f") else 0.0)
            return datetime.strptime(match.group(0), self.format)
        g = match.groupdict()
        fraction = (g["f"] or g["ms"] or "")[:6]  # past microseconds a Unix time in a float holds no more
        moment = datetime(int(g["Y"]), int(g["m"]), int(g["d"]), int(g["H"]), int(g["M"]), int(g["S"]),
                          int(fraction.ljust(6, "0")) if fraction else 0)
        return moment.replace(tzinfo=_fixed(g["z"])) if g["z"] else moment

    def describe(self) -> str:
        """The zone name times without one are read in, for a log line."""
        if self.zone is None:
            local = datetime.now().astimezone().tzinfo
            return f"this machine's local time ({local})"
        return str(self.zone)


def _fixed(text: str) -> tzinfo:
    if text == "Z":
        return timezone.utc
    match = _OFFSET.fullmatch(text)
    if match is None:
        raise ValueError(f"'{text}' is not a UTC offset")
    sign, hours, minutes = match.groups()
    offset = timedelta(hours=int(hours), minutes=int(minutes or 0))
    if offset >= timedelta(hours=24):
        raise ValueError(f"'{text}' is not a UTC offset")
    return timezone(-offset if sign == "-" else offset)


def zone_of(text: str | None) -> tzinfo | None:
    """The zone ``timestamp_zone`` names: an IANA name (``Europe/Berlin``), ``UTC``, or an offset
    from it (``+01:00``, ``-0530``, ``UTC+2``); None for None (this machine's local time). A
    ``ValueError`` that says what to write when it names none."""
    if text is None:
        return None
    if text.upper() in ("UTC", "Z", "GMT"):
        return timezone.utc
    if _OFFSET.fullmatch(text):
        return _fixed(text)
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timestamp_zone '{text}' is not a time zone this machine knows — give an IANA name such "
                         "as Europe/Berlin (from the system's zone database, /usr/share/zoneinfo, or the tzdata "
                         "package), UTC, or an offset such as +01:00") from None


def format_problem(format: str) -> str | None:
    """What is wrong with a ``timestamp_format``, in one line; None when it can be read."""
    used = [m.group(1) for m in _DIRECTIVE.finditer(format)]
    unknown = [d for d in used if d not in _DIRECTIVES]
    if unknown:
        what = f"'%{unknown[0]}'" if unknown[0] else "a '%' at its end"
        return (f"timestamp_format '{format}' has {what}, which is not read — use %Y %y %m %d %j %b %B %H %I %p %M "
                "%S %f %z, %s (Unix seconds), and %% for a '%'")
    named = set(used) - {"%"}
    if "s" in named:
        if named - {"s", "f"}:
            return f"timestamp_format '{format}' has %s (Unix seconds) with other fields — %s stands alone (or with %f)"
        return None
    if not any(date <= named for date in _DATE_SETS):
        return (f"timestamp_format '{format}' gives no whole date — it needs the year (%Y or %y) and the month "
                "and day (%m %d, %b %d) or the day of the year (%j), or %s for Unix seconds")
    for directive in named:
        if used.count(directive) > 1:
            return f"timestamp_format '{format}' has %{directive} twice"
    return None


def _format_pattern(format: str) -> re.Pattern:
    """A pattern that finds what ``format`` writes anywhere in a name, not inside a longer run of
    digits."""
    parts, at = [], 0
    for match in _DIRECTIVE.finditer(format):
        parts.append(re.escape(format[at:match.start()]))
        directive = match.group(1)
        body = _DIRECTIVES[directive]
        parts.append(f"(?P<{directive}>{body})" if directive in ("s", "f") else f"(?:{body})")
        at = match.end()
    parts.append(re.escape(format[at:]))
    pattern = "".join(parts)
    first = _DIRECTIVE.match(format)
    if first is not None and first.group(1) in _DIGIT_DIRECTIVES:
        pattern = r"(?<!\d)" + pattern
    last = [m for m in _DIRECTIVE.finditer(format) if m.end() == len(format)]
    if last and last[0].group(1) in _DIGIT_DIRECTIVES:
        pattern += r"(?!\d)"
    return re.compile(pattern)
