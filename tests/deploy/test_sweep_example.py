"""deploy/sweeps/csaw-hackml-2020.toml: the four CSAW-HackML-2020 BadNets, read from the /data mount."""

from __future__ import annotations

from pathlib import PurePosixPath

from badnet_prune.orchestrator.sweep_file import read_sweep_file


def test_csaw_sweep_names_the_four_models_under_data(repo):
    sweep = read_sweep_file(repo / "deploy" / "sweeps" / "csaw-hackml-2020.toml")

    assert ([t.key for t in sweep.thresholds], sweep.policy) == (["0.02", "0.04", "0.1"], "first")
    assert (sweep.prune_layer, sweep.rank_layer) == ("conv_3", "pool_3")
    models = {model.name: model for model in sweep.models}
    assert models.keys() == {"sunglasses", "anonymous_1", "anonymous_2", "multi_trigger_multi_target"}
    triggers = {name: {poisoned.name for poisoned in model.poisoned} for name, model in models.items()}
    assert triggers["multi_trigger_multi_target"] == {"eyebrows", "lipstick", "sunglasses"}
    assert triggers["anonymous_2"] == set(), "the competition gives no poisoned data for it"

    for model in models.values():
        assert model.input_scale == 255
        paths = [model.path, model.clean_valid, model.clean_test]
        paths += [path for poisoned in model.poisoned for path in (poisoned.valid, poisoned.test)]
        for path in map(PurePosixPath, paths):
            assert path.is_relative_to("/data") and path.suffix == ".h5", path
