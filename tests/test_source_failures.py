"""A source that cannot be opened fails alone: the run goes on with the others and says so."""

from __future__ import annotations

from segstream.connectors.files_sink import read_entries
from segstream.pipeline.cli import main


def _config(tmp_path, clip, required: bool) -> str:
    (tmp_path / "empty.mp4").write_bytes(b"")
    path = tmp_path / "run.yaml"
    path.write_text(
        "sources:\n"
        f"  - {{name: good, type: file, path: '{clip}'}}\n"
        f"  - {{name: empty, type: file, path: '{tmp_path / 'empty.mp4'}', required: {str(required).lower()}}}\n"
        "model: {device: cpu, precision: fp32}\n"
        "ops: {http: null}\n"
        f"sinks: {{redis: {{enabled: false}}, files: {{enabled: true, dir: '{tmp_path / 'out'}'}}}}\n"
    )
    return str(path)


def test_an_unopenable_file_among_others_fails_alone_and_the_run_exits_1(tmp_path, clip, capsys):
    # Found probing: a 0-byte file among five sources stopped the run before any frame.
    assert main(["run", _config(tmp_path, clip, required=False)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("segstream: error: source empty failed: cannot open ")
    assert len(list(read_entries(tmp_path / "out" / "good.jsonl"))) == 40, "the good file, whole"


def test_a_required_source_that_cannot_be_opened_stops_the_run_before_it_starts(tmp_path, clip, capsys):
    assert main(["run", _config(tmp_path, clip, required=True)]) == 1
    err = capsys.readouterr().err
    assert "cannot open" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "good.jsonl").exists()


def test_a_listen_port_another_run_holds_ends_the_run_with_one_line_naming_it(tmp_path, capsys):
    """Found probing: a second config on the same UDP port retried 'Address already in use' for good."""
    import socket

    from tests.redis_servers import free_port

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other_run:
        port = free_port(16500, 16599)
        other_run.bind(("0.0.0.0", port))
        path = tmp_path / "run.yaml"
        path.write_text(
            f"sources:\n  - {{name: cam, type: stream, url: 'udp://@:{port}', required: true, "
            "open_timeout_s: 1}\n"
            "model: {device: cpu, precision: fp32}\nops: {http: null}\n"
            f"sinks: {{redis: {{enabled: false}}, files: {{enabled: true, dir: '{tmp_path / 'out'}'}}}}\n"
        )
        assert main(["run", str(path)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(
        f"segstream: error: source cam failed: cannot open 'udp://@:{port}': port in use — UDP port {port} is held by "
        "another process")
