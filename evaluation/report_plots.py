"""Plots of the dataset report (PNG, matplotlib's Agg canvas) and their TensorBoard copy.

No pyplot and no global backend switch: figures are drawn on ``matplotlib.figure.Figure`` with
an explicit Agg canvas, so importing this module changes nothing for the caller.

- ``metrics_per_source.png``: records, attribute accuracies, distinct-n / self-BLEU-4, and
  vocabulary per source, in the order given (``ground_truth`` drawn as a dashed reference line);
- ``caption_length_hist.png``: caption length in tokens, one histogram per source;
- ``similarity_hist.png``: video-text similarity, one histogram per source (only when a
  similarity function was given).

:func:`log_to_tensorboard` writes the numbers as scalars (step = source index, the mapping
index → source written as text), the table as text and every PNG as an image.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

REFERENCE = "ground_truth"


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)
    return path


def _series(sources: Mapping[str, Any], getter) -> list[float]:
    values = []
    for metrics in sources.values():
        try:
            v = getter(metrics)
        except (KeyError, TypeError):
            v = None
        values.append(float("nan") if v is None else float(v))
    return values


def _line_panel(ax, names: list[str], reference: Mapping[str, Any] | None, series: dict, title: str) -> None:
    x = list(range(len(names)))
    for i, (label, (values, ref)) in enumerate(series.items()):
        colour = f"C{i}"
        if names:
            ax.plot(x, values, marker="o", color=colour, label=label)
        if ref is not None:
            ax.axhline(ref, color=colour, linestyle="--", linewidth=1)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_title(title + (" (dashed: ground truth)" if reference is not None else ""), fontsize=9)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=7)


def plot_metrics_per_source(metrics: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Four panels of metrics against the sources, in report order."""
    all_sources = metrics["sources"]
    reference = all_sources.get(REFERENCE)
    sources = {k: v for k, v in all_sources.items() if k != REFERENCE}
    names = list(sources)

    def spec(getter):
        ref = None
        if reference is not None:
            try:
                ref = getter(reference)
            except (KeyError, TypeError):
                ref = None
        return _series(sources, getter), ref

    fig = Figure(figsize=(11, 7.5))
    axes = fig.subplots(2, 2)
    _line_panel(axes[0][0], names, reference, {
        "records": spec(lambda m: m["quantity"]["records"]),
        "clips": spec(lambda m: m["quantity"]["clips"]),
    }, "quantity")
    _line_panel(axes[0][1], names, reference, {
        a: spec(lambda m, a=a: m["quality"]["attr_accuracy"][a])
        for a in ("shape", "color", "motion", "scene", "mean")
    }, "attribute accuracy")
    _line_panel(axes[1][0], names, reference, {
        "distinct-1": spec(lambda m: m["diversity"]["distinct_1"]),
        "distinct-2": spec(lambda m: m["diversity"]["distinct_2"]),
        "self-BLEU-4": spec(lambda m: m["diversity"]["self_bleu_4"]),
    }, "diversity (self-BLEU: lower is more diverse)")
    _line_panel(axes[1][1], names, reference, {
        "vocabulary": spec(lambda m: m["diversity"]["vocabulary"]),
    }, "vocabulary size")
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_length_histograms(histograms: Mapping[str, Mapping[int, int]], path: str | os.PathLike) -> Path:
    """Caption length (tokens) histograms, one step outline per source, as fractions."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    longest = max((max(h) for h in histograms.values() if h), default=1)
    edges = list(range(0, min(longest, 200) + 2))
    for name, hist in histograms.items():
        total = sum(hist.values())
        if not total:
            continue
        weights = [0.0] * (len(edges) - 1)
        for length, count in hist.items():
            weights[min(length, len(weights) - 1)] += count / total
        ax.stairs(weights, edges, label=name, linewidth=1.5)
    ax.set_xlabel("caption length (tokens)")
    ax.set_ylabel("fraction of captions")
    ax.grid(alpha=0.3)
    if histograms:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_similarity_histograms(
    histograms: Mapping[str, tuple[Sequence[float], Sequence[int]]], path: str | os.PathLike
) -> Path:
    """Video-text similarity histograms: ``{source: (bin edges, counts)}``, as fractions."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.subplots()
    for name, (edges, counts) in histograms.items():
        total = sum(counts)
        if total:
            ax.stairs([c / total for c in counts], list(edges), label=name, linewidth=1.5)
    ax.set_xlabel("video-text similarity")
    ax.set_ylabel("fraction of records")
    ax.grid(alpha=0.3)
    if histograms:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(path))


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric leaves of one source's metrics worth plotting, flattened to tags."""
    out = {}
    q, d, ql = metrics["quantity"], metrics["diversity"], metrics["quality"]
    for key in ("records", "clips", "failures", "skipped", "mean_caption_length"):
        out[f"quantity/{key}"] = q.get(key)
    for key in ("vocabulary", "distinct_1", "distinct_2", "entropy", "self_bleu_4"):
        out[f"diversity/{key}"] = d.get(key)
    balance = d.get("category_balance") or {}
    out["diversity/category_balance"] = balance.get("normalized_entropy")
    for key, value in (ql.get("attr_accuracy") or {}).items():
        out[f"quality/attr_accuracy/{key}"] = value
    similarity = ql.get("similarity") or {}
    out["quality/similarity/mean"] = similarity.get("mean")
    out["quality/similarity/failed"] = similarity.get("failed")
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_to_tensorboard(
    metrics: Mapping[str, Any], log_dir: str | os.PathLike, images: Sequence[str | os.PathLike] = (),
    table: str = "",
) -> None:
    """Scalars per source (step = position in the report), the table as text, PNGs as images."""
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        names = list(metrics["sources"])
        for step, name in enumerate(names):
            for tag, value in _scalars(metrics["sources"][name]).items():
                writer.add_scalar(f"dataset_report/{tag}", value, step)
        writer.add_text("dataset_report/sources", "  \n".join(f"step {i}: {n}" for i, n in enumerate(names)))
        if table:
            writer.add_text("dataset_report/table", table)
        for image in images:
            with Image.open(image) as im:
                array = np.asarray(im.convert("RGB"))
            writer.add_image(f"dataset_report/{Path(image).stem}", array, dataformats="HWC")
    finally:
        writer.close()
