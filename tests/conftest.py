"""Test-session settings shared by every module."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_STATE_HOME: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    # The gateway remembers the device instances it set up under $XDG_DATA_HOME (orphan_cleanup: owned).
    # Tests must never write into the user's home, nor share those files with a real gateway.
    _STATE_HOME.append(tempfile.mkdtemp(prefix="stackflow-openai-tests-"))
    os.environ["XDG_DATA_HOME"] = _STATE_HOME[0]


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _STATE_HOME:
        shutil.rmtree(path, ignore_errors=True)
