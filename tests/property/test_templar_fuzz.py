"""Property tests of the torch.save reader and the Templar payload codec.

- on whatever torch.save writes for dicts of tensors and primitives, `tensors.load` gives
  what `torch.load(weights_only=True)` gives;
- on whatever bytes arrive (random, mutated archives, mutated or random pickles), the
  reader and the Templar decoder return a value or raise InvalidPayload with a specific
  reason, and nothing is unpickled;
- writing then reading a Templar payload gives the same gradient back.
"""

import io
import struct
import warnings
import zipfile

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.codec import Expected
from core.compression import TopKCompressor, TopKParams
from core.invalid import InvalidPayload
from core.templar import payload, tensors, writer
from tests.unit.templar_archives import EXPECTED, archive, entries, golden_bytes, replace_entry

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOLDEN = golden_bytes()
GOLDEN_PICKLE = next(v for k, v in entries(GOLDEN).items() if k.endswith("data.pkl"))

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8,
          torch.int8, torch.int16, torch.int32, torch.int64, torch.bool]  # fmt: skip


@st.composite
def tensor_values(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=3)))
    n = 1
    for d in shape:
        n *= d
    raw = draw(st.binary(min_size=n * 8, max_size=n * 8))
    base = torch.frombuffer(bytearray(raw or b"\x00" * 8), dtype=torch.uint8)
    t = base[: n * torch.empty((), dtype=dtype).element_size()].view(dtype).reshape(shape)
    if dtype.is_floating_point:
        t = torch.nan_to_num(t)  # NaN != NaN would fail the comparison, not the reader
    view = draw(st.sampled_from(["whole", "transpose", "slice"]))
    if view == "transpose" and t.dim() >= 2:
        t = t.transpose(0, 1)
    elif view == "slice" and t.dim() >= 1 and t.shape[0] > 1:
        t = t[1:]
    return t


primitives = (
    st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(min_size=1, max_size=8)  # torch.load refuses b"" (a bytes() global)
    | st.booleans()
    | st.none()
)
values = st.recursive(
    primitives | tensor_values(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def same(a, b) -> bool:
    if isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and torch.equal(a, b)
        )
    if isinstance(b, dict):
        return isinstance(a, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in b)
    if isinstance(b, list | tuple):
        pairs = zip(a, b, strict=False)
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in pairs)
    return type(a) is type(b) and a == b


@FUZZ
@given(st.dictionaries(st.text(max_size=6), values, max_size=4))
def test_reads_what_torch_load_reads(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    assert same(tensors.load(data), torch.load(io.BytesIO(data), weights_only=True))


def outcome(fn, data):
    try:
        return fn(data)
    except InvalidPayload as err:
        assert err.reason != "malformed", err  # every defect has a specific reason
        return err


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    assert isinstance(outcome(tensors.load, data), InvalidPayload)
    assert isinstance(outcome(lambda d: payload.decode(d, EXPECTED), data), InvalidPayload)


@FUZZ
@given(st.integers(0, len(GOLDEN) - 1), st.integers(1, 255))
def test_flipped_archive_byte(at, mask):
    data = bytearray(GOLDEN)
    data[at] ^= mask
    outcome(lambda d: payload.decode(d, EXPECTED), bytes(data))


@FUZZ
@given(st.data())
def test_mutated_pickle(data):
    body = bytearray(GOLDEN_PICKLE)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "splice"]))
        at = data.draw(st.integers(0, len(body) - 1))
        if kind == "flip":
            body[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del body[at : at + data.draw(st.integers(1, 16))]
        else:
            body[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        if not body:
            body = bytearray(b".")
    mutated = replace_entry(GOLDEN, "data.pkl", bytes(body))
    got = outcome(lambda d: payload.decode(d, EXPECTED), mutated)
    if not isinstance(got, InvalidPayload):  # only mutations that change nothing it reads
        assert got.meta.window == 42


# opcode snippets: every allowed opcode and some forbidden ones, with arguments
SNIPPETS = [
    b"(", b"t", b")", b"\x85", b"\x86", b"\x87", b"]", b"a", b"e", b"}", b"s", b"u", b"N",
    b"\x88", b"\x89", b"K\x01", b"M\x01\x02", b"J\x01\x02\x03\x04", b"\x8a\x02\x01\x02",
    b"G" + struct.pack(">d", 1.5), b"X\x01\x00\x00\x00a", b"\x8c\x01b", b"C\x01z",
    b"q\x00", b"q\x01", b"h\x00", b"h\x01", b"r\x00\x00\x00\x00", b"j\x00\x00\x00\x00",
    b"\x94", b"R", b"Q", b"\x93", b"ctorch._utils\n_rebuild_tensor_v2\n",
    b"ccollections\nOrderedDict\n", b"ctorch\nFloatStorage\n", b"ctorch\nfloat32\n",
    b"c_codecs\nencode\n", b"X\x07\x00\x00\x00storage", b"X\x03\x00\x00\x00cpu",
    b"X\x01\x00\x00\x000", b"X\x06\x00\x00\x00latin1",
    b"cos\nsystem\n", b"b", b"0", b"2", b"\x81", b"\x92", b"I1\n", b"i__main__\nX\n",
]  # fmt: skip


@FUZZ
@given(st.lists(st.sampled_from(SNIPPETS), max_size=40))
def test_random_opcode_streams(ops):
    body = b"\x80\x02" + b"".join(ops) + b"."
    outcome(tensors.load, archive(body, {"0": bytes(4)}))


shapes_st = st.dictionaries(
    st.sampled_from(["a.weight", "a.bias", "b.weight", "c"]),
    st.one_of(
        st.tuples(st.sampled_from([2, 4, 6, 8, 12, 16, 64, 96, 128])),
        st.tuples(st.sampled_from([1, 3, 4, 8, 70]), st.sampled_from([2, 4, 10, 64, 100])),
    ),
    min_size=1,
    max_size=4,
)


@FUZZ
@given(
    shapes_st,
    st.sampled_from([2, 4, 8, 32]),
    st.sampled_from([4, 8, 64]),
    st.sampled_from([2, 4, 16]),
    st.booleans(),
    st.integers(0, 2**31),
)
def test_write_then_read_gives_the_gradient_back(shapes, topk, chunk, bins, use_dct, seed):
    codec = TopKCompressor(
        TopKParams(target_chunk=chunk, topk=topk, quantization_bins=bins, use_dct=use_dct)
    )
    gen = torch.Generator().manual_seed(seed)
    comp = codec.encode({n: torch.randn(s, generator=gen) for n, s in shapes.items()})
    data = writer.encode(comp, codec, window=3, global_step=seed)
    got = payload.decode(data, Expected(version="v", codec=codec, shapes=shapes, window=3))
    assert got.meta.global_step == seed
    want, back = codec.decode(comp), codec.decode(got.compressed)
    for name in shapes:
        assert torch.equal(want[name], back[name]), name


ENTRY_NAMES = ["archive/data.pkl", "archive/byteorder", "archive/version", "archive/data/0",
               "archive/data/1", "archive/.data/serialization_id", "archive/data/x",
               "other/data.pkl", "archive/../x", "archive/data.pkl/"]  # fmt: skip


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(ENTRY_NAMES),
            st.binary(max_size=64) | st.sampled_from([b"little", b"3\n", GOLDEN_PICKLE]),
            st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
        ),
        max_size=8,
    )
)
def test_random_archives(items):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate names drawn here
        with zipfile.ZipFile(buf, "w") as zf:
            for name, body, method in items:
                zf.writestr(name, body, compress_type=method)
    outcome(tensors.load, buf.getvalue())
    outcome(lambda d: payload.decode(d, EXPECTED), buf.getvalue())
