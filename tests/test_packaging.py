"""One import name: segstream installs as ``segstream`` and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_installed_distribution_has_segstream_as_its_only_top_level_name():
    owners = metadata.packages_distributions()
    ours = sorted(name for name, dists in owners.items() if "segstream" in dists)
    assert ours == ["segstream"]
    for generic in ("pipeline", "models", "connectors"):
        assert "segstream" not in owners.get(generic, [])


def test_folders_import_under_segstream_only_from_anywhere(tmp_path):
    # A directory of its own: nothing on sys.path but the installed distribution.
    script = (
        "import importlib.util, segstream.models.eomt, segstream.connectors.redis_wire, segstream.pipeline.runtime\n"
        "from segstream.models.label_sets import load_label_set\n"
        "from segstream.connectors.checkpoints import shipped_weights\n"
        "assert load_label_set('synthetic').num_classes == 8\n"
        "assert shipped_weights('synthetic_eomt_tiny_256.safetensors').is_file()\n"
        "print([importlib.util.find_spec(n) for n in ('pipeline', 'models', 'connectors')])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[None, None, None]"


def test_a_built_wheel_holds_only_segstream_with_its_data(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True,
    )
    (wheel,) = tmp_path.glob("segstream-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names} - {"segstream"}
    assert len(top) == 1 and top.pop().endswith(".dist-info")
    assert "segstream/models/weights/synthetic_eomt_tiny_256.safetensors" in names
    assert "segstream/models/labels/coco_panoptic.json" in names
    assert "segstream/pipeline/cli.py" in names and "segstream/connectors/redis_wire.py" in names
    # `segstream demo` from any install: its config and the clip it names (found probing: neither was there)
    assert "segstream/configs/demo.yaml" in names and "segstream/samples/demo.mp4" in names
    assert "segstream/py.typed" in names  # PEP 561: without it mypy and pyright ignore the annotations


def test_the_public_api_resolves_and_importing_segstream_loads_no_torch(tmp_path):
    script = (
        "import sys, segstream\n"
        "assert 'torch' not in sys.modules, 'import segstream must stay light'\n"
        "missing = [n for n in segstream.__all__ if getattr(segstream, n, None) is None]\n"
        "assert not missing, missing\n"
        "assert segstream.FrameResult.__module__ == 'segstream.models.results'\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, capture_output=True)


def test_segstream_version_prints_the_package_version(tmp_path):
    import segstream

    out = subprocess.run(
        [sys.executable, "-m", "segstream.pipeline.cli", "--version"], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"segstream {segstream.__version__}"


def test_one_version_in_every_place_that_says_it_and_the_changelog_s_newest(tmp_path):
    """Every build said 0.1.0 for a month of changes (found by an upgrade probe: an operator could
    not tell which release a pod ran, nor what changed): the version is written in both
    distributions and the package, the installed one is it, and docs/CHANGELOG.md's newest
    entry is about it."""
    import importlib.metadata
    import re
    import tomllib

    import segstream

    repo = Path(__file__).resolve().parent.parent
    written = {tomllib.loads((repo / where).read_text())["project"]["version"]
               for where in ("pyproject.toml", "clients/python/pyproject.toml")}
    assert written == {segstream.__version__} == {importlib.metadata.version("segstream")}
    newest = re.search(r"^## (\S+)", (repo / "docs" / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert newest and newest.group(1) == segstream.__version__


# Loaded first by ``sitecustomize``: at exit, how many copies of the CLI's drain-on-signal class the
# process made and whose SIGTERM handler is installed.
_COUNT_CLI_COPIES = """
import atexit, gc, os, signal

def _report():
    gc.unfreeze()  # the command froze what it made (pipeline/entry.py): get_objects lists only the unfrozen
    copies = sum(isinstance(o, type) and o.__name__ == "_DrainOnSignal" for o in gc.get_objects())
    handler = signal.getsignal(signal.SIGTERM)
    os.write(2, f"copies={copies} sigterm={getattr(handler, '__module__', handler)}\\n".encode())

atexit.register(_report)
"""


@pytest.mark.parametrize("module", ["segstream.pipeline.cli", "segstream"])
def test_python_dash_m_runs_one_copy_of_the_cli_with_the_console_commands_signal_handling(tmp_path, module):
    # found reviewing: -m segstream.pipeline.cli ran the module as __main__ and entry.main imported it
    # again, two copies of its state (the abort's signal, the one the exit status reads)
    (tmp_path / "sitecustomize.py").write_text(_COUNT_CLI_COPIES)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", module, "--version"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("segstream "), out.stderr
    assert out.stderr.strip().splitlines()[-1] == "copies=1 sigterm=segstream.pipeline.entry"


def test_output_a_terminal_cannot_encode_is_escaped_not_a_traceback(tmp_path):
    """Found by an i18n probe: under LANG=C or a Latin-1 locale, `validate --print` of a path with
    an é and `tail` of a class named in Chinese died with UnicodeEncodeError; the command escapes
    what its standard output cannot encode, as standard error does."""
    folder = tmp_path / "vidé"
    folder.mkdir()
    (folder / "été.mp4").write_bytes((Path(__file__).resolve().parent.parent / "samples" / "demo.mp4").read_bytes())
    (folder / "c.yaml").write_text("sources:\n  - {name: cam, type: file, path: été.mp4}\n", encoding="utf-8")
    # and a refused one beside it: a message's punctuation is its ASCII look-alike, not an escape a screen
    # reader spells out (one command for both: a command's start is seconds of CI)
    (folder / "typo.yaml").write_text("engine: {bach_size: 2}\nsources:\n  - {name: cam, type: file, path: été.mp4}\n",
                                      encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "segstream", "validate", str(folder / "c.yaml"), str(folder / "typo.yaml"),
                          "--print", "--no-files"],
                         capture_output=True, env={**os.environ, "PYTHONIOENCODING": "ascii"}, cwd=tmp_path)
    assert out.returncode == 2, out.stderr.decode()
    assert b"Traceback" not in out.stderr
    assert out.stderr.endswith(b"engine.bach_size (line 1): unknown key - did you mean 'batch_size'?\n"), out.stderr
    # YAML's escapes, in double quotes, which read back as the same file (found probing under Latin-1:
    # the output's own escapes in a plain scalar named a file 'vid\xe9/...' that does not exist)
    assert out.stdout.isascii() and yaml.safe_load(out.stdout)["sources"][0]["path"] == str(folder / "été.mp4")
    printed = tmp_path / "printed.yaml"
    printed.write_bytes(out.stdout)
    from segstream.pipeline.cli import main

    assert main(["validate", str(printed)]) == 0  # (in this process: a command's start is seconds of CI)
    # a locale whose encoding cannot name the file (ASCII here; Latin-1 for 日本): what to do, not the codec's error
    (tmp_path / "c.yaml").write_text("sources:\n  - {name: cam, type: file, path: vidé/été.mp4}\n", encoding="utf-8")
    ascii_locale = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}
    unnamed = subprocess.run([sys.executable, "-X", "utf8=0", "-m", "segstream", "validate", "c.yaml"],
                             capture_output=True, env=ascii_locale, cwd=tmp_path)
    assert unnamed.returncode == 2 and unnamed.stderr.decode("ascii").splitlines()[-1].endswith(
        "cannot be named in this locale's encoding (ascii) - run segstream under a UTF-8 locale (LC_ALL=C.UTF-8) "
        "or with PYTHONUTF8=1"), unnamed.stderr


def test_constraints_pin_every_package_the_installed_extras_bring():
    # the air-gapped install probe: 39 packages of CI's tree were unpinned, so a wheel folder made a month
    # later held other versions than CI tested. The tree of segstream's requirements and extras, as installed.
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    repo = Path(__file__).resolve().parents[1]
    pinned = {canonicalize_name(line.split("==")[0]): line.split("==")[1].strip()
              for line in (repo / "constraints.txt").read_text().splitlines() if "==" in line and not line.startswith("#")}
    seen, unpinned, wrong = set(), [], []
    waiting = [(req, ("test", "hub", "eval", "ray")) for req in metadata.requires("segstream") or []]
    while waiting:
        text, extras = waiting.pop()
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name in seen or (req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras or ("",))):
            continue
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:  # a marker's platform or Python version not this one's
            continue
        seen.add(name)
        if name not in pinned:
            unpinned.append(f"{name}=={version}")
        elif pinned[name] != version:
            wrong.append(f"{name}: {pinned[name]} pinned, {version} installed")
        waiting += [(r, tuple(req.extras)) for r in metadata.requires(name) or []]
    assert len(seen) > 60
    assert not unpinned, f"add to constraints.txt: {' '.join(sorted(unpinned))}"
    assert not wrong, wrong


def test_the_test_extra_s_pytest_xdist_takes_every_option_pyproject_s_addopts_give():
    # --no-loadscope-reorder came in pytest-xdist 3.8.0: with the extra's older floor (3.5), an install
    # that took 3.5-3.7 failed every pytest run with "unrecognized arguments"
    import re
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    addopts = project["tool"]["pytest"]["ini_options"]["addopts"]
    xdist = next(r for r in project["project"]["optional-dependencies"]["test"] if r.startswith("pytest-xdist"))
    floor = tuple(int(n) for n in re.search(r">=\s*([\d.]+)", xdist).group(1).split("."))
    if "loadscope-reorder" in addopts:
        assert floor >= (3, 8), f"{xdist}: --no-loadscope-reorder needs pytest-xdist>=3.8"
