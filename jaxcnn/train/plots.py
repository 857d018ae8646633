"""Learning curves and confusion matrices as PNG.

Drawn on ``matplotlib.figure.Figure`` (the Agg canvas) without pyplot: nothing global changes,
neither at import (matplotlib is imported only when a plot is drawn) nor while drawing (no
backend switch, no pyplot figure registry), so importing ``jaxcnn.train`` leaves a user's
matplotlib set-up alone. matplotlib is in the ``plots`` extra.
"""

from __future__ import annotations

import numpy as np

from jaxcnn.utils import optional_import

__all__ = ["can_plot", "plot_run_curves", "plot_curves", "plot_history", "plot_confusion"]


def can_plot(what: str = "plots") -> bool:
    """Whether matplotlib (the ``plots`` extra) is installed; if not, says once on stdout that
    ``what`` is skipped and how to get it. The tasks call it before drawing their PNGs, so a run
    on a core install ends with its metrics and checkpoints instead of an ImportError."""
    try:
        optional_import("matplotlib", what)
        return True
    except ImportError:
        pass
    print(f"{what} skipped: matplotlib is not installed (pip install 'jaxcnn[plots]')", flush=True)
    return False


def plot_run_curves(workdir, metrics) -> None:
    """``workdir/curves.png`` from the history in ``workdir/metrics.json`` (nothing when the
    history is empty), as the tasks draw it at the end of a run."""
    import json
    import os

    with open(os.path.join(workdir, "metrics.json")) as f:
        history = json.load(f).get("history", [])
    if history:
        plot_curves(history, os.path.join(workdir, "curves.png"), metrics)


def plot_curves(history: list[dict], path, metrics=("loss", "accuracy"), x: str = "epoch") -> None:
    """One panel per metric: ``train_<m>``, ``val_<m>`` and ``test_<m>`` of each history
    record against ``x`` (the splits a record lacks are left out)."""
    metrics = [m for m in metrics if any(f"{s}_{m}" in h for h in history for s in _SPLITS)]
    fig = _figure((5 * len(metrics), 4))
    axes = fig.subplots(1, len(metrics), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for split, style in zip(_SPLITS, ("o-", "s-", "^--")):
            pts = [(h[x], h[f"{split}_{m}"]) for h in history if h.get(f"{split}_{m}") is not None]
            if pts:
                ax.plot(*zip(*pts), style, label=split if split != "val" else "validation")
        ax.set_xlabel(x)
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


_SPLITS = ("train", "val", "test")


def _figure(figsize):
    return optional_import("matplotlib.figure", "plots").Figure(figsize=figsize)


def plot_history(history: list[dict], path) -> None:
    """Loss and accuracy per epoch, train vs test."""
    ep = [h["epoch"] for h in history]
    fig = _figure((10, 4))
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(ep, [h[f"train_{key}"] for h in history], "o-", label="train")
        if "test_" + key in history[0]:
            ax.plot(ep, [h[f"test_{key}"] for h in history], "s-", label="test")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_confusion(cm: np.ndarray, path, class_names=None, title: str = "") -> None:
    """Confusion matrix with counts in the cells (rows: true class, columns: predicted)."""
    cm = np.asarray(cm)
    n = cm.shape[0]
    names = list(class_names) if class_names else [str(i) for i in range(n)]
    fig = _figure((1 + 0.5 * n, 1 + 0.5 * n))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    if n <= 30:
        thresh = cm.max() / 2 if cm.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    int(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if cm[i, j] > thresh else "black",
                )
        ax.set_xticks(range(n), names)
        ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
