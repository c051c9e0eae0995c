"""Batch generation: experiment files, atomic outputs, resume after a crash, manifests, config errors, CLI."""
import json

import pytest

from synth import batch
from synth.batch import load_experiment, run
from synth.cli import main
from synth.errors import ConfigError, PhospheneError
from synth.files import read_png

EXPERIMENT = """
[experiment]
name = "t"

[defaults]
model = "toy-standard"
steps = 4
size = 32

[[grid]]
objective = ["stretch(IT:1)", "stretch(IT:2)"]
seed = [0, 1]

[[jobs]]
objective = "onehot(IT:3)"
transforms = "none"

[[jobs]]
objective = "IT:5"
method = "evolution"
population = 6
steps = 2
"""


@pytest.fixture
def experiment(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(EXPERIMENT)
    return path


def test_grid_and_jobs_expand_with_defaults_and_stable_ids(experiment):
    meta, jobs = load_experiment(experiment)
    assert meta["name"] == "t" and len(jobs) == 6
    assert {j["objective"] for j in jobs[:4]} == {"stretch(IT:1)", "stretch(IT:2)"}
    assert all(j["steps"] == 4 for j in jobs[:5]) and jobs[5]["steps"] == 2
    assert len({j["id"] for j in jobs}) == 6
    assert [j["id"] for j in load_experiment(experiment)[1]] == [j["id"] for j in jobs]


def test_run_writes_images_and_manifest_then_resumes_without_redoing(experiment, tmp_path):
    out = tmp_path / "out"
    summary = run(experiment, out, progress=False)
    assert summary == {"jobs": 6, "ran": 6, "skipped": 0, "images": 6, "out": str(out), "backend": "local"}
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and (out / "manifest.csv").is_file()
    for row in rows:
        img, meta = read_png(out / row["file"])
        assert meta["objective"] == row["objective"] and meta["seed"] == row["seed"] and meta["job"] == row["job"]
        assert len(row["sha256"]) == 64 and "score" in row and row["phosphene"]
    first = {r["file"]: (out / r["file"]).stat().st_mtime_ns for r in rows}
    again = run(experiment, out, progress=False)
    assert again["ran"] == 0 and again["skipped"] == 6
    assert {r["file"]: (out / r["file"]).stat().st_mtime_ns for r in rows} == first


def test_a_crash_loses_only_the_unfinished_job(experiment, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = batch.run_job
    calls = []

    def crashing(job, out_dir, progress=False):
        if len(calls) == 3:
            (out_dir / (batch.file_name(job, 0) + ".tmp")).write_bytes(b"half a png")  # a write cut short
            raise KeyboardInterrupt
        calls.append(job["id"])
        return real(job, out_dir, progress)

    monkeypatch.setattr(batch, "run_job", crashing)
    with pytest.raises(KeyboardInterrupt):
        run(experiment, out, progress=False)
    monkeypatch.setattr(batch, "run_job", real)
    resumed = run(experiment, out, progress=False)
    assert resumed["skipped"] == 3 and resumed["ran"] == 3 and resumed["images"] == 6
    assert not list(out.glob("*.tmp"))  # the cut-short write is gone
    # a finished image whose file was damaged is redone
    victim = next(out.glob("*_0.png"))
    victim.write_bytes(b"corrupt")
    assert run(experiment, out, progress=False)["ran"] == 1


def test_parallel_workers_produce_the_same_images(experiment, tmp_path):
    run(experiment, tmp_path / "serial", progress=False)
    run(experiment, tmp_path / "parallel", jobs=2, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "serial/manifest.jsonl").open()]
    assert ({r["file"] for r in rows}
            == {r["file"] for r in map(json.loads, (tmp_path / "parallel/manifest.jsonl").open())})
    for r in rows:  # other thread counts may change float summation order, never the image beyond rounding
        a, _ = read_png(tmp_path / "serial" / r["file"])
        b, _ = read_png(tmp_path / "parallel" / r["file"])
        assert (a - b).abs().max() <= 2 / 255


@pytest.mark.parametrize("text, message", [
    ("[defaults]\nstpes = 3\n[[jobs]]\nobjective = 'IT:1'", "'stpes'.*'steps'.*valid keys"),
    ("[[grid]]\nobjectiv = ['IT:1']", "'objectiv'.*'objective'"),
    ("[[job]]\nobjective = 'IT:1'", r"\[job\].*'jobs'"),
    ("[experiment]\nnmae = 'x'\n[[jobs]]\nobjective = 'IT:1'", "'nmae'.*'name'"),
    ("[defaults]\nsteps = 3", "no jobs"),
    ("[[jobs]]\nseed = 1", "no objective"),
    ("[[jobs]]\nobjective = 'IT:1'\nmethod = 'evolve'", "evolution"),
    ("[[jobs]\n", "not valid TOML"),
])
def test_config_typos_name_the_bad_key_and_the_valid_ones(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_experiment(path)


def test_cli_batch_and_synth(experiment, tmp_path, capsys):
    assert main(["batch", str(experiment), "--out", str(tmp_path / "b")]) == 0
    assert "6 jobs: 6 ran" in capsys.readouterr().out
    assert main(["synth", "--objective", "stretch(IT:12)", "--steps", "5", "--seed", "7", "--size", "32",
                 "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "stretch(IT:12) on toy-standard: 1 image(s)" in out
    _, meta = read_png(tmp_path / "s" / "image_000.png")
    assert meta["seed"] == 7 and meta["steps"] == 5
    assert main(["batch", str(tmp_path / "nope.toml"), "--out", str(tmp_path)]) == 2


def test_a_metamer_job_written_in_a_batch_file(tmp_path):
    import torch

    import synth
    from synth.files import write_png
    ref = synth.render(1, "test").tensor()[0]
    write_png(ref, tmp_path / "ref.png", {})
    path = tmp_path / "metamer.toml"
    path.write_text(f"""
[defaults]
model = "toy-standard"
objective = "match(IT, image='{tmp_path / 'ref.png'}', metric=normalized)"
param = "pixels"
init = "noise"
lr = 0.01
transforms = "none"
relu_override = 0
steps = 30

[[jobs]]
seed = 1
""")
    out = tmp_path / "out"
    run(path, out, progress=False)
    row = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    img, meta = read_png(out / row["file"])
    assert meta["objective"] == f"match(IT, image='{tmp_path / 'ref.png'}', metric=normalized)"
    model = synth.load_model("toy-standard", device="cpu")
    with torch.no_grad():
        a = model.activations(torch.stack([img, torch.full_like(img, 0.5)]), "IT")["IT"]
        t = model.activations(((ref * 255).round() / 255)[None], "IT")["IT"]
    err = (a - t).flatten(1).norm(dim=1) / t.flatten(1).norm()
    assert err[0] < err[1] and abs(float(-err[0]) - row["score"]) < 0.02  # it moved towards the reference


SMALL = """
[defaults]
model = "toy-standard"
steps = 3
size = 32
{extra}
[[grid]]
objective = ["stretch(IT:1)", "IT:2 + 0.5*IT:3"]
seed = [0, 4]
"""


def _small(tmp_path, extra: str = "", name: str = "small.toml"):
    path = tmp_path / name
    path.write_text(SMALL.format(extra=extra))
    return path


def test_file_names_say_model_objective_and_seed_and_keep_the_hash(tmp_path):
    out = tmp_path / "out"
    run(_small(tmp_path), out, progress=False)
    names = sorted(p.name for p in out.glob("*.png"))
    _, jobs = load_experiment(tmp_path / "small.toml")
    assert names == sorted(f"toy-standard_{slug}_s{seed}_{j['id']}_0.png" for j, (slug, seed) in zip(
        jobs, [("stretch-IT-1", 0), ("stretch-IT-1", 4), ("IT-2-0.5-IT-3", 0), ("IT-2-0.5-IT-3", 4)]))


def test_retraining_weights_in_place_redoes_their_jobs(tmp_path):
    import torch

    from synth.training.recipes import WEIGHTS_DIR
    weights = tmp_path / "mine.pt"
    weights.write_bytes((WEIGHTS_DIR / "toy-standard.pt").read_bytes())
    exp = _small(tmp_path, extra=f"weights = '{weights}'")
    out = tmp_path / "out"
    assert run(exp, out, progress=False)["ran"] == 4
    assert run(exp, out, progress=False)["ran"] == 0
    before = {j["id"] for j in load_experiment(exp)[1]}
    state = torch.load(weights, weights_only=True)  # "retrain": same path, new content
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key] + 0.01
    torch.save(state, weights)
    after = {j["id"] for j in load_experiment(exp)[1]}
    assert not before & after
    assert run(exp, out, progress=False)["ran"] == 4


def test_an_untrained_architecture_is_refused_unless_asked_for(tmp_path):
    path = tmp_path / "rn.toml"
    path.write_text("[defaults]\nmodel = 'resnet18'\nsteps = 1\nsize = 32\n[[jobs]]\nobjective = 'layer4:0'\n")
    with pytest.raises(ConfigError, match="no trained weights.*random_weights = true"):
        run(path, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").glob("*.png"))
    path.write_text(path.read_text().replace("steps = 1", "steps = 1\nrandom_weights = true"))
    assert run(path, tmp_path / "out", progress=False)["images"] == 1


def test_a_second_run_on_the_same_folder_is_refused_while_one_writes(tmp_path):
    import fcntl
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match="another batch run is writing"):
            run(_small(tmp_path), out, progress=False)
    assert run(_small(tmp_path), out, progress=False)["ran"] == 4


def test_unknown_backend_is_named(tmp_path):
    with pytest.raises(PhospheneError, match="did you mean 'ray'"):
        run(_small(tmp_path), tmp_path / "out", backend="rya", progress=False)


@pytest.mark.slow
def test_ray_backend_writes_the_same_layout_and_resumes_across_backends(tmp_path):
    pytest.importorskip("ray")
    exp = _small(tmp_path)
    ray_out, local_out = tmp_path / "ray", tmp_path / "local"
    half = tmp_path / "half.toml"  # the first two jobs only, run locally: Ray must skip them
    half.write_text(SMALL.format(extra="").replace('seed = [0, 4]', 'seed = [0]'))
    assert run(half, ray_out, progress=False)["ran"] == 2
    summary = run(exp, ray_out, jobs=2, backend="ray", progress=False)
    assert summary["ran"] == 2 and summary["skipped"] == 2 and summary["images"] == 4
    run(exp, local_out, progress=False)
    rows = [json.loads(line) for line in (ray_out / "manifest.jsonl").open()]
    assert {r["file"] for r in rows} == {p.name for p in local_out.glob("*.png")}
    for r in rows:
        a, _ = read_png(ray_out / r["file"])
        b, _ = read_png(local_out / r["file"])
        assert (a - b).abs().max() <= 2 / 255
    assert run(exp, ray_out, progress=False)["ran"] == 0  # and back on the local backend: nothing to redo
