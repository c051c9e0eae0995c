"""Attacks on the one engine: strength against foolbox, targets reached, budgets kept, sweeps that share work, the
catalogue, minimal ε, neural sites, wormholes, stochastic models and gradient-masking checks."""
import math
import warnings

import pytest
import torch
from PIL import Image
from torch import nn

import attacks
import synth
from attacks import AttackResult
from synth.errors import ConfigError, UnknownNameError
from synth.files import read_png


@pytest.fixture(scope="session")
def sample(test_sample):
    """64 held-out test images (8 per category) and their labels."""
    return test_sample.tensor()[:64], torch.from_numpy(test_sample.labels[:64])


@pytest.mark.slow  # an experiment of half a minute: run by `make test` after the default suite
def test_native_pgd_is_at_least_as_strong_as_foolbox_linf_pgd(toy_standard, test_sample):
    import foolbox as fb

    x, y = test_sample.tensor()[:128], torch.from_numpy(test_sample.labels[:128])
    eps, steps = 1 / 255, 10
    ours = attacks.pgd(toy_standard, x, y, eps, steps=steps, progress=False)
    torch.manual_seed(0)
    _, _, success = fb.attacks.LinfPGD(steps=steps, rel_stepsize=2.5 / steps, random_start=True)(
        fb.PyTorchModel(toy_standard, bounds=(0, 1)), x, y, epsilons=eps)
    theirs = 1 - float(success.float().mean())
    assert 0.2 < theirs < 0.9  # a budget where the comparison means something
    assert float(ours.accuracy[0]) <= theirs + 0.02
    assert ours.metadata["gradients"] < 128 * steps  # misclassified images stopped costing compute


def test_targeted_attacks_reach_their_target(toy_standard, sample):
    x, y = sample[0][:24], sample[1][:24]
    target = (y + 1) % 8
    r = attacks.pgd(toy_standard, x, y, 8 / 255, target=target, steps=20, progress=False)
    assert float(r.success_rate[0]) >= 0.9
    assert (r.predictions[0][r.success[0]] == target[r.success[0]]).all()
    named = attacks.pgd(toy_standard, x[:4], y[:4], 0.5, norm="l2", target="faces", steps=10, progress=False)
    assert (named.target == toy_standard.classes.index("faces")).all()
    assert (named.predictions[0][named.success[0]] == named.target[named.success[0]]).all()


@pytest.mark.parametrize("norm, eps", [("linf", ["1/255", "2/255", "8/255"]), ("l2", [0.1, 0.3, 1.0])])
def test_every_returned_image_lies_in_its_ball(toy_robust, sample, norm, eps):
    x, y = sample[0][:24], sample[1][:24]
    r = attacks.pgd(toy_robust, x, y, eps, norm=norm, steps=5, progress=False)
    budgets = attacks.parse_eps(eps)
    assert r.adversarial.shape == (3, 24, 3, 64, 64)
    assert (r.distance <= budgets[:, None] + 1e-5).all()
    assert 0 <= r.adversarial.min() and r.adversarial.max() <= 1
    d = (r.adversarial - x[None]).flatten(2)
    measured = d.abs().amax(2) if norm == "linf" else d.norm(dim=2)
    torch.testing.assert_close(measured, r.distance)
    with torch.no_grad():  # success, predictions and scores were checked on exactly these images
        preds = torch.stack([toy_robust(a).argmax(1) for a in r.adversarial])
    assert torch.equal(preds, r.predictions) and torch.equal(r.success, preds != y)


def test_a_sweep_is_one_call_that_shares_work_across_budgets(toy_standard, sample):
    x, y = sample
    eps = [0.5 / 255, 1 / 255, 2 / 255, 4 / 255, 8 / 255]
    r = attacks.pgd(toy_standard, x, y, eps, steps=20, progress=False)
    assert r.eps.tolist() == pytest.approx(eps)
    assert (r.accuracy[1:] <= r.accuracy[:-1]).all() and float(r.accuracy[-1]) < 0.1 < float(r.accuracy[0])
    assert r.metadata["gradients"] < 0.4 * len(eps) * 20 * len(x)  # foolbox would pay all of it
    broken = r.success[:-1] & ~r.success[1:]
    assert not broken.any()  # broken at a small budget means broken at every larger one
    assert not r.checks["monotone"]["flag"] and not r.checks["gradients"]["flag"]


def test_fixed_steps_and_restarts_run_through_the_same_loop(toy_robust, sample):
    x, y = sample[0][:16], sample[1][:16]
    a = attacks.pgd(toy_robust, x, y, 4 / 255, step="pgd", steps=10, restarts=2, progress=False)
    assert a.metadata["step_rule"] == "fixed" and a.metadata["restarts"] == 2
    assert (a.distance <= 4 / 255 + 1e-6).all() and float(a.accuracy[0]) < a.clean_accuracy
    with pytest.raises(UnknownNameError, match="pgd"):
        attacks.pgd(toy_robust, x, y, 4 / 255, step="pgdd", progress=False)


def test_results_save_load_and_draw(toy_standard, sample, tmp_path):
    x, y = sample[0][:6], sample[1][:6]
    r = attacks.pgd(toy_standard, x, y, ["1/255", "4/255"], steps=5, seed=3, progress=False)
    paths = r.save(tmp_path)
    back = AttackResult.load(tmp_path)
    for name in ("adversarial", "success", "distance", "predictions", "eps", "labels"):
        assert torch.equal(getattr(back, name), getattr(r, name))
    img, meta = read_png(paths[7])
    assert meta["attack"] == "pgd-linf" and meta["model"] == "toy-standard" and meta["seed"] == 3
    assert meta["eps"] == pytest.approx(4 / 255) and meta["label"] == toy_standard.classes[int(y[1])]
    assert (img - r.adversarial[1, 1]).abs().max() <= 1 / 255
    sheet = Image.open(r.sheet(tmp_path / "sheet.png", n=4))
    curve = Image.open(r.plot(tmp_path / "curve.png"))
    assert sheet.size[1] > 1.3 * sheet.size[0] and curve.size[0] > curve.size[1]  # 4 rows of 3; a landscape plot
    assert "accuracy" in r.summary() and "4/255" in r.summary()


@pytest.mark.parametrize("name, options", [("fgsm", {}), ("deepfool-l2", {"steps": 20}),
                                           ("fmn-linf", {"steps": 20}), ("cw-l2", {"steps": 30,
                                                                                  "binary_search_steps": 3}),
                                           ("boundary", {"steps": 100}), ("foolbox-pgd-l2", {"steps": 5})])
def test_the_catalogue_returns_the_same_result_type(toy_standard, sample, name, options):
    x, y = sample[0][:8], sample[1][:8]
    r = attacks.run(name, toy_standard, x, y, eps=4 / 255 if name == "fgsm" else 1.0, **options)
    assert isinstance(r, AttackResult) and r.metadata["attack"] == name
    entry = attacks.CATALOGUE[name]
    assert r.eps.isinf().all() == entry.minimal
    with torch.no_grad():
        preds = toy_standard(r.adversarial[0]).argmax(1)
    assert torch.equal(preds, r.predictions[0]) and torch.equal(r.success[0], preds != y)
    if entry.minimal:
        assert float(r.success_rate[0]) > 0.5 and torch.isfinite(r.min_eps).sum() == r.success[0].sum()


def test_catalogue_verdicts_on_a_stochastic_model_are_the_native_eot_mean(sample, monkeypatch):
    import importlib

    common = importlib.import_module("attacks.common")  # ``attacks.pgd`` etc. are shadowed by the functions
    vone = synth.load_model("toy-vone", device="cpu")
    assert vone.stochastic
    x, y = sample[0][:6], sample[1][:6]
    real, calls = common.mean_logits, []

    def spy(model, images, eot=1):
        z = real(model, images, eot)
        calls.append((images.detach().clone(), eot, z.detach().clone()))
        return z

    monkeypatch.setattr(common, "mean_logits", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("error", attacks.StochasticModelWarning)  # verdicts on 8 draws: nothing to warn of
        r = attacks.run("fgsm", vone, x, y, eps=4 / 255)
    assert r.metadata["eot"] == 8
    # the clean and the adversarial verdicts, image by image (a noisy model's draws are seeded by each image's pixels)
    assert len(calls) == 12 and all(eot == 8 and len(images) == 1 for images, eot, _ in calls)
    (clean_x, clean_z), (adv_x, adv_z) = [[torch.cat([c[k] for c in part]) for k in (0, 2)]
                                          for part in (calls[:6], calls[6:])]
    assert torch.equal(clean_x, x) and torch.equal(r.clean_predictions, clean_z.argmax(-1))
    assert torch.equal(adv_x, r.adversarial[0])  # the verdict is on the images the result returns
    assert torch.equal(r.success[0], common.success_of(adv_z, y, None))
    assert torch.equal(r.predictions[0], adv_z.argmax(-1))
    assert math.isclose(float(r.accuracy[0]), float((adv_z.argmax(-1) == y).float().mean()))


def test_the_catalogue_says_what_is_wrong(toy_standard, sample):
    x, y = sample[0][:2], sample[1][:2]
    with pytest.raises(UnknownNameError, match="cw-l2"):
        attacks.run("cw-l3", toy_standard, x, y)
    with pytest.raises(UnknownNameError, match="steps"):
        attacks.run("deepfool-l2", toy_standard, x, y, stpes=3)
    with pytest.raises(ConfigError, match="needs a budget"):
        attacks.run("fgsm", toy_standard, x, y)
    with pytest.raises(UnknownNameError, match="chairs"):
        attacks.pgd(toy_standard, x, ["chiars", "cars"], 1 / 255, progress=False)
    with pytest.raises(ConfigError, match="4/255"):
        attacks.pgd(toy_standard, x, y, "4//255", progress=False)
    with pytest.raises(ConfigError, match="3 labels for 2 images"):
        attacks.pgd(toy_standard, x, [0, 1, 2], 1 / 255, progress=False)


def test_minimal_eps_brackets_each_decision_and_gives_the_curve(toy_standard, sample):
    x, y = sample[0][:16], sample[1][:16]
    m = attacks.minimal(toy_standard, x, y, steps=10, rounds=10, tol=0.1, progress=False)
    finite = torch.isfinite(m.min_eps)
    assert finite.sum() >= 14 and (m.success[0] == finite).all()
    lower = torch.tensor(m.metadata["robust_below"])
    assert (lower[finite] <= m.min_eps[finite] + 1e-6).all()
    assert (m.min_eps[finite] - lower[finite] <= 0.1 * m.min_eps[finite] + 1e-6).sum() >= 12  # brackets closed
    grid = torch.tensor([0.0, 1 / 255, 2 / 255, 1.0])
    curve = m.curve(grid)
    assert math.isclose(float(curve[0]), m.clean_accuracy) and (curve[1:] <= curve[:-1]).all()
    assert float(curve[-1]) == 1 - float(finite.float().mean())


def test_minimal_l2_cap_grows_with_the_image_side(toy_standard, sample):
    import torch.nn.functional as F

    x, y = sample[0][:2], sample[1][:2]
    caps = {}
    for size in (32, 64, 128):
        xs = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        caps[size] = attacks.minimal(toy_standard, xs, y, norm="l2", steps=1, rounds=1,
                                     progress=False).metadata["eps_max"]
    assert math.isclose(caps[64], 32 / 255 * math.sqrt(3 * 64 * 64))  # the same per-pixel change as before
    assert math.isclose(caps[128] / caps[32], 4.0) and math.isclose(caps[128] / caps[64], 2.0)
    linf = attacks.minimal(toy_standard, x, y, norm="linf", steps=1, rounds=1, progress=False)
    assert math.isclose(linf.metadata["eps_max"], 32 / 255)  # an L-inf budget does not depend on size


@pytest.mark.slow  # an experiment of half a minute: run by `make test` after the default suite
def test_site_attacks_move_standard_units_further_than_robust_ones(toy_standard, toy_robust, sample):
    x = sample[0][::4]
    eps = ["0.5/255", "2/255"]
    changes = {}
    for name, model in (("standard", toy_standard), ("robust", toy_robust)):
        up = attacks.site_attack(model, x, "IT:7", eps, steps=10, progress=False)
        down = attacks.site_attack(model, x, "IT:7", eps, direction="down", steps=10, progress=False)
        assert (up.scores[1] > up.clean_scores).float().mean() >= 0.9
        assert (down.scores[1] < down.clean_scores).float().mean() >= 0.9
        rel = attacks.relative_change(up)
        assert (rel[1] >= rel[0] - 1e-3).float().mean() >= 0.9  # a larger budget moves the unit further
        changes[name] = float(rel[1].median())
    assert changes["standard"] > 2 * changes["robust"] > 0  # Guo et al.: robust units resist


def test_population_attack_moves_towards_the_reference(toy_standard, sample):
    x = sample[0][:4]
    r = attacks.site_attack(toy_standard, x, "IT:0", ["2/255", "8/255"], toward=sample[0][32:36], steps=10,
                            progress=False)
    assert (r.scores[0] < r.clean_scores).all() and (r.scores[1] < r.scores[0]).float().mean() >= 0.75
    assert r.metadata["direction"] == "toward"


def test_robust_made_perturbations_carry_to_the_standard_model(toy_standard, toy_robust, sample, tmp_path):
    from attacks.behavior import report, sheet

    x, y = sample[0][::4], sample[1][::4]
    models = {"standard": toy_standard, "robust": toy_robust}
    run = attacks.wormholes(models, x, y, eps=2.0, steps=40, progress=False)
    assert run["rates"]["standard"]["standard"] > 0.9 and run["rates"]["robust"]["robust"] > 0.7
    assert run["rates"]["robust"]["standard"] > run["rates"]["standard"]["robust"] + 0.2
    assert run["norms"]["robust"] > 1.5 * run["norms"]["standard"]  # a robust model needs a larger change
    for result in run["results"].values():
        assert (result.distance <= 2.0 + 1e-4).all() and result.metadata["random_start"] is False
    path = sheet(run, models, tmp_path / "sheet.png", n=3)
    assert Image.open(path).size[0] > Image.open(path).size[1]  # 3 rows of 5 columns
    text = report({"matched budget": run}, tmp_path).read_text()
    assert "| robust | " in text and f"{run['rates']['robust']['standard']:.2f}" in text


def test_stochastic_models_warn_without_eot_and_average_with_it(tiny, noisy):
    assert noisy.stochastic and not tiny.stochastic
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with pytest.warns(attacks.StochasticModelWarning, match="eot"):
        one = attacks.pgd(noisy, x, None, 4 / 255, steps=2, progress=False)
    # no early stop on one draw's verdict, a coin flip at the boundary: every image spends every step
    assert one.metadata["early_stop"] is False and one.metadata["gradients"] == 4 * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", attacks.StochasticModelWarning)
        r = attacks.pgd(noisy, x, None, 4 / 255, steps=3, eot=4, progress=False)
    assert r.metadata["eot"] == 4 and r.metadata["early_stop"] is True
    # the verdict on the returned images is the seeded mean of 4 draws, whatever the steps' draws said
    verdict = attacks.common.logits(noisy, r.adversarial[0], 4).argmax(1) != r.labels
    assert (r.success[0].cpu() == verdict.cpu()).all()


def test_gradient_masking_is_reported_never_ignored(toy_standard, sample):
    class Quantize(nn.Module):
        """A non-differentiable front end: 8 grey levels, zero gradient everywhere."""

        def forward(self, x):
            return torch.round(x * 7) / 7

    masked = synth.load_model(nn.Sequential(Quantize(), toy_standard), device="cpu", classes=toy_standard.classes,
                              name="quantized")
    x, y = sample[0][:24], sample[1][:24]
    with pytest.warns(attacks.GradientMaskingWarning, match="all-zero gradient"):
        r = attacks.pgd(masked, x, y, 4 / 255, steps=5, progress=False)
    assert r.checks["gradients"]["flag"] and r.checks["gradients"]["zero"] > 0.9
    with warnings.catch_warnings():  # one image cannot tell masking from a saturated softmax: noted, not flagged
        warnings.simplefilter("error", attacks.GradientMaskingWarning)
        one = attacks.pgd(masked, x[:1], y[:1], [2 / 255, 4 / 255], steps=5, progress=False)
    assert not one.checks["gradients"]["flag"] and "too few to judge masking" in one.checks["gradients"]["message"]
    with pytest.warns(attacks.GradientMaskingWarning):
        reports = attacks.check(masked, x, y, r, steps=5, repeats=20)
    assert reports["unbounded"]["flag"] or reports["blackbox"]["flag"]
    clean = attacks.pgd(toy_standard, x, y, 4 / 255, steps=5, progress=False)
    assert not clean.checks["gradients"]["flag"]
    honest = attacks.check(toy_standard, x, y, clean, steps=5, repeats=20)
    assert not honest["unbounded"]["flag"] and not honest["blackbox"]["flag"]


def test_large_sets_run_in_chunks_with_one_result(tiny):
    x = torch.rand(7, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    whole = attacks.pgd(tiny, x, None, ["1/255", "8/255"], steps=4, step="pgd", progress=False)
    chunked = attacks.pgd(tiny, x, None, ["1/255", "8/255"], steps=4, step="pgd", batch_size=3, progress=False)
    assert chunked.adversarial.shape == whole.adversarial.shape == (2, 7, 3, 32, 32)
    assert torch.equal(chunked.labels, whole.labels) and torch.equal(chunked.clean_predictions, whole.clean_predictions)
    assert (chunked.distance <= torch.tensor([1 / 255, 8 / 255])[:, None] + 1e-6).all()
    with torch.no_grad():
        assert torch.equal(torch.stack([tiny(a).argmax(1) for a in chunked.adversarial]), chunked.predictions)


def test_the_summary_counts_clean_mistakes_apart_and_gives_norms_in_the_budgets_unit():
    from attacks.result import distances

    x = torch.zeros(3, 3, 4, 4)
    adv = x[None].clone()
    adv[0, 1] += 2 / 255  # image 1 moved by 2/255 and broken; image 0 was wrong before the attack; image 2 held
    labels, clean = torch.tensor([0, 1, 2]), torch.tensor([5, 1, 2])
    predictions = torch.tensor([[5, 3, 2]])
    success = predictions != labels
    r = AttackResult(x, labels, torch.tensor([4 / 255]), adv, success, distances(adv, x, "linf"), predictions,
                     clean, "linf", classes=[str(i) for i in range(8)], metadata={"attack": "pgd-linf", "model": "m"})
    lines = r.summary().splitlines()
    assert "1 image(s) already misclassified, not attacked" in lines[0]
    assert "accuracy  33.3%; broken: 1 of 2 attacked, median linf norm 2/255" in lines[1]
    r.success[0, 1] = False  # nothing broken: no median to give, and no 'nan'
    assert "broken: 0 of 2 attacked, median linf norm -" in r.summary() and "nan" not in r.summary()


def test_a_noisy_models_verdict_on_an_image_does_not_depend_on_its_batch(sample):
    """An attack's stage judges a subset of the images, its final check all of them: the same image must get the
    same noise draws either way, or an image broken in one verdict stands in the other."""
    from attacks.common import logits

    vone = synth.load_model("toy-vone", device="cpu")
    x = sample[0][:8]
    whole = logits(vone, x, 4, seed=3)
    assert torch.equal(logits(vone, x[[5, 2]], 4, seed=3), whole[[5, 2]])
    assert torch.equal(logits(vone, torch.cat([x[6:7], x[6:7]]), 4, seed=3)[1], whole[6])
    assert not torch.equal(logits(vone, x[:2], 4, seed=4), whole[:2])  # the seed still chooses the draws
