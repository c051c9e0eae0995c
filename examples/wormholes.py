"""Wormholes in silico (Gaziv et al. 2023): small targeted perturbations made on a robust model carry the target
category to a standard model; made on the standard model, they do not carry to the robust one.

Targeted L2 PGD under a matched budget ε = 2 (64-px images), 100 fixed steps from the clean image, target = the
next category, on held-out test images; each perturbation stops when its source model reports the target, so it
is what that model needs.  Every model judges every model's perturbations.  For comparison the same attack is run
again using every step (perturbations that fill the budget).  Writes the sheet and both tables (Markdown, JSON)
to --out.

Run:  .venv/bin/python examples/wormholes.py [--n 64] [--out examples/results]
"""
import argparse

import attacks
import synth
from attacks.behavior import report, sheet


def main() -> None:
    """Make the perturbations on both toy models, judge them with both, write the sheet and the rates."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="held-out test images (8 categories in turn)")
    ap.add_argument("--eps", type=float, default=2.0, help="L2 budget (default 2.0 at 64 px)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rows", type=int, default=8, help="images shown on the sheet")
    ap.add_argument("--out", default="examples/results")
    args = ap.parse_args()

    models = {"standard": synth.load_model("toy-standard"), "robust": synth.load_model("toy-robust")}
    batch = synth.render(args.n, "test")
    runs = {}
    for title, early_stop in (("Stopping when the source reports the target", True), ("Every step used", False)):
        run = attacks.wormholes(models, batch.tensor(), batch.labels.tolist(), eps=args.eps, steps=args.steps,
                                early_stop=early_stop)
        runs[title] = run
        print(title)
        for source, judged in run["rates"].items():
            print(f"  made on {source:<8} (median L2 {run['norms'][source]:.2f}): "
                  + ", ".join(f"{judge} calls it the target {rate:.2f}" for judge, rate in judged.items()))
    first = next(iter(runs.values()))
    print("clean images called the target: " + ", ".join(f"{j} {r:.2f}" for j, r in first["clean"].items()))
    picture = sheet(first, models, f"{args.out}/wormholes.png", n=args.rows)
    print(f"sheet: {picture}; rates: {report(runs, args.out)}")


if __name__ == "__main__":
    main()
