"""docker-compose.yml, the Dockerfile and the README must match what the code reads.

Docker's engine is absent on CI machines, so the compose file is checked as data: its services,
variables, volumes and commands against ``Settings`` and the ``lth`` commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from client.cli import COMMANDS
from store.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_VARIABLES = {f"LTH_{name.upper()}" for name in Settings.model_fields}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


GPU_WORKERS = ("worker-gpu0", "worker-gpu1")
LTH_SERVICES = ("api", *GPU_WORKERS, "worker-cpu")


def test_compose_has_the_services_of_a_deployment() -> None:
    services = compose()["services"]
    assert {"redis", "postgres", "minio", "minio-init", *LTH_SERVICES} <= set(services)
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command
    assert "--maxmemory-policy noeviction" in redis_command
    for name, service in services.items():
        if name != "minio-init":  # a one-shot job: it creates the bucket and exits
            assert "healthcheck" in service, name
    init = services["minio-init"]
    assert init["command"] == ["mb", "--ignore-existing", "minio/lth"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in LTH_SERVICES:
        assert services[name]["depends_on"]["minio-init"] == {
            "condition": "service_completed_successfully"
        }, name


def test_every_variable_the_services_set_is_a_setting() -> None:
    services = compose()["services"]
    for name in LTH_SERVICES:
        environment = services[name]["environment"]
        assert set(environment) <= SETTINGS_VARIABLES, name
        assert "LTH_ARTIFACT_ROOT" not in environment, name  # runs live in the object store
        settings = Settings(**{k.removeprefix("LTH_").lower(): v for k, v in environment.items()})
        database = urlsplit(settings.database_url)
        postgres = services["postgres"]["environment"]
        assert database.hostname == "postgres"
        assert (database.username, database.password) == (
            postgres["POSTGRES_USER"],
            postgres["POSTGRES_PASSWORD"],
        )
        assert database.path == f"/{postgres['POSTGRES_DB']}"
        assert urlsplit(settings.broker_url or "").hostname == "redis"
        assert settings.auth == "enabled"
        assert settings.artifact_store_url == "s3://lth/artifacts"
        assert urlsplit(settings.s3_endpoint_url or "").hostname == "minio"
        assert settings.artifact_redirect == "stream"  # clients cannot resolve minio:9000
        minio = services["minio"]["environment"]
        assert settings.s3_access_key_id == minio["MINIO_ROOT_USER"]
        secret = settings.s3_secret_access_key
        assert secret is not None and secret.get_secret_value() == minio["MINIO_ROOT_PASSWORD"]


def test_workers_share_only_the_servers_with_the_api_and_get_one_gpu_each() -> None:
    data = compose()
    services = data["services"]
    api_volumes = {v.split(":")[0] for v in services["api"]["volumes"]}
    for name in LTH_SERVICES:
        service = services[name]
        command = service["command"]
        assert command[0] == "lth" and command[1] in COMMANDS, name
        if name == "api":
            continue
        health = service["healthcheck"]["test"]
        assert health[:3] == ["CMD", "lth", "worker-health"] and health[2] in COMMANDS, name
        named = {v.split(":")[0] for v in service["volumes"]} & set(data["volumes"])
        assert not named & api_volumes, name  # nothing shared with the API but the servers
        assert "./data:/data:ro" in service["volumes"], name
    assert services["api"]["command"][1:] == [
        "serve",
        "--no-worker",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]
    reserved = []
    for name in GPU_WORKERS:
        service = services[name]
        (gpu,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia", name
        reserved += gpu["device_ids"]
        # The container sees only its reserved GPU, as index 0.
        assert service["command"] == ["lth", "worker", "--gpu", "0"], name
        assert service["profiles"] == ["gpu"], name
    assert reserved == ["0", "1"]
    assert services["worker-cpu"]["command"] == ["lth", "worker"]
    assert services["worker-cpu"]["profiles"] == ["cpu"]


def test_dockerfile_installs_the_project_and_runs_the_api() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=" in dockerfile and "FROM ${BASE_IMAGE}" in dockerfile
    for package in ("api_schemas", "store", "reports", "service", "worker", "client"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert 'CMD ["lth", "serve", "--no-worker"' in dockerfile


def test_readme_documents_every_setting_with_its_default() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [v for v in sorted(SETTINGS_VARIABLES) if f"`{v}`" not in readme]
    assert not missing, f"README's configuration table lacks {missing}"
