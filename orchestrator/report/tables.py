"""The report's tables as raw values: written as-is to csv/, formatted once for HTML and Markdown.

Keeping raw values until the last moment lets the CSV files carry full precision, and lets a
test check every printed figure against the database with the one formatting rule below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from db.model_results import FineTuneOutcome
from orchestrator.report.data import ModelReport, SweepReport

PERCENT_DECIMALS = 2
FRACTION_DECIMALS = 4
FRACTION_COLUMNS = frozenset({"fraction_pruned", "mean_activation"})


@dataclass(frozen=True)
class Table:
    """Named columns and rows of raw values (None or '' for an empty cell)."""

    name: str
    columns: list[str]
    rows: list[dict[str, Any]]

    def cells(self) -> list[list[str]]:
        return [[display(column, row.get(column)) for column in self.columns] for row in self.rows]


def display(column: str, value: Any) -> str:
    """How a value is printed in the page and report.md: thresholds as percents, percentages
    with 2 decimals, fractions and activations with 4; the CSV keeps every digit."""
    if value is None or value == "":
        return ""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if column == "threshold":
        return f"{value * 100:g}%"
    if column in FRACTION_COLUMNS:
        return f"{value:.{FRACTION_DECIMALS}f}"
    return f"{value:.{PERCENT_DECIMALS}f}"


def sweep_tables(report: SweepReport) -> list[Table]:
    """Every table of csv/: steps, selections, evaluations, the cross-model summary, rankings, models."""
    return [
        Table("steps", report.step_columns, report.step_rows),
        selections_table(report),
        evaluations_table(report),
        summary_table(report),
        rankings_table(report),
        models_table(report),
    ]


def selections_table(report: SweepReport) -> Table:
    rows = []
    for model in report.models:
        fractions = {step.step: step.fraction_pruned for step in model.steps}
        for entry in model.results.thresholds:
            rows.append({
                "model": model.name, "threshold": entry.threshold.value, "step": entry.step,
                "fraction_pruned": fractions.get(entry.step), "clean_valid_accuracy": entry.clean_valid_accuracy,
            })
    return Table("selections", ["model", "threshold", "step", "fraction_pruned", "clean_valid_accuracy"], rows)


def evaluations_table(report: SweepReport) -> Table:
    columns = ["model", "network", "threshold", "dataset", "accuracy", "flagged", "image_count"]
    rows = [
        {"model": model.name, "network": row.network, "threshold": float(row.threshold) if row.threshold else 0.0,
         "dataset": "clean" if row.role == "clean_test" else row.poison_name, "accuracy": row.accuracy,
         "flagged": row.flagged, "image_count": row.image_count}
        for model in report.models
        for row in model.evaluations
    ]
    return Table("evaluations", columns, rows)


def summary_table(report: SweepReport) -> Table:
    """One row per model and threshold: clean accuracy of B and G, the drop, and per poison the
    ASR of B and G; `removed` lists the poisons whose ASR under G is at most the bound, `kept` the others."""
    poisons = report.poisons
    columns = ["model", "threshold", "step", "fraction_pruned", "B_clean_accuracy", "G_clean_accuracy",
               "clean_drop", "G_false_alarms"]
    for poison in poisons:
        columns += [f"B_asr_{poison}", f"G_asr_{poison}"]
    columns += ["removed", "kept"]
    if any(entry.fine is not None for model in report.complete_models for entry in model.results.thresholds):
        columns += ["fine_kept_epoch", "G_fine_clean_accuracy", "fine_clean_drop", "G_fine_false_alarms",
                    *(f"G_fine_asr_{poison}" for poison in poisons), "fine_removed", "fine_kept"]
    columns += ["note"]
    rows = [row for model in report.complete_models for row in _summary_rows(model, poisons, report.asr_bound)]
    return Table("summary", columns, rows)


def _summary_rows(model: ModelReport, poisons: list[str], bound: float) -> list[dict[str, Any]]:
    b = model.results.b
    fractions = {step.step: step.fraction_pruned for step in model.steps}
    rows = []
    for entry in model.results.thresholds:
        g = entry.g
        row: dict[str, Any] = {"model": model.name, "threshold": entry.threshold.value, "step": entry.step,
                               "fraction_pruned": fractions.get(entry.step), "B_clean_accuracy": b.clean_accuracy}
        for poison in poisons:
            row[f"B_asr_{poison}"] = b.asr.get(poison)
        if entry.step is None or g.clean_accuracy is None or b.clean_accuracy is None:
            row["note"] = "threshold never reached"
            rows.append(row)
            continue
        row["G_clean_accuracy"] = g.clean_accuracy
        row["clean_drop"] = b.clean_accuracy - g.clean_accuracy
        row["G_false_alarms"] = g.false_alarms
        measured = [poison for poison in poisons if poison in g.asr]
        for poison in measured:
            row[f"G_asr_{poison}"] = g.asr[poison]
        row["removed"] = " ".join(p for p in measured if g.asr[p] <= bound)
        row["kept"] = " ".join(p for p in measured if g.asr[p] > bound)
        if entry.fine is not None and entry.fine.g_fine.clean_accuracy is not None:
            row.update(_fine_columns(entry.fine, poisons, b.clean_accuracy, bound))
        rows.append(row)
    return rows


def _fine_columns(fine: FineTuneOutcome, poisons: list[str], b_clean: float, bound: float) -> dict[str, Any]:
    """Fine-pruning's columns of a summary row: G'' against the same bound, and its clean cost against B."""
    g_fine = fine.g_fine
    measured = [poison for poison in poisons if poison in g_fine.asr]
    return {
        "fine_kept_epoch": fine.kept_epoch,
        "G_fine_clean_accuracy": g_fine.clean_accuracy,
        "fine_clean_drop": b_clean - g_fine.clean_accuracy,
        "G_fine_false_alarms": g_fine.false_alarms,
        **{f"G_fine_asr_{poison}": g_fine.asr[poison] for poison in measured},
        "fine_removed": " ".join(p for p in measured if g_fine.asr[p] <= bound),
        "fine_kept": " ".join(p for p in measured if g_fine.asr[p] > bound),
    }


def rankings_table(report: SweepReport) -> Table:
    rows = [
        {"model": model.name, "position": entry.position, "channel": entry.channel,
         "mean_activation": entry.mean_activation}
        for model in report.models
        for entry in model.results.ranking
    ]
    return Table("rankings", ["model", "position", "channel", "mean_activation"], rows)


def models_table(report: SweepReport) -> Table:
    """Every model with its state: failed ones with their reason."""
    rows = [
        {"model": m.name, "status": m.status, "acc0": m.acc0, "path": m.path, "error": m.error or ""}
        for m in report.models
    ]
    return Table("models", ["model", "status", "acc0", "path", "error"], rows)


def model_steps_table(steps: Table, model: ModelReport) -> Table:
    """One model's rows of the steps table, without the model column."""
    return Table(f"steps {model.name}", steps.columns[1:], [r for r in steps.rows if r["model"] == model.name])


def model_ranking_table(rankings: Table, model: ModelReport) -> Table:
    rows = [r for r in rankings.rows if r["model"] == model.name]
    return Table(f"ranking {model.name}", rankings.columns[1:], rows)

