"""`badnet-prune fit-verdict NAME --sweep ID`: fit a combined-verdict rule on a sweep's models with ground truth."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from badnet_prune.orchestrator.options import MAX_SWEEP_ID, DbOption, existing_sweep, load_settings


def fit_verdict(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The rule's name, an identifier that sweep files "
                    "then give in their detection_verdict table (rule = NAME), e.g. zoo-seed0.")],
    sweep_id: Annotated[int, typer.Option("--sweep", min=1, max=MAX_SWEEP_ID, help="The sweep whose models (with "
                        "ground truth, as `zoo` writes it) and detector scores it is fitted on, e.g. --sweep 3.")],
    detector: Annotated[list[str] | None, typer.Option("--detector", help="A detector stage to combine "
                        "(clp_statistic, pruning_curve, neural_cleanse_verdict), repeated for several, e.g. "
                        "--detector clp_statistic --detector pruning_curve (default: each of them that scored every "
                        "model with ground truth).")] = None,
    db: DbOption = None,
) -> None:
    """Fit the combined verdict on one sweep's models, and store it under NAME for other sweeps to judge theirs.

    The rule is a logistic regression over the detectors' scores. Judge it only on other models: a sweep whose
    detection_verdict table names it refuses the models it was fitted on (by their files' sha256). The ROC-AUC
    printed here is on the fitting models themselves, so it is optimistic; the leaderboard of another sweep
    gives the honest figure.

    Example: badnet-prune fit-verdict zoo-seed0 --sweep 1, then a detection_verdict table with rule = "zoo-seed0"
    in the sweep file of a zoo built with another --seed.
    """
    settings = load_settings(db=db)

    import numpy as np

    from badnet_prune.db.outcomes import read_detector_scores, scores_by_model
    from badnet_prune.db.session import prepare_database, session_scope
    from badnet_prune.db.verdict_rules import model_file_hashes, read_rule, save_rule
    from badnet_prune.numerics.detection_metrics import score_detector
    from badnet_prune.numerics.errors import BadInputError
    from badnet_prune.numerics.names import check_name
    from badnet_prune.numerics.verdict_rule import fit_verdict_rule
    from badnet_prune.pipeline.contract import load_stage_modules
    from badnet_prune.pipeline.stages.detection_verdict import ENABLED_BY, detector_settings

    check_name(name, "NAME")
    load_stage_modules(settings.stage_modules)
    engine = prepare_database(settings.db_url, create=False)
    with session_scope(engine) as session:
        config = dict(existing_sweep(session, sweep_id).config)
        if read_rule(session, name) is not None:
            raise BadInputError("NAME", f"a verdict rule named {name!r} exists; choose another name")
        table = scores_by_model(read_detector_scores(session, sweep_id), ENABLED_BY)
        hashes = model_file_hashes(session, sweep_id)
    if not table:
        raise BadInputError(f"sweep {sweep_id}", "no model with ground truth has a detector score: run the sweep "
                            "with detector tables ([clp_statistic], [pruning_curve], [neural_cleanse])")
    available = sorted(set.intersection(*(set(found) for found in table.values())))
    chosen = sorted(dict.fromkeys(detector)) if detector else available
    for wanted in chosen:
        if wanted not in ENABLED_BY:
            raise BadInputError("--detector", f"{wanted!r} is not a detector a rule can combine "
                                f"(choose from {', '.join(ENABLED_BY)})")
        lacking = [next(iter(found.values())).model for found in table.values() if wanted not in found]
        if lacking:
            raise BadInputError("--detector", f"{wanted} scored {len(table) - len(lacking)} of the {len(table)} "
                                f"models with ground truth (not {', '.join(sorted(lacking)[:5])}); "
                                f"every one of them has: {', '.join(available) or 'none'}")
    if not chosen:
        raise BadInputError(f"sweep {sweep_id}", "no detector scored every model with ground truth")
    models = sorted(table)
    matrix = np.array([[table[model][wanted].score for wanted in chosen] for model in models])
    labels = [bool(next(iter(table[model].values())).backdoored) for model in models]
    rule = fit_verdict_rule(matrix, labels, chosen)
    fitted = [rule.probability(dict(zip(chosen, row, strict=True))) for row in matrix.tolist()]
    backdoored = sum(labels)
    with session_scope(engine) as session:
        save_rule(session, name, rule, fitted_sweep_id=sweep_id, fitted_models=[hashes[model] for model in models],
                  backdoored_models=backdoored, clean_models=len(models) - backdoored,
                  detector_settings=detector_settings(chosen, config))
    in_sample = score_detector(fitted, labels)
    console = Console()
    weights = ", ".join(f"{wanted} {weight:+.3f}" for wanted, weight in zip(chosen, rule.weights, strict=True))
    console.print(f"verdict rule {name}: fitted on sweep {sweep_id}'s {len(models)} models with ground truth "
                  f"({backdoored} backdoored, {len(models) - backdoored} clean); standardised weights {weights}, "
                  f"bias {rule.bias:+.3f}", soft_wrap=True, markup=False)
    console.print(f"on those same models (optimistic): ROC-AUC {in_sample.auc:.3f}, cross-entropy "
                  f"{in_sample.cross_entropy:.3f}, accuracy {100 * in_sample.accuracy:.1f}% at cut-off 0.5; judge it "
                  f"on another zoo with [detection_verdict] rule = \"{name}\"", soft_wrap=True, markup=False)
