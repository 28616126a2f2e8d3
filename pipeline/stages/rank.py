"""rank: settle the input scale, order the prune layer's channels by mean activation on clean validation
data (lowest first), and measure B's clean validation accuracy (acc0)."""

from __future__ import annotations

import logging
from contextlib import closing
from dataclasses import replace
from typing import TYPE_CHECKING

from badnet_prune.db.inputs import ModelInputs, save_input_scale
from badnet_prune.db.repository import set_model_status
from badnet_prune.db.results import ranking_stored, save_ranking
from badnet_prune.db.session import session_scope
from badnet_prune.files.data import open_data_file
from badnet_prune.numerics.input_scale import AUTO_INPUT_SCALE, SAMPLE_SIZE, SCALES, choose_input_scale
from badnet_prune.numerics.ranking import rank_channels
from badnet_prune.pipeline.contract import Job, PlanContext, Stage, StageArguments, register
from badnet_prune.pipeline.inputs import loaded_model, read_inputs, role_data, set_key

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from badnet_prune.pipeline.runtime import Runtime

LOG = logging.getLogger(__name__)


class RankArguments(StageArguments):
    """Ranking has no arguments: the model's files and layers are in its rows."""


def plan(context: PlanContext) -> list[RankArguments]:
    return [RankArguments()]


def run(runtime: Runtime, job: Job[RankArguments, None]) -> None:
    """Rank the prune layer's channels on clean validation data and record B's accuracy there (acc0).

    The input scale is settled first (chosen, or the given one checked), so that the ranking, acc0 and
    every later task (which re-reads the model row) use it.
    """
    from badnet_prune.numerics.activations import channel_means, cut_activations, rank_activation_batches
    from badnet_prune.numerics.inference import accuracy_percent, compiled_forward

    assert job.model_id is not None
    inputs = settle_input_scale(runtime, read_inputs(runtime, job.model_id))
    loaded = loaded_model(runtime, inputs)
    split = loaded.split
    clean = role_data(runtime, loaded, inputs, "clean_valid")[""]
    if split.rank_from_input is not None:
        clean_path = inputs.data["clean_valid"][""].path
        images = (
            [clean.images] if clean.images is not None
            else open_data_file(clean_path, loaded.image_shape, loaded.num_classes).batches()
        )
        means = channel_means([cut_activations(compiled_forward(split.rank_from_input), images, inputs.input_scale)])
    else:
        rank_forward = compiled_forward(split.rank_from_cut) if split.rank_from_cut is not None else None
        means = channel_means(rank_activation_batches(clean.cut, rank_forward))
    order = rank_channels(means)
    key = set_key("clean_valid")
    labels = runtime.memory.labels_at(loaded, {key: clean})(key, [], None)
    with session_scope(runtime.engine) as session:
        save_ranking(session, job.model_id, [(int(c), position, float(means[c])) for position, c in enumerate(order)])
        set_model_status(
            session, job.model_id, "running", acc0=accuracy_percent(labels, clean.labels),
            channel_count=split.channel_count,
        )


def settle_input_scale(runtime: Runtime, inputs: ModelInputs) -> ModelInputs:
    """Choose the model's input scale (auto) or check the given one on the first images of its clean
    validation file, store the scale and its one line, and return the inputs with that scale.

    A model registered for auto is loaded at scale 1 to measure; when it expects 255 the ranking loads it
    again under that scale, since the scale is part of the worker's model key and activation cache names.
    """
    from badnet_prune.numerics.inference import compiled_forward

    auto = inputs.input_scale_auto or inputs.input_scale == AUTO_INPUT_SCALE
    measured_at = SCALES[0] if inputs.input_scale == AUTO_INPUT_SCALE else inputs.input_scale
    loaded = loaded_model(runtime, replace(inputs, input_scale=measured_at))
    # no hash check here: the ranking reads the same file next, under its registered sha256
    sample = open_data_file(inputs.data["clean_valid"][""].path, loaded.image_shape)
    with closing(sample.batches(SAMPLE_SIZE)) as batches:
        images = next(batches)
    choice = choose_input_scale(compiled_forward(loaded.split.model), images, sample.labels[: len(images)],
                                loaded.num_classes, given=None if auto else inputs.input_scale)
    (LOG.warning if choice.warning else LOG.info)("model %s: %s", inputs.name, choice.note)
    with session_scope(runtime.engine) as session:
        save_input_scale(session, inputs.model_id, choice.scale, auto=auto, note=choice.note)
    return replace(inputs, input_scale=choice.scale, input_scale_auto=auto)


def stored(session: Session, job: Job[RankArguments, None]) -> bool:
    assert job.model_id is not None
    return ranking_stored(session, job.model_id)


RANK = register(Stage(
    name="rank",
    description="input scale, head activations and the ranking on clean validation data",
    arguments=RankArguments,
    plan=plan,
    run=run,
    stored=stored,
))
