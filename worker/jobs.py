"""The work of each task kind: read inputs by id, call the numerics, write results.

No transaction is held while TensorFlow computes: inputs are read in one short session,
results written in another, as upserts keyed by what they describe.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import replace
from pathlib import Path

from badnet_prune.db.inputs import ModelInputs, model_inputs, save_input_scale
from badnet_prune.db.repository import set_model_status
from badnet_prune.db.results import (
    StepRow,
    read_ranking,
    read_steps,
    save_artifact,
    save_evaluation,
    save_ranking,
    save_selection,
    save_steps,
)
from badnet_prune.db.session import session_scope
from badnet_prune.files.data import open_data_file
from badnet_prune.files.hashing import sha256_file
from badnet_prune.numerics.activations import channel_means, cut_activations, rank_activation_batches
from badnet_prune.numerics.evaluation import CLEAN_TEST, EvaluationSet, evaluate_networks, poisoned_test
from badnet_prune.numerics.inference import accuracy_percent, compiled_forward
from badnet_prune.numerics.input_scale import AUTO_INPUT_SCALE, SAMPLE_SIZE, SCALES, choose_input_scale
from badnet_prune.numerics.pruned_model import build_pruned_model
from badnet_prune.numerics.pruning import prune_range, prune_range_dense, pruned_labels
from badnet_prune.numerics.ranking import rank_channels
from badnet_prune.numerics.repair import build_repaired_net
from badnet_prune.numerics.selection import select_steps
from badnet_prune.numerics.thresholds import Threshold
from badnet_prune.worker.artifact_files import (
    remove_artifacts,
    remove_stale_temporaries,
    save_atomically,
    write_text_atomically,
)
from badnet_prune.worker.loaded import LoadedData, LoadedModel, ModelKey, labeled_set
from badnet_prune.worker.runtime import Runtime

LOG = logging.getLogger(__name__)


def read_inputs(runtime: Runtime, model_id: int) -> ModelInputs:
    with session_scope(runtime.engine) as session:
        return model_inputs(session, model_id)


def loaded_model(runtime: Runtime, inputs: ModelInputs) -> LoadedModel:
    key = ModelKey(
        path=inputs.path,
        sha256=inputs.sha256,
        input_scale=inputs.input_scale,
        prune_layer=inputs.prune_layer,
        rank_layer=inputs.rank_layer,
        trust_code=bool(inputs.config.get("trust_model_code", False)),
    )
    return runtime.memory.model(key)


def _data(runtime: Runtime, loaded: LoadedModel, inputs: ModelInputs, role: str) -> dict[str, LoadedData]:
    """The model's data files in one role, by poison name ('' for a clean role)."""
    return {
        name: runtime.memory.data(loaded, ref.path, ref.sha256) for name, ref in inputs.data.get(role, {}).items()
    }


def set_key(role: str, poison_name: str = "") -> str:
    """The name a labeler knows a data set by: the role, qualified by the poison's name (names hold no ':')."""
    return f"{role}:{poison_name}"


def rank_model(runtime: Runtime, model_id: int) -> None:
    """Rank the prune layer's channels on clean validation data and record B's accuracy there (acc0).

    The input scale is settled first (chosen, or the given one checked), so that the ranking, acc0 and
    every later task (which re-reads the model row) use it.
    """
    inputs = settle_input_scale(runtime, read_inputs(runtime, model_id))
    loaded = loaded_model(runtime, inputs)
    split = loaded.split
    clean = _data(runtime, loaded, inputs, "clean_valid")[""]
    if split.rank_from_input is not None:
        clean_path = inputs.data["clean_valid"][""].path
        images = (
            [clean.images] if clean.images is not None
            else open_data_file(clean_path, loaded.image_shape, loaded.num_classes).batches()
        )
        means = channel_means([cut_activations(compiled_forward(split.rank_from_input), images, inputs.input_scale)])
    else:
        rank_forward = compiled_forward(split.rank_from_cut) if split.rank_from_cut is not None else None
        means = channel_means(rank_activation_batches(clean.cut, rank_forward))
    order = rank_channels(means)
    key = set_key("clean_valid")
    labels = runtime.memory.labels_at(loaded, {key: clean})(key, [], None)
    with session_scope(runtime.engine) as session:
        save_ranking(session, model_id, [(int(c), position, float(means[c])) for position, c in enumerate(order)])
        set_model_status(
            session, model_id, "running", acc0=accuracy_percent(labels, clean.labels),
            channel_count=split.channel_count,
        )


def settle_input_scale(runtime: Runtime, inputs: ModelInputs) -> ModelInputs:
    """Choose the model's input scale (auto) or check the given one on the first images of its clean
    validation file, store the scale and its one line, and return the inputs with that scale.

    A model registered for auto is loaded at scale 1 to measure; when it expects 255 the ranking loads it
    again under that scale, since the scale is part of the worker's model key and activation cache names.
    """
    auto = inputs.input_scale_auto or inputs.input_scale == AUTO_INPUT_SCALE
    measured_at = SCALES[0] if inputs.input_scale == AUTO_INPUT_SCALE else inputs.input_scale
    loaded = loaded_model(runtime, replace(inputs, input_scale=measured_at))
    # no hash check here: the ranking reads the same file next, under its registered sha256
    sample = open_data_file(inputs.data["clean_valid"][""].path, loaded.image_shape)
    with closing(sample.batches(SAMPLE_SIZE)) as batches:
        images = next(batches)
    choice = choose_input_scale(compiled_forward(loaded.split.model), images, sample.labels[: len(images)],
                                loaded.num_classes, given=None if auto else inputs.input_scale)
    (LOG.warning if choice.warning else LOG.info)("model %s: %s", inputs.name, choice.note)
    with session_scope(runtime.engine) as session:
        save_input_scale(session, inputs.model_id, choice.scale, auto=auto, note=choice.note)
    return replace(inputs, input_scale=choice.scale, input_scale_auto=auto)


def prune_steps(runtime: Runtime, model_id: int, start: int, stop: int) -> None:
    """Steps [start, stop): clean validation accuracy and every poisoned set's ASR."""
    inputs = read_inputs(runtime, model_id)
    with session_scope(runtime.engine) as session:
        order = [channel for channel, _, _ in read_ranking(session, model_id)]
    loaded = loaded_model(runtime, inputs)
    clean = _data(runtime, loaded, inputs, "clean_valid")[""]
    poisoned = _data(runtime, loaded, inputs, "poisoned_valid")
    clean_key = set_key("clean_valid")
    poisoned_keys = {name: set_key("poisoned_valid", name) for name in poisoned}
    sets = {clean_key: clean, **{poisoned_keys[name]: data for name, data in poisoned.items()}}
    clean_set = labeled_set(clean_key, clean)
    poisoned_sets = {name: labeled_set(poisoned_keys[name], data) for name, data in poisoned.items()}
    step_labels = runtime.memory.step_labels(loaded, sets)
    if step_labels is not None:
        steps = prune_range_dense(step_labels, clean_set, poisoned_sets, order, start, stop)
    else:
        steps = prune_range(runtime.memory.labels_at(loaded, sets), clean_set, poisoned_sets, order, start, stop)
    rows = [
        StepRow(
            step=s.step, channel=s.channel, fraction_pruned=s.fraction_pruned, clean_accuracy=s.clean_accuracy,
            clean_correct=s.clean_correct, asr={name: (s.asr[name], s.hits[name]) for name in s.asr},
        )
        for s in steps
    ]
    with session_scope(runtime.engine) as session:
        save_steps(session, model_id, rows)


def evaluate_threshold(runtime: Runtime, model_id: int, threshold: Threshold) -> None:
    """Select B'_t, write B'_t and G_t, and evaluate B, B'_t and G_t on the test files."""
    inputs = read_inputs(runtime, model_id)
    if threshold not in inputs.thresholds:
        raise RuntimeError(f"model {inputs.name}: threshold {threshold} is not one of its sweep's")
    with session_scope(runtime.engine) as session:
        order = [channel for channel, _, _ in read_ranking(session, model_id)]
        steps = read_steps(session, inputs.sweep_id, inputs.name)
    expected = len(order) + 1
    if [s.step for s in steps] != list(range(expected)):
        raise RuntimeError(f"model {inputs.name}: {len(steps)} of {expected} steps stored; ranges must finish first")
    assert inputs.acc0 is not None
    accuracies = [s.clean_accuracy for s in steps]
    values = [t.value for t in inputs.thresholds]
    step = select_steps(inputs.acc0, accuracies, values, inputs.policy)[threshold.value]
    loaded = loaded_model(runtime, inputs)
    pruned = order[:step] if step is not None else None
    # B'_t and G_t are built and saved on a thread while TensorFlow labels the test data here
    writing = None
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            writing = None if pruned is None else pool.submit(_write_models, loaded, inputs, threshold, step, pruned)
            tests: dict[EvaluationSet, LoadedData] = {CLEAN_TEST: _data(runtime, loaded, inputs, "clean_test")[""]}
            poisoned = _data(runtime, loaded, inputs, "poisoned_test")
            tests.update({poisoned_test(name): data for name, data in poisoned.items()})
            keys = {test_set: set_key(test_set.role, test_set.poison_name) for test_set in tests}
            labels_at = runtime.memory.labels_at(loaded, {keys[test_set]: data for test_set, data in tests.items()})
            labels_b = {test_set: labels_at(keys[test_set], [], None) for test_set in tests}
            labels_b_prime = {} if pruned is None else {threshold.key: {
                test_set: pruned_labels(labels_at, labeled_set(keys[test_set], data), pruned, labels_b[test_set])
                for test_set, data in tests.items()
            }}
            artifacts = [] if writing is None else writing.result()
        _record_threshold(runtime, model_id, threshold, step, steps, tests, labels_b, labels_b_prime, loaded,
                          artifacts)
    except BaseException:
        if writing is not None and writing.done() and writing.exception() is None:
            remove_artifacts([path for _, path, _ in writing.result()])  # no files of a failed task without rows
        raise


def _record_threshold(runtime: Runtime, model_id: int, threshold: Threshold, step, steps, tests, labels_b,
                      labels_b_prime, loaded: LoadedModel, artifacts) -> None:
    truth = {test_set: data.labels for test_set, data in tests.items()}
    evaluations = evaluate_networks(labels_b, labels_b_prime, truth, loaded.num_classes)
    with session_scope(runtime.engine) as session:
        valid_accuracy = None if step is None else steps[step].clean_accuracy
        save_selection(session, model_id, threshold.key, step, valid_accuracy)
        save_test_results(session, model_id, threshold, evaluations, artifacts)


def save_test_results(session, model_id: int, threshold: Threshold, evaluations, artifacts) -> None:
    """A threshold's networks on the test files, and the model files written for it (kind, path, provenance)."""
    for row in evaluations:
        save_evaluation(
            session, model_id, network=row.network, threshold=row.threshold, role=row.test_set.role,
            poison_name=row.test_set.poison_name, accuracy=row.accuracy, image_count=row.image_count,
            flagged=row.flagged,
        )
    for kind, path, provenance in artifacts:
        save_artifact(
            session, model_id, threshold=threshold.key, kind=kind, path=path, sha256=sha256_file(path),
            provenance=provenance,
        )


def artifact_folder(inputs: ModelInputs) -> Path:
    """DIR itself for `defend`; DIR/sweep-<id>/<model> for sweeps, so that sweeps never mix files.

    Model names are identifiers (badnet_prune.numerics.names), and the folder is checked to stay inside
    DIR after resolution all the same: a name is never a path.
    """
    base = Path(inputs.artifact_dir).resolve()
    flat = inputs.config.get("flat_artifacts")
    folder = base if flat else (base / f"sweep-{inputs.sweep_id}" / inputs.name).resolve()
    if not folder.is_relative_to(base):
        raise RuntimeError(f"model {inputs.name!r}: its artifact folder would lie outside {base}")
    return folder


def provenance_of(inputs: ModelInputs, threshold: Threshold, step: int, pruned: list[int]) -> dict:
    """What a file made from B for a threshold records of its making (beside it as JSON, and in the artifacts table)."""
    return {
        "source_model": inputs.path,
        "source_sha256": inputs.sha256,
        "input_scale": inputs.input_scale,
        "prune_layer": inputs.prune_layer,
        "rank_layer": inputs.rank_layer,
        "pruned_channels": [int(c) for c in pruned],
        "step": step,
        "threshold": threshold.value,
        "threshold_key": threshold.key,
        "policy": inputs.policy,
    }


def _write_models(loaded: LoadedModel, inputs: ModelInputs, threshold: Threshold, step: int, pruned: list[int]):
    folder = artifact_folder(inputs)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    b_prime = build_pruned_model(loaded.split.model, inputs.prune_layer, pruned)
    g = build_repaired_net(loaded.split.model, b_prime)
    provenance = provenance_of(inputs, threshold, step, pruned)
    written: list[tuple[str, str, dict]] = []
    try:
        for kind, network in (("B_prime", b_prime), ("G", g)):
            path = folder / f"{kind}_{threshold.key}.keras"
            save_atomically(network, path)
            described = {**provenance, "kind": kind}
            written.append((kind, str(path), described))
            write_text_atomically(path.with_suffix(".json"), json.dumps(described, indent=2) + "\n")
    except BaseException:
        remove_artifacts([path for _, path, _ in written])  # no half of a threshold's files without its rows
        raise
    return written
