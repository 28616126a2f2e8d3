"""Neural Cleanse's settings alone, without TensorFlow: the CLI, sweep files and planning validate them.

badnet_prune.numerics.neural_cleanse (the numerics) imports Keras, which takes seconds; reading a sweep file
must not.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_STEPS = 100_000
MAX_IMAGES = 100_000


class NeuralCleanseSettings(BaseModel):
    """How Neural Cleanse reverse-engineers a trigger per target label (Wang et al., S&P 2019).

    label_range: how many target labels one task optimises together (one batch of that many masks and
        patterns); the last range of a model may be shorter.
    steps: optimisation steps per label (each on one batch of clean images, the same batches for every label).
    learning_rate: Adam's step size on the masks' and patterns' unconstrained parameters.
    lambda_l1: the L1 weight each label starts with; every `adjust_every` steps it is multiplied by 1.5 where the
        label's attack succeeded on at least `target_asr` of those steps' images, and divided by 1.5 ** 1.5
        where it did not (the paper's factors, on a fixed cadence: its "patience" counters are left out).
    target_asr: the attack success a reversed trigger must reach to be kept; the smallest-norm mask that
        reached it is the label's result.
    seed: the masks' and patterns' initial values and the batches are drawn from it.
    image_count: the clean validation images used (the first ones of the file, at most).
    batch_size: clean images per step.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    # how the work is split, not what is computed: a verdict rule does not record it (detection_verdict)
    label_range: Annotated[int, Field(ge=1, le=10_000, json_schema_extra={"splits_work": True})] = 16
    steps: Annotated[int, Field(ge=1, le=MAX_STEPS)] = 300
    learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] = 0.1
    lambda_l1: Annotated[float, Field(ge=0.0, le=10.0)] = 1e-3
    adjust_every: Annotated[int, Field(ge=1, le=MAX_STEPS)] = 10
    target_asr: Annotated[float, Field(gt=0.0, le=1.0)] = 0.99
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    image_count: Annotated[int, Field(ge=1, le=MAX_IMAGES)] = 200
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 32
