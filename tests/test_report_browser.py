"""The report site in a real headless Chromium (Debian's `chromium` package), driven over the DevTools protocol.

Loads site/index.html from disk, follows links to a paper page and a rendered notebook, checks that every
image loaded, and checks a screenshot shows the figures. Skipped when chromium is not installed.
"""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--window-size=1280,1600",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]
ALL_IMAGES_LOADED = ("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")


class Browser:
    """Just enough of the DevTools protocol: navigate, wait for load, evaluate JS, take a screenshot."""

    def __init__(self, profile_dir: Path, timeout: float = 30.0):
        import websocket  # websocket-client, a dependency of jupyter_server

        self.timeout = timeout
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        port = self._devtools_port()
        deadline = time.time() + timeout
        while True:
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5))
            pages = [t for t in targets if t.get("type") == "page"]
            if pages or time.time() > deadline:
                break
            time.sleep(0.1)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        self._id = 0
        self.events: list[dict] = []
        self.call("Page.enable")
        self.call("Network.enable")
        # offline: the rendered notebooks reference MathJax/require.js on a CDN; block them so loads finish fast
        self.call("Network.setBlockedURLs", urls=["http://*", "https://*"])

    def _devtools_port(self) -> int:
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            match = re.search(r"DevTools listening on ws://[\d.]+:(\d+)/", line)
            if match:
                return int(match.group(1))
            if not line and self.proc.poll() is not None:
                break
        raise RuntimeError("chromium did not start its DevTools endpoint")

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for_load(self) -> None:
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if any(e.get("method") == "Page.loadEventFired" for e in self.events):
                self.events.clear()
                return
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError("page did not finish loading")

    def navigate(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for_load()

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """Click a link like a user does and wait for the new page."""
        self.events.clear()
        assert self.evaluate(f"(() => {{ const a = document.querySelector({json.dumps(selector)}); "
                             "if (!a) return false; a.click(); return true; })()"), f"no element {selector}"
        self.wait_for_load()

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"])

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    pytest.importorskip("websocket", reason="websocket-client (a jupyter_server dependency) is needed")
    instance = Browser(tmp_path / "chromium-profile")
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    from test_report import build_tree

    root = tmp_path_factory.mktemp("site")
    build_tree(root)
    return root / "results" / "smoke" / "site"


def _colours(png: bytes):
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    return image, image.getcolors(maxcolors=1 << 24)


def test_site_opens_from_disk_follows_links_and_loads_every_image(browser, site):
    browser.navigate((site / "index.html").as_uri())
    assert browser.evaluate("document.title").startswith("adlib report")
    assert browser.evaluate(ALL_IMAGES_LOADED)

    browser.click('nav a[href="demo.html"]')
    assert browser.evaluate("location.pathname").endswith("/site/demo.html")
    assert browser.evaluate("document.images.length") >= 1
    assert browser.evaluate(ALL_IMAGES_LOADED), browser.evaluate(
        "Array.from(document.images).filter(i => !i.naturalWidth).map(i => i.src)")

    # the comparable cells are coloured by agreement, and every note says its reason on hover
    assert browser.evaluate("document.querySelectorAll('td.agree').length") >= 3
    assert browser.evaluate("getComputedStyle(document.querySelector('td.agree')).backgroundColor") == "rgb(200, 230, 201)"
    assert browser.evaluate("Array.from(document.querySelectorAll('sup')).every(s => s.title.length > 5)")
    assert browser.evaluate("document.querySelectorAll('sup').length") >= 5

    browser.click('a[href^="notebooks/"]')
    assert browser.evaluate("location.pathname").endswith("/site/notebooks/demo/01_demo.html")
    assert browser.evaluate("document.images.length") >= 1  # the notebook's plot, embedded in the page
    assert browser.evaluate(ALL_IMAGES_LOADED)


def test_screenshot_shows_the_figures(browser, site, tmp_path):
    browser.navigate((site / "demo.html").as_uri())
    image, colours = _colours(browser.screenshot())
    assert image.size[0] >= 800 and len(colours) > 20, "blank page"
    white = sum(count for count, rgb in colours if min(rgb) > 245)
    assert white < 0.97 * image.size[0] * image.size[1]
    orange = sum(count for count, rgb in colours if all(abs(a - b) <= 12 for a, b in zip(rgb, (255, 127, 14))))
    assert orange > 2000, "the figure's orange bars are not on screen"

    # the same check fails on a page whose image is broken: the check can tell
    broken = shutil.copytree(site, tmp_path / "broken-site")
    (broken / "figures" / "demo" / "fig1.png").write_bytes(b"not a png")
    browser.navigate((broken / "demo.html").as_uri())
    assert not browser.evaluate(ALL_IMAGES_LOADED)
    _, colours = _colours(browser.screenshot())
    assert sum(count for count, rgb in colours if all(abs(a - b) <= 12 for a, b in zip(rgb, (255, 127, 14)))) < 2000


def test_repository_site_after_make_reproduce(browser):
    """After `make reproduce` (CI runs it before the tests): every page of the real site loads all its images."""
    from adlib.results import repo_root

    index = repo_root() / "results" / "smoke" / "site" / "index.html"
    if not index.exists():
        pytest.skip("no results/smoke/site yet: run `make reproduce` first")
    browser.navigate(index.as_uri())
    pages = browser.evaluate("Array.from(document.querySelectorAll('nav a')).map(a => a.href)")
    assert len(pages) >= 2, "the site lists no paper"
    for page in pages:
        browser.navigate(page)
        assert browser.evaluate(ALL_IMAGES_LOADED), f"{page}: an image did not load"
        notebooks = browser.evaluate(
            "Array.from(document.querySelectorAll('a[href^=\"notebooks/\"]')).map(a => a.href)")
        for notebook in notebooks[:3]:
            browser.navigate(notebook)
            assert browser.evaluate(ALL_IMAGES_LOADED), f"{notebook}: an image did not load"


@pytest.fixture(scope="module")
def explorer_site(tmp_path_factory) -> Path:
    """The demo site plus an executed explorer notebook (demo/05_explorer) whose output is the static figure an
    explorer notebook saves headless: image, ground truth and two settings' maps (``plots.image_row``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nbformat
    import numpy as np
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
    from test_report import SPECS, build_tree

    from adlib import plots
    from adlib.app import report

    root = tmp_path_factory.mktemp("explorer-site")
    build_tree(root)
    grid = np.linspace(0, 1, 64)
    mask = (np.add.outer(grid, grid) > 1.4).astype(float)
    fig = plots.image_row({"image": np.stack([np.outer(grid, grid)] * 3), "ground truth": mask,
                           "default (read from the run cache)": np.outer(grid, grid) + mask,
                           "m=1 (read from the run cache)": np.outer(grid, 1 - grid) + mask})
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    nb = new_notebook(cells=[new_markdown_cell("# Explorer: demo"), new_code_cell("explorer.figure()", execution_count=1, outputs=[
        new_output("display_data", data={"image/png": base64.b64encode(buffer.getvalue()).decode(),
                                         "text/plain": "<Figure>"})])])
    executed = root / "results" / "smoke" / "executed" / "demo"
    nbformat.write(nb, executed / "05_explorer.ipynb")
    (executed / "05_explorer.run.json").write_text(json.dumps({
        "notebook": "demo/05_explorer", "title": "Explorer", "status": "ok", "seconds": 2.0,
        "end": "2026-01-01T00:00:00+0000", "declared_outputs": [], "written_files": []}))
    report.build_report(root, "smoke", paper_root=root, notebook_root=root / "notebooks", specs=SPECS)
    return root / "results" / "smoke" / "site"


def test_paper_page_links_its_explorer_whose_page_shows_the_static_figure(browser, explorer_site):
    browser.navigate((explorer_site / "demo.html").as_uri())
    assert "JupyterLab" in browser.evaluate("document.querySelector('p.explorer').textContent")
    browser.click("p.explorer a")
    assert browser.evaluate("location.pathname").endswith("/site/notebooks/demo/05_explorer.html")
    assert browser.evaluate(ALL_IMAGES_LOADED)
    # the static figure: one wide image (four panels in a row), drawn with the maps' colour map
    sizes = browser.evaluate("Array.from(document.images).map(i => [i.naturalWidth, i.naturalHeight])")
    assert any(w > 2.5 * h for w, h in sizes), sizes
    image, colours = _colours(browser.screenshot())
    jet_red = sum(count for count, rgb in colours if rgb[0] > 150 and rgb[1] < 60 and rgb[2] < 60)
    assert jet_red > 500, "the maps' colours are not on screen"


def test_repository_site_links_every_explorer(browser):
    """After `make reproduce`: every paper page that has an explorer links its executed page, which shows its
    static figure."""
    from adlib.results import repo_root

    site = repo_root() / "results" / "smoke" / "site"
    if not (site / "index.html").exists():
        pytest.skip("no results/smoke/site yet: run `make reproduce` first")
    for paper in ("varad", "vitad", "mambaad", "ladmim"):
        if not (site / f"{paper}.html").exists():
            continue
        browser.navigate((site / f"{paper}.html").as_uri())
        if not browser.evaluate("!!document.querySelector('p.explorer a')"):
            continue  # the explorer did not run ok in that build (its notebook line says why)
        browser.click("p.explorer a")
        assert browser.evaluate("document.images.length") >= 1 and browser.evaluate(ALL_IMAGES_LOADED), paper
