"""Errors of the audio library. The services translate them into the HTTP layer's `APIError`s."""

from __future__ import annotations

__all__ = ["AudioDecodeError", "AudioError"]


class AudioError(Exception):
    """Base of audio processing failures."""

    def __init__(self, message: str, *, code: str = "audio_error") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class AudioDecodeError(AudioError):
    """Input audio is empty, not audio, in a format FFmpeg cannot read, or too long.

    `code` is one of: invalid_audio_file, empty_file, audio_too_long.
    """

    def __init__(self, message: str, *, code: str = "invalid_audio_file") -> None:
        super().__init__(message, code=code)
