"""The pruning defense against BadNets: pure numerics over arrays and Keras models.

Nothing in this package talks to Celery or SQL; worker/ and orchestrator/ wrap it.
"""

__version__ = "0.1.0"

