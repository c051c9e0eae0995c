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
