"""The model zoo: shipped models meet their cards, truncated activations, checkpoints, names, devices."""
import fractions
import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import synth
from synth.errors import CheckpointError, ImageError, UnknownNameError
from synth.zoo.models import MADRY_AREAS, embedded_models
from synth.zoo.probe import check_images


def _accuracy(model, batch):
    with torch.no_grad():
        return float((model(batch.tensor()).argmax(1).numpy() == batch.labels).mean())


@pytest.mark.parametrize("name", ["toy-standard", "toy-robust", "toy-topo", "toy-topo-dense"])
def test_shipped_model_reaches_its_card_accuracy_on_held_out_images(name, test_sample):
    model = synth.load_model(name, device="cpu")
    card = embedded_models()[name]
    acc = _accuracy(model, test_sample)
    claimed = card["metrics"]["test_top1"]
    slack = 3 * math.sqrt(claimed * (1 - claimed) / len(test_sample)) + 0.01  # binomial noise of a 400 sample
    assert acc >= claimed - slack, f"{name}: {acc:.3f} on the held-out sample, card says {claimed:.3f}"
    assert card["sha256"] == model.info["sha256"]


@pytest.mark.slow
def test_under_attack_the_v1_front_end_sits_between_the_standard_and_the_robust_model(toy_standard, toy_robust,
                                                                                      test_sample):
    """The robustness ordering the cards report, measured here: attacks.pgd at 4/255 on a balanced sample (the
    stochastic toy-vone through 8 noise draws per step and verdict, as its card)."""
    import attacks
    idx = np.concatenate([np.flatnonzero(test_sample.labels == c)[:8] for c in range(8)])
    x, y = test_sample.tensor()[idx], torch.from_numpy(test_sample.labels[idx])
    vone = synth.load_model("toy-vone", device="cpu")
    acc = {m.name: float(attacks.pgd(m, x, y, eps=4 / 255, steps=10, eot=8 if m.stochastic else 1,
                                     progress=False).accuracy[0])
           for m in (toy_standard, vone, toy_robust)}
    assert acc["toy-standard"] < 0.15 and acc["toy-robust"] > 0.4, acc
    assert acc["toy-standard"] < acc["toy-vone"] < acc["toy-robust"], acc


def test_robust_model_resists_pgd_where_the_standard_model_falls(toy_standard, toy_robust, test_sample):
    from synth.training.recipes import pgd_accuracy
    x, y = test_sample.tensor()[:96], torch.from_numpy(test_sample.labels[:96])
    torch.manual_seed(0)  # foolbox's random start draws from torch's generator
    std = pgd_accuracy(toy_standard, x, y, eps=4 / 255, steps=10)
    rob = pgd_accuracy(toy_robust, x, y, eps=4 / 255, steps=10)
    assert std < 0.15 and rob > 0.4 and rob > std + 0.3


def test_areas_and_classes(toy_standard):
    assert toy_standard.classes == list(synth.CATEGORIES)
    assert set(toy_standard.areas) == {"V1", "V2", "V4", "IT", "behavior"}
    assert toy_standard.layer("IT") == "IT" and toy_standard.layer("behavior") == "decoder.avgpool"


def test_truncated_activations_equal_full_forward_and_skip_later_layers(toy_standard):
    x = synth.render(8, "test").tensor()
    full = {}
    hooks = [toy_standard.net.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: full.__setitem__(n, o))
             for n in ("V1", "V4")]
    with torch.no_grad():
        toy_standard(x)
    for h in hooks:
        h.remove()
    ran = []
    leaf_hooks = [m.register_forward_hook(lambda m, i, o, n=n: ran.append(n))
                  for n, m in toy_standard.net.named_modules() if not list(m.children())]
    with torch.no_grad():
        acts = toy_standard.activations(x, ["V1", "V4"])
    for h in leaf_hooks:
        h.remove()
    torch.testing.assert_close(acts["V1"], full["V1"])
    torch.testing.assert_close(acts["V4"], full["V4"])
    assert ran and not any(n.startswith(("IT", "decoder")) for n in ran)  # nothing past V4 was computed
    assert "V4.output" in ran


def test_activations_carry_gradients_to_pixels(toy_standard):
    x = synth.render(2, "test").tensor().requires_grad_(True)
    toy_standard.activations(x, "IT")["IT"][:, 12].mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in toy_standard.parameters())  # weights stay frozen


def test_untraceable_module_falls_back_to_hooks_that_stop_early():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4, 2)
            self.calls = 0

        def forward(self, x):
            y = self.a(x)
            if y.mean() > 1e9:  # data-dependent control flow defeats FX tracing
                y = -y
            self.calls += 1
            y = self.b(y)
            return self.head(y.mean((2, 3)))

    net = Branchy()
    model = synth.load_model(net, device="cpu", areas={"V1": "a", "IT": "b"})
    assert model.layers == ["input", "a", "b", "head", "logits"]
    x = torch.rand(2, 3, 16, 16)
    out = model.activations(x, "V1")["V1"]
    torch.testing.assert_close(out, net.a(x))
    assert model.classes == ["0", "1"]
    with pytest.raises(UnknownNameError, match="'b'"):
        model.activations(x, "bb")


def test_unknown_names_suggest_close_matches(toy_standard):
    with pytest.raises(UnknownNameError, match="toy-standard"):
        synth.load_model("toy-standrd")
    with pytest.raises(UnknownNameError, match="resnet50"):
        synth.load_model("resnet05")
    with pytest.raises(UnknownNameError, match="'IT"):
        toy_standard.layer("IT.outptu")
    with pytest.raises(UnknownNameError, match="V4"):
        toy_standard.activations(torch.rand(1, 3, 64, 64), "V3")
    with pytest.raises(UnknownNameError, match="IMAGENET1K_V1"):
        synth.load_model("resnet18", weights="IMAGENET1K")


def test_bad_images_are_refused_with_reasons():
    with pytest.raises(ImageError, match="N×3×H×W"):
        check_images(torch.rand(3, 64, 64))
    with pytest.raises(ImageError, match="empty"):
        check_images(torch.rand(0, 3, 64, 64))
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        check_images(torch.rand(1, 3, 8, 8) * 255)
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        check_images(torch.full((1, 3, 8, 8), float("nan")))


def test_offline_torchvision_weights_name_explains_how_to_pass_a_file():
    with pytest.raises(CheckpointError, match="--weights PATH"):
        synth.load_model("resnet18", weights="IMAGENET1K_V1")


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(1)
    net = torchvision.models.resnet18(num_classes=1000).eval()
    x = torch.rand(2, 3, 64, 64)
    return net, x


def test_torchvision_checkpoint_round_trips(resnet18, tmp_path):
    net, x = resnet18
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    model = synth.load_model("resnet18", weights=path, device="cpu")
    mean, std = (torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
                 torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    with torch.no_grad():
        torch.testing.assert_close(model(x), net((x - mean) / std))
    assert model.info["family"] == "torchvision" and len(model.classes) == 1000
    # a bare path: the architecture is recognised from parameter names and shapes
    assert synth.load_model(str(path), device="cpu").name == "resnet18"


def test_madry_checkpoint_round_trips_with_its_own_normalizer(resnet18, tmp_path):
    net, x = resnet18
    mean, std = torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])
    sd = {}
    for k, v in net.state_dict().items():
        sd[f"module.model.{k}"] = v
        sd[f"module.attacker.model.{k}"] = v
    for p in ("module.normalizer.", "module.attacker.normalize."):
        sd[p + "new_mean"], sd[p + "new_std"] = mean.view(3, 1, 1), std.view(3, 1, 1)
    path = tmp_path / "imagenet_linf_4.pt"
    torch.save({"model": sd, "epoch": 90}, path)
    model = synth.load_model("resnet18", weights=path, device="cpu")
    with torch.no_grad():
        torch.testing.assert_close(model(x), net((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)))
    assert model.info["family"] == "madry" and model.areas == MADRY_AREAS


def test_cornet_checkpoint_in_its_published_format_loads_by_path(tmp_path):
    from synth.zoo.cornet import cornet_z
    torch.manual_seed(2)
    net = cornet_z().eval()
    path = tmp_path / "cornet_z.pth"
    torch.save({"epoch": 1, "arch": "CORnet_Z", "state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
               path)
    model = synth.load_model(str(path), device="cpu")
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.activations(x, "IT")["IT"], net[:4](model.preprocess(x)))
    assert model.name == "cornet_z" and model.areas["IT"] == "IT.output"


def test_cornet_s_exposes_each_time_step():
    model = synth.load_model("cornet_s", device="cpu")
    assert {"V4.output", "V4.output_3", "IT.output", "IT.output_1"} <= set(model.layers)
    with torch.no_grad():
        a = model.activations(torch.rand(1, 3, 96, 96), ["IT.output", "IT.output_1", "IT"])
    torch.testing.assert_close(a["IT"], a["IT.output_1"])
    assert not torch.equal(a["IT.output"], a["IT.output_1"])


@pytest.mark.slow
def test_architectures_that_could_not_be_compared_are_named_when_none_matches(resnet18, tmp_path, monkeypatch):
    import warnings

    from synth.zoo import models

    def broken():
        raise RuntimeError("computes on real tensors")

    monkeypatch.setitem(models.CORNETS, "cornet_broken", broken)
    odd = tmp_path / "odd.pth"
    torch.save({"odd.weight": torch.zeros(3, 3)}, odd)
    with pytest.warns(UserWarning, match=r"cornet_broken \(RuntimeError: computes on real tensors\)"), \
            pytest.raises(CheckpointError, match="cannot tell"):
        synth.load_model(str(odd), device="cpu")
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18[0].state_dict(), path)
    with warnings.catch_warnings():  # an architecture matched: the ones not built are no news
        warnings.filterwarnings("error", message="no architecture matched")
        assert synth.load_model(str(path), device="cpu").name == "resnet18"


def test_checkpoint_mismatch_names_the_tensors(resnet18, tmp_path):
    net, _ = resnet18
    sd = dict(net.state_dict())
    sd["fc.weight"] = torch.zeros(10, 512)
    sd.pop("layer4.1.bn2.bias")
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"fc.weight: checkpoint \(10, 512\) vs model \(1000, 512\)") as e:
        synth.load_model("resnet18", weights=path)
    assert "layer4.1.bn2.bias" in str(e.value)


def test_unsafe_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "hook": fractions.Fraction(1, 3)}, path)  # any non-tensor global
    with pytest.raises(CheckpointError, match="weights_only"):
        synth.load_model("resnet18", weights=path)


def test_device_is_chosen_not_hard_coded(monkeypatch):
    """load_model goes where default_device() says, which prefers CUDA when there is one; and no source file
    hard-codes a device."""
    from pathlib import Path
    assert synth.load_model("toy-standard").device.type == synth.default_device().type
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert synth.default_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert synth.default_device().type == "cpu"
    root = Path(__file__).resolve().parents[1]
    offenders = [f"{p.relative_to(root)}:{k + 1}" for folder in ("synth", "attacks", "metamers", "explorer")
                 for p in sorted((root / folder).rglob("*.py")) for k, line in enumerate(p.read_text().splitlines())
                 if ".cuda()" in line or 'device="cuda"' in line or "device='cuda'" in line]
    assert not offenders, offenders


def test_every_layer_at_once_matches_hooks_even_where_a_container_and_its_last_module_are_one_node(toy_standard):
    """'decoder' and 'decoder.output' (or 'IT' and 'IT.output') are one node of the traced graph: asked together,
    both come back, equal to what forward hooks on the modules see."""
    layers = [layer for layer in toy_standard.layers if layer != "input"]
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        traced = toy_standard.activations(x, layers)
        hooked = toy_standard._hooked(toy_standard.preprocess(x), tuple(layers[:-1]), stop=False)
    assert set(traced) == set(layers)
    for layer in layers:
        assert torch.allclose(traced[layer], hooked[layer]), layer
