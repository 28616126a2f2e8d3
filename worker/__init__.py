"""Celery tasks and what they need in a worker process: the numerics run here, results go to SQL."""
