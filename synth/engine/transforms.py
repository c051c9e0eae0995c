"""Random, differentiable image transforms for robust synthesis (expectation over transformation).

Each transform is a small class called as ``t(x, generator)``; a list of them is applied in order.  Random
draws come from a CPU generator so a seed gives the same run on any device.  Lucid's standard set —
pad, jitter, scale, rotate, jitter — is ``standard(size)``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from synth.errors import ConfigError


class Transform:
    """Base: identity."""

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return x


class Pad(Transform):
    """Reflect-pad by ``pixels`` on every side (so later jitter and rotation do not pull in black borders)."""

    def __init__(self, pixels: int):
        self.pixels = int(pixels)

    def __call__(self, x, g):
        return F.pad(x, [self.pixels] * 4, mode="reflect") if self.pixels else x

    def __str__(self) -> str:
        return f"pad({self.pixels})"


class Jitter(Transform):
    """Random translation by up to ``pixels`` in each direction, per image, cropping back to size."""

    def __init__(self, pixels: int):
        if pixels < 0:
            raise ConfigError("jitter must be >= 0 pixels")
        self.pixels = int(pixels)

    def __call__(self, x, g):
        if not self.pixels:
            return x
        n, _, h, w = x.shape
        d = self.pixels
        padded = F.pad(x, [d] * 4, mode="reflect")
        dy = torch.randint(0, 2 * d + 1, (n,), generator=g).tolist()
        dx = torch.randint(0, 2 * d + 1, (n,), generator=g).tolist()
        return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])

    def __str__(self) -> str:
        return f"jitter({self.pixels})"


class Affine(Transform):
    """Random scale (range) and rotation (±degrees) about the centre, per image, by bilinear resampling."""

    def __init__(self, scale: tuple[float, float] = (1.0, 1.0), degrees: float = 0.0):
        if not 0 < scale[0] <= scale[1]:
            raise ConfigError(f"scale range must be 0 < lo <= hi, got {scale}")
        self.scale, self.degrees = (float(scale[0]), float(scale[1])), float(degrees)

    def __call__(self, x, g):
        n = x.shape[0]
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(n, generator=g)
        a = (torch.rand(n, generator=g) * 2 - 1) * math.radians(self.degrees)
        cos, sin = torch.cos(a) / s, torch.sin(a) / s
        theta = torch.stack([torch.stack([cos, -sin, torch.zeros(n)], 1),
                             torch.stack([sin, cos, torch.zeros(n)], 1)], 1).to(x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def __str__(self) -> str:
        return f"affine(scale={self.scale[0]:g}-{self.scale[1]:g}, rotate={self.degrees:g})"


class Crop(Transform):
    """Centre crop back to ``size`` (undoes a Pad)."""

    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, x, g):
        h, w = x.shape[-2:]
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return x[..., top:top + self.size, left:left + self.size]

    def __str__(self) -> str:
        return f"crop({self.size})"


def standard(size: int) -> list[Transform]:
    """Lucid's standard transforms, scaled to the image size (its defaults are for 224 px)."""
    k = size / 224
    pad, j1, j2 = max(1, round(12 * k)), max(1, round(8 * k)), max(1, round(4 * k))
    return [Pad(pad), Jitter(j1), Affine((0.9, 1.1), 10.0), Jitter(j2), Crop(size)]


def apply(transforms: Sequence[Transform], x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Apply transforms in order with draws from ``g``."""
    for t in transforms:
        x = t(x, g)
    return x


def describe(transforms: Sequence[Transform]) -> str:
    """A readable list for metadata."""
    return ", ".join(str(t) for t in transforms) or "none"
