"""Attack speed: an L-inf PGD sweep over five budgets with phosphene vs foolbox vs torchattacks, in one run.

Same model, images, budgets and steps for every peer (64 held-out test images of the embedded set, ε = 0.5, 1, 2,
4 and 8 /255, 20 steps, a random start):

- phosphene: ``attacks.pgd(model, x, y, eps=[...])`` — one call: Auto-PGD steps, per-image budget search, early stop;
- phosphene, fixed steps: the same search with Madry's fixed 2.5·ε/steps steps and full-length later rounds;
- foolbox: ``LinfPGD(steps=20, rel_stepsize=2.5/20, random_start=True)`` called once with the list of budgets
  (it attacks every budget from scratch);
- torchattacks: ``PGD(eps, alpha=2.5·ε/20, steps=20, random_start=True)`` called once per budget.

It prints time and robust accuracy at each budget, the speed ratios, and the engine's cost per step against a bare
forward+backward+step loop on the same images (interleaved runs of ``--cost-steps`` steps, best of ``--repeats``;
a run's cost includes the engine's final check of the images it returns).  Goals: at least 3x faster
than foolbox and 2x faster than torchattacks on both models, accuracy no higher at any budget; per-step cost at
most 1.05x.  Times are CPU time of this process with one thread by default (see benchmarks/engine.py for why).
"""
import argparse
import sys
import time
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # this file is not the attacks package

import torch  # noqa: E402

import attacks  # noqa: E402
import synth  # noqa: E402
from synth import Box, LpBall, optimize  # noqa: E402
from synth.engine.objectives import CrossEntropy  # noqa: E402
from synth.engine.params import Pixels  # noqa: E402

sys.path.append(str(HERE))
from engine import CLOCK, per_step  # noqa: E402

EPS = [0.5 / 255, 1 / 255, 2 / 255, 4 / 255, 8 / 255]


def timed(fn):
    """(result, seconds) of one call, on the benchmark's clock."""
    t = CLOCK()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, CLOCK() - t


def foolbox_sweep(model, x, y, steps: int) -> list[float]:
    import foolbox as fb

    attack = fb.attacks.LinfPGD(steps=steps, rel_stepsize=2.5 / steps, random_start=True)
    _, _, success = attack(fb.PyTorchModel(model, bounds=(0, 1), device=model.device), x, y, epsilons=EPS)
    return (1 - success.float().mean(1)).tolist()


def torchattacks_sweep(model, x, y, steps: int) -> list[float] | None:
    try:
        import torchattacks
    except ImportError:
        return None
    acc = []
    for eps in EPS:
        adv = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)(x, y)
        with torch.no_grad():
            acc.append(float((model(adv).argmax(1) == y).float().mean()))
    return acc


def step_cost(model, x, y, steps: int, repeats: int) -> tuple[float, float]:
    """Seconds per step of the engine (no early stop: every image in every step) and of a bare PGD loop."""
    ball = LpBall(x, 4 / 255)

    def engine(n: int) -> None:
        optimize(model, CrossEntropy("logits", y=y), Pixels(x), constraints=[ball, Box()], step="sign", lr=1 / 255,
                 steps=n, progress=False)

    def bare(n: int) -> None:
        a = x.clone().requires_grad_(True)
        for _ in range(n):
            loss = torch.nn.functional.cross_entropy(model(a), y, reduction="sum")
            g, = torch.autograd.grad(loss, a)
            with torch.no_grad():
                a += g.sign() / 255
                a.copy_(torch.min(torch.max(a, x - 4 / 255), x + 4 / 255).clamp_(0, 1))

    return tuple(per_step([engine, bare], steps, repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="toy-standard,toy-robust")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the per-step timing")
    ap.add_argument("--cost-steps", type=int, default=40,
                    help="steps per run of the per-step timing (the engine's final check is amortized over them)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 keeps torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = synth.render(args.n, "test")
    clock = "wall" if CLOCK is time.perf_counter else "CPU"
    print(f"{args.n} test images, {args.steps} steps, budgets {[round(e * 255, 2) for e in EPS]}/255, "
          f"{synth.default_device()}, {torch.get_num_threads()} threads, {clock} seconds")
    for name in args.models.split(","):
        model = synth.load_model(name)
        x, y = batch.tensor(model.device), torch.from_numpy(batch.labels).to(model.device)
        torch.manual_seed(0)
        ours, t_ours = timed(partial(attacks.pgd, model, x, y, EPS, steps=args.steps, progress=False))
        fixed, t_fixed = timed(partial(attacks.pgd, model, x, y, EPS, steps=args.steps, step="pgd",
                                       warm_steps=args.steps, progress=False))
        fb_acc, t_fb = timed(partial(foolbox_sweep, model, x, y, args.steps))
        ta_acc, t_ta = timed(partial(torchattacks_sweep, model, x, y, args.steps))
        rows = [("phosphene", ours.accuracy.tolist(), t_ours, ours.metadata["gradients"]),
                ("phosphene fixed", fixed.accuracy.tolist(), t_fixed, fixed.metadata["gradients"]),
                ("foolbox", fb_acc, t_fb, args.n * args.steps * len(EPS))]
        if ta_acc is not None:
            rows.append(("torchattacks", ta_acc, t_ta, args.n * args.steps * len(EPS)))
        print(f"\n{name} (clean accuracy {ours.clean_accuracy:.3f})")
        print(f"{'':<16} {'seconds':>8} {'gradients':>10}  " + "  ".join(f"{e * 255:>6g}" for e in EPS))
        for label, acc, t, grads in rows:
            print(f"{label:<16} {t:8.1f} {grads:10d}  " + "  ".join(f"{a:6.3f}" for a in acc))
        ok = all(a <= b + 1e-9 for a, b in zip(ours.accuracy.tolist(), fb_acc))
        line = f"speed-up: {t_fb / t_ours:.2f}x vs foolbox"
        if ta_acc is not None:
            ok = ok and all(a <= b + 1e-9 for a, b in zip(ours.accuracy.tolist(), ta_acc))
            line += f", {t_ta / t_ours:.2f}x vs torchattacks"
        else:
            line += " (torchattacks not installed: make bench installs it in .venv-bench)"
        print(line + f"; fixed steps: {t_fb / t_fixed:.2f}x vs foolbox")
        print(f"phosphene accuracy at or below every peer at every budget: {ok}")
        half = args.n // 2
        engine, bare = step_cost(model, x[:half], y[:half], args.cost_steps, args.repeats)
        print(f"per step ({half} images, runs of {args.cost_steps} steps, no early stop): "
              f"engine {engine * 1e3:.1f} ms, bare forward+backward+step {bare * 1e3:.1f} ms: {engine / bare:.3f}x")


if __name__ == "__main__":
    main()
