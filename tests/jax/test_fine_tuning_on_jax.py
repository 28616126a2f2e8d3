"""Fine-tuning on Keras's JAX backend: pruned filters held at exactly zero, seeded and deterministic,
the epoch kept chosen as on TensorFlow, and the same records and weights as a TensorFlow process gives
on the same inputs (both run float32 on a CPU; compared to float32 round-off).

Run by make test's JAX pass (KERAS_BACKEND=jax); tests/test_fine_tuning.py checks TensorFlow's path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from badnet_prune.files.data import open_data_file
from badnet_prune.files.model_io import load_model
from badnet_prune.numerics.fine_tuning import FineTuneResult, FineTuneSettings, fine_tune
from badnet_prune.numerics.tf_setup import keras

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="checks Keras's JAX backend: "
                                "make test runs it with KERAS_BACKEND=jax")

PRUNED = list(range(0, 60, 3))  # 20 of conv_3's 60 filters
SETTINGS = FineTuneSettings(learning_rate=1e-4, epochs=2, seed=4, warmup_epochs=0, erase=0.0)  # training is stable:
# the loss on the whole images falls

# Run as `python -c TENSORFLOW_RUN ROOT OUT.npz`: the same fine_tune on TensorFlow, weights and records saved.
TENSORFLOW_RUN = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np
    from tests.jax.test_fine_tuning_on_jax import SETTINGS, inputs, tuned
    from badnet_prune.numerics.tf_setup import keras

    assert keras.backend.backend() == "tensorflow"
    result = tuned(*inputs(Path(sys.argv[1])), SETTINGS)
    np.savez(sys.argv[2], *result.model.get_weights())
    print(json.dumps([[e.epoch, e.train_loss, e.holdout_correct, e.asr] for e in result.epochs] + [result.kept_epoch]))
    """
)


def inputs(root: Path):
    """B (the quick synthetic BadNet), every third clean validation image and the poisoned validation set."""
    model = load_model(root / "models" / "bd_weights.h5")
    read = {}
    for key, relative in (("clean", "cl/valid.h5"), ("poisoned", "bd/bd_valid.h5")):
        data = open_data_file(root / "data" / relative, (55, 47, 3), 10)
        read[key] = (data.read_all()[::3], data.labels[::3])
    return model, read


def tuned(model: keras.Model, read: dict, settings: FineTuneSettings) -> FineTuneResult:
    return fine_tune(model, "conv_3", PRUNED, *read["clean"], {"sunglasses": read["poisoned"]}, settings)


@pytest.fixture(scope="module")
def badnet(synthetic_badnet: Path):
    return inputs(synthetic_badnet)


@pytest.fixture(scope="module")
def result(badnet) -> FineTuneResult:
    return tuned(*badnet, SETTINGS)


def test_pruned_filters_stay_exactly_zero_the_others_train_and_b_is_untouched(badnet, result):
    model, _ = badnet
    kernel, bias = result.model.get_layer("conv_3").get_weights()
    assert not kernel[..., PRUNED].any() and not bias[PRUNED].any()
    original = model.get_layer("conv_3").get_weights()[0]
    assert original[..., PRUNED].any(), "fine-tuning changed B's own filters"
    kept = np.setdiff1d(np.arange(60), PRUNED)
    assert not np.array_equal(original[..., kept], kernel[..., kept]), "the kept filters did not train"


def test_the_kept_epoch_is_the_last_best_on_hold_out(result):
    assert [r.epoch for r in result.epochs] == list(range(SETTINGS.epochs + 1))
    best = max(r.holdout_correct for r in result.epochs)
    assert result.kept_epoch == max(r.epoch for r in result.epochs if r.holdout_correct == best)
    assert all(np.isfinite(r.train_loss) and set(r.asr) == {"sunglasses"} for r in result.epochs)
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss, "the loss did not fall"


def test_one_seed_trains_identical_weights_twice_and_another_seed_other_weights(badnet, result):
    again = tuned(*badnet, SETTINGS)
    other = tuned(*badnet, SETTINGS.model_copy(update={"seed": 5}))
    for a, b in zip(result.model.get_weights(), again.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [r.train_loss for r in again.epochs] == [r.train_loss for r in result.epochs]
    assert any(not np.array_equal(a, b)
               for a, b in zip(result.model.get_weights(), other.model.get_weights(), strict=True))


def test_tensorflow_fine_tunes_the_same_inputs_to_the_same_records_and_weights(synthetic_badnet, result, tmp_path):
    out = tmp_path / "tensorflow.npz"
    done = subprocess.run([sys.executable, "-c", TENSORFLOW_RUN, str(synthetic_badnet), str(out)],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2],
                          env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert done.returncode == 0, done.stderr[-3000:]
    *records, kept = json.loads(done.stdout.strip().splitlines()[-1])
    assert kept == result.kept_epoch
    for (epoch, loss, correct, asr), mine in zip(records, result.epochs, strict=True):
        assert (epoch, correct) == (mine.epoch, mine.holdout_correct)
        assert loss == pytest.approx(mine.train_loss, rel=1e-4)
        assert asr == pytest.approx(mine.asr, abs=1e-9)
    weights = np.load(out)
    for index, mine in enumerate(result.model.get_weights()):
        np.testing.assert_allclose(weights[f"arr_{index}"], mine, rtol=1e-3, atol=1e-5)


def test_tensorflow_is_never_imported_by_fine_tuning_or_saving_and_loading_models(result, tmp_path):
    result.model.save(tmp_path / "b_fine.keras")
    keras.models.load_model(tmp_path / "b_fine.keras", safe_mode=True)
    assert sys.modules.get("tensorflow") is None  # tf_setup's placeholder: an import would fail
    assert not [name for name, module in sys.modules.items() if name.startswith("tensorflow.") and module]
