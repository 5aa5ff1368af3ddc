"""Transcription languages: the codes whisper knows, and the names OpenAI's verbose_json uses.

The device's whisper unit looks the setup's `language` up in its own table of whisper's ISO-639-1
codes (`detect_language` in StackFlow's main_whisper) and, for any string it does not find, silently
transcribes Chinese (and converts it to simplified characters). "english", "EN", "en-US" or "auto"
would all do that, so the gateway turns what clients send into a bare code (`language_code`), and the
whisper backend refuses a code its table lacks (other units, e.g. sense-voice for `yue`, may know it).
"""

from __future__ import annotations

__all__ = ["LANGUAGE_NAMES", "WHISPER_LANGUAGES", "language_code", "language_name"]

_WHISPER_CODES = (
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi hr "
    "ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no oc "
    "pa pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo zh"
)
WHISPER_LANGUAGES = frozenset(_WHISPER_CODES.split())
# Codes → the names OpenAI's verbose_json uses (whisper's own names); codes not listed are echoed.
LANGUAGE_NAMES = {
    "en": "english", "zh": "chinese", "ja": "japanese", "ko": "korean", "de": "german", "fr": "french",
    "es": "spanish", "it": "italian", "pt": "portuguese", "ru": "russian", "nl": "dutch", "pl": "polish",
    "tr": "turkish", "ar": "arabic", "hi": "hindi", "vi": "vietnamese", "th": "thai", "id": "indonesian",
    "uk": "ukrainian", "sv": "swedish", "cs": "czech", "el": "greek", "he": "hebrew", "fi": "finnish",
    "da": "danish", "no": "norwegian", "hu": "hungarian", "ro": "romanian", "ms": "malay", "fa": "persian",
}  # fmt: skip
_CODES_BY_NAME = {name: code for code, name in LANGUAGE_NAMES.items()}


def language_code(value: str) -> str:
    """`value` as a bare language code: "en", "EN", "en-US", "zh_CN" and "english" are all "en".

    Raises ValueError for what is no language code at all."""
    text = value.strip().lower()
    code = _CODES_BY_NAME.get(text) or text.replace("_", "-").split("-")[0]
    if not (2 <= len(code) <= 3 and code.isascii() and code.isalpha()):
        raise ValueError(f"unknown language {value!r}: give an ISO-639-1 code such as en, de or zh")
    return code


def language_name(code: str | None) -> str:
    """The name verbose_json reports for a code; "unknown" when nobody said which language it was."""
    if not code:
        return "unknown"
    return LANGUAGE_NAMES.get(code, code)
