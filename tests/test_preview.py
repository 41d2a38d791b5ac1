"""Previews: segments drawn over frames (MP4 or PNG), colours stable per id, and segstream render
of a recorded Redis stream giving the same frames as the preview of the same run."""

import logging
from fractions import Fraction

import av
import cv2
import numpy as np
import pytest

from segstream.connectors.embedded_redis import EmbeddedRedis
from segstream.connectors.errors import SinkError
from segstream.connectors.file_source import FileSource
from segstream.connectors.overlay import draw_overlay, id_colour, scale_for, segment_colours
from segstream.connectors.preview_sink import PreviewSink
from segstream.connectors.redis_reader import connect_redis
from segstream.connectors.redis_sink import RedisPublisher
from segstream.models.results import FrameResult, Segments
from segstream.pipeline.runtime import Runtime
from tests.conftest import CollectingSink, ColourSegmenter, encode_clip

OPACITY = 0.45


@pytest.fixture(scope="module")
def big_clip(tmp_path_factory):
    """20 frames, 320x240: a 60-pixel square, room for its interior beside its label."""
    return encode_clip(tmp_path_factory.mktemp("media") / "square_320.mp4", frames=20, width=320, height=240)


def decode(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def test_colours_are_stable_per_id_and_distinct():
    assert id_colour(7) == id_colour(7) == (lambda: id_colour(7))()
    tracks = {id_colour(i) for i in range(24)}
    assert len(tracks) == 24
    assert id_colour(3, tracked=True) != id_colour(3, tracked=False)


def test_a_segment_takes_its_track_colour_once_it_has_a_track():
    segments = Segments.build(ids=[0, 1], class_ids=[0, 0], labels=["a", "a"], isthing=[True, True],
                              track_ids=[-1, 12])
    result = FrameResult("cam", 0, 4, 4, np.zeros((4, 4), np.int32), segments)
    colours = segment_colours(result)
    assert tuple(colours[0]) == id_colour(0, tracked=False)
    assert tuple(colours[1]) == id_colour(12, tracked=True)


def test_preview_mp4_decodes_and_each_segment_carries_its_colour(tmp_path, big_clip):
    preview = PreviewSink(tmp_path, "mp4", OPACITY)
    collected = CollectingSink()
    Runtime([FileSource("cam", str(big_clip))], ColourSegmenter(), [preview, collected], progress=None).run()

    frames = decode(tmp_path / "cam.mp4")
    sources = [frame.image for frame in FileSource("src", str(big_clip)).frames()]
    assert len(frames) == len(sources) == len(collected.results) == 20
    # the runtime drops the image once the sinks are done with it: nothing downstream keeps frames
    assert all(result.image is None for result in collected.results)
    colour = np.array(id_colour(0, tracked=False), np.float64)
    for picture, source, result in zip(frames, sources, collected.results):
        inside = cv2.erode((result.label_map == 0).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        assert inside.sum() > 500
        expected = (1 - OPACITY) * source[inside] + OPACITY * colour
        close = np.abs(picture[inside].astype(np.float64) - expected).max(axis=1) <= 16
        assert close.mean() > 0.6, "most of the segment's interior (all but its label) has its colour"
        outside = cv2.erode((result.label_map < 0).astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        assert np.abs(picture[outside].astype(int) - source[outside]).mean() < 3, "no colour outside segments"


def test_preview_png_writes_one_picture_per_frame_and_says_where(tmp_path, clip, caplog):
    preview = PreviewSink(tmp_path, "png", OPACITY)
    logger = logging.getLogger("segstream.connectors.preview_sink")  # however other tests left the loggers above
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="segstream.connectors.preview_sink"):
            report = Runtime([FileSource("cam", str(clip), max_frames=5)], ColourSegmenter(), [preview],
                             progress=None).run()
    finally:
        logger.removeHandler(caplog.handler)
    pictures = sorted((tmp_path / "cam" / report.run_id).glob("*.png"))
    assert [p.name for p in pictures] == [f"{i:08d}.png" for i in range(5)]
    assert cv2.imread(str(pictures[0])).shape == (120, 160, 3)
    # as an MP4 preview's end says its file (found: a PNG run said nothing of where its pictures went)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("preview of cam:")]
    assert said[-1] == f"preview of cam: 5 pictures in {tmp_path / 'cam' / report.run_id}"


def test_a_restarted_run_keeps_the_earlier_runs_pngs_beside_its_own(tmp_path, clip):
    # Found probing: run B's frames 0-4 were written over run A's (frame numbers start at 0 in each run)
    def run(frames: int, opacity: float = OPACITY) -> tuple[str, dict[str, bytes]]:
        preview = PreviewSink(tmp_path, "png", opacity, keep_runs=2)
        source = FileSource("cam", str(clip), max_frames=frames)
        run_id = Runtime([source], ColourSegmenter(), [preview], progress=None).run().run_id
        return run_id, {p.name: p.read_bytes() for p in (tmp_path / "cam" / run_id).glob("*.png")}

    first, first_pictures = run(8)
    second, second_pictures = run(5, opacity=0.9)  # other pictures than run A's
    assert first != second and len(first_pictures) == 8 and len(second_pictures) == 5
    assert first_pictures["00000000.png"] != second_pictures["00000000.png"], "the comparison is not trivial"
    kept = {p.name: p.read_bytes() for p in (tmp_path / "cam" / first).glob("*.png")}
    assert kept == first_pictures, "run A's pictures are as run A wrote them"
    latest = tmp_path / "cam" / "latest"
    assert latest.is_symlink() and latest.resolve() == (tmp_path / "cam" / second).resolve()

    third, _ = run(3)  # keep_runs=2: the oldest run's folder goes, disk use stays two runs' worth
    assert sorted(p.name for p in (tmp_path / "cam").iterdir()) == sorted([second, third, "latest"])
    assert latest.resolve() == (tmp_path / "cam" / third).resolve()


def test_render_into_a_folder_is_one_line_not_a_traceback(tmp_path, big_clip, capsys):
    from segstream.pipeline.cli import main

    with EmbeddedRedis(tmp_path / "redis") as server:
        publisher = RedisPublisher(connect_redis(server.url))
        Runtime([FileSource("cam", str(big_clip))], ColourSegmenter(), [publisher], progress=None).run()
        capsys.readouterr()
        assert main(["render", "segstream:cam:frames", "--video", str(big_clip), "--out", str(tmp_path),
                     "--url", server.url]) == 1
    err = capsys.readouterr().err
    assert err == f"segstream: error: cannot create {tmp_path}: Is a directory\n"


def test_render_of_an_events_stream_names_the_frames_stream_to_draw(tmp_path, big_clip, capsys):
    from segstream.pipeline.cli import main

    with EmbeddedRedis(tmp_path / "redis") as server:
        connect_redis(server.url).xadd("segstream:cam:events", {"v": "1", "kind": "state"})
        assert main(["render", "segstream:cam:events", "--video", str(big_clip), "--out", str(tmp_path / "o.mp4"),
                     "--url", server.url]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["segstream: error: segstream:cam:events is an events stream (track and source events, no masks) "
                   "— render draws a frames stream, e.g. segstream:cam:frames"]


def test_render_as_a_user_redis_refuses_says_what_to_grant_in_one_line(tmp_path, big_clip, capsys):
    """Found probing as an attacker: a publishing user (no EXISTS), or a reader outside its key
    patterns, got redis-py's NoPermissionError as a 43-line traceback."""
    from segstream.pipeline.cli import main

    with EmbeddedRedis(tmp_path / "redis") as server:
        admin = connect_redis(server.url)
        admin.xadd("segstream:cam:frames", {"v": "1"})
        admin.acl_setuser("publisher", enabled=True, passwords=["+publisher-pw"], keys=["segstream:*"],
                          commands=["+xadd", "+ping", "+client|setname", "+hello"])
        admin.acl_setuser("other", enabled=True, passwords=["+other-pw"], keys=["team2:*"], commands=["+@all"])
        capsys.readouterr()
        said = []
        for user in ("publisher", "other"):
            code = main(["render", "segstream:cam:frames", "--video", str(big_clip), "--out", str(tmp_path / "o.mp4"),
                         "--url", server.url, "--username", user, "--password", f"{user}-pw"])
            said.append((code, capsys.readouterr().err.splitlines()))
    [(code, [publisher])] = said[:1]
    assert code == 1 and publisher.startswith("segstream: error: Redis at ") and "refused" in publisher
    assert "grant the user EXISTS" in publisher and "Traceback" not in publisher
    [(code, [other])] = said[1:]
    assert code == 1 and "its ACL key patterns exclude it — grant it ~segstream:cam:frames" in other


def test_tail_refuses_a_negative_count(capsys):
    from segstream.pipeline.cli import main

    assert main(["tail", "segstream:cam:frames", "--count", "-3"]) == 2
    assert capsys.readouterr().err.startswith("segstream: error: --count must be 0 or more")


def test_preview_sink_refuses_a_result_without_its_frame(tmp_path):
    result = FrameResult("cam", 0, 4, 4, np.zeros((4, 4), np.int32))
    with pytest.raises(SinkError, match="without its frame"):
        PreviewSink(tmp_path).publish(result)


def _frame_result(index: int) -> FrameResult:
    return FrameResult("cam", index, 8, 6, np.zeros((6, 8), np.int32), capture_ts=100.0 + index,
                       image=np.zeros((6, 8, 3), np.uint8))


def test_the_preview_draws_on_its_own_thread_so_the_sinks_before_it_do_not_wait(tmp_path, monkeypatch):
    # found measuring: each frame's Redis entry waited for the preview to draw and encode the frames
    # before it (7 ms of a core at 640x360, 41 at 1080p, the publishing thread's)
    import threading

    from segstream.connectors import preview_sink

    drawing, drawn = threading.Event(), []
    monkeypatch.setattr(preview_sink, "draw_overlay",
                        lambda image, result, opacity, level=None: drawing.wait(10) and drawn.append(result.index) or image)
    sink = PreviewSink(tmp_path, "png")
    written = []
    sink.on_written = written.extend
    results = [_frame_result(i) for i in range(preview_sink.WAITING)]
    for result in results:
        sink.publish(result)  # returns with the drawing held: queued
    assert drawn == [] and not list(tmp_path.rglob("*.png"))  # (drawn here, each publish would wait 10 s)
    drawing.set()
    sink.flush()  # returns once every frame handed to it is written
    assert drawn == list(range(preview_sink.WAITING)) and len(list(tmp_path.rglob("*.png"))) == preview_sink.WAITING
    # the runtime hears of each write from stand-ins: the results the other sinks hold are left alone
    assert [w.index for w in written] == drawn and all(w.publish_ts >= w.capture_ts for w in written)
    assert all(r.publish_ts is None for r in results) and written[0].times is results[0].times
    sink.close()


def test_an_error_of_the_preview_s_drawing_thread_is_raised_on_the_publishing_thread_once(tmp_path, monkeypatch):
    from segstream.connectors import preview_sink

    def broken(image, result, opacity, level=None):
        raise RuntimeError(f"drawing frame {result.index} failed")

    monkeypatch.setattr(preview_sink, "draw_overlay", broken)
    sink = PreviewSink(tmp_path, "png")
    sink.publish(_frame_result(0))
    with pytest.raises(RuntimeError, match="drawing frame 0 failed"):
        sink.flush()
    sink.close()  # said once: the run that caught it closes the sinks without a second error


def test_an_ended_source_s_counts_wait_for_the_frames_the_preview_still_held(tmp_path, clip, monkeypatch):
    # found reviewing: the source's end was counted while the drawing thread still held its last
    # frames, which it dropped after: the ended event said 5 published, the run's summary 0
    import time

    def failing(self, result, image):
        time.sleep(0.02)
        return False  # a write that failed: dropped and counted

    monkeypatch.setattr(PreviewSink, "_write", failing)
    other = CollectingSink()
    report = Runtime([FileSource("cam", clip)], ColourSegmenter(), [PreviewSink(tmp_path / "p"), other],
                     progress=None, publish_states=True).run()
    [ended] = [e for e in other.events if e.kind == "state" and e.data.get("state") == "ended"]
    assert report.published == 0 and report.dropped > 0
    assert ended.data["frames"]["published"] == 0
    assert ended.data["frames"]["dropped"] == {"sink_write_failed": report.dropped}


def test_a_close_repeated_after_one_interrupted_finishes_the_video(tmp_path, monkeypatch):
    # found reviewing: a second Ctrl-C inside close's wait for the drawing thread, then close
    # again (the runtime's other thread does), closed the MP4 while frames were still being drawn
    # into it: no moov atom, unplayable
    import time

    from segstream.connectors import preview_sink

    drawn = preview_sink.draw_overlay
    monkeypatch.setattr(preview_sink, "draw_overlay", lambda *args, **kwargs: time.sleep(0.02) or drawn(*args, **kwargs))
    sink = PreviewSink(tmp_path, "mp4")
    for index in range(12):
        result = _frame_result(index)
        result.image = np.full((48, 64, 3), index * 20, np.uint8)
        result.label_map = np.full((48, 64), -1, np.int32)
        result.width, result.height, result.pts, result.time_base = 64, 48, index, Fraction(1, 10)
        sink.publish(result)
    join = sink._drawer.join

    def interrupted(timeout=None):
        sink._drawer.join = join
        raise KeyboardInterrupt

    sink._drawer.join = interrupted
    with pytest.raises(KeyboardInterrupt):
        sink.close()
    sink.close()
    with av.open(str(tmp_path / "cam.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 12


def test_labels_are_drawn_and_scale_with_the_frame():
    assert scale_for(1080)[0] > 2 * scale_for(240)[0]
    assert scale_for(1080)[2] > scale_for(240)[2] >= 1
    for width, height in ((1920, 1080), (320, 240)):
        image = np.full((height, width, 3), 60, np.uint8)
        label_map = np.full((height, width), -1, np.int32)
        label_map[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 0
        segments = Segments.build(ids=[0], class_ids=[0], labels=["person"], isthing=[True], scores=[0.97])
        drawn = draw_overlay(image, FrameResult("cam", 0, width, height, label_map, segments))
        text = np.all(drawn >= 200, axis=-1)  # white text on its dark box
        rows = np.flatnonzero(text.any(axis=1))
        assert rows.size and rows.max() - rows.min() >= 0.015 * height, "text readable: some rows tall"
        assert height // 4 <= rows.min() and rows.max() <= 3 * height // 4, "label inside its segment"


def test_render_of_a_recorded_stream_gives_the_preview_frames(tmp_path, big_clip, monkeypatch):
    from segstream.connectors.redis_reader import StreamReader
    from segstream.pipeline.cli import main

    # render holds a few decoded entries at a time, whatever the stream's length: pages of 256
    # frame-size label maps held 8 GB at 4K (found by a 4K probe: 29 MB of memory per entry)
    asked, read = [], StreamReader.read

    def read_counted(reader, count=None, **kwargs):
        asked.append((reader.decode_masks, count))
        return read(reader, count=count, **kwargs)

    monkeypatch.setattr(StreamReader, "read", read_counted)
    with EmbeddedRedis(tmp_path / "redis") as server:
        publisher = RedisPublisher(connect_redis(server.url))
        preview = PreviewSink(tmp_path / "preview", "mp4", OPACITY)
        Runtime([FileSource("cam", str(big_clip))], ColourSegmenter(), [publisher, preview], progress=None).run()
        out = tmp_path / "render.mp4"
        assert main(["render", "segstream:cam:frames", "--video", str(big_clip), "--out", str(out),
                     "--url", server.url, "--opacity", str(OPACITY)]) == 0
        assert main(["render", "segstream:nope:frames", "--video", str(big_clip), "--out", str(tmp_path / "x.mp4"),
                     "--url", server.url]) == 1
    assert max(count for decoded, count in asked if decoded) <= 8
    rendered, previewed = decode(out), decode(tmp_path / "preview" / "cam.mp4")
    assert len(rendered) == len(previewed) == 20
    # the same pictures go into both encoders; x264 may now and then code a frame differently
    exact = sum(np.array_equal(a, b) for a, b in zip(rendered, previewed))
    assert exact >= 18
    for a, b in zip(rendered, previewed):
        assert np.abs(a.astype(int) - b).mean() < 1.0


def test_render_of_a_trimmed_stream_says_how_many_frames_it_left_out(tmp_path, big_clip, capsys):
    """MAXLEN kept the last 8 of 20 entries (found probing: "wrote 8 frames", nothing more), and
    the last 2 are gone too (found probing: the frames after the last entry were not counted)."""
    from segstream.pipeline.cli import main

    with EmbeddedRedis(tmp_path / "redis") as server:
        publisher = RedisPublisher(connect_redis(server.url))
        Runtime([FileSource("cam", str(big_clip))], ColourSegmenter(), [publisher], progress=None).run()
        client = connect_redis(server.url)
        client.xtrim("segstream:cam:frames", maxlen=8, approximate=False)
        client.xdel("segstream:cam:frames", *[entry_id for entry_id, _ in
                                              client.xrevrange("segstream:cam:frames", count=2)])
        assert main(["render", "segstream:cam:frames", "--video", str(big_clip), "--out",
                     str(tmp_path / "render.mp4"), "--url", server.url]) == 0
    err = capsys.readouterr().err
    assert "14 of the 20 frames of" in err and "have no entry in segstream:cam:frames" in err, err
    assert "wrote 6 frames" in err


def test_render_shows_its_progress_when_asked_or_on_a_terminal_and_not_in_a_log(tmp_path, big_clip, capsys):
    # Found probing drone footage: a long 5K render said nothing for minutes but its last line
    from segstream.pipeline.cli import main

    with EmbeddedRedis(tmp_path / "redis") as server:
        Runtime([FileSource("cam", str(big_clip))], ColourSegmenter(), [RedisPublisher(connect_redis(server.url))],
                progress=None).run()
        render = ["render", "segstream:cam:frames", "--video", str(big_clip), "--out", str(tmp_path / "r.mp4"),
                  "--url", server.url]
        assert main(render + ["--progress"]) == 0
        shown = capsys.readouterr().err
        assert main(render) == 0  # stderr no terminal: no bar
        logged = capsys.readouterr().err
    assert "render: 100%" in shown and "20/20" in shown, shown
    assert "render:" not in logged and "wrote 20 frames" in logged, logged


def test_a_stream_that_changes_size_is_scaled_into_one_video_not_an_error(tmp_path, monkeypatch):
    # Found probing: a TS that went from 320x240 to 640x360 mid-file stopped the whole batch
    # ("frames changed size"), losing the videos in progress with it.
    from segstream.connectors import overlay
    from segstream.connectors.overlay import OverlayVideo

    warnings = []
    monkeypatch.setattr(overlay.log, "warning", lambda message, *args: warnings.append(message % args))
    video = OverlayVideo(tmp_path / "v.mp4", fps_hint=10)
    small = np.zeros((240, 320, 3), np.uint8)
    small[:, :, 0] = 200
    wide = np.zeros((360, 640, 3), np.uint8)
    wide[:, :, 1] = 200
    for image in (small, small, wide, wide):
        video.write(image)
    video.close()
    frames = decode(tmp_path / "v.mp4")
    assert [f.shape for f in frames] == [(240, 320, 3)] * 4
    assert frames[0][120, 160, 0] > 150 and frames[3][120, 160, 1] > 150, "the new size's picture, scaled"
    # 640x360 into 320x240 keeps its 16:9: 320x180, with black bars of 30 rows above and below
    assert frames[3][5, 160].max() < 40 and frames[3][235, 160].max() < 40
    assert sum("changed size from 320x240 to 640x360" in w for w in warnings) == 1


def test_frames_of_odd_size_are_padded_by_a_pixel_repeating_their_edge(tmp_path):
    # what docs/OPERATIONS.md says of an MP4 of a 641x481 video: H.264 in yuv420p needs even sizes
    from segstream.connectors.overlay import OverlayVideo

    image = np.zeros((121, 161, 3), np.uint8)
    image[:, 150:, 1] = 200  # the right edge green, the bottom edge red
    image[110:, :150, 0] = 200
    image[:100, 100:140:4] = 255  # white lines a scaling would smear
    video = OverlayVideo(tmp_path / "v.mp4", fps_hint=10)
    for _ in range(2):
        video.write(image)
    video.close()
    frame = decode(tmp_path / "v.mp4")[0]
    assert frame.shape == (122, 162, 3), "a pixel wider and taller, not scaled"
    assert frame[60, 161, 1] > 150 and frame[121, 60, 0] > 150, "the new column and row repeat the edge"
    assert frame[60, 60].max() < 40
    assert frame[:100, 100:140:4].min() > 200 and frame[:100, 102:140:4].max() < 50, "not scaled"


def test_render_of_a_restarted_pipelines_stream_draws_the_run_asked_for(tmp_path, big_clip, capsys):
    # Found probing: a stream of run A (20 frames) then run B (5 frames, its numbers from 0 again)
    # rendered run A, silently: run B's entries were taken for A's, out of frame order
    from segstream.pipeline.cli import main

    with EmbeddedRedis(tmp_path / "redis") as server:
        runs = [Runtime([FileSource("cam", str(big_clip), max_frames=frames)], ColourSegmenter(),
                        [RedisPublisher(connect_redis(server.url))], progress=None).run().run_id for frames in (20, 5)]
        capsys.readouterr()

        def render(*run: str) -> tuple[int, int, list[str]]:
            out = tmp_path / f"render{len(list(tmp_path.glob('render*')))}.mp4"
            code = main(["render", "segstream:cam:frames", "--video", str(big_clip), "--out", str(out),
                         "--url", server.url, *run])
            return code, len(decode(out)) if out.exists() else 0, capsys.readouterr().err.strip().splitlines()

        code, frames, said = render()
        assert (code, frames) == (0, 5), "the latest run by default"
        assert said[0] == (f"segstream: warning: segstream:cam:frames holds 2 runs: 1 {runs[0]} (20 entries), "
                           f"2 {runs[1]} (5 entries); drawing the latest, {runs[1]} — choose another with "
                           "--run RUN_ID or --run NUMBER")
        assert said[-1].endswith(f"wrote 5 frames of run {runs[1]} to {tmp_path / 'render0.mp4'}")
        assert render("--run", runs[0])[:2] == (0, 20)
        assert render("--run", "1")[:2] == render("--run", "-2")[:2] == (0, 20)
        code, frames, said = render("--run", "latest")
        assert (code, frames) == (0, 5) and not any("holds 2 runs" in line for line in said)
        assert render("--run", "20261121T101502Z-3f2a9c1d") == (2, 0, [
            f"segstream: error: segstream:cam:frames holds no run '20261121T101502Z-3f2a9c1d' — its runs: "
            f"1 {runs[0]} (20 entries), 2 {runs[1]} (5 entries); give --run one of those run ids, a number from 1 "
            "(the oldest) to 2, -1 or latest"])
        # found probing (release QA): a missing --video was exit 1, after Redis was asked
        code = main(["render", "segstream:cam:frames", "--video", str(tmp_path / "none.mp4"), "--out",
                     str(tmp_path / "x.mp4"), "--url", "redis://127.0.0.1:1"])
        assert code == 2 and capsys.readouterr().err.strip().endswith(
            f"--video '{tmp_path / 'none.mp4'}' does not exist or is no file — give the video the stream was made from")


def test_render_over_a_video_shorter_than_the_stream_leaves_no_partial_video(tmp_path, big_clip, capsys):
    # Found probing: exit 1 with "ends before frame 5", and a 5-frame MP4 left at --out all the same
    from segstream.pipeline.cli import main

    short = encode_clip(tmp_path / "short.mp4", frames=5, width=320, height=240)
    out = tmp_path / "out" / "render.mp4"
    out.parent.mkdir()
    with EmbeddedRedis(tmp_path / "redis") as server:
        Runtime([FileSource("cam", str(big_clip))], ColourSegmenter(), [RedisPublisher(connect_redis(server.url))],
                progress=None).run()
        capsys.readouterr()
        assert main(["render", "segstream:cam:frames", "--video", str(short), "--out", str(out),
                     "--url", server.url]) == 1
        assert capsys.readouterr().err.splitlines() == [
            f"segstream: error: {short} ends before frame 5 of segstream:cam:frames, so {out} is not written — is it "
            "the video the stream was made from?"]
        assert list(out.parent.iterdir()) == [], "neither the video nor its hidden partial is left"

        out.write_bytes(b"an earlier render")
        assert main(["render", "segstream:cam:frames", "--video", str(short), "--out", str(out),
                     "--url", server.url]) == 1
        assert out.read_bytes() == b"an earlier render" and list(out.parent.iterdir()) == [out]


def test_an_interrupted_render_leaves_the_earlier_video_and_no_partial_one(tmp_path):
    # Found probing: Ctrl-C left at --out the frames drawn so far, in place of the earlier render
    import signal
    import subprocess
    import sys
    import time

    clip = encode_clip(tmp_path / "long.mp4", frames=300, width=320, height=240)
    out = tmp_path / "out" / "render.mp4"
    out.parent.mkdir()
    out.write_bytes(b"an earlier render")
    with EmbeddedRedis(tmp_path / "redis") as server:
        Runtime([FileSource("cam", str(clip))], ColourSegmenter(), [RedisPublisher(connect_redis(server.url))],
                progress=None).run()
        render = subprocess.Popen([sys.executable, "-m", "segstream", "render", "segstream:cam:frames", "--video",
                                   str(clip), "--out", str(out), "--url", server.url],
                                  stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while len(list(out.parent.iterdir())) == 1 and out.read_bytes() == b"an earlier render":
                assert render.poll() is None and time.monotonic() < deadline, "the render never began writing"
                time.sleep(0.005)
            render.send_signal(signal.SIGINT)
            _, err = render.communicate(timeout=60)
        finally:
            if render.poll() is None:
                render.kill()
    assert render.returncode == 130, err  # interrupted, not finished before the signal
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert out.read_bytes() == b"an earlier render"
    assert list(out.parent.iterdir()) == [out], "no partial video is left beside it"


def test_a_ctrl_c_inside_the_video_file_s_write_is_an_abort_not_a_write_error(tmp_path, monkeypatch, capfd):
    # Found in CI: Ctrl-C arriving while PyAV wrote the MP4 raised its KeyboardInterrupt inside PyAV's
    # file callback, which swallows it and fails the write: "cannot create render.mp4: Bad file
    # descriptor", exit 1. Here the console's handler runs inside that callback, as the signal did.
    import signal

    from segstream.connectors import overlay
    from segstream.pipeline import entry
    from segstream.pipeline.cli import main

    clip = encode_clip(tmp_path / "clip.mp4", frames=20, width=160, height=120)
    out = tmp_path / "out" / "render.mp4"
    out.parent.mkdir()
    out.write_bytes(b"an earlier render")
    with EmbeddedRedis(tmp_path / "redis") as server:
        Runtime([FileSource("cam", str(clip))], ColourSegmenter(), [RedisPublisher(connect_redis(server.url))],
                progress=None).run()
        monkeypatch.setattr(entry, "aborted_by", None)
        monkeypatch.setattr(entry, "_command", lambda: "render")
        opened, signals = overlay.open_output, [signal.SIGINT]

        class File:  # the MP4 file, whose first write the signal interrupts
            def __init__(self, *args, **kwargs):
                self._f = opened(*args, **kwargs)

            def __getattr__(self, name):
                return getattr(self._f, name)

            def write(self, data):
                if signals:
                    entry._interrupt(signals.pop(), None)  # what the signal's handler does there
                return self._f.write(data)

        monkeypatch.setattr(overlay, "open_output", File)
        code = main(["render", "segstream:cam:frames", "--video", str(clip), "--out", str(out), "--url", server.url])
    err = capfd.readouterr().err
    assert code == 130, err
    assert len(err.strip().splitlines()) == 1 and "aborted" in err, err  # no "Exception ignored" traceback
    assert out.read_bytes() == b"an earlier render"
    assert list(out.parent.iterdir()) == [out], "no partial video is left beside it"


def _non_square_clip(path, rotation: int = 0):
    """Six 160x240 frames of pixels twice as wide as tall (SAR 2:1), shown 320x240."""
    from fractions import Fraction

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 240, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        stream.codec_context.sample_aspect_ratio = Fraction(2, 1)
        if rotation:
            stream.set_display_rotation(rotation)
        for n in range(6):
            image = np.full((240, 160, 3), 40 * n, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def test_previews_batch_overlays_and_render_keep_the_source_s_non_square_pixels(tmp_path):
    # Found probing: a 320x480 video of 2:1 pixels came out of all three with square ones
    # (sample_aspect_ratio N/A), so it played squashed to half its width.
    from fractions import Fraction

    from segstream.pipeline.batch import run_batch
    from segstream.pipeline.cli import main
    from segstream.pipeline.config import BatchPipelineConfig, validate_config

    def aspect(path) -> Fraction | None:
        with av.open(str(path)) as container:
            return container.streams.video[0].sample_aspect_ratio

    clip, turned = _non_square_clip(tmp_path / "wide.mp4"), _non_square_clip(tmp_path / "turned.mp4", rotation=90)
    assert aspect(clip) == 2, "the clip must have non-square pixels for this test to mean anything"
    with EmbeddedRedis(tmp_path / "redis") as server:
        publisher = RedisPublisher(connect_redis(server.url))
        preview = PreviewSink(tmp_path / "preview", "mp4", OPACITY)
        Runtime([FileSource("wide", str(clip)), FileSource("turned", str(turned))], ColourSegmenter(),
                [publisher, preview], progress=None).run()
        assert main(["render", "segstream:wide:frames", "--video", str(clip), "--out", str(tmp_path / "render.mp4"),
                     "--url", server.url]) == 0
    cfg = validate_config({"batch": {"output": str(tmp_path / "batch"), "overlay": True}, "ops": {"http": None}},
                          schema=BatchPipelineConfig)
    run_batch(cfg, [str(clip)], adapter=ColourSegmenter(), progress=False)
    for made in (tmp_path / "preview" / "wide.mp4", tmp_path / "render.mp4", tmp_path / "batch" / "wide" / "overlay.mp4"):
        assert aspect(made) == 2, made
    assert aspect(tmp_path / "preview" / "turned.mp4") == Fraction(1, 2), "a pixel's width turned into its height"


def test_a_preview_is_scaled_down_to_max_width_keeping_its_aspect(tmp_path, big_clip):
    """A 4K probe's run fell from 15 to 1.3 fps with the preview on (each 4K picture encoded on
    the publishing thread): sinks.preview.max_width scales the pictures down before encoding."""
    for fmt in ("mp4", "png"):
        preview = PreviewSink(tmp_path / fmt, fmt, OPACITY, max_width=96)
        Runtime([FileSource("cam", str(big_clip))], ColourSegmenter(), [preview], progress=None).run()
        if fmt == "mp4":
            pictures = decode(tmp_path / fmt / "cam.mp4")
        else:
            pictures = [cv2.imread(str(p)) for p in sorted((tmp_path / fmt / "cam" / "latest").glob("*.png"))]
        assert len(pictures) == 20
        assert {p.shape[:2] for p in pictures} == {(72, 96)}  # of 320x240


def test_the_frames_after_a_renders_last_entry_are_counted_from_packets_whatever_their_timestamps(tmp_path):
    """render counts the video's frames after the run's last entry without decoding them; by
    timestamps it miscounted (found in review): an elementary stream has none, a TS joined to
    itself starts them again, B-frames in a TS put them out of the packets' order."""
    import subprocess

    from segstream.pipeline.render import _frames_after
    from tests.live_servers import FFMPEG

    ts = tmp_path / "a.ts"
    encode = [FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=25", "-frames:v", "30", "-c:v",
              "libx264", "-bf", "3", "-g", "12"]
    subprocess.run([*encode, str(ts)], check=True)
    subprocess.run([*encode, "-f", "h264", str(tmp_path / "raw.h264")], check=True)
    (tmp_path / "joined.ts").write_bytes(ts.read_bytes() * 2)
    for video in (ts, tmp_path / "raw.h264", tmp_path / "joined.ts"):
        frames = list(FileSource("v", str(video)).frames())
        for k in (0, 7, len(frames) - 1):
            assert _frames_after(video, frames[k]) == len(frames) - k - 1, (video.name, k)


def _shown_times(path) -> list[Fraction]:
    """The times (s) ffprobe shows the frames of ``path`` at, counted by decoding them: a frame an
    MP4's edit list leaves out is not among them."""
    import json
    import subprocess

    shown = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time",
                            "-of", "json", str(path)], capture_output=True, text=True, check=True).stdout
    return [Fraction(frame["pts_time"]) for frame in json.loads(shown)["frames"]]


@pytest.mark.parametrize("offset_s, first_s", [("95442", -0.3177), ("3.0123", 4.4123)])
def test_an_overlay_video_shows_every_frame_at_its_time_in_the_source(tmp_path, offset_s, first_s):
    # Found probing: an MPEG-TS whose clock wrapped (first frame at -2.3 s) lost the frames before
    # 0 in every MP4 written (an MP4 shows nothing before 0: 192 of 250 shown), the rest 2.3 ms
    # early; a first frame at 4.4123 s was shown at 4.412 s (the movie's clock ticked in milliseconds).
    import subprocess

    from segstream.connectors.overlay import OverlayVideo
    from tests.live_servers import FFMPEG

    ts = tmp_path / "clip.ts"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=25", "-frames:v", "12",
                    "-c:v", "libx264", "-bf", "2", "-preset", "ultrafast", "-output_ts_offset", offset_s, str(ts)],
                   check=True)
    source = _shown_times(ts)
    assert len(source) == 12 and round(float(source[0]), 4) == first_s, "the TS must start there to mean anything"
    video = OverlayVideo(tmp_path / "overlay.mp4")
    for frame in FileSource("ts", str(ts)).frames():
        video.write(frame.image, frame.pts, frame.time_base)
    video.close()
    shown = _shown_times(tmp_path / "overlay.mp4")
    moved = max(Fraction(0), -source[0])  # a start before 0 moves to 0; a later one is kept
    assert shown == [t + moved for t in source], "every frame shown, at its source time to the tick"
