"""What each way of driving a speech unit costs, measured in one run (not a timed test).

    python benchmarks/speech_drivers.py [--repeat 3]

The emulator with device-like synthesis time (10 ms per character, `Timing.realistic`) and no setup
delay plays each unit generation; the gateway's speech backend speaks a text of eight segments through:

- tts 1.7 in its stream format (one inference, every segment, then one empty end),
- tts 1.6 in its non-stream format (one inference, segments counted),
- tts of unknown version, one inference per segment (the way that works on both),
- melotts (stream, text closed by a breakpoint), and CosyVoice2 (one utterance, chunked).

Printed: time to the first audio and to the end (best of --repeat), and each relative to tts 1.7's stream.
A warm unit is used (the setup is done once before timing), so the figures are the drivers' own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from stackflow_openai.backends.stackflow_speech import SpeechVoice, StackFlowSpeechBackend, tts_segments
from stackflow_openai.emulator import Emulator, ScriptedEngine, Timing
from stackflow_openai.stackflow.client import DeviceClient
from stackflow_openai.stackflow.pool import DevicePool

TEXT = (
    "Good morning, this is the gateway. The weather is fine today. "
    "Trains run on time, mostly. Lunch is at noon. See you soon!"
)


async def measure(
    board: str, units: str, model: str, *, known_version: bool, repeat: int
) -> tuple[float, float]:
    engine = ScriptedEngine(Timing(synthesis_seconds_per_char=0.01))
    emulator = Emulator(engine=engine, board=board, units=units, hwinfo_delay=0.05)
    await emulator.start("127.0.0.1", 0)
    try:
        async with DeviceClient("127.0.0.1", emulator.port) as client:
            if known_version:
                await client.version2()
            pool = DevicePool(client)
            descriptor = next(d for d in await client.lsmode() if d.mode == model)
            backend = StackFlowSpeechBackend(pool, {"v": SpeechVoice(descriptor)}, idle_timeout=30)
            best_first, best_total = float("inf"), float("inf")
            for attempt in range(repeat + 1):  # the first run sets the unit up: not timed
                started = time.perf_counter()
                first = 0.0
                async for _ in backend.synthesize(TEXT, voice="v"):
                    first = first or time.perf_counter() - started
                total = time.perf_counter() - started
                if attempt:
                    best_first, best_total = min(best_first, first), min(best_total, total)
            await pool.close()
            return best_first, best_total
    finally:
        await emulator.stop()


async def main(repeat: int) -> None:
    cases = [
        ("tts 1.7, stream", "ax630c", "dev", "single-speaker-english-fast", True),
        ("tts 1.6, counted", "ax630c", "main", "single-speaker-english-fast", True),
        ("tts, version unknown (1.7)", "ax630c", "dev", "single-speaker-english-fast", False),
        ("tts, version unknown (1.6)", "ax630c", "main", "single-speaker-english-fast", False),
        ("melotts 1.11 (ax650, 48 kHz)", "ax650", "dev", "melotts-en-us-ax650", True),
        ("CosyVoice2 (ax650)", "ax650", "dev", "CosyVoice2-0.5B-ax650", True),
    ]
    results = {name: await measure(b, u, m, known_version=k, repeat=repeat) for name, b, u, m, k in cases}
    base_first, base_total = results["tts 1.7, stream"]
    segments = len(tts_segments(TEXT))
    print(
        f"text: {len(TEXT)} characters, {segments} segments, 10 ms synthesis per character; best of {repeat}"
    )
    print(f"{'driver':32} {'first audio':>12} {'total':>10} {'first/1.7':>10} {'total/1.7':>10}")
    for name, (first, total) in results.items():
        print(f"{name:32} {first * 1000:9.0f} ms {total * 1000:7.0f} ms {first / base_first:9.2f}x "
              f"{total / base_total:9.2f}x")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    asyncio.run(main(parser.parse_args().repeat))
