"""Feather et al. (2023)'s success criterion for model metamers, and the match-quality stopping rule.

A metamer passes at a stage when its activations there are more like the reference's than any other natural
image's are: its Spearman ρ with the reference exceeds the largest ρ between the reference and the images of a
null set, and its normalized squared error ‖a − a*‖² / ‖a*‖² is below the smallest error over that set.  A tie in
ρ passes: at a stage of a few units (8 logits) a null image often ranks them exactly as the reference does, and
no image can beat ρ = 1 (measured: 5 of 32 logit metamers at error 0.001 failed the strict form).  On small
models that criterion is weak (every metamer of the embedded models passed it while its normalized error was
still about 0.3), so the default stopping rule adds a match-quality target, ‖a − a*‖ / ‖a*‖ ≤ 0.05.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata

from synth.engine.criteria import RelativeError
from synth.engine.objectives import Acts
from synth.errors import ConfigError
from synth.zoo.probe import ProbeModel

ERROR_TARGET = 0.05
TIE = 1e-6  # ρ within this of the null's best counts as a tie, and a tie passes (see module docstring)


def _ranks(a: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share a rank, as Spearman's ρ needs: a ReLU stage holds many zeros), standardized per
    row so that a dot product over the row length is Pearson's r of the ranks."""
    r = torch.from_numpy(rankdata(a.detach().flatten(1).double().cpu().numpy(), axis=1))
    r = r - r.mean(1, keepdim=True)
    return r / r.norm(dim=1, keepdim=True).clamp_min(1e-12)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman's ρ between rows of ``a`` and the matching rows of ``b`` (N×... each)."""
    return (_ranks(a) * _ranks(b)).sum(1).float()


def nse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Normalized squared error of ``a`` against the reference ``b``: ‖a − b‖² / ‖b‖², per row."""
    a, b = a.detach().flatten(1).double().cpu(), b.detach().flatten(1).double().cpu()
    return ((a - b).pow(2).sum(1) / b.pow(2).sum(1).clamp_min(1e-24)).float()


@dataclass
class Null:
    """Per reference image, the most any null image's activations at a stage resemble the reference's: the largest
    Spearman ρ and the smallest normalized squared error over the null set."""

    layer: str
    max_rho: torch.Tensor   # (N,)
    min_nse: torch.Tensor   # (N,)
    size: int

    @classmethod
    def measure(cls, reference: torch.Tensor, null: torch.Tensor, layer: str) -> Null:
        """From the references' and the null images' activations at one layer (N×..., M×...)."""
        if null.shape[0] < 2:
            raise ConfigError("the null distribution needs at least 2 other natural images")
        rr, nr = _ranks(reference), _ranks(null)
        rho = rr @ nr.T                                                           # N×M
        ref, nul = reference.detach().flatten(1).double().cpu(), null.detach().flatten(1).double().cpu()
        sq = (ref.pow(2).sum(1, keepdim=True) + nul.pow(2).sum(1)[None] - 2 * ref @ nul.T).clamp_min(0)
        err = sq / ref.pow(2).sum(1, keepdim=True).clamp_min(1e-24)
        same = (sq <= 1e-12 * ref.pow(2).sum(1, keepdim=True))  # a reference that is itself in the null set
        rho[same], err[same] = -np.inf, np.inf
        return cls(layer, rho.max(1).values.float(), err.min(1).values.float(), int(null.shape[0]))

    def select(self, index: torch.Tensor) -> Null:
        i = index.cpu()
        return Null(self.layer, self.max_rho[i], self.min_nse[i], self.size)


def judge(metamer: torch.Tensor, reference: torch.Tensor, null: Null) -> dict[str, torch.Tensor]:
    """Feather's criterion per metamer at one stage, with the statistics it rests on."""
    rho, err = spearman(metamer, reference), nse(metamer, reference)
    return {"spearman": rho, "nse": err, "error": err.sqrt(), "null_max_spearman": null.max_rho,
            "null_min_nse": null.min_nse, "criterion": (rho >= null.max_rho - TIE) & (err < null.min_nse)}


class MetamerStop(RelativeError):
    """Stop an image once its normalized error at the matched stage is at most ``error`` (``inf``: Feather's
    criterion alone) and it passes Feather's criterion against ``null`` (checked only where the error target is
    met, so it costs little)."""

    def __init__(self, layer: str, reference: torch.Tensor, null: Null, error: float = ERROR_TARGET):
        if not error > 0:
            raise ConfigError(f"the error target must be > 0, got {error}")
        super().__init__(layer, reference, 1.0)
        self.threshold, self.null = float(error), null

    def resolve(self, model: ProbeModel) -> MetamerStop:
        return MetamerStop(model.layer(self.layer), self.target, self.null, self.threshold)

    def select(self, index: torch.Tensor) -> MetamerStop:
        clone = MetamerStop(self.layer, self.target, self.null, self.threshold)
        clone.rows = index.cpu() if self.rows is None else self.rows[index.cpu()]
        clone._on = self._on
        return clone

    def __call__(self, scores: torch.Tensor, acts: Acts) -> torch.Tensor:
        met = self.errors(acts) <= self.threshold
        if met.any():
            where = met.nonzero()[:, 0]
            rows = self.rows if self.rows is not None else torch.arange(met.shape[0])
            verdict = judge(acts[self.layer][where], self.targets(acts)[where],
                            self.null.select(rows[where.cpu()]))["criterion"]
            met[where] = verdict.to(met.device)
        return met

    def __str__(self) -> str:
        return (f"metamer({self.layer}: normalized error <= {self.threshold:g} and Feather's criterion against "
                f"{self.null.size} null images)")
