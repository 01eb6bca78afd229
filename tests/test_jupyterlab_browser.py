"""Real-browser tests: JupyterLab + headless Chromium driven by Playwright.

A module-scoped fixture starts JupyterLab on a free port with a random token and a temporary
root folder; the tests open notebooks in Debian's Chromium (``/usr/bin/chromium``; the
Playwright-managed browsers are never downloaded), run every cell through JupyterLab's own
command registry, interact with the widgets and check what the page shows.

Without Chromium or Playwright the tests skip with the reason, unless the environment sets
``MEDSEG_XAI_REQUIRE_BROWSER=1`` (CI), where a missing browser is a failure (the ``chromium``
fixture of tests/conftest.py).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
ARTIFACTS = REPO / "test-artifacts"
SERVER_START_TIMEOUT_S = 90.0
# Generous: notebook 01 loads torch, builds a demo cohort and runs a model on two CPU cores.
RUN_ALL_TIMEOUT_MS = 240_000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LabServer:
    """A running JupyterLab server rooted in a temporary folder."""

    def __init__(self, root: Path, port: int, token: str, proc: subprocess.Popen, log: Path):
        self.root = root
        self.port = port
        self.token = token
        self.proc = proc
        self.log = log

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}?token={self.token}"

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


def _wait_for_server(server: LabServer) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited early:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url("api/status"), timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        # Polling interval while the server boots (not a timing assumption).
        time.sleep(0.25)
    raise RuntimeError(f"JupyterLab did not answer in {SERVER_START_TIMEOUT_S} s:\n{server.log_tail()}")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, chromium: object) -> Iterator[LabServer]:
    """Start JupyterLab (``--allow-root``, free port, random token, temporary root).

    Asks for ``chromium`` (tests/conftest.py) first, so the module skips, or fails under
    ``MEDSEG_XAI_REQUIRE_BROWSER=1``, before any server starts.
    """
    base = tmp_path_factory.mktemp("jupyterlab")
    root = base / "root"
    root.mkdir()
    env = dict(os.environ)
    # Private config/runtime/workspace folders: no user settings or stale workspaces leak in.
    for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                     ("IPYTHONDIR", "ipython")]:
        (base / sub).mkdir()
        env[var] = str(base / sub)
    # Render every cell (no virtual scrolling), so widgets below the fold exist in the page.
    tracker = base / "settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    apputils = base / "settings" / "@jupyterlab" / "apputils-extension"
    apputils.mkdir(parents=True)
    (apputils / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    env["MPLBACKEND"] = "Agg"
    env.setdefault("PYTHONHASHSEED", "0")
    port, token = _free_port(), secrets.token_hex(16)
    jupyter = Path(sys.executable).with_name("jupyter")
    cmd = [
        str(jupyter), "lab", "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
        "--ServerApp.open_browser=False", "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=", f"--LabApp.workspaces_dir={base / 'workspaces'}",
        f"--LabApp.user_settings_dir={base / 'settings'}",
    ]
    log = base / "jupyterlab.log"
    with log.open("w") as log_fh:
        proc = subprocess.Popen(cmd, env=env, stdout=log_fh, stderr=subprocess.STDOUT, cwd=root)
    server = LabServer(root, port, token, proc, log)
    try:
        _wait_for_server(server)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(lab: LabServer, chromium: object) -> object:
    """The shared headless Chromium, once JupyterLab answers."""
    return chromium


# --- page helpers ---------------------------------------------------------------------------

_PANEL = "window.jupyterapp.shell.currentWidget"

_KERNEL_IDLE_JS = f"""(name) => {{
  const app = window.jupyterapp;
  if (!app || !app.shell || !{_PANEL} || !{_PANEL}.context) return false;
  if (!{_PANEL}.context.path.endsWith(name)) return false;
  const ctx = {_PANEL}.sessionContext;
  return !!(ctx && ctx.session && ctx.session.kernel && ctx.session.kernel.status === 'idle');
}}"""

_ALL_EXECUTED_JS = f"""() => {{
  const cells = {_PANEL}.content.model.cells;
  for (let i = 0; i < cells.length; i++) {{
    const c = cells.get(i);
    if (c.type === 'code' && c.sharedModel.getSource().trim() && c.executionCount === null)
      return false;
  }}
  return {_PANEL}.sessionContext.session.kernel.status === 'idle';
}}"""

_ERRORS_JS = f"""() => {{
  const cells = {_PANEL}.content.model.cells;
  const errors = [];
  for (let i = 0; i < cells.length; i++) {{
    const c = cells.get(i);
    if (c.type !== 'code') continue;
    for (const o of c.outputs.toJSON()) {{
      if (o.output_type === 'error') errors.push(`cell ${{i}}: ${{o.ename}}: ${{o.evalue}}`);
    }}
  }}
  return errors;
}}"""

# Hash of the bytes behind an <img> (ipywidgets.Image serves them through a blob: URL, whose
# address changes on every update even when the picture does not, so compare the bytes).
_IMG_DIGEST_JS = """async (sel) => {
  const img = document.querySelector(sel);
  if (!img || !img.src) return null;
  const buf = await (await fetch(img.src)).arrayBuffer();
  const d = await crypto.subtle.digest('SHA-256', buf);
  return Array.from(new Uint8Array(d)).map(b => b.toString(16).padStart(2, '0')).join('');
}"""


def open_notebook(browser: object, lab: LabServer, name: str):
    page = browser.new_page(viewport={"width": 1500, "height": 1100})  # type: ignore[attr-defined]
    # A workspace of its own per page, so notebooks opened by earlier tests do not come back.
    page.goto(lab.url(f"lab/workspaces/{secrets.token_hex(4)}/tree/{name}") + "&reset")
    page.wait_for_function(_KERNEL_IDLE_JS, arg=name, timeout=90_000)
    return page


def run_all_cells(page) -> None:
    """Run every cell via JupyterLab's command and wait until each code cell has executed."""
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(_ALL_EXECUTED_JS, timeout=RUN_ALL_TIMEOUT_MS, polling=250)


def error_outputs(page) -> list[str]:
    return list(page.evaluate(_ERRORS_JS))


def image_digest(page, selector: str) -> str | None:
    return page.evaluate(_IMG_DIGEST_JS, selector)


def save_screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def _view_digest(page, selectors: str | list[str]) -> str | None:
    """Digest of one picture, or of several (a view made of planes) joined."""
    if isinstance(selectors, str):
        return image_digest(page, selectors)
    parts = [image_digest(page, sel) for sel in selectors]
    return None if any(p is None for p in parts) else ",".join(parts)  # type: ignore[arg-type]


def _wait_digest_change(page, selectors: str | list[str], before: str | None,
                        timeout: int = 60_000) -> str:
    """Poll the bytes behind <img> element(s) until they differ from ``before``; return them.

    (``page.wait_for_function`` treats the Promise an async predicate returns as truthy, so
    the asynchronous hash is polled from here.)
    """
    deadline = time.monotonic() + timeout / 1000
    while time.monotonic() < deadline:
        digest = _view_digest(page, selectors)
        if digest is not None and digest != before:
            return digest
        page.wait_for_timeout(100)  # polling interval, not a timing assumption
    raise AssertionError(f"{selectors}: the picture did not change within {timeout} ms")


def _write_notebook(path: Path, sources: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in sources]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, str(path))


# --- tests ----------------------------------------------------------------------------------


def test_kernel_is_this_python_and_widgets_render(lab: LabServer, browser: object) -> None:
    """Infrastructure check: the notebook kernel is this venv's Python, and an ipywidgets.Image
    rendered from matplotlib redraws in the page when a slider moves."""
    _write_notebook(lab.root / "smoke.ipynb", [
        "import sys, io\nimport numpy as np\nimport ipywidgets as w\n"
        "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n"
        "print('EXE=' + sys.executable)",
        "fig, ax = plt.subplots(figsize=(2, 2))\nart = ax.imshow(np.zeros((8, 8)), vmin=0, vmax=7)\n"
        "def png():\n    buf = io.BytesIO(); fig.savefig(buf, format='png'); return buf.getvalue()\n"
        "img = w.Image(value=png(), format='png'); img.add_class('mx-smoke-image')\n"
        "s = w.IntSlider(0, 0, 7); s.add_class('mx-smoke-slider')\n"
        "def on(c):\n    a = np.zeros((8, 8)); a[c.new] = 7; art.set_data(a); img.value = png()\n"
        "s.observe(on, 'value')\nw.VBox([s, img])",
    ])
    page = open_notebook(browser, lab, "smoke.ipynb")
    try:
        run_all_cells(page)
        assert error_outputs(page) == []
        exe = page.locator(".jp-OutputArea-output", has_text="EXE=").first.inner_text()
        assert Path(exe.strip().removeprefix("EXE=")).resolve() == Path(sys.executable).resolve()
        page.wait_for_selector(".mx-smoke-image", timeout=30_000)
        before = image_digest(page, ".mx-smoke-image")
        assert before is not None
        page.locator(".mx-smoke-slider .noUi-handle").focus()
        page.keyboard.press("ArrowRight")
        page.wait_for_function(
            "() => document.querySelector('.mx-smoke-slider .widget-readout').innerText.trim()"
            " === '1'", timeout=30_000)
        _wait_digest_change(page, ".mx-smoke-image", before)
    finally:
        page.close()


def _copy_notebook(lab: LabServer, name: str) -> None:
    src = NOTEBOOKS / name
    if not src.exists():
        pytest.fail(f"notebook {src} is missing")
    shutil.copy(src, lab.root / name)


def _select(page, widget_class: str, label_part: str) -> str:
    """Choose the first option of an ipywidgets Dropdown whose text contains ``label_part``."""
    select = page.locator(f".{widget_class} select")
    # ipywidgets renders spaces in option labels as non-breaking spaces.
    labels = [t.replace("\xa0", " ").strip() for t in select.locator("option").all_inner_texts()]
    matches = [i for i, t in enumerate(labels) if label_part in t]
    assert matches, f"no option containing {label_part!r} in {labels}"
    select.select_option(index=matches[0])
    return labels[matches[0]]


def test_notebook_01_explorer_in_jupyterlab(lab: LabServer, browser: object) -> None:
    """Open notebook 01, run all cells, move a slice, pick a missed lesion, run Grad-CAM."""
    name = "01_why_was_the_lesion_missed.ipynb"
    _copy_notebook(lab, name)
    page = open_notebook(browser, lab, name)
    try:
        run_all_cells(page)
        assert error_outputs(page) == []
        explorer = page.locator(".mx-case-explorer").first
        explorer.wait_for(state="visible", timeout=60_000)
        explorer.scroll_into_view_if_needed()
        axial = ".mx-case-explorer .mx-plane-axial"
        view = [f".mx-case-explorer .mx-plane-{p}" for p in ("axial", "coronal", "sagittal")]
        first = image_digest(page, axial)
        assert first is not None

        # 1. move the axial slice slider with the keyboard
        page.locator(".mx-case-explorer .mx-slice-axial .noUi-handle").first.focus()
        page.keyboard.press("ArrowRight")
        moved = _wait_digest_change(page, axial, first)

        # 2. pick a missed lesion: every plane is centred on it again
        # The notebook chose a missed lesion; choose it again after choosing none.
        chosen = page.locator(".mx-case-explorer .mx-lesion-select select").evaluate(
            "s => s.options[s.selectedIndex].text").replace("\xa0", " ").strip()
        assert "· missed ·" in chosen
        _select(page, "mx-lesion-select", "(no lesion selected)")
        # Choosing none redraws too (the lesion outline goes): wait for that picture first.
        unselected = _wait_digest_change(page, axial, moved)
        picked = _select(page, "mx-lesion-select", chosen)
        centred = _wait_digest_change(page, axial, unselected)
        centred_view = _view_digest(page, view)
        page.wait_for_function(
            "(id) => document.querySelector('.mx-case-explorer .mx-verdict').innerText"
            ".includes(id + ' was missed')",
            arg=picked.split(" · ")[0], timeout=30_000,
        )

        # 3. Grad-CAM on the lesion's missed part (not computed by the notebook itself)
        _select(page, "mx-method", "gradcam")
        _select(page, "mx-target", "its missed part")
        page.wait_for_function(
            "() => document.querySelector('.mx-case-explorer .mx-status').innerText"
            ".includes('not computed')", timeout=30_000)
        # No cached result for this target: the heatmap is taken off the view.
        before_run = _wait_digest_change(page, view, centred_view)
        page.locator(".mx-case-explorer .mx-run").first.click()
        page.wait_for_function(
            "() => /gradcam done|showing gradcam/.test("
            "document.querySelector('.mx-case-explorer .mx-status').innerText)",
            timeout=120_000,
        )
        after_run = _wait_digest_change(page, view, before_run)
        # The notebook had centred the explorer on this lesion: choosing it again after moving
        # the slice restores exactly the first picture.
        assert moved != first and centred == first
        assert after_run != before_run
        assert page.locator(".mx-case-explorer .mx-error").count() == 0
        assert error_outputs(page) == []
        shot = save_screenshot(page, "notebook01_explorer.png")
        assert shot.stat().st_size > 10_000
    finally:
        page.close()


_TWO_CHANNEL_CELLS = [
    "import numpy as np, torch\n"
    "from medseg_xai.adapters import SegmentationAdapter\n"
    "from medseg_xai.widgets import CaseExplorer, ExplorerOptions\n"
    "torch.manual_seed(0)\n"
    "shape = (12, 40, 40)\n"
    "g = np.indices(shape)\n"
    "ref = ((g[0] - 6) ** 2 + (g[1] - 20) ** 2 + (g[2] - 14) ** 2) <= 9\n"
    "rng = np.random.default_rng(0)\n"
    "x = np.stack([rng.normal(size=shape), 0.2 * rng.normal(size=shape) + 1.5 * ref])"
    ".astype(np.float32)\n"
    "net = torch.nn.Sequential(torch.nn.Conv3d(2, 8, 3, padding=1), torch.nn.ReLU(),\n"
    "                          torch.nn.Conv3d(8, 2, 1))\n"
    "aff = np.zeros((4, 4)); aff[0, 2] = aff[1, 1] = 1.0; aff[2, 0] = 3.0; aff[3, 3] = 1.0\n"
    "ex = CaseExplorer(SegmentationAdapter(net), x, ref, None, affine=aff, case_id='two-channel',\n"
    "                  options=ExplorerOptions(\n"
    "                      channel_names=['T1', 'FLAIR'], px=240,\n"
    "                      method_options={'occlusion': {'window': 1, 'stride': 1}}))\n"
    "ex.select_lesion('ref-1')\n"
    "ex",
]


def _readout(page, cls: str) -> int:
    text = page.locator(f".mx-case-explorer .{cls} .widget-readout").first.inner_text()
    return int(text.strip())


def test_two_channel_explorer_navigation_and_cancel(lab: LabServer, browser: object) -> None:
    """Click to move the crosshair, wheel to step, switch channel, cancel a running occlusion
    (and keep navigating while it runs: the kernel is not frozen)."""
    _write_notebook(lab.root / "two_channel.ipynb", _TWO_CHANNEL_CELLS)
    page = open_notebook(browser, lab, "two_channel.ipynb")
    try:
        run_all_cells(page)
        assert error_outputs(page) == []
        axial = ".mx-case-explorer .mx-plane-axial"
        page.wait_for_selector(axial, timeout=60_000)
        page.locator(axial).scroll_into_view_if_needed()
        coronal = ".mx-case-explorer .mx-plane-coronal"
        first = image_digest(page, axial)
        first_coronal = image_digest(page, coronal)
        cor0, sag0, ax0 = (_readout(page, c) for c in
                           ("mx-slice-coronal", "mx-slice-sagittal", "mx-slice-axial"))

        # 1. click on the axial plane: the coronal and sagittal slices move to that voxel
        box = page.locator(axial).bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + 0.2 * box["width"], box["y"] + 0.25 * box["height"])
        page.wait_for_function(
            "([c, s]) => { const r = (k) => parseInt(document.querySelector("
            "'.mx-case-explorer .' + k + ' .widget-readout').innerText);"
            " return r('mx-slice-coronal') !== c && r('mx-slice-sagittal') !== s; }",
            arg=[cor0, sag0], timeout=30_000)
        assert _readout(page, "mx-slice-axial") == ax0  # the clicked plane keeps its slice
        page.wait_for_function(
            "() => document.querySelector('.mx-case-explorer .mx-readout').innerText"
            ".includes('voxel (')", timeout=30_000)
        _wait_digest_change(page, coronal, first_coronal)  # another coronal slice is shown

        # 2. the wheel over the axial plane steps its slice
        page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.5 * box["height"])
        page.mouse.wheel(0, 120)
        page.wait_for_function(
            "(a) => parseInt(document.querySelector('.mx-case-explorer .mx-slice-axial "
            ".widget-readout').innerText) === a + 1", arg=ax0, timeout=30_000)
        stepped = _wait_digest_change(page, axial, first)

        # 3. switch to the second channel: the picture and the readout follow
        _select(page, "mx-channel", "FLAIR")
        _wait_digest_change(page, axial, stepped)
        page.wait_for_function(
            "() => document.querySelector('.mx-case-explorer .mx-readout').innerText"
            ".includes('FLAIR = ')", timeout=30_000)

        # 4. a long occlusion runs in the background; navigation still works; cancel stops it
        _select(page, "mx-method", "occlusion")
        page.locator(".mx-case-explorer .mx-run").first.click()
        page.wait_for_function(
            "() => document.querySelector('.mx-case-explorer .mx-status').innerText"
            ".includes('running occlusion')", timeout=30_000)
        page.locator(axial).scroll_into_view_if_needed()  # clicking "run" may have scrolled
        box = page.locator(axial).bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.5 * box["height"])
        page.mouse.wheel(0, 120)
        page.wait_for_function(
            "(a) => parseInt(document.querySelector('.mx-case-explorer .mx-slice-axial "
            ".widget-readout').innerText) === a + 2", arg=ax0, timeout=30_000)
        page.wait_for_function(
            "() => document.querySelector('.mx-case-explorer .mx-status').innerText"
            ".includes('running occlusion')", timeout=5_000)  # still running
        page.locator(".mx-case-explorer .mx-cancel").first.click()
        page.wait_for_function(
            "() => document.querySelector('.mx-case-explorer .mx-status').innerText"
            ".includes('occlusion cancelled')", timeout=60_000)
        assert page.locator(".mx-case-explorer .mx-error").count() == 0
        assert error_outputs(page) == []
        save_screenshot(page, "two_channel_explorer.png")
    finally:
        page.close()


_CLASS_CELLS = [
    "import numpy as np\n"
    "from medseg_xai.widgets import CaseExplorer, ExplorerOptions\n"
    "shape = (12, 40, 40)\n"
    "g = np.indices(shape)\n"
    "ref = np.zeros(shape, np.uint8)\n"
    "ref[((g[0] - 6) ** 2 + (g[1] - 12) ** 2 + (g[2] - 12) ** 2) <= 16] = 2\n"
    "ref[((g[0] - 6) ** 2 + (g[1] - 28) ** 2 + (g[2] - 27) ** 2) <= 25] = 3\n"
    "x = (np.random.default_rng(0).normal(size=shape) + 2.0 * (ref > 0)).astype(np.float32)\n"
    "ex = CaseExplorer(None, x, ref, ref, case_id='classes', options=ExplorerOptions(\n"
    "                  classes={2: 'tumour', 3: 'cyst'}, class_index=2, px=240))\n"
    "ex",
]


def test_class_selector_changes_the_reference_outline(lab: LabServer, browser: object) -> None:
    """A multi-class case: choosing another class in the explorer's class selector redraws the
    planes with that class's reference outline."""
    _write_notebook(lab.root / "classes.ipynb", _CLASS_CELLS)
    page = open_notebook(browser, lab, "classes.ipynb")
    try:
        run_all_cells(page)
        assert error_outputs(page) == []
        planes = [f".mx-case-explorer .mx-plane-{p}" for p in ("axial", "coronal", "sagittal")]
        page.wait_for_selector(planes[0], timeout=60_000)
        page.locator(planes[0]).scroll_into_view_if_needed()
        before = _view_digest(page, planes)
        assert before is not None
        assert _select(page, "mx-class-select", "cyst") == "cyst (3)"
        _wait_digest_change(page, planes, before)
        assert page.locator(".mx-case-explorer .mx-error").count() == 0
        assert error_outputs(page) == []
    finally:
        page.close()
