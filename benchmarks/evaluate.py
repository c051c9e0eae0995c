"""Reliable robust accuracy: ``attacks.evaluate`` against torchattacks' AutoAttack, in one run.

Same models, images and budgets for both (``--n`` held-out test images of the embedded set; L-inf ``--linf`` and L2
``--l2``): phosphene's cascade (a PGD sweep, then APGD-CE, APGD-T on the DLR loss and Square on the images still
unbroken; Square left out for stochastic models) against torchattacks' AutoAttack (Croce & Hein 2020): its
'standard' version (APGD-CE, APGD-T, FAB-T, Square), or with ``--reference apgd`` its white-box core alone,
APGD-CE + APGD-T with 100 steps each (FAB-T and Square take hours on a CPU; the output says which ran).  A
stochastic model is given to torchattacks behind the mean of ``--eot`` noise draws, as phosphene's verdicts read it.

It prints, per model and budget, both robust accuracies and wall times and their ratio.  Goals (issue 28): robust
accuracy within 0.5 points of AutoAttack's or lower, at 10x less wall time or better.  torchattacks pins an old
``requests``: run this from the benchmark venv (``make bench``) or with torchattacks on ``PYTHONPATH``.
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


class MeanOfDraws(torch.nn.Module):
    """A stochastic model seen through the mean of its logits over ``draws`` noise draws (the verdict it gives)."""

    def __init__(self, model: synth.ProbeModel, draws: int):
        super().__init__()
        self.model, self.draws = model, draws

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.activations(x, "logits", check=False, draws=self.draws)["logits"].view(
            self.draws, x.shape[0], -1).mean(0)


def reference(model: synth.ProbeModel, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, kind: str,
              draws: int) -> tuple[float, float]:
    """torchattacks' robust accuracy and wall time at one budget."""
    import torchattacks

    net = MeanOfDraws(model, draws) if draws > 1 else model
    norm_name = "Linf" if norm == "linf" else "L2"
    n_classes = len(model.classes)
    if kind == "autoattack":
        attack = torchattacks.AutoAttack(net, norm=norm_name, eps=eps, version="standard", n_classes=n_classes,
                                         seed=0)
    else:
        ce = torchattacks.APGD(net, norm=norm_name, eps=eps, steps=100, loss="ce", seed=0)
        t = torchattacks.APGDT(net, norm=norm_name, eps=eps, steps=100, n_classes=n_classes, seed=0)
        attack = torchattacks.MultiAttack([ce, t])
    t0 = time.perf_counter()
    adv = attack(x, y)
    seconds = time.perf_counter() - t0
    return float((logits(model, adv, draws).argmax(1) == y).float().mean()), seconds


def main() -> None:
    """Run both on each model and budget and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="toy-robust,toy-vone")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--linf", default="4/255")
    ap.add_argument("--l2", default="0.4")
    ap.add_argument("--reference", choices=["autoattack", "apgd"], default="autoattack")
    ap.add_argument("--eot", type=int, default=8, help="noise draws of a stochastic model (both attacks)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = synth.render(args.n, "test", start=5000)
    print(f"{args.n} test images; reference: torchattacks "
          f"{'AutoAttack (standard)' if args.reference == 'autoattack' else 'APGD-CE + APGD-T, 100 steps each'}; "
          f"{torch.get_num_threads()} threads on {synth.default_device()}")
    print(f"{'model':<12} {'budget':<12} {'clean':>6} {'evaluate':>9} {'reference':>9} {'diff':>6} "
          f"{'t eval':>8} {'t ref':>8} {'ratio':>6}")
    for name in args.models.split(","):
        model = synth.load_model(name)
        x, y = batch.tensor(model.device), torch.from_numpy(batch.labels).to(model.device)
        draws = args.eot if model.stochastic else 1
        clean = float((logits(model, x, draws).argmax(1) == y).float().mean())
        for norm, text in (("linf", args.linf), ("l2", args.l2)):
            eps = float(attacks.parse_eps(text)[0])
            t0 = time.perf_counter()
            ours = attacks.evaluate(model, x, y, eps, norm=norm, eot=draws, progress=False)
            t_ours = time.perf_counter() - t0
            ref, t_ref = reference(model, x, y, eps, norm, args.reference, draws)
            acc = float(ours.accuracy[0])
            print(f"{name:<12} {norm + ' ' + text:<12} {clean:6.3f} {acc:9.3f} {ref:9.3f} {100 * (acc - ref):+6.1f} "
                  f"{t_ours:7.0f}s {t_ref:7.0f}s {t_ref / t_ours:5.1f}x   broken by: {ours.metadata['broken_by']}",
                  flush=True)


if __name__ == "__main__":
    main()
