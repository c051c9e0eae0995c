"""The one optimization loop of phosphene: choose pixels so a function of a model's activations goes up.

Synthesis, attacks and metamers differ only in what they pass in: an objective on activations, a
parametrization of the image, constraints (differentiable maps and projections), a step rule and schedule,
random transforms averaged per step, and a stopping target.  The loop runs the model only as far as the
deepest layer the objective reads.  Gradient-free step rules (``synth.evolve``) plug into the same loop: they
receive the scores instead of gradients.  Step rules of both kinds reach the loop through one interface
(``synth.engine.steps.Stepper``); backward passes other than the network's own come from
``synth.engine.gradients.patched_backward``.

``optimize`` reads as the algorithm: it sets the run up (``_Job``, what stays fixed; ``Run``, the state a checkpoint
saves and a resumed run loads), takes the steps (``_iterate``; each ``_step`` evaluates the batch, keeps the books,
stops the images that met the rule and moves the others), and measures the images it returns (``_finish``).

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from synth.engine.constraints import Box, Constraint, LpBall
from synth.engine.criteria import Criterion, Drawn, combine, detached
from synth.engine.gradients import patched_backward
from synth.engine.objectives import Objective, parse
from synth.engine.params import Parametrization
from synth.engine.results import Result
from synth.engine.steps import GradientFree, OptimizerFactory, PlateauDecay, ScheduleFactory, Stepper, stepper
from synth.engine.transforms import Transform, describe
from synth.engine.transforms import apply as apply_transforms
from synth.errors import CheckpointError, ConfigError, UnknownNameError
from synth.files import machine, save_torch, tensor_digest
from synth.rng import derive, generator, noise_generator
from synth.version import __version__
from synth.zoo.probe import ProbeModel, check_images

PRECISIONS = ("fp32", "bf16")


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` computes bfloat16 natively, where ``precision='bf16'`` pays (about twice as fast on
    an AVX512-BF16 or AMX CPU, and on a GPU with bf16 units); elsewhere it is emulated and slower than float32."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: no cheap way to ask the CPU
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
CHECKPOINT_FORMAT = 2  # 2: the model's noise from the run's own generator; the global generators untouched


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
    ``channels_last`` hands the network its images in NHWC (the weights follow in ``weights_channels_last``);
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


def weights_channels_last(model: ProbeModel) -> None:
    """Lay a run's fork's 4-d weights out channels-last (NHWC), the layout its convolutions then run fastest in;
    the fork's own tensors change, so the model it was forked from, and its other users, see no change."""
    for t in [*model.parameters(), *model.buffers()]:
        if t.dim() == 4 and not t.is_contiguous(memory_format=torch.channels_last):
            t.data = t.data.contiguous(memory_format=torch.channels_last)


def _evaluate(forward: Forward, objective: Objective, x: torch.Tensor, eot: int,
              transforms: Sequence[Transform], gen: torch.Generator, mean: bool = True,
              average: str = "scores") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Scores of images ``x`` over ``eot`` draws of the transforms (and of the model's own noise): with
    ``average='scores'`` every draw is scored on its own (per-image objectives see one copy of each image) and the
    scores averaged; with ``'activations'`` the objective scores the activations averaged over draws (the mean
    logits a stochastic model's verdict reads).  Also returns the activations averaged over draws when ``mean``
    (for stopping criteria, as a ``Drawn`` that also holds each draw), else those of the first draw."""
    if transforms:
        acts = forward(torch.cat([apply_transforms(transforms, x, gen) for _ in range(eot)]))
    else:  # the same images drawn eot times: a model with a Draws site runs its noise-free layers once
        acts = forward(x, eot)
    if eot == 1:
        return objective(acts), acts
    drawn = {k: v.view(eot, -1, *v.shape[1:]) for k, v in acts.items()}
    mean_acts = Drawn({k: v.mean(0) for k, v in drawn.items()}, drawn)
    if average == "activations":
        return objective(mean_acts), mean_acts
    draws = _draws(acts, eot)
    scores = torch.stack([objective(d) for d in draws]).mean(0)
    return scores, (mean_acts if mean else draws[0])


def _project(projections: Sequence[Constraint], x: torch.Tensor) -> None:
    """Project ``x`` in place onto the set the projecting constraints allow."""
    for c in projections:
        c.project_(x)


@dataclass
class _Job:
    """What stays fixed while a run goes: the model (the run's own fork where it changes modules) and its forward
    pass, what is scored and when an image stops, the images' parametrization and constraints, the step rule, the
    recipe a checkpoint must match, and the run's options."""

    model: ProbeModel
    device: torch.device
    forward: Forward
    objective: Objective
    rule: Criterion | None
    param: Parametrization
    pixels: torch.Tensor | None  # what is projected after each step
    constraints: list[Constraint]
    projections: list[Constraint]
    stepper: Stepper
    transforms: Sequence[Transform]
    eot: int
    draws: int  # noise draws when a score is measured on the images themselves
    eot_average: str
    steps: int
    relu_override: int
    recipe: dict
    path: Path | None
    checkpoint_every: int
    callback: Callable[[int, int], None] | None
    watch: Callable[[int, torch.Tensor, torch.Tensor], None] | None
    progress: bool

    def project_(self, x: torch.Tensor) -> None:
        """Project images ``x`` in place onto the feasible set."""
        _project(self.projections, x)


@dataclass
class Run:
    """A run's state between steps, the one record its checkpoint saves and a resumed run loads (beside the state
    of the parameters, the step rule, the stopping rule and the objective): the random generators, the next step,
    which images stopped and as what images, each image's latest and best score and best iterate, the history of
    scores and gradient norms, the images still in the batch, and the evaluations and seconds spent; with a
    generator's codes, those of the best and the stopped images.  ``obj`` and ``crit``, not saved, are the objective
    and the stopping rule narrowed to the images in the batch."""

    gen: torch.Generator  # transforms and random starts
    noise: torch.Generator  # the model's own noise
    done: torch.Tensor
    frozen: torch.Tensor
    last: torch.Tensor
    best: torch.Tensor
    best_scores: torch.Tensor
    active: torch.Tensor
    best_codes: torch.Tensor | None = None
    frozen_codes: torch.Tensor | None = None
    t: int = 0
    history: list[torch.Tensor] = field(default_factory=list)
    grad_norms: list[torch.Tensor] = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0
    obj: Objective | None = None
    crit: Criterion | None = None

    _TENSORS = ("done", "frozen", "last", "best", "best_scores", "active")
    _CODES = ("best_codes", "frozen_codes")

    @classmethod
    def start(cls, first: torch.Tensor, codes: torch.Tensor | None, gen: torch.Generator, noise: torch.Generator,
              device: torch.device) -> Run:
        """A run about to take its first step from images ``first`` (made by ``codes``, if a generator's)."""
        n = first.shape[0]
        return cls(gen, noise, done=torch.zeros(n, dtype=torch.bool, device=device), frozen=first.clone(),
                   last=torch.full((n,), math.nan, device=device), best=first.clone(),
                   best_scores=torch.full((n,), -math.inf, device=device), active=torch.arange(n, device=device),
                   best_codes=codes.clone() if codes is not None else None,
                   frozen_codes=codes.clone() if codes is not None else None)

    @property
    def n(self) -> int:
        """The number of images."""
        return self.done.shape[0]

    def narrow(self, objective: Objective, rule: Criterion | None) -> None:
        """Score, and stop, only the images still in the batch."""
        if len(self.active) < self.n:
            self.obj, self.crit = objective.select(self.active), rule.select(self.active)
        else:
            self.obj, self.crit = objective, rule

    def state_dict(self) -> dict:
        """The run's state as its checkpoint's entries."""
        return {"t": self.t, "generator": self.gen.get_state(), "noise": self.noise.get_state(),
                **{k: getattr(self, k) for k in self._TENSORS}, "evaluations": self.evaluations,
                "seconds": self.seconds, **({k: getattr(self, k) for k in self._CODES} if self.best_codes is not None
                                           else {}),
                "history": torch.stack(self.history) if self.history else None,
                "grad_norms": torch.stack(self.grad_norms) if self.grad_norms else None}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict``'s output, onto the run's device."""
        device = self.done.device
        self.gen.set_state(state["generator"].cpu())
        self.noise.set_state(state["noise"].cpu())
        for k in (*self._TENSORS, *self._CODES):
            if k in state:
                setattr(self, k, state[k].to(device))
        self.history = list(state["history"].to(device)) if state["history"] is not None else []
        self.grad_norms = list(state["grad_norms"].to(device)) if state["grad_norms"] is not None else []
        self.t, self.evaluations, self.seconds = state["t"], state["evaluations"], state["seconds"]


class _Scored(NamedTuple):
    """One step's evaluation: every image as rendered, the batch's images and codes, the scores the step follows
    (over the transforms' draws) and those the books record (of the images themselves), with their activations."""

    images: torch.Tensor
    batch: torch.Tensor
    codes: torch.Tensor | None
    scores: torch.Tensor
    seen: torch.Tensor
    acts: dict[str, torch.Tensor]


class _Final(NamedTuple):
    """The returned images, what is measured on them (scores, activations, the stopping rule's verdict) and their
    codes, if a generator's."""

    images: torch.Tensor
    scores: torch.Tensor
    acts: dict[str, torch.Tensor]
    success: torch.Tensor | None
    codes: torch.Tensor | None


def optimize(model: ProbeModel, objective: Objective | str, param: Parametrization, *,
             constraints: Sequence[Constraint] = (Box(),), step: str | GradientFree | OptimizerFactory = "adam",
             lr: float | torch.Tensor = 0.05, lr_schedule: str | ScheduleFactory | PlateauDecay = "constant",
             steps: int = 256, transforms: Sequence[Transform] = (), eot: int = 1, eot_average: str = "scores",
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
    per image; ``lr_schedule`` a name or a factory (``schedule``), or 'plateau' / a ``PlateauDecay`` (each image's step
    halves when its own score stalls).  An image stops once its score reaches
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
    Lucid's redirected ReLU gradient start the run.  ``checkpoint``: a file the run's state is written to every
    ``checkpoint_every`` steps and at the end, and continued from when it exists (see the module docstring).
    ``callback(t, steps)`` runs before each step (e.g. to fade surrogate gradients); it must depend on ``t`` alone
    for a resumed run to match.
    ``watch(t, images, scores)`` sees each step's images (N×3×H×W as rendered for that step, detached) and every
    image's latest score (N), for live displays and progress; what it does to them does not reach the run.
    Speed and memory (see ``Forward``; recorded in the metadata): ``precision`` 'fp32' or 'bf16' (the network's
    forward under bfloat16 autocast, the objective in float32), ``channels_last`` (NHWC weights and images),
    ``compile`` (``torch.compile`` the forward: True for inductor, or a backend's name; the first steps pay for
    the compilation), ``checkpoint_activations`` (recompute each stage in the backward pass: less memory, about
    one more forward pass of compute per step).  Every step and the final scores use them.
    """
    job, run = _set_up(model, objective, param, constraints=constraints, step=step, lr=lr, lr_schedule=lr_schedule,
                       steps=steps, transforms=transforms, eot=eot, eot_average=eot_average, target=target, stop=stop,
                       random_start=random_start, seed=seed, relu_override=relu_override, checkpoint=checkpoint,
                       checkpoint_every=checkpoint_every, callback=callback, watch=watch, progress=progress,
                       settings=settings, precision=precision, channels_last=channels_last, compile=compile,
                       checkpoint_activations=checkpoint_activations)
    with noise_generator(run.noise):  # the run's own noise
        _iterate(job, run)
        final = _finish(job, run)
    return _result(job, run, final, metadata)


def _set_up(model: ProbeModel, objective: Objective | str, param: Parametrization, *,
            constraints: Sequence[Constraint], step: str | GradientFree | OptimizerFactory, lr: float | torch.Tensor,
            lr_schedule: str | ScheduleFactory | PlateauDecay, steps: int, transforms: Sequence[Transform], eot: int,
            eot_average: str, target: float | None, stop: Criterion | Callable | None, random_start: bool, seed: int,
            relu_override: int, checkpoint: str | os.PathLike | None, checkpoint_every: int,
            callback: Callable[[int, int], None] | None,
            watch: Callable[[int, torch.Tensor, torch.Tensor], None] | None, progress: bool, settings: dict | None,
            precision: str, channels_last: bool, compile: bool | str,
            checkpoint_activations: bool) -> tuple[_Job, Run]:
    """Check ``optimize``'s arguments and set the run up: the objective and stopping rule resolved on the model, the
    start images, the step rule, the recipe, the forward pass, and the run's state, continued from the checkpoint
    when it exists."""
    objective = parse(objective).resolve(model)
    _check(steps, eot, eot_average, checkpoint_every)
    rule = combine(target, stop)
    rule = rule.resolve(model) if rule is not None else None
    if model.training:
        model.eval()
    device = model.device
    param = param.to(device)
    constraints = [c.to(device) for c in constraints]
    projections = _projections(param, constraints)
    gen = torch.Generator().manual_seed(seed)  # transforms and random starts
    noise = generator(derive(seed, 1), device)  # the model's own noise
    first = _start(param, constraints, projections, random_start, gen)
    rule_of_steps = stepper(step, list(param.parameters()), lr, lr_schedule, steps,
                            functools.partial(_project, projections))
    recipe = _recipe(model, objective, rule, param, constraints, transforms=transforms, eot=eot,
                     eot_average=eot_average, step=step, lr=lr, lr_schedule=lr_schedule, target=target, stop=stop,
                     random_start=random_start, relu_override=relu_override, seed=seed, settings=settings)
    draws = eot if model.stochastic else 1
    if relu_override > 0 or channels_last:  # the run changes modules or weight layouts: on its own fork
        model = model.fork()
        if channels_last:
            weights_channels_last(model)
    forward = Forward(model, recipe["layers"], precision, channels_last, compile, checkpoint_activations)
    recipe.update(forward.describe())
    job = _Job(model=model, device=device, forward=forward, objective=objective, rule=rule, param=param,
               pixels=param.pixels, constraints=constraints, projections=projections, stepper=rule_of_steps,
               transforms=transforms, eot=eot, draws=draws, eot_average=eot_average, steps=steps,
               relu_override=relu_override, recipe=recipe, path=Path(checkpoint) if checkpoint is not None else None,
               checkpoint_every=checkpoint_every, callback=callback, watch=watch, progress=progress)
    return job, _begin(job, Run.start(first, param.codes(), gen, noise, device))


def _check(steps: int, eot: int, eot_average: str, checkpoint_every: int) -> None:
    """Refuse counts and names a run cannot take."""
    if steps < 0 or eot < 1:
        raise ConfigError(f"steps must be >= 0 and eot >= 1, got steps={steps}, eot={eot}")
    if eot_average not in ("scores", "activations"):
        raise UnknownNameError("EOT average", eot_average, ("scores", "activations"))
    if checkpoint_every < 1:
        raise ConfigError(f"checkpoint_every must be >= 1, got {checkpoint_every}")


def _start(param: Parametrization, constraints: Sequence[Constraint], projections: Sequence[Constraint],
           random_start: bool, gen: torch.Generator) -> torch.Tensor:
    """Check the start, draw random starts in the Lp balls and project every start; returns the images it renders,
    checked."""
    pixels = param.pixels
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
            _project(projections, pixels)
        first = render(param, constraints).detach()
    check_images(first)
    return first


def _recipe(model: ProbeModel, objective: Objective, rule: Criterion | None, param: Parametrization,
            constraints: Sequence[Constraint], *, transforms: Sequence[Transform], eot: int, eot_average: str,
            step: str | GradientFree | OptimizerFactory, lr: float | torch.Tensor,
            lr_schedule: str | ScheduleFactory | PlateauDecay,
            target: float | None, stop: Criterion | Callable | None, random_start: bool, relu_override: int,
            seed: int, settings: dict | None) -> dict:
    """What defines the run, as its metadata records it (a checkpoint must match its ``_FINGERPRINT``)."""
    layers = tuple(dict.fromkeys((*objective.layers, *(rule.layers if rule is not None else ()))))
    return {
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


def _begin(job: _Job, run: Run) -> Run:
    """``run`` as it starts, or continued from the checkpoint when one exists, its scorers narrowed to its batch."""
    if job.path is not None and job.path.is_file():
        _resume(job, run)
    run.t = min(run.t, job.steps)
    run.narrow(job.objective, job.rule)
    return run


def _iterate(job: _Job, run: Run) -> None:
    """Take the run's steps, from where it is to ``steps`` or until every image has stopped, checkpointing every
    ``checkpoint_every`` steps and at the end."""
    t0 = time.perf_counter() - run.seconds
    bar = tqdm(range(run.t, job.steps), desc=str(job.objective)[:40], unit="step", disable=not job.progress,
               leave=False, initial=run.t, total=job.steps)
    for t in bar if not bool(run.done.all()) else ():
        seen = _step(job, run, t)
        if seen is None:  # every image has stopped
            break
        if job.path is not None and run.t % job.checkpoint_every == 0 and run.t < job.steps:
            run.seconds = time.perf_counter() - t0
            _save(job, run)
        if job.progress and t % 8 == 0:
            bar.set_postfix({"score": f"{float(seen.mean()):.3g}", "done": f"{int(run.done.sum())}/{run.n}"})
    bar.close()
    run.seconds = time.perf_counter() - t0
    if job.path is not None:
        _save(job, run)


def _step(job: _Job, run: Run, t: int) -> torch.Tensor | None:
    """Step ``t``: evaluate the batch, keep the books, stop the images that met the rule and move the others;
    returns the scores seen, or None once every image has stopped."""
    job.param.schedule(t / max(1, job.steps))
    if job.callback is not None:
        job.callback(t, job.steps)
    scored = _evaluate_step(job, run, t)
    _keep_books(job, run, t, scored)
    reached = _stop(run, scored)
    if reached is not None and bool(run.done.all()):
        return None
    _move(job, run, scored.scores, reached)
    return scored.seen


def _evaluate_step(job: _Job, run: Run, t: int) -> _Scored:
    """Score the batch over ``eot`` draws of the transforms and give the step rule its gradient (Lucid's redirected
    ReLU gradient for the first ``relu_override`` steps); with transforms, score the images themselves once more."""
    redirect = patched_backward(job.model.net, relus="redirect") if t < job.relu_override else contextlib.nullcontext()
    with redirect, torch.set_grad_enabled(job.stepper.gradient):
        x = render(job.param, job.constraints)
        xa = x if len(run.active) == run.n else x[run.active]
        ca = job.param.codes()[run.active].clone() if run.best_codes is not None else None
        scores, acts = _evaluate(job.forward, run.obj, xa, job.eot, job.transforms, run.gen, mean=run.crit is not None,
                                 average=job.eot_average)
        job.stepper.backward(scores)
    run.evaluations += len(run.active) * job.eot
    scores = scores.detach()
    if not job.transforms:
        return _Scored(x, xa, ca, scores, scores, acts)
    with torch.no_grad():  # what the step's images score themselves: the run's record and its stopping rule
        seen, acts = _evaluate(job.forward, run.obj, xa.detach(), job.draws, (), run.gen, mean=run.crit is not None,
                               average=job.eot_average)
    run.evaluations += len(run.active) * job.draws
    return _Scored(x, xa, ca, scores, seen, acts)


def _keep_books(job: _Job, run: Run, t: int, s: _Scored) -> None:
    """Record step ``t``: each image's latest score and the history, the best iterate, the gradient norms."""
    active = run.active
    run.last[active] = s.seen
    run.history.append(run.last.clone())
    if job.watch is not None:
        job.watch(t, s.images.detach().clone(), run.last.clone())
    better = s.seen > run.best_scores[active]
    run.best[active[better]] = s.batch.detach()[better]
    run.best_scores[active[better]] = s.seen[better]
    if run.best_codes is not None:
        run.best_codes[active[better]] = s.codes[better]
    if job.stepper.gradient:
        run.grad_norms.append(_grad_norms(job.param, run.n, active))
    run.t = t + 1


def _stop(run: Run, s: _Scored) -> torch.Tensor | None:
    """Apply the stopping rule: keep the images that met it as they are, before this step moves them, and mark them
    done; returns which of the batch did, or None if none."""
    if run.crit is None:
        return None
    reached = run.crit(s.seen, detached(s.acts))
    if not reached.any():
        return None
    rows = run.active[reached]
    run.frozen[rows] = s.batch.detach()[reached]
    if run.frozen_codes is not None:
        run.frozen_codes[rows] = s.codes[reached]
    run.done[rows] = True
    return reached


def _move(job: _Job, run: Run, scores: torch.Tensor, reached: torch.Tensor | None) -> None:
    """Step the parameters and project the pixels, holding the images that stopped where they stopped; with a rule
    that steps images independently, they leave the batch (a population search moves its whole population)."""
    job.stepper.step(scores, run.active)
    if job.pixels is not None:
        with torch.no_grad():
            job.project_(job.pixels)
            if run.done.any():
                job.pixels[run.done] = run.frozen[run.done]
    if reached is not None and job.stepper.independent:
        run.active = run.active[~reached]
        run.narrow(job.objective, job.rule)


def _finish(job: _Job, run: Run) -> _Final:
    """The returned images, each as it stopped or as the run left it, projected once more (whatever the step rule
    did, they are feasible), and what they score with no transform; the best iterate updated with them."""
    with torch.no_grad():
        final = render(job.param, job.constraints).clone()
        final[run.done] = run.frozen[run.done]
        job.project_(final)
        scores, acts = _evaluate(job.forward, job.objective, final, job.draws, (), run.gen, average=job.eot_average)
        success = job.rule.final(scores, acts) if job.rule is not None else None
        better = scores > run.best_scores
        run.best[better], run.best_scores[better] = final[better], scores[better]
        job.project_(run.best)
        codes = None
        if run.best_codes is not None:
            codes = job.param.codes().clone()
            codes[run.done] = run.frozen_codes[run.done]
            run.best_codes[better] = codes[better]
    return _Final(final, scores, acts, success, codes)


def _result(job: _Job, run: Run, final: _Final, metadata: dict | None) -> Result:
    """The run's ``Result``: the returned images and their figures, the run's books, and its metadata."""
    meta = {**job.recipe, "steps": job.steps, "steps_run": len(run.history), "evaluations": run.evaluations,
            "seconds": round(run.seconds, 3), "device": str(job.device), "phosphene": __version__,
            "torch": torch.__version__, "machine": machine(),
            **({"checkpoint": str(job.path)} if job.path is not None else {}), **(metadata or {})}
    hist = torch.stack(run.history).cpu() if run.history else torch.zeros(0, run.n)
    grads = torch.stack(run.grad_norms).cpu() if run.grad_norms else torch.zeros(0, run.n)
    balls = [c for c in job.projections if isinstance(c, LpBall)]
    coded = final.codes is not None
    return Result(final.images.detach().cpu(), hist, final.scores.cpu(),
                  {k: v.detach().cpu() for k, v in final.acts.items() if k != "input"}, meta,
                  success=final.success.cpu() if final.success is not None else None, best=run.best.cpu(),
                  best_scores=run.best_scores.cpu(), grad_norm=grads,
                  distance=balls[0].distance(final.images).cpu() if balls else None, targets=job.objective.tensors(),
                  codes=final.codes.cpu() if coded else None, best_codes=run.best_codes.cpu() if coded else None)


def _describe(thing: object) -> str:
    """A name for a step rule or schedule that is the same in every process (no object addresses)."""
    if isinstance(thing, functools.partial):
        args = [repr(a) for a in thing.args] + [f"{k}={v!r}" for k, v in thing.keywords.items()]
        return f"{_describe(thing.func)}({', '.join(args)})"
    if isinstance(thing, str) or type(thing).__str__ is not object.__str__:
        return str(thing)
    return getattr(thing, "__qualname__", type(thing).__qualname__)


# What must agree between a checkpoint and the call continuing it (more steps are allowed: the run goes on).
_FINGERPRINT = ("model", "weights_sha256", "objective", "objective_fingerprint", "parametrization", "constraints",
                "transforms", "eot", "eot_average", "step_rule", "lr", "lr_schedule", "target", "stop", "random_start",
                "relu_override", "seed", "interventions", "precision", "parametrization_info", "settings")


def _save(job: _Job, run: Run) -> None:
    """Write the run's checkpoint atomically, so that a run killed while saving keeps the previous one."""
    blob = {"format": CHECKPOINT_FORMAT, "recipe": {k: job.recipe[k] for k in _FINGERPRINT},
            "param": job.param.state_dict(), **job.stepper.state_dict(),
            "rule": job.rule.state_dict() if job.rule is not None else None, "objective": job.objective.state_dict(),
            **run.state_dict()}
    job.path.parent.mkdir(parents=True, exist_ok=True)
    save_torch(blob, job.path)


def _resume(job: _Job, run: Run) -> None:
    """Continue the run from its checkpoint, after checking that the checkpoint belongs to it."""
    blob = _read_checkpoint(job.path, job.recipe, run.n, job.device)
    job.param.load_state_dict(blob["param"])
    job.stepper.load_state_dict(blob)
    if job.rule is not None:
        job.rule.load_state_dict(blob["rule"])
    job.objective.load_state_dict(blob["objective"])
    run.load_state_dict(blob)


def _read_checkpoint(path: Path, recipe: dict, n: int, device: torch.device) -> dict:
    """A checkpoint's contents, refused unless it is of this format and belongs to the run of ``recipe``."""
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
    return blob


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
