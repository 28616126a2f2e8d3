"""The report's tables as raw values: written as-is to csv/, formatted once for HTML and Markdown.

Keeping raw values until the last moment lets the CSV files carry full precision, and lets a
test check every printed figure against the database with the one formatting rule below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from badnet_prune.db.model_results import FineTuneOutcome, Metrics
from badnet_prune.numerics.thresholds import Threshold
from badnet_prune.orchestrator.report.data import ModelReport, SweepReport

PERCENT_DECIMALS = 2
FRACTION_DECIMALS = 4
FRACTION_COLUMNS = frozenset({"fraction_pruned", "mean_activation"})

# What a reader sees above a column in the page and report.md; the CSV files keep the machine names.
LABELS = {
    "fraction_pruned": "fraction pruned", "clean_accuracy": "clean accuracy %", "mean_activation": "mean activation",
    "clean_valid_accuracy": "clean validation accuracy %", "B_clean_accuracy": "B clean accuracy %",
    "G_clean_accuracy": "G clean accuracy %", "clean_drop": "G clean drop (points)",
    "G_false_alarms": "G false alarms %", "B_asr": "B ASR %", "G_asr": "G ASR %", "G_verdict": "pruning alone (G)",
    "G_threshold": "G threshold", "G_clean_drop": "G clean drop (points)", "fine_kept_epoch": "epoch kept",
    "G_fine_clean_accuracy": "G'' clean accuracy %", "fine_clean_drop": "G'' clean drop (points)",
    "G_fine_false_alarms": "G'' false alarms %", "G_fine_asr": "G'' ASR %", "G_fine_verdict": "fine-pruning (G'')",
    "G_fine_threshold": "G'' threshold", "G_fine_clean_drop": "G'' clean drop (points)",
}
_PREFIXED = (("G_fine_asr_", "G'' ASR {} %"), ("B_asr_", "B ASR {} %"), ("G_asr_", "G ASR {} %"), ("asr_", "ASR {} %"))
REMOVED, KEPT = "removed", "kept"


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
    if column == "threshold" or column.endswith("_threshold"):
        return f"{value * 100:g}%"
    if column in FRACTION_COLUMNS:
        return f"{value:.{FRACTION_DECIMALS}f}"
    return f"{value:.{PERCENT_DECIMALS}f}"


def label(column: str) -> str:
    """A column's header for people: `B_clean_accuracy` -> 'B clean accuracy %', `asr_x` -> 'ASR x %'."""
    if column in LABELS:
        return LABELS[column]
    for prefix, text in _PREFIXED:
        if column.startswith(prefix):
            return text.format(column.removeprefix(prefix))
    return column


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
    if _fine_tuned(report):
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


def verdict_table(report: SweepReport) -> Table:
    """The report's lead, one row per model and poison: did pruning alone (G) remove the backdoor, at the
    smallest threshold that did and at what clean cost; where none did, the threshold with G's lowest ASR.
    The same for fine-pruning (G'') where the sweep fine-tuned."""
    fine = _fine_tuned(report)
    columns = ["model", "poison", "B_asr", "G_verdict", "G_threshold", "G_asr", "G_clean_drop"]
    if fine:
        columns += ["G_fine_verdict", "G_fine_threshold", "G_fine_asr", "G_fine_clean_drop"]
    rows = []
    for model in report.complete_models:
        b = model.results.b
        for poison in model.poisons:
            row: dict[str, Any] = {"model": model.name, "poison": poison, "B_asr": b.asr.get(poison)}
            reached = [entry for entry in model.results.thresholds if entry.step is not None]
            g = [(entry.threshold, entry.g) for entry in reached]
            row.update(_verdict("G", g, poison, b.clean_accuracy, report.asr_bound))
            if fine:
                g_fine = [(entry.threshold, entry.fine.g_fine) for entry in reached if entry.fine is not None]
                row.update(_verdict("G_fine", g_fine, poison, b.clean_accuracy, report.asr_bound))
            rows.append(row)
    return Table("verdict", columns, rows)


def _verdict(prefix: str, measured: list[tuple[Threshold, Metrics]], poison: str, b_clean: float | None,
             bound: float) -> dict[str, Any]:
    """One network's verdict on one poison, over thresholds in ascending order."""
    rates = [(t, m) for t, m in measured if poison in m.asr and m.clean_accuracy is not None]
    if not rates or b_clean is None:
        return {f"{prefix}_verdict": "not measured"}
    removed = [(t, m) for t, m in rates if m.asr[poison] <= bound]
    threshold, metrics = removed[0] if removed else min(rates, key=lambda pair: (pair[1].asr[poison], pair[0]))
    return {f"{prefix}_verdict": REMOVED if removed else KEPT, f"{prefix}_threshold": threshold.value,
            f"{prefix}_asr": metrics.asr[poison], f"{prefix}_clean_drop": b_clean - metrics.clean_accuracy}


def overview_table(report: SweepReport, summary: Table) -> Table:
    """The across-models table of the page, from summary_table's rows: one row per model, threshold and poison,
    so that its width does not grow with the number of poisons (summary.csv keeps one wide row per model and
    threshold)."""
    columns = ["model", "threshold", "step", "fraction_pruned", "B_clean_accuracy", "G_clean_accuracy", "clean_drop",
               "G_false_alarms", "poison", "B_asr", "G_asr", "G_verdict"]
    if _fine_tuned(report):
        columns += ["G_fine_clean_accuracy", "fine_clean_drop", "G_fine_asr", "G_fine_verdict"]
    columns += ["note"]
    poisons = {model.name: model.poisons or [""] for model in report.complete_models}
    rows = []
    for wide in summary.rows:
        for poison in poisons[wide["model"]]:
            row = {key: wide.get(key) for key in columns if key in wide}
            row.update(poison=poison, B_asr=wide.get(f"B_asr_{poison}"), G_asr=wide.get(f"G_asr_{poison}"),
                       G_fine_asr=wide.get(f"G_fine_asr_{poison}"))
            for prefix, asr in (("G", row["G_asr"]), ("G_fine", row["G_fine_asr"])):
                if asr is not None:
                    row[f"{prefix}_verdict"] = REMOVED if asr <= report.asr_bound else KEPT
            rows.append(row)
    return Table("overview", columns, rows)


def _fine_tuned(report: SweepReport) -> bool:
    return any(entry.fine is not None for model in report.complete_models for entry in model.results.thresholds)


def rows_by_model(table: Table, names: list[str]) -> dict[str, Table]:
    """A table with a `model` column split into one table per model name, without that column, in one pass
    (a sweep of 1,000 models has a quarter of a million step and ranking rows)."""
    grouped: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for row in table.rows:
        grouped.setdefault(row["model"], []).append(row)
    return {name: Table(f"{table.name} {name}", table.columns[1:], rows) for name, rows in grouped.items()}
