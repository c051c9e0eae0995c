"""phosphene's I/O: files written so that a crash never leaves a half-written one under its real name, file and
tensor digests, the weights check every saved result goes through, and PNGs that carry their recipe."""
from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import os
import platform
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from synth.errors import CheckpointError, ConfigError, ImageError


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


def save_torch(obj: object, path: str | os.PathLike) -> str:
    """Atomically ``torch.save`` to ``path`` and return the sha256 of the bytes written.  The archive is made in
    memory: torch names it after the file it is given, so saving under a temporary name would make the same tensors
    give different bytes each time."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    with atomic(path) as tmp:
        tmp.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


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
    an objective's text names its target ('sha256:…') and a run's recipe a tensor that defines it (a ball's centre,
    per-image budgets)."""
    t = torch.as_tensor(t).detach().to("cpu").contiguous()
    h = hashlib.sha256(str((tuple(t.shape), str(t.dtype))).encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@functools.cache
def machine() -> dict:
    """Which machine and library versions made an output: recorded beside every generated image, because
    bit-identical results hold only on the same machine with the same libraries."""
    import PIL
    import torchvision

    return {"host": platform.node(), "platform": platform.platform(), "cpu": platform.processor() or
            platform.machine(), "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "numpy": np.__version__, "pillow": PIL.__version__,
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


MAX_PIXELS = 50_000_000  # larger images are refused before decoding (decompression bombs)
MIN_SIDE = 8  # smaller images are refused: resized to a model's input they are a flat colour


def check_weights(metadata: dict, model, where: str | os.PathLike, remedy: str = "use it without a model") -> None:
    """Raise CheckpointError unless ``metadata`` recorded the digest of ``model``'s weights
    (``ProbeModel.weights_digest``): a mismatch, or no digest recorded, is always refused."""
    recorded = metadata.get("weights_sha256")
    current = model.weights_digest()
    if not recorded:
        raise CheckpointError(f"{where} records no weights digest, so it cannot be checked against {model.name}: "
                              f"{remedy}")
    if recorded != current:
        raise CheckpointError(f"{where} was made with {metadata.get('model')} weights {recorded[:12]}…, but "
                              f"{model.name} has weights {current[:12]}…: load the model it was made with")


# Metadata that differs between two runs of the same recipe: kept in result.json and manifests, not in the PNG,
# so that the same seed and config give a bit-identical file.
VOLATILE = ("seconds",)


def write_png(image: torch.Tensor, path: str | os.PathLike, metadata: dict) -> None:
    """Save one 3×H×W [0,1] image as an 8-bit PNG with ``metadata`` as text chunks (one per key, plus JSON);
    run timings are left out, so the same recipe writes the same bytes."""
    arr = (image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    metadata = {k: v for k, v in metadata.items() if k not in VOLATILE}
    info = PngImagePlugin.PngInfo()
    for key, value in metadata.items():
        info.add_text(f"phosphene:{key}", value if isinstance(value, str) else json.dumps(value))
    info.add_text("phosphene", json.dumps(metadata))
    with atomic(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG", pnginfo=info)


def read_png(path: str | os.PathLike) -> tuple[torch.Tensor, dict]:
    """Read an image as a 3×H×W float tensor in [0,1] and whatever phosphene metadata it carries.

    Odd modes (palette, grayscale, 16-bit, alpha) are converted to RGB; unreadable files raise ImageError.
    """
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ImageError(f"cannot read image {path}: {im.width}×{im.height} pixels is more than phosphene "
                                 f"reads ({MAX_PIXELS:,}); a decompression bomb, or an image to shrink first")
            if min(im.width, im.height) < MIN_SIDE:
                raise ImageError(f"image {path} is {im.width}×{im.height} pixels: too small to show a model anything "
                                 f"(at least {MIN_SIDE}×{MIN_SIDE})")
            im.load()
            text = dict(getattr(im, "text", {}) or {})
            if im.mode in ("I;16", "I;16B", "I", "F"):
                a = np.asarray(im, dtype=np.float64)
                a = (a - a.min()) / max(a.max() - a.min(), 1e-12)
                rgb = np.repeat(a[..., None], 3, axis=2)
            else:
                if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:  # composite alpha on grey
                    im = im.convert("RGBA")
                    bg = Image.new("RGBA", im.size, (128, 128, 128, 255))
                    im = Image.alpha_composite(bg, im)
                rgb = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image {path}: {e}") from None
    try:
        meta = json.loads(text["phosphene"]) if "phosphene" in text else {}
    except json.JSONDecodeError:
        meta = {}  # another program's (or a damaged) text chunk: the pixels are still the image
    return torch.from_numpy(rgb).permute(2, 0, 1).float(), meta


# ------------------------------------------------------------------------------------------------ records
# Every saved result (an optimization's Result, an AttackResult, a MetamerResult, a robustness table, a readout)
# is one record: PATH.pt with its tensors, its PNGs, and PATH.json, the sidecar that names the record's kind and
# format version, the digest of the weights it was made with, the digest of PATH.pt and the PNGs' names.
_RECORD_HEAD = ("kind", "format", "weights_sha256", "tensors_sha256", "files")


def _beside(path: Path, suffix: str) -> Path:
    """PATH with ``suffix`` appended (a dot in PATH's name is kept: 'v4.sites' → 'v4.sites.json')."""
    return path.with_name(path.name + suffix)


def _jsonable(o: object) -> object:
    """What a sidecar writes for a value JSON does not know: tensors and arrays as lists, anything else as text."""
    if isinstance(o, (torch.Tensor, np.ndarray, np.generic)):
        return o.tolist()
    return str(o)


def save_record(path: str | os.PathLike, kind: str, version: int, tensors: dict, sidecar: dict, *,
                weights_sha256: str | None = None,
                pngs: Sequence[tuple[str, torch.Tensor, dict]] = ()) -> list[Path]:
    """Write the record ``PATH``: ``PATH.pt`` (``tensors``, loadable with ``weights_only``; none when empty), one
    PNG per ``(name relative to PATH's folder, 3×H×W image, text chunks)`` in ``pngs``, then ``PATH.json``:
    ``sidecar`` under the record's kind, format ``version``, weights digest, the .pt's digest and the PNGs' names.
    Every file appears atomically, the sidecar last; returns the PNGs' paths."""
    path = Path(path)
    clash = set(_RECORD_HEAD) & set(sidecar)
    if clash:
        raise ConfigError(f"a {kind} record's sidecar cannot set {sorted(clash)}: save_record writes them")
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = None
    if tensors:
        digest = save_torch(tensors, _beside(path, ".pt"))
    paths = []
    for name, image, meta in pngs:
        png = path.parent / name
        png.parent.mkdir(parents=True, exist_ok=True)
        write_png(image, png, meta)
        paths.append(png)
    head = {"kind": kind, "format": version, "weights_sha256": weights_sha256, "tensors_sha256": digest,
            "files": [p.relative_to(path.parent).as_posix() for p in paths]}
    write_text(_beside(path, ".json"), json.dumps({**head, **sidecar}, indent=1, default=_jsonable))
    return paths


def load_record(path: str | os.PathLike, kind: str, version: int) -> tuple[dict, dict]:
    """Read the record ``PATH`` back: its tensors (``{}`` when it has none) and its sidecar.  A record saved before
    records had one format (no kind in its sidecar, an older format) is read as it is, for its class to convert.

    ConfigError when there is no ``PATH.json``; CheckpointError for an unreadable file, another kind of record, a
    format newer than ``version``, or a ``PATH.pt`` that is not the one the sidecar was written with."""
    path = Path(path)
    side, pt = _beside(path, ".json"), _beside(path, ".pt")
    if not side.is_file():
        raise ConfigError(f"no {kind} record at {path} (expected {side})")
    try:
        sidecar = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {side}: {e}") from None
    if not isinstance(sidecar, dict):
        raise CheckpointError(f"{side} is not a phosphene record (a JSON object with its kind and format)")
    found, fmt = sidecar.get("kind"), sidecar.get("format", 0)
    if not isinstance(fmt, int):
        raise CheckpointError(f"{side} has format {fmt!r}, not a version number")
    if found is None and fmt >= version:
        raise CheckpointError(f"{side} names no kind of record: not a {kind} record that phosphene wrote")
    if found is not None and found != kind:
        raise CheckpointError(f"{side} is a {found} record, not a {kind} record: load it as a {found}")
    if fmt > version:
        raise CheckpointError(f"{side} is a {kind} record of format {fmt}, newer than this phosphene reads "
                              f"(up to {version}): load it with a newer phosphene")
    digest = sidecar.get("tensors_sha256")
    if found is not None and digest is None:
        return {}, sidecar
    if not pt.is_file():
        if found is None:  # a record from before the one format that kept no tensors (a robustness table)
            return {}, sidecar
        raise CheckpointError(f"{pt} is missing: {side.name} was written with tensors in it")
    data = pt.read_bytes()
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(f"{pt} is not the file {side.name} was written with (its digest differs): saved "
                              "again in part, copied from another record, or damaged")
    try:
        tensors = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a damaged or unsafe file
        raise CheckpointError(f"cannot read {pt} as tensors: {e}") from None
    return tensors, sidecar
