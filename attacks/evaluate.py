"""``evaluate``: a reliable robust-accuracy verdict, AutoAttack's idea (Croce & Hein 2020) on the one engine.

A single PGD overstates robustness: on toy-robust at L-inf 4/255 (64 images) ``attacks.pgd`` left 2 images
unbroken that AutoAttack's APGD-CE + APGD-T broke.  ``evaluate`` runs a cascade, each stage only on the images
every earlier stage left unbroken, so the expensive stages see few images:

1. ``apgd-ce``: Auto-PGD on cross-entropy, ``first_steps`` steps from a random start, over all the budgets at once
   (``attacks.pgd``'s sweep); an image leaves the batch as soon as it is misclassified.
   ``apgd-dlr`` (not a default stage; AutoAttack's member for randomized defenses): untargeted Auto-PGD on the DLR
   loss.
2. ``apgd-t``: targeted Auto-PGD on the DLR loss (``synth.engine.objectives.DLR``) towards each of the
   ``targets`` classes the model ranks highest after the true one, one after the other on the images still
   unbroken (AutoAttack's APGD-T).
3. ``square``: the Square attack (Andriushchenko et al. 2020), forward passes only, which finds what gradient
   masking hides from the gradient stages.  It first probes with ``queries`` per image.  Where the gradients tell
   the truth the probe breaks nothing the gradient stages left; where it breaks an image, the gradients are not
   to be trusted, a ``GradientMaskingWarning`` says so, and Square runs its full ``full_queries`` (AutoAttack's
   5,000) on the images left.

An image counts as broken when any stage found an image inside its ball that the model's verdict (the EOT mean
over ``eot`` draws on a stochastic model) calls another class; every such image is checked again by a forward
pass before it counts, and the returned ``AttackResult`` holds, per budget, the adversarial image found first.
``metadata['broken_by']`` tallies, per stage and budget, the images each stage broke, ``metadata['seconds_by_stage']``
what each stage cost, and ``metadata['square_escalated']`` the budgets where Square ran its full search.
"""
from __future__ import annotations

import math
import time
import warnings

import torch

from synth.engine.loop import native_bf16
from synth.errors import ConfigError, UnknownNameError
from synth.zoo.probe import ProbeModel

from .checks import GradientMaskingWarning
from .common import (
    Budget,
    LabelsLike,
    attack_round,
    check_norm,
    inputs,
    logits,
    parse_eps,
    stops_early,
    success_of,
    warn_if_stochastic,
)
from .pgd import REL_STEP, finish, sweep
from .result import AttackResult
from .square import square_round

STAGES = ("apgd-ce", "apgd-dlr", "apgd-t", "square")
DEFAULT_STAGES = ("apgd-ce", "apgd-t", "square")
# A stochastic model's default, as AutoAttack's version for randomized defenses: the gradient stages with EOT, and no
# Square, whose random search would need eot passes per query and mistakes the noise for progress.
STOCHASTIC_STAGES = ("apgd-ce", "apgd-t")
DEFAULTS = {"steps": 100, "first_steps": 30, "targets": 3}
STOCHASTIC_DEFAULTS = {"steps": 20, "first_steps": 15, "targets": 1}


def evaluate(model: ProbeModel, images: torch.Tensor, labels: LabelsLike | None = None,
             eps: Budget | list[Budget] | torch.Tensor = 8 / 255, *, norm: str = "linf", steps: int | None = None,
             first_steps: int | None = None, targets: int | None = None, queries: int = 100,
             full_queries: int = 5000, eot: int = 1, draws: int | None = None, seed: int = 0,
             stages: tuple[str, ...] | None = None, precision: str = "auto", channels_last: bool = True,
             progress: bool = True) -> AttackResult:
    """Robust accuracy that survives a cascade of attacks (see the module docstring), at one budget or a sweep.

    ``steps``: Auto-PGD steps of each APGD-T run, per budget (AutoAttack's 100); ``first_steps``: of the APGD-CE
    stage (cross-entropy stalls early on the images it cannot break: on 128 toy-robust images, 30 steps broke as
    many as 100 at L-inf 4/255 and one fewer at L2 0.4, which APGD-T then broke); ``targets``: classes
    APGD-T aims at, one after the other (AutoAttack's 9 on CIFAR-10; 3 here, as in its ImageNet runs);
    ``draws``: noise draws per attack step on a stochastic model, while every verdict takes ``eot``; a later stage
    takes more where fewer images are left (its cost at most half the first stage's, up to ``eot``).  A stochastic
    model's defaults (``STOCHASTIC_DEFAULTS``: 15 steps of APGD-CE at half the verdict's draws per step, in
    bfloat16 where the device computes it, then APGD-T towards 1 class for 20 steps) buy its verdict with few draws
    per image, since every surviving image pays for each of them: on 256 toy-vone images, in one run of
    ``benchmarks/evaluate.py`` beside AutoAttack's 'rand' version (APGD-CE and APGD-DLR, 10 steps of 20 draws
    each), they left 1.6 points fewer at L-inf 4/255 in 49 s (12.9x less time) and 4.3 points fewer at L2 0.4 in
    82 s (10.3x);
    ``queries``: forward passes per image of Square's probe, ``full_queries`` of its full search, run only where
    the probe broke an image the gradient stages could not; ``stages``: which stages run, in this order
    (default ``DEFAULT_STAGES``, or ``STOCHASTIC_STAGES`` on a stochastic model; ``STAGES`` lists all four);
    ``eot``: noise draws of a stochastic model per step and per verdict; ``precision``: of the later stages (and
    of APGD-CE where its images can still stop early in it: on a stochastic model, see
    ``attacks.common.stops_early``): 'auto' (the default) is 'bf16' where the device computes bfloat16 natively
    (``synth.engine.loop.native_bf16``) and 'fp32' elsewhere; on toy-robust bfloat16 APGD-T broke the same images
    as float32 in half the time, once its images no longer stop early on a bfloat16 verdict (``attack_round``);
    ``channels_last``: the layout of every stage's passes (about a fifth faster on a CPU).  Every verdict runs in
    float32 and the standard layout."""
    t0 = time.perf_counter()
    defaults = STOCHASTIC_DEFAULTS if model.stochastic else DEFAULTS
    steps = defaults["steps"] if steps is None else steps
    first_steps = defaults["first_steps"] if first_steps is None else first_steps
    targets = defaults["targets"] if targets is None else targets
    draws = (max(1, eot // 2) if model.stochastic else eot) if draws is None else draws
    if precision == "auto":
        precision = "bf16" if native_bf16(model.device.type) else "fp32"
    # APGD-CE's images leave its batch as soon as they break: in reduced precision only where that still holds
    first_precision = precision if stops_early(model, True, precision, draws) else "fp32"
    engine = dict(precision="fp32", channels_last=channels_last)
    stages = tuple(stages) if stages is not None else STOCHASTIC_STAGES if model.stochastic else DEFAULT_STAGES
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UnknownNameError("evaluate stage", unknown[0], STAGES)
    if min(steps, first_steps, draws) < 1 or targets < 0 or not 1 <= queries <= full_queries:
        raise ConfigError(f"evaluate needs steps, first_steps, draws >= 1, targets >= 0 and 1 <= queries <= "
                          f"full_queries; got steps={steps}, first_steps={first_steps}, draws={draws}, "
                          f"targets={targets}, queries={queries}, full_queries={full_queries}")
    check_norm(norm)
    budgets = parse_eps(eps)
    x, y, _ = inputs(model, images, labels)
    warn_if_stochastic(model, eot)
    clean = logits(model, x, eot, seed=seed)
    book = _Book(model, x, y, budgets, clean, eot, seed, stages)
    if "apgd-ce" in stages:
        t = time.perf_counter()
        first, _ = sweep(model, x, y, None, budgets, clean, steps=first_steps, warm_steps=first_steps, restarts=1,
                         seed=seed, norm=norm, step="apgd", step_size=REL_STEP / first_steps, loss="ce", eot=draws,
                         progress=progress, early_stop=True, random_start=True,
                         engine={**engine, "precision": first_precision})
        for j in range(len(budgets)):
            book.offer("apgd-ce", j, torch.arange(len(x), device=x.device), first[j])
        book.seconds["apgd-ce"] += time.perf_counter() - t
    # AutoAttack's order of targets: the class the model ranks highest after the true one first
    ranked = clean.masked_fill(torch.nn.functional.one_hot(y, clean.shape[1]).bool(), -math.inf).argsort(1, True)
    escalated = [False] * len(budgets)

    def dlr_round(stage: str, j: int, e: float, target: torch.Tensor | None, round_seed: int) -> None:
        """Auto-PGD on the DLR loss (towards ``target``, or away from the label) on the images budget ``j`` has
        left, with more draws per step where fewer are left."""
        alive = book.alive(j)
        if len(alive):
            res = attack_round(model, x[alive], y[alive], None if target is None else target[alive], _ball(e, alive),
                               None, steps=steps, norm=norm, step="apgd", step_size=2.0, loss="dlr",
                               eot=_late(draws, eot, len(x), alive), seed=round_seed, progress=progress,
                               recheck=False, engine={**engine, "precision": precision})
            book.offer(stage, j, alive, res.images)

    for j, e in enumerate(budgets.tolist()):
        book.carry(j)
        if e == 0:
            continue
        if "apgd-dlr" in stages:  # untargeted, as AutoAttack's version for randomized defenses runs it
            t = time.perf_counter()
            dlr_round("apgd-dlr", j, e, None, seed + 101 * j + 1)
            book.seconds["apgd-dlr"] += time.perf_counter() - t
        if "apgd-t" in stages:
            t = time.perf_counter()
            for k in range(min(targets, clean.shape[1] - 1)):
                dlr_round("apgd-t", j, e, ranked[:, k], seed + 101 * j + 2 + k)
            book.seconds["apgd-t"] += time.perf_counter() - t
        if "square" in stages:
            t = time.perf_counter()
            escalated[j] = _square(book, j, e, norm, queries, full_queries, seed + 101 * j, progress, engine)
            book.seconds["square"] += time.perf_counter() - t
    result = finish(model, x, y, None, budgets, book.adversarial, clean, norm, eot, "ce", seed, verdict=book.z)
    result.metadata.update({
        "attack": f"evaluate-{norm}", "stages": list(stages), "steps": steps, "first_steps": first_steps,
        "targets": targets, "queries": queries, "full_queries": full_queries, "square_escalated": escalated,
        "eot": eot, "draws": draws, "seed": seed,
        "precision": precision, "channels_last": channels_last,
        "broken_by": {s: book.tally[s] for s in stages},
        "seconds_by_stage": {s: round(book.seconds[s], 3) for s in stages},
        "seconds": round(time.perf_counter() - t0, 3)})
    return result


def _late(draws: int, eot: int, n: int, alive: torch.Tensor) -> int:
    """Draws per step of a later stage: more where fewer images are left (its cost at most half the first stage's,
    at ``draws`` per step on all ``n``), up to the verdict's ``eot``."""
    return min(eot, max(draws, round(draws * n / (2 * len(alive)))))


def _ball(eps: float, alive: torch.Tensor) -> torch.Tensor:
    """One budget for each of the ``alive`` images."""
    return torch.full((len(alive),), eps, device=alive.device)


def _square(book: _Book, j: int, eps: float, norm: str, queries: int, full_queries: int, seed: int,
            progress: bool, engine: dict) -> bool:
    """Square's probe at budget ``j`` and, where it broke an image, its full search; whether the full one ran."""
    alive = book.alive(j)
    if len(alive):
        res = square_round(book.model, book.x[alive], book.y[alive], _ball(eps, alive), norm=norm, queries=queries,
                           eot=book.eot, seed=seed + 50, progress=progress, engine=engine)
        book.offer("square", j, alive, res.images)
    alive = book.alive(j)
    if not book.tally["square"][j] or full_queries == queries or not len(alive):
        return False
    warnings.warn(f"at eps={eps:g} Square's {queries}-query probe broke {book.tally['square'][j]} image(s) that "
                  f"APGD-CE and APGD-T left unbroken: the gradients mislead here, so Square runs its full "
                  f"{full_queries} queries on the {len(alive)} left", GradientMaskingWarning, stacklevel=3)
    res = square_round(book.model, book.x[alive], book.y[alive], _ball(eps, alive), norm=norm, queries=full_queries,
                       eot=book.eot, seed=seed + 60, progress=progress, engine=engine)
    book.offer("square", j, alive, res.images)
    return True


class _Book:
    """Which images each budget has broken so far, the adversarial image found for each, and each stage's tally."""

    def __init__(self, model: ProbeModel, x: torch.Tensor, y: torch.Tensor, budgets: torch.Tensor,
                 clean: torch.Tensor, eot: int, seed: int, stages: tuple[str, ...]):
        self.model, self.x, self.y, self.eot, self.seed = model, x, y, eot, seed
        k = len(budgets)
        self.adversarial = x[None].repeat(k, 1, 1, 1, 1)
        self.broken = success_of(clean, y, None)[None].repeat(k, 1)  # misclassified clean: broken at any budget
        self.z = clean[None].repeat(k, 1, 1)  # the verdict's logits of each image in ``adversarial``
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
        self.adversarial[j, moved], self.z[j, moved] = self.adversarial[j - 1, moved], self.z[j - 1, moved]
        self.broken[j, moved] = True

    def offer(self, stage: str, j: int, index: torch.Tensor, images: torch.Tensor) -> None:
        """Images a stage returned for the images ``index`` at budget ``j``: those the verdict (checked again here)
        calls another class, and that were not broken yet, count for that stage."""
        images = images.to(self.x.device)
        z = logits(self.model, images, self.eot, seed=self.seed)
        new = success_of(z, self.y[index], None) & ~self.broken[j, index]
        rows = index[new]
        self.adversarial[j, rows], self.z[j, rows] = images[new], z[new]
        self.broken[j, rows] = True
        self.tally[stage][j] += int(new.sum())
