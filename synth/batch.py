"""Batch generation: an experiment file becomes jobs; each job is one pure function call that writes its images.

An experiment is a TOML file::

    [defaults]                       # keys every job inherits
    model = "toy-standard"
    steps = 256

    [[grid]]                         # the cartesian product of list values
    objective = ["stretch(IT:0)", "stretch(IT:1)"]
    seed = [0, 1]

    [[jobs]]                         # single jobs
    objective = "onehot(IT:3)"

Every job's identity is a hash of its resolved parameters and of the *content* of the weights and readouts it
uses (retraining a model in place redoes its jobs), so a rerun finds finished jobs and skips them.  Files are
named so that a person finds an image without the manifest — ``MODEL_OBJECTIVE_sSEED_ID_K.png``, the hash kept
for identity.  A job writes its PNGs and then its record (JSON), each to a temporary name renamed into place, so
a crash never leaves a half-written stimulus that looks finished; temporary files a killed run left are removed
when the next run starts; the manifest (``manifest.jsonl`` and ``manifest.csv``) is rebuilt from the records
after every run.  ``run_job`` needs nothing but its arguments, so any executor can run it: the ``local`` backend
(a process pool) or ``ray`` (a Ray cluster, or a local Ray started with the given number of CPUs; the output
folder must be on a filesystem every node sees).  Both write the same layout, so a run started on one resumes
on the other.
"""
from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import multiprocessing
import os
import re
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import cache
from pathlib import Path

import torch
from tqdm.auto import tqdm

from synth.engine.constraints import stimulus_controls
from synth.errors import ConfigError, UnknownNameError, suggest
from synth.files import sha256, write_csv, write_text

# Every key a job may set, with its default.
JOB_KEYS: dict[str, object] = {
    "model": "toy-standard", "weights": None, "objective": None, "seed": 0, "n": 1, "steps": 256,
    "method": "gradient", "param": "fourier", "init": "noise", "lr": 0.05, "step": "adam", "lr_schedule": "constant",
    "transforms": "standard", "eot": 1, "size": None, "target": None, "relu_override": 16, "readouts": [],
    "contrast": None, "aperture": None, "grayscale": False, "population": 40, "max_freq": 12,
    "optimizer": "genetic", "code": "fourier", "random_weights": False,
    "precision": "fp32", "channels_last": False, "compile": False, "checkpoint_activations": False,
}
SECTIONS = ("experiment", "defaults", "grid", "jobs")
EXPERIMENT_KEYS = ("name", "description")
METHODS = ("gradient", "evolution")
BACKENDS = ("local", "ray")


def _check_keys(table: dict, where: str) -> None:
    for key in table:
        if key not in JOB_KEYS:
            raise ConfigError(f"unknown key {key!r} in {where}; {suggest(key, JOB_KEYS)} "
                              f"(valid keys: {', '.join(JOB_KEYS)})")


def load_experiment(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """Read an experiment file: its [experiment] table and the fully resolved job list (errors name bad keys)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file not found: {path}")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for section in doc:
        if section not in SECTIONS:
            raise ConfigError(f"unknown section [{section}] in {path}; {suggest(section, SECTIONS)}")
    for key in doc.get("experiment", {}):
        if key not in EXPERIMENT_KEYS:
            raise ConfigError(f"unknown key {key!r} in [experiment]; {suggest(key, EXPERIMENT_KEYS)}")
    defaults = doc.get("defaults", {})
    _check_keys(defaults, "[defaults]")
    jobs = []
    for k, grid in enumerate(doc.get("grid", [])):
        _check_keys(grid, f"[[grid]] #{k + 1}")
        axes = {key: value if isinstance(value, list) and key != "readouts" else [value] for key, value in grid.items()}
        for combo in itertools.product(*axes.values()):
            jobs.append(dict(zip(axes, combo)))
    for k, job in enumerate(doc.get("jobs", [])):
        _check_keys(job, f"[[jobs]] #{k + 1}")
        jobs.append(dict(job))
    if not jobs:
        raise ConfigError(f"{path} defines no jobs: add a [[grid]] or [[jobs]] table")
    resolved = []
    for k, job in enumerate(jobs):
        full = {**JOB_KEYS, **defaults, **job}
        if not full["objective"]:
            raise ConfigError(f"job #{k + 1} has no objective")
        if full["method"] not in METHODS:
            raise ConfigError(f"job #{k + 1}: method {full['method']!r}; {suggest(full['method'], METHODS)}")
        full["weights_digest"] = weights_digest(full)
        full["id"] = job_id(full)
        resolved.append(full)
    return doc.get("experiment", {}), resolved


@cache
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    return sha256(path)


def _digest(path: str | os.PathLike, what: str) -> str:
    """A file's sha256, read once per process for an unchanged file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    st = p.stat()
    return _file_digest(str(p.resolve()), st.st_size, st.st_mtime_ns)


def weights_digest(job: dict) -> str:
    """What a job's model computes with, by content: the sha256 of its weights file (an embedded model's shipped
    weights, or the checkpoint given) and of every readout it attaches; 'random init' for an untrained net."""
    from synth.neuro.readouts import Readout
    from synth.zoo.models import WEIGHTS_DIR

    card = WEIGHTS_DIR / f"{job['model']}.json"
    if job["weights"]:
        parts = [_digest(job["weights"], "weights file")]
    elif card.is_file():  # an embedded model: its shipped weights, named by its card
        parts = [_digest(WEIGHTS_DIR / json.loads(card.read_text())["weights"], f"weights of {job['model']}")]
    else:
        parts = ["random init"]
    for path in job["readouts"]:
        pt = Path(path).with_suffix(".pt")
        if not pt.is_file():
            Readout.load(path)  # raises the readout's own clear error
        parts += [_digest(pt, "readout"), _digest(pt.with_suffix(".json"), "readout description")]
    space = job["code"] if job["method"] == "evolution" else job["param"]
    if str(space).startswith("generator:"):  # the images are the generator's: its weights count too
        from synth.zoo.generators import GENERATORS_DIR

        name = str(space).split(":", 1)[1]
        card = GENERATORS_DIR / f"{name}.json"
        weights = GENERATORS_DIR / json.loads(card.read_text())["weights"] if card.is_file() else name
        parts.append(_digest(weights, f"weights of generator {name}"))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def job_id(job: dict) -> str:
    """A stable short hash of a job's parameters and its weights' content (its identity on disk)."""
    canon = json.dumps({**{k: job[k] for k in JOB_KEYS}, "weights_digest": job["weights_digest"]}, sort_keys=True,
                       default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:12]


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", str(text)).strip("-")[:limit].strip("-") or "x"


def file_name(job: dict, k: int) -> str:
    """A name a person can read — model, objective, seed — followed by the job's hash and the image's index."""
    return f"{_slug(job['model'], 24)}_{_slug(job['objective'])}_s{job['seed']}_{job['id']}_{k}.png"


@cache
def _model(name: str, weights: str | None, readouts: tuple[str, ...]):
    from synth.neuro.readouts import Readout
    from synth.zoo.models import load_model

    model = load_model(name, weights=weights)
    for path in readouts:
        model.add_readout(Readout.load(path))
    return model


def run_job(job: dict, out: str | os.PathLike, progress: bool = False) -> list[dict]:
    """Run one job and write its images and record into ``out``; returns its manifest rows. Pure in its inputs."""
    from synth.files import write_png
    from synth.neuro.evolve import evolve
    from synth.neuro.synthesis import synthesize
    from synth.zoo.models import require_trained

    out = Path(out)
    model = _model(job["model"], job["weights"], tuple(job["readouts"]))
    if not job["random_weights"]:
        require_trained(model, f"job {job['id']}: set weights = PATH, or random_weights = true to synthesize for "
                               f"the untrained network on purpose")
    size = job["size"] or model.input_size
    constraints = stimulus_controls(size, job["contrast"], job["aperture"], job["grayscale"])
    if job["method"] == "evolution":
        result = evolve(model, job["objective"], population=job["population"], generations=job["steps"], size=size,
                        max_freq=job["max_freq"], seed=job["seed"], optimizer=job["optimizer"], code=job["code"],
                        progress=progress)
        best = int(result.best_scores.argmax())  # the best image ever evaluated (CMA-ES's last sample is new)
        images, scores = result.best[best:best + 1], result.best_scores[best:best + 1]
    else:
        result = synthesize(model, job["objective"], n=job["n"], size=size, param=job["param"], init=job["init"],
                            steps=job["steps"], lr=job["lr"], step=job["step"], lr_schedule=job["lr_schedule"],
                            transforms=None if job["transforms"] in (None, "none") else job["transforms"],
                            eot=job["eot"], constraints=constraints, target=job["target"], seed=job["seed"],
                            relu_override=job["relu_override"], precision=job["precision"],
                            channels_last=job["channels_last"], compile=job["compile"],
                            checkpoint_activations=job["checkpoint_activations"], progress=progress)
        images, scores = result.images, result.scores
    rows = []
    for k, (img, score) in enumerate(zip(images, scores)):
        name = file_name(job, k)
        meta = {**result.metadata, "job": job["id"], "image": k, "score": float(score)}
        write_png(img, out / name, meta)
        rows.append({"job": job["id"], "file": name, "sha256": sha256(out / name), "score": float(score),
                     **{key: job[key] for key in JOB_KEYS}, "weights_sha256": result.metadata["weights_sha256"],
                     "weights_digest": job["weights_digest"], "machine": result.metadata.get("machine"),
                     "phosphene": result.metadata["phosphene"], "steps_run": result.metadata["steps_run"],
                     "seconds": result.metadata["seconds"]})
    record = out / "jobs" / f"{job['id']}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    write_text(record, json.dumps({"job": job, "rows": rows}, default=str))
    return rows


def finished(job: dict, out: Path) -> bool:
    """Whether a job's record exists and every image it lists is on disk with the recorded hash."""
    record = out / "jobs" / f"{job['id']}.json"
    if not record.is_file():
        return False
    try:
        rows = json.loads(record.read_text())["rows"]
    except (json.JSONDecodeError, KeyError):
        return False
    return all((out / r["file"]).is_file() and sha256(out / r["file"]) == r["sha256"] for r in rows)


def _threads(jobs: int) -> int:
    """Torch threads per worker when ``jobs`` run at once on this machine."""
    return max(1, (os.cpu_count() or 1) // jobs)


def _worker(job: dict, out: str, threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    return run_job(job, out)


def _clean(out: Path) -> None:
    """Remove the temporary files a killed run left (never a finished file: those are renamed into place)."""
    for p in [*out.glob("*.tmp"), *(out / "jobs").glob("*.tmp")]:
        p.unlink(missing_ok=True)


def _local(todo: list[dict], out: Path, jobs: int, bar) -> None:
    if jobs > 1 and len(todo) > 1:
        threads = _threads(jobs)
        # Fresh interpreters: forking a process whose torch thread pool is running can deadlock the child.
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for fut in as_completed([pool.submit(_worker, j, str(out), threads) for j in todo]):
                fut.result()
                bar.update(1)
    else:
        for job in todo:
            run_job(job, out)
            bar.update(1)


def _ray(todo: list[dict], out: Path, jobs: int, bar) -> None:
    """Each job is one Ray task calling ``run_job``; joins the cluster in $RAY_ADDRESS, else starts a local Ray."""
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray backend needs Ray: pip install 'phosphene[ray]' (or pip install ray)") from None
    started = not ray.is_initialized()
    if started:
        if os.environ.get("RAY_ADDRESS"):
            ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        else:
            ray.init(num_cpus=jobs, include_dashboard=False, log_to_driver=False, object_store_memory=80 * 2**20)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(_worker)
        pending = [task.remote(j, str(out.resolve()), _threads(jobs)) for j in todo]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            ray.get(ready[0])
            bar.update(1)
    finally:
        if started:
            ray.shutdown()


def run(experiment: str | os.PathLike, out: str | os.PathLike, jobs: int = 1, backend: str = "local",
        progress: bool = True) -> dict:
    """Run every unfinished job of an experiment into ``out`` (``jobs`` at a time, on ``backend``: 'local'
    processes or 'ray') and rewrite the manifest."""
    if backend not in BACKENDS:
        raise UnknownNameError("batch backend", backend, BACKENDS)
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    _, todo_all = load_experiment(experiment)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another batch run is writing to {out}; wait for it or choose another --out") from None
        _clean(out)
        todo = [j for j in todo_all if not finished(j, out)]
        skipped = len(todo_all) - len(todo)
        bar = tqdm(total=len(todo), desc=f"jobs ({backend})", unit="job", disable=not progress)
        try:
            (_ray if backend == "ray" else _local)(todo, out, jobs, bar)
        finally:
            bar.close()
            rows = write_manifest(todo_all, out)
    return {"jobs": len(todo_all), "ran": len(todo), "skipped": skipped, "images": len(rows), "out": str(out),
            "backend": backend}


def write_manifest(jobs: list[dict], out: Path) -> list[dict]:
    """Rebuild manifest.jsonl and manifest.csv from the records of finished jobs, in experiment order."""
    rows = []
    for job in jobs:
        record = out / "jobs" / f"{job['id']}.json"
        if record.is_file():
            rows += json.loads(record.read_text())["rows"]
    write_text(out / "manifest.jsonl", "".join(json.dumps(r, default=str) + "\n" for r in rows))
    write_csv(out / "manifest.csv", rows)
    return rows
