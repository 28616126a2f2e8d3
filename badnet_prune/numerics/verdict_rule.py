"""The combined verdict: how likely a model is backdoored, from its detectors' scores, by a fitted rule.

Each detector alone sees one symptom (a dormant channel that carries a backdoor, a label reachable by a small
trigger, a channel whose Lipschitz bound stands out), so each misses the attacks that lack it; a rule over all
of them is fitted on a zoo with known truth and must then be judged on models it was not fitted on (the stage
refuses a model the rule saw). The rule is a logistic regression over the scores, standardised by the
fitting zoo's means and spreads, with an L2 penalty: few parameters, since a zoo holds tens of models. Keras
fits it (one sigmoid unit, full-batch Adam from zero weights: deterministic, no second ML library).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from badnet_prune.numerics.errors import BadInputError

CUTOFF = 0.5  # a probability at or above it is the verdict "backdoored"
# The smallest spread a score is standardised by: scores live in [0, 1], and a detector nearly constant on the
# fitting zoo would otherwise turn a new model's tiny difference into a certain verdict.
MIN_SCALE = 0.01


@dataclass(frozen=True)
class VerdictRule:
    """P(backdoored) = sigmoid(bias + sum_i weight_i * (score_i - mean_i) / scale_i) over `detectors`."""

    detectors: tuple[str, ...]
    weights: tuple[float, ...]
    bias: float
    means: tuple[float, ...]
    scales: tuple[float, ...]

    def probability(self, scores: Mapping[str, float]) -> float:
        """The rule's probability for one model's detector scores (every detector of the rule must be there)."""
        missing = [name for name in self.detectors if name not in scores]
        if missing:
            raise BadInputError("verdict rule", f"needs the scores of {', '.join(missing)}")
        logit = self.bias + sum(weight * (scores[name] - mean) / scale for name, weight, mean, scale
                                in zip(self.detectors, self.weights, self.means, self.scales, strict=True))
        if not math.isfinite(logit):
            raise BadInputError("verdict rule", f"gives no finite value for the scores {dict(scores)}")
        return 1.0 / (1.0 + math.exp(-logit)) if logit >= 0 else math.exp(logit) / (1.0 + math.exp(logit))


def fit_verdict_rule(scores: np.ndarray, backdoored: Sequence[bool], detectors: Sequence[str], *,
                     l2: float = 0.01, steps: int = 500, learning_rate: float = 0.05) -> VerdictRule:
    """The rule fitted on a zoo: `scores` has one row per model and one column per detector (each in [0, 1]),
    `backdoored` the models' truth. Both kinds of model must be present: a rule fitted on one kind alone
    would say that kind of every model."""
    features = np.asarray(scores, dtype="float64")
    labels = np.asarray(backdoored, dtype="float32")
    if features.ndim != 2 or features.shape[1] != len(detectors) or features.shape[0] != len(labels):
        raise BadInputError("verdict rule", f"scores of shape {features.shape} do not match "
                            f"{len(labels)} models and {len(detectors)} detectors")
    if not 0 < labels.sum() < len(labels):
        raise BadInputError("verdict rule", f"needs clean and backdoored models with known truth; got "
                            f"{int(labels.sum())} backdoored of {len(labels)}")
    if not np.isfinite(features).all():
        raise BadInputError("verdict rule", "a detector score is not a finite number")
    from badnet_prune.numerics.tf_setup import keras

    means = features.mean(axis=0)
    scales = np.maximum(features.std(axis=0), MIN_SCALE)
    standardised = ((features - means) / scales).astype("float32")
    model = keras.Sequential([
        keras.Input((len(detectors),)),
        keras.layers.Dense(1, activation="sigmoid", kernel_initializer="zeros", bias_initializer="zeros",
                           kernel_regularizer=keras.regularizers.L2(l2)),
    ])
    # every full-batch step in one epoch of repeated data, run in compiled loops of 100 steps: one fit
    # epoch per step would cost Keras's per-epoch overhead 500 times over
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy",
                  steps_per_execution=100)
    model.fit(np.tile(standardised, (steps, 1)), np.tile(labels, steps), batch_size=len(labels), epochs=1,
              shuffle=False, verbose=0)
    kernel, bias = model.layers[-1].get_weights()
    return VerdictRule(detectors=tuple(detectors), weights=tuple(float(w) for w in kernel[:, 0]),
                       bias=float(bias[0]), means=tuple(float(m) for m in means),
                       scales=tuple(float(s) for s in scales))
