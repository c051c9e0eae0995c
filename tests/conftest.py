"""Shared fixtures: the shipped models and a held-out sample of the embedded world, built once per session."""
import pytest
import torch

import synth
from synth import rng


@pytest.fixture(scope="session", autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def toy_standard() -> synth.ProbeModel:
    return synth.load_model("toy-standard", device="cpu")


@pytest.fixture(scope="session")
def toy_robust() -> synth.ProbeModel:
    return synth.load_model("toy-robust", device="cpu")


@pytest.fixture(scope="session")
def toy_topo() -> synth.ProbeModel:
    return synth.load_model("toy-topo", device="cpu")


@pytest.fixture(scope="session")
def toy_topo_dense() -> synth.ProbeModel:
    return synth.load_model("toy-topo-dense", device="cpu")


@pytest.fixture(scope="session")
def test_sample() -> synth.ImageBatch:
    """400 images of the held-out test split (50 per category)."""
    return synth.render(400, "test")


@pytest.fixture(scope="session")
def tiny() -> synth.ProbeModel:
    """A small untrained VentralNet: enough for the mechanics of the engine, instant to run."""
    from synth.zoo.ventral import AREAS, VentralNet
    torch.manual_seed(0)
    net = VentralNet(8, (8, 16, 16, 32))
    return synth.load_model(net, device="cpu", name="tiny", classes=list(synth.CATEGORIES), areas=AREAS,
                            mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


class _InputNoise(torch.nn.Module):
    """A network seen through Gaussian pixel noise: a stochastic model whose output varies between passes."""

    def __init__(self, net: torch.nn.Module, sigma: float):
        super().__init__()
        self.net, self.sigma = net, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x + self.sigma * rng.noise_like(x))  # the run's generator, as the library's own noise


@pytest.fixture(scope="session")
def noisy(tiny) -> synth.ProbeModel:
    """``tiny`` behind input noise (σ = 0.1): for expectation over transformation (EOT); its IT is 'net.IT'."""
    return synth.load_model(_InputNoise(tiny.net, 0.1), device="cpu", classes=tiny.classes, name="noisy")


@pytest.fixture
def no_gradients(monkeypatch):
    """Every way to compute a gradient raises: for runs that must use forward passes only (gradient-free rules)."""
    def no_backward(*args, **kwargs):
        raise AssertionError("a gradient-free run called backward")

    monkeypatch.setattr(torch.Tensor, "backward", no_backward)
    monkeypatch.setattr(torch.autograd, "backward", no_backward)
    monkeypatch.setattr(torch.autograd, "grad", no_backward)
