"""badnet-prune: find, measure and neutralise backdoors in image classifiers.

One import package, in floors that import only downwards (checked by import-linter, pyproject.toml):
numerics (arrays and Keras models in, arrays and dataclasses out) < files (reading hostile model and
data files) < db | synth < settings < pipeline (the stage contract and the stages) < worker <
orchestrator (CLI, planning, reports) < api. The repository keeps db/, pipeline/, worker/ and
orchestrator/ as top-level folders; packaging maps them to badnet_prune.db and so on.

`from badnet_prune import defend` is the notebook API (badnet_prune.api); it is imported on first use,
so that `import badnet_prune` stays cheap (no TensorFlow, no SQLAlchemy).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from badnet_prune.api import defend

__version__ = "0.1.0"
__all__ = ["defend"]


def __getattr__(name: str) -> Any:
    if name == "defend":
        from badnet_prune.api import defend

        return defend
    raise AttributeError(f"module 'badnet_prune' has no attribute {name!r}")
