"""Reliable robust accuracy: ``attacks.evaluate`` against torchattacks' AutoAttack, in one run.

Same models, images and budgets for both (``--n`` held-out test images of the embedded set; L-inf ``--linf`` and L2
``--l2``): phosphene's cascade (APGD-CE, then APGD-T on the DLR loss and Square's probe on the images still
unbroken; Square left out for stochastic models) against torchattacks' AutoAttack (Croce & Hein 2020), run as its
``MultiAttack`` runs it (each attack on the images every earlier one left unbroken) so that each member's time and
tally can be printed:

- a deterministic model: the 'standard' version, APGD-CE, APGD-T (all the other classes as targets, up to 9),
  FAB-T and Square with 5,000 queries; with ``--reference apgd`` its white-box core alone, APGD-CE + APGD-T.
  ``--steps`` (default 100) are the iterations of APGD-CE, APGD-T and FAB-T: Croce & Hein's code runs 100, while
  torchattacks' ``AutoAttack`` class leaves its members at their default of 10 (``--steps 10`` measures that);
- a stochastic model: the version AutoAttack prescribes for randomized defences ('rand': APGD-CE and APGD-DLR, each
  with EOT over 20 draws per step), on the raw model.

Every returned image of both is judged by the same verdict (``attacks.common.logits``: the mean of ``--eot`` seeded
draws on a stochastic model).  It prints, per model and budget, both robust accuracies, wall times and their ratio,
the images only one of them broke, and each stage's tally and seconds.  Goals (issue 28): robust accuracy within
0.5 points of AutoAttack's or lower, at 10x less wall time or better.  torchattacks pins an old ``requests``: run
this from the benchmark venv (``make bench``) or with torchattacks on ``PYTHONPATH``.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attacks  # noqa: E402
import synth  # noqa: E402
from attacks.common import logits  # noqa: E402


def members(model: synth.ProbeModel, eps: float, norm: str, kind: str, steps: int) -> list[tuple[str, object]]:
    """AutoAttack's members, in its order, as torchattacks builds them (seed 0, one restart each), with ``steps``
    iterations for the APGD and FAB members."""
    import torchattacks as ta

    n = "Linf" if norm == "linf" else "L2"
    k = len(model.classes)
    if model.stochastic:
        return [("apgd-ce", ta.APGD(model, norm=n, eps=eps, steps=steps, loss="ce", eot_iter=20, n_restarts=1,
                                    seed=0)),
                ("apgd-dlr", ta.APGD(model, norm=n, eps=eps, steps=steps, loss="dlr", eot_iter=20, n_restarts=1,
                                     seed=0))]
    core = [("apgd-ce", ta.APGD(model, norm=n, eps=eps, steps=steps, loss="ce", n_restarts=1, seed=0)),
            ("apgd-t", ta.APGDT(model, norm=n, eps=eps, steps=steps, n_classes=k, n_restarts=1, seed=0))]
    if kind == "apgd":
        return core
    return core + [("fab-t", ta.FAB(model, norm=n, eps=eps, steps=steps, multi_targeted=True, n_classes=k,
                                    n_restarts=1, seed=0)),
                   ("square", ta.Square(model, norm=n, eps=eps, n_queries=5000, n_restarts=1, seed=0))]


def reference(model: synth.ProbeModel, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, kind: str,
              steps: int, draws: int) -> tuple[torch.Tensor, float, dict]:
    """Which images survive AutoAttack (judged by phosphene's verdict), its wall time and each member's tally."""
    alive = (logits(model, x, draws).argmax(1) == y).nonzero()[:, 0]
    tally, t_total = {}, 0.0
    for name, attack in members(model, eps, norm, kind, steps):
        if not len(alive):
            break
        t0 = time.perf_counter()
        adv = attack(x[alive], y[alive])
        seconds = time.perf_counter() - t0
        t_total += seconds
        broken = logits(model, adv, draws).argmax(1) != y[alive]
        tally[name] = (int(broken.sum()), round(seconds))
        alive = alive[~broken]
    survived = torch.zeros(len(x), dtype=torch.bool)
    survived[alive] = True
    return survived, t_total, tally


def main() -> None:
    """Run both on each model and budget and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="toy-robust,toy-vone")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--linf", default="4/255")
    ap.add_argument("--l2", default="0.4")
    ap.add_argument("--norms", default="linf,l2")
    ap.add_argument("--reference", choices=["autoattack", "apgd"], default="autoattack")
    ap.add_argument("--steps", type=int, default=100, help="iterations of AutoAttack's APGD and FAB members")
    ap.add_argument("--eot", type=int, default=8, help="noise draws of a stochastic model's verdict (both attacks)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = synth.render(args.n, "test", start=5000)
    print(f"{args.n} test images; reference: torchattacks AutoAttack "
          f"{'(standard; rand on stochastic models)' if args.reference == 'autoattack' else 'APGD-CE + APGD-T'}, "
          f"{args.steps} iterations; "
          f"{torch.get_num_threads()} threads on {synth.default_device()}", flush=True)
    print(f"{'model':<12} {'budget':<12} {'clean':>6} {'evaluate':>9} {'AutoAttack':>10} {'diff':>6} "
          f"{'t eval':>8} {'t ref':>8} {'ratio':>6}  only-ours only-ref")
    for name in args.models.split(","):
        model = synth.load_model(name)
        x = batch.tensor(model.device).contiguous()
        y = torch.from_numpy(batch.labels).to(model.device)
        draws = args.eot if model.stochastic else 1
        clean = float((logits(model, x, draws).argmax(1) == y).float().mean())
        for norm in args.norms.split(","):
            text = args.linf if norm == "linf" else args.l2
            eps = float(attacks.parse_eps(text)[0])
            t0 = time.perf_counter()
            ours = attacks.evaluate(model, x, y, eps, norm=norm, eot=draws, progress=False)
            t_ours = time.perf_counter() - t0
            survived, t_ref, tally = reference(model, x, y, eps, norm, args.reference, args.steps, draws)
            mine = ~ours.success[0].cpu()
            acc, ref = float(mine.float().mean()), float(survived.float().mean())
            print(f"{name:<12} {norm + ' ' + text:<12} {clean:6.3f} {acc:9.3f} {ref:10.3f} {100 * (acc - ref):+6.1f} "
                  f"{t_ours:7.0f}s {t_ref:7.0f}s {t_ref / t_ours:5.1f}x  {int((~mine & survived).sum()):9d} "
                  f"{int((mine & ~survived).sum()):8d}", flush=True)
            print(f"    evaluate (broken, s): {ours.metadata['broken_by']} {ours.metadata['seconds_by_stage']}"
                  f"{' square escalated' if any(ours.metadata['square_escalated']) else ''}; "
                  f"AutoAttack (broken, s): {tally}", flush=True)


if __name__ == "__main__":
    main()
