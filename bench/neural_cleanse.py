"""Bench: Neural Cleanse vectorised across a range of labels against the plain per-class loop, in one process.

(a) per class: `reverse_engineer_loop`, one label at a time (K runs of one mask and pattern);
(b) vectorised: `reverse_engineer`, the K labels' masks and patterns in one batch.
Both use the same seed, batches and steps; their masks must agree within 0.05 and their norms within 1% (the
bench fails otherwise; float rounding differs between batch shapes and grows over the Adam steps: the printed
gaps are the measured ones). Printed: seconds per label of each, and (a)/(b). Goal: (a)/(b) >= 3x.

Then the lab's real weights (../shared/csaw/bd_weights.h5, 1,283 classes): one range of --lab-range labels,
vectorised, timed, with the projection for the whole model on 1, 2, 4, 8, 16 and 64 workers (ranges run
in parallel, one per worker at a time, each worker as fast as this one).

Inputs are synthetic faces (badnet_prune.synth.faces) at the lab's image size; the quick synthetic BadNet is
built once per machine (tests/helpers.cached_quick_badnet).

    .venv/bin/python bench/neural_cleanse.py [--labels 10] [--steps 100] [--lab-range 32]
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from badnet_prune.files.data import open_data_file  # noqa: E402
from badnet_prune.files.model_io import load_model  # noqa: E402
from badnet_prune.numerics.neural_cleanse import reverse_engineer, reverse_engineer_loop  # noqa: E402
from badnet_prune.numerics.neural_cleanse_settings import NeuralCleanseSettings  # noqa: E402
from badnet_prune.numerics.tf_setup import keras, tf  # noqa: E402
from badnet_prune.synth.faces import render, sample_identities, sample_poses  # noqa: E402


def faces(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    identities, poses = sample_identities(rng, count), sample_poses(rng, count)
    none = np.zeros(count, bool)
    return render(identities, np.arange(count), poses, none, none).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", type=int, default=10, help="labels of the quick BadNet timed (a range)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lab-range", type=int, default=32, help="labels of the lab's model in the timed range")
    parser.add_argument("--lab-weights", type=Path, default=REPO.parent / "shared" / "csaw" / "bd_weights.h5")
    parser.add_argument("--skip-loop", action="store_true", help="time only the vectorised runs")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"GPU: {bool(tf.config.list_physical_devices('GPU'))}")
    settings = NeuralCleanseSettings(steps=args.steps, image_count=args.images, batch_size=args.batch_size)

    from tests.helpers import cached_quick_badnet

    folder = cached_quick_badnet(0)
    model = load_model(folder / "models" / "bd_weights.h5")
    images = open_data_file(folder / "data" / "cl" / "valid.h5").read_all()[: args.images].astype(np.float32)
    targets = list(range(args.labels))
    reverse_engineer(model, images, targets[:1], settings.model_copy(update={"steps": 2}))  # trace and warm up
    reverse_engineer(model, images, targets, settings.model_copy(update={"steps": 2}))
    started = time.perf_counter()
    together = reverse_engineer(model, images, targets, settings)
    vectorised = time.perf_counter() - started
    print(f"quick BadNet, {args.labels} labels, {args.steps} steps of {args.batch_size} images:")
    print(f"  (b) vectorised: {vectorised:.1f} s, {vectorised / args.labels:.2f} s a label")
    if not args.skip_loop:
        started = time.perf_counter()
        alone = reverse_engineer_loop(model, images, targets, settings)
        loop = time.perf_counter() - started
        mask_gap = float(np.abs(together.masks - alone.masks).max())
        norm_gap = float(np.abs(together.norms / alone.norms - 1).max())
        if mask_gap > 0.05 or norm_gap > 0.01:
            raise SystemExit(f"the loop's result differs: masks by {mask_gap:.4f}, norms by {100 * norm_gap:.2f}%")
        started = time.perf_counter()
        reverse_engineer(model, images, targets[:1], settings.model_copy(update={"steps": 1}))
        setup = time.perf_counter() - started  # a call's fixed cost: tracing its step, the final attack success
        print(f"  (a) per-class loop: {loop:.1f} s, {loop / args.labels:.2f} s a label; masks within {mask_gap:.4f} "
              f"of (b)'s, norms within {100 * norm_gap:.3f}% (float rounding over {args.steps} Adam steps)")
        print(f"  (a)/(b) = {loop / vectorised:.2f}x; a call's fixed cost (trace, final measure) {setup:.2f} s, "
              f"(a) without it {loop - args.labels * setup:.1f} s: {(loop - args.labels * setup) / vectorised:.2f}x")

    if not args.lab_weights.is_file():
        print(f"no {args.lab_weights}: the lab's model is not timed")
        return
    lab = load_model(args.lab_weights)
    classes = int(lab.output_shape[-1])
    photos = faces(args.images)
    lab_targets = list(range(args.lab_range))
    reverse_engineer(lab, photos, lab_targets, settings.model_copy(update={"steps": 2}))
    started = time.perf_counter()
    reverse_engineer(lab, photos, lab_targets, settings)
    seconds = time.perf_counter() - started
    ranges = math.ceil(classes / args.lab_range)
    print(f"lab model ({classes} classes), one range of {args.lab_range} labels, {args.steps} steps: {seconds:.1f} s "
          f"({seconds / args.lab_range:.2f} s a label); {ranges} ranges for the whole model")
    for workers in (1, 2, 4, 8, 16, 64):
        rounds = math.ceil(ranges / workers)
        print(f"  {workers:>2} worker(s): {rounds} range(s) each, about {rounds * seconds / 60:.1f} min")


if __name__ == "__main__":
    main()
