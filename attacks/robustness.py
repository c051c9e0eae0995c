"""The robustness table of Dapello et al. 2020 (VOneNet): clean, white-box, corruption and mean accuracy.

    table = attacks.robustness_table(["toy-standard", "toy-robust", "toy-vone"])   # embedded test split
    table.save("out/")      # robustness.csv, robustness.md, robustness.png, conditions.csv, robustness.json

White-box accuracy is ``attacks.pgd`` at every budget of an L-inf and an L2 sweep (no attack loop here), with
expectation over transformation for a stochastic model: its gradients and its verdicts are the mean over ``eot``
noise draws, under every condition, clean included.  Common corruptions are the ImageNet-C families (Hendrycks &
Dietterich 2019) at five severities, made by the ``imagecorruptions`` functions at the model's input size.  As in
the VOneNet table, the white-box mean averages every budget of both norms, the corruption mean every corruption
and severity, the perturbation mean those two, and the overall mean clean, white-box and corruption.
"""
from __future__ import annotations

import csv
import os
import platform
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from synth import __version__
from synth.errors import ConfigError, ImageError, UnknownNameError
from synth.files import load_record, save_record, write_csv, write_text
from synth.rng import seeded_globals
from synth.zoo.probe import ProbeModel

from .common import logits, read_budgets
from .evaluate import STOCHASTIC_DEFAULTS, evaluate
from .pgd import pgd

# VOneNet's white-box budgets: L-inf in pixel units, L2 at 224 px (scaled to the model's size by side / 224,
# since an L2 norm grows with the square root of the pixel count).
LINF_EPS = ("1/1020", "1/255", "4/255")
L2_EPS_224 = (0.15, 0.6, 2.4)
# ImageNet-C's 15 benchmark corruptions by family, and the 4 held-out ("validation") ones.
FAMILIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
SEVERITIES = (1, 2, 3, 4, 5)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


# ------------------------------------------------------------------------------------------------ budgets
def l2_budgets(size: int) -> list[float]:
    """VOneNet's L2 budgets scaled from 224 px to ``size`` px, to two significant digits."""
    return [float(f"{e * size / 224:.2g}") for e in L2_EPS_224]


def condition_name(norm: str, eps: float) -> str:
    """A column name such as 'pgd_linf_4/255' or 'pgd_l2_0.17'."""
    if norm == "linf":
        return f"pgd_linf_{eps * 255:.4g}/255"
    return f"pgd_l2_{eps:.4g}"


# ------------------------------------------------------------------------------------------------ data
@dataclass
class EvalImages:
    """Images (each 3×H×W in [0,1], sizes may differ) with category names and where they came from."""

    images: list[torch.Tensor]
    categories: list[str]
    source: str
    _sized: dict = field(default_factory=dict, repr=False)

    def at(self, size: int | None) -> torch.Tensor:
        """The images as one N×3×size×size batch (resized where needed; native size when ``size`` is None)."""
        if size not in self._sized:
            shapes = {tuple(i.shape[-2:]) for i in self.images}
            if size is None and len(shapes) > 1:
                raise ImageError(f"images in {self.source} differ in size ({sorted(shapes)}) and the model has no "
                                 "input size to resize them to")
            self._sized[size] = torch.stack([
                i if size is None or tuple(i.shape[-2:]) == (size, size) else
                F.interpolate(i[None], size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False)[0].clamp(0, 1) for i in self.images])
        return self._sized[size]


def embedded_images(n: int = 256, split: str = "test", workers: int = 2) -> EvalImages:
    """``n`` images of a split of the embedded world (all categories in turn)."""
    from synth.world.data import render

    batch = render(n, split, workers=workers)
    return EvalImages(list(batch.tensor()), [batch.classes[i] for i in batch.labels],
                      f"embedded {split} split ({n} images)")


def image_folder(path: str | os.PathLike, limit: int | None = None) -> EvalImages:
    """An ImageFolder directory: one sub-folder per category, named as the model's classes; every image in it is
    read (any mode is converted to RGB), and one that cannot be read stops with its path named."""
    from synth.files import read_png

    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"data folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ConfigError(f"{root} has no sub-folders: an evaluation folder holds one sub-folder per category")
    images, categories = [], []
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        for f in files[:limit]:
            images.append(read_png(f)[0])  # ImageError names the file
            categories.append(folder.name)
    if not images:
        raise ConfigError(f"no images in the sub-folders of {root} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return EvalImages(images, categories, f"{root} ({len(images)} images in {len(folders)} folders)")


def _canon(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", name.strip().lower())


def match_labels(model: ProbeModel, data: EvalImages) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Indices of the images whose category names a class of the model, their class indices, and the category
    names that matched none (those images are left out)."""
    classes = {_canon(c): i for i, c in enumerate(model.classes)}
    names = sorted(set(data.categories))
    unmatched = [c for c in names if _canon(c) not in classes]
    if len(unmatched) == len(names):
        raise ConfigError(f"none of the categories of {data.source} ({', '.join(names[:8])}"
                          f"{', ...' if len(names) > 8 else ''}) names a class of {model.name} "
                          f"(its classes: {', '.join(model.classes[:8])}{', ...' if len(model.classes) > 8 else ''}); "
                          "name each sub-folder after a class")
    keep = [i for i, c in enumerate(data.categories) if _canon(c) in classes]
    labels = torch.tensor([classes[_canon(data.categories[i])] for i in keep])
    return torch.tensor(keep), labels, unmatched


# ------------------------------------------------------------------------------------------------ corruptions
def corruption_names(which: str | Sequence[str] = "common") -> list[str]:
    """'common' (ImageNet-C's 15), 'all' (the 19 of ``imagecorruptions``), a family name, or names (a list or
    comma-separated)."""
    if isinstance(which, str) and which in ("common", "all", *FAMILIES):
        names = [c for f in FAMILIES.values() for c in f] if which in ("common", "all") else list(FAMILIES[which])
        return names + list(EXTRA) if which == "all" else names
    names = [c.strip() for c in which.split(",") if c.strip()] if isinstance(which, str) else list(which)
    known = [c for f in FAMILIES.values() for c in f] + list(EXTRA)
    for c in names:
        if c not in known:
            raise UnknownNameError("corruption", c, ["common", "all", *FAMILIES, *known])
    return names


def family_of(corruption: str) -> str:
    """The ImageNet-C family of a corruption ('extra' for the held-out four)."""
    return next((f for f, members in FAMILIES.items() if corruption in members), "extra")


def _corrupt_job(args: tuple[np.ndarray, str, int, int]) -> np.ndarray:
    """One corruption at one severity over uint8 N×H×W×3 images, each with its own seed."""
    import warnings

    from imagecorruptions import corrupt

    images, name, severity, seed = args
    out = np.empty_like(images)
    kwargs = {}
    for i, img in enumerate(images):
        s = (seed * 1_000_003 + i) % (2 ** 31)
        if name in ("glass_blur", "impulse_noise"):
            kwargs = {"seed": s}
        with warnings.catch_warnings(), seeded_globals(s):  # most corruptions draw from numpy's global generator
            warnings.simplefilter("ignore")
            out[i] = corrupt(img, severity=severity, corruption_name=name, **kwargs)
    return out


def corrupted(x: torch.Tensor, names: Sequence[str], severities: Sequence[int], seed: int = 0, workers: int = 2,
              progress: bool = True) -> dict[tuple[str, int], torch.Tensor]:
    """Every corruption at every severity of an N×3×H×W batch (quantized to 8 bits, as ImageNet-C is)."""
    try:
        import imagecorruptions  # noqa: F401
    except ImportError as e:  # the original 'imagecorruptions' 1.1.2 needs pkg_resources
        raise ConfigError(f"cannot import imagecorruptions ({e}); install the 'imagecorruptions-imaug' "
                          "package") from None
    if min(x.shape[-2:]) < 32:
        raise ImageError(f"corruptions need images of at least 32×32 pixels, got {tuple(x.shape[-2:])}")
    for s in severities:
        if s not in SEVERITIES:
            raise ConfigError(f"severities are 1 to 5, got {s}")
    u8 = (x.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    jobs = [(u8, c, s, seed + 7 * k + s) for k, c in enumerate(names) for s in severities]
    bar = tqdm(total=len(jobs), desc=f"corrupting {len(x)} images", unit="condition", disable=not progress)
    results = []
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for r in pool.map(_corrupt_job, jobs):
                results.append(r)
                bar.update()
    else:
        for job in jobs:
            results.append(_corrupt_job(job))
            bar.update()
    bar.close()
    return {(c, s): torch.from_numpy(r).permute(0, 3, 1, 2).float().div(255)
            for (_, c, s, _), r in zip(jobs, results)}


# ------------------------------------------------------------------------------------------------ the table
FORMAT_VERSION = 1  # 1: one record format (synth.files.save_record); 0: robustness.json without kind or conditions


@dataclass
class RobustnessTable:
    """One row per model (accuracy by condition and the means), the long-form conditions, and the settings."""

    rows: list[dict]
    conditions: list[dict]
    settings: dict

    def column(self, model: str, name: str) -> float:
        """One number of the table, e.g. ``column('toy-robust', 'pgd_linf_4/255')``."""
        return next(r[name] for r in self.rows if r["model"] == model)

    def markdown(self) -> str:
        """The summary (clean, each white-box budget, corruption families, means) and accuracy by severity."""
        wb = [k for k in self.rows[0] if k.startswith("pgd_")]
        fams = [f"corruption_{f}" for f in (*FAMILIES, "extra") if f"corruption_{f}" in self.rows[0]]
        cols = ["clean", *wb, "whitebox_mean", *fams, "corruption_mean", "perturbation_mean", "mean"]
        head = ["model", *cols]
        lines = ["| " + " | ".join(h.replace("_", " ") for h in head) + " |", "|---" * len(head) + "|"]
        for r in self.rows:
            lines.append("| " + " | ".join([r["model"], *(f"{100 * r[c]:.1f}" for c in cols)]) + " |")
        sev = [f"severity_{s}" for s in self.settings["severities"]]
        lines += ["", "Corruption accuracy by severity (mean over corruptions):", "",
                  "| model | clean | " + " | ".join(str(s) for s in self.settings["severities"]) + " |",
                  "|---" * (len(sev) + 2) + "|"]
        for r in self.rows:
            lines.append("| " + " | ".join([r["model"], f"{100 * r['clean']:.1f}",
                                             *(f"{100 * r[s]:.1f}" for s in sev)]) + " |")
        s = self.settings
        white = s.get("white_box", "attacks.pgd")  # tables written before evaluate: the PGD sweep alone
        old = white.endswith("pgd, apgd-ce, apgd-t, square")  # before the cascade began with APGD-CE
        how = (f"`attacks.pgd` ({s['steps']} Auto-PGD steps, random start" if white.startswith("attacks.pgd") else
               f"`attacks.evaluate` (a {s['steps']}-step PGD sweep, then APGD-CE, APGD-T and Square on the images "
               "still unbroken; Square left out for stochastic models" if old else
               f"`attacks.evaluate` (APGD-CE, then {s['steps']}-step APGD-T runs and Square's probe on the images "
               "still unbroken; Square left out for stochastic models" if s["steps"] is not None else
               "`attacks.evaluate` with its defaults (APGD-CE, 30 steps, then APGD-T towards 3 classes, 100 steps "
               "each, and Square's probe on the images still unbroken; on stochastic models "
               + (f"{s['stochastic_defaults']['first_steps']} steps of APGD-CE at half the verdict's draws per "
                  f"step, then APGD-T towards {s['stochastic_defaults']['targets']} class for "
                  f"{s['stochastic_defaults']['steps']} steps with more draws where fewer images are left, and no "
                  "Square" if "stochastic_defaults" in s else
                  "20 steps, 1 target, 3 of every 8 of the verdict's draws per step and no Square"))
        lines += ["", f"Accuracy in %, {s['data']}. White-box: {how}; stochastic models with EOT over {s['eot']} "
                  "draws: "
                  f"{', '.join(s['stochastic']) or 'none'}). "
                  f"Corruptions: {len(s['corruptions'])} from `imagecorruptions` at severities "
                  f"{', '.join(map(str, s['severities']))}. Seed {s['seed']}; {s['seconds']:.0f} s in all "
                  f"({', '.join(f'{m} {t:.0f} s' for m, t in s['model_seconds'].items())}) on {s['device']}; "
                  f"phosphene {s['versions']['phosphene']}.", ""]
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike) -> Path:
        """Accuracy against L-inf ε, L2 ε and corruption severity, one line per model."""
        from .figures import plt, save_figure

        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
        for r in self.rows:
            for ax, norm in zip(axes[:2], ("linf", "l2")):
                pts = sorted((c["eps"], c["accuracy"]) for c in self.conditions
                             if c["model"] == r["model"] and c["kind"] == f"pgd_{norm}")
                scale = 255 if norm == "linf" else 1
                ax.plot([0] + [e * scale for e, _ in pts], [r["clean"]] + [a for _, a in pts], marker="o", ms=3,
                        label=r["model"])
            sev = self.settings["severities"]
            axes[2].plot([0, *sev], [r["clean"], *(r[f"severity_{s}"] for s in sev)], marker="o", ms=3,
                         label=r["model"])
        for ax, xlabel in zip(axes, ("ε (×1/255, L-inf PGD)", "ε (L2 PGD)", "corruption severity (0 = clean)")):
            ax.set_xlabel(xlabel)
            ax.set_ylabel("accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"Robustness on {self.settings['data']}", fontsize=10)
        fig.tight_layout()
        return save_figure(fig, path)

    def save(self, out: str | os.PathLike) -> dict[str, Path]:
        """Write robustness.csv (one row per model), conditions.csv, robustness.md, robustness.png and the record
        ``robustness`` (``synth.files.save_record``: robustness.json with the rows, conditions, settings and
        versions) into ``out``; every file is written atomically."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"csv": out / "robustness.csv", "conditions": out / "conditions.csv", "markdown": out / "robustness.md",
                 "plot": out / "robustness.png", "json": out / "robustness.json"}
        write_csv(paths["csv"], self.rows)
        write_csv(paths["conditions"], self.conditions)
        write_text(paths["markdown"], "# Robustness\n\n![accuracy against ε and severity](robustness.png)\n\n"
                   + self.markdown())
        self.plot(paths["plot"])
        save_record(out / "robustness", "robustness", FORMAT_VERSION, {},
                    {"rows": self.rows, "conditions": self.conditions, "settings": self.settings})
        return paths

    @classmethod
    def load(cls, out: str | os.PathLike) -> RobustnessTable:
        """Read a saved table back from robustness.json (a table saved before it held the conditions: those from
        conditions.csv)."""
        out = Path(out)
        _, blob = load_record(out / "robustness", "robustness", FORMAT_VERSION)
        if blob.get("format", 0) >= 1:
            return cls(blob["rows"], blob["conditions"], blob["settings"])
        with open(out / "conditions.csv", newline="") as f:
            conds = [{k: (float(v) if k in ("eps", "accuracy") else int(v) if k in ("severity", "n") else v)
                      for k, v in r.items()} for r in csv.DictReader(f)]
        return cls(blob["rows"], conds, blob["settings"])


def _white_box(model: ProbeModel, x: torch.Tensor, y: torch.Tensor, budgets: Sequence[float], norm: str, steps: int,
               draws: int, seed: int, batch_size: int, quick: bool) -> list[tuple[float, float]]:
    """(budget, accuracy) pairs under the cascade of ``evaluate`` or, ``quick``, the PGD sweep alone."""
    if quick:
        res = pgd(model, x, y, budgets, norm=norm, steps=steps, eot=draws, seed=seed, batch_size=batch_size,
                  progress=False)
    else:
        res = evaluate(model, x, y, budgets, norm=norm, steps=steps, eot=draws, seed=seed, progress=False)
    return list(zip(res.eps.tolist(), res.accuracy.tolist()))


def _accuracy(model: ProbeModel, x: torch.Tensor, y: torch.Tensor, draws: int, seed: int) -> float:
    with torch.no_grad():
        return float((logits(model, x, draws, seed=seed).argmax(1).cpu() == y.cpu()).float().mean())


def robustness_table(models: Sequence[str | ProbeModel] | Mapping[str, ProbeModel], data: EvalImages | None = None, *,
             linf: str | Sequence = LINF_EPS, l2: str | Sequence | None = None, steps: int | None = None, eot: int = 8,
             corruptions: str | Sequence[str] = "common", severities: Sequence[int] = SEVERITIES, n: int = 256,
             seed: int = 0, workers: int = 2, batch_size: int = 256, quick: bool = False, progress: bool = True,
             log=print) -> RobustnessTable:
    """The robustness table for several models on the same images: clean accuracy, white-box accuracy at
    each L-inf and L2 budget — ``attacks.evaluate``'s cascade (APGD-CE, APGD-T and Square's probe, ``steps`` steps
    each, default evaluate's own per model), or with ``quick`` a PGD sweep alone (default 20 steps) — (``l2``
    defaults to VOneNet's budgets scaled to the model's input size) — accuracy under each corruption and
    severity, and the means.  ``data``: an ``EvalImages`` (``image_folder(DIR)``),
    default ``n`` images of the embedded test split; ``eot``: noise draws per step and per verdict for stochastic
    models; ``log``: where the notes on budgets and left-out folders go."""
    from synth.zoo.models import default_device, load_model

    t_start = time.perf_counter()
    steps = 20 if steps is None and quick else steps  # evaluate: None keeps its own defaults, per model
    if (steps is not None and steps < 1) or eot < 1:
        raise ConfigError(f"steps and eot must be >= 1, got {steps} and {eot}")
    named = dict(models) if isinstance(models, Mapping) else {
        (m.name if isinstance(m, ProbeModel) else str(m)): m for m in models}
    if not named:
        raise ConfigError("no models to evaluate")
    probes = {k: m if isinstance(m, ProbeModel) else load_model(m) for k, m in named.items()}
    linf_eps, notes = read_budgets("linf", linf)
    l2_given = None
    if l2 is not None:
        l2_given, l2_notes = read_budgets("l2", l2)
        notes += l2_notes
    for line in notes:
        log(line)
    names = corruption_names(corruptions)
    data = data if data is not None else embedded_images(n, workers=workers)
    rows, conds, model_seconds, stochastic, cache = [], [], {}, [], {}
    for key, model in probes.items():
        t0 = time.perf_counter()
        idx, y, unmatched = match_labels(model, data)
        if unmatched:
            log(f"{key}: left out {len(data.categories) - len(idx)} images of {', '.join(unmatched)} "
                "(no class of that name)")
        size = model.input_size
        x = data.at(size)[idx]
        l2_eps = l2_budgets(x.shape[-1]) if l2_given is None else l2_given
        draws = eot if model.stochastic else 1
        if draws > 1:
            stochastic.append(key)
        cache_key = (tuple(x.shape), size, tuple(idx.tolist()))
        if cache_key not in cache:
            cache[cache_key] = corrupted(x, names, severities, seed, workers, progress)
        corr = cache[cache_key]
        bar = tqdm(total=1 + 2 + len(corr), desc=key, unit="condition", disable=not progress)
        row = {"model": key, "n": len(x), "eot": draws}
        bar.set_postfix_str("clean")
        row["clean"] = _accuracy(model, x, y, draws, seed)
        bar.update()
        wb = []
        for norm, budgets in (("linf", linf_eps), ("l2", l2_eps)):
            bar.set_postfix_str(f"{'pgd' if quick else 'evaluate'} {norm}")
            for e, a in _white_box(model, x, y, budgets, norm, steps, draws, seed, batch_size, quick):
                name = condition_name(norm, e)
                row[name] = a
                wb.append(a)
                conds.append({"model": key, "kind": f"pgd_{norm}", "condition": name, "family": "white-box",
                              "eps": e, "severity": 0, "accuracy": a, "n": len(x)})
            bar.update()
        per_corr: dict[str, list[float]] = {}
        per_sev: dict[int, list[float]] = {}
        for (c, s), xc in corr.items():
            bar.set_postfix_str(f"{c} {s}")
            a = _accuracy(model, xc, y, draws, seed)
            per_corr.setdefault(c, []).append(a)
            per_sev.setdefault(s, []).append(a)
            conds.append({"model": key, "kind": "corruption", "condition": c, "family": family_of(c), "eps": 0.0,
                          "severity": s, "accuracy": a, "n": len(x)})
            bar.update()
        bar.close()
        row["whitebox_mean"] = float(np.mean(wb))
        for fam in (*FAMILIES, "extra"):
            members = [np.mean(v) for c, v in per_corr.items() if family_of(c) == fam]
            if members:
                row[f"corruption_{fam}"] = float(np.mean(members))
        row["corruption_mean"] = float(np.mean([a for v in per_corr.values() for a in v]))
        row["perturbation_mean"] = (row["whitebox_mean"] + row["corruption_mean"]) / 2
        row["mean"] = (row["clean"] + row["whitebox_mean"] + row["corruption_mean"]) / 3
        row.update({f"corruption_{c}": float(np.mean(v)) for c, v in per_corr.items()})
        row.update({f"severity_{s}": float(np.mean(v)) for s, v in sorted(per_sev.items())})
        model_seconds[key] = time.perf_counter() - t0
        row["seconds"] = round(model_seconds[key], 1)
        rows.append(row)
    settings = {
        "data": data.source, "linf": linf_eps, "l2": l2 if l2 is not None else "VOneNet's scaled by size/224",
        "white_box": "attacks.pgd (quick)" if quick else "attacks.evaluate: apgd-ce, apgd-t, square",
        "steps": steps, "eot": eot, "stochastic": stochastic, "stochastic_defaults": STOCHASTIC_DEFAULTS,
        "corruptions": names, "severities": list(severities),
        "seed": seed, "batch_size": batch_size, "seconds": time.perf_counter() - t_start,
        "model_seconds": {k: round(v, 1) for k, v in model_seconds.items()},
        "device": f"{default_device()} ({platform.machine()}, {torch.get_num_threads()} threads)",
        "versions": {"phosphene": __version__, "torch": torch.__version__},
        "models": {k: {"weights": m.info.get("weights"), "weights_sha256": m.weights_digest()}
                   for k, m in probes.items()},
    }
    return RobustnessTable(rows, conds, settings)

