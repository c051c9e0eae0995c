"""Models: the zoo's cards, a model's layers and brain-area map, and the embedded world with its predictions."""
import numpy as np
import streamlit as st
import torch

import synth
from explorer.common import get_images, images_zip, pick_model, shown_errors
from synth.world.data import CONTROLS, VARIATION, to_tensor
from synth.zoo.catalog import BRAIN_SCORE_AREAS, CORNET_NAMES, embedded_models, torchvision_models, white_box_name

cards = embedded_models()
model = pick_model("models-model")
with st.sidebar:
    seed = st.number_input("world seed", 0, 10**6, 0)
    variation = st.selectbox("variation", ["mixed", *VARIATION], help="HvM-style low / medium / high")
    per_category = st.slider("images per category", 1, 12, 6)

st.header("Models")
rows = [{"model": n, "description": c["description"], "test top-1": f"{c['metrics']['test_top1']:.1%}",
         f"Linf @ {c['metrics']['pgd_linf']['eps_255']:g}/255":
             f"{c['metrics']['pgd_linf']['accuracy']:.1%} (foolbox {c['metrics']['pgd_linf']['foolbox']:.1%})",
         "measured by": white_box_name(c["metrics"]["pgd_linf"]),
         "areas": ", ".join(f"{a}={l}" for a, l in c["areas"].items())} for n, c in cards.items()]
st.dataframe(rows, hide_index=True, width="stretch")
st.caption(f"Also loadable from local weights: {', '.join(CORNET_NAMES)} and {len(torchvision_models())} torchvision "
           f"architectures (Brain-Score area maps for {', '.join(BRAIN_SCORE_AREAS)}); MadryLab robust "
           "and VOneNet checkpoints are recognized automatically.")
st.write(f"**{model.name}** areas: " + " · ".join(f"`{a}` → `{l}`" for a, l in model.areas.items()))
with st.expander(f"all {len(model.layers)} layers and their response shapes"):
    size = model.input_size or 224
    with shown_errors(), torch.no_grad():
        acts = model.activations(torch.full((1, 3, size, size), 0.5, device=model.device),
                                 [layer for layer in model.layers if layer != "input"])
    st.dataframe([{"layer": k, "shape": str(tuple(v.shape[1:])),
                   "area": ", ".join(a for a, l in model.areas.items() if l == k)} for k, v in acts.items()],
                 hide_index=True, width="stretch")

st.header("The embedded object world")
st.caption("Eight HvM categories rendered procedurally over natural-texture backgrounds; captions show the "
           "selected model's top-1 guess.")
shown_images, shown_meta = [], []
for category in synth.CATEGORIES:
    images, meta = get_images(per_category, int(seed), variation, category, model.input_size or 64)
    shown_images.append(images)
    shown_meta += meta
    with torch.no_grad():
        p = model(to_tensor(images, model.device)).softmax(1).cpu()
    st.subheader(category)
    for col, img, m, k, q in zip(st.columns(per_category), images, meta, p.argmax(1).tolist(), p.max(1).values):
        label = model.classes[k]
        col.image(img, caption=f"{'✓' if label == category else '✗'} {label} {float(q):.0%} · {m['variation']}",
                  width="stretch")

st.download_button("download these images (PNGs and metadata.csv)", images_zip(np.concatenate(shown_images),
                   shown_meta), f"embedded_seed{seed}_{variation}.zip", "application/zip")

st.header("Face-localizer controls")
for control in CONTROLS:
    images, _ = get_images(per_category, int(seed), variation, control, 64)
    st.subheader(control.replace("_", " "))
    for col, img in zip(st.columns(per_category), images):
        col.image(img, width="stretch")
