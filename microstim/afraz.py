"""Afraz, Kiani & Esteky (2006) in silico: stimulating face-selective sites biases face choices."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from synth.errors import ConfigError
from synth.zoo.sheets import Sheet, sheet_of

from .behavior import degrade, face_choices, face_verdicts, psychometric
from .maps import face_patches, localizer_maps, plot_sheets
from .stimulation import SPREAD_SLOPE_MM_PER_UA, SPREAD_THRESHOLD_UA, microstimulation, spread_mm

# ------------------------------------------------------------------------------------------ Afraz et al. 2006
AFRAZ_SITES, AFRAZ_CURRENT_UA, AFRAZ_RATE_HZ = 86, 50.0, 200.0
AFRAZ_SIGNALS = (0.0, 0.15, 0.3, 0.45)  # visual-signal levels around the face / non-face threshold


def current_for_spread(spread: float) -> float:
    """The current (µA) whose spread (``spread_mm``) is ``spread`` mm: the inverse of λ(I)."""
    if not spread > 0:
        raise ConfigError(f"a spread is a length > 0 mm, got {spread}")
    return spread / SPREAD_SLOPE_MM_PER_UA + SPREAD_THRESHOLD_UA


def electrode_selectivity(sheet: Sheet, values: torch.Tensor, center_mm: torch.Tensor, radius_mm: float) -> float:
    """A site's selectivity as an electrode reads it: the mean value of the units within ``radius_mm`` of the
    tip, or of the nearest unit where none is that close."""
    d2 = sheet.squared_distance(torch.as_tensor(center_mm, dtype=sheet.positions.dtype))
    inside = d2 <= radius_mm ** 2
    v = values.flatten().float()
    return float(v[inside].mean()) if inside.any() else float(v[d2.argmin()])


def _stimulus_set(n: int, signals: tuple[float, ...], seed: int, workers: int) -> torch.Tensor:
    """Afraz's stimuli: ``n`` faces and ``n`` non-face objects (medium variation, no clutter) at each visual-signal
    level, degraded with phase-scrambled noise, all levels in one batch."""
    from synth.world.data import localizer

    loc = localizer(n, workers=workers)
    faces, objects = loc["faces"].tensor(), loc["objects"].tensor()
    return torch.cat([degrade(b, s, seed + i) for i, s in enumerate(signals) for b in (faces, objects)])


def _choice_shifts(model, sheet: Sheet, sites: torch.Tensor, currents: list[float], rate_hz: float,
                   stimuli: torch.Tensor, done: list, save, bar, batch: int) -> np.ndarray:
    """sites × currents: the change in the fraction of 'face' choices over ``stimuli`` under stimulation.  ``done``
    holds each site's row once measured (None before): a site already there is not stimulated again, and ``save``
    runs after each batch of ``batch`` new ones, so that a killed run resumes where it stopped.  Where the model
    can be cut at the sheet's layer (``ProbeModel.head``), the stimuli's response there is computed once and each
    batch of stimulations runs only the layers past it, every site and current in one pass."""
    base = face_choices(model, stimuli).float().mean()
    head, clean = model.head(sheet.layer), None
    face = model.classes.index("faces")
    todo = [i for i, row in enumerate(done) if row is None]
    bar.update(len(done) - len(todo))
    for start in range(0, len(todo), batch):
        group = todo[start:start + batch]
        gains = [microstimulation(sheet, tuple(sites[i].tolist()), current, rate_hz) for i in group
                 for current in currents]
        if head is None:
            fractions = torch.stack([face_choices(model.intervene(g), stimuli).float().mean() for g in gains])
        else:
            with torch.no_grad():
                if clean is None:
                    clean = model.activations(stimuli.to(model.device), sheet.layer)[sheet.layer]
                logits = head(torch.cat([g.apply(clean) for g in gains])).view(len(gains), 1, len(stimuli), -1)
            fractions = face_verdicts(logits, face).float().mean(-1)
        for k, i in enumerate(group):
            done[i] = [float(f - base) for f in fractions[k * len(currents):(k + 1) * len(currents)]]
        save()
        bar.update(len(group))
    return np.asarray(done, dtype=float)


def afraz(model, layer: str = "IT", sites: int = AFRAZ_SITES, current_ua: float = AFRAZ_CURRENT_UA,
          rate_hz: float = AFRAZ_RATE_HZ, spreads_mm: tuple[float, ...] = (0.5, 1.0, 2.0),
          record_fraction: float = 0.5, n: int = 32, signals: tuple[float, ...] = AFRAZ_SIGNALS, seed: int = 0,
          workers: int = 1, progress: bool = True, face_map: torch.Tensor | None = None,
          partial: str | os.PathLike | None = None, batch: int = 4) -> dict:
    """Afraz, Kiani & Esteky (2006) in silico: stimulate ``sites`` sites of a topographic layer (each at a unit
    drawn at random) while the model judges face / non-face stimuli at low visual signal, and correlate each
    site's shift in face choices with its face selectivity (faces-vs-objects t) as an electrode records it, over
    a radius of ``record_fraction`` × the stimulation's spread.  The same runs on the position-shuffled model are
    the control.  Reported at ``current_ua`` (Afraz: 50 µA, 200 Hz) and for each spread of ``spreads_mm`` (its
    current from ``current_for_spread``): Pearson's r and p for the topographic and the shuffled layout, the
    one-sided p that the first exceeds the second (Fisher's z), and the sites' data.  ``face_map``: the units'
    faces-vs-objects t where already measured (``localizer_maps``); ``partial``: a JSON file that holds each site's
    result as it finishes (written atomically), read back by a run with the same settings, so that a killed run
    goes on where it stopped; it is removed once the report is complete.  ``batch``: sites stimulated in one pass
    (each at every current), saved together."""
    import json

    from scipy import stats
    from tqdm.auto import tqdm

    from synth.files import write_text

    sheet = sheet_of(model, layer)
    if not 3 <= sites <= len(sheet):
        raise ConfigError(f"stimulate between 3 and {len(sheet)} sites (one per unit at most), got {sites}")
    if batch < 1:
        raise ConfigError(f"stimulate at least 1 site per pass, got batch={batch}")
    if not 0 < record_fraction < 1:
        raise ConfigError(f"the recording radius is a fraction in (0, 1) of the spread, got {record_fraction}")
    lam = spread_mm(current_ua)
    spreads = sorted({round(lam, 4), *(float(s) for s in spreads_mm)})
    currents = [current_ua if s == round(lam, 4) else current_for_spread(s) for s in spreads]
    t = localizer_maps(model, sheet.layer, 100, "t", workers)["faces_vs_objects"] if face_map is None else face_map
    stimuli = _stimulus_set(n, tuple(signals), seed, workers)
    gen = torch.Generator().manual_seed(seed)
    units = torch.randperm(len(sheet), generator=gen)[:sites]
    report = {"model": model.name, "layer": sheet.layer, "sheet_mm": sheet.size_mm, "units": len(sheet),
              "sites": sites, "current_ua": current_ua, "rate_hz": rate_hz, "spread_mm": lam,
              "record_fraction": record_fraction, "stimuli": {"per_class_per_level": n, "signals": list(signals)},
              "seed": seed, "curve": []}
    key = {**{k: report[k] for k in ("model", "layer", "units", "sites", "current_ua", "rate_hz", "stimuli", "seed")},
           "weights_sha256": model.weights_digest(), "currents": currents}
    state = json.loads(Path(partial).read_text()) if partial is not None and Path(partial).is_file() else {}
    if state.get("key") != json.loads(json.dumps(key)):  # another run's sites, or none: start afresh
        state = {"key": key, "topographic": [None] * sites, "shuffled": [None] * sites}

    def save() -> None:
        if partial is not None:
            write_text(partial, json.dumps(state))

    bar = tqdm(total=2 * sites, unit="site", disable=not progress,
               desc=f"afraz: {sites} sites × 2 layouts, {len(currents)} currents each")
    rows = {}
    for name, s in (("topographic", sheet), ("shuffled", sheet.shuffled(seed))):
        xy = s.positions[units]
        shifts = _choice_shifts(model, s, xy, currents, rate_hz, stimuli, state[name], save, bar, batch)
        for j, (spread, current) in enumerate(zip(spreads, currents)):
            sel = [electrode_selectivity(s, t, p, record_fraction * spread) for p in xy]
            r, p = stats.pearsonr(sel, shifts[:, j])
            row = {"spread_mm": spread, "current_ua": round(current, 2), "r": float(r), "p": float(p),
                   "mean_shift": float(shifts[:, j].mean())}
            if current == current_ua:
                report[name] = {**row, "selectivity": sel, "shift": shifts[:, j].tolist(),
                                "sites_mm": xy.tolist()}
            rows[name, spread] = row
    for spread in spreads:
        a, b = rows["topographic", spread], rows["shuffled", spread]
        report["curve"].append({"spread_mm": spread, "current_ua": a["current_ua"], "r": a["r"], "p": a["p"],
                                "r_shuffled": b["r"], "p_shuffled": b["p"], "difference": a["r"] - b["r"],
                                "difference_p": _fisher_p(a["r"], b["r"], sites),
                                "mean_shift": a["mean_shift"], "mean_shift_shuffled": b["mean_shift"]})
    report["difference"] = report["topographic"]["r"] - report["shuffled"]["r"]
    report["difference_p"] = _fisher_p(report["topographic"]["r"], report["shuffled"]["r"], sites)
    bar.close()
    if partial is not None:
        Path(partial).unlink(missing_ok=True)
    return report


def _fisher_p(r1: float, r2: float, n: int) -> float:
    """One-sided p that correlation r1 exceeds r2 (independent samples of n, Fisher's z)."""
    from scipy import stats

    z = (np.arctanh(np.clip(r1, -0.9999, 0.9999)) - np.arctanh(np.clip(r2, -0.9999, 0.9999))) / np.sqrt(2 / (n - 3))
    return float(stats.norm.sf(z))


def plot_afraz(report: dict, path: str | os.PathLike) -> str:
    """The Afraz figure: each site's shift in face choices against its face selectivity, for the model and the
    position-shuffled control (with r and p), and r against the stimulation's spread for both."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = report.get("psychometric")
    fig, axes = plt.subplots(1, 4 if curves else 3, figsize=(15.2 if curves else 11.5, 3.6))
    colors = {"topographic": "tab:red", "shuffled": "tab:gray"}
    for ax, name in zip(axes, ("topographic", "shuffled")):
        d = report[name]
        x, y = np.asarray(d["selectivity"]), 100 * np.asarray(d["shift"])
        ax.scatter(x, y, s=12, color=colors[name], alpha=0.8)
        slope, icpt = np.polyfit(x, y, 1)
        xs = np.linspace(x.min(), x.max(), 2)
        ax.plot(xs, slope * xs + icpt, color="k", lw=1)
        ax.axhline(0, color="k", lw=0.5, ls=":")
        title = report["model"] if name == "topographic" else "control: positions shuffled"
        ax.set(xlabel="site face selectivity (t, faces vs objects)", ylabel="shift in face choices (%)",
               title=f"{title}: r = {d['r']:.2f}, p = {d['p']:.1g}")
    ax = axes[2]
    spreads = [c["spread_mm"] for c in report["curve"]]
    for name, key in (("topographic", "r"), ("shuffled", "r_shuffled")):
        ax.plot(spreads, [c[key] for c in report["curve"]], "o-", color=colors[name], label=name)
    ax.axvline(report["spread_mm"], color="k", lw=0.5, ls=":")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="stimulation spread λ (mm)", ylabel="r (selectivity vs shift)", title="correlation against spread")
    ax.legend(frameon=False)
    if curves:
        ax = axes[3]
        ax.plot(curves["signal"], 100 * np.asarray(curves["without"]), "o-", color="k", label="no stimulation")
        ax.plot(curves["signal"], 100 * np.asarray(curves["with"]), "o-", color="tab:red", label="stimulated")
        x, y = curves["site_mm"]
        ax.set(xlabel="visual signal (− non-face objects, + faces)", ylabel="face choices (%)",
               title=f"site ({x:.1f}, {y:.1f}) mm, t = {curves['selectivity']:.1f}", ylim=(-3, 103))
        ax.legend(frameon=False)
    fig.suptitle(f"{report['model']} {report['layer']}: {report['sites']} sites, {report['current_ua']:g} µA "
                 f"(λ = {report['spread_mm']:.2f} mm), {report['rate_hz']:g} Hz", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


def _site_curves(model, sheet: Sheet, report: dict, workers: int) -> dict:
    """Psychometric curves (``psychometric``) without and with stimulation of the site that shifted face choices
    most, at the report's current and rate: Afraz et al.'s figure 2."""
    from synth.world.data import localizer

    i = int(np.argmax(report["topographic"]["shift"]))
    site = tuple(report["topographic"]["sites_mm"][i])
    loc = localizer(report["stimuli"]["per_class_per_level"], workers=workers)
    faces, objects = loc["faces"].tensor(), loc["objects"].tensor()
    without = psychometric(model, faces, objects, seed=report["seed"])
    stimulated = model.intervene(microstimulation(sheet, site, report["current_ua"], report["rate_hz"]))
    with_stim = psychometric(stimulated, faces, objects, seed=report["seed"])
    return {"site_mm": list(site), "selectivity": report["topographic"]["selectivity"][i],
            "signal": without["signal"], "without": without["face_fraction"], "with": with_stim["face_fraction"]}


def run_afraz(model, out: str | os.PathLike, layer: str = "IT", **settings) -> dict:
    """``afraz`` with its outputs written to ``out``: ``afraz.json`` (the report, with timing and versions),
    ``afraz.png`` (the plot) and ``face_map.png`` (the layer's faces-vs-objects map beside its shuffled control,
    patches outlined)."""
    import json
    import time

    from synth.files import write_text
    from synth.version import __version__

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sheet = sheet_of(model, layer)
    t = localizer_maps(model, layer, 100, "t", settings.get("workers", 1))["faces_vs_objects"]
    report = afraz(model, layer, face_map=t, partial=out / "afraz-sites.partial.json", **settings)
    report["psychometric"] = _site_curves(model, sheet, report, settings.get("workers", 1))
    report["seconds"] = round(time.time() - t0, 1)
    report["versions"] = {"phosphene": __version__, "torch": torch.__version__}
    control = sheet.shuffled(settings.get("seed", 0))
    found, threshold = face_patches(sheet, t)
    found_control, _ = face_patches(control, t, threshold)
    report["face_patches"] = {"topographic": len(found), "shuffled": len(found_control), "threshold_t": threshold,
                              "largest_mm2": [p["area_mm2"] for p in found[:3]],
                              "largest_shuffled_mm2": [p["area_mm2"] for p in found_control[:3]]}
    plot_sheets([(sheet, t, f"{model.name} {sheet.layer}: {len(found)} face patches", threshold),
                 (control, t, f"control, unit positions shuffled: {len(found_control)} face patches", threshold)],
                out / "face_map.png", label="faces vs objects (t)")
    plot_afraz(report, out / "afraz.png")
    write_text(out / "afraz.json", json.dumps(report, indent=1))
    return report
