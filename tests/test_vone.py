"""VOneNet's V1 front-end: Gabor parameters from V1 data, simple and complex cells, noise, and checkpoints."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import synth
from synth.errors import CheckpointError
from synth.zoo.vone import VOneBlock, gabor_parameters, vonenet


def test_gabor_parameters_follow_the_v1_distributions():
    p = gabor_parameters(2000, seed=0)
    assert (p["theta"] >= 0).all() and (p["theta"] < 180).all()
    assert p["sf"].min() >= 0.5 and p["sf"].max() <= 8
    assert 0.1 <= p["nx"].min() and p["nx"].max() <= 10 ** 0.2 and 0.1 <= p["ny"].min()
    # Schiller 1976: envelope size along the grating grows with spatial frequency (sf_corr = 0.75).
    assert np.corrcoef(np.log(p["nx"]), np.log(p["sf"]))[0, 1] > 0.4
    # De Valois 1982a: more cells near the cardinal orientations (bins at 0 and 90 degrees) than at the obliques.
    cardinal = ((p["theta"] < 22.5) | (p["theta"] >= 157.5) | ((p["theta"] >= 67.5) & (p["theta"] < 112.5))).mean()
    assert cardinal > 0.55
    assert np.array_equal(gabor_parameters(10, seed=3)["sf"], gabor_parameters(10, seed=3)["sf"])
    low = gabor_parameters(500, seed=0, sf_max=2.0)
    assert low["sf"].max() <= 2.0


def test_vone_block_cells_noise_and_colour_grouping():
    torch.manual_seed(0)
    block = VOneBlock(simple_channels=8, complex_channels=8, kernel_size=9, stride=2, image_size=32,
                      visual_degrees=2)
    x = torch.randn(2, 3, 32, 32)
    w = block.simple_conv_q0.weight
    assert ((w.abs().sum((2, 3)) > 0).sum(1) == 1).all()  # each filter reads one colour channel
    assert torch.allclose(block.simple_conv_q0(x), F.conv2d(x, w, None, 2, 4), atol=1e-5)
    a, b = block(x), block(x)
    assert a.shape == (2, 16, 16, 16) and (a >= 0).all() and not torch.equal(a, b)  # Poisson-like noise is on
    block.noise_mode = None
    quiet = block(x)
    assert torch.equal(quiet, block(x))
    # Noise variance grows with the rate (variance = mean in spikes): residuals are larger where rates are high.
    block.noise_mode = "neuronal"
    draws = torch.stack([block(x) for _ in range(40)])
    hi = quiet > quiet.quantile(0.9)
    lo = (quiet > 0) & (quiet < quiet.quantile(0.5))
    assert draws.std(0)[hi].mean() > 1.5 * draws.std(0)[lo].mean()
    grey = torch.zeros(1, 3, 32, 32, requires_grad=True)  # complex cells at exactly zero input: finite gradient
    block(grey).sum().backward()
    assert torch.isfinite(grey.grad).all()
    with pytest.raises(ValueError, match="noise_mode"):
        VOneBlock(noise_mode="poisson")


def test_zero_mean_kernels_answer_contrast_not_luminance():
    """VOneNet's kernels keep a DC term; zero-mean ones (toy-vone's) give a uniform brightening no response away
    from the border and keep each kernel's shape otherwise."""
    kw = dict(simple_channels=16, complex_channels=16, kernel_size=15, stride=2, image_size=64, visual_degrees=4,
              sf_max=5.6, noise_mode=None)
    dc, zm = VOneBlock(**kw), VOneBlock(**kw, zero_mean=True)
    w_dc, w_zm = dc.simple_conv_q0.weight, zm.simple_conv_q0.weight
    assert w_zm.sum((1, 2, 3)).abs().max() < 1e-6 < w_dc.sum((1, 2, 3)).abs().max()
    assert ((w_zm.abs().sum((2, 3)) > 0) == (w_dc.abs().sum((2, 3)) > 0)).all()  # same colour channel each
    assert F.cosine_similarity(w_dc.flatten(1), w_zm.flatten(1)).median() > 0.9
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.5
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))  # away from the zero padding
    for block, moves in ((dc, True), (zm, False)):
        shift = (block.simple_conv_q0(x + 0.3) - block.simple_conv_q0(x))[inner].abs().max()
        assert (shift > 1e-3) == moves


def test_published_vonenet_checkpoints_load_by_path_and_by_name(tmp_path):
    torch.manual_seed(0)
    net, back_end = vonenet("resnet50", {})
    assert back_end == "resnet50"
    sd = {"module." + k: v for k, v in net.state_dict().items()}
    sd["module.vone_block.div_u.weight"] = torch.zeros(3)  # the adversarially trained checkpoint carries these
    flags = {"arch": "resnet50", "stride": 4, "simple_channels": 256, "complex_channels": 256, "k_exc": 25.0,
             "noise_mode": "neuronal", "noise_scale": 0.35, "noise_level": 0.07}
    path = tmp_path / "voneresnet50_e70.pth.tar"
    torch.save({"state_dict": sd, "flags": flags, "epoch": 70}, path)
    by_path = synth.load_model(str(path), device="cpu")
    by_name = synth.load_model("vonenet_resnet50", weights=path, device="cpu")
    for m in (by_path, by_name):
        assert m.name == "vonenet_resnet50" and m.info["family"] == "vonenet" and m.stochastic
        assert torch.equal(m.net.vone_block.simple_conv_q0.weight, net.vone_block.simple_conv_q0.weight)
        assert torch.equal(m.net.model.fc.weight, net.model.fc.weight)
        assert m.layer("V1") == "vone_block.output"
    x = torch.rand(1, 3, 224, 224)
    assert by_path.activations(x, "V1")["V1"].shape == (1, 512, 56, 56)
    sd.pop("module.model.fc.weight")
    torch.save({"state_dict": sd, "flags": flags}, path)
    with pytest.raises(CheckpointError, match="missing from checkpoint: model.fc.weight"):
        synth.load_model(str(path), device="cpu")
    with pytest.raises(CheckpointError, match="no VOneBlock"):
        torch.save({"state_dict": {"conv.weight": torch.zeros(1)}}, path)
        synth.load_model("vonenet_cornets", weights=path, device="cpu")


def test_toy_vone_is_a_stochastic_v1_model_with_its_card(test_sample):
    model = synth.load_model("toy-vone", device="cpu")
    card = synth.zoo.models.embedded_models()["toy-vone"]
    assert model.stochastic and card["metrics"]["stochastic"] and card["metrics"]["pgd_linf"]["eot"] == 8
    assert type(model.net.V1).__name__ == "VOneBlock" and model.layer("V1") == "V1"
    assert model.info["sha256"] == card["sha256"]
    with torch.no_grad():
        x = test_sample.tensor()
        acc = float((model(x).argmax(1).numpy() == test_sample.labels).mean())
    claimed = card["metrics"]["test_top1"]
    assert acc >= claimed - 3 * np.sqrt(claimed * (1 - claimed) / len(x)) - 0.01


def test_noise_draws_share_the_gabor_pass_and_match_stacked_copies():
    """``activations(x, draws=k)`` on a VOneNet runs the Gabor bank once and equals the pass over k stacked copies
    under the same noise (values and input gradients); a model without a Draws site falls back to the copies."""
    from synth.zoo.vone import VOneVentralNet

    net = VOneVentralNet(4, widths=(8, 8, 8, 8), vone={"simple_channels": 4, "complex_channels": 4,
                                                        "kernel_size": 7, "image_size": 32})
    model = synth.load_model(net, device="cpu", classes=list("abcd"), name="tiny-vone",
                             areas={"V1": "V1", "IT": "IT"})
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    calls = []
    model.net.V1.simple_conv_q0.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))

    def run(inputs, draws):
        xx = inputs.clone().requires_grad_(True)
        torch.manual_seed(0)
        out = model.activations(xx, ["V1", "IT", "logits", "input"], draws=draws)
        out["logits"].pow(2).sum().backward()
        return out, xx.grad

    shared, g_shared = run(x, 3)
    copies, g_copies = run(torch.cat([x] * 3), 1)
    assert calls == [2, 6]  # the Gabor bank saw each image once with draws=3
    for k in copies:
        assert shared[k].shape == copies[k].shape
        torch.testing.assert_close(shared[k], copies[k], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g_shared, g_copies.view(3, 2, 3, 32, 32).sum(0), rtol=1e-3, atol=1e-6)
    assert not torch.allclose(shared["logits"][:2], shared["logits"][2:4])  # the draws differ
    assert model.net.V1.draws(x).shape == x.shape  # outside the pass, the site passes one copy on
    plain = synth.load_model(net.V1, device="cpu", classes=list("abcd"), name="block-only")
    assert plain.activations(x, "logits", draws=4)["logits"].shape[0] == 8 and calls[-1] == 8  # stacked copies


def test_toy_vone_ships_the_kernels_its_recipe_builds():
    """The shipped toy-vone carries the zero-mean kernels its recipe defines, not the DC kernels of the stage it
    was fine-tuned from (training copies every shared tensor but the fixed Gabor bank)."""
    from synth.training.recipes import RECIPES, architecture, build

    shipped = synth.load_model("toy-vone", device="cpu")
    built = build(RECIPES["toy-vone"])
    assert shipped.info["card"]["architecture"] == architecture(RECIPES["toy-vone"])
    for bank in ("simple_conv_q0", "simple_conv_q1"):
        w = getattr(shipped.net.V1, bank).weight
        assert torch.equal(w, getattr(built.net.V1, bank).weight) and w.sum((1, 2, 3)).abs().max() < 1e-6
    assert not build(RECIPES["toy-vone-39"]).net.V1.zero_mean
