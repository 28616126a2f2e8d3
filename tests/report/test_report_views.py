"""The SQL views of migration 0002 answer what the db.results readers answer, on SQLite and on
PostgreSQL, and docs/reports-and-sql.md's one-line question runs through `badnet-prune sql`."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from itertools import product
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.pool import NullPool

from badnet_prune.db.repository import list_models
from badnet_prune.db.results import read_evaluations, read_selections, read_steps
from badnet_prune.db.session import make_engine, session_scope
from tests.report.conftest import ReportedSweep, run_cli, run_sweep

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
QUESTION = ("SELECT sweep_id, model, dataset FROM evaluation_results WHERE network = '{network}' AND threshold = {t} "
            "AND dataset <> 'clean' AND accuracy > {bound} ORDER BY model, dataset")


@pytest.fixture(scope="module")
def postgres_sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """The same sweep run on a PostgreSQL database made for this test, dropped afterwards.

    The admin engine opens a connection per use (NullPool): a pooled one would be dead at teardown
    whenever another test process restarted PostgreSQL meanwhile (test_the_watcher_rides_out_a_postgresql_restart).
    """
    admin = create_engine(make_url(POSTGRES_URL), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = f"report_views_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # no server, no such role...: the same verdict
        admin.dispose()
        reason = f"PostgreSQL not reachable at {POSTGRES_URL}: {str(error).splitlines()[0]}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: CI must provide it)")
        pytest.skip(reason)
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        sweep_id, _ = run_sweep(tmp_path_factory.mktemp("postgres"), url)
        yield url, sweep_id
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Iterator[tuple[Engine, int]]:
    if request.param == "sqlite":
        reported: ReportedSweep = request.getfixturevalue("reported")
        url, sweep_id = reported.db_url, reported.sweep_id
    else:
        url, sweep_id = request.getfixturevalue("postgres_sweep")
    engine = make_engine(url)
    yield engine, sweep_id
    engine.dispose()


def _dataset(evaluation) -> str:
    return "clean" if evaluation.role == "clean_test" else evaluation.poison_name


def _value(key: str) -> float:
    return float(key) if key else 0.0


def _rows(engine: Engine, sql: str, **params) -> list[tuple]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(text(sql), params)]


def test_views_hold_what_the_readers_read(database: tuple[Engine, int]) -> None:
    engine, sweep_id = database
    with session_scope(engine) as session:
        models = list_models(session, sweep_id)
        steps = read_steps(session, sweep_id)
        evaluations = [(m.name, e) for m in models for e in read_evaluations(session, m.id)]
        selections = [(m, s) for m in models for s in read_selections(session, m.id)]
    assert _rows(engine, "SELECT model, step, channel, fraction_pruned, clean_accuracy, poison, asr FROM step_results "
                 "WHERE sweep_id = :s ORDER BY model_id, step, poison", s=sweep_id) == [
        (s.model, s.step, s.channel, s.fraction_pruned, s.clean_accuracy, poison, rate)
        for s in steps for poison, rate in sorted(s.asr.items())]
    fractions = {(s.model, s.step): s.fraction_pruned for s in steps}
    assert _rows(engine, "SELECT model, threshold, step, fraction_pruned, clean_valid_accuracy, acc0 "
                 "FROM selection_results WHERE sweep_id = :s ORDER BY model_id, threshold", s=sweep_id) == [
        (m.name, _value(s.threshold), s.step, fractions.get((m.name, s.step)), s.clean_valid_accuracy, m.acc0)
        for m, s in selections]
    assert _rows(engine, "SELECT threshold_key FROM selection_results WHERE sweep_id = :s ORDER BY model_id, "
                 "threshold", s=sweep_id) == [(s.threshold,) for _, s in selections]
    assert _rows(engine, "SELECT model, network, threshold, dataset, accuracy, flagged, image_count "
                 "FROM evaluation_results WHERE sweep_id = :s ORDER BY model_id, network, threshold, dataset",
                 s=sweep_id) == [(name, e.network, _value(e.threshold), _dataset(e), e.accuracy, e.flagged,
                                  e.image_count) for name, e in evaluations]
    answered = 0
    for network, t, bound in product(("G", "B_prime"), {s.threshold for _, s in selections}, (0, 10, 50)):
        answer = _rows(engine, QUESTION.format(network=network, t=t, bound=bound))
        assert answer == sorted(
            (sweep_id, name, e.poison_name) for name, e in evaluations
            if e.network == network and e.threshold == t and e.role == "poisoned_test" and e.accuracy > bound
        ), (network, t, bound)
        answered += len(answer)
    assert answered > 0, "the sweep should give the question some models to find"


def test_the_readme_question_runs_through_the_sql_command(reported: ReportedSweep, engine: Engine) -> None:
    question = QUESTION.format(network="G", t="0.04", bound=50)
    printed = run_cli("sql", question, "--csv", "--db", reported.db_url, env=reported.env)
    assert printed.splitlines() == ["sweep_id,model,dataset"] + [",".join(map(str, row))
                                                                 for row in _rows(engine, question)]


def test_downgrading_drops_the_views_and_upgrading_restores_them(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect

    from badnet_prune.db.session import ALEMBIC_INI, prepare_database

    url = f"sqlite:///{tmp_path / 'views.db'}"
    views = {"step_results", "selection_results", "evaluation_results", "curve_results",
             "stage_outcome_results", "defense_outcomes", "model_verdicts"}  # 0002, 0007, 0010 and 0011
    engine = prepare_database(url)
    assert set(inspect(engine).get_view_names()) == views
    config = Config(str(ALEMBIC_INI))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0001")
    assert inspect(engine).get_view_names() == []
    engine.dispose()
    engine = prepare_database(url)
    assert set(inspect(engine).get_view_names()) == views
    engine.dispose()
