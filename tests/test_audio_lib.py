"""The audio library on real audio: decode, convert (speed + resample), encode, windows, subtitles."""

from __future__ import annotations

import io
import itertools
import math
import re

import av
import numpy as np
import pytest

from audio_fakes import FILE_FORMATS, decode_file, dominant_frequency, rms, to_s16, tone, tone_file
from stackflow_openai.audio import (
    SPEECH_FORMATS,
    AudioDecodeError,
    Cue,
    PcmConverter,
    WindowCutter,
    atempo_stages,
    decode_to_pcm,
    format_timestamp,
    open_encoder,
    split_windows,
    to_srt,
    to_vtt,
)
from stackflow_openai.audio.pcm import pcm_to_array


@pytest.mark.parametrize("speed", [0.25, 0.3, 0.5, 0.9, 1.0, 1.7, 2.0, 3.0, 4.0])
def test_atempo_stages_multiply_to_speed_and_stay_in_blending_range(speed: float) -> None:
    stages = atempo_stages(speed)
    assert math.isclose(math.prod(stages), speed, rel_tol=1e-9)
    assert all(0.5 <= s <= 2.0 for s in stages)
    assert len(stages) == (0 if speed == 1.0 else math.ceil(abs(math.log2(speed)) - 1e-9))


@pytest.mark.parametrize("speed", [0.2, 4.5, 0.0])
def test_atempo_stages_refuse_out_of_range(speed: float) -> None:
    with pytest.raises(ValueError):
        atempo_stages(speed)


@pytest.mark.parametrize("speed", [0.25, 0.5, 1.0, 2.0, 4.0])
def test_converter_changes_duration_not_pitch(speed: float) -> None:
    pcm = to_s16(tone(2.0, 300.0))
    converter = PcmConverter(16_000, 24_000, speed=speed)
    # Fed in uneven pieces (one splits a sample) as sentences would arrive.
    out = b"".join(converter.feed(pcm[i : i + 12_345]) for i in range(0, len(pcm), 12_345))
    out += converter.finish()
    samples = pcm_to_array(out).astype(np.float64) / 32768
    assert len(samples) / 24_000 == pytest.approx(2.0 / speed, rel=0.03)
    assert dominant_frequency(samples, 24_000) == pytest.approx(300.0, abs=6)


def test_converter_output_follows_input_without_waiting_for_the_end() -> None:
    converter = PcmConverter(16_000, 24_000, speed=2.0)
    first = converter.feed(to_s16(tone(1.0, 300.0)))
    # Only atempo's analysis window is held back (well under 0.2 s of the 0.5 s due).
    assert len(first) / 2 / 24_000 > 0.3
    converter.finish()
    with pytest.raises(RuntimeError):
        converter.feed(b"\0\0")


@pytest.mark.parametrize("fmt", SPEECH_FORMATS)
def test_encoders_round_trip_through_ffmpeg(fmt: str) -> None:
    encoder = open_encoder(fmt)
    pcm = to_s16(tone(1.0, 440.0, 24_000))
    pieces = [encoder.feed(pcm), encoder.feed(pcm), encoder.finish()]
    data = b"".join(pieces)
    assert pieces[0], "the first second must produce bytes before the stream ends"
    if fmt == "pcm":
        samples, rate = pcm_to_array(data).astype(np.float64) / 32768, 24_000
    else:
        samples, rate = decode_file(data)
    assert rate == (48_000 if fmt == "opus" else 24_000)
    # mp3 streamed without a Xing header keeps LAME's ~50 ms of encoder delay and padding.
    assert len(samples) / rate == pytest.approx(2.0, abs=0.08)
    assert rms(samples) > 0.2
    assert dominant_frequency(samples, rate) == pytest.approx(440.0, abs=5)


def test_wav_stream_header_declares_unknown_length() -> None:
    encoder = open_encoder("wav")
    head = encoder.feed(to_s16(tone(0.1, 440.0, 24_000)))
    assert head[:4] == b"RIFF" and head[4:8] == b"\xff\xff\xff\xff"
    assert head[36:40] == b"data" and head[40:44] == b"\xff\xff\xff\xff"
    assert int.from_bytes(head[24:28], "little") == 24_000
    assert encoder.content_type == "audio/wav"


def test_unknown_encoder_format() -> None:
    with pytest.raises(ValueError):
        open_encoder("ogg-vorbis")


@pytest.mark.parametrize("fmt", list(FILE_FORMATS))
def test_decode_any_input_format_to_16k_mono(fmt: str) -> None:
    pcm = decode_to_pcm(tone_file(fmt, 1.5, 500.0))
    samples = pcm_to_array(pcm).astype(np.float64) / 32768
    assert len(samples) / 16_000 == pytest.approx(1.5, abs=0.06)
    assert dominant_frequency(samples, 16_000) == pytest.approx(500.0, abs=5)
    assert rms(samples) > 0.1


@pytest.mark.parametrize(
    ("data", "code"),
    [(b"", "empty_file"), (b"this is not audio at all" * 50, "invalid_audio_file"), (bytes(1000), None)],
)
def test_decode_refuses_non_audio(data: bytes, code: str | None) -> None:
    with pytest.raises(AudioDecodeError) as info:
        decode_to_pcm(data)
    if code:
        assert info.value.code == code


def test_decode_follows_a_stream_that_changes_rate_and_channels_midway() -> None:
    # ADTS aac frames each carry their own rate and channel count, so files glued together (as a
    # recorder that switches settings produces) are one valid stream: all of it must come through.
    parts = []
    for rate, layout, freq in ((44_100, "stereo", 500.0), (22_050, "mono", 700.0)):
        buffer = io.BytesIO()
        with av.open(buffer, mode="w", format="adts") as container:
            stream = container.add_stream("aac", rate=rate, layout=layout)
            samples = np.frombuffer(to_s16(tone(1.0, freq, rate)), dtype="<i2")
            if layout == "stereo":
                samples = np.repeat(samples, 2)
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout=layout)
            frame.sample_rate = rate
            container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        parts.append(buffer.getvalue())
    samples = pcm_to_array(decode_to_pcm(b"".join(parts))).astype(np.float64) / 32768
    # Each part keeps the aac encoder's priming and padding (~70 ms).
    assert len(samples) / 16_000 == pytest.approx(2.0, abs=0.2)
    assert dominant_frequency(samples[2_000:14_000], 16_000) == pytest.approx(500.0, abs=5)
    assert dominant_frequency(samples[-14_000:-2_000], 16_000) == pytest.approx(700.0, abs=5)


def test_decode_enforces_max_seconds() -> None:
    with pytest.raises(AudioDecodeError) as info:
        decode_to_pcm(tone_file("wav", 3.0), max_seconds=1.0)
    assert info.value.code == "audio_too_long"


def test_windows_cut_at_the_quiet_point_and_cover_everything() -> None:
    rate = 16_000
    # 70 s of tone with a 0.3 s pause centred at 26.0 s and at 52.5 s.
    wave = tone(70.0, 200.0)
    for centre in (26.0, 52.5):
        wave[int((centre - 0.15) * rate) : int((centre + 0.15) * rate)] = 0.0
    windows = split_windows(to_s16(wave), max_seconds=28.0, search_seconds=4.0)
    assert [round(w.end, 1) for w in windows] == [26.0, 52.5, 70.0]
    assert windows[0].start == 0 and all(
        a.end_sample == b.start_sample for a, b in itertools.pairwise(windows)
    )
    assert all(w.duration <= 28.0 for w in windows)


def test_windows_cut_from_pieces_are_the_windows_of_the_whole() -> None:
    # The streaming cutter sees the audio in uneven pieces (one splits a sample) and must cut exactly
    # where split_windows cuts the whole recording, handing out each window's own bytes.
    wave = tone(95.0, 200.0) * (1.0 + np.sin(np.arange(95 * 16_000) / 9_000.0))
    for centre in (13.0, 26.0, 41.5, 70.0):
        wave[int((centre - 0.2) * 16_000) : int((centre + 0.2) * 16_000)] *= 0.01
    pcm = to_s16(wave / 2)
    whole = split_windows(pcm, max_seconds=28.0, search_seconds=4.0)
    cutter = WindowCutter(max_seconds=28.0, search_seconds=4.0)
    pieces, at = [], 0
    for size in itertools.cycle([32_001, 7, 100_000, 1]):
        if at >= len(pcm):
            break
        pieces += cutter.feed(pcm[at : at + size])
        at += size
    pieces += cutter.finish()
    assert [window for window, _ in pieces] == whole and len(whole) == 4
    assert all(data == window.slice(pcm) for window, data in pieces)


def test_windows_without_pauses_still_respect_the_limit() -> None:
    windows = split_windows(to_s16(tone(75.0, 200.0) + 0.01), max_seconds=28.0)
    assert len(windows) == 3
    assert all(w.duration <= 28.0 for w in windows)
    assert windows[-1].end == pytest.approx(75.0)


def test_short_audio_is_one_window() -> None:
    (window,) = split_windows(to_s16(tone(3.0, 200.0)))
    assert (window.start, window.end) == (0.0, 3.0)


def test_subtitle_formats() -> None:
    cues = [Cue(0.0, 2.5, "Hello there."), Cue(2.5, 3661.0456, "Second\n\nline"), Cue(4, 5, "  ")]
    srt = to_srt(cues)
    assert srt.startswith("1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n")
    blocks = srt.strip().split("\n\n")
    assert len(blocks) == 2
    assert blocks[1].splitlines() == ["2", "00:00:02,500 --> 01:01:01,046", "Second", "line"]
    vtt = to_vtt(cues)
    assert vtt.startswith("WEBVTT\n\n")
    assert re.findall(r"(\S+) --> (\S+)", vtt) == [
        ("00:00:00.000", "00:00:02.500"),
        ("00:00:02.500", "01:01:01.046"),
    ]
    assert format_timestamp(-1, decimal=",") == "00:00:00,000"
