"""Images to a one-image VLM (InternVL2.5 on the emulator, which keeps the last image sent as the
device's `LLM` runner does): the gateway sends one and says so, or refuses what it cannot answer."""

from __future__ import annotations

import base64
import io
from typing import Any

import openai
import pytest
from PIL import Image

from e2e_harness import Harness

VLM = "internvl2.5-1B-364-ax630c"


def _image(color: str) -> dict[str, Any]:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, "JPEG")
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    return {"type": "image_url", "image_url": {"url": url}}


def test_a_one_image_vlm_answers_a_chat_with_an_image_per_turn_and_refuses_two_at_once() -> None:
    with Harness().start().serving() as h:
        c = openai.OpenAI(base_url=h.base_url, api_key="unused", max_retries=0)
        history = [
            {"role": "user", "content": [{"type": "text", "text": "what is this"}, _image("red")]},
            {"role": "assistant", "content": "A red square."},
            {"role": "user", "content": [{"type": "text", "text": "and this"}, _image("blue")]},
        ]
        raw = c.chat.completions.with_raw_response.create(model=VLM, messages=history)
        assert raw.headers["X-Images-Dropped"] == "1"
        assert (raw.parse().choices[0].message.content or "").startswith("I see 1 image.")
        both = [{"type": "text", "text": "compare"}, _image("red"), _image("blue")]
        with pytest.raises(openai.BadRequestError) as err:
            c.chat.completions.create(model=VLM, messages=[{"role": "user", "content": both}])
        assert err.value.code == "too_many_images" and err.value.param == "messages[0].content[2].image_url"
