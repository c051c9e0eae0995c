"""Gradient-free evolution of images (XDream: Ponce et al. 2019; Xiao & Kreiman 2020), genetic or CMA-ES.

Two step rules search a compact image code — the latent code of an image generator (``code='generator:NAME'``:
the shipped ``toy-gan``, or a user's DeePSiM fc6, XDream's own), or the low-frequency coefficients of a Fourier
parametrization (``code='fourier'``) — driven only by forward evaluations of the same objectives, or by a
black box: a simulated subject's noisy spike counts (``control.Subject``), whose model the search never sees and
through which no gradient is ever asked for.  Each is a step rule for the one engine: each generation is one
step whose batch is the population.
``Genetic`` follows XDream's genetic optimizer: 40 images per generation, the best 10 kept unchanged,
selection by a softmax of z-scored fitness (selectivity 2), uniform crossover taking half the genes of each
parent (heritability 0.5), and a quarter of the genes mutated by Gaussian noise of 0.75 × the initial code scale.
``CMAES`` is Hansen's CMA-ES written in torch (separable above 100 dimensions, see its docstring), so its whole
state checkpoints as tensors; it is checked against Hansen's pycma in the tests.  On 8 IT units of toy-standard
(benchmarks/evolution.py) it ties the genetic algorithm at 400 evaluations and beats it on every unit at 1,200
and 4,000, by a median 1.22x and 1.58x (4.33x the natural maximum against 2.73x at 4,000).
"""
from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from synth.engine.loop import optimize
from synth.errors import CheckpointError, ConfigError, UnknownNameError
from synth.engine.objectives import Objective
from synth.engine.params import Fourier, Generated
from synth.zoo.probe import ProbeModel
from synth.engine.results import Result

if TYPE_CHECKING:
    from synth.neuro.subject import Subject


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


OPTIMIZERS = {"genetic": Genetic, "cmaes": CMAES}
# Step sizes in a generator's latent space, chosen on 5 toy-standard IT units the benchmark does not report
# (37, 63, 88, 144, 200), toy-deepsim's code, seed 1; median best / natural max at 400 / 1,200 evaluations:
# CMA-ES sigma0 2 gave 1.04 / 2.02, 4 gave 1.36 / 2.11, 8 gave 1.41 / 2.35 (on 5 other units 4 beat 2 too:
# 1.61 / 2.96 against 1.21 / 2.45); the genetic algorithm's mutation_size 0.75 gave 0.72 / 1.60, 1.5 gave
# 0.89 / 1.69, 3 gave 1.06 / 2.01.  Codes drawn from the prior are far inside the region that drives units hardest.
GENERATOR_STEPS = {"cmaes": {"sigma0": 4.0}, "genetic": {"mutation_size": 3.0}}


def evolve(model: ProbeModel | Subject, objective: Objective | str | int, *, code: str = "fourier", optimizer: str = "genetic",
           population: int = 40, generations: int = 100, size: int | None = None, max_freq: int = 12,
           code_sd: float | None = None, repeats: int = 1, seed: int = 0, progress: bool = True,
           watch: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
           checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 10, **options) -> Result:
    """Evolve a population of images to maximize ``objective`` with forward passes only.

    ``model`` is a ProbeModel (``objective`` then reads its layers or readout sites, e.g. 'IT:12' or
    'IT:readout:site3'), or a black box: a ``control.Subject``, whose site ``objective`` names ('site40' or an
    index) and whose every image is shown ``repeats`` times per generation, its fitness the trial-mean of fresh
    Poisson spike counts (``control.Presented``).  ``code`` is the search space: 'fourier' (the spectrum up to
    ``max_freq`` cycles per image, decorrelated colour, sigmoid; first generation drawn with sd ``code_sd``, default
    2) or 'generator:NAME' (a generator's latent code, ``synth.generators``; first generation from its prior,
    sd ``code_sd`` defaulting to the generator's).  The Fourier defaults (12 cycles, sd 2) were chosen for the
    genetic algorithm on toy-standard IT units: with 2,000 evaluations they reached a median 2.8x the natural
    maximum, against 1.4x for 4 cycles and sd 0.5.  ``optimizer`` is 'genetic' (``Genetic``, XDream's) or 'cmaes'
    (``CMAES``); ``options`` go to its constructor (e.g. ``elite=5`` or ``sigma0=0.5``); ``watch(t, images,
    scores)`` sees each generation (``optimize``'s); ``checkpoint``: a file the run's state (the optimizer's, the
    population's and a subject's presentation count) is written to every ``checkpoint_every`` generations and
    resumed from, giving the same images as an uninterrupted run.  The result holds the final
    population; the best image evaluated is ``result.best[result.best_scores.argmax()]`` (with a generator, its
    code is ``result.best_codes[...]``), and ``result.metadata['evaluations']`` counts images evaluated.
    """
    from synth.neuro.subject import Presented, Subject, display

    if optimizer not in OPTIMIZERS:
        raise UnknownNameError("evolution optimizer", optimizer, OPTIMIZERS)
    if repeats < 1:
        raise ConfigError(f"repeats (presentations of each image per generation) must be >= 1, got {repeats}")
    if population < 2 or generations < 1:
        raise ConfigError(f"need population >= 2 and generations >= 1, got {population} and {generations}")
    accepted = [p for p in inspect.signature(OPTIMIZERS[optimizer]).parameters if p not in ("code", "generator")]
    for key in options:
        if key not in accepted:
            raise ConfigError(f"{optimizer} takes no option {key!r}; its options: {', '.join(accepted)}")
    extra = {}
    if isinstance(model, Subject):
        objective = Presented(model, objective, repeats=repeats, seed=seed)
        extra = {"repeats": repeats, "presentations_per_generation": population * repeats}
        model = display(model.input_size)
    elif repeats != 1:
        raise ConfigError("repeats (presentations per image) applies to a Subject; a model's response has no "
                          "trial-to-trial noise to average")
    size = size or model.input_size or 224
    gen = torch.Generator().manual_seed(seed)
    if code == "fourier":
        param = Fourier(population, size, gen, max_freq=max_freq, sd=2.0 if code_sd is None else code_sd)
        extra["max_freq"] = max_freq
    elif isinstance(code, str) and code.startswith("generator:"):
        param = Generated.start(code.split(":", 1)[1], population, size, "noise", gen, sd=code_sd)
    else:
        raise UnknownNameError("evolution code", str(code), ["fourier", "generator:toy-gan", "generator:PATH"])
    if optimizer == "genetic":
        options.setdefault("elite", min(10, population // 4))
    if isinstance(param, Generated):  # a generator's codes want bigger steps than a spectrum (see GENERATOR_STEPS)
        for key, value in GENERATOR_STEPS[optimizer].items():
            options.setdefault(key, value)
    rule = OPTIMIZERS[optimizer](param.code, gen, **options)
    return optimize(model, objective, param, step=rule, steps=generations, seed=seed, progress=progress, watch=watch,
                    checkpoint=checkpoint, checkpoint_every=checkpoint_every, metadata={"method": "evolution", "optimizer": optimizer, "population": population,
                              "code": str(param), **extra})
