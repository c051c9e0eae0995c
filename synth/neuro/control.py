"""Neural population control (Bashivan, Kar & DiCarlo 2019) in a model and in a simulated subject.

- ``stretch_units``: drive units of a model beyond their maximum over natural images.
- a ``Subject`` (``synth.neuro.subject``): a simulated animal — sites are units of *another* model, spatially
  pooled, turned into firing rates and recorded with Poisson spike-count noise, as a stand-in for the monkey.
- ``population_control``: the paper's experiment end to end — record the subject on natural images, fit a
  readout from the probe model, synthesize 'stretch' and 'one-hot population' images through the readout, and
  present them to the subject.  The report has the paper's measures: the fraction of sites whose stretch image
  beats their best natural image, the median ratio, and one-hot success.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from synth.engine.objectives import OneHot, Stretch
from synth.errors import ConfigError
from synth.neuro.readouts import Responses, features, fit
from synth.neuro.subject import Subject
from synth.neuro.synthesis import synthesize
from synth.zoo.probe import ProbeModel


def stretch_units(model: ProbeModel, layer: str, channels: list[int], natural: torch.Tensor, **synth_options) -> dict:
    """Stretch each channel of ``layer`` (one image each, in one batch) and compare with its natural maximum."""
    result = synthesize(model, Stretch(layer, tuple(channels)), n=len(channels), **synth_options)
    achieved = result.scores.double()
    nat_max = features(model, natural, layer, pooled=True)[:, channels].max(0).values.double()
    ratio = achieved / nat_max.clamp_min(1e-9)
    return {"layer": layer, "channels": list(channels), "achieved": achieved.tolist(), "natural_max": nat_max.tolist(),
            "fraction_above": float((achieved > nat_max).double().mean()), "median_ratio": float(ratio.median()),
            "n_natural": int(natural.shape[0]), "result": result}


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
    from synth.neuro.evolve import evolve

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
        watch, kept = _budget_keeper(budgets, population)
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


def _budget_keeper(budgets: list[int], population: int
                   ) -> tuple[Callable[[int, torch.Tensor, torch.Tensor], None], dict[int, torch.Tensor]]:
    """A ``watch`` for one evolution that keeps, for each evaluation budget, the best image seen within it."""
    best = {"score": -np.inf, "image": None}
    kept: dict[int, torch.Tensor] = {}

    def watch(t: int, images: torch.Tensor, scores: torch.Tensor) -> None:
        i = int(scores.argmax())
        if float(scores[i]) > best["score"]:
            best["score"], best["image"] = float(scores[i]), images[i].cpu()
        for b in budgets:
            if (t + 1) * population == b - b % population:
                kept[b] = best["image"]

    return watch, kept


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
        "readout_median_r": readout.info["median_r"],
        "readout_median_ceiling": float(np.median(readout.info["ceiling"])),
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

