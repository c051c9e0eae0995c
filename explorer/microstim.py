"""Micro-stimulation: a topographic model's sheet coloured by face selectivity; stimulate a site, see the spread,
the units it drives and the shift in face / non-face choices (Afraz et al. 2006)."""
import math

import matplotlib
import numpy as np
import streamlit as st
import torch

import microstim as topo
from explorer.common import figure_png, get_model, shown_errors
from synth.world.data import localizer, to_tensor
from synth.zoo.models import embedded_models

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@st.cache_data(show_spinner="measuring the face localizer…")
def face_map(name: str, layer: str) -> np.ndarray:
    """Faces-vs-objects t of the sheet's units (cached per model and layer)."""
    return topo.localizer_maps(get_model(name), layer, 100)["faces_vs_objects"].numpy()


@st.cache_data(show_spinner="rendering degraded stimuli…")
def stimuli(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Faces and non-face objects (medium variation), n of each, as uint8 arrays."""
    loc = localizer(n)
    return loc["faces"].images, loc["objects"].images


def strongest_site(sheet, t: torch.Tensor) -> tuple[float, float]:
    """Where a first stimulation should go: the centre of the face patch with the highest peak, or, where that
    centre falls outside the patch (a crescent), the patch's most face-selective unit; the sheet's centre when it
    has no patch."""
    found, threshold = topo.face_patches(sheet, t)
    if not found:
        return sheet.size_mm / 2, sheet.size_mm / 2
    patch = max(found, key=lambda p: p["peak"])
    centre = torch.tensor(patch["center_mm"])
    if topo.electrode_selectivity(sheet, t, centre, topo.spread_mm(50) / 2) > threshold:
        x, y = patch["center_mm"]
    else:
        near = sheet.squared_distance(centre) <= patch["area_mm2"] / math.pi
        x, y = sheet.positions[torch.where(near, t.flatten(), -math.inf).argmax()].tolist()
    return round(float(x), 1), round(float(y), 1)


st.header("Micro-stimulation")
topographic = [n for n, c in embedded_models().items() if c.get("topography")]
if not topographic:
    st.error("No topographic model ships here: train one with `phosphene train toy-topo`.")
    st.stop()
with st.sidebar:
    name = st.selectbox("topographic model", topographic)
    model = get_model(name)
    areas = [a for a, l in model.areas.items() if l in model.sheets]
    layer = st.selectbox("sheet", areas, index=areas.index("IT") if "IT" in areas else 0)
    sheet = topo.sheet_of(model, layer)
    t = torch.from_numpy(face_map(name, layer))
    x0, y0 = strongest_site(sheet, t)
    x = st.slider("site x (mm)", 0.0, sheet.size_mm, x0, 0.1, help="starts at the strongest face patch")
    y = st.slider("site y (mm)", 0.0, sheet.size_mm, y0, 0.1)
    current = st.slider("current (µA)", 10, 400, 50, 5)
    rate = st.slider("pulse rate (Hz)", 25, 400, 200, 25)
    n = st.slider("faces and objects per signal level", 8, 64, 24, 8)

with shown_errors():
    stim = topo.microstimulation(sheet, (x, y), float(current), float(rate))
lam = topo.spread_mm(current)
gain = stim.value.flatten()
found, threshold = topo.face_patches(sheet, t)
recorded = topo.electrode_selectivity(sheet, t, torch.tensor([x, y]), lam / 2)

fig, (a, b) = plt.subplots(1, 2, figsize=(9.5, 4))
lim = float(t.abs().max())
dots = a.scatter(sheet.positions[:, 0], sheet.positions[:, 1], c=t.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim,
                 s=float(np.clip(4000 / len(sheet), 2, 60)))
topo.outline_patches(a, sheet, t, threshold, lw=1)
a.add_patch(plt.Circle((x, y), lam, fill=False, color="gold", lw=2))
a.plot([x], [y], "k*", ms=12)
fig.colorbar(dots, ax=a, label="faces vs objects (t)")
a.set(xlim=(0, sheet.size_mm), ylim=(0, sheet.size_mm), aspect="equal", xlabel="mm", ylabel="mm",
      title=f"{name} {layer}: {len(found)} face patches")
half = max(1.0, 5 * lam)  # the neighbourhood of the site, where the spread is seen
near = ((sheet.positions - torch.tensor([x, y])).abs() <= half).all(1)
g = b.scatter(sheet.positions[near, 0], sheet.positions[near, 1], c=gain[near].numpy(), cmap="Reds", vmin=1,
              s=float(np.clip(40000 / max(1, len(sheet)), 8, 120)), edgecolors="0.6", linewidths=0.3)
b.add_patch(plt.Circle((x, y), lam, fill=False, color="gold", lw=2))
fig.colorbar(g, ax=b, label="gain")
b.set(xlim=(x - half, x + half), ylim=(y - half, y + half), aspect="equal", xlabel="mm",
      title=f"{current} µA, {rate} Hz: λ = {lam:.2f} mm (gold)")
st.image(figure_png(fig))
st.write(f"Site ({x:.1f}, {y:.1f}) mm: recorded face selectivity t = {recorded:.1f} (units within {lam / 2:.2f} mm); "
         f"{int((gain > 2).sum())} units more than doubled, {int((gain > 1.1).sum())} raised by over 10 %.")

if st.button("Measure the shift in face choices", type="primary"):
    faces, objects = (to_tensor(v) for v in stimuli(n))
    with st.spinner("psychometric curves with and without stimulation…"):
        without = topo.psychometric(model, faces, objects)
        stimulated = topo.psychometric(model.intervene(stim), faces, objects)
    st.session_state["microstim"] = (without, stimulated, (x, y, current, rate))
if "microstim" in st.session_state:
    without, stimulated, (sx, sy, si, sr) = st.session_state["microstim"]
    shift = float(np.mean(stimulated["face_fraction"]) - np.mean(without["face_fraction"]))
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(without["signal"], 100 * np.asarray(without["face_fraction"]), "o-", color="k", label="no stimulation")
    ax.plot(stimulated["signal"], 100 * np.asarray(stimulated["face_fraction"]), "o-", color="tab:red",
            label=f"{si} µA at ({sx:.1f}, {sy:.1f}) mm")
    ax.set(xlabel="visual signal (− objects, + faces)", ylabel="face choices (%)", ylim=(-3, 103))
    ax.legend(frameon=False, fontsize=8)
    st.image(figure_png(fig))
    st.metric("shift in face choices", f"{100 * shift:+.1f} %")
st.caption("The whole experiment over 86 sites, with the shuffled control: `phosphene microstim afraz --model "
           f"{name} --out DIR`.")
