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
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from . import __version__
from .constraints import Box, Constraint, LpBall
from .criteria import Criterion, combine
from .errors import ConfigError, UnknownNameError
from .objectives import Objective, parse, population
from .params import Parametrization
from .probe import ProbeModel, check_images
from .results import Result
from .transforms import Transform, apply as apply_transforms, describe

STEP_RULES = ("adam", "sgd", "sign", "l2", "apgd", "apgd-l2")
SCHEDULES = ("constant", "cosine", "linear")


def _per_image(lr: float | torch.Tensor) -> tuple[float, torch.Tensor | None]:
    """A step size as (scheduled base, per-image factors or None): a tensor gives one size per image."""
    if isinstance(lr, torch.Tensor) and lr.ndim == 1:
        if not (torch.isfinite(lr).all() and (lr > 0).all()):
            raise ConfigError("per-image step sizes must be positive finite numbers")
        return 1.0, lr.detach().float()
    lr = float(lr)
    if not (lr > 0 and math.isfinite(lr)):
        raise ConfigError(f"step size lr must be a positive number, got {lr}")
    return lr, None


def _direction(grad: torch.Tensor, norm: float) -> torch.Tensor:
    """Steepest-ascent direction of unit length per image: the gradient's sign (L-inf) or the gradient over its
    L2 norm (dim 0 indexes images)."""
    if norm == math.inf:
        return grad.sign()
    return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.ndim - 1))


def _shaped(scale: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    if scale.shape[0] != p.shape[0]:
        raise ConfigError(f"{scale.shape[0]} step sizes for a parameter holding {p.shape[0]} images")
    return scale.to(p.device, p.dtype).view(-1, *[1] * (p.ndim - 1))


class SteepestDescent(torch.optim.Optimizer):
    """Steepest descent of length ``lr`` in a norm, per image: L-inf steps along the gradient's sign (the FGSM /
    PGD step), L2 steps along the gradient divided by its norm over each image.  ``lr`` is one step size or one
    per image (an (N,) tensor)."""

    def __init__(self, params, lr: float | torch.Tensor, norm: float):
        if norm not in (2, math.inf):
            raise ConfigError(f"steepest descent supports the L2 and L-inf norms, got {norm}")
        base, self.scale = _per_image(lr)
        super().__init__(params, {"lr": base})
        self.norm = norm

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = _direction(p.grad, self.norm)
                if self.scale is None:
                    p.add_(d, alpha=-group["lr"])
                else:
                    p.addcmul_(d, _shaped(self.scale, p), value=-group["lr"])


class APGD(torch.optim.Optimizer):
    """Auto-PGD's step rule (Croce & Hein 2020): steepest steps with momentum 0.75, and a per-image step size that
    starts at ``lr`` (2ε in the paper) and halves at checkpoints where the score rose in fewer than ``rho`` of the
    steps since the last one, or neither the step size nor the best score changed; a halved image restarts from
    its best point.  Checkpoints fall after 22% of ``steps``, then at gaps shrinking by 3% to at least 6%.
    ``project`` maps a point back onto the feasible set (ε-ball and box).  The engine passes each step's scores
    through ``observe`` before ``step``."""

    def __init__(self, params, lr: float | torch.Tensor, norm: float, steps: int,
                 project: Callable[[torch.Tensor], None], alpha: float = 0.75, rho: float = 0.75):
        if norm not in (2, math.inf):
            raise ConfigError(f"APGD supports the L2 and L-inf norms, got {norm}")
        base, scale = _per_image(lr)
        super().__init__(params, {"lr": base})
        ps = [p for g in self.param_groups for p in g["params"]]
        if len(ps) != 1:
            raise ConfigError("APGD steps one pixel tensor")
        self.p, self.norm, self.project, self.alpha, self.rho = ps[0], norm, project, alpha, rho
        n = self.p.shape[0]
        self.eta = (scale if scale is not None else torch.ones(n)).to(self.p.device, self.p.dtype).clone()
        self.gap = max(int(0.22 * steps), 1)
        self.shrink, self.min_gap = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
        self.t = self.since = 0
        self.prev = self.p.detach().clone()
        self.best = self.p.detach().clone()
        self.best_grad = torch.zeros_like(self.p)
        self.best_f = torch.full((n,), -math.inf, device=self.p.device)
        self.last_f = torch.full((n,), -math.inf, device=self.p.device)
        self.rises = torch.zeros(n, device=self.p.device)
        self.best_at_check = self.best_f.clone()
        self.halved_at_check = torch.ones(n, dtype=torch.bool, device=self.p.device)

    @torch.no_grad()
    def observe(self, scores: torch.Tensor, index: torch.Tensor) -> None:
        """Record the scores of the current point for images ``index``; at a checkpoint, halve and restart."""
        p, grad = self.p, self.p.grad
        scores = scores.to(self.best_f.dtype)
        better = scores > self.best_f[index]
        rows = index[better]
        self.best[rows] = p[rows]
        if grad is not None:
            self.best_grad[rows] = grad[rows]
        self.best_f[rows] = scores[better]
        if self.t > 0:
            self.rises[index] += (scores > self.last_f[index]).float()
            self.since += 1
        self.last_f[index] = scores
        if self.since < self.gap:
            return
        oscillating = self.rises <= self.gap * self.rho
        stalled = ~self.halved_at_check & (self.best_at_check >= self.best_f)
        halve = oscillating | stalled
        self.eta[halve] /= 2
        p[halve] = self.best[halve]
        if grad is not None:
            grad[halve] = self.best_grad[halve]
        self.halved_at_check, self.best_at_check = halve, self.best_f.clone()
        self.rises.zero_()
        self.since = 0
        self.gap = max(self.gap - self.shrink, self.min_gap)

    @torch.no_grad()
    def step(self, closure=None):
        p = self.p
        if p.grad is None:
            return
        lr = self.param_groups[0]["lr"]
        momentum = p - self.prev
        self.prev = p.detach().clone()
        a = self.alpha if self.t > 0 else 1.0
        z = p - _direction(p.grad, self.norm) * _shaped(self.eta, p) * lr  # the gradient is of the loss, -score
        self.project(z)
        new = p + a * (z - p) + (1 - a) * momentum
        self.project(new)
        p.copy_(new)
        self.t += 1


class GradientFree(Protocol):
    """A step rule that updates the parametrization from scores alone (e.g. a genetic algorithm)."""

    def update(self, scores: torch.Tensor) -> None:
        """Replace the population in the parametrization given this generation's scores."""


def step_rule(name: str, params: Sequence[torch.Tensor], lr: float | torch.Tensor, steps: int = 1,
              project: Callable[[torch.Tensor], None] | None = None) -> torch.optim.Optimizer:
    """Build a step rule by name: 'adam', 'sgd', 'sign' (L-inf steepest), 'l2' (normalized gradient), 'apgd' /
    'apgd-l2' (Auto-PGD, which needs the run's ``steps`` and the ``project``ion onto the feasible set).  ``lr`` may
    hold one step size per image for the steepest and APGD rules."""
    if name not in STEP_RULES:
        raise UnknownNameError("step rule", name, STEP_RULES)
    base, scale = _per_image(lr)
    if name == "adam" or name == "sgd":
        if scale is not None:
            raise ConfigError(f"per-image step sizes work with the 'sign', 'l2' and 'apgd' step rules, not {name!r}")
        return torch.optim.Adam(params, lr=base) if name == "adam" else torch.optim.SGD(params, lr=base)
    if name in ("sign", "l2"):
        return SteepestDescent(params, lr, math.inf if name == "sign" else 2)
    return APGD(params, lr, math.inf if name == "apgd" else 2, steps, project or (lambda x: None))


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


def _projections(param: Parametrization, constraints: Sequence[Constraint]) -> list[Constraint]:
    """The projecting constraints, refused where the parametrization's pixels cannot be projected (a bounded
    parametrization satisfies the pixel box by construction)."""
    projecting = [c for c in constraints if c.projects]
    if param.pixels is None:
        bad = [c for c in projecting if not (isinstance(c, Box) and param.bounded and c.lo <= 0 and c.hi >= 1)]
        if bad:
            raise ConfigError(f"{bad[0]} projects pixels, but the {param} parametrization has no pixels to project; "
                              "use param='pixels' (or 'blurred') for a budget around an image")
        return []
    return projecting


def _draws(acts: dict[str, torch.Tensor], eot: int) -> list[dict[str, torch.Tensor]]:
    """Split activations of ``eot`` stacked copies of a batch into one dict per draw."""
    if eot == 1:
        return [acts]
    chunks = {k: v.chunk(eot) for k, v in acts.items()}
    return [{k: c[i] for k, c in chunks.items()} for i in range(eot)]


def _evaluate(model: ProbeModel, objective: Objective, x: torch.Tensor, layers: tuple[str, ...], eot: int,
              transforms: Sequence[Transform], gen: torch.Generator, mean: bool = True,
              average: str = "scores") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Scores of images ``x`` over ``eot`` draws of the transforms (and of the model's own noise): with
    ``average='scores'`` every draw is scored on its own (per-image objectives see one copy of each image) and the
    scores averaged; with ``'activations'`` the objective scores the activations averaged over draws (the mean
    logits a stochastic model's verdict reads).  Also returns the activations averaged over draws when ``mean``
    (for stopping criteria), else those of the first draw."""
    if transforms:
        acts = model.activations(torch.cat([apply_transforms(transforms, x, gen) for _ in range(eot)]), layers,
                                 check=False)
    else:  # the same images drawn eot times: a model with a Draws site runs its noise-free layers once
        acts = model.activations(x, layers, check=False, draws=eot)
    if eot == 1:
        return objective(acts), acts
    mean_acts = {k: v.view(eot, -1, *v.shape[1:]).mean(0) for k, v in acts.items()}
    if average == "activations":
        return objective(mean_acts), mean_acts
    draws = _draws(acts, eot)
    scores = torch.stack([objective(d) for d in draws]).mean(0)
    return scores, (mean_acts if mean else draws[0])


def optimize(model: ProbeModel, objective: Objective | str, param: Parametrization, *,
             constraints: Sequence[Constraint] = (Box(),), step: str | GradientFree = "adam",
             lr: float | torch.Tensor = 0.05, lr_schedule: str = "constant", steps: int = 256,
             transforms: Sequence[Transform] = (), eot: int = 1, eot_average: str = "scores",
             target: float | None = None, stop: Criterion | None = None, random_start: bool = False,
             seed: int = 0, relu_override: int = 0, progress: bool = True, metadata: dict | None = None) -> Result:
    """Maximize ``objective`` over the images of ``param``; the single loop behind synthesis, attacks, metamers.

    ``constraints`` apply in the forward pass and project pixel parameters after each step (a projecting
    constraint on a parametrization without pixels is refused); ``random_start`` starts each image at a uniform
    point of its Lp ball, and every start is projected before the first forward pass.  ``transforms`` (and a
    stochastic model's noise) are drawn ``eot`` times per step, each draw scored and the scores averaged
    (``eot_average='scores'``), or the objective scores the activations averaged over draws (``'activations'``:
    an attack on the mean logits a noisy model's verdict reads).  ``lr`` may
    be one step size per image.  An image stops once its score reaches ``target`` or it meets the ``stop``
    criterion: it keeps the image that did, and leaves the batch, so it costs no more compute.  The returned
    images are projected once more and checked: ``Result.success`` is the criterion on them, ``Result.distance``
    their distance from the (first) ball's center, ``Result.best`` the best-scoring iterate.  ``relu_override``
    steps of Lucid's redirected ReLU gradient start the run.
    """
    objective = parse(objective).resolve(model)
    if steps < 0 or eot < 1:
        raise ConfigError(f"steps must be >= 0 and eot >= 1, got steps={steps}, eot={eot}")
    if eot_average not in ("scores", "activations"):
        raise UnknownNameError("EOT average", eot_average, ("scores", "activations"))
    rule = combine(target, stop)
    rule = rule.resolve(model) if rule is not None else None
    model.eval()
    device = model.device
    param = param.to(device)
    constraints = [c.to(device) for c in constraints]
    projections = _projections(param, constraints)
    pixels = param.pixels
    gen = torch.Generator().manual_seed(seed)

    def project_(x: torch.Tensor) -> None:
        for c in projections:
            c.project_(x)

    with torch.no_grad():
        if pixels is not None:  # a start a little outside the box is projected; 0-255 pixels or NaN are refused
            check_images(pixels, slack=1.0)
        if random_start:
            balls = [c for c in projections if isinstance(c, LpBall)]
            if not balls:
                raise ConfigError("random_start needs an LpBall constraint on a pixel parametrization")
            for ball in balls:
                pixels.copy_(ball.sample(gen))
        if pixels is not None:
            project_(pixels)
        first = render(param, constraints).detach()
    check_images(first)
    n = first.shape[0]
    gradient_free = not isinstance(step, str)
    opt = sched = None
    if not gradient_free:
        opt = step_rule(step, list(param.parameters()), lr, steps, project_)
        sched = schedule(lr_schedule, opt, steps)
    elif isinstance(lr, torch.Tensor):
        raise ConfigError("per-image step sizes need a gradient step rule")
    layers = tuple(dict.fromkeys((*objective.layers, *(rule.layers if rule is not None else ()))))
    done = torch.zeros(n, dtype=torch.bool, device=device)
    frozen = first.clone()
    last = torch.full((n,), math.nan, device=device)
    best = first.clone()
    best_scores = torch.full((n,), -math.inf, device=device)
    history: list[torch.Tensor] = []
    grad_norms: list[torch.Tensor] = []
    evaluations = 0
    active = torch.arange(n, device=device)
    obj, crit = objective, rule
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=str(objective)[:40], unit="step", disable=not progress, leave=False)
    for t in bar:
        param.schedule(t / max(1, steps))
        with redirected_relu(model.net) if t < relu_override else contextlib.nullcontext():
            with torch.set_grad_enabled(not gradient_free):
                x = render(param, constraints)
                xa = x if len(active) == n else x[active]
                scores, acts = _evaluate(model, obj, xa, layers, eot, transforms, gen, mean=crit is not None,
                                         average=eot_average)
                if not gradient_free:
                    opt.zero_grad(set_to_none=True)
                    (-scores.sum()).backward()
        evaluations += len(active) * eot
        scores = scores.detach()
        last[active] = scores
        history.append(last.clone())
        better = scores > best_scores[active]
        best[active[better]] = xa.detach()[better]
        best_scores[active[better]] = scores[better]
        if not gradient_free:
            grad_norms.append(_grad_norms(param, n, active))
        reached = None
        if crit is not None:
            reached = crit(scores, {k: v.detach() for k, v in acts.items()})
            if reached.any():  # keep the image that met the criterion, before this step moves it
                rows = active[reached]
                frozen[rows] = xa.detach()[reached]
                done[rows] = True
                if bool(done.all()):
                    break
            else:
                reached = None
        if gradient_free:
            step.update(scores)
        else:
            if hasattr(opt, "observe"):
                opt.observe(scores, active)
            opt.step()
            sched.step()
        if pixels is not None:
            with torch.no_grad():
                project_(pixels)
                if done.any():
                    pixels[done] = frozen[done]
        if reached is not None and not gradient_free:  # finished images leave the batch
            active = active[~reached]
            obj, crit = objective.select(active), rule.select(active)
        if progress and t % 8 == 0:
            bar.set_postfix(score=f"{float(scores.mean()):.3g}", done=f"{int(done.sum())}/{n}")
    bar.close()
    elapsed = time.perf_counter() - t0
    with torch.no_grad():
        final = render(param, constraints).clone()
        final[done] = frozen[done]
        project_(final)  # the safety net: whatever the step rule did, the returned images are feasible
        final_scores, final_acts = _evaluate(model, objective, final, layers, eot, transforms, gen,
                                             average=eot_average)
        success = rule(final_scores, final_acts) if rule is not None else None
        better = final_scores > best_scores
        best[better], best_scores[better] = final[better], final_scores[better]
        project_(best)
    steps_run = len(history)
    meta = {
        "model": model.name, "weights_sha256": model.info.get("sha256", model.info.get("weights", "")),
        "layers": list(layers), "objective": str(objective), "parametrization": str(param),
        "constraints": [str(c) for c in constraints], "transforms": describe(transforms), "eot": eot,
        "eot_average": eot_average,
        "step_rule": step if isinstance(step, str) else str(step),
        "lr": lr if not isinstance(lr, torch.Tensor) else "per image", "lr_schedule": lr_schedule,
        "steps": steps, "steps_run": steps_run, "target": target, "stop": str(stop) if stop is not None else None,
        "random_start": random_start, "relu_override": relu_override, "seed": seed, "evaluations": evaluations,
        "seconds": round(elapsed, 3), "device": str(device), "phosphene": __version__, "torch": torch.__version__,
        "machine": platform.machine(), **(metadata or {}),
    }
    hist = torch.stack(history).cpu() if history else torch.zeros(0, n)
    grads = torch.stack(grad_norms).cpu() if grad_norms else torch.zeros(0, n)
    balls = [c for c in projections if isinstance(c, LpBall)]
    return Result(final.detach().cpu(), hist, final_scores.cpu(),
                  {k: population(v).cpu() for k, v in final_acts.items()}, meta,
                  success=success.cpu() if success is not None else None, best=best.cpu(),
                  best_scores=best_scores.cpu(), grad_norm=grads,
                  distance=balls[0].distance(final).cpu() if balls else None)


def _grad_norms(param: Parametrization, n: int, active: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norm of the gradient over every per-image parameter: NaN for images no longer in the batch,
    ∞ for a non-finite gradient (zero and non-finite norms are what gradient-masking checks look for)."""
    total = torch.zeros(n, device=active.device)
    for p in param.parameters():
        if p.grad is not None and p.shape[0] == n:
            total += torch.linalg.vector_norm(p.grad.detach().flatten(1), dim=1).float().pow(2)
    out = torch.full((n,), math.nan, device=active.device)
    out[active] = torch.nan_to_num(total[active].sqrt(), nan=math.inf)
    return out
