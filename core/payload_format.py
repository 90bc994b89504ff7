"""How a protocol profile puts a gradient on the wire: encode, decode, and the download bound.

`native` is this project's signed safetensors payload (core/codec.py); `templar` is
Templar's `torch.save` archive, read without unpickling (core/templar/). A profile
(core/profiles.py) names one, and the neurons and the gather use it without asking which.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from core import codec
from core.codec import Expected, Payload, PayloadMeta
from core.compression import Compressed, Compressor
from ports.signing import Signer, Verifier


class PayloadFormat(Protocol):
    name: str
    # Whether payloads carry a signature a receiver checks against the uploader's hotkey.
    signed: bool

    def encode(
        self, compressed: Compressed, compressor: Compressor, meta: PayloadMeta, signer: Signer
    ) -> bytes: ...

    def decode(
        self, data: bytes, expected: Expected, *, verifier: Verifier | None, on_loop: bool
    ) -> Payload:
        """The validated payload; any defect raises InvalidPayload."""
        ...

    def size_limit(self, expected: Expected) -> int:
        """The most bytes a payload for `expected` may have: the download bound."""
        ...


@attrs.frozen
class NativeFormat:
    name: str = "native"
    signed: bool = True

    def encode(
        self, compressed: Compressed, compressor: Compressor, meta: PayloadMeta, signer: Signer
    ) -> bytes:
        return codec.encode(compressed, meta, signer=signer)

    def decode(
        self, data: bytes, expected: Expected, *, verifier: Verifier | None, on_loop: bool
    ) -> Payload:
        return codec.decode(data, expected, verifier=verifier, on_loop=on_loop)

    def size_limit(self, expected: Expected) -> int:
        return expected.size_limit()


NATIVE = NativeFormat()
