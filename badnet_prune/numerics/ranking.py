"""Ranking the prune layer's channels: lowest mean activation on clean validation data first."""

from __future__ import annotations

import numpy as np


def rank_channels(means: np.ndarray) -> np.ndarray:
    """Channel indices by ascending mean; equal means keep index order so every run agrees."""
    return np.argsort(np.asarray(means, dtype=np.float64), kind="stable")
