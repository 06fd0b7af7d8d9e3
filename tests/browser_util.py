"""Helpers for browser tests: start ``app.py`` on a free port, drive Debian's chromium.

No browser is downloaded: Playwright for Python launches ``/usr/bin/chromium`` (override with
``DIFFMIX_CHROMIUM``). The fixtures (``app_server``, ``browser``, ``page``) are registered once,
as a plugin, by ``conftest.py`` -- do not import them into test modules (each import would
register another session-scoped Playwright). A browser test module starts with::

    pytestmark = [pytest.mark.browser, *browser_skips()]

The app server and the browser are session-scoped (one start for all browser tests); each
test gets a fresh browser page. Screenshots go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path(os.environ.get("DIFFMIX_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
START_TIMEOUT_S = 120.0
#: Default wait for something to appear in the page (ms); the CPU may be shared.
UI_TIMEOUT_MS = 60_000


def browser_skips() -> list[pytest.MarkDecorator]:
    """Skip marks for a browser test module when chromium or playwright is missing."""
    marks = []
    if importlib.util.find_spec("playwright") is None:
        marks.append(pytest.mark.skip(reason="playwright (Python package) is not installed"))
    if not CHROMIUM.is_file():
        marks.append(
            pytest.mark.skip(reason=f"chromium not found at {CHROMIUM} (apt-get install chromium)")
        )
    return marks


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AppServer:
    """A running ``app.py`` subprocess."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log_tail(self, chars: int = 6000) -> str:
        """The end of the server log (for failure messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "<no log>"

    def stop(self) -> None:
        """Terminate the server (its process group), then kill it if it lingers."""
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def start_app(
    home: Path,
    *,
    script: str = "app.py",
    env: dict[str, str] | None = None,
    name: str = "app",
    timeout: float = START_TIMEOUT_S,
) -> AppServer:
    """Start ``script`` on a free port with ``DIFFMIX_HOME=home``; wait until it answers HTTP.

    The server's output goes to ``test-artifacts/<name>.log``. Fails the test with the end of
    that log when the server exits or does not answer within ``timeout``.
    """
    port = free_port()
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / f"{name}.log"
    full_env = {
        **os.environ,
        "DIFFMIX_HOME": str(home),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, script, "--port", str(port)],
            cwd=REPO,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = AppServer(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{script} exited with {proc.returncode}:\n{server.log_tail()}")
        if _answers(server.url):
            logger.info("%s up at %s", script, server.url)
            return server
        time.sleep(0.5)
    server.stop()
    pytest.fail(
        f"{script} did not answer on {server.url} within {timeout:.0f}s:\n{server.log_tail()}"
    )


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def app_server(workspace_home: Path) -> Iterator[AppServer]:
    """``app.py`` running for the whole session on a free port, in the test workspace."""
    server = start_app(workspace_home)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Debian chromium driven by Playwright (no browser download)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh 1280x900 page with the UI timeout as its default."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(UI_TIMEOUT_MS)
    yield pg
    context.close()


# --------------------------------------------------------------------------- Gradio widgets


def open_app(page: Any, url: str) -> None:
    """Open ``url`` and wait until Gradio has rendered the page."""
    page.goto(url)
    page.wait_for_selector(".gradio-container", state="visible")
    page.wait_for_load_state("networkidle")


def choose(page: Any, elem_id: str, option: str) -> None:
    """Pick ``option`` in the ``gr.Radio`` with ``elem_id``."""
    page.locator(f"#{elem_id} label").filter(has_text=option).first.click()


def set_number(page: Any, elem_id: str, value: float) -> None:
    """Type ``value`` into a ``gr.Number`` (or a ``gr.Slider``'s number box) and commit it."""
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def dataframe_rows(page: Any, elem_id: str) -> list[list[str]]:
    """The visible body cells of the ``gr.Dataframe`` with ``elem_id``, as text.

    Gradio 6 draws rows as ``div[role=row]`` of ``div[role=gridcell]`` (the ``<tbody>`` in the
    DOM is a hidden sizing copy).
    """
    rows = page.locator(f"#{elem_id} [role=row][data-index]")
    return [
        [c.strip() for c in rows.nth(i).locator("[role=gridcell]").all_inner_texts()]
        for i in range(rows.count())
    ]


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot to ``test-artifacts/<name>.png``."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
