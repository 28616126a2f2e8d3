"""What a stage adds to what people read: its networks, summary.json, the CSV exports and the report.

A stage declares these as plain data and small functions of a model's stored results
(badnet_prune.db.model_results.ModelResults); the orchestrator's generic code renders them into
defend's table, summary.json, csv/ and the HTML and Markdown report. Figures are declared as panels
of line series, drawn by the report's one plotting module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from badnet_prune.numerics.thresholds import parse_threshold

if TYPE_CHECKING:
    from badnet_prune.db.model_results import Metrics, ModelResults


@dataclass(frozen=True)
class Network:
    """A network a stage makes and evaluates on the test files, per setting key.

    name: stored in evaluations.network and artifacts.kind ('B_fine'); label: what people read ("B''");
    repaired: it outputs class N ("backdoor detected") where B and the stage's pruned net disagree;
    title: the defense in words, for a repaired network's verdict ("fine-pruning").
    """

    name: str
    label: str
    repaired: bool = False
    title: str = ""


@dataclass(frozen=True)
class Series:
    label: str
    x: list[float]
    y: list[float | None]
    emphasis: bool = False  # the clean accuracy line, drawn bold


@dataclass(frozen=True)
class Panel:
    """One plot: series against a shared x, with an optional marked x (the point the stage chose)."""

    title: str
    x_label: str
    y_label: str
    series: list[Series]
    mark_x: float | None = None
    mark_label: str | None = None


@dataclass(frozen=True)
class Picture:
    """An image drawn in a section's grid: pixels (H, W, 3) with values 0..255 (a numpy array), and its caption."""

    caption: str
    pixels: Any


@dataclass(frozen=True)
class Section:
    """A part of a model's report page: a title, a caption, figure panels (or, without panels, a grid of
    pictures: a detector's reversed triggers) and a small table."""

    title: str
    caption: str
    panels: list[Panel] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)


def setting_label(key: str) -> str:
    """A setting key as people read it: a threshold as a percent ('0.02' -> '2%'), anything else as it is."""
    try:
        return parse_threshold(key).percent
    except ValueError:
        return key


@dataclass(frozen=True)
class Presentation:
    """What a stage adds where results are read.

    networks: what it evaluates (rows of defend's table, the verdict, the leaderboard).
    label: a row label for one of its networks at a setting ("B'' 2%, epoch 3"); default "B'' 2%".
    rows: its rows of defend's table, where they are more than each network at each evaluated setting
        (B' at a threshold never reached); (label, metrics or None for an empty row).
    summary: its section of summary.json, under the stage's name (None: nothing beyond the networks).
    columns: extra columns of csv/summary.csv for one setting key ({"fine_kept_epoch": 3}), and column_labels
        their headers for people ({"fine_kept_epoch": "epoch kept"}).
    notes: sentences for a reader under defend's table and on the report page (a warning in words).
    sections: its parts of a model's report page.
    """

    networks: tuple[Network, ...] = ()
    label: Callable[[ModelResults, Network, str], str] | None = None
    rows: Callable[[ModelResults], list[tuple[str, Metrics | None]]] | None = None
    summary: Callable[[ModelResults], dict[str, Any]] | None = None
    columns: Callable[[ModelResults, str], dict[str, Any]] | None = None
    notes: Callable[[ModelResults], list[str]] | None = None
    sections: Callable[[ModelResults], list[Section]] | None = None
    column_labels: Mapping[str, str] = field(default_factory=dict)  # headers of its own columns
    def row_label(self, results: ModelResults, network: Network, key: str) -> str:
        if self.label is not None:
            return self.label(results, network, key)
        return f"{network.label} {setting_label(key)}"

    def table_rows(self, results: ModelResults) -> list[tuple[str, Metrics | None]]:
        """Its rows of defend's table: its own (rows), else each network at each setting it was evaluated at."""
        if self.rows is not None:
            return self.rows(results)
        return [(self.row_label(results, network, key), results.networks[(network.name, key)])
                for network in self.networks for key in results.keys(network.name)]


def metrics_json(metrics: Metrics) -> dict[str, float]:
    """A network's test figures as summary.json writes them: clean accuracy, then per poison ASR, detection
    and robust accuracy, then false alarms."""
    values: dict[str, float] = {}
    if metrics.clean_accuracy is not None:
        values["clean_accuracy"] = metrics.clean_accuracy
    values.update({f"asr_{name}": rate for name, rate in sorted(metrics.asr.items())})
    values.update({f"detection_{name}": rate for name, rate in sorted(metrics.detection.items())})
    values.update({f"robust_accuracy_{name}": rate for name, rate in sorted(metrics.robust_accuracy.items())})
    if metrics.false_alarms is not None:
        values["false_alarms"] = metrics.false_alarms
    return values
