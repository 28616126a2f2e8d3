"""Bench: how long `badnet-prune zoo` takes to build a zoo, cold (an empty cache) and again (all cached).

Runs the console script twice into two fresh folders with one fresh cache: first every model is
trained, then every model is linked from the cache. Prints each run's wall time and CPU time (the
process's own, user + system: on a shared machine the load stretches the wall time, not the CPU
time), per attack the mean build time of its models (their manifest's build_seconds: drawing,
training, writing and measuring one model), each attack's ratio to the sunglasses attack (today's
`synth` BadNet, the baseline) and the cached run's ratio to the cold one; and per attack B's clean
test accuracy and ASR on the test files (lowest and mean). Last, the blended models' ASR when their
test photos are mixed at other weights than training's 0.2 (fresh poisoned photos of each model's seed).

    nice -n 10 .venv/bin/python bench/zoo_build.py [--models N] [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "badnet-prune"
sys.path.insert(0, str(REPO))


def run_zoo(out: Path, cache: Path, extra: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one `badnet-prune zoo` run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([str(CLI), "zoo", str(out), "--cache", str(cache), *extra], capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"zoo failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, help="--models N for zoo (default: zoo's default mix)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="build here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    extra = ["--seed", str(args.seed), *(["--models", str(args.models)] if args.models else [])]
    root = args.keep or Path(tempfile.mkdtemp(prefix="zoo-bench-"))
    cache = root / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    for folder in ("cold", "cached"):
        shutil.rmtree(root / folder, ignore_errors=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start")
    cold_wall, cold_cpu = run_zoo(root / "cold", cache, extra)
    load_cold = os.getloadavg()[0]
    warm_wall, warm_cpu = run_zoo(root / "cached", cache, extra)
    rows = json.loads((root / "cold" / "manifest.json").read_text())["models"]
    print(f"{len(rows)} models; load average {load_cold:.1f} after the cold run")
    print(f"cold:   {cold_wall:7.1f} s wall, {cold_cpu:7.1f} s CPU ({cold_wall / len(rows):.1f} s wall a model)")
    print(f"cached: {warm_wall:7.1f} s wall, {warm_cpu:7.1f} s CPU (x{warm_wall / cold_wall:.3f} of cold)")
    by_attack: dict[str, list[dict]] = {}
    for row in rows:
        by_attack.setdefault(row["attack"], []).append(row)
    baseline = statistics.mean(row["build_seconds"] for row in by_attack.get("sunglasses", rows))
    print("attack          models  build s (mean)  x sunglasses  clean test % (min/mean)  ASR test % (min/mean)")
    for attack, members in by_attack.items():
        seconds = statistics.mean(row["build_seconds"] for row in members)
        clean = [row["clean_test_accuracy"] for row in members]
        asr = [value for row in members for value in row["asr_test"].values()]
        print(f"{attack:15} {len(members):6}  {seconds:14.1f}  {seconds / baseline:12.2f}  "
              f"{min(clean):10.2f} / {statistics.mean(clean):6.2f}  {min(asr):10.2f} / {statistics.mean(asr):6.2f}")
    blended = [row for row in rows if row["attack"] == "blended"]
    if blended:
        print("blended ASR % at test weight alpha (mean over its models, fresh photos):",
              ", ".join(f"{alpha:g}: {statistics.mean(blend_asr(root / 'cold', row, alpha) for row in blended):.2f}"
                        for alpha in BLEND_ALPHAS))
    if args.keep is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


BLEND_ALPHAS = (0.1, 0.15, 0.2)


def blend_asr(zoo: Path, row: dict, alpha: float, count: int = 600) -> float:
    """A blended model's ASR on `count` fresh poisoned photos of its seed's faces mixed at `alpha`."""
    import numpy as np

    from badnet_prune.files.model_io import load_model
    from badnet_prune.numerics.inference import compiled_forward, forward_labels
    from badnet_prune.synth.attacks import Poison, blend_key, poisoned_set
    from badnet_prune.synth.faces import sample_identities

    identities = sample_identities(np.random.default_rng(row["seed"]), row["classes"])  # as zoo.draw_data
    target = row["targets"]["blended"]
    poison = Poison("blended", target, (alpha, alpha))
    photos = poisoned_set(np.random.default_rng([row["seed"], 1]), identities, poison, count, blend_key(row["seed"]))
    forward = compiled_forward(load_model(zoo / row["folder"] / "models" / "bd_weights.h5"))
    return float(np.mean(forward_labels(forward, photos.images) == target) * 100.0)


if __name__ == "__main__":
    sys.exit(main())
