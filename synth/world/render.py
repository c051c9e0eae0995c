"""Rasterize posed, shaded objects over natural-texture backgrounds; phase-scrambled controls.

Drawing is done on a canvas supersampled 2× and box-filtered down, which anti-aliases edges cheaply.
Backgrounds are crops of texture photographs that ship with scikit-image and contain none of the eight
categories (brick, grass, gravel, moon surface, deep field, tissue stains, retina, coins, cells).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from skimage.draw import polygon as raster_polygon

from synth.world.shapes import Part, hsv, radial

SUPERSAMPLE = 2
OBJECT_EXTENT = 0.4  # an object's half-width at scale 1, as a fraction of the image size
BACKGROUNDS: tuple[str, ...] = ("brick", "grass", "gravel", "moon", "hubble_deep_field", "immunohistochemistry",
                                "retina", "coins", "cell")


@dataclass(frozen=True)
class Pose:
    """Where and how an object is seen: rotations in degrees, position as a fraction of the image, scale."""

    yaw: float = 0.0    # rotation in depth about the vertical axis
    pitch: float = 0.0  # rotation in depth about the horizontal axis
    roll: float = 0.0   # rotation in the image plane
    tx: float = 0.0
    ty: float = 0.0
    scale: float = 1.0
    mirror: bool = False


@functools.cache
def _texture(name: str) -> np.ndarray:
    """A background photograph as float32 H×W×C in [0, 1], loaded once per process."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
    img = img / 255.0 if img.max() > 1.5 else img
    if img.ndim == 2:
        img = img[..., None]
    return np.ascontiguousarray(img[..., :3])


def background(rng: np.random.Generator, shape: tuple[int, int], name: str | None = None) -> tuple[np.ndarray, dict]:
    """A random crop of a texture photograph, rescaled, flipped, tinted and contrast-varied."""
    name = name or BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    tex = _texture(name)
    th, tw = tex.shape[:2]
    crop = int(rng.uniform(0.2, 0.9) * min(th, tw))
    y0, x0 = int(rng.integers(0, th - crop + 1)), int(rng.integers(0, tw - crop + 1))
    rows = y0 + (np.arange(shape[0]) * crop // shape[0])
    cols = x0 + (np.arange(shape[1]) * crop // shape[1])
    bg = tex[rows[:, None], cols[None, :]]
    if rng.random() < 0.5:
        bg = bg[:, ::-1]
    bg = np.rot90(bg, int(rng.integers(4)))
    if bg.shape[2] == 1:
        bg = bg * hsv(rng.random(), rng.uniform(0.0, 0.5), 1.0)[None, None, :].astype(np.float32)
    contrast, level = rng.uniform(0.3, 1.2), rng.uniform(0.25, 0.75)
    bg = np.clip((bg - bg.mean()) * contrast + level, 0, 1)
    return np.ascontiguousarray(bg, dtype=np.float32), {"background": name, "bg_crop": crop, "bg_x": x0, "bg_y": y0,
                                                          "bg_contrast": round(float(contrast), 4)}


def _rotation(pose: Pose) -> np.ndarray:
    """The 3×3 rotation of the object frame into the view frame (yaw, then pitch, then roll)."""
    a, b, c = np.deg2rad([pose.yaw, pose.pitch, pose.roll])
    yaw = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    pitch = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    roll = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return roll @ pitch @ yaw


def draw_parts(canvas: np.ndarray, parts: list[Part], pose: Pose, light: np.ndarray, ambient: float,
               surface: np.ndarray | None = None) -> None:
    """Paint parts onto a canvas (H×W×3 float, modified in place) seen under ``pose`` and lit from ``light``.

    ``surface`` (H×W, around 1) modulates the paint, giving objects a texture instead of flat colour.
    """
    h, w = canvas.shape[:2]
    rot = _rotation(pose)
    px = OBJECT_EXTENT * pose.scale * min(h, w)
    cx, cy = w / 2 + pose.tx * w, h / 2 - pose.ty * h
    flip = -1.0 if pose.mirror else 1.0
    lin = px * rot[:2, :2] @ np.diag([flip, 1.0])  # object-plane (x, y) to image offsets, per unit
    lin_inv = np.linalg.inv(lin)
    for part in sorted(parts, key=lambda p: p.z):  # painter's order: far layers first
        shift = px * rot[:2, 2] * part.z
        img_xy = part.verts @ lin.T + shift
        rr, cc = raster_polygon(cy - img_xy[:, 1], cx + img_xy[:, 0], (h, w))
        if rr.size == 0:
            continue
        if part.dome is None:
            normal = np.broadcast_to(rot[:, 2], (rr.size, 3))
        else:
            off = np.stack([cc - cx, cy - rr], axis=1) - shift
            x, y = (off @ lin_inv.T).T
            dx, dy, rx, ry = part.dome
            ex, ey = (x - dx) / rx, (y - dy) / ry
            n = np.stack([ex * flip, ey, np.sqrt(np.clip(1 - ex * ex - ey * ey, 0.0, 1.0))], axis=1)
            normal = n @ rot.T
        shade = ambient + (1 - ambient) * np.clip(normal @ light, 0.0, 1.0)
        if surface is not None:
            shade = shade * surface[rr, cc]
        canvas[rr, cc] = np.clip(part.color[None, :] * shade[:, None], 0.0, 1.0)


def clutter_parts(rng: np.random.Generator, count: int) -> list[tuple[list[Part], Pose]]:
    """Random star-shaped blobs, textured by flat colour, that clutter the scene and may occlude the object."""
    blobs = []
    for _ in range(count):
        k = rng.uniform(0.4, 1.0, 5)
        ph = rng.uniform(0, 2 * np.pi, 5)
        outline = radial(0, 0, lambda t, k=k, ph=ph: 0.6 + 0.25 * sum(k[i] * np.sin((i + 1) * t + ph[i]) / (i + 1)
                                                                      for i in range(5)))
        color = hsv(rng.random(), rng.uniform(0, 0.8), rng.uniform(0.2, 0.9))
        pose = Pose(roll=rng.uniform(-180, 180), tx=rng.uniform(-0.45, 0.45), ty=rng.uniform(-0.45, 0.45),
                    scale=rng.uniform(0.15, 0.4))
        blobs.append(([Part(outline, color)], pose))
    return blobs


def surface_texture(rng: np.random.Generator, shape: tuple[int, int], strength: float) -> np.ndarray:
    """A multiplicative surface texture (mean 1) cut from a background photograph."""
    tex, _ = background(rng, shape)
    g = tex.mean(axis=2)
    return (1.0 + strength * (g - g.mean()) / (g.std() + 1e-6)).clip(0.3, 1.7).astype(np.float32)


def finish(canvas: np.ndarray, rng: np.random.Generator, noise: float, contrast: float = 1.0) -> np.ndarray:
    """Box-filter the supersampled canvas down, scale its contrast, add pixel noise, and quantize to uint8."""
    h, w = canvas.shape[0] // SUPERSAMPLE, canvas.shape[1] // SUPERSAMPLE
    img = canvas.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE, 3).mean(axis=(1, 3))
    if contrast != 1.0:
        img = img.mean() + (img - img.mean()) * contrast
    if noise > 0:
        img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def phase_scramble(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Keep each channel's Fourier amplitude, replace the phase by that of white noise (shared over channels).

    The random phase comes from the FFT of a real noise image, so it is Hermitian and the result is real; the
    mean and RMS contrast of each channel are restored afterwards, as in localizer controls.
    """
    x = image.astype(np.float64) / 255.0
    phase = np.angle(np.fft.fft2(rng.random(x.shape[:2])))
    out = np.empty_like(x)
    for c in range(x.shape[2]):
        f = np.fft.fft2(x[..., c])
        y = np.real(np.fft.ifft2(np.abs(f) * np.exp(1j * (np.angle(f) + phase))))
        out[..., c] = (y - y.mean()) / (y.std() + 1e-8) * x[..., c].std() + x[..., c].mean()
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)
