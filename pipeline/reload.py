"""Applying a changed config's sources to a run under way (``ops.reload``: ``POST /reload`` on
the ops port, which ``segstream reload CONFIG`` sends).

The config file is read again, with the run's ``--set`` overrides and the environment as it is
now, and checked as at start (the model's class names for filters included); a config with a
mistake changes nothing. Sources are matched by name: a new name is added, a missing one removed
(its frames drain, its tracks end, it ends as ``removed``), one whose settings changed is removed
and added again (it goes on from its timeline: see ``Runtime.add_source``); a change of filters
alone (the source's own or the top-level ones) applies from the next frame without touching the
source. Every other section (model, engine, tracking, stages, sinks, ops, batch) takes a restart:
a reload that changes one says so and leaves it as it runs. So does a checkpoint file replaced on
disk under the same name (its SHA-256 against the one the run read). A changed model section or
checkpoint file is checked as ``segstream validate`` checks it (the file's kind, its tensors'
names, shapes and values, its classes), and a reload naming weights the restart could not load is
refused: it would say "takes a restart" of a restart that fails.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from segstream.connectors.errors import ConfigError, SegstreamError
from segstream.pipeline.config import PipelineConfig, SourceConfig
from segstream.pipeline.engine import BufferPolicy

log = logging.getLogger(__name__)

# The sections a reload leaves as they run.
RESTART_SECTIONS = ("model", "engine", "tracking", "stages", "sinks", "ops", "batch")
MAX_REASONS = 3  # the mistakes a refusal's line names
REMOVE_WAIT_S = 60.0  # how long a reload waits for a removed source's queued frames to drain


@dataclass
class Plan:
    """What a reload changes: sources ``added``, ``removed`` (names), ``restarted`` (settings
    changed), ``refiltered`` (names: filters changed alone), and the ``not_applied`` sections."""

    added: list[SourceConfig] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restarted: list[SourceConfig] = field(default_factory=list)
    refiltered: list[str] = field(default_factory=list)
    not_applied: list[str] = field(default_factory=list)
    weights_changed: str | None = None  # the checkpoint file the run read, changed on disk since

    def line(self, unchanged: int) -> str:
        parts = [f"{what} {', '.join(names)}" for what, names in (
            ("added", [s.name for s in self.added]), ("removed", self.removed),
            ("restarted", [s.name for s in self.restarted]), ("new filters for", self.refiltered)) if names]
        done = "; ".join(parts) if parts else "no source changed"
        sections = [*self.not_applied]
        if self.weights_changed and "model" not in sections:
            sections.append(f"model (its checkpoint {self.weights_changed} changed on disk since the run read it)")
        left = f"; not applied, they take a restart: {', '.join(sections)}" if sections else ""
        return f"reloaded: {done} ({unchanged} unchanged){left}"


def plan(running: PipelineConfig, new: PipelineConfig) -> Plan:
    """What applying ``new`` to a run of ``running`` changes."""
    before = {s.name: s for s in running.sources}
    out = Plan()
    for source in new.sources:
        old = before.get(source.name)
        if old is None:
            out.added.append(source)
        elif old.model_dump(exclude={"filters"}) != source.model_dump(exclude={"filters"}):
            out.restarted.append(source)
        elif running.filters_of(source.name) != new.filters_of(source.name):
            out.refiltered.append(source.name)
    names = {s.name for s in new.sources}
    out.removed = [name for name in before if name not in names]
    out.not_applied = [key for key in RESTART_SECTIONS if getattr(running, key) != getattr(new, key)]
    return out


def ops_address(path: str | Path) -> tuple[str, int]:
    """Where a run of the config at ``path`` serves its endpoints (its ``ops.http``, with
    ``${VAR}`` from this environment): a ``ConfigError`` naming what stops that being known."""
    from segstream.pipeline.config import OpsConfig, _error_line, interpolate, read_yaml

    try:
        section = {"ops": interpolate(read_yaml(path).get("ops") or {})}
        ops = OpsConfig.model_validate(section["ops"])
    except ConfigError as error:
        why = str(error).splitlines()[0]
    except ValidationError as error:  # as validate says it
        why = "; ".join(_error_line({**e, "loc": ("ops", *e["loc"])}, section) for e in error.errors())
    else:
        why = None
    if why is not None:
        raise ConfigError(f"{path}: where the run listens cannot be read ({why}) — give it with --ops HOST:PORT; "
                          "nothing was sent") from None
    if ops.address is None:
        raise ConfigError(f"{path}: ops.http is null, so the run serves no endpoint to reload through — give its "
                          "address with --ops HOST:PORT")
    return ops.address


class Reloader:
    """Applies the config that ``load()`` reads to ``runtime``'s sources, one reload at a time;
    called with no arguments, returns (applied, the line that says what happened)."""

    def __init__(self, runtime, running: PipelineConfig, load: Callable[[], PipelineConfig],
                 file: Path | None = None):
        self.runtime = runtime
        self.running = running  # the config whose sources and filters run now
        self.load = load
        self.file = file  # the file load() reads, when it is one
        self.outcomes: Counter[str] = Counter({"applied": 0, "partly": 0, "refused": 0})
        self._lock = threading.Lock()
        runtime.metrics.counter("config_reloads", "Reloads of the config file (POST /reload): applied; partly (a "
                                "section that takes a restart changed, or a source could not be taken out in time); "
                                "refused (a mistake in the file, a file source whose file is missing: nothing "
                                "changed).",
                                ("outcome",), lambda: {(outcome,): n for outcome, n in self.outcomes.items()})

    def __call__(self, asked_for: str | None = None) -> tuple[bool, str]:
        """(True when all of the file now runs, the line that says what happened). ``asked_for``:
        the file the reload was asked for (``segstream reload FILE``), refused when it is another
        file on this machine than the run's own."""
        if asked_for and self.file is not None and self._another(asked_for):
            # found probing: reload of an edited copy said "no source changed", the run having read its own
            self.outcomes["refused"] += 1
            return False, self._refused(f"this run reads {os.path.abspath(self.file)}, not {asked_for} — edit the "
                                        "run's own file, then reload it (another file takes a new run)")[1]
        if not self._lock.acquire(blocking=False):
            return False, "a reload is under way already: try again once it has ended"
        try:
            outcome, line = self._reload()
        finally:
            self._lock.release()
        self.outcomes[outcome] += 1
        return outcome == "applied", line

    def _another(self, asked_for: str) -> bool:
        """Whether the file a reload asked for is another than the run's: another file on this
        machine, or, where no such path is here (asked from another machine, whose path to the
        same file differs), another name. (Found probing as an attacker: the answer told whether
        any path existed here, /etc/shadow refused and a missing one reloaded.)"""
        try:
            if os.path.exists(asked_for) and self.file.exists():
                return not os.path.samefile(asked_for, self.file)
        except OSError:
            pass
        return os.path.basename(asked_for) != self.file.name

    def _reload(self) -> tuple[str, str]:
        from segstream.pipeline.builders import build_source
        from segstream.pipeline.filtering import segment_filters

        runtime = self.runtime
        try:
            new = self.load()
            filters = segment_filters(new, runtime.adapter.labels, [s.name for s in new.sources])
        except SegstreamError as error:
            return self._refused("; ".join(str(error).splitlines()))
        changes = plan(self.running, new)
        try:
            changes.weights_changed = self._check_model(new, "model" in changes.not_applied)
        except SegstreamError as error:
            return self._refused("; ".join(str(error).splitlines()))
        opened = {}
        try:
            for source in [*changes.added, *changes.restarted]:
                opened[source.name] = build_source(source)
        except SegstreamError as error:
            for source in opened.values():
                source.close()
            return self._refused(str(error))
        problems, missing = [], set()  # what could not be done; the names that do not run as the file says
        # held open: with every source leaving (one camera changed, an anchor all share), the run
        # ended before the new ones came, with exit 0 (found probing a systemd deployment)
        with runtime.held_open():
            leaving = [*changes.removed, *(s.name for s in changes.restarted)]
            for name in leaving:  # all closed at once: they drain together, against one deadline
                try:
                    runtime.remove_source(name)
                except ValueError:  # it had ended already (a file read to its end, a source that failed)
                    pass
            deadline = time.monotonic() + REMOVE_WAIT_S
            for name in leaving:
                if not runtime.wait_removed(name, max(0.0, deadline - time.monotonic())) and name in opened:
                    problems.append(f"source {name} was removed but its frames had not drained within "
                                    f"{REMOVE_WAIT_S:g} s, so it was not added again")
                    opened.pop(name).close()
                    missing.add(name)
            for source in [*changes.added, *changes.restarted]:
                if source.name not in opened:
                    continue
                try:
                    runtime.add_source(
                        opened[source.name], queue_size=source.queue_size, required=source.required,
                        buffer=BufferPolicy(source.buffer_kind,
                                            None if source.max_staleness_ms is None else source.max_staleness_ms / 1000)
                        if source.buffer_kind else None,  # (one's own source: what it declares)
                        segment_filter=filters.get(source.name))
                except (RuntimeError, ValueError) as error:
                    opened[source.name].close()
                    problems.append(str(error))
                    missing.add(source.name)
        for name in changes.refiltered:
            runtime.set_filter(name, filters.get(name))
        # the next reload compares with what runs: the sections not applied stay as they run, and a
        # source that could not be added again is added by the next one
        self.running = new.model_copy(update={
            **{key: getattr(self.running, key) for key in changes.not_applied},
            "sources": [s for s in new.sources if s.name not in missing]})
        line = changes.line(len(new.sources) - len(changes.added) - len(changes.restarted) - len(changes.refiltered))
        if problems:
            line += "; but " + "; ".join(problems)
        partly = bool(changes.not_applied or changes.weights_changed or problems)
        (log.warning if partly else log.info)("%s", line)
        return ("partly" if partly else "applied"), line

    def _check_model(self, new: PipelineConfig, section_changed: bool) -> str | None:
        """The weights file the run read when it changed on disk since (its SHA-256 against the one
        hashed at the start), else None; a changed model section or weights file checked as
        ``segstream validate`` checks it: a ``ConfigError`` naming what the restart would refuse."""
        from segstream.connectors.checkpoints import check_checkpoint, file_sha256
        from segstream.connectors.errors import CheckpointError
        from segstream.pipeline.model_factory import BUILTIN_FAMILIES, check_model_config, weights_read

        read = getattr(self.runtime, "weights", {}) or {}
        changed = None
        if not section_changed and read.get("checkpoint_sha256"):
            path = Path(read["checkpoint"])
            try:
                if file_sha256(path) != read["checkpoint_sha256"]:
                    changed = str(path)
            except OSError:  # removed or unreadable: the restart would not find it
                changed = str(path)
        if not (section_changed or changed):
            return None
        preset = check_model_config(new.model)
        if preset.family in BUILTIN_FAMILIES:  # a plugin's family checks its weights itself, when it loads
            try:
                if changed and weights_read(new.model) is None:
                    raise CheckpointError(f"checkpoint '{changed}' is no longer there")
                check_checkpoint(preset, new.model.checkpoint)
            except CheckpointError as error:
                said = "changed on disk, and " if changed else ""
                raise ConfigError(f"model.checkpoint: {said}{error}") from None
        return changed

    def _refused(self, why: str) -> tuple[str, str]:
        lines = why.split("; ")
        if len(lines) > MAX_REASONS:  # one mistake copied into many cameras is one line's worth
            why = "; ".join([*lines[:MAX_REASONS], f"and {len(lines) - MAX_REASONS} more (segstream validate lists "
                                                   "them all)"])
        line = f"reload refused, the run goes on unchanged: {why}"
        log.warning("%s", line)
        return "refused", line
