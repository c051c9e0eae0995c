"""Synthesize: images that drive a unit, a channel, a population or a recorded site, watched as they form."""
from pathlib import Path

import matplotlib
import numpy as np
import streamlit as st
import torch

import synth
from explorer.common import as_uint8, download, figure_png, get_images, pick_image, pick_model, shown_errors
from synth.engine.objectives import Match, parse
from synth.neuro.readouts import Readout

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KINDS = {"channel (mean over space)": "{layer}:{c}", "unit (one position)": "{layer}:c{c}[{y},{x}]",
         "stretch (one site far above the rest)": "stretch({layer}:{c})",
         "one-hot population (softmax over channels)": "onehot({layer}:{c})", "layer norm": "norm({layer})",
         "match an image's response": None, "written objective": None}

model = pick_model("synth-model")
st.header("Synthesize")
readout_path = st.sidebar.text_input("readout (optional)", "", help="a readout fitted by `phosphene readout fit` "
                                     "(its .pt path): its sites become a layer, addressed by name or number")
if readout_path:  # attached to this session's own model, once per file version; a second one keeps the first
    attached = st.session_state.setdefault("readouts", {})
    with shown_errors():
        key = (model.name, readout_path, Path(readout_path).stat().st_mtime_ns if Path(readout_path).is_file() else 0)
        if key not in attached:
            attached[key] = model.add_readout(Readout.load(readout_path))
    st.sidebar.caption(f"readout sites: layer `{attached[key]}`")
layers = [*model.areas, *(l for l in model.layers if l not in model.areas.values() and l != "input")]
with st.sidebar:
    layer = st.selectbox("layer or area", layers, index=layers.index("IT") if "IT" in layers else 0)
    kind = st.selectbox("objective", list(KINDS))
    size = model.input_size or 224
    with shown_errors(), torch.no_grad():
        shape = tuple(model.activations(torch.zeros(1, 3, size, size, device=model.device), layer)[layer].shape[1:])
    c = y = x = 0
    if "{c}" in (KINDS[kind] or ""):
        c = st.number_input(f"channel (0–{shape[0] - 1})", 0, shape[0] - 1, min(12, shape[0] - 1))
    if "{y}" in (KINDS[kind] or "") and len(shape) == 3:
        y = st.number_input("row", 0, shape[1] - 1, shape[1] // 2)
        x = st.number_input("column", 0, shape[2] - 1, shape[2] // 2)
    written = st.text_input("objective", f"stretch({layer}:0) + 0.1*diversity({layer})") \
        if kind == "written objective" else None
    param = st.selectbox("parametrization", ["fourier", "pixels", "blurred"])
    steps = st.slider("steps", 8, 512, 128, step=8)
    n = st.slider("images", 1, 4, 1)
    seed = st.number_input("seed", 0, 10**6, 0)

if kind == "match an image's response":
    target_image, _ = pick_image(model, "synth-match")
    with torch.no_grad():
        target = model.activations(target_image.to(model.device), layer)[layer][0]
    objective = Match(layer, target)
    st.image(as_uint8(target_image[0]), caption="image whose response is matched", width=160)
else:
    with shown_errors():
        objective = parse(written if written is not None else KINDS[kind].format(layer=layer, c=c, y=y, x=x))
st.write(f"objective: `{objective}` on **{model.name}** · {param} · {steps} steps · seed {seed}")

go, stop = st.columns([1, 8])
if stop.button("Stop", key="synth-stop", help="interrupts a running synthesis (any other change of input does too)"):
    st.warning("Stopped: the synthesis was interrupted and nothing was kept.")
if go.button("Synthesize", type="primary", key="synth-go"):
    bar, live, chart = st.progress(0.0, "starting"), st.empty(), st.empty()
    trace: list[float] = []

    def watch(t, images, scores):
        trace.append(float(scores.mean()))
        bar.progress((t + 1) / steps, f"step {t + 1}/{steps} · score {trace[-1]:.3g}")
        if t % 8 == 0 or t == steps - 1:
            live.image([as_uint8(im) for im in images], width=160)
            chart.line_chart({"mean score": trace}, height=160)

    with shown_errors():
        result = synth.synthesize(model, objective, n=n, param=param, steps=steps, seed=int(seed), watch=watch,
                                  progress=False)
    st.session_state["synth-result"] = (model.name, objective, result)
    live.empty()
    bar.empty()
    chart.empty()

if "synth-result" in st.session_state:
    name, done, result = st.session_state["synth-result"]
    st.subheader(f"{done} on {name}")
    cols = st.columns(4)
    for i, col in zip(range(len(result)), cols):
        col.image(as_uint8(result.images[i]), caption=f"score {float(result.scores[i]):.3g}", width=256)
        with col:
            download(result.images[i], result.metadata, f"{name}_{i}", f"synth-dl-{i}")
    if name == model.name:
        images, _ = get_images(200, 0, "mixed", None, model.input_size or 64)
        resolved = done.resolve(model)
        with torch.no_grad():
            natural = resolved(model.activations(synth.world.data.to_tensor(images, model.device),
                                                 resolved.layers)).cpu().numpy()
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 2.8))
        a.plot(result.history.numpy())
        a.set(xlabel="step", ylabel="score", title="score per step")
        a.axhline(float(natural.max()), color="k", ls="--", lw=1, label="natural max")
        b.hist(natural, bins=30, color="0.6", label=f"{len(natural)} embedded test images")
        b.axvline(float(natural.max()), color="k", ls="--", lw=1, label="natural max")
        for s in result.scores.numpy():
            b.axvline(float(s), color="tab:red", lw=2)
        b.set(xlabel="score", title="synthesized (red) against natural images")
        b.legend(fontsize=7, frameon=False)
        st.image(figure_png(fig))
        ratio = float(result.scores.max()) / max(float(np.abs(natural).max()), 1e-9)
        st.caption(f"best synthesized score {float(result.scores.max()):.3g}, natural maximum "
                   f"{float(natural.max()):.3g} ({ratio:.1f}×).")
