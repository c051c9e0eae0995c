"""Truncated activation extraction vs the full forward pass, per brain area, on the same model and batch.

Prints time(full forward) / time(activations up to the area): how much work truncation saves.
"""
import argparse
import time
from functools import partial

import torch

import synth


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after one warm-up."""
    fn()
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - t)
    return sorted(samples)[len(samples) // 2]


def main() -> None:
    """Time the full forward and each area's truncated extraction."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-standard")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    model = synth.load_model(args.model)
    size = model.input_size or 224
    x = torch.rand(args.batch, 3, size, size, device=model.device)
    with torch.no_grad():
        full = timed(lambda: model(x), args.repeats)
        print(f"{model.name}, batch {args.batch}, {size}px on {model.device}: full forward {full * 1e3:.1f} ms")
        for area, layer in model.areas.items():
            t = timed(partial(model.activations, x, area), args.repeats)
            print(f"  {area:<9} ({layer:<16}) {t * 1e3:7.1f} ms   full/truncated = {full / t:5.2f}x")


if __name__ == "__main__":
    main()
