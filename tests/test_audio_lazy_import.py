"""numpy and PyAV (~28 MiB of RSS) load on the first audio request, not when the gateway starts; httpx
(~100 ms to import) on the first image URL fetch.

Checked in fresh processes, so what other tests imported cannot hide an eager import: a device emulator
(scripted engine) in one, and in the other a gateway built as `stackflow-openai serve --device` builds
it, which reports its own `sys.modules` as it goes.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

HEAVY = ["av", "numpy"]

# Runs in the gateway's process: settings from the command line, the app, uvicorn, then requests.
GATEWAY_SCRIPT = """
import argparse, asyncio, json, sys

import httpx
import uvicorn

from stackflow_openai.app import create_app
from stackflow_openai.backends.registry import GatewayRegistry
from stackflow_openai.serve import build_settings, http_settings

HEAVY = ("av", "numpy")


def heavy():
    return [name for name in HEAVY if name in sys.modules]


async def main(device):
    report = {}
    settings = build_settings(argparse.Namespace(device=[device], host="127.0.0.1", port=0))
    app = create_app(GatewayRegistry(settings), http_settings(settings))
    report["built"] = heavy()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    server.install_signal_handlers = lambda: None
    task = asyncio.ensure_future(server.serve())
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    report["started"] = heavy()
    port = server.servers[0].sockets[0].getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1", timeout=60) as client:
        chat = await client.post(
            "/chat/completions",
            json={"model": "qwen2.5-0.5B-p256-ax630c", "messages": [{"role": "user", "content": "hi"}]},
        )
        report["chat"] = [chat.status_code, heavy()]
        speech = await client.post(
            "/audio/speech",
            json={"model": "melotts-en-us", "voice": "alloy", "input": "Hello there."},
        )
        report["speech"] = [speech.status_code, len(speech.content), heavy()]
    server.should_exit = True
    await task
    print(json.dumps(report), flush=True)


asyncio.run(main(sys.argv[1]))
"""


def emulator_port(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    for _ in range(20):
        if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", proc.stdout.readline()):
            return int(match.group(1))
    raise AssertionError("the emulator did not print its port")


def test_a_gateway_loads_numpy_and_pyav_only_when_audio_is_requested():
    emulator = subprocess.Popen(
        [sys.executable, "-m", "stackflow_openai", "emulator", "--port", "0", "--engine", "scripted"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        gateway = subprocess.run(
            [sys.executable, "-c", GATEWAY_SCRIPT, f"127.0.0.1:{emulator_port(emulator)}"],
            capture_output=True,
            text=True,
            timeout=90,
        )
    finally:
        emulator.send_signal(signal.SIGINT)
        try:
            emulator.wait(15)
        finally:
            if emulator.poll() is None:
                emulator.kill()
    assert gateway.returncode == 0, gateway.stderr
    report = json.loads(gateway.stdout.strip().splitlines()[-1])
    assert report["built"] == []
    assert report["started"] == []
    assert report["chat"] == [200, []]
    status, size, loaded = report["speech"]
    assert status == 200 and size > 0
    assert loaded == HEAVY  # the same process then serves audio: they were loaded on demand


LAZY_HTTPX_SCRIPT = """
import argparse, asyncio, json, sys

from stackflow_openai.app import create_app
from stackflow_openai.backends.registry import GatewayRegistry
from stackflow_openai.serve import build_settings, http_settings
from stackflow_openai.services.images import ImageLoader, ImagePolicy
from stackflow_openai.services.prompt import ImageRef

settings = build_settings(argparse.Namespace(device=["127.0.0.1:9"], host="127.0.0.1", port=0))
create_app(GatewayRegistry(settings), http_settings(settings))
report = {"built": "httpx" in sys.modules}


async def fetch():
    loader = ImageLoader(ImagePolicy(fetch_timeout=2))
    try:
        await loader.load(ImageRef("http://image.invalid/a.png", "messages[0].content[0].image_url"))
    except Exception as exc:  # .invalid never resolves: the 400 a client gets
        report["error"] = getattr(exc, "code", type(exc).__name__)
    finally:
        await loader.aclose()


asyncio.run(fetch())
report["fetched"] = "httpx" in sys.modules
print(json.dumps(report))
"""


def test_httpx_loads_with_the_first_image_url_fetch_not_at_start():
    """httpx (~100 ms to import) serves image URLs and openai_proxy models only: a gateway without either
    never loads it."""
    script = [sys.executable, "-c", LAZY_HTTPX_SCRIPT]
    run = subprocess.run(script, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report == {"built": False, "error": "image_fetch_failed", "fetched": True}
