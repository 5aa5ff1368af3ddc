"""The local TTS engine (piper voice → 16 kHz s16le mono) through the engine Protocol."""

from __future__ import annotations

import pytest
from local_support import INSTALL_HINT, MELOTTS, require

pytest.importorskip("piper", reason=INSTALL_HINT)
np = pytest.importorskip("numpy", reason=INSTALL_HINT)
pytest.importorskip("av", reason=INSTALL_HINT)
require("tts")

from stackflow_openai.emulator.engines.local import LocalEngine, LocalEngineError  # noqa: E402
from stackflow_openai.emulator.engines.local_tts import resample_s16_mono  # noqa: E402

pytestmark = pytest.mark.local

SENTENCE = "Hello world, this is a test of the speech synthesizer."


def seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / 16000


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2)))


async def test_synthesizes_audible_16khz_speech_of_plausible_length(local_engine: LocalEngine) -> None:
    tts = await local_engine.open_tts(MELOTTS, None)
    assert tts.sample_rate == 16000
    pcm = await tts.synthesize(SENTENCE)
    assert len(pcm) % 2 == 0
    # ten words at a normal speaking rate: about 3 s (measured 3.4 s with the bundled voice)
    assert 1.5 < seconds(pcm) < 7.0
    assert rms(pcm) > 500  # clearly not silence (full scale is 32767)


async def test_speed_changes_the_duration(local_engine: LocalEngine) -> None:
    tts = await local_engine.open_tts(MELOTTS, None)
    normal = seconds(await tts.synthesize(SENTENCE))
    fast = seconds(await tts.synthesize(SENTENCE, speed=2.0))
    slow = seconds(await tts.synthesize(SENTENCE, speed=0.5))
    assert fast < 0.75 * normal
    assert slow > 1.4 * normal


async def test_empty_text_gives_no_audio_and_bad_speed_is_refused(local_engine: LocalEngine) -> None:
    tts = await local_engine.open_tts(MELOTTS, None)
    assert await tts.synthesize("") == b""
    assert await tts.synthesize("   ") == b""
    with pytest.raises(LocalEngineError, match="speed"):
        await tts.synthesize(SENTENCE, speed=0)


async def test_unknown_voice_name_uses_the_default_speaker(local_engine: LocalEngine) -> None:
    tts = await local_engine.open_tts(MELOTTS, "no-such-speaker")
    assert rms(await tts.synthesize("Good morning.")) > 500


def test_resampler_keeps_duration_and_pitch() -> None:
    rate_in, tone = 22050, 440.0
    t = np.arange(rate_in) / rate_in  # one second
    pcm = (np.sin(2 * np.pi * tone * t) * 12000).astype("<i2").tobytes()
    out = np.frombuffer(resample_s16_mono(pcm, rate_in, 16000), dtype="<i2").astype(np.float64)
    assert abs(len(out) - 16000) <= 32
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.argmax(spectrum) * 16000 / len(out)
    assert abs(peak_hz - tone) < 5
    assert resample_s16_mono(pcm, 16000, 16000) == pcm
