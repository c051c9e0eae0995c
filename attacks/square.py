"""Square Attack (Andriushchenko et al. 2020), AutoAttack's gradient-free member, on the one engine: forward passes.

Each round is one call of ``synth.optimize`` whose step rule is ``synth.engine.steps.Square``: a random search that
keeps, per image, the best of its candidates under the CW margin on the logits and proposes the best image with one
random square changed (±ε per channel in L-inf; mass moved between squares on the ε-sphere in L2).  It reads no
gradient, so a model whose gradients are masked (a quantized input, a non-differentiable defence) gives it no
false sense of robustness: where PGD stalls and Square Attack breaks images, the gradients lie.  An image stops (and
leaves the batch) as soon as it is misclassified; ``queries`` counts forward passes per image, the first candidate
included (AutoAttack runs 5,000).

A list of budgets is attacked smallest first, each round on the images no smaller budget broke (an image broken at
a small ε lies in every larger ball; ``attacks.pgd.finish`` carries it there and checks every returned image).
"""
from __future__ import annotations

import time

import torch

from synth import Box, LpBall, optimize
from synth.engine.params import Pixels
from synth.engine.results import Result
from synth.engine.steps import SQUARE_P_INIT, Square
from synth.errors import ConfigError
from synth.rng import derive, generator
from synth.zoo.probe import ProbeModel

from .common import (
    Budget,
    LabelsLike,
    check_norm,
    criterion,
    inputs,
    logits,
    objective,
    parse_eps,
    success_of,
    warn_if_stochastic,
)
from .pgd import finish
from .result import AttackResult

RULE_STREAM = 4  # the stream of ``synth.rng.derive`` the search's squares are drawn from


def square(model: ProbeModel, images: torch.Tensor, labels: LabelsLike | None = None,
           eps: Budget | list[Budget] | torch.Tensor = 8 / 255, *, norm: str = "linf", queries: int = 1000,
           eot: int = 1, seed: int = 0, progress: bool = True) -> AttackResult:
    """Square Attack against class labels at one budget or a list of budgets, untargeted, on the margin loss.

    ``images``: N×3×H×W in [0, 1]; ``labels``: class indices or names (default: the model's own predictions);
    ``eps``: a budget or a list ('8/255' strings allowed); ``norm``: 'linf' or 'l2'; ``queries``: forward passes
    per image and budget (the search's square shrinks on AutoAttack's schedule scaled to them); ``eot``: passes per
    query of a stochastic model, the margin taken on their mean logits; ``seed``: the run's randomness (squares,
    signs, noise), from its own generators.  Every returned image is checked with a forward pass.
    """
    t0 = time.perf_counter()
    check_norm(norm)
    if queries < 1:
        raise ConfigError(f"queries must be >= 1, got {queries}")
    budgets = parse_eps(eps)
    x, y, _ = inputs(model, images, labels)
    warn_if_stochastic(model, eot)
    clean = logits(model, x, eot, seed=seed)
    broken = success_of(clean, y, None)
    adversarial = x[None].repeat(len(budgets), 1, 1, 1, 1)
    runs = []
    for j, e in enumerate(budgets.tolist()):
        todo = (~broken).nonzero()[:, 0]
        if e == 0 or len(todo) == 0:
            continue
        res = square_round(model, x[todo], y[todo], torch.full((len(todo),), e), norm=norm, queries=queries,
                           eot=eot, seed=derive(seed, j), progress=progress)
        adversarial[j, todo] = res.images.to(x.device)
        broken[todo] |= res.success.to(x.device)
        runs.append(res)
    result = finish(model, x, y, None, budgets, adversarial, clean, norm, eot, "margin", seed)
    result.metadata.update({
        "attack": f"square-{norm}", "queries": queries, "p_init": SQUARE_P_INIT, "eot": eot,
        "seed": seed, "rounds": len(runs), "evaluations": sum(r.metadata["evaluations"] for r in runs),
        "seconds": round(time.perf_counter() - t0, 3)})
    return result


def square_round(model: ProbeModel, x: torch.Tensor, y: torch.Tensor, eps_per_image: float | torch.Tensor, *,
                 norm: str = "linf", queries: int = 1000, eot: int = 1, seed: int = 0,
                 progress: bool = True, engine: dict | None = None) -> Result:
    """One engine run of Square Attack: image i searched inside its own ball ``eps_per_image[i]`` around ``x[i]``
    (on the model's device), stopping as soon as it is misclassified (on every query of a stochastic model, whose
    verdict at the boundary is a coin flip); ``success`` is the verdict on the returned images, each the best
    candidate found (``logits`` with ``seed``'s draws for a stochastic model)."""
    early_stop = not model.stochastic
    p = check_norm(norm)
    param = Pixels(x)
    rule = Square(param.pixels, x, eps_per_image, p, queries, generator(derive(seed, RULE_STREAM)))
    res = optimize(model, objective("margin", y, None), param, constraints=[LpBall(x, eps_per_image, p), Box()],
                   step=rule, steps=queries, stop=criterion(y, None) if early_stop else None, eot=eot,
                   eot_average="activations", seed=seed, progress=progress, metadata={"attack_round": True},
                   **(engine or {}))
    if not early_stop:
        res.success = success_of(logits(model, res.images, eot, seed=seed), y, None).cpu()
    return res
