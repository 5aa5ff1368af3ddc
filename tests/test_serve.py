"""How `stackflow-openai serve` runs uvicorn (serve.py)."""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fakes import make_app
from stackflow_openai.config import ServerSettings
from stackflow_openai.serve import http_protocol, uvicorn_config


def test_serve_parses_http_with_httptools_and_its_guards() -> None:
    # httptools is a dependency: a third less CPU per request than h11 (docs/performance.md).
    protocol = http_protocol()
    assert isinstance(protocol, type) and issubclass(protocol, HttpToolsProtocol)
    server = ServerSettings(header_timeout=3, keep_alive_timeout=2, max_connections=50, shutdown_grace=7)
    config = uvicorn_config(make_app([]), "127.0.0.1", 0, server)
    config.load()
    assert issubclass(config.http_protocol_class, HttpToolsProtocol)
    assert config.http_protocol_class.header_timeout == 3  # type: ignore[attr-defined]
    assert config.http_protocol_class.max_connections == 50  # type: ignore[attr-defined]
    assert (config.timeout_keep_alive, config.timeout_graceful_shutdown) == (2, 12)
    assert (config.host, config.port, config.lifespan) == ("127.0.0.1", 0, "on")
