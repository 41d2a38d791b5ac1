"""Connecting to Redis the way the publisher and every reader do: URL, ACL user or password, TLS,
timeouts, one-line errors, and the backoff between reconnect attempts.

A Redis behind Sentinel is named by ``redis+sentinel://[user:pass@]host1:26379,host2:26379/<master>[/db]``
(``rediss+sentinel://`` for TLS to the sentinels and the master), the form of redis-vl and Prefect:
the user and password are the master's, the sentinels' own login is ``SentinelAuth``. redis-py's
``Sentinel`` finds the master, and again at each new connection, so a failover is an outage that
ends on the promoted replica.

Part of the consumer SDK (``segstream.client``): needs redis-py only.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.exceptions
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from segstream.connectors.errors import SinkError
from segstream.connectors.urls import redact_url

# The pools of clients that reach the master through the sentinels, of redis-py and of redis.asyncio
# (which ``import redis`` loads anyway)
_SENTINEL_POOLS = (SentinelConnectionPool, redis.asyncio.sentinel.SentinelConnectionPool)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """TLS for ``rediss://`` URLs: the CA that signed the server's certificate (None: the
    system's), and the client's certificate and key for servers that ask for one (mutual TLS)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = True

    def options(self) -> dict:
        return {
            "ssl_ca_certs": self.ca_file,
            "ssl_certfile": self.cert_file,
            "ssl_keyfile": self.key_file,
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": self.check_hostname,
        }


@dataclass(frozen=True, slots=True)
class SentinelAuth:
    """The sentinels' own login (their ``requirepass``, or an ACL user), apart from the master's."""

    username: str | None = None
    password: str | None = None


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL: where the sentinels listen, the master's name and database,
    the master's login, and whether TLS is spoken (to the sentinels and the master alike)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


@dataclass(frozen=True, slots=True)
class SettingNames:
    """Where a user sets each connection setting, for the hints of connection errors."""

    password: str = "sinks.redis.password (REDIS_PASSWORD)"
    username: str = "sinks.redis.username"
    tls: str = "sinks.redis.tls: ca_file, cert_file, key_file"
    sentinel: str = "sinks.redis.sentinel.password and .username"
    url: str = "sinks.redis.url"
    timeout: str = "sinks.redis.timeout_s"


COMMAND_LINE = SettingNames("--password ($REDIS_PASSWORD)", "--username ($REDIS_USERNAME)",
                            "--tls-ca, --tls-cert, --tls-key",
                            "--sentinel-password ($REDIS_SENTINEL_PASSWORD) and --sentinel-username", "--url", "")


# How long a connect waits for a Redis that answers LOADING (restarted, reading its dataset from
# disk): found as a flaky test, a client connecting just after a restart failed with "start Redis".
LOADING_WAIT_S = 30.0


class RedisUnreachable(SinkError):
    """Nothing answers at the Redis address (refused, timed out, no such host): unlike wrong
    credentials, the same address may answer in a moment (``sinks.redis.start_wait_s``)."""


def connect_redis(
    url: str,
    password: str | None = None,
    *,
    hint: str = "start Redis or fix sinks.redis.url",
    names: SettingNames = SettingNames(),
    **settings,
) -> redis.Redis:
    """A client for ``url`` (see ``redis_client`` for the settings) that has answered PING;
    failures become one-line ``SinkError``s that never show the password."""
    client = redis_client(url, password, names=names, **settings)
    deadline = time.monotonic() + LOADING_WAIT_S
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.BusyLoadingError as error:  # restarted, reading its dataset: it answers soon
            if time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            client.close()
            raise connect_problem(client, error, names, hint) from None
        except (redis.RedisError, OSError) as error:
            if _up_refusing_writes(error):
                break
            client.close()
            raise connect_problem(client, error, names, hint) from None
    if _is_sentinel(client):
        client.close()
        raise SinkError(_REACHED_A_SENTINEL.format(where=redis_address(client)))
    return client


def redis_client(
    url: str,
    password: str | None = None,
    *,
    username: str | None = None,
    tls: TlsFiles | None = None,
    socket_timeout: float | None = 5.0,
    connect_timeout: float = 5.0,
    client_name: str | None = None,
    retries: int = 0,
    protocol: int | None = None,
    names: SettingNames = SettingNames(),
    sentinel: SentinelAuth | None = None,
    asynchronous: bool = False,
) -> redis.Redis | redis.asyncio.Redis:
    """The client ``connect_redis`` checks, not connected yet: a ``redis.asyncio.Redis`` when
    ``asynchronous`` (what the asyncio SDK checks itself). A Sentinel URL asks its sentinels now.

    The client returns bytes (the ``idmap`` field is binary). ``retries`` are redis-py's own
    reconnect attempts per command, with a short backoff. ``protocol`` 2 talks RESP2 to servers
    older than Redis 6 (redis-py 8 speaks RESP3 by default). A ``redis+sentinel://`` URL asks its
    sentinels (logging in with ``sentinel``) for the master, at this connection and each new one.
    """
    options: dict = dict(
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        health_check_interval=30,
        client_name=client_name,
        retry=(AsyncRetry if asynchronous else Retry)(ExponentialBackoff(cap=1.0, base=0.1), retries),
    )
    if not url.startswith("unix:"):
        options["socket_keepalive"] = True  # TCP only; unix socket connections refuse the option
    if password is not None:
        if (in_url := url_password(url)) is not None and in_url != password:
            # redis-py would log in with the URL's, silently: a rotated secret set in one place only
            raise SinkError(f"the Redis URL {redis_url_shown(url)} has a password and {names.password} another one, "
                            "and the URL's would be used — keep the password in one of them")
        options["password"] = password
    if username is not None:
        options["username"] = username
    if protocol is not None:
        options["protocol"] = protocol
    if is_sentinel_url(url):
        return _sentinel_master(url, options, tls, sentinel or SentinelAuth(), names, asynchronous)
    if problem := tls_query_problem(url):
        raise SinkError(f"the Redis URL {redis_url_shown(url)} {problem}")
    _add_tls(options, url.startswith("rediss:"), tls, url, "rediss://")
    try:
        client = (redis.asyncio.Redis if asynchronous else redis.Redis).from_url(url, **options)
    except ValueError as error:
        raise SinkError(
            f"invalid Redis URL {redis_url_shown(url)}: {_url_problem(error, url)} — "
            "use redis://host:port/db or rediss://"
        ) from None
    problem = database_problem(url)  # parsed by now: nothing of a password is taken for the path
    if problem:  # nothing connected yet: nothing to close
        raise SinkError(f"{redis_url_shown(url)} {problem} — use redis://host:port/0")
    return client


_REACHED_A_SENTINEL = ("the server at {where} is a Redis Sentinel, which keeps no streams — name the master "
                       "through it: redis+sentinel://host:26379/<master-name> (rediss+sentinel:// with TLS)")


def connect_problem(client, error: BaseException, names: SettingNames, hint: str) -> BaseException:
    """The one-line ``SinkError`` for ``client``'s first command (PING) failing with ``error``
    (``error`` itself when it is none of the expected ones)."""
    where = redis_address(client)
    if isinstance(error, (redis.AuthenticationError, redis.exceptions.AuthorizationError)):
        return SinkError(credentials_problem(client, error, names))
    if isinstance(error, redis.exceptions.NoPermissionError):  # logged in, but PING or CLIENT SETNAME refused
        return SinkError(f"Redis at {where} refused: {error_summary(error)} — grant the user the connection "
                         "commands (ACL: +@connection)")
    if isinstance(error, redis.exceptions.InvalidResponse):  # an HTTP server, a database of another kind
        return SinkError(f"the server at {where} is not Redis: it answered PING with {error_summary(error)} — "
                         "check the host and port")
    if isinstance(error, redis.ResponseError):
        text = error_summary(error)
        if text.startswith(("NOAUTH", "WRONGPASS")):
            return SinkError(f"Redis at {where} wants credentials: {text} — set {names.password}")
        return SinkError(f"Redis at {where} refused PING: {text}")
    if isinstance(error, redis.exceptions.BusyLoadingError):
        return RedisUnreachable(f"Redis at {where} is still loading its dataset after {LOADING_WAIT_S:g} s — wait "
                                "for it to finish (its log says how far it is), then try again")
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError, OSError)):
        text = error_summary(error)
        if "certificate" in text.lower() or "ssl" in text.lower() or "tls" in text.lower():
            hint = f"check the TLS settings ({names.tls}) and the server's certificate"
        elif where.startswith("rediss://") and isinstance(error, redis.TimeoutError):
            hint = f"{hint}; a server without TLS never answers TLS's hello: if it has none, use redis://"
        elif where.startswith("redis://") and "reset by peer" in text.lower():
            hint = f"{hint}; a TLS port resets plain connections: if the server wants TLS, use rediss://"
        if isinstance(error, redis.TimeoutError) and names.timeout:  # found probing a remote site (1.5 s round trips)
            options = client.connection_pool.connection_kwargs  # ("Timeout connecting to server": the connect's)
            waited = options.get("socket_connect_timeout" if "connecting" in text.lower() else "socket_timeout")
            hint = (f"{hint}; or it answers more slowly than the {waited:g} s allowed (a far link: raise "
                    f"{names.timeout})" if waited else hint)
        return RedisUnreachable(f"cannot reach Redis at {where}: {text} — {hint}")
    return error


def _add_tls(options: dict, wanted: bool, tls: TlsFiles | None, url: str, form: str) -> None:
    """The TLS options of a URL that speaks TLS (``wanted``); TLS files given for one that does
    not are one line naming the URL form that would use them."""
    if wanted:
        options.update((tls or TlsFiles()).options())
    elif tls is not None and (tls.ca_file or tls.cert_file or tls.key_file):
        raise SinkError(f"TLS files are set but {redis_url_shown(url)} is not a {form} URL — use {form}")


async def connect_redis_async(
    url: str,
    password: str | None = None,
    *,
    hint: str = "start Redis or fix sinks.redis.url",
    names: SettingNames = SettingNames(),
    **settings,
) -> redis.asyncio.Redis:
    """``connect_redis`` for asyncio: a ``redis.asyncio.Redis`` that has answered PING, with the
    same settings and the same one-line errors."""
    # Asking sentinels for the master (a Sentinel URL) blocks: off the event loop.
    client = await asyncio.to_thread(redis_client, url, password, names=names, asynchronous=True, **settings)
    deadline = time.monotonic() + LOADING_WAIT_S
    while True:
        try:
            await client.ping()
            break
        except redis.exceptions.BusyLoadingError as error:  # restarted, reading its dataset: it answers soon
            if time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                continue
            await client.aclose()
            raise connect_problem(client, error, names, hint) from None
        except (redis.RedisError, OSError) as error:
            if _up_refusing_writes(error):
                break
            await client.aclose()
            raise connect_problem(client, error, names, hint) from None
    if not isinstance(client.connection_pool, _SENTINEL_POOLS):
        try:
            mode = (await client.info("server")).get("redis_mode")
        except redis.RedisError:  # INFO refused (ACL): it answers as a Redis would
            mode = None
        if mode == "sentinel":
            await client.aclose()
            raise SinkError(_REACHED_A_SENTINEL.format(where=redis_address(client)))
    return client


def _up_refusing_writes(error: BaseException) -> bool:
    """A PING refused by a Redis that cannot save its snapshots (MISCONF): it refuses PING with the
    writes, but it is up, its reads go on, and a publisher rides the refusal out as it would one
    met later."""
    return isinstance(error, redis.ResponseError) and error_summary(error).startswith("MISCONF")


def _is_sentinel(client: redis.Redis) -> bool:
    """Whether ``client`` reached a Sentinel (INFO's ``redis_mode``), not a Redis (found by
    release QA: a sentinel's port as a plain URL ended in "unknown command 'EXISTS'")."""
    if isinstance(client.connection_pool, SentinelConnectionPool):
        return False  # reached through the sentinels: the master itself
    try:
        return client.info("server").get("redis_mode") == "sentinel"
    except redis.RedisError:  # INFO refused (ACL): it answers as a Redis would
        return False


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


_SENTINEL_FORM = "redis+sentinel://[user:password@]host1:26379,host2:26379/<master-name>[/db]"
_BRACKETED = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?")
_PLAIN = re.compile(r"([\w.-]+)(?::(\d+))?")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """``redis+sentinel://[user:password@]host1[:port],host2[:port]/<master-name>[/db]`` (port
    26379 when left out; ``rediss+sentinel://`` for TLS). ``ValueError`` says what is wrong, in
    words that never quote the password."""
    from urllib.parse import unquote

    scheme, _, rest = url.partition("://")
    if scheme.lower() not in SENTINEL_SCHEMES:
        raise ValueError("is not a redis+sentinel:// or rediss+sentinel:// URL")
    userinfo, at, rest = rest.rpartition("@")
    if "?" in rest or "#" in rest:
        raise ValueError("has a query or fragment, which a Sentinel URL does not take (the sentinels' login is "
                         "set apart: sinks.redis.sentinel)")
    hosts, _, path = rest.partition("/")
    sentinels = []
    for part in hosts.split(","):
        match = _BRACKETED.fullmatch(part) or _PLAIN.fullmatch(part)
        if not part or match is None:
            raise ValueError(f"lists {part!r} as a sentinel, which is no host[:port] (sentinels are separated "
                             "by commas)")
        port = int(match.group(2) or SENTINEL_PORT)
        if not 0 < port < 65536:
            raise ValueError(f"gives sentinel {match.group(1)} port {port}, out of range")
        sentinels.append((match.group(1), port))
    names = path.strip("/").split("/") if path.strip("/") else []
    if not names:
        raise ValueError("names no master: end it with /<master-name>, the name of the sentinels' "
                         "'sentinel monitor' line")
    if len(names) > 2 or (len(names) == 2 and not names[1].isdigit()):
        raise ValueError(f"has the path '/{path.strip('/')}' where /<master-name>[/db] goes (db a number)")
    user, colon, password = userinfo.partition(":") if at else ("", "", "")
    return SentinelUrl(tuple(sentinels), unquote(names[0]), int(names[1]) if len(names) == 2 else 0,
                       unquote(user) or None, unquote(password) if colon else None,
                       scheme.lower() == "rediss+sentinel")


# What the sentinels' own connections take of a master connection's options.
_SENTINEL_OPTIONS = ("socket_connect_timeout", "socket_timeout", "socket_keepalive", "protocol", "retry")


def _sentinel_master(url: str, options: dict, tls: TlsFiles | None, auth: SentinelAuth,
                     names: SettingNames, asynchronous: bool = False) -> redis.Redis | redis.asyncio.Redis:
    """A client of the master the sentinels of ``url`` name, found now (one-line errors for no sentinel
    answering, a master name they do not know, a login they refuse) and again at each new connection."""
    try:
        parsed = parse_sentinel_url(url)
    except ValueError as error:
        raise SinkError(f"the Sentinel URL {redis_url_shown(url)} {error} — use {_SENTINEL_FORM}") from None
    _add_tls(options, parsed.tls, tls, url, "rediss+sentinel://")
    sentinel_options = {key: value for key, value in options.items()
                        if key in _SENTINEL_OPTIONS or key.startswith("ssl_")}
    if parsed.tls:
        sentinel_options["ssl"] = True
    if auth.password is not None:
        sentinel_options["password"] = auth.password
    if auth.username is not None:
        sentinel_options["username"] = auth.username
    # Asked once here, by redis-py (the asyncio SDK too: its one-line errors are these); asked
    # afresh at each new master connection by the client's own manager.
    checked = dict(sentinel_options, retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 0))
    manager = Sentinel(list(parsed.sentinels), sentinel_kwargs=checked if asynchronous else sentinel_options)
    try:
        _find_master(manager, parsed, auth, names)
    finally:
        for node in manager.sentinels:
            node.connection_pool.disconnect()
    master_options = dict(options, db=parsed.db, ssl=parsed.tls)
    if parsed.password is not None:  # the URL's login, as redis-py's from_url lets it win
        master_options["password"] = parsed.password
    if parsed.username is not None:
        master_options["username"] = parsed.username
    if asynchronous:
        manager = redis.asyncio.sentinel.Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_options)
    return manager.master_for(parsed.master, **master_options)


def _find_master(manager: Sentinel, parsed: SentinelUrl, auth: SentinelAuth, names: SettingNames) -> None:
    """Ask each sentinel for the master until one knows it; else one line saying why none did."""
    listed = ", ".join(_host_port(host, port) for host, port in parsed.sentinels)
    unreachable, refused, known = [], None, set()
    for node, (host, port) in zip(manager.sentinels, parsed.sentinels):
        where = _host_port(host, port)
        try:
            if node.sentinel_get_master_addr_by_name(parsed.master):
                return
            known.update(_text(name) for name in node.sentinel_masters())
        except redis.RedisError as error:
            if is_credentials_refusal(error) or "without any password configured" in str(error):
                refused = refused or (where, error)
            elif isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
                unreachable.append(f"{where}: {error_summary(error)}")
            else:  # answers, but knows no SENTINEL command
                unreachable.append(f"{where} is a Redis server, not a sentinel")
            continue
        except OSError as error:
            unreachable.append(f"{where}: {error_summary(error)}")
            continue
    if refused is not None:
        where, error = refused
        given = "a password" if auth.password is not None else "no password"
        said = error_summary(error)
        if auth.password is None:  # Redis's own words on HELLO say nothing more than that
            said = ""
        raise SinkError(f"the sentinel at {where} refused the login ({given} given{': ' + said if said else ''}) — "
                        f"set the sentinels' own password, {names.sentinel} (their requirepass, not the master's)")
    if known or len(unreachable) < len(parsed.sentinels):
        they_know = f"they know {', '.join(repr(name) for name in sorted(known))}" if known else "they monitor none"
        raise SinkError(f"the sentinels at {listed} know no master named {parsed.master!r} ({they_know}) — fix the "
                        f"master name at the end of {names.url} (/<master-name>, as in their 'sentinel monitor' line)")
    hint = ""
    if parsed.tls and all("Timeout" in line for line in unreachable):
        hint = "; a sentinel without TLS never answers TLS's hello: if they have none, use redis+sentinel://"
    raise RedisUnreachable(f"no sentinel answers ({'; '.join(unreachable)}) — start the sentinels or fix the hosts "
                           f"in {names.url} ({_SENTINEL_FORM}){hint}")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def credentials_problem(client: redis.Redis, error: BaseException, names: SettingNames = SettingNames()) -> str:
    """One line for Redis refusing ``client``'s credentials (none given, or wrong), at start or at
    a reconnect (a server restarted with ``requirepass``)."""
    where = redis_address(client)
    user = client.connection_pool.connection_kwargs.get("username")  # set, or the URL's
    text = error_summary(error)
    if text.startswith("HELLO must be called"):  # RESP3's way of saying it, naming an option of the protocol
        text = "Authentication required."
    if not client.connection_pool.connection_kwargs.get("password"):
        return (f"Redis at {where} wants a password and none was given: {text} — "
                f"set {names.password}" + (f" (and the user, {names.username})" if not user else ""))
    who = f"user {user!r}" if user else "the default user"
    return (f"Redis at {where} refused the credentials of {who}: {text} — "
            f"set the right password, {names.password}, and user, {names.username}")


def is_credentials_refusal(error: BaseException) -> bool:
    """Redis refused the login (a password wanted, or wrong), as redis-py reports it at connect."""
    return isinstance(error, (redis.AuthenticationError, redis.exceptions.AuthorizationError)) or (
        isinstance(error, redis.ResponseError) and str(error).startswith(("NOAUTH", "WRONGPASS")))


def tls_query_problem(url: str) -> str | None:
    """What is wrong with TLS settings in a Redis URL's query (``?ssl_cert_reqs=none``), or None:
    redis-py lets them override the ``tls:`` settings, so a URL could turn certificate checks
    off behind them, silently."""
    names = sorted({key for key, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)
                    if key.lower().startswith("ssl")})
    if not names:
        return None
    return (f"sets TLS in its query ({', '.join(names)}), which would override the tls: settings — remove it "
            "and use sinks.redis.tls (ca_file, cert_file, key_file, check_hostname) or the tail command's --tls-* "
            "options")


def database_problem(url: str) -> str | None:
    """What is wrong with a Redis URL's database, or None: redis-py takes a word for database 0."""
    database = urlsplit(url).path.strip("/") if not url.startswith("unix:") else ""
    return f"names database '{database}', not a number" if database and not database.isdigit() else None


def redis_address(client: redis.Redis) -> str:
    """Where ``client`` connects, without credentials: redis[s]://host:port or unix://path."""
    pool = client.connection_pool
    if isinstance(pool, _SENTINEL_POOLS):
        scheme = "rediss" if "ssl_cert_reqs" in pool.connection_kwargs else "redis"
        if pool.master_address is None:
            sentinels = ",".join(_host_port(node.connection_pool.connection_kwargs.get("host", "?"),
                                            node.connection_pool.connection_kwargs.get("port", SENTINEL_PORT))
                                 for node in pool.sentinel_manager.sentinels)
            return f"Sentinel master {pool.service_name!r} (sentinels {sentinels})"
        host, port = pool.master_address
        return f"{scheme}://{_host_port(host, port)} (Sentinel master {pool.service_name!r})"
    options = client.get_connection_kwargs()
    if options.get("path"):
        return f"unix://{options['path']}"
    scheme = "rediss" if "ssl_cert_reqs" in options else "redis"
    return f"{scheme}://{options.get('host', 'localhost')}:{options.get('port', 6379)}"


def url_password(url: str) -> str | None:
    """The password a Redis URL carries (in its user info, or a ``password=`` query parameter), if any."""
    try:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query)).get("password")
        return unquote(parts.password) if parts.password else query or None
    except ValueError:  # a URL that does not parse says so when it is used
        return None


def redis_url_shown(url: str) -> str:
    """``url`` with any password in it replaced by ***, in the user info or in a ``password=``
    query parameter (redis-py reads one); the ACL user name stays."""
    return redact_url(url, keep_user=True)


def _url_problem(error: ValueError, url: str) -> str:
    """redis-py's reason a URL is invalid, unless it quotes part of the credentials (urllib
    quotes a password with an unescaped ``/``, ``?`` or ``#`` as the port)."""
    text = error_summary(error)
    credentials = url.partition("://")[2].rpartition("@")[0]
    if any(part in text for part in re.split(r"[:/?#]", credentials) if part):
        return ("it does not parse (percent-encode / ? # @ in a password written in the URL — a ${VAR} is "
                "encoded for you — or set the password on its own)")
    return text


# redis-py prefixes an error inside a pipeline with the command and all its arguments (an XADD's fields)
_PIPELINE_PREFIX = re.compile(r"^Command # \d+ \(.*?\) of pipeline caused error: ", re.DOTALL)


def error_summary(error: BaseException | None) -> str:
    """The first line of an exception's message, for one-line user errors (without the command a
    pipeline's error quotes, nor the arguments Redis quotes of an unknown command: an entry's fields)."""
    text = _PIPELINE_PREFIX.sub("", str(error).strip())
    return text.splitlines()[0].split(", with args beginning with:")[0] if text else type(error).__name__


def key_refused(error: BaseException) -> bool:
    """Whether Redis refused a command for its keys (NOPERM: the user's ACL key patterns do not
    match them), not for the command itself."""
    text = str(error).lower()
    return isinstance(error, redis.exceptions.NoPermissionError) and "permissions to access" in text and "key" in text


class Backoff:
    """Waits between reconnect attempts: doubling from ``first_s`` up to ``max_s``, each drawn
    uniformly from its upper half (jitter, so that many clients do not reconnect in step)."""

    def __init__(self, first_s: float = 0.2, max_s: float = 5.0):
        self.first_s = first_s
        self.max_s = max(max_s, first_s)
        self._next = first_s

    def next(self) -> float:
        ceiling = self._next
        self._next = min(self._next * 2, self.max_s)
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self._next = self.first_s
