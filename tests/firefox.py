"""Headless Firefox for page tests, driven over WebDriver BiDi (the W3C protocol stock Firefox speaks):
Playwright drives only its own patched Firefox, which cannot be downloaded here, so the test talks to
Debian's `firefox-esr` directly with a small client on `websockets`.

`FirefoxPage` records what a page must never do, as tests/browser.py does for Chromium: a request to a
non-local host, a console error, an uncaught exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import websockets

FIREFOX = os.environ.get("STACKFLOW_FIREFOX", "/usr/bin/firefox-esr")
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
# No updates, telemetry or remote settings: nothing may leave the machine (and the network is closed).
_PREFS = """
user_pref("app.update.enabled", false);
user_pref("browser.shell.checkDefaultBrowser", false);
user_pref("datareporting.policy.dataSubmissionEnabled", false);
user_pref("toolkit.telemetry.enabled", false);
user_pref("network.captive-portal-service.enabled", false);
user_pref("network.connectivity-service.enabled", false);
user_pref("browser.safebrowsing.downloads.remote.enabled", false);
user_pref("media.navigator.streams.fake", true);
user_pref("media.navigator.permission.disabled", true);
"""


def require_firefox() -> None:
    if not (os.path.exists(FIREFOX) or shutil.which(FIREFOX)):
        message = f"the Firefox test needs {FIREFOX} (apt-get install firefox-esr): bash scripts/install.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FirefoxPage:
    def __init__(self, ws: Any, context: str) -> None:
        self._ws = ws
        self.context = context
        self._next = 0
        self.foreign_requests: list[str] = []
        self.console_errors: list[str] = []

    async def command(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        ident = self._next
        await self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(await self._ws.recv())
            if message.get("type") == "event":
                self._event(message["method"], message["params"])
            elif message.get("id") == ident:
                if message.get("type") == "error":
                    raise RuntimeError(f"{method}: {message.get('error')}: {message.get('message')}")
                return dict(message["result"])

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "log.entryAdded" and params.get("level") == "error":
            self.console_errors.append(str(params.get("text")))
        elif method == "network.beforeRequestSent":
            url = params["request"]["url"]
            host = urlsplit(url).hostname or ""
            if urlsplit(url).scheme in ("http", "https", "ws", "wss") and not (
                host in LOCAL_HOSTS or host.startswith("127.")
            ):
                self.foreign_requests.append(url)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = await self.command(
            "script.evaluate",
            expression=f"(async () => {{ const v = await ({expression}); return JSON.stringify(v); }})()",
            target={"context": self.context},
            awaitPromise=True,
        )
        if result.get("type") == "exception":
            raise AssertionError(f"{expression}: {result['exceptionDetails'].get('text')}")
        value = result["result"].get("value")
        return None if value is None else json.loads(value)

    async def wait_for(self, expression: str, wait: float = 30.0) -> Any:
        """Until the expression is truthy; its value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {expression}")
            await asyncio.sleep(0.1)

    def check(self) -> None:
        assert self.foreign_requests == [], f"requests to non-local hosts: {self.foreign_requests}"
        assert self.console_errors == [], f"console errors: {self.console_errors}"


def _start_firefox(profile: str, port: int) -> subprocess.Popen[str]:
    """Firefox on a fresh profile, once it says where WebDriver BiDi listens."""
    with open(os.path.join(profile, "user.js"), "w") as prefs:
        prefs.write(_PREFS)
    process = subprocess.Popen(
        [FIREFOX, "--headless", "--no-remote", "--profile", profile, "--remote-debugging-port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if "WebDriver BiDi listening" in line:
            return process
    process.wait()
    raise RuntimeError("Firefox exited before WebDriver BiDi was listening")


def _stop(process: subprocess.Popen[str]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


@contextlib.asynccontextmanager
async def firefox_page(url: str, width: int = 1280, height: int = 900) -> AsyncIterator[FirefoxPage]:
    """Headless Firefox (a fresh profile) showing `url`."""
    require_firefox()
    port = _free_port()
    with tempfile.TemporaryDirectory() as profile:
        process = await asyncio.to_thread(_start_firefox, profile, port)
        try:
            async with websockets.connect(f"ws://127.0.0.1:{port}/session", max_size=None) as ws:
                page = FirefoxPage(ws, "")
                await page.command("session.new", capabilities={})
                tree = await page.command("browsingContext.getTree")
                page.context = tree["contexts"][0]["context"]
                await page.command(
                    "session.subscribe", events=["log.entryAdded", "network.beforeRequestSent"]
                )
                viewport = {"width": width, "height": height}
                await page.command("browsingContext.setViewport", context=page.context, viewport=viewport)
                await page.command("browsingContext.navigate", context=page.context, url=url, wait="complete")
                yield page
        finally:
            await asyncio.to_thread(_stop, process)
