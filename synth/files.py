"""Writing files so that a crash never leaves a half-written one under its real name; file hashes."""
from __future__ import annotations

import contextlib
import csv
import hashlib
import functools
import json
import os
import platform
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@contextlib.contextmanager
def atomic(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it is renamed onto ``path`` (atomic on
    POSIX), when it fails it is removed.  Readers see the old file or the whole new one, never a part.

    The temporary name (``.NAME.<random>.tmp``) is unique to this call, so two writers to one path never share
    it: the last rename wins whole.  The block creates the file, so it gets the usual permissions."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write a text file."""
    with atomic(path) as tmp:
        tmp.write_text(text)


def write_csv(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """Atomically write dict rows as CSV (header from the first row; lists and dicts as JSON)."""
    with atomic(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()} for r in rows)


def sha256(path: str | os.PathLike) -> str:
    """Hex digest of a file: recorded in model cards, result metadata and batch manifests."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensor_digest(t: torch.Tensor) -> str:
    """A short sha256 (16 hex digits) of a tensor's dtype, shape and values (not its memory layout or device): how
    a run's recipe names a tensor that defines it (a ball's centre, per-image budgets)."""
    import torch

    t = torch.as_tensor(t).detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}:{tuple(t.shape)};".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@functools.cache
def machine() -> dict:
    """Which machine and library versions made an output: recorded beside every generated image, because
    bit-identical results hold only on the same machine with the same libraries."""
    import numpy
    import PIL
    import torch
    import torchvision

    return {"host": platform.node(), "platform": platform.platform(), "cpu": platform.processor() or
            platform.machine(), "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": numpy.__version__, "pillow": PIL.__version__,
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
