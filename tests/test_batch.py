"""Batch generation: experiment files, atomic outputs, resume after a crash, manifests, config errors, CLI."""
import json

import pytest

from synth import batch
from synth.batch import load_experiment, run
from synth.cli import main
from synth.errors import ConfigError
from synth.results import read_png

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
    assert summary == {"jobs": 6, "ran": 6, "skipped": 0, "images": 6, "out": str(out)}
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
            (out_dir / f"{job['id']}_0.png.tmp").write_bytes(b"half a png")  # a write cut short
            raise KeyboardInterrupt
        calls.append(job["id"])
        return real(job, out_dir, progress)

    monkeypatch.setattr(batch, "run_job", crashing)
    with pytest.raises(KeyboardInterrupt):
        run(experiment, out, progress=False)
    monkeypatch.setattr(batch, "run_job", real)
    resumed = run(experiment, out, progress=False)
    assert resumed["skipped"] == 3 and resumed["ran"] == 3 and resumed["images"] == 6
    # a finished image whose file was damaged is redone
    victim = next(out.glob("*_0.png"))
    victim.write_bytes(b"corrupt")
    assert run(experiment, out, progress=False)["ran"] == 1


def test_parallel_workers_produce_the_same_images(experiment, tmp_path):
    run(experiment, tmp_path / "serial", progress=False)
    run(experiment, tmp_path / "parallel", jobs=2, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "serial/manifest.jsonl").open()]
    assert {r["file"] for r in rows} == {r["file"] for r in map(json.loads, (tmp_path / "parallel/manifest.jsonl").open())}
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
    from synth.results import write_png
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
