"""Bit packing of small unsigned codes into a uint8 stream.

Layout (one rule for every width): code i occupies bits [i*width, (i+1)*width) of a
little-endian bit stream in which stream bit j is bit (j % 8) of byte j // 8. The stream is
ceil(count * width / 8) bytes; unused high bits of the last byte are zero. For width 12 this
is Templar's layout (two indices in three bytes); for width 2 four codes share a byte.

Widths 12 and 1/2/4/8 have fast paths; any width 1..16 works through bit expansion.
"""

from __future__ import annotations

import torch

MAX_WIDTH = 16


def packed_nbytes(count: int, width: int) -> int:
    _check_width(width)
    return (count * width + 7) // 8


def bit_width(levels: int) -> int:
    """Bits needed for codes 0..levels-1 (at least 1)."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    return max(1, (levels - 1).bit_length())


def _check_width(width: int) -> None:
    if not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"bit width must be in 1..{MAX_WIDTH}, got {width}")


def pack(codes: torch.Tensor, width: int) -> torch.Tensor:
    """Pack non-negative integer codes (< 2**width, any shape) into uint8 (1-D)."""
    _check_width(width)
    flat = codes.reshape(-1).to(torch.int32)
    count = flat.numel()
    nbytes = packed_nbytes(count, width)
    if count == 0:
        return torch.zeros(0, dtype=torch.uint8, device=codes.device)
    if width == 12:
        return _pack12(flat)[:nbytes]
    if 8 % width == 0:
        per = 8 // width
        pad = (-count) % per
        if pad:
            flat = torch.cat([flat, flat.new_zeros(pad)])
        shifts = torch.arange(per, dtype=torch.int32, device=flat.device) * width
        return (flat.view(-1, per) << shifts).sum(dim=1, dtype=torch.int32).to(torch.uint8)
    return _pack_generic(flat, width, nbytes)


def unpack(packed: torch.Tensor, count: int, width: int) -> torch.Tensor:
    """The first `count` codes of a packed stream, as int64 (1-D).

    The stream must hold at least packed_nbytes(count, width) bytes.
    """
    _check_width(width)
    nbytes = packed_nbytes(count, width)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() < nbytes:
        raise ValueError(f"need a 1-D uint8 stream of >= {nbytes} bytes")
    if count == 0:
        return torch.zeros(0, dtype=torch.int64, device=packed.device)
    data = packed[:nbytes]
    if width == 12:
        return _unpack12(data)[:count]
    if 8 % width == 0:
        per = 8 // width
        shifts = torch.arange(per, dtype=torch.int32, device=data.device) * width
        codes = (data.to(torch.int32).unsqueeze(1) >> shifts) & ((1 << width) - 1)
        return codes.reshape(-1)[:count].to(torch.int64)
    return _unpack_generic(data, count, width)


def _pack12(flat: torch.Tensor) -> torch.Tensor:
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    pairs = flat.view(-1, 2)
    a, b = pairs[:, 0], pairs[:, 1]
    out = torch.empty((pairs.shape[0], 3), dtype=torch.int32, device=flat.device)
    out[:, 0] = a & 0xFF
    out[:, 1] = (a >> 8) | ((b & 0x0F) << 4)
    out[:, 2] = b >> 4
    return out.to(torch.uint8).reshape(-1)


def _unpack12(data: torch.Tensor) -> torch.Tensor:
    pad = (-data.numel()) % 3
    if pad:
        data = torch.cat([data, data.new_zeros(pad)])
    triples = data.view(-1, 3).to(torch.int64)
    out = torch.empty((triples.shape[0], 2), dtype=torch.int64, device=data.device)
    out[:, 0] = triples[:, 0] | ((triples[:, 1] & 0x0F) << 8)
    out[:, 1] = (triples[:, 1] >> 4) | (triples[:, 2] << 4)
    return out.reshape(-1)


def _pack_generic(flat: torch.Tensor, width: int, nbytes: int) -> torch.Tensor:
    shifts = torch.arange(width, dtype=torch.int32, device=flat.device)
    bits = ((flat.unsqueeze(1) >> shifts) & 1).reshape(-1)
    pad = nbytes * 8 - bits.numel()
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    byte_shifts = torch.arange(8, dtype=torch.int32, device=flat.device)
    return (bits.view(-1, 8) << byte_shifts).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def _unpack_generic(data: torch.Tensor, count: int, width: int) -> torch.Tensor:
    byte_shifts = torch.arange(8, dtype=torch.int32, device=data.device)
    bits = ((data.to(torch.int32).unsqueeze(1) >> byte_shifts) & 1).reshape(-1)
    bits = bits[: count * width].view(count, width).to(torch.int64)
    shifts = torch.arange(width, dtype=torch.int64, device=data.device)
    return (bits << shifts).sum(dim=1)
