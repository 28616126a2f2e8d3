"""The built-in stages; importing this package registers them (each module imports the stages it waits for)."""

from badnet_prune.pipeline.stages import fine_tune, finish, prune_range, rank, threshold

__all__ = ["fine_tune", "finish", "prune_range", "rank", "threshold"]
