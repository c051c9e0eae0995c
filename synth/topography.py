"""Topographic models: every unit of a layer at a position on a cortical sheet, and TDANN's spatial loss.

TDANN (Margalit et al. 2024) lays each conv layer's C×H×W units out on a square sheet so that retinotopy is kept:
the sheet is tiled H×W, one tile per image position, and the C channels at a position take random points inside
its tile.  Its spatial correlation loss asks that, among the units of a local neighbourhood, the correlation of two
units' responses over a batch follow their closeness: SL = 1 − Pearson(r_ij, 1 / (1 + d_ij)), d in mm, averaged over
neighbourhoods drawn at random; it is added to the task loss with a weight of about 0.25.  Micro-stimulation and
inactivation of a site are ``Intervention``s on the layer, so the rest of the network and its decoder see them.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError, ConfigError, UnknownNameError
from .files import atomic
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

    @property
    def per_channel(self) -> bool:
        """Whether the sheet places channels (shape C×1×1) rather than every unit of a C×H×W map."""
        return tuple(self.shape[1:]) == (1, 1)

    def responses(self, features: torch.Tensor) -> torch.Tensor:
        """B×N responses of the sheet's units from a layer's B×C×H×W (or B×N) output: a per-channel sheet
        takes each channel's mean over space."""
        if features.dim() == 4 and self.per_channel:
            features = features.mean((2, 3))
        flat = features.flatten(1)
        if flat.shape[1] != len(self):
            raise ConfigError(f"{flat.shape[1]} units per image, but the sheet for {self.layer!r} places {len(self)}")
        return flat

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
    image position (h, w), each at a uniformly random point inside the tile.  A shape C×1×1 lays out channels
    (each a unit pooled over space) at random over the whole sheet, for areas such as the embedded IT whose
    receptive fields span the image."""
    c, h, w = (int(v) for v in shape)
    if min(c, h, w) < 1 or not size_mm > 0:
        raise ConfigError(f"a sheet needs a positive C×H×W shape and size, got {shape} and {size_mm} mm")
    gen = torch.Generator().manual_seed(seed)
    rows = torch.arange(h).view(1, h, 1).expand(c, h, w).flatten()
    cols = torch.arange(w).view(1, 1, w).expand(c, h, w).flatten()
    jitter = torch.rand(c * h * w, 2, generator=gen)
    xy = torch.stack([(cols + jitter[:, 0]) * size_mm / w, (rows + jitter[:, 1]) * size_mm / h], 1)
    return Sheet(layer, (c, h, w), xy, float(size_mm))


SHEETS_FORMAT = "phosphene-sheets-1"


def save_sheets(sheets: Mapping[str, Sheet], path: str | os.PathLike) -> Path:
    """Write sheets (positions, shapes, sizes) atomically to a tensors-only file that ``load_sheets`` reads back
    with ``torch.load(weights_only=True)``."""
    data = {"format": SHEETS_FORMAT, "layers": {s.layer: {"positions": s.positions.float().contiguous(),
                                                           "shape": [int(v) for v in s.shape],
                                                           "size_mm": float(s.size_mm)} for s in sheets.values()}}
    path = Path(path)
    with atomic(path) as tmp:
        torch.save(data, tmp)
    return path


def load_sheets(path: str | os.PathLike) -> dict[str, Sheet]:
    """Sheets by layer from a phosphene positions file (``save_sheets``), a TDANN-style ``.npz`` per layer (its
    LayerPositions fields: ``coordinates`` N×2 in mm, ``dims`` C×H×W or (N,), optional ``name`` and ``size_mm``;
    the sheet's size is otherwise the coordinates' extent), or a folder of such files.  Pickles are refused."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".pt", ".pth", ".pkl"))
        if not files:
            raise CheckpointError(f"{path} holds no positions files (.pt from save_sheets, or .npz per layer)")
        return {k: v for f in files for k, v in load_sheets(f).items()}
    if not path.is_file():
        raise CheckpointError(f"positions file not found: {path}")
    if path.suffix == ".pkl":
        raise CheckpointError(f"{path} is a pickle, which can run code when loaded; export its fields once in a "
                              "trusted environment: np.savez('LAYER.npz', name=p.name, dims=p.dims, "
                              "coordinates=p.coordinates)")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "coordinates" not in z or "dims" not in z:
                raise CheckpointError(f"{path} needs 'coordinates' (N×2, mm) and 'dims' arrays; it has "
                                      f"{', '.join(z.files) or 'none'}")
            xy = torch.from_numpy(np.asarray(z["coordinates"], dtype=np.float32))
            dims = [int(v) for v in np.atleast_1d(z["dims"])]
            name = str(z["name"]) if "name" in z else path.stem
            size = float(z["size_mm"]) if "size_mm" in z else float(xy.max()) if len(xy) else 0.0
        layers = {name: {"positions": xy, "shape": dims if len(dims) == 3 else [*dims, 1, 1], "size_mm": size}}
    else:
        from . import checkpoints

        raw = checkpoints.read(path)
        if raw.get("format") != SHEETS_FORMAT or not isinstance(raw.get("layers"), Mapping):
            raise CheckpointError(f"{path} is not a positions file (format {SHEETS_FORMAT!r} from save_sheets)")
        layers = raw["layers"]
    try:
        return {name: Sheet(name, tuple(int(v) for v in d["shape"]), torch.as_tensor(d["positions"]).float(),
                            float(d["size_mm"])) for name, d in layers.items()}
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None


def attach(model, sheets: Mapping[str, Sheet]) -> None:
    """Give a model's layers their sheets (``model.sheets``, by layer name), after checking each against the
    layer's response to one image: C×H×W units, or C×1×1 for a per-channel sheet."""
    layers = {model.layer(s.layer): s for s in sheets.values()}
    size = model.input_size or 64
    with torch.no_grad():
        acts = model.activations(torch.full((1, 3, size, size), 0.5, device=model.device), list(layers))
    for layer, s in layers.items():
        shape = tuple(acts[layer].shape[1:])
        shape = shape if len(shape) == 3 else (*shape, 1, 1)
        if tuple(s.shape) not in (shape, (shape[0], 1, 1)):
            raise CheckpointError(f"the sheet for {layer!r} places units of shape {tuple(s.shape)}, but the layer "
                                  f"answers with {shape} (or {(shape[0], 1, 1)} per channel)")
        model.sheets[layer] = Sheet(layer, tuple(s.shape), s.positions, s.size_mm)


def sheet_of(model, name: str) -> Sheet:
    """The sheet of a model's layer or area (e.g. 'IT'), or an error naming the layers that have one."""
    sheets = getattr(model, "sheets", {})
    if not sheets:
        raise ConfigError(f"model {model.name!r} has no cortical sheets: load a topographic model (e.g. toy-topo) "
                          "or pass positions=PATH to load_model")
    layer = model.layer(name) if name in model.areas or name in sheets else name
    if layer not in sheets:
        raise UnknownNameError(f"sheet of model {model.name!r}", name,
                               [*(a for a, l in model.areas.items() if l in sheets), *sheets])
    return sheets[layer]


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
    flat = sheet.responses(features)
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

    flat = sheet.responses(responses.detach().float().cpu())
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
    """Sheets side by side on one colour scale (e.g. a model's face map beside its shuffled control): each panel
    a (sheet, values, title, threshold) tuple, units as dots, and the smoothed map's (σ ``PATCH_SMOOTH_MM``)
    contour at the threshold outlining the patches."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim = max(float(np.abs(v.flatten().float().numpy()).max()) for _, v, _, _ in panels) or 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels) + 0.6, 3.6), squeeze=False)
    for ax, (sheet, values, title, threshold) in zip(axes[0], panels):
        dots = ax.scatter(sheet.positions[:, 0], sheet.positions[:, 1], c=values.flatten().float().numpy(),
                          cmap="RdBu_r", vmin=-lim, vmax=lim, s=float(np.clip(4000 / len(sheet), 2, 60)))
        if threshold is not None:
            outline_patches(ax, sheet, values, threshold)
        ax.set(xlim=(0, sheet.size_mm), ylim=(0, sheet.size_mm), xlabel="mm", ylabel="mm", aspect="equal",
               title=title)
    fig.colorbar(dots, ax=list(axes[0]), label=label)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return str(path)


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


# ------------------------------------------------------------------------------------------ the localizer on a sheet
# Face patches as an fMRI localizer finds them: the faces-vs-objects t map smoothed (σ 1 mm), thresholded where it
# beats the same map with the positions shuffled (99th percentile over 20 shuffles: p < 0.01 per pixel), and kept
# where a cluster covers at least 1 mm².
PATCH_SMOOTH_MM, PATCH_RESOLUTION_MM, PATCH_MIN_MM2, PATCH_Q, PATCH_SHUFFLES = 1.0, 0.25, 1.0, 0.99, 20


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
    from .data import localizer

    sheet = sheet_of(model, layer)
    conditions = localizer(n, workers=workers)
    with torch.no_grad():
        r = {k: sheet.responses(model.activations(b.tensor().to(model.device), sheet.layer)[sheet.layer]).cpu()
             for k, b in conditions.items()}
    return {"faces_vs_objects": selectivity(r["faces"], r["objects"], measure),
            "faces_vs_scrambled": selectivity(r["faces"], r["scrambled_faces"], measure)}


def topography_metrics(model, n: int = 100, workers: int = 1, seed: int = 0) -> dict:
    """A topographic model's card entry per sheet: the smoothness of its faces-vs-objects map against the same
    positions shuffled, and the face patches (``face_patches``) of both at the same threshold."""
    out = {}
    for layer, sheet in model.sheets.items():
        t = localizer_maps(model, layer, n, "t", workers)["faces_vs_objects"]
        control = sheet.shuffled(seed)
        near = 2 * float(np.sqrt(sheet.size_mm ** 2 / len(sheet)))  # two units' spacing
        found, threshold = face_patches(sheet, t)
        found_control, _ = face_patches(control, t, threshold)
        out[layer] = {"units": len(sheet), "size_mm": sheet.size_mm, "near_mm": round(near, 3),
                      "face_smoothness": smoothness(sheet, t, near), "face_smoothness_shuffled": smoothness(control, t, near),
                      "face_units_t5": int((t > 5).sum()), "patch_threshold_t": round(threshold, 3),
                      "patches": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in p.items()}
                                  for p in found[:5]],
                      "patches_shuffled": len(found_control), "localizer_n": n}
    return out


# ------------------------------------------------------------------------------------------ Afraz et al. 2006
AFRAZ_SITES, AFRAZ_CURRENT_UA, AFRAZ_RATE_HZ = 86, 50.0, 200.0
AFRAZ_SIGNALS = (0.0, 0.15, 0.3, 0.45)  # visual-signal levels around the face / non-face threshold


def current_for_spread(spread: float) -> float:
    """The current (µA) whose spread (``spread_mm``) is ``spread`` mm: the inverse of λ(I)."""
    if not spread > 0:
        raise ConfigError(f"a spread is a length > 0 mm, got {spread}")
    return spread / SPREAD_SLOPE_MM_PER_UA + SPREAD_THRESHOLD_UA


def electrode_selectivity(sheet: Sheet, values: torch.Tensor, center_mm: torch.Tensor, radius_mm: float) -> float:
    """A site's selectivity as an electrode reads it: the mean value of the units within ``radius_mm`` of the
    tip, or of the nearest unit where none is that close."""
    d2 = sheet.squared_distance(torch.as_tensor(center_mm, dtype=sheet.positions.dtype))
    inside = d2 <= radius_mm ** 2
    v = values.flatten().float()
    return float(v[inside].mean()) if inside.any() else float(v[d2.argmin()])


def _stimulus_set(n: int, signals: tuple[float, ...], seed: int, workers: int) -> torch.Tensor:
    """Afraz's stimuli: ``n`` faces and ``n`` non-face objects (medium variation, no clutter) at each visual-signal
    level, degraded with phase-scrambled noise, all levels in one batch."""
    from .data import localizer

    loc = localizer(n, workers=workers)
    faces, objects = loc["faces"].tensor(), loc["objects"].tensor()
    return torch.cat([degrade(b, s, seed + i) for i, s in enumerate(signals) for b in (faces, objects)])


def _choice_shifts(model, sheet: Sheet, sites: torch.Tensor, currents: list[float], rate_hz: float,
                   stimuli: torch.Tensor, progress: bool, desc: str) -> np.ndarray:
    """sites × currents: the change in the fraction of 'face' choices over ``stimuli`` under stimulation."""
    from tqdm.auto import tqdm

    base = face_choices(model, stimuli).float().mean()
    out = np.zeros((len(sites), len(currents)))
    bar = tqdm(total=out.size, desc=desc, unit="site", disable=not progress)
    for i, xy in enumerate(sites.tolist()):
        for j, current in enumerate(currents):
            stimulated = model.intervene(microstimulation(sheet, tuple(xy), current, rate_hz))
            out[i, j] = float(face_choices(stimulated, stimuli).float().mean() - base)
            bar.update()
    bar.close()
    return out


def afraz(model, layer: str = "IT", sites: int = AFRAZ_SITES, current_ua: float = AFRAZ_CURRENT_UA,
          rate_hz: float = AFRAZ_RATE_HZ, spreads_mm: tuple[float, ...] = (0.5, 1.0, 2.0),
          record_fraction: float = 0.5, n: int = 32, signals: tuple[float, ...] = AFRAZ_SIGNALS, seed: int = 0,
          workers: int = 1, progress: bool = True, face_map: torch.Tensor | None = None) -> dict:
    """Afraz, Kiani & Esteky (2006) in silico: stimulate ``sites`` sites of a topographic layer (each at a unit
    drawn at random) while the model judges face / non-face stimuli at low visual signal, and correlate each
    site's shift in face choices with its face selectivity (faces-vs-objects t) as an electrode records it, over
    a radius of ``record_fraction`` × the stimulation's spread.  The same runs on the position-shuffled model are
    the control.  Reported at ``current_ua`` (Afraz: 50 µA, 200 Hz) and for each spread of ``spreads_mm`` (its
    current from ``current_for_spread``): Pearson's r and p for the topographic and the shuffled layout, the
    one-sided p that the first exceeds the second (Fisher's z), and the sites' data.  ``face_map``: the units'
    faces-vs-objects t where already measured (``localizer_maps``)."""
    from scipy import stats

    sheet = sheet_of(model, layer)
    if not 3 <= sites <= len(sheet):
        raise ConfigError(f"stimulate between 3 and {len(sheet)} sites (one per unit at most), got {sites}")
    if not 0 < record_fraction < 1:
        raise ConfigError(f"the recording radius is a fraction in (0, 1) of the spread, got {record_fraction}")
    lam = spread_mm(current_ua)
    spreads = sorted({round(lam, 4), *(float(s) for s in spreads_mm)})
    currents = [current_ua if s == round(lam, 4) else current_for_spread(s) for s in spreads]
    t = localizer_maps(model, sheet.layer, 100, "t", workers)["faces_vs_objects"] if face_map is None else face_map
    stimuli = _stimulus_set(n, tuple(signals), seed, workers)
    gen = torch.Generator().manual_seed(seed)
    units = torch.randperm(len(sheet), generator=gen)[:sites]
    report = {"model": model.name, "layer": sheet.layer, "sheet_mm": sheet.size_mm, "units": len(sheet),
              "sites": sites, "current_ua": current_ua, "rate_hz": rate_hz, "spread_mm": lam,
              "record_fraction": record_fraction, "stimuli": {"per_class_per_level": n, "signals": list(signals)},
              "seed": seed, "curve": []}
    rows = {}
    for name, s in (("topographic", sheet), ("shuffled", sheet.shuffled(seed))):
        xy = s.positions[units]
        shifts = _choice_shifts(model, s, xy, currents, rate_hz, stimuli, progress, f"afraz {name}")
        for j, (spread, current) in enumerate(zip(spreads, currents)):
            sel = [electrode_selectivity(s, t, p, record_fraction * spread) for p in xy]
            r, p = stats.pearsonr(sel, shifts[:, j])
            row = {"spread_mm": spread, "current_ua": round(current, 2), "r": float(r), "p": float(p),
                   "mean_shift": float(shifts[:, j].mean())}
            if current == current_ua:
                report[name] = {**row, "selectivity": sel, "shift": shifts[:, j].tolist(),
                                "sites_mm": xy.tolist()}
            rows[name, spread] = row
    for spread in spreads:
        a, b = rows["topographic", spread], rows["shuffled", spread]
        report["curve"].append({"spread_mm": spread, "current_ua": a["current_ua"], "r": a["r"], "p": a["p"],
                                "r_shuffled": b["r"], "p_shuffled": b["p"],
                                "difference_p": _fisher_p(a["r"], b["r"], sites),
                                "mean_shift": a["mean_shift"], "mean_shift_shuffled": b["mean_shift"]})
    report["difference_p"] = _fisher_p(report["topographic"]["r"], report["shuffled"]["r"], sites)
    return report


def _fisher_p(r1: float, r2: float, n: int) -> float:
    """One-sided p that correlation r1 exceeds r2 (independent samples of n, Fisher's z)."""
    from scipy import stats

    z = (np.arctanh(np.clip(r1, -0.9999, 0.9999)) - np.arctanh(np.clip(r2, -0.9999, 0.9999))) / np.sqrt(2 / (n - 3))
    return float(stats.norm.sf(z))


def plot_afraz(report: dict, path: str | os.PathLike) -> str:
    """The Afraz figure: each site's shift in face choices against its face selectivity, for the model and the
    position-shuffled control (with r and p), and r against the stimulation's spread for both."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = report.get("psychometric")
    fig, axes = plt.subplots(1, 4 if curves else 3, figsize=(15.2 if curves else 11.5, 3.6))
    colors = {"topographic": "tab:red", "shuffled": "tab:gray"}
    for ax, name in zip(axes, ("topographic", "shuffled")):
        d = report[name]
        x, y = np.asarray(d["selectivity"]), 100 * np.asarray(d["shift"])
        ax.scatter(x, y, s=12, color=colors[name], alpha=0.8)
        slope, icpt = np.polyfit(x, y, 1)
        xs = np.linspace(x.min(), x.max(), 2)
        ax.plot(xs, slope * xs + icpt, color="k", lw=1)
        ax.axhline(0, color="k", lw=0.5, ls=":")
        title = report["model"] if name == "topographic" else "positions shuffled"
        ax.set(xlabel="site face selectivity (t, faces vs objects)", ylabel="shift in face choices (%)",
               title=f"{title}: r = {d['r']:.2f}, p = {d['p']:.1g}")
    ax = axes[2]
    spreads = [c["spread_mm"] for c in report["curve"]]
    for name, key in (("topographic", "r"), ("shuffled", "r_shuffled")):
        ax.plot(spreads, [c[key] for c in report["curve"]], "o-", color=colors[name], label=name)
    ax.axvline(report["spread_mm"], color="k", lw=0.5, ls=":")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="stimulation spread λ (mm)", ylabel="r (selectivity vs shift)", title="correlation against spread")
    ax.legend(frameon=False)
    if curves:
        ax = axes[3]
        ax.plot(curves["signal"], 100 * np.asarray(curves["without"]), "o-", color="k", label="no stimulation")
        ax.plot(curves["signal"], 100 * np.asarray(curves["with"]), "o-", color="tab:red", label="stimulated")
        x, y = curves["site_mm"]
        ax.set(xlabel="visual signal (− non-face objects, + faces)", ylabel="face choices (%)",
               title=f"site ({x:.1f}, {y:.1f}) mm, t = {curves['selectivity']:.1f}", ylim=(-3, 103))
        ax.legend(frameon=False)
    fig.suptitle(f"{report['model']} {report['layer']}: {report['sites']} sites, {report['current_ua']:g} µA "
                 f"(λ = {report['spread_mm']:.2f} mm), {report['rate_hz']:g} Hz", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def _site_curves(model, sheet: Sheet, report: dict, workers: int) -> dict:
    """Psychometric curves (``psychometric``) without and with stimulation of the site that shifted face choices
    most, at the report's current and rate: Afraz et al.'s figure 2."""
    from .data import localizer

    i = int(np.argmax(report["topographic"]["shift"]))
    site = tuple(report["topographic"]["sites_mm"][i])
    loc = localizer(report["stimuli"]["per_class_per_level"], workers=workers)
    faces, objects = loc["faces"].tensor(), loc["objects"].tensor()
    without = psychometric(model, faces, objects, seed=report["seed"])
    stimulated = model.intervene(microstimulation(sheet, site, report["current_ua"], report["rate_hz"]))
    with_stim = psychometric(stimulated, faces, objects, seed=report["seed"])
    return {"site_mm": list(site), "selectivity": report["topographic"]["selectivity"][i],
            "signal": without["signal"], "without": without["face_fraction"], "with": with_stim["face_fraction"]}


def run_afraz(model, out: str | os.PathLike, layer: str = "IT", **settings) -> dict:
    """``afraz`` with its outputs written to ``out``: ``afraz.json`` (the report, with timing and versions),
    ``afraz.png`` (the plot) and ``face_map.png`` (the layer's faces-vs-objects map beside its shuffled control,
    patches outlined)."""
    import json
    import time

    from . import __version__
    from .files import write_text

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sheet = sheet_of(model, layer)
    t = localizer_maps(model, layer, 100, "t", settings.get("workers", 1))["faces_vs_objects"]
    report = afraz(model, layer, face_map=t, **settings)
    report["psychometric"] = _site_curves(model, sheet, report, settings.get("workers", 1))
    report["seconds"] = round(time.time() - t0, 1)
    report["versions"] = {"phosphene": __version__, "torch": torch.__version__}
    control = sheet.shuffled(settings.get("seed", 0))
    found, threshold = face_patches(sheet, t)
    found_control, _ = face_patches(control, t, threshold)
    report["face_patches"] = {"topographic": len(found), "shuffled": len(found_control), "threshold_t": threshold,
                              "largest_mm2": [p["area_mm2"] for p in found[:3]],
                              "largest_shuffled_mm2": [p["area_mm2"] for p in found_control[:3]]}
    plot_sheets([(sheet, t, f"{model.name} {sheet.layer}: {len(found)} face patches", threshold),
                 (control, t, f"positions shuffled: {len(found_control)}", threshold)],
                out / "face_map.png", label="faces vs objects (t)")
    plot_afraz(report, out / "afraz.png")
    write_text(out / "afraz.json", json.dumps(report, indent=1))
    return report
