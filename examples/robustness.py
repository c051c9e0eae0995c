"""The VOneNet table for the embedded models: clean, white-box, corruption and mean accuracy.

Dapello et al. (2020) found that a fixed V1 front-end (VOneBlock) makes a network more robust to white-box attacks
and to common corruptions, while adversarial training buys more white-box robustness.  This runs the same
comparison on toy-standard, toy-robust (adversarially trained) and toy-vone (VOneBlock as V1) with
``attacks.robustness_table`` and writes robustness.md / .png / .csv to examples/results.

    python examples/robustness.py --n 128    # what examples/results/robustness.md holds; its time is printed
"""
import argparse
import time

import attacks

MODELS = ["toy-standard", "toy-robust", "toy-vone"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="held-out embedded images")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps of each attack (default: attacks.evaluate's 100)")
    parser.add_argument("--out", default="examples/results")
    args = parser.parse_args()
    t0 = time.perf_counter()
    table = attacks.robustness_table(MODELS, n=args.n, steps=args.steps)
    table.save(args.out)
    print(table.markdown())
    col = table.column
    print(f"white-box mean: toy-robust {col('toy-robust', 'whitebox_mean'):.1%}, "
          f"toy-vone {col('toy-vone', 'whitebox_mean'):.1%}, toy-standard {col('toy-standard', 'whitebox_mean'):.1%}")
    print(f"corruption mean: toy-vone {col('toy-vone', 'corruption_mean'):.1%}, "
          f"toy-standard {col('toy-standard', 'corruption_mean'):.1%}")
    print(f"three models in {time.perf_counter() - t0:.0f} s; robustness.md, .png, .csv in {args.out}")


if __name__ == "__main__":
    main()
