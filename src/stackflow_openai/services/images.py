"""`image_url` parts → JPEG bytes for the VLM: data URLs, or http(s) fetches guarded against SSRF.

The device's VLM takes JPEG as base64 (protocol §5.3); everything else is converted with Pillow, in
bounded memory and a bounded number at once (image_decode.py, `decode_slots`).
Fetching a URL named by a client is a classic server-side request forgery hole, so by default:
- only http and https, no proxies from the environment, no connection reuse;
- the host is resolved first and refused if ANY address is loopback, private, link-local, reserved,
  multicast or unspecified (unless `allow_private`, or the host is listed in `allowed_hosts`);
- the connection goes to the address that was checked (the Host header and TLS SNI keep the name),
  so a second DNS answer cannot swap in another target;
- redirects are followed by hand, each hop checked the same way;
- one deadline for the whole fetch, the body is read with a byte cap, the content type must be image/*.
The fetching itself is in image_fetch.py, imported with the first URL (httpx takes ~100 ms to import).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stackflow_openai.errors import InvalidRequestError

from .image_decode import MAX_DECODE_BYTES, MAX_IMAGE_SIDE, to_jpeg
from .prompt import ImageRef

if TYPE_CHECKING:
    import httpx

    from .image_fetch import ImageFetcher

__all__ = ["MAX_IMAGE_SIDE", "ImageLoader", "ImagePolicy", "Resolver", "decode_slots", "usable_memory"]

Resolver = Callable[[str, int], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class ImagePolicy:
    max_bytes: int = 10 * 1024 * 1024
    fetch_timeout: float = 10.0
    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = ()
    max_redirects: int = 3
    decode_slots: int | None = None  # image decodes at once (None: decode_slots())


def decode_slots(memory_bytes: int | None = None) -> int:
    """How many images may decode at once: each may use MAX_DECODE_BYTES (image_decode.py), and all
    of them together at most an eighth of the memory the process may use; at least 1, at most 4 (the
    CPU work is in C threads and a few cores suffice for the images one device's VLM can take)."""
    if memory_bytes is None:
        memory_bytes = usable_memory()
    return max(1, min(4, memory_bytes // 8 // MAX_DECODE_BYTES))


_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def usable_memory() -> int:
    """The machine's memory, or the container's or service's limit (cgroup v2 or v1) when lower: a
    gateway in a 512 MB container must not size itself by the host's 16 GB."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_LIMITS:
        try:
            with open(path, encoding="ascii") as limit:
                value = limit.read().strip()
        except OSError:
            continue
        if value.isdigit():  # "max" (v2) or a huge number (v1) when there is no limit
            memory = min(memory, int(value))
    return memory


def _invalid(ref: ImageRef, message: str, code: str = "invalid_image") -> InvalidRequestError:
    return InvalidRequestError(message, param=ref.param, code=code)


class ImageLoader:
    def __init__(
        self, policy: ImagePolicy, client: httpx.AsyncClient | None = None, resolver: Resolver | None = None
    ) -> None:
        """`client`: made on the first URL fetch when not given (httpx's import and its TLS context cost
        ~100 ms and ~3 MiB that a gateway never fetching image URLs need not spend); `resolver`: the
        system's by default."""
        self.policy = policy
        self._http = client
        self._resolver = resolver
        self._fetcher: ImageFetcher | None = None
        self.decode_slots = policy.decode_slots or decode_slots()
        self._decoding = asyncio.Semaphore(self.decode_slots)

    @staticmethod
    def new_client() -> httpx.AsyncClient:
        from .image_fetch import new_client  # httpx: on first use only

        return new_client()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def _fetch(self, ref: ImageRef) -> bytes:
        if self._fetcher is None:
            from .image_fetch import ImageFetcher, system_resolver

            if self._http is None:
                self._http = self.new_client()
            self._fetcher = ImageFetcher(self.policy, self._http, self._resolver or system_resolver)
        return await self._fetcher.fetch(ref)

    async def load(self, ref: ImageRef) -> bytes:
        raw = self._decode_data_url(ref) if ref.url.startswith("data:") else await self._fetch(ref)
        await self._decoding.acquire()
        # The slot is held until the decode ends, also when this request is cancelled meanwhile (a
        # thread cannot be stopped): a client that leaves must not make room for another decode.
        decode = asyncio.ensure_future(asyncio.to_thread(to_jpeg, raw, ref.param))
        decode.add_done_callback(self._decode_done)
        return await asyncio.shield(decode)

    def _decode_done(self, decode: asyncio.Future[bytes]) -> None:
        self._decoding.release()
        if not decode.cancelled():
            decode.exception()  # retrieved here: nobody may await it once its request is gone

    def _decode_data_url(self, ref: ImageRef) -> bytes:
        header, sep, data = ref.url[5:].partition(",")
        media_type = header.split(";", 1)[0].strip().lower()
        if not sep or ";base64" not in header.lower():
            raise _invalid(ref, "Image data URLs must be base64: data:image/<type>;base64,<data>.")
        if media_type and not media_type.startswith("image/"):
            raise _invalid(ref, f"The data URL has media type '{media_type}', not image/*.")
        data = "".join(data.split())
        if len(data) // 4 * 3 > self.policy.max_bytes:
            raise _invalid(ref, f"The image is larger than {self.policy.max_bytes} bytes.", "image_too_large")
        try:
            return base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _invalid(ref, f"The image data URL is not valid base64: {exc}") from exc
