"""How coarsely a lossy WebP file was quantised, read from its VP8 frame header (RFC 6386,
sections 9.2-9.6): the largest of its segments' quantiser indices (0-127), which libwebp derives
from the quality it was asked for (`service.imaging.evidence.webp_quality`). Only the first few
chunks' headers and the frame header's first bytes are read, through VP8's boolean decoder;
anything that is not a well-formed still lossy image gives None (an animated WebP too: its
frames have their own quantisers).
"""

from __future__ import annotations

import struct

#: The key frame's start code (RFC 6386, 9.1).
_START_CODE = b"\x9d\x01\x2a"


class _BoolDecoder:
    """VP8's boolean entropy decoder (RFC 6386, section 7), reading literals at probability ½."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 2:
            raise ValueError("no partition")
        self._data, self._next = data, 2
        self._value, self._range, self._bits = (data[0] << 8) | data[1], 255, 0

    def bit(self) -> int:
        split = 1 + (((self._range - 1) * 128) >> 8)
        if self._value >= split << 8:
            self._range -= split
            self._value -= split << 8
            bit = 1
        else:
            self._range = split
            bit = 0
        while self._range < 128:
            self._value, self._range = self._value << 1, self._range << 1
            self._bits += 1
            if self._bits == 8:
                self._bits = 0
                if self._next >= len(self._data):
                    raise ValueError("the frame header runs past its data")
                self._value |= self._data[self._next]
                self._next += 1
        return bit

    def literal(self, bits: int) -> int:
        value = 0
        for _ in range(bits):
            value = (value << 1) | self.bit()
        return value

    def signed(self, bits: int) -> int:
        magnitude = self.literal(bits)
        return -magnitude if self.bit() else magnitude

    def optional_signed(self, bits: int) -> int:
        """A flag, then (if set) a signed value; 0 without it."""
        return self.signed(bits) if self.bit() else 0


#: Chunks that may come before a still image's `VP8 ` chunk (VP8X, ICCP, ALPH) and a few
#: unknown ones; a file that puts more first is not read (its quality stays unknown).
_MAX_CHUNKS = 8


def _vp8_frame(data: bytes) -> bytes | None:
    """The payload of a still WebP's `VP8 ` (lossy) chunk; None for a lossless (`VP8L`) or
    animated (`ANMF`) image, or a container that ends, or is declared to end, before it."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    end = min(len(data), 8 + struct.unpack("<I", data[4:8])[0])
    at = 12
    for _ in range(_MAX_CHUNKS):
        if at + 8 > end:
            return None
        fourcc, size = data[at : at + 4], struct.unpack("<I", data[at + 4 : at + 8])[0]
        if at + 8 + size > end:
            return None
        if fourcc == b"VP8 ":
            return data[at + 8 : at + 8 + size]
        if fourcc in (b"VP8L", b"ANMF"):
            return None
        at += 8 + size + (size & 1)  # chunks are padded to an even size
    return None


def vp8_quantizer(data: bytes) -> int | None:
    """The largest quantiser index (0-127) of a lossy WebP file's key frame, None for any other
    file (lossless WebP included) or a header that cannot be read."""
    frame = _vp8_frame(data)
    if frame is None or len(frame) < 11 or frame[0] & 1 or frame[3:6] != _START_CODE:
        return None  # frame[0] & 1: not a key frame
    try:
        return _quantizer(_BoolDecoder(frame[10:]))
    except ValueError:
        return None


def _quantizer(header: _BoolDecoder) -> int:
    header.literal(2)  # colour space, clamping type
    segments: list[int] | None = None
    absolute = False
    if header.bit():  # segmentation enabled
        update_map, update_data = header.bit(), header.bit()
        if update_data:
            absolute = bool(header.bit())
            segments = [header.optional_signed(7) for _ in range(4)]
            for _ in range(4):
                header.optional_signed(6)  # loop filter levels
        if update_map:
            for _ in range(3):
                if header.bit():
                    header.literal(8)  # segment map probabilities
    header.literal(1 + 6 + 3)  # filter type, loop filter level, sharpness
    if header.bit() and header.bit():  # loop filter deltas enabled, and updated
        for _ in range(8):
            header.optional_signed(6)
    header.literal(2)  # log2 of the number of DCT partitions
    base = header.literal(7)  # y_ac_qi
    if segments is None:
        return base
    return max(min(max(q if absolute else base + q, 0), 127) for q in segments)
