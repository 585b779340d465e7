"""PNG figures (matplotlib, headless). Files are written atomically: temp file, then rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from deephash_cli.artifacts import make_public  # noqa: E402
from deephash_cli.errors import DeephashError  # noqa: E402


def save_figure(figure, path: str | os.PathLike[str], force: bool = False, dpi: int = 110) -> Path:
    """Save ``figure`` as PNG at ``path`` atomically; an existing file needs ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise DeephashError(f"{path} exists; pass --force to overwrite it")
    if not path.parent.exists():
        raise DeephashError(f"output folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        figure.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        make_public(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(figure)
        Path(tmp).unlink(missing_ok=True)
    return path


def scatter_by_class(points: np.ndarray, labels: np.ndarray, class_names: Sequence[str], title: str):
    """A 2-D scatter, one colour per class, legend of class names. Returns the figure."""
    figure, axes = plt.subplots(figsize=(7.5, 6.5))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for c in np.unique(labels):
        rows = labels == c
        name = class_names[c] if c < len(class_names) else str(c)
        axes.scatter(points[rows, 0], points[rows, 1], s=4, alpha=0.7, color=cmap(int(c) % cmap.N), label=name,
                     linewidths=0)
    axes.set_title(title, fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])
    if len(class_names) <= 20:
        axes.legend(markerscale=3, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return figure


def line_plot(series: Mapping[str, Sequence[Sequence[float]]], *, xlabel: str, ylabel: str, title: str,
              logx: bool = False):
    """One line per named series of (x, y) or (x, y, yerr): ± yerr error bars where yerr is not NaN (e.g. the
    standard deviation over seeds). Returns the figure."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, (x, y, *rest) in series.items():
        errors = np.asarray(rest[0], dtype=float) if rest else None
        if errors is not None and np.isfinite(errors).any():
            axes.errorbar(x, y, yerr=np.nan_to_num(errors, nan=0.0), marker="o", markersize=3, capsize=3,
                          errorevery=np.isfinite(errors), label=name)
        else:
            axes.plot(x, y, marker="o", markersize=3, label=name)
    if logx:
        axes.set_xscale("log")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return figure
