"""Stored responses (the Responses API's `store: true`) behind a small interface.

`ResponseStore` is what the responses service uses; `SqliteResponseStore` is the implementation for one
gateway (a file in the data directory). Several gateway replicas behind a load balancer would need a
server database implementing the same interface. Nothing below the services layer imports this package.
"""

from .base import ResponseStore, StoredResponse, StoreError, key_owner
from .sqlite import SqliteResponseStore

__all__ = [
    "ResponseStore",
    "SqliteResponseStore",
    "StoreError",
    "StoredResponse",
    "key_owner",
]
