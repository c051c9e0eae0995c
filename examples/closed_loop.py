"""Closed-loop experiments on a simulated monkey: does the loop beat one shot, and does choosing images help?

The animal is 20 IT sites of toy-robust (``control.Subject``: Poisson spike counts); the experimenter has
toy-standard and fits readouts from its V4.  Every run below gets the same trials in all:

- ``closed loop``: round 0 shows natural images; rounds 1-3 each show the images synthesized through the last
  readout (stretch and one-hot per site), each site's natural best again, a blank, and new natural images chosen
  at random; the readout is refit on everything after every round (``synth.neuro.loop.Experiment``);
- the same loop choosing its natural images where a committee of fold readouts disagrees ('uncertain') or
  farthest from everything recorded ('diverse');
- ``one shot``: round 0 gets the other runs' natural trials all at once, then one round shows its synthesized
  images with the same tests.

Reported per round: the readout's held-out r, on 400 images no run ever showed, against the subject's expected rates
(a simulation can know them), and its cross-validated r on the rounds so far; per goal, the median ratio of each
site's synthesized image to its natural best, both measured on the same round's fresh trials.

Run:  .venv/bin/python examples/closed_loop.py [--out runs/closed_loop] [--budget 1200]
Writes examples/results/closed_loop.{json,md,png}.
"""
import argparse
import json
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import synth  # noqa: E402
from synth.files import read_png  # noqa: E402
from synth.neuro.loop import Experiment, held_out_r  # noqa: E402
from synth.neuro.readouts import Responses, fit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def run_one(name: str, folder: Path, args: argparse.Namespace, held_out: torch.Tensor, **design) -> dict:
    """Run one design to the end and measure every round's readout on the held-out images."""
    rounds = design.pop("rounds", args.rounds)
    if folder.exists():
        shutil.rmtree(folder)
    exp = Experiment.create(folder, "toy-standard", "V4", args.sites, goals=args.goals, repeats=args.repeats,
                            steps=args.steps, seed=args.seed, subject={"model": "toy-robust", "layer": "IT"},
                            **design)
    subject = exp.simulated_subject()
    t0 = time.perf_counter()
    status = exp.run(subject, rounds, progress=False)
    seconds = time.perf_counter() - t0
    for row in status:
        row["held_out_r"] = float(np.median(held_out_r(exp.readout(row["round"]), exp.model, subject, held_out)))
    line = "; ".join(f"round {s['round']}: held-out r {s['held_out_r']:.3f}" +
                     "".join(f", {g} {v['median_ratio']:.2f}x" for g, v in s["goals"].items()) for s in status)
    print(f"{name:<12} {seconds:5.0f} s  {line}", flush=True)
    return {"name": name, "folder": str(folder), "seconds": round(seconds), "design": exp.config,
            "rounds": [{k: v for k, v in s.items() if k not in ("r",)} for s in status]}


REFITS = {"ridge, synthesized at 0.1 (the default)": ("ridge", 0.1),
          "ridge, synthesized at full weight": ("ridge", 1.0),
          "ridge, natural images only": ("ridge", 0.0),
          "PLS, synthesized at full weight": ("pls", 1.0),
          "PLS, natural images only": ("pls", 0.0)}


def compare_refits(folder: Path, held_out: torch.Tensor) -> dict:
    """Each round of one finished loop refit on the same recordings with another regression or weight for the
    synthesized images, and scored on the held-out images: why the loop refits as it does."""
    exp = Experiment(folder)
    subject = exp.simulated_subject()
    out = {}
    for name, (method, weight) in REFITS.items():
        rows = []
        for m in exp.manifests():
            ids, images, values = exp.recorded(m["round"])
            natural, _ = exp.fit_weights(ids)
            readout = fit(exp.model, images, Responses(ids, values, exp.site_names()), exp.config["layer"],
                          method=method, folds=exp.config["folds"], seed=exp.config["seed"], natural=natural,
                          weights=np.where(natural, 1.0, weight))
            rows.append(float(np.median(held_out_r(readout, exp.model, subject, held_out))))
        out[name] = rows
        print(f"refit {name:<44} held-out r " + " ".join(f"{r:.3f}" for r in rows), flush=True)
    return out


def figure(runs: dict, path: Path) -> None:
    """Held-out r per round for each design, the closed loop's ratios against the one shot's, and the images."""
    loop, one = runs["closed loop (random)"], runs["one shot"]
    goals = list(loop["design"]["goals"])
    fig = plt.figure(figsize=(13, 8.5))
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 1.1])
    ax = fig.add_subplot(grid[0, 0])
    for name, run in runs.items():
        if name == "one shot":
            continue
        ax.plot([s["round"] for s in run["rounds"]], [s["held_out_r"] for s in run["rounds"]], "o-", label=name)
    ax.axhline(one["rounds"][-1]["held_out_r"], color="k", ls="--", label="one shot (same trials)")
    ax.set(xlabel="round (readout refit after it)", ylabel="median held-out r (400 unseen images)",
           title="readout: held-out r per round")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[0, 1])
    for goal in goals:
        xs = [s["round"] for s in loop["rounds"] if goal in s["goals"]]
        ax.plot(xs, [s["goals"][goal]["median_ratio"] for s in loop["rounds"] if goal in s["goals"]], "o-",
                label=f"closed loop: {goal}")
        ax.axhline(one["rounds"][-1]["goals"][goal]["median_ratio"], ls="--", color=ax.lines[-1].get_color(),
                   label=f"one shot: {goal}")
    ax.axhline(1, color="grey", lw=0.8)
    ax.set(xlabel="round shown", ylabel="median ratio to the natural best (fresh trials)",
           title="synthesized against natural, on the subject")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[0, 2])
    last = loop["rounds"][-1]["goals"][goals[0]]
    first = loop["rounds"][1]["goals"][goals[0]]
    ax.scatter(first["natural_best"], first["test"], s=14, label="round 1")
    ax.scatter(last["natural_best"], last["test"], s=14, label=f"round {loop['rounds'][-1]['round']}")
    top = max(max(last["test"]), max(last["natural_best"]), max(first["test"])) * 1.05
    ax.plot([0, top], [0, top], color="grey", lw=0.8)
    ax.set(xlabel="natural best (spikes/s)", ylabel=f"{goals[0]} image (spikes/s)", title="per site")
    ax.legend(fontsize=7)
    folder = Path(loop["folder"])
    manifests = Experiment(folder).manifests()
    shown = [m for m in manifests if m["round"] > 0]
    sites = [row["site"] for row in shown[0]["images"] if row.get("goal") == goals[0]][:6]
    inner = grid[1, :].subgridspec(len(shown), len(sites) + 1, wspace=0.05, hspace=0.15)
    for i, m in enumerate(shown):
        rows = {row.get("site"): row for row in m["images"] if row.get("goal") == goals[0]}
        for j, site in enumerate(sites):
            a = fig.add_subplot(inner[i, j])
            a.imshow(read_png(folder / f"round-{m['round']:02d}" / rows[site]["file"])[0].permute(1, 2, 0))
            a.set_xticks([]), a.set_yticks([])
            if i == 0:
                a.set_title(site, fontsize=7)
            if j == 0:
                a.set_ylabel(f"round {m['round']}", fontsize=7)
        a = fig.add_subplot(inner[i, len(sites)])
        ref = next(row for row in m["images"] if row["role"] == "reference" and sites[0] in row["best_for"])
        a.imshow(read_png(folder / f"round-{m['round']:02d}" / ref["file"])[0].permute(1, 2, 0))
        a.set_xticks([]), a.set_yticks([])
        if i == 0:
            a.set_title(f"natural best of {sites[0]}", fontsize=7)
    fig.suptitle(f"closed loop on a simulated animal ({loop['design']['sites']} toy-robust IT sites, toy-standard V4 "
                 f"readout, {loop['design']['budget']} trials per round)", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    """Run the four designs, print the comparison and write the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="closed-loop rounds after round 0")
    ap.add_argument("--budget", type=int, default=1200, help="trials per round")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--goals", default="stretch,onehot")
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--held-out", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/closed_loop")
    ap.add_argument("--results", default=str(RESULTS))
    args = ap.parse_args()
    t0 = time.perf_counter()
    held_out = synth.render(args.held_out, "test", start=50_000).tensor()
    out, runs = Path(args.out), {}
    for select in ("random", "uncertain", "diverse"):
        runs[f"closed loop ({select})"] = run_one(f"loop {select}", out / select, args, held_out,
                                                  budget=args.budget, select=select)
    loop = runs["closed loop (random)"]
    goals = list(loop["design"]["goals"])
    test_trials = (args.sites * len(goals) + args.sites + 1) * args.repeats  # room for every test and reference
    total = sum(s["trials"] for s in loop["rounds"])
    runs["one shot"] = run_one("one shot", out / "one_shot", args, held_out, rounds=1,
                               first_budget=total - test_trials, budget=test_trials)
    one = runs["one shot"]
    refits = compare_refits(Path(loop["folder"]), held_out)
    report = {"subject": "toy-robust IT", "model": "toy-standard V4", "sites": args.sites,
              "trials_closed_loop": total, "trials_one_shot": sum(s["trials"] for s in one["rounds"]),
              "seconds": round(time.perf_counter() - t0), "threads": torch.get_num_threads(),
              "phosphene": synth.__version__, "runs": runs, "refits": refits}
    lines = [f"# Closed loop against one shot ({args.sites} sites of toy-robust IT, toy-standard V4 readouts)", "",
             f"Every run shows {total} trials in all ({args.budget} per round, {args.repeats} repeats per image); the "
             f"one shot shows {report['trials_one_shot']}.  Held-out r: median over sites of Pearson r between the "
             f"readout and the subject's expected rates on {args.held_out} test images no run showed.  Ratio: median "
             f"over sites of the synthesized image's response over the natural best's, both on the round's fresh "
             f"trials.", "",
             "| design | round | images fitted | held-out r | cross-validated r | "
             + " | ".join(f"{g} ratio" for g in goals) + " |",
             "|---|---|---|---|---|" + "---|" * len(goals)]
    for name, run in runs.items():
        for s in run["rounds"]:
            ratios = " | ".join(f"{s['goals'][g]['median_ratio']:.2f}" if g in s["goals"] else "" for g in goals)
            lines.append(f"| {name} | {s['round']} | {s['images_fitted']} | {s['held_out_r']:.3f} | "
                         f"{s['median_r']:.3f} | {ratios} |")
    lines += ["", "The random loop's recordings refit every round with another regression or weight for the "
              f"synthesized images (held-out r, rounds 0-{args.rounds}):", "",
              "| refit | " + " | ".join(f"round {r}" for r in range(args.rounds + 1)) + " |",
              "|---|" + "---|" * (args.rounds + 1)]
    lines += [f"| {name} | " + " | ".join(f"{r:.3f}" for r in rows) + " |" for name, rows in refits.items()]
    lines += ["", f"{report['seconds']} s in all on {torch.get_num_threads()} threads; phosphene {synth.__version__}."]
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / "closed_loop.json").write_text(json.dumps(report, indent=1))
    (results / "closed_loop.md").write_text("\n".join(lines) + "\n")
    figure(runs, results / "closed_loop.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
