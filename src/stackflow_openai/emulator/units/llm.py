"""The llm unit (`main_llm`, runner `LLM::Run`; protocol §5.2, §6); the vlm builds on it (vlm.py).

Generation follows the device's decode loop:
- the templated prompt must fit the prefill window; if it does not, the device runs on an empty
  embedding and produces garbage with no error. The emulator emits `!` tokens and counts the event
  (`prefill_overflows`) so tests can assert it never happens;
- `max_token_len` caps prompt + generated positions: at most `1 + max_token_len - prompt` tokens;
- tokens are pushed in groups of at least 3 (held while the text ends in U+FFFD). The group still
  held when the loop ends by length or by `pause` is never sent in stream mode (only an EOS flushes
  it), while the non-stream text always has every token;
- then exactly one finish: the `{"delta":"","finish":true}` terminator, or the whole text.

A "ctx" model (`precompute_len > 0`, every AXCL llm) keeps the conversation in its KV cache across
inferences, resets silently when the cache is full and on the input `reset` (units/kvcontext.py).

llm queues at most 3 waiting requests (more are dropped) and runs them on its own task. It unescapes
JSON escapes in the text a user sends; the final of a linked asr/whisper instance is queued the same
way, still escaped (`task_asr_data`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from stackflow_openai.emulator.engines.base import LlmSession, LlmSettings
from stackflow_openai.emulator.engines.scripted import scripted_pieces
from stackflow_openai.emulator.engines.scripted_tools import malformed_answer
from stackflow_openai.emulator.rawjson import extract, unescape
from stackflow_openai.emulator.units.base import Instance, UnitService
from stackflow_openai.emulator.units.kvcontext import RESET_REPLY, KvContext
from stackflow_openai.emulator.units.links import USER, Route
from stackflow_openai.stackflow.models import ModelDescriptor

__all__ = ["LlmInstance", "LlmUnit", "as_text", "asr_text"]

DEFAULT_MAX_TOKEN_LEN = 127  # LLMAttrType default; no descriptor sets it (protocol §6)
DEFAULT_PREFILL = 128
LLM_QUEUE_DEPTH = 3
GROUP_TOKENS = 3
_log = logging.getLogger(__name__)


def as_text(payload: bytes | str) -> str:
    return payload if isinstance(payload, str) else payload.decode("utf-8", errors="replace")


class LlmInstance(Instance):
    unit: LlmUnit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session: LlmSession | None = None
        self.max_token_len = DEFAULT_MAX_TOKEN_LEN
        self.prefill_len = DEFAULT_PREFILL
        self._pending: deque[str] = deque()  # requests waiting behind the running one
        self._busy = False  # the llm worker is working off requests
        self._stop_requested = False
        self._generating = False
        self._idle = asyncio.Event()  # nothing generating and nothing queued
        self._idle.set()
        self.context: KvContext | None = None  # a ctx model's KV cache (None: single-turn model)

    def configure(self, config: dict[str, Any], params: dict[str, Any], model: ModelDescriptor) -> None:
        super().configure(config, params, model)
        capacity = model.kv_cache_len or 1023
        self.max_token_len = min(int(params.get("max_token_len", DEFAULT_MAX_TOKEN_LEN)), capacity)
        self.prefill_len = model.prefill_len or DEFAULT_PREFILL
        if model.context_len:
            # LLM_CTX::Init takes max_token_len from the model file's mask, whatever the setup said.
            self.max_token_len = capacity
            self.context = KvContext.for_model(model)

    def settings(self) -> LlmSettings:
        p = self.params
        return LlmSettings(
            system_prompt=self.config["prompt"],
            max_token_len=self.max_token_len,
            temperature=float(p.get("temperature", 0.7)) if p.get("enable_temperature") else None,
            top_p=float(p.get("top_p", 0.9)) if p.get("enable_top_p_sampling") else None,
            top_k=int(p.get("top_k", 10)) if p.get("enable_top_k_sampling", True) else None,
        )

    async def open(self) -> None:
        assert self.model is not None
        engine = self.unit.state.engine_for(self.model)
        self.session = await engine.open_llm(self.model, self.settings())
        if self.context is not None:
            self.context.start(self.session.prompt_tokens(""))

    async def close_session(self) -> None:
        if self.session is not None:
            await self.session.close()

    # ----------------------------------------------------------------- input
    async def on_user_data(self, object: str, data: str) -> None:
        payload = self.decode_common(object, data)
        if payload is None:
            return
        self.enqueue(unescape(as_text(payload)))

    async def on_asr_data(self, object: str, data: str) -> None:
        """`task_asr_data`: a linked asr/whisper output. A stream counts only at its `finish` (the delta
        of that message alone); the text is taken still escaped, as the device does not unescape it."""
        self.enqueue(asr_text(object, data))

    def enqueue(self, text: str) -> None:
        """`inference_async`: the worker takes it at once when idle, else up to three wait."""
        if not text or self.state == "exiting":
            return  # empty input is ignored, with no reply
        if not self._busy:
            # The worker thread blocks in get(): an idle one takes the request at once, so it
            # does not occupy one of the three queue places.
            self._busy = True
            self._idle.clear()
            self.spawn(self._work_off(text))
        elif len(self._pending) < LLM_QUEUE_DEPTH:
            self._pending.append(text)
        # else: the queue is full and the request is dropped silently

    async def _work_off(self, text: str) -> None:
        try:
            while True:
                await self.generate(text, [])
                if not self._pending:
                    return
                text = self._pending.popleft()
        finally:
            self._busy = False
            self._idle.set()

    # ----------------------------------------------------------------- control
    def request_stop(self) -> None:
        """`pause`: stops the running generation; lost if none runs (Run() clears the flag)."""
        if self._generating:
            self._stop_requested = True

    async def finish_for_exit(self) -> None:
        # llm_task::stop(): stop the current generation, then let the queued ones run to the
        # end before the worker thread exits; only then is the exit acknowledged.
        self.request_stop()
        await self._idle.wait()

    # ----------------------------------------------------------------- generation
    async def generate(self, text: str, images: list[bytes]) -> None:
        assert self.session is not None
        self._generating, self._stop_requested = True, False
        if self.state == "ready":
            self.state = "busy"
        try:
            await self._run(self.session, text, images)
        except UnicodeEncodeError:
            pass  # dump() threw: the generation ends with no finish message at all
        except Exception:
            _log.exception("%s: generation failed", self.work_id)  # device: no output either
        finally:
            self._generating = False
            if self.state == "busy":
                self.state = "ready"

    def prompt_tokens(self, session: LlmSession, text: str, images: list[bytes]) -> int:
        return session.prompt_tokens(text)

    async def _run(self, session: LlmSession, text: str, images: list[bytes]) -> None:
        faults = self.unit.state.faults
        drop_finish = faults.take("drop_finish")
        close_after = faults.close_after_deltas if self.enstream and faults.take("close_mid_stream") else None
        context = self.context
        if context is not None and text == "reset":  # exactly: any other text is a turn
            context.reset()
            self._finish(RESET_REPLY, drop_finish)
            return
        turn_tokens = 0
        overflowed = False  # a prompt beyond the prefill window: garbage "!" pieces, one token each
        if context is not None:
            # LLM_CTX prefills in chunks: no prefill window to overflow, but the cache can be full.
            turn_tokens = self.turn_tokens(session, context, text, images)
            context.admit_or_reset(turn_tokens)
            max_new = context.new_tokens_allowed(turn_tokens)
            pieces: AsyncIterator[str] = session.generate(
                text,
                images=images,
                max_new_tokens=max_new,
                history=list(context.history),
                prefill_tokens=turn_tokens,
            )
        else:
            prompt_tokens = self.prompt_tokens(session, text, images)
            max_new = 1 + max(0, self.max_token_len - prompt_tokens)
            overflowed = prompt_tokens > self.prefill_len
            if overflowed:
                self.prefill_overflows += 1
                self.unit.state.prefill_overflows += 1
                pieces = _garbage(max_new)
            else:
                pieces = session.generate(text, images=images, max_new_tokens=max_new)
        if faults.malformed_answer and (bad := malformed_answer(self.config["prompt"], text)) is not None:
            faults.take("malformed_answer")  # instead of the engine's answer (a garbage one included)
            pieces = _scripted(bad, max_new)
        produced, held, stopped = await self._relay(pieces, close_after)
        # In the emulated model's tokens (device_tokens.py), which the local engine's pieces are not.
        generated = len(produced) if overflowed else session.count_output(produced)
        if not stopped and generated < max_new and held:
            self._delta("".join(held))  # EOS flushes the held group; length/pause do not
        if context is not None:  # GetKVCache: the turn and every generated token stay, paused or not
            context.record(text, "".join(produced), turn_tokens, generated)
        self._finish("".join(produced), drop_finish)

    async def _relay(
        self, pieces: AsyncIterator[str], close_after: int | None
    ) -> tuple[list[str], list[str], bool]:
        """Pushes the pieces in groups as the decode loop does, until they end or a pause stops them.
        Returns every piece, the group still held back, and whether a pause stopped it."""
        faults = self.unit.state.faults
        produced: list[str] = []
        held: list[str] = []
        deltas = 0
        async for piece in pieces:
            produced.append(piece)
            held.append(piece)
            joined = "".join(held)
            if len(held) >= GROUP_TOKENS and joined and not _held_back(joined):
                deltas += self._delta(joined)
                held.clear()
                if close_after is not None and deltas >= close_after and self.push_conn is not None:
                    self.push_conn.close()
                    close_after = None
            if self._stop_requested:
                return produced, held, True
            if faults.token_delay:
                await asyncio.sleep(faults.token_delay)
            while faults.hang:  # noqa: ASYNC110 (a plain flag, settable over the wire): stall until cleared
                await asyncio.sleep(0.05)
        return produced, held, False

    def turn_tokens(self, session: LlmSession, context: KvContext, text: str, images: list[bytes]) -> int:
        return context.turn_tokens(session.prompt_tokens(text), session.prompt_tokens(""))

    def _finish(self, text: str, drop_finish: bool) -> None:
        """The one finish message: the stream terminator (its delta always empty), or the whole text."""
        if drop_finish:
            return
        if self.enstream:
            self.emit({"delta": "", "finish": True, "index": self.next_stream_index(finish=True)})
        else:
            self.emit(text)

    def _delta(self, text: str) -> int:
        if self.enstream:
            self.emit({"delta": text, "finish": False, "index": self.next_stream_index(finish=False)})
            return 1
        return 0


def asr_text(object: str, data: str) -> str:
    """What llm/vlm `task_asr_data` infers on: "" (nothing) for a stream message that does not finish."""
    if "stream" not in object:
        return data
    return extract(data, "delta") if extract(data, "finish") == "true" else ""


async def _scripted(text: str, count: int) -> AsyncIterator[str]:
    """A fault's fixed answer, token-like piece by piece (at most `count`)."""
    for piece in scripted_pieces(text)[:count]:
        await asyncio.sleep(0)
        yield piece


async def _garbage(count: int) -> AsyncIterator[str]:
    """What a prompt beyond the prefill window yields on the device: no error, just nonsense."""
    for _ in range(count):
        await asyncio.sleep(0)
        yield "!"


def _held_back(text: str) -> bool:
    """The device keeps a group while its decoded text ends in the byte 0xBD (`LLM.hpp`, `tmp_out.back()
    != 0xBD`, char unsigned on ARM). Meant for the U+FFFD of a character split across tokens (EF BF BD),
    it also holds back text that ends in 好 (E5 A5 BD), н, ν, ½...: such groups grow past three tokens."""
    return text.encode("utf-8", "surrogatepass").endswith(b"\xbd")


class LlmUnit(UnitService):
    name = "llm"
    limit = 2
    user_tag = "llm"
    instance_class = LlmInstance
    parse_error_work_id = "kws"
    # main_llm/src/main.cpp 685-702 and 730-742 (dev = main; axcl 661-678, 706-718).
    setup_routes: ClassVar[tuple[Route, ...]] = (
        (("llm",), USER),
        (("asr", "whisper"), "on_asr_data"),
        (("kws",), None),
    )
    link_routes: ClassVar[tuple[Route, ...]] = ((("asr",), "on_asr_data"), (("kws",), None))

    async def pause(self, instance: Instance) -> None:
        assert isinstance(instance, LlmInstance)
        instance.request_stop()
