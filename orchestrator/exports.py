"""Tables read back from the database: steps as CSV/JSON rows, a model's summary, the lab's table."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from sqlalchemy.orm import Session

from badnet_prune.db.model_results import FineTuneOutcome, Metrics, ModelResults
from badnet_prune.db.results import read_steps

STEP_COLUMNS = ["step", "channel", "fraction_pruned", "clean_accuracy"]


def step_rows(session: Session, sweep_id: int, model_name: str | None = None) -> tuple[list[str], list[dict[str, Any]]]:
    """defend's steps.csv columns (with a leading `model`), one dict per stored step."""
    steps = read_steps(session, sweep_id, model_name)
    poisons = sorted({name for step in steps for name in step.asr})
    columns = ["model", *STEP_COLUMNS, *(f"asr_{name}" for name in poisons)]
    rows = []
    for step in steps:
        row: dict[str, Any] = {
            "model": step.model,
            "step": step.step,
            "channel": "" if step.channel is None else step.channel,
            "fraction_pruned": step.fraction_pruned,
            "clean_accuracy": step.clean_accuracy,
        }
        row.update({f"asr_{name}": step.asr.get(name, "") for name in poisons})
        rows.append(row)
    return columns, rows


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def to_csv(columns: list[str], rows: list[dict[str, Any]]) -> str:
    """CSV text whose cells a spreadsheet shows, never runs.

    Spreadsheets execute a text cell that starts with =, +, -, @, a tab or a carriage return
    (`=HYPERLINK(...)`, `@SUM(...)`, `+cmd|...`), and names, paths and error messages come from
    whoever wrote the sweep file or the model. Such text cells get a leading single quote (OWASP's
    rule for CSV injection); numbers, and text that is only a number, stay as they are.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[_inert(column) for column in columns], lineterminator="\n")
    writer.writeheader()
    writer.writerows({_inert(column): _inert(row.get(column, "")) for column in columns} for row in rows)
    return buffer.getvalue()


def _inert(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def model_summary(results: ModelResults) -> dict[str, Any]:
    """summary.json's content: acc0, the ranking, and per threshold (by its key) the selected step and test metrics."""
    return {
        "model": results.name,
        "path": results.path,
        "sha256": results.sha256,
        "status": results.status,
        "error": results.error,
        "acc0": results.acc0,
        "ranking": [{"channel": e.channel, "position": e.position, "mean_activation": e.mean_activation}
                    for e in results.ranking],
        "pruning_order": results.pruning_order,
        "B": _metrics_json(results.b),
        "thresholds": {
            entry.threshold.key: {
                "step": entry.step,
                "channels_pruned": entry.step,
                "clean_valid_accuracy": entry.clean_valid_accuracy,
                "B_prime": _metrics_json(entry.b_prime),
                "G": _metrics_json(entry.g),
                "files": dict(entry.files),
                **({} if entry.fine is None else {"fine_tune": _fine_tune_json(entry.fine)}),
            }
            for entry in results.thresholds
        },
    }


def _fine_tune_json(fine: FineTuneOutcome) -> dict[str, Any]:
    """A threshold's fine-pruning: settings, split, every epoch, the one kept, B'' and G'' on test data, files."""
    return {
        "kept_epoch": fine.kept_epoch,
        "settings": dict(fine.settings),
        "split_sha256": fine.split_sha256,
        "epochs": [
            {"epoch": e.epoch, "train_loss": e.train_loss, "holdout_accuracy": e.holdout_accuracy,
             **{f"asr_{name}": rate for name, rate in sorted(e.asr.items())}}
            for e in fine.epochs
        ],
        "B_fine": _metrics_json(fine.b_fine),
        "G_fine": _metrics_json(fine.g_fine),
        "files": dict(fine.files),
    }


def _metrics_json(metrics: Metrics) -> dict[str, float]:
    values: dict[str, float] = {}
    if metrics.clean_accuracy is not None:
        values["clean_accuracy"] = metrics.clean_accuracy
    values.update({f"asr_{name}": rate for name, rate in sorted(metrics.asr.items())})
    values.update({f"detection_{name}": rate for name, rate in sorted(metrics.detection.items())})
    if metrics.false_alarms is not None:
        values["false_alarms"] = metrics.false_alarms
    return values


def lab_table(results: ModelResults) -> tuple[list[str], list[list[str]]]:
    """The lab's table: B, each B'_t and G_t with clean accuracy, ASR per poison, detection and false alarms;
    where the sweep fine-tuned, each B''_t (with the epoch kept) and G''_t after them."""
    poisons = sorted(results.b.asr)
    header = ["model", "clean accuracy %", *(f"ASR {p} %" for p in poisons),
              *(f"detected {p} %" for p in poisons), "false alarms %"]

    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    def line(label: str, metrics: Metrics) -> list[str]:
        return [label, cell(metrics.clean_accuracy), *(cell(metrics.asr.get(p)) for p in poisons),
                *(cell(metrics.detection.get(p)) for p in poisons), cell(metrics.false_alarms)]

    rows = [line("B", results.b)]
    for entry in results.thresholds:
        if entry.step is None:
            rows.append([f"B' {entry.threshold.percent}: never reached", *([""] * (len(header) - 1))])
        else:
            rows.append(line(f"B' {entry.threshold.percent}, {entry.step} pruned", entry.b_prime))
    rows += [line(f"G {entry.threshold.percent}", entry.g) for entry in results.thresholds if entry.step is not None]
    tuned = [entry for entry in results.thresholds if entry.fine is not None and entry.fine.kept_epoch is not None]
    rows += [line(f"B'' {entry.threshold.percent}, epoch {entry.fine.kept_epoch}", entry.fine.b_fine)
             for entry in tuned]
    rows += [line(f"G'' {entry.threshold.percent}", entry.fine.g_fine) for entry in tuned]
    return header, rows
