"""VOneNet's V1 front-end (Dapello, Marques et al. 2020) and the networks built on it.

The VOneBlock is a fixed linear-nonlinear-Poisson model of V1: a Gabor filter bank whose orientation, spatial
frequency and envelope sizes are drawn from primate V1 recordings (De Valois 1982, Ringach 2002, Schiller 1976),
simple cells (half-wave rectified) and complex cells (quadrature-pair energy), and Poisson-like noise whose
variance equals the mean rate.  Nothing in it is trained.  The noise stays on at test time, as in VOneNet, so a
model with this block is stochastic and attacks on it need expectation over transformation (``eot``).

Parameter names follow dicarlolab/vonenet, so its published checkpoints (``voneresnet50_e70.pth.tar`` …) load
unchanged; ``toy-vone`` puts the block in front of the embedded back-end.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from synth.errors import CheckpointError, ConfigError
from synth.rng import noise_like
from synth.zoo.cornet import CORblockS, _decoder
from synth.zoo.ventral import Area, Identity, init_weights

torch.fx.wrap("noise_like")  # a leaf of traced graphs: it reads the run's generator when it runs, not when traced

# VOneNet's defaults (vonenet/vonenet.py): neuronal noise, its scale and level, and the excitation gain.
NOISE_SCALE, NOISE_LEVEL, K_EXC = 0.35, 0.07, 25.0
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # VOneNet's input normalization

# Empirical V1 distributions the Gabor parameters are drawn from.
_ORI_BINS, _ORI_HIST = np.array([-22.5, 22.5, 67.5, 112.5, 157.5]), np.array([66, 49, 77, 54])  # De Valois 1982a
_N_BINS = np.logspace(-1, 0.2, 6)  # Ringach 2002b: envelope size in cycles (nx along, ny across the grating)
_N_JOINT = np.array([[2, 0, 1, 0, 0], [8, 9, 4, 1, 0], [1, 2, 19, 17, 3], [0, 0, 1, 7, 4], [0, 0, 0, 0, 0]], float)
_SF_BINS = np.array([0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0, 5.6, 8.0])  # De Valois 1982b, cycles per degree
_SF_HIST = np.array([4, 4, 8, 25, 32, 26, 28, 12], float)


def gabor_parameters(n: int, seed: int = 0, sf_corr: float = 0.75, sf_max: float = 9.0,
                     sf_min: float = 0.0) -> dict[str, np.ndarray]:
    """Draw ``n`` Gabor filters from the V1 distributions: orientation and phase (degrees), spatial frequency
    (cycles/degree) and envelope sizes nx, ny (cycles), with nx and frequency correlated by ``sf_corr``."""
    from scipy import stats

    rng = np.random.RandomState(seed)
    phase = rng.rand(n) * 360
    ori = np.interp(rng.rand(n), np.r_[0, np.cumsum(_ORI_HIST / _ORI_HIST.sum())], _ORI_BINS)
    ori[ori < 0] += 180
    keep = (_SF_BINS <= sf_max) & (_SF_BINS >= sf_min)
    lo, hi = np.flatnonzero(keep)[[0, -1]]
    sf_bins, sf_hist = _SF_BINS[lo:hi + 1], _SF_HIST[lo:hi]
    cdf = stats.norm.cdf(rng.multivariate_normal([0, 0], [[1, sf_corr], [sf_corr, 1]], n))
    joint = _N_JOINT / _N_JOINT.sum()
    nx = 10 ** np.interp(cdf[:, 0], np.r_[0, np.cumsum(joint.sum(1))], np.log10(_N_BINS))
    u = rng.rand(n)
    ny = np.empty(n)
    for i, x in enumerate(nx):  # ny from its distribution conditional on nx's bin
        row = joint[np.flatnonzero(_N_BINS < x)[-1]]
        ny[i] = 10 ** np.interp(u[i], np.r_[0, np.cumsum(row / row.sum())], np.log10(_N_BINS))
    sf = 2 ** np.interp(cdf[:, 1], np.r_[0, np.cumsum(sf_hist / sf_hist.sum())], np.log2(sf_bins))
    return {"sf": sf, "theta": ori, "phase": phase, "nx": nx, "ny": ny}


def gabor_kernels(frequency: np.ndarray, sigma_x: np.ndarray, sigma_y: np.ndarray, theta: np.ndarray,
                  phase: np.ndarray, size: int, zero_mean: bool = False) -> torch.Tensor:
    """(n, size, size) Gabor kernels: frequency in cycles/pixel, envelope σ in pixels, angles in radians;
    unit-volume Gaussian envelope times a cosine carrier, as in VOneNet.  ``zero_mean`` subtracts the envelope
    times the constant that makes each truncated kernel sum to zero (Morlet's admissibility correction), so a cell
    answers contrast and not mean luminance; VOneNet's kernels keep their DC term (up to 98 % of a low-frequency
    kernel's L1 norm at the embedded scale)."""
    f, sx, sy, th, ph = (torch.as_tensor(np.asarray(v), dtype=torch.float64)[:, None, None]
                         for v in (frequency, sigma_x, sigma_y, theta, phase))
    grid = torch.arange(-(size // 2), size // 2 + 1, dtype=torch.float64)
    x, y = torch.meshgrid(grid, grid, indexing="ij")
    rx = x * torch.cos(th) + y * torch.sin(th)
    ry = -x * torch.sin(th) + y * torch.cos(th)
    g = torch.exp(-0.5 * (rx ** 2 / sx ** 2 + ry ** 2 / sy ** 2)) / (2 * math.pi * sx * sy)
    carrier = torch.cos(2 * math.pi * f * rx + ph)
    if zero_mean:
        carrier = carrier - (g * carrier).sum((1, 2), keepdim=True) / g.sum((1, 2), keepdim=True)
    return (g * carrier).float()


class GaborBank(nn.Module):
    """A fixed convolution whose filters each read one colour channel (VOneNet's GFB); the weight is a buffer.

    When every filter reads a single channel (always, for VOneNet's banks) the bank runs as three one-channel
    convolutions, a third of the work of the dense one; the result is the same.
    """

    def __init__(self, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.stride, self.padding = stride, kernel_size // 2
        self.register_buffer("weight", torch.zeros(out_channels, 3, kernel_size, kernel_size))
        self._plan_key: tuple | None = None
        self._plan: tuple[list[torch.Tensor], torch.Tensor] | None = None

    def _colour_plan(self) -> tuple[list[torch.Tensor], torch.Tensor] | None:
        """Filters grouped by the channel they read and the permutation back, or None for a dense bank."""
        key = (self.weight.data_ptr(), self.weight._version, self.weight.device)
        if key != self._plan_key:
            used = self.weight.detach().abs().sum((2, 3)) > 0
            self._plan = None
            if bool((used.sum(1) <= 1).all()):
                colour = used.float().argmax(1)
                groups = [torch.nonzero(colour == c).flatten() for c in range(3)]
                self._plan = groups, torch.argsort(torch.cat(groups))
            self._plan_key = key
        return self._plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self._colour_plan()
        if plan is None:
            return F.conv2d(x, self.weight, None, self.stride, self.padding)
        groups, inverse = plan
        parts = [F.conv2d(x[:, c:c + 1], self.weight[g, c:c + 1], None, self.stride, self.padding)
                 for c, g in enumerate(groups) if len(g)]
        return torch.cat(parts, 1)[:, inverse]


_COPIES: contextvars.ContextVar[tuple[nn.Module, int] | None] = contextvars.ContextVar("phosphene_draws",
                                                                                       default=None)


@contextlib.contextmanager
def draw_copies(site: nn.Module, copies: int) -> Iterator[None]:
    """Inside the block (in this thread alone), ``site`` — a ``Draws`` module — passes its input on ``copies``
    times."""
    token = _COPIES.set((site, copies))
    try:
        yield
    finally:
        _COPIES.reset(token)


class Draws(nn.Module):
    """Where a network's noise begins: inside ``draw_copies(self, k)`` it passes its input on ``k`` times, stacked
    along the batch, so that ``ProbeModel.activations(..., draws=k)`` runs everything before it once for ``k``
    noise draws.  The count is a context variable, so a run in one thread never changes another's batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        setting = _COPIES.get()
        copies = setting[1] if setting is not None and setting[0] is self else 1
        return x.repeat(copies, *([1] * (x.dim() - 1))) if copies > 1 else x


class VOneBlock(nn.Module):
    """Gabor filter bank → simple / complex cells → Poisson-like noise; ``simple_channels + complex_channels``
    maps at 1/``stride`` resolution.  ``noise_mode`` is 'neuronal' (variance = rate), 'gaussian' or None;
    ``zero_mean`` removes the kernels' DC term (see ``gabor_kernels``; off in VOneNet, on in ``toy-vone``)."""

    def __init__(self, simple_channels: int = 256, complex_channels: int = 256, kernel_size: int = 25,
                 stride: int = 4, image_size: int = 224, visual_degrees: float = 8.0, sf_max: float = 9.0,
                 sf_corr: float = 0.75, seed: int = 0, k_exc: float = K_EXC, noise_mode: str | None = "neuronal",
                 noise_scale: float = NOISE_SCALE, noise_level: float = NOISE_LEVEL, zero_mean: bool = False):
        super().__init__()
        if noise_mode not in ("neuronal", "gaussian", None):
            raise ConfigError(f"noise_mode must be 'neuronal', 'gaussian' or None, got {noise_mode!r}")
        self.simple_channels, self.complex_channels = simple_channels, complex_channels
        self.k_exc, self.noise_mode, self.noise_scale, self.noise_level = k_exc, noise_mode, noise_scale, noise_level
        self.zero_mean = zero_mean
        n = simple_channels + complex_channels
        self.simple_conv_q0 = GaborBank(n, kernel_size, stride)
        self.simple_conv_q1 = GaborBank(n, kernel_size, stride)
        p = gabor_parameters(n, seed, sf_corr=sf_corr, sf_max=sf_max)
        sf = p["sf"] / (image_size / visual_degrees)  # cycles per pixel
        args = (sf, p["nx"] / sf, p["ny"] / sf, np.deg2rad(p["theta"]))
        colour = torch.from_numpy(np.random.RandomState(seed + 1).randint(0, 3, n))
        idx = torch.arange(n)
        self.simple_conv_q0.weight[idx, colour] = gabor_kernels(*args, np.deg2rad(p["phase"]), kernel_size,
                                                                zero_mean)
        self.simple_conv_q1.weight[idx, colour] = gabor_kernels(*args, np.deg2rad(p["phase"]) + math.pi / 2,
                                                                kernel_size, zero_mean)
        self.simple = nn.ReLU()
        self.complex = Identity()
        self.gabors = Identity()
        self.draws = Draws()
        self.noise = nn.ReLU()
        self.output = Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q0, q1 = self.simple_conv_q0(x), self.simple_conv_q1(x)
        s = self.simple(q0[:, :self.simple_channels])
        c0, c1 = q0[:, self.simple_channels:], q1[:, self.simple_channels:]
        # Quadrature energy; the tiny floor keeps the gradient finite where both phases are exactly zero.
        c = self.complex(torch.sqrt(c0 ** 2 + c1 ** 2 + 1e-12) / math.sqrt(2))
        x = self.draws(self.gabors(self.k_exc * torch.cat((s, c), 1)))
        if self.noise_mode == "neuronal":  # rates in spikes per 25 ms bin: variance equals the mean
            rate = x * self.noise_scale + self.noise_level
            rate = rate + noise_like(rate) * torch.sqrt(F.relu(rate) + 1e-4)
            x = (rate - self.noise_level) / self.noise_scale
        elif self.noise_mode == "gaussian":
            x = x + noise_like(x) * self.noise_scale
        return self.output(self.noise(x))

    def extra_repr(self) -> str:
        return (f"simple={self.simple_channels}, complex={self.complex_channels}, k_exc={self.k_exc}, "
                f"noise={self.noise_mode}(scale={self.noise_scale}, level={self.noise_level}), "
                f"zero_mean={self.zero_mean}")


# The embedded V1 front-end: VOneNet's angular kernel extent (25 px at 28 px/deg) at the embedded world's 64 px
# spanning 4 degrees (16 px/deg), frequencies up to 5.6 cycles/deg (0.35 cycles/px, below Nyquist), stride 2
# so that V2 sees the same 32x32 grid as in VentralNet, and zero-mean kernels (a departure from VOneNet): with
# VOneNet's DC terms the embedded model fell 16 points under toy-standard on the weather corruptions, which
# brighten the image, and under it on the corruption mean; without them it is above (55.5 vs 53.3 %).
TOY_VONE = {"simple_channels": 32, "complex_channels": 32, "kernel_size": 15, "stride": 2, "image_size": 64,
            "visual_degrees": 4.0, "sf_max": 5.6, "seed": 0, "zero_mean": True}


class VOneVentralNet(nn.Sequential):
    """A VOneBlock as V1, a 1×1 bottleneck, and VentralNet's V2 → V4 → IT → decoder back-end."""

    def __init__(self, n_classes: int = 8, widths: tuple[int, ...] = (32, 64, 128, 256),
                 vone: Mapping | None = None):
        cfg = {**TOY_VONE, **(vone or {})}
        block = VOneBlock(**cfg)
        w1, w2, w4, wit = widths
        super().__init__(OrderedDict([
            ("V1", block),
            ("bottleneck", nn.Conv2d(block.simple_channels + block.complex_channels, w1, 1, bias=False)),
            ("V2", Area(w1, w2)),
            ("V4", Area(w2, w4)),
            ("IT", Area(w4, wit)),
            ("decoder", _decoder(wit, n_classes)),
        ]))
        init_weights(self)


# ------------------------------------------------------------------------------------------ published VOneNets
class _AlexNetBackEnd(nn.Module):
    """VOneAlexNet's back-end: AlexNet's layers after its first convolution, reading the 64-channel bottleneck
    (the first kept convolution strides by 2, and the pooled grid is 7×7, as in dicarlolab/vonenet)."""

    def __init__(self, n_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(64, 192, kernel_size=5, stride=2, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Dropout(), nn.Linear(256 * 7 * 7, 4096), nn.ReLU(inplace=True),
            nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Linear(4096, n_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class _ResNetBackEnd(nn.Module):
    """VOneResNet50's back-end: torchvision ResNet-50 from ``layer1`` on."""

    def __init__(self, n_classes: int = 1000):
        super().__init__()
        r = torchvision.models.resnet50(weights=None, num_classes=n_classes)
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        self.avgpool, self.fc = r.avgpool, r.fc

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _cornets_back_end(n_classes: int = 1000) -> nn.Sequential:
    """VOneCORnet-S's back-end: CORnet-S's recurrent V2, V4 and IT and its decoder."""
    return nn.Sequential(OrderedDict([("V2", CORblockS(64, 128, times=2)), ("V4", CORblockS(128, 256, times=4)),
                                      ("IT", CORblockS(256, 512, times=2)), ("decoder", _decoder(512, n_classes))]))


BACK_ENDS = {"resnet50": _ResNetBackEnd, "alexnet": _AlexNetBackEnd, "cornets": _cornets_back_end}
# V1 is the VOneBlock's output, as VOneNet maps it; the CORnet-S back-end names its own areas.
VONENET_AREAS = {
    "resnet50": {"V1": "vone_block.output", "behavior": "model.avgpool"},
    "alexnet": {"V1": "vone_block.output", "behavior": "model.classifier.5"},
    "cornets": {"V1": "vone_block.output", "V2": "model.V2", "V4": "model.V4", "IT": "model.IT",
                "behavior": "model.decoder.avgpool"},
}


def vonenet(arch: str = "resnet50", flags: Mapping | None = None) -> tuple[nn.Sequential, str]:
    """A VOneNet with the published layout (vone_block, bottleneck, model) for a checkpoint's ``flags``, and
    the back-end's name."""
    key = arch.lower().replace("_", "").replace("-", "")
    key = {"resnet50at": "resnet50", "resnet50ns": "resnet50", "voneresnet50": "resnet50",
           "vonealexnet": "alexnet", "vonecornets": "cornets"}.get(key, key)
    if key not in BACK_ENDS:
        raise CheckpointError(f"unknown VOneNet back-end {arch!r}; known: {', '.join(BACK_ENDS)}")
    f = dict(flags or {})
    block = VOneBlock(simple_channels=int(f.get("simple_channels", 256)),
                      complex_channels=int(f.get("complex_channels", 256)), kernel_size=int(f.get("ksize", 25)),
                      stride=int(f.get("stride", 4)), k_exc=float(f.get("k_exc", K_EXC)),
                      noise_mode=f.get("noise_mode", "neuronal"),
                      noise_scale=float(f.get("noise_scale", NOISE_SCALE)),
                      noise_level=float(f.get("noise_level", NOISE_LEVEL)))
    bottleneck = nn.Conv2d(block.simple_channels + block.complex_channels, 64, kernel_size=1, bias=False)
    return nn.Sequential(OrderedDict([("vone_block", block), ("bottleneck", bottleneck),
                                      ("model", BACK_ENDS[key]())])), key


def vonenet_tensors(raw: Mapping) -> dict[str, torch.Tensor]:
    """The tensors of a dicarlolab/vonenet checkpoint, without DataParallel's prefix and the unused divisive
    normalization weights of the adversarially trained ResNet-50."""
    sd = raw.get("state_dict", raw)
    tensors = {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    return {k: v for k, v in tensors.items() if not k.startswith(("vone_block.div_u", "vone_block.div_t"))}


def is_vonenet(raw: Mapping) -> bool:
    """Whether a checkpoint holds a VOneNet (its tensors start with a VOneBlock's Gabor bank)."""
    sd = raw.get("state_dict", raw)
    return isinstance(sd, Mapping) and any(str(k).removeprefix("module.").startswith("vone_block.simple_conv_q0")
                                           for k in sd)
