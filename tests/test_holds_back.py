"""Where the run's time goes: each pipeline thread's working seconds, each per-source stage's and
sink's seconds, on /metrics and in the overload line, which names a stage or sink that holds the
run back instead of blaming the model (found probing: a stage of one's own taking 60 ms a frame
was answered with "give the engine less to do per frame (a smaller model, a GPU)")."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

import numpy as np
from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest

from segstream.connectors.frames import Frame
from segstream.pipeline.metrics import Load, OverloadWatch, SourceCounts
from segstream.pipeline.monitoring import RunMetricsCollector
from segstream.pipeline.runtime import Runtime
from tests.conftest import CollectingSink, ColourSegmenter


def _load(at: float, busy: dict[str, float], parts: dict[tuple[str, str], tuple[float, int]] | None = None) -> Load:
    parts = parts or {}
    return Load(at, Counter(busy), Counter({p: s for p, (s, _) in parts.items()}),
                Counter({p: n for p, (_, n) in parts.items()}))


def test_a_thread_after_the_model_working_most_of_the_time_and_more_than_the_model_is_named_with_its_slowest_part():
    before = _load(0.0, {"model": 1.0, "stage": 2.0, "publish": 0.5},
                   {("stage tracker", "cam1"): (1.0, 100), ("stage mine:Slow", "cam1"): (1.0, 100),
                    ("sink redis", ""): (0.5, 100)})
    after = _load(10.0, {"model": 5.0, "model1": 5.5, "stage": 11.6, "publish": 1.5},
                  {("stage tracker", "cam1"): (1.6, 250), ("stage mine:Slow", "cam1"): (10.0, 250),
                   ("sink redis", ""): (1.5, 250)})
    assert after.holds_back(before).text == (
        "the per-source stages hold the run back, not the model (their thread worked 96% of the time; stage "
        "mine:Slow took 60 ms a frame on cam1's results): make that stage faster")
    # the sinks' thread, when it is the one (a sink's polls count as its time, not as frames)
    sinks = _load(10.0, {"model": 3.0, "stage": 3.0, "publish": 9.5},
                  {("sink redis", ""): (0.9, 250), ("sink kafka", ""): (8.6, 250)})
    assert sinks.holds_back(before).text == (
        "the sinks hold the run back, not the model (their thread worked 90% of the time; sink kafka took 34 ms a "
        "frame): make that sink faster")
    # a model worker busier still (CPU shared: every thread slow), or no thread busy enough: the engine's
    assert _load(10.0, {"model": 10.0, "stage": 11.0}).holds_back(before) is None
    assert _load(10.0, {"model": 6.0, "stage": 8.0}).holds_back(before) is None


def test_a_sink_that_stalls_part_of_the_window_is_named_while_the_model_s_workers_idle():
    # found probing as an SRE: a sink blocking 12 s now and then crossed the drop threshold with its thread at
    # 72% of the window and the model's workers at 6%: "a smaller model, a GPU" was the advice
    before = _load(0.0, {"model": 0.0, "model1": 0.0, "publish": 0.0}, {("sink stalls", ""): (0.0, 0)})
    after = _load(10.0, {"model": 0.6, "model1": 0.6, "publish": 7.2}, {("sink stalls", ""): (7.1, 40)})
    assert after.holds_back(before).text.startswith("the sinks hold the run back, not the model (their thread worked 72%")
    assert _load(10.0, {"model": 0.6, "publish": 4.0}).holds_back(before) is None  # under half: not known


def test_a_stage_that_runs_on_one_camera_is_named_with_it_where_another_camera_is_overloaded():
    # found probing as an SRE: a stage on dock1 only was the cause named for aisle3, with aisle3's max_fps to lower
    before = _load(0.0, {"model": 0.0, "stage": 0.0})
    after = _load(10.0, {"model": 2.0, "stage": 9.9}, {("stage tracker", "aisle3"): (0.2, 100),
                                                        ("stage tracker", "dock1"): (0.2, 80),
                                                        ("stage zones:Slow", "dock1"): (9.6, 80)})
    assert after.holds_back(before).text == (
        "the per-source stages hold the run back, not the model (their thread worked 99% of the time; stage "
        "zones:Slow took 120 ms a frame on dock1's results): make that stage faster")


def test_the_overload_line_gives_the_cause_its_loads_show_and_the_engine_s_advice_otherwise():
    loads = iter([])
    watch = OverloadWatch(window_s=10, share=0.2, paused_since=lambda moment: 0.0)
    watch.load = lambda: next(loads)
    busy = [{"model": 0.3 * s, "stage": 0.99 * s, "publish": 0.1 * s} for s in range(12)]
    loads = iter(_load(float(s), busy[s], {("stage mine:Slow", "cam1"): (0.99 * s, 25 * s)}) for s in range(12))
    said = [text for s in range(12) for _, text, *_ in watch.observe(
        float(s), {"cam1": SourceCounts(decoded=25 * s, dropped_by=Counter({"queue_full": 10 * s}))})]
    assert said == ["source cam1 is overloaded: 40% of its frames dropped in the last 10 s (queue_full 100) — the "
                    "per-source stages hold the run back, not the model (their thread worked 99% of the time; stage "
                    "mine:Slow took 40 ms a frame on cam1's results): make that stage faster, or set or lower the "
                    "source's max_fps"]
    model_bound = OverloadWatch(window_s=10, share=0.2, paused_since=lambda moment: 0.0)
    loads = iter(_load(float(s), {"model": 0.95 * s, "stage": 0.2 * s}) for s in range(12))
    model_bound.load = lambda: next(loads)
    said = [text for s in range(12) for _, text, *_ in model_bound.observe(
        float(s), {"cam1": SourceCounts(decoded=25 * s, dropped_by=Counter({"queue_full": 10 * s}))})]
    assert len(said) == 1 and said[0].endswith("or give the engine less to do per frame (a smaller model, a GPU)")
    loads = iter(_load(float(s), {"model": 0.95 * s, "stage": 0.2 * s}) for s in range(12))
    again = OverloadWatch(window_s=10, share=0.2, paused_since=lambda moment: 0.0)
    again.load = lambda: next(loads)
    fields = [f for s in range(12) for *_, f in again.observe(
        float(s), {"cam1": SourceCounts(decoded=25 * s, dropped_by=Counter({"queue_full": 10 * s}))})]
    assert fields == [{"cause": "engine"}]


class _Camera:
    """A live source at about 100 fps until closed."""

    live = True

    def __init__(self, name: str):
        self.name = name
        self._closed = threading.Event()

    def frames(self):
        i = 0
        while not self._closed.wait(0.01):
            yield Frame(self.name, i, np.zeros((48, 64, 3), np.uint8), None, None, i / 100, time.time())
            i += 1

    def close(self):
        self._closed.set()


class _Sleepy:
    def __init__(self, source: str):
        self.source = source

    def process(self, result):
        time.sleep(0.03)
        return result


def test_a_run_whose_stage_is_slow_names_it_and_its_seconds_are_on_metrics(caplog):
    runtime = Runtime([_Camera("cam1")], ColourSegmenter(), [CollectingSink()], stages=[_Sleepy], batch_size=2,
                      progress=False)
    runtime.overload = OverloadWatch(window_s=2, share=0.2, paused_since=lambda moment: 0.0)
    runtime.overload.load = runtime.metrics.load
    running = threading.Thread(target=runtime.run)
    with caplog.at_level(logging.WARNING, logger="segstream"):
        running.start()
        deadline = time.monotonic() + 30
        while not any("is overloaded" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.1)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(RunMetricsCollector(runtime.metrics, 60))
        page = generate_latest(registry).decode()
        runtime.stop()
        running.join(30)
    [record] = [r for r in caplog.records if "is overloaded" in r.getMessage()]
    line = record.getMessage()
    assert "the per-source stages hold the run back, not the model" in line, line
    # the same as fields, for a JSON log's record (found probing as an SRE: only in the text)
    assert (record.cause, record.part, record.ran_for, record.source) == ("stages", "stage _Sleepy", ["cam1"], "cam1")
    assert 25 < record.ms_per_frame < 60
    assert "stage _Sleepy took 3" in line and line.endswith("set or lower the source's max_fps"), line
    seconds = {metric.split("}")[0] + "}": float(metric.split()[-1])
               for metric in page.splitlines() if metric.startswith("segstream_stage_seconds_total{")}
    assert list(seconds) == ['segstream_stage_seconds_total{source="cam1",stage="_Sleepy"}'], page
    [spent] = seconds.values()
    assert spent > 1.0
    busy = {metric.split('"')[1]: float(metric.split()[-1]) for metric in page.splitlines()
            if metric.startswith("segstream_thread_busy_seconds_total{")}
    assert busy["stage"] >= spent and busy["stage"] > 2 * busy["model"], busy
    assert "segstream_sink_seconds_total{sink=\"collect\"}" in page


def test_a_thread_s_busy_seconds_never_go_down_however_the_reads_fall_between_its_beats():
    # found probing as an SRE: load() read between a beat's two updates counted a stretch twice, and the next read
    # went down (17,719 of 536,685 reads): Prometheus takes that for a counter reset
    from segstream.pipeline.metrics import RunMetrics

    metrics = RunMetrics()
    done = threading.Event()

    def beating():
        while not done.is_set():
            metrics.beat("stage")
            metrics.beat("stage", idle="waiting for results")

    beater = threading.Thread(target=beating)
    beater.start()
    try:
        last, went_down, reads = 0.0, 0, 0
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            now = metrics.load().busy.get("stage", 0.0)
            went_down += now < last
            last, reads = max(last, now), reads + 1
    finally:
        done.set()
        beater.join()
    assert reads > 1000 and went_down == 0


def test_a_source_added_again_whose_counts_began_anew_is_no_negative_time():
    # found reviewing: a removed source's stage seconds leave the counts; added again, they start from 0 while an
    # earlier load still holds the old totals
    before = _load(0.0, {"model": 0.0, "stage": 0.0}, {("stage zones:Slow", "dock1"): (50.0, 400),
                                                      ("stage tracker", "aisle3"): (1.0, 100)})
    after = _load(10.0, {"model": 1.0, "stage": 9.5}, {("stage zones:Slow", "dock1"): (4.0, 450),
                                                       ("stage tracker", "aisle3"): (3.0, 200)})
    assert after.holds_back(before).text.endswith("stage tracker took 20 ms a frame on aisle3's results): make that "
                                                  "stage faster")
