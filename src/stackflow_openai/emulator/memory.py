"""How much CMM (NPU) memory an emulated model takes when loaded, in KiB.

Real descriptors carry `mode_param.cmm_size` for a few models only (CosyVoice2, the ctx LLMs,
InternVL3, Qwen3-VL): for those the device's own number is used. Everything else comes from this
emulator-side table, so that descriptors stay byte for byte the device's. The numbers:

- `qwen2.5-7B-Int4-*`: 4335 MB, measured on an AX650N (`axcl:benchmark/RESULTS.md`, Sipeed table).
- by parameter count, the heuristics of the old bridge (protocol §6): 0.5B 560460, 1B 1363148,
  1.5B 1782579; the others scaled from those by parameter count (0.6B, 1.7B, 3B, 4B, SmolVLM).
  Int4 builds are counted like the others: the table is an upper bound, not a measurement.
- melotts 59764 and whisper-tiny 289132 (protocol §6); whisper-base 548610 and whisper-small 1809000
  scaled from whisper-tiny by parameter count (74M, 244M against 39M); sense-voice (234M) 600000 and
  kokoro (82M) 210000 likewise; a board's kws 20000 (a few MB of NPU model).
- CPU-only models (sherpa-ncnn, sherpa-onnx, SummerTTS, silero-vad) use no CMM.
An unknown model counts as 0: a test catalogue should say `cmm_size` when memory matters to it.
"""

from __future__ import annotations

from stackflow_openai.stackflow.models import ModelDescriptor

__all__ = ["model_cmm_kib"]

_BY_PREFIX = (
    ("sherpa-", 0),
    ("single-speaker-", 0),
    ("silero-vad", 0),
    ("melotts", 59764),
    ("whisper-tiny", 289132),
    ("whisper-base", 548610),
    ("whisper-small", 1809000),
    ("sense-voice-", 600000),
    ("kokoro-", 210000),
    ("kws-", 20000),
)
# Checked in order: the first size token found in the name decides.
_BY_SIZE = (
    ("-7B-", 4439040),  # qwen2.5-7B-Int4's measured 4335 MB
    ("-4B-", 3635404),
    ("-3B-", 3565158),
    ("-2B-", 2726296),
    ("-1.7B-", 2020256),
    ("-1.5B-", 1782579),
    ("-1B-", 1363148),
    ("-0.6B-", 672552),
    ("-0.5B-", 560460),
    ("-500M-", 560460),
    ("-256M-", 287000),
)


def model_cmm_kib(model: ModelDescriptor) -> int:
    if model.cmm_size is not None:
        return model.cmm_size
    for prefix, kib in _BY_PREFIX:
        if model.mode.startswith(prefix):
            return kib
    for token, kib in _BY_SIZE:
        if token in model.mode:
            return kib
    return 0
