"""Backward passes other than a network's own: the forward stays exact while the gradient goes where the exact one
cannot, through silent ReLUs and past max-pooling argmaxes.

One context manager, ``patched_backward``, gives a network's ``nn.ReLU``s and ``nn.MaxPool2d``s one of these
backwards for the length of a ``with`` block and restores the modules afterwards:

* ``'redirect'`` (ReLU): Lucid's redirected gradient, which lets gradient through silent units when no unit of an
  image passes any (escapes dead starts; ``optimize``'s ``relu_override``);
* ``'identity'`` (ReLU): the 'fake ReLU' of Feather et al. (2023)'s metamers, an identity gradient, so a matched
  stage's silent units still pass gradient;
* ``'soft'`` (ReLU and max-pool): surrogate gradients (``Surrogate``), a softplus derivative for a ReLU and a softmax
  over each window for a max-pool.
"""
from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from synth.errors import ConfigError, UnknownNameError

RELU_BACKWARDS = ("redirect", "identity", "soft")
POOL_BACKWARDS = ("soft",)


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


class _FakeReLU(torch.autograd.Function):
    """ReLU forward, identity backward: gradient reaches units whose input is negative (Feather et al. 2023)."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        return grad


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
            raise ConfigError(f"surrogate gradients need relu_beta > 0 and pool_tau > 0, got {relu_beta} and "
                              f"{pool_tau}")
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


# The surrogates' sharpness changes every step; torch.compile (2.14) fails to lift such a float into the graph of a
# custom autograd Function, so these two run eagerly inside a compiled forward (a graph break; 0.3 us when eager).
@torch.compiler.disable
def _relu(x: torch.Tensor, settings: Surrogate) -> torch.Tensor:
    return _SoftReLU.apply(x, settings.beta)


@torch.compiler.disable
def _pool(x: torch.Tensor, m: nn.MaxPool2d, settings: Surrogate) -> torch.Tensor:
    return _SoftMaxPool.apply(x, m.kernel_size, m.stride or m.kernel_size, m.padding, settings.tau)


def last_relu(net: nn.Module, module: str) -> str | None:
    """The name of the last ``nn.ReLU`` inside module ``module`` of ``net`` (or the module itself), or None."""
    names = [n for n, m in net.named_modules()
             if isinstance(m, nn.ReLU) and (n == module or n.startswith(module + "."))]
    return names[-1] if names else None


def _poolable(m: nn.Module) -> bool:
    """Whether ``m`` is a max-pool the soft backward handles (2-d, undilated, floor mode, no indices)."""
    return isinstance(m, nn.MaxPool2d) and m.dilation in (1, (1, 1)) and not m.ceil_mode and not m.return_indices


def _patched_forward(m: nn.Module, backward: str, surrogate: Surrogate):
    """The forward a module runs with ``backward``: the same values, that backward's gradient."""
    if isinstance(m, nn.ReLU):
        if backward == "redirect":
            return _RedirectedReLU.apply
        return _FakeReLU.apply if backward == "identity" else functools.partial(_relu, settings=surrogate)
    return functools.partial(_pool, m=m, settings=surrogate)


def _backwards(found: dict[str, nn.Module], relus: str | None, pools: str | None,
               modules: Mapping[str, str | None]) -> dict[str, str]:
    """Which of the modules ``found`` (by name) get which backward: every ReLU ``relus``, every poolable max-pool
    ``pools``, and the modules named in ``modules`` their own (None: the exact one)."""
    if relus is not None and relus not in RELU_BACKWARDS:
        raise UnknownNameError("ReLU backward", relus, RELU_BACKWARDS)
    if pools is not None and pools not in POOL_BACKWARDS:
        raise UnknownNameError("max-pool backward", pools, POOL_BACKWARDS)
    unknown = [name for name in modules if name not in found]
    if unknown:
        raise ConfigError(f"the network has no module {unknown[0]!r} to give a backward")
    plan = {}
    for name, m in found.items():
        kind, allowed = (relus, RELU_BACKWARDS) if isinstance(m, nn.ReLU) else \
            (pools, POOL_BACKWARDS) if _poolable(m) else (None, ())
        kind = modules.get(name, kind)
        if kind is not None and kind not in allowed:
            raise ConfigError(f"module {name!r} of type {type(m).__name__} cannot take the {kind!r} backward")
        if kind is not None:
            plan[name] = kind
    return plan


@contextlib.contextmanager
def patched_backward(net: nn.Module, relus: str | None = None, pools: str | None = None, *,
                     modules: Mapping[str, str | None] | None = None,
                     surrogate: Surrogate | None = None) -> Iterator[dict[str, str]]:
    """Temporarily give ``net``'s modules another backward, forward passes unchanged (so scores stay exact): every
    ``nn.ReLU`` the backward ``relus`` ('redirect', 'identity' or 'soft'), every ``nn.MaxPool2d`` ``pools``
    ('soft'), and the modules named in ``modules`` their own (a name mapped to None keeps the exact backward);
    yields the name and backward of each module changed, and restores them all afterwards.

    The 'soft' backwards read ``surrogate`` (a ``Surrogate``, default settings if None) when they run, so a run can
    fade them.  Matching a late stage through a ReLU network stalls where silent units and pooling argmaxes block
    the gradient: measured on toy-standard's IT (16 test images, Adam 0.01, 2400 steps), 12 of 16 metamers reached
    0.05 normalized error with fixed surrogates, 15 with fading ones, and the median error after 1200 steps of 8 of
    them fell from 0.071 without to 0.038."""
    surrogate = surrogate or Surrogate()
    found = dict(net.named_modules())
    plan = _backwards(found, relus, pools, modules or {})
    saved = [(found[name], getattr(found[name], "inplace", False)) for name in plan]
    for name, backward in plan.items():
        m = found[name]
        if isinstance(m, nn.ReLU):
            m.inplace = False
        m.forward = _patched_forward(m, backward, surrogate)
    try:
        yield plan
    finally:
        for m, inplace in saved:
            del m.forward
            if isinstance(m, nn.ReLU):
                m.inplace = inplace
