"""The report assembled once (tables, figures, samples) and shared by the HTML and Markdown writers,
so both say the same thing with the same numbers."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.report.data import ModelReport, SweepReport
from orchestrator.report.figures import curve_png, fine_tune_png, sample_grid_png
from orchestrator.report.samples import Samples, label_samples
from orchestrator.report.tables import Table, model_ranking_table, model_steps_table, sweep_tables


@dataclass(frozen=True)
class ModelPage:
    """A complete model's section: its tables, curve and labelled samples."""

    model: ModelReport
    steps: Table
    ranking: Table
    curve_png: bytes
    samples: Samples
    samples_png: bytes | None
    fine_tune_png: bytes | None = None  # fine-pruning's curves, where the sweep fine-tuned

    def description(self) -> str:
        m = self.model
        acc0 = "?" if m.acc0 is None else f"{m.acc0:.2f}%"
        return (f"{m.path} (sha256 {m.sha256[:12]}..., input scale {m.input_scale:g}); "
                f"clean validation accuracy of B before pruning (acc0): {acc0}.")

    def fine_tune_caption(self) -> str:
        return ("Fine-pruning: B'_t fine-tuned on part of the clean validation file; the epoch kept is the one with "
                "the best accuracy on the held-out rest (ties: the earliest; epoch 0 is B'_t itself). The ASR on "
                "each poisoned validation set is shown for the record and never used to choose.")

    def samples_caption(self) -> str:
        thresholds = ", ".join(t.percent for t in self.samples.thresholds) or "none"
        return (f"Evenly spaced clean and poisoned test images; label is the file's label (on poisoned files the "
                f"attacker's target), B and G (thresholds {thresholds}) as labelled now by the stored model "
                f"files; N = {self.samples.num_classes} means G flagged a backdoor.")

    def samples_table(self) -> Table:
        thresholds = self.samples.thresholds
        columns = ["dataset", "index", "label", "B", *(f"G {t.percent}" for t in thresholds)]
        rows = []
        for sample in self.samples.samples:
            row = {"dataset": sample.dataset, "index": sample.index, "label": sample.label,
                   "B": self.samples.name(sample.b)}
            row.update({f"G {t.percent}": self.samples.name(sample.g[t]) for t in thresholds})
            rows.append(row)
        return Table("samples", columns, rows)


@dataclass(frozen=True)
class ReportPages:
    report: SweepReport
    tables: dict[str, Table]
    models: list[ModelPage]

    def description(self) -> str:
        r = self.report
        thresholds = ", ".join(t.percent for t in r.thresholds)
        return (f"Status {r.status}; {len(r.models)} model(s), {len(r.complete_models)} complete, "
                f"{len(r.failed_models)} failed. Thresholds {thresholds}, policy {r.policy}, "
                f"pruned layer {r.prune_layer}, ranked on {r.rank_layer}. All figures read from the database.")

    def summary_caption(self) -> str:
        caption = (f"One row per model and threshold. Accuracies and ASRs are on test data, in percent; "
                   f"clean_drop = B_clean_accuracy - G_clean_accuracy (points). removed: poisons whose ASR under G "
                   f"(pruning alone) is at most {self.report.asr_bound:g}%; kept: the others.")
        if "fine_removed" in self.tables["summary"].columns:
            caption += (" Fine-pruning: G_fine is G'' (the repaired net of B and the fine-tuned B''), fine_clean_drop "
                        "= B_clean_accuracy - G_fine_clean_accuracy; fine_removed and fine_kept as removed and kept, "
                        "under G''.")
        return caption

    def failed_table(self) -> Table:
        rows = [{"model": m.name, "path": m.path, "error": m.error or ""} for m in self.report.failed_models]
        return Table("failed", ["model", "path", "error"], rows)


def build_pages(report: SweepReport, samples_per_set: int) -> ReportPages:
    """Draw every figure and label the samples (loading B and G) for the complete models."""
    tables = {table.name: table for table in sweep_tables(report)}
    pages = []
    for model in report.complete_models:
        if samples_per_set > 0:
            samples = label_samples(model, samples_per_set, report.trust_model_code)
        else:
            samples = Samples(missing=["sample images were not asked for (--samples 0)"])
        samples_png = None
        if samples.samples:
            samples_png = sample_grid_png(samples.images, [samples.caption(s) for s in samples.samples])
        pages.append(ModelPage(
            model=model,
            steps=model_steps_table(tables["steps"], model),
            ranking=model_ranking_table(tables["rankings"], model),
            curve_png=curve_png(model),
            samples=samples,
            samples_png=samples_png,
            fine_tune_png=fine_tune_png(model),
        ))
    return ReportPages(report, tables, pages)
