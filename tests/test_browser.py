"""The explorer end to end in a real headless Chromium: `make app`'s server on a loopback port, one synthesis
and one attack run through the page, what they show asserted, and a screenshot of every page.

Screenshots go to a temporary folder, or to ``PHOSPHENE_SCREENSHOTS`` (``docs/screenshots`` for the README).
"""
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.slow  # a server and a browser: run by `make test` after the default suite
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
# Ceilings, in seconds, on waits for an event (the server answering, a page element appearing): generous, so that a
# loaded machine is slow but passes, while a hung server or page still fails.
SERVER_CEILING, PAGE_CEILING = 300, 600

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make install)")
if not os.access(CHROMIUM, os.X_OK):
    pytest.skip(f"no Chromium at {CHROMIUM}: `make browser` installs Debian's chromium", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    """Whether the server's health check answers 'ok' (it is up and serving)."""
    try:
        return urllib.request.urlopen(f"{url}/_stcore/health", timeout=5).read() == b"ok"
    except OSError:
        return False


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`make app`'s command on a free loopback port; yields the URL once the health check answers."""
    port = _free_port()
    streamlit = Path(sys.executable).parent / "streamlit"
    proc = subprocess.Popen([str(streamlit), "run", "app.py", "--server.headless", "true", "--server.port", str(port),
                             "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, stdout=open(tmp_path_factory.mktemp("server") / "log", "w"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_CEILING
        while not _healthy(url):
            if proc.poll() is not None:
                pytest.fail(f"the explorer's server exited with status {proc.returncode} before answering")
            if time.monotonic() > deadline:
                pytest.fail(f"the explorer's server did not answer within {SERVER_CEILING} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("PHOSPHENE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def page(server):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 1100})
        tab.set_default_timeout(PAGE_CEILING * 1000)
        tab.goto(server)
        yield tab
        browser.close()


def _open(page, title: str) -> None:
    page.get_by_role("link", name=title).first.click()
    page.get_by_role("heading", name=title).first.wait_for()


def _idle(page) -> None:
    """Wait until Streamlit has finished the run (its status widget gone)."""
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')")


def test_models_page_renders_cards_and_predictions(page, shots):
    page.get_by_role("heading", name="The embedded object world").wait_for()
    page.locator("[data-testid='stDataFrame']").first.wait_for()
    _idle(page)
    assert page.locator("[data-testid='stImage']").count() >= 8
    page.screenshot(path=str(shots / "models.png"))


def test_a_synthesis_runs_through_the_page(page, shots):
    _open(page, "Synthesize")
    page.get_by_role("button", name="Synthesize", exact=True).click()
    done = page.get_by_text("natural maximum")
    done.wait_for()
    assert "×" in done.inner_text() and page.get_by_role("button", name="PNG", exact=True).count() >= 1
    _idle(page)
    done.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "synthesize.png"))


def test_stop_interrupts_a_running_synthesis(page):
    _open(page, "Synthesize")
    slider = page.locator("[data-testid='stSidebar']").get_by_role("slider").first  # steps
    slider.press("End")  # 512 steps: long enough to interrupt
    page.locator("[data-testid='stSidebar']").get_by_text("512", exact=True).first.wait_for()
    _idle(page)
    page.get_by_role("button", name="Synthesize", exact=True).click()
    page.get_by_text(re.compile(r"step \d+/512")).first.wait_for()
    page.locator("[data-testid='stMain']").get_by_role("button", name="Stop", exact=True).click()
    page.get_by_text("Stopped: the synthesis was interrupted").wait_for()
    _idle(page)
    assert page.get_by_text("step 512/512").count() == 0


def test_an_attack_runs_through_the_page(page, shots):
    _open(page, "Attack")
    page.get_by_role("button", name="Attack", exact=True).click()
    page.get_by_role("heading", name="toy-robust").wait_for()
    _idle(page)
    text = page.locator("[data-testid='stMain']").inner_text()
    assert "toy-standard" in text and "perturbation ×10" in text
    page.get_by_text("perturbation ×10").first.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "attack.png"))


@pytest.mark.parametrize("title, shown", [("Metamers", "Make the metamer"),
                                          ("Micro-stimulation", "recorded face selectivity"),
                                          ("Gallery", "manifest.jsonl"),
                                          ("Loop", "experiment folder")])
def test_every_other_page_renders(page, shots, title, shown):
    _open(page, title)
    page.get_by_text(shown).first.wait_for()
    _idle(page)
    page.screenshot(path=str(shots / f"{title.lower().replace('-', '')}.png"))
