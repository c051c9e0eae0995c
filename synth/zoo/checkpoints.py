"""Reading weights safely: ``weights_only`` unpickling, known wrappers and prefixes, and mismatch reports."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from synth.errors import CheckpointError

# Where a state dict hides inside common checkpoint files (CORnet: 'state_dict'; MadryLab: 'model').
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


def read(path: str | os.PathLike) -> Mapping:
    """Load a checkpoint file with ``weights_only=True`` on the CPU; say clearly why it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors name the offending global; keep that text
        raise CheckpointError(
            f"cannot read {path} safely (torch.load weights_only=True): {str(e).splitlines()[0]}. "
            "phosphene only loads tensors and plain containers; re-save the state_dict alone "
            "(torch.save(model.state_dict(), path)) from a trusted environment.") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def state_dict(obj: Mapping, prefixes: tuple[str, ...] = ("module.",)) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint, with wrapper prefixes such as DataParallel's 'module.' removed."""
    for key in _CONTAINER_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"no tensors found in checkpoint (keys: {list(obj)[:8]})")
    for prefix in prefixes:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def load_into(net: nn.Module, tensors: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy tensors into ``net``, raising one error that lists missing, unexpected and mis-shaped tensors."""
    own = net.state_dict()
    missing = [k for k in own if k not in tensors and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in tensors if k not in own]
    shapes = [f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in tensors and tensors[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = [f"{source} does not fit the architecture:"]
        for label, items in (("shape mismatch", shapes), ("missing from checkpoint", missing),
                             ("not in model", unexpected)):
            if items:
                more = f" (+{len(items) - 6} more)" if len(items) > 6 else ""
                lines.append(f"  {label}: " + "; ".join(items[:6]) + more)
        raise CheckpointError("\n".join(lines))
    net.load_state_dict({k: v for k, v in tensors.items() if k in own}, strict=False)
