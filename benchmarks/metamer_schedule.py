"""Metamers: does an image's time to pass grow with the budget?  Feather's fixed step decay against a per-image one.

Feather et al. (2023) halve the step at each eighth of the *budget*: an image that needs small steps passes only in
the run's late stages, whatever the budget, so a larger budget makes every hard metamer slower. The 'plateau'
schedule (``synth.engine.steps.PlateauDecay``) halves an image's step when its own error stalls (and the surrogate
gradients sharpen over ``metamers.generate.SHARPEN_STEPS`` steps, not over the budget). On the
benchmark's 16 references (``benchmarks/metamer_speed.py``: test images from 100, toy-standard, IT), one run per
schedule and budget (no retries), it prints how many passed, and the median, 90th-percentile and largest step at
which the images that passed did, and the run's wall time. Goal (issue 30): with 'plateau' the steps to pass do not
grow from a budget of 2,400 to 4,800.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import metamers  # noqa: E402
import synth  # noqa: E402


def main() -> None:
    """Run each schedule at each budget and print the steps to pass."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-standard")
    ap.add_argument("--stage", default="IT")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--budgets", default="2400,4800")
    ap.add_argument("--schedules", default="step,plateau")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = synth.load_model(args.model)
    refs = synth.render(args.n, "test", start=100).tensor()
    print(f"{args.model} {args.stage}, {args.n} references, {torch.get_num_threads()} threads")
    print(f"{'schedule':<10} {'budget':>6} {'passed':>7} {'median':>7} {'p90':>6} {'max':>6} {'seconds':>8}")
    for schedule in args.schedules.split(","):
        for budget in (int(b) for b in args.budgets.split(",")):
            t0 = time.perf_counter()
            r = metamers.generate(model, refs, args.stage, steps=budget, retries=0, lr_schedule=schedule,
                                  progress=False)
            seconds = time.perf_counter() - t0
            rows = r.summary()
            passed = np.array([row["steps"] for row in rows if row["passed"]])
            stats = (f"{np.median(passed):7.0f} {np.percentile(passed, 90):6.0f} {passed.max():6d}" if len(passed)
                     else f"{'-':>7} {'-':>6} {'-':>6}")
            print(f"{schedule:<10} {budget:>6} {len(passed):>4}/{len(rows):<2} {stats} {seconds:8.0f}", flush=True)


if __name__ == "__main__":
    main()
