"""The command line and the runnable examples: thin shells that must keep working."""
import csv
import runpy
from pathlib import Path
import sys

import pytest

from synth.cli import main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("models", "images", "train"):
        assert cmd in out


def test_models_lists_the_zoo_and_details_one_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "toy-standard" in out and "toy-robust" in out and "cornet_s" in out and "resnet50" in out
    assert main(["models", "toy-standard"]) == 0
    out = capsys.readouterr().out
    assert "IT        -> IT" in out and "(256, 4, 4)" in out and "behavior" in out


def test_images_writes_pngs_and_metadata(tmp_path, capsys):
    assert main(["images", "--out", str(tmp_path), "--n", "16", "--seed", "5", "--workers", "1"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "metadata.csv")))
    assert len(rows) == 16 and len(list(tmp_path.glob("*.png"))) == 16
    assert {r["category"] for r in rows} == {"animals", "boats", "cars", "chairs", "faces", "fruits", "planes",
                                             "tables"}
    assert all(r["seed"] == "5" for r in rows)


def test_errors_are_one_clear_line_and_exit_2(capsys):
    assert main(["models", "resnet5O"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phosphene: error: unknown model") and "resnet50" in err and err.count("\n") == 1


def test_quickstart_runs(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["quickstart.py", "--n", "4"])
    runpy.run_path(str(Path(__file__).parent.parent / "examples" / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "toy-standard on 4 held-out images" in out and "IT" in out and "(4, 256, 4, 4)" in out


def test_readout_fit_then_synthesize_through_it(tmp_path, capsys, toy_standard):
    import numpy as np

    import synth
    from synth.readouts import features

    images = synth.render(60, "val").tensor()
    feats = features(toy_standard, images, "V4").numpy()
    rng = np.random.default_rng(0)
    sites = (feats - feats.mean(0)) @ rng.normal(size=(feats.shape[1], 3))
    values = sites[:, :, None] + rng.normal(0, sites.std() * 0.3, size=(60, 3, 2))
    np.savez(tmp_path / "resp.npz", responses=values, image_ids=[f"val:{i}" for i in range(60)],
             sites=["a1", "b2", "c3"])
    name = str(tmp_path / "v4sites")
    assert main(["readout", "fit", str(tmp_path / "resp.npz"), "--model", "toy-standard", "--layer", "V4",
                 "--folds", "3", "--name", name]) == 0
    out = capsys.readouterr().out
    assert "3 sites" in out and "median r" in out and "ceiling" in out
    assert main(["synth", "--readout", name, "--objective", "stretch(V4:readout:b2)", "--steps", "3", "--size", "64",
                 "--out", str(tmp_path / "s")]) == 0
    assert "stretch(V4:readout:b2)" in capsys.readouterr().out
    assert main(["readout", "fit", str(tmp_path / "missing.npz"), "--model", "toy-standard", "--layer", "V4"]) == 2
    assert "not found" in capsys.readouterr().err
