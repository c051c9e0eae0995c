"""Memory of an engine step: what autograd keeps for the backward pass, and the largest batch that fits.

A step's memory beyond the weights grows with the batch: the activations the backward pass needs (autograd's
saved tensors) and the activations the objective reads.  ``step_bytes`` measures them for one engine step;
``max_batch`` finds the largest batch whose step fits, by trial on a CUDA device (the allocator is the judge) and
otherwise by measurement against a budget in bytes (the machine's available memory by default).
"""
from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from synth.engine.loop import optimize
from synth.engine.objectives import Objective
from synth.engine.params import Pixels
from synth.errors import ConfigError
from synth.zoo.probe import ProbeModel


class SavedTensors:
    """Inside the block, count the bytes of the tensors autograd saves for the backward pass: each storage once
    (views and tensors saved twice share one), leaving out the storages of ``exclude`` (the weights)."""

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._exclude = {t.untyped_storage().data_ptr() for t in exclude}
        self._storages: dict[int, int] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self._exclude:
            self._storages[key] = max(self._storages.get(key, 0), storage.nbytes())
        return t

    def __enter__(self) -> SavedTensors:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        """The bytes counted so far."""
        return sum(self._storages.values())


def weights(model: ProbeModel) -> list[torch.Tensor]:
    """The model's parameters and buffers, readouts included: memory a step holds whatever its batch."""
    out = [*model.parameters(), *model.buffers()]
    for readout in model.readouts.values():
        out += [*readout.parameters(), *readout.buffers()]
    return out


def step_bytes(model: ProbeModel, objective: Objective | str, batch: int, *, size: int | None = None,
               **engine) -> int:
    """Bytes one engine step on ``batch`` random images of ``size`` px holds beyond the weights: the tensors
    autograd saves for its backward pass plus the activations the objective reads (counted apart, so an upper
    bound where autograd also keeps them).  ``engine``: further ``synth.optimize`` options (``precision``,
    ``checkpoint_activations``, ``step``, ``transforms``, ...)."""
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    size = size or model.input_size or 224
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with SavedTensors(exclude=weights(model)) as saved:
        result = optimize(model, objective, Pixels(x), steps=1, progress=False, **engine)
    return saved.bytes + sum(a.nbytes for a in result.activations.values())


def max_batch(model: ProbeModel, objective: Objective | str, *, size: int | None = None, memory: int | None = None,
              limit: int = 1024, **engine) -> int:
    """The largest batch (up to ``limit``) of ``size``-px images whose engine step fits in memory.

    On a CUDA device without ``memory``: engine steps at growing batches (1, 2, 3, 5, 9, ... then bisection) until
    one runs out of memory, each trial after emptying the allocator's cache.  Elsewhere, or with a ``memory``
    budget in bytes: ``step_bytes`` measured at batches 1 and 2, extrapolated linearly to the budget (default: the
    machine's available memory), then checked, and corrected, by measuring the batches around the estimate.
    ``objective`` must score any batch (no per-image labels or targets); ``engine``: further ``synth.optimize``
    options, such as ``precision='bf16'`` or ``checkpoint_activations=True``, that change what a step holds."""
    if limit < 1:
        raise ConfigError(f"limit must be >= 1, got {limit}")
    if memory is None and model.device.type == "cuda":
        return _largest(lambda b: _fits(model, objective, b, size, engine), limit)
    budget = int(memory) if memory is not None else available_memory()
    measured: dict[int, int] = {}

    def cost(b: int) -> int:
        if b not in measured:
            measured[b] = step_bytes(model, objective, b, size=size, **engine)
        return measured[b]

    if cost(1) > budget:
        raise ConfigError(f"one image's step needs {cost(1):,} bytes, more than the budget of {budget:,}")
    per_image = max(cost(2) - cost(1), 1)
    guess = 1 + (budget - cost(1)) // per_image
    return _largest(lambda b: cost(b) <= budget, limit, guess)


def available_memory() -> int:
    """Bytes of memory this machine can still give a process (Linux's MemAvailable, else the free pages)."""
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        raise ConfigError("cannot tell how much memory this machine has free: pass memory=BYTES") from None


def _fits(model: ProbeModel, objective: Objective | str, batch: int, size: int | None, engine: dict) -> bool:
    """Whether one engine step on ``batch`` images runs without the device running out of memory."""
    try:
        step_bytes(model, objective, batch, size=size, **engine)
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _largest(fits: Callable[[int], bool], limit: int, guess: int = 1) -> int:
    """The largest batch in 1..``limit`` that ``fits`` (a test that holds up to some batch and fails above it):
    strides doubling from ``guess`` up while it fits or down while it does not, then bisection between the last
    batch that fitted and the first that did not."""
    guess = min(max(guess, 1), limit)
    stride = 1
    if fits(guess):
        lo, hi = guess, limit + 1
        while lo < limit:
            b = min(lo + stride, limit)
            if not fits(b):
                hi = b
                break
            lo, stride = b, stride * 2
    else:
        lo, hi = 0, guess
        while hi > 1:
            b = max(hi - stride, 1)
            if fits(b):
                lo = b
                break
            hi, stride = b, stride * 2
        if lo == 0:
            raise ConfigError("not even one image's engine step fits in memory")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo
