"""Metamers: steps and time to a normalized error of 0.05 at IT, phosphene against plenoptic's ``Metamer``.

Same model, same 16 reference images of the embedded test split, same start (N(0.5, (1/20)²) noise).  phosphene
runs ``metamers.generate`` with its defaults and its stopping rule; plenoptic 2.x runs ``po.Metamer`` with its
defaults (Adam 0.01 with AMSGrad on the MSE of the representation, range penalty 0.1), advanced in chunks of
``--chunk`` iterations, after each of which the normalized error ‖a − a*‖ / ‖a*‖ of every image (clipped to
[0, 1], as it would be saved) is measured.  Printed per model: the step and the time at which the median image
first reaches the target, the fraction of images at the target by ``--steps``, the time per step, and the ratio
plenoptic / phosphene of the times to the same fraction at the target: phosphene's whole run (until every image
stopped, or ``--steps``) against plenoptic's optimization time (measurement excluded) until as many of its images
are at the target (goal: >= 3x, within 2400 steps).  Peers live in
``make bench``'s environment.
"""
import argparse
import time

import torch

import metamers
import synth
from metamers.generate import INIT_NOISE


def references(n: int) -> torch.Tensor:
    """``n`` test images of the embedded world, all categories in turn."""
    return synth.render(n, "test", start=100).tensor()


def errors(model: synth.ProbeModel, layer: str, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """‖a − a*‖ / ‖a*‖ per image, noise off, images clipped to [0, 1]."""
    with torch.no_grad():
        a = model.without_noise().activations(images.clamp(0, 1), layer)[layer]
    return metamers.nse(a, target).sqrt()


def ours(model: synth.ProbeModel, refs: torch.Tensor, stage: str, steps: int, error: float) -> dict:
    """phosphene's run to the target: when the median image first reached it, and at the end."""
    t0 = time.perf_counter()
    # one run from the same start as plenoptic's (no retries: their steps would mix with the first run's)
    r = metamers.generate(model, refs, stage, steps=steps, error=error, retries=0, progress=False)
    seconds = time.perf_counter() - t0
    err = -r.run.history                        # steps × N; a stopped image keeps its last value
    reached = (err <= error).float().mean(1)
    first = int((reached >= 0.5).nonzero()[0]) + 1 if bool((reached >= 0.5).any()) else None
    per_step = seconds / max(1, r.metadata["steps_run"])
    final = r.stats[r.stage]["error"]
    return {"median_step": first, "median_seconds": first * per_step if first else None,
            "fraction": float((final <= error).float().mean()), "passed": r.pass_rate, "per_step": per_step,
            "steps_run": r.metadata["steps_run"], "seconds": seconds, "median_error": float(final.median())}


def plenoptic(model: synth.ProbeModel, refs: torch.Tensor, stage: str, steps: int, error: float,
              chunk: int) -> dict:
    """plenoptic's Metamer with its defaults from the same start, measured every ``chunk`` iterations."""
    import plenoptic as po

    layer = model.layer(stage)
    model = model.without_noise()  # plenoptic's run on the mean response, as phosphene's metamers

    class Stage(torch.nn.Module):
        def forward(self, x):
            return model.activations(x, layer, check=False)[layer]

    with torch.no_grad():
        target = model.activations(refs, layer)[layer]
    gen = torch.Generator().manual_seed(0)
    start = (0.5 + INIT_NOISE * torch.randn(refs.shape, generator=gen)).clamp(0, 1).to(refs.device)
    met = po.Metamer(refs, Stage().eval())
    met.setup(start)
    done, first, first_s, seconds, curve = 0, None, None, 0.0, []
    while done < steps:
        t0 = time.perf_counter()
        met.synthesize(chunk, stop_criterion=-1.0)  # never stop on plenoptic's own convergence rule
        seconds += time.perf_counter() - t0
        done += chunk
        e = errors(model, layer, met.metamer.detach(), target)
        curve.append((done, seconds, float((e <= error).float().mean())))
        if first is None and curve[-1][2] >= 0.5:
            first, first_s = done, seconds
    return {"median_step": first, "median_seconds": first_s, "fraction": float((e <= error).float().mean()),
            "per_step": seconds / done, "steps_run": done, "seconds": seconds, "median_error": float(e.median()),
            "curve": curve}


def same_fraction(a: dict, b: dict) -> tuple[int, float] | None:
    """plenoptic's steps and seconds (run ``b``) to bring as many images to the target as phosphene's whole run
    (``a``) did; None if it never did."""
    return next(((k, s) for k, s, f in b["curve"] if f >= a["fraction"] - 1e-9), None)


def main() -> None:
    """Run both on each model and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="toy-standard,toy-robust")
    ap.add_argument("--stage", default="IT")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2400, help="phosphene's budget (the goal's 2400)")
    ap.add_argument("--peer-steps", type=int, default=4800, help="plenoptic's budget")
    ap.add_argument("--chunk", type=int, default=100)
    ap.add_argument("--error", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    refs = references(args.n)
    for name in args.models.split(","):
        model = synth.load_model(name, device="cpu")
        a = ours(model, refs, args.stage, args.steps, args.error)
        b = plenoptic(model, refs, args.stage, args.peer_steps, args.error, args.chunk)
        for who, r in (("phosphene", a), ("plenoptic", b)):
            at = (f"median image at {args.error:g} after {r['median_step']} steps, {r['median_seconds']:.0f} s"
                  if r["median_step"] else f"median image never at {args.error:g} in {r['steps_run']} steps")
            print(f"{name} {args.stage} {who:>9}: {at}; {r['fraction']:.0%} at {args.error:g} after "
                  f"{r['steps_run']} steps (median error {r['median_error']:.3f})"
                  + (f", {r['passed']:.0%} passed the criterion and target" if "passed" in r else "")
                  + f"; {r['per_step'] * 1e3:.0f} ms/step, {r['seconds']:.0f} s", flush=True)
        same = same_fraction(a, b)
        if same:
            print(f"{name}: plenoptic took {same[0]} steps, {same[1]:.0f} s to bring {a['fraction']:.0%} of the images "
                  f"to {args.error:g}: {same[1] / a['seconds']:.1f}x phosphene's whole run ({a['seconds']:.0f} s)")
        else:
            print(f"{name}: plenoptic brought {b['fraction']:.0%} of the images to {args.error:g} in {b['steps_run']} "
                  f"steps ({b['seconds']:.0f} s, {b['seconds'] / a['seconds']:.1f}x phosphene's whole run) against "
                  f"phosphene's {a['fraction']:.0%}")


if __name__ == "__main__":
    main()
