"""Class label sets of the published EoMT models, shipped as JSON in ``models/labels``."""

from __future__ import annotations

import functools
import json
import unicodedata
from pathlib import Path
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from segstream.connectors.redis_wire import parse_json
from segstream.connectors.text_files import read_saved_text

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["LabelSet", "available_label_sets", "load_label_set"]


@dataclass(frozen=True, slots=True)
class LabelSet:
    """Class names and thing/stuff flags, indexed by contiguous class id."""

    name: str
    names: tuple[str, ...]
    isthing: tuple[bool, ...]
    # each class's COCO category id, where a label-set file of one's own gives every class one
    # (``coco_id``; training on COCO data writes them): COCO outputs then use the data's own ids
    coco_ids: tuple[int, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def thing_ids(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.isthing) if t)

    @property
    def stuff_ids(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.isthing) if not t)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LabelSet:
        """Build from the JSON schema ``{"name", "source", "classes": [{"id", "name", "isthing"}]}``.

        Raises ValueError naming the first problem found.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"label set must be a JSON object, got {type(d).__name__}")
        set_name = d.get("name")
        if not isinstance(set_name, str) or not set_name:
            raise ValueError("label set 'name' must be a non-empty string")
        classes = d.get("classes")
        if not isinstance(classes, list) or not classes:
            raise ValueError(f"label set {set_name!r}: 'classes' must be a non-empty list")

        by_id: dict[int, tuple[str, bool]] = {}
        for pos, entry in enumerate(classes):
            where = f"label set {set_name!r}, classes[{pos}]"
            if not isinstance(entry, Mapping):
                raise ValueError(f"{where}: entry must be an object")
            cid = entry.get("id")
            # bool is a subclass of int; reject it so `"id": true` is not read as 1.
            if not isinstance(cid, int) or isinstance(cid, bool):
                raise ValueError(f"{where}: 'id' must be an integer, got {cid!r}")
            cname = entry.get("name")
            if not isinstance(cname, str) or not cname.strip():
                raise ValueError(f"{where} (id {cid}): 'name' must be a non-empty string")
            if (shown := _unprintable(cname)) is not None:
                raise ValueError(f"{where} (id {cid}): 'name' holds {shown}, which would reach terminals and logs "
                                 "raw (a line break, a colour, text turned around) — write the name without it")
            flag = entry.get("isthing")
            if not isinstance(flag, bool):
                raise ValueError(f"{where} (id {cid}): 'isthing' must be true or false, got {flag!r}")
            if cid in by_id:
                raise ValueError(f"label set {set_name!r}: duplicate class id {cid}")
            by_id[cid] = (cname, flag)

        # Model logits are indexed by id, so a gap would silently shift every later class.
        expected = range(len(by_id))
        if sorted(by_id) != list(expected):
            missing = sorted(set(expected) - by_id.keys())
            extra = sorted(by_id.keys() - set(expected))
            raise ValueError(
                f"label set {set_name!r}: class ids must be contiguous from 0 to {len(by_id) - 1}; "
                f"missing {missing}, out of range {extra}"
            )
        # filters, outputs and consumers tell classes apart by name: two of one name would be one to them
        first: dict[str, int] = {}
        for cid in expected:
            cname = by_id[cid][0]
            if cname in first:
                raise ValueError(f"label set {set_name!r}: classes {first[cname]} and {cid} are both named {cname!r} "
                                 "— give each class a name of its own")
            first[cname] = cid
        coco = {entry.get("id"): entry.get("coco_id") for entry in classes}
        coco_ids = tuple(coco[i] for i in expected)
        if not all(isinstance(c, int) and not isinstance(c, bool) for c in coco_ids) or len(set(coco_ids)) != len(coco_ids):
            coco_ids = None  # none, or not one distinct id a class: COCO outputs number classes themselves
        return cls(
            name=set_name,
            names=tuple(by_id[i][0] for i in expected),
            isthing=tuple(by_id[i][1] for i in expected),
            coco_ids=coco_ids,
        )


# Explicit bidi embeddings, overrides and isolates: they reorder the text after them on a terminal.
# (The marks LRM, RLM and ALM are left to right-to-left names, as ZWJ and ZWNJ are to scripts that use them.)
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unprintable(name: str) -> str | None:
    """The first character of ``name`` a terminal or log would act on rather than show (a control
    character, a line or paragraph separator, a bidi override), written as ``\\xNN``/``\\uNNNN``."""
    for char in name:
        if unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") or char in _BIDI_CONTROLS:
            return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
    return None


def _labels_dir() -> Traversable:
    # importlib.resources rather than __file__ so this also works from a zipped or installed wheel.
    return resources.files("segstream.models").joinpath("labels")


def available_label_sets() -> list[str]:
    """Names of the label sets shipped in ``models/labels`` (one per ``*.json`` file), sorted."""
    return sorted(
        entry.name[: -len(".json")]
        for entry in _labels_dir().iterdir()
        if entry.is_file() and entry.name.endswith(".json")
    )


@functools.lru_cache(maxsize=None)
def load_label_set(name: str) -> LabelSet:
    """Load the label set stored as ``models/labels/<name>.json``."""
    available = available_label_sets()
    # Checking membership first also keeps names like "../x" from reaching the filesystem.
    if name not in available:
        raise ValueError(f"unknown label set {name!r}; available: {', '.join(available)}")
    text = _labels_dir().joinpath(f"{name}.json").read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"label set file {name}.json is not valid JSON: {exc}") from exc
    return LabelSet.from_dict(data)


def read_label_set_file(path: str | Path) -> LabelSet:
    """A label set of one's own: a JSON file of the same schema as the shipped ones
    (``{"name", "classes": [{"id", "name", "isthing"}]}``), in UTF-8 (a byte-order mark allowed)
    or UTF-16 with its mark, as Windows editors save it. Raises ValueError saying what is wrong."""
    try:
        text = read_saved_text(path)
    except OSError as error:
        raise ValueError(f"cannot read '{path}' ({error.strerror})") from None
    try:
        data = parse_json(text)
    except ValueError as error:
        raise ValueError(f"'{path}' is not valid JSON: {error}") from None
    try:
        return LabelSet.from_dict(data)
    except ValueError as error:
        raise ValueError(f"'{path}': {error}") from None
