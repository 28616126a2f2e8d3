"""Bench: one worker process's memory over many distinct models (issue 19, issue 18 point 4).

Every model's tasks run in this one process the way the stages' jobs run them, on the worker's own
WorkerMemory: rank (channel means on clean validation data, B's accuracy), the pruning sweep over
every step, and each threshold's task (select B'_t, build and save B'_t and G_t, label the test
sets with B and B'_t). The models are DeepIDs with differently seeded weights, so that nothing cached
for one serves another; their data files are tiny, so the run measures what a model costs a worker,
not what its images do. The files are made first in a process of their own (not measured).

It prints the process's RSS at the start (after the first model, once TensorFlow's one-time
allocations are made) and every --every models, with what WorkerMemory holds and the shared
activation cache's size. With the default budget the RSS stays flat; --memory-bytes 1e12 shows what
an unbounded worker did.

    .venv/bin/python bench/worker_memory.py [--models 200] [--work /tmp/badnet-prune-worker-memory]
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
sys.path.insert(0, str(REPO))

CLASSES = 10
THRESHOLDS = (0.02, 0.04, 0.10)
SETS = {"clean_valid": "cl/valid.h5", "clean_test": "cl/test.h5", "bd_valid": "bd/bd_valid.h5",
        "bd_test": "bd/bd_test.h5"}


def make_files(work: Path, models: int, images: int) -> None:
    """DeepID weight files seeded 0..models-1 and four shared data files of `images` images each."""
    import numpy as np

    from badnet_prune.files.data import write_data_file
    from badnet_prune.files.model_io import save_legacy_weights
    from badnet_prune.numerics.architecture import build_deepid
    from badnet_prune.numerics.tf_setup import keras

    rng = np.random.default_rng(0)
    for name, relative in SETS.items():
        labels = np.zeros(images, np.int64) if name.startswith("bd") else rng.integers(0, CLASSES, images)
        write_data_file(work / relative, rng.uniform(0, 255, (images, 55, 47, 3)).astype(np.float32), labels)
    keras.utils.set_random_seed(0)
    model = build_deepid(CLASSES)
    initial = model.get_weights()
    for seed in range(models):
        path = work / "models" / f"m{seed:04d}.h5"
        if path.exists():
            continue
        noise = np.random.default_rng(seed)
        model.set_weights([w + noise.normal(0.0, 0.02, w.shape).astype(w.dtype) for w in initial])
        save_legacy_weights(model, path)


def rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_model(memory, path: Path, work: Path, artifacts: Path) -> None:
    """One model's rank, sweep and threshold tasks, as the stages' jobs (badnet_prune.pipeline.stages) do them."""
    from badnet_prune.files.hashing import sha256_file
    from badnet_prune.numerics.activations import channel_means, rank_activation_batches
    from badnet_prune.numerics.evaluation import CLEAN_TEST, evaluate_networks, poisoned_test
    from badnet_prune.numerics.inference import accuracy_percent, compiled_forward
    from badnet_prune.numerics.pruned_model import build_pruned_model
    from badnet_prune.numerics.pruning import prune_range, pruned_labels
    from badnet_prune.numerics.ranking import rank_channels
    from badnet_prune.numerics.repair import build_repaired_net
    from badnet_prune.numerics.selection import select_steps
    from badnet_prune.pipeline.runtime import ModelKey, labeled_set

    key = ModelKey(str(path), sha256_file(path), 1.0, "conv_3", "pool_3", trust_code=False)
    shas = {name: sha256_file(work / relative) for name, relative in SETS.items()}

    def data(loaded, name):
        return memory.data(loaded, str(work / SETS[name]), shas[name])

    # rank
    loaded = memory.model(key)
    clean = data(loaded, "clean_valid")
    split = loaded.split
    rank_forward = compiled_forward(split.rank_from_cut) if split.rank_from_cut is not None else None
    order = rank_channels(channel_means(rank_activation_batches(clean.cut, rank_forward)))
    acc0 = accuracy_percent(memory.labels_at(loaded, {"": clean})("", [], None), clean.labels)
    # the sweep, as one range
    loaded = memory.model(key)
    clean, poisoned = data(loaded, "clean_valid"), data(loaded, "bd_valid")
    labels_at = memory.labels_at(loaded, {"clean": clean, "poisoned:bd": poisoned})
    steps = prune_range(labels_at, labeled_set("clean", clean), {"bd": labeled_set("poisoned:bd", poisoned)},
                        order, 0, len(order) + 1)
    selected = select_steps(acc0, [s.clean_accuracy for s in steps], list(THRESHOLDS), "first")
    # one task per threshold
    for threshold in THRESHOLDS:
        step = selected[threshold]
        loaded = memory.model(key)
        tests = {CLEAN_TEST: data(loaded, "clean_test"), poisoned_test("bd"): data(loaded, "bd_test")}
        keys = {test_set: f"{test_set.role}:{test_set.poison_name}" for test_set in tests}
        labels_at = memory.labels_at(loaded, {keys[test_set]: d for test_set, d in tests.items()})
        labels_b = {test_set: labels_at(keys[test_set], [], None) for test_set in tests}
        labels_b_prime = {}
        if step is not None:
            pruned = order[:step]
            b_prime = build_pruned_model(split.model, "conv_3", pruned)
            for kind, network in (("B_prime", b_prime), ("G", build_repaired_net(split.model, b_prime))):
                network.save(artifacts / f"{kind}.keras")
            labels_b_prime = {f"{threshold:g}": {
                test_set: pruned_labels(labels_at, labeled_set(keys[test_set], d), pruned, labels_b[test_set])
                for test_set, d in tests.items()
            }}
        evaluate_networks(labels_b, labels_b_prime, {t: d.labels for t, d in tests.items()}, loaded.num_classes)


def run(work: Path, models: int, every: int, memory_bytes: int, cache_max_bytes: int | None) -> None:
    from badnet_prune.numerics.tf_setup import configure_tensorflow
    from badnet_prune.worker.activation_cache import cache_usage, clear_cache
    from badnet_prune.worker.loaded import WorkerMemory

    configure_tensorflow()
    cache = work / "cache"
    clear_cache(cache)
    memory = WorkerMemory(cache, max_bytes=memory_bytes, cache_max_bytes=cache_max_bytes)
    paths = sorted((work / "models").glob("m*.h5"))[:models]
    artifacts = Path(tempfile.mkdtemp(prefix="artifacts-", dir=work))

    def report(done: int, elapsed: float) -> None:
        usage = cache_usage(cache)
        counts = memory.counts()
        print(f"{done:4d} models  RSS {rss_mib():7.1f} MiB  memory {memory.bytes_held / 2**20:6.1f} MiB "
              f"({counts['model']} models, {counts['data']} data sets, {counts['labels']} label sets)  "
              f"activation cache {usage.files} files {usage.total_bytes / 2**20:6.1f} MiB  {elapsed:6.1f} s",
              flush=True)

    began = time.perf_counter()
    start_rss = full = full_rss = None
    for done, path in enumerate(paths, start=1):
        run_model(memory, path, work, artifacts)
        if done == 1:
            start_rss = rss_mib()
        if full is None and memory.counts()["model"] < done:  # the first eviction: the budget is full
            full, full_rss = done, rss_mib()
        if done == 1 or done % every == 0 or done == len(paths):
            report(done, time.perf_counter() - began)
    assert start_rss is not None
    end_rss = rss_mib()
    print(f"RSS after model 1: {start_rss:.1f} MiB; after model {len(paths)}: {end_rss:.1f} MiB "
          f"({end_rss - start_rss:+.1f} MiB)")
    if full is not None and full_rss is not None and full < len(paths):
        grown = end_rss - full_rss
        print(f"budget full from model {full} ({full_rss:.1f} MiB); from there to model {len(paths)}: "
              f"{grown:+.1f} MiB, {grown / (len(paths) - full):+.3f} MiB a model")
    else:
        print(f"the budget never filled: {(end_rss - start_rss) / max(len(paths) - 1, 1):+.3f} MiB a model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "badnet-prune-worker-memory")
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--images", type=int, default=16, help="images per data file")
    parser.add_argument("--every", type=int, default=25, help="print a line every this many models")
    parser.add_argument("--memory-bytes", type=float, default=None, help="WorkerMemory's budget (default its own)")
    parser.add_argument("--cache-max-bytes", type=float, default=None,
                        help="the activation cache's cap (default: the settings' default)")
    parser.add_argument("--make-files", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_files:
        make_files(args.work, args.models, args.images)
        return
    # the files are made in a process of their own, so that building them does not count here
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, __file__, "--make-files", "--work", str(args.work), "--models", str(args.models),
                    "--images", str(args.images)], check=True, env=env)
    from badnet_prune.settings import DEFAULT_CACHE_MAX_BYTES
    from badnet_prune.worker.loaded import DEFAULT_MEMORY_BYTES

    memory_bytes = DEFAULT_MEMORY_BYTES if args.memory_bytes is None else int(args.memory_bytes)
    cache_max = DEFAULT_CACHE_MAX_BYTES if args.cache_max_bytes is None else int(args.cache_max_bytes)
    print(f"{args.models} models, {args.images} images per data file; WorkerMemory budget "
          f"{memory_bytes / 2**20:.0f} MiB, activation cache cap {cache_max / 2**20:.1f} MiB", flush=True)
    run(args.work, args.models, args.every, memory_bytes, cache_max)


if __name__ == "__main__":
    main()
