"""Plugins found through entry points (group ``segstream.plugins``): a package installed beside
segstream makes its model family and preset known to the ``segstream`` command."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import segstream
from segstream.connectors.files_sink import read_entries
from tests.conftest import install_entry_point

# A plugin as pip would install it: a module, and a distribution's metadata naming its entry point.
FLAT_PLUGIN = '''
import torch
import segstream

class Flat:
    """One segment, the whole frame: the 'scene'."""
    family = "flat"
    batch_buckets = ()
    geometry = segstream.InputGeometry(8)

    def __init__(self, name, labels, device):
        self.name, self.labels, self.device = name, labels, device

    def prepare(self, frames, sizes=None):
        return segstream.Prepared(torch.zeros(len(frames), 0), sizes or [tuple(f.shape[:2]) for f in frames],
                                  [None] * len(frames))

    def forward(self, prepared):
        return None

    def decide(self, outputs, prepared):
        one = torch.zeros(1, dtype=torch.long, device=self.device)
        return [segstream.Decision(torch.zeros(self.geometry.scale(*frame), dtype=torch.int32, device=self.device),
                                   one, torch.ones(1, device=self.device), one - 1, frame) for frame in prepared.frames]

    def embeddings(self, outputs, prepared, index, decision):
        return torch.zeros((1, 0))

    def segment(self, images):
        return segstream.segment_frames(self, images)

def register():
    segstream.register_family("flat", lambda preset, cfg, device, precision, max_batch: Flat(preset.name, preset.label_set,
                                                                                               device))
    segstream.register_preset(segstream.Preset("flat_scene", config=None, task="panoptic", family="flat",
                                               weights="flat.safetensors",  # its builder's business
                                               label_set=segstream.LabelSet("flat", ("scene",), (False,))))
'''


def install_plugin(site: Path, module: str, source: str, entry: str) -> None:
    """``module`` (its ``source``) with a distribution whose ``segstream.plugins`` entry point is ``entry``."""
    (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    install_entry_point(site, module, "segstream.plugins", entry)


def segstream_cli(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "segstream.pipeline.cli", *args], cwd=site, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def site(tmp_path) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    return folder


def write_config(site: Path) -> Path:
    config = site / "flat.yaml"
    config.write_text(textwrap.dedent("""
        sources:
          - {name: cam, type: synthetic, width: 64, height: 48, num_frames: 3}
        model: {preset: flat_scene, device: cpu}
        sinks:
          redis: {enabled: false}
          files: {enabled: true, dir: out}
        ops: {http: null}
    """), encoding="utf-8")
    return config


def test_an_installed_plugin_s_preset_validates_and_runs_from_the_command_line(site):
    install_plugin(site, "flatplug", FLAT_PLUGIN, "flat = flatplug:register")
    config = write_config(site)
    validated = segstream_cli(site, "validate", str(config))
    assert validated.returncode == 0, validated.stderr
    assert "ok: 1 source, model flat_scene" in validated.stdout
    ran = segstream_cli(site, "run", str(config), "--max-frames", "3")
    assert ran.returncode == 0, ran.stderr
    results = [segstream.from_wire(entry) for entry in read_entries(site / "out" / "cam.jsonl")]
    assert [r.index for r in results] == [0, 1, 2]
    assert {r.model for r in results} == {"flat_scene"}
    assert all(list(r.segments.labels) == ["scene"] and r.segments.areas.tolist() == [64 * 48] for r in results)


def test_plugins_load_on_the_first_preset_lookup_not_on_import(site):
    install_plugin(site, "flatplug", FLAT_PLUGIN, "flat = flatplug:register")
    script = ("import sys, segstream\n"
              "assert 'flatplug' not in sys.modules\n"
              "assert segstream.load_plugins() == ['flat'] and segstream.load_plugins() == ['flat']\n"  # once
              "print(segstream.PRESETS['flat_scene'].family)\n")
    out = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(site)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "flat"


@pytest.mark.parametrize(("source", "reason"), [
    ("import segstream_missing_dependency\ndef register(): pass\n",
     "ModuleNotFoundError: No module named 'segstream_missing_dependency'"),
    ("import segstream\n"
     "def register():\n"
     "    segstream.register_preset(segstream.Preset('synthetic_eomt_tiny_256', None, 'panoptic', 'synthetic', family='x'))\n",
     "ValueError: preset 'synthetic_eomt_tiny_256' is already registered (eomt family)"),
])
def test_a_broken_plugin_stops_the_command_with_one_line_naming_it(site, source, reason):
    install_plugin(site, "brokenplug", source, "broken = brokenplug:register")
    out = segstream_cli(site, "validate", str(write_config(site)))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.startswith("segstream: error: plugin broken (brokenplug:register) of package brokenplug failed "
                                 f"to load: {reason}")
    assert out.stderr.rstrip().endswith("— fix it or uninstall it (pip uninstall brokenplug)")


def test_a_broken_plugin_does_not_stop_a_config_of_shipped_models(site):
    # found probing: one broken plugin failed even `segstream demo`, which names a shipped preset
    install_plugin(site, "brokenplug", "import segstream_missing_dependency\ndef register(): pass\n",
                   "broken = brokenplug:register")
    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    out = segstream_cli(site, "validate", str(demo))
    assert out.returncode == 0 and out.stdout.startswith("ok: 1 source"), out.stderr
