"""A topographic model's cortical sheets: every unit of a layer at a position in mm, and TDANN's spatial loss.

TDANN (Margalit et al. 2024) lays each conv layer's C×H×W units out on a square sheet so that retinotopy is kept:
the sheet is tiled H×W, one tile per image position, and the C channels at a position take random points inside
its tile.  Its spatial correlation loss asks that, among the units of a local neighbourhood, the correlation of two
units' responses over a batch follow their closeness: SL = 1 − Pearson(r_ij, 1 / (1 + d_ij)), d in mm, averaged over
neighbourhoods drawn at random; it is added to the task loss with a weight of about 0.25.  The positions belong to
the model (``load_model`` attaches them); what is done with them (micro-stimulation, selectivity maps, Afraz's
experiment) is the ``microstim`` package's.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synth.errors import CheckpointError, ConfigError, UnknownNameError
from synth.files import save_torch

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


def column_sheet(channels: Sheet, size: tuple[int, int]) -> Sheet:
    """Columns: each channel of a per-channel sheet (C×1×1) spread into a column of its H×W units around its
    position, retinotopic inside (the unit at image position (h, w) at that offset from the centre), the column
    ``size_mm / √C`` across: the area each channel would have if the C columns tiled the sheet (placed where the
    swaps put them, they overlap in places and leave gaps in others).  IT's feature columns are about 0.4-0.5 mm
    wide (Fujita, Tanaka et al. 1992); a dense sheet whose neighbours share a channel."""
    c = len(channels)
    h, w = (int(v) for v in size)
    if not channels.per_channel or min(h, w) < 1:
        raise ConfigError(f"columns spread a per-channel (C×1×1) sheet over an H×W map, got shape {channels.shape} "
                          f"and {size}")
    side = channels.size_mm / float(np.sqrt(c))
    dy = ((torch.arange(h, dtype=torch.float32) + 0.5) / h - 0.5) * side
    dx = ((torch.arange(w, dtype=torch.float32) + 0.5) / w - 0.5) * side
    offsets = torch.stack([dx.view(1, w).expand(h, w), dy.view(h, 1).expand(h, w)], -1).view(1, h * w, 2)
    xy = (channels.positions.float().view(c, 1, 2) + offsets).clamp(0, channels.size_mm).view(-1, 2)
    return Sheet(channels.layer, (c, h, w), xy, channels.size_mm)


SHEETS_FORMAT = "phosphene-sheets-1"


def save_sheets(sheets: Mapping[str, Sheet], path: str | os.PathLike) -> Path:
    """Write sheets (positions, shapes, sizes) atomically to a tensors-only file that ``load_sheets`` reads back
    with ``torch.load(weights_only=True)``."""
    data = {"format": SHEETS_FORMAT, "layers": {s.layer: {"positions": s.positions.float().contiguous(),
                                                           "shape": [int(v) for v in s.shape],
                                                           "size_mm": float(s.size_mm)} for s in sheets.values()}}
    path = Path(path)
    save_torch(data, path)
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
        from synth.zoo import checkpoints

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
        raise ConfigError(f"model {model.name!r} has no cortical sheets: load a topographic model (e.g. "
                          "toy-topo-dense) or pass positions=PATH to load_model")
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
