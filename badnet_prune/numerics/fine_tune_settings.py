"""Fine-pruning's settings alone, without TensorFlow: the CLI, sweep files and planning validate them.

badnet_prune.numerics.fine_tuning (the numerics) imports Keras, which takes seconds; reading a sweep file or
planning a sweep must not, so the settings live here and fine_tuning re-exports them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class FineTuneSettings(BaseModel):
    """How B'_t is fine-tuned; the defaults were chosen by measurement across seeds and thresholds
    (bench/fine_tune_seeds.py, bench/RESULTS.md "Fine-pruning across seeds").

    Strict and frozen, so a sweep file's [fine_tune] table or the CLI's options validate once here:
    unknown keys, strings for numbers and out-of-range values are refused, naming the field.

    The old recipe (Adam at a constant 3e-3, 10 epochs) first wrecked the pruned network and then hoped it
    relearnt the clean task without the backdoor; at 10% that failed on several seeds, and the epoch kept was
    B'_t itself. A peak rate reached after a warm-up and decayed to zero keeps the pruned network intact
    while it trains; random erasing of most training images (0.9: at 0.5, three of 30 default-attack pairs
    kept 5-8% ASR, all three repaired at 0.9) keeps the network from relearning the clean task through the
    few features the backdoor shares with it. The peak is 2e-3, not 1e-3: at 1e-3 a small patch trigger
    survived in 5 of 16 multi-trigger zoo models (5.7-23% ASR) and 2 of 17 patch ones; 2e-3 repairs 16 of 16
    and 16 of 17 at no clean cost, and of 14 pruning-aware models misses one that 1e-3 repairs and repairs one
    that 1e-3 misses (bench/RESULTS.md, "The repair's learning rate across the zoo"). Every choice uses the
    defender's clean validation images only.
    """

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    optimizer: Annotated[Literal["adam", "sgd"], Field(
        description="adam (Keras defaults besides the rate) or sgd (momentum 0.9), e.g. adam")] = "adam"
    learning_rate: Annotated[float, Field(gt=0.0, lt=1.0, description="the peak learning rate, e.g. 0.002")] = 2e-3
    schedule: Annotated[Literal["constant", "cosine"], Field(
        description="the rate after the warm-up: constant, or a cosine decay to zero at the last epoch, "
                    "e.g. cosine")] = "cosine"
    warmup_epochs: Annotated[int, Field(ge=0, le=1000, description=(
        "epochs over which the rate rises linearly from zero to its peak, e.g. 2"))] = 2
    clip_norm: Annotated[float | None, Field(gt=0.0, description=(
        "clip each step's gradients to this global norm (none by default), e.g. 5.0"))] = None
    erase: Annotated[float, Field(ge=0.0, le=1.0, description=(
        "the share of training images that get a random rectangle filled with noise each epoch "
        "(random erasing), e.g. 0.9"))] = 0.9
    epochs: Annotated[int, Field(ge=1, le=1000, description=(
        "epochs after epoch 0; the hold-out accuracy chooses among all of them (epoch 0, B'_t itself, "
        "included), e.g. 20"))] = 20
    batch_size: Annotated[int, Field(ge=1, le=65536, description="training batch size, e.g. 64")] = 64
    seed: Annotated[int, Field(ge=0, lt=2**32, description=(
        "fixes the split, the batch order, the erasing and anything else random in training, e.g. 0"))] = 0
    holdout_fraction: Annotated[float, Field(gt=0.0, lt=1.0, description=(
        "the share of the clean validation images held out to choose the epoch, e.g. 0.2"))] = 0.2
