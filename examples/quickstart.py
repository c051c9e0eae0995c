"""First steps with phosphene: load a model, render images of the embedded world, look inside the model.

Run:  .venv/bin/python examples/quickstart.py [--model toy-robust] [--n 8]
"""
import argparse

import torch

import synth


def main() -> None:
    """Load, render, predict, and show the brain-area layers."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-standard", help="any name from `phosphene models`")
    ap.add_argument("--n", type=int, default=8, help="images to render (one category after another)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    model = synth.load_model(args.model)  # a ProbeModel: [0,1] pixels in, logits out, on the best device
    batch = synth.render(args.n, split="test", world=synth.World(seed=args.seed))
    x = batch.tensor(model.device)

    with torch.no_grad():
        probs = model(x).softmax(dim=1)
    print(f"{model.name} on {args.n} held-out images:")
    for meta, p in zip(batch.metadata, probs):
        guess = model.classes[int(p.argmax())]
        print(f"  {meta['category']:>8} ({meta['variation']:<6} variation) -> {guess:<8} p={float(p.max()):.2f}"
              f"{'' if guess == meta['category'] else '   (wrong)'}")

    with torch.no_grad():
        acts = model.activations(x, ["V1", "V2", "V4", "IT", "behavior"])  # runs only as far as needed
    print("brain-area layers and their response shapes (images × channels × height × width):")
    for area, a in acts.items():
        print(f"  {area:<9} {model.areas[area]:<16} {tuple(a.shape)}")


if __name__ == "__main__":
    main()
