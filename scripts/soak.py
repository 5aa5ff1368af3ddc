"""Soak test: many mixed requests through a real gateway process, then leak and memory checks.

    python scripts/soak.py [--requests 10000] [--concurrency 16] [--disconnects 0.1] [--seed 1]

The emulator (scripted engine, lightly paced so streams can be cut mid-way) runs in this process; the
gateway runs as `python -m stackflow_openai serve --device ...` in its own process, so its memory is
measured alone (VmRSS from /proc). Requests: chat (JSON and SSE), text completions, speech,
transcriptions, model listings and invalid requests, in random order from `--concurrency` workers;
a fraction of them are abandoned by the client mid-stream or before the answer.

Passes (exit code 0) when:
- every answer is what that request should get (2xx, or the expected 4xx for invalid ones; a 503 with
  Retry-After only if the pool queue overflowed), and every stream ends with [DONE];
- once the load stops, the device holds exactly as many instances as the gateway's pools report, and
  after a graceful gateway shutdown it holds none (nothing leaked);
- the gateway's RSS after the run is less than 10% above its RSS after the warm-up.
Every wait is bounded: each request has a timeout and the whole run has `--max-seconds`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import random
import re
import signal
import sys
import tempfile
import time
import wave
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from stackflow_openai.emulator import Emulator, ScriptedEngine, Timing

LLM = "qwen2.5-0.5B-p256-ax630c"
REQUEST_TIMEOUT = 60.0
RSS_GROWTH_LIMIT = 0.10
Outcome = str


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise LookupError("VmRSS")


def _wav(seconds: float, rate: int = 16000) -> bytes:
    frames = bytearray()
    for i in range(int(seconds * rate)):
        on = (i / rate) % 1.0 < 0.7  # tones with pauses: the scripted ASR hears words
        frames += int(8000 * math.sin(2 * math.pi * 220 * i / rate) if on else 0).to_bytes(
            2, "little", signed=True
        )
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(bytes(frames))
    return out.getvalue()


class Load:
    """The request mix. Each method sends one request and returns an outcome label."""

    def __init__(self, client: httpx.AsyncClient, rng: random.Random, disconnects: float) -> None:
        self.client = client
        self.rng = rng
        self.disconnects = disconnects
        self.wav = _wav(1.5)

    def words(self) -> str:
        return " ".join(self.rng.choice(["alpha", "beta", "gamma", "delta", "日本", "😀"]) for _ in range(6))

    async def chat(self) -> Outcome:
        body = {"model": LLM, "messages": [{"role": "user", "content": self.words()}]}
        if self.rng.random() < 0.3:
            body["max_tokens"] = self.rng.randint(1, 8)
        if self.rng.random() < self.disconnects:
            try:  # the client gives up before the answer: the request is cancelled on the gateway
                await asyncio.wait_for(self.client.post("/chat/completions", json=body), 0.002)
            except TimeoutError:
                return "chat abandoned"
        r = await self.client.post("/chat/completions", json=body)
        return self._json(r, "chat", lambda b: b["choices"][0]["message"]["content"])

    async def chat_stream(self) -> Outcome:
        body = {"model": LLM, "stream": True, "messages": [{"role": "user", "content": self.words() * 3}]}
        leave = self.rng.random() < self.disconnects
        async with self.client.stream("POST", "/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return self._status(r, "chat stream")
            done = False
            async for line in r.aiter_lines():
                if leave and line.startswith("data: {"):
                    return "chat stream abandoned"  # closes the connection mid-stream
                if line.startswith('data: {"error"'):
                    return f"chat stream error event {line[:200]}"
                done = done or line == "data: [DONE]"
        return "ok" if done else "chat stream without [DONE]"

    async def completion(self) -> Outcome:
        body = {"model": LLM, "prompt": [self.words(), self.words()], "max_tokens": 20}
        r = await self.client.post("/completions", json=body)
        return self._json(r, "completion", lambda b: b["choices"][1]["text"])

    async def speech(self) -> Outcome:
        fmt = self.rng.choice(["mp3", "pcm", "wav", "opus"])
        body = {
            "model": "tts-1",
            "voice": "alloy",
            "input": "Hello there. How are you?",
            "response_format": fmt,
        }
        leave = self.rng.random() < self.disconnects
        async with self.client.stream("POST", "/audio/speech", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return self._status(r, "speech")
            size = 0
            async for chunk in r.aiter_bytes():
                size += len(chunk)
                if leave:
                    return "speech abandoned"
        return "ok" if size > 1000 else f"speech too short ({size} bytes)"

    async def transcription(self) -> Outcome:
        files = {"file": ("a.wav", self.wav, "audio/wav")}
        r = await self.client.post("/audio/transcriptions", data={"model": "whisper-1"}, files=files)
        return self._json(r, "transcription", lambda b: b["text"])

    async def models(self) -> Outcome:
        r = await self.client.get("/models")
        return self._json(r, "models", lambda b: b["data"][0]["id"])

    async def invalid(self) -> Outcome:
        body, expected = self.rng.choice(
            [
                ({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, 404),
                ({"model": LLM, "messages": []}, 400),
                ({"model": LLM, "messages": [{"role": "user", "content": "x"}], "n": 99}, 400),
                ({"model": LLM, "messages": [{"role": "user", "content": "word " * 400}]}, 400),
            ]
        )
        r = await self.client.post("/chat/completions", json=body)
        ok = r.status_code == expected and set(r.json().get("error", {})) == {
            "message",
            "type",
            "param",
            "code",
        }
        return "ok" if ok else f"invalid request got {r.status_code} {r.text[:200]}"

    def _status(self, r: httpx.Response, what: str) -> Outcome:
        if r.status_code == 503 and "retry-after" in r.headers:
            return f"{what}: busy (503)"
        return f"{what}: HTTP {r.status_code} {r.text[:200]}"

    def _json(self, r: httpx.Response, what: str, pick: Callable[[dict], object]) -> Outcome:
        if r.status_code != 200:
            return self._status(r, what)
        try:
            pick(r.json())
        except (KeyError, IndexError, ValueError) as exc:
            return f"{what}: malformed answer {exc!r}"
        return "ok"

    def pick(self) -> Callable[[], Awaitable[Outcome]]:
        kinds = [
            (self.chat, 30),
            (self.chat_stream, 30),
            (self.completion, 10),
            (self.speech, 8),
            (self.transcription, 6),
            (self.models, 6),
            (self.invalid, 10),
        ]
        return self.rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]


async def run_load(load: Load, requests: int, concurrency: int, deadline: float) -> Counter[Outcome]:
    outcomes: Counter[Outcome] = Counter()
    remaining = iter(range(requests))

    async def worker() -> None:
        for _ in remaining:
            if time.monotonic() > deadline:
                outcomes["not run: --max-seconds reached"] += 1
                continue
            kind = load.pick()
            try:
                outcomes[await asyncio.wait_for(kind(), REQUEST_TIMEOUT)] += 1
            except TimeoutError:
                outcomes[f"{kind.__name__}: no answer within {REQUEST_TIMEOUT:g} s"] += 1
            except httpx.HTTPError as exc:
                outcomes[f"{kind.__name__}: {type(exc).__name__} {exc}"] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


async def start_gateway(device_port: int, config: Path) -> tuple[asyncio.subprocess.Process, str]:
    """Start `stackflow-openai serve` and wait until it listens and has found the device's models.

    The emulator runs on this process's event loop, so nothing here may block it."""
    command = [sys.executable, "-m", "stackflow_openai", "--log-level", "warning", "serve"]
    command += ["--config", str(config), "--device", f"127.0.0.1:{device_port}", "--port", "0"]
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    base_url = ""
    while not base_url and time.monotonic() < deadline:
        line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
        match = re.search(r"(http://[\d.]+:\d+/v1)", line)
        base_url = match.group(1) if match else ""
        if not line:
            break
    async with httpx.AsyncClient(timeout=5) as client:
        while base_url and time.monotonic() < deadline:
            ready = await client.get(base_url.removesuffix("/v1") + "/ready")
            if ready.status_code == 200 and ready.json().get("models"):
                return process, base_url
            await asyncio.sleep(0.1)
    process.kill()
    raise SystemExit("the gateway did not start, or never saw the device's models")


async def pool_count(client: httpx.AsyncClient, what: str) -> int | None:
    """`instances` or `busy` units in the gateway's pools, from /ready (None if it does not say)."""
    r = await client.get(str(client.base_url).rstrip("/").removesuffix("/v1") + "/ready")
    try:
        return sum(d["units"][what] for d in r.json()["devices"])
    except (KeyError, TypeError, ValueError):
        return None


async def soak(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    emulator = Emulator(engine=ScriptedEngine(timing=Timing(tokens_per_second=2000)), hwinfo_delay=0.05)
    await emulator.start("127.0.0.1", 0)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "soak.yaml"
        config.write_text(f"pool:\n  queue_limit: {max(64, args.concurrency * 2)}\n  queue_timeout: 30\n")
        gateway, base_url = await start_gateway(emulator.port, config)
        failed: list[str] = []
        try:
            limits = httpx.Limits(max_connections=args.concurrency * 2)
            async with httpx.AsyncClient(base_url=base_url, timeout=REQUEST_TIMEOUT, limits=limits) as client:
                load = Load(client, rng, args.disconnects)
                deadline = time.monotonic() + args.max_seconds
                warm = await run_load(load, max(50, args.concurrency * 4), args.concurrency, deadline)
                failed += [f"warm-up: {k} ×{n}" for k, n in warm.items() if not _expected(k)]
                await asyncio.sleep(0.5)
                rss_start = _rss_kib(gateway.pid)
                started = time.monotonic()
                outcomes = await run_load(load, args.requests, args.concurrency, deadline)
                elapsed = time.monotonic() - started
                await asyncio.sleep(1.0)  # let abandoned requests finish their clean-up
                rss_end = _rss_kib(gateway.pid)
                print(f"{args.requests} requests in {elapsed:.1f} s ({args.requests / elapsed:.0f}/s), "
                      f"concurrency {args.concurrency}, seed {args.seed}")  # fmt: skip
                for outcome, count in outcomes.most_common():
                    print(f"  {count:>6}  {outcome}")
                failed += [f"{k} ×{n}" for k, n in outcomes.items() if not _expected(k)]
                growth = (rss_end - rss_start) / rss_start
                print(f"gateway RSS {rss_start / 1024:.1f} MiB after warm-up, {rss_end / 1024:.1f} MiB after "
                      f"the run ({growth:+.1%}; limit +{RSS_GROWTH_LIMIT:.0%})")  # fmt: skip
                if growth >= RSS_GROWTH_LIMIT:
                    failed.append(f"RSS grew {growth:.1%}")
                # Nobody is asking any more: a unit still leased now was never given back (its place
                # is lost to every later request, which then waits for the queue deadline).
                busy = await pool_count(client, "busy")
                for _ in range(50):
                    if not busy:
                        break
                    await asyncio.sleep(0.1)
                    busy = await pool_count(client, "busy")
                print(f"units still leased after the run: {busy if busy is not None else '?'}")
                if busy:
                    failed.append(f"{busy} unit lease(s) never returned to the pool")
                live = len(emulator.live_instances())
                pooled = await pool_count(client, "instances")
                print(f"device instances {live}, gateway pools {pooled if pooled is not None else '?'}")
                if pooled is not None and live != pooled:
                    failed.append(f"the device holds {live} instances, the gateway's pools {pooled}")
        finally:
            gateway.send_signal(signal.SIGINT)  # graceful: the gateway exits every unit it set up
            try:  # the emulator on this event loop answers those exits meanwhile
                await asyncio.wait_for(gateway.wait(), 30)
            except TimeoutError:
                gateway.kill()
                await gateway.wait()
                failed.append("the gateway did not stop within 30 s")
        left = emulator.live_instances()
        print(f"device instances after the gateway stopped: {len(left)}")
        if left:
            failed.append(f"leaked instances: {[i['work_id'] for i in left]}")
    await emulator.stop()
    if failed:
        print("FAIL\n  " + "\n  ".join(failed))
        return 1
    print("PASS")
    return 0


def _expected(outcome: Outcome) -> bool:
    # A 503 with Retry-After is the pool's honest answer when its queue overflows or a wait times out.
    return outcome == "ok" or outcome.endswith(("abandoned", ": busy (503)"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--disconnects", type=float, default=0.1, help="fraction of requests abandoned")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=1800, help="stop sending after this long")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
