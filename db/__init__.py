"""Storage of sweeps and their results: schema, engines and sessions, migrations, repository.

Workers write through db.repository and db.results, the orchestrator registers sweeps there,
reports read there; nothing outside this package writes SQL. Engines are made from a URL by
db.session.make_engine (SQLite file or PostgreSQL), never at import time.
"""
