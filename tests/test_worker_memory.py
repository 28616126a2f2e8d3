"""What a worker keeps between tasks: bounded, least recently used out, freed; the shared activation cache.

A model without a split is said once, not per task. Models, data sets and B's labels share one byte
budget; the activation cache folder has a cap, several workers write it at once, and a full disk only
turns the cache off (with one warning).
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import weakref
from pathlib import Path

import h5py
import numpy as np
import pytest

from badnet_prune.files.data import open_data_file, write_data_file
from badnet_prune.files.hashing import sha256_file
from badnet_prune.numerics.labelers import WholeModelLabeler
from badnet_prune.pipeline.runtime import ModelKey
from badnet_prune.worker import activation_cache
from badnet_prune.worker.activation_cache import CACHE_FILE, ActivationCache, cache_file_name, cache_usage, clear_cache
from badnet_prune.worker.loaded import WorkerMemory, model_bytes
from tests.helpers import random_badnet, run_cli
from tests.test_pruning_exact import deepid_with_bypass


def test_a_model_without_a_split_is_reported_once_per_process(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    path = tmp_path / "bypass.keras"
    deepid_with_bypass().save(path)
    key = ModelKey(str(path), "sha", 1.0, "conv_3", "pool_3", trust_code=False)
    memory = WorkerMemory(tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="badnet_prune.worker.loaded"):
        first = memory.model(key)
        second = memory.model(key)
    assert first is second
    assert not first.split.is_split
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(path) in warnings[0] and "whole model" in warnings[0]


# --- the in-process budget: least recently used first out, and out means freed ---------------------------------


@pytest.fixture(scope="module")
def badnets(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four random DeepIDs with tiny data files of their own (tests/helpers.py random_badnet)."""
    root = tmp_path_factory.mktemp("badnets")
    return [random_badnet(root / f"m{seed}", seed=seed, valid=8, test=8) for seed in range(4)]


def _key(root: Path) -> ModelKey:
    path = root / "models" / "bd_weights.h5"
    return ModelKey(str(path), sha256_file(path), 1.0, "conv_3", "pool_3", trust_code=False)


def _data(memory: WorkerMemory, loaded, root: Path, relative: str = "cl/valid.h5"):
    path = root / "data" / relative
    return memory.data(loaded, str(path), sha256_file(path))


def _budget_for(models: int, root: Path, tmp_path: Path) -> int:
    """A budget that holds `models` models with one data set and B's labels of it each, and no more."""
    probe = WorkerMemory(tmp_path / "probe-cache", cache_max_bytes=0)
    loaded = probe.model(_key(root))
    data = _data(probe, loaded, root)
    labels = probe.labels_at(loaded, {"": data})("", [], None)
    return int(models * (model_bytes(loaded) + data.nbytes + labels.nbytes) * 1.2)


def test_the_least_recently_used_model_goes_first_and_a_model_in_use_stays(badnets, tmp_path: Path):
    memory = WorkerMemory(tmp_path / "cache", max_bytes=_budget_for(2, badnets[0], tmp_path))
    first, second, third = (_key(root) for root in badnets[:3])
    loaded_first = memory.model(first)
    _data(memory, loaded_first, badnets[0])
    loaded_second = memory.model(second)
    _data(memory, loaded_second, badnets[1])
    # using the first model's data set counts as using the first model: the second is now the oldest
    _data(memory, loaded_first, badnets[0])
    memory.model(third)
    assert memory.bytes_held <= memory.max_bytes
    assert memory.model(first) is loaded_first
    assert memory.model(second) is not loaded_second, "the least recently used model should have been evicted"


def test_an_evicted_model_is_freed_and_the_models_kept_still_label_as_before(badnets, tmp_path: Path):
    memory = WorkerMemory(tmp_path / "cache", max_bytes=_budget_for(1, badnets[0], tmp_path))
    kept_root, evicted_root = badnets[2], badnets[3]
    loaded = memory.model(_key(evicted_root))
    evicted = weakref.ref(loaded.split.model), weakref.ref(loaded)
    labels_before = memory.labels_at(loaded, {"": _data(memory, loaded, evicted_root)})("", [3, 5], None)
    del loaded

    kept = memory.model(_key(kept_root))  # past the budget: the first model and its data go
    assert [ref() for ref in evicted] == [None, None], "an evicted model must not stay alive in the process"
    clean = _data(memory, kept, kept_root)
    labels = memory.labels_at(kept, {"": clean})
    reference = WholeModelLabeler(kept.split.model, "conv_3", {"": open_data_file(
        kept_root / "data" / "cl" / "valid.h5", kept.image_shape, kept.num_classes).read_all()}, 1.0)
    for pruned in ([], [3, 5], list(range(30))):
        np.testing.assert_array_equal(labels("", pruned, None), reference("", pruned, None))
    # and the evicted one, loaded again, labels as it did
    again = memory.model(_key(evicted_root))
    relabelled = memory.labels_at(again, {"": _data(memory, again, evicted_root)})("", [3, 5], None)
    np.testing.assert_array_equal(relabelled, labels_before)


def test_a_data_set_larger_than_the_whole_budget_still_serves_its_task(badnets, tmp_path: Path):
    memory = WorkerMemory(tmp_path / "cache", max_bytes=1)
    loaded = memory.model(_key(badnets[0]))
    data = _data(memory, loaded, badnets[0])
    assert data.cut is not None and len(data.labels) == 8
    assert memory.counts() == {"model": 0, "data": 1, "labels": 0}


def test_rss_stays_flat_over_many_distinct_models_within_the_budget(tmp_path: Path):
    # unbounded, each distinct DeepID cost a worker about 6 MiB for good (bench/worker_memory.py)
    from badnet_prune.files.model_io import save_legacy_weights
    from badnet_prune.numerics.architecture import build_deepid
    from badnet_prune.numerics.tf_setup import keras

    model = build_deepid(10)
    initial = model.get_weights()
    paths = []
    for seed in range(16):
        noise = np.random.default_rng(seed)
        model.set_weights([w + noise.normal(0, 0.02, w.shape).astype(w.dtype) for w in initial])
        paths.append(tmp_path / f"m{seed}.h5")
        save_legacy_weights(model, paths[-1])
    del model
    keras.backend.clear_session()
    data_path = tmp_path / "valid.h5"
    write_data_file(data_path, np.random.default_rng(0).uniform(0, 255, (8, 55, 47, 3)), np.arange(8) % 10)
    data_sha = sha256_file(data_path)
    memory = WorkerMemory(tmp_path / "cache", max_bytes=40 * 2**20)

    def run(path: Path) -> None:
        loaded = memory.model(ModelKey(str(path), sha256_file(path), 1.0, "conv_3", "pool_3", trust_code=False))
        memory.labels_at(loaded, {"": memory.data(loaded, str(data_path), data_sha)})("", [], None)

    for path in paths[:6]:  # TensorFlow's one-time allocations, and the budget filled
        run(path)
    gc.collect()
    before = _rss_mib()
    for path in paths[6:]:
        run(path)
    grown = _rss_mib() - before
    assert memory.counts()["model"] < 6
    assert grown < 20, f"RSS grew {grown:.0f} MiB over 10 distinct models (about 6 MiB each if nothing is freed)"


def _rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --- the shared activation cache: a cap, least recently used out, several writers, a full disk ------------------


def _name(index: int) -> str:
    return cache_file_name(f"{index:024x}" + "0" * 40, "pool_3", 1.0, "d" * 64)


def _cut(kib: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((kib, 256)).astype(np.float32)  # kib KiB


def test_the_cache_evicts_the_least_recently_used_files_past_its_cap_and_a_hit_counts_as_use(tmp_path: Path):
    folder = tmp_path / "cache"
    one_file = os.path.getsize(_written(folder, _name(0), _cut(64)))
    cache = ActivationCache(folder, max_bytes=int(3.5 * one_file))
    for index in (1, 2):
        cache.write(_name(index), _cut(64, index))
    for age, index in enumerate((0, 1, 2)):  # written in that order, an hour apart, long ago
        os.utime(folder / _name(index), (1e9 + 3600 * age, 1e9 + 3600 * age))
    np.testing.assert_array_equal(cache.read(_name(0), 64), _cut(64))  # the oldest, used now
    cache.write(_name(3), _cut(64, 3))
    cache.write(_name(4), _cut(64, 4))
    left = sorted(path.name for path in folder.iterdir())
    assert left == sorted([_name(0), _name(3), _name(4)]), "1 and 2 were the least recently used"
    assert cache_usage(folder).total_bytes <= cache.max_bytes
    np.testing.assert_array_equal(cache.read(_name(4), 64), _cut(64, 4))
    assert cache.read(_name(4), 65) is None, "a file of another image count is not the data set's"


def test_a_cap_of_zero_writes_nothing_and_a_cut_larger_than_the_cap_is_not_written(tmp_path: Path):
    ActivationCache(tmp_path / "off", max_bytes=0).write(_name(0), _cut(4))
    assert not (tmp_path / "off").exists()
    ActivationCache(tmp_path / "small", max_bytes=1000).write(_name(0), _cut(4))
    assert cache_usage(tmp_path / "small").files == 0


def test_eviction_and_clearing_leave_files_that_are_not_the_caches_alone(tmp_path: Path):
    # the attacker's test: BADNET_PRUNE_CACHE=$HOME must never cost the user a file
    folder = tmp_path / "home"
    folder.mkdir()
    theirs = [folder / "notes.h5", folder / "thesis.pdf", folder / f"{'a' * 24}-x.h5"]
    for path in theirs:
        path.write_bytes(b"x" * 100_000)
    one_file = os.path.getsize(_written(folder, _name(0), _cut(4)))
    ActivationCache(folder, max_bytes=one_file).write(_name(1), _cut(4))  # room for one of its own files
    assert sorted(folder.iterdir()) == sorted([*theirs, folder / _name(1)])
    assert cache_usage(folder).files == 1
    assert clear_cache(folder) == 1
    assert sorted(folder.iterdir()) == sorted(theirs)


def test_a_dead_writers_temporary_is_removed_and_a_live_writers_is_left(tmp_path: Path):
    folder = tmp_path / "cache"
    folder.mkdir()
    dead, live = folder / f".{_name(0)}.a1b2.tmp", folder / f".{_name(1)}.c3d4.tmp"
    for path in (dead, live):
        path.write_bytes(b"half a file")
    os.utime(dead, (1e9, 1e9))
    _written(folder, _name(2), _cut(4))
    assert clear_cache(folder) == 1
    assert sorted(folder.iterdir()) == [live], "a temporary being written now must be left to its writer"


WRITER = """
import sys
from pathlib import Path
import numpy as np
from badnet_prune.worker.activation_cache import ActivationCache, cache_file_name

folder, worker, count, cap = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cache = ActivationCache(folder, max_bytes=cap)
for index in range(count):
    name = cache_file_name(f"{1000 * worker + index:024x}" + "0" * 40, "pool_3", 1.0, "d" * 64)
    cache.write(name, np.random.default_rng(index).standard_normal((32, 256)).astype(np.float32))
    cache.read(cache_file_name(f"{1000 * worker + index // 2:024x}" + "0" * 40, "pool_3", 1.0, "d" * 64), 32)
"""


def test_several_processes_write_and_evict_at_once_without_an_error_or_a_half_written_file(tmp_path: Path):
    folder = tmp_path / "cache"
    one_file = os.path.getsize(_written(tmp_path / "probe", _name(0), _cut(32)))
    cap = 6 * one_file
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(worker), "15", str(cap)],
                         stderr=subprocess.PIPE, text=True)
        for worker in range(4)
    ]
    for writer in writers:
        _, errors = writer.communicate(timeout=120)
        assert writer.returncode == 0, errors
    names = [path.name for path in folder.iterdir()]
    assert all(CACHE_FILE.match(name) for name in names), f"temporaries left behind: {names}"
    assert cache_usage(folder).total_bytes <= cap
    for name in names:  # every file left is whole
        with h5py.File(folder / name, "r") as handle:
            assert handle["cut"].shape == (32, 256)


def _full_disk_mkstemp(dir: str, prefix: str, suffix: str) -> tuple[int, str]:
    """mkstemp whose file is /dev/full: every write to it fails with the kernel's ENOSPC."""
    path = os.path.join(dir, f"{prefix}full{suffix}")
    os.symlink("/dev/full", path)
    return os.open(path, os.O_WRONLY), path


def test_a_full_disk_turns_the_cache_off_with_one_warning_and_the_model_still_runs(
    badnets, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setattr(activation_cache.tempfile, "mkstemp", _full_disk_mkstemp)
    folder = tmp_path / "cache"
    memory = WorkerMemory(folder, cache_max_bytes=10**9)
    reference = WorkerMemory(tmp_path / "no-cache", cache_max_bytes=0)
    with caplog.at_level(logging.WARNING, logger="badnet_prune.worker.activation_cache"):
        loaded = memory.model(_key(badnets[0]))
        sets = {relative: _data(memory, loaded, badnets[0], relative) for relative in ("cl/valid.h5", "cl/test.h5")}
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(folder) in warnings[0] and "No space left on device" in warnings[0]
    assert list(folder.iterdir()) == [], "the failed write must leave nothing behind"
    expected = reference.model(_key(badnets[0]))
    for relative, data in sets.items():
        np.testing.assert_array_equal(data.cut, _data(reference, expected, badnets[0], relative).cut)
    assert memory.labels_at(loaded, {"": sets["cl/valid.h5"]})("", [1, 2], None).shape == (8,)


def test_a_cache_folder_that_cannot_be_made_turns_the_cache_off_with_one_warning(
    badnets, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    folder = tmp_path / "cache"
    folder.write_text("a file where the cache folder should be")
    memory = WorkerMemory(folder)
    with caplog.at_level(logging.WARNING, logger="badnet_prune.worker.activation_cache"):
        loaded = memory.model(_key(badnets[1]))
        for relative in ("cl/valid.h5", "cl/test.h5", "bd/bd_valid.h5"):
            assert _data(memory, loaded, badnets[1], relative).cut is not None
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(folder) in warnings[0], warnings


def test_install_runtime_gives_the_worker_the_settings_cache_cap(tmp_path: Path):
    from sqlalchemy import create_engine

    from badnet_prune.settings import Settings
    from badnet_prune.worker.runtime import install_runtime

    settings = Settings(cache_dir=tmp_path / "cache", cache_max_bytes="5MB")
    runtime = install_runtime(settings, dispatcher=None, engine=create_engine("sqlite://"))
    assert runtime.memory.activation_cache.folder == tmp_path / "cache"
    assert runtime.memory.activation_cache.max_bytes == 5 * 10**6


def test_the_cache_command_shows_the_folder_its_files_size_and_cap_and_clears_it(tmp_path: Path):
    folder = tmp_path / "cache"
    sizes = [os.path.getsize(_written(folder, _name(index), _cut(16, index))) for index in range(3)]
    (folder / "keep-me.txt").write_text("not the cache's")
    env = {**os.environ, "BADNET_PRUNE_CACHE": str(folder), "BADNET_PRUNE_CACHE_MAX_BYTES": "2GB"}
    shown = run_cli("cache", env=env)
    assert shown.returncode == 0, shown.stderr
    assert f"folder: {folder}" in shown.stdout
    assert "files: 3" in shown.stdout
    assert f"size: {sum(sizes) / 1000:.1f} kB" in shown.stdout
    assert "cap: 2.0 GB" in shown.stdout
    cleared = run_cli("cache", "--clear", env=env)
    assert cleared.returncode == 0, cleared.stderr
    assert "removed 3 files" in cleared.stdout
    assert [path.name for path in folder.iterdir()] == ["keep-me.txt"]
    again = run_cli("cache", env=env)
    assert "files: 0" in again.stdout


def _written(folder: Path, name: str, cut: np.ndarray) -> Path:
    ActivationCache(folder).write(name, cut)
    return folder / name
