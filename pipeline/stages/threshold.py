"""threshold: select B'_t for one threshold, write B'_t and G_t, and evaluate B, B'_t and G_t on test data."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pydantic import field_validator

from badnet_prune.db.results import read_ranking, read_steps, save_selection, selection_stored
from badnet_prune.db.session import session_scope
from badnet_prune.numerics.pruning import pruned_labels
from badnet_prune.numerics.selection import RULES, relative_drop_percent, select_steps
from badnet_prune.numerics.thresholds import Threshold, parse_threshold
from badnet_prune.pipeline.contract import Job, PlanContext, Stage, StageArguments, register
from badnet_prune.pipeline.inputs import loaded_model, read_inputs
from badnet_prune.pipeline.presentation import Network, Presentation, metrics_json
from badnet_prune.pipeline.runtime import labeled_set
from badnet_prune.pipeline.stages.prune_range import PRUNE_RANGE

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from badnet_prune.db.model_results import Metrics, ModelResults, ThresholdResult
    from badnet_prune.pipeline.runtime import Runtime

B_PRIME = Network("B_prime", "B'")
G = Network("G", "G", repaired=True, title="pruning alone")


class ThresholdArguments(StageArguments):
    """One threshold, by its exact key ('0.02', '0.0333333333')."""

    threshold: str

    @field_validator("threshold")
    @classmethod
    def _exact_key(cls, value: str) -> str:
        if parse_threshold(value).key != value:
            raise ValueError(f"{value!r} is not a threshold key")
        return value

    @property
    def parsed(self) -> Threshold:
        return Threshold(self.threshold)

    def key(self) -> str:
        return self.threshold


def plan(context: PlanContext) -> list[ThresholdArguments]:
    return [ThresholdArguments(threshold=threshold.key) for threshold in context.sweep.thresholds]


def run(runtime: Runtime, job: Job[ThresholdArguments, None]) -> None:
    """Select B'_t, write B'_t and G_t, and evaluate B, B'_t and G_t on the test files."""
    from badnet_prune.numerics.pruned_model import build_pruned_model
    from badnet_prune.numerics.repair import build_repaired_net
    from badnet_prune.pipeline.outputs import (
        discard,
        evaluate_pair,
        labels_of_b,
        provenance_of,
        save_test_results,
        test_sets,
        write_networks,
    )

    assert job.model_id is not None
    threshold = job.arguments.parsed
    inputs = read_inputs(runtime, job.model_id)
    if threshold not in inputs.thresholds:
        raise RuntimeError(f"model {inputs.name}: threshold {threshold} is not one of its sweep's")
    with session_scope(runtime.engine) as session:
        order = [channel for channel, _, _ in read_ranking(session, job.model_id)]
        steps = read_steps(session, inputs.sweep_id, inputs.name)
    expected = len(order) + 1
    if [s.step for s in steps] != list(range(expected)):
        raise RuntimeError(f"model {inputs.name}: {len(steps)} of {expected} steps stored; ranges must finish first")
    assert inputs.acc0 is not None
    values = [t.value for t in inputs.thresholds]
    step = select_steps(inputs.acc0, [s.clean_accuracy for s in steps], values, inputs.policy)[threshold.value]
    loaded = loaded_model(runtime, inputs)
    pruned = order[:step] if step is not None else None
    provenance = provenance_of(inputs, threshold=threshold.value, threshold_key=threshold.key, step=step,
                               pruned_channels=[int(c) for c in pruned or []])

    def write() -> list:
        b_prime = build_pruned_model(loaded.split.model, inputs.prune_layer, pruned)
        g = build_repaired_net(loaded.split.model, b_prime)
        return write_networks(inputs, threshold.key, [(B_PRIME, b_prime), (G, g)], provenance)

    # B'_t and G_t are built and saved on a thread while TensorFlow labels the test data here
    writing = None
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            writing = None if pruned is None else pool.submit(write)
            tests = test_sets(runtime, loaded, inputs)
            labels_b, labels_at, keys = labels_of_b(runtime, loaded, tests)
            labels_b_prime = {} if pruned is None else {threshold.key: {
                test_set: pruned_labels(labels_at, labeled_set(keys[test_set], data), pruned, labels_b[test_set])
                for test_set, data in tests.items()
            }}
            written = [] if writing is None else writing.result()
        evaluations = evaluate_pair(tests, labels_b, labels_b_prime, loaded.num_classes, (B_PRIME.name, G.name),
                                    with_b=True)
        with session_scope(runtime.engine) as session:
            save_selection(session, job.model_id, threshold.key, step,
                           None if step is None else steps[step].clean_accuracy)
            save_test_results(session, job.model_id, threshold.key, evaluations, written)
    except BaseException:
        if writing is not None and writing.done() and writing.exception() is None:
            discard(writing.result())
        raise


def stored(session: Session, job: Job[ThresholdArguments, None]) -> bool:
    assert job.model_id is not None
    return selection_stored(session, job.model_id, job.arguments.threshold)


def drop_percent(results: ModelResults, entry: ThresholdResult) -> float | None:
    """B'_t's clean validation accuracy drop from B's, relative to it as thresholds count (percent)."""
    if results.acc0 is None or entry.clean_valid_accuracy is None:
        return None
    return relative_drop_percent(results.acc0, entry.clean_valid_accuracy)


def rows(results: ModelResults) -> list[tuple[str, Metrics | None]]:
    """defend's table: B'_t per threshold (the channels pruned and the drop it cost on clean validation data,
    or never reached), then G_t."""
    lines: list[tuple[str, Metrics | None]] = []
    for entry in results.thresholds:
        label = f"B' {entry.threshold.percent}"
        drop = drop_percent(results, entry)
        lines.append((f"{label}: never reached", None) if entry.step is None or drop is None
                     else (f"{label}, {entry.step} pruned, drop {drop:.2f}%", entry.b_prime))
    lines += [(f"G {entry.threshold.percent}", entry.g) for entry in results.thresholds if entry.step is not None]
    return lines


def summary(results: ModelResults) -> dict[str, Any]:
    """summary.json's per-threshold part: the rule that selected the step, the step and the drop it cost on clean
    validation data, B'_t and G_t on test data, their files."""
    return {"thresholds": {
        entry.threshold.key: {
            "policy": results.policy,
            "rule": RULES[results.policy],
            "step": entry.step,
            "channels_pruned": entry.step,
            "clean_valid_accuracy": entry.clean_valid_accuracy,
            "clean_valid_drop_percent": drop_percent(results, entry),
            "B_prime": metrics_json(entry.b_prime),
            "G": metrics_json(entry.g),
            "files": dict(entry.files),
        }
        for entry in results.thresholds
    }}


def columns(results: ModelResults, key: str) -> dict[str, Any]:
    """csv/summary.csv: the selected step and the share of channels it pruned."""
    entry = next((e for e in results.thresholds if e.threshold.key == key), None)
    if entry is None:
        return {}
    fractions = {step.step: step.fraction_pruned for step in results.steps}
    columns: dict[str, Any] = {"step": entry.step, "fraction_pruned": fractions.get(entry.step),
                               "valid_drop": drop_percent(results, entry)}
    if entry.step is None:
        columns["note"] = "threshold never reached"
    return columns


THRESHOLD = register(Stage(
    name="threshold",
    description="select B', write B' and G, evaluate on test data",
    arguments=ThresholdArguments,
    plan=plan,
    run=run,
    after=(PRUNE_RANGE.name,),
    stored=stored,
    presentation=Presentation(networks=(B_PRIME, G), rows=rows, summary=summary, columns=columns,
                              column_labels={"valid_drop": "validation drop % (of acc0)"}),
))
