"""The one optimization loop of phosphene: choose pixels so a function of a model's activations goes up.

Synthesis, attacks and metamers differ only in what they pass in: an objective on activations, a
parametrization of the image, constraints (differentiable maps and projections), a step rule and schedule,
random transforms averaged per step, and a stopping target.  The loop runs the model only as far as the
deepest layer the objective reads.  Gradient-free step rules (``synth.evolve``) plug into the same loop: they
receive the scores instead of gradients.
"""
from __future__ import annotations

import contextlib
import math
import platform
import time
from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .constraints import Box, Constraint
from .errors import ConfigError, UnknownNameError
from .objectives import Objective, parse, population
from .params import Parametrization
from .probe import ProbeModel, check_images
from .results import Result
from .transforms import Transform, apply as apply_transforms, describe

STEP_RULES = ("adam", "sgd", "sign", "l2")
SCHEDULES = ("constant", "cosine", "linear")


class SteepestDescent(torch.optim.Optimizer):
    """Steepest descent of length ``lr`` in a norm, per image: L-inf steps along the gradient's sign (the FGSM /
    PGD step), L2 steps along the gradient divided by its norm over each image (dim 0 indexes images)."""

    def __init__(self, params, lr: float, norm: float):
        if norm not in (2, math.inf):
            raise ConfigError(f"steepest descent supports the L2 and L-inf norms, got {norm}")
        super().__init__(params, {"lr": lr})
        self.norm = norm

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if self.norm == math.inf:
                    direction = p.grad.sign()
                else:
                    direction = p.grad / p.grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (p.ndim - 1))
                p.add_(direction, alpha=-group["lr"])


class GradientFree(Protocol):
    """A step rule that updates the parametrization from scores alone (e.g. a genetic algorithm)."""

    def update(self, scores: torch.Tensor) -> None:
        """Replace the population in the parametrization given this generation's scores."""


def step_rule(name: str, params: Sequence[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """Build a step rule by name: 'adam', 'sgd', 'sign' (L-inf steepest) or 'l2' (normalized gradient)."""
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"step size lr must be a positive number, got {lr}")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "sign":
        return SteepestDescent(params, lr, math.inf)
    if name == "l2":
        return SteepestDescent(params, lr, 2)
    raise UnknownNameError("step rule", name, STEP_RULES)


def schedule(name: str, opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Step-size schedule over the run: 'constant', 'cosine' (to zero) or 'linear' (to zero)."""
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    if name == "linear":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: max(0.0, 1 - t / max(1, steps)))
    raise UnknownNameError("schedule", name, SCHEDULES)


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose backward lets gradient through silent units when no unit of that image passes any (Lucid)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        relu_grad = grad * (x > 0)
        redirected = torch.where((x < 0) & (grad > 0), torch.zeros_like(grad), grad)
        passes = relu_grad.flatten(1).norm(dim=1) > 0
        return torch.where(passes.view(-1, *[1] * (grad.ndim - 1)), relu_grad, redirected)


@contextlib.contextmanager
def redirected_relu(net: nn.Module) -> Iterator[None]:
    """Temporarily give every nn.ReLU of ``net`` Lucid's redirected gradient (escapes dead starts)."""
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    saved = [(m, m.inplace) for m in relus]
    for m in relus:
        m.inplace = False
        m.forward = _RedirectedReLU.apply
    try:
        yield
    finally:
        for m, inplace in saved:
            del m.forward
            m.inplace = inplace


def render(param: Parametrization, constraints: Sequence[Constraint]) -> torch.Tensor:
    """The images a parametrization currently shows, after the differentiable constraints."""
    x = param.image()
    for c in constraints:
        x = c.apply(x)
    return x


def optimize(model: ProbeModel, objective: Objective | str, param: Parametrization, *,
             constraints: Sequence[Constraint] = (Box(),), step: str | GradientFree = "adam", lr: float = 0.05,
             lr_schedule: str = "constant", steps: int = 256, transforms: Sequence[Transform] = (), eot: int = 1,
             target: float | None = None, seed: int = 0, relu_override: int = 0, progress: bool = True,
             metadata: dict | None = None) -> Result:
    """Maximize ``objective`` over the images of ``param``; the single loop behind synthesis, attacks, metamers.

    ``constraints`` apply in the forward pass and project pixel parameters after each step; ``transforms`` are
    drawn ``eot`` times per step and the score averaged (expectation over transformation); an image whose score
    reaches ``target`` stops changing, and the run ends when all have; ``relu_override`` steps of Lucid's
    redirected ReLU gradient start it.  Returns a Result with images, score history and full metadata.
    """
    objective = parse(objective).resolve(model)
    if steps < 0 or eot < 1:
        raise ConfigError(f"steps must be >= 0 and eot >= 1, got steps={steps}, eot={eot}")
    if target is not None and not math.isfinite(target):
        raise ConfigError(f"target must be a finite number, got {target}")
    model.eval()
    device = model.device
    param = param.to(device)
    constraints = [c.to(device) for c in constraints]
    gen = torch.Generator().manual_seed(seed)
    gradient_free = not isinstance(step, str)
    opt = sched = None
    if not gradient_free:
        opt = step_rule(step, list(param.parameters()), lr)
        sched = schedule(lr_schedule, opt, steps)
    pixels = getattr(param, "x", None)  # projections act on pixel parametrizations
    with torch.no_grad():
        first = render(param, constraints)
    check_images(first)
    n = first.shape[0]
    layers = objective.layers
    done = torch.zeros(n, dtype=torch.bool, device=device)
    frozen = first.clone()
    history: list[torch.Tensor] = []
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=str(objective)[:40], unit="step", disable=not progress, leave=False)
    for t in bar:
        param.schedule(t / max(1, steps))
        with redirected_relu(model.net) if t < relu_override else contextlib.nullcontext():
            with torch.set_grad_enabled(not gradient_free):
                x = render(param, constraints)
                seen = x if not transforms else torch.cat([apply_transforms(transforms, x, gen) for _ in range(eot)])
                scores = objective(model.activations(seen, layers, check=False))
                if transforms:
                    scores = scores.view(eot, n).mean(0)
                if not gradient_free:
                    opt.zero_grad(set_to_none=True)
                    (-(scores * (~done)).sum()).backward()
        history.append(scores.detach())
        if gradient_free:
            step.update(scores.detach())
        else:
            opt.step()
            sched.step()
            if pixels is not None:
                with torch.no_grad():
                    for c in constraints:
                        c.project_(pixels)
        if target is not None:
            reached = (scores.detach() >= target) & ~done
            if reached.any():
                frozen[reached] = x.detach()[reached]
                done |= reached
                if pixels is not None:  # keep stopped images exactly where they reached the target
                    with torch.no_grad():
                        pixels[done] = frozen[done]
            if bool(done.all()):
                break
        if progress and t % 8 == 0:
            bar.set_postfix(score=f"{float(scores.detach().mean()):.3g}")
    bar.close()
    elapsed = time.perf_counter() - t0
    with torch.no_grad():
        final = render(param, constraints)
        if done.any():
            final[done] = frozen[done]
        acts = model.activations(final, layers, check=False)
        final_scores = objective(acts)
    steps_run = len(history)
    meta = {
        "model": model.name, "weights_sha256": model.info.get("sha256", model.info.get("weights", "")),
        "layers": list(layers), "objective": str(objective), "parametrization": str(param),
        "constraints": [str(c) for c in constraints], "transforms": describe(transforms), "eot": eot,
        "step_rule": step if isinstance(step, str) else str(step), "lr": lr, "lr_schedule": lr_schedule,
        "steps": steps, "steps_run": steps_run, "target": target, "relu_override": relu_override, "seed": seed,
        "evaluations": steps_run * n * (eot if transforms else 1), "seconds": round(elapsed, 3),
        "device": str(device), "phosphene": __version__, "torch": torch.__version__, "machine": platform.machine(),
        **(metadata or {}),
    }
    hist = torch.stack(history).cpu() if history else torch.zeros(0, n)
    return Result(final.detach().cpu(), hist, final_scores.cpu(),
                  {k: population(v).cpu() for k, v in acts.items()}, meta)
