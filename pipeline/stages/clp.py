"""clp: channel Lipschitzness-based pruning (Zheng et al., ECCV 2022) as a defense, and its detector statistic.

Data-free in what it prunes: each Conv2D channel's upper bound of its Lipschitz constant comes from the
weights (badnet_prune.numerics.clp), and the channels above mean + u x std of their layer go. The u is
chosen on clean validation data by a fixed rule (the smallest u of the grid whose clean validation
accuracy stays within the settings' budget of B's); the curve over u, with the ASR of each poisoned
validation set for the record, is stored. B'_CLP and G_CLP at that u are saved and evaluated like B'_t
and G_t, under the setting key "rule". `clp_statistic` is the detector: how far the largest bound stands
out in its layer, a score in [0, 1] with no data at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from badnet_prune.db.model_results import Metrics
from badnet_prune.db.results import CurvePointRow, outcome_stored, save_curve, save_outcome
from badnet_prune.db.session import session_scope
from badnet_prune.numerics.clp_settings import ClpSettings
from badnet_prune.pipeline.contract import Job, PlanContext, Stage, StageArguments, StageSettings, register
from badnet_prune.pipeline.inputs import loaded_model, read_inputs, role_pixels
from badnet_prune.pipeline.presentation import Network, Panel, Presentation, Section, Series, metrics_json
from badnet_prune.pipeline.stages.rank import RANK

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from badnet_prune.db.model_results import ModelResults
    from badnet_prune.pipeline.runtime import Runtime

NAME = "clp"
KEY = "rule"  # the setting: the u CLP's rule chose for the model
B_CLP = Network("B_clp", "B' CLP")
G_CLP = Network("G_clp", "G CLP", repaired=True, title="CLP")


class ClpArguments(StageArguments):
    def key(self) -> str:
        return KEY


class ClpOutcome(BaseModel):
    """The u the rule chose (None: no u of the grid stays within the budget, so nothing is pruned), the channels
    it pruned per layer, and B's clean validation accuracy the budget is counted from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    chosen_u: str | None
    pruned: dict[str, list[int]]
    unpruned_accuracy: float
    settings: dict[str, Any]


def plan(context: PlanContext[ClpSettings]) -> list[ClpArguments]:
    return [ClpArguments()]


def run(runtime: Runtime, job: Job[ClpArguments, ClpSettings]) -> None:
    from badnet_prune.numerics.clp import build_clp_model, clp_curve, clp_pruning
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
    inputs = read_inputs(runtime, job.model_id)
    loaded = loaded_model(runtime, inputs)
    clean = role_pixels(loaded, inputs, "clean_valid")[""]
    curve = clp_curve(loaded.split.model, clean, role_pixels(loaded, inputs, "poisoned_valid"), job.settings,
                      inputs.input_scale)
    del clean
    pruned = {} if curve.chosen_u is None else clp_pruning(curve.bounds, curve.chosen_u)
    points = [CurvePointRow(point=index, x=float(key), clean_accuracy=point.clean_accuracy,
                            clean_correct=point.clean_correct, values={"pruned": point.pruned_count},
                            asr=dict(point.asr))
              for index, (key, point) in enumerate(sorted(curve.points.items(), key=lambda item: float(item[0])))]
    outcome = ClpOutcome(chosen_u=curve.chosen_u, pruned={name: list(c) for name, c in pruned.items()},
                         unpruned_accuracy=curve.unpruned.clean_accuracy,
                         settings=job.settings.model_dump(mode="json"))
    b_clp = build_clp_model(loaded.split.model, curve.bounds, curve.chosen_u, name="B_clp")
    provenance = provenance_of(inputs, defense=NAME, u=curve.chosen_u, pruned_channels=outcome.pruned)
    written = write_networks(inputs, KEY, [(B_CLP, b_clp), (G_CLP, build_repaired_net(loaded.split.model, b_clp))],
                             provenance)
    try:
        tests = test_sets(runtime, loaded, inputs)
        labels_b, _, _ = labels_of_b(runtime, loaded, tests)
        evaluations = evaluate_pair(tests, labels_b, {KEY: labels_of_model(b_clp, loaded, inputs)},
                                    loaded.num_classes, (B_CLP.name, G_CLP.name))
        with session_scope(runtime.engine) as session:
            save_curve(session, job.model_id, NAME, "u", points)
            save_test_results(session, job.model_id, KEY, evaluations, written)
            save_outcome(session, job.model_id, NAME, KEY, outcome.model_dump(mode="json"))
    except BaseException:
        discard(written)
        raise


def stored(session: Session, job: Job[ClpArguments, ClpSettings]) -> bool:
    assert job.model_id is not None
    return outcome_stored(session, job.model_id, NAME, KEY)


def outcome_of(results: ModelResults) -> ClpOutcome | None:
    stored_outcome = results.outcomes.get(NAME, {}).get(KEY)
    return None if stored_outcome is None else ClpOutcome.model_validate(stored_outcome.document)


def label(results: ModelResults, network: Network, key: str) -> str:
    outcome = outcome_of(results)
    chosen = "nothing pruned" if outcome is None or outcome.chosen_u is None else f"u = {outcome.chosen_u}"
    return f"{network.label} ({chosen})"


def summary(results: ModelResults) -> dict[str, Any]:
    outcome = outcome_of(results)
    if outcome is None:
        return {}
    return {NAME: {**outcome.model_dump(mode="json"),
                   "B_clp": metrics_json(results.networks.get((B_CLP.name, KEY), Metrics())),
                   "G_clp": metrics_json(results.networks.get((G_CLP.name, KEY), Metrics())),
                   "files": {kind: path for (kind, key), path in results.files.items()
                             if key == KEY and kind in (B_CLP.name, G_CLP.name)}}}


def notes(results: ModelResults) -> list[str]:
    outcome = outcome_of(results)
    if outcome is not None and outcome.chosen_u is None:
        budget = outcome.settings.get("accuracy_budget")
        return [f"CLP: no u of the grid kept clean validation accuracy within {budget} points of B's; "
                f"nothing was pruned"]
    return []


def sections(results: ModelResults) -> list[Section]:
    points = results.curves.get(NAME, {}).get("u", [])
    outcome = outcome_of(results)
    if not points or outcome is None:
        return []
    x = [p.x for p in points]
    series = [Series("clean validation accuracy", x, [p.clean_accuracy for p in points], emphasis=True)]
    series += [Series(f"ASR {poison} (validation)", x, [p.asr.get(poison) for p in points])
               for poison in sorted({name for p in points for name in p.asr})]
    chosen = None if outcome.chosen_u is None else float(outcome.chosen_u)
    caption = (f"CLP: the channels whose Lipschitz upper bound exceeds mean + u x std of their layer are pruned; u "
               f"is the smallest of the grid whose clean validation accuracy stays within "
               f"{outcome.settings.get('accuracy_budget')} points of B's ({outcome.unpruned_accuracy:.2f}%). "
               f"Chosen: {'none' if chosen is None else outcome.chosen_u}. The ASR is shown for the record only.")
    return [Section("CLP over u (clean validation data)", caption,
                    [Panel("CLP", "u", "percent", series, mark_x=chosen, mark_label="u chosen")])]


CLP = register(Stage(
    name=NAME,
    description="CLP: prune channels whose Lipschitz bound stands out, u chosen on clean validation data",
    arguments=ClpArguments,
    plan=plan,
    run=run,
    after=(RANK.name,),
    settings=ClpSettings,
    stored=stored,
    outcome=ClpOutcome,
    presentation=Presentation(networks=(B_CLP, G_CLP), label=label, summary=summary, notes=notes,
                              sections=sections),
))


class ClpStatisticSettings(StageSettings):
    """The CLP statistic has nothing to set: naming it ([clp_statistic], --clp-statistic) runs it."""


class ClpStatisticOutcome(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    layer: str | None
    channel: int | None
    z: float
    bound: float | None
    layer_z: dict[str, float]


def run_statistic(runtime: Runtime, job: Job[ClpArguments, ClpStatisticSettings]) -> None:
    from badnet_prune.numerics.clp import clp_statistic, model_bounds

    assert job.model_id is not None
    inputs = read_inputs(runtime, job.model_id)
    statistic = clp_statistic(model_bounds(loaded_model(runtime, inputs).split.model))
    evidence = statistic.evidence
    outcome = ClpStatisticOutcome(layer=None if evidence is None else evidence.layer,
                                  channel=None if evidence is None else evidence.channel,
                                  z=0.0 if evidence is None else evidence.z,
                                  bound=None if evidence is None else evidence.bound, layer_z=statistic.layer_z)
    with session_scope(runtime.engine) as session:
        save_outcome(session, job.model_id, "clp_statistic", KEY, outcome.model_dump(), score=statistic.score)


def statistic_stored(session: Session, job: Job[ClpArguments, ClpStatisticSettings]) -> bool:
    assert job.model_id is not None
    return outcome_stored(session, job.model_id, "clp_statistic", KEY)


def statistic_summary(results: ModelResults) -> dict[str, Any]:
    stored_outcome = results.outcomes.get("clp_statistic", {}).get(KEY)
    return {} if stored_outcome is None else {"clp_statistic": {"score": stored_outcome.score,
                                                                  **stored_outcome.document}}


CLP_STATISTIC = register(Stage(
    name="clp_statistic",
    description="detector: how far the largest channel Lipschitz bound stands out in its layer (no data)",
    arguments=ClpArguments,
    plan=plan,
    run=run_statistic,
    after=(RANK.name,),
    settings=ClpStatisticSettings,
    stored=statistic_stored,
    outcome=ClpStatisticOutcome,
    presentation=Presentation(summary=statistic_summary),
))
