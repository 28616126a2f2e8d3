"""The public Python API, the top floor: what a notebook calls, on the orchestrator's one path.

`defend` runs the same one-model sweep as `badnet-prune defend` on the embedded default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from badnet_prune.db.model_results import ModelResults

__all__ = ["defend"]


def defend(
    model: str | Path,
    clean_valid: str | Path,
    clean_test: str | Path,
    out: str | Path,
    *,
    poisoned: Mapping[str, tuple[str | Path, str | Path]] | None = None,
    thresholds: Sequence[float | str] = (0.02, 0.04, 0.1),
    policy: str = "first",
    prune_layer: str = "conv_3",
    rank_layer: str = "pool_3",
    input_scale: float | str = "auto",
    trust_model_code: bool = False,
    db: str | None = None,
    stages: Mapping[str, bool | Mapping[str, object]] | None = None,
) -> ModelResults:
    """Run the whole defense on one model, as `badnet-prune defend` does, and return its typed results.

    poisoned maps each poisoned set's name to its (validation file, test file). The results are written
    to OUT as by the command (steps.csv, summary.json, models/B_prime_<t>.keras and G_<t>.keras, and the
    database OUT/badnet-prune.db unless `db` or BADNET_PRUNE_DB names one); progress goes to stderr.
    stages: further stages to run, by name, each True (its defaults) or its settings by field name, as defend's
    flags and options take them: {"fine_tune": {"epochs": 5, "optimizer": "sgd"}} fine-tunes each B'_t.
    Bad input raises badnet_prune.numerics.errors.BadInputError before anything is created (no OUT, no database,
    no sweep): arguments, a missing or malformed model or data file, a model file that carries code, a layer the
    model lacks, data that does not fit the model's input or classes. A model that fails while it is defended
    raises orchestrator.defend_run.DefenseFailed with the reason.

    Example (a notebook cell)::

        from badnet_prune import defend
        results = defend("bd_net.h5", "cl/valid.h5", "cl/test.h5", "out",
                         poisoned={"sunglasses": ("bd/bd_valid.h5", "bd/bd_test.h5")})
        for t in results.thresholds:
            print(t.threshold.percent, t.step, t.g.clean_accuracy, t.g.asr)
    """
    from rich.console import Console

    from badnet_prune.numerics.errors import BadInputError
    from badnet_prune.orchestrator.defend_run import defend_model, defense_spec
    from badnet_prune.orchestrator.stage_options import validated
    from badnet_prune.pipeline.contract import configurable

    known = {stage.name: stage for stage in configurable()}
    stage_tables = {}
    for name, chosen in (stages or {}).items():
        if name not in known:
            raise BadInputError(f"stages[{name!r}]", f"no such stage; stages with settings: {', '.join(known)}")
        if chosen is not False:
            stage_tables[name] = validated(known[name], chosen if isinstance(chosen, Mapping) else {})
    sets = {}
    for name, files in (poisoned or {}).items():
        if isinstance(files, str | Path) or len(files) != 2:
            raise BadInputError(f"poisoned[{name!r}]", f"{files!r} is not a (validation file, test file) pair")
        sets[name] = {"valid": str(files[0]), "test": str(files[1])}
    spec = defense_spec(
        Path(model), Path(clean_valid), Path(clean_test), poisoned=sets,
        thresholds=thresholds if isinstance(thresholds, str) else list(thresholds), policy=policy,
        prune_layer=prune_layer, rank_layer=rank_layer, input_scale=input_scale, trust_model_code=trust_model_code,
        stages=stage_tables,
    )
    return defend_model(spec, Path(out), db=db, console=Console(stderr=True)).results
