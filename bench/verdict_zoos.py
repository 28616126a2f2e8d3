"""Bench: each detector and the combined verdict across two zoos, the rule fitted on one and scored on the other
(issue 28).

Reads two swept zoos from one database (each swept with [clp_statistic], [pruning_curve] and [neural_cleanse]
tables: `badnet-prune zoo OUT --seed S`, then `badnet-prune sweep` on its sweep file with those tables added).
For each direction (fit on A, score on B; fit on B, score on A) it fits the rule exactly as `fit-verdict` does
(numerics.verdict_rule on the stored scores) and scores it as the leaderboard scores a detector
(numerics.detection_metrics): ROC-AUC, TrojAI's cross-entropy with its 95% interval, accuracy at 0.5; then
per attack kind, each detector's mean score and the share of that kind's models at or above 0.5 (for the clean
models: false alarms), and Neural Cleanse's share of single-target backdoored models whose true target it flags.

    .venv/bin/python bench/verdict_zoos.py --db sqlite:////tmp/verdict/db.sqlite --sweeps 1 2
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from badnet_prune.db.outcomes import DetectorScore, read_detector_scores, scores_by_model  # noqa: E402
from badnet_prune.db.session import prepare_database, session_scope  # noqa: E402
from badnet_prune.numerics.detection_metrics import score_detector  # noqa: E402
from badnet_prune.numerics.verdict_rule import CUTOFF, fit_verdict_rule  # noqa: E402

DETECTORS = ("clp_statistic", "pruning_curve", "neural_cleanse_verdict")
NEURAL_CLEANSE = "neural_cleanse_verdict"


def by_model(scores: list[DetectorScore]) -> dict[int, dict[str, DetectorScore]]:
    """The models with truth that every detector scored."""
    return {model: found for model, found in scores_by_model(scores, DETECTORS).items()
            if set(found) == set(DETECTORS)}


def judged(name: str, probabilities: list[float], truth: list[bool]) -> str:
    scored = score_detector(probabilities, truth)
    return (f"| {name} | {scored.models} ({scored.backdoored}) | {scored.auc:.3f} | {scored.cross_entropy:.3f} "
            f"[{scored.ce_low:.3f}, {scored.ce_high:.3f}] | {100 * scored.accuracy:.1f}% |")


def per_attack(models: dict[int, dict[str, DetectorScore]], extra: dict[int, float] | None = None) -> None:
    kinds: dict[str, list[int]] = defaultdict(list)
    for model, found in models.items():
        kinds[next(iter(found.values())).attack or "?"].append(model)
    names = [*DETECTORS, *(["verdict"] if extra else [])]
    print("| attack | models | " + " | ".join(f"{name}: mean score, >= 0.5" for name in names) + " | NC names target |")
    print("| --- | ---: | " + " | ".join("---:" for _ in names) + " | ---: |")
    for kind in sorted(kinds):
        members = kinds[kind]
        cells = []
        for name in names:
            values = [extra[m] if name == "verdict" else models[m][name].score for m in members]  # type: ignore[index]
            cells.append(f"{np.mean(values):.3f}, {sum(v >= CUTOFF for v in values)}/{len(values)}")
        single = [models[m][NEURAL_CLEANSE] for m in members
                  if models[m][NEURAL_CLEANSE].backdoored and len(models[m][NEURAL_CLEANSE].targets) == 1]
        named = sum(bool(set(e.document.get("flagged", [])) & set(e.targets)) for e in single)
        found = f"{named}/{len(single)}" if single else "-"
        print(f"| {kind} | {len(members)} | " + " | ".join(cells) + f" | {found} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--sweeps", type=int, nargs=2, required=True, metavar=("A", "B"))
    args = parser.parse_args()
    engine = prepare_database(args.db, create=False)
    zoos = {}
    with session_scope(engine) as session:
        for sweep_id in args.sweeps:
            zoos[sweep_id] = by_model(read_detector_scores(session, sweep_id))
    for fit_on, score_on in (args.sweeps, args.sweeps[::-1]):
        fitting, scoring = zoos[fit_on], zoos[score_on]
        fit_models = sorted(fitting)
        rule = fit_verdict_rule(np.array([[fitting[m][d].score for d in DETECTORS] for m in fit_models]),
                                [bool(fitting[m][DETECTORS[0]].backdoored) for m in fit_models], DETECTORS)
        models = sorted(scoring)
        truth = [bool(scoring[m][DETECTORS[0]].backdoored) for m in models]
        verdicts = {m: rule.probability({d: scoring[m][d].score for d in DETECTORS}) for m in models}
        print(f"\n### Rule fitted on sweep {fit_on} ({len(fit_models)} models), scored on sweep {score_on}\n")
        print("weights (standardised): " + ", ".join(f"{d} {w:+.3f}" for d, w in zip(DETECTORS, rule.weights,
                                                                                        strict=True))
              + f"; bias {rule.bias:+.3f}\n")
        print("| detector | models (backdoored) | ROC-AUC | cross-entropy [95%] | accuracy at 0.5 |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for detector in DETECTORS:
            print(judged(detector, [scoring[m][detector].score for m in models], truth))
        print(judged("combined verdict", [verdicts[m] for m in models], truth))
        print()
        per_attack(scoring, verdicts)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
