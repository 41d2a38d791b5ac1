"""A live stream that is decoded slower than it comes catches up (``max_behind_s``): the frames
waiting in the input's buffer are left undecoded up to a keyframe near live, counted, instead of
decoded one by one further and further behind."""

import io
import logging
import time

from segstream.connectors.catch_up import KEYFRAME_WAIT_S, PROBE_S, CatchUp, CatchUpTally
from segstream.connectors.live_source import ReconnectPolicy
from segstream.connectors.stream_source import StreamSource
from segstream.pipeline.config import ConfigError, load_config
from segstream.pipeline.engine import BufferPolicy
from segstream.pipeline.monitoring import RunMetricsCollector
from segstream.pipeline.runtime import Runtime
from tests.conftest import ColourSegmenter
from tests.live_servers import FfmpegStream, RecordingSink, free_port, run_in_thread, wait_for

FPS = 25


def _catch_up(max_behind_s: float = 1.0, name: str = "") -> CatchUp:
    return CatchUp(max_behind_s, 1 / FPS, 1 / FPS, CatchUpTally(), name)


def _read(catch_up: CatchUp, packets: int, read_fps: float, gop: int = 10, start: float = 1000.0,
          first: int = 0) -> list[bool]:
    """Which of ``packets`` packets of a 25 fps stream (a keyframe every ``gop``), waiting in a
    buffer, read at ``read_fps`` (each skipped one read at once) are skipped."""
    skipped, now = [], start + first / FPS
    for n in range(first, first + packets):
        skip = catch_up.skip(n, n % gop == 0, now)
        skipped.append(skip)
        now += 0.0 if skip else 1 / read_fps
    return skipped


def test_a_stream_decoded_slower_than_it_comes_skips_to_a_keyframe_near_live_and_goes_on():
    catch_up = _catch_up()
    skipped = _read(catch_up, 200, read_fps=10)  # 0.6 s more behind each second of the stream
    first = skipped.index(True)
    # 0.06 s more behind at each packet (read 0.1 s apart, 0.04 s of the stream): past 1.0 s at the 17th
    assert 16 <= first <= 18, first
    resumed = skipped.index(False, first)
    assert resumed % 10 == 0, "decoding resumes at a keyframe"
    assert catch_up.tally.times >= 2 and catch_up.tally.skipped == sum(skipped)
    # never more than max_behind_s behind, by the packets' own timestamps
    now, worst = 1000.0, 0.0
    for n, skip in enumerate(skipped):
        worst = max(worst, now - (1000.0 + n / FPS))
        now += 0.0 if skip else 0.1
    assert worst < 1.0 + 0.1, worst


def test_a_stream_that_keeps_up_skips_nothing_whatever_its_jitter_or_its_pauses():
    catch_up = _catch_up()
    assert not any(_read(catch_up, 500, read_fps=FPS))
    # a sender's pause of 5 s (its timestamps going on where they stopped) is not lag
    paused = [catch_up.skip(n, n % 10 == 0, 1000.0 + n / FPS + 5.0) for n in range(500, 600)]
    assert not any(paused) and catch_up.tally.skipped == 0


def test_a_network_that_holds_packets_back_is_no_lag_however_often():
    """Found reviewing: a network that held packets back (Wi-Fi, 4G: a dip in bandwidth, packets
    later and later) made a stream the machine kept up with read as behind, and its frames were
    skipped. A read that waited for its packet is at the live edge: nothing waits behind it."""
    def arrival(sent: float) -> float:  # every 10 s, a bandwidth dip: 3 s of packets later and later, to 1.5 s
        into = (sent - 1000.0) % 10.0
        return sent + (0.5 * (into - 1.0) if 1.0 <= into < 4.0 else 0.0)

    catch_up, ready, skipped = _catch_up(), 1000.0, []
    for n in range(3000):  # two minutes
        came = arrival(1000.0 + n / FPS)
        read = max(ready, came)
        skipped.append(catch_up.skip(n, n % 50 == 0, read, waited_s=read - ready))
        ready = read + 0.025  # decoded at 40 fps: it keeps up, and works off a burst in 1.5 s
    assert not any(skipped)
    # nor a camera's clock 0.5 % slower than ours, for an hour, read at the live edge (each read waits)
    slow = _catch_up()
    assert not any(slow.skip(n, n % 50 == 0, 1000.0 + n / FPS * 1.005, waited_s=0.03) for n in range(3600 * FPS))
    assert slow.tally.skipped == 0 and slow.tally.times == 0


def test_a_keyframe_far_behind_is_skipped_too_and_a_stream_without_keyframes_resumes_after_a_while():
    catch_up = _catch_up()
    # read 0.1 s late more at each packet: 1.1 s behind at the 11th
    assert not any(catch_up.skip(n, n == 0, 1000.0 + n / FPS + 0.1 * n) for n in range(11))
    assert catch_up.skip(11, False, 1000.0 + 11 / FPS + 1.1)
    assert catch_up.skip(20, True, 1000.0 + 20 / FPS + 0.9)  # a keyframe still 0.9 s behind: skipped
    assert catch_up.skip(25, False, 1000.0 + 25 / FPS + 0.3)  # near live, no keyframe: skipped
    assert not catch_up.skip(30, True, 1000.0 + 30 / FPS + 0.3)  # a keyframe 0.3 s behind: decoded
    assert catch_up.resumed, "the decoder is started afresh at it"
    # a stream refreshed by intra slices (no keyframe after its first) goes on after KEYFRAME_WAIT_S
    refresh = _catch_up()
    assert not any(refresh.skip(n, n == 0, 1000.0 + n / FPS + 0.1 * n) for n in range(11))
    assert refresh.skip(11, False, 1000.0 + 11 / FPS + 1.1)
    near = [refresh.skip(n, False, 1000.0 + n / FPS) for n in range(12, 12 + int((KEYFRAME_WAIT_S + 1) * FPS))]
    assert near[0] and not near[-1] and near.index(False) >= KEYFRAME_WAIT_S * FPS


def test_sessions_count_into_one_tally_and_each_measures_its_own_lag():
    tally = CatchUpTally()
    first = CatchUp(1.0, 1 / FPS, 1 / FPS, tally)
    _read(first, 200, read_fps=10)
    before = tally.skipped
    second = CatchUp(1.0, 1 / FPS, 1 / FPS, tally)  # reconnected: timestamps from anywhere
    assert not second.skip(5_000_000, True, 5000.0) and not second.skipping
    assert before > 0 and tally.skipped == before
    _read(second, 100, read_fps=10, start=9000.0)
    assert tally.skipped > before


def test_every_frame_is_no_buffer_to_catch_up_and_the_default_is_newest_s_only(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("sources:\n  - {name: cam, type: stream, url: 'udp://127.0.0.1:5000'}\n"
                    "  - {name: all, type: stream, url: 'udp://127.0.0.1:5001', buffer: every_frame}\n")
    cfg = load_config(path)
    assert cfg.sources[0].max_behind_s == 1.0 and cfg.sources[1].max_behind_s is None
    path.write_text("sources:\n  - {name: all, type: stream, url: 'udp://127.0.0.1:5001', buffer: every_frame, "
                    "max_behind_s: 3}\n")
    try:
        load_config(path)
    except ConfigError as error:
        assert "max_behind_s leaves frames undecoded" in str(error) and "buffer every_frame" in str(error)
    else:
        raise AssertionError("every_frame with max_behind_s was taken")


def test_a_udp_stream_read_slower_than_it_comes_catches_up_and_counts_what_it_left_out(caplog):
    # Read at a fifth of its rate, a stream falls 0.8 s further behind live each second (FFmpeg's
    # buffer holds it all: without catch-up, 4.8 s behind after 6 s, every frame decoded late).
    port = free_port()
    source = StreamSource("udp", f"udp://127.0.0.1:{port}", policy=ReconnectPolicy(read_timeout_s=5),
                          max_behind_s=1.0)
    frames = []
    with caplog.at_level(logging.WARNING, logger="segstream.connectors"), \
            FfmpegStream(["-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"], gop=10):
        started = None
        for frame in source.frames():
            frames.append(frame)
            started = started or frame.capture_wall
            if frame.capture_wall - started > 6:
                break
            time.sleep(0.2)  # a decoder at 5 fps of a 25 fps stream
    source.close()
    offsets = [f.capture_wall - f.pts_seconds for f in frames]
    behind = [offset - min(offsets[:n + 1]) for n, offset in enumerate(offsets)]
    assert max(behind) < 2.0, [round(b, 2) for b in behind]
    left_out = frames[-1].index - frames[0].index + 1 - len(frames)
    assert 0 < left_out <= source.frames_caught_up <= source.frames_skipped, (left_out, source.frames_caught_up)
    # every frame of the stream's span is accounted for: decoded, or left out and counted
    spanned = round((frames[-1].pts_seconds - frames[0].pts_seconds) * FPS) + 1
    assert abs(spanned - (len(frames) + left_out)) <= 1, (spanned, len(frames), left_out)
    assert source.decode_errors == 0 and {f.epoch for f in frames} == {frames[0].epoch}
    (said,) = [r for r in caplog.records if "behind live" in r.getMessage()]
    assert said.getMessage().startswith("source udp fell 1.") and said.source == "udp"


def test_a_stream_held_back_catches_up_and_the_run_counts_and_shows_it():
    port = free_port()
    source = StreamSource("cam", f"udp://127.0.0.1:{port}", policy=ReconnectPolicy(read_timeout_s=5),
                          max_behind_s=1.0)
    # every frame of a 25 fps stream through a model of 10 fps: 0.6 s more behind live each second
    progress = io.StringIO()
    runtime = Runtime([source], ColourSegmenter(delay_s=0.1), [RecordingSink()], batch_size=1, queue_size=1,
                      buffers={"cam": BufferPolicy("every_frame")}, progress=progress, progress_interval_s=0.5)
    with FfmpegStream(["-f", "mpegts", f"udp://127.0.0.1:{port}?pkt_size=1316"], gop=10):
        thread, _ = run_in_thread(runtime)
        try:
            wait_for(lambda: runtime.metrics.sources["cam"].caught_up > 20, 30, "frames left out to catch up")
            lags = []
            for _ in range(10):  # the gauge of /metrics
                time.sleep(0.3)
                lags.append(runtime.metrics.gauges["source_lag_seconds"].read().get(("cam",), 0.0))
        finally:
            runtime.stop()
            thread.join(10)
    assert max(lags) < 2.0, lags
    report = runtime.report(1.0)
    counts = report.sources["cam"]
    assert 0 < counts.caught_up == counts.skipped and report.balanced
    assert f"skipped {counts.skipped} (behind live)" in report.summary()
    assert " skipped (behind live)" in progress.getvalue()
    scraped = {(s.name, tuple(s.labels.values())): s.value
               for family in RunMetricsCollector(runtime.metrics).collect() for s in family.samples}
    assert scraped[("segstream_frames_caught_up_total", ("cam",))] == counts.caught_up
    assert scraped[("segstream_frames_skipped_total", ("cam",))] == counts.skipped


def test_packets_that_come_no_faster_than_their_timestamps_are_no_backlog_and_turn_catch_up_off(caplog):
    """Found probing: an MJPEG camera at 10 fps that FFmpeg times at 25 fps, and an HLS server slower
    than real time, fell behind for good while skipping found no backlog: every frame was skipped
    until the stall watchdog reconnected, again and again."""
    catch_up = _catch_up(name="lobby")
    with caplog.at_level(logging.WARNING, logger="segstream.connectors"):
        skipped = [catch_up.skip(n, True, 1000.0 + n * 0.1) for n in range(300)]  # every frame a keyframe
    assert catch_up.off and not any(skipped[-200:])
    assert 0 < sum(skipped) <= PROBE_S * FPS + 1, sum(skipped)
    (said,) = [r for r in caplog.records if "no faster than their timestamps" in r.getMessage()]
    assert said.getMessage().startswith("source lobby is 1.") and "until it reconnects" in said.getMessage()
    assert not _catch_up().off  # a new session (a new CatchUp) tries again


def test_a_busy_machine_s_scheduling_of_single_reads_is_no_live_edge():
    """Found benchmarking: on two busy cores a read of packets waiting in the buffer waited up to
    15 ms now and then (1 in 1,000); taken for the live edge, it restarted the lag's mark, and a 4K
    stream fell twice as far behind (its buffer overflowing) before catching up."""
    quiet, busy = _catch_up(), _catch_up()
    now, skipped = 1000.0, []
    for n in range(200):
        skipped.append((quiet.skip(n, n % 10 == 0, now), busy.skip(n, n % 10 == 0, now, waited_s=0.015 * (n % 7 == 0))))
        now += 0.0 if skipped[-1][0] else 0.1  # decoded at 10 fps of a 25 fps stream
    assert [q for q, _ in skipped] == [b for _, b in skipped] and any(q for q, _ in skipped)


def test_a_playlist_s_segment_fetches_are_no_live_edge():
    """Found reviewing: a behind-live HLS source's read at a segment's end fetches the next segment
    (there already, however far behind), and a fetch of 0.15 s taken for the live edge restarted
    the lag's mark: the stream fell 1.5 s further behind every 20 s, unseen."""
    def lag_after(edge_from_waits: bool) -> float:
        catch_up = CatchUp(1.0, 1 / FPS, 1 / FPS, CatchUpTally(), edge_from_waits=edge_from_waits)
        now = 1000.0
        for n in range(100 * FPS):  # 100 s of 2 s segments, decoded at half the stream's rate
            waited = 0.15 if n % (2 * FPS) == 0 else 0.0  # the next segment's fetch
            now += waited
            if not catch_up.skip(n, n % FPS == 0, now, waited_s=waited):
                now += 2 / FPS
        return now - (1000.0 + n / FPS)

    assert lag_after(edge_from_waits=False) < 1.5
    assert lag_after(edge_from_waits=True) > 5.0  # what a live stream's waits would make of it


def test_where_decoding_resumes_the_decoder_gives_the_frames_it_held_and_decodes_afresh():
    from fractions import Fraction

    import av
    import numpy as np

    from segstream.connectors.av_input import _drained

    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 64, 48, "yuv420p"
    encoder.time_base = Fraction(1, FPS)
    encoder.options = {"preset": "fast", "bf": "2", "g": "5", "keyint_min": "5", "sc_threshold": "0"}
    packets = []
    for n in range(20):
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), n * 10, np.uint8), format="rgb24").reformat(
            format="yuv420p")
        frame.pts = n
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    decoder = av.CodecContext.create("h264", "r")
    out = [f for p in packets[:8] for f in decoder.decode(p)]
    held = _drained(decoder)
    assert held and len(out) + len(held) == 8, (len(out), len(held))  # B-frames: the decoder held some
    resume = next(i for i, p in enumerate(packets) if i >= 10 and p.is_keyframe)
    after = [f for p in packets[resume:] for f in decoder.decode(p)] + list(decoder.decode(None))
    assert [f.pts for f in after] == list(range(resume, 20)), [f.pts for f in after]
