"""Evolution in Fourier and in generator space, genetic and CMA-ES, beside gradient ascent, at equal evaluations.

Part 1, a model's units: for sampled IT units of toy-standard, XDream's genetic algorithm and CMA-ES (population
40), each searching the low-frequency Fourier code and the latent codes of the embedded generators (``toy-gan``,
a DCGAN; ``toy-deepsim``, a DeePSiM-style inverter of toy-standard's V4, whose code is therefore a view of the
very network evolved here, as DeePSiM fc6's is of CaffeNet's in Xiao & Kreiman's in-silico tests), and
Adam gradient ascent on one image per unit in each space, all given the same evaluation budget per unit (images
passed forward).  A method's value at a budget is the best activation among the images it evaluated within it,
as a multiple of the unit's maximum over the natural test split (median over units).  No run depends on its
length (no schedule), so each is run once for the largest budget and read off its history at the others.

Part 2, a black box: the same evolutions for sites of a simulated subject (toy-robust IT, Poisson spike
counts, every image presented once per generation), with no access to its model or gradients.  At each budget
the best image by its noisy fitness is shown 10 more times, against the site's best natural image (each of
2,000 shown 10 times): median ratio over sites and the share of sites at 1.5x or more (``control.evolve_sites``).
"""
import argparse
import time

import torch

import synth
from synth.engine.objectives import Stretch
from synth.neuro.control import evolve_sites
from synth.neuro.readouts import features
from synth.neuro.subject import Subject

SPACES = {"fourier": "fourier", "toy-gan": "generator:toy-gan", "toy-deepsim": "generator:toy-deepsim"}
OPTIMIZERS = ("genetic", "cmaes")


def _best_within(history: torch.Tensor, steps: int) -> torch.Tensor:
    """Each image's (or population's) best score within the first ``steps`` rows of a run's history."""
    return history[:steps].max(0).values


def model_units(args: argparse.Namespace, natural: torch.Tensor, budgets: list[int]) -> None:
    """Part 1: best activation / natural max for every method at every budget, median over units."""
    model = synth.load_model(args.model)
    nat = features(model, natural, "IT", pooled=True)
    g = torch.Generator().manual_seed(args.seed)
    units = sorted(torch.randperm(nat.shape[1], generator=g)[:args.units].tolist())
    nat_max = nat[:, units].max(0).values
    generations = max(1, budgets[-1] // args.population)
    cma_options = {**({"sigma0": args.sigma0} if args.sigma0 is not None else {}),
                   **({"diagonal": False} if args.full else {})}
    ratios, seconds = {}, {}
    for space in args.spaces:
        code = SPACES[space]
        for name in OPTIMIZERS:
            key, best, t0 = f"{name} {space}", [], time.perf_counter()
            for u in units:
                r = synth.evolve(model, f"IT:{u}", code=code, optimizer=name, population=args.population,
                                 generations=generations, seed=args.seed, progress=False,
                                 **(cma_options if name == "cmaes" else {}))
                best.append(torch.stack([_best_within(r.history, b // args.population).max() for b in budgets]))
            ratios[key], seconds[key] = torch.stack(best) / nat_max[:, None], time.perf_counter() - t0
        t0 = time.perf_counter()
        grad = synth.synthesize(model, Stretch("IT", tuple(units)), n=len(units), steps=budgets[-1], param=code,
                                transforms=None, seed=args.seed, progress=False)
        ratios[f"gradient {space}"] = (torch.stack([_best_within(grad.history, b) for b in budgets], 1)
                                       / nat_max[:, None])
        seconds[f"gradient {space}"] = time.perf_counter() - t0
    print(f"Part 1: {model.name} IT units {units}; best activation / natural max (n={len(natural)}), median over "
          f"{len(units)} units")
    _table(ratios, budgets, args.population)
    for name in OPTIMIZERS:
        for space in [s for s in args.spaces if s != "fourier" and "fourier" in args.spaces]:
            paired = ratios[f"{name} {space}"] / ratios[f"{name} fourier"]
            print(f"{name}: {space} over Fourier, median paired ratio "
                  + ", ".join(f"{float(paired[:, i].median()):.2f} ({int((paired[:, i] > 1).sum())}/{len(units)} "
                              f"units)" for i in range(len(budgets))) + " at " + ", ".join(map(str, budgets)))
    print("seconds for all units: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))


def black_box(args: argparse.Namespace, natural: torch.Tensor, budgets: list[int]) -> None:
    """Part 2: best evolved response / best natural response of a noisy subject, median over sites."""
    subject = Subject(synth.load_model(args.subject), "IT", natural, n_sites=args.sites, seed=args.seed)
    generations = max(1, budgets[-1] // args.population)
    medians, shares, true, seconds = {}, {}, {}, {}
    for space in args.spaces:
        code = SPACES[space]
        for name in OPTIMIZERS:
            key, t0 = f"{name} {space}", time.perf_counter()
            report = evolve_sites(subject, natural, code=code, optimizer=name, population=args.population,
                                  generations=generations, budgets=budgets, seed=args.seed, progress=False)
            medians[key], shares[key] = report["median_ratio"], report["fraction_above_1_5"]
            true[key], seconds[key] = report["median_true_ratio"], time.perf_counter() - t0
    print(f"\nPart 2: {subject}, each image shown once per generation; best evolved / best natural "
          f"(n={len(natural)}), 10 fresh trials each: median over sites (share of sites >= 1.5x)")
    print(f"{'evaluations':>12} " + " ".join(f"{k:>19}" for k in medians))
    for i, b in enumerate(budgets):
        print(f"{b // args.population * args.population:>12} "
              + " ".join(f"{medians[k][i]:>11.2f} ({shares[k][i]:>4.0%})" for k in medians))
    print("noise-free (the subject's expected rates, unseen by the search): "
          + "; ".join(f"{k} " + "/".join(f"{v:.2f}" for v in true[k]) for k in true))
    print("seconds for all sites: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))


def _table(ratios: dict, budgets: list[int], population: int) -> None:
    print(f"{'evaluations':>12} " + " ".join(f"{k:>20}" for k in ratios))
    for i, b in enumerate(budgets):
        print(f"{b // population * population:>12} " + " ".join(f"{float(v[:, i].median()):>20.2f}"
                                                                for v in ratios.values()))


def main() -> None:
    """Run both parts and print their tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-standard")
    ap.add_argument("--subject", default="toy-robust")
    ap.add_argument("--units", type=int, default=8)
    ap.add_argument("--sites", type=int, default=20)
    ap.add_argument("--population", type=int, default=40)
    ap.add_argument("--budgets", type=int, nargs="+", default=[400, 1200, 4000], help="evaluations per unit")
    ap.add_argument("--natural", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sigma0", type=float, default=None, help="CMA-ES initial step size (x the code's sd)")
    ap.add_argument("--full", action="store_true", help="CMA-ES with a full covariance instead of the diagonal")
    ap.add_argument("--part", choices=["1", "2", "both"], default="both")
    ap.add_argument("--spaces", nargs="+", choices=list(SPACES), default=list(SPACES))
    args = ap.parse_args()
    natural = synth.render(args.natural, "test", workers=2).tensor()
    budgets = sorted(args.budgets)
    if args.part in ("1", "both"):
        model_units(args, natural, budgets)
    if args.part in ("2", "both"):
        black_box(args, natural, budgets)


if __name__ == "__main__":
    main()
