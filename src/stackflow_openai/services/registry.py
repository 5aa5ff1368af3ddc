"""The model registry as the HTTP layer sees it, and model lookups that fail the OpenAI way."""

from __future__ import annotations

from typing import Protocol

from stackflow_openai.backends.base import BackendUnavailable, ModelEntry
from stackflow_openai.errors import InvalidRequestError, ModelNotFoundError

__all__ = ["ModelRegistry", "model_missing", "resolve_model"]


class ModelRegistry(Protocol):
    def list(self) -> list[ModelEntry]: ...

    def get(self, model_id: str) -> ModelEntry | None: ...

    async def start(self) -> None:
        """Called once in the app's lifespan start-up (discover devices, open pools)."""
        ...

    async def stop(self) -> None:
        """Called once in the app's lifespan shutdown (exit units, close connections)."""
        ...


def model_missing(registry: ModelRegistry, model_id: str) -> Exception:
    """What to answer for a model the registry has no entry for: 404, unless the registry says the model
    may well exist on a device that cannot be reached now (configured, seen before, or a device whose
    models were never read): then 503, as a request for a reachable model whose device is down gets."""
    unavailable = getattr(registry, "unavailable", None)  # GatewayRegistry; test registries lack it
    reason = unavailable(model_id) if unavailable is not None else None
    if reason:
        return BackendUnavailable(reason)
    return ModelNotFoundError(model_id, (e.id for e in registry.list()))


def resolve_model(
    registry: ModelRegistry, model_id: str, *, kinds: tuple[str, ...], endpoint: str
) -> ModelEntry:
    """The entry for `model_id` if it can serve `endpoint`: 404 model_not_found listing the models that
    exist, or 400 when the model exists but is of another kind (e.g. a TTS model on chat)."""
    entry = registry.get(model_id)
    if entry is None:
        raise model_missing(registry, model_id)
    if entry.kind not in kinds:
        raise InvalidRequestError(
            f"The model '{model_id}' is a {entry.kind} model and cannot be used with {endpoint}.",
            param="model",
            code="model_not_supported",
        )
    return entry
