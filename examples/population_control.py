"""Neural population control (Bashivan, Kar & DiCarlo 2019) on a simulated monkey.

The 'subject' is a set of units of a *different* model (toy-robust by default) recorded with Poisson spike
noise; the experimenter only has the probe model (toy-standard).  We record the subject on natural images, fit a
Brain-Score-style readout from the probe, synthesize 'stretch' and 'one-hot population' images through it, show
them to the subject, and report what the paper reported.  Also measures, inside the probe itself, how far
stretch images drive IT units beyond their natural maximum.

Run:  .venv/bin/python examples/population_control.py [--sites 40] [--steps 256] [--out runs/population_control]
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

import synth
from synth.neuro.control import population_control, stretch_units
from synth.neuro.readouts import features
from synth.neuro.subject import Subject


def main() -> None:
    """Run the in-model stretch and the simulated experiment; print and save the report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe", default="toy-standard")
    ap.add_argument("--subject", default="toy-robust")
    ap.add_argument("--layer", default="IT", help="probe layer for the readout and subject layer for the sites")
    ap.add_argument("--sites", type=int, default=40)
    ap.add_argument("--units", type=int, default=64, help="IT units of the probe to stretch in-model")
    ap.add_argument("--natural", type=int, default=2000, help="natural images (the held-out test split)")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/population_control")
    args = ap.parse_args()

    probe, subject_model = synth.load_model(args.probe), synth.load_model(args.subject)
    natural = synth.render(args.natural, "test", workers=2).tensor()
    print(f"natural images: {len(natural)} of the embedded test split")

    g = torch.Generator().manual_seed(args.seed)
    n_channels = features(probe, natural[:2], args.layer, pooled=True).shape[1]
    units = sorted(torch.randperm(n_channels, generator=g)[:args.units].tolist())
    units_report = stretch_units(probe, args.layer, units, natural, steps=args.steps, seed=args.seed)
    print(f"\nIn-model stretch ({args.probe} {args.layer}, {len(units)} sampled units): "
          f"{units_report['fraction_above']:.0%} beyond their natural maximum, "
          f"median ratio {units_report['median_ratio']:.2f}x")

    subject = Subject(subject_model, args.layer, natural, n_sites=args.sites, seed=args.seed)
    report = population_control(probe, subject, natural, layer=args.layer, repeats=args.repeats, seed=args.seed,
                                steps=args.steps)
    print(f"\nSimulated experiment: subject = {report['subject']} ({report['sites']} sites, Poisson noise, "
          f"{report['repeats']} repeats), probe = {report['probe']} {report['layer']}")
    print(f"  readout (PLS, 10-fold): median r {report['readout_median_r']:.2f}, median ceiling "
          f"{report['readout_median_ceiling']:.2f}, median ceiled r {report['readout_median_ceiled_r']:.2f}")
    print(f"  stretch: {report['stretch_fraction_above_natural_max']:.0%} of sites driven beyond their best natural "
          f"image in the subject (median ratio {report['stretch_median_ratio']:.2f}x); "
          f"predicted by the probe: {report['stretch_model_fraction_above']:.0%}")
    print(f"  one-hot population: target site most active in the subject for {report['onehot_success']:.0%} "
          f"(median target z {report['onehot_median_target_z']:.2f} vs others {report['onehot_median_others_z']:.2f}); "
          f"in the probe's prediction {report['onehot_model_success']:.0%}")

    out = Path(args.out)
    report["stretch"].save(out / "stretch")
    report["onehot"].save(out / "onehot")
    units_report["result"].save(out / "units")
    summary = {k: v for k, v in report.items() if not hasattr(v, "save")}
    summary["units"] = {k: v for k, v in units_report.items() if k != "result"}
    (out / "report.json").write_text(json.dumps(summary, indent=1, default=lambda v: np.asarray(v).tolist()))
    print(f"\nimages and report.json in {out}")


if __name__ == "__main__":
    main()
