"""What a stage's job may use of the process it runs in: the contract's side of the worker runtime.

The worker implements it (badnet_prune.worker.runtime), and so may a test; a job never imports the
worker. It reads settings, opens sessions on the engine, loads models and data sets through the
process's memory (loaded once per process, bounded), and says how far it is. Nothing here imports
TensorFlow: planning and status read the stage declarations that use it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from badnet_prune.numerics.pruning import LabeledSet, LabelsAt, StepLabels

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from badnet_prune.numerics.network_split import SplitNetwork
    from badnet_prune.settings import Settings


@dataclass(frozen=True)
class ModelKey:
    """A model as a process keeps it: its file (by hash), how it is fed, where it is split."""

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
    """One data file for one model: labels, liveness, and cut activations (or images, unsplit).

    true_labels: each image's label before poisoning, where a poisoned file carries them.
    """

    sha256: str
    labels: np.ndarray
    live: np.ndarray
    cut: np.ndarray | None
    images: np.ndarray | None
    true_labels: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        arrays = (self.labels, self.live, self.cut, self.images, self.true_labels)
        return sum(array.nbytes for array in arrays if array is not None)


def labeled_set(name: str, data: LoadedData) -> LabeledSet:
    return LabeledSet(name=name, labels=data.labels, live=data.live)


class Memory(Protocol):
    """A process's loaded models and data sets, and the labelers built on them."""

    @property
    def engine(self) -> str:
        """The pruning engine this process uses: 'dense' or 'sparse'."""
        ...

    def model(self, key: ModelKey) -> LoadedModel: ...

    def data(self, loaded: LoadedModel, path: str, sha256: str) -> LoadedData: ...

    def labels_at(self, loaded: LoadedModel, sets: Mapping[str, LoadedData]) -> LabelsAt: ...

    def step_labels(self, loaded: LoadedModel, sets: Mapping[str, LoadedData]) -> StepLabels | None: ...


class Runtime(Protocol):
    """The process a job runs in."""

    settings: Settings
    engine: Engine
    memory: Memory
    hostname: str

    def report_progress(self, task_id: int, done: int) -> None:
        """Say how many of a running task's progress units (its stage's: epochs, labels ...) are done; cheap,
        the worker writes it with the task's next lease renewal."""
        ...
