"""The built-in stages; importing this package registers them (each module imports the stages it waits for).

The registry's order is the import order below: the pruning defense first (rank, prune_range, threshold),
then each further defense and detector, so that tables list networks in that order.
"""

from badnet_prune.pipeline.stages import rank, prune_range, threshold, fine_tune, repair, anp, clp  # noqa: I001
from badnet_prune.pipeline.stages import neural_cleanse, pruning_curve, detection_verdict, finish

__all__ = ["anp", "clp", "detection_verdict", "fine_tune", "finish", "neural_cleanse", "prune_range",
           "pruning_curve", "rank", "repair", "threshold"]
