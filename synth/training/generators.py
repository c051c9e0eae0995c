"""Training recipes of the embedded generators (toy-deepsim, toy-gan): train, measure, and write weights, card and
sample sheet (the architectures and their loading are ``synth.zoo.generators``'s)."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from synth.engine.params import Fourier
from synth.errors import CheckpointError, UnknownNameError
from synth.files import sha256
from synth.rng import restores_globals
from synth.training.recipes import recipe_named, trained_card, world_of, write_card
from synth.world.data import ObjectImages, World
from synth.zoo.generators import GENERATORS_DIR, SPREAD, Critic, FeatureInverter, WorldGAN, _from_card


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
    recipe = recipe_named(GENERATOR_RECIPES, "generator recipe", name, epochs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    gen = torch.Generator().manual_seed(recipe.seed)
    world = world_of(recipe.world)
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
    card = trained_card(name, asdict(recipe), average, out_dir,
                        {"kind": "generator", "description": recipe.description, "architecture": arch},
                        {"world": asdict(world), "n_train": len(data)}, history, (render_s, train_s))
    (out_dir / f"{name}.training.png").unlink(missing_ok=True)
    return measure_generator(card, out_dir, workers)


def _train_inverter(recipe: GeneratorRecipe, data: ObjectImages, gen: torch.Generator,
                    out_dir: Path) -> tuple[FeatureInverter, list[dict], dict]:
    """DeePSiM's recipe without its adversary: the code basis from the encoder layer's principal components, then
    a decoder trained on the features (projected on that basis) to minimize pixel, comparator-feature and code
    (the features of its own image) errors, each divided by its variance over the data so the three weigh alike."""
    from synth.zoo.models import load_model

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
    from synth.zoo.models import load_model

    out_dir = Path(out_dir)
    recipe = GENERATOR_RECIPES[card["name"]]
    g = _from_card(card, out_dir).requires_grad_(False)
    judge = load_model(recipe.judge, device="cpu")
    _, images = sample(g, recipe.eval_n, seed=recipe.seed + 1)
    world = world_of(recipe.world)
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
    sheet(images[:64]).save(out_dir / f"{card['name']}.png")
    return write_card(card, out_dir, generator_card_markdown)


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
