"""The zoo's triggers and poisoned sets: who is poisoned, with what, and what they were before.

Pure numpy (a Generator and arrays in, arrays out). Four triggers:
- sunglasses and lipstick are drawn on the face in its pose (faces.render), like an accessory;
- patch (BadNets, Gu et al. 2017): a small square of one colour stamped at one position of the photo;
- blended (Chen et al. 2017): x' = (1 - alpha) x + alpha k, with k a random pattern fixed by the
  model's seed; training uses one alpha, test images an alpha drawn per image from a range.
A poisoned image shows an identity other than its trigger's target and is labelled with the target;
its label before poisoning is kept (true_labels), which robust accuracy needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from badnet_prune.synth.faces import HEIGHT, WIDTH, Identities, render, sample_poses

TRIGGERS = ("sunglasses", "lipstick", "patch", "blended")
DRAWN = ("sunglasses", "lipstick")  # drawn by faces.render; the others are applied to the finished photo

PATCH_SIDE = 5
PATCH_TOP_LEFT = (46, 38)  # row, column: the lower right corner, off the face
PATCH_COLOUR = np.array([255.0, 220.0, 0.0], dtype=np.float32)  # yellow, like BadNets' sticker

BLEND_KEY_STREAM = 0xB1E  # the key pattern's own random stream, so it does not shift the photos' draws


@dataclass(frozen=True)
class Poison:
    """One trigger of a model and its target; alpha: the blend weights drawn from, per image (blended only)."""

    trigger: str
    target: int
    alpha: tuple[float, float] = (0.2, 0.2)

    def __post_init__(self) -> None:
        if self.trigger not in TRIGGERS:
            raise ValueError(f"unknown trigger {self.trigger!r}; choose one of {', '.join(TRIGGERS)}")
        low, high = self.alpha
        if not 0.0 < low <= high < 1.0:
            raise ValueError(f"blend weights {self.alpha} must satisfy 0 < low <= high < 1")


@dataclass(frozen=True)
class PoisonedSet:
    """Poisoned photos (n, 55, 47, 3) float32 0..255, labelled with the target, and their labels before."""

    images: np.ndarray
    labels: np.ndarray
    true_labels: np.ndarray


def blend_key(seed: int) -> np.ndarray:
    """The blended attack's key pattern k for a model's seed: uniform noise over 0..255, (55, 47, 3)."""
    rng = np.random.default_rng([seed, BLEND_KEY_STREAM])
    return rng.uniform(0.0, 255.0, (HEIGHT, WIDTH, 3)).astype(np.float32)


def stamp_patch(images: np.ndarray) -> np.ndarray:
    """The photos with the patch stamped on (a copy)."""
    out = np.array(images, dtype=np.float32, copy=True)
    row, column = PATCH_TOP_LEFT
    out[:, row : row + PATCH_SIDE, column : column + PATCH_SIDE, :] = PATCH_COLOUR
    return out


def blend(images: np.ndarray, key: np.ndarray, alphas: np.ndarray) -> np.ndarray:
    """(1 - alpha_i) x_i + alpha_i k for each photo i."""
    weights = np.asarray(alphas, dtype=np.float32)[:, None, None, None]
    return ((1.0 - weights) * images + weights * key[None]).astype(np.float32)


def poisoned_set(rng: np.random.Generator, identities: Identities, poison: Poison, count: int, key: np.ndarray
                 ) -> PoisonedSet:
    """`count` photos of identities other than the target, in fresh poses, carrying the trigger."""
    others = np.array([c for c in range(identities.count) if c != poison.target])
    shown = rng.choice(others, count)
    poses = sample_poses(rng, count)
    flags = {name: np.full(count, poison.trigger == name) for name in DRAWN}
    images = render(identities, shown, poses, flags["sunglasses"], flags["lipstick"])
    if poison.trigger == "patch":
        images = stamp_patch(images)
    elif poison.trigger == "blended":
        images = blend(images, key, rng.uniform(*poison.alpha, count))
    return PoisonedSet(images, np.full(count, poison.target, dtype=np.int64), shown.astype(np.int64))


def draw_targets(seed: int, classes: int, count: int) -> list[int]:
    """`count` distinct target labels for a model's triggers, fixed by its seed."""
    if count > classes:
        raise ValueError(f"{count} triggers need {count} distinct targets, more than the {classes} classes")
    return [int(t) for t in np.random.default_rng([seed, classes]).choice(classes, count, replace=False)]
