"""Model metamers (Feather et al. 2023) on the one engine: images whose activations at one stage match a
natural image's.

``generate`` starts from low-amplitude noise around mid-grey (Feather: N(0.5, (1/20)²)), and passes the engine a
normalized-distance objective ``match(stage, ..., metric=normalized)`` = −‖a − a*‖ / ‖a*‖, the pixel box, a step
rule and schedule, and a stopping rule that ends each image when it meets the error target and Feather's criterion
(``metamers.criterion``).  Stochastic models are matched with their noise off (the mean response), since no noisy
response can come within a few per cent of another.  The result judges every metamer at every stage of the model.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from synth import Box, __version__
from synth.engine.criteria import Criterion
from synth.engine.gradients import Surrogate, last_relu, patched_backward
from synth.engine.loop import optimize
from synth.engine.objectives import Match, Outside
from synth.engine.params import Blurred, Pixels
from synth.engine.results import Result
from synth.engine.steps import PlateauDecay
from synth.errors import ConfigError
from synth.files import check_weights, load_record, save_record, write_csv
from synth.zoo.probe import INPUT, LOGITS, ProbeModel, check_images

from .criterion import ERROR_TARGET, MetamerStop, Null, judge

# Step rule, sizes and schedule measured on toy-standard (16 test images, 2400 steps, pass = criterion and error
# <= 0.05): Adam with Feather's step decay (halved at each eighth of the run) from a large step, which lets the
# shallow stages leave the poor local minima a small step settles in.  From 0.3: V1, V2, V4 and logits 16/16, IT
# 13/16; from 0.1: IT 15/16 (V1 14/16); constant 0.01: V1 11/16, V2 and V4 14/16, IT 15/16.  Without surrogate
# gradients V1 lost 2 more; L-BFGS, Gauss-Newton, Auto-PGD's L2 steps and Feather's normalized-gradient steps were
# all slower.  So the step starts at 0.3 before the model's IT and at 0.1 from IT on.  On the 16 images of the
# recognizability experiment 2400 steps left 3-4 of 16 V4 / IT metamers of toy-standard at errors of 0.05-0.075:
# the default run is 4800 steps (a fifth of Feather's 24,000), each image stopping as soon as it passes.  No first
# step suits every model: from 0.3, 2 of toy-vone's 16 V1 metamers stalled at errors of 0.063 and 0.065 and both
# passed from 0.1, where toy-standard's V1 loses 2.  So a metamer still failing after the run goes once more from a
# new noise start with a third of the first step, kept where its error is lower: on the recognizability images
# that lifted toy-vone's V1 from 14 to 16 of 16 and its IT from 13 to 15, and left toy-standard's V4 at 15 (its
# 16th retried to 0.052).  (Behind VOneNet's DC-carrying Gabor kernels toy-vone had reached only 14 of 16 at V4
# and 10 at IT; its zero-mean kernels gave 16 and 13 before any retry.)
STEPS = 4800
RETRIES, RETRY_LR = 1, 1 / 3
STEP_RULE = "adam"
LR_EARLY, LR_LATE = 0.3, 0.1
# Feather's decay halves at each eighth of the budget (and the surrogate gradients sharpen over the whole budget),
# so a larger budget makes every hard image slower: on benchmarks/metamer_schedule.py's 16 IT references of
# toy-standard the median image passed at step 920 of 2,400 and 1,268 of 4,800.  The default, 'plateau', puts every
# clock on steps: each image's step halves when its own error stalls (synth.engine.steps.PlateauDecay: best error
# improved by less than 0.1 % in 100 steps) and at the latest after 600 steps at one size (Feather's eighths of
# 4,800), and the surrogate sharpens over SHARPEN_STEPS whatever the budget.  All 16 passed within 2,400 steps,
# median 1,262, and a 4,800-step run is the same run continued.  A first version halved on less than 1 % progress
# in 50 steps, with no clock and the surrogate sharpening over 2,400 steps: its median was 751, but slow progress
# is not a stall, and on the tour's toy-robust IT metamer (test image 0) the step reached 1/128 by step 1,400 and
# the image stalled at an error of 0.067; this one passes it at step 3,975.
SCHEDULE = "plateau"
SHARPEN_STEPS = 4800
PLATEAU = {"patience": 100, "rel": 0.001, "every": 600}
INIT_NOISE = 1 / 20
RELU_BETA, POOL_TAU = 2.0, 0.2  # surrogate-gradient sharpness (synth.engine.gradients.patched_backward)
NULL_IMAGES = 256
FORMAT_VERSION = 2  # 2: one record format (synth.files.save_record): metamers.pt holds the references


def stages(model: ProbeModel) -> list[str]:
    """The stages a metamer is judged at: the model's brain areas (V1 → IT, in forward order) and the logits."""
    order = {layer: i for i, layer in enumerate(model.layers)}
    areas = sorted((a for a in model.areas if a != "behavior"), key=lambda a: order.get(model.areas[a], 0))
    return [*areas, LOGITS]


_NULL_CACHE: dict[tuple[int, int], torch.Tensor] = {}


def null_images(n: int = NULL_IMAGES, size: int = 64) -> torch.Tensor:
    """``n`` natural images of the embedded world's validation split (all categories in turn) at ``size`` px: the
    null set that metamers are compared against, disjoint from the test images they are usually made from."""
    key = (n, size)
    if key not in _NULL_CACHE:
        from synth.world.data import render

        x = render(n, "val").tensor()
        if size != x.shape[-1]:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                                align_corners=False).clamp(0, 1)
        _NULL_CACHE[key] = x
    return _NULL_CACHE[key]


def _acts(model: ProbeModel, x: torch.Tensor, layers: list[str], batch: int = 128) -> dict[str, torch.Tensor]:
    """Activations of several layers on CPU, in batches."""
    parts: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            out = model.activations(x[i:i + batch].to(model.device), layers)
            for k in layers:
                parts.setdefault(k, []).append(out[k].detach().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


@dataclass
class MetamerResult:
    """Metamers of ``references`` at one stage of a model, judged at every stage.

    ``stats[stage]`` holds per-metamer tensors: ``spearman`` and ``nse`` (against the reference), ``error``
    (‖a − a*‖ / ‖a*‖), the null set's best ``null_max_spearman`` / ``null_min_nse``, ``criterion`` (Feather's)
    and ``passed`` (criterion and, at the matched stage, the error target).  ``run`` is the engine's result (loss
    history, full activations at the matched stage, the recipe)."""

    images: torch.Tensor
    references: torch.Tensor
    stage: str
    layer: str
    stats: dict[str, dict[str, torch.Tensor]]
    run: Result
    error_target: float = ERROR_TARGET
    names: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def passed(self) -> torch.Tensor:
        """Per metamer: Feather's criterion and the error target, both at the matched stage."""
        return self.stats[self.stage]["passed"]

    @property
    def pass_rate(self) -> float:
        """The fraction of metamers that pass at the matched stage."""
        return float(self.passed.float().mean())

    def summary(self) -> list[dict]:
        """One row per metamer: its name, the matched stage's statistics and the verdict."""
        s = self.stats[self.stage]
        return [{"name": self.names[i] if self.names else f"metamer_{i:03d}", "stage": self.stage,
                 "error": round(float(s["error"][i]), 5), "spearman": round(float(s["spearman"][i]), 5),
                 "nse": round(float(s["nse"][i]), 6), "null_max_spearman": round(float(s["null_max_spearman"][i]), 5),
                 "null_min_nse": round(float(s["null_min_nse"][i]), 5), "criterion": bool(s["criterion"][i]),
                 "error_target_met": bool(s["error"][i] <= self.error_target), "passed": bool(s["passed"][i]),
                 "steps": int(self.metadata.get("steps_each", [0] * len(self))[i])} for i in range(len(self))]

    def save(self, folder: str | os.PathLike) -> list[Path]:
        """Write the engine result (the record ``result``: history, full activations, recipe), ``metamers.csv`` with
        the statistics, and the record ``metamers`` (``synth.files.save_record``): one PNG per metamer (named after
        its reference, the recipe in text chunks), ``metamers.pt`` with the references and ``metamers.json`` with
        the statistics at every stage.  Returns the PNGs' paths."""
        folder = Path(folder)
        self.run.save(folder, pngs=False)
        rows = self.summary()
        write_csv(folder / "metamers.csv", rows)
        pngs = [(f"{rows[i]['name']}.png", img, {**self.metadata, **rows[i], "index": i})
                for i, img in enumerate(self.images)]
        doc = {"stage": self.stage, "layer": self.layer, "error_target": self.error_target,
               "names": [r["name"] for r in rows], "metadata": self.metadata, "metamers": rows,
               "stages": {st: {k: v.tolist() for k, v in d.items()} for st, d in self.stats.items()}}
        return save_record(folder / "metamers", "metamers", FORMAT_VERSION, {"references": self.references}, doc,
                           weights_sha256=self.metadata.get("weights_sha256"), pngs=pngs)

    @classmethod
    def load(cls, folder: str | os.PathLike, model: ProbeModel | None = None) -> MetamerResult:
        """Read a saved result back; with ``model``, refuse one whose weights are not those it was made with."""
        folder = Path(folder)
        t, doc = load_record(folder / "metamers", "metamers", FORMAT_VERSION)
        if model is not None:
            check_weights(doc["metadata"], model, folder)
        run = Result.load(folder, model)
        refs = t["references"] if doc["format"] >= 2 else torch.load(folder / "references.pt", map_location="cpu",
                                                                       weights_only=True)
        stats = {st: {k: torch.tensor(v) for k, v in d.items()} for st, d in doc["stages"].items()}
        return cls(run.images, refs, doc["stage"], doc["layer"], stats, run, doc["error_target"], doc["names"],
                   doc["metadata"])

    def rescore(self, model: ProbeModel, null: torch.Tensor | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """Judge the saved images again on ``model`` (after checking its weights): the statistics at every stage."""
        check_weights(self.metadata, model, "this metamer result")
        return judge_all(model, self.images, self.references, self.stage, null, self.error_target)

    def sheet(self, path: str | os.PathLike, n: int = 8) -> Path:
        """A PNG of references above their metamers, each metamer titled with its error and verdict."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        k = min(n, len(self))
        # panels of 2.2 in at 150 dpi (330 px each; the figure at least 5 in wide, so its title fits one image)
        fig, axes = plt.subplots(2, k, figsize=(max(5.0, 2.2 * k), 5.2), squeeze=False)
        s = self.stats[self.stage]
        for i in range(k):
            for row, img, title in ((0, self.references[i], "reference"),
                                    (1, self.images[i], f"err {float(s['error'][i]):.3f}\n"
                                                         f"{'pass' if bool(s['passed'][i]) else 'fail'}")):
                ax = axes[row, i]
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
                ax.set_title(title, fontsize=10)
                ax.axis("off")
        fig.suptitle(f"{self.metadata.get('model', '')} metamers at {self.stage}", fontsize=12)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150)
        plt.close(fig)
        return path


def judge_all(model: ProbeModel, images: torch.Tensor, references: torch.Tensor, stage: str,
              null: torch.Tensor | None = None,
              error_target: float = ERROR_TARGET) -> dict[str, dict[str, torch.Tensor]]:
    """Feather's statistics of metamers against their references at every stage of ``model``, each against the
    null set's activations there; ``passed`` adds the error target at the matched ``stage``."""
    all_stages = list(dict.fromkeys([*stages(model), stage]))
    layers = [model.layer(s) for s in all_stages]
    null = null if null is not None else null_images(NULL_IMAGES, model.input_size or images.shape[-1])
    quiet = model.without_noise()
    a_m, a_r, a_n = (_acts(quiet, x, layers) for x in (images, references, null))
    out = {}
    for st, layer in zip(all_stages, layers):
        stats = judge(a_m[layer], a_r[layer], Null.measure(a_r[layer], a_n[layer], layer))
        stats["passed"] = stats["criterion"] & (stats["error"] <= error_target if st == stage else True)
        out[st] = stats
    return out


def default_lr(model: ProbeModel, layer: str) -> float:
    """The first step size for a stage: ``LR_EARLY`` before the model's IT layer, ``LR_LATE`` at and after it (and
    on models without an IT area)."""
    order = {name: i for i, name in enumerate(model.layers)}
    it = model.areas.get("IT")
    if it in order and layer in order and order[layer] < order[it]:
        return LR_EARLY
    return LR_LATE


def generate(model: ProbeModel, references: torch.Tensor, stage: str, *, steps: int = STEPS, step: str = STEP_RULE,
             lr: float | None = None, lr_schedule: str = SCHEDULE, init_noise: float = INIT_NOISE,
             error: float = ERROR_TARGET,
             null: torch.Tensor | None = None, stop: Criterion | str = "default", coarse_to_fine: bool = False,
             range_penalty: float = 0.0, fake_relu: bool = True, surrogate: bool = True, seed: int = 0,
             names: list[str] | None = None, retries: int = RETRIES,
             checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 200,
             progress: bool = True, watch: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
             precision: str = "fp32", channels_last: bool = False, compile: bool | str = False,
             checkpoint_activations: bool = False) -> MetamerResult:
    """Metamers of N reference images (N×3×H×W in [0, 1]) at ``stage`` (a brain area, layer name or 'logits').

    ``steps``/``step``/``lr``/``lr_schedule``: the engine's run (defaults measured on the embedded models: Adam
    from ``default_lr`` with 'plateau', each image's step halved when its own error stalls and at the latest
    after 600 steps at one size (``PLATEAU``), so that a larger budget does not slow an image; 'step' is Feather's
    decay at each eighth of the budget);
    ``init_noise``: SD of the Gaussian start around grey (Feather's 1/20); ``error``: the normalized-error target;
    ``null``: natural images for Feather's criterion (default: 256 of the embedded validation split); ``stop``:
    'default' (error target and criterion), 'criterion' (Feather's alone), 'none' (every step), or a Criterion;
    ``coarse_to_fine``: blur the gradient, σ 2 → 0 px over the run, so coarse structure is matched first;
    ``range_penalty``: instead of clipping pixels to [0, 1], subtract this weight × their squared excursion
    (plenoptic's penalty), clipping only the returned images; ``fake_relu``: give the stage's last ReLU an
    identity gradient (Feather); ``retries``: metamers still failing after the run go again, each retry from a
    new noise start (seed + k) with the first step times ``RETRY_LR`` ** k, and a retry replaces a metamer only where
    its error is lower (``metadata['retried']`` names them; named stopping rules only, since a Criterion holds
    the whole batch's targets); ``checkpoint``: resume file for long runs
    (``synth.optimize``; retries write theirs beside it, ``NAME.retryK.pt``); ``watch``: the engine's live view of
    every step, retries included; ``precision``, ``channels_last``, ``compile``, ``checkpoint_activations``: the
    engine's speed and memory options (``synth.optimize``; the metamers are judged in float32 either way)."""
    check_images(references)
    if not (init_noise >= 0 and math.isfinite(init_noise)) or range_penalty < 0:
        raise ConfigError(f"init_noise and range_penalty must be >= 0, got {init_noise} and {range_penalty}")
    if names is not None and len(names) != references.shape[0]:
        raise ConfigError(f"{len(names)} names for {references.shape[0]} references")
    layer = model.layer(stage)
    if layer == INPUT:
        raise ConfigError("a metamer of the pixels is the image itself: choose a stage of the model")
    lr = default_lr(model, layer) if lr is None else lr
    null = null if null is not None else null_images(NULL_IMAGES, references.shape[-1])
    if retries < 0:
        raise ConfigError(f"retries must be >= 0, got {retries}")
    once = dict(stage=stage, layer=layer, steps=steps, step=step, lr_schedule=lr_schedule, init_noise=init_noise,
                error=error, null=null, stop=stop, coarse_to_fine=coarse_to_fine, range_penalty=range_penalty,
                fake_relu=fake_relu, surrogate=surrogate, checkpoint_every=checkpoint_every, progress=progress,
                watch=watch, engine=dict(precision=precision, channels_last=channels_last, compile=compile,
                                         checkpoint_activations=checkpoint_activations))
    run = _once(model, references, lr=lr, seed=seed, checkpoint=checkpoint, **once)
    stats = judge_all(model, run.images.clamp(0, 1), references, stage, null, error)
    retried: dict[int, dict] = {}
    seconds = float(run.metadata.get("seconds", 0.0))
    for k in range(1, retries + 1):
        failed = torch.nonzero(~stats[stage]["passed"]).flatten()
        if not isinstance(stop, str) or stop == "none" or not len(failed):
            break
        lr_k = lr * RETRY_LR ** k
        path = Path(checkpoint).with_name(f"{Path(checkpoint).stem}.retry{k}.pt") if checkpoint else None
        again = _once(model, references[failed], lr=lr_k, seed=seed + k, checkpoint=path, **once)
        seconds += float(again.metadata.get("seconds", 0.0))
        better = judge_all(model, again.images.clamp(0, 1), references[failed], stage, null, error)[stage]["error"] \
            < stats[stage]["error"][failed]
        if better.any():
            keep = torch.nonzero(better).flatten()
            run = run.with_rows(failed[keep], again.rows(keep))
            retried.update({int(failed[j]): {"lr": lr_k, "seed": seed + k} for j in keep})
            stats = judge_all(model, run.images.clamp(0, 1), references, stage, null, error)
    images = run.images.clamp(0, 1)
    steps_each = (~torch.isnan(run.grad_norm)).sum(0).tolist()  # the gradient norm is NaN once an image stopped
    meta = {**run.metadata, "steps_each": steps_each, "null_images": int(null.shape[0]), "phosphene": __version__,
            "retries": retries, "retried": {str(i): v for i, v in sorted(retried.items())},
            "seconds": round(seconds, 3)}  # the retries' time included
    return MetamerResult(images, references.detach().cpu(), stage, layer, stats, run, error, list(names or []), meta)


def _once(model: ProbeModel, references: torch.Tensor, *, stage: str, layer: str, steps: int, step: str, lr: float,
          lr_schedule: str, init_noise: float, error: float, null: torch.Tensor, stop: Criterion | str,
          coarse_to_fine: bool, range_penalty: float, fake_relu: bool, surrogate: bool, seed: int,
          checkpoint: str | os.PathLike | None, checkpoint_every: int, progress: bool,
          watch: Callable[[int, torch.Tensor, torch.Tensor], None] | None, engine: dict) -> Result:
    """One engine run from one noise start: the metamers of ``references`` before they are judged."""
    size = references.shape[-2:]
    gen = torch.Generator().manual_seed(seed)
    start = (0.5 + init_noise * torch.randn(references.shape[0], 3, *size, generator=gen)).clamp(0, 1)
    silenced = model.has_noise
    run = model.without_noise().fork()  # the run's own modules: its patched backward passes are seen by no one else
    target = _acts(run, references, [layer])[layer]
    null_acts = _acts(run, null, [layer])[layer]
    objective = Match(layer, target, metric="normalized")
    if range_penalty > 0:
        objective = objective - range_penalty * Outside(INPUT)
    rule = _stop_rule(stop, layer, target, Null.measure(target, null_acts, layer), error)
    param = Blurred(start, sigma=2.0, sigma_end=0.0) if coarse_to_fine else Pixels(start)
    fake = last_relu(run.net, layer) if fake_relu and layer != LOGITS else None
    sur = Surrogate(RELU_BETA, POOL_TAU)
    soft = "soft" if surrogate else None
    with patched_backward(run.net, relus=soft, pools=soft, modules={fake: "identity"} if fake else {},
                          surrogate=sur) as patched:
        smoothed = [name for name, backward in patched.items() if backward == "soft"]
        settings = {"fake_relu": fake, "surrogate": f"{sur} on {len(smoothed)} modules" if surrogate else None,
                    "noise_off": silenced}
        per_image = lr_schedule == "plateau"  # every clock counts steps, not fractions of the budget
        return optimize(run, objective, param, constraints=() if range_penalty > 0 else (Box(),), step=step,
                        lr=lr, lr_schedule=PlateauDecay(**PLATEAU) if per_image else lr_schedule,
                        steps=steps, stop=rule, seed=seed, checkpoint=checkpoint,
                        checkpoint_every=checkpoint_every, progress=progress, watch=watch,
                        callback=(lambda t, n: sur.at(t / (SHARPEN_STEPS if per_image else max(1, n))))
                        if surrogate else None,
                        metadata={"method": "metamer", "stage": stage, "init_noise": init_noise,
                                  "coarse_to_fine": coarse_to_fine, "range_penalty": range_penalty, **settings,
                                  "error_target": error}, settings=settings, **engine)


def _stop_rule(stop: Criterion | str, layer: str, target: torch.Tensor, null: Null, error: float) -> Criterion | None:
    """The stopping rule a name stands for."""
    if isinstance(stop, Criterion):
        return stop
    if stop == "default":
        return MetamerStop(layer, target, null, error)
    if stop == "criterion":
        return MetamerStop(layer, target, null, math.inf)
    if stop == "none":
        return None
    raise ConfigError(f"stop must be 'default', 'criterion', 'none' or a Criterion, got {stop!r}")
