"""Selectivity maps on a sheet: per-unit selectivity, smoothness, patches, the face localizer, and their plots."""
from __future__ import annotations

import os

import numpy as np
import torch

from synth.errors import ConfigError
from synth.zoo.sheets import Sheet, sheet_of


# ------------------------------------------------------------------------------------------ selectivity maps
def selectivity(preferred: torch.Tensor, other: torch.Tensor, measure: str = "t") -> torch.Tensor:
    """Per-unit selectivity for one condition over another (e.g. faces vs objects) from n×N responses (or
    n×C×H×W): Welch's t (``scipy.stats.ttest_ind``) or d′ = (μ₁ − μ₂) / √((σ₁² + σ₂²) / 2); 0 for a unit silent in
    both."""
    from scipy import stats

    a, b = preferred.detach().flatten(1).double().cpu(), other.detach().flatten(1).double().cpu()
    if a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise ConfigError(f"selectivity needs two sets of at least 2 responses from the same units, got "
                          f"{tuple(a.shape)} and {tuple(b.shape)}")
    if measure == "t":
        with np.errstate(invalid="ignore", divide="ignore"):
            t = stats.ttest_ind(a.numpy(), b.numpy(), axis=0, equal_var=False).statistic
        out = torch.from_numpy(np.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0))
    elif measure == "dprime":
        pooled = ((a.var(0) + b.var(0)) / 2).sqrt()
        out = torch.where(pooled > 0, (a.mean(0) - b.mean(0)) / pooled.clamp_min(1e-12), torch.zeros_like(pooled))
    else:
        raise ConfigError(f"measure must be 't' or 'dprime', got {measure!r}")
    return out.float()


def smoothness(sheet: Sheet, values: torch.Tensor, near_mm: float = 1.0, pairs: int = 20000, seed: int = 0) -> float:
    """How much more alike nearby units' values are than any two units': 1 − mean |Δ| over pairs closer than
    ``near_mm`` / mean |Δ| over random pairs (0 for a position-shuffled map, up to 1 for a smooth one).  The close
    pairs come from a k-d tree (scipy's ``cKDTree.query_pairs``), all of them or ``pairs`` drawn from them, so a
    dense sheet is measured on as many as a sparse one."""
    from scipy.spatial import cKDTree

    v = values.flatten().double().numpy()
    close = cKDTree(sheet.positions.double().numpy()).query_pairs(near_mm, output_type="ndarray")
    if len(close) < 10:
        raise ConfigError(f"fewer than 10 unit pairs lie within {near_mm} mm: take a larger distance")
    rng = np.random.default_rng(seed)
    if len(close) > pairs:
        close = close[rng.choice(len(close), pairs, replace=False)]
    i, j = rng.integers(len(v), size=(2, pairs))
    i, j = i[i != j], j[i != j]
    return float(1 - np.abs(v[close[:, 0]] - v[close[:, 1]]).mean() / max(np.abs(v[i] - v[j]).mean(), 1e-12))


def sheet_image(sheet: Sheet, values: torch.Tensor, resolution_mm: float = 0.5,
                smooth_mm: float | None = None) -> np.ndarray:
    """The sheet as an image of ``resolution_mm`` pixels: the mean value of the units in each (NaN where none
    lie), or with ``smooth_mm`` the Gaussian-weighted mean of all units around each pixel's centre (σ in mm, as
    an fMRI map is smoothed)."""
    from scipy import stats

    if smooth_mm is not None:
        n = max(1, int(round(sheet.size_mm / resolution_mm)))
        c = (torch.arange(n, dtype=torch.float32) + 0.5) * sheet.size_mm / n
        centres = torch.stack(torch.meshgrid(c, c, indexing="xy"), -1).view(-1, 2)
        w = torch.exp(-torch.cdist(centres, sheet.positions.float()) ** 2 / (2 * smooth_mm ** 2))
        return ((w @ values.flatten().float()) / w.sum(1).clamp_min(1e-30)).view(n, n).numpy()
    bins = max(1, int(round(sheet.size_mm / resolution_mm)))
    xy = sheet.positions.numpy()
    return stats.binned_statistic_2d(xy[:, 1], xy[:, 0], values.flatten().float().numpy(), "mean", bins=bins,
                                     range=[[0, sheet.size_mm], [0, sheet.size_mm]]).statistic


def patches(sheet: Sheet, values: torch.Tensor, threshold: float, resolution_mm: float = 0.5,
            min_area_mm2: float = 1.0, smooth_mm: float | None = None) -> list[dict]:
    """Patches: connected regions of the sheet image (``sheet_image``, smoothed with ``smooth_mm``) whose mean
    selectivity exceeds ``threshold``, at least ``min_area_mm2`` in area, largest first, each with its centre
    (mm), area (mm²), number of units and peak value."""
    from scipy import ndimage

    img = sheet_image(sheet, values, resolution_mm, smooth_mm)
    labels, n = ndimage.label(np.nan_to_num(img, nan=-np.inf) > threshold)
    px = sheet.size_mm / img.shape[0]
    v = values.flatten().float()
    col = (sheet.positions[:, 0] / px).long().clamp(max=img.shape[1] - 1)
    row = (sheet.positions[:, 1] / px).long().clamp(max=img.shape[0] - 1)
    unit_label = torch.from_numpy(labels)[row, col]
    out = []
    for k in range(1, n + 1):
        area = float((labels == k).sum()) * px * px
        members = unit_label == k
        if area < min_area_mm2 or not members.any():
            continue
        cy, cx = ndimage.center_of_mass(labels == k)
        out.append({"center_mm": (float((cx + 0.5) * px), float((cy + 0.5) * px)), "area_mm2": area,
                    "units": int(members.sum()), "peak": float(v[members].max())})
    return sorted(out, key=lambda p: -p["area_mm2"])


def plot_sheet(sheet: Sheet, values: torch.Tensor, path: str, title: str = "", label: str = "selectivity (t)",
               threshold: float | None = None) -> str:
    """A PNG of the sheet, each unit a dot coloured by its value (diverging, centred on 0), with the outline of
    the smoothed map at ``threshold`` (the patches of ``face_patches``) where one is given."""
    return plot_sheets([(sheet, values, title or sheet.layer, threshold)], path, label)


def outline_patches(ax, sheet: Sheet, values: torch.Tensor, threshold: float, lw: float = 1.2) -> None:
    """Draw on a matplotlib axis the contour of the smoothed map (σ ``PATCH_SMOOTH_MM``) at ``threshold``: the
    outline of ``face_patches``' patches."""
    img = sheet_image(sheet, values, PATCH_RESOLUTION_MM, PATCH_SMOOTH_MM)
    c = (np.arange(img.shape[0]) + 0.5) * sheet.size_mm / img.shape[0]
    if img.max() > threshold:
        ax.contour(c, c, img, levels=[threshold], colors="k", linewidths=lw)


def plot_sheets(panels: list[tuple[Sheet, torch.Tensor, str, float | None]], path: str | os.PathLike,
                label: str = "selectivity (t)") -> str:
    """Sheets side by side (e.g. a model's face map beside its shuffled control): each panel a (sheet, values,
    title, threshold) tuple on one colour scale, units as dots (where a sheet has more than ``DENSE_UNITS``, every
    panel as its map smoothed with σ ``PATCH_SMOOTH_MM``, the units as points over it), and the smoothed map's
    contour at the threshold outlining the patches."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = any(len(sheet) > DENSE_UNITS for sheet, _, _, _ in panels)  # then every panel is its smoothed map
    maps = [sheet_image(sheet, v, PATCH_RESOLUTION_MM, PATCH_SMOOTH_MM) if dense else v.flatten().float().numpy()
            for sheet, v, _, _ in panels]
    lim = max(float(np.nanmax(np.abs(m))) for m in maps) or 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels) + 0.6, 3.6), squeeze=False)
    for ax, (sheet, values, title, threshold), shown in zip(axes[0], panels, maps):
        if dense:  # a dense sheet reads as its smoothed map, the units as points over it
            dots = ax.imshow(shown, origin="lower", extent=(0, sheet.size_mm, 0, sheet.size_mm), cmap="RdBu_r",
                             vmin=-lim, vmax=lim)
            ax.scatter(sheet.positions[:, 0], sheet.positions[:, 1], s=0.05, color="k", alpha=0.3, linewidths=0)
        else:
            dots = ax.scatter(sheet.positions[:, 0], sheet.positions[:, 1], c=shown, cmap="RdBu_r", vmin=-lim,
                              vmax=lim, s=float(np.clip(4000 / len(sheet), 2, 60)))
        if threshold is not None:
            outline_patches(ax, sheet, values, threshold)
        ax.set(xlim=(0, sheet.size_mm), ylim=(0, sheet.size_mm), xlabel="mm", ylabel="mm", aspect="equal")
        ax.set_title(title, fontsize=8)
    fig.colorbar(dots, ax=list(axes[0]), label=label + (f", smoothed (σ {PATCH_SMOOTH_MM:g} mm)" if dense else ""))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return str(path)


# ------------------------------------------------------------------------------------------ the localizer on a sheet
# Face patches as an fMRI localizer finds them: the faces-vs-objects t map smoothed (σ 1 mm), thresholded where it
# beats the same map with the positions shuffled (99th percentile over 20 shuffles: p < 0.01 per pixel), and kept
# where a cluster covers at least 1 mm².
PATCH_SMOOTH_MM, PATCH_RESOLUTION_MM, PATCH_MIN_MM2, PATCH_Q, PATCH_SHUFFLES = 1.0, 0.25, 1.0, 0.99, 20
DENSE_UNITS = 2000  # a sheet with more units is drawn as its smoothed map (dots would hide one another)


def null_threshold(sheet: Sheet, values: torch.Tensor, q: float = PATCH_Q, shuffles: int = PATCH_SHUFFLES,
                   smooth_mm: float = PATCH_SMOOTH_MM, resolution_mm: float = PATCH_RESOLUTION_MM,
                   seed: int = 1000) -> float:
    """The ``q`` quantile of the smoothed map's pixels over ``shuffles`` position shuffles: the value a pixel
    must beat to be selective beyond chance arrangement (a permutation threshold)."""
    null = [sheet_image(sheet.shuffled(seed + k), values, resolution_mm, smooth_mm) for k in range(shuffles)]
    return float(np.quantile(np.stack(null), q))


def face_patches(sheet: Sheet, t: torch.Tensor, threshold: float | None = None) -> tuple[list[dict], float]:
    """Face patches of a faces-vs-objects t map (``PATCH_*`` settings) and the threshold used."""
    thr = null_threshold(sheet, t) if threshold is None else threshold
    return patches(sheet, t, thr, PATCH_RESOLUTION_MM, PATCH_MIN_MM2, PATCH_SMOOTH_MM), thr


def localizer_maps(model, layer: str, n: int = 100, measure: str = "t", workers: int = 1) -> dict[str, torch.Tensor]:
    """Selectivity of a sheet's units in the face localizer (``data.localizer``, ``n`` images per condition):
    faces vs non-face objects, and intact vs part-scrambled faces."""
    from synth.world.data import localizer

    sheet = sheet_of(model, layer)
    conditions = localizer(n, workers=workers)
    with torch.no_grad():
        r = {k: sheet.responses(model.activations(b.tensor().to(model.device), sheet.layer)[sheet.layer]).cpu()
             for k, b in conditions.items()}
    return {"faces_vs_objects": selectivity(r["faces"], r["objects"], measure),
            "faces_vs_scrambled": selectivity(r["faces"], r["scrambled_faces"], measure)}


def topography_metrics(model, n: int = 100, workers: int = 1, seed: int = 0) -> dict:
    """A topographic model's card entry per sheet: the smoothness of its faces-vs-objects map against the same
    positions shuffled, within two units' spacing and within 1 mm (a scale every sheet shares), and the face
    patches (``face_patches``) of both at the same threshold."""
    out = {}
    for layer, sheet in model.sheets.items():
        t = localizer_maps(model, layer, n, "t", workers)["faces_vs_objects"]
        control = sheet.shuffled(seed)
        near = 2 * float(np.sqrt(sheet.size_mm ** 2 / len(sheet)))  # two units' spacing
        found, threshold = face_patches(sheet, t)
        found_control, _ = face_patches(control, t, threshold)
        out[layer] = {"units": len(sheet), "size_mm": sheet.size_mm, "near_mm": round(near, 3),
                      "face_smoothness": smoothness(sheet, t, near),
                      "face_smoothness_shuffled": smoothness(control, t, near),
                      "face_smoothness_1mm": smoothness(sheet, t, 1.0),  # one scale for every sheet
                      "face_smoothness_1mm_shuffled": smoothness(control, t, 1.0),
                      "face_units_t5": int((t > 5).sum()), "patch_threshold_t": round(threshold, 3),
                      "patches": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in p.items()}
                                  for p in found[:5]],
                      "patches_shuffled": len(found_control), "localizer_n": n}
    return out
