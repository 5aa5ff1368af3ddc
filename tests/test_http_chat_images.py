"""Images in POST /v1/chat/completions: data and http(s) URLs, refusals, and what reaches the VLM."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from chat_http import post
from fakes import QWEN_P256, VLM_INFO, FakeChatBackend, assert_error, image_bytes
from stackflow_openai.app import HttpSettings


def image_message(url: str, text: str = "What is this?") -> dict[str, Any]:
    return {
        "model": "qwen",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
                ],
            }
        ],
    }


async def test_image_by_data_url_reaches_the_vlm_as_jpeg() -> None:
    backend = FakeChatBackend(VLM_INFO)
    png = image_bytes("PNG", (64, 48), "RGBA")
    response = await post(backend, image_message("data:image/png;base64," + base64.b64encode(png).decode()))
    assert response.status_code == 200, response.text
    generation = backend.generations[0]
    assert generation.prompt == "What is this?"
    (jpeg,) = generation.images
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG" and image.size == (64, 48) and image.mode == "RGB"


async def test_instructions_reach_a_vlm_that_replaces_its_system_prompt_for_images() -> None:
    # InternVL2.5 on a device templates an image prompt under its own system prompt: the request's
    # system message would be lost, so it leads the user text instead.
    info = replace(VLM_INFO, image_system_prompt="Please describe the image shortly.")
    backend = FakeChatBackend(info)
    png = image_bytes("PNG")
    body = image_message("data:image/png;base64," + base64.b64encode(png).decode())
    body["messages"].insert(0, {"role": "system", "content": "Answer in French."})
    assert (await post(backend, body)).status_code == 200
    assert backend.generations[0].prompt == "Answer in French.\n\nWhat is this?"
    assert backend.leases[0].settings.system_prompt == "Answer in French."  # the text requests' setup


async def test_images_to_a_text_model_are_refused() -> None:
    backend = FakeChatBackend(QWEN_P256)
    png = image_bytes("PNG")
    response = await post(backend, image_message("data:image/png;base64," + base64.b64encode(png).decode()))
    assert_error(response, 400, param="messages[0].content[1].image_url", code="images_not_supported")


async def test_bad_image_data_names_the_part() -> None:
    response = await post(FakeChatBackend(VLM_INFO), image_message("data:image/png;base64,!!!!"))
    assert_error(response, 400, param="messages[0].content[1].image_url", code="invalid_image")


class _ImageHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = image_bytes("PNG", (20, 10), "RGB")
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/picture.png"
    httpd.shutdown()
    httpd.server_close()


async def test_image_by_url_with_the_host_allowed(image_server: str) -> None:
    backend = FakeChatBackend(VLM_INFO)
    settings = HttpSettings(image_allowed_hosts=("127.0.0.1",))
    response = await post(backend, image_message(image_server), settings=settings)
    assert response.status_code == 200, response.text
    with Image.open(io.BytesIO(backend.generations[0].images[0])) as image:
        assert image.format == "JPEG" and image.size == (20, 10)


async def test_image_url_on_loopback_is_refused_by_default(image_server: str) -> None:
    backend = FakeChatBackend(VLM_INFO)
    response = await post(backend, image_message(image_server))
    assert_error(response, 400, param="messages[0].content[1].image_url", code="image_url_forbidden")
    assert backend.leases == []


def _data_url(size: tuple[int, int]) -> str:
    return "data:image/png;base64," + base64.b64encode(image_bytes("PNG", size, "RGB")).decode()


def _image_part(size: tuple[int, int]) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": _data_url(size)}}


ONE_IMAGE_VLM = replace(VLM_INFO, max_images=1)  # InternVL2/2.5 and SmolVLM keep the last image sent


async def test_several_images_in_the_last_message_to_a_one_image_model_are_refused() -> None:
    backend = FakeChatBackend(ONE_IMAGE_VLM)
    content = [{"type": "text", "text": "Compare them."}, _image_part((16, 16)), _image_part((32, 32))]
    body = {"model": "qwen", "messages": [{"role": "user", "content": content}]}
    error = assert_error(
        await post(backend, body), 400, param="messages[0].content[2].image_url", code="too_many_images"
    )
    assert "only 1 image" in error["message"]
    assert backend.leases == []  # no unit was touched


async def test_a_one_image_model_gets_the_newest_image_and_the_answer_says_so() -> None:
    backend = FakeChatBackend(ONE_IMAGE_VLM)
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, _image_part((16, 16))]},
        {"role": "assistant", "content": "A red square."},
        {"role": "user", "content": [{"type": "text", "text": "And this one?"}, _image_part((40, 20))]},
    ]
    response = await post(backend, {"model": "qwen", "messages": messages})
    assert response.status_code == 200, response.text
    assert response.headers["X-Images-Dropped"] == "1"
    (jpeg,) = backend.generations[0].images
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.size == (40, 20)  # the newest


async def test_a_many_image_model_gets_every_image() -> None:
    backend = FakeChatBackend(VLM_INFO)  # Qwen3-VL and InternVL3 take all the images of a turn
    content = [{"type": "text", "text": "Compare them."}, _image_part((16, 16)), _image_part((32, 32))]
    response = await post(backend, {"model": "qwen", "messages": [{"role": "user", "content": content}]})
    assert response.status_code == 200, response.text
    assert "X-Images-Dropped" not in response.headers
    assert len(backend.generations[0].images) == 2
