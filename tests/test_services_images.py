"""image_url parts: data URLs, http fetches from a local server, the SSRF guard, JPEG conversion."""

from __future__ import annotations

import base64
import contextlib
import io
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from PIL import Image

from fakes import image_bytes
from stackflow_openai.errors import InvalidRequestError
from stackflow_openai.services import image_decode
from stackflow_openai.services import images as images_module
from stackflow_openai.services.images import ImageLoader, ImagePolicy
from stackflow_openai.services.prompt import ImageRef

PNG = image_bytes("PNG", (40, 30), "RGBA")
JPEG = image_bytes("JPEG", (40, 30), "RGB")


class _Handler(BaseHTTPRequestHandler):
    hits: ClassVar[list[tuple[str, str]]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            self.wfile.write(body)

    def do_GET(self) -> None:
        self.hits.append((self.path, self.headers.get("Host", "")))
        path, _, query = self.path.partition("?")
        if path == "/cat.png":
            self._send(200, PNG, "image/png")
        elif path == "/photo.jpg":
            self._send(200, JPEG, "image/jpeg")
        elif path == "/page":
            self._send(200, b"<html>not an image</html>", "text/html")
        elif path == "/big.png":
            self._send(200, PNG + b"\0" * 5000, "image/png")
        elif path == "/chunked.png":  # no Content-Length: the cap must hold while streaming
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(PNG + b"\0" * 5000)
            self.close_connection = True
        elif path == "/redirect":
            self._send(302, b"", "text/plain", {"Location": query})
        elif path == "/slow.png":
            time.sleep(1.0)
            self._send(200, PNG, "image/png")
        else:
            self._send(404, b"", "text/plain")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


async def _fake_dns(host: str, port: int) -> list[str]:
    table = {
        "images.test": ["127.0.0.1"],
        "mixed.test": ["93.184.216.34", "10.1.2.3"],
        "v6.test": ["::1"],
        "public.test": ["93.184.216.34"],
    }
    if host in table:
        return table[host]
    return [host]  # IP literals


@pytest.fixture
async def make_loader() -> AsyncIterator[object]:
    loaders: list[ImageLoader] = []

    def make(**policy: object) -> ImageLoader:
        loader = ImageLoader(ImagePolicy(**policy), ImageLoader.new_client(), _fake_dns)  # type: ignore[arg-type]
        loaders.append(loader)
        return loader

    yield make
    for loader in loaders:
        await loader.aclose()


def ref(url: str) -> ImageRef:
    return ImageRef(url, "messages[0].content[1].image_url")


def data_url(raw: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(raw).decode()}"


def as_image(jpeg: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG"
    return image


# ---- data URLs ----------------------------------------------------------------------------------------
async def test_png_data_url_becomes_an_rgb_jpeg(make_loader) -> None:
    image = as_image(await make_loader().load(ref(data_url(PNG))))
    assert image.mode == "RGB" and image.size == (40, 30)


async def test_jpeg_passes_through_unchanged(make_loader) -> None:
    assert await make_loader().load(ref(data_url(JPEG, "image/jpeg"))) == JPEG


async def test_large_images_are_scaled_down(make_loader) -> None:
    big = image_bytes("PNG", (3000, 1500), "RGB")
    image = as_image(await make_loader().load(ref(data_url(big))))
    assert image.size == (images_module.MAX_IMAGE_SIDE, images_module.MAX_IMAGE_SIDE // 2)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("data:image/png;base64,@@not*base64@@", "invalid_image"),
        (data_url(b"just some text, not an image"), "invalid_image"),
        (data_url(PNG, "text/plain"), "invalid_image"),
        ("data:image/png,rawbytes", "invalid_image"),
        (data_url(PNG[: len(PNG) // 2]), "invalid_image"),
    ],
    ids=["bad-base64", "not-an-image", "wrong-media-type", "not-base64-encoded", "truncated"],
)
async def test_bad_data_urls_name_the_part(make_loader, url: str, code: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await make_loader().load(ref(url))
    assert info.value.param == "messages[0].content[1].image_url"
    assert info.value.code == code


async def test_data_url_over_the_size_cap(make_loader) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await make_loader(max_bytes=100).load(ref(data_url(PNG + b"\0" * 500)))
    assert info.value.code == "image_too_large"


async def test_pixel_bombs_are_refused_before_decoding(make_loader, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_decode, "MAX_DECODE_BYTES", 1000)
    with pytest.raises(InvalidRequestError, match="too large") as info:
        await make_loader().load(ref(data_url(PNG)))
    assert info.value.code == "image_too_large"


# ---- http(s) URLs ----------------------------------------------------------------------------------------
async def test_loopback_is_refused_without_allow(make_loader, server: str) -> None:
    before = len(_Handler.hits)
    with pytest.raises(InvalidRequestError) as info:
        await make_loader().load(ref(f"http://{server}/cat.png"))
    assert info.value.code == "image_url_forbidden"
    assert info.value.param == "messages[0].content[1].image_url"
    assert len(_Handler.hits) == before  # refused before connecting


async def test_allowed_host_is_fetched_and_converted(make_loader, server: str) -> None:
    loader = make_loader(allowed_hosts=("127.0.0.1",))
    image = as_image(await loader.load(ref(f"http://{server}/cat.png")))
    assert image.size == (40, 30)
    assert await loader.load(ref(f"http://{server}/photo.jpg")) == JPEG


async def test_allow_private_fetches_loopback(make_loader, server: str) -> None:
    assert await make_loader(allow_private=True).load(ref(f"http://{server}/photo.jpg")) == JPEG


async def test_connection_goes_to_the_checked_address_with_the_original_host(
    make_loader, server: str
) -> None:
    port = server.split(":")[1]
    loader = make_loader(allowed_hosts=("images.test",))
    assert await loader.load(ref(f"http://images.test:{port}/photo.jpg")) == JPEG
    assert _Handler.hits[-1] == ("/photo.jpg", f"images.test:{port}")


@pytest.mark.parametrize("host", ["mixed.test", "v6.test", "169.254.169.254", "10.0.0.1", "[::1]", "0.0.0.0"])
async def test_private_resolutions_are_refused(make_loader, host: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await make_loader().load(ref(f"http://{host}/x.png"))
    assert info.value.code == "image_url_forbidden"


async def test_redirect_to_a_private_address_is_refused(make_loader, server: str) -> None:
    loader = make_loader(allowed_hosts=("127.0.0.1",))
    with pytest.raises(InvalidRequestError) as info:
        await loader.load(ref(f"http://{server}/redirect?http://169.254.169.254/latest/meta-data"))
    assert info.value.code == "image_url_forbidden"


async def test_redirect_within_the_allowed_host_is_followed(make_loader, server: str) -> None:
    loader = make_loader(allowed_hosts=("127.0.0.1",))
    assert await loader.load(ref(f"http://{server}/redirect?/photo.jpg")) == JPEG


@pytest.mark.parametrize(
    ("path", "code", "policy"),
    [
        ("/page", "invalid_image", {}),
        ("/missing.png", "image_fetch_failed", {}),
        ("/big.png", "image_too_large", {"max_bytes": 1000}),
        ("/chunked.png", "image_too_large", {"max_bytes": 1000}),
        ("/slow.png", "image_fetch_failed", {"fetch_timeout": 0.3}),
    ],
)
async def test_fetch_failures_are_400s(make_loader, server: str, path: str, code: str, policy: dict) -> None:
    loader = make_loader(allowed_hosts=("127.0.0.1",), **policy)
    with pytest.raises(InvalidRequestError) as info:
        await loader.load(ref(f"http://{server}{path}"))
    assert info.value.code == code


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x.png", "file:///etc/passwd", "gopher://x/"])
async def test_other_schemes_are_refused(make_loader, url: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await make_loader(allow_private=True).load(ref(url))
    assert info.value.code == "invalid_image_url"


# URLs that httpx refuses with exceptions outside httpx.HTTPError, or accepts although no socket can use them:
# each was a 500 (issue 13, item 6).
@pytest.mark.parametrize(
    "url",
    ["http://[::1", "http://[::1/x.png", "http://127.0.0.1:70000/x.png", "http://[::1]:99999/",
     "http://xn--zz.invalid/x.png"],
)  # fmt: skip
@pytest.mark.parametrize("allow_private", [False, True])
async def test_urls_httpx_refuses_are_400s(make_loader, url: str, allow_private: bool) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await make_loader(allow_private=allow_private).load(ref(url))
    assert info.value.code == "invalid_image_url"
    assert info.value.param == "messages[0].content[1].image_url"


async def test_a_redirect_to_an_unparseable_url_is_a_400(make_loader, server: str) -> None:
    loader = make_loader(allowed_hosts=("127.0.0.1",))
    with pytest.raises(InvalidRequestError) as info:
        await loader.load(ref(f"http://{server}/redirect?http://[::1"))
    assert info.value.code in ("invalid_image_url", "image_fetch_failed")
