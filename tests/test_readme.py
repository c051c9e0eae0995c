"""The README's Python examples run as written, in order, in one namespace (what a reader pastes into a session)."""
import os
import re
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
# What the README leaves to the reader between its blocks: the test images' labels, and the two models of a wormhole.
PRELUDE = """
import synth
labels = synth.render(16, split="test").labels
std, rob = synth.load_model("toy-standard"), synth.load_model("toy-robust")
"""


def blocks() -> list[str]:
    """The README's ```python blocks, in order."""
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.slow
def test_every_python_block_of_the_readme_runs(tmp_path):
    found = blocks()
    assert len(found) >= 3, "the README's examples moved: update this test"
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the examples write runs/ and sheets into the working folder
    try:
        exec(compile(PRELUDE, "prelude", "exec"), namespace)
        for i, code in enumerate(found):
            exec(compile(code, f"README block {i + 1}", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert (tmp_path / "runs" / "it12" / "result.json").is_file() and (tmp_path / "sheet.png").is_file()
