import pytest
import torch

from core.compression import packing


def test_every_12bit_index_round_trips():
    codes = torch.arange(4096)
    for count in (4096, 4095):  # even and odd stream lengths
        packed = packing.pack(codes[:count], 12)
        assert packed.dtype == torch.uint8
        assert packed.numel() == packing.packed_nbytes(count, 12) == (count * 12 + 7) // 8
        assert torch.equal(packing.unpack(packed, count, 12), codes[:count])


def test_12bit_layout_is_templars_two_indices_in_three_bytes():
    packed = packing.pack(torch.tensor([0x123, 0x456]), 12)
    assert packed.tolist() == [0x23, 0x61, 0x45]


@pytest.mark.parametrize("width", range(1, 17))
def test_every_code_round_trips_at_every_width(width):
    codes = torch.arange(1 << width)
    codes = torch.cat([codes, codes.flip(0)[:-1]])  # odd length, both orders
    packed = packing.pack(codes, width)
    assert packed.numel() == packing.packed_nbytes(codes.numel(), width)
    assert torch.equal(packing.unpack(packed, codes.numel(), width), codes)


def test_two_bit_codes_pack_four_to_a_byte_low_bits_first():
    assert packing.pack(torch.tensor([1, 2, 3, 0, 3]), 2).tolist() == [0b00111001, 0b11]


def test_bit_width():
    assert [packing.bit_width(n) for n in (1, 2, 3, 4, 5, 16, 17, 256)] == [1, 1, 2, 2, 3, 4, 5, 8]


def test_empty_and_short_streams():
    assert packing.pack(torch.zeros(0, dtype=torch.int64), 12).numel() == 0
    assert packing.unpack(torch.zeros(0, dtype=torch.uint8), 0, 12).numel() == 0
    with pytest.raises(ValueError):
        packing.unpack(torch.zeros(2, dtype=torch.uint8), 2, 12)
    with pytest.raises(ValueError):
        packing.pack(torch.zeros(1), 17)
