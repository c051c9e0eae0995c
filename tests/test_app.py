"""The Streamlit explorer: every page's main path on the embedded default, and bad uploads, through AppTest."""
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).parent.parent / "app.py")


def _page(page: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300).run()
    assert not at.exception, at.exception
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def test_models_page_lists_models_layers_and_shows_images():
    at = AppTest.from_file(APP, default_timeout=300).run()
    assert not at.exception, at.exception
    assert "toy-standard" in at.dataframe[0].value["model"].tolist()
    assert {"toy-topo", "toy-topo-dense"} <= set(at.dataframe[0].value["model"].tolist())
    assert "decoder.avgpool" in at.dataframe[1].value["layer"].tolist()  # every layer with its shape
    assert len(at.get("image")) >= 8 * 6  # a row of images per category
    assert any("metadata.csv" in b.label for b in at.get("download_button"))
    at.sidebar.selectbox[0].select("toy-robust").run()
    assert not at.exception
    assert "toy-robust" in " ".join(m.value for m in at.markdown)


def test_synthesize_page_runs_a_synthesis_and_compares_with_natural_images():
    at = _page("explorer/synthesize.py")
    at.sidebar.slider[0].set_value(16).run()  # steps
    at.button(key="synth-go").click().run()
    assert not at.exception, at.exception
    assert any("natural maximum" in c.value for c in at.caption)
    assert at.get("download_button"), "every image can be downloaded"


def test_attack_page_attacks_both_models_and_draws_the_curve():
    at = _page("explorer/attack.py")
    at.sidebar.slider[0].set_value(5).run()  # steps
    at.button[0].click().run()
    assert not at.exception, at.exception
    headers = [h.value for h in at.subheader]
    assert "toy-standard" in headers and "toy-robust" in headers
    assert len(at.dataframe) == 2 and len(at.dataframe[0].value) == 4  # one row per ε of the sweep
    table = at.dataframe[0].value  # budgets and norms in the unit they are typed in
    assert table["ε"].tolist() == ["1/255", "2/255", "4/255", "8/255"]
    assert all(t.endswith("/255") for t in table["linf norm used"] if t != "0")
    assert any("1/255 read as 0.003922" in c.value for c in at.caption)
    n, curves = at.session_state["attack-curves"]
    assert n == 16 and set(curves) == {"toy-standard", "toy-robust"}
    std, rob = curves["toy-standard"][1], curves["toy-robust"][1]
    assert std[-1] <= std[0] and rob[-1] >= std[-1]  # accuracy falls with ε, less for the robust model


@pytest.mark.slow  # an experiment of half a minute: run by `make test` after the default suite
def test_metamers_page_makes_a_metamer_and_asks_the_other_models():
    at = _page("explorer/metamers_page.py")
    at.sidebar.slider[0].set_value(50).run()
    at.button(key="metamer-go").click().run()
    assert not at.exception, at.exception
    observers = at.dataframe[1].value["observer"].tolist()
    assert {"toy-standard", "toy-robust", "toy-vone"} <= set(observers)
    assert {"error", "spearman", "passed"} <= set(at.dataframe[0].value.columns)


def test_microstim_page_shows_the_sheet_and_the_shift_in_face_choices():
    import torch

    import microstim as topo
    import synth
    from microstim.maps import PATCH_RESOLUTION_MM, PATCH_SMOOTH_MM
    from synth.zoo.catalog import TOPOGRAPHIC

    model = synth.load_model(TOPOGRAPHIC, device="cpu")  # the page's default topographic model
    sheet = topo.sheet_of(model, "IT")
    t = topo.localizer_maps(model, "IT", 100)["faces_vs_objects"]
    _, threshold = topo.face_patches(sheet, t)
    at = _page("explorer/microstim.py")
    x, y = (s.value for s in at.sidebar.slider[:2])
    smoothed = topo.sheet_image(sheet, t, PATCH_RESOLUTION_MM, PATCH_SMOOTH_MM)
    row, col = (min(int(v / PATCH_RESOLUTION_MM), len(smoothed) - 1) for v in (y, x))
    assert smoothed[row, col] > threshold  # it starts inside a face patch
    text = " ".join(m.value for m in at.markdown)
    recorded = float(re.search(r"recorded face selectivity t = (-?[0-9.]+)", text)[1])
    reading = topo.electrode_selectivity(sheet, t, torch.tensor([x, y]), topo.spread_mm(50) / 2)
    assert recorded == pytest.approx(reading, abs=0.06)
    assert recorded > 2  # the electrode there reads face-selective units
    at.sidebar.slider[4].set_value(8).run()  # stimuli per level; Afraz's 50 µA at 200 Hz, the page's defaults
    at.button[0].click().run()
    assert not at.exception, at.exception
    without, stimulated, settings = at.session_state["microstim"]
    assert settings == (x, y, 50, 200)
    shift = 100 * (np.mean(stimulated["face_fraction"]) - np.mean(without["face_fraction"]))
    shown = float(at.metric[0].value.rstrip(" %"))
    assert abs(shown - shift) <= 0.05 + 1e-9  # the value shown is the shift of the curves, to one decimal
    assert shown > 3  # stimulating a face patch biases choices towards faces (Afraz et al. 2006)


def test_a_click_on_the_micro_stimulation_map_moves_the_site_there():
    """The map's click selection (what the chart hands back on a click, nearest pixel's centre) moves the site's
    sliders, once per click: the sliders stay free to move afterwards."""
    at = _page("explorer/microstim.py")
    at.session_state["sheet_map"] = {"selection": {"site": [{"x_mm": 3.04, "y_mm": 7.96}]}}
    at.run()
    assert not at.exception, at.exception
    assert [s.value for s in at.sidebar.slider[:2]] == [3.0, 8.0]
    assert "Site (3.0, 8.0) mm" in " ".join(m.value for m in at.markdown)
    at.sidebar.slider[0].set_value(5.5).run()  # the same click is not applied again
    assert at.sidebar.slider[0].value == 5.5 and at.sidebar.slider[1].value == 8.0


def test_gallery_page_browses_a_batch_folder(tmp_path):
    from synth.cli import main

    toml = tmp_path / "exp.toml"
    toml.write_text('[experiment]\nname = "g"\n[defaults]\nmodel = "toy-standard"\nsteps = 4\n'
                    '[[grid]]\nobjective = ["IT:1", "IT:2"]\nseed = [0]\n')
    assert main(["batch", str(toml), "--out", str(tmp_path / "out")]) == 0
    at = _page("explorer/gallery.py")
    at.text_input[0].set_value(str(tmp_path / "out")).run()
    assert not at.exception, at.exception
    assert "2 of 2 stimuli" in " ".join(c.value for c in at.caption)
    at.sidebar.multiselect[1].set_value(["IT:1"]).run()
    assert "1 of 2 stimuli" in " ".join(c.value for c in at.caption)


def test_loop_page_shows_a_closed_loop_experiments_rounds(tmp_path):
    import synth
    from synth.neuro.loop import Experiment
    from synth.neuro.subject import Subject

    exp = Experiment.create(tmp_path / "exp", "toy-standard", "V4", 4, goals="stretch,onehot", budget=40,
                            first_budget=48, repeats=2, pool=30, steps=8)
    subject = Subject(synth.load_model("toy-robust"), "IT", synth.render(120, "test").tensor(), n_sites=4)
    status = exp.run(subject, 1, progress=False)
    at = _page("explorer/loop_page.py")
    at.text_input[0].set_value(str(tmp_path / "exp")).run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table["round"]) == [0, 1] and list(table["state"]) == ["fitted", "fitted"]
    assert table["held-out r"].tolist() == [round(s["median_r"], 3) for s in status]
    assert table["stretch ratio"].iloc[1] == round(status[1]["goals"]["stretch"]["median_ratio"], 2)
    assert len(at.get("image")) >= 3  # the curves, the per-site scatter and the round's images
    at.radio[1].set_value("reference").run()
    assert not at.exception, at.exception


def test_attack_page_runs_a_minimal_norm_attack_and_reads_its_curve_off_the_budgets():
    at = _page("explorer/attack.py")
    at.sidebar.selectbox[2].select("deepfool-l2").run()
    at.sidebar.text_input[0].set_value("0.1,0.5,1,2").run()
    at.button[0].click().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value  # one row: the minimal perturbation found, at no fixed budget
    assert len(table) == 1 and table["ε"][0] == "minimal" and table["broken"][0]
    assert 0 < float(table["l2 norm used"][0]) < 10
    n, curves = at.session_state["attack-curves"]
    std = curves["toy-standard"][1]
    assert len(std) == 4 and (std[1:] <= std[:-1]).all()  # read off the per-image minimal norms


@pytest.mark.parametrize("name, content, message", [
    ("notes.png", b"not an image at all", "cannot read image"),
    ("huge.png", b"\0" * (21 * 2 ** 20), "uploads are limited to 20 MB"),
])
def test_bad_uploads_get_a_clear_message(name, content, message):
    at = _page("explorer/attack.py")
    at.radio[0].set_value("upload").run()
    at.file_uploader[0].upload(name, content, "image/png").run()
    assert not at.exception, at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "RGBA", "P"])
def test_odd_mode_uploads_are_read_as_rgb(mode):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (80, 60, 3), dtype=np.uint8))
    img = img.convert("L").convert("I;16") if mode == "I;16" else img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="TIFF" if mode == "CMYK" else "PNG")
    at = _page("explorer/attack.py")
    at.radio[0].set_value("upload").run()
    at.file_uploader[0].upload(f"odd.{'tif' if mode == 'CMYK' else 'png'}", buf.getvalue(), "image/png").run()
    assert not at.exception, at.exception
    assert not at.error and any(i for i in at.get("image"))


def test_an_architecture_without_trained_weights_is_refused_in_one_line():
    at = _page("explorer/synthesize.py")
    at.sidebar.selectbox(key="synth-model").select("a checkpoint file…").run()
    at.sidebar.text_input(key="synth-model-arch").input("resnet18").run()
    assert not at.exception, at.exception
    assert any("resnet18 has no trained weights" in e.value for e in at.error)


def test_a_readout_attached_in_one_session_is_that_sessions_alone(tmp_path):
    """Two browser sessions share the cached model; a readout one user attaches becomes a layer of that user's
    model only, and a second readout on the same layer keeps the first."""
    import synth
    from synth.neuro.readouts import Responses, features

    model = synth.load_model("toy-standard", device="cpu")
    images = synth.render(40, "test").tensor()
    values = features(model, images, "V4", pooled=True)[:, :5].numpy()
    paths = []
    for k, v in enumerate((values, values[:, ::-1].copy())):
        readout = synth.fit_readout(model, images, Responses([str(i) for i in range(40)], v,
                                                             [f"s{i}" for i in range(5)]), "V4", method="ridge")
        paths.append(readout.save(tmp_path / f"readout{k}"))
    one, two = _page("explorer/synthesize.py"), _page("explorer/synthesize.py")
    field = lambda at: next(t for t in at.sidebar.text_input if t.label.startswith("readout"))
    layers = lambda at: at.sidebar.selectbox[1].options
    field(one).input(str(paths[0])).run()
    field(one).input(str(paths[1])).run()
    two.run()
    assert not one.exception and not two.exception, (one.exception, two.exception)
    assert {"V4:readout", "V4:readout2"} <= set(layers(one))
    assert not any(":readout" in name for name in layers(two))
