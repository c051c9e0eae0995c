"""Attack: white-box PGD on a standard and a robust model side by side, with the accuracy-against-ε curve."""
import math

import matplotlib
import streamlit as st
import torch

import attacks
import synth
from attacks.catalogue import CATALOGUE, DECISION_BASED
from attacks.common import read_budgets
from attacks.result import eps_text
from explorer.common import as_uint8, download, figure_png, pick_image, pick_model, shown_errors, test_batch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

st.header("Attack")
with st.sidebar:
    left = pick_model("attack-a", "model", "toy-standard")
    right = pick_model("attack-b", "compare with", "toy-robust")
    choices = [n for n in CATALOGUE if n not in DECISION_BASED]
    attack = st.selectbox("attack", choices, format_func=lambda n: f"{n}: {CATALOGUE[n].doc.split(' (')[0]}",
                          help="the attack catalogue: fixed-budget attacks run at each ε; minimal-norm ones (CW, "
                               "DeepFool, FMN, DDN) find each image's smallest perturbation, and their curve is "
                               "read off at the ε given.  The decision-based ones (boundary, HopSkipJump) take "
                               "minutes per batch: `phosphene attack --attack boundary`")
    norm = CATALOGUE[attack].norm
    minimal = CATALOGUE[attack].minimal
    typed = st.text_input("ε (a budget, or a comma-separated sweep)",
                             "1/255,2/255,4/255,8/255" if norm == "linf" else "0.25,0.5,1,2")
    native = CATALOGUE[attack].build is None
    steps = st.slider("steps", 5, 100, 20, disabled=not native, help="native PGD only")
    targeted = st.checkbox("targeted")
    target = st.selectbox("target class", left.classes) if targeted else None
    amplify = st.slider("perturbation shown ×", 1, 50, 10)
    curve_n = st.select_slider("accuracy curve over test images", [0, 8, 16, 32, 64], 16,
                               help="the same attack on a balanced set of embedded test images (0: the image alone)")

image, category = pick_image(left, "attack")
label = category if category in left.classes else None
st.image(as_uint8(image[0]), caption=f"original{f' ({category})' if category else ''}", width=160)

if st.button("Attack", type="primary"):
    results = {}
    with shown_errors():
        values, notes = read_budgets(norm, typed)  # read as everywhere else: a bare L-inf 4 is 4/255
        st.caption("; ".join(notes))
        grid = torch.tensor(values)
        budget = None if minimal else values
        for m in (left, right):
            with st.spinner(f"{attack} on {m.name}…"):
                results[m.name] = attacks.run(attack, m, image.to(m.device), label, budget, target=target,
                                              progress=False, **({"steps": steps} if native else {}))
        curves = {}
        if curve_n:
            batch = test_batch(curve_n, left.input_size or 64)
            x, y = synth.world.data.to_tensor(batch[0]), [synth.CATEGORIES[i] for i in batch[1]]
            for m in (left, right):
                with st.spinner(f"{attack} on {m.name}, {curve_n} test images…"):
                    r = attacks.run(attack, m, x.to(m.device), y, budget, target=target, progress=False,
                                    **({"steps": steps} if native else {}))
                curves[m.name] = (grid, r.curve(grid)) if minimal else (r.eps, r.accuracy)
    st.session_state["attack-results"] = results
    st.session_state["attack-curves"] = (curve_n, curves)
    st.session_state["attack-grid"] = grid

for name, r in st.session_state.get("attack-results", {}).items():
    st.subheader(name)
    k = len(r.eps) - 1
    clean, adv = r.images[0], r.adversarial[k, 0]
    pert = ((adv - clean) * amplify + 0.5).clamp(0, 1)
    a, b, c, _ = st.columns([1, 1, 1, 1.5])
    a.image(as_uint8(clean), caption=f"clean: {r.classes[int(r.clean_predictions[0])]}", width="stretch")
    budget_text = f"minimal {norm} norm {eps_text(float(r.distance[k, 0]), norm, exact=False)}" \
        if not math.isfinite(float(r.eps[k])) else f"ε {eps_text(float(r.eps[k]), norm)}"
    b.image(as_uint8(adv), caption=f"{budget_text}: {r.classes[int(r.predictions[k, 0])]} "
                                   f"({'broken' if bool(r.success[k, 0]) else 'held'})", width="stretch")
    c.image(as_uint8(pert), caption=f"perturbation ×{amplify}", width="stretch")
    st.dataframe([{"ε": eps_text(float(e), norm) if math.isfinite(float(e)) else "minimal",
                   f"{norm} norm used": eps_text(float(d), norm, exact=False), "prediction": r.classes[int(p)],
                   "broken": bool(s)}
                  for e, p, s, d in zip(r.eps, r.predictions[:, 0], r.success[:, 0], r.distance[:, 0])],
                 hide_index=True)
    for check in r.checks.values():  # a gradient-masking check that failed: said here, not only on the console
        if isinstance(check, dict) and check.get("flag"):
            st.warning(f"Gradient-masking check: {check['message']}")
    with b:
        download(adv, {**r.metadata, "eps": float(r.eps[k])}, f"{name}_adversarial", f"attack-dl-{name}")
results = st.session_state.get("attack-results", {})
if results:
    n_curve, curves = st.session_state.get("attack-curves", (0, {}))
    if not curves:
        grid = st.session_state["attack-grid"]
        curves = {name: (grid, r.curve(grid)) if not math.isfinite(float(r.eps[-1])) else (r.eps, r.accuracy)
                  for name, r in results.items()}
    fig, ax = plt.subplots(figsize=(5, 2.8))
    unit = 255 if norm == "linf" else 1  # L-inf budgets in the unit they are typed in: n/255
    for name, (eps, acc) in curves.items():
        ax.plot(eps.numpy() * unit, acc.numpy(), "o-", label=name)
    ax.set(xlabel="ε (L-inf, n/255)" if norm == "linf" else "ε (L2)", ylabel="accuracy", ylim=(-0.05, 1.05),
           title=f"accuracy against ε ({n_curve} test images)" if n_curve else "accuracy against ε (this image)")
    ax.legend(frameon=False)
    st.image(figure_png(fig))
