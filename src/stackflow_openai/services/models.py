"""`/v1/models`: the registry's entries as OpenAI model objects."""

from __future__ import annotations

from typing import Any

from stackflow_openai.backends.base import BackendUnavailable, ModelEntry
from stackflow_openai.errors import ModelNotFoundError
from stackflow_openai.protocol import Model, ModelList

from .registry import ModelRegistry

__all__ = ["ModelService"]


def _model(entry: ModelEntry) -> Model:
    return Model(id=entry.id, created=entry.created, owned_by=entry.owned_by)


class ModelService:
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def list(self) -> dict[str, Any]:
        return ModelList(data=[_model(e) for e in self._registry.list()]).model_dump(mode="json")

    def get(self, model_id: str) -> dict[str, Any]:
        entry = self._registry.get(model_id)
        reachable = self._registry.list()
        if entry is None:
            raise ModelNotFoundError(model_id, (e.id for e in reachable))
        if entry not in reachable:  # configured, but all its devices are down: as inference answers
            raise BackendUnavailable(
                f"The model '{model_id}' is configured, but none of its devices is reachable now."
            )
        # An alias resolves to its target entry; answer with the id the client asked for.
        return _model(entry).model_copy(update={"id": model_id}).model_dump(mode="json")
