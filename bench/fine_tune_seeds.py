"""Bench: how often fine-pruning repairs a synthetic BadNet, across seeds and thresholds (issue 23).

For each attack and synthetic seed: `synth --quick --attack ATTACK` (cached under --cache), the pruning
defense on the clean validation file (rank conv_3 by mean pool_3 activation, prune cumulatively, the
first step whose clean validation accuracy drops by at least t), then fine-tuning of B'_t with each
recipe. A (seed, threshold) pair is repaired when B'' has ASR <= 5% on the poisoned test file and a
clean test accuracy within 2 points of B's (5 points at 10%). Each recipe runs on the same B'_t, so the
recipes' shares are compared in one run; the attack's own promise (pruning alone keeps >= 50% ASR at 10%)
is counted per seed.

--input-scale 255 runs the same on /255 models: conv_1's kernel multiplied by 255, so that the model takes
pixels divided by 255 and computes what B computes on raw pixels (fine-tuning then trains a model whose
first weights and inputs are on another scale, which is what it must survive).

    .venv/bin/python bench/fine_tune_seeds.py [--seeds 10] [--attack pruning-aware --attack default]
        [--recipe before --recipe after] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from badnet_prune.files.data import open_data_file  # noqa: E402
from badnet_prune.files.model_io import load_model  # noqa: E402
from badnet_prune.numerics.activations import (  # noqa: E402
    channel_means,
    cut_activations,
    live_channels,
    rank_activation_batches,
)
from badnet_prune.numerics.fine_tuning import FineTuneSettings, fine_tune  # noqa: E402
from badnet_prune.numerics.inference import accuracy_percent, compiled_forward, predict_labels  # noqa: E402
from badnet_prune.numerics.labelers import CutLabeler  # noqa: E402
from badnet_prune.numerics.network_split import split_network  # noqa: E402
from badnet_prune.numerics.pruned_model import build_pruned_model  # noqa: E402
from badnet_prune.numerics.pruning import LabeledSet, prune_range  # noqa: E402
from badnet_prune.numerics.ranking import rank_channels  # noqa: E402
from badnet_prune.numerics.selection import select_steps  # noqa: E402
from badnet_prune.numerics.tf_setup import keras  # noqa: E402
from badnet_prune.synth.build import synthesize  # noqa: E402
from badnet_prune.synth.cache import cached_build  # noqa: E402

THRESHOLDS = (0.02, 0.04, 0.10)
FILES = {"valid": "cl/valid.h5", "test": "cl/test.h5", "bd_valid": "bd/bd_valid.h5", "bd_test": "bd/bd_test.h5"}
ASR_BOUND = 5.0
RECIPES = {
    "before": FineTuneSettings(optimizer="adam", learning_rate=3e-3, epochs=10, schedule="constant", warmup_epochs=0,
                               erase=0.0, clip_norm=None),
    "after": FineTuneSettings(learning_rate=1e-3),
    "epochs40": FineTuneSettings(learning_rate=1e-3, epochs=40),
    "lr2e-3": FineTuneSettings(learning_rate=2e-3),  # the default since the zoo's patch triggers (repair_zoo.py)
}


def clean_bound(threshold: float) -> float:
    return 5.0 if threshold >= 0.10 else 2.0


def read_badnet(root: Path):
    model = load_model(root / "models" / "bd_weights.h5")
    data = {}
    for key, relative in FILES.items():
        data_file = open_data_file(root / "data" / relative, (55, 47, 3), int(model.output_shape[-1]))
        data[key] = (data_file.read_all(), data_file.labels)
    return model, data


def percent(model, data, key: str, scale: float) -> float:
    images, labels = data[key]
    return accuracy_percent(predict_labels(compiled_forward(model), [images], scale), labels)


def on_divided_pixels(model):
    """B as a /255 model: the same function of the raw image, with conv_1 taking pixels / 255."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    kernel, bias = copy.get_layer("conv_1").get_weights()
    copy.get_layer("conv_1").set_weights([kernel * np.float32(255.0), bias])
    return copy


def defense_steps(model, data, scale: float):
    split = split_network(model)
    cut = cut_activations(compiled_forward(split.head), [data["valid"][0]], scale)
    order = rank_channels(channel_means(rank_activation_batches(cut)))
    clean = LabeledSet("", data["valid"][1], live_channels(cut, split.pruned_values))
    rows = prune_range(CutLabeler(split, {"": cut}), clean, {}, order, 0, len(order) + 1)
    accuracies = [row.clean_accuracy for row in rows]
    return order, select_steps(accuracies[0], accuracies, THRESHOLDS)


def run_seed(attack: str, seed: int, cache: Path, recipes: list[str], scale: float) -> dict:
    root = cached_build(cache / f"{attack}-seed{seed}",
                        lambda out: synthesize(out, 10, seed=seed, quick=True, attack=attack),
                        marker="models/bd_weights.h5")
    model, data = read_badnet(root)
    if scale != 1:
        model = on_divided_pixels(model)
    order, selected = defense_steps(model, data, scale)
    b_clean, b_asr = percent(model, data, "test", scale), percent(model, data, "bd_test", scale)
    seed_row: dict = {"attack": attack, "seed": seed, "input_scale": scale, "b_clean": b_clean, "b_asr": b_asr,
                      "pairs": []}
    for threshold in THRESHOLDS:
        step = selected[threshold]
        if step is None:
            continue
        pruned = [int(c) for c in order[:step]]
        alone = percent(build_pruned_model(model, "conv_3", pruned), data, "bd_test", scale)
        if threshold == 0.10:
            seed_row["prune_alone_asr_10"] = alone
        pair = {"threshold": threshold, "step": step, "prune_alone_asr": alone, "recipes": {}}
        for name in recipes:
            start = time.perf_counter()
            result = fine_tune(model, "conv_3", pruned, *data["valid"], {"poison": data["bd_valid"]},
                               RECIPES[name], input_scale=scale)
            clean, asr = percent(result.model, data, "test", scale), percent(result.model, data, "bd_test", scale)
            pair["recipes"][name] = {
                "clean": clean, "asr": asr, "kept_epoch": result.kept_epoch,
                "repaired": asr <= ASR_BOUND and clean >= b_clean - clean_bound(threshold),
                "holdout": [record.holdout_accuracy for record in result.epochs],
                "seconds": time.perf_counter() - start,
            }
            print(f"{attack} seed {seed} t={threshold:.0%} step {step} alone {alone:.1f}% | {name}: "
                  f"epoch {result.kept_epoch} clean {clean:.2f}% (B {b_clean:.2f}%) ASR {asr:.2f}%", flush=True)
        seed_row["pairs"].append(pair)
    return seed_row


def summarise(rows: list[dict], recipes: list[str]) -> None:
    print("\n| attack | recipe | 2% | 4% | 10% | all pairs |\n| --- | --- | ---: | ---: | ---: | ---: |")
    for attack in dict.fromkeys(row["attack"] for row in rows):
        mine = [row for row in rows if row["attack"] == attack]
        for name in recipes:
            cells, total, hits = [], 0, 0
            for threshold in THRESHOLDS:
                pairs = [pair for row in mine for pair in row["pairs"] if pair["threshold"] == threshold]
                good = sum(pair["recipes"][name]["repaired"] for pair in pairs)
                cells.append(f"{good}/{len(pairs)}")
                total, hits = total + len(pairs), hits + good
            share = 100.0 * hits / total if total else float("nan")
            print(f"| {attack} | {name} | {' | '.join(cells)} | {hits}/{total} ({share:.0f}%) |")
        kept = sum(row.get("prune_alone_asr_10", 0.0) >= 50.0 for row in mine)
        print(f"{attack}: {kept} of {len(mine)} seeds keep >= 50% ASR at 10% under pruning alone")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="synthetic seeds 0..N-1 (default 10)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--attack", action="append", choices=("pruning-aware", "default"))
    parser.add_argument("--recipe", action="append", choices=sorted(RECIPES))
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "badnet-prune-bench-seeds")
    parser.add_argument("--input-scale", type=float, choices=(1.0, 255.0), default=1.0,
                        help="1: raw 0..255 pixels (the synthetic BadNets' own); 255: the same models taking /255")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    attacks, recipes = args.attack or ["pruning-aware", "default"], args.recipe or ["before", "after"]
    print(f"{platform.node()} {platform.processor() or platform.machine()}; input scale {args.input_scale:g}; recipes: "
          + "; ".join(f"{name} = {RECIPES[name].model_dump()}" for name in recipes), flush=True)
    rows = [run_seed(attack, seed, args.cache, recipes, args.input_scale) for attack in attacks
            for seed in range(args.first_seed, args.first_seed + args.seeds)]
    summarise(rows, recipes)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
