"""DeePSiM fc6: a user's weights file is recognized by its tensor shapes, reloads exactly, and is read safely."""
from collections import OrderedDict

import pytest
import torch

import synth
from synth.errors import CheckpointError, ConfigError
from synth.zoo.deepsim import DeePSiMFc6, is_deepsim, load_deepsim

# XDream's port (willwx/XDream xdream/torch_nets/deepsim.py) names: no deconv biases.
XDREAM_NAMES = ["fc7", "fc6", "fc5", "tconv5_0", "tconv5_1", "tconv4_0", "tconv4_1", "tconv3_0", "tconv3_1",
                "tconv2", "tconv1", "tconv0"]


def _cheap(shape) -> torch.Tensor:
    """A tensor of the given shape on one element of storage (torch.save keeps it that small)."""
    return torch.zeros(()).expand(*shape)


def _xdream_layout(sd) -> "OrderedDict[str, torch.Tensor]":
    """Our state dict in XDream's layout: its names, fc biases kept, (all-zero) deconv biases dropped."""
    ours = [k.split(".")[0] for k in sd if k.endswith(".weight")]
    rename = dict(zip(ours, XDREAM_NAMES))
    return OrderedDict((f"{rename[k.split('.')[0]]}.{k.split('.')[1]}", v) for k, v in sd.items()
                       if not (k.endswith(".bias") and "conv" in k))


@pytest.fixture(scope="module")
def gen() -> DeePSiMFc6:
    torch.manual_seed(0)
    net = DeePSiMFc6().eval()
    with torch.no_grad():
        for m in net.modules():  # non-zero deconv biases, so that reloading them is tested too
            if isinstance(m, torch.nn.ConvTranspose2d):
                m.bias.normal_(0, 1.0)
    return net


@pytest.fixture(scope="module")
def code() -> torch.Tensor:
    return torch.randn(2, 4096, generator=torch.Generator().manual_seed(1)) * DeePSiMFc6.code_sd


@pytest.fixture(scope="module")
def reference(gen, code) -> torch.Tensor:
    with torch.no_grad():
        return gen(code)


@pytest.fixture(scope="module")
def files(gen, tmp_path_factory):
    folder = tmp_path_factory.mktemp("deepsim")
    sd = gen.state_dict()
    paths = {"upconv": folder / "upconvGAN_fc6.pt", "xdream": folder / "fc6.pt"}
    # Animadversio's upconvGAN: module G holds the layers, so keys read 'G.defc7.weight'; nested as many files are.
    torch.save({"state_dict": OrderedDict(("G." + k, v) for k, v in sd.items()), "epoch": 3}, paths["upconv"])
    torch.save(_xdream_layout(sd), paths["xdream"])
    return paths


def test_output_is_rgb_images_in_unit_range(gen, code, reference):
    assert reference.shape == (2, 3, 256, 256)
    assert reference.dtype == torch.float32
    assert 0.0 <= reference.min() and reference.max() <= 1.0
    with torch.no_grad():
        raw = gen.raw(code)  # Caffe's BGR, mean-subtracted 0..255 image, made RGB in [0, 1]
    expect = ((raw.flip(1) + torch.tensor([123.0, 117.0, 104.0]).view(1, 3, 1, 1)) / 255).clamp(0, 1)
    assert torch.allclose(reference, expect)
    assert (gen.latent_dim, gen.output_size, gen.name, gen.code_sd) == (4096, 256, "deepsim-fc6", 1.0)


def test_bad_code_shape_is_refused(gen):
    with pytest.raises(ConfigError, match="N×4096"):
        gen(torch.zeros(4096))


def test_upconvgan_file_reloads_exactly(files, code, reference):
    net = load_deepsim(files["upconv"])
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in net.parameters())
    with torch.no_grad():
        assert torch.equal(net(code), reference)


def test_xdream_file_reloads_with_zero_deconv_biases(gen, files, code, reference):
    net = load_deepsim(str(files["xdream"]))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert len(convs) == 9 and all(torch.count_nonzero(m.bias) == 0 for m in convs)
    with torch.no_grad():  # give it the fixture's biases: then every weight must have gone to its place
        for m, ref in zip(convs, [m for m in gen.modules() if isinstance(m, torch.nn.ConvTranspose2d)]):
            m.bias.copy_(ref.bias)
        assert torch.equal(net(code), reference)


def test_half_precision_file_loads_as_float32(gen, code, reference, tmp_path):
    torch.save({"G": {k: v.half() for k, v in gen.state_dict().items()}}, tmp_path / "fc6_half.pt")
    net = load_deepsim(tmp_path / "fc6_half.pt")
    assert {p.dtype for p in net.parameters()} == {torch.float32}
    with torch.no_grad():
        assert (net(code) - reference).abs().max() < 0.05  # fp16 rounding of the weights only


def test_is_deepsim_tells_layouts_by_shape(gen):
    sd = gen.state_dict()
    assert is_deepsim(sd) and is_deepsim(_xdream_layout(sd))
    unnamed = OrderedDict((str(i), v) for i, v in enumerate(sd.values()))  # names do not matter
    assert is_deepsim(unnamed) and is_deepsim({"G": unnamed}) and is_deepsim({"module." + k: v for k, v in sd.items()})
    truncated = OrderedDict(list(sd.items())[:-2])
    assert not is_deepsim(truncated)
    assert not is_deepsim(OrderedDict(reversed(list(sd.items()))))  # order matters: defc7..5 share a shape
    assert not is_deepsim({**sd, "extra.weight": torch.zeros(3)})
    assert not is_deepsim({"conv1.weight": _cheap((64, 3, 7, 7)), "fc.weight": _cheap((1000, 2048))})
    assert not is_deepsim({})
    fc8 = OrderedDict(sd)
    fc8["defc7.weight"] = _cheap((4096, 1000))
    assert not is_deepsim(fc8)


def _save_cheap(path, shapes) -> str:
    torch.save(OrderedDict((f"layer{i}.w", _cheap(s)) for i, s in enumerate(shapes)), path)
    return str(path)


def _shapes(gen) -> list[tuple[int, ...]]:
    return [tuple(v.shape) for v in _xdream_layout(gen.state_dict()).values()]


def test_wrong_file_is_refused_naming_the_tensor(gen, tmp_path):
    shapes = _shapes(gen)
    shapes[7] = (256, 256, 3, 3)  # conv5_1 with 256 outputs instead of 512
    with pytest.raises(CheckpointError, match=r"tensor 7 'layer7.w' has shape \(256, 256, 3, 3\) where "
                                              r"DeePSiM fc6 has conv5_1.weight \(256, 512, 3, 3\)") as e:
        load_deepsim(_save_cheap(tmp_path / "bad.pt", shapes))
    assert "\n" not in str(e.value) and "bad.pt is not a DeePSiM fc6 generator" in str(e.value)
    with pytest.raises(CheckpointError,
                       match=r"ends after 10 tensors, where DeePSiM fc6 has deconv3.weight \(256, 128, 4, 4\) next"):
        load_deepsim(_save_cheap(tmp_path / "short.pt", _shapes(gen)[:10]))
    with pytest.raises(CheckpointError, match=r"DeePSiM fc8, not fc6"):
        load_deepsim(_save_cheap(tmp_path / "fc8.pt", [(4096, 1000)] + _shapes(gen)[1:]))
    with pytest.raises(CheckpointError,
                       match=r"16 tensors where DeePSiM fc6 has 15; the first extra one is 'layer15\.w'"):
        load_deepsim(_save_cheap(tmp_path / "long.pt", _shapes(gen) + [(3,)]))
    with pytest.raises(CheckpointError, match="not found"):
        load_deepsim(tmp_path / "missing.pt")


class _Evil:
    """An object whose unpickling would create a file: what 'a checkpoint containing pickled code' does."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"defc7.weight": _cheap((4096, 4096))}, "hook": _Evil(str(marker))}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_deepsim(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is live: an unsafe load does run it
    assert marker.exists()


def test_deepsim_file_is_a_generator_parametrization_and_evolution_space(files, code, reference, tiny):
    from synth.engine.params import make
    from synth.zoo.generators import load_generator

    g = load_generator(files["upconv"], device="cpu")  # routed to DeePSiM by its shapes
    assert g.latent_dim == 4096 and g.info["weights"] == str(files["upconv"])
    p = make(f"generator:{files['upconv']}", 2, 64, code, torch.Generator())
    with torch.no_grad():
        image = p.image()
    # the 256-pixel output, shrunk with antialiasing to the model's 64 pixels
    expected = torch.nn.functional.interpolate(reference, (64, 64), mode="bilinear", antialias=True,
                                               align_corners=False).clamp(0, 1)
    assert image.shape == (2, 3, 64, 64) and torch.allclose(image, expected, atol=1e-5)
    assert str(p) == f"generator:{files['upconv']}" and p.recipe()["generator_sha256"] == g.info["sha256"]
    assert set(p.state_dict()) == {"code"}  # a run's checkpoint holds the codes, not 60 million weights
    r = synth.evolve(tiny, "IT:1", code=f"generator:{files['upconv']}", optimizer="cmaes", population=4,
                     generations=2, seed=0, progress=False)
    assert r.best_codes.shape == (4, 4096) and r.metadata["code"] == f"generator:{files['upconv']}"
