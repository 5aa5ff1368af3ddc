"""An uploaded image → JPEG bytes for the device's VLM, in bounded memory.

The device's vision encoders take 364-448 px, yet a 170 KB PNG can hold 6300x6300 pixels: decoded whole,
then copied by each step (EXIF rotation, RGBA, a white background, RGB), it cost ~645 MB, and 8 at once
3.6 GB. So here:
- the decoded size is known from the header, before decoding, and its cost (`decode_cost`: what Pillow
  and the codec allocate, measured per format and mode, docs/performance.md) must fit `MAX_DECODE_BYTES`,
  or the image is refused with a 400 naming the limit in pixels for its format;
- JPEG is decoded at 1/2, 1/4 or 1/8 scale straight away (libjpeg's DCT scaling, Pillow's `draft`), so
  a 50 MP photo costs what a 0.8 MP one does; other formats are decoded whole, then shrunk first
  (`thumbnail` reduces by box averaging, then resamples), and every other step works on the small copy;
- after a large decode, the C heap's freed pages go back to the OS (`malloc_trim`): glibc keeps freed
  blocks of that size for reuse, which held 2.5 GB after 8 large images.
The caller bounds how many decodes run at once (ImageLoader).
"""

from __future__ import annotations

import ctypes
import io
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from stackflow_openai.errors import InvalidRequestError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["MAX_DECODE_BYTES", "MAX_IMAGE_SIDE", "decode_cost", "release_memory", "to_jpeg"]

MAX_IMAGE_SIDE = 1024  # the device's VLMs work at 364-448 px: larger only costs bandwidth and device memory
# What one decode may allocate (decode_cost). For square images that is up to 29 MP of PNG/BMP/TIFF in
# colour (5400x5400; Pillow keeps 4 bytes a pixel), 16.7 MP with alpha, 9 MP of WebP (4K passes), over
# 100 MP of grey or palette, 46 MP of progressive JPEG, and baseline JPEG up to Pillow's own limit of
# 179 MP (decoded at 1/8 scale). The 6300x6300 PNG of issue #13 would need 176 MiB: refused unread.
MAX_DECODE_BYTES = 160 * 1024 * 1024
_CODEC_BYTES = 4 * 1024 * 1024  # the codec's own state and row buffers (measured: up to 4 MiB)
_TRIM_ABOVE = 2 * 1024 * 1024  # smaller decodes (1 MP or less in colour) are left to the allocator
# Pillow's `reduce`/`resize` average pixel values: meaningless for palette indices and 1-bit images, and
# not implemented for 16-bit grey. These are sampled (nearest) down to twice the output size first.
_NEAREST_MODES = ("1", "P", "PA", "I;16", "I;16B", "I;16L", "I;16N")


def _invalid(param: str, message: str, code: str = "invalid_image") -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code=code)


def _bytes_per_pixel(mode: str) -> int:
    # Pillow stores 1-bit, grey and palette images a byte a pixel, 16-bit grey in two, all else in four.
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def decode_cost(image: Image.Image, source: tuple[int, int]) -> int:
    """Bytes that decoding and shrinking `image` (opened, draft applied, not loaded; `source` is its
    size in the file) will allocate at most at one time. Checked against measurements of each format
    and mode by tests/test_reliability_hostile_memory.py."""
    width, height = image.size
    per_pixel = _bytes_per_pixel(image.mode)
    if image.mode in ("RGBA", "LA"):
        per_pixel += 4  # resampling works on a premultiplied copy (RGBa, La)
    if image.format == "WEBP":
        per_pixel = 16  # libwebp's RGBA output, copied twice on its way into Pillow (measured: 15.2)
    cost = _CODEC_BYTES + width * height * per_pixel
    if image.format == "JPEG" and image.info.get("progressive"):
        # libjpeg holds all DCT coefficients (2 bytes each) of a progressive file, at full size.
        cost += _coefficient_bytes(image, source)
    if max(width, height) <= MAX_IMAGE_SIDE:
        return cost
    if image.mode in _NEAREST_MODES:
        # Sampled to twice the output size (a byte a pixel), converted there to 4 bytes (and, with
        # alpha, premultiplied: 4 more), then shrunk like any other image of that size.
        sampled = _sampled_size(image.size)
        pixels = sampled[0] * sampled[1]
        return cost + pixels * 9 + _resample_bytes(sampled, 4)
    return cost + _resample_bytes(image.size, 4 if per_pixel > 1 else 1)


def _resample_bytes(size: tuple[int, int], per_pixel: int) -> int:
    """What `thumbnail` with reducing_gap=2 allocates besides its input: the box-reduced copy (when the
    image is 4x the output or more), the horizontal pass and the output."""
    width, height = size
    out_w, out_h = _fitted(size)
    factor_x, factor_y = max(1, int(width / out_w / 2)), max(1, int(height / out_h / 2))
    reduced_w, reduced_h = -(-width // factor_x), -(-height // factor_y)
    reduced = reduced_w * reduced_h if factor_x > 1 or factor_y > 1 else 0
    return per_pixel * (reduced + out_w * reduced_h + out_w * out_h)


def _coefficient_bytes(image: Image.Image, source: tuple[int, int]) -> int:
    width, height = source
    layers = getattr(image, "layer", None) or [("", 1, 1, 0)] * len(image.getbands())
    h_max = max(layer[1] for layer in layers)
    v_max = max(layer[2] for layer in layers)
    return sum(
        2 * math.ceil(width * layer[1] / h_max) * math.ceil(height * layer[2] / v_max) for layer in layers
    )


def _pixel_limit(image: Image.Image, source: tuple[int, int], cost: int) -> str:
    # The limit in pixels of the file, for its format and mode: what a user can act on.
    per_pixel = cost / max(1, source[0] * source[1])
    megapixels = MAX_DECODE_BYTES / per_pixel / 1e6
    return f"about {megapixels:.1f} megapixels for a {image.format or 'this'} image in mode {image.mode}"


def to_jpeg(raw: bytes, param: str) -> bytes:
    """JPEG bytes for the device: JPEG input passes through untouched unless it is too large.

    Runs in a worker thread; Pillow is imported here, on the first image, not by a text-only gateway."""
    jpeg, cost = _convert(raw, param)
    # Here, once every object of the decode is gone (a WebP decoder keeps two frames of its own until
    # its image object is freed): what was freed can be given back.
    if cost > _TRIM_ABOVE:
        release_memory()
    return jpeg


def _convert(raw: bytes, param: str) -> tuple[bytes, int]:
    """(the JPEG, the bytes its decode was expected to cost)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.format == "JPEG" and image.mode in ("RGB", "L") and max(image.size) <= MAX_IMAGE_SIDE:
                image.load()  # decodes fully: a truncated or corrupt JPEG fails here, not on the device
                return raw, 0
            source = image.size
            if image.format == "JPEG":
                image.draft(None, _fitted(image.size))  # DCT scaling: only the needed resolution
            cost = decode_cost(image, source)
            if cost > MAX_DECODE_BYTES:
                raise _invalid(
                    param,
                    f"The image is too large to decode ({source[0]}x{source[1]} pixels): this server "
                    f"decodes at most {_pixel_limit(image, source, cost)}. Send a smaller image; the "
                    f"model sees at most {MAX_IMAGE_SIDE} px anyway.",
                    "image_too_large",
                )
            image.load()
            return _encode_jpeg(_shrunk(image)), cost
    except InvalidRequestError:
        raise
    except Image.DecompressionBombError as exc:  # beyond Pillow's own limit (179 MP): not even opened
        raise _invalid(param, f"The image is too large to decode: {exc}", "image_too_large") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise _invalid(param, f"The image could not be decoded: {exc}") from exc


def _fitted(size: tuple[int, int]) -> tuple[int, int]:
    """`size` scaled to fit MAX_IMAGE_SIDE, aspect kept (what `thumbnail` will produce)."""
    scale = min(1.0, MAX_IMAGE_SIDE / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _sampled_size(size: tuple[int, int]) -> tuple[int, int]:
    fitted = _fitted(size)
    return min(size[0], 2 * fitted[0]), min(size[1], 2 * fitted[1])


def _shrunk(image: Image.Image) -> Image.Image:
    """`image` (loaded) at most MAX_IMAGE_SIDE on its longest side, the large bitmap released."""
    from PIL import Image

    if max(image.size) <= MAX_IMAGE_SIDE:
        return image
    if image.mode in _NEAREST_MODES:
        # Sampled to twice the output size, then made averageable there (cheap), averaged down below.
        sampled = image.resize(_sampled_size(image.size), Image.Resampling.NEAREST)
        image.close()
        image = sampled.convert(_averageable(sampled))
    # Box-averages down by an integer factor first (reducing_gap), then resamples: fast, and the
    # copies it makes are of the reduced size. It replaces the image's bitmap in place.
    image.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE), reducing_gap=2.0)
    return image


def _averageable(image: Image.Image) -> str:
    if image.mode == "1":
        return "L"
    if image.mode.startswith("I;16"):
        return "I"
    return "RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB"


def _encode_jpeg(image: Image.Image) -> bytes:
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)  # phone photos: rotate now, the EXIF tag is not kept
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))  # transparency → white, not black
        background.paste(rgba, mask=rgba.getchannel("A"))
        image = background
    elif image.mode != "RGB":
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90)
    return out.getvalue()


def _malloc_trim() -> Callable[[int], int] | None:
    # The symbols the process has loaded, libc's among them: `ctypes.util.find_library("c")` would run
    # `ldconfig -p` in a subprocess at import, ~11 ms of every gateway's start for the same function.
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_TRIM = _malloc_trim()


def release_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc), after a decode that used a lot of it.

    glibc raises its mmap threshold to the size of the last large block freed (up to 32 MiB), so the
    bitmaps of later decodes come from the heap, and freed heap pages stay with the process."""
    if _TRIM is not None:
        _TRIM(0)
