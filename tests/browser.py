"""Headless Chromium for page tests: Debian's `chromium` driven by Playwright (which cannot download its
own browsers here; scripts/install-debian-packages.sh installs the system one).

`Browsing` records what a page must never do: a request to a non-local host (each one is aborted and
recorded), a console error, an uncaught exception.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

CHROMIUM = os.environ.get("STACKFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # A fake microphone (a beep) granted without a prompt: the Record button's path is real.
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}


def require_browser() -> None:
    """Skip where no browser is installed; in CI (CI=true) a missing browser is a failure, not a skip."""
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip)")
    if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if missing:
        message = "browser tests need " + " and ".join(missing) + ": bash scripts/install.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Browsing:
    foreign_requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def check(self) -> None:
        assert self.foreign_requests == [], f"requests to non-local hosts: {self.foreign_requests}"
        assert self.console_errors == [], f"console errors: {self.console_errors}"


@contextmanager
def chromium(extra_args: tuple[str, ...] = ()) -> Iterator[Any]:
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def open_page(browser: Any, url: str, **context_options: Any) -> Iterator[tuple[Any, Browsing]]:
    """A page in a fresh context (empty localStorage) at `url`, watched by a `Browsing` record."""
    record = Browsing()
    context = browser.new_context(**context_options)

    def guard(route: Any) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if host in LOCAL_HOSTS or host.startswith("127."):
            route.continue_()
        else:
            record.foreign_requests.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    page = context.new_page()
    page.on("console", lambda m: m.type == "error" and record.console_errors.append(m.text))
    page.on("pageerror", lambda e: record.console_errors.append(f"uncaught: {e}"))
    page.goto(url)
    try:
        yield page, record
    finally:
        context.close()


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
