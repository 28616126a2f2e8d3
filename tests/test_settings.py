"""Settings from the environment and flags: typed, checked once, one line per wrong value, no password shown."""

from __future__ import annotations

import json
import os
from pathlib import Path

import platformdirs
import pytest

from badnet_prune.db.errors import DatabaseUnavailable
from badnet_prune.db.session import make_engine, normalise_database_url
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.settings import Settings
from tests.helpers import run_cli


def refused(environ: dict[str, str]) -> str:
    with pytest.raises(BadInputError) as caught:
        Settings.from_env(environ)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_defaults_put_state_where_users_expect_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings.db_url == f"sqlite:///{tmp_path / 'badnet-prune.db'}"
    assert settings.cache_dir == Path(platformdirs.user_cache_dir("badnet-prune"))
    assert settings.cache_max_bytes == 20 * 10**9
    assert (settings.visibility_timeout_s, settings.statement_timeout_s, settings.broker_url) == (300, 30, None)


def test_environment_values_are_typed() -> None:
    settings = Settings.from_env({
        "BADNET_PRUNE_CACHE_MAX_BYTES": "20GB", "BADNET_PRUNE_VISIBILITY_TIMEOUT": "20",
        "BADNET_PRUNE_STATEMENT_TIMEOUT": "5", "BADNET_PRUNE_CACHE": "/tmp/c", "BADNET_PRUNE_ARTIFACTS": "a",
        "BADNET_PRUNE_BROKER": "redis://127.0.0.1:6379/0", "BADNET_PRUNE_DB": "",  # empty: the default
    })
    assert settings.cache_max_bytes == 20 * 10**9 and Settings.from_env(
        {"BADNET_PRUNE_CACHE_MAX_BYTES": "1GiB"}).cache_max_bytes == 2**30
    assert (settings.visibility_timeout_s, settings.statement_timeout_s) == (20, 5)
    assert (settings.cache_dir, settings.artifact_dir) == (Path("/tmp/c"), Path("a"))
    assert settings.db_url.startswith("sqlite:///") and settings.db_url.endswith("/badnet-prune.db")


@pytest.mark.parametrize("value", ["5m", "0", "-3", "1.5", "true", " ", "99999999999999999999"])
def test_visibility_timeout_must_be_whole_positive_seconds(value: str) -> None:
    message = refused({"BADNET_PRUNE_VISIBILITY_TIMEOUT": value})
    assert message.startswith("BADNET_PRUNE_VISIBILITY_TIMEOUT: expected a positive whole number of seconds")


@pytest.mark.parametrize("value", ["30s", "0", "-3", "1.5", "3601"])
def test_in_flight_grace_must_be_whole_positive_seconds_up_to_an_hour(value: str) -> None:
    assert Settings.from_env({}).in_flight_grace_s == 30
    assert Settings.from_env({"BADNET_PRUNE_IN_FLIGHT_GRACE": "2"}).in_flight_grace_s == 2
    message = refused({"BADNET_PRUNE_IN_FLIGHT_GRACE": value})
    assert message.startswith("BADNET_PRUNE_IN_FLIGHT_GRACE: expected a positive whole number of seconds, at most 3600")


def test_statement_timeout_and_cache_size_are_checked() -> None:
    assert refused({"BADNET_PRUNE_STATEMENT_TIMEOUT": "30s"}).startswith("BADNET_PRUNE_STATEMENT_TIMEOUT: expected")
    assert refused({"BADNET_PRUNE_CACHE_MAX_BYTES": "lots"}).startswith("BADNET_PRUNE_CACHE_MAX_BYTES: expected a size")
    assert refused({"BADNET_PRUNE_CACHE_MAX_BYTES": "-1"}).startswith("BADNET_PRUNE_CACHE_MAX_BYTES: expected")


def test_misspelt_variable_is_refused_with_a_suggestion() -> None:
    assert refused({"BADNET_PRUNE_BORKER": "redis://x"}) == (
        "BADNET_PRUNE_BORKER: unknown setting (did you mean BADNET_PRUNE_BROKER?)")
    assert refused({"BADNET_PRUNE_": "x"}).startswith("BADNET_PRUNE_: unknown setting")
    assert Settings.from_env({"OTHER_VARIABLE": "x", "badnet_prune_db": "x"}).broker_url is None


def test_broker_must_be_a_broker_url() -> None:
    assert refused({"BADNET_PRUNE_BROKER": "localhost:6379"}).startswith("BADNET_PRUNE_BROKER: expected a broker URL")
    assert refused({"BADNET_PRUNE_BROKER": "http://x"}).startswith("BADNET_PRUNE_BROKER: expected a broker URL")


def test_flags_are_checked_and_named() -> None:
    base = Settings.from_env({})
    with pytest.raises(BadInputError, match=r"^--db: expected a database"):
        base.with_overrides(db_url="mysql://u:pw@h/db")
    with pytest.raises(BadInputError, match=r"^--broker: expected a broker URL"):
        base.with_overrides(broker_url="nowhere")
    with pytest.raises(BadInputError, match=r"^visibility_timeout_s: expected"):
        base.with_overrides(visibility_timeout_s=True)
    with pytest.raises(BadInputError, match=r"^no_such_setting: unknown setting"):
        base.with_overrides(no_such_setting=1)
    assert base.with_overrides(db_url=None).db_url == base.db_url
    moved = base.with_overrides(artifact_dir=Path("out") / "models", broker_url="redis://h:6379/0")
    assert moved.artifact_dir == Path("out/models") and moved.without_broker().broker_url is None


def test_passwords_never_shown() -> None:
    settings = Settings.from_env({"BADNET_PRUNE_DB": "postgresql://app:s3cret-db@h/badnet",
                                  "BADNET_PRUNE_BROKER": "redis://:s3cret-redis@h:6379/0"})
    assert settings.db_url == "postgresql+psycopg://app:s3cret-db@h/badnet"  # the real value, for connecting
    shown = [repr(settings), str(settings), settings.model_dump_json(), json.dumps(settings.display()),
             str(settings.model_dump())]
    for text in shown:
        assert "s3cret" not in text and "***" in text
    message = refused({"BADNET_PRUNE_DB": "mysql://app:s3cret-db@h/badnet"})
    assert "s3cret" not in message and message.startswith("BADNET_PRUNE_DB: ")


@pytest.mark.parametrize(("given", "expected"), [
    ("postgres://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
    ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
    ("postgresql+psycopg://u@h/db?connect_timeout=3", "postgresql+psycopg://u@h/db?connect_timeout=3"),
    ("sqlite://", "sqlite://"),
])
def test_database_url_spellings(given: str, expected: str) -> None:
    assert normalise_database_url(given) == expected


def test_plain_path_is_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    expected = f"sqlite:///{tmp_path / 'demo' / 'badnet-prune.db'}"
    assert normalise_database_url("demo/badnet-prune.db") == expected
    assert normalise_database_url("sqlite:///demo/badnet-prune.db") == expected
    assert Settings.from_env({"BADNET_PRUNE_DB": "demo/badnet-prune.db"}).db_url == expected
    assert Settings.from_env({}).with_overrides(db_url="demo/badnet-prune.db").db_url == expected


@pytest.mark.parametrize("given", ["mysql://u@h/db", "postgresql+psycopg2://u@h/db", "postgres://u@h", "ga:rbage",
                                   "http://example.com/x.db", "  "])
def test_other_databases_refused_in_one_line(given: str) -> None:
    with pytest.raises(ValueError):
        normalise_database_url(given)
    assert refused({"BADNET_PRUNE_DB": given} if given.strip() else {"BADNET_PRUNE_DB": "x:y"}).startswith(
        "BADNET_PRUNE_DB: expected a database")


def test_reading_a_missing_sqlite_file_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "folder" / "x.db"
    with pytest.raises(DatabaseUnavailable, match="no such database file") as caught:
        make_engine(str(missing), create=False)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "no").exists()
    with pytest.raises(DatabaseUnavailable, match="is a folder"):
        make_engine(str(tmp_path), create=False)
    make_engine(str(missing)).dispose()  # writing commands may create it
    assert missing.parent.is_dir()


def cli_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BADNET_PRUNE_")}
    return env | {"BADNET_PRUNE_CACHE": str(tmp_path / "cache"), **settings}


def test_console_script_says_one_line_for_a_wrong_setting(tmp_path: Path) -> None:
    done = run_cli("steps", "1", env=cli_env(tmp_path, BADNET_PRUNE_VISIBILITY_TIMEOUT="5m"), timeout=120)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "BADNET_PRUNE_VISIBILITY_TIMEOUT" in lines[0] and "5m" in lines[0], done.stderr
    done = run_cli("steps", "1", "--db", "mysql://u:s3cret@h/db", env=cli_env(tmp_path), timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and lines[0].count("--db") == 1 and "s3cret" not in lines[0]


@pytest.mark.parametrize("command", [["steps", "1"], ["report", "1", "--out", "r"]])
def test_read_commands_never_create_a_database(tmp_path: Path, command: list[str]) -> None:
    mistyped = tmp_path / "demo-typo" / "badnet-prune.db"
    done = run_cli(*command, "--db", str(mistyped), env=cli_env(tmp_path), timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0 and len(lines) == 1 and "no such database file" in lines[0], done.stderr
    assert not mistyped.parent.exists()
