"""ANP's settings alone, without TensorFlow: the CLI, sweep files and planning validate them.

badnet_prune.numerics.anp (the numerics) imports Keras, which takes seconds; reading a sweep file must not.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_LAYERS = 64


class AnpSettings(BaseModel):
    """How ANP learns its masks and prunes; the defaults were chosen by measurement (bench/RESULTS.md,
    "ANP and CLP"), the paper's where they work here.

    layers: the Conv2D layers whose channels get masks, by name (the pruning defense's conv_3 by default).
    epsilon: the perturbations' bound: delta_k and xi_k lie in [-epsilon, epsilon] (paper: 0.4).
    alpha: the loss is alpha L(m, 0) + (1 - alpha) max L(m, delta, xi) (paper: 0.2).
    mask_learning_rate: SGD with momentum 0.9 on the masks, as the authors' code (paper: 0.2).
    iterations: mask steps, each on one batch drawn with replacement (paper: 2,000).
    batch_size: images per batch (paper: 128).
    perturbation_steps: signed-gradient ascent steps on the perturbations per mask step, each epsilon / steps
        from a uniform draw in [-epsilon, epsilon] (paper: 1).
    mask_threshold: channels whose mask is at or below it are pruned (paper: 0.2; the authors' code: <=).
    seed: fixes the batches and the perturbations' draws.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    layers: Annotated[tuple[Annotated[str, Field(min_length=1, max_length=200)], ...],
                      Field(min_length=1, max_length=MAX_LAYERS)] = ("conv_3",)
    epsilon: Annotated[float, Field(gt=0.0, le=1.0)] = 0.4
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    mask_learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] = 0.2
    iterations: Annotated[int, Field(ge=1, le=100_000)] = 500
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 128
    perturbation_steps: Annotated[int, Field(ge=1, le=100)] = 1
    mask_threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.2
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0

    @field_validator("layers", mode="before")
    @classmethod
    def _layer_list(cls, value: object) -> object:
        """TOML's array arrives as a list; the settings keep a tuple, names distinct."""
        value = tuple(value) if isinstance(value, list) else value
        if isinstance(value, tuple) and len(set(value)) != len(value):
            raise ValueError(f"layers repeat: {', '.join(map(str, value))}")
        return value
