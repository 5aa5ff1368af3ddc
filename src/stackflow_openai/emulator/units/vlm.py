"""The vlm unit (`main_vlm`; protocol §5.3): the llm's generation, with images and no queue.

It generates inside its receive loop, so its next message waits; it gets the raw, still-escaped
characters from between the quotes (no unescape). A JPEG input is held, without a reply, until the next
text; a linked asr's final is inferred on the asr subscription's own thread (`task_asr_data`).
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

from stackflow_openai.emulator.engines.base import LlmSession
from stackflow_openai.emulator.rawjson import extract
from stackflow_openai.emulator.units.kvcontext import MESSAGE_MARKERS, KvContext
from stackflow_openai.emulator.units.links import USER
from stackflow_openai.emulator.units.llm import LlmInstance, LlmUnit, as_text, asr_text

__all__ = ["IMAGE_SYSTEM_PROMPT", "VlmInstance", "VlmUnit"]

# What the InternVL2/2.5 tokenizer scripts put in place of the system prompt when there is an image.
IMAGE_SYSTEM_PROMPT = "Please describe the image shortly."
_FIXED_IMAGE_PROMPT = ("internvl2-", "internvl2.5-")
# The vision input size (px) of each VLM model file on the emulated device.
VISION_INPUT_PX = {"internvl2.5-1B-364-ax630c": 364}


class VlmInstance(LlmInstance):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.image: bytes | None = None
        # The device runs user and asr inferences on their own receive threads, racing on one model;
        # the emulator runs them one after the other.
        self._model_lock = asyncio.Lock()

    def prompt_tokens(self, session: LlmSession, text: str, images: list[bytes]) -> int:
        assert self.model is not None
        if not images:
            return session.prompt_tokens(text)
        # InternVL: one token per 28x28 px of the vision model's input, whose size a device reads from
        # the model file (vpm_width/vpm_height in a setup are overwritten by it), not the descriptor.
        side = VISION_INPUT_PX.get(self.model.mode, 448)
        # InternVL2/2.5's tokenizer script (`encode_vpm`) replaces the setup's system prompt with its own.
        fixed = self.model.mode.startswith(_FIXED_IMAGE_PROMPT)
        text_tokens = session.prompt_tokens(text, IMAGE_SYSTEM_PROMPT if fixed else None)
        return text_tokens + (side // 28) ** 2 * len(images)

    def turn_tokens(self, session: LlmSession, context: KvContext, text: str, images: list[bytes]) -> int:
        if not images:
            return super().turn_tokens(session, context, text, images)
        # With images LLM_CTX prefills the tokenizer helper's whole template (`Encode_ctx`: token_ids, not
        # the diff): the system block and every earlier turn again, then this turn with its images.
        empty = session.prompt_tokens("")
        earlier = sum(session.prompt_tokens(said) - empty + MESSAGE_MARKERS for _, said in context.history)
        return self.prompt_tokens(session, text, images) + earlier

    async def on_user_data(self, object: str, data: str) -> None:
        payload = self.decode_common(object, data)
        if payload is None or self.state == "exiting":
            return
        if "jpeg" in object:
            # Held, without a reply, until the next text; a newer image replaces it.
            self.image = payload if isinstance(payload, bytes) else payload.encode("utf-8", "surrogatepass")
            return
        await self.infer(as_text(payload))  # raw text: the vlm does not unescape

    async def on_asr_data(self, object: str, data: str) -> None:
        """The vlm's `task_asr_data` calls `inference` inside the receive thread: no queue, and an empty
        finish is inferred too (only a non-finishing stream message is skipped)."""
        if "stream" in object and extract(data, "finish") != "true":
            return
        await self.infer(asr_text(object, data))

    async def infer(self, text: str) -> None:
        """`llm_task::inference`: with the held image, if any."""
        async with self._model_lock:
            if self.state != "exiting":
                await self._infer_locked(text)

    async def _infer_locked(self, text: str) -> None:
        images: list[bytes] = []
        if self.image is not None:
            if not await asyncio.to_thread(_decodable_image, self.image):
                return  # the request ends with no output, and the bad image stays (device bug)
            images, self.image = [self.image], None
        self._idle.clear()  # the vlm generates inside its receive loop: no queue of its own
        try:
            await self.generate(text, images)
        finally:
            self._idle.set()


def _decodable_image(data: bytes) -> bool:
    """`cv::imdecode` succeeds: Pillow can open and decode it."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            image.load()
        return True
    except Exception:
        return False


class VlmUnit(LlmUnit):
    name = "vlm"
    limit = 2
    user_tag = "vlm"
    instance_class = VlmInstance
    # main_vlm/src/main.cpp 840-869 and 897-923 (dev = main): no "whisper" at all.
    setup_routes = ((("vlm",), USER), (("asr",), "on_asr_data"), (("kws",), None), (("camera",), None))
    link_routes = ((("asr",), "on_asr_data"), (("kws",), None), (("camera",), None))
