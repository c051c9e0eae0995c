"""AttackResult: what an attack produced for K budgets × N images, the same type for every attack.

Adversarial images are held per budget (a sweep over ε is one result), with the per-image verdicts checked on the
returned images, the perturbation norm, the model's predictions and the attack objective's value.  Minimal-
perturbation attacks hold one set of images (budget ∞) whose norms are the per-image minimal ε.  Results save as
one record (PNGs with the recipe in text chunks plus ``attack.json`` / ``attack.pt``), load back, and draw
themselves: a sheet of clean, adversarial and amplified perturbation images with verdicts, and the accuracy-against-ε
curve.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from synth.errors import CheckpointError
from synth.files import check_weights, load_record, save_record
from synth.zoo.probe import ProbeModel

FORMAT_VERSION = 3  # 3: one record format (synth.files.save_record): kind and the .pt's digest in attack.json
WEIGHTS_DIGEST_SINCE = 2  # 2: 'weights_sha256' is the digest of the model's weights (ProbeModel.weights_digest)
TENSORS = ("images", "labels", "eps", "adversarial", "success", "distance", "predictions", "clean_predictions",
           "target", "scores", "clean_scores")
NORMS = {"linf": math.inf, "l2": 2.0}


def distances(adversarial: torch.Tensor, images: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-image perturbation norms (L-inf or L2) of a K×N or N batch of adversarial images."""
    d = (adversarial - images).flatten(adversarial.ndim - 3)
    return d.abs().amax(-1) if NORMS[norm] == math.inf else d.norm(dim=-1)


@dataclass
class AttackResult:
    """Adversarial images (K×N×3×H×W) for budgets ``eps`` (K), with success, norms and predictions (K×N)."""

    images: torch.Tensor
    labels: torch.Tensor
    eps: torch.Tensor
    adversarial: torch.Tensor
    success: torch.Tensor
    distance: torch.Tensor
    predictions: torch.Tensor
    clean_predictions: torch.Tensor
    norm: str
    target: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    clean_scores: torch.Tensor | None = None
    classes: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def accuracy(self) -> torch.Tensor:
        """Per budget, the fraction of images the model still labels correctly (robust accuracy)."""
        return (self.predictions == self.labels).float().mean(1)

    @property
    def clean_accuracy(self) -> float:
        """The fraction of clean images the model labels correctly."""
        return float((self.clean_predictions == self.labels).float().mean())

    @property
    def success_rate(self) -> torch.Tensor:
        """Per budget, the fraction of images the attack succeeded on (for targeted attacks: reached the target)."""
        return self.success.float().mean(1)

    @property
    def min_eps(self) -> torch.Tensor:
        """Per image, the smallest perturbation norm that succeeded (∞ where none did)."""
        d = torch.where(self.success, self.distance, torch.full_like(self.distance, math.inf))
        return d.amin(0)

    def curve(self, eps: torch.Tensor | list[float]) -> torch.Tensor:
        """Accuracy at any budgets, from the per-image minimal successful norms (a clean mistake counts at 0)."""
        eps = torch.as_tensor(eps, dtype=torch.float32)
        broken = self.min_eps[None, :] <= eps[:, None]
        if self.target is None:
            broken |= (self.clean_predictions != self.labels)[None, :]
        return (~broken).float().mean(1)

    def at(self, eps: float) -> int:
        """Index of the budget closest to ``eps``."""
        return int((self.eps - eps).abs().argmin())

    def summary(self) -> str:
        """One line on the clean images, then one per budget: robust accuracy, and how many of the images the model
        got right the attack moved, with the median norm of those moves in the unit of the budgets (n/255 for
        L-inf).  Images the model already got wrong are counted apart: nothing moved them."""
        name = self.metadata.get("attack", "attack")
        n = len(self)
        done = self.clean_predictions == (self.target if self.target is not None else self.labels)
        if self.target is None:
            done = ~done  # untargeted: a clean mistake is already what the attack seeks
        lines = [f"{name} on {self.metadata.get('model', '?')} ({n} images, {self.norm}): clean accuracy "
                 f"{self.clean_accuracy:.1%}; {int(done.sum())} image(s) "
                 f"{'already at their target' if self.target is not None else 'already misclassified'}, "
                 f"not attacked"]
        for k, e in enumerate(self.eps.tolist()):
            moved = self.success[k] & ~done
            med = eps_text(float(self.distance[k][moved].median()), self.norm, exact=False) if moved.any() else "-"
            budget = "minimal" if math.isinf(e) else eps_text(e, self.norm)
            goal = "reached the target" if self.target is not None else "broken"
            lines.append(f"  eps {budget:>9}: accuracy {float(self.accuracy[k]):6.1%}; {goal}: {int(moved.sum())} of "
                         f"{int((~done).sum())} attacked, median {self.norm} norm {med}")
        flagged = [k for k, v in self.checks.items() if isinstance(v, dict) and v.get("flag")]
        if flagged:
            lines.append("  gradient-masking checks flagged: " + "; ".join(self.checks[k]["message"] for k in flagged))
        return "\n".join(lines)

    @classmethod
    def concat(cls, parts: list[AttackResult]) -> AttackResult:
        """One result from results on consecutive chunks of the same images (same budgets); counts add up."""
        first = parts[0]

        def cat(name: str, dim: int):
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else torch.cat(values, dim)

        meta = dict(first.metadata)
        for key in ("gradients", "seconds"):
            if key in meta:
                meta[key] = sum(p.metadata[key] for p in parts)
        checks = {}
        for p in parts:
            for key, value in p.checks.items():
                checks[key] = value if not checks.get(key, {}).get("flag") else checks[key]
        return cls(cat("images", 0), cat("labels", 0), first.eps, cat("adversarial", 1), cat("success", 1),
                   cat("distance", 1), cat("predictions", 1), cat("clean_predictions", 0), first.norm,
                   target=cat("target", 0), scores=cat("scores", 1), clean_scores=cat("clean_scores", 0),
                   classes=first.classes, metadata=meta, checks=checks)

    # ------------------------------------------------------------------------------------------ save / load
    def save(self, folder: str | os.PathLike) -> list[Path]:
        """Write the record ``attack`` in ``folder`` (``synth.files.save_record``): each adversarial image as a PNG
        with its recipe in text chunks, ``attack.pt`` and ``attack.json``.  Returns the PNGs' paths."""
        pngs = []
        for k, e in enumerate(self.eps.tolist()):
            sub = "minimal" if math.isinf(e) else f"eps_{eps_text(e, self.norm).replace('/', '-')}"
            for i in range(len(self)):
                meta = {**self.metadata, "eps": e, "norm": self.norm, "index": i,
                        "label": self._name(int(self.labels[i])),
                        "prediction": self._name(int(self.predictions[k, i])), "success": bool(self.success[k, i]),
                        "distance": float(self.distance[k, i])}
                if self.target is not None:
                    meta["target"] = self._name(int(self.target[i]))
                pngs.append((f"{sub}/adv_{i:03d}.png", self.adversarial[k, i], meta))
        sidecar = {"metadata": self.metadata, "norm": self.norm, "eps": self.eps.tolist(), "classes": self.classes,
                   "accuracy": self.accuracy.tolist(), "clean_accuracy": self.clean_accuracy,
                   "success_rate": self.success_rate.tolist(), "checks": self.checks}
        return save_record(Path(folder) / "attack", "attack", FORMAT_VERSION, {k: getattr(self, k) for k in TENSORS},
                           sidecar, weights_sha256=self.metadata.get("weights_sha256"), pngs=pngs)

    @classmethod
    def load(cls, folder: str | os.PathLike, model: ProbeModel | None = None) -> AttackResult:
        """Read a saved result back; with ``model``, refuse one whose weights are not those it was made with."""
        folder = Path(folder)
        t, record = load_record(folder / "attack", "attack", FORMAT_VERSION)
        if record.get("format", 0) < WEIGHTS_DIGEST_SINCE:
            raise CheckpointError(f"{folder}: attack result format {record.get('format')} is older than this "
                                  f"phosphene reads (from {WEIGHTS_DIGEST_SINCE})")
        if model is not None:
            check_weights(record["metadata"], model, folder)
        return cls(t["images"], t["labels"], t["eps"], t["adversarial"], t["success"], t["distance"], t["predictions"],
                   t["clean_predictions"], record["norm"], target=t["target"], scores=t["scores"],
                   clean_scores=t["clean_scores"], classes=record["classes"], metadata=record["metadata"],
                   checks=record["checks"])

    # ------------------------------------------------------------------------------------------ pictures
    def sheet(self, path: str | os.PathLike, budget: int = -1, n: int = 8, amplify: float | None = None) -> Path:
        """A PNG sheet: for up to ``n`` images, the clean image, the adversarial one at budget index ``budget`` and
        the perturbation amplified to fill the grey range (or by ``amplify``), with the model's verdicts."""
        from .figures import image_grid

        k = budget % len(self.eps)
        rows = []
        for i in range(min(n, len(self))):
            delta = self.adversarial[k, i] - self.images[i]
            peak = float(delta.abs().max())
            gain = amplify or (0.5 / peak if peak > 0 else 1.0)
            mark = "✓" if bool(self.success[k, i]) else "✗"
            rows.append([
                (self.images[i], f"{self._name(int(self.labels[i]))} → {self._name(int(self.clean_predictions[i]))}"),
                (self.adversarial[k, i], f"{mark} {self._name(int(self.predictions[k, i]))}"
                                         + (f" (target {self._name(int(self.target[i]))})" if self.target is not None
                                            else "")),
                ((0.5 + gain * delta).clamp(0, 1), f"δ ×{gain:.0f}, {self.norm} {float(self.distance[k, i]):.3g}"
                 if peak > 0 else "no perturbation needed"),
            ])
        e = float(self.eps[k])
        title = (f"{self.metadata.get('attack', 'attack')} on {self.metadata.get('model', '?')}, "
                 f"{'minimal' if math.isinf(e) else 'eps ' + eps_text(e, self.norm)}")
        return image_grid(rows, path, title=title,
                          columns=["clean (label → prediction)", "adversarial", "perturbation"])

    def plot(self, path: str | os.PathLike) -> Path:
        """A PNG of accuracy against ε (the sweep's budgets, or the curve of per-image minimal ε)."""
        from .figures import accuracy_plot

        if torch.isinf(self.eps).all():
            finite = self.min_eps[torch.isfinite(self.min_eps)]
            top = float(finite.max()) * 1.1 if len(finite) else 1.0
            grid = torch.linspace(0, top, 64)
            curves = {self.metadata.get("model", "model"): (grid, self.curve(grid))}
        else:
            grid = torch.cat([torch.zeros(1), self.eps])
            acc = torch.cat([torch.tensor([self.clean_accuracy]), self.accuracy])
            curves = {self.metadata.get("model", "model"): (grid, acc)}
        return accuracy_plot(curves, path, norm=self.norm, title=self.metadata.get("attack", "attack"))

    def _name(self, index: int) -> str:
        return self.classes[index] if 0 <= index < len(self.classes) else str(index)


def eps_text(e: float, norm: str, exact: bool = True) -> str:
    """An L-inf budget as n/255 (``exact``: only when it is a quarter step of 1/255; otherwise always, to 3
    digits, as measured norms are), anything else as a number."""
    if norm == "linf" and e > 0 and (not exact or abs(e * 255 * 4 - round(e * 255 * 4)) < 1e-4):
        return f"{e * 255:.3g}/255"
    return f"{e:.4g}"
