"""docker-compose.yml and the Dockerfile say what deployment needs (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def services():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def test_redis_service_runs_without_append_only_file_and_reports_health(services):
    redis = services["redis"]

    assert redis["image"] == "redis:7-alpine"
    assert "--appendonly no" in " ".join(redis["command"])
    assert any(str(port).endswith("6379:6379") for port in redis["ports"])
    assert "redis-cli" in redis["healthcheck"]["test"][1] and "ping" in redis["healthcheck"]["test"][1]


def test_segstream_service_runs_the_mounted_config_on_one_gpu(services):
    app = services["segstream"]

    assert app["build"] == "."
    assert app["command"] == ["run", "/config/pipeline.yaml"]
    assert {"SEGSTREAM_REDIS_URL", "REDIS_PASSWORD"} <= set(app["environment"])
    assert app["environment"]["REDIS_PASSWORD"] == "${REDIS_PASSWORD:-}"
    assert set(app["volumes"]) == {
        "./configs:/config:ro", "./models/weights:/weights:ro", "./samples:/samples:ro"
    }
    (device,) = app["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}


def test_segstream_waits_for_healthy_redis_and_drains_on_stop(services):
    app = services["segstream"]

    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    assert app["restart"] == "unless-stopped"
    assert int(app["stop_grace_period"].rstrip("s")) >= 30


def test_segstream_healthcheck_is_valid_python(services):
    check = services["segstream"]["healthcheck"]

    assert check["test"][:3] == ["CMD", "python", "-c"]
    compile(check["test"][3], "healthcheck", "exec")


def test_dockerfile_installs_with_constraints_and_runs_segstream_unprivileged():
    dockerfile = (ROOT / "Dockerfile").read_text()

    assert dockerfile.count("FROM ") == 1 and "FROM python:3.11-slim" in dockerfile
    assert re.search(r"pip install --constraint constraints\.txt \.$", dockerfile, re.M)
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["segstream"]' in dockerfile
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which is not in the repository"


def test_the_config_compose_runs_is_valid_with_the_mounts_compose_makes(services, monkeypatch, tmp_path):
    from segstream.pipeline.config import load_config

    app = services["segstream"]
    mounts = {container: host for host, container, _ in (volume.split(":") for volume in app["volumes"])}
    config_host = ROOT / mounts["/config"].removeprefix("./") / "pipeline.yaml"
    assert config_host.is_file(), "compose runs /config/pipeline.yaml, which configs/ must hold"
    monkeypatch.setenv("SEGSTREAM_REDIS_URL", app["environment"]["SEGSTREAM_REDIS_URL"])
    # Inside the container /samples is ./samples; map it back to check the clip is there.
    cfg = load_config(config_host, ["sources.0.path=" + str(ROOT / "samples" / "demo.mp4")])
    assert cfg.sinks.redis.url == "redis://redis:6379/0"
    assert cfg.sources[0].realtime and cfg.sources[0].loop


def test_dockerfile_copies_what_the_package_build_reads():
    text = (ROOT / "Dockerfile").read_text()
    assert "COPY README.md" in text  # pyproject's readme: the build fails without it
