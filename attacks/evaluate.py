"""``evaluate``: a reliable robust-accuracy verdict, AutoAttack's idea (Croce & Hein 2020) on the one engine.

A single PGD overstates robustness: on toy-robust at L-inf 4/255 (64 images) ``attacks.pgd`` left 2 images
unbroken that AutoAttack's APGD-CE + APGD-T broke.  ``evaluate`` runs a cascade, each stage only on the images
every earlier stage left unbroken, so the expensive stages see few images:

1. ``pgd``: the cheap strong first pass, a sweep over all the budgets at once (``attacks.pgd``, Auto-PGD steps).
2. ``apgd-ce``: Auto-PGD on cross-entropy with the full step count, from a new random start.
3. ``apgd-t``: targeted Auto-PGD on the DLR loss (``synth.engine.objectives.DLR``) towards each of the
   ``targets`` classes the model ranks highest after the true one (AutoAttack's APGD-T).
4. ``square``: the Square attack (Andriushchenko et al. 2020), forward passes only, which finds what gradient
   masking hides from the gradient stages.

An image counts as broken when any stage found an image inside its ball that the model's verdict (the EOT mean
over ``eot`` draws on a stochastic model) calls another class; every such image is checked again by a forward
pass before it counts, and the returned ``AttackResult`` holds, per budget, the adversarial image found first.
``metadata['broken_by']`` tallies, per stage and budget, the images each stage broke, and
``metadata['seconds_by_stage']`` what each stage cost.
"""
from __future__ import annotations

import math
import time

import torch

from synth.errors import UnknownNameError
from synth.zoo.probe import ProbeModel

from .common import (
    Budget,
    LabelsLike,
    attack_round,
    check_norm,
    inputs,
    logits,
    parse_eps,
    success_of,
    warn_if_stochastic,
)
from .pgd import finish, pgd
from .result import AttackResult

STAGES = ("pgd", "apgd-ce", "apgd-t", "square")
# A stochastic model's default, as AutoAttack's version for randomized defenses: the gradient stages with EOT, and no
# Square, whose random search would need eot passes per query and mistakes the noise for progress.
STOCHASTIC_STAGES = ("pgd", "apgd-ce", "apgd-t")


def evaluate(model: ProbeModel, images: torch.Tensor, labels: LabelsLike | None = None,
             eps: Budget | list[Budget] | torch.Tensor = 8 / 255, *, norm: str = "linf", steps: int = 100,
             first_steps: int = 20, targets: int = 3, queries: int = 1000, eot: int = 1, seed: int = 0,
             stages: tuple[str, ...] | None = None, progress: bool = True) -> AttackResult:
    """Robust accuracy that survives a cascade of attacks (see the module docstring), at one budget or a sweep.

    ``steps``: Auto-PGD steps of the APGD-CE and APGD-T stages (AutoAttack's 100); ``first_steps``: steps of the
    first PGD sweep; ``targets``: classes APGD-T aims at (AutoAttack's 9 on CIFAR-10; 3 here, as on ImageNet in
    its 'standard' version); ``queries``: forward passes per image of the Square stage (AutoAttack's 5000);
    ``stages``: which stages run, in this order (default ``STAGES``, or ``STOCHASTIC_STAGES`` on a stochastic
    model); ``eot``: noise draws of a stochastic model per step and per verdict."""
    t0 = time.perf_counter()
    stages = tuple(stages) if stages is not None else STOCHASTIC_STAGES if model.stochastic else STAGES
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UnknownNameError("evaluate stage", unknown[0], STAGES)
    check_norm(norm)
    budgets = parse_eps(eps)
    x, y, _ = inputs(model, images, labels)
    warn_if_stochastic(model, eot)
    clean = logits(model, x, eot, seed=seed)
    book = _Book(model, x, y, budgets, clean, eot, seed, stages)
    if "pgd" in stages:
        t = time.perf_counter()
        first = pgd(model, x, y, budgets, steps=first_steps, norm=norm, eot=eot, seed=seed, progress=progress)
        for j in range(len(budgets)):
            book.offer("pgd", j, torch.arange(len(x), device=x.device), first.adversarial[j].to(x.device))
        book.seconds["pgd"] += time.perf_counter() - t
    for j, e in enumerate(budgets.tolist()):
        book.carry(j)
        for stage in (s for s in stages if s != "pgd"):
            alive = book.alive(j)
            if not len(alive) or e == 0:
                break
            t = time.perf_counter()
            for found in _stage(stage, model, x[alive], y[alive], clean[alive], e, norm=norm, steps=steps,
                                targets=targets, queries=queries, eot=eot, seed=seed + 101 * j, progress=progress):
                book.offer(stage, j, alive, found)
            book.seconds[stage] += time.perf_counter() - t
    result = finish(model, x, y, None, budgets, book.adversarial, clean, norm, eot, "ce", seed)
    result.metadata.update({
        "attack": f"evaluate-{norm}", "stages": list(stages), "steps": steps, "first_steps": first_steps,
        "targets": targets, "queries": queries, "eot": eot, "seed": seed,
        "broken_by": {s: book.tally[s] for s in stages},
        "seconds_by_stage": {s: round(book.seconds[s], 3) for s in stages},
        "seconds": round(time.perf_counter() - t0, 3)})
    return result


class _Book:
    """Which images each budget has broken so far, the adversarial image found for each, and each stage's tally."""

    def __init__(self, model: ProbeModel, x: torch.Tensor, y: torch.Tensor, budgets: torch.Tensor,
                 clean: torch.Tensor, eot: int, seed: int, stages: tuple[str, ...]):
        self.model, self.x, self.y, self.eot, self.seed = model, x, y, eot, seed
        k = len(budgets)
        self.adversarial = x[None].repeat(k, 1, 1, 1, 1)
        self.broken = success_of(clean, y, None)[None].repeat(k, 1)  # misclassified clean: broken at any budget
        self.tally = {s: [0] * k for s in stages}
        self.seconds = {s: 0.0 for s in stages}

    def alive(self, j: int) -> torch.Tensor:
        """Indices of the images budget ``j`` has not broken yet."""
        return torch.nonzero(~self.broken[j])[:, 0]

    def carry(self, j: int) -> None:
        """An image broken at a smaller budget is broken at this one too, by the same image."""
        if j == 0:
            return
        moved = self.broken[j - 1] & ~self.broken[j]
        self.adversarial[j, moved], self.broken[j, moved] = self.adversarial[j - 1, moved], True

    def offer(self, stage: str, j: int, index: torch.Tensor, images: torch.Tensor) -> None:
        """Images a stage returned for the images ``index`` at budget ``j``: those the verdict (checked again here)
        calls another class, and that were not broken yet, count for that stage."""
        images = images.to(self.x.device)
        z = logits(self.model, images, self.eot, seed=self.seed)
        new = success_of(z, self.y[index], None) & ~self.broken[j, index]
        rows = index[new]
        self.adversarial[j, rows] = images[new]
        self.broken[j, rows] = True
        self.tally[stage][j] += int(new.sum())


def _stage(stage: str, model: ProbeModel, x: torch.Tensor, y: torch.Tensor, clean: torch.Tensor, eps: float, *,
           norm: str, steps: int, targets: int, queries: int, eot: int, seed: int, progress: bool):
    """The images one stage returns for ``x`` at budget ``eps`` (one batch per run it makes)."""
    budget = torch.full((len(x),), eps, device=x.device)
    kw = dict(norm=norm, step="apgd", step_size=2.0, eot=eot, progress=progress)
    if stage == "apgd-ce":
        yield attack_round(model, x, y, None, budget, None, steps=steps, loss="ce", seed=seed + 1, **kw).images
    elif stage == "apgd-t":
        ranked = clean.masked_fill(torch.nn.functional.one_hot(y, clean.shape[1]).bool(), -math.inf)
        ranked = ranked.argsort(1, descending=True)
        for t in range(min(targets, clean.shape[1] - 1)):
            yield attack_round(model, x, y, ranked[:, t], budget, None, steps=steps, loss="dlr",
                               seed=seed + 2 + t, **kw).images
    else:
        from .square import square_round
        yield square_round(model, x, y, budget, norm=norm, queries=queries, eot=eot, seed=seed + 50,
                           progress=progress).images
