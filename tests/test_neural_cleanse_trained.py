"""Neural Cleanse on trained quick zoo models (seed 0, every one of the 10 labels, 300 steps on 200 clean
validation images): the patch BadNet's target is flagged, and no label of the clean model is.

Measured here (bench/RESULTS.md, "Neural Cleanse"): patch model, target 2 flagged alone (norm 6.6, anomaly
index 2.71; the other labels 12-41); clean model, largest index below the median 1.06, nothing flagged.
Not tested because it does not hold: on the default quick synthetic BadNet (sunglasses trigger,
tests/helpers.cached_quick_badnet) the target's reversed norm sits among the others' (35 of 28-62 at 300
steps, 29 of 23-49 at 500) and its mask does not lie on the sunglasses, so Neural Cleanse does not flag it;
the trigger is large and drawn in the face's pose, where the paper's method is known to be weak.
"""

from __future__ import annotations

import numpy as np
import pytest

from badnet_prune.files.data import open_data_file
from badnet_prune.files.model_io import load_model
from badnet_prune.numerics.neural_cleanse import anomaly, reverse_engineer
from badnet_prune.numerics.neural_cleanse_settings import NeuralCleanseSettings
from tests.helpers import SYNTH_CACHE

pytestmark = pytest.mark.slow  # two models, 10 labels, 300 steps each: minutes on 2 cores
SETTINGS = NeuralCleanseSettings(steps=300, image_count=200, batch_size=32, label_range=10)


def _reversed(attack: str):
    from badnet_prune.synth.zoo import cached_model, default_settings

    folder = SYNTH_CACHE / f"zoo-{attack}-0-for-neural-cleanse"
    record, _ = cached_model(attack, 0, default_settings(quick=True), SYNTH_CACHE / "zoo", folder)
    model = load_model(folder / record.weights)
    images = open_data_file(folder / record.clean_valid).read_all()[: SETTINGS.image_count].astype(np.float32)
    classes = int(model.output_shape[-1])
    return record, reverse_engineer(model, images, range(classes), SETTINGS)


@pytest.mark.parametrize("attack", ["patch", "clean"])
def test_a_patch_backdoors_target_is_flagged_and_a_clean_models_labels_are_not(attack: str):
    record, result = _reversed(attack)
    found = anomaly(result.norms)
    if record.backdoored:
        (trigger,) = record.triggers
        # the target flagged and the smallest trigger (on this machine it is flagged alone; a model trained on
        # another CPU differs in its last bits, so the test holds to what Neural Cleanse must find)
        assert trigger.target in found.flagged, (result.norms, found.index)
        assert int(np.argmin(result.norms)) == trigger.target and found.score > 0.5
    else:
        assert found.flagged == (), (result.norms, found.index)
        assert found.score < 0.5
    assert (result.attack_success >= 0.9).all()
