"""segstream-client installs into a fresh venv without torch and its tests pass there."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_client_installs_and_passes_its_tests_in_a_fresh_venv_without_torch(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # this venv's pip works on it (`--python`): no ensurepip, CI's seconds
    python = env_dir / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
    # The same pinned versions as CI; pip reaches the package index for redis, numpy, zstandard, pytest.
    install = subprocess.run(
        [*pip, "install", "-q", "--no-compile", "-c", str(REPO / "constraints.txt"), f"{REPO / 'clients' / 'python'}[test]"],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    installed = subprocess.run([*pip, "list", "--format=freeze"], capture_output=True, text=True,
                               check=True).stdout.lower()
    assert "segstream-client" in installed
    for heavy in ("torch", "torchvision", "av", "pycocotools", "opencv"):
        assert f"\n{heavy}" not in "\n" + installed, f"{heavy} must not come with the client"
    # Run from outside the repository so that only the installed package can be imported.
    tests = tmp_path / "tests"
    subprocess.run(["cp", "-r", str(REPO / "clients" / "python" / "tests"), str(tests)], check=True)
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
    where = subprocess.run([str(python), "-c", "import segstream.client, segstream; print(segstream.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert str(env_dir) in where
    full_only = subprocess.run([str(python), "-c", "import segstream; segstream.Runtime"], cwd=tmp_path,
                               capture_output=True, text=True)
    assert "needs the full segstream distribution" in full_only.stderr
    assert "not on PyPI" in full_only.stderr and "pip install segstream" not in full_only.stderr  # README's word
    # The package's names are the ones that load here: a star import and help() list them, none fails.
    listed = subprocess.run(
        [str(python), "-c", "import pydoc, segstream\nfrom segstream import *\npydoc.render_doc(segstream)\n"
                            "print(' '.join(segstream.__all__)); print(' '.join(dir(segstream)))"],
        cwd=tmp_path, capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr[-2000:]
    all_names, dir_names = (set(line.split()) for line in listed.stdout.splitlines())
    assert {"Client", "connect", "Entry", "FrameResult", "SegstreamError", "EncodedMasks", "__version__"} <= all_names
    assert not all_names & {"Runtime", "build_runtime", "EoMT", "Sink"}
    assert dir_names == all_names
    # PEP 561: the client's annotations are for type checkers too
    typed = subprocess.run([str(python), "-c", "import pathlib, segstream; "
                            "print((pathlib.Path(segstream.__file__).parent / 'py.typed').is_file())"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert typed.strip() == "True"
