"""The one typed settings object: read from the environment once, overridden by CLI flags.

Nothing else in the project reads os.environ for configuration. Every value is checked here,
once: a wrong one (BADNET_PRUNE_VISIBILITY_TIMEOUT=5m, --db mysql://...) is one BadInputError line
naming the variable or the flag and what was expected, and a misspelt BADNET_PRUNE_* variable is
refused rather than silently ignored. Settings hold passwords (in the database and broker URLs):
their repr and every serialisation mask them, so printing or logging a Settings is safe.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import platformdirs
from pydantic import ByteSize, Field, ValidationError, field_serializer, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from badnet_prune.numerics.errors import BadInputError

ENV_PREFIX = "BADNET_PRUNE_"
DEFAULT_DB_URL = "sqlite:///badnet-prune.db"
DEFAULT_CACHE_MAX_BYTES = 20 * 10**9
BROKER_SCHEMES = ("redis", "rediss", "redis+socket", "sentinel", "amqp", "amqps", "pyamqp", "memory")
MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# The CLI flag that sets each field, so that an error in a flag names the flag, not the attribute.
FLAGS = {"db_url": "--db", "broker_url": "--broker"}


def default_cache_dir() -> Path:
    """The platform's user cache folder (~/.cache/badnet-prune on Linux): where users expect caches."""
    return Path(platformdirs.user_cache_dir("badnet-prune"))


class Settings(BaseSettings):
    """Where results, queued work and shared files live, and the limits that apply to them.

    db_url: SQLAlchemy URL, normalised (a plain path means a SQLite file, made absolute;
        postgres:// and postgresql:// mean postgresql+psycopg://).
    broker_url: Celery broker (redis://...); None means the embedded default: tasks run in-process.
    artifact_dir: where B' and G model files are written.
    cache_dir: where workers share early-layer activations (HDF5 files keyed by sha256).
    cache_max_bytes: the cache's size limit ("20GB" in the environment); older entries are evicted.
    visibility_timeout_s: how long Redis waits for a task's acknowledgement before it hands the
        task to another worker (a worker that died mid-task is noticed after this long).
    in_flight_grace_s: how long a sent task may still be on its way to the broker: a queued task younger
        than this is never called lost, and `sweep --wait` sends lost tasks again after this long without
        progress.
    statement_timeout_s: the longest one statement of the `sql` command may run.
    broker_wait_s: how long `badnet-prune worker` waits for its broker to answer before it gives up with
        one line (a worker started beside its broker may come up first); commands wait a few seconds only.
    stage_modules: modules that declare extra pipeline stages (pipeline.contract), comma-separated
        in the environment; every process that plans or runs a sweep imports them.
    engine: how a worker evaluates pruning steps: 'sparse' re-runs only the images a pruned channel
        changes (fastest on CPUs), 'dense' evaluates every image at every step in a few batched calls
        on the device (fastest on GPUs), 'auto' picks dense where an accelerator is visible.
    db_pool_size, db_max_overflow: PostgreSQL connections one process (a worker's pool child, the
        orchestrator) keeps open, and the extra ones it may open for a moment beyond them; a process
        opens only what it uses at once (a pool child two: its task's and its lease heartbeat's).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,  # documentation: each field names its variable (validation_alias)
        frozen=True,
        extra="forbid",
        validate_default=True,
        validate_by_name=True,
        validate_by_alias=True,
        env_ignore_empty=True,
        hide_input_in_errors=True,
    )

    db_url: str = Field(DEFAULT_DB_URL, validation_alias="BADNET_PRUNE_DB")
    broker_url: str | None = Field(None, validation_alias="BADNET_PRUNE_BROKER")
    artifact_dir: Path = Field(Path("artifacts"), validation_alias="BADNET_PRUNE_ARTIFACTS")
    cache_dir: Path = Field(default_factory=default_cache_dir, validation_alias="BADNET_PRUNE_CACHE")
    cache_max_bytes: ByteSize = Field(ByteSize(DEFAULT_CACHE_MAX_BYTES), ge=0,
                                      validation_alias="BADNET_PRUNE_CACHE_MAX_BYTES")
    visibility_timeout_s: int = Field(300, gt=0, le=7 * 24 * 3600, validation_alias="BADNET_PRUNE_VISIBILITY_TIMEOUT")
    in_flight_grace_s: int = Field(30, gt=0, le=3600, validation_alias="BADNET_PRUNE_IN_FLIGHT_GRACE")
    statement_timeout_s: int = Field(30, gt=0, le=24 * 3600, validation_alias="BADNET_PRUNE_STATEMENT_TIMEOUT")
    broker_wait_s: int = Field(60, gt=0, le=3600, validation_alias="BADNET_PRUNE_BROKER_WAIT")
    stage_modules: Annotated[tuple[str, ...], NoDecode] = Field((), validation_alias="BADNET_PRUNE_STAGE_MODULES")
    engine: Literal["auto", "dense", "sparse"] = Field("auto", validation_alias="BADNET_PRUNE_ENGINE")
    db_pool_size: int = Field(5, ge=2, le=1000, validation_alias="BADNET_PRUNE_DB_POOL_SIZE")
    db_max_overflow: int = Field(10, ge=0, le=1000, validation_alias="BADNET_PRUNE_DB_MAX_OVERFLOW")

    _expected: ClassVar[dict[str, str]] = {
        "db_url": "a database: a SQLite file path, sqlite:///FILE or postgresql://USER@HOST/DB",
        "broker_url": f"a broker URL such as redis://HOST:6379/0 (schemes: {', '.join(BROKER_SCHEMES)})",
        "artifact_dir": "a folder path",
        "cache_dir": "a folder path",
        "cache_max_bytes": "a size such as 20GB, 500MiB or a number of bytes",
        "visibility_timeout_s": "a positive whole number of seconds, at most 604800 (e.g. 300, not 5m)",
        "in_flight_grace_s": "a positive whole number of seconds, at most 3600 (e.g. 30, not 30s)",
        "statement_timeout_s": "a positive whole number of seconds, at most 86400 (e.g. 30, not 30s)",
        "broker_wait_s": "a positive whole number of seconds, at most 3600 (e.g. 60, not 1m)",
        "stage_modules": "comma-separated Python module names (e.g. mylab.stages)",
        "engine": "one of auto, dense, sparse",
        "db_pool_size": "a whole number of connections from 2 to 1000 (a task and its lease heartbeat use two)",
        "db_max_overflow": "a whole number of connections from 0 to 1000",
    }

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what the caller passes: the environment is read in from_env, where it can be checked.
        return (init_settings,)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings the environment (os.environ unless given) names, checked; unknown names refused."""
        env = os.environ if environ is None else environ
        known = {field.validation_alias for field in cls.model_fields.values()}
        for name in sorted(env):
            if name.startswith(ENV_PREFIX) and name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=1)
                hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(known))}"
                raise BadInputError(name, f"unknown setting ({hint})")
        values = _MappingEnvSource(cls, env)()
        return cls._checked(values, lambda field: cls.model_fields[field].validation_alias)

    def with_overrides(self, **flags: Any) -> Settings:
        """Apply CLI flags; a flag left at None keeps the environment's value. Checked like the environment."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        values.update({name: value for name, value in flags.items() if value is not None})
        return self._checked(values, lambda field: FLAGS.get(field, field))

    def without_broker(self) -> Settings:
        """These settings on the embedded default (tasks in this process), whatever broker they named."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        return self._checked({**values, "broker_url": None}, lambda field: field)

    def display(self) -> dict[str, str | int | None]:
        """The settings as text for messages and logs, passwords masked."""
        return self.model_dump(mode="json")

    @classmethod
    def _checked(cls, values: Mapping[str, Any], name_of: Any) -> Settings:
        """Validated settings, or one BadInputError line naming the setting (variable or flag)."""
        try:
            return cls.model_validate(dict(values))
        except ValidationError as error:
            first = error.errors()[0]
            loc = first["loc"]
            field = next((f for f, info in cls.model_fields.items() if loc and loc[0] in (f, info.validation_alias)),
                         None)
            if field is None:
                unknown = loc[0] if loc else "settings"
                raise BadInputError(str(unknown), "unknown setting") from None
            given = values.get(field, values.get(cls.model_fields[field].validation_alias))
            got = _masked(str(given)) if field in ("db_url", "broker_url") and given is not None else given
            reason = first["msg"].removeprefix("Value error, ")
            raise BadInputError(name_of(field), f"expected {cls._expected[field]}, got {got!r} ({reason})") from None

    @field_validator("db_url", mode="before")
    @classmethod
    def _database(cls, value: object) -> object:
        from badnet_prune.db.session import normalise_database_url

        return normalise_database_url(value) if isinstance(value, str) else value

    @field_validator("broker_url", mode="before")
    @classmethod
    def _broker(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        scheme, sep, _ = value.partition("://")
        if not sep or scheme.lower() not in BROKER_SCHEMES:
            raise ValueError("not a broker URL")
        return value

    @field_validator("visibility_timeout_s", "statement_timeout_s", "broker_wait_s", "db_pool_size", "db_max_overflow",
                     mode="before")
    @classmethod
    def _whole_seconds(cls, value: object) -> object:
        if isinstance(value, bool | float):
            raise ValueError("not a whole number")
        if isinstance(value, str) and not value.strip().isdigit():
            raise ValueError("not a whole number")
        return value

    @field_validator("stage_modules", mode="before")
    @classmethod
    def _module_names(cls, value: object) -> object:
        names = [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) and MODULE_NAME.match(n) for n in names):
            raise ValueError("not a list of module names")
        return tuple(names)

    @field_serializer("db_url", "broker_url")
    def _hide_password(self, value: str | None) -> str | None:
        return None if value is None else _masked(value)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, (_masked(value) if name in ("db_url", "broker_url") and isinstance(value, str) else value)


def _masked(url: str) -> str:
    """`url` with any password replaced by ***."""
    from badnet_prune.db.session import display_url

    return display_url(url)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls, case_sensitive=True, env_ignore_empty=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # case-sensitive, empty values ignored: what parse_env_vars does for os.environ with these options
        return {name: value for name, value in self._environ.items() if value != ""}
