"""Attacks on neural sites (Guo et al. 2022): perturb an image within ε to raise or lower one unit's, channel's or
recorded (readout) site's response, or to move a layer's population response towards another image's.

Guo et al. attacked single IT neurons and found adversarially trained model units about as robust as biological
ones, and standard-model units far more fragile.  Here a sweep over ε is one engine batch (each image repeated once
per budget, each copy with its own ball and step size), with no early stop unless a target change ``delta`` is
given, so each budget shows the largest change PGD finds.  Changes are reported raw and in units of the site's
standard deviation over the clean images (a scale that compares units, models and recordings).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from synth import Box, LpBall, optimize
from synth.engine.criteria import ScoreAtLeast
from synth.engine.objectives import Match, Objective, Site, parse
from synth.engine.params import Pixels
from synth.errors import ConfigError
from synth.rng import derive, generator, noise_generator
from synth.zoo.probe import ProbeModel

from .checks import gradient_report
from .common import Budget, check_norm, inputs, logits, parse_eps, warn_if_stochastic
from .pgd import REL_STEP
from .result import AttackResult, distances

DIRECTIONS = ("up", "down")


def site_attack(model: ProbeModel, images: torch.Tensor, site: str | Site, eps: Budget | list[Budget] | torch.Tensor,
                *, direction: str = "up", toward: torch.Tensor | None = None, norm: str = "linf", steps: int = 20,
                step_size: float | None = None, step: str = "apgd", delta: float | None = None,
                random_start: bool = True, eot: int = 1, seed: int = 0, progress: bool = True) -> AttackResult:
    """Drive ``site`` ('IT:12', 'V4:c5[3,4]', 'IT:readout:site3') ``direction`` 'up' or 'down' within each budget;
    or, with ``toward`` (reference images, one or one per image), move the whole population of the site's layer
    towards the references' responses.  ``scores`` / ``clean_scores`` of the result hold the site's response (for
    a population: the normalized distance ‖a − a*‖ / ‖a*‖ to the reference pattern); ``success`` is a change of at
    least ``delta`` in the requested direction (any change in it when no ``delta`` is given).  ``step``: 'apgd'
    (Auto-PGD, default) or 'pgd' (fixed steps of ``step_size`` × ε, default 2.5/steps)."""
    t0 = time.perf_counter()
    p = check_norm(norm)
    budgets = parse_eps(eps)
    if direction not in DIRECTIONS:
        raise ConfigError(f"direction must be 'up' or 'down', got {direction!r}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if delta is not None and not (delta > 0 and math.isfinite(delta)):
        raise ConfigError(f"delta must be a positive number, got {delta}")
    if delta is not None and toward is not None:
        raise ConfigError("delta (a target change of one site's response) does not apply to a population attack")
    target = parse(site) if isinstance(site, str) else site
    if not isinstance(target, Site) or isinstance(target.index, tuple):
        raise ConfigError(f"{site!r} is not one site: write LAYER:CHANNEL, e.g. 'IT:12' or 'IT:readout:site3'")
    target = target.resolve(model)
    x, y, _ = inputs(model, images, None)
    warn_if_stochastic(model, eot)
    n, k = x.shape[0], len(budgets)
    response = _PopulationDistance(model, target.layer, toward, x) if toward is not None else _SiteResponse(target)
    seeded = lambda: noise_generator(generator(derive(seed, 2), x.device))  # each measurement: the same noise draws
    with seeded():
        clean_r = response.measure(model, x)
    sign = -1.0 if (direction == "down" or toward is not None) else 1.0
    eps_rep = budgets.to(x.device).repeat_interleave(n)
    x_rep = x.repeat(k, 1, 1, 1)
    objective: Objective = response.objective(k) if sign > 0 or toward is not None else -response.objective(k)
    stop = ScoreAtLeast((sign * clean_r + delta).repeat(k)) if delta is not None else None
    rel = REL_STEP / steps if step_size is None else float(step_size)
    rule = ("sign" if p == math.inf else "l2") if step == "pgd" else ("apgd" if p == math.inf else "apgd-l2")
    lr = rel * eps_rep if step == "pgd" else 2 * eps_rep
    if not (eps_rep > 0).all():
        raise ConfigError("site attacks need budgets > 0")
    run = optimize(model, objective, Pixels(x_rep), constraints=[LpBall(x_rep, eps_rep, p), Box()], step=rule, lr=lr,
                   steps=steps, stop=stop, random_start=random_start, eot=eot, seed=seed, progress=progress,
                   metadata={"attack_round": True})
    adversarial = run.images.to(x.device).view(k, n, *x.shape[1:])
    with seeded():
        adv_r = response.measure(model, adversarial.flatten(0, 1)).view(k, n)
    change = sign * (adv_r - clean_r[None])
    success = change >= delta if delta is not None else change > 0
    z = logits(model, adversarial.flatten(0, 1), eot, seed=seed).view(k, n, -1)
    sd = float(clean_r.std()) if n > 1 else math.nan
    result = AttackResult(
        images=x.cpu(), labels=y.cpu(), eps=budgets, adversarial=adversarial.cpu(), success=success.cpu(),
        distance=distances(adversarial, x[None], norm).cpu(), predictions=z.argmax(-1).cpu(),
        clean_predictions=y.cpu(), norm=norm, scores=adv_r.cpu(), clean_scores=clean_r.cpu(),
        classes=list(model.classes),
        metadata={"model": model.name, "weights_sha256": model.weights_digest(),
                  "attack": f"site-{norm}", "site": str(target), "direction": direction if toward is None else "toward",
                  "response": response.name, "steps": steps,
                  "step_size": f"{rel:g}*eps" if step == "pgd" else "2*eps, halved (APGD)", "step_rule": rule,
                  "delta": delta, "random_start": random_start, "eot": eot, "seed": seed,
                  "response_sd": sd, "gradients": run.metadata["evaluations"],
                  "seconds": round(time.perf_counter() - t0, 3)})
    result.checks.update(gradient_report([run]))
    return result


def relative_change(result: AttackResult) -> torch.Tensor:
    """Per budget and image, the site's change in the attacked direction in units of its SD over the clean images."""
    if result.scores is None or result.clean_scores is None:
        raise ConfigError("this result holds no site responses (not a site attack)")
    sign = -1.0 if result.metadata.get("direction") in ("down", "toward") else 1.0
    sd = result.metadata.get("response_sd") or float(result.clean_scores.std())
    return sign * (result.scores - result.clean_scores[None]) / max(sd, 1e-12)


def plot_changes(results: dict[str, AttackResult], path: str | os.PathLike) -> Path:
    """A PNG of the median change (SD units, attacked direction) against ε, one line per model or condition."""
    from .figures import accuracy_plot

    first = next(iter(results.values()))
    curves = {name: (r.eps, relative_change(r).median(1).values) for name, r in results.items()}
    return accuracy_plot(curves, path, norm=first.norm, title=f"{first.metadata.get('site', 'site')}: median change",
                         ylabel="response change (SD over clean images)")


class _SiteResponse:
    """A single site's response (the objective itself)."""

    def __init__(self, site: Site):
        self.site, self.name = site, f"response of {site}"

    def objective(self, k: int) -> Objective:
        return self.site

    @torch.no_grad()
    def measure(self, model: ProbeModel, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.site.score(model.activations(x[i:i + 256], self.site.layers, check=False))
                          for i in range(0, x.shape[0], 256)])


class _PopulationDistance:
    """The distance of a layer's population response to reference images' responses (normalized by their norm)."""

    def __init__(self, model: ProbeModel, layer: str, toward: torch.Tensor, x: torch.Tensor):
        ref = toward[None] if toward.ndim == 3 else toward
        if ref.shape[0] not in (1, x.shape[0]) or ref.shape[1:] != x.shape[1:]:
            raise ConfigError(f"reference images of shape {tuple(ref.shape)} do not match the attacked images "
                              f"{tuple(x.shape)}: give one, or one per image")
        with torch.no_grad():
            a = model.activations(ref.to(x.device).float(), layer)[layer]
        self.layer, self.name = layer, f"normalized distance of {layer} to the reference population"
        self.target = a.expand(x.shape[0], *a.shape[1:]).contiguous()

    def objective(self, k: int) -> Objective:
        return Match(self.layer, self.target.repeat(k, *[1] * (self.target.ndim - 1)))

    @torch.no_grad()
    def measure(self, model: ProbeModel, x: torch.Tensor) -> torch.Tensor:
        a = model.activations(x, self.layer, check=False)[self.layer].flatten(1)
        t = self.target.repeat(x.shape[0] // self.target.shape[0], *[1] * (self.target.ndim - 1)).flatten(1)
        return (a - t).norm(dim=1) / t.norm(dim=1).clamp_min(1e-12)

