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
