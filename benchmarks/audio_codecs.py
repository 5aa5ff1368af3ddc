"""Real-time factors of the gateway's audio paths, measured in one run (not a timed test).

    python benchmarks/audio_codecs.py [--seconds 60] [--repeat 3]

Speech: 60 s of speech-like 16 kHz PCM (a gliding voiced tone with syllable envelope and pauses),
delivered in 3 s "sentences" as the device does, through PcmConverter (16 → 24 kHz, and with speed 2.0)
and each format's StreamEncoder. Uploads: the same audio encoded beforehand in each input format, then
decoded + mixed to mono + resampled to 16 kHz by decode_to_pcm. RTF = processing time / audio duration
(0.01 means 100x faster than real time). Best of --repeat runs.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from functools import partial

import av
import av.audio.stream
import numpy as np

from stackflow_openai.audio import SPEECH_FORMATS, PcmConverter, decode_to_pcm, open_encoder

RATE = 16_000
INPUTS = {  # name → (container, codec, rate, channels)
    "wav": ("wav", "pcm_s16le", 44_100, 2),
    "mp3": ("mp3", "libmp3lame", 44_100, 2),
    "m4a": ("ipod", "aac", 44_100, 2),
    "ogg/opus": ("ogg", "libopus", 48_000, 2),
    "webm": ("webm", "libopus", 48_000, 2),
    "flac": ("flac", "flac", 44_100, 2),
}


def speech_like(seconds: float, rate: int) -> np.ndarray:
    """Voiced tone gliding 110–210 Hz with harmonics, 4 Hz syllables, a pause every 3 s (float)."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = 160 + 50 * np.sin(2 * np.pi * 0.3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    wave = np.sum([np.sin(k * phase) / k for k in range(1, 6)], axis=0)
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 4 * t)) * ((t % 3.0) < 2.6)
    noise = 0.002 * np.random.default_rng(0).standard_normal(len(t))
    return np.asarray(0.25 * wave * envelope + noise, dtype=np.float64)


def to_s16(wave: np.ndarray) -> np.ndarray:
    samples: np.ndarray = (np.clip(wave, -1, 1) * 32767).astype(np.int16)
    return samples


def best_of(repeat: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def render(pcm: bytes, fmt: str, speed: float) -> int:
    converter, encoder = PcmConverter(RATE, 24_000, speed=speed), open_encoder(fmt)
    size, piece = 0, 3 * RATE * 2
    for start in range(0, len(pcm), piece):
        size += len(encoder.feed(converter.feed(pcm[start : start + piece])))
    return size + len(encoder.feed(converter.finish())) + len(encoder.finish())


def encode_input(samples: np.ndarray, container: str, codec: str, rate: int, channels: int) -> bytes:
    resampler = av.AudioResampler(format="s16", layout="stereo" if channels == 2 else "mono", rate=rate)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = RATE
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="stereo" if channels == 2 else "mono")
        assert isinstance(stream, av.audio.stream.AudioStream)
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    samples = to_s16(speech_like(args.seconds, RATE))
    pcm = samples.tobytes()
    print(f"PyAV {av.__version__}, {args.seconds:g} s of audio, best of {args.repeat}")
    print("\nspeech output (16 kHz PCM -> 24 kHz -> format, fed in 3 s sentences)")
    print(f"{'format':<10}{'bytes':>10}{'RTF x1.0':>12}{'RTF x2.0':>12}")
    for fmt in SPEECH_FORMATS:
        size = render(pcm, fmt, 1.0)
        normal = best_of(args.repeat, partial(render, pcm, fmt, 1.0)) / args.seconds
        fast = best_of(args.repeat, partial(render, pcm, fmt, 2.0)) / args.seconds
        print(f"{fmt:<10}{size:>10}{normal:>12.4f}{fast:>12.4f}")
    print("\nuploads (file -> decode -> mono -> 16 kHz s16le)")
    print(f"{'format':<10}{'bytes':>10}{'RTF':>12}")
    for name, (container, codec, rate, channels) in INPUTS.items():
        data = encode_input(samples, container, codec, rate, channels)
        elapsed = best_of(args.repeat, partial(decode_to_pcm, data))
        print(f"{name:<10}{len(data):>10}{elapsed / args.seconds:>12.4f}")


if __name__ == "__main__":
    main()
