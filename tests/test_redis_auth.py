"""Publishing to a Redis that wants TLS (with client certificates), a password or an ACL user;
wrong credentials end the run with one clear line that never shows the password."""

from __future__ import annotations

import pytest

from segstream.connectors.errors import ConfigError, SinkError
from segstream.connectors.redis_connection import TlsFiles, connect_redis
from segstream.pipeline.cli import main, run_pipeline
from segstream.pipeline.config import load_config, validate_config
from tests.redis_servers import RedisProcess, free_port, make_certificates

PASSWORD = "s3cret-pw"
ALICE = "alice-pw"


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    certs = make_certificates(folder / "certs")
    args = [
        "--tls-cert-file", str(certs["server_cert"]), "--tls-key-file", str(certs["server_key"]),
        "--tls-ca-cert-file", str(certs["ca"]), "--tls-auth-clients", "yes", "--requirepass", PASSWORD,
        # An ACL user that may touch segstream's keys only.
        "--user", "alice", "on", f">{ALICE}", "~segstream:*", "+@all",
    ]
    with RedisProcess(folder / "data", args, tls=True) as server:
        yield server, certs


def write_config(tmp_path, server, certs, password=PASSWORD, username=None, ca=True, cert=True):
    tls = [f"ca_file: '{certs['ca']}'"] if ca else []
    if cert:
        tls += [f"cert_file: '{certs['client_cert']}'", f"key_file: '{certs['client_key']}'"]
    user = f", username: {username}" if username else ""
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "sources:\n  - {name: cam0, type: synthetic, width: 64, height: 48, num_frames: 6}\n"
        "model: {device: cpu, precision: fp32}\n"
        "ops: {http: null}\n"
        f"sinks:\n  redis: {{url: '{server.url}', password: '{password}'{user}, tls: {{{', '.join(tls)}}}}}\n"
    )
    return config


def tls_client(server, certs, **options):
    tls = TlsFiles(str(certs["ca"]), str(certs["client_cert"]), str(certs["client_key"]))
    return connect_redis(server.url, PASSWORD, tls=tls, **options)


def test_a_run_publishes_over_tls_with_a_password_and_a_client_certificate(tmp_path, tls_server):
    server, certs = tls_server
    client = tls_client(server, certs)
    client.delete("segstream:cam0:frames")
    report = run_pipeline(load_config(write_config(tmp_path, server, certs)), progress=False)
    assert report.published == 6
    assert client.xlen("segstream:cam0:frames") == 6
    assert server.url.startswith("rediss://")


def test_an_acl_user_publishes_with_its_own_password(tmp_path, tls_server):
    server, certs = tls_server
    client = tls_client(server, certs)
    client.delete("segstream:cam0:frames")
    config = write_config(tmp_path, server, certs, password=ALICE, username="alice")
    assert run_pipeline(load_config(config), progress=False).published == 6
    assert client.xlen("segstream:cam0:frames") == 6


def test_a_wrong_password_names_the_user_the_url_gives(tls_server):
    # Found probing: rediss://pub:wrong@... was reported as "the default user"
    server, certs = tls_server
    tls = TlsFiles(str(certs["ca"]), str(certs["client_cert"]), str(certs["client_key"]))
    url = server.url.replace("rediss://", "rediss://alice:not-the-password@")
    with pytest.raises(SinkError, match="refused the credentials of user 'alice'") as raised:
        connect_redis(url, tls=tls)
    assert "not-the-password" not in str(raised.value)


@pytest.mark.parametrize("username", [None, "alice"])
def test_a_wrong_password_is_one_clear_line(tmp_path, tls_server, capsys, username):
    server, certs = tls_server
    config = write_config(tmp_path, server, certs, password="not-the-password", username=username)
    assert main(["run", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    who = "user 'alice'" if username else "the default user"
    assert err[0].startswith(f"segstream: error: Redis at {server.url} refused the credentials of {who}")
    assert "not-the-password" not in err[0] and "REDIS_PASSWORD" in err[0]


def test_without_the_servers_ca_tls_fails_with_one_line_naming_the_tls_settings(tmp_path, tls_server, capsys):
    server, certs = tls_server
    assert main(["run", str(write_config(tmp_path, server, certs, ca=False))]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "certificate verify failed" in err[0] and "sinks.redis.tls" in err[0]


def test_without_a_client_certificate_a_server_that_asks_for_one_refuses(tmp_path, tls_server, capsys):
    server, certs = tls_server
    assert main(["run", str(write_config(tmp_path, server, certs, cert=False))]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "certificate" in err[0] and "sinks.redis.tls" in err[0]


def test_tls_files_need_a_rediss_url_and_a_key_with_the_certificate(tmp_path):
    (tmp_path / "ca.pem").write_text("x")
    source = [{"name": "a", "type": "synthetic"}]
    with pytest.raises(ConfigError, match="not rediss://"):
        validate_config({"sources": source, "sinks": {"redis": {"url": "redis://h:6379", "tls": {"ca_file": str(tmp_path / "ca.pem")}}}})
    with pytest.raises(ConfigError, match="cert_file and tls.key_file go together"):
        validate_config({"sources": source, "sinks": {"redis": {"url": "rediss://h:6380", "tls": {"cert_file": str(tmp_path / "ca.pem")}}}})
    with pytest.raises(ConfigError, match=r"sinks.redis.tls.ca_file: file 'nope.pem' does not exist"):
        validate_config({"sources": source, "sinks": {"redis": {"url": "rediss://h:6380", "tls": {"ca_file": "nope.pem"}}}})


def test_tail_reads_over_tls_as_an_acl_user_with_a_client_certificate(tmp_path, tls_server, capsys, monkeypatch):
    server, certs = tls_server
    tls_client(server, certs).delete("segstream:cam0:frames")
    assert run_pipeline(load_config(write_config(tmp_path, server, certs)), progress=False).published == 6
    monkeypatch.setenv("REDIS_PASSWORD", ALICE)
    capsys.readouterr()
    assert main(["tail", "segstream:cam0:frames", "--url", server.url, "--username", "alice", "--count", "3",
                 "--tls-ca", str(certs["ca"]), "--tls-cert", str(certs["client_cert"]),
                 "--tls-key", str(certs["client_key"])]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("cam0" in line for line in lines)


def test_tail_errors_name_its_own_options(tmp_path, tls_server, capsys, monkeypatch):
    server, certs = tls_server
    monkeypatch.setenv("REDIS_PASSWORD", "not-the-password")
    tls = ["--tls-ca", str(certs["ca"]), "--tls-cert", str(certs["client_cert"]), "--tls-key", str(certs["client_key"])]
    assert main(["tail", "segstream:cam0:frames", "--url", server.url, *tls]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "refused the credentials" in line and "--password ($REDIS_PASSWORD)" in line and "sinks.redis" not in line
    monkeypatch.setenv("REDIS_PASSWORD", PASSWORD)
    assert main(["tail", "segstream:cam0:frames", "--url", server.url, "--tls-ca", str(certs["ca"])]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "certificate" in line and "--tls-ca, --tls-cert, --tls-key" in line
    assert main(["tail", "segstream:cam0:frames", "--url", "redis://localhost:1", *tls]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == ("segstream: error: --tls-ca/--tls-cert/--tls-key are set but --url is not rediss:// — use "
                    "rediss://host:port (rediss+sentinel:// behind Sentinel)")


@pytest.mark.parametrize("url", [
    "redis://user:Secr/etPw@127.0.0.1:6379/0",  # urllib quotes the password's start as the port
    "redis://127.0.0.1:6379/0?password=SecretPw&db=x",  # an invalid db beside a password
])
def test_an_invalid_url_error_never_quotes_its_password(url):
    with pytest.raises(SinkError, match="invalid Redis URL") as raised:
        connect_redis(url, connect_timeout=0.5)
    message = str(raised.value)
    assert "Secr" not in message and "etPw" not in message and "SecretPw" not in message, message


def test_tail_of_a_stream_the_acl_user_may_not_read_is_one_line(tls_server, capsys, monkeypatch):
    """alice may read segstream:* only (found probing: NoPermissionError's traceback)."""
    server, certs = tls_server
    monkeypatch.setenv("REDIS_PASSWORD", ALICE)
    tls = ["--tls-ca", str(certs["ca"]), "--tls-cert", str(certs["client_cert"]), "--tls-key", str(certs["client_key"])]
    assert main(["tail", "other:cam0:frames", "--url", server.url, "--username", "alice", *tls]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "refused" in line and "no permissions" in line and "other:cam0:frames" in line


def test_an_acl_user_without_transactions_is_refused_at_start_naming_what_to_grant(tmp_path, tls_server, capsys):
    """Batches go out as MULTI/EXEC (found probing: the run died at its first batch, with no report)."""
    server, certs = tls_server
    tls_client(server, certs).acl_setuser("bob", enabled=True, passwords=["+bob-pw"], keys=["segstream:*"],
                                          commands=["+@stream", "+@connection"])
    config = write_config(tmp_path, server, certs, password="bob-pw", username="bob")
    assert main(["run", str(config)]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "no permissions to run the 'multi' command" in line
    assert "+xadd +multi +exec +xrevrange +xrange +xlen +set +@connection" in line
    # exactly what the README and the message grant is enough
    tls_client(server, certs).acl_setuser("carol", enabled=True, passwords=["+carol-pw"], keys=["segstream:*"],
                                          commands=["+xadd", "+multi", "+exec", "+xrevrange", "+xrange", "+xlen",
                                                    "+@connection"])
    config = write_config(tmp_path, server, certs, password="carol-pw", username="carol")
    assert run_pipeline(load_config(config), progress=False).published == 6
    # a user with the stream commands but not EXISTS: the end-of-run report reads on (found in review)
    tls_client(server, certs).acl_setuser("dave", enabled=True, passwords=["+dave-pw"], keys=["segstream:*"],
                                          commands=["+@stream", "+multi", "+exec", "+@connection"])
    config = write_config(tmp_path, server, certs, password="dave-pw", username="dave")
    assert run_pipeline(load_config(config), progress=False).published == 6


def test_a_server_that_is_not_redis_is_one_line_for_the_run_tail_and_the_client(capsys):
    # Found probing: an HTTP server at the Redis URL gave a redis-py traceback (InvalidResponse).
    import socket
    import threading

    from segstream.client import connect

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def answer_like_http():
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                connection.recv(1024)
                connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=answer_like_http, daemon=True).start()
    url = f"redis://127.0.0.1:{port}/0"
    try:
        with pytest.raises(SinkError, match=rf"the server at redis://127.0.0.1:{port} is not Redis: .*check the host and port"):
            connect_redis(url)
        with pytest.raises(SinkError, match="is not Redis"):
            connect(url)
        assert main(["tail", "segstream:cam:frames", "--url", url]) == 1
        err = capsys.readouterr().err
        assert "is not Redis" in err and "Traceback" not in err
    finally:
        listener.close()


@pytest.mark.parametrize("query", ["ssl_cert_reqs=none", "ssl_check_hostname=false"])
def test_a_url_query_cannot_turn_tls_checks_off_behind_the_tls_settings(tmp_path, tls_server, capsys, query):
    """Found probing: `rediss://host/0?ssl_cert_reqs=none` published to a server whose certificate
    fails the check, silently; `?ssl_check_hostname=false` overrode tls.check_hostname."""
    server, certs = tls_server
    config = write_config(tmp_path, server, certs, ca=False)  # without the CA the certificate fails the check
    config.write_text(config.read_text().replace(server.url, f"{server.url}/0?{query}"))
    assert main(["validate", str(config)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert f"sets TLS in its query ({query.split('=')[0]}), which would override the tls: settings" in line
    with pytest.raises(SinkError, match="would override the tls: settings"):
        connect_redis(f"{server.url}/0?{query}", PASSWORD)


def test_a_server_wanting_a_password_when_none_is_given_says_to_set_one(tls_server):
    """Found probing: with no password at all, the line said Redis 'refused the credentials of the
    default user'."""
    server, certs = tls_server
    with pytest.raises(SinkError) as error:
        connect_redis(server.url, None, tls=TlsFiles(str(certs["ca"]), str(certs["client_cert"]),
                                                      str(certs["client_key"])))
    assert "wants a password and none was given" in str(error.value) and "sinks.redis.password" in str(error.value)


def test_tls_against_a_plain_port_and_plain_against_a_tls_port_name_the_likely_mix_up(tls_server, tmp_path):
    """Found probing: redis:// to a TLS port said 'Connection reset by peer', rediss:// to a plain
    one 'Timeout connecting to server', neither a word of TLS."""
    server, _ = tls_server
    with pytest.raises(SinkError, match="if the server wants TLS, use rediss://"):
        connect_redis(server.url.replace("rediss://", "redis://"), PASSWORD, connect_timeout=2.0)
    with RedisProcess(tmp_path / "plain") as plain:
        with pytest.raises(SinkError, match="if it has none, use redis://"):
            connect_redis(plain.url.replace("redis://", "rediss://"), None, connect_timeout=1.0, socket_timeout=1.0)


def test_a_url_password_and_another_password_setting_are_refused_in_one_line(tmp_path):
    # redis-py logs in with the URL's, and the setting (a rotated secret, say) went unused in silence
    with RedisProcess(tmp_path / "redis", ["--requirepass", "in-url"], port=free_port(16800, 16899)) as protected:
        url = f"redis://:in-url@127.0.0.1:{protected.port}/0"
        with pytest.raises(SinkError) as refused:
            connect_redis(url, "from-the-setting")
        assert str(refused.value) == (f"the Redis URL redis://:***@127.0.0.1:{protected.port}/0 has a password and "
                                      "sinks.redis.password (REDIS_PASSWORD) another one, and the URL's would be "
                                      "used — keep the password in one of them")
        assert "from-the-setting" not in str(refused.value)
        connect_redis(url, "in-url").close()  # the same password twice is no conflict
