"""How `stackflow-openai serve` runs uvicorn (serve.py)."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fakes import make_app
from stackflow_openai.serve import http_protocol, uvicorn_config


def test_serve_parses_http_with_httptools() -> None:
    # httptools is a dependency: a third less CPU per request than h11 (docs/performance.md).
    assert http_protocol() == "httptools"
    config = uvicorn_config(make_app([]), "127.0.0.1", 0)
    config.load()
    assert config.http_protocol_class is HttpToolsProtocol
    assert (config.host, config.port, config.lifespan) == ("127.0.0.1", 0, "on")
