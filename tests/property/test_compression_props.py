import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core import codec
from core.codec import Expected, PayloadMeta
from core.compression import TopKCompressor, TopKParams, packing
from core.compression.chunking import as_matrix, chunk_k, largest_divisor_at_most

dims = st.integers(1, 40)
shapes = st.dictionaries(
    st.text("abcdefghij.", min_size=1, max_size=12),
    st.one_of(st.tuples(dims), st.tuples(dims, dims), st.just(())),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(
    shapes,
    st.integers(1, 16),
    st.integers(1, 40),
    st.sampled_from([0, 2, 4, 16]),
    st.integers(0, 2**31 - 1),
)
def test_round_trip_keeps_exactly_the_topk_entries(shape_map, target, topk, bins, seed):
    gen = torch.Generator().manual_seed(seed)
    grads = {n: torch.randn(s, generator=gen) for n, s in shape_map.items()}
    compressor = TopKCompressor(TopKParams(target_chunk=target, topk=topk, quantization_bins=bins))
    meta = PayloadMeta(window=0, uid=0, hotkey="h", global_step=0, version="1")
    data = codec.encode(compressor.encode(grads), meta)
    expected = Expected(version="1", codec=compressor, shapes=shape_map)
    assert len(data) <= expected.size_limit()
    out = codec.decode(data, expected).dense(compressor)
    for name, x in grads.items():
        rows, cols = as_matrix(tuple(x.shape))
        h = largest_divisor_at_most(rows, target)
        w = largest_divisor_at_most(cols, target)
        k = chunk_k(topk, h * w)
        chunks = x.reshape(rows // h, h, cols // w, w).permute(0, 2, 1, 3).reshape(-1, h * w)
        got = out[name].reshape(rows // h, h, cols // w, w).permute(0, 2, 1, 3)
        got = got.reshape(-1, h * w)
        threshold = chunks.abs().sort(dim=1, descending=True).values[:, k - 1 : k]
        kept_mask = got != 0
        if bins == 0:
            # exactly k entries per chunk, all among the largest, values exact
            assert (kept_mask.sum(1) == k).all()
            assert torch.equal(got[kept_mask], chunks[kept_mask])
            dropped = chunks.abs() > threshold
            assert (kept_mask | ~dropped).all()  # every entry strictly above the kth is kept
        else:
            # positions outside the top-k stay zero (a kept value may dequantise to zero)
            assert ((chunks.abs() >= threshold) | ~kept_mask).all()


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 16), st.data())
def test_packing_round_trips(width, data):
    codes = data.draw(st.lists(st.integers(0, (1 << width) - 1), max_size=300))
    t = torch.tensor(codes, dtype=torch.int64)
    packed = packing.pack(t, width)
    assert packed.numel() == packing.packed_nbytes(len(codes), width)
    assert torch.equal(packing.unpack(packed, len(codes), width), t)
