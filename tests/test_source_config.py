"""The YAML keys of the stream, camera and images sources, and the examples in configs/."""

from __future__ import annotations

from pathlib import Path

import pytest

from segstream.connectors.errors import ConfigError, SegstreamError
from segstream.pipeline.builders import build_sources
from segstream.pipeline.cli import main
from segstream.pipeline.config import load_config, validate_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _source(**keys):
    return validate_config({"sources": [{"name": "s", **keys}]}).sources[0]


def _error(**keys) -> str:
    with pytest.raises(ConfigError) as error:
        _source(**keys)
    return str(error.value)


@pytest.mark.parametrize("name", ["rtsp_camera", "usb_camera", "image_folder", "streams"])
def test_every_example_config_validates(name, monkeypatch, tmp_path):
    monkeypatch.setenv("CAM_PASSWORD", "x")
    monkeypatch.setenv("LOBBY_PASSWORD", "y")
    monkeypatch.setenv("FIELD_SRT_PASSPHRASE", "z" * 16)
    (tmp_path / "0001.png").write_bytes(b"")  # a folder with an image (validate lists, it does not decode)
    monkeypatch.setenv("SEGSTREAM_IMAGES", str(tmp_path))
    assert load_config(CONFIGS / f"{name}.yaml").sources


def test_live_sources_default_to_newest_frames_and_files_to_every_frame(clip, tmp_path):
    stream = _source(type="stream", url="rtsp://cam/live")
    camera = _source(type="camera")
    assert (stream.buffer_kind, stream.queue_size, stream.max_staleness_ms) == ("newest", 2, 500.0)
    assert (camera.buffer_kind, camera.device) == ("newest", 0)
    assert stream.max_reconnects is None and stream.transport == "tcp"
    assert _source(type="file", path=str(clip)).buffer_kind == "every_frame"
    realtime = _source(type="file", path=str(clip), realtime=True)  # a camera's stand-in: a stream's buffer
    assert (realtime.buffer_kind, realtime.queue_size, realtime.max_staleness_ms) == ("newest", 2, 500.0)
    kept = _source(type="file", path=str(clip), realtime=True, queue_size=5, max_staleness_ms=None)
    assert (kept.queue_size, kept.max_staleness_ms) == (5, None)
    whole = _source(type="file", path=str(clip))
    assert (whole.queue_size, whole.max_staleness_ms) == (8, None)
    (tmp_path / "0001.png").write_bytes(b"")
    assert _source(type="images", path=str(tmp_path)).buffer_kind == "every_frame"
    assert _source(type="synthetic").required is False


def test_a_stream_url_must_be_a_stream_and_its_password_is_never_echoed():
    error = _error(type="stream", url="ftp://admin:hunter22@cam/live")
    assert "is not a stream URL" in error and "hunter22" not in error and "ftp://***@cam/live" in error
    assert "names no host" in _error(type="stream", url="rtsp://")
    for url in ("ftp://admin:hun#ter22@cam/live", "ftp://admin:hun?ter22@cam/live"):
        error = _error(type="stream", url=url)
        assert "hun" not in error and "ter22" not in error and "ftp://***@cam/live" in error, error


def test_a_stream_url_with_an_impossible_port_or_no_host_to_connect_to_is_refused():
    # found probing camera interop: both passed validate, then retried for ever ("Invalid argument")
    error = _error(type="stream", url="rtsp://admin:Secret123@127.0.0.1:99999/cam")
    assert "has port '99999' — a port is a number from 1 to 65535" in error and "Secret123" not in error
    assert "has port 'abc'" in _error(type="stream", url="rtsp://cam:abc/live")
    error = _error(type="stream", url="rtsp://admin:Secret123@/cam")
    assert "names no host — give the camera's or server's address" in error and "Secret123" not in error
    for listener in ("udp://@:1234", "srt://:9000?mode=listener", "tcp://:9001?listen=1"):  # no host: they listen
        assert _source(type="stream", url=listener).url == listener


def test_a_udp_tcp_srt_or_rist_url_without_a_port_is_refused():
    # Found probing a drone link: udp://127.0.0.1 passed validate --connect ("listens on a port FFmpeg
    # picks"), then listened on a random port at each open, which no sender could reach: NEVER STREAMED
    error = _error(type="stream", url="udp://127.0.0.1")
    assert "names no port — udp:// has no default one" in error and "udp://@:5000" in error, error
    for url in ("srt://admin:Secret123@relay", "tcp://10.0.0.5", "rist://@"):
        error = _error(type="stream", url=url)
        assert "names no port" in error and "Secret123" not in error, error
    assert _source(type="stream", url="udp://@?localport=5000").url == "udp://@?localport=5000"
    from segstream.pipeline.preflight import listener_check

    assert "listens on UDP *:45219, the port is free" in listener_check("udp://@?localport=45219")  # validate --connect
    # found probing multicast: an interface's name, or an address not this machine's, passed --connect
    # and every open then failed "No such device"
    for localaddr in ("eth0", "192.0.2.77"):
        with pytest.raises(SegstreamError, match=rf"localaddr={localaddr} is not an address of this machine"):
            listener_check(f"udp://239.1.1.1:45219?localaddr={localaddr}")
    assert "the port is free" in listener_check("udp://239.1.1.1:45219?localaddr=127.0.0.1")
    assert _source(type="stream", url="rtsp://cam/live").url == "rtsp://cam/live"  # 554 by default


def test_a_password_with_a_slash_question_mark_or_hash_must_be_percent_encoded():
    # Found probing: rtsp://admin:C@m:P#ss/1@host/cam passed validate, then failed with
    # "Invalid argument" on every reconnect for ever
    for url in ("rtsp://admin:C@m:P#ss/1@127.0.0.1:554/cam", "rtsp://admin:a/b@cam/live", "rtsp://u:p?q@cam/x"):
        error = _error(type="stream", url=url)
        assert "percent-encode" in error and "%23" in error, error
        assert "P#ss" not in error and "a/b" not in error and "p?q" not in error
    for fine in ("rtsp://admin:C%40m%3AP%23ss%2F1@127.0.0.1:554/cam", "http://cdn/live.m3u8?sig=a@b",
                 "http://cam/a@b.m3u8", "rtsp://admin:p@ss@cam/live", "rtsp://u:p@cam:554/live@main",
                 "https://cdn.x.net:443/i/ch_1@12345/master.m3u8", "rtsp://[::1]:554/a@b"):
        from segstream.connectors.urls import unescaped_userinfo

        assert not unescaped_userinfo(fine), fine


def test_a_live_stream_given_as_a_file_points_to_type_stream():
    error = _error(type="file", path="rtsp://admin:hunter22@cam/live")
    assert "use type: stream with url:" in error and "hunter22" not in error


def test_transport_is_for_rtsp_only():
    assert "transport applies to rtsp://" in _error(type="stream", url="http://cam/live.ts", transport="udp")
    assert _source(type="stream", url="rtsps://cam/live", transport="udp").transport == "udp"
    # found probing a network's cameras: multicast and HTTP tunnelling were refused, though FFmpeg has them
    assert _source(type="stream", url="rtsp://cam/live", transport="udp_multicast").transport == "udp_multicast"
    assert _source(type="stream", url="rtsp://cam/live", transport="http").transport == "http"


def test_a_ca_file_that_is_not_there_is_refused(tmp_path):
    # found probing an RTSPS camera: validate said ok, then every open failed "Input/output error"
    error = _error(type="stream", url="rtsps://cam/live", options={"tls_verify": 1, "ca_file": "/nonexistent/ca.pem"})
    assert "options.ca_file '/nonexistent/ca.pem' is not a file" in error
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    assert _source(type="stream", url="rtsps://cam/live", options={"ca_file": str(tmp_path / "ca.pem")})


def test_camera_keys_are_checked():
    assert "not a device" in _error(type="camera", device="video0")
    assert "width and height together" in _error(type="camera", width=640)
    assert "pixel_format" in _error(type="camera", pixel_format="H264")


def test_an_images_folder_must_exist(tmp_path):
    assert "does not exist" in _error(type="images", path=str(tmp_path / "nope" / "*.png"))
    (tmp_path / "0001.png").write_bytes(b"")
    assert _source(type="images", path=str(tmp_path / "*.png")).path.endswith("*.png")


def test_an_images_source_takes_a_single_image_file(tmp_path):
    # Found probing: path: /x/f01.jpg was refused as "folder ... does not exist"
    import cv2
    import numpy as np

    assert cv2.imwrite(str(tmp_path / "f01.jpg"), np.full((30, 40, 3), 9, np.uint8))
    source = _source(type="images", path=str(tmp_path / "f01.jpg"))
    assert source.path == str(tmp_path / "f01.jpg")
    [images] = build_sources([source])
    assert [(f.index, f.file) for f in images.frames()] == [(0, str(tmp_path / "f01.jpg"))]
    missing = _error(type="images", path=str(tmp_path / "f02.jpg"))
    assert f"path '{tmp_path / 'f02.jpg'}' does not exist — give a folder of images, one image" in missing


def test_a_file_source_given_a_glob_points_to_images_and_batch_and_names_the_path_once(tmp_path):
    # Found probing: "file '/x/*.mp4' does not exist (/x/*.mp4) — fix the path"
    line = _error(type="file", path=str(tmp_path / "*.mp4"))
    assert "type: images" in line and "segstream batch" in line and "\n" not in line
    assert line.count(str(tmp_path)) == 1
    assert _error(type="file", path=str(tmp_path / "x.mp4")).count(str(tmp_path)) == 1


def test_an_unknown_source_type_lists_the_types():
    assert "use file, stream, camera, snapshot, images, synthetic, custom" in _error(type="kamera")
    assert "use type: camera (README" in _error(type="webcam")  # a name other tools give it: its type


def test_a_url_does_not_show_in_the_config_repr():
    assert "hunter22" not in repr(_source(type="stream", url="rtsp://admin:hunter22@cam/live"))


def test_stream_and_camera_sources_open_only_when_the_run_starts():
    # a camera that does not answer must not hold up building the pipeline (nor Ctrl-C)
    cfg = validate_config({"sources": [
        {"name": "a", "type": "stream", "url": "rtsp://127.0.0.1:9/none"},
        {"name": "b", "type": "camera", "device": "/dev/video97"},
    ]})
    sources = build_sources(cfg.sources)
    assert [type(s).__name__ for s in sources] == ["StreamSource", "CameraSource"]
    assert all(s.live and s.state == "connecting" for s in sources)


def test_wait_for_input_reaches_the_reconnect_policy_of_streams_and_cameras():
    cfg = validate_config({"sources": [
        {"name": "a", "type": "stream", "url": "rtsp://127.0.0.1:9/none", "wait_for_input": True},
        {"name": "b", "type": "camera", "device": "/dev/video97", "wait_for_input": True},
        {"name": "c", "type": "stream", "url": "rtsp://127.0.0.1:9/other"},
    ]})
    assert [s.policy.wait_for_input for s in build_sources(cfg.sources)] == [True, True, False]


def test_validate_reports_bad_stream_urls_redacted(tmp_path, capsys):
    config = tmp_path / "p.yaml"
    config.write_text("sources:\n  - {name: a, type: stream, url: 'gopher://me:hunter22@cam/x'}\n")
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert "sources[0].url" in err and "hunter22" not in err


def test_the_configs_reconnect_defaults_are_the_policys():
    # written twice (the schema for YAML users, the policy for Python users): they must not drift
    from segstream.connectors.live_source import ReconnectPolicy
    from segstream.pipeline.config import StreamSourceConfig

    config = StreamSourceConfig(name="cam", type="stream", url="rtsp://host/x")
    policy = ReconnectPolicy()
    assert (config.open_timeout_s, config.read_timeout_s, config.stall_timeout_s, config.max_reconnects,
            config.reconnect_delay_s, config.reconnect_max_delay_s) == (
        policy.open_timeout_s, policy.read_timeout_s, policy.stall_timeout_s, policy.max_reconnects,
        policy.delay_s, policy.max_delay_s)


def test_urls_are_shown_without_any_part_of_a_password():
    from segstream.connectors.redis_connection import redis_url_shown
    from segstream.connectors.urls import redact_url

    # a / before a # in the password used to end the user info early, and leak it whole
    assert redact_url("rtsp://admin:pa/ss#word@cam/live?token=t") == "rtsp://***@cam/live?token=***"
    assert redis_url_shown("redis://alice:pa/ss#word@host:6379/0") == "redis://alice:***@host:6379/0"
    assert redis_url_shown("redis://host:6379/0?password=pw&db=1") == "redis://host:6379/0?password=***&db=1"
    assert redact_url("rtsp://cam/live") == "rtsp://cam/live"


def test_shown_urls_hide_function_keys_cloudfront_policies_and_fragments_but_not_camera_parameters():
    from segstream.connectors.urls import redact_url

    # found probing: an Azure Functions key, a CloudFront signed URL's policy and a fragment were shown
    assert (redact_url("https://f.azurewebsites.net/api/clip?code=FUNCSECRET&name=a.mp4")
            == "https://f.azurewebsites.net/api/clip?code=***&name=a.mp4")
    assert (redact_url("https://d1.cloudfront.net/a.mp4?Policy=POLICYSECRET&Signature=SIG&Key-Pair-Id=K2ID")
            == "https://d1.cloudfront.net/a.mp4?Policy=***&Signature=***&Key-Pair-Id=***")
    assert redact_url("https://host/a.mp4#access_token=FRAGSECRET") == "https://host/a.mp4#***"
    assert redact_url("https://host/a.mp4?x=1#t") == "https://host/a.mp4?x=1#***"
    # a camera's own parameters stay readable
    assert (redact_url("rtsp://cam/stream?channel=1&subtype=0&codec=h264&profile=main")
            == "rtsp://cam/stream?channel=1&subtype=0&codec=h264&profile=main")


def test_the_status_line_interval_comes_from_ops(tmp_path):
    # Found probing: with JSON logs the status line was an INFO record every 2 s, 43k a day, fixed
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import ColourSegmenter

    cfg = validate_config({"sources": [{"name": "s", "type": "synthetic", "num_frames": 1}],
                           "model": {"preset": "synthetic_eomt_tiny_256"}, "ops": {"status_interval_s": 60}})
    assert Runtime.from_config(cfg, [], ColourSegmenter(), []).progress_interval_s == 60


def test_validate_says_an_images_source_finds_no_images_as_the_run_would(tmp_path):
    """Found probing: configs/image_folder.yaml passed validate, then run failed: 'no images in ...'."""
    (tmp_path / "notes.txt").write_text("x")
    assert "no images in" in _error(type="images", path=str(tmp_path))
    assert "no images in" in _error(type="images", path=str(tmp_path / "*.jpg"))


def test_an_images_sources_timestamps_and_watch_keys_are_checked_in_one_line_each(tmp_path):
    (tmp_path / "site_20261204_130501.jpg").write_bytes(b"")
    folder = str(tmp_path)
    for keys, expected in [
        ({"timestamps": "filename"}, "timestamps: Input should be 'fps', 'name' or 'mtime'"),
        ({"timestamps": "name", "timestamp_format": "%H-%M-%S"}, "gives no whole date"),
        ({"timestamps": "name", "timestamp_format": "%Y%m%d_%a"}, "has '%a', which is not read"),
        ({"timestamps": "name", "timestamp_zone": "Europe/Berln"}, "'Europe/Berln' is not a time zone"),
        ({"timestamp_zone": "UTC"}, "timestamp_zone is about the times file names write, and timestamps is fps"),
        ({"timestamps": "mtime", "timestamp_format": "%Y%m%d"}, "add timestamps: name, or remove timestamp_format"),
        ({"watch": True, "loop": True}, "remove loop (or watch)"),
        ({"poll_s": 5}, "poll_s is about following a folder — add watch: true"),
        ({"watch_from": "new"}, "watch_from is about following a folder"),
        ({"watch": True, "path": str(tmp_path / "site_20261204_130501.jpg")}, "is one image — give the folder"),
        ({"watch": True, "settle_s": -1}, "settle_s: Input should be greater than or equal to 0"),
    ]:
        line = _error(type="images", **{"path": folder, **keys})
        assert expected in line and "\n" not in line, (keys, line)
    timed = _source(type="images", path=folder, timestamps="name", timestamp_zone="+01:00",
                    timestamp_format="site_%Y%m%d_%H%M%S", watch=True, watch_from="new", poll_s=0.5, settle_s=0)
    assert (timed.timestamps, timed.watch_from, timed.poll_s, timed.settle_s) == ("name", "new", 0.5, 0)
    [built] = build_sources([timed])  # the builder hands every key on
    assert (built.timestamps, built.watch, built.watch_from, built.poll_s, built.settle_s) == ("name", True, "new", 0.5, 0)
    assert (built.name_times.format, built.name_times.unix("site_20261204_130501.jpg")) == ("site_%Y%m%d_%H%M%S",
                                                                                          1796389501 - 3600)
    assert _source(type="images", path=folder).timestamps == "fps"


def test_a_watched_folder_may_be_empty_but_not_of_another_naming(tmp_path):
    assert _source(type="images", path=str(tmp_path), watch=True).watch
    assert "watch: true follows a folder that images are still to come to" in _error(type="images", path=str(tmp_path))
    (tmp_path / "frame_0001.png").write_bytes(b"")
    line = _error(type="images", path=str(tmp_path), timestamps="name", watch=True)
    assert "has a date and time in its name (such as 'frame_0001.png')" in line and "timestamp_format" in line
    assert _source(type="images", path=str(tmp_path), timestamps="name", timestamp_format="frame_%s")


def test_the_rtsp_server_a_stream_is_read_from_for_its_reconnects():
    from segstream.connectors.urls import rtsp_address

    assert rtsp_address("rtsp://admin:pw@10.0.0.5/live") == ("10.0.0.5", 554)
    assert rtsp_address("rtsps://cam.example:8322/x") == ("cam.example", 8322)
    assert rtsp_address("RTSP://[::1]/live") == ("::1", 554)
    # others are not checked: FFmpeg serving HTTP, TCP or RTMP itself (-listen 1) takes one client
    for not_checked in ("rtsp://0.0.0.0:8554/x?rtsp_flags=listen", "rtmp://10.0.0.5/app/key",
                        "http://10.0.0.5/live.ts", "tcp://10.0.0.9:9000", "udp://@:5000", "srt://10.0.0.5:9000",
                        "/dev/video0", "clip.mp4", "rtsp://host:port/x"):
        assert rtsp_address(not_checked) is None, not_checked


def test_a_camera_s_name_is_looked_up_beside_its_reconnect_wait_and_again_after_a_failure():
    # Found in review: getaddrinfo takes no timeout (a down network held the wait), a failed lookup
    # was kept for 30 s, and a label too long for IDNA killed the lookup's thread with a traceback
    import time

    from segstream.connectors.live_source import LOOKING, Resolver

    def settled(resolver, host):
        deadline = time.monotonic() + 10
        while (found := resolver.get(host, 554)) is LOOKING and time.monotonic() < deadline:
            time.sleep(0.01)
        return found

    local = Resolver()
    assert local.get("127.0.0.1", 554) is LOOKING  # the first answer comes from its own thread
    assert settled(local, "127.0.0.1")[1] == ("127.0.0.1", 554)
    for unknown in ("camera.invalid", "x" * 70 + ".example"):
        resolver = Resolver()
        assert settled(resolver, unknown) is None
        first = resolver._looking
        first.join(5)
        resolver.get(unknown, 554)  # looked up again at once, not kept for 30 s
        assert resolver._looking is not first
