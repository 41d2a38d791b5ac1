"""segstream is a typed library: mypy --strict accepts typed programs that use it (tests/typed/),
with the types they expect rather than Any, and rejects a misspelt public name or a wrong argument."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TYPED = Path(__file__).resolve().parent / "typed"

# The heavy dependencies are read as Any (skip): their own types are not what is checked here, and
# following torch's alone takes minutes.
CONFIG = """
[mypy]
strict = True
follow_imports = silent
[mypy-torch.*,torchvision.*,av.*,cv2.*,kornia.*,scipy.*,ray.*,transformers.*,pycocotools.*,safetensors.*,torchmetrics.*,trackeval.*,prometheus_client.*,pythonjsonlogger.*,huggingface_hub.*,tqdm.*]
follow_imports = skip
"""


def _package_as_installed(root: Path) -> Path:
    """segstream laid out as a wheel installs it (the repository's folders under segstream/), as links."""
    package = root / "segstream"
    package.mkdir(parents=True)
    for name in ("__init__.py", "py.typed", "client"):
        (package / name).symlink_to(REPO / "segstream" / name)
    for folder in ("connectors", "models", "pipeline"):
        (package / folder).symlink_to(REPO / folder)
    return root


def test_mypy_strict_accepts_typed_programs_and_rejects_misuse(tmp_path):
    path = _package_as_installed(tmp_path / "path")
    (tmp_path / "mypy.ini").write_text(CONFIG)
    wrong = tmp_path / "wrong.py"  # each line after the import an error
    wrong.write_text("import segstream\n\nsegstream.NotAThing\n"
                     "segstream.build_runtime(segstream.load_config('x.yaml'), stopping=True)\n")
    # the README's own example (found probing a service's typed client: result.label_map, Optional, used as is)
    from tests.test_readme import readme_python

    readme = tmp_path / "readme_example.py"
    readme.write_text(readme_python("## From Python"))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(tmp_path / "mypy.ini"), "--no-error-summary",
         "--cache-dir", str(Path(tempfile.gettempdir()) / "segstream-mypy-cache"),
         str(TYPED / "client_consumer.py"), str(TYPED / "embedding.py"), str(readme), str(wrong)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"MYPYPATH": str(path), "PATH": ""},
    )
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert [line.split(":")[:2] for line in errors] == [[wrong.name, "3"], [wrong.name, "4"]], (
        result.stdout + result.stderr)
    assert 'has no attribute "NotAThing"' in errors[0]
    assert 'No overload variant of "build_runtime" matches argument types "PipelineConfig", "bool"' in errors[1]
