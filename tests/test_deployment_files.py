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


def test_compose_has_the_services_of_a_deployment() -> None:
    services = compose()["services"]
    assert {"redis", "postgres", "api", "worker", "worker-cpu"} <= set(services)
    redis_command = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_command
    assert "--maxmemory-policy noeviction" in redis_command
    for name, service in services.items():
        if name not in ("worker", "worker-cpu"):
            assert "healthcheck" in service, name


def test_every_variable_the_services_set_is_a_setting() -> None:
    services = compose()["services"]
    for name in ("api", "worker", "worker-cpu"):
        environment = services[name]["environment"]
        assert set(environment) <= SETTINGS_VARIABLES, name
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


def test_api_and_workers_share_one_home_volume_and_run_lth_commands() -> None:
    data = compose()
    services = data["services"]
    mounts = {}
    for name in ("api", "worker", "worker-cpu"):
        service = services[name]
        command = service["command"]
        assert command[0] == "lth" and command[1] in COMMANDS, name
        home = service["environment"]["LTH_HOME"]
        volumes = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        mounts[name] = volumes[home]
        artifact_root = service["environment"]["LTH_ARTIFACT_ROOT"]
        assert artifact_root.startswith(home + "/")
    assert len(set(mounts.values())) == 1
    assert next(iter(mounts.values())) in data["volumes"]
    assert services["api"]["command"][1:] == [
        "serve",
        "--no-worker",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia"
    assert services["worker"]["command"] == ["lth", "worker", "--gpu", gpu["device_ids"][0]]


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
