"""The store interface: what the responses service needs, and no more."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["ResponseStore", "StoreError", "StoredResponse", "key_owner"]


class StoreError(Exception):
    """The store cannot be used (its file cannot be opened or written: permissions, a full disk)."""


def key_owner(api_key: str | None) -> str:
    """The owner recorded with a response: a SHA-256 of the API key that created it ("" without keys).

    Only the hash is stored, so the database never holds a usable key. Keys are long random secrets, so
    a plain hash is enough (no salt needed to stop a dictionary attack on them)."""
    if not api_key:
        return ""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    owner: str  # key_owner() of the creator: a response is visible only to the same key
    created_at: int
    previous_response_id: str | None
    response: dict[str, Any]  # the Response object as it was returned
    input_items: list[dict[str, Any]]  # this request's input items, each with its id


class ResponseStore(Protocol):
    """Stored responses, isolated by owner: a lookup with another owner finds nothing. Every method
    raises `StoreError` when the storage itself fails."""

    async def put(self, record: StoredResponse) -> None:
        """Store (or replace) a response; durable when this returns."""
        ...

    async def get(self, response_id: str, owner: str) -> StoredResponse | None: ...

    async def delete(self, response_id: str, owner: str) -> bool:
        """True when the response existed (for this owner) and is gone."""
        ...

    async def chain(self, response_id: str, owner: str, *, limit: int) -> list[StoredResponse]:
        """The response and its predecessors (previous_response_id links), oldest first, at most
        `limit` of them (the newest ones); [] when the response is not found for this owner."""
        ...

    async def close(self) -> None: ...
