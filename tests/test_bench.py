"""``segstream bench``: one run measures the network alone, the pipeline and a naive loop."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from segstream.pipeline.bench import print_bench
from segstream.pipeline.cli import main

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def test_bench_reports_all_three_rates_their_ratios_and_stage_latencies_and_names_each(capsys):
    code = main([
        "bench", str(DEMO), "--sources", "2", "--frames", "12", "--naive-frames", "4",
        "--network-seconds", "0.2", "--json", "--set", "model.device=cpu",
    ])
    assert code == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    # the bench's own scratch folders are no config of the user's (found by a 4K probe: it warned
    # "sinks.files.dir is set but sinks.files.enabled is not true" of a config that set neither)
    assert "is set but sinks" not in captured.err
    fps = result["fps"]
    assert result["sources"] == 2 and result["frames"] == 24 and result["dropped"] == 0
    assert all(fps[k] > 0 for k in ("network", "pipeline", "naive"))
    assert abs(result["ratio"]["pipeline_vs_network"] - fps["pipeline"] / fps["network"]) < 1e-9
    # the network alone both ways on the CPU (one thread; the pipeline's two workers), the faster kept
    layouts = result["network_layouts_fps"]
    assert len(layouts) == 2 and fps["network"] == max(layouts.values()) == layouts[result["network_layout"]]
    assert abs(result["ratio"]["pipeline_vs_naive"] - fps["pipeline"] / fps["naive"]) < 1e-9
    for stage in ("batched", "model_end", "post_end", "published", "capture_to_publish"):
        row = result["stages_ms"][stage]
        assert 0 <= row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
    per_source = result["capture_to_publish_ms_per_source"]
    assert len(per_source) == 2, "each replicated source's own latency"
    worst = max(row["max_ms"] for row in per_source.values())
    assert worst == pytest.approx(result["stages_ms"]["capture_to_publish"]["max_ms"]), "24 frames: every one in both"
    # the table for people names each measurement (from the same result: one bench run is seconds)
    table = io.StringIO()
    print_bench(result, table)
    for words in ("network alone", "pipeline", "naive loop", "capture_to_publish", "x the network",
                  "capture to publish p99 per source: worst"):
        assert words in table.getvalue()


def test_bench_refuses_nonsense_counts(capsys):
    assert main(["bench", str(DEMO), "--sources", "0"]) == 2
    assert "--sources must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(("option", "value", "said"), [
    ("--naive-frames", "0", "--naive-frames must be at least 1"),
    ("--naive-frames", "-3", "--naive-frames must be at least 1"),
    ("--network-seconds", "0", "--network-seconds must be a number of seconds above 0"),
    ("--network-seconds", "-1", "--network-seconds must be a number of seconds above 0"),
    ("--network-seconds", "nan", "--network-seconds must be a number of seconds above 0"),
])
def test_bench_refuses_a_naive_loop_or_network_time_of_nothing(capsys, option, value, said):
    # found probing as a CLI reviewer: --naive-frames 0 never ended (the loop stopped only at its count)
    assert main(["bench", str(DEMO), option, value, "--frames", "8", "--json"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert said in line


def test_the_naive_loop_tracks_as_the_pipeline_does(tmp_path):
    # found probing: BENCHMARKS said the naive loop tracks; it published every segment untracked
    from segstream.connectors.files_sink import read_entries
    from segstream.connectors.redis_wire import from_wire
    from segstream.pipeline.bench import naive_fps
    from segstream.pipeline.config import load_config
    from segstream.pipeline.model_factory import build_segmenter

    cfg = load_config(DEMO, [f"sinks.files.dir={tmp_path}", "sinks.files.enabled=true", "sinks.redis.enabled=false"])
    assert naive_fps(cfg, build_segmenter(cfg.model), 6) > 0
    results = [from_wire(entry) for entry in read_entries(tmp_path / "naive.jsonl")]
    assert len(results) == 6 and all(len(r.segments) for r in results)
    assert all((r.segments.track_ids > 0).all() for r in results[1:])


def test_the_naive_loop_is_held_at_its_better_thread_count(monkeypatch, capsys):
    # found probing as a SeNaTra user: on cores other work shared, the naive loop on two threads
    # ran at a sixth of its one-thread rate, and the printed ratio flattered the pipeline
    import torch

    from segstream.pipeline import bench
    from segstream.pipeline.engine import usable_cores

    if usable_cores() < 2:
        pytest.skip("one core: a single thread count to try")
    slow_on_many = {1: 30.0}
    monkeypatch.setattr(bench, "naive_fps", lambda cfg, adapter, frames: slow_on_many.get(torch.get_num_threads(), 5.0))
    assert main(["bench", str(DEMO), "--frames", "8", "--network-seconds", "0.2", "--json",
                 "--set", "model.device=cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (result["fps"]["naive"], result["naive_threads"]) == (30.0, 1)


def test_bench_publishes_beside_the_run_s_streams_and_files_not_into_them(tmp_path, capsys):
    # Found probing as an automation engineer: bench added its entries to the live camera's stream
    # (and a 'naive' stream a camera of that name would share), and to the run's files
    from tests.redis_servers import RedisProcess

    with RedisProcess(tmp_path / "redis") as server:
        assert main(["bench", str(DEMO), "--frames", "6", "--naive-frames", "3", "--network-seconds", "0.2",
                     "--json", "--set", "model.device=cpu", "--set", f"sinks.redis.url={server.url}",
                     "--set", "sinks.files.enabled=true", "--set", f"sinks.files.dir={tmp_path / 'out'}"]) == 0
        keys = sorted(key.decode() for key in server.client().keys("*"))
    assert keys == ["segstream:bench-demo:events", "segstream:bench-demo:frames", "segstream:bench-naive:frames"], keys
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_bench_says_once_that_a_folder_given_to_a_sink_left_off_is_not_written(tmp_path, capsys):
    # found probing as a camera integrator: said three times, by the pipeline's sinks and each naive loop's
    assert main(["bench", str(DEMO), "--frames", "4", "--naive-frames", "2", "--network-seconds", "0.1", "--json", "--set",
                 "model.device=cpu", "--set", f"sinks.files.dir={tmp_path / 'out'}"]) == 0
    assert capsys.readouterr().err.count("sinks.files.dir is set but sinks.files.enabled is not true") == 1


def test_bench_with_a_preview_draws_in_the_naive_loop_too(tmp_path, capsys):
    # Found probing (release QA): the naive loop handed the preview sink results without their frame
    assert main(["bench", str(DEMO), "--frames", "6", "--naive-frames", "3", "--network-seconds", "0.2", "--json",
                 "--set", "model.device=cpu", "--set", "sinks.preview.enabled=true"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fps"]["naive"] > 0
