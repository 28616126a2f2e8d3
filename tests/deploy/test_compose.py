"""docker-compose.yml, as compose resolves it with .env.example, and .env.example itself."""

from __future__ import annotations

import re
import tomllib
from typing import Any
from urllib.parse import urlsplit

from packaging.requirements import Requirement
from packaging.version import Version


def mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The service's mounts by target: {'type': 'volume'|'bind', 'source', 'read_only'}.

    Accepts both forms compose prints: docker-compose 1.x short strings ("src:dst:ro") and the
    `docker compose` v2 long syntax (mappings).
    """
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *mode = volume.split(":")
            kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
            read_only = "ro" in ",".join(mode).split(",")
        else:
            source, target, kind = volume.get("source"), volume["target"], volume["type"]
            read_only = bool(volume.get("read_only"))
        found[target] = {"type": kind, "source": source, "read_only": read_only}
    return found


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    return {name: spec["condition"] for name, spec in service.get("depends_on", {}).items()}


def healthcheck_test(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


def tensorflow_pin(repo) -> Requirement:
    with (repo / "pyproject.toml").open("rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    return next(r for r in map(Requirement, dependencies) if r.name == "tensorflow")


def test_compose_config(compose_config, env_example, repo):
    services = compose_config["services"]
    assert {"redis", "postgres", "migrate", "worker", "flower", "orchestrator"} <= services.keys()
    redis, postgres, worker = services["redis"], services["postgres"], services["worker"]

    # Worker: reserves NVIDIA GPUs (all of them: gpu-slot hands each replica one).
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    gpu = next(device for device in devices if device.get("driver") == "nvidia")
    assert "gpu" in gpu["capabilities"]
    assert gpu.get("count") in ("all", -1) or int(gpu["count"]) >= 1
    assert worker["entrypoint"][-1] == "badnet-prune" and worker["command"][0] == "worker"
    assert "container_name" not in worker, "a fixed container name would prevent --scale worker=N"

    # Redis: password, append-only persistence on a named volume, a healthcheck that authenticates.
    command = [str(part) for part in redis["command"]]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--requirepass") + 1] == env_example["REDIS_PASSWORD"]
    assert mounts(redis)["/data"]["type"] == "volume"
    assert "redis-cli" in healthcheck_test(redis)
    assert redis["environment"]["REDISCLI_AUTH"] == env_example["REDIS_PASSWORD"]

    # PostgreSQL: data on a named volume, pg_isready healthcheck.
    assert mounts(postgres)["/var/lib/postgresql/data"]["type"] == "volume"
    assert "pg_isready" in healthcheck_test(postgres)
    assert postgres["environment"]["POSTGRES_PASSWORD"] == env_example["POSTGRES_PASSWORD"]
    for name in ("redis", "postgres"):
        assert not services[name].get("ports"), f"{name} must stay on the project's network"

    # Start order: healthy services, and a migration that finished before anything uses the schema.
    assert depends_on(services["migrate"]) == {"postgres": "service_healthy"}
    assert services["migrate"]["command"] == ["migrate"]
    for name in ("worker", "orchestrator"):
        assert depends_on(services[name]) == {
            "redis": "service_healthy",
            "postgres": "service_healthy",
            "migrate": "service_completed_successfully",
        }
    assert depends_on(services["flower"]) == {"redis": "service_healthy"}

    # Data and sweeps read-only; artifacts, cache and reports on named volumes.
    for name in ("worker", "orchestrator"):
        mounted = mounts(services[name])
        for target in ("/data", "/sweeps"):
            assert mounted[target]["type"] == "bind" and mounted[target]["read_only"], (name, target)
        for target in ("/artifacts", "/cache"):
            assert mounted[target]["type"] == "volume" and not mounted[target]["read_only"], (name, target)
    assert mounts(services["orchestrator"])["/reports"]["type"] == "volume"
    assert "gpu-locks" in compose_config["volumes"]

    # The three badnet-prune services talk to these containers, with the passwords of the env file.
    for name in ("migrate", "worker", "orchestrator"):
        environment = services[name]["environment"]
        db, broker = urlsplit(environment["BADNET_PRUNE_DB"]), urlsplit(environment["BADNET_PRUNE_BROKER"])
        assert (db.scheme, db.hostname, db.password) == (
            "postgresql+psycopg",
            "postgres",
            env_example["POSTGRES_PASSWORD"],
        )
        assert (broker.scheme, broker.hostname, broker.password) == ("redis", "redis", env_example["REDIS_PASSWORD"])
        assert environment["BADNET_PRUNE_ARTIFACTS"] == "/artifacts"
        assert environment["BADNET_PRUNE_CACHE"] == "/cache"

    # Flower watches the same broker on port 5555; the orchestrator is left out of `up`.
    flower = services["flower"]
    assert flower["environment"]["CELERY_BROKER_URL"] == services["worker"]["environment"]["BADNET_PRUNE_BROKER"]
    assert flower["entrypoint"] == ["celery"] and flower["command"] == ["flower"]
    assert any(
        str(port.get("target") if isinstance(port, dict) else port).split(":")[-1].split("/")[0] == "5555"
        for port in flower["ports"]
    )
    assert services["orchestrator"].get("profiles")

    # Every badnet-prune service builds one image on the TensorFlow that pyproject.toml pins.
    for name in ("migrate", "worker", "flower", "orchestrator"):
        args = services[name]["build"]["args"]
        assert Version(args["TF_VERSION"]) in tensorflow_pin(repo).specifier, (name, args["TF_VERSION"])
        assert args["TF_VARIANT"] == "-gpu"


def test_env_example_documents_every_setting(env_example, repo):
    """Each variable docker-compose.yml reads has an entry in .env.example under a comment."""
    compose = [
        line for line in (repo / "docker-compose.yml").read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", "\n".join(compose)))
    assert used - env_example.keys() == set()
    lines = (repo / ".env.example").read_text().splitlines()
    for index, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            above = index - 1  # settings listed together share the comment above the first of them
            while above >= 0 and "=" in lines[above] and not lines[above].startswith("#"):
                above -= 1
            assert above >= 0 and lines[above].startswith("#"), f"{line.split('=')[0]} has no comment"
