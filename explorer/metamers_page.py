"""Metamers: an image's model metamer at one stage, Feather's criterion statistics, what other models call it,
and the stage × model grid of the recognizability run."""
from pathlib import Path

import streamlit as st
import torch

import metamers
from explorer.common import as_uint8, download, get_model, pick_image, pick_model, shown_errors
from metamers.generate import STEPS, stages
from synth.zoo.models import embedded_models

RESULTS = Path(__file__).resolve().parent.parent / "examples" / "results"

st.header("Metamers")
with st.sidebar:
    model = pick_model("metamer-model", default="toy-robust")
    stage = st.selectbox("stage", stages(model), index=min(3, len(stages(model)) - 1))
    steps = st.slider("most steps", 50, STEPS, min(400, STEPS), step=50)
    seed = st.number_input("seed", 0, 10**6, 0)
    retries = st.checkbox("retry a failed metamer once", value=False)

image, category = pick_image(model, "metamer")
st.image(as_uint8(image[0]), caption=f"reference{f' ({category})' if category else ''}", width=160)

go, stop, _ = st.columns([2, 1, 4])  # wide enough for "Make the metamer" at 1400 px
if stop.button("Stop", key="metamer-stop",
               help="interrupts a running optimization (any other change of input does too)"):
    st.warning("Stopped: the optimization was interrupted and nothing was kept.")
if go.button("Make the metamer", type="primary", key="metamer-go"):
    bar = st.progress(0.0, f"optimizing a {stage} metamer of {model.name}")

    def watch(t, images, scores):
        bar.progress(min(1.0, (t + 1) / steps), f"step {t + 1} (at most {steps}) · normalized error "
                                                f"{-float(scores[0]):.3f}")

    with shown_errors():
        r = metamers.generate(model, image.to(model.device), stage, steps=steps, seed=int(seed),
                              retries=int(retries), progress=False, watch=watch)
    bar.empty()
    st.session_state["metamer"] = (model.name, r)

if "metamer" in st.session_state:
    name, r = st.session_state["metamer"]
    row = r.summary()[0]
    a, b, _ = st.columns([1, 1, 2])
    a.image(as_uint8(r.references[0]), caption="reference", width="stretch")
    b.image(as_uint8(r.images[0]), caption=f"{name} {r.stage} metamer: {'passed' if row['passed'] else 'FAILED'}",
            width="stretch")
    with b:
        download(r.images[0], r.metadata, f"{name}_{r.stage}_metamer", "metamer-dl")
    st.dataframe([row], hide_index=True)
    st.caption("Passed = Feather's criterion (Spearman above, NSE below every null pair of natural images) and the "
               f"normalized error within {r.error_target:g}.")
    verdicts = []
    for other in embedded_models():
        m = get_model(other)
        with torch.no_grad():
            p = m(r.images.to(m.device)).softmax(1)[0].cpu()
        verdicts.append({"observer": other, "calls it": m.classes[int(p.argmax())], "probability": float(p.max()),
                         "reference called": m.classes[int(m(r.references.to(m.device)).argmax(1)[0])]})
    st.subheader("What the models call it")
    st.dataframe(verdicts, hide_index=True)

st.subheader("The recognizability run (stage × model)")
if (RESULTS / "metamers_examples.png").is_file():
    st.image(str(RESULTS / "metamers_examples.png"), caption="example metamers per model and stage")
    st.image(str(RESULTS / "metamers_recognition.png"), caption="recognized by the other models")
    with st.expander("the report (metamers.md)"):
        st.markdown((RESULTS / "metamers.md").read_text())
else:
    st.info("Run `python examples/recognizability.py` (or `phosphene metamers recognizability`) to fill this in.")
