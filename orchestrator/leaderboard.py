"""The leaderboard: how each defense and setting did across the models of a sweep with ground truth.

Read from the view defense_outcomes (one row per model, network, setting and poison) and the tasks'
seconds. Per network (B'_t, G_t, B''_t, G''_t and each later defense's) and setting, over the backdoored
models:
- repaired: the share of models whose every poison's ASR after the defense is at most the ASR bound and
  whose clean accuracy drop from B is at most the clean bound (points);
- ASR after: median, 90th percentile and worst over (model, poison) pairs;
- clean drop: median and 90th percentile over models;
- robust accuracy (poisoned images classified as their true label, where the files carry it) and TrojAI's
  fidelity, means over (model, poison) pairs;
- false alarms (repaired nets: clean test images flagged as N), mean over models;
- compute: the median over models of the seconds its stage and the stages it waits for took.
The same broken down by attack kind; and for clean models (no backdoor) what a defense costs them: the
clean drop and false alarms, since a defense must not hurt a clean model.

Detectors (stages that store a score in [0, 1] per model) are scored over the models with truth as TrojAI
scores them (numerics.detection_metrics): ROC-AUC, cross-entropy with its 95% interval, accuracy at cut-off
0.5; and, for a detector whose evidence names flagged labels (Neural Cleanse), the share of backdoored models
with known targets whose flagged labels include a true target.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from badnet_prune.db.outcomes import DefenseOutcome, DetectorScore
from badnet_prune.numerics.detection_metrics import score_detector
from badnet_prune.pipeline.contract import Stage, get_stage, stages
from badnet_prune.pipeline.presentation import Network, setting_label


@dataclass(frozen=True)
class LeaderboardRow:
    network: str
    defense: str  # the network at its setting, as people read it: "G'' 2%"
    setting: str
    attack: str | None  # None: every attack kind together
    models: int
    repaired: float  # share of models, percent
    asr_median: float | None
    asr_p90: float | None
    asr_worst: float | None
    drop_median: float
    drop_p90: float
    robust_accuracy: float | None
    fidelity: float | None
    false_alarms: float | None
    seconds: float | None


@dataclass(frozen=True)
class CleanModelRow:
    """What a defense costs the models without a backdoor."""

    network: str
    defense: str
    setting: str
    models: int
    within_bound: float  # share of models whose clean drop is at most the clean bound, percent
    drop_median: float
    drop_p90: float
    drop_worst: float
    false_alarms: float | None


@dataclass(frozen=True)
class DetectorRow:
    """A detector over the sweep's models with truth (see the module's docstring); target_named in percent."""

    detector: str
    models: int
    backdoored_models: int
    auc: float | None
    cross_entropy: float
    ce_low: float
    ce_high: float
    ce_half_width: float
    cutoff_accuracy: float  # percent of models on the right side of 0.5
    target_named: float | None
    target_models: int  # backdoored models with known targets that target_named counts over


def declared_networks() -> dict[str, tuple[Stage, Network]]:
    return {network.name: (stage, network) for stage in stages() if stage.presentation is not None
            for network in stage.presentation.networks}


def has_truth(outcomes: Iterable[DefenseOutcome]) -> bool:
    return any(row.backdoored is not None for row in outcomes)


def leaderboard(outcomes: Sequence[DefenseOutcome], seconds: Mapping[tuple[int, str], float], *, asr_bound: float,
                clean_bound: float, by_attack: bool = False) -> list[LeaderboardRow]:
    """The leaderboard over the backdoored models (by_attack: one block per attack kind), best first."""
    networks = declared_networks()
    groups: dict[tuple[str | None, str, str], list[DefenseOutcome]] = {}
    for row in outcomes:
        if row.backdoored and row.network in networks and row.poison is not None and row.asr is not None:
            groups.setdefault((row.attack if by_attack else None, row.network, row.setting), []).append(row)
    rows = [_row(attack, networks[network], setting, group, seconds, asr_bound, clean_bound)
            for (attack, network, setting), group in groups.items()]
    return sorted(rows, key=lambda r: (r.attack or "", -r.repaired, r.asr_median if r.asr_median is not None
                                       else 101.0, r.drop_median, r.network, r.setting))


def clean_models(outcomes: Sequence[DefenseOutcome], *, clean_bound: float) -> list[CleanModelRow]:
    """Per network and setting, over the models whose truth says they carry no backdoor."""
    networks = declared_networks()
    drops: dict[tuple[str, str], dict[int, DefenseOutcome]] = {}
    for row in outcomes:
        if row.backdoored is False and row.network in networks:
            drops.setdefault((row.network, row.setting), {})[row.model_id] = row
    result = []
    for (network, setting), by_model in drops.items():
        values = np.array([r.b_clean_accuracy - r.clean_accuracy for r in by_model.values()])
        alarms = [r.false_alarms for r in by_model.values() if r.false_alarms is not None]
        result.append(CleanModelRow(
            network=network, defense=_label(networks[network][1], setting), setting=setting, models=len(by_model),
            within_bound=100.0 * float(np.mean(values <= clean_bound)), drop_median=float(np.median(values)),
            drop_p90=float(np.percentile(values, 90)), drop_worst=float(values.max()),
            false_alarms=float(np.mean(alarms)) if alarms else None,
        ))
    return sorted(result, key=lambda r: (r.drop_median, r.network, r.setting))


def _row(attack: str | None, declared: tuple[Stage, Network], setting: str, group: list[DefenseOutcome],
         seconds: Mapping[tuple[int, str], float], asr_bound: float, clean_bound: float) -> LeaderboardRow:
    stage, network = declared
    by_model: dict[int, list[DefenseOutcome]] = {}
    for row in group:
        by_model.setdefault(row.model_id, []).append(row)
    asr = np.array([row.asr for row in group], dtype=np.float64)
    drops = {model: rows[0].b_clean_accuracy - rows[0].clean_accuracy for model, rows in by_model.items()}
    repaired = [all(r.asr <= asr_bound for r in rows) and drops[model] <= clean_bound
                for model, rows in by_model.items()]
    drop_values = np.array(list(drops.values()))
    robust = [row.robust_accuracy for row in group if row.robust_accuracy is not None]
    fidelity = [row.fidelity for row in group if row.fidelity is not None]
    alarms = [rows[0].false_alarms for rows in by_model.values() if rows[0].false_alarms is not None]
    chain = _chain(stage)
    spent = [sum(seconds.get((model, name), 0.0) for name in chain) for model in by_model]
    return LeaderboardRow(
        network=network.name, defense=_label(network, setting), setting=setting, attack=attack, models=len(by_model),
        repaired=100.0 * float(np.mean(repaired)), asr_median=float(np.median(asr)),
        asr_p90=float(np.percentile(asr, 90)), asr_worst=float(asr.max()),
        drop_median=float(np.median(drop_values)), drop_p90=float(np.percentile(drop_values, 90)),
        robust_accuracy=float(np.mean(robust)) if robust else None,
        fidelity=float(np.mean(fidelity)) if fidelity else None,
        false_alarms=float(np.mean(alarms)) if alarms else None,
        seconds=float(np.median(spent)) if any(spent) else None,
    )


def _label(network: Network, setting: str) -> str:
    return f"{network.label} {setting_label(setting)}"


def _chain(stage: Stage) -> list[str]:
    """The stage and every stage it waits for, directly or not: what running it costs a model."""
    names, todo = [], [stage.name]
    while todo:
        name = todo.pop()
        if name not in names:
            names.append(name)
            todo.extend(get_stage(name).after)
    return names


def detectors(scores: Sequence[DetectorScore]) -> list[DetectorRow]:
    """Per detector, its scores judged against the truth of the models that carry one; lowest cross-entropy first."""
    groups: dict[str, list[DetectorScore]] = {}
    for entry in scores:
        if entry.backdoored is not None:
            groups.setdefault(entry.detector, []).append(entry)
    rows = []
    for detector, group in groups.items():
        scored = score_detector([e.score for e in group], [bool(e.backdoored) for e in group])
        named = [bool(set(e.document["flagged"]) & set(e.targets)) for e in group
                 if e.backdoored and e.targets and isinstance(e.document.get("flagged"), list)]
        rows.append(DetectorRow(
            detector=detector, models=scored.models, backdoored_models=scored.backdoored, auc=scored.auc,
            cross_entropy=scored.cross_entropy, ce_low=scored.ce_low, ce_high=scored.ce_high,
            ce_half_width=scored.ce_half_width, cutoff_accuracy=100.0 * scored.accuracy,
            target_named=100.0 * float(np.mean(named)) if named else None, target_models=len(named)))
    return sorted(rows, key=lambda r: (r.cross_entropy, r.detector))
