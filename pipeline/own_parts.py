"""Stages and sinks of one's own, named in a config: ``stages:`` and ``sinks.custom:``.

``use`` names a factory as ``module:attribute`` (imported as Python imports: an installed
package, or a module on PYTHONPATH) or as the name of an installed entry point (group
``segstream.stages`` or ``segstream.sinks``). A stage's factory is called as
``factory(source_name, **options)`` once for each source it applies to, when the run starts; a
sink's as ``factory(**options)``. A factory that cannot be found, imported or called with its
options is one ``ConfigError`` line naming the config's key (``segstream validate`` says so
without calling it); one that raises is one line naming it. At run time, what a stage raises
stops the run with one ``StageError`` line, what a sink raises with one ``SinkError`` line,
each naming the part, its source and frame (the traceback is logged at debug level).
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import entry_points
from typing import Any

import numpy as np

from segstream.connectors.errors import ConfigError, SinkError, SourceError, StageError
from segstream.connectors.redis_wire import event_data_json
from segstream.connectors.sink import SINK_METHODS
from segstream.models.results import Event, FrameResult, Segments

SOURCE_GROUP = "segstream.sources"
STAGE_GROUP = "segstream.stages"
SINK_GROUP = "segstream.sinks"
# What the runtime uses of a source of one's own (segstream.VideoSource): name and live too
SOURCE_METHODS = ("frames", "close")

log = logging.getLogger("segstream.own_parts")


def _reason(error: BaseException) -> str:
    if isinstance(error, SyntaxError) and error.filename:  # its own text names the file without its folder
        return " ".join(f"{type(error).__name__}: {error.msg} ({error.filename}, line {error.lineno})".split())
    if isinstance(error, SystemExit):  # a plugin's sys.exit("...") said nothing of whose it was
        return f"SystemExit: sys.exit({error.code!r}) was called"
    return " ".join(f"{type(error).__name__}: {error}".split())


def _subject(item: Any = None) -> str:
    """What a sink was given (its call's first argument), for its error line."""
    if isinstance(item, FrameResult):
        return f" (frame {item.index} of source {item.source})"
    if isinstance(item, Event):
        return f" (event {item.kind} of source {item.source})"
    return ""


def resolve(use: str, group: str, where: str) -> Callable:
    """The factory ``use`` names (``module:attribute`` or an entry point of ``group``); a
    ``ConfigError`` line starting with ``where`` when it cannot be had."""
    if ":" in use:
        module_name, _, attribute = use.partition(":")
        try:
            factory: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            missing = error.name or ""
            if module_name == missing or module_name.startswith(missing + "."):
                raise ConfigError(f"{where}: cannot import module '{module_name}' ({_reason(error)}) — install its "
                                  "package, or put the folder that holds it on PYTHONPATH") from None
            # its own package's module missing is a mistake in it; another package's, one to install
            own = missing.partition(".")[0] == module_name.partition(".")[0]
            raise ConfigError(f"{where}: module '{module_name}' failed to import: {_reason(error)} — "
                              f"{'check the import there' if own else 'install what it imports'}") from None
        except (Exception, SystemExit) as error:  # the module's own errors: its fault, said in one line
            raise ConfigError(f"{where}: module '{module_name}' failed to import: {_reason(error)} — fix it "
                              "there") from None
        for part in attribute.split("."):
            try:
                factory = getattr(factory, part)
            except AttributeError:
                raise ConfigError(f"{where}: module '{module_name}' has no '{attribute}' — check the name after "
                                  "the ':'") from None
    else:
        found = [entry for entry in entry_points(group=group) if entry.name == use]
        if not found:
            known = sorted(entry.name for entry in entry_points(group=group))
            installed = f"installed: {', '.join(known)}" if known else "none is installed"
            example = {SOURCE_GROUP: "my_package.sources:GigECamera", SINK_GROUP: "my_package.sinks:KafkaSink"}.get(
                group, "my_package.stages:LineCrossing")
            raise ConfigError(f"{where}: '{use}' is no entry point of the group {group} ({installed}) — write "
                              f"module:attribute, e.g. {example}")
        try:
            factory = found[0].load()
        except Exception as error:
            raise ConfigError(f"{where}: entry point {use} ({found[0].value}) failed to load: {_reason(error)}") from None
    if not callable(factory):
        kind = type(factory).__name__
        raise ConfigError(f"{where}: {use} is {'an' if kind[0] in 'aeiou' else 'a'} {kind}, not a factory to call — "
                          "name a class or a function")
    return factory


def _call_problem(factory: Callable, args: tuple, options: dict) -> str | None:
    """Why ``factory(*args, **options)`` cannot be called (None: it can, or its signature is not known)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins and extension types do not say
        return None
    try:
        signature.bind(*args, **options)
    except TypeError as error:
        try:
            given = set(signature.bind_partial(*args).arguments)  # what the positional arguments take
        except TypeError:  # (too many of them: Python's own words)
            return str(error)
        params = list(signature.parameters.values())
        by_keyword = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                      and p.name not in given]
        any_keyword = any(p.kind == p.VAR_KEYWORD for p in params)
        problems = []
        for key in options:
            if key in given:
                problems.append(f"multiple values for argument '{key}'")
            elif key not in by_keyword and not any_keyword:
                # a typo'd option: said as a config key's is (found probing as a plugin author)
                close = difflib.get_close_matches(key, by_keyword, n=1)
                problems.append(f"got an unexpected keyword argument '{key}'"
                                + (f" (option '{key}': did you mean '{close[0]}'?)" if close else ""))
        problems += [f"missing a required argument: '{p.name}'" for p in params
                     if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                     and p.default is p.empty and p.name not in given
                     and (p.name not in options or p.kind == p.POSITIONAL_ONLY)]
        # every one at once (found probing the docs: a fix, a rerun, the next one)
        return "; ".join(problems) if problems else str(error)
    return None


def _class_problem(factory: Callable, group: str) -> str | None:
    """What a class named as a factory lacks (its instances would be refused at the run)."""
    if not inspect.isclass(factory) or hasattr(factory, "__getattr__"):  # (methods it makes itself: the run checks)
        return None
    wanted = {STAGE_GROUP: ("process",), SOURCE_GROUP: SOURCE_METHODS}.get(group, SINK_METHODS)
    if missing := [m for m in wanted if not callable(getattr(factory, m, None))]:
        return f"class {factory.__name__} lacks {', '.join(missing)} — {_protocol(group)}"
    return None


def _protocol(group: str) -> str:
    return {STAGE_GROUP: "segstream.FrameStage has process(result)",
            SOURCE_GROUP: "segstream.VideoSource has name, live, frames() and close()"}.get(
        group, f"a sink has name, {', '.join(SINK_METHODS)} (segstream.Sink)")


def check(cfg) -> list[str]:
    """The problems of a config's stages and custom sinks, one line each: importable, callable,
    and callable with their options. Calls no factory (``segstream validate``)."""
    lines = []
    parts = [(f"sources[{i}]", source, SOURCE_GROUP, ("name",)) for i, source in enumerate(cfg.sources)
             if source.type == "custom"]
    parts += [(f"stages[{i}]", stage, STAGE_GROUP, ("source",)) for i, stage in enumerate(cfg.stages)]
    parts += [(f"sinks.custom[{i}]", sink, SINK_GROUP, ()) for i, sink in enumerate(cfg.sinks.custom)]
    for where, part, group, args in parts:
        try:
            factory = resolve(part.use, group, f"{where}.use")
        except ConfigError as error:
            lines.append(str(error))
            continue
        if (lacking := _class_problem(factory, group)) is not None:
            lines.append(f"{where}.use: {part.use}: {lacking}")
            continue
        problem = _call_problem(factory, args, part.options)
        if problem is not None:
            shown = ", ".join([*args, *(f"{key}=..." for key in part.options)])
            lines.append(f"{where}.options: {part.use} cannot be called as {part.use}({shown}): {problem} — "
                         "give the options its factory takes")
    return lines


def build_source(cfg) -> Any:
    """The source a ``type: custom`` entry names, built: ``factory(name, **options)``, checked to
    be a ``segstream.VideoSource`` of that name. What the factory raises is a ``SourceError`` (the
    source could not be opened: a source not ``required`` fails alone); a factory that cannot be
    had, or that returns something else, a ``ConfigError``."""
    where = f"source {cfg.name}"
    factory = resolve(cfg.use, SOURCE_GROUP, f"{where}: use")
    try:
        source = factory(cfg.name, **cfg.options)
    except (Exception, SystemExit) as error:
        log.debug("source %s (%s) failed to build", cfg.name, cfg.use, exc_info=True)
        raise SourceError(f"{where}: {cfg.use}('{cfg.name}', ...) raised {_reason(error)}") from None
    problem = None
    if missing := [m for m in SOURCE_METHODS if not callable(getattr(source, m, None))]:
        problem = f"lacks {', '.join(missing)}"
    elif getattr(source, "name", None) != cfg.name:
        problem = f"is named {getattr(source, 'name', None)!r}, not {cfg.name!r} (the name the factory was given)"
    elif not isinstance(getattr(source, "live", None), bool):
        problem = f"has live {getattr(source, 'live', None)!r}, not True or False"
    if problem is not None:
        with contextlib.suppress(Exception):
            source.close()
        kind = type(source).__name__
        raise ConfigError(f"{where}: {cfg.use}('{cfg.name}', ...) returned {'an' if kind[0] in 'aeiouAEIOU' else 'a'} "
                          f"{kind}, which {problem} — {_protocol(SOURCE_GROUP)}")
    return OwnSource(source, cfg.max_fps)


class OwnSource:
    """A source of one's own that a config names (``type: custom``), as the runtime sees it: its
    frames under the config's ``max_fps``, thinned by their stream time (``pts_seconds``, else their
    ``capture_wall``) as the shipped sources thin theirs, the frames left out counted as skipped
    (``frames_skipped``); the rest of it, what the runtime sets on it (``on_state``, ``on_event``)
    included, is the source's own."""

    def __init__(self, source: Any, max_fps: float | None = None):
        from segstream.connectors.frame_rate import FrameRateCap

        object.__setattr__(self, "_source", source)
        object.__setattr__(self, "_cap", None if max_fps is None else FrameRateCap(max_fps))

    def frames(self) -> Any:
        frames = iter(self._source.frames())
        try:
            for frame in frames:
                seconds = getattr(frame, "pts_seconds", None)
                if self._cap is None or self._cap.keep(seconds if seconds is not None else
                                                       getattr(frame, "capture_wall", None)):
                    yield frame
        finally:  # its cleanup when this one is closed (a plain iterator has none)
            if hasattr(frames, "close"):
                frames.close()

    @property
    def frames_skipped(self) -> int:
        return (0 if self._cap is None else self._cap.skipped) + getattr(self._source, "frames_skipped", 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._source, name, value)


def build_stages(stages: Sequence, source_names: Iterable[str]) -> list[Callable[[str], Any]]:
    """One runtime stage factory per config stage, its stages already built for each of
    ``source_names`` it applies to (``None`` for the others: no stage there)."""
    names = list(source_names)
    factories = []
    for i, cfg in enumerate(stages):
        factory = resolve(cfg.use, STAGE_GROUP, f"stages[{i}].use")
        built: dict[str, NamedStage] = {}
        for name in names:
            if cfg.sources is not None and name not in cfg.sources:
                continue
            try:
                stage = factory(name, **cfg.options)
            except (Exception, SystemExit) as error:
                log.debug("stage %s failed to build for source %s", cfg.use, name, exc_info=True)
                raise ConfigError(f"stages[{i}]: {cfg.use}('{name}', ...) raised {_reason(error)}") from None
            if not callable(getattr(stage, "process", None)):
                raise ConfigError(f"stages[{i}]: {cfg.use}('{name}', ...) returned a {type(stage).__name__}, which "
                                  "has no process(result) method — the factory returns a segstream.FrameStage")
            built[name] = NamedStage(cfg.use, stage)
        factories.append(built.get)
    return factories


def build_sinks(sinks: Sequence) -> list[NamedSink]:
    """The config's custom sinks, built (each closed again if a later one fails)."""
    built: list[NamedSink] = []
    try:
        for i, cfg in enumerate(sinks):
            factory = resolve(cfg.use, SINK_GROUP, f"sinks.custom[{i}].use")
            try:
                sink = factory(**cfg.options)
            except (Exception, SystemExit) as error:
                log.debug("sink %s failed to build", cfg.use, exc_info=True)
                raise ConfigError(f"sinks.custom[{i}]: {cfg.use}(...) raised {_reason(error)}") from None
            if missing := [m for m in SINK_METHODS if not callable(getattr(sink, m, None))]:
                raise ConfigError(f"sinks.custom[{i}]: {cfg.use}(...) returned a {type(sink).__name__}, which lacks "
                                  f"{', '.join(missing)} — a sink has name, {', '.join(SINK_METHODS)} (segstream.Sink)")
            built.append(NamedSink(cfg.use, sink))
    except BaseException:
        for sink in built:
            sink.close()
        raise
    return built


class NamedStage:
    """A config-named stage as the runtime sees it: what it raises becomes a ``StageError``
    naming it, the source and the frame."""

    def __init__(self, use: str, stage: Any):
        self.use, self.stage = use, stage
        self._source: str | None = None  # the source whose results it is given (one stage a source)

    def process(self, result: FrameResult) -> FrameResult:
        source, index = result.source, result.index
        self._source = source
        try:
            given = self.stage.process(result)
        except (Exception, SystemExit) as error:
            log.debug("stage %s failed", self.use, exc_info=True)
            raise StageError(f"stage {self.use} failed on frame {index} of source {source}: "
                             f"{_reason(error)}") from error
        if not isinstance(given, FrameResult):
            raise StageError(f"stage {self.use} returned a {type(given).__name__} for frame {index} of source "
                             f"{source} — process(result) returns the result it was given")
        # what the streams' order and the readers rest on: found probing as a plugin author, a
        # stage's result.source wrote into another camera's stream, its events into a stream
        # of no source, a NaN into JSON no reader parses; a dict among the events was a traceback
        if (given.source, given.index) != (source, index):
            raise StageError(f"stage {self.use} made frame {index} of source {source} frame {given.index} of source "
                             f"{given.source} — a result's source and index are its place in the streams; keep them "
                             "(put what the stage adds in segment columns or events)")
        if not isinstance(given.segments, Segments):
            raise StageError(f"stage {self.use} left frame {index} of source {source} with segments of type "
                             f"{type(given.segments).__name__} — keep result.segments a Segments (a subset: "
                             "result.segments[keep])")
        try:
            given.segments.check()
        except (ValueError, TypeError) as error:  # (a column given as a scalar has no length)
            raise StageError(f"stage {self.use} left frame {index} of source {source} with {error} — change the "
                             "columns together (result.segments[keep])") from None
        try:
            finite = bool(np.isfinite(np.asarray(given.segments.scores, dtype=np.float64)).all())
        except (ValueError, TypeError):  # (scores of object dtype holding floats are numbers all the same)
            finite = False
        if not finite:
            raise StageError(f"stage {self.use} left frame {index} of source {source} with a score that is not a "
                             "finite number — scores are JSON numbers on the wire")
        self._check_events(given.events, f"frame {index} of source {source}")
        return given

    def _check_events(self, events: Any, where: str) -> None:
        if not isinstance(events, list):
            raise StageError(f"stage {self.use} left {where} with events of type {type(events).__name__} — "
                             "result.events is a list of segstream.Event")
        for event in events:
            if not isinstance(event, Event):
                raise StageError(f"stage {self.use} gave {where} an event of type {type(event).__name__} — events "
                                 "are segstream.Event(source, kind, ts, data)")
            if self._source is not None and event.source != self._source:
                raise StageError(f"stage {self.use} gave {where} an event of source {event.source!r} — a stage's "
                                 f"events are of the source it runs for ({self._source!r}): they go to its events "
                                 "stream, in order with its frames")
            try:
                event_data_json(event)
            except TypeError as error:
                raise StageError(f"stage {self.use} gave {where} an {error}") from None

    def finish(self, reason: str) -> list:
        finish = getattr(self.stage, "finish", None)
        if finish is None:
            return []
        try:
            events = finish(reason)
        except (Exception, SystemExit) as error:
            log.debug("stage %s failed to finish", self.use, exc_info=True)
            raise StageError(f"stage {self.use} failed in finish('{reason}'): {_reason(error)}") from error
        try:
            events = [] if events is None else list(events)  # None: nothing to add, as a bare return says
        except TypeError:
            raise StageError(f"stage {self.use} returned a {type(events).__name__} from finish('{reason}') — it "
                             "returns a list of segstream.Event (or nothing)") from None
        self._check_events(events, f"finish('{reason}')")
        return events


# The calls the runtime makes of a sink that has them (connectors/sink.py)
_SINK_HOOKS = ("frame_dropped", "source_ended", "source_removed", "settle")


class NamedSink:
    """A config-named sink as the runtime sees it: what its methods raise becomes a
    ``SinkError`` naming it; every other attribute (``on_written``, ``source_ended``, ...) is the
    sink's own, read and set through."""

    def __init__(self, use: str, sink: Any):
        object.__setattr__(self, "use", use)
        object.__setattr__(self, "sink", sink)
        object.__setattr__(self, "name", str(getattr(sink, "name", use)))

    def __getattr__(self, attribute: str) -> Any:
        found = getattr(self.sink, attribute)
        if attribute in _SINK_HOOKS and callable(found):  # the optional calls, wrapped as the others are
            return lambda *args: self._call(attribute, *args)
        return found

    def __setattr__(self, attribute: str, value: Any) -> None:
        setattr(self.sink, attribute, value)

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.sink, method)(*args)
        except (Exception, SystemExit) as error:
            log.debug("sink %s failed in %s", self.use, method, exc_info=True)
            raise SinkError(f"sink {self.name} ({self.use}) failed in {method}{_subject(*args[:1])}: "
                            f"{_reason(error)}") from error

    def publish(self, result: FrameResult) -> None:
        self._call("publish", result)

    def publish_event(self, event) -> None:
        self._call("publish_event", event)

    def poll(self) -> float | None:
        return self._call("poll")

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        self._call("close")
