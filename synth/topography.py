"""Topographic models: every unit of a layer at a position on a cortical sheet, and TDANN's spatial loss.

TDANN (Margalit et al. 2024) lays each conv layer's C×H×W units out on a square sheet so that retinotopy is kept:
the sheet is tiled H×W, one tile per image position, and the C channels at a position take random points inside
its tile.  Its spatial correlation loss asks that, among the units of a local neighbourhood, the correlation of two
units' responses over a batch follow their closeness: SL = 1 − Pearson(r_ij, 1 / (1 + d_ij)), d in mm, averaged over
neighbourhoods drawn at random; it is added to the task loss with a weight of about 0.25.  Micro-stimulation and
inactivation of a site are ``Intervention``s on the layer, so the rest of the network and its decoder see them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import ConfigError
from .probe import Intervention

SL_WEIGHT = 0.25  # TDANN's weight of the spatial loss beside the task loss


@dataclass
class Sheet:
    """Positions in mm (N×2, x then y) of the N = C×H×W units of one layer, in ``tensor.flatten(1)`` order, on a
    square sheet ``size_mm`` across."""

    layer: str
    shape: tuple[int, int, int]
    positions: torch.Tensor
    size_mm: float

    def __post_init__(self):
        n = self.shape[0] * self.shape[1] * self.shape[2]
        if self.positions.shape != (n, 2):
            raise ConfigError(f"a sheet for {self.layer!r} of shape {self.shape} needs {n}×2 positions, "
                              f"got {tuple(self.positions.shape)}")

    def __len__(self) -> int:
        return self.positions.shape[0]

    def shuffled(self, seed: int = 0) -> Sheet:
        """The same positions dealt to the units at random: the control without topography."""
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return Sheet(self.layer, self.shape, self.positions[order], self.size_mm)

    def squared_distance(self, center: torch.Tensor) -> torch.Tensor:
        """Each unit's squared distance (mm²) from ``center`` (x, y in mm), in unit order."""
        return ((self.positions - center) ** 2).sum(1)

    def neighbourhood(self, center: torch.Tensor, radius_mm: float) -> torch.Tensor:
        """Indices of the units within ``radius_mm`` of ``center`` (x, y in mm)."""
        return torch.nonzero(self.squared_distance(center) <= radius_mm ** 2).flatten()

    def random_disc(self, radius_mm: float, max_units: int, generator: torch.Generator) -> torch.Tensor:
        """The units of a disc of ``radius_mm`` around a uniformly drawn point, at most ``max_units`` of them
        (a random subset of a fuller disc): where the spatial loss and the swaps look."""
        idx = self.neighbourhood(torch.rand(2, generator=generator) * self.size_mm, radius_mm)
        if len(idx) > max_units:
            idx = idx[torch.randperm(len(idx), generator=generator)[:max_units]]
        return idx


def retinotopic_sheet(layer: str, shape: tuple[int, int, int], size_mm: float, seed: int = 0) -> Sheet:
    """TDANN's initial layout for a C×H×W layer: tile (h, w) of an H×W tiling of the sheet holds the C units at
    image position (h, w), each at a uniformly random point inside the tile."""
    c, h, w = (int(v) for v in shape)
    if min(c, h, w) < 1 or not size_mm > 0:
        raise ConfigError(f"a sheet needs a positive C×H×W shape and size, got {shape} and {size_mm} mm")
    gen = torch.Generator().manual_seed(seed)
    rows = torch.arange(h).view(1, h, 1).expand(c, h, w).flatten()
    cols = torch.arange(w).view(1, 1, w).expand(c, h, w).flatten()
    jitter = torch.rand(c * h * w, 2, generator=gen)
    xy = torch.stack([(cols + jitter[:, 0]) * size_mm / w, (rows + jitter[:, 1]) * size_mm / h], 1)
    return Sheet(layer, (c, h, w), xy, float(size_mm))


def _pairwise_corr(x: torch.Tensor) -> torch.Tensor:
    """K×K Pearson correlations between the columns of a B×K matrix (a constant column correlates 0)."""
    z = x - x.mean(0, keepdim=True)
    z = z / z.norm(dim=0, keepdim=True).clamp_min(1e-8)
    return z.T @ z


def spatial_loss(features: torch.Tensor, sheet: Sheet, radius_mm: float, neighbourhoods: int = 8,
                 max_units: int = 500, generator: torch.Generator | None = None) -> torch.Tensor:
    """TDANN's spatial correlation loss of a B×C×H×W (or B×N) batch of responses on ``sheet``: the mean over
    ``neighbourhoods`` random discs of ``radius_mm`` (at most ``max_units`` units each) of
    1 − Pearson(response correlation r_ij, 1 / (1 + d_ij)) over the pairs of units in the disc; differentiable in
    ``features``.  0 where response similarity falls off with distance exactly so, about 1 without topography."""
    flat = features.flatten(1)
    if flat.shape[1] != len(sheet):
        raise ConfigError(f"{flat.shape[1]} units per image, but the sheet for {sheet.layer!r} places {len(sheet)}")
    if flat.shape[0] < 3:
        raise ConfigError(f"response correlations need a batch of at least 3 images, got {flat.shape[0]}")
    gen = generator or torch.Generator().manual_seed(0)
    pos = sheet.positions.to(flat.device, flat.dtype)
    losses = []
    for _ in range(neighbourhoods * 4):  # discs with fewer than 3 units are drawn again
        if len(losses) == neighbourhoods:
            break
        idx = sheet.random_disc(radius_mm, max_units, gen)
        if len(idx) < 3:
            continue
        idx = idx.to(flat.device)
        losses.append(_disc_loss(_pairwise_corr(flat[:, idx]), pos[idx]))
    if not losses:
        raise ConfigError(f"no neighbourhood of {radius_mm} mm holds 3 units on the {sheet.size_mm} mm sheet of "
                          f"{sheet.layer!r}; take a larger radius")
    return torch.stack(losses).mean()


def _disc_loss(r: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """1 − Pearson(r_ij, 1 / (1 + d_ij)) over the pairs i > j of one neighbourhood (r: K×K, pos: K×2)."""
    low = torch.tril_indices(len(pos), len(pos), -1, device=pos.device)
    closeness = 1 / (1 + torch.cdist(pos, pos)[low[0], low[1]])
    return 1 - _pairwise_corr(torch.stack([r[low[0], low[1]], closeness], 1))[0, 1]


def swap_optimize(sheet: Sheet, responses: torch.Tensor, radius_mm: float, steps: int = 200, swaps: int = 20,
                  max_units: int = 300, seed: int = 0, progress: bool = True) -> Sheet:
    """Positions pre-optimized by swaps before training (TDANN's stage 2): in each of ``steps`` random discs of
    ``radius_mm``, ``swaps`` proposed exchanges of two units' positions, each kept only where it lowers the disc's
    spatial loss for ``responses`` (B×C×H×W or B×N, e.g. the untrained network's answers to natural images).
    Swaps stay inside a disc, so the layout's retinotopy survives at the disc's scale."""
    from tqdm.auto import tqdm

    flat = responses.detach().flatten(1).float().cpu()
    if flat.shape[1] != len(sheet):
        raise ConfigError(f"{flat.shape[1]} units per image, but the sheet for {sheet.layer!r} places {len(sheet)}")
    gen = torch.Generator().manual_seed(seed)
    pos = sheet.positions.clone()
    current = Sheet(sheet.layer, sheet.shape, pos, sheet.size_mm)
    for _ in tqdm(range(steps), desc=f"swapping {sheet.layer} positions", disable=not progress):
        idx = current.random_disc(radius_mm, max_units, gen)
        if len(idx) < 3:
            continue
        r = _pairwise_corr(flat[:, idx])
        local = pos[idx].clone()
        best = _disc_loss(r, local)
        for _ in range(swaps):
            a, b = torch.randint(len(idx), (2,), generator=gen).tolist()
            if a == b:
                continue
            local[[a, b]] = local[[b, a]]
            loss = _disc_loss(r, local)
            if loss < best:
                best = loss
            else:
                local[[a, b]] = local[[b, a]]
        pos[idx] = local
    return current


# Micro-stimulation's spread of activation with current (reference: epflneuroailab's topographic perturbation code)
SPREAD_SLOPE_MM_PER_UA, SPREAD_THRESHOLD_UA = 0.00505, 5.26


def spread_mm(current_ua: float) -> float:
    """The length constant λ (mm) of the activation a current spreads around the electrode tip:
    0.00505 mm/µA × (I − 5.26 µA), so 0.23 mm at Afraz et al.'s 50 µA."""
    if not current_ua > SPREAD_THRESHOLD_UA:
        raise ConfigError(f"a current of {current_ua} µA is at or below the {SPREAD_THRESHOLD_UA} µA at which the "
                          "model's spread starts; give more current")
    return SPREAD_SLOPE_MM_PER_UA * (current_ua - SPREAD_THRESHOLD_UA)


def _distances(sheet: Sheet, center_mm: tuple[float, float]) -> torch.Tensor:
    """Each unit's distance (mm) from a point on the sheet, as a C×H×W map."""
    c = torch.as_tensor(center_mm, dtype=sheet.positions.dtype)
    if c.shape != (2,) or not torch.isfinite(c).all():
        raise ConfigError(f"a site is an (x, y) point in mm, got {center_mm!r}")
    return sheet.squared_distance(c).sqrt().view(sheet.shape)


def microstimulation(sheet: Sheet, center_mm: tuple[float, float], current_ua: float = 50.0,
                     rate_hz: float = 200.0) -> Intervention:
    """Micro-stimulation at a site of ``sheet``'s layer as an ``Intervention``: each unit's activity times a gain
    1 + (rate / 30) · exp(−d / λ(I)), d its distance from the site and λ from ``spread_mm`` (defaults: Afraz et al.
    2006, 50 µA at 200 Hz)."""
    if not rate_hz > 0:
        raise ConfigError(f"the pulse rate must be > 0 Hz, got {rate_hz}")
    lam = spread_mm(current_ua)
    gain = 1 + (rate_hz / 30) * torch.exp(-_distances(sheet, center_mm) / lam)
    x, y = center_mm
    return Intervention(sheet.layer, "scale", gain,
                        label=f"microstim({sheet.layer} at ({x:g}, {y:g}) mm, {current_ua:g} µA, {rate_hz:g} Hz)")


def inactivation(sheet: Sheet, center_mm: tuple[float, float], radius_mm: float = 1.0,
                 depth: float = 1.0) -> Intervention:
    """Muscimol-like inactivation: activity times 1 − depth · exp(−d² / 2σ²) with σ = ``radius_mm``, silencing the
    site's units fully at ``depth`` 1 and sparing those a few σ away."""
    if not radius_mm > 0 or not 0 < depth <= 1:
        raise ConfigError(f"inactivation needs radius_mm > 0 and 0 < depth <= 1, got {radius_mm} and {depth}")
    d = _distances(sheet, center_mm)
    x, y = center_mm
    return Intervention(sheet.layer, "scale", 1 - depth * torch.exp(-d ** 2 / (2 * radius_mm ** 2)),
                        label=f"inactivation({sheet.layer} at ({x:g}, {y:g}) mm, σ {radius_mm:g} mm, depth {depth:g})")


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
    ``near_mm`` / mean |Δ| over random pairs (0 for a position-shuffled map, up to 1 for a smooth one)."""
    v = values.flatten().float()
    gen = torch.Generator().manual_seed(seed)
    i, j = torch.randint(len(v), (2, pairs * 20), generator=gen)
    d = ((sheet.positions[i] - sheet.positions[j]) ** 2).sum(1).sqrt()
    close = (d < near_mm) & (i != j)
    if close.sum() < 10:
        raise ConfigError(f"fewer than 10 unit pairs lie within {near_mm} mm: take a larger distance")
    diff = (v[i] - v[j]).abs()
    return float(1 - diff[close][:pairs].mean() / diff[:pairs].mean().clamp_min(1e-12))


def sheet_image(sheet: Sheet, values: torch.Tensor, resolution_mm: float = 0.5) -> np.ndarray:
    """The sheet as an image: the mean value of the units in each ``resolution_mm`` pixel (NaN where none lie)."""
    from scipy import stats

    bins = max(1, int(round(sheet.size_mm / resolution_mm)))
    xy = sheet.positions.numpy()
    return stats.binned_statistic_2d(xy[:, 1], xy[:, 0], values.flatten().float().numpy(), "mean", bins=bins,
                                     range=[[0, sheet.size_mm], [0, sheet.size_mm]]).statistic


def patches(sheet: Sheet, values: torch.Tensor, threshold: float, resolution_mm: float = 0.5,
            min_area_mm2: float = 1.0) -> list[dict]:
    """Patches: connected regions of the sheet image (``sheet_image``) whose mean selectivity exceeds
    ``threshold``, at least ``min_area_mm2`` in area, largest first, each with its centre (mm), area (mm²), number
    of units and peak value."""
    from scipy import ndimage

    img = sheet_image(sheet, values, resolution_mm)
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
               found: list[dict] | None = None) -> str:
    """A PNG of the sheet, each unit a dot coloured by its value (diverging, centred on 0), patches outlined."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = values.flatten().float().numpy()
    lim = float(np.abs(v).max()) or 1.0
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    dots = ax.scatter(sheet.positions[:, 0], sheet.positions[:, 1], c=v, cmap="RdBu_r", vmin=-lim, vmax=lim, s=3)
    for p in found or []:
        r = (p["area_mm2"] / np.pi) ** 0.5
        ax.add_patch(plt.Circle(p["center_mm"], r, fill=False, color="k", lw=1))
    fig.colorbar(dots, ax=ax, label=label)
    ax.set(xlim=(0, sheet.size_mm), ylim=(0, sheet.size_mm), xlabel="mm", ylabel="mm", aspect="equal",
           title=title or sheet.layer)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ behaviour
def degrade(images: torch.Tensor, signal: float, seed: int = 0) -> torch.Tensor:
    """Noise-degraded stimuli at a visual-signal level in [0, 1]: each image mixed, signal : 1 − signal, with a
    phase-scrambled copy of itself (``render.phase_scramble``: same amplitude spectrum, random phase), so that
    the level changes the image's structure and not its spectrum (0: noise only, 1: the image)."""
    from .render import phase_scramble

    if not 0 <= signal <= 1:
        raise ConfigError(f"the visual signal is a fraction in [0, 1], got {signal}")
    rng = np.random.default_rng(seed)
    x = images.detach().cpu().float()
    u8 = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    noise = torch.from_numpy(np.stack([phase_scramble(im, rng) for im in u8])).permute(0, 3, 1, 2).float() / 255
    return (signal * x + (1 - signal) * noise).clamp(0, 1)


def face_choices(model, images: torch.Tensor, face_class: str = "faces", draws: int = 8) -> torch.Tensor:
    """A two-alternative face / non-face verdict per image read from the model's decoder: 'face' when the face
    class gets more than half the probability (a stochastic model: its mean over ``draws`` noise draws)."""
    if face_class not in model.classes:
        raise ConfigError(f"the model has no class {face_class!r} to read a face choice from (classes: "
                          f"{', '.join(model.classes)})")
    k = draws if model.stochastic else 1
    with torch.no_grad():
        z = model.activations(images.to(model.device), "logits", draws=k)["logits"]
    p = z.view(k, images.shape[0], -1).softmax(-1).mean(0)[:, model.classes.index(face_class)]
    return (p > 0.5).cpu()


def psychometric(model, faces: torch.Tensor, others: torch.Tensor,
                 signals: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0), face_class: str = "faces",
                 seed: int = 0) -> dict:
    """The fraction of 'face' choices against signed visual signal (+s: faces at signal s, −s: non-face objects at
    s), each level from the same noise draws, so that curves with and without a stimulation (inside
    ``model.intervene``) differ only by it.  Returns the signed levels, the fractions and the images per level."""
    levels, fractions = [], []
    for s in sorted(set(signals)):
        for sign, batch in ((-1, others), (1, faces)):
            if s == 0 and sign == 1:
                continue  # at 0 signal both are pure noise: one point
            x = degrade(batch, s, seed)
            levels.append(sign * s)
            fractions.append(float(face_choices(model, x, face_class).float().mean()))
    order = np.argsort(levels)
    return {"signal": [float(levels[i]) for i in order], "face_fraction": [fractions[i] for i in order],
            "n": int(min(len(faces), len(others)))}
