"""Stopping criteria: which images of a run are done (an attack succeeded, a response reached its target).

The engine checks a criterion on every forward pass and on the images it returns; an image that meets it stops
changing and stops costing compute (foolbox's criteria, plenoptic's stopping rules).  Criteria hold one value per
image where needed and follow the batch as it shrinks (``select``); ``a | b`` is met when either is.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from .errors import ConfigError
from .objectives import Acts, Label, Labels, population


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

    def __or__(self, other: Criterion) -> Criterion:
        return AnyOf([self, other])


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

    def __init__(self, labels: Label | Sequence[Label] | torch.Tensor | Labels, layer: str = "logits"):
        self.labels = labels if isinstance(labels, Labels) else Labels(labels)
        self.layer = layer
        self.layers = (layer,)

    def resolve(self, model) -> _ClassCriterion:
        layer = model.layer(self.layer)
        return type(self)(self.labels.resolve(model.classes if layer == "logits" else []), layer)

    def select(self, index: torch.Tensor) -> _ClassCriterion:
        return type(self)(self.labels.select(index), self.layer)

    def _top(self, acts: Acts) -> tuple[torch.Tensor, torch.Tensor]:
        z = population(acts[self.layer])
        return z.argmax(1), self.labels.tensor(z.shape[0], z.shape[1], z.device)


class Misclassified(_ClassCriterion):
    """The model's top class is not the true label (an untargeted attack succeeded)."""

    def __call__(self, scores: torch.Tensor, acts: Acts) -> torch.Tensor:
        top, y = self._top(acts)
        return top != y

    def __str__(self) -> str:
        return f"misclassified({self.layer}, y={self.labels})"


class TargetClass(_ClassCriterion):
    """The model's top class is the target label (a targeted attack succeeded)."""

    def __call__(self, scores: torch.Tensor, acts: Acts) -> torch.Tensor:
        top, t = self._top(acts)
        return top == t

    def __str__(self) -> str:
        return f"classified({self.layer}, target={self.labels})"


class AnyOf(Criterion):
    """Met when any of several criteria is."""

    def __init__(self, parts: Sequence[Criterion]):
        flat: list[Criterion] = []
        for p in parts:
            if not isinstance(p, Criterion):
                raise ConfigError(f"criteria combine with criteria, not {type(p).__name__}")
            flat += p.parts if isinstance(p, AnyOf) else [p]
        self.parts = flat
        self.layers = tuple(dict.fromkeys(layer for p in flat for layer in p.layers))

    def resolve(self, model) -> AnyOf:
        return AnyOf([p.resolve(model) for p in self.parts])

    def select(self, index: torch.Tensor) -> AnyOf:
        return AnyOf([p.select(index) for p in self.parts])

    def __call__(self, scores: torch.Tensor, acts: Acts) -> torch.Tensor:
        out = self.parts[0](scores, acts)
        for p in self.parts[1:]:
            out = out | p(scores, acts)
        return out

    def __str__(self) -> str:
        return " or ".join(str(p) for p in self.parts)


def combine(target: float | None, stop: Criterion | None) -> Criterion | None:
    """The engine's stopping rule from a target score and/or a criterion."""
    if target is not None and not math.isfinite(target):
        raise ConfigError(f"target must be a finite number, got {target}")
    parts = ([ScoreAtLeast(target)] if target is not None else []) + ([stop] if stop is not None else [])
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else AnyOf(parts)
