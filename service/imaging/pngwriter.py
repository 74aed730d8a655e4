"""The strip PNG writer: filters and compresses horizontal strips in parallel threads.

Pillow's PNG encoder runs on one core and tries every PNG filter on every row; on the service's
large outputs it is slower than the model on a GPU (docs/benchmarks.md, encode). This writer
produces the same image much faster:

* Every row gets the PNG "Up" filter (the row minus the row above it), computed with numpy. On
  upscaled pictures, whose neighbouring rows are alike, it compresses about as well as Pillow's
  per-row choice, and it is one vectorised subtraction instead of five trial filters.
* The rows are cut into strips that are deflated independently in a thread pool: numpy and the
  deflate libraries release the GIL, so the strips really run in parallel.
* The strips are joined into one valid zlib stream the way pigz does it: each strip is a raw
  deflate stream ended by a sync flush (which ends on a byte boundary and does not mark the last
  block), only the final strip is finished, and one zlib header and one Adler-32 of all the data
  (combined from the strips' own checksums) wrap the lot. Each strip is primed with the last
  32 KiB of the strip before it (`zdict`), which a decoder reading the joined stream has just
  seen, so cutting costs almost no compression.
* Deflate comes from ISA-L (`isal`, several times faster than zlib at its low levels) when it is
  installed, else from the standard library's zlib.

Pure numpy and the standard library (plus optional `isal`); no knowledge of HTTP or Pillow.
"""

from __future__ import annotations

import functools
import itertools
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from service.host import available_cpus

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: The iTXt keyword of XMP in PNG files.
XMP_KEYWORD = b"XML:com.adobe.xmp"
#: PNG colour type for each channel count: grey, grey + alpha, RGB, RGBA.
COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}
#: zlib stream header: deflate with a 32 KiB window, "fastest" level hint, valid check bits.
ZLIB_HEADER = b"\x78\x01"
#: Deflate's window: the most history a strip can refer back to.
WINDOW = 32 * 1024
_UP_FILTER = 2
_ADLER_BASE = 65521
#: Below this many raw bytes per strip, the thread hand-off costs more than it saves.
MIN_STRIP_BYTES = 256 * 1024


@dataclass(frozen=True)
class DeflateBackend:
    """A deflate implementation and the level it runs at.

    Attributes:
        name: `isal` or `zlib`, for reports.
        module: The module providing `compressobj`, `adler32` and `Z_SYNC_FLUSH`.
        level: Level in the module's own scale.
    """

    name: str
    module: ModuleType
    level: int

    def compressor(self, zdict: bytes | None):
        """A raw-deflate compressor (no zlib header or trailer), optionally primed."""
        args = (self.level, zlib.DEFLATED, -15)
        if zdict:
            return self.module.compressobj(*args, zdict=zdict)
        return self.module.compressobj(*args)


def _isal_zlib() -> ModuleType | None:
    try:
        from isal import isal_zlib
    except ImportError:  # optional: the standard library's zlib is the fallback
        return None
    return isal_zlib


def deflate_backend(level: int, prefer_isal: bool = True) -> DeflateBackend:
    """Chooses the deflate implementation for a zlib-style `level` (0-9).

    Level 0 stores the data uncompressed (zlib). With ISA-L available, levels 1-3 map to ISA-L's
    levels 1-3 and higher levels to ISA-L's 3 (its highest, comparable in size to zlib's 6);
    without it, zlib runs at the level given.

    Args:
        level: zlib compression level, 0-9.
        prefer_isal: Use ISA-L when it is installed.

    Returns:
        The backend to compress with.
    """
    if not 0 <= level <= 9:
        raise ValueError(f"compression level must be 0-9, got {level}")
    isal_zlib = _isal_zlib() if prefer_isal and level > 0 else None
    if isal_zlib is not None:
        return DeflateBackend("isal", isal_zlib, min(level, 3))
    return DeflateBackend("zlib", zlib, level)


def adler32_combine(adler1: int, adler2: int, length2: int) -> int:
    """Adler-32 of A + B from Adler-32 of A, Adler-32 of B and the length of B (zlib's formula).

    Python's zlib does not expose `adler32_combine`; computing it lets every strip checksum its
    own bytes in its own thread.
    """
    remainder = length2 % _ADLER_BASE
    sum1 = adler1 & 0xFFFF
    sum2 = (remainder * sum1) % _ADLER_BASE
    sum1 = (sum1 + (adler2 & 0xFFFF) + _ADLER_BASE - 1) % _ADLER_BASE
    sum2 = (
        sum2 + ((adler1 >> 16) & 0xFFFF) + ((adler2 >> 16) & 0xFFFF) + _ADLER_BASE - remainder
    ) % _ADLER_BASE
    return sum1 | (sum2 << 16)


def plan_strips(
    height: int, row_bytes: int, threads: int, min_strip_bytes: int = MIN_STRIP_BYTES
) -> list[tuple[int, int]]:
    """Cuts `height` rows into contiguous strips for `threads` workers.

    Two strips per thread balance the load when strips compress at different speeds; strips stay
    above `min_strip_bytes` so that small images are written in one piece, without threads.

    Returns:
        (first row, end row) pairs covering `[0, height)` in order.
    """
    if height < 1:
        raise ValueError(f"height must be positive, got {height}")
    by_size = max(1, (height * row_bytes) // max(1, min_strip_bytes))
    count = max(1, min(height, 2 * max(1, threads), by_size))
    bounds = np.linspace(0, height, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(kind))
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _filtered_strip(rows: np.ndarray, previous_row: np.ndarray | None) -> np.ndarray:
    """Rows (h, row_bytes) with the Up filter applied and a filter byte before each row."""
    height, row_bytes = rows.shape
    out = np.empty((height, row_bytes + 1), dtype=np.uint8)
    out[:, 0] = _UP_FILTER
    # uint8 subtraction wraps modulo 256, exactly as the PNG filter is defined. The image's first
    # row has a row of zeros above it, so "Up" leaves it unchanged.
    if previous_row is None:
        out[0, 1:] = rows[0]
    else:
        np.subtract(rows[0], previous_row, out=out[0, 1:])
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])
    return out


def _compress_strip(
    pixels: np.ndarray, start: int, end: int, backend: DeflateBackend, last: bool
) -> tuple[bytes, int, int]:
    """Filters and deflates rows `start:end`; returns (deflate bytes, Adler-32, raw length)."""
    rows = pixels[start:end].reshape(end - start, -1)
    previous_row = None if start == 0 else pixels[start - 1].reshape(-1)
    raw = _filtered_strip(rows, previous_row)
    zdict = None
    if start > 0:
        # The tail of the previous strip, filtered exactly as that strip filtered it, is the
        # history a decoder has when it reaches this strip.
        back = min(start, WINDOW // rows.shape[1] + 1)
        before = pixels[start - back : start].reshape(back, -1)
        above = None if start - back == 0 else pixels[start - back - 1].reshape(-1)
        zdict = _filtered_strip(before, above).reshape(-1)[-WINDOW:].tobytes()
    compressor = backend.compressor(zdict)
    flush = zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH
    data = compressor.compress(raw) + compressor.flush(flush)
    return data, backend.module.adler32(raw), raw.size


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    # One long-lived pool per size: requests share it, so concurrent encodes cannot multiply the
    # number of encoding threads beyond it.
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="png-strip")


def _header_chunks(
    width: int,
    height: int,
    channels: int,
    icc_profile: bytes | None,
    exif: bytes | None = None,
    xmp: bytes | None = None,
) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, COLOUR_TYPES[channels], 0, 0, 0)
    chunks = PNG_SIGNATURE + _chunk(b"IHDR", header)
    if icc_profile:
        # Same profile name as Pillow writes; compression method 0 (zlib).
        chunks += _chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile))
    if exif:
        chunks += _chunk(b"eXIf", exif)  # the TIFF structure, without JPEG's Exif header
    if xmp:
        # iTXt under the keyword XMP readers look for: uncompressed, no language, no
        # translated keyword, as Pillow and exiftool write it.
        chunks += _chunk(b"iTXt", XMP_KEYWORD + b"\x00\x00\x00\x00\x00" + xmp)
    return chunks


def _map(executor: Executor | None, tasks: list[tuple]) -> Iterator[tuple[bytes, int, int]]:
    if executor is None or len(tasks) == 1:
        return (_compress_strip(*task) for task in tasks)
    return executor.map(lambda task: _compress_strip(*task), tasks)


def encode_png_strips(
    pixels: np.ndarray,
    *,
    level: int = 1,
    icc_profile: bytes | None = None,
    threads: int = 0,
    prefer_isal: bool = True,
    min_strip_bytes: int = MIN_STRIP_BYTES,
    exif: bytes | None = None,
    xmp: bytes | None = None,
) -> bytes:
    """Encodes an 8-bit image as PNG, compressing strips of rows in parallel.

    Args:
        pixels: uint8 array (H, W) for grey, or (H, W, C) with C = 1 (grey), 2 (grey + alpha),
            3 (RGB) or 4 (RGBA).
        level: zlib-style compression level 0-9 (see `deflate_backend`).
        icc_profile: ICC profile to embed as an iCCP chunk.
        threads: Strip-compression threads; 0 means one per CPU available to the process.
        prefer_isal: Use ISA-L when installed (tests turn it off to cover zlib).
        min_strip_bytes: Smallest strip worth a thread (tests lower it to cut small images).
        exif: EXIF to embed as an eXIf chunk (a TIFF structure, no `Exif\0\0` header).
        xmp: An XMP packet to embed as an iTXt chunk.

    Returns:
        The PNG file.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in COLOUR_TYPES:
        raise ValueError(f"expected uint8 (H, W, 1-4) pixels, got {pixels.dtype} {pixels.shape}")
    height, width, channels = pixels.shape
    if height < 1 or width < 1:
        raise ValueError(f"cannot encode an empty image of shape {pixels.shape}")
    pixels = np.ascontiguousarray(pixels)
    backend = deflate_backend(level, prefer_isal)
    threads = threads or available_cpus()
    strips = plan_strips(height, width * channels, threads, min_strip_bytes)
    tasks = [
        (pixels, start, end, backend, index == len(strips) - 1)
        for index, (start, end) in enumerate(strips)
    ]
    executor = _pool(threads) if threads > 1 and len(tasks) > 1 else None

    parts = [_header_chunks(width, height, channels, icc_profile, exif, xmp)]
    adler = 1  # Adler-32 of no data
    for index, (data, strip_adler, length) in enumerate(_map(executor, tasks)):
        adler = adler32_combine(adler, strip_adler, length)
        payload = ZLIB_HEADER + data if index == 0 else data
        if index == len(tasks) - 1:
            payload += struct.pack(">I", adler)
        # One IDAT chunk per strip: PNG decoders concatenate consecutive IDATs.
        parts.append(_chunk(b"IDAT", payload))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)
