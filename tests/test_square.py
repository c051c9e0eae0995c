"""Square Attack on the engine: breaks a standard model with forward passes alone, and a model whose gradients are
masked where PGD cannot; stays in its ball and the box; its verdicts are those of fresh forward passes; repeats
itself for a seed without touching torch's global generator; resumes from a checkpoint bit for bit."""
import math

import pytest
import torch
from torch import nn

import attacks
import synth
from attacks.common import logits
from attacks.square import square, square_round
from synth import Box, LpBall
from synth.engine.loop import optimize
from synth.engine.objectives import Margin
from synth.engine.params import Pixels
from synth.engine.steps import Square
from synth.errors import ConfigError


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """8 held-out images, one per category, and their labels."""
    b = synth.render(8, "test")
    return b.tensor(), torch.as_tensor(b.labels)


class Quantize(nn.Module):
    """Pixels rounded to 8 levels: the gradient through it is zero everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 7) / 7


class Normalize(nn.Module):
    """A ProbeModel's input normalization, as a module behind the quantizer."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _in_ball_and_box(adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, p: float) -> bool:
    """Whether every image lies within its eps of x (K×N or N images) and in [0, 1]."""
    d = (adv - x).flatten(adv.ndim - 3)
    dist = d.abs().amax(-1) if p == math.inf else d.norm(dim=-1)
    return bool((dist <= eps + 1e-5).all() and adv.min() >= 0 and adv.max() <= 1)


def test_linf_breaks_most_images_inside_the_ball_with_fresh_verdicts(toy_standard, batch):
    x, y = batch
    r = square(toy_standard, x, y, 8 / 255, queries=300, progress=False)
    assert r.success.shape == (1, 8) and float(r.success.float().mean()) >= 0.75
    assert _in_ball_and_box(r.adversarial, x, torch.tensor(8 / 255), math.inf)
    assert torch.equal(r.success[0], logits(toy_standard, r.adversarial[0]).argmax(1) != y)
    assert r.metadata["attack"] == "square-linf" and 0 < r.metadata["evaluations"] < 4 * 300  # stopped images leave


def test_square_breaks_a_model_whose_gradients_are_masked_where_pgd_cannot(toy_standard, batch):
    x, y = batch
    net = nn.Sequential(Quantize(), Normalize(toy_standard.mean, toy_standard.std), toy_standard.net)
    quantized = synth.load_model(net, device="cpu", classes=toy_standard.classes, name="quantized")
    correct = logits(quantized, x).argmax(1) == y
    with pytest.warns(attacks.GradientMaskingWarning):
        by_pgd = attacks.pgd(quantized, x, y, 8 / 255, steps=20, progress=False).success[0]
    by_square = square(quantized, x, y, 8 / 255, queries=300, progress=False).success[0]
    assert int(correct.sum()) >= 6
    assert int((by_pgd & correct).sum()) <= 1
    assert int((by_square & correct).sum()) >= int(correct.sum()) // 2


def test_same_seed_same_images_and_the_global_generator_untouched(tiny, batch):
    x = batch[0][:4]
    state = torch.get_rng_state()
    a, b, c = (square(tiny, x, eps=4 / 255, queries=20, seed=s, progress=False) for s in (3, 3, 4))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.adversarial, b.adversarial) and torch.equal(a.success, b.success)
    assert not torch.equal(a.adversarial, c.adversarial)


def test_l2_and_per_image_budgets_stay_in_their_balls(toy_standard, batch):
    x, y = batch[0][:4], batch[1][:4]
    r = square(toy_standard, x, y, [0.5, 2.0], norm="l2", queries=60, progress=False)
    assert r.adversarial.shape == (2, 4, 3, 64, 64) and r.metadata["attack"] == "square-l2"
    assert _in_ball_and_box(r.adversarial, x[None], r.eps.view(2, 1), 2)
    assert torch.equal(r.success, logits(toy_standard, r.adversarial.flatten(0, 1)).argmax(1).view(2, 4) != y)
    assert bool(r.success[1].any())
    eps = torch.tensor([0.25, 0.5, 1.0, 2.0])
    for norm, p in (("l2", 2), ("linf", math.inf)):
        res = square_round(toy_standard, x, y, eps / (1 if p == 2 else 255), norm=norm, queries=30, progress=False)
        assert _in_ball_and_box(res.images, x, eps / (1 if p == 2 else 255), p)
        assert torch.equal(res.success, logits(toy_standard, res.images).argmax(1) != y)


def test_the_square_shrinks_on_autoattacks_schedule_scaled_to_the_queries():
    pixels = torch.full((2, 3, 32, 32), 0.5)
    rule = Square(pixels, pixels.clone(), 0.1, math.inf, 1000, torch.Generator().manual_seed(0))
    assert [rule.side(t) for t in (0, 1, 5, 20, 50, 100, 999)] == [29, 29, 20, 14, 10, 7, 1]
    assert torch.allclose((pixels - 0.5).abs(), torch.full_like(pixels, 0.1))  # ±ε everywhere
    assert (pixels[:, :, :1] == pixels).all()  # vertical stripes
    with pytest.raises(ConfigError):
        Square(pixels, pixels.clone(), torch.ones(3), math.inf, 10, torch.Generator())
    pixels = torch.full((2, 3, 32, 32), 0.5)
    l2 = Square(pixels, pixels.clone(), torch.tensor([0.5, 1.0]), 2, 1000, torch.Generator().manual_seed(0))
    assert [l2.side(t) for t in (0, 100, 999)] == [29, 7, 3]  # odd, at least 3
    assert torch.allclose((pixels - 0.5).flatten(1).norm(dim=1), torch.tensor([0.5, 1.0]))  # on the ε-sphere


def test_square_uses_no_gradients(tiny, batch, no_gradients):
    for norm in ("linf", "l2"):
        x = batch[0][:2]
        r = square_round(tiny, x, logits(tiny, x).argmax(1), 0.01, norm=norm, queries=5, progress=False)
        assert r.metadata["steps_run"] >= 1 and not r.images.requires_grad


class Killed(Exception):
    """Stands for a run killed from outside."""


@pytest.mark.parametrize("p", [math.inf, 2])
def test_a_killed_run_resumes_from_its_checkpoint_to_the_same_images(toy_standard, batch, tmp_path, p):
    x, y = batch[0][:4], batch[1][:4]
    eps = 4 / 255 if p == math.inf else 0.5

    def run(at, path):
        calls = [0]

        def fooled(scores, acts):  # misclassified, dying at the ``at``-th call
            calls[0] += 1
            if calls[0] == at:
                raise Killed
            return scores > 0

        param = Pixels(x)
        rule = Square(param.pixels, x, eps, p, 30, torch.Generator().manual_seed(0))
        return optimize(toy_standard, Margin("logits", y=y), param, constraints=[LpBall(x, eps, p), Box()],
                        step=rule, steps=30, stop=fooled, checkpoint=path, checkpoint_every=10, progress=False)

    whole = run(None, tmp_path / "whole.pt")
    with pytest.raises(Killed):
        run(17, tmp_path / "killed.pt")  # dies in step 17: the checkpoint holds steps 1-10
    assert torch.load(tmp_path / "killed.pt", weights_only=True)["t"] == 10
    resumed = run(None, tmp_path / "killed.pt")
    assert torch.equal(whole.images, resumed.images)
    assert torch.equal(whole.history.nan_to_num(-9), resumed.history.nan_to_num(-9))
