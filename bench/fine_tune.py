"""Bench: one fine-tuning epoch of badnet_prune.numerics.fine_tuning against plain Keras `model.fit`, in one run.

Both train the same pruned network (the lab's weights, the `--pruned` channels of conv_3 lowest
by clean mean activation zeroed) on the same training part of the clean validation images, with
the same batch size and optimizer (Adam at FineTuneSettings' learning rate). fit knows nothing of
the pruned filters (a zeroed filter's ReLU passes no gradient, so they happen to stay zero there);
ours masks their updates and re-zeroes them after every step.
Each runs `--epochs` epochs; the first includes tracing, so the ratios are of the later epochs:
of their means, and of their fastest (on a shared machine, the least disturbed by other work).
Ours is timed on its updates alone (EpochRecord's train_seconds), fit by a callback around each
epoch; neither includes the per-epoch measurements.

Inputs are synthetic faces (bench/engine.py) of the lab's validation size, labelled with B's own
top-1 labels, and the same photos with sunglasses as the poisoned set.

    .venv/bin/python bench/fine_tune.py [--images 11547] [--weights ../shared/csaw/bd_weights.h5]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from badnet_prune.files.model_io import load_model  # noqa: E402
from badnet_prune.numerics.activations import channel_means, cut_activations, rank_activation_batches  # noqa: E402
from badnet_prune.numerics.fine_tuning import FineTuneSettings, fine_tune  # noqa: E402
from badnet_prune.numerics.inference import compiled_forward, forward_labels  # noqa: E402
from badnet_prune.numerics.network_split import split_network  # noqa: E402
from badnet_prune.numerics.pruned_model import build_pruned_model  # noqa: E402
from badnet_prune.numerics.ranking import rank_channels  # noqa: E402
from badnet_prune.numerics.tf_setup import keras  # noqa: E402
from bench.engine import LAB_VALID_IMAGES, LAB_WEIGHTS, backend_versions, synthetic_faces  # noqa: E402


class EpochTimes(keras.callbacks.Callback):
    """Wall time of every epoch of fit, from its begin to its end."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=LAB_VALID_IMAGES)
    parser.add_argument("--weights", type=Path, default=LAB_WEIGHTS)
    parser.add_argument("--pruned", type=int, default=52, help="channels pruned (the lab's 10%% step is 52)")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    if not args.weights.exists():
        print(f"error: {args.weights}: no such file (the lab's bd_weights.h5 is needed)", file=sys.stderr)
        return 2
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; {backend_versions()}")

    model = load_model(args.weights)
    classes = int(model.output_shape[-1])
    clean, poisoned = synthetic_faces(args.images, classes)
    forward = compiled_forward(model)
    labels = forward_labels(forward, clean)
    target = int(np.bincount(forward_labels(forward, poisoned)).argmax())
    split = split_network(model)
    cut = cut_activations(compiled_forward(split.head), [clean], 1.0)
    order = rank_channels(channel_means(rank_activation_batches(cut)))
    del cut
    pruned = [int(c) for c in order[: args.pruned]]
    settings = FineTuneSettings(epochs=args.epochs)
    print(f"inputs: {args.images} clean + {args.images} poisoned faces, {classes} classes, {args.pruned} of conv_3's "
          f"channels pruned; {settings}")

    start = time.perf_counter()
    ours = fine_tune(model, "conv_3", pruned, clean, labels, {"poisoned": (poisoned, np.full(len(poisoned), target))},
                     settings)
    total_ours = time.perf_counter() - start
    train_rows = ours.split.train_indices
    ours_seconds = [record.train_seconds for record in ours.epochs[1:]]
    print(f"ours: {len(train_rows)} training images, epochs {', '.join(f'{s:.1f}' for s in ours_seconds)} s "
          f"(whole call with the per-epoch measurements {total_ours:.1f} s)")

    plain = build_pruned_model(model, "conv_3", pruned, name="fit")
    plain.compile(optimizer=keras.optimizers.Adam(settings.learning_rate), loss="sparse_categorical_crossentropy")
    times = EpochTimes()
    plain.fit(clean[train_rows], labels[train_rows], batch_size=settings.batch_size, epochs=args.epochs,
              shuffle=True, verbose=0, callbacks=[times])
    print(f"fit:  {len(train_rows)} training images, epochs {', '.join(f'{s:.1f}' for s in times.seconds)} s")

    later = slice(1, None) if args.epochs > 1 else slice(None)
    mean_ratio = float(np.mean(ours_seconds[later]) / np.mean(times.seconds[later]))
    fastest_ratio = float(np.min(ours_seconds[later]) / np.min(times.seconds[later]))
    print(f"ratio ours / fit over epochs {'2..' if args.epochs > 1 else '1..'}{args.epochs} (goal <= 1.1x): "
          f"of the means {mean_ratio:.2f}x, of the fastest epochs {fastest_ratio:.2f}x; "
          f"epoch 1 alone (with tracing) {ours_seconds[0] / times.seconds[0]:.2f}x")
    kernel, bias = ours.model.get_layer("conv_3").get_weights()
    print(f"ours: pruned filters exactly zero: {not kernel[..., pruned].any() and not bias[pruned].any()}; "
          f"fit's: {not plain.get_layer('conv_3').get_weights()[0][..., pruned].any()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
