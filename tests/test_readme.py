"""The README's Python examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.redis_servers import RedisProcess, free_port

REPO = Path(__file__).resolve().parents[1]


def readme_python(heading: str, containing: str = "") -> str:
    """The first Python block of the README's section ``heading`` that holds ``containing``."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index(heading):]
    return next(block for block in re.findall(r"```python\n(.*?)```", section, re.DOTALL) if containing in block)


def run_readme_python(heading: str, containing: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    """The first Python block of the README's section ``heading`` that holds ``containing``, run
    from the repository."""
    code = readme_python(heading, containing)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=None if env is None else {**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out


def test_the_readme_python_example_runs():
    overlay = REPO / "overlay.png"
    overlay.unlink(missing_ok=True)
    try:
        out = run_readme_python("## From Python")
        from PIL import Image

        with Image.open(overlay) as picture:  # the last result's segments drawn on its frame
            assert picture.size == (640, 480)
    finally:
        overlay.unlink(missing_ok=True)
    # the results came to the loop in order, and break stopped it at frame 10
    shown = re.findall(r"^FrameResult\(demo frame (\d+), 640x480, \d+ segments", out.stdout, re.MULTILINE)
    assert shown == [str(i) for i in range(11)]
    assert "done: 20 frames published" in out.stdout + out.stderr
    assert "(480, 640)" in out.stdout


def test_the_readme_reads_a_finished_run_back_from_a_redis_of_its_own(tmp_path):
    with RedisProcess(tmp_path / "redis", port=free_port(27600, 27649)) as server:
        out = run_readme_python("## From Python", containing="start=\"0\"", env={"SEGSTREAM_REDIS_URL": server.url})
    assert out.stdout.startswith("20 Entry(")


def test_the_readme_extending_example_runs_a_source_stage_sink_and_family_of_its_own():
    out = run_readme_python("## Extending segstream", containing="build_runtime(")
    # the pushed frames turned bright half-way: the family, the stage and the sink all saw them
    assert "robot_cam turned_bright at frame" in out.stdout
    assert "done: " in out.stdout and " robot_cam " in out.stdout
    assert " demo 20/20" in out.stdout  # the config's own source ran beside it


def test_the_readme_extending_yaml_is_a_valid_config_section():
    import yaml

    from segstream.pipeline.config import validate_config

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Extending segstream"):]
    data = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1))
    sources = [{"name": name, "type": "synthetic"} for name in ("cam1", "cam2")]
    cfg = validate_config({"sources": sources, **data})  # the shape only: its modules are examples
    assert [s.use for s in cfg.stages] == ["my_package.stages:LineCrossing"] and cfg.stages[0].sources == ["cam1", "cam2"]
    assert [s.use for s in cfg.sinks.custom] == ["my_package.sinks:KafkaSink"]


def test_the_readme_custom_source_yaml_is_a_valid_config_section():
    import yaml

    from segstream.pipeline.config import validate_config

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("**Sources in the config.**"):]
    data = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1))
    cfg = validate_config(data)  # the shape only: its module is an example
    [source] = cfg.sources
    assert (source.type, source.use, source.options, source.required) == (
        "custom", "my_package.sources:GigECamera", {"serial": "A1234", "exposure_us": 8000}, True)


def test_the_readme_custom_source_runs_with_a_camera_standing_in_for_the_sdk():
    # the example as written, its SDK's calls given a camera that sends three frames, then nothing
    import threading
    import time

    import numpy as np

    import segstream

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("**Sources in the config.**"):]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)

    class Camera:
        def __init__(self):
            self.grabbed, self.closed = 0, threading.Event()

        def grab(self, timeout_s):
            self.grabbed += 1
            return np.full((48, 64, 3), 90, np.uint8) if self.grabbed <= 3 else None

        def close(self):
            self.closed.set()

    camera = Camera()
    namespace = {"open_camera": lambda serial, exposure_us: camera}
    exec(compile(code, "README.md", "exec"), namespace)
    source = namespace["GigECamera"]("line3", serial="A1234", exposure_us=8000)
    cfg = segstream.load_config({"sources": [{"name": "other", "type": "synthetic", "num_frames": 2, "width": 64,
                                              "height": 48}],
                                 "model": {"device": "cpu"}, "sinks": {"redis": {"enabled": False}},
                                 "ops": {"http": None}})
    runtime = segstream.build_runtime(cfg, progress=False, sources=[source])
    running = threading.Thread(target=runtime.run)
    running.start()
    deadline = time.monotonic() + 60
    while runtime.metrics.source("line3").published < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    runtime.stop()
    running.join(60)
    assert runtime.metrics.source("line3").published == 3 and camera.closed.is_set()
