"""Templar's gradient payload as a `PayloadFormat` (core/payload_format.py) for the templar
profile. Templar's payloads carry no signature: the uploader is known only by the bucket it
was read from, as in Templar itself."""

from __future__ import annotations

from typing import cast

import attrs

from core.codec import Expected, Payload, PayloadMeta
from core.compression import Compressed, Compressor, TopKCompressor
from core.templar import payload, writer
from ports.signing import Signer, Verifier


@attrs.frozen
class TemplarFormat:
    name: str = "templar"
    signed: bool = False

    def encode(
        self, compressed: Compressed, compressor: Compressor, meta: PayloadMeta, signer: Signer
    ) -> bytes:
        return writer.encode(
            compressed,
            cast(TopKCompressor, compressor),
            window=meta.window,
            global_step=meta.global_step,
        )

    def decode(
        self, data: bytes, expected: Expected, *, verifier: Verifier | None, on_loop: bool
    ) -> Payload:
        return payload.decode(data, expected, on_loop=on_loop)

    def size_limit(self, expected: Expected) -> int:
        return payload.size_limit(expected)


TEMPLAR = TemplarFormat()
