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
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from . import __version__, checkpoints
from .data import ObjectImages, World
from .errors import CheckpointError, ConfigError, UnknownNameError
from .files import atomic, sha256, write_text
from .models import WEIGHTS_DIR, default_device
from .params import Fourier
from .rng import restores_globals

GENERATORS_DIR = WEIGHTS_DIR / "generators"
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


@dataclass(frozen=True)
class GeneratorRecipe:
    """Everything that determines a trained embedded generator."""

    name: str
    description: str
    family: str = "worldgan"         # 'worldgan' (a DCGAN) or 'inverter' (DeePSiM-style feature inverter)
    latent_dim: int = 128
    width: int = 32
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    ema: float = 0.999               # weight of the running average per step
    seed: int = 0
    world: dict = field(default_factory=lambda: asdict(World()))
    judge: str = "toy-standard"      # the classifier the card asks whether samples look like the world
    confidence: float = 0.5
    eval_n: int = 2000
    encoder: str = "toy-standard"    # an inverter's: the model whose layer it inverts ...
    layer: str = "V4"
    comparator: str = "V2"           # ... the layer its feature loss compares (DeePSiM's comparator) ...
    feature_weight: float = 1.0      # ... and the weights of the feature and code losses beside the pixel loss
    code_weight: float = 1.0


GENERATOR_RECIPES: dict[str, GeneratorRecipe] = {
    # A first generator (toy-gan) learned the world's backgrounds and blobs, not its objects, in 12 epochs (36 % of
    # its samples classified with confidence >= 0.5), and its images cannot drive units: gradient ascent in its
    # code space reached 0.76x the natural maximum of toy-standard IT units (Fourier: 20x), and codes beyond the
    # prior's scale decode to black (ReLUs behind frozen batch-norm statistics saturate the sigmoid).  XDream's
    # own generator is not a GAN alone but an inverter of a network's features, so toy-deepsim is one.
    "toy-deepsim": GeneratorRecipe("toy-deepsim", "A DeePSiM-style generator (Dosovitskiy & Brox 2016, XDream's): "
                                   "a 512-number code is a draw from the Gaussian of toy-standard's V4 responses "
                                   "(top principal components), decoded to a 64 px image by a network trained "
                                   "to invert those features with pixel, V2-feature and V4-code losses.",
                                   family="inverter", latent_dim=512, width=64, epochs=6, lr=5e-4,
                                   betas=(0.9, 0.999)),
    "toy-gan": GeneratorRecipe("toy-gan", "A DCGAN generator of the embedded world (64 px, a 128-number code drawn "
                               "from N(0, 1)), hinge loss against a spectrally normalized discriminator, weights "
                               "averaged over steps."),
}


def available_generators() -> list[str]:
    """The shipped generators' names."""
    return sorted(p.stem for p in GENERATORS_DIR.glob("*.json"))


def load_generator(name: str | os.PathLike, device: torch.device | str | None = None) -> nn.Module:
    """A generator by embedded name ('toy-gan'), by its card (``NAME.json``), or from a weights file: DeePSiM fc6
    (XDream's) or a WorldGAN, recognized by their tensors' shapes.  Frozen, in eval mode, on ``device``."""
    from .deepsim import is_deepsim, load_deepsim

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
        raise CheckpointError(f"generator weights do not fit {type(g).__name__}: {lines[1] if len(lines) > 1 else lines[0]}") from None


def sample(g: nn.Module, n: int, seed: int = 0, batch_size: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` codes drawn from the generator's prior N(0, code_sd²) and their images (on the CPU)."""
    codes = g.code_sd * torch.randn(n, g.latent_dim, generator=torch.Generator().manual_seed(seed))
    device = next(g.parameters()).device
    with torch.no_grad():
        images = torch.cat([g(codes[i:i + batch_size].to(device)).cpu() for i in range(0, n, batch_size)])
    return codes, images


def sheet(images: torch.Tensor, columns: int = 8, pad: int = 2) -> Image.Image:
    """A grid of N×3×H×W images in [0, 1] as one PIL image, white between the tiles."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    grid = torch.ones(3, rows * (h + pad) + pad, columns * (w + pad) + pad)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
    return Image.fromarray((grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())


def _standing_stats(g: WorldGAN, batches: int, batch_size: int, gen: torch.Generator) -> None:
    """Re-estimate the batch-norm statistics of (averaged) weights as the plain mean over prior samples."""
    for m in g.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    g.train()
    with torch.no_grad():
        for _ in range(batches):
            g(torch.randn(batch_size, g.latent_dim, generator=gen))
    for m in g.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    g.eval()


@restores_globals
def train_generator(name: str, out_dir: str | os.PathLike = GENERATORS_DIR, workers: int = 2,
                    epochs: int | None = None, n_train: int | None = None) -> dict:
    """Run a generator recipe: render the training split, train, write ``NAME.pt``, its card and sample sheet."""
    if name not in GENERATOR_RECIPES:
        raise UnknownNameError("generator recipe", name, GENERATOR_RECIPES)
    recipe = GENERATOR_RECIPES[name]
    if epochs is not None:
        recipe = replace(recipe, epochs=epochs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    world = World(**{k: tuple(v) if isinstance(v, list) else v for k, v in recipe.world.items()})
    t0 = time.time()
    data = ObjectImages("train", n_train, world, workers=workers, progress=True)
    render_s = time.time() - t0
    t1 = time.time()
    if recipe.family == "inverter":
        average, history, arch = _train_inverter(recipe, data, gen, out_dir)
    else:
        average, history = _train_gan(recipe, data, gen, world, out_dir)
        arch = {"family": "worldgan", "latent_dim": recipe.latent_dim, "width": recipe.width, "size": world.size,
                "code_sd": WorldGAN.code_sd}
    train_s = time.time() - t1
    weights = out_dir / f"{name}.pt"
    with atomic(weights) as tmp:
        torch.save(average.state_dict(), tmp)
    (out_dir / f"{name}.training.png").unlink(missing_ok=True)
    card = {
        "name": name, "kind": "generator", "description": recipe.description, "architecture": arch,
        "weights": weights.name, "sha256": sha256(weights),
        "data": {"world": asdict(world), "n_train": len(data)},
        "recipe": {**asdict(recipe), "command": f"phosphene train {name}"},
        "history": history,
        "timing": {"render_s": round(render_s, 1), "train_s": round(train_s, 1),
                   "device": f"{platform.processor() or platform.machine()} cpu, {torch.get_num_threads()} threads"},
    }
    return measure_generator(card, out_dir, workers)


def _train_inverter(recipe: GeneratorRecipe, data: ObjectImages, gen: torch.Generator,
                    out_dir: Path) -> tuple[FeatureInverter, list[dict], dict]:
    """DeePSiM's recipe without its adversary: the code basis from the encoder layer's principal components, then
    a decoder trained on the features (projected on that basis) to minimize pixel, comparator-feature and code
    (the features of its own image) errors, each divided by its variance over the data so the three weigh alike."""
    from .models import load_model

    enc = load_model(recipe.encoder, device="cpu").requires_grad_(False).eval()
    layer, comp = enc.layer(recipe.layer), enc.layer(recipe.comparator)
    with torch.no_grad():
        feats = torch.cat([enc.activations(data.images[i:i + 500], [layer])[layer].flatten(1)
                           for i in range(0, len(data), 500)])
    mean = feats.mean(0)
    torch.manual_seed(recipe.seed)
    _, sv, v = torch.pca_lowrank(feats - mean, q=recipe.latent_dim, center=False, niter=4)
    sd = sv / (len(feats) - 1) ** 0.5
    explained = float((sd ** 2).sum() / feats.var(0).sum())
    c, side = enc.activations(data.images[:1], [layer])[layer].shape[1:3]
    g = FeatureInverter(c, side, recipe.latent_dim, recipe.width, data.images.shape[-1])
    g.mean.copy_(mean)
    g.basis.copy_(v * sd)
    codes = ((feats - mean) @ v) / sd  # each training image's code: its features in the whitened basis
    del feats
    with torch.no_grad():
        sub = data.images[:500]
        var = {"pixel": float(sub.var()), "feature": float(enc.activations(sub, [comp])[comp].var()),
               "code": float(g.features(codes[:500]).var())}
    opt = torch.optim.Adam(g.decoder.parameters(), recipe.lr, betas=recipe.betas)
    steps = len(data) // recipe.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=max(1, recipe.epochs * steps),
                                                pct_start=0.1)
    history = []
    for epoch in range(recipe.epochs):
        order = torch.randperm(len(data), generator=gen)
        bar = tqdm(range(steps), desc=f"{recipe.name} epoch {epoch + 1}/{recipe.epochs}", unit="batch")
        sums = {"pixel": 0.0, "feature": 0.0, "code": 0.0}
        for b in bar:
            idx = order[b * recipe.batch_size:(b + 1) * recipe.batch_size]
            x, z = data.images[idx], codes[idx]
            target = g.features(z)
            y = g.decoder(target)
            with torch.no_grad():
                ref = enc.activations(x, [comp])[comp]
            got = enc.activations(y, [comp, layer], check=False)
            losses = {"pixel": (y - x).square().mean() / var["pixel"],
                      "feature": (got[comp] - ref).square().mean() / var["feature"],
                      "code": (got[layer] - target).square().mean() / var["code"]}
            loss = losses["pixel"] + recipe.feature_weight * losses["feature"] + recipe.code_weight * losses["code"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for k, v_ in losses.items():
                sums[k] += float(v_.detach())
            bar.set_postfix({k: f"{v_ / (b + 1):.3f}" for k, v_ in sums.items()})
        history.append({"epoch": epoch + 1, **{k: v_ / steps for k, v_ in sums.items()}})
        print(f"{recipe.name} epoch {epoch + 1}: " + ", ".join(f"{k} {v_ / steps:.3f}" for k, v_ in sums.items()))
        with torch.no_grad():  # progress: training images (top), their reconstructions, then prior samples
            prior = torch.randn(16, recipe.latent_dim, generator=torch.Generator().manual_seed(0))
            sheet(torch.cat([data.images[:16], g.decoder(g.features(codes[:16])), g(prior)])).save(
                out_dir / f"{recipe.name}.training.png")
    g.eval().requires_grad_(False)
    arch = {"family": "inverter", "latent_dim": recipe.latent_dim, "width": recipe.width,
            "size": int(data.images.shape[-1]), "code_sd": FeatureInverter.code_sd, "encoder": recipe.encoder,
            "layer": layer, "feature_shape": [int(c), int(side), int(side)], "explained_variance": explained,
            "loss_variances": var}
    return g, history, arch


def _train_gan(recipe: GeneratorRecipe, data: ObjectImages, gen: torch.Generator, world: World,
               out_dir: Path) -> tuple[WorldGAN, list[dict]]:
    """DCGAN training with the hinge loss against a spectrally normalized critic; returns the averaged weights."""
    name = recipe.name
    g, d = WorldGAN(recipe.latent_dim, recipe.width, world.size), Critic(recipe.width, world.size)
    for m in [*g.modules(), *d.modules()]:  # DCGAN's initialization
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02, generator=gen)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02, generator=gen)
            nn.init.zeros_(m.bias)
    average = WorldGAN(recipe.latent_dim, recipe.width, world.size)
    average.load_state_dict(g.state_dict())
    average.requires_grad_(False)
    opt_g = torch.optim.Adam(g.parameters(), recipe.lr, betas=recipe.betas)
    opt_d = torch.optim.Adam(d.parameters(), recipe.lr, betas=recipe.betas)
    steps = len(data) // recipe.batch_size
    fixed = torch.randn(64, recipe.latent_dim, generator=gen)
    history = []
    for epoch in range(recipe.epochs):
        order = torch.randperm(len(data), generator=gen)
        bar = tqdm(range(steps), desc=f"{name} epoch {epoch + 1}/{recipe.epochs}", unit="batch")
        sums = {"d_loss": 0.0, "g_loss": 0.0, "real": 0.0, "fake": 0.0}
        for b in bar:
            x = data.images[order[b * recipe.batch_size:(b + 1) * recipe.batch_size]]
            flip = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            fake = g(torch.randn(len(x), recipe.latent_dim, generator=gen))
            real_score, fake_score = d(x), d(fake.detach())
            d_loss = torch.relu(1 - real_score).mean() + torch.relu(1 + fake_score).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            g_loss = -d(fake).mean()
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            with torch.no_grad():
                for pa, pg in zip(average.parameters(), g.parameters()):
                    pa.lerp_(pg, 1 - recipe.ema)
            for k, v in (("d_loss", d_loss), ("g_loss", g_loss), ("real", real_score.mean()),
                         ("fake", fake_score.mean())):
                sums[k] += float(v.detach())
            bar.set_postfix({k: f"{v / (b + 1):.3f}" for k, v in sums.items()})
        history.append({"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()}})
        print(f"{name} epoch {epoch + 1}: " + ", ".join(f"{k} {v / steps:.3f}" for k, v in sums.items()))
        _standing_stats(average, 10, 250, torch.Generator().manual_seed(epoch))
        g.eval()
        with torch.no_grad():  # progress: the trained weights (top) and their running average (bottom)
            sheet(torch.cat([g(fixed[:32]), average(fixed[:32])])).save(out_dir / f"{name}.training.png")
        g.train()
    _standing_stats(average, 50, 250, gen)
    return average, history


def measure_generator(card: dict, out_dir: str | os.PathLike = GENERATORS_DIR, workers: int = 2) -> dict:
    """The card's measures of how world-like the samples are, through the recipe's judge classifier: the share of
    ``eval_n`` prior samples it classifies with confidence >= ``confidence``, their category histogram, the same
    share for real test images; writes ``NAME.json``, ``NAME.md`` and the sample sheet ``NAME.png``."""
    from .models import load_model

    out_dir = Path(out_dir)
    recipe = GENERATOR_RECIPES[card["name"]]
    g = _from_card(card, out_dir).requires_grad_(False)
    judge = load_model(recipe.judge, device="cpu")
    _, images = sample(g, recipe.eval_n, seed=recipe.seed + 1)
    world = World(**{k: tuple(v) if isinstance(v, list) else v for k, v in recipe.world.items()})
    real = ObjectImages("test", recipe.eval_n, world, workers=workers).images

    def judged(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            p = torch.cat([torch.softmax(judge(x[i:i + 500]), 1) for i in range(0, len(x), 500)])
        return p.max(1).values, p.argmax(1)

    def histogram(x: torch.Tensor) -> tuple[float, torch.Tensor]:
        conf, label = judged(x)
        confident = conf >= recipe.confidence
        return float(confident.double().mean()), torch.bincount(label[confident], minlength=len(judge.classes))

    share, counts = histogram(images)
    # The floor: random Fourier images (lucid's noise start) are mostly called something with confidence too, but
    # nearly all the same one or two things; a world-like generator spreads its samples over the categories.
    noise = Fourier(recipe.eval_n, world.size, torch.Generator().manual_seed(recipe.seed), sd=0.5).image().detach()
    noise_share, noise_counts = histogram(noise)
    spread = lambda k: int((k >= SPREAD * max(1, int(k.sum()))).sum())  # noqa: E731
    card["metrics"] = {
        "judge": recipe.judge, "confidence": recipe.confidence, "n": recipe.eval_n,
        "confident_share": share,
        "histogram": {c: int(k) for c, k in zip(judge.classes, counts)},
        "categories_present": int((counts > 0).sum()), "categories_spread": spread(counts),
        "noise_confident_share": noise_share,
        "noise_histogram": {c: int(k) for c, k in zip(judge.classes, noise_counts)},
        "noise_categories_spread": spread(noise_counts),
        "real_confident_share": histogram(real)[0],
        "pixel_mean": float(images.mean()), "real_pixel_mean": float(real.mean()),
    }
    card["versions"] = {"phosphene": __version__, "torch": torch.__version__, "numpy": np.__version__}
    sheet(images[:64]).save(out_dir / f"{card['name']}.png")
    write_text(out_dir / f"{card['name']}.json", json.dumps(card, indent=2))
    write_text(out_dir / f"{card['name']}.md", generator_card_markdown(card))
    return card


def remeasure_generator(name: str, out_dir: str | os.PathLike = GENERATORS_DIR, workers: int = 2) -> dict:
    """Re-measure a shipped generator's card without training again."""
    if name not in GENERATOR_RECIPES:
        raise UnknownNameError("generator recipe", name, GENERATOR_RECIPES)
    out_dir = Path(out_dir)
    card = json.loads((out_dir / f"{name}.json").read_text())
    if sha256(out_dir / card["weights"]) != card["sha256"]:
        raise CheckpointError(f"{card['weights']} does not match the sha256 in its card; retrain with "
                              f"phosphene train {name}")
    return measure_generator(card, out_dir, workers)


def generator_card_markdown(card: dict) -> str:
    """A human-readable card from the JSON one."""
    m, r, t, a = card["metrics"], card["recipe"], card["timing"], card["architecture"]
    hist = ", ".join(f"{c} {k}" for c, k in m["histogram"].items())
    noise = ", ".join(f"{c} {k}" for c, k in m["noise_histogram"].items() if k)
    if a["family"] == "inverter":
        what = (f"feature inverter: code of {a['latent_dim']} ~ N(0, {a['code_sd']:g}²) → {a['encoder']} "
                f"{a['layer']} features ({'×'.join(map(str, a['feature_shape']))}; the code's components hold "
                f"{a['explained_variance']:.0%} of their variance) → {a['size']}×{a['size']} RGB, width {a['width']}")
        losses = ", ".join(f"{k} {v:.3f}" for k, v in card["history"][-1].items() if k != "epoch")
        what += f" |\n| final losses (each ÷ its variance) | {losses}"
    else:
        what = (f"DCGAN generator, code of {a['latent_dim']} ~ N(0, {a['code_sd']:g}²) → {a['size']}×{a['size']} "
                f"RGB, width {a['width']}")
    return "\n".join([
        f"# {card['name']}", "", card["description"], "",
        "| | |", "|---|---|",
        f"| architecture | {what} |",
        f"| samples {m['judge']} classifies with confidence ≥ {m['confidence']:g} (n={m['n']}) | "
        f"{m['confident_share']:.1%} (real test images: {m['real_confident_share']:.1%}) |",
        f"| their categories ({m['categories_present']} of {len(m['histogram'])} present, "
        f"{m['categories_spread']} with ≥ {SPREAD:.0%} of them) | {hist} |",
        f"| the same for random Fourier images (the floor: {m['judge']} is confident on noise) | "
        f"{m['noise_confident_share']:.1%}, {m['noise_categories_spread']} categories with ≥ {SPREAD:.0%}: {noise} |",
        f"| mean pixel, samples / real | {m['pixel_mean']:.3f} / {m['real_pixel_mean']:.3f} |",
        f"| epochs / batch / lr | {r['epochs']} / {r['batch_size']} / {r['lr']} (Adam, betas {tuple(r['betas'])})"
        + (f", weight average {r['ema']} |" if a["family"] != "inverter" else ", one-cycle schedule |"),
        f"| training time | {t['train_s'] / 60:.1f} min on {t['device']} (+{t['render_s']:.0f} s rendering) |",
        f"| data | embedded world {card['data']['world']}, {card['data']['n_train']} training images |",
        f"| reproduce | `{r['command']}` (seed {r['seed']}) |",
        f"| weights sha256 | `{card['sha256'][:16]}…` |",
        "", f"![samples]({card['name']}.png)", "",
    ])
