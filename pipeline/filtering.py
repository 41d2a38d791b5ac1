"""The ``filters:`` sections as the runtime applies them: class names checked against the model's
label set and turned into class ids, once, when a run starts.

The math is ``segstream.models.segment_filter``; the runtime applies each source's filter to its
results before the per-source stages (the tracker) and the sinks.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Callable, Iterable

from segstream.connectors.errors import ConfigError
from segstream.models.label_sets import LabelSet
from segstream.models.segment_filter import FilterSettings, SegmentFilter


def filter_settings(cfg, labels: LabelSet, where: Callable[[str], str] = "filters.{}".format) -> FilterSettings:
    """The settings of a ``FiltersConfig`` for a model that names ``labels``; a class name the
    label set lacks is a ConfigError naming the key (``where(key)``: its YAML path) and the
    closest names."""
    problems: list[str] = []  # every unknown name, one line each

    # names as Unicode's NFC writes them: macOS writes a file's "Gräs" as a + combining diaeresis,
    # which looked the same as the label set's and matched nothing ("did you mean 'Gräs'?")
    known = [unicodedata.normalize("NFC", label) for label in labels.names]

    def class_ids(key: str, names: Iterable[str]) -> frozenset[int]:
        ids = []
        for name in names:
            if unicodedata.normalize("NFC", name) not in known:
                close = difflib.get_close_matches(name, labels.names, n=3)
                more = " ..." if len(labels.names) > 20 else ""
                hint = (f"did you mean {' or '.join(repr(c) for c in close)}?" if close
                        else f"its classes are {', '.join(labels.names[:20])}{more}")
                problems.append(f"{where(key)}: the model's label set ({labels.name}) has no class {name!r} — {hint}")
                continue
            ids.append(known.index(unicodedata.normalize("NFC", name)))
        return frozenset(ids)

    keep = None if cfg.classes is None else class_ids("classes", cfg.classes)
    drop = class_ids("exclude_classes", cfg.exclude_classes)
    if problems:
        raise ConfigError("\n".join(problems))
    return FilterSettings(
        keep_class_ids=keep,
        drop_class_ids=drop,
        min_score=cfg.min_score,
        min_area=cfg.min_area,
        roi=None if cfg.roi is None else tuple((float(x), float(y)) for x, y in cfg.roi),
    )


def segment_filters(cfg, labels: LabelSet, names: Iterable[str]) -> dict[str, SegmentFilter]:
    """Each of ``names``' filter (the config's sources: their own over the top-level ``filters:``;
    other sources: the top-level ones), for the sources that filter anything; the class names of
    the top-level filters and of every one of ``names`` are checked."""
    positions = {source.name: i for i, source in enumerate(cfg.sources)}
    filter_settings(cfg.filters, labels)  # checked even where every source overrides them
    out = {}
    for name in names:
        position = positions.get(name)
        own = set() if position is None else cfg.sources[position].filters.model_fields_set

        def where(key: str) -> str:
            return f"sources[{position}].filters.{key}" if key in own else f"filters.{key}"

        settings = filter_settings(cfg.filters_of(name), labels, where)
        if settings.active:
            out[name] = SegmentFilter(settings)
    return out
