"""Real-time factors of the gateway's audio paths, measured in one run (not a timed test).

    python benchmarks/audio_codecs.py [--seconds 60] [--repeat 3]

Speech: 60 s of speech-like 16 kHz PCM (a gliding voiced tone with syllable envelope and pauses),
delivered in 3 s "sentences" as the device does, through PcmConverter (16 → 24 kHz, and with speed 2.0)
and each format's StreamEncoder. Uploads: the same audio encoded beforehand in each input format, then
decoded + mixed to mono + resampled to 16 kHz by decode_to_pcm. Printed: milliseconds for the whole
clip and the speed as a multiple of real time (60 s done in 0.6 s = 100x). Best of --repeat runs.
Extra lines measure the mp3 encoder alone at LAME's algorithm qualities (-q 3 is FFmpeg's default,
the gateway uses -q 7: audio/encode.py), and uploads resampled frame by frame (what decode_to_pcm did
before it gathered frames into blocks) next to decode_to_pcm and the codec alone.
"""

from __future__ import annotations

import argparse
import io
import os
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


def mp3_lame_quality(pcm24: bytes, quality: str) -> int:
    """The mp3 encoder alone with LAME's `-q` set (FFmpeg's compression_level; audio/encode.py uses 7)."""
    sink = io.BytesIO()
    with av.open(sink, mode="w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=24_000, layout="mono")
        assert isinstance(stream, av.audio.stream.AudioStream)
        stream.codec_context.bit_rate = 64_000
        stream.codec_context.options = {"compression_level": quality}
        samples = np.frombuffer(pcm24, dtype=np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 24_000
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return len(sink.getvalue())


def speed(seconds: float, elapsed: float) -> str:
    return f"{elapsed * 1e3:>9.0f}{seconds / elapsed:>9.0f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    samples = to_s16(speech_like(args.seconds, RATE))
    pcm = samples.tobytes()
    ffmpeg = av.ffmpeg_version_info
    print(f"PyAV {av.__version__} (FFmpeg {ffmpeg}), {args.seconds:g} s of audio, best of {args.repeat}")
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print("\nspeech output (16 kHz PCM -> 24 kHz -> format, fed in 3 s sentences); ms for the whole clip")
    print(f"{'format':<10}{'bytes':>10}{'ms x1.0':>9}{'speed':>10}{'ms x2.0':>9}{'speed':>10}")
    for fmt in SPEECH_FORMATS:
        size = render(pcm, fmt, 1.0)
        normal = best_of(args.repeat, partial(render, pcm, fmt, 1.0))
        fast = best_of(args.repeat, partial(render, pcm, fmt, 2.0))
        print(f"{fmt:<10}{size:>10}{speed(args.seconds, normal)}{speed(args.seconds, fast)}")
    converter = PcmConverter(RATE, 24_000)
    pcm24 = converter.feed(pcm) + converter.finish()
    print("mp3 encode only (24 kHz mono, 64 kb/s) by LAME algorithm quality (-q; the gateway uses 7):")
    for quality in ("3", "5", "7"):
        elapsed = best_of(args.repeat, partial(mp3_lame_quality, pcm24, quality))
        print(f"  -q {quality:<5}{mp3_lame_quality(pcm24, quality):>10}{speed(args.seconds, elapsed)}")
    print("\nuploads (file -> decode -> mono -> 16 kHz s16le); ms for the whole clip")
    print(f"{'format':<10}{'bytes':>10}{'ms':>9}{'speed':>10}{'decode only':>13}{'per frame':>11}")
    for name, (container, codec, rate, channels) in INPUTS.items():
        data = encode_input(samples, container, codec, rate, channels)
        elapsed = best_of(args.repeat, partial(decode_to_pcm, data))
        decode_only = best_of(args.repeat, partial(decode_only_ms, data))
        per_frame = best_of(args.repeat, partial(resample_frame_by_frame, data))
        extra = f"{decode_only * 1e3:>10.0f} ms{per_frame * 1e3:>8.0f} ms"
        print(f"{name:<10}{len(data):>10}{speed(args.seconds, elapsed)}{extra}")
    print("(decode only: the codec alone; per frame: one resample call per codec frame, for comparison)")
    print("\ntargets: mp3 encode >= 100x real time; decode + resample of 60 s <= 150 ms")
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


def resample_frame_by_frame(data: bytes) -> bytes:
    """For comparison: decode_to_pcm before it gathered frames into blocks, one resample per frame."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    pieces: list[bytes] = []
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(audio=0):
            pieces += [out.to_ndarray().tobytes() for out in resampler.resample(frame)]
    pieces += [out.to_ndarray().tobytes() for out in resampler.resample(None)]
    return b"".join(pieces)


def decode_only_ms(data: bytes) -> int:
    """The codec's share: decode every frame, no mixing or resampling."""
    count = 0
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(audio=0):
            count += frame.samples
    return count


if __name__ == "__main__":
    main()
