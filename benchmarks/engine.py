"""Engine speed: time per step of ``synth.optimize`` against bare loops on the same model and batch.

For each brain area: (1) the engine's step, (2) a bare hand-written step doing the same work (truncated forward
with torchvision's feature extractor, backward, Adam, clamp) — their ratio is the engine's overhead, goal <= 1.05 —
and (3) a bare full forward+backward through the whole network, which is what a loop without truncation pays;
(3)/(1) is the truncation speed-up.  If torch-lucent is installed (``pip install -e .[bench]``), lucent's
``render_vis`` on the same objective, model and batch is timed as a peer.
"""
import argparse
import time
from collections.abc import Callable

import torch
from torchvision.models.feature_extraction import create_feature_extractor

import synth
from synth.params import Pixels


def per_step(fn, steps: int, repeats: int) -> float:
    """Median over repeats of the wall time per step of ``fn(steps)``."""
    fn(2)  # warm-up: extractor tracing, allocator
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(steps)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) / steps)
    return sorted(times)[len(times) // 2]


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
        render.render_vis(model, objectives.channel(layer, 3), param_f, transforms=[], thresholds=(steps,),
                          show_image=False, progress=False, preprocess=False, fixed_image_size=x0.shape[-1])
    return run


def main() -> None:
    """Print engine, bare-truncated and bare-full step times per area, and the lucent peer."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-standard")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    model = synth.load_model(args.model)
    size = model.input_size or 224
    x0 = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    print(f"{model.name}, batch {args.batch}, {size}px, {model.device}, {torch.get_num_threads()} threads; "
          f"ms per step (median of {args.repeats} runs of {args.steps} steps)")
    print(f"{'area':<6} {'engine':>8} {'bare trunc':>10} {'overhead':>9} {'bare full':>10} {'trunc speed-up':>15}")
    for area in ("V1", "V2", "V4", "IT"):
        e = per_step(engine(model, area, x0), args.steps, args.repeats)
        b = per_step(bare(model, area, x0, True), args.steps, args.repeats)
        f = per_step(bare(model, area, x0, False), args.steps, args.repeats)
        print(f"{area:<6} {e * 1e3:8.2f} {b * 1e3:10.2f} {e / b:8.3f}x {f * 1e3:10.2f} {f / e:14.2f}x")
    peer = lucent_peer(model, "IT", x0)
    if peer is None:
        print("lucent not installed (pip install -e .[bench] in a separate venv): peer skipped")
    else:
        e = per_step(engine(model, "IT", x0), args.steps, args.repeats)
        p = per_step(peer, args.steps, args.repeats)
        print(f"peer lucent render_vis, IT channel: {p * 1e3:.2f} ms/step; engine {e * 1e3:.2f} ms/step; "
              f"lucent/engine = {p / e:.2f}x")


if __name__ == "__main__":
    main()
