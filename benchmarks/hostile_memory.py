"""Peak and kept memory of the gateway per hostile request (issue #13, items 1-2).

    python benchmarks/hostile_memory.py [--only NAME ...]
    PYTHONPATH=/path/to/older/src python benchmarks/hostile_memory.py   # the same, for another version

Emulator and gateway each run in their own process on 127.0.0.1 (benchmarks/_servers.py: the gateway as
`stackflow-openai serve` builds it). Before each request the gateway's peak RSS (VmHWM) is reset
through /proc/PID/clear_refs, so each line is that request's alone: the peak over the RSS before it,
and what the gateway still holds 2 s after the answer (RSS after - RSS before).

The inputs are small files that cost a lot: FLACs of digital silence (tests/hostile_inputs.py) and
one-colour images of many pixels, sent as a user would (multipart upload, chat with data URLs).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from _bench import machine_info, rss_mib, server

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hostile_inputs import image_bomb, silent_flac

VLM = "internvl2.5-1B-364-ax630c"
Request = Callable[[httpx.AsyncClient], Awaitable[str]]


def transcription(seconds: float) -> Request:
    data = silent_flac(seconds)

    async def send(http: httpx.AsyncClient) -> str:
        reply = await http.post(
            "/v1/audio/transcriptions", files={"file": ("a.flac", data)}, data={"model": "whisper-1"}
        )
        code = reply.json().get("error", {}).get("code", "") if reply.status_code != 200 else ""
        return f"{len(data) / 1e6:.1f} MB file: HTTP {reply.status_code} {code}".rstrip()

    return send


def chat_images(width: int, height: int, count: int, mode: str = "RGB") -> Request:
    url = "data:image/png;base64," + base64.b64encode(image_bomb(width, height, mode)).decode()
    body = {
        "model": VLM,
        "max_tokens": 8,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is it?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
    }

    async def send(http: httpx.AsyncClient) -> str:
        replies = await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(count)))
        statuses = sorted({r.status_code for r in replies})
        codes = sorted({r.json()["error"]["code"] for r in replies if r.status_code != 200})
        return f"{len(url) * 3 // 4 / 1e3:.0f} KB each: HTTP {statuses} {' '.join(codes)}".rstrip()

    return send


# A small ordinary request of each kind, sent first: the first one loads what every later one uses
# (PyAV and numpy, Pillow, the VLM's tokenizer), which is not the hostile request's cost.
WARM_UP = {"flac": lambda: transcription(5), "png": lambda: chat_images(64, 48, 1)}
# name → (what it is, and what the issue measured; the request, made when the case runs)
CASES: dict[str, tuple[str, Callable[[], Request]]] = {
    "flac-6h": ("6 h of FLAC silence (issue: 1.49 GB)", lambda: transcription(6 * 3600)),
    "flac-115min": ("1 h 55 min of FLAC silence (under the 2 h limit)", lambda: transcription(115 * 60)),
    "png-bomb": ("a 6300x6300 RGBA PNG (issue: ~645 MB)", lambda: chat_images(6300, 6300, 1, "RGBA")),
    "png-bomb-x8": ("8 of them at once (issue: 3.64 GB peak)", lambda: chat_images(6300, 6300, 8, "RGBA")),
    "png-29mp": ("a 5400x5400 PNG (29 MP, admitted)", lambda: chat_images(5400, 5400, 1)),
    "png-29mp-x8": ("8 of them at once", lambda: chat_images(5400, 5400, 8)),
}


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def measure(port: int, pid: int, send: Request) -> tuple[float, float, float, str]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
        await asyncio.sleep(0.5)
        before = rss_mib(pid)
        reset_peak(pid)
        started = time.perf_counter()
        outcome = await send(http)
        took = time.perf_counter() - started
        peak = rss_mib(pid, peak=True)
        await asyncio.sleep(2.0)
        return peak - before, rss_mib(pid) - before, took, outcome


async def run(names: list[str]) -> None:
    print(machine_info())
    print(f"{'request':<52}{'peak +MiB':>10}{'kept +MiB':>10}{'seconds':>9}  outcome")
    with server("emulator") as emu:
        for name in names:
            title, make = CASES[name]
            send = make()
            # A fresh gateway per case: what one case leaves behind does not hide in the next one's figures.
            with server("gateway", "--device", f"127.0.0.1:{emu.port}") as gw:
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.port}", timeout=60) as http:
                    await http.get("/v1/models")  # the catalogue is ready
                    await WARM_UP[name.split("-")[0]]()(http)
                peak, kept, took, outcome = await measure(gw.port, gw.pid, send)
            print(f"{title:<52}{peak:>10.0f}{kept:>10.0f}{took:>9.1f}  {outcome}", flush=True)


# --trim: does giving freed memory back (malloc_trim after a large decode) matter? The same 8 decodes of
# a 29 MP PNG (4 at once) in a fresh process, with and without it; RSS measured 2 s after the last.
_TRIM_CHILD = """
import asyncio, base64, sys, time
sys.path.insert(0, sys.argv[2])
from hostile_inputs import image_bomb, memory_mib
from stackflow_openai.services import image_decode
from stackflow_openai.services.images import ImageLoader, ImagePolicy
from stackflow_openai.services.prompt import ImageRef

if sys.argv[1] == "off":
    image_decode._TRIM = None
async def main():
    url = "data:image/png;base64," + base64.b64encode(image_bomb(5400, 5400)).decode()
    loader = ImageLoader(ImagePolicy(decode_slots=4))
    await loader.load(ImageRef("data:image/png;base64," + base64.b64encode(image_bomb(64, 48)).decode(), "x"))
    before = memory_mib()["rss"]
    await asyncio.gather(*(loader.load(ImageRef(url, "x")) for _ in range(8)))
    peak = memory_mib()["hwm"]
    time.sleep(2)
    kept = memory_mib()["rss"] - before
    print(f"malloc_trim {sys.argv[1]:<4}  peak +{peak - before:5.0f} MiB   kept +{kept:5.0f} MiB")
asyncio.run(main())
"""


def trim_experiment() -> None:
    import subprocess

    tests = str(Path(__file__).resolve().parents[1] / "tests")
    for setting in ("on", "off"):
        subprocess.run([sys.executable, "-c", _TRIM_CHILD, setting, tests], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="case names: " + ", ".join(CASES))
    parser.add_argument("--trim", action="store_true", help="only the malloc_trim experiment")
    args = parser.parse_args()
    if args.trim:
        trim_experiment()
        return
    names = args.only or list(CASES)
    unknown = set(names) - set(CASES)
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}; known: {', '.join(CASES)}")
    asyncio.run(run(names))


if __name__ == "__main__":
    main()
