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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from stackflow_openai.errors import InvalidRequestError

from .image_decode import MAX_DECODE_BYTES, MAX_IMAGE_SIDE, to_jpeg
from .prompt import ImageRef

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


async def _system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    blocked = ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_reserved
    return ip.is_global and not (blocked or ip.is_multicast or ip.is_unspecified)


def _parse_url(ref: ImageRef, parse: Callable[[], httpx.URL]) -> httpx.URL:
    """A URL from the client (or from a server's redirect) parsed, or a 400: httpx refuses some forms
    (`http://[::1`, a bad IDNA label) with exceptions that are not `httpx.HTTPError`, and accepts ports
    the socket layer would refuse later (`:70000`)."""
    try:
        url = parse()
        url.host  # noqa: B018 (decoding an IDNA host is lazy: let a bad label fail here)
    except (httpx.InvalidURL, ValueError) as exc:  # idna's and the punycode codec's errors are ValueErrors
        raise _invalid(ref, f"The image URL is not valid: {exc}", "invalid_image_url") from exc
    if url.port is not None and not 0 < url.port < 65536:
        raise _invalid(ref, f"The image URL's port {url.port} is out of range.", "invalid_image_url")
    return url


class ImageLoader:
    def __init__(
        self, policy: ImagePolicy, client: httpx.AsyncClient | None = None, resolver: Resolver | None = None
    ) -> None:
        """`client`: made on the first URL fetch when not given (its TLS context costs ~3 MiB that a
        gateway never fetching image URLs need not hold)."""
        self.policy = policy
        self._http = client
        self._resolve = resolver or _system_resolver
        self.decode_slots = policy.decode_slots or decode_slots()
        self._decoding = asyncio.Semaphore(self.decode_slots)

    @property
    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = self.new_client()
        return self._http

    @staticmethod
    def new_client() -> httpx.AsyncClient:
        # No env proxies (they would bypass the address check), no redirects, no keep-alive (a pooled TLS
        # connection to one name must not serve another name on the same address).
        return httpx.AsyncClient(
            trust_env=False, follow_redirects=False, limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

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

    async def _fetch(self, ref: ImageRef) -> bytes:
        try:
            async with asyncio.timeout(self.policy.fetch_timeout):
                return await self._fetch_hops(ref)
        except TimeoutError as exc:
            raise _invalid(
                ref,
                f"Fetching the image took longer than {self.policy.fetch_timeout} s.",
                "image_fetch_failed",
            ) from exc
        except httpx.HTTPError as exc:
            raise _invalid(ref, f"The image could not be fetched: {exc}", "image_fetch_failed") from exc

    async def _fetch_hops(self, ref: ImageRef) -> bytes:
        url = _parse_url(ref, lambda: httpx.URL(ref.url))
        for _hop in range(self.policy.max_redirects + 1):
            request = await self._pinned_request(url, ref)
            response = await self._client.send(request, stream=True)
            try:
                if response.is_redirect and "location" in response.headers:
                    location = response.headers["location"]
                    url = _parse_url(ref, lambda: url.join(location))  # noqa: B023 (called at once)
                    continue
                return await self._read_image(response, ref)
            finally:
                await response.aclose()
        raise _invalid(ref, "The image URL redirected too many times.", "image_fetch_failed")

    async def _pinned_request(self, url: httpx.URL, ref: ImageRef) -> httpx.Request:
        if url.scheme not in ("http", "https") or not url.host:
            raise _invalid(ref, "Image URLs must be http(s) or data: URLs.", "invalid_image_url")
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            addresses = await self._resolve(url.host, port)
        except (OSError, UnicodeError) as exc:  # UnicodeError: a host label the IDNA codec refuses
            raise _invalid(
                ref, f"The image host '{url.host}' could not be resolved.", "image_fetch_failed"
            ) from exc
        if not addresses:
            raise _invalid(ref, f"The image host '{url.host}' has no address.", "image_fetch_failed")
        if not self._host_allowed(url, addresses):
            raise _invalid(
                ref,
                f"The image host '{url.host}' resolves to a private or reserved address; fetching it is "
                "not allowed (see images.allow_private / images.allowed_hosts).",
                "image_url_forbidden",
            )
        pinned = sorted(addresses, key=lambda a: ":" in a)[0]  # prefer IPv4
        host_header = url.netloc.decode("ascii")
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        timeout = httpx.Timeout(self.policy.fetch_timeout)
        return self._client.build_request(
            "GET",
            url.copy_with(host=pinned),
            headers={"Host": host_header, "Accept": "image/*"},
            extensions=extensions,
            timeout=timeout,
        )

    def _host_allowed(self, url: httpx.URL, addresses: list[str]) -> bool:
        listed = {h.lower() for h in self.policy.allowed_hosts}
        if url.host.lower() in listed or f"{url.host}:{url.port}".lower() in listed:
            return True
        return self.policy.allow_private or all(_is_public(a) for a in addresses)

    async def _read_image(self, response: httpx.Response, ref: ImageRef) -> bytes:
        if response.status_code != 200:
            raise _invalid(
                ref, f"Fetching the image failed: HTTP {response.status_code}.", "image_fetch_failed"
            )
        content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if not content_type.startswith("image/"):
            raise _invalid(ref, f"The URL did not return an image (content type '{content_type}').")
        limit = self.policy.max_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _invalid(ref, f"The image is larger than {limit} bytes.", "image_too_large")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise _invalid(ref, f"The image is larger than {limit} bytes.", "image_too_large")
        return bytes(body)
