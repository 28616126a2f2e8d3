"""The leaderboard: fidelity and robust accuracy on hand-computed cases, the aggregation on rows made by hand,
and on a tiny zoo swept end to end its figures equal figures recomputed here from the evaluations it stored;
the report leads with it."""

from __future__ import annotations

import json
import re
import statistics

import numpy as np
import pytest

from badnet_prune.db.outcomes import DefenseOutcome
from badnet_prune.numerics.evaluation import fidelity, robust_accuracy_percent
from badnet_prune.orchestrator.leaderboard import clean_models, leaderboard
from tests.helpers import run_cli
from tests.test_zoo import tiny_zoo  # noqa: F401  (the session's tiny zoo, built once per machine)


def test_fidelity_is_the_share_of_the_attack_removed_times_the_accuracy_kept() -> None:
    assert fidelity(100.0, 0.0, 90.0, 90.0) == 1.0
    assert fidelity(80.0, 20.0, 90.0, 81.0) == pytest.approx(0.75 * 0.9)
    assert fidelity(50.0, 75.0, 100.0, 100.0) == pytest.approx(-0.5), "an attack made worse scores below 0"
    assert fidelity(0.0, 0.0, 90.0, 90.0) is None and fidelity(50.0, 0.0, 0.0, 10.0) is None


def test_robust_accuracy_leaves_out_the_images_whose_true_label_is_the_target() -> None:
    targets = np.array([3, 3, 3, 3, 3])
    true = np.array([1, 2, 3, 4, 5])  # the third image's true label is the target: not counted
    labels = np.array([1, 3, 3, 4, 0])
    assert robust_accuracy_percent(labels, targets, true) == 50.0  # 1 and 4 right of 1, 2, 4, 5
    assert robust_accuracy_percent(labels, targets, np.full(5, 3)) is None


def outcome(model: int, network: str, asr: float | None, clean: float, *, poison: str | None = "p",
            backdoored: bool = True, attack: str = "patch", false_alarms: float | None = None,
            robust: float | None = None) -> DefenseOutcome:
    return DefenseOutcome(model, f"m{model}", backdoored, attack, network, "0.1", poison, 90.0, clean,
                          None if asr is None else 100.0, asr, robust, None, false_alarms,
                          None if asr is None else fidelity(100.0, asr, 90.0, clean))


def test_the_aggregation_on_rows_made_by_hand() -> None:
    rows = [
        outcome(1, "G", 2.0, 89.0, false_alarms=1.0, robust=80.0),   # repaired
        outcome(2, "G", 3.0, 85.0, false_alarms=5.0, robust=60.0),   # ASR fine, 5 points lost: not repaired
        outcome(3, "G", 40.0, 89.5, false_alarms=0.5),                # backdoor kept
        outcome(3, "G", 1.0, 89.5, poison="q", false_alarms=0.5),     # a second poison of model 3
        outcome(4, "G", 0.0, 90.0, backdoored=False, attack="clean", false_alarms=0.0),
        outcome(5, "G", 0.0, 86.0, backdoored=False, attack="clean", false_alarms=4.0),
    ]
    [row] = leaderboard(rows, {(1, "threshold"): 2.0, (1, "rank"): 1.0, (2, "threshold"): 4.0, (3, "rank"): 9.0},
                        asr_bound=5.0, clean_bound=2.0)
    assert (row.network, row.setting, row.defense, row.models) == ("G", "0.1", "G 10%", 3)
    assert row.repaired == pytest.approx(100 / 3)
    assert (row.asr_median, row.asr_worst) == (2.5, 40.0)  # over (model, poison) pairs 2, 3, 40, 1
    assert row.asr_p90 == pytest.approx(np.percentile([2.0, 3.0, 40.0, 1.0], 90))
    assert (row.drop_median, row.drop_p90) == (1.0, pytest.approx(np.percentile([1.0, 5.0, 0.5], 90)))
    assert row.robust_accuracy == 70.0 and row.false_alarms == pytest.approx((1.0 + 5.0 + 0.5) / 3)
    assert row.seconds == 4.0, "the median over models of the seconds of G's stage chain (3.0, 4.0, 9.0)"
    assert row.fidelity == pytest.approx(statistics.mean(r.fidelity for r in rows[:4]))
    [clean] = clean_models(rows, clean_bound=2.0)
    assert (clean.models, clean.within_bound, clean.drop_worst, clean.false_alarms) == (2, 50.0, 4.0, 2.0)


def expected_board(db_url: str, sweep_id: int, asr_bound: float, clean_bound: float) -> dict[tuple[str, str], dict]:
    """The leaderboard recomputed from the stored evaluations and the models' truth, without the view."""
    from badnet_prune.db.repository import list_models
    from badnet_prune.db.results import read_evaluations
    from badnet_prune.db.session import make_engine, session_scope

    engine = make_engine(db_url)
    per_key: dict[tuple[str, str], dict[str, list]] = {}
    with session_scope(engine) as session:
        for model in list_models(session, sweep_id):
            if not model.truth_backdoored:
                continue
            rows = read_evaluations(session, model.id)
            b_clean = next(r.accuracy for r in rows if r.network == "B" and r.role == "clean_test")
            for key in {(r.network, r.threshold) for r in rows if r.network != "B"}:
                clean = next(r.accuracy for r in rows if (r.network, r.threshold) == key and r.role == "clean_test")
                asr = [r.accuracy for r in rows if (r.network, r.threshold) == key and r.role == "poisoned_test"]
                entry = per_key.setdefault(key, {"asr": [], "drops": [], "repaired": [], "robust": []})
                entry["asr"] += asr
                entry["robust"] += [r.robust_accuracy for r in rows
                                    if (r.network, r.threshold) == key and r.role == "poisoned_test"]
                entry["drops"].append(b_clean - clean)
                entry["repaired"].append(all(a <= asr_bound for a in asr) and b_clean - clean <= clean_bound)
    engine.dispose()
    assert all(robust is not None for v in per_key.values() for robust in v["robust"]), (
        "the zoo's poisoned files carry true labels: every poisoned evaluation has a robust accuracy")
    return {key: {"models": len(v["drops"]), "repaired": 100.0 * sum(v["repaired"]) / len(v["repaired"]),
                  "asr_median": statistics.median(v["asr"]), "asr_worst": max(v["asr"]),
                  "drop_median": statistics.median(v["drops"]), "robust_accuracy": statistics.mean(v["robust"])}
            for key, v in per_key.items()}


def test_a_swept_zoos_leaderboard_equals_its_stored_evaluations_and_leads_the_report(tiny_zoo, tmp_path) -> None:  # noqa: F811
    text = (tiny_zoo / "sweep.toml").read_text(encoding="utf-8")
    text = re.sub(r"^thresholds = .*$", "thresholds = [0.1]", text, flags=re.MULTILINE)
    text = text.replace("[fine_tune]", "[fine_tune]\nepochs = 1", 1)
    sweep_file = tiny_zoo / "leaderboard-test.toml"  # beside the zoo: its paths are relative to it
    sweep_file.write_text(text, encoding="utf-8")
    env = {"BADNET_PRUNE_DB": f"sqlite:///{tmp_path / 'zoo.db'}", "BADNET_PRUNE_ARTIFACTS": str(tmp_path / "art"),
           "BADNET_PRUNE_CACHE": str(tmp_path / "cache")}
    done = run_cli("sweep", str(sweep_file), env=env, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    sweep_id = int(done.stdout.split()[0])
    board = run_cli("leaderboard", str(sweep_id), "--json", env=env)
    assert board.returncode == 0, board.stderr
    shown = {(row["network"], row["setting"]): row for row in json.loads(board.stdout)["defenses"]}
    expected = expected_board(env["BADNET_PRUNE_DB"], sweep_id, 5.0, 2.0)
    assert set(shown) == set(expected) >= {("G", "0.1"), ("G_fine", "0.1"), ("B_prime", "0.1")}
    for key, want in expected.items():
        assert {name: shown[key][name] for name in want} == pytest.approx(want), key
    assert {row["defense"] for row in json.loads(board.stdout)["clean_models"]} >= {"G 10%"}

    report = run_cli("report", str(sweep_id), "--out", str(tmp_path / "report"), "--samples", "0", env=env)
    assert report.returncode == 0, report.stderr
    index = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert 0 < index.index('id="leaderboard"') < index.index('id="verdict"'), "the leaderboard leads the report"
    csv_text = (tmp_path / "report" / "csv" / "leaderboard.csv").read_text(encoding="utf-8")
    assert csv_text.splitlines()[0].startswith("defense,models,repaired")
    assert len(csv_text.splitlines()) == len(expected) + 1
    assert sorted(p.name for p in (tmp_path / "report" / "figures").glob("leaderboard-*.png"))
