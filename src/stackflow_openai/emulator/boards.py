"""The boards the emulator plays, and the two generations of StackFlow units it can run.

A board is its model catalogue (`catalogue/<board>/`, read by catalogue.py: every descriptor of its
StackFlow branch byte for byte), its CMM memory, whether llm-sys runs on an AXCL host, and the unit
versions `sys.version2` lists.

- `ax630c`: Module LLM / LLM630 Compute Kit. Descriptors of StackFlow `dev` @865ca0e without an AX650
  suffix. CMM total from the device's `cmminfo` of protocol §3 (3145728 KiB).
- `ax650`: AI Pyramid (AX8850). Descriptors of `dev` named `*-ax650` (and `depth-anything-ax6350`, whose
  `mode` says ax650), plus the CPU-only ones any board runs (sherpa-ncnn, sherpa-onnx-kws, SummerTTS,
  silero-vad). CMM total: an assumption (4 GiB); `benchmark/RESULTS.md` (axcl branch) has no Pyramid
  figures for `qwen2.5-7B-Int4-ax650`, which needs 4335 MB of CMM on a Sipeed AX650N, so less than that.
- `axcl`: LLM-8850 card (AX8850 on PCIe) in a host. Every descriptor of the `axcl` branch @20079ff.
  `sys.cmminfo` reads a file an AXCL host lacks and answers uninitialised numbers
  (`axcl:main_sys/src/event_loop.cpp` 230-284); `sys.axcl_cmminfo` asks `axcl-smi` (294-369). CMM total:
  an assumption (7 GiB of the card's 8 GB).

Unit generations (`--units`): `dev` is StackFlow `dev`, `main` is `main` @d9084ba. The `axcl` board runs
its own branch's units unless told otherwise: version numbers of its `llm_pack.py`, and behaviours that
are `main`'s for tts (1.6) but `dev`'s for melotts (the extra end message) and asr (empty finals).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BOARDS", "GENERATIONS", "Board", "Generation", "board_profile"]


@dataclass(frozen=True, slots=True)
class Generation:
    """How the units of one StackFlow branch behave, and the versions their packages carry."""

    name: str
    # `projects/llm_framework/tools/llm_pack.py` of the branch, lines 376-391: binaries are named
    # llm_<unit>-<version> (create_bin_deb), which is what sys.version2 lists.
    versions: dict[str, str]
    # tts 1.7 (dev:main_tts/src/main.cpp 287-307, 442-467, 545-557): segments are sent flagged
    # finish:false, so non-stream output holds only the remainder, then an empty end message.
    tts_final_only: bool
    # melotts (dev:main_melotts/src/main.cpp 596-608, axcl 564-575): an empty finish:true message
    # after the remainder's, not only when there is no remainder (main 627-640).
    melotts_extra_end: bool
    # asr (dev:main_asr/src/main.cpp, diff against main): a final is sent even when empty, without the
    # appended "."; sense-voice sends one finish:false message per VAD segment, then the joined final.
    asr_empty_finals: bool


_DEV_VERSIONS = {"sys": "1.6", "kws": "1.11", "asr": "1.10", "llm": "1.12", "tts": "1.7", "melotts": "1.11",
                 "vlm": "1.11", "whisper": "1.8", "cosy_voice": "1.10"}  # fmt: skip
_MAIN_VERSIONS = {"sys": "1.6", "kws": "1.10", "asr": "1.8", "llm": "1.12", "tts": "1.6", "melotts": "1.10",
                  "vlm": "1.11", "whisper": "1.8", "cosy_voice": "1.10"}  # fmt: skip
_AXCL_VERSIONS = {"sys": "1.7", "kws": "1.10", "asr": "1.9", "llm": "1.12", "tts": "1.6", "melotts": "1.10",
                  "vlm": "1.12", "whisper": "1.8", "cosy_voice": "1.10"}  # fmt: skip

GENERATIONS = {
    "dev": Generation(
        "dev", _DEV_VERSIONS, tts_final_only=True, melotts_extra_end=True, asr_empty_finals=True
    ),
    "main": Generation(
        "main", _MAIN_VERSIONS, tts_final_only=False, melotts_extra_end=False, asr_empty_finals=False
    ),
    "axcl": Generation(
        "axcl", _AXCL_VERSIONS, tts_final_only=False, melotts_extra_end=True, asr_empty_finals=True
    ),
}


@dataclass(frozen=True, slots=True)
class Board:
    name: str
    description: str
    cmm_total_kib: int
    axcl: bool  # llm-sys on an AXCL host: garbage cmminfo, and axcl_cmminfo exists
    default_units: str


BOARDS = {
    "ax630c": Board("ax630c", "Module LLM / LLM630 (AX630C)", 3145728, axcl=False, default_units="dev"),
    "ax650": Board("ax650", "AI Pyramid (AX8850)", 4194304, axcl=False, default_units="dev"),
    "axcl": Board("axcl", "LLM-8850 card on an AXCL host", 7340032, axcl=True, default_units="axcl"),
}


def board_profile(board: str, units: str | None = None) -> tuple[Board, Generation]:
    """The board and unit generation by name; `units=None` is the board's own branch."""
    if board not in BOARDS:
        raise ValueError(f"unknown board {board!r}; known: {', '.join(BOARDS)}")
    name = units or BOARDS[board].default_units
    if name not in GENERATIONS:
        raise ValueError(f"unknown unit generation {name!r}; known: {', '.join(GENERATIONS)}")
    return BOARDS[board], GENERATIONS[name]
