"""A StackFlow device emulator: llm-sys on TCP and the llm, vlm, melotts, tts, cosy_voice, whisper, asr units.

It follows `stackflow-protocol.md` (§8 checklist) down to the device's bugs: brace-counted framing
with the `reace reset` line, the dispatch error codes, one global work_id counter from 1000, per-unit
instance limits, CMM memory, output that follows the last connection to speak to an instance,
instances that survive a disconnect, the units' own ways of reading requests (substring
extraction; see `rawjson`), and chained units: an asr/whisper, llm or vlm output reaches the units
linked to it (setup `input` or `link`) as on the device (`chain`, `units/links.py`). Engines
compute the answers; `ScriptedEngine` is a deterministic test tool, not a model.

    emu = Emulator(engine=ScriptedEngine(timing=Timing()), hwinfo_delay=0.05)
    await emu.start(host="127.0.0.1", port=0)   # emu.host, emu.port
    ...
    await emu.stop()

`board` ("ax630c" default, "ax650", "axcl") picks the catalogue, CMM memory and AXCL behaviours, and
`units` ("dev" default, "main"; axcl's own branch by default there) the unit generation (`boards.py`).
Other keyword arguments: `catalogue_dirs` (extra `mode_*.json` folders), `cmm_total_kib` (the board's
by default), `installed_units` (others answer -9), `engines={"name": engine}` (picked by a descriptor
field `emulator_engine`), `include_builtin_catalogue`, `neon_framing` (the ARM framer quirk, on by
default).

PRIVATE TEST EXTENSION - NOT PART OF STACKFLOW. A real device answers both actions with -3.

- `{"request_id":"1","work_id":"sys","action":"x_emulator_instances"}` →
  `object` "sys.x_emulator_instances", `data`: the list `Emulator.live_instances()` returns, one
  `{"work_id","unit","model","state","prefill_overflows","inputs"}` per registered instance (state is
  loading, ready, busy or exiting; inputs: its setup `input` and links), and an extra top-level key `totals`:
  `{"prefill_overflows","next_work_id","cmm_used","connections"}` (`Emulator.totals()`).
- `{"request_id":"2","work_id":"sys","action":"x_emulator_faults","data":{...}}` sets fields of
  `Faults` (drop_finish, hang_setup, fail_setup, fail_setup_code, close_mid_stream, hang,
  close_after_deltas, token_delay, malformed_answer); the reply's `data` is every fault field after
  the update. Unknown fields or bad values: -2 and nothing changes. In-process: `emu.faults.drop_finish = 2`.

Known simplifications: no microphone, speaker, camera, kws, vad, yolo or depth-anything units (their models
are listed by lsmode as on the device; a setup of them answers -9; links to them only bookkeep, as do
inputs that name a unit without a work_id number),
no RAW/BON binary framing, ctx models' KV cache counted without the tokenizer helper's drift
(units/kvcontext.py), and a connection whose reader stalls does not stall the unit (the device may
block up to 3 s per message).
"""

from stackflow_openai.emulator.catalogue import load_catalogue
from stackflow_openai.emulator.engines.scripted import ScriptedEngine, Timing
from stackflow_openai.emulator.faults import Faults
from stackflow_openai.emulator.server import Emulator, run_emulator

__all__ = ["Emulator", "Faults", "ScriptedEngine", "Timing", "load_catalogue", "run_emulator"]
