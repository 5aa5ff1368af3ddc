"""The device-side chain whisper → llm → melotts on the emulator's real CPU engines."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import pytest
from local_support import MELOTTS, require

for kind in ("llm", "tts", "asr"):
    require(kind)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the raw-socket helpers
from emulator_helpers import SETUPS, RawClient, b64, client_for, started_emulator, wav_bytes  # noqa: E402
from stackflow_openai.emulator.engines.local import LocalEngine  # noqa: E402

pytestmark = pytest.mark.local
QUESTION = "What is the capital of France?"


async def setup(client: RawClient, unit: str, **overrides: object) -> str:
    reply = await client.call(unit, "setup", f"{unit}.setup", {**SETUPS[unit], **overrides}, wait=120)
    assert reply["error"]["code"] == 0, reply
    return str(reply["work_id"])


async def test_spoken_question_comes_back_as_spoken_answer(local_engine: LocalEngine) -> None:
    question = await (await local_engine.open_tts(MELOTTS, None)).synthesize(QUESTION)
    async with (
        started_emulator(engine=local_engine) as emu,
        client_for(emu) as mic,
        client_for(emu) as chat,
        client_for(emu) as speaker,
    ):
        whisper = await setup(mic, "whisper")
        llm = await setup(chat, "llm", input=whisper, max_token_len=256)
        await setup(speaker, "melotts", input=llm)
        await mic.send(whisper, "inference", "whisper.wav.base64", b64(wav_bytes(question)))
        heard = (await mic.recv(wait=60))["data"]
        assert {"capital", "france"} <= set(re.findall(r"[a-z]+", heard.lower()))
        answer = "".join(m["data"]["delta"] for m in await chat.stream(wait=120))
        assert "paris" in answer.lower()
        audio = await speaker.stream(wait=120)
        pcm = b"".join(base64.b64decode(m["data"]["delta"]) for m in audio)
        assert len(pcm) / 2 / 16000 > 0.5  # speech, not an empty end message only
        assert audio[-1]["data"]["finish"] is True
