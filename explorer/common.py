"""What the explorer's pages share: cached models and images, checked uploads, downloads with metadata."""
from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import streamlit as st
import torch
import torch.nn.functional as F

import synth
from synth.errors import ImageError, PhospheneError
from synth.files import read_png, write_png
from synth.zoo.models import embedded_models, require_trained

MAX_UPLOAD_MB = 20
UPLOAD_TYPES = ["png", "jpg", "jpeg", "bmp", "tif", "tiff", "webp"]
CHECKPOINT = "a checkpoint file…"


@st.cache_resource(show_spinner="loading the model…")
def get_model(name: str, weights: str | None = None) -> synth.ProbeModel:
    """Load a model once per server process (a zoo name, or a checkpoint path with ``weights``), shared by every
    session: nothing may change it (runs change forks of it, and each session has its own, ``session_model``).
    An architecture without trained weights is refused, as on the command line."""
    return require_trained(synth.load_model(name, weights=weights or None),
                           "name its weights file in the sidebar (nothing is downloaded here)")


def session_model(name: str, weights: str | None = None) -> synth.ProbeModel:
    """This browser session's own fork of the shared model (``ProbeModel.fork``: the same weights, its own modules
    and readouts), so what one user attaches or changes is never seen by another."""
    forks = st.session_state.setdefault("models", {})
    key = (name, weights or "")
    if key not in forks:
        forks[key] = get_model(name, weights).fork()
    return forks[key]


@st.cache_data(show_spinner="rendering images…")
def get_images(n: int, seed: int, variation: str, category: str | None, size: int = 64
               ) -> tuple[np.ndarray, list[dict]]:
    """Render (and cache) images of the embedded test split."""
    batch = synth.render(n, "test", synth.World(size=size, seed=seed, variation=variation), category=category)
    return batch.images, batch.metadata


@st.cache_data(show_spinner="rendering test images…")
def test_batch(n: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``n`` embedded test images balanced over the categories, with their labels (indices into CATEGORIES)."""
    per = max(1, n // len(synth.CATEGORIES))
    parts = [get_images(per, 0, "mixed", c, size)[0] for c in synth.CATEGORIES]
    labels = np.repeat(np.arange(len(synth.CATEGORIES)), per)
    return np.concatenate(parts)[:n], labels[:n]


def images_zip(images: np.ndarray, metadata: list[dict]) -> bytes:
    """uint8 images as a zip of PNGs plus ``metadata.csv`` (``data.write_folder``'s layout)."""
    import zipfile

    from synth.world.data import ImageBatch, write_folder

    with tempfile.TemporaryDirectory() as tmp:
        write_folder(ImageBatch(images, np.zeros(len(images), np.int64), metadata, tuple(synth.CATEGORIES)), tmp)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for f in sorted(Path(tmp).iterdir()):
                z.write(f, f.name)
        return buf.getvalue()


@contextlib.contextmanager
def shown_errors() -> Iterator[None]:
    """Turn phosphene's errors into one message box and stop the page, never a traceback."""
    try:
        yield
    except PhospheneError as e:
        st.error(str(e))
        st.stop()


def pick_model(key: str = "model", label: str = "model", default: str = "toy-standard",
               sidebar: bool = True) -> synth.ProbeModel:
    """A model picker: the embedded zoo, or any zoo name / checkpoint path typed in."""
    where = st.sidebar if sidebar else st
    names = list(embedded_models())
    choice = where.selectbox(label, [*names, CHECKPOINT], index=names.index(default) if default in names else 0,
                             key=key, help="embedded models ship with phosphene; others load from a local file")
    with shown_errors():
        if choice == CHECKPOINT:
            arch = where.text_input("architecture or card", key=f"{key}-arch",
                                    help="a zoo name (resnet50, cornet_s, vonenet_resnet50, …) or a card .json")
            path = where.text_input("weights file", key=f"{key}-weights")
            if not arch:
                st.info("Name an architecture (and a weights file) in the sidebar.")
                st.stop()
            return session_model(arch, path)
        return session_model(choice)


def to_model_size(x: torch.Tensor, model: synth.ProbeModel) -> torch.Tensor:
    """Resize N×3×H×W images to the model's input size (when it has one)."""
    size = model.input_size
    if size and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return x


def read_upload(upload) -> torch.Tensor:
    """An uploaded file as a 3×H×W [0,1] tensor: size, type, decompression bombs and odd modes checked by
    ``synth.files.read_png``; a bad file raises ImageError with the reason."""
    data = upload.getvalue()
    if len(data) > MAX_UPLOAD_MB * 2 ** 20:
        raise ImageError(f"{upload.name} is {len(data) / 2 ** 20:.1f} MB; uploads are limited to {MAX_UPLOAD_MB} MB")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(upload.name).name
        path.write_bytes(data)
        image, _ = read_png(path)
    return image


def pick_image(model: synth.ProbeModel, key: str) -> tuple[torch.Tensor, str | None]:
    """One image (1×3×H×W at the model's size) from the embedded test split or an upload, with its category."""
    source = st.radio("image", ["embedded test image", "upload"], horizontal=True, key=f"{key}-source")
    if source == "upload":
        upload = st.file_uploader("an image file", type=UPLOAD_TYPES, key=f"{key}-upload")
        if upload is None:
            st.info(f"Upload an image (PNG, JPEG, TIFF, WebP; at most {MAX_UPLOAD_MB} MB).")
            st.stop()
        with shown_errors():
            return to_model_size(read_upload(upload)[None], model), None
    category = st.selectbox("category", model.classes if set(model.classes) <= set(synth.CATEGORIES)
                            else list(synth.CATEGORIES), key=f"{key}-category")
    index = st.number_input("image index", 0, 99, 0, key=f"{key}-index")
    images, _ = get_images(int(index) + 1, 0, "mixed", category)
    return to_model_size(synth.world.data.to_tensor(images[-1:]), model), category


def png_bytes(image: torch.Tensor, metadata: dict) -> bytes:
    """One 3×H×W image as PNG bytes carrying ``metadata`` in its text chunks (as every saved image does)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.png"
        write_png(image, path, metadata)
        return path.read_bytes()


def download(image: torch.Tensor, metadata: dict, name: str, key: str) -> None:
    """A download button for an image with its metadata (PNG text chunks), and one for the metadata as JSON."""
    a, b = st.columns(2)
    a.download_button("PNG", png_bytes(image, metadata), f"{name}.png", "image/png", key=f"{key}-png")
    b.download_button("JSON", json.dumps(metadata, indent=1, default=str), f"{name}.json",
                      "application/json", key=f"{key}-json")


def as_uint8(x: torch.Tensor) -> np.ndarray:
    """3×H×W [0,1] as an H×W×3 uint8 array for st.image."""
    return (x.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (closed afterwards)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
