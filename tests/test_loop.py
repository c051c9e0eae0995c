"""Closed-loop experiments (``synth.neuro.loop``): small rounds through the CLI, killed and resumed; bad recordings
refused in one line with nothing changed; a subject that can only be shown images."""
import json

import numpy as np
import pytest
import torch

import synth
from synth.cli import main
from synth.errors import ConfigError
from synth.files import read_png
from synth.neuro import loop
from synth.neuro.loop import Experiment
from synth.neuro.readouts import Responses, load_responses
from synth.neuro.subject import Subject

SMALL = ["--model", "toy-standard", "--layer", "V4", "--sites", "4", "--budget", "40", "--first-budget", "48",
         "--repeats", "2", "--pool", "30", "--steps", "8"]


def _state(folder, r: int) -> str:
    return json.loads((folder / f"round-{r:02d}" / "manifest.json").read_text())["state"]


def test_a_loop_killed_mid_round_resumes_without_repeating_or_losing_a_presentation(tmp_path, monkeypatch, capsys):
    shown = []
    real_present = loop.present
    monkeypatch.setattr(loop, "present", lambda *a, **k: shown.append(a[2]["round"]) or real_present(*a, **k))
    real_refit = Experiment._refit

    def killed_once(self, m, progress):
        if m["round"] == 1 and not killed:
            killed.append(True)
            raise KeyboardInterrupt
        return real_refit(self, m, progress)

    killed = []
    monkeypatch.setattr(Experiment, "_refit", killed_once)
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["loop", "init", str(a), *SMALL]) == 0
    assert main(["loop", "run", str(a), "--subject", "simulated", "--rounds", "1"]) == 130  # killed in round 1
    assert _state(a, 1) == "recorded" and (a / "round-01" / "simulated.npz").is_file()
    assert main(["loop", "run", str(a), "--subject", "simulated", "--rounds", "1"]) == 0
    assert shown == [0, 1]  # each round shown once, the recording of round 1 taken from disk on resuming
    assert _state(a, 0) == _state(a, 1) == "fitted"
    out = capsys.readouterr().out
    assert "round 1:" in out and "stretch: median" in out
    # the same design run without a kill gives the same rounds, image for image
    assert main(["loop", "init", str(b), *SMALL]) == 0
    assert main(["loop", "run", str(b), "--subject", "simulated", "--rounds", "1"]) == 0
    for r in (0, 1):
        ra, rb = a / f"round-{r:02d}", b / f"round-{r:02d}"
        assert (ra / "summary.json").read_text() == (rb / "summary.json").read_text()
        for png in (ra / "images").iterdir():
            assert png.read_bytes() == (rb / "images" / png.name).read_bytes()
    capsys.readouterr()
    assert main(["loop", "status", str(a)]) == 0
    assert capsys.readouterr().out.count("held-out r") == 2


def test_bad_recordings_are_refused_in_one_line_and_change_nothing(tmp_path, monkeypatch, capsys):
    d = tmp_path / "exp"
    assert main(["loop", "init", str(d), *SMALL]) == 0
    real_csv, calls = loop.write_csv, []

    def dies_once(*a, **k):  # a kill while the round is being written
        if not calls:
            calls.append(True)
            raise KeyboardInterrupt
        return real_csv(*a, **k)

    monkeypatch.setattr(loop, "write_csv", dies_once)
    assert main(["loop", "next", str(d)]) == 130
    assert (d / "round-00").is_dir() and not (d / "round-00" / "manifest.json").exists()
    assert main(["loop", "next", str(d)]) == 0  # written again, whole
    m = json.loads((d / "round-00" / "manifest.json").read_text())
    assert m["state"] == "ready" and m["counts"] == {"fit": 23, "test": 0, "reference": 0, "blank": 1}
    trials = loop_trials(d)
    assert len(trials) == 48 and sorted({t["image_id"] for t in trials}) == sorted(r["image_id"] for r in m["images"])
    ids = [r["image_id"] for r in m["images"]]
    rng = np.random.default_rng(0)
    good = rng.poisson(20, (len(ids), 4, 2)).astype(float)
    capsys.readouterr()
    bad = {
        "three_sites": (ids, good[:, :3], "has 3 sites, the experiment 4"),
        "unknown": (ids[:-1] + ["train:12"], good, "did not show: 'train:12'"),
        "missing": (ids[:-1], good[:-1], "lacks 1 image id"),
        "nan": (ids, np.where(np.arange(good.size).reshape(good.shape) == 5, np.nan, good), "NaN"),
        "flat": (ids, good[:, 0, 0], "images × sites"),
    }
    for name, (image_ids, values, message) in bad.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, responses=values, image_ids=np.array(image_ids))
        assert main(["loop", "record", str(d), str(path)]) == 2, name
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, (name, err)
        assert _state(d, 0) == "ready" and not (d / "round-00" / "responses.npz").exists()
    Responses(ids, good, [f"s{i}" for i in range(4)]).save(tmp_path / "good.npz")
    assert main(["loop", "record", str(d), str(tmp_path / "good.npz")]) == 0
    assert _state(d, 0) == "fitted" and "held-out r" in capsys.readouterr().out
    assert main(["loop", "record", str(d), str(tmp_path / "three_sites.npz")]) == 2  # the round has its recording
    assert "already has its recording" in capsys.readouterr().err


def loop_trials(folder) -> list[dict]:
    import csv

    with open(folder / "round-00" / "presentation.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_the_loop_only_shows_images_to_a_subject_whose_backward_pass_raises(tmp_path):
    """Every goal and the committee's choice of images, against a subject no gradient may pass through; the
    report's ratios measured again from the recording on disk."""
    animal = synth.load_model("toy-robust", device="cpu")

    def refuse(_grad):
        raise AssertionError("a gradient reached the subject")

    for p in animal.parameters():
        p.requires_grad_(True)
        p.register_hook(refuse)
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    with pytest.raises(AssertionError, match="reached the subject"):
        animal.activations(x, "IT")["IT"].sum().backward()
    subject = Subject(animal, "IT", synth.render(120, "test").tensor(), n_sites=4, seed=0)
    exp = Experiment.create(tmp_path / "exp", "toy-standard", "V4", 4, goals="stretch,onehot,mei", budget=60,
                            first_budget=48, repeats=2, pool=30, steps=8, select="uncertain")
    status = exp.run(subject, 1, progress=False)
    assert [s["state"] for s in status] == ["fitted", "fitted"]
    m = exp.manifests()[1]
    assert m["counts"]["test"] == 12 and {r["selected_by"] for r in m["images"] if r["role"] == "fit"} == {"uncertain"}
    resp = load_responses(tmp_path / "exp" / "round-01" / "responses.npz")
    mean, row = resp.mean, {i: k for k, i in enumerate(resp.image_ids)}
    for goal in ("stretch", "onehot", "mei"):
        g = status[1]["goals"][goal]
        for k, site in enumerate(subject.sites):
            test = next(r for r in m["images"] if r.get("goal") == goal and r["site"] == site)
            ref = next(r for r in m["images"] if r["role"] == "reference" and site in r["best_for"])
            assert g["ratio"][k] == pytest.approx(mean[row[test["image_id"]], k] / mean[row[ref["image_id"]], k])
            _, meta = read_png(tmp_path / "exp" / "round-01" / test["file"])
            assert meta["goal"] == goal and meta["site"] == site and meta["readout_round"] == 0
    assert "onehot_success" in status[1]["goals"]["onehot"]
    readout, ids, _, values = exp.readout(1), *exp.recorded(1)
    natural = [k for k, i in enumerate(ids) if ":stretch:" not in i and ":onehot:" not in i and ":mei:" not in i]
    assert readout.info["n_natural"] == len(natural) == len(ids) - 12 and readout.info["method"] == "ridge"
    np.testing.assert_allclose(readout.site_mean.double().numpy(), values[natural].mean((0, 2)), rtol=1e-5)
    with pytest.raises(ConfigError, match="pls' takes no sample weights"):
        Experiment.create(tmp_path / "pls", "toy-standard", "V4", 4, method="pls")
