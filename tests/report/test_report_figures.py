"""Every figure of a report equals what the database holds: CSV exactly, the page and report.md
at their printed precision. Expected values come from db.results readers, not the report's code."""

from __future__ import annotations

from sqlalchemy import Engine

from badnet_prune.db.repository import list_models
from badnet_prune.db.results import read_evaluations, read_ranking, read_selections, read_steps
from badnet_prune.db.session import session_scope
from tests.report.conftest import ASR_BOUND, ReportedSweep
from tests.report.page import (
    exact,
    fraction,
    markdown_tables,
    model_page,
    parse_page,
    percent,
    read_csv,
    threshold,
)


def _database(engine: Engine, sweep_id: int):
    with session_scope(engine) as session:
        models = list_models(session, sweep_id)
        return (
            models,
            read_steps(session, sweep_id),
            {m.name: read_evaluations(session, m.id) for m in models},
            {m.name: read_selections(session, m.id) for m in models},
            {m.name: read_ranking(session, m.id) for m in models},
        )


def _dataset(evaluation) -> str:
    """The report's name of a test set: 'clean', or the poisoned set's name."""
    return "clean" if evaluation.role == "clean_test" else evaluation.poison_name


def _value(key: str) -> float:
    """A stored threshold key as the number the report prints (B's empty key: 0)."""
    return float(key) if key else 0.0


def _metrics(evaluations) -> dict[tuple[str, float, str], tuple[float, float | None]]:
    return {(e.network, _value(e.threshold), _dataset(e)): (e.accuracy, e.flagged) for e in evaluations}


def expected_summary(engine: Engine, sweep_id: int) -> list[dict]:
    """The cross-model table recomputed from evaluations and selections: raw values."""
    models, steps, evaluations, selections, _ = _database(engine, sweep_id)
    poisons = sorted({e.poison_name for rows in evaluations.values() for e in rows if e.role == "poisoned_test"})
    rows = []
    for model in models:
        if model.status != "done":
            continue
        metrics = _metrics(evaluations[model.name])
        fractions = {s.step: s.fraction_pruned for s in steps if s.model == model.name}
        for selection in selections[model.name]:
            t = _value(selection.threshold)
            if selection.step is None:
                rows.append({"model": model.name, "threshold": t, "step": None, "fraction_pruned": None,
                             "valid_drop": None, "B_clean_accuracy": metrics[("B", 0.0, "clean")][0],
                             "G_removed": set(), "G_kept": set(),
                             "note": "threshold never reached"})
                continue
            g_asr = {p: metrics[("G", t, p)][0] for p in poisons if ("G", t, p) in metrics}
            rows.append({
                "model": model.name, "threshold": t, "step": selection.step,
                "fraction_pruned": fractions.get(selection.step),
                "valid_drop": 100.0 * (model.acc0 - selection.clean_valid_accuracy) / model.acc0,
                "B_clean_accuracy": metrics[("B", 0.0, "clean")][0],
                "G_clean_accuracy": metrics[("G", t, "clean")][0],
                "G_clean_drop": metrics[("B", 0.0, "clean")][0] - metrics[("G", t, "clean")][0],
                "G_false_alarms": metrics[("G", t, "clean")][1],
                **{f"B_asr_{p}": metrics[("B", 0.0, p)][0] for p in poisons if ("B", 0.0, p) in metrics},
                **{f"G_asr_{p}": rate for p, rate in g_asr.items()},
                "G_removed": {p for p, rate in g_asr.items() if rate <= ASR_BOUND},
                "G_kept": {p for p, rate in g_asr.items() if rate > ASR_BOUND},
                "note": "",
            })
    return rows


def test_csv_tables_equal_the_database_exactly(reported: ReportedSweep, engine: Engine) -> None:
    models, steps, evaluations, selections, rankings = _database(engine, reported.sweep_id)
    csv = reported.out / "csv"
    step_rows = read_csv(csv / "steps.csv")
    assert [(r["model"], int(r["step"])) for r in step_rows] == [(s.model, s.step) for s in steps]
    for row, step in zip(step_rows, steps, strict=True):
        assert exact(row["fraction_pruned"]) == step.fraction_pruned
        assert exact(row["clean_accuracy"]) == step.clean_accuracy
        assert {k[4:]: exact(v) for k, v in row.items() if k.startswith("asr_") and v} == step.asr
    evaluation_rows = read_csv(csv / "evaluations.csv")
    expected = [(m.name, e.network, _value(e.threshold), _dataset(e), e.accuracy, e.flagged, e.image_count)
                for m in models for e in evaluations[m.name]]
    assert [(r["model"], r["network"], float(r["threshold"]), r["dataset"], exact(r["accuracy"]), exact(r["flagged"]),
             int(r["image_count"])) for r in evaluation_rows] == expected
    assert [(r["model"], float(r["threshold"]), r["step"], exact(r["clean_valid_accuracy"]))
            for r in read_csv(csv / "selections.csv")] == [
        (m.name, _value(s.threshold), "" if s.step is None else str(s.step), s.clean_valid_accuracy)
        for m in models for s in selections[m.name]]
    assert [(r["model"], int(r["position"]), int(r["channel"]), float(r["mean_activation"]))
            for r in read_csv(csv / "rankings.csv")] == [
        (m.name, position, channel, mean) for m in models for channel, position, mean in rankings[m.name]]
    assert {r["model"]: (r["status"], r["error"]) for r in read_csv(csv / "models.csv")} == {
        m.name: (m.status, m.error or "") for m in models}
    summary = read_csv(csv / "summary.csv")
    wanted = expected_summary(engine, reported.sweep_id)
    assert len(summary) == len(wanted) > 0
    for row, want in zip(summary, wanted, strict=True):
        for column, value in want.items():
            if column in ("G_removed", "G_kept"):
                assert set(row[column].split()) == value, column
            elif isinstance(value, float):
                assert exact(row[column]) == value, column
            else:
                assert row[column] == ("" if value is None else str(value)), column


# The page's headers, restated here rather than read from the report's code.
OVERVIEW_HEADERS = {"model": "model", "threshold": "threshold", "step": "step", "fraction_pruned": "fraction pruned",
                    "valid_drop": "validation drop % (of acc0)", "B_clean_accuracy": "B clean accuracy %",
                    "G_clean_accuracy": "G clean accuracy %",
                    "G_clean_drop": "G clean drop (points)", "G_false_alarms": "G false alarms %", "poison": "poison",
                    "B_asr": "B ASR %", "G_asr": "G ASR %", "G_verdict": "pruning alone (G)", "note": "note"}
VERDICT_HEADERS = {"model": "model", "poison": "poison", "B_asr": "B ASR %", "G_verdict": "pruning alone (G)",
                   "G_threshold": "G threshold", "G_asr": "G ASR %", "G_clean_drop": "G clean drop (points)"}


def expected_overview(wanted: list[dict]) -> list[dict]:
    """The page's across-models rows: the summary's rows, one per poison the model was measured on."""
    poisons: dict[str, set[str]] = {}
    for row in wanted:
        poisons.setdefault(row["model"], set()).update(k.removeprefix("B_asr_") for k in row if k.startswith("B_asr_"))
    rows = []
    for row in wanted:
        for poison in sorted(poisons[row["model"]]):
            g = row.get(f"G_asr_{poison}")
            b = next(r[f"B_asr_{poison}"] for r in wanted if r["model"] == row["model"] and f"B_asr_{poison}" in r)
            rows.append({**{k: v for k, v in row.items() if k in OVERVIEW_HEADERS}, "poison": poison,
                         "B_asr": b, "G_asr": g,
                         "G_verdict": "" if g is None else "removed" if g <= ASR_BOUND else "kept"})
    return rows


def expected_verdict(wanted: list[dict]) -> list[dict]:
    """Per model and poison: the smallest threshold whose G has ASR <= the bound, else the one with G's lowest ASR."""
    rows = []
    for model in dict.fromkeys(row["model"] for row in wanted):
        mine = sorted((row for row in wanted if row["model"] == model), key=lambda row: row["threshold"])
        for poison in sorted(key.removeprefix("B_asr_") for key in mine[0] if key.startswith("B_asr_")):
            reached = [row for row in mine if f"G_asr_{poison}" in row]
            removed = [row for row in reached if row[f"G_asr_{poison}"] <= ASR_BOUND]
            best = removed[0] if removed else min(reached, key=lambda row: (row[f"G_asr_{poison}"], row["threshold"]))
            rows.append({"model": model, "poison": poison, "B_asr": mine[0][f"B_asr_{poison}"],
                         "G_verdict": "removed" if removed else "kept", "G_threshold": best["threshold"],
                         "G_asr": best[f"G_asr_{poison}"], "G_clean_drop": best["G_clean_drop"]})
    return rows


def _shown(value, column: str) -> str:
    if column.endswith("threshold"):
        return threshold(value)
    return fraction(value) if column == "fraction_pruned" else percent(value) if isinstance(value, float) else (
        "" if value is None else str(value))


def test_page_and_markdown_tables_equal_the_database(reported: ReportedSweep, engine: Engine) -> None:
    page = parse_page((reported.out / "index.html").read_text(encoding="utf-8"))
    markdown = markdown_tables((reported.out / "report.md").read_text(encoding="utf-8"))
    wanted = expected_summary(engine, reported.sweep_id)
    verdict, summary = page.by_id("verdict"), page.by_id("summary")
    assert markdown[0] == (verdict.header, verdict.rows) and markdown[1] == (summary.header, summary.rows)
    assert verdict.header == list(VERDICT_HEADERS.values()) and summary.header == list(OVERVIEW_HEADERS.values())
    for table, expected, headers in ((verdict, expected_verdict(wanted), VERDICT_HEADERS),
                                     (summary, expected_overview(wanted), OVERVIEW_HEADERS)):
        assert len(table.rows) == len(expected) > 0
        for cells, want in zip(table.rows, expected, strict=True):
            printed = dict(zip(table.header, cells, strict=True))
            assert {c: printed[headers[c]] for c in want} == {c: _shown(v, c) for c, v in want.items()}, cells
    models, _, evaluations, selections, rankings = _database(engine, reported.sweep_id)
    failed = page.by_id("failed")
    assert [row[0] for row in failed.rows] == [m.name for m in models if m.status == "failed"]
    assert [row[2] for row in failed.rows] == [m.error for m in models if m.status == "failed"]
    for model in (m for m in models if m.status == "done"):
        own = model_page(reported.out, model.name)
        [lab] = own.tables_of("lab", model.name)
        assert (lab.header, lab.rows) in markdown
        assert lab.rows == _lab_rows(lab.header, evaluations[model.name], selections[model.name], lab.rows)
        [ranking] = own.tables_of("ranking", model.name)
        assert ranking.rows == [[str(p), str(c), fraction(mean)] for c, p, mean in rankings[model.name]]
        [mine] = own.tables_of("summary", model.name)
        assert mine.rows == [row[1:] for row in summary.rows if row[0] == model.name]
        [verdicts] = own.tables_of("verdict", model.name)
        assert verdicts.rows == [row[1:] for row in verdict.rows if row[0] == model.name]


def _lab_rows(header: list[str], evaluations, selections, printed: list[list[str]]) -> list[list[str]]:
    """The lab table expected from evaluations: B, then B' per threshold, then G per reached one.
    Row labels are taken from the page (their wording is exports.lab_table's); numbers are not."""
    metrics = _metrics(evaluations)
    keys = [("B", 0.0)] + [("B_prime", _value(s.threshold)) for s in selections]
    keys += [("G", _value(s.threshold)) for s in selections if s.step is not None]
    assert len(printed) == len(keys)
    rows = []
    for (network, t), shown in zip(keys, printed, strict=True):
        assert shown[0].startswith({"B": "B", "B_prime": "B'", "G": "G "}[network])
        cells = [shown[0]]
        for column in header[1:]:
            name = column.removesuffix(" %")
            if name == "clean accuracy":
                value = metrics.get((network, t, "clean"), (None, None))[0]
            elif name == "false alarms":
                value = metrics.get((network, t, "clean"), (None, None))[1]
            elif name.startswith("ASR "):
                value = metrics.get((network, t, name[4:]), (None, None))[0]
            else:
                value = metrics.get((network, t, name.removeprefix("detected ")), (None, None))[1]
            cells.append(percent(value))
        rows.append(cells)
    return rows


def test_thresholds_that_select_the_same_step_each_show_their_marker(tmp_path) -> None:
    """2% and 2.1% select one step of the synthetic curve: both markers are drawn there, the later one a larger
    ring around the first, each with its legend entry."""
    from badnet_prune.db.session import prepare_database
    from badnet_prune.orchestrator.report.data import read_report
    from badnet_prune.orchestrator.report.figures import curve_figure
    from bench.report_scale import synthetic_sweep

    engine = prepare_database(f"sqlite:///{tmp_path / 'same.db'}")
    sweep_id = synthetic_sweep(engine, 1, thresholds=("0.02", "0.021", "0.1"))
    with session_scope(engine) as session:
        [model] = read_report(session, sweep_id, ASR_BOUND).models
    engine.dispose()
    steps = {entry.threshold.key: entry.step for entry in model.results.thresholds}
    assert steps["0.02"] == steps["0.021"] != steps["0.1"]
    figure = curve_figure(model)
    axes = figure.axes[0]
    markers = {line.get_label(): line for line in axes.get_lines() if line.get_marker() == "o"}
    first, second = markers[f"B' 2%: step {steps['0.02']}"], markers[f"B' 2.1%: step {steps['0.021']}"]
    assert list(first.get_xydata()[0]) == list(second.get_xydata()[0])
    assert first.get_fillstyle() == "full" and second.get_fillstyle() == "none"
    assert second.get_markersize() > first.get_markersize() + 2 * second.get_markeredgewidth()
    assert first.get_color() != second.get_color()
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert {first.get_label(), second.get_label()} <= set(legend)


def test_the_verdict_says_what_fine_pruning_removed_and_its_cost(tmp_path) -> None:
    """On a fine-tuned synthetic sweep the verdict's G'' columns equal the stored G_fine evaluations: the
    smallest threshold whose G'' ASR is at most the bound, that ASR, and B's clean accuracy minus G'''s."""
    from badnet_prune.db.session import prepare_database
    from badnet_prune.orchestrator.report.write import write_report
    from bench.report_scale import synthetic_sweep

    engine = prepare_database(f"sqlite:///{tmp_path / 'fine.db'}")
    sweep_id = synthetic_sweep(engine, 2, poisons=("sunglasses", "lipstick"), fine_tune=True)
    index = write_report(engine, sweep_id, tmp_path / "report", asr_bound=ASR_BOUND, samples_per_set=0)
    models, _, evaluations, _, _ = _database(engine, sweep_id)
    engine.dispose()
    verdict = parse_page(index.read_text(encoding="utf-8")).by_id("verdict")
    assert verdict.header[-4:] == ["fine-pruning (G'')", "G'' threshold", "G'' ASR %", "G'' clean drop (points)"]
    rows = {(row[0], row[1]): dict(zip(verdict.header, row, strict=True)) for row in verdict.rows}
    assert len(rows) == 4
    for model in models:
        metrics = _metrics(evaluations[model.name])
        for poison in ("sunglasses", "lipstick"):
            tuned = sorted(t for network, t, dataset in metrics if network == "G_fine" and dataset == poison)
            removed = [t for t in tuned if metrics[("G_fine", t, poison)][0] <= ASR_BOUND]
            assert removed, "the synthetic fine-pruning removes every backdoor"
            t = removed[0]
            assert rows[(model.name, poison)]["fine-pruning (G'')"] == "removed"
            assert rows[(model.name, poison)]["G'' threshold"] == threshold(t)
            assert rows[(model.name, poison)]["G'' ASR %"] == percent(metrics[("G_fine", t, poison)][0])
            drop = metrics[("B", 0.0, "clean")][0] - metrics[("G_fine", t, "clean")][0]
            assert rows[(model.name, poison)]["G'' clean drop (points)"] == percent(drop)
