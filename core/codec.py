"""The wire format: one safetensors file per gradient payload, validated before use.

    encode(compressed, meta, signer=None) -> bytes
    decode(data, expected, verifier=None) -> Payload      (raises only InvalidPayload)

A payload is untrusted input from an anonymous peer: nothing here unpickles, evaluates or
allocates in proportion to a number the peer chose before it is bounded. The layout, header
fields, check order and reasons are documented in docs/wire-format.md.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
import struct
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import safetensors.torch
import torch

from core import strict_json
from core.compression.base import Checked, Compressed, Compressor, Shape, Shapes, TensorSpec
from core.invalid import InvalidPayload
from core.keys import check_version
from ports.signing import Signer, Verifier

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "Expected",
    "InvalidPayload",
    "Payload",
    "PayloadMeta",
    "decode",
    "dense",
    "encode",
    "payload_digest",
]

SCHEMA = "templar-comms.gradient"
SCHEMA_VERSION = "1"
_DIGEST_DOMAIN = b"templar-comms/payload-digest/v1\n"
_SIGNATURE_KEYS = ("signature", "signature_scheme")
_REQUIRED_KEYS = ("schema", "schema_version", "version", "window", "uid", "hotkey",
                  "global_step", "codec", "params")  # fmt: skip
_INT_RE = re.compile(r"^(0|[1-9][0-9]{0,18})$")
_MAX_HOTKEY = 128
_MAX_SIGNATURE_HEX = 1024

_DTYPES: dict[str, torch.dtype] = {
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "BOOL": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


def _nonneg_int(instance, attribute, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{attribute.name} must be a non-negative int, got {value!r}")


def _hotkey(instance, attribute, value) -> None:
    if not isinstance(value, str) or len(value) > _MAX_HOTKEY:
        raise ValueError(f"hotkey must be a str of at most {_MAX_HOTKEY} characters")


@attrs.frozen
class PayloadMeta:
    """Who sent a payload, for which window, at which training step, under which protocol."""

    window: int = attrs.field(validator=_nonneg_int)
    uid: int = attrs.field(validator=_nonneg_int)
    hotkey: str = attrs.field(validator=_hotkey)
    global_step: int = attrs.field(validator=_nonneg_int)
    version: str = attrs.field(validator=lambda i, a, v: check_version(v))


@attrs.frozen
class Expected:
    """What the receiver accepts; everything `decode` checks a payload against.

    `max_bytes` None means: exactly the compressor's tensor bytes plus the header limit;
    `max_header_bytes` None means: 16 KiB plus a few bytes per parameter name and dimension.
    `window`/`uid`/`hotkey` None means: not checked. With `require_signature` the payload
    must be signed by `hotkey` (the one the metagraph lists for `uid`); a template without a
    hotkey may ask for signatures, its per-peer copies (`for_peer`) name the hotkey.
    """

    version: str = attrs.field(validator=lambda i, a, v: check_version(v))
    codec: Compressor
    shapes: Mapping[str, Shape] = attrs.field(
        converter=lambda s: {str(n): tuple(int(d) for d in v) for n, v in dict(s).items()}
    )
    window: int | None = None
    uid: int | None = None
    max_bytes: int | None = None
    max_header_bytes: int | None = None
    require_signature: bool = False
    hotkey: str | None = None

    # layout and size_limit are asked for every peer of a gather; both follow from the
    # fields above, which never change.
    _memo: dict = attrs.field(factory=dict, init=False, repr=False, eq=False)

    def for_peer(self, window: int, uid: int, hotkey: str | None) -> Expected:
        """This expectation for one peer's payload. Cheap (a gather asks it for every peer):
        the copy shares the layout and limits worked out already, which the three fields it
        sets do not affect, and skips converting the shapes again."""
        peer = copy.copy(self)
        for name, value in (("window", window), ("uid", uid), ("hotkey", hotkey)):
            object.__setattr__(peer, name, value)  # frozen: set once, before anyone sees it
        return peer

    def _derived(self, name: str, make: Callable[[], Any]) -> Any:
        found = self._memo.get(name)
        if found is None:
            found = self._memo[name] = make()
        return found

    def layout(self, codec: Compressor | None = None) -> dict[str, TensorSpec]:
        """The wire tensors of `codec` (default: ours) for these shapes."""
        if codec is None or codec is self.codec:
            return self._derived("layout", lambda: self.codec.layout(self.shapes))
        return self._derived(f"layout/{id(codec)}", lambda: codec.layout(self.shapes))

    def transition(self) -> tuple[Compressor, int] | None:
        """The previous wire format still accepted, and the first window it no longer is:
        the codec's `transition()` when it has one (`TopKCompressor`), else None."""
        own = getattr(self.codec, "transition", None)
        return own() if own is not None else None

    def wire_shapes(self) -> Shapes:
        """The shapes in wire order (by name), as every decoded `Compressed` carries them."""
        return self._derived("wire_shapes", lambda: Shapes(sorted(self.shapes.items())))

    def codec_spec(self) -> Any:
        """Our compressor's spec as a peer's `codec` metadata must parse to."""
        return self._derived("codec_spec", lambda: json.loads(_canonical(dict(self.codec.spec))))

    def header_limit(self) -> int:
        """`max_header_bytes`, or an allowance generous for these parameter names."""
        if self.max_header_bytes is not None:
            return self.max_header_bytes
        # names appear twice-escaped in the params JSON; 16 KiB covers fields and signature
        return self._derived(
            "header_limit",
            lambda: 16384 + sum(4 * len(n) + 16 * len(s) + 64 for n, s in self.shapes.items()),
        )

    def size_limit(self) -> int:
        if self.max_bytes is not None:
            return self.max_bytes

        def make() -> int:
            codecs = [self.codec]
            if (older := self.transition()) is not None:
                codecs.append(older[0])
            return 8 + self.header_limit() + max(c.estimate_bytes(self.shapes) for c in codecs)

        return self._derived("size_limit", make)


@attrs.frozen(eq=False)
class Payload:
    meta: PayloadMeta
    # The wire tensors as the compressor's checks passed them, with what those found (for
    # the running sum); None once a gather has prepared the peer and needs them no more.
    checked: Checked | None
    nbytes: int
    signed: bool

    @property
    def compressed(self) -> Compressed:
        assert self.checked is not None, "the payload's tensors were released"
        return self.checked.compressed

    def dense(
        self,
        compressor: Compressor,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> dict[str, torch.Tensor]:
        """The gradient as dense tensors of the parameter shapes."""
        return compressor.decode(self.compressed, device=device, dtype=dtype)


def dense(
    payload: Payload,
    compressor: Compressor,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    return payload.dense(compressor, device, dtype)


# -- encode ------------------------------------------------------------------------------


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def encode(compressed: Compressed, meta: PayloadMeta, *, signer: Signer | None = None) -> bytes:
    """The payload file for `compressed` sent by `meta.uid`; signed when `signer` is given."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in compressed.tensors.items()}
    metadata = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "version": meta.version,
        "window": str(meta.window),
        "uid": str(meta.uid),
        "hotkey": meta.hotkey,
        "global_step": str(meta.global_step),
        "codec": _canonical(dict(compressed.spec)).decode(),
        "params": _canonical([[n, list(s)] for n, s in compressed.shapes]).decode(),
    }
    if signer is not None:
        digest = payload_digest(metadata, tensors)
        metadata["signature"] = bytes(signer.sign(digest)).hex()
        metadata["signature_scheme"] = signer.scheme
    return safetensors.torch.save(tensors, metadata=metadata)


def payload_digest(metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> bytes:
    """sha256 over the metadata (signature fields excluded) and every tensor, in name order.

    Independent of how the safetensors header happens to be laid out, so a verifier hashes
    what it decoded, not the bytes it was sent.
    """
    h = hashlib.sha256(_DIGEST_DOMAIN)
    h.update(_canonical({k: v for k, v in metadata.items() if k not in _SIGNATURE_KEYS}))
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(b"\n" + _canonical([name, _DTYPE_NAMES[t.dtype], list(t.shape)]) + b"\n")
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.digest()


# -- decode ------------------------------------------------------------------------------


def decode(
    data: bytes, expected: Expected, *, verifier: Verifier | None = None, on_loop: bool = False
) -> Payload:
    """Validate `data` completely and return it; any defect raises InvalidPayload.

    `on_loop`: this runs on an event loop's thread (see `Compressor.validate`)."""
    if expected.require_signature and verifier is None:
        raise ValueError("require_signature needs a verifier")
    if expected.require_signature and expected.hotkey is None:
        # else the payload's own claim of who signed it would be believed
        raise ValueError("require_signature needs the expected hotkey")
    try:
        return _decode(data, expected, verifier, on_loop)
    except InvalidPayload:
        raise
    except Exception as exc:  # the last guard: no other exception type leaves decode
        raise InvalidPayload("malformed", f"{type(exc).__name__}: {exc}") from None


def _decode(data: bytes, expected: Expected, verifier: Verifier | None, on_loop: bool) -> Payload:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidPayload("not_bytes", f"payload is {type(data).__name__}, not bytes")
    data = bytes(data)
    limit = expected.size_limit()
    if len(data) > limit:
        raise InvalidPayload("too_large", f"{len(data)} bytes > limit {limit}")
    header, metadata = _read_header(data, expected.header_limit())
    meta, codec = _check_metadata(metadata, expected)
    layout = expected.layout(codec)
    _check_layout(header, layout)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:
        raise InvalidPayload("bad_header", f"safetensors rejected the file: {exc}") from None
    _check_loaded(tensors, layout)
    signed = _check_signature(metadata, tensors, expected, verifier)
    compressed = Compressed(spec=codec.spec, shapes=expected.wire_shapes(), tensors=tensors)
    checked = codec.validate(compressed, on_loop=on_loop)
    return Payload(meta=meta, checked=checked, nbytes=len(data), signed=signed)


def _read_header(data: bytes, max_header: int) -> tuple[dict[str, Any], dict[str, str]]:
    if len(data) < 8:
        raise InvalidPayload("bad_header", f"{len(data)} bytes: shorter than the length prefix")
    (n,) = struct.unpack("<Q", data[:8])
    if n > max_header:
        raise InvalidPayload("header_too_large", f"header of {n} bytes > limit {max_header}")
    if 8 + n > len(data):
        raise InvalidPayload("bad_header", f"header of {n} bytes but {len(data) - 8} follow")
    try:
        header = strict_json.loads(data[8 : 8 + n].decode("utf-8"))
    except RecursionError:
        raise InvalidPayload("too_deep", "header nests deeper than the parser allows") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidPayload("bad_header", f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise InvalidPayload("bad_header", "header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidPayload("bad_metadata", "no string-to-string __metadata__")
    for name, entry in header.items():
        if (
            not isinstance(entry, dict)
            or set(entry) != {"dtype", "shape", "data_offsets"}
            or not isinstance(entry["dtype"], str)
            or not _int_list(entry["shape"])
            or not _int_list(entry["data_offsets"])
            or len(entry["data_offsets"]) != 2
        ):
            raise InvalidPayload("bad_header", f"malformed header entry for tensor {name!r}")
    return header, metadata


def _int_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 62 for v in value
    )


def _int_field(metadata: Mapping[str, str], key: str) -> int:
    text = metadata[key]
    if not _INT_RE.fullmatch(text):
        raise InvalidPayload("bad_metadata", f"{key} is not a canonical non-negative integer")
    return int(text)


def _check_metadata(metadata: dict[str, str], expected: Expected) -> tuple[PayloadMeta, Compressor]:
    missing = [k for k in _REQUIRED_KEYS if k not in metadata]
    if missing:
        raise InvalidPayload("bad_metadata", f"metadata lacks {missing}")
    if metadata["schema"] != SCHEMA or metadata["schema_version"] != SCHEMA_VERSION:
        raise InvalidPayload(
            "schema_mismatch",
            f"schema {metadata['schema']!r} v{metadata['schema_version']!r}, "
            f"expected {SCHEMA!r} v{SCHEMA_VERSION}",
        )
    if metadata["version"] != expected.version:
        raise InvalidPayload(
            "version_mismatch", f"version {metadata['version']!r} != {expected.version!r}"
        )
    codec = _check_once(
        expected, "codec", metadata["codec"], lambda text: _check_codec(text, expected)
    )
    window = _int_field(metadata, "window")
    uid = _int_field(metadata, "uid")
    global_step = _int_field(metadata, "global_step")
    if expected.window is not None and window != expected.window:
        raise InvalidPayload("window_mismatch", f"window {window} != {expected.window}")
    if codec is not expected.codec:
        until = expected.transition()[1]
        if window >= until:
            raise InvalidPayload(
                "retired_codec", f"the previous codec is read below window {until}, not at {window}"
            )
    if expected.uid is not None and uid != expected.uid:
        raise InvalidPayload("uid_mismatch", f"uid {uid} != {expected.uid}")
    hotkey = metadata["hotkey"]
    if len(hotkey) > _MAX_HOTKEY:
        raise InvalidPayload("bad_metadata", "hotkey too long")
    if expected.hotkey is not None and hotkey != expected.hotkey:
        raise InvalidPayload("hotkey_mismatch", f"hotkey {hotkey!r} != {expected.hotkey!r}")
    _check_once(
        expected, "params", metadata["params"], lambda text: _check_params(text, expected.shapes)
    )
    meta = PayloadMeta(
        window=window,
        uid=uid,
        hotkey=hotkey,
        global_step=global_step,
        version=metadata["version"],
    )
    return meta, codec


def _check_once(expected: Expected, field: str, text: str, check: Callable[[str], Any]) -> Any:
    """`check(text)`, unless this expectation (or a per-peer copy of it) already passed this
    very text for `field`: honest peers all send the same canonical text. Returns what the
    check returned for it."""
    key = f"{field}_ok"
    known = expected._memo.get(key)
    if known is not None and known[0] == text:
        return known[1]
    result = check(text)
    expected._memo[key] = (text, result)
    return result


def _metadata_json(text: str, field: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:  # nesting a few thousand deep exhausts the parser's stack
        raise InvalidPayload("too_deep", f"{field} nests deeper than the parser allows") from None
    except ValueError:
        raise InvalidPayload("bad_metadata", f"{field} is not JSON") from None


def _check_codec(text: str, expected: Expected) -> Compressor:
    """The compressor whose spec the peer's `codec` is: ours, or the previous format while a
    transition is configured (its window is checked once the window is read)."""
    codec = _metadata_json(text, "codec")
    ours = expected.codec_spec()
    if codec == ours:
        return expected.codec
    older = expected.transition()
    if older is not None and codec == json.loads(_canonical(dict(older[0].spec))):
        return older[0]
    raise InvalidPayload("codec_mismatch", f"codec {codec!r} != ours {ours!r}")


def _check_params(text: str, shapes: Mapping[str, Shape]) -> None:
    params = _metadata_json(text, "params")
    if not isinstance(params, list) or not all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and _int_list(p[1])
        for p in params
    ):
        raise InvalidPayload("bad_metadata", "params is not a list of [name, shape]")
    theirs = {}
    for name, shape in params:
        if name in theirs:
            raise InvalidPayload("bad_metadata", f"parameter {name!r} listed twice")
        theirs[name] = tuple(shape)
    _same_names(theirs, shapes, "param")
    for name, shape in shapes.items():
        if theirs[name] != tuple(shape):
            raise InvalidPayload("bad_shape", f"{name}: shape {theirs[name]} != {shape}")


def _same_names(theirs: Mapping[str, Any], ours: Mapping[str, Any], kind: str) -> None:
    """`missing_{kind}` / `unknown_{kind}` unless both sides name the same things."""
    missing = sorted(set(ours) - set(theirs))
    if missing:
        raise InvalidPayload(f"missing_{kind}", f"missing {kind}s {missing[:5]}")
    unknown = sorted(set(theirs) - set(ours))
    if unknown:
        raise InvalidPayload(f"unknown_{kind}", f"unknown {kind}s {unknown[:5]}")


def _check_layout(header: Mapping[str, Any], layout: Mapping[str, TensorSpec]) -> None:
    _same_names(header, layout, "tensor")
    for name, spec in layout.items():
        entry = header[name]
        if _DTYPES.get(entry["dtype"]) != spec.dtype:
            raise InvalidPayload("bad_dtype", f"{name}: dtype {entry['dtype']} != {spec.dtype}")
        if tuple(entry["shape"]) != tuple(spec.shape):
            raise InvalidPayload("bad_shape", f"{name}: shape {entry['shape']} != {spec.shape}")
        start, end = entry["data_offsets"]
        size = math.prod(spec.shape) * spec.dtype.itemsize
        if end - start != size:
            raise InvalidPayload("bad_header", f"{name}: data offsets do not match its shape")


def _check_loaded(tensors: Mapping[str, torch.Tensor], layout: Mapping[str, TensorSpec]) -> None:
    # safetensors enforced the header; this guards against a library change, cheaply
    if set(tensors) != set(layout) or any(
        tensors[n].dtype != s.dtype or tuple(tensors[n].shape) != s.shape for n, s in layout.items()
    ):
        raise InvalidPayload("bad_header", "loaded tensors differ from the header")


def _check_signature(
    metadata: Mapping[str, str],
    tensors: Mapping[str, torch.Tensor],
    expected: Expected,
    verifier: Verifier | None,
) -> bool:
    signature = metadata.get("signature")
    if signature is None:
        if expected.require_signature:
            raise InvalidPayload("unsigned", "payload carries no signature")
        return False
    if verifier is None:
        return False
    if metadata.get("signature_scheme") != verifier.scheme:
        raise InvalidPayload(
            "bad_signature", f"scheme {metadata.get('signature_scheme')!r} != {verifier.scheme!r}"
        )
    if len(signature) > _MAX_SIGNATURE_HEX:
        raise InvalidPayload("bad_signature", "signature too long")
    try:
        raw = bytes.fromhex(signature)
    except ValueError:
        raise InvalidPayload("bad_signature", "signature is not hex") from None
    # Only the canonical (lowercase, unspaced) spelling: the signature is outside the digest,
    # so any other spelling would be bytes nobody signed passing as authentic.
    if raw.hex() != signature:
        raise InvalidPayload("bad_signature", "signature is not canonical lowercase hex")
    hotkey = expected.hotkey if expected.hotkey is not None else metadata["hotkey"]
    try:
        ok = verifier.verify(payload_digest(metadata, tensors), raw, hotkey)
    except Exception:
        ok = False
    if ok is not True:
        raise InvalidPayload("bad_signature", f"signature does not verify for {hotkey!r}")
    return True
