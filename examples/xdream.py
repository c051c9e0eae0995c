"""XDream in silico (Ponce et al. 2019): evolve images for neurons of a simulated monkey from their spikes alone.

The subject is 20 IT sites of toy-robust recorded with Poisson spike-count noise (``control.Subject``); the
experimenter never sees its model or a gradient, only its responses.  For each site, CMA-ES (Xiao & Kreiman
2020's strongest optimizer in XDream) searches the latent code of the embedded generator ``toy-deepsim``: 40 images per
generation, each presented once, fitness = the site's firing rate.  The best image found is then shown 10 more
times and compared with the site's best of 2,000 natural images (each also shown 10 times) — the comparison
XDream opens with; it is checked after 400, 1,200 and all evaluations, as in ``benchmarks/evolution.py``.  Writes
the figure (a sheet: each site's best natural image and its best evolved image at each budget; the responses per
generation; evolved against natural per site) and the numbers to --out.

Run:  .venv/bin/python examples/xdream.py [--generations 100] [--optimizer cmaes] [--out examples/results]
"""
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import synth  # noqa: E402
from synth.files import atomic  # noqa: E402
from synth.neuro.control import evolve_sites  # noqa: E402
from synth.neuro.subject import Subject


def figure(report: dict, natural, path: Path) -> None:
    """Per site its best natural image and the best evolved within each budget (the sheet), then the population's
    mean response per generation and evolved against natural per site."""
    rows, budgets = report["sites"], report["budgets"]
    n, per = len(rows), 1 + len(budgets)
    cols = 4
    grid = -(-n // cols)
    width, wspace = cols * per * 0.95, 0.06  # inches; gap between panels as a share of a panel
    panel = 0.775 * width / (cols * per + (cols - 1) * 0.35) / (1 + wspace)  # matplotlib's default 0.775 of the width
    top_h, bottom_h = grid * (panel + 0.42), 3.0
    height = top_h + bottom_h + 1.2
    fig = plt.figure(figsize=(width, height))
    top = fig.add_gridspec(grid, cols * (per + 1) - 1, top=1 - 0.3 / height, bottom=(bottom_h + 1.0) / height,
                           wspace=wspace, hspace=0.4, width_ratios=([1] * per + [0.35]) * (cols - 1) + [1] * per)
    for k, row in enumerate(rows):
        r, c = divmod(k, cols)
        panels = [(natural[row["natural_best_image"]], row["site"], f"natural {row['natural_best']:.0f}")]
        panels += [(report["images"][k][i], f"@{b:,}", f"{e:.0f} ({q:.2f}x)")
                   for i, (b, e, q) in enumerate(zip(budgets, row["evolved"], row["ratio"]))]
        for j, (img, title, label) in enumerate(panels):
            ax = fig.add_subplot(top[r, c * (per + 1) + j])
            ax.imshow(img.permute(1, 2, 0).numpy())
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(title, fontsize=7, pad=2, fontweight="bold" if j == 0 else "normal")
            ax.set_xlabel(label, fontsize=6.5, labelpad=1)
    bottom = fig.add_gridspec(1, 2, top=(bottom_h + 0.4) / height, bottom=0.6 / height, wspace=0.3)
    ax = fig.add_subplot(bottom[0])
    best = np.array([row["natural_best"] for row in rows])
    traj = report["generation_means"] / best[:, None]
    gens = np.arange(1, traj.shape[1] + 1)
    for t in traj:
        ax.plot(gens, t, color="0.8", lw=0.7)
    ax.plot(gens, np.median(traj, 0), color="C3", lw=2, label="evolved population (median over sites)")
    ax.axhline(1, color="k", ls="--", lw=1, label="best of the natural images")
    ax.set_xlabel("generation"), ax.set_ylabel("mean response / best natural")
    ax.legend(fontsize=7, frameon=False)
    ax = fig.add_subplot(bottom[1])
    evolved = np.array([row["evolved"][-1] for row in rows])
    ax.scatter(best, evolved, s=18, color="C3")
    lim = [0, max(best.max(), evolved.max()) * 1.08]
    ax.plot(lim, lim, "k--", lw=1)
    ax.plot(lim, [1.5 * v for v in lim], color="0.6", lw=1, ls=":", label="1.5x")
    ax.set_xlim(lim), ax.set_ylim(lim)
    ax.set_xlabel("best natural image (spikes/s, 10 trials)")
    ax.set_ylabel(f"evolved image @{budgets[-1]:,} (spikes/s, 10 trials)")
    ax.legend(fontsize=7, frameon=False)
    with atomic(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main() -> None:
    """Record the subject on natural images, evolve for each site, re-test, draw and save."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subject", default="toy-robust")
    ap.add_argument("--sites", type=int, default=20)
    ap.add_argument("--natural", type=int, default=2000, help="natural images (the held-out test split)")
    ap.add_argument("--code", default="generator:toy-deepsim")
    ap.add_argument("--optimizer", default="cmaes", choices=["cmaes", "genetic"])
    ap.add_argument("--population", type=int, default=40)
    ap.add_argument("--generations", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=1, help="presentations of each image per generation")
    ap.add_argument("--check", type=int, default=10, help="presentations of the final and natural images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="examples/results")
    args = ap.parse_args()

    natural = synth.render(args.natural, "test", workers=2).tensor()
    subject = Subject(synth.load_model(args.subject), "IT", natural, n_sites=args.sites, seed=args.seed)
    total = args.population * args.generations
    budgets = sorted({min(b, total) for b in (400, 1200, total)})  # benchmarks/evolution.py checks at the same
    report = evolve_sites(subject, natural, code=args.code, optimizer=args.optimizer, population=args.population,
                          generations=args.generations, repeats=args.repeats, check=args.check, budgets=budgets,
                          seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{report['subject']}, {args.code} searched by {args.optimizer}, {args.population} images per generation "
          f"shown {args.repeats}x; best evolved vs best of {len(natural)} natural images, {args.check} trials each")
    for row in report["sites"]:
        print(f"  {row['site']:>7}: natural {row['natural_best']:6.1f}  evolved "
              + "  ".join(f"{e:6.1f} ({r:.2f}x @{b})" for e, r, b in zip(row["evolved"], row["ratio"], budgets)))
    for i, b in enumerate(budgets):
        print(f"after {b} presentations: median {report['median_ratio'][i]:.2f}x the best natural image, "
              f"{report['fraction_above_1_5'][i]:.0%} of sites at 1.5x or more (noise-free: median "
              f"{report['median_true_ratio'][i]:.2f}x)")
    figure(report, natural, out / "xdream.png")
    saved = {k: v for k, v in report.items() if k not in ("images", "generation_means")}
    with atomic(out / "xdream.json") as tmp:
        tmp.write_text(json.dumps({**saved, "command": "examples/xdream.py", "args": vars(args)}, indent=1))
    print(f"figure: {out / 'xdream.png'}; numbers: {out / 'xdream.json'}")


if __name__ == "__main__":
    main()
