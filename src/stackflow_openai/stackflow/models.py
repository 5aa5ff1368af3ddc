"""Typed model descriptors from `sys.lsmode`, with the unit and prefill window derived (protocol §3, §6)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CmmInfo", "ModelDescriptor", "TaskInfo", "unit_for_model"]

# A descriptor's `type` says what kind of model it is (llm, vlm, tts, asr, kws, vad, cv), not which unit
# runs it: within a type, the name prefixes the units themselves test pick the unit (protocol §3;
# main_asr/main_tts `parse_config`). A `type` outside these keeps its own name (kws, vad, cv), so that
# a keyword spotter named `sherpa-onnx-kws-*` is never taken for an asr model.
_UNITS_BY_TYPE: dict[str, tuple[tuple[str, str], ...]] = {
    "tts": (("melotts-", "melotts"), ("melotts_", "melotts"), ("CosyVoice2-", "cosy_voice")),
    "asr": (("whisper-", "whisper"),),
    "cv": (("depth-anything", "depth_anything"), ("yolo", "yolo")),
}
# Only for descriptors without a `type` (hand-written test catalogues): the name alone.
_UNIT_PREFIXES = (
    ("whisper-", "whisper"),
    ("sherpa-onnx-kws-", "kws"),
    ("sherpa-", "asr"),
    ("sense-voice-", "asr"),
    ("melotts-", "melotts"),
    ("melotts_", "melotts"),
    ("single-speaker-", "tts"),
    ("kokoro-", "tts"),
    ("CosyVoice2-", "cosy_voice"),
)
_PREFILL_IN_TEMPLATE = re.compile(r"_p(\d+)_")
_PREFILL_IN_FLAGS = re.compile(r"--prefill_len\s+(\d+)")
_KV_IN_FLAGS = re.compile(r"--kv_cache_len\s+(\d+)")
# AXERA names a chunked-prefill build by its window and context: "...-P1536-CTX2047" (capital P; the
# lower-case `-p256-` of the single-chunk builds is read from the template instead). Qwen3-VL's runner
# takes its window from the model file (`prefill_max_token_num`, dev:main_vlm/src/runner/LLM.hpp
# LLM_Qwen::Init) and prefills it in `_pNNN_` chunks, so this name is the only place the window shows.
_WINDOW_IN_NAME = re.compile(r"-P(\d+)(?=-|$)")
_CTX_IN_NAME = re.compile(r"-CTX(\d+)(?=-|$)")
_PREFILL_GROUP_IN_FLAGS = re.compile(r"--last_kv_cache_len\s+(\d+)")
DEFAULT_PREFILL = 128  # most models (protocol §6)
DEFAULT_MAX_TOKEN_LEN = 1023  # KV capacity of the p256 / prefill-20e builds when the flags do not say


def unit_for_model(mode: str, model_type: str) -> str:
    """The unit that runs `mode`: by its descriptor `type` first, then by the name's prefix."""
    if model_type:
        for prefix, unit in _UNITS_BY_TYPE.get(model_type, ()):
            if mode.startswith(prefix):
                return unit
        return model_type
    for prefix, unit in _UNIT_PREFIXES:
        if mode.startswith(prefix):
            return unit
    return model_type


@dataclass(frozen=True, slots=True)
class ModelDescriptor:
    mode: str
    type: str
    unit: str
    capabilities: tuple[str, ...] = ()
    input_type: tuple[str, ...] = ()
    output_type: tuple[str, ...] = ()
    mode_param: dict[str, Any] = field(default_factory=dict, compare=False)
    prefill_len: int | None = None  # only for llm / vlm
    prefill_named: bool = False  # the window is stated by the model's name (`-P1536-`), not guessed
    kv_cache_len: int | None = None  # mask length: prompt + generated positions (max_token_len ≤ this)
    cmm_size: int | None = None  # KiB, when the descriptor declares it
    # "ctx" models (`LLM_CTX`: precompute_len > 0, or any AXCL LLM) keep the conversation in their KV cache
    # across inferences: positions history + new turn may take before the unit silently resets. 0 = the
    # model is single-turn (every inference starts from the system prompt). See docs/decisions.md.
    context_len: int = 0
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def prefill_chunk(self) -> int:
        """Positions one prefill pass takes (`_pNNN_` in the axmodel template): what a chunked runner rounds
        to, whatever window the model's name states."""
        template = str(self.mode_param.get("template_filename_axmodel", ""))
        if m := _PREFILL_IN_TEMPLATE.search(template):
            return int(m.group(1))
        return self.prefill_len or DEFAULT_PREFILL

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ModelDescriptor:
        mode = str(obj.get("mode", ""))
        model_type = str(obj.get("type", ""))
        unit = unit_for_model(mode, model_type)
        param = obj.get("mode_param") if isinstance(obj.get("mode_param"), dict) else {}
        assert isinstance(param, dict)
        flags = str(obj.get("compile_flage", ""))
        prefill = kv = named = None
        if unit in ("llm", "vlm"):
            names = (mode, str(obj.get("homepage", "")).rstrip("/").rsplit("/", 1)[-1])
            named = _named(_WINDOW_IN_NAME, names)
            prefill = named or _derive_prefill(mode, str(param.get("template_filename_axmodel", "")), flags)
            kv_match = _KV_IN_FLAGS.search(flags)
            kv = int(kv_match.group(1)) if kv_match else _named(_CTX_IN_NAME, names) or DEFAULT_MAX_TOKEN_LEN
        cmm = param.get("cmm_size")
        context = _derive_context(mode, unit, param, flags, kv) if kv is not None else 0
        return cls(
            mode=mode,
            type=model_type,
            unit=unit,
            capabilities=tuple(str(c) for c in obj.get("capabilities") or ()),
            input_type=tuple(str(c) for c in obj.get("input_type") or ()),
            output_type=tuple(str(c) for c in obj.get("output_type") or ()),
            mode_param=param,
            prefill_len=prefill,
            prefill_named=named is not None,
            kv_cache_len=kv,
            cmm_size=cmm if isinstance(cmm, int) else None,
            context_len=context,
            raw=obj,
        )


def _named(pattern: re.Pattern[str], names: tuple[str, ...]) -> int | None:
    for name in names:
        if m := pattern.search(name):
            return int(m.group(1))
    return None


def _derive_context(mode: str, unit: str, param: dict[str, Any], flags: str, kv_cache_len: int) -> int:
    """KV positions a ctx model keeps across inferences (0 for a single-turn model).

    `main_llm`/`main_vlm` (dev) run `LLM_CTX` when `precompute_len > 0`; on the AXCL branch every llm is
    `LLM_CTX`. A turn is refused by `SetKVCache` (and the unit silently resets) when history + turn exceed
    the largest prefill group, the model file's `--last_kv_cache_len` (the descriptor's `precompute_len`
    when the flags do not say); tokens are generated only below the decode mask, `--kv_cache_len`
    (protocol-notes.md, note 15)."""
    precompute = param.get("precompute_len")
    ctx = isinstance(precompute, int) and precompute > 0
    if not ctx and not (unit == "llm" and mode.endswith("-axcl")):
        return 0
    groups = [int(g) for g in _PREFILL_GROUP_IN_FLAGS.findall(flags)]
    largest = max(groups) if groups else (precompute if ctx and isinstance(precompute, int) else kv_cache_len)
    return min(largest, kv_cache_len)


def _derive_prefill(mode: str, template: str, flags: str) -> int:
    """The prefill window: `_pNNN_` in the axmodel template, else `--prefill_len`, else the §6 table."""
    if m := _PREFILL_IN_TEMPLATE.search(template):
        return int(m.group(1))
    if m := _PREFILL_IN_FLAGS.search(flags):
        return int(m.group(1))
    if "-p256-" in mode or (mode.startswith("internvl2.5") and mode.endswith("ax630c")):
        return 256
    if mode == "internvl2.5-1B-448-ax650":
        return 320
    if mode == "qwen3-vl-2B-Int4-ax630c":
        return 64
    return DEFAULT_PREFILL


@dataclass(frozen=True, slots=True)
class CmmInfo:
    """Device CMM memory in KiB."""

    remain: int
    total: int
    used: int

    @property
    def plausible(self) -> bool:
        """Numbers a real memory report could hold: used and remain add up to the total (within 1%).

        An AXCL host answers `cmminfo` with uninitialised numbers (axcl:main_sys/src/event_loop.cpp
        230-284), and a failed `axcl-smi` with zeros: neither may decide whether a model fits.
        """
        if self.total <= 0 or min(self.used, self.remain) < 0:
            return False
        return abs(self.used + self.remain - self.total) <= self.total // 100


@dataclass(frozen=True, slots=True)
class TaskInfo:
    work_id: str
    model: str
    response_format: str
    enoutput: bool
    inputs: tuple[str, ...]
