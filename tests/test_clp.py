"""CLP's numerics on hand-made kernels and tiny models: the channel bounds against singular values computed
here one channel at a time (and a rank-1 kernel's in closed form), BatchNormalization's scale where one
follows, the channels above mean + u x std, the rule choosing u, the pruned model, and the CLP statistic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from badnet_prune.numerics.channel_curve import CurvePoint
from badnet_prune.numerics.clp import (
    ClpEvidence,
    ClpSettings,
    build_clp_model,
    channel_lipschitz_bounds,
    channels_above,
    choose_u,
    clp_curve,
    clp_pruning,
    clp_statistic,
    following_batch_norm_scale,
    model_bounds,
    statistic_score,
)
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.tf_setup import keras
from badnet_prune.numerics.thresholds import decimal_key


def test_bounds_are_each_channels_largest_singular_value():
    kernel = np.random.default_rng(0).normal(size=(3, 2, 4, 5))
    expected = [np.linalg.svd(kernel[..., k].reshape(6, 4).T, compute_uv=False)[0] for k in range(5)]
    np.testing.assert_allclose(channel_lipschitz_bounds(kernel), expected, rtol=1e-12)


def test_a_rank_one_channel_has_the_product_of_its_factors_norms():
    a, b = np.array([1.0, -2.0, 2.0]), np.array([3.0, 0.0, 4.0, 0.0])  # |a| = 3, |b| = 5
    kernel = np.zeros((2, 2, 3, 2))
    kernel[..., 0] = np.einsum("i,p->pi", a, b).reshape(2, 2, 3)  # positions x inputs, rank 1
    kernel[0, 0, :, 1] = [0.0, 0.0, -7.0]  # a single weight: its absolute value
    np.testing.assert_allclose(channel_lipschitz_bounds(kernel), [15.0, 7.0], rtol=1e-12)
    np.testing.assert_allclose(channel_lipschitz_bounds(kernel, np.array([0.5, -2.0])), [7.5, 14.0], rtol=1e-12)
    with pytest.raises(ValueError, match="4 axes"):
        channel_lipschitz_bounds(kernel[0])


def _conv_bn_model(between: list) -> keras.Model:
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 2, name="conv")(inputs)
    for layer in between:
        x = layer(x)
    x = keras.layers.BatchNormalization(name="bn", epsilon=0.01)(x)
    x = keras.layers.Conv2D(2, 2, name="conv_next")(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x)))


def test_a_following_batch_norm_scales_the_bounds_by_gamma_over_sigma():
    for between in ([], [keras.layers.ReLU(), keras.layers.MaxPooling2D(1)]):
        model = _conv_bn_model(between)
        gamma, variance = np.array([2.0, -0.5, 1.0]), np.array([3.99, 0.24, 0.0])
        bn = model.get_layer("bn")
        bn.set_weights([gamma, np.zeros(3), np.ones(3), variance])
        kernel = model.get_layer("conv").get_weights()[0]
        sigma = np.sqrt(variance + 0.01)  # 2, 0.5, 0.1
        np.testing.assert_allclose(following_batch_norm_scale(model.get_layer("conv")), gamma / sigma, rtol=1e-6)
        bounds = model_bounds(model)
        np.testing.assert_allclose(bounds["conv"], channel_lipschitz_bounds(kernel) * [1.0, 1.0, 10.0], rtol=1e-6)
        assert following_batch_norm_scale(model.get_layer("conv_next")) is None
        np.testing.assert_allclose(bounds["conv_next"], channel_lipschitz_bounds(model.get_layer("conv_next")
                                                                                 .get_weights()[0]))


def test_a_batch_norm_behind_a_mixing_layer_is_not_the_channels():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 2, name="conv")(inputs)
    x = keras.layers.BatchNormalization()(keras.layers.Conv2D(3, 1, name="mix")(x))
    model = keras.Model(inputs, x)
    assert following_batch_norm_scale(model.get_layer("conv")) is None
    assert following_batch_norm_scale(model.get_layer("mix")) is not None


def test_channels_above_mean_plus_u_sample_std():
    bounds = np.array([1.0, 1.0, 1.0, 1.0, 5.0])  # mean 1.8, sample std sqrt(3.2) = 1.789
    assert channels_above(bounds, 0).tolist() == [4]
    assert channels_above(bounds, "1.78").tolist() == [4]  # 1.8 + 1.78 x 1.789 = 4.98 < 5
    assert channels_above(bounds, 1.79).tolist() == []  # 1.8 + 1.79 x 1.789 = 5.002
    assert channels_above(np.array([2.0, 2.0]), 0).tolist() == []
    # b: mean 2, sample std sqrt(2): 3 lies 0.707 std above the mean
    assert clp_pruning({"a": bounds, "b": np.array([1.0, 3.0])}, 0.7) == {"a": (4,), "b": (1,)}
    assert clp_pruning({"a": bounds, "b": np.array([1.0, 3.0])}, 0.71) == {"a": (4,), "b": ()}


def _point(key: str, accuracy: float) -> CurvePoint:
    return CurvePoint(key=key, pruned={}, clean_correct=int(accuracy), clean_accuracy=accuracy)


def test_the_rule_takes_the_smallest_u_within_the_budget():
    b = _point("", 98.0)
    points = {"0": _point("0", 60.0), "1": _point("1", 96.9), "2": _point("2", 97.0), "3": _point("3", 98.0)}
    assert choose_u(points, b, 1.0) == "2"
    assert choose_u(points, b, 1.1) == "1"
    assert choose_u({"0": _point("0", 60.0)}, b, 1.0) is None


def _tiny_model() -> keras.Model:
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(6, 3, activation="relu", name="conv_a")(inputs)
    x = keras.layers.Conv2D(8, 2, activation="relu", name="conv_b")(x)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(2)
    weights = [rng.normal(0.0, 0.3, w.shape).astype(np.float32) for w in model.get_weights()]
    weights[0][..., 4] *= 20.0  # conv_a's channel 4 stands out
    model.set_weights(weights)
    return model


def test_the_curve_prunes_the_standing_out_channel_and_the_model_zeroes_it():
    model = _tiny_model()
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 1, (40, 6, 6, 2)).astype(np.float32)
    labels = np.argmax(model.predict(images, verbose=0), axis=-1)  # B is 100% right on its own labels
    curve = clp_curve(model, (images, labels), {"bd": (images, np.zeros(40, dtype=np.int64))},
                      ClpSettings(u_grid=(0, 2, 3.0, 10), accuracy_budget=100.0))
    assert list(curve.points) == ["0", "2", "3", "10"] and curve.unpruned.clean_accuracy == 100.0
    assert curve.points["2"].pruned == {"conv_a": (4,)} and curve.points["10"].pruned == {}
    assert curve.points["10"].clean_accuracy == 100.0 and curve.chosen_u == "0"
    assert set(curve.points["0"].asr) == {"bd"}
    built = build_clp_model(model, curve.bounds, "2")
    kernel, bias = built.get_layer("conv_a").get_weights()
    assert not kernel[..., 4].any() and bias[4] == 0.0
    np.testing.assert_array_equal(kernel[..., :4], model.get_layer("conv_a").get_weights()[0][..., :4])
    assert model.get_layer("conv_a").get_weights()[0][..., 4].any(), "B was modified"
    with pytest.raises(BadInputError, match=r"clp\.layers: layer 'flatten"):
        model_bounds(model, [model.layers[-2].name])


def test_the_statistic_on_a_hand_computed_case():
    statistic = clp_statistic({"a": np.array([1.0, 1.0, 1.0, 1.0, 5.0]), "b": np.array([2.0, 2.0, 3.0]),
                               "flat": np.array([4.0, 4.0])})
    z_a = 3.2 / math.sqrt(3.2)  # (5 - 1.8) / sqrt(3.2)
    z_b = (3.0 - 7.0 / 3.0) / math.sqrt(1.0 / 3.0)
    assert statistic.layer_z == pytest.approx({"a": z_a, "b": z_b, "flat": 0.0})
    assert statistic.evidence == ClpEvidence("a", 4, pytest.approx(z_a), 5.0)
    assert statistic.score == pytest.approx(1.0 / (1.0 + math.exp(-(z_a - 3.0) / 0.5)))
    assert 0.0 < statistic_score(0.0) < statistic_score(3.0) == 0.5 < statistic_score(6.0) < 1.0


def test_settings_keep_u_as_exact_keys_and_refuse_bad_values():
    settings = ClpSettings.model_validate({"u_grid": [3, 0.5, "1.50", 0.1 + 0.2], "layers": ["conv_1"]})
    assert settings.u_grid == ("0.30000000000000004", "0.5", "1.5", "3") and settings.layers == ("conv_1",)
    assert decimal_key(2.0) == "2" and decimal_key("2.50") == "2.5"
    for bad in ({"u_grid": []}, {"u_grid": [1, "1.0"]}, {"u_grid": [-1]}, {"u_grid": ["x"]}, {"u_grid": "3"},
                {"accuracy_budget": 0}, {"accuracy_budget": "1"}, {"layers": ["a", "a"]}, {"u": 3}):
        with pytest.raises(ValidationError):
            ClpSettings.model_validate(bad)
