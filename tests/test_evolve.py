"""Gradient-free evolution: improves with forward passes only, keeps its elite, validates its settings."""
import pytest
import torch

import synth
from synth.errors import ConfigError
from synth.evolve import Genetic


def test_evolution_improves_and_never_loses_its_best(tiny):
    r = synth.evolve(tiny, "IT:1", population=12, generations=15, size=32, seed=0, progress=False)
    best = r.history.max(1).values
    assert (best[1:] >= best[:-1] - 1e-5).all()  # elitism: the best code survives every generation
    assert best[-1] > best[0]
    assert r.metadata["evaluations"] == 12 * 15 and r.metadata["method"] == "evolution"
    assert r.metadata["step_rule"].startswith("genetic(")
    assert float(r.scores.max()) >= float(best[-1]) - 1e-5  # the final population still holds the elite


def test_evolution_uses_no_gradients(tiny, monkeypatch):
    def no_backward(*args, **kwargs):
        raise AssertionError("evolution must not call backward")

    monkeypatch.setattr(torch.Tensor, "backward", no_backward)
    r = synth.evolve(tiny, "IT:2", population=6, generations=3, size=32, progress=False)
    assert r.history.shape == (3, 6)


def test_same_seed_same_population(tiny):
    a = synth.evolve(tiny, "IT:3", population=8, generations=4, size=32, seed=5, progress=False)
    b = synth.evolve(tiny, "IT:3", population=8, generations=4, size=32, seed=5, progress=False)
    assert torch.equal(a.images, b.images)


def test_bad_settings_are_refused():
    code = torch.zeros(10, 4)
    g = torch.Generator()
    with pytest.raises(ConfigError, match="elite"):
        Genetic(code, g, elite=10)
    with pytest.raises(ConfigError, match="mutation_rate"):
        Genetic(code, g, elite=2, mutation_rate=1.5)
    with pytest.raises(ConfigError, match="population"):
        synth.evolve(None, "IT:1", population=1)
