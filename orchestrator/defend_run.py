"""The defense on one model, as a one-model sweep on the embedded default: the one path that
`badnet-prune defend` and the notebook API (`badnet_prune.defend`) both take.

It builds the sweep spec, runs it in this process (whatever broker the environment names), writes
steps.csv and summary.json into the results folder and returns the model's typed results.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from badnet_prune.db.model_results import ModelResults
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.names import RESERVED_NAMES
from badnet_prune.numerics.selection import validate_policy
from badnet_prune.numerics.thresholds import parse_thresholds
from badnet_prune.orchestrator.sweep_file import SweepSpec
from badnet_prune.orchestrator.verdicts import ASR_BOUND, CLEAN_BOUND


class DefenseFailed(Exception):
    """The model failed while it was defended (the message is the stored reason); no results were written."""


@dataclass(frozen=True)
class Defended:
    """Where a defense's results are (sweep id and database) and what they are."""

    sweep_id: int
    db_url: str
    results: ModelResults
    input_scale_note: str | None = None  # the rank stage's line on the scale it chose or checked


def model_name(model: Path) -> str:
    """The model's name in the results: its file name without extension, as an identifier ('bd net.h5' -> 'bd_net')."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", model.stem).lstrip("_-")[:64] or "model"
    return name if name.lower() not in RESERVED_NAMES else f"model_{name}"


def defense_spec(
    model: Path,
    clean_valid: Path,
    clean_test: Path,
    *,
    poisoned: Mapping[str, Mapping[str, str]],
    thresholds: Sequence[object],
    policy: str,
    prune_layer: str,
    rank_layer: str,
    input_scale: float | str,
    trust_model_code: bool,
    stages: Mapping[str, Mapping[str, object]] | None = None,
) -> SweepSpec:
    """The one-model sweep of a defense; poisoned maps each name to {"valid": FILE, "test": FILE}; stages maps
    each further stage to run to its settings table (validated: orchestrator.stage_options).

    Thresholds and policy are checked here as well as in parse_sweep, so that the error names the
    option, not the sweep.
    """
    from badnet_prune.orchestrator.sweep_file import parse_sweep

    try:
        threshold_keys = [t.key for t in parse_thresholds(thresholds)]
    except ValueError as error:
        raise BadInputError("--thresholds", str(error)) from error
    try:
        validate_policy(policy)
    except ValueError as error:
        raise BadInputError("--policy", str(error)) from error
    raw: dict[str, object] = {
        "name": f"defend {model.name}",
        "thresholds": threshold_keys,
        "policy": str(policy),
        "prune_layer": prune_layer,
        "rank_layer": rank_layer,
        "range_size": 1000,
        "trust_model_code": trust_model_code,
        "model": [{
            "name": model_name(model), "path": str(model), "input_scale": input_scale,
            "clean_valid": str(clean_valid), "clean_test": str(clean_test),
            "poisoned": {name: dict(files) for name, files in poisoned.items()},
        }],
    }
    raw.update({name: dict(table) for name, table in (stages or {}).items()})
    return parse_sweep(raw, base=Path.cwd(), source="defend", default_name="defend")


def defend_model(spec: SweepSpec, out: Path, *, db: str | None, console: Console, asr_bound: float = ASR_BOUND,
                 clean_bound: float = CLEAN_BOUND) -> Defended:
    """Run the spec here, results in OUT: models in OUT/models, steps.csv and summary.json, and the
    database in OUT/badnet-prune.db unless --db or BADNET_PRUNE_DB names one. DefenseFailed if the model failed.

    The inputs are checked first (check_inputs): a file the defense would fail on raises BadInputError
    before a database, a sweep or OUT is made.
    """
    from badnet_prune.orchestrator.options import load_settings
    from badnet_prune.orchestrator.submit import submit_sweep
    from badnet_prune.settings import Settings

    check_inputs(spec)
    if db is None and "db_url" not in Settings.from_env().model_fields_set:
        db = str(out / "badnet-prune.db")  # the results' database goes with the results, not into the cwd
    settings = load_settings(db=db, artifact_dir=out / "models").without_broker()
    sweep_id = submit_sweep(settings, spec, wait=True, console=console, extra_config={"flat_artifacts": True})
    results = write_results(settings.db_url, sweep_id, out, asr_bound, clean_bound)
    return Defended(sweep_id, settings.db_url, results, input_scale_note(settings.db_url, sweep_id))


def check_inputs(spec: SweepSpec) -> None:
    """Everything a defense can be refused for before it runs: each model file's structure and the code its
    config would run (model_io.check_model_file, which the worker repeats when it loads), its layers, and its
    data files against its input shape and classes (planning.check_model_inputs)."""
    from badnet_prune.orchestrator.planning import check_model_inputs

    for model in spec.models:  # before TensorFlow loads (model_io imports it): a missing file is said at once
        check_model_inputs(model, spec.prune_layer, spec.rank_layer)
    from badnet_prune.files.model_io import check_model_file

    for model in spec.models:
        check_model_file(model.path, trust_code=spec.trust_model_code)


def input_scale_note(db_url: str, sweep_id: int) -> str | None:
    """The one model's line on its input scale, as its rank stage stored it."""
    from badnet_prune.db.inputs import input_scale_notes
    from badnet_prune.db.session import make_engine, session_scope

    engine = make_engine(db_url)
    try:
        with session_scope(engine) as session:
            return next(iter(input_scale_notes(session, sweep_id).values()), None)
    finally:
        engine.dispose()


def write_results(db_url: str, sweep_id: int, out: Path, asr_bound: float = ASR_BOUND,
                  clean_bound: float = CLEAN_BOUND) -> ModelResults:
    """Read the one model's results back and write OUT/steps.csv and OUT/summary.json from them."""
    from badnet_prune.db.model_results import read_model_results
    from badnet_prune.db.repository import list_models
    from badnet_prune.db.session import make_engine, session_scope
    from badnet_prune.orchestrator.exports import model_summary, step_rows, to_csv

    engine = make_engine(db_url)
    with session_scope(engine) as session:
        model = list_models(session, sweep_id)[0]
        if model.status == "failed":
            raise DefenseFailed(model.error or "the model failed")
        columns, rows = step_rows(session, sweep_id)
        results = read_model_results(session, model.id)
    summary = model_summary(results, asr_bound, clean_bound)
    out.mkdir(parents=True, exist_ok=True)
    (out / "steps.csv").write_text(to_csv(columns[1:], rows), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps({"sweep": sweep_id, **summary}, indent=2) + "\n", encoding="utf-8")
    return results
