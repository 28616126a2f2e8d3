"""Fine-pruning's settings alone, without TensorFlow: the CLI, sweep files and planning validate them.

badnet_prune.numerics.fine_tuning (the numerics) imports Keras, which takes seconds; reading a sweep file or
planning a sweep must not, so the settings live here and fine_tuning re-exports them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class FineTuneSettings(BaseModel):
    """How B'_t is fine-tuned; the defaults were chosen by measurement (bench/RESULTS.md, "Fine-pruning").

    Strict and frozen, so a sweep file's [fine_tune] table or the CLI's options validate once here:
    unknown keys, strings for numbers and out-of-range values are refused, naming the field.

    optimizer: "adam" (Keras defaults besides the rate) or "sgd" (momentum 0.9).
    learning_rate: 3e-3 with adam. On the pruning-aware synthetic BadNet, 1e-3 leaves 30-60% ASR
        (the network relearns the clean task a few steps from B'_t, backdoor included); 3e-3 first
        knocks hold-out accuracy down, then relearns it without the backdoor in 5 of 9 seed pairs
        (bench/RESULTS.md). SGD at 1e-3 diverges on raw 0..255 pixels, and at 3e-4 leaves 70-99% ASR.
    epochs: 10 after epoch 0; the hold-out accuracy chooses among all of them (epoch 0 included).
    batch_size: 64, the batch size the synthetic BadNets are trained with.
    seed: fixes the split, the batch order and the initial state of anything random in training.
    holdout_fraction: the share of the clean validation images held out to choose the epoch.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    optimizer: Literal["adam", "sgd"] = "adam"
    learning_rate: Annotated[float, Field(gt=0.0, lt=1.0)] = 3e-3
    epochs: Annotated[int, Field(ge=1, le=1000)] = 10
    batch_size: Annotated[int, Field(ge=1, le=65536)] = 64
    seed: Annotated[int, Field(ge=0, lt=2**32)] = 0
    holdout_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
