"""The bit instructions of the kernels (core.compression.bits): compiled, each variant gives
what the plain Python body gives."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from core.compression import bits

words = st.integers(0, 2**64 - 1)


@njit
def _counted(word):
    return bits.trailing_zeros(word) if word else -1, bits.popcount(word)


@njit
def _by_loop(word, base, out, at):
    bits.spread_highs_loop(word, base, out, at)


@njit
def _by_compress(word, base, out, at):
    bits.spread_highs_compress(word, base, out, at)


def expected(word: int, base: int, at: int) -> np.ndarray:
    out = np.zeros(at + 64, np.uint8)
    bits.spread_highs(word, base, out, at)
    return out[at : at + word.bit_count()]


@settings(max_examples=300, deadline=None)
@given(words)
def test_counts_as_python(word):
    tz, count = _counted(np.uint64(word))
    assert count == word.bit_count()
    assert tz == (bits.trailing_zeros(word) if word else -1)


@pytest.mark.parametrize("variant", ["loop", "compress"])
@settings(max_examples=300, deadline=None)
@given(word=words, base=st.integers(-200, 200), at=st.integers(0, 70))
def test_high_parts_as_python(variant, word, base, at):
    if variant == "compress" and not bits.HAS_BYTE_COMPRESS:
        pytest.skip("this CPU has no byte compress (AVX-512 VBMI2)")
    out = np.zeros(at + 64, np.uint8)
    (_by_loop if variant == "loop" else _by_compress)(np.uint64(word), base, out, at)
    assert np.array_equal(out[at : at + word.bit_count()], expected(word, base, at))
    assert not out[:at].any()  # nothing before `at` is written
