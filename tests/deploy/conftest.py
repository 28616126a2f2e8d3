"""Fixtures for the deployment files: the compose config as compose resolves it, and the Dockerfile.

A tool or service these tests need but cannot find skips them locally and fails them in CI
(CI=true), where .ci/run installs Compose v2 and starts Redis and PostgreSQL: fixtures
`unavailable` and `compose_config` apply that rule. Test modules take everything from fixtures
(none imports this file), so they work whether or not tests/ becomes a package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, NoReturn

import pytest
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip for want of `reason`; in CI, where everything must be there, fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: CI must provide it)")
    pytest.skip(reason)


def compose_command() -> list[str] | None:
    """Compose v2.24 or later: `docker compose`, or the plugin deploy/stack-test/install-compose.sh puts in
    Docker's plugin folder, run on its own (it needs no engine for `config`). Compose v1 (Debian's
    docker-compose) cannot read docker-compose.yml: `configs.content` and the override's `!reset`."""
    candidates = [[docker, "compose"]] if (docker := shutil.which("docker")) else []
    plugin_folders = [Path("/usr/local/lib/docker/cli-plugins"), Path.home() / ".docker" / "cli-plugins"]
    candidates += [[str(path)] for folder in plugin_folders if (path := folder / "docker-compose").is_file()]
    for command in candidates:
        result = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, check=False)
        if result.returncode == 0 and Version(result.stdout.strip().removeprefix("v")) >= Version("2.24"):
            return command
    return None


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file, comments and blank lines skipped."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def unavailable():
    """The skip-locally, fail-in-CI rule, for tests that look for their own tools and services."""
    return skip_or_fail


@pytest.fixture(scope="session")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


def resolve_compose(*overrides: Path) -> dict[str, Any]:
    """docker-compose.yml (and `overrides` on top of it) resolved by compose itself with .env.example."""
    try:
        import yaml
    except ImportError:
        skip_or_fail("PyYAML is not installed: it parses `docker compose config` (add pyyaml to the test extra)")
    command = compose_command()
    if command is None:
        skip_or_fail("Compose v2.24 or later is not installed (deploy/stack-test/install-compose.sh installs it)")
    # Only PATH and HOME: any other variable of the caller's shell (POSTGRES_PASSWORD, TF_VERSION...)
    # would override .env.example in the interpolation.
    env = {"PATH": os.environ.get("PATH", os.defpath), "HOME": os.environ.get("HOME", str(REPO))}
    files = [argument for path in (COMPOSE_FILE, *overrides) for argument in ("-f", str(path))]
    files += ["--profile", "*"]  # the orchestrator too, which is in a profile
    result = subprocess.run(
        [*command, "--env-file", str(ENV_EXAMPLE), "--project-directory", str(REPO), *files, "config"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{' '.join(command)} config failed:\n{result.stderr}"
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="session")
def compose_config() -> dict[str, Any]:
    """docker-compose.yml resolved by compose itself with .env.example, as a dict."""
    return resolve_compose()


@pytest.fixture(scope="session")
def cpu_compose_config() -> dict[str, Any]:
    """docker-compose.yml with the stack test's CPU override (deploy/stack-test/compose.cpu.yml) on top."""
    return resolve_compose(REPO / "deploy" / "stack-test" / "compose.cpu.yml")


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


@pytest.fixture(scope="session")
def dockerfile() -> list[tuple[str, str]]:
    return parse_dockerfile(REPO / "Dockerfile")


@pytest.fixture(scope="session")
def image_entrypoint(dockerfile) -> list[str]:
    """The image's ENTRYPOINT (exec form), which a service without `entrypoint:` runs."""
    entrypoints = [json.loads(arguments) for keyword, arguments in dockerfile if keyword == "ENTRYPOINT"]
    assert entrypoints, "the Dockerfile has no ENTRYPOINT"
    return entrypoints[-1]
