"""fine_tune: fine-pruning at one threshold: fine-tune B'_t on clean data into B''_t, write B'' and G'', evaluate.

Runs in a sweep that names it (a [fine_tune] table in the sweep file, or defend's --fine-tune), one
task per threshold once that model's threshold stage is done, so the selection it fine-tunes is
stored. Everything it stores is in the shared tables: its outcome (the epoch kept, the settings, the
split) in stage_outcomes, its epochs as a curve per threshold, B''_t and G''_t in evaluations and
artifacts. No transaction is held while it trains; a task that fails after writing files removes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from badnet_prune.db.model_results import Metrics
from badnet_prune.db.results import (
    CurvePointRow,
    outcome_stored,
    read_ranking,
    read_selections,
    save_curve,
    save_outcome,
)
from badnet_prune.db.session import session_scope
from badnet_prune.numerics.fine_tune_settings import FineTuneSettings
from badnet_prune.numerics.thresholds import parse_threshold
from badnet_prune.pipeline.contract import Job, PlanContext, Progress, Stage, register
from badnet_prune.pipeline.inputs import loaded_model, read_inputs, role_pixels
from badnet_prune.pipeline.presentation import Network, Panel, Presentation, Section, Series, metrics_json
from badnet_prune.pipeline.stages.threshold import THRESHOLD, ThresholdArguments

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from badnet_prune.db.model_results import ModelResults
    from badnet_prune.pipeline.runtime import Runtime

NAME = "fine_tune"
B_FINE = Network("B_fine", "B''")
G_FINE = Network("G_fine", "G''", repaired=True, title="fine-pruning")


class FineTuneArguments(ThresholdArguments):
    """The threshold whose B'_t is fine-tuned, by its exact key."""


class FineTuneOutcome(BaseModel):
    """What a threshold's fine-tuning stored: the epoch kept (None: the threshold selected no step, so
    nothing was tuned), the settings, and which clean validation images trained and which chose."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kept_epoch: int | None
    settings: dict[str, Any]
    seed: int
    split_sha256: str | None = None
    train_count: int | None = None
    holdout_count: int | None = None


def plan(context: PlanContext[FineTuneSettings]) -> list[FineTuneArguments]:
    return [FineTuneArguments(threshold=threshold.key) for threshold in context.sweep.thresholds]


def run(runtime: Runtime, job: Job[FineTuneArguments, FineTuneSettings]) -> None:
    """Fine-prune at one threshold; with no step selected there is nothing to tune, and that is recorded."""
    assert job.model_id is not None and job.settings is not None
    fine_prune(runtime, job.task_id, job.model_id, job.arguments.threshold, job.settings, NAME, (B_FINE, G_FINE))


def fine_prune(runtime: Runtime, task_id: int, model_id: int, key: str, settings: FineTuneSettings, stage: str,
               networks: tuple[Network, Network]) -> None:
    """Fine-tune the threshold's B'_t into a B'' and its repaired net, written and evaluated as `networks`,
    their outcome and epochs stored under `stage` (fine_tune, or a stage that reuses the recipe: repair)."""
    from badnet_prune.numerics.fine_tuning import fine_tune
    from badnet_prune.numerics.repair import build_repaired_net
    from badnet_prune.pipeline.outputs import (
        discard,
        evaluate_pair,
        labels_of_b,
        labels_of_model,
        provenance_of,
        save_test_results,
        test_sets,
        write_networks,
    )

    b_network, g_network = networks
    inputs = read_inputs(runtime, model_id)
    with session_scope(runtime.engine) as session:
        selection = next((s for s in read_selections(session, model_id) if s.threshold == key), None)
        order = [channel for channel, _, _ in read_ranking(session, model_id)]
    if selection is None:
        raise RuntimeError(f"model {inputs.name}: no selection stored for threshold {key}")
    recorded = settings.model_dump(mode="json")
    if selection.step is None:
        with session_scope(runtime.engine) as session:
            save_outcome(session, model_id, stage, key, FineTuneOutcome(kept_epoch=None, settings=recorded,
                                                                      seed=settings.seed).model_dump())
        return
    pruned = [int(channel) for channel in order[: selection.step]]
    loaded = loaded_model(runtime, inputs)
    clean_images, clean_labels = role_pixels(loaded, inputs, "clean_valid")[""]
    def on_epoch(epoch: int) -> None:
        runtime.report_progress(task_id, epoch)

    result = fine_tune(
        loaded.split.model, inputs.prune_layer, pruned, clean_images, clean_labels,
        role_pixels(loaded, inputs, "poisoned_valid"), settings, inputs.input_scale, on_epoch=on_epoch,
    )
    del clean_images
    threshold = parse_threshold(key)
    provenance = provenance_of(
        inputs, threshold=threshold.value, threshold_key=key, step=selection.step, pruned_channels=pruned,
        fine_tune=recorded, seed=settings.seed, kept_epoch=result.kept_epoch, split_sha256=result.split.sha256,
        train_images=len(result.split.train_indices), holdout_images=len(result.split.holdout_indices),
    )
    g_fine = build_repaired_net(loaded.split.model, result.model, name=g_network.name)
    written = write_networks(inputs, key, [(b_network, result.model), (g_network, g_fine)], provenance)
    try:
        tests = test_sets(runtime, loaded, inputs)
        labels_b, _, _ = labels_of_b(runtime, loaded, tests)
        evaluations = evaluate_pair(tests, labels_b, {key: labels_of_model(result.model, loaded, inputs)},
                                    loaded.num_classes, (b_network.name, g_network.name))
        outcome = FineTuneOutcome(
            kept_epoch=result.kept_epoch, settings=recorded, seed=settings.seed, split_sha256=result.split.sha256,
            train_count=len(result.split.train_indices), holdout_count=len(result.split.holdout_indices),
        )
        curve = [CurvePointRow(point=e.epoch, x=float(e.epoch), clean_accuracy=e.holdout_accuracy,
                               clean_correct=e.holdout_correct, values={"train_loss": e.train_loss}, asr=dict(e.asr))
                 for e in result.epochs]
        with session_scope(runtime.engine) as session:
            save_curve(session, model_id, stage, key, curve)
            save_test_results(session, model_id, key, evaluations, written)
            save_outcome(session, model_id, stage, key, outcome.model_dump())
    except BaseException:
        discard(written)
        raise


def stored(session: Session, job: Job[FineTuneArguments, FineTuneSettings]) -> bool:
    assert job.model_id is not None
    return outcome_stored(session, job.model_id, NAME, job.arguments.threshold)


def outcomes(results: ModelResults) -> dict[str, FineTuneOutcome]:
    """Each fine-tuned threshold's outcome by its key, typed."""
    return {key: FineTuneOutcome.model_validate(stored.document)
            for key, stored in results.outcomes.get(NAME, {}).items()}


def label(results: ModelResults, network: Network, key: str) -> str:
    kept = outcomes(results).get(key)
    percent = parse_threshold(key).percent
    if network is B_FINE and kept is not None:
        return f"B'' {percent}, epoch {kept.kept_epoch}"
    return f"{network.label} {percent}"


def summary(results: ModelResults) -> dict[str, Any]:
    """summary.json's fine_tune part, per threshold key: settings, split, every epoch, the one kept, B'' and G''
    on test data, their files."""
    curves = results.curves.get(NAME, {})
    return {NAME: {
        key: {
            **outcome.model_dump(),
            "epochs": [{"epoch": p.point, "train_loss": p.values.get("train_loss"),
                        "holdout_accuracy": p.clean_accuracy,
                        **{f"asr_{name}": rate for name, rate in sorted(p.asr.items())}}
                       for p in curves.get(key, [])],
            "B_fine": metrics_json(results.networks.get((B_FINE.name, key), Metrics())),
            "G_fine": metrics_json(results.networks.get((G_FINE.name, key), Metrics())),
            "files": {kind: path for (kind, k), path in results.files.items() if k == key and kind in
                      (B_FINE.name, G_FINE.name)},
            "note": note(results, key),
        }
        for key, outcome in sorted(outcomes(results).items(), key=lambda item: parse_threshold(item[0]))
    }} if NAME in results.outcomes else {}


def note(results: ModelResults, key: str) -> str | None:
    """In words, where training lowered the hold-out accuracy below B'_t's (epoch 0's): B'' is B'_t itself
    when no epoch beat it, and otherwise the dip is named, since a network that had to relearn the clean task
    may have relearnt the backdoor with it."""
    outcome = outcomes(results).get(key)
    points = results.curves.get(NAME, {}).get(key, [])
    trained = [p for p in points[1:] if p.clean_accuracy is not None]
    if outcome is None or outcome.kept_epoch is None or not trained or points[0].clean_accuracy is None:
        return None
    start, percent = points[0].clean_accuracy, parse_threshold(key).percent
    lowest = min(trained, key=lambda p: (p.clean_accuracy, p.point))
    if outcome.kept_epoch == 0:
        best = max(p.clean_accuracy for p in trained)
        return (f"fine-tuning at {percent} never beat B'_t's hold-out accuracy ({start:.2f}%; best epoch "
                f"{best:.2f}%, lowest {lowest.clean_accuracy:.2f}% at epoch {lowest.point}): B'' is B'_t itself")
    if lowest.clean_accuracy < start:
        return (f"fine-tuning at {percent} lowered the hold-out accuracy below B'_t's {start:.2f}% (to "
                f"{lowest.clean_accuracy:.2f}% at epoch {lowest.point}) before epoch {outcome.kept_epoch} recovered it")
    return None


def notes(results: ModelResults) -> list[str]:
    return [text for key in sorted(outcomes(results), key=parse_threshold) if (text := note(results, key))]


def columns(results: ModelResults, key: str) -> dict[str, Any]:
    outcome = outcomes(results).get(key)
    if outcome is None:
        return {}
    text = note(results, key)
    return {"fine_kept_epoch": outcome.kept_epoch, **({"note": text} if text else {})}


def sections(results: ModelResults) -> list[Section]:
    """Per fine-tuned threshold, hold-out clean accuracy and each poisoned validation set's ASR against the
    epoch (0 = B'_t), the epoch kept (chosen on hold-out accuracy alone) marked."""
    curves = results.curves.get(NAME, {})
    tuned = [(key, outcome) for key, outcome in sorted(outcomes(results).items(), key=lambda i: parse_threshold(i[0]))
             if outcome.kept_epoch is not None and curves.get(key)]
    if not tuned:
        return []
    panels = []
    for key, outcome in tuned:
        points = curves[key]
        x = [p.x for p in points]
        poisons = sorted({name for p in points for name in p.asr})
        series = [Series("hold-out clean accuracy", x, [p.clean_accuracy for p in points], emphasis=True)]
        series += [Series(f"ASR {poison} (validation)", x, [p.asr.get(poison) for p in points]) for poison in poisons]
        panels.append(Panel(f"B'' {parse_threshold(key).percent}: epoch {outcome.kept_epoch}", "epoch", "percent",
                            series, mark_x=float(outcome.kept_epoch), mark_label="epoch kept"))
    caption = ("Fine-pruning: B'_t fine-tuned on part of the clean validation file; the epoch kept is the one with "
               "the best accuracy on the held-out rest (ties: the latest; epoch 0 is B'_t itself). The ASR on "
               "each poisoned validation set is shown for the record and never used to choose.")
    return [Section("Fine-pruning curves (clean validation data)", " ".join([caption, *notes(results)]), panels)]


FINE_TUNE = register(Stage(
    name=NAME,
    description="fine-tune B' on clean data, write B'' and G'', evaluate on test data",
    arguments=FineTuneArguments,
    plan=plan,
    run=run,
    after=(THRESHOLD.name,),
    settings=FineTuneSettings,
    stored=stored,
    outcome=FineTuneOutcome,
    progress=Progress("epochs", lambda arguments, settings: settings.epochs),
    presentation=Presentation(networks=(B_FINE, G_FINE), label=label, summary=summary, columns=columns,
                              notes=notes, sections=sections, column_labels={"fine_kept_epoch": "epoch kept"}),
    option_prefix="",
))
