"""Matplotlib figures as PNG bytes, drawn off-screen (Agg) so a report needs no display.

PNG bytes, not files, because the page inlines them as data: URIs and report.md links to
copies under figures/: one drawing serves both.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display on servers and in CI

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure

from badnet_prune.orchestrator.report.data import ModelReport
from badnet_prune.pipeline.presentation import Panel

DPI = 100


def curve_png(model: ModelReport) -> bytes:
    return _png(curve_figure(model), tight=False)


def curve_figure(model: ModelReport) -> Figure:
    """Clean validation accuracy and each ASR against the fraction pruned, with each threshold's
    accuracy line (acc0 * (1 - t)) and the step selected for it."""
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=DPI)
    fractions = [step.fraction_pruned for step in model.steps]
    axes.plot(fractions, [step.clean_accuracy for step in model.steps], color="black", lw=2, label="clean accuracy")
    for poison in model.poisons:
        values = [step.asr.get(poison, np.nan) for step in model.steps]
        axes.plot(fractions, values, lw=1.5, label=f"ASR {poison}")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    by_step = {step.step: step for step in model.steps}
    for index, entry in enumerate(model.results.thresholds):
        color = colors[(index + len(model.poisons)) % len(colors)]
        t = entry.threshold
        if model.acc0 is not None:
            axes.axhline(model.acc0 * (1 - t.value), color=color, ls="--", lw=1, label=f"acc0 x (1 - {t.key})")
        step = by_step.get(entry.step) if entry.step is not None else None
        if step is not None:
            axes.axvline(step.fraction_pruned, color=color, ls=":", lw=1)
            # thresholds that select one step share its point: the first marker is filled, each later one a
            # larger ring around it, so every threshold's marker stays visible; each has its legend entry
            axes.plot([step.fraction_pruned], [step.clean_accuracy], "o", color=color, ms=7 + 5 * index,
                      mew=2 if index else 1, fillstyle="none" if index else "full",
                      label=f"B' {t.percent}: step {step.step}")
    axes.set(xlabel="fraction of channels pruned", ylabel="percent", ylim=(-2, 102), xlim=(0, 1),
             title=f"{model.name}: pruning curve")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    # fixed margins, legend on the right: no tight layout pass, which took half of a report's time at scale
    figure.subplots_adjust(left=0.08, right=0.7, top=0.92, bottom=0.12)
    return figure


def panels_png(panels: list[Panel], title: str) -> bytes | None:
    """A stage's declared panels side by side: its series against x (the bold one its clean accuracy), the
    point it chose marked; None without panels."""
    if not panels:
        return None
    figure, all_axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.5, 3.8), dpi=DPI, squeeze=False)
    for axes, panel in zip(all_axes[0], panels, strict=True):
        for series in panel.series:
            y = [np.nan if value is None else value for value in series.y]
            if series.emphasis:
                axes.plot(series.x, y, color="black", lw=2, marker=".", label=series.label)
            else:
                axes.plot(series.x, y, lw=1.5, marker=".", label=series.label)
        if panel.mark_x is not None:
            axes.axvline(panel.mark_x, color="tab:green", ls=":", lw=1.2, label=panel.mark_label)
        axes.set(xlabel=panel.x_label, ylabel=panel.y_label, ylim=(-2, 102), title=panel.title)
        if all(float(x).is_integer() for series in panel.series for x in series.x):
            axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    all_axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.suptitle(title)
    figure.tight_layout()
    return _png(figure)


CAPTION_COLORS = {None: "#222222", "attack": "#cc0000", "flagged": "#1a4fa0"}
CAPTION_POINTS = 10  # at DPI 100 and the PNG's own size: about 14 px on the page


def sample_grid_png(images: list[np.ndarray], captions: list[list[tuple[str, str | None]]], columns: int = 6) -> bytes:
    """Images (H, W, 3, pixel values 0..255) in a grid, each above its caption lines, coloured by their mark
    (samples.ATTACK red, samples.FLAGGED blue). Axes are placed by hand, each row as tall as its image and
    caption, so no caption runs into the row below; the page shows the PNG at its own size, so 10 pt stays
    about 14 px."""
    rows = max(1, -(-len(images) // columns))
    height, width = images[0].shape[:2] if images else (1, 1)
    cell, image_w = 1.9, 1.6  # inches
    image_h = image_w * height / width
    line_h = CAPTION_POINTS * 1.3 / 72
    lines = max((len(caption) for caption in captions), default=1)
    row_h = image_h + lines * line_h + 0.25
    figure = plt.figure(figsize=(columns * cell, rows * row_h), dpi=DPI)
    for position, (image, caption) in enumerate(zip(images, captions, strict=True)):
        row, column = divmod(position, columns)
        top = rows * row_h - row * row_h - 0.05
        axis = figure.add_axes(((column * cell + (cell - image_w) / 2) / (columns * cell),
                                (top - image_h) / (rows * row_h), image_w / (columns * cell), image_h / (rows * row_h)))
        axis.axis("off")
        axis.imshow(np.clip(image, 0, 255).astype(np.uint8))
        for line, (text, mark) in enumerate(caption):
            axis.annotate(text, (0.5, 0), xycoords="axes fraction", xytext=(0, -3 - line * CAPTION_POINTS * 1.3),
                          textcoords="offset points", ha="center", va="top", fontsize=CAPTION_POINTS,
                          color=CAPTION_COLORS[mark], fontweight="bold" if mark else "normal")
    return _png(figure)


def _png(figure: Figure, *, tight: bool = True) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight" if tight else None)
    plt.close(figure)
    return buffer.getvalue()
