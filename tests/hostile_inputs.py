"""Small files that cost a lot: long silent FLACs and image "bombs", for the memory tests and
benchmarks/hostile_memory.py. Each is made in well under a second.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import av
import numpy as np

TESTS = Path(__file__).resolve().parent
_MINUTE_BLOCK = 60  # seconds encoded per frame handed to the encoder


def silent_flac(seconds: float, rate: int = 8_000) -> bytes:
    """`seconds` of digital silence as a mono FLAC: about 650 KB an hour at 8 kHz (0.5 s to make)."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate, layout="mono")
        block = np.zeros((1, rate * _MINUTE_BLOCK), np.int16)
        done = 0
        while done < seconds:
            samples = min(block.shape[1], round((seconds - done) * rate))
            frame = av.AudioFrame.from_ndarray(block[:, :samples], format="s16", layout="mono")
            frame.sample_rate = rate
            frame.pts = round(done * rate)
            container.mux(stream.encode(frame))
            done += samples / rate
        container.mux(stream.encode(None))
    return buffer.getvalue()


def without_length(flac: bytes) -> bytes:
    """The FLAC with its STREAMINFO sample count set to 0, which the format defines as "unknown" (a
    stream being recorded): FFmpeg then knows no duration until it has decoded the whole file."""
    assert flac[:4] == b"fLaC" and flac[4] & 0x7F == 0  # the first metadata block is STREAMINFO
    data = bytearray(flac)
    # STREAMINFO at byte 8: 10 bytes of block and frame sizes, 20 bits of rate, 3 of channels, 5 of
    # bits per sample, then the 36-bit sample count (the low 4 bits of byte 21 and bytes 22-25).
    data[21] &= 0xF0
    data[22:26] = bytes(4)
    return bytes(data)


def image_bomb(width: int, height: int, mode: str = "RGB", fmt: str = "PNG", **options: Any) -> bytes:
    """A one-colour image: a few hundred KB of file that decodes to width x height pixels."""
    from PIL import Image

    out = io.BytesIO()
    colour = 1 if mode in ("1", "P", "PA") else "white"
    Image.new(mode, (width, height), colour).save(out, format=fmt, **options)
    return out.getvalue()


def run_child(code: str, *args: str, timeout: float = 60.0) -> dict[str, Any]:
    """Run `code` in a fresh Python (this checkout's sources, these helpers importable) and return the
    JSON it prints last: memory measured there is the request's alone, not the test session's."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)])}
    done = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def reset_peak() -> None:
    """Start VmHWM afresh at the current RSS (Linux 4.0+), so a peak is one step's alone."""
    Path("/proc/self/clear_refs").write_text("5")


def memory_mib() -> dict[str, float]:
    """This process's resident set now (rss) and its peak so far (hwm), in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {"rss": int(fields["VmRSS"].split()[0]) / 1024, "hwm": int(fields["VmHWM"].split()[0]) / 1024}
