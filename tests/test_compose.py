"""docker-compose.yml and the Dockerfile say what deployment needs (no Docker engine runs here)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# compose stops (`up` and `config` alike) with this message when REDIS_PASSWORD is unset or empty
REQUIRED_PASSWORD = "${REDIS_PASSWORD:?set REDIS_PASSWORD in .env or the environment}"


@pytest.fixture(scope="module")
def services():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def test_redis_service_runs_without_append_only_file_and_reports_health(services):
    redis = services["redis"]

    assert redis["image"] == "redis:7.4-alpine"  # pinned: a floating tag changes under a site
    assert "--appendonly no" in " ".join(redis["command"])
    assert any(str(port).endswith("6379:6379") for port in redis["ports"])
    assert "redis-cli" in redis["healthcheck"]["test"][1] and "ping" in redis["healthcheck"]["test"][1]


def test_redis_service_writes_no_snapshot_of_the_streams_to_disk(services):
    # found probing: --appendonly no left Redis's default save points, whose RDB files held entries
    # max_age_s had removed from the streams
    import shlex

    shell, flag, script = services["redis"]["command"]
    arguments = shlex.split(script)
    assert (shell, flag, arguments[:2]) == ("sh", "-c", ["exec", "redis-server"])
    assert arguments[arguments.index("--save") + 1] == ""


def test_segstream_service_runs_the_mounted_config_on_one_gpu(services):
    app = services["segstream"]

    assert app["build"] == "."
    assert app["command"] == ["run", "/config/pipeline.yaml"]
    assert {"SEGSTREAM_REDIS_URL", "REDIS_PASSWORD"} <= set(app["environment"])
    assert app["environment"]["REDIS_PASSWORD"] == REQUIRED_PASSWORD
    assert set(app["volumes"]) == {
        "./configs:/config:ro", "./models/weights:/weights:ro", "./samples:/samples:ro", "runs:/opt/segstream/runs"
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


def test_a_service_of_the_image_that_serves_no_healthz_does_not_inherit_its_healthcheck(services):
    # found probing as a platform engineer: the consumer, the same image running a reader, would
    # have been "unhealthy" after 120 s (the image's HEALTHCHECK asks the pipeline's /healthz)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "HEALTHCHECK" in dockerfile
    for name, service in services.items():
        if service.get("image") == "segstream:latest" and "entrypoint" in service:
            assert service.get("healthcheck") == {"disable": True}, name
    # and tini, not PID 1 (a pod sharing its process namespace), reaps quietly
    assert re.search(r"^\s+TINI_SUBREAPER=1$", dockerfile, re.M)


def test_dockerfile_installs_with_constraints_and_runs_segstream_unprivileged():
    dockerfile = (ROOT / "Dockerfile").read_text()

    assert dockerfile.count("FROM ") == 1 and "FROM python:3.11-slim-bookworm" in dockerfile
    assert re.search(r"pip install --constraint constraints\.txt \.$", dockerfile, re.M)
    users = re.findall(r"^USER (\S+)", dockerfile, re.M)
    # found probing: Kubernetes' runAsNonRoot refuses an image whose user is a name (it cannot check it)
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), users
    assert 'ENTRYPOINT ["/usr/bin/tini", "--", "segstream"]' in dockerfile
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which is not in the repository"


def test_the_config_compose_runs_is_valid_with_the_mounts_compose_makes(services, monkeypatch, tmp_path):
    from segstream.pipeline.config import load_config

    app = services["segstream"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in app["volumes"]}
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
    import tomllib

    # every folder pyproject maps into the package (found probing: configs/ and samples/ were not there)
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    for folder in folders:  # copied itself, or inside a folder that is (segstream/client in segstream)
        parents = [str(p) for p in (Path(folder), *Path(folder).parents) if str(p) != "."]
        assert any(f"COPY {p} " in text or f"COPY {p}/" in text for p in parents), folder


def test_the_build_context_leaves_out_the_venv_and_git():
    """The README's commands make a .venv of several GB in the repository (found probing)."""
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git"} <= set(ignored)


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_follows_the_compose_specification(compose):
    import jsonschema
    from importlib import resources

    # the Compose Specification's JSON schema, as check-jsonschema ships it
    schema_file = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    # the schema is not a formality: it refuses a misspelt key
    broken = {**compose, "services": {**compose["services"], "redis": {**compose["services"]["redis"], "helthcheck": {}}}}
    assert list(validator.iter_errors(broken))


def _ops_port() -> int:
    cfg = yaml.safe_load((ROOT / "configs" / "pipeline.yaml").read_text())
    host, port = cfg["ops"]["http"].rsplit(":", 1)
    assert host == "0.0.0.0", "Prometheus in another container must reach the metrics port"
    return int(port)


def test_segstream_health_checks_probe_healthz_on_the_metrics_port(services):
    port = _ops_port()
    app = services["segstream"]
    assert f"127.0.0.1:{port}:{port}" in app["ports"]
    assert f"http://127.0.0.1:{port}/healthz" in app["healthcheck"]["test"][3]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"EXPOSE {port}" in dockerfile
    assert re.search(rf"SEGSTREAM_HEALTH_URL=http://127\.0\.0\.1:{port}/healthz", dockerfile)
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[\"python\", \"-c\", .*SEGSTREAM_HEALTH_URL", dockerfile, re.M)
    assert app["environment"]["SEGSTREAM_LOG_FORMAT"] == "json"


def test_the_image_runs_unprivileged_under_an_init_that_forwards_sigterm():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^STOPSIGNAL SIGTERM$", dockerfile, re.M)
    assert "apt-get install -y --no-install-recommends tini" in dockerfile
    assert dockerfile.index("USER 10001") < dockerfile.index("ENTRYPOINT")
    # found probing: OpenShift runs the image as a random user of group 0, who could not write runs/
    assert "chmod g=u /opt/segstream/runs" in dockerfile


def test_prometheus_scrapes_segstream_behind_a_profile(services):
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    host_file, container_file, mode = prometheus["volumes"][0].split(":")
    assert container_file == "/etc/prometheus/prometheus.yml" and mode == "ro"
    scrape = yaml.safe_load((ROOT / host_file).read_text())
    [job] = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"segstream:{_ops_port()}"]
    assert "profiles" not in services["segstream"] and "profiles" not in services["redis"]


def test_prometheus_loads_the_alert_rules_compose_mounts(services):
    prometheus = services["prometheus"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in prometheus["volumes"]}
    scrape = yaml.safe_load((ROOT / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    assert scrape["rule_files"]
    for rule_file in scrape["rule_files"]:
        in_container = str(PurePosixPath("/etc/prometheus") / rule_file)  # relative to prometheus.yml
        assert in_container in mounts, f"prometheus.yml loads {rule_file}, which compose does not mount"
        assert mounts[in_container] == f"./deploy/{rule_file}", "the same file beside it outside the container"
        rules = yaml.safe_load((ROOT / mounts[in_container]).read_text())
        assert rules["groups"] and all(group["rules"] for group in rules["groups"])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) is not installed")
def test_prometheus_config_and_its_alert_rules_are_valid():
    checked = subprocess.run(["promtool", "check", "config", str(ROOT / "deploy" / "prometheus.yml")],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # found by release QA: the died-with-backlog alert fired on a clean restart (a backlog of 1 is normal)
    tested = subprocess.run(["promtool", "test", "rules", str(ROOT / "deploy" / "prometheus-rules.test.yml")],
                            capture_output=True, text=True, timeout=60)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_consumer_runs_the_example_with_redis_from_the_environment(services):
    consumer = services["consumer"]
    assert consumer["image"] == services["segstream"]["image"] and consumer["build"] == "."
    assert consumer["entrypoint"] == ["python", "examples/newest_only.py"]
    assert "./examples:/opt/segstream/examples:ro" in consumer["volumes"]
    assert consumer["working_dir"] == "/opt/segstream"
    assert consumer["environment"]["SEGSTREAM_REDIS_URL"] == "redis://redis:6379/0"
    assert consumer["depends_on"]["redis"]["condition"] == "service_healthy"


def test_relative_outputs_land_in_a_volume_the_image_s_user_may_write(compose):
    # Found probing: sinks.files.dir runs/out resolved to /opt/segstream/runs/out, owned by root
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "chown 10001:0 /opt/segstream/runs" in dockerfile and "VOLUME /opt/segstream/runs" in dockerfile
    assert re.search(r"WORKDIR /opt/segstream\n", dockerfile)
    assert "runs:/opt/segstream/runs" in compose["services"]["segstream"]["volumes"]
    assert "runs" in compose["volumes"]  # named: docker copies the image folder's owner into it


def test_no_password_on_a_command_line(compose):
    # Found probing: the healthcheck's `redis-cli -a <password>` showed it in ps every 5 s
    for name, service in compose["services"].items():
        check = " ".join(map(str, (service.get("healthcheck") or {}).get("test", [])))
        assert " -a " not in check and "--pass" not in check, name
    assert "REDISCLI_AUTH" in " ".join(compose["services"]["redis"]["healthcheck"]["test"])


def test_secrets_come_from_the_environment(compose):
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key.upper() for word in ("PASSWORD", "SECRET", "TOKEN")):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{name}.{key} must come from the environment"


def test_redis_always_requires_a_password(compose):
    """Found by a security review: with REDIS_PASSWORD unset compose ran Redis without one
    (${REDIS_PASSWORD:-} and a --requirepass only when set)."""
    redis = compose["services"]["redis"]
    command = redis["command"][-1]
    assert '--requirepass "$$REDIS_PASSWORD"' in command and ":+" not in command
    for name in ("redis", "segstream", "consumer"):
        assert compose["services"][name]["environment"]["REDIS_PASSWORD"] == REQUIRED_PASSWORD, name
    assert "${REDIS_PASSWORD:-" not in (ROOT / "docker-compose.yml").read_text().split("services:", 1)[1]
    assert redis["user"] == "redis"  # the image's entrypoint drops root only for `redis-server ...` commands


def test_the_env_file_stays_out_of_git_and_the_image():
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


@pytest.mark.parametrize("name", ["segstream", "consumer"])
def test_the_segstream_containers_run_read_only_without_capabilities(compose, name):
    service = compose["services"][name]
    assert service["read_only"] is True
    assert service["cap_drop"] == ["ALL"] and "cap_add" not in service
    assert "no-new-privileges:true" in service["security_opt"]
    assert "privileged" not in service


@pytest.mark.parametrize("name", ["redis", "segstream", "consumer"])
def test_the_services_that_hold_a_password_dump_no_core(compose, name):
    # found probing: a core dump of the pipeline held the camera and Redis passwords in clear
    assert "REDIS_PASSWORD" in compose["services"][name]["environment"]
    assert compose["services"][name]["ulimits"]["core"] == 0


def test_the_read_only_pipeline_writes_only_to_its_volume_and_memory(compose):
    app = compose["services"]["segstream"]
    writable = [v for v in app["volumes"] if not v.endswith(":ro")]
    assert writable == ["runs:/opt/segstream/runs"]  # relative outputs (sinks.files.dir: runs/out)
    assert set(app["tmpfs"]) == {"/tmp", "/home/segstream"}  # torch's compile cache, the user's caches
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "useradd --system --create-home --uid 10001 --gid 0 segstream" in dockerfile  # its home: /home/segstream
