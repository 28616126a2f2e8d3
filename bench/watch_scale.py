"""How `sweep --wait` scales: its first frame and each redraw for a sweep of many models.

Builds a sweep of N models with the tasks a real one plans (rank, 7 prune ranges, 3 thresholds
each, and the sweep's finish) straight in a database, a third of the models done, a few running
and failed, then times the watcher's first frame and its redraws on a terminal-like console, and
the CPU a watch costs at its polling interval. Without TensorFlow: the watcher never loads it.

    .venv/bin/python bench/watch_scale.py --models 1000 [--db postgresql+psycopg://postgres@127.0.0.1/bench]
"""

from __future__ import annotations

import argparse
import io
import resource
import tempfile
import time
from pathlib import Path

from rich.console import Console
from sqlalchemy import update

from badnet_prune.db.models import Model, Task
from badnet_prune.db.repository import add_model, create_sweep
from badnet_prune.db.session import create_database_if_missing, prepare_database, session_scope
from badnet_prune.db.tasks import plan_tasks
from badnet_prune.numerics.thresholds import parse_thresholds
from badnet_prune.orchestrator.watch import POLL_SECONDS, _View
from badnet_prune.pipeline.contract import ModelFacts, PlanContext, Scope, SweepPlan, stages


def build(url: str, models: int) -> tuple[object, int]:
    create_database_if_missing(url)
    engine = prepare_database(url)
    plan = SweepPlan(parse_thresholds([0.02, 0.04, 0.1]), "first", 10, "conv_3", "pool_3")
    context = PlanContext(ModelFacts("m", 60, None), plan)
    started = time.perf_counter()
    with session_scope(engine) as session:
        sweep_id = create_sweep(session, name="scale", config={}, thresholds=["0.02", "0.04", "0.1"], policy="first",
                                prune_layer="conv_3", rank_layer="pool_3", range_size=10, artifact_dir="a")
        for index in range(models):
            model_id = add_model(session, sweep_id, name=f"m{index}", path="p", sha256="s", input_scale=1.0, data=[])
            for stage in (stage for stage in stages(Scope.MODEL) if stage.settings is None):
                plan_tasks(session, sweep_id, model_id, stage.name, stage.planned(context))
        for stage in stages(Scope.SWEEP):
            plan_tasks(session, sweep_id, None, stage.name, stage.planned(PlanContext(None, plan)))
    with session_scope(engine) as session:
        third = models // 3
        session.execute(update(Task).where(Task.model_id <= third).values(state="done"))
        session.execute(update(Model).where(Model.id <= third).values(status="done"))
        session.execute(update(Model).where(Model.id.between(third + 1, third + 8)).values(status="running"))
        session.execute(update(Task).where(Task.model_id.between(third + 1, third + 8), Task.stage == "rank")
                        .values(state="running"))
        session.execute(update(Model).where(Model.id.between(third + 9, third + 12)).values(status="failed",
                                                                                           error="a bad file"))
    print(f"planned {models} models ({models * 11 + 1} tasks) in {time.perf_counter() - started:.2f} s")
    return engine, sweep_id


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--db", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--redraws", type=int, default=20)
    arguments = parser.parse_args()
    url = arguments.db or f"sqlite:///{Path(tempfile.mkdtemp()) / 'watch.db'}"
    engine, sweep_id = build(url, arguments.models)
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    view = _View(console, sweep_id)
    with view:
        started = time.perf_counter()
        view.refresh(engine, force=True)
        first = time.perf_counter() - started
        cpu_before, started = cpu_seconds(), time.perf_counter()
        for _ in range(arguments.redraws):
            view.refresh(engine, force=True)
        redraw = (time.perf_counter() - started) / arguments.redraws
        cpu = (cpu_seconds() - cpu_before) / arguments.redraws
    share = cpu / (POLL_SECONDS + redraw)
    print(f"{arguments.models} models: first frame {first * 1000:.0f} ms, each redraw {redraw * 1000:.1f} ms "
          f"({cpu * 1000:.1f} ms CPU); polling every {POLL_SECONDS} s the watcher uses {share:.1%} of a core")


if __name__ == "__main__":
    main()
