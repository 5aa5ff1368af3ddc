"""The browser playground: GET / serves one page, /playground/* its CSS and JavaScript modules.

Plain files shipped in the package (package-data), no CDN and no build step: a device is often on a
network without internet access, and the page must work there. The page calls the same /v1 API as any
client, with the API key the user types (kept in the browser's localStorage). Off with
`playground: false` in the config.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

__all__ = ["PLAYGROUND_PREFIX", "mount_playground"]

PLAYGROUND_PREFIX = "/playground"
# A page that is always fetched fresh: after an upgrade the browser must not mix old and new modules.
_NO_CACHE = {"Cache-Control": "no-cache"}


class _Static(StaticFiles):
    """StaticFiles that asks browsers to revalidate (ETag) instead of caching blindly."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_NO_CACHE)
        return response


def mount_playground(app: FastAPI) -> None:
    static = resources.files("stackflow_openai.playground") / "static"
    page = (static / "index.html").read_text(encoding="utf-8")

    async def index(_request: Request) -> Response:
        return HTMLResponse(page, headers=_NO_CACHE)

    # Plain routes (not FastAPI operations): the page is not part of the API's OpenAPI document.
    app.router.routes.append(Route("/", index, methods=["GET", "HEAD"], name="playground"))
    app.mount(PLAYGROUND_PREFIX, _Static(directory=str(static)), name="playground-static")
