"""Engine speed: time per step of ``synth.optimize`` against bare loops on the same model and batch.

For each brain area: (1) the engine's step, (2) a bare hand-written step doing the same work (truncated forward
with torchvision's feature extractor, backward, Adam, clamp) — their ratio is the engine's overhead, goal <= 1.05 —
and (3) a bare full forward+backward through the whole network, which is what a loop without truncation pays;
(3)/(1) is the truncation speed-up.  Wall times on a shared 2-core machine drift by several percent between runs,
so the engine's fixed cost per step is also measured where the network costs least (one 32 px image).  If
torch-lucent is installed (``pip install -e .[bench]``), lucent's ``render_vis`` on the same objective, model and
batch is timed as a peer.
"""
import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from torchvision.models.feature_extraction import create_feature_extractor

import synth
from synth.engine.params import Pixels

# On the CPU, the process's CPU time (all threads): unlike wall time it does not count time the VM was descheduled,
# which dominates the noise on a shared machine.  On a GPU, wall time after synchronizing.
CLOCK = time.perf_counter if torch.cuda.is_available() else time.process_time


def per_step(fns: list[Callable[[int], None]], steps: int, repeats: int) -> list[float]:
    """Best (minimum) wall time per step of each ``fn(steps)`` over ``repeats`` runs, as timeit reports: on a
    shared machine noise only ever adds time.  Runs are interleaved in rotating order so drift hits all alike."""
    for fn in fns:
        fn(2)  # warm-up: extractor tracing, allocator
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        for k in (np.arange(len(fns)) + r) % len(fns):
            fn = fns[k]
            t = CLOCK()
            fn(steps)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[k].append((CLOCK() - t) / steps)
    return [min(t) for t in times]


def engine(model, layer: str, x0: torch.Tensor) -> Callable[[int], None]:
    """``steps`` engine steps maximizing channel 3 of ``layer`` from ``x0``."""
    def run(steps: int) -> None:
        synth.optimize(model, f"{layer}:3", Pixels(x0), steps=steps, progress=False)
    return run


def bare(model, layer: str, x0: torch.Tensor, truncated: bool) -> Callable[[int], None]:
    """The same ascent written by hand: truncated at ``layer`` or through the whole network to the logits."""
    node = model.layer(layer)
    net = create_feature_extractor(model.net, [node]) if truncated else model.net

    def run(steps: int) -> None:
        x = x0.clone().to(model.device).requires_grad_(True)
        opt = torch.optim.Adam([x], lr=0.05)
        for _ in range(steps):
            out = net((x - model.mean) / model.std)
            loss = -(out[node][:, 3].mean((1, 2)).sum() if truncated else out[:, 3].sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 1)
    return run


def lucent_peer(model, layer: str, x0: torch.Tensor) -> Callable[[int], None] | None:
    """lucent's render_vis on the same channel, model and batch (None when lucent is not installed)."""
    try:
        from lucent.optvis import objectives, param, render
    except ImportError:
        return None

    def run(steps: int) -> None:
        param_f = lambda: param.image(x0.shape[-1], batch=x0.shape[0], fft=False, decorrelate=False)  # noqa: E731
        render.render_vis(model, objectives.channel("net_" + layer.replace(".", "_"), 3), param_f, transforms=[],
                          thresholds=(steps,), show_image=False, progress=False, preprocess=False,
                          fixed_image_size=x0.shape[-1])
    return run


def main() -> None:
    """Print engine, bare-truncated and bare-full step times per area, and the lucent peer."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-standard")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: CPU time measures work only when no OpenMP thread spins idle;"
                         " 0 keeps torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = synth.load_model(args.model)
    size = model.input_size or 224
    x0 = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    print(f"{model.name}, batch {args.batch}, {size}px, {model.device}, {torch.get_num_threads()} threads; "
          f"{'wall' if CLOCK is time.perf_counter else 'CPU'} ms per step (best of {args.repeats} interleaved runs of "
          f"{args.steps} steps)")
    peer = lucent_peer(model, "IT", x0)
    print(f"{'area':<6} {'engine':>8} {'bare trunc':>10} {'overhead':>9} {'bare full':>10} {'trunc speed-up':>15}")
    for area in ("V1", "V2", "V4", "IT"):
        fns = [engine(model, area, x0), bare(model, area, x0, True), bare(model, area, x0, False)]
        e, b, f, *p = per_step(fns + ([peer] if peer and area == "IT" else []), args.steps, args.repeats)
        print(f"{area:<6} {e * 1e3:8.2f} {b * 1e3:10.2f} {e / b:8.3f}x {f * 1e3:10.2f} {f / e:14.2f}x")
    tiny = x0[:1, :, :32, :32]
    e1, b1 = per_step([engine(model, "IT", tiny), bare(model, "IT", tiny, True)], 200, args.repeats)
    print(f"fixed per-step overhead (batch 1, 32 px, where the network costs least): {(e1 - b1) * 1e6:.0f} us/step "
          f"= {(e1 - b1) / e:.2%} of the batch-{args.batch} IT step above")
    if peer is None:
        print("lucent not installed (make bench installs it in .venv-bench): peer skipped")
    else:
        print(f"peer lucent render_vis (same IT channel, pixels, no transforms), timed with the IT row: "
              f"{p[0] * 1e3:.2f} ms/step; lucent/engine = {p[0] / e:.2f}x")


if __name__ == "__main__":
    main()
