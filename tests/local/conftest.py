"""Fixtures for the local-engine tests: one LocalEngine per session, so each model loads once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from stackflow_openai.emulator.engines.local import LocalEngine


@pytest.fixture(scope="session")
def local_engine() -> Iterator[LocalEngine]:
    engine = LocalEngine()
    yield engine
    asyncio.run(engine.close())
