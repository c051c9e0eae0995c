"""The smallest perturbation that flips each image's decision, by bisection over PGD (Auto-PGD steps by default,
at per-image budgets), and the curve of accuracy against ε that it gives.

Each image keeps a bracket: the largest ε at which a full PGD attack failed (``lo``) and the norm of the smallest
adversarial image found (``hi``, which shrinks to the image's actual perturbation, often inside its ball thanks to
early stopping).  The first budget is 1.25× the first-order distance to the decision boundary (DeepFool's estimate,
typically 1.2–1.8× too small for the embedded models); while no attack succeeds the budget doubles up to
``eps_max``; then the bracket halves each round until it is narrower than ``tol`` × hi.  Every round is one engine
batch, each image at its own ε, starting from its last iterate moved into the new ball: ``attacks.bracket``'s
driver, on its ``Continuous`` search.
"""
from __future__ import annotations

import math
import time

import torch

from synth.errors import ConfigError
from synth.zoo.probe import ProbeModel

from .bracket import Continuous, bracket
from .checks import gradient_report
from .common import LabelsLike, check_norm, inputs, logits, success_of, warn_if_stochastic
from .pgd import REL_STEP, finish, first_order_distance

# The default largest budget: L-inf in pixel units ([0, 1]); L2 the same per-pixel change over the whole image,
# so it grows with the side (the square root of the pixel count), as attacks.robustness scales its L2 budgets.
LINF_EPS_MAX = 32 / 255


def default_eps_max(norm: str, shape: tuple[int, ...]) -> float:
    """The largest budget ``minimal`` tries by default on images of ``shape`` (…×C×H×W) under ``norm``."""
    check_norm(norm)
    return LINF_EPS_MAX if norm == "linf" else LINF_EPS_MAX * math.sqrt(math.prod(shape[-3:]))


def minimal(model: ProbeModel, images: torch.Tensor, labels: LabelsLike | None = None, *, norm: str = "linf",
            eps_max: float | None = None, tol: float = 0.05, rounds: int = 12, steps: int = 20,
            target: LabelsLike | None = None, loss: str = "ce", step: str = "apgd", restarts: int = 1, eot: int = 1,
            seed: int = 0, progress: bool = True):
    """Per image, the smallest ε (up to ``tol`` relative precision, at most ``rounds`` rounds) at which PGD with
    ``steps`` steps flips the decision (or reaches ``target``).  Returns an AttackResult with budget ∞: its
    ``distance`` / ``min_eps`` are the per-image minimal norms (∞ where ``eps_max`` did not suffice), ``curve(eps)``
    the accuracy at any budget, and ``metadata['robust_below']`` each image's largest failed budget."""
    t0 = time.perf_counter()
    check_norm(norm)
    x, y, tgt = inputs(model, images, labels, target)
    eps_max = float(eps_max if eps_max is not None else default_eps_max(norm, tuple(x.shape)))
    if not (eps_max > 0 and math.isfinite(eps_max)) or not 0 < tol < 1 or rounds < 1 or steps < 1:
        raise ConfigError("need eps_max > 0, 0 < tol < 1, rounds >= 1 and steps >= 1")
    warn_if_stochastic(model, eot)
    n, device = x.shape[0], x.device
    clean = logits(model, x, eot)
    lo = torch.zeros(n, device=device)
    hi = torch.full((n,), math.inf, device=device)
    hi[success_of(clean, y, tgt)] = 0.0
    guess = first_order_distance(model, x, y, tgt, norm, eot)
    nxt = (1.25 * guess).clamp(min=eps_max / 256, max=eps_max)
    kw = dict(norm=norm, step=step, step_size=REL_STEP / steps, loss=loss, eot=eot, progress=progress,
              early_stop=True)
    b = bracket(model, x, y, tgt, Continuous(eps_max, tol, norm), lo, hi, nxt, steps=steps, warm_steps=steps,
                restarts=restarts, seed=seed, rounds=rounds, **kw)
    broken = torch.isfinite(b.hi)
    adversarial = torch.where(broken.view(-1, 1, 1, 1), b.found, b.at_lo)[None]
    result = finish(model, x, y, tgt, torch.tensor([math.inf]), adversarial, clean, norm, eot, loss)
    result.metadata.update({
        "attack": f"minimal-{norm}", "method": f"bisection over {'APGD' if step == 'apgd' else 'PGD'}-{steps}",
        "eps_max": eps_max, "tol": tol, "rounds": rounds, "restarts": restarts, "loss": loss, "eot": eot,
        "seed": seed, "robust_below": b.lo.cpu().tolist(),
        "gradients": sum(r.metadata["evaluations"] for r in b.runs) + n * eot,
        "seconds": round(time.perf_counter() - t0, 3)})
    result.checks.update(gradient_report(b.runs))
    return result

