"""Neural Cleanse's numerics: the vectorised optimisation against the plain per-class loop, and the anomaly index
on hand-computed norms."""

from __future__ import annotations

import numpy as np
import pytest

from badnet_prune.numerics.neural_cleanse import anomaly, reverse_engineer, reverse_engineer_loop
from badnet_prune.numerics.neural_cleanse_settings import NeuralCleanseSettings
from badnet_prune.numerics.tf_setup import keras


def _tiny_model(classes: int = 4) -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 7, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))


def test_the_vectorised_optimisation_equals_the_per_class_loop():
    model = _tiny_model()
    images = np.random.default_rng(0).uniform(0, 255, (40, 8, 7, 3)).astype(np.float32)
    settings = NeuralCleanseSettings(steps=25, batch_size=8, adjust_every=5, learning_rate=0.05)
    together = reverse_engineer(model, images, [0, 1, 2, 3], settings, input_scale=255.0)
    alone = reverse_engineer_loop(model, images, [0, 1, 2, 3], settings, input_scale=255.0)
    np.testing.assert_array_equal(together.targets, alone.targets)
    np.testing.assert_allclose(together.masks, alone.masks, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(together.patterns, alone.patterns, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(together.norms, alone.norms, rtol=1e-4)
    np.testing.assert_array_equal(together.reached, alone.reached)
    np.testing.assert_allclose(together.lambdas, alone.lambdas, rtol=1e-6)
    np.testing.assert_allclose(together.attack_success, alone.attack_success)
    # a label's result does not depend on the range it is optimised in
    part = reverse_engineer(model, images, [2, 3], settings, input_scale=255.0)
    np.testing.assert_allclose(part.masks, together.masks[2:], rtol=1e-4, atol=1e-5)
    assert together.masks.shape == (4, 8, 7) and together.patterns.shape == (4, 8, 7, 3)
    assert together.masks.min() >= 0 and together.masks.max() <= 1
    assert together.patterns.min() >= 0 and together.patterns.max() <= 255


def test_the_anomaly_index_against_a_hand_computed_case():
    norms = np.array([10.0, 11.0, 9.0, 10.5, 2.0, 12.0, 9.5])
    # median 10; deviations 0, 1, 1, .5, 8, 2, .5 -> MAD = median(0, .5, .5, 1, 1, 2, 8) = 1
    result = anomaly(norms)
    assert result.median == 10.0 and result.mad == 1.0
    np.testing.assert_allclose(result.index, [0, 1, 1, 0.5, 8, 2, 0.5] / np.float64(1.4826))
    assert result.flagged == (4,)  # 8 / 1.4826 = 5.4 > 2 and below the median
    assert result.max_index == pytest.approx(8 / 1.4826)
    assert result.score == pytest.approx((8 / 1.4826) / (8 / 1.4826 + 2))
    # a large norm stands out too, but above the median: never flagged
    high = anomaly(np.array([10.0, 11.0, 9.0, 10.5, 30.0, 12.0, 9.5]))
    assert high.flagged == () and high.score < 0.5
    # index 2 exactly is not above the cut-off; half the norms equal: the others stand out without bound
    assert anomaly(np.array([1.0, 2.0, 3.0])).flagged == ()
    equal = anomaly(np.array([5.0, 5.0, 5.0, 1.0]))
    assert equal.flagged == (3,) and equal.score == 1.0
    with pytest.raises(ValueError):
        anomaly(np.array([1.0, np.nan]))
