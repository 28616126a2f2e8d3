"""What a job reads of its model: the row's inputs, the loaded model, its data sets by role.

Inputs are read in one short session; models and data come from the process's memory (the runtime),
loaded once per process.
"""

from __future__ import annotations

from badnet_prune.db.inputs import ModelInputs, model_inputs
from badnet_prune.db.session import session_scope
from badnet_prune.files.data import open_data_file
from badnet_prune.pipeline.runtime import LoadedData, LoadedModel, ModelKey, Runtime


def read_inputs(runtime: Runtime, model_id: int) -> ModelInputs:
    with session_scope(runtime.engine) as session:
        return model_inputs(session, model_id)


def loaded_model(runtime: Runtime, inputs: ModelInputs) -> LoadedModel:
    key = ModelKey(
        path=inputs.path,
        sha256=inputs.sha256,
        input_scale=inputs.input_scale,
        prune_layer=inputs.prune_layer,
        rank_layer=inputs.rank_layer,
        trust_code=inputs.trust_model_code,
    )
    return runtime.memory.model(key)


def role_data(runtime: Runtime, loaded: LoadedModel, inputs: ModelInputs, role: str) -> dict[str, LoadedData]:
    """The model's data files in one role, by poison name ('' for a clean role)."""
    return {
        name: runtime.memory.data(loaded, ref.path, ref.sha256) for name, ref in inputs.data.get(role, {}).items()
    }


def role_pixels(loaded: LoadedModel, inputs: ModelInputs, role: str) -> dict[str, tuple]:
    """The images and labels of a role's files, by poison name ('' for a clean role): training needs pixels."""
    files = {}
    for name, ref in inputs.data.get(role, {}).items():
        data_file = open_data_file(ref.path, loaded.image_shape, loaded.num_classes, expected_sha256=ref.sha256)
        files[name] = (data_file.read_all(), data_file.labels)
    return files


def set_key(role: str, poison_name: str = "") -> str:
    """The name a labeler knows a data set by: the role, qualified by the poison's name (names hold no ':')."""
    return f"{role}:{poison_name}"
