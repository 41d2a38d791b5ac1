import codecs
import json

import pytest

from segstream.models.label_sets import LabelSet, available_label_sets, load_label_set, read_label_set_file

SHIPPED = ("ade20k", "cityscapes", "coco_instance", "coco_panoptic")


def test_shipped_sets_are_available():
    assert set(SHIPPED) <= set(available_label_sets())


@pytest.mark.parametrize(
    "name, total, things",
    [("coco_panoptic", 133, 80), ("coco_instance", 80, 80), ("ade20k", 150, 100), ("cityscapes", 19, 8)],
)
def test_counts(name, total, things):
    ls = load_label_set(name)
    assert ls.name == name
    assert ls.num_classes == total == len(ls.isthing)
    assert len(ls.thing_ids) == things
    assert len(ls.stuff_ids) == total - things
    assert sorted(ls.thing_ids + ls.stuff_ids) == list(range(total))


def test_coco_panoptic_things_come_first():
    ls = load_label_set("coco_panoptic")
    assert ls.thing_ids == tuple(range(80))
    assert ls.stuff_ids == tuple(range(80, 133))


def test_coco_instance_matches_panoptic_things():
    assert load_label_set("coco_instance").names == load_label_set("coco_panoptic").names[:80]


def test_cityscapes_things_are_last_eight():
    assert load_label_set("cityscapes").thing_ids == tuple(range(11, 19))


@pytest.mark.parametrize(
    "name, cid, expected",
    [
        ("coco_panoptic", 0, "person"),
        ("coco_panoptic", 79, "toothbrush"),
        ("coco_panoptic", 80, "banner"),
        ("coco_panoptic", 132, "rug-merged"),
        ("coco_instance", 79, "toothbrush"),
        ("ade20k", 0, "wall"),
        ("ade20k", 2, "sky"),
        ("ade20k", 12, "person"),
        ("cityscapes", 0, "road"),
        ("cityscapes", 13, "car"),
        ("cityscapes", 18, "bicycle"),
    ],
)
def test_names_at_ids(name, cid, expected):
    assert load_label_set(name).names[cid] == expected


def test_load_is_cached():
    assert load_label_set("ade20k") is load_label_set("ade20k")


def test_unknown_name_lists_available():
    with pytest.raises(ValueError) as info:
        load_label_set("no_such_set")
    msg = str(info.value)
    assert "no_such_set" in msg
    for name in SHIPPED:
        assert name in msg


def _classes(*ids):
    return [{"id": i, "name": f"c{i}", "isthing": False} for i in ids]


def test_from_dict_roundtrip():
    ls = LabelSet.from_dict({"name": "t", "classes": [{"id": 1, "name": "b", "isthing": True}, *_classes(0)]})
    assert ls == LabelSet(name="t", names=("c0", "b"), isthing=(False, True))


def test_from_dict_rejects_non_contiguous_ids():
    with pytest.raises(ValueError, match="contiguous"):
        LabelSet.from_dict({"name": "t", "classes": _classes(0, 1, 3)})
    with pytest.raises(ValueError, match="contiguous"):
        LabelSet.from_dict({"name": "t", "classes": _classes(1, 2)})


def test_from_dict_rejects_duplicate_ids():
    with pytest.raises(ValueError, match="duplicate"):
        LabelSet.from_dict({"name": "t", "classes": _classes(0, 0)})


@pytest.mark.parametrize(
    "entry, word",
    [
        ({"id": 0, "name": "", "isthing": False}, "name"),
        ({"id": 0, "isthing": False}, "name"),
        ({"id": 0, "name": "a", "isthing": 1}, "isthing"),
        ({"id": "0", "name": "a", "isthing": False}, "id"),
        ({"id": True, "name": "a", "isthing": False}, "id"),
    ],
)
def test_from_dict_rejects_bad_entries(entry, word):
    with pytest.raises(ValueError, match=word):
        LabelSet.from_dict({"name": "t", "classes": [entry]})


def test_from_dict_rejects_missing_classes():
    with pytest.raises(ValueError, match="classes"):
        LabelSet.from_dict({"name": "t", "classes": []})


def _write_set(path, names, encoding="utf-8", bom=b""):
    classes = [{"id": i, "name": name, "isthing": True} for i, name in enumerate(names)]
    path.write_bytes(bom + json.dumps({"name": "own", "classes": classes}, ensure_ascii=False).encode(encoding))
    return path


def test_a_labels_file_saved_by_a_windows_editor_is_read_and_another_encoding_is_one_line(tmp_path):
    # Found probing (i18n): a UTF-8 BOM was "not valid JSON" while BOM'd YAML configs were read; UTF-16 a codec error
    names = ["Gräs", "空", "Straße"]
    for path in (_write_set(tmp_path / "bom.json", names, bom=codecs.BOM_UTF8),
                 _write_set(tmp_path / "notepad_unicode.json", names, encoding="utf-16")):
        assert read_label_set_file(path).names == tuple(names), path
    latin1 = _write_set(tmp_path / "latin1.json", ["Gräs"], encoding="latin-1")
    with pytest.raises(ValueError) as caught:
        read_label_set_file(latin1)
    assert str(caught.value) == f"'{latin1}' is not UTF-8 text (byte 0xe4 at offset 49) — save it as UTF-8"


@pytest.mark.parametrize("name, shown", [("line1\nline2", r"\x0a"), ("\x1b[31mred", r"\x1b"), ("\u202eevil", r"\u202e"),
                                         ("a\u2028b", r"\u2028"), ("tab\there", r"\x09"), ("c1\x9b", r"\x9b")])
def test_a_class_name_a_terminal_would_act_on_is_refused_naming_file_class_and_character(tmp_path, name, shown):
    # Found probing (i18n): these reached run's log lines raw (an ESC, a record split in two)
    path = _write_set(tmp_path / "labels.json", ["ok", name])
    with pytest.raises(ValueError) as caught:
        read_label_set_file(path)
    message = str(caught.value)
    assert message.startswith(f"'{path}': label set 'own', classes[1] (id 1): 'name' holds {shown},")
    assert "\n" not in message and "\x1b" not in message and "\u202e" not in message


def test_right_to_left_and_joined_names_are_kept(tmp_path):
    names = ["\u05e9\u05de\u05d9\u05dd\u200f", "\u0645\u06cc\u200c\u0631\u0648\u062f", "👩\u200d🚒"]  # RLM, ZWNJ, ZWJ
    assert read_label_set_file(_write_set(tmp_path / "labels.json", names)).names == tuple(names)


def test_a_class_name_with_a_lone_surrogate_is_refused(tmp_path):
    # found in review: JSON's "\ud800" loaded, and publishing its entries raised UnicodeEncodeError
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"name": "own", "classes": [{"id": 0, "name": "a\ud800", "isthing": True}]}))
    with pytest.raises(ValueError, match=r"classes\[0\] \(id 0\): 'name' holds \\ud800,"):
        read_label_set_file(path)


def test_two_classes_of_one_name_are_refused_naming_both_ids(tmp_path):
    # found probing: two classes named "ball" were taken, and filters.classes: [ball] kept one of them
    classes = [{"id": 0, "name": "ball", "isthing": True}, {"id": 1, "name": "ball", "isthing": True},
               {"id": 2, "name": "sky", "isthing": False}]
    with pytest.raises(ValueError, match=r"classes 0 and 1 are both named 'ball' — give each class a name of its own"):
        LabelSet.from_dict({"name": "t", "classes": classes})

