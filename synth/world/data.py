"""The embedded image world: an HvM-like eight-category object set, face-localizer controls, splits, a Dataset.

Every image is a pure function of (seed, split, index): image ``i`` of the test split renders the same on any
machine, in any order, in any process, so sets can be rendered in parallel or lazily and never overlap
between splits.  Categories cycle with the index, so any run of 8 consecutive images is balanced.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from synth.errors import ConfigError, UnknownNameError
from synth.files import atomic, write_csv
from synth.world.levels import CONTROLS, SPLITS, VARIATION
from synth.world.render import (
    SUPERSAMPLE,
    Pose,
    background,
    clutter_parts,
    draw_parts,
    finish,
    phase_scramble,
    surface_texture,
)
from synth.world.shapes import CATEGORIES, MIRRORABLE, OBJECTS_PER_CATEGORY, build, scramble_face

_SPLIT_CODE = {"train": 0, "val": 1, "test": 2, "localizer": 3}

# Every image also varies in global contrast and object surface texture, and may hold loose parts of objects
# of other categories (a wheel, an eye, a leg): without them a network can read a category off one part or
# colour, and its decisions are then too easy to defend at ε = 4/255 to be a useful adversarial testbed.
CONTRAST_RANGE = (0.45, 1.0)
SURFACE_RANGE = (0.0, 0.45)
# HvM holds 640 V0, 2560 V3 and 2560 V6 images; a "mixed" set draws levels in that proportion.
MIXED = (("low", 1 / 9), ("medium", 4 / 9), ("high", 4 / 9))


@dataclass(frozen=True)
class World:
    """The recipe of an image set: image size, world seed, variation level (or 'mixed'), categories, and
    whether scenes hold clutter (off for clean localizer stimuli)."""

    size: int = 64
    seed: int = 0
    variation: str = "mixed"
    categories: tuple[str, ...] = CATEGORIES
    clutter: bool = True

    def __post_init__(self) -> None:
        if self.variation != "mixed" and self.variation not in VARIATION:
            raise UnknownNameError("variation level", self.variation, [*VARIATION, "mixed"])
        for c in self.categories:
            if c not in CATEGORIES:
                raise UnknownNameError("category", c, CATEGORIES)
        if not 16 <= self.size <= 1024:
            raise ConfigError(f"image size must be between 16 and 1024 pixels, got {self.size}")

    def image(self, index: int, split: str = "train", category: str | None = None) -> tuple[np.ndarray, dict]:
        """Render image ``index`` of a split: a uint8 H×W×3 array and its metadata."""
        if split not in _SPLIT_CODE:
            raise UnknownNameError("split", split, _SPLIT_CODE)
        rng = np.random.default_rng([self.seed, _SPLIT_CODE[split], index])
        category = category or self.categories[index % len(self.categories)]
        kind = category
        if category in CONTROLS:
            category = "faces" if category == "scrambled_faces" else self.categories[rng.integers(len(self.categories))]
        elif category not in CATEGORIES:
            raise UnknownNameError("category", category, [*CATEGORIES, *CONTROLS])
        level = self.variation
        if level == "mixed":
            level = MIXED[int(rng.choice(len(MIXED), p=[p for _, p in MIXED]))][0]
        v = VARIATION[level]
        obj = int(rng.integers(OBJECTS_PER_CATEGORY))
        pose = Pose(yaw=rng.uniform(-v["depth"], v["depth"]), pitch=rng.uniform(-v["depth"], v["depth"]) / 2,
                    roll=rng.uniform(-v["roll"], v["roll"]), tx=rng.uniform(-v["pos"], v["pos"]),
                    ty=rng.uniform(-v["pos"], v["pos"]), scale=rng.uniform(v["scale_lo"], v["scale_hi"]),
                    mirror=bool(category in MIRRORABLE and rng.random() < v["mirror"]))
        shape = (self.size * SUPERSAMPLE, self.size * SUPERSAMPLE)
        canvas, meta = background(rng, shape)
        az, el = rng.uniform(0, 2 * np.pi), rng.uniform(0.35, 1.2)
        light = np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])
        ambient = rng.uniform(0.3, 0.55)
        n_clutter = int(rng.integers(0, v["clutter"] + 1)) if self.clutter else 0
        blobs = clutter_parts(rng, n_clutter)
        n_parts = int(rng.integers(0, v["parts"] + 1)) if self.clutter else 0
        blobs += self._loose_parts(rng, category, n_parts)
        in_front = rng.random(len(blobs)) < 0.3
        for (parts, p), front in zip(blobs, in_front):
            if not front:
                draw_parts(canvas, parts, p, light, ambient)
        parts = build(category, obj, rng, self.seed)
        if kind == "scrambled_faces":
            parts = scramble_face(parts, rng)
        strength = rng.uniform(*SURFACE_RANGE)
        draw_parts(canvas, parts, pose, light, ambient, surface_texture(rng, shape, strength))
        for (parts, p), front in zip(blobs, in_front):
            if front:
                draw_parts(canvas, parts, p, light, ambient)
        contrast = rng.uniform(*CONTRAST_RANGE)
        img = finish(canvas, rng, noise=rng.uniform(0.0, 0.03), contrast=contrast)
        if kind == "phase_scrambled":
            img = phase_scramble(img, rng)
        meta = {"index": index, "split": split, "category": kind, "source_category": category,
                "object": f"{category}{obj}", "variation": level, "yaw": pose.yaw, "pitch": pose.pitch,
                "roll": pose.roll, "tx": pose.tx, "ty": pose.ty, "scale": pose.scale, "mirror": pose.mirror,
                "light_azimuth": az, "light_elevation": el, "clutter": n_clutter, "loose_parts": len(blobs) - n_clutter,
                "surface": strength, "contrast": contrast, **meta, "seed": self.seed}
        return img, {k: round(v, 4) if isinstance(v, float) else v for k, v in meta.items()}

    def _loose_parts(self, rng: np.random.Generator, category: str, count: int) -> list[tuple[list, Pose]]:
        """A few parts of objects of other categories, scattered at random poses."""
        out = []
        others = [c for c in CATEGORIES if c != category]
        for _ in range(count):
            donor = build(others[rng.integers(len(others))], int(rng.integers(OBJECTS_PER_CATEGORY)), rng, self.seed)
            pick = rng.choice(len(donor), size=min(len(donor), int(rng.integers(1, 3))), replace=False)
            pose = Pose(roll=rng.uniform(-180, 180), tx=rng.uniform(-0.4, 0.4), ty=rng.uniform(-0.4, 0.4),
                        scale=rng.uniform(0.25, 0.55), mirror=bool(rng.random() < 0.5))
            out.append(([donor[i] for i in sorted(pick)], pose))
        return out


def to_tensor(images: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """uint8 N×H×W×3 images as the library's float N×3×H×W tensor in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255).to(device)


@dataclass
class ImageBatch:
    """Rendered images (uint8 N×H×W×3), their labels (index into ``classes``) and per-image metadata."""

    images: np.ndarray
    labels: np.ndarray
    metadata: list[dict] = field(default_factory=list)
    classes: tuple[str, ...] = CATEGORIES

    def tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The images as a float N×3×H×W tensor in [0, 1], the library's image format."""
        return to_tensor(self.images, device)

    def __len__(self) -> int:
        return len(self.images)


def _render_chunk(args: tuple[World, str, Sequence[int], str | None]) -> list[tuple[np.ndarray, dict]]:
    world, split, indices, category = args
    return [world.image(i, split, category) for i in indices]


def render(n: int, split: str = "train", world: World | None = None, start: int = 0, category: str | None = None,
           workers: int = 1, progress: bool = False) -> ImageBatch:
    """Render images ``start .. start+n-1`` of a split, optionally in parallel processes."""
    world = world or World()
    if n < 0:
        raise ConfigError(f"number of images must be >= 0, got {n}")
    indices = list(range(start, start + n))
    chunk = max(1, min(500, n // max(1, workers * 4) or 1))
    jobs = [(world, split, indices[i:i + chunk], category) for i in range(0, n, chunk)]
    results: list[tuple[np.ndarray, dict]] = []
    bar = tqdm(total=n, desc=f"render {split}", unit="img", disable=not progress)
    if workers > 1 and n > chunk:
        with ProcessPoolExecutor(workers) as pool:
            for part in pool.map(_render_chunk, jobs):
                results += part
                bar.update(len(part))
    else:
        for job in jobs:
            part = _render_chunk(job)
            results += part
            bar.update(len(part))
    bar.close()
    classes = world.categories if category not in CONTROLS else (*world.categories, *CONTROLS)
    images = np.stack([r[0] for r in results]) if results else np.zeros((0, world.size, world.size, 3), np.uint8)
    labels = np.array([classes.index(r[1]["category"]) if r[1]["category"] in classes else -1 for r in results],
                      dtype=np.int64)
    return ImageBatch(images, labels, [r[1] for r in results], tuple(classes))


def localizer(n_per_condition: int, world: World | None = None, workers: int = 1) -> dict[str, ImageBatch]:
    """Face-localizer conditions: faces, non-face objects, scrambled faces and phase-scrambled images.

    The default world has medium variation and no clutter, so no stray face part lands in an object image.
    """
    world = world or World(variation="medium", clutter=False)
    objects = tuple(c for c in world.categories if c != "faces")
    cond = {"faces": "faces", "scrambled_faces": "scrambled_faces", "phase_scrambled": "phase_scrambled"}
    # Same indices in every condition: image i of each shares its background, pose and lighting.
    out = {name: render(n_per_condition, "localizer", world, category=cat, workers=workers)
           for name, cat in cond.items()}
    out["objects"] = render(n_per_condition, "localizer", replace(world, categories=objects), workers=workers)
    return out


def write_folder(batch: ImageBatch, out: str | os.PathLike, prefix: str = "img") -> Path:
    """Write a batch as PNGs plus ``metadata.csv`` (file name, category and every metadata field)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for img, meta in zip(batch.images, batch.metadata):
        name = f"{prefix}_{meta['split']}_{meta['index']:06d}.png"
        with atomic(out / name) as tmp:
            Image.fromarray(img).save(tmp, format="PNG")
        rows.append({"file": name, **meta})
    write_csv(out / "metadata.csv", rows)
    return out / "metadata.csv"


class ObjectImages(torch.utils.data.Dataset):
    """A split of the embedded set as a Dataset of (float 3×H×W image in [0, 1], label); rendered once, in memory."""

    def __init__(self, split: str = "train", n: int | None = None, world: World | None = None, workers: int = 1,
                 progress: bool = False):
        if split not in SPLITS:
            raise UnknownNameError("split", split, SPLITS)
        self.world = world or World()
        self.batch = render(SPLITS[split] if n is None else n, split, self.world, workers=workers, progress=progress)
        self.images = self.batch.tensor()
        self.labels = torch.from_numpy(self.batch.labels)
        self.classes = self.batch.classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])
