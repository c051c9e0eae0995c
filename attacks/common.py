"""What every attack front-end shares: reading budgets, images and labels, the engine call for one round of an
attack, and the final check of the images an attack returns."""
from __future__ import annotations

import hashlib
import math
import re
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from synth import Box, LpBall, optimize
from synth.engine.criteria import Misclassified, TargetClass
from synth.engine.objectives import DLR, CrossEntropy, Label, Labels, Margin, Objective
from synth.engine.params import Pixels
from synth.engine.results import Result
from synth.errors import ConfigError, UnknownNameError
from synth.rng import derive, generator, noise_generator
from synth.zoo.probe import ProbeModel, check_images

from .result import NORMS

LOSSES = ("ce", "margin", "dlr")
Budget = float | str
LabelsLike = torch.Tensor | Sequence[Label] | Label


class StochasticModelWarning(UserWarning):
    """An attack runs on a model whose output is noisy without averaging gradients over draws (EOT)."""


_NUMBER = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e-?\d+)?)\s*(?:/\s*([0-9]*\.?[0-9]+(?:e-?\d+)?))?\s*")


def _read_number(text: str, what: str) -> tuple[float, bool]:
    """A budget written as a number or a fraction ('4/255'), and whether it was a fraction."""
    m = _NUMBER.fullmatch(text)
    if not m or (m[2] is not None and float(m[2]) == 0):
        raise ConfigError(f"cannot read {what} {text!r}: write a fraction such as 4/255 or a number on the [0, 1] "
                          "pixel scale such as 0.0157")
    return float(m[1]) / (float(m[2]) if m[2] else 1.0), m[2] is not None


def read_budgets(norm: str, values: str | Sequence[str | float]) -> tuple[list[float], list[str]]:
    """Budgets of one norm from text ('4/255', '0.0157', '4'; comma-separated or a list) and one line per budget
    saying how it was read.  A bare L-inf number of 1 or more can only mean the 0-255 scale and is read so."""
    items = [v.strip() for v in values.split(",")] if isinstance(values, str) else list(values)
    out, notes = [], []
    check_norm(norm)
    name = {"linf": "L-inf", "l2": "L2"}[norm]
    for item in items:
        text = str(item).strip()
        value, fraction = _read_number(text, f"the {name} budget")
        if fraction:
            notes.append(f"{name} ε {text} read as {value:.4g} on the [0, 1] pixel scale")
        elif norm == "linf" and value >= 1:
            notes.append(f"{name} ε {text} is ambiguous: read on the 0-255 scale as {text}/255 = {value / 255:.4g} "
                         f"(a budget of {text} on the [0, 1] scale would allow any image); write {text}/255 or "
                         f"{value / 255:.4g} to say so")
            value /= 255
        elif norm == "linf":
            notes.append(f"{name} ε {text} read on the [0, 1] pixel scale (= {value * 255:.3g}/255)")
        else:
            notes.append(f"{name} ε {text} read on the [0, 1] pixel scale (the norm over all pixels and channels)")
        out.append(value)
    if not out:
        raise ConfigError(f"no {name} budget given")
    return sorted(set(out)), notes


def parse_eps(value: Budget | Sequence[Budget] | torch.Tensor) -> torch.Tensor:
    """Budgets as a 1-D float tensor, sorted and without repeats: numbers, '4/255' fractions, or a list of them."""
    if isinstance(value, torch.Tensor):
        items = value.flatten().tolist()
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = [value]
    out = []
    for v in items:
        if isinstance(v, str):
            v = _read_number(v, "the budget")[0]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"a budget eps must be a finite number >= 0, got {v!r}")
        out.append(float(v))
    if not out:
        raise ConfigError("no budget eps given")
    return torch.tensor(sorted(set(out)), dtype=torch.float32)


def check_norm(norm: str) -> float:
    """The p of a norm name ('linf' or 'l2')."""
    if norm not in NORMS:
        raise UnknownNameError("norm", norm, NORMS)
    return NORMS[norm]


def inputs(model: ProbeModel, images: torch.Tensor, labels: LabelsLike | None,
           target: LabelsLike | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Images on the model's device and labels (and targets) as (N,) index tensors; names become indices.  Without
    labels the model's own clean predictions are the labels (the attack moves it off its own verdict)."""
    if isinstance(images, torch.Tensor) and images.ndim == 3:
        images = images[None]
    check_images(images)
    x = images.detach().float().to(model.device)
    n = x.shape[0]
    if labels is None:
        with torch.no_grad():
            y = logits(model, x).argmax(1)
    else:
        y = as_labels(model, labels, n)
    t = as_labels(model, target, n) if target is not None else None
    return x, y, t


def as_labels(model: ProbeModel, labels: LabelsLike, n: int) -> torch.Tensor:
    """(n,) class indices from indices, names, one for all or one per image."""
    return Labels(labels).resolve(model.classes).tensor(n, len(model.classes), model.device).clone()


def objective(loss: str, labels: torch.Tensor, target: torch.Tensor | None) -> Objective:
    """The attack objective on the logits: cross-entropy, the CW margin or the DLR ratio, untargeted or targeted."""
    if loss not in LOSSES:
        raise UnknownNameError("attack loss", loss, LOSSES)
    if loss == "dlr":
        return DLR("logits", y=labels, target=target)
    cls = Margin if loss == "margin" else CrossEntropy
    return cls("logits", target=target) if target is not None else cls("logits", y=labels)


# How certain a stochastic model's step must be before an image leaves the batch: its mean logits' verdict holds
# by this many standard errors of the margin over the step's draws (``synth.engine.criteria``'s ``sure``).
SURE = 2.0


def criterion(labels: torch.Tensor, target: torch.Tensor | None, sure: float = 0.0):
    """Success: the top class is the target (targeted) or not the label (untargeted), by ``sure`` standard errors
    of the step's draws on a stochastic model."""
    return TargetClass(target, sure=sure) if target is not None else Misclassified(labels, sure=sure)


def warn_if_stochastic(model: ProbeModel, eot: int) -> None:
    """Say so when the model is noisy and the attack does not average over draws."""
    if eot < 1:
        raise ConfigError(f"eot must be >= 1, got {eot}")
    if eot == 1 and model.stochastic:
        warnings.warn(f"{model.name} is stochastic (its output varies between passes): gradients from one draw are "
                      "noisy and its accuracy under attack is overstated; pass eot=8 or more to average over draws",
                      StochasticModelWarning, stacklevel=3)


def attack_round(model: ProbeModel, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                 eps: torch.Tensor, start: torch.Tensor | None, *, steps: int, norm: str, step: str,
                 step_size: float, loss: str, eot: int, seed: int, progress: bool, early_stop: bool = True,
                 random_start: bool = True, recheck: bool = True, engine: dict | None = None) -> Result:
    """One engine run: image i attacked inside its own ball ``eps[i]`` from ``start`` (warm), a random start, or
    the clean image (``random_start=False``), stopping as soon as it succeeds (see ``stops_early``: on a stochastic
    model only once the step's ``eot`` draws make the verdict certain, by ``SURE`` standard errors);
    ``success`` is checked on the returned images either way (``recheck=False``: a caller that judges them itself
    keeps the run's own on a stochastic model).  Over ``eot`` draws the loss is that of the mean
    logits.  ``engine``: the engine's speed and memory options (``synth.optimize``'s ``precision``,
    ``channels_last``, ...)."""
    early_stop = stops_early(model, early_stop, (engine or {}).get("precision", "fp32"), eot)
    p = check_norm(norm)
    if step == "apgd":
        rule, lr = ("apgd" if p == math.inf else "apgd-l2"), 2 * eps
    elif step == "pgd":
        rule, lr = ("sign" if p == math.inf else "l2"), step_size * eps
    else:
        raise UnknownNameError("attack step rule", step, ("pgd", "apgd"))
    res = optimize(model, objective(loss, y, target), Pixels(start if start is not None else x),
                   constraints=[LpBall(x, eps, p), Box()], step=rule, lr=lr, steps=steps,
                   stop=criterion(y, target, SURE if model.stochastic else 0.0) if early_stop else None,
                   random_start=start is None and random_start,
                   eot=eot, eot_average="activations", seed=seed, progress=progress,
                   metadata={"attack_round": True}, **(engine or {}))
    if recheck and (not early_stop or model.stochastic):
        res.success = success_of(logits(model, res.images, eot), y, target).cpu()
    return res


def stops_early(model: ProbeModel, early_stop: bool, precision: str, eot: int) -> bool:
    """Whether an attack's images may leave the batch on the step's own verdict.  On a deterministic model only in
    float32: a reduced-precision verdict is off at the boundary.  On a stochastic model only with several draws per
    step (one is a coin flip at the boundary), and then in any precision: an image leaves only where the mean of the
    step's draws is ``SURE`` standard errors past the boundary, so that fresh draws agree, and bfloat16 moves that
    mean by far less (on toy-vone, 128 perturbed test images, 4 draws: by 0.03 standard errors in the median, 0.13
    at the 95th percentile)."""
    if model.stochastic:
        return early_stop and eot > 1
    return early_stop and precision == "fp32"


@torch.no_grad()
def logits(model: ProbeModel, x: torch.Tensor, eot: int = 1, batch_size: int = 500, seed: int = 0) -> torch.Tensor:
    """The model's class scores for a batch (averaged over ``eot`` passes of a noisy model): a verdict, so a noisy
    model's draws for each image come from a generator seeded with ``seed`` and the image's own pixels, and the
    same image gets the same verdict in any batch at any position (an attack's stage and its final check agree)."""
    if model.stochastic:
        pixels = x.detach().float().cpu().contiguous().numpy()  # one transfer for the whole batch's seeds
        out = []
        for image, data in zip(x, pixels):
            with noise_generator(generator(derive(seed, _digest(data)), model.device)):
                out.append(mean_logits(model, image[None].to(model.device), eot))
        return torch.cat(out)
    out = []
    for i in range(0, x.shape[0], batch_size):
        out.append(mean_logits(model, x[i:i + batch_size].to(model.device), eot))
    return torch.cat(out)


def _digest(pixels: np.ndarray) -> int:
    """A 63-bit number that names an image's pixels (its float32 bytes)."""
    return int.from_bytes(hashlib.blake2b(pixels.tobytes(), digest_size=8).digest(), "little") >> 1


def mean_logits(model: ProbeModel, x: torch.Tensor, eot: int = 1) -> torch.Tensor:
    """The mean of a model's class scores over ``eot`` noise draws of each image (differentiable)."""
    z = model.activations(x, "logits", check=False, draws=eot)["logits"]
    return z.view(eot, x.shape[0], -1).mean(0)


def success_of(z: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Which images the logits count as a successful attack."""
    top = z.argmax(-1)
    return top == target if target is not None else top != labels

