"""Image prefill tokens of StackFlow's VLMs, from descriptors shaped like the device's own (StackFlow
main_vlm/models/mode_*.json: none of them names its vision input size) and the counts of StackFlow's
tokenizer scripts (main_vlm/scripts/tokenizer_<mode>.py)."""

from __future__ import annotations

from typing import Any

import pytest

from stackflow_openai.backends.stackflow_chat import chat_info_for
from stackflow_openai.emulator import load_catalogue
from stackflow_openai.stackflow.models import ModelDescriptor

QWEN3_VL_PARAM = {
    "template_filename_axmodel": "qwen3_vl_text_p64_l%d_together.axmodel",
    "vision_config.patch_size": 16,
    "vision_config.spatial_merge_size": 2,
    "vision_config.height": 384,
    "vision_config.width": 384,
}


def vlm(mode: str, param: dict[str, Any] | None = None) -> ModelDescriptor:
    param = param or {"template_filename_axmodel": "qwen2_p256_l%d_together.axmodel"}
    return ModelDescriptor.from_json({"mode": mode, "type": "vlm", "mode_param": param})


@pytest.mark.parametrize(
    ("mode", "param", "tokens"),
    [
        ("internvl2-1B-ax630c", None, 64),  # 224 px
        ("internvl2.5-1B-ax630c", None, 128),
        ("internvl2.5-1B-364-ax630c", None, 169),  # 13 x 13
        ("internvl2.5-1B-448-ax650", None, 256),
        ("internvl3-1B-448-ax630c", None, 256),  # by the size in its name
        ("smolvlm-256M-ax630c", None, 67),  # 64 image tokens and three around them
        ("qwen3-vl-2B-Int4-ax630c", QWEN3_VL_PARAM, 146),  # (384 / (16 * 2)) ** 2 + vision_start/end
        ("some-future-vlm", None, 256),  # unknown geometry: the largest common case
    ],
)
def test_image_tokens_per_model(mode: str, param: dict[str, Any] | None, tokens: int) -> None:
    assert chat_info_for(vlm(mode, param)).image_tokens == tokens


def test_an_llm_has_no_image_tokens() -> None:
    llm = ModelDescriptor.from_json({"mode": "qwen2.5-0.5B-p256-ax630c", "type": "llm", "mode_param": {}})
    assert chat_info_for(llm).image_tokens == 0


def test_the_emulated_vlm_descriptor_is_the_devices_own() -> None:
    # The gateway must not depend on fields a real descriptor lacks (vpm_width/vpm_height).
    model = next(m for m in load_catalogue() if m.mode == "internvl2.5-1B-364-ax630c")
    assert not {"vpm_width", "vpm_height"} & set(model.mode_param)
    info = chat_info_for(model)
    assert (info.prefill_len, info.image_tokens) == (256, 169)


def test_internvl2_and_smolvlm_put_their_own_system_prompt_on_an_image_prompt() -> None:
    fixed = "Please describe the image shortly."  # their tokenizer scripts' `encode_vpm`
    assert chat_info_for(vlm("internvl2.5-1B-364-ax630c")).image_system_prompt == fixed
    assert chat_info_for(vlm("smolvlm-256M-ax630c")).image_system_prompt == fixed
    assert chat_info_for(vlm("internvl3-1B-448-ax630c")).image_system_prompt is None
    assert chat_info_for(vlm("qwen3-vl-2B-Int4-ax630c", QWEN3_VL_PARAM)).image_system_prompt is None
