"""attacks.evaluate: a cascade at least as strong as each of its stages, whose gradient-free stage finds what masked
gradients hide, and whose verdicts are re-measured on the images it returns."""
import pytest
import torch
from torch import nn

import attacks
import synth
from attacks.common import logits
from synth.engine.loop import native_bf16
from synth.errors import ConfigError, UnknownNameError

FAST = dict(steps=10, targets=2, queries=150, full_queries=300, progress=False)


@pytest.fixture(scope="module")
def batch():
    b = synth.render(16, "test", start=300)
    return b.tensor(), torch.from_numpy(b.labels)


@pytest.mark.slow
def test_the_cascade_is_at_least_as_strong_as_each_stage_alone(toy_robust, batch):
    x, y = batch
    both = attacks.evaluate(toy_robust, x, y, ["2/255", "4/255"], **FAST)
    assert both.metadata["stages"] == ["apgd-ce", "apgd-t", "square"]
    for stage in ("apgd-ce", "apgd-t", "square"):
        alone = attacks.evaluate(toy_robust, x, y, ["2/255", "4/255"], stages=(stage,), **FAST)
        assert (both.accuracy <= alone.accuracy + 1e-9).all(), (stage, both.accuracy, alone.accuracy)
    tally = both.metadata["broken_by"]
    clean_wrong = int((logits(toy_robust, x).argmax(1) != y).sum())
    # every broken image is counted once, by the stage that broke it first (the larger budget inherits the smaller's)
    assert sum(tally[s][0] for s in tally) + clean_wrong == int(both.success[0].sum())
    assert (both.success[1] >= both.success[0]).all()
    z = logits(toy_robust, both.adversarial.flatten(0, 1)).view(2, len(x), -1)
    assert torch.equal(both.success, z.argmax(-1) != y)  # the verdict is re-measured on the returned images
    assert (both.distance <= torch.tensor([2 / 255, 4 / 255])[:, None] + 1e-6).all()
    # Square's full search runs exactly where its probe broke what the gradient stages could not
    for t, s, escalated in zip(tally["square"], both.success, both.metadata["square_escalated"]):
        assert (not escalated or t > 0) and (escalated or t == 0 or bool(s.all()))


class _Quantized(nn.Module):
    """A network behind a non-differentiable input quantizer: its input gradient is zero everywhere."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 7) / 7)


def test_the_gradient_free_stage_breaks_a_model_whose_gradients_are_masked(toy_standard, batch):
    x, y = batch
    masked = synth.load_model(_Quantized(toy_standard.net), device="cpu", name="quantized",
                              classes=toy_standard.classes, mean=toy_standard.mean.flatten().tolist(),
                              std=toy_standard.std.flatten().tolist())
    gradients = attacks.evaluate(masked, x, y, "8/255", stages=("apgd-ce", "apgd-t"), **FAST)
    with pytest.warns(attacks.GradientMaskingWarning, match="Square's 150-query probe broke"):
        full = attacks.evaluate(masked, x, y, "8/255", **FAST)
    assert full.metadata["broken_by"]["square"][0] >= 4
    assert float(full.accuracy[0]) < float(gradients.accuracy[0]) - 0.2
    assert full.metadata["square_escalated"] == [True]


def test_reduced_precision_never_stops_an_image_on_its_own_verdict(toy_robust, batch):
    """A bfloat16 verdict at the boundary is off: the attack spends every step, and float32 judges the images."""
    x, y = batch
    fp32 = attacks.pgd(toy_robust, x, y, "4/255", steps=10, progress=False)
    bf16 = attacks.pgd(toy_robust, x, y, "4/255", steps=10, precision="bf16", progress=False)
    assert fp32.metadata["early_stop"] and not bf16.metadata["early_stop"]
    assert torch.equal(bf16.success[0], logits(toy_robust, bf16.adversarial[0]).argmax(1) != y)
    r = attacks.evaluate(toy_robust, x, y, "4/255", precision="bf16", **FAST)
    assert r.metadata["precision"] == "bf16"
    auto = attacks.evaluate(toy_robust, x[:2], y[:2], "4/255", stages=("apgd-ce",), **FAST)
    assert auto.metadata["precision"] == ("bf16" if native_bf16("cpu") else "fp32")


def test_bad_stages_and_the_catalogue_name(toy_standard, batch):
    x, y = batch
    with pytest.raises(UnknownNameError, match="evaluate stage"):
        attacks.evaluate(toy_standard, x, y, "4/255", stages=("apgd-ce", "fab"))
    with pytest.raises(ConfigError, match="queries <= full_queries"):
        attacks.evaluate(toy_standard, x, y, "4/255", queries=500, full_queries=100)
    r = attacks.run("evaluate", toy_standard, x[:4], y[:4], "8/255", **{k: v for k, v in FAST.items()
                                                                        if k != "progress"})
    assert r.metadata["attack"] == "evaluate-linf" and r.accuracy.shape == (1,)


def test_a_stochastic_model_gets_eot_stages_that_stop_on_a_certain_verdict(noisy):
    """EOT in every stage and no Square; an image leaves a stage only where the step's draws make its verdict certain,
    and every verdict is the seeded mean of the draws, re-measured on the returned images."""
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    r = attacks.evaluate(noisy, x, None, ["2/255", "16/255"], eot=4, **FAST)
    assert r.metadata["stages"] == ["apgd-ce", "apgd-t"] and r.metadata["eot"] == 4
    z = logits(noisy, r.adversarial.flatten(0, 1), 4).view(2, len(x), -1)
    assert torch.equal(r.success, z.argmax(-1) != r.labels)
    assert (r.success[1] >= r.success[0]).all() and bool(r.success[1].any())
    rand = attacks.evaluate(noisy, x, None, "16/255", eot=4, stages=("apgd-ce", "apgd-dlr"), first_steps=1, **FAST)
    assert rand.metadata["stages"] == ["apgd-ce", "apgd-dlr"] and set(rand.metadata["broken_by"]) == {"apgd-ce",
                                                                                                        "apgd-dlr"}
    assert torch.equal(rand.success[0], logits(noisy, rand.adversarial[0], 4).argmax(1) != rand.labels)


def test_a_stochastic_models_images_stop_early_in_bfloat16_on_a_certain_verdict(noisy):
    """Its 2-standard-error margin dwarfs bfloat16's rounding: a bfloat16 attack stops images early there (never on a
    deterministic model), and the float32 verdict of the returned images is what it reports."""
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    r = attacks.pgd(noisy, x, None, "16/255", steps=10, eot=4, precision="bf16", progress=False)
    assert r.metadata["early_stop"] and r.metadata["gradients"] < 6 * 10 * 4
    assert torch.equal(r.success[0], logits(noisy, r.adversarial[0], 4).argmax(1) != r.labels)
    assert not attacks.pgd(noisy, x, None, "16/255", steps=2, eot=1, precision="bf16", progress=False
                           ).metadata["early_stop"]
