"""ANP on Keras's JAX backend: the masks a TensorFlow process learns on the same tiny model and draws (both
float32 on a CPU; compared to float32 round-off), seeded and deterministic, masks in [0, 1], TensorFlow never
imported. Run by make test's JAX pass (KERAS_BACKEND=jax); tests/test_anp.py checks TensorFlow's path.
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

from badnet_prune.numerics.anp import AnpSettings, optimise_masks
from badnet_prune.numerics.tf_setup import keras
from tests.test_anp import tiny_data, tiny_model

pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax", reason="checks Keras's JAX backend: "
                                "make test runs it with KERAS_BACKEND=jax")

SETTINGS = AnpSettings(layers=("conv_a", "conv_b"), iterations=4, batch_size=8, mask_learning_rate=0.5, seed=7)

# Run as `python -c TENSORFLOW_RUN`: the same optimisation on TensorFlow, its masks printed as JSON.
TENSORFLOW_RUN = textwrap.dedent(
    """
    import json
    from badnet_prune.numerics.anp import optimise_masks
    from badnet_prune.numerics.tf_setup import keras
    from tests.jax.test_anp_on_jax import SETTINGS
    from tests.test_anp import tiny_data, tiny_model

    assert keras.backend.backend() == "tensorflow"
    result = optimise_masks(tiny_model(), *tiny_data(), SETTINGS)
    print(json.dumps({name: mask.tolist() for name, mask in result.masks.items()}))
    """
)


@pytest.fixture(scope="module")
def result():
    return optimise_masks(tiny_model(), *tiny_data(), SETTINGS)


def test_tensorflow_learns_the_same_masks(result):
    done = subprocess.run([sys.executable, "-c", TENSORFLOW_RUN], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).parents[2], env={**os.environ, "KERAS_BACKEND": "tensorflow"})
    assert done.returncode == 0, done.stderr[-3000:]
    masks = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(masks) == set(result.masks)
    for name, mask in masks.items():
        np.testing.assert_allclose(result.masks[name], mask, rtol=1e-4, atol=1e-5)
    assert any((np.asarray(mask) < 1).any() for mask in masks.values())


def test_one_seed_gives_the_same_masks_twice_in_bounds_without_tensorflow(result):
    again = optimise_masks(tiny_model(), *tiny_data(), SETTINGS)
    for name, mask in result.masks.items():
        np.testing.assert_array_equal(again.masks[name], mask)
        assert ((mask >= 0) & (mask <= 1)).all()
        assert all((np.abs(p) <= np.float32(SETTINGS.epsilon)).all() for p in result.perturbations[name])
    assert sys.modules.get("tensorflow") is None  # tf_setup's placeholder: an import would fail
