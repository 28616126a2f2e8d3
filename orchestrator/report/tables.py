"""The report's tables as raw values: written as-is to csv/, formatted once for HTML and Markdown.

Keeping raw values until the last moment lets the CSV files carry full precision, and lets a
test check every printed figure against the database with the one formatting rule below.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from badnet_prune.db.model_results import Metrics
from badnet_prune.numerics.thresholds import Threshold, parse_threshold
from badnet_prune.orchestrator.leaderboard import clean_models, detectors, has_truth, leaderboard
from badnet_prune.orchestrator.report.data import ModelReport, SweepReport
from badnet_prune.pipeline.contract import stages
from badnet_prune.pipeline.presentation import Network, Presentation

PERCENT_DECIMALS = 2
FRACTION_DECIMALS = 4
FRACTION_COLUMNS = frozenset({"fraction_pruned", "mean_activation", "fidelity", "auc", "cross_entropy", "ce_low",
                              "ce_high", "ce_half_width"})

# What a reader sees above a column in the page and report.md; the CSV files keep the machine names.
LABELS = {
    "fraction_pruned": "fraction pruned", "clean_accuracy": "clean accuracy %", "mean_activation": "mean activation",
    "clean_valid_accuracy": "clean validation accuracy %", "B_clean_accuracy": "B clean accuracy %",
    "B_asr": "B ASR %",
    # the leaderboard's
    "repaired": "repaired %", "asr_median": "ASR after, median %", "asr_p90": "ASR after, p90 %",
    "asr_worst": "ASR after, worst %", "drop_median": "clean drop, median (points)",
    "drop_p90": "clean drop, p90 (points)", "drop_worst": "clean drop, worst (points)",
    "robust_accuracy": "robust accuracy, mean %", "fidelity": "fidelity, mean", "false_alarms": "false alarms, mean %",
    "seconds": "compute, median s a model", "within_bound": "within the clean bound %",
    # the detectors'
    "backdoored_models": "backdoored models", "auc": "ROC-AUC", "cross_entropy": "cross-entropy",
    "ce_low": "cross-entropy 95% low", "ce_high": "cross-entropy 95% high", "ce_half_width": "cross-entropy +-",
    "cutoff_accuracy": "accuracy at 0.5 %", "target_named": "true target flagged %",
    "target_models": "models with targets",
}
# A network's columns are its name and one of these: G_clean_drop -> "G clean drop (points)" (its declared label).
NETWORK_COLUMNS = {"clean_accuracy": "{} clean accuracy %", "clean_drop": "{} clean drop (points)",
                   "false_alarms": "{} false alarms %", "asr": "{} ASR %", "threshold": "{} threshold",
                   "removed": "{} removed", "kept": "{} kept"}
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
    """A column's header for people: `B_clean_accuracy` -> 'B clean accuracy %', `G_fine_asr_x` -> "G'' ASR x %",
    `G_verdict` -> 'pruning alone (G)'; a stage's own columns as it labels them."""
    if column in LABELS:
        return LABELS[column]
    declared = [stage.presentation for stage in stages() if stage.presentation is not None]
    for presentation in declared:
        if column in presentation.column_labels:
            return presentation.column_labels[column]
    networks = {network.name: network for presentation in declared for network in presentation.networks}
    for name in sorted(networks, key=len, reverse=True):  # G_fine before G
        if column.startswith(f"{name}_"):
            return _network_label(networks[name], column.removeprefix(f"{name}_"))
    if column.startswith("B_asr_"):
        return f"B ASR {column.removeprefix('B_asr_')} %"
    if column.startswith("asr_"):
        return f"ASR {column.removeprefix('asr_')} %"
    return column


def _network_label(network: Network, rest: str) -> str:
    if rest == "verdict":
        return f"{network.title} ({network.label})"
    if rest in NETWORK_COLUMNS:
        return NETWORK_COLUMNS[rest].format(network.label)
    if rest.startswith("asr_"):
        return f"{network.label} ASR {rest.removeprefix('asr_')} %"
    return f"{network.label} {rest}"


def sweep_tables(report: SweepReport) -> list[Table]:
    """Every table of csv/: steps, selections, evaluations, the cross-model summary, rankings, models, and where
    models carry ground truth the leaderboard's."""
    return [
        Table("steps", report.step_columns, report.step_rows),
        selections_table(report),
        evaluations_table(report),
        summary_table(report),
        rankings_table(report),
        models_table(report),
        *leaderboard_tables(report),
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
    columns = ["model", "network", "threshold", "dataset", "accuracy", "flagged", "image_count", "robust_accuracy"]
    rows = [
        {"model": model.name, "network": row.network,
         "threshold": _setting_value(row.threshold) if row.threshold else 0.0,
         "dataset": "clean" if row.role == "clean_test" else row.poison_name, "accuracy": row.accuracy,
         "flagged": row.flagged, "image_count": row.image_count, "robust_accuracy": row.robust_accuracy}
        for model in report.models
        for row in model.evaluations
    ]
    return Table("evaluations", columns, rows)


def repaired_networks(report: SweepReport) -> list[tuple[Presentation, Network]]:
    """Every stage's repaired network (G, G'' ...) evaluated for some model of the report, in stage order."""
    evaluated = {name for model in report.models for name, _ in model.results.networks}
    return [(stage.presentation, network) for stage in stages() if stage.presentation is not None
            for network in stage.presentation.networks if network.repaired and network.name in evaluated]


def summary_table(report: SweepReport) -> Table:
    """One row per model and threshold: what each stage adds for that threshold (the step selected, the epoch
    fine-tuning kept ...), B's clean accuracy and per poison its ASR, and per repaired network (G, G'' ...)
    its clean accuracy, the drop from B, its false alarms, its ASR per poison, and which poisons it removed
    (ASR at most the bound) and kept."""
    poisons = report.poisons
    networks = repaired_networks(report)
    rows = [row for model in report.complete_models
            for row in _summary_rows(model, report.thresholds, poisons, networks, report.asr_bound)]
    added = list(dict.fromkeys(column for row in rows for column in row.get("_stage_columns", [])))
    columns = ["model", "threshold", *added, "B_clean_accuracy", *(f"B_asr_{poison}" for poison in poisons)]
    for _, network in networks:
        name = network.name
        columns += [f"{name}_clean_accuracy", f"{name}_clean_drop", f"{name}_false_alarms",
                    *(f"{name}_asr_{poison}" for poison in poisons), f"{name}_removed", f"{name}_kept"]
    columns += ["note"]
    for row in rows:
        row.pop("_stage_columns", None)
    return Table("summary", columns, rows)


def _summary_rows(model: ModelReport, thresholds: list[Threshold], poisons: list[str],
                  networks: list[tuple[Presentation, Network]], bound: float) -> list[dict[str, Any]]:
    results, b = model.results, model.results.b
    rows = []
    for threshold in thresholds:
        row: dict[str, Any] = {"model": model.name, "threshold": threshold.value}
        added: list[str] = []
        for stage in stages():
            if stage.presentation is not None and stage.presentation.columns is not None:
                extra = dict(stage.presentation.columns(results, threshold.key))
                if extra.get("note") and row.get("note"):  # each stage's note kept, in stage order
                    extra["note"] = f"{row['note']}; {extra['note']}"
                row.update(extra)
                added += [column for column in extra if column != "note"]
        row["_stage_columns"] = added
        row["B_clean_accuracy"] = b.clean_accuracy
        row.update({f"B_asr_{poison}": b.asr.get(poison) for poison in poisons})
        for _, network in networks:
            metrics = results.networks.get((network.name, threshold.key))
            if metrics is not None and metrics.clean_accuracy is not None and b.clean_accuracy is not None:
                row.update(_network_columns(network.name, metrics, poisons, b.clean_accuracy, bound))
        row.setdefault("note", "")
        rows.append(row)
    return rows


def _network_columns(prefix: str, metrics: Metrics, poisons: list[str], b_clean: float, bound: float) -> dict[str, Any]:
    """A repaired network's columns of a summary row: its figures against the bound, its clean cost against B."""
    measured = [poison for poison in poisons if poison in metrics.asr]
    return {
        f"{prefix}_clean_accuracy": metrics.clean_accuracy,
        f"{prefix}_clean_drop": b_clean - (metrics.clean_accuracy or 0.0),
        f"{prefix}_false_alarms": metrics.false_alarms,
        **{f"{prefix}_asr_{poison}": metrics.asr[poison] for poison in measured},
        f"{prefix}_removed": " ".join(p for p in measured if metrics.asr[p] <= bound),
        f"{prefix}_kept": " ".join(p for p in measured if metrics.asr[p] > bound),
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
    """The report's lead, one row per model and poison: for each repaired network (G for pruning alone, G''
    for fine-pruning, and each later defense's), did it remove the backdoor, at the smallest setting that
    did and at what clean cost; where none did, the setting with its lowest ASR."""
    networks = repaired_networks(report)
    columns = ["model", "poison", "B_asr"]
    for _, network in networks:
        columns += [f"{network.name}_verdict", f"{network.name}_threshold", f"{network.name}_asr",
                    f"{network.name}_clean_drop"]
    rows = []
    for model in report.complete_models:
        b = model.results.b
        for poison in model.poisons:
            row: dict[str, Any] = {"model": model.name, "poison": poison, "B_asr": b.asr.get(poison)}
            for _, network in networks:
                measured = [(key, model.results.networks[(network.name, key)])
                            for key in model.results.keys(network.name)]
                row.update(_verdict(network.name, measured, poison, b.clean_accuracy, report.asr_bound))
            rows.append(row)
    return Table("verdict", columns, rows)


def _verdict(prefix: str, measured: list[tuple[str, Metrics]], poison: str, b_clean: float | None,
             bound: float) -> dict[str, Any]:
    """One network's verdict on one poison, over its settings in ascending order."""
    rates = [(key, m) for key, m in measured if poison in m.asr and m.clean_accuracy is not None]
    if not rates or b_clean is None:
        return {f"{prefix}_verdict": "not measured"}
    removed = [(key, m) for key, m in rates if m.asr[poison] <= bound]
    key, metrics = removed[0] if removed else min(rates, key=lambda pair: pair[1].asr[poison])
    return {f"{prefix}_verdict": REMOVED if removed else KEPT, f"{prefix}_threshold": _setting_value(key),
            f"{prefix}_asr": metrics.asr[poison], f"{prefix}_clean_drop": b_clean - metrics.clean_accuracy}


def _setting_value(key: str) -> float | str:
    """A setting as the tables carry it: a threshold's value (printed as a percent), any other key as written."""
    try:
        return parse_threshold(key).value
    except ValueError:
        return key


def overview_table(report: SweepReport, summary: Table) -> Table:
    """The across-models table of the page, from summary_table's rows: one row per model, threshold and poison,
    so that its width does not grow with the number of poisons (summary.csv keeps one wide row per model and
    threshold)."""
    networks = [network.name for _, network in repaired_networks(report)]
    leading = [column for column in summary.columns
               if not column.startswith("B_asr_") and column != "note"
               and not any(column.startswith(f"{name}_") for name in networks)]
    columns = [*leading]
    for name in networks:
        columns += [f"{name}_clean_accuracy", f"{name}_clean_drop", f"{name}_false_alarms"]
    columns += ["poison", "B_asr", *(column for name in networks for column in (f"{name}_asr", f"{name}_verdict")),
                "note"]
    poisons = {model.name: model.poisons or [""] for model in report.complete_models}
    rows = []
    for wide in summary.rows:
        for poison in poisons[wide["model"]]:
            row = {key: wide.get(key) for key in columns if key in wide}
            row.update(poison=poison, B_asr=wide.get(f"B_asr_{poison}"))
            for name in networks:
                asr = wide.get(f"{name}_asr_{poison}")
                row[f"{name}_asr"] = asr
                if asr is not None:
                    row[f"{name}_verdict"] = REMOVED if asr <= report.asr_bound else KEPT
            rows.append(row)
    return Table("overview", columns, rows)


def rows_by_model(table: Table, names: list[str]) -> dict[str, Table]:
    """A table with a `model` column split into one table per model name, without that column, in one pass
    (a sweep of 1,000 models has a quarter of a million step and ranking rows)."""
    grouped: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for row in table.rows:
        grouped.setdefault(row["model"], []).append(row)
    return {name: Table(f"{table.name} {name}", table.columns[1:], rows) for name, rows in grouped.items()}


LEADERBOARD_COLUMNS = ["defense", "models", "repaired", "asr_median", "asr_p90", "asr_worst", "drop_median", "drop_p90",
                       "robust_accuracy", "fidelity", "false_alarms", "seconds", "network", "setting"]
DETECTOR_COLUMNS = ["detector", "models", "backdoored_models", "auc", "cross_entropy", "ce_low", "ce_high",
                    "ce_half_width", "cutoff_accuracy", "target_named", "target_models"]
CLEAN_MODEL_COLUMNS = ["defense", "models", "within_bound", "drop_median", "drop_p90", "drop_worst", "false_alarms",
                       "network", "setting"]


def leaderboard_tables(report: SweepReport) -> list[Table]:
    """The leaderboard over every backdoored model, the same by attack kind, and what each defense costs the
    clean models; none where no model of the sweep carries ground truth."""
    if not has_truth(report.outcomes):
        return []
    bounds = {"asr_bound": report.asr_bound, "clean_bound": report.clean_bound}
    overall = leaderboard(report.outcomes, report.seconds, **bounds)
    by_attack = leaderboard(report.outcomes, report.seconds, **bounds, by_attack=True)
    clean = clean_models(report.outcomes, clean_bound=report.clean_bound)
    return [
        Table("leaderboard", LEADERBOARD_COLUMNS, [asdict(row) for row in overall]),
        Table("leaderboard_by_attack", ["attack", *LEADERBOARD_COLUMNS], [asdict(row) for row in by_attack]),
        Table("clean_models", CLEAN_MODEL_COLUMNS, [asdict(row) for row in clean]),
        *([Table("detectors", DETECTOR_COLUMNS, [asdict(row) for row in scored])]
          if (scored := detectors(report.detector_scores)) else []),
    ]
