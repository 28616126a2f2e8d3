"""Real databases for the db tests: a fresh SQLite file, and a fresh schema on the real PostgreSQL.

PostgreSQL tests skip when the server cannot be reached, except on CI (CI=true), where that
is a failure. Each PostgreSQL test gets its own schema (through search_path in the URL), so the
project's migrations run inside it and the schema is dropped afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import Engine, make_url
from sqlalchemy.orm import Session
from sqlalchemy.schema import CreateSchema, DropSchema

from badnet_prune.db.errors import DatabaseUnavailable
from badnet_prune.db.repository import add_model, create_sweep, upsert_data_file
from badnet_prune.db.session import make_engine, prepare_database

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ["sqlite", "postgres"]
REPO_ROOT = Path(__file__).resolve().parents[2]
# Between the set-up and the work of a script run by run_together: say ready, wait for the word.
WAIT_FOR_CUE = '\nimport sys\nprint("ready", flush=True)\nsys.stdin.readline()\n'


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    """An engine on the test server's default schema, used only to make and drop test schemas."""
    engine = make_engine(POSTGRES_URL)
    try:
        with engine.connect():
            pass
    except DatabaseUnavailable as error:
        message = f"PostgreSQL not reachable at {POSTGRES_URL}: {error.reason}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_admin: Engine) -> Iterator[str]:
    """The URL of a new, empty schema of its own on the test server."""
    schema = f"test_db_{uuid.uuid4().hex[:12]}"
    with postgres_admin.begin() as connection:
        connection.execute(CreateSchema(schema))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with postgres_admin.begin() as connection:
        connection.execute(DropSchema(schema, cascade=True))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'badnet-prune.db'}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str:
    """A URL of a fresh, empty database on each backend in turn."""
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A migrated database on each backend in turn."""
    engine = prepare_database(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session whose writes the test commits or inspects; rolled back if left open."""
    with Session(engine, expire_on_commit=False) as session:
        yield session


@pytest.fixture
def sweep_id(session: Session) -> int:
    """A registered sweep with two thresholds, committed."""
    sweep_id = create_sweep(
        session,
        name="lab",
        config={"models": ["bd_net.h5"], "thresholds": [0.02, 0.04]},
        thresholds=["0.02", "0.04"],
        policy="first",
        prune_layer="conv_3",
        rank_layer="pool_3",
        range_size=10,
        artifact_dir="/tmp/artifacts",
    )
    session.commit()
    return sweep_id


@pytest.fixture
def model_id(session: Session, sweep_id: int) -> int:
    """A model of that sweep with clean validation data and one poison, committed."""
    clean = upsert_data_file(session, "/data/cl/valid.h5", "c" * 64, 11547)
    poisoned = upsert_data_file(session, "/data/bd/bd_valid.h5", "b" * 64, 11547)
    model_id = add_model(
        session,
        sweep_id,
        name="bd_net",
        path="/models/bd_net.h5",
        sha256="a" * 64,
        input_scale=1.0,
        data=[("clean_valid", "", clean), ("poisoned_valid", "sunglasses", poisoned)],
    )
    session.commit()
    return model_id


@pytest.fixture
def run_together() -> Callable[[str, str, Sequence[Sequence[str]]], None]:
    """Run Python code in several processes (one per argv list), its work started at one moment.

    Each process runs `setup` (imports: the slow part), waits until all are ready, then runs
    `work`, which reads its arguments from sys.argv; every one must exit 0.
    """

    def run(setup: str, work: str, argvs: Sequence[Sequence[str]]) -> None:
        script = setup + WAIT_FOR_CUE + work
        children = [
            subprocess.Popen(
                [sys.executable, "-c", script, *argv],
                cwd=REPO_ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for argv in argvs
        ]
        try:
            for child in children:
                assert child.stdout is not None and child.stdout.readline() == "ready\n", child.stderr
            for child in children:
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.close()
            for child in children:
                assert child.stderr is not None
                stderr = child.stderr.read()
                assert child.wait(timeout=120) == 0, stderr
        finally:
            for child in children:
                if child.poll() is None:
                    child.kill()
                child.wait()
                for stream in (child.stdout, child.stderr):
                    if stream is not None:
                        stream.close()

    return run


def planned_task(session: Session, sweep_id: int, model_id: int | None, stage: str, key: str,
                 arguments: dict | None = None) -> int:
    """Plan one task (db.tasks.plan_tasks) and return its id."""
    from badnet_prune.db.tasks import plan_tasks, stage_tasks

    plan_tasks(session, sweep_id, model_id, stage, [(key, arguments or {})])
    return next(task.id for task in stage_tasks(session, sweep_id, model_id, stage) if task.key == key)
