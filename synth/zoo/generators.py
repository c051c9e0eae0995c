"""Image generators: a latent code in, a world-like image out — the search space of XDream (Ponce et al. 2019).

XDream evolves the input code of DeePSiM's fc6 generator (Dosovitskiy & Brox 2016), a network trained to turn a
layer's features back into the image that evoked them; searching its 4,096 numbers is easier than searching
pixels and keeps the images image-like.  Nothing can be downloaded here, so phosphene ships two of its own,
trained on the embedded world (``phosphene train NAME`` re-runs each recipe; each card reports how world-like the
samples are through the eyes of ``toy-standard``):

- ``toy-deepsim`` (``FeatureInverter``), DeePSiM rebuilt: a 512-number code is a draw from the Gaussian of
  toy-standard's V4 responses (their top principal components), decoded by a network trained with DeePSiM's
  pixel and comparator-feature losses plus a code loss (the V4 features of its own image).  Its adversarial term
  is left out: on this CPU budget a GAN learned too slowly (below).  Samples are blurred mixtures of objects, but
  77 % are called a category with confidence by toy-standard, spread over all eight (random Fourier images: 94 %,
  nearly all 'planes' or 'animals'), and codes beyond the prior ask for exaggerated features, which is what
  evolution needs: on 8 toy-standard IT units gradient ascent in its code reaches 7.6x their natural maximum
  and CMA-ES 2.8x in 1,200 evaluations (Fourier code: 1.9x; benchmarks/evolution.py).  Its code is a view of
  toy-standard's own V4, as fc6's is of CaffeNet's.
- ``toy-gan`` (``WorldGAN``), a DCGAN (hinge loss, spectral normalization, weight averaging) — model-free, but
  after 12 epochs it had learned the world's backgrounds and blobs, not its objects, and its images cannot drive
  units (gradient ascent in its code: at most 0.78x the natural maximum; large codes decode to black).  It is
  kept as the contrast in ``benchmarks/evolution.py``.

A user's DeePSiM fc6 weights load through the same ``load_generator`` (``synth.deepsim``), recognized by the
shapes of their tensors.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from synth.errors import CheckpointError, ConfigError, UnknownNameError
from synth.files import sha256
from synth.zoo import checkpoints
from synth.zoo.catalog import GENERATORS_DIR, available_generators
from synth.zoo.models import default_device

SPREAD = 0.02  # a category counts as 'spread' into when it holds at least this share of the confident samples


class WorldGAN(nn.Module):
    """DCGAN's generator: a code of ``latent_dim`` numbers → 4×4 → … → ``size``-pixel RGB in [0, 1] (sigmoid)."""

    code_sd = 1.0  # the prior codes were drawn from in training: N(0, 1)

    def __init__(self, latent_dim: int = 128, width: int = 32, size: int = 64):
        super().__init__()
        if size < 8 or size & (size - 1):
            raise ConfigError(f"a WorldGAN makes square images of a power-of-two size >= 8, got {size}")
        ups = int(np.log2(size)) - 3  # 4 -> size doubles this many times before the last (RGB) doubling
        chans = [width * 2 ** (ups - i) for i in range(ups + 1)]
        layers: list[nn.Module] = [nn.Unflatten(1, (latent_dim, 1, 1)),
                                   nn.ConvTranspose2d(latent_dim, chans[0], 4, 1, 0, bias=False),
                                   nn.BatchNorm2d(chans[0]), nn.ReLU(True)]
        for a, b in zip(chans, chans[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(chans[-1], 3, 4, 2, 1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)
        self.latent_dim, self.width, self.output_size, self.name = latent_dim, width, size, "worldgan"

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.net(code)


class FeatureInverter(nn.Module):
    """DeePSiM rebuilt on the embedded world: a code of ``latent_dim`` numbers → a layer's features → an image.

    The features are ``relu(mean + basis @ code)``: ``basis`` holds the top principal components of the encoder
    layer's responses to the training images, scaled by their standard deviations, so a code drawn from N(0, I)
    is a draw from the Gaussian of those responses (within their top components).  The decoder (DeePSiM's: no
    normalization, LeakyReLU 0.3, transposed convolutions doubling the size) is trained to turn features back into
    the image that evoked them, so codes outside the natural range ask for exaggerated features, as fc6 codes do."""

    code_sd = 1.0

    def __init__(self, channels: int = 128, side: int = 8, latent_dim: int = 512, width: int = 64, size: int = 64):
        super().__init__()
        if size % side or (size // side) & (size // side - 1):
            raise ConfigError(f"the image size ({size}) must be the feature map's ({side}) times a power of two")
        self.register_buffer("mean", torch.zeros(channels * side * side))
        self.register_buffer("basis", torch.zeros(channels * side * side, latent_dim))
        act = lambda: nn.LeakyReLU(0.3, inplace=True)  # noqa: E731
        layers: list[nn.Module] = [nn.Conv2d(channels, width * 4, 3, 1, 1), act()]
        c, s = width * 4, side
        while s < size:
            out = max(width // 2, c // 2)
            layers += [nn.ConvTranspose2d(c, out, 4, 2, 1), act(), nn.Conv2d(out, out, 3, 1, 1), act()]
            c, s = out, s * 2
        layers += [nn.Conv2d(c, 3, 3, 1, 1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*layers)
        self.feature_shape = (channels, side, side)
        self.latent_dim, self.width, self.output_size, self.name = latent_dim, width, size, "inverter"

    def features(self, code: torch.Tensor) -> torch.Tensor:
        """The encoder-layer features a code stands for (N×C×H×W, non-negative)."""
        return torch.relu(self.mean + code @ self.basis.T).view(-1, *self.feature_shape)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.features(code))


class Critic(nn.Module):
    """The DCGAN discriminator with spectral normalization, for the hinge loss (training only)."""

    def __init__(self, width: int = 32, size: int = 64):
        super().__init__()
        sn = nn.utils.spectral_norm
        layers: list[nn.Module] = []
        c, s = 3, size
        while s > 4:
            out = width if c == 3 else c * 2
            layers += [sn(nn.Conv2d(c, out, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
            c, s = out, s // 2
        self.net = nn.Sequential(*layers, nn.Flatten(), sn(nn.Linear(c * 16, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1).flatten()


def load_generator(name: str | os.PathLike, device: torch.device | str | None = None) -> nn.Module:
    """A generator by embedded name ('toy-gan'), by its card (``NAME.json``), or from a weights file: DeePSiM fc6
    (XDream's) or a WorldGAN, recognized by their tensors' shapes.  Frozen, in eval mode, on ``device``."""
    from synth.zoo.deepsim import is_deepsim, load_deepsim

    path = Path(name)
    if path.suffix == "" and (GENERATORS_DIR / f"{name}.json").is_file():
        path = GENERATORS_DIR / f"{name}.json"
    if path.suffix == ".json" and path.is_file():
        card = json.loads(path.read_text())
        g = _from_card(card, path.parent)
        g.info = {"card": str(path), "sha256": card["sha256"]}
    elif path.is_file():
        raw = checkpoints.read(path)
        g = load_deepsim(path) if is_deepsim(raw) else _worldgan_from(_tensors(raw, path), path)
        g.info = {"weights": str(path), "sha256": sha256(path)}
    else:
        raise UnknownNameError("generator", str(name), available_generators())
    g.eval().requires_grad_(False)
    return g.to(device or default_device())


def _from_card(card: dict, folder: Path) -> nn.Module:
    """The generator a card describes, with the weights it names (beside it)."""
    arch = card.get("architecture", {})
    if arch.get("family") == "inverter":
        c, side, _ = arch["feature_shape"]
        g = FeatureInverter(c, side, arch["latent_dim"], arch["width"], arch["size"])
    else:
        g = WorldGAN(arch.get("latent_dim", 128), arch.get("width", 32), arch.get("size", 64))
    _load_into(g, _read(folder / card["weights"]))
    g.name = card["name"]
    return g.eval()


def _read(path: Path) -> dict[str, torch.Tensor]:
    """A state dict read safely (``torch.load(weights_only=True)``), tensors only."""
    return _tensors(checkpoints.read(path), path)


def _tensors(raw, path: Path) -> dict[str, torch.Tensor]:
    """The mapping of names to tensors in a checkpoint, unwrapped from a 'state_dict' or 'G' entry."""
    for key in ("state_dict", "G", "generator"):
        if isinstance(raw, dict) and isinstance(raw.get(key), dict):
            raw = raw[key]
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path} does not hold a generator's state dict (a mapping of names to tensors)")
    return raw


def _worldgan_from(tensors: dict[str, torch.Tensor], path: Path) -> WorldGAN:
    """A WorldGAN whose code size, width and image size are read off the weights' shapes."""
    indices = _indices(tensors)
    first, last = tensors.get("net.1.weight"), tensors.get(f"net.{max(indices, default=-1)}.weight")
    if first is None or first.dim() != 4 or last is None or last.dim() != 4 or last.shape[1] != 3:
        raise CheckpointError(f"{path} is neither DeePSiM fc6 (XDream's generator) nor a WorldGAN: it has "
                              f"{len(tensors)} tensors, the first {next(iter(tensors), None)!r}")
    ups = sum(1 for k, v in tensors.items() if k.endswith(".weight") and v.dim() == 4) - 1
    g = WorldGAN(first.shape[0], first.shape[1] // 2 ** (ups - 1), 2 ** (ups + 2))
    _load_into(g, tensors)
    return g


def _indices(tensors: dict[str, torch.Tensor]) -> list[int]:
    return [int(k.split(".")[1]) for k in tensors if k.startswith("net.") and k.split(".")[1].isdigit()]


def _load_into(g: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load a state dict, with a one-line error on a mismatch."""
    try:
        g.load_state_dict(tensors)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise CheckpointError(f"generator weights do not fit {type(g).__name__}: "
                              f"{lines[1] if len(lines) > 1 else lines[0]}") from None


