"""Projected gradient descent (Madry et al. 2018) on the one engine, with ε sweeps that share their work.

``pgd`` is a front-end: each round of the attack is one call of ``synth.optimize`` with a cross-entropy (or CW
margin) objective on the logits, an Lp ball per image around the clean image, a random start, a step rule, and a
stopping criterion — an image that is already misclassified (or, targeted, shows its target) leaves the batch and
costs nothing more.  The default step rule is Auto-PGD's (Croce & Hein 2020: momentum, a step of 2ε halved where
progress stalls); ``step='pgd'`` gives Madry's fixed sign (L-inf) or normalized (L2) steps of 2.5·ε/steps.

A list of budgets is searched per image instead of attacked budget by budget, as foolbox and torchattacks do:
an image broken at a small ε is broken at every larger one (the same image lies in the larger ball), and an image
that a full attack could not break at ε is not attacked at any smaller ε.  So each image only needs attacking at
the two budgets around its own threshold: broken at one (which early stopping makes cheap), robust at the next
smaller one.  One gradient at the clean image predicts where that threshold lies — the first-order (DeepFool)
distance to the decision boundary, margin / ‖∇margin‖ in the dual norm — and the first attack is made at the
smallest budget above it; then each image walks down while it breaks and up while it holds, each later attack
starting from the image's last iterate moved into the new ball (and given ``warm_steps``, half the steps by
default).  The images of one round, each at its own ε, are one batch.  At the end every image at every budget is
checked by a forward pass: a robust image gets its best iterate from the largest budget it survived, moved into
the smaller ball, and is counted broken if that happens to fool the model.  The walk is ``attacks.bracket``'s
driver on its ``Grid`` of budgets.

Measured on the embedded models (256 test images, 5 budgets 0.5–8/255, 20 steps): robust accuracy at or below
foolbox's LinfPGD at every budget, with 6.7–7.9× fewer gradient evaluations (benchmarks/attacks.py times it).
"""
from __future__ import annotations

import math
import time

import torch

from synth import Box, LpBall, __version__
from synth.engine.objectives import Margin
from synth.errors import ConfigError
from synth.rng import derive, generator, noise_generator
from synth.zoo.probe import ProbeModel

from .bracket import Bracket, Grid, bracket
from .checks import gradient_report, monotone_report
from .common import (
    Budget,
    LabelsLike,
    check_norm,
    inputs,
    logits,
    mean_logits,
    objective,
    parse_eps,
    stops_early,
    success_of,
    warn_if_stochastic,
)
from .result import AttackResult, distances

# Madry et al. (2018) use a step of 2.5·ε/steps, so that a walk from the ball's edge reaches the other side.
REL_STEP = 2.5


def pgd(model: ProbeModel, images: torch.Tensor, labels: LabelsLike | None = None,
        eps: Budget | list[Budget] | torch.Tensor = 8 / 255, *, steps: int = 20, norm: str = "linf",
        target: LabelsLike | None = None, restarts: int = 1, step_size: float | None = None, loss: str = "ce",
        step: str = "apgd", warm_steps: int | None = None, random_start: bool = True, early_stop: bool = True,
        eot: int = 1, seed: int = 0, batch_size: int | None = None, progress: bool = True, precision: str = "fp32",
        channels_last: bool = False, compile: bool | str = False, checkpoint_activations: bool = False
        ) -> AttackResult:
    """White-box PGD against class labels at one budget or a sweep of budgets, in one call.

    ``images``: N×3×H×W in [0, 1]; ``labels``: class indices or names, one per image or one for all (default: the
    model's own predictions); ``eps``: a budget or a list ('4/255' strings allowed); ``norm``: 'linf' or 'l2';
    ``target``: classes to reach (targeted attack) instead of leaving the label; ``restarts``: further random
    starts for images not yet broken; ``loss``: 'ce', 'margin' (Carlini-Wagner) or 'dlr' (Croce & Hein's
    difference-of-logits ratio); ``step``: 'apgd' (Croce & Hein's step-size schedule, the default; it needs about
    10 steps or more to adapt) or 'pgd' (fixed steps of
    ``step_size`` × ε, default 2.5/steps);
    ``warm_steps``: steps of the later rounds of a sweep, which start from an earlier iterate (default half of
    ``steps``); ``random_start=False`` starts from the clean images (restarts stay random); ``eot``: forward passes
    per step for stochastic models, the loss taken on their mean logits (what the verdict reads);
    ``early_stop=False`` spends every step on every image (perturbations that use their whole budget, e.g. to
    transfer to other models); on a stochastic model an image stops only where the mean of the step's ``eot`` draws
    is past the boundary by ``attacks.common.SURE`` standard errors of their margin (one stopped where the mean
    first crossed it would be adversarial under fresh draws about half the time), and never with ``eot=1``;
    ``batch_size``: images per engine batch (``synth.max_batch`` finds the largest that fits); ``precision``,
    ``channels_last``, ``compile``, ``checkpoint_activations``: the engine's speed and memory options for the attack's
    steps (``synth.optimize``), while the clean verdicts and the final check of every image run in float32 (in
    bfloat16 no image stops early: its verdict at the boundary is off).
    """
    engine = dict(precision=precision, channels_last=channels_last, compile=compile,
                  checkpoint_activations=checkpoint_activations)
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if batch_size is not None and images.ndim == 4 and images.shape[0] > batch_size:
        parts = []
        for i in range(0, images.shape[0], batch_size):
            sub = slice(i, i + batch_size)
            parts.append(pgd(model, images[sub], _slice(labels, sub), eps, steps=steps, norm=norm,
                             target=_slice(target, sub), restarts=restarts, step_size=step_size, loss=loss, step=step,
                             warm_steps=warm_steps, random_start=random_start, early_stop=early_stop, eot=eot,
                             seed=seed + i, progress=progress, **engine))
        return AttackResult.concat(parts)
    t0 = time.perf_counter()
    check_norm(norm)
    budgets = parse_eps(eps)
    if steps < 1 or restarts < 1 or (warm_steps is not None and warm_steps < 1):
        raise ConfigError(f"steps, warm_steps and restarts must be >= 1, got {steps}, {warm_steps}, {restarts}")
    warm_steps = warm_steps or max(1, steps // 2)
    rel = REL_STEP / steps if step_size is None else float(step_size)
    if not (rel > 0 and math.isfinite(rel)):
        raise ConfigError(f"step_size must be a positive number (a fraction of eps), got {step_size}")
    x, y, tgt = inputs(model, images, labels, target)
    warn_if_stochastic(model, eot)
    clean = logits(model, x, eot, seed=seed)
    kw = dict(norm=norm, step=step, step_size=rel, loss=loss, eot=eot, progress=progress, early_stop=early_stop,
              random_start=random_start, engine=engine)
    adversarial, b = sweep(model, x, y, tgt, budgets, clean, steps=steps, warm_steps=warm_steps, restarts=restarts,
                           seed=seed, **kw)
    result = finish(model, x, y, tgt, budgets, adversarial, clean, norm, eot, loss, seed)
    result.metadata.update({
        "attack": f"pgd-{norm}", "step_rule": "Auto-PGD" if step == "apgd" else "fixed", "steps": steps,
        "warm_steps": warm_steps, "step_size": f"{rel:g}*eps" if step == "pgd" else "2*eps, halved (APGD)",
        "restarts": restarts, "loss": loss, "random_start": random_start,
        "early_stop": stops_early(model, early_stop, precision, eot), "eot": eot,
        "seed": seed, "rounds": b.rounds, **engine,
        "gradients": sum(r.metadata["evaluations"] for r in b.runs) + (len(x) * eot if len(budgets) > 1 else 0),
        "seconds": round(time.perf_counter() - t0, 3)})
    result.checks.update(gradient_report(b.runs))
    return result


def sweep(model: ProbeModel, x: torch.Tensor, y: torch.Tensor, tgt: torch.Tensor | None, budgets: torch.Tensor,
          clean: torch.Tensor, *, steps: int, warm_steps: int, restarts: int, seed: int, **kw) -> tuple[torch.Tensor,
                                                                                                       Bracket]:
    """The attack at every budget (K×N images, each inside its ball, unchecked) and the bracket that found them:
    each image walked between the budgets around its first-order distance (see the module docstring), an image
    that ``clean`` (its verdict's logits) already calls adversarial attacked nowhere; ``kw``: ``attack_round``'s
    settings."""
    n, k, device, norm = x.shape[0], len(budgets), x.device, kw["norm"]
    levels = budgets.to(device)
    lo = torch.full((n,), int((levels == 0).sum()) - 1, device=device)  # a zero budget is the clean image
    hi = torch.full((n,), k, device=device)
    hi[success_of(clean, y, tgt)] = 0
    nxt = torch.zeros(n, dtype=torch.long, device=device)
    if k > 1:  # where to attack each image first: the budget just above its first-order distance
        with noise_generator(generator(derive(seed, 3), device)):
            nxt = torch.bucketize(first_order_distance(model, x, y, tgt, norm, kw["eot"]),
                                  levels).clamp(max=k - 1)
    b = bracket(model, x, y, tgt, Grid(levels), lo, hi, nxt, steps=steps, warm_steps=warm_steps, restarts=restarts,
                seed=seed, **kw)
    adversarial = torch.stack([torch.where((b.hi <= j).view(-1, 1, 1, 1), b.found, _into_ball(b.at_lo, x, e, norm))
                               for j, e in enumerate(levels.tolist())])
    return adversarial, b


def first_order_distance(model: ProbeModel, x: torch.Tensor, y: torch.Tensor, tgt: torch.Tensor | None, norm: str,
                         eot: int = 1) -> torch.Tensor:
    """Per image, the first-order (DeepFool) distance to the decision boundary, max(−m, 0) / ‖∇m‖_q, for the
    success margin m (q the dual norm: L1 for L-inf, L2 for L2).  One forward and backward pass."""
    margin = Margin("logits", target=tgt) if tgt is not None else Margin("logits", y=y)
    xx = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        m = margin.score({"logits": mean_logits(model, xx, eot)})
        grad, = torch.autograd.grad(m.sum(), xx)
    g = grad.flatten(1)
    dual = g.abs().sum(1) if check_norm(norm) == math.inf else g.norm(dim=1)
    return (-m.detach()).clamp_min(0) / dual.clamp_min(1e-12)


def _into_ball(adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Images moved into the ball of radius ``eps`` around ``x`` and the pixel box (clipped for L-inf, scaled
    for L2)."""
    out = adv.clone()
    for c in (LpBall(x, eps, check_norm(norm)), Box()):
        c.project_(out)
    return out


def finish(model: ProbeModel, x: torch.Tensor, y: torch.Tensor, tgt: torch.Tensor | None, budgets: torch.Tensor,
           adversarial: torch.Tensor, clean: torch.Tensor, norm: str, eot: int, loss: str,
           seed: int = 0, verdict: torch.Tensor | None = None) -> AttackResult:
    """Check every returned image (K×N) with a forward pass (a noisy model's ``eot`` draws from a generator seeded
    with ``seed``, as ``logits`` says), carry a success at a small budget to every larger one, and assemble the
    result with norms, predictions, objective values and the monotonicity check; ``verdict``: the K×N×classes logits
    that same check already gave these very images (a caller that judged each image as it found it)."""
    k, n = adversarial.shape[:2]
    z = logits(model, adversarial.flatten(0, 1), eot, seed=seed).view(k, n, -1) if verdict is None else verdict.clone()
    success = success_of(z, y, tgt)
    raw = success.clone()
    for j in range(1, k):  # an image adversarial at a smaller budget lies in every larger ball too
        carry = success[j - 1] & ~success[j]
        adversarial[j, carry], z[j, carry], success[j, carry] = adversarial[j - 1, carry], z[j - 1, carry], True
    obj = objective(loss, y, tgt)
    scores = torch.stack([obj.score({"logits": z[j]}) for j in range(k)])
    result = AttackResult(
        images=x.cpu(), labels=y.cpu(), eps=budgets.cpu(), adversarial=adversarial.cpu(), success=success.cpu(),
        distance=distances(adversarial, x[None], norm).cpu(), predictions=z.argmax(-1).cpu(),
        clean_predictions=clean.argmax(-1).cpu(), norm=norm, target=tgt.cpu() if tgt is not None else None,
        scores=scores.cpu(), clean_scores=obj.score({"logits": clean}).cpu(), classes=list(model.classes),
        metadata={"model": model.name, "weights_sha256": model.weights_digest(),
                  "objective": f"{ {'ce': 'xent'}.get(loss, loss)}(logits, "
                               f"{'target' if tgt is not None else 'y'}=<labels in attack.pt>)",
                  "targeted": tgt is not None,
                  "device": str(x.device), "phosphene": __version__, "torch": torch.__version__})
    result.checks.update(monotone_report(raw, budgets))
    return result


def _slice(labels, sub: slice):
    """The labels of a slice of the images (a single shared label stays as it is)."""
    if labels is None or isinstance(labels, (int, str)):
        return labels
    if isinstance(labels, torch.Tensor) and labels.ndim == 0:
        return labels
    return labels[sub]
