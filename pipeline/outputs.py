"""What every defense's job writes: networks evaluated on the test files, and model files with their provenance.

A defense makes a pruned net per setting and its repaired net G; both are evaluated on every test
file by the one rule (badnet_prune.numerics.evaluation) against B, and saved as plain-Keras files
beside a JSON of where they came from. Files are written atomically; a task that fails after writing
removes them, so no file outlives a task without its rows. Rows are upserts keyed by what they
describe, so a redelivered task rewrites its own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from badnet_prune.db.inputs import ModelInputs
from badnet_prune.db.results import save_artifact, save_evaluation
from badnet_prune.files.artifact_files import (
    remove_artifacts,
    remove_stale_temporaries,
    save_atomically,
    write_text_atomically,
)
from badnet_prune.files.data import open_data_file
from badnet_prune.files.hashing import sha256_file
from badnet_prune.numerics.evaluation import (
    CLEAN_TEST,
    EvaluationSet,
    NetworkEvaluation,
    evaluate_networks,
    poisoned_test,
)
from badnet_prune.numerics.inference import compiled_forward, predict_labels
from badnet_prune.pipeline.inputs import role_data, set_key
from badnet_prune.pipeline.presentation import Network
from badnet_prune.pipeline.runtime import LoadedData, LoadedModel, Runtime

Written = list[tuple[str, str, dict[str, Any]]]  # (artifact kind, path, provenance)


def declared_networks() -> dict[str, Network]:
    """Every network the stages declare, by name."""
    from badnet_prune.pipeline.contract import stages

    return {network.name: network for stage in stages() if stage.presentation is not None
            for network in stage.presentation.networks}


def artifact_folder(inputs: ModelInputs) -> Path:
    """DIR itself for `defend`; DIR/sweep-<id>/<model> for sweeps, so that sweeps never mix files.

    Model names are identifiers (badnet_prune.numerics.names), and the folder is checked to stay inside
    DIR after resolution all the same: a name is never a path.
    """
    base = Path(inputs.artifact_dir).resolve()
    folder = base if inputs.flat_artifacts else (base / f"sweep-{inputs.sweep_id}" / inputs.name).resolve()
    if not folder.is_relative_to(base):
        raise RuntimeError(f"model {inputs.name!r}: its artifact folder would lie outside {base}")
    return folder


def provenance_of(inputs: ModelInputs, **made: Any) -> dict[str, Any]:
    """What a file made from B records of its making (beside it as JSON, and in the artifacts table):
    the source model, how it was fed and split, and what the stage did (`made`)."""
    return {
        "source_model": inputs.path,
        "source_sha256": inputs.sha256,
        "input_scale": inputs.input_scale,
        "prune_layer": inputs.prune_layer,
        "rank_layer": inputs.rank_layer,
        "policy": inputs.policy,
        **made,
    }


def write_networks(inputs: ModelInputs, key: str, networks: Sequence[tuple[Network, Any]],
                   provenance: Mapping[str, Any]) -> Written:
    """Save each (network, Keras model) as NAME_KEY.keras with NAME_KEY.json beside it; all or nothing.

    The JSON names the network's kind and whether it is a repaired net (its last output is N,
    "backdoor detected"), so that `classify` reads any stage's files without knowing the stage."""
    folder = artifact_folder(inputs)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    written: Written = []
    try:
        for declared, network in networks:
            path = folder / f"{declared.name}_{key}.keras"
            save_atomically(network, path)
            described = {**provenance, "kind": declared.name, "repaired": declared.repaired}
            written.append((declared.name, str(path), described))
            write_text_atomically(path.with_suffix(".json"), json.dumps(described, indent=2) + "\n")
    except BaseException:
        remove_artifacts([path for _, path, _ in written])  # no half of a setting's files without its rows
        raise
    return written


def discard(written: Written) -> None:
    """Remove the files of a task that failed before recording them."""
    remove_artifacts([path for _, path, _ in written])


def test_sets(runtime: Runtime, loaded: LoadedModel, inputs: ModelInputs) -> dict[EvaluationSet, LoadedData]:
    """The clean test file and every poisoned one, as the process's memory holds them."""
    tests: dict[EvaluationSet, LoadedData] = {CLEAN_TEST: role_data(runtime, loaded, inputs, "clean_test")[""]}
    poisoned = role_data(runtime, loaded, inputs, "poisoned_test")
    tests.update({poisoned_test(name): data for name, data in poisoned.items()})
    return tests


def labels_of_b(runtime: Runtime, loaded: LoadedModel, tests: Mapping[EvaluationSet, LoadedData]):
    """B's labels on each test set, and the labeler that gives any pruned step's (labels_at)."""
    keys = {test_set: set_key(test_set.role, test_set.poison_name) for test_set in tests}
    labels_at = runtime.memory.labels_at(loaded, {keys[test_set]: data for test_set, data in tests.items()})
    return {test_set: labels_at(keys[test_set], [], None) for test_set in tests}, labels_at, keys


def labels_of_model(model: Any, loaded: LoadedModel, inputs: ModelInputs) -> dict[EvaluationSet, np.ndarray]:
    """A whole Keras model's labels on every test file, in batches through the configured forward pass."""
    refs = {CLEAN_TEST: inputs.data["clean_test"][""]}
    refs.update({poisoned_test(name): ref for name, ref in inputs.data.get("poisoned_test", {}).items()})
    forward = compiled_forward(model)
    labels = {}
    for test_set, ref in refs.items():
        data_file = open_data_file(ref.path, loaded.image_shape, loaded.num_classes, expected_sha256=ref.sha256)
        labels[test_set] = predict_labels(forward, data_file.batches(), inputs.input_scale)
    return labels


def evaluate_pair(tests: Mapping[EvaluationSet, LoadedData], labels_b: Mapping[EvaluationSet, np.ndarray],
                  pruned: Mapping[str, Mapping[EvaluationSet, np.ndarray]], num_classes: int,
                  names: tuple[str, str], *, with_b: bool = False) -> list[NetworkEvaluation]:
    """A stage's pruned net and its repaired net per setting key (and B with with_b) on every test set."""
    truth = {test_set: data.labels for test_set, data in tests.items()}
    true_labels = {test_set: data.true_labels for test_set, data in tests.items() if data.true_labels is not None}
    return evaluate_networks(labels_b, pruned, truth, num_classes, names=names, with_b=with_b,
                             true_labels=true_labels)


def save_test_results(session: Session, model_id: int, key: str, evaluations: Sequence[NetworkEvaluation],
                      written: Written) -> None:
    """A setting's networks on the test files, and the files written for it (kind, path, provenance).

    Only B and the networks a stage declares are stored, and only a declared repaired net flags images: the
    schema bounds the names, the registry says which exist."""
    declared = declared_networks()
    for row in evaluations:
        network = declared.get(row.network)
        if row.network != "B" and network is None:
            raise ValueError(f"network {row.network!r} is declared by no stage")
        if row.flagged is not None and not (network is not None and network.repaired):
            raise ValueError(f"network {row.network!r} is not a repaired net: it flags nothing")
    for kind, _, _ in written:
        if kind not in declared:
            raise ValueError(f"artifact kind {kind!r} is declared by no stage")
    for row in evaluations:
        save_evaluation(
            session, model_id, network=row.network, threshold=row.threshold, role=row.test_set.role,
            poison_name=row.test_set.poison_name, accuracy=row.accuracy, image_count=row.image_count,
            flagged=row.flagged, robust_accuracy=row.robust_accuracy,
        )
    for kind, path, provenance in written:
        save_artifact(session, model_id, threshold=key, kind=kind, path=path, sha256=sha256_file(path),
                      provenance=provenance)
