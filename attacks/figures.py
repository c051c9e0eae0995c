"""Pictures of attacks: sheets of images with verdicts, and accuracy against ε.  Matplotlib with the Agg
backend, written atomically as PNG; nothing is shown on screen."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from synth.files import atomic  # noqa: E402

Cell = tuple[torch.Tensor, str]


def image_grid(rows: Sequence[Sequence[Cell]], path: str | os.PathLike, title: str = "",
               columns: Sequence[str] = ()) -> Path:
    """A grid of 3×H×W [0,1] images, each with a caption; column headings on the first row."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.3 * n_cols, 2.5 * n_rows + 0.4), squeeze=False)
    for r, row in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(row):
                img, caption = row[c]
                ax.imshow(img.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_title(caption, fontsize=7)
            if r == 0 and c < len(columns):
                ax.text(0.5, 1.22, columns[c], transform=ax.transAxes, ha="center", fontsize=8, weight="bold")
    top = 1.0
    if title:
        top = 1 - 0.45 / fig.get_figheight()
        fig.suptitle(title, fontsize=10, y=0.995)
    fig.tight_layout(rect=(0, 0, 1, top))
    return save_figure(fig, path)


def accuracy_plot(curves: Mapping[str, tuple[torch.Tensor, torch.Tensor]], path: str | os.PathLike, norm: str,
                  title: str = "", ylabel: str = "accuracy") -> Path:
    """Lines of a quantity (accuracy by default) against ε, one per model or condition; L-inf ε in /255 units."""
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    scale = 255 if norm == "linf" else 1
    for name, (eps, acc) in curves.items():
        ax.plot((torch.as_tensor(eps) * scale).tolist(), torch.as_tensor(acc).tolist(), marker="o", ms=3, label=name)
    ax.set_xlabel("ε (×1/255, L-inf)" if norm == "linf" else "ε (L2)")
    ax.set_ylabel(ylabel)
    if ylabel == "accuracy":
        ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
