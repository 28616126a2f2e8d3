"""Channel Lipschitzness-based pruning (CLP; Zheng et al., ECCV 2022): data-free, from the weights alone.

A channel's upper bound of its Lipschitz constant (UCLC) is the largest singular value of its kernel
reshaped to (input channels) x (kernel positions), times |gamma / sigma| of a BatchNormalization that
follows the convolution, where the network has one (DeepID has none). A backdoor's trigger must move a few
channels a long way from a small patch of input, so their bounds stand out in their layer: CLP prunes,
in each convolution, the channels whose bound exceeds mean + u x std of the layer's bounds.

The standard deviation is the sample one (n - 1 in the denominator), as torch's std in the authors' code.
Pruning zeroes the channel's kernel and bias (a BatchNormalization after it then outputs a constant, as
with the authors' zeroed gamma). u is chosen on clean validation data by one rule (choose_u); the
poisoned sets are measured along the curve for the record only.

The CLP statistic (clp_statistic) is the detector built on the same bounds: how far the largest bound of
a layer stands out, max over layers, mapped to a score in [0, 1] by a fixed logistic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from badnet_prune.numerics.channel_curve import CurvePoint, evaluate_prunings
from badnet_prune.numerics.clp_settings import ClpSettings
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.network_split import CHANNELWISE_LAYERS
from badnet_prune.numerics.pruned_model import build_pruned_layers_model
from badnet_prune.numerics.tf_setup import keras

# The statistic's fixed map z -> score: a logistic centred on the paper's default u (a channel 3 standard
# deviations above its layer's mean is what CLP prunes by default), half a standard deviation per e-fold.
STATISTIC_CENTER = 3.0
STATISTIC_SCALE = 0.5


@dataclass(frozen=True)
class ClpEvidence:
    """The channel that stands out most: its layer, index, z-value ((bound - mean) / std) and bound."""

    layer: str
    channel: int
    z: float
    bound: float


@dataclass(frozen=True)
class ClpStatistic:
    """A per-model score in [0, 1] (higher: more likely backdoored), its evidence, and each layer's largest z."""

    score: float
    evidence: ClpEvidence | None
    layer_z: dict[str, float]


@dataclass(frozen=True)
class ClpCurve:
    """CLP at every u of the grid (points by u key, ascending), B unpruned, and the u the rule chose
    (None: no u keeps clean validation accuracy within the budget, so nothing is pruned)."""

    bounds: dict[str, np.ndarray]
    unpruned: CurvePoint
    points: dict[str, CurvePoint]
    chosen_u: str | None
    settings: ClpSettings

    @property
    def chosen(self) -> CurvePoint:
        """The chosen point, or B where no u qualifies."""
        return self.unpruned if self.chosen_u is None else self.points[self.chosen_u]


def channel_lipschitz_bounds(kernel: np.ndarray, batch_norm_scale: np.ndarray | None = None) -> np.ndarray:
    """(out,) float64: per output channel k of a Conv2D kernel (kh, kw, in, out), the largest singular value
    of kernel[..., k] as an (in) x (kh * kw) matrix, times |batch_norm_scale[k]| where one is given."""
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 4:
        raise ValueError(f"a Conv2D kernel has 4 axes (kh, kw, in, out), got shape {kernel.shape}")
    height, width, inputs, outputs = kernel.shape
    matrices = np.transpose(kernel, (3, 2, 0, 1)).reshape(outputs, inputs, height * width)
    bounds = np.linalg.matrix_norm(matrices, ord=2)
    if batch_norm_scale is None:
        return bounds
    scale = np.abs(np.asarray(batch_norm_scale, dtype=np.float64))
    if scale.shape != (outputs,):
        raise ValueError(f"the BatchNormalization scale has shape {scale.shape}, the kernel {outputs} channels")
    return bounds * scale


def following_batch_norm_scale(layer: keras.layers.Layer) -> np.ndarray | None:
    """gamma / sqrt(moving variance + epsilon) of the BatchNormalization on this Conv2D's channels, reached
    through channelwise layers (activations, pooling) that alone consume its output; None where there is none."""
    channel_axis = 3 if layer.data_format == "channels_last" else 1
    current = layer
    while True:
        consumers = {id(node.operation): node.operation for node in current._outbound_nodes}
        if len(consumers) != 1:
            return None
        (consumer,) = consumers.values()
        if isinstance(consumer, keras.layers.BatchNormalization):
            if consumer.axis % 4 != channel_axis:
                return None
            variance = np.asarray(consumer.moving_variance, dtype=np.float64)
            gamma = np.asarray(consumer.gamma, dtype=np.float64) if consumer.scale else np.ones_like(variance)
            return gamma / np.sqrt(variance + consumer.epsilon)
        if not isinstance(consumer, CHANNELWISE_LAYERS):
            return None
        current = consumer


def conv_layers(model: keras.Model, names: Sequence[str] = ()) -> list[keras.layers.Conv2D]:
    """The named Conv2D layers (all of the model's, in its order, where `names` is empty); BadInputError names
    a missing layer or one that is not a Conv2D."""
    if not names:
        found = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        if not found:
            raise BadInputError("clp.layers", "the model has no Conv2D layer")
        return found
    layers = []
    for name in names:
        try:
            layer = model.get_layer(name)
        except ValueError:
            raise BadInputError("clp.layers", f"the model has no layer {name!r}") from None
        if not isinstance(layer, keras.layers.Conv2D):
            raise BadInputError("clp.layers", f"layer {name!r} is a {type(layer).__name__}, not a Conv2D")
        layers.append(layer)
    return layers


def model_bounds(model: keras.Model, names: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Every named Conv2D's channel bounds (every Conv2D's where `names` is empty), by layer name."""
    return {
        layer.name: channel_lipschitz_bounds(layer.get_weights()[0], following_batch_norm_scale(layer))
        for layer in conv_layers(model, names)
    }


def channels_above(bounds: np.ndarray, u: float | str) -> np.ndarray:
    """Indices (ascending) of the channels whose bound exceeds mean + u x std (sample std) of `bounds`."""
    bounds = np.asarray(bounds, dtype=np.float64)
    if bounds.size < 2:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(bounds > bounds.mean() + float(u) * bounds.std(ddof=1))


def clp_pruning(bounds: Mapping[str, np.ndarray], u: float | str) -> dict[str, tuple[int, ...]]:
    """Per layer, the channels CLP prunes at u."""
    return {name: tuple(int(c) for c in channels_above(values, u)) for name, values in bounds.items()}


def choose_u(points: Mapping[str, CurvePoint], unpruned: CurvePoint, accuracy_budget: float) -> str | None:
    """The rule: the smallest u whose clean validation accuracy is at most accuracy_budget points below B's.

    A smaller u prunes a superset of a larger u's channels, so this is the most pruning the budget allows;
    None where no u of the grid qualifies (B stays as it is)."""
    qualifying = [key for key, point in points.items()
                  if unpruned.clean_accuracy - point.clean_accuracy <= accuracy_budget]
    return min(qualifying, key=float) if qualifying else None


def clp_curve(
    model: keras.Model,
    clean: tuple[np.ndarray, np.ndarray],
    poisoned: Mapping[str, tuple[np.ndarray, np.ndarray]],
    settings: ClpSettings | None = None,
    input_scale: float = 1.0,
) -> ClpCurve:
    """CLP over the settings' u grid on clean validation data (and each poisoned set, for the record), and
    the u the rule chooses. Images are raw pixels as stored; B is not modified."""
    settings = settings or ClpSettings()
    bounds = model_bounds(model, settings.layers)
    prunings = {key: clp_pruning(bounds, key) for key in settings.u_grid}
    measured = evaluate_prunings(model, {"": {}, **prunings}, clean, poisoned, input_scale)
    unpruned = measured.pop("")
    return ClpCurve(bounds, unpruned, measured, choose_u(measured, unpruned, settings.accuracy_budget), settings)


def build_clp_model(model: keras.Model, bounds: Mapping[str, np.ndarray], u: float | str | None,
                    name: str = "B_prime") -> keras.Model:
    """B with CLP's channels at u zeroed (kernel and bias exactly zero); u None prunes nothing."""
    return build_pruned_layers_model(model, {} if u is None else clp_pruning(bounds, u), name=name)


def clp_statistic(bounds: Mapping[str, np.ndarray]) -> ClpStatistic:
    """Per layer z = (largest bound - mean) / std (sample std; 0 for a layer of one channel or of equal bounds);
    the evidence is the layer with the largest z (the first on ties), and the score
    1 / (1 + exp(-(z - STATISTIC_CENTER) / STATISTIC_SCALE))."""
    layer_z: dict[str, float] = {}
    evidence = None
    for name, values in bounds.items():
        values = np.asarray(values, dtype=np.float64)
        std = values.std(ddof=1) if values.size > 1 else 0.0
        channel = int(np.argmax(values))
        z = float((values[channel] - values.mean()) / std) if std > 0 else 0.0
        layer_z[name] = z
        if evidence is None or z > evidence.z:
            evidence = ClpEvidence(name, channel, z, float(values[channel]))
    z = evidence.z if evidence is not None else 0.0
    return ClpStatistic(statistic_score(z), evidence, layer_z)


def statistic_score(z: float) -> float:
    """The fixed monotone map of the largest z to [0, 1]."""
    return 1.0 / (1.0 + math.exp(-(z - STATISTIC_CENTER) / STATISTIC_SCALE))
