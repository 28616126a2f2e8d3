"""Bench: the pruning engine against the lab notebook's loop, on the same inputs, in one process.

(a) the notebook's loop: for k = 0..C zero k filters of conv_3 and call the model eagerly on the
    whole array, argmax, clean accuracy only;
(b) the same loop batched: a compiled tf.function over batches of 1024;
(c) this engine doing more: cut activations once for clean AND poisoned images, the ranking,
    then prune_range over every step with clean accuracy and ASR.
(d) the dense engine (badnet_prune.numerics.dense_engine, what BADNET_PRUNE_ENGINE=auto picks on a GPU):
    (c)'s work with the cut activations on the device and every image evaluated at every step,
    many steps per call. Goal on a GPU: (b)/(d) >= 20x.
(c)'s and (d)'s per-step correct counts must equal (b)'s, or the bench fails.

--check-cpu (JAX with a GPU): the dense sweep again on the CPU; every (step, image) label of the
GPU's must equal the CPU's, or differ only where the CPU's top two probabilities are within
float32 summation-order error of each other (printed: how many differ and their largest gap).

On a GPU machine without TensorFlow, KERAS_BACKEND=jax runs the same engine on Keras's JAX
backend ((b) and (c) then run compiled XLA programs of one batch shape; see inference.py).

Inputs are synthetic faces (badnet_prune.synth) of the lab's validation size by default; the
poisoned set is the same photos with sunglasses. The lab's model does not know these people,
so labels are B's own top-1 labels (acc0 = 100%) and the target is B's most common label on the
poisoned set: the curve still falls as channels are pruned, which is all the timing needs.

    .venv/bin/python bench/engine.py [--images 11547] [--weights ../shared/csaw/bd_weights.h5]
    KERAS_BACKEND=jax python3 bench/engine.py --skip-eager --check-cpu      # on a GPU machine with JAX
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from badnet_prune.files.model_io import load_model
from badnet_prune.numerics.activations import channel_means, cut_activations, live_channels, rank_activation_batches
from badnet_prune.numerics.dense_engine import DenseLabeler
from badnet_prune.numerics.inference import INFERENCE_BATCH, compiled_forward, forward_labels
from badnet_prune.numerics.labelers import CutLabeler
from badnet_prune.numerics.network_split import split_network
from badnet_prune.numerics.pruned_model import zeroed_filters
from badnet_prune.numerics.pruning import LabeledSet, prune_range, prune_range_dense
from badnet_prune.numerics.ranking import rank_channels
from badnet_prune.numerics.tf_setup import accelerator_present, keras, tf
from badnet_prune.synth.faces import render, sample_identities, sample_poses

REPO = Path(__file__).resolve().parents[1]
LAB_WEIGHTS = REPO.parent / "shared" / "csaw" / "bd_weights.h5"
LAB_VALID_IMAGES = 11_547
DENSE_GOAL = 20  # (b)/(d) on a GPU
# Softmax outputs of a float32 tail whose dot products sum over ~1,200 terms differ between summation
# orders by up to ~1,200 ulps relative: a label may flip only where the top two are that close.
SUMMATION_ORDER_GAP = 1200 * float(np.finfo(np.float32).eps)


def synthetic_faces(count: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` face photos of up to `classes` identities, and the same photos wearing sunglasses."""
    rng = np.random.default_rng(seed)
    identities = sample_identities(rng, classes)
    shown = np.arange(count) % classes
    poses = sample_poses(rng, count)
    clean = render(identities, shown, poses, np.zeros(count, dtype=bool))
    poisoned = render(identities, shown, poses, np.ones(count, dtype=bool))
    return clean, poisoned


def notebook_loop(model: keras.Model, images: np.ndarray, labels: np.ndarray, order: np.ndarray) -> list[int]:
    """(a): per step, zero the filters and call the model eagerly on the whole array."""
    layer = model.get_layer("conv_3")
    original = [np.asarray(w) for w in layer.get_weights()]
    correct = []
    for step in range(len(order) + 1):
        layer.set_weights(zeroed_filters(original, order[:step]))
        predicted = np.argmax(np.asarray(model(images, training=False)), axis=-1)
        correct.append(int(np.count_nonzero(predicted == labels)))
    layer.set_weights(original)
    return correct


def batched_loop(model: keras.Model, images: np.ndarray, labels: np.ndarray, order: np.ndarray) -> list[int]:
    """(b): the same loop through one compiled function, in batches of INFERENCE_BATCH."""
    layer = model.get_layer("conv_3")
    original = [np.asarray(w) for w in layer.get_weights()]
    forward = compiled_forward(model)
    correct = []
    for step in range(len(order) + 1):
        layer.set_weights(zeroed_filters(original, order[:step]))
        predicted = forward_labels(forward, images, INFERENCE_BATCH)
        correct.append(int(np.count_nonzero(predicted == labels)))
    layer.set_weights(original)
    return correct


def engine(model: keras.Model, sets: dict[str, tuple[np.ndarray, np.ndarray]]):
    """(c): head once per set, ranking on clean data, prune_range over every step with ASR."""
    clock = time.perf_counter()
    split = split_network(model)
    head = compiled_forward(split.head)
    cuts = {key: cut_activations(head, [images], 1.0) for key, (images, _) in sets.items()}
    seconds_head, clock = time.perf_counter() - clock, time.perf_counter()
    rank_forward = compiled_forward(split.rank_from_cut) if split.rank_from_cut is not None else None
    order = rank_channels(channel_means(rank_activation_batches(cuts[""], rank_forward)))
    labeled = {
        key: LabeledSet(key, labels, live_channels(cuts[key], split.pruned_values))
        for key, (_, labels) in sets.items()
    }
    seconds_rank, clock = time.perf_counter() - clock, time.perf_counter()
    poisoned = {key: data for key, data in labeled.items() if key != ""}
    rows = prune_range(CutLabeler(split, cuts), labeled[""], poisoned, order, 0, len(order) + 1)
    live_steps = int(labeled[""].live[:, order].any(axis=0).sum())
    print(f"    (c) head {seconds_head:.1f} s, ranking and liveness {seconds_rank:.1f} s, "
          f"sweep {time.perf_counter() - clock:.1f} s ({live_steps} of {len(order)} channels live on some clean image)")
    return order, rows


def dense_engine(model: keras.Model, sets: dict[str, tuple[np.ndarray, np.ndarray]]):
    """(d): (c)'s work on the dense engine: head once per set, ranking, every image at every step."""
    clock = time.perf_counter()
    split = split_network(model)
    head = compiled_forward(split.head)
    cuts = {key: cut_activations(head, [images], 1.0) for key, (images, _) in sets.items()}
    seconds_head, clock = time.perf_counter() - clock, time.perf_counter()
    rank_forward = compiled_forward(split.rank_from_cut) if split.rank_from_cut is not None else None
    order = rank_channels(channel_means(rank_activation_batches(cuts[""], rank_forward)))
    # the dense sweep reads no liveness: every set is evaluated at every step
    labeled = {key: LabeledSet(key, labels, np.zeros((0, 0), bool)) for key, (_, labels) in sets.items()}
    seconds_rank, clock = time.perf_counter() - clock, time.perf_counter()
    labeler = DenseLabeler(split, cuts)
    seconds_upload, clock = time.perf_counter() - clock, time.perf_counter()
    poisoned = {key: data for key, data in labeled.items() if key != ""}
    rows = prune_range_dense(labeler.step_labels, labeled[""], poisoned, order, 0, len(order) + 1)
    print(f"    (d) head {seconds_head:.1f} s, ranking {seconds_rank:.1f} s, to the device {seconds_upload:.2f} s, "
          f"sweep {time.perf_counter() - clock:.2f} s (blocks of {labeler.step_block} steps x "
          f"{labeler.image_block} images)")
    return order, rows, labeler


def cpu_agreement(weights: Path, clean: np.ndarray, order: np.ndarray, device_labels: np.ndarray) -> bool:
    """The dense sweep of the clean set again on JAX's CPU device, against the accelerator's labels.

    A label may differ only where the CPU's top two probabilities are within summation-order error.
    """
    import jax

    with jax.default_device(jax.devices("cpu")[0]):
        model = load_model(weights)
        split = split_network(model)
        cut = cut_activations(compiled_forward(split.head), [clean], 1.0)
        cpu_labels = DenseLabeler(split, {"": cut}).step_labels("", order, 0, len(order) + 1)
        steps, images = np.nonzero(cpu_labels != device_labels)
        gaps = []
        for step, image in zip(steps.tolist(), images.tolist(), strict=True):
            row = np.where(np.isin(np.arange(len(order)), order[:step]), split.pruned_values, cut[image])
            probabilities = np.sort(np.asarray(split.tail(row[None], training=False))[0])
            gaps.append(float((probabilities[-1] - probabilities[-2]) / probabilities[-1]))
    within = all(gap <= SUMMATION_ORDER_GAP for gap in gaps)
    print(f"--check-cpu: {len(gaps)} of {cpu_labels.size} (step, image) labels differ from the CPU's"
          + (f"; largest relative top-2 gap on the CPU among them {max(gaps):.2e} "
             f"(summation-order bound {SUMMATION_ORDER_GAP:.2e}): {'within' if within else 'NOT within'}"
             if gaps else ""))
    return within


def backend_versions() -> str:
    """Which Keras backend runs the bench, its version and the GPUs it sees."""
    if tf is not None:
        return (f"Keras {keras.__version__} on TensorFlow {tf.__version__}; "
                f"GPUs: {tf.config.list_physical_devices('GPU')}")
    import jax

    return f"Keras {keras.__version__} on JAX {jax.__version__}; devices: {jax.devices()}"


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=LAB_VALID_IMAGES,
                        help=f"clean images (and as many poisoned); the lab's validation size is {LAB_VALID_IMAGES}")
    parser.add_argument("--weights", type=Path, default=LAB_WEIGHTS)
    parser.add_argument("--skip-eager", action="store_true", help="skip (a), the slowest part")
    parser.add_argument("--check-cpu", action="store_true",
                        help="JAX on an accelerator: compare the dense sweep's labels with the CPU's")
    args = parser.parse_args()
    if not args.weights.exists():
        print(f"error: {args.weights}: no such file (the lab's bd_weights.h5 is needed)", file=sys.stderr)
        return 2

    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; {backend_versions()}")
    start = time.perf_counter()
    model = load_model(args.weights)
    classes = int(model.output_shape[-1])
    clean, poisoned = synthetic_faces(args.images, classes)
    forward = compiled_forward(model)
    clean_labels = forward_labels(forward, clean, INFERENCE_BATCH)
    poisoned_top1 = forward_labels(forward, poisoned, INFERENCE_BATCH)
    target = int(np.bincount(poisoned_top1).argmax())
    poisoned_labels = np.full(len(poisoned), target)
    print(f"inputs: {args.images} clean + {args.images} poisoned synthetic faces, {classes} classes, "
          f"made and labelled in {time.perf_counter() - start:.1f} s; target label {target}")

    # prune_range asks labels_at for the clean set under the key ""
    sets = {"": (clean, clean_labels), "poisoned": (poisoned, poisoned_labels)}
    (order, rows), seconds_c = timed(engine, model, sets)
    print(f"(c) engine (head x2, ranking, {len(rows)} steps with clean accuracy and ASR): {seconds_c:.1f} s")
    (correct_b), seconds_b = timed(batched_loop, model, clean, clean_labels, order)
    print(f"(b) batched loop ({len(correct_b)} steps, clean only): {seconds_b:.1f} s")
    engine_correct = [row.clean_correct for row in rows]
    if engine_correct != correct_b:
        differ = [k for k, (a, b) in enumerate(zip(engine_correct, correct_b, strict=True)) if a != b]
        print(f"FAIL: the engine's correct counts differ from the batched loop's at steps {differ}", file=sys.stderr)
        return 1
    print("(c) per-step correct counts == (b)'s at every step")
    (_, dense_rows, labeler), seconds_d = timed(dense_engine, model, sets)
    print(f"(d) dense engine (head x2, ranking, {len(dense_rows)} steps with clean accuracy and ASR): "
          f"{seconds_d:.1f} s")
    dense_correct = [row.clean_correct for row in dense_rows]
    if dense_correct != correct_b:
        differ = [k for k, (a, b) in enumerate(zip(dense_correct, correct_b, strict=True)) if a != b]
        print(f"FAIL: the dense engine's correct counts differ from the batched loop's at steps {differ}",
              file=sys.stderr)
        return 1
    print("(d) per-step correct counts == (b)'s at every step")
    if args.check_cpu and tf is None and accelerator_present():
        device_labels = labeler.step_labels("", order, 0, len(order) + 1)
        if not cpu_agreement(args.weights, clean, order, device_labels):
            return 1
    if not args.skip_eager:
        correct_a, seconds_a = timed(notebook_loop, model, clean, clean_labels, order)
        print(f"(a) notebook loop, eager on the whole array ({len(correct_a)} steps, clean only): {seconds_a:.1f} s")
        mismatched = sum(a != b for a, b in zip(correct_a, correct_b, strict=True))
        print(f"(a) vs (b): {mismatched} steps differ in correct counts"
              + (f" (largest difference {max(abs(a - b) for a, b in zip(correct_a, correct_b, strict=True))})"
                 if mismatched else ""))
        print(f"ratio (a)/(c): {seconds_a / seconds_c:.1f}x")
    print(f"ratio (b)/(c): {seconds_b / seconds_c:.1f}x")
    print(f"ratio (b)/(d): {seconds_b / seconds_d:.1f}x"
          + (f" (goal on a GPU >= {DENSE_GOAL}x: {'met' if seconds_b / seconds_d >= DENSE_GOAL else 'missed'})"
             if accelerator_present() else " (on a CPU the sparse engine (c) is the one auto picks)"))
    curve = ", ".join(f"{k}:{row.clean_accuracy:.1f}/{row.asr['poisoned']:.1f}" for k, row in enumerate(rows)
                      if k % 5 == 0 or k == len(rows) - 1)
    print(f"clean accuracy / ASR % by step: {curve}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
