"""docker-compose.yml, as compose resolves it with .env.example, and .env.example itself."""

from __future__ import annotations

import re
import subprocess
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

    # Redis: password and append-only persistence from its config file, data on a named volume, a healthcheck
    # that authenticates. The password is on no command line (`ps`, `docker inspect`) and in no variable.
    command = [str(part) for part in redis["command"]]
    config = next(item for item in redis["configs"] if item["target"] == command[-1])
    settings = dict(line.split(" ", 1) for line in compose_config["configs"][config["source"]]["content"].splitlines())
    assert settings["requirepass"] == env_example["REDIS_PASSWORD"] and settings["appendonly"] == "yes"
    assert settings["dir"] == "/data" and mounts(redis)["/data"]["type"] == "volume"
    assert env_example["REDIS_PASSWORD"] not in " ".join(command) + " ".join(redis.get("environment") or {})
    assert env_example["REDIS_PASSWORD"] not in str(redis.get("environment") or {})
    assert "redis-cli" in healthcheck_test(redis) and command[-1] in healthcheck_test(redis)

    # PostgreSQL: data on a named volume, pg_isready healthcheck.
    assert mounts(postgres)["/var/lib/postgresql/data"]["type"] == "volume"
    assert "pg_isready" in healthcheck_test(postgres)
    assert postgres["environment"]["POSTGRES_PASSWORD"] == env_example["POSTGRES_PASSWORD"]
    for name in ("redis", "postgres"):
        assert not services[name].get("ports"), f"{name} must stay on the project's network"

    # Start order: the password check first, healthy services, and a migration that finished before anything
    # uses the schema.
    for name in ("redis", "postgres"):
        assert depends_on(services[name]) == {"preflight": "service_completed_successfully"}
    assert depends_on(services["migrate"]) == {"postgres": "service_healthy"}
    assert services["migrate"]["command"] == ["migrate"]
    for name in ("worker", "orchestrator"):
        assert depends_on(services[name]) == {
            "redis": "service_healthy",
            "postgres": "service_healthy",
            "migrate": "service_completed_successfully",
            "db-roles": "service_completed_successfully",
        }
    # The sql command's role gets its password after the migrations created it; the orchestrator hands it
    # to libpq, which uses it for the connection that has none in its URL (sql's).
    assert depends_on(services["db-roles"]) == {"migrate": "service_completed_successfully"}
    assert services["db-roles"]["environment"]["READER_PASSWORD"] == env_example["POSTGRES_READER_PASSWORD"]
    assert services["db-roles"]["environment"]["APP_PASSWORD"] == env_example["POSTGRES_APP_PASSWORD"]
    script = " ".join(services["db-roles"]["command"])
    assert env_example["POSTGRES_READER_PASSWORD"] not in script and env_example["POSTGRES_APP_PASSWORD"] not in script
    assert services["orchestrator"]["environment"]["PGPASSWORD"] == env_example["POSTGRES_READER_PASSWORD"]
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

    # The three badnet-prune services talk to these containers, with the passwords of the env file: the
    # migrations as the schema's owner, workers and orchestrator as the unprivileged application role.
    for name in ("migrate", "worker", "orchestrator"):
        environment = services[name]["environment"]
        db, broker = urlsplit(environment["BADNET_PRUNE_DB"]), urlsplit(environment["BADNET_PRUNE_BROKER"])
        role = ("POSTGRES_USER", "POSTGRES_PASSWORD") if name == "migrate" else ("badnet_app", "POSTGRES_APP_PASSWORD")
        assert (db.scheme, db.hostname, db.username, db.password) == (
            "postgresql+psycopg",
            "postgres",
            env_example.get(role[0], role[0]),
            env_example[role[1]],
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


APPLICATION_SERVICES = ("preflight", "migrate", "db-roles", "worker", "flower", "orchestrator")


def test_application_services_are_hardened(compose_config):
    """No privilege escalation, no capabilities, a read-only root filesystem with a private /tmp."""
    for name in APPLICATION_SERVICES:
        service = compose_config["services"][name]
        assert service["security_opt"] == ["no-new-privileges:true"], name
        assert service["cap_drop"] == ["ALL"] and not service.get("cap_add"), name
        assert service["read_only"] is True, name
        assert any(str(entry).split(":")[0] == "/tmp" for entry in service["tmpfs"]), name
        assert not service.get("privileged"), name


def test_every_service_waits_for_the_password_check(compose_config):
    services = compose_config["services"]

    def waits_for_preflight(name: str) -> bool:
        needed = depends_on(services[name])
        return needed.get("preflight") == "service_completed_successfully" or any(map(waits_for_preflight, needed))

    assert not depends_on(services["preflight"]) and services["preflight"]["restart"] == "no"
    assert all(waits_for_preflight(name) for name in services.keys() - {"preflight"})


def run_preflight(compose_config, passwords: dict[str, str]) -> subprocess.CompletedProcess:
    """The preflight service's shell script, run here by sh with `passwords` as its environment."""
    preflight = compose_config["services"]["preflight"]
    assert preflight["entrypoint"] == ["/bin/sh", "-c"]
    script = preflight["command"][0].replace("$$", "$")  # compose prints $$ for a literal $
    assert preflight["environment"].keys() == passwords.keys()
    return subprocess.run(["/bin/sh", "-c", script], env=passwords, capture_output=True, text=True, check=False)


def test_preflight_refuses_the_placeholder_passwords_with_one_line(compose_config, env_example):
    """The attacker's test: .env.example copied as it is (or a password left empty) must not start anything."""
    names = ("REDIS_PASSWORD", "POSTGRES_PASSWORD", "POSTGRES_APP_PASSWORD", "POSTGRES_READER_PASSWORD",
             "FLOWER_PASSWORD")
    assert all(env_example[name].startswith("change-me") for name in names)
    assert compose_config["services"]["preflight"]["environment"] == {name: env_example[name] for name in names}
    fresh = {name: f"{index}f3a9c0d7e1b2" for index, name in enumerate(names)}

    result = run_preflight(compose_config, fresh)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    for name in names:
        for value in (env_example[name], "change-me", ""):
            result = run_preflight(compose_config, fresh | {name: value})
            assert result.returncode == 1, (name, value)
            assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"preflight: {name} in .env "), result
            assert "placeholder" in result.stderr and not result.stdout


def test_cpu_override_removes_only_the_gpu_reservation(compose_config, cpu_compose_config):
    """deploy/stack-test/compose.cpu.yml, the override docs/deployment.md gives for a machine without GPUs."""
    cpu_worker = dict(cpu_compose_config["services"]["worker"])
    assert "deploy" not in cpu_worker
    gpu_worker = dict(compose_config["services"]["worker"])
    gpu_worker.pop("deploy")
    assert cpu_worker == gpu_worker
    assert {name: cpu_compose_config["services"][name] for name in compose_config["services"].keys() - {"worker"}} == {
        name: compose_config["services"][name] for name in compose_config["services"].keys() - {"worker"}
    }
