"""Neural population control (Bashivan, Kar & DiCarlo 2019) in a model and in a simulated subject.

- ``stretch_units``: drive units of a model beyond their maximum over natural images.
- ``Subject``: a simulated animal — sites are units of *another* model, spatially pooled, turned into firing
  rates and recorded with Poisson spike-count noise in a 100 ms window, as a stand-in for the monkey.
- ``population_control``: the paper's experiment end to end — record the subject on natural images, fit a
  readout from the probe model, synthesize 'stretch' and 'one-hot population' images through the readout, and
  present them to the subject.  The report has the paper's measures: the fraction of sites whose stretch image
  beats their best natural image, the median ratio, and one-hot success.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import ConfigError, UnknownNameError
from .files import tensor_digest
from .objectives import Objective, OneHot, Stretch
from .probe import ProbeModel
from .readouts import Responses, features, fit
from .synthesis import synthesize


def stretch_units(model: ProbeModel, layer: str, channels: list[int], natural: torch.Tensor, **synth_options) -> dict:
    """Stretch each channel of ``layer`` (one image each, in one batch) and compare with its natural maximum."""
    result = synthesize(model, Stretch(layer, tuple(channels)), n=len(channels), **synth_options)
    achieved = result.scores.double()
    nat_max = features(model, natural, layer, pooled=True)[:, channels].max(0).values.double()
    ratio = achieved / nat_max.clamp_min(1e-9)
    return {"layer": layer, "channels": list(channels), "achieved": achieved.tolist(), "natural_max": nat_max.tolist(),
            "fraction_above": float((achieved > nat_max).double().mean()), "median_ratio": float(ratio.median()),
            "n_natural": int(natural.shape[0]), "result": result}


class Subject:
    """A simulated recording: ``n_sites`` responsive channels of ``layer`` of another model, as spike counts.

    A site's rate is ``baseline + (max_rate - baseline) · a / a95`` spikes/s, where ``a`` is the channel's spatially
    pooled response and ``a95`` its 95th percentile over the calibration images; trials are Poisson counts in a
    ``window``-second window, divided by the window (HvM-like 70–170 ms: 0.1 s).
    """

    def __init__(self, model: ProbeModel, layer: str, calibration: torch.Tensor, n_sites: int = 40, seed: int = 0,
                 baseline: float = 5.0, max_rate: float = 100.0, window: float = 0.1):
        self.model, self.layer, self.window = model, model.layer(layer), window
        self.baseline, self.max_rate = baseline, max_rate
        resp = features(model, calibration, self.layer, pooled=True)
        spread = resp.std(0)
        live = torch.nonzero(spread > 1e-3 * spread.max()).flatten()
        if len(live) < n_sites:
            raise ConfigError(f"{layer!r} of {model.name} has only {len(live)} responsive channels, asked for {n_sites}")
        g = torch.Generator().manual_seed(seed)
        self.channels = sorted(live[torch.randperm(len(live), generator=g)[:n_sites]].tolist())
        self.scale = resp[:, self.channels].quantile(0.95, dim=0).clamp_min(1e-6)
        self.sites = [f"site{c}" for c in self.channels]
        self.input_size = model.input_size or calibration.shape[-1]

    def __str__(self) -> str:
        return f"subject({self.model.name}:{self.layer}, {len(self.sites)} sites)"

    def fingerprint(self) -> str:
        """Everything that defines the subject's responses: its model's weights, sites, calibration and rates."""
        return (f"{self} weights sha256:{self.model.weights_digest()[:16]} channels {self.channels} scale "
                f"sha256:{tensor_digest(self.scale)} rates {self.baseline:g}-{self.max_rate:g}/s window {self.window:g}")

    def site(self, site: str | int) -> int:
        """The column of a site given by name ('site40') or by position (0 … n_sites − 1)."""
        if isinstance(site, (int, np.integer)) and not isinstance(site, bool):
            if not 0 <= site < len(self.sites):
                raise ConfigError(f"site index {site} is out of range: the subject has {len(self.sites)} sites")
            return int(site)
        if str(site) not in self.sites:
            raise UnknownNameError("site of the subject", str(site), self.sites)
        return self.sites.index(str(site))

    def rates(self, images: torch.Tensor) -> np.ndarray:
        """Expected firing rates (images × sites, spikes/s)."""
        a = features(self.model, images, self.layer, pooled=True)[:, self.channels]
        return (self.baseline + (self.max_rate - self.baseline) * a / self.scale).clamp_min(0).double().numpy()

    def record(self, images: torch.Tensor, repeats: int, seed: int = 0) -> np.ndarray:
        """Trial responses (images × sites × repeats, spikes/s) with Poisson spike-count noise."""
        lam = self.rates(images)[..., None] * self.window
        counts = np.random.default_rng(seed).poisson(np.repeat(lam, repeats, axis=2))
        return counts / self.window


class Presented(Objective):
    """Fitness from a black box: a ``Subject``'s trial-mean response at one site to each image over ``repeats``
    presentations, fresh Poisson noise at every call.  It reads only the images (the 'input' pseudo-layer), asks
    the subject under ``torch.no_grad`` and returns plain numbers: no gradient can flow through it."""

    layers = ("input",)

    def __init__(self, subject: Subject, site: str | int, repeats: int = 1, seed: int = 0):
        self.subject, self.index, self.repeats, self.seed, self.calls = subject, subject.site(site), repeats, seed, 0

    def __str__(self) -> str:
        return f"presented({self.subject.sites[self.index]}, repeats={self.repeats})"

    def fingerprint(self) -> str:
        return f"{self} of {self.subject.fingerprint()}, seed {self.seed}"

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state["calls"])

    def score(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        images = acts["input"]
        with torch.no_grad():
            trials = self.subject.record(images.detach(), self.repeats, seed=[self.seed, self.calls])
        self.calls += 1
        return torch.as_tensor(trials[:, self.index].mean(-1), dtype=torch.float32, device=images.device)


def evolve_sites(subject: Subject, natural: torch.Tensor, sites: list[int] | None = None, *,
                 code: str = "generator:toy-gan", optimizer: str = "cmaes", population: int = 40,
                 generations: int = 100, repeats: int = 1, check: int = 10, budgets: list[int] | None = None,
                 seed: int = 0, progress: bool = True, **options) -> dict:
    """XDream's experiment on a simulated subject: evolve images for each site from its noisy responses alone,
    then show the subject the best image found within each evaluation budget, ``check`` fresh presentations,
    beside its best natural image (the natural images shown ``check`` times each, the best by its mean).

    Per site and budget: the evolved image (``images``: sites × budgets × C × H × W), its mean response and its
    ratio to the natural best (both measured with the same noise), and the noise-free ratio the experimenter
    could not see (``Subject.rates``).  The
    natural best is the max of noisy means over many images, so it is biased upwards: the ratio is conservative."""
    from .evolve import evolve

    sites = list(range(len(subject.sites))) if sites is None else [subject.site(s) for s in sites]
    budgets = sorted(budgets or [population * generations])
    if budgets[-1] > population * generations:
        raise ConfigError(f"budget {budgets[-1]} is more than {generations} generations of {population} evaluate")
    if budgets[0] < population:
        raise ConfigError(f"budget {budgets[0]} is less than one generation of {population} images")
    nat = subject.record(natural, check, seed=[seed, 1]).mean(2)[:, sites]
    nat_rates = subject.rates(natural)[:, sites]
    best_nat = nat.argmax(0)
    rows, evolved_images, trajectories = [], [], []
    for k, site in enumerate(tqdm(sites, desc=f"evolve {code} {optimizer}", unit="site", disable=not progress)):
        best = {"score": -np.inf, "image": None}
        kept: dict[int, torch.Tensor] = {}

        def watch(t: int, images: torch.Tensor, scores: torch.Tensor) -> None:
            i = int(scores.argmax())
            if float(scores[i]) > best["score"]:
                best["score"], best["image"] = float(scores[i]), images[i].cpu()
            for b in budgets:
                if (t + 1) * population == b - b % population:
                    kept[b] = best["image"]

        r = evolve(subject, site, code=code, optimizer=optimizer, population=population,
                   generations=max(b // population for b in budgets), repeats=repeats, seed=seed + site,
                   progress=False, watch=watch, **options)
        images = torch.stack([kept[b] for b in budgets])
        shown = subject.record(images, check, seed=[seed, 2, site]).mean(2)[:, site]
        true = subject.rates(images)[:, site]
        rows.append({"site": subject.sites[site], "natural_best": float(nat[best_nat[k], k]),
                     "natural_best_image": int(best_nat[k]), "natural_true_max": float(nat_rates[:, k].max()),
                     "evolved": shown.tolist(), "ratio": (shown / max(float(nat[best_nat[k], k]), 1e-9)).tolist(),
                     "true_ratio": (true / max(float(nat_rates[:, k].max()), 1e-9)).tolist()})
        evolved_images.append(images)
        trajectories.append(r.history.mean(1).numpy())
    ratios = np.array([row["ratio"] for row in rows])
    return {"subject": str(subject), "code": code, "optimizer": optimizer, "population": population,
            "repeats": repeats, "check": check, "budgets": budgets, "natural_images": int(len(natural)),
            "sites": rows, "median_ratio": np.median(ratios, 0).tolist(),
            "fraction_above_1_5": (ratios >= 1.5).mean(0).tolist(),
            "median_true_ratio": np.median([row["true_ratio"] for row in rows], 0).tolist(),
            "images": torch.stack(evolved_images), "generation_means": np.stack(trajectories)}


def display(size: int) -> ProbeModel:
    """The screen a black box is shown images on: a pseudo-model with nothing but the 'input' layer, so the
    engine can run an evolution whose fitness (``Presented``) comes from outside any model it holds."""
    return ProbeModel(nn.Identity(), name="display", classes=(), input_size=size)


def simulate_recording(model: ProbeModel, layer: str = "IT", n_images: int = 640, n_sites: int = 40,
                       repeats: int = 4, split: str = "train", seed: int = 0) -> Responses:
    """A recording session of a simulated ``Subject`` on embedded images, with ids 'split:index' that
    ``readouts.embedded_images`` (and ``phosphene readout fit``) resolve: a stand-in for a monkey's data."""
    from .data import render

    if n_images < 10 or repeats < 1:
        raise ConfigError(f"need at least 10 images and 1 repeat, got {n_images} and {repeats}")
    images = render(n_images, split, workers=2).tensor()
    subject = Subject(model, layer, images, n_sites=n_sites, seed=seed)
    return Responses([f"{split}:{i}" for i in range(n_images)], subject.record(images, repeats, seed), subject.sites)


def population_control(probe: ProbeModel, subject: Subject, natural: torch.Tensor, layer: str = "IT",
                       repeats: int = 4, seed: int = 0, method: str = "pls", **synth_options) -> dict:
    """Record, fit a readout, synthesize stretch and one-hot images through it, and test them on the subject."""
    ids = [f"natural:{i}" for i in range(len(natural))]
    recorded = Responses(ids, subject.record(natural, repeats, seed), subject.sites)
    readout = fit(probe, natural, recorded, layer, method=method, seed=seed)
    name = probe.add_readout(readout, f"{probe.layer(layer)}:readout")
    sites = tuple(range(len(subject.sites)))
    stretch = synthesize(probe, Stretch(name, sites), n=len(sites), seed=seed, **synth_options)
    onehot = synthesize(probe, OneHot(name, sites), n=len(sites), seed=seed + 1, **synth_options)
    # The subject sees the synthetic images (trial-averaged, new noise) and we compare with its natural responses.
    nat_mean = recorded.mean
    mu, sd = nat_mean.mean(0), np.where(nat_mean.std(0) > 0, nat_mean.std(0), 1.0)
    idx = np.arange(len(sites))
    st = subject.record(stretch.images, repeats, seed + 2).mean(2)[idx, idx]
    best = nat_mean.max(0)
    oh_z = (subject.record(onehot.images, repeats, seed + 3).mean(2) - mu) / sd
    predicted_nat = features(probe, natural, name, pooled=True).numpy()
    return {
        "sites": len(sites), "natural_images": len(natural), "repeats": repeats, "probe": probe.name,
        "subject": f"{subject.model.name}:{subject.layer}", "layer": readout.layer,
        "readout_median_r": readout.info["median_r"], "readout_median_ceiling": float(np.median(readout.info["ceiling"])),
        "readout_median_ceiled_r": readout.info["median_ceiled_r"],
        "stretch_fraction_above_natural_max": float((st > best).mean()),
        "stretch_median_ratio": float(np.median(st / np.maximum(best, 1e-9))),
        "stretch_model_fraction_above": float((stretch.scores.numpy() > predicted_nat.max(0)).mean()),
        "onehot_success": float((oh_z.argmax(1) == idx).mean()),
        "onehot_model_success": float((onehot.activations[name].numpy().argmax(1) == idx).mean()),
        "onehot_median_target_z": float(np.median(oh_z[idx, idx])),
        "onehot_median_others_z": float(np.median(oh_z[~np.eye(len(idx), dtype=bool)])),
        "stretch": stretch, "onehot": onehot, "readout": readout,
    }

