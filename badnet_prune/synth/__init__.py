"""Synthetic BadNets: face-like images, a sunglasses trigger, a backdoored DeepID and the lab's files.

faces (drawing), dataset (splits), train (the two-stage BadNet training), build (files on disk).
"""

from badnet_prune.synth.build import SynthesisError, SynthSummary, synthesize, train_badnet, write_badnet_files
from badnet_prune.synth.dataset import DEFAULT_CLASSES, QUICK_CLASSES, SynthSizes, make_splits, sizes_for

__all__ = [
    "DEFAULT_CLASSES",
    "QUICK_CLASSES",
    "SynthSizes",
    "SynthSummary",
    "SynthesisError",
    "make_splits",
    "sizes_for",
    "synthesize",
    "train_badnet",
    "write_badnet_files",
]
