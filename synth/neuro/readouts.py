"""Readouts: linear maps from a model layer to recorded sites, fit and scored as Brain-Score does.

``fit`` regresses recorded responses (images × sites, optionally × repeats) on a layer's flattened features
with cross-validated PLS (25 components, Brain-Score's default) or ridge (scikit-learn), and reports per-site
cross-validated Pearson r and, given repeats, the split-half (Spearman-Brown) noise ceiling and the ceiled r.
The fitted map predicts each site in *standard units of its natural responses* (z-scores over the fitting
images), so sites are comparable: "above the natural maximum" and "most active of the population" are then
fair across sites.  A Readout attached to a model becomes a layer named 'LAYER:readout' that objectives address
as 'V4:readout:site3'.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from synth.engine.objectives import population
from synth.errors import ConfigError, ImageError, UnknownNameError
from synth.files import atomic, load_record, save_record
from synth.zoo.probe import ProbeModel

METHODS = ("pls", "ridge")
ALPHAS = tuple(10.0 ** np.arange(-2, 7))  # ridge's penalties, searched by cross-validation
FORMAT_VERSION = 1  # 1: one record format (synth.files.save_record); 0: PATH.json without kind or format


class Readout(nn.Module):
    """Linear map from a layer's flattened features to sites, in z-units of the sites' natural responses."""

    def __init__(self, layer: str, weight: torch.Tensor, bias: torch.Tensor, sites: list[str],
                 site_mean: torch.Tensor, site_std: torch.Tensor, info: dict | None = None):
        super().__init__()
        if weight.shape[0] != len(sites) or bias.shape != (len(sites),):
            raise ConfigError(f"readout weight {tuple(weight.shape)} / bias {tuple(bias.shape)} do not fit "
                              f"{len(sites)} sites")
        self.layer, self.sites, self.info = layer, list(sites), dict(info or {})
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", bias.float())
        self.register_buffer("site_mean", site_mean.float())
        self.register_buffer("site_std", site_std.float())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Predicted responses (N × sites, z-units) from the layer's activations."""
        flat = features.flatten(1)
        if flat.shape[1] != self.weight.shape[1]:
            raise ConfigError(f"readout expects {self.weight.shape[1]} features from {self.layer!r}, "
                              f"got {flat.shape[1]} (was it fit on images of another size?)")
        return flat @ self.weight.T + self.bias

    def to_rates(self, z: torch.Tensor) -> torch.Tensor:
        """Convert z-unit predictions back to the recorded units."""
        return z * self.site_std.to(z.device) + self.site_mean.to(z.device)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the record ``PATH`` (``synth.files.save_record``): tensors to ``PATH.pt`` (weights-only loadable),
        the layer, sites and fit to ``PATH.json``; returns the .pt's path."""
        path = Path(path).with_suffix(".pt")
        tensors = {"weight": self.weight.cpu(), "bias": self.bias.cpu(), "site_mean": self.site_mean.cpu(),
                   "site_std": self.site_std.cpu()}
        save_record(path.with_suffix(""), "readout", FORMAT_VERSION, tensors,
                    {"layer": self.layer, "sites": self.sites, "info": self.info},
                    weights_sha256=self.info.get("weights_sha256"))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Readout:
        """Read a readout written by ``save``."""
        path = Path(path).with_suffix(".pt")
        if not path.is_file() or not path.with_suffix(".json").is_file():
            raise ConfigError(f"no readout at {path} (expected {path.name} and {path.with_suffix('.json').name})")
        t, d = load_record(path.with_suffix(""), "readout", FORMAT_VERSION)
        return cls(d["layer"], t["weight"], t["bias"], d["sites"], t["site_mean"], t["site_std"], d.get("info"))


@dataclass
class Responses:
    """Recorded responses: image ids, values (images × sites [× repeats]) and site names."""

    image_ids: list[str]
    values: np.ndarray
    sites: list[str]

    def __post_init__(self) -> None:
        v = np.asarray(self.values, dtype=np.float64)
        if v.ndim not in (2, 3):
            raise ConfigError(f"responses must be images × sites (× repeats), got shape {v.shape}")
        if v.shape[0] != len(self.image_ids) or v.shape[1] != len(self.sites):
            raise ConfigError(f"responses of shape {v.shape} do not match {len(self.image_ids)} image ids and "
                              f"{len(self.sites)} site names")
        if v.shape[0] < 10:
            raise ConfigError(f"need at least 10 images to fit and cross-validate a readout, got {v.shape[0]}")
        if not np.isfinite(v).all():
            raise ConfigError(f"responses contain {int((~np.isfinite(v)).sum())} NaN or infinite values; "
                              "drop or impute them before fitting")
        self.values = v

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ``.npz`` that ``load_responses`` (and ``phosphene readout fit``) reads, atomically."""
        path = Path(path).with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, responses=self.values, image_ids=np.array(self.image_ids), sites=np.array(self.sites))
        return path

    @property
    def mean(self) -> np.ndarray:
        """Trial-averaged responses, images × sites."""
        return self.values.mean(2) if self.values.ndim == 3 else self.values


def load_responses(path: str | os.PathLike) -> Responses:
    """Read responses from ``.npz`` (arrays 'responses', 'image_ids', optional 'sites') or a wide ``.csv``
    (column 'image_id', then one column per site; repeated image ids are repeats)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"responses file not found: {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            missing = {"responses", "image_ids"} - set(z.files)
            if missing:
                raise ConfigError(f"{path} lacks arrays {sorted(missing)} (has {z.files})")
            values = z["responses"]
            if values.ndim not in (2, 3):
                raise ConfigError(f"{path}: responses must be images × sites (× repeats), got shape {values.shape}")
            sites = [str(s) for s in z["sites"]] if "sites" in z.files else [f"site{i}" for i in range(values.shape[1])]
            return Responses([str(i) for i in z["image_ids"]], values, sites)
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "image_id" not in rows[0]:
            raise ConfigError(f"{path} needs a header with an 'image_id' column and one column per site")
        sites = [k for k in rows[0] if k != "image_id"]
        by_id: dict[str, list[list[float]]] = {}
        for r in rows:
            try:
                by_id.setdefault(r["image_id"], []).append([float(r[s]) for s in sites])
            except ValueError as e:
                raise ConfigError(f"{path}: non-numeric response for image {r['image_id']!r}: {e}") from None
        reps = {len(v) for v in by_id.values()}
        if len(reps) != 1:
            raise ConfigError(f"{path}: images have different numbers of repeats ({sorted(reps)})")
        values = np.array(list(by_id.values()))  # images × repeats × sites
        values = values[:, 0, :] if reps == {1} else values.transpose(0, 2, 1)
        return Responses(list(by_id), values, sites)
    raise ConfigError(f"responses must be .npz or .csv, got {path.suffix!r}")


def features(model: ProbeModel, images: torch.Tensor, layer: str, pooled: bool = False, batch_size: int = 256,
             progress: bool = False) -> torch.Tensor:
    """A layer's responses to [0,1] images, batched, on the CPU: flattened (images × units), or ``pooled`` to the
    population (images × channels, each averaged over space; readout layers are already images × sites)."""
    out = []
    with torch.no_grad():
        for i in tqdm(range(0, len(images), batch_size), desc=f"features {layer}", disable=not progress):
            a = model.activations(images[i:i + batch_size].to(model.device), layer)[layer]
            out.append((population(a) if pooled else a.flatten(1)).cpu())
    return torch.cat(out)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Column-wise Pearson r between two images × sites arrays (0 where a column is constant)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return np.where(den > 0, (a * b).sum(0) / np.where(den > 0, den, 1), 0.0)


def split_half_ceiling(values: np.ndarray, splits: int = 10, seed: int = 0) -> np.ndarray:
    """Per-site internal consistency: Spearman-Brown-corrected correlation of means over random halves of the
    repeats (images × sites × repeats), averaged over ``splits`` random halvings."""
    reps = values.shape[2]
    if reps < 2:
        raise ConfigError("a noise ceiling needs at least 2 repeats per image")
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(splits):
        perm = rng.permutation(reps)
        a, b = values[:, :, perm[:reps // 2]].mean(2), values[:, :, perm[reps // 2:]].mean(2)
        r = pearson(a, b)
        rs.append(2 * r / (1 + r))
    return np.clip(np.mean(rs, axis=0), 0.0, 1.0)


def regressor(method: str, n_components: int, alphas: tuple[float, ...] = ALPHAS):
    """An unfitted scikit-learn regressor of a readout: PLS with ``n_components`` or ridge over ``alphas``."""
    from sklearn.cross_decomposition import PLSRegression
    from sklearn.linear_model import RidgeCV

    if method == "pls":
        return PLSRegression(n_components=n_components, scale=False)
    if method == "ridge":
        return RidgeCV(alphas=alphas)
    raise UnknownNameError("readout method", method, METHODS)


def fit_regressor(method: str, x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None,
                  n_components: int = 25, alphas: tuple[float, ...] = ALPHAS):
    """A readout's regressor fit to features ``x`` and targets ``y``, each image weighted by ``weights``: images of
    weight 0 are left out, the others weighted by ridge's sample weights (PLS has none, so it refuses unequal
    weights among them)."""
    reg = regressor(method, n_components, alphas)
    if weights is not None:
        x, y, weights = x[weights > 0], y[weights > 0], weights[weights > 0]
    if weights is None or np.all(weights == weights[0]):
        return reg.fit(x, y)
    if method != "ridge":
        raise ConfigError(f"weighted images need method='ridge' (scikit-learn's PLS takes no sample weights), "
                          f"got method={method!r}")
    return reg.fit(x, y, sample_weight=weights)


def _linear_map(reg) -> tuple[np.ndarray, np.ndarray]:
    """Weights (sites × features) and bias of a fitted scikit-learn linear regressor, in input space."""
    if hasattr(reg, "x_weights_"):  # PLS: predict = (X - mean) / std @ coef.T + intercept
        coef = np.asarray(reg.coef_)
        coef = coef if coef.shape[1] == len(reg._x_mean) else coef.T
        w = coef / reg._x_std[None, :]
        return w, np.asarray(reg.intercept_) - w @ reg._x_mean
    return np.atleast_2d(reg.coef_), np.atleast_1d(reg.intercept_)


def _stratified(natural: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` cross-validation folds (train, test) with the natural and the other images each dealt evenly among
    them, so that every fold scores r on natural images however few the others are."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(natural), int)
    for group in (np.flatnonzero(natural), np.flatnonzero(~natural)):
        fold[rng.permutation(group)] = np.arange(len(group)) % k
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]


def fit(model: ProbeModel, images: torch.Tensor, responses: Responses, layer: str, method: str = "pls",
        n_components: int = 25, alphas: tuple[float, ...] = ALPHAS, folds: int = 10,
        seed: int = 0, progress: bool = False, natural: np.ndarray | None = None,
        weights: np.ndarray | None = None) -> Readout:
    """Fit a readout from ``layer`` of ``model`` to recorded responses to ``images`` (same order).

    Cross-validation (``folds``-fold, shuffled with ``seed``) gives per-site Pearson r on held-out images, as
    Brain-Score's neural predictivity does; the final map is refit on all images.  With repeats, the split-half
    ceiling and ceiled r (r / ceiling) are reported.  Everything lands in ``readout.info``.

    Where some images are synthesized (a closed loop's tests), ``natural`` (a boolean mask) names the natural
    ones: they alone set the z-units and are the images r and the ceiling are scored on, so that a few images
    with responses far past the natural range neither rescale the sites nor inflate r.  ``weights`` (per image,
    ridge only) lets those images join the fit without outweighing the natural ones.
    """
    from sklearn.model_selection import KFold

    n = images.shape[0]
    if n != responses.values.shape[0]:
        raise ConfigError(f"{n} images but responses for {responses.values.shape[0]}")
    natural = np.ones(n, bool) if natural is None else np.asarray(natural, bool)
    weights = None if weights is None else np.asarray(weights, np.float64)
    if natural.shape != (n,) or natural.sum() < 10:
        raise ConfigError(f"the natural-image mask must have {n} entries with at least 10 natural images, got shape "
                          f"{natural.shape} with {int(natural.sum())}")
    if weights is not None and (weights.shape != (n,) or not np.all(np.isfinite(weights)) or weights.min() < 0
                                or weights.max() <= 0):
        raise ConfigError(f"weights must be {n} finite non-negative numbers, not all 0")
    layer = model.layer(layer)
    x = features(model, images, layer, progress=progress).double().numpy()
    y_raw = responses.mean
    mu, sd = y_raw[natural].mean(0), y_raw[natural].std(0)
    sd = np.where(sd > 0, sd, 1.0)
    y = (y_raw - mu) / sd
    n_components = min(n_components, x.shape[1], int(x.shape[0] * (folds - 1) / folds) - 1)
    n_folds = min(folds, len(y))
    splits = (list(KFold(n_folds, shuffle=True, random_state=seed).split(x)) if natural.all()
              else _stratified(natural, n_folds, seed))
    repeats = responses.values.ndim == 3
    # after the features, a PLS fit per fold, the final fit and the ceiling take minutes: one bar names each stage
    bar = tqdm(total=len(splits) + 1 + repeats, desc=f"readout fit ({method})", unit="stage", disable=not progress)
    per_fold = []
    for k, (train, test) in enumerate(splits):
        bar.set_postfix_str(f"cross-validation fold {k + 1}/{len(splits)}")
        reg = fit_regressor(method, x[train], y[train], None if weights is None else weights[train], n_components,
                            alphas)
        scored = test[natural[test]]
        per_fold.append(pearson(np.asarray(reg.predict(x[scored])).reshape(len(scored), -1), y[scored]))
        bar.update()
    r = np.mean(per_fold, axis=0)
    bar.set_postfix_str("final fit on all images")
    reg = fit_regressor(method, x, y, weights, n_components, alphas)
    bar.update()
    w, b = _linear_map(reg)
    info = {"method": method, "n_components": n_components if method == "pls" else None, "folds": folds,
            "seed": seed, "n_images": int(x.shape[0]), "n_natural": int(natural.sum()),
            "n_features": int(x.shape[1]), "model": model.name,
            "weights_sha256": model.weights_digest(),
            "r": r.tolist(), "median_r": float(np.median(r))}
    if repeats:
        bar.set_postfix_str("split-half noise ceiling")
        ceiling = split_half_ceiling(responses.values[natural], seed=seed)
        ceiled = np.where(ceiling > 0, r / np.where(ceiling > 0, ceiling, 1), np.nan)
        info.update(ceiling=ceiling.tolist(), ceiled_r=ceiled.tolist(), median_ceiled_r=float(np.nanmedian(ceiled)),
                    repeats=int(responses.values.shape[2]))
        bar.update()
    bar.close()
    return Readout(layer, torch.from_numpy(w), torch.from_numpy(b), responses.sites, torch.from_numpy(mu),
                   torch.from_numpy(sd), info)


def embedded_images(image_ids: list[str], world=None, images_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """The images named by response ids: files in ``images_dir``, or 'split:index' of the embedded world."""
    from synth.files import read_png
    from synth.world.data import World, to_tensor

    if images_dir is not None:
        folder = Path(images_dir)
        out = []
        for i in image_ids:
            path = folder / i
            if not path.is_file():
                raise ImageError(f"image {i!r} named in the responses is not in {folder}")
            out.append(read_png(path)[0])
        sizes = {tuple(t.shape) for t in out}
        if len(sizes) != 1:
            raise ImageError(f"images differ in size: {sorted(sizes)}")
        return torch.stack(out)
    world = world or World()
    arrays = []
    for i in image_ids:
        split, _, index = i.partition(":")
        if not index.isdigit():
            raise ConfigError(f"image id {i!r} is not 'split:index' of the embedded set; pass --images DIR for files")
        arrays.append(world.image(int(index), split)[0])
    return to_tensor(np.stack(arrays))
