"""XDream's image generator: DeePSiM "fc6" (Dosovitskiy & Brox 2016), read from a user's PyTorch weights file.

The generator maps a 4096-d code (a CaffeNet fc6 feature vector) to a 256×256 image.  Its PyTorch ports name
their tensors differently (``defc7.weight``, ``G.defc7.weight``, ``fc7.weight``, ``0.weight`` …), so a file is
recognized by the SHAPES of its tensors, in order, never by their names.  No weights ship with phosphene.

Where each fact comes from:

* Layers, kernels, strides, paddings, LeakyReLU slope 0.3, the reshape of defc5 to 256×4×4, and no activation
  after deconv0: the original Caffe definition, willwx/XDream ``prototxt/unmodified/fc6/generator.prototxt``
  (every Deconvolution has pad 1; kernel 4 stride 2 for deconv5/4/3/2/1/0, kernel 3 stride 1 for
  conv5_1/conv4_1/conv3_1, which are Deconvolution layers too), matched by the ports
  willwx/XDream ``xdream/torch_nets/deepsim.py`` (class ``DeePSiMFc``) and Animadversio/Visual_Neuro_InSilico_Exp
  ``GAN_utils.py`` (class ``upconvGAN``, ``name="fc6"``).  Names here are Caffe's (defc7 … deconv0).
* Deconvolution biases: Caffe holds one per layer but trains none of them (``lr_mult: 0``); willwx/XDream
  ``Convert DeePSiM to PyTorch/fc6.ipynb`` prints them as all zero and so its port (and zoccolan-lab/P-XDream
  ``pxdream/generator.py``) drops them (``bias=False``: 15 tensors), while ``upconvGAN`` keeps them (24 tensors).
  Both layouts load; a file without them gets zero biases, which is what Caffe computes.
* Output: Caffe's image is BGR with the ImageNet mean subtracted, on a 0..255 scale.  XDream undoes that with
  Caffe's transformer (willwx/XDream ``xdream/net_utils/net_loader.py`` ``get_transformer``: mean (104, 117, 123)
  BGR, raw scale 255, channel swap (2, 1, 0), "pytorch version of deepsim still uses caffe preprocessing";
  ``xdream/net_utils/transformer.py`` ``deprocess``; ``xdream/Generators.py`` then clips to [0, 1]).  The same in
  RGB, as ``upconvGAN.visualize`` does it: ``out[:, [2, 1, 0]] + (123, 117, 104)``, clamp, divide by 255.
* Initial codes: XDream's genetic optimizer starts from white noise, ``normal(loc=0, scale=1)`` per element with
  genealogy ``'standard_normal'`` (willwx/XDream ``xdream/Optimizers.py``, class ``Genetic``), not rectified;
  the port's check against Caffe uses the same N(0, 1) code (``fc6.ipynb``).  Hence ``code_sd = 1.0``.

The fc7 generator has the very same shapes (``upconvGAN`` builds both with one branch), so a DeePSiM fc7 file
cannot be told apart and loads as fc6; fc8 (1000-d codes) and pool5 are refused.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synth.errors import CheckpointError, ConfigError
from synth.zoo import checkpoints

SLOPE = 0.3  # negative slope of every LeakyReLU (Caffe 'ReLU' with negative_slope: 0.3)
RGB_MEAN = (123.0, 117.0, 104.0)  # ImageNet mean in RGB, 0..255 (Caffe's BGR (104, 117, 123) reversed)
_FCS = ("defc7", "defc6", "defc5")
# Caffe's Deconvolution layers in order: name, input channels, output channels, kernel, stride (pad is always 1).
_DECONVS = (("deconv5", 256, 256, 4, 2), ("conv5_1", 256, 512, 3, 1), ("deconv4", 512, 256, 4, 2),
            ("conv4_1", 256, 256, 3, 1), ("deconv3", 256, 128, 4, 2), ("conv3_1", 128, 128, 3, 1),
            ("deconv2", 128, 64, 4, 2), ("deconv1", 64, 32, 4, 2), ("deconv0", 32, 3, 4, 2))
# Where a generator's state dict hides inside a checkpoint, and the wrapper prefixes of its keys.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "G", "generator", "netG", "net")
_PREFIXES = ("module.", "G.", "generator.", "netG.", "model.", "net.")


class DeePSiMFc6(nn.Module):
    """DeePSiM fc6 generator: N×4096 codes to N×3×256×256 RGB images in [0, 1]."""

    latent_dim = 4096
    output_size = 256
    name = "deepsim-fc6"
    # XDream draws its initial population from N(0, 1) per element (willwx/XDream xdream/Optimizers.py, Genetic).
    code_sd = 1.0

    def __init__(self) -> None:
        super().__init__()
        for fc in _FCS:
            setattr(self, fc, nn.Linear(4096, 4096))
        for name, c_in, c_out, k, s in _DECONVS:
            setattr(self, name, nn.ConvTranspose2d(c_in, c_out, k, stride=s, padding=1))
            nn.init.zeros_(getattr(self, name).bias)  # Caffe's deconv biases are constant zero (lr_mult 0)

    def raw(self, code: Tensor) -> Tensor:
        """Caffe's output for N×4096 codes: BGR, ImageNet mean subtracted, about 0..255 (N×3×256×256)."""
        x = code
        for fc in _FCS:
            x = F.leaky_relu(getattr(self, fc)(x), SLOPE)
        x = x.view(-1, 256, 4, 4)
        for name, *_ in _DECONVS:
            x = getattr(self, name)(x)
            if name != "deconv0":
                x = F.leaky_relu(x, SLOPE)
        return x

    def forward(self, code: Tensor) -> Tensor:
        """RGB images in [0, 1] (N×3×256×256) for N×4096 codes, as XDream shows them."""
        if not isinstance(code, Tensor) or code.dim() != 2 or code.shape[1] != self.latent_dim:
            got = tuple(code.shape) if isinstance(code, Tensor) else type(code).__name__
            raise ConfigError(f"DeePSiM fc6 codes must be an N×{self.latent_dim} tensor, got {got}")
        bgr = self.raw(code.to(self.defc7.weight))
        mean = torch.tensor(RGB_MEAN, dtype=bgr.dtype, device=bgr.device).view(1, 3, 1, 1)
        return ((bgr[:, [2, 1, 0]] + mean) / 255.0).clamp(0.0, 1.0)


def _layout(deconv_biases: bool) -> list[tuple[str, tuple[int, ...]]]:
    """Parameter names and shapes of DeePSiM fc6 in order, with or without the (all-zero) deconv biases."""
    layout = []
    for fc in _FCS:
        layout += [(f"{fc}.weight", (4096, 4096)), (f"{fc}.bias", (4096,))]
    for name, c_in, c_out, k, _ in _DECONVS:
        layout.append((f"{name}.weight", (c_in, c_out, k, k)))  # ConvTranspose2d and Caffe: in, out, kH, kW
        if deconv_biases:
            layout.append((f"{name}.bias", (c_out,)))
    return layout


def _tensors(obj: Mapping) -> dict[str, Tensor]:
    """The tensors of a checkpoint, unwrapped from containers such as 'state_dict' or 'G' and prefixes such as 'G.'."""
    for _ in range(4):  # e.g. {'state_dict': {'G': {...}}}
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    stripped = True
    while tensors and stripped:  # e.g. 'module.G.defc7.weight'
        stripped = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix):]: v for k, v in tensors.items()}
                stripped = True
    return tensors


def _match(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Our parameter name for each tensor, matched by shape in order; CheckpointError naming the first misfit."""
    items = list(tensors.items())
    # The 8th tensor tells the layouts apart: deconv5's bias (256,) in upconvGAN's, conv5_1's weight in XDream's.
    layout = _layout(deconv_biases=len(items) > 7 and tuple(items[7][1].shape) == (256,))
    for i, (want, shape) in enumerate(layout):
        if i >= len(items):
            raise CheckpointError(f"it ends after {len(items)} tensors, where DeePSiM fc6 has {want} {shape} next")
        key, t = items[i]
        if tuple(t.shape) != shape:
            hint = " (a 1000-d code: DeePSiM fc8, not fc6)" if i == 0 and tuple(t.shape) == (4096, 1000) else ""
            raise CheckpointError(f"tensor {i} {key!r} has shape {tuple(t.shape)} where DeePSiM fc6 has "
                                  f"{want} {shape}{hint}")
        if not t.is_floating_point():
            raise CheckpointError(f"tensor {i} {key!r} ({want}) holds {t.dtype}, not floating-point weights")
    if len(items) > len(layout):
        key, t = items[len(layout)]
        raise CheckpointError(f"it has {len(items)} tensors where DeePSiM fc6 has {len(layout)}; "
                              f"the first extra one is {key!r} {tuple(t.shape)}")
    matched = {want: t for (want, _), (_, t) in zip(layout, items)}
    for name, _, c_out, _, _ in _DECONVS:  # XDream's layout: Caffe's deconv biases, which are all zero
        matched.setdefault(f"{name}.bias", torch.zeros(c_out))
    return matched


def is_deepsim(tensors: Mapping[str, Tensor]) -> bool:
    """Whether a state dict holds exactly DeePSiM fc6's parameter shapes, in order (either port's layout)."""
    try:
        _match(_tensors(tensors))
    except CheckpointError:
        return False
    return True


def load_deepsim(path: str | os.PathLike) -> DeePSiMFc6:
    """The DeePSiM fc6 generator from a local PyTorch weights file (read with weights_only=True), in eval mode."""
    tensors = _tensors(checkpoints.read(path))  # torch.load(path, map_location="cpu", weights_only=True)
    try:
        matched = _match(tensors)
    except CheckpointError as e:
        raise CheckpointError(f"{path} is not a DeePSiM fc6 generator: {e}") from None
    with torch.device("meta"):  # no second copy of the ~60M weights: the file's tensors become the parameters
        net = DeePSiMFc6()
    net.load_state_dict({k: v.float().contiguous() for k, v in matched.items()}, strict=True, assign=True)
    return net.eval().requires_grad_(False)
