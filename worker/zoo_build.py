"""A zoo model's build on a worker: the build id in, the row re-read, the model built (or linked from the
cache), its record written to the row.

The row says everything (attack, seed, settings, folders); a message carries only the id. A build that
is done is never built again, one running under another worker's live lease is looked at again later,
and one whose worker died is taken over. The model is built by synth.zoo.cached_model, into the shared
cache and linked into the zoo's folder, as `badnet-prune zoo` builds it in-process: a build interrupted
half-way leaves no half-written model anywhere (the cache publishes by rename).
"""

from __future__ import annotations

import json
from pathlib import Path

from badnet_prune.db.models import ZooBuild
from badnet_prune.db.session import session_scope
from badnet_prune.db.tasks import end_task
from badnet_prune.db.zoo_builds import get_build
from badnet_prune.numerics.errors import BadInputError, first_line
from badnet_prune.synth.zoo import ATTACKS, SynthesisError, ZooSettings, cached_model
from badnet_prune.worker.flow import (
    TRANSIENT_ERRORS,
    LeaseHeartbeat,
    Outcome,
    end_quietly,
    refused,
    take_row_lease,
)
from badnet_prune.worker.runtime import Runtime

ZOO_TASK = "badnet_prune.zoo_model"


def run_zoo_build(runtime: Runtime, build_id: object) -> Outcome:
    """Build zoo model `build_id` if its row says it may be built."""
    if not isinstance(build_id, int) or isinstance(build_id, bool):
        return refused(f"zoo build id {build_id!r} is not an integer")
    with session_scope(runtime.engine) as session:
        build = get_build(session, build_id)
        if build is None:
            return refused(f"no zoo build {build_id}")
        if build.state == "done":
            return Outcome(False, f"zoo build {build_id}: already done")
        if build.state == "failed":
            return refused(f"zoo build {build_id}: failed ({build.error})")
        token = take_row_lease(session, runtime, build, f"zoo build {build_id}")
        if isinstance(token, Outcome):
            return token
        recipe = (build.attack, build.seed, build.settings, build.cache_dir, build.folder)
    try:
        with LeaseHeartbeat(runtime, build_id, token, table=ZooBuild):
            record = _build(*recipe)
    except TRANSIENT_ERRORS:
        end_quietly(runtime, build_id, token, "retrying", "database or broker unavailable; retrying", table=ZooBuild)
        raise
    except Exception as error:  # the model missed its accuracy, or its folder is refused: the zoo's other models go on
        reason = first_line(error)
        if not isinstance(error, BadInputError | SynthesisError):
            reason = f"{type(error).__name__}: {reason}"
        with session_scope(runtime.engine) as session:
            end_task(session, build_id, token, "failed", reason, table=ZooBuild)
        return Outcome(True, f"failed: {reason}")
    with session_scope(runtime.engine) as session:
        end_task(session, build_id, token, "done", table=ZooBuild, values={"record": record})
    return Outcome(True, "done")


def _build(attack: object, seed: object, settings: object, cache_dir: object, folder: object) -> dict:
    """The model built or linked into folder; its record as JSON. The row's values are checked here, inside the
    lease, so that a row edited into nonsense fails its build in one line instead of escaping it."""
    from pydantic import ValidationError

    from badnet_prune.numerics.tf_setup import keras

    where = f"zoo build of {folder}"
    if not (isinstance(folder, str) and isinstance(cache_dir, str) and isinstance(seed, int)):
        raise BadInputError(where, "its stored folder, cache or seed is not of its type")
    if not isinstance(settings, dict):
        raise BadInputError(where, f"its stored settings are not a table: {type(settings).__name__}")

    if keras.backend.backend() != "tensorflow":
        raise BadInputError("KERAS_BACKEND", f"this worker runs Keras on {keras.backend.backend()}; zoo models "
                            "are trained with TensorFlow: build them on a worker with KERAS_BACKEND=tensorflow")
    if attack not in ATTACKS:
        raise BadInputError(where, f"unknown attack {attack!r} (known: {', '.join(ATTACKS)})")
    try:
        recipe = ZooSettings.model_validate_json(json.dumps(settings))
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(part) for part in item['loc']) or 'settings'}: {item['msg']}"
                             for item in error.errors(include_url=False))
        raise BadInputError(where, f"its stored settings are refused: {problems}") from None
    record, _ = cached_model(attack, seed, recipe, Path(cache_dir), Path(folder))  # type: ignore[arg-type]
    return record.model_dump(mode="json")

