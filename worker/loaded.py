"""What a worker process keeps in memory between tasks: loaded models and their data sets.

A model is loaded once per process and kept with its split and compiled tail. A data set is
read once per process; its cut activations come from memory, else from the shared HDF5 cache
(keyed by model and data sha256), else are computed and written there for other workers.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from badnet_prune.activations import cut_activations, live_channels
from badnet_prune.data import open_data_file
from badnet_prune.inference import compiled_forward
from badnet_prune.labelers import CutLabeler, WholeModelLabeler
from badnet_prune.model_io import image_shape, load_model, num_classes
from badnet_prune.network_split import SplitNetwork, split_network
from badnet_prune.pruning import LabeledSet, LabelsAt

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelKey:
    path: str
    sha256: str
    input_scale: float
    prune_layer: str
    rank_layer: str
    trust_code: bool


@dataclass
class LoadedModel:
    key: ModelKey
    split: SplitNetwork
    num_classes: int
    image_shape: tuple[int, int, int]
    head_forward: object
    tail_forward: object | None


@dataclass(frozen=True)
class LoadedData:
    """One data file for one model: labels, liveness, and cut activations (or images, unsplit)."""

    sha256: str
    labels: np.ndarray
    live: np.ndarray
    cut: np.ndarray | None
    images: np.ndarray | None


class WorkerMemory:
    """Per-process caches; never shared across a fork (each pool child builds its own)."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)
        self._models: dict[ModelKey, LoadedModel] = {}
        self._data: dict[tuple[ModelKey, str], LoadedData] = {}
        self._unpruned_labels: dict[tuple[ModelKey, str], np.ndarray] = {}

    def model(self, key: ModelKey) -> LoadedModel:
        if key not in self._models:
            network = load_model(key.path, trust_code=key.trust_code)
            split = split_network(network, key.prune_layer, key.rank_layer)
            if not split.is_split:
                LOG.warning(
                    "%s: layers after %s also read inputs that bypass %s, so the network has no split: each "
                    "pruning step runs the whole model on every image (exact, but slower)",
                    key.path, split.cut_layer, key.prune_layer,
                )
            self._models[key] = LoadedModel(
                key=key,
                split=split,
                num_classes=num_classes(network),
                image_shape=image_shape(network),
                head_forward=compiled_forward(split.head),
                tail_forward=compiled_forward(split.tail) if split.tail is not None else None,
            )
        return self._models[key]

    def data(self, loaded: LoadedModel, path: str, sha256: str) -> LoadedData:
        cache_key = (loaded.key, sha256)
        if cache_key not in self._data:
            self._data[cache_key] = self._load_data(loaded, path, sha256)
        return self._data[cache_key]

    def _load_data(self, loaded: LoadedModel, path: str, sha256: str) -> LoadedData:
        split = loaded.split
        data_file = open_data_file(path, loaded.image_shape, loaded.num_classes)
        if not split.is_split:
            images = data_file.read_all()
            live = np.ones((data_file.count, split.channel_count), dtype=bool)
            return LoadedData(sha256, data_file.labels, live, None, images)
        name = f"{loaded.key.sha256[:24]}-{split.cut_layer}-{loaded.key.input_scale:g}-{sha256[:24]}.h5"
        cache_file = self.cache_dir / name
        cut = _read_cached_cut(cache_file, data_file.count)
        if cut is None:
            cut = cut_activations(loaded.head_forward, data_file.batches(), loaded.key.input_scale)
            _write_cached_cut(cache_file, cut)
        return LoadedData(sha256, data_file.labels, live_channels(cut, split.pruned_values), cut, None)

    def labels_at(self, loaded: LoadedModel, sets: Mapping[str, LoadedData]) -> LabelsAt:
        """The labeler for these data sets: tail on cut activations, or the whole model if unsplit.

        B's own labels of a data set (nothing pruned) are kept for the process's life: the rank
        task, the first range and every threshold task ask for them again.
        """
        labeler: LabelsAt
        if loaded.split.is_split:
            labeler = CutLabeler(
                loaded.split, {name: data.cut for name, data in sets.items()}, loaded.tail_forward,
                live={name: data.live for name, data in sets.items()},
            )
        else:
            labeler = WholeModelLabeler(
                loaded.split.model, loaded.split.prune_layer,
                {name: data.images for name, data in sets.items()}, loaded.key.input_scale,
            )
        cache_keys = {name: (loaded.key, data.sha256) for name, data in sets.items()}

        def labels_at(key: str, pruned: Sequence[int], rows: np.ndarray | None = None) -> np.ndarray:
            if len(pruned) or rows is not None:
                return labeler(key, pruned, rows)
            cache_key = cache_keys[key]
            if cache_key not in self._unpruned_labels:
                self._unpruned_labels[cache_key] = labeler(key, pruned, None)
            return self._unpruned_labels[cache_key].copy()

        return labels_at


def labeled_set(name: str, data: LoadedData) -> LabeledSet:
    return LabeledSet(name=name, labels=data.labels, live=data.live)


def _read_cached_cut(path: Path, count: int) -> np.ndarray | None:
    try:
        with h5py.File(path, "r") as handle:
            cut = np.asarray(handle["cut"])
    except (OSError, KeyError):
        return None
    return cut if cut.shape[0] == count else None


def _write_cached_cut(path: Path, cut: np.ndarray) -> None:
    """Write atomically (temporary file, then rename) so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(handle)
    try:
        with h5py.File(temporary, "w") as out:
            out.create_dataset("cut", data=cut)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
