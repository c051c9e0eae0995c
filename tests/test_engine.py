"""The engine: scores rise, constraints hold, transforms average, early stop, truncation, determinism, errors."""
import math

import pytest
import torch

from synth import Box, Contrast, Grayscale, LpBall, Mask, optimize, synthesize
from synth.engine import redirected_relu
from synth.errors import ConfigError, ImageError, UnknownNameError
from synth.params import Blurred, Fourier, Pixels, gaussian_blur, make
from synth.transforms import standard


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("param", ["pixels", "fourier", "blurred"])
def test_score_rises_under_every_parametrization(tiny, param):
    r = synthesize(tiny, "IT:3", n=2, size=32, param=param, steps=40, progress=False, transforms=None)
    assert r.history.shape == (40, 2)
    assert (r.history[-5:].mean(0) > r.history[:3].mean(0)).all()
    assert r.images.shape == (2, 3, 32, 32) and 0 <= r.images.min() and r.images.max() <= 1


@pytest.mark.parametrize("step", ["adam", "sgd", "sign", "l2"])
def test_every_step_rule_ascends(tiny, step):
    lr = {"adam": 0.05, "sgd": 5.0, "sign": 0.01, "l2": 0.5}[step]
    r = synthesize(tiny, "norm(V4)", size=32, param="pixels", step=step, lr=lr, steps=25, progress=False,
                   transforms=None)
    assert r.scores[0] > r.history[0, 0]


def test_same_seed_same_image_and_other_seed_differs(tiny):
    kw = dict(size=32, steps=10, progress=False)
    a, b, c = (synthesize(tiny, "IT:1", seed=s, **kw) for s in (7, 7, 8))
    assert torch.equal(a.images, b.images) and torch.equal(a.history, b.history)
    assert not torch.equal(a.images, c.images)
    assert a.metadata["seed"] == 7 and a.metadata["objective"] == "IT:1" and a.metadata["steps"] == 10


def test_linf_ball_and_box_are_projections(tiny):
    x0 = torch.rand(2, 3, 32, 32, generator=_gen())
    r = optimize(tiny, "norm(IT)", Pixels(x0), constraints=[LpBall(x0, 4 / 255), Box()], step="sign", lr=1 / 255,
                 steps=12, progress=False)
    assert (r.images - x0).abs().max() <= 4 / 255 + 1e-6
    assert 0 <= r.images.min() and r.images.max() <= 1
    r2 = optimize(tiny, "norm(IT)", Pixels(x0), constraints=[LpBall(x0, 0.5, p=2), Box()], step="l2", lr=0.2,
                  steps=12, progress=False)
    assert (r2.images - x0).flatten(1).norm(dim=1).max() <= 0.5 + 1e-4


def test_differentiable_constraints_shape_every_image(tiny):
    r = synthesize(tiny, "IT:2", size=32, steps=5, progress=False,
                   constraints=[Grayscale(), Contrast(rms=0.1, mean=0.4)])
    img = r.images[0]
    assert torch.allclose(img[0], img[1]) and torch.allclose(img[1], img[2])
    assert abs(float(img[0].mean()) - 0.4) < 0.02 and abs(float(img[0].std()) - 0.1) < 0.02
    m = synthesize(tiny, "IT:2", size=32, steps=5, progress=False, constraints=[Mask.aperture(32, radius=0.3)])
    assert torch.allclose(m.images[0, :, 0, 0], torch.full((3,), 0.5))  # outside the aperture: background


def test_target_stops_each_image_where_it_reached(tiny):
    free = synthesize(tiny, "IT:0", n=3, size=32, steps=30, progress=False, transforms=None, param="pixels")
    target = float(free.history[5].min())
    r = synthesize(tiny, "IT:0", n=3, size=32, steps=30, progress=False, transforms=None, param="pixels", target=target)
    assert r.metadata["steps_run"] < 30
    assert (r.scores >= target - 1e-4).all()
    assert (r.scores < free.scores).all()  # the stopped images did not keep climbing


def test_engine_runs_the_model_only_as_far_as_the_objective_reads(tiny):
    ran = set()
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: ran.add(n)) for n, m in tiny.net.named_modules()
             if n.count(".") == 1]
    try:
        synthesize(tiny, "V2:1", size=32, steps=3, progress=False)
    finally:
        for h in hooks:
            h.remove()
    assert any(n.startswith("V2.") for n in ran) and not any(n.startswith(("V4", "IT", "decoder")) for n in ran)


def test_expectation_over_transforms_counts_evaluations(tiny):
    r = synthesize(tiny, "IT:1", n=2, size=32, steps=4, eot=3, progress=False)
    assert r.metadata["evaluations"] == 4 * 2 * 3
    assert "jitter" in r.metadata["transforms"]
    x = torch.rand(2, 3, 64, 64)
    from synth.transforms import apply
    y = apply(standard(64), x, _gen())
    assert y.shape == x.shape and not torch.equal(x, y)


def test_redirected_relu_moves_a_silent_start_that_plain_ascent_cannot(tiny):
    grey = torch.full((1, 3, 32, 32), 0.5)
    with torch.no_grad():
        acts = tiny.activations(grey, "IT")["IT"].mean((2, 3))[0]
    dead = int(torch.nonzero(acts == 0)[0])  # a channel silent at grey
    plain = optimize(tiny, f"IT:{dead}", Pixels(grey), steps=15, progress=False)
    assert float(plain.scores[0]) == 0.0 and torch.equal(plain.images, grey)
    redirected = optimize(tiny, f"IT:{dead}", Pixels(grey), steps=15, relu_override=15, progress=False)
    assert not torch.equal(redirected.images, grey)
    with redirected_relu(tiny.net):
        pass
    assert all("forward" not in m.__dict__ for m in tiny.net.modules())  # patches removed


def test_blurred_parametrization_smooths_gradients():
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 16, 16] = 1
    y = gaussian_blur(x, 2.0)
    assert math.isclose(float(y.sum()), 1.0, rel_tol=1e-4) and float(y.max()) < 0.1
    p = Blurred(torch.rand(1, 3, 16, 16), sigma=2.0, sigma_end=0.0)
    p.image()[0, 0, 8, 8].backward()
    assert (p.x.grad[0, 0] > 0).sum() > 9  # the point gradient spread out
    p.schedule(1.0)
    assert p.sigma == 0.0


def test_fourier_fit_starts_at_the_given_image():
    img = torch.rand(2, 3, 32, 32, generator=_gen()).clamp(0.05, 0.95)
    p = Fourier.fit(img, _gen())
    assert (p.image() - img).abs().max() < 1e-3
    low = Fourier(2, 32, _gen(), max_freq=3)
    assert low.code.shape == (2, 3, 7 * 4, 2)


def test_bad_input_gets_clear_errors(tiny):
    with pytest.raises(UnknownNameError, match="IT"):
        synthesize(tiny, "IX:3", size=32, steps=1, progress=False)
    with pytest.raises(ConfigError, match="out of range"):
        synthesize(tiny, "IT:999", size=32, steps=1, progress=False)
    with pytest.raises(ImageError, match="empty"):
        optimize(tiny, "IT:1", Pixels(torch.rand(0, 3, 32, 32)), steps=1, progress=False)
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        optimize(tiny, "IT:1", Pixels(torch.rand(1, 3, 32, 32) * 3), steps=1, progress=False)
    with pytest.raises(UnknownNameError, match="adam"):
        synthesize(tiny, "IT:1", size=32, steps=1, step="adamw", progress=False)
    with pytest.raises(ConfigError, match="lr"):
        synthesize(tiny, "IT:1", size=32, steps=1, lr=float("nan"), progress=False)
    with pytest.raises(ConfigError, match="target"):
        synthesize(tiny, "IT:1", size=32, steps=1, target=float("inf"), progress=False)
    with pytest.raises(UnknownNameError, match="fourier"):
        make("fourir", 1, 32, "noise", _gen())
    with pytest.raises(UnknownNameError, match="noise"):
        make("pixels", 1, 32, "nosie", _gen())
