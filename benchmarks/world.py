"""Rendering speed of the embedded world: 10,000 images, serial and in 2 processes (target: < 60 s on 2 cores)."""
import argparse
import time

from synth.world.data import World, render


def main() -> None:
    """Render the set serially and in parallel; print rates and the ratio to the target."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    render(16, "train", World())  # load the background photographs once
    times = {}
    for workers in (1, args.workers):
        t = time.perf_counter()
        render(args.n, "train", World(), workers=workers)
        times[workers] = time.perf_counter() - t
        print(f"{args.n} images, {workers} process(es): {times[workers]:.1f} s ({args.n / times[workers]:.0f} img/s)")
    print(f"parallel speed-up {times[1] / times[args.workers]:.2f}x; "
          f"{args.n} images in {times[args.workers]:.1f} s vs the 60 s target: ratio {times[args.workers] / 60:.2f}")


if __name__ == "__main__":
    main()
