"""The engine: scores rise, constraints hold, transforms average, early stop, truncation, determinism, errors."""
import math

import pytest
import torch

from synth import Box, Contrast, Grayscale, LpBall, Mask, optimize, synthesize
from synth.engine.gradients import patched_backward
from synth.engine.objectives import Match
from synth.engine.params import Blurred, Fourier, Pixels, gaussian_blur, make
from synth.engine.transforms import standard
from synth.errors import ConfigError, ImageError, UnknownNameError


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


def test_watch_sees_every_step_and_cannot_change_the_run(tiny):
    kw = dict(size=32, steps=6, progress=False, transforms=None, param="pixels", seed=3)
    seen = []

    def watch(t, images, scores):
        seen.append((t, images.shape, scores.clone()))
        images.fill_(0.0)  # the live view's copy; the run does not see this
        scores.fill_(0.0)

    watched, plain = synthesize(tiny, "IT:2", n=2, watch=watch, **kw), synthesize(tiny, "IT:2", n=2, **kw)
    assert [t for t, _, _ in seen] == list(range(6)) and all(shape == (2, 3, 32, 32) for _, shape, _ in seen)
    assert torch.equal(torch.stack([s for _, _, s in seen]), plain.history)
    assert torch.equal(watched.images, plain.images) and torch.equal(watched.history, plain.history)


def test_linf_ball_and_box_are_projections(tiny):
    """Steps that would leave the ball end on its surface (12 sign steps of 1/255 against a 4/255 ball), inside
    the box, with the score higher than at the start: the ball is reached and held, not merely never left."""
    x0 = torch.rand(2, 3, 32, 32, generator=_gen()).clamp(0.05, 0.95)
    start = optimize(tiny, "norm(IT)", Pixels(x0), steps=0, progress=False).scores
    r = optimize(tiny, "norm(IT)", Pixels(x0), constraints=[LpBall(x0, 4 / 255), Box()], step="sign", lr=1 / 255,
                 steps=12, progress=False)
    linf = (r.images - x0).flatten(1).abs().amax(1)
    assert (linf <= 4 / 255 + 1e-6).all() and (linf >= 4 / 255 - 1e-6).all()
    assert 0 <= r.images.min() and r.images.max() <= 1
    assert (r.scores > start).all() and (r.history[-1] > r.history[0]).all()
    r2 = optimize(tiny, "norm(IT)", Pixels(x0), constraints=[LpBall(x0, 0.5, p=2), Box()], step="l2", lr=0.2,
                  steps=12, progress=False)
    l2 = (r2.images - x0).flatten(1).norm(dim=1)
    assert (l2 <= 0.5 + 1e-4).all() and (l2 >= 0.45).all()
    assert (r2.scores > start).all()


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
    assert r.metadata["evaluations"] == 4 * 2 * (3 + 1)  # 3 transformed draws, then the images themselves once
    assert "jitter" in r.metadata["transforms"]
    x = torch.rand(2, 3, 64, 64)
    from synth.engine.transforms import apply
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
    with patched_backward(tiny.net, relus="redirect"):
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


# ---------------------------------------------------------------------------------- the engine as an attack engine
def test_a_projecting_constraint_on_a_parametrization_without_pixels_is_refused(tiny):
    x0 = torch.rand(1, 3, 32, 32, generator=_gen())
    with pytest.raises(ConfigError, match="no pixels to project"):
        optimize(tiny, "IT:1", Fourier.fit(x0, _gen()), constraints=[LpBall(x0, 4 / 255), Box()], steps=2,
                 progress=False)
    r = optimize(tiny, "IT:1", Fourier(1, 32, _gen()), constraints=[Box()], steps=2, progress=False)  # sigmoid: in box
    assert r.images.shape == (1, 3, 32, 32)


def test_eot_scores_each_draw_then_averages(tiny):
    r = synthesize(tiny, "IT:{1,2,3}", n=3, size=32, steps=3, eot=2, progress=False)  # per-image sites
    assert r.scores.shape == (3,) and r.metadata["evaluations"] == 3 * 3 * (2 + 1)  # and once untransformed
    with torch.no_grad():
        targets = tiny.activations(torch.rand(2, 3, 32, 32, generator=_gen()), "V4")["V4"]
    m = synthesize(tiny, Match("V4", targets), n=2, size=32, steps=3, eot=2, progress=False)  # per-image targets
    assert m.scores.shape == (2,)
    x = torch.rand(3, 3, 32, 32, generator=_gen())
    one, three = (optimize(tiny, "diversity(V4)", Pixels(x), steps=0, eot=e, progress=False) for e in (1, 3))
    torch.testing.assert_close(three.scores, one.scores)  # each image compared with the others, not its copies


def test_eot_can_score_the_mean_activations_a_noisy_verdict_reads(tiny, noisy):
    """'activations' scores the objective of the draw-averaged activations: for a convex objective (a norm) that
    is at most the mean of the per-draw scores (Jensen), equal to it without noise."""
    x = torch.rand(3, 3, 32, 32, generator=_gen())

    def scores(model, average, layer="net.IT"):  # the wrapper's name for tiny's IT
        r = optimize(model, f"norm({layer})", Pixels(x), steps=0, eot=4, eot_average=average, progress=False)
        assert r.metadata["eot_average"] == average
        return r.scores

    per_draw, of_mean = scores(noisy, "scores"), scores(noisy, "activations")
    assert (of_mean < per_draw - 1e-4).all()
    torch.testing.assert_close(scores(tiny, "activations", "IT"), scores(tiny, "scores", "IT"))
    with pytest.raises(UnknownNameError, match="EOT average"):
        optimize(tiny, "IT:1", Pixels(x), steps=0, eot=2, eot_average="logits", progress=False)


def test_each_image_has_its_own_eps_and_step_size(tiny):
    x0 = torch.rand(3, 3, 32, 32, generator=_gen()).clamp(0.1, 0.9)
    eps = torch.tensor([1, 4, 8]) / 255
    r = optimize(tiny, "norm(IT)", Pixels(x0), constraints=[LpBall(x0, eps), Box()], step="sign", lr=eps / 4,
                 steps=8, progress=False)
    dist = (r.images - x0).flatten(1).abs().amax(1)
    assert (dist <= eps + 1e-6).all() and (dist >= 0.99 * eps).all()
    eps2 = torch.tensor([0.1, 0.5, 1.0])
    r2 = optimize(tiny, "norm(IT)", Pixels(x0), constraints=[LpBall(x0, eps2, p=2), Box()], step="l2", lr=eps2 / 2,
                  steps=6, progress=False)
    dist2 = (r2.images - x0).flatten(1).norm(dim=1)
    assert (dist2 <= eps2 + 1e-5).all() and (dist2 >= 0.9 * eps2).all()
    with pytest.raises(ConfigError, match="per-image step sizes"):
        optimize(tiny, "IT:1", Pixels(x0), step="adam", lr=eps, steps=1, progress=False)
    with pytest.raises(ConfigError, match="eps values for 3 images"):
        LpBall(x0, torch.tensor([0.1, 0.2]))


def test_random_start_is_drawn_inside_the_ball_and_projected_first(tiny):
    x0 = torch.rand(64, 3, 16, 16, generator=_gen())
    noisy = x0 + (torch.rand(x0.shape, generator=_gen()) * 2 - 1) * 0.1  # a hand-made start, partly outside [0, 1]
    r = optimize(tiny, "IT:1", Pixels(noisy), constraints=[LpBall(x0, 0.1), Box()], steps=0, progress=False)
    assert 0 <= r.images.min() and r.images.max() <= 1
    for p, eps in ((math.inf, 8 / 255), (2, 1.0)):
        ball = LpBall(x0, eps, p=p)
        r = optimize(tiny, "IT:1", Pixels(x0), constraints=[ball, Box()], steps=0, random_start=True, seed=3,
                     progress=False)
        d = ball.distance(r.images)
        assert (d <= eps + 1e-5).all() and 0 <= r.images.min() and r.images.max() <= 1
        assert float(d.min()) > 0.5 * eps  # not the center: a draw that fills the ball
    with pytest.raises(ConfigError, match="random_start"):
        optimize(tiny, "IT:1", Pixels(x0), steps=1, random_start=True, progress=False)


def test_every_model_has_logits_and_input_layers(tiny):
    x = torch.rand(2, 3, 32, 32, generator=_gen())
    with torch.no_grad():
        logits = tiny(x)
        torch.testing.assert_close(tiny.activations(x, "logits")["logits"], logits)
        both = tiny.activations(x, ["V4", "logits", "input"])
    torch.testing.assert_close(both["logits"], logits)
    torch.testing.assert_close(both["V4"], tiny.activations(x, "V4")["V4"])
    assert both["input"] is x
    assert tiny.layers[0] == "input" and tiny.layers[-1] == "logits"


def test_label_objectives_score_and_round_trip(tiny):
    from synth.engine.objectives import CrossEntropy, Margin, parse
    z = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    acts = {"logits": z}
    y = torch.tensor([0, 2])
    torch.testing.assert_close(CrossEntropy("logits", y=y).score(acts),
                               torch.nn.functional.cross_entropy(z, y, reduction="none"))
    torch.testing.assert_close(CrossEntropy("logits", target=1).score(acts), torch.log_softmax(z, 1)[:, 1])
    torch.testing.assert_close(Margin("logits", y=y).score(acts), torch.tensor([-1.0, 2.0]))
    torch.testing.assert_close(Margin("logits", target=(1, 1)).score(acts), torch.tensor([-1.0, 2.0]))
    torch.testing.assert_close(Margin("logits", y=y, kappa=0.5).score(acts), torch.tensor([-1.0, 0.5]))
    for text in ["xent(logits, y={0,2})", "margin(logits, target=faces, kappa=5)", "-xent(logits, target=3)"]:
        assert str(parse(text)) == text
    named = parse("xent(logits, y={faces,cars})").resolve(tiny)
    assert named.labels.values == (tiny.classes.index("faces"), tiny.classes.index("cars"))
    assert str(named) == "xent(logits, y={faces,cars})"
    with pytest.raises(UnknownNameError, match="faces"):
        parse("xent(logits, y=facse)").resolve(tiny)
    with pytest.raises(ConfigError, match="exactly one of y="):
        parse("margin(logits)")
    with pytest.raises(ConfigError, match="3 labels for 2 images"):
        CrossEntropy("logits", y=(0, 1, 2)).score(acts)


def test_the_returned_images_are_projected_and_checked_whatever_the_step_rule_does(tiny):
    from synth.engine.criteria import ScoreAtLeast

    class Wild:
        """A step rule that throws the pixels far out of the ball and the box."""

        def __init__(self, p):
            self.p = p

        def update(self, scores):
            self.p.data.add_(torch.randn(self.p.shape, generator=_gen()) * 3)

    x0 = torch.rand(4, 3, 32, 32, generator=_gen())
    p = Pixels(x0)
    ball = LpBall(x0, 4 / 255)
    r = optimize(tiny, "norm(IT)", p, constraints=[ball, Box()], step=Wild(p.x), steps=5,
                 stop=ScoreAtLeast(1e9), progress=False)
    assert (ball.distance(r.images) <= 4 / 255 + 1e-6).all() and 0 <= r.images.min() and r.images.max() <= 1
    torch.testing.assert_close(r.distance, ball.distance(r.images))
    with torch.no_grad():
        rescored = tiny.activations(r.images, "IT")["IT"].pow(2).flatten(1).mean(1)
    torch.testing.assert_close(r.scores, rescored)
    assert r.success is not None and not r.success.any()
    assert (r.best_scores >= r.scores - 1e-6).all() and (ball.distance(r.best) <= 4 / 255 + 1e-6).all()


def test_images_that_meet_the_criterion_stop_and_leave_the_batch(tiny, monkeypatch):
    free = synthesize(tiny, "IT:0", n=4, size=32, steps=20, progress=False, transforms=None, param="pixels")
    target = free.history[6].sort().values[1:3].mean()  # two images reach it early, two later or never
    sizes = []
    forward = tiny.activations
    monkeypatch.setattr(tiny, "activations", lambda x, *a, **k: (sizes.append(x.shape[0]), forward(x, *a, **k))[1])
    r = synthesize(tiny, "IT:0", n=4, size=32, steps=20, progress=False, transforms=None, param="pixels",
                   target=float(target))
    assert sizes[0] == 4 and min(sizes[:-1]) < 4  # the final check sees all four again
    assert r.metadata["evaluations"] == sum(sizes[:-1]) < 4 * len(sizes[:-1]) + 1
    assert (r.success == (r.scores >= target)).all()
    assert r.grad_norm.shape == r.history.shape and torch.isnan(r.grad_norm[-1]).any()


def test_a_sure_class_criterion_stops_only_where_the_draws_make_the_verdict_certain():
    from synth.engine.criteria import Drawn, Misclassified, TargetClass
    # 4 draws of 3 images' logits over 3 classes, label 0 for all: image 0 leads class 1 by 0.5 on the mean with
    # a per-draw spread of 2 (standard error 1); image 1 leads by 5 with the same spread; image 2 is not fooled
    lead = torch.tensor([[-1.5, 3.0, 1.0], [2.5, 7.0, 1.0], [-1.5, 3.0, -3.0], [2.5, 7.0, -3.0]])
    draws = torch.zeros(4, 3, 3)
    draws[:, :, 1] = lead
    acts = Drawn({"logits": draws.mean(0)}, {"logits": draws})
    y = torch.zeros(3, dtype=torch.long)
    assert Misclassified(y)(torch.zeros(3), acts).tolist() == [True, True, False]
    assert Misclassified(y, sure=2)(torch.zeros(3), acts).tolist() == [False, True, False]
    assert Misclassified(y, sure=2)(torch.zeros(3), dict(acts)).tolist() == [True, True, False]  # no draws: mean
    assert TargetClass(torch.ones(3, dtype=torch.long), sure=2)(torch.zeros(3), acts).tolist() == [False, True,
                                                                                                   False]
    assert "sure=2" in str(Misclassified(y, sure=2).select(torch.tensor([0, 2])))
    with pytest.raises(ConfigError, match="sure"):
        Misclassified(y, sure=-1)


def test_a_criterion_sees_each_draw_of_a_stochastic_step(noisy):
    from synth.engine.criteria import Drawn
    seen = []
    x0 = torch.rand(3, 3, 32, 32, generator=_gen())

    def rule(scores, acts):
        seen.append(acts)
        return torch.zeros_like(scores, dtype=torch.bool)

    optimize(noisy, "logits:0", Pixels(x0), constraints=[Box()], steps=2, eot=5, eot_average="activations",
             stop=rule, progress=False)
    assert isinstance(seen[0], Drawn) and seen[0].draws["logits"].shape == (5, 3, 8)
    torch.testing.assert_close(seen[0]["logits"], seen[0].draws["logits"].mean(0))
    assert not seen[0]["logits"].requires_grad and seen[0].draws["logits"].std(0).min() > 0


def test_apgd_ascends_inside_the_ball(tiny):
    x0 = torch.rand(2, 3, 32, 32, generator=_gen()).clamp(0.05, 0.95)
    eps = torch.tensor([4, 8]) / 255
    ball = LpBall(x0, eps)
    r = optimize(tiny, "norm(IT)", Pixels(x0), constraints=[ball, Box()], step="apgd", lr=2 * eps, steps=30,
                 progress=False)
    assert (ball.distance(r.images) <= eps + 1e-6).all()
    assert (r.best_scores > r.history[0]).all()


def test_apgd_halves_the_step_and_restarts_from_the_best_point_where_the_score_stalls():
    from synth.engine.steps import APGD
    x = torch.nn.Parameter(torch.zeros(2, 1, 2, 2))
    opt = APGD([x], torch.tensor([0.4, 0.4]), math.inf, steps=20, project=lambda t: t.clamp_(-1, 1))
    assert opt.gap == 4
    idx = torch.arange(2)
    rising = iter(range(100))
    for t in range(5):
        x.grad = -torch.ones_like(x)  # the loss gradient: ascent moves every pixel up
        f = float(next(rising))
        opt.observe(torch.tensor([f, 5.0 if t == 0 else 1.0]), idx)  # image 0 keeps rising, image 1 never beats t=0
        opt.step()
    torch.testing.assert_close(opt.eta, torch.tensor([0.4, 0.2]))
    assert float(opt.best_f[1]) == 5.0


def test_surrogate_gradients_keep_the_forward_and_reach_silent_units_and_pool_runners_up(tiny):
    from synth.engine.gradients import Surrogate
    x = torch.rand(2, 3, 32, 32, generator=_gen(4), requires_grad=True)

    def run():
        x.grad = None
        a = tiny.activations(x, "V4")["V4"]
        a.sum().backward()
        return a.detach(), x.grad.clone()

    exact, g_exact = run()
    with patched_backward(tiny.net, relus="soft", pools="soft", modules={"V4.nonlin": None}) as changed:
        smooth, g_smooth = run()
    assert "V1.nonlin" in changed and "V2.pool" in changed and "V4.nonlin" not in changed
    assert torch.equal(exact, smooth)  # the forward pass is exactly the network's
    assert not torch.allclose(g_exact, g_smooth)
    pool = torch.nn.Sequential(torch.nn.MaxPool2d(2))
    z = torch.rand(1, 1, 4, 4, generator=_gen(5), requires_grad=True)
    pool(z).sum().backward()
    assert int((z.grad != 0).sum()) == 4  # exact: all of each window's gradient to its argmax
    z.grad = None
    with patched_backward(pool, relus="soft", pools="soft"):
        out = pool(z)
        out.sum().backward()
    assert int((z.grad != 0).sum()) == 16 and torch.allclose(z.grad.sum(), torch.tensor(4.0))  # spread, same total
    assert torch.equal(out, torch.nn.functional.max_pool2d(z, 2))
    again, g_again = run()
    assert torch.equal(g_again, g_exact) and tiny.net.V1.nonlin.inplace  # restored afterwards
    with pytest.raises(ConfigError, match="relu_beta"):
        Surrogate(relu_beta=0)
    fading = Surrogate(2.0, 0.2)
    fading.at(0.5)
    assert fading.beta == 4.0 and math.isclose(fading.tau, 0.2 * (1 - 0.495))
    fading.at(1.0)
    assert fading.beta == 200.0 and math.isclose(fading.tau, 0.002)


def test_plateau_decay_halves_only_the_images_that_stall_and_scales_their_updates():
    from synth.engine.steps import PlateauDecay

    p = PlateauDecay(patience=4, gamma=0.5, stages=3, rel=0.01)
    active = torch.arange(3)
    for t in range(24):  # image 0 keeps improving by 5 % a step; image 1 is flat; image 2 leaves after 4 steps
        scores = torch.tensor([-(0.95 ** t), -0.5, -0.3])
        live = active if t < 4 else active[:2]
        p.observe(scores[live], live, 3)
    assert p.factor.tolist() == [1.0, 0.25, 1.0]  # image 1 halved at each check down to the floor 0.5 ** (3 - 1)
    before = [torch.zeros(3, 2)]
    params = [torch.ones(3, 2)]
    p.scale(before, params)
    assert params[0][:, 0].tolist() == [1.0, 0.25, 1.0]
    with pytest.raises(ConfigError, match="one image per index of dim 0"):
        p.scale([torch.zeros(5, 2)], [torch.ones(5, 2)])


def test_plateau_decay_with_every_halves_a_slowly_improving_image_on_its_own_clock():
    from synth.engine.steps import PlateauDecay

    p = PlateauDecay(patience=4, gamma=0.5, stages=8, rel=0.01, every=5)
    for t in range(12):  # improving by 5 % a step, never stalled: halved only by the clock, at steps 5 and 10
        p.observe(torch.tensor([-(0.95 ** t)]), torch.arange(1), 1)
        assert p.factor.item() == 0.5 ** ((t + 1) // 5)
    state = p.state_dict()
    q = PlateauDecay(**p.settings())
    q.load_state_dict(state)
    assert torch.equal(q.held, p.held) and "every=5" in str(q)
    with pytest.raises(ConfigError, match="every"):
        PlateauDecay(every=0)
