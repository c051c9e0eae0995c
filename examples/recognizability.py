"""Feather et al. (2023)'s recognizability experiment on the embedded models: are a model's metamers recognizable?

Metamers of 16 held-out test images (2 per category) are made at every stage (V1, V2, V4, IT, logits) of
toy-standard, toy-robust (adversarially trained) and toy-vone (a VOneBlock as V1), each stopping when it passes
Feather's criterion and comes within 5 % normalized error of its reference (a metamer still failing goes once
more from a new noise start with a third of the first step).  Every model then names the category
of every metamer set, raw and through a 1-px blur; the report (examples/results/metamers.md) gives the pass rates,
the recognition matrix, example metamers per stage and a line plot per model.  Metamers are saved per model and
stage under --work as they finish, so a killed run started again resumes.

    python examples/recognizability.py   # what examples/results/metamers.md holds; its time is printed
"""
import argparse
import shutil
import time
from pathlib import Path

from metamers.generate import STEPS
from metamers.recognize import STAGES, recognizability

MODELS = ["toy-standard", "toy-robust", "toy-vone"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="held-out embedded images (balanced over categories)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"most steps per metamer (default {STEPS})")
    parser.add_argument("--work", default="runs/metamers", help="where metamers are kept (resume from here)")
    parser.add_argument("--out", default="examples/results")
    args = parser.parse_args()
    t0 = time.perf_counter()
    table = recognizability(MODELS, STAGES, n=args.n, steps=args.steps, out=args.work)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("metamers.md", "metamers_examples.png", "metamers_recognition.png", "recognizability.json"):
        shutil.copy(Path(args.work) / name, out / name)
    for g in MODELS:
        print(f"{g}: pass rate " + ", ".join(f"{s} {table.pass_rates[g][s]['passed']:.0%}" for s in STAGES)
              + "; recognized by the others (blur) " + ", ".join(f"{s} {table.headline(g, s):.2f}" for s in STAGES))
    print(f"{len(MODELS)} models x {len(STAGES)} stages in {time.perf_counter() - t0:.0f} s; report in {out}")


if __name__ == "__main__":
    main()
