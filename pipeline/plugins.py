"""Plugins: installed packages that add model families and presets to segstream.

A plugin's distribution declares an entry point in the group ``segstream.plugins``; it names a
callable taking no arguments, which registers what the plugin brings (``segstream.register_family``,
``segstream.register_preset``). Each is called once per process, the first time a config names a
preset or family segstream does not ship (config validation, building a model), so ``segstream
validate`` and ``segstream run`` see a pip-installed plugin's presets, ``import segstream`` stays
light, and a config of shipped models never waits for a plugin (nor fails with a broken one). A plugin that fails to
load or raises stops that lookup with one ``ConfigError`` line naming it and its error.
"""

from __future__ import annotations

import logging
import threading
from importlib.metadata import EntryPoint, entry_points

from segstream.connectors.errors import ConfigError

PLUGIN_GROUP = "segstream.plugins"

logger = logging.getLogger(__name__)
_lock = threading.RLock()
_loaded: list[str] = []  # the plugins whose callable ran, by entry point name
_failure: ConfigError | None = None  # the first plugin that failed, raised on every later lookup too
_started = False


def load_plugins() -> list[str]:
    """Run every installed plugin's callable, the first time only; returns the names of the
    plugins loaded. Raises ``ConfigError`` (one line) when one fails, then and on every later
    call: a run must not go on without a plugin its config may name."""
    global _started, _failure
    with _lock:
        # a plugin's own lookups while it loads (re-entry on this thread) see what is registered so far
        if not _started:
            _started = True
            for entry in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
                try:
                    _run(entry)
                except ConfigError as error:
                    _failure = error
                    break
                _loaded.append(entry.name)
                logger.debug("plugin %s (%s) loaded", entry.name, entry.value)
        if _failure is not None:
            raise _failure
        return list(_loaded)


def _run(entry: EntryPoint) -> None:
    try:
        register = entry.load()
        if not callable(register):
            raise TypeError(f"{entry.value} is a {type(register).__name__}, not a function to call")
        register()
    except Exception as error:  # whatever a plugin raises is the plugin's fault: one line, not a traceback
        dist = getattr(entry, "dist", None)
        package = f" of package {dist.name}" if dist is not None else ""
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        fix = f"fix it or uninstall it (pip uninstall {dist.name})" if dist is not None else "fix or remove it"
        raise ConfigError(f"plugin {entry.name} ({entry.value}){package} failed to load: {reason} — {fix}") from None
