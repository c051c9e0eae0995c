"""Micro-stimulation: a topographic model's sheet coloured by face selectivity; stimulate a site, see the spread,
the units it drives and the shift in face / non-face choices (Afraz et al. 2006)."""
import math

import matplotlib
import numpy as np
import streamlit as st
import torch

import microstim as topo
from explorer.common import figure_png, get_model, shown_errors
from microstim.maps import PATCH_RESOLUTION_MM, PATCH_SMOOTH_MM
from synth.world.data import localizer, to_tensor
from synth.zoo.catalog import TOPOGRAPHIC
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
    """Where a first stimulation should go: in the face patch with the highest peak, the unit where an electrode
    reads the most face selectivity (the mean t within half of 50 µA's spread, as the page reports it); the
    sheet's centre when it has no patch."""
    found, _ = topo.face_patches(sheet, t)
    if not found:
        return sheet.size_mm / 2, sheet.size_mm / 2
    patch = max(found, key=lambda p: p["peak"])
    inside = sheet.neighbourhood(torch.tensor(patch["center_mm"]), math.sqrt(patch["area_mm2"] / math.pi))
    if len(inside) == 0:
        inside = t.flatten().argmax().view(1)
    candidates = sheet.positions[inside[torch.randperm(len(inside), generator=torch.Generator().manual_seed(0))[:500]]]
    reading = [topo.electrode_selectivity(sheet, t, c, topo.spread_mm(50) / 2) for c in candidates]
    x, y = candidates[int(np.argmax(reading))].tolist()
    return round(float(x), 1), round(float(y), 1)


def take_click(size_mm: float) -> None:
    """Move the site's sliders to where the map was clicked: the chart's selection, read at the start of the rerun
    the click caused (before the sliders exist), applied once per click."""
    event = st.session_state.get("sheet_map") or {}
    points = (event.get("selection") or {}).get("site") or []
    if points and points[0] != st.session_state.get("applied_click"):
        st.session_state["applied_click"] = points[0]
        for axis in ("x", "y"):
            st.session_state[f"site_{axis}"] = float(np.clip(round(float(points[0][f"{axis}_mm"]), 1), 0, size_mm))


def sheet_chart(sheet, t: torch.Tensor, threshold: float, site: tuple[float, float], lam: float, title: str):
    """The sheet as a face map that reads as patches: the faces-vs-objects t smoothed as the localizer smooths it
    (σ PATCH_SMOOTH_MM), the patches outlined, units drawn over it (a sample of 4,000 where more), the site
    and its spread λ in gold.  Clicking a point of the map picks the site there."""
    import altair as alt
    import pandas as pd
    from skimage.measure import find_contours

    img = topo.sheet_image(sheet, t, PATCH_RESOLUTION_MM, PATCH_SMOOTH_MM)
    px = sheet.size_mm / img.shape[0]
    rows, cols = np.indices(img.shape)
    pixels = pd.DataFrame({"x_mm": ((cols + 0.5) * px).ravel(), "y_mm": ((rows + 0.5) * px).ravel(),
                           "x0": (cols * px).ravel(), "x1": ((cols + 1) * px).ravel(), "y0": (rows * px).ravel(),
                           "y1": ((rows + 1) * px).ravel(), "t": img.ravel()})
    lim = float(np.abs(img).max()) or 1.0
    scale = alt.Scale(scheme="redblue", reverse=True, domain=[-lim, lim])
    axis = {"x": alt.X("x0:Q", title="mm", scale=alt.Scale(domain=[0, sheet.size_mm], nice=False)),
            "y": alt.Y("y0:Q", title="mm", scale=alt.Scale(domain=[0, sheet.size_mm], nice=False))}
    pick = alt.selection_point(name="site", on="click", fields=["x_mm", "y_mm"], nearest=True, clear=False)
    heat = alt.Chart(pixels).mark_rect().encode(
        **axis, x2="x1:Q", y2="y1:Q", color=alt.Color("t:Q", scale=scale, title="faces vs objects (t, smoothed)"),
        tooltip=[alt.Tooltip("x_mm:Q", format=".1f"), alt.Tooltip("y_mm:Q", format=".1f"),
                 alt.Tooltip("t:Q", format=".2f")]).add_params(pick)
    keep = torch.randperm(len(sheet), generator=torch.Generator().manual_seed(0))[:4000].sort().values
    units = pd.DataFrame({"x0": sheet.positions[keep, 0].numpy(), "y0": sheet.positions[keep, 1].numpy()})
    dots = alt.Chart(units).mark_circle(size=3, color="black", opacity=0.35).encode(**axis)
    lines = []
    for k, c in enumerate(find_contours(img, threshold) if img.max() > threshold else []):
        lines.append(pd.DataFrame({"x0": (c[:, 1] + 0.5) * px, "y0": (c[:, 0] + 0.5) * px, "patch": k,
                                   "order": np.arange(len(c))}))
    layers = [heat, dots]
    if lines:
        layers.append(alt.Chart(pd.concat(lines)).mark_line(color="black", strokeWidth=1.2).encode(
            **axis, detail="patch:N", order="order:Q"))
    angle = np.linspace(0, 2 * np.pi, 60)
    ring = pd.DataFrame({"x0": site[0] + lam * np.cos(angle), "y0": site[1] + lam * np.sin(angle),
                         "order": np.arange(60)})
    layers.append(alt.Chart(ring).mark_line(color="gold", strokeWidth=2.5).encode(**axis, order="order:Q"))
    layers.append(alt.Chart(pd.DataFrame({"x0": [site[0]], "y0": [site[1]]})).mark_point(
        shape="cross", size=160, color="black", filled=True).encode(**axis))
    return alt.layer(*layers).properties(width=420, height=420, title=title)


st.header("Micro-stimulation")
topographic = [n for n, c in embedded_models().items() if c.get("topography")]
if not topographic:
    st.error(f"No topographic model ships here: train one with `phosphene train {TOPOGRAPHIC}`.")
    st.stop()
with st.sidebar:
    name = st.selectbox("topographic model", topographic,
                        index=topographic.index(TOPOGRAPHIC) if TOPOGRAPHIC in topographic else 0)
    model = get_model(name)
    areas = [a for a, l in model.areas.items() if l in model.sheets]
    layer = st.selectbox("sheet", areas, index=areas.index("IT") if "IT" in areas else 0)
    sheet = topo.sheet_of(model, layer)
    t = torch.from_numpy(face_map(name, layer))
    if st.session_state.get("site_sheet") != (name, layer):  # a new sheet: start at its strongest face patch
        st.session_state["site_sheet"] = (name, layer)
        st.session_state["site_x"], st.session_state["site_y"] = strongest_site(sheet, t)
    take_click(sheet.size_mm)
    x = st.slider("site x (mm)", 0.0, sheet.size_mm, step=0.1, key="site_x",
                  help="starts at the strongest face patch; click the map to move it")
    y = st.slider("site y (mm)", 0.0, sheet.size_mm, step=0.1, key="site_y")
    current = st.slider("current (µA)", 10, 400, 50, 5)
    rate = st.slider("pulse rate (Hz)", 25, 400, 200, 25)
    n = st.slider("faces and objects per signal level", 8, 64, 24, 8)

with shown_errors():
    stim = topo.microstimulation(sheet, (x, y), float(current), float(rate))
lam = topo.spread_mm(current)
gain = stim.value.flatten()
found, threshold = topo.face_patches(sheet, t)
recorded = topo.electrode_selectivity(sheet, t, torch.tensor([x, y]), lam / 2)

left, right = st.columns([1.15, 1])
with left:
    st.altair_chart(sheet_chart(sheet, t, threshold, (x, y), lam, f"{name} {layer}: {len(found)} face patches "
                                f"(click to place the electrode)"), on_select="rerun", key="sheet_map")
fig, b = plt.subplots(figsize=(4.6, 4))
half = max(1.0, 5 * lam)  # the neighbourhood of the site, where the spread is seen
near = ((sheet.positions - torch.tensor([x, y])).abs() <= half).all(1)
spacing_pt = 0.7 * sheet.size_mm / math.sqrt(len(sheet)) * 4 * 72 / (2 * half)  # a dot 0.7 units' spacing wide
g = b.scatter(sheet.positions[near, 0], sheet.positions[near, 1], c=gain[near].numpy(), cmap="Reds", vmin=1,
              s=float(np.clip(spacing_pt ** 2, 4, 120)), edgecolors="0.6", linewidths=0.3)
b.add_patch(plt.Circle((x, y), lam, fill=False, color="gold", lw=2))
fig.colorbar(g, ax=b, label="gain")
b.set(xlim=(x - half, x + half), ylim=(y - half, y + half), aspect="equal", xlabel="mm",
      title=f"{current} µA, {rate} Hz: λ = {lam:.2f} mm (gold)")
with right:
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
