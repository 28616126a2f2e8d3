"""The fine_tune stage's job: fine-tune B'_t on clean validation data, write B''_t and G''_t, evaluate them.

Inputs are read in one short session and results written in another (no transaction is held while
TensorFlow trains); every result is an upsert keyed by (model, threshold, ...), so a redelivered task
rewrites the same rows, and the model files are replaced atomically. A task that fails after writing
files removes them: no B''/G'' files without their rows. Keras places the training on a GPU where
the worker has one.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from badnet_prune.db.inputs import ModelInputs
from badnet_prune.db.results import (
    FineTuneEpochRow,
    FineTuneRow,
    read_ranking,
    read_selections,
    save_fine_tune,
)
from badnet_prune.db.session import session_scope
from badnet_prune.files.data import open_data_file
from badnet_prune.numerics.evaluation import (
    CLEAN_TEST,
    EvaluationSet,
    NetworkEvaluation,
    evaluate_networks,
    poisoned_test,
)
from badnet_prune.numerics.fine_tuning import FineTuneResult, fine_tune
from badnet_prune.numerics.inference import compiled_forward, predict_labels
from badnet_prune.numerics.repair import build_repaired_net
from badnet_prune.numerics.thresholds import Threshold
from badnet_prune.pipeline.stages.fine_tune import sweep_settings
from badnet_prune.worker.artifact_files import (
    remove_artifacts,
    remove_stale_temporaries,
    save_atomically,
    write_text_atomically,
)
from badnet_prune.worker.jobs import (
    artifact_folder,
    loaded_model,
    provenance_of,
    read_inputs,
    save_test_results,
    set_key,
)
from badnet_prune.worker.loaded import LoadedModel
from badnet_prune.worker.runtime import Runtime

# evaluate_networks names the pruned net and its repaired net B_prime and G; here they are B'' and G''
FINE_NAMES = {"B_prime": "B_fine", "G": "G_fine"}


def fine_tune_threshold(runtime: Runtime, model_id: int, threshold: Threshold) -> None:
    """Fine-prune at one threshold; with no step selected there is nothing to tune, and that is recorded."""
    inputs = read_inputs(runtime, model_id)
    settings = sweep_settings(inputs.config)
    if settings is None:
        raise RuntimeError(f"model {inputs.name}: its sweep does not fine-tune (no [fine_tune] settings)")
    with session_scope(runtime.engine) as session:
        selection = next((s for s in read_selections(session, model_id) if s.threshold == threshold.key), None)
        order = [channel for channel, _, _ in read_ranking(session, model_id)]
    if selection is None:
        raise RuntimeError(f"model {inputs.name}: no selection stored for threshold {threshold.key}")
    recorded = settings.model_dump(mode="json")
    if selection.step is None:
        with session_scope(runtime.engine) as session:
            save_fine_tune(session, model_id, FineTuneRow(threshold.key, recorded, settings.seed))
        return
    pruned = [int(channel) for channel in order[: selection.step]]
    loaded = loaded_model(runtime, inputs)
    clean_images, clean_labels = _read(loaded, inputs, "clean_valid")[""]
    result = fine_tune(
        loaded.split.model, inputs.prune_layer, pruned, clean_images, clean_labels,
        _read(loaded, inputs, "poisoned_valid"), settings, inputs.input_scale,
    )
    del clean_images
    written = _write_models(loaded, inputs, threshold, selection.step, pruned, result)
    try:
        evaluations = _evaluate(runtime, loaded, inputs, threshold, result)
        row = FineTuneRow(
            threshold=threshold.key, settings=recorded, seed=settings.seed, kept_epoch=result.kept_epoch,
            split_sha256=result.split.sha256, train_count=len(result.split.train_indices),
            holdout_count=len(result.split.holdout_indices),
            epochs=tuple(FineTuneEpochRow(e.epoch, e.train_loss, e.holdout_accuracy, e.holdout_correct, dict(e.asr))
                         for e in result.epochs),
        )
        with session_scope(runtime.engine) as session:
            save_fine_tune(session, model_id, row)
            save_test_results(session, model_id, threshold, evaluations, written)
    except BaseException:
        remove_artifacts([path for _, path, _ in written])
        raise


def _read(loaded: LoadedModel, inputs: ModelInputs, role: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The images and labels of a role's files, by poison name ('' for a clean role): training needs pixels."""
    files = {}
    for name, ref in inputs.data.get(role, {}).items():
        data_file = open_data_file(ref.path, loaded.image_shape, loaded.num_classes, expected_sha256=ref.sha256)
        files[name] = (data_file.read_all(), data_file.labels)
    return files


def _evaluate(runtime: Runtime, loaded: LoadedModel, inputs: ModelInputs, threshold: Threshold,
              result: FineTuneResult) -> list[NetworkEvaluation]:
    """B''_t and G''_t on every test file, by the rule B'_t and G_t are evaluated with (evaluate_networks)."""
    refs = {CLEAN_TEST: inputs.data["clean_test"][""]}
    refs.update({poisoned_test(name): ref for name, ref in inputs.data.get("poisoned_test", {}).items()})
    forward = compiled_forward(result.model)
    keys: dict[EvaluationSet, str] = {}
    sets = {}
    labels_fine, truth = {}, {}
    for test_set, ref in refs.items():
        data = runtime.memory.data(loaded, ref.path, ref.sha256)
        keys[test_set] = set_key(test_set.role, test_set.poison_name)
        sets[keys[test_set]] = data
        data_file = open_data_file(ref.path, loaded.image_shape, loaded.num_classes, expected_sha256=ref.sha256)
        labels_fine[test_set] = predict_labels(forward, data_file.batches(), inputs.input_scale)
        truth[test_set] = data_file.labels
    labels_at = runtime.memory.labels_at(loaded, sets)
    labels_b = {test_set: labels_at(keys[test_set], [], None) for test_set in refs}
    rows = evaluate_networks(labels_b, {threshold.key: labels_fine}, truth, loaded.num_classes)
    return [dataclasses.replace(row, network=FINE_NAMES[row.network]) for row in rows if row.network in FINE_NAMES]


def _write_models(loaded: LoadedModel, inputs: ModelInputs, threshold: Threshold, step: int, pruned: list[int],
                  result: FineTuneResult) -> list[tuple[str, str, dict]]:
    """B''_t and G''_t as .keras files with provenance beside each, in B'_t's layout plus how it was tuned."""
    folder = artifact_folder(inputs)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    g_fine = build_repaired_net(loaded.split.model, result.model, name="G_fine")
    provenance = {
        **provenance_of(inputs, threshold, step, pruned),
        "fine_tune": result.settings.model_dump(mode="json"),
        "seed": result.settings.seed,
        "kept_epoch": result.kept_epoch,
        "split_sha256": result.split.sha256,
        "train_images": len(result.split.train_indices),
        "holdout_images": len(result.split.holdout_indices),
    }
    written: list[tuple[str, str, dict]] = []
    try:
        for kind, network in (("B_fine", result.model), ("G_fine", g_fine)):
            path = folder / f"{kind}_{threshold.key}.keras"
            save_atomically(network, path)
            described = {**provenance, "kind": kind}
            written.append((kind, str(path), described))
            write_text_atomically(Path(path).with_suffix(".json"), json.dumps(described, indent=2) + "\n")
    except BaseException:
        remove_artifacts([path for _, path, _ in written])
        raise
    return written
