"""Which input scale a model expects, measured rather than assumed.

A model trained on raw 0..255 pixels (the lab's) and one trained on pixels divided by 255 (the 2020
competition's) take the same files, and fed at the wrong scale either still runs: the numbers are
simply wrong (45% instead of 100%, or a sweep at 0.6% clean accuracy that writes B', G and a report).
The two conventions differ by a factor of 255, so a model is accurate at one and near chance at the
other: B's accuracy on a small sample of clean data at both scales tells which one it expects.

Pure numerics: images and labels in, a ScaleChoice out (no files, no database). The module imports no
TensorFlow (the inference helpers are imported by the function), so that reading a sweep file, which
needs AUTO_INPUT_SCALE and SCALES, never starts it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCALES = (1.0, 255.0)
# A sweep spec's and a model row's input_scale before the rank stage has chosen it ("auto"). No real
# scale is 0 (it would divide by zero), and the NOT NULL column keeps its type on both backends: SQLite
# could make it nullable only by rebuilding the models table, which its cascading foreign keys make unsafe.
AUTO_INPUT_SCALE = 0.0
SAMPLE_SIZE = 512  # the first images of the clean validation file: enough to tell ~100% from ~chance
# B counts as accurate at a scale when it gets at least this share of the way from chance to 100%;
# the two conventions are a factor 255 apart, so the right one is far above chance and the wrong one near it.
ACCURATE_SHARE = 0.2
# A given scale is implausible when the other one is accurate and beats it by this many points:
# far above the sampling noise of 512 images (about 2 points), far below the gap of a wrong scale.
IMPLAUSIBLE_GAP = 10.0


@dataclass(frozen=True)
class ScaleChoice:
    """The scale to use, what it was chosen on, and the one line that says so (a warning starts so)."""

    scale: float
    given: float | None  # None: chosen here (auto)
    accuracy: dict[float, float]  # percent on the sample, per scale in SCALES
    image_count: int
    outside: int  # sample labels outside the model's classes
    warning: bool
    note: str


def scale_text(scale: float) -> str:
    return f"{scale:g}"


def _outside_classes(labels: np.ndarray, num_classes: int, data_name: str) -> str | None:
    """What is wrong with labels outside the model's classes (None if there are none): data of another class
    count than the model's, whose accuracy means nothing."""
    labels = np.asarray(labels).reshape(-1)
    outside = int(np.count_nonzero(labels >= num_classes))
    if not outside:
        return None
    return (f"{outside} of {len(labels)} labels of {data_name} lie outside the model's {num_classes} classes "
            f"(0..{num_classes - 1}; the largest is {int(labels.max())}): the data seem to be of another class "
            f"count than the model")


def choose_input_scale(
    forward, images: np.ndarray, labels: np.ndarray, num_classes: int, given: float | None = None,
    data_name: str = "the clean validation file",
) -> ScaleChoice:
    """B's accuracy on `images` (raw pixels as stored) at both scales, and the scale to use.

    given None (auto): the scale at which B is more accurate (1 on a tie, or where it is accurate at neither:
    the lab's convention). A given scale is kept, with a
    warning naming the other when that one is accurate and the given one implausibly lower. Either way a
    warning says when B is accurate at neither scale, or when labels lie outside its classes: data of
    another class count than the model's (lab weights on another data set score 0% at both scales).
    """
    from badnet_prune.numerics.inference import accuracy_percent, forward_labels, scale_images

    labels = np.asarray(labels).reshape(-1)
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"expected as many labels as images (at least one), got {len(images)} and {len(labels)}")
    if given is not None and given not in SCALES:
        raise ValueError(f"input scale must be 1 or 255, got {given!r}")
    raw = np.asarray(images, dtype=np.float32)
    accuracy = {scale: accuracy_percent(forward_labels(forward, scale_images(raw, scale)), labels) for scale in SCALES}
    better = max(SCALES, key=lambda scale: (accuracy[scale], scale == SCALES[0]))
    other = {SCALES[0]: SCALES[1], SCALES[1]: SCALES[0]}
    count = len(labels)
    chance = 100.0 / num_classes
    floor = chance + ACCURATE_SHARE * (100.0 - chance)
    accurate = accuracy[better] >= floor
    # accurate at neither scale, auto keeps the lab's convention: the accuracies tell nothing then
    scale = given if given is not None else better if accurate else SCALES[0]
    measured = (f"accuracy {accuracy[scale]:.1f}% on the first {count} images of {data_name}; "
                f"{accuracy[other[scale]]:.1f}% at scale {scale_text(other[scale])}")
    how = "" if given is None else " as given"
    problem = _outside_classes(labels, num_classes, data_name)
    if problem is None and not accurate:
        problem = (f"the model is accurate at neither scale (chance is {chance:.1f}%): do the model and the data "
                   f"have the same classes?")
    if problem is None and given not in (None, better) and accuracy[scale] < accuracy[better] - IMPLAUSIBLE_GAP:
        problem = (f"implausibly low next to scale {scale_text(better)}: the model likely expects input scale "
                   f"{scale_text(better)}")
    if problem is None:
        note = f"input scale {scale_text(scale)}{how} ({measured})"
    else:
        note = f"warning: input scale {scale_text(scale)}{how} ({measured}): {problem}"
    return ScaleChoice(scale=scale, given=given, accuracy=accuracy, image_count=count,
                       outside=int(np.count_nonzero(labels >= num_classes)), warning=problem is not None, note=note)
