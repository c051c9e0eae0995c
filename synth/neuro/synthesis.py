"""``synthesize``: images that drive a chosen neural state, with the defaults of feature visualization.

Defaults follow Lucid / lucent (Olah et al. 2017): a Fourier parametrization with decorrelated colour, Adam at
0.05, Lucid's standard jitter/scale/rotate transforms, and a noisy start, because from a flat grey a silent
post-ReLU unit has no gradient and the ascent never moves.  Even from noise some units are silent (6 of 16
sampled IT units of toy-standard never moved), so the first 16 steps use Lucid's redirected ReLU gradient;
with it every sampled unit rose 7-17x above its natural maximum.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from synth.engine.constraints import Box, Constraint
from synth.engine.loop import optimize
from synth.engine.objectives import Objective
from synth.engine.params import Parametrization, make
from synth.engine.results import Result
from synth.engine.transforms import Transform, standard
from synth.zoo.probe import ProbeModel


def synthesize(model: ProbeModel, objective: Objective | str, *, n: int = 1, size: int | None = None,
               param: str | Parametrization = "fourier", init: str | torch.Tensor = "noise", steps: int = 256,
               lr: float = 0.05, step: str = "adam", lr_schedule: str = "constant",
               transforms: Sequence[Transform] | str | None = "standard", eot: int = 1,
               constraints: Sequence[Constraint] = (), target: float | None = None, seed: int = 0,
               relu_override: int = 16, progress: bool = True,
               watch: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None, precision: str = "fp32",
               channels_last: bool = False, compile: bool | str = False, checkpoint_activations: bool = False,
               **param_options) -> Result:
    """Optimize ``n`` images (size defaults to the model's input size) to maximize ``objective``.

    ``param``: 'fourier' (default), 'pixels' or 'blurred' (Walker et al. 2019 gradient blur); ``init``:
    'noise' (default), 'grey', 'uniform' or an image tensor; ``transforms``: 'standard', None or a list;
    ``constraints`` are added to the pixel box (e.g. ``Contrast()``, ``Mask.aperture(64)``, ``Grayscale()``);
    ``watch(t, images, scores)`` is called at every step (``optimize``'s live view); ``precision``,
    ``channels_last``, ``compile`` and ``checkpoint_activations`` are ``optimize``'s speed and memory options.
    """
    size = size or model.input_size or 224
    gen = torch.Generator().manual_seed(seed)
    p = make(param, n, size, init, gen, **param_options)
    if transforms == "standard":
        transforms = standard(size)
    return optimize(model, objective, p, constraints=(Box(), *constraints), step=step, lr=lr,
                    lr_schedule=lr_schedule, steps=steps, transforms=transforms or (), eot=eot, target=target,
                    seed=seed, relu_override=relu_override, progress=progress, watch=watch,
                    metadata={"init": _init_name(init)}, precision=precision, channels_last=channels_last,
                    compile=compile, checkpoint_activations=checkpoint_activations)


def _init_name(init: str | torch.Tensor) -> str:
    return init if isinstance(init, str) else f"image tensor {tuple(init.shape)}"
