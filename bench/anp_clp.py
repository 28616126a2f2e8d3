"""Bench: what ANP and CLP leave on synthetic quick BadNets (and clean controls), and their time against the
notebook's job on the same model and data, in one run.

Models: `synth --quick` (attack default) and `--attack pruning-aware` for each seed (tests/helpers.py builds
them once under $TMPDIR), and a clean control per seed: the same DeepID trained by plain `model.fit` on the
default BadNet's clean training images alone (4 epochs of Adam 1e-3, synth's clean stage), evaluated on that
BadNet's files. Only clean validation data choose anything; test data and the poisoned files measure.

Per model, each timed on the same clean validation images:
- the notebook's job, batched: rank conv_3's channels by pool_3's mean on clean validation data, then prune
  them one by one, a compiled whole-model pass (batches of 1024) over the clean validation images per step
  (bench/engine.py's batched loop); the pruning defense's B' at the 2% and 10% thresholds follow from it;
- CLP (numerics/clp.py): the bounds of every Conv2D, the curve over the u grid (clean validation accuracy
  and ASR on bd_valid), u chosen by the rule (accuracy budget); also the paper's data-free u = 3;
- ANP (numerics/anp.py) per epsilon: the masks on conv_3, then the curve per pruning count through the exact
  sparse engine (prune_range in ANP's order, clean validation and bd_valid); the pruned net by mask
  threshold (settings.mask_threshold) and by budget: the most channels in ANP's order before the clean
  validation accuracy first drops more than the budget below B's.
Then every chosen net on the clean test set and bd_test (untimed). The CLP statistic of each model, and
its ROC-AUC of backdoored against clean controls.

    nice -n 10 .venv/bin/python bench/anp_clp.py [--seeds 0 1 2 3 4] [--epsilons 0.4] [--iterations N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy.stats import mannwhitneyu

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from badnet_prune.files.data import open_data_file  # noqa: E402
from badnet_prune.files.model_io import load_model  # noqa: E402
from badnet_prune.numerics.activations import channel_means, cut_activations, live_channels  # noqa: E402
from badnet_prune.numerics.anp import AnpSettings, optimise_masks, pruned_by_threshold, pruning_order  # noqa: E402
from badnet_prune.numerics.architecture import build_deepid  # noqa: E402
from badnet_prune.numerics.channel_curve import evaluate_prunings  # noqa: E402
from badnet_prune.numerics.clp import ClpSettings, clp_curve, clp_pruning, clp_statistic  # noqa: E402
from badnet_prune.numerics.inference import INFERENCE_BATCH, compiled_forward  # noqa: E402
from badnet_prune.numerics.labelers import CutLabeler  # noqa: E402
from badnet_prune.numerics.network_split import split_network  # noqa: E402
from badnet_prune.numerics.pruning import LabeledSet, prune_range  # noqa: E402
from badnet_prune.numerics.ranking import rank_channels  # noqa: E402
from badnet_prune.numerics.selection import select_steps  # noqa: E402
from badnet_prune.numerics.tf_setup import keras  # noqa: E402
from badnet_prune.synth.dataset import make_splits, sizes_for  # noqa: E402
from bench.engine import backend_versions, batched_loop  # noqa: E402
from tests.helpers import SYNTH_CACHE, cached_pruning_aware_badnet, cached_quick_badnet  # noqa: E402

KINDS = ("default", "pruning-aware", "clean")
CLASSES = 10
FILES = {"valid": "cl/valid.h5", "test": "cl/test.h5", "bd_valid": "bd/bd_valid.h5", "bd_test": "bd/bd_test.h5"}
GOAL_ASR, GOAL_DROP = 5.0, 2.0  # issue 27: ASR <= 5% at a clean test drop <= 2 points


def model_and_data(kind: str, seed: int):
    """B and its four data sets (images as stored, labels) for one kind and seed."""
    root = cached_pruning_aware_badnet(seed, CLASSES) if kind == "pruning-aware" else cached_quick_badnet(seed, CLASSES)
    data = {}
    for key, relative in FILES.items():
        opened = open_data_file(root / "data" / relative, (55, 47, 3), CLASSES)
        data[key] = (opened.read_all(), np.asarray(opened.labels, dtype=np.int64))
    model = clean_control(root, seed) if kind == "clean" else load_model(root / "models" / "bd_weights.h5")
    return model, data


def clean_control(root: Path, seed: int) -> keras.Model:
    """DeepID trained on the BadNet's clean training images alone (cached beside the synthetic BadNets)."""
    path = SYNTH_CACHE / f"{root.name}-clean-control.weights.h5"
    keras.utils.set_random_seed(seed)
    model = build_deepid(CLASSES)
    if not path.is_file():
        images, labels = make_splits(seed, sizes_for(CLASSES, quick=True))["train"]
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
        model.fit(images, labels, batch_size=64, epochs=4, shuffle=True, verbose=0)
        model.save_weights(path)
    model.load_weights(path)
    return model


def notebook_job(model: keras.Model, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Rank conv_3 by pool_3's clean mean, then the batched loop: (order, clean correct per step)."""
    rank = compiled_forward(keras.Model(model.input, model.get_layer("pool_3").output))
    means = channel_means(np.asarray(rank(images[s : s + INFERENCE_BATCH])) for s in range(0, len(images),
                                                                                       INFERENCE_BATCH))
    order = rank_channels(means)
    return order, batched_loop(model, images, labels, order)


def anp_sweep(model: keras.Model, order: np.ndarray, valid, bd_valid):
    """The exact sparse sweep of conv_3 in ANP's order, on clean validation data and bd_valid."""
    split = split_network(model)
    head = compiled_forward(split.head)
    cuts = {"clean": cut_activations(head, [valid[0]], 1.0), "bd": cut_activations(head, [bd_valid[0]], 1.0)}
    sets = {name: LabeledSet(name, y, live_channels(cuts[name], split.pruned_values))
            for name, y in (("clean", valid[1]), ("bd", bd_valid[1]))}
    return prune_range(CutLabeler(split, cuts), sets["clean"], {"bd": sets["bd"]}, order, 0, len(order) + 1)


def within_budget(accuracies: list[float], budget: float) -> int:
    """The most steps before the clean validation accuracy first falls more than `budget` points below step 0's."""
    over = [k for k, accuracy in enumerate(accuracies) if accuracies[0] - accuracy > budget]
    return (over[0] - 1) if over else len(accuracies) - 1


def measure(kind: str, seed: int, args) -> dict:
    model, data = model_and_data(kind, seed)
    valid, bd_valid = data["valid"], data["bd_valid"]
    row: dict = {"kind": kind, "seed": seed, "seconds": {}, "chosen": {}}

    start = time.perf_counter()
    order, correct = notebook_job(model, *valid)
    row["seconds"]["notebook"] = time.perf_counter() - start
    accuracies = [100.0 * c / len(valid[1]) for c in correct]
    prunings: dict[str, dict] = {"B": {}}
    for threshold, step in select_steps(accuracies[0], accuracies, [0.02, 0.10]).items():
        prunings[f"prune {threshold:.0%}"] = {"conv_3": [int(c) for c in order[: step or 0]]}

    start = time.perf_counter()
    curve = clp_curve(model, valid, {"bd": bd_valid}, ClpSettings(accuracy_budget=args.budget))
    row["seconds"]["clp"] = time.perf_counter() - start
    prunings["CLP rule"], prunings["CLP u=3"] = curve.chosen.pruned, clp_pruning(curve.bounds, 3)
    row["chosen"]["CLP rule"] = f"u={curve.chosen_u}"
    statistic = clp_statistic(curve.bounds)
    row["clp_statistic"] = {"score": statistic.score, "z": statistic.evidence.z, "layer": statistic.evidence.layer,
                            "channel": statistic.evidence.channel}

    for epsilon in args.epsilons:
        settings = AnpSettings(epsilon=epsilon, iterations=args.iterations)
        start = time.perf_counter()
        result = optimise_masks(model, *valid, settings)
        row["seconds"][f"anp {epsilon} masks"] = time.perf_counter() - start
        start = time.perf_counter()
        steps = anp_sweep(model, pruning_order(result.masks["conv_3"]), valid, bd_valid)
        row["seconds"][f"anp {epsilon} curve"] = time.perf_counter() - start
        count = within_budget([s.clean_accuracy for s in steps], args.budget)
        prunings[f"ANP {epsilon} mask"] = pruned_by_threshold(result.masks, settings.mask_threshold)
        prunings[f"ANP {epsilon} budget"] = {"conv_3": [s.channel for s in steps[1 : count + 1]]}
        row["chosen"][f"ANP {epsilon} budget"] = f"{count} ch"

    tested = evaluate_prunings(model, prunings, data["test"], {"bd": data["bd_test"]})
    validated = evaluate_prunings(model, prunings, valid, {"bd": bd_valid})
    row["results"] = {key: {"pruned": point.pruned_count, "valid": validated[key].clean_accuracy,
                            "bd_valid": validated[key].asr["bd"], "test": point.clean_accuracy,
                            "bd_test": point.asr["bd"]} for key, point in tested.items()}
    return row


def report(rows: list[dict]) -> None:
    methods = list(rows[0]["results"])
    print("\n| model | " + " | ".join(methods) + " |")
    print("| --- |" + " ---: |" * len(methods))
    for row in rows:
        b = row["results"]["B"]
        cells = []
        for method in methods:
            r = row["results"][method]
            note = row["chosen"].get(method, f"{r['pruned']} ch")
            cells.append(f"{r['bd_test']:.1f} / {r['test'] - b['test']:+.1f} ({note})" if method != "B"
                         else f"{r['bd_test']:.1f} / {r['test']:.1f}")
        print(f"| {row['kind']} {row['seed']} | " + " | ".join(cells) + " |")
    print("\ncells: ASR on bd_test % / clean test accuracy change in points (channels pruned or u); B: ASR / clean")
    print(f"\n| method | backdoored models with ASR <= {GOAL_ASR:g}% and drop <= {GOAL_DROP:g} points | "
          f"clean controls with drop <= 1 point |")
    print("| --- | ---: | ---: |")
    for method in methods[1:]:
        bad = [r for r in rows if r["kind"] != "clean"]
        good = [r for r in rows if r["kind"] == "clean"]
        hit = sum(r["results"][method]["bd_test"] <= GOAL_ASR
                  and r["results"]["B"]["test"] - r["results"][method]["test"] <= GOAL_DROP for r in bad)
        kept = sum(r["results"]["B"]["test"] - r["results"][method]["test"] <= 1.0 for r in good)
        print(f"| {method} | {hit} of {len(bad)} | {kept} of {len(good)} |")
    names = list(rows[0]["seconds"])
    print("\n| model | " + " | ".join(f"{name} (s)" for name in names) + " | " +
          " | ".join(f"{name} / notebook" for name in names[1:]) + " |")
    print("| --- |" + " ---: |" * (2 * len(names) - 1))
    for row in rows:
        s = row["seconds"]
        print(f"| {row['kind']} {row['seed']} | " + " | ".join(f"{s[n]:.1f}" for n in names) + " | "
              + " | ".join(f"{s[n] / s['notebook']:.1f}x" for n in names[1:]) + " |")
    scores = {kind: [r["clp_statistic"]["score"] for r in rows if r["kind"] == kind] for kind in KINDS}
    print("\nCLP statistic per model (score, z, layer/channel):")
    for row in rows:
        st = row["clp_statistic"]
        print(f"  {row['kind']} {row['seed']}: {st['score']:.3f}, z {st['z']:.2f}, {st['layer']}/{st['channel']}")
    backdoored = scores["default"] + scores["pruning-aware"]
    if backdoored and scores["clean"]:
        auc = mannwhitneyu(backdoored, scores["clean"]).statistic / (len(backdoored) * len(scores["clean"]))
        print(f"CLP statistic ROC-AUC, backdoored ({len(backdoored)}) against clean controls "
              f"({len(scores['clean'])}): {auc:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--epsilons", type=float, nargs="+", default=[AnpSettings().epsilon])
    parser.add_argument("--iterations", type=int, default=AnpSettings().iterations)
    parser.add_argument("--budget", type=float, default=ClpSettings().accuracy_budget,
                        help="clean validation accuracy budget in points, for CLP's rule and ANP's count")
    parser.add_argument("--json", type=Path, help="also write every row here")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, load {os.getloadavg()[0]:.1f}; "
          f"{backend_versions()}; ANP {AnpSettings(iterations=args.iterations)}; budget {args.budget} points")
    rows = []
    for kind in args.kinds:
        for seed in args.seeds:
            rows.append(measure(kind, seed, args))
            print(json.dumps(rows[-1]), flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1))
    report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
