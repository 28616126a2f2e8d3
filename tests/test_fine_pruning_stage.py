"""Fine-pruning as a stage of the pipeline, through `defend --fine-tune` on the pruning-aware synthetic BadNet.

One defend run (three epochs, thresholds 2% and 95%: the second is never reached, so its task has
nothing to tune and records that); its files are checked against an independent computation (plain
Keras in a process of its own, filters read from the files), its table, summary.json and the
curve_results view against each other, and a second run of one fine-tune task must rewrite the
same rows. Bad options and [fine_tune] tables are refused in one line.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, make_url, select
from sqlalchemy.schema import CreateSchema, DropSchema

from badnet_prune.db.errors import DatabaseUnavailable
from badnet_prune.db.models import Artifact, CurveAsr, CurvePoint, Evaluation, Model, StageOutcome, Sweep, Task
from badnet_prune.db.query import run_read_only_query
from badnet_prune.db.results import CurvePointRow, save_curve, save_outcome
from badnet_prune.db.session import make_engine, prepare_database, session_scope
from badnet_prune.files.data import open_data_file
from badnet_prune.files.hashing import sha256_file
from badnet_prune.files.model_io import load_model
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.fine_tune_settings import FineTuneSettings
from badnet_prune.numerics.inference import compiled_forward, predict_labels
from badnet_prune.numerics.repair import repaired_labels
from badnet_prune.numerics.tf_setup import keras
from badnet_prune.numerics.thresholds import Threshold
from badnet_prune.pipeline.contract import ModelFacts, PlanContext, SweepPlan
from badnet_prune.pipeline.stages.fine_tune import FINE_TUNE
from tests.helpers import PLAIN_KERAS, cached_pruning_aware_badnet, run_cli

POISON = "sunglasses"
EPOCHS = 3  # short: these tests check what fine-pruning stores and shows, bench/fine_tune_seeds.py how well it repairs
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def cli(*args: str, cache: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """`badnet-prune ARGS` in this process, with its own cache and no broker or database from the environment."""
    env = {**os.environ, "BADNET_PRUNE_CACHE": str(cache), "COLUMNS": "120", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("BADNET_PRUNE_BROKER", None)
    env.pop("BADNET_PRUNE_DB", None)
    return run_cli(*args, env=env, timeout=timeout)


def defend_arguments(root: Path, out: Path, *extra: str) -> list[str]:
    data = root / "data"
    return ["defend", "--model", str(root / "models" / "bd_net.h5"), "--clean-valid", str(data / "cl" / "valid.h5"),
            "--clean-test", str(data / "cl" / "test.h5"),
            "--poisoned", f"{POISON}={data / 'bd' / 'bd_valid.h5'},{data / 'bd' / 'bd_test.h5'}",
            "--thresholds", "0.02,0.95", "--out", str(out), *extra]


@dataclass(frozen=True)
class Tuned:
    root: Path
    out: Path
    cache: Path
    stdout: str
    stderr: str
    summary: dict

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.out / 'badnet-prune.db'}"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Tuned:
    root = cached_pruning_aware_badnet()
    work = tmp_path_factory.mktemp("fine-prune")
    done = cli(*defend_arguments(root, work / "out", "--fine-tune", "--epochs", str(EPOCHS)), cache=work / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((work / "out" / "summary.json").read_text(encoding="utf-8"))
    return Tuned(root, work / "out", work / "cache", done.stdout, done.stderr, summary)


def test_fine_tuning_says_its_progress_in_epochs(tuned: Tuned) -> None:
    """Piped, as here, the watcher names the stage at work with its tasks and epochs done of planned (two
    thresholds, EPOCHS each), so a long fine-tuning is never a silence after 'about 3 s left'."""
    lines = [line for line in tuned.stderr.splitlines() if "fine_tune: fine-tune B'" in line]
    assert lines, tuned.stderr[-3000:]
    assert re.search(rf"\(\d/2, \d+/{2 * EPOCHS} epochs", lines[0]), lines[0]


def test_b_fine_and_g_fine_load_in_plain_keras_and_follow_their_rules(tuned: Tuned, tmp_path: Path) -> None:
    models = tuned.out / "models"
    b_fine, g_fine = models / "B_fine_0.02.keras", models / "G_fine_0.02.keras"
    assert not (models / "B_fine_0.95.keras").exists() and not (models / "G_fine_0.95.keras").exists()
    clean, poisoned = (open_data_file(tuned.root / "data" / p) for p in ("cl/test.h5", "bd/bd_test.h5"))
    images = np.concatenate([clean.read_all(), poisoned.read_all()])
    np.save(tmp_path / "images.npy", images)
    args = [tmp_path / "images.npy", b_fine, tmp_path / "b.npy", g_fine, tmp_path / "g.npy"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", PLAIN_KERAS, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    labels_fine = np.argmax(np.load(tmp_path / "b.npy"), axis=-1)
    labels_g = np.argmax(np.load(tmp_path / "g.npy"), axis=-1)

    provenance = json.loads(b_fine.with_suffix(".json").read_text(encoding="utf-8"))
    summary = {**tuned.summary["thresholds"]["0.02"], "fine_tune": tuned.summary["fine_tune"]["0.02"]}
    pruned = provenance["pruned_channels"]
    assert pruned == tuned.summary["pruning_order"][: summary["step"]] and pruned
    assert provenance["source_sha256"] == sha256_file(tuned.root / "models" / "bd_net.h5")
    assert provenance["fine_tune"]["epochs"] == EPOCHS
    assert provenance["kept_epoch"] == summary["fine_tune"]["kept_epoch"]
    assert provenance["split_sha256"] == summary["fine_tune"]["split_sha256"] and provenance["kind"] == "B_fine"
    kernel, bias = keras.models.load_model(b_fine, safe_mode=True).get_layer("conv_3").get_weights()
    assert not kernel[..., pruned].any() and not bias[pruned].any(), "a pruned filter of B'' is not exactly zero"
    assert kernel[..., [c for c in range(kernel.shape[-1]) if c not in pruned]].any()

    model_b = load_model(tuned.root / "models" / "bd_net.h5")
    labels_b = predict_labels(compiled_forward(model_b), [images])
    classes = int(model_b.output_shape[-1])
    np.testing.assert_array_equal(labels_g, repaired_labels(labels_b, labels_fine, classes))
    # the stored test metrics are those of the files
    count = clean.count
    assert summary["fine_tune"]["B_fine"]["clean_accuracy"] == pytest.approx(
        100.0 * np.mean(labels_fine[:count] == clean.labels))
    assert summary["fine_tune"]["B_fine"][f"asr_{POISON}"] == pytest.approx(
        100.0 * np.mean(labels_fine[count:] == poisoned.labels))
    assert summary["fine_tune"]["G_fine"]["false_alarms"] == pytest.approx(100.0 * np.mean(labels_g[:count] == classes))
    assert summary["fine_tune"]["G_fine"][f"detection_{POISON}"] == pytest.approx(
        100.0 * np.mean(labels_g[count:] == classes))


def test_the_printed_table_and_summary_have_the_fine_pruned_rows(tuned: Tuned) -> None:
    fine = tuned.summary["fine_tune"]["0.02"]
    assert f"B'' 2%, epoch {fine['kept_epoch']}" in tuned.stdout and "G'' 2%" in tuned.stdout
    assert "B'' 95%" not in tuned.stdout and "G'' 95%" not in tuned.stdout
    assert [e["epoch"] for e in fine["epochs"]] == list(range(EPOCHS + 1))
    assert all(set(e) == {"epoch", "train_loss", "holdout_accuracy", f"asr_{POISON}"} for e in fine["epochs"])
    best = max(e["holdout_accuracy"] for e in fine["epochs"])
    assert fine["kept_epoch"] == max(e["epoch"] for e in fine["epochs"] if e["holdout_accuracy"] == best)
    assert fine["settings"] == FineTuneSettings(epochs=EPOCHS).model_dump(mode="json")
    assert set(fine["files"]) == {"B_fine", "G_fine"} and all(Path(p).is_file() for p in fine["files"].values())
    assert fine["B_fine"]["clean_accuracy"] >= 0 and "false_alarms" in fine["G_fine"]
    never, never_tuned = tuned.summary["thresholds"]["0.95"], tuned.summary["fine_tune"]["0.95"]
    assert never["step"] is None and never_tuned["kept_epoch"] is None and never_tuned["files"] == {}


def test_the_curve_results_view_through_the_sql_command(tuned: Tuned) -> None:
    done = cli("sql", "--db", tuned.db_url, "--json",
               "SELECT stage, curve, point, x, dataset, poison, value FROM curve_results "
               "WHERE stage = 'fine_tune' ORDER BY curve, dataset, point", cache=tuned.cache, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout)
    rows = rows["rows"] if isinstance(rows, dict) else rows
    fine = tuned.summary["fine_tune"]["0.02"]
    assert len(rows) == 2 * (EPOCHS + 1), rows  # hold-out and one poison per epoch; 95% tuned nothing
    as_dicts = [row if isinstance(row, dict) else dict(zip(
        ["stage", "curve", "point", "x", "dataset", "poison", "value"], row, strict=True)) for row in rows]
    holdout = [r for r in as_dicts if r["dataset"] == "clean"]
    asr = [r for r in as_dicts if r["dataset"] == POISON]
    assert {r["poison"] for r in holdout} == {None} and {r["poison"] for r in asr} == {POISON}
    assert [r["value"] for r in holdout] == [e["holdout_accuracy"] for e in fine["epochs"]]
    assert [r["value"] for r in asr] == [e[f"asr_{POISON}"] for e in fine["epochs"]]
    assert [r["point"] for r in holdout] == [r["x"] for r in holdout] == list(range(EPOCHS + 1))
    assert {r["curve"] for r in as_dicts} == {"0.02"}
    done = cli("sql", "--db", tuned.db_url, "--json", "SELECT stage, key, score, document FROM "
               "stage_outcome_results WHERE stage = 'fine_tune' ORDER BY key", cache=tuned.cache, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    outcomes = json.loads(done.stdout)
    outcomes = outcomes["rows"] if isinstance(outcomes, dict) else outcomes
    assert [row["key"] if isinstance(row, dict) else row[1] for row in outcomes] == ["0.02", "0.95"]


def test_the_report_draws_the_curves_and_says_what_each_defense_removed(tuned: Tuned, tmp_path: Path) -> None:
    from badnet_prune.orchestrator.report.write import write_report

    engine = make_engine(tuned.db_url)
    write_report(engine, tuned.summary["sweep"], tmp_path / "report", asr_bound=5.0, samples_per_set=0)
    engine.dispose()
    figures = sorted(p.name for p in (tmp_path / "report" / "figures").iterdir())
    assert figures == ["01-bd_net-curve.png", "01-bd_net-fine_tune-0.png"]
    markdown = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    assert "Fine-pruning curves" in markdown and "figures/01-bd_net-fine_tune-0.png" in markdown
    assert "B'' 2%, epoch" in markdown and "G'' 2%" in markdown
    with open(tmp_path / "report" / "csv" / "summary.csv", newline="", encoding="utf-8") as handle:
        rows = {row["threshold"]: row for row in csv.DictReader(handle)}
    fine, b = tuned.summary["fine_tune"]["0.02"], tuned.summary["B"]
    row = rows["0.02"]
    assert float(row["G_fine_clean_accuracy"]) == fine["G_fine"]["clean_accuracy"]
    assert float(row["G_fine_clean_drop"]) == pytest.approx(b["clean_accuracy"] - fine["G_fine"]["clean_accuracy"])
    assert int(row["fine_kept_epoch"]) == fine["kept_epoch"]
    g_fine_asr, g_asr = fine["G_fine"][f"asr_{POISON}"], tuned.summary["thresholds"]["0.02"]["G"][f"asr_{POISON}"]
    for network, asr in (("G", g_asr), ("G_fine", g_fine_asr)):  # each poison removed or kept, by the bound
        assert (row[f"{network}_removed"], row[f"{network}_kept"]) == ((POISON, "") if asr <= 5.0 else ("", POISON))
    assert rows["0.95"]["note"] == "threshold never reached" and rows["0.95"]["fine_kept_epoch"] == ""
    print(f"2%: pruning alone G ASR {g_asr:.2f}%, fine-pruning G'' ASR {g_fine_asr:.2f}% "
          f"(clean cost {float(row['G_fine_clean_drop']):.2f} points)")


def test_the_reports_sample_images_are_labelled_by_g_fine_where_fine_pruning_ran(tuned: Tuned, tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = cli("report", str(tuned.summary["sweep"]), "--out", str(out), "--db", tuned.db_url, "--samples", "2",
           cache=tuned.cache)
    assert done.returncode == 0, done.stderr[-2000:]
    markdown = (out / "report.md").read_text(encoding="utf-8")
    header = next(line for line in markdown.splitlines() if line.startswith("| dataset | index | label | B"))
    # the 95% threshold was never reached: neither G nor G'' exists there
    assert [cell.strip() for cell in header.strip("|").split("|")][3:] == ["B", "G 2%", "G'' 2%"], header
    assert "B and the repaired networks (G 2%, G'' 2%)" in markdown


def table_counts(session) -> dict[str, int]:
    return {table.__tablename__: session.scalar(select(func.count()).select_from(table))
            for table in (StageOutcome, CurvePoint, CurveAsr, Evaluation, Artifact)}


def test_a_fine_tune_task_run_again_rewrites_the_same_rows(tuned: Tuned) -> None:
    from badnet_prune.settings import Settings
    from badnet_prune.worker.dispatch import LocalDispatcher
    from badnet_prune.worker.runtime import install_runtime

    engine = make_engine(tuned.db_url)
    settings = Settings.from_env().with_overrides(db_url=tuned.db_url, broker_url=None, cache_dir=tuned.cache)
    runtime = install_runtime(settings, LocalDispatcher(settings, engine), engine=engine)

    def stored() -> tuple[dict[str, int], list[tuple], list[tuple]]:
        with session_scope(engine) as session:
            epochs = session.execute(select(CurvePoint.curve, CurvePoint.point, CurvePoint.values,
                                            CurvePoint.clean_accuracy).order_by(CurvePoint.point)).all()
            evaluations = session.execute(select(Evaluation.network, Evaluation.threshold, Evaluation.poison_name,
                                                 Evaluation.accuracy, Evaluation.flagged)
                                          .order_by(Evaluation.network, Evaluation.poison_name)).all()
            return table_counts(session), [tuple(r) for r in epochs], [tuple(r) for r in evaluations]

    before = stored()
    with session_scope(engine) as session:
        model_id = session.scalar(select(Model.id))
        config = dict(session.scalar(select(Sweep.config)))
        jobs = [FINE_TUNE.job(task.id, task.sweep_id, model_id, task.arguments, config)
                for task in session.scalars(select(Task).where(Task.stage == "fine_tune").order_by(Task.key))]
        assert [job.arguments.threshold for job in jobs] == ["0.02", "0.95"]
        assert all(FINE_TUNE.stored(session, job) for job in jobs)
    for job in jobs:
        FINE_TUNE.run(runtime, job)
    after = stored()
    assert after[0] == before[0], "a redelivered fine-tune task added rows"
    assert after[1] == before[1] and after[2] == before[2], "the same task on CPU gave other numbers"
    engine.dispose()


def test_without_fine_tune_settings_the_stage_plans_nothing() -> None:
    thresholds = (Threshold("0.02"), Threshold("0.1"))
    assert not FINE_TUNE.enabled({}) and FINE_TUNE.enabled({"fine_tune": {"epochs": 3}})
    settings = FINE_TUNE.sweep_settings({"fine_tune": {"epochs": 3}})
    assert settings is not None and settings.epochs == 3
    context = PlanContext(ModelFacts("m", 60, None), SweepPlan(thresholds, "first", 10, "conv_3", "pool_3"), settings)
    planned = FINE_TUNE.planned(context)
    assert planned == [("0.02", {"threshold": "0.02"}), ("0.1", {"threshold": "0.1"})]
    assert FINE_TUNE.after == ("threshold",)


@pytest.mark.parametrize(("options", "expected"), [
    (["--epochs", "3"], "--epochs: only with --fine-tune"),
    (["--fine-tune", "--learning-rate", "0"], "--learning-rate: Input should be greater than 0"),
    (["--fine-tune", "--optimizer", "rmsprop"], "'--optimizer': 'rmsprop' is not one of 'adam', 'sgd'"),
    (["--fine-tune", "--holdout-fraction", "1"], "--holdout-fraction: Input should be less than 1"),
    (["--fine-tune", "--epochs", "0"], "--epochs: Input should be greater than or equal to 1"),
])
def test_bad_fine_tune_options_are_one_line_and_run_nothing(tmp_path: Path, options: list[str], expected: str) -> None:
    root = cached_pruning_aware_badnet()
    done = cli(*defend_arguments(root, tmp_path / "out", *options), cache=tmp_path / "cache", timeout=120)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("table", "expected"), [
    ({"epoch": 3}, "fine_tune.epoch: unknown key (allowed: batch_size, clip_norm, epochs, erase, holdout_fraction, "
                   "learning_rate, optimizer, schedule, seed, warmup_epochs)"),
    ({"epochs": "10"}, "fine_tune.epochs: expected a valid integer, got '10'"),
    ({"epochs": True}, "fine_tune.epochs: expected a valid integer, got True"),
    ({"learning_rate": -1.0}, "fine_tune.learning_rate: expected greater than 0, got -1.0"),
    ({"optimizer": "rmsprop"}, "fine_tune.optimizer: expected 'adam' or 'sgd', got 'rmsprop'"),
    ("yes", "fine_tune: expected a valid dictionary, got 'yes'"),
])
def test_hostile_fine_tune_tables_are_refused_in_one_line(table: object, expected: str) -> None:
    from badnet_prune.orchestrator.sweep_file import parse_sweep

    model = {"name": "m", "path": "a.h5", "clean_valid": "v.h5", "clean_test": "t.h5"}
    with pytest.raises(BadInputError) as refused:
        parse_sweep({"model": [model], "fine_tune": table}, base=Path("/tmp"), source="s.toml", default_name="s")
    assert str(refused.value) == f"s.toml: {expected}"


def test_a_fine_tune_table_takes_the_defaults_it_does_not_set() -> None:
    from badnet_prune.orchestrator.sweep_file import parse_sweep

    model = {"name": "m", "path": "a.h5", "clean_valid": "v.h5", "clean_test": "t.h5"}
    spec = parse_sweep({"model": [model], "fine_tune": {"epochs": 4}}, base=Path("/tmp"), source="s", default_name="s")
    assert spec.fine_tune is not None and spec.fine_tune.epochs == 4
    assert spec.fine_tune.learning_rate == FineTuneSettings().learning_rate
    assert parse_sweep({"model": [model]}, base=Path("/tmp"), source="s", default_name="s").fine_tune is None


@pytest.fixture
def postgres_schema_url():
    """A fresh schema of its own on the test PostgreSQL (skipped locally when absent, failed under CI=true)."""
    admin = make_engine(POSTGRES_URL)
    try:
        with admin.connect():
            pass
    except DatabaseUnavailable as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL not reachable at {POSTGRES_URL}: {error.reason}")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_URL}: {error.reason}")
    schema = f"test_ft_{uuid.uuid4().hex[:12]}"
    with admin.begin() as connection:
        connection.execute(CreateSchema(schema))
    url = make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with admin.begin() as connection:
        connection.execute(DropSchema(schema, cascade=True))
    admin.dispose()


def test_the_reader_role_reads_curve_results_on_postgresql(postgres_schema_url: str) -> None:
    from badnet_prune.db.repository import add_model, create_sweep

    engine = prepare_database(postgres_schema_url)
    with session_scope(engine) as session:
        sweep_id = create_sweep(session, name="s", config={}, thresholds=["0.02"], policy="first",
                                prune_layer="conv_3", rank_layer="pool_3", range_size=10, artifact_dir="art")
        model_id = add_model(session, sweep_id, name="m", path="m.h5", sha256="x", input_scale=1.0, data=[])
        points = (CurvePointRow(0, 0.0, 90.0, 9, {"train_loss": 0.5}, {POISON: 100.0}),
                  CurvePointRow(1, 1.0, 95.0, 10, {"train_loss": 0.2}, {POISON: 1.0}))
        for _ in range(2):  # again: the same rows
            save_curve(session, model_id, "fine_tune", "0.02", points)
            save_outcome(session, model_id, "fine_tune", "0.02", {"kept_epoch": 1}, score=None)
    _, rows = run_read_only_query(
        postgres_schema_url, "SELECT curve, point, dataset, value FROM curve_results ORDER BY dataset, point",
        timeout_s=10)
    assert [tuple(r) for r in rows] == [("0.02", 0, "clean", 90.0), ("0.02", 1, "clean", 95.0),
                                        ("0.02", 0, POISON, 100.0), ("0.02", 1, POISON, 1.0)]
    _, rows = run_read_only_query(postgres_schema_url, "SELECT stage, key, score FROM stage_outcome_results",
                                  timeout_s=10)
    assert [tuple(r) for r in rows] == [("fine_tune", "0.02", None)]
    engine.dispose()
