"""Builders of Templar-format payloads and of hand-made torch.save archives for the tests.

`golden_state_dict` is written from the format's documented facts (docs/templar.md,
"Payload format"), byte by byte, not from this project's writer.
"""

from __future__ import annotations

import io
import zipfile

import torch

from core.codec import Expected
from core.compression import TopKCompressor, TopKParams

SHAPES = {"layer.weight": (4, 8), "layer.bias": (8,)}
# chunks: weight 4 x 4 (two of them, 16 entries each), bias 1 x 4 (two); k = 2 everywhere
COMPRESSOR = TopKCompressor(TopKParams(target_chunk=4, topk=2, quantization_bins=4))
EXPECTED = Expected(version="2.1.3", codec=COMPRESSOR, shapes=SHAPES, window=42)
FIXTURE = "tests/fixtures/templar/gradient-42-7-v2.1.3.pt"


def pack12(pairs: list[tuple[int, int]]) -> bytes:
    """Templar's 12-bit packing: (a, b) -> a low byte, a high nibble | b low nibble << 4,
    b >> 4."""
    out = bytearray()
    for a, b in pairs:
        out += bytes([a & 0xFF, (a >> 8) | ((b & 0x0F) << 4), b >> 4])
    return bytes(out)


def golden_state_dict() -> dict:
    u8 = torch.uint8
    return {
        # weight chunk 0 keeps 5 and 10, chunk 1 keeps 0 and 15 (index = row * 4 + col)
        "layer.weightidxs": torch.tensor(list(b"\x05\xa0\x00\x00\xf0\x00"), dtype=u8),
        "layer.weightvals": torch.tensor([[[0, 3], [1, 2]]], dtype=u8),
        "layer.weightquant_params": (
            torch.tensor(0.25),
            0.9,
            2,
            torch.tensor([-1.5, -0.5, 0.5, 1.5]),
            torch.float32,
        ),
        # bias chunk 0 keeps 3 then 1 (Templar's top-k order is unsorted), chunk 1 keeps 2, 0
        "layer.biasidxs": torch.tensor(list(b"\x03\x10\x00\x02\x00\x00"), dtype=u8),
        "layer.biasvals": torch.tensor([[2, 2], [0, 1]], dtype=u8),
        "layer.biasquant_params": (
            torch.tensor(-0.5),
            0.9,
            2,
            torch.tensor([-2.0, -1.0, 1.0, 2.0]),
            torch.float32,
        ),
        "metadata": {"window": 42, "sample_digest": "0123abcd", "sample_count": 8},
    }


def golden_dense() -> dict[str, torch.Tensor]:
    w = torch.zeros(4, 8)
    w[1, 1], w[2, 2], w[0, 4], w[3, 7] = -1.25, 1.75, -0.25, 0.75
    b = torch.zeros(8)
    b[3], b[1], b[6], b[4] = 0.5, 0.5, -2.5, -1.5
    return {"layer.weight": w, "layer.bias": b}


def save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def golden_bytes() -> bytes:
    return save({"state_dict": golden_state_dict(), "global_step": 17})


def entries(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def archive(
    pickle_bytes: bytes,
    storages: dict[str, bytes] | None = None,
    *,
    prefix: str = "archive",
    extra: dict[str, bytes] | None = None,
    compression: int = zipfile.ZIP_STORED,
) -> bytes:
    """A torch.save-like zip around `pickle_bytes` (hand-made, for hostile cases)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        zf.writestr(f"{prefix}/data.pkl", pickle_bytes)
        zf.writestr(f"{prefix}/byteorder", b"little")
        for key, raw in (storages or {}).items():
            zf.writestr(f"{prefix}/data/{key}", raw)
        zf.writestr(f"{prefix}/version", b"3\n")
        for name, raw in (extra or {}).items():
            zf.writestr(name, raw)
    return buf.getvalue()


def replace_entry(data: bytes, name: str, raw: bytes) -> bytes:
    """`data` with entry `name` (suffix after the folder) replaced, other entries as they
    were."""
    old = entries(data)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for full, body in old.items():
            zf.writestr(full, raw if full.split("/", 1)[1] == name else body)
    return buf.getvalue()
