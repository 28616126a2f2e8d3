"""A defense declared inside the test suite: one module, and no edit anywhere else (issue 24's proof).

`random_prune` prunes `count` channels of the prune layer chosen by its seed (a straw man a real defense
must beat), once the ranking is done. It has its own settings table ([random_prune] in a sweep file,
--random-prune and --random-prune-count for defend), stores its outcome (the channels) and a curve (clean
validation accuracy and every ASR as the channels go one by one) in the shared tables, evaluates its
B_random and G_random on the test files, adds a column to csv/summary.csv and a section to the report.
Loaded through the stage_modules setting (BADNET_PRUNE_STAGE_MODULES=tests.stages.extra_defense).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from badnet_prune.db.results import CurvePointRow, outcome_stored, save_curve, save_outcome
from badnet_prune.db.session import session_scope
from badnet_prune.pipeline.contract import Job, PlanContext, Progress, Stage, StageArguments, StageSettings, register
from badnet_prune.pipeline.inputs import loaded_model, read_inputs, role_data, set_key
from badnet_prune.pipeline.presentation import Network, Panel, Presentation, Section, Series
from badnet_prune.pipeline.runtime import labeled_set
from badnet_prune.pipeline.stages.rank import RANK

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from badnet_prune.db.model_results import ModelResults
    from badnet_prune.pipeline.runtime import Runtime

NAME = "random_prune"
KEY = "random"
B_RANDOM = Network("B_random", "B'rand")
G_RANDOM = Network("G_random", "Grand", repaired=True, title="random pruning")


class RandomPruneSettings(StageSettings):
    count: int = Field(3, ge=1, le=1000, description="channels of the prune layer pruned at random")
    seed: int = Field(0, ge=0, lt=2**32, description="which channels")


class RandomPruneArguments(StageArguments):
    def key(self) -> str:
        return KEY


class RandomPruneOutcome(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    channels: list[int]


def plan(context: PlanContext[RandomPruneSettings]) -> list[RandomPruneArguments]:
    return [RandomPruneArguments()]


def run(runtime: Runtime, job: Job[RandomPruneArguments, RandomPruneSettings]) -> None:
    from badnet_prune.numerics.inference import accuracy_percent
    from badnet_prune.numerics.pruned_model import build_pruned_model
    from badnet_prune.numerics.pruning import pruned_labels
    from badnet_prune.numerics.repair import build_repaired_net
    from badnet_prune.pipeline.outputs import (
        evaluate_pair,
        labels_of_b,
        provenance_of,
        save_test_results,
        test_sets,
        write_networks,
    )

    assert job.model_id is not None and job.settings is not None
    inputs = read_inputs(runtime, job.model_id)
    loaded = loaded_model(runtime, inputs)
    count = min(job.settings.count, loaded.split.channel_count)
    chosen = [int(c) for c in np.random.default_rng(job.settings.seed).permutation(loaded.split.channel_count)[:count]]
    sets = {set_key("clean_valid"): role_data(runtime, loaded, inputs, "clean_valid")[""]}
    sets.update({set_key("poisoned_valid", name): data
                 for name, data in role_data(runtime, loaded, inputs, "poisoned_valid").items()})
    labels_at = runtime.memory.labels_at(loaded, sets)
    curve = []
    for point in range(count + 1):
        rates = {key.partition(":")[2] or "": accuracy_percent(labels_at(key, chosen[:point], None), data.labels)
                 for key, data in sets.items()}
        curve.append(CurvePointRow(point=point, x=float(point), clean_accuracy=rates.pop(""), asr=rates))
        runtime.report_progress(job.task_id, point)
    tests = test_sets(runtime, loaded, inputs)
    labels_b, test_labels_at, keys = labels_of_b(runtime, loaded, tests)
    pruned = {KEY: {test_set: pruned_labels(test_labels_at, labeled_set(keys[test_set], data), chosen,
                                            labels_b[test_set]) for test_set, data in tests.items()}}
    b_random = build_pruned_model(loaded.split.model, inputs.prune_layer, chosen)
    written = write_networks(inputs, KEY, [(B_RANDOM, b_random), (G_RANDOM, build_repaired_net(loaded.split.model,
                                                                                                b_random))],
                             provenance_of(inputs, pruned_channels=chosen))
    evaluations = evaluate_pair(tests, labels_b, pruned, loaded.num_classes, (B_RANDOM.name, G_RANDOM.name))
    with session_scope(runtime.engine) as session:
        save_curve(session, job.model_id, NAME, KEY, curve)
        save_test_results(session, job.model_id, KEY, evaluations, written)
        save_outcome(session, job.model_id, NAME, KEY, RandomPruneOutcome(channels=chosen).model_dump())


def stored(session: Session, job: Job[RandomPruneArguments, RandomPruneSettings]) -> bool:
    assert job.model_id is not None
    return outcome_stored(session, job.model_id, NAME, KEY)


def channels(results: ModelResults) -> list[int] | None:
    stored_outcome = results.outcomes.get(NAME, {}).get(KEY)
    return None if stored_outcome is None else RandomPruneOutcome.model_validate(stored_outcome.document).channels


def summary(results: ModelResults) -> dict[str, Any]:
    chosen = channels(results)
    return {} if chosen is None else {NAME: {"channels": chosen}}


def columns(results: ModelResults, key: str) -> dict[str, Any]:
    chosen = channels(results)
    return {} if chosen is None else {"random_channels": " ".join(map(str, chosen))}


def sections(results: ModelResults) -> list[Section]:
    points = results.curves.get(NAME, {}).get(KEY, [])
    if not points:
        return []
    x = [p.x for p in points]
    series = [Series("clean validation accuracy", x, [p.clean_accuracy for p in points], emphasis=True)]
    series += [Series(f"ASR {poison}", x, [p.asr.get(poison) for p in points])
               for poison in sorted({name for p in points for name in p.asr})]
    return [Section("Random pruning (a test's straw man)", f"Channels pruned at random: {channels(results)}.",
                    [Panel("random channels", "channels pruned", "percent", series)])]


RANDOM_PRUNE = register(Stage(
    name=NAME,
    description="prune channels chosen at random (a test's defense)",
    arguments=RandomPruneArguments,
    plan=plan,
    run=run,
    after=(RANK.name,),
    settings=RandomPruneSettings,
    stored=stored,
    outcome=RandomPruneOutcome,
    progress=Progress("channels", lambda arguments, settings: settings.count),
    presentation=Presentation(networks=(B_RANDOM, G_RANDOM), summary=summary, columns=columns, sections=sections,
                              column_labels={"random_channels": "random channels"}),
))
