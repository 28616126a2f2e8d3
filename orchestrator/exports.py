"""Tables read back from the database: steps as CSV/JSON rows, a model's summary, the lab's table."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from sqlalchemy.orm import Session

from db.repository import get_model
from db.results import read_artifacts, read_evaluations, read_ranking, read_selections, read_steps

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


def model_summary(session: Session, sweep_id: int, model_id: int) -> dict[str, Any]:
    """acc0, the ranking, and per threshold the selected step and every test metric."""
    model = get_model(session, model_id)
    ranking = read_ranking(session, model_id)
    evaluations = read_evaluations(session, model_id)
    artifacts = read_artifacts(session, model_id)
    metrics: dict[tuple[str, float], dict[str, Any]] = {}
    for row in evaluations:
        entry = metrics.setdefault((row.network, row.threshold), {})
        key = "clean_accuracy" if row.dataset == "clean" else f"asr_{row.dataset}"
        entry[key] = row.accuracy
        if row.flagged is not None:
            entry["false_alarms" if row.dataset == "clean" else f"detection_{row.dataset}"] = row.flagged
    thresholds = {}
    for selection in read_selections(session, model_id):
        t = selection.threshold
        thresholds[f"{t:g}"] = {
            "step": selection.step,
            "channels_pruned": selection.step,
            "clean_valid_accuracy": selection.clean_valid_accuracy,
            "B_prime": metrics.get(("B_prime", t), {}),
            "G": metrics.get(("G", t), {}),
            "files": {a.kind: a.path for a in artifacts if a.threshold == t},
        }
    return {
        "model": model.name,
        "path": model.path,
        "sha256": model.sha256,
        "status": model.status,
        "error": model.error,
        "acc0": model.acc0,
        "ranking": [{"channel": c, "position": p, "mean_activation": m} for c, p, m in ranking],
        "pruning_order": [c for c, _, _ in ranking],
        "B": metrics.get(("B", 0.0), {}),
        "thresholds": thresholds,
    }


def lab_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The lab's table: B, each B'_t and G_t with clean accuracy, ASR per poison, detection and false alarms."""
    poisons = sorted(key[4:] for key in summary["B"] if key.startswith("asr_"))
    header = ["model", "clean accuracy %", *(f"ASR {p} %" for p in poisons),
              *(f"detected {p} %" for p in poisons), "false alarms %"]

    def line(name: str, values: dict[str, Any], steps: int | None = None) -> list[str]:
        def cell(key: str) -> str:
            return "" if values.get(key) is None else f"{values[key]:.2f}"

        label = name if steps is None else f"{name}, {steps} pruned"
        return [label, cell("clean_accuracy"), *(cell(f"asr_{p}") for p in poisons),
                *(cell(f"detection_{p}") for p in poisons), cell("false_alarms")]

    rows = [line("B", summary["B"])]
    for t, entry in summary["thresholds"].items():
        if entry["step"] is None:
            rows.append([f"B' {_percent(t)}: never reached", *([""] * (len(header) - 1))])
            continue
        rows.append(line(f"B' {_percent(t)}", entry["B_prime"], entry["step"]))
    for t, entry in summary["thresholds"].items():
        if entry["step"] is not None:
            rows.append(line(f"G {_percent(t)}", entry["G"]))
    return header, rows


def _percent(threshold: str) -> str:
    return f"{float(threshold) * 100:g}%"
