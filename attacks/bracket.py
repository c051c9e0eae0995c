"""The ε bracket that both budget searches drive, ``attacks.pgd``'s sweep and ``attacks.minimal``'s bisection.

Each image keeps a bracket: ``lo``, the largest budget at which a full attack failed, and ``hi``, the smallest at
which one succeeded.  Every round attacks each open image at a budget between the two, and its verdict moves one
end: a success lowers ``hi``, a failure raises ``lo``.  The images of one round, each at its own ε, are one batch;
an image attacked before starts from its last iterate moved into the new ball (and gets ``warm_steps``).  Where the
budgets lie and when a bracket is closed is the search's: ``Grid`` walks the discrete budgets of a sweep, one level
at a time, until its two ends are neighbours; ``Continuous`` doubles the budget until an attack succeeds, then
bisects until the bracket is narrower than a tolerance.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from synth.zoo.probe import ProbeModel

from .common import attack_round
from .result import distances


class Search(Protocol):
    """Where a bracket search attacks next and how a verdict narrows the bracket (``lo``, ``hi``: per image)."""

    def open(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Which images still need a round (a boolean mask)."""

    def level(self, lo: torch.Tensor, hi: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        """Where to attack each open image this round, from its bracket and its guess ``nxt``."""

    def eps(self, level: torch.Tensor) -> torch.Tensor:
        """The budgets of ``level``."""

    def broken(self, level: torch.Tensor, adversarial: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The new ``hi`` of images broken at ``level`` by ``adversarial`` (clean images ``x``)."""

    def next(self, level: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        """The guess ``nxt`` after the attack at ``level`` succeeded (``ok``) or failed."""


class Grid:
    """A sweep's budgets ``levels`` (ascending): ``lo`` and ``hi`` index them; an image walks down a level while it
    breaks and up while it holds, until ``lo`` and ``hi`` are neighbours."""

    def __init__(self, levels: torch.Tensor):
        self.levels = levels

    def open(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Images with a budget left between ``lo`` and ``hi``."""
        return hi - lo > 1

    def level(self, lo: torch.Tensor, hi: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        """The guess, kept strictly inside the bracket."""
        return nxt.clamp(lo + 1, hi - 1)

    def eps(self, level: torch.Tensor) -> torch.Tensor:
        """The budgets at the level indices."""
        return self.levels[level]

    def broken(self, level: torch.Tensor, adversarial: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The level itself: a grid knows no budget between two levels."""
        return level

    def next(self, level: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        """One level down after a success, one up after a failure."""
        return torch.where(ok, level - 1, level + 1)


class Continuous:
    """Budgets in (0, ``eps_max``]: ``hi`` starts infinite and the guess doubles while no attack succeeds; then the
    bracket halves until ``hi - lo <= tol * hi``.  An image that holds at ``eps_max`` is given up."""

    def __init__(self, eps_max: float, tol: float, norm: str):
        self.eps_max, self.tol, self.norm = eps_max, tol, norm

    def open(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Images not broken clean, not yet narrow enough and not hopeless."""
        narrow = torch.isfinite(hi) & (hi - lo <= self.tol * hi)
        hopeless = torch.isinf(hi) & (lo >= self.eps_max)  # a full attack failed at eps_max
        return (hi > 0) & ~narrow & ~hopeless

    def level(self, lo: torch.Tensor, hi: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
        """The guess until an attack succeeds, then the bracket's midpoint."""
        return torch.where(torch.isinf(hi), nxt, (lo + hi) / 2)

    def eps(self, level: torch.Tensor) -> torch.Tensor:
        """The level is the budget."""
        return level

    def broken(self, level: torch.Tensor, adversarial: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The adversarial image's own norm, where early stopping left it inside the ball."""
        return torch.minimum(distances(adversarial, x, self.norm), level)

    def next(self, level: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        """Twice the budget after a failure, up to ``eps_max`` (a broken image is bisected: its guess is not read
        again)."""
        return torch.where(ok, level, (2 * level).clamp(max=self.eps_max))


@dataclass
class Bracket:
    """A bracket search's outcome per image: the bounds, the adversarial image found at ``hi``, the best iterate
    at ``lo``; the engine results of every attack and the rounds run."""

    lo: torch.Tensor
    hi: torch.Tensor
    found: torch.Tensor
    at_lo: torch.Tensor
    runs: list
    rounds: int


def bracket(model: ProbeModel, x: torch.Tensor, y: torch.Tensor, tgt: torch.Tensor | None, search: Search,
            lo: torch.Tensor, hi: torch.Tensor, nxt: torch.Tensor, *, steps: int, warm_steps: int, restarts: int,
            seed: int, rounds: int | None = None, **kw) -> Bracket:
    """Narrow each image's bracket (``lo``, ``hi`` and the guess ``nxt``, changed in place) round by round, at
    most ``rounds`` rounds (None: until every bracket is closed), attacking at the budgets ``search`` picks;
    ``kw``: the attack's settings (``attack_round``'s)."""
    found, at_lo, last = x.clone(), x.clone(), x.clone()
    attacked = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    runs, done = [], 0
    while rounds is None or done < rounds:
        todo = torch.nonzero(search.open(lo, hi))[:, 0]
        if not len(todo):
            break
        level = search.level(lo[todo], hi[todo], nxt[todo])
        warmed = attacked[todo]
        for warm in (False, True):
            group, at = todo[warmed == warm], level[warmed == warm]
            if not len(group):
                continue
            ok, adv, best, group_runs = attack_with_restarts(model, x, y, tgt, group, search.eps(at),
                                                             last[group] if warm else None,
                                                             steps=warm_steps if warm else steps, full_steps=steps,
                                                             restarts=restarts, seed=seed + 7919 * done, **kw)
            runs += group_runs
            hi[group[ok]], found[group[ok]] = search.broken(at, adv, x[group])[ok], adv[ok]
            lo[group[~ok]], at_lo[group[~ok]] = at[~ok], best[~ok]
            nxt[group] = search.next(at, ok)
            last[group] = torch.where(ok.view(-1, 1, 1, 1), adv, best)
            attacked[group] = True
        done += 1
    return Bracket(lo, hi, found, at_lo, runs, done)


def attack_with_restarts(model: ProbeModel, x: torch.Tensor, y: torch.Tensor, tgt: torch.Tensor | None,
                         group: torch.Tensor, eps: torch.Tensor, start: torch.Tensor | None, *, steps: int,
                         full_steps: int, restarts: int, seed: int, **kw):
    """Attack the images ``group`` at budgets ``eps``; images still unbroken get ``restarts - 1`` further random
    starts.  Returns success, the successful images, the best iterates and the engine results.  For a stochastic
    model the "best" iterate is the last: one picked by its score on a step's noise draws is a lucky draw, and
    judging it again (after the last iterate was judged) would count a borderline image twice."""
    noisy = model.stochastic
    res = attack_round(model, x[group], y[group], tgt[group] if tgt is not None else None, eps, start, steps=steps,
                       seed=seed, **kw)
    ok, images = res.success.to(x.device), res.images.to(x.device)
    best = (res.images if noisy else res.best).to(x.device).clone()
    runs = [res]
    for r in range(1, restarts):
        failed = torch.nonzero(~ok)[:, 0]
        if not len(failed):
            break
        sub = group[failed]
        again = attack_round(model, x[sub], y[sub], tgt[sub] if tgt is not None else None, eps[failed], None,
                             steps=full_steps, seed=seed + r, **{**kw, "random_start": True})
        runs.append(again)
        won = again.success.to(x.device)
        ok[failed[won]] = True
        images[failed[won]] = again.images.to(x.device)[won]
        if noisy:
            best[failed[~won]] = again.images.to(x.device)[~won]
        else:
            better = ~won & (again.best_scores.to(x.device) > res.best_scores.to(x.device)[failed])
            best[failed[better]] = again.best.to(x.device)[better]
    return ok, images, best, runs
