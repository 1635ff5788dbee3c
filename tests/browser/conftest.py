"""A real JupyterLab and a headless Chromium, for tests of what a person sees.

Fixtures:

- ``jupyter_server`` (session): a JupyterLab server on a free port, serving a temporary root
  directory, with isolated config, settings and workspaces. Yields a ``JupyterServer``.
- ``browser`` (session): Playwright's Chromium (``/usr/bin/chromium`` unless
  ``NBCONDUCTOR_CHROMIUM`` says otherwise), headless. Yields a ``playwright`` ``Browser``.
- ``lab`` (function): a fresh page in a fresh browser context, wrapped in ``Lab`` —
  write a notebook, open it, run all cells, wait, read outputs, take screenshots. On failure
  it saves a screenshot and the browser console to ``tests/browser/artifacts/``; at the end
  it shuts down the kernels the test started.

Every test here needs the ``browser`` marker; they are skipped when Playwright or Chromium
is missing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = os.environ.get("NBCONDUCTOR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# ---------------------------------------------------------------------------- server


@dataclass
class JupyterServer:
    """A running JupyterLab: ``url`` (no trailing slash), ``token``, ``root_dir``, ``log``."""

    url: str
    token: str
    root_dir: Path
    log: Path
    process: subprocess.Popen

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """Call the server's REST API (``path`` like ``/api/sessions``); return parsed JSON."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            text = resp.read().decode()
        return json.loads(text) if text else None

    def lab_url(self, path: str = "") -> str:
        """Return the JupyterLab URL for ``path`` (e.g. ``tree/x.ipynb``), token included."""
        return f"{self.url}/lab/{path}?reset&token={self.token}"

    def notebook_url(self, name: str) -> str:
        """Return the Notebook 7 URL of notebook ``name`` (same server), token included."""
        return f"{self.url}/notebooks/{name}?token={self.token}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _isolated_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
        IPYTHONDIR=str(home / "ipython"),
        # kernels import nbconductor from this checkout, installed or not
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    )
    # Kernels run on the offline provider, whatever keys or stores the caller's shell has.
    for var in (
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
        "ANTHROPIC_BASE_URL",
        "OPENAI_BASE_URL",
        "NBCONDUCTOR_STORE",
        "NBCONDUCTOR_OFFLINE_LATENCY",
        "JPY_SESSION_NAME",
    ):
        env.pop(var, None)
    # No news/update toasts over the page (and no requests to the internet for them).
    labconfig = home / "config" / "labconfig"
    labconfig.mkdir(parents=True, exist_ok=True)
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    return env


@pytest.fixture(scope="session")
def jupyter_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    """Start JupyterLab on a free port in a temporary root directory; stop it at the end."""
    root = tmp_path_factory.mktemp("lab-root")
    home = tmp_path_factory.mktemp("lab-home")
    ARTIFACTS.mkdir(exist_ok=True)
    token, port = secrets.token_hex(16), _free_port()
    cmd = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser",
        f"--IdentityProvider.token={token}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}",
        "--ServerApp.disable_check_xsrf=True", "--LabApp.expose_app_in_browser=True",
        "--JupyterNotebookApp.expose_app_in_browser=True",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI often run as root
        cmd.append("--allow-root")
    log = ARTIFACTS / "jupyter-server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            cmd, cwd=root, env=_isolated_env(home), stdout=out, stderr=subprocess.STDOUT
        )
    server = JupyterServer(f"http://127.0.0.1:{port}", token, root, log, proc)
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {proc.returncode}; see {log}")
            try:
                server.api("GET", "/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not answer in 90 s; see {log}") from None
                time.sleep(0.3)
        yield server
    finally:
        proc.terminate()  # the server shuts its kernels down on SIGTERM
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# ---------------------------------------------------------------------------- browser


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Launch headless Chromium through Playwright (fails, never skips, if Chromium is missing)."""
    from playwright import sync_api

    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: apt-get install chromium (tests/run.sh does), "
            "or set NBCONDUCTOR_CHROMIUM",
            pytrace=False,
        )
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


class Lab:
    """One JupyterLab page: notebooks in ``root_dir``, and ways to run and read them."""

    def __init__(self, page: Any, server: JupyterServer) -> None:
        self.page = page
        self.server = server
        self.root_dir = server.root_dir
        self.console: list[str] = []
        page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda err: self.console.append(f"pageerror: {err}"))

    # -- notebooks on disk ---------------------------------------------------------------

    def write_notebook(self, name: str, cells: Sequence[str | nbformat.NotebookNode]) -> Path:
        """Write ``name`` into the server root: strings become code cells; return its path."""
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {
            "name": "python3",
            "display_name": "Python 3",
            "language": "python",
        }
        nb.cells = [nbformat.v4.new_code_cell(c) if isinstance(c, str) else c for c in cells]
        path = self.root_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, path)
        return path

    def copy_in(self, source: Path, name: str | None = None) -> Path:
        """Copy a file (e.g. an example notebook) into the server root; return the copy."""
        target = self.root_dir / (name or Path(source).name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        return target

    # -- driving JupyterLab --------------------------------------------------------------

    def open(self, name: str, timeout: float = 90, ui: str = "lab") -> None:
        """Open notebook ``name`` (relative to the root) in JupyterLab (or ``ui="notebook"``:
        Notebook 7) and wait until its kernel is idle."""
        url = self.server.lab_url(f"tree/{name}") if ui == "lab" else self.server.notebook_url(name)
        self.page.goto(url)
        self.page.wait_for_function(
            "() => window.jupyterapp && window.jupyterapp.shell", timeout=timeout * 1000
        )
        self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first.wait_for(
            timeout=timeout * 1000
        )
        self.wait_kernel_idle(timeout)

    def wait_kernel_idle(self, timeout: float = 90) -> None:
        """Wait until the current notebook's kernel is connected and idle."""
        self.page.wait_for_function(
            """() => {
                const panel = window.jupyterapp.shell.currentWidget;
                const kernel = panel && panel.sessionContext && panel.sessionContext.session
                    && panel.sessionContext.session.kernel;
                return !!kernel && kernel.status === 'idle' && kernel.connectionStatus === 'connected';
            }""",
            timeout=timeout * 1000,
        )

    def command(self, command_id: str, args: dict | None = None) -> Any:
        """Execute a JupyterLab command (e.g. ``notebook:run-all-cells``) and await it."""
        return self.page.evaluate(
            "([id, args]) => window.jupyterapp.commands.execute(id, args)", [command_id, args or {}]
        )

    def run_all(self, timeout: float = 300) -> None:
        """Clear outputs, run every cell of the current notebook and wait for it to finish."""
        self.command("notebook:clear-all-cell-outputs")
        self.command("notebook:run-all-cells")
        self.wait_for_execution(timeout)

    def append_cell(self, source: str) -> int:
        """Append a code cell with ``source`` to the current notebook; return its index."""
        return self.page.evaluate(
            """(source) => {
                const nb = window.jupyterapp.shell.currentWidget.content;
                const index = nb.model.cells.length;
                nb.model.sharedModel.insertCell(index, {cell_type: 'code', source});
                return index;
            }""",
            source,
        )

    def run_cell(self, index: int, timeout: float = 300) -> None:
        """Run cell ``index`` of the current notebook and wait for it to finish."""
        self.page.evaluate(
            """(index) => {
                const nb = window.jupyterapp.shell.currentWidget.content;
                nb.model.cells.get(index).executionCount = null;
                nb.activeCellIndex = index;
            }""",
            index,
        )
        self.command("notebook:run-cell")
        self.wait_for_execution(timeout, index)

    def wait_for_execution(self, timeout: float = 300, index: int | None = None) -> None:
        """Wait until no cell is queued or running, the kernel is idle and the first
        non-empty code cell (or cell ``index``) has run.

        A run stopped by an error also counts as finished (check ``error_outputs()``).
        """
        self.page.wait_for_function(
            """(index) => {
                const panel = window.jupyterapp.shell.currentWidget;
                const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
                if (!kernel || kernel.status !== 'idle') return false;
                const all = Array.from(panel.content.model.cells);
                const cells = all.filter((c) => c.type === 'code' && c.sharedModel.getSource().trim());
                if (cells.some((c) => c.executionState === 'running')) return false;
                const probe = index === null ? cells[0] : all[index];
                return !probe || probe.executionCount !== null;
            }""",
            arg=index,
            timeout=timeout * 1000,
        )
        self.page.wait_for_timeout(300)  # let widget views finish rendering

    def save(self) -> nbformat.NotebookNode:
        """Save the current notebook and return it as read back from disk."""
        self.command("docmanager:save")
        path = self.page.evaluate("() => window.jupyterapp.shell.currentWidget.context.path")
        return nbformat.read(self.root_dir / path, as_version=4)

    # -- reading the page ----------------------------------------------------------------

    def cell(self, index: int) -> Any:
        """Return a locator for cell ``index`` of the current notebook."""
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").nth(index)

    def output(self, index: int) -> Any:
        """Return a locator for the output area of cell ``index`` (not of Output widgets in it)."""
        return self.cell(index).locator(".jp-Cell-outputArea")

    def error_outputs(self) -> list[str]:
        """Return the text of every error (traceback) output in the current notebook."""
        return self.page.evaluate(
            """() => {
                const panel = window.jupyterapp.shell.currentWidget;
                const texts = [];
                for (const c of panel.content.model.cells) {
                    if (c.type !== 'code') continue;
                    for (let i = 0; i < c.outputs.length; i++) {
                        const o = c.outputs.get(i).toJSON();
                        if (o.output_type === 'error') texts.push(o.ename + ': ' + o.evalue);
                    }
                }
                return texts;
            }"""
        )

    def screenshot(self, name: str, locator: Any = None) -> Path:
        """Save a PNG of the page (or of ``locator``) to the artifacts folder; return its path."""
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / (re.sub(r"[^\w.-]+", "_", name) + ".png")
        (locator or self.page).screenshot(path=str(path))
        return path

    def shutdown_kernels(self) -> None:
        """Shut down every kernel session on the server."""
        for session in self.server.api("GET", "/api/sessions"):
            self.server.api("DELETE", f"/api/sessions/{session['id']}")


@pytest.fixture
def lab(
    browser: Any, jupyter_server: JupyterServer, request: pytest.FixtureRequest
) -> Iterator[Lab]:
    """A ``Lab`` on a fresh browser context; screenshots and console saved on failure."""
    context = browser.new_context(viewport={"width": 1440, "height": 960})
    context.set_default_timeout(30_000)
    helper = Lab(context.new_page(), jupyter_server)
    try:
        yield helper
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            name = f"FAILED-{request.node.name}"
            try:
                helper.screenshot(name)
            except Exception:  # noqa: BLE001 - a crashed page must not hide the test's own error
                pass
            (ARTIFACTS / f"{name}.console.txt").write_text("\n".join(helper.console))
        context.close()
        helper.shutdown_kernels()
