"""The ``phosphene`` command: parse arguments, call the library, print.  No algorithm lives here."""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence

from synth.errors import PhospheneError
from synth.version import __version__
from synth.zoo.catalog import TOPOGRAPHIC


def _load(args: argparse.Namespace, name: str, weights: str | None, **options):
    """``load_model``, refusing an architecture without trained weights unless --random-weights asks for one."""
    from synth.zoo.models import load_model, require_trained

    model = load_model(name, weights=weights, **options)
    if getattr(args, "random_weights", False):
        return model
    return require_trained(model, "pass --weights PATH, a checkpoint file (e.g. torchvision's "
                                  "resnet50-0676ba61.pth or a Madry robust ResNet-50), or --random-weights to probe "
                                  "the untrained network on purpose")


def _models(args: argparse.Namespace) -> None:
    from synth.zoo.catalog import (
        BRAIN_SCORE_AREAS,
        CORNET_NAMES,
        GENERATORS_DIR,
        available_generators,
        embedded_models,
        torchvision_models,
        white_box_name,
    )

    if args.name is None:
        print("embedded (trained on the embedded object set; weights ship with phosphene):")
        for name, card in embedded_models().items():
            m, r = card["metrics"], card["metrics"]["pgd_linf"]
            print(f"  {name:<16} test top-1 {m['test_top1']:.1%}, Linf {white_box_name(r)} at {r['eps_255']:g}/255 "
                  f"{r['accuracy']:.1%} (foolbox {r['foolbox']:.1%}){', stochastic' if m.get('stochastic') else ''}")
        print("generators (for --param / --code generator:NAME; DeePSiM fc6 as generator:PATH):")
        for name in available_generators():
            m = json.loads((GENERATORS_DIR / f"{name}.json").read_text())["metrics"]
            print(f"  {name:<16} {m['confident_share']:.1%} of samples classified by {m['judge']} with confidence "
                  f">= {m['confidence']:g}, {m['categories_present']} categories")
        print("CORnet (architecture in phosphene; weights from a local file via --weights):")
        for name in CORNET_NAMES:
            print(f"  {name}")
        mapped = [n for n in torchvision_models() if n in BRAIN_SCORE_AREAS]
        print(f"torchvision ({len(torchvision_models())} architectures; "
              f"Brain-Score area maps for: {', '.join(mapped)}):")
        print(textwrap.fill(" ".join(torchvision_models()), width=100, initial_indent="  ", subsequent_indent="  "))
        print("Details: phosphene models NAME [--weights PATH]")
        return
    import torch

    from synth.zoo.models import load_model

    model = load_model(args.name, weights=args.weights, device="cpu")
    print(f"{model.name}: {len(model.classes)} classes ({', '.join(model.classes[:8])}"
          f"{', ...' if len(model.classes) > 8 else ''})")
    print(f"weights: {model.info.get('weights')}")
    size = model.input_size or 224
    layers = model.layers if args.layers else list(dict.fromkeys(model.areas.values()))
    shapes = {}
    if layers:
        with torch.no_grad():
            acts = model.activations(torch.full((1, 3, size, size), 0.5), layers)
        shapes = {k: tuple(v.shape[1:]) for k, v in acts.items()}
    print("brain areas:" if model.areas else "brain areas: none committed (pass areas=... / use layer names)")
    for area, layer in model.areas.items():
        print(f"  {area:<9} -> {layer:<28} {shapes.get(layer, '')}")
    if args.layers:
        print(f"layers ({len(model.layers)}):")
        for layer in model.layers:
            print(f"  {layer:<40} {shapes.get(layer, '')}")
    else:
        print(f"{len(model.layers)} layers (list them with --layers)")


def _images(args: argparse.Namespace) -> None:
    from synth.world.data import World, render, write_folder

    world = World(size=args.size, seed=args.seed, variation=args.variation)
    batch = render(args.n, args.split, world, category=args.category, workers=args.workers, progress=True)
    path = write_folder(batch, args.out)
    counts = {}
    for meta in batch.metadata:
        counts[meta["category"]] = counts.get(meta["category"], 0) + 1
    print(f"wrote {len(batch)} images to {args.out} ({', '.join(f'{k} {v}' for k, v in counts.items())}); "
          f"metadata in {path}")


def _train(args: argparse.Namespace) -> None:
    from synth.errors import UnknownNameError
    from synth.training.generators import GENERATOR_RECIPES, remeasure_generator, train_generator
    from synth.training.recipes import RECIPES, WEIGHTS_DIR, remeasure, train
    from synth.zoo.catalog import white_box_name
    from synth.zoo.generators import GENERATORS_DIR

    if args.name not in RECIPES and args.name not in GENERATOR_RECIPES:
        raise UnknownNameError("recipe", args.name, [*RECIPES, *GENERATOR_RECIPES])
    if args.name in GENERATOR_RECIPES:
        args.out = args.out or str(GENERATORS_DIR)
        if args.card_only:
            card = remeasure_generator(args.name, out_dir=args.out, workers=args.workers)
        else:
            card = train_generator(args.name, out_dir=args.out, workers=args.workers, epochs=args.epochs)
        m = card["metrics"]
        print(f"{card['name']}: {m['confident_share']:.1%} of {m['n']} samples classified by {m['judge']} with "
              f"confidence >= {m['confidence']:g} (real images {m['real_confident_share']:.1%}), "
              f"{m['categories_present']} of {len(m['histogram'])} categories among them; card in {args.out}")
        return
    args.out = args.out or str(WEIGHTS_DIR)
    if args.card_only:
        card = remeasure(args.name, out_dir=args.out, workers=args.workers)
    else:
        card = train(args.name, out_dir=args.out, workers=args.workers, epochs=args.epochs)
    m, r = card["metrics"], card["metrics"]["pgd_linf"]
    print(f"{card['name']}: test top-1 {m['test_top1']:.1%}, Linf {white_box_name(r)} at {r['eps_255']:g}/255 "
          f"{r['accuracy']:.1%} (foolbox PGD-{r['steps']} {r['foolbox']:.1%}); card in {args.out}")


def _readout_path(name: str) -> str:
    """A readout given by path, or by name in the readouts folder ($PHOSPHENE_READOUTS, default ./readouts)."""
    import os
    from pathlib import Path

    path = Path(name)
    if path.with_suffix(".pt").is_file():
        return str(path)
    return str(Path(os.environ.get("PHOSPHENE_READOUTS", "readouts")) / name)


def _load_with_readouts(args: argparse.Namespace):
    """The command's --model (as ``_load`` gives it) with every --readout attached, for objectives on their sites."""
    from synth.neuro.readouts import Readout

    model = _load(args, args.model, args.weights)
    for name in args.readout:
        model.add_readout(Readout.load(_readout_path(name)))
    return model


def _synth(args: argparse.Namespace) -> None:
    from synth.engine.constraints import stimulus_controls
    from synth.neuro.evolve import evolve
    from synth.neuro.synthesis import synthesize

    model = _load_with_readouts(args)
    size = args.size or model.input_size
    if args.evolve:
        result = evolve(model, args.objective, code=args.code, optimizer=args.optimizer,
                        population=args.population, generations=args.steps, size=size, seed=args.seed)
    else:
        constraints = stimulus_controls(size, args.contrast, args.aperture, args.grayscale)
        result = synthesize(model, args.objective, n=args.n, size=size, param=args.param, steps=args.steps,
                            lr=args.lr, seed=args.seed, transforms=None if args.no_transforms else "standard",
                            constraints=constraints, relu_override=args.relu_override, **_speed(args))
    paths = result.save(args.out)
    scores = ", ".join(f"{s:.3g}" for s in result.scores.tolist()[:8])
    if args.evolve:
        k = int(result.best_scores.argmax())
        print(f"best image evolved: score {float(result.best_scores[k]):.3g} after "
              f"{result.metadata['evaluations']} evaluations")
    print(f"{result.metadata['objective']} on {model.name}: {len(paths)} image(s) in {args.out}, "
          f"final scores {scores} (of the saved images themselves) after {result.metadata['steps_run']} steps "
          f"({result.metadata['seconds']:.1f} s)")


def _max_batch(args: argparse.Namespace) -> None:
    from synth.engine.memory import max_batch

    model = _load(args, args.model, args.weights)
    size = args.size or model.input_size or 224
    memory = _bytes(args.memory) if args.memory else None
    n = max_batch(model, args.objective, size=size, memory=memory, limit=args.limit, **_speed(args))
    where = f"within {args.memory}" if memory else ("on " + str(model.device) if model.device.type == "cuda"
                                                    else "within the memory available")
    print(f"{model.name}, {args.objective} at {size} px ({args.precision}"
          f"{', checkpointed activations' if args.checkpoint_activations else ''}): largest batch {n}"
          f"{' (the limit)' if n >= args.limit else ''} {where}")


def _readout(args: argparse.Namespace) -> None:
    from synth.neuro.readouts import embedded_images, fit, load_responses

    model = _load(args, args.model, args.weights)
    resp = load_responses(args.responses)
    images = embedded_images(resp.image_ids, images_dir=args.images)
    readout = fit(model, images, resp, args.layer, method=args.method, folds=args.folds, seed=args.seed,
                  progress=True)
    path = readout.save(_readout_path(args.name))
    info = readout.info
    ceiling = f", median ceiling {sum(info['ceiling']) / len(info['ceiling']):.2f}, median ceiled r " \
              f"{info['median_ceiled_r']:.2f}" if "ceiling" in info else ""
    print(f"readout {model.name}:{readout.layer} -> {len(readout.sites)} sites "
          f"({info['method']}, {info['folds']}-fold): "
          f"median r {info['median_r']:.2f}{ceiling}; saved to {path} (use --readout {args.name})")


def _simulate(args: argparse.Namespace) -> None:
    from synth.neuro.subject import simulate_recording

    model = _load(args, args.subject, args.weights)
    resp = simulate_recording(model, args.layer, n_images=args.images, n_sites=args.sites, repeats=args.repeats,
                              seed=args.seed)
    path = resp.save(args.out)
    print(f"recorded {len(resp.sites)} sites of {model.name}:{model.layer(args.layer)} on {len(resp.image_ids)} "
          f"embedded images x {args.repeats} repeats -> {path} (responses {resp.values.shape}, spikes/s); "
          f"fit with: phosphene readout fit {path} --model toy-standard --layer V4 --name v4sites")


def _loop(args: argparse.Namespace) -> None:
    from synth.neuro.loop import Experiment

    if args.action == "init":
        exp = Experiment.create(args.dir, args.model, args.layer, args.sites, goals=args.goal, budget=args.budget,
                                first_budget=args.first_budget, repeats=args.repeats, pool=args.pool,
                                select=args.select, steps=args.steps, method=args.method,
                                synthetic_weight=args.synthetic_weight, seed=args.seed,
                                subject={"model": args.subject_model, "layer": args.subject_layer})
        c = exp.config
        print(f"experiment {exp.folder}: {c['model']}:{c['layer']} readout of {c['sites']} sites, goals "
              f"{', '.join(c['goals'])}, {c['budget']} trials per round ({c['first_budget']} in round 0) at "
              f"{c['repeats']} repeats, natural images chosen {c['select']}; next: phosphene loop next {exp.folder}")
        return
    exp = Experiment(args.dir)
    if args.action == "next":
        m = exp.next(progress=True)
        where = exp.folder / f"round-{m['round']:02d}"
        counts = ", ".join(f"{v} {k}" for k, v in m["counts"].items() if v)
        print(f"round {m['round']}: show the {m['trials']} trials of {where / 'presentation.csv'} in that order "
              f"({len(m['images'])} images in {where / 'images'}: {counts}; {m['repeats']} repeats each); then: "
              f"phosphene loop record {exp.folder} RESPONSES.npz (images x sites x repeats, ids as in the csv)")
    elif args.action == "record":
        print(_round_line(exp.record(args.responses, progress=True), exp.config["goals"]))
    elif args.action == "status":
        rows = exp.status()
        if not rows:
            print(f"{exp.folder}: no round yet; run phosphene loop next {exp.folder}")
        for row in rows:
            print(_round_line(row, exp.config["goals"]) if row["state"] == "fitted" else
                  f"round {row['round']}: {row['state']}, {row['trials']} trials, waiting for its recording")
    else:
        subject = exp.simulated_subject()
        print(f"simulated subject: {subject}")
        exp.run(subject, args.rounds, progress=True, on_round=lambda s: print(_round_line(s, exp.config["goals"]),
                                                                              flush=True))


def _round_line(s: dict, goals: list[str]) -> str:
    """One round's measures in a line: the readout's held-out r and ceiling, each goal's ratio to the natural best."""
    ceiling = f", ceiling {s['median_ceiling']:.2f}" if s.get("median_ceiling") is not None else ""
    parts = [f"round {s['round']}: {s['trials']} trials, readout on {s['images_fitted']} images: held-out r "
             f"{s['median_r']:.2f}{ceiling}"]
    for goal in goals:
        g = s["goals"].get(goal)
        if g:
            extra = f", one-hot success {g['onehot_success']:.0%}" if "onehot_success" in g else ""
            parts.append(f"{goal}: median {g['median_ratio']:.2f}x the natural best ({g['fraction_above']:.0%} of "
                         f"sites above){extra}")
    return "; ".join(parts)


def _batch(args: argparse.Namespace) -> None:
    from synth.batch import run

    summary = run(args.experiment, args.out, jobs=args.jobs, backend=args.backend)
    print(f"{summary['jobs']} jobs: {summary['ran']} ran, {summary['skipped']} already done; "
          f"{summary['images']} images and manifest.jsonl in {summary['out']}")


def _load_images(paths: Sequence[str], size: int | None):
    """Read image files into one N×3×H×W batch, resized to the model's input size when it has one; labels from a
    metadata.csv beside them (``phosphene images`` writes one) where present."""
    import csv
    from pathlib import Path

    import torch
    import torch.nn.functional as F

    from synth.errors import ImageError
    from synth.files import read_png

    if not paths:
        raise ImageError("no images given")
    images, categories, tables = [], [], {}
    for path in paths:
        img, meta = read_png(path)
        if size is not None and img.shape[-2:] != (size, size):
            img = F.interpolate(img[None], size=(size, size), mode="bilinear", antialias=True,
                                align_corners=False)[0].clamp(0, 1)
        images.append(img)
        folder = Path(path).parent
        if folder not in tables:  # file name -> category, from the folder's metadata.csv
            table, tables[folder] = folder / "metadata.csv", {}
            if table.is_file():
                with open(table, newline="") as f:
                    tables[folder] = {r.get("file"): r.get("category") for r in csv.DictReader(f)}
        categories.append(meta.get("category") or tables[folder].get(Path(path).name))
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) > 1:
        raise ImageError(f"images differ in size ({', '.join(str(s) for s in sorted(shapes))}); the model has no "
                         "input size to resize them to")
    return torch.stack(images), categories


def _attack(args: argparse.Namespace) -> None:
    from pathlib import Path

    import attacks
    from attacks.common import read_budgets
    from synth.errors import ConfigError, UnknownNameError

    if args.attack not in attacks.CATALOGUE:
        raise UnknownNameError("attack", args.attack, attacks.CATALOGUE)
    eps = None
    if args.eps:  # read as `robustness` reads them, each one echoed: a bare L-inf 4 is 4/255, never 4
        texts = [e for text in args.eps for e in text.split(",")]
        eps, notes = read_budgets(attacks.CATALOGUE[args.attack].norm, texts)
        print("\n".join(notes))
    model = _load_with_readouts(args)
    if args.site and eps is None:
        raise ConfigError("a site attack needs --eps")
    images, categories = _load_images(args.images, model.input_size)
    if args.site:
        if args.target or args.label:
            raise ConfigError("--target and --label are for class attacks; a site attack moves --site")
        norm = "l2" if args.attack.endswith("l2") else "linf"
        result = attacks.site_attack(model, images, args.site, eps, direction="down" if args.down else "up",
                                     norm=norm, steps=args.steps or 20, step=args.step, seed=args.seed)
    else:
        labels = args.label or (categories if all(categories) else None)
        options = {"steps": args.steps} if args.steps is not None else {}
        options["seed"] = args.seed
        if args.attack.startswith("pgd"):
            options.update(restarts=args.restarts, step=args.step)
        result = attacks.run(args.attack, model, images, labels, eps, target=args.target, **options)
        if labels is None:
            print("no labels given or found (metadata.csv): attacking the model's own predictions")
    result.save(args.out)
    out = Path(args.out)
    result.sheet(out / "sheet.png")
    if len(result.eps) > 1 or bool(result.eps.isinf().all()):
        result.plot(out / "curve.png")
    print(result.summary())
    print(f"adversarial images, attack.json, sheet.png in {args.out}")


def _robustness(args: argparse.Namespace) -> None:
    import attacks
    from attacks.robustness import image_folder
    from synth.errors import ConfigError

    names = [m.strip() for m in args.models.split(",") if m.strip()]
    weights = {}
    for item in args.weights:
        model, sep, path = item.partition("=")
        if not sep or model not in names:
            raise ConfigError(f"--weights takes MODEL=PATH for one of --models ({', '.join(names)}), got {item!r}")
        weights[model] = path
    models = {n: _load(args, n, weights.get(n)) for n in names}  # unknown names fail before any work
    data = image_folder(args.data, limit=args.per_class) if args.data else None
    table = attacks.robustness_table(models, data, linf=args.linf, l2=args.l2, steps=args.steps, eot=args.eot,
                                     corruptions=args.corruptions,
                                     severities=[int(s) for s in args.severities.split(",")], n=args.n,
                                     seed=args.seed, workers=args.workers, quick=args.quick)
    paths = table.save(args.out)
    print(table.markdown())
    print(f"{len(names)} model(s) in {table.settings['seconds']:.0f} s; "
          f"{', '.join(p.name for p in paths.values())} in {args.out}")


def _metamer(args: argparse.Namespace) -> None:
    from pathlib import Path

    import metamers

    model = _load(args, args.model, args.weights)
    images, _ = _load_images(args.images, model.input_size)  # one clear line for a file that cannot be read
    stems = [Path(p).stem for p in args.images]
    names = [s if stems.count(s) == 1 else f"{s}_{i}" for i, s in enumerate(stems)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / f".checkpoint-{args.stage}.pt"
    if not args.resume:  # a fresh run; --resume goes on from where the last one (and its retries) stopped
        for stale in out.glob(f".checkpoint-{args.stage}*.pt"):
            stale.unlink()
    given = {k: v for k, v in (("steps", args.steps), ("error", args.error)) if v is not None}
    r = metamers.generate(model, images, args.stage, seed=args.seed, coarse_to_fine=args.coarse_to_fine,
                          range_penalty=args.range_penalty, fake_relu=not args.no_fake_relu,
                          names=[f"{n}_{args.stage}" for n in names],
                          checkpoint=checkpoint, checkpoint_every=args.checkpoint_every, **given)
    r.save(out)
    r.sheet(out / "sheet.png")
    for row in r.summary():
        print(f"{row['name']}: error {row['error']:.3f} (target {r.error_target:g}), Spearman {row['spearman']:.3f} "
              f"(null max {row['null_max_spearman']:.3f}), {'passed' if row['passed'] else 'FAILED'} "
              f"after {row['steps']} steps")
    print(f"{int(r.passed.sum())}/{len(r)} metamers passed at {args.stage}; PNGs, metamers.json/.csv and sheet.png "
          f"in {out}")
    left = sorted(out.glob(f".checkpoint-{args.stage}*.pt"))
    if bool(r.passed.all()):
        for path in left:  # every metamer passed and is saved: nothing is left to resume
            path.unlink()
    elif left:
        print(f"kept {', '.join(p.name for p in left)}: the optimizer's state of the metamers that did not pass; "
              f"`--resume` goes on from it, and a fresh run removes it")


def _recognizability(args: argparse.Namespace) -> None:
    from metamers.recognize import recognizability

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    given = {"steps": args.steps} if args.steps is not None else {}
    table = recognizability(models, stages, n=args.n, seed=args.seed, out=args.out, **given)
    for g in table.accuracy:
        print(f"{g}: recognized by the other models (1-px blur) " +
              ", ".join(f"{s} {table.headline(g, s):.2f}" for s in stages))
    print(f"{table.settings['seconds']:.0f} s; metamers.md, recognizability.json/.csv and figures in {args.out}")


def _afraz(args: argparse.Namespace) -> None:
    from microstim import run_afraz

    model = _load(args, args.model, args.weights, positions=args.positions)
    spreads = tuple(float(v) for v in args.spreads.split(",") if v.strip())
    r = run_afraz(model, args.out, args.layer, sites=args.sites, current_ua=args.current, rate_hz=args.rate,
                  spreads_mm=spreads, n=args.n, seed=args.seed, workers=args.workers)
    for name in ("topographic", "shuffled"):
        d = r[name]
        print(f"{name:<11}: r = {d['r']:.3f} (p = {d['p']:.2g}), "
              f"mean shift {100 * d['mean_shift']:+.2f} % face choices")
    print("r against spread (topographic / shuffled, one-sided p of the difference): " + ", ".join(
        f"{c['spread_mm']:.2g} mm {c['r']:.2f} / {c['r_shuffled']:.2f}, difference {c['difference']:+.2f} "
        f"(p {c['difference_p']:.2g})"
        for c in r["curve"]))
    print(f"{r['sites']} sites at {r['current_ua']:g} µA, {r['rate_hz']:g} Hz (λ = {r['spread_mm']:.2f} mm) in "
          f"{r['seconds']:.0f} s; afraz.json, afraz.png and face_map.png in {args.out}")


RANDOM_HELP = "use the architecture's random initial weights on purpose (refused otherwise)"
RESPONSES_FORMAT = ("Responses file: .npz with 'responses' (float, images x sites, or images x sites x repeats, "
                    "e.g. spikes/s), 'image_ids' (strings: 'split:index' of the embedded set such as 'train:12', or "
                    "file names in --images DIR) and optional 'sites' (names); or a .csv with a header 'image_id,"
                    "SITE1,SITE2,...', one row per trial (a repeated image_id is a repeat).  At least 10 images; no "
                    "NaN or infinite values.")


def _model_flags(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--model", default=default)
    p.add_argument("--weights", help="checkpoint file or torchvision weights name")
    p.add_argument("--random-weights", action="store_true", help=RANDOM_HELP)


def _speed_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="bf16: the network's forward under bfloat16 autocast, objective and step in float32")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory layout for the run")
    p.add_argument("--compile", action="store_true", help="torch.compile the forward (slow to warm up)")
    p.add_argument("--checkpoint-activations", action="store_true",
                   help="recompute each stage in the backward pass instead of keeping its activations")


def _speed(args: argparse.Namespace) -> dict:
    return {"precision": args.precision, "channels_last": args.channels_last, "compile": args.compile,
            "checkpoint_activations": args.checkpoint_activations}


def _bytes(text: str) -> int:
    from synth.errors import ConfigError

    units = {"": 1, "B": 1, "KB": 2 ** 10, "MB": 2 ** 20, "GB": 2 ** 30, "TB": 2 ** 40}
    t = text.strip().upper().replace("IB", "B")
    number = t.rstrip("KMGTB")
    try:
        value = float(number) * units[t[len(number):]]
    except (ValueError, KeyError):
        raise ConfigError(f"--memory takes a size like 512MB or 4GB, got {text!r}") from None
    if not value > 0:
        raise ConfigError(f"--memory must be positive, got {text!r}")
    return int(value)


def _space(*names: str):
    """An argparse type for a parametrization: one of ``names`` or 'generator:NAME'."""
    def check(value: str) -> str:
        if value in names or (value.startswith("generator:") and len(value) > len("generator:")):
            return value
        raise argparse.ArgumentTypeError(f"{value!r}: choose from {', '.join(names)} or generator:NAME")
    return check


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake told in one line and a pointer to the help instead of the whole usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """The argument parser of the ``phosphene`` command."""
    from synth.world.levels import CATEGORIES, CONTROLS, SPLITS, VARIATION

    p = _Parser(prog="phosphene", description="Probe models of the primate ventral stream.")
    p.add_argument("--version", action="version", version=f"phosphene {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    m = sub.add_parser("models", help="list models, their layers and brain-area maps")
    m.add_argument("name", nargs="?", help="show one model's classes, areas and layer shapes")
    m.add_argument("--weights", help="checkpoint file or torchvision weights name")
    m.add_argument("--layers", action="store_true", help="list every layer with its output shape")
    m.set_defaults(func=_models)

    i = sub.add_parser("images", help="render images of the embedded object set to a folder")
    i.add_argument("--out", required=True, help="output folder (PNGs and metadata.csv)")
    i.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    i.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    i.add_argument("--split", choices=[*SPLITS, "localizer"], default="test")
    i.add_argument("--variation", choices=[*VARIATION, "mixed"], default="mixed")
    i.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    i.add_argument("--category", choices=[*CATEGORIES, *CONTROLS], help="only this category or control")
    i.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
    i.set_defaults(func=_images)

    t = sub.add_parser("train", help="re-run the recipe of an embedded model or generator (slow: minutes on a CPU)")
    t.add_argument("name", help="an embedded model's or generator's recipe, e.g. toy-robust (`phosphene models` "
                                "lists the models; an unknown name lists every recipe)")
    t.add_argument("--out", help="where to write NAME.pt and its card (default: the package's weights folder, "
                                 "generators in its generators/ folder)")
    t.add_argument("--epochs", type=int, help="override the recipe's epoch count")
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--card-only", action="store_true",
                   help="re-measure the card of the weights in --out without training")
    t.set_defaults(func=_train)

    s = sub.add_parser("synth", help="synthesize images that drive a neural state",
                       description='Objectives: "IT:12" (channel 12 of IT, averaged over space), "V4:c5[3,4]" (a '
                                   'unit), "stretch(V4:readout:site3)", "onehot(IT:7)", "norm(V4)", sums like '
                                   '"IT:12 + 0.1*diversity(V4)".')
    _model_flags(s, "toy-standard")
    s.add_argument("--objective", required=True)
    s.add_argument("--out", required=True, help="output folder (PNGs with metadata, result.json, result.pt)")
    s.add_argument("--steps", type=int, default=256, help="optimization steps, or generations with --evolve")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--n", type=int, default=1, help="images to optimize together")
    s.add_argument("--param", type=_space("fourier", "pixels", "blurred"), default="fourier",
                   help="image parametrization: fourier (default), pixels, blurred, or generator:NAME (a generator's "
                        "latent code: generator:toy-gan, or generator:PATH to DeePSiM fc6 weights)")
    s.add_argument("--lr", type=float, default=0.05)
    s.add_argument("--size", type=int, help="image size (default: the model's input size)")
    s.add_argument("--no-transforms", action="store_true", help="no jitter/scale/rotate robustness transforms")
    s.add_argument("--relu-override", type=int, default=16,
                   help="first steps with Lucid's redirected ReLU gradient (default 16; 0 turns it off)")
    s.add_argument("--contrast", type=float, help="fix RMS contrast (e.g. 0.2) at mean luminance 0.5")
    s.add_argument("--aperture", type=float, help="circular aperture radius (fraction of the image)")
    s.add_argument("--grayscale", action="store_true")
    s.add_argument("--readout", action="append", default=[], help="attach a saved readout (name or path)")
    s.add_argument("--evolve", action="store_true", help="gradient-free evolution instead of gradients")
    s.add_argument("--optimizer", choices=["genetic", "cmaes"], default="genetic",
                   help="with --evolve: XDream's genetic algorithm (default) or CMA-ES")
    s.add_argument("--population", type=int, default=40, help="population size with --evolve")
    s.add_argument("--code", type=_space("fourier"), default="fourier",
                   help="with --evolve: the code searched, fourier (default) or generator:NAME (XDream's space)")
    _speed_flags(s)
    s.set_defaults(func=_synth)

    mb = sub.add_parser("max-batch", help="the largest batch whose synthesis step fits in memory",
                        description="On a GPU: trial steps at growing batches until one runs out of memory.  On a "
                                    "CPU, or with --memory: the bytes a step keeps, measured at batches 1 and 2, "
                                    "extrapolated to the budget and checked around the estimate.")
    _model_flags(mb, "toy-standard")
    mb.add_argument("--objective", default="IT:0", help="what the step optimizes (default IT:0)")
    mb.add_argument("--size", type=int, help="image size (default: the model's input size, else 224)")
    mb.add_argument("--memory", help="budget, e.g. 4GB or 512MB (default: the GPU, or the memory available)")
    mb.add_argument("--limit", type=int, default=1024, help="largest batch tried (default 1024)")
    _speed_flags(mb)
    mb.set_defaults(func=_max_batch)

    r = sub.add_parser("readout", help="fit linear readouts from a model layer to recorded sites")
    rsub = r.add_subparsers(dest="action", required=True, metavar="ACTION")
    rs = rsub.add_parser("simulate", help="record a simulated subject on embedded images (a responses.npz to fit)",
                         description="A stand-in for a monkey's recording: --sites responsive channels of --layer of "
                                     "--subject, spatially pooled, turned into rates (5 to 100 spikes/s) and recorded "
                                     "as Poisson spike counts in a 100 ms window, --repeats trials per image, on "
                                     "embedded images 'train:0' .. 'train:N-1'.  " + RESPONSES_FORMAT)
    rs.add_argument("--out", default="responses.npz", help="output .npz (default responses.npz)")
    rs.add_argument("--subject", default="toy-robust", help="the model playing the animal (default toy-robust)")
    rs.add_argument("--weights", help="checkpoint of the subject model")
    rs.add_argument("--random-weights", action="store_true", help=RANDOM_HELP)
    rs.add_argument("--layer", default="IT", help="recorded area or layer (default IT)")
    rs.add_argument("--images", type=int, default=640, help="embedded train images shown (default 640)")
    rs.add_argument("--sites", type=int, default=40, help="recorded sites (default 40)")
    rs.add_argument("--repeats", type=int, default=4, help="trials per image (default 4)")
    rs.add_argument("--seed", type=int, default=0)
    rs.set_defaults(func=_simulate)
    rf = rsub.add_parser("fit", help="fit, cross-validate and save a readout",
                         description="Fit a linear map from a model layer to recorded sites (PLS or ridge, "
                                     "cross-validated, with split-half reliability ceilings when there are repeats).  "
                                     + RESPONSES_FORMAT + "  'phosphene readout simulate' writes such a file.")
    rf.add_argument("responses", help="responses .npz or .csv (format in --help's description)")
    rf.add_argument("--model", required=True)
    rf.add_argument("--weights")
    rf.add_argument("--random-weights", action="store_true", help=RANDOM_HELP)
    rf.add_argument("--layer", required=True, help="layer or brain area, e.g. V4")
    rf.add_argument("--images", help="folder with the image files named by image_id (default: embedded "
                                     "'split:index' ids)")
    rf.add_argument("--method", choices=["pls", "ridge"], default="pls")
    rf.add_argument("--folds", type=int, default=10)
    rf.add_argument("--seed", type=int, default=0)
    rf.add_argument("--name", default="readout", help="name (or path) to save under; others use it with --readout")
    rf.set_defaults(func=_readout)

    a = sub.add_parser("attack", help="white-box attacks on class labels or neural sites",
                       description="Attacks: pgd-linf, pgd-l2 (native, Auto-PGD steps; --step pgd for fixed ones); "
                                   "evaluate, evaluate-l2 (native: the reliable verdict, a cascade of APGD-CE, "
                                   "APGD-T and Square on the images still unbroken); square-linf, square-l2 (native, "
                                   "forward passes only); fgsm, fgm-l2, "
                                   "foolbox-pgd-linf, foolbox-pgd-l2, cw-l2, deepfool-linf, deepfool-l2, fmn-linf, "
                                   "fmn-l2, ddn-l2, "
                                   "boundary, hsj-l2, noise-linf, noise-l2 (foolbox).  Several --eps (or a comma list) "
                                   "make one sweep.  With --site, the attack raises (or --down lowers) one unit's or "
                                   "readout site's response instead.")
    a.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...); resized to the model's input size")
    _model_flags(a, "toy-standard")
    a.add_argument("--attack", default="pgd-linf", help="attack name (default pgd-linf; 'evaluate' or "
                                                        "'evaluate-l2' for the reliable verdict: APGD-CE, "
                                                        "APGD-T and Square on the images still unbroken)")
    a.add_argument("--eps", action="append", default=None, help="budget(s), e.g. 4/255 or 1/255,2/255,4/255 (each "
                   "one's reading is printed; a bare L-inf number of 1 or more is read as n/255)")
    a.add_argument("--target", help="target class name (targeted attack)")
    a.add_argument("--label", help="true class name of every image (default: metadata.csv beside the images, "
                                   "else the model's own predictions)")
    a.add_argument("--site", help="attack a neural site instead, e.g. IT:12 or IT:readout:site3")
    a.add_argument("--down", action="store_true", help="with --site: lower the response instead of raising it")
    a.add_argument("--steps", type=int, help="attack steps (default: the attack's own)")
    a.add_argument("--restarts", type=int, default=1, help="random restarts of native PGD (default 1)")
    a.add_argument("--step", choices=["apgd", "pgd"], default="apgd",
                   help="native step rule: Auto-PGD (default) or Madry's fixed 2.5*eps/steps")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--readout", action="append", default=[], help="attach a saved readout (name or path)")
    a.add_argument("--out", required=True, help="output folder: adversarial PNGs with metadata, attack.json, sheet")
    a.set_defaults(func=_attack)

    rb = sub.add_parser("robustness", help="clean / white-box / corruption / mean accuracy of models (VOneNet table)",
                        description="White-box: attacks.evaluate's cascade (or with --quick the PGD sweep alone) "
                                    "at each --linf and --l2 budget (EOT for stochastic models). Corruptions: the "
                                    "ImageNet-C families (imagecorruptions) at 5 severities.  Writes robustness.csv "
                                    "(one row per model), conditions.csv, "
                                    "robustness.md, robustness.png and robustness.json to --out.")
    rb.add_argument("--models", default="toy-standard,toy-robust,toy-vone", help="comma-separated zoo names")
    rb.add_argument("--weights", action="append", default=[], help="MODEL=PATH: weights for a zoo architecture")
    rb.add_argument("--random-weights", action="store_true", help=RANDOM_HELP)
    rb.add_argument("--data", help="ImageFolder directory: one sub-folder per category, named as the model's classes "
                                   "(default: the embedded test split)")
    rb.add_argument("--per-class", type=int, help="with --data: at most this many images per sub-folder")
    rb.add_argument("--n", type=int, default=256, help="embedded test images when no --data (default 256)")
    rb.add_argument("--linf", default="1/1020,1/255,4/255", help="L-inf budgets (default VOneNet's 1/1020,1/255,4/255)")
    rb.add_argument("--l2", help="L2 budgets (default VOneNet's 0.15,0.6,2.4 scaled by input size/224)")
    rb.add_argument("--steps", type=int, default=None,
                    help="steps of each gradient attack (default: attacks.evaluate's, 100 and 20 on a stochastic "
                         "model; 20 with --quick)")
    rb.add_argument("--quick", action="store_true", help="white-box: the PGD sweep alone, not attacks.evaluate's "
                                                         "cascade (faster; overstates robust accuracy)")
    rb.add_argument("--eot", type=int, default=8, help="noise draws per step and verdict for stochastic models")
    rb.add_argument("--corruptions", default="common",
                    help="common (ImageNet-C's 15), all (19), a family (noise, blur, weather, digital) or a name")
    rb.add_argument("--severities", default="1,2,3,4,5")
    rb.add_argument("--seed", type=int, default=0)
    rb.add_argument("--workers", type=int, default=2, help="processes that make the corrupted images")
    rb.add_argument("--out", required=True, help="output folder")
    rb.set_defaults(func=_robustness)

    mt = sub.add_parser("metamer", help="model metamers of images at one stage (Feather et al. 2023)",
                        description="One metamer per image: its activations at --stage match the image's to "
                                    "normalized error --error, and Feather's criterion holds against 256 natural "
                                    "images.  Writes NAME_STAGE.png per input, metamers.json/.csv and sheet.png.")
    mt.add_argument("images", nargs="+", help="image files (any mode is converted; resized to the model's input size)")
    _model_flags(mt, "toy-robust")
    mt.add_argument("--stage", default="IT", help="brain area or layer to match (default IT)")
    mt.add_argument("--steps", type=int, help="most steps per metamer (default: metamers.generate's)")
    mt.add_argument("--error", type=float, help="normalized-error target (default: metamers.generate's)")
    mt.add_argument("--seed", type=int, default=0)
    mt.add_argument("--coarse-to-fine", action="store_true", help="blur the gradient, 2 px down to 0, over the run")
    mt.add_argument("--range-penalty", type=float, default=0.0,
                    help="penalize pixels outside [0,1] instead of clipping")
    mt.add_argument("--no-fake-relu", action="store_true", help="plain ReLU gradient at the matched stage")
    mt.add_argument("--checkpoint-every", type=int, default=200, help="steps between checkpoints (default 200)")
    mt.add_argument("--resume", action="store_true", help="go on from the checkpoint a killed or shorter run left")
    mt.add_argument("--out", required=True)
    mt.set_defaults(func=_metamer)

    ms = sub.add_parser("metamers", help="metamer experiments")
    msub = ms.add_subparsers(dest="action", required=True, metavar="ACTION")
    rc = msub.add_parser("recognizability", help="metamers per model and stage, classified by the other models",
                         description="Feather et al.'s experiment with other models as observers; rerun with the "
                                     "same --out to resume.  Writes metamers.md, recognizability.json/.csv and "
                                     "figures.")
    rc.add_argument("--models", default="toy-standard,toy-robust,toy-vone", help="comma-separated zoo names")
    rc.add_argument("--stages", default="V1,V2,V4,IT,logits", help="comma-separated stages")
    rc.add_argument("--n", type=int, default=16, help="test images, balanced over categories (default 16)")
    rc.add_argument("--steps", type=int, help="most steps per metamer (default: metamers.generate's)")
    rc.add_argument("--seed", type=int, default=0)
    rc.add_argument("--out", required=True)
    rc.set_defaults(func=_recognizability)

    mc = sub.add_parser("microstim", help="micro-stimulation experiments on topographic models")
    mcsub = mc.add_subparsers(dest="action", required=True, metavar="ACTION")
    af = mcsub.add_parser("afraz", help="Afraz et al. 2006: stimulate sites, shift face choices by site selectivity",
                          description="Stimulate many sites of a topographic layer while the model judges degraded "
                                      "face / non-face stimuli; correlate each site's shift in face choices with its "
                                      "recorded face selectivity, for the model and its position-shuffled control. "
                                      "Writes afraz.json, afraz.png and face_map.png.")
    af.add_argument("--model", default=TOPOGRAPHIC, help=f"a topographic model (default {TOPOGRAPHIC})")
    af.add_argument("--weights", help="checkpoint file (with --positions for a topographic checkpoint)")
    af.add_argument("--random-weights", action="store_true", help=RANDOM_HELP)
    af.add_argument("--positions", help="unit positions: a phosphene .pt, a TDANN-style .npz, or a folder of them")
    af.add_argument("--layer", default="IT", help="area or layer with a cortical sheet (default IT)")
    af.add_argument("--sites", type=int, default=86, help="stimulation sites (default 86, as Afraz et al.)")
    af.add_argument("--current", type=float, default=50.0, help="current in µA (default 50)")
    af.add_argument("--rate", type=float, default=200.0, help="pulse rate in Hz (default 200)")
    af.add_argument("--spreads", default="0.5,1,2", help="spreads (mm) for the curve of r (comma-separated)")
    af.add_argument("--n", type=int, default=32, help="faces and objects per signal level (default 32)")
    af.add_argument("--seed", type=int, default=0)
    af.add_argument("--workers", type=int, default=2, help="rendering processes (default 2)")
    af.add_argument("--out", required=True)
    af.set_defaults(func=_afraz)

    lp = sub.add_parser("loop", help="closed-loop experiments: show, record, refit, synthesize, show again",
                        description="A closed-loop experiment in a folder a rig can drive (Bashivan et al. 2019; "
                                    "Walker et al. 2019): 'init' designs it, 'next' writes the round to show (PNGs "
                                    "and presentation.csv), 'record' ingests its responses and refits the readout, "
                                    "'status' reports every round, 'run --subject simulated' drives the whole loop "
                                    "against a simulated subject.  Every step resumes after a kill.")
    lsub = lp.add_subparsers(dest="action", required=True, metavar="ACTION")
    li = lsub.add_parser("init", help="create an experiment folder")
    li.add_argument("dir")
    li.add_argument("--model", required=True, help="probe model whose readout is fit and synthesized through")
    li.add_argument("--layer", required=True, help="layer or area the readout reads, e.g. V4")
    li.add_argument("--sites", type=int, required=True, help="sites the rig records")
    li.add_argument("--goal", default="stretch", help="stretch, onehot, mei, or several joined by commas")
    li.add_argument("--budget", type=int, default=1200, help="trials per round (default 1200)")
    li.add_argument("--first-budget", type=int, help="trials of round 0, natural images only (default --budget)")
    li.add_argument("--repeats", type=int, default=4, help="trials per image (default 4)")
    li.add_argument("--pool", type=int, default=600, help="natural candidates per round to choose from (default 600)")
    li.add_argument("--select", choices=["random", "uncertain", "diverse"], default="random",
                    help="how natural images are chosen after round 0 (default random)")
    li.add_argument("--steps", type=int, default=256, help="steps of each synthesis (default 256)")
    li.add_argument("--method", choices=["ridge", "pls"], default="ridge",
                    help="the readout's regression (default ridge: it takes --synthetic-weight)")
    li.add_argument("--synthetic-weight", type=float, default=0.1,
                    help="a synthesized image's weight in the refit, a natural image's being 1 (default 0.1)")
    li.add_argument("--seed", type=int, default=0)
    li.add_argument("--subject-model", default="toy-robust", help="the simulated subject of 'loop run' (toy-robust)")
    li.add_argument("--subject-layer", default="IT", help="its recorded area (default IT)")
    ln = lsub.add_parser("next", help="write the next round's images and say what to show")
    ln.add_argument("dir")
    lr = lsub.add_parser("record", help="ingest a round's recording and refit the readout",
                         description="Ingest the responses to the round waiting for them and refit.  "
                                     + RESPONSES_FORMAT + "  Its image ids are those of the round's "
                                     "presentation.csv, all of them.")
    lr.add_argument("dir")
    lr.add_argument("responses")
    ls = lsub.add_parser("status", help="print each round's readout r, ceiling and synthesized vs natural")
    ls.add_argument("dir")
    lrun = lsub.add_parser("run", help="drive the whole loop against a simulated subject")
    lrun.add_argument("dir")
    lrun.add_argument("--subject", choices=["simulated"], required=True,
                      help="'simulated': the experiment's simulated subject (control.Subject)")
    lrun.add_argument("--rounds", type=int, default=3, help="closed-loop rounds after round 0 (default 3)")
    for q in (li, ln, lr, ls, lrun):
        q.set_defaults(func=_loop)

    b = sub.add_parser("batch", help="run an experiment file of synthesis jobs (rerun to resume)")
    b.add_argument("experiment", help="experiment .toml (see examples/*.toml)")
    b.add_argument("--out", required=True)
    b.add_argument("--jobs", type=int, default=1, help="jobs at a time (worker processes, or Ray CPUs)")
    b.add_argument("--backend", choices=["local", "ray"], default="local",
                   help="local processes (default) or Ray: the cluster in $RAY_ADDRESS, else a local Ray with --jobs "
                        "CPUs (the output folder must be visible to every node); runs resume across backends")
    b.set_defaults(func=_batch)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run a subcommand; a user never sees a traceback.

    phosphene's own errors (bad input, names, configs, checkpoints) print one line and exit with status 2; an
    operating-system error (a missing file, a full disk, no permission) one line and status 2 too; an interrupt
    status 130; anything else is a bug in phosphene: one line saying so, status 1, and the traceback only with
    PHOSPHENE_DEBUG=1.
    """
    import os

    args = parser().parse_args(argv)
    try:
        args.func(args)
    except PhospheneError as e:
        print(f"phosphene: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader (``| head``) stopped reading: what it read is what it wanted
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit; nothing may reach the pipe
        return 0
    except OSError as e:
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"phosphene: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("phosphene: interrupted (finished outputs are kept; rerun the same command to resume where it "
              "supports resuming)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the last line of defence between a bug and a user's terminal
        if os.environ.get("PHOSPHENE_DEBUG"):
            raise
        print(f"phosphene: internal error: {type(e).__name__}: {e} (a bug in phosphene {__version__}; rerun with "
              f"PHOSPHENE_DEBUG=1 to see the traceback and report it)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
