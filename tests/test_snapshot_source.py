"""Snapshot cameras (``type: snapshot``): a picture URL polled over HTTP(S), behind Basic or
Digest auth, against a real HTTP server on loopback whose pictures change, freeze, turn into a
login page, or go away and come back."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import logging
import os
import re
import socket
import ssl
import threading
import time

import cv2
import numpy as np
import pytest

from segstream.connectors.errors import ConfigError, SegstreamError, SourceError
from segstream.connectors.live_source import ReconnectPolicy
from segstream.connectors.snapshot_source import Login, SnapshotSource, auth_challenges
from segstream.connectors.threads import input_wait
from tests.live_servers import SilentServer, wait_for
from tests.test_stream_source import take

USER, PASSWORD = "viewer", "Sn4p-s3cret"
POLICY = ReconnectPolicy(delay_s=0.1, max_delay_s=0.3)


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client gone mid-answer (closed, or cut by the test)


class SnapshotCamera:
    """A camera's ``/snap.jpg`` on loopback (HTTP/1.1, kept-alive connections): a 160x120 JPEG
    of a red square that moves a step every ``change_every`` pictures served; ``auth`` None,
    ``basic`` or ``digest`` (a digest camera offers Digest, then Basic, and takes Digest alone);
    ``etag`` sends ETags and answers ``If-None-Match`` with 304; ``mode`` ``image``, ``html``
    (a login page, 200) or ``error`` (503); ``delay_s`` before each answer. ``stop()`` closes
    the port and every connection (the camera gone), ``start()`` opens the same port again.
    ``seen`` holds (status, Authorization header) of each request."""

    REALM = "segcam"

    def __init__(self, auth: str | None = None, etag: bool = False, change_every: int = 1, delay_s: float = 0.0,
                 tls: ssl.SSLContext | None = None):
        self.auth, self.etag, self.change_every, self.delay_s, self.tls = auth, etag, change_every, delay_s, tls
        self.mode = "image"
        self.nonce = "4f3a9c0d1e"  # a digest camera's; another one makes an answer to it stale
        self.password = PASSWORD
        self.seen: list[tuple[int, str | None]] = []
        self.pictures = 0
        self.port = 0
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.server: _QuietServer | None = None

    def url(self, login: tuple[str, str] | None = None, host: str = "127.0.0.1") -> str:
        userinfo = f"{login[0]}:{login[1]}@" if login else ""
        return f"{'https' if self.tls else 'http'}://{userinfo}{host}:{self.port}/snap.jpg"

    @property
    def statuses(self) -> list[int]:
        return [status for status, _ in self.seen]

    def start(self) -> SnapshotCamera:
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):
                pass

            def setup(self):
                super().setup()
                camera._connections.add(self.connection)

            def do_GET(self):  # noqa: N802 (http.server's name)
                camera._answer(self)

        self.server = _QuietServer(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        for connection in list(self._connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> SnapshotCamera:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def picture(self, number: int) -> bytes:
        image = np.full((120, 160, 3), 60, np.uint8)
        image[40:60, 10 + number * 7 % 120:30 + number * 7 % 120] = (0, 0, 230)  # BGR: red
        return cv2.imencode(".jpg", image)[1].tobytes()

    def _answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        given = handler.headers.get("Authorization")
        if self.auth is not None and not self._authorized(given, handler.path):
            self.seen.append((401, given))
            stale = ", stale=TRUE" if given and f'nonce="{self.nonce}"' not in given else ""
            challenges = [f'Digest realm="{self.REALM}", qop="auth", nonce="{self.nonce}", opaque="0pq"{stale}'] * (
                self.auth == "digest") + [f'Basic realm="{self.REALM}"']
            return self._send(handler, 401, b"login needed", "text/plain", challenges)
        if self.mode == "html":
            self.seen.append((200, given))
            page = b"<html><body><form action=/login>User <input name=u> Password <input name=p></form></body></html>"
            return self._send(handler, 200, page, "text/html; charset=utf-8")
        if self.mode == "error":
            self.seen.append((503, given))
            return self._send(handler, 503, b"busy", "text/plain")
        with self._lock:
            number, self.pictures = self.pictures // self.change_every, self.pictures + 1
        tag = f'"pic-{number}"'
        if self.etag and handler.headers.get("If-None-Match") == tag:
            self.seen.append((304, given))
            return self._send(handler, 304, b"", None, etag=tag)
        self.seen.append((200, given))
        self._send(handler, 200, self.picture(number), "image/jpeg", etag=tag if self.etag else None)

    def _authorized(self, given: str | None, path: str) -> bool:
        if given is None:
            return False
        if self.auth == "basic":
            return given == "Basic " + base64.b64encode(f"{USER}:{self.password}".encode()).decode()
        if not given.startswith("Digest "):
            return False
        fields = {k: a or b for k, a, b in re.findall(r'(\w+)=(?:"([^"]*)"|([^\s,]+))', given)}

        def md5(text: str) -> str:
            return hashlib.md5(text.encode()).hexdigest()

        key, request = md5(f"{USER}:{self.REALM}:{self.password}"), md5(f"GET:{fields.get('uri')}")
        expected = md5(f"{key}:{self.nonce}:{fields.get('nc')}:{fields.get('cnonce')}:auth:{request}")
        return (fields.get("username") == USER and fields.get("uri") == path and fields.get("nonce") == self.nonce
                and fields.get("opaque") == "0pq" and fields.get("response") == expected)

    @staticmethod
    def _send(handler, status: int, body: bytes, content_type: str | None, challenges: list[str] = (),
              etag: str | None = None) -> None:
        handler.send_response(status)
        if content_type:
            handler.send_header("Content-Type", content_type)
        for challenge in challenges:
            handler.send_header("WWW-Authenticate", challenge)
        if etag:
            handler.send_header("ETag", etag)
        if status != 304:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


class StateLog:
    def __init__(self):
        self.entries: list[tuple[str, str, dict]] = []
        self.times: list[float] = []  # Unix time of each

    def __call__(self, state, reason, data):
        self.entries.append((state, reason, data))
        self.times.append(time.time())

    @property
    def states(self) -> list[str]:
        return [state for state, _, _ in self.entries]

    def said(self) -> str:
        return "\n".join(f"{state} {reason} {data}" for state, reason, data in self.entries)


def test_pictures_are_polled_on_a_steady_schedule_timed_by_when_each_was_asked_for():
    with SnapshotCamera(auth="basic") as camera:
        source = SnapshotSource("gate", camera.url(login=(USER, PASSWORD)), interval_s=0.2, policy=POLICY)
        source.on_state = log = StateLog()
        frames = take(source, 6)
    assert [f.index for f in frames] == list(range(6)) and {f.epoch for f in frames} == {0}
    assert all(f.image.shape == (120, 160, 3) and f.sender_wall is None for f in frames)
    red, green, blue = (int(v) for v in frames[0].image[50, 20])
    assert red > 200 and green < 40 and blue < 40  # RGB: the camera's red square
    # pts: when each was asked for, on the grid from the first (no drift: a late poll does not
    # delay the next), in real seconds; never early, never a slot late (a busy CI machine may be late)
    pts = [f.pts_seconds for f in frames]
    late = sorted(t - 0.2 * k for k, t in enumerate(pts))
    assert pts[0] == 0.0 and late[0] >= 0 and late[-1] < 0.18 and late[len(late) // 2] < 0.05, pts
    arrived = [f.capture_wall for f in frames]
    assert 0.15 < (arrived[-1] - arrived[0]) / 5 < 0.25, arrived
    assert log.states[:2] == ["connecting", "streaming"] and log.states[-1] == "ended"
    streaming = log.entries[1][2]
    assert (streaming["width"], streaming["height"], streaming["codec"], streaming["interval_s"]) == (160, 120,
                                                                                                      "mjpeg", 0.2)
    assert source.info.codec == "mjpeg" and source.decode_errors == 0 and source.frames_skipped == 0
    # Basic sent once asked for, then with each poll: one request a picture after the first
    assert camera.statuses[0] == 401 and camera.seen[0][1] is None and set(camera.statuses[1:]) == {200}
    assert PASSWORD not in log.said() + source.shown and "***@" in source.shown


def test_digest_auth_is_answered_once_and_each_later_poll_is_one_request():
    with SnapshotCamera(auth="digest") as camera:
        source = SnapshotSource("gate", camera.url(), username=USER, password=PASSWORD, interval_s=0.1, policy=POLICY)
        source.on_state = log = StateLog()
        frames = source.frames()
        taken = [next(frames) for _ in range(3)]
        camera.nonce = "9b8e7d6c5a"  # the camera's nonce expires: the next answer to the old one is stale
        taken += [next(frames) for _ in range(2)]
        source.close()
        frames.close()
    assert camera.statuses[:7] == [401, 200, 200, 200, 401, 200, 200], camera.seen
    assert "reconnecting" not in log.states and {f.epoch for f in taken} == {0}  # a stale nonce is no outage
    given = [header for status, header in camera.seen[:7] if status == 200]
    assert all(header.startswith("Digest ") for header in given)  # preferred to the Basic also offered
    counts = [re.search(r"nc=(\w+)", header).group(1) for header in given]
    assert counts == ["00000001", "00000002", "00000003", "00000001", "00000002"]


def test_the_digest_response_matches_rfc_2617s_worked_example():
    (challenge,) = auth_challenges(['Digest realm="testrealm@host.com", qop="auth,auth-int", '
                                    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'])
    login = Login("Mufasa", "Circle Of Life", cnonce="0a4f113b")
    assert login.take([challenge]) is None
    header = login.authorization("GET", "/dir/index.html")
    assert 'response="6629fae49393a05397450978507c4ef1"' in header
    assert "qop=auth, nc=00000001" in header and 'opaque="5ccc069c403ebaf9f0171e9517f40e41"' in header
    # several challenges in one header, the first of each scheme kept in order
    parsed = auth_challenges(['Negotiate, Digest realm="a, b", nonce="n\\"1", Basic realm="c"'])
    assert parsed == [("negotiate", {}), ("digest", {"realm": "a, b", "nonce": 'n"1'}), ("basic", {"realm": "c"})]
    assert "Negotiate authentication, which segstream does not speak" in Login("u", "p").take([("negotiate", {})])


@pytest.mark.parametrize("etag", [False, True], ids=["same-bytes", "etag-304"])
def test_an_unchanged_picture_is_skipped_and_counted_not_segmented_again(etag):
    with SnapshotCamera(etag=etag, change_every=3) as camera:
        source = SnapshotSource("yard", camera.url(), interval_s=0.1, policy=POLICY)
        frames = take(source, 3)
    # each picture served three times: the two repeats of each are skipped, keeping their frame numbers
    assert [f.index for f in frames] == [0, 3, 6]
    assert source.frames_unchanged == source.frames_skipped == 4 and source.decode_errors == 0
    assert not any(np.array_equal(a.image, b.image) for a, b in zip(frames, frames[1:]))
    assert camera.statuses[:7].count(304) == (4 if etag else 0)  # with ETags, the camera sent no picture again


def test_refused_credentials_fail_the_source_in_one_line_before_the_first_frame():
    with SnapshotCamera(auth="digest") as camera:
        source = SnapshotSource("gate", camera.url(login=(USER, "wrong-pass")), interval_s=0.1, policy=POLICY)
        source.on_state = log = StateLog()
        started = time.monotonic()
        with pytest.raises(SourceError) as raised:
            list(source.frames())
        anonymous = SnapshotSource("gate", camera.url(), policy=POLICY)
        with pytest.raises(SourceError, match=r"asks for a login \(401 Unauthorized\) — give the user and password"):
            list(anonymous.frames())
    said = str(raised.value)
    assert time.monotonic() - started < 2 and camera.statuses[:2] == [401, 401]  # the challenge answered once, not retried
    assert "\n" not in said and "refused the login (401 Unauthorized)" in said and "before the first frame: not retried" in said
    assert log.states == ["connecting", "failed"] and log.entries[1][2]["status"] == 401
    assert "wrong-pass" not in said + log.said()


def test_a_login_refused_after_streaming_is_an_outage_tried_once_an_attempt_until_accepted_again():
    with SnapshotCamera(auth="digest") as camera:
        source = SnapshotSource("gate", camera.url(login=(USER, PASSWORD)), interval_s=0.1, policy=POLICY)
        source.on_state = log = StateLog()
        frames = source.frames()
        next(frames)
        camera.password = "changed-by-someone"  # a camera rebooting may refuse accounts until it is up
        threading.Timer(0.8, setattr, (camera, "password", PASSWORD)).start()
        after = next(frames)
        source.close()
        frames.close()
    refusals = [data for state, reason, data in log.entries
                if state == "reconnecting" and "refused the login (401 Unauthorized)" in reason]
    assert len(refusals) >= 2 and all(data["refused"] and data["status"] == 401 for data in refusals)
    assert after.epoch == 1 and "failed" not in log.states
    # one failed login an attempt: a refused answer to the camera's own nonce is not tried again at once
    assert camera.statuses[2:].count(401) == len(refusals), camera.statuses


def test_a_camera_down_mid_run_is_reconnected_in_a_new_epoch_its_down_time_counted(tmp_path, caplog):
    from segstream.connectors.files_sink import FilesSink, read_entries
    from segstream.pipeline.builders import build_sources
    from segstream.pipeline.config import validate_config
    from segstream.pipeline.runtime import Runtime
    from tests.conftest import ColourSegmenter
    from tests.live_servers import RecordingSink, run_in_thread

    caplog.set_level(logging.DEBUG, logger="segstream")
    camera = SnapshotCamera(auth="basic", change_every=2).start()
    try:
        cfg = validate_config({"sources": [{"name": "gate", "type": "snapshot", "url": camera.url(), "username": USER,
                                            "password": PASSWORD, "interval_s": 0.1, "reconnect_delay_s": 0.1,
                                            "reconnect_max_delay_s": 0.3}]})
        record, files = RecordingSink(), FilesSink(tmp_path / "out")
        runtime = Runtime(build_sources(cfg.sources), ColourSegmenter(), [record, files], publish_states=True,
                          progress=None)
        thread, outcome = run_in_thread(runtime)
        wait_for(lambda: len(record.of("gate")) >= 3, 10, "frames before the outage")
        camera.stop()
        down_at = time.monotonic()
        wait_for(lambda: "reconnecting" in record.states("gate"), 5, "the source to notice the outage")
        time.sleep(max(0.0, down_at + 1.0 - time.monotonic()))
        camera.start()
        wait_for(lambda: any(r.epoch == 1 for r in record.of("gate")), 10, "frames once the camera is back")
        runtime.stop()
        thread.join(10)
    finally:
        with contextlib.suppress(Exception):
            camera.stop()
    assert not thread.is_alive() and "error" not in outcome, outcome
    report = outcome["report"].sources["gate"]
    assert report.reconnects >= 1 and report.down_s - report.connect_s >= 0.8, report
    # each picture served twice: the repeats skipped, and said as such in the summary and the ended event
    assert report.unchanged == report.skipped >= 2 and f"skipped {report.skipped} (unchanged)" in outcome["report"].summary()
    ended = next(e for e in record.events if e.kind == "state" and e.data["state"] == "ended")
    assert ended.data["frames"]["unchanged"] == report.unchanged
    states = record.states("gate")
    assert states[:2] == ["connecting", "streaming"] and "streaming" in states[states.index("reconnecting"):]
    results = record.of("gate")
    before = max(r.pts_seconds for r in results if r.epoch == 0)
    after = min(r.pts_seconds for r in results if r.epoch == 1)
    assert after - before >= 1.0  # pts went on in real time over the outage
    written = [str(e) for e in read_entries(tmp_path / "out" / "gate.jsonl")]
    written += [str(e) for e in read_entries(tmp_path / "out" / "gate.events.jsonl")]
    assert PASSWORD not in caplog.text + "".join(written) + str([e.data for e in record.events])
    assert "connection refused by 'http://127.0.0.1:" in caplog.text


def test_a_camera_back_from_an_outage_is_polled_when_its_port_accepts_not_at_the_end_of_its_backoff():
    with SnapshotCamera() as camera:
        # a backoff of 1.5-3 s after the first failed poll
        source = SnapshotSource("gate", camera.url(), interval_s=0.1, policy=ReconnectPolicy(delay_s=3, max_delay_s=3))
        source.on_state = log = StateLog()
        frames = source.frames()
        next(frames)
        camera.stop()
        threading.Timer(0.4, camera.start).start()
        after = next(frames)
        source.close()
        frames.close()
    failed_at = next(at for at, (state, _, _) in zip(log.times, log.entries) if state == "reconnecting")
    assert after.epoch == 1 and after.capture_wall - failed_at < 1.3, after.capture_wall - failed_at


def test_an_answer_that_is_no_picture_is_a_decode_error_said_in_one_line():
    with SnapshotCamera() as camera:
        source = SnapshotSource("gate", camera.url(), interval_s=0.1, policy=POLICY)
        source.on_state = log = StateLog()
        frames = source.frames()
        first, second = next(frames), next(frames)
        camera.mode = "html"  # a camera whose session expired answers its login page
        def back() -> None:  # pictures again after two answers that were none
            wait_for(lambda: source.decode_errors >= 2, 10, "two login pages")
            camera.mode = "image"

        threading.Thread(target=back, daemon=True).start()
        third = next(frames)
        source.close()
        frames.close()
        camera.mode = "html"
        fresh = SnapshotSource("gate", camera.url(), interval_s=0.1, policy=POLICY)
        with pytest.raises(SourceError) as raised:
            list(fresh.frames())
    assert source.decode_errors >= 2 and third.index - second.index == source.decode_errors + 1
    assert (first.epoch, second.epoch, third.epoch) == (0, 0, 1)
    stalled = [reason for state, reason, _ in log.entries if state == "stalled"]
    assert len(stalled) == 1 and "answered a web page (text/html" in stalled[0] and "login" in stalled[0]
    assert log.states[log.states.index("stalled") + 1] == "streaming"
    # before any picture, the URL is wrong: one line, not retried
    assert fresh.decode_errors == 1 and "\n" not in str(raised.value)
    assert "a web page (text/html, " in str(raised.value) and "not retried" in str(raised.value)


def test_a_server_error_is_retried_with_backoff_and_max_reconnects_gives_up():
    with SnapshotCamera() as camera:
        camera.mode = "error"
        source = SnapshotSource("gate", camera.url(), interval_s=0.1,
                                policy=ReconnectPolicy(delay_s=0.05, max_delay_s=0.1, max_reconnects=2))
        source.on_state = log = StateLog()
        with pytest.raises(SourceError, match=r"answered 503 Service Unavailable; gave up after 2 reconnect attempts"):
            list(source.frames())
    assert log.states == ["connecting", "reconnecting", "reconnecting", "failed"]
    assert [data["attempt"] for state, _, data in log.entries if state == "reconnecting"] == [1, 2]
    assert log.entries[1][2]["status"] == 503 and camera.statuses == [503, 503, 503]


def test_close_ends_the_source_at_once_while_it_waits_for_a_slot_or_an_answer():
    with SnapshotCamera() as camera:
        source = SnapshotSource("gate", camera.url(), interval_s=30, policy=POLICY)
        got: list = []
        thread = threading.Thread(target=lambda: got.extend(source.frames()))
        thread.start()
        wait_for(lambda: got, 5, "the first picture")
        # waiting 30 s for its next poll is waiting on its input, not a stuck thread (/healthz)
        wait_for(lambda: input_wait(thread.ident), 2, "the wait to be marked")
        closed = time.monotonic()
        source.close()
        thread.join(5)
        assert not thread.is_alive() and time.monotonic() - closed < 0.5
    assert input_wait(thread.ident) is None
    with SilentServer() as silent:  # accepts, never answers: a request in flight
        source = SnapshotSource("gate", f"http://127.0.0.1:{silent.port}/snap.jpg", timeout_s=30, policy=POLICY)
        source.on_state = log = StateLog()
        thread = threading.Thread(target=lambda: list(source.frames()))
        thread.start()
        wait_for(lambda: silent.connections, 5, "the request")
        time.sleep(0.2)
        closed = time.monotonic()
        source.close()
        thread.join(5)
        assert not thread.is_alive() and time.monotonic() - closed < 0.5
    assert log.states == ["connecting", "ended"] and log.entries[-1][2] == {"never_streamed": True}


def test_a_camera_slower_than_the_interval_misses_polls_rather_than_bursting(caplog):
    with SnapshotCamera(delay_s=0.25) as camera:
        source = SnapshotSource("slow", camera.url(), interval_s=0.1, policy=POLICY)
        frames = take(source, 3)
    assert source.polls_missed >= 4
    gaps = [b.pts_seconds - a.pts_seconds for a, b in zip(frames, frames[1:])]
    assert all(gap >= 0.25 and abs(gap / 0.1 - round(gap / 0.1)) < 0.4 for gap in gaps), gaps  # still on the grid
    assert caplog.text.count("longer than interval_s (0.1 s)") == 1


def test_https_with_and_without_the_certificate_checked(tmp_path):
    from tests.redis_servers import make_certificates

    certs = make_certificates(tmp_path / "tls")
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(certs["server_cert"], certs["server_key"])
    with SnapshotCamera(tls=server_tls) as camera:
        unchecked = take(SnapshotSource("a", camera.url(), interval_s=0.1, policy=POLICY), 1)
        # by a host name (looked up on a thread of its own) that the certificate names
        checked = take(SnapshotSource("b", camera.url(host="localhost"), interval_s=0.1, policy=POLICY,
                                      tls_verify=True, ca_file=str(certs["ca"])), 1)
        with pytest.raises(SourceError, match=r"shows a certificate this machine does not trust .* ca_file"):
            list(SnapshotSource("c", camera.url(), policy=POLICY, tls_verify=True).frames())
    assert len(unchecked) == len(checked) == 1


def test_the_config_validates_a_snapshot_source_and_builds_it():
    from segstream.pipeline.builders import build_source
    from segstream.pipeline.config import validate_config

    cfg = validate_config({"sources": [{"name": "gate", "type": "snapshot", "url": "http://cam/cgi-bin/snapshot.cgi",
                                        "username": "admin", "password": "", "max_fps": 0.5}]})
    (source_cfg,) = cfg.sources
    assert (source_cfg.interval_s, source_cfg.timeout_s, source_cfg.buffer, source_cfg.queue_size,
            source_cfg.max_staleness_ms, source_cfg.password) == (1.0, 5.0, "newest", 2, None, None)
    source = build_source(source_cfg)
    assert isinstance(source, SnapshotSource) and source.live and source.interval_s == 2.0  # max_fps 0.5
    source.close()

    def refused(entry: dict, match: str) -> None:
        with pytest.raises(ConfigError, match=match):
            validate_config({"sources": [{"name": "gate", "type": "snapshot", **entry}]})

    refused({"url": "rtsp://admin:pw@cam/live"}, r"'rtsp://\*\*\*@cam/live' is not an http\(s\) URL .* type: stream")
    refused({"url": "http://admin:pw@cam/snap.jpg", "username": "admin"}, "give the login once")
    refused({"url": "http://cam/snap.jpg", "password": "pw12345"}, "password without username")
    refused({"url": "https://cam/snap.jpg", "ca_file": __file__}, "add tls_verify: true")
    refused({"url": "http:///snap.jpg"}, "names no host")
    with pytest.raises(ConfigError, match=r"two of source gate's frame intervals at its interval_s 10 \(20 s\)"):
        validate_config({"sources": [{"name": "gate", "type": "snapshot", "url": "http://cam/snap.jpg",
                                      "interval_s": 10}], "tracking": {"max_lost_s": 5}})


def test_validate_connect_fetches_one_snapshot_and_says_its_size_or_why_not():
    from segstream.pipeline.config import validate_config
    from segstream.pipeline.preflight import SourceDown, source_check

    def check(url: str, **keys) -> str:
        cfg = validate_config({"sources": [{"name": "gate", "type": "snapshot", "url": url, **keys}]})
        return source_check(cfg.sources[0])

    with SnapshotCamera(auth="digest") as camera:
        said = check(camera.url(), username=USER, password=PASSWORD, interval_s=2)
        with pytest.raises(SegstreamError, match=r"refused the login \(401 Unauthorized\)") as refused:
            check(camera.url(), username=USER, password="nope-nope")
        port = camera.port
    assert re.fullmatch(r"'http://127\.0\.0\.1:\d+/snap\.jpg' gave a snapshot, 160x120 JPEG \(\d+ bytes\), to be "
                        r"polled every 2 s", said), said
    assert not isinstance(refused.value, SourceDown)
    with pytest.raises(SourceDown, match=r"connection refused by .* `segstream run` starts all the same"):
        check(f"http://127.0.0.1:{port}/snap.jpg")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """The client talks to the camera directly (no proxy variables are read either way)."""
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    yield
    assert os.environ.get("http_proxy") is None
