"""anp: adversarial neuron pruning (Wu and Wang, NeurIPS 2021) as a defense.

Masks on the channels of the settings' Conv2D layers (the prune layer by default) are learnt on the clean
validation images against adversarial multiplicative perturbations of each channel's weights and bias
(badnet_prune.numerics.anp); the channels are then pruned lowest mask first. Per pruning count the clean
validation accuracy and every poisoned validation set's ASR are recorded (through the pruning sweep's exact
engine where only the prune layer is masked), and the pruned net is chosen at the sweep's thresholds and
policy like B'_t, plus the paper's own rule (every channel whose mask is at most mask_threshold, key
"mask"). B'_ANP and G_ANP of each are saved and evaluated like B'_t and G_t.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from badnet_prune.db.model_results import Metrics
from badnet_prune.db.results import CurvePointRow, outcome_stored, save_curve, save_outcome
from badnet_prune.db.session import session_scope
from badnet_prune.numerics.anp_settings import AnpSettings
from badnet_prune.numerics.selection import select_steps
from badnet_prune.numerics.thresholds import parse_threshold
from badnet_prune.pipeline.contract import Job, PlanContext, Progress, Stage, StageArguments, register
from badnet_prune.pipeline.inputs import loaded_model, read_inputs, role_data, role_pixels, set_key
from badnet_prune.pipeline.presentation import Network, Panel, Presentation, Section, Series, metrics_json
from badnet_prune.pipeline.runtime import labeled_set
from badnet_prune.pipeline.stages.rank import RANK

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from badnet_prune.db.model_results import ModelResults
    from badnet_prune.pipeline.runtime import Runtime

NAME = "anp"
KEY = "masks"  # the task's key, and its outcome's
MASK_KEY = "mask"  # the setting of the paper's rule: every channel whose mask is at most the threshold
B_ANP = Network("B_anp", "B' ANP")
G_ANP = Network("G_anp", "G ANP", repaired=True, title="ANP")


class AnpArguments(StageArguments):
    def key(self) -> str:
        return KEY


class AnpOutcome(BaseModel):
    """The learnt masks per layer, the channels pruned per setting key (a threshold's, or "mask"), and the cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    masks: dict[str, list[float]]
    pruned: dict[str, dict[str, list[int]]]
    counts: dict[str, int | None]  # setting key -> channels pruned (None: a threshold never reached)
    seconds: float
    final_loss: float
    settings: dict[str, Any]


def plan(context: PlanContext[AnpSettings]) -> list[AnpArguments]:
    return [AnpArguments()]


def run(runtime: Runtime, job: Job[AnpArguments, AnpSettings]) -> None:
    from badnet_prune.numerics.anp import (
        count_prunings,
        global_order,
        optimise_masks,
        pruned_by_count,
        pruned_by_threshold,
        pruning_order,
    )
    from badnet_prune.numerics.channel_curve import evaluate_prunings
    from badnet_prune.numerics.pruned_model import build_pruned_layers_model
    from badnet_prune.numerics.pruning import prune_range, pruned_labels
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

    assert job.model_id is not None and job.settings is not None
    settings = job.settings
    inputs = read_inputs(runtime, job.model_id)
    loaded = loaded_model(runtime, inputs)
    model = loaded.split.model
    clean_images, clean_labels = role_pixels(loaded, inputs, "clean_valid")[""]
    result = optimise_masks(model, clean_images, clean_labels, settings, inputs.input_scale,
                            on_progress=lambda done: runtime.report_progress(job.task_id, done))
    masks = result.masks
    one_layer = list(masks) == [inputs.prune_layer]
    if one_layer:  # the pruning sweep's exact engine, with ANP's order instead of the activation ranking
        order = [int(c) for c in pruning_order(masks[inputs.prune_layer])]
        clean = role_data(runtime, loaded, inputs, "clean_valid")[""]
        poisoned = role_data(runtime, loaded, inputs, "poisoned_valid")
        sets = {set_key("clean_valid"): clean, **{set_key("poisoned_valid", n): d for n, d in poisoned.items()}}
        steps = prune_range(runtime.memory.labels_at(loaded, sets), labeled_set(set_key("clean_valid"), clean),
                            {n: labeled_set(set_key("poisoned_valid", n), d) for n, d in poisoned.items()},
                            order, 0, len(order) + 1)
        curve = [CurvePointRow(point=s.step, x=float(s.step), clean_accuracy=s.clean_accuracy,
                               clean_correct=s.clean_correct, asr=dict(s.asr)) for s in steps]
    else:
        counts = range(len(global_order(masks)) + 1)
        measured = evaluate_prunings(model, count_prunings(masks, counts), (clean_images, clean_labels),
                                     role_pixels(loaded, inputs, "poisoned_valid"), inputs.input_scale)
        curve = [CurvePointRow(point=count, x=float(count), clean_accuracy=measured[str(count)].clean_accuracy,
                               clean_correct=measured[str(count)].clean_correct, asr=dict(measured[str(count)].asr))
                 for count in counts]
    del clean_images
    acc0 = curve[0].clean_accuracy
    assert acc0 is not None
    selected = select_steps(acc0, [p.clean_accuracy for p in curve], [t.value for t in inputs.thresholds],
                            inputs.policy)
    counts_by_key: dict[str, int | None] = {t.key: selected[t.value] for t in inputs.thresholds}
    prunings = {key: pruned_by_count(masks, count) for key, count in counts_by_key.items() if count is not None}
    prunings[MASK_KEY] = pruned_by_threshold(masks, settings.mask_threshold)
    counts_by_key[MASK_KEY] = sum(len(channels) for channels in prunings[MASK_KEY].values())
    tests = test_sets(runtime, loaded, inputs)
    labels_b, labels_at, keys = labels_of_b(runtime, loaded, tests)
    written: list = []
    try:
        labels_pruned = {}
        for key, pruning in prunings.items():
            b_anp = build_pruned_layers_model(model, pruning, name="B_anp")
            provenance = provenance_of(inputs, defense=NAME, setting_key=key,
                                       pruned_channels={n: list(c) for n, c in pruning.items()})
            written += write_networks(inputs, key, [(B_ANP, b_anp), (G_ANP, build_repaired_net(model, b_anp))],
                                      provenance)
            if one_layer:
                channels = list(pruning.get(inputs.prune_layer, ()))
                labels_pruned[key] = {test_set: pruned_labels(labels_at, labeled_set(keys[test_set], data), channels,
                                                              labels_b[test_set]) for test_set, data in tests.items()}
            else:
                labels_pruned[key] = labels_of_model(b_anp, loaded, inputs)
        evaluations = evaluate_pair(tests, labels_b, labels_pruned, loaded.num_classes, (B_ANP.name, G_ANP.name))
        outcome = AnpOutcome(
            masks={name: [float(v) for v in values] for name, values in masks.items()},
            pruned={key: {n: list(c) for n, c in pruning.items()} for key, pruning in prunings.items()},
            counts=counts_by_key, seconds=result.seconds, final_loss=float(result.losses[-1]),
            settings=settings.model_dump(mode="json"),
        )
        with session_scope(runtime.engine) as session:
            save_curve(session, job.model_id, NAME, "count", curve)
            for key in prunings:
                save_test_results(session, job.model_id, key, [e for e in evaluations if e.threshold == key],
                                  [w for w in written if w[2].get("setting_key") == key])
            save_outcome(session, job.model_id, NAME, KEY, outcome.model_dump(mode="json"))
    except BaseException:
        discard(written)
        raise


def stored(session: Session, job: Job[AnpArguments, AnpSettings]) -> bool:
    assert job.model_id is not None
    return outcome_stored(session, job.model_id, NAME, KEY)


def outcome_of(results: ModelResults) -> AnpOutcome | None:
    stored_outcome = results.outcomes.get(NAME, {}).get(KEY)
    return None if stored_outcome is None else AnpOutcome.model_validate(stored_outcome.document)


def label(results: ModelResults, network: Network, key: str) -> str:
    outcome = outcome_of(results)
    count = None if outcome is None else outcome.counts.get(key)
    if key == MASK_KEY:
        threshold = None if outcome is None else outcome.settings.get("mask_threshold")
        return f"{network.label} masks <= {threshold}, {count} pruned"
    return f"{network.label} {parse_threshold(key).percent}, {count} pruned"


def summary(results: ModelResults) -> dict[str, Any]:
    outcome = outcome_of(results)
    if outcome is None:
        return {}
    keys = sorted(outcome.pruned, key=lambda k: (k == MASK_KEY, parse_threshold(k).value if k != MASK_KEY else 0))
    return {NAME: {
        "settings": outcome.settings, "masks": outcome.masks, "seconds": outcome.seconds,
        "final_loss": outcome.final_loss,
        "settings_chosen": {key: {
            "channels_pruned": outcome.counts.get(key), "pruned": outcome.pruned[key],
            "B_anp": metrics_json(results.networks.get((B_ANP.name, key), Metrics())),
            "G_anp": metrics_json(results.networks.get((G_ANP.name, key), Metrics())),
        } for key in keys},
    }}


def sections(results: ModelResults) -> list[Section]:
    points = results.curves.get(NAME, {}).get("count", [])
    if not points:
        return []
    x = [p.x for p in points]
    series = [Series("clean validation accuracy", x, [p.clean_accuracy for p in points], emphasis=True)]
    series += [Series(f"ASR {poison} (validation)", x, [p.asr.get(poison) for p in points])
               for poison in sorted({name for p in points for name in p.asr})]
    outcome = outcome_of(results)
    marked = None if outcome is None else outcome.counts.get(MASK_KEY)
    caption = ("ANP: channels pruned lowest learnt mask first (masks learnt on clean validation data against "
               "adversarial perturbations of each channel's weights); the B'_ANP of each threshold is chosen on "
               "this curve as B'_t is on the pruning curve. Marked: the paper's rule (masks at or below the "
               "threshold). The ASR is shown for the record only.")
    return [Section("ANP: clean accuracy and ASR against the channels pruned", caption,
                    [Panel("ANP", "channels pruned", "percent", series,
                           mark_x=None if marked is None else float(marked), mark_label="masks <= threshold")])]


ANP = register(Stage(
    name=NAME,
    description="ANP: learn channel masks against adversarial perturbations, prune the lowest",
    arguments=AnpArguments,
    plan=plan,
    run=run,
    after=(RANK.name,),
    settings=AnpSettings,
    stored=stored,
    outcome=AnpOutcome,
    progress=Progress("iterations", lambda arguments, settings: settings.iterations),
    presentation=Presentation(networks=(B_ANP, G_ANP), label=label, summary=summary, sections=sections),
))
