import io
import json
import pickle
import struct

import pytest
import safetensors.torch
import torch

from adapters.signing import HmacSigner, HmacVerifier
from core import codec
from core.codec import Expected, InvalidPayload, PayloadMeta
from core.compression import TopKCompressor, TopKParams, default_compressor
from tests.unit.compression_models import SHAPES, grads

VERSION = "1.2.0"
META = PayloadMeta(window=10, uid=3, hotkey="hk-3", global_step=42, version=VERSION)


def expected(**changes) -> Expected:
    fields = dict(version=VERSION, codec=default_compressor(), shapes=SHAPES, window=10, uid=3)
    fields.update(changes)
    return Expected(**fields)


@pytest.fixture(scope="module")
def compressed():
    return default_compressor().encode(grads(0))


@pytest.fixture(scope="module")
def payload(compressed) -> bytes:
    return codec.encode(compressed, META)


def reason(data, exp=None, **kwargs) -> str:
    with pytest.raises(InvalidPayload) as err:
        codec.decode(data, exp or expected(), **kwargs)
    return err.value.reason


def split(data: bytes) -> tuple[dict, dict[str, torch.Tensor]]:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    return header["__metadata__"], safetensors.torch.load(data)


def rebuild(data: bytes, meta=None, tensors=None) -> bytes:
    """The same payload with some metadata or tensors replaced (unsigned)."""
    metadata, loaded = split(data)
    metadata.update(meta or {})
    loaded.update(tensors or {})
    return safetensors.torch.save(
        loaded, metadata={k: v for k, v in metadata.items() if v is not None}
    )


def test_round_trip(compressed, payload):
    got = codec.decode(payload, expected())
    assert got.meta == META
    assert got.nbytes == len(payload)
    assert not got.signed
    c = default_compressor()
    want = c.decode(compressed)
    dense = got.dense(c)
    assert set(dense) == set(SHAPES)
    assert all(torch.equal(dense[n], want[n]) for n in SHAPES)
    assert all(torch.equal(v, codec.dense(got, c)[n]) for n, v in dense.items())


def test_payload_is_safetensors_with_documented_metadata(payload):
    metadata, tensors = split(payload)
    assert set(tensors) == {"idx", "val", "shift", "lookup"}
    assert metadata["schema"] == codec.SCHEMA
    assert metadata["window"] == "10" and metadata["uid"] == "3"
    assert json.loads(metadata["codec"])["topk"] == 64
    assert [p[0] for p in json.loads(metadata["params"])] == sorted(SHAPES)


def test_bytearray_and_memoryview_are_accepted(payload):
    assert codec.decode(bytearray(payload), expected()).meta == META
    assert codec.decode(memoryview(payload), expected()).meta == META


@pytest.mark.parametrize(
    "data,why",
    [
        ("not bytes", "not_bytes"),
        (b"", "bad_header"),
        (b"1234567", "bad_header"),
        (struct.pack("<Q", 1 << 40) + b"{}", "header_too_large"),
        (struct.pack("<Q", 100) + b"{}", "bad_header"),
        (struct.pack("<Q", 2) + b"[]", "bad_header"),
        (struct.pack("<Q", 4) + b"\xff\xfe{}", "bad_header"),
        (struct.pack("<Q", 2) + b"{}", "bad_metadata"),
    ],
)
def test_framing_errors(data, why):
    assert reason(data) == why


def test_size_limits(payload):
    assert reason(payload, expected(max_bytes=len(payload) - 1)) == "too_large"
    assert reason(payload, expected(max_bytes=1 << 20, max_header_bytes=64)) == "header_too_large"
    assert codec.decode(payload, expected(max_bytes=len(payload))).meta == META
    # the default limit is exact tensor bytes plus the header allowance
    exp = expected()
    assert exp.size_limit() == 8 + exp.header_limit() + default_compressor().estimate_bytes(SHAPES)
    assert exp.header_limit() < 32_768


def test_duplicate_json_keys_are_rejected(payload):
    (n,) = struct.unpack("<Q", payload[:8])
    header = payload[8 : 8 + n].decode()
    doubled = header.replace('{"', '{"__x__":1,"__x__":2,"', 1).encode()
    assert reason(struct.pack("<Q", len(doubled)) + doubled + payload[8 + n :]) == "bad_header"


@pytest.mark.parametrize(
    "change,why",
    [
        ({"schema": "other"}, "schema_mismatch"),
        ({"schema_version": "2"}, "schema_mismatch"),
        ({"version": "9.9.9"}, "version_mismatch"),
        ({"window": "11"}, "window_mismatch"),
        ({"window": "010"}, "bad_metadata"),
        ({"window": "-1"}, "bad_metadata"),
        ({"uid": "4"}, "uid_mismatch"),
        ({"global_step": "x"}, "bad_metadata"),
        ({"hotkey": ""}, None),
        ({"codec": "{"}, "bad_metadata"),
        ({"params": "[1]"}, "bad_metadata"),
        ({"uid": None}, "bad_metadata"),
    ],
)
def test_metadata_errors(payload, change, why):
    data = rebuild(payload, meta=change)
    if why is None:
        codec.decode(data, expected())
    else:
        assert reason(data) == why


def test_codec_parameters_must_equal_ours(payload):
    other = TopKCompressor(TopKParams(quantization_bins=8))
    assert reason(payload, expected(codec=other)) == "codec_mismatch"
    spec = dict(default_compressor().spec, topk=32)
    assert reason(rebuild(payload, meta={"codec": json.dumps(spec)})) == "codec_mismatch"


def test_window_uid_and_hotkey_are_optional_checks(payload):
    assert codec.decode(payload, expected(window=None, uid=None)).meta == META
    assert reason(payload, expected(window=11)) == "window_mismatch"
    assert reason(payload, expected(uid=4)) == "uid_mismatch"
    assert reason(payload, expected(hotkey="someone-else")) == "hotkey_mismatch"
    assert codec.decode(payload, expected(hotkey="hk-3")).meta == META


def test_parameter_set_and_shapes_must_match(payload):
    params = json.loads(split(payload)[0]["params"])
    assert reason(rebuild(payload, meta={"params": json.dumps(params[1:])})) == "missing_param"
    extra = [*params, ["extra", [2]]]
    assert reason(rebuild(payload, meta={"params": json.dumps(extra)})) == "unknown_param"
    twice = [*params, params[0]]
    assert reason(rebuild(payload, meta={"params": json.dumps(twice)})) == "bad_metadata"
    reshaped = [[n, [*s, 1]] if n == "norm.weight" else [n, s] for n, s in params]
    assert reason(rebuild(payload, meta={"params": json.dumps(reshaped)})) == "bad_shape"
    assert reason(payload, expected(shapes={**SHAPES, "more": (4,)})) == "missing_param"
    fewer = {n: s for n, s in SHAPES.items() if n != "scale"}
    assert reason(payload, expected(shapes=fewer)) == "unknown_param"


def test_one_expectation_checks_every_peer_after_the_first(payload):
    # The params check is remembered per expectation (and its per-peer copies) once passed:
    # a later payload with other params must still be refused.
    exp = expected()
    peer = exp.for_peer(10, 3, None)
    codec.decode(payload, peer)
    params = json.loads(split(payload)[0]["params"])
    bad = rebuild(payload, meta={"params": json.dumps(params[1:])})
    assert reason(bad, exp.for_peer(10, 3, None)) == "missing_param"
    assert codec.decode(payload, exp.for_peer(10, 3, None)).meta.uid == 3
    assert reason(payload, exp.for_peer(10, 4, None)) == "uid_mismatch"
    assert (exp.window, exp.uid) == (10, 3) and peer.layout() is exp.layout()
    # The codec text likewise: the same spec written another way still passes, another
    # spec after an accepted one is still refused.
    spec = json.loads(split(payload)[0]["codec"])
    spaced = rebuild(payload, meta={"codec": json.dumps(spec, indent=1)})
    assert codec.decode(spaced, exp.for_peer(10, 3, None)).meta.uid == 3
    other = rebuild(payload, meta={"codec": json.dumps(dict(spec, topk=32))})
    assert reason(other, exp.for_peer(10, 3, None)) == "codec_mismatch"
    assert codec.decode(payload, exp.for_peer(10, 3, None)).compressed.shapes is exp.wire_shapes()


def test_tensor_layout_is_checked(payload):
    _, tensors = split(payload)
    metadata = split(payload)[0]

    def only(ts):
        return safetensors.torch.save(ts, metadata=metadata)

    assert reason(only({k: v for k, v in tensors.items() if k != "shift"})) == "missing_tensor"
    assert reason(only({**tensors, "evil": torch.zeros(1)})) == "unknown_tensor"
    assert reason(only({**tensors, "shift": tensors["shift"].double()})) == "bad_dtype"
    assert reason(only({**tensors, "idx": tensors["idx"][:-3]})) == "bad_shape"
    assert reason(only({**tensors, "lookup": tensors["lookup"].view(-1)})) == "bad_shape"


def test_content_is_checked(payload):
    _, tensors = split(payload)
    lookup = tensors["lookup"].clone()
    lookup[0, 0] = float("nan")
    assert reason(rebuild(payload, tensors={"lookup": lookup})) == "non_finite"
    shift = tensors["shift"].clone()
    shift[-1] = float("inf")
    assert reason(rebuild(payload, tensors={"shift": shift})) == "non_finite"
    # every upper vector full of ones, or empty: never k entries in a chunk
    idx = torch.full_like(tensors["idx"], 0xFF)
    assert reason(rebuild(payload, tensors={"idx": idx})) == "index_count_mismatch"
    zeros = torch.zeros_like(tensors["idx"])
    assert reason(rebuild(payload, tensors={"idx": zeros})) == "index_count_mismatch"


def test_packed_indices_are_checked():
    packed = TopKCompressor(TopKParams(index_code="packed"))
    payload = codec.encode(packed.encode(grads(0)), META)
    _, tensors = split(payload)
    exp = expected(codec=packed)
    # "norm.weight" (64,) is a single chunk of 64 holding every index, then "odd.weight"
    # (30, 7) has one chunk of 210: index 4095 is out of range for every chunk of this model
    idx = torch.full_like(tensors["idx"], 0xFF)
    assert reason(rebuild(payload, tensors={"idx": idx}), exp) == "index_out_of_range"
    zeros = torch.zeros_like(tensors["idx"])
    assert reason(rebuild(payload, tensors={"idx": zeros}), exp) == "duplicate_index"


def test_truncated_payloads_are_rejected(payload):
    for cut in (1, 7, 8, 9, 100, len(payload) // 2, len(payload) - 1):
        assert reason(payload[:cut]) == "bad_header"
    assert reason(payload + b"\0") == "bad_header"


class _Marker:
    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_payload_is_rejected_without_being_unpickled(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    evil = _Marker()
    evil.path = str(marker)
    pickled = pickle.dumps(evil)
    buffer = io.BytesIO()
    torch.save({"idx": torch.zeros(3), "evil": evil}, buffer)
    assert not marker.exists()  # building them ran nothing

    def forbidden(*args, **kwargs):
        raise AssertionError("decode tried to unpickle")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    for data in (pickled, buffer.getvalue()):
        assert reason(data) in {"header_too_large", "bad_header"}
    assert not marker.exists()


def test_signed_round_trip_and_tampering(compressed):
    signer = HmacSigner(b"secret-3")
    verifier = HmacVerifier({"hk-3": b"secret-3", "hk-4": b"secret-4"})
    data = codec.encode(compressed, META, signer=signer)
    strict = expected(require_signature=True, hotkey="hk-3")
    got = codec.decode(data, strict, verifier=verifier)
    assert got.signed and got.meta == META
    # unsigned, or signed over different content, or with another key: rejected
    assert reason(codec.encode(compressed, META), strict, verifier=verifier) == "unsigned"
    assert reason(rebuild(data, meta={"global_step": "43"}), strict, verifier=verifier) == (
        "bad_signature"
    )
    _, tensors = split(data)
    val = tensors["val"].clone()
    val[0] ^= 1
    assert reason(rebuild(data, tensors={"val": val}), strict, verifier=verifier) == (
        "bad_signature"
    )
    other = codec.encode(compressed, META, signer=HmacSigner(b"secret-4"))
    assert reason(other, strict, verifier=verifier) == "bad_signature"
    assert reason(rebuild(data, meta={"signature": "zz"}), strict, verifier=verifier) == (
        "bad_signature"
    )
    assert reason(rebuild(data, meta={"signature_scheme": "rsa"}), strict, verifier=verifier) == (
        "bad_signature"
    )
    # signatures are optional when not required; a verifier still checks one that is present
    assert codec.decode(data, expected()).signed is False
    assert codec.decode(data, expected(), verifier=verifier).signed is True


def test_signature_requirements_are_configuration_errors():
    # A template may ask for signatures (each peer's copy names the hotkey), but decoding
    # against one would believe the payload's own claim of who signed it.
    template = expected(require_signature=True)
    verifier = HmacVerifier({})
    with pytest.raises(ValueError):
        codec.decode(b"", template, verifier=verifier)
    with pytest.raises(ValueError):
        codec.decode(b"", expected(require_signature=True, hotkey="hk-3"))
    assert template.for_peer(1, 3, "hk-3").hotkey == "hk-3"


def test_sr25519_signatures(compressed):
    pytest.importorskip("bittensor_core")
    from adapters.signing import Sr25519Signer, Sr25519Verifier

    alice, bob = Sr25519Signer.from_uri("//Alice"), Sr25519Signer.from_uri("//Bob")
    meta = PayloadMeta(window=10, uid=3, hotkey=alice.hotkey, global_step=1, version=VERSION)
    data = codec.encode(compressed, meta, signer=alice)
    verifier = Sr25519Verifier()
    strict = expected(require_signature=True, hotkey=alice.hotkey)
    assert codec.decode(data, strict, verifier=verifier).signed
    forged = codec.encode(compressed, meta, signer=bob)
    assert reason(forged, strict, verifier=verifier) == "bad_signature"
    assert not verifier.verify(b"x" * 32, b"y" * 64, "not-an-address")


def test_meta_and_expected_validate_their_fields():
    with pytest.raises(ValueError):
        PayloadMeta(window=-1, uid=0, hotkey="h", global_step=0, version=VERSION)
    with pytest.raises(ValueError):
        PayloadMeta(window=0, uid=0, hotkey="h", global_step=0, version="bad version")
    assert InvalidPayload("too_large", "x").reason == "too_large"
    with pytest.raises(ValueError):
        InvalidPayload("no_such_reason")
    err = pickle.loads(pickle.dumps(InvalidPayload("too_large", "big")))
    assert (err.reason, err.message) == ("too_large", "big")
