"""Fetching an image URL a client named, guarded against server-side request forgery (images.py says
how). Kept apart from images.py so that httpx (~100 ms to import) loads with the first URL fetch, not when
the gateway starts: most requests carry their images as data URLs, or none.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx

from stackflow_openai.errors import InvalidRequestError

from .prompt import ImageRef

if TYPE_CHECKING:
    from .images import ImagePolicy, Resolver

__all__ = ["ImageFetcher", "new_client"]


def new_client() -> httpx.AsyncClient:
    # No env proxies (they would bypass the address check), no redirects, no keep-alive (a pooled TLS
    # connection to one name must not serve another name on the same address).
    return httpx.AsyncClient(
        trust_env=False, follow_redirects=False, limits=httpx.Limits(max_keepalive_connections=0)
    )


async def system_resolver(host: str, port: int) -> list[str]:
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


class ImageFetcher:
    """Fetches image URLs under the rules images.py lists, on one shared client (without keep-alive)."""

    def __init__(self, policy: ImagePolicy, client: httpx.AsyncClient, resolver: Resolver) -> None:
        self.policy = policy
        self._client = client
        self._resolve = resolver

    async def fetch(self, ref: ImageRef) -> bytes:
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


def _invalid(ref: ImageRef, message: str, code: str = "invalid_image") -> InvalidRequestError:
    return InvalidRequestError(message, param=ref.param, code=code)
