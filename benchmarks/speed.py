"""Speed and memory on one model, every ratio from one run: engine options, attacks and metamers against peers.

On a GPU the model is torchvision's ResNet-50 at 224 px (random weights: speed does not depend on them); on the CPU
the embedded toy-standard at 64 px with smaller batches and runs.  Printed as one table:

- the engine's step (``synth.optimize``, channel 3 of ``--layer``) against a bare hand-written truncated
  forward+backward+Adam step on the same batch (``benchmarks/engine.py``'s ``bare``);
- the speed-up over that fp32 step of each option: ``precision='bf16'``, ``channels_last``, ``compile``
  (inductor; its warm-up is timed apart) — and ``checkpoint_activations``' cost in time and its saving in bytes
  kept for the backward pass (``synth.engine.memory.step_bytes``);
- an L-inf PGD sweep (5 budgets, ``--pgd-n`` images, ``--pgd-steps`` steps): ``attacks.pgd`` against foolbox's
  LinfPGD and torchattacks' PGD on the same model, images and labels (``benchmarks/attacks.py``'s sweeps);
- metamers at ``--stage``: phosphene's whole run against plenoptic's time to bring as many images to the error
  target (``benchmarks/metamer_speed.py``'s runs);
- ``synth.max_batch``'s answer for the engine step, fp32, bf16 and with checkpointed activations: by trial on a
  GPU, against ``--memory`` bytes elsewhere.

Step times are the best of ``--repeats`` interleaved runs (``benchmarks/engine.py``'s ``per_step``): CPU time of this
process with one thread on the CPU, wall time after synchronizing on a GPU.  Peers torchattacks and plenoptic live in
``make bench``'s environment (.venv-bench); where one is missing its row says so.
"""
import argparse
import importlib.util
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # benchmarks/attacks.py is not the package

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import attacks  # noqa: E402
import synth  # noqa: E402
from synth.engine.memory import step_bytes  # noqa: E402
from synth.engine.params import Pixels  # noqa: E402

sys.path.append(str(HERE))
import metamer_speed  # noqa: E402
from engine import CLOCK, bare, per_step  # noqa: E402


def _module(name: str, path: Path):
    """A benchmark file imported under another name (benchmarks/attacks.py would shadow the attacks package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


attack_speed = _module("attack_speed", HERE / "attacks.py")
OPTIONS = {"bf16": {"precision": "bf16"}, "channels_last": {"channels_last": True}, "compile": {"compile": True},
           "checkpoint_activations": {"checkpoint_activations": True}}


def engine_step(model: synth.ProbeModel, layer: str, x0: torch.Tensor, **options):
    """``steps`` engine steps maximizing channel 3 of ``layer`` from ``x0``, with the engine ``options``."""
    def run(steps: int) -> None:
        synth.optimize(model, f"{layer}:3", Pixels(x0), steps=steps, progress=False, **options)
    return run


def images(n: int, size: int, device: torch.device) -> torch.Tensor:
    """``n`` test images of the embedded world at ``size`` px, on ``device``."""
    x = synth.render(n, "test", start=100).tensor()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return x.to(device)


def steps_table(model, layer: str, size: int, args) -> list[tuple[str, str, str]]:
    """Engine step against the bare step, and each option's speed-up over the fp32 engine step."""
    x0 = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    warm = time.perf_counter()
    engine_step(model, layer, x0, **OPTIONS["compile"])(2)
    warm = time.perf_counter() - warm
    fns = [engine_step(model, layer, x0), bare(model, layer, x0, True)]
    fns += [engine_step(model, layer, x0, **o) for o in OPTIONS.values()]
    plain, hand, *opts = per_step(fns, args.steps, args.repeats)
    rows = [("engine step", f"{plain * 1e3:.2f} ms", ""),
            ("bare truncated forward+backward+Adam step", f"{hand * 1e3:.2f} ms", f"engine/bare {plain / hand:.3f}x")]
    for (name, _), t in zip(OPTIONS.items(), opts):
        if name == "checkpoint_activations":
            kept = [step_bytes(model, f"{layer}:3", args.batch, size=size, **o) for o in ({}, OPTIONS[name])]
            rows.append((f"{name}: step time, bytes kept for backward", f"{t * 1e3:.2f} ms, {kept[1] / 2**20:.1f} MiB",
                         f"time {t / plain:.2f}x fp32, bytes {kept[1] / kept[0]:.3f}x"))
        else:
            note = f" (warm-up {warm:.0f} s)" if name == "compile" else ""
            rows.append((f"{name} step{note}", f"{t * 1e3:.2f} ms", f"speed-up {plain / t:.2f}x over fp32"))
    return rows


def pgd_table(model, size: int, args) -> list[tuple[str, str, str]]:
    """One L-inf PGD sweep by phosphene, foolbox and torchattacks: seconds, and the peers' time over ours."""
    x = images(args.pgd_n, size, model.device)
    with torch.no_grad():
        y = model(x).argmax(1)  # the model's own verdicts: every image starts correctly classified
    torch.manual_seed(0)
    ours, t_ours = attack_speed.timed(lambda: attacks.pgd(model, x, y, attack_speed.EPS, steps=args.pgd_steps,
                                                          progress=False))
    fb, t_fb = attack_speed.timed(lambda: attack_speed.foolbox_sweep(model, x, y, args.pgd_steps))
    ta, t_ta = attack_speed.timed(lambda: attack_speed.torchattacks_sweep(model, x, y, args.pgd_steps))
    acc = lambda a: "/".join(f"{v:.2f}" for v in a)  # noqa: E731
    label = f"PGD sweep, {len(attack_speed.EPS)} budgets, {args.pgd_n} images, {args.pgd_steps} steps"
    rows = [(f"{label}: phosphene", f"{t_ours:.1f} s", f"robust acc {acc(ours.accuracy.tolist())}"),
            ("  foolbox LinfPGD", f"{t_fb:.1f} s", f"{t_fb / t_ours:.2f}x phosphene's time; acc {acc(fb)}")]
    rows.append(("  torchattacks PGD", f"{t_ta:.1f} s", f"{t_ta / t_ours:.2f}x phosphene's time; acc {acc(ta)}")
                if ta is not None else ("  torchattacks PGD", "not installed", "make bench installs it"))
    return rows


def metamer_table(model, size: int, args) -> list[tuple[str, str, str]]:
    """phosphene's metamer run at the stage against plenoptic's time to the same fraction at the error target."""
    refs = images(args.metamer_n, size, model.device)
    a = metamer_speed.ours(model, refs, args.stage, args.metamer_steps, args.error)
    label = f"metamers at {args.stage} to error {args.error:g}, {args.metamer_n} images"
    rows = [(f"{label}: phosphene", f"{a['seconds']:.1f} s",
             f"{a['fraction']:.0%} at target after {a['steps_run']} steps")]
    try:
        b = metamer_speed.plenoptic(model, refs, args.stage, args.peer_steps, args.error, args.chunk)
    except ImportError:
        return rows + [("  plenoptic Metamer", "not installed", "make bench installs it")]
    same = metamer_speed.same_fraction(a, b) if a["fraction"] > 0 else None
    if same:
        rows.append(("  plenoptic Metamer", f"{same[1]:.1f} s",
                     f"{same[1] / a['seconds']:.2f}x phosphene's time to bring {a['fraction']:.0%} to target"))
    else:
        rows.append(("  plenoptic Metamer", f"{b['seconds']:.1f} s",
                     f"{b['fraction']:.0%} at target after {b['steps_run']} steps; no common fraction to time"))
    return rows


def batch_table(model, layer: str, size: int, args) -> list[tuple[str, str, str]]:
    """``synth.max_batch`` for the benchmark's engine step, plain and with the memory-saving options."""
    how = "by trial on the device" if model.device.type == "cuda" and args.memory is None else \
        f"within {args.memory / 2**20:.0f} MiB" if args.memory else "within the available memory"
    rows = []
    for name, options in (("fp32", {}), ("bf16", OPTIONS["bf16"]),
                          ("checkpoint_activations", OPTIONS["checkpoint_activations"])):
        b = synth.max_batch(model, f"{layer}:3", size=size, memory=args.memory, limit=args.limit, **options)
        rows.append((f"max_batch, {name}", f"{b}", how + (f" (limit {args.limit})" if b == args.limit else "")))
    return rows


def main() -> None:
    """Run every part on one model and print the table."""
    gpu = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50" if gpu else "toy-standard")
    ap.add_argument("--layer", default="layer4" if gpu else "IT", help="the engine step's layer")
    ap.add_argument("--stage", default="IT", help="the metamers' stage")
    ap.add_argument("--size", type=int, default=None, help="pixels (default: the model's input size)")
    ap.add_argument("--batch", type=int, default=32 if gpu else 8)
    ap.add_argument("--steps", type=int, default=20, help="steps per timed run of the engine step")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--pgd-n", type=int, default=64 if gpu else 32)
    ap.add_argument("--pgd-steps", type=int, default=20 if gpu else 10)
    ap.add_argument("--metamer-n", type=int, default=16 if gpu else 4)
    ap.add_argument("--metamer-steps", type=int, default=2400 if gpu else 800)
    ap.add_argument("--peer-steps", type=int, default=4800 if gpu else 1600)
    ap.add_argument("--chunk", type=int, default=100 if gpu else 50)
    ap.add_argument("--error", type=float, default=0.05)
    ap.add_argument("--memory", type=float, default=None if gpu else 256 * 2**20,
                    help="max_batch's budget in bytes (default: trial on a GPU, 256 MiB on the CPU)")
    ap.add_argument("--limit", type=int, default=8192 if gpu else 4096, help="max_batch's largest batch")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 keeps torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.memory = int(args.memory) if args.memory else None
    model = synth.load_model(args.model)
    size = args.size or model.input_size or 224
    layer = model.layer(args.layer)
    clock = "wall" if CLOCK is time.perf_counter else "CPU"
    print(f"{model.name} ({model.info.get('weights', 'embedded')}) at {size} px on {model.device}, "
          f"{torch.get_num_threads()} threads, {clock} time; engine step: {layer}:3, batch {args.batch}, best of "
          f"{args.repeats} interleaved runs of {args.steps} steps", flush=True)
    rows = []
    for part in (lambda: steps_table(model, layer, size, args), lambda: pgd_table(model, size, args),
                 lambda: metamer_table(model, size, args), lambda: batch_table(model, layer, size, args)):
        rows += part()
    width = max(len(r[0]) for r in rows)
    value = max(len(r[1]) for r in rows)
    for what, v, ratio in rows:
        print(f"{what:<{width}}  {v:>{value}}  {ratio}")


if __name__ == "__main__":
    main()
