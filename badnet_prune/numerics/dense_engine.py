"""The dense engine: every image at every pruning step, in a few batched calls on the device.

The sparse engine (labelers.CutLabeler with pruning.prune_range) re-runs the tail only on the
images a newly pruned channel changes: the least arithmetic, and the fastest on CPUs. On a GPU
that arithmetic is nearly free (a whole pass over the lab's 11,547 validation images costs an
H200 about 0.13 s) and the sparse sweep's seconds are host work instead: gathering live rows,
masking on the host, copying and padding (issue 18: 2.3x the batched loop on an H200). Here the
cut activations are put on the device once per data set and each call evaluates a block of
consecutive steps for a block of images: the step masks are applied on the device, the tail runs
on every (step, image) row, and only the top-1 labels come back.

Exactness: a pruned channel's filter gives its pruned value at the cut (network_split), so the
tail's input at step k is the cut with order[:k] at those values, the same input the sparse
engine and the whole pruned model give the tail; on a CPU the labels equal the reference's at
every step (tests/test_pruning_exact.py). Every call has one of a few fixed shapes (a block of
1, 2, 4, 8 or 16 steps by a fixed block of images; a range is cut into such blocks, the largest
first), so that a backend that compiles per shape (XLA) compiles each once per architecture.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from badnet_prune.numerics.inference import INFERENCE_BATCH, jax_weights, shared_jax_program
from badnet_prune.numerics.network_split import SplitNetwork
from badnet_prune.numerics.tf_setup import accelerator_present, configure_tensorflow, keras, tf

# (step, image) rows per call: 16 steps of 1024 images; the tail's activations for a block stay
# about 160 MB, small beside a GPU's memory, and the call is long enough to keep the device busy.
DENSE_ROWS = 16 * INFERENCE_BATCH


def chosen_engine(setting: str) -> str:
    """'dense' or 'sparse' for the setting BADNET_PRUNE_ENGINE: auto is dense where an accelerator is visible."""
    if setting != "auto":
        return setting
    return "dense" if accelerator_present() else "sparse"


class DenseLabeler:
    """Labels at pruning steps from device-resident cut activations, many steps per call.

    `activations`, per data set name, are the cut activations (n, h, w, C) on the host; each is
    copied to the device when the labeler is made, padded to whole image blocks (a worker keeps
    the labeler, so every task on the same model and data sets finds them there). step_labels(name, order, start,
    stop) gives the (stop - start, n) labels of steps start..stop-1 (step k prunes order[:k]);
    calling the labeler as labels_at(name, pruned, rows) gives one set of pruned channels.
    image_block (default: the largest set's size rounded up to a power of two, at most
    INFERENCE_BATCH) and rows_per_call fix the programs' two shapes.
    """

    def __init__(self, split: SplitNetwork, activations: Mapping[str, np.ndarray], rows_per_call: int = DENSE_ROWS,
                 image_block: int | None = None):
        if split.tail is None:
            raise ValueError("the network has no split; use WholeModelLabeler")
        configure_tensorflow()
        self._pruned_values = np.asarray(split.pruned_values, dtype=np.float32)
        self._channels = len(self._pruned_values)
        largest = max((len(cut) for cut in activations.values()), default=1)
        self.image_block = image_block or min(INFERENCE_BATCH, _power_of_two_at_least(largest))
        self.step_block = max(1, rows_per_call // self.image_block)
        self._counts = {name: len(cut) for name, cut in activations.items()}
        self._device = {name: _to_device(_padded(cut, self.image_block)) for name, cut in activations.items()}
        self.device_bytes = sum(int(np.prod(cut.shape)) * 4 for cut in self._device.values())
        self._split = split
        self._cut_shape = tuple(int(d) for d in split.tail.input_shape[1:])

    def step_labels(self, name: str, order: Sequence[int], start: int, stop: int) -> np.ndarray:
        """(stop - start, n) top-1 labels of data set `name` at steps start..stop-1 of `order`."""
        masks = step_masks(order, start, stop, self._channels)
        return self._labels(name, masks)

    def __call__(self, name: str, pruned: Sequence[int], rows: np.ndarray | None = None) -> np.ndarray:
        mask = np.zeros((1, self._channels), dtype=bool)
        mask[0, np.asarray(list(pruned), dtype=np.int64)] = True
        labels = self._labels(name, mask)[0]
        return labels if rows is None else labels[rows]

    def _labels(self, name: str, masks: np.ndarray) -> np.ndarray:
        """Labels at each mask's step, in blocks of at most step_block steps, each a power of two or the
        step block (a 10-step range runs as 8 + 2, so no step is evaluated for nothing)."""
        count = self._counts[name]
        cut = self._device[name]
        out = np.empty((len(masks), count), dtype=np.int64)
        first = 0
        while first < len(masks):
            block = min(self.step_block, _power_of_two_at_most(len(masks) - first))
            program = self._program(block)
            steps = masks[first : first + block]
            for image in range(0, count, self.image_block):
                labels = np.asarray(program(cut[image : image + self.image_block], steps))
                kept = min(self.image_block, count - image)
                out[first : first + block, image : image + kept] = labels[:, :kept]
            first += block
        return out

    def _program(self, steps: int):
        """The compiled program for blocks of `steps` steps, kept on the network for its other labelers."""
        key = ("dense", self.image_block, steps)
        if key not in self._split.programs:
            self._split.programs[key] = _compile(self._split.tail, self._pruned_values, self._cut_shape,
                                                 self.image_block, steps)
        return self._split.programs[key]


def step_masks(order: Sequence[int], start: int, stop: int, channels: int) -> np.ndarray:
    """(stop - start, channels) bool: row k - start marks the channels step k prunes (order[:k])."""
    order = np.asarray(list(order), dtype=np.int64)
    position = np.full(channels, channels + 1, dtype=np.int64)
    position[order] = np.arange(len(order))
    return position[None, :] < np.arange(start, stop)[:, None]


def _power_of_two_at_most(count: int) -> int:
    """The largest power of two <= count (count >= 1)."""
    return 1 << (int(count).bit_length() - 1)


def _power_of_two_at_least(count: int) -> int:
    """The smallest power of two >= count: block sizes from a few fixed shapes."""
    return 1 << max(0, int(count - 1).bit_length())


def _padded(cut: np.ndarray, block: int) -> np.ndarray:
    """The cut with zero images appended up to a whole number of blocks (their labels are dropped)."""
    extra = -len(cut) % block
    cut = np.asarray(cut, dtype=np.float32)
    if extra == 0:
        return cut
    return np.concatenate([cut, np.zeros((extra, *cut.shape[1:]), dtype=np.float32)])


def _to_device(array: np.ndarray):
    """The array on the default device (the GPU where there is one), copied once."""
    if tf is not None:
        return tf.constant(array)
    import jax

    return jax.device_put(array)


def _compile(tail: keras.Model, pruned_values: np.ndarray, cut_shape: tuple[int, ...], images: int, steps: int):
    """A program (cut block, step masks) -> (steps, images) labels, for exactly these shapes."""

    def labels(call, cut, masks, values):
        masked = keras.ops.where(masks[:, None, None, None, :], values, cut[None])
        outputs = call(keras.ops.reshape(masked, (steps * images, *cut_shape)))
        return keras.ops.reshape(keras.ops.argmax(outputs, axis=-1), (steps, images))

    if tf is not None:
        spec = [tf.TensorSpec((images, *cut_shape), tf.float32), tf.TensorSpec((steps, len(pruned_values)), tf.bool)]
        return tf.function(lambda cut, masks: labels(lambda x: tail(x, training=False), cut, masks, pruned_values),
                           input_signature=spec)
    import jax

    def build(template: keras.Model):
        def run(trainable, fixed, cut, masks, values):
            return labels(lambda x: template.stateless_call(trainable, fixed, x, training=False)[0], cut, masks,
                          values)

        return jax.jit(run)

    program = shared_jax_program(tail, ("dense", cut_shape, images, steps), build)

    def call(cut, masks):
        return program(*jax_weights(tail), cut, masks, pruned_values)

    return call
