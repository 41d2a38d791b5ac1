"""segstream batch over http(s) URLs of video files (presigned object-store URLs): a URL is known by
itself without its query, so a URL signed again is the same video; its server's ETag, length and
time tell a changed file; nothing secret is written or printed."""

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from segstream.connectors.redis_wire import event_from_wire
from segstream.connectors.remote_files import remote_version
from segstream.connectors.urls import url_identity, url_secrets
from segstream.pipeline.batch import MANIFEST, find_videos, plan, run_batch, summary_table
from segstream.pipeline.config import BatchPipelineConfig, validate_config
from tests.conftest import ColourSegmenter, encode_clip
from tests.object_store import SIGNATURE, ObjectStore
from tests.redis_servers import make_certificates

def config(out: Path, **extra) -> BatchPipelineConfig:
    return validate_config({"batch": {"output": str(out)}, "ops": {"http": None}, **extra}, schema=BatchPipelineConfig)


def written(root: Path) -> str:
    """Every file under ``root``, its path and its bytes, as one text to search."""
    return "\n".join(f"{p}\n{p.read_bytes().decode('latin-1')}" for p in sorted(root.rglob("*")) if p.is_file())


def test_a_url_is_known_without_its_query_fragment_and_user_info_and_named_by_its_file():
    signed = "https://Viewer:Pw_777@Bucket.S3.amazonaws.com/cams/day1/clip.mp4?X-Amz-Signature=abc#t=3"
    assert url_identity(signed) == "https://bucket.s3.amazonaws.com/cams/day1/clip.mp4"
    again = "https://bucket.s3.amazonaws.com/cams/day1/clip.mp4?X-Amz-Signature=other"
    found, _ = find_videos([signed, again, "https://bucket.s3.amazonaws.com/cams/day2/clip.mp4?sig=1"], [".mp4"])
    assert found == [signed, "https://bucket.s3.amazonaws.com/cams/day2/clip.mp4?sig=1"], "signed twice: one video"
    jobs = plan(found)
    assert [(job.id, job.key, job.name) for job in jobs] == [
        ("day1__clip", "https://bucket.s3.amazonaws.com/cams/day1/clip.mp4", "clip.mp4"),
        ("day2__clip", "https://bucket.s3.amazonaws.com/cams/day2/clip.mp4", "clip.mp4"),
    ]
    assert jobs[0].source == signed, "what is read is the whole URL"
    # found in review: URLs that differ in a parameter that is no signature are other objects (a
    # download endpoint's ?file=, S3's ?versionId=), and merged they lost a video without a word;
    # a default port, a signature's date and expiry name nothing else
    others = ["https://h/get?file=a.mp4", "https://h/get?file=b.mp4", "https://b/x.mp4?versionId=1&X-Amz-Date=1",
              "https://b:443/x.mp4?X-Amz-Date=2&versionId=1&X-Amz-Expires=60&X-Amz-Signature=s",
              "https://b/x.mp4?versionId=2", "https://b/%2525.mp4", "https://b/"]
    found, _ = find_videos(others, [".mp4"])
    assert [url_identity(url) for url in found] == [
        "https://h/get?file=a.mp4", "https://h/get?file=b.mp4", "https://b/x.mp4?versionId=1",
        "https://b/x.mp4?versionId=2", "https://b/%2525.mp4", "https://b/"]
    assert [job.name for job in plan(found)][-2:] == ["%25.mp4", "video"], "a path unquoted once; a bare host"
    # a CDN's signature of any name is no part of the object's name, and is secret (found in review)
    for signed in ("https://cdn/a.mp4?md5=AbCdEf123&expires=1700000000", "https://cdn/a.mp4?hdnts=st%3D1~hmac%3Dab",
                   "https://cdn/a.mp4?x-oss-date=20240101T000000Z&x-oss-signature=zz"):
        assert url_identity(signed) == "https://cdn/a.mp4" and url_secrets(signed)[0] == urlsplit(signed).query
    assert url_identity("https://api/download?objectKey=cams/b.mp4&X-Amz-Signature=s") == (
        "https://api/download?objectKey=cams/b.mp4")
    # a stream is still for segstream run
    with pytest.raises(Exception, match="segstream run"):
        find_videos(["rtsp://cam/live"], [".mp4"])


def test_presigned_urls_are_done_skipped_when_signed_again_redone_when_changed_and_a_404_fails(
        tmp_path, capfd, caplog):
    from tests.redis_servers import RedisProcess

    bucket = tmp_path / "bucket"
    (bucket / "cams").mkdir(parents=True)
    encode_clip(bucket / "cams" / "one.mp4", frames=5)
    encode_clip(bucket / "two.mp4", frames=6)
    out = tmp_path / "out"
    with ObjectStore(bucket) as store, RedisProcess(tmp_path / "redis") as redis_server:
        listing = tmp_path / "urls.txt"  # presigned URLs in a list file, and one on the command line
        listing.write_text(f"{store.url('cams/one.mp4')}\n{store.url('gone.mp4')}\n")
        cfg = config(out, sinks={"redis": {"url": redis_server.url}})
        outcomes, skipped, _ = run_batch(cfg, [str(listing), store.url("two.mp4")], adapter=ColourSegmenter(),
                                         progress=False)
        assert {(o.job.id, o.status, o.frames) for o in outcomes} == {("one", "done", 5), ("two", "done", 6),
                                                                      ("gone", "failed", 0)}
        gone = next(o for o in outcomes if o.job.id == "gone")
        assert "404" in gone.reason, gone.reason
        records = {json.loads(line)["id"]: json.loads(line) for line in (out / MANIFEST).read_text().splitlines()}
        assert records["one"]["video"] == f"{store.base}/cams/one.mp4" and records["one"]["etag"], records["one"]
        assert json.loads((out / "one" / "panoptic.json").read_text())["images"][0]["video"] == "one.mp4"
        assert gone.reason == (f"source gone: cannot open '{store.base}/gone.mp4': 404 Not Found — check the path "
                               "of the URL"), "named without its query"
        table = summary_table(outcomes, skipped, out / MANIFEST)
        client = redis_server.client()
        entries = [fields for key in client.keys("segstream:*") if client.type(key) == b"stream"
                   for _, fields in client.xrange(key)]
        failed = [event_from_wire(f) for _, f in client.xrange("segstream:gone:events")][-1]
        assert failed.data["state"] == "failed" and failed.data["reason"] == gone.reason, "the states went to Redis"

        # signed again tomorrow: the same videos, done (or failed) already
        cfg = config(out, sinks={"redis": {"url": redis_server.url}})
        resigned = [store.url(name, "NewSig2") for name in ("cams/one.mp4", "two.mp4", "gone.mp4")]
        again, skipped, _ = run_batch(cfg, resigned, adapter=ColourSegmenter(), progress=False)
        assert skipped == 3 and [(o.job.id, o.status) for o in again] == [("gone", "skipped")]

        encode_clip(bucket / "two.mp4", frames=8)  # the object replaced: another ETag and length
        resigned = [store.url(name, "NewSig3") for name in ("cams/one.mp4", "two.mp4")]
        changed, skipped, _ = run_batch(config(out), resigned, adapter=ColourSegmenter(), progress=False)
        assert [(o.job.id, o.status, o.frames) for o in changed] == [("two", "done", 8)] and skipped == 1
        assert any("changed since" in r.getMessage() and "(two)" in r.getMessage() for r in caplog.records)
        assert not any(request.startswith("/two.mp4") and "X-Amz" not in request for request in store.paths)
        secrets_seen = [table, written(out), *(str(f) for f in entries), *(r.getMessage() for r in caplog.records)]
    printed = capfd.readouterr()
    for secret in (SIGNATURE, "NewSig2", "NewSig3", "AKIDTEST", "X-Amz-"):  # not even the query's keys
        assert not any(secret in text for text in secrets_seen), secret
        assert secret not in printed.out and secret not in printed.err, secret


def test_a_server_that_says_no_version_leaves_a_done_video_done(tmp_path):
    encode_clip(tmp_path / "v.mp4", frames=2)
    with ObjectStore(tmp_path) as store:
        version = remote_version(store.url("v.mp4"))
        assert version.etag and version.size == (tmp_path / "v.mp4").stat().st_size and version.mtime_ns
        assert remote_version(store.url("v.mp4").partition("?")[0]).problem == "HTTP 403 Forbidden"
    job = plan([store.url("v.mp4")])[0]
    record = {"etag": version.etag, "size": version.size, "mtime_ns": version.mtime_ns}
    assert job.unchanged(record), "nothing said now (the server is away, the signature expired): unchanged"
    job.etag = '"another"'
    assert not job.unchanged(record)
    # found in review: an internal store's own CA made every answer unknown, so a changed video
    # was never done again (FFmpeg, which reads the video, verifies no certificate either)
    with ObjectStore(tmp_path, certificates=make_certificates(tmp_path / "tls")) as store:
        assert remote_version(store.url("v.mp4")).etag == version.etag
