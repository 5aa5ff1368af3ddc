"""Every LLM/VLM descriptor of StackFlow's dev and axcl catalogues (tests/fixtures/stackflow_descriptors,
copied from the device sources) against the gateway's tokenizer, window and image rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stackflow_openai.backends.stackflow_chat import chat_info_for
from stackflow_openai.errors import ContextLengthExceeded
from stackflow_openai.services.prompt import ImageRef, Turn, fit_prompt
from stackflow_openai.stackflow.models import ModelDescriptor
from stackflow_openai.tokens import TEMPLATE_OVERHEAD, Tokenizers

FIXTURES = Path(__file__).parent / "fixtures" / "stackflow_descriptors"
DESCRIPTORS = sorted(FIXTURES.glob("*/mode_*.json"))


def descriptor(name: str, branch: str = "dev") -> ModelDescriptor:
    return ModelDescriptor.from_json(json.loads((FIXTURES / branch / f"mode_{name}.json").read_text()))


@pytest.fixture(scope="module")
def tokenizers() -> Tokenizers:
    return Tokenizers()


def test_the_fixtures_are_the_catalogues() -> None:
    assert len(DESCRIPTORS) == 41  # 34 on dev, 7 on axcl


@pytest.mark.parametrize("path", DESCRIPTORS, ids=lambda p: f"{p.parent.name}/{p.stem[5:]}")
def test_each_family_is_counted_with_its_own_tokenizer(path: Path) -> None:
    model = ModelDescriptor.from_json(json.loads(path.read_text()))
    info = chat_info_for(model)
    name = model.mode.lower()
    if name.startswith(("llama3", "openbuddy-llama3")):
        # 128,256 embeddings: Llama 3's vocabulary, not Qwen's 151,936.
        assert model.mode_param["tokens_embed_num"] == 128256
        assert info.tokenizer == "llama"
    elif name.startswith("smolvlm"):
        assert info.tokenizer == "estimate"  # SmolLM2's tokenizer is not available offline
    else:  # Qwen2/2.5/3 language models, DeepSeek-R1 distills and InternVL included
        assert model.mode_param["tokens_embed_num"] in (151936, 151674, 151655, 152064)
        assert info.tokenizer == "qwen"


def test_llama_is_counted_with_llamas_bpe(tokenizers: Tokenizers) -> None:
    llama, qwen = tokenizers.get("llama"), tokenizers.get("qwen")
    assert llama.count("Hello world") == 2  # [9906, 1917] in Meta's tokenizer
    text = "今天天气很好，我们去公园散步吧。" * 4
    assert llama.count(text) != qwen.count(text)  # really a different vocabulary
    assert llama.count("<|eot_id|>") > 1  # a typed special token is plain text


def test_the_llama_template_overhead_covers_llama_3_2s_template() -> None:
    import quicktok

    encoding = quicktok.get_encoding("llama3")
    for user in ("Hi", "What is the capital of France?", "\n\nleading and trailing newlines\n\n"):
        # What StackFlow's tokenizer script sends: the chat template, encoded again (a second BOS).
        rendered = (
            "<|begin_of_text|><|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 03 Dec 2026\n\n<|eot_id|>"
            f"<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
        device = len(encoding.encode(rendered, allowed_special="all"))
        assert len(encoding.encode_ordinary(user)) + TEMPLATE_OVERHEAD["llama"] >= device


def test_qwen3_vl_p1536_takes_its_named_window_and_an_image(tokenizers: Tokenizers) -> None:
    model = descriptor("qwen3-vl-2B-Int4-P1536-ax650")
    info = chat_info_for(model)
    # The name and homepage say P1536-CTX2047; the template's _p128_ is only the prefill chunk.
    assert (info.prefill_len, info.max_token_len, info.prefill_chunk) == (1536, 2047, None)
    assert info.image_tokens == 146  # 12 x 12 merged patches of 384 px, plus vision_start/end
    turns = [Turn("user", "What is in this picture?", (ImageRef("data:,", "messages[0]"),) * 3)]
    fitted = fit_prompt(tokenizers, info, "You are helpful.", turns, image_tokens=info.image_tokens)
    assert fitted.prompt_tokens > 3 * 146  # three images fit, each counted


def test_qwen3_vl_without_a_named_window_says_how_to_give_it(tokenizers: Tokenizers) -> None:
    info = chat_info_for(descriptor("qwen3-vl-2B-Int4-ax650"))
    assert (info.prefill_len, info.prefill_chunk) == (128, 128)
    turns = [Turn("user", "What is this?", (ImageRef("data:,", "messages[0]"),))]
    with pytest.raises(ContextLengthExceeded, match=r"chunks of 128 tokens.*set `prefill_len`"):
        fit_prompt(tokenizers, info, "You are a helpful assistant.", turns, image_tokens=info.image_tokens)


@pytest.mark.parametrize(
    ("name", "max_images"),
    [
        ("internvl2-1B-ax630c", 1),
        ("internvl2.5-1B-364-ax630c", 1),
        ("internvl2.5-1B-448-ax650", 1),
        ("smolvlm-256M-ax630c", 1),
        ("internvl3-1B-448-ax630c", None),  # LLM_CTX: every image of the turn
        ("qwen3-vl-2B-Int4-ax650", None),  # LLM_Qwen: every image of the turn
    ],
)
def test_single_image_runners_are_known(name: str, max_images: int | None) -> None:
    assert chat_info_for(descriptor(name)).max_images == max_images


def test_a_one_image_model_counts_only_the_image_it_is_sent(tokenizers: Tokenizers) -> None:
    info = chat_info_for(descriptor("internvl2.5-1B-364-ax630c"))  # 169 per image, window 256
    image = (ImageRef("data:,", "messages[0]"),)
    turns = [Turn("user", "Look.", image), Turn("assistant", "A cat."), Turn("user", "And this?", image)]
    fitted = fit_prompt(tokenizers, info, "sys", turns, image_tokens=info.image_tokens)
    assert fitted.dropped == 0  # two images would need 338 positions; only the newest is sent


def test_llama_3_2_gets_the_system_message_in_its_user_turn(tokenizers: Tokenizers) -> None:
    # Its tokenizer script templates the user turn alone: the setup's prompt would be lost.
    info = chat_info_for(descriptor("llama3.2-1B-p256-ax630c"))
    assert info.text_system_prompt == ""
    assert chat_info_for(descriptor("openbuddy-llama3.2-1B-ax630c")).text_system_prompt is None
    turns = [Turn("user", "Hello")]
    fitted = fit_prompt(tokenizers, info, "Answer in French.", turns, instructions="Answer in French.")
    assert fitted.user_text == "Answer in French.\n\nHello"
    plain = fit_prompt(tokenizers, info, "You are a helpful assistant.", turns)  # no system message sent
    assert plain.user_text == "Hello"
