"""`/v1/models`: the registry's entries as OpenAI model objects, aliases included.

OpenAI lists `tts-1` and `whisper-1` as models, and UIs (Open WebUI, LibreChat) build their pickers from
this list alone: an alias that works but is not listed cannot be picked. So each alias whose target is
reachable is listed as a model of its own, with `stackflow.alias_of` naming the target.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stackflow_openai.backends.base import BackendUnavailable, ModelEntry
from stackflow_openai.protocol import Model, ModelList
from stackflow_openai.protocol.models import StackFlowModelInfo

from .registry import ModelRegistry, model_missing

__all__ = ["ModelService", "model_kind"]


def model_kind(entry: ModelEntry) -> str:
    """What the model is for: chat, vision (chat with images), speech or transcription."""
    if entry.kind == "chat" and entry.chat is not None and entry.chat.info.vision:
        return "vision"
    if entry.kind == "proxy":  # forwarded upstream: served on the chat and completion endpoints
        return "chat"
    return entry.kind


def _model(entry: ModelEntry, model_id: str | None = None) -> Model:
    info = StackFlowModelInfo(
        kind=model_kind(entry),
        device=entry.devices[0] if entry.devices else None,
        devices=list(entry.devices),
        alias_of=entry.id if model_id is not None and model_id != entry.id else None,
    )
    return Model(id=model_id or entry.id, created=entry.created, owned_by=entry.owned_by, stackflow=info)


class ModelService:
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def _aliases(self) -> Mapping[str, str]:
        # Only the gateway's registry has aliases; the ModelRegistry protocol does not require them.
        aliases: Mapping[str, str] = getattr(self._registry, "aliases", None) or {}
        return aliases

    def list(self) -> dict[str, Any]:
        reachable = {e.id: e for e in self._registry.list()}
        models = [_model(e) for e in reachable.values()]
        models += [
            _model(reachable[target], alias)
            for alias, target in self._aliases().items()
            if target in reachable and alias not in reachable  # a real model of that name wins
        ]
        return ModelList(data=models).model_dump(mode="json")

    def get(self, model_id: str) -> dict[str, Any]:
        entry = self._registry.get(model_id)
        reachable = self._registry.list()
        if entry is None:
            raise model_missing(self._registry, model_id)
        if entry not in reachable:  # configured, but all its devices are down: as inference answers
            raise BackendUnavailable(
                f"The model '{model_id}' is configured, but none of its devices is reachable now."
            )
        # An alias resolves to its target entry; answer with the id the client asked for.
        return _model(entry, model_id).model_dump(mode="json")
