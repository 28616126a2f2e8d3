"""neural_cleanse: Neural Cleanse (Wang et al., S&P 2019) as a detector, one task per range of target labels.

Each task reverse-engineers a minimal trigger for each label of its range at once (badnet_prune.numerics.
neural_cleanse: one batch of masks and patterns, on the first image_count clean validation images), writes the
masks and patterns to one .npz file (artifact kind "nc_triggers", keyed by the range) and the per-label norms
and attack success as its outcome. Once every range of a model is done, `neural_cleanse_verdict` (configured by
the same [neural_cleanse] table) computes the anomaly index over all the labels' norms, the flagged labels and
the model's score in [0, 1] (stored as the outcome's score), and the report draws the flagged labels' triggers.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from badnet_prune.db.results import outcome_stored, save_artifact, save_outcome
from badnet_prune.db.session import session_scope
from badnet_prune.numerics.neural_cleanse_settings import NeuralCleanseSettings
from badnet_prune.pipeline.contract import Job, PlanContext, Progress, Stage, StageArguments, register
from badnet_prune.pipeline.inputs import loaded_model, read_inputs, role_pixels
from badnet_prune.pipeline.presentation import Picture, Presentation, Section

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from badnet_prune.db.model_results import ModelResults
    from badnet_prune.pipeline.runtime import Runtime

NAME = "neural_cleanse"
VERDICT = "neural_cleanse_verdict"
VERDICT_KEY = "verdict"
TRIGGERS = "nc_triggers"  # the artifact kind of a range's masks and patterns
SHOWN = 8  # flagged labels drawn at most, smallest norms first


class RangeArguments(StageArguments):
    """Target labels first .. stop - 1; stop None: up to the model's last label (its classes unknown at planning)."""

    first: int = Field(ge=0)
    stop: int | None = Field(default=None, ge=1)

    def key(self) -> str:
        return f"labels-{self.first:05d}-{'end' if self.stop is None else f'{self.stop:05d}'}"


class RangeOutcome(BaseModel):
    """Per label of the range: its reversed mask's L1 norm, its trigger's attack success on the clean images
    used (a fraction), whether it reached the settings' target during the optimisation, its final lambda."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    labels: list[int]
    norms: list[float]
    attack_success: list[float]
    reached: list[bool]
    lambdas: list[float]
    image_count: int
    seconds: float
    file: str
    settings: dict[str, Any]


class VerdictOutcome(BaseModel):
    """The anomaly index over every label's norm, the flagged labels (norm below the median, index above 2), the
    largest index below the median (score = a / (a + 2))."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    flagged: list[int]
    norms: list[float]
    index: list[float | None]  # None: infinite (the MAD is zero)
    median: float
    mad: float
    max_index: float | None
    labels: int


def plan(context: PlanContext[NeuralCleanseSettings]) -> list[RangeArguments]:
    assert context.settings is not None
    size = context.settings.label_range
    classes = None if context.model is None else context.model.class_count
    if classes is None:
        return [RangeArguments(first=0, stop=None)]
    return [RangeArguments(first=first, stop=min(first + size, classes)) for first in range(0, classes, size)]


def units(arguments: RangeArguments, settings: NeuralCleanseSettings) -> int:
    return settings.label_range if arguments.stop is None else arguments.stop - arguments.first


def run(runtime: Runtime, job: Job[RangeArguments, NeuralCleanseSettings]) -> None:
    from badnet_prune.files.artifact_files import remove_artifacts, remove_stale_temporaries, save_atomically
    from badnet_prune.files.hashing import sha256_file
    from badnet_prune.numerics.neural_cleanse import reverse_engineer
    from badnet_prune.pipeline.outputs import artifact_folder, provenance_of

    assert job.model_id is not None and job.settings is not None
    settings = job.settings
    inputs = read_inputs(runtime, job.model_id)
    loaded = loaded_model(runtime, inputs)
    images, _ = role_pixels(loaded, inputs, "clean_valid")[""]
    images = images[: settings.image_count]
    stop = loaded.num_classes if job.arguments.stop is None else min(job.arguments.stop, loaded.num_classes)
    targets = list(range(job.arguments.first, stop))
    count = len(targets)
    result = reverse_engineer(loaded.split.model, images, targets, settings, inputs.input_scale,
                              on_progress=lambda steps: runtime.report_progress(
                                  job.task_id, count * steps // settings.steps))
    key = job.arguments.key()
    folder = artifact_folder(inputs)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    path = folder / f"{NAME}_{key}.npz"
    save_atomically(_Arrays(labels=result.targets, masks=result.masks, patterns=result.patterns), path)
    try:
        outcome = RangeOutcome(labels=[int(t) for t in targets], norms=result.norms.tolist(),
                               attack_success=result.attack_success.tolist(), reached=result.reached.tolist(),
                               lambdas=result.lambdas.tolist(), image_count=len(images), seconds=result.seconds,
                               file=str(path), settings=settings.model_dump(mode="json"))
        provenance = provenance_of(inputs, detector=NAME, labels=[targets[0], targets[-1]] if targets else [],
                                   settings=outcome.settings)
        with session_scope(runtime.engine) as session:
            save_artifact(session, job.model_id, threshold=key, kind=TRIGGERS, path=path, sha256=sha256_file(path),
                          provenance=provenance)
            save_outcome(session, job.model_id, NAME, key, outcome.model_dump(mode="json"))
    except BaseException:
        remove_artifacts([str(path)])
        raise


class _Arrays:
    """Arrays saved as one .npz through save_atomically (which calls .save(path))."""

    def __init__(self, **arrays: np.ndarray) -> None:
        self.arrays = arrays

    def save(self, path: Path) -> None:
        with open(path, "wb") as handle:
            np.savez_compressed(handle, **self.arrays)


def stored(session: Session, job: Job[RangeArguments, NeuralCleanseSettings]) -> bool:
    assert job.model_id is not None
    return outcome_stored(session, job.model_id, NAME, job.arguments.key())


def range_outcomes(results: ModelResults) -> list[RangeOutcome]:
    return sorted((RangeOutcome.model_validate(stored_outcome.document)
                   for stored_outcome in results.outcomes.get(NAME, {}).values()), key=lambda o: o.labels[:1])


class VerdictArguments(StageArguments):
    def key(self) -> str:
        return VERDICT_KEY


def plan_verdict(context: PlanContext[NeuralCleanseSettings]) -> list[VerdictArguments]:
    return [VerdictArguments()]


def run_verdict(runtime: Runtime, job: Job[VerdictArguments, NeuralCleanseSettings]) -> None:
    from badnet_prune.db.model_results import read_model_results
    from badnet_prune.numerics.neural_cleanse import anomaly

    assert job.model_id is not None
    with session_scope(runtime.engine) as session:
        results = read_model_results(session, job.model_id, steps=[])
    norms: dict[int, float] = {}
    for outcome in range_outcomes(results):
        norms.update(zip(outcome.labels, outcome.norms, strict=True))
    labels = sorted(norms)
    if labels != list(range(len(labels))):
        raise RuntimeError(f"Neural Cleanse's ranges do not cover labels 0..{len(labels) - 1}: {labels}")
    found = anomaly(np.array([norms[label] for label in labels]))
    outcome = VerdictOutcome(
        flagged=list(found.flagged), norms=[norms[label] for label in labels],
        index=[None if np.isinf(value) else float(value) for value in found.index], median=found.median,
        mad=found.mad, max_index=None if np.isinf(found.max_index) else found.max_index, labels=len(labels))
    with session_scope(runtime.engine) as session:
        save_outcome(session, job.model_id, VERDICT, VERDICT_KEY, outcome.model_dump(mode="json"), score=found.score)


def verdict_stored(session: Session, job: Job[VerdictArguments, NeuralCleanseSettings]) -> bool:
    assert job.model_id is not None
    return outcome_stored(session, job.model_id, VERDICT, VERDICT_KEY)


def verdict_of(results: ModelResults) -> tuple[VerdictOutcome, float | None] | None:
    stored_outcome = results.outcomes.get(VERDICT, {}).get(VERDICT_KEY)
    if stored_outcome is None:
        return None
    return VerdictOutcome.model_validate(stored_outcome.document), stored_outcome.score


def summary(results: ModelResults) -> dict[str, Any]:
    found = verdict_of(results)
    if found is None:
        return {}
    verdict, score = found
    seconds = sum(outcome.seconds for outcome in range_outcomes(results))
    return {NAME: {"score": score, "flagged": verdict.flagged, "median": verdict.median, "mad": verdict.mad,
                   "max_index": verdict.max_index, "labels": verdict.labels, "norms": verdict.norms,
                   "anomaly_index": verdict.index, "optimisation_seconds": seconds,
                   "files": sorted(path for (kind, _), path in results.files.items() if kind == TRIGGERS)}}


def notes(results: ModelResults) -> list[str]:
    found = verdict_of(results)
    if found is None:
        return []
    verdict, score = found
    failed = [label for outcome in range_outcomes(results)
              for label, reached in zip(outcome.labels, outcome.reached, strict=True) if not reached]
    said = (f"Neural Cleanse: label{'s' if len(verdict.flagged) > 1 else ''} "
            f"{', '.join(map(str, verdict.flagged))} flagged as backdoor target" if verdict.flagged
            else "Neural Cleanse: no label flagged")
    lines = [f"{said} (score {score:.3f}; anomaly index above 2 below the median of {verdict.labels} labels' "
             f"trigger norms)"]
    if failed:
        lines.append(f"Neural Cleanse: {len(failed)} label(s) never reached the target attack success; their "
                     f"norms are those of the last mask")
    return lines


def _pictures(results: ModelResults, verdict: VerdictOutcome) -> list[Picture]:
    """The flagged labels' mask (grey) and mask x pattern (the trigger as stamped on black), from their files."""
    shown = sorted(verdict.flagged, key=lambda label: verdict.norms[label])[:SHOWN]
    pictures = []
    for outcome in range_outcomes(results):
        wanted = [label for label in outcome.labels if label in shown]
        if not wanted or not Path(outcome.file).is_file():
            continue
        with np.load(outcome.file) as arrays:
            labels = list(arrays["labels"])
            for label in wanted:
                mask, pattern = arrays["masks"][labels.index(label)], arrays["patterns"][labels.index(label)]
                pictures.append(Picture(f"label {label}: mask", np.repeat(255.0 * mask[..., None], 3, axis=2)))
                pictures.append(Picture(f"label {label}: trigger", mask[..., None] * pattern))
    return pictures


def sections(results: ModelResults) -> list[Section]:
    found = verdict_of(results)
    if found is None:
        return []
    verdict, score = found
    success = {label: rate for outcome in range_outcomes(results)
               for label, rate in zip(outcome.labels, outcome.attack_success, strict=True)}
    order = sorted(range(verdict.labels), key=lambda label: verdict.norms[label])[:20]
    rows = [{"label": label, "mask L1 norm": round(verdict.norms[label], 2),
             "anomaly index": "inf" if verdict.index[label] is None else round(verdict.index[label], 2),
             "attack success": f"{100 * success.get(label, float('nan')):.1f}%",
             "flagged": "yes" if label in verdict.flagged else ""} for label in order]
    caption = (f"Neural Cleanse: a minimal trigger reverse-engineered per label on clean validation images; the "
               f"anomaly index is |norm - median| / (1.4826 MAD) (median {verdict.median:.1f}, MAD {verdict.mad:.2f})"
               f"; labels below the median with an index above 2 are flagged. Score {score:.3f}. The smallest "
               f"norms are listed"
               + ("; the flagged labels' masks and triggers are drawn." if verdict.flagged else "."))
    return [Section("Neural Cleanse: reversed triggers", caption,
                    columns=["label", "mask L1 norm", "anomaly index", "attack success", "flagged"], rows=rows,
                    pictures=_pictures(results, verdict))]


NEURAL_CLEANSE = register(Stage(
    name=NAME,
    description="detector: Neural Cleanse, a minimal trigger reverse-engineered per target label (one task per "
                "range of labels)",
    arguments=RangeArguments,
    plan=plan,
    run=run,
    settings=NeuralCleanseSettings,
    stored=stored,
    outcome=RangeOutcome,
    progress=Progress("labels", units),
))

NEURAL_CLEANSE_VERDICT = register(Stage(
    name=VERDICT,
    description="detector: Neural Cleanse's anomaly index over every label's trigger norm, and the model's score",
    arguments=VerdictArguments,
    plan=plan_verdict,
    run=run_verdict,
    after=(NAME,),
    settings_from=NAME,
    stored=verdict_stored,
    outcome=VerdictOutcome,
    presentation=Presentation(summary=summary, notes=notes, sections=sections),
))
