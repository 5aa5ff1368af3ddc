"""The OpenAI Responses API (`/v1/responses`) as a front end over the chat generation core.

A request's input items (and, with `previous_response_id`, the stored items and outputs of the
responses before it) become the same conversation a chat request does (services/responses_input.py);
services/plan.py fits it to the device and builds the plan; the plan's events become a Response object
or its SSE events (services/responses_run.py). Responses are stored (`store`, default true as at
OpenAI) through the `ResponseStore` interface, visible only to the API key that created them.

Function tools, `tool_choice`, `parallel_tool_calls`, `text.format` (json_object / json_schema) and
reasoning items come from the shared core (services/output.py, through services/responses_tools.py).
Background responses run in a task of their own (services/responses_background.py). Departures from
OpenAI, each answered with a 400 that says so: a streamed background response, `conversation` and
`prompt` (stored prompts) are not served; built-in tools (web search, file search, ...) do not exist
on a device. `truncation` is OpenAI's: `disabled` (the default, configurable) refuses a conversation
that does not fit the prefill window, `auto` drops its oldest items.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from stackflow_openai.errors import (
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailable,
    UnsupportedParameter,
)
from stackflow_openai.protocol.responses import ResponseCreateRequest, ResponseInputItemsQuery
from stackflow_openai.store import ResponseStore, StoredResponse, StoreError
from stackflow_openai.tokens import Tokenizers

from .common import (
    JsonResult,
    ProxyResult,
    ServiceResult,
    StreamResult,
    forward_or_backend,
    ignored_headers,
    parse_body,
)
from .images import ImageLoader
from .output import OutputSpec
from .params import ignored_params
from .plan import PlanBuilder, PlanRequest
from .prompt import Conversation
from .registry import ModelRegistry, resolve_model
from .responses_background import ORPHANED, BackgroundRuns
from .responses_input import ParsedInput, item_id, normalize_input, to_conversation
from .responses_live import LiveResponses
from .responses_output import ResponseHead
from .responses_run import collect_response, replay_events, stream_response
from .responses_tools import echo_tools, output_spec

__all__ = ["CHAIN_LIMIT", "ResponsesService"]

log = logging.getLogger(__name__)
T = TypeVar("T")
# Responses read back for a previous_response_id: far more turns than any device window holds (a few
# hundred tokens), so a longer conversation is cut here the way fitting would cut it anyway.
CHAIN_LIMIT = 200
_ALWAYS_NEUTRAL = frozenset({"max_tool_calls", "prompt_cache_retention", "stream_options"})


@dataclass(frozen=True, slots=True)
class _Saver:
    store: ResponseStore
    owner: str
    previous_response_id: str | None
    items: list[dict[str, Any]]
    enabled: bool

    async def __call__(self, body: dict[str, Any]) -> None:
        if self.enabled:
            record = StoredResponse(
                body["id"], self.owner, body["created_at"], self.previous_response_id, body, self.items
            )
            await _stored(self.store.put(record))


class ResponsesService:
    def __init__(
        self,
        registry: ModelRegistry,
        tokenizers: Tokenizers,
        images: ImageLoader,
        store: ResponseStore,
        *,
        default_truncation: str = "disabled",
    ) -> None:
        """`default_truncation`: for requests that name none; OpenAI's is `disabled` (config:
        responses.default_truncation, for clients that never set it on a device's small window)."""
        self._default_truncation = default_truncation
        self._registry = registry
        self._planner = PlanBuilder(tokenizers, images)
        self._store = store
        self._background = BackgroundRuns()
        self._live = LiveResponses()  # running now, not stored yet: GET shows them in_progress

    async def close(self) -> None:
        """Cancel the background responses still running (the gateway is stopping)."""
        await self._background.close()

    async def create(self, body: Mapping[str, Any], *, owner: str = "") -> ServiceResult:
        request = parse_body(ResponseCreateRequest, body)
        if request.truncation is None:
            request.truncation = self._default_truncation  # type: ignore[assignment]
        _refuse_unsupported(request)
        entry = resolve_model(
            self._registry, request.model, kinds=("chat", "proxy"), endpoint="/v1/responses"
        )
        backend = await forward_or_backend(entry, "/responses", body)
        if isinstance(backend, ProxyResult):
            return backend  # the upstream stores it (or not): GET /v1/responses/{id} here will not find it
        headers = ignored_headers(_ignored(request, body), entry)
        parsed = normalize_input(request.input)
        spec = output_spec(body, backend.info.name or entry.id, entry.extra)
        conversation = await self._conversation(request, parsed, owner, spec)
        plan_request = PlanRequest(
            conversation,
            output=spec,
            max_tokens=request.max_output_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            param="input",
            text_param=parsed.text_param,
            truncate=request.truncation == "auto",
        )
        planned = await self._planner.build(entry, backend, plan_request)
        plan = planned.plan
        headers.update(planned.headers())
        head = _head(request, body, entry.id)
        head.background = bool(request.background)
        save = _Saver(
            self._store, owner, request.previous_response_id, parsed.items, request.store is not False
        )
        live = self._live.tracker(owner) if save.enabled else None
        if request.background:
            return JsonResult(await self._background.start(plan, head, save, live), headers)
        if request.stream:
            usage: dict[str, int] = {}
            return StreamResult(stream_response(plan, head, save, usage, live), headers, usage)
        return JsonResult(await collect_response(plan, head, save, live), headers)

    async def _conversation(
        self, request: ResponseCreateRequest, parsed: ParsedInput, owner: str, spec: OutputSpec
    ) -> Conversation:
        history: list[dict[str, Any]] = []
        previous = request.previous_response_id
        if previous is not None:
            chain = await _stored(self._store.chain(previous, owner, limit=CHAIN_LIMIT))
            if not chain:
                raise InvalidRequestError(
                    f"Previous response with id '{previous}' not found.",
                    param="previous_response_id",
                    code="previous_response_not_found",
                )
            if len(chain) == CHAIN_LIMIT and chain[0].previous_response_id and request.truncation != "auto":
                raise InvalidRequestError(
                    f"The conversation before '{previous}' is longer than {CHAIN_LIMIT} responses, far more "
                    "than the model's window: set truncation to 'auto' to drop the oldest items.",
                    param="previous_response_id",
                    code="context_length_exceeded",
                )
            for record in chain:
                history += record.input_items
                history += record.response.get("output") or []
        return to_conversation(request.instructions, history, parsed.items, spec.tool_format)

    async def retrieve(self, response_id: str, *, owner: str = "") -> dict[str, Any]:
        running = self._live.get(response_id, owner)
        if running is not None:
            return running
        body = (await self._get(response_id, owner)).response
        if body.get("status") in ("queued", "in_progress") and not self._background.running(response_id):
            return {**body, "status": "failed", "error": ORPHANED}  # its task died with an earlier gateway
        return body

    async def cancel(self, response_id: str, *, owner: str = "") -> dict[str, Any]:
        """Stop a background response; one that has ended is returned as it is."""
        body = (await self._get(response_id, owner)).response
        if not body.get("background"):
            raise InvalidRequestError("Only background responses can be cancelled.", param="response_id")
        if self._background.running(response_id):
            await self._background.cancel(response_id)
        return await self.retrieve(response_id, owner=owner)

    async def replay(self, response_id: str, starting_after: int | None, *, owner: str = "") -> list[bytes]:
        """A stored response's events, as its stream sent them (GET ...?stream=true)."""
        if starting_after is not None and starting_after < -1:
            raise InvalidRequestError(
                "'starting_after' must be a sequence number (0 or more).", param="starting_after"
            )
        return replay_events((await self._get(response_id, owner)).response, starting_after)

    async def delete(self, response_id: str, *, owner: str = "") -> dict[str, Any]:
        if not await _stored(self._store.delete(response_id, owner)):
            raise _not_found(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    async def input_items(
        self, response_id: str, query: Mapping[str, Any], *, owner: str = ""
    ) -> dict[str, Any]:
        """One page of a response's input items, as OpenAI's cursor lists: `after`/`before` are item ids."""
        params = parse_body(ResponseInputItemsQuery, query)
        items = list((await self._get(response_id, owner)).input_items)
        if params.order == "desc":
            items.reverse()
        ids = [item["id"] for item in items]
        start, end = 0, len(items)
        for cursor, name in ((params.after, "after"), (params.before, "before")):
            if cursor is not None and cursor not in ids:
                raise InvalidRequestError(f"No input item with id '{cursor}' in this response.", param=name)
        if params.after is not None:
            start = ids.index(params.after) + 1
        if params.before is not None:
            end = ids.index(params.before)
        window = items[start:end]
        # `before` pages towards the start: the page is the items just before the cursor.
        page = (
            window[-params.limit :]
            if params.before is not None and params.after is None
            else window[: params.limit]
        )
        has_more = len(page) < len(window)
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": has_more,
        }

    async def _get(self, response_id: str, owner: str) -> StoredResponse:
        record = await _stored(self._store.get(response_id, owner))
        if record is None:
            raise _not_found(response_id)
        return record


async def _stored(call: Awaitable[T]) -> T:
    """A store call; a failing store (permissions, a full disk) is a 503 that says where and why."""
    try:
        return await call
    except StoreError as exc:
        log.error("stored responses: %s", exc)
        raise ServiceUnavailable(
            f"The response store is not available ({exc}). Check the gateway's data_dir, or send "
            "store: false.",
            code="store_unavailable",
        ) from exc


def _not_found(response_id: str) -> NotFoundError:
    # A response of another API key is "not found" too: its existence is not revealed.
    return NotFoundError(f"Response with id '{response_id}' not found.", param="response_id")


def _refuse_unsupported(request: ResponseCreateRequest) -> None:
    if request.background and request.stream:
        raise UnsupportedParameter(
            "A background response cannot be streamed here: poll GET /v1/responses/{id} instead.",
            param="stream",
        )
    if request.background and request.store is False:
        raise InvalidRequestError("A background response must be stored (store: true).", param="store")
    if request.conversation is not None:
        raise UnsupportedParameter(
            "Conversations are not supported by this gateway: continue with previous_response_id.",
            param="conversation",
        )
    if request.prompt is not None:
        raise UnsupportedParameter(
            "Stored prompt templates ('prompt') are not supported: send instructions and input.",
            param="prompt",
        )


def _ignored(request: ResponseCreateRequest, body: Mapping[str, Any]) -> list[str]:
    extra = {k: v for k, v in (request.model_extra or {}).items() if k not in _ALWAYS_NEUTRAL}
    if extra.get("include") == []:
        extra.pop("include")
    ignored = ignored_params(extra, body)
    verbosity = (request.text or {}).get("verbosity")
    if verbosity not in (None, "medium"):  # OpenAI's default; the device has no such knob
        ignored.append("text.verbosity")
    return sorted(ignored)


def _head(request: ResponseCreateRequest, body: Mapping[str, Any], model: str) -> ResponseHead:
    reasoning = {"effort": None, "summary": None, **(request.reasoning or {})}
    text = {"format": {"type": "text"}, **(request.text or {})}
    extra = request.model_extra or {}
    return ResponseHead(
        id=item_id("resp"),
        created_at=int(time.time()),
        model=model,
        instructions=request.instructions,
        max_output_tokens=request.max_output_tokens,
        previous_response_id=request.previous_response_id,
        reasoning=reasoning,
        store=request.store is not False,
        temperature=request.temperature,
        text=text,
        tool_choice=request.tool_choice if request.tool_choice is not None else "auto",
        tools=echo_tools(request.tools),
        top_p=request.top_p,
        truncation=request.truncation or "disabled",
        parallel_tool_calls=request.parallel_tool_calls is not False,
        metadata=dict(request.metadata or {}),
        user=_str_or_none(extra.get("user")),
        safety_identifier=_str_or_none(extra.get("safety_identifier")),
        prompt_cache_key=_str_or_none(extra.get("prompt_cache_key")),
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None
