"""Loop: a closed-loop experiment folder, round by round: the readout's r, synthesized against natural per site,
and the images each round showed.  It reads the folder only; ``phosphene loop`` writes it."""
from pathlib import Path

import matplotlib
import streamlit as st

from explorer.common import as_uint8, figure_png, shown_errors
from synth.errors import PhospheneError
from synth.files import read_png
from synth.neuro.loop import Experiment

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

st.header("Closed loop")
folder = st.text_input("experiment folder (where experiment.json is)", "runs/loop",
                       help="`phosphene loop init DIR ...` creates one; `phosphene loop run DIR --subject simulated` "
                            "drives it against a simulated animal")
try:
    exp = Experiment(folder)
    status = exp.status()
except PhospheneError as e:
    st.info(f"{e}")
    st.stop()
c = exp.config
st.caption(f"{c['model']}:{c['layer']} readout of {c['sites']} sites · goals {', '.join(c['goals'])} · "
           f"{c['budget']} trials per round ({c['first_budget']} in round 0), {c['repeats']} repeats · natural images "
           f"chosen {c['select']} · seed {c['seed']}")
if not status:
    st.info(f"No round yet: run `phosphene loop next {folder}`.")
    st.stop()
fitted = [s for s in status if s["state"] == "fitted"]
table = [{"round": s["round"], "state": s["state"], "trials": s["trials"],
          **{f"{k} images": v for k, v in s["counts"].items()},
          **({"held-out r": round(s["median_r"], 3),
              "ceiling": round(s["median_ceiling"], 3) if s.get("median_ceiling") is not None else None,
              **{f"{g} ratio": round(v["median_ratio"], 2) for g, v in s["goals"].items()}}
             if s["state"] == "fitted" else {})} for s in status]
st.dataframe(table, hide_index=True)
if fitted:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    axes[0].plot([s["round"] for s in fitted], [s["median_r"] for s in fitted], "o-", label="held-out r")
    if fitted[0].get("median_ceiling") is not None:
        axes[0].plot([s["round"] for s in fitted], [s["median_ceiling"] for s in fitted], "k--", label="ceiling")
    axes[0].set(xlabel="round", ylabel="median over sites", title="readout (cross-validated)")
    axes[0].legend(fontsize=8)
    for goal in c["goals"]:
        rows = [s for s in fitted if goal in s["goals"]]
        axes[1].plot([s["round"] for s in rows], [s["goals"][goal]["median_ratio"] for s in rows], "o-", label=goal)
    axes[1].axhline(1, color="grey", lw=0.8)
    axes[1].set(xlabel="round shown", ylabel="median ratio", title="synthesized / natural best (same trials)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    st.image(figure_png(fig))
    plt.close(fig)
shown = [s for s in fitted if s["goals"]]
if shown:
    pick = st.select_slider("round", [s["round"] for s in shown], value=shown[-1]["round"])
    goal = st.radio("goal", list(shown[0]["goals"]), horizontal=True)
    s = next(s for s in shown if s["round"] == pick)
    g = s["goals"].get(goal)
    if g:
        fig, ax = plt.subplots(figsize=(4, 3.6))
        ax.scatter(g["natural_best"], g["test"], s=16)
        top = max(max(g["test"]), max(g["natural_best"])) * 1.05
        ax.plot([0, top], [0, top], color="grey", lw=0.8)
        ax.set(xlabel="natural best (recorded units)", ylabel=f"{goal} image", title=f"round {pick}, per site")
        fig.tight_layout()
        st.image(figure_png(fig), width=420)
        plt.close(fig)
manifests = exp.manifests()
which = st.selectbox("images of round", [m["round"] for m in manifests], index=len(manifests) - 1)
m = manifests[which]
role = st.radio("role", [r for r in ("test", "reference", "fit", "blank") if m["counts"].get(r)], horizontal=True)
rows = [r for r in m["images"] if r["role"] == role][:48]
base = Path(folder) / f"round-{which:02d}"
for start in range(0, len(rows), 8):
    for col, row in zip(st.columns(8), rows[start:start + 8]):
        with col, shown_errors():
            image, _ = read_png(base / row["file"])
            caption = row.get("site") or ", ".join(row.get("best_for", [])) or row["image_id"]
            col.image(as_uint8(image), caption=f"{row.get('goal', role)} · {caption}", width="stretch")
if m["counts"].get(role, 0) > len(rows):
    st.caption(f"the first {len(rows)} of {m['counts'][role]}")
