"""The command line and the runnable examples: thin shells that must keep working."""
import csv
import runpy
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from synth.cli import main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("models", "images", "train"):
        assert cmd in out


# What a cold `phosphene --help` may import: argparse and phosphene's light modules, never torch (5.5 s here).
_PROBE = """
import sys
from synth.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted(m for m in ("torch", "torchvision", "numpy", "PIL", "synth.zoo.models") if m in sys.modules)
print("HEAVY:" + ",".join(heavy))
"""


@pytest.mark.parametrize("argv", [["--help"], ["attack", "--help"], ["metamer", "--help"], ["train", "--help"],
                                  ["models"]])
def test_help_and_the_model_list_answer_without_loading_torch(argv):
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, check=True).stdout
    seconds = time.perf_counter() - t0
    assert out.strip().splitlines()[-1] == "HEAVY:", out
    assert "usage: phosphene" in out or "embedded" in out
    assert seconds < 5.0, f"{argv} took {seconds:.1f} s (issue 30: 0.5 s for help, 2 s for models, on a quiet machine)"


def test_the_model_list_names_torchvisions_own_architectures():
    import torchvision

    from synth.zoo.catalog import TORCHVISION_MODELS

    assert TORCHVISION_MODELS == tuple(torchvision.models.list_models(module=torchvision.models))


def test_a_closed_pipe_ends_the_listing_quietly():
    cmd = f"{sys.executable} -m synth.cli models | head -1"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("embedded") and "error" not in done.stderr, done


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
    from synth.neuro.readouts import features

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


def test_attack_command_attacks_images_and_writes_what_it_did(tmp_path, capsys):
    from attacks import AttackResult

    assert main(["images", "--out", str(tmp_path / "imgs"), "--n", "8", "--workers", "1"]) == 0
    files = sorted(str(p) for p in (tmp_path / "imgs").glob("*.png"))
    categories = [r["category"] for r in sorted(csv.DictReader(open(tmp_path / "imgs" / "metadata.csv")),
                                                key=lambda r: r["file"])]
    capsys.readouterr()
    assert main(["attack", *files, "--eps", "1/255,4/255", "--steps", "10", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "pgd-linf on toy-standard (8 images, linf)" in out and "4/255" in out
    result = AttackResult.load(tmp_path / "out")
    assert [result.classes[i] for i in result.labels] == categories  # labels read from metadata.csv
    from synth.files import read_png
    _, meta = read_png(tmp_path / "out" / "eps_4-255" / "adv_003.png")
    assert meta["attack"] == "pgd-linf" and meta["label"] == categories[3] and meta["steps"] == 10
    assert (tmp_path / "out" / "sheet.png").stat().st_size > 10_000 and (tmp_path / "out" / "curve.png").is_file()
    assert main(["attack", *files[:4], "--site", "IT:12", "--eps", "2/255", "--steps", "10",
                 "--out", str(tmp_path / "site")]) == 0
    site = AttackResult.load(tmp_path / "site")
    assert site.metadata["site"] == "IT:12" and (site.scores[0] > site.clean_scores).all()


@pytest.mark.parametrize("args, message", [
    (["--attack", "cw-l3"], "unknown attack 'cw-l3'; did you mean 'cw-l2'"),
    (["--target", "chiars", "--eps", "1/255"], "unknown class 'chiars'; did you mean 'chairs'"),
    (["--eps", "4//255"], "cannot read the L-inf budget '4//255'"),
    (["--eps", "4/0"], "cannot read the L-inf budget '4/0'"),
    (["--attack", "pgd-l2", "--eps", "0.5/0"], "cannot read the L2 budget '0.5/0'"),
    (["--site", "IT:12"], "needs --eps"),
    (["--attack", "deepfool-l2", "--restarts", "2", "--steps", "5", "--eps", "1/255", "--label", "cars",
      "--site", "IT:1"], "--target and --label are for class attacks"),
])
def test_attack_errors_are_one_line(tmp_path, capsys, args, message):
    from PIL import Image

    Image.new("RGB", (64, 64), (120, 90, 60)).save(tmp_path / "a.png")
    assert main(["attack", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phosphene: error: ") and message in err and err.count("\n") == 1


def test_a_bare_linf_budget_is_read_on_the_0_255_scale_and_said_so(tmp_path, capsys):
    from attacks import AttackResult

    assert main(["images", "--out", str(tmp_path / "imgs"), "--n", "2", "--workers", "1"]) == 0
    files = sorted(str(p) for p in (tmp_path / "imgs").glob("*.png"))
    assert main(["attack", *files, "--eps", "4", "--steps", "2", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "L-inf ε 4 is ambiguous: read on the 0-255 scale as 4/255" in out
    assert torch.allclose(AttackResult.load(tmp_path / "out").eps, torch.tensor([4 / 255]))
    assert (tmp_path / "out" / "eps_4-255" / "adv_000.png").is_file()


def test_attack_refuses_unreadable_images(tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    assert main(["attack", str(tmp_path / "notes.png"), "--eps", "1/255", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phosphene: error: cannot read image") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_attack_help_names_every_catalogue_attack(capsys):
    import attacks

    with pytest.raises(SystemExit):
        main(["attack", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in attacks.CATALOGUE)


def test_microstim_afraz_writes_its_report_and_figures(tmp_path, capsys):
    import json

    from PIL import Image

    out = tmp_path / "afraz"
    assert main(["microstim", "afraz", "--model", "toy-topo", "--sites", "12", "--n", "4", "--spreads", "1",
                 "--workers", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "topographic: r = " in text and "shuffled   : r = " in text and "12 sites at 50 µA, 200 Hz" in text
    report = json.loads((out / "afraz.json").read_text())
    assert report["sites"] == 12 and len(report["topographic"]["selectivity"]) == 12
    assert [c["spread_mm"] for c in report["curve"]] == [pytest.approx(0.00505 * 44.74, abs=1e-4), 1.0]
    assert {"r", "p"} <= set(report["shuffled"]) and report["face_patches"]["topographic"] >= 1
    assert len(report["psychometric"]["with"]) == len(report["psychometric"]["signal"]) == 13
    assert Image.open(out / "afraz.png").size[0] > 1100 and Image.open(out / "face_map.png").size[0] > 500
    assert main(["microstim", "afraz", "--model", "toy-standard", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phosphene: error: model 'toy-standard' has no cortical sheets") and err.count("\n") == 1


def test_readout_simulate_makes_a_recording_that_fit_reads(tmp_path, capsys):
    import numpy as np

    path = tmp_path / "responses.npz"
    assert main(["readout", "simulate", "--out", str(path), "--images", "60", "--sites", "5", "--repeats", "3"]) == 0
    assert "5 sites of toy-robust:IT on 60 embedded images x 3 repeats" in capsys.readouterr().out
    with np.load(path) as z:
        assert z["responses"].shape == (60, 5, 3) and list(z["image_ids"][:2]) == ["train:0", "train:1"]
        assert (z["responses"] >= 0).all() and np.allclose(z["responses"] * 0.1, np.round(z["responses"] * 0.1))
        assert len(set(z["sites"])) == 5  # spike counts in a 100 ms window, five distinct channels
    assert main(["readout", "fit", str(path), "--model", "toy-standard", "--layer", "V4", "--folds", "3",
                 "--name", str(tmp_path / "r")]) == 0
    assert "5 sites" in capsys.readouterr().out


def test_readout_fit_help_documents_the_responses_format(capsys):
    with pytest.raises(SystemExit):
        main(["readout", "fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "images x sites x repeats" in text and "'image_ids'" in text and "readout simulate" in text


def test_synth_refuses_an_untrained_architecture_unless_asked(tmp_path, capsys):
    assert main(["synth", "--model", "resnet18", "--objective", "layer4:1", "--steps", "1", "--size", "32",
                 "--out", str(tmp_path / "s")]) == 2
    assert "--random-weights" in capsys.readouterr().err and not (tmp_path / "s").exists()
    assert main(["synth", "--model", "resnet18", "--random-weights", "--objective", "layer4:1", "--steps", "1",
                 "--size", "32", "--out", str(tmp_path / "s")]) == 0


def test_synth_prints_the_scores_of_the_images_it_saved(tmp_path, capsys, toy_standard):
    """With random transforms on, the printed score is still the saved image's own, measured again here."""
    from synth.engine.results import Result

    assert main(["synth", "--objective", "IT:12", "--steps", "6", "--n", "2", "--out", str(tmp_path / "s")]) == 0
    printed = capsys.readouterr().out.split("final scores ")[1].split(" (")[0]
    saved = Result.load(tmp_path / "s", toy_standard)
    assert "jitter" in saved.metadata["transforms"]
    with torch.no_grad():
        fresh = toy_standard.activations(saved.images, "IT")["IT"][:, 12].mean((1, 2))
    assert printed == ", ".join(f"{s:.3g}" for s in fresh.tolist())


def test_max_batch_finds_a_batch_within_the_budget_and_checkpointing_raises_it(capsys):
    import re

    assert main(["max-batch", "--memory", "64MB", "--limit", "4096"]) == 0
    plain = int(re.search(r"largest batch (\d+)", capsys.readouterr().out)[1])
    assert main(["max-batch", "--memory", "64MB", "--limit", "4096", "--checkpoint-activations"]) == 0
    recomputed = int(re.search(r"largest batch (\d+)", capsys.readouterr().out)[1])
    assert 1 <= plain < recomputed
    assert main(["max-batch", "--memory", "lots"]) == 2
    assert "512MB or 4GB" in capsys.readouterr().err


def test_a_usage_mistake_is_one_line_that_points_to_the_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["attack"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert "required: images, --out" in err and "see phosphene attack --help" in err
