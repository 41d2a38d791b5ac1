"""An RTSP camera that goes away: killed mid-stream and back 5 s later at another size, or gone
for good. Real server (tests/rtsp_server.py relaying ffmpeg's RTP), real runtime, real sinks."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from segstream.connectors.av_input import AVInput
from segstream.connectors.files_sink import FilesSink, read_entries
from segstream.connectors.live_source import ReconnectPolicy
from segstream.connectors.redis_wire import event_from_wire, from_wire
from segstream.connectors.stream_source import StreamSource
from segstream.pipeline.runtime import Runtime
from tests.conftest import ColourSegmenter
from tests.live_servers import RecordingSink, RtspCamera, run_in_thread, wait_for

POLICY = ReconnectPolicy(open_timeout_s=5, read_timeout_s=2, stall_timeout_s=3, delay_s=0.4, max_delay_s=1.5)


@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    """A camera streams 160x120, is killed, comes back 5 s later at 320x240 (with its RTP clock
    started afresh), and streams again; the run is stopped once frames after the restart are out."""
    workdir = tmp_path_factory.mktemp("outage")
    camera = RtspCamera(workdir, size="160x120").start()
    try:
        record = RecordingSink()
        files = FilesSink(workdir / "out")
        source = StreamSource("cam", camera.url(), policy=POLICY, seed=1)
        runtime = Runtime([source], ColourSegmenter(), [record, files], publish_states=True, progress=None)
        thread, outcome = run_in_thread(runtime)
        wait_for(lambda: len(record.of("cam")) >= 80, 30, "80 frames before the outage")
        camera.kill()
        killed_at = time.monotonic()
        wait_for(lambda: "reconnecting" in record.states("cam"), 10, "the source to notice the outage")
        time.sleep(max(0.0, killed_at + 5 - time.monotonic()))
        published_before = len(record.of("cam"))
        camera.start(size="320x240")
        # The premise of the PTS test: the restarted camera's own timestamps start over, below
        # where the stream had got to.
        probe = AVInput(camera.url(), options={"rtsp_transport": "tcp"}, timeout=(10, 10))
        first = next(p for p in probe.pictures() if p.pts is not None)  # RTSP may give the first none
        probe.close()
        wait_for(lambda: sum(r.epoch == 1 for r in record.of("cam")) >= 80, 30, "80 frames after the restart")
        sender_delay = runtime.metrics.gauges["source_sender_delay_seconds"].read()
        runtime.stop()
        thread.join(30)
        assert not thread.is_alive() and "error" not in outcome, outcome
        return SimpleNamespace(
            record=record,
            report=outcome["report"],
            published_before=published_before,
            restarted_pts_s=float(first.pts * first.time_base),
            sender_delay=sender_delay,
            entries=[from_wire(e) for e in read_entries(workdir / "out" / "cam.jsonl")],
            events=[event_from_wire(e) for e in read_entries(workdir / "out" / "cam.events.jsonl")],
        )
    finally:
        camera.kill()


def test_the_source_reconnects_when_the_camera_comes_back_and_frames_after_the_restart_are_published(outage):
    states = outage.record.states("cam")
    assert states[0] == "connecting" and states[1] == "streaming"
    lost = states.index("reconnecting")
    assert "streaming" in states[lost:], states
    assert states[-1] == "ended"
    results = outage.record.of("cam")
    assert len(results) > outage.published_before
    after = [r for r in results if r.epoch == 1]
    assert len(after) >= 25
    report = outage.report.sources["cam"]
    assert report.reconnects >= 1 and report.transitions["streaming"] == 2 and report.state == "ended"
    assert outage.report.balanced and not outage.report.failed


def test_indices_keep_counting_across_the_reconnect(outage):
    indices = [r.index for r in outage.record.of("cam")]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    epochs = [r.epoch for r in outage.record.of("cam")]
    assert epochs == sorted(epochs) and set(epochs) == {0, 1}


def test_a_new_frame_size_after_the_reconnect_is_carried_through(outage):
    sizes = {r.epoch: (r.width, r.height) for r in outage.record.of("cam")}
    assert sizes == {0: (160, 120), 1: (320, 240)}
    for result in outage.record.of("cam"):
        assert result.label_map.shape == (result.height, result.width)
    streaming = [e.data for e in outage.events if e.kind == "state" and e.data["state"] == "streaming"]
    assert [(d["width"], d["height"], d["epoch"]) for d in streaming] == [(160, 120, 0), (320, 240, 1)]


def test_pts_stay_monotone_when_the_restarted_camera_starts_its_clock_again(outage):
    results = outage.record.of("cam")
    last_before = max(r.pts_seconds for r in results if r.epoch == 0)
    assert outage.restarted_pts_s < last_before, "the restarted camera's own PTS must go backwards for this test"
    pts = [r.pts for r in results]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert len({r.time_base for r in results}) == 1
    # the gap in the timeline is the outage as it happened on the wall clock
    first_after = min((r for r in results if r.epoch == 1), key=lambda r: r.index)
    last_before_frame = max((r for r in results if r.epoch == 0), key=lambda r: r.index)
    wall_gap = first_after.capture_ts - last_before_frame.capture_ts
    assert first_after.pts_seconds - last_before_frame.pts_seconds == pytest.approx(wall_gap, abs=1.0)


def test_entries_carry_the_reconnect_epoch(outage):
    assert [e.epoch for e in outage.entries] == [r.epoch for r in outage.record.of("cam")]
    assert {e.epoch for e in outage.entries} == {0, 1}


def test_state_events_say_why_the_source_reconnects(outage):
    states = [e for e in outage.events if e.kind == "state"]
    reconnecting = [e.data for e in states if e.data["state"] == "reconnecting"]
    assert reconnecting[0]["phase"] == "read" and "ended the stream" in reconnecting[0]["reason"]
    assert all(d["attempt"] >= 1 and d["delay_s"] > 0 for d in reconnecting)
    refused = [d for d in reconnecting if d["phase"] == "open"]
    assert refused and all("refused" in d["reason"] for d in refused)
    # backoff: the delays grow with the attempts (with jitter within each attempt's range)
    by_attempt = {d["attempt"]: d["delay_s"] for d in reconnecting}
    if 3 in by_attempt:
        assert by_attempt[3] > POLICY.delay_s / 2
    assert all(set(e.data) >= {"state", "previous", "reason", "reconnects"} for e in states)
    assert [e.data["previous"] for e in states[1:]] == [e.data["state"] for e in states[:-1]]


def test_frames_carry_the_senders_wall_clock_from_rtcp_sender_reports(outage):
    results = outage.record.of("cam")
    assert all(r.sender_ts is not None for r in results)
    # Sender and receiver share this machine's clock: the sender time is before the capture. The
    # frames FFmpeg buffered while probing the stream come out late at first (about a GOP, 1 s
    # here); from then on they are a few tens of ms old.
    assert all(-0.01 < r.capture_ts - r.sender_ts < 2.0 for r in results)
    for epoch in (0, 1):
        frames = [r for r in results if r.epoch == epoch]
        settled = [r for r in frames if r.capture_ts > frames[0].capture_ts + 2.0]
        assert settled and all(r.capture_ts - r.sender_ts < 0.5 for r in settled)
    assert all(e.sender_ts == pytest.approx(r.sender_ts) for e, r in zip(outage.entries, results))
    # and the metric of each camera's delay (its skew, against other cameras'): the newest frame's
    assert set(outage.sender_delay) == {("cam",)} and 0.0 < outage.sender_delay[("cam",)] < 0.5


def test_a_camera_gone_for_good_fails_after_max_reconnects_and_the_run_reports_it(tmp_path):
    with RtspCamera(tmp_path) as camera:
        record = RecordingSink()
        policy = ReconnectPolicy(open_timeout_s=5, read_timeout_s=1, stall_timeout_s=2, max_reconnects=3,
                                 delay_s=0.1, max_delay_s=0.4)
        source = StreamSource("cam", camera.url(), policy=policy)
        runtime = Runtime([source], ColourSegmenter(), [record], publish_states=True, required=[], progress=None)
        thread, outcome = run_in_thread(runtime)
        wait_for(lambda: len(record.of("cam")) >= 5, 30, "frames before the camera dies")
        camera.kill()
        thread.join(30)
    assert not thread.is_alive()
    report = outcome["report"]
    assert report.failed and "gave up after 3 reconnect attempts" in report.failed["cam"]
    assert "refused" in report.failed["cam"]
    assert report.sources["cam"].reconnects == 3 and report.sources["cam"].state == "failed"
    assert record.states("cam")[-4:] == ["reconnecting"] * 3 + ["failed"]
    assert report.summary().startswith("failed:") and "cam" in report.summary()
    assert report.balanced


def test_a_camera_back_after_a_long_outage_is_read_at_once_not_after_its_backoff(tmp_path):
    # Found probing as an incident investigator: a camera back after an outage was read 14 s later,
    # at the end of a backoff grown while it was away (blind meanwhile, its downtime overstated)
    with RtspCamera(tmp_path) as camera:
        record = RecordingSink()
        policy = ReconnectPolicy(open_timeout_s=5, read_timeout_s=1, stall_timeout_s=2, delay_s=30, max_delay_s=30)
        source = StreamSource("cam", camera.url(), policy=policy, seed=1)
        runtime = Runtime([source], ColourSegmenter(), [record], publish_states=True, progress=None)
        thread, outcome = run_in_thread(runtime)
        try:
            wait_for(lambda: len(record.of("cam")) >= 5, 30, "frames before the outage")
            camera.kill()
            wait_for(lambda: "reconnecting" in record.states("cam"), 10, "the source to notice the outage")
            waited = [e.data["delay_s"] for e in record.events if e.kind == "state" and e.data["state"] == "reconnecting"]
            assert waited[-1] >= 15  # attempt 1 of a 30 s backoff: 15-30 s
            time.sleep(2)  # the port refuses meanwhile
            camera.start()  # with 13 s or more of its backoff left
            wait_for(lambda: any(r.epoch == 1 for r in record.of("cam")), 10, "frames from the camera back")
        finally:
            runtime.stop()
            thread.join(30)
    assert outcome["report"].sources["cam"].reconnects == 1


def test_credentials_refused_before_the_first_frame_fail_the_source_at_once(tmp_path):
    """A wrong password is a wrong URL: retried forever (the default), it would only look like a
    camera that is down. The source fails at once and the run says why."""
    with RtspCamera(tmp_path, user="cam", password="right") as camera:
        record = RecordingSink()
        source = StreamSource("cam", camera.url("cam", "wrong"), policy=POLICY)
        runtime = Runtime([source], ColourSegmenter(), [record], publish_states=True, required=[], progress=None)
        thread, outcome = run_in_thread(runtime)
        thread.join(20)
    assert not thread.is_alive(), "the source kept retrying refused credentials"
    report = outcome["report"]
    assert "401 Unauthorized" in report.failed["cam"] and "not retried" in report.failed["cam"]
    assert report.sources["cam"].reconnects == 0 and record.states("cam") == ["connecting", "failed"]
    assert "wrong" not in report.failed["cam"]  # the password is never shown


def test_credentials_refused_after_streaming_are_retried_until_the_camera_accepts_them(tmp_path):
    """A camera that streamed may refuse accounts while it reboots: that is an outage, retried."""
    camera = RtspCamera(tmp_path, user="cam", password="right").start()
    try:
        record = RecordingSink()
        source = StreamSource("cam", camera.url("cam", "right"), policy=POLICY, seed=2)
        runtime = Runtime([source], ColourSegmenter(), [record], publish_states=True, progress=None)
        thread, outcome = run_in_thread(runtime)
        wait_for(lambda: len(record.of("cam")) >= 5, 30, "frames before the reboot")
        camera.kill()
        camera.password = "changed"
        camera.start()

        def refusals() -> int:
            return sum(e.kind == "state" and e.data["state"] == "reconnecting" and "401" in e.data["reason"]
                       for e in list(record.events))

        wait_for(lambda: refusals() >= 2, 20, "two refused reconnect attempts")
        camera.kill()
        camera.password = "right"
        camera.start()
        wait_for(lambda: any(r.epoch == 1 for r in record.of("cam")), 30, "frames once the camera accepts again")
        runtime.stop()
        thread.join(30)
    finally:
        camera.kill()
    assert not thread.is_alive() and "error" not in outcome, outcome
    assert "failed" not in record.states("cam") and not outcome["report"].failed


def test_a_password_with_url_characters_works_through_a_config_variable(tmp_path, monkeypatch):
    """The README's ``${CAM_PASSWORD}`` pattern with a password holding ``@ : # / ?`` (found
    probing: 'Invalid argument', retried forever)."""
    from segstream.pipeline.builders import build_sources
    from segstream.pipeline.config import load_config
    from tests.test_stream_source import take

    password = "p@ss:w#rd/x?y"
    monkeypatch.setenv("CAM_PASSWORD", password)
    with RtspCamera(tmp_path, user="cam", password=password) as camera:
        config = tmp_path / "cam.yaml"
        config.write_text(f"sources: [{{name: cam, type: stream, url: 'rtsp://cam:${{CAM_PASSWORD}}@127.0.0.1:{camera.port}/cam'}}]\n")
        (source,) = build_sources(load_config(config).sources)
        frames = take(source, 3)
    assert len(frames) == 3 and password not in source.shown


def test_a_port_that_accepts_all_along_is_probed_once_a_backoff_not_every_half_second():
    # found probing as a home-lab NVR user: a booting camera answering 503 took 86 TCP
    # connections in 40 s from the port check, besides the 7 real attempts
    import socket
    import threading

    from segstream.connectors.live_source import Resolver, port_back_within

    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept():
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            connection.close()

    threading.Thread(target=accept, daemon=True).start()
    port = server.getsockname()[1]
    try:
        start = time.monotonic()
        assert port_back_within(2.0, threading.Event(), Resolver(), "127.0.0.1", port, seen_closed=False) is None
        assert time.monotonic() - start >= 1.9  # the backoff waited whole
        assert len(accepted) == 1
        # refused at the attempt, accepting now: retried at once, as before
        left = port_back_within(5.0, threading.Event(), Resolver(), "127.0.0.1", port, seen_closed=True)
        assert left is not None and left > 3
    finally:
        server.close()
