"""What a worker process keeps in memory between tasks: loaded models and their data sets.

A model is loaded once per process and kept with its split and compiled tail. A data set is
read once per process; its cut activations come from memory, else from the shared HDF5 cache
(keyed by model and data sha256), else are computed and written there for other workers.

What is kept is bounded: every worker may receive every model's tasks, so a worker that kept
each model for its life grew by a model's size per model (issue 19: 0.96 to 2.75 GB over 150
models). Models, data sets, B's labels and the dense engine's device copies of data sets share one
byte budget, least recently used first out.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np

from badnet_prune.files.data import open_data_file
from badnet_prune.files.model_io import image_shape, load_model, num_classes
from badnet_prune.numerics.activations import cut_activations, live_channels
from badnet_prune.numerics.dense_engine import DenseLabeler, chosen_engine
from badnet_prune.numerics.inference import compiled_forward
from badnet_prune.numerics.labelers import CutLabeler, WholeModelLabeler
from badnet_prune.numerics.network_split import split_network
from badnet_prune.numerics.pruning import LabelsAt, StepLabels
from badnet_prune.pipeline.runtime import LoadedData, LoadedModel, ModelKey
from badnet_prune.worker.activation_cache import ActivationCache, cache_file_name

LOG = logging.getLogger(__name__)

DEFAULT_MEMORY_BYTES = 2**30
# A loaded model costs more than its weights: Keras's layer and graph objects, the head, tail and rank
# sub-models and their traced functions. Measured with bench/worker_memory.py (TensorFlow, CPU): about
# 6 MiB of RSS per 10-class DeepID of 1.6 MB of weights, so the estimate is twice the weights plus 4 MiB.
MODEL_WEIGHT_FACTOR = 2
MODEL_OVERHEAD_BYTES = 4 * 2**20


class WorkerMemory:
    """Per-process caches; never shared across a fork (each pool child builds its own).

    max_bytes bounds what is kept (models by estimate, arrays by nbytes): past it, the least
    recently used entries go, whatever their kind. The entry just made is always kept, so a data set
    larger than the budget still works (it is read again by the next task that needs it). Using a
    data set or B's labels also counts as using their model, so a model in use outlives the rest.
    cache_max_bytes caps the shared activation cache folder (None: no cap; 0: no cache files).
    engine is the setting BADNET_PRUNE_ENGINE (auto, dense or sparse), resolved when first needed.
    """

    def __init__(
        self, cache_dir: Path, max_bytes: int = DEFAULT_MEMORY_BYTES, cache_max_bytes: int | None = None,
        engine: str = "auto",
    ) -> None:
        self._engine_setting = engine
        self._engine: str | None = None
        self.cache_dir = Path(cache_dir)
        self.max_bytes = int(max_bytes)
        self.activation_cache = ActivationCache(self.cache_dir, cache_max_bytes)
        self._entries: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.RLock()

    @property
    def engine(self) -> str:
        """The pruning engine this process uses: 'dense' or 'sparse' (badnet_prune.numerics.dense_engine)."""
        if self._engine is None:
            self._engine = chosen_engine(self._engine_setting)
            LOG.info("pruning engine: %s (setting %s)", self._engine, self._engine_setting)
        return self._engine

    @property
    def bytes_held(self) -> int:
        """The budget's current use: the sum of the kept entries' sizes."""
        return self._bytes

    def counts(self) -> dict[str, int]:
        """How many models, data sets and label arrays are kept now."""
        with self._lock:
            kinds = [key[0] for key in self._entries]
        return {kind: kinds.count(kind) for kind in ("model", "data", "labels")}

    def model(self, key: ModelKey) -> LoadedModel:
        with self._lock:
            found = self._get(("model", key))
            if found is not None:
                return found
            loaded = self._load_model(key)
            self._put(("model", key), loaded, model_bytes(loaded))
            return loaded

    def _load_model(self, key: ModelKey) -> LoadedModel:
        network = load_model(key.path, trust_code=key.trust_code)
        split = split_network(network, key.prune_layer, key.rank_layer)
        if not split.is_split:
            LOG.warning(
                "%s: layers after %s also read inputs that bypass %s, so the network has no split: each "
                "pruning step runs the whole model on every image (exact, but slower)",
                key.path, split.cut_layer, key.prune_layer,
            )
        return LoadedModel(
            key=key,
            split=split,
            num_classes=num_classes(network),
            image_shape=image_shape(network),
            head_forward=compiled_forward(split.head),
            tail_forward=compiled_forward(split.tail) if split.tail is not None else None,
        )

    def data(self, loaded: LoadedModel, path: str, sha256: str) -> LoadedData:
        with self._lock:
            self._get(("model", loaded.key))
            found = self._get(("data", loaded.key, sha256))
            if found is not None:
                return found
            data = self._load_data(loaded, path, sha256)
            self._put(("data", loaded.key, sha256), data, data.nbytes)
            return data

    def _load_data(self, loaded: LoadedModel, path: str, sha256: str) -> LoadedData:
        split = loaded.split
        data_file = open_data_file(path, loaded.image_shape, loaded.num_classes, expected_sha256=sha256)
        if not split.is_split:
            images = data_file.read_all()
            live = np.ones((data_file.count, split.channel_count), dtype=bool)
            return LoadedData(sha256, data_file.labels, live, None, images, data_file.true_labels)
        name = cache_file_name(loaded.key.sha256, split.cut_layer, loaded.key.input_scale, sha256)
        cut = self.activation_cache.read(name, data_file.count)
        if cut is None:
            cut = cut_activations(loaded.head_forward, data_file.batches(), loaded.key.input_scale)
            self.activation_cache.write(name, cut)
        return LoadedData(sha256, data_file.labels, live_channels(cut, split.pruned_values), cut, None,
                          data_file.true_labels)

    def labels_at(self, loaded: LoadedModel, sets: Mapping[str, LoadedData]) -> LabelsAt:
        """The labeler for these data sets: tail on cut activations, or the whole model if unsplit.

        B's own labels of a data set (nothing pruned) are kept within the budget: the rank task,
        the first range and every threshold task ask for them again.
        """
        labeler: LabelsAt
        if loaded.split.is_split and self.engine == "dense":
            labeler = self._dense_labeler(loaded, sets)
        elif loaded.split.is_split:
            labeler = CutLabeler(
                loaded.split, {name: data.cut for name, data in sets.items()}, loaded.tail_forward,
                live={name: data.live for name, data in sets.items()},
            )
        else:
            labeler = WholeModelLabeler(
                loaded.split.model, loaded.split.prune_layer,
                {name: data.images for name, data in sets.items()}, loaded.key.input_scale,
            )
        entry_keys = {name: ("labels", loaded.key, data.sha256) for name, data in sets.items()}

        def labels_at(key: str, pruned: Sequence[int], rows: np.ndarray | None = None) -> np.ndarray:
            if len(pruned) or rows is not None:
                return labeler(key, pruned, rows)
            with self._lock:
                self._get(("model", loaded.key))
                labels = self._get(entry_keys[key])
                if labels is None:
                    labels = labeler(key, pruned, None)
                    self._put(entry_keys[key], labels, labels.nbytes)
                return labels.copy()

        return labels_at

    def step_labels(self, loaded: LoadedModel, sets: Mapping[str, LoadedData]) -> StepLabels | None:
        """Every image's labels at a range of steps on the device (the dense engine), or None where
        this process uses the sparse engine or the network has no split (then prune_range)."""
        if not loaded.split.is_split or self.engine != "dense":
            return None
        return self._dense_labeler(loaded, sets).step_labels

    def _dense_labeler(self, loaded: LoadedModel, sets: Mapping[str, LoadedData]) -> DenseLabeler:
        """The dense engine over these data sets, kept within the budget (by its device copy's bytes), so
        that the model's next tasks on the same sets find their activations on the device already."""
        key = ("dense", loaded.key, tuple(sorted((name, data.sha256) for name, data in sets.items())))
        with self._lock:
            self._get(("model", loaded.key))
            labeler = self._get(key)
            if labeler is None:
                labeler = DenseLabeler(loaded.split, {name: data.cut for name, data in sets.items()})
                self._put(key, labeler, labeler.device_bytes)
            return labeler

    def _get(self, key: Hashable):
        """The kept value for `key`, marked as the most recently used; None if not kept."""
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def _put(self, key: Hashable, value: object, size: int) -> None:
        """Keep `value`, then let the least recently used others go until the budget holds."""
        self._entries[key] = (value, size)
        self._bytes += size
        evicted_model = False
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            oldest = next(iter(self._entries))
            if oldest == key:
                self._entries.move_to_end(oldest)
                continue
            self._bytes -= self._entries.pop(oldest)[1]  # no reference left here: release_memory can free it
            evicted_model |= oldest[0] == "model"
        if evicted_model:
            release_memory()


def model_bytes(loaded: LoadedModel) -> int:
    """The budget's estimate of a loaded model: its weights scaled for what Keras and TensorFlow add."""
    weights = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in loaded.split.model.weights)
    return MODEL_WEIGHT_FACTOR * weights + MODEL_OVERHEAD_BYTES


def release_memory() -> None:
    """Free an evicted model now and hand the freed pages back to the system.

    A Keras model is a web of reference cycles (layers, nodes, traced functions), so only the cycle
    collector frees it; and glibc keeps freed heap pages unless asked to trim them, so without
    malloc_trim the RSS would not show the memory as free even though it is reused.
    """
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()
