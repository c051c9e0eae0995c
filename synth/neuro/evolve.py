"""Gradient-free evolution of images (XDream: Ponce et al. 2019; Xiao & Kreiman 2020), genetic or CMA-ES.

Two gradient-free step rules (``synth.engine.steps``) search a compact image code — the latent code of an image
generator (``code='generator:NAME'``: the shipped ``toy-gan``, or a user's DeePSiM fc6, XDream's own), or the
low-frequency coefficients of a Fourier parametrization (``code='fourier'``) — driven only by forward evaluations of
the same objectives, or by a black box: a simulated subject's noisy spike counts (``control.Subject``), whose model
the search never sees and through which no gradient is ever asked for.  Each is a step rule for the one engine:
each generation is one step whose batch is the population.
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
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from synth.engine.loop import optimize
from synth.engine.objectives import Objective
from synth.engine.params import Fourier, Generated
from synth.engine.results import Result
from synth.engine.steps import CMAES, Genetic
from synth.errors import ConfigError, UnknownNameError
from synth.zoo.probe import ProbeModel

if TYPE_CHECKING:
    from synth.neuro.subject import Subject


OPTIMIZERS = {"genetic": Genetic, "cmaes": CMAES}
# Step sizes in a generator's latent space, chosen on 5 toy-standard IT units the benchmark does not report
# (37, 63, 88, 144, 200), toy-deepsim's code, seed 1; median best / natural max at 400 / 1,200 evaluations:
# CMA-ES sigma0 2 gave 1.04 / 2.02, 4 gave 1.36 / 2.11, 8 gave 1.41 / 2.35 (on 5 other units 4 beat 2 too:
# 1.61 / 2.96 against 1.21 / 2.45); the genetic algorithm's mutation_size 0.75 gave 0.72 / 1.60, 1.5 gave
# 0.89 / 1.69, 3 gave 1.06 / 2.01.  Codes drawn from the prior are far inside the region that drives units hardest.
GENERATOR_STEPS = {"cmaes": {"sigma0": 4.0}, "genetic": {"mutation_size": 3.0}}


def evolve(model: ProbeModel | Subject, objective: Objective | str | int, *, code: str = "fourier",
           optimizer: str = "genetic", population: int = 40, generations: int = 100, size: int | None = None,
           max_freq: int = 12, code_sd: float | None = None, repeats: int = 1, seed: int = 0, progress: bool = True,
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

    _check(optimizer, population, generations, repeats, options)
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
                    checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                    metadata={"method": "evolution", "optimizer": optimizer, "population": population,
                              "code": str(param), **extra})


def _check(optimizer: str, population: int, generations: int, repeats: int, options: dict) -> None:
    """Refuse an unknown optimizer, counts an evolution cannot run with, and options its optimizer does not take."""
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
