"""Genetic evolution, CMA-ES and gradient ascent at equal numbers of model evaluations (images passed forward).

For sampled IT units of toy-standard: XDream-style genetic evolution and CMA-ES (both population 40, the same
Fourier code) and Adam gradient ascent on one image per unit, each given the same evaluation budget per unit;
a method's value at a budget is the best activation among the images it evaluated within it, reported as a
multiple of the unit's maximum over the natural test split (median over units).  None of the three runs depends
on its length (no schedule), so each is run once for the largest budget and read off its history at the others.
"""
import argparse

import torch

import synth
from synth.objectives import Stretch
from synth.readouts import features


def _best_within(history: torch.Tensor, steps: int) -> torch.Tensor:
    """Each image's (or population's) best score within the first ``steps`` rows of a run's history."""
    return history[:steps].max(0).values


def main() -> None:
    """Print genetic, CMA-ES and gradient activation at each evaluation budget, and CMA-ES over genetic."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-standard")
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument("--population", type=int, default=40)
    ap.add_argument("--budgets", type=int, nargs="+", default=[400, 1200, 4000], help="evaluations per unit")
    ap.add_argument("--natural", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sigma0", type=float, default=None, help="CMA-ES initial step size (x the code's sd)")
    ap.add_argument("--full", action="store_true", help="CMA-ES with a full covariance instead of the diagonal")
    args = ap.parse_args()
    model = synth.load_model(args.model)
    natural = synth.render(args.natural, "test", workers=2).tensor()
    nat = features(model, natural, "IT", pooled=True)
    g = torch.Generator().manual_seed(args.seed)
    units = sorted(torch.randperm(nat.shape[1], generator=g)[:args.units].tolist())
    nat_max = nat[:, units].max(0).values
    budgets = sorted(args.budgets)
    generations = max(1, budgets[-1] // args.population)
    cma_options = {**({"sigma0": args.sigma0} if args.sigma0 is not None else {}),
                   **({"diagonal": False} if args.full else {})}
    best = {"genetic": [], "cmaes": []}
    seconds = {"genetic": 0.0, "cmaes": 0.0}
    described = {}
    for u in units:
        for name in best:
            r = synth.evolve(model, f"IT:{u}", optimizer=name, population=args.population, generations=generations,
                             seed=args.seed, progress=False, **(cma_options if name == "cmaes" else {}))
            best[name].append(torch.stack([_best_within(r.history, b // args.population).max() for b in budgets]))
            seconds[name] += r.metadata["seconds"]
            described[name] = r.metadata["step_rule"]
    grad = synth.synthesize(model, Stretch("IT", tuple(units)), n=len(units), steps=budgets[-1], param="fourier",
                            transforms=None, seed=args.seed, progress=False)
    ratios = {name: torch.stack(v) / nat_max[:, None] for name, v in best.items()}  # units x budgets
    ratios["gradient"] = torch.stack([_best_within(grad.history, b) for b in budgets], 1) / nat_max[:, None]
    paired = ratios["cmaes"] / ratios["genetic"]
    print(f"{model.name} IT units {units}; best activation / natural max, median over {len(units)} units")
    print(f"genetic: {described['genetic']}; CMA-ES: {described['cmaes']}")
    print(f"{'evaluations':>12} {'genetic':>8} {'cmaes':>8} {'gradient':>9} {'cmaes/ga':>9} {'cmaes wins':>11}")
    for i, b in enumerate(budgets):
        print(f"{b // args.population * args.population:>12} {ratios['genetic'][:, i].median():8.2f} "
              f"{ratios['cmaes'][:, i].median():8.2f} {ratios['gradient'][:, i].median():9.2f} "
              f"{paired[:, i].median():9.2f} {int((paired[:, i] > 1).sum()):>7}/{len(units)}")
    print(f"seconds for {budgets[-1]} evaluations of all units: genetic {seconds['genetic']:.1f}, "
          f"cmaes {seconds['cmaes']:.1f}, gradient {grad.metadata['seconds']:.1f} (cmaes/ga: median over units of "
          f"the paired ratio)")


if __name__ == "__main__":
    main()
