"""The README's command-line tour, run end to end with each command's time, and a sheet of what it made.

Run:  .venv/bin/python examples/tour.py [--root DIR] [--slow afraz,robustness]

Every command is the README's, run as a user runs it: a separate ``phosphene`` process each (cold start: Python,
torch and the model load count), timed on the wall clock, in ``--root`` (default: a fresh ``runs/tour``), so its
folders are the tour's own (``stimuli/``, ``responses.npz``, ``readouts/``, ``runs/...``).  ``--slow`` adds the
slow ones by name (the Afraz experiment, the robustness table); it prints the machine the times are from.  The sheet
(``docs/tour.png`` with ``--sheet``) shows embedded images, a stretch image, the batch's images, an attack and a
metamer, each labelled with the command that made it.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOUR = [
    ["models"],
    ["images", "--out", "stimuli", "--n", "64", "--seed", "1"],
    ["synth", "--model", "toy-standard", "--objective", "stretch(IT:12)", "--steps", "256", "--seed", "7",
     "--out", "runs/it12"],
    ["readout", "simulate", "--out", "responses.npz"],
    ["readout", "fit", "responses.npz", "--model", "toy-standard", "--layer", "V4", "--name", "v4sites"],
    ["synth", "--readout", "v4sites", "--objective", "stretch(V4:readout:0)", "--out", "runs/v4site0"],
    ["batch", str(ROOT / "examples/stretch_it.toml"), "--out", "runs/stretch_it", "--jobs", "2"],
    ["attack", "stimuli/*.png", "--model", "toy-robust", "--eps", "1/255,2/255,4/255", "--out", "runs/attack"],
    ["metamer", "stimuli/img_test_000000.png", "--model", "toy-robust", "--stage", "IT", "--out", "runs/metamer"],
]
SLOW = {
    "robustness": ["robustness", "--models", "toy-standard,toy-robust,toy-vone", "--out", "runs/robustness"],
    "afraz": ["microstim", "afraz", "--model", "toy-topo-dense", "--out", "runs/afraz"],
}


def machine() -> str:
    """The CPU, its cores and its load when the tour starts: what the times are from."""
    import platform

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor()) if Path("/proc/cpuinfo").is_file() else platform.processor()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{model}, {os.cpu_count()} cores, load average {load:.1f} at the start"


def run_tour(root: Path, slow: list[str]) -> dict[str, float]:
    """Run each command in ``root`` as its own process; returns its wall time by command line.  Stops at the first
    failure."""
    import glob
    import subprocess

    root.mkdir(parents=True, exist_ok=True)
    os.chdir(root)
    entry = Path(sys.executable).parent / "phosphene"  # the console script a user runs
    start = [str(entry)] if entry.is_file() else [sys.executable, "-m", "synth.cli"]
    times = {}
    for command in TOUR + [SLOW[name] for name in slow]:
        line = "phosphene " + " ".join(a if " " not in a and "(" not in a else repr(a) for a in command)
        argv = [a for pattern in command for a in (sorted(glob.glob(pattern)) if "*" in pattern else [pattern])]
        print(f"$ {line}", flush=True)
        t = time.perf_counter()
        status = subprocess.run([*start, *argv], stdout=subprocess.DEVNULL).returncode
        times[line] = time.perf_counter() - t
        print(f"  ({times[line]:.1f} s)", flush=True)
        if status != 0:
            raise SystemExit(f"tour stopped: exit status {status}")
    return times


def sheet(root: Path, path: Path) -> Path:
    """One figure of what the tour made, each panel titled with its command."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synth.files import read_png

    def img(p: Path):
        return read_png(p)[0].permute(1, 2, 0).numpy()

    every = sorted((root / "stimuli").glob("*.png"))
    batch = sorted((root / "runs/stretch_it").glob("*_s0_*.png"))[:4]
    fooled = [p for p in sorted((root / "runs/attack/eps_2-255").glob("*.png")) if read_png(p)[1]["success"]][:2]
    metamer = sorted((root / "runs/metamer").glob("*_IT.png"))[:1]
    with open(root / "stimuli/metadata.csv", newline="") as f:
        category = {r["file"]: r["category"] for r in csv.DictReader(f)}
    panels = [(img(p), f"images: {category.get(p.name, '')}") for p in every[:4]]
    panels += [(img(root / "runs/it12/image_000.png"), "synth stretch(IT:12)"),
               (img(root / "runs/v4site0/image_000.png"), "synth stretch(V4:readout:0)")]
    panels += [(img(p), "batch " + read_png(p)[1]["objective"]) for p in batch]
    for p in fooled:  # the CLI attacks the files in the order given: index i is the i-th file
        meta = read_png(p)[1]
        panels += [(img(every[meta["index"]]), f"clean: {meta['label']}"),
                   (img(p), f"4/255 attack: {meta['prediction']}")]
    for p in metamer:
        panels += [(img(root / "stimuli/img_test_000000.png"), "metamer reference"), (img(p), "IT metamer")]
    cols = 6
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.8))
    for ax in axes.flat:
        ax.axis("off")
    for ax, (im, title) in zip(axes.flat, panels):
        ax.imshow(im)
        ax.set_title(title, fontsize=6.5)
    fig.suptitle("what the README's tour makes (examples/tour.py)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    """Run the tour, print the times, draw the sheet."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT / "runs/tour"), help="folder the tour runs in (default runs/tour)")
    ap.add_argument("--slow", default="", help=f"also these slow steps, comma-separated: {', '.join(SLOW)}")
    ap.add_argument("--sheet", default=None, help="where to draw the sheet (default ROOT/tour.png)")
    args = ap.parse_args()
    root = Path(args.root).resolve()
    out = Path(args.sheet).resolve() if args.sheet else root / "tour.png"  # before the tour moves into root
    slow = [s for s in args.slow.split(",") if s]
    unknown = [s for s in slow if s not in SLOW]
    if unknown:
        raise SystemExit(f"unknown slow step {unknown[0]!r}: choose from {', '.join(SLOW)}")
    print(machine(), flush=True)
    times = run_tour(root, slow)
    print(f"sheet: {sheet(root, out)}")
    print("times: " + "; ".join(f"{line.split(' --out')[0]}: {t:.1f} s" for line, t in times.items()))


if __name__ == "__main__":
    main()
