"""Exception tree of the device client: one named exception per StackFlow error code (protocol §2.5)."""

from __future__ import annotations

__all__ = [
    "ActionMatchFalse",
    "Base64DecodeError",
    "ConnectionLost",
    "DeviceError",
    "DeviceTimeout",
    "FileError",
    "InferencePushFalse",
    "JsonFormatError",
    "LinkFalse",
    "ModelLoadFailed",
    "ModelRunFailed",
    "NoUnitAction",
    "NotAvailable",
    "ReaceReset",
    "StackFlowError",
    "StreamIndexError",
    "TaskFull",
    "UnitCallFalse",
    "UnitDoesNotExist",
    "UnitError",
    "error_for_code",
]


class StackFlowError(Exception):
    """Base of every error raised by the device client."""


class DeviceTimeout(StackFlowError, TimeoutError):
    """The device did not answer within the allowed time."""


class ConnectionLost(StackFlowError, ConnectionError):
    """The TCP connection to the device closed or broke."""


class DeviceError(StackFlowError):
    """The device answered with a non-zero error code. `message` is the device's own text."""

    code: int = 0

    def __init__(self, code: int, message: str, work_id: str = "", request_id: str = "") -> None:
        super().__init__(f"StackFlow error {code}: {message}" + (f" ({work_id})" if work_id else ""))
        self.code = code
        self.message = message
        self.work_id = work_id
        self.request_id = request_id


class ReaceReset(DeviceError):
    code = -1  # stray `}`: the daemon dropped the rest of that read


class JsonFormatError(DeviceError):
    code = -2


class ActionMatchFalse(DeviceError):
    code = -3


class InferencePushFalse(DeviceError):
    code = -4


class ModelLoadFailed(DeviceError):
    code = -5


class UnitDoesNotExist(DeviceError):
    code = -6


class UnitCallFalse(DeviceError):
    code = -9


class NotAvailable(DeviceError):
    code = -10


class ModelRunFailed(DeviceError):
    code = -11


class FileError(DeviceError):
    code = -17


class NoUnitAction(DeviceError):
    code = -18


class LinkFalse(DeviceError):
    code = -20


class TaskFull(DeviceError):
    code = -21


class UnitError(DeviceError):
    code = -22  # kws/audio errors; not emitted by the units this project drives


class Base64DecodeError(DeviceError):
    code = -23


class StreamIndexError(DeviceError):
    code = -25


_BY_CODE: dict[int, type[DeviceError]] = {
    cls.code: cls
    for cls in (
        ReaceReset,
        JsonFormatError,
        ActionMatchFalse,
        InferencePushFalse,
        ModelLoadFailed,
        UnitDoesNotExist,
        UnitCallFalse,
        NotAvailable,
        ModelRunFailed,
        FileError,
        NoUnitAction,
        LinkFalse,
        TaskFull,
        UnitError,
        Base64DecodeError,
        StreamIndexError,
    )
}


def error_for_code(code: int, message: str, work_id: str = "", request_id: str = "") -> DeviceError:
    """The named exception for a device error code (a plain DeviceError for codes not in §2.5)."""
    return _BY_CODE.get(code, DeviceError)(code, message, work_id, request_id)
