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

    def neighbourhood(self, center: torch.Tensor, radius_mm: float) -> torch.Tensor:
        """Indices of the units within ``radius_mm`` of ``center`` (x, y in mm)."""
        return torch.nonzero(((self.positions - center) ** 2).sum(1) <= radius_mm ** 2).flatten()


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
        center = torch.rand(2, generator=gen) * sheet.size_mm
        idx = sheet.neighbourhood(center, radius_mm)
        if len(idx) > max_units:
            idx = idx[torch.randperm(len(idx), generator=gen)[:max_units]]
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
        idx = current.neighbourhood(torch.rand(2, generator=gen) * sheet.size_mm, radius_mm)
        if len(idx) > max_units:
            idx = idx[torch.randperm(len(idx), generator=gen)[:max_units]]
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
    return ((sheet.positions - c) ** 2).sum(1).sqrt().view(sheet.shape)


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
