"""The attack catalogue behind one call: ``attacks.run(name, model, images, labels, ...)``.

Native attacks run on phosphene's engine; the rest are foolbox's (Rauber et al. 2017/2020), called through its
PyTorch wrapper on the same ProbeModel ([0,1] pixels in, normalization inside), and come back as the same
AttackResult, re-checked by a forward pass of the model.  Fixed-budget attacks take ``eps`` (one or a list);
minimal-perturbation attacks (CW, DeepFool, FMN, DDN, the decision-based ones) search the smallest perturbation
per image and return one set of images (budget ∞) whose norms give the accuracy at any ε (``result.curve``).
Foolbox's attacks run their own loops, which see one noise draw per pass of a stochastic model; their verdicts
(success, accuracy) are judged as the native attacks judge theirs, on the mean logits over ``eot`` draws.
"""
from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from synth.errors import ConfigError, UnknownNameError
from synth.rng import seeded_globals
from synth.zoo.probe import ProbeModel

from .common import Budget, LabelsLike, inputs, logits, parse_eps, warn_if_stochastic
from .evaluate import evaluate
from .pgd import finish, pgd
from .result import AttackResult
from .square import square


@dataclass(frozen=True)
class Entry:
    """One catalogue attack: how to build it, its norm, whether it takes a budget, and what it is."""

    build: str | None  # foolbox class name; None for a native attack
    norm: str
    minimal: bool
    doc: str


CATALOGUE: dict[str, Entry] = {
    "pgd-linf": Entry(None, "linf", False, "projected gradient descent, L-inf, Auto-PGD steps (native; "
                                           "step='pgd' for Madry's fixed steps)"),
    "pgd-l2": Entry(None, "l2", False, "projected gradient descent, L2, Auto-PGD steps (native)"),
    "evaluate": Entry(None, "linf", False, "the reliable verdict, L-inf: APGD-CE, then APGD-T on the DLR loss and "
                                           "Square on the images still unbroken (AutoAttack's "
                                           "cascade, native; attacks.evaluate)"),
    "evaluate-l2": Entry(None, "l2", False, "the reliable verdict, L2 (attacks.evaluate)"),
    "square-linf": Entry(None, "linf", False, "Square attack (Andriushchenko et al. 2020): random search, forward "
                                              "passes only (native)"),
    "square-l2": Entry(None, "l2", False, "Square attack, L2 (native)"),
    "fgsm": Entry("FGSM", "linf", False, "fast gradient sign method (Goodfellow et al. 2015)"),
    "fgm-l2": Entry("L2FastGradientAttack", "l2", False, "fast gradient method, L2"),
    "foolbox-pgd-linf": Entry("LinfPGD", "linf", False, "foolbox's own PGD, L-inf (for cross-checks)"),
    "foolbox-pgd-l2": Entry("L2PGD", "l2", False, "foolbox's own PGD, L2 (for cross-checks)"),
    "cw-l2": Entry("L2CarliniWagnerAttack", "l2", True, "Carlini & Wagner (2017), L2, minimal"),
    "deepfool-linf": Entry("LinfDeepFoolAttack", "linf", True, "DeepFool (Moosavi-Dezfooli et al. 2016), minimal"),
    "deepfool-l2": Entry("L2DeepFoolAttack", "l2", True, "DeepFool, L2, minimal"),
    "fmn-linf": Entry("LInfFMNAttack", "linf", True, "fast minimum-norm (Pintor et al. 2021), minimal"),
    "fmn-l2": Entry("L2FMNAttack", "l2", True, "fast minimum-norm, L2, minimal"),
    "ddn-l2": Entry("DDNAttack", "l2", True, "decoupled direction and norm (Rony et al. 2019), minimal"),
    "boundary": Entry("BoundaryAttack", "l2", True, "decision-based boundary attack (Brendel et al. 2018), minimal"),
    "hsj-l2": Entry("HopSkipJumpAttack", "l2", True, "decision-based HopSkipJump (Chen et al. 2020), minimal"),
    "noise-linf": Entry("LinfRepeatedAdditiveUniformNoiseAttack", "linf", False, "repeated uniform noise (black-box)"),
    "noise-l2": Entry("L2RepeatedAdditiveGaussianNoiseAttack", "l2", False, "repeated Gaussian noise (black-box)"),
}


DECISION_BASED = ("boundary", "hsj-l2")
VERDICT_DRAWS = 8  # noise draws behind a foolbox attack's verdicts on a stochastic model, unless eot says otherwise


def available() -> dict[str, str]:
    """The catalogue: attack name → what it is."""
    return {name: e.doc for name, e in CATALOGUE.items()}


def run(name: str, model: ProbeModel, images: torch.Tensor, labels: LabelsLike | None = None,
        eps: Budget | list[Budget] | torch.Tensor | None = None, *, target: LabelsLike | None = None,
        eot: int | None = None, seed: int = 0, progress: bool = True, **options) -> AttackResult:
    """Run a catalogue attack by name; ``options`` go to the attack (e.g. ``steps=100``).  Fixed-budget attacks
    need ``eps``; minimal ones ignore it and report per-image minimal norms.  ``eot``: noise draws of a stochastic
    model whose mean logits give the verdicts (for the native attacks their gradients too, default as in ``pgd``;
    for foolbox's, default ``VERDICT_DRAWS`` on a stochastic model and 1 otherwise); ``seed``: the random starts
    and noise draws (foolbox's loops draw from the global generators: they run inside ``rng.seeded_globals``, a
    seeded copy restored afterwards)."""
    if name not in CATALOGUE:
        raise UnknownNameError("attack", name, CATALOGUE)
    entry = CATALOGUE[name]
    if entry.build is None:
        if eps is None:
            raise ConfigError(f"{name} needs a budget: pass eps (e.g. 4/255)")
        attack = _native(name)
        _check_options(attack, options, name)
        if eot is not None:
            options["eot"] = eot
        if target is not None:
            if attack is not pgd:
                raise ConfigError(f"{name} is untargeted: it asks whether any other class can be reached")
            options["target"] = target
        return attack(model, images, labels, eps, norm=entry.norm, seed=seed, progress=progress, **options)
    return _foolbox(name, entry, model, images, labels, eps, target, eot, seed, options)


def _native(name: str) -> Callable[..., AttackResult]:
    """The native function behind a catalogue name."""
    return {"evaluate": evaluate, "evaluate-l2": evaluate, "square-linf": square, "square-l2": square}.get(name, pgd)


def _starting_points(model: ProbeModel, x: torch.Tensor, y: torch.Tensor, tgt: torch.Tensor | None,
                     eot: int, seed: int) -> torch.Tensor | None:
    """Starts for a decision-based attack: for each image, another image of the batch that the model already
    calls something else (untargeted) or the target (targeted), on the mean logits over ``eot`` draws; None when
    some image has none."""
    preds = logits(model, x, eot, seed=seed).argmax(1)
    starts = []
    for i in range(x.shape[0]):
        ok = (preds == tgt[i]) if tgt is not None else (preds != y[i])
        if not ok.any():
            return None
        starts.append(x[int(torch.nonzero(ok)[0, 0])])
    return torch.stack(starts)


def _check_options(fn: Callable, options: dict, name: str) -> None:
    """Refuse an option the attack does not take, naming the ones it does."""
    params = inspect.signature(fn).parameters
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    taken = ("self", "model", "images", "labels", "eps", "norm", "target", "progress")
    valid = [p for p, v in params.items() if v.kind in kinds and p not in taken]
    bad = [k for k in options if k not in valid]
    if bad:
        raise UnknownNameError(f"option of attack {name!r}", bad[0], valid)


def _foolbox(name: str, entry: Entry, model: ProbeModel, images: torch.Tensor, labels, eps, target,
             eot: int | None, seed: int, options: dict) -> AttackResult:
    import foolbox as fb

    t0 = time.perf_counter()
    cls = getattr(fb.attacks, entry.build)
    _check_options(cls.__init__, options, name)
    attack = cls(**options)
    if entry.minimal:
        budgets = torch.tensor([math.inf])
    elif eps is None:
        raise ConfigError(f"{name} needs a budget: pass eps (e.g. 4/255)")
    else:
        budgets = parse_eps(eps)
    x, y, tgt = inputs(model, images, labels, target)
    if eot is None:
        eot = VERDICT_DRAWS if model.stochastic else 1
    warn_if_stochastic(model, eot)
    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=model.device)
    criterion = fb.criteria.TargetedMisclassification(tgt) if tgt is not None else fb.criteria.Misclassification(y)
    extra = {}
    if name in DECISION_BASED:
        starts = _starting_points(model, x, y, tgt, eot, seed)
        if starts is not None:
            extra["starting_points"] = starts
    try:
        with seeded_globals(seed):
            _, clipped, _ = attack(fmodel, x, criterion, epsilons=None if entry.minimal else budgets.tolist(), **extra)
    except (NotImplementedError, ValueError) as e:
        hint = " (decision-based attacks start from images the model already calls another class: attack a batch " \
               "holding several categories)" if name in DECISION_BASED else ""
        raise ConfigError(f"{name} cannot run this way: {e}{hint}") from None
    adversarial = (clipped[None] if entry.minimal else torch.stack(list(clipped))).detach().to(x.device)
    result = finish(model, x, y, tgt, budgets, adversarial, logits(model, x, eot, seed=seed), entry.norm, eot, "ce",
                    seed)
    result.metadata.update({"attack": name, "implementation": f"foolbox {fb.__version__} {entry.build}", "eot": eot,
                            "seed": seed,
                            "options": {k: v for k, v in options.items()},
                            "seconds": round(time.perf_counter() - t0, 3)})
    return result
