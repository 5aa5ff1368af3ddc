"""The KV cache of a "ctx" llm/vlm unit (`LLM_CTX`), as StackFlow dev and axcl keep it across inferences.

What the device does (dev @865ca0e, `projects/llm_framework/`; protocol-notes.md, note 15):
- setup prefills the system prompt (`GenerateKVCachePrefill`): the cache holds `system_tokens` positions;
- each inference prefills only the new turn, `<|im_start|>user\\n{text}<|im_end|>\\n<|im_start|>assistant\\n`
  (the tokenizer helper's `diff`), after the positions already used, then generates after it; the
  positions used afterwards are old + turn + generated (`GetKVCache` reads them off the decode mask);
- `SetKVCache` refuses a turn that would pass the largest prefill group, or that is longer than the room
  left rounded down to whole prefill chunks; the unit then resets to the system prompt WITHOUT telling
  anyone and answers the turn from there (`main_llm/src/main.cpp` 357-365): the silent reset;
- the input text `reset` (exactly) clears the cache and answers "Context has been reset." (the stream
  format sends only the finish message, with an empty delta).

Token counts here come from the engine's own counter of the templated prompt, so they follow the Qwen
tokenizer where the device uses it; the emulator does not reproduce the tokenizer helper's drift (it
re-tokenizes the reply text, the device keeps the generated tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stackflow_openai.stackflow.models import ModelDescriptor

__all__ = ["MESSAGE_MARKERS", "RESET_REPLY", "TURN_MARKERS", "KvContext"]

# <|im_start|> user \n ... <|im_end|> \n <|im_start|> assistant \n: the markers around one user turn.
TURN_MARKERS = 8
# <|im_start|> role \n ... <|im_end|> \n: the markers around one earlier message re-prefilled whole.
MESSAGE_MARKERS = 5
RESET_REPLY = "Context has been reset."


@dataclass(slots=True)
class KvContext:
    capacity: int  # largest prefill group: history + new turn must fit (models.ModelDescriptor.context_len)
    decode_limit: int  # the decode mask: no position at or beyond it is generated (`--kv_cache_len`)
    chunk: int  # prefill chunk (`_pNNN_`): a turn may be at most the room left rounded down to it
    system_tokens: int = 0
    used: int = 0  # positions in the cache
    history: list[tuple[str, str]] = field(default_factory=list)
    silent_resets: int = 0  # turns the device answered after silently dropping the history

    @classmethod
    def for_model(cls, model: ModelDescriptor) -> KvContext:
        return cls(model.context_len, model.kv_cache_len or model.context_len, model.prefill_len or 128)

    def start(self, templated_empty_turn: int) -> None:
        """After setup: the cache holds the system block. `templated_empty_turn` is the engine's count of
        the system prompt templated with an empty user turn and the generation prompt (the tokenizer
        helper's `reset` drops both: `[:-3]` of a system-only template with the generation prompt)."""
        self.system_tokens = max(0, templated_empty_turn - TURN_MARKERS)
        self.reset()

    def reset(self) -> None:
        self.used = self.system_tokens
        self.history.clear()

    def turn_tokens(self, templated_turn: int, templated_empty_turn: int) -> int:
        """Positions one new user turn prefills: its text plus the turn markers."""
        return templated_turn - templated_empty_turn + TURN_MARKERS

    def admit(self, turn_tokens: int) -> bool:
        """`SetKVCache`'s test: False means the device would refuse the turn (and silently reset)."""
        room = self.capacity - self.used
        whole_chunks = room - room % self.chunk if room > 0 else 0
        return self.used + turn_tokens <= self.capacity and turn_tokens <= whole_chunks

    def admit_or_reset(self, turn_tokens: int) -> None:
        if not self.admit(turn_tokens):
            self.silent_resets += 1
            self.reset()

    def new_tokens_allowed(self, turn_tokens: int) -> int:
        """Tokens the decode loop can produce after this turn (the first one comes from the prefill)."""
        return 1 + max(0, self.decode_limit - (self.used + turn_tokens))

    def record(self, text: str, reply: str, turn_tokens: int, generated: int) -> None:
        """After a run, finished or paused: the turn and what was generated stay in the cache."""
        self.used = min(self.decode_limit, self.used + turn_tokens + generated)
        self.history += [("user", text), ("assistant", reply)]
