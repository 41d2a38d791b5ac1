"""Video files read over HTTP from a small object store of our own: HTTP/1.1 with keep-alive and
byte ranges, as S3 and its kind serve them, and the ways such a store fails (a 503 while it
throttles, a connection cut mid-file)."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from segstream.connectors.errors import SourceError
from segstream.connectors.file_source import FileSource
from tests.object_store import SIGNATURE, ObjectStore


def _encode_moov_at_end(path, frames: int = 40, fps: int = 10, gop: int = 10):
    """An H.264 MP4 as muxers write it by default: its index (moov) after the media (mdat), so a
    reader seeks to the end and back. Noise frames, ~190 kB: more than FFmpeg's first reads."""
    noise = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(gop)}
        for _ in range(frames):
            image = noise.integers(0, 256, (64, 96, 3), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = path.read_bytes()
    assert data.index(b"moov") > data.index(b"mdat")  # else the test would pass trivially
    return data


def _store(folder, data: bytes, **options) -> ObjectStore:
    """An object store holding ``data`` as ``bucket/clip.mp4`` (``store.url(CLIP)``)."""
    (folder / "bucket").mkdir(parents=True, exist_ok=True)
    (folder / CLIP).write_bytes(data)
    return ObjectStore(folder, **options)


CLIP = "bucket/clip.mp4"


@pytest.fixture(scope="module")
def moov_at_end(tmp_path_factory) -> bytes:
    return _encode_moov_at_end(tmp_path_factory.mktemp("store") / "clip.mp4")


def _read_all(url: str) -> tuple[list[int], FileSource]:
    source = FileSource("cloud", url, open_timeout_s=10, read_timeout_s=10)
    try:
        return [frame.index for frame in source.frames()], source
    finally:
        source.close()


def test_a_moov_at_end_mp4_from_a_keep_alive_range_server_delivers_every_frame(moov_at_end, tmp_path):
    with _store(tmp_path, moov_at_end) as store:
        indexes, source = _read_all(store.url(CLIP))
    assert indexes == list(range(40))
    assert source.frames_missing == 0 and source.damage == ""
    assert len(store.requests) >= 3  # it did seek to the index at the end and back


def test_an_object_store_throttling_with_503s_is_asked_again_until_it_serves_every_frame(moov_at_end, tmp_path):
    with _store(tmp_path, moov_at_end, failures=[(503, 1), (503, 1)]) as store:
        indexes, _ = _read_all(store.url(CLIP))
    assert indexes == list(range(40))
    assert store.ranges_asked[:3] == ["bytes=0-"] * 3  # the two 503s, then the data


@pytest.mark.parametrize("status, named", [(503, "503 Service Unavailable"), (500, "500 Internal Server Error")])
def test_a_server_error_that_outlasts_the_retries_is_named_by_its_status(moov_at_end, status, named, tmp_path):
    # a Retry-After beyond the retries' 4 s ends them at once (the test needs not wait through them)
    with _store(tmp_path, moov_at_end, failures=[(status, 30)] * 10) as store:
        with pytest.raises(SourceError) as raised:
            _read_all(store.url(CLIP))
    assert f"the server answered {named} (Retry-After: 30)" in str(raised.value)
    assert SIGNATURE not in str(raised.value)


def test_a_connection_cut_mid_file_is_resumed_from_where_it_stopped(moov_at_end, tmp_path):
    with _store(tmp_path, moov_at_end, cut=True) as store:
        indexes, source = _read_all(store.url(CLIP))
    assert indexes == list(range(40))
    assert source.frames_missing == 0
    assert f"bytes={len(moov_at_end) // 2}-" in store.ranges_asked  # resumed at the cut, not read again


def test_a_cut_that_cannot_be_resumed_says_the_connection_was_lost(moov_at_end, tmp_path):
    faststart = tmp_path / "faststart.mp4"  # its index first: the cut comes while reading frames
    with av.open(io.BytesIO(moov_at_end)) as original, av.open(str(faststart), "w",
                                                               options={"movflags": "faststart"}) as copy:
        stream = copy.add_stream_from_template(original.streams.video[0])
        for packet in original.demux(original.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                copy.mux(packet)
    # a server without byte ranges: the connection cannot be resumed
    for data, said in ((moov_at_end, "the connection may have been lost before its header or index"),
                       (faststart.read_bytes(), "the connection to the server was lost and could not be resumed, or the server")):
        with _store(tmp_path / "store", data, cut=True, ranges=False) as store:
            with pytest.raises(SourceError, match=said):
                _read_all(store.url(CLIP))


def test_a_refused_connection_is_said_as_refused_within_a_short_open_timeout():
    """Found in review: the retries of a lost connection retried a refused one for 4 s, so with
    an open timeout of 3 s a server that was down read as a timeout. They take at most half the
    open timeout."""
    import socket
    import time

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(SourceError, match="connection refused by"):
        list(FileSource("down", f"http://127.0.0.1:{port}/v.mp4", open_timeout_s=3.0).frames())
    assert time.monotonic() - started < 2.5


def test_a_certificate_not_trusted_under_tls_verify_is_said_as_such_and_a_given_ca_is_trusted(moov_at_end, tmp_path):
    """Found probing HLS cameras: with tls_verify: 1, a server whose certificate is not trusted
    failed with FFmpeg's bare "Input/output error" (and without it, nothing is verified:
    docs/OPERATIONS.md, "Security notes")."""
    from segstream.connectors.av_input import AVInput, InputRefused
    from tests.redis_servers import make_certificates

    certificates = make_certificates(tmp_path / "certs")
    with _store(tmp_path / "store", moov_at_end, certificates=certificates) as store:
        with pytest.raises(InputRefused, match=r"TLS handshake failed .* give its CA with options: \{ca_file"):
            AVInput(store.url(CLIP), options={"tls_verify": "1"}, timeout=(5, 5))
        trusted = AVInput(store.url(CLIP), options={"tls_verify": "1", "ca_file": str(certificates["ca"])},
                          timeout=(5, 5))
        try:
            assert next(iter(trusted.pictures())).image is not None
        finally:
            trusted.close()
