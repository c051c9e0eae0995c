"""Behaviour attacks (Gaziv et al. 2023, "robustified" models): small targeted perturbations made on one model and
judged by others.

Gaziv et al. found that perturbations computed on adversarially trained ("robustified") networks at small L2
budgets change human category reports toward the target ("wormholes" in perceptual space), while perturbations of
the same budget made on standard networks do not.  In silico, the judge is another model: perturbations made on a
robust model should carry the target category to a standard model, and those made on a standard model should not
carry to a robust one.  Every source model runs the same targeted L2 PGD under the same budget; by default with
Madry's fixed steps from the clean image, stopping when the source model reports the target — so each
perturbation is what that model needs to change its verdict, and a robust model needs a larger, visible one.
``early_stop=False`` spends every step instead (perturbations that fill the budget).  The sheet shows each image's
original, the perturbed images from each source, their amplified differences and every model's verdict.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from synth.errors import ConfigError
from synth.files import write_text
from synth.zoo.probe import ProbeModel

from .common import LabelsLike, as_labels, logits
from .figures import image_grid
from .pgd import pgd
from .result import AttackResult


def next_category(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """The target Gaziv-style experiments use when none is given: the next category (label + 1, wrapping)."""
    return (labels + 1) % n_classes


def wormholes(models: Mapping[str, ProbeModel], images: torch.Tensor, labels: LabelsLike, *,
              target: LabelsLike | None = None, eps: float = 2.0, steps: int = 100, step: str = "pgd",
              early_stop: bool = True, seed: int = 0, progress: bool = True) -> dict:
    """Make targeted L2 perturbations (budget ``eps``) on each model and let every other model judge them.

    ``models``: name → model, all with the same classes (e.g. {'standard': ..., 'robust': ...}); ``target``: the
    categories to move towards (default: the next category); ``step`` and ``early_stop`` as in ``attacks.pgd``.
    Returns ``{'results': {source: AttackResult}, 'rates': {source: {judge: fraction of perturbed images the judge
    calls the target}}, 'clean': {judge: fraction of clean images called the target}, 'norms': {source: median
    L2 norm of its perturbations}}``.
    """
    if len(models) < 2:
        raise ConfigError("wormholes need at least two models: one makes the perturbation, the others judge it")
    names = list(models)
    classes = models[names[0]].classes
    for name in names[1:]:
        if models[name].classes != classes:
            raise ConfigError(f"models {names[0]!r} and {name!r} have different classes; a judge must share them")
    first = models[names[0]]
    y = as_labels(first, labels, images.shape[0])
    t = as_labels(first, target, images.shape[0]) if target is not None else next_category(y, len(classes))
    if (t == y).any():
        raise ConfigError("a target equals the image's own label; choose another category")
    results: dict[str, AttackResult] = {}
    rates: dict[str, dict[str, float]] = {}
    for source in names:
        model = models[source]
        results[source] = pgd(model, images.to(model.device), y.to(model.device), eps, norm="l2",
                              target=t.to(model.device), steps=steps, step=step, warm_steps=steps,
                              random_start=False, early_stop=early_stop, seed=seed, progress=progress)
        adv = results[source].adversarial[0]
        rates[source] = {}
        for judge in names:
            verdict = logits(models[judge], adv.to(models[judge].device)).argmax(1).cpu()
            rates[source][judge] = float((verdict == t.cpu()).float().mean())
    clean = {judge: float((logits(models[judge], images.to(models[judge].device)).argmax(1).cpu() == t.cpu())
                          .float().mean()) for judge in names}
    norms = {source: float(r.distance[0].median()) for source, r in results.items()}
    return {"results": results, "rates": rates, "clean": clean, "norms": norms, "eps": eps, "steps": steps,
            "step": step, "early_stop": early_stop, "target": t.cpu(), "labels": y.cpu(), "classes": list(classes)}


def _setting(run: dict) -> str:
    stop = "stopping when the source model reports the target" if run["early_stop"] else "every step used"
    return f"targeted L2 ε = {run['eps']:g}, {run['steps']} {'fixed' if run['step'] == 'pgd' else 'Auto-PGD'} " \
           f"PGD steps from the clean image, {stop}"


def sheet(run: dict, models: Mapping[str, ProbeModel], path: str | os.PathLike, n: int = 8) -> Path:
    """Side by side for up to ``n`` images: the original, then for each source model the perturbed image and its
    amplified difference, each captioned with every model's verdict."""
    names = list(run["results"])
    classes, y, t = run["classes"], run["labels"], run["target"]
    verdicts = {}
    for source in names:
        adv = run["results"][source].adversarial[0]
        verdicts[source] = {j: logits(models[j], adv[:n].to(models[j].device)).argmax(1).cpu() for j in names}
    clean = run["results"][names[0]].images
    clean_v = {j: logits(models[j], clean[:n].to(models[j].device)).argmax(1).cpu() for j in names}
    rows = []
    for i in range(min(n, len(clean))):
        row = [(clean[i], f"{classes[y[i]]} → target {classes[t[i]]}\n"
                          + ", ".join(f"{j}: {classes[clean_v[j][i]]}" for j in names))]
        for source in names:
            adv = run["results"][source].adversarial[0, i]
            delta = adv - clean[i]
            gain = 0.5 / max(float(delta.abs().max()), 1e-12)
            said = ", ".join(f"{j}: {classes[verdicts[source][j][i]]}{' ✓' if verdicts[source][j][i] == t[i] else ''}"
                             for j in names)
            row += [(adv, f"made on {source}\n{said}"), ((0.5 + gain * delta).clamp(0, 1), f"δ ×{gain:.0f}")]
        rows.append(row)
    columns = ["original"] + [c for s in names for c in (f"perturbed on {s}", "difference")]
    rate_text = "; ".join(f"made on {s}: " + ", ".join(f"{j} says target {r:.0%}" for j, r in run["rates"][s].items())
                          for s in names)
    return image_grid(rows, path, title=f"{_setting(run)}\n{rate_text}", columns=columns)


def table(run: dict) -> list[str]:
    """Markdown lines: the target rates (rows: the model a perturbation was made on) and median norms."""
    names = list(run["rates"])
    lines = [f"{_setting(run)}; target = next category; {len(run['labels'])} held-out images.", "",
             "| made on \\ judged by | " + " | ".join(names) + " | median L2 norm |",
             "|---|" + "---|" * (len(names) + 1)]
    for s in names:
        lines.append(f"| {s} | " + " | ".join(f"{run['rates'][s][j]:.2f}" for j in names)
                     + f" | {run['norms'][s]:.2f} |")
    lines.append("| (clean images) | " + " | ".join(f"{run['clean'][j]:.2f}" for j in names) + " | 0 |")
    return lines


def report(runs: Mapping[str, dict], folder: str | os.PathLike, name: str = "wormholes") -> Path:
    """Write the target rates of one or more runs (titled by ``runs``' keys) as Markdown and JSON."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# Wormholes: perturbations made on one model, judged by the others", "",
             "Each cell: the fraction of perturbed images the judge (column) calls the target category."]
    for title, run in runs.items():
        lines += ["", f"## {title}", "", *table(run)]
    write_text(folder / f"{name}.md", "\n".join(lines) + "\n")
    record = {title: {"eps": r["eps"], "steps": r["steps"], "step": r["step"], "early_stop": r["early_stop"],
                      "rates": r["rates"], "clean": r["clean"], "norms": r["norms"], "n": len(r["labels"]),
                      "metadata": {s: res.metadata for s, res in r["results"].items()}} for title, r in runs.items()}
    write_text(folder / f"{name}.json", json.dumps(record, indent=1, default=str))
    return folder / f"{name}.md"
