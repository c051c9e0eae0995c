"""The one optimization loop of phosphene: choose pixels so a function of a model's activations goes up.

Synthesis, attacks and metamers differ only in what they pass in: an objective on activations, a
parametrization of the image, constraints (differentiable maps and projections), a step rule and schedule,
random transforms averaged per step, and a stopping target.  The loop runs the model only as far as the
deepest layer the objective reads.  Gradient-free step rules (``synth.evolve``) plug into the same loop: they
receive the scores instead of gradients.

A run can be long and interrupted: with ``checkpoint=PATH`` the state that defines it (parameters, step rule and
schedule state, random generators, step count, which images stopped, history) is written every
``checkpoint_every`` steps and at the end, and a later call with the same arguments continues from it, giving
the same images as an uninterrupted run (bit for bit on a CPU); a call with more ``steps`` goes on from there
(plenoptic's ``synthesize()`` again).

Speed and memory on big models: ``precision='bf16'`` runs the network's forward under bfloat16 autocast while the
objective, its reduction and the step stay in float32; ``channels_last`` lays the weights and images out NHWC for the
run; ``compile`` runs the traced forward through ``torch.compile``; ``checkpoint_activations`` recomputes each stage
of the network in the backward pass instead of keeping its activations (``ProbeModel.activations``).  Precision
changes the numbers a run produces, so it is part of a checkpoint's fingerprint; the other three change only how
they are computed (layout, kernels, when activations are made) and a run may resume with them switched.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from synth.version import __version__
from synth.engine.constraints import Box, Constraint, LpBall
from synth.engine.criteria import Criterion, combine
from synth.errors import CheckpointError, ConfigError, UnknownNameError
from synth.files import atomic, machine, tensor_digest
from synth.engine.objectives import Objective, parse
from synth.engine.params import Parametrization
from synth.zoo.probe import SHARED, ProbeModel, check_images
from synth.engine.results import Result
from synth.rng import derive, generator, noise_generator
from synth.engine.transforms import Transform, apply as apply_transforms, describe

STEP_RULES = ("adam", "sgd", "sign", "l2", "apgd", "apgd-l2")
PRECISIONS = ("fp32", "bf16")
SCHEDULES = ("constant", "cosine", "linear", "step")
CHECKPOINT_FORMAT = 2  # 2: the model's noise from the run's own generator; the global generators untouched


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

    _STATE = ("eta", "prev", "best", "best_grad", "best_f", "last_f", "rises", "best_at_check", "halved_at_check")

    def state_dict(self) -> dict:
        """The optimizer's state plus Auto-PGD's per-image step sizes, best points and checkpoint counters."""
        out = super().state_dict()
        out["apgd"] = {**{k: getattr(self, k).clone() for k in self._STATE},
                       "gap": self.gap, "t": self.t, "since": self.since}
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        mine = state_dict.pop("apgd")
        super().load_state_dict(state_dict)
        for k in self._STATE:
            getattr(self, k).copy_(mine[k])
        self.gap, self.t, self.since = mine["gap"], mine["t"], mine["since"]

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
    """A step rule that updates the parametrization from scores alone (e.g. a genetic algorithm); to checkpoint,
    it also has ``state_dict()`` and ``load_state_dict()``."""

    def update(self, scores: torch.Tensor) -> None:
        """Replace the population in the parametrization given this generation's scores."""


OptimizerFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]
ScheduleFactory = Callable[[torch.optim.Optimizer, int], torch.optim.lr_scheduler.LRScheduler]


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


class StepDecay:
    """Step decay: the step size is multiplied by ``gamma`` at the start of each of ``stages`` equal parts of the
    run.  The default is Feather et al. (2023)'s metamer schedule: 8 stages, each halving the step."""

    def __init__(self, stages: int = 8, gamma: float = 0.5):
        if stages < 1 or not 0 < gamma <= 1:
            raise ConfigError(f"step decay needs stages >= 1 and 0 < gamma <= 1, got {stages} and {gamma}")
        self.stages, self.gamma = int(stages), float(gamma)

    def __call__(self, opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
        every = max(1, math.ceil(steps / self.stages))
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: self.gamma ** min(t // every, self.stages - 1))

    def __str__(self) -> str:
        return f"step(stages={self.stages}, gamma={self.gamma:g})"


def schedule(name: str | ScheduleFactory, opt: torch.optim.Optimizer,
             steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Step-size schedule over the run: 'constant', 'cosine' (to zero), 'linear' (to zero), 'step' (halved at
    each eighth, Feather et al.'s), or a callable ``(optimizer, steps) -> scheduler`` (e.g. ``StepDecay(4)``).
    Each is a closed form of the step index, so a run continued for more steps keeps its shape."""
    total = max(1, steps)
    if callable(name):
        out = name(opt, steps)
        if not isinstance(out, torch.optim.lr_scheduler.LRScheduler):
            raise ConfigError(f"schedule {name} returned {type(out).__name__}, not a torch LRScheduler")
        return out
    if name == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    if name == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)))
    if name == "linear":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: max(0.0, 1 - t / total))
    if name == "step":
        return StepDecay()(opt, steps)
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


class _FakeReLU(torch.autograd.Function):
    """ReLU forward, identity backward: gradient reaches units whose input is negative (Feather et al. 2023)."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        return grad


def last_relu(net: nn.Module, module: str) -> str | None:
    """The name of the last ``nn.ReLU`` inside module ``module`` of ``net`` (or the module itself), or None."""
    names = [n for n, m in net.named_modules() if isinstance(m, nn.ReLU) and (n == module or n.startswith(module + "."))]
    return names[-1] if names else None


@contextlib.contextmanager
def fake_relu(net: nn.Module, module: str | None) -> Iterator[str | None]:
    """Temporarily give the last ReLU of ``module`` an identity gradient (the 'fake ReLU' of Feather et al.'s
    metamers, so a matched stage's silent units still pass gradient); yields the ReLU's name, None if none."""
    name = last_relu(net, module) if module else None
    relu = dict(net.named_modules())[name] if name else None
    inplace = relu.inplace if relu is not None else False
    if relu is not None:
        relu.inplace = False
        relu.forward = _FakeReLU.apply
    try:
        yield name
    finally:
        if relu is not None:
            del relu.forward
            relu.inplace = inplace


class _SoftReLU(torch.autograd.Function):
    """ReLU forward; backward through the derivative of a softplus of sharpness ``beta`` / the input's RMS per
    image, so a unit just below threshold still passes some gradient (a surrogate gradient)."""

    @staticmethod
    def forward(ctx, x, beta):
        ctx.save_for_backward(x)
        ctx.beta = beta
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        rms = x.detach().flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-6).view(-1, *[1] * (x.ndim - 1))
        return grad * torch.sigmoid(ctx.beta * x / rms), None


class _SoftMaxPool(torch.autograd.Function):
    """Max-pooling forward; backward spread over each window by a softmax of temperature ``tau`` × the input's RMS
    per image, instead of all to the argmax (a surrogate gradient that lets a window's runner-up take over)."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, tau):
        ctx.save_for_backward(x)
        ctx.args = (kernel, stride, padding, tau)
        return F.max_pool2d(x, kernel, stride, padding)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        kernel, stride, padding, tau = ctx.args
        n, c, h, w = x.shape
        rows = x.detach().reshape(n * c, 1, h, w)
        windows = F.unfold(rows, kernel, padding=padding, stride=stride)               # (N·C, k·k, L)
        valid = F.unfold(torch.ones(1, 1, h, w, device=x.device, dtype=x.dtype), kernel, padding=padding,
                         stride=stride) > 0
        rms = x.detach().flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-6).repeat_interleave(c).view(-1, 1, 1)
        weights = torch.softmax((windows / (tau * rms)).masked_fill(~valid, -math.inf), dim=1)
        spread = F.fold(weights * grad.reshape(n * c, 1, -1), (h, w), kernel, padding=padding, stride=stride)
        return spread.reshape(n, c, h, w), None, None, None, None


class Surrogate:
    """Surrogate-gradient settings: the softplus sharpness ``relu_beta`` of a ReLU's backward and the softmax
    temperature ``pool_tau`` of a max-pool's (both relative to the input's RMS per image).  With ``fade``, the
    surrogate gives way to the exact gradient over the run (``at(progress)``): τ falls linearly to 1 % of its start
    and β rises as 1 / (1 − progress), to 100× at the end, so the smooth gradient opens the way early and the exact
    one settles the match."""

    def __init__(self, relu_beta: float = 2.0, pool_tau: float = 0.2, fade: bool = True):
        if not relu_beta > 0 or not pool_tau > 0:
            raise ConfigError(f"surrogate gradients need relu_beta > 0 and pool_tau > 0, got {relu_beta} and {pool_tau}")
        self.relu_beta, self.pool_tau, self.fade = float(relu_beta), float(pool_tau), fade
        self.beta, self.tau = self.relu_beta, self.pool_tau

    def at(self, progress: float) -> None:
        """Set the current sharpness for the fraction ``progress`` of the run done."""
        if self.fade:
            f = min(max(progress, 0.0), 1.0)
            self.beta = self.relu_beta / max(0.01, 1 - f)
            self.tau = self.pool_tau * (1 - 0.99 * f)

    def __str__(self) -> str:
        return f"surrogate(relu_beta={self.relu_beta:g}, pool_tau={self.pool_tau:g}{', fading' if self.fade else ''})"


@contextlib.contextmanager
def surrogate_gradients(net: nn.Module, settings: Surrogate | None = None,
                        skip: Sequence[str] = ()) -> Iterator[list[str]]:
    """Temporarily give every ``nn.ReLU`` a softplus-derivative backward and every ``nn.MaxPool2d`` a softmax-window
    backward (forward passes unchanged, so scores stay exact), except modules named in ``skip``; the backward reads
    ``settings`` (a ``Surrogate``) when it runs, so a run can fade them.  Matching a late stage through a ReLU
    network stalls where silent units and pooling argmaxes block the gradient: measured on toy-standard's IT
    (16 test images, Adam 0.01, 2400 steps), 12 of 16 metamers reached 0.05 normalized error with fixed surrogates,
    15 with fading ones, and the median error after 1200 steps of 8 of them fell from 0.071 without to 0.038.
    Yields the names of the modules changed."""
    settings = settings or Surrogate()
    changed: list[tuple[nn.Module, bool]] = []
    names = []
    for name, m in net.named_modules():
        if name in skip:
            continue
        if isinstance(m, nn.ReLU):
            changed.append((m, m.inplace))
            m.inplace = False
            m.forward = functools.partial(_relu, settings=settings)
        elif isinstance(m, nn.MaxPool2d) and m.dilation in (1, (1, 1)) and not m.ceil_mode \
                and not m.return_indices:
            changed.append((m, False))
            m.forward = functools.partial(_pool, m=m, settings=settings)
        else:
            continue
        names.append(name)
    try:
        yield names
    finally:
        for m, inplace in changed:
            del m.forward
            if isinstance(m, nn.ReLU):
                m.inplace = inplace


# The surrogates' sharpness changes every step; torch.compile (2.14) fails to lift such a float into the graph of a
# custom autograd Function, so these two run eagerly inside a compiled forward (a graph break; 0.3 us when eager).
@torch.compiler.disable
def _relu(x: torch.Tensor, settings: Surrogate) -> torch.Tensor:
    return _SoftReLU.apply(x, settings.beta)


@torch.compiler.disable
def _pool(x: torch.Tensor, m: nn.MaxPool2d, settings: Surrogate) -> torch.Tensor:
    return _SoftMaxPool.apply(x, m.kernel_size, m.stride or m.kernel_size, m.padding, settings.tau)


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


class Forward:
    """The truncated forward pass of a run, as its speed and memory options make it: ``forward(x, draws)`` gives
    the activations of ``layers`` in float32 and the standard layout, whatever precision and layout the network ran
    in, so that objectives and their reductions are computed as in a plain run.

    ``precision='bf16'`` runs the network under ``torch.autocast`` to bfloat16 (convolutions and matrix products in
    bf16, the rest as autocast decides) and nothing else: bf16 has float32's exponent range, so neither the
    activations nor the gradients flowing back to the pixels under- or overflow and no loss scaling is needed; the
    gradient keeps bf16's 8 bits of mantissa, plenty for a step direction.  float16 is refused: its 5-bit exponent
    underflows small pixel gradients unless the loss is scaled, and a loss scaler skips the steps where the scaled
    gradient overflows, which would make a run's step count and its checkpoints depend on the scaler.
    ``channels_last`` hands the network its images in NHWC (the weights follow in ``weights_layout``);
    ``compile`` and ``checkpoint_activations`` go to ``ProbeModel.activations``."""

    def __init__(self, model: ProbeModel, layers: Sequence[str], precision: str = "fp32",
                 channels_last: bool = False, compile: bool | str = False, checkpoint_activations: bool = False):
        device = model.device
        if precision == "fp16":
            raise ConfigError("precision 'fp16' is not supported: float16's range underflows pixel gradients without "
                              "loss scaling, which skips steps; use precision='bf16' (float32's range, no scaling)")
        if precision not in PRECISIONS:
            raise UnknownNameError("precision", precision, PRECISIONS)
        if precision == "bf16" and not (torch.amp.is_autocast_available(device.type) and
                                        (device.type != "cuda" or torch.cuda.is_bf16_supported())):
            raise ConfigError(f"precision 'bf16' needs bfloat16 autocast, which {device} does not offer; use 'fp32'")
        if isinstance(compile, str) and compile not in torch.compiler.list_backends(exclude_tags=()):
            raise UnknownNameError("torch.compile backend", compile, torch.compiler.list_backends())
        self.model, self.layers, self.precision, self.channels_last = model, tuple(layers), precision, channels_last
        self.options = {"compile": compile, "checkpoint_activations": checkpoint_activations}
        self.plain = precision == "fp32" and not channels_last
        self.device_type = device.type

    def __call__(self, x: torch.Tensor, draws: int = 1) -> dict[str, torch.Tensor]:
        """Activations of ``draws`` noise draws of images ``x`` (validated by the caller)."""
        if self.plain:
            return self.model.activations(x, self.layers, check=False, draws=draws, **self.options)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            acts = self.model.activations(x, self.layers, check=False, draws=draws, **self.options)
        return {k: v.to(torch.float32, memory_format=torch.contiguous_format) for k, v in acts.items()}

    def describe(self) -> dict:
        """The options as a run's metadata records them."""
        compile = self.options["compile"]
        return {"precision": self.precision, "channels_last": self.channels_last,
                "compile": "inductor" if compile is True else compile,
                "checkpoint_activations": self.options["checkpoint_activations"]}


@contextlib.contextmanager
def weights_layout(model: ProbeModel, channels_last: bool) -> Iterator[None]:
    """Temporarily lay the model's 4-d weights out channels-last (NHWC), the layout its convolutions then run
    fastest in, and restore the very tensors it had afterwards; the model's other users see no change."""
    moved = []
    if channels_last:
        for t in [*model.parameters(), *model.buffers()]:
            if t.dim() == 4 and not t.is_contiguous(memory_format=torch.channels_last):
                moved.append((t, t.data))
                t.data = t.data.contiguous(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for t, data in moved:
            t.data = data


def _evaluate(forward: Forward, objective: Objective, x: torch.Tensor, eot: int,
              transforms: Sequence[Transform], gen: torch.Generator, mean: bool = True,
              average: str = "scores") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Scores of images ``x`` over ``eot`` draws of the transforms (and of the model's own noise): with
    ``average='scores'`` every draw is scored on its own (per-image objectives see one copy of each image) and the
    scores averaged; with ``'activations'`` the objective scores the activations averaged over draws (the mean
    logits a stochastic model's verdict reads).  Also returns the activations averaged over draws when ``mean``
    (for stopping criteria), else those of the first draw."""
    if transforms:
        acts = forward(torch.cat([apply_transforms(transforms, x, gen) for _ in range(eot)]))
    else:  # the same images drawn eot times: a model with a Draws site runs its noise-free layers once
        acts = forward(x, eot)
    if eot == 1:
        return objective(acts), acts
    mean_acts = {k: v.view(eot, -1, *v.shape[1:]).mean(0) for k, v in acts.items()}
    if average == "activations":
        return objective(mean_acts), mean_acts
    draws = _draws(acts, eot)
    scores = torch.stack([objective(d) for d in draws]).mean(0)
    return scores, (mean_acts if mean else draws[0])


def optimize(model: ProbeModel, objective: Objective | str, param: Parametrization, *,
             constraints: Sequence[Constraint] = (Box(),), step: str | GradientFree | OptimizerFactory = "adam",
             lr: float | torch.Tensor = 0.05, lr_schedule: str | ScheduleFactory = "constant", steps: int = 256,
             transforms: Sequence[Transform] = (), eot: int = 1, eot_average: str = "scores",
             target: float | None = None, stop: Criterion | Callable | None = None, random_start: bool = False,
             seed: int = 0, relu_override: int = 0, checkpoint: str | os.PathLike | None = None,
             checkpoint_every: int = 100, callback: Callable[[int, int], None] | None = None,
             watch: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
             progress: bool = True, metadata: dict | None = None, settings: dict | None = None,
             precision: str = "fp32", channels_last: bool = False, compile: bool | str = False,
             checkpoint_activations: bool = False) -> Result:
    """Maximize ``objective`` over the images of ``param``; the single loop behind synthesis, attacks, metamers.

    ``constraints`` apply in the forward pass and project pixel parameters after each step (a projecting
    constraint on a parametrization without pixels is refused); ``random_start`` starts each image at a uniform
    point of its Lp ball, and every start is projected before the first forward pass.  ``transforms`` (and a
    stochastic model's noise) are drawn ``eot`` times per step, each draw scored and the scores averaged
    (``eot_average='scores'``), or the objective scores the activations averaged over draws (``'activations'``:
    an attack on the mean logits a noisy model's verdict reads).  ``step`` is a step rule's name, a gradient-free
    rule, or a factory ``params -> torch.optim.Optimizer`` (it sets its own step size); ``lr`` may be one step size
    per image; ``lr_schedule`` a name or a factory (``schedule``).  An image stops once its score reaches
    ``target`` or it meets the ``stop`` rule (a ``Criterion`` or any callable ``fn(scores, acts)``): it keeps the
    image that did, and leaves the batch, so it costs no more compute.  The returned images are projected once more
    and checked: ``Result.success`` is the rule on them, ``Result.distance`` their distance from the (first) ball's
    center, ``Result.best`` the best-scoring iterate.  Every score a result reports — ``scores``, ``activations``,
    ``success``, ``history``, ``best_scores`` and the choice of the best iterate, and the stopping rule — is
    measured on the images themselves, with no random transform (``transforms`` shape the gradient only: with
    them each step scores its images once more, without gradient); over a stochastic model's noise it is the
    ``eot``-draw mean, as the objective asks.  The model's noise comes from a generator the run seeds (from
    ``seed``), never torch's global one, which the run leaves untouched.  A run that changes the model (Lucid's
    redirected ReLU, channels-last weights) does so on a ``ProbeModel.fork``, so no other run sees it.
    ``settings``: what a front-end set beyond these arguments that defines the run (e.g. metamers' surrogate
    gradients): recorded in the metadata and part of the checkpoint's fingerprint.  ``relu_override`` steps of
    Lucid's redirected ReLU gradient start the run.  ``checkpoint``: a file the run's state is written to every ``checkpoint_every`` steps and at
    the end, and continued from when it exists (see the module docstring).  ``callback(t, steps)`` runs before
    each step (e.g. to fade surrogate gradients); it must depend on ``t`` alone for a resumed run to match.
    ``watch(t, images, scores)`` sees each step's images (N×3×H×W as rendered for that step, detached) and every
    image's latest score (N), for live displays and progress; what it does to them does not reach the run.
    Speed and memory (see ``Forward``; recorded in the metadata): ``precision`` 'fp32' or 'bf16' (the network's
    forward under bfloat16 autocast, the objective in float32), ``channels_last`` (NHWC weights and images),
    ``compile`` (``torch.compile`` the forward: True for inductor, or a backend's name; the first steps pay for
    the compilation), ``checkpoint_activations`` (recompute each stage in the backward pass: less memory, about
    one more forward pass of compute per step).  Every step and the final scores use them.
    """
    objective = parse(objective).resolve(model)
    if steps < 0 or eot < 1:
        raise ConfigError(f"steps must be >= 0 and eot >= 1, got steps={steps}, eot={eot}")
    if eot_average not in ("scores", "activations"):
        raise UnknownNameError("EOT average", eot_average, ("scores", "activations"))
    if checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    rule = combine(target, stop)
    rule = rule.resolve(model) if rule is not None else None
    if model.training:
        model.eval()
    device = model.device
    param = param.to(device)
    constraints = [c.to(device) for c in constraints]
    projections = _projections(param, constraints)
    pixels = param.pixels
    gen = torch.Generator().manual_seed(seed)  # transforms and random starts
    noise = generator(derive(seed, 1), device)  # the model's own noise
    draws = eot if model.stochastic else 1  # noise draws when a score is measured on the images themselves

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
    gradient_free = not isinstance(step, str) and hasattr(step, "update")
    opt = sched = None
    if not gradient_free:
        opt = _optimizer(step, list(param.parameters()), lr, steps, project_)
        sched = schedule(lr_schedule, opt, steps)
    elif isinstance(lr, torch.Tensor):
        raise ConfigError("per-image step sizes need a gradient step rule")
    layers = tuple(dict.fromkeys((*objective.layers, *(rule.layers if rule is not None else ()))))
    recipe = {
        "model": model.name, "weights_sha256": model.weights_digest(),
        "layers": list(layers), "objective": str(objective), "parametrization": str(param),
        "constraints": [c.fingerprint() for c in constraints], "transforms": describe(transforms), "eot": eot,
        "eot_average": eot_average, "step_rule": _describe(step),
        "lr": lr if not isinstance(lr, torch.Tensor) else f"per image sha256:{tensor_digest(lr)}",
        "lr_schedule": _describe(lr_schedule), "target": target,
        "stop": None if stop is None else str(combine(None, stop)), "random_start": random_start,
        "relu_override": relu_override, "seed": seed, "parametrization_info": param.recipe(),
        "interventions": [str(i) for i in model.interventions],  # a model made by model.intervene(...)
        "objective_fingerprint": objective.fingerprint(), "settings": dict(settings or {}),
    }
    if relu_override > 0 or channels_last:  # the run changes modules or weight layouts: on its own fork
        model = model.fork()
    forward = Forward(model, layers, precision, channels_last, compile, checkpoint_activations)
    recipe.update(forward.describe())
    state = {"t": 0, "done": torch.zeros(n, dtype=torch.bool, device=device), "frozen": first.clone(),
             "last": torch.full((n,), math.nan, device=device), "best": first.clone(),
             "best_scores": torch.full((n,), -math.inf, device=device), "history": [], "grad_norms": [],
             "evaluations": 0, "active": torch.arange(n, device=device), "seconds": 0.0}
    codes = param.codes()  # a generator's latent codes: tracked beside the images they make
    if codes is not None:
        state["best_codes"], state["frozen_codes"] = codes.clone(), codes.clone()
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.is_file():
        _resume(path, state, recipe, param, opt, sched, step if gradient_free else None, rule, objective,
                (gen, noise), device, n)
    done, frozen, last, best, best_scores = (state[k] for k in ("done", "frozen", "last", "best", "best_scores"))
    history, grad_norms, active = state["history"], state["grad_norms"], state["active"]
    best_codes, frozen_codes = state.get("best_codes"), state.get("frozen_codes")
    evaluations = state["evaluations"]
    obj, crit = objective, rule
    if len(active) < n:
        obj, crit = objective.select(active), rule.select(active)

    def save(t_next: int, seconds: float) -> None:
        tracked = {"done": done, "frozen": frozen, "last": last, "best": best, "best_scores": best_scores,
                   "history": history, "grad_norms": grad_norms, "active": active, "evaluations": evaluations,
                   "seconds": seconds,
                   **({"best_codes": best_codes, "frozen_codes": frozen_codes} if codes is not None else {})}
        _save_checkpoint(path, recipe, t_next, param, opt, sched, step if gradient_free else None, rule, objective,
                         (gen, noise), tracked)

    start = min(state["t"], steps)
    t0 = time.perf_counter() - state["seconds"]
    bar = tqdm(range(start, steps), desc=str(objective)[:40], unit="step", disable=not progress, leave=False,
               initial=start, total=steps)
    t_next = start
    with weights_layout(model, channels_last), noise_generator(noise):  # NHWC weights; the run's own noise
        for t in bar if not bool(done.all()) else ():
            param.schedule(t / max(1, steps))
            if callback is not None:
                callback(t, steps)
            with redirected_relu(model.net) if t < relu_override else contextlib.nullcontext():
                with torch.set_grad_enabled(not gradient_free):
                    x = render(param, constraints)
                    xa = x if len(active) == n else x[active]
                    ca = param.codes()[active].clone() if codes is not None else None
                    scores, acts = _evaluate(forward, obj, xa, eot, transforms, gen, mean=crit is not None,
                                             average=eot_average)
                    if not gradient_free:
                        opt.zero_grad(set_to_none=True)
                        with SHARED.running():  # a recomputed stage runs modules again in the backward pass
                            (-scores.sum()).backward()
            evaluations += len(active) * eot
            scores = scores.detach()
            if transforms:  # what the step's images score themselves: the run's record and its stopping rule
                with torch.no_grad():
                    seen, acts = _evaluate(forward, obj, xa.detach(), draws, (), gen, mean=crit is not None,
                                           average=eot_average)
                evaluations += len(active) * draws
            else:
                seen = scores
            last[active] = seen
            history.append(last.clone())
            if watch is not None:
                watch(t, x.detach().clone(), last.clone())
            better = seen > best_scores[active]
            best[active[better]] = xa.detach()[better]
            best_scores[active[better]] = seen[better]
            if codes is not None:
                best_codes[active[better]] = ca[better]
            if not gradient_free:
                grad_norms.append(_grad_norms(param, n, active))
            t_next = t + 1
            reached = None
            if crit is not None:
                reached = crit(seen, {k: v.detach() for k, v in acts.items()})
                if reached.any():  # keep the image that met the criterion, before this step moves it
                    rows = active[reached]
                    frozen[rows] = xa.detach()[reached]
                    if codes is not None:
                        frozen_codes[rows] = ca[reached]
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
            if path is not None and t_next % checkpoint_every == 0 and t_next < steps:
                save(t_next, time.perf_counter() - t0)
            if progress and t % 8 == 0:
                bar.set_postfix({"score": f"{float(seen.mean()):.3g}", "done": f"{int(done.sum())}/{n}"})
        bar.close()
        elapsed = time.perf_counter() - t0
        if path is not None:
            save(max(t_next, start), elapsed)
        with torch.no_grad():  # the result's figures: measured on the returned images, with no transform
            final = render(param, constraints).clone()
            final[done] = frozen[done]
            project_(final)  # the safety net: whatever the step rule did, the returned images are feasible
            final_scores, final_acts = _evaluate(forward, objective, final, draws, (), gen, average=eot_average)
            success = rule.final(final_scores, final_acts) if rule is not None else None
            better = final_scores > best_scores
            best[better], best_scores[better] = final[better], final_scores[better]
            project_(best)
            if codes is not None:
                final_codes = param.codes().clone()
                final_codes[done] = frozen_codes[done]
                best_codes[better] = final_codes[better]
    meta = {**recipe, "steps": steps, "steps_run": len(history), "evaluations": evaluations,
            "seconds": round(elapsed, 3), "device": str(device), "phosphene": __version__, "torch": torch.__version__,
            "machine": machine(), **({"checkpoint": str(path)} if path is not None else {}),
            **(metadata or {})}
    hist = torch.stack(history).cpu() if history else torch.zeros(0, n)
    grads = torch.stack(grad_norms).cpu() if grad_norms else torch.zeros(0, n)
    balls = [c for c in projections if isinstance(c, LpBall)]
    return Result(final.detach().cpu(), hist, final_scores.cpu(),
                  {k: v.detach().cpu() for k, v in final_acts.items() if k != "input"}, meta,
                  success=success.cpu() if success is not None else None, best=best.cpu(),
                  best_scores=best_scores.cpu(), grad_norm=grads,
                  distance=balls[0].distance(final).cpu() if balls else None, targets=objective.tensors(),
                  codes=final_codes.cpu() if codes is not None else None,
                  best_codes=best_codes.cpu() if codes is not None else None)


def _describe(thing: object) -> str:
    """A name for a step rule or schedule that is the same in every process (no object addresses)."""
    if isinstance(thing, functools.partial):
        args = [repr(a) for a in thing.args] + [f"{k}={v!r}" for k, v in thing.keywords.items()]
        return f"{_describe(thing.func)}({', '.join(args)})"
    if isinstance(thing, str) or type(thing).__str__ is not object.__str__:
        return str(thing)
    return getattr(thing, "__qualname__", type(thing).__qualname__)


def _optimizer(step: str | OptimizerFactory, params: list[torch.Tensor], lr: float | torch.Tensor, steps: int,
               project: Callable[[torch.Tensor], None]) -> torch.optim.Optimizer:
    """The gradient step rule: by name, or built by the caller's factory."""
    if isinstance(step, str):
        return step_rule(step, params, lr, steps, project)
    if not callable(step):
        raise ConfigError(f"step must be a step rule's name ({', '.join(STEP_RULES)}), a gradient-free rule, or a "
                          f"factory params -> torch.optim.Optimizer; got {type(step).__name__}")
    opt = step(params)
    if not isinstance(opt, torch.optim.Optimizer):
        raise ConfigError(f"the step factory returned {type(opt).__name__}, not a torch.optim.Optimizer")
    return opt


# What must agree between a checkpoint and the call continuing it (more steps are allowed: the run goes on).
_FINGERPRINT = ("model", "weights_sha256", "objective", "objective_fingerprint", "parametrization", "constraints",
                "transforms", "eot", "eot_average", "step_rule", "lr", "lr_schedule", "target", "stop", "random_start",
                "relu_override", "seed", "interventions", "precision", "parametrization_info", "settings")


def _save_checkpoint(path: Path, recipe: dict, t_next: int, param: Parametrization, opt, sched, free, rule,
                     objective: Objective, gens: tuple[torch.Generator, torch.Generator], state: dict) -> None:
    """Write the run's state atomically, so that a run killed while saving keeps the previous checkpoint."""
    blob = {"format": CHECKPOINT_FORMAT, "recipe": {k: recipe[k] for k in _FINGERPRINT}, "t": t_next,
            "param": param.state_dict(), "optimizer": opt.state_dict() if opt is not None else None,
            "schedule": sched.state_dict() if sched is not None else None,
            "free": free.state_dict() if free is not None else None,
            "rule": rule.state_dict() if rule is not None else None, "objective": objective.state_dict(),
            "generator": gens[0].get_state(), "noise": gens[1].get_state(),
            **{k: v for k, v in state.items() if k not in ("history", "grad_norms")},
            "history": torch.stack(state["history"]) if state["history"] else None,
            "grad_norms": torch.stack(state["grad_norms"]) if state["grad_norms"] else None}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic(path) as tmp:
        torch.save(blob, tmp)


def _resume(path: Path, state: dict, recipe: dict, param: Parametrization, opt, sched, free, rule,
            objective: Objective, gens: tuple[torch.Generator, torch.Generator], device: torch.device, n: int) -> None:
    """Load a checkpoint into the run's state, after checking that it belongs to this run."""
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
    if blob.get("format") != CHECKPOINT_FORMAT:
        older = isinstance(blob.get("format"), int) and blob["format"] < CHECKPOINT_FORMAT
        raise CheckpointError(f"{path} is " + ("a run checkpoint of an older phosphene, which drew the model's noise "
                                               "from torch's global generator; delete it to start the run afresh"
                                               if older else f"not a phosphene run checkpoint (format "
                                                             f"{blob.get('format')!r})"))
    differ = [k for k in _FINGERPRINT if blob["recipe"].get(k) != recipe[k]]
    if differ or blob["done"].shape[0] != n:
        what = "; ".join(f"{k} was {blob['recipe'].get(k)!r}, now {recipe[k]!r}" for k in differ[:3]) or \
            f"it holds {blob['done'].shape[0]} images, this run {n}"
        raise CheckpointError(f"checkpoint {path} belongs to another run ({what}); delete it or choose another path")
    if free is not None and not hasattr(free, "load_state_dict"):
        raise ConfigError(f"step rule {free} cannot resume: it has no load_state_dict()")
    param.load_state_dict(blob["param"])
    if opt is not None:
        opt.load_state_dict(blob["optimizer"])
        sched.load_state_dict(blob["schedule"])
    if free is not None:
        free.load_state_dict(blob["free"])
    if rule is not None:
        rule.load_state_dict(blob["rule"])
    objective.load_state_dict(blob["objective"])
    gens[0].set_state(blob["generator"].cpu())
    gens[1].set_state(blob["noise"].cpu())
    for k in ("done", "frozen", "last", "best", "best_scores", "active", "best_codes", "frozen_codes"):
        if k in blob:
            state[k] = blob[k].to(device)
    state["history"] = list(blob["history"].to(device)) if blob["history"] is not None else []
    state["grad_norms"] = list(blob["grad_norms"].to(device)) if blob["grad_norms"] is not None else []
    state["t"], state["evaluations"], state["seconds"] = blob["t"], blob["evaluations"], blob["seconds"]


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
