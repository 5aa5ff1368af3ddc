"""LLM engine: a GGUF run in-process by llama.cpp through xllamacpp.

xllamacpp embeds llama.cpp's own server: `handle_chat_completions` applies the model's chat template
and streams one chunk per token to a callback (returning True from the callback stops the
generation), and its slot scheduler makes concurrent requests safe. Token counting has no Python
method in this version, so `prompt_tokens` asks the same embedded server over loopback HTTP
(`/apply-template`, then `/tokenize`); that listener is bound to 127.0.0.1 on a free port and
locked with a random API key so nothing else on the machine can use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

from stackflow_openai.emulator.engines.base import History, LlmSettings, LocalEngineError
from stackflow_openai.emulator.engines.device_tokens import DeviceTokens

__all__ = ["LlamaCppModel", "LocalLlmSession"]

logger = logging.getLogger(__name__)

_HTTP_TIMEOUT = 10.0  # loopback calls answer in milliseconds; this only bounds a wedged server
_STOP_WAIT = 10.0  # how long closing a generation waits for llama.cpp to notice the stop flag
_END = object()  # end-of-generation marker on the per-generation queue


class LlamaCppModel:
    """One loaded GGUF. Thread-safe: llama.cpp's server queues and batches requests itself."""

    def __init__(self, server: Any, path: Path, slot_context: int, api_key: str) -> None:
        self._server = server
        self.path = path
        self.slot_context = slot_context
        self._base_url = str(server.listening_address)
        self._api_key = api_key
        # Explicitly no proxy: an http_proxy variable must not route loopback calls elsewhere.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._active = 0
        self._active_lock = threading.Lock()

    @classmethod
    def load(cls, path: Path, *, n_threads: int, slots: int, slot_context: int) -> LlamaCppModel:
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_parallel = slots
        params.n_ctx = slots * slot_context  # the context is split evenly between slots
        params.cpuparams.n_threads = n_threads
        params.cpuparams_batch.n_threads = n_threads
        params.verbosity = -1  # llama.cpp logs to stderr by itself; our logger reports loads
        params.ui = False
        params.hostnames = ["127.0.0.1"]
        api_key = secrets.token_urlsafe(24)
        params.api_keys = [api_key]
        # Keep <think> text in the content: the device streams raw tokens, reasoning included.
        params.reasoning_format = xllamacpp.common_reasoning_format.COMMON_REASONING_FORMAT_NONE
        return cls(xllamacpp.Server(params), path, slot_context, api_key)

    @property
    def active_generations(self) -> int:
        """Generations whose worker thread is still inside llama.cpp (for tests and diagnostics)."""
        return self._active

    def messages(self, system_prompt: str, prompt: str) -> list[dict[str, str]]:
        # The device always renders a system turn (`prompt` is required at setup), even when empty.
        return [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}]

    def count_prompt_tokens(self, messages: list[dict[str, str]]) -> int:
        templated = self._post("/apply-template", {"messages": messages})["prompt"]
        tokens = self._post("/tokenize", {"content": templated, "add_special": True})["tokens"]
        return len(tokens)

    def stream_chat(
        self, messages: list[dict[str, str]], options: dict[str, Any], on_piece: Callable[[str], bool]
    ) -> None:
        """Blocking: calls `on_piece(text)` per token until EOS, `max_tokens`, or `on_piece` returns
        True. Raises LocalEngineError for an error reported by llama.cpp."""
        errors: list[str] = []

        def callback(chunk: Any) -> bool:
            if not isinstance(chunk, dict):
                return False
            if "error" in chunk:
                errors.append(str(chunk["error"].get("message", chunk["error"])))
                return True
            for choice in chunk.get("choices") or ():
                piece = (choice.get("delta") or {}).get("content")
                if piece and on_piece(piece):
                    return True
            return False

        request = {"messages": messages, "stream": True, **options}
        with self._active_lock:
            self._active += 1
        try:
            result = self._server.handle_chat_completions(request, callback)
        finally:
            with self._active_lock:
                self._active -= 1
        if isinstance(result, dict) and "error" in result:
            errors.append(str(result["error"]))
        if errors:
            raise LocalEngineError(f"llama.cpp: {errors[0]}")

    def close(self) -> None:
        # xllamacpp stops its loop and frees the model when the Server object is released.
        self._server = None

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self._base_url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._api_key}"},
        )
        try:
            with self._opener.open(request, timeout=_HTTP_TIMEOUT) as response:
                answer: dict[str, Any] = json.loads(response.read())
        except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
            raise LocalEngineError(f"llama.cpp {path} failed: {exc}") from exc
        return answer


def sampling_options(settings: LlmSettings, max_new_tokens: int) -> dict[str, Any]:
    """llama.cpp request fields for the setup's sampling flags. With the temperature flag off we
    decode greedily, so the local emulator answers reproducibly."""
    options: dict[str, Any] = {
        "max_tokens": max_new_tokens,
        "temperature": 0.0 if settings.temperature is None else settings.temperature,
        "cache_prompt": True,
    }
    if settings.top_p is not None:
        options["top_p"] = settings.top_p
    if settings.top_k is not None:
        options["top_k"] = settings.top_k
    return options


class _DeviceCap:
    """Whether the text generated so far reached `limit` device tokens."""

    def __init__(self, device: DeviceTokens | None, limit: int) -> None:
        self._device = device
        self._limit = limit
        self._text = ""

    def reached(self, piece: str) -> bool:
        if self._device is None:
            return False  # llama.cpp's own max_tokens is the cap
        self._text += piece
        # A byte-level BPE token is at least one byte: below `limit` bytes there is nothing to count.
        if len(self._text.encode("utf-8")) < self._limit:
            return False
        return self._device.count(self._text) >= self._limit


class LocalLlmSession:
    """One llm/vlm instance: fixed system prompt and sampling, single user turn per request."""

    def __init__(
        self,
        model: LlamaCppModel,
        settings: LlmSettings,
        *,
        vision: bool = False,
        device: DeviceTokens | None = None,
    ) -> None:
        self._model = model
        self._settings = settings
        self._vision = vision
        # The emulated model's own counting (Qwen's BPE for a qwen2.5 descriptor): the prompt and the
        # cap are in those tokens, as on the device; None: SmolLM2's tokens stand in for them.
        self._device = device
        self._stops: set[threading.Event] = set()

    @property
    def model(self) -> LlamaCppModel:
        """The shared loaded model (diagnostics: path, slot context, active generations)."""
        return self._model

    def prompt_tokens(self, prompt: str, system_prompt: str | None = None) -> int:
        system = system_prompt or self._settings.system_prompt
        if self._device is not None:
            return self._device.prompt(system, prompt)
        return self._model.count_prompt_tokens(self._model.messages(system, prompt))

    def count_output(self, pieces: list[str]) -> int:
        if self._device is None:
            return len(pieces)  # one llama.cpp piece per SmolLM2 token
        return self._device.count("".join(pieces))

    def _engine_budget(self, max_new_tokens: int) -> int:
        """llama.cpp's max_tokens: SmolLM2 tokens, enough to reach the device cap (its tokenizer splits
        English into more tokens than Qwen's); the device count then ends the generation."""
        if self._device is None:
            return max_new_tokens
        return min(self._model.slot_context, 2 * max_new_tokens + 16)

    async def generate(
        self,
        prompt: str,
        *,
        images: list[bytes],
        max_new_tokens: int,
        history: History = (),
        prefill_tokens: int | None = None,  # llama.cpp's own prefill is the real cost here
    ) -> AsyncGenerator[str, None]:
        if images:
            # No small vision model can be installed offline: answer from the text alone.
            logger.info("local %s engine is text-only: %d image(s) ignored", self._kind, len(images))
        if max_new_tokens <= 0:
            return
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        done = asyncio.Event()
        stop = threading.Event()
        messages = self._model.messages(self._settings.system_prompt, prompt)
        # A ctx unit's earlier turns go between the system prompt and this one, as its KV cache holds them.
        messages[1:1] = [{"role": role, "content": text} for role, text in history]
        options = sampling_options(self._settings, self._engine_budget(max_new_tokens))
        capped = _DeviceCap(self._device, max_new_tokens)

        def post(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                stop.set()

        def on_piece(piece: str) -> bool:
            if not stop.is_set():
                post(piece)
            return stop.is_set()

        def work() -> None:
            try:
                self._model.stream_chat(messages, options, on_piece)
            except Exception as exc:  # handed to the consumer, raised there
                post(exc)
            finally:
                post(_END)
                with contextlib.suppress(RuntimeError):  # loop closed: nobody waits any more
                    loop.call_soon_threadsafe(done.set)

        self._stops.add(stop)
        # A dedicated thread, not the loop's executor: a long generation must not starve to_thread users.
        threading.Thread(target=work, name="local-llm-generate", daemon=True).start()
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item if isinstance(item, LocalEngineError) else LocalEngineError(str(item))
                assert isinstance(item, str)
                yield item
                if capped.reached(item):
                    break  # the device's decode loop ends here: max_token_len
        finally:
            # Reached on exhaustion, error, aclose() (pause) or cancellation: stop llama.cpp at its
            # next token and wait until it has let go, so the slot is free when we return.
            stop.set()
            self._stops.discard(stop)
            try:
                await asyncio.wait_for(done.wait(), _STOP_WAIT)
            except TimeoutError:
                logger.warning("local llm generation did not stop within %.0f s", _STOP_WAIT)

    async def close(self) -> None:
        for stop in list(self._stops):
            stop.set()

    @property
    def _kind(self) -> str:
        return "vlm" if self._vision else "llm"
