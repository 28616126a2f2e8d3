"""The pipeline of a sweep, declared once: stages on one contract (pipeline.contract).

The built-in stages are in pipeline/stages/: rank -> prune_range (one task per channel range)
-> threshold (one task per threshold) -> finish (one per sweep, once every model has ended).
"""
