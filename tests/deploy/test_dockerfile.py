"""The image: TensorFlow's official base of the pinned version, the project installed, a non-root user."""

from __future__ import annotations

import json
import re
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version


def build_args(dockerfile) -> dict[str, str]:
    """Default values of the ARGs, as the FROM line and later instructions see them."""
    return dict(
        re.fullmatch(r"(\w+)=?(.*)", arguments).groups() for keyword, arguments in dockerfile if keyword == "ARG"
    )


def base_image(dockerfile, **overrides: str) -> str:
    """The FROM image with ARG defaults (or `overrides`, as --build-arg would) substituted."""
    args = build_args(dockerfile) | overrides
    image = next(arguments for keyword, arguments in dockerfile if keyword == "FROM").split()[0]
    return re.sub(r"\$\{(\w+)\}", lambda match: args[match.group(1)], image)


def test_base_image_is_tensorflow_of_the_pinned_version(dockerfile, repo):
    with (repo / "pyproject.toml").open("rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    pin = next(r for r in map(Requirement, dependencies) if r.name == "tensorflow")

    image = base_image(dockerfile)
    repository, tag = image.split(":")
    assert repository == "tensorflow/tensorflow"
    assert tag.endswith("-gpu"), f"the default build is the GPU image, got {image}"
    assert Version(tag.removesuffix("-gpu")) in pin.specifier, f"{image} does not satisfy {pin}"
    assert base_image(dockerfile, TF_VARIANT="") == image.removesuffix("-gpu"), "CPU variant by build arg"


def test_project_installed_for_a_non_root_user(dockerfile):
    copied = {
        source.rstrip("/")
        for keyword, arguments in dockerfile
        if keyword == "COPY"
        for source in arguments.split()[:-1]
        if not source.startswith("--")
    }
    assert {"pyproject.toml", "README.md", "badnet_prune", "worker", "orchestrator", "db"} <= copied
    assert any(keyword == "RUN" and "pip install" in arguments for keyword, arguments in dockerfile)

    users = [arguments for keyword, arguments in dockerfile if keyword == "USER"]
    assert users, "the image must not run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert any(
        keyword == "RUN" and "useradd" in arguments and user in arguments for keyword, arguments in dockerfile
    ), f"USER {user} is never created"

    entrypoint = [json.loads(arguments) for keyword, arguments in dockerfile if keyword == "ENTRYPOINT"]
    assert entrypoint[-1] == ["badnet-prune"]


def test_dockerignore_keeps_secrets_and_local_state_out(repo):
    rules = [line for line in (repo / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*", "the build context is an allow-list"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert not allowed & {".env", ".venv", "data", ".git"}


def test_every_package_of_pyproject_reaches_the_image(dockerfile, repo):
    """A package pyproject.toml installs but the Dockerfile or .dockerignore leaves out breaks the workers
    only inside the image (ModuleNotFoundError at start): each top-level package is copied and allowed."""
    with (repo / "pyproject.toml").open("rb") as handle:
        setuptools = tomllib.load(handle)["tool"]["setuptools"]
    folders = {setuptools["package-dir"].get(package, package.replace(".", "/")) for package in setuptools["packages"]}
    packages = {folder.split("/")[0] for folder in folders}
    copied = {source.rstrip("/") for keyword, arguments in dockerfile if keyword == "COPY"
              for source in arguments.split()[:-1]}
    rules = (repo / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in rules if line.startswith("!")}
    assert packages <= copied, f"the Dockerfile does not COPY {sorted(packages - copied)}"
    assert packages <= allowed, f".dockerignore keeps {sorted(packages - allowed)} out of the build context"
    for package in packages:
        assert (repo / package / "__init__.py").is_file(), package
