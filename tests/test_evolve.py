"""Gradient-free evolution: improves with forward passes only, keeps its elite, validates its settings; CMA-ES
climbs, repeats itself for a seed, resumes bit for bit and matches Hansen's pycma on test functions."""
import math

import cma
import numpy as np
import pytest
import torch

import synth
from synth.engine.loop import optimize
from synth.engine.params import Fourier
from synth.engine.steps import CMAES, Genetic
from synth.errors import ConfigError, UnknownNameError


def test_evolution_improves_and_never_loses_its_best(tiny):
    r = synth.evolve(tiny, "IT:1", population=12, generations=15, size=32, seed=0, progress=False)
    best = r.history.max(1).values
    assert (best[1:] >= best[:-1] - 1e-5).all()  # elitism: the best code survives every generation
    assert best[-1] > best[0]
    assert r.metadata["evaluations"] == 12 * 15 and r.metadata["method"] == "evolution"
    assert r.metadata["optimizer"] == "genetic" and r.metadata["step_rule"].startswith("genetic(")
    assert float(r.scores.max()) >= float(best[-1]) - 1e-5  # the final population still holds the elite


@pytest.mark.parametrize("unit", [1, 2])
def test_cmaes_lifts_the_whole_population_above_the_first_generations_best(tiny, unit):
    r = synth.evolve(tiny, f"IT:{unit}", optimizer="cmaes", population=12, generations=25, size=32, seed=0,
                     progress=False)
    first, last = r.history[0], r.history[-1]
    assert float(last.min()) > float(first.max())  # random search or a minimizer keeps sampling the start's spread
    assert float(last.mean()) > 2 * float(first.mean())
    assert r.metadata["optimizer"] == "cmaes" and r.metadata["step_rule"].startswith("cmaes(separable, dim=1950")
    assert float(r.best_scores.max()) >= float(r.history.max())


@pytest.mark.parametrize("optimizer", ["genetic", "cmaes"])
def test_evolution_uses_no_gradients(tiny, no_gradients, optimizer):
    r = synth.evolve(tiny, "IT:2", optimizer=optimizer, population=6, generations=3, size=32, progress=False)
    assert r.history.shape == (3, 6) and not r.images.requires_grad


@pytest.mark.parametrize("optimizer", ["genetic", "cmaes"])
def test_same_seed_same_population(tiny, optimizer):
    a, b, c = (synth.evolve(tiny, "IT:3", optimizer=optimizer, population=8, generations=4, size=32, seed=s,
                            progress=False) for s in (5, 5, 6))
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


class Killed(Exception):
    """Stands for a run killed from outside."""


def test_cmaes_killed_and_resumed_from_its_checkpoint_equals_an_uninterrupted_run(tiny, tmp_path):
    def run(at, path):
        calls = [0]

        def never(scores, acts):  # a stopping rule that stops nothing, and dies at its ``at``-th call
            calls[0] += 1
            if calls[0] == at:
                raise Killed
            return torch.zeros(scores.shape[0], dtype=torch.bool)

        gen = torch.Generator().manual_seed(0)
        param = Fourier(10, 32, gen, max_freq=12, sd=2.0)
        return optimize(tiny, "IT:3", param, step=CMAES(param.code, gen), steps=12, stop=never, checkpoint=path,
                        checkpoint_every=4, progress=False)

    whole = run(None, tmp_path / "whole.pt")
    with pytest.raises(Killed):
        run(7, tmp_path / "killed.pt")  # dies in generation 7: the checkpoint holds generations 1-4
    assert torch.load(tmp_path / "killed.pt", weights_only=True)["t"] == 4
    resumed = run(None, tmp_path / "killed.pt")
    assert torch.equal(whole.images, resumed.images)
    assert torch.equal(whole.history, resumed.history)


def _problem(name: str, x: torch.Tensor) -> torch.Tensor:
    """Sphere, or Hansen's ellipsoid of condition 1e4, plain or rotated (then only a full covariance learns it)."""
    n = x.shape[1]
    if name == "sphere":
        return (x ** 2).sum(1)
    if name == "rotated ellipsoid":
        x = x @ torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(7), dtype=x.dtype))[0].T
    return (1e4 ** (torch.arange(n, dtype=x.dtype) / (n - 1)) * x ** 2).sum(1)


@pytest.mark.parametrize("name, n, diagonal", [("ellipsoid", 8, True), ("rotated ellipsoid", 8, False),
                                               ("sphere", 100, True)])  # covariance, then step-size adaptation
def test_cmaes_matches_pycma_at_equal_evaluations(name, n, diagonal):
    lam, generations = 10, 300
    start = float(_problem(name, torch.full((1, n), 3.0, dtype=torch.float64)))
    ours, theirs = [], []
    numpy_state = np.random.get_state()  # pycma seeds numpy's global generator
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        code = 3 + torch.randn(lam, n, generator=gen, dtype=torch.float64)
        rule, best = CMAES(code, gen, sigma0=1.0, diagonal=diagonal), math.inf
        for _ in range(generations):
            f = _problem(name, code)
            best = min(best, float(f.min()))
            rule.update(-f)
        ours.append(best)
        es = cma.CMAEvolutionStrategy(n * [3.0], 1.0, {"popsize": lam, "seed": seed + 1, "verbose": -9,
                                                       "CMA_diagonal": diagonal, "CMA_active": False})
        best = math.inf
        for _ in range(generations):
            xs = es.ask()
            f = _problem(name, torch.tensor(np.array(xs)))
            best = min(best, float(f.min()))
            es.tell(xs, f.tolist())
        theirs.append(best)
    np.random.set_state(numpy_state)
    ours_f, theirs_f = float(np.median(ours)), float(np.median(theirs))
    assert theirs_f < 1e-3 * start  # the budget suffices for pycma to make real progress
    assert math.log10(ours_f) < math.log10(theirs_f) + 1, (ours, theirs)


def test_unknown_optimizer_names_the_close_match():
    with pytest.raises(UnknownNameError, match="did you mean 'cmaes'"):
        synth.evolve(None, "IT:1", optimizer="cma-es")


def test_bad_settings_are_refused(tiny):
    code = torch.zeros(10, 4)
    g = torch.Generator()
    with pytest.raises(ConfigError, match="elite"):
        Genetic(code, g, elite=10)
    with pytest.raises(ConfigError, match="mutation_rate"):
        Genetic(code, g, elite=2, mutation_rate=1.5)
    with pytest.raises(ConfigError, match="population"):
        synth.evolve(None, "IT:1", population=1)
    with pytest.raises(ConfigError, match="sigma0"):
        CMAES(torch.randn(10, 4), g, sigma0=0)
    with pytest.raises(ConfigError, match="spread"):
        CMAES(code, g)
    with pytest.raises(ConfigError, match="cmaes takes no option 'elite'; its options: sigma0, diagonal"):
        synth.evolve(tiny, "IT:1", optimizer="cmaes", elite=3, population=4, generations=1, size=32)
