"""Setup validation per unit (protocol §4.1), with the typing rules of nlohmann's conversions.

Required fields are read with `at()` into typed members: missing, `null` or another JSON type makes
the setup fail with -5. Optional fields (`CONFIG_AUTO_SET`) take the setup value if present, else
the descriptor's `mode_param` value, and are converted the same way, so a bad type in either fails
too. Numbers accept booleans (nlohmann converts them); booleans and strings accept nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stackflow_openai.stackflow.models import ModelDescriptor

__all__ = ["SetupError", "check_setup"]

STR, BOOL, NUM = "str", "bool", "num"

_COMMON = {"model": STR, "response_format": STR, "enoutput": BOOL}
REQUIRED: dict[str, dict[str, str]] = {
    "llm": {**_COMMON, "prompt": STR},
    "vlm": {**_COMMON, "prompt": STR},
    "melotts": dict(_COMMON),
    "tts": dict(_COMMON),
    "whisper": {**_COMMON, "language": STR},
    "asr": dict(_COMMON),
    "cosy_voice": dict(_COMMON),
}
INPUT_REQUIRED = frozenset({"melotts", "whisper"})  # their parse_config throws without `input`

_LLM_OPTIONAL = {
    "system_prompt": STR,
    "tokenizer_type": NUM,
    "filename_tokenizer_model": STR,
    "url_tokenizer_model": STR,
    "filename_tokens_embed": STR,
    "filename_post_axmodel": STR,
    "template_filename_axmodel": STR,
    "b_bos": BOOL,
    "b_eos": BOOL,
    "axmodel_num": NUM,
    "tokens_embed_num": NUM,
    "tokens_embed_size": NUM,
    "b_use_mmap_load_embed": BOOL,
    "b_dynamic_load_axmodel_layer": BOOL,
    "max_token_len": NUM,
    "enable_temperature": BOOL,
    "temperature": NUM,
    "enable_top_p_sampling": BOOL,
    "top_p": NUM,
    "enable_top_k_sampling": BOOL,
    "top_k": NUM,
    "enable_repetition_penalty": BOOL,
    "repetition_penalty": NUM,
    "penalty_window": NUM,
    "precompute_len": NUM,
}
OPTIONAL: dict[str, dict[str, str]] = {
    "llm": _LLM_OPTIONAL,
    "vlm": {
        **_LLM_OPTIONAL,
        "filename_vpm_resampler_axmodedl": STR,
        "filename_image_encoder_axmodel": STR,
        "b_vpm_two_stage": BOOL,
        "img_token_id": NUM,
        "vpm_width": NUM,
        "vpm_height": NUM,
        "b_video": BOOL,
    },
    "melotts": {
        "tokens": STR,
        "lexicon": STR,
        "mode_rate": NUM,
        "audio_rate": NUM,
        "spacker_speed": NUM,
        "gbin": STR,
        "encoder": STR,
        "decoder": STR,
        "noise_scale": NUM,
        "length_scale": NUM,
        "noise_scale_w": NUM,
        "sdp_ratio": NUM,
        "tagger": STR,
        "verbalizer": STR,
    },
    # Kokoro (dev) reads the rates too; SummerTTS only the first three.
    "tts": {
        "spacker_role": NUM,
        "spacker_speed": NUM,
        "ttsModelName": STR,
        "mode_rate": NUM,
        "audio_rate": NUM,
    },
    # dev:main_cosy_voice/src/main.cpp 175-212 (a few of them)
    "cosy_voice": {"mode_rate": NUM, "audio_rate": NUM, "prompt_dir": STR, "n_timesteps": NUM},
    "whisper": {
        "tokens": STR,
        "positional_embedding": STR,
        "encoder": STR,
        "decoder_main": STR,
        "decoder_loop": STR,
        "t2s": STR,
        "model_type": STR,
        "awake_delay": NUM,
        "whisper_sample_rate": NUM,
        "whisper_n_fft": NUM,
        "whisper_hop_length": NUM,
        "whisper_chunk_size": NUM,
        "whisper_n_mels": NUM,
        "whisper_vocab_size": NUM,
        "whisper_n_text_ctx": NUM,
    },
    "asr": {
        "feat_config.sampling_rate": NUM,
        "feat_config.feature_dim": NUM,
        "enable_endpoint": BOOL,
        "endpoint_config.rule1.min_trailing_silence": NUM,
        "endpoint_config.rule2.min_trailing_silence": NUM,
        "endpoint_config.rule3.min_utterance_length": NUM,
    },
}
# Read from the setup data only (`config_body.contains(...)`), never from mode_param.
SETUP_ONLY: dict[str, dict[str, str]] = {
    "melotts": {"awake_delay": NUM, "enaudio": BOOL},
    "tts": {"awake_delay": NUM},
    "asr": {"awake_delay": NUM, "rule1": NUM, "rule2": NUM, "rule3": NUM},
}


class SetupError(Exception):
    """A setup that fails with a device error code (message None: the code's standard text)."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(f"setup failed with {code}")
        self.code = code
        self.message = message


def _has_type(value: Any, kind: str) -> bool:
    if kind == STR:
        return isinstance(value, str)
    if kind == BOOL:
        return isinstance(value, bool)
    return isinstance(value, int | float)  # bool is an int: nlohmann converts it to a number


def check_setup(
    unit: str, config: Any, find_model: Callable[[str], ModelDescriptor | None]
) -> tuple[ModelDescriptor, dict[str, Any]]:
    """Validate one setup; returns the model and its effective parameters, or raises SetupError(-5)."""
    if not isinstance(config, dict):
        raise SetupError(-5)  # parsed, but `at()` on a non-object throws
    for name, kind in REQUIRED[unit].items():
        if name not in config or not _has_type(config[name], kind):
            raise SetupError(-5)
    _check_input(unit, config)
    model = find_model(config["model"])
    if model is None or model.unit != unit:
        raise SetupError(-5)  # no descriptor for this unit: "all config file miss" / load failure
    params = {**model.mode_param, **config}
    for name, kind in OPTIONAL.get(unit, {}).items():
        if name in params and not _has_type(params[name], kind):
            raise SetupError(-5)
    for name, kind in SETUP_ONLY.get(unit, {}).items():
        if name in config and not _has_type(config[name], kind):
            raise SetupError(-5)
    return model, params


def _check_input(unit: str, config: dict[str, Any]) -> None:
    if "input" not in config:
        if unit in INPUT_REQUIRED:
            raise SetupError(-5)
        return
    value = config["input"]
    # A string or an array of strings is used; an array holding anything else throws; any other
    # type is ignored (no input at all), as the device's is_string()/is_array() branches do.
    if isinstance(value, list) and not all(isinstance(item, str) for item in value):
        raise SetupError(-5)
