"""SubRip (srt) and WebVTT renderings of timed text, as OpenAI returns them for transcriptions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Cue", "format_timestamp", "to_srt", "to_vtt"]


@dataclass(frozen=True, slots=True)
class Cue:
    start: float  # seconds
    end: float
    text: str


def format_timestamp(seconds: float, *, decimal: str) -> str:
    """HH:MM:SS<decimal>mmm; SRT uses ',' and WebVTT '.' before the milliseconds."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _clean(text: str) -> str:
    # A blank line ends a cue in both formats, so a cue's text must not contain one.
    lines = [line.strip() for line in text.strip().splitlines()]
    return "\n".join(line for line in lines if line)


def to_srt(cues: Iterable[Cue]) -> str:
    blocks = []
    for number, cue in enumerate((c for c in cues if _clean(c.text)), start=1):
        span = f"{format_timestamp(cue.start, decimal=',')} --> {format_timestamp(cue.end, decimal=',')}"
        blocks.append(f"{number}\n{span}\n{_clean(cue.text)}\n")
    return "\n".join(blocks)


def to_vtt(cues: Iterable[Cue]) -> str:
    blocks = ["WEBVTT\n"]
    for cue in cues:
        text = _clean(cue.text).replace("-->", "->")  # "-->" would be read as a timing line
        if text:
            span = f"{format_timestamp(cue.start, decimal='.')} --> {format_timestamp(cue.end, decimal='.')}"
            blocks.append(f"{span}\n{text}\n")
    return "\n".join(blocks)
