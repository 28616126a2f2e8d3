"""Bench: whole processes as a user feels them, on files of the lab's real sizes.

Three processes, each timed from start to exit (start-up, file reading and saving included):
  defend   `badnet-prune defend` on the four files (fresh database and activation cache);
  notebook the lab notebook's whole job: load, rank, prune with an eager pass per step until the
           largest threshold, save B' per threshold, evaluate B, B' and G on test data, where G
           runs B and B' again (as the notebook's G class does);
  floor    what any exact defense must do: import, load the four files, run the layers before
           conv_3's cut once over each, and exit without TensorFlow's teardown (as defend does).
Goals (issue 4): defend >= 10x faster than the notebook's job, and within 1.3x of the floor.

Inputs are synthetic faces (bench/engine.py's) with the lab's bd_weights.h5: 11,547 validation and
12,830 test images of each kind, labelled with B's own labels (the target is B's most common label
on the poisoned images). They are written once under --work and reused.

    .venv/bin/python bench/processes.py [--work /tmp/badnet-prune-bench]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO.parent / "shared" / "csaw" / "bd_weights.h5"
VALID, TEST = 11_547, 12_830
THRESHOLDS = (0.02, 0.04, 0.10)
FILES = ("cl/valid.h5", "cl/test.h5", "bd/bd_valid.h5", "bd/bd_test.h5")


def make_files(work: Path) -> None:
    """Write the four lab-format files once (not timed)."""
    if all((work / name).exists() for name in FILES):
        return
    import numpy as np
    from engine import synthetic_faces  # bench/engine.py, beside this script

    from badnet_prune.files.data import write_data_file
    from badnet_prune.files.model_io import load_model
    from badnet_prune.numerics.inference import compiled_forward, forward_labels

    model = load_model(WEIGHTS)
    forward = compiled_forward(model)
    classes = int(model.output_shape[-1])
    valid_clean, valid_poisoned = synthetic_faces(VALID, classes, seed=1)
    test_clean, test_poisoned = synthetic_faces(TEST, classes, seed=2)
    target = int(np.bincount(forward_labels(forward, valid_poisoned)).argmax())
    write_data_file(work / "cl/valid.h5", valid_clean, forward_labels(forward, valid_clean))
    write_data_file(work / "cl/test.h5", test_clean, forward_labels(forward, test_clean))
    write_data_file(work / "bd/bd_valid.h5", valid_poisoned, np.full(VALID, target))
    write_data_file(work / "bd/bd_test.h5", test_poisoned, np.full(TEST, target))


def notebook_job(work: Path, out: Path) -> None:
    """The notebook's way, end to end, in this process."""
    import h5py
    import numpy as np

    from badnet_prune.files.model_io import load_model
    from badnet_prune.numerics.tf_setup import keras

    def load(name: str):
        with h5py.File(work / name, "r") as handle:
            return np.array(handle["data"]).transpose(0, 2, 3, 1), np.array(handle["label"])

    (x_valid, y_valid), (x_test, y_test), (_, _), (x_bd_test, y_bd_test) = (load(name) for name in FILES)
    model = load_model(WEIGHTS)

    def accuracy(network, x, y) -> float:
        return float(np.mean(np.argmax(network(x).numpy(), axis=1) == y) * 100)

    acc0 = accuracy(model, x_valid, y_valid)
    pool_3 = keras.Model(model.input, model.get_layer("pool_3").output)
    order = np.argsort(pool_3(x_valid).numpy().mean(axis=(0, 1, 2)), kind="stable")
    pruned = keras.models.clone_model(model)
    pruned.set_weights(model.get_weights())
    kernel, bias = (np.array(w) for w in model.get_layer("conv_3").get_weights())
    saved: dict[float, keras.Model] = {}
    for channel in order:
        kernel[..., channel] = 0
        bias[channel] = 0
        pruned.get_layer("conv_3").set_weights([kernel, bias])
        drop = acc0 - accuracy(pruned, x_valid, y_valid)
        for threshold in THRESHOLDS:
            if threshold not in saved and drop >= threshold * acc0:
                path = out / f"B_prime_{threshold:g}.keras"
                pruned.save(path)
                saved[threshold] = keras.models.load_model(path)
        if len(saved) == len(THRESHOLDS):
            break
    print(f"B: clean {accuracy(model, x_test, y_test):.2f} ASR {accuracy(model, x_bd_test, y_bd_test):.2f}")
    classes = int(model.output_shape[-1])
    for threshold, b_prime in saved.items():
        for name, x, y in (("clean", x_test, y_test), ("ASR", x_bd_test, y_bd_test)):
            labels_b = np.argmax(model(x).numpy(), axis=1)
            labels_b_prime = np.argmax(b_prime(x).numpy(), axis=1)
            labels_g = np.where(labels_b == labels_b_prime, labels_b, classes)
            print(f"B' {threshold:g} {name} {accuracy(b_prime, x, y):.2f}, G {np.mean(labels_g == y) * 100:.2f}")


def floor_job(work: Path) -> None:
    """Import, load the four files, and run the layers before the cut once over each."""
    from badnet_prune.files.data import open_data_file
    from badnet_prune.files.model_io import load_model
    from badnet_prune.numerics.activations import cut_activations
    from badnet_prune.numerics.inference import compiled_forward
    from badnet_prune.numerics.network_split import split_network

    model = load_model(WEIGHTS)
    head = compiled_forward(split_network(model).head)
    for name in FILES:
        cut_activations(head, open_data_file(work / name).batches(), 1.0)


def timed_process(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=REPO)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", default="all", choices=("all", "notebook", "floor"))
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "badnet-prune-bench")
    args = parser.parse_args()
    if not WEIGHTS.exists():
        print(f"error: {WEIGHTS}: no such file (the lab's bd_weights.h5 is needed)", file=sys.stderr)
        return 2
    if args.role == "notebook":
        with tempfile.TemporaryDirectory() as out:
            notebook_job(args.work, Path(out))
        return 0
    if args.role == "floor":
        floor_job(args.work)
        # like the console script after a success, the floor skips TensorFlow's teardown (about 1 s)
        sys.stdout.flush()
        os._exit(0)
    make_files(args.work)
    python, cli = sys.executable, str(Path(sys.executable).parent / "badnet-prune")
    with tempfile.TemporaryDirectory() as scratch:
        seconds_floor = timed_process([python, __file__, "floor", "--work", str(args.work)])
        print(f"floor: {seconds_floor:.1f} s")
        seconds_defend = timed_process([
            "env", f"BADNET_PRUNE_CACHE={scratch}/cache", cli, "defend", "--model", str(WEIGHTS),
            "--clean-valid", str(args.work / FILES[0]), "--clean-test", str(args.work / FILES[1]),
            "--poisoned", f"bd={args.work / FILES[2]},{args.work / FILES[3]}",
            "--out", f"{scratch}/defend", "--db", f"sqlite:///{scratch}/bench.db",
        ])
        print(f"defend: {seconds_defend:.1f} s")
        seconds_notebook = timed_process([python, __file__, "notebook", "--work", str(args.work)])
        print(f"notebook's job: {seconds_notebook:.1f} s")
    print(f"notebook / defend: {seconds_notebook / seconds_defend:.1f}x (goal >= 10x)")
    print(f"defend / floor: {seconds_defend / seconds_floor:.2f}x (goal <= 1.3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
