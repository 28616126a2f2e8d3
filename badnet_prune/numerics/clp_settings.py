"""CLP's settings alone, without TensorFlow: the CLI, sweep files and planning validate them.

badnet_prune.numerics.clp (the numerics) imports Keras, which takes seconds; reading a sweep file must not.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from badnet_prune.numerics.thresholds import decimal_key

DEFAULT_U_GRID = ("0", "0.5", "1", "1.5", "2", "2.5", "3", "3.5", "4", "4.5", "5", "6", "8", "10")
MAX_U = 100
MAX_LAYERS = 64


class ClpSettings(BaseModel):
    """How CLP prunes and how u is chosen; the defaults were chosen by measurement (bench/RESULTS.md, "ANP and CLP").

    u_grid: the u values tried, as exact keys (a float from TOML becomes its shortest decimal, "0.5");
        distinct, in [0, MAX_U], kept ascending. A channel is pruned at u when its bound exceeds
        mean + u x std of its layer. The paper's default is 3 and its sweep about 0-5; 6, 8 and 10 let
        the rule stop short of pruning where even 5 costs too much.
    accuracy_budget: the rule (clp.choose_u): the smallest u of the grid whose clean validation accuracy
        is at most this many percentage points below B's; none qualifying, nothing is pruned.
    layers: the Conv2D layers CLP looks at, by name; empty (the default) means every Conv2D of the model.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    u_grid: tuple[str, ...] = DEFAULT_U_GRID
    accuracy_budget: Annotated[float, Field(gt=0.0, le=100.0)] = 1.0
    layers: Annotated[tuple[Annotated[str, Field(min_length=1, max_length=200)], ...],
                      Field(max_length=MAX_LAYERS)] = ()

    @field_validator("u_grid", mode="before")
    @classmethod
    def _u_keys(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ValueError(f"u_grid must be a list of numbers, not {value!r}")
        keys = [decimal_key(item, "u") for item in value]
        if not keys:
            raise ValueError("u_grid needs at least one value")
        bad = [key for key in keys if not 0 <= float(key) <= MAX_U]
        if bad:
            raise ValueError(f"u values must lie in [0, {MAX_U}], got {', '.join(bad)}")
        if len({float(key) for key in keys}) != len(keys):
            raise ValueError(f"u values repeat: {', '.join(keys)}")
        return tuple(sorted(keys, key=float))

    @field_validator("layers", mode="before")
    @classmethod
    def _layer_list(cls, value: object) -> object:
        """TOML's array arrives as a list; the settings keep a tuple, names distinct."""
        value = tuple(value) if isinstance(value, list) else value
        if isinstance(value, tuple) and len(set(value)) != len(value):
            raise ValueError(f"layers repeat: {', '.join(map(str, value))}")
        return value
