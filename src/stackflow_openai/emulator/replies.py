"""Reply lines as the daemon and the units build them (nlohmann `dump()` + `\\n`, protocol §1.3, §2.5)."""

from __future__ import annotations

import time
from typing import Any

from stackflow_openai.stackflow.codec import dump_reply

__all__ = ["MESSAGES", "build_reply"]

# Exact texts of the error codes the emulated daemon and units emit (protocol §2.5).
MESSAGES: dict[int, str] = {
    0: "",
    -2: "json format error",
    -3: "action match false",
    -4: "inference data push false",
    -5: "Model loading failed.",
    -6: "Unit Does Not Exist",
    -9: "unit call false",
    -10: "Not available at the moment.",
    -11: "Model run failed.",
    -18: "not have unit action!",
    -20: "link false",
    -21: "task full",
    -23: "Base64 decoding error.",
    -25: "Stream data index error.",
}


def build_reply(
    request_id: str,
    work_id: str,
    *,
    object: str = "None",
    data: Any = "None",
    code: int = 0,
    message: str | None = None,
) -> bytes:
    """One newline-terminated reply. Error replies keep `object`/`data` at "None" like the device.

    Raises UnicodeEncodeError when a string holds a lone surrogate: the device's `dump()` throws in
    that case too, and callers reproduce what the device does next (usually: nothing is sent).
    """
    text = MESSAGES.get(code, "") if message is None else message
    return dump_reply(
        {
            "created": int(time.time()),
            "data": data,
            "error": {"code": code, "message": text},
            "object": object,
            "request_id": request_id,
            "work_id": work_id,
        }
    )
