"""Image parametrizations: learnable tensors and a map from them to N×3×H×W images in [0, 1].

- ``Pixels``: the pixels themselves (what attacks use); kept in [0, 1] by a Box constraint.
- ``Fourier``: Lucid's spectrum parametrization, 1/f^decay scaled, with decorrelated colour and a sigmoid
  (Olah, Mordvintsev & Schubert 2017); ``max_freq`` keeps only low frequencies, a compact code for evolution.
- ``Blurred``: pixels whose gradient is Gaussian-blurred before each step, σ annealed over the run
  (the preconditioning of Walker et al. 2019, 'Inception loops').
- ``Generated`` ('generator:NAME'): the code is an image generator's latent vector and the image its output
  (XDream's search space, Ponce et al. 2019), a natural-image prior for gradient synthesis and evolution alike.
"""
from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from synth.errors import ConfigError, UnknownNameError
from synth.zoo.probe import SHARED, check_images

# Lucid's square root of the ImageNet colour correlation matrix, columns normalized to unit max norm.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOR = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()


class Parametrization(nn.Module, ABC):
    """Base: ``image()`` returns the current images; ``schedule(progress)`` lets a parametrization anneal.

    ``pixels`` is the tensor the engine projects after each step (the pixels themselves), or None when the
    parameters are not pixels; ``bounded`` says that ``image()`` always lies in [0, 1] (e.g. through a sigmoid).
    """

    name = "parametrization"
    bounded = False

    @property
    def pixels(self) -> torch.Tensor | None:
        """The pixel parameters projections act on, or None."""
        return None

    @abstractmethod
    def image(self) -> torch.Tensor:
        """The current N×3×H×W images in [0, 1], differentiable in the parameters."""

    @property
    @abstractmethod
    def batch(self) -> int:
        """How many images this parametrization holds."""

    def schedule(self, progress: float) -> None:
        """Called by the engine with the fraction of the run done; most parametrizations ignore it."""

    def codes(self) -> torch.Tensor | None:
        """What regenerates the images beside the parametrization's name (a generator's latent codes), or None
        when the images are the record."""
        return None

    def recipe(self) -> dict:
        """Entries a run's metadata records about the parametrization beyond its name (e.g. weights digests)."""
        return {}

    def __str__(self) -> str:
        return self.name


def start_images(n: int, size: int | tuple[int, int], init: str | torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
    """Starting images: 'noise' (N(0.5, 0.15²) clipped: a silent ReLU unit has no gradient at a flat grey),
    'grey', 'uniform', or a given N×3×H×W tensor in [0, 1]."""
    h, w = (size, size) if isinstance(size, int) else size
    if isinstance(init, torch.Tensor):
        x = init.detach().cpu().clone()
        if x.ndim == 3:
            x = x[None]
        check_images(x)
        x = x.float()
        if x.shape[0] not in (1, n):
            raise ConfigError(f"{x.shape[0]} start images for {n} images: give one, or one per image")
        if x.shape[0] == 1 and n > 1:
            x = x.expand(n, -1, -1, -1).clone()
        return x
    if init == "noise":
        return (0.5 + 0.15 * torch.randn(n, 3, h, w, generator=generator)).clamp(0, 1)
    if init == "grey":
        return torch.full((n, 3, h, w), 0.5)
    if init == "uniform":
        return torch.rand(n, 3, h, w, generator=generator)
    raise UnknownNameError("start", str(init), ["noise", "grey", "uniform"])


class Pixels(Parametrization):
    """The image is the parameter."""

    name = "pixels"

    def __init__(self, start: torch.Tensor):
        super().__init__()
        self.x = nn.Parameter(start.clone())

    def image(self) -> torch.Tensor:
        return self.x

    @property
    def pixels(self) -> torch.Tensor:
        return self.x

    @property
    def batch(self) -> int:
        return self.x.shape[0]


class Blurred(Pixels):
    """Pixels with Gaussian-blurred gradients; σ falls linearly from ``sigma`` to ``sigma_end`` over the run."""

    def __init__(self, start: torch.Tensor, sigma: float = 2.0, sigma_end: float = 0.5):
        super().__init__(start)
        if sigma < 0 or sigma_end < 0:
            raise ConfigError("blur sigmas must be >= 0")
        self.sigma0, self.sigma_end, self.sigma = float(sigma), float(sigma_end), float(sigma)
        self.x.register_hook(self._blur)

    @property
    def name(self) -> str:
        return f"blurred(sigma={self.sigma0:g}->{self.sigma_end:g})"

    def schedule(self, progress: float) -> None:
        self.sigma = self.sigma0 + (self.sigma_end - self.sigma0) * min(max(progress, 0.0), 1.0)

    def _blur(self, grad: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(grad, self.sigma)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of N×C×H×W with reflect padding (identity for σ < 0.3)."""
    if sigma < 0.3:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _freqs(h: int, w: int) -> torch.Tensor:
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


class Fourier(Parametrization):
    """Lucid's Fourier parametrization: scaled spectrum → irfft → decorrelated colour → sigmoid."""

    bounded = True

    def __init__(self, n: int, size: int | tuple[int, int], generator: torch.Generator, decay: float = 1.0,
                 sd: float = 0.01, decorrelate: bool = True, max_freq: int | None = None):
        super().__init__()
        h, w = (size, size) if isinstance(size, int) else size
        self.h, self.w, self.decay, self.decorrelate, self.max_freq = h, w, decay, decorrelate, max_freq
        freqs = _freqs(h, w)
        scale = 1.0 / torch.clamp(freqs, min=1.0 / max(h, w)) ** decay  # lucent: ortho irfft, no √(hw)
        keep = torch.ones(h, w // 2 + 1, dtype=torch.bool)
        if max_freq is not None:
            if max_freq < 1:
                raise ConfigError(f"max_freq must be >= 1, got {max_freq}")
            fy = torch.fft.fftfreq(h)[:, None] * h
            fx = torch.fft.rfftfreq(w)[None, :] * w
            keep = (fy.abs() <= max_freq) & (fx.abs() <= max_freq)
        self.register_buffer("scale", scale[keep])
        self.register_buffer("keep", keep)
        self.code = nn.Parameter(sd * torch.randn(n, 3, int(keep.sum()), 2, generator=generator))

    @property
    def name(self) -> str:
        extra = f", max_freq={self.max_freq}" if self.max_freq is not None else ""
        return f"fourier(decay={self.decay:g}, decorrelate={self.decorrelate}{extra})"

    @property
    def batch(self) -> int:
        return self.code.shape[0]

    def spectrum(self) -> torch.Tensor:
        """The full complex half-spectrum N×3×H×(W/2+1) from the code."""
        n = self.code.shape[0]
        values = torch.complex(self.code[..., 0], self.code[..., 1]) * self.scale
        full = values.new_zeros(n, 3, *self.keep.shape)
        full[:, :, self.keep] = values
        return full

    def image(self) -> torch.Tensor:
        x = torch.fft.irfft2(self.spectrum(), s=(self.h, self.w), norm="ortho") / 4.0
        if self.decorrelate:
            x = torch.einsum("nchw,dc->ndhw", x, _COLOR.to(x.device, x.dtype))
        return torch.sigmoid(x)

    @classmethod
    def fit(cls, images: torch.Tensor, generator: torch.Generator, **kw) -> Fourier:
        """A Fourier parametrization whose image starts at (approximately) the given images."""
        p = cls(images.shape[0], tuple(images.shape[-2:]), generator, **kw)
        x = torch.logit(images.clamp(1e-3, 1 - 1e-3))
        if p.decorrelate:
            x = torch.einsum("nchw,dc->ndhw", x, torch.linalg.inv(_COLOR))
        spec = torch.fft.rfft2(x * 4.0, norm="ortho")[:, :, p.keep] / p.scale
        with torch.no_grad():
            p.code.copy_(torch.stack([spec.real, spec.imag], -1))
        return p


class Generated(Parametrization):
    """An image generator's output: the code (N × latent) is the parameter, the frozen generator maps it to images
    (resized to ``size`` when the generator makes another size: DeePSiM's 256 px for a 64-pixel model).

    The generator is held outside the module's children, so a run's state and checkpoints hold the codes alone
    (DeePSiM fc6's 60 million weights are not copied into every checkpoint); it follows the codes' device."""

    bounded = True

    def __init__(self, generator: nn.Module, codes: torch.Tensor, size: int | tuple[int, int]):
        super().__init__()
        latent = generator.latent_dim
        if codes.ndim != 2 or codes.shape[1] != latent:
            raise ConfigError(f"{generator.name} takes codes of shape N×{latent}, got {tuple(codes.shape)}")
        if not torch.isfinite(codes).all():
            raise ConfigError("generator codes must be finite numbers (NaN or inf found)")
        self.code = nn.Parameter(codes.detach().float().clone())
        self.__dict__["generator"] = generator  # not a submodule: see the class docstring
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.source = generator.name  # what ``make('generator:SOURCE')`` loads it by

    @classmethod
    def start(cls, name: str, n: int, size: int | tuple[int, int], init: str | torch.Tensor,
              generator: torch.Generator, sd: float | None = None) -> Generated:
        """Codes drawn from the generator's prior N(0, sd²) ('noise', sd defaulting to the generator's), its mean
        ('grey': all zeros), or given as an N×latent tensor (e.g. a saved result's ``codes``)."""
        g = load_generator_cached(name)
        if isinstance(init, torch.Tensor):
            codes = init.detach().cpu().float()
            if codes.ndim == 4:
                raise ConfigError(f"a generator parametrization starts from codes (N×{g.latent_dim}), not images")
            codes = codes.expand(n, -1).clone() if codes.ndim == 2 and codes.shape[0] == 1 else codes
            if codes.shape[0] != n:
                raise ConfigError(f"{codes.shape[0]} start codes for {n} images: give one, or one per image")
        elif init == "noise":
            codes = (g.code_sd if sd is None else sd) * torch.randn(n, g.latent_dim, generator=generator)
        elif init == "grey":
            codes = torch.zeros(n, g.latent_dim)
        else:
            raise UnknownNameError("start of a generator parametrization", str(init), ["noise", "grey"])
        p = cls(g, codes, size)
        p.source = name
        return p

    @property
    def name(self) -> str:
        return f"generator:{self.source}"

    @property
    def batch(self) -> int:
        return self.code.shape[0]

    def codes(self) -> torch.Tensor:
        return self.code.detach()

    def recipe(self) -> dict:
        return {"generator_sha256": getattr(self.generator, "info", {}).get("sha256", "")}

    def image(self) -> torch.Tensor:
        g = self.generator
        weights = next(g.parameters())
        if weights.device != self.code.device:
            g.to(self.code.device)
        with SHARED.running():  # a module run outside any ProbeModel: no torch.fx trace may run meanwhile
            x = g(self.code.to(weights.dtype))
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, self.size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
        return x.to(self.code.dtype)


@functools.cache
def load_generator_cached(name: str) -> nn.Module:
    """``generators.load_generator`` on the CPU, once per process: parametrizations share the frozen network."""
    from synth.zoo.generators import load_generator

    return load_generator(name, device="cpu")


PARAMETRIZATIONS = ("pixels", "fourier", "blurred", "generator:NAME")


def make(kind: str | Parametrization, n: int, size: int | tuple[int, int], init: str | torch.Tensor,
         generator: torch.Generator, **kw) -> Parametrization:
    """Build a parametrization by name ('pixels', 'fourier', 'blurred', 'generator:NAME') from a start."""
    if isinstance(kind, Parametrization):
        return kind
    if isinstance(kind, str) and kind.startswith("generator:"):
        return Generated.start(kind.split(":", 1)[1], n, size, init, generator, **kw)
    if kind == "pixels":
        return Pixels(start_images(n, size, init, generator))
    if kind == "blurred":
        return Blurred(start_images(n, size, init, generator), **kw)
    if kind == "fourier":
        if isinstance(init, torch.Tensor):
            return Fourier.fit(start_images(n, size, init, generator), generator, **kw)
        return Fourier(n, size, generator, **kw)
    raise UnknownNameError("parametrization", str(kind), PARAMETRIZATIONS)
