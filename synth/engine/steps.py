"""The step rules of the one loop, gradient and gradient-free, behind the one interface the loop drives: ``Stepper``.

Gradient rules are torch optimizers with a step-size schedule (``step_rule``, ``schedule``): Adam, SGD, steepest
descent in L-inf or L2 (``SteepestDescent``), Auto-PGD (``APGD``), or any optimizer a caller's factory makes.
Gradient-free rules (``GradientFree``) update the parametrization from the scores alone: XDream's genetic algorithm
(``Genetic``) and CMA-ES (``CMAES``), which ``synth.neuro.evolve`` drives, and Square Attack's random search
(``Square``), which ``attacks.square`` drives.  ``stepper`` wraps either kind as a ``Stepper``: ``Descent`` (an
optimizer and its schedule) or ``Evolution`` (a gradient-free rule).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from synth.errors import CheckpointError, ConfigError, UnknownNameError
from synth.files import tensor_digest
from synth.zoo.probe import SHARED

STEP_RULES = ("adam", "sgd", "sign", "l2", "apgd", "apgd-l2")
SCHEDULES = ("constant", "cosine", "linear", "step", "plateau")


class Stepper(Protocol):
    """A step rule as the loop drives it.  ``gradient``: whether it steps along the scores' gradient (the loop then
    builds the graph and records gradient norms).  ``independent``: whether it steps each image on its own, so that
    images that stopped leave the batch (every gradient rule, and a gradient-free rule that says so; a population
    search moves its whole population).  Each step the loop calls ``backward`` and then ``step``; a checkpoint holds
    ``state_dict()``'s entries ('optimizer', 'schedule', 'free'), which ``load_state_dict`` restores."""

    gradient: bool
    independent: bool

    def backward(self, scores: torch.Tensor) -> None:
        """Give the parameters the gradient of this step's summed ``scores`` (ascent), if the rule follows one."""

    def step(self, scores: torch.Tensor, active: torch.Tensor) -> None:
        """Move the parameters, given this step's ``scores`` of the images ``active`` of the batch."""

    def state_dict(self) -> dict:
        """The rule's state, as the checkpoint entries 'optimizer', 'schedule' and 'free'."""

    def load_state_dict(self, state: dict) -> None:
        """Restore the rule's state from a checkpoint's entries."""


class GradientFree(Protocol):
    """A step rule that updates the parametrization from scores alone (e.g. a genetic algorithm); to checkpoint,
    it also has ``state_dict()`` and ``load_state_dict()``.  A rule whose images are searched each on its own
    (``Square``) says ``independent = True``: its ``update(scores, active)`` then gets the scores of the images
    ``active`` still in the batch, and the images that stopped leave it."""

    def update(self, scores: torch.Tensor) -> None:
        """Replace the population in the parametrization given this generation's scores."""


OptimizerFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]
ScheduleFactory = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]


def _per_image(lr: float | torch.Tensor) -> tuple[float, torch.Tensor | None]:
    """A step size as (scheduled base, per-image factors or None): a tensor gives one size per image."""
    if isinstance(lr, torch.Tensor) and lr.ndim == 1:
        if not (torch.isfinite(lr).all() and (lr > 0).all()):
            raise ConfigError("per-image step sizes must be positive finite numbers")
        return 1.0, lr.detach().float()
    lr = float(lr)
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"step size lr must be a positive number, got {lr}")
    return lr, None


def _direction(grad: torch.Tensor, norm: float) -> torch.Tensor:
    """Steepest-ascent direction of unit length per image: the gradient's sign (L-inf) or the gradient over its
    L2 norm (dim 0 indexes images)."""
    if norm == math.inf:
        return grad.sign()
    return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.ndim - 1))


def _shaped(scale: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    if scale.shape[0] != p.shape[0]:
        raise ConfigError(f"{scale.shape[0]} step sizes for a parameter holding {p.shape[0]} images")
    return scale.to(p.device, p.dtype).view(-1, *[1] * (p.ndim - 1))


class SteepestDescent(torch.optim.Optimizer):
    """Steepest descent of length ``lr`` in a norm, per image: L-inf steps along the gradient's sign (the FGSM /
    PGD step), L2 steps along the gradient divided by its norm over each image.  ``lr`` is one step size or one
    per image (an (N,) tensor)."""

    def __init__(self, params, lr: float | torch.Tensor, norm: float):
        if norm not in (2, math.inf):
            raise ConfigError(f"steepest descent supports the L2 and L-inf norms, got {norm}")
        base, self.scale = _per_image(lr)
        super().__init__(params, {"lr": base})
        self.norm = norm

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        """One steepest step of each parameter with a gradient, against the gradient (the loss descends)."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = _direction(p.grad, self.norm)
                if self.scale is None:
                    p.add_(d, alpha=-group["lr"])
                else:
                    p.addcmul_(d, _shaped(self.scale, p), value=-group["lr"])


class APGD(torch.optim.Optimizer):
    """Auto-PGD's step rule (Croce & Hein 2020): steepest steps with momentum 0.75, and a per-image step size that
    starts at ``lr`` (2ε in the paper) and halves at checkpoints where the score rose in fewer than ``rho`` of the
    steps since the last one, or neither the step size nor the best score changed; a halved image restarts from
    its best point.  Checkpoints fall after 22% of ``steps``, then at gaps shrinking by 3% to at least 6%.
    ``project`` maps a point back onto the feasible set (ε-ball and box).  The engine passes each step's scores
    through ``observe`` before ``step``."""

    def __init__(self, params, lr: float | torch.Tensor, norm: float, steps: int,
                 project: Callable[[torch.Tensor], None], alpha: float = 0.75, rho: float = 0.75):
        if norm not in (2, math.inf):
            raise ConfigError(f"APGD supports the L2 and L-inf norms, got {norm}")
        base, scale = _per_image(lr)
        super().__init__(params, {"lr": base})
        ps = [p for g in self.param_groups for p in g["params"]]
        if len(ps) != 1:
            raise ConfigError("APGD steps one pixel tensor")
        self.p, self.norm, self.project, self.alpha, self.rho = ps[0], norm, project, alpha, rho
        n = self.p.shape[0]
        self.eta = (scale if scale is not None else torch.ones(n)).to(self.p.device, self.p.dtype).clone()
        self.gap = max(int(0.22 * steps), 1)
        self.shrink, self.min_gap = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
        self.t = self.since = 0
        self.prev = self.p.detach().clone()
        self.best = self.p.detach().clone()
        self.best_grad = torch.zeros_like(self.p)
        self.best_f = torch.full((n,), -math.inf, device=self.p.device)
        self.last_f = torch.full((n,), -math.inf, device=self.p.device)
        self.rises = torch.zeros(n, device=self.p.device)
        self.best_at_check = self.best_f.clone()
        self.halved_at_check = torch.ones(n, dtype=torch.bool, device=self.p.device)

    @torch.no_grad()
    def observe(self, scores: torch.Tensor, index: torch.Tensor) -> None:
        """Record the scores of the current point for images ``index``; at a checkpoint, halve and restart."""
        p, grad = self.p, self.p.grad
        scores = scores.to(self.best_f.dtype)
        better = scores > self.best_f[index]
        rows = index[better]
        self.best[rows] = p[rows]
        if grad is not None:
            self.best_grad[rows] = grad[rows]
        self.best_f[rows] = scores[better]
        if self.t > 0:
            self.rises[index] += (scores > self.last_f[index]).float()
            self.since += 1
        self.last_f[index] = scores
        if self.since < self.gap:
            return
        oscillating = self.rises <= self.gap * self.rho
        stalled = ~self.halved_at_check & (self.best_at_check >= self.best_f)
        halve = oscillating | stalled
        self.eta[halve] /= 2
        p[halve] = self.best[halve]
        if grad is not None:
            grad[halve] = self.best_grad[halve]
        self.halved_at_check, self.best_at_check = halve, self.best_f.clone()
        self.rises.zero_()
        self.since = 0
        self.gap = max(self.gap - self.shrink, self.min_gap)

    _STATE = ("eta", "prev", "best", "best_grad", "best_f", "last_f", "rises", "best_at_check", "halved_at_check")

    def state_dict(self) -> dict:
        """The optimizer's state plus Auto-PGD's per-image step sizes, best points and checkpoint counters."""
        out = super().state_dict()
        out["apgd"] = {**{k: getattr(self, k).clone() for k in self._STATE},
                       "gap": self.gap, "t": self.t, "since": self.since}
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore ``state_dict``'s output."""
        state_dict = dict(state_dict)
        mine = state_dict.pop("apgd")
        super().load_state_dict(state_dict)
        for k in self._STATE:
            getattr(self, k).copy_(mine[k])
        self.gap, self.t, self.since = mine["gap"], mine["t"], mine["since"]

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        """One Auto-PGD step: a projected steepest step, mixed with the last step's momentum, projected again."""
        p = self.p
        if p.grad is None:
            return
        lr = self.param_groups[0]["lr"]
        momentum = p - self.prev
        self.prev = p.detach().clone()
        a = self.alpha if self.t > 0 else 1.0
        z = p - _direction(p.grad, self.norm) * _shaped(self.eta, p) * lr  # the gradient is of the loss, -score
        self.project(z)
        new = p + a * (z - p) + (1 - a) * momentum
        self.project(new)
        p.copy_(new)
        self.t += 1


def step_rule(name: str, params: Sequence[torch.Tensor], lr: float | torch.Tensor, steps: int = 1,
              project: Callable[[torch.Tensor], None] | None = None) -> torch.optim.Optimizer:
    """Build a step rule by name: 'adam', 'sgd', 'sign' (L-inf steepest), 'l2' (normalized gradient), 'apgd' /
    'apgd-l2' (Auto-PGD, which needs the run's ``steps`` and the ``project``ion onto the feasible set).  ``lr`` may
    hold one step size per image for the steepest and APGD rules."""
    if name not in STEP_RULES:
        raise UnknownNameError("step rule", name, STEP_RULES)
    base, scale = _per_image(lr)
    if name == "adam" or name == "sgd":
        if scale is not None:
            raise ConfigError(f"per-image step sizes work with the 'sign', 'l2' and 'apgd' step rules, not {name!r}")
        return torch.optim.Adam(params, lr=base) if name == "adam" else torch.optim.SGD(params, lr=base)
    if name in ("sign", "l2"):
        return SteepestDescent(params, lr, math.inf if name == "sign" else 2)
    return APGD(params, lr, math.inf if name == "apgd" else 2, steps, project or (lambda x: None))


class StepDecay:
    """Step decay: the step size is multiplied by ``gamma`` at the start of each of ``stages`` equal parts of the
    run.  The default is Feather et al. (2023)'s metamer schedule: 8 stages, each halving the step."""

    def __init__(self, stages: int = 8, gamma: float = 0.5):
        if stages < 1 or not 0 < gamma <= 1:
            raise ConfigError(f"step decay needs stages >= 1 and 0 < gamma <= 1, got {stages} and {gamma}")
        self.stages, self.gamma = int(stages), float(gamma)

    def __call__(self, opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        every = max(1, math.ceil(steps / self.stages))
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: self.gamma ** min(t // every, self.stages - 1))

    def __str__(self) -> str:
        return f"step(stages={self.stages}, gamma={self.gamma:g})"


class PlateauDecay:
    """Feather et al.'s step decay on each image's own clock: an image's step is multiplied by ``gamma`` when its
    best score rose by less than ``rel`` of its size over its last ``patience`` steps, or when it has spent
    ``every`` steps at one step size (None: no limit), down to ``gamma`` ** (``stages`` - 1) (8 stages: 1/128, as
    Feather's schedule ends).  A decay at fixed fractions of the budget makes an image that needs small steps wait
    for the run's late stages whatever its own progress, so a larger budget makes every hard image slower; here an
    image halves as soon as it stalls, and at the latest after ``every`` steps, whatever the budget.  Works with any
    gradient rule whose parameters hold one image per index of their first dimension (pixels): it scales each
    image's update."""

    def __init__(self, patience: int = 50, gamma: float = 0.5, stages: int = 8, rel: float = 0.01,
                 every: int | None = None):
        if patience < 1 or not 0 < gamma < 1 or stages < 1 or rel < 0 or (every is not None and every < 1):
            raise ConfigError(f"plateau decay needs patience >= 1, 0 < gamma < 1, stages >= 1, rel >= 0 and every "
                              f"None or >= 1; got {patience}, {gamma}, {stages}, {rel}, {every}")
        self.patience, self.gamma, self.stages, self.rel = int(patience), float(gamma), int(stages), float(rel)
        self.every = None if every is None else int(every)
        self.factor: torch.Tensor | None = None

    def __str__(self) -> str:
        every = f", every={self.every}" if self.every is not None else ""
        return f"plateau(patience={self.patience}, gamma={self.gamma:g}, stages={self.stages}, rel={self.rel:g}{every})"

    def settings(self) -> dict:
        """The constructor's arguments, for a run's own copy."""
        return {"patience": self.patience, "gamma": self.gamma, "stages": self.stages, "rel": self.rel,
                "every": self.every}

    def _bind(self, n: int, device: torch.device) -> None:
        self.factor = torch.ones(n, device=device)
        self.best = torch.full((n,), -math.inf, device=device)
        self.best_at_check = torch.full((n,), -math.inf, device=device)
        self.since = torch.zeros(n, dtype=torch.long, device=device)
        self.held = torch.zeros(n, dtype=torch.long, device=device)  # steps at the present step size

    @torch.no_grad()
    def observe(self, scores: torch.Tensor, active: torch.Tensor, n: int) -> None:
        """Record the scores of images ``active`` (of ``n``); halve the step of those that stalled or held it
        ``every`` steps."""
        if self.factor is None:
            self._bind(n, scores.device)
        s = scores.detach().float()
        self.best[active] = torch.maximum(self.best[active], s)
        self.since[active] += 1
        self.held[active] += 1
        halve = torch.zeros(n, dtype=torch.bool, device=scores.device)
        due = active[self.since[active] >= self.patience]
        if len(due):
            before, now = self.best_at_check[due], self.best[due]
            halve[due] = torch.isfinite(before) & (now - before <= self.rel * before.abs())
            self.best_at_check[due], self.since[due] = now, 0
        if self.every is not None:
            halve[active] |= self.held[active] >= self.every
        if halve.any():
            floor = self.gamma ** (self.stages - 1)
            self.factor[halve] = (self.factor[halve] * self.gamma).clamp_min(floor)
            self.held[halve] = 0

    @torch.no_grad()
    def scale(self, before: list[torch.Tensor], params: list[torch.Tensor]) -> None:
        """Shrink each image's update (``params`` now against ``before``) by its factor."""
        for old, p in zip(before, params):
            if p.shape[0] != self.factor.shape[0]:
                raise ConfigError(f"plateau decay scales each image's update: it needs parameters with one image "
                                  f"per index of dim 0, got shape {tuple(p.shape)} for {self.factor.shape[0]} images")
            p.copy_(old + (p - old) * _shaped(self.factor, p))

    def state_dict(self) -> dict:
        """The per-image factors, best scores and counters."""
        if self.factor is None:
            return {}
        return {k: getattr(self, k).clone() for k in ("factor", "best", "best_at_check", "since", "held")}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``'s output (a checkpoint written before ``every`` existed held no 'held': zeros)."""
        for k, v in state.items():
            setattr(self, k, v.clone())
        if state and "held" not in state:
            self.held = torch.zeros_like(self.since)


def schedule(name: str | ScheduleFactory, opt: torch.optim.Optimizer,
             steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Step-size schedule over the run: 'constant', 'cosine' (to zero), 'linear' (to zero), 'step' (halved at
    each eighth, Feather et al.'s), or a callable ``(optimizer, steps) -> scheduler`` (e.g. ``StepDecay(4)``).
    Each is a closed form of the step index, so a run continued for more steps keeps its shape.  ('plateau', each
    image's own decay, is not a schedule of the step index: ``stepper`` builds it as a ``PlateauDecay``.)"""
    total = max(1, steps)
    if callable(name):
        out = name(opt, steps)
        if not isinstance(out, torch.optim.lr_scheduler.LRScheduler):
            raise ConfigError(f"schedule {name} returned {type(out).__name__}, not a torch LRScheduler")
        return out
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)))
    if name == "linear":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: max(0.0, 1 - t / total))
    if name == "step":
        return StepDecay()(opt, steps)
    if name == "plateau":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)  # the decay is per image: ``PlateauDecay``
    raise UnknownNameError("schedule", name, SCHEDULES)


class Genetic:
    """XDream's genetic step rule: elitism, fitness-proportional (softmax) mating, crossover, mutation."""

    def __init__(self, code: torch.Tensor, generator: torch.Generator, elite: int = 10, selectivity: float = 2.0,
                 heritability: float = 0.5, mutation_rate: float = 0.25, mutation_size: float = 0.75):
        n = code.shape[0]
        if not 0 <= elite < n:
            raise ConfigError(f"elite must be between 0 and population-1 ({n - 1}), got {elite}")
        if not (0 <= mutation_rate <= 1 and 0 <= heritability <= 1 and selectivity >= 0 and mutation_size >= 0):
            raise ConfigError("mutation_rate and heritability must lie in [0, 1]; selectivity and mutation_size >= 0")
        self.code, self.gen = code, generator
        self.elite, self.selectivity, self.heritability = elite, selectivity, heritability
        self.mutation_rate = mutation_rate
        self.sigma = mutation_size * float(code.detach().std())

    def __str__(self) -> str:
        return (f"genetic(elite={self.elite}, selectivity={self.selectivity:g}, heritability={self.heritability:g}, "
                f"mutation={self.mutation_rate:g}x{self.sigma:.3g})")

    def state_dict(self) -> dict:
        """What a checkpoint keeps besides the code (which lives in the parametrization): the random generator."""
        return {"generator": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``'s output."""
        self.gen.set_state(state["generator"].cpu())

    @torch.no_grad()
    def update(self, scores: torch.Tensor) -> None:
        """Replace the population: keep the elite, breed the rest from fitness-weighted parents."""
        n = scores.shape[0]
        genes = self.code.detach().flatten(1).cpu()
        s = scores.detach().cpu().double()
        z = (s - s.mean()) / (s.std() + 1e-12)
        probs = torch.softmax(self.selectivity * z, 0).float()
        order = torch.argsort(s, descending=True)
        kids = n - self.elite
        mothers = torch.multinomial(probs, kids, replacement=True, generator=self.gen)
        fathers = torch.multinomial(probs, kids, replacement=True, generator=self.gen)
        take = torch.rand(kids, genes.shape[1], generator=self.gen) < self.heritability
        children = torch.where(take, genes[mothers], genes[fathers])
        mutate = torch.rand(children.shape, generator=self.gen) < self.mutation_rate
        children = children + mutate * torch.randn(children.shape, generator=self.gen) * self.sigma
        new = torch.cat([genes[order[:self.elite]], children]).view_as(self.code)
        self.code.copy_(new.to(self.code.device))


class CMAES:
    """CMA-ES step rule (Hansen 2016 tutorial defaults), maximizing; separable (diagonal) above 100 dimensions.

    λ is the population, μ = λ/2 parents with log-rank weights, cumulative step-size adaptation (cσ, dσ), rank-one
    and rank-μ covariance updates (cc, c1, cμ); positive weights only (no active CMA).  The given population is the
    first generation: its mean is the initial mean and ``sigma0`` × its standard deviation the initial step size.

    ``diagonal`` (default: above ``DIAGONAL_ABOVE`` = 100 dimensions) is sep-CMA-ES (Ros & Hansen 2008): C stays
    diagonal and its learning rates c1, cμ are multiplied by (n+2)/3.  The full-covariance rates scale as 1/n², so
    at n ≈ 2,000 (a max_freq-12 Fourier code) or 4,096 (a generator latent) the matrix barely moves within a few
    thousand evaluations while each eigendecomposition costs O(n³); the diagonal costs O(n) per sample, and Ros &
    Hansen found it needs fewer evaluations than full CMA-ES above a hundred dimensions even on Rosenbrock.  With
    ``diagonal=False`` the eigendecomposition is lazy, redone every 1/(10 n (c1+cμ)) generations (Hansen's purecma).

    Measured on 4 IT units of toy-standard (benchmarks/evolution.py --seed 1, not the units it reports), median
    best activation / natural max at 400 / 1,200 / 4,000 evaluations, population 40: ``sigma0`` 0.25 gave
    0.41 / 0.97 / 2.72, 1 gave 0.45 / 1.38 / 3.49, 2 gave 0.63 / 1.51 / 3.55, 8 gave 0.88 / 1.73 / 3.68.  The
    default is 2: beyond it the gain at 1,200+ evaluations is small while the samples saturate most pixels
    (84% of them beyond 0.05 / 0.95 at a code sd of 16, against 43% at 4).  Full covariance (sigma0 2) gave
    0.57 / 1.62 / 3.45 in 3.8x the time, so the diagonal stays the default.
    All state is float64 tensors and numbers on the CPU, and samples come from ``generator``: same seed, same images.
    """

    DIAGONAL_ABOVE = 100

    def __init__(self, code: torch.Tensor, generator: torch.Generator, sigma0: float = 2.0,
                 diagonal: bool | None = None):
        lam = code.shape[0]
        x = code.detach().flatten(1).cpu().double()
        n = x.shape[1]
        if lam < 2:
            raise ConfigError(f"CMA-ES needs a population of at least 2, got {lam}")
        if not (sigma0 > 0 and math.isfinite(sigma0)):
            raise ConfigError(f"sigma0 must be a positive number (a multiple of the code's sd), got {sigma0}")
        spread = float(x.std())
        if not spread > 0:
            raise ConfigError("CMA-ES takes its initial step size from the population's spread, which is zero: "
                              "start from codes that differ")
        self.code, self.gen = code, generator
        self.diagonal = n > self.DIAGONAL_ABOVE if diagonal is None else bool(diagonal)
        self.sigma0, self.lam, self.mu, self.dim = float(sigma0), lam, lam // 2, n
        w = math.log((lam + 1) / 2) - torch.log(torch.arange(1, self.mu + 1, dtype=torch.float64))
        self.weights = w / w.sum()
        mueff = float(1 / (self.weights ** 2).sum())
        self.mueff = mueff
        self.cs = (mueff + 2) / (n + mueff + 5)
        self.ds = 1 + 2 * max(0.0, math.sqrt((mueff - 1) / (n + 1)) - 1) + self.cs
        self.cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n)
        c1 = 2 / ((n + 1.3) ** 2 + mueff)
        cmu = min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff))
        if self.diagonal:
            c1, cmu = c1 * (n + 2) / 3, cmu * (n + 2) / 3
            cmu = min(cmu, 1 - c1)
        self.c1, self.cmu = c1, cmu
        self.chi = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))  # E|N(0, I)|
        self.eigen_every = 1 if self.diagonal else max(1, int(1 / (10 * n * (c1 + cmu))))
        self.mean = x.mean(0)
        self.sigma = self.sigma0 * spread
        self.ps, self.pc = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        self.cov = torch.ones(n, dtype=torch.float64) if self.diagonal else torch.eye(n, dtype=torch.float64)
        self.basis = None if self.diagonal else torch.eye(n, dtype=torch.float64)
        self.scales = torch.ones(n, dtype=torch.float64)  # √ eigenvalues of C (its diagonal's √ when separable)
        self.generation = self.eigen_generation = 0
        self.spread = spread

    def __str__(self) -> str:
        kind = "separable" if self.diagonal else "full"
        return (f"cmaes({kind}, dim={self.dim}, lambda={self.lam}, mu={self.mu}, "
                f"sigma0={self.sigma0:g}x{self.spread:.3g})")

    _STATE = ("mean", "ps", "pc", "cov", "scales")

    def state_dict(self) -> dict:
        """What a checkpoint keeps besides the code: mean, step size, paths, covariance (and its last
        eigendecomposition), generation counts and the random generator."""
        return {**{k: getattr(self, k).clone() for k in self._STATE},
                "basis": self.basis.clone() if self.basis is not None else None, "sigma": self.sigma,
                "generation": self.generation, "eigen_generation": self.eigen_generation,
                "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``'s output."""
        if tuple(state["cov"].shape) != tuple(self.cov.shape):
            raise CheckpointError(f"CMA-ES state of covariance shape {tuple(state['cov'].shape)} does not fit {self}")
        for k in self._STATE:
            setattr(self, k, state[k].cpu().double().clone())
        self.basis = state["basis"].cpu().double().clone() if state["basis"] is not None else None
        self.sigma, self.generation = float(state["sigma"]), int(state["generation"])
        self.eigen_generation = int(state["eigen_generation"])
        self.gen.set_state(state["generator"].cpu())

    def _whiten(self, y: torch.Tensor) -> torch.Tensor:
        """C^(-1/2) y with the decomposition the samples were drawn from."""
        if self.diagonal:
            return y / self.scales
        return self.basis @ ((self.basis.T @ y) / self.scales)

    @torch.no_grad()
    def update(self, scores: torch.Tensor) -> None:
        """Move mean, step size and covariance towards this generation's best half, then sample the next one."""
        x = self.code.detach().flatten(1).cpu().double()
        s = torch.nan_to_num(scores.detach().cpu().double(), nan=-math.inf)
        best = torch.argsort(s, descending=True, stable=True)[:self.mu]
        y = (x[best] - self.mean) / self.sigma
        yw = self.weights @ y
        self.mean = self.mean + self.sigma * yw
        self.ps = (1 - self.cs) * self.ps + math.sqrt(self.cs * (2 - self.cs) * self.mueff) * self._whiten(yw)
        self.generation += 1
        ps_norm = float(self.ps.norm())
        hsig = ps_norm / math.sqrt(1 - (1 - self.cs) ** (2 * self.generation)) < (1.4 + 2 / (self.dim + 1)) * self.chi
        self.pc = (1 - self.cc) * self.pc + hsig * math.sqrt(self.cc * (2 - self.cc) * self.mueff) * yw
        keep = 1 - self.c1 - self.cmu + (0.0 if hsig else self.c1 * self.cc * (2 - self.cc))
        if self.diagonal:
            self.cov = keep * self.cov + self.c1 * self.pc ** 2 + self.cmu * (self.weights @ y ** 2)
            self.scales = self.cov.sqrt()
        else:
            self.cov = keep * self.cov + self.c1 * torch.outer(self.pc, self.pc) + self.cmu * (y.T * self.weights) @ y
            if self.generation - self.eigen_generation >= self.eigen_every:
                self.cov = (self.cov + self.cov.T) / 2
                values, self.basis = torch.linalg.eigh(self.cov)
                self.scales = values.clamp_min(1e-20).sqrt()
                self.eigen_generation = self.generation
        self.sigma *= math.exp(min(1.0, self.cs / self.ds * (ps_norm / self.chi - 1)))
        z = torch.randn(self.lam, self.dim, generator=self.gen, dtype=torch.float64) * self.scales
        steps = z if self.diagonal else z @ self.basis.T
        new = self.mean + self.sigma * steps
        self.code.copy_(new.view_as(self.code).to(self.code.device, self.code.dtype))


# Where Square Attack halves its square's area p: AutoAttack's iteration checkpoints out of 10,000, scaled to the
# run's queries (its ``p_selection`` with ``resc_schedule``).
SQUARE_CHECKPOINTS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
SQUARE_P_INIT = 0.8  # the square's initial share of the image: AutoAttack's p_init for both norms


@functools.lru_cache(maxsize=64)
def _rings(rows: int, cols: int) -> torch.Tensor:
    """Square Attack's L2 half-window: nested rectangles around the centre, ring k weighing 1/(k+1)², unit norm."""
    out = torch.zeros(rows, cols, dtype=torch.float64)
    r, c = rows // 2, cols // 2
    for k in range(max(r, c) + 1):
        out[max(r - k, 0):min(r + k + 1, rows), max(c - k, 0):min(c + k + 1, cols)] += 1.0 / (k + 1) ** 2
    return out / out.norm().clamp_min(1e-12)


def _bump(s: int) -> torch.Tensor:
    """Square Attack's L2 window (s×s, unit norm): the rings in its top half, their negative in the bottom half."""
    out = torch.cat([_rings(s // 2, s), -_rings(s - s // 2, s)])
    return (out / out.norm()).float()


class Square:
    """Square Attack's random search (Andriushchenko et al. 2020; AutoAttack's gradient-free member), maximizing.

    The population is the batch: one candidate per attacked image, around ``center`` within ``eps`` (one radius,
    or one per image) in the L-inf or L2 ``norm``.  The constructor writes the paper's first candidates into
    ``pixels``: L-inf, vertical stripes of ±ε per channel and column; L2, a centred grid of windows (side
    min(H, W)/5) of random sign per channel, scaled onto the ε-sphere.  Each ``update`` keeps, per image, the better
    of its best and the candidate just scored, then writes the next candidate from the best.  L-inf: one random
    square of side √(p·H·W) set to ±ε per channel around the center.  L2 (AutoAttack's square.py): two random
    squares of odd side √(p·H·W) (at least 3); the second is emptied and the first gets a fresh window of random
    sign per channel plus its old content, scaled to carry the mass of both squares and the budget left, and the
    whole perturbation is rescaled onto the ε-sphere.  p starts at ``p_init`` (``SQUARE_P_INIT``: 0.8, AutoAttack's
    for both norms) and halves at AutoAttack's checkpoints (``SQUARE_CHECKPOINTS``) scaled to ``queries``, which
    must be the run's steps: the last update leaves each image at its best.  Every candidate is projected onto the
    ball and the [0, 1] box.  Images are searched independently (``independent``): one that stopped leaves the
    batch.  Draws come from ``generator`` (on the CPU); ``state_dict`` holds it, the best images, their scores and
    the update count."""

    independent = True

    def __init__(self, pixels: torch.Tensor, center: torch.Tensor, eps: float | torch.Tensor, norm: float,
                 queries: int, generator: torch.Generator, p_init: float = SQUARE_P_INIT):
        if norm not in (2, math.inf):
            raise ConfigError(f"Square Attack supports the L2 and L-inf norms, got {norm}")
        if pixels.ndim != 4 or tuple(center.shape) != tuple(pixels.shape):
            raise ConfigError(f"Square Attack needs N×C×H×W pixels and centers of one shape, got "
                              f"{tuple(pixels.shape)} and {tuple(center.shape)}")
        if queries < 1 or not 0 < p_init <= 1:
            raise ConfigError(f"Square Attack needs queries >= 1 and 0 < p_init <= 1, got {queries} and {p_init}")
        n = pixels.shape[0]
        eps = torch.as_tensor(eps, dtype=torch.float32).detach()
        if eps.ndim > 1 or (eps.ndim == 1 and eps.shape[0] != n) or not (torch.isfinite(eps).all() and
                                                                          (eps >= 0).all()):
            raise ConfigError(f"eps must be a finite number >= 0 or one per image ({n}), got {eps.tolist()}")
        self.pixels, self.norm, self.gen = pixels, norm, generator
        self.center = center.detach().to(pixels.device, pixels.dtype)
        self.eps = eps.to(pixels.device, pixels.dtype).expand(n).reshape(n, 1, 1, 1).clone()
        self.digest = tensor_digest(eps)
        self.queries, self.p_init, self.t = int(queries), float(p_init), 0
        self.best_scores = torch.full((n,), -math.inf, device=pixels.device)
        with torch.no_grad():
            pixels.copy_(self._stripes() if norm == math.inf else self._grid())
        self.best = pixels.detach().clone()

    def __str__(self) -> str:
        eps = f"{float(self.eps.min()):.4g}" if bool((self.eps == self.eps[0]).all()) else f"sha256:{self.digest}"
        return (f"square(l{'inf' if self.norm == math.inf else 2}, eps={eps}, queries={self.queries}, "
                f"p_init={self.p_init:g})")

    def state_dict(self) -> dict:
        """What a checkpoint keeps besides the candidates: the best images and scores, the update count and the
        random generator."""
        return {"best": self.best.clone(), "best_scores": self.best_scores.clone(), "t": self.t,
                "generator": self.gen.get_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``'s output."""
        if tuple(state["best"].shape) != tuple(self.best.shape):
            raise CheckpointError(f"Square Attack state of {tuple(state['best'].shape)} does not fit {self}")
        self.best.copy_(state["best"])
        self.best_scores.copy_(state["best_scores"])
        self.t = int(state["t"])
        self.gen.set_state(state["generator"].cpu())

    def side(self, t: int) -> int:
        """The side of update ``t``'s square: √(p·H·W), p halved at each checkpoint passed (L2: odd, at least 3)."""
        h, w = self.pixels.shape[-2:]
        it = int(t / self.queries * 10000)
        p = self.p_init / 2 ** sum(it > c for c in SQUARE_CHECKPOINTS)
        s = max(round(math.sqrt(p * h * w)), 1)
        if self.norm == 2:
            s = max(s, 3)
            s = s + 1 if s % 2 == 0 else s
        return min(s, h, w)

    @torch.no_grad()
    def update(self, scores: torch.Tensor, active: torch.Tensor) -> None:
        """Keep the better of each image's best and its candidate (images ``active``, scored ``scores``), then write
        its next candidate; after the last query, its best."""
        rows = active.to(self.pixels.device)
        s = torch.nan_to_num(scores.detach().to(self.best_scores), nan=-math.inf)
        better = s > self.best_scores[rows]
        self.best[rows[better]] = self.pixels[rows[better]].detach()
        self.best_scores[rows[better]] = s[better]
        if self.t + 1 >= self.queries:
            self.pixels[rows] = self.best[rows]
        else:
            step = self._linf if self.norm == math.inf else self._l2
            self.pixels[rows] = self._project(step(rows, self.side(self.t)), rows)
        self.t += 1

    def _signs(self, *shape: int) -> torch.Tensor:
        """Random ±1 of ``shape``."""
        return (torch.randint(0, 2, shape, generator=self.gen) * 2 - 1).to(self.pixels.device, self.pixels.dtype)

    def _project(self, x: torch.Tensor, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """Candidates for images ``rows`` moved into their balls and the [0, 1] box."""
        c, eps = self.center[rows], self.eps[rows]
        if self.norm == math.inf:
            x = torch.minimum(torch.maximum(x, c - eps), c + eps)
        else:
            d = x - c
            x = c + d * (eps / d.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)).clamp(max=1.0)
        return x.clamp(0, 1)

    def _window(self, n: int, s: int) -> tuple[torch.Tensor, ...]:
        """Indices of one random s×s square per image, for all channels: (n, C, s, s) when used on a batch."""
        c, h, w = self.pixels.shape[1:]
        dev = self.pixels.device
        top = torch.randint(0, h - s + 1, (n, 1), generator=self.gen) + torch.arange(s)
        left = torch.randint(0, w - s + 1, (n, 1), generator=self.gen) + torch.arange(s)
        return (torch.arange(n, device=dev).view(n, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1),
                top.to(dev).view(n, 1, s, 1), left.to(dev).view(n, 1, 1, s))

    def _stripes(self) -> torch.Tensor:
        """The L-inf start: vertical stripes of ±ε per channel and column."""
        n, c, _, w = self.pixels.shape
        return self._project(self.center + self.eps * self._signs(n, c, 1, w))

    def _windows(self, n: int, s: int) -> torch.Tensor:
        """``n`` L2 windows (n×C×s×s), each transposed at random and of random sign per channel."""
        bump = _bump(s)
        flip = torch.rand(n, generator=self.gen) < 0.5
        bumps = torch.where(flip.view(n, 1, 1), bump.T, bump).to(self.pixels.device, self.pixels.dtype)
        return bumps[:, None] * self._signs(n, self.pixels.shape[1], 1, 1)

    def _onto_sphere(self, delta: torch.Tensor, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        """Perturbations scaled to norm ε around their centers (the box clips them after)."""
        norms = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        return self.center[rows] + delta / (norms + 1e-12) * self.eps[rows]

    def _grid(self) -> torch.Tensor:
        """The L2 start: a grid of windows of side min(H, W)/5, centred, on the ε-sphere."""
        n, _, h, w = self.pixels.shape
        s = max(min(h, w) // 5, 1)
        delta = torch.zeros_like(self.pixels)
        for i in range(h // s):
            for j in range(w // s):
                a, b = (h - s * (h // s)) // 2 + i * s, (w - s * (w // s)) // 2 + j * s
                delta[:, :, a:a + s, b:b + s] += self._windows(n, s)
        return self._project(self._onto_sphere(delta))

    def _linf(self, rows: torch.Tensor, s: int) -> torch.Tensor:
        """The best images of ``rows`` with one random s×s square set to ±ε per channel around the center."""
        x = self.best[rows].clone()
        at = self._window(len(rows), s)
        x[at] = (self.center[rows] + self.eps[rows] * self._signs(len(rows), x.shape[1], 1, 1))[at]
        return x

    def _l2(self, rows: torch.Tensor, s: int) -> torch.Tensor:
        """The best perturbations of ``rows`` with the mass of one random square and of a second moved into a fresh
        window over the first (AutoAttack's L2 update), back on the ε-sphere."""
        n, c = len(rows), self.pixels.shape[1]
        delta = self.best[rows] - self.center[rows]
        first, second = self._window(n, s), self._window(n, s)
        old = delta[first]
        old = old / (old.square().sum((-2, -1), keepdim=True).sqrt() + 1e-12)
        both = torch.zeros_like(delta, dtype=torch.bool)
        both[first] = True
        both[second] = True
        left = (self.eps[rows] ** 2 - delta.flatten(1).square().sum(1).view(-1, 1, 1, 1)).clamp_min(0) / c
        mass = (left + (delta * both).flatten(1).square().sum(1).view(-1, 1, 1, 1)).sqrt()
        new = self._windows(n, s) + old
        new = new / (new.square().sum((-2, -1), keepdim=True).sqrt() + 1e-12) * mass
        delta[second] = 0
        delta[first] = new
        return self._onto_sphere(delta, rows)


class Descent:
    """A gradient rule as a ``Stepper``: a torch optimizer and its step-size schedule."""

    gradient = True
    independent = True

    def __init__(self, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                 plateau: PlateauDecay | None = None):
        self.opt, self.sched, self.plateau = opt, sched, plateau
        self.params = [p for g in opt.param_groups for p in g["params"]]

    def backward(self, scores: torch.Tensor) -> None:
        """Replace the last gradient with that of ``-scores.sum()``, the loss the optimizer descends."""
        self.opt.zero_grad(set_to_none=True)
        with SHARED.running():  # a recomputed stage runs modules again in the backward pass
            (-scores.sum()).backward()

    def step(self, scores: torch.Tensor, active: torch.Tensor) -> None:
        """One optimizer step (Auto-PGD first observes the scores; a per-image ``PlateauDecay`` scales each image's
        update), then one of the schedule."""
        if hasattr(self.opt, "observe"):
            self.opt.observe(scores, active)
        if self.plateau is None:
            self.opt.step()
        else:
            self.plateau.observe(scores, active, self.params[0].shape[0])
            before = [p.detach().clone() for p in self.params]
            self.opt.step()
            self.plateau.scale(before, self.params)
        self.sched.step()

    def state_dict(self) -> dict:
        """The optimizer's and the schedule's state (with a plateau decay's per-image state)."""
        out = {"optimizer": self.opt.state_dict(), "schedule": self.sched.state_dict(), "free": None}
        if self.plateau is not None:
            out["plateau"] = self.plateau.state_dict()
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``'s output."""
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["schedule"])
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])


class Evolution:
    """A gradient-free rule as a ``Stepper``: each step hands it the scores."""

    gradient = False

    def __init__(self, rule: GradientFree):
        self.rule = rule
        self.independent = bool(getattr(rule, "independent", False))

    def backward(self, scores: torch.Tensor) -> None:
        """Nothing: the rule reads no gradient."""

    def step(self, scores: torch.Tensor, active: torch.Tensor) -> None:
        """The rule's update of the whole population, or of the images ``active`` for an independent rule."""
        if self.independent:
            self.rule.update(scores, active)
        else:
            self.rule.update(scores)

    def state_dict(self) -> dict:
        """The rule's own state (it needs ``state_dict()`` to checkpoint)."""
        return {"optimizer": None, "schedule": None, "free": self.rule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``'s output; refused for a rule with no ``load_state_dict()``."""
        if not hasattr(self.rule, "load_state_dict"):
            raise ConfigError(f"step rule {self.rule} cannot resume: it has no load_state_dict()")
        self.rule.load_state_dict(state["free"])


def stepper(step: str | GradientFree | OptimizerFactory, params: list[torch.Tensor], lr: float | torch.Tensor,
            lr_schedule: str | ScheduleFactory | PlateauDecay, steps: int,
            project: Callable[[torch.Tensor], None]) -> Stepper:
    """The ``Stepper`` for ``optimize``'s ``step``: a gradient-free rule (anything with ``update``) as it is, else a
    gradient rule by name or factory over ``params``, with its schedule."""
    if not isinstance(step, str) and hasattr(step, "update"):
        if isinstance(lr, torch.Tensor):
            raise ConfigError("per-image step sizes need a gradient step rule")
        return Evolution(step)
    opt = _optimizer(step, params, lr, steps, project)
    if isinstance(lr_schedule, PlateauDecay) or lr_schedule == "plateau":
        given = lr_schedule if isinstance(lr_schedule, PlateauDecay) else PlateauDecay()
        plateau = PlateauDecay(**given.settings())  # the run's own per-image state
        return Descent(opt, schedule("plateau", opt, steps), plateau)
    return Descent(opt, schedule(lr_schedule, opt, steps))


def _optimizer(step: str | OptimizerFactory, params: list[torch.Tensor], lr: float | torch.Tensor, steps: int,
               project: Callable[[torch.Tensor], None]) -> torch.optim.Optimizer:
    """The gradient step rule: by name, or built by the caller's factory."""
    if isinstance(step, str):
        return step_rule(step, params, lr, steps, project)
    if not callable(step):
        raise ConfigError(f"step must be a step rule's name ({', '.join(STEP_RULES)}), a gradient-free rule, or a "
                          f"factory params -> torch.optim.Optimizer; got {type(step).__name__}")
    opt = step(params)
    if not isinstance(opt, torch.optim.Optimizer):
        raise ConfigError(f"the step factory returned {type(opt).__name__}, not a torch.optim.Optimizer")
    return opt
