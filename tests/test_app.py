"""The Streamlit explorer renders its first page on the embedded default without errors."""
from pathlib import Path

from streamlit.testing.v1 import AppTest


def test_app_lists_models_and_shows_images():
    at = AppTest.from_file(str(Path(__file__).parent.parent / "app.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    assert "toy-standard" in at.dataframe[0].value["model"].tolist()
    assert len(at.get("image")) >= 8 * 6  # a row of images per category
    at.sidebar.selectbox[0].select("toy-robust").run()
    assert not at.exception
    assert "toy-robust" in " ".join(m.value for m in at.markdown)
