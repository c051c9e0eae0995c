"""Stopping criteria: which images of a run are done (an attack succeeded, a response reached its target).

The engine checks a criterion on every forward pass and on the images it returns; an image that meets it stops
changing and stops costing compute (foolbox's criteria, plenoptic's stopping rules).  Criteria hold one value per
image where needed and follow the batch as it shrinks (``select``); ``a | b`` is met when either is, ``a & b``
when both are.  Besides class and score targets there are a relative-error target on a layer
(``RelativeError``), a plateau rule (``Plateau``, which keeps per-image state that a checkpoint saves), and any
callable ``fn(scores, acts) -> bool tensor`` (``Where``).

On a stochastic model a class criterion can ask for certainty: with ``sure=z`` an image is met only where the
verdict of the step's mean logits holds by more than ``z`` standard errors of its margin over the step's noise
draws (``Drawn``), so that a fresh set of draws, such as the final verdict's, agrees with it.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch

from synth.engine.objectives import Acts, Label, Labels, population
from synth.errors import ConfigError


class Drawn(dict):
    """Activations averaged over a step's noise draws, with the draws themselves in ``draws`` (layer -> a
    ``(eot, N, ...)`` view), for criteria that judge how certain the mean is."""

    def __init__(self, mean: Acts, draws: dict[str, torch.Tensor]):
        super().__init__(mean)
        self.draws = draws

    def detached(self) -> Drawn:
        """The same activations cut from the autograd graph."""
        return Drawn({k: v.detach() for k, v in self.items()}, {k: v.detach() for k, v in self.draws.items()})


def detached(acts: Acts) -> Acts:
    """Activations cut from the autograd graph, keeping their draws where they carry them."""
    return acts.detached() if isinstance(acts, Drawn) else {k: v.detach() for k, v in acts.items()}


class Criterion(ABC):
    """Base: ``criterion(scores, acts) -> (N,)`` bool; ``layers`` it reads besides the objective's."""

    layers: tuple[str, ...] = ()

    @abstractmethod
    def __call__(self, scores: torch.Tensor, acts: Acts) -> torch.Tensor:
        """Which images meet the criterion."""

    def resolve(self, model) -> Criterion:
        """A copy with names (layers, classes) checked against ``model``."""
        return self

    def select(self, index: torch.Tensor) -> Criterion:
        """The criterion for the images ``index`` of the batch."""
        return self

    def final(self, scores: torch.Tensor, acts: Acts) -> torch.Tensor:
        """Which returned images meet the criterion (a stateful rule reports its state without updating it)."""
        return self(scores, acts)

    def state_dict(self) -> dict:
        """Per-image state that a checkpoint must keep (none for most criteria)."""
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 - a stateless rule has nothing to restore
        """Restore what ``state_dict`` returned."""

    def __or__(self, other: Criterion) -> Criterion:
        return AnyOf([self, other])

    def __and__(self, other: Criterion) -> Criterion:
        return AllOf([self, other])


class ScoreAtLeast(Criterion):
    """The objective's score reached a value: one for all images, or one per image (an (N,) tensor)."""

    def __init__(self, value: float | torch.Tensor):
        value = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
        if value.ndim > 1 or not torch.isfinite(value).all():
            raise ConfigError("a target score must be a finite number, or one finite number per image")
        self.value = value

    def select(self, index: torch.Tensor) -> ScoreAtLeast:
        return self if self.value.ndim == 0 else ScoreAtLeast(self.value[index.cpu()])

    def __call__(self, scores: torch.Tensor, acts: Acts) -> torch.Tensor:
        if self.value.ndim == 1 and self.value.shape[0] != scores.shape[0]:
            raise ConfigError(f"{self.value.shape[0]} target scores for {scores.shape[0]} images")
        return scores >= self.value.to(scores.device, scores.dtype)

    def __str__(self) -> str:
        return f"score >= {float(self.value):g}" if self.value.ndim == 0 else f"score >= <{len(self.value)} targets>"


class _ClassCriterion(Criterion):
    """A criterion on the top class of a layer (the logits by default)."""

    def __init__(self, labels: Label | Sequence[Label] | torch.Tensor | Labels, layer: str = "logits",
                 sure: float = 0.0):
        if not (math.isfinite(sure) and sure >= 0):
            raise ConfigError(f"sure must be a finite number of standard errors >= 0, got {sure!r}")
        self.labels = labels if isinstance(labels, Labels) else Labels(labels)
        self.layer, self.sure = layer, float(sure)
        self.layers = (layer,)

    def resolve(self, model) -> _ClassCriterion:
        layer = model.layer(self.layer)
        return type(self)(self.labels.resolve(model.classes if layer == "logits" else []), layer, self.sure)

    def select(self, index: torch.Tensor) -> _ClassCriterion:
        return type(self)(self.labels.select(index), self.layer, self.sure)

    def _top(self, acts: Acts) -> tuple[torch.Tensor, torch.Tensor]:
        z = population(acts[self.layer])
        return z.argmax(1), self.labels.tensor(z.shape[0], z.shape[1], z.device)

    def _certain(self, acts: Acts, top: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """Where class ``top`` leads class ``other`` in the mean by more than ``sure`` standard errors of the
        per-draw lead (everywhere without ``sure`` or without draws: a deterministic model's mean is its verdict)."""
        if not self.sure or not isinstance(acts, Drawn) or self.layer not in acts.draws:
            return torch.ones_like(top, dtype=torch.bool)
        d = acts.draws[self.layer]
        d = d.reshape(d.shape[0], d.shape[1], -1)
        lead = d.gather(2, top[None, :, None].expand(d.shape[0], -1, 1)) - \
            d.gather(2, other[None, :, None].expand(d.shape[0], -1, 1))
        lead = lead[..., 0]
        return lead.mean(0) > self.sure * lead.std(0) / math.sqrt(d.shape[0])

    def _tag(self) -> str:
        return f", sure={self.sure:g}" if self.sure else ""


class Misclassified(_ClassCriterion):
    """The model's top class is not the true label (an untargeted attack succeeded); with ``sure``, by a margin
    the step's noise draws make certain."""

    def __call__(self, scores: torch.Tensor, acts: Acts) -> torch.Tensor:
        top, y = self._top(acts)
        return (top != y) & self._certain(acts, top, y)

    def __str__(self) -> str:
        return f"misclassified({self.layer}, y={self.labels}{self._tag()})"


class TargetClass(_ClassCriterion):
    """The model's top class is the target label (a targeted attack succeeded); with ``sure``, by a margin the
    step's noise draws make certain over the runner-up."""

    def __call__(self, scores: torch.Tensor, acts: Acts) -> torch.Tensor:
        top, t = self._top(acts)
        hit = top == t
        if not hit.any() or not self.sure:
            return hit
        runner = population(acts[self.layer]).scatter(1, t[:, None], -math.inf).argmax(1)
        return hit & self._certain(acts, t, runner)

    def __str__(self) -> str:
        return f"classified({self.layer}, target={self.labels}{self._tag()})"


class _Combined(Criterion):
    """Several criteria joined by a logical operator."""

    joiner = " or "
    op = staticmethod(torch.logical_or)

    def __init__(self, parts: Sequence[Criterion]):
        flat: list[Criterion] = []
        for p in parts:
            if not isinstance(p, Criterion):
                raise ConfigError(f"criteria combine with criteria, not {type(p).__name__}")
            flat += p.parts if type(p) is type(self) else [p]
        self.parts = flat
        self.layers = tuple(dict.fromkeys(layer for p in flat for layer in p.layers))

    def resolve(self, model) -> Criterion:
        return type(self)([p.resolve(model) for p in self.parts])

    def select(self, index: torch.Tensor) -> Criterion:
        return type(self)([p.select(index) for p in self.parts])

    def _each(self, method: str, scores: torch.Tensor, acts: Acts) -> torch.Tensor:
        out = getattr(self.parts[0], method)(scores, acts)
        for p in self.parts[1:]:
            out = self.op(out, getattr(p, method)(scores, acts))
        return out

    def __call__(self, scores: torch.Tensor, acts: Acts) -> torch.Tensor:
        return self._each("__call__", scores, acts)

    def final(self, scores: torch.Tensor, acts: Acts) -> torch.Tensor:
        return self._each("final", scores, acts)

    def state_dict(self) -> dict:
        return {str(i): p.state_dict() for i, p in enumerate(self.parts)}

    def load_state_dict(self, state: dict) -> None:
        for i, p in enumerate(self.parts):
            p.load_state_dict(state.get(str(i), {}))

    def __str__(self) -> str:
        return self.joiner.join(f"({p})" if isinstance(p, _Combined) else str(p) for p in self.parts)


class AnyOf(_Combined):
    """Met when any of several criteria is."""


class AllOf(_Combined):
    """Met when all of several criteria are (e.g. a match-quality target and a statistical criterion)."""

    joiner = " and "
    op = staticmethod(torch.logical_and)


class RelativeError(Criterion):
    """A layer's response is within ``threshold`` of a target in relative error, ‖a − a*‖ / ‖a*‖ (one target for
    all images, or one per image), whatever the objective being optimized (it may carry penalties too)."""

    def __init__(self, layer: str, target: torch.Tensor, threshold: float = 0.05):
        if not (threshold > 0 and math.isfinite(threshold)):
            raise ConfigError(f"a relative-error threshold must be a positive number, got {threshold}")
        target = torch.as_tensor(target, dtype=torch.float32).detach()
        if not torch.isfinite(target).all():
            raise ConfigError("the relative-error target contains NaN or infinite values")
        self.layer, self.target, self.threshold = layer, target, float(threshold)
        self.layers = (layer,)
        self.rows: torch.Tensor | None = None
        self._on: dict[torch.device, torch.Tensor] = {}

    def resolve(self, model) -> RelativeError:
        return RelativeError(model.layer(self.layer), self.target, self.threshold)

    def select(self, index: torch.Tensor) -> RelativeError:
        clone = RelativeError(self.layer, self.target, self.threshold)
        clone.rows = index.cpu() if self.rows is None else self.rows[index.cpu()]
        clone._on = self._on
        return clone

    def errors(self, acts: Acts) -> torch.Tensor:
        """‖a − a*‖ / ‖a*‖ per image."""
        a = acts[self.layer].flatten(1)
        t = self.targets(acts)
        return (a - t).norm(dim=1) / t.norm(dim=1).clamp_min(1e-12)

    def targets(self, acts: Acts) -> torch.Tensor:
        """The target of each image still running, flattened, on the layer's device (moved there once)."""
        a = acts[self.layer].flatten(1)
        t = self._on.get(a.device)
        if t is None:
            per_image = self.target.ndim == acts[self.layer].ndim
            t = self._on[a.device] = (self.target.flatten(1) if per_image else self.target.flatten()[None]).to(a.device)
        if t.shape[0] > 1:
            t = t[self.rows.to(a.device)] if self.rows is not None else t
        if t.shape[1] != a.shape[1] or t.shape[0] not in (1, a.shape[0]):
            raise ConfigError(f"relative-error target of shape {tuple(self.target.shape)} does not fit layer "
                              f"{self.layer!r} of shape {tuple(acts[self.layer].shape)}")
        return t.to(a.dtype)

    def __call__(self, scores: torch.Tensor, acts: Acts) -> torch.Tensor:
        return self.errors(acts) <= self.threshold

    def __str__(self) -> str:
        return f"relative error of {self.layer} <= {self.threshold:g}"


class Plateau(Criterion):
    """An image's score has not improved on its best by more than ``min_delta`` (relative to the best's size when
    ``relative``) for ``patience`` consecutive steps."""

    def __init__(self, patience: int = 200, min_delta: float = 1e-3, relative: bool = True):
        if patience < 1 or not (min_delta >= 0 and math.isfinite(min_delta)):
            raise ConfigError(f"a plateau needs patience >= 1 and min_delta >= 0, got {patience} and {min_delta}")
        self.patience, self.min_delta, self.relative = int(patience), float(min_delta), bool(relative)
        self.state: dict[str, torch.Tensor] = {}  # best score and steps since it improved, for every image
        self.rows: torch.Tensor | None = None

    def resolve(self, model) -> Plateau:
        return Plateau(self.patience, self.min_delta, self.relative)  # a fresh run starts with no history

    def select(self, index: torch.Tensor) -> Plateau:
        clone = object.__new__(Plateau)
        clone.__dict__.update(self.__dict__, rows=index.cpu() if self.rows is None else self.rows[index.cpu()])
        return clone  # shares ``state``: the full-batch tensors, indexed by ``rows``

    def _index(self, n: int, device: torch.device) -> torch.Tensor:
        if not self.state:
            self.state["best"] = torch.full((n,), -math.inf, device=device)
            self.state["since"] = torch.zeros(n, dtype=torch.long, device=device)
        return (self.rows if self.rows is not None else torch.arange(n)).to(self.state["best"].device)

    def __call__(self, scores: torch.Tensor, acts: Acts) -> torch.Tensor:
        rows = self._index(scores.shape[0], scores.device)
        best, since = self.state["best"][rows], self.state["since"][rows]
        margin = self.min_delta * (best.abs() if self.relative else torch.ones_like(best))
        improved = ~torch.isfinite(best) | (scores.to(best) > best + margin)
        self.state["best"][rows] = torch.where(improved, torch.maximum(scores.to(best), best), best)
        self.state["since"][rows] = torch.where(improved, torch.zeros_like(since), since + 1)
        return self.state["since"][rows] >= self.patience

    def final(self, scores: torch.Tensor, acts: Acts) -> torch.Tensor:
        if not self.state:
            return torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
        return (self.state["since"][self._index(scores.shape[0], scores.device)] >= self.patience).to(scores.device)

    def state_dict(self) -> dict:
        return {k: v.cpu() for k, v in self.state.items()}

    def load_state_dict(self, state: dict) -> None:
        self.state = {k: v.clone() for k, v in state.items()}

    def __str__(self) -> str:
        return f"plateau(patience={self.patience}, min_delta={self.min_delta:g}{', relative' if self.relative else ''})"


class Where(Criterion):
    """Any callable ``fn(scores, acts) -> (N,) bool`` as a stopping rule (it sees the images still running)."""

    def __init__(self, fn: Callable[[torch.Tensor, Acts], torch.Tensor], name: str | None = None):
        if not callable(fn):
            raise ConfigError(f"a stopping rule must be a Criterion or a callable, got {type(fn).__name__}")
        self.fn, self.name = fn, name or getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, scores: torch.Tensor, acts: Acts) -> torch.Tensor:
        out = torch.as_tensor(self.fn(scores, acts), device=scores.device)
        if out.dtype != torch.bool or out.shape != scores.shape:
            raise ConfigError(f"stopping rule {self.name} must return one bool per image ({tuple(scores.shape)}), "
                              f"got {out.dtype} of shape {tuple(out.shape)}")
        return out

    def __str__(self) -> str:
        return f"where({self.name})"


def combine(target: float | None, stop: Criterion | Callable | None) -> Criterion | None:
    """The engine's stopping rule from a target score and/or a criterion (a plain callable becomes ``Where``)."""
    if target is not None and not math.isfinite(target):
        raise ConfigError(f"target must be a finite number, got {target}")
    if stop is not None and not isinstance(stop, Criterion):
        stop = Where(stop)
    parts = ([ScoreAtLeast(target)] if target is not None else []) + ([stop] if stop is not None else [])
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else AnyOf(parts)
