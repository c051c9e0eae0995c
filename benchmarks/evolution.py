"""Gradient-free evolution vs gradient ascent at equal numbers of model evaluations (images passed forward).

For sampled IT units of toy-standard: XDream-style genetic evolution (population 40) and Adam gradient ascent on
one image per unit, both given the same evaluation budget per unit; activations are reported as multiples of
each unit's maximum over the natural test split.
"""
import argparse

import torch

import synth
from synth.objectives import Stretch
from synth.readouts import features


def main() -> None:
    """Print evolution vs gradient activation at each evaluation budget."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-standard")
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument("--population", type=int, default=40)
    ap.add_argument("--budgets", type=int, nargs="+", default=[400, 1200, 4000], help="evaluations per unit")
    ap.add_argument("--natural", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model = synth.load_model(args.model)
    natural = synth.render(args.natural, "test", workers=2).tensor()
    nat = features(model, natural, "IT", pooled=True)
    g = torch.Generator().manual_seed(args.seed)
    units = sorted(torch.randperm(nat.shape[1], generator=g)[:args.units].tolist())
    nat_max = nat[:, units].max(0).values
    print(f"{model.name} IT units {units}; activation / natural max (median over units), and time")
    print(f"{'evaluations':>12} {'evolution':>10} {'s':>6} {'gradient':>10} {'s':>6}")
    for budget in args.budgets:
        generations = max(1, budget // args.population)
        evo, evo_s = [], 0.0
        for u in units:
            r = synth.evolve(model, f"IT:{u}", population=args.population, generations=generations, seed=args.seed,
                             progress=False)
            evo.append(float(r.scores.max()))
            evo_s += r.metadata["seconds"]
        grad = synth.synthesize(model, Stretch("IT", tuple(units)), n=len(units), steps=budget, param="fourier",
                                transforms=None, seed=args.seed, progress=False)
        evo_ratio = (torch.tensor(evo) / nat_max).median()
        grad_ratio = (grad.scores / nat_max).median()
        print(f"{generations * args.population:>12} {evo_ratio:10.2f} {evo_s:6.1f} {grad_ratio:10.2f} "
              f"{grad.metadata['seconds']:6.1f}")


if __name__ == "__main__":
    main()
