"""Randomness a run owns: the model's own noise drawn from the run's generator, and third-party code that only
knows the global generators run inside a seeded, restored, locked copy of them.

A stochastic network (VOneNet's V1 noise) draws through ``noise_like``; inside ``noise_generator(gen)`` those
draws come from ``gen``, a generator the run seeded, so ``optimize(seed=)`` determines them and nothing another
run (or the caller) did to torch's global generator changes a result.  The setting is a context variable: each
thread (each explorer session) has its own, so two runs side by side never share a generator.  Outside any run
``noise_like`` falls back to torch's global generator, as a plain ``model(x)`` call with dropout would.  A user's
own noisy module gets the same ownership by drawing through ``synth.rng.noise_like``.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

import numpy as np
import torch

P, R = ParamSpec("P"), TypeVar("R")
_NOISE: contextvars.ContextVar[torch.Generator | None] = contextvars.ContextVar("phosphene_noise", default=None)
_GLOBAL_LOCK = threading.RLock()  # one thread at a time may borrow the global generators


@contextlib.contextmanager
def noise_generator(gen: torch.Generator | None) -> Iterator[torch.Generator | None]:
    """Draw every network noise sample inside the block from ``gen`` (None: torch's global generator)."""
    token = _NOISE.set(gen)
    try:
        yield gen
    finally:
        _NOISE.reset(token)


def current_noise_generator() -> torch.Generator | None:
    """The generator noise is drawn from here and now (None: torch's global one)."""
    return _NOISE.get()


@torch.compiler.disable  # reads a context variable at run time: never baked into a compiled graph
def noise_like(x: torch.Tensor) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, from the run's generator (``noise_generator``) when one is set."""
    gen = _NOISE.get()
    if gen is None:
        return torch.randn_like(x)
    if gen.device.type != x.device.type:
        raise RuntimeError(f"the run's noise generator is on {gen.device}, the network's activity on {x.device}")
    return torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)


# A leaf of torch.fx traces when called as ``rng.noise_like`` (a module that imports the name calls torch.fx.wrap
# itself, as synth.vone does): the draw reads the run's generator when it runs, not when the graph is traced.
torch.fx.wrap("noise_like")


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=torch.device(device)).manual_seed(int(seed))


def derive(seed: int, stream: int) -> int:
    """A seed for the ``stream``-th independent use of a run's ``seed`` (start, noise, restarts…): SeedSequence's
    mixing, so nearby seeds and streams give unrelated generators."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(stream)]).generate_state(1, np.uint64)[0] >> 1)


@contextlib.contextmanager
def _globals_kept() -> Iterator[None]:
    """Torch's CPU and CUDA and numpy's global generator states, as they were on entering, restored on leaving."""
    np_state = np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            np.random.set_state(np_state)


def restores_globals(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a function that seeds and draws from torch's and numpy's global generators itself (training
    recipes: module initialisation knows no other generator) so that its caller finds them as they were."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _globals_kept():
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def seeded_globals(seed: int) -> Iterator[None]:
    """Run third-party code that draws from torch's and numpy's global generators (foolbox's random starts,
    imagecorruptions) deterministically without touching the caller's state: under a lock, seed them with
    ``seed`` and restore the caller's states on leaving."""
    with _GLOBAL_LOCK, _globals_kept():
        torch.manual_seed(int(seed))
        np.random.seed(int(seed) % 2 ** 32)
        yield
