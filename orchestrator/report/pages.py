"""The report assembled once (tables, figures, samples) and shared by the HTML and Markdown writers,
so both say the same thing with the same numbers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from badnet_prune.orchestrator.report.data import ModelReport, SweepReport
from badnet_prune.orchestrator.report.figures import curve_png, leaderboard_png, panels_png, sample_grid_png
from badnet_prune.orchestrator.report.samples import POOL, Samples, label_samples
from badnet_prune.orchestrator.report.tables import (
    Table,
    overview_table,
    repaired_networks,
    rows_by_model,
    sweep_tables,
    verdict_table,
)
from badnet_prune.pipeline.contract import stages

_IDENTIFIER = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class StageSection:
    """A stage's section of a model page (pipeline.presentation.Section), its figure drawn."""

    slug: str  # the figure's name among the page's figures
    title: str
    caption: str
    png: bytes | None
    table: Table | None


@dataclass(frozen=True)
class ModelPage:
    """A complete model's own page (models/): its rows of the across-models view, tables, curves and samples."""

    model: ModelReport
    file: str  # the model's page, relative to index.html
    verdict: Table
    overview: Table
    steps: Table
    ranking: Table
    curve_png: bytes
    samples: Samples
    samples_png: bytes | None
    sections: list[StageSection] = field(default_factory=list)  # what each stage adds to the page

    def description(self) -> str:
        m = self.model
        acc0 = "?" if m.acc0 is None else f"{m.acc0:.2f}%"
        return (f"{m.path} (sha256 {m.sha256[:12]}..., input scale {m.input_scale:g}); "
                f"clean validation accuracy of B before pruning (acc0): {acc0}.")

    def samples_caption(self) -> str:
        networks = ", ".join(self.samples.columns) or "none"
        return (f"Clean and poisoned test images, picked from {POOL} evenly spaced ones of each file: up to half are "
                f"the repaired networks' misses (poisoned images one did not flag, clean images one flagged), the "
                f"rest evenly spaced. label is the file's label (on poisoned files the attacker's target); B and the "
                f"repaired networks ({networks}) as labelled now by the stored model files. Red: the attack "
                f"succeeded (a poisoned image given the attacker's target); blue: flagged (N = "
                f"{self.samples.num_classes}, the repaired network detected a backdoor).")

    def sample_marks(self) -> list[dict[str, str]]:
        """Per row of samples_table, the cells to colour: column -> 'attack' or 'flagged'."""
        marks = []
        for sample in self.samples.samples:
            labels = {"B": sample.b, **sample.repaired}
            marks.append({column: mark for column, value in labels.items()
                          if (mark := self.samples.mark(sample, value)) is not None})
        return marks

    def samples_table(self) -> Table:
        columns = ["dataset", "index", "label", "B", *self.samples.columns]
        rows = []
        for sample in self.samples.samples:
            row = {"dataset": sample.dataset, "index": sample.index, "label": sample.label,
                   "B": self.samples.name(sample.b)}
            row.update({column: self.samples.name(sample.repaired[column]) for column in self.samples.columns})
            rows.append(row)
        return Table("samples", columns, rows)


@dataclass(frozen=True)
class ReportPages:
    """tables: what csv/ holds (machine column names); verdict and overview: the across-models view."""

    report: SweepReport
    tables: dict[str, Table]
    verdict: Table
    overview: Table
    models: list[ModelPage]
    leaderboard_pngs: dict[str, bytes] = field(default_factory=dict)  # attack kind -> its plot

    @property
    def leaderboard(self) -> list[Table]:
        """The leaderboard's tables, where the sweep's models carry ground truth (they lead the report)."""
        return [self.tables[name] for name in ("leaderboard", "leaderboard_by_attack", "clean_models", "detectors")
                if name in self.tables]

    def leaderboard_caption(self) -> str:
        r = self.report
        return (f"Across the backdoored models (ground truth from the sweep file), per defense and setting: "
                f"repaired = the share of models whose every poison's ASR after the defense is at most "
                f"{r.asr_bound:g}% with a clean test accuracy drop of at most {r.clean_bound:g} points; ASR "
                f"after over (model, poison) pairs; clean drop in points; robust accuracy: poisoned images "
                f"classified as their true label; fidelity as TrojAI's mitigation round defines it; false "
                f"alarms: clean images a repaired net flags; compute: seconds of the defense's tasks and "
                f"those it waits for, per model. Then the same by attack kind, and what each defense costs "
                f"the clean models. Detectors: each model's score (its probability of a backdoor) against the "
                f"truth, as TrojAI scores it: ROC-AUC, cross-entropy (scores clipped to [1e-12, 1 - 1e-12]) with "
                f"its 95% bootstrap interval and 1.96 x std / sqrt(n), accuracy at cut-off 0.5, and for a "
                f"detector that flags labels the share of backdoored models whose flagged labels include a "
                f"true target.")

    def description(self) -> str:
        r = self.report
        thresholds = ", ".join(t.percent for t in r.thresholds)
        return (f"Status {r.status}; {len(r.models)} model(s), {len(r.complete_models)} complete, "
                f"{len(r.failed_models)} failed. Thresholds {thresholds}, policy {r.policy}, "
                f"pruned layer {r.prune_layer}, ranked on {r.rank_layer}. All figures read from the database.")

    def verdict_caption(self) -> str:
        caption = (f"Per model and poison: a backdoor counts as removed when the ASR of G (pruning alone) on its "
                   f"poisoned test set is at most {self.report.asr_bound:g}%. Removed: the smallest threshold that "
                   f"removed it; kept: the threshold where G's ASR was lowest. Clean drop = B's clean test accuracy "
                   f"minus G's, in points.")
        others = [network for _, network in repaired_networks(self.report) if network.name != "G"]
        if others:
            caption += " The same for " + ", ".join(f"{n.label} ({n.title})" for n in others) + "."
        return caption

    def summary_caption(self) -> str:
        caption = ("One row per model, threshold and poison. Accuracies and ASRs are on test data, in percent; G clean "
                   "drop = B clean accuracy - G clean accuracy (points); false alarms: clean test images G flagged. "
                   "csv/summary.csv has the same figures, one row per model and threshold, at full precision.")
        others = [network for _, network in repaired_networks(self.report) if network.name != "G"]
        caption += "".join(f" {n.label} clean drop = B clean accuracy - {n.label} clean accuracy." for n in others)
        return caption

    def failed_table(self) -> Table:
        rows = [{"model": m.name, "path": m.path, "error": m.error or ""} for m in self.report.failed_models]
        return Table("failed", ["model", "path", "error"], rows)


def build_pages(report: SweepReport, samples_per_set: int) -> ReportPages:
    """Draw every figure and label the samples (loading B and G) for the complete models."""
    tables = {table.name: table for table in sweep_tables(report)}
    verdict, overview = verdict_table(report), overview_table(report, tables["summary"])
    names = [model.name for model in report.complete_models]
    sources = {"verdict": verdict, "overview": overview, "steps": tables["steps"], "ranking": tables["rankings"]}
    parts = {part: rows_by_model(table, names) for part, table in sources.items()}
    pages = []
    for position, model in enumerate(report.complete_models, start=1):
        if samples_per_set > 0:
            samples = label_samples(model, samples_per_set, report.trust_model_code)
        else:
            samples = Samples(missing=["sample images were not asked for (--samples 0)"])
        samples_png = None
        if samples.samples:
            samples_png = sample_grid_png(samples.images, [samples.caption(s) for s in samples.samples])
        pages.append(ModelPage(
            model=model,
            file=f"models/{page_stem(position, model.name)}.html",
            verdict=parts["verdict"][model.name],
            overview=parts["overview"][model.name],
            steps=parts["steps"][model.name],
            ranking=parts["ranking"][model.name],
            curve_png=curve_png(model),
            samples=samples,
            samples_png=samples_png,
            sections=stage_sections(model),
        ))
    labels = {network.name: network.label for _, network in repaired_networks(report)}
    attacks = sorted({row.attack for row in report.outcomes if row.backdoored and row.attack is not None})
    plots = {attack: png for attack in attacks if (png := leaderboard_png(report.outcomes, attack, labels))}
    return ReportPages(report, tables, verdict, overview, pages, plots)


def stage_sections(model: ModelReport) -> list[StageSection]:
    """Every stage's sections of this model's page, their figures drawn."""
    sections = []
    for stage in stages():
        if stage.presentation is None or stage.presentation.sections is None:
            continue
        for number, section in enumerate(stage.presentation.sections(model.results)):
            table = Table(f"{stage.name}-{number}", section.columns, section.rows) if section.columns else None
            png = panels_png(section.panels, f"{model.name}: {section.title}")
            if png is None and section.pictures:
                png = sample_grid_png([picture.pixels for picture in section.pictures],
                                      [[(picture.caption, None)] for picture in section.pictures])
            sections.append(StageSection(f"{stage.name}-{number}", section.title, section.caption, png, table))
    return sections


def page_stem(position: int, name: str) -> str:
    """A model's file name: its name where it is an identifier (as sweep files require), else the position and
    the name with every other character replaced, so that no name reaches outside models/ or clashes."""
    if _IDENTIFIER.fullmatch(name):
        return name
    return f"{position:02d}-{re.sub(r'[^A-Za-z0-9_-]+', '_', name)}"
