"""The engine sizes itself by the cores the process may use, not the machine's (found probing an
edge box: pinned to one core of two, it ran two model workers there, 40% slower)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from segstream.pipeline.engine import cgroup_cpu_quota, usable_cores

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: pinning to one changes nothing to see")
def test_a_run_pinned_to_one_core_runs_one_model_worker_and_says_so(tmp_path):
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "sources:\n  - {name: cam0, type: synthetic, width: 96, height: 64, num_frames: 4}\n"
        "model: {device: cpu}\nops: {http: null}\nsinks:\n  redis: {enabled: false}\n"
        "  files: {enabled: true, dir: out}\n"
    )
    pinned = f"import os, sys; os.sched_setaffinity(0, {{{min(os.sched_getaffinity(0))}}}); " \
             "from segstream.pipeline.entry import main; sys.argv[0] = 'segstream'; sys.exit(main())"
    result = subprocess.run([sys.executable, "-c", pinned, "run", str(config)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    assert "1 model worker(s) x 1 thread(s), 1 usable core(s)" in result.stderr, result.stderr


def test_usable_cores_is_the_affinity_at_most(tmp_path):
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


def cgroups(tmp_path: Path, membership: str, files: dict[str, str]) -> tuple[str, str]:
    """A cgroup file system of ``files`` (path -> content) under tmp_path, and /proc/self/cgroup."""
    root = tmp_path / "cgroup"
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(content)
    (tmp_path / "self_cgroup").write_text(membership)
    return str(root), str(tmp_path / "self_cgroup")


def test_a_cgroup_v2_cpu_limit_caps_the_cores(tmp_path):
    root, proc = cgroups(tmp_path, "0::/kubepods/pod1/ctr\n", {
        "cpu.max": "max 100000\n",
        "kubepods/cpu.max": "max 100000\n",
        "kubepods/pod1/cpu.max": "150000 100000\n",  # docker --cpus=1.5, set on the pod
        "kubepods/pod1/ctr/cpu.max": "max 100000\n",
    })
    assert cgroup_cpu_quota(root, proc) == 1.5
    assert usable_cores(root, proc) == min(2, len(os.sched_getaffinity(0)))


def test_a_cgroup_v1_cfs_quota_caps_the_cores_and_none_leaves_them(tmp_path):
    root, proc = cgroups(tmp_path, "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n", {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })
    assert cgroup_cpu_quota(root, proc) == 1.0 and usable_cores(root, proc) == 1
    root, proc = cgroups(tmp_path / "none", "0::/\n", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_quota(root, proc) is None and usable_cores(root, proc) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("engine", "warned"), [({"threads": 4}, True), ({"model_workers": 3}, True), ({}, False)])
def test_more_model_threads_than_usable_cores_on_the_cpu_are_warned_of(monkeypatch, engine, warned):
    # found probing an edge box: engine.threads=8 on 2 cores ran 16 threads, said only in the model line's numbers
    import logging

    from segstream.connectors.synthetic import SyntheticSource
    from segstream.pipeline import runtime
    from segstream.pipeline.config import validate_config
    from tests.conftest import CollectingSink, ColourSegmenter

    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    lines = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: lines.append(record.getMessage())
    runtime.log.addHandler(handler)
    cfg = validate_config({"sources": [{"name": "cam", "type": "synthetic", "width": 64, "height": 48, "num_frames": 2}],
                           "model": {"device": "cpu"}, "engine": engine, "sinks": {"redis": {"enabled": False}}})
    try:
        runtime.Runtime.from_config(cfg, [SyntheticSource("cam", 64, 48, 25, 0, 2)], ColourSegmenter(),
                                    [CollectingSink()], progress=False).run()
    finally:
        runtime.log.removeHandler(handler)
    said = [line for line in lines if "usable core(s)" in line]
    assert bool(said) == warned, lines
    if warned:
        assert "leave engine.model_workers and engine.threads unset" in said[0]


def test_a_fractional_cpu_quota_is_said_beside_the_cores_it_rounds_up_to(monkeypatch):
    # found probing an edge box: under a 1.5-CPU quota the model line said "2 usable core(s)" alone
    import logging

    from segstream.connectors.synthetic import SyntheticSource
    from segstream.pipeline import runtime
    from segstream.pipeline.config import validate_config
    from tests.conftest import CollectingSink, ColourSegmenter

    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    monkeypatch.setattr(runtime, "cgroup_cpu_quota", lambda: 1.5)
    lines = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    runtime.log.addHandler(handler)
    level = runtime.log.level
    runtime.log.setLevel(logging.INFO)
    cfg = validate_config({"sources": [{"name": "cam", "type": "synthetic", "width": 64, "height": 48, "num_frames": 1}],
                           "model": {"device": "cpu"}, "sinks": {"redis": {"enabled": False}}})
    try:
        runtime.Runtime.from_config(cfg, [SyntheticSource("cam", 64, 48, 25, 0, 1)], ColourSegmenter(),
                                    [CollectingSink()], progress=False).run()
    finally:
        runtime.log.removeHandler(handler)
        runtime.log.setLevel(level)
    assert any(line.endswith("2 usable core(s) (a CPU quota of 1.5)") for line in lines), lines
