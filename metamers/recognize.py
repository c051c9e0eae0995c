"""Feather et al.'s recognizability experiment with other models as observers: metamers of every generating model
at every stage, classified by every observer model.

A metamer is recognized when an observer gives it the reference image's category.  Non-robust observers are
fooled by the high-frequency residue that metamer optimization leaves in any image (measured on scratch models
here: raw recognition of a standard model's IT metamers 0.22 against 0.25 for a robust model's, although only
the latter show the object), so each observer also judges the metamers through a 1-pixel Gaussian blur: an
optical front-end like the eye's, under which natural images are still recognized but the residue is not.  The
headline number for a generating model and stage is the mean over the *other* models (an observer that made the
metamer matches it by construction) of their recognition through the blur; the raw numbers are reported beside
it.  Each observer's accuracy on the reference images themselves, raw and blurred, bounds what it can do.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from synth import __version__
from synth.engine.params import gaussian_blur
from synth.errors import ConfigError
from synth.files import write_csv, write_text
from synth.rng import seeded_globals
from synth.zoo.models import load_model
from synth.zoo.probe import ProbeModel

from .generate import RETRY_LR, STEPS, MetamerResult, generate

STAGES = ("V1", "V2", "V4", "IT", "logits")
VIEWS = {"raw": 0.0, "blur": 1.0}  # Gaussian σ in pixels of the observer's view
DRAWS = 8                           # a stochastic observer's verdict is its mean logits over this many draws


def observe(model: ProbeModel, images: torch.Tensor, sigma: float = 0.0, batch: int = 128,
            seed: int = 0) -> torch.Tensor:
    """An observer's category for each image, seen through a Gaussian blur of ``sigma`` px (none at 0); a
    stochastic observer answers with the mean of its logits over ``DRAWS`` noise draws, drawn from ``seed`` so that
    a verdict does not depend on what ran before it (the global generator is left as it was)."""
    draws = DRAWS if model.stochastic else 1
    out = []
    with torch.no_grad(), seeded_globals(seed):  # a seeded copy of the global generators, restored afterwards
        for i in range(0, images.shape[0], batch):
            x = gaussian_blur(images[i:i + batch], sigma).clamp(0, 1).to(model.device)
            z = model.activations(x, "logits", draws=draws)["logits"]
            out.append(z.view(draws, x.shape[0], -1).mean(0).argmax(1).cpu())
    return torch.cat(out)


@dataclass
class Recognizability:
    """Recognition accuracy by generating model × stage × observer × view, with pass rates and settings."""

    accuracy: dict[str, dict[str, dict[str, dict[str, float]]]]   # [generator][stage][observer][view]
    references: dict[str, dict[str, float]]                       # [observer][view] on the natural images
    pass_rates: dict[str, dict[str, dict[str, float]]]            # [generator][stage] -> criterion / error / both
    settings: dict = field(default_factory=dict)

    def headline(self, generator: str, stage: str, view: str = "blur") -> float:
        """The mean recognition by the observers other than the generating model."""
        obs = {o: v[view] for o, v in self.accuracy[generator][stage].items() if o != generator}
        return sum(obs.values()) / len(obs) if obs else float("nan")

    def rows(self) -> list[dict]:
        """Long form: one row per generator, stage, observer and view."""
        return [{"generator": g, "stage": s, "observer": o, "view": v, "accuracy": round(a, 4)}
                for g, by_stage in self.accuracy.items() for s, by_obs in by_stage.items()
                for o, by_view in by_obs.items() for v, a in by_view.items()]

    def markdown(self, figures: Sequence[str] = ()) -> str:
        """The report: pass rates, the headline matrix, every observer's numbers, how observers were chosen."""
        gens = list(self.accuracy)
        stages = list(next(iter(self.accuracy.values())))
        observers = list(self.references)
        chance = 1 / self.settings.get("classes", 8)
        lines = ["# Model metamers: recognizability by other models", ""]
        lines += [f"![{f}]({f})" for f in figures] + ([""] if figures else [])
        lines += ["## Pass rate (Feather's criterion and normalized error <= "
                  f"{self.settings.get('error_target', 0.05):g} at the matched stage)", "",
                  "| model | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
        for g in gens:
            cells = [f"{self.pass_rates[g][s]['passed']:.0%} ({self.pass_rates[g][s]['criterion']:.0%} / "
                     f"{self.pass_rates[g][s]['error']:.0%})" for s in stages]
            lines.append(f"| {g} | " + " | ".join(cells) + " |")
        lines += ["", "Each cell: both, (criterion alone / error target alone).", "",
                  "## Recognition by the other models, through a 1-px blur (headline)", "",
                  "| generating model | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
        for g in gens:
            lines.append(f"| {g} | " + " | ".join(f"{self.headline(g, s):.2f}" for s in stages) + " |")
        lines += ["", "## Recognition by the other models, raw", "",
                  "| generating model | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
        for g in gens:
            lines.append(f"| {g} | " + " | ".join(f"{self.headline(g, s, 'raw'):.2f}" for s in stages) + " |")
        lines += ["", "## Every observer (raw / blurred)", "",
                  "| generating model | stage | " + " | ".join(observers) + " |", "|---|---|" + "---|" * len(observers)]
        for g in gens:
            for s in stages:
                cells = [f"{self.accuracy[g][s][o]['raw']:.2f} / {self.accuracy[g][s][o]['blur']:.2f}"
                         + (" (self)" if o == g else "") for o in observers]
                lines.append(f"| {g} | {s} | " + " | ".join(cells) + " |")
        lines.append("| natural images | | " + " | ".join(
            f"{self.references[o]['raw']:.2f} / {self.references[o]['blur']:.2f}" for o in observers) + " |")
        st = self.settings
        lines += ["", "## How it was measured", "",
                  f"{st.get('n')} test images of the embedded world ({st.get('per_class')} per category), one metamer "
                  f"each per model and stage: noise start N(0.5, (1/20)²), {st.get('step')} with Feather's step decay "
                  "(halved at each eighth of the run) from a first step of "
                  + ", ".join(f"{v:g} at {k}" for k, v in (st.get("lr") or {}).items())
                  + f", up to {st.get('steps')} steps, stopping when the metamer passes; a metamer still failing "
                  f"then went again from a new noise start with {st.get('retry_lr', RETRY_LR):.3g} × the first step, "
                  "kept where its error was lower (kept: "
                  + (", ".join(f"{g} {s} {n}" for g, per in (st.get("retried") or {}).items() for s, n in per.items()
                               if n) or "none") + ").  "
                  "Recognized = the observer names the reference's category; chance is "
                  f"{chance:.3f}.  A stochastic observer answers with its mean logits over {DRAWS} noise draws.",
                  "",
                  "Observers: every model judges every metamer set, and the headline averages the models other than "
                  "the one that made it.  Non-robust observers read the high-frequency residue that optimization "
                  "leaves in a metamer, whatever the metamer shows, so each observer sees the metamers (and the "
                  "natural images) through a Gaussian blur of σ = 1 px as well, a stand-in for the eye's optics; the "
                  "headline is the blurred view, and the raw view is reported beside it.",
                  "", "Optimization: " + ", ".join(f"{g} {t:.0f} s"
                                                   for g, t in (st.get("optimization_seconds") or {}).items())
                  + f" (as recorded with each saved set, which may come from earlier, resumed runs); this run "
                  f"{st.get('seconds', 0):.0f} s on {st.get('device', 'cpu')}; phosphene {__version__}.", ""]
        return "\n".join(lines)

    def save(self, folder: str | os.PathLike) -> None:
        """Write ``recognizability.json``, ``recognizability.csv`` and ``metamers.md`` (figures drawn first)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / "recognizability.json", json.dumps(
            {"accuracy": self.accuracy, "references": self.references, "pass_rates": self.pass_rates,
             "settings": self.settings}, indent=1))
        write_csv(folder / "recognizability.csv", self.rows())
        figures = [p.name for p in (folder / "metamers_examples.png", folder / "metamers_recognition.png")
                   if p.is_file()]
        write_text(folder / "metamers.md", self.markdown(figures))


def recognizability(models: Sequence[str | ProbeModel], stages: Sequence[str] = STAGES, *, n: int = 16,
                    images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                    observers: Sequence[str | ProbeModel] | None = None, steps: int = STEPS, seed: int = 0,
                    out: str | os.PathLike | None = None, progress: bool = True, **generate_options) -> Recognizability:
    """Metamers of ``n`` embedded test images (or ``images`` with ``labels``) for every model and stage, judged
    by every observer (default: the same models) raw and through a 1-px blur.  With ``out``, each model × stage's
    metamers are saved under ``out/MODEL/STAGE`` as they finish, and a run started again reuses them (a killed
    experiment loses at most the stage in progress); figures and the report are written there too."""
    t0 = time.perf_counter()
    gens = [m if isinstance(m, ProbeModel) else load_model(m) for m in models]
    obs = gens if observers is None else [m if isinstance(m, ProbeModel) else load_model(m) for m in observers]
    if len({m.name for m in gens}) != len(gens) or len({m.name for m in obs}) != len(obs):
        raise ConfigError("give each model once")
    if images is None:
        from synth.world.data import render

        per = max(1, n // 8)
        batch = render(per * 8, "test")
        images, labels = batch.tensor(), torch.from_numpy(batch.labels)
    elif labels is None or len(labels) != len(images):
        raise ConfigError("give one label (class index) per image")
    for m in [*gens, *obs]:
        if list(m.classes) != list(gens[0].classes):
            raise ConfigError(f"{m.name} has other classes than {gens[0].name}: observers must share the categories")
    out = Path(out) if out is not None else None
    accuracy: dict = {}
    pass_rates: dict = {}
    results: dict[str, dict[str, MetamerResult]] = {}
    bar = tqdm(total=len(gens) * len(stages), desc="metamers", unit="stage", disable=not progress)
    for g in gens:
        accuracy[g.name], pass_rates[g.name], results[g.name] = {}, {}, {}
        for stage in stages:
            bar.set_postfix(model=g.name, stage=stage)
            folder = out / g.name / stage if out is not None else None
            if folder is not None and (folder / "metamers.json").is_file():
                r = MetamerResult.load(folder, g)
            else:
                r = generate(g, images, stage, steps=steps, seed=seed, progress=progress,
                             names=[f"{i:02d}_{g.classes[int(y)]}" for i, y in enumerate(labels)],
                             checkpoint=(folder / ".checkpoint.pt") if folder is not None else None,
                             **generate_options)
                if folder is not None:
                    r.save(folder)
                    for done in folder.glob(".checkpoint*.pt"):  # the run's and its retries'
                        done.unlink()
            results[g.name][stage] = r
            s = r.stats[r.stage]
            pass_rates[g.name][stage] = {"passed": float(s["passed"].float().mean()),
                                         "criterion": float(s["criterion"].float().mean()),
                                         "error": float((s["error"] <= r.error_target).float().mean())}
            accuracy[g.name][stage] = {o.name: {v: float((observe(o, r.images, sigma) == labels).float().mean())
                                                for v, sigma in VIEWS.items()} for o in obs}
            bar.update()
    bar.close()
    refs = {o.name: {v: float((observe(o, images, sigma) == labels).float().mean()) for v, sigma in VIEWS.items()}
            for o in obs}
    first = results[gens[0].name][stages[0]]
    settings = {"n": len(images), "per_class": len(images) // len(gens[0].classes), "stages": list(stages),
                "models": [g.name for g in gens], "observers": [o.name for o in obs], "steps": steps,
                "step": first.metadata.get("step_rule"),
                "lr": {s: results[gens[0].name][s].metadata.get("lr") for s in stages},
                "error_target": first.error_target, "classes": len(gens[0].classes), "seed": seed,
                "seconds": round(time.perf_counter() - t0, 1), "device": str(gens[0].device),
                "retry_lr": RETRY_LR,
                "retried": {g: {s: len(r.metadata.get("retried") or {}) for s, r in rs.items()}
                            for g, rs in results.items()},
                "optimization_seconds": {g: round(sum(float(r.metadata.get("seconds", 0)) for r in rs.values()), 1)
                                         for g, rs in results.items()}}
    table = Recognizability(accuracy, refs, pass_rates, settings)
    if out is not None:
        examples_figure(results, images, out / "metamers_examples.png")
        recognition_figure(table, out / "metamers_recognition.png")
        table.save(out)
    return table


def examples_figure(results: dict[str, dict[str, MetamerResult]], images: torch.Tensor, path: Path,
                    which: Sequence[int] = (0, 3)) -> Path:
    """For a few references: the reference, then its metamer at each stage, one row per model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gens = list(results)
    stages = list(results[gens[0]])
    which = [i for i in which if i < images.shape[0]]
    rows = [(g, i) for i in which for g in gens]
    fig, axes = plt.subplots(len(rows), len(stages) + 1, figsize=(1.5 * (len(stages) + 1), 1.6 * len(rows)),
                             squeeze=False)
    for r, (g, i) in enumerate(rows):
        cells = [("reference", images[i])] + [(s, results[g][s].images[i]) for s in stages]
        for c, (title, img) in enumerate(cells):
            ax = axes[r, c]
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                ax.set_ylabel(g, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def recognition_figure(table: Recognizability, path: Path) -> Path:
    """Recognition by the other models against stage, one line per generating model (blurred solid, raw dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = table.settings["stages"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for k, g in enumerate(table.accuracy):
        color = f"C{k}"
        ax.plot(stages, [table.headline(g, s) for s in stages], "-o", color=color, label=f"{g} (1-px blur)")
        ax.plot(stages, [table.headline(g, s, "raw") for s in stages], "--", color=color, alpha=0.6,
                label=f"{g} (raw)")
    ax.axhline(1 / table.settings["classes"], color="grey", lw=0.8, ls=":", label="chance")
    ax.set_ylim(0, 1)
    ax.set_xlabel("stage the metamer matches")
    ax.set_ylabel("recognized by the other models")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
