"""Afraz, Kiani & Esteky (2006) in silico: micro-stimulating face-selective sites of toy-topo's IT biases its
face / non-face choices, and the more face-selective the site the larger the bias.

86 sites of toy-topo's IT sheet (10 mm, each channel a unit) are stimulated at 200 Hz while the model judges
faces and non-face objects degraded toward phase-scrambled noise; each site's shift in face choices is set
against its face selectivity (faces-vs-objects t) recorded over a radius of half the stimulation's spread.  The
same weights with the positions shuffled are the control.  Reported at Afraz's 50 µA and along a curve of
spreads; the report (afraz.json), the plot (afraz.png) and the face map with its patches (face_map.png) land in
examples/results/afraz2006/.

    python examples/afraz2006.py     # the same as: phosphene microstim afraz --model toy-topo --out DIR
"""
import argparse

import synth
from microstim import run_afraz
from synth.zoo.catalog import TOPOGRAPHIC


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=TOPOGRAPHIC)
    parser.add_argument("--sites", type=int, default=86)
    parser.add_argument("--current", type=float, default=50.0, help="µA (Afraz et al.: 50)")
    parser.add_argument("--out", default="examples/results/afraz2006")
    args = parser.parse_args()
    model = synth.load_model(args.model)
    r = run_afraz(model, args.out, "IT", sites=args.sites, current_ua=args.current, workers=2)
    for name in ("topographic", "shuffled"):
        print(f"{name}: r = {r[name]['r']:.3f}, p = {r[name]['p']:.2g}")
    print("r against spread (topographic / shuffled, one-sided p of the difference): " + ", ".join(
        f"{c['spread_mm']:.2g} mm {c['r']:.2f} / {c['r_shuffled']:.2f}, difference {c['difference']:+.2f} "
        f"(p {c['difference_p']:.2g})"
        for c in r["curve"]))
    print(f"{r['seconds']:.0f} s; afraz.json, afraz.png, face_map.png in {args.out}")


if __name__ == "__main__":
    main()
