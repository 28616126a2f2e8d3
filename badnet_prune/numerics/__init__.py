"""The numerics: arrays and Keras models in, arrays and small dataclasses out.

The floor of the package: nothing here talks to Celery, SQL or the file system, and nothing here
imports a layer above it (files, db, settings, pipeline, worker, orchestrator).
"""
