"""phosphene explorer (Streamlit): the models and the embedded image world.  Thin: it only calls the library."""
from __future__ import annotations

import numpy as np
import streamlit as st
import torch

import synth
from synth.data import CONTROLS, VARIATION, to_tensor
from synth.models import BRAIN_SCORE_AREAS, CORNETS, embedded_models, torchvision_models

st.set_page_config(page_title="phosphene", layout="wide")


@st.cache_resource
def get_model(name: str) -> synth.ProbeModel:
    """Load a model once per server process."""
    return synth.load_model(name)


@st.cache_data
def get_images(n: int, seed: int, variation: str, category: str | None, size: int) -> tuple[np.ndarray, list[dict]]:
    """Render (and cache) images of the embedded test split."""
    batch = synth.render(n, "test", synth.World(size=size, seed=seed, variation=variation), category=category)
    return batch.images, batch.metadata


def predict(name: str, images: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Top-1 category names and their probabilities for uint8 images."""
    model = get_model(name)
    x = to_tensor(images, model.device)
    with torch.no_grad():
        p = model(x).softmax(1).cpu().numpy()
    return [model.classes[i] for i in p.argmax(1)], p.max(1)


st.title("phosphene")
st.caption(f"Probe models of the primate ventral stream · version {synth.__version__} · "
           f"device {synth.default_device()}")

cards = embedded_models()
with st.sidebar:
    model_name = st.selectbox("model", list(cards), help="embedded models ship with phosphene")
    seed = st.number_input("world seed", 0, 10**6, 0)
    variation = st.selectbox("variation", ["mixed", *VARIATION], help="HvM-style low / medium / high")
    per_category = st.slider("images per category", 1, 12, 6)

st.header("Models")
rows = [{"model": n, "description": c["description"], "test top-1": f"{c['metrics']['test_top1']:.1%}",
         f"Linf PGD-{c['metrics']['pgd_linf']['steps']} @ {c['metrics']['pgd_linf']['eps_255']:g}/255":
             f"{c['metrics']['pgd_linf']['accuracy']:.1%} (foolbox {c['metrics']['pgd_linf']['foolbox']:.1%})",
         "areas": ", ".join(f"{a}={l}" for a, l in c["areas"].items())} for n, c in cards.items()]
st.dataframe(rows, hide_index=True, width="stretch")
st.caption(f"Also loadable from local weights: {', '.join(CORNETS)} and {len(torchvision_models())} torchvision "
           f"architectures (Brain-Score area maps for {', '.join(BRAIN_SCORE_AREAS)}); MadryLab robust "
           "and VOneNet checkpoints are recognized automatically.")
model = get_model(model_name)
st.write(f"**{model_name}** areas: " + " · ".join(f"`{a}` → `{l}`" for a, l in model.areas.items()))

st.header("The embedded object world")
st.caption("Eight HvM categories rendered procedurally over natural-texture backgrounds; captions show the "
           "selected model's top-1 guess.")
for category in model.classes:
    images, meta = get_images(per_category, int(seed), variation, category, 64)
    labels, probs = predict(model_name, images)
    st.subheader(category)
    cols = st.columns(per_category)
    for col, img, m, lab, p in zip(cols, images, meta, labels, probs):
        mark = "✓" if lab == category else "✗"
        col.image(img, caption=f"{mark} {lab} {p:.0%} · {m['variation']}", width="stretch")

st.header("Face-localizer controls")
for control in CONTROLS:
    images, _ = get_images(per_category, int(seed), variation, control, 64)
    st.subheader(control.replace("_", " "))
    for col, img in zip(st.columns(per_category), images):
        col.image(img, width="stretch")
