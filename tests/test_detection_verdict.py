"""The combined verdict: the rule's numerics on hand-computed cases, `fit-verdict` on a sweep's stored detector
scores (the rule stored by name, its hostile inputs refused in one line), and the detection_verdict stage in a
defense: its probability is the stored rule's on the model's own detector scores, it shows in summary.json,
status and the view model_verdicts, and a model the rule was fitted on is refused."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select, text

from badnet_prune.db.models import VerdictRuleRow
from badnet_prune.db.repository import Truth, add_model, create_sweep
from badnet_prune.db.results import save_outcome
from badnet_prune.db.session import prepare_database, session_scope
from badnet_prune.db.verdict_rules import read_rule, save_rule, sweep_verdicts
from badnet_prune.numerics.detection_metrics import roc_auc
from badnet_prune.numerics.errors import BadInputError
from badnet_prune.numerics.verdict_rule import VerdictRule, fit_verdict_rule
from badnet_prune.orchestrator.stage_options import stage_tables
from tests.helpers import cached_quick_badnet, run_cli

HAND_RULE = VerdictRule(detectors=("clp_statistic", "pruning_curve"), weights=(2.0, -1.0), bias=0.5,
                        means=(0.5, 0.5), scales=(0.25, 0.5))


def test_the_rules_probability_is_the_logistic_of_its_standardised_scores() -> None:
    probability = HAND_RULE.probability({"clp_statistic": 0.75, "pruning_curve": 1.0})
    assert probability == pytest.approx(1 / (1 + math.exp(-(0.5 + 2.0 * 1.0 - 1.0 * 1.0))))
    far = HAND_RULE.probability({"clp_statistic": -400.0, "pruning_curve": 0.5})
    assert 0.0 <= far < 1e-300, "a large negative logit underflows to 0, never an overflow error"
    with pytest.raises(BadInputError, match="needs the scores of pruning_curve"):
        HAND_RULE.probability({"clp_statistic": 0.5})


def test_a_fitted_rule_separates_what_its_scores_separate_and_is_deterministic() -> None:
    rng = np.random.default_rng(7)
    backdoored = np.array([True] * 12 + [False] * 6)
    informative = np.where(backdoored, 0.7, 0.3) + rng.normal(0.0, 0.05, len(backdoored))
    noise = rng.uniform(0.0, 1.0, len(backdoored))
    scores = np.column_stack([informative, noise])
    rule = fit_verdict_rule(scores, backdoored, ["informative", "noise"])
    again = fit_verdict_rule(scores, backdoored, ["informative", "noise"])
    assert rule == again
    probabilities = [rule.probability({"informative": a, "noise": b}) for a, b in scores]
    assert roc_auc(np.array(probabilities), backdoored) == 1.0
    assert abs(rule.weights[0]) > 3 * abs(rule.weights[1]), rule
    assert all((p >= 0.5) == truth for p, truth in zip(probabilities, backdoored, strict=True))


def test_a_rule_is_refused_without_both_kinds_of_model() -> None:
    with pytest.raises(BadInputError, match="needs clean and backdoored models"):
        fit_verdict_rule(np.full((4, 1), 0.5), [True] * 4, ["clp_statistic"])
    with pytest.raises(BadInputError, match="do not match"):
        fit_verdict_rule(np.full((4, 2), 0.5), [True, False, True, False], ["clp_statistic"])


def test_the_rule_setting_is_a_name_and_required() -> None:
    with pytest.raises(BadInputError, match=r"--detection-verdict-rule.*not a name"):
        stage_tables({"detection_verdict": True, "detection_verdict__rule": "../rules/x"})
    with pytest.raises(BadInputError, match="--detection-verdict-rule: Field required"):
        stage_tables({"detection_verdict": True})


def test_a_rule_name_is_stored_once_and_the_second_is_refused_by_the_primary_key(tmp_path: Path) -> None:
    engine = prepare_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with session_scope(engine) as session:
        save_rule(session, "once", HAND_RULE, fitted_sweep_id=1, fitted_models=[], backdoored_models=1,
                  clean_models=1)
    with pytest.raises(BadInputError, match="a verdict rule named 'once' exists"), session_scope(engine) as session:
        save_rule(session, "once", HAND_RULE, fitted_sweep_id=2, fitted_models=[], backdoored_models=1,
                  clean_models=1)
    with session_scope(engine) as session:
        stored = read_rule(session, "once")
    engine.dispose()
    assert stored is not None and stored.fitted_sweep_id == 1 and stored.rule == HAND_RULE, "the first is kept"


@pytest.mark.parametrize("edit", [
    {"detector_settings": "abc"},
    {"detector_settings": [1, 2]},
    {"detector_settings": {"neural_cleanse": 5}},
    {"bias": None},
    {"weights": ["nan", 1.0]},
    {"scales": [1.0]},
    {"means": None},
], ids=["settings-a-string", "settings-a-list", "a-table-a-number", "no-bias", "weights-not-finite",
        "lengths-differ", "means-not-a-list"])
def test_a_stored_rule_edited_into_nonsense_is_refused_in_one_line(tmp_path: Path, edit: dict) -> None:
    engine = prepare_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with session_scope(engine) as session:
        save_rule(session, "edited", HAND_RULE, fitted_sweep_id=1, fitted_models=[], backdoored_models=1,
                  clean_models=1, detector_settings={"neural_cleanse": {"steps": 300}})
    with session_scope(engine) as session:
        row = session.get(VerdictRuleRow, "edited")
        row.rule = {**row.rule, **edit}
    with session_scope(engine) as session, pytest.raises(BadInputError) as refused:
        read_rule(session, "edited")
    engine.dispose()
    [line] = str(refused.value).splitlines()
    assert line.startswith("verdict rule 'edited': its stored row is malformed"), line


def _scored_sweep(db_url: str, tmp_path: Path, models: list[tuple[bool, dict[str, float]]],
                  config: dict | None = None) -> int:
    """A sweep of models with ground truth (backdoored or not) and the detector scores given, model i's file
    hash being i in hex; config: the sweep's stored tables."""
    engine = prepare_database(db_url)
    with session_scope(engine) as session:
        sweep_id = create_sweep(session, name="scored", config=config or {}, thresholds=["0.1"], policy="first",
                                prune_layer="conv_3", rank_layer="pool_3", range_size=8,
                                artifact_dir=tmp_path / "artifacts")
        for index, (backdoored, scores) in enumerate(models):
            model_id = add_model(session, sweep_id, name=f"m{index}", path=tmp_path / f"m{index}.h5",
                                 sha256=f"{index:064x}", input_scale=1.0, data=[],
                                 truth=Truth(backdoored, "patch" if backdoored else "clean"))
            for detector, score in scores.items():
                save_outcome(session, model_id, detector, "key", {}, score=score)
    engine.dispose()
    return sweep_id


def _env(tmp_path: Path, db_url: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BADNET_PRUNE_")}
    return {**env, "BADNET_PRUNE_CACHE": str(tmp_path / "cache"), "BADNET_PRUNE_DB": db_url, "COLUMNS": "200"}


def test_fit_verdict_stores_the_rule_by_name_and_refuses_what_it_cannot_fit(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    # the CLP statistic separates the 5 backdoored models from the 3 clean ones; the pruning curve does not
    sweep_id = _scored_sweep(db_url, tmp_path, [
        (index < 5, {"clp_statistic": 0.8 - 0.02 * index if index < 5 else 0.2 + 0.02 * index, "pruning_curve": 0.5})
        for index in range(8)], config={"pruning_curve": {"drop_points": 3.0}, "clp_statistic": {}})
    env = _env(tmp_path, db_url)
    done = run_cli("fit-verdict", "zoo-a", "--sweep", str(sweep_id), env=env)
    assert done.returncode == 0, done.stderr
    assert "8 models with ground truth (5 backdoored, 3 clean)" in done.stdout
    assert "ROC-AUC 1.000" in done.stdout and "optimistic" in done.stdout
    engine = prepare_database(db_url)
    with session_scope(engine) as session:
        stored = read_rule(session, "zoo-a")
    assert stored is not None and stored.rule.detectors == ("clp_statistic", "pruning_curve")
    assert stored.fitted_models == frozenset(f"{index:064x}" for index in range(8))
    assert (stored.fitted_sweep_id, stored.backdoored_models, stored.clean_models) == (sweep_id, 5, 3)
    assert stored.rule.weights[0] > 0, "a higher CLP statistic means backdoored on this sweep"
    assert stored.detector_settings == {"clp_statistic": {}, "pruning_curve": {"drop_points": 3.0}}

    refusals = {
        ("zoo-a",): "a verdict rule named 'zoo-a' exists",
        ("zoo-b", "--detector", "neural_cleanse_verdict"): "--detector: neural_cleanse_verdict scored 0 of the 8",
        ("../x",): "NAME: '../x' is not a name",
    }
    for arguments, message in refusals.items():
        refused = run_cli("fit-verdict", *arguments, "--sweep", str(sweep_id), env=env)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert refused.stderr.startswith("error: "), refused.stderr
        assert message in refused.stderr, refused.stderr
    no_sweep = run_cli("fit-verdict", "zoo-c", "--sweep", "99", env=env)
    assert no_sweep.returncode == 2 and "sweep 99: no such sweep" in no_sweep.stderr
    with session_scope(engine) as session:
        assert read_rule(session, "zoo-b") is None, "a refused fit stores nothing"
    engine.dispose()


@pytest.fixture(scope="module")
def judged(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A quick BadNet defended with both cheap detectors and the verdict by a hand-made rule, once."""
    work = tmp_path_factory.mktemp("verdict")
    db_url = f"sqlite:///{work / 'db.sqlite'}"
    engine = prepare_database(db_url)
    root = cached_quick_badnet(0)
    with session_scope(engine) as session:
        save_rule(session, "hand", HAND_RULE, fitted_sweep_id=0, fitted_models=["f" * 64], backdoored_models=1,
                  clean_models=1)
    engine.dispose()
    data = root / "data"
    arguments = ["defend", "--model", str(root / "models" / "bd_net.h5"), "--clean-valid", str(data / "cl/valid.h5"),
                 "--clean-test", str(data / "cl/test.h5"), "--thresholds", "0.1", "--out", str(work / "out"),
                 "--clp-statistic", "--pruning-curve", "--detection-verdict", "--detection-verdict-rule", "hand"]
    done = run_cli(*arguments, env=_env(work, db_url))
    return {"work": work, "db_url": db_url, "done": done, "arguments": arguments, "root": root}


def test_the_verdict_is_the_stored_rules_probability_on_the_models_own_scores(judged: dict) -> None:
    done = judged["done"]
    assert done.returncode == 0, done.stderr
    summary = json.loads((judged["work"] / "out" / "summary.json").read_text(encoding="utf-8"))
    verdict = summary["detection_verdict"]["hand"]
    scores = {"clp_statistic": summary["clp_statistic"]["score"], "pruning_curve": summary["pruning_curve"]["score"]}
    assert verdict["scores"] == scores
    assert verdict["probability"] == pytest.approx(HAND_RULE.probability(scores), abs=1e-12)
    assert verdict["backdoored"] == (verdict["probability"] >= 0.5)
    said = "backdoored" if verdict["backdoored"] else "clean"
    assert f"Detection verdict (rule hand, fitted on sweep 0): {said}, probability" in done.stdout + done.stderr


def test_status_and_the_view_model_verdicts_show_it(judged: dict) -> None:
    assert judged["done"].returncode == 0, judged["done"].stderr
    env = _env(judged["work"], judged["db_url"])
    status = run_cli("status", "1", "--json", env=env)
    assert status.returncode == 0, status.stderr
    [shown] = json.loads(status.stdout)["verdicts"]
    engine = prepare_database(judged["db_url"])
    with session_scope(engine) as session:
        [stored] = sweep_verdicts(session, 1)
        row = session.execute(select(text("model, rule, probability, verdict")).select_from(
            text("model_verdicts")).where(text("sweep_id = 1"))).one()
    engine.dispose()
    assert shown == {"model": "bd_net", "rule": "hand", "probability": stored.probability, "verdict": stored.verdict}
    assert tuple(row) == ("bd_net", "hand", pytest.approx(stored.probability), stored.verdict)
    table = run_cli("status", "1", env=env)
    assert f"{stored.verdict} ({stored.probability:.2f}, hand)" in table.stdout


@pytest.mark.parametrize(("rule", "flags", "message"), [
    ("seen", ["--clp-statistic", "--pruning-curve"], "rule 'seen' was fitted on 1 of this sweep's model files "
                                                     "(sweep 4): judge them by a rule fitted on other models"),
    ("nope", ["--clp-statistic", "--pruning-curve"], "no verdict rule named 'nope' in this database; fit one with "
                                                     "`badnet-prune fit-verdict nope --sweep ID`"),
    ("hand", ["--clp-statistic"], "rule 'hand' needs the pruning_curve detector's score, which this sweep does not "
                                  "compute: add a [pruning_curve] table"),
    ("tuned", ["--clp-statistic", "--pruning-curve"], "rule 'tuned' was fitted on scores from [pruning_curve] "
     "drop_points = 3.0; this sweep sets drop_points = 1.0: its scores would not mean what the rule learned (use "
     "those settings, or fit a rule on a zoo run with these)"),
])
def test_a_sweep_the_rule_cannot_judge_is_refused_before_anything_is_stored(judged: dict, tmp_path: Path, rule: str,
                                                                            flags: list[str], message: str) -> None:
    from badnet_prune.db.models import Sweep
    from badnet_prune.files.hashing import sha256_file

    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = prepare_database(db_url)
    with session_scope(engine) as session:
        save_rule(session, "hand", HAND_RULE, fitted_sweep_id=0, fitted_models=[], backdoored_models=1,
                  clean_models=1)
        save_rule(session, "seen", HAND_RULE, fitted_sweep_id=4, backdoored_models=1, clean_models=1,
                  fitted_models=[sha256_file(judged["root"] / "models" / "bd_net.h5")])
        save_rule(session, "tuned", HAND_RULE, fitted_sweep_id=5, fitted_models=[], backdoored_models=1,
                  clean_models=1, detector_settings={"clp_statistic": {}, "pruning_curve": {"drop_points": 3.0}})
    arguments = judged["arguments"][:judged["arguments"].index("--clp-statistic")]
    arguments[arguments.index("--out") + 1] = str(tmp_path / "out")
    done = run_cli(*arguments, *flags, "--detection-verdict", "--detection-verdict-rule", rule,
                   env=_env(tmp_path, db_url))
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: [detection_verdict] rule: {message}"], done.stderr
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(Sweep)) == 0, "nothing registered"
    engine.dispose()


def test_fit_verdict_refuses_a_sweep_of_one_kind_of_model(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    sweep_id = _scored_sweep(db_url, tmp_path, [(True, {"clp_statistic": 0.1 * index}) for index in range(3)])
    done = run_cli("fit-verdict", "one", "--sweep", str(sweep_id), env=_env(tmp_path, db_url))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: verdict rule: needs clean and backdoored models with known truth; got 3 backdoored of 3"]
    engine = prepare_database(db_url)
    with session_scope(engine) as session:
        assert read_rule(session, "one") is None
    engine.dispose()
