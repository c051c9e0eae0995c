"""The Streamlit explorer: every page's main path on the embedded default, and bad uploads, through AppTest."""
import io
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
    assert "toy-topo" in at.dataframe[0].value["model"].tolist()
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
    n, curves = at.session_state["attack-curves"]
    assert n == 16 and set(curves) == {"toy-standard", "toy-robust"}
    std, rob = curves["toy-standard"][1], curves["toy-robust"][1]
    assert std[-1] <= std[0] and rob[-1] >= std[-1]  # accuracy falls with ε, less for the robust model


def test_metamers_page_makes_a_metamer_and_asks_the_other_models():
    at = _page("explorer/metamers_page.py")
    at.sidebar.slider[0].set_value(50).run()
    at.button(key="metamer-go").click().run()
    assert not at.exception, at.exception
    observers = at.dataframe[1].value["observer"].tolist()
    assert {"toy-standard", "toy-robust", "toy-vone"} <= set(observers)
    assert {"error", "spearman", "passed"} <= set(at.dataframe[0].value.columns)


def test_microstim_page_shows_the_sheet_and_the_shift_in_face_choices():
    at = _page("explorer/microstim.py")
    assert "recorded face selectivity" in " ".join(m.value for m in at.markdown)
    at.sidebar.slider[4].set_value(8).run()  # stimuli per level
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert at.metric[0].label == "shift in face choices"


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


def test_attack_page_runs_a_minimal_norm_attack_and_reads_its_curve_off_the_budgets():
    at = _page("explorer/attack.py")
    at.sidebar.selectbox[2].select("deepfool-l2").run()
    at.sidebar.text_input[0].set_value("0.1,0.5,1,2").run()
    at.button[0].click().run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value  # one row: the minimal perturbation found, at no fixed budget
    assert len(table) == 1 and np.isinf(table["ε"][0]) and 0 < table["distance"][0] < 10 and table["success"][0]
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
