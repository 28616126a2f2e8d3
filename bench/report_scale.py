"""Bench: `badnet-prune report` on a large sweep, without samples (issue 19's report point).

The sweep's rows are written straight into a new SQLite database through the db.repository and
db.results writers, as the workers would have stored them: a ranking, 61 pruning steps with an
ASR per poison, a selection per threshold and the test evaluations of B, B'_t and G_t. No
TensorFlow, no model files: the report without samples reads only the database, so this measures
the report itself (reading, drawing the curves, writing the pages). It prints, per size, the time
of write_report (wall, and this process's CPU time, the steadier on a shared machine), the size of
index.html, of the largest model page and of the whole folder, and where Chromium is installed, how
long headless Chromium takes to load index.html (and a blank page, its floor). With --truth, each size
again with ground truth on every model (the report then leads with the leaderboard, issue 26's scale
point), and the ratio of the two.

    .venv/bin/python bench/report_scale.py [--models 150 1000] [--truth] [--work /tmp/badnet-prune-report-scale]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import Engine  # noqa: E402

STEPS = 60  # channels of the pruned layer
THRESHOLDS = ("0.02", "0.04", "0.1")
POISONS = ("sunglasses", "lipstick")
ATTACKS = ("sunglasses", "pruning-aware", "patch", "blended", "multi-trigger")


def synthetic_sweep(engine: Engine, models: int, *, poisons: tuple[str, ...] = POISONS,
                    thresholds: tuple[str, ...] = THRESHOLDS, fine_tune: bool = False, seed: int = 0,
                    names: list[str] | None = None, truth: bool = False) -> int:
    """A finished sweep of `models` models with plausible curves (accuracy falls late, ASR falls at a random
    step); each threshold selects the last step whose validation accuracy is at least acc0 x (1 - t), so two
    thresholds may select the same step. fine_tune adds fine-pruning rows (epoch 0..2, G'' evaluations).
    truth gives every model ground truth (one in six clean, the others spread over ATTACKS), so that the
    report leads with the leaderboard. Returns the sweep's id."""
    from badnet_prune.db.repository import (
        Truth,
        add_model,
        create_sweep,
        set_model_status,
        set_sweep_status,
        upsert_data_file,
    )
    from badnet_prune.db.results import (
        CurvePointRow,
        StepRow,
        save_curve,
        save_evaluation,
        save_outcome,
        save_ranking,
        save_selection,
        save_steps,
    )
    from badnet_prune.db.session import session_scope

    random = np.random.default_rng(seed)
    names = names or [f"model_{index:04d}" for index in range(models)]
    with session_scope(engine) as session:
        sweep_id = create_sweep(session, name="report-scale", config={}, thresholds=thresholds, policy="first",
                                prune_layer="conv_3", rank_layer="pool_3", range_size=STEPS + 1,
                                artifact_dir="/nonexistent/artifacts")
        files = {role: upsert_data_file(session, f"/nonexistent/{role}.h5", f"{index:064x}", 300)
                 for index, role in enumerate(("clean_valid", "clean_test", *poisons))}
        data = [("clean_valid", "", files["clean_valid"]), ("clean_test", "", files["clean_test"])]
        data += [(role, poison, files[poison]) for poison in poisons for role in ("poisoned_valid", "poisoned_test")]
        for index, name in enumerate(names):
            clean = index % 6 == 0
            known = Truth(not clean, "clean" if clean else ATTACKS[index % len(ATTACKS)],
                          {} if clean else dict.fromkeys(poisons, 0)) if truth else None
            model_id = add_model(session, sweep_id, name=name, path=f"/nonexistent/{name}.h5", sha256="0" * 64,
                                 input_scale=1.0, data=data, truth=known)
            acc0 = float(random.uniform(90, 99))
            order = random.permutation(STEPS)
            save_ranking(session, model_id, [(int(c), p, float(STEPS - p) / 10) for p, c in enumerate(order)])
            falls = {poison: int(random.integers(20, STEPS)) for poison in poisons}
            accuracy = [acc0 - (acc0 - 5) * (step / STEPS) ** 6 for step in range(STEPS + 1)]
            save_steps(session, model_id, [
                StepRow(step, None if step == 0 else int(order[step - 1]), step / STEPS, accuracy[step],
                        round(accuracy[step] * 3),
                        {p: (99.0 if step < falls[p] else 2.0, 297 if step < falls[p] else 6) for p in poisons})
                for step in range(STEPS + 1)])
            save_evaluation(session, model_id, network="B", threshold="", role="clean_test", poison_name="",
                            accuracy=acc0, image_count=300)
            for poison in poisons:
                save_evaluation(session, model_id, network="B", threshold="", role="poisoned_test",
                                poison_name=poison, accuracy=99.0, image_count=300)
            for key in thresholds:
                step = max(s for s in range(STEPS + 1) if accuracy[s] >= acc0 * (1 - float(key)))
                save_selection(session, model_id, key, step, accuracy[step])
                for network, shift in (("B_prime", 0.0), ("G", -0.5)):
                    flagged = 100 - accuracy[step] if network == "G" else None
                    save_evaluation(session, model_id, network=network, threshold=key, role="clean_test",
                                    poison_name="", accuracy=accuracy[step] + shift, image_count=300,
                                    flagged=flagged)
                    for poison in poisons:
                        asr = 99.0 if step < falls[poison] else 2.0
                        save_evaluation(session, model_id, network=network, threshold=key, role="poisoned_test",
                                        poison_name=poison, accuracy=asr, image_count=300,
                                        flagged=None if network == "B_prime" else 100 - asr)
                if fine_tune:
                    save_curve(session, model_id, "fine_tune", key, [
                        CurvePointRow(e, float(e), accuracy[step] + e, 100, {"train_loss": 1.0 / (e + 1)},
                                      {p: 90.0 / (e + 1) ** 3 for p in poisons}) for e in range(3)])
                    save_outcome(session, model_id, "fine_tune", key, {
                        "kept_epoch": 2, "settings": {"epochs": 2}, "seed": 0, "split_sha256": "1" * 64,
                        "train_count": 200, "holdout_count": 100})
                    for network in ("B_fine", "G_fine"):
                        save_evaluation(session, model_id, network=network, threshold=key, role="clean_test",
                                        poison_name="", accuracy=accuracy[step] + 1, image_count=300,
                                        flagged=None if network == "B_fine" else 1.0)
                        for poison in poisons:
                            save_evaluation(session, model_id, network=network, threshold=key,
                                            role="poisoned_test", poison_name=poison, accuracy=3.0,
                                            image_count=300, flagged=None if network == "B_fine" else 97.0)
            set_model_status(session, model_id, "done", acc0=acc0, channel_count=STEPS)
        set_sweep_status(session, sweep_id, "done")
    return sweep_id


def measure(work: Path, models: int, truth: bool = False) -> dict[str, float]:
    """Build a sweep of `models` models (with ground truth: truth) and time its report (no samples)."""
    from badnet_prune.db.session import prepare_database
    from badnet_prune.orchestrator.report.write import write_report

    folder = work / f"{models}{'-truth' if truth else ''}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    engine = prepare_database(f"sqlite:///{folder / 'sweep.db'}")
    started = time.perf_counter()
    sweep_id = synthetic_sweep(engine, models, truth=truth)
    built = time.perf_counter() - started
    started, cpu = time.perf_counter(), time.process_time()
    index = write_report(engine, sweep_id, folder / "report", samples_per_set=0)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    engine.dispose()
    total = sum(path.stat().st_size for path in (folder / "report").rglob("*") if path.is_file())
    pages = list((folder / "report" / "models").iterdir())
    result = {"models": models, "truth": truth, "rows_s": built, "report_s": seconds, "report_cpu_s": cpu,
              "index_mb": index.stat().st_size / 1e6,
              "largest_model_page_mb": max(p.stat().st_size for p in pages) / 1e6, "folder_mb": total / 1e6}
    browser = shutil.which("chromium")
    if browser:
        blank = folder / "blank.html"
        blank.write_text("<!DOCTYPE html><title>blank</title>", encoding="utf-8")
        result["chromium_blank_s"] = _load_seconds(browser, blank, folder)
        result["chromium_index_s"] = _load_seconds(browser, index, folder)
    return result


def _load_seconds(browser: str, page: Path, folder: Path) -> float:
    """Wall time of headless Chromium loading `page`, running its scripts and printing its DOM."""
    started = time.perf_counter()
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    f"--user-data-dir={folder / 'chromium-profile'}", "--dump-dom", page.resolve().as_uri()],
                   capture_output=True, check=True, timeout=300)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[150, 1000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/badnet-prune-report-scale"))
    parser.add_argument("--truth", action="store_true", help="also each size with ground truth (the leaderboard "
                        "leads the report), and its ratio to the same size without")
    args = parser.parse_args()
    for models in args.models:
        plain = measure(args.work, models)
        runs = [plain, measure(args.work, models, truth=True)] if args.truth else [plain]
        for result in runs:
            print(" ".join(f"{key}={value:.2f}" if isinstance(value, float) else f"{key}={value}"
                           for key, value in result.items()), flush=True)
        if args.truth:
            cpu, wall = (runs[1][key] / plain[key] for key in ("report_cpu_s", "report_s"))
            print(f"models={models}: with ground truth, the report takes x{cpu:.2f} the CPU and x{wall:.2f} the wall "
                  "time of the same sweep without", flush=True)


if __name__ == "__main__":
    main()
