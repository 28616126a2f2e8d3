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

from orchestrator.report.data import ModelReport

DPI = 100


def curve_png(model: ModelReport) -> bytes:
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
            # thresholds that select one step share its marker; each still has its legend entry
            axes.plot([step.fraction_pruned], [step.clean_accuracy], "o", color=color, ms=7 + 3 * index,
                      fillstyle="none" if index else "full", label=f"B' {t.percent}: step {step.step}")
    axes.set(xlabel="fraction of channels pruned", ylabel="percent", ylim=(-2, 102), xlim=(0, 1),
             title=f"{model.name}: pruning curve")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.tight_layout()
    return _png(figure)


def fine_tune_png(model: ModelReport) -> bytes | None:
    """Per fine-tuned threshold, hold-out clean accuracy and each poisoned validation set's ASR against the
    epoch (0 = B'_t), the epoch kept (chosen on hold-out accuracy alone) marked; None when nothing was tuned."""
    tuned = [(entry.threshold, entry.fine) for entry in model.results.thresholds
             if entry.fine is not None and entry.fine.kept_epoch is not None and entry.fine.epochs]
    if not tuned:
        return None
    figure, all_axes = plt.subplots(1, len(tuned), figsize=(4.2 * len(tuned) + 1.5, 3.8), dpi=DPI, squeeze=False)
    for axes, (threshold, fine) in zip(all_axes[0], tuned, strict=True):
        epochs = [e.epoch for e in fine.epochs]
        axes.plot(epochs, [e.holdout_accuracy for e in fine.epochs], color="black", lw=2, marker=".",
                  label="hold-out clean accuracy")
        for poison in fine.poisons:
            axes.plot(epochs, [e.asr.get(poison, np.nan) for e in fine.epochs], lw=1.5, marker=".",
                      label=f"ASR {poison} (validation)")
        kept = next(e for e in fine.epochs if e.epoch == fine.kept_epoch)
        axes.axvline(kept.epoch, color="tab:green", ls=":", lw=1.2)
        axes.plot([kept.epoch], [kept.holdout_accuracy], "o", color="tab:green", ms=9, fillstyle="none",
                  label="epoch kept")
        axes.set(xlabel="epoch", ylabel="percent", ylim=(-2, 102), title=f"B'' {threshold.percent}: epoch {kept.epoch}")
        axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    all_axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    figure.suptitle(f"{model.name}: fine-tuning B'_t on clean validation data")
    figure.tight_layout()
    return _png(figure)


def sample_grid_png(images: list[np.ndarray], captions: list[str], columns: int = 6) -> bytes:
    """Images (H, W, 3, pixel values 0..255) in a grid, each captioned with its labels."""
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 1.9, rows * 2.8), dpi=DPI, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, caption in zip(axes.flat, images, captions, strict=False):
        axis.imshow(np.clip(image, 0, 255).astype(np.uint8))
        axis.set_title(caption, fontsize=7)
    figure.tight_layout()
    return _png(figure)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()
