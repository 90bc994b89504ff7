"""Whatever bytes arrive, decode returns a valid payload or raises InvalidPayload."""

import struct

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.signing import HmacSigner, HmacVerifier
from core import codec
from core.codec import Expected, InvalidPayload, PayloadMeta
from core.compression import default_compressor

SHAPES = {"w": (32, 16), "b": (16,), "c": (5, 3)}
META = PayloadMeta(window=1, uid=2, hotkey="hk", global_step=3, version="1")
COMPRESSOR = default_compressor()
EXPECTED = Expected(version="1", codec=COMPRESSOR, shapes=SHAPES, window=1, uid=2)
SIGNED_EXPECTED = Expected(
    version="1", codec=COMPRESSOR, shapes=SHAPES, require_signature=True, hotkey="hk"
)
VERIFIER = HmacVerifier({"hk": b"k"})
_gen = torch.Generator().manual_seed(0)
GRADS = {n: torch.randn(s, generator=_gen) for n, s in SHAPES.items()}
GOOD = codec.encode(COMPRESSOR.encode(GRADS), META)
SIGNED = codec.encode(COMPRESSOR.encode(GRADS), META, signer=HmacSigner(b"k"))
REFERENCE = codec.decode(SIGNED, SIGNED_EXPECTED, verifier=VERIFIER)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(data: bytes, expected: Expected = EXPECTED, verifier=None):
    try:
        return codec.decode(data, expected, verifier=verifier)
    except InvalidPayload as err:
        assert err.reason != "malformed", err  # every defect has a specific reason
        return err


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_are_rejected(data):
    assert isinstance(outcome(data), InvalidPayload)


@FUZZ
@given(st.binary(max_size=512), st.integers(0, 1 << 64 - 1))
def test_random_header_length_is_bounded(tail, n):
    assert isinstance(outcome(struct.pack("<Q", n) + tail), InvalidPayload)


@FUZZ
@given(st.integers(0, len(GOOD) - 1))
def test_every_truncation_is_rejected(cut):
    assert isinstance(outcome(GOOD[:cut]), InvalidPayload)


@FUZZ
@given(st.lists(st.integers(0, len(GOOD) * 8 - 1), min_size=1, max_size=8))
def test_bit_flips_never_escape_as_other_exceptions(bits):
    data = bytearray(GOOD)
    for bit in bits:
        data[bit // 8] ^= 1 << (bit % 8)
    result = outcome(bytes(data))
    if not isinstance(result, InvalidPayload):
        COMPRESSOR.decode(result.compressed)  # what passed validation decodes cleanly


@FUZZ
@given(st.lists(st.integers(0, len(SIGNED) * 8 - 1), min_size=1, max_size=4))
def test_bit_flips_of_signed_payloads_are_rejected_or_harmless(bits):
    data = bytearray(SIGNED)
    for bit in bits:
        data[bit // 8] ^= 1 << (bit % 8)
    result = outcome(bytes(data), SIGNED_EXPECTED, VERIFIER)
    if not isinstance(result, InvalidPayload):
        # only a flip that changes nothing signed (e.g. header whitespace) can pass
        assert result.meta == REFERENCE.meta
        for name, t in REFERENCE.compressed.tensors.items():
            assert torch.equal(result.compressed.tensors[name], t)


@FUZZ
@given(st.binary(min_size=1, max_size=64), st.integers(0, len(GOOD)))
def test_spliced_bytes_are_rejected_or_valid(chunk, at):
    result = outcome(GOOD[:at] + chunk + GOOD[at + len(chunk) :])
    if not isinstance(result, InvalidPayload):
        COMPRESSOR.decode(result.compressed)
