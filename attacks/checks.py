"""Gradient-masking checks in the spirit of AutoAttack and Carlini et al.'s checklist ("On evaluating adversarial
robustness", 2019): a robustness number is only trusted when

- gradients are neither zero nor non-finite (a saturated softmax or a non-differentiable layer hides the way),
- success grows with the budget, and a very large budget breaks (nearly) every image,
- random search does not find adversarial images where the gradient attack failed.

The first two come for free with every attack and are stored in ``AttackResult.checks``; ``check`` runs the
unbounded attack and the random search.  A failed check sets ``flag`` with a message and is raised as a warning.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

from synth.engine.results import Result

# Fewer attacked images than this cannot tell masking from chance: one image whose softmax saturates has an all-zero
# gradient, and one that a larger budget happens not to break makes success "fall".  The free checks report on them
# without a flag (and the gradient check also wants two images with a zero gradient, not one).
MIN_JUDGED = 4


class GradientMaskingWarning(UserWarning):
    """A robustness number that a gradient-masking check does not trust."""


def _report(flag: bool, message: str, **values) -> dict:
    if flag:
        warnings.warn(message, GradientMaskingWarning, stacklevel=3)
    return {"flag": bool(flag), "message": message, **values}


def gradient_report(runs: Sequence[Result]) -> dict:
    """Fraction of attacked images whose first gradient was exactly zero, and of those that met a non-finite one."""
    first = [r.grad_norm[0] for r in runs if r.grad_norm is not None and len(r.grad_norm)]
    if not first:
        return {}
    g0 = torch.cat(first)
    nonfinite = sum(int(torch.isinf(r.grad_norm).any(0).sum()) for r in runs if r.grad_norm is not None)
    n = len(g0)
    zero = float((g0 == 0).float().mean())
    bad = nonfinite / n
    suspect = (zero > 0.05 and int((g0 == 0).sum()) >= 2) or bad > 0
    flag = suspect and n >= MIN_JUDGED
    if flag:
        msg = (f"{zero:.0%} of attacked images had an all-zero gradient and {bad:.0%} a non-finite one, so the attack "
               "cannot move them: a silent unit, a saturated softmax or a non-differentiable layer masks the "
               "gradient (for class attacks try loss='margin'; confirm with attacks.check)")
    elif zero > 0 or bad > 0:
        msg = (f"{zero:.0%} of {n} attacked images had an all-zero gradient and {bad:.0%} a non-finite one: too few "
               f"to judge masking (that needs {MIN_JUDGED} attacked images or more, and more than 5 % and at least "
               "two of them with a zero gradient)")
    else:
        msg = f"gradients nonzero and finite ({n} attacks)"
    return {"gradients": _report(flag, msg, zero=zero, nonfinite=bad, attacks=n)}


def monotone_report(success: torch.Tensor, budgets: torch.Tensor) -> dict:
    """Success must not fall as the budget grows (each budget attacked on its own), and must grow somewhere over a
    range of budgets wider than 4x unless every image is already broken."""
    rate = success.float().mean(1)
    if len(budgets) < 2 or success.shape[1] < MIN_JUDGED:
        return {}
    drops = int((success[:-1] & ~success[1:]).sum())
    falls = bool((rate[1:] < rate[:-1] - 1.5 / success.shape[1]).any())
    positive = budgets[budgets > 0]
    wide = len(positive) >= 2 and float(positive[-1]) >= 4 * float(positive[0])
    flat = wide and float(rate[-1]) <= float(rate[0]) and float(rate[-1]) < 1.0
    flag = falls or flat
    if falls:
        msg = f"success fell as the budget grew ({drops} image-budget pairs): the attack is weak or gradients mislead"
    elif flat:
        msg = "success did not grow over a budget range wider than 4x: gradients may be masked"
    else:
        msg = "success grows with the budget"
    return {"monotone": _report(flag, msg, drops=drops, success_rate=rate.tolist())}


def unbounded_report(success_rate: float, eps: float) -> dict:
    """A budget large enough to paint any image must break (nearly) all of them."""
    flag = success_rate < 0.99
    msg = (f"an attack with a budget of {eps:.3g} broke only {success_rate:.1%} of images: gradients are masked or the "
           "attack is broken" if flag else f"an unbounded attack (eps {eps:.3g}) broke {success_rate:.1%} of images")
    return {"unbounded": _report(flag, msg, success_rate=success_rate, eps=eps)}


def blackbox_report(extra: int, n: int, eps: float) -> dict:
    """Random search must not break images the gradient attack could not."""
    flag = extra > 0
    msg = (f"random search broke {extra} of {n} images that the gradient attack did not, at eps {eps:.3g}: gradients "
           "are masked" if flag else f"random search broke nothing the gradient attack missed (eps {eps:.3g})")
    return {"blackbox": _report(flag, msg, extra=extra, n=n, eps=eps)}


def unbounded_eps(norm: str, shape: Sequence[int]) -> float:
    """A budget that lets an attack reach any image: half the pixel range (L-inf), or its L2 equivalent."""
    return 0.5 if norm == "linf" else 0.5 * math.sqrt(math.prod(shape))
