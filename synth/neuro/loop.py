"""Closed-loop experiments: show, record, refit, synthesize, show again — one experiment folder a rig can drive.

Bashivan, Kar & DiCarlo (2019) fit a V4 readout, synthesized, showed the monkey and recorded; Walker et al. (2019)
showed a mouse's neurons their model's most exciting images; Ponce et al. (2019) chose each generation from the
last one's responses.  Each lab wrote that loop by hand around its rig.  An ``Experiment`` is the loop, on disk:

    DIR/experiment.json             the design: model, layer, sites, goals, budgets, selection, seed, version
    DIR/round-00/manifest.json      what the round shows and where it stands ('ready' → 'recorded' → 'fitted')
    DIR/round-00/images/*.png       the images to show, each with its recipe in PNG text chunks
    DIR/round-00/presentation.csv   the trials in order: trial, image_id, file, repeat, blank
    DIR/round-00/responses.npz      the recording, in ``readout fit``'s format (images × sites × repeats)
    DIR/round-00/readout.pt/.json   the readout refit on every round recorded so far
    DIR/round-00/summary.json       the round's measures (``Experiment.status``)

Round 0 shows natural images only, as the initial recording session of Bashivan et al.  Every later round ``r``
shows, each ``repeats`` times, in one shuffled order:

- ``test``: for each site and goal, the image synthesized through readout ``r − 1`` ('stretch': the site as high
  as it goes; 'onehot': the site high and the rest of the population low; 'mei': Walker et al.'s most exciting
  image, blurred gradients at fixed contrast);
- ``reference``: each site's best natural image of round 0 (by its recorded mean; one fixed set, as Bashivan et
  al.'s, so that the rounds' ratios compare), shown again so that the test image and the natural best are measured
  on the same fresh trials (the max of noisy means alone is biased upwards);
- ``blank``: a mean-grey screen, the sites' baseline;
- ``fit``: new natural images, filling the round's budget of trials, chosen by ``select``: 'random', 'uncertain'
  (where a committee of readouts fit on cross-validation folds disagrees most) or 'diverse' (farthest from every
  image recorded so far in the readout's predicted-response space).

Every step writes atomically and the manifest last, so a kill at any point resumes: ``next`` rewrites a round it
had not finished writing (the same seed gives the same images) and hands back a written one unchanged; ``record``
takes a recording once (a second, different file for the same round is refused) and finishes a refit a kill
interrupted.  The loop only ever shows images to a subject: ``Subject.record`` is all it calls.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from synth.engine.constraints import Contrast
from synth.engine.objectives import OneHot, Site, Stretch
from synth.errors import ConfigError, UnknownNameError
from synth.files import read_png, write_csv, write_png, write_text
from synth.neuro.readouts import METHODS, Readout, Responses, features, fit, fit_regressor, load_responses, pearson
from synth.neuro.subject import Subject
from synth.neuro.synthesis import synthesize
from synth.rng import derive
from synth.version import __version__
from synth.zoo.probe import ProbeModel

GOALS = ("stretch", "onehot", "mei")
SELECT = ("random", "uncertain", "diverse")
STATES = ("ready", "recorded", "fitted")
BLANK = "blank"
DEFAULTS = {"goals": ["stretch"], "budget": 1200, "first_budget": None, "repeats": 4, "pool": 600,
            "select": "random", "steps": 256, "method": "ridge", "synthetic_weight": 0.1, "folds": 10,
            "committee": 5, "seed": 0,
            "split": "train", "subject": None}


def _round_dir(folder: Path, r: int) -> Path:
    return folder / f"round-{r:02d}"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); the experiment folder is damaged") from None


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Experiment:
    """A closed-loop experiment in a folder (see the module docstring): ``next`` writes a round to show,
    ``record`` ingests its recording and refits, ``status`` reports every round, ``run`` drives a subject."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        path = self.folder / "experiment.json"
        if not path.is_file():
            raise ConfigError(f"{self.folder} is not a loop experiment (no experiment.json); create one with "
                              f"'phosphene loop init {self.folder} --model M --layer L --sites N'")
        self.config = _read_json(path)
        self._model: ProbeModel | None = None

    # -- creation --------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | os.PathLike, model: str, layer: str, sites: int, *,
               goals: list[str] | str = "stretch", budget: int = 1200, first_budget: int | None = None,
               repeats: int = 4, pool: int = 600, select: str = "random", steps: int = 256, method: str = "ridge",
               synthetic_weight: float = 0.1, folds: int = 10, committee: int = 5, seed: int = 0,
               site_names: list[str] | None = None, subject: dict | None = None) -> Experiment:
        """Write a new experiment's design to ``folder`` (which must be empty or new) and return it.

        ``model``/``layer``: the probe model and the layer its readout reads; ``sites``: how many sites the rig
        records (their names come with the first recording unless ``site_names`` gives them); ``budget``: trials
        per round (``first_budget`` for round 0, default the same); ``repeats``: trials per image; ``pool``: natural
        candidates per round that ``select`` chooses among; ``steps``: of each synthesis; ``method``, ``folds``: the
        readout's regression and cross-validation; ``synthetic_weight``: each synthesized image's weight in the
        refit against a natural image's 1 (ridge only; 0 leaves them out); ``committee``: readouts whose
        disagreement 'uncertain' reads;
        ``subject``: a simulated subject's design (``{'model': 'toy-robust', 'layer': 'IT'}``) for ``run``."""
        from synth.zoo.models import load_model

        folder = Path(folder)
        if (folder / "experiment.json").exists():
            raise ConfigError(f"{folder} already holds an experiment; pick a new folder or continue it with "
                              f"'phosphene loop next {folder}'")
        if folder.exists() and any(folder.iterdir()):
            raise ConfigError(f"{folder} is not empty; an experiment needs a folder of its own")
        goals = [g.strip() for g in goals.split(",")] if isinstance(goals, str) else list(goals)
        for g in goals:
            if g not in GOALS:
                raise UnknownNameError("loop goal", g, GOALS)
        if select not in SELECT:
            raise UnknownNameError("selection", select, SELECT)
        if method not in METHODS:
            raise UnknownNameError("readout method", method, METHODS)
        if not 0 <= synthetic_weight <= 1:
            raise ConfigError(f"synthetic_weight must be between 0 and 1, got {synthetic_weight}")
        if method == "pls" and 0 < synthetic_weight < 1:
            raise ConfigError("method 'pls' takes no sample weights: use method='ridge', or synthetic_weight 0 or 1")
        if sites < 2 or repeats < 1 or steps < 1 or folds < 2 or committee < 2 or pool < 1:
            raise ConfigError(f"need sites >= 2, repeats >= 1, steps >= 1, folds >= 2, committee >= 2 and pool >= 1; "
                              f"got sites={sites}, repeats={repeats}, steps={steps}, folds={folds}, "
                              f"committee={committee}, pool={pool}")
        first = budget if first_budget is None else first_budget
        if first // repeats < 11:
            raise ConfigError(f"round 0's budget of {first} trials shows {first // repeats} images at {repeats} "
                              f"repeats; a readout needs at least 10 natural images and a blank")
        if site_names is not None and len(site_names) != sites:
            raise ConfigError(f"{len(site_names)} site names for {sites} sites")
        from synth.world.data import World

        probe = load_model(model)
        layer = probe.layer(layer)  # an unknown layer fails here, with close matches
        config = {**DEFAULTS, "model": model, "layer": layer, "sites": sites, "site_names": site_names,
                  "goals": goals, "budget": budget, "first_budget": first, "repeats": repeats, "pool": pool,
                  "select": select, "steps": steps, "method": method,
                  "synthetic_weight": synthetic_weight, "folds": folds, "committee": committee,
                  "seed": seed, "subject": subject, "weights_sha256": probe.weights_digest(),
                  "size": probe.input_size or World().size, "phosphene": __version__}
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / "experiment.json", json.dumps(config, indent=1))
        exp = cls(folder)
        exp._model = probe
        return exp

    # -- state -----------------------------------------------------------------------------------------------
    @property
    def model(self) -> ProbeModel:
        """The probe model, loaded once (its weights checked against the design's)."""
        if self._model is None:
            from synth.zoo.models import load_model

            self._model = load_model(self.config["model"])
            if self._model.weights_digest() != self.config["weights_sha256"]:
                raise ConfigError(f"{self.config['model']}'s weights changed since the experiment began "
                                  f"({self.config['weights_sha256'][:12]}…); its readouts would not fit them")
        return self._model

    def manifests(self) -> list[dict]:
        """Every round's manifest, in order (a round whose manifest was never written does not count)."""
        out = []
        while (_round_dir(self.folder, len(out)) / "manifest.json").is_file():
            out.append(_read_json(_round_dir(self.folder, len(out)) / "manifest.json"))
        return out

    def _save_manifest(self, m: dict) -> None:
        write_text(_round_dir(self.folder, m["round"]) / "manifest.json", json.dumps(m, indent=1))

    def readout(self, r: int) -> Readout:
        """The readout refit after round ``r``."""
        return Readout.load(_round_dir(self.folder, r) / "readout.pt")

    # -- next ------------------------------------------------------------------------------------------------
    def next(self, progress: bool = True) -> dict:
        """The round to show now: the last one if it still waits for its recording, else a new one written to
        disk (after finishing a refit a kill interrupted).  Returns its manifest."""
        rounds = self.manifests()
        if rounds and rounds[-1]["state"] == "ready":
            return rounds[-1]
        if rounds and rounds[-1]["state"] == "recorded":
            self._refit(rounds[-1], progress)
        r = len(rounds)
        folder = _round_dir(self.folder, r)
        if folder.exists():  # a round a kill left half-written: write it again, whole
            shutil.rmtree(folder)
        (folder / "images").mkdir(parents=True)
        images: list[tuple[str, torch.Tensor, dict]] = []  # (id, image, metadata)
        if r > 0:
            images += self._tests(r, progress)
            images += self._references(r)
        grey = torch.full((3, self.config["size"], self.config["size"]), 0.5)
        images.append((BLANK, grey, {"role": "blank"}))
        budget = self.config["first_budget"] if r == 0 else self.config["budget"]
        fill = budget // self.config["repeats"] - len(images)
        if fill < 0:
            raise ConfigError(f"round {r}'s {len(images)} test, reference and blank images need "
                              f"{len(images) * self.config['repeats']} trials, more than its budget of {budget}")
        images += self._natural(r, fill, progress)
        rows = []
        for image_id, image, meta in images:
            name = _file_name(image_id)
            write_png(image, folder / "images" / name,
                      {"image_id": image_id, "round": r, **meta, "model": self.config["model"],
                       "layer": self.config["layer"], "experiment_seed": self.config["seed"], "phosphene": __version__})
            rows.append({"image_id": image_id, "file": f"images/{name}", **meta})
        trials = self._presentation(r, [row["image_id"] for row in rows])
        write_csv(folder / "presentation.csv", trials)
        manifest = {"round": r, "state": "ready", "images": rows, "trials": len(trials),
                    "repeats": self.config["repeats"],
                    "counts": {role: sum(row["role"] == role for row in rows)
                               for role in ("fit", "test", "reference", "blank")}}
        self._save_manifest(manifest)
        return manifest

    def _presentation(self, r: int, ids: list[str]) -> list[dict]:
        """Every image ``repeats`` times, in an order shuffled by the round's seed."""
        reps = self.config["repeats"]
        trials = [(i, k + 1) for i in ids for k in range(reps)]
        order = np.random.default_rng(derive(self.config["seed"], 1000 + r)).permutation(len(trials))
        return [{"trial": t + 1, "image_id": trials[j][0], "file": f"images/{_file_name(trials[j][0])}",
                 "repeat": trials[j][1], "blank": int(trials[j][0] == BLANK)} for t, j in enumerate(order)]

    def _natural(self, r: int, n: int, progress: bool) -> list[tuple[str, torch.Tensor, dict]]:
        """``n`` natural images never shown before, chosen from this round's pool of candidates by ``select``."""
        from synth.world.data import render

        if n == 0:
            return []
        pool = max(self.config["pool"], n)
        start = 1_000_000 + derive(self.config["seed"], 7) % 1_000_000 + sum(
            max(self.config["pool"], m["counts"]["fit"]) for m in self.manifests())
        batch = render(pool, self.config["split"], start=start)
        candidates = batch.tensor()
        how = self.config["select"] if r > 0 else "random"
        if how == "random":
            chosen = np.arange(n)
        else:
            chosen = self._choose(how, candidates, n, progress)
        split = self.config["split"]
        return [(f"{split}:{start + int(i)}", candidates[int(i)],
                 {"role": "fit", "category": batch.metadata[int(i)]["category"], "selected_by": how}) for i in chosen]

    def _choose(self, how: str, candidates: torch.Tensor, n: int, progress: bool) -> np.ndarray:
        """Indices of the ``n`` candidates that 'uncertain' or 'diverse' prefers, given everything recorded."""
        ids, images, values = self.recorded()
        natural, weights = self.fit_weights(ids)
        layer = self.config["layer"]
        x = features(self.model, images, layer).double().numpy()
        xc = features(self.model, candidates, layer).double().numpy()
        y = values.mean(2) if values.ndim == 3 else values
        y = (y - y[natural].mean(0)) / np.where(y[natural].std(0) > 0, y[natural].std(0), 1.0)
        if how == "uncertain":  # query by committee: readouts fit on different folds, where they disagree most
            from sklearn.model_selection import KFold

            k = self.config["committee"]
            preds = []
            for train, _ in tqdm(KFold(k, shuffle=True, random_state=self.config["seed"]).split(x),
                                 total=k, desc="committee", disable=not progress):
                comps = min(25, len(train) - 1, x.shape[1])
                reg = fit_regressor(self.config["method"], x[train], y[train], weights[train], comps)
                preds.append(np.asarray(reg.predict(xc)).reshape(len(xc), -1))
            return np.argsort(-np.stack(preds).var(0).mean(1), kind="stable")[:n]
        readout = self.readout(len(self.manifests()) - 1)  # farthest-point sampling in the readout's space
        seen = readout(torch.from_numpy(x).float()).numpy()
        cand = readout(torch.from_numpy(xc).float()).numpy()
        dist = ((cand[:, None] - seen[None]) ** 2).sum(-1).min(1)
        chosen = []
        for _ in range(n):
            i = int(np.argmax(dist))
            chosen.append(i)
            dist = np.minimum(dist, ((cand - cand[i]) ** 2).sum(-1))
            dist[chosen] = -np.inf
        return np.array(chosen)

    def _tests(self, r: int, progress: bool) -> list[tuple[str, torch.Tensor, dict]]:
        """For each goal, one image per site synthesized through readout ``r − 1``."""
        readout = self.readout(r - 1)
        model = self.model
        name = model.add_readout(readout, f"{readout.layer}:loop{r - 1}")
        sites = tuple(range(len(readout.sites)))
        out = []
        try:
            for g, goal in enumerate(self.config["goals"]):
                seed = derive(self.config["seed"], 100 * r + g)
                opts = dict(n=len(sites), steps=self.config["steps"], seed=seed, progress=progress)
                if goal == "mei":  # Walker et al.: blurred gradient steps at a fixed mean and RMS contrast
                    objective = Site(name, sites)
                    opts.update(param="blurred", constraints=(Contrast(),))
                else:
                    objective = (Stretch if goal == "stretch" else OneHot)(name, sites)
                res = synthesize(model, objective, **opts)
                for k, site in enumerate(readout.sites):
                    out.append((f"r{r}:{goal}:{site}", res.images[k],
                                {"role": "test", "goal": goal, "site": site, "readout_round": r - 1,
                                 "objective": f"{goal} of {site} through the readout of round {r - 1}",
                                 "seed": seed, "steps": self.config["steps"], "predicted": float(res.scores[k])}))
        finally:
            model.remove_readout(name)
        return out

    def _references(self, r: int) -> list[tuple[str, torch.Tensor, dict]]:
        """Each site's best natural image of round 0 (the initial session's set, fixed so that rounds compare) by
        its recorded mean, to be measured again beside the tests."""
        resp = self.responses(0)
        natural = [k for k, i in enumerate(resp.image_ids) if i != BLANK]
        best = [resp.image_ids[natural[k]] for k in resp.mean[natural].argmax(0)]
        out, seen = [], {}
        for site, image_id in zip(self.site_names(), best):
            if image_id in seen:
                out[seen[image_id]][2]["best_for"].append(site)
                continue
            image, _ = read_png(_round_dir(self.folder, 0) / "images" / _file_name(image_id))
            seen[image_id] = len(out)
            out.append((f"r{r}:ref:{image_id}", image, {"role": "reference", "natural_id": image_id,
                                                         "best_for": [site]}))
        return out

    def responses(self, r: int) -> Responses:
        """The recording of round ``r``, its images in the round's order."""
        return load_responses(_round_dir(self.folder, r) / "responses.npz")

    # -- record ----------------------------------------------------------------------------------------------
    def site_names(self) -> list[str]:
        """The recorded sites' names (known once given at creation or by the first recording)."""
        names = self.config.get("site_names")
        if names is None:
            raise ConfigError("no recording yet: the sites' names come with the first one")
        return names

    def record(self, path: str | os.PathLike, progress: bool = True) -> dict:
        """Ingest the recording of the round waiting for one, refit the readout on every round so far, and return
        the round's summary.  The file is checked whole before anything is written: a wrong shape, unknown or
        missing image ids, other sites or NaNs raise a one-line error and change nothing."""
        path = Path(path)
        rounds = self.manifests()
        if not rounds:
            raise ConfigError("nothing has been shown yet: run 'phosphene loop next' first")
        m = rounds[-1]
        folder = _round_dir(self.folder, m["round"])
        if m["state"] != "ready":
            if m["state"] == "recorded" and path.is_file() and _digest(path) == m.get("responses_sha256"):
                return self._refit(m, progress)  # the same recording again after a kill: finish the refit
            raise ConfigError(f"round {m['round']} already has its recording (sha256 "
                              f"{m.get('responses_sha256', '?')[:12]}…); 'phosphene loop next' writes the next round")
        resp = load_responses(path)
        self._check(resp, m)
        ordered = _ordered(resp, [row["image_id"] for row in m["images"]])
        ordered.save(folder / "responses.npz")
        if self.config.get("site_names") is None:
            self.config["site_names"] = list(resp.sites)
            write_text(self.folder / "experiment.json", json.dumps(self.config, indent=1))
        m.update(state="recorded", responses_sha256=_digest(path), recording=str(path.name))
        self._save_manifest(m)
        return self._refit(m, progress)

    def _check(self, resp: Responses, m: dict) -> None:
        """Refuse, in one line, a recording that is not of this round's images and this experiment's sites."""
        expected = [row["image_id"] for row in m["images"]]
        got = list(resp.image_ids)
        dupes = sorted(i for i, count in Counter(got).items() if count > 1)
        if dupes:
            raise ConfigError(f"the recording names image ids more than once: {_few(dupes)}; "
                              "give each image's trials as repeats (images × sites × repeats)")
        unknown, missing = sorted(set(got) - set(expected)), sorted(set(expected) - set(got))
        if unknown:
            raise ConfigError(f"the recording has {len(unknown)} image id(s) round {m['round']} did not show: "
                              f"{_few(unknown)} (its ids are in presentation.csv)")
        if missing:
            raise ConfigError(f"the recording lacks {len(missing)} image id(s) round {m['round']} showed: "
                              f"{_few(missing)}; record every image of presentation.csv")
        if resp.values.shape[1] != self.config["sites"]:
            raise ConfigError(f"the recording has {resp.values.shape[1]} sites, the experiment "
                              f"{self.config['sites']}")
        names = self.config.get("site_names")
        if names is not None and list(resp.sites) != list(names):
            raise ConfigError(f"the recording's sites {_few(list(resp.sites))} are not the experiment's "
                              f"{_few(list(names))}")

    def recorded(self, upto: int | None = None) -> tuple[list[str], torch.Tensor, np.ndarray]:
        """Every image shown and recorded in rounds ``0 .. upto`` but the blanks: ids, the images as shown, and
        their responses (images × sites × repeats, or × 1 where rounds differ in repeats)."""
        ids, images, values = [], [], []
        for m in self.manifests():
            if upto is not None and m["round"] > upto or m["state"] == "ready":
                continue
            folder = _round_dir(self.folder, m["round"])
            resp = self.responses(m["round"])
            for i, image_id in enumerate(resp.image_ids):
                if image_id == BLANK:
                    continue
                ids.append(image_id)
                images.append(read_png(folder / "images" / _file_name(image_id))[0])
                values.append(resp.values[i])
        shapes = {v.shape for v in values}
        stacked = np.stack(values) if len(shapes) == 1 else np.stack([v.mean(-1, keepdims=True) if v.ndim == 2
                                                                       else v[:, None] for v in values])
        return ids, torch.stack(images), stacked

    def fit_weights(self, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Which recorded images are natural, and each one's weight in a refit: 1 for a natural image,
        ``synthetic_weight`` for a synthesized one.  Measured on the simulated subject (examples/closed_loop.py),
        images driven far past the natural range at full weight pull a linear readout off the natural images (its
        held-out r fell round after round); at 0.1 they refine it and held-out r rises."""
        tests = {row["image_id"] for m in self.manifests() for row in m["images"] if row["role"] == "test"}
        natural = np.array([i not in tests for i in ids])
        return natural, np.where(natural, 1.0, self.config.get("synthetic_weight", 1.0))

    def _refit(self, m: dict, progress: bool) -> dict:
        """Fit the readout on rounds ``0 .. m['round']`` and write it with the round's summary."""
        r = m["round"]
        ids, images, values = self.recorded(r)
        natural, weights = self.fit_weights(ids)
        c = self.config
        readout = fit(self.model, images, Responses(ids, values, self.site_names()), c["layer"], method=c["method"],
                      folds=c["folds"], seed=c["seed"], progress=progress, natural=natural, weights=weights)
        readout.save(_round_dir(self.folder, r) / "readout.pt")
        summary = self._summary(m, readout)
        write_text(_round_dir(self.folder, r) / "summary.json", json.dumps(summary, indent=1))
        m.update(state="fitted")
        self._save_manifest(m)
        return summary

    def _summary(self, m: dict, readout: Readout) -> dict:
        """The round's measures: the readout's held-out r and ceiling; per goal, each site's test image against
        its natural best, both on this round's trials; the blank's baseline."""
        resp = self.responses(m["round"])
        mean = resp.mean
        row = {i: k for k, i in enumerate(resp.image_ids)}
        sites = self.site_names()
        info = readout.info
        out = {"round": m["round"], "images_fitted": info["n_images"], "median_r": info["median_r"],
               "median_ceiling": float(np.median(info["ceiling"])) if "ceiling" in info else None,
               "median_ceiled_r": info.get("median_ceiled_r"), "r": info["r"],
               "baseline": mean[row[BLANK]].tolist(), "trials": m["trials"], "counts": m["counts"], "goals": {}}
        refs = {s: r["image_id"] for r in m["images"] if r["role"] == "reference" for s in r["best_for"]}
        for goal in self.config["goals"]:
            tests = {r["site"]: r["image_id"] for r in m["images"] if r.get("goal") == goal}
            if not tests:
                continue
            s_idx = np.arange(len(sites))
            test = np.array([mean[row[tests[s]], k] for k, s in enumerate(sites)])
            ref = np.array([mean[row[refs[s]], k] for k, s in enumerate(sites)])
            ratio = test / np.maximum(ref, 1e-9)
            g = {"test": test.tolist(), "natural_best": ref.tolist(), "ratio": ratio.tolist(),
                 "median_ratio": float(np.median(ratio)), "fraction_above": float((ratio > 1).mean())}
            if goal == "onehot":  # the target the most active site, in z-units of every natural image recorded
                nat = self._natural_means(m["round"])
                mu, sd = nat.mean(0), np.where(nat.std(0) > 0, nat.std(0), 1.0)
                z = (np.array([mean[row[tests[s]]] for s in sites]) - mu) / sd
                g["onehot_success"] = float((z.argmax(1) == s_idx).mean())
            out["goals"][goal] = g
        return out

    def _natural_means(self, upto: int) -> np.ndarray:
        """Trial means (images × sites) of every natural image recorded for fitting in rounds ``0 .. upto``."""
        out = []
        for m in self.manifests()[:upto + 1]:
            resp = self.responses(m["round"])
            fit_ids = {row["image_id"] for row in m["images"] if row["role"] == "fit"}
            out += [resp.mean[k] for k, i in enumerate(resp.image_ids) if i in fit_ids]
        return np.array(out)

    # -- status and the simulated loop -----------------------------------------------------------------------
    def status(self) -> list[dict]:
        """Per round: its state and trials, and once fitted its summary."""
        out = []
        for m in self.manifests():
            path = _round_dir(self.folder, m["round"]) / "summary.json"
            out.append({"round": m["round"], "state": m["state"], "trials": m["trials"], "counts": m["counts"],
                        **(_read_json(path) if m["state"] == "fitted" and path.is_file() else {})})
        return out

    def simulated_subject(self) -> Subject:
        """The subject the design names (``subject={'model', 'layer'}``), its sites chosen by the design's seed."""
        from synth.world.data import render
        from synth.zoo.models import load_model

        spec = self.config.get("subject")
        if not spec:
            raise ConfigError("this experiment names no simulated subject; create it with --subject-model to use "
                              "'loop run --subject simulated', or record a rig's responses with 'loop record'")
        calibration = render(spec.get("calibration", 320), "test").tensor()
        return Subject(load_model(spec["model"]), spec.get("layer", "IT"), calibration, n_sites=self.config["sites"],
                       seed=spec.get("seed", self.config["seed"]))

    def run(self, subject: Subject, rounds: int, progress: bool = True,
            on_round: Callable[[dict], None] | None = None) -> list[dict]:
        """Drive the loop against ``subject`` until rounds ``0 .. rounds`` are fitted: write each round, show its
        images to the subject (a recording saved once, so a resumed run never shows a round twice), record."""
        if subject.sites and self.config.get("site_names") is None:
            self.config["site_names"] = list(subject.sites)
            write_text(self.folder / "experiment.json", json.dumps(self.config, indent=1))
        while True:
            done = [m for m in self.manifests() if m["state"] == "fitted"]
            if len(done) > rounds:
                return self.status()
            current = self.manifests()
            if current and current[-1]["state"] == "recorded":
                summary = self._refit(current[-1], progress)
            else:
                m = self.next(progress)
                path = _round_dir(self.folder, m["round"]) / "simulated.npz"
                if not path.is_file():
                    present(subject, self.folder, m, self.config["seed"]).save(path)
                summary = self.record(path, progress)
            if on_round is not None:
                on_round(summary)


def present(subject: Subject, folder: Path, manifest: dict, seed: int) -> Responses:
    """Show a round's images, as written, to a simulated subject: each image's trials as repeats."""
    round_dir = _round_dir(Path(folder), manifest["round"])
    ids = [row["image_id"] for row in manifest["images"]]
    images = torch.stack([read_png(round_dir / row["file"])[0] for row in manifest["images"]])
    values = subject.record(images, manifest["repeats"], seed=[seed, 2000 + manifest["round"]])
    return Responses(ids, values, list(subject.sites))


def held_out_r(readout: Readout, model: ProbeModel, subject: Subject, images: torch.Tensor) -> np.ndarray:
    """Per site, Pearson r between a readout's predictions and the subject's expected rates on ``images`` the
    loop never showed (a simulation's luxury: the noise-free truth)."""
    with torch.no_grad():
        pred = readout(features(model, images, readout.layer).to(readout.weight.device)).cpu().numpy()
    return pearson(pred, subject.rates(images))


def _ordered(resp: Responses, ids: list[str]) -> Responses:
    """The recording with its images in the round's order."""
    where = {i: k for k, i in enumerate(resp.image_ids)}
    return Responses(ids, resp.values[[where[i] for i in ids]], list(resp.sites))


def _file_name(image_id: str) -> str:
    """A portable file name for an image id ('train:1000123' → 'train-1000123.png')."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in image_id) + ".png"


def _few(items: list[str], k: int = 4) -> str:
    return ", ".join(repr(i) for i in items[:k]) + (f" and {len(items) - k} more" if len(items) > k else "")

