"""Real multi-turn on "ctx" units: which conversation each unit's KV cache holds, and what to send.

A ctx model (`ModelDescriptor.context_len > 0`: `LLM_CTX` on the device) keeps every turn in its KV cache
until its input `reset`, or until a turn no longer fits, when it resets SILENTLY and answers from the
system prompt alone (protocol-notes.md, note 15). So the gateway must know, per unit, what is in there:

- a conversation is named by a digest chained over its messages (`conversation_key`); a unit's entry
  holds the digest of everything in its cache, and the positions used (counted with the model's
  tokenizer, plus a margin per turn for what the device's tokenizer helper does differently);
- a request whose messages before its last user message digest to what a unit holds sends that message
  alone (the cache already has the rest); anything else (another conversation, an edited or diverged
  one, a unit whose content is unknown) resets the unit first, then replays the conversation folded
  into one turn, as a single-turn unit gets it;
- a turn that would not fit, or would leave its answer less than ANSWER_RESERVE tokens below the decode
  mask, is never sent into that cache (that is where the device would drop the
  history unannounced): the unit is reset and the conversation replayed; a replay that cannot fit is
  a 400 `context_length_exceeded` before anything is sent;
- a generation that did not end on its own (paused at max_tokens or a stop sequence, cancelled,
  failed) leaves the cache holding text nobody will send back: the unit is marked unknown and reset
  before its next use. So no request can ever continue from another request's text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = [
    "ANSWER_RESERVE",
    "CTX_TURN_MARGIN",
    "RESET_INPUT",
    "TURN_MARKERS",
    "ConversationLedger",
    "ConversationTurn",
    "SendPlan",
    "chain_key",
    "conversation_key",
]

# <|im_start|> user \n ... <|im_end|> \n <|im_start|> assistant \n around one user turn (Qwen template).
TURN_MARKERS = 8
# Positions counted on top of our own count per turn: the device's tokenizer helper re-tokenizes the last
# reply inside the next turn's template and may merge differently; never let the estimate run short.
CTX_TURN_MARGIN = 16
RESET_INPUT = "reset"  # LLM_CTX's reset command: the whole input text, exactly
# Tokens a continued turn must leave for its answer (or max_tokens, if less) below the decode mask; with
# less, the unit is reset and the conversation replayed. Models whose mask equals their context (1023 on
# qwen3-1.7B-Int8-ctx-axcl, internvl3) would otherwise answer in a handful of tokens near a full cache.
ANSWER_RESERVE = 256


def chain_key(previous: str, role: str, text: str, images: Sequence[str] = ()) -> str:
    """The digest of a conversation after one more message, from the digest before it."""
    digest = hashlib.sha256(previous.encode("ascii"))
    digest.update(b"\x00" + role.encode("utf-8") + b"\x00")
    digest.update(text.encode("utf-8", "surrogatepass"))
    for image in images:
        digest.update(b"\x00image\x00" + image.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def conversation_key(system_prompt: str, messages: Sequence[tuple[str, str, Sequence[str]]]) -> str:
    """Digest of (role, text, image urls) messages under a system prompt; chain_key extends it."""
    key = chain_key("", "system", system_prompt)
    for role, text, images in messages:
        key = chain_key(key, role, text, images)
    return key


@dataclass(frozen=True, slots=True)
class ConversationTurn:
    """What a ctx unit needs to continue a conversation rather than replay it (built by the chat service)."""

    empty_key: str  # the conversation with no message yet: what a freshly set-up unit holds
    history_key: str  # every message before the new user message
    text: str  # the new user message alone
    system_tokens: int  # positions the system block takes in a reset cache
    text_tokens: int  # positions the new user message prefills (markers included)
    replay_tokens: int  # positions the folded replay (the job's prompt) prefills after a reset
    count: Callable[[str], int]  # tokens of generated text, with the model's tokenizer
    budget: int  # tokens the answer may have (max_tokens, clamped to what a replay leaves)
    images: tuple[str, ...] = ()  # the new message's image urls: such a turn is replayed after a reset

    @property
    def has_images(self) -> bool:
        return bool(self.images)


@dataclass(frozen=True, slots=True)
class SendPlan:
    reset_first: bool  # send `reset` before the text
    text: str  # what to send as the turn
    start: int  # positions used before the turn (after any reset)
    prefill: int  # positions the turn prefills
    continued: bool  # only the new message is sent: the cache holds the rest
    room: int  # tokens the device can generate before its decode mask (`--kv_cache_len`)


@dataclass(slots=True)
class _Held:
    key: str | None  # the conversation the cache holds; None: unknown, reset before any use
    used: int


class ConversationLedger:
    """Per unit of one ctx model: what its cache holds. The record lives on the unit (`context_state`), not
    here: several model entries (a configured name, the device's own, an alias) may lease the same units,
    and each must see what the others left in them."""

    def __init__(self, *, capacity: int, chunk: int, decode_limit: int) -> None:
        self.capacity = capacity  # history + turn positions before the device would reset
        self.chunk = chunk  # prefill chunk: a turn may be at most the room left rounded down to it
        self.decode_limit = decode_limit  # no token is generated at or beyond this position

    @staticmethod
    def _get(unit: object) -> _Held | None:
        held = getattr(unit, "context_state", None)
        return held if isinstance(held, _Held) else None

    @staticmethod
    def _set(unit: object, held: _Held | None) -> None:
        setattr(unit, "context_state", held)  # noqa: B010 - any unit-like object (the real one: stackflow.Unit)

    def holds(self, unit: object, key: str) -> bool:
        held = self._get(unit)
        return held is not None and held.key == key

    def fits(self, used: int, prefill: int) -> bool:
        """The device's own test (`SetKVCache`) with our margin: False = it would reset silently."""
        need = prefill + CTX_TURN_MARGIN
        room = self.capacity - used
        return room > 0 and need <= room - room % self.chunk

    def plan(self, unit: object, turn: ConversationTurn | None, replay: str) -> SendPlan:
        """What to send to `unit` for this request; raises ValueError when even a replay cannot fit."""
        held = self._get(unit)
        if turn is None:  # a request that is no chat turn (text completions, a trailing assistant message)
            reset = held is not None
            return SendPlan(reset, replay, 0, 0, continued=False, room=self.decode_limit)
        if held is None:  # freshly set up: the cache holds the system prompt alone
            held = _Held(turn.empty_key, turn.system_tokens)
        replay_room = self._room(turn.system_tokens, turn.replay_tokens)
        room = self._room(held.used, turn.text_tokens)
        if (
            not turn.has_images
            and held.key == turn.history_key
            and self.fits(held.used, turn.text_tokens)
            and room >= min(turn.budget, ANSWER_RESERVE)
        ):
            text = turn.text if turn.text != RESET_INPUT else turn.text + " "  # never the reset command
            return SendPlan(False, text, held.used, turn.text_tokens, continued=True, room=room)
        if not self.fits(turn.system_tokens, turn.replay_tokens):
            raise ValueError(
                f"the conversation needs {turn.replay_tokens} positions of this model's "
                f"{self.capacity}-token context (after the system prompt and a safety margin)"
            )
        clean = held.key == turn.empty_key and held.used == turn.system_tokens
        text = replay if replay != RESET_INPUT else replay + " "
        return SendPlan(
            not clean, text, turn.system_tokens, turn.replay_tokens, continued=False, room=replay_room
        )

    def _room(self, used: int, prefill: int) -> int:
        return max(0, self.decode_limit - used - prefill)

    def record(self, unit: object, turn: ConversationTurn | None, plan: SendPlan, reply: str | None) -> None:
        """After the generation: `reply` is the whole text if the device ended it itself, else None."""
        if turn is None or reply is None:
            self._set(unit, _Held(None, self.capacity))  # unknown content: reset before any use
            return
        key = chain_key(chain_key(turn.history_key, "user", turn.text, turn.images), "assistant", reply)
        used = plan.start + plan.prefill + turn.count(reply) + CTX_TURN_MARGIN
        self._set(unit, _Held(key, used))

    def mark_unknown(self, unit: object) -> None:
        """Something else wrote into the cache (a device-side chain): reset it before any use."""
        self._set(unit, _Held(None, self.capacity))

    def is_fresh(self, unit: object) -> bool:
        """The cache holds the system prompt alone (just set up, or reset)."""
        return self._get(unit) is None

    def forget(self, unit: object) -> None:
        """The unit was reset: it holds the system prompt alone (its next plan treats it as fresh)."""
        self._set(unit, None)
