"""The one typed settings object: read from the environment once, overridden by CLI flags.

Nothing else in the project reads os.environ for configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

DEFAULT_DB_URL = "sqlite:///badnet-prune.db"


@dataclass(frozen=True)
class Settings:
    """Where results, queued work and shared files live.

    db_url: SQLAlchemy URL (SQLite file by default, postgresql+psycopg:// on a cluster).
    broker_url: Celery broker (redis://...); None means the embedded default: tasks run in-process.
    artifact_dir: where B' and G model files are written.
    cache_dir: where workers share early-layer activations (HDF5 files keyed by sha256).
    visibility_timeout_s: how long Redis waits for a task's acknowledgement before it hands the
        task to another worker (a worker that died mid-task is noticed after this long).
    """

    db_url: str = DEFAULT_DB_URL
    broker_url: str | None = None
    artifact_dir: Path = Path("artifacts")
    cache_dir: Path = Path(".badnet-prune-cache")
    visibility_timeout_s: int = 300

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            db_url=env.get("BADNET_PRUNE_DB") or DEFAULT_DB_URL,
            broker_url=env.get("BADNET_PRUNE_BROKER") or None,
            artifact_dir=Path(env.get("BADNET_PRUNE_ARTIFACTS") or "artifacts"),
            cache_dir=Path(env.get("BADNET_PRUNE_CACHE") or ".badnet-prune-cache"),
            visibility_timeout_s=int(env.get("BADNET_PRUNE_VISIBILITY_TIMEOUT") or 300),
        )

    def with_overrides(self, **overrides: object) -> Settings:
        """Apply CLI flags; a flag left at None keeps the environment's value."""
        return replace(self, **{key: value for key, value in overrides.items() if value is not None})
