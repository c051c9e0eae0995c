"""The robustness table and its command: outputs, agreement with attacks.pgd, EOT, corruptions and bad input."""
import csv
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import attacks
import synth
from attacks.robustness import (
    EvalImages,
    corrupted,
    corruption_names,
    image_folder,
    l2_budgets,
    match_labels,
    read_budgets,
)
from synth.cli import main
from synth.errors import ConfigError, ImageError, UnknownNameError


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An ImageFolder: 3 held-out images in each of 4 categories, plus a folder no model has a class for."""
    root = tmp_path_factory.mktemp("imagefolder")
    batch = synth.render(48, "test")
    counts = {}
    for img, label in zip(batch.images, batch.labels):
        name = batch.classes[label]
        if name not in ("faces", "cars", "boats", "fruits") or counts.get(name, 0) >= 3:
            continue
        counts[name] = counts.get(name, 0) + 1
        (root / name).mkdir(exist_ok=True)
        Image.fromarray(img).save(root / name / f"{counts[name]}.png")
    (root / "Spaceships").mkdir()
    Image.fromarray(batch.images[0]).convert("L").save(root / "Spaceships" / "a.png")  # odd mode, any class
    return root


def test_budgets_say_how_they_were_read():
    eps, notes = read_budgets("linf", "4/255,0.0157,4")
    assert eps == pytest.approx([4 / 255, 0.0157]) and len(notes) == 3  # 4/255 and 4 are the same budget
    assert "0.01569 on the [0, 1] pixel scale" in notes[0]
    assert "read on the [0, 1] pixel scale (= 4/255)" in notes[1]
    assert "ambiguous" in notes[2] and "0-255 scale as 4/255" in notes[2]
    eps, notes = read_budgets("l2", ["4"])
    assert eps == [4.0] and "[0, 1] pixel scale" in notes[0]
    for bad in ("abc", "4/0", "-1"):
        with pytest.raises(ConfigError, match="cannot read"):
            read_budgets("linf", bad)
    with pytest.raises(UnknownNameError, match="norm"):
        read_budgets("l1", "1")
    assert l2_budgets(224) == [0.15, 0.6, 2.4] and l2_budgets(64) == [0.043, 0.17, 0.69]


def test_folders_are_matched_to_classes_and_bad_folders_refused(folder, toy_standard, tmp_path):
    data = image_folder(folder)
    assert len(data.images) == 13 and data.at(64).shape == (13, 3, 64, 64)
    idx, labels, unmatched = match_labels(toy_standard, data)
    assert unmatched == ["Spaceships"] and len(idx) == 12
    assert [toy_standard.classes[i] for i in labels] == [data.categories[i] for i in idx]
    (tmp_path / "Kittens").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "Kittens" / "k.png")
    with pytest.raises(ConfigError, match="none of the categories .* names a class of toy-standard"):
        match_labels(toy_standard, image_folder(tmp_path))
    (tmp_path / "Kittens" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="broken.png"):
        image_folder(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        image_folder(tmp_path / "missing")


def test_corruptions_are_reproducible_and_cover_the_families():
    assert len(corruption_names("common")) == 15 and len(corruption_names("all")) == 19
    assert corruption_names("noise") == ["gaussian_noise", "shot_noise", "impulse_noise"]
    assert corruption_names("gaussian_noise,contrast") == ["gaussian_noise", "contrast"]
    with pytest.raises(UnknownNameError, match="did you mean 'glass_blur'"):
        corruption_names("glass_blurr")
    x = synth.render(4, "test").tensor()
    a = corrupted(x, ["glass_blur", "gaussian_noise", "fog"], [1, 5], seed=0, workers=1, progress=False)
    b = corrupted(x, ["glass_blur", "gaussian_noise", "fog"], [1, 5], seed=0, workers=1, progress=False)
    c = corrupted(x, ["gaussian_noise"], [1], seed=1, workers=1, progress=False)
    assert all(torch.equal(a[k], b[k]) for k in a) and not torch.equal(a["gaussian_noise", 1], c["gaussian_noise", 1])
    for _, v in a.items():
        assert v.shape == x.shape and 0 <= float(v.min()) and float(v.max()) <= 1
    assert float((a["gaussian_noise", 5] - x).abs().mean()) > float((a["gaussian_noise", 1] - x).abs().mean())
    with pytest.raises(ConfigError, match="severities"):
        corrupted(x, ["fog"], [6], workers=1, progress=False)


def test_table_numbers_are_attacks_pgd_and_outputs_are_written(folder, toy_standard, toy_robust, tmp_path):
    data = image_folder(folder)
    notes = []
    table = attacks.robustness_table({"standard": toy_standard, "robust": toy_robust}, data,
                                     linf=["1/255", "4/255"], l2=["0.25"], steps=5, corruptions="gaussian_noise,fog",
                                     severities=[1, 5], workers=1, quick=True, progress=False, log=notes.append)
    assert any("left out 1 images of Spaceships" in n for n in notes)
    assert table.settings["white_box"] == "attacks.pgd (quick)"
    paths = table.save(tmp_path / "out")
    with open(paths["csv"], newline="") as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"standard", "robust"}
    for col in ("clean", "pgd_linf_1/255", "pgd_linf_4/255", "pgd_l2_0.25", "whitebox_mean", "corruption_noise",
                "corruption_weather", "corruption_mean", "perturbation_mean", "mean", "severity_5"):
        assert all(0 <= float(r[col]) <= 1 for r in rows.values()), col
    md = paths["markdown"].read_text()
    assert "| standard |" in md and "pgd linf 4/255" in md and "robustness.png" in md
    assert Image.open(paths["plot"]).size[0] > 500
    again = attacks.RobustnessTable.load(tmp_path / "out")
    assert again.rows == table.rows and len(again.conditions) == len(table.conditions) == 2 * (3 + 4)

    # The white-box columns are exactly what a direct call of attacks.pgd gives on the same images.
    idx, y, _ = match_labels(toy_standard, data)
    x = data.at(64)[idx]
    for name, model in (("standard", toy_standard), ("robust", toy_robust)):
        torch.manual_seed(0)
        direct = attacks.pgd(model, x, y, ["1/255", "4/255"], norm="linf", steps=5, seed=0, batch_size=256,
                             progress=False)
        assert float(rows[name]["pgd_linf_1/255"]) == pytest.approx(float(direct.accuracy[0]))
        assert float(rows[name]["pgd_linf_4/255"]) == pytest.approx(float(direct.accuracy[1]))
        r = rows[name]
        wb = [float(r[c]) for c in ("pgd_linf_1/255", "pgd_linf_4/255", "pgd_l2_0.25")]
        assert float(r["whitebox_mean"]) == pytest.approx(np.mean(wb))
        assert float(r["mean"]) == pytest.approx((float(r["clean"]) + np.mean(wb) + float(r["corruption_mean"])) / 3)
    assert table.column("robust", "pgd_linf_4/255") > table.column("standard", "pgd_linf_4/255")


@pytest.mark.slow
def test_stochastic_models_are_attacked_and_judged_with_eot(monkeypatch):
    """A noisy model gets eot draws in every attack and verdict; its accuracy with EOT is at most without."""
    from attacks import robustness as rb

    model = synth.load_model("toy-vone", device="cpu")
    assert model.stochastic
    batch = synth.render(24, "test")
    data = EvalImages(list(batch.tensor()), [batch.classes[i] for i in batch.labels], "24 test images")
    seen = []
    real = rb.pgd

    def spy(*args, **kwargs):
        seen.append(kwargs["eot"])
        return real(*args, **kwargs)

    monkeypatch.setattr(rb, "pgd", spy)
    kw = dict(linf=["2/255"], l2=["0.3"], steps=8, corruptions="contrast", severities=[3], workers=1, quick=True,
              progress=False, log=lambda _: None)
    with_eot = attacks.robustness_table([model], data, eot=4, **kw)
    assert seen == [4, 4] and with_eot.rows[0]["eot"] == 4 and with_eot.settings["stochastic"] == ["toy-vone"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", attacks.StochasticModelWarning)
        without = attacks.robustness_table([model], data, eot=1, **kw)
    assert with_eot.rows[0]["whitebox_mean"] <= without.rows[0]["whitebox_mean"]


def test_command_writes_the_table_and_refuses_bad_input_in_one_line(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["robustness", "--models", "toy-standard", "--data", str(folder), "--linf", "4", "--l2", "0.2",
                 "--steps", "3", "--corruptions", "pixelate", "--severities", "2", "--workers", "1", "--quick",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ambiguous: read on the 0-255 scale as 4/255" in text and "left out 1 images of Spaceships" in text
    assert {p.name for p in out.iterdir()} >= {"robustness.csv", "robustness.md", "robustness.png"}
    with open(out / "robustness.csv", newline="") as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["toy-standard"]
    for args, message in [
        (["--models", "toy-standrad"], "unknown model 'toy-standrad'; did you mean 'toy-standard'"),
        (["--models", "toy-standard", "--linf", "four"], "cannot read the L-inf budget 'four'"),
        (["--models", "toy-standard", "--corruptions", "fogg"], "unknown corruption 'fogg'"),
        (["--models", "toy-standard", "--weights", "resnet50=x.pt"], "--weights takes MODEL=PATH"),
    ]:
        assert main(["robustness", *args, "--n", "8", "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    (tmp_path / "kittens").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "kittens" / "k.png")
    assert main(["robustness", "--models", "toy-standard", "--data", str(tmp_path), "--out", str(tmp_path / "b")]) == 2
    assert "names a class of toy-standard" in capsys.readouterr().err
