"""Chat backend on a StackFlow llm or vlm unit, leased from the device pool."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import replace
from typing import Any

from stackflow_openai.stackflow.errors import (
    Base64DecodeError,
    ConnectionLost,
    DeviceError,
    DeviceTimeout,
)
from stackflow_openai.stackflow.models import ModelDescriptor
from stackflow_openai.stackflow.poolapi import UnitSource
from stackflow_openai.stackflow.setups import llm_setup, vlm_setup
from stackflow_openai.stackflow.unit import Unit

from .base import (
    BackendInvalidRequest,
    BackendUnavailable,
    ChatModelInfo,
    UnitSettings,
)
from .conversations import RESET_INPUT, ConversationLedger, ConversationTurn
from .device_lease import device_lease

__all__ = ["StackFlowChatBackend", "chat_info_for", "chat_setup"]

# (name prefix, tokenizer, template) per model family in StackFlow's catalogues (main, dev and axcl
# branches; docs/decisions.md lists them). DeepSeek-R1 distills, InternVL2/2.5/3 and Qwen3-VL run Qwen
# language models; OpenBuddy's Llama 3.2 keeps Llama 3's vocabulary (128,256 embeddings) under its own
# chat template, whose tokens are not known here: the generic bound. SmolVLM's SmolLM2 tokenizer is not
# available offline: the conservative estimate.
_FAMILIES = (
    ("qwen", "qwen", "qwen"),
    ("deepseek-r1", "qwen", "qwen"),
    ("internvl", "qwen", "qwen"),
    ("llama3", "llama", "llama"),
    ("openbuddy-llama3", "llama", "generic"),
)
_IMAGE_CHUNK_CHARS = 64 * 1024  # keeps each JSON line well under the ~1 MB the protocol advises


# Prefill positions one image takes, as StackFlow's own tokenizer scripts lay the prompt out
# (main_vlm/scripts/tokenizer_<mode>.py). No descriptor says: the device reads the vision input size
# from the model file. InternVL cuts 14 px patches and merges 2x2 (one token per 28x28 px).
_IMAGE_TOKENS = {
    "internvl2-1B-ax630c": 64,  # 224 px
    "internvl2.5-1B-ax630c": 128,
    "internvl2.5-1B-364-ax630c": 169,  # 364 px: 13 x 13
    "internvl2.5-1B-448-ax650": 256,  # 448 px: 16 x 16
}
# SmolVLM: <fake_token_around_image><global-img>, 64 image tokens, <fake_token_around_image>
_SMOLVLM_IMAGE_TOKENS = 64 + 3
_INTERNVL_SIZE = re.compile(r"-(\d{3})-")
_FALLBACK_IMAGE_TOKENS = 256  # InternVL at 448 px, the largest common case: never overfill the window
# InternVL2/2.5's scripts template a prompt with an image under this system prompt whatever the setup
# said, SmolVLM's under no system block at all (`encode_vpm`; counting this one is then conservative);
# InternVL3 and Qwen3-VL keep the setup's.
_IMAGE_SYSTEM_PROMPT = "Please describe the image shortly."
_FIXED_IMAGE_PROMPT_FAMILIES = ("internvl2-", "internvl2.5-", "smolvlm-")


def _vlm_runner(model: ModelDescriptor) -> str:
    """Which runner main_vlm builds for this descriptor, decided as the unit decides it
    (dev:main_vlm/src/main.cpp ~286-296): "qwen" (LLM_Qwen), "ctx" (LLM_CTX) or "single" (LLM)."""
    encoder = str(model.mode_param.get("filename_image_encoder_axmodel", "")).lower()
    if "qwen3" in encoder:
        return "qwen"
    precompute = model.mode_param.get("precompute_len")
    if "internvl3" in encoder and isinstance(precompute, int) and precompute > 0:
        return "ctx"
    return "single"


def _image_tokens(model: ModelDescriptor) -> int:
    if model.unit != "vlm":
        return 0
    mode = model.mode
    if mode in _IMAGE_TOKENS:
        return _IMAGE_TOKENS[mode]
    param = model.mode_param
    # Qwen-VL descriptors carry their vision geometry: patches of `patch_size` px, merged n x n, and
    # the tokenizer script wraps each image in <|vision_start|> ... <|vision_end|> (encode_vpm_image).
    keys = ("height", "width", "patch_size", "spatial_merge_size")
    geometry = [v for v in (param.get(f"vision_config.{k}") for k in keys) if isinstance(v, int) and v > 0]
    if len(geometry) == len(keys):
        height, width, patch, merge = geometry
        return (height // (patch * merge)) * (width // (patch * merge)) + 2
    name = mode.lower()
    if name.startswith("smolvlm"):
        return _SMOLVLM_IMAGE_TOKENS
    if name.startswith("internvl") and (size := _INTERNVL_SIZE.search(mode)):
        return (int(size.group(1)) // 28) ** 2
    return _FALLBACK_IMAGE_TOKENS


def _image_system_prompt(model: ModelDescriptor) -> str | None:
    fixed = model.unit == "vlm" and model.mode.lower().startswith(_FIXED_IMAGE_PROMPT_FAMILIES)
    return _IMAGE_SYSTEM_PROMPT if fixed else None


def _text_system_prompt(model: ModelDescriptor) -> str | None:
    # Llama 3.2's tokenizer scripts template the user turn alone: the setup's prompt is never used
    # (dev:main_llm/scripts/tokenizer_llama3.2-1B-*.py, `encode`, system message commented out).
    return "" if model.mode.lower().startswith("llama3.2") else None


def _family(mode: str) -> tuple[str, str]:
    """(tokenizer, template) of a model; the longest matching prefix wins (openbuddy-llama3 is not llama3)."""
    name = mode.lower()
    matches = [f for f in _FAMILIES if name.startswith(f[0])]
    if not matches:
        return "estimate", "generic"
    _, tokenizer, template = max(matches, key=lambda f: len(f[0]))
    return tokenizer, template


def _replay_window(model: ModelDescriptor) -> int:
    """A ctx unit prefills in chunks: a turn after a reset may take the context rounded down to whole
    chunks, less one chunk for the system block (a longer system prompt is caught before sending)."""
    chunk = model.prefill_chunk
    return max(chunk, model.context_len - model.context_len % chunk - chunk)


def chat_info_for(model: ModelDescriptor) -> ChatModelInfo:
    tokenizer, template = _family(model.mode)
    vision = model.unit == "vlm"
    runner = _vlm_runner(model) if vision else None
    prefill = model.prefill_len or 128
    return ChatModelInfo(
        prefill_len=_replay_window(model) if model.context_len else prefill,
        max_token_len=model.kv_cache_len or 1023,
        context_len=model.context_len,
        tokenizer=tokenizer,
        template=template,
        vision=vision,
        image_tokens=_image_tokens(model),
        image_system_prompt=_image_system_prompt(model),
        text_system_prompt=_text_system_prompt(model),
        # The single-image runner keeps only the last image a turn sent (main.cpp ~432-439, ~751).
        max_images=1 if runner == "single" else None,
        # The other two prefill in `_pNNN_` chunks up to a window only the model file states; a ctx model's
        # window is its KV context (backends/conversations.py), so it needs no hint.
        prefill_chunk=prefill
        if runner in ("qwen", "ctx") and not model.prefill_named and not model.context_len
        else None,
        name=model.mode,
    )


def chat_setup(model: ModelDescriptor, settings: UnitSettings) -> dict[str, Any]:
    build = vlm_setup if model.unit == "vlm" else llm_setup
    return build(
        model.mode,
        system_prompt=settings.system_prompt,
        max_token_len=settings.max_token_len,
        temperature=settings.temperature,
        top_p=settings.top_p,
    )


class _DeviceChatUnit:
    def __init__(
        self, unit: Unit, vision: bool, idle_timeout: float, ledger: ConversationLedger | None = None
    ) -> None:
        self._unit = unit
        self._vision = vision
        self._idle_timeout = idle_timeout
        self._ledger = ledger  # set for a ctx model: its unit keeps the conversation (conversations.py)
        # The last generation was ended by the device at its decode mask, not by the model: its finish
        # reason is `length` (services/generation.py reads it). Only a ctx turn can end there unseen.
        self.stopped_at_capacity = False

    def _text_input(self, text: str) -> tuple[str, str]:
        if self._vision:
            # The VLM does not unescape its text; base64 carries it byte for byte (§5.3).
            return base64.b64encode(text.encode("utf-8")).decode("ascii"), "vlm.utf-8.base64"
        return text, "llm.utf-8"

    async def _reset_context(self) -> None:
        """LLM_CTX's `reset` input: back to the system prompt; answered by a finish (no text in stream)."""
        data, obj = self._text_input(RESET_INPUT)
        async with aclosing(
            self._unit.generate(data, object=obj, idle_timeout=self._idle_timeout)
        ) as replies:
            async for _ in replies:
                pass  # the non-stream format answers "Context has been reset."

    async def generate(
        self, prompt: str, *, images: list[bytes], turn: ConversationTurn | None = None
    ) -> AsyncIterator[str]:
        if images and not self._vision:
            raise BackendInvalidRequest("this model does not accept images", param="messages")
        ledger, plan, reply = self._ledger, None, None
        answered = self.stopped_at_capacity = False
        try:
            if ledger is not None:
                try:
                    plan = ledger.plan(self._unit, turn, prompt)
                except ValueError as exc:
                    raise BackendInvalidRequest(
                        str(exc), param="messages", code="context_length_exceeded"
                    ) from exc
                if plan.reset_first:
                    await self._reset_context()
                    ledger.forget(self._unit)
                prompt = plan.text
            for image in images:
                # The image goes first and is consumed by the next text (protocol §5.3).
                await self._unit.infer_base64_stream(
                    base64.b64encode(image).decode("ascii"),
                    object="vlm.jpeg.base64.stream",
                    chunk_chars=_IMAGE_CHUNK_CHARS,
                )
            data, obj = self._text_input(prompt)
            pieces: list[str] = []
            async with aclosing(
                self._unit.generate(data, object=obj, idle_timeout=self._idle_timeout)
            ) as deltas:
                async for delta in deltas:
                    answered = True
                    pieces.append(delta)
                    yield delta
            reply = "".join(pieces)  # the device ended the generation itself
            if plan is not None and turn is not None:
                self.stopped_at_capacity = turn.count(reply) >= plan.room - 1
        except Base64DecodeError as exc:
            raise BackendInvalidRequest(
                f"the device could not decode the image: {exc.message}", param="messages"
            ) from exc
        except (DeviceTimeout, ConnectionLost) as exc:
            raise BackendUnavailable(f"the device stopped answering: {exc}") from exc
        except DeviceError as exc:
            raise BackendUnavailable(f"the device failed the generation: {exc}") from exc
        finally:
            if ledger is not None and plan is not None:
                ledger.record(self._unit, turn, plan, reply)
            if images and not answered:
                # An image may still wait on the device for its text: this unit must not serve again.
                self._unit.mark_broken()


class StackFlowChatBackend:
    def __init__(
        self,
        pool: UnitSource,
        model: ModelDescriptor,
        *,
        pool_size: int | None,
        idle_timeout: float,
        prefill_len: int | None = None,
    ) -> None:
        self.pool = pool
        self.model = model
        self.pool_size = pool_size
        self.idle_timeout = idle_timeout
        info = chat_info_for(model)
        # The config knows better than the descriptor for chunked-prefill models (protocol-notes.md §10).
        self.info = replace(info, prefill_len=prefill_len) if prefill_len else info
        self.conversations = (
            ConversationLedger(
                capacity=model.context_len,
                chunk=model.prefill_chunk,
                decode_limit=model.kv_cache_len or model.context_len,
            )
            if model.context_len
            else None
        )

    async def reset_context(self, unit: Unit) -> None:
        """A unit of a ctx model back to its system prompt alone, if its cache may hold anything else
        (a leased unit about to be chained on the device: realtime/chain.py)."""
        ledger = self.conversations
        if ledger is None or ledger.is_fresh(unit):
            return
        await _DeviceChatUnit(unit, self.info.vision, self.idle_timeout)._reset_context()
        ledger.forget(unit)

    @asynccontextmanager
    async def lease(
        self, settings: UnitSettings, *, conversation: str | None = None
    ) -> AsyncIterator[_DeviceChatUnit]:
        """`conversation`: the digest of the messages before the new one; on a ctx model a unit whose
        cache holds it is preferred (any unit is still correct: it is reset and the history replayed)."""
        setup = chat_setup(self.model, settings)
        ledger = self.conversations
        prefer: Callable[[Unit], bool] | None = None
        if ledger is not None and conversation is not None:
            key = conversation

            def prefer(unit: Unit) -> bool:
                return ledger.holds(unit, key)

        async with device_lease(
            self.pool, self.model, setup, pool_size=self.pool_size, prefer=prefer
        ) as unit:
            yield _DeviceChatUnit(unit, self.info.vision, self.idle_timeout, ledger)
