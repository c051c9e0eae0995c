"""Constraints on images: what the engine may produce.

Two kinds of enforcement, both optional per constraint:
- ``apply(x)``: a differentiable map inside the forward pass (grayscale, aperture mask, fixed mean luminance and
  RMS contrast), so it works with any parametrization;
- ``project_(x)``: an in-place projection of pixel parameters after each step (the pixel box, an Lp ball around a
  start image), as projected gradient descent needs.
"""
from __future__ import annotations

import math

import torch

from synth.errors import ConfigError
from synth.files import tensor_digest

# ITU-R BT.601 luma weights: luminance of an RGB image for contrast constraints.
LUMA = (0.299, 0.587, 0.114)


class Constraint:
    """Base: identity map and no projection.  ``projects`` says whether ``project_`` does anything: the engine
    refuses such a constraint on a parametrization whose pixels it cannot project."""

    projects = False

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable part, applied to every image the model sees."""
        return x

    def project_(self, x: torch.Tensor) -> None:
        """In-place projection of pixel parameters after a step."""

    def to(self, device: torch.device) -> Constraint:
        """Move tensors the constraint holds to a device."""
        return self

    def fingerprint(self) -> str:
        """Everything that defines the constraint, tensors by digest: what a run's checkpoint must agree on."""
        return str(self)


class Box(Constraint):
    """Pixel values within [lo, hi] (the valid image range)."""

    projects = True

    def __init__(self, lo: float = 0.0, hi: float = 1.0):
        if not lo < hi:
            raise ConfigError(f"box needs lo < hi, got [{lo}, {hi}]")
        self.lo, self.hi = float(lo), float(hi)

    def project_(self, x: torch.Tensor) -> None:
        x.clamp_(self.lo, self.hi)

    def __str__(self) -> str:
        return f"box[{self.lo:g},{self.hi:g}]"


class LpBall(Constraint):
    """Within distance ``eps`` of ``center`` in the L-inf or L2 norm (the attack budget): one ε for all images, or
    one per image (an (N,) tensor), so a sweep over ε runs as one batch."""

    projects = True

    def __init__(self, center: torch.Tensor, eps: float | torch.Tensor, p: float = math.inf):
        if p not in (2, math.inf):
            raise ConfigError(f"LpBall supports p=2 or p=inf, got {p}")
        eps = torch.as_tensor(eps, dtype=torch.float32).detach()
        if eps.ndim > 1 or not (torch.isfinite(eps).all() and (eps >= 0).all()):
            raise ConfigError(f"eps must be a finite number >= 0 or one per image, got {eps.tolist()}")
        if eps.ndim == 1 and eps.shape[0] != center.shape[0]:
            raise ConfigError(f"{eps.shape[0]} eps values for {center.shape[0]} images: give one, or one per image")
        self.center, self.eps, self.p = center.detach(), eps, p
        self._bounds: tuple[torch.Tensor, torch.Tensor] | None = None  # L-inf: center ∓ ε, made once

    def to(self, device: torch.device) -> LpBall:
        self.center, self.eps, self._bounds = self.center.to(device), self.eps.to(device), None
        return self

    def _radius(self, x: torch.Tensor) -> torch.Tensor:
        """ε shaped to broadcast over N×C×H×W."""
        eps = self.eps.to(x.device, x.dtype)
        return eps.view(-1, *[1] * (x.ndim - 1)) if eps.ndim else eps

    def distance(self, x: torch.Tensor) -> torch.Tensor:
        """Per-image distance from the center in the ball's norm."""
        d = (x - self.center.to(x.device, x.dtype)).flatten(1)
        return d.abs().amax(1) if self.p == math.inf else d.norm(dim=1)

    def project_(self, x: torch.Tensor) -> None:
        if self.p == math.inf:  # one clamp between precomputed bounds
            if self._bounds is None or self._bounds[0].device != x.device:
                eps = self._radius(self.center)
                self._bounds = (self.center - eps, self.center + eps)
            x.clamp_(min=self._bounds[0], max=self._bounds[1])
            return
        delta = x - self.center
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (delta.ndim - 1))
        x.copy_(self.center + delta * (self._radius(x) / norms).clamp(max=1.0))

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """A random point of the ball around each center: uniform in the cube for L-inf, uniform in the ball for L2
        (direction from a Gaussian, radius ε·u^(1/d)), as foolbox's and Madry's random starts."""
        shape = self.center.shape
        if self.p == math.inf:
            delta = torch.rand(shape, generator=generator) * 2 - 1
        else:
            d = self.center[0].numel()
            direction = torch.randn(shape, generator=generator)
            direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (len(shape) - 1))
            radius = torch.rand(shape[0], generator=generator) ** (1.0 / d)
            delta = direction * radius.view(-1, *[1] * (len(shape) - 1))
        delta = delta.to(self.center.device, self.center.dtype)
        return self.center + delta * self._radius(delta)

    def __str__(self) -> str:
        eps = f"{float(self.eps):.4g}" if self.eps.ndim == 0 else \
            f"{float(self.eps.min()):.4g}..{float(self.eps.max()):.4g} per image"
        return f"l{'inf' if self.p == math.inf else 2}-ball(eps={eps})"

    def fingerprint(self) -> str:
        eps = f", eps sha256:{tensor_digest(self.eps)}" if self.eps.ndim else ""
        return f"{self} center sha256:{tensor_digest(self.center)}{eps}"


class Contrast(Constraint):
    """Fixed mean luminance and RMS contrast per image (the usual control in physiology stimulus sets)."""

    def __init__(self, rms: float = 0.2, mean: float = 0.5):
        if not (0 < rms < 1 and 0 < mean < 1):
            raise ConfigError(f"contrast needs 0 < rms < 1 and 0 < mean < 1, got rms={rms}, mean={mean}")
        self.rms, self.mean = float(rms), float(mean)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        luma = (x * torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
        mu = luma.mean((1, 2, 3), keepdim=True)
        sd = luma.std((1, 2, 3), keepdim=True).clamp_min(1e-6)
        return ((x - mu) / sd * self.rms + self.mean).clamp(0, 1)

    def __str__(self) -> str:
        return f"contrast(rms={self.rms:g}, mean={self.mean:g})"


class Mask(Constraint):
    """Only pixels inside a mask (H×W in [0,1]) are free; outside, a fixed background shows."""

    def __init__(self, mask: torch.Tensor, background: float = 0.5, label: str = "mask"):
        mask = torch.as_tensor(mask, dtype=torch.float32)
        if mask.ndim != 2 or not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
            raise ConfigError("mask must be an H×W array of values in [0, 1]")
        self.mask, self.background, self.label = mask, float(background), label

    @classmethod
    def aperture(cls, size: int, radius: float = 0.45, soft: float = 0.05, background: float = 0.5) -> Mask:
        """A circular aperture (radius and soft edge as fractions of the image size), as in receptive-field mapping."""
        t = (torch.arange(size) + 0.5) / size - 0.5
        r = torch.sqrt(t[:, None] ** 2 + t[None, :] ** 2)
        mask = torch.clamp((radius - r) / max(soft, 1e-6) + 0.5, 0, 1)
        return cls(mask, background, f"aperture(r={radius:g})")

    def to(self, device: torch.device) -> Mask:
        self.mask = self.mask.to(device)
        return self

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask.shape != x.shape[-2:]:
            raise ConfigError(f"mask of shape {tuple(self.mask.shape)} does not fit images of {tuple(x.shape[-2:])}")
        m = self.mask.to(x.dtype)
        return x * m + self.background * (1 - m)

    def __str__(self) -> str:
        return self.label

    def fingerprint(self) -> str:
        return f"{self} mask sha256:{tensor_digest(self.mask)} background {self.background:g}"


class Grayscale(Constraint):
    """Achromatic images: every channel equals the pixel's luminance."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        luma = (x * torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)).sum(1, keepdim=True)
        return luma.expand_as(x)

    def __str__(self) -> str:
        return "grayscale"


def stimulus_controls(size: int, contrast: float | None = None, aperture: float | None = None,
                      grayscale: bool = False) -> list[Constraint]:
    """The usual stimulus controls by value: fixed RMS contrast, a circular aperture (radius as a fraction of the
    image), achromatic images.  Shared by the command line and batch experiments."""
    out: list[Constraint] = []
    if contrast is not None:
        out.append(Contrast(rms=float(contrast)))
    if aperture is not None:
        out.append(Mask.aperture(size, radius=float(aperture)))
    if grayscale:
        out.append(Grayscale())
    return out
