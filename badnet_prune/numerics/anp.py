"""Adversarial neuron pruning (ANP; Wu and Wang, NeurIPS 2021) on the Conv2D channels the settings name.

Each channel k of a masked layer gets a mask m_k in [0, 1] and multiplicative perturbations of its
weights and bias, delta_k and xi_k in [-eps, eps]: w_k -> (m_k + delta_k) w_k, b_k -> (1 + xi_k) b_k.
The masks minimise alpha L(m, 0) + (1 - alpha) max_{delta, xi} L(m, delta, xi) (cross-entropy on clean
validation images): channels whose perturbation raises the clean loss most, which a backdoor's own
channels do, lose their masks. Per iteration, as the authors' code: a batch drawn with replacement; delta
and xi drawn uniformly in [-eps, eps], then perturbation_steps signed-gradient ascent steps of
eps / perturbation_steps on that batch's loss, each clipped back to [-eps, eps]; then one SGD step
(momentum 0.9) of the masks on the combined loss at that perturbation, and the masks clipped to [0, 1].
The network runs in inference mode (a BatchNormalization keeps its moving statistics). Pruning then
zeroes the channels with the lowest masks: those at or below a threshold, or a given number of them
(pruned_model.build_pruned_layers_model builds that net: built-in layers only, kernel and bias exactly zero).

The model is never modified: ANP trains a clone in which each masked Conv2D computes with its kernel
and bias scaled per channel, and whose softmax output layer gives its logits (the loss is computed from
them). Everything before the first masked layer is fixed, so it runs once over the clean images and
each iteration runs only the rest. It runs on Keras's TensorFlow backend (tf.function over
GradientTapes) and its JAX backend (jax.grad under one jax.jit), with the same draws; each is
deterministic for a seed on one machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from badnet_prune.numerics.activations import cut_activations
from badnet_prune.numerics.anp_settings import AnpSettings
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.inference import compiled_forward, scale_images
from badnet_prune.numerics.tf_setup import configure_tensorflow, keras, tf

MOMENTUM = 0.9  # the masks' SGD momentum in the authors' code


@dataclass(frozen=True)
class AnpResult:
    """The masks per layer ((filters,) float32 in [0, 1]), the adversary's last perturbation per layer
    ((delta, xi), each in [-epsilon, epsilon]), the mask step's loss at every iteration, the number of
    clean images and the seconds the optimisation took (the head's pass included)."""

    masks: dict[str, np.ndarray]
    perturbations: dict[str, tuple[np.ndarray, np.ndarray]]
    losses: np.ndarray
    image_count: int
    seconds: float
    settings: AnpSettings


class _ScaledConv2D(keras.layers.Conv2D):
    """A Conv2D computing with kernel[..., k] x weight_scale[k] and bias[k] x bias_scale[k]; ANP swaps the
    scales' values in through stateless_call. Lives only in ANP's in-memory clone, never in a file."""

    def build(self, input_shape):
        super().build(input_shape)
        self.weight_scale = self.add_weight(name="weight_scale", shape=(self.filters,), initializer="ones",
                                            trainable=False)
        self.bias_scale = self.add_weight(name="bias_scale", shape=(self.filters,), initializer="ones",
                                          trainable=False)

    def call(self, inputs):
        outputs = self.convolution_op(inputs, self.kernel * self.weight_scale)
        if self.use_bias:
            shape = ((1,) * (self.rank + 1) + (self.filters,) if self.data_format == "channels_last"
                     else (1, self.filters) + (1,) * self.rank)
            outputs = keras.ops.add(outputs, keras.ops.reshape(self.bias * self.bias_scale, shape))
        return outputs if self.activation is None else self.activation(outputs)


def iteration_draws(rng: np.random.Generator, image_count: int, channels: Sequence[int],
                    settings: AnpSettings) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """One iteration's randomness, in this order: the batch's rows (with replacement), then per masked layer
    the initial delta, then per masked layer the initial xi, uniform in [-epsilon, epsilon] (float32)."""
    rows = rng.integers(0, image_count, settings.batch_size)
    delta = [rng.uniform(-settings.epsilon, settings.epsilon, count).astype(np.float32) for count in channels]
    xi = [rng.uniform(-settings.epsilon, settings.epsilon, count).astype(np.float32) for count in channels]
    return rows, delta, xi


def optimise_masks(
    model: keras.Model,
    clean_images: np.ndarray,
    clean_labels: np.ndarray,
    settings: AnpSettings | None = None,
    input_scale: float = 1.0,
    on_progress: Callable[[int], None] | None = None,
) -> AnpResult:
    """ANP's masks for the settings' layers, learnt on the clean validation images (raw pixels as stored;
    input_scale is the model's convention, 1 or 255); on_progress(iterations done) after each iteration."""
    settings = settings or AnpSettings()
    configure_tensorflow()
    start = time.perf_counter()
    labels = _checked_data(model, clean_images, clean_labels)
    layers = masked_layers(model, settings.layers)
    head, tail, slots, from_logits = _perturbable_network(model, [layer.name for layer in layers])
    images = scale_images(np.asarray(clean_images, dtype=np.float32), input_scale)
    inputs = images if head is None else cut_activations(compiled_forward(head), [images], 1.0)
    channels = [int(layer.filters) for layer in layers]
    if tf is not None:
        tf.config.experimental.enable_op_determinism()
        iterate, masks_now = _tf_iteration(tail, slots, channels, inputs, labels, settings, from_logits)
    else:
        iterate, masks_now = _jax_iteration(tail, slots, channels, inputs, labels, settings, from_logits)

    rng = np.random.default_rng(settings.seed)
    losses = np.empty(settings.iterations, dtype=np.float64)
    delta = xi = []
    for iteration in range(settings.iterations):
        rows, delta_0, xi_0 = iteration_draws(rng, len(labels), channels, settings)
        loss, delta, xi = iterate(rows, delta_0, xi_0)
        losses[iteration] = float(loss)
        if on_progress is not None:
            on_progress(iteration + 1)
    names = [layer.name for layer in layers]
    return AnpResult(
        masks={name: mask for name, mask in zip(names, masks_now(), strict=True)},
        perturbations={name: (np.asarray(d, dtype=np.float32), np.asarray(x, dtype=np.float32))
                       for name, d, x in zip(names, delta, xi, strict=True)},
        losses=losses, image_count=len(labels), seconds=time.perf_counter() - start, settings=settings,
    )


def masked_layers(model: keras.Model, names: Sequence[str]) -> list[keras.layers.Conv2D]:
    """The named layers, each a Conv2D; BadInputError names a missing one or one of another kind."""
    layers = []
    for name in names:
        try:
            layer = model.get_layer(name)
        except ValueError:
            known = ", ".join(layer.name for layer in model.layers)
            raise BadInputError("anp.layers", f"the model has no layer {name!r} (its layers: {known})") from None
        if not isinstance(layer, keras.layers.Conv2D):
            raise BadInputError("anp.layers", f"layer {name!r} is a {type(layer).__name__}, not a Conv2D")
        layers.append(layer)
    return layers


def pruning_order(masks: np.ndarray) -> np.ndarray:
    """One layer's channels, lowest mask first, equal masks in channel order: an order for
    pruning.prune_range (the exact sparse sweep of the prune layer)."""
    return np.argsort(np.asarray(masks, dtype=np.float64), kind="stable")


def global_order(masks: Mapping[str, np.ndarray]) -> list[tuple[str, int]]:
    """(layer, channel) over several layers, lowest mask first; ties in the mapping's layer order, then by channel."""
    entries = [(float(value), position, channel, name)
               for position, (name, values) in enumerate(masks.items())
               for channel, value in enumerate(np.asarray(values, dtype=np.float64))]
    return [(name, channel) for _, _, channel, name in sorted(entries)]


def pruned_by_threshold(masks: Mapping[str, np.ndarray], threshold: float) -> dict[str, tuple[int, ...]]:
    """Per layer, the channels whose mask is at or below `threshold` (ascending)."""
    return {name: tuple(int(c) for c in np.flatnonzero(np.asarray(values) <= threshold))
            for name, values in masks.items()}


def pruned_by_count(masks: Mapping[str, np.ndarray], count: int) -> dict[str, tuple[int, ...]]:
    """Per layer, which of the `count` lowest masks over all layers (global_order) fall in it (ascending)."""
    order = global_order(masks)
    if not 0 <= count <= len(order):
        raise ValueError(f"cannot prune {count} of {len(order)} channels")
    chosen = {name: [] for name in masks}
    for name, channel in order[:count]:
        chosen[name].append(channel)
    return {name: tuple(sorted(channels)) for name, channels in chosen.items()}


def count_prunings(masks: Mapping[str, np.ndarray], counts: Sequence[int]) -> dict[str, dict[str, tuple[int, ...]]]:
    """pruned_by_count per count, keyed by the count's decimal string: the points of a whole-model curve
    (channel_curve.evaluate_prunings) where ANP masks several layers."""
    return {str(int(count)): pruned_by_count(masks, int(count)) for count in counts}


def _checked_data(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    if len(images) != len(labels) or not len(labels):
        raise ValueError(f"ANP needs clean images with one label each, got {len(images)} images, {len(labels)} labels")
    classes = int(model.output_shape[-1])
    if not (labels.min() >= 0 and labels.max() < classes):
        raise ValueError(f"clean labels must be classes 0..{classes - 1} of the model, got {labels.min()}.."
                         f"{labels.max()}")
    if not np.isfinite(images).all():
        raise ValueError("clean images hold NaN or infinite pixel values")
    return labels


def _perturbable_network(model: keras.Model, names: Sequence[str]):
    """A clone of B with the named Conv2D layers scaled, cut before the first of them.

    Returns (head or None, tail, slots, from_logits): head maps the images to the tail's input (None where
    the tail starts at the images); slots[i] are the indices of layer i's (weight_scale, bias_scale) in
    tail.non_trainable_variables; from_logits says whether the tail gives logits (B's softmax output
    layer made linear) or probabilities.
    """
    last = model.layers[-1]
    softmax_out = (len(model.outputs) == 1 and model.outputs[0] is last.output
                   and isinstance(last, keras.layers.Dense | keras.layers.Activation)
                   and last.activation is keras.activations.softmax)

    def clone_layer(layer):
        config = layer.get_config()
        if layer.name in names:
            return _ScaledConv2D.from_config(config)
        if softmax_out and layer is last:
            config["activation"] = "linear"
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    for layer in clone.layers:
        if not layer.weights:
            continue
        weights = model.get_layer(layer.name).get_weights()
        if isinstance(layer, _ScaledConv2D):
            weights += [np.ones(layer.filters, np.float32), np.ones(layer.filters, np.float32)]
        if weights:
            layer.set_weights(weights)
    clone.trainable = False
    scaled = [clone.get_layer(name) for name in names]
    first = min(scaled, key=clone.layers.index)
    head, tail = None, clone
    if first.input is not clone.inputs[0]:
        try:
            tail = keras.Model(first.input, clone.output, name="anp_tail")
            head = keras.Model(clone.inputs[0], first.input, name="anp_head")
        except ValueError:  # the graph reaches the output around the first masked layer: run all of it
            head, tail = None, clone
    position = {id(variable): index for index, variable in enumerate(tail.non_trainable_variables)}
    slots = [(position[id(layer.weight_scale)], position[id(layer.bias_scale)]) for layer in scaled]
    return head, tail, slots, softmax_out


def _loss_function(tail: keras.Model, slots, from_logits: bool):
    """loss(fixed values, weight scales, bias scales, x, y): the tail's mean cross-entropy with the scales
    swapped into the masked layers (a pure function of its arguments, for either backend's gradients)."""

    def loss(fixed_values, weight_scales, bias_scales, x, y):
        values = list(fixed_values)
        for (weight_slot, bias_slot), weight, bias in zip(slots, weight_scales, bias_scales, strict=True):
            values[weight_slot], values[bias_slot] = weight, bias
        outputs, _ = tail.stateless_call([], values, x, training=False)
        return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, outputs, from_logits=from_logits))

    return loss


def _tf_iteration(tail, slots, channels, inputs, labels, settings: AnpSettings, from_logits: bool):
    """The compiled iteration (rows, delta_0, xi_0) -> (loss, delta, xi), and a function giving the masks."""
    loss_at = _loss_function(tail, slots, from_logits)
    masks = [keras.Variable(np.ones(count, np.float32), name=f"anp_mask_{i}") for i, count in enumerate(channels)]
    optimizer = keras.optimizers.SGD(settings.mask_learning_rate, momentum=MOMENTUM)
    optimizer.build(masks)
    fixed = list(tail.non_trainable_variables)
    data_x, data_y = tf.convert_to_tensor(inputs), tf.convert_to_tensor(labels)
    eps, step, alpha = settings.epsilon, settings.epsilon / settings.perturbation_steps, settings.alpha
    count = len(channels)
    noise_spec = [tf.TensorSpec((c,), tf.float32) for c in channels]

    @tf.function(input_signature=[tf.TensorSpec((None,), tf.int64), noise_spec, noise_spec], autograph=False)
    def iteration(rows, delta, xi):
        x, y = tf.gather(data_x, rows), tf.gather(data_y, rows)
        values = [v.value for v in fixed]
        delta, xi = list(delta), list(xi)
        for _ in range(settings.perturbation_steps):
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(delta + xi)
                adversarial = loss_at(values, [m + d for m, d in zip(masks, delta, strict=True)],
                                      [1.0 + e for e in xi], x, y)
            gradients = tape.gradient(adversarial, delta + xi, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            moved = [tf.clip_by_value(p + step * tf.sign(g), -eps, eps)
                     for p, g in zip(delta + xi, gradients, strict=True)]
            delta, xi = moved[:count], moved[count:]
        with tf.GradientTape() as tape:
            natural = loss_at(values, [m.value for m in masks], [tf.ones_like(e) for e in xi], x, y)
            robust = loss_at(values, [m + d for m, d in zip(masks, delta, strict=True)], [1.0 + e for e in xi], x, y)
            loss = alpha * natural + (1.0 - alpha) * robust
        gradients = tape.gradient(loss, masks, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        optimizer.apply_gradients(zip(gradients, masks, strict=True))
        for mask in masks:
            mask.assign(tf.clip_by_value(mask.value, 0.0, 1.0))
        return loss, delta, xi

    def run(rows, delta, xi):
        loss, delta, xi = iteration(np.asarray(rows, dtype=np.int64), delta, xi)
        return loss, [d.numpy() for d in delta], [e.numpy() for e in xi]

    return run, lambda: [np.asarray(mask.numpy(), dtype=np.float32) for mask in masks]


def _jax_iteration(tail, slots, channels, inputs, labels, settings: AnpSettings, from_logits: bool):
    """_tf_iteration on Keras's JAX backend: the same iteration as one jitted pure function of the masks, the
    optimizer's state and the draws; the masks and the optimizer's state are carried between calls."""
    import jax
    import jax.numpy as jnp

    loss_at = _loss_function(tail, slots, from_logits)
    masks = [keras.Variable(np.ones(count, np.float32), name=f"anp_mask_{i}") for i, count in enumerate(channels)]
    optimizer = keras.optimizers.SGD(settings.mask_learning_rate, momentum=MOMENTUM)
    optimizer.build(masks)
    data = (jnp.asarray(inputs), jnp.asarray(labels, dtype=jnp.int32))
    eps, step, alpha = settings.epsilon, settings.epsilon / settings.perturbation_steps, settings.alpha

    @jax.jit
    def iteration(mask_values, optimizer_values, fixed_values, data, rows, delta, xi):
        x, y = data[0][rows], data[1][rows]

        def adversarial(delta, xi):
            return loss_at(fixed_values, [m + d for m, d in zip(mask_values, delta, strict=True)],
                           [1.0 + e for e in xi], x, y)

        for _ in range(settings.perturbation_steps):
            delta_gradients, xi_gradients = jax.grad(adversarial, argnums=(0, 1))(delta, xi)
            delta = [jnp.clip(d + step * jnp.sign(g), -eps, eps) for d, g in zip(delta, delta_gradients, strict=True)]
            xi = [jnp.clip(e + step * jnp.sign(g), -eps, eps) for e, g in zip(xi, xi_gradients, strict=True)]

        def combined(mask_values):
            natural = loss_at(fixed_values, mask_values, [jnp.ones_like(e) for e in xi], x, y)
            robust = loss_at(fixed_values, [m + d for m, d in zip(mask_values, delta, strict=True)],
                             [1.0 + e for e in xi], x, y)
            return alpha * natural + (1.0 - alpha) * robust

        loss, gradients = jax.value_and_grad(combined)(mask_values)
        mask_values, optimizer_values = optimizer.stateless_apply(optimizer_values, gradients, mask_values)
        return loss, [jnp.clip(m, 0.0, 1.0) for m in mask_values], optimizer_values, delta, xi

    state = {"masks": [m.value for m in masks], "optimizer": [v.value for v in optimizer.variables]}
    fixed_values = [v.value for v in tail.non_trainable_variables]

    def run(rows, delta, xi):
        loss, state["masks"], state["optimizer"], delta, xi = iteration(
            state["masks"], state["optimizer"], fixed_values, data, np.asarray(rows, dtype=np.int32), delta, xi)
        return loss, [np.asarray(d) for d in delta], [np.asarray(e) for e in xi]

    return run, lambda: [np.asarray(mask, dtype=np.float32) for mask in state["masks"]]
