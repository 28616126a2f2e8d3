"""Tables read back from the database: steps as CSV/JSON rows, a model's summary, the lab's table."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from sqlalchemy.orm import Session

from badnet_prune.db.model_results import Metrics, ModelResults
from badnet_prune.db.results import read_steps
from badnet_prune.orchestrator.verdicts import ASR_BOUND, CLEAN_BOUND, verdict_json
from badnet_prune.pipeline.contract import stages
from badnet_prune.pipeline.presentation import Presentation, metrics_json

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


def model_summary(results: ModelResults, asr_bound: float = ASR_BOUND,
                  clean_bound: float = CLEAN_BOUND) -> dict[str, Any]:
    """summary.json's content: the model, acc0, the ranking and B on test data, then what each stage adds (the
    per-threshold selections and B'_t and G_t, each later defense's part), every stage's notes in words, and
    the verdict per poison (orchestrator.verdicts)."""
    summary: dict[str, Any] = {
        "model": results.name,
        "path": results.path,
        "sha256": results.sha256,
        "status": results.status,
        "error": results.error,
        "acc0": results.acc0,
        "ranking": [{"channel": e.channel, "position": e.position, "mean_activation": e.mean_activation}
                    for e in results.ranking],
        "pruning_order": results.pruning_order,
        "B": metrics_json(results.b),
    }
    for presentation in _presentations():
        if presentation.summary is None:
            continue
        added = presentation.summary(results)
        clash = sorted(set(added) & set(summary))
        if clash:
            raise ValueError(f"two stages write summary.json's {', '.join(clash)}")
        summary.update(added)
    summary["notes"] = model_notes(results)
    summary["verdict"] = verdict_json(results, asr_bound, clean_bound)
    return summary


def model_notes(results: ModelResults) -> list[str]:
    """What every stage says in words of this model's results (fine-tuning that never improved on B'_t ...)."""
    return [note for presentation in _presentations() if presentation.notes is not None
            for note in presentation.notes(results)]


def lab_table(results: ModelResults) -> tuple[list[str], list[list[str]]]:
    """The lab's table: B, then each stage's networks (B'_t, G_t, and each later defense's) with clean accuracy,
    ASR per poison, detection and false alarms."""
    poisons = sorted(results.b.asr)
    header = ["model", "clean accuracy %", *(f"ASR {p} %" for p in poisons),
              *(f"detected {p} %" for p in poisons), "false alarms %"]

    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}"

    def line(label: str, metrics: Metrics | None) -> list[str]:
        if metrics is None:
            return [label, *([""] * (len(header) - 1))]
        return [label, cell(metrics.clean_accuracy), *(cell(metrics.asr.get(p)) for p in poisons),
                *(cell(metrics.detection.get(p)) for p in poisons), cell(metrics.false_alarms)]

    rows = [line("B", results.b)]
    for presentation in _presentations():
        rows += [line(label, metrics) for label, metrics in presentation.table_rows(results)]
    return header, rows


def _presentations() -> list[Presentation]:
    return [stage.presentation for stage in stages() if stage.presentation is not None]
