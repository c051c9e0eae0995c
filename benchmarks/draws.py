"""EOT draws through a noisy model: the Gabor pass shared across draws vs the pass over stacked copies.

Prints time(k stacked copies) / time(activations(x, draws=k)) for a forward+backward of the logits, on the same
model, batch and k: what running VOneNet's noise-free V1 once per image saves every attack step.
"""
import argparse

import torch
from activations import timed

import synth


def main() -> None:
    """Time one EOT step (forward and input gradient) both ways."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-vone")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--draws", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    model = synth.load_model(args.model)
    size = model.input_size or 224
    x = torch.rand(args.batch, 3, size, size, device=model.device)
    k = args.draws

    def step(inputs: torch.Tensor, draws: int) -> None:
        xx = inputs.clone().requires_grad_(True)
        z = model.activations(xx, "logits", check=False, draws=draws)["logits"]
        z.view(k, args.batch, -1).mean(0).logsumexp(1).sum().backward()

    shared = timed(lambda: step(x, k), args.repeats)
    copies = timed(lambda: step(torch.cat([x] * k), 1), args.repeats)
    print(f"{model.name}, batch {args.batch} x {k} draws, {size}px on {model.device}: stacked copies "
          f"{copies * 1e3:.0f} ms, shared pass {shared * 1e3:.0f} ms, ratio {copies / shared:.2f}x")


if __name__ == "__main__":
    main()
